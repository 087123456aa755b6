"""Tune the fused MoE kernels' launch configurations on this GPU and write them as data.

For each shape's experts and each pairs-per-expert bucket (T = bucket · E / k tokens), candidate
configurations are timed on the full fused forward (CUDA-graph replay, as `moe_kernel.py` times
it) and the fastest is kept for both GEMMs under ``E{experts}_N{n}_K{k}``, then the bucket, in
``<out-dir>/<GPU name>.json`` — the table `fused_moe.launch_config` reads (a pruned model of the
same N and K uses the table of the nearest expert count). The current default configuration is
always timed first, so the tuned table is never slower than the defaults on the tuned shapes.

``--search short`` (default) tries a few dozen configurations per bucket and stops each bucket at
its share of ``--budget-s``; ``--search full`` tries the whole space (hours of compilation).

    python benchmarks/tune_moe_kernel.py [--shape gpt-oss-20b] [--budget-s 150] [--json PATH]   (GPU)
    TRITON_INTERPRET=1 python benchmarks/tune_moe_kernel.py --tiny --out-dir DIR                  (CPU dry run)
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch
from moe_kernel import experts_module, routed_inputs, shapes_named, time_calls

BUCKETS = (1, 16, 128, 1024)
FULL = {"BLOCK_M": (16, 32, 64, 128), "BLOCK_N": (32, 64, 128), "BLOCK_K": (32, 64, 128, 256),
        "num_warps": (4, 8), "num_stages": (2, 3, 4, 5)}
# Decode buckets stream weights (small BLOCK_M, deep K pipelines); prefill buckets are matrix-bound.
SHORT_DECODE = {"BLOCK_M": (16,), "BLOCK_N": (32, 64, 128), "BLOCK_K": (64, 128, 256), "num_warps": (4, 8), "num_stages": (3, 4)}
SHORT_PREFILL = {"BLOCK_M": (64, 128), "BLOCK_N": (64, 128), "BLOCK_K": (32, 64), "num_warps": (4, 8), "num_stages": (3, 4)}
TINY = {"BLOCK_M": (16,), "BLOCK_N": (32,), "BLOCK_K": (16,), "num_warps": (4,), "num_stages": (2,)}


def candidates(search: str, bucket: int, default: dict) -> list[dict]:
    space = {"full": FULL, "tiny": TINY}.get(search) or (SHORT_DECODE if bucket <= 16 else SHORT_PREFILL)
    configs = [dict(zip(space, values)) for values in itertools.product(*space.values())]
    return [default] + [config for config in configs if config != default]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", action="append", help="shapes of moe_kernel.py to tune (default: gpt-oss-20b)")
    parser.add_argument("--search", choices=("short", "full"), default="short")
    parser.add_argument("--budget-s", type=float, default=150.0, help="seconds for all shapes and buckets together")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out-dir", type=Path, help="where <GPU name>.json goes (default: the installed kernels' configs/)")
    parser.add_argument("--tiny", action="store_true", help="CPU dry run: a tiny shape, Triton's interpreter, two candidates")
    parser.add_argument("--json", type=Path, help="write every timing here")
    args = parser.parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        print("no CUDA device: tuning needs the GPU it tunes for (--tiny dry-runs it on CPU)")
        return 0
    from compress.kernels import fused_moe
    from compress.kernels.experts import kernel_layout

    device = torch.device("cpu") if args.tiny else torch.device("cuda")
    dtype = torch.float32 if args.tiny else torch.bfloat16
    device_name = "interpreter" if args.tiny else torch.cuda.get_device_name(device)
    path = (args.out_dir or fused_moe.CONFIG_DIR) / (device_name.replace(" ", "_") + ".json")
    tuned = json.loads(path.read_text()) if path.is_file() else {}
    search = "tiny" if args.tiny else args.search
    shapes = shapes_named(args.shape or (None if args.tiny else ["gpt-oss-20b"]), args.tiny)[:1 if args.tiny else None]
    share = args.budget_s / (len(shapes) * len(BUCKETS))
    report = []
    for shape in shapes:
        module = experts_module(shape, device).to(dtype)
        layout = kernel_layout(module)
        for bucket in BUCKETS[:2] if args.tiny else BUCKETS:
            tokens = max(1, bucket * shape.experts // shape.top_k)
            inputs = [routed_inputs(shape, tokens, device, dtype, seed=r) for r in range(2)]
            default = fused_moe.launch_config(device, tokens * shape.top_k / shape.experts, shape.experts,
                                              shape.intermediate, shape.hidden)
            started, timings = time.monotonic(), []
            for config in candidates(search, bucket, default):
                if timings and time.monotonic() - started > share:
                    break
                calls = [lambda i=i, c=config, m=module: fused_moe.fused_experts(
                    *i, m.gate_up_proj, m.down_proj, getattr(m, "gate_up_proj_bias", None),
                    getattr(m, "down_proj_bias", None), layout, config=c) for i in inputs]
                try:
                    timing = time_calls(calls, args.repeats, device, graph=True)
                except Exception as error:  # a configuration this GPU cannot run (shared memory, registers)
                    timings.append({"config": config, "error": f"{type(error).__name__}: {str(error)[:120]}"})
                    continue
                timings.append({"config": config, "ms": timing["graph"] or timing["launch"]})
            measured = [t for t in timings if "ms" in t]
            best = min(measured, key=lambda t: t["ms"])
            for n, k in ((shape.intermediate, shape.hidden), (shape.hidden, shape.intermediate)):
                tuned.setdefault(f"E{shape.experts}_N{n}_K{k}", {})[str(bucket)] = best["config"]
            default_ms = measured[0]["ms"] if measured[0]["config"] == default else None
            report.append({"shape": shape.name, "bucket": bucket, "tokens": tokens, "tried": len(timings),
                           "best": best, "default": {"config": default, "ms": default_ms}, "timings": timings})
            gain = f", {default_ms / best['ms']:.2f}× the default" if default_ms else ""
            print(f"{shape.name}, {bucket} pairs/expert (T={tokens}): {len(measured)}/{len(timings)} ran in "
                  f"{time.monotonic() - started:.0f} s; best {best['config']} {best['ms']:.4f} ms{gain}", flush=True)
        del module
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(tuned, indent=1) + "\n")
    print(f"wrote {path}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"device": device_name, "table": str(path), "buckets": report}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
