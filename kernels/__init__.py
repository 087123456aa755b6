"""Triton grouped-GEMM MoE kernels and their torch reference (installed as compress.kernels).

Empty until the kernels land; importing it never requires Triton or a GPU.
"""
