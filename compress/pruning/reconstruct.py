"""The ``reconstruct`` criterion: per layer, the kept set whose routed output stays closest to the
full layer's on calibration tokens (in the spirit of NAEE, Lu et al. 2024).

For a sample of calibration tokens the experts' inputs and the router logits of every MoE layer are
captured (in one forward pass of a loaded model here, or layer by layer by `compress.layerwise`);
each expert's output f_j(x) is computed once for every sampled token. The sample is small enough
that every expert's outputs for it cost no more than the routed experts' outputs for all the
calibration tokens (`layer_sample.search_tokens`), so the search never costs more than profiling.
The output of a kept set S is the family's routing over S alone (the other experts' logits at
−inf) applied to those outputs; its error is Σ_x ‖y_S(x) − y_all(x)‖². Every set is tried when
there are few (at most `EXHAUSTIVE_LIMIT`), otherwise experts are removed greedily, each time the
one whose removal raises the error least. Protected experts are never removed; with group-limited
routing only groups holding the most experts lose one, so every group ends with the same count.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

from ..errors import CompressError
from ..families import family_for_config
from ..layer_sample import search_model

EXHAUSTIVE_LIMIT = 2000
CANDIDATE_ELEMENTS = 2**24


class LayerReconstruction:
    """Error of the layer output for candidate kept sets, from every expert's outputs ``outputs``
    [T, E, H] (f_j(x) of every expert for every sampled token) and the router ``logits`` [T, E].

    The outputs are reduced once to each token's Gram matrix (fp64) of [f_1(x), …, f_E(x), y_all(x)],
    so a routing's error ‖Σ_j w_j f_j(x) − y_all(x)‖² is a k×k quadratic form per token instead of
    a sum over k·H values, and the outputs are not kept."""

    def __init__(self, family, config, router_buffers: dict, logits: torch.Tensor, outputs: torch.Tensor):
        self.family, self.config, self.logits = family, config, logits
        self.buffers = {name: t.detach().float().cpu() for name, t in router_buffers.items()}
        weights, index = self._route_all(torch.ones(logits.shape[1], dtype=torch.bool))
        chosen = outputs.gather(1, index.unsqueeze(-1).expand(-1, -1, outputs.shape[-1]))
        full = (chosen * weights.float().unsqueeze(-1)).sum(dim=1)
        self.gram = _gram(outputs, full)
        self.full_norm = float(self.gram[:, -1, -1].sum())  # Σ_x ‖y_all(x)‖²

    @classmethod
    def of_sample(cls, sample) -> LayerReconstruction:
        """For one MoE layer's `layer_sample.LayerSample`."""
        return cls(sample.family, sample.config, sample.router_buffers, sample.logits, sample.outputs)

    def _route(self, kept: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(weights, ids) [R, k] of each of `tokens` [R] routed over its own kept set `kept` [R, E]."""
        dropped = ~kept
        buffers = {name: t.expand_as(kept).masked_fill(dropped, float("-inf")) for name, t in self.buffers.items()}
        return self.family.route(self.logits[tokens].masked_fill(dropped, float("-inf")), self.config, buffers)

    def _route_all(self, kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._route(kept.expand(len(self.logits), -1), torch.arange(len(self.logits)))

    def token_errors(self, weights: torch.Tensor, index: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """‖y_S(x) − y_all(x)‖² per token (fp64) for a routing (weights, ids) [R, k] of `tokens` [R] (default: every token)."""
        tokens = torch.arange(len(index)) if tokens is None else tokens
        size = self.gram.shape[-1]
        base = (tokens * size * size).unsqueeze(-1)
        flat = self.gram.view(-1)
        pairs = flat[(base + index * size).unsqueeze(-1) + index.unsqueeze(-2)]  # <f_i, f_j> [R, k, k]
        against_full = flat[base + index * size + size - 1]  # <f_i, y_all> [R, k]
        w = weights.double()
        return (torch.einsum("ri,rij,rj->r", w, pairs, w) - 2 * (w * against_full).sum(dim=-1)
                + flat[base.squeeze(-1) + size * size - 1])

    def error(self, kept: list[int]) -> float:
        mask = torch.zeros(self.logits.shape[1], dtype=torch.bool)
        mask[kept] = True
        return float(self.token_errors(*self._route_all(mask)).sum())

    def removal_errors(self, kept: torch.Tensor, candidates: list[int], chosen: torch.Tensor, token_errors: torch.Tensor,
                       local: bool):
        """Removing each of `candidates` from the set `kept` [E], whose chosen ids [T, k] and
        per-token errors [T] are given: (per-token errors [C, T], and for the (candidate, token)
        pairs that were re-routed, their candidate and token indices and new chosen ids). With
        `local` routing only the tokens that chose a candidate are re-routed."""
        removed = torch.tensor(candidates)
        if local:
            candidate, token = (chosen.unsqueeze(0) == removed.view(-1, 1, 1)).any(dim=-1).nonzero(as_tuple=True)
        else:
            candidate, token = torch.ones(len(candidates), len(chosen), dtype=torch.bool).nonzero(as_tuple=True)
        masks = kept.expand(len(candidates), -1).clone()
        masks[torch.arange(len(candidates)), removed] = False
        weights, index = self._route(masks[candidate], token)
        errors = token_errors.expand(len(candidates), -1).clone()
        errors[candidate, token] = self.token_errors(weights, index, token)
        return errors, candidate, token, index


def _gram(outputs: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """Per token, the Gram matrix [E+1, E+1] (fp64) of its expert outputs `outputs` [T, E, H] and
    its full output `full` [T, H], a few tokens at a time."""
    step = max(1, 2**25 // (outputs.shape[1] * outputs.shape[2]))
    grams = []
    for start in range(0, len(outputs), step):
        part = torch.cat([outputs[start:start + step], full[start:start + step].unsqueeze(1)], dim=1).double()
        grams.append(torch.bmm(part, part.transpose(1, 2)))
    return torch.cat(grams)


def removal_path(layer: LayerReconstruction, down_to: int, protected: set[int], groups: int) -> list[tuple[list[int], float]]:
    """Greedy removal from every expert down to `down_to`: (kept set, error) after each step, each
    time removing the expert whose loss raises the error least (never a protected one; with
    group-limited routing only from the groups holding the most experts).

    Each step re-routes the candidates in batches and updates the current set's per-token errors:
    with local routing (`MoEFamily.routing_is_local`) only the tokens that chose the candidate
    (about k/|S| of them) can change, and only they are re-evaluated."""
    num_experts, tokens = layer.logits.shape[1], layer.logits.shape[0]
    group_size = num_experts // groups
    local = layer.family.routing_is_local(layer.config)
    kept = list(range(num_experts))
    mask = torch.ones(num_experts, dtype=torch.bool)
    chosen = layer._route_all(mask)[1]
    token_errors = torch.zeros(tokens, dtype=torch.float64)
    per_step = max(1, CANDIDATE_ELEMENTS // (tokens * num_experts))  # candidates re-routed at once: [C·T, E] logits
    path = [(list(kept), 0.0)]
    while len(kept) > down_to:
        counts = [sum(1 for e in kept if e // group_size == g) for g in range(groups)]
        removable = [e for e in kept if e not in protected and counts[e // group_size] == max(counts)]
        if not removable:
            break
        best = None
        for start in range(0, len(removable), per_step):
            errors, candidate, token, index = layer.removal_errors(mask, removable[start:start + per_step], chosen, token_errors, local)
            totals = errors.sum(dim=1).tolist()
            step_best = min(range(len(totals)), key=totals.__getitem__)
            if best is None or totals[step_best] < best[0]:
                rerouted = candidate == step_best
                best = (totals[step_best], removable[start + step_best], errors[step_best], token[rerouted], index[rerouted])
        error, expert, token_errors, rerouted, index = best
        chosen = chosen.clone()
        chosen[rerouted] = index
        kept.remove(expert)
        mask[expert] = False
        path.append((list(kept), error))
    return path


def best_kept_set(layer: LayerReconstruction, keep: int, protected: set[int], groups: int) -> list[int]:
    num_experts = layer.logits.shape[1]
    free = [e for e in range(num_experts) if e not in protected]
    candidates = math.comb(len(free), keep - len(protected))
    if groups == 1 and candidates <= EXHAUSTIVE_LIMIT:
        options = (sorted([*protected, *extra]) for extra in itertools.combinations(free, keep - len(protected)))
        return min(options, key=layer.error)
    return removal_path(layer, keep, protected, groups)[-1][0]


def global_kept_sets(paths: dict[int, list[tuple[list[int], float]]], scale: dict[int, float], total: int) -> dict[int, list[int]]:
    """Per-layer kept sets under a total budget: starting from every expert, repeatedly take the next
    step of whichever layer's removal path raises its relative error (error / ‖full output‖²) least."""
    position = {layer: 0 for layer in paths}
    kept_count = sum(len(path[0][0]) for path in paths.values())
    while kept_count > total:
        steps = [((path[position[layer] + 1][1] - path[position[layer]][1]) / scale[layer], layer)
                 for layer, path in paths.items() if position[layer] + 1 < len(path)]
        if not steps:
            break
        _, layer = min(steps)
        position[layer] += 1
        kept_count -= 1
    return {layer: path[position[layer]][0] for layer, path in paths.items()}


def choose_kept(layer_search: LayerReconstruction, layer: int, request):
    """The search's answer for one layer of a `ReconstructRequest`: the kept ids (uniform
    budget), or (removal path, output scale) for `global_kept_sets` (global budget)."""
    protect = request.protect.get(layer, set())
    if request.budget == "uniform":
        return sorted(best_kept_set(layer_search, request.keep, protect, request.groups))
    minimum = max(layer_search.family.top_k(layer_search.config), request.min_per_layer or 0)
    return (removal_path(layer_search, max(minimum, len(protect)), protect, request.groups),
            max(layer_search.full_norm, 1e-30))


@dataclass(frozen=True)
class ReconstructRequest:
    """What the ``reconstruct`` search keeps.

    Like every per-layer search the engine runs on its sample windows (merge groupings and
    compensation in `merging.requests`), it is checked before the pass (`check`), answers one
    `layer_sample.LayerSample` at a time (`answer`) and turns the answers into its result (`finish`)."""

    keep: int
    protect: dict
    groups: int = 1
    budget: str = "uniform"
    min_per_layer: int | None = None

    def check(self, top_k: int) -> None:
        check_request(self, top_k)

    def answer(self, sample):
        return choose_kept(LayerReconstruction.of_sample(sample), sample.layer, self)

    def finish(self, answers: dict):
        return finish_selection(answers, self)


def check_request(request, top_k: int) -> None:
    if request.budget == "uniform" and any(len(experts) > request.keep for experts in request.protect.values()):
        raise CompressError(f"more experts are protected in a layer than --keep {request.keep}: keep more or protect fewer")
    if request.budget == "global" and request.groups > 1:
        raise CompressError("--budget global is not available with group-limited routing (n_group > 1): use --budget uniform")
    minimum = max(top_k, request.min_per_layer or 0)
    if request.budget == "global" and request.keep < minimum:
        raise CompressError(f"--keep {request.keep} is below the per-layer minimum {minimum} (at least top-k) of a global budget")


def reconstruction_selection(
    model, windows: torch.Tensor, keep: int, *, batch_size: int = 8, protect: dict[int, set[int]] | None = None,
    groups: int = 1, max_tokens: int | None = None, progress: bool = True, budget: str = "uniform",
    min_per_layer: int | None = None,
) -> dict[int, list[int]]:
    """Kept expert ids per MoE layer (ascending) that best reconstruct each layer's output, for a
    loaded model (the CLI searches layer by layer: `compress.layerwise.calibrate`).

    ``budget="uniform"`` keeps `keep` experts in every layer; ``"global"`` keeps `keep` × layers in
    total, at least `min_per_layer` (default: top-k) in each, spending the removals where they cost
    the least relative error (`global_kept_sets`)."""
    request = ReconstructRequest(keep, protect or {}, groups, budget, min_per_layer)
    check_request(request, family_for_config(model.config).top_k(model.config))
    return search_model(model, windows, request, batch_size=batch_size, max_tokens=max_tokens, progress=progress)


def finish_selection(answers: dict, request) -> dict[int, list[int]]:
    """Kept ids per layer from `choose_kept`'s answers (a global budget is spent across layers here)."""
    if request.budget == "uniform":
        return answers
    paths = {layer: path for layer, (path, _) in answers.items()}
    scales = {layer: scale for layer, (_, scale) in answers.items()}
    return {layer: sorted(ids) for layer, ids in global_kept_sets(paths, scales, request.keep * len(paths)).items()}
