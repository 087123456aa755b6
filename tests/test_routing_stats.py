"""Routing statistics collected in the forward equal an independent recomputation, for every family.

The reference: a plain forward (transformers' default experts implementation) with
``output_router_logits=True``, routed by the family's routing function (itself tested bit-exact
against the router modules in test_families.py), counted token by token in Python; expert outputs
f_j(x) come from transformers' own eager experts code run on one token and one expert at a time.
"""

from __future__ import annotations

import math

import pytest
import torch

from compress.errors import CompressError
from compress.families import get_family
from compress.kernels.reference import routed_expert_outputs
from compress.model_info import meta_model, model_fingerprint
from compress.stats import RoutingStats, RoutingStatsCollector
from compress.stats.profile import profile_windows
from compress.stats.routing_stats import FIXED_POINT_STEP, merge_all
from compress.stats.summary import gini, js_divergence
from conftest import FAMILIES, build_tiny_model

BATCH, LENGTH = 3, 10


def _reference(model, family, input_ids, attention_mask=None):
    """Per MoE layer, every statistic recomputed from router logits and one-expert eager calls."""
    moe_layers = family.moe_layer_indices(model)
    experts_inputs = {}
    hooks = [
        family.experts(model, layer).register_forward_pre_hook(
            lambda module, args, layer=layer: experts_inputs.__setitem__(layer, args[0].detach().clone()))
        for layer in moe_layers
    ]
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=attention_mask, output_router_logits=True)
    for hook in hooks:
        hook.remove()
    valid = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    first = valid & (valid.long().cumsum(-1) == 1)
    valid, first = valid.flatten().tolist(), first.flatten().tolist()

    model.set_experts_implementation("eager")  # transformers' own per-expert loop, one token at a time
    reference, previous = {}, None
    for layer, logits in zip(moe_layers, out.router_logits):
        experts = family.experts(model, layer)
        E = family.num_experts_in(experts)
        weights, index = family.route(logits, model.config, family.router_buffers(model, layer))
        s = {"tokens": 0, "entropy_sum": 0.0, "selections": [0] * E, "top1": [0] * E, "position0": [0] * E,
             "gate_mass": [0.0] * E, "reap_sum": [0.0] * E, "ean_sum": [0.0] * E,
             "coactivation": [[0] * E for _ in range(E)]}
        if previous is not None:
            s["transitions"] = [[0] * E for _ in range(E)]
        for t in range(index.shape[0]):
            if not valid[t]:
                continue
            chosen, w = index[t].tolist(), weights[t].float().tolist()
            s["tokens"] += 1
            if family.routing["function"] == "sigmoid_group_topk":  # sigmoid scorers: their normalised sigmoid
                p = logits[t].float().sigmoid()
                p = p / p.sum()
            else:
                p = torch.softmax(logits[t].float(), dim=-1)
            s["entropy_sum"] -= sum(float(q) * math.log(float(q)) for q in p if q > 0)
            s["top1"][chosen[w.index(max(w))]] += 1
            for j, g in zip(chosen, w):
                s["selections"][j] += 1
                s["position0"][j] += first[t]
                with torch.no_grad():
                    f = experts(experts_inputs[layer][t : t + 1], torch.tensor([[j]]), torch.tensor([[1.0]]))
                norm = float(f.double().norm())
                s["gate_mass"][j] += g
                s["reap_sum"][j] += g * norm
                s["ean_sum"][j] += norm
                for i in chosen:
                    s["coactivation"][j][i] += 1
                if previous is not None:
                    for i in previous[t]:
                        s["transitions"][i][j] += 1
        reference[layer] = s
        previous = index.tolist()
    model.set_experts_implementation("grouped_mm")
    return out.logits, reference


def _assert_equal_to_reference(stats: RoutingStats, reference: dict) -> None:
    assert stats.layer_indices == sorted(reference)
    for layer, expected in reference.items():
        got = stats.layers[layer]
        for name in ("tokens", "selections", "top1", "position0", "coactivation", "transitions"):
            if name in expected:
                assert got[name].tolist() == expected[name], (layer, name)
        assert ("transitions" in got) == ("transitions" in expected)
        for name in ("gate_mass", "reap_sum", "ean_sum", "entropy_sum"):
            torch.testing.assert_close(got[name], torch.tensor(expected[name], dtype=torch.float64),
                                       rtol=2e-5, atol=1e-4, msg=f"layer {layer} {name}")


@pytest.mark.parametrize("family_name", FAMILIES)
def test_statistics_equal_an_independent_recomputation(family_name):
    model = build_tiny_model(family_name)
    family = get_family(family_name)
    input_ids = torch.randint(3, 64, (BATCH, LENGTH), generator=torch.Generator().manual_seed(1))
    logits, reference = _reference(model, family, input_ids)
    with torch.no_grad(), RoutingStatsCollector(model) as collector:
        profiled_logits = model(input_ids=input_ids).logits
    # The profiling experts implementation returns exactly what transformers' default one does.
    assert torch.equal(profiled_logits, logits)
    assert model.config._experts_implementation == "grouped_mm"  # restored on exit
    stats = collector.stats({})
    _assert_equal_to_reference(stats, reference)
    if family_name == "deepseek_v3":
        assert stats.layer_indices == [1, 2]  # the dense first layer has no statistics


