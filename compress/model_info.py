"""What a MoE checkpoint is: structure from its config, sizes from a meta-device model, format from
its safetensors headers. No weights are read, so this is instant even for gpt-oss-120b.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import asdict, dataclass, field

import torch

from .families import MoEFamily, family_for_config
from .families.derived import split_model_type


@dataclass
class ParameterCounts:
    """Parameter counts of a model. Active = what one token uses: everything except the routed
    experts, plus top-k of E experts in each MoE layer. ``active_excluding_embeddings`` also leaves
    out the input embedding table (a lookup, not compute), the convention of OpenAI's "3.6B active"
    for gpt-oss-20b."""

    total: int
    routed_experts: int
    shared_experts: int
    active: int
    active_excluding_embeddings: int


@dataclass
class ModelInfo:
    name: str
    path: str
    family: str
    model_type: str
    architectures: list[str]
    num_layers: int
    moe_layers: list[int]
    experts_per_layer: dict[int, int]
    top_k: int
    shared_experts_per_layer: int
    parameters: ParameterCounts
    key_layout: str  # "fused", "per_expert" or "mxfp4"
    mxfp4: bool
    shards: int
    checkpoint_bytes: int
    tensor_dtypes: dict[str, int] = field(default_factory=dict)  # safetensors dtype → tensor count

    def to_dict(self) -> dict:
        return asdict(self)


def meta_model(config):
    """The transformers model for `config`, on the meta device (shapes only, no memory)."""
    from transformers import AutoModelForCausalLM

    from .model_loading import prepare_transformers

    prepare_transformers(config.model_type)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


# Config fields that say how a model was loaded or called, not what it is.
_LOAD_TIME_CONFIG_FIELDS = (
    "_name_or_path", "dtype", "torch_dtype", "transformers_version", "quantization_config", "use_cache",
    "output_attentions", "output_hidden_states", "output_router_logits", "return_dict", "_experts_implementation",
)


def model_fingerprint(model) -> str:
    """Identity of a model's architecture: a hash of its config plus every MoE layer's expert shapes.

    The same checkpoint gives the same fingerprint whatever dtype or device it is loaded with (a
    meta-device model from `meta_model` included); a pruned copy gives a different one.
    """
    family = family_for_config(model.config)
    config = {key: value for key, value in model.config.to_dict().items() if key not in _LOAD_TIME_CONFIG_FIELDS}
    shapes = {
        layer: {name: list(tensor.shape) for name, tensor in family.expert_tensors_of(family.experts(model, layer)).items()}
        for layer in family.moe_layer_indices(model)
    }
    blob = json.dumps({"config": config, "expert_shapes": shapes}, sort_keys=True, default=str)
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()[:16]


def count_parameters(model, family: MoEFamily, config) -> ParameterCounts:
    total = sum(p.numel() for p in model.parameters())
    routed = active_routed = shared = 0
    top_k = family.top_k(config)
    for layer in family.moe_layer_indices(model):
        experts = family.experts(model, layer)
        layer_params = sum(p.numel() for p in experts.parameters())
        num_experts = family.num_experts_in(experts)
        routed += layer_params
        active_routed += layer_params * min(top_k, num_experts) // num_experts
        shared += sum(p.numel() for module in family.shared_expert_modules(model, layer) for p in module.parameters())
    active = total - routed + active_routed
    embeddings = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    tied = output is not None and output.weight is embeddings
    return ParameterCounts(total, routed, shared, active, active - (0 if tied else embeddings.numel()))


def describe(source) -> ModelInfo:
    """Structure, sizes and format of an opened `jobs.SourceModel` (nothing is read again)."""
    family, reader = source.family, source.reader
    return ModelInfo(
        name=source.name,
        path=str(source.path),
        family=split_model_type(source.raw_config.get("model_type") or family.name)[0],  # glm4_moe, not the adapter it shares
        model_type=source.raw_config.get("model_type"),
        architectures=source.raw_config.get("architectures") or [],
        num_layers=len(family.decoder_layers(source.meta)),
        moe_layers=source.moe_layers,
        experts_per_layer=source.experts_per_layer,
        top_k=source.top_k,
        shared_experts_per_layer=family.shared_expert_count(source.config),
        parameters=count_parameters(source.meta, family, source.config),
        key_layout=source.layout.name,
        mxfp4=source.layout.name == "mxfp4",
        shards=len(reader.files),
        checkpoint_bytes=reader.total_bytes,
        tensor_dtypes=dict(sorted(Counter(entry.dtype for entry in reader.entries.values()).items())),
    )
