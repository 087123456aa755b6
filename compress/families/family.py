"""`MoEFamily`: what one architecture family looks like, read from its JSON definition.

A definition (``definitions/<name>.json``) says, as data:

* ``config``: which config fields hold the expert count and top-k (all aliases, first found wins
  when reading; every alias present is rewritten when the count changes);
* ``routing``: the routing function (see `routing.py`) and its options;
* ``modules``: where the layers, the MoE block, router, fused experts and shared experts live in
  the transformers model;
* ``router_tensors`` / ``expert_tensors``: the router's and fused experts' tensors and which
  dimension is the expert dimension; ``"buffer": true`` marks router state the routing function
  reads, ``"module"`` a tensor held by another module than the router (MiniMax-M2's MoE block);
* ``checkpoint_layouts``: the on-disk key conventions. ``fused`` and ``mxfp4`` keep one tensor per
  layer with the experts along ``expert_dim``; ``per_expert`` (what ``save_pretrained`` writes for
  Mixtral, Qwen, OLMoE and DeepSeek) has one key per expert, the id in the name. ``module_tensors``
  says how the module's fused tensors are assembled from the keys: a name (fused), a list of names
  concatenated on dim 0 for each expert (per-expert), or ``{"mxfp4": base}`` (``base_blocks`` +
  ``base_scales``, dequantised and transposed to the module orientation). ``router_keys`` names
  router tensors stored away from the router's prefix (EXAONE-MoE's correction bias).

Everything else in the toolkit is generic over this description.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch

from ..checkpoint import fp8, mxfp4
from ..checkpoint.reader import CheckpointReader
from ..errors import CheckpointError, UnsupportedModelError
from .routing import GROUPED, ROUTING_DISTRIBUTIONS, ROUTING_FUNCTIONS, sigmoid_scores

# What every family definition (`definitions/*.json`) holds.
DEFINITION_KEYS = ("name", "description", "model_types", "config", "routing", "modules", "router_tensors", "expert_tensors",
                   "checkpoint_layouts")


@dataclass(frozen=True)
class KeyRole:
    """What one on-disk key is to the MoE structure.

    kind: ``"experts"`` (fused tensor, experts along `expert_dim`), ``"expert"`` (one expert's
    tensor, id `expert`), ``"router"`` (router tensor, experts along `expert_dim`) or ``"other"``.
    """

    kind: str
    layer: int | None = None
    expert: int | None = None
    expert_dim: int | None = None
    suffix: str | None = None


def config_value(config, name: str):
    """A field of a transformers config object or of a raw config.json dict (None when absent)."""
    return config.get(name) if isinstance(config, dict) else getattr(config, name, None)


def available_model_types(model_types) -> tuple[str, ...]:
    """The `model_types` the installed transformers has a causal LM for, read from the names in its
    Auto mappings (as `modeling_moe_compress.stock_classes` does), so no model code is imported."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return tuple(model_type for model_type in model_types
                 if model_type in CONFIG_MAPPING_NAMES and model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def _has_submodule(module: torch.nn.Module, name: str) -> bool:
    try:
        module.get_submodule(name)
    except AttributeError:
        return False
    return True


def _aliases(fields: str | list[str] | None) -> tuple[str, ...] | None:
    return None if fields is None else (fields,) if isinstance(fields, str) else tuple(fields)


def _template_regex(template: str, suffix: bool = True) -> re.Pattern:
    """A key template's pattern: a prefix followed by a tensor name (`suffix`), or the whole key."""
    pattern = re.escape(template).replace(r"\{layer\}", r"(?P<layer>\d+)").replace(r"\{expert\}", r"(?P<expert>\d+)")
    return re.compile(pattern + (r"(?P<suffix>.+)$" if suffix else "$"))


