"""One-shot compensation: per MoE layer, new down projections for the reduced layer's experts,
fitted in closed form so that its output matches the full layer's on every routed calibration
token — no gradient steps.

A reduced layer (pruned, or merged: `MergePlan.merge_matrix` / `router_matrix`) routes a token x
to new experts g with weights w_g(x); expert g's output is D_g·a_g(x) + b_g, with a_g(x) its gated
intermediate activation and M_g = (D_g, b_g) its down projection. The layer misses the full
layer's output y(x) by e(x) = y(x) − Σ_g w_g(x)·(D_g·a_g(x) + b_g). Each routed expert takes the
share s_g(x) = w_g(x) / Σ w(x) of that error, and its correction Δ_g solves the ridge least squares

    min Σ_{x → g} ‖f_g(x)ᵀ·Δ_g − s_g(x)·e(x)‖² + λ‖Δ_g‖²,   f_g(x) = w_g(x)·(a_g(x), 1)

so Δ_g = (A_g + λI)⁻¹ C_g with the normal equations A_g = Σ f fᵀ and C_g = Σ f (s·e)ᵀ summed over
every fitted token routed to g (λ is `RIDGE` times A_g's mean diagonal, so an expert few tokens
reach stays near its merged weights). The sums stream: `LayerFit.add` takes the calibration tokens
a chunk at a time (the layer-wise engine's chunks), so the fit sees every routed token, not the
search's sample, and memory holds each new expert's A_g and C_g ((I+1)·(I+1+H) floats) and one chunk's
new-expert activations (kept from computing the error to the sums, so each block of new experts is
merged and run once per chunk: 1.5 GB for the engine's largest chunk at gpt-oss shapes). The shares
add up to the whole error, so if every expert fits its share exactly the layer output is exact;
with one new expert per token this is the exact least-squares fit. Routing and gate/up are unchanged.

A fifth of the tokens (`heldout_tokens`) is never fitted: the layer error before and after on up
to `EVAL_TOKENS` of them, and of the fitted ones, shows whether the fit generalises or only
interpolates its sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..kernels.reference import pair_outputs_in_groups

RIDGE = 0.1  # chosen on the demo model (benchmarks/merge_quality.py): 0.01–0.3 within 3% on math, 1.0 worse
# One run of up to HELDOUT_RUN consecutive tokens in every HELDOUT_EVERY is not fitted (spread over
# the whole calibration set, so over every domain of a mixture).
HELDOUT_EVERY, HELDOUT_RUN = 5, 32
EVAL_TOKENS = 2048  # tokens of each kind (fitted, held out) the error after the fit is measured on
ROUTER_PREFIX = "router."  # a fit's refitted router rows, beside its down projections
SLICE_BYTES = 2**28  # the new experts' activations of one slice of a chunk's (token, expert) pairs (fp32)


@dataclass
class CompensationFit:
    """One layer's refitted down projections (module orientation, {"down_proj": [G, …], "down_proj_bias": [G, H]})
    and router rows ({"router.weight": [G, H], "router.bias": [G]}, with ``router: fitted``), held in
    memory or spilled to a safetensors file, and the relative layer-output error ‖reduced − full‖² /
    ‖full‖² before and after, on the tokens fitted and on the held-out ones (None without compensation)."""

    error_before: float | None
    error_after: float | None
    tensors: dict | None = None
    path: str | None = None
    heldout_before: float | None = None
    heldout_after: float | None = None

    def load(self) -> dict:
        if self.tensors is not None:
            return self.tensors
        from safetensors.torch import load_file

        return load_file(self.path)

    def tensor(self, name: str) -> torch.Tensor | None:
        """One of the fit's tensors (read alone from a spilled file), or None when it has no `name`."""
        if self.tensors is not None:
            return self.tensors.get(name)
        from safetensors import safe_open

        with safe_open(self.path, framework="pt") as handle:
            return handle.get_tensor(name) if name in handle.keys() else None

    def spill(self, path: Path, dtype: torch.dtype) -> CompensationFit:
        """The same fit with its tensors written to `path` in `dtype` (and no longer held)."""
        from safetensors.torch import save_file

        save_file({name: t.to(dtype).contiguous() for name, t in self.tensors.items()}, str(path))
        return CompensationFit(self.error_before, self.error_after, None, str(path), self.heldout_before, self.heldout_after)


def reduced_routing(sample, router_matrix: torch.Tensor, top_k: int, router=None):
    """(weights, ids) [T, k'] of the sample's tokens routed by the reduced layer's router, whose
    rows (and biases, buffers) are `router_matrix` [G, E] times the source's: its logits are the
    same combination of the source logits; the groups `router` (a solved `router_fit.RouterFit`)
    fits have its rows' logits instead."""
    logits = sample.logits.double() @ router_matrix.T
    if router is not None and router.fitted:
        logits[:, router.fitted] = router.fitted_logits(sample.inputs)
    buffers = {name: (router_matrix @ t.double()).float() for name, t in sample.router_buffers.items()}
    return sample.route(logits.float(), buffers, top_k)


