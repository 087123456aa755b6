"""Load each output of a manifest in vLLM (its CPU build) and record what it computes.

Runs with the vLLM venv's Python, where moe-compress is installed for its vLLM plugin only:

    python engine_vllm.py MANIFEST.json RESULTS.json

MANIFEST.json: {"outputs": [{"name", "path", "family", "kind", "prompts": [[ids]], "greedy_tokens"}]}.
RESULTS.json: {"engine": "vllm", "version", "outputs": {name: {"status": "ok", "dtype",
"prompt_logprobs": [[log p(ids[i+1] | ids[:i+1])]], "greedy": [[ids]], "seconds"} or
{"status": "refused", "error": first line}}}, written after every model. MXFP4 checkpoints run in
bf16 (vLLM's CPU MXFP4 path computes in bf16); the rest in fp32.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
import traceback

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB: tiny models
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # one process: each model's errors stay catchable


def run_one(entry: dict) -> dict:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    config = json.load(open(os.path.join(entry["path"], "config.json")))
    dtype = "bfloat16" if "quantization_config" in config else "float32"
    start = time.perf_counter()
    llm = LLM(model=entry["path"], dtype=dtype, enforce_eager=True, max_model_len=256, seed=0, skip_tokenizer_init=True)
    try:
        params = SamplingParams(max_tokens=entry["greedy_tokens"], min_tokens=entry["greedy_tokens"], temperature=0.0,
                                prompt_logprobs=0, detokenize=False)
        outputs = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in entry["prompts"]], params, use_tqdm=False)
        logprobs = [[position[token].logprob for position, token in zip(out.prompt_logprobs[1:], ids[1:])]
                    for out, ids in zip(outputs, entry["prompts"])]
        greedy = [list(out.outputs[0].token_ids) for out in outputs]
    finally:
        del llm
        gc.collect()
    return {"status": "ok", "dtype": dtype, "prompt_logprobs": logprobs, "greedy": greedy,
            "seconds": round(time.perf_counter() - start, 1)}


def main() -> int:
    manifest_path, results_path = sys.argv[1:3]
    import vllm

    results = {"engine": "vllm", "version": vllm.__version__, "outputs": {}}
    for entry in json.load(open(manifest_path))["outputs"]:
        try:
            results["outputs"][entry["name"]] = run_one(entry)
        except Exception as exc:  # one model's refusal is a result, not the end of the run
            traceback.print_exc()
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            results["outputs"][entry["name"]] = {"status": "refused", "error": f"{type(exc).__name__}: {first}"}
        print(entry["name"], results["outputs"][entry["name"]]["status"], flush=True)
        with open(results_path, "w") as handle:
            json.dump(results, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
