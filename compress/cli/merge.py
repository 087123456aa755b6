"""`compress merge`: merge each layer's experts into fewer, write the smaller checkpoint."""

from __future__ import annotations

import argparse
import json

from ..jobs.options import (
    MODEL_HELP,
    CalibrationOptions,
    MergeOptions,
    OutputOptions,
    add_options,
    add_plan_and_output_options,
    options_from,
    refuse_with_plan,
)
from ..merging import DEFAULT_GROUPING
from ..merging.groupings import GROUPINGS

EPILOG = """examples:
  compress merge --model demo --domain math --keep 8 --out out/demo-math-merge8
  compress merge --model demo --domain math --keep 8 --compensate --out out/demo-math-merge8c
  compress merge --model openai/gpt-oss-20b --domain math --keep 16 --out gpt-oss-20b-math-merge16
  compress merge --model demo --domain code --keep 8 --plan-only --out merge.json   (edit it, then:)
  compress merge --model demo --plan merge.json --domain code --out out/demo-code-merged

groupings (default {default}), each decided on a sample of the calibration tokens:
{groupings}

Each new expert is the weighted average of its group's experts (every weight and bias, weights by
--merge-weights), or with --merge-method ties its most used member plus the TIES merge of the
others' differences from it; with --align weights or activations each member's neurons are first
permuted to match the dominant expert's (activations, the default: found on the calibration sample
and stored in the plan). Its router row is, by default, fitted in closed form on every calibration
token so that it is chosen where its members were (--router fitted: fitted in the grouping's own
pass; a plan file asking for it is refitted when applied, so it needs --domain then),
or its most used member's row, or their weighted sum. A group of one is that expert unchanged, so
a plan of one-expert groups is a prune. --compensate then
corrects, per layer and without training, each new expert's down projection by least squares on
every calibration token routed to it, so that the layer's output comes back toward the original's
(a fifth of the tokens is held out: the output reports the layer error on them before and after).
The output has the shapes of a pruned model and loads in stock transformers; MXFP4 sources stay
MXFP4 (merged experts re-quantised) unless --dequantize.
"""


def groupings_help() -> str:
    """One entry per grouping of the table (`merging.groupings`), as registered when the parser is built."""
    return "\n".join(f"  {name:<9} {grouping.help}" for name, grouping in GROUPINGS.items())


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("merge", help="merge groups of experts into one each and write the smaller checkpoint",
                                   description="Merge the routed experts of a MoE checkpoint, grouped on calibration text.",
                                   epilog=EPILOG.format(default=DEFAULT_GROUPING, groupings=groupings_help()),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help=MODEL_HELP)
    parser.add_argument("--revision", help="Hub branch, tag or commit (Hub ids only)")
    add_options(parser, MergeOptions)
    add_plan_and_output_options(parser, "apply this merge plan JSON (from --plan-only, possibly edited) instead of grouping",
                                plan_name="merge plan")
    add_options(parser.add_argument_group("calibration data and compute"), CalibrationOptions)
    parser.set_defaults(run=run)


def run(args) -> int:
    from ..jobs.merge import merge
    from ..jobs.source import open_model

    refuse_with_plan(args, ("keep", "keep_ratio", "grouping", "merge_weights", "router", "align", "merge_method"))
    result = merge(open_model(args.model, revision=args.revision), options_from(MergeOptions, args),
                   options_from(OutputOptions, args), calibration=options_from(CalibrationOptions, args), plan=args.plan,
                   plan_only=args.plan_only, command=args.command_line, progress=not args.quiet)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.summary())
    return 0
