"""Neuron alignment before merging: the members of a merge group are averaged neuron by neuron, but
two experts trained apart hold the same features in different intermediate neurons (any
permutation of an MLP's hidden units computes the same function). So before the weighted sum each
member's neurons are permuted to match the group's dominant (first) expert, the permutation found
by `scipy.optimize.linear_sum_assignment`: with ``weights`` on the cosine similarity of their
weights (each neuron's gate row, up row, down column and biases: Hungarian weight matching, as
REAP's merges do), recomputed wherever the plan is applied; with ``activations`` on the correlation
of their activations over the calibration sample (REAM's alignment, without its PCA of the
weights), found once by the grouping pass and stored in the plan.

A permutation moves the same neuron in every tensor of an expert, wherever the family keeps it:
the rows of ``[2*I, H]`` gate/up projections (gate half, then up half), gpt-oss's interleaved
``[H, 2*I]`` columns and ``[2*I]`` biases (gate = even, up = odd), the ``I`` side of the down
projection; tensors without an ``I`` side (the down bias) stay as they are.
"""

from __future__ import annotations

import re

import torch


def neuron_layout(family, name: str) -> tuple[int, str] | None:
    """(dimension of one expert's tensor `name` that runs over the intermediate neurons, "plain" /
    "halves" / "interleaved"), read from the tensor's ``shape`` in the family definition; None when
    it has no such dimension."""
    shape = family.expert_tensors[name]["shape"]
    dims = [dim.strip() for dim in shape.split("]")[0].lstrip("[").split(",")]
    expert_dim = family.expert_tensors[name]["expert_dim"]
    dims = [dim for position, dim in enumerate(dims) if position != expert_dim]
    for position, dim in enumerate(dims):
        if dim == "I":
            return position, "plain"
        if dim == "2*I":
            return position, "interleaved" if re.search(r"\beven\b", shape) else "halves"
    return None


def neuron_index(layout: str, permutation: torch.Tensor) -> torch.Tensor:
    """The index along a tensor's neuron dimension that puts neuron ``permutation[j]`` at ``j``."""
    if layout == "plain":
        return permutation
    if layout == "halves":
        return torch.cat([permutation, permutation + len(permutation)])
    return torch.stack([2 * permutation, 2 * permutation + 1], dim=1).flatten()


def permuted(family, name: str, tensor: torch.Tensor, permutation: torch.Tensor | None) -> torch.Tensor:
    """One expert's tensor `name` with its neurons in the order `permutation` (None: unchanged)."""
    layout = neuron_layout(family, name)
    if permutation is None or layout is None:
        return tensor
    dim, kind = layout
    return tensor.index_select(dim, neuron_index(kind, permutation).to(tensor.device))


