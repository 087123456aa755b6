"""`compress gate`: pass or fail a candidate against its base, for CI pipelines."""

from __future__ import annotations

import argparse
import json

from .eval import add_eval_arguments, evaluate_resolved, resolve_and_check, settings_from
from .options import non_negative_float

EPILOG = """examples:
  compress gate --base demo --candidate out/demo-math-keep8 --tasks perplexity:math --max-tokens 20000
  compress gate --base openai/gpt-oss-20b --candidate ./pruned --tasks perplexity:math,gsm8k --max-ppl-gap 0.10 --max-drop 0.03

Exit status: 0 the candidate passes, 1 it fails (every failing metric is printed), 2 bad input.
Perplexity-like metrics fail when candidate/base - 1 exceeds --max-ppl-gap; accuracy-like metrics
when base - candidate exceeds --max-drop. Verdict band by the worst perplexity gap:
  < 5% ship · 5-10% acceptable · 10-20% needs distillation · > 20% revise
"""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "gate", help="pass/fail a candidate against its base (exit 0/1)",
        description="Quality gate: evaluate base and candidate, compare, exit 0 when the candidate passes and 1 when not.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--base", required=True, help="the reference model")
    parser.add_argument("--candidate", required=True, help="the derived model to judge")
    add_eval_arguments(parser)
    parser.add_argument("--max-ppl-gap", type=non_negative_float, default=0.05,
                        help="largest relative perplexity increase, 0 or more (default: 0.05)")
    parser.add_argument("--max-drop", type=non_negative_float, default=0.02, help="largest absolute accuracy drop, 0 or more (default: 0.02)")
    parser.add_argument("--json", action="store_true", help="print the verdict as JSON")
    parser.set_defaults(run=run)


def run(args) -> int:
    from ..evals.compare import gate, metric_changes
    from ..evals.evaluate import parse_tasks
    from ..evals.model_card import evaluation_record, write_evaluation

    tasks = parse_tasks(args.tasks)
    settings = settings_from(args)
    base = resolve_and_check(args.base, "--base", settings)
    candidate = resolve_and_check(args.candidate, "--candidate", settings)
    base_report = evaluate_resolved(base, args, tasks, settings)
    report = evaluate_resolved(candidate, args, tasks, settings)
    changes = metric_changes(base_report, report)
    verdict = gate(changes, args.max_ppl_gap, args.max_drop)
    write_evaluation(candidate.path, evaluation_record("gate", report, changes, base.name, verdict))
    if args.json:
        print(json.dumps({"passed": verdict.passed, "band": verdict.band, "worst_ppl_gap": verdict.worst_ppl_gap,
                          "failures": verdict.failures}, indent=2))
    else:
        gap = f"worst perplexity gap {verdict.worst_ppl_gap:+.1%}; " if verdict.worst_ppl_gap is not None else ""
        print(f"{'PASS' if verdict.passed else 'FAIL'}: {candidate.name} vs {base.name}: {gap}band: {verdict.band}")
        for failure in verdict.failures:
            print(f"  failing: {failure}")
    return 0 if verdict.passed else 1
