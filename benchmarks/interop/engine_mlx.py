"""Run the interop manifest through mlx-lm (Apple MLX; on Linux the CPU build) and write its results.

    python engine_mlx.py MANIFEST.json RESULTS.json

Runs with the python of a virtual environment holding mlx-lm for Linux CPU, installed with
`pip install 'mlx-lm[cpu]==0.32.2'` (mlx-lm only depends on mlx on macOS; its `cpu` extra pulls
`mlx[cpu]`, that is mlx + mlx-cpu); it imports nothing from this project. Each output's folder is
loaded with `mlx_lm.utils.load_model` (local folder, stock config handling, no tokenizer), its
floating-point parameters cast to float32 (bf16 -> fp32 is exact; quantized weights, e.g. MXFP4,
stay packed and are dequantised by MLX's kernels), and for every prompt:

- prompt_logprobs[i] = log p(prompt[i+1] | prompt[:i+1]): float32 log_softmax over the vocabulary
  of the logits of one forward pass over the prompt (len(prompt) - 1 values);
- greedy: `greedy_tokens` argmax tokens after the whole prompt, decoded one at a time with the
  model's KV cache (the prompt's pass fills it), without stopping at EOS.

The loop, refusals and the results file are manifest_runner.py's.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # folders are local; never reach for the Hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import mlx.core as mx  # noqa: E402
import mlx_lm  # noqa: E402
from manifest_runner import run_manifest  # noqa: E402
from mlx_lm.models.cache import make_prompt_cache  # noqa: E402
from mlx_lm.utils import load_model  # noqa: E402


def run_prompt(model, prompt: list[int], greedy_tokens: int) -> tuple[list[float], list[int]]:
    if not prompt:
        raise ValueError("empty prompt")
    cache = make_prompt_cache(model)
    logits = model(mx.array([prompt], dtype=mx.int32), cache=cache)[0].astype(mx.float32)  # [L, V]
    logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    targets = mx.array(prompt[1:], dtype=mx.int32)
    picked = mx.take_along_axis(logprobs[:-1], targets[:, None], axis=-1)[:, 0] if len(prompt) > 1 else mx.zeros((0,))
    greedy: list[int] = []
    if greedy_tokens > 0:
        token = mx.argmax(logits[-1], axis=-1)
        greedy.append(int(token.item()))
        for _ in range(greedy_tokens - 1):
            step = model(mx.array([[greedy[-1]]], dtype=mx.int32), cache=cache)[0, -1].astype(mx.float32)
            greedy.append(int(mx.argmax(step, axis=-1).item()))
    return [float(x) for x in picked.tolist()], greedy


def run_output(entry: dict) -> dict:
    start = time.perf_counter()
    model, _config = load_model(Path(entry["path"]))
    model.set_dtype(mx.float32)  # floating parameters only (the default predicate)
    mx.eval(model.parameters())
    prompt_logprobs, greedy = [], []
    for prompt in entry["prompts"]:
        lp, tokens = run_prompt(model, [int(t) for t in prompt], int(entry.get("greedy_tokens", 0)))
        prompt_logprobs.append(lp)
        greedy.append(tokens)
    seconds = time.perf_counter() - start
    del model
    mx.clear_cache()
    return {"status": "ok", "prompt_logprobs": prompt_logprobs, "greedy": greedy, "seconds": round(seconds, 4)}


if __name__ == "__main__":
    sys.exit(run_manifest("mlx-lm", mlx_lm.__version__, run_output, sys.argv[1:]))
