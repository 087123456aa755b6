"""Neuron alignment before merging (`compress/merging/align.py`).

The planted permutations are written here from each layout's definition (gpt-oss: gate/up columns
interleaved, gate even; Aria: gate/up columns as a gate half and an up half; every other family:
gate/up rows, halves), and each planted copy is checked to compute exactly what its original
computes before anything else uses it.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from compress.checkpoint.output import atomic_output_dir
from compress.families import get_family
from compress.jobs.source import open_model
from compress.kernels.reference import routed_expert_outputs
from compress.layer_sample import LayerSample, capture_layer_inputs
from compress.merging.align import activation_permutations, align_to
from compress.merging.apply import apply_merge_to_model, write_merged_checkpoint
from compress.merging.compensate import MergedExperts
from compress.merging.plan import MergePlan
from conftest import build_tiny_model, cli_error

DOMINANT, COPY = 3, 5  # in one routing group of the tiny configs that have two (experts 3-5)
# The copy merges with its original; two others merge unaligned; the rest stay. Two new experts
# per routing group of three, as group-limited routing needs.
GROUPS = [[DOMINANT, COPY], [4], [0, 2], [1]]
WEIGHTS = [[0.3, 0.7], [1.0], [0.5, 0.5], [1.0]]


def _planted(family_name: str, tensors: dict, permutation: torch.Tensor) -> dict:
    """One expert's tensors with its intermediate neuron permutation[j] moved to position j."""
    size = len(permutation)
    interleaved = torch.stack([2 * permutation, 2 * permutation + 1], dim=1).flatten()
    out = {}
    for name, tensor in tensors.items():
        if name == "down_proj_bias":  # over the hidden size: no neurons in it
            out[name] = tensor.clone()
        elif family_name == "gpt_oss":  # gate_up [H, 2I] (gate even, up odd), its bias [2I], down [I, H]
            out[name] = tensor[:, interleaved] if name == "gate_up_proj" else tensor[interleaved] if name == "gate_up_proj_bias" \
                else tensor[permutation]
        elif family_name == "aria_text":  # gate_up [H, 2I] (gate half, up half), down [I, H]
            out[name] = tensor[:, torch.cat([permutation, permutation + size])] if name == "gate_up_proj" else tensor[permutation]
        else:  # gate_up [2I, H] (gate half, up half), down [H, I]
            out[name] = tensor[torch.cat([permutation, permutation + size])] if name == "gate_up_proj" else tensor[:, permutation]
    return out


def _expert(family, experts, index: int) -> dict:
    return {name: getattr(experts, name).detach()[index] for name in family.expert_tensors if getattr(experts, name, None) is not None}


def _with_a_permuted_copy(family_name: str, noise: float = 0.0):
    """(model, permutation): expert COPY of every MoE layer is expert DOMINANT with its neurons in a
    random order (plus `noise` relative to the weights' scale)."""
    model = build_tiny_model(family_name).float()
    family = get_family(family_name)
    generator = torch.Generator().manual_seed(11)
    layer = family.moe_layer_indices(model)[0]
    down = family.experts(model, layer).down_proj
    size = down.shape[1] if family_name in ("gpt_oss", "aria_text") else down.shape[2]
    permutation = torch.randperm(size, generator=generator)
    with torch.no_grad():
        for layer in family.moe_layer_indices(model):
            experts = family.experts(model, layer)
            for name, value in _planted(family_name, _expert(family, experts, DOMINANT), permutation).items():
                getattr(experts, name)[COPY] = value + noise * value.abs().mean() * torch.randn(value.shape, generator=generator)
    return model, permutation


WINDOWS = torch.randint(3, 64, (4, 16), generator=torch.Generator().manual_seed(5))


def _samples(model) -> dict[int, LayerSample]:
    """Every MoE layer's `LayerSample` of `WINDOWS`."""
    return {layer: LayerSample.of_model(model, layer, hidden, logits)
            for layer, (hidden, logits) in capture_layer_inputs(model, WINDOWS, batch_size=4).items()}


