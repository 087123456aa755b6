"""Tiered lightweight Mixture-of-Experts models (moe-compress).

In each converted layer the experts are grouped into disjoint *teams* of ``team_size`` existing
experts; a router scores the teams, and each of the ``team_top_k`` chosen teams contributes
Σ_m mixing[t, m] · expert_{t,m}(x), with learned scalar mixing weights. Team t's members are
stored as experts ``t*S … t*S+S-1`` of the layer's ordinary fused experts module, and the
`TeamRouter` hands that module the chosen teams' members with weights g_t · mixing[t, m]: the
same "token → (expert, weight)" path every MoE layer takes, so every experts implementation
(transformers' grouped_mm, the project's kernels) runs it unchanged. Shared experts, attention and
everything else are the base family's.

Config fields added to the base family's config: ``tiered_layers`` {layer: {"teams": n,
"team_size": S}}, ``team_top_k``, ``team_routing`` {"function": "topk_then_softmax" |
"softmax_then_topk", "renormalize": bool} (the base family's own rule, so teams of one expert with
all experts kept reproduce the original model), and ``moe_layout`` (module paths, expert dims).

Depends on torch, transformers and the sibling `modeling_moe_compress.py` only: converted
checkpoints carry both files and name them in ``auto_map``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .modeling_moe_compress import derive_classes, derived_attribute, keep_experts, set_counts, slice_tensors

MODEL_TYPE_SUFFIX = "_tiered"


class TeamRouter(nn.Module):
    """Scores teams; returns (team logits [T, n], member weights [T, k·S], member expert ids [T, k·S])."""

    def __init__(self, hidden_size: int, teams: int, team_size: int, top_k: int, bias: bool, routing: dict):
        super().__init__()
        self.hidden_size, self.teams, self.team_size, self.top_k = hidden_size, teams, team_size, top_k
        self.function, self.renormalize = routing["function"], bool(routing.get("renormalize", True))
        self.weight = nn.Parameter(torch.zeros(teams, hidden_size))
        self.bias = nn.Parameter(torch.zeros(teams)) if bias else None
        self.mixing = nn.Parameter(torch.full((teams, team_size), 1.0 / team_size))

    def forward(self, hidden_states: torch.Tensor):
        hidden_states = hidden_states.reshape(-1, self.hidden_size)
        logits = F.linear(hidden_states, self.weight, self.bias)
        if self.function == "topk_then_softmax":
            values, teams = torch.topk(logits, self.top_k, dim=-1)
            weights = torch.softmax(values, dim=-1, dtype=values.dtype)
        else:
            weights, teams = torch.topk(torch.softmax(logits, dim=-1, dtype=torch.float32), self.top_k, dim=-1)
            if self.renormalize:
                weights = weights / weights.sum(dim=-1, keepdim=True)
        members = teams.unsqueeze(-1) * self.team_size + torch.arange(self.team_size, device=teams.device)
        member_weights = weights.unsqueeze(-1) * self.mixing[teams].to(weights.dtype)
        return logits, member_weights.reshape(len(logits), -1), members.reshape(len(logits), -1)


def install_teams(decoder_layer: nn.Module, teams: int, team_size: int, config) -> TeamRouter:
    """Resize a decoder layer's experts to teams × team_size and put a `TeamRouter` in the router's place."""
    layout = config.moe_layout
    router_path = layout["router"]
    old_router = decoder_layer.get_submodule(router_path)
    keep_experts(decoder_layer, list(range(teams * team_size)), layout, config.team_top_k * team_size)
    router = TeamRouter(config.hidden_size, teams, team_size, config.team_top_k,
                        getattr(old_router, "bias", None) is not None, config.team_routing)
    parent, _, name = router_path.rpartition(".")
    setattr(decoder_layer.get_submodule(parent) if parent else decoder_layer, name, router)
    return router


def keep_teams(decoder_layer: nn.Module, teams: list[int], team_size: int, layout: dict, team_top_k: int) -> None:
    """Cut one tiered layer to the teams `teams` (original team ids, in order): their members'
    experts and their rows of the team router (weight, bias, mixing)."""
    members = [t * team_size + m for t in teams for m in range(team_size)]
    slice_tensors(decoder_layer.get_submodule(layout["experts"]), layout["expert_tensors"], members)
    router = decoder_layer.get_submodule(layout["router"])
    slice_tensors(router, {"weight": 0, "bias": 0, "mixing": 0}, teams)
    set_counts(decoder_layer, layout, len(members), team_top_k * team_size)
    router.teams, router.top_k = len(teams), team_top_k


class _TieredTeams:
    """Mixin: after the stock model is built, turn each layer of ``config.tiered_layers`` into teams."""

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        layers = self.get_submodule(config.moe_layout["layers"])
        for layer, spec in config.tiered_layers.items():
            install_teams(layers[int(layer)], spec["teams"], spec["team_size"], config)


# Team routers implement these two routing rules; families routed otherwise (DeepSeek-V3's
# group-limited routing) have no team equivalent.
TEAM_ROUTING = ("topk_then_softmax", "softmax_then_topk")

# base model_type → (config class, causal LM class), e.g. GptOssTieredConfig, GptOssTieredForCausalLM;
# filled as families are used (`classes_for`, or a class named by auto_map).
CLASSES: dict[str, tuple[type, type]] = {}


def classes_for(base: str) -> tuple[type, type]:
    return derive_classes(globals(), base, MODEL_TYPE_SUFFIX, "Tiered", _TieredTeams)


def __getattr__(attribute: str):
    return derived_attribute(globals(), attribute, "Tiered", classes_for)
