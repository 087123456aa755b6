"""`compress profile`: measure a model's routing on calibration text and save the statistics."""

from __future__ import annotations

import argparse
import json

from ..jobs.options import MODEL_HELP, CalibrationOptions, add_options, options_from

EPILOG = """examples:
  compress profile --model demo --domain math --out math.stats.safetensors
  compress profile --model ./ckpt --domain legal --dataset cases.jsonl --text-field body --out legal.safetensors
  compress profile --model openai/gpt-oss-20b --domain math --dataset preset --samples 512 --out math.safetensors
  torchrun --nproc_per_node 4 -m compress profile --model openai/gpt-oss-120b --domain code --out code.safetensors

Statistics per MoE layer: tokens, top-k selections, top-1, gate mass, REAP and EAN sums,
co-activation, transitions from the previous MoE layer, router entropy, position-0 selections.
They are sums: combine runs with `compress stats merge`, read them with `compress stats show`.
The model is never loaded whole: one decoder layer at a time, its routed experts --experts-per-group
at a time (gpt-oss-120b calibrates in about 2 GB of memory).
Under torchrun the batches are dealt out over the processes and the sums all-reduced (gloo on
CPU, nccl on GPU); the file is the same as one process writes.
"""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "profile",
        help="measure routing statistics of a model on calibration text",
        description="Run calibration text through a MoE model and save its routing statistics (safetensors).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help=MODEL_HELP)
    parser.add_argument("--revision", help="Hub branch, tag or commit (Hub ids only)")
    add_options(parser.add_argument_group("calibration data and compute"), CalibrationOptions, required=("domain",))
    parser.add_argument("--out", required=True, help="statistics file to write (.safetensors)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it is a statistics file written by moe-compress")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the result summary as JSON")
    parser.set_defaults(run=run)


def run(args) -> int:
    from ..jobs.profile import profile
    from ..jobs.source import open_model

    result = profile(open_model(args.model, revision=args.revision), options_from(CalibrationOptions, args), out=args.out,
                     overwrite=args.overwrite, progress=not args.quiet)
    if result.out is not None:  # under torchrun, only the process that wrote the file reports
        print(json.dumps(result.to_dict(), indent=2) if args.json else result.summary())
    return 0
