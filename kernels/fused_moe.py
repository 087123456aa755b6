"""Triton grouped-GEMM MoE forward: gate/up GEMM with the activation in its epilogue, then the
down GEMM with bias and routing weight in its epilogue, and a deterministic sum over the top-k.

One program computes a BLOCK_M × BLOCK_N tile for one expert: rows are (token, slot) pairs sorted
and padded by `alignment.align_block_size`, gathered from the hidden states on the fly (no permuted
copy), weights addressed as ``expert * stride_e`` — vLLM's fused_moe layout. Two weight layouts:

* ``standard`` (Mixtral, Qwen, OLMoE, DeepSeek): ``gate_up_proj [E, 2I, H]`` with the gate in rows
  ``[:I]`` and up in ``[I:]``, ``down_proj [E, H, I]``, SiLU-gated;
* ``gpt_oss``: ``gate_up_proj [E, H, 2I]`` with gate/up interleaved in columns (even/odd), biases
  ``[E, 2I]`` and ``[E, H]``, and the clamped SwiGLU ``(clamp(up, ±limit) + 1) · g·σ(α·g)``, g =
  ``min(gate, limit)``.

For gpt-oss the weights can also stay MXFP4 (the checkpoints' ``_blocks [E, rows, K/32, 16]`` and
``_scales [E, rows, K/32]``, rows in the on-disk "out" orientation, see `compress.checkpoint.mxfp4`):
each tile is decoded inside the kernel (FP4 E2M1 code × 2**(scale − 127), exact in bf16), so decode
reads 4.25 bits a weight instead of 16.

Both accumulate in fp32; the activation runs on the fp32 accumulators; the down GEMM writes each
pair's weighted output in fp32 to its own row (no atomics) and the rows of a token are summed in
slot order. `torch reference`: `reference.routed_expert_outputs` + `combine_expert_outputs`.
Set ``TRITON_INTERPRET=1`` before importing this module to run the kernels on CPU (fp32/fp16).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import torch
import triton
import triton.language as tl

from compress.errors import CompressError

from .alignment import align_block_size

CONFIG_DIR = Path(__file__).parent / "configs"
STANDARD, GPT_OSS = 0, 1


@triton.jit
def _weight_tile(w_base, s_base, ks, offs_n, K, N, stride_wk, stride_wn, stride_sn, MXFP4: tl.constexpr):
    """The [BLOCK_K, BLOCK_N] weights W[k, n]: loaded as they are, or decoded from MXFP4, where
    `w_base`/`s_base` point at row n = 0 of the blocks and scales, `stride_wn`/`stride_sn` step one
    n in bytes and scales, and the K values of a row are packed two per byte, 32 per scale."""
    mask = (ks[:, None] < K) & (offs_n[None, :] < N)
    if MXFP4:
        byte = tl.load(w_base + offs_n[None, :] * stride_wn + ks[:, None] // 2, mask=mask, other=0).to(tl.int32)
        code = (byte >> ((ks[:, None] % 2) * 4)) & 15  # the low nibble is the even element
        exponent = (code >> 1) & 3
        mantissa = (code & 1).to(tl.float32)
        power = (1 << tl.maximum(exponent - 1, 0)).to(tl.float32)
        magnitude = tl.where(exponent == 0, 0.5 * mantissa, (1.0 + 0.5 * mantissa) * power)  # 0 .5 1 1.5 2 3 4 6
        value = tl.where((code & 8) != 0, -magnitude, magnitude)
        scale = tl.load(s_base + offs_n[None, :] * stride_sn + ks[:, None] // 32, mask=mask, other=0).to(tl.int32)
        return value * (scale << 23).to(tl.float32, bitcast=True)  # E8M0: 2**(scale - 127), built as exponent bits
    return tl.load(w_base + ks[:, None] * stride_wk + offs_n[None, :] * stride_wn, mask=mask, other=0.0)


@triton.jit
def _gate_up_kernel(
    x_ptr, w_ptr, s_ptr, b_ptr, out_ptr, sorted_pairs_ptr, block_experts_ptr,
    num_pairs, top_k, K, N,
    stride_xm, stride_xk, stride_we, stride_wk, stride_wn, w_up_offset, stride_se, stride_sn, s_up_offset,
    stride_be, stride_bn, b_up_offset, stride_om, stride_on,
    alpha, limit,
    ACTIVATION: tl.constexpr, HAS_BIAS: tl.constexpr, MXFP4: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    expert = tl.load(block_experts_ptr + pid_m)
    if expert < 0:
        return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    pairs = tl.load(sorted_pairs_ptr + offs_m)
    valid = pairs < num_pairs
    tokens = pairs // top_k
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    w_base = w_ptr + expert.to(tl.int64) * stride_we
    s_base = s_ptr + expert.to(tl.int64) * stride_se
    acc_gate = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + offs_k
        a = tl.load(x_ptr + tokens[:, None] * stride_xm + ks[None, :] * stride_xk,
                    mask=valid[:, None] & (ks[None, :] < K), other=0.0)
        gate_w = _weight_tile(w_base, s_base, ks, offs_n, K, N, stride_wk, stride_wn, stride_sn, MXFP4)
        up_w = _weight_tile(w_base + w_up_offset, s_base + s_up_offset, ks, offs_n, K, N, stride_wk, stride_wn, stride_sn, MXFP4)
        acc_gate += tl.dot(a, gate_w.to(a.dtype))
        acc_up += tl.dot(a, up_w.to(a.dtype))
    if HAS_BIAS:
        b_base = b_ptr + expert.to(tl.int64) * stride_be + offs_n * stride_bn
        acc_gate += tl.load(b_base, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
        acc_up += tl.load(b_base + b_up_offset, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    if ACTIVATION == 0:  # SiLU(gate) · up
        hidden = acc_gate * tl.sigmoid(acc_gate) * acc_up
    else:  # gpt-oss: clamped SwiGLU
        gate = tl.minimum(acc_gate, limit)
        up = tl.minimum(tl.maximum(acc_up, -limit), limit)
        hidden = (up + 1.0) * (gate * tl.sigmoid(alpha * gate))
    tl.store(out_ptr + pairs[:, None] * stride_om + offs_n[None, :] * stride_on, hidden.to(out_ptr.dtype.element_ty),
             mask=valid[:, None] & (offs_n[None, :] < N))


@triton.jit
def _down_kernel(
    h_ptr, w_ptr, s_ptr, b_ptr, weights_ptr, out_ptr, sorted_pairs_ptr, block_experts_ptr,
    num_pairs, K, N,
    stride_hm, stride_hk, stride_we, stride_wk, stride_wn, stride_se, stride_sn, stride_be, stride_bn, stride_om, stride_on,
    HAS_BIAS: tl.constexpr, MXFP4: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    expert = tl.load(block_experts_ptr + pid_m)
    if expert < 0:
        return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    pairs = tl.load(sorted_pairs_ptr + offs_m)
    valid = pairs < num_pairs
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    w_base = w_ptr + expert.to(tl.int64) * stride_we
    s_base = s_ptr + expert.to(tl.int64) * stride_se
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + offs_k
        a = tl.load(h_ptr + pairs[:, None] * stride_hm + ks[None, :] * stride_hk,
                    mask=valid[:, None] & (ks[None, :] < K), other=0.0)
        w = _weight_tile(w_base, s_base, ks, offs_n, K, N, stride_wk, stride_wn, stride_sn, MXFP4)
        acc += tl.dot(a, w.to(a.dtype))
    if HAS_BIAS:
        acc += tl.load(b_ptr + expert.to(tl.int64) * stride_be + offs_n * stride_bn, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    routing = tl.load(weights_ptr + pairs, mask=valid, other=0.0).to(tl.float32)
    acc = acc * routing[:, None]
    tl.store(out_ptr + pairs[:, None] * stride_om + offs_n[None, :] * stride_on, acc, mask=valid[:, None] & (offs_n[None, :] < N))


@cache
def _configs(file_name: str) -> dict:
    """A launch-configuration table shipped in `configs/` ({} for a GPU without a tuned table)."""
    path = CONFIG_DIR / file_name
    if not path.is_file() and file_name == "default.json":
        raise CompressError(f"the kernels' launch configurations are missing from this installation ({path}): reinstall moe-compress")
    return json.loads(path.read_text()) if path.is_file() else {}


def tuned_table(tuned: dict, num_experts: int, n: int, k: int) -> dict | None:
    """A GPU's table for one GEMM: the shape ``E{num_experts}_N{n}_K{k}``, else the same GEMM tuned
    at the nearest expert count (a pruned model keeps its source's N and K), else its "default"."""
    if f"E{num_experts}_N{n}_K{k}" in tuned:
        return tuned[f"E{num_experts}_N{n}_K{k}"]
    same_gemm = [key for key in tuned if key.startswith("E") and key.endswith(f"_N{n}_K{k}")]
    if same_gemm:
        return tuned[min(same_gemm, key=lambda key: (abs(int(key[1:key.index("_")]) - num_experts), key))]
    return tuned.get("default")


def launch_config(device: torch.device, pairs_per_expert: float, num_experts: int, n: int, k: int) -> dict:
    """Block sizes for one GEMM: this GPU's tuned table (`tuned_table`) when there is one, else the
    defaults; within a table, the row for the closest pairs-per-expert count. Off the GPU (the
    interpreter) small tiles keep the sequential programs few and fast."""
    defaults = _configs("default.json")
    if device.type != "cuda":
        table = defaults["cpu"]
    else:
        tuned = _configs(torch.cuda.get_device_name(device).replace(" ", "_") + ".json")
        table = tuned_table(tuned, num_experts, n, k) or defaults["default"]
    rows = min(table, key=lambda key: abs(int(key) - pairs_per_expert))
    return table[rows]


def fused_experts(
    hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor,
    gate_up: torch.Tensor, down: torch.Tensor, gate_up_bias: torch.Tensor | None, down_bias: torch.Tensor | None,
    layout: int, alpha: float = 1.702, limit: float = 7.0, config: dict | None = None,
    gate_up_scales: torch.Tensor | None = None, down_scales: torch.Tensor | None = None,
) -> torch.Tensor:
    """Σ_k w_k · f_{e_k}(x) for every token, [T, H] in the hidden states' dtype. `config` forces
    one launch configuration on both GEMMs (the tuning script); by default `launch_config` picks.

    With `gate_up_scales` and `down_scales` (gpt-oss only), `gate_up` and `down` are MXFP4 blocks
    as the checkpoints store them — ``gate_up_proj_blocks [E, 2I, H/32, 16]``, ``down_proj_blocks
    [E, H, I/32, 16]`` — decoded inside the kernels; the GEMMs then run in the hidden states' dtype."""
    num_tokens, top_k = top_k_index.shape
    num_experts = gate_up.shape[0]
    hidden = hidden_states.shape[1]
    mxfp4 = gate_up_scales is not None
    if mxfp4:  # out-major rows of packed K: gate_up row 2n is gate n, 2n + 1 up n; down row n is output n
        if layout != GPT_OSS or down_scales is None:
            raise ValueError("MXFP4 weights need the gpt-oss layout and both projections' scales")
        for blocks, scales in ((gate_up, gate_up_scales), (down, down_scales)):
            if blocks.dtype != torch.uint8 or blocks.stride()[-2:] != (16, 1) or scales.stride(-1) != 1:
                raise ValueError("MXFP4 blocks must be uint8 [E, rows, K/32, 16] with contiguous rows, scales [E, rows, K/32]")
        intermediate = gate_up.shape[1] // 2
        w1_strides = (gate_up.stride(0), 0, 2 * gate_up.stride(1), gate_up.stride(1))
        s1_strides = (gate_up_scales.stride(0), 2 * gate_up_scales.stride(1), gate_up_scales.stride(1))
        w2_strides = (down.stride(0), 0, down.stride(1))
        s2_strides = (down_scales.stride(0), down_scales.stride(1))
    elif layout == STANDARD:  # [E, 2I, H]: gate rows [:I], up rows [I:]
        intermediate = gate_up.shape[1] // 2
        w1_strides = (gate_up.stride(0), gate_up.stride(2), gate_up.stride(1), intermediate * gate_up.stride(1))
        w2_strides = (down.stride(0), down.stride(2), down.stride(1))  # [E, H, I]: k = I, n = H
    else:  # gpt-oss [E, H, 2I]: gate columns 2n, up 2n + 1
        intermediate = gate_up.shape[2] // 2
        w1_strides = (gate_up.stride(0), gate_up.stride(1), 2 * gate_up.stride(2), gate_up.stride(2))
        w2_strides = (down.stride(0), down.stride(1), down.stride(2))  # [E, I, H]
    if not mxfp4:  # the kernels never read their scales pointer; any tensor stands in
        gate_up_scales, down_scales, s1_strides, s2_strides = gate_up, down, (0, 0, 0), (0, 0)
    pairs_per_expert = num_tokens * top_k / num_experts
    compute_dtype = hidden_states.dtype if mxfp4 else gate_up.dtype
    x = hidden_states.to(compute_dtype)
    activated = torch.empty(num_tokens * top_k, intermediate, dtype=compute_dtype, device=x.device)
    out = torch.empty(num_tokens * top_k, hidden, dtype=torch.float32, device=x.device)
    routing = top_k_weights.reshape(-1).to(torch.float32).contiguous()
    alignments: dict[int, object] = {}

    def launch(kernel, n: int, k: int, tensors: tuple, scalars: tuple, **constexprs) -> None:
        chosen = config or launch_config(x.device, pairs_per_expert, num_experts, n, k)
        block_m = chosen["BLOCK_M"]
        if block_m not in alignments:
            alignments[block_m] = align_block_size(top_k_index, num_experts, block_m)
        alignment = alignments[block_m]
        grid = (alignment.block_experts.numel(), triton.cdiv(n, chosen["BLOCK_N"]))
        kernel[grid](*tensors, alignment.sorted_pairs, alignment.block_experts, alignment.num_pairs, *scalars, **constexprs,
                     BLOCK_M=block_m, BLOCK_N=chosen["BLOCK_N"], BLOCK_K=chosen["BLOCK_K"],
                     num_warps=chosen.get("num_warps", 4), num_stages=chosen.get("num_stages", 2))

    # Without a bias the kernels never read their bias pointer; any tensor stands in.
    b1 = gate_up if gate_up_bias is None else gate_up_bias
    if gate_up_bias is None:
        b1_strides = (0, 0, 0)
    elif layout == GPT_OSS:  # [E, 2I] interleaved like the weight's columns
        b1_strides = (b1.stride(0), 2 * b1.stride(1), b1.stride(1))
    else:
        b1_strides = (b1.stride(0), b1.stride(1), intermediate * b1.stride(1))
    launch(_gate_up_kernel, intermediate, hidden, (x, gate_up, gate_up_scales, b1, activated),
           (top_k, hidden, intermediate, x.stride(0), x.stride(1), *w1_strides, *s1_strides, *b1_strides,
            activated.stride(0), activated.stride(1), alpha, limit),
           ACTIVATION=layout, HAS_BIAS=gate_up_bias is not None, MXFP4=mxfp4)
    b2 = down if down_bias is None else down_bias
    b2_strides = (0, 0) if down_bias is None else (b2.stride(0), b2.stride(1))
    launch(_down_kernel, hidden, intermediate, (activated, down, down_scales, b2, routing, out),
           (intermediate, hidden, activated.stride(0), activated.stride(1), *w2_strides, *s2_strides, *b2_strides,
            out.stride(0), out.stride(1)),
           HAS_BIAS=down_bias is not None, MXFP4=mxfp4)
    return out.view(num_tokens, top_k, hidden).sum(dim=1).to(hidden_states.dtype)
