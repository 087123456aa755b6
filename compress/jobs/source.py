"""`SourceModel`: a model resolved, read and checked once; every job takes one.

Opening reads config.json once, the safetensors headers once (truncation, index), builds the model
once on the meta device through transformers' own loading (which also reports missing, unexpected
and wrong-shaped tensors), counts the experts on disk against the config, and derives the
fingerprint. Nothing downstream reads any of that again.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from ..checkpoint.files import read_config
from ..checkpoint.reader import CheckpointReader
from ..errors import CheckpointError
from ..families import MoEFamily, family_for_config
from ..families.derived import split_model_type
from ..resolve import ResolvedModel, resolve_model


@dataclass(frozen=True, eq=False)
class SourceModel:
    resolved: ResolvedModel
    raw_config: dict  # config.json as on disk
    config: object  # the transformers config
    family: MoEFamily
    derived: str | None  # None (a stock model), "per_layer" or "tiered" (`families.derived`)
    reader: CheckpointReader
    layout: object  # the on-disk key layout (`families.CheckpointLayout`)
    meta: object  # the model on the meta device
    moe_layers: list[int]
    experts_per_layer: dict[int, int]
    top_k: int
    fingerprint: str

    @property
    def path(self):
        return self.resolved.path

    @property
    def name(self) -> str:
        return self.resolved.name

    @property
    def num_experts(self) -> int:
        """The most experts any MoE layer holds (every layer's, in a stock model)."""
        return max(self.experts_per_layer.values())

    @cached_property
    def info(self):
        """What `compress info` prints (`model_info.ModelInfo`)."""
        from ..model_info import describe

        return describe(self)

    def load(self, dtype: str = "auto", device: str = "auto", local_rank: int | None = None):
        """The model with its weights, in eval mode (already checked when opened)."""
        from ..model_loading import load_model

        return load_model(self.path, dtype=dtype, device=device, local_rank=local_rank, config=self.raw_config)

    def tokenizer(self):
        from ..model_loading import load_tokenizer

        return load_tokenizer(self.path)


def open_model(spec: str, revision: str | None = None, flag: str = "--model") -> SourceModel:
    """Resolve `spec` (a directory, a Hub id or ``demo``) and check everything about it that can be
    checked without reading weights; a broken or unsupported checkpoint fails here, in one line."""
    from ..model_info import model_fingerprint
    from ..model_loading import check_loading_info, load_meta_model

    resolved = resolve_model(spec, revision=revision, flag=flag)
    raw = read_config(resolved.path)
    family = family_for_config(raw)
    reader = CheckpointReader(resolved.path)
    meta, loading = load_meta_model(resolved.path, raw)
    config = meta.config
    moe_layers = family.moe_layer_indices(meta)
    if not moe_layers:
        raise CheckpointError(f"{resolved.name}: the config describes no MoE layers (check first_k_dense_replace / mlp_only_layers)")
    layout = family.detect_layout(reader, moe_layers[0])
    on_disk = family.count_experts_on_disk(reader, layout, moe_layers)
    configured = family.experts_per_layer(config, moe_layers)
    for layer, count in on_disk.items():
        if count != configured[layer]:
            raise CheckpointError(f"{resolved.name}: config.json says {configured[layer]} experts in layer {layer} "
                                  f"but its weights hold {count}")
    check_loading_info(resolved.path, raw, loading)
    return SourceModel(resolved, raw, config, family, split_model_type(raw.get("model_type"))[1], reader, layout, meta,
                       moe_layers, on_disk, family.top_k(config), model_fingerprint(meta))
