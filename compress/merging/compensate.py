"""One-shot compensation: per MoE layer, new down projections for the reduced layer's experts,
fitted in closed form so that its output matches the full layer's on calibration tokens — no
gradient steps.

A reduced layer (pruned, or merged: `MergePlan.merge_matrix` / `router_matrix`) routes a sample
token x to new experts g with weights w_g(x); expert g's output is D_g·a_g(x) + b_g, with a_g(x)
its gated intermediate activation and (D_g, b_g) its down projection. Compensation refits every
(D_g, b_g) by ridge least squares toward its merged value, one expert at a time with the others
fixed (block coordinate descent, `SWEEPS` passes over the experts), each block solving

    min Σ_{x → g} ‖w_g(x)·(D_g·a_g(x) + b_g) − r_g(x)‖² + λ‖(D_g, b_g) − (D_g, b_g)_merged‖²

where r_g(x) is what the full layer's output y(x) leaves for g after the other routed experts'
current outputs, and λ is `RIDGE` times the mean diagonal of the block's normal matrix (so an
expert few tokens reach stays close to its merged weights). Routing and the gate/up projections
are not changed. When the full output is exactly reachable by new down projections and each token
reaches one new expert, one sweep finds it.

Memory: one expert's normal matrix ((I+1)², float64) and the sample's routed activations at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

RIDGE = 0.1  # chosen on the demo model (benchmarks/merge_quality.py): 0.01–0.3 within 3% on math, 1.0 worse
SWEEPS = 2
# One run of up to HELDOUT_RUN consecutive sample tokens in every HELDOUT_EVERY is not fitted (spread
# over the whole sample, so over every domain of a calibration mixture): the error on those shows
# whether the fit generalises or only interpolates its sample (at real size an expert sees fewer
# routed tokens than its down projection has unknowns per output channel).
HELDOUT_EVERY, HELDOUT_RUN = 5, 32


@dataclass
class CompensationFit:
    """One layer's refitted down projections (module orientation, {"down_proj": [G, …], "down_proj_bias": [G, H]}),
    held in memory or spilled to a safetensors file, and the relative layer-output error
    ‖reduced − full‖² / ‖full‖² before and after, on the tokens fitted and on the held-out ones."""

    error_before: float
    error_after: float
    tensors: dict | None = None
    path: str | None = None
    heldout_before: float | None = None
    heldout_after: float | None = None

    def load(self) -> dict:
        if self.tensors is not None:
            return self.tensors
        from safetensors.torch import load_file

        return load_file(self.path)

    def spill(self, path: Path, dtype: torch.dtype) -> CompensationFit:
        """The same fit with its tensors written to `path` in `dtype` (and no longer held)."""
        from safetensors.torch import save_file

        save_file({name: t.to(dtype).contiguous() for name, t in self.tensors.items()}, str(path))
        return CompensationFit(self.error_before, self.error_after, None, str(path), self.heldout_before, self.heldout_after)


def reduced_routing(sample, router_matrix: torch.Tensor, top_k: int):
    """(weights, ids) [T, k'] of the sample's tokens routed by the reduced layer's router, whose
    rows (and biases, buffers) are `router_matrix` [G, E] times the source's: its logits are the
    same combination of the source logits."""
    logits = (sample.logits.double() @ router_matrix.T).float()
    buffers = {name: (router_matrix @ t.double()).float() for name, t in sample.router_buffers.items()}
    return sample.route(logits, buffers, top_k)


def merged_experts(sample, merge_matrix: torch.Tensor, members_of: list[list[int]] | None = None, alignment: str = "none"):
    """A loader of the new experts' fused tensors: group ids → {name: [len(ids), …]}, each new
    expert `merge_matrix` [G, E] times its members' tensors (`members_of` [G]: in the plan's order,
    the dominant first; neurons aligned first with `alignment`; float64 sums, one group's members
    read at a time), in the sample's compute dtype."""
    from .align import merge_members

    def load(groups: list[int]) -> dict:
        parts: dict[str, list] = {}
        for group in groups:
            row = merge_matrix[group]
            members = row.nonzero().flatten().tolist() if members_of is None else members_of[group]
            for name, tensor in merge_members(sample.family, sample.expert_tensors(members), row[members], alignment).items():
                parts.setdefault(name, []).append(tensor)
        return {name: torch.stack(values, dim=sample.family.expert_tensors[name]["expert_dim"]) for name, values in parts.items()}

    return load