class MergedExperts:
    """The new experts of one layer from a sample's expert tensors: new expert g is `merge_matrix`
    [G, E] row g times its members' tensors (`members_of` [G], in the plan's order, the dominant
    first; neurons aligned first with `alignment`, each group's permutations found once from all
    of its tensors, or given in `stored` (`MergePlan.stored_permutations`: group → list or None);
    combined by `method`, `align.merge_members`), in float64, returned in the sample's compute dtype."""

    def __init__(self, sample, merge_matrix: torch.Tensor, members_of: list[list[int]] | None = None, alignment: str = "none",
                 stored=None, method: str = "average"):
        self.sample, self.merge_matrix, self.alignment, self.method = sample, merge_matrix, alignment, method
        self.members_of = members_of or [row.nonzero().flatten().tolist() for row in merge_matrix]
        self._permutations: dict[int, list] = {}
        self.stored = stored

    def permutations(self, group: int, tensors: dict | None = None) -> list:
        from .align import group_permutations

        if group not in self._permutations and self.stored is not None and self.stored(group) is not None:
            self._permutations[group] = self.stored(group)
        if group not in self._permutations:
            members = self.members_of[group]
            self._permutations[group] = group_permutations(self.sample.family, tensors or self.sample.expert_tensors(members),
                                                           self.alignment)
        return self._permutations[group]

    def __call__(self, groups: list[int], names=None) -> dict:
        """{name: [len(groups), …]} of new experts `groups` (every tensor, or those in `names`)."""
        from .align import merge_members

        family, parts = self.sample.family, {}
        for group in groups:
            members = self.members_of[group]
            if names is not None and self.alignment == "weights":
                self.permutations(group)  # from every tensor, as the writer finds them
            tensors = self.sample.expert_tensors(members, names)
            merged = merge_members(family, tensors, self.merge_matrix[group, members], permutations=self.permutations(group, tensors),
                                   method=self.method)
            for name, tensor in merged.items():
                parts.setdefault(name, []).append(tensor)
        return {name: torch.stack(values, dim=family.expert_tensors[name]["expert_dim"]) for name, values in parts.items()}


