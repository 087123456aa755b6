"""Grouped-GEMM MoE kernels and their torch reference (installed as compress.kernels).

* `reference` — each routed expert's output in torch, exactly as transformers' grouped_mm path;
* `alignment` — (token, slot) pairs sorted by expert into padded blocks, without host syncs;
* `fused_moe` — the Triton kernels (gate/up GEMM + activation, down GEMM + bias + routing weight);
* `experts` — the ``compress_triton`` experts implementation that dispatches to them;
* `configs/` — launch configurations as data (defaults; tuned per GPU by benchmarks/tune_moe_kernel.py).

Importing this package never requires Triton or a GPU; only `fused_moe` imports Triton.
"""
