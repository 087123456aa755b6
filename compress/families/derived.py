"""The project's own model types: a supported family's ``model_type`` plus a suffix per kind.

* ``per_layer`` (``<family>_moe_compress``): a different number of experts in each MoE layer
  (non-uniform pruning plans), classes in `compress/models/modeling_moe_compress.py`;
* ``tiered`` (``<family>_tiered``): experts grouped into teams behind a team router
  (TieredLightweightMoE), classes in `compress/models/modeling_tiered_moe.py`.

This is the one registry every part of the toolkit reads. The model files repeat their suffix
because checkpoints carry them as self-contained remote code; a test keeps the two in step.
"""

from __future__ import annotations

PER_LAYER, TIERED = "per_layer", "tiered"
SUFFIXES = {PER_LAYER: "_moe_compress", TIERED: "_tiered"}
MODELING_FILES = {PER_LAYER: "modeling_moe_compress.py", TIERED: "modeling_tiered_moe.py"}


def split_model_type(model_type: str | None) -> tuple[str | None, str | None]:
    """(base family model_type, kind) of a model_type; kind is None for a stock model."""
    for kind, suffix in SUFFIXES.items():
        if model_type and model_type.endswith(suffix):
            return model_type[: -len(suffix)], kind
    return model_type, None


def derived_model_type(base_model_type: str, kind: str) -> str:
    return base_model_type + SUFFIXES[kind]
