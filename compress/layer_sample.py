"""`LayerSample`: what a per-layer search sees of one MoE layer on the sample windows.

The ``reconstruct`` criterion, the merge groupings and compensation all decide one MoE layer at
a time from the same things: the experts' inputs for a sample of calibration tokens, the router's
logits for them, and every expert's output for them. The layer-wise engine (`compress.layerwise`)
makes one per MoE layer as it passes (expert tensors read from the checkpoint); `of_model` makes
one for a loaded model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .kernels.reference import pair_outputs_in_groups, routed_expert_outputs


@dataclass
class LayerSample:
    layer: int
    family: object  # `families.MoEFamily`
    config: object  # the model's config
    router_buffers: dict  # non-parameter router state (float32, CPU)
    inputs: torch.Tensor  # [T, H] the experts' inputs, on the compute device in the compute dtype
    logits: torch.Tensor  # [T, E] router logits (float32, CPU)
    outputs: torch.Tensor  # [T, E, H] every expert's output for every token (float32, CPU)
    experts: torch.nn.Module  # the experts module: its flags and gate function
    expert_tensors: Callable[[list[int]], dict]  # expert ids → {fused tensor name: those experts' tensor}
    group_size: int | None = None  # experts to hold at once when computing outputs (None: all)

    @classmethod
    def of_model(cls, model, layer: int, inputs: torch.Tensor, logits: torch.Tensor) -> LayerSample:
        """For MoE layer `layer` of a loaded model, from its experts' inputs and router logits
        (`pruning.reconstruct.capture_layer_inputs`)."""
        from .families import family_for_config

        family = family_for_config(model.config)
        experts = family.experts(model, layer)
        parameter = next(experts.parameters())
        inputs = inputs.to(parameter.device, parameter.dtype)
        count = logits.shape[1]
        with torch.inference_mode():
            outputs = routed_expert_outputs(experts, inputs, torch.arange(count, device=inputs.device).expand(len(inputs), count))
        buffers = {name: t.detach().float().cpu() for name, t in family.router_buffers(model, layer).items()}

        def tensors(ids: list[int]) -> dict:
            index = torch.tensor(ids, device=parameter.device)
            return {name: getattr(experts, name).detach().index_select(spec["expert_dim"], index)
                    for name, spec in family.expert_tensors.items() if getattr(experts, name, None) is not None}

        return cls(layer, family, model.config, buffers, inputs, logits.float().cpu(), outputs.float().cpu(), experts, tensors)

    def route(self, logits: torch.Tensor | None = None, buffers: dict | None = None, top_k: int | None = None):
        """(weights, ids) [T, k] of the sample's tokens under the family's routing (by default the
        layer's own logits and buffers)."""
        return self.family.route(self.logits if logits is None else logits, self.config,
                                 self.router_buffers if buffers is None else buffers, top_k)

    def full_output(self) -> torch.Tensor:
        """The layer's routed output Σ_k g_k·f_k(x) [T, H] (float32) for the sample's tokens."""
        weights, ids = self.route()
        chosen = self.outputs.gather(1, ids.unsqueeze(-1).expand(-1, -1, self.outputs.shape[-1]))
        return (chosen * weights.float().unsqueeze(-1)).sum(dim=1)

    def outputs_of(self, load_experts, count: int, ids: torch.Tensor, group_size: int | None = None) -> torch.Tensor:
        """f_g(x) [T, k, H] (float32, CPU) of experts given by `load_experts` (ids → {fused tensor
        name: [len(ids), …]}, `count` of them, read `group_size` at a time, by default the
        sample's) for each token and each of its ids [T, k]."""
        tokens = torch.arange(len(ids), device=self.inputs.device).repeat_interleave(ids.shape[1])
        with torch.inference_mode():
            (out,) = pair_outputs_in_groups(self.experts, [(self.inputs, tokens, ids.reshape(-1).to(self.inputs.device))],
                                            load_experts, group_size or self.group_size or count, num_experts=count)
        return out.view(*ids.shape, -1).float().cpu()
