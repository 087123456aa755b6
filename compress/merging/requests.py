"""The merge grouping and compensation as per-layer searches of the layer-wise engine (see
`pruning.reconstruct.ReconstructRequest` for the protocol): the grouping answers one `LayerSample`
of the search's sample windows; compensation (and fitted router rows) is streamed every
calibration token, in a pass of its own or in the grouping's pass once a layer is grouped."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from .plan import MergePlan


@dataclass(frozen=True)
class MergeRequest:
    """Groups, merge weights and (with ``alignment: activations``) the members' neuron permutations
    of every MoE layer: {layer: (groups, weights, permutations or None)}.

    With `refit` (a function of the layer and its answer giving the `CompensationRequest` of a
    plan for that layer) it also fits the router rows and/or compensation of each layer in the
    same pass, on every calibration window the layer-wise engine runs after answering it (`stream`,
    `end_stream`; given when the pass runs them all, see `layerwise.calibrate`): `fits` then holds
    them, and no pass of their own is needed."""

    keep: int
    grouping: str
    weights: str
    routing_groups: int = 1
    alignment: str = "none"
    refit: Callable | None = None  # (layer, answer) → `CompensationRequest`
    fits: dict = field(default_factory=dict, compare=False, repr=False)  # layer → `compensate.CompensationFit`
    refitting: dict = field(default_factory=dict, compare=False, repr=False)  # layer → its open refit's request

    @property
    def observes(self) -> bool:
        return self.refit is not None

    def check(self, top_k: int) -> None:
        pass  # the merge job checks the count against the model before the pass

    def stream(self, layer: int, answer, tokens: int):
        """The `compensate.LayerFit` layer `layer`'s calibration tokens stream into once it is answered."""
        self.refitting[layer] = self.refit(layer, answer)
        return self.refitting[layer].start(layer, tokens)

    def end_stream(self, layer: int, fit) -> None:
        self.fits[layer] = self.refitting.pop(layer).end(layer, fit)

    def answer(self, sample):
        from .align import activation_permutations
        from .grouping import merge_groups

        groups, weights = merge_groups(sample, self.grouping, self.keep, self.weights, self.routing_groups)
        if self.alignment != "activations":
            return groups, weights, None
        return groups, weights, [[None if p is None else p.tolist() for p in activation_permutations(sample, members)]
                                 for members in groups]

    def finish(self, answers: dict) -> dict:
        return answers


@dataclass(frozen=True)
class CompensationRequest:
    """The compensation fit (and, with ``router: fitted``, the router rows: `router_fit`) of every
    MoE layer of `plan`: {layer: `compensate.CompensationFit`},
    each written to a file in `spill` (in `dtype`) as soon as it is made when `spill` is given, so
    memory holds one layer's fit at a time. A streamed search: the engine gives it every
    calibration token, a chunk at a time (`start`, ``LayerFit.add``, `end`), not a sample (after a
    sweep of ``LayerFit.add_routing`` when the fit's ``routing_first``)."""

    plan: MergePlan
    spill: Path | None = None
    dtype: torch.dtype = torch.float32
    compensate: bool = True  # refit the down projections (else only the router rows of ``router: fitted``)
    streamed: ClassVar[bool] = True

    def check(self, top_k: int) -> None:
        pass

    def start(self, layer: int, tokens: int):
        """The `compensate.LayerFit` of MoE layer `layer` for `tokens` calibration tokens."""
        from .compensate import LayerFit

        plan = self.plan
        return LayerFit(plan.merge_matrix(layer), plan.router_matrix(layer), plan.top_k, tokens, members_of=plan.layers[layer],
                        alignment=plan.alignment, stored=lambda group: plan.stored_permutations(layer, group),
                        method=plan.merge_method, compensate=self.compensate, fit_router=plan.router == "fitted")

    def end(self, layer: int, fit):
        fit = fit.result()
        return fit if self.spill is None else fit.spill(Path(self.spill) / f"layer-{layer}.safetensors", self.dtype)

    def finish(self, answers: dict) -> dict:
        return answers
