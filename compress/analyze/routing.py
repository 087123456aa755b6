"""Per-token routing of a forward pass, and interventions on the routers (force one expert, change k).

`token_routing` reads the raw router logits (what transformers returns with ``output_router_logits``,
taken from the routers by hooks) and routes them with the family's own function (tested bit-exact against the router modules), so
every analysis sees exactly the experts the model uses. The interventions replace router forwards
for the duration of a ``with`` block and restore them after.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import torch

from ..errors import CompressError
from ..families import family_for_config


@dataclass
class LayerRouting:
    weights: torch.Tensor  # [T, k] routing weights
    experts: torch.Tensor  # [T, k] expert ids
    probabilities: torch.Tensor  # [T, E] the router's distribution over all experts

    @property
    def entropy(self) -> torch.Tensor:  # [T], nats
        return -torch.special.xlogy(self.probabilities, self.probabilities).sum(dim=-1)

    @property
    def top1_weight(self) -> torch.Tensor:  # [T]
        return self.weights.max(dim=-1).values


@torch.no_grad()
def forward_with_router_outputs(model, input_ids: torch.Tensor, **kwargs) -> tuple[object, dict[int, object]]:
    """(the model's output, {MoE layer: what its router module returned}) of one forward without a
    KV cache. Taken from the routers by hooks, not with ``output_router_logits``: that also makes
    transformers compute its load-balancing loss, which assumes one expert count in every layer and
    fails on per-layer and tiered models."""
    family = family_for_config(model.config)
    router_outputs = {}

    def keep(layer, module, args, output):
        router_outputs[layer] = output

    handles = [family.router(model, layer).register_forward_hook(partial(keep, layer)) for layer in family.moe_layer_indices(model)]
    try:
        out = model(input_ids=input_ids.to(model.get_input_embeddings().weight.device), use_cache=False, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return out, router_outputs


def routed(model, layer: int, router_output) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(router logits [T, n], weights [T, k], expert ids [T, k]) of one router's output. A tiered
    model's team router returns the chosen teams' members and weights itself (its logits score teams)."""
    if getattr(model.config, "team_top_k", None) is not None:
        return router_output
    family = family_for_config(model.config)
    logits = router_output[0] if isinstance(router_output, tuple) else router_output
    logits = logits.reshape(-1, logits.shape[-1])
    weights, experts = family.route(logits, model.config, family.router_buffers(model, layer))
    return logits, weights, experts


def token_routing(model, input_ids: torch.Tensor) -> dict[int, LayerRouting]:
    """{MoE layer: routing of every token of `input_ids` [B, L] (flattened to T = B·L rows)}."""
    family = family_for_config(model.config)
    routing = {}
    for layer, output in forward_with_router_outputs(model, input_ids)[1].items():
        logits, weights, experts = routed(model, layer, output)
        routing[layer] = LayerRouting(weights.float().cpu(), experts.cpu(), family.routing_distribution(logits).cpu())
    return routing


def parse_layer_experts(spec: str, moe_layers: list[int], num_experts: int) -> dict[int, list[int]]:
    """``"3:5,7;4:1"`` or ``"3:5,7"`` (one layer) or ``"5"`` (every MoE layer) → {layer: [experts]}."""
    result: dict[int, list[int]] = {}
    try:
        for part in spec.replace(";", " ").split():
            if ":" in part:
                layer_text, experts_text = part.split(":", 1)
                layers = [int(layer_text)]
            else:
                layers, experts_text = moe_layers, part
            experts = [int(e) for e in experts_text.split(",") if e]
            for layer in layers:
                result.setdefault(layer, []).extend(experts)
    except ValueError:
        raise CompressError(f"{spec!r}: write LAYER:EXPERT[,EXPERT] (several separated by ;) or EXPERT for every layer") from None
    for layer, experts in result.items():
        if layer not in moe_layers:
            raise CompressError(f"layer {layer} is not a MoE layer of this model (MoE layers: {moe_layers[0]}-{moe_layers[-1]})")
        bad = [e for e in experts if not 0 <= e < num_experts]
        if bad:
            raise CompressError(f"expert {bad[0]} is out of range: layer {layer} has experts 0-{num_experts - 1}")
    return result


@contextmanager
def _routing_replaced(model, layers: list[int], route):
    """Inside the block, each listed layer's router computes its logits as usual and routes them
    with `route(layer, logits)` → (weights [T, k], expert ids [T, k])."""
    family = family_for_config(model.config)
    saved = {}
    for layer in layers:
        router = family.router(model, layer)

        def forward(hidden_states, *state, router=router, layer=layer):  # state: what the block hands its router (MiniMax-M2's bias)
            logits = type(router).forward(router, hidden_states, *state)[0]
            return (logits, *route(layer, logits))

        saved[layer] = router.forward
        router.forward = forward
    try:
        yield
    finally:
        for layer, forward in saved.items():
            family.router(model, layer).forward = forward


def forced_routing(model, experts: dict[int, int]):
    """Every token goes to one expert per listed layer, with weight 1 (the seeds' `chat` mode)."""

    def route(layer, logits):
        rows = logits.shape[0]
        return (torch.ones(rows, 1, dtype=logits.dtype, device=logits.device),
                torch.full((rows, 1), experts[layer], dtype=torch.long, device=logits.device))

    return _routing_replaced(model, list(experts), route)


@contextmanager
def top_k_override(model, k: int):
    """Route every MoE layer with top-k = `k` (the family's own routing function, new k)."""
    family = family_for_config(model.config)
    num_experts = family.num_experts(model.config)
    if not 1 <= k <= num_experts:
        raise CompressError(f"k = {k} is out of range: this model has {num_experts} experts per layer")
    layers = family.moe_layer_indices(model)
    buffers = {layer: family.router_buffers(model, layer) for layer in layers}
    saved_config = {name: getattr(model.config, name) for name in family.top_k_fields if hasattr(model.config, name)}
    for name in saved_config:
        setattr(model.config, name, k)
    try:
        with _routing_replaced(model, layers, lambda layer, logits: family.route(logits, model.config, buffers[layer])):
            yield
    finally:
        for name, value in saved_config.items():
            setattr(model.config, name, value)


def bootstrap_interval(values: torch.Tensor, samples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean of `values` [N]."""
    values = values.double()
    generator = torch.Generator().manual_seed(seed)
    means = values[torch.randint(len(values), (samples, len(values)), generator=generator)].mean(dim=1)
    return float(means.quantile(0.025)), float(means.quantile(0.975))


@torch.no_grad()
def window_nll(model, windows: torch.Tensor, batch_size: int = 8, desc: str | None = None) -> torch.Tensor:
    """Mean next-token NLL of each window [N]: the unit the bootstrap resamples (a progress bar
    named `desc` when given)."""
    from tqdm.auto import tqdm

    device = model.get_input_embeddings().weight.device
    result = []
    for batch in tqdm(windows.split(batch_size), desc=desc, unit="batch", disable=desc is None, leave=False):
        batch = batch.to(device)
        logprobs = torch.log_softmax(model(input_ids=batch, use_cache=False).logits[:, :-1].float(), dim=-1)
        result.append(-logprobs.gather(-1, batch[:, 1:, None]).squeeze(-1).mean(dim=1).cpu())
    return torch.cat(result)


def perplexity_change(base_nll: torch.Tensor, other_nll: torch.Tensor) -> dict:
    """Perplexities and the relative change with a bootstrap interval over windows (paired)."""
    low, high = bootstrap_interval(other_nll - base_nll)
    base, other = math.exp(float(base_nll.mean())), math.exp(float(other_nll.mean()))
    # Windows are equally long, so perplexity ratio = exp(mean per-window NLL difference).
    return {"base_perplexity": base, "perplexity": other, "change": other / base - 1,
            "change_95ci": [math.exp(low) - 1, math.exp(high) - 1]}
