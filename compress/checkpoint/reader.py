"""Lazy, shard-aware reading of safetensors checkpoints.

`CheckpointReader` opens a directory holding either one ``model.safetensors`` or shards listed by
``model.safetensors.index.json``. Opening reads only the JSON headers (and checks that every file
is as long as its header says, so a truncated download is caught before any work starts). Tensors
are read one at a time through safetensors' memory map; `read_experts` reads only the requested
rows along the expert dimension, so pruning a 120B checkpoint touches the bytes it keeps.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from ..errors import CheckpointError

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
        self._headers: dict[str, dict] = {}
        self.weight_map = self._weight_map()
        self.entries: dict[str, TensorEntry] = {}
        for file in sorted(set(self.weight_map.values())):
            for key, entry in self._header(file).items():
                if key == "__metadata__":
                    continue
                start, end = entry["data_offsets"]
                self.entries[key] = TensorEntry(file, entry["dtype"], tuple(entry["shape"]), end - start)
        missing = sorted(set(self.weight_map) - set(self.entries))
        if missing:
            raise CheckpointError(
                f"the index of {self.directory} lists {len(missing)} tensors that no shard holds (first: {missing[0]}): "
                "the download is incomplete"
            )
        self._handles: dict[str, object] = {}

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
            self._headers[file] = read_safetensors_header(self.directory / file)
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

    # --- reading --------------------------------------------------------------------------------
    def _handle(self, file: str):
        if file not in self._handles:
            self._handles[file] = safe_open(str(self.directory / file), framework="pt")
        return self._handles[file]

    def _entry(self, key: str) -> TensorEntry:
        try:
            return self.entries[key]
        except KeyError:
            raise CheckpointError(f"tensor {key!r} is not in the checkpoint at {self.directory}") from None

    def read(self, key: str) -> torch.Tensor:
        return self._handle(self._entry(key).file).get_tensor(key)

    def read_experts(self, key: str, experts: list[int], dim: int = 0) -> torch.Tensor:
        """The rows `experts` (in that order) of tensor `key` along `dim`, reading only those rows.

        Consecutive ids are read as one slice, so keeping a contiguous range costs one read.
        """
        entry = self._entry(key)
        size = entry.shape[dim]
        bad = [e for e in experts if not 0 <= e < size]
        if bad:
            raise CheckpointError(f"expert ids {bad} are out of range for {key} ({size} experts)")
        tensor_slice = self._handle(entry.file).get_slice(key)
        parts, start = [], 0
        while start < len(experts):
            end = start
            while end + 1 < len(experts) and experts[end + 1] == experts[end] + 1:
                end += 1
            index = (slice(None),) * dim + (slice(experts[start], experts[end] + 1),)
            parts.append(tensor_slice[index])
            start = end + 1
        if not parts:  # no experts asked for: an empty slice keeps dtype and the other dims
            parts.append(tensor_slice[(slice(None),) * dim + (slice(0, 0),)])
        return torch.cat(parts, dim=dim) if len(parts) > 1 else parts[0]
