"""`compress eval`: perplexity and lm-eval benchmarks of one model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..model_loading import DEVICES, DTYPES
from ..resolve import resolve_model

EPILOG = """examples:
  compress eval --model demo --tasks perplexity:math,perplexity:code
  compress eval --model out/demo-math-keep8 --tasks perplexity:math,compress_arithmetic --limit 200 --json eval.json
  compress eval --model ./ckpt --tasks perplexity:notes.txt,hellaswag,gsm8k --batch-size 16

tasks:
  perplexity:<domain>        held-out split of the built-in corpus (math, code, general)
  perplexity:<file>          a .txt / .jsonl / .parquet file (--text-field)
  perplexity:<owner/name>    a Hub dataset (--split, --text-field; needs the data extra)
  any lm-eval task or group  run by lm-eval on the loaded model (needs the eval extra)
  compress_arithmetic, compress_code_perplexity, compress_prose_perplexity
                             offline lm-eval tasks shipped in evals/tasks (tag compress_local)

Perplexity scores long texts with a strided window (--seq-len, --stride) and reports tokens, mean
NLL, perplexity and bits per byte. Results are cached per checkpoint, task and settings; on a
checkpoint written by moe-compress they are also added to its model card.
"""


def add_eval_arguments(parser) -> None:
    parser.add_argument("--tasks", required=True, help="comma-separated task names (see below)")
    parser.add_argument("--limit", type=int, help="documents / examples per task (default: all)")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass (default: 8)")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="auto: GPU(s) when present, else CPU (default: auto)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="auto", help="compute dtype (default: the checkpoint's)")
    parser.add_argument("--seq-len", type=int, help="perplexity window (default: the model's positions, at most 2048)")
    parser.add_argument("--stride", type=int, help="perplexity window step (default: half the window)")
    parser.add_argument("--text-field", help="record field(s) of perplexity files / Hub datasets (default: text)")
    parser.add_argument("--split", default="test", help="Hub dataset split for perplexity (default: test)")
    parser.add_argument("--no-cache", action="store_true", help="recompute even when cached results exist")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def settings_from(args):
    from ..errors import CompressError
    from ..evals.evaluate import EvalSettings

    if args.limit is not None and args.limit < 1:
        raise CompressError(f"--limit must be at least 1, not {args.limit}")
    if args.seq_len is not None and args.seq_len < 2:
        raise CompressError("--seq-len must be at least 2")
    if args.stride is not None and not 0 < args.stride <= (args.seq_len or args.stride):
        raise CompressError("--stride must be between 1 and --seq-len")
    return EvalSettings(limit=args.limit, batch_size=args.batch_size, max_length=args.seq_len, stride=args.stride,
                        dtype=args.dtype, text_field=args.text_field, split=args.split)


def evaluate_named(spec: str, args, tasks: list[str]) -> tuple[object, dict]:
    """(resolved model, evaluation report) for a --model / --base / --candidate argument."""
    from ..evals.evaluate import evaluate

    resolved = resolve_model(spec)
    return resolved, evaluate(resolved, tasks, settings_from(args), device=args.device, use_cache=not args.no_cache,
                              progress=not args.quiet)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="perplexity and lm-eval benchmarks of a model",
        description="Evaluate a model: strided perplexity on built-in, local or Hub text, and any lm-eval task.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="local directory, Hub id (OWNER/NAME) or `demo`")
    add_eval_arguments(parser)
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    parser.set_defaults(run=run)


def run(args) -> int:
    from ..evals.evaluate import parse_tasks
    from ..evals.model_card import evaluation_markdown, write_evaluation

    tasks = parse_tasks(args.tasks)
    settings_from(args)  # bad settings fail before any loading
    resolved, report = evaluate_named(args.model, args, tasks)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(f"{resolved.name}")
    print(f"{'task':<32} {'metric':<20} {'value':>12}")
    for task, result in report["tasks"].items():
        for metric, value in result["metrics"].items():
            print(f"{task:<32} {metric.split(',')[0]:<20} {value:>12.4f}{'  (cached)' if result.get('cached') else ''}")
    if write_evaluation(resolved.path, report, evaluation_markdown(report)):
        print(f"results added to {Path(resolved.path) / 'README.md'}")
    return 0
