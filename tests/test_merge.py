"""Expert merging and one-shot compensation (both `compress/merging/`).

References are independent of the code under test: merged weights are recomputed with plain loops
from the loaded source model, pruning's own writer is the reference for one-expert groups, scipy's
hierarchical clustering for HC-SMoE, and a layer whose exact correction is known by construction
for compensation.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from compress.checkpoint import mxfp4
from compress.checkpoint.files import read_config
from compress.checkpoint.mxfp4 import write_mxfp4_checkpoint
from compress.checkpoint.output import atomic_output_dir
from compress.checkpoint.reader import CheckpointReader
from compress.cli import main
from compress.families import get_family
from compress.jobs.source import open_model
from compress.layer_sample import LayerSample, capture_layer_inputs, search_model
from compress.layerwise import calibrate
from compress.merging.apply import apply_merge_to_model, write_merged_checkpoint
from compress.merging.compensate import compensate_layer
from compress.merging.grouping import average_linkage, m_smoe_groups
from compress.merging.plan import MergePlan, from_prune_plan
from compress.merging.requests import CompensationRequest, MergeRequest
from compress.pruning.apply import write_pruned_checkpoint
from compress.pruning.plan import PrunePlan
from conftest import (
    FAMILIES,
    FP8_FAMILIES,
    GROUP_LIMITED,
    build_tiny_model,
    cli_error,
    glob_loaded_weight_files,
    load_fp8_reference,
    write_fp8_checkpoint,
)

INPUT = torch.randint(3, 64, (2, 12), generator=torch.Generator().manual_seed(3))
WINDOWS = torch.randint(3, 64, (8, 16), generator=torch.Generator().manual_seed(5))
# Six experts; DeepSeek's tiny config routes over two groups of three, so groups stay inside them.
GROUPS = [[1, 0], [2], [5, 3], [4]]
WEIGHTS = [[0.7, 0.3], [1.0], [0.4, 0.6], [1.0]]


def _source(model, family_name: str) -> dict:
    family = get_family(family_name)
    return {"model": "tiny", "num_experts": family.num_experts(model.config), "top_k": family.top_k(model.config)}


def _merge_plan(model, family_name: str, router: str = "dominant", groups=GROUPS, weights=WEIGHTS) -> MergePlan:
    layers = get_family(family_name).moe_layer_indices(model)
    source = _source(model, family_name)
    return MergePlan(source, {layer: copy.deepcopy(groups) for layer in layers}, {layer: copy.deepcopy(weights) for layer in layers},
                     min(source["top_k"], len(groups)), router)


def _write_merged(source_dir, target, plan, **options) -> None:
    with atomic_output_dir(target) as staging:
        write_merged_checkpoint(open_model(str(source_dir)), staging, plan, max_shard_bytes=40_000, **options)


def _naive_merged(tensor: torch.Tensor, groups, weights) -> torch.Tensor:
    """Σ_m w_m · tensor[m] for each group, in float64, one expert at a time."""
    out = []
    for members, values in zip(groups, weights):
        total = sum(values)
        acc = torch.zeros_like(tensor[0], dtype=torch.float64)
        for member, value in zip(members, values):
            acc += (value / total) * tensor[member].double()
        out.append(acc)
    return torch.stack(out)


@pytest.mark.parametrize("family_name", FAMILIES)
def test_groups_of_one_write_exactly_what_pruning_writes(family_name, tmp_path):
    model = build_tiny_model(family_name)
    model.save_pretrained(tmp_path / "source", max_shard_size="40KB")
    layers = get_family(family_name).moe_layer_indices(model)
    kept = [1, 2, 3, 4] if family_name in GROUP_LIMITED else [0, 2, 3, 5]
    prune_plan = PrunePlan(_source(model, family_name), {layer: kept for layer in layers}, 2)
    with atomic_output_dir(tmp_path / "pruned") as staging:
        write_pruned_checkpoint(open_model(str(tmp_path / "source")), staging, prune_plan, max_shard_bytes=40_000)
    _write_merged(tmp_path / "source", tmp_path / "merged", from_prune_plan(prune_plan))

    pruned, merged = CheckpointReader(tmp_path / "pruned"), CheckpointReader(tmp_path / "merged")
    assert sorted(pruned.keys()) == sorted(merged.keys())
    for key in pruned.keys():
        assert pruned.entries[key].dtype == merged.entries[key].dtype
        assert torch.equal(pruned.read(key), merged.read(key)), key
    assert read_config(tmp_path / "pruned") == read_config(tmp_path / "merged")


@pytest.mark.parametrize("router", ["dominant", "weighted"])
@pytest.mark.parametrize("family_name", FAMILIES)
def test_merged_experts_are_the_weighted_sums_and_load_in_stock_transformers(family_name, router, tmp_path):
    model = build_tiny_model(family_name)
    model.save_pretrained(tmp_path / "source", max_shard_size="40KB")
    family = get_family(family_name)
    plan = _merge_plan(model, family_name, router)
    _write_merged(tmp_path / "source", tmp_path / "merged", plan)

    config = read_config(tmp_path / "merged")
    assert config["model_type"] == family_name and "auto_map" not in config  # uniform: the stock classes
    assert family.num_experts(config) == 4 and family.top_k(config) == 2
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    for layer in family.moe_layer_indices(model):
        source_experts, merged_experts = family.experts(model, layer), family.experts(loaded, layer)
        for name in family.expert_tensors:
            if getattr(source_experts, name, None) is None:
                continue
            expected = _naive_merged(getattr(source_experts, name).detach(), GROUPS, WEIGHTS).float()
            torch.testing.assert_close(getattr(merged_experts, name).detach(), expected, rtol=1e-6, atol=1e-7)
        source_owners, merged_owners = family.router_tensor_modules(model, layer), family.router_tensor_modules(loaded, layer)
        for name, spec in family.router_tensors.items():  # rows along the expert dimension (ERNIE's bias is [1, E])
            rows = getattr(source_owners[name], name).detach().movedim(spec["expert_dim"], 0)
            expected = (torch.stack([rows[members[0]] for members in GROUPS]) if router == "dominant"
                        else _naive_merged(rows, GROUPS, WEIGHTS).float())
            merged = getattr(merged_owners[name], name).detach().movedim(spec["expert_dim"], 0)
            torch.testing.assert_close(merged, expected, rtol=1e-6, atol=1e-7)
    # the in-memory merge (used by the benchmarks) is the same model
    in_memory = copy.deepcopy(model)
    apply_merge_to_model(in_memory, plan)
    with torch.no_grad():
        torch.testing.assert_close(in_memory(input_ids=INPUT).logits, loaded(input_ids=INPUT).logits, rtol=1e-5, atol=1e-5)


def _gpt_oss_with_a_duplicate(tmp_path):
    """A tiny gpt-oss whose expert 3 is a copy of expert 1 in every layer, in MXFP4."""
    model = build_tiny_model("gpt_oss", hidden_size=64, intermediate_size=32, num_local_experts=4, head_dim=16)
    with torch.no_grad():
        for layer in model.model.layers:
            experts = layer.mlp.experts
            for name in ("gate_up_proj", "gate_up_proj_bias", "down_proj", "down_proj_bias"):
                getattr(experts, name)[3] = getattr(experts, name)[1]
    model.save_pretrained(tmp_path / "plain")
    write_mxfp4_checkpoint(tmp_path / "plain", tmp_path / "mxfp4", max_shard_bytes=40_000)
    return model


def test_identical_experts_merge_to_that_experts_weights(tmp_path):
    model = _gpt_oss_with_a_duplicate(tmp_path)
    groups, weights = [[1, 3], [0], [2]], [[0.35, 0.65], [1.0], [1.0]]
    plan = _merge_plan(model, "gpt_oss", "weighted", groups, weights)
    _write_merged(tmp_path / "plain", tmp_path / "merged-plain", plan)
    before, after = CheckpointReader(tmp_path / "plain"), CheckpointReader(tmp_path / "merged-plain")
    for key in after.keys():
        if ".mlp.experts." in key:
            assert torch.equal(after.read(key)[0], before.read(key)[1]), key  # the merged pair is expert 1, bit for bit
            assert torch.equal(after.read(key)[1:], before.read(key)[[0, 2]]), key
    # MXFP4: the same values; the bytes may differ, as a block has several encodings of one set of values
    _write_merged(tmp_path / "mxfp4", tmp_path / "merged-mxfp4", plan)
    before, after = CheckpointReader(tmp_path / "mxfp4"), CheckpointReader(tmp_path / "merged-mxfp4")
    for layer in range(2):
        for name in ("gate_up_proj", "down_proj"):
            key = f"model.layers.{layer}.mlp.experts.{name}"
            values = {reader: mxfp4.dequantize(reader.read(key + "_blocks"), reader.read(key + "_scales"), torch.float32)
                      for reader in (before, after)}
            assert torch.equal(values[after][0], values[before][1]) and torch.equal(values[after][1:], values[before][[0, 2]])
            assert torch.equal(after.read(key + "_blocks")[1:], before.read(key + "_blocks")[[0, 2]])  # unmerged: as stored


def test_mxfp4_merges_are_requantised_and_dequantize_writes_bf16(tmp_path):
    model = _gpt_oss_with_a_duplicate(tmp_path)
    plan = _merge_plan(model, "gpt_oss", "dominant", [[2, 0], [1], [3]], [[0.6, 0.4], [1.0], [1.0]])
    _write_merged(tmp_path / "mxfp4", tmp_path / "merged", plan)
    source, merged = CheckpointReader(tmp_path / "mxfp4"), CheckpointReader(tmp_path / "merged")
    for layer in range(2):
        for name in ("gate_up_proj", "down_proj"):
            key = f"model.layers.{layer}.mlp.experts.{name}"
            values = mxfp4.dequantize(source.read(key + "_blocks"), source.read(key + "_scales"), torch.float32)  # [E, out, in]
            blocks, scales = mxfp4.quantize(_naive_merged(values, [[2, 0]], [[0.6, 0.4]]).float())
            assert torch.equal(merged.read(key + "_blocks")[0], blocks[0]) and torch.equal(merged.read(key + "_scales")[0], scales[0])
            assert torch.equal(merged.read(key + "_blocks")[1:], source.read(key + "_blocks")[[1, 3]])  # copied as stored
    assert read_config(tmp_path / "merged")["quantization_config"]["quant_method"] == "mxfp4"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)  # dequantised on CPU
    assert loaded.model.layers[0].mlp.experts.gate_up_proj.shape[0] == 3

    _write_merged(tmp_path / "mxfp4", tmp_path / "bf16", plan, dequantize=True)
    written = CheckpointReader(tmp_path / "bf16")
    assert not any(key.endswith(("_blocks", "_scales")) for key in written.keys())
    assert "quantization_config" not in read_config(tmp_path / "bf16")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16", dtype=torch.float32)
    for layer in range(2):
        experts = loaded.model.layers[layer].mlp.experts
        assert written.entries[f"model.layers.{layer}.mlp.experts.gate_up_proj"].dtype == "BF16"
        for name in ("gate_up_proj", "down_proj"):  # the re-quantised and the bf16 merges agree up to MXFP4 rounding
            ours, quantised = getattr(plain.model.layers[layer].mlp.experts, name), getattr(experts, name)
            assert (ours - quantised).abs().max() <= 0.5 * quantised.abs().max()
            assert torch.equal(ours[1], quantised[1])  # unmerged expert: exactly its MXFP4 values


def _within_fp8_rounding(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """`actual` is `expected` rounded to float8_e4m3fn on blocks whose multiplier is at most max|expected|/448:
    3 mantissa bits (relative error ≤ 2⁻⁴), subnormals below 2⁻⁶ of the multiplier (absolute error ≤ 2⁻¹⁰ of it)."""
    bound = expected.abs() * 2**-4 + expected.abs().max() / 448 * 2**-10
    assert ((actual - expected).abs() <= bound * 1.001).all(), (actual - expected).abs().max()


@pytest.mark.parametrize("family_name", FP8_FAMILIES)
def test_fp8_merges_and_compensation_are_requantised_and_unmerged_experts_copied(family_name, tmp_path):
    build_tiny_model(family_name).save_pretrained(tmp_path / "plain")
    model = load_fp8_reference(write_fp8_checkpoint(tmp_path / "plain", tmp_path / "fp8"))
    family = get_family(family_name)
    plan = _merge_plan(model, family_name)
    fits = search_model(model, WINDOWS, CompensationRequest(plan), progress=False)
    _write_merged(tmp_path / "fp8", tmp_path / "merged", plan)
    _write_merged(tmp_path / "fp8", tmp_path / "compensated", plan, compensation=fits)
    source = CheckpointReader(tmp_path / "fp8")
    for output in ("merged", "compensated"):
        written = CheckpointReader(tmp_path / output)
        fp8_weights = {key for key in written.keys() if written.entries[key].dtype == "F8_E4M3"}
        assert fp8_weights and {key + "_scale_inv" for key in fp8_weights} == {key for key in written.keys() if key.endswith("_scale_inv")}
        loaded = load_fp8_reference(tmp_path / output)
        for layer in family.moe_layer_indices(model):
            for name in family.expert_tensors:
                if getattr(family.experts(model, layer), name, None) is None:
                    continue
                expected = _naive_merged(getattr(family.experts(model, layer), name).detach(), GROUPS, WEIGHTS).float()
                if output == "compensated" and name in fits[layer].tensors:
                    expected = fits[layer].tensors[name].float()
                _within_fp8_rounding(getattr(family.experts(loaded, layer), name).detach(), expected)
            if output == "merged":  # the unmerged experts (groups [2] and [4]) as stored, multipliers too
                for key in written.keys():
                    for new, old in ((1, 2), (3, 4)):
                        if f"layers.{layer}." in key and f"experts.{new}." in key:
                            stored = source.read(key.replace(f"experts.{new}.", f"experts.{old}."))
                            assert torch.equal(written.read(key).view(torch.uint8), stored.view(torch.uint8)), key
        with torch.no_grad():
            assert torch.isfinite(loaded(input_ids=INPUT).logits).all()
    assert all(fit.error_after < fit.error_before for fit in fits.values())


def _layer_with_a_known_correction():
    """A gpt-oss layer whose experts 2 and 3 are experts 0 and 1 with their down projections scaled
    per channel, and always chosen instead of them (router rows copied, bias +10). Keeping 0 and 1,
    every token keeps its routing weight, so new down projections (0's and 1's, scaled) restore the
    full layer exactly."""
    model = build_tiny_model("gpt_oss", num_local_experts=4, num_experts_per_tok=1)
    scales = torch.rand(2, 32, generator=torch.Generator().manual_seed(1)) + 0.5
    with torch.no_grad():
        for layer in model.model.layers:
            experts, router = layer.mlp.experts, layer.mlp.router
            for new, old in ((2, 0), (3, 1)):
                experts.gate_up_proj[new] = experts.gate_up_proj[old]
                experts.gate_up_proj_bias[new] = experts.gate_up_proj_bias[old]
                experts.down_proj[new] = experts.down_proj[old] * scales[old]
                experts.down_proj_bias[new] = experts.down_proj_bias[old] * scales[old]
                router.weight[new] = router.weight[old]
                router.bias[new] = router.bias[old] + 10
    return model, scales


def test_compensation_finds_the_exact_correction_when_one_exists():
    model, scales = _layer_with_a_known_correction()
    plan = from_prune_plan(PrunePlan(_source(model, "gpt_oss"), {0: [0, 1], 1: [0, 1]}, 1))
    for layer, (hidden, logits) in capture_layer_inputs(model, WINDOWS, batch_size=4, max_tokens=WINDOWS.numel()).items():
        sample = LayerSample.of_model(model, layer, hidden, logits)
        fit = compensate_layer(sample, plan.merge_matrix(layer), plan.router_matrix(layer), 1, ridge=1e-12)
        assert fit.error_before > 1e-2 and fit.error_after < 1e-9
        assert fit.heldout_before > 1e-2 and fit.heldout_after < 1e-9  # the exact correction holds beyond the tokens fitted
        experts = model.model.layers[layer].mlp.experts
        torch.testing.assert_close(fit.tensors["down_proj"], experts.down_proj[[2, 3]].detach(), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(fit.tensors["down_proj_bias"], experts.down_proj_bias[[2, 3]].detach(), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(scales, torch.ones_like(scales))


def test_compensation_holds_out_a_fifth_of_the_sample_spread_over_all_of_it():
    from compress.merging.compensate import heldout_tokens

    for count in (10, 100, 2048, 4096):
        held = heldout_tokens(count)
        assert abs(int(held.sum()) - count / 5) <= 32
        # every tenth of a default-size sample (each of its windows, each domain of a mixture) holds out some tokens and fits others
        assert count < 2048 or all(0 < int(part.sum()) < len(part) for part in held.chunk(10))


def test_compensation_lowers_the_layer_error_and_is_applied_on_disk(tmp_path):
    model = build_tiny_model("mixtral")
    model.save_pretrained(tmp_path / "source", max_shard_size="40KB")
    plan = _merge_plan(model, "mixtral")
    fits = search_model(model, WINDOWS, CompensationRequest(plan), progress=False)
    assert all(fit.error_after < fit.error_before for fit in fits.values())
    _write_merged(tmp_path / "source", tmp_path / "merged", plan, compensation=fits)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    for layer, fit in fits.items():
        torch.testing.assert_close(loaded.model.layers[layer].mlp.experts.down_proj.detach(), fit.tensors["down_proj"])
        torch.testing.assert_close(loaded.model.layers[layer].mlp.experts.gate_up_proj.detach(),
                                   _naive_merged(model.model.layers[layer].mlp.experts.gate_up_proj.detach(), GROUPS, WEIGHTS).float())


@pytest.mark.parametrize(("family_name", "fp8"), [("gpt_oss", False), ("qwen3_moe", False), ("deepseek_v3", False), ("deepseek_v3", True)])
def test_the_engine_groups_and_compensates_as_the_loaded_model_does(family_name, fp8, tmp_path):
    model = build_tiny_model(family_name)
    if fp8:
        model.save_pretrained(tmp_path / "plain")
        model = load_fp8_reference(write_fp8_checkpoint(tmp_path / "plain", tmp_path / "source"))
    else:
        model.save_pretrained(tmp_path / "source", max_shard_size="40KB")
    source = open_model(str(tmp_path / "source"))
    routing_groups = get_family(family_name).routing_groups(model.config)
    for grouping in ("hc-smoe", "m-smoe"):
        request = MergeRequest(4, grouping, "frequency", routing_groups)
        _, engine = calibrate(source, WINDOWS, batch_size=2, domain="d", data="x", search=request, statistics=False,
                              experts_per_group=4, progress=False)
        expected = search_model(model, WINDOWS, request, batch_size=2, progress=False)
        assert {layer: groups for layer, (groups, *_) in engine.items()} == {layer: groups for layer, (groups, *_) in expected.items()}
    plan = _merge_plan(model, family_name)
    _, engine = calibrate(source, WINDOWS, batch_size=2, domain="d", data="x", search=CompensationRequest(plan),
                          statistics=False, experts_per_group=4, progress=False)
    expected = search_model(model, WINDOWS, CompensationRequest(plan), batch_size=2, progress=False)
    for layer, fit in expected.items():
        assert engine[layer].error_after == pytest.approx(fit.error_after, rel=1e-4, abs=1e-7)
        torch.testing.assert_close(engine[layer].tensors["down_proj"], fit.tensors["down_proj"], rtol=1e-4, atol=1e-5)


def test_hc_smoe_clusters_as_scipy_average_linkage():
    from scipy.cluster.hierarchy import fcluster, linkage

    features = torch.randn(12, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ours = {frozenset(group) for group in average_linkage(features, 4)}
    labels = fcluster(linkage(features.numpy(), method="average"), 4, criterion="maxclust")
    theirs = {frozenset(i for i in range(12) if labels[i] == label) for label in set(labels)}
    assert ours == theirs


def test_m_smoe_centres_are_the_most_used_and_members_join_the_most_similar_router_column():
    base = torch.randn(200, 2, generator=torch.Generator().manual_seed(4))
    # experts 0, 1 are centres (most used); 2 follows 1's logits, 3 follows 0's (up to a scale)
    logits = torch.stack([base[:, 0], base[:, 1], 0.5 * base[:, 1] + 0.01, 2 * base[:, 0]], dim=1)
    sample = type("Sample", (), {"logits": logits})()
    groups = m_smoe_groups(sample, 2, torch.tensor([50.0, 40.0, 5.0, 3.0]))
    assert sorted(groups) == [[0, 3], [1, 2]]


def test_merge_command_end_to_end_and_its_outputs_are_models(tmp_path, capsys):
    out = tmp_path / "merged"
    calibration = ["--samples", "8", "--seq-len", "64", "--quiet"]
    assert main(["merge", "--model", "demo", "--domain", "math", "--keep", "8", "--out", str(out), *calibration]) == 0
    provenance = json.loads((out / "compress.json").read_text())
    assert provenance["operation"] == "merge" and provenance["plan"]["provenance"]["grouping"] == "m-smoe"
    assert (out / "expert_usage.png").is_file() and "experts merged" in (out / "README.md").read_text()
    glob_loaded_weight_files(out)
    assert main(["info", str(out)]) == 0
    assert main(["eval", "--model", str(out), "--tasks", "perplexity:math", "--max-tokens", "2000"]) == 0
    assert main(["push", str(out), "--repo", "someone/demo-merged", "--dry-run"]) == 0
    assert "merged" in capsys.readouterr().out
    assert main(["prune", "--model", str(out), "--domain", "math", "--keep", "4", "--criterion", "frequency",
                 "--out", str(tmp_path / "pruned-again"), *calibration]) == 0
    # plan-only, edited by hand (two experts swapped between groups), then applied
    assert main(["merge", "--model", "demo", "--domain", "math", "--keep", "8", "--plan-only", "--out", str(tmp_path / "plan.json"),
                 *calibration]) == 0
    plan = json.loads((tmp_path / "plan.json").read_text())
    plan["router"] = "weighted"
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    assert main(["merge", "--model", "demo", "--plan", str(tmp_path / "plan.json"), "--out", str(tmp_path / "edited"), "--quiet"]) == 0
    assert json.loads((tmp_path / "edited" / "compress.json").read_text())["plan"]["router"] == "weighted"


def test_merge_bad_input_gives_one_line_errors(tmp_path, capsys):
    out = str(tmp_path / "out")
    assert "more than the 16 experts" in cli_error(capsys, "merge", "--model", "demo", "--domain", "math", "--keep", "17", "--out", out)
    assert "not MXFP4" in cli_error(capsys, "merge", "--model", "demo", "--domain", "math", "--keep", "8", "--dequantize", "--out", out)
    assert "--plan-only" in cli_error(capsys, "merge", "--model", "demo", "--domain", "math", "--keep", "8", "--compensate",
                                      "--plan-only", "--out", out)
    assert "pass --domain" in cli_error(capsys, "merge", "--model", "demo", "--keep", "8", "--out", out)
    model = build_tiny_model("gpt_oss")
    bad = _merge_plan(model, "gpt_oss", groups=[[1, 0], [0], [5]], weights=[[1.0, 1.0], [1.0], [1.0]]).to_dict()
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    model.save_pretrained(tmp_path / "tiny")
    bad["source"]["fingerprint"] = open_model(str(tmp_path / "tiny")).fingerprint
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    assert "names an expert twice" in cli_error(capsys, "merge", "--model", str(tmp_path / "tiny"), "--plan", str(tmp_path / "bad.json"),
                                                "--out", out)
    assert not (tmp_path / "out").exists()


def test_fused_sources_merge_in_their_own_layout(tmp_path):
    model = build_tiny_model("qwen3_moe")
    (tmp_path / "source").mkdir()
    model.config.save_pretrained(tmp_path / "source")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "source" / "model.safetensors",
              metadata={"format": "pt"})
    _write_merged(tmp_path / "source", tmp_path / "merged", _merge_plan(model, "qwen3_moe"))
    written = CheckpointReader(tmp_path / "merged")
    key = "model.layers.0.mlp.experts.gate_up_proj"
    assert written.entries[key].shape[0] == 4
    torch.testing.assert_close(written.read(key), _naive_merged(model.model.layers[0].mlp.experts.gate_up_proj.detach(),
                                                                GROUPS, WEIGHTS).float())


def test_merge_weights_near_the_float_limit_are_a_ratio_like_any_others():
    from compress.merging.plan import MergePlan

    ones, huge = (MergePlan({"num_experts": 4}, {0: [[0, 1], [2]]}, {0: [[w, w], [w]]}, 2) for w in (1.0, 1e308))
    assert huge.merge_matrix(0).tolist() == ones.merge_matrix(0).tolist() == [[0.5, 0.5, 0, 0], [0, 0, 1, 0]]


def test_saliency_merge_weights_are_the_mean_gated_output_norm_of_each_expert():
    from compress.merging.grouping import usage

    model = build_tiny_model("mixtral")
    layer, (hidden, logits) = next(iter(capture_layer_inputs(model, WINDOWS, batch_size=4, max_tokens=WINDOWS.numel()).items()))
    experts = model.model.layers[layer].mlp.experts
    with torch.no_grad():
        _, gates, ids = model.model.layers[layer].mlp.gate(hidden)
    total, count = torch.zeros(6, dtype=torch.float64), torch.zeros(6)
    for t in range(len(hidden)):
        for gate, e in zip(gates[t].tolist(), ids[t].tolist()):
            with torch.no_grad():
                g, u = (experts.gate_up_proj[e] @ hidden[t]).chunk(2)
                output = experts.down_proj[e] @ (torch.nn.functional.silu(g) * u)
            total[e] += gate * float(output.norm())
            count[e] += 1
    got = usage(LayerSample.of_model(model, layer, hidden, logits), "saliency")
    torch.testing.assert_close(got, total / count.clamp(min=1), rtol=1e-5, atol=1e-7)
    assert len(set(got.tolist())) > 3  # not a count in disguise
