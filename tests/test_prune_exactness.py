"""A pruned checkpoint, loaded with stock transformers, computes what the original model computes
when the dropped experts can never be chosen (router logits −inf; DeepSeek-V3: also out of the
biased choice), for every family, both on-disk layouts, MXFP4, and non-uniform plans."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from compress.checkpoint.files import read_config
from compress.checkpoint.mxfp4 import write_mxfp4_checkpoint
from compress.checkpoint.output import atomic_output_dir
from compress.checkpoint.reader import CheckpointReader
from compress.families import family_for_config, get_family
from compress.jobs.source import open_model
from compress.model_info import model_fingerprint
from compress.pruning.apply import apply_plan_to_model, write_pruned_checkpoint
from compress.pruning.plan import PrunePlan
from conftest import (
    FAMILIES,
    FP8_FAMILIES,
    GROUP_LIMITED,
    SAVED_LAYOUT,
    build_tiny_model,
    load_fp8_reference,
    saved_state_dict,
    write_fp8_checkpoint,
)

INPUT = torch.randint(3, 64, (2, 12), generator=torch.Generator().manual_seed(7))


def _plan(model, kept: dict[int, list[int]]) -> PrunePlan:
    family = family_for_config(model.config)
    top_k = family.top_k(model.config)
    source = {"model": "tiny", "fingerprint": model_fingerprint(model), "family": family.name,
              "num_experts": family.num_experts(model.config), "top_k": top_k}
    plan = PrunePlan(source, kept, min(top_k, min(len(k) for k in kept.values())))
    plan.check(family.moe_layer_indices(model), source["num_experts"], top_k, source["fingerprint"], family.routing_groups(model.config))
    return plan


def _masked_reference_logits(model, plan: PrunePlan) -> torch.Tensor:
    """The original model with each router's dropped experts made unselectable."""
    family = family_for_config(model.config)
    originals = {}
    for layer, kept in plan.layers.items():
        router = family.router(model, layer)
        dropped = torch.ones(plan.source["num_experts"], dtype=torch.bool)
        dropped[kept] = False
        buffers = {name: tensor.masked_fill(dropped, float("-inf")) for name, tensor in family.router_buffers(model, layer).items()}

        def masked_forward(hidden_states, *state, original=router.forward, dropped=dropped, buffers=buffers):
            logits = original(hidden_states, *state)[0].masked_fill(dropped, float("-inf"))
            weights, index = family.route(logits, model.config, buffers)
            return logits, weights, index

        originals[layer] = router.forward
        router.forward = masked_forward
    try:
        with torch.no_grad():
            return model(input_ids=INPUT).logits
    finally:
        for layer, forward in originals.items():
            family.router(model, layer).forward = forward


def _pruned_logits(directory) -> torch.Tensor:
    pruned = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    with torch.no_grad():
        return pruned(input_ids=INPUT).logits


def _prune(source, target, plan) -> None:
    with atomic_output_dir(target) as staging:
        write_pruned_checkpoint(open_model(str(source)), staging, plan, max_shard_bytes=40_000)


def _uniform_kept(family_name: str, layers: list[int]) -> dict[int, list[int]]:
    # DeepSeek's tiny config routes over 2 groups of 3: keep 2 per group.
    pattern = [[0, 2, 3, 5], [1, 2, 4, 5]] if family_name == "deepseek_v3" else [[0, 2, 3, 5], [5, 4, 1, 0]]
    return {layer: sorted(pattern[i % 2]) for i, layer in enumerate(layers)}


@pytest.mark.parametrize(("family_name", "layout"), [(family, layout) for family in FAMILIES for layout in ("save_pretrained", "fused")]
                         + [(family, "fp8") for family in FP8_FAMILIES])
