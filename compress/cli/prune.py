"""`compress prune`: keep the experts a domain needs, write a smaller checkpoint."""

from __future__ import annotations

import argparse
import json

from ..jobs.options import (
    MODEL_HELP,
    CalibrationOptions,
    OutputOptions,
    SelectionOptions,
    add_options,
    add_plan_and_output_options,
    options_from,
    refuse_with_plan,
)
from ..pruning import DEFAULT_CRITERION
from ..pruning.criteria import CRITERIA

EPILOG = """examples:
  compress prune --model demo --domain math --keep 8 --out out/demo-math-keep8
  compress prune --model openai/gpt-oss-20b --domain math --keep 16 --dataset preset --out gpt-oss-20b-math-16
  compress prune --model ./ckpt --stats code.safetensors --keep-ratio 0.5 --budget global --out ckpt-code-half
  compress prune --model demo --domain math:0.8,general:0.2 --keep 8 --compensate --out out/demo-mixed-keep8c
  compress prune --model demo --domain math --keep 4,8,12 --out out/frontier   (writes out/frontier/keep4, keep8, keep12)
  compress prune --model demo --domain code --keep 8 --plan-only --out plan.json   (edit it, then:)
  compress prune --model demo --plan plan.json --out out/demo-code-edited

criteria (higher score = kept; default {default}):
{criteria}

Without --stats the model is profiled first on --domain calibration text (see `compress profile`).
--compensate then refits, per layer and without training, each kept expert's down projection by
least squares so the layer's output on calibration tokens stays close to the full layer's (it
needs --domain even with --stats or --plan; MXFP4 down projections are then re-quantised). On the
demo model it took math perplexity at keep 8 from 4.21 to 1.99 (base 1.88): benchmarks/RESULTS.md.
The output keeps the source's key convention, MXFP4 stays byte-exact MXFP4 (without --compensate), and uniform plans load
in stock transformers; global budgets need `compress.register()` or trust_remote_code=True.
A tiered model (`compress convert tiered`) is pruned by whole teams: --keep counts teams.
"""


def criteria_help() -> str:
    """One line per criterion of the table (`pruning.criteria`), as registered when the parser is built."""
    return "\n".join(f"  {name:<12} {criterion.help}" for name, criterion in CRITERIA.items())


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("prune", help="remove the experts a domain uses least and write the smaller checkpoint",
                                   description="Prune the routed experts of a MoE checkpoint, driven by routing statistics.",
                                   epilog=EPILOG.format(default=DEFAULT_CRITERION, criteria=criteria_help()),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help=MODEL_HELP)
    parser.add_argument("--revision", help="Hub branch, tag or commit (Hub ids only)")
    add_options(parser, SelectionOptions)
    parser.add_argument("--stats", help="routing statistics from `compress profile` (default: profile now)")
    add_plan_and_output_options(parser, "apply this plan JSON (from --plan-only, possibly edited) instead of selecting")
    add_options(parser.add_argument_group("calibration data and compute (when profiling)"), CalibrationOptions)
    parser.set_defaults(run=run)


def run(args) -> int:
    from ..jobs.prune import prune
    from ..jobs.source import open_model

    refuse_with_plan(args, ("keep", "keep_ratio", "criterion", "budget", "min_per_layer", "protect", "seed"))
    result = prune(open_model(args.model, revision=args.revision), options_from(SelectionOptions, args),
                   options_from(OutputOptions, args), calibration=options_from(CalibrationOptions, args), stats=args.stats,
                   plan=args.plan, plan_only=args.plan_only, command=args.command_line, progress=not args.quiet)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.summary())
    return 0
