"""`compress push`: publish a derived checkpoint to the Hugging Face Hub with a complete card."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EPILOG = """examples:
  compress push out/demo-math-keep8 --repo my-org/demo-math-keep8 --dry-run
  compress push out/gpt-oss-20b-math-16 --repo my-org/gpt-oss-20b-math-16 --private
  compress push out/tiered-d --repo my-org/tiered --revision experiment-1 --commit-message "distilled 2k steps"
  compress push out/demo-math-keep8 --repo my-org/demo-math-keep8 --report            (adds report.html, linked from the card)
  compress push out/demo-math-keep8 --repo my-org/demo-math-keep8 --report routing.html

The token comes from huggingface_hub (HF_TOKEN or `hf auth login`) and is never printed. Large
folders upload in several commits and an interrupted upload resumes when run again. The card is
rebuilt from compress.json: metadata (base_model, license of the source, tags, model-index from
`compress eval`), what was done, the usage picture, evaluation and the command that made it.
"""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("push", help="publish a derived checkpoint to the Hugging Face Hub",
                                   description="Upload a derived checkpoint and its complete model card to the Hub.",
                                   epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", metavar="DIR", help="the derived checkpoint (written by compress)")
    parser.add_argument("--repo", required=True, help="Hub repository id, OWNER/NAME")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument("--revision", help="branch to push to (created when missing)")
    parser.add_argument("--commit-message", help="commit message (default: Upload with moe-compress)")
    parser.add_argument("--dry-run", action="store_true", help="list the files and print the card; upload nothing")
    parser.add_argument("--force", action="store_true", help="push even when the checkpoint looks incomplete")
    parser.add_argument("--report", nargs="?", const=True, metavar="FILE",
                        help="also upload a routing report as report.html, linked from the card: FILE from `compress report`, "
                             "or none to make one from DIR (its experts against their statistics, its evaluations)")
    parser.set_defaults(run=run)


def run(args) -> int:
    from ..publish import REPORT_FILE, plan_push, push

    plan = plan_push(Path(args.directory), args.repo, force=args.force, report=args.report)
    for path in plan.left_out:
        print(f"left out {path.name}: not one of the model's weight files, and engines that load every *.safetensors file "
              "would take it for weights", file=sys.stderr)
    if args.dry_run:
        total = sum(p.stat().st_size for p in plan.files)
        print(f"would upload to {args.repo}{' (private)' if args.private else ''}{f' @ {args.revision}' if args.revision else ''}:")
        for path in plan.files:
            print(f"  {path.name}  ({path.stat().st_size:,} bytes)")
        if plan.report is not None:
            total += len(plan.report.encode())
            print(f"  {REPORT_FILE}  ({len(plan.report.encode()):,} bytes, the routing report)")
        count = len(plan.files) + 1 + (plan.report is not None)
        print(f"  README.md  (the card below)\n{count} files, {total:,} bytes\n")
        print(str(plan.card))
        return 0
    url = push(Path(args.directory), args.repo, plan, private=args.private, revision=args.revision,
               commit_message=args.commit_message)
    print(f"pushed {len(plan.files)} files to {url}")
    return 0
