"""Routing analyses on models whose answers are known by construction, a run on the demo model,
and one-line errors."""

from __future__ import annotations

import json
import math

import pytest
import torch

from compress.analyze import analyses
from compress.cli import main
from compress.model_loading import load_tokenizer
from compress.pruning.apply import apply_plan_to_model
from compress.pruning.plan import PrunePlan
from compress.resolve import demo_model_path
from compress.stats.routing_stats import RoutingStats, empty_layer_stats
from conftest import build_tiny_model, cli_error

FORCED = {2: 10.0, 5: 9.0}  # router bias: every token picks experts 2 and 5, weights softmax(10, 9)


@pytest.fixture(scope="module")
def forced_model():
    """A tiny gpt-oss whose routers ignore the input: zero weights, a bias that picks experts 2 and 5."""
    model = build_tiny_model("gpt_oss", vocab_size=2048)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.router.weight.zero_()
            layer.mlp.router.bias.fill_(-10.0)
            for expert, value in FORCED.items():
                layer.mlp.router.bias[expert] = value
    return model


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(demo_model_path())


def _windows(count=6, length=16):
    return torch.randint(3, 2048, (count, length), generator=torch.Generator().manual_seed(2))


def test_trace_reports_the_forced_experts_and_weights(forced_model, tokenizer):
    result = analyses.trace(forced_model, tokenizer, "Q: What is 2 + 3?")
    top = math.exp(10) / (math.exp(10) + math.exp(9))
    for token in result["tokens"]:
        for layer in token["layers"].values():
            assert layer["experts"] == [2, 5]
            assert layer["weights"] == pytest.approx([top, 1 - top], abs=1e-4)
            assert layer["top1_weight"] == pytest.approx(top, abs=1e-4)


def test_dynamics_and_context_of_fixed_routing(forced_model, tokenizer):
    result = analyses.dynamics(forced_model, tokenizer, "Q: What is", max_new_tokens=6)
    assert result["mean_consecutive_jaccard"] == 1.0 and result["mean_handoffs_per_token"] == 0.0
    result = analyses.context(forced_model, tokenizer, " is", ["Q: What is 2?", "The answer is 4.", "It is what it is"])
    assert len(result["occurrences"]) == 4
    assert set(result["mean_jaccard_by_layer"].values()) == {1.0}


def test_ablation_of_an_unused_expert_changes_nothing(forced_model):
    result = analyses.ablate(forced_model, _windows(), {0: [7], 1: [0, 1]})
    assert result["change"] == 0.0 and result["change_95ci"] == [0.0, 0.0]
    result = analyses.ablate(forced_model, _windows(), {0: [2]})
    assert result["change"] != 0.0
    low, high = result["change_95ci"]
    assert low <= result["change"] <= high


def test_topk_at_the_models_own_k_changes_nothing(forced_model):
    result = analyses.topk(forced_model, _windows(), [1, 2, 3])
    assert result["model_top_k"] == 2
    assert result["k"]["2"]["change"] == 0.0
    assert result["k"]["1"]["change"] != 0.0


