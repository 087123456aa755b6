"""MXFP4: our gpt-oss checkpoints in the published layout load in stock transformers, and their
experts equal an independent, element-by-element dequantisation."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from compress.checkpoint.mxfp4 import dequantize, quantize, write_mxfp4_checkpoint
from compress.checkpoint.reader import CheckpointReader
from compress.errors import CheckpointError
from compress.families import get_family
from conftest import build_tiny_model

E2M1_MAGNITUDES = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


def reference_dequantize(blocks: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """A plain-Python reading of the format (openai/gpt-oss weights.py): for each byte the low
    nibble is the even element; bit 3 of a nibble is the sign; the block scale is 2**(s - 127)."""
    *lead, groups, _ = blocks.shape
    flat_blocks = blocks.reshape(-1, groups, 16).tolist()
    flat_scales = scales.reshape(-1, groups).tolist()
    rows = []
    for row_blocks, row_scales in zip(flat_blocks, flat_scales):
        row = []
        for block, scale in zip(row_blocks, row_scales):
            for byte in block:
                for nibble in (byte & 0x0F, byte >> 4):
                    magnitude = E2M1_MAGNITUDES[nibble & 0b0111]
                    row.append(math.ldexp(-magnitude if nibble & 0b1000 else magnitude, scale - 127))
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float32).reshape(*lead, groups * 32)


def test_dequantize_equals_the_reference():
    g = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 256, (2, 3, 2, 16), generator=g, dtype=torch.uint8)
    scales = torch.randint(110, 135, (2, 3, 2), generator=g, dtype=torch.uint8)
    assert torch.equal(dequantize(blocks, scales, torch.float32), reference_dequantize(blocks, scales))


def test_quantize_is_exact_on_representable_values_and_close_otherwise():
    g = torch.Generator().manual_seed(1)
    blocks = torch.randint(0, 256, (4, 8, 2, 16), generator=g, dtype=torch.uint8)
    scales = torch.randint(115, 130, (4, 8, 2), generator=g, dtype=torch.uint8)
    exact = reference_dequantize(blocks, scales)
    assert torch.equal(dequantize(*quantize(exact), dtype=torch.float32), exact)
    weight = torch.randn(16, 64, generator=g)
    approx = dequantize(*quantize(weight), dtype=torch.float32)
    assert (approx - weight).norm() / weight.norm() < 0.2  # FP4 with per-32 scales
    with pytest.raises(CheckpointError, match="multiple of 32"):
        quantize(torch.zeros(2, 48))


@pytest.fixture(scope="module")
def mxfp4_checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("mxfp4")
    # FP4 blocks hold 32 values: hidden and intermediate sizes must be multiples of 32.
    model = build_tiny_model("gpt_oss", hidden_size=64, intermediate_size=32, num_local_experts=4, head_dim=16)
    model.save_pretrained(root / "plain")
    write_mxfp4_checkpoint(root / "plain", root / "mxfp4", max_shard_bytes=40_000)
    return model, root / "plain", root / "mxfp4"


def test_layout_matches_the_published_gpt_oss_checkpoints(mxfp4_checkpoint):
    model, _, directory = mxfp4_checkpoint
    reader = CheckpointReader(directory)
    hidden, inter, experts = 64, 32, 4
    for layer in range(2):
        prefix = f"model.layers.{layer}.mlp.experts."
        expected = {
            "gate_up_proj_blocks": ("U8", (experts, 2 * inter, hidden // 32, 16)),
            "gate_up_proj_scales": ("U8", (experts, 2 * inter, hidden // 32)),
            "down_proj_blocks": ("U8", (experts, hidden, inter // 32, 16)),
            "down_proj_scales": ("U8", (experts, hidden, inter // 32)),
            "gate_up_proj_bias": ("F32", (experts, 2 * inter)),
            "down_proj_bias": ("F32", (experts, hidden)),
        }
        for suffix, (dtype, shape) in expected.items():
            entry = reader.entries[prefix + suffix]
            assert (entry.dtype, entry.shape) == (dtype, shape), suffix
        assert prefix + "gate_up_proj" not in reader and prefix + "down_proj" not in reader
    config = json.loads((directory / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "mxfp4"
    assert "model.layers.*.mlp.router" in config["quantization_config"]["modules_to_not_convert"]
    assert len(reader.files) > 1 and (directory / "model.safetensors.index.json").exists()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_stock_transformers_loads_it_and_experts_equal_the_reference(mxfp4_checkpoint, dtype):
    _, _, directory = mxfp4_checkpoint
    loaded = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype)
    reader = CheckpointReader(directory)
    family = get_family("gpt_oss")
    for layer in range(2):
        experts = loaded.model.layers[layer].mlp.experts
        for name in ("gate_up_proj", "down_proj"):
            key = f"model.layers.{layer}.mlp.experts.{name}"
            reference = reference_dequantize(reader.read(key + "_blocks"), reader.read(key + "_scales")).transpose(1, 2)
            assert torch.equal(getattr(experts, name).float(), reference.to(dtype).float())
            ours = family.read_module_tensor(reader, layer, name, [3, 1])
            assert torch.equal(ours.float(), reference[[3, 1]].to(torch.bfloat16).float())
    output = loaded.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=4, do_sample=False)
    assert output.shape == (1, 7)


def test_mxfp4_keeps_the_other_tensors_and_quantises_close_to_the_source(mxfp4_checkpoint):
    model, plain, directory = mxfp4_checkpoint
    source, written = CheckpointReader(plain), CheckpointReader(directory)
    for key in source.keys():
        if key.endswith(("experts.gate_up_proj", "experts.down_proj")):
            weight = source.read(key)
            approx = reference_dequantize(written.read(key + "_blocks"), written.read(key + "_scales")).transpose(1, 2)
            assert (approx - weight).norm() / weight.norm() < 0.2
        else:
            assert torch.equal(written.read(key), source.read(key)), key


def test_expert_slices_of_mxfp4_are_byte_exact(mxfp4_checkpoint):
    _, _, directory = mxfp4_checkpoint
    reader = CheckpointReader(directory)
    key = "model.layers.1.mlp.experts.down_proj_blocks"
    assert torch.equal(reader.read_experts(key, [2, 0]), reader.read(key)[[2, 0]])


def test_refuses_non_gpt_oss_and_already_quantised(mxfp4_checkpoint, tiny_checkpoints, tmp_path):
    _, _, directory = mxfp4_checkpoint
    with pytest.raises(CheckpointError, match="already MXFP4"):
        write_mxfp4_checkpoint(directory, tmp_path / "again")
    with pytest.raises(CheckpointError, match="for gpt-oss checkpoints"):
        write_mxfp4_checkpoint(tiny_checkpoints["mixtral"][1], tmp_path / "mixtral")
    assert not (tmp_path / "again").exists() and not (tmp_path / "mixtral").exists()


def test_info_reports_mxfp4(mxfp4_checkpoint, capsys):
    from compress.cli import main

    _, _, directory = mxfp4_checkpoint
    assert main(["info", str(directory), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["key_layout"], info["mxfp4"], info["experts_per_layer"]) == ("mxfp4", True, {"0": 4, "1": 4})
    assert info["tensor_dtypes"]["U8"] == 8  # blocks and scales of two projections in two layers
