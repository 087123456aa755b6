"""Perplexity throughput: `compress eval` versus lm-eval's own `hf` model on the same checkpoint.

Both score the same documents (the built-in corpus's held-out code files, the
``compress_code_perplexity`` task) from the checkpoint's path, model loading included:

* ours: `compress.evals.evaluate.evaluate` with task ``perplexity:code``, non-overlapping windows
  of the model's length (the same work as lm-eval's rolling log-likelihood);
* lm-eval: ``simple_evaluate(model="hf", model_args="pretrained=PATH,...")`` on
  ``compress_code_perplexity``.

Runs alternate (ours, lm-eval, ours, lm-eval); the best of each is reported as tokens/s, where
tokens are the scored tokens of our run.

    python benchmarks/eval_throughput.py [--model demo --dtype float32 --batch-size 8 --repeats 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from compress.evals.evaluate import EvalSettings, evaluate
from compress.evals.harness import task_manager
from compress.jobs.source import open_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    os.environ["MOE_COMPRESS_CACHE"] = tempfile.mkdtemp()  # never a cached result
    import lm_eval

    source = open_model(args.model)
    positions = min(source.raw_config.get("max_position_embeddings") or 2048, 2048)
    manager = task_manager()
    ours, theirs, tokens = [], [], None
    for _ in range(args.repeats):
        start = time.perf_counter()
        report = evaluate(source, ["perplexity:code"], EvalSettings(batch_size=args.batch_size, dtype=args.dtype,
                                                                      seq_len=positions, stride=positions),
                          device=args.device, use_cache=False, progress=False)
        ours.append(time.perf_counter() - start)
        tokens = report["tasks"]["perplexity:code"]["metrics"]["tokens"]

        start = time.perf_counter()
        result = lm_eval.simple_evaluate(
            model="hf", model_args=f"pretrained={source.path},dtype={args.dtype},device={args.device}",
            tasks=["compress_code_perplexity"], batch_size=args.batch_size, task_manager=manager,
            log_samples=False, bootstrap_iters=0,
        )
        theirs.append(time.perf_counter() - start)
    ours_bpb = report["tasks"]["perplexity:code"]["metrics"]["bits_per_byte"]
    theirs_bpb = result["results"]["compress_code_perplexity"]["bits_per_byte,none"]
    print(f"{source.name}, {args.dtype}, {args.device}, batch {args.batch_size}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; held-out code, {tokens:,} tokens")
    print(f"compress eval perplexity  {min(ours):7.2f} s  {tokens / min(ours):10,.0f} tok/s   bits/byte {ours_bpb:.4f}")
    print(f"lm-eval hf rolling        {min(theirs):7.2f} s  {tokens / min(theirs):10,.0f} tok/s   bits/byte {theirs_bpb:.4f}")
    print(f"speed ratio ours/lm-eval: {min(theirs) / min(ours):.2f}x")


if __name__ == "__main__":
    main()
