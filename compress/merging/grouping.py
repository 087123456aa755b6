"""Merge groupings: which experts of one MoE layer become one, decided on a `LayerSample`.

* ``hc-smoe`` (HC-SMoE, Chen et al. 2024): hierarchical clustering of the experts, average
  linkage on the Euclidean distance between their mean outputs over the sample's tokens (every
  expert's output for every token), until `keep` clusters remain.
* ``m-smoe`` (M-SMoE, Li et al. 2024): the `keep` most used experts are dominant; every other
  expert joins the dominant expert whose router logits over the sample's tokens are most similar
  (cosine), i.e. the one the router treats most alike.

Usage (selection count, gate mass or REAP saliency of each expert under the layer's routing of
the sample) orders each group, most used first (that expert's router row is the group's with ``router:
dominant``), and gives the merge weights (normalised within the group). With group-limited
routing (DeepSeek-V3) every routing group is grouped on its own into the same number of experts.
"""

from __future__ import annotations

import torch

from ..errors import CompressError
from . import MERGE_WEIGHTS
from .groupings import GROUPINGS

# An unused expert still gets a (negligible) positive weight, so every plan weight is > 0.
_UNUSED_WEIGHT = 1e-6


def usage(sample, weights: str) -> torch.Tensor:
    """Per-expert usage [E] (float64) of the sample's tokens: selections (``frequency``), Σ gate
    (``gate-mass``) or REAP's saliency, the mean of g·‖f(x)‖ over the tokens routed to the expert
    (``saliency``: REAM weighs and orders a group's members by it)."""
    gates, ids = sample.route()
    count = sample.logits.shape[1]
    if weights == "frequency":
        return torch.bincount(ids.reshape(-1), minlength=count).double()
    if weights == "gate-mass":
        return torch.zeros(count, dtype=torch.float64).index_add_(0, ids.reshape(-1), gates.reshape(-1).double())
    if weights == "saliency":
        norms = sample.outputs.gather(1, ids.unsqueeze(-1).expand(-1, -1, sample.outputs.shape[-1])).double().norm(dim=-1)
        total = torch.zeros(count, dtype=torch.float64).index_add_(0, ids.reshape(-1), (gates.double() * norms).reshape(-1))
        return total / torch.bincount(ids.reshape(-1), minlength=count).clamp(min=1)
    raise CompressError(f"unknown merge weights {weights!r}: choose one of {', '.join(MERGE_WEIGHTS)}")


def average_linkage(features: torch.Tensor, clusters: int) -> list[list[int]]:
    """Agglomerative clustering of the rows of `features` [N, D] into `clusters` groups, average
    linkage on Euclidean distance (ties: the lowest pair of cluster ids)."""
    distance = torch.cdist(features.double(), features.double())
    groups = [[i] for i in range(len(features))]
    linkage = distance.clone()
    linkage.fill_diagonal_(float("inf"))
    while len(groups) > clusters:
        flat = int(torch.argmin(linkage))
        a, b = sorted(divmod(flat, len(groups)))
        sizes = torch.tensor([len(g) for g in groups], dtype=torch.float64)
        merged = (linkage[a] * sizes[a] + linkage[b] * sizes[b]) / (sizes[a] + sizes[b])  # average linkage (Lance-Williams)
        linkage[a], linkage[:, a] = merged, merged
        linkage[a, a] = float("inf")
        keep = [i for i in range(len(groups)) if i != b]
        linkage = linkage[keep][:, keep]
        groups[a] = groups[a] + groups[b]
        del groups[b]
    return [sorted(g) for g in groups]


def _within_routing_groups(count: int, keep: int, routing_groups: int, group_one) -> list[list[int]]:
    """`group_one(members, keep)` on each routing group (all experts when routing is not grouped)."""
    if keep % routing_groups or keep // routing_groups < (2 if routing_groups > 1 else 1):
        raise CompressError(f"--keep {keep} does not split evenly into this model's {routing_groups} routing groups "
                            "with at least 2 each")
    size = count // routing_groups
    result = []
    for r in range(routing_groups):
        members = list(range(r * size, (r + 1) * size))
        result += [[members[i] for i in group] for group in group_one(members, keep // routing_groups)]
    return result


def hc_smoe_groups(sample, keep: int, used: torch.Tensor | None = None, routing_groups: int = 1) -> list[list[int]]:
    means = sample.outputs.mean(dim=0)  # [E, H]
    return _within_routing_groups(len(means), keep, routing_groups, lambda members, k: average_linkage(means[members], k))


def m_smoe_groups(sample, keep: int, used: torch.Tensor, routing_groups: int = 1) -> list[list[int]]:
    logits = torch.nn.functional.normalize(sample.logits.double().T, dim=1)  # [E, T]: each expert's logits over tokens

    def group(members: list[int], k: int) -> list[list[int]]:
        ranked = sorted(range(len(members)), key=lambda i: (-float(used[members[i]]), i))
        dominant = sorted(ranked[:k])
        groups = {d: [d] for d in dominant}
        for i in ranked[k:]:
            similarity = logits[[members[d] for d in dominant]] @ logits[members[i]]
            groups[dominant[int(torch.argmax(similarity))]].append(i)
        return [sorted(g) for g in groups.values()]

    return _within_routing_groups(sample.logits.shape[1], keep, routing_groups, group)


def merge_groups(sample, grouping: str, keep: int, weights: str, routing_groups: int = 1):
    """(groups, merge weights) of one layer: each group most used first, weights normalised usage."""
    used = usage(sample, weights)
    if grouping not in GROUPINGS:
        raise CompressError(f"unknown grouping {grouping!r}: choose one of {', '.join(GROUPINGS)}")
    groups = GROUPINGS[grouping].groups(sample, keep, used, routing_groups)
    ordered, merge_weights = [], []
    floor = _UNUSED_WEIGHT * max(float(used.max()), 1.0)
    for group in sorted(groups, key=min):
        members = sorted(group, key=lambda e: (-float(used[e]), e))
        values = [max(float(used[e]), floor) for e in members]
        ordered.append(members)
        merge_weights.append([v / sum(values) for v in values])
    return ordered, merge_weights
