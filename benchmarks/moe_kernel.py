"""The fused MoE kernels against transformers' grouped_mm and batched_mm (and vLLM's fused_moe when
it is installed), on a GPU, with the fraction of the H100 roofline.

Shapes: gpt-oss-20b experts (H = I = 2880, gpt-oss layout with biases and clamped SwiGLU) with
E = 32, 16, 8 (pruned) and top-4; Qwen3-30B-A3B experts (H = 2048, I = 768, E = 128, top-8,
standard SiLU layout). T ∈ {1, 8, 64, 512, 4096}; bf16; CUDA-event timing, median of `--repeats`
after warm-up, all implementations on the same inputs in one run.

Roofline (H100 SXM): decode (T ≤ 64) is memory-bound — the bytes of the distinct experts touched
divided by the HBM bandwidth (3.35 TB/s); prefill — FLOPs divided by the dense bf16 peak (989
TFLOP/s). The printed fraction is roofline time / measured time.

    python benchmarks/moe_kernel.py [--repeats 50]      (needs a CUDA GPU; says so and exits otherwise)
"""

from __future__ import annotations

import argparse
import statistics

import torch

HBM_BYTES_PER_S = 3.35e12
BF16_FLOPS = 989e12
TOKENS = (1, 8, 64, 512, 4096)


def shapes():
    from transformers import GptOssConfig, Qwen3MoeConfig
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssExperts
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeExperts

    for experts in (32, 16, 8):
        yield f"gpt-oss-20b E={experts} k=4", 4, GptOssExperts(GptOssConfig(hidden_size=2880, intermediate_size=2880,
                                                                            num_local_experts=experts))
    yield "Qwen3-30B-A3B E=128 k=8", 8, Qwen3MoeExperts(Qwen3MoeConfig(hidden_size=2048, moe_intermediate_size=768, num_experts=128))


def expert_dims(module) -> tuple[int, int]:
    """(hidden, intermediate) of a fused experts module in either layout."""
    if module.is_transposed:  # gpt-oss: gate_up [E, H, 2I], down [E, I, H]
        return module.down_proj.shape[-1], module.gate_up_proj.shape[-1] // 2
    return module.down_proj.shape[1], module.gate_up_proj.shape[1] // 2


def time_ms(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("not measured on GPU: no CUDA device is visible (this benchmark only runs on a GPU)")
        return
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    import compress  # noqa: F401  (registers compress_triton)

    try:
        from vllm.model_executor.layers.fused_moe import fused_experts as vllm_fused_experts
    except ImportError:
        vllm_fused_experts = None
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, bf16, median of {args.repeats}")
    print("| shape | T | ours ms | grouped_mm ms | batched_mm ms | vllm ms | × grouped_mm | roofline |")
    print("|---|---|---|---|---|---|---|---|")
    for name, top_k, module in shapes():
        module = module.cuda().to(torch.bfloat16)
        for parameter in module.parameters():
            torch.nn.init.normal_(parameter, std=0.02)
        experts = module.num_experts
        hidden, intermediate = expert_dims(module)
        expert_bytes = sum(p[0].numel() * p.element_size() for p in module.parameters())
        for tokens in TOKENS:
            x = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16)
            index = torch.stack([torch.randperm(experts, device="cuda")[:top_k] for _ in range(tokens)])
            weights = torch.softmax(torch.randn(tokens, top_k, device="cuda"), -1).to(torch.bfloat16)
            times = {}
            for implementation in ("compress_triton", "grouped_mm", "batched_mm"):
                forward = ALL_EXPERTS_FUNCTIONS[implementation]
                times[implementation] = time_ms(lambda f=forward: f(module, x, index, weights), args.repeats)
            if vllm_fused_experts is not None and not module.has_bias:
                w1, w2 = module.gate_up_proj.contiguous(), module.down_proj.contiguous()
                times["vllm"] = time_ms(lambda: vllm_fused_experts(x, w1, w2, weights.float(), index.int()), args.repeats)
            touched = int(torch.unique(index).numel())
            if tokens <= 64:
                ideal = touched * expert_bytes / HBM_BYTES_PER_S * 1e3
            else:
                ideal = 2 * tokens * top_k * hidden * 3 * intermediate / BF16_FLOPS * 1e3
            ours = times["compress_triton"]
            vllm = f"{times['vllm']:.3f}" if "vllm" in times else "—"
            print(f"| {name} | {tokens} | {ours:.3f} | {times['grouped_mm']:.3f} | {times['batched_mm']:.3f} | {vllm} | "
                  f"{times['grouped_mm'] / ours:.2f} | {ideal / ours:.0%} |", flush=True)


if __name__ == "__main__":
    main()
