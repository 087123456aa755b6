"""The model card of a pruned checkpoint (``README.md``, for people; `jobs.provenance` writes it with
``compress.json``), and the expert-usage picture it shows."""

from __future__ import annotations

from .. import __version__
from ..families.derived import split_model_type
from ..jobs.provenance import STATS_FILE
from ..model_info import ModelInfo
from .criteria import CRITERIA
from .plan import PrunePlan

USAGE_PLOT = "expert_usage.png"


def _millions(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def size_table(before: ModelInfo, after: ModelInfo) -> str:
    b, a = before.parameters, after.parameters
    return f"""| | before | after |
|---|---|---|
| parameters | {_millions(b.total)} | {_millions(a.total)} |
| active per token | {_millions(b.active)} | {_millions(a.active)} |
| routed-expert parameters | {_millions(b.routed_experts)} | {_millions(a.routed_experts)} |
| checkpoint size | {before.checkpoint_bytes / 1e6:,.1f} MB | {after.checkpoint_bytes / 1e6:,.1f} MB |"""


def load_section(after: ModelInfo) -> str:
    """How to load the derived checkpoint: stock classes, or the project's (per-layer counts)."""
    stock = split_model_type(after.model_type)[1] is None
    load = ("from transformers import AutoModelForCausalLM, AutoTokenizer\n"
            "model = AutoModelForCausalLM.from_pretrained(PATH)" if stock else
            "import compress\ncompress.register()  # the project's model classes; or pass trust_remote_code=True instead\n"
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
            "model = AutoModelForCausalLM.from_pretrained(PATH)")
    return f"""## How to load

```python
{load}
tokenizer = AutoTokenizer.from_pretrained(PATH)
```

Quality is not claimed here: measure it on your task (`compress eval` compares against the base model)."""


def calibration_text(statistics: dict | None) -> str:
    """What the plan was measured on, for a card: the statistics' tokens, domain and data sources."""
    if not statistics:
        return "the calibration described in `compress.json`"
    return f"{statistics['tokens']:,} tokens of `{statistics['domain']}` calibration text ({'; '.join(statistics['data'])})"


def model_card(plan: PrunePlan, before: ModelInfo, after: ModelInfo, statistics: dict | None) -> str:
    p = plan.provenance
    source = plan.source
    counts = plan.experts_per_layer
    kept_text = (f"{next(iter(counts.values()))} of {source['num_experts']} experts in every MoE layer" if plan.uniform
                 else f"{min(counts.values())}–{max(counts.values())} of {source['num_experts']} experts per MoE layer "
                      f"({sum(counts.values())} in total, a global budget)")
    if plan.teams is not None:
        kept_text += f" (whole teams: {', '.join(f'layer {layer} keeps teams {kept}' for layer, kept in sorted(plan.teams.items()))})"
    top_k_text = (f"top-k stays {plan.top_k}" if plan.top_k == source["top_k"]
                  else f"top-k lowered from {source['top_k']} to {plan.top_k} (fewer experts kept than were routed per token)")
    criterion = CRITERIA.get(p.get("criterion"))
    why = criterion.card if criterion is not None else ("a plan given by hand (--plan)" if p.get("criterion") == "plan"
                                                        else p.get("criterion", "unknown"))
    data = calibration_text(statistics)
    rows = "\n".join(
        f"| {layer} | {len(kept)} | {', '.join(map(str, kept))} | {', '.join(map(str, plan.removed(layer))) or '—'} |"
        for layer, kept in sorted(plan.layers.items())
    )
    picture = f"\n![expert usage and removed experts]({USAGE_PLOT})\n" if statistics else ""
    return f"""---
base_model: {source['model']}
library_name: transformers
tags: [moe, pruned, moe-compress, {before.family}]
---
# {source['model']}, experts pruned

Derived from `{source['model']}` by `compress prune` (moe-compress {__version__}): keeps {kept_text}; {top_k_text}.
Everything else — attention, shared experts, embeddings, tokenizer, chat template — is unchanged.

{size_table(before, after)}

## What was removed, and why

Experts were ranked by {why}, measured on {data}.
`compress.json` records the plan, the statistics file's hash and the source fingerprint;
`{STATS_FILE}` holds the statistics themselves (`compress stats show {STATS_FILE}`).
{picture}
| layer | kept | kept experts (original ids, now 0..N-1 in this order) | removed |
|---|---|---|---|
{rows}

{load_section(after)}
Pruning removes experts a domain rarely uses; other domains can lose more than the calibration domain.
"""
