"""Mixture-of-Experts models with a different number of experts in each layer (moe-compress).

A non-uniform pruning plan keeps, say, 10 experts in one layer and 6 in the next; stock
transformers configs hold one expert count. These classes are the stock ones of each family with
two config fields added:

* ``experts_per_layer``: {decoder layer: kept experts} (the config's own expert count is the
  largest of them);
* ``moe_layout``: where a decoder layer keeps its MoE block, router and experts, and the expert
  dimension of each of their tensors.

After building the stock model, each listed layer's router and experts are cut to its count, so
the checkpoint's tensors load with their real shapes.

This file depends on torch and transformers only: pruned checkpoints carry a copy and name it in
``auto_map``, so they load with ``trust_remote_code=True`` where moe-compress is not installed;
with moe-compress imported, the classes are registered and load without it.
"""

from __future__ import annotations

import torch
from transformers import (
    DeepseekV3Config,
    DeepseekV3ForCausalLM,
    GptOssConfig,
    GptOssForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    OlmoeConfig,
    OlmoeForCausalLM,
    Qwen2MoeConfig,
    Qwen2MoeForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
)

MODEL_TYPE_SUFFIX = "_moe_compress"


def keep_experts(decoder_layer: torch.nn.Module, kept: list[int], layout: dict, top_k: int) -> None:
    """Cut one decoder layer's router and experts to the experts `kept` (original ids, in order)."""
    index = torch.tensor(kept, dtype=torch.long)
    for path, tensors in ((layout["experts"], layout["expert_tensors"]), (layout["router"], layout["router_tensors"])):
        module = decoder_layer.get_submodule(path)
        for name, dim in tensors.items():
            old = getattr(module, name)
            new = old.detach().index_select(dim, index.to(old.device))
            if isinstance(old, torch.nn.Parameter):
                setattr(module, name, torch.nn.Parameter(new, requires_grad=old.requires_grad))
            else:
                module.register_buffer(name, new)
    for path in (layout["moe"], layout["router"], layout["experts"]):
        module = decoder_layer.get_submodule(path)
        if hasattr(module, "num_experts"):
            module.num_experts = len(kept)
        if hasattr(module, "top_k"):
            module.top_k = top_k


class _PerLayerExperts:
    """Mixin: after the stock model is built, cut each layer to ``config.experts_per_layer``."""

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        layers = self.get_submodule(config.moe_layout["layers"])
        for layer, count in config.experts_per_layer.items():
            keep_experts(layers[int(layer)], list(range(count)), config.moe_layout, config.num_experts_per_tok)


class GptOssMoECompressConfig(GptOssConfig):
    model_type = "gpt_oss" + MODEL_TYPE_SUFFIX


class GptOssMoECompressForCausalLM(_PerLayerExperts, GptOssForCausalLM):
    config_class = GptOssMoECompressConfig


class MixtralMoECompressConfig(MixtralConfig):
    model_type = "mixtral" + MODEL_TYPE_SUFFIX


class MixtralMoECompressForCausalLM(_PerLayerExperts, MixtralForCausalLM):
    config_class = MixtralMoECompressConfig


class Qwen2MoeMoECompressConfig(Qwen2MoeConfig):
    model_type = "qwen2_moe" + MODEL_TYPE_SUFFIX


class Qwen2MoeMoECompressForCausalLM(_PerLayerExperts, Qwen2MoeForCausalLM):
    config_class = Qwen2MoeMoECompressConfig


class Qwen3MoeMoECompressConfig(Qwen3MoeConfig):
    model_type = "qwen3_moe" + MODEL_TYPE_SUFFIX


class Qwen3MoeMoECompressForCausalLM(_PerLayerExperts, Qwen3MoeForCausalLM):
    config_class = Qwen3MoeMoECompressConfig


class OlmoeMoECompressConfig(OlmoeConfig):
    model_type = "olmoe" + MODEL_TYPE_SUFFIX


class OlmoeMoECompressForCausalLM(_PerLayerExperts, OlmoeForCausalLM):
    config_class = OlmoeMoECompressConfig


class DeepseekV3MoECompressConfig(DeepseekV3Config):
    model_type = "deepseek_v3" + MODEL_TYPE_SUFFIX


class DeepseekV3MoECompressForCausalLM(_PerLayerExperts, DeepseekV3ForCausalLM):
    config_class = DeepseekV3MoECompressConfig


# base model_type → (config class, causal LM class)
CLASSES = {
    "gpt_oss": (GptOssMoECompressConfig, GptOssMoECompressForCausalLM),
    "mixtral": (MixtralMoECompressConfig, MixtralMoECompressForCausalLM),
    "qwen2_moe": (Qwen2MoeMoECompressConfig, Qwen2MoeMoECompressForCausalLM),
    "qwen3_moe": (Qwen3MoeMoECompressConfig, Qwen3MoeMoECompressForCausalLM),
    "olmoe": (OlmoeMoECompressConfig, OlmoeMoECompressForCausalLM),
    "deepseek_v3": (DeepseekV3MoECompressConfig, DeepseekV3MoECompressForCausalLM),
}


def share_weight_conversions(classes: dict) -> None:
    """Give derived model types the per-expert → fused checkpoint conversions of their base family
    (transformers looks them up by model_type)."""
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping

    for base_type, (config_class, _) in classes.items():
        mapping = get_checkpoint_conversion_mapping(base_type)
        if mapping is not None:
            register_checkpoint_conversion_mapping(config_class.model_type, mapping, overwrite=True)


share_weight_conversions(CLASSES)


def register(classes: dict) -> None:
    """Make `AutoConfig` / `AutoModelForCausalLM` load checkpoints of `classes` ({base model_type:
    (config class, model class)}) without remote code."""
    from transformers import AutoConfig, AutoModelForCausalLM

    for config_class, model_class in classes.values():
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        AutoModelForCausalLM.register(config_class, model_class, exist_ok=True)
