"""What a pruned checkpoint says about itself: ``compress.json`` (provenance, for machines) and a
model card ``README.md`` (for people), plus the expert-usage picture the card shows."""

from __future__ import annotations

import datetime
import hashlib
import json
from pathlib import Path

from .. import __version__
from ..model_info import ModelInfo
from ..publish import card_license
from ..stats import RoutingStats
from .plan import PrunePlan

PROVENANCE_FILE = "compress.json"
CARD_FILE = "README.md"
STATS_FILE = "routing_stats.safetensors"
USAGE_PLOT = "expert_usage.png"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def write_provenance(directory: Path, plan: PrunePlan, before: ModelInfo, after: ModelInfo, stats: RoutingStats | None,
                     command: str | None = None) -> dict:
    """Write the statistics used (if any), their picture, compress.json and the model card."""
    statistics = None
    if stats is not None:
        stats.save(directory / STATS_FILE)
        from ..stats.plots import plot_pruning

        plot_pruning(stats, plan.layers, directory / USAGE_PLOT)
        statistics = {
            "file": STATS_FILE,
            "sha256": file_sha256(directory / STATS_FILE),
            **{key: stats.metadata.get(key) for key in ("domain", "samples", "seq_len", "tokens")},
            "data": [source["data"] for source in stats.metadata.get("sources", [])],
        }
    provenance = {
        "tool": "moe-compress",
        "tool_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "operation": "prune",
        "source": {"model": before.name, "fingerprint": plan.source.get("fingerprint"), "license": card_license(Path(before.path))},
        "command": command,
        "plan": plan.to_dict(),
        "statistics": statistics,
        "parameters": {"before": before.parameters.__dict__, "after": after.parameters.__dict__},
    }
    (directory / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
    (directory / CARD_FILE).write_text(model_card(plan, before, after, statistics))
    return provenance


def _millions(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def model_card(plan: PrunePlan, before: ModelInfo, after: ModelInfo, statistics: dict | None) -> str:
    p = plan.provenance
    source = plan.source
    counts = plan.experts_per_layer
    kept_text = (f"{next(iter(counts.values()))} of {source['num_experts']} experts in every MoE layer" if plan.uniform
                 else f"{min(counts.values())}–{max(counts.values())} of {source['num_experts']} experts per MoE layer "
                      f"({sum(counts.values())} in total, a global budget)")
    top_k_text = (f"top-k stays {plan.top_k}" if plan.top_k == source["top_k"]
                  else f"top-k lowered from {source['top_k']} to {plan.top_k} (fewer experts kept than were routed per token)")
    why = {
        "reap": "REAP saliency (mean of routing weight × expert output norm over the tokens routed to the expert)",
        "frequency": "routing frequency (how often the expert is in a token's top-k)",
        "gate-mass": "gate mass (total routing weight the expert receives)",
        "ean": "expert activation norm (sum of the expert's output norms over its routed tokens)",
        "random": "a seeded random choice (a baseline, not a recommendation)",
        "reconstruct": "a search for the kept set that best reconstructs each layer's output on calibration tokens",
        "plan": "a plan given by hand (--plan)",
    }.get(p.get("criterion"), p.get("criterion", "unknown"))
    data = (f"{statistics['tokens']:,} tokens of `{statistics['domain']}` calibration text ({'; '.join(statistics['data'])})"
            if statistics else "the calibration described in `compress.json`")
    rows = "\n".join(
        f"| {layer} | {len(kept)} | {', '.join(map(str, kept))} | {', '.join(map(str, plan.removed(layer))) or '—'} |"
        for layer, kept in sorted(plan.layers.items())
    )
    load = ("from transformers import AutoModelForCausalLM, AutoTokenizer\n"
            "model = AutoModelForCausalLM.from_pretrained(PATH)" if plan.uniform else
            "import compress\ncompress.register()  # the per-layer model classes; or pass trust_remote_code=True instead\n"
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
            "model = AutoModelForCausalLM.from_pretrained(PATH)")
    picture = f"\n![expert usage and removed experts]({USAGE_PLOT})\n" if statistics else ""
    b, a = before.parameters, after.parameters
    return f"""---
base_model: {source['model']}
library_name: transformers
tags: [moe, pruned, moe-compress, {before.family}]
---
# {source['model']}, experts pruned

Derived from `{source['model']}` by `compress prune` (moe-compress {__version__}): keeps {kept_text}; {top_k_text}.
Everything else — attention, shared experts, embeddings, tokenizer, chat template — is unchanged.

| | before | after |
|---|---|---|
| parameters | {_millions(b.total)} | {_millions(a.total)} |
| active per token | {_millions(b.active)} | {_millions(a.active)} |
| routed-expert parameters | {_millions(b.routed_experts)} | {_millions(a.routed_experts)} |
| checkpoint size | {before.checkpoint_bytes / 1e6:,.1f} MB | {after.checkpoint_bytes / 1e6:,.1f} MB |

## What was removed, and why

Experts were ranked by {why}, measured on {data}.
`compress.json` records the plan, the statistics file's hash and the source fingerprint;
`{STATS_FILE}` holds the statistics themselves (`compress stats show {STATS_FILE}`).
{picture}
| layer | kept | kept experts (original ids, now 0..N-1 in this order) | removed |
|---|---|---|---|
{rows}

## How to load

```python
{load}
tokenizer = AutoTokenizer.from_pretrained(PATH)
```

Quality is not claimed here: measure it on your task (`compress eval` compares against the base model).
Pruning removes experts a domain rarely uses; other domains can lose more than the calibration domain.
"""
