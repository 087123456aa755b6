"""The README's table of supported and refused architectures, written from the family registry and
the refusal list, so it cannot drift from them (`tests/test_families.py` compares the two)."""

from __future__ import annotations

from . import all_families
from .family import CheckpointLayout
from .unsupported import UNSUPPORTED


def _layout_text(layout: CheckpointLayout) -> str:
    """One layout as its key pattern below the decoder layer, e.g. ``mlp.experts.{e}.gate_proj/up_proj/down_proj``."""
    prefix = (layout.expert_prefix or layout.experts_prefix).split("{layer}.", 1)[1].replace("{expert}", "{e}")
    names = []
    for spec in layout.module_tensors.values():
        if isinstance(spec, dict):
            names.append(spec["mxfp4"] + "_blocks/_scales")
        else:
            names += [name.removesuffix(".weight") for name in (spec if isinstance(spec, list) else [spec])]
    kind = "per-expert" if layout.per_expert else "MXFP4" if layout.name == "mxfp4" else "fused"
    return f"{kind} `{prefix}{'/'.join(names)}`"


def markdown() -> str:
    families = all_families()
    model_types = sum(len(family.model_types) for family in families.values())
    rows = [f"| `{family.name}` | {', '.join(f'`{t}`' for t in family.model_types)} | {family.description} | "
            + "; ".join(_layout_text(layout) for layout in family.layouts.values()) + " |"
            for family in families.values()]
    refused = [f"| `{model_type}` | {reason} |" for model_type, reason in sorted(UNSUPPORTED.items())]
    return "\n".join([
        f"Supported: **{model_types} model types** in {len(families)} family definitions. Refused: **{len(UNSUPPORTED)}** "
        "other model types with routed experts in the pinned transformers, each with its reason (`compress info` "
        "prints it).",
        "",
        "| family | model types | routing and examples | on-disk expert layouts |",
        "|---|---|---|---|",
        *rows,
        "",
        "<details><summary>Refused model types and why</summary>",
        "",
        "| model type | reason |",
        "|---|---|",
        *refused,
        "",
        "</details>",
        "",
    ])
