"""Expert usage of a loaded model on text, and how much it differs between domains.

Per-layer top-k selection counts, computed from the router logits through the family's own
routing function, and the Jensen–Shannon divergence between domains' usage (the seeds' "domain
divergence"). The full routing statistics build on the same idea.
"""

from __future__ import annotations

import itertools

import torch

from .data.tokens import token_stream, token_windows
from .families import family_for_config


@torch.no_grad()
def expert_usage(model, tokenizer, texts: list[str], tokens: int, seq_len: int, batch_size: int = 8) -> torch.Tensor:
    """Top-k selection counts per MoE layer, shape [moe_layers, experts], over about `tokens` tokens."""
    family = family_for_config(model.config)
    buffers = [family.router_buffers(model, layer) for layer in family.moe_layer_indices(model)]
    batches = token_windows(token_stream(tokenizer, texts), seq_len, max(1, tokens // seq_len))
    counts = None
    for batch in batches.split(batch_size):
        router_logits = model(input_ids=batch, output_router_logits=True).router_logits
        if counts is None:
            counts = torch.zeros(len(router_logits), router_logits[0].shape[-1], dtype=torch.long)
        for layer, (logits, layer_buffers) in enumerate(zip(router_logits, buffers)):
            _, index = family.route(logits, model.config, layer_buffers)
            counts[layer] += torch.bincount(index.flatten(), minlength=counts.shape[1])
    return counts


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> float:
    """Jensen–Shannon divergence in bits between two (unnormalised) count vectors."""
    p, q = p.double() / p.sum(), q.double() / q.sum()
    m = (p + q) / 2

    def kl(a, b):
        mask = a > 0
        return float((a[mask] * (a[mask] / b[mask]).log2()).sum())

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def domain_divergence_table(usage: dict[str, torch.Tensor]) -> list[float]:
    """Per MoE layer, the mean JS divergence over all pairs of domains' usage."""
    pairs = list(itertools.combinations(usage, 2))
    layers = next(iter(usage.values())).shape[0]
    return [sum(js_divergence(usage[a][layer], usage[b][layer]) for a, b in pairs) / len(pairs) for layer in range(layers)]
