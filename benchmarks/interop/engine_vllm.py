"""Load each output of a manifest in vLLM (its CPU build) and record what it computes.

Runs with the vLLM venv's Python, where moe-compress is installed (without its dependencies) for
its vLLM plugin and `compress.evals.vllm_backend`, whose scorer gives the prompt log-probabilities:

    python engine_vllm.py MANIFEST.json RESULTS.json

MANIFEST.json: {"outputs": [{"name", "path", "family", "kind", "prompts": [[ids]], "greedy_tokens"}]}.
RESULTS.json (see manifest_runner.py): per output {"status": "ok", "dtype", "prompt_logprobs":
[[log p(ids[i+1] | ids[:i+1])]], "greedy": [[ids]], "seconds"} or {"status": "refused", "error"}.
MXFP4 checkpoints run in bf16 (vLLM's CPU MXFP4 path computes in bf16); the rest in fp32.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time

from manifest_runner import run_manifest

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB: tiny models
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # one process: each model's errors stay catchable


def run_one(entry: dict) -> dict:
    import torch
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from compress.evals.vllm_backend import VllmScorer

    config = json.load(open(os.path.join(entry["path"], "config.json")))
    dtype = "bfloat16" if "quantization_config" in config else "float32"
    start = time.perf_counter()
    llm = LLM(model=entry["path"], dtype=dtype, enforce_eager=True, max_model_len=256, seed=0, skip_tokenizer_init=True)
    try:
        scorer = VllmScorer(llm)
        logprobs = [scorer.token_logprobs(torch.tensor([ids]))[0].tolist() for ids in entry["prompts"]]
        params = SamplingParams(max_tokens=entry["greedy_tokens"], min_tokens=entry["greedy_tokens"], temperature=0.0,
                                detokenize=False)
        outputs = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in entry["prompts"]], params, use_tqdm=False)
        greedy = [list(out.outputs[0].token_ids) for out in outputs]
    finally:
        del llm
        gc.collect()
    return {"status": "ok", "dtype": dtype, "prompt_logprobs": logprobs, "greedy": greedy,
            "seconds": round(time.perf_counter() - start, 1)}


if __name__ == "__main__":
    import vllm

    sys.exit(run_manifest("vllm", vllm.__version__, run_one, sys.argv[1:]))
