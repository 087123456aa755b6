"""Texts → token streams and fixed-length windows, the unit every measurement runs on."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import torch

_TOKENIZE_CHUNK = 64  # texts tokenised per call: fast batch tokenisation, yet stops soon after `max_tokens`


def token_stream(tokenizer, texts: Iterable[str], max_tokens: int | None = None) -> torch.Tensor:
    """The texts tokenised and joined, each followed by the end-of-text token.

    With `max_tokens`, reading stops once the stream is that long, so a large file or a streamed
    Hub dataset is tokenised only as far as needed (the result may run a little past it).
    """
    ids: list[int] = []
    texts = iter(texts)
    while max_tokens is None or len(ids) < max_tokens:
        chunk = list(itertools.islice(texts, _TOKENIZE_CHUNK))
        if not chunk:
            break
        # verbose=False: texts longer than the model are expected here; they are cut into windows later
        for encoded in tokenizer(chunk, add_special_tokens=False, verbose=False)["input_ids"]:
            ids.extend(encoded)
            ids.append(tokenizer.eos_token_id)
    return torch.tensor(ids, dtype=torch.long)


def token_windows(stream: torch.Tensor, seq_len: int, count: int) -> torch.Tensor:
    """The first `count` non-overlapping windows of `seq_len` tokens, shape [count, seq_len]."""
    count = min(count, len(stream) // seq_len)
    return stream[: count * seq_len].view(count, seq_len)
