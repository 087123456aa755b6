"""Calibration at real size: `compress prune` end to end on a synthetic gpt-oss-20b, and peak
memory against depth on gpt-oss-120b shapes.

1. Writes a synthetic gpt-oss-20b (`synthetic_gpt_oss.py`: 24 layers, the published tensor names,
   shapes and MXFP4 layout, random weights, the demo tokenizer) and runs, as its own measured
   process, ``compress prune --model it --domain math --keep 16 --samples 8 --seq-len 256``
   (the default criterion, ``reconstruct``: profiling, the search and the streaming write).
   Goals: peak RSS ≤ 3 GB (the whole-model path needs ≈ 41 GB), wall time ≤ 2× a floor measured
   in the same run: the calibration's matrix-product FLOPs at this machine's fp32 matmul
   throughput (measured before and after the prune, the mean of the two), plus a plain copy of
   the bytes the pruned checkpoint keeps.
2. `compress profile` on gpt-oss-120b-shaped checkpoints (128 experts) of 2, 4 and 8 layers:
   peak RSS must not grow with depth.

Every heavy step runs in a child process measured with `wait4` (wall time, peak RSS).

    python benchmarks/calibration_scale.py [--workdir /tmp/calibration_scale] [--part 20b|120b]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from prune_io import COPY_SCRIPT, run_measured
from synthetic_gpt_oss import HEAD_DIM, HEADS, HIDDEN, INTERMEDIATE, KV_HEADS

SAMPLES, SEQ_LEN, TOP_K = 8, 256, 4
THROUGHPUT_SCRIPT = """
import time, torch
a, b = torch.randn(4096, 2880), torch.randn(2880, 5760)
a @ b
times = []
for _ in range(5):
    start = time.perf_counter(); a @ b; times.append(time.perf_counter() - start)
print(2 * 4096 * 2880 * 5760 / sorted(times)[2])
"""


def calibration_flops(layers: int, experts: int, tokens: int) -> float:
    """The matrix products calibration cannot avoid: every layer's attention projections, router and
    routed experts for the calibration tokens, plus every expert's outputs for the reconstruction
    search's tokens (tokens·k/E of them)."""
    attention = 2 * HIDDEN * (HEADS * HEAD_DIM + 2 * KV_HEADS * HEAD_DIM) + 2 * HEADS * HEAD_DIM * HIDDEN
    expert = 2 * (HIDDEN * 2 * INTERMEDIATE + INTERMEDIATE * HIDDEN)
    per_token = attention + 2 * HIDDEN * experts + TOP_K * expert
    search = tokens * TOP_K // experts
    return layers * (tokens * per_token + search * experts * expert)


def build(directory: Path, layers: int, experts: int) -> dict:
    here = Path(__file__).parent / "synthetic_gpt_oss.py"
    done = subprocess.run([sys.executable, str(here), str(directory), "--layers", str(layers), "--experts", str(experts)],
                          capture_output=True, text=True, check=True)
    subprocess.run(["cat", *map(str, directory.glob("*.safetensors"))], stdout=subprocess.DEVNULL, check=True)  # warm cache
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/calibration_scale")
    parser.add_argument("--layers", type=int, default=24, help="depth of the gpt-oss-20b checkpoint (24 is the real one)")
    parser.add_argument("--part", choices=("all", "20b", "120b"), default="all",
                        help="20b: only the gpt-oss-20b prune; 120b: only the depth series")
    args = parser.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    if args.part in ("all", "20b"):
        prune_20b(work, args.layers)
    if args.part in ("all", "120b"):
        profile_120b_depths(work)
    shutil.rmtree(work, ignore_errors=True)


def fp32_throughput() -> float:
    return float(subprocess.run([sys.executable, "-c", THROUGHPUT_SCRIPT], capture_output=True, text=True,
                                check=True).stdout.strip())


def prune_20b(work: Path, layers: int) -> None:
    source = work / "gpt-oss-20b-synthetic"
    sizes = build(source, layers, 32)
    before = fp32_throughput()
    prune = [sys.executable, "-m", "compress", "prune", "--model", str(source), "--domain", "math", "--keep", "16",
             "--samples", str(SAMPLES), "--seq-len", str(SEQ_LEN), "--out", str(work / "pruned"), "--quiet"]
    seconds, rss = run_measured(prune)
    plan = work / "plan.json"
    plan.write_text(json.dumps(json.loads((work / "pruned" / "compress.json").read_text())["plan"]))
    copy_seconds, _ = run_measured([sys.executable, "-c", COPY_SCRIPT, str(source), str(plan), str(work / "copy.bin")])
    after = fp32_throughput()  # a shared machine's speed drifts: the floor takes the mean of both ends
    throughput = (before + after) / 2
    flops = calibration_flops(layers, 32, SAMPLES * SEQ_LEN)
    floor = flops / throughput + copy_seconds
    print(f"gpt-oss-20b-shaped MXFP4, {layers} layers, {sizes['total'] / 1e9:.2f} GB; prune --keep 16, {SAMPLES} x {SEQ_LEN} tokens, "
          "criterion reconstruct")
    print(f"  peak RSS {rss / 1e9:.2f} GB (goal <= 3 GB): {'met' if rss <= 3e9 else 'NOT met'}")
    print(f"  wall {seconds:.1f} s; floor {floor:.1f} s = {flops / 1e12:.2f} TFLOP at {throughput / 1e9:.0f} GFLOP/s fp32 "
          f"(measured {before / 1e9:.0f} before, {after / 1e9:.0f} after: {flops / throughput:.1f} s) "
          f"+ copying the kept {(work / 'copy.bin').stat().st_size / 1e9:.2f} GB ({copy_seconds:.1f} s)")
    print(f"  wall / floor = {seconds / floor:.2f} (goal <= 2): {'met' if seconds <= 2 * floor else 'NOT met'}")
    shutil.rmtree(source)
    shutil.rmtree(work / "pruned")
    (work / "copy.bin").unlink()


def profile_120b_depths(work: Path) -> None:
    print("gpt-oss-120b-shaped MXFP4 (128 experts), compress profile, 8 x 256 tokens:")
    for layers in (2, 4, 8):
        source = work / f"gpt-oss-120b-{layers}"
        sizes = build(source, layers, 128)
        seconds, rss = run_measured([sys.executable, "-m", "compress", "profile", "--model", str(source), "--domain", "math",
                                     "--samples", str(SAMPLES), "--seq-len", str(SEQ_LEN), "--out", str(work / "stats.safetensors"),
                                     "--overwrite", "--quiet"])
        print(f"  {layers} layers ({sizes['total'] / 1e9:.1f} GB): peak RSS {rss / 1e9:.2f} GB, {seconds:.1f} s "
              f"({seconds / layers:.1f} s per layer with startup)")
        shutil.rmtree(source)


if __name__ == "__main__":
    main()