@dataclass(frozen=True)
class CheckpointLayout:
    name: str
    module_tensors: dict[str, Any]
    router_prefix: str
    experts_prefix: str | None = None  # fused / mxfp4
    expert_prefix: str | None = None  # per_expert
    expert_dim: int | None = None
    # Router tensors stored away from `router_prefix` ({name: key template}): EXAONE-MoE keeps its
    # router's correction bias as ``mlp.e_score_correction_bias`` and transformers moves it at load.
    router_keys: dict[str, str] = field(default_factory=dict)

    @property
    def per_expert(self) -> bool:
        return self.expert_prefix is not None

    def router_key(self, layer: int, name: str) -> str:
        """The on-disk key of router tensor `name` of MoE layer `layer`."""
        return self.router_keys[name].format(layer=layer) if name in self.router_keys else self.router_prefix.format(layer=layer) + name

    def probe_keys(self, layer: int) -> list[str]:
        """Keys that exist in a checkpoint of this layout (for expert 0 of `layer`)."""
        keys = []
        for spec in self.module_tensors.values():
            if isinstance(spec, dict):
                base = self.experts_prefix.format(layer=layer) + spec["mxfp4"]
                keys += [base + "_blocks", base + "_scales"]
            elif isinstance(spec, list):
                keys += [self.expert_prefix.format(layer=layer, expert=0) + name for name in spec]
            else:
                keys.append(self.experts_prefix.format(layer=layer) + spec)
        return keys


