"""The merge grouping and compensation as per-layer searches of the layer-wise engine (see
`pruning.reconstruct.ReconstructRequest` for the protocol): the grouping answers one `LayerSample`
of the search's sample windows; compensation is streamed every calibration token."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from .plan import MergePlan


@dataclass(frozen=True)
class MergeRequest:
    """Groups, merge weights and (with ``alignment: activations``) the members' neuron permutations
    of every MoE layer: {layer: (groups, weights, permutations or None)}.

    With `fit_router` it also fits the new router rows (`router_fit.RouterFit`) on every calibration
    window the pass runs after answering a layer (`observe`; the layer-wise engine gives them when it
    runs them all, see `layerwise.calibrate`): `fitted_router` then holds them, and no pass of their
    own is needed."""

    keep: int
    grouping: str
    weights: str
    routing_groups: int = 1
    alignment: str = "none"
    fit_router: bool = False
    routers: dict = field(default_factory=dict, compare=False, repr=False)  # layer → `RouterFit`, filled by `observe`

    @property
    def observes(self) -> bool:
        return self.fit_router

    def check(self, top_k: int) -> None:
        pass  # the merge job checks the count against the model before the pass

    def observe(self, layer: int, answer, sample) -> None:
        """Add calibration tokens (a `LayerSample` of their router inputs and logits) to layer `layer`'s router fit."""
        from .router_fit import RouterFit, sigmoid_scored

        if layer not in self.routers:
            self.routers[layer] = RouterFit(answer[0], sample.router_rows, sigmoid_scored(sample.family, sample.config))
        self.routers[layer].add(sample.inputs, sample.logits)

    def fitted_router(self) -> dict:
        """{layer: the new router rows} of every layer observed, or {} (see `plan.MergePlan.fitted_router`)."""
        return {layer: fit.rows() for layer, fit in self.routers.items()}

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
                        method=plan.merge_method, compensate=self.compensate, fit_router=plan.router == "fitted",
                        router_rows=plan.fitted_router.get(layer))

    def end(self, layer: int, fit):
        fit = fit.result()
        return fit if self.spill is None else fit.spill(Path(self.spill) / f"layer-{layer}.safetensors", self.dtype)

    def finish(self, answers: dict) -> dict:
        return answers
