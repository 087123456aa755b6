"""`compress convert tiered`: regroup a MoE model's experts into teams (TieredLightweightMoE)."""

from __future__ import annotations

import argparse
import json

from ..jobs.options import (
    MODEL_HELP,
    CalibrationOptions,
    OutputOptions,
    TieredOptions,
    add_options,
    add_plan_and_output_options,
    options_from,
    refuse_with_plan,
)

EPILOG = """examples:
  compress convert tiered --model demo --stats math.safetensors --tiers 0-1:4,2-3:3,4-5:2 --team-size 2 --out out/demo-tiered
  compress convert tiered --model openai/gpt-oss-20b --domain math --tiers 0-7:4,8-17:8,18-23:6 --team-size 4 --out gpt-oss-tiered
  compress convert tiered --model demo --domain code --recipe my_tiers.yaml --out out/t
  compress convert tiered --model demo --stats math.safetensors --plan-only --out teams.json   (edit it, then --plan teams.json)

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
    add_options(tiered, TieredOptions)
    add_plan_and_output_options(tiered, "apply this tiered plan JSON (from --plan-only, possibly edited)")
    add_options(tiered.add_argument_group("calibration data and compute (when profiling)"), CalibrationOptions)
    tiered.set_defaults(run=run_tiered)


def run_tiered(args) -> int:
    from ..jobs.source import open_model
    from ..jobs.tiered import convert_tiered

    refuse_with_plan(args, ("recipe", "tiers", "team_size", "team_top_k", "clustering"))
    result = convert_tiered(open_model(args.model), options_from(TieredOptions, args), options_from(OutputOptions, args),
                            calibration=options_from(CalibrationOptions, args), stats=args.stats, plan=args.plan,
                            plan_only=args.plan_only, command=args.command_line, progress=not args.quiet)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.summary())
    return 0
