"""`compress convert tiered`: regroup a MoE model's experts into teams (TieredLightweightMoE)."""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

import yaml

from ..checkpoint.files import read_config
from ..checkpoint.output import atomic_output_dir
from ..checkpoint.writer import DEFAULT_MAX_SHARD_BYTES
from ..errors import CompressError
from ..families import family_for_config
from ..model_info import meta_model, model_fingerprint
from ..publish import card_license
from ..resolve import resolve_model
from ..stats import RoutingStats
from .calibration import add_calibration_arguments
from .info import human_bytes, human_count
from .prune import check_output_dir, check_statistics, load_model_and_windows

EPILOG = """examples:
  compress convert tiered --model demo --stats math.safetensors --tiers 0-1:4,2-3:3,4-5:2 --team-size 2 --out out/demo-tiered
  compress convert tiered --model openai/gpt-oss-20b --domain math --tiers 0-7:4,8-17:8,18-23:6 --team-size 4 --out gpt-oss-tiered
  compress convert tiered --model demo --domain code --recipe my_tiers.yaml --out out/t

Each layer keeps TEAMS x TEAM_SIZE of its experts, grouped into teams of co-activating experts; a
team's output is the mixing-weighted sum of its members; a new router picks --team-top-k teams per
token. Converted models lose quality until distilled: run `compress distill` next.
Defaults come from the recipe recipes/tiered.yaml (tiers 0-7:4,8-17:8,18-23:6, team size 4,
team top-k 1, greedy clustering); command-line options override the recipe.
"""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("convert", help="convert a MoE model to another architecture (tiered teams)",
                                   description="Convert a MoE checkpoint to another MoE architecture.")
    kinds = parser.add_subparsers(title="conversions", metavar="KIND", required=True)
    tiered = kinds.add_parser("tiered", help="TieredLightweightMoE: teams of co-activating experts",
                              description="Group each layer's experts into teams (TieredLightweightMoE) and write the checkpoint.",
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    tiered.add_argument("--model", required=True, help="local directory, Hub id (OWNER/NAME) or `demo`")
    tiered.add_argument("--stats", help="routing statistics of the model (default: profile now on --domain)")
    tiered.add_argument("--domain", help="calibration domain when profiling")
    tiered.add_argument("--recipe", help="YAML with tiers / team_size / team_top_k / clustering (default: recipes/tiered.yaml)")
    tiered.add_argument("--tiers", help='decoder-layer ranges and teams per layer, e.g. "0-7:4,8-17:8,18-23:6"')
    tiered.add_argument("--team-size", type=int, help="experts per team")
    tiered.add_argument("--team-top-k", type=int, help="teams per token")
    tiered.add_argument("--clustering", help="greedy or agglomerative")
    tiered.add_argument("--out", required=True, help="output directory")
    tiered.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    tiered.add_argument("--max-shard-size", type=int, default=DEFAULT_MAX_SHARD_BYTES, metavar="BYTES", help="largest output shard")
    tiered.add_argument("--quiet", action="store_true", help="no progress bars")
    add_calibration_arguments(tiered, samples_help="calibration windows when profiling")
    tiered.set_defaults(run=run_tiered)


def _settings(args) -> dict:
    from ..recipes.tiered import default_recipe

    settings = default_recipe()
    if args.recipe:
        path = Path(args.recipe)
        if not path.is_file():
            raise CompressError(f"recipe {path} does not exist")
        settings.update(yaml.safe_load(path.read_text()) or {})
    for key in ("tiers", "team_size", "team_top_k", "clustering"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    if int(settings["team_size"]) < 1:
        raise CompressError("--team-size must be at least 1")
    return settings


def run_tiered(args) -> int:
    from transformers import AutoConfig

    from ..recipes.tiered import design_teams, parse_tiers, tiered_parameter_counts, write_tiered_checkpoint
    from ..stats.profile import profile

    start = time.perf_counter()
    resolved = resolve_model(args.model)
    config = read_config(resolved.path)
    family = family_for_config(config)
    out = check_output_dir(args, resolved)
    settings = _settings(args)
    model_config = AutoConfig.from_pretrained(resolved.path)
    meta = meta_model(model_config)
    moe_layers = family.moe_layer_indices(meta)
    fingerprint = model_fingerprint(meta)
    tiers = parse_tiers(str(settings["tiers"]), moe_layers)
    if args.stats:
        stats = check_statistics(RoutingStats.load(args.stats), args.stats, resolved, fingerprint)
    else:
        model, windows, data = load_model_and_windows(args, resolved, config)
        stats = profile(model, windows, batch_size=args.batch_size, model_name=resolved.name, domain=args.domain,
                        data=data, progress=not args.quiet)
    layout = design_teams(stats, tiers, int(settings["team_size"]), int(settings["team_top_k"]), str(settings["clustering"]))
    source = {"model": resolved.name, "fingerprint": fingerprint, "family": family.name,
              "num_experts": family.num_experts(model_config), "top_k": family.top_k(model_config)}
    before = {"total": sum(p.numel() for p in meta.parameters())}
    after = tiered_parameter_counts(model_config, tiers, layout.team_size, layout.team_top_k)
    with atomic_output_dir(out, overwrite=args.overwrite) as staging:
        write_tiered_checkpoint(resolved.path, staging, family, layout, source, args.max_shard_size, progress=not args.quiet)
        stats.save(staging / "routing_stats.safetensors")
        provenance = {
            "tool": "moe-compress", "operation": "convert tiered",
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "source": {**source, "license": card_license(Path(resolved.path))}, "recipe": settings,
            "command": getattr(args, "command_line", None),
            "teams": {str(layer): teams for layer, teams in layout.teams.items()},
            "mixing": {str(layer): [[round(float(w), 6) for w in row] for row in m.tolist()] for layer, m in layout.mixing.items()},
            "statistics": {key: stats.metadata.get(key) for key in ("domain", "samples", "seq_len", "tokens")},
            "parameters": {"before": before["total"], "after": after},
        }
        (staging / "compress.json").write_text(json.dumps(provenance, indent=2) + "\n")
        (staging / "README.md").write_text(_card(resolved.name, settings, layout, before["total"], after))
        size = sum(p.stat().st_size for p in staging.glob("*.safetensors"))
    print(f"converted {resolved.name} to {sum(len(t) for t in layout.teams.values())} teams of {layout.team_size} "
          f"({settings['clustering']}), top-{layout.team_top_k} teams per token; parameters {human_count(before['total'])} → "
          f"{human_count(after['total'])} (active {human_count(after['active'])}); {human_bytes(size)}; "
          f"{time.perf_counter() - start:.1f} s → {out}")
    return 0


def _card(name: str, settings: dict, layout, before: int, after: dict) -> str:
    rows = "\n".join(
        f"| {layer} | {len(teams)} | " + "; ".join(
            "+".join(f"{e}×{w:.2f}" for e, w in zip(team, layout.mixing[layer][t].tolist())) for t, team in enumerate(teams)) + " |"
        for layer, teams in sorted(layout.teams.items()))
    return f"""---
base_model: {name}
library_name: transformers
tags: [moe, tiered, moe-compress]
---
# {name}, converted to TieredLightweightMoE

Each MoE layer's experts were grouped into teams of {layout.team_size} co-activating experts
({settings['clustering']} clustering on routing statistics); a team's output is the mixing-weighted sum of
its members' outputs, and a router over teams picks {layout.team_top_k} team(s) per token. Team router
rows start as the mixing-weighted sum of the members' router rows. Parameters: {before:,} → {after['total']:,}
({after['active']:,} active per token).

**Not evaluated and not distilled**: a converted model loses quality until it is trained with
`compress distill --teacher {name} --student THIS_DIRECTORY ...`.

| layer | teams | members (original expert id × mixing weight) |
|---|---|---|
{rows}

## How to load

```python
import compress  # registers the tiered model classes; or pass trust_remote_code=True instead
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(PATH)
```
"""
