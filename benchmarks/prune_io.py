"""Streaming prune of a gpt-oss-20b-shaped MXFP4 checkpoint: peak memory and time versus copying.

Builds a synthetic checkpoint with the real gpt-oss-20b tensor names, shapes and dtypes (MXFP4
``_blocks``/``_scales`` experts, bf16 everything else, random weights: `synthetic_gpt_oss.py`) for `--layers` decoder
layers, sharded, then in separate processes, each measured with its own peak RSS:

* baseline: plain copying of exactly the bytes the pruned checkpoint keeps (positional reads of
  the kept ranges, written to one file);
* `compress prune --plan` keeping `--keep` of 32 experts per layer (the whole CLI: config,
  headers, meta-model parameter counts, streaming write, provenance).

Prints both, the RSS goal (1.5 × the largest tensor + 0.5 GB) and the time ratio (goal ≤ 2).

    python benchmarks/prune_io.py [--layers 4 --keep 16 --workdir /tmp/prune_io]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from synthetic_gpt_oss import build

EXPERTS = 32  # gpt-oss-20b


def run_measured(command: list[str]) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of a child process.

    A child's peak RSS includes what it inherited at fork, so this orchestrating process never
    imports torch or builds tensors itself: everything heavy runs in children."""
    start = time.perf_counter()
    process = subprocess.Popen(command)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{command[:4]} failed")
    return seconds, usage.ru_maxrss * 1024


COPY_SCRIPT = """
import json, os, sys
from compress.checkpoint.reader import CheckpointReader
from compress.families import get_family
from compress.pruning.apply import plan_tensors
from compress.pruning.plan import PrunePlan
source, plan_file, target = sys.argv[1:4]
reader = CheckpointReader(source)
tensors = plan_tensors(reader, get_family("gpt_oss"), PrunePlan.load(plan_file), 10**6)
with open(target, "wb") as out:
    for copy in tensors.copies:  # the same kept byte ranges, straight from file to file
        entry = reader.entries[copy.key]
        fd = os.open(os.path.join(source, entry.file), os.O_RDONLY)
        rows = copy.experts if copy.experts is not None else [None]
        row_bytes = entry.nbytes // entry.shape[0]
        for expert in rows:
            offset, length = (entry.offset, entry.nbytes) if expert is None else (entry.offset + expert * row_bytes, row_bytes)
            while length:
                chunk = os.pread(fd, min(length, 1 << 26), offset)
                out.write(chunk)
                offset += len(chunk)
                length -= len(chunk)
        os.close(fd)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--keep", type=int, default=16)
    parser.add_argument("--workdir", default="/tmp/prune_io")
    parser.add_argument("--build", metavar="DIR", help=argparse.SUPPRESS)  # internal: build the checkpoint in a child
    args = parser.parse_args()
    if args.build:
        print(json.dumps(build(Path(args.build), args.layers, EXPERTS, max_shard_bytes=2 * 2**30)))
        return
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    source = work / "gpt-oss-20b-synthetic"
    source.mkdir(parents=True)
    built = subprocess.run([sys.executable, __file__, "--layers", str(args.layers), "--build", str(source)],
                           capture_output=True, text=True, check=True)
    sizes = json.loads(built.stdout.strip().splitlines()[-1])
    largest, source_bytes = sizes["largest"], sizes["total"]

    kept = {layer: list(range(0, EXPERTS, EXPERTS // args.keep))[: args.keep] for layer in range(args.layers)}
    plan = {"format": "moe-compress prune plan", "format_version": 1, "top_k": 4, "layers": {str(k): v for k, v in kept.items()},
            "source": {"model": "synthetic", "fingerprint": None, "family": "gpt_oss", "num_experts": EXPERTS, "top_k": 4},
            "provenance": {"criterion": "plan"}}
    plan_file = work / "plan.json"
    plan_file.write_text(json.dumps(plan))
    # Make the plan's fingerprint match the synthetic model, as --plan-only would.
    fingerprint = subprocess.run(
        [sys.executable, "-c", "import sys; from transformers import AutoConfig; "
         "from compress.model_info import meta_model, model_fingerprint;"
         "print(model_fingerprint(meta_model(AutoConfig.from_pretrained(sys.argv[1]))))", str(source)],
        capture_output=True, text=True, check=True).stdout.strip()
    plan["source"]["fingerprint"] = fingerprint
    plan_file.write_text(json.dumps(plan))

    subprocess.run(["cat", *map(str, source.glob("*.safetensors"))], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
    copy_seconds, copy_rss = run_measured([sys.executable, "-c", COPY_SCRIPT, str(source), str(plan_file), str(work / "copy.bin")])
    kept_bytes = (work / "copy.bin").stat().st_size
    prune_seconds, prune_rss = run_measured([sys.executable, "-m", "compress", "prune", "--model", str(source), "--plan", str(plan_file),
                                             "--out", str(work / "pruned"), "--quiet"])
    goal = 1.5 * largest + 0.5e9
    print(f"synthetic gpt-oss-20b, {args.layers} layers, MXFP4 experts: {source_bytes / 1e9:.2f} GB in "
          f"{len(list(source.glob('*.safetensors')))} shards; keep {args.keep} of {EXPERTS} → {kept_bytes / 1e9:.2f} GB kept")
    print(f"largest tensor {largest / 1e9:.3f} GB; RSS goal 1.5 × largest + 0.5 GB = {goal / 1e9:.2f} GB")
    print(f"copy kept bytes   {copy_seconds:6.2f} s   peak RSS {copy_rss / 1e9:.2f} GB")
    print(f"compress prune    {prune_seconds:6.2f} s   peak RSS {prune_rss / 1e9:.2f} GB")
    print(f"time ratio prune/copy: {prune_seconds / copy_seconds:.2f} (goal ≤ 2); RSS {'within' if prune_rss <= goal else 'OVER'} goal")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
