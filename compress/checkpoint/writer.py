"""Streaming writer of sharded safetensors checkpoints.

The caller declares every output tensor up front (name, dtype, shape: a plan knows them before
reading any weights), so each shard's header can be written before its data and tensors then
stream to disk one at a time. Peak memory is the largest single tensor, not a shard. Shards are
named ``model-0000i-of-0000N.safetensors`` with a ``model.safetensors.index.json`` carrying
``total_size``, or ``model.safetensors`` alone when everything fits in one shard. The same
declarations and tensors always give the same bytes.

Use it inside `atomic_output_dir` so a failure leaves nothing behind.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError
from .dtypes import SAFETENSORS_DTYPES
from .files import DEFAULT_MAX_SHARD_BYTES
from .reader import INDEX_FILE, SINGLE_FILE


@dataclass(frozen=True)
class TensorSpec:
    """One output tensor as declared before writing."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count * torch.empty((), dtype=self.dtype).element_size()


def plan_shards(specs: list[TensorSpec], max_shard_bytes: int) -> list[list[TensorSpec]]:
    """Cut the declared tensors, in order, into shards of at most `max_shard_bytes` (a larger tensor gets its own)."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards


class ShardedCheckpointWriter:
    """Write declared tensors, in declaration order, into sharded safetensors files."""

    def __init__(self, directory: str | Path, specs: list[TensorSpec], max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES):
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names):
            raise CheckpointError("the output declares a tensor name twice")
        self.directory = Path(directory)
        self.shards = plan_shards(specs, max_shard_bytes)
        count = len(self.shards)
        self.file_names = (
            [SINGLE_FILE] if count == 1 else [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
        )
        self._order = [(shard, spec) for shard, shard_specs in enumerate(self.shards) for spec in shard_specs]
        self._next = 0
        self._handle = None
        self._open_shard = -1

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if self._next >= len(self._order):
            raise CheckpointError(f"tensor {name} was not declared for this output")
        shard, spec = self._order[self._next]
        if name != spec.name:
            raise CheckpointError(f"tensors must be written in declaration order: expected {spec.name}, got {name}")
        if tensor.dtype != spec.dtype or tuple(tensor.shape) != spec.shape:
            raise CheckpointError(
                f"{name}: declared {spec.dtype} {list(spec.shape)}, got {tensor.dtype} {list(tensor.shape)}"
            )
        if shard != self._open_shard:
            self._start_shard(shard)
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        self._handle.write(memoryview(data.numpy()))  # the tensor's own memory, no copy
        self._next += 1

    def _start_shard(self, shard: int) -> None:
        if self._handle is not None:
            self._handle.close()
        header: dict = {"__metadata__": {"format": "pt"}}
        offset = 0
        for spec in self.shards[shard]:
            header[spec.name] = {
                "dtype": SAFETENSORS_DTYPES[spec.dtype],
                "shape": list(spec.shape),
                "data_offsets": [offset, offset + spec.nbytes],
            }
            offset += spec.nbytes
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)  # data starts 8-byte aligned, as safetensors writes it
        self._handle = open(self.directory / self.file_names[shard], "wb")
        self._handle.write(len(encoded).to_bytes(8, "little"))
        self._handle.write(encoded)
        self._open_shard = shard

    def close(self) -> None:
        """Finish the last shard and write the index; every declared tensor must have been written."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if self._next != len(self._order):
            missing = self._order[self._next][1].name
            raise CheckpointError(f"output incomplete: {len(self._order) - self._next} tensors not written (next: {missing})")
        if len(self.file_names) > 1:
            weight_map = {spec.name: self.file_names[shard] for shard, spec in self._order}
            index = {
                "metadata": {"total_size": sum(spec.nbytes for _, spec in self._order)},
                "weight_map": dict(sorted(weight_map.items())),
            }
            (self.directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")

    def __enter__(self) -> ShardedCheckpointWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self._handle is not None:
            self._handle.close()