def test_pruned_checkpoint_equals_masked_routing(family_name, layout, tmp_path):
    model = build_tiny_model(family_name)
    source = tmp_path / "source"
    if layout == "fused":
        model.config.save_pretrained(source)
        save_file(saved_state_dict(model), source / "model.safetensors", metadata={"format": "pt"})
    elif layout == "fp8":  # the reference is the FP8 checkpoint as transformers loads it
        model.save_pretrained(tmp_path / "plain")
        model = load_fp8_reference(write_fp8_checkpoint(tmp_path / "plain", source))
    else:
        model.save_pretrained(source, max_shard_size="40KB")
    family = get_family(family_name)
    plan = _plan(model, _uniform_kept(family_name, family.moe_layer_indices(model)))
    before = {p.name: p.read_bytes() for p in source.iterdir()}
    _prune(source, tmp_path / "pruned", plan)
    assert {p.name: p.read_bytes() for p in source.iterdir()} == before  # the source is never modified

    config = read_config(tmp_path / "pruned")
    assert family.num_experts(config) == 4 and family.top_k(config) == 2
    assert "auto_map" not in config and config["model_type"] == family_name  # stock classes load it
    reader = CheckpointReader(tmp_path / "pruned")
    expected_layout = "fused" if layout == "fused" else SAVED_LAYOUT[family_name]
    assert family.detect_layout(reader, min(plan.layers)).name == expected_layout
    if layout == "fp8":  # kept experts' FP8 weights and block multipliers as stored, renumbered
        stored = CheckpointReader(source)
        scaled = [key for key in stored.keys() if key.endswith("_scale_inv")]
        moved = {key.replace(f"experts.{old}.", f"experts.{new}."): key for key in scaled for layer, kept in plan.layers.items()
                 for new, old in enumerate(kept) if f"layers.{layer}." in key and f"experts.{old}." in key}
        moved.update({key.removesuffix("_scale_inv"): was.removesuffix("_scale_inv") for key, was in moved.items()})
        assert moved and all(torch.equal(reader.read(new).view(torch.uint8), stored.read(old).view(torch.uint8))
                             for new, old in moved.items())
    torch.testing.assert_close(_pruned_logits(tmp_path / "pruned"), _masked_reference_logits(model, plan), rtol=1e-5, atol=1e-5)


def test_keeping_fewer_experts_than_top_k_lowers_top_k(tmp_path):
    model = build_tiny_model("mixtral")
    model.save_pretrained(tmp_path / "source")
    plan = _plan(model, {0: [3], 1: [1]})
    assert plan.top_k == 1
    _prune(tmp_path / "source", tmp_path / "pruned", plan)
    assert read_config(tmp_path / "pruned")["num_experts_per_tok"] == 1
    torch.testing.assert_close(_pruned_logits(tmp_path / "pruned"), _masked_reference_logits(model, plan), rtol=1e-5, atol=1e-5)


def test_mxfp4_experts_stay_byte_exact(tmp_path):
    model = build_tiny_model("gpt_oss", hidden_size=64, intermediate_size=32, num_local_experts=4, head_dim=16)
    model.save_pretrained(tmp_path / "plain")
    write_mxfp4_checkpoint(tmp_path / "plain", tmp_path / "mxfp4", max_shard_bytes=40_000)
    original = AutoModelForCausalLM.from_pretrained(tmp_path / "mxfp4", dtype=torch.float32)  # dequantised on CPU
    plan = _plan(original, {0: [0, 2, 3], 1: [3, 1, 0]})
    _prune(tmp_path / "mxfp4", tmp_path / "pruned", plan)

    source, pruned = CheckpointReader(tmp_path / "mxfp4"), CheckpointReader(tmp_path / "pruned")
    quantized = [key for key in source.keys() if key.endswith(("_blocks", "_scales"))]
    assert len(quantized) == 8
    for key in quantized:
        layer = int(key.split(".")[2])
        assert pruned.entries[key].dtype == "U8"
        assert torch.equal(pruned.read(key), source.read(key)[plan.layers[layer]]), key
    assert read_config(tmp_path / "pruned")["quantization_config"]["quant_method"] == "mxfp4"
    torch.testing.assert_close(_pruned_logits(tmp_path / "pruned"), _masked_reference_logits(original, plan), rtol=1e-5, atol=1e-5)


