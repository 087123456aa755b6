"""Texts → token streams and fixed-length windows, the unit every measurement runs on."""

from __future__ import annotations

import torch


def token_stream(tokenizer, texts: list[str]) -> torch.Tensor:
    """All texts tokenised and joined, each followed by the end-of-text token."""
    ids: list[int] = []
    for encoded in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        ids.extend(encoded)
        ids.append(tokenizer.eos_token_id)
    return torch.tensor(ids, dtype=torch.long)


def token_windows(stream: torch.Tensor, seq_len: int, count: int) -> torch.Tensor:
    """The first `count` non-overlapping windows of `seq_len` tokens, shape [count, seq_len]."""
    count = min(count, len(stream) // seq_len)
    return stream[: count * seq_len].view(count, seq_len)
