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
    for name, (path, dim) in layout.get("held_router_tensors", {}).items():
        slice_tensors(decoder_layer.get_submodule(path), {name: dim}, kept)
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
        top_k = getattr(config, config.moe_layout.get("top_k_field", "num_experts_per_tok"))
        for layer, count in config.experts_per_layer.items():
            keep_experts(layers[int(layer)], list(range(count)), config.moe_layout, top_k)


def stock_classes(base: str) -> tuple[str, type, type]:
    """(class-name prefix, config class, causal LM class) that transformers ships for model_type
    `base`, read from its Auto mappings: every family transformers knows derives the same way."""
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if base not in CONFIG_MAPPING_NAMES or base not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ValueError(f"transformers {transformers.__version__} has no causal LM for model_type {base!r}")
    config_name, model_name = CONFIG_MAPPING_NAMES[base], MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[base]
    return config_name.removesuffix("Config"), getattr(transformers, config_name), getattr(transformers, model_name)


def derive_classes(namespace: dict, base: str, suffix: str, name: str, mixin: type) -> tuple[type, type]:
    """The config class with model_type ``<base><suffix>`` and the causal LM class with `mixin` in
    front of `base`'s stock classes, named ``<Prefix><name>Config`` / ``<Prefix><name>ForCausalLM``;
    made once and kept in `namespace` (a module's globals, so ``auto_map`` and pickling name them)
    and its ``CLASSES`` {base: (config class, model class)}."""
    if base in namespace["CLASSES"]:
        return namespace["CLASSES"][base]
    prefix, config_base, model_base = stock_classes(base)
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
    namespace["CLASSES"][base] = (config_class, model_class)
    share_weight_conversions(base, config_class)
    return config_class, model_class


def derived_attribute(namespace: dict, attribute: str, name: str, classes_for) -> type:
    """A module ``__getattr__``: the class `attribute` (``<Prefix><name>Config`` or
    ``<Prefix><name>ForCausalLM``, as ``auto_map`` or a pickle names it), derived on first use."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    for ending in ("Config", "ForCausalLM"):
        if attribute.endswith(name + ending):
            prefix = attribute[: -len(name + ending)]
            for base, config_name in CONFIG_MAPPING_NAMES.items():
                if config_name == prefix + "Config":
                    classes_for(base)
                    return namespace[attribute]
    raise AttributeError(f"module {namespace['__name__']!r} has no attribute {attribute!r}")


# base model_type → (config class, causal LM class), e.g. GptOssMoECompressConfig, GptOssMoECompressForCausalLM;
# filled as families are used (`classes_for`, or a class named by auto_map).
CLASSES: dict[str, tuple[type, type]] = {}


def classes_for(base: str) -> tuple[type, type]:
    return derive_classes(globals(), base, MODEL_TYPE_SUFFIX, "MoECompress", _PerLayerExperts)


def __getattr__(attribute: str):
    return derived_attribute(globals(), attribute, "MoECompress", classes_for)


def share_weight_conversions(base: str, config_class: type) -> None:
    """Give a derived model type the per-expert → fused checkpoint conversions of its base family
    (transformers looks them up by model_type)."""
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping

    mapping = get_checkpoint_conversion_mapping(base)
    if mapping is not None:
        register_checkpoint_conversion_mapping(config_class.model_type, mapping, overwrite=True)


def register(classes: dict) -> None:
    """Make `AutoConfig` / `AutoModelForCausalLM` load checkpoints of `classes` ({base model_type:
    (config class, model class)}) without remote code."""
    from transformers import AutoConfig, AutoModelForCausalLM

    for config_class, model_class in classes.values():
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        AutoModelForCausalLM.register(config_class, model_class, exist_ok=True)
