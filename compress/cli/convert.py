"""`compress convert tiered`: regroup a MoE model's experts into teams (TieredLightweightMoE)."""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

from ..errors import CompressError
from .calibration import add_calibration_arguments, check_calibration_arguments, check_calibration_source
from .info import human_bytes, human_count
from .options import MODEL_HELP, add_checkpoint_output_arguments, positive_int

EPILOG = """examples:
  compress convert tiered --model demo --stats math.safetensors --tiers 0-1:4,2-3:3,4-5:2 --team-size 2 --out out/demo-tiered
  compress convert tiered --model openai/gpt-oss-20b --domain math --tiers 0-7:4,8-17:8,18-23:6 --team-size 4 --out gpt-oss-tiered
  compress convert tiered --model demo --domain code --recipe my_tiers.yaml --out out/t

Each layer keeps TEAMS x TEAM_SIZE of its experts, grouped into teams of co-activating experts; a
team's output is the mixing-weighted sum of its members; a new router picks --team-top-k teams per
token. Converted models lose quality until distilled: run `compress distill` next.
Defaults come from the recipe recipes/tiered.yaml (tiers 0-7:4,8-17:8,18-23:6 for gpt-oss-20b's 24
layers and 32 experts, scaled to other models' depth and expert count; team size 4, team top-k 1,
greedy clustering); a --recipe file and command-line options override it.
"""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("convert", help="convert a MoE model to another architecture (tiered teams)",
                                   description="Convert a MoE checkpoint to another MoE architecture.")
    kinds = parser.add_subparsers(title="conversions", metavar="KIND", required=True)
    tiered = kinds.add_parser("tiered", help="TieredLightweightMoE: teams of co-activating experts",
                              description="Group each layer's experts into teams (TieredLightweightMoE) and write the checkpoint.",
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    tiered.add_argument("--model", required=True, help=MODEL_HELP)
    tiered.add_argument("--stats", help="routing statistics of the model (default: profile now on --domain)")
    tiered.add_argument("--domain", help="calibration domain when profiling")
    tiered.add_argument("--recipe", help="YAML with tiers / team_size / team_top_k / clustering (default: recipes/tiered.yaml)")
    tiered.add_argument("--tiers", help='decoder-layer ranges and teams per layer, e.g. "0-7:4,8-17:8,18-23:6"')
    tiered.add_argument("--team-size", type=positive_int, help="experts per team")
    tiered.add_argument("--team-top-k", type=positive_int, help="teams per token")
    tiered.add_argument("--clustering", choices=("greedy", "agglomerative"), help="how teams are formed")
    add_checkpoint_output_arguments(tiered)
    tiered.add_argument("--quiet", action="store_true", help="no progress bars")
    add_calibration_arguments(tiered, samples_help="calibration windows when profiling")
    tiered.set_defaults(run=run_tiered)


def _settings(args, moe_layers: list[int], num_experts: int) -> dict:
    from ..recipes.tiered import default_recipe, load_recipe, scaled_tiers

    if args.recipe and not Path(args.recipe).is_file():
        raise CompressError(f"recipe {args.recipe} does not exist")
    settings = load_recipe(Path(args.recipe)) if args.recipe else default_recipe()
    for key in ("tiers", "team_size", "team_top_k", "clustering"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    if int(settings["team_size"]) < 1 or int(settings["team_top_k"]) < 1:
        raise CompressError("team_size and team_top_k must be at least 1")
    if args.tiers is None:
        settings["tiers"] = scaled_tiers(settings, moe_layers, num_experts, int(settings["team_size"]))
    settings.pop("designed_for", None)
    return settings


def run_tiered(args) -> int:
    from ..checkpoint.files import read_config
    from ..checkpoint.output import claim_output
    from ..families import family_for_config
    from ..model_info import describe_model, meta_model, model_config, model_fingerprint
    from ..publish import card_license
    from ..recipes.tiered import check_tiers, design_teams, parse_tiers, tiered_parameter_counts, write_tiered_checkpoint
    from ..resolve import resolve_model
    from ..stats.profile import profile
    from .prune import check_statistics, load_model_and_windows

    start = time.perf_counter()
    resolved = resolve_model(args.model)
    config = read_config(resolved.path)
    family = family_for_config(config)
    describe_model(resolved)  # checks the checkpoint's files and tensors
    transformers_config = model_config(resolved.path)
    meta = meta_model(transformers_config)
    moe_layers = family.moe_layer_indices(meta)
    fingerprint = model_fingerprint(meta)
    settings = _settings(args, moe_layers, family.num_experts(transformers_config))
    tiers = parse_tiers(str(settings["tiers"]), moe_layers)
    stats = check_statistics(args.stats, resolved, fingerprint) if args.stats else None
    if stats is None:
        if args.domain is None:
            raise CompressError("without --stats the model is profiled first: pass --domain (math, code, general or your own with --dataset)")
        check_calibration_arguments(args, config)
        check_calibration_source(args)
    check_tiers(tiers, family.experts_per_layer(transformers_config, moe_layers), int(settings["team_size"]),
                int(settings["team_top_k"]), str(settings["clustering"]))
    with claim_output(args.out, kind="directory", overwrite=args.overwrite, sources=(resolved.path,), what="converted model") as claimed:
        if stats is None:
            model, windows, data = load_model_and_windows(args, resolved)
            stats = profile(model, windows, batch_size=args.batch_size, model_name=resolved.name, domain=args.domain,
                            data=data, progress=not args.quiet, skip_samples=args.skip_samples)
        layout = design_teams(stats, tiers, int(settings["team_size"]), int(settings["team_top_k"]), str(settings["clustering"]))
        source = {"model": resolved.name, "fingerprint": fingerprint, "family": family.name,
                  "num_experts": family.num_experts(transformers_config), "top_k": family.top_k(transformers_config)}
        before = {"total": sum(p.numel() for p in meta.parameters())}
        after = tiered_parameter_counts(transformers_config, tiers, layout.team_size, layout.team_top_k)
        with claimed.write() as staging:
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
          f"{time.perf_counter() - start:.1f} s → {claimed.path}")
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
import compress
compress.register()  # the tiered model classes; or pass trust_remote_code=True instead
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(PATH)
```
"""
