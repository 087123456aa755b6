"""`compress eval`: perplexity and lm-eval benchmarks of one model."""

from __future__ import annotations

import argparse
import contextlib
import json

from .options import MODEL_HELP, add_compute_arguments, positive_int

EPILOG = """examples:
  compress eval --model demo --tasks perplexity:math,perplexity:code --max-tokens 20000
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
NLL, perplexity and bits per byte; --max-tokens bounds its cost (a few long documents can hold
hundreds of windows, so --limit alone does not). Results are cached per checkpoint, task and
settings; on a checkpoint written by moe-compress they are also added to its model card, and
limited runs are marked there as not full evaluations.
"""


def add_eval_arguments(parser) -> None:
    parser.add_argument("--tasks", required=True, help="comma-separated task names (see below)")
    parser.add_argument("--limit", type=positive_int, help="documents / examples per task (default: all)")
    parser.add_argument("--max-tokens", type=positive_int, help="tokens scored per perplexity task (default: all)")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="sequences per forward pass (default: 8)")
    add_compute_arguments(parser)
    parser.add_argument("--seq-len", type=positive_int, help="perplexity window (default: the model's positions, at most 2048)")
    parser.add_argument("--stride", type=positive_int, help="perplexity window step, at most --seq-len (default: half the window)")
    parser.add_argument("--text-field", help="record field(s) of perplexity files / Hub datasets (default: text)")
    parser.add_argument("--split", default="test", help="Hub dataset split for perplexity (default: test)")
    parser.add_argument("--no-cache", action="store_true", help="recompute even when cached results exist")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def settings_from(args):
    from ..errors import CompressError
    from ..evals.evaluate import EvalSettings

    if args.seq_len is not None and args.seq_len < 2:
        raise CompressError("--seq-len must be at least 2")
    if args.stride is not None and args.seq_len is not None and args.stride > args.seq_len:
        raise CompressError(f"--stride {args.stride} is longer than --seq-len {args.seq_len}: use a stride from 1 to {args.seq_len}")
    return EvalSettings(limit=args.limit, max_tokens=args.max_tokens, batch_size=args.batch_size, max_length=args.seq_len,
                        stride=args.stride, dtype=args.dtype, text_field=args.text_field, split=args.split)


def resolve_and_check(spec: str, flag: str, settings):
    """A model argument resolved and its checkpoint checked (files, tensors, settings) before any evaluation."""
    from ..checkpoint.files import read_config
    from ..evals.evaluate import check_settings
    from ..model_loading import check_checkpoint
    from ..resolve import resolve_model

    resolved = resolve_model(spec, flag=flag)
    check_checkpoint(resolved.path)
    check_settings(read_config(resolved.path), settings)
    return resolved


def evaluate_resolved(resolved, args, tasks: list[str], settings) -> dict:
    from ..evals.evaluate import evaluate

    return evaluate(resolved, tasks, settings, device=args.device, use_cache=not args.no_cache, progress=not args.quiet)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="perplexity and lm-eval benchmarks of a model",
        description="Evaluate a model: strided perplexity on built-in, local or Hub text, and any lm-eval task.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help=MODEL_HELP)
    add_eval_arguments(parser)
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    parser.set_defaults(run=run)


def run(args) -> int:
    from ..checkpoint.output import claim_output
    from ..evals.evaluate import parse_tasks
    from ..evals.model_card import evaluation_record, limit_text, write_evaluation

    tasks = parse_tasks(args.tasks)
    settings = settings_from(args)
    resolved = resolve_and_check(args.model, "--model", settings)
    with claim_output(args.json, kind="report", flag="--json", what="results file") if args.json else contextlib.nullcontext() as claimed:
        report = evaluate_resolved(resolved, args, tasks, settings)
        if claimed is not None:
            with claimed.write() as staging:
                staging.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{resolved.name}" + (f"  (limited to {limit_text(report['settings'])})" if limit_text(report["settings"]) else ""))
    print(f"{'task':<32} {'metric':<20} {'value':>12}")
    for task, result in report["tasks"].items():
        for metric, value in result["metrics"].items():
            print(f"{task:<32} {metric.split(',')[0]:<20} {value:>12.4f}{'  (cached)' if result.get('cached') else ''}")
    if write_evaluation(resolved.path, evaluation_record("eval", report)):
        print(f"results added to {resolved.path / 'README.md'}")
    return 0

