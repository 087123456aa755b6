"""Routing functions: router logits → (top-k weights, top-k expert ids), one per family style.

Each function reproduces, from the raw router logits that transformers returns with
``output_router_logits=True``, exactly what the family's router module computes. The family
definitions name one of them (``"routing": {"function": ...}``) with its options, so statistics,
pruning checks and analyses never need the router module itself.

Signature of every function: ``fn(logits [T, E], config, router_buffers, top_k, **options)`` where
``router_buffers`` holds non-parameter router state such as DeepSeek-V3's
``e_score_correction_bias`` and ``top_k`` is read through the family's config aliases.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

RoutingFunction = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def topk_then_softmax(logits: torch.Tensor, config, router_buffers: dict, top_k: int, **_) -> tuple[torch.Tensor, torch.Tensor]:
    """gpt-oss: top-k on the logits (router bias included), softmax over the k values only."""
    values, index = torch.topk(logits, top_k, dim=-1)
    return torch.softmax(values, dim=-1, dtype=values.dtype), index


def softmax_then_topk(
    logits: torch.Tensor, config, router_buffers: dict, top_k: int, *, renormalize, cast_to_logits_dtype: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixtral, Qwen-MoE, OLMoE: fp32 softmax over all experts, top-k, optional renormalisation.

    ``renormalize`` is a bool (Mixtral always renormalises) or the name of the config field that
    decides it (``norm_topk_prob`` for Qwen and OLMoE).
    """
    if isinstance(renormalize, str):
        renormalize = bool(getattr(config, renormalize, False))
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
    weights, index = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    if cast_to_logits_dtype:
        weights = weights.to(logits.dtype)
    return weights, index


