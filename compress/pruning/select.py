"""Choosing the experts to keep from routing statistics.

Scores per expert (higher = keep) come from one `RoutingStats` file through the score criteria of
the table in `criteria.py`; ``reconstruct`` is a search instead (`reconstruct.py`).

Budgets: ``uniform`` keeps the best N of every layer; ``global`` keeps N × layers experts in total,
ranked across layers by each expert's share of its layer's total score (raw scores are not
comparable between layers), with at least ``min_per_layer`` (≥ top-k) in every layer. Protected
experts are kept first. With group-limited routing (DeepSeek-V3's ``n_group``) each group keeps
the same number, ranked within the group, so routing over the kept experts stays exact.
"""

from __future__ import annotations

import torch

from ..errors import CompressError
from ..stats import RoutingStats
from . import BUDGETS
from .criteria import CRITERIA, score_criteria


def expert_scores(stats: RoutingStats, layer: int, criterion: str, seed: int = 0) -> torch.Tensor:
    """Per-expert keep score [E] (float64) of one MoE layer, by a score criterion of `criteria.CRITERIA`."""
    entry = CRITERIA.get(criterion)
    if entry is None or entry.score is None:
        raise CompressError(f"{criterion!r} is not a criterion that scores experts: choose one of {', '.join(score_criteria())}")
    return entry.score(stats.layers[layer], layer, seed)


def _ranked(scores: torch.Tensor, candidates: list[int]) -> list[int]:
    """`candidates` from best to worst score; ties go to the lower id."""
    return sorted(candidates, key=lambda e: (-float(scores[e]), e))


def _keep_in_layer(scores: torch.Tensor, keep: int, protected: set[int], groups: int) -> list[int]:
    experts = scores.shape[0]
    if len(protected) > keep:
        raise CompressError(f"{len(protected)} experts are protected in a layer but only {keep} are kept: keep more or protect fewer")
    if groups == 1:
        rest = _ranked(scores, [e for e in range(experts) if e not in protected])
        return sorted([*protected, *rest[: keep - len(protected)]])
    size, per_group = experts // groups, keep // groups
    kept = []
    for group in range(groups):
        members = range(group * size, (group + 1) * size)
        chosen = [e for e in members if e in protected]
        if len(chosen) > per_group:
            raise CompressError(f"{len(chosen)} protected experts fall in one routing group that keeps {per_group}")
        kept += chosen + _ranked(scores, [e for e in members if e not in protected])[: per_group - len(chosen)]
    return sorted(kept)


def select_experts(
    stats: RoutingStats, criterion: str, keep: int, *, budget: str = "uniform", top_k: int,
    min_per_layer: int | None = None, protect: dict[int, set[int]] | None = None, groups: int = 1, seed: int = 0,
) -> dict[int, list[int]]:
    """Kept expert ids per MoE layer (ascending)."""
    protect = protect or {}
    layers = stats.layer_indices
    num_experts = {layer: stats.num_experts(layer) for layer in layers}
    scores = {layer: expert_scores(stats, layer, criterion, seed) for layer in layers}
    if groups > 1 and (keep % groups or keep // groups < 2):
        valid = [n for n in range(2 * groups, min(num_experts.values()) + 1, groups)]
        raise CompressError(
            f"--keep {keep} does not split evenly into this model's {groups} routing groups with at least 2 each: "
            f"choose one of {', '.join(map(str, valid))}"
        )
    if budget == "uniform":
        return {layer: _keep_in_layer(scores[layer], keep, protect.get(layer, set()), groups) for layer in layers}
    if budget != "global":
        raise CompressError(f"unknown budget {budget!r}: choose one of {', '.join(BUDGETS)}")
    if groups > 1:
        raise CompressError("--budget global is not available with group-limited routing (n_group > 1): use --budget uniform")
    minimum = max(top_k, min_per_layer or 0)
    if keep < minimum:
        raise CompressError(f"--keep {keep} is below the per-layer minimum {minimum} (at least top-k) of a global budget")
    kept = {
        layer: set(_keep_in_layer(scores[layer], max(minimum, len(protect.get(layer, ()))), protect.get(layer, set()), 1))
        for layer in layers
    }
    # Shares make layers comparable: an expert's part of its layer's total score.
    candidates = [
        (float(scores[layer][e] / scores[layer].sum().clamp(min=1e-300)), layer, e)
        for layer in layers for e in range(num_experts[layer]) if e not in kept[layer]
    ]
    remaining = keep * len(layers) - sum(len(k) for k in kept.values())
    for _, layer, e in sorted(candidates, key=lambda c: (-c[0], c[1], c[2]))[: max(remaining, 0)]:
        kept[layer].add(e)
    return {layer: sorted(experts) for layer, experts in kept.items()}


def team_statistics(stats: RoutingStats, team_sizes: dict[int, int]) -> RoutingStats:
    """Statistics of a tiered model's teams: each team's counts and sums are its members' (team t
    holds experts t·S … t·S+S-1), so every criterion ranks teams as it ranks experts."""
    from ..stats.routing_stats import COUNT_STATS, FLOAT_STATS

    layers = {}
    for layer, size in team_sizes.items():
        s = stats.layers[layer]
        layers[layer] = {"tokens": s["tokens"], "entropy_sum": s["entropy_sum"],
                         **{name: s[name].reshape(-1, size).sum(dim=1) for name in (*COUNT_STATS, *FLOAT_STATS) if name in s}}
    return RoutingStats(layers, stats.metadata)
