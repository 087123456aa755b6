"""Perplexity of a loaded causal LM on text, with a strided window for long texts.

The texts are tokenised and joined (each followed by the end-of-text token) into one stream.
Windows of `max_length` tokens start every `stride` tokens; each window scores only the tokens
that no earlier window scored, so with ``stride < max_length`` every scored token (after the
first window) sees at least ``max_length - stride`` tokens of context — the method of the
transformers documentation ("Perplexity of fixed-length models"). The very first token of the
stream is never scored, having no context.

Reported: scored tokens, mean negative log-likelihood (nats/token), perplexity = exp(mean NLL) and
bits per byte = total NLL in bits / UTF-8 bytes of the texts (comparable across tokenizers).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from compress.data.tokens import token_stream


@dataclass(frozen=True)
class PerplexityResult:
    tokens: int
    nll: float  # mean, nats per token
    perplexity: float
    bits_per_byte: float

    def to_dict(self) -> dict:
        return asdict(self)


def _windows(length: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored position) of each window over a stream of `length` tokens."""
    windows, scored_until, begin = [], 1, 0
    while scored_until < length:
        end = min(begin + max_length, length)
        windows.append((begin, end, max(scored_until, begin + 1)))
        scored_until = end
        begin += stride
    return windows


@torch.no_grad()
def token_logprobs(model, ids: torch.Tensor) -> torch.Tensor:
    """log p(ids[:, j + 1] | ids[:, : j + 1]) [B, L - 1] in fp32, on the CPU: from a transformers
    model's logits, or from an engine that computes them itself (`evals.vllm_backend.VllmScorer`)."""
    if hasattr(model, "token_logprobs"):
        return model.token_logprobs(ids)
    ids = ids.to(model.get_input_embeddings().weight.device)
    logprobs = torch.log_softmax(model(input_ids=ids).logits[:, :-1].float(), dim=-1)
    return logprobs.gather(-1, ids[:, 1:, None]).squeeze(-1).cpu()


@torch.no_grad()
def stream_perplexity(model, stream: torch.Tensor, max_length: int, stride: int | None = None, batch_size: int = 8,
                      text_bytes: int | None = None, progress: bool = False) -> PerplexityResult:
    """Perplexity of one token stream [N]; `text_bytes` (UTF-8 bytes it encodes) gives bits per byte."""
    stride = stride or max_length
    if not 0 < stride <= max_length:
        raise ValueError(f"stride must be in (0, max_length]; got {stride} with max_length {max_length}")
    windows = _windows(len(stream), max_length, stride)
    total_nll, total_tokens = 0.0, 0
    # Windows of one length batch together (all but the last have max_length tokens).
    groups: dict[int, list[tuple[int, int, int]]] = {}
    for window in windows:
        groups.setdefault(window[1] - window[0], []).append(window)
    bar = tqdm(total=len(windows), unit="window", desc="perplexity", disable=not progress)
    for group in groups.values():
        for start in range(0, len(group), batch_size):
            chunk = group[start : start + batch_size]
            nll = -token_logprobs(model, torch.stack([stream[begin:end] for begin, end, _ in chunk]))  # [:, j]: token j + 1
            for row, (begin, _, first) in enumerate(chunk):
                scored = nll[row, first - begin - 1 :]
                total_nll += float(scored.double().sum())
                total_tokens += scored.numel()
            bar.update(len(chunk))
    bar.close()
    mean = total_nll / max(total_tokens, 1)
    bits = total_nll / math.log(2)
    return PerplexityResult(total_tokens, mean, math.exp(mean), bits / text_bytes if text_bytes else float("nan"))


def text_perplexity(model, tokenizer, texts: list[str], max_length: int, stride: int | None = None, batch_size: int = 8,
                    progress: bool = False, max_tokens: int | None = None) -> PerplexityResult:
    """Perplexity of `texts` joined into one stream (see the module docstring); with `max_tokens`,
    of the stream's first `max_tokens` + 1 tokens only (bits per byte then counts the bytes those
    tokens decode to)."""
    stream = token_stream(tokenizer, texts, max_tokens=None if max_tokens is None else max_tokens + 1)
    if max_tokens is not None and len(stream) > max_tokens + 1:
        stream = stream[: max_tokens + 1]  # the first token is context only
        text_bytes = len(tokenizer.decode(stream, skip_special_tokens=True).encode("utf-8"))
    else:
        text_bytes = sum(len(text.encode("utf-8")) for text in texts)
    return stream_perplexity(model, stream, max_length, stride, batch_size, text_bytes, progress)


def heldout_perplexity(model, tokenizer, texts: list[str], seq_len: int, windows: int, batch_size: int = 8) -> float:
    """Perplexity over the first `windows` non-overlapping windows of `seq_len` tokens of the texts."""
    stream = token_stream(tokenizer, texts, max_tokens=windows * seq_len)[: windows * seq_len]
    return stream_perplexity(model, stream, seq_len, seq_len, batch_size).perplexity
