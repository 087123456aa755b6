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

from .alignment import count_per_expert

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


def routed_expert_outputs(experts: torch.nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                          load_experts=None, group_size: int | None = None) -> torch.Tensor:
    """f_j(x) for every token x [T, H] and each of its routed experts j = top_k_index [T, k]: [T, k, H]
    (see `pair_outputs` for `load_experts` and `group_size`)."""
    num_tokens, top_k = top_k_index.shape
    tokens = torch.arange(num_tokens, device=top_k_index.device).repeat_interleave(top_k)
    outputs = pair_outputs(experts, hidden_states, tokens, top_k_index.reshape(-1), load_experts, group_size)
    return outputs.view(num_tokens, top_k, -1)


def pair_outputs(experts: torch.nn.Module, hidden_states: torch.Tensor, tokens: torch.Tensor, expert_ids: torch.Tensor,
                 load_experts=None, group_size: int | None = None) -> torch.Tensor:
    """f_e(x_t) for every (token t, expert e) pair: [P, H] in the order of the pairs.

    By default the module's own expert tensors are used; with `load_experts` they are read in
    groups (see `pair_outputs_in_groups`).
    """
    if load_experts is not None:
        return pair_outputs_in_groups(experts, [(hidden_states, tokens, expert_ids)], load_experts, group_size)[0]
    sorted_ids, order = torch.sort(expert_ids)
    tensors = {name: getattr(experts, name) for name in _TENSORS if hasattr(experts, name)}
    projected = _expert_rows(experts, hidden_states[tokens[order]], sorted_ids, tensors, experts.num_experts)
    outputs = torch.empty_like(projected)
    outputs[order] = projected
    return outputs


def pair_outputs_in_groups(experts: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                           load_experts, group_size: int, num_experts: int | None = None, activations: bool = False) -> list[torch.Tensor]:
    """`pair_outputs` of several (hidden_states, tokens, expert_ids) batches, the experts taken
    `group_size` at a time from `load_experts` (expert ids → {tensor name: those experts' tensor},
    e.g. read from a checkpoint): only one group's weights are ever in memory, and each group is
    loaded once for all batches. Each batch's rows are multiplied on their own, so a batch's
    outputs never depend on the batches beside it, and every row is computed exactly as with every
    expert present. `num_experts` (default: the module's) is how many experts `load_experts` knows.
    With `activations` each pair's intermediate activation (the down projection's input, [P, I])
    is returned instead of its output.
    """
    num_experts = num_experts or experts.num_experts
    edges = torch.arange(0, num_experts + group_size, group_size)
    prepared, outputs = [], []
    for hidden_states, tokens, expert_ids in batches:
        sorted_ids, order = torch.sort(expert_ids)
        bounds = torch.searchsorted(sorted_ids, edges.to(sorted_ids.device)).tolist()
        prepared.append((hidden_states, tokens, sorted_ids, order, bounds))
        outputs.append(None)  # allocated at the first rows: the output width need not be the input's
    for group in range(len(edges) - 1):
        first = group * group_size
        ids = list(range(first, min(first + group_size, num_experts)))
        tensors = None
        for index, (hidden_states, tokens, sorted_ids, order, bounds) in enumerate(prepared):
            lo, hi = bounds[group], bounds[group + 1]
            if hi > lo:
                tensors = tensors if tensors is not None else load_experts(ids)
                pairs = order[lo:hi]  # rows are gathered per group, so only the outputs are ever whole
                rows = _expert_rows(experts, hidden_states[tokens[pairs]], sorted_ids[lo:hi] - first, tensors, len(ids), activations)
                if outputs[index] is None:
                    outputs[index] = rows.new_empty(len(order), rows.shape[-1])
                outputs[index][pairs] = rows
        del tensors
    return [out if out is not None else hidden_states.new_empty(0, hidden_states.shape[-1])
            for out, (hidden_states, *_) in zip(outputs, prepared)]


_TENSORS = ("gate_up_proj", "gate_up_proj_bias", "up_proj", "up_proj_bias", "down_proj", "down_proj_bias")


def _expert_rows(experts: torch.nn.Module, rows: torch.Tensor, expert_ids: torch.Tensor, tensors: dict, num_experts: int,
                 activations: bool = False) -> torch.Tensor:
    """The experts' outputs (or, with `activations`, their down projections' inputs) for `rows`
    sorted by expert (`expert_ids`, local to `tensors`)."""
    offsets = torch.cumsum(count_per_expert(expert_ids, num_experts), dim=0, dtype=torch.int32)

    def bias(name: str) -> torch.Tensor | None:
        return tensors[name][expert_ids] if experts.has_bias else None

    if experts.has_gate:
        projected = grouped_linear(rows, tensors["gate_up_proj"], offsets, bias("gate_up_proj_bias"), experts.is_transposed)
        projected = experts._apply_gate(projected)
    else:
        projected = grouped_linear(rows, tensors["up_proj"], offsets, bias("up_proj_bias"), experts.is_transposed)
        projected = experts.act_fn(projected)
    if activations:
        return projected
    projected = grouped_linear(projected, tensors["down_proj"], offsets, bias("down_proj_bias"), experts.is_transposed)
    if experts.has_post_expert_norm:
        projected = experts.post_expert_norm(projected)
    return projected


def combine_expert_outputs(outputs: torch.Tensor, top_k_weights: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Σₖ gₖ·fₖ(x): [T, k, H] outputs and [T, k] routing weights → [T, H] in `dtype`."""
    return (outputs * top_k_weights.unsqueeze(-1)).sum(dim=1).to(dtype)
