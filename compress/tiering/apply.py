"""Writing a tiered checkpoint, streaming like pruning: team members are expert slices of the source
(in team order), router rows are combined per team as they are read, everything else is copied."""

from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoint.dtypes import TORCH_DTYPES
from ..checkpoint.files import write_config
from ..checkpoint.reader import CheckpointReader
from ..checkpoint.tensor_plan import CheckpointPlan, TensorCopy, write_tensors
from ..checkpoint.writer import TensorSpec
from ..errors import CompressError
from ..families import MoEFamily
from ..models import modeling_tiered_moe
from ..pruning.apply import copy_modeling_files, plan_tensors
from ..pruning.plan import PrunePlan
from .plan import TieredPlan


def tiered_config(config: dict, family: MoEFamily, plan: TieredPlan) -> dict:
    base_type = config["model_type"]
    if family.routing["function"] not in modeling_tiered_moe.TEAM_ROUTING:
        raise CompressError(f"tiered conversion needs routing a team router can reproduce ({', '.join(modeling_tiered_moe.TEAM_ROUTING)}); "
                            f"{base_type} routes by {family.routing['function']}")
    config_class, model_class = modeling_tiered_moe.classes_for(base_type)
    largest = max(len(teams) * plan.team_size for teams in plan.teams.values())
    config = family.rewrite_config(config, num_experts=largest, top_k=plan.team_top_k * plan.team_size)
    routing = {key: value for key, value in family.routing.items() if key != "cast_to_logits_dtype"}
    if isinstance(routing.get("renormalize"), str):  # a config field (Qwen/OLMoE's norm_topk_prob)
        routing["renormalize"] = bool(config.get(routing["renormalize"], False))
    if plan.team_top_k == 1:
        # One team per token: a renormalised weight would be 1.0 and the team router would get no
        # gradient, so the team's weight is its probability over all teams (as in Switch Transformer).
        routing = {"function": "softmax_then_topk", "renormalize": False}
    module = "modeling_tiered_moe"
    config.update({
        "model_type": config_class.model_type,
        "architectures": [model_class.__name__],
        "auto_map": {"AutoConfig": f"{module}.{config_class.__name__}", "AutoModelForCausalLM": f"{module}.{model_class.__name__}"},
        "tiered_layers": {str(layer): {"teams": len(teams), "team_size": plan.team_size}
                          for layer, teams in sorted(plan.teams.items())},
        "team_top_k": plan.team_top_k,
        "team_routing": routing,
        "moe_layout": family.moe_layout,
    })
    return config


def _team_rows(teams: list[list[int]], mixing: torch.Tensor):
    index = torch.tensor(teams, dtype=torch.long)

    def combine(rows: torch.Tensor) -> torch.Tensor:  # rows [E, ...] → [teams, ...]: Σ_m mixing[t, m] · rows[team[t][m]]
        weights = mixing.to(torch.float32).reshape(*mixing.shape, *([1] * (rows.dim() - 1)))
        return (rows[index].float() * weights).sum(dim=1).to(rows.dtype)

    return combine


def plan_tiered_tensors(reader: CheckpointReader, family: MoEFamily, plan: TieredPlan, num_layers: int,
                        router_dtype: torch.dtype) -> CheckpointPlan:
    """Experts as a prune plan keeping team members in team order; router tensors combined per team."""
    kept = {layer: [e for team in teams for e in team] for layer, teams in plan.teams.items()}
    members = PrunePlan(plan.source, kept, plan.team_top_k * plan.team_size)
    planned = plan_tensors(reader, family, members, num_layers)
    result = CheckpointPlan(dropped_keys=planned.dropped_keys)
    for copy, spec in zip(planned.copies, planned.specs):
        role = family.classify_key(copy.key)
        if role.kind != "router":
            result.copies.append(copy)
            result.specs.append(spec)
            continue
        teams, mixing = plan.teams[role.layer], plan.mixing[role.layer]
        shape = list(reader.entries[copy.key].shape)
        shape[0] = len(teams)
        result.copies.append(TensorCopy(copy.key, copy.new_key, compute=_team_rows(teams, mixing)))
        result.specs.append(TensorSpec(copy.new_key, spec.dtype, tuple(shape)))
        if role.suffix == "weight":  # the mixing weights live beside the team router's weight
            key = copy.new_key[: -len("weight")] + "mixing"
            result.copies.append(TensorCopy(None, key, compute=lambda _, m=mixing: m.to(router_dtype)))
            result.specs.append(TensorSpec(key, router_dtype, tuple(mixing.shape)))
    return result


def write_tiered_checkpoint(source, staging: Path, plan: TieredPlan, max_shard_bytes: int, progress: bool = False) -> None:
    """Write the converted checkpoint of `plan` from `source` (an opened `jobs.SourceModel`) into `staging`."""
    config, family, reader = source.raw_config, source.family, source.reader
    router_key = next(key for key in reader.keys() if family.classify_key(key).kind == "router" and key.endswith("weight"))
    router_dtype = TORCH_DTYPES[reader.entries[router_key].dtype]
    tensors = plan_tiered_tensors(reader, family, plan, int(config.get("num_hidden_layers") or 0), router_dtype)
    new_config = tiered_config(config, family, plan)
    write_tensors(reader, staging, tensors, max_shard_bytes, progress)
    write_config(staging, new_config)
    copy_modeling_files(source.path, staging, new_config)


def tiered_parameter_counts(config, tiers: dict[int, int], team_size: int, team_top_k: int) -> dict:
    """Total and active parameters of a tiered variant of `config` (a transformers config), on the meta device."""
    from ..families import family_for_config
    from ..model_info import meta_model

    family = family_for_config(config)
    base_type = config.model_type
    config_class, _ = modeling_tiered_moe.CLASSES[base_type]
    routing = {key: value for key, value in family.routing.items() if key != "cast_to_logits_dtype"}
    fields = {**config.to_dict(), "tiered_layers": {str(layer): {"teams": n, "team_size": team_size} for layer, n in tiers.items()},
              "team_top_k": team_top_k, "team_routing": {**routing, "renormalize": True}, "moe_layout": family.moe_layout,
              family.top_k_fields[0]: team_top_k * team_size}
    fields.pop("model_type", None)
    tiered = config_class(**fields)
    model = meta_model(tiered)
    total = sum(p.numel() for p in model.parameters())
    expert_params = active_experts = 0
    for layer, teams in tiers.items():
        experts = family.experts(model, layer)
        params = sum(p.numel() for p in experts.parameters())
        expert_params += params
        active_experts += params * team_top_k // teams
    embeddings = model.get_input_embeddings().weight.numel()
    active = total - expert_params + active_experts
    return {"total": total, "active": active, "active_excluding_embeddings": active - embeddings}
