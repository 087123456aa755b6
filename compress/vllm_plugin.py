"""vLLM serves moe-compress checkpoints with a different number of experts in each layer.

vLLM's model classes build every MoE layer with the config's one expert count. With moe-compress
installed beside vLLM (``pip install --no-deps moe-compress`` in vLLM's venv: vLLM pins an older
transformers than pruning needs), this module is a vLLM general plugin (entry point
``vllm.general_plugins``) that every vLLM process loads; it registers, for each supported family,
the architecture our per-layer checkpoints name (``GptOssMoECompressForCausalLM``, ...): vLLM's own
class for the family, built and loaded one decoder layer at a time with the config's expert count
set to that layer's count (``experts_per_layer``). Nothing else changes, so these models run with
vLLM's own kernels, quantisation (MXFP4 included) and attention, and need no ``trust_remote_code``.

vLLM reads the model type for family-specific behaviour (gpt-oss's MXFP4 method and Harmony chat
format, DeepSeek's MLA attention), so the config it sees reports the base family's model type.
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import logging
import re

# base model_type → (vLLM model module, vLLM causal-LM class)
VLLM_CLASSES = {
    "gpt_oss": ("gpt_oss", "GptOssForCausalLM"),
    "mixtral": ("mixtral", "MixtralForCausalLM"),
    "qwen2_moe": ("qwen2_moe", "Qwen2MoeForCausalLM"),
    "qwen3_moe": ("qwen3_moe", "Qwen3MoeForCausalLM"),
    "olmoe": ("olmoe", "OlmoeForCausalLM"),
    "deepseek_v3": ("deepseek_v2", "DeepseekV3ForCausalLM"),
}
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def _per_layer_classes() -> dict[str, tuple[type, type]]:
    from .models import modeling_moe_compress

    return {base: modeling_moe_compress.classes_for(base) for base in VLLM_CLASSES}


def register() -> None:
    """The plugin's entry point. vLLM calls it in every process and lets its exceptions through, so
    a failure here is logged and leaves vLLM serving every other model."""
    try:
        _register()
    except Exception as exc:  # e.g. a vLLM release that moved what this module reaches for
        logging.getLogger(__name__).warning("moe-compress could not register its per-layer architectures with vLLM "
                                            "(%s: %s); per-layer checkpoints will not load", type(exc).__name__, exc)


def _register() -> None:
    """Our per-layer config classes for transformers' AutoConfig (as vLLM sees them) and our
    architectures for vLLM's model registry (their modules imported only when a model uses them)."""
    from transformers import AutoConfig
    from vllm import ModelRegistry
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP

    for base, (config_class, model_class) in _per_layer_classes().items():
        AutoConfig.register(config_class.model_type, __getattr__(config_class.__name__), exist_ok=True)
        name = model_class.__name__
        ModelRegistry.register_model(name, f"{__name__}:{name}")
        stock = VLLM_CLASSES[base][1]
        if stock in MODELS_CONFIG_MAP:  # e.g. gpt-oss: the checkpoint's "mxfp4" → vLLM's gpt-oss MXFP4 method
            MODELS_CONFIG_MAP[name] = MODELS_CONFIG_MAP[stock]


def _config_seen_by_vllm(config_class: type, base: str) -> type:
    """`config_class` whose instances report the base family's model type (the class keeps ours,
    so AutoConfig still finds it by the checkpoint's model_type)."""

    def __init__(self, *args, **kwargs):
        config_class.__init__(self, *args, **kwargs)
        self.model_type = base

    return type(config_class.__name__, (config_class,), {"__init__": __init__, "__module__": __name__})


def __getattr__(name: str):
    """The classes this module names, built on first use: ``<Name>ForCausalLM`` (vLLM's registry
    imports ``compress.vllm_plugin:<Name>ForCausalLM``) and ``<Name>Config`` (vLLM pickles configs
    to its engine process, by reference to this module)."""
    for base, (config_class, model_class) in _per_layer_classes().items():
        if name in (config_class.__name__, model_class.__name__):
            built = (_config_seen_by_vllm(config_class, base) if name == config_class.__name__
                     else _vllm_per_layer_class(base, name))
            globals()[name] = built
            return built
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@contextlib.contextmanager
def _expert_count(config, fields: tuple[str, ...], count: int | None):
    """The config's expert count set to `count` (every alias field the config has) while inside."""
    if count is None:
        yield
        return
    saved = {field: getattr(config, field) for field in fields if hasattr(config, field)}
    try:
        for field in saved:
            setattr(config, field, count)
        yield
    finally:
        for field, value in saved.items():
            setattr(config, field, value)


def _layer_of(name: str) -> int | None:
    match = _LAYER.search(name)
    return int(match.group(1)) if match else None


def _vllm_per_layer_class(base: str, name: str) -> type:
    from .families import get_family

    module_name, class_name = VLLM_CLASSES[base]
    module = importlib.import_module(f"vllm.model_executor.models.{module_name}")
    stock = getattr(module, class_name)
    fields = get_family(base).num_experts_fields

    def counts(config) -> dict[int, int]:
        return {int(layer): int(count) for layer, count in (getattr(config, "experts_per_layer", None) or {}).items()}

    def __init__(self, *, vllm_config, prefix: str = ""):
        config = vllm_config.model_config.hf_config
        per_layer = counts(config)
        make_layers = module.make_layers

        # vLLM passes both prefixes by keyword: the stack's ("model.layers") and each layer's ("model.layers.3")
        def make_layers_per_layer(num_layers, layer_fn, prefix, *args, **kwargs):
            def build(prefix):
                with _expert_count(config, fields, per_layer.get(_layer_of(prefix + "."))):
                    return layer_fn(prefix=prefix)
            return make_layers(num_layers, build, prefix, *args, **kwargs)

        module.make_layers = make_layers_per_layer  # the family's module calls it by this name
        try:
            stock.__init__(self, vllm_config=vllm_config, prefix=prefix)
        finally:
            module.make_layers = make_layers

    def load_weights(self, weights):
        """Each decoder layer's weights loaded with its own expert count (loaders reshape by it)."""
        per_layer, loaded = counts(self.config), set()
        for layer, group in itertools.groupby(weights, key=lambda item: _layer_of(item[0])):
            with _expert_count(self.config, fields, per_layer.get(layer)):
                loaded |= set(stock.load_weights(self, group) or ())
        return loaded

    return type(name, (stock,), {"__init__": __init__, "load_weights": load_weights, "__module__": __name__,
                                 "__qualname__": name})