def test_forcing_one_expert_equals_keeping_only_that_expert(forced_model, tokenizer):
    import copy

    result = analyses.force(forced_model, tokenizer, "Q: What is", {0: 3, 1: 3}, max_new_tokens=6)
    single = copy.deepcopy(forced_model)
    apply_plan_to_model(single, PrunePlan({"num_experts": 6, "top_k": 2}, {0: [3], 1: [3]}, 1))
    ids = tokenizer("Q: What is", add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = single.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert result["text"] == tokenizer.decode(expected[0, ids.shape[1]:])


def test_a_probe_predicts_fixed_routing_perfectly(forced_model):
    result = analyses.predict(forced_model, _windows(10), probe_layer=0)
    assert result["prefetch_efficiency"] == 1.0 and result["layers"]["1"]["exact_set_accuracy"] == 1.0


def test_similarity_finds_a_duplicated_expert():
    model = build_tiny_model("mixtral")
    with torch.no_grad():
        experts = model.model.layers[0].mlp.experts
        experts.gate_up_proj[3] = experts.gate_up_proj[1]
        experts.down_proj[3] = experts.down_proj[1]
    result = analyses.similarity(model, 0, torch.randint(3, 64, (4, 16)), threshold=0.99)
    assert [c["experts"] for c in result["merge_candidates"]] == [[1, 3]]
    assert result["merge_candidates"][0]["weight_cosine"] == pytest.approx(1.0)
    assert result["merge_candidates"][0]["output_cosine"] == pytest.approx(1.0)


def _stats(selections: dict[int, list[int]], transitions: dict[int, torch.Tensor] | None = None, domain="d") -> RoutingStats:
    layers = {}
    for layer, counts in selections.items():
        s = empty_layer_stats(len(counts), None if layer == min(selections) else len(counts))
        s["selections"] = torch.tensor(counts)
        s["tokens"] = torch.tensor(max(sum(counts), 1))
        if "transitions" in s and transitions:
            s["transitions"] = transitions[layer]
        layers[layer] = s
    return RoutingStats(layers, {"fingerprint": "x", "top_k": 1, "domain": domain})


def test_circuits_of_a_deterministic_pipeline_are_fully_consistent():
    identity = torch.eye(4, dtype=torch.long) * 10
    stats = _stats({0: [10] * 4, 1: [10] * 4, 2: [10] * 4}, {1: identity, 2: identity})
    result = analyses.circuits(stats)
    assert result["alignment"] == {"0->1": 1.0, "1->2": 1.0} and result["full_path_consistency"] == 1.0
    assert result["pipelines"][0] == {"experts": [0, 0, 0], "probability": 1.0}
    uniform = torch.ones(4, 4, dtype=torch.long)
    assert analyses.circuits(_stats({0: [4] * 4, 1: [4] * 4}, {1: uniform}))["alignment"]["0->1"] == 0.25


def test_specialists_are_named_only_when_usage_is_concentrated():
    math_stats = _stats({0: [100, 10, 10, 10]}, domain="math")
    code_stats = _stats({0: [0, 10, 10, 10]}, domain="code")
    result = analyses.specialists({"math": math_stats, "code": code_stats})
    assert [(s["expert"], s["domain"]) for s in result["specialists"]] == [(0, "math")]
    result = analyses.specialists({"math": code_stats, "code": _stats({0: [0, 10, 10, 10]}, domain="code")})
    assert result["specialists"] == [] and result["verdict"].startswith("no expert")


def test_analyses_run_on_the_demo_model(tmp_path, capsys):
    stats = tmp_path / "math.safetensors"
    assert main(["profile", "--model", "demo", "--domain", "math", "--out", str(stats), "--samples", "8", "--seq-len", "64",
                 "--dtype", "float32", "--quiet"]) == 0
    assert main(["analyze", "trace", "--model", "demo", "--prompt", "Q: What is 2 + 3?", "--json", str(tmp_path / "t.json")]) == 0
    assert len(json.loads((tmp_path / "t.json").read_text())["tokens"]) > 3
    assert main(["analyze", "topk", "--model", "demo", "--domain", "math", "--k", "1,4", "--windows", "4"]) == 0
    assert "k=1" in capsys.readouterr().out
    assert main(["analyze", "circuits", "--stats", str(stats)]) == 0
    assert "full-path consistency" in capsys.readouterr().out
    code = tmp_path / "code.safetensors"
    assert main(["profile", "--model", "demo", "--domain", "code", "--out", str(code), "--samples", "8", "--seq-len", "64",
                 "--dtype", "float32", "--quiet"]) == 0
    small = ["--domain", "math", "--windows", "5", "--seq-len", "64"]
    runs = [
        ["specialists", "--stats", str(stats), "--stats", str(code)],
        ["ablate", "--model", "demo", "--experts", "2:3", *small],
        ["similarity", "--model", "demo", "--layer", "2", *small],
        ["predict", "--model", "demo", "--probe-layer", "1", *small],
        ["dynamics", "--model", "demo", "--prompt", "Q: What is 2 + 2?\nA:", "--max-new-tokens", "6"],
        ["force", "--model", "demo", "--expert", "3", "--prompt", "Q: What is 2 + 2?\nA:", "--max-new-tokens", "6"],
        ["context", "--model", "demo", "--token", " is", "--contexts", "Q: What is 2?", "The answer is 4."],
    ]
    for argv in runs:
        assert main(["analyze", *argv, "--json", str(tmp_path / "r.json")]) == 0, argv
        assert json.loads((tmp_path / "r.json").read_text())



def test_bad_input_gives_one_line_errors(capsys):
    err = cli_error(capsys, "analyze", "trance", "--model", "demo")
    assert "unknown analysis 'trance'" in err and "trace" in err
    assert "out of range" in cli_error(capsys, "analyze", "ablate", "--model", "demo", "--experts", "0:16", "--domain", "math")
    assert "not a MoE layer" in cli_error(capsys, "analyze", "ablate", "--model", "demo", "--experts", "9:1", "--domain", "math")
    assert "beyond the model's 512 positions" in cli_error(capsys, "analyze", "trace", "--model", "demo", "--prompt", "x " * 600)
