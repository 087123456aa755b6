"""Perplexity of a loaded causal LM on text."""

from __future__ import annotations

import math

import torch

from compress.data.tokens import token_stream, token_windows


@torch.no_grad()
def heldout_perplexity(model, tokenizer, texts: list[str], seq_len: int, windows: int, batch_size: int = 8) -> float:
    """exp(mean next-token NLL) over the first `windows` non-overlapping windows of the texts."""
    batches = token_windows(token_stream(tokenizer, texts), seq_len, windows)
    total_nll, total_tokens = 0.0, 0
    for batch in batches.split(batch_size):
        logprobs = torch.log_softmax(model(input_ids=batch).logits[:, :-1].float(), dim=-1)
        nll = -logprobs.gather(-1, batch[:, 1:, None]).squeeze(-1)
        total_nll += float(nll.sum())
        total_tokens += nll.numel()
    return math.exp(total_nll / total_tokens)