@dataclass(frozen=True)
class MoEFamily:
    name: str
    description: str
    model_types: tuple[str, ...]
    num_experts_fields: tuple[str, ...]
    top_k_fields: tuple[str, ...]
    shared_experts_fields: tuple[str, ...] | None  # aliases of the shared-expert count; None: one when the modules exist
    # Fields the family's published config.json files carry and engines read (vLLM takes DeepSeek-V3's
    # routing from topk_method / scoring_func), which configs saved by transformers 5 lack.
    engine_fields: dict[str, Any]
    routing: dict[str, Any]
    modules: dict[str, Any]
    router_tensors: dict[str, dict]
    expert_tensors: dict[str, dict]
    layouts: dict[str, CheckpointLayout]
    _key_patterns: list = field(default_factory=list, compare=False, repr=False)

    @classmethod
    def from_definition(cls, data: dict) -> MoEFamily:
        """The family a definition (`definitions/*.json`) describes, refused in one line when
        incomplete: a missing key, a routing function that does not exist, or no model type the
        installed transformers has a causal LM for (the derived model classes start from its stock
        ones). Model types an older transformers lacks (vLLM pins its own) are left out."""
        import transformers

        name = data.get("name", "?")
        missing = [key for key in DEFINITION_KEYS if key not in data]
        missing += [f"config.{key}" for key in ("num_experts", "top_k") if key not in data.get("config", {})]
        if missing:
            raise UnsupportedModelError(f"the family definition {name!r} lacks {', '.join(missing)}: see families/definitions/*.json")
        if data["routing"].get("function") not in ROUTING_FUNCTIONS:
            raise UnsupportedModelError(f"the family definition {name!r} names routing function {data['routing'].get('function')!r}; "
                                        f"families/routing.py has {', '.join(ROUTING_FUNCTIONS)}")
        model_types = available_model_types(data["model_types"])
        if not model_types:
            raise UnsupportedModelError(f"the family definition {name!r}: transformers {transformers.__version__} has no causal LM "
                                        f"for any of its model types ({', '.join(data['model_types'])})")
        layouts = {name: CheckpointLayout(name=name, **spec) for name, spec in data["checkpoint_layouts"].items()}
        family = cls(
            name=data["name"],
            description=data["description"],
            model_types=model_types,
            num_experts_fields=tuple(data["config"]["num_experts"]),
            top_k_fields=tuple(data["config"]["top_k"]),
            shared_experts_fields=_aliases(data["config"].get("shared_experts")),
            engine_fields=data["config"].get("engine_fields", {}),
            routing=data["routing"],
            modules=data["modules"],
            router_tensors=data["router_tensors"],
            expert_tensors=data["expert_tensors"],
            layouts=layouts,
        )
        for layout in layouts.values():  # router keys stored elsewhere first: they may sit under the experts' prefix
            for name, template in layout.router_keys.items():
                family._key_patterns.append((layout, "router:" + name, _template_regex(template, suffix=False)))
        for layout in layouts.values():
            family._key_patterns.append((layout, "router", _template_regex(layout.router_prefix)))
            if layout.per_expert:
                family._key_patterns.append((layout, "expert", _template_regex(layout.expert_prefix)))
            else:
                family._key_patterns.append((layout, "experts", _template_regex(layout.experts_prefix)))
        return family

    # --- config ----------------------------------------------------------------------------------
    def _first_field(self, config, fields: tuple[str, ...]):
        for name in fields:
            value = config_value(config, name)
            if value is not None:
                return value
        raise CheckpointError(f"the {self.name} config has none of the fields {', '.join(fields)}")

    def num_experts(self, config) -> int:
        return int(self._first_field(config, self.num_experts_fields))

    def top_k(self, config) -> int:
        return int(self._first_field(config, self.top_k_fields))

    def shared_expert_count(self, config) -> int:
        if not self.modules["shared_experts"]:
            return 0
        if self.shared_experts_fields is None:
            return 1
        return int(next((value for name in self.shared_experts_fields if (value := config_value(config, name)) is not None), 0))

    def experts_per_layer(self, config, moe_layers: list[int]) -> dict[int, int]:
        """Experts in each MoE layer: the config's count, a non-uniform model's per-layer counts, or a
        tiered model's teams × team size."""
        per_layer = config_value(config, "experts_per_layer")
        if per_layer:
            return {int(layer): int(count) for layer, count in per_layer.items()}
        tiered = config_value(config, "tiered_layers")
        if tiered:
            return {int(layer): int(spec["teams"]) * int(spec["team_size"]) for layer, spec in tiered.items()}
        return {layer: self.num_experts(config) for layer in moe_layers}

    def routing_groups(self, config) -> int:
        """Expert groups of group-limited routing (DeepSeek-V3's ``n_group``); 1 when routing is not grouped."""
        if self.routing["function"] not in GROUPED:
            return 1
        if self.routing["function"] == "softmax_group_topk" and config_value(config, "topk_method") != "group_limited_greedy":
            return 1
        return int(config_value(config, "n_group") or 1)

    def rewrite_config(self, config: dict, num_experts: int | None = None, top_k: int | None = None) -> dict:
        """A copy of a raw config.json dict with every alias of the expert count and top-k rewritten.

        Engines that read config.json themselves (mlx-lm, llama.cpp's converter) look for the
        family's own field names at the top level, which configs saved by transformers 5 can lack:
        the family's first (canonical) count field is always written (Qwen3-MoE's ``num_experts``,
        which transformers 5 saves as ``num_local_experts``), ``rope_theta`` is repeated from
        ``rope_parameters`` (without it mlx-lm silently uses its own default), and the family's
        `engine_fields` are added where missing (vLLM routes DeepSeek-V3 by softmax without them)."""
        config = {**self.engine_fields, **config}
        for fields, value in ((self.num_experts_fields, num_experts), (self.top_k_fields, top_k)):
            if value is None:
                continue
            for name in dict.fromkeys([fields[0], *(name for name in fields if name in config)]):
                config[name] = value
        rope = config.get("rope_parameters")
        if "rope_theta" not in config and isinstance(rope, dict) and "rope_theta" in rope:
            config["rope_theta"] = rope["rope_theta"]
        return config

    # --- routing ---------------------------------------------------------------------------------
    def route(self, logits: torch.Tensor, config, router_buffers: dict | None = None, top_k: int | None = None):
        """(top-k weights, top-k expert ids) from raw router logits [T, E], as the family's router
        computes them (with `top_k` experts per token instead of the config's when given)."""
        options = {k: v for k, v in self.routing.items() if k != "function"}
        return ROUTING_FUNCTIONS[self.routing["function"]](logits, config, router_buffers or {}, top_k or self.top_k(config),
                                                           **options)

    def routing_is_local(self, config) -> bool:
        """Whether removing an expert a token did not choose leaves that token's routing (choice and
        weights) unchanged: false for a softmax over all experts without renormalisation (Qwen-MoE
        and OLMoE with ``norm_topk_prob`` off) and for group-limited routing (a group's score may drop)."""
        if self.routing_groups(config) > 1:
            return False
        if self.routing["function"] == "softmax_group_topk":
            return False  # a softmax over every expert, never renormalised
        if self.routing["function"] != "softmax_then_topk":
            return True
        renormalize = self.routing["renormalize"]
        return bool(getattr(config, renormalize, False)) if isinstance(renormalize, str) else bool(renormalize)

    def sigmoid_scores(self, config) -> bool:
        """Whether the router scores each expert by the sigmoid of its logit (DeepSeek-V3 and kin), not a softmax."""
        return sigmoid_scores(self.routing["function"], config)

    def routing_distribution(self, logits: torch.Tensor) -> torch.Tensor:
        """The router's preference over all experts [T, E] from raw logits (rows sum to 1)."""
        return ROUTING_DISTRIBUTIONS[self.routing["function"]](logits)

    # --- in-memory modules -----------------------------------------------------------------------
    @property
    def moe_layout(self) -> dict:
        """Module paths and expert dimensions, as the non-uniform model classes read them from a config."""
        return {
            "layers": self.modules["layers"],
            "moe": self.modules["moe"],
            "router": self.modules["router"],
            "experts": self.modules["experts"],
            "expert_tensors": {name: spec["expert_dim"] for name, spec in self.expert_tensors.items()},
            "router_tensors": {name: spec["expert_dim"] for name, spec in self.router_tensors.items() if "module" not in spec},
            # router state another module holds (MiniMax-M2's MoE block, ERNIE's gate.moe_statics): {name: [module, dim]}
            **({"held_router_tensors": held} if (held := {name: [spec["module"], spec["expert_dim"]]
                                                          for name, spec in self.router_tensors.items() if "module" in spec}) else {}),
            # the config field of experts per token, where it is not num_experts_per_tok (Aria's moe_topk)
            **({"top_k_field": self.top_k_fields[0]} if self.top_k_fields[0] != "num_experts_per_tok" else {}),
        }

    def decoder_layers(self, model) -> torch.nn.ModuleList:
        return model.get_submodule(self.modules["layers"])

    def moe_layer_indices(self, model) -> list[int]:
        """Indices of the decoder layers that hold routed experts (dense layers are skipped)."""
        indices = []
        for index, layer in enumerate(self.decoder_layers(model)):
            try:
                layer.get_submodule(self.modules["experts"])
            except AttributeError:
                continue
            indices.append(index)
        return indices

    def router(self, model, layer: int) -> torch.nn.Module:
        return self.decoder_layers(model)[layer].get_submodule(self.modules["router"])

    def experts(self, model, layer: int) -> torch.nn.Module:
        return self.decoder_layers(model)[layer].get_submodule(self.modules["experts"])

    def expert_tensors_of(self, experts_module: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The fused expert tensors of an experts module, by name."""
        return {name: getattr(experts_module, name) for name in self.expert_tensors}

    def channel_dim(self, name: str) -> int:
        """The dimension of fused expert tensor `name` that runs over the hidden size H (read from
        its ``shape`` in the definition, e.g. 2 for gpt-oss's ``down_proj`` [E, I, H])."""
        dims = [dim.strip() for dim in self.expert_tensors[name]["shape"].split("]")[0].lstrip("[").split(",")]
        return dims.index("H")

    def num_experts_in(self, experts_module: torch.nn.Module) -> int:
        name, spec = next(iter(self.expert_tensors.items()))
        return getattr(experts_module, name).shape[spec["expert_dim"]]

    def shared_expert_modules(self, model, layer: int) -> list[torch.nn.Module]:
        decoder_layer = self.decoder_layers(model)[layer]
        # Optional: some model types of a family (MiMo-V2-Flash) or configs (Cohere2 with none) have no shared experts.
        return [decoder_layer.get_submodule(name) for name in self.modules["shared_experts"]
                if _has_submodule(decoder_layer, name)]

    def router_tensor_modules(self, model, layer: int) -> dict[str, torch.nn.Module]:
        """{router tensor name: the module holding it}: the router, or the module a definition names
        (``"module"``, below the decoder layer: MiniMax-M2's MoE block hands its bias to the router)."""
        decoder_layer = self.decoder_layers(model)[layer]
        return {name: decoder_layer.get_submodule(spec.get("module", self.modules["router"])) for name, spec in self.router_tensors.items()}

    def router_buffers(self, model, layer: int) -> dict[str, torch.Tensor]:
        """Router state the routing function needs (DeepSeek-V3's correction bias), each a vector over
        the experts whatever its shape in the module (ERNIE's bias is [1, E])."""
        owners = self.router_tensor_modules(model, layer)
        return {name: getattr(owners[name], name).reshape(-1) for name, spec in self.router_tensors.items() if spec.get("buffer")}

    def router_parameters(self, model, layer: int) -> dict[str, torch.Tensor]:
        """The router's learnt rows: its weight [E, H] and, where it has one, bias [E] (not the buffers)."""
        owners = self.router_tensor_modules(model, layer)
        return {name: getattr(owners[name], name) for name, spec in self.router_tensors.items()
                if not spec.get("buffer") and getattr(owners[name], name, None) is not None}

    # --- on-disk keys ----------------------------------------------------------------------------
    def detect_layout(self, reader: CheckpointReader, layer: int) -> CheckpointLayout:
        """The key convention of a checkpoint, judged by the keys of MoE layer `layer`."""
        for layout in self.layouts.values():
            if all(key in reader for key in layout.probe_keys(layer)):
                return layout
        expected = "; ".join(f"{name}: {layout.probe_keys(layer)[0]}" for name, layout in self.layouts.items())
        raise CheckpointError(
            f"{reader.directory} has none of the known {self.name} expert key layouts for layer {layer} "
            f"(expected one of {expected})"
        )

    def classify_key(self, key: str) -> KeyRole:
        """The role of an on-disk key: fused experts, one expert's tensor, router, or other."""
        for layout, kind, pattern in self._key_patterns:
            match = pattern.match(key)
            if not match:
                continue
            layer = int(match["layer"])
            if kind.startswith("router"):
                name = kind.partition(":")[2] or match["suffix"]
                if name in self.router_tensors:
                    return KeyRole("router", layer, expert_dim=self.router_tensors[name]["expert_dim"], suffix=name)
                continue
            if kind == "expert":
                return KeyRole("expert", layer, expert=int(match["expert"]), suffix=match["suffix"])
            if not match["suffix"][:1].isdigit():  # "experts.3.w1" belongs to a per-expert layout
                return KeyRole("experts", layer, expert_dim=layout.expert_dim, suffix=match["suffix"])
        return KeyRole("other")

    def read_module_tensor(
        self, reader: CheckpointReader, layer: int, name: str, experts: list[int] | None = None,
        layout: CheckpointLayout | None = None, dtype: torch.dtype | None = None, device: torch.device | None = None,
    ) -> torch.Tensor:
        """The fused module tensor `name` of MoE layer `layer` for `experts`, in the module's layout.

        Whatever the disk layout, the result equals ``model.<experts module>.<name>[experts]`` of
        the loaded model: per-expert keys are concatenated and stacked, block-scaled FP8 is
        dequantised (to float32, or `dtype`), MXFP4 is dequantised (to bf16, as transformers does by
        default, or straight to `dtype`) and transposed to the module orientation. With `dtype`
        every tensor comes in that dtype; with `device` it is returned there, and MXFP4 is
        dequantised there (its packed bytes are a quarter of the values' size).
        """
        layout = layout or self.detect_layout(reader, layer)
        spec = layout.module_tensors[name]
        if isinstance(spec, list):
            if experts is None:
                experts = list(range(self.count_experts_on_disk(reader, layout, [layer])[layer]))
            prefix = layout.expert_prefix
            stacked = torch.stack(
                [torch.cat([fp8.read_values(reader, prefix.format(layer=layer, expert=e) + part) for part in spec], dim=0)
                 for e in experts]
            )
            return stacked.to(device, dtype or stacked.dtype)
        base = layout.experts_prefix.format(layer=layer) + (spec["mxfp4"] if isinstance(spec, dict) else spec)

        def read(key: str) -> torch.Tensor:
            return fp8.read_values(reader, key, experts, layout.expert_dim).to(device)

        if isinstance(spec, dict):
            return mxfp4.dequantize(read(base + "_blocks"), read(base + "_scales"), dtype or torch.bfloat16).transpose(-1, -2)
        tensor = read(base)
        return tensor if dtype is None else tensor.to(dtype)

    def count_experts_on_disk(self, reader: CheckpointReader, layout: CheckpointLayout, layers: list[int]) -> dict[int, int]:
        """How many experts each of the MoE `layers` holds in the checkpoint (one pass over the keys)."""
        if not layout.per_expert:
            return {layer: reader.entries[layout.probe_keys(layer)[0]].shape[layout.expert_dim] for layer in layers}
        pattern = _template_regex(layout.expert_prefix)
        highest = {layer: -1 for layer in layers}
        for key in reader.keys():
            match = pattern.match(key)
            if match and int(match["layer"]) in highest:
                highest[int(match["layer"])] = max(highest[int(match["layer"])], int(match["expert"]))
        return {layer: top + 1 for layer, top in highest.items()}
