"""The model card of a merged checkpoint (``README.md``; `jobs.provenance` writes it with ``compress.json``)."""

from __future__ import annotations

from .. import __version__
from ..jobs.provenance import STATS_FILE
from ..pruning.card import USAGE_PLOT, calibration_text, load_section, size_table
from .groupings import GROUPINGS
from .plan import MergePlan


def compensation_section(fits: dict | None) -> str:
    """The card's lines on compensation (empty without it)."""
    if not fits or next(iter(fits.values())).error_before is None:
        return ""
    rows = "\n".join(f"| {layer} | {fit.error_before:.4f} | {fit.error_after:.4f} | {fit.heldout_before:.4f} | {fit.heldout_after:.4f} |"
                     for layer, fit in sorted(fits.items()))
    return f"""
## Compensation

Each new expert's down projection (and bias) was corrected by ridge least squares (closed form, no
training) on every calibration token routed to it, so that each MoE layer's output stays close to
the original layer's; routing and the gate/up projections are unchanged. Relative layer-output
error ‖reduced − original‖² / ‖original‖² on tokens fitted, and on the fifth of the calibration
tokens held out of the fit (a fit that only interpolates its sample shows here):

| layer | fitted, without | fitted, with | held out, without | held out, with |
|---|---|---|---|---|
{rows}
"""


def merge_card(plan: MergePlan, before, after, statistics: dict | None, fits: dict | None, experts: str) -> str:
    p, source = plan.provenance, plan.source
    counts = plan.experts_per_layer
    merged_text = f"{next(iter(counts.values()))} experts in every MoE layer (from {source['num_experts']})"
    top_k_text = (f"top-k stays {plan.top_k}" if plan.top_k == source["top_k"]
                  else f"top-k lowered from {source['top_k']} to {plan.top_k}")
    router = {"dominant": "its most used member's router row",
              "weighted": "the same weighted sum of its members' router rows",
              "fitted": "a router row fitted (closed form, on the calibration tokens) so that its logit matches the "
                        "log-sum-exp of its members' logits, i.e. it is chosen where they were"}[plan.router]
    data = calibration_text(statistics)
    combined = ("the weighted average" if plan.merge_method == "average"
                else "a TIES merge (the most used member plus the trimmed, sign-elected differences of the others)")
    aligned = {"none": "", "weights": ", their intermediate neurons first matched to the most used member's by their weights",
               "activations": ", their intermediate neurons first matched to the most used member's by their activations on "
                              "calibration text"}[plan.alignment]
    rows = "\n".join(
        f"| {layer} | {g} | " + " + ".join(f"{w:.3f}·{e}" for e, w in zip(members, weights)) + " |"
        for layer, groups in sorted(plan.layers.items())
        for g, (members, weights) in enumerate(zip(groups, plan.weights[layer])))
    picture = f"\n![expert usage; each group's most used expert marked]({USAGE_PLOT})\n" if statistics else ""
    return f"""---
base_model: {source['model']}
library_name: transformers
tags: [moe, merged, moe-compress, {before.family}]
---
# {source['model']}, experts merged

Derived from `{source['model']}` by `compress merge` (moe-compress {__version__}): {merged_text}, each
{combined} of a group of original experts (every weight and bias{aligned}), routed by {router}; {top_k_text}.
Expert weights: {experts}. Everything else is unchanged.

{size_table(before, after)}

## How the groups were made

Grouping: {grouping_text(p.get('grouping'))}; merge weights: {p.get('merge_weights', 'from the plan')},
measured on {data}. `compress.json` records the plan; `{STATS_FILE}` holds the statistics.
{picture}{compensation_section(fits)}
| layer | new expert | made of (weight·original id) |
|---|---|---|
{rows}

{load_section(after)}
"""


def grouping_text(name: str | None) -> str:
    """The card's words for a grouping of the table (`merging.groupings`), or for a plan given by hand."""
    if name in GROUPINGS:
        return GROUPINGS[name].card
    return "a plan given by hand (--plan)" if name == "plan" else name or "unknown"
