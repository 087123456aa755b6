"""Routing statistics collected inside a model's normal forward, with no extra expert compute.

`RoutingStatsCollector` joins transformers' experts interface: while it is active, every MoE
layer's fused experts module runs `profiling_experts_forward`, which computes each routed expert's
output once (`compress.kernels.reference`), records counts, gate mass, co-activation, transitions
and the REAP/EAN output norms from the ``top_k_index`` / ``top_k_weights`` the model's own router
produced, and returns the same weighted sum transformers' ``grouped_mm`` implementation returns.
Only the router entropy needs the full logits, taken by a forward hook on each router.

It expects whole sequences (no KV cache). Padding given as a 2-D ``attention_mask`` is left out of
every statistic, and "position 0" is each row's first unpadded token. What a batch needs across
its MoE layers (padding, first tokens, the previous layer's choices) is a `BatchState`: a whole-model
forward makes one as it starts; the layer-wise engine keeps one per batch and sets `current`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch

from ..families import family_for_config
from ..kernels.alignment import count_per_expert
from ..kernels.reference import combine_expert_outputs, routed_expert_outputs
from .routing_stats import RoutingStats, empty_layer_stats, to_fixed_point

PROFILING_IMPLEMENTATION = "moe_compress_profile"


def profiling_experts_forward(experts, hidden_states, top_k_index, top_k_weights):
    """An experts implementation: the routed experts' weighted sum, recording statistics on the way.
    A module may say how its experts' outputs are computed (``_routed_outputs``): the layer-wise
    calibration engine reads its experts from the checkpoint in groups."""
    outputs = getattr(experts, "_routed_outputs", routed_expert_outputs)(experts, hidden_states, top_k_index)
    recorder = getattr(experts, "_routing_stats_recorder", None)
    if recorder is not None:
        recorder(outputs, top_k_index, top_k_weights)
    return combine_expert_outputs(outputs, top_k_weights, hidden_states.dtype)


@dataclass
class BatchState:
    token_mask: torch.Tensor | None  # [T] bool, None when nothing is padded
    first_tokens: torch.Tensor  # [T] bool
    previous_selection: torch.Tensor | None = None  # [T, E'] of the previous MoE layer


def batch_state(batch: int, length: int, attention_mask: torch.Tensor | None = None) -> BatchState:
    """The state of a batch of `batch` sequences of `length` tokens (padding from a 2-D mask)."""
    if attention_mask is not None and attention_mask.dim() == 2 and not bool(attention_mask.all()):
        valid = attention_mask.bool()
        return BatchState(valid.flatten(), ((attention_mask.long().cumsum(dim=-1) == 1) & valid).flatten())
    first = torch.zeros(batch, length, dtype=torch.bool)
    first[:, 0] = True
    return BatchState(None, first.flatten())


class RoutingStatsCollector:
    """``with RoutingStatsCollector(model) as collector: model(...)`` then ``collector.stats(metadata)``."""

    def __init__(self, model):
        self.model = model
        self.family = family_for_config(model.config)
        self.moe_layers = self.family.moe_layer_indices(model)
        self.previous_moe_layer = dict(zip(self.moe_layers, [None, *self.moe_layers[:-1]]))
        self.layers: dict[int, dict[str, torch.Tensor]] = {}
        self._handles = []
        self._previous_implementation = None
        self.current: BatchState | None = None  # None: nothing is recorded

    # --- installing ------------------------------------------------------------------------------
    def __enter__(self) -> RoutingStatsCollector:
        from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

        ALL_EXPERTS_FUNCTIONS.register(PROFILING_IMPLEMENTATION, profiling_experts_forward)
        self._previous_implementation = self.model.config._experts_implementation
        self.model.set_experts_implementation(PROFILING_IMPLEMENTATION)
        self._handles.append(self.model.base_model.register_forward_pre_hook(self._start_forward, with_kwargs=True))
        for layer in self.moe_layers:
            self.family.experts(self.model, layer)._routing_stats_recorder = partial(self._record_experts, layer)
            router = self.family.router(self.model, layer)
            self._handles.append(router.register_forward_hook(partial(self._record_router, layer)))
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for layer in self.moe_layers:
            del self.family.experts(self.model, layer)._routing_stats_recorder
        self.model.set_experts_implementation(self._previous_implementation)

    def stats(self, metadata: dict) -> RoutingStats:
        """What was collected so far, on the CPU (zeros for layers no token reached)."""
        layers = {}
        for layer in self.moe_layers:
            stats = self.layers.get(layer) or self._empty(layer, "cpu")
            layers[layer] = {name: tensor.cpu() for name, tensor in stats.items()}
        return RoutingStats(layers, metadata)

    # --- recording -------------------------------------------------------------------------------
    def _num_experts(self, layer: int | None) -> int | None:
        return None if layer is None else self.family.num_experts_in(self.family.experts(self.model, layer))

    def _empty(self, layer: int, device) -> dict[str, torch.Tensor]:
        return empty_layer_stats(self._num_experts(layer), self._num_experts(self.previous_moe_layer[layer]), device)

    def _layer(self, layer: int, device) -> dict[str, torch.Tensor]:
        if layer not in self.layers:
            self.layers[layer] = self._empty(layer, device)
        return self.layers[layer]

    def _start_forward(self, module, args, kwargs) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        batch, length = (input_ids if input_ids is not None else kwargs["inputs_embeds"]).shape[:2]
        self.current = batch_state(batch, length, kwargs.get("attention_mask"))

    def _valid_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        mask = self.current.token_mask
        return tensor if mask is None else tensor[mask.to(tensor.device)]

    def _record_router(self, layer: int, module, inputs, output) -> None:
        if self.current is None:
            return
        logits = output[0] if isinstance(output, tuple) else output
        logits = self._valid_rows(logits.reshape(-1, logits.shape[-1]))
        probabilities = self.family.routing_distribution(logits)
        entropy = -torch.special.xlogy(probabilities, probabilities).sum(dim=-1).double().sum()
        stats = self._layer(layer, logits.device)
        stats["entropy_sum"] += to_fixed_point(entropy)

    def _record_experts(self, layer: int, outputs, top_k_index, top_k_weights) -> None:
        if self.current is None:
            return
        device = outputs.device
        stats = self._layer(layer, device)
        outputs, index, weights = (self._valid_rows(t) for t in (outputs, top_k_index, top_k_weights))
        first = self._valid_rows(self.current.first_tokens.to(device))
        num_experts = stats["selections"].shape[0]
        weights = weights.float()
        norms = torch.linalg.vector_norm(outputs.float(), dim=-1)  # [T, k]
        flat = index.reshape(-1)

        def fixed_sum(values: torch.Tensor) -> torch.Tensor:
            partial = torch.zeros(num_experts, dtype=torch.float64, device=device)
            return to_fixed_point(partial.index_add_(0, flat, values.reshape(-1).double()))

        stats["tokens"] += index.shape[0]
        stats["selections"] += count_per_expert(flat, num_experts)
        stats["top1"] += count_per_expert(index.gather(1, weights.argmax(dim=1, keepdim=True)), num_experts)
        stats["position0"] += count_per_expert(index[first], num_experts)
        stats["gate_mass"] += fixed_sum(weights)
        stats["reap_sum"] += fixed_sum(weights * norms)
        stats["ean_sum"] += fixed_sum(norms)
        stats["ean_sq_sum"] += fixed_sum(norms.double().square())
        # One-hot selections; products of 0/1 matrices count pairs exactly in float32 (< 2^24 per batch).
        selection = torch.zeros(index.shape[0], num_experts, device=device).scatter_(1, index, 1.0)
        stats["coactivation"] += (selection.T @ selection).round().long()
        if "transitions" in stats and self.current.previous_selection is not None:
            stats["transitions"] += (self.current.previous_selection.to(device).T @ selection).round().long()
        self.current.previous_selection = selection