def _non_uniform_pruned(family_name: str, tmp_path, fp8: bool = False):
    """(model, plan) after pruning the family's tiny model (as an FP8 checkpoint: as transformers
    loads that) to a different count in each MoE layer."""
    model = build_tiny_model(family_name)
    if fp8:
        model.save_pretrained(tmp_path / "plain")
        model = load_fp8_reference(write_fp8_checkpoint(tmp_path / "plain", tmp_path / "source"))
    else:
        model.save_pretrained(tmp_path / "source", max_shard_size="40KB")
    layers = get_family(family_name).moe_layer_indices(model)
    # Group-limited routing needs equal counts per group within a layer, not across layers.
    pattern = [[0, 1, 3, 4], [0, 1, 2, 3, 4, 5], [1, 2, 4, 5]] if family_name in GROUP_LIMITED else [[0, 1, 3, 4, 5], [1, 4], [0, 2, 3]]
    plan = _plan(model, {layer: pattern[i % 3] for i, layer in enumerate(layers)})
    assert not plan.uniform and plan.top_k == 2
    _prune(tmp_path / "source", tmp_path / "pruned", plan)
    return model, plan


@pytest.mark.parametrize(("family_name", "fp8"), [(family, False) for family in FAMILIES] + [(family, True) for family in FP8_FAMILIES])
def test_non_uniform_plan_loads_through_auto_classes_and_equals_masked_routing(family_name, fp8, tmp_path):
    model, plan = _non_uniform_pruned(family_name, tmp_path, fp8)
    config = read_config(tmp_path / "pruned")
    assert config["experts_per_layer"] == {str(layer): len(kept) for layer, kept in plan.layers.items()}
    assert config["auto_map"]["AutoModelForCausalLM"].startswith("modeling_moe_compress.")
    assert (tmp_path / "pruned" / "modeling_moe_compress.py").is_file()
    torch.testing.assert_close(_pruned_logits(tmp_path / "pruned"), _masked_reference_logits(model, plan), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family_name", ["gpt_oss", "qwen2_moe", "deepseek_v3"])
def test_non_uniform_checkpoints_load_with_their_own_modeling_file(family_name, tmp_path):
    """Without moe-compress: the checkpoint's own modeling file, through trust_remote_code."""
    model, plan = _non_uniform_pruned(family_name, tmp_path)
    script = (
        "import sys, json, torch; sys.modules['compress'] = None\n"
        "from transformers import AutoModelForCausalLM\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'pruned')!r}, trust_remote_code=True, dtype=torch.float32)\n"
        f"ids = torch.tensor({INPUT.tolist()})\n"
        "print(json.dumps(m(input_ids=ids).logits.tolist()))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    torch.testing.assert_close(torch.tensor(json.loads(result.stdout)), _masked_reference_logits(model, plan), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family_name", ["mixtral", "olmoe"])
def test_in_memory_plan_equals_the_written_checkpoint(family_name, tmp_path):
    model = build_tiny_model(family_name)
    model.save_pretrained(tmp_path / "source")
    plan = _plan(model, {0: [1, 2, 5], 1: [0, 3, 4, 5]})
    _prune(tmp_path / "source", tmp_path / "pruned", plan)
    apply_plan_to_model(model, plan)
    with torch.no_grad():
        in_memory = model(input_ids=INPUT).logits
    torch.testing.assert_close(in_memory, _pruned_logits(tmp_path / "pruned"), rtol=1e-6, atol=1e-6)


def test_layers_past_the_decoder_stack_are_dropped(tmp_path):
    """DeepSeek-V3 checkpoints carry a multi-token-prediction layer after the last decoder layer."""
    from safetensors.torch import load_file

    model = build_tiny_model("deepseek_v3")
    model.save_pretrained(tmp_path / "source")
    tensors = load_file(tmp_path / "source" / "model.safetensors")
    mtp = {k.replace("model.layers.2.", "model.layers.3."): v.clone() for k, v in tensors.items() if k.startswith("model.layers.2.")}
    mtp["model.layers.3.eh_proj.weight"] = torch.zeros(32, 64)
    save_file({**tensors, **mtp}, tmp_path / "source" / "model.safetensors", metadata={"format": "pt"})
    plan = _plan(model, {1: [0, 2, 3, 5], 2: [1, 2, 4, 5]})
    _prune(tmp_path / "source", tmp_path / "pruned", plan)
    keys = CheckpointReader(tmp_path / "pruned").keys()
    assert not [k for k in keys if k.startswith("model.layers.3.")]
    assert len([k for k in keys if k.startswith("model.layers.2.mlp.experts.")]) == 4 * 3
    torch.testing.assert_close(_pruned_logits(tmp_path / "pruned"), _masked_reference_logits(model, plan), rtol=1e-5, atol=1e-5)
