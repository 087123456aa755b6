"""A derived checkpoint's tensors decided before anything is read, then streamed into shards.

Every writer (pruning, merging, tiered conversion) first plans its output from the source's
safetensors headers alone: a `CheckpointPlan` holds one `TensorCopy` per output tensor (which
source tensor, which expert rows, what to compute from them) and its `TensorSpec`. `write_tensors`
then streams them into sharded safetensors, one tensor in memory at a time, after checking that
the filesystem has room (in the manner of mergekit's plan → lazy loader → streaming writer).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .output import ensure_free_space
from .reader import CheckpointReader
from .writer import ShardedCheckpointWriter, TensorSpec


@dataclass
class TensorCopy:
    key: str | None  # None: a tensor computed from nothing read (`compute` makes it)
    new_key: str
    experts: list[int] | None = None  # rows kept along `dim`; None: the whole tensor
    dim: int = 0
    compute: Callable[[torch.Tensor | None], torch.Tensor] | None = None  # applied to what was read


@dataclass
class CheckpointPlan:
    """What the output holds, decided from headers alone: one `TensorCopy` per output tensor."""

    copies: list[TensorCopy] = field(default_factory=list)
    specs: list[TensorSpec] = field(default_factory=list)
    dropped_keys: list[str] = field(default_factory=list)


def write_tensors(reader: CheckpointReader, staging: Path, tensors: CheckpointPlan, max_shard_bytes: int, progress: bool) -> None:
    """Stream the planned tensors into sharded safetensors, one tensor in memory at a time (after
    checking that the filesystem has room for all of them)."""
    total = sum(spec.nbytes for spec in tensors.specs)
    ensure_free_space(staging, total)
    with ShardedCheckpointWriter(staging, tensors.specs, max_shard_bytes) as writer, \
            tqdm(total=total, unit="B", unit_scale=True, desc="writing", disable=not progress) as bar:
        for copy, spec in zip(tensors.copies, tensors.specs):
            if copy.key is None:
                tensor = None
            elif copy.experts is None:
                tensor = reader.read(copy.key)
            else:
                tensor = reader.read_experts(copy.key, copy.experts, copy.dim)
            if copy.compute is not None:
                tensor = copy.compute(tensor)
            writer.write(copy.new_key, tensor)
            bar.update(spec.nbytes)
            del tensor  # one tensor in memory at a time
    reader.close()
