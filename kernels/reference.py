"""Torch reference for the routed experts of one MoE layer: each routed expert's own output.

transformers' experts implementations return only the weighted sum Σₖ gₖ·fₖ(x). The profiler
(REAP and EAN need ‖f_j(x)‖ for every routed pair) and the kernels' tests need the per-pair outputs
f_j(x) themselves, so this module computes them with the same operations, in the same order, as
transformers' ``grouped_mm`` implementation (the default one): rows sorted by expert, one grouped
matrix product per projection. `combine_expert_outputs` then gives exactly what that implementation
returns.

It works on any module decorated with transformers' ``@use_experts_implementation`` and reads the
flags the decorator stores: ``has_gate``, ``has_bias``, ``is_transposed`` and
``has_post_expert_norm``. The gate is the module's own ``_apply_gate``, which covers gpt-oss's
interleaved, clamped SwiGLU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_TORCH_VERSION = tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2])


def _native_grouped_mm_available(weight: torch.Tensor) -> bool:
    # Before 2.11 the CPU kernel needs 16-byte aligned inputs, which memory-mapped checkpoints do not give.
    if not hasattr(F, "grouped_mm"):
        return False
    if weight.device.type == "cuda":
        return torch.cuda.get_device_capability(weight.device) >= (8, 0)
    return weight.device.type == "cpu" and _TORCH_VERSION >= (2, 11)


def grouped_linear(
    rows: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor, bias_rows: torch.Tensor | None, transposed: bool
) -> torch.Tensor:
    """``rows`` [S, in] sorted by expert, expert e owning ``rows[offsets[e-1]:offsets[e]]``.

    ``weight`` is [E, out, in] (``nn.Linear`` orientation) or [E, in, out] when ``transposed``;
    ``bias_rows`` is each row's bias [S, out] or None.
    """
    weight = weight if transposed else weight.transpose(-2, -1)  # [E, in, out]
    rows = rows.to(weight.dtype)
    if _native_grouped_mm_available(weight):
        out = F.grouped_mm(rows, weight, offs=offsets)
    else:
        out = torch.zeros(rows.shape[0], weight.shape[-1], dtype=rows.dtype, device=rows.device)
        start = 0
        for expert, end in enumerate(offsets.tolist()):
            if end > start:
                torch.mm(rows[start:end], weight[expert], out=out[start:end])
            start = end
    if bias_rows is not None:
        out.add_(bias_rows)
    return out


def routed_expert_outputs(experts: torch.nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor) -> torch.Tensor:
    """f_j(x) for every token x [T, H] and each of its routed experts j = top_k_index [T, k]: [T, k, H]."""
    num_tokens, top_k = top_k_index.shape
    expert_ids, order = torch.sort(top_k_index.reshape(-1))
    rows = hidden_states[order // top_k]
    tokens_per_expert = torch.bincount(expert_ids, minlength=experts.num_experts)
    offsets = torch.cumsum(tokens_per_expert, dim=0, dtype=torch.int32)

    def bias(name: str) -> torch.Tensor | None:
        return getattr(experts, name)[expert_ids] if experts.has_bias else None

    if experts.has_gate:
        projected = grouped_linear(rows, experts.gate_up_proj, offsets, bias("gate_up_proj_bias"), experts.is_transposed)
        projected = experts._apply_gate(projected)
    else:
        projected = grouped_linear(rows, experts.up_proj, offsets, bias("up_proj_bias"), experts.is_transposed)
        projected = experts.act_fn(projected)
    projected = grouped_linear(projected, experts.down_proj, offsets, bias("down_proj_bias"), experts.is_transposed)
    if experts.has_post_expert_norm:
        projected = experts.post_expert_norm(projected)

    outputs = torch.empty_like(projected)
    outputs[order] = projected
    return outputs.view(num_tokens, top_k, -1)


def combine_expert_outputs(outputs: torch.Tensor, top_k_weights: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Σₖ gₖ·fₖ(x): [T, k, H] outputs and [T, k] routing weights → [T, H] in `dtype`."""
    return (outputs * top_k_weights.unsqueeze(-1)).sum(dim=1).to(dtype)
