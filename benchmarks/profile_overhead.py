"""Overhead of collecting routing statistics: time(profiled forward) / time(plain forward).

Both are the same `model(input_ids=...)` call on the same batch of the demo model; the plain one
runs transformers' default experts implementation (grouped_mm), the profiled one runs inside a
`RoutingStatsCollector` (profiling experts implementation + router hooks). Repetitions alternate
between the two so that machine noise hits both alike; the ratio of medians is printed.

    python benchmarks/profile_overhead.py [--batch-size 8 --seq-len 512 --repeats 15 --dtype bfloat16 --device cpu]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from compress.model_loading import load_model
from compress.resolve import demo_model_path
from compress.stats import RoutingStatsCollector


def _synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _timed_forward(model, batch, device) -> float:
    _synchronize(device)
    start = time.perf_counter()
    model(input_ids=batch)
    _synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()

    model = load_model(demo_model_path(), dtype=args.dtype, device=args.device)
    batch = torch.randint(0, model.config.vocab_size, (args.batch_size, args.seq_len),
                          generator=torch.Generator().manual_seed(0)).to(model.device)
    collector = RoutingStatsCollector(model)
    plain, profiled = [], []
    with torch.inference_mode():
        for repeat in range(args.repeats + 2):  # the first two rounds warm up
            plain_time = _timed_forward(model, batch, args.device)
            with collector:
                profiled_time = _timed_forward(model, batch, args.device)
            if repeat >= 2:
                plain.append(plain_time)
                profiled.append(profiled_time)
    ratio = statistics.median(profiled) / statistics.median(plain)
    tokens = args.batch_size * args.seq_len
    where = (torch.cuda.get_device_name() if args.device == "cuda"
             else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print(f"demo model, {args.batch_size}×{args.seq_len} tokens, {args.dtype}, {where}, torch {torch.__version__}")
    print(f"plain forward    {statistics.median(plain) * 1e3:8.1f} ms  ({tokens / statistics.median(plain):,.0f} tok/s)")
    print(f"profile forward  {statistics.median(profiled) * 1e3:8.1f} ms  ({tokens / statistics.median(profiled):,.0f} tok/s)")
    print(f"ratio profile/plain: {ratio:.3f}  (medians of {args.repeats})")


if __name__ == "__main__":
    main()
