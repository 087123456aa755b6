"""Model-family adapters: one JSON definition per architecture, loaded into `MoEFamily` objects.

A definition names the transformers model types it covers: a model type that routes and stores its
experts as an existing family is one more name in its ``model_types``; a new one is a file in
``definitions/`` (and, if its routing is new, a function in `routing.py`). The model classes derive
from transformers' own; model types with experts that are refused say why (`unsupported.py`).
"""

from __future__ import annotations

import difflib
import json
from functools import cache
from importlib import resources

from ..errors import UnsupportedModelError
from .derived import split_model_type
from .family import CheckpointLayout, KeyRole, MoEFamily, available_model_types, config_value
from .unsupported import UNSUPPORTED

# Config fields that hold an expert count in some MoE architecture, ours or not: a config with one
# of them set is a MoE model even when we have no adapter for it.
_ANY_EXPERT_COUNT_FIELDS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts", "num_experts_per_tok")


@cache
def all_families() -> dict[str, MoEFamily]:
    families = {}
    for entry in sorted(resources.files(__name__).joinpath("definitions").iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".json"):
            definition = json.loads(entry.read_text())
            if definition.get("model_types") and not available_model_types(definition["model_types"]):
                continue  # a family an older transformers does not ship (vLLM's own pin)
            family = MoEFamily.from_definition(definition)
            families[family.name] = family
    return families


def get_family(name: str) -> MoEFamily:
    """The family named `name`, or the one a model type `name` belongs to (``glm4_moe`` → deepseek_v3)."""
    families = all_families()
    for family in families.values():
        if name == family.name or name in family.model_types:
            return family
    hint = difflib.get_close_matches(name, families, n=1)
    did_you_mean = f" (did you mean {hint[0]}?)" if hint else ""
    raise UnsupportedModelError(f"unknown family {name!r}{did_you_mean}: supported are {', '.join(families)}")


def family_for_config(config) -> MoEFamily:
    """The family of a transformers config object or raw config.json dict (the project's derived
    model types belong to their base family); clear errors otherwise."""
    model_type = config_value(config, "model_type")
    base, _ = split_model_type(model_type)
    for family in all_families().values():
        if base in family.model_types:
            return family
    supported = ", ".join(all_families())
    if base in UNSUPPORTED:
        raise UnsupportedModelError(f"architecture {model_type!r} is not supported: {UNSUPPORTED[base]}")
    if any(config_value(config, name) for name in _ANY_EXPERT_COUNT_FIELDS):
        raise UnsupportedModelError(
            f"architecture {model_type!r} is a Mixture-of-Experts model without a moe-compress adapter yet; "
            f"supported families: {supported}"
        )
    raise UnsupportedModelError(
        f"model type {model_type!r} is a dense model (its config names no experts): moe-compress works on "
        f"Mixture-of-Experts checkpoints ({supported})"
    )


__all__ = ["CheckpointLayout", "KeyRole", "MoEFamily", "all_families", "family_for_config", "get_family"]
