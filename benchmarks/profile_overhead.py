"""Overhead of collecting routing statistics: time(profiled forward) / time(plain forward).

Both are the same `model(input_ids=...)` call on the same batch; the plain one runs transformers'
default experts implementation (grouped_mm), the profiled one runs inside a `RoutingStatsCollector`
(profiling experts implementation + router hooks). Repetitions alternate between the two so that
machine noise hits both alike; the ratio of medians is printed.

Models: `--shape demo` (the project's demo model) or `--shape gpt-oss-20b`, a stack of `--layers`
decoder layers with the published gpt-oss-20b config (32 experts, top-4, H = I = 2880, 201k
vocabulary), random bf16 weights built on the device (no checkpoint needed); `gpt-oss-tiny` is
the same builder at toy size, for a CPU dry run.

    python benchmarks/profile_overhead.py [--batch-size 8 --seq-len 512 --repeats 15 --dtype bfloat16 --device cpu]
    python benchmarks/profile_overhead.py --device cuda --shape gpt-oss-20b --layers 4 --json PATH
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

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


def gpt_oss_stack(layers: int, dtype: torch.dtype, device: str, tiny: bool):
    """A GptOssForCausalLM with gpt-oss-20b's published config cut to `layers` (or toy sizes), random weights."""
    from synthetic_gpt_oss import config as gpt_oss_config
    from transformers import GptOssConfig, GptOssForCausalLM

    values = {key: value for key, value in gpt_oss_config(layers, 32).items() if key != "quantization_config"}
    if tiny:
        values.update(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                      vocab_size=512, num_local_experts=8, pad_token_id=0, eos_token_id=1)
    with torch.device(device):
        model = GptOssForCausalLM._from_config(GptOssConfig(**values), dtype=dtype)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--shape", default="demo", choices=["demo", "gpt-oss-20b", "gpt-oss-tiny"])
    parser.add_argument("--layers", type=int, default=4, help="decoder layers of a gpt-oss stack")
    parser.add_argument("--json", type=Path, help="write the measurement here")
    args = parser.parse_args()

    if args.shape == "demo":
        model = load_model(demo_model_path(), dtype=args.dtype, device=args.device)
    else:
        model = gpt_oss_stack(args.layers, getattr(torch, args.dtype), args.device, tiny=args.shape == "gpt-oss-tiny")
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
    name = "demo model" if args.shape == "demo" else f"{args.shape} stack of {args.layers} layers"
    print(f"{name}, {args.batch_size}×{args.seq_len} tokens, {args.dtype}, {where}, torch {torch.__version__}")
    print(f"plain forward    {statistics.median(plain) * 1e3:8.1f} ms  ({tokens / statistics.median(plain):,.0f} tok/s)")
    print(f"profile forward  {statistics.median(profiled) * 1e3:8.1f} ms  ({tokens / statistics.median(profiled):,.0f} tok/s)")
    print(f"ratio profile/plain: {ratio:.3f}  (medians of {args.repeats})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "model": name, "batch_size": args.batch_size, "seq_len": args.seq_len, "dtype": args.dtype, "device": where,
            "torch": torch.__version__, "plain_ms": statistics.median(plain) * 1e3,
            "profiled_ms": statistics.median(profiled) * 1e3, "ratio": ratio, "repeats": args.repeats}, indent=1) + "\n")


if __name__ == "__main__":
    main()