def heldout_tokens(count: int) -> torch.Tensor:
    """[count] bool: the tokens compensation does not fit, every `HELDOUT_EVERY`-th run of
    consecutive tokens (runs of `HELDOUT_RUN`, shorter in fewer than 20 runs' worth of tokens)."""
    run = max(1, min(HELDOUT_RUN, count // (4 * HELDOUT_EVERY)))
    return (torch.arange(count) // run) % HELDOUT_EVERY == HELDOUT_EVERY - 1


def down_as_rows(family, tensor: torch.Tensor) -> torch.Tensor:
    """Down projections [..., I, H] (inputs × outputs), whatever the family's orientation (its own inverse)."""
    return tensor if family.channel_dim("down_proj") == 2 else tensor.transpose(-1, -2)


class _Evaluation:
    """Up to `EVAL_TOKENS` tokens of one kind (fitted or held out), every `stride`-th, kept so the
    layer error after the fit can be measured on them: their features, new expert ids and error."""

    def __init__(self, count: int):
        self.stride, self.seen = max(1, math.ceil(count / EVAL_TOKENS)), 0
        self.features, self.ids, self.errors, self.norm = [], [], [], 0.0

    def keep(self, mask: torch.Tensor, ids: torch.Tensor, error: torch.Tensor, target: torch.Tensor):
        """Keep every `stride`-th of a chunk's tokens of this kind (`mask` [T]) with their new expert
        ids, error and target norm; [T] the position of each token among those kept (-1 if not),
        for `fill` to record their features."""
        rank = self.seen + torch.cumsum(mask.long(), 0) - 1
        self.seen += int(mask.sum())
        kept = mask & (rank % self.stride == 0)
        position = torch.full((len(mask),), -1, dtype=torch.long)
        position[kept] = torch.arange(int(kept.sum()))
        self.ids.append(ids[kept])
        self.errors.append(error[kept])
        self.norm += float(target[kept].double().square().sum())
        self.features.append(None)
        return position

    def fill(self, position: torch.Tensor, token: torch.Tensor, slot: torch.Tensor, features: torch.Tensor) -> None:
        """Record the features of the pairs (token, slot) of the last chunk whose token is kept."""
        if self.features[-1] is None:
            self.features[-1] = features.new_zeros(len(self.ids[-1]), self.ids[-1].shape[1], features.shape[-1])
        at = position[token]
        chosen = at >= 0
        self.features[-1][at[chosen], slot[chosen]] = features[chosen]

    def errors_before_after(self, deltas: dict[int, torch.Tensor]) -> tuple[float, float]:
        """Relative layer error ‖e‖² / ‖y‖² on the kept tokens before and after the corrections Δ_g."""
        parts = [(f, i, e) for f, i, e in zip(self.features, self.ids, self.errors) if f is not None]
        if not parts or self.norm == 0:
            return 0.0, 0.0
        features, ids, error = (torch.cat(part) for part in zip(*parts))
        features, error = features.double(), error.double()
        before = float(error.square().sum())
        for g, delta in deltas.items():
            token, slot = (ids == g).nonzero(as_tuple=True)
            error.index_put_((token,), -(features[token, slot] @ delta.to(features.device)), accumulate=True)
        return before / self.norm, float(error.square().sum()) / self.norm


class LayerFit:
    """The streamed refit of one MoE layer: `add` each chunk of the calibration tokens (a
    `LayerSample`, in order, `tokens` in all), then `result`. With `compensate` the down projections
    (see the module docstring); with `fit_router` the router rows of merged experts
    (`router_fit.RouterFit`). With both, the router is fitted first, on a sweep of its own
    (`routing_first`: `add_routing` every chunk before any `add`), so compensation fits the routing
    the reduced layer will have."""

    def __init__(self, merge_matrix: torch.Tensor, router_matrix: torch.Tensor, top_k: int, tokens: int, *,
                 members_of: list[list[int]] | None = None, alignment: str = "none", stored=None, method: str = "average",
                 ridge: float = RIDGE, compensate: bool = True, fit_router: bool = False):
        self.merge_matrix, self.router_matrix, self.top_k, self.ridge = merge_matrix, router_matrix, top_k, ridge
        self.members_of = members_of or [row.nonzero().flatten().tolist() for row in merge_matrix]
        self.alignment, self.stored, self.method = alignment, stored, method
        self.compensate, self.fit_router, self.router = compensate, fit_router, None
        self.routing_first = compensate and fit_router and merge_matrix.count_nonzero(dim=1).max() > 1
        self.heldout, self.offset = heldout_tokens(tokens), 0
        held = int(self.heldout.sum())
        self.evaluation = {"fitted": _Evaluation(tokens - held), "heldout": _Evaluation(held)}
        self.normal: dict[int, torch.Tensor] = {}  # g → A_g [F, F]
        self.right: dict[int, torch.Tensor] = {}  # g → C_g [F, H]
        self.load = self.family = self.has_bias = None

    def _pair_activations(self, sample, ids: torch.Tensor, inner: int):
        """(tokens, slots, activations [p, I], outputs [p, H]) of the (token, new expert) pairs `ids`
        [T, k']: the new experts' intermediate activations and their outputs D·a + b from them; a
        block of new experts at a time (each merged once per chunk), a block's pairs in slices of
        at most `SLICE_BYTES` of activations."""
        flat = ids.reshape(-1)
        order = torch.argsort(flat, stable=True)
        groups = self.merge_matrix.shape[0]
        size = sample.group_size or groups
        bounds = torch.searchsorted(flat[order], torch.arange(0, groups + size, size)).tolist()
        step = max(1, SLICE_BYTES // (4 * inner))
        device = sample.inputs.device
        for index, first in enumerate(range(0, groups, size)):
            lo, hi = bounds[index], bounds[index + 1]
            if hi == lo:
                continue
            block = list(range(first, min(first + size, groups)))
            tensors = self.load(block)
            down = down_as_rows(self.family, tensors["down_proj"]).float()  # [B, I, H]
            bias = tensors["down_proj_bias"].float() if self.has_bias else None
            for start in range(lo, hi, step):
                pairs = order[start:min(start + step, hi)]
                token, slot, local = pairs // ids.shape[1], pairs % ids.shape[1], (flat[pairs] - first).to(device)
                (act,) = pair_outputs_in_groups(sample.experts, [(sample.inputs, token.to(device), local)],
                                                lambda _, loaded=tensors: loaded, len(block), num_experts=len(block), activations=True)
                act = act.float()
                out = act.new_empty(len(act), down.shape[-1])
                for g in local.unique().tolist():
                    mine = local == g
                    out[mine] = act[mine] @ down[g] + (0 if bias is None else bias[g])
                yield token, slot, act.cpu(), out.cpu()

    def add_routing(self, sample) -> None:
        """Add the router's normal equations of the next calibration tokens (`routing_first`)."""
        if self.router is None:
            from .router_fit import RouterFit

            self.router = RouterFit(self.members_of, sample.router_rows, sample.family.sigmoid_scores(sample.config))
        self.router.add(sample.inputs, sample.logits)

    def add(self, sample) -> None:
        """Add the normal equations of the next `len(sample.inputs)` calibration tokens."""
        if self.fit_router and not self.routing_first:
            self.add_routing(sample)
        if not self.compensate:
            return
        if self.load is None:
            self.load = MergedExperts(sample, self.merge_matrix, self.members_of, self.alignment, self.stored, self.method)
            self.family = sample.family
            self.has_bias = self.family.expert_tensors.get("down_proj_bias") is not None and sample.experts.has_bias
        target = sample.full_output().float()
        weights, ids = reduced_routing(sample, self.router_matrix, self.top_k, self.router)
        w = weights.float()
        fitted = ~self.heldout[self.offset:self.offset + len(target)]
        self.offset += len(target)
        hidden, inner = target.shape[-1], down_as_rows(self.family, sample.experts.down_proj).shape[-2]
        # the reduced layer's error e(x) on these tokens, then its normal equations from the
        # activations kept meanwhile: each block of new experts is merged once per chunk
        error, pairs = target.clone(), []
        for token, slot, act, out in self._pair_activations(sample, ids, inner):
            error.index_add_(0, token, -(w[token, slot].unsqueeze(-1) * out))
            pairs.append((token, slot, act))
        share = w / w.sum(dim=1, keepdim=True).clamp(min=1e-30)
        kept = [(evaluation, evaluation.keep(mask, ids, error, target))
                for evaluation, mask in zip(self.evaluation.values(), (fitted, ~fitted))]
        while pairs:
            token, slot, act = pairs.pop(0)
            gate = w[token, slot].unsqueeze(-1)
            features = gate * act
            if self.has_bias:
                features = torch.cat([features, gate], dim=-1)  # [p, F]
            for evaluation, position in kept:
                evaluation.fill(position, token, slot, features)
            chosen = fitted[token]
            token, slot, features, groups = token[chosen], slot[chosen], features[chosen], ids[token[chosen], slot[chosen]]
            for g in groups.unique().tolist():
                mine = groups == g
                f = features[mine]
                if g not in self.normal:
                    self.normal[g] = f.new_zeros(f.shape[1], f.shape[1])
                    self.right[g] = f.new_zeros(f.shape[1], hidden)
                self.normal[g].addmm_(f.T, f)
                self.right[g].addmm_(f.T, share[token[mine], slot[mine]].unsqueeze(-1) * error[token[mine]])

    def corrections(self) -> dict[int, torch.Tensor]:
        """Δ_g [F, H] (float64) of every new expert some fitted token reached."""
        deltas = {}
        for g, normal in self.normal.items():
            normal = normal.double()
            strength = self.ridge * normal.diagonal().mean().clamp(min=1e-30)
            deltas[g] = torch.linalg.solve(normal + strength * torch.eye(len(normal), dtype=torch.float64, device=normal.device),
                                           self.right[g].double())
        return deltas

    def result(self) -> CompensationFit:
        """The refitted down projections and the layer errors before and after, and the router rows."""
        router = {} if self.router is None else {ROUTER_PREFIX + name: t.float() for name, t in self.router.rows().items()}
        if not self.compensate:
            return CompensationFit(None, None, router)
        deltas = self.corrections()
        before, after = self.evaluation["fitted"].errors_before_after(deltas)
        heldout_before, heldout_after = self.evaluation["heldout"].errors_before_after(deltas)
        down, bias = [], []
        for g in range(self.merge_matrix.shape[0]):
            merged = self.load([g], ("down_proj", "down_proj_bias"))
            rows = down_as_rows(self.family, merged["down_proj"][0]).double()
            delta = deltas.get(g)
            inner = rows.shape[0]
            down.append(down_as_rows(self.family, (rows if delta is None else rows + delta[:inner].to(rows.device)).float()))
            if self.has_bias:
                row = merged["down_proj_bias"][0].double()
                bias.append((row if delta is None else row + delta[inner].to(row.device)).float())
        tensors = {"down_proj": torch.stack(down).cpu()} | router
        if self.has_bias:
            tensors["down_proj_bias"] = torch.stack(bias).cpu()
        return CompensationFit(before, after, tensors, heldout_before=heldout_before, heldout_after=heldout_after)


def compensate_layer(sample, merge_matrix: torch.Tensor, router_matrix: torch.Tensor, top_k: int, *,
                     members_of: list[list[int]] | None = None, alignment: str = "none", ridge: float = RIDGE) -> CompensationFit:
    """The refitted down projections of one reduced layer fitted on one `sample` (all its tokens in one chunk)."""
    fit = LayerFit(merge_matrix, router_matrix, top_k, len(sample.inputs), members_of=members_of, alignment=alignment, ridge=ridge)
    fit.add(sample)
    return fit.result()
