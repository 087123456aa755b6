"""Applying a `PrunePlan`: to a loaded model (quick evaluation) or to a checkpoint on disk (streaming).

On disk, every tensor of the source is declared first, then streamed one at a time through
`CheckpointReader` → `ShardedCheckpointWriter` inside an atomic output directory:

* fused expert tensors (plain or MXFP4 ``_blocks`` / ``_scales``, biases) and router tensors
  (weight, bias, DeepSeek's ``e_score_correction_bias``) of a planned layer are sliced along their
  expert dimension, reading only the kept rows: MXFP4 bytes are copied, never re-quantised;
* per-expert keys (``experts.{e}.…``) of kept experts are renamed to their new ids 0..N-1, the
  others dropped, so the source's key convention is kept;
* everything else (attention, shared experts, norms, embeddings) is copied unchanged.

Layers past the decoder stack (DeepSeek-V3's multi-token-prediction layer ``model.layers.61``) are
dropped whole: transformers does not load them, and with their experts unpruned they would no
longer match the config.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from ..checkpoint.dtypes import TORCH_DTYPES
from ..checkpoint.files import copy_support_files, write_config
from ..checkpoint.reader import CheckpointReader
from ..checkpoint.tensor_plan import CheckpointPlan, TensorCopy, write_tensors
from ..checkpoint.writer import DEFAULT_MAX_SHARD_BYTES, TensorSpec
from ..errors import CompressError
from ..families import MoEFamily, family_for_config
from ..families.derived import MODELING_FILES, PER_LAYER, TIERED, split_model_type
from ..models import modeling_moe_compress, modeling_tiered_moe
from .plan import PrunePlan

# Fields only the project's per-layer classes read; a plan that ends uniform drops them again.
PER_LAYER_FIELDS = ("experts_per_layer", "moe_layout", "auto_map")


def apply_plan_to_model(model, plan: PrunePlan) -> None:
    """Prune a loaded model in place: slice each planned layer's experts and router (a tiered
    model's teams), update the config."""
    family = family_for_config(model.config)
    layers = family.decoder_layers(model)
    if plan.teams is not None:
        tiered = model.config.tiered_layers
        team_top_k = min(model.config.team_top_k, min(len(kept) for kept in plan.teams.values()))
        for layer, kept in plan.teams.items():
            modeling_tiered_moe.keep_teams(layers[layer], kept, tiered[str(layer)]["team_size"], family.moe_layout, team_top_k)
        model.config.tiered_layers = _kept_tiers(tiered, plan)
        model.config.team_top_k = team_top_k
    else:
        for layer, kept in plan.layers.items():
            modeling_moe_compress.keep_experts(layers[layer], kept, family.moe_layout, plan.top_k)
    set_config_counts(model, family, plan)


def set_config_counts(model, family: MoEFamily, plan) -> None:
    """A loaded model's config after `plan` (a prune or merge plan): expert counts (per layer when
    non-uniform; a tiered model's per-layer counts are its `tiered_layers`) and top-k."""
    if getattr(model.config, "tiered_layers", None) is None and not plan.uniform:
        model.config.experts_per_layer = {str(layer): count for layer, count in plan.experts_per_layer.items()}
        model.config.moe_layout = family.moe_layout
    for name in family.num_experts_fields:
        if getattr(model.config, name, None) is not None:
            setattr(model.config, name, max(plan.experts_per_layer.values()))
    for name in family.top_k_fields:
        setattr(model.config, name, plan.top_k)


def _kept_tiers(tiered_layers: dict, plan: PrunePlan) -> dict:
    return {str(layer): {**tiered_layers[str(layer)], "teams": len(kept)} for layer, kept in sorted(plan.teams.items())}


def pruned_config(config: dict, family: MoEFamily, plan: PrunePlan) -> dict:
    """config.json of the pruned checkpoint: counts and top-k rewritten (every alias). A non-uniform
    plan uses the project's per-layer model classes; a uniform one of a per-layer source goes back
    to the stock classes; a tiered source stays tiered with the kept teams."""
    base, kind = split_model_type(config["model_type"])
    config = family.rewrite_config(config, num_experts=max(plan.experts_per_layer.values()), top_k=plan.top_k)
    if kind == TIERED:
        team_top_k = min(config["team_top_k"], min(len(kept) for kept in plan.teams.values()))
        return {**config, "tiered_layers": _kept_tiers(config["tiered_layers"], plan), "team_top_k": team_top_k}
    config = {key: value for key, value in config.items() if key not in PER_LAYER_FIELDS}
    if plan.uniform:
        stock_model_class = modeling_moe_compress.stock_classes(base)[2]
        return {**config, "model_type": base, "architectures": [stock_model_class.__name__]} if kind == PER_LAYER else config
    config_class, model_class = modeling_moe_compress.classes_for(base)
    module = MODELING_FILES[PER_LAYER].removesuffix(".py")
    config.update({
        "model_type": config_class.model_type,
        "architectures": [model_class.__name__],
        "auto_map": {"AutoConfig": f"{module}.{config_class.__name__}", "AutoModelForCausalLM": f"{module}.{model_class.__name__}"},
        "experts_per_layer": {str(layer): count for layer, count in sorted(plan.experts_per_layer.items())},
        "moe_layout": family.moe_layout,
    })
    return config


