"""`compress distill`: train a derived student (tiered or pruned) toward its teacher."""

from __future__ import annotations

import argparse

from ..jobs.options import MODEL_HELP, CalibrationOptions, DistillSettings, add_options, options_from

EPILOG = """examples:
  compress distill --teacher demo --student out/demo-tiered --domain math --steps 200 --out out/demo-tiered-distilled
  compress distill --teacher demo --student out/demo-math-keep4 --domain math --steps 200 --lr 3e-4 --out out/keep4-distilled
  compress distill ... --save-every 50 --out DIR          (interrupted? run it again with --resume)
  accelerate launch -m compress distill --teacher openai/gpt-oss-20b --student ./tiered --domain math --steps 2000 --out ./tiered-d

Loss = T^2 * KL(teacher || student) at temperature T (default 2) + 0.1 * MSE of the hidden states at
aligned layers (--hidden-weight, --hidden-layers). Training text: the built-in corpus's train split
of --domain, or --dataset. OUT gets the student, distill_log.jsonl, distill_loss.png, compress.json
and a model card. An interrupted run keeps OUT only when it holds a checkpoint to resume from.
"""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("distill", help="distil a derived (tiered or pruned) student from its teacher",
                                   description="Knowledge distillation of a student checkpoint from its teacher, on accelerate.",
                                   epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True, help=f"the original model: {MODEL_HELP}")
    parser.add_argument("--student", required=True, help="the derived checkpoint to train (directory)")
    add_options(parser, DistillSettings)
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    parser.add_argument("--overwrite", action="store_true", help="start over in --out if it is an earlier moe-compress output")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_options(parser.add_argument_group("training data and compute"), CalibrationOptions, required=("domain",),
                helps={"samples": "training windows (default: 128, or as many as the data holds)",
                       "batch_size": "windows per optimizer micro-batch"})
    parser.set_defaults(run=run)


def run(args) -> int:
    from ..jobs.distill import distill
    from ..jobs.source import open_model

    teacher, student = open_model(args.teacher, flag="--teacher"), open_model(args.student, flag="--student")
    result = distill(teacher, student, options_from(DistillSettings, args), options_from(CalibrationOptions, args), args.out,
                     resume=args.resume, overwrite=args.overwrite, command=args.command_line, progress=not args.quiet)
    print(result.summary())
    return 0
