"""`compress info MODEL`: family, layers, experts, top-k, parameters and on-disk format."""

from __future__ import annotations

import argparse
import json

from ..jobs.options import MODEL_HELP

EPILOG = """examples:
  compress info demo
  compress info ./my-checkpoint --json
  compress info openai/gpt-oss-20b      (downloads safetensors, config and tokenizer only)
"""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "info",
        help="describe a MoE checkpoint: family, layers, experts, top-k, parameters, format",
        description="Describe a Mixture-of-Experts checkpoint without loading its weights.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    parser.add_argument("--revision", help="Hub branch, tag or commit (Hub ids only)")
    parser.add_argument("--json", action="store_true", help="print the description as JSON")
    parser.set_defaults(run=run)


def run(args) -> int:
    from ..display import render_info
    from ..jobs.source import open_model

    info = open_model(args.model, revision=args.revision, flag="").info
    print(json.dumps(info.to_dict(), indent=2) if args.json else render_info(info))
    return 0
