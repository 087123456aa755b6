"""Teams from routing statistics: which experts go together (greedy or agglomerative clustering of
co-activation) and their mixing weights."""

from __future__ import annotations

import torch

from ..errors import CompressError
from ..stats import RoutingStats
from . import CLUSTERING
from .plan import TieredPlan


def greedy_teams(selections: torch.Tensor, coactivation: torch.Tensor, teams: int, size: int) -> list[list[int]]:
    together = coactivation.double().clone()
    together.fill_diagonal_(0)
    order = sorted(range(len(selections)), key=lambda e: (-int(selections[e]), e))
    unassigned, result = list(order), []
    for _ in range(teams):
        team = [unassigned.pop(0)]
        while len(team) < size:
            best = max(unassigned, key=lambda e: (float(together[team, e].sum()), int(selections[e]), -e))
            unassigned.remove(best)
            team.append(best)
        result.append(team)
    return result


def agglomerative_teams(selections: torch.Tensor, coactivation: torch.Tensor, teams: int, size: int) -> list[list[int]]:
    candidates = sorted(range(len(selections)), key=lambda e: (-int(selections[e]), e))[: teams * size]
    counts = selections.double().clamp(min=1)
    similarity = coactivation.double() / torch.sqrt(counts[:, None] * counts[None, :])
    clusters = [[e] for e in candidates]
    while len(clusters[0]) < size:
        pairs = sorted(
            ((float(similarity[a][:, b].mean()), i, j) for i, a in enumerate(clusters) for j, b in enumerate(clusters) if i < j),
            key=lambda p: (-p[0], p[1], p[2]),
        )
        used, merged = set(), []
        for _, i, j in pairs:
            if i not in used and j not in used:
                used.update((i, j))
                merged.append(sorted(clusters[i] + clusters[j], key=lambda e: (-int(selections[e]), e)))
        clusters = merged
    return clusters


def mixing_weights(selections: torch.Tensor, teams: list[list[int]]) -> torch.Tensor:
    counts = torch.tensor([[float(selections[e]) for e in team] for team in teams], dtype=torch.float64)
    totals = counts.sum(dim=1, keepdim=True)
    uniform = torch.full_like(counts, 1.0 / counts.shape[1])
    return torch.where(totals > 0, counts / totals.clamp(min=1e-300), uniform).float()


def check_tiers(tiers: dict[int, int], experts_per_layer: dict[int, int], team_size: int, team_top_k: int, clustering: str) -> None:
    """Refuse a conversion that cannot be built, before any statistics are gathered."""
    if clustering not in CLUSTERING:
        raise CompressError(f"unknown clustering {clustering!r}: choose one of {', '.join(CLUSTERING)}")
    if clustering == "agglomerative" and team_size & (team_size - 1):
        raise CompressError(f"agglomerative clustering pairs clusters, so --team-size must be a power of two (got {team_size})")
    for layer, count in tiers.items():
        experts = experts_per_layer[layer]
        if count * team_size > experts:
            raise CompressError(f"layer {layer}: {count} teams × {team_size} experts = {count * team_size}, "
                                f"more than the {experts} experts it has")
        if not 1 <= team_top_k <= count:
            raise CompressError(f"--team-top-k {team_top_k} must be between 1 and the {count} teams of layer {layer}")


def design_teams(stats: RoutingStats, tiers: dict[int, int], team_size: int, team_top_k: int, clustering: str,
                 source: dict | None = None, provenance: dict | None = None) -> TieredPlan:
    check_tiers(tiers, {layer: stats.num_experts(layer) for layer in tiers}, team_size, team_top_k, clustering)
    build = greedy_teams if clustering == "greedy" else agglomerative_teams
    teams, mixing = {}, {}
    for layer, count in tiers.items():
        s = stats.layers[layer]
        teams[layer] = build(s["selections"], s["coactivation"], count, team_size)
        mixing[layer] = mixing_weights(s["selections"], teams[layer])
    return TieredPlan(source or {}, teams, mixing, team_top_k, provenance or {})