def heldout_tokens(count: int) -> torch.Tensor:
    """[count] bool: the sample tokens compensation does not fit, every `HELDOUT_EVERY`-th run of
    consecutive tokens (runs of `HELDOUT_RUN`, shorter in a sample of fewer than 20 runs' worth)."""
    run = max(1, min(HELDOUT_RUN, count // (4 * HELDOUT_EVERY)))
    return (torch.arange(count) // run) % HELDOUT_EVERY == HELDOUT_EVERY - 1


def _down_as_rows(family, tensor: torch.Tensor) -> torch.Tensor:
    """One expert's down projection as [I, H] (inputs × outputs), whatever the family's orientation."""
    return tensor if family.channel_dim("down_proj") == 2 else tensor.transpose(-1, -2)


def compensate_layer(sample, merge_matrix: torch.Tensor, router_matrix: torch.Tensor, top_k: int, *,
                     members_of: list[list[int]] | None = None, alignment: str = "none",
                     ridge: float = RIDGE, sweeps: int = SWEEPS) -> CompensationFit:
    """The refitted down projections of one reduced layer (see the module docstring), fitted on
    `sample` but its held-out tokens (`heldout_tokens`; the new experts as `merged_experts` makes them)."""
    family, groups = sample.family, merge_matrix.shape[0]
    target = sample.full_output().double()
    fitting = ~heldout_tokens(len(target))
    weights, ids = reduced_routing(sample, router_matrix, top_k)
    load = merged_experts(sample, merge_matrix, members_of, alignment)

    def intermediate(group_ids: list[int]) -> dict:  # the down projection replaced by the identity: a_g(x)
        tensors = load(group_ids)
        inner = _down_as_rows(family, tensors["down_proj"][0]).shape[0]
        eye = torch.eye(inner, dtype=tensors["down_proj"].dtype, device=tensors["down_proj"].device)
        tensors["down_proj"] = eye.expand(len(group_ids), inner, inner)
        if "down_proj_bias" in tensors:
            tensors["down_proj_bias"] = tensors["down_proj_bias"].new_zeros(len(group_ids), inner)
        return tensors

    activations = sample.outputs_of(intermediate, groups, ids).double()  # [T, k, I]
    outputs = sample.outputs_of(load, groups, ids).double()  # [T, k, H]
    w = weights.double().unsqueeze(-1)
    prediction = (w * outputs).sum(dim=1)

    def error(tokens: torch.Tensor) -> float:
        return float((prediction[tokens] - target[tokens]).square().sum()) / max(float(target[tokens].square().sum()), 1e-30)

    before, heldout_before = error(fitting), error(~fitting)
    has_bias = family.expert_tensors.get("down_proj_bias") is not None and sample.experts.has_bias
    fitted: dict[int, torch.Tensor] = {}  # g → [I(+1), H]: rows of D_g (then b_g)
    for _ in range(sweeps):
        for g in range(groups):
            routed, routed_slot = (ids == g).nonzero(as_tuple=True)
            token, slot = routed[fitting[routed]], routed_slot[fitting[routed]]
            if g not in fitted:
                merged = load([g])
                rows = _down_as_rows(family, merged["down_proj"][0]).double().cpu()
                fitted[g] = torch.cat([rows, merged["down_proj_bias"][0:1].double().cpu()]) if has_bias else rows
            if len(token) == 0:
                continue
            wg = w[token, slot]
            residual = target[token] - (prediction[token] - wg * outputs[token, slot])
            features = wg * activations[token, slot]
            if has_bias:
                features = torch.cat([features, wg], dim=1)
            normal = features.T @ features
            strength = ridge * normal.diagonal().mean().clamp(min=1e-30)
            fitted[g] = torch.linalg.solve(normal + strength * torch.eye(len(normal), dtype=torch.float64),
                                           features.T @ residual + strength * fitted[g])
            new = activations[routed, routed_slot] @ fitted[g][:activations.shape[-1]] + (fitted[g][-1] if has_bias else 0)
            prediction.index_put_((routed,), w[routed, routed_slot] * (new - outputs[routed, routed_slot]), accumulate=True)
            outputs[routed, routed_slot] = new
    after, heldout_after = error(fitting), error(~fitting)
    inner = activations.shape[-1]
    down = torch.stack([_down_as_rows(family, fitted[g][:inner].float()) for g in range(groups)])
    tensors = {"down_proj": down}
    if has_bias:
        tensors["down_proj_bias"] = torch.stack([fitted[g][inner].float() for g in range(groups)])
    return CompensationFit(before, after, tensors, heldout_before=heldout_before, heldout_after=heldout_after)
