"""The converted checkpoint's model card."""

from __future__ import annotations

from .plan import ROUTER_INIT, TieredPlan


def tiered_card(name: str, plan: TieredPlan, clustering: str, before: int, after) -> str:
    """The converted checkpoint's model card (`after`: its `model_info.ParameterCounts`)."""
    rows = "\n".join(
        f"| {layer} | {len(teams)} | " + "; ".join(
            "+".join(f"{e}×{w:.2f}" for e, w in zip(team, plan.mixing[layer][t].tolist())) for t, team in enumerate(teams)) + " |"
        for layer, teams in sorted(plan.teams.items()))
    return f"""---
base_model: {name}
library_name: transformers
tags: [moe, tiered, moe-compress]
---
# {name}, converted to TieredLightweightMoE

Each MoE layer's experts were grouped into teams of {plan.team_size} co-activating experts
({clustering} clustering on routing statistics); a team's output is the mixing-weighted sum of
its members' outputs, and a router over teams picks {plan.team_top_k} team(s) per token. Team router
rows start as the {ROUTER_INIT}. Parameters: {before:,} → {after.total:,}
({after.active:,} active per token).

**Not evaluated and not distilled**: a converted model loses quality until it is trained with
`compress distill --teacher {name} --student THIS_DIRECTORY ...`.

| layer | teams | members (original expert id × mixing weight) |
|---|---|---|
{rows}

## How to load

```python
import compress
compress.register()  # the tiered model classes; or pass trust_remote_code=True instead
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(PATH)
```
"""