def _plan(model, family_name: str, alignment: str) -> MergePlan:
    family = get_family(family_name)
    source = {"model": "tiny", "num_experts": family.num_experts(model.config), "top_k": family.top_k(model.config)}
    layers = family.moe_layer_indices(model)
    permutations = {}
    if alignment == "activations":  # found on the calibration sample, as the grouping pass finds them
        permutations = {layer: [[None if p is None else p.tolist() for p in activation_permutations(sample, group)] for group in GROUPS]
                        for layer, sample in _samples(model).items()}
    plan = MergePlan(source, {layer: GROUPS for layer in layers}, {layer: WEIGHTS for layer in layers}, 2, alignment=alignment,
                     permutations=permutations)
    plan.check(layers, {layer: source["num_experts"] for layer in layers}, source["top_k"], None, family.routing_groups(model.config))
    return plan


# One model type per way of storing experts: gate/up interleaved in columns (gpt-oss, fused on disk),
# in column halves (Aria, its own fused names), in row halves fused on disk (Granite) or one key per
# expert under each family's names (the rest), with group-limited routing and shared experts (DeepSeek-V3).
# `test_families` holds every definition's shapes, which alignment reads, to its modules.
LAYOUTS = ("gpt_oss", "aria_text", "granitemoe", "mixtral", "qwen3_moe", "deepseek_v3", "minimax_m2", "ernie4_5_moe")


