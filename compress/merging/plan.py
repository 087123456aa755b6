"""`MergePlan`: which original experts each new expert of an MoE layer is made of, as data a person
can read and edit.

The JSON file::

    {
      "format": "moe-compress merge plan", "format_version": 1,
      "source": {... as in a prune plan ...},
      "top_k": 4,
      "router": "dominant",
      "alignment": "none",
      "merge_method": "average",
      "layers": {"0": [[3, 7], [0], [5, 9, 12], …], …},
      "permutations": {"0": [[null, [2, 0, 1, …]], [null], …], …},   (alignment "activations" only)
      "weights": {"0": [[0.6, 0.4], [1.0], [0.5, 0.3, 0.2], …], …},
      "provenance": {"grouping": "m-smoe", "merge_weights": "frequency", …}
    }

New expert g of a layer is the weighted sum Σ_m w_m·W_m of its group's experts' tensors (every
weight and bias; the weights of a group are normalised to sum to 1). Its router row is the
group's first ("dominant") expert's row with ``router: dominant``, or the same weighted sum of the
members' rows (and biases) with ``router: weighted``. With ``router: fitted`` the rows of merged
experts are fitted on calibration tokens when the plan is applied (`router_fit`: the group's
log-sum-exp logit, in closed form), the dominant expert's row being the fit's prior. With ``alignment: weights`` each member's
intermediate neurons are first permuted to match the dominant expert's (`align`), the permutation
found from the weights when applied; with ``alignment: activations`` it was found on calibration
activations and is stored, per member, in ``permutations`` (new neuron j is the member's neuron
``permutation[j]``; the dominant expert's is null). With ``merge_method: ties`` the new expert is
the dominant expert plus the TIES merge of the other members' differences from it (`align.merge_members`).
Experts in no group are dropped, so a plan of one-expert groups is a prune plan (`from_prune_plan`).
``top_k`` is ``min(source top-k, groups)``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import torch

from .. import __version__
from ..errors import CompressError
from ..pruning.plan import (
    LayerPlan,
    _id_lists,
    check_plan_source,
    check_plan_top_k,
    check_routing_group_counts,
    layer_number,
    plan_header,
    read_plan_file,
    save_plan_file,
)
from . import ALIGNMENTS, MERGE_METHODS, ROUTER_ROWS

FORMAT = "moe-compress merge plan"
FORMAT_VERSION = 1


@dataclass
class MergePlan(LayerPlan):
    source: dict
    layers: dict[int, list[list[int]]]
    weights: dict[int, list[list[float]]]
    top_k: int
    router: str = "dominant"
    provenance: dict = field(default_factory=dict)
    alignment: str = "none"  # how members' neurons are matched to the dominant expert's first (`align.ALIGNMENTS`)
    permutations: dict[int, list[list[list[int] | None]]] = field(default_factory=dict)  # alignment "activations"
    merge_method: str = "average"  # `MERGE_METHODS`
    # {layer: `compensate.CompensationFit`}: the router rows and/or compensation the pass that made
    # the plan also fitted (`requests.MergeRequest.stream`); never saved, refitted when a plan file is applied.
    fits: dict = field(default_factory=dict, compare=False, repr=False)

    def stored_permutations(self, layer: int, group: int) -> list | None:
        """The members' neuron permutations of new expert `group` as stored (``activations``), or
        None when they are found from the weights where the plan is applied (or not at all)."""
        if self.alignment != "activations":
            return None
        return [None if p is None else torch.tensor(p, dtype=torch.long) for p in self.permutations[layer][group]]

    def merge_matrix(self, layer: int) -> torch.Tensor:
        """[groups, source experts] float64: row g holds new expert g's normalised member weights."""
        matrix = torch.zeros(len(self.layers[layer]), self.source_experts(layer), dtype=torch.float64)
        for g, (members, weights) in enumerate(zip(self.layers[layer], self.weights[layer])):
            largest = max(weights)  # scaled first, so weights near the float limit do not overflow their sum
            total = math.fsum(weight / largest for weight in weights)
            for member, weight in zip(members, weights):
                matrix[g, member] = weight / largest / total
        return matrix

    def router_matrix(self, layer: int) -> torch.Tensor:
        """[groups, source experts] float64: how each new router row is made from the old rows (with
        ``router: fitted``, the rows the fit starts from and the buffers: the dominant expert's)."""
        if self.router == "weighted":
            return self.merge_matrix(layer)
        matrix = torch.zeros(len(self.layers[layer]), self.source_experts(layer), dtype=torch.float64)
        for g, members in enumerate(self.layers[layer]):
            matrix[g, members[0]] = 1.0
        return matrix

    def is_copy(self, layer: int, group: int) -> bool:
        """Whether new expert `group` is one source expert unchanged (a pruned layer's expert)."""
        return len(self.layers[layer][group]) == 1

    # --- checking --------------------------------------------------------------------------------
    def check(self, moe_layers: list[int], experts_per_layer: dict[int, int], top_k: int,
              fingerprint: str | None = None, group_count: int = 1, inner: int | None = None) -> None:
        """Refuse a plan that does not fit the model (see `pruning.plan.PrunePlan.check` for the
        common rules); with group-limited routing every merge group stays inside one routing group
        and every routing group keeps the same number of new experts; stored permutations are
        orderings of the `inner` intermediate neurons."""
        check_plan_source(self, moe_layers, experts_per_layer, fingerprint)
        if self.router not in ROUTER_ROWS:
            raise CompressError(f'the plan\'s "router" is {self.router!r}: choose one of {", ".join(ROUTER_ROWS)}')
        if self.alignment not in ALIGNMENTS:
            raise CompressError(f'the plan\'s "alignment" is {self.alignment!r}: choose one of {", ".join(ALIGNMENTS)}')
        if self.alignment == "activations":
            self._check_permutations(inner)
        if self.merge_method not in MERGE_METHODS:
            raise CompressError(f'the plan\'s "merge_method" is {self.merge_method!r}: choose one of {", ".join(MERGE_METHODS)}')
        for layer, groups in self.layers.items():
            count = experts_per_layer[layer]
            members = [e for group in groups for e in group]
            if not groups or any(not group for group in groups):
                raise CompressError(f"layer {layer} of the plan has no groups or an empty group: every group needs an expert")
            if len(set(members)) != len(members) or any(not 0 <= e < count for e in members):
                raise CompressError(f"layer {layer} of the plan names an expert twice or out of range (0..{count - 1}): {groups}")
            weights = self.weights.get(layer)
            if weights is None or [len(w) for w in weights] != [len(g) for g in groups]:
                raise CompressError(f'layer {layer}: "weights" must hold one weight per expert of each group, like "layers"')
            if group_count > 1:
                size = count // group_count
                if any(len({e // size for e in group}) != 1 for group in groups):
                    raise CompressError(f"layer {layer} merges experts of different routing groups (n_group = {group_count}): "
                                        "keep each merge group inside one routing group")
                check_routing_group_counts(layer, [sum(1 for group in groups if group[0] // size == r) for r in range(group_count)])
        check_plan_top_k(self, top_k, "groups")

    def check_model(self, source) -> None:
        """`check` against an opened model (`jobs.SourceModel`), its intermediate size included."""
        from .compensate import down_as_rows

        down = source.family.experts(source.meta, source.moe_layers[0]).down_proj
        self.check(source.moe_layers, source.experts_per_layer, source.top_k, source.fingerprint,
                   source.family.routing_groups(source.config), down_as_rows(source.family, down).shape[-2])

    def _check_permutations(self, inner: int | None) -> None:
        """Each member's permutation an ordering of 0..I-1 (`inner` = I when known), the dominant's null."""
        for layer, groups in self.layers.items():
            stored = self.permutations.get(layer)
            if stored is None or [len(p) for p in stored] != [len(g) for g in groups]:
                raise CompressError(f'layer {layer}: alignment "activations" needs "permutations" with one entry per expert of '
                                    'each group, like "layers" (null for each group\'s first expert)')
            for group in stored:
                members = group[1:]
                valid = all(isinstance(p, list) and all(type(i) is int for i in p) and sorted(p) == list(range(len(p)))
                            and len(p) == (inner or len(p)) for p in members)
                if group[0] is not None or not valid or len({len(p) for p in members}) > 1:
                    raise CompressError(f"layer {layer}: every permutation must be null for a group's first expert and an ordering "
                                        f"of 0..{inner - 1 if inner else 'I-1'} (the expert's neurons) for each other member")

    # --- file ------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "source": self.source, "top_k": self.top_k,
            "router": self.router, "alignment": self.alignment, "merge_method": self.merge_method,
            "layers": {str(layer): groups for layer, groups in sorted(self.layers.items())},
            "weights": {str(layer): [[round(w, 6) for w in group] for group in weights]
                        for layer, weights in sorted(self.weights.items())},
            **({"permutations": {str(layer): groups for layer, groups in sorted(self.permutations.items())}}
               if self.alignment == "activations" else {}),
            "provenance": {**self.provenance, "tool_version": self.provenance.get("tool_version", __version__)},
        }

    def save(self, path: str | os.PathLike) -> None:
        save_plan_file(path, self.to_dict())

    @classmethod
    def from_dict(cls, data, where: str = "the plan") -> MergePlan:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CompressError(f"{where} is not a merge plan written by `compress merge --plan-only`")
        raw = data.get("layers")
        if not isinstance(raw, dict) or not all(isinstance(g, list) and all(isinstance(m, list) for m in g) for g in raw.values()):
            raise CompressError(f'{where}: "layers" must map each MoE layer to a list of groups, e.g. {{"0": [[0, 3], [5]]}}')
        layers = {}
        for layer, groups in raw.items():
            _id_lists({layer: [e for group in groups for e in group]}, where, "layers", "expert")  # whole-number ids only
            layers[layer_number(layer, where)] = [list(group) for group in groups]
        raw = data.get("weights")
        if not isinstance(raw, dict) or any(not isinstance(groups, list) or not all(isinstance(w, list) for w in groups)
                                            for groups in raw.values()):
            raise CompressError(f'{where}: "weights" must map each MoE layer to one list of weights per group, like "layers", '
                                'e.g. {"0": [[0.6, 0.4], [1.0]]}')
        weights = {layer_number(layer, where): value for layer, value in raw.items()}
        for layer, groups in weights.items():
            bad = [w for group in groups for w in group
                   if not isinstance(w, (int, float)) or isinstance(w, bool) or not w > 0 or not math.isfinite(w)]
            if bad:
                raise CompressError(f"{where}: layer {layer} has merge weight {bad[0]!r}: weights must be positive finite numbers")
        raw = data.get("permutations", {})
        if not isinstance(raw, dict) or any(not isinstance(groups, list) or not all(isinstance(p, list) for p in groups)
                                            for groups in raw.values()):
            raise CompressError(f'{where}: "permutations" must map each MoE layer to one list per group, like "layers"')
        permutations = {layer_number(layer, where): value for layer, value in raw.items()}
        source, top_k, provenance = plan_header(data, where)
        return cls(source, layers, weights, top_k, data.get("router", "dominant"), provenance, data.get("alignment", "none"),
                   permutations, data.get("merge_method", "average"))

    @classmethod
    def load(cls, path: str | os.PathLike) -> MergePlan:
        return cls.from_dict(read_plan_file(path), str(path))


def from_prune_plan(plan) -> MergePlan:
    """The merge plan of a (non-team) `PrunePlan`: every kept expert a group of its own."""
    return MergePlan(plan.source, {layer: [[e] for e in kept] for layer, kept in plan.layers.items()},
                     {layer: [[1.0] for _ in kept] for layer, kept in plan.layers.items()},
                     plan.top_k, "dominant", dict(plan.provenance))
