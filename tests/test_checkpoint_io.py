"""Lazy reader, streaming writer, atomic output, support files."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from compress.checkpoint.files import copy_support_files, read_config, write_config
from compress.checkpoint.output import atomic_output_dir
from compress.checkpoint.reader import CheckpointReader
from compress.checkpoint.writer import ShardedCheckpointWriter, TensorSpec
from compress.errors import CheckpointError, OutputExistsError


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randn(6, 5, 4, generator=g).to(torch.bfloat16),
        "b.bias": torch.randn(7, generator=g),
        "c.blocks": torch.randint(0, 255, (6, 3, 2, 16), generator=g, dtype=torch.uint8),
        "d.scalar": torch.tensor(3.5, dtype=torch.float16),
        "e.big": torch.randn(64, 64, generator=g),
    }


def _write(directory, tensors, max_shard_bytes):
    specs = [TensorSpec(name, t.dtype, tuple(t.shape)) for name, t in tensors.items()]
    with ShardedCheckpointWriter(directory, specs, max_shard_bytes=max_shard_bytes) as writer:
        for name, tensor in tensors.items():
            writer.write(name, tensor)
    return writer


def test_writer_streams_shards_that_safetensors_and_our_reader_read_back(tmp_path):
    tensors = _tensors()
    writer = _write(tmp_path, tensors, max_shard_bytes=600)
    files = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    assert len(files) == len(writer.file_names) >= 3
    assert files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(tensors)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    loaded = {}
    for file in files:
        with safe_open(str(tmp_path / file), "pt") as handle:  # the reference implementation
            assert handle.metadata() == {"format": "pt"}
        loaded.update(load_file(tmp_path / file))
    reader = CheckpointReader(tmp_path)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor)
        assert torch.equal(reader.read(name), tensor)


def test_single_shard_is_model_safetensors_without_index(tmp_path):
    _write(tmp_path, _tensors(), max_shard_bytes=10**9)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_same_inputs_give_the_same_bytes(tmp_path):
    digests = []
    for run in ("one", "two"):
        (tmp_path / run).mkdir()
        _write(tmp_path / run, _tensors(), max_shard_bytes=600)
        digests.append({p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((tmp_path / run).iterdir())})
    assert digests[0] == digests[1]


def test_writer_refuses_undeclared_order_shape_and_missing_tensors(tmp_path):
    specs = [TensorSpec("x", torch.float32, (2,)), TensorSpec("y", torch.float32, (3,))]
    writer = ShardedCheckpointWriter(tmp_path, specs)
    with pytest.raises(CheckpointError, match="declaration order"):
        writer.write("y", torch.zeros(3))
    with pytest.raises(CheckpointError, match=r"declared torch.float32 \[2\], got torch.float16 \[2\]"):
        writer.write("x", torch.zeros(2, dtype=torch.float16))
    writer.write("x", torch.zeros(2))
    with pytest.raises(CheckpointError, match="1 tensors not written"):
        writer.close()


def test_read_experts_reads_selected_rows_along_any_dim(tmp_path):
    weight = torch.arange(8 * 3 * 2, dtype=torch.float32).view(8, 3, 2)
    save_file({"w": weight, "t": weight.transpose(0, 1).contiguous()}, tmp_path / "model.safetensors")
    reader = CheckpointReader(tmp_path)
    for selection in ([0], [7, 2, 3, 4], [1, 2, 3], []):
        assert torch.equal(reader.read_experts("w", selection), weight[selection])
        assert torch.equal(reader.read_experts("t", selection, dim=1), weight.transpose(0, 1)[:, selection])
    with pytest.raises(CheckpointError, match="out of range"):
        reader.read_experts("w", [8])
    with pytest.raises(CheckpointError, match="not in the checkpoint"):
        reader.read("missing")


def test_truncated_file_is_reported_before_reading(tmp_path):
    save_file({"w": torch.zeros(100, 100)}, tmp_path / "model.safetensors")
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        CheckpointReader(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x01")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        CheckpointReader(tmp_path)


def test_missing_shard_and_pickle_only_directories(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "model-00001-of-00002.safetensors"}}))
    with pytest.raises(CheckpointError, match="missing"):
        CheckpointReader(tmp_path)
    pickle_dir = tmp_path / "pickle"
    pickle_dir.mkdir()
    (pickle_dir / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(CheckpointError, match="safetensors only"):
        CheckpointReader(pickle_dir)


def test_atomic_output_dir(tmp_path):
    target = tmp_path / "out"
    with atomic_output_dir(target) as staging:
        (staging / "f").write_text("1")
        assert not target.exists()  # nothing visible until the block finishes
    assert (target / "f").read_text() == "1"
    with pytest.raises(OutputExistsError, match="--overwrite"):
        with atomic_output_dir(target):
            pass
    with pytest.raises(OutputExistsError, match="not a moe-compress output"):  # only our own outputs are replaced
        with atomic_output_dir(target, overwrite=True):
            pass
    (target / "compress.json").write_text('{"tool": "moe-compress"}')
    with pytest.raises(RuntimeError):
        with atomic_output_dir(target, overwrite=True) as staging:
            (staging / "f").write_text("2")
            raise RuntimeError("crash half way")
    assert (target / "f").read_text() == "1"  # the old output survives a failed overwrite
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with atomic_output_dir(target, overwrite=True) as staging:
        (staging / "g").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["g"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging or retired leftovers


def test_support_files_and_config(tmp_path):
    source, target = tmp_path / "src", tmp_path / "dst"
    source.mkdir(), target.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json", "other.txt"):
        (source / name).write_text(name)
    copied = copy_support_files(source, target)
    assert sorted(copied) == ["chat_template.jinja", "generation_config.json", "tokenizer.json", "tokenizer_config.json"]
    assert not (target / "other.txt").exists()
    write_config(target, {"b": 1, "a": [2]})
    assert read_config(target) == {"a": [2], "b": 1}
    with pytest.raises(CheckpointError, match="no config.json"):
        read_config(source)