@pytest.mark.parametrize("family_name", LAYOUTS)
def test_a_member_that_is_the_dominant_expert_with_permuted_neurons_merges_back_to_it(family_name, tmp_path):
    model, _ = _with_a_permuted_copy(family_name)
    family = get_family(family_name)
    layer = family.moe_layer_indices(model)[0]
    experts = family.experts(model, layer)
    hidden = torch.randn(7, model.config.hidden_size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():  # the planted copy computes what its original computes
        torch.testing.assert_close(routed_expert_outputs(experts, hidden, torch.full((7, 1), COPY)),
                                   routed_expert_outputs(experts, hidden, torch.full((7, 1), DOMINANT)), rtol=1e-5, atol=1e-6)
    original = {layer: _expert(family, family.experts(model, layer), DOMINANT) for layer in family.moe_layer_indices(model)}
    model.save_pretrained(tmp_path / "source")

    for alignment in ("weights", "activations", "none"):
        plan = _plan(model, family_name, alignment)
        with atomic_output_dir(tmp_path / alignment) as staging:
            write_merged_checkpoint(open_model(str(tmp_path / "source")), staging, plan)
        on_disk = AutoModelForCausalLM.from_pretrained(tmp_path / alignment, dtype=torch.float32)
        in_memory = build_tiny_model(family_name).float()
        in_memory.load_state_dict(model.state_dict())
        apply_merge_to_model(in_memory, plan)
        for merged in (on_disk, in_memory):
            for layer, expected in original.items():
                got = _expert(family, family.experts(merged, layer), 0)
                if alignment != "none":
                    for name in expected:
                        torch.testing.assert_close(got[name], expected[name], rtol=1e-6, atol=1e-7)
                else:  # averaged as they are, the two orders of the same neurons blur
                    assert not torch.allclose(got["down_proj"], expected["down_proj"], atol=1e-3)


@pytest.mark.parametrize("noise", [0.0, 0.1])
@pytest.mark.parametrize("family_name", ["gpt_oss", "qwen3_moe", "deepseek_v3"])
def test_alignment_recovers_a_planted_permutation(family_name, noise):
    model, permutation = _with_a_permuted_copy(family_name, noise)
    family = get_family(family_name)
    experts = family.experts(model, family.moe_layer_indices(model)[0])
    found = align_to(family, _expert(family, experts, DOMINANT), _expert(family, experts, COPY))
    # the copy's neuron j is the original's neuron permutation[j]: the original's neuron i sits at argsort(permutation)[i]
    assert torch.equal(found, torch.argsort(permutation))


@pytest.mark.parametrize("noise", [0.0, 0.1])
@pytest.mark.parametrize("family_name", ["gpt_oss", "qwen3_moe", "deepseek_v3"])
def test_alignment_on_activations_recovers_a_planted_permutation(family_name, noise):
    model, permutation = _with_a_permuted_copy(family_name, noise)
    for sample in _samples(model).values():
        dominant, found = activation_permutations(sample, [DOMINANT, COPY])
        assert dominant is None and torch.equal(found, torch.argsort(permutation))


def test_compensation_fits_the_aligned_merge():
    model, _ = _with_a_permuted_copy("qwen3_moe")
    family = get_family("qwen3_moe")
    plan = _plan(model, "qwen3_moe", "weights")
    windows = torch.randint(3, 64, (4, 16), generator=torch.Generator().manual_seed(5))
    layer, (hidden, logits) = next(iter(capture_layer_inputs(model, windows, batch_size=4).items()))
    sample = LayerSample.of_model(model, layer, hidden, logits)
    load = MergedExperts(sample, plan.merge_matrix(layer), plan.layers[layer], plan.alignment)
    expected = _expert(family, family.experts(model, layer), DOMINANT)
    for name, tensor in load([0]).items():
        torch.testing.assert_close(tensor[0], expected[name], rtol=1e-6, atol=1e-7)


def test_the_merge_command_aligns_records_it_in_the_plan_and_checks_it(tmp_path, capsys):
    from compress.cli import main

    fast = ["--samples", "8", "--seq-len", "64", "--quiet"]
    plan_file = tmp_path / "plan.json"
    assert main(["merge", "--model", "demo", "--domain", "math", "--keep", "8", "--align", "weights", "--router", "dominant", *fast,
                 "--plan-only",
                 "--out", str(plan_file)]) == 0
    plan = json.loads(plan_file.read_text())
    assert plan["alignment"] == "weights"
    assert main(["merge", "--model", "demo", "--plan", str(plan_file), "--quiet", "--out", str(tmp_path / "merged")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    assert torch.isfinite(merged(input_ids=torch.tensor([[5, 6, 7]])).logits).all()
    assert "--align is decided by the plan" in cli_error(capsys, "merge", "--model", "demo", "--plan", str(plan_file), "--align", "weights",
                                                         "--out", str(tmp_path / "again"))
    plan_file.write_text(json.dumps({**plan, "alignment": "sideways"}))
    assert "\"alignment\" is 'sideways': choose one of none, weights" in cli_error(
        capsys, "merge", "--model", "demo", "--plan", str(plan_file), "--out", str(tmp_path / "again"))


def test_activation_alignment_is_stored_in_the_plan_and_checked(tmp_path, capsys):
    from compress.cli import main

    plan_file = tmp_path / "plan.json"
    assert main(["merge", "--model", "demo", "--domain", "math", "--keep", "8", "--align", "activations", "--router", "dominant",
                 "--samples", "8", "--seq-len", "64", "--quiet", "--plan-only", "--out", str(plan_file)]) == 0
    plan = json.loads(plan_file.read_text())
    assert plan["alignment"] == "activations" and plan["permutations"].keys() == plan["layers"].keys()
    inner = AutoModelForCausalLM.from_pretrained(open_model("demo").path).config.intermediate_size
    for layer, groups in plan["layers"].items():
        for members, found in zip(groups, plan["permutations"][layer]):
            assert len(found) == len(members) and found[0] is None
            assert all(sorted(p) == list(range(inner)) for p in found[1:])
    assert main(["merge", "--model", "demo", "--plan", str(plan_file), "--quiet", "--out", str(tmp_path / "merged")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    assert torch.isfinite(merged(input_ids=torch.tensor([[5, 6, 7]])).logits).all()
    layer, groups = next((layer, groups) for layer, groups in plan["permutations"].items() if any(len(g) > 1 for g in groups))
    broken = [list(g) for g in groups]
    index = next(i for i, g in enumerate(broken) if len(g) > 1)
    original = broken[index][1]
    for bad in (original[:-1] + original[:1], list(range(inner - 1))):  # a neuron twice; an ordering of too few neurons
        broken[index][1] = bad
        plan_file.write_text(json.dumps({**plan, "permutations": {**plan["permutations"], layer: broken}}))
        assert f"an ordering of 0..{inner - 1}" in cli_error(capsys, "merge", "--model", "demo", "--plan", str(plan_file),
                                                             "--out", str(tmp_path / "x"))
    plan_file.write_text(json.dumps({key: value for key, value in plan.items() if key != "permutations"}))
    assert 'alignment "activations" needs "permutations"' in cli_error(capsys, "merge", "--model", "demo", "--plan", str(plan_file),
                                                                         "--out", str(tmp_path / "x"))
