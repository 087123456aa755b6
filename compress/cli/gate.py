"""`compress gate`: pass or fail a candidate against its base, for CI pipelines."""

from __future__ import annotations

import argparse
import json

from ..evals.evaluate import EvalSettings
from ..jobs.options import EvaluationOptions, add_options, non_negative_float, options_from

EPILOG = """examples:
  compress gate --base demo --candidate out/demo-math-keep8 --tasks perplexity:math --max-tokens 20000
  compress gate --base openai/gpt-oss-20b --candidate ./pruned --tasks perplexity:math,gsm8k --max-ppl-gap 0.10 --max-drop 0.03

Exit status: 0 the candidate passes, 1 it fails (every failing metric is printed), 2 bad input.
Perplexity-like metrics fail when candidate/base - 1 exceeds --max-ppl-gap; accuracy-like metrics
when base - candidate exceeds --max-drop. Verdict band by the worst perplexity gap:
  < 5% ship · 5-10% acceptable · 10-20% needs distillation · > 20% revise
"""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("gate", help="pass/fail a candidate against its base (exit 0/1)", epilog=EPILOG,
                                   description="Quality gate: evaluate base and candidate, compare, "
                                               "exit 0 when the candidate passes and 1 when not.",
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="the reference model")
    parser.add_argument("--candidate", required=True, help="the derived model to judge")
    add_options(parser, EvaluationOptions)
    add_options(parser, EvalSettings)
    parser.add_argument("--max-ppl-gap", type=non_negative_float, default=0.05,
                        help="largest relative perplexity increase, 0 or more (default: 0.05)")
    parser.add_argument("--max-drop", type=non_negative_float, default=0.02,
                        help="largest absolute accuracy drop, 0 or more (default: 0.02)")
    parser.add_argument("--json", action="store_true", help="print the verdict as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=run)


def run(args) -> int:
    from ..jobs.evaluate import gate
    from ..jobs.source import open_model

    base, candidate = open_model(args.base, flag="--base"), open_model(args.candidate, flag="--candidate")
    result = gate(base, candidate, options_from(EvaluationOptions, args), options_from(EvalSettings, args),
                  max_ppl_gap=args.max_ppl_gap, max_drop=args.max_drop, progress=not args.quiet)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.summary())
    return 0 if result.passed else 1
