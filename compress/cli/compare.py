"""`compress compare`: a base model and candidates side by side."""

from __future__ import annotations

import argparse
import json

from ..evals.evaluate import EvalSettings
from ..jobs.options import EvaluationOptions, add_options, options_from

EPILOG = """examples:
  compress compare --base demo --candidate out/demo-math-keep8 --tasks perplexity:math,perplexity:code --max-tokens 20000
  compress compare --base demo --candidate out/a --candidate out/b --tasks compress_local --plot compare.png
  compress compare --base demo --candidate out/frontier/keep* --tasks perplexity:math,perplexity:general \
      --max-tokens 20000 --frontier frontier.png      (after `compress prune ... --keep 4,8,12 --out out/frontier`)

Every metric with its absolute and relative change; results are cached (see `compress eval`).
"""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("compare", help="compare candidates with their base model on the same tasks", epilog=EPILOG,
                                   description="Evaluate a base model and candidates on the same tasks and show every metric's change.",
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="the reference model")
    parser.add_argument("--candidate", action="append", nargs="+", required=True,
                        help="derived model(s); repeatable, and several may follow one flag (e.g. a shell glob OUT/keep*)")
    add_options(parser, EvaluationOptions)
    add_options(parser, EvalSettings)
    parser.add_argument("--plot", metavar="PNG", help="write a bar chart of the relative changes (.png, .svg or .pdf)")
    parser.add_argument("--frontier", metavar="PNG", help="write each task's quality against parameter count (a size frontier "
                        "of models derived from --base)")
    parser.add_argument("--overwrite", action="store_true", help="replace --plot / --frontier charts written earlier by "
                        "compress compare (other files are never replaced)")
    parser.add_argument("--json", action="store_true", help="print the comparison as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=run)


def run(args) -> int:
    from ..jobs.evaluate import compare
    from ..jobs.source import open_model

    base = open_model(args.base, flag="--base")
    candidates = [open_model(spec, flag="--candidate") for group in args.candidate for spec in group]
    result = compare(base, candidates, options_from(EvaluationOptions, args), options_from(EvalSettings, args),
                     plot=args.plot, frontier=args.frontier, overwrite=args.overwrite, progress=not args.quiet)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.summary())
    return 0
