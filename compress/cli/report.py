"""`compress report INPUT... -o report.html`: one self-contained HTML page to look at routing."""

from __future__ import annotations

import argparse

EPILOG = """examples:
  compress report math.moe-stats code.moe-stats general.moe-stats -o routing.html
  compress report math.moe-stats --model demo --prompt "Q: What is 12 + 7?" -o routing.html
  compress report out/demo-math-keep8 out/frontier -o derived.html

INPUT is any of: a routing statistics file (`compress profile`; several domains of one model add
divergence per layer), an output of moe-compress (kept, dropped and merged experts per layer
against the statistics that chose them, and its evaluation records), or a size frontier folder
(quality against size per task, from `compress compare` records). --model with --prompt adds
token-level routing. The page needs no network: scripts, styles and data are inside the file.
"""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("report", help="one self-contained HTML page of routing, derived models and frontiers",
                                   description="Write a routing report: heatmaps, per-layer summaries, domain divergence, "
                                               "token-level routing, layer comparison, derived models and size frontiers.",
                                   epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", metavar="INPUT", nargs="*", help="statistics files, derived outputs or frontier folders")
    parser.add_argument("--model", help="a model for token-level routing of --prompt (a directory, Hub id or demo)")
    parser.add_argument("--prompt", action="append", default=[], help="text whose routing to show, token by token (repeatable)")
    parser.add_argument("--title", help="the page's title (default: moe-compress routing report)")
    parser.add_argument("-o", "--out", required=True, help="the HTML file to write (never inside a model folder)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it is a report written by compress report")
    parser.set_defaults(run=run)


def run(args) -> int:
    from ..jobs.report import report

    print(report(args.inputs, args.out, model=args.model, prompts=args.prompt, title=args.title, overwrite=args.overwrite).summary())
    return 0
