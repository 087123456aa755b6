"""`LayerSample`: what a per-layer search sees of one MoE layer on the sample windows.

The ``reconstruct`` criterion, the merge groupings and compensation all decide one MoE layer at
a time from the same things: the experts' inputs for a sample of calibration tokens, the router's
logits for them, and every expert's output for them. The layer-wise engine (`compress.layerwise`)
makes one per MoE layer as it passes (expert tensors read from the checkpoint); `of_model` makes
one for a loaded model. Which windows are sampled is decided here too (`search_windows`), and
`search_model` runs a whole search on a loaded model from one forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .kernels.reference import pair_outputs_in_groups, routed_expert_outputs

DEFAULT_MAX_TOKENS = 2048
SEARCH_BYTES = 2**30  # every expert's fp32 outputs for the search's tokens are held at once


@dataclass
class LayerSample:
    layer: int
    family: object  # `families.MoEFamily`
    config: object  # the model's config
    router_buffers: dict  # non-parameter router state (float32, CPU)
    inputs: torch.Tensor  # [T, H] the experts' inputs, on the compute device in the compute dtype
    logits: torch.Tensor  # [T, E] router logits (float32, CPU)
    outputs: torch.Tensor | None  # [T, E, H] every expert's output for every token (float32, CPU), or None (see `full`)
    experts: torch.nn.Module  # the experts module: its flags and gate function
    expert_tensors: Callable[..., dict]  # (expert ids, names=None) → {fused tensor name: those experts' tensor}
    group_size: int | None = None  # experts to hold at once when computing outputs (None: all)
    full: torch.Tensor | None = None  # [T, H] the layer's routed output, when `outputs` is None (float32, CPU)
    router_rows: dict | None = None  # the router's weight [E, H] and bias [E] (`MoEFamily.router_parameters`)

    @classmethod
    def of_model(cls, model, layer: int, inputs: torch.Tensor, logits: torch.Tensor, every_expert: bool = True) -> LayerSample:
        """For MoE layer `layer` of a loaded model, from its experts' inputs and router logits
        (`capture_layer_inputs`); without `every_expert` only the routed experts' outputs are
        computed, for `full`."""
        from .families import family_for_config

        family = family_for_config(model.config)
        experts = family.experts(model, layer)
        parameter = next(experts.parameters())
        inputs = inputs.to(parameter.device, parameter.dtype)
        count = logits.shape[1]
        buffers = {name: t.detach().float().cpu() for name, t in family.router_buffers(model, layer).items()}
        outputs = full = None
        with torch.inference_mode():
            if every_expert:
                outputs = routed_expert_outputs(experts, inputs, torch.arange(count, device=inputs.device).expand(len(inputs), count))
            else:
                weights, ids = family.route(logits.float().cpu(), model.config, buffers, None)
                routed = routed_expert_outputs(experts, inputs, ids.to(inputs.device)).float().cpu()
                full = (routed * weights.float().unsqueeze(-1)).sum(dim=1)

        def tensors(ids: list[int], names=None) -> dict:
            index = torch.tensor(ids, device=parameter.device)
            return {name: getattr(experts, name).detach().index_select(spec["expert_dim"], index)
                    for name, spec in family.expert_tensors.items()
                    if getattr(experts, name, None) is not None and (names is None or name in names)}

        return cls(layer, family, model.config, buffers, inputs, logits.float().cpu(), None if outputs is None else outputs.float().cpu(),
                   experts, tensors, full=full, router_rows=family.router_parameters(model, layer))

    def route(self, logits: torch.Tensor | None = None, buffers: dict | None = None, top_k: int | None = None):
        """(weights, ids) [T, k] of the sample's tokens under the family's routing (by default the
        layer's own logits and buffers)."""
        return self.family.route(self.logits if logits is None else logits, self.config,
                                 self.router_buffers if buffers is None else buffers, top_k)

    def full_output(self) -> torch.Tensor:
        """The layer's routed output Σ_k g_k·f_k(x) [T, H] (float32) for the sample's tokens."""
        if self.full is not None:
            return self.full
        weights, ids = self.route()
        chosen = self.outputs.gather(1, ids.unsqueeze(-1).expand(-1, -1, self.outputs.shape[-1]))
        return (chosen * weights.float().unsqueeze(-1)).sum(dim=1)

    def outputs_of(self, load_experts, count: int, ids: torch.Tensor, group_size: int | None = None,
                   activations: bool = False) -> torch.Tensor:
        """f_g(x) [T, k, H] (float32, CPU) of experts given by `load_experts` (ids → {fused tensor
        name: [len(ids), …]}, `count` of them, read `group_size` at a time, by default the
        sample's) for each token and each of its ids [T, k]; with `activations` their intermediate
        activations a_g(x) [T, k, I] instead."""
        tokens = torch.arange(len(ids), device=self.inputs.device).repeat_interleave(ids.shape[1])
        with torch.inference_mode():
            (out,) = pair_outputs_in_groups(self.experts, [(self.inputs, tokens, ids.reshape(-1).to(self.inputs.device))],
                                            load_experts, group_size or self.group_size or count, num_experts=count,
                                            activations=activations)
        return out.view(*ids.shape, -1).float().cpu()


# --- the sample windows, and a search on a loaded model -------------------------------------------
def search_tokens(total_tokens: int, top_k: int, num_experts: int, hidden_size: int, max_tokens: int | None = None) -> int:
    """Tokens the search measures on: `max_tokens` when given; otherwise at most `DEFAULT_MAX_TOKENS`,
    few enough that all E experts' outputs for them cost no more than the k routed experts'
    outputs for all `total_tokens` (tokens · E ≤ total · k), and that those outputs fit in
    `SEARCH_BYTES` in fp32."""
    if max_tokens is not None:
        return max_tokens
    by_memory = SEARCH_BYTES // (num_experts * hidden_size * 4)
    return max(1, min(DEFAULT_MAX_TOKENS, total_tokens * top_k // num_experts, by_memory))


def search_windows(windows: torch.Tensor, top_k: int, num_experts: int, hidden_size: int, max_tokens: int | None = None):
    """(windows spread evenly over the calibration set, tokens to use from them) for the search."""
    tokens = search_tokens(windows.numel(), top_k, num_experts, hidden_size, max_tokens)
    rows = min(len(windows), max(1, math.ceil(tokens / windows.shape[1])))
    return windows[torch.linspace(0, len(windows) - 1, rows).round().long()], tokens


@torch.inference_mode()
def capture_layer_inputs(model, windows: torch.Tensor, batch_size: int, max_tokens: int | None = None) -> dict[int, tuple]:
    """{MoE layer: (experts' input hidden states [T, H], router logits [T, E])} of the search's
    sample of `windows` (see `search_windows`), in one forward pass of a loaded model."""
    from .families import family_for_config

    family = family_for_config(model.config)
    captured: dict[int, list] = {layer: [[], []] for layer in family.moe_layer_indices(model)}
    hooks = []
    for layer in captured:
        hooks.append(family.experts(model, layer).register_forward_pre_hook(
            lambda module, args, layer=layer: captured[layer][0].append(args[0].detach().float().cpu())))
        hooks.append(family.router(model, layer).register_forward_hook(
            lambda module, args, output, layer=layer: captured[layer][1].append(
                (output[0] if isinstance(output, tuple) else output).detach().float().cpu())))
    device = model.get_input_embeddings().weight.device
    sample, tokens = search_windows(windows, family.top_k(model.config), family.num_experts(model.config),
                                            model.config.hidden_size, max_tokens)
    try:
        for batch in sample.split(batch_size):
            model.base_model(input_ids=batch.to(device), use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
    return {layer: (torch.cat(h)[:tokens], torch.cat(logits)[:tokens]) for layer, (h, logits) in captured.items()}


def search_model(model, windows: torch.Tensor, request, *, batch_size: int = 8, max_tokens: int | None = None,
                 progress: bool = True):
    """A per-layer search `request` (``reconstruct``, a merge grouping: anything with
    ``answer(LayerSample)`` and ``finish(answers)``; or a streamed one such as compensation, given
    every token of `windows` as one chunk) on a loaded model, from one forward pass."""
    streamed = getattr(request, "streamed", False)
    answers = {}
    captured = capture_layer_inputs(model, windows, batch_size, windows.numel() if streamed else max_tokens)
    for layer, (hidden, logits) in tqdm(captured.items(), desc="layer search", unit="layer", disable=not progress):
        if streamed:
            stream = request.start(layer, len(hidden))
            sample = LayerSample.of_model(model, layer, hidden, logits, every_expert=False)
            if getattr(stream, "routing_first", False):
                stream.add_routing(sample)
            stream.add(sample)
            answers[layer] = request.end(layer, stream)
        else:
            answers[layer] = request.answer(LayerSample.of_model(model, layer, hidden, logits))
    return request.finish(answers)