def test_padding_is_left_out_and_position0_is_the_first_real_token():
    model = build_tiny_model("mixtral")
    family = get_family("mixtral")
    input_ids = torch.randint(3, 64, (BATCH, LENGTH), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(input_ids)
    mask[0, :4] = 0  # left padding
    mask[2, 7:] = 0  # right padding
    _, reference = _reference(model, family, input_ids, mask)
    with torch.no_grad(), RoutingStatsCollector(model) as collector:
        model(input_ids=input_ids, attention_mask=mask)
    stats = collector.stats({})
    _assert_equal_to_reference(stats, reference)
    assert int(stats.layers[0]["tokens"]) == int(mask.sum())
    assert int(stats.layers[0]["position0"].sum()) == BATCH * 2  # one first token per row, top-2


@pytest.mark.parametrize("family_name", ["gpt_oss", "qwen2_moe"])
def test_reference_expert_outputs_equal_one_expert_at_a_time(family_name):
    model = build_tiny_model(family_name)
    family = get_family(family_name)
    experts = family.experts(model, 0)
    model.set_experts_implementation("eager")
    x = torch.randn(7, 32, generator=torch.Generator().manual_seed(3))
    index = torch.tensor([[0, 5], [1, 2], [5, 4], [3, 0], [2, 1], [4, 0], [1, 5]])
    with torch.no_grad():
        outputs = routed_expert_outputs(experts, x, index)
        for t in range(7):
            for k in range(2):
                expected = experts(x[t : t + 1], index[t : t + 1, k : k + 1], torch.ones(1, 1))
                torch.testing.assert_close(outputs[t, k], expected[0], rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_collector_on_a_gpu_keeps_the_logits_and_counts_the_routers_choices(dtype):
    model = build_tiny_model("qwen3_moe").to("cuda", dtype)
    family = get_family("qwen3_moe")
    input_ids = torch.randint(3, 64, (BATCH, LENGTH), device="cuda")
    with torch.no_grad():
        plain = model(input_ids=input_ids, output_router_logits=True)
        with RoutingStatsCollector(model) as collector:
            profiled = model(input_ids=input_ids).logits
    assert torch.equal(profiled, plain.logits)
    stats = collector.stats({})
    for layer, logits in zip(stats.layer_indices, plain.router_logits):
        _, index = family.route(logits, model.config)
        assert torch.equal(stats.layers[layer]["selections"], torch.bincount(index.flatten().cpu(), minlength=6))


def _windows(count: int, length: int = 8, seed: int = 4) -> torch.Tensor:
    return torch.randint(3, 64, (count, length), generator=torch.Generator().manual_seed(seed))


def test_sums_are_kept_on_a_fixed_point_grid_so_any_order_adds_up_exactly():
    model = build_tiny_model("olmoe")
    windows = _windows(8)
    whole = profile_windows(model, windows, batch_size=2, model_name="tiny", domain="d", data="random", progress=False)
    halves = [profile_windows(model, part, batch_size=2, model_name="tiny", domain="d", data="random", progress=False,
                      skip_samples=4 * i) for i, part in enumerate(windows.split(4))]
    merged = merge_all(halves)
    for layer in whole.layer_indices:
        for name, tensor in whole.layers[layer].items():
            assert torch.equal(merged.layers[layer][name], tensor), (layer, name)
            if tensor.dtype == torch.float64:
                assert torch.equal(torch.round(tensor / FIXED_POINT_STEP) * FIXED_POINT_STEP, tensor)
    assert merged.metadata["tokens"] == whole.metadata["tokens"] == 64
    assert merged.metadata["samples"] == 8 and len(merged.metadata["sources"]) == 2


def test_file_round_trip_and_metadata(tmp_path):
    model = build_tiny_model("qwen3_moe")
    stats = profile_windows(model, _windows(4), batch_size=4, model_name="tiny-qwen3", domain="code", data="random", progress=False)
    path = tmp_path / "stats.safetensors"
    stats.save(path)
    loaded = RoutingStats.load(path)
    assert loaded.metadata == stats.metadata
    assert loaded.metadata["fingerprint"] == model_fingerprint(model)
    assert (loaded.metadata["family"], loaded.metadata["top_k"], loaded.metadata["seq_len"]) == ("qwen3_moe", 2, 8)
    for layer in stats.layer_indices:
        for name, tensor in stats.layers[layer].items():
            assert torch.equal(loaded.layers[layer][name], tensor)
    assert not list(tmp_path.glob(".*partial"))


def test_fingerprint_ignores_dtype_and_device_but_not_the_architecture():
    model = build_tiny_model("mixtral")
    assert model_fingerprint(model) == model_fingerprint(build_tiny_model("mixtral", seed=5).to(torch.bfloat16))
    assert model_fingerprint(model) == model_fingerprint(meta_model(model.config))
    assert model_fingerprint(model) != model_fingerprint(build_tiny_model("mixtral", num_local_experts=4))


def test_merging_different_models_is_refused():
    a = profile_windows(build_tiny_model("mixtral"), _windows(2), batch_size=2, model_name="a", domain="d", data="x", progress=False)
    b = profile_windows(build_tiny_model("olmoe"), _windows(2), batch_size=2, model_name="b", domain="d", data="x", progress=False)
    with pytest.raises(CompressError, match="different models"):
        a.merged_with(b)


def test_gini_and_js_divergence_known_values():
    assert gini(torch.tensor([5, 5, 5, 5])) == 0.0
    assert gini(torch.tensor([0, 0, 0, 8])) == pytest.approx(0.75)
    assert gini(torch.tensor([0, 0])) == 0.0
    assert js_divergence(torch.tensor([1, 1, 0, 0]), torch.tensor([2, 2, 0, 0])) == 0.0
    assert js_divergence(torch.tensor([1, 0]), torch.tensor([0, 1])) == pytest.approx(1.0)
