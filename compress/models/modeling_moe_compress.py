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


def slice_tensors(module: torch.nn.Module, tensors: dict, index: list[int]) -> None:
    """Keep rows `index` (in that order) of each tensor {name: dim} of `module` along its dim."""
    index = torch.tensor(index, dtype=torch.long)
    for name, dim in tensors.items():
        old = getattr(module, name)
        if old is None:
            continue
        new = old.detach().index_select(dim, index.to(old.device))
        if isinstance(old, torch.nn.Parameter):
            setattr(module, name, torch.nn.Parameter(new, requires_grad=old.requires_grad))
        else:
            module.register_buffer(name, new)


def keep_experts(decoder_layer: torch.nn.Module, kept: list[int], layout: dict, top_k: int) -> None:
    """Cut one decoder layer's router and experts to the experts `kept` (original ids, in order)."""
    slice_tensors(decoder_layer.get_submodule(layout["experts"]), layout["expert_tensors"], kept)
    slice_tensors(decoder_layer.get_submodule(layout["router"]), layout["router_tensors"], kept)
    set_counts(decoder_layer, layout, len(kept), top_k)


def set_counts(decoder_layer: torch.nn.Module, layout: dict, num_experts: int, top_k: int) -> None:
    """The expert count and top-k that the MoE block, router and experts modules keep as attributes."""
    for path in (layout["moe"], layout["router"], layout["experts"]):
        module = decoder_layer.get_submodule(path)
        if hasattr(module, "num_experts"):
            module.num_experts = num_experts
        if hasattr(module, "top_k"):
            module.top_k = top_k


class _PerLayerExperts:
    """Mixin: after the stock model is built, cut each layer to ``config.experts_per_layer``."""

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        layers = self.get_submodule(config.moe_layout["layers"])
        for layer, count in config.experts_per_layer.items():
            keep_experts(layers[int(layer)], list(range(count)), config.moe_layout, config.num_experts_per_tok)


# The stock classes every derived family starts from: base model_type → (class-name prefix, config
# class, causal LM class). Both model files derive their classes from this one table.
BASES = {
    "gpt_oss": ("GptOss", GptOssConfig, GptOssForCausalLM),
    "mixtral": ("Mixtral", MixtralConfig, MixtralForCausalLM),
    "qwen2_moe": ("Qwen2Moe", Qwen2MoeConfig, Qwen2MoeForCausalLM),
    "qwen3_moe": ("Qwen3Moe", Qwen3MoeConfig, Qwen3MoeForCausalLM),
    "olmoe": ("Olmoe", OlmoeConfig, OlmoeForCausalLM),
    "deepseek_v3": ("DeepseekV3", DeepseekV3Config, DeepseekV3ForCausalLM),
}


def derive_classes(namespace: dict, bases: list[str], suffix: str, name: str, mixin: type) -> dict:
    """For each base family, a config class with model_type ``<base><suffix>`` and a causal LM
    class with `mixin` in front, named ``<Prefix><name>Config`` / ``<Prefix><name>ForCausalLM`` and
    placed in `namespace` (a module's globals, so ``auto_map`` can name them)."""
    classes = {}
    for base in bases:
        prefix, config_base, model_base = BASES[base]
        config_name, model_name = f"{prefix}{name}Config", f"{prefix}{name}ForCausalLM"
        module = namespace["__name__"]
        config_class = type(config_name, (config_base,), {"model_type": base + suffix, "__module__": module, "__qualname__": config_name})
        # transformers lets a class switch experts implementations (set_experts_implementation: the
        # profiler, the kernels) only when its module's source mentions the stock experts decorator,
        # cached per class; ours keep the stock experts modules but live in this file, so they say so.
        model_class = type(model_name, (mixin, model_base),
                           {"config_class": config_class, "__module__": module, "__qualname__": model_name,
                            "_can_set_experts_implementation_cached_value": True})
        namespace[config_name], namespace[model_name] = config_class, model_class
        classes[base] = (config_class, model_class)
    return classes


# base model_type → (config class, causal LM class): GptOssMoECompressConfig, GptOssMoECompressForCausalLM, ...
CLASSES = derive_classes(globals(), list(BASES), MODEL_TYPE_SUFFIX, "MoECompress", _PerLayerExperts)


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
