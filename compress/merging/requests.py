"""The merge grouping and compensation as per-layer searches of the layer-wise engine (see
`pruning.reconstruct.ReconstructRequest` for the protocol): each answers one `LayerSample` at a time."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .plan import MergePlan


@dataclass(frozen=True)
class MergeRequest:
    """Groups and merge weights of every MoE layer: {layer: (groups, weights)}."""

    keep: int
    grouping: str
    weights: str
    routing_groups: int = 1

    def check(self, top_k: int) -> None:
        pass  # the merge job checks the count against the model before the pass

    def answer(self, sample):
        from .grouping import merge_groups

        return merge_groups(sample, self.grouping, self.keep, self.weights, self.routing_groups)

    def finish(self, answers: dict) -> dict:
        return answers


@dataclass(frozen=True)
class CompensationRequest:
    """The compensation fit of every MoE layer of `plan`: {layer: `compensate.CompensationFit`},
    each written to a file in `spill` (in `dtype`) as soon as it is made when `spill` is given, so
    memory holds one layer's fit at a time."""

    plan: MergePlan
    spill: Path | None = None
    dtype: torch.dtype = torch.float32

    def check(self, top_k: int) -> None:
        pass

    def answer(self, sample):
        from .compensate import compensate_layer

        plan = self.plan
        fit = compensate_layer(sample, plan.merge_matrix(sample.layer), plan.router_matrix(sample.layer), plan.top_k,
                               members_of=plan.layers[sample.layer], alignment=plan.alignment)
        return fit if self.spill is None else fit.spill(Path(self.spill) / f"layer-{sample.layer}.safetensors", self.dtype)

    def finish(self, answers: dict) -> dict:
        return answers
