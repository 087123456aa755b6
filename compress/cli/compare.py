"""`compress compare`: a base model and candidates side by side."""

from __future__ import annotations

import argparse
import contextlib
import json

from .eval import add_eval_arguments, evaluate_resolved, resolve_and_check, settings_from

EPILOG = """examples:
  compress compare --base demo --candidate out/demo-math-keep8 --tasks perplexity:math,perplexity:code --max-tokens 20000
  compress compare --base demo --candidate out/a --candidate out/b --tasks compress_local --plot compare.png

Every metric with its absolute and relative change; results are cached (see `compress eval`).
"""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare", help="compare candidates with their base model on the same tasks",
        description="Evaluate a base model and candidates on the same tasks and show every metric's change.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--base", required=True, help="the reference model")
    parser.add_argument("--candidate", action="append", required=True, help="a derived model (repeatable)")
    add_eval_arguments(parser)
    parser.add_argument("--plot", metavar="PNG", help="write a bar chart of the relative changes")
    parser.add_argument("--json", action="store_true", help="print the comparison as JSON")
    parser.set_defaults(run=run)


def run(args) -> int:
    from ..checkpoint.output import claim_output
    from ..evals.compare import metric_changes, plot_comparison
    from ..evals.evaluate import parse_tasks
    from ..evals.model_card import evaluation_record, write_evaluation

    tasks = parse_tasks(args.tasks)
    settings = settings_from(args)
    base = resolve_and_check(args.base, "--base", settings)
    candidates = [resolve_and_check(spec, "--candidate", settings) for spec in args.candidate]
    plot = claim_output(args.plot, kind="report", flag="--plot", what="chart") if args.plot else contextlib.nullcontext()
    with plot as claimed:
        base_report = evaluate_resolved(base, args, tasks, settings)
        changes = {}
        for candidate in candidates:
            report = evaluate_resolved(candidate, args, tasks, settings)
            changes[candidate.name] = metric_changes(base_report, report)
            write_evaluation(candidate.path, evaluation_record("compare", report, changes[candidate.name], base.name))
        if claimed is not None:
            with claimed.write() as staging:
                plot_comparison(base.name, changes, staging)
    if args.json:
        print(json.dumps({name: [{**c.__dict__, "relative": c.relative} for c in rows] for name, rows in changes.items()}, indent=2))
    else:
        for name, rows in changes.items():
            print(f"{name} vs {base.name}")
            print(f"  {'task':<30} {'metric':<18} {'base':>10} {'candidate':>10} {'change':>10} {'relative':>9}")
            for c in rows:
                print(f"  {c.task:<30} {c.metric.split(',')[0]:<18} {c.base:>10.4f} {c.candidate:>10.4f} "
                      f"{c.absolute:>+10.4f} {c.relative:>+9.1%}")
    if args.plot:
        print(f"chart: {claimed.path}")
    return 0
