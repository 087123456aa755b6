"""Recipe: convert a MoE checkpoint into a TieredLightweightMoE (teams of co-activating experts).

`tiered.yaml` beside this file holds the defaults; `compress convert tiered` applies them.

1. Tiers: ``"0-7:4,8-17:8,18-23:6"`` gives each MoE layer its team count; every MoE layer must be
   covered exactly once.
2. Teams, per layer, from the routing statistics (``team_size`` experts each, disjoint):
   * ``greedy`` (the seeds' method): seed a team with the most-used unassigned expert, add the
     unassigned expert with the largest summed co-activation with the team's members, repeat;
   * ``agglomerative``: among the teams × size most-used experts, repeatedly pair the clusters with
     the highest mean co-activation similarity (co-selections / √(selections_i · selections_j))
     until clusters reach ``team_size`` (a power of two).
3. Mixing weights: each member's share of its team's selections (uniform when none).
4. Team router rows: the mixing-weighted sum of the members' router rows (and biases), so a team
   of one expert keeps exactly that expert's row and the conversion with teams of one and all
   experts kept reproduces the original model. Teams are routed by the base family's rule, except
   with one team per token: there the team's weight is its softmax probability over all teams
   (Switch Transformer), because a renormalised single weight is always 1 and would leave the
   team router without gradient.
5. Writing streams like pruning: members are expert slices of the source (in team order), router
   rows are combined as they are read, everything else is copied; the config names the tiered
   classes, whose code is copied into the checkpoint (``auto_map``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch
import yaml

from compress.checkpoint.dtypes import TORCH_DTYPES
from compress.checkpoint.files import write_config
from compress.checkpoint.reader import CheckpointReader
from compress.checkpoint.tensor_plan import CheckpointPlan, TensorCopy, write_tensors
from compress.checkpoint.writer import TensorSpec
from compress.errors import CompressError
from compress.families import MoEFamily
from compress.models import modeling_tiered_moe
from compress.pruning.apply import copy_modeling_files, plan_tensors
from compress.pruning.plan import PrunePlan, layer_number, plan_file_format, read_plan_file, save_plan_file
from compress.stats import RoutingStats

CLUSTERING = ("greedy", "agglomerative")


RECIPE_KEYS = {"tiers": str, "designed_for": dict, "team_size": int, "team_top_k": int, "clustering": str}


def default_recipe() -> dict:
    return yaml.safe_load((Path(str(resources.files("compress.recipes"))) / "tiered.yaml").read_text())


def load_recipe(path: Path) -> dict:
    """The default recipe updated by a user's YAML file, every key and type checked."""
    recipe = default_recipe()
    try:
        given = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise CompressError(f"recipe {path} is not valid YAML{where} ({getattr(exc, 'problem', None) or 'parse error'})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CompressError(f"cannot read recipe {path} ({exc})") from None
    if given is None:
        return recipe
    if not isinstance(given, dict):
        raise CompressError(f"recipe {path} must be a YAML mapping of {', '.join(RECIPE_KEYS)}")
    for key, value in given.items():
        if key not in RECIPE_KEYS:
            raise CompressError(f"recipe {path}: unknown key {key!r} (known: {', '.join(RECIPE_KEYS)})")
        if not isinstance(value, RECIPE_KEYS[key]) or isinstance(value, bool):
            raise CompressError(f"recipe {path}: {key} must be a {RECIPE_KEYS[key].__name__}, not {value!r}")
    if "tiers" in given and "designed_for" not in given:
        recipe.pop("designed_for")  # the user's tiers are for their model as they are
    return {**recipe, **given}


def scaled_tiers(recipe: dict, moe_layers: list[int], num_experts: int, team_size: int) -> str:
    """The recipe's tiers for this model: unchanged when no ``designed_for`` is given; otherwise each
    MoE layer takes the tier of the layer at the same relative depth of the model the tiers were
    designed for, and the same share of the most teams a layer can hold."""
    designed = recipe.get("designed_for")
    if not designed:
        return str(recipe["tiers"])
    reference_layers = int(designed["moe_layers"])
    reference = parse_tiers(str(recipe["tiers"]), list(range(reference_layers)))
    reference_max = int(designed["experts"]) // int(designed["team_size"])
    most = max(1, num_experts // team_size)
    teams = [max(1, min(most, round(reference[i * reference_layers // len(moe_layers)] / reference_max * most)))
             for i in range(len(moe_layers))]
    parts, start = [], 0
    for i in range(1, len(teams) + 1):
        if i == len(teams) or teams[i] != teams[start] or moe_layers[i] != moe_layers[i - 1] + 1:
            first, last = moe_layers[start], moe_layers[i - 1]
            parts.append(f"{first}-{last}:{teams[start]}" if last != first else f"{first}:{teams[start]}")
            start = i
    return ",".join(parts)


def parse_tiers(text: str, moe_layers: list[int]) -> dict[int, int]:
    """``"0-7:4,8-17:8"`` → {layer: teams}; every MoE layer covered exactly once."""
    teams: dict[int, int] = {}
    try:
        for part in text.split(","):
            span, _, count = part.strip().partition(":")
            first, _, last = span.partition("-")
            for layer in range(int(first), int(last or first) + 1):
                if layer in teams:
                    raise CompressError(f"--tiers names layer {layer} twice")
                teams[layer] = int(count)
    except ValueError:
        raise CompressError(f"--tiers {text!r}: write FIRST-LAST:TEAMS ranges separated by commas, e.g. 0-7:4,8-17:8") from None
    missing = [layer for layer in moe_layers if layer not in teams]
    extra = [layer for layer in teams if layer not in moe_layers]
    if missing or extra:
        raise CompressError(f"--tiers must cover exactly the MoE layers {moe_layers[0]}-{moe_layers[-1]}: "
                            + (f"missing {missing}" if missing else f"{extra} are not MoE layers"))
    if any(count < 1 for count in teams.values()):
        raise CompressError("--tiers: every layer needs at least one team")
    return teams


def greedy_teams(selections: torch.Tensor, coactivation: torch.Tensor, teams: int, size: int) -> list[list[int]]:
    together = coactivation.double().clone()
    together.fill_diagonal_(0)
    order = sorted(range(len(selections)), key=lambda e: (-int(selections[e]), e))
    unassigned, result = list(order), []
    for _ in range(teams):
        team = [unassigned.pop(0)]
        while len(team) < size:
            best = max(unassigned, key=lambda e: (float(together[team, e].sum()), int(selections[e]), -e))
            unassigned.remove(best)
            team.append(best)
        result.append(team)
    return result


def agglomerative_teams(selections: torch.Tensor, coactivation: torch.Tensor, teams: int, size: int) -> list[list[int]]:
    candidates = sorted(range(len(selections)), key=lambda e: (-int(selections[e]), e))[: teams * size]
    counts = selections.double().clamp(min=1)
    similarity = coactivation.double() / torch.sqrt(counts[:, None] * counts[None, :])
    clusters = [[e] for e in candidates]
    while len(clusters[0]) < size:
        pairs = sorted(
            ((float(similarity[a][:, b].mean()), i, j) for i, a in enumerate(clusters) for j, b in enumerate(clusters) if i < j),
            key=lambda p: (-p[0], p[1], p[2]),
        )
        used, merged = set(), []
        for _, i, j in pairs:
            if i not in used and j not in used:
                used.update((i, j))
                merged.append(sorted(clusters[i] + clusters[j], key=lambda e: (-int(selections[e]), e)))
        clusters = merged
    return clusters


def mixing_weights(selections: torch.Tensor, teams: list[list[int]]) -> torch.Tensor:
    counts = torch.tensor([[float(selections[e]) for e in team] for team in teams], dtype=torch.float64)
    totals = counts.sum(dim=1, keepdim=True)
    uniform = torch.full_like(counts, 1.0 / counts.shape[1])
    return torch.where(totals > 0, counts / totals.clamp(min=1e-300), uniform).float()


PLAN_FORMAT = "moe-compress tiered plan"
PLAN_FORMAT_VERSION = 1
ROUTER_INIT = "mixing-weighted sum of the members' router rows and biases"


@dataclass
class TieredPlan:
    """The conversion of every MoE layer, as data a person can read and edit: its teams (original
    expert ids), their mixing weights and the teams chosen per token. Team router rows start as
    `ROUTER_INIT` (the one rule: teams of one then reproduce the original model exactly).

    The JSON file::

        {"format": "moe-compress tiered plan", "format_version": 1, "source": {…}, "team_top_k": 1,
         "router_init": "…", "layers": {"0": {"teams": [[3, 7], [1, 2]], "mixing": [[0.6, 0.4], [0.5, 0.5]]}},
         "provenance": {"clustering": "greedy", "statistics": {…}, "tool_version": "…", "command": "…"}}
    """

    source: dict
    teams: dict[int, list[list[int]]]
    mixing: dict[int, torch.Tensor]  # [teams, team_size] per layer
    team_top_k: int
    provenance: dict = field(default_factory=dict)

    @property
    def team_size(self) -> int:
        return len(next(iter(self.teams.values()))[0])

    def to_dict(self) -> dict:
        return {"format": PLAN_FORMAT, "format_version": PLAN_FORMAT_VERSION, "source": self.source,
                "team_top_k": self.team_top_k, "router_init": ROUTER_INIT,
                "layers": {str(layer): {"teams": teams, "mixing": [[float(w) for w in row] for row in self.mixing[layer].tolist()]}
                           for layer, teams in sorted(self.teams.items())},
                "provenance": self.provenance}

    def save(self, path) -> None:
        save_plan_file(path, self.to_dict())

    @classmethod
    def load(cls, path) -> TieredPlan:
        data = read_plan_file(path)
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
            raise CompressError(f"{path} is not a tiered plan written by `compress convert tiered --plan-only`")
        try:
            layers = {layer_number(layer, str(path)): spec for layer, spec in data["layers"].items()}
            teams = {layer: [[_expert_id(e) for e in team] for team in spec["teams"]] for layer, spec in layers.items()}
            mixing = {layer: torch.tensor(spec["mixing"], dtype=torch.float32) for layer, spec in layers.items()}
            plan = cls(dict(data["source"]), teams, mixing, _expert_id(data["team_top_k"]), dict(data.get("provenance") or {}))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CompressError(f"{path} is malformed ({exc!r}): compare it with a plan from --plan-only") from None
        if data.get("router_init", ROUTER_INIT) != ROUTER_INIT:
            raise CompressError(f"{path}: router_init must be {ROUTER_INIT!r}, the one rule the conversion knows")
        for layer, layer_teams in teams.items():
            if not layer_teams or not all(layer_teams):
                raise CompressError(f"{path}: layer {layer} has no teams or an empty team: every layer needs teams, "
                                    "each of at least one expert")
            weights = mixing[layer]
            if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()) or bool((weights.sum(-1) <= 0).any()):
                raise CompressError(f"{path}: layer {layer}'s mixing weights must be finite float32 numbers, 0 or more, "
                                    "and not all 0 in a team")
        return plan

    def check(self, moe_layers: list[int], experts_per_layer: dict[int, int], fingerprint: str | None = None) -> None:
        """Refuse a plan that does not fit the model or cannot be built."""
        if fingerprint is not None and self.source.get("fingerprint") != fingerprint:
            raise CompressError(f"the plan was made for {self.source.get('model')} (fingerprint {self.source.get('fingerprint')}), "
                                f"not for this model ({fingerprint}): make a new plan with --plan-only")
        if sorted(self.teams) != sorted(moe_layers):
            raise CompressError(f"the plan covers layers {sorted(self.teams)} but the model's MoE layers are {moe_layers}")
        for layer, teams in self.teams.items():
            members = [e for team in teams for e in team]
            if not teams or any(len(team) != self.team_size for team in teams):
                raise CompressError(f"layer {layer} of the plan needs teams of {self.team_size} experts each")
            if len(set(members)) != len(members) or any(not 0 <= e < experts_per_layer[layer] for e in members):
                raise CompressError(f"layer {layer} of the plan names an expert twice or out of range (0..{experts_per_layer[layer] - 1})")
            if tuple(self.mixing[layer].shape) != (len(teams), self.team_size):
                raise CompressError(f"layer {layer}: mixing must hold one weight per team member ({len(teams)} × {self.team_size})")
            if not 1 <= self.team_top_k <= len(teams):
                raise CompressError(f"team_top_k {self.team_top_k} must be between 1 and the {len(teams)} teams of layer {layer}")


def _expert_id(value) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{value!r} is not a whole number")
    return value


def is_tiered_plan_file(path) -> bool:
    return plan_file_format(path) == PLAN_FORMAT


def check_tiers(tiers: dict[int, int], experts_per_layer: dict[int, int], team_size: int, team_top_k: int, clustering: str) -> None:
    """Refuse a conversion that cannot be built, before any statistics are gathered."""
    if clustering not in CLUSTERING:
        raise CompressError(f"unknown clustering {clustering!r}: choose one of {', '.join(CLUSTERING)}")
    if clustering == "agglomerative" and team_size & (team_size - 1):
        raise CompressError(f"agglomerative clustering pairs clusters, so --team-size must be a power of two (got {team_size})")
    for layer, count in tiers.items():
        experts = experts_per_layer[layer]
        if count * team_size > experts:
            raise CompressError(f"layer {layer}: {count} teams × {team_size} experts = {count * team_size}, "
                                f"more than the {experts} experts it has")
        if not 1 <= team_top_k <= count:
            raise CompressError(f"--team-top-k {team_top_k} must be between 1 and the {count} teams of layer {layer}")


def design_teams(stats: RoutingStats, tiers: dict[int, int], team_size: int, team_top_k: int, clustering: str,
                 source: dict | None = None, provenance: dict | None = None) -> TieredPlan:
    check_tiers(tiers, {layer: stats.num_experts(layer) for layer in tiers}, team_size, team_top_k, clustering)
    build = greedy_teams if clustering == "greedy" else agglomerative_teams
    teams, mixing = {}, {}
    for layer, count in tiers.items():
        s = stats.layers[layer]
        teams[layer] = build(s["selections"], s["coactivation"], count, team_size)
        mixing[layer] = mixing_weights(s["selections"], teams[layer])
    return TieredPlan(source or {}, teams, mixing, team_top_k, provenance or {})


def tiered_config(config: dict, family: MoEFamily, layout: TieredPlan) -> dict:
    base_type = config["model_type"]
    if family.routing["function"] not in modeling_tiered_moe.TEAM_ROUTING:
        raise CompressError(f"tiered conversion needs routing a team router can reproduce ({', '.join(modeling_tiered_moe.TEAM_ROUTING)}); "
                            f"{base_type} routes by {family.routing['function']}")
    config_class, model_class = modeling_tiered_moe.classes_for(base_type)
    largest = max(len(teams) * layout.team_size for teams in layout.teams.values())
    config = family.rewrite_config(config, num_experts=largest, top_k=layout.team_top_k * layout.team_size)
    routing = {key: value for key, value in family.routing.items() if key != "cast_to_logits_dtype"}
    if isinstance(routing.get("renormalize"), str):  # a config field (Qwen/OLMoE's norm_topk_prob)
        routing["renormalize"] = bool(config.get(routing["renormalize"], False))
    if layout.team_top_k == 1:
        # One team per token: a renormalised weight would be 1.0 and the team router would get no
        # gradient, so the team's weight is its probability over all teams (as in Switch Transformer).
        routing = {"function": "softmax_then_topk", "renormalize": False}
    module = "modeling_tiered_moe"
    config.update({
        "model_type": config_class.model_type,
        "architectures": [model_class.__name__],
        "auto_map": {"AutoConfig": f"{module}.{config_class.__name__}", "AutoModelForCausalLM": f"{module}.{model_class.__name__}"},
        "tiered_layers": {str(layer): {"teams": len(teams), "team_size": layout.team_size}
                          for layer, teams in sorted(layout.teams.items())},
        "team_top_k": layout.team_top_k,
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


def plan_tiered_tensors(reader: CheckpointReader, family: MoEFamily, layout: TieredPlan, num_layers: int,
                        router_dtype: torch.dtype) -> CheckpointPlan:
    """Experts as a prune plan keeping team members in team order; router tensors combined per team."""
    kept = {layer: [e for team in teams for e in team] for layer, teams in layout.teams.items()}
    plan = PrunePlan(layout.source, kept, layout.team_top_k * layout.team_size)
    planned = plan_tensors(reader, family, plan, num_layers)
    result = CheckpointPlan(dropped_keys=planned.dropped_keys)
    for copy, spec in zip(planned.copies, planned.specs):
        role = family.classify_key(copy.key)
        if role.kind != "router":
            result.copies.append(copy)
            result.specs.append(spec)
            continue
        teams, mixing = layout.teams[role.layer], layout.mixing[role.layer]
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
    from compress.families import family_for_config
    from compress.model_info import meta_model

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


def tiered_card(name: str, plan: TieredPlan, clustering: str, before: int, after) -> str:
    """The converted checkpoint's model card (`after`: its `model_info.ParameterCounts`)."""
    rows = "\n".join(
        f"| {layer} | {len(teams)} | " + "; ".join(
            "+".join(f"{e}×{w:.2f}" for e, w in zip(team, plan.mixing[layer][t].tolist())) for t, team in enumerate(teams)) + " |"
        for layer, teams in sorted(plan.teams.items()))
    return f"""---
base_model: {name}
library_name: transformers
tags: [moe, tiered, moe-compress]
---
# {name}, converted to TieredLightweightMoE

Each MoE layer's experts were grouped into teams of {plan.team_size} co-activating experts
({clustering} clustering on routing statistics); a team's output is the mixing-weighted sum of
its members' outputs, and a router over teams picks {plan.team_top_k} team(s) per token. Team router
rows start as the {ROUTER_INIT}. Parameters: {before:,} → {after.total:,}
({after.active:,} active per token).

**Not evaluated and not distilled**: a converted model loses quality until it is trained with
`compress distill --teacher {name} --student THIS_DIRECTORY ...`.

| layer | teams | members (original expert id × mixing weight) |
|---|---|---|
{rows}

## How to load

```python
import compress
compress.register()  # the tiered model classes; or pass trust_remote_code=True instead
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(PATH)
```
"""
