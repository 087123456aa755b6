"""Merging and compensation at real size: what they add to a prune of a gpt-oss-20b-shaped MXFP4
checkpoint, in time and peak memory.

Builds a synthetic gpt-oss-20b (`synthetic_gpt_oss.py`: the published names, shapes and MXFP4
layout, random weights) of `--layers` layers and runs, each as its own measured process (`wait4`),
on the same calibration (`--samples` windows of `--seq-len` math tokens; 32 × 512 gives the
default-size search sample of 2,048 tokens, and compensation fits on every one of the tokens):

1. ``compress prune --keep 16`` (criterion ``reconstruct``): the baseline;
2. the same with ``--compensate``;
3. ``compress merge --keep 16`` (M-SMoE, MXFP4 re-quantised);
4. the same with ``--compensate``.

It prints wall time and peak RSS of each, and each one's time as a ratio of the baseline's; for the
compensated runs also the mean relative layer-output error without and with compensation, on
calibration tokens fitted and on the fifth held out of the fit (from the output's compress.json).

    python benchmarks/merge_scale.py [--layers 2 --samples 32 --seq-len 512 --workdir /tmp/merge_scale --skip RUN,...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from calibration_scale import build
from prune_io import run_measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/merge_scale")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--skip", default="", help="comma-separated runs to leave out after the baseline, e.g. 'merge (m-smoe)'")
    args = parser.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    source = work / "gpt-oss-20b-synthetic"
    sizes = build(source, args.layers, 32)
    common = ["--model", str(source), "--domain", "math", "--keep", "16", "--samples", str(args.samples),
              "--seq-len", str(args.seq_len), "--quiet"]
    runs = {"prune (reconstruct)": ["prune"], "prune --compensate": ["prune", "--compensate"],
            "merge (m-smoe)": ["merge"], "merge --compensate": ["merge", "--compensate"]}
    print(f"gpt-oss-20b-shaped MXFP4, {args.layers} layers, {sizes['total'] / 1e9:.2f} GB; keep 16 of 32; "
          f"{args.samples} x {args.seq_len} math tokens\n")
    print("| run | wall s | per layer s | peak RSS GB | time vs prune | layer error, fitted: without → with | "
          "held out: without → with |\n|---|---|---|---|---|---|---|")
    baseline = None
    for index, (name, command) in enumerate(runs.items()):
        if index and name in args.skip.split(","):
            continue
        out = work / f"out{index}"
        seconds, rss = run_measured([sys.executable, "-m", "compress", *command, *common, "--out", str(out)])
        baseline = baseline or seconds
        errors = "— | —"
        layers = (json.loads((out / "compress.json").read_text()).get("compensation") or {}).values()
        if layers:
            def mean(key: str) -> float:
                return sum(layer[key] for layer in layers) / len(layers)

            errors = (f"{mean('error_before'):.4f} → {mean('error_after'):.4f} | "
                      f"{mean('heldout_error_before'):.4f} → {mean('heldout_error_after'):.4f}")
        print(f"| {name} | {seconds:.1f} | {seconds / args.layers:.1f} | {rss / 1e9:.2f} | {seconds / baseline:.2f}× | {errors} |",
              flush=True)
        shutil.rmtree(out)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