def _neuron_features(family, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """[I, f]: each intermediate neuron's weights in every tensor of one expert, side by side."""
    features = []
    for name, tensor in tensors.items():
        layout = neuron_layout(family, name)
        if layout is None:
            continue
        dim, kind = layout
        values = tensor.double().movedim(dim, 0)  # [n, ...] with n = I or 2*I
        if kind == "halves":
            values = torch.cat(values.chunk(2, dim=0), dim=-1) if values.dim() > 1 else torch.stack(values.chunk(2), dim=-1)
        elif kind == "interleaved":
            values = values.reshape(values.shape[0] // 2, 2, *values.shape[1:])
        features.append(values.reshape(values.shape[0], -1))
    return torch.cat(features, dim=1)


def align_to(family, dominant: dict[str, torch.Tensor], member: dict[str, torch.Tensor]) -> torch.Tensor:
    """The permutation of `member`'s neurons that best matches `dominant`'s (both one expert's
    tensors): maximal summed cosine similarity of the neurons' weights, by the Hungarian method."""
    from scipy.optimize import linear_sum_assignment

    ours, theirs = _neuron_features(family, dominant), _neuron_features(family, member)
    similarity = torch.nn.functional.normalize(ours, dim=1) @ torch.nn.functional.normalize(theirs, dim=1).T
    _, columns = linear_sum_assignment(similarity.cpu().numpy(), maximize=True)
    return torch.as_tensor(columns, dtype=torch.long)


def activation_permutations(sample, members: list[int]) -> list[torch.Tensor | None]:
    """One permutation per member of a group (the first, dominant one None): the matching of each
    member's intermediate neurons to the dominant expert's that maximises the summed correlation
    of their activations over `sample`'s tokens (a `LayerSample`), by the Hungarian method."""
    from scipy.optimize import linear_sum_assignment

    if len(members) == 1:
        return [None]
    ids = torch.arange(len(members)).expand(len(sample.inputs), len(members))
    activations = sample.outputs_of(lambda group: sample.expert_tensors([members[i] for i in group]), len(members), ids,
                                    activations=True).double()  # [T, m, I]
    activations = torch.nn.functional.normalize(activations - activations.mean(dim=0), dim=0)
    found = [None]
    for m in range(1, len(members)):
        correlation = activations[:, 0].T @ activations[:, m]  # [dominant's neuron, member's neuron]
        _, columns = linear_sum_assignment(correlation.cpu().numpy(), maximize=True)
        found.append(torch.as_tensor(columns, dtype=torch.long))
    return found


def group_permutations(family, tensors: dict[str, torch.Tensor], alignment: str) -> list[torch.Tensor | None]:
    """One permutation per member of a group ({name: [members, …]} along each tensor's expert
    dimension; the first member is the dominant one, never permuted), or None each without alignment."""
    count = next(iter(tensors.values())).shape[family.expert_tensors[next(iter(tensors))]["expert_dim"]]
    if alignment == "none" or count == 1:
        return [None] * count
    if alignment != "weights":  # found on calibration activations by the grouping pass, and stored in the plan
        raise ValueError(f"alignment {alignment!r} is not found from weights: pass the plan's permutations")

    def expert(index: int) -> dict:
        return {name: t.select(family.expert_tensors[name]["expert_dim"], index) for name, t in tensors.items()}

    dominant = expert(0)
    return [None] + [align_to(family, dominant, expert(index)) for index in range(1, count)]


def ties_delta(deltas: torch.Tensor, weights: torch.Tensor, density: float) -> torch.Tensor:
    """TIES-merging (Yadav et al. 2023) of task vectors `deltas` [m, …] with `weights` [m]: each
    trimmed to its `density` largest magnitudes, a sign elected per entry by the weighted sum of
    the trimmed vectors, and Σ_m w_m·δ_m over the members that agree with it."""
    flat = deltas.reshape(len(deltas), -1)
    kept = max(1, round(density * flat.shape[1]))
    threshold = flat.abs().kthvalue(flat.shape[1] - kept + 1, dim=1, keepdim=True).values
    trimmed = torch.where(flat.abs() >= threshold, flat, torch.zeros_like(flat))
    weighted = trimmed * weights.to(flat).unsqueeze(1)
    agree = torch.sign(trimmed) == torch.sign(weighted.sum(dim=0))
    return (weighted * agree).sum(dim=0).reshape(deltas.shape[1:])


def merge_members(family, tensors: dict[str, torch.Tensor], weights: torch.Tensor, alignment: str = "none",
                  permutations: list | None = None, method: str = "average") -> dict[str, torch.Tensor]:
    """A new expert's tensors (no expert dimension, the members' dtype), in float64 from the members'
    P_m(W_m) (P_m the member's neuron permutation: given, or found from these `tensors` by
    `group_permutations`): ``average`` Σ_m w_m·P_m(W_m); ``ties`` the dominant expert W_0 plus the
    TIES merge (`ties_delta`, `TIES_DENSITY`) of the others' differences P_m(W_m) − W_0 with their
    weights. With every difference kept and of one sign, the two are equal."""
    from . import TIES_DENSITY

    if permutations is None:
        permutations = group_permutations(family, tensors, alignment)
    merged = {}
    for name, tensor in tensors.items():
        dim = family.expert_tensors[name]["expert_dim"]
        members = [permuted(family, name, tensor.select(dim, m).double(), permutations[m]) for m in range(len(permutations))]
        if method == "ties" and len(members) > 1:
            total = members[0] + ties_delta(torch.stack(members[1:]) - members[0], weights[1:].double(), TIES_DENSITY)
        else:
            total = sum(weights[m].item() * member for m, member in enumerate(members))
        merged[name] = total.to(tensor.dtype)
    return merged