def _best_groups(group_scores: torch.Tensor, topk_group: int, num_experts: int) -> torch.Tensor:
    """[T, E] bool: the experts of each token's best `topk_group` groups, by `group_scores` [T, G]."""
    n_group = group_scores.shape[-1]
    group_index = torch.topk(group_scores, k=topk_group, dim=-1, sorted=False)[1]
    group_mask = torch.zeros_like(group_scores).scatter_(1, group_index, 1)
    return group_mask.unsqueeze(-1).expand(-1, n_group, num_experts // n_group).reshape(-1, num_experts).bool()


def sigmoid_group_topk(logits: torch.Tensor, config, router_buffers: dict, top_k: int, *, renormalize="norm_topk_prob",
                       scaling="routed_scaling_factor", **_) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek-V3 and its kin, Flint: sigmoid scores, correction bias for the choice only (when the
    router has one), group-limited top-k.

    With ``n_group`` > 1 the best ``topk_group`` groups (scored by the sum of their two best biased
    scores) stay eligible; weights are the unbiased scores of the chosen experts, renormalised when
    ``renormalize`` (a bool, or the config field that decides it: ``norm_topk_prob``, true where the
    config has no such field), times the config's `scaling` field (``routed_scaling_factor``; where it has one).
    """
    scores = logits.float().sigmoid()
    num_experts = scores.shape[-1]
    bias = router_buffers.get("e_score_correction_bias")  # Flint's choice is the plain scores
    choice = scores if bias is None else scores + bias.float()
    n_group = getattr(config, "n_group", None) or 1  # families without groups route as one group
    if n_group > 1:
        group_scores = choice.view(-1, n_group, num_experts // n_group).topk(2, dim=-1)[0].sum(dim=-1)
        choice = choice.masked_fill(~_best_groups(group_scores, config.topk_group, num_experts), float("-inf"))
    index = torch.topk(choice, k=top_k, dim=-1, sorted=False)[1]
    weights = scores.gather(1, index)
    if getattr(config, renormalize, True) if isinstance(renormalize, str) else renormalize:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return weights * getattr(config, scaling, 1.0), index


def sigmoid_scores(function: str, config) -> bool:
    """Whether routing function `function` scores each expert by the sigmoid of its logit (under
    `config`), not by a softmax."""
    return function == "sigmoid_group_topk" or (function == "topk_then_score"
                                                 and getattr(config, "expert_selection_fn", "softmax") == "sigmoid")


def topk_then_score(logits: torch.Tensor, config, router_buffers: dict, top_k: int, **_) -> tuple[torch.Tensor, torch.Tensor]:
    """Cohere2-MoE and Granite-MoE: top-k of the logits, then a float32 softmax over those k, or (``expert_selection_fn``
    ``"sigmoid"``) their sigmoid, renormalised when ``norm_topk_prob``; in the logits' dtype."""
    values, index = torch.topk(logits, top_k, dim=-1)
    if sigmoid_scores("topk_then_score", config):
        weights = values.sigmoid()
        if getattr(config, "norm_topk_prob", False):
            weights = weights / weights.sum(dim=-1, keepdim=True)
    else:
        weights = torch.softmax(values, dim=-1, dtype=torch.float32)
    return weights.to(logits.dtype), index


def softmax_group_topk(logits: torch.Tensor, config, router_buffers: dict, top_k: int, **_) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek-V2: float32 softmax over all experts; with ``topk_method`` ``"group_limited_greedy"``
    only the best ``topk_group`` of ``n_group`` groups (scored by their best expert) stay eligible;
    top-k, not renormalised, times ``routed_scaling_factor``."""
    scores = logits.float().softmax(dim=-1)
    if getattr(config, "topk_method", "greedy") == "group_limited_greedy":
        num_experts, n_group = scores.shape[-1], config.n_group
        group_scores = scores.view(-1, n_group, num_experts // n_group).max(dim=-1).values
        scores = scores.masked_fill(~_best_groups(group_scores, config.topk_group, num_experts), 0.0)
    weights, index = torch.topk(scores, k=top_k, dim=-1, sorted=False)
    return weights * config.routed_scaling_factor, index


def softmax_biased_topk(logits: torch.Tensor, config, router_buffers: dict, top_k: int, **_) -> tuple[torch.Tensor, torch.Tensor]:
    """ERNIE-4.5-MoE: float32 softmax over all experts, the correction bias added for the choice only,
    the chosen probabilities renormalised (their sum at least ``moe_norm_min``)."""
    probs = logits.float().softmax(dim=-1)
    index = torch.topk(probs + router_buffers["e_score_correction_bias"].float(), top_k, dim=-1)[1]
    weights = probs.gather(-1, index)
    return weights / weights.sum(dim=-1, keepdim=True).clamp(min=config.moe_norm_min), index


def softmax_distribution(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits.float(), dim=-1)


def normalized_sigmoid_distribution(logits: torch.Tensor) -> torch.Tensor:
    scores = logits.float().sigmoid()
    return scores / scores.sum(dim=-1, keepdim=True)


ROUTING_FUNCTIONS: dict[str, RoutingFunction] = {
    "topk_then_softmax": topk_then_softmax,
    "softmax_then_topk": softmax_then_topk,
    "sigmoid_group_topk": sigmoid_group_topk,
    "topk_then_score": topk_then_score,
    "softmax_group_topk": softmax_group_topk,
    "softmax_biased_topk": softmax_biased_topk,
}

# The router's preference over all experts [T, E] (rows sum to 1), for entropy and concentration:
# a softmax for the softmax routers, the normalised sigmoid scores for DeepSeek-V3.
ROUTING_DISTRIBUTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "topk_then_softmax": softmax_distribution,
    "softmax_then_topk": softmax_distribution,
    "sigmoid_group_topk": normalized_sigmoid_distribution,
    "topk_then_score": softmax_distribution,
    "softmax_group_topk": softmax_distribution,
    "softmax_biased_topk": softmax_distribution,
}

# Routing functions whose config may limit each token to the best `topk_group` of `n_group` expert groups.
GROUPED = ("sigmoid_group_topk", "softmax_group_topk")