def plan_tensors(reader: CheckpointReader, family: MoEFamily, plan: PrunePlan, num_layers: int) -> CheckpointPlan:
    result = CheckpointPlan()
    per_expert = family.layouts.get("per_expert")
    new_ids = {layer: {old: new for new, old in enumerate(kept)} for layer, kept in plan.layers.items()}
    for key in stack_keys(reader, family, num_layers, result.dropped_keys):
        entry = reader.entries[key]
        role = family.classify_key(key)
        shape = list(entry.shape)
        copy = TensorCopy(key, key)
        if role.kind != "other" and role.layer not in plan.layers:
            raise CompressError(f"{key} holds experts of layer {role.layer}, which the plan does not cover")
        team_layer = _team_router_layer(key, family, plan)
        if team_layer is not None:  # a tiered layer's router rows are teams, not experts
            copy.experts, copy.dim = plan.teams[team_layer], 0
            shape[0] = len(copy.experts)
        elif role.kind in ("experts", "router"):
            copy.experts, copy.dim = plan.layers[role.layer], role.expert_dim
            shape[role.expert_dim] = len(copy.experts)
        elif role.kind == "expert":
            if role.expert not in new_ids[role.layer]:
                result.dropped_keys.append(key)
                continue
            copy.new_key = per_expert.expert_prefix.format(layer=role.layer, expert=new_ids[role.layer][role.expert]) + role.suffix
        result.copies.append(copy)
        result.specs.append(TensorSpec(copy.new_key, TORCH_DTYPES[entry.dtype], tuple(shape)))
    return result


def stack_keys(reader: CheckpointReader, family: MoEFamily, num_layers: int, dropped: list[str]):
    """The source's keys, but those of layers past the decoder stack (added to `dropped`)."""
    layer_of = re.compile(re.escape(family.modules["layers"]) + r"\.(\d+)\.")
    for key in reader.keys():
        layer = layer_of.match(key)
        if layer and int(layer[1]) >= num_layers:
            dropped.append(key)
        else:
            yield key


def _team_router_layer(key: str, family: MoEFamily, plan: PrunePlan) -> int | None:
    """The layer whose team router holds `key` (weight, bias, mixing), for team plans; else None."""
    if plan.teams is None:
        return None
    router = re.escape(family.modules["layers"]) + r"\.(\d+)\." + re.escape(family.modules["router"]) + r"\.(weight|bias|mixing)$"
    match = re.match(router, key)
    return int(match[1]) if match and int(match[1]) in plan.teams else None


def write_pruned_checkpoint(
    source, staging: str | Path, plan: PrunePlan, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, progress: bool = False,
) -> CheckpointPlan:
    """Write the pruned weights, config and support files of `source` (an opened `jobs.SourceModel`,
    whose config, headers and family are reused) into `staging` (a claimed output's staging
    directory), with a progress bar in bytes when `progress`."""
    staging = Path(staging)
    config, family, reader = source.raw_config, source.family, source.reader
    tensors = plan_tensors(reader, family, plan, int(config.get("num_hidden_layers") or 0))
    write_tensors(reader, staging, tensors, max_shard_bytes, progress)
    written = pruned_config(config, family, plan)
    write_config(staging, written)
    copy_modeling_files(source.path, staging, written)
    return tensors


def copy_modeling_files(source: Path, staging: Path, config: dict) -> None:
    """Tokenizer and other support files of `source`, plus the model code a derived `config` names
    in ``auto_map`` (for ``trust_remote_code`` where moe-compress is not installed)."""
    copy_support_files(source, staging)
    _, kind = split_model_type(config["model_type"])
    for module in {PER_LAYER: [modeling_moe_compress], TIERED: [modeling_moe_compress, modeling_tiered_moe]}.get(kind, []):
        shutil.copyfile(module.__file__, staging / Path(module.__file__).name)


