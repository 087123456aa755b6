"""Tune the fused MoE kernels' launch configurations for this GPU and write them as data.

For each GEMM shape of the given models' experts (gate/up: N = I, K = H; down: N = H, K = I) and
each pairs-per-expert bucket, every configuration of the search space is timed on the full fused
forward; the fastest goes to ``kernels/configs/<device name>.json``, which `fused_moe.launch_config`
reads at run time (keys ``E{experts}_N{n}_K{k}``, then pairs per expert).

    python benchmarks/tune_moe_kernel.py [--repeats 20]          (needs a CUDA GPU)
"""

from __future__ import annotations

import argparse
import itertools
import json

import torch
from moe_kernel import expert_dims, shapes, time_ms

SEARCH = {"BLOCK_M": (16, 32, 64, 128), "BLOCK_N": (32, 64, 128), "BLOCK_K": (32, 64, 128), "num_warps": (4, 8), "num_stages": (2, 3, 4)}
BUCKETS = (1, 16, 128, 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: tuning needs the GPU it tunes for")
        return
    from compress.kernels import fused_moe
    from compress.kernels.experts import kernel_layout

    device = torch.cuda.get_device_name()
    path = fused_moe.CONFIG_DIR / (device.replace(" ", "_") + ".json")
    tuned = json.loads(path.read_text()) if path.is_file() else {}
    candidates = [dict(zip(SEARCH, values)) for values in itertools.product(*SEARCH.values())]
    for name, top_k, module in shapes():
        module = module.cuda().to(torch.bfloat16)
        experts = module.num_experts
        hidden, intermediate = expert_dims(module)
        for bucket in BUCKETS:
            tokens = max(1, bucket * experts // top_k)
            x = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16)
            index = torch.stack([torch.randperm(experts, device="cuda")[:top_k] for _ in range(tokens)])
            weights = torch.softmax(torch.randn(tokens, top_k, device="cuda"), -1).to(torch.bfloat16)
            best = None
            for config in candidates:
                try:
                    ms = time_ms(lambda c=config: fused_moe.fused_experts(
                        x, index, weights, module.gate_up_proj, module.down_proj, getattr(module, "gate_up_proj_bias", None),
                        getattr(module, "down_proj_bias", None), kernel_layout(module), config=c), args.repeats)
                except Exception:  # a configuration that does not fit this GPU (shared memory, registers)
                    continue
                if best is None or ms < best[0]:
                    best = (ms, config)
            for n, k in ((intermediate, hidden), (hidden, intermediate)):
                tuned.setdefault(f"E{experts}_N{n}_K{k}", {})[str(bucket)] = best[1]
            print(f"{name}, {bucket} pairs/expert: {best[1]} {best[0]:.3f} ms", flush=True)
    path.write_text(json.dumps(tuned, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
