"""Lazy, shard-aware reading of safetensors checkpoints.

`CheckpointReader` opens a directory holding either one ``model.safetensors`` or shards listed by
``model.safetensors.index.json``. Opening reads only the JSON headers (and checks that every file
is as long as its header says, so a truncated download is caught before any work starts). Tensors
are read one at a time with positional reads straight into the tensor's memory (no memory map,
whose touched pages would count as resident memory); `read_experts` reads only the requested rows
along the expert dimension, so pruning a 120B checkpoint reads just the bytes it keeps and holds
one output tensor at a time.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError
from .dtypes import TORCH_DTYPES

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
PICKLE_PATTERNS = ("pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt")


@dataclass(frozen=True)
class TensorEntry:
    """Where a tensor lives and what it is, from the file header alone."""

    file: str
    dtype: str  # safetensors dtype name: "BF16", "F32", "U8", ...
    shape: tuple[int, ...]
    nbytes: int
    offset: int = 0  # where the tensor's bytes start in `file`


def read_safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file, after checking the file is complete."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise ValueError("shorter than the 8-byte header length")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > size - 8:
                raise ValueError(f"header claims {header_len} bytes but the file has {size - 8}")
            header = json.loads(handle.read(header_len))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({exc}): re-download or re-save the checkpoint"
        ) from exc
    data_end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    if 8 + header_len + data_end > size:
        raise CheckpointError(
            f"{path} is truncated: its header needs {8 + header_len + data_end} bytes but the file has {size}; "
            "re-download or re-save the checkpoint"
        )
    return header


class CheckpointReader:
    """Read tensors (or expert slices of them) from a safetensors checkpoint directory."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self._descriptors: dict[str, int] = {}  # open files, for positional reads
        self._headers: dict[str, dict] = {}
        self._header_bytes: dict[str, int] = {}
        self.weight_map = self._weight_map()
        self.entries: dict[str, TensorEntry] = {}
        for file in sorted(set(self.weight_map.values())):
            header = self._header(file)
            data_start = 8 + self._header_bytes[file]
            for key, entry in header.items():
                if key == "__metadata__":
                    continue
                start, end = entry["data_offsets"]
                self.entries[key] = TensorEntry(file, entry["dtype"], tuple(entry["shape"]), end - start, data_start + start)
        missing = sorted(set(self.weight_map) - set(self.entries))
        if missing:
            raise CheckpointError(
                f"the index of {self.directory} lists {len(missing)} tensors that no shard holds (first: {missing[0]}): "
                "the download is incomplete"
            )

    def _weight_map(self) -> dict[str, str]:
        index = self.directory / INDEX_FILE
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError) as exc:
                raise CheckpointError(f"{index} is not a valid safetensors index ({exc})") from exc
            for file in set(weight_map.values()):
                if not (self.directory / file).is_file():
                    raise CheckpointError(f"{index} names shard {file}, which is missing: the download is incomplete")
            return weight_map
        files = sorted(p.name for p in self.directory.glob("*.safetensors"))
        if SINGLE_FILE in files:
            files = [SINGLE_FILE]
        if len(files) == 1:
            return {key: files[0] for key in self._header(files[0]) if key != "__metadata__"}
        if len(files) > 1:
            raise CheckpointError(
                f"{self.directory} has {len(files)} safetensors files but no {INDEX_FILE}: cannot tell which belong to the model"
            )
        pickles = [p.name for pattern in PICKLE_PATTERNS for p in self.directory.glob(pattern)]
        if pickles:
            raise CheckpointError(
                f"{self.directory} holds only pickle weights ({pickles[0]}); moe-compress reads safetensors only. "
                "Convert them first: load with transformers and save_pretrained(..., safe_serialization=True)"
            )
        raise CheckpointError(f"{self.directory} holds no safetensors weights")

    def _header(self, file: str) -> dict:
        if file not in self._headers:
            path = self.directory / file
            self._headers[file] = read_safetensors_header(path)
            with open(path, "rb") as handle:
                (self._header_bytes[file],) = struct.unpack("<Q", handle.read(8))
        return self._headers[file]

    # --- what is there -------------------------------------------------------------------------
    def keys(self) -> list[str]:
        return list(self.entries)

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    @property
    def files(self) -> list[str]:
        return sorted(set(self.weight_map.values()))

    @property
    def total_bytes(self) -> int:
        return sum(entry.nbytes for entry in self.entries.values())

    # --- reading ---------------------------------------------------------------------------------
    def _entry(self, key: str) -> TensorEntry:
        try:
            return self.entries[key]
        except KeyError:
            raise CheckpointError(f"tensor {key!r} is not in the checkpoint at {self.directory}") from None

    def _read_into(self, buffer: memoryview, file: str, offset: int, key: str) -> None:
        try:
            if file not in self._descriptors:
                self._descriptors[file] = os.open(self.directory / file, os.O_RDONLY)
            done = 0
            while done < len(buffer):  # a single pread may return less than asked for
                count = os.preadv(self._descriptors[file], [buffer[done:]], offset + done)
                if count == 0:
                    raise CheckpointError(f"tensor {key} cannot be read: {self.directory / file} ended early (truncated "
                                          "while in use?); re-download or re-save the checkpoint")
                done += count
        except OSError as exc:
            raise CheckpointError(f"tensor {key} cannot be read from {self.directory / file} ({exc.strerror})") from None

    def _tensor(self, key: str, entry: TensorEntry, shape: tuple[int, ...], runs: list[tuple[int, int]]) -> torch.Tensor:
        """A tensor of `shape` filled from the byte ranges `runs` (offset, length) of `entry`'s file."""
        data = bytearray(sum(length for _, length in runs))
        view, position = memoryview(data), 0
        for offset, length in runs:
            self._read_into(view[position : position + length], entry.file, offset, key)
            position += length
        dtype = TORCH_DTYPES[entry.dtype]
        if not data:
            return torch.empty(shape, dtype=dtype)
        return torch.frombuffer(data, dtype=torch.uint8).view(dtype).reshape(shape)

    def read(self, key: str) -> torch.Tensor:
        entry = self._entry(key)
        return self._tensor(key, entry, entry.shape, [(entry.offset, entry.nbytes)])

    def read_experts(self, key: str, experts: list[int], dim: int = 0) -> torch.Tensor:
        """The rows `experts` (in that order) of tensor `key` along `dim`, reading only those rows.

        Along dim 0 (every expert dimension on disk) each run of consecutive ids is one read.
        """
        entry = self._entry(key)
        size = entry.shape[dim]
        bad = [e for e in experts if not 0 <= e < size]
        if bad:
            raise CheckpointError(f"expert ids {bad} are out of range for {key} ({size} experts)")
        if dim != 0:
            return self.read(key).index_select(dim, torch.tensor(experts, dtype=torch.long))
        row = entry.nbytes // size if size else 0
        runs, start = [], 0
        while start < len(experts):
            end = start
            while end + 1 < len(experts) and experts[end + 1] == experts[end] + 1:
                end += 1
            runs.append((entry.offset + experts[start] * row, (end - start + 1) * row))
            start = end + 1
        return self._tensor(key, entry, (len(experts), *entry.shape[1:]), runs)

    def close(self) -> None:
        for descriptor in self._descriptors.values():
            os.close(descriptor)
        self._descriptors.clear()

    def __del__(self) -> None:
        try:
            self.close()
        except (AttributeError, TypeError, OSError):  # at interpreter exit, `os` may already be gone
            pass
