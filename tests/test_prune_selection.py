"""Choosing experts: criteria, budgets, protection, routing groups, and the reconstruction search."""

from __future__ import annotations

import itertools

import pytest
import torch

from compress.errors import CompressError
from compress.families import get_family
from compress.layer_sample import LayerSample, capture_layer_inputs
from compress.pruning.plan import PrunePlan
from compress.pruning.reconstruct import LayerReconstruction, reconstruction_selection
from compress.pruning.select import expert_scores, select_experts
from compress.stats.profile import profile_windows
from compress.stats.routing_stats import RoutingStats, empty_layer_stats
from conftest import build_tiny_model

WINDOWS = torch.randint(3, 64, (8, 16), generator=torch.Generator().manual_seed(5))


def _stats(selections: dict[int, list[int]], reap: dict[int, list[float]] | None = None) -> RoutingStats:
    layers = {}
    for layer, counts in selections.items():
        s = empty_layer_stats(len(counts), None)
        s["selections"] = torch.tensor(counts)
        s["tokens"] = torch.tensor(sum(counts) // 2)
        s["reap_sum"] = torch.tensor(reap[layer] if reap else [float(c) for c in counts], dtype=torch.float64)
        s["gate_mass"] = torch.tensor([c / 2 for c in counts], dtype=torch.float64)
        s["ean_sum"] = torch.tensor([3.0 * c for c in counts], dtype=torch.float64)
        layers[layer] = s
    return RoutingStats(layers, {"fingerprint": "x"})


def test_scores_follow_their_definitions():
    stats = _stats({0: [10, 0, 4, 6]}, {0: [5.0, 0.0, 8.0, 3.0]})
    assert expert_scores(stats, 0, "frequency").tolist() == [10, 0, 4, 6]
    assert expert_scores(stats, 0, "reap").tolist() == [0.5, 0.0, 2.0, 0.5]  # mean over routed tokens
    assert expert_scores(stats, 0, "gate-mass").tolist() == [5, 0, 2, 3]
    assert expert_scores(stats, 0, "ean").tolist() == [30, 0, 12, 18]
    assert torch.equal(expert_scores(stats, 0, "random", seed=3), expert_scores(stats, 0, "random", seed=3))
    assert not torch.equal(expert_scores(stats, 0, "random", seed=3), expert_scores(stats, 0, "random", seed=4))


def test_uniform_budget_keeps_the_best_of_every_layer():
    stats = _stats({0: [10, 0, 4, 6], 3: [1, 9, 8, 2]})
    assert select_experts(stats, "frequency", 2, top_k=1) == {0: [0, 3], 3: [1, 2]}
    assert select_experts(stats, "frequency", 2, top_k=1, protect={0: {1}}) == {0: [0, 1], 3: [1, 2]}
    with pytest.raises(CompressError, match="protected"):
        select_experts(stats, "frequency", 1, top_k=1, protect={0: {1, 2}})


def test_global_budget_ranks_shares_across_layers_above_a_minimum():
    # Layer 0 spreads its use evenly; layer 1 concentrates it on two experts.
    stats = _stats({0: [25, 25, 25, 25], 1: [90, 8, 1, 1]})
    kept = select_experts(stats, "frequency", 3, budget="global", top_k=1)
    assert sum(len(k) for k in kept.values()) == 6
    assert kept == {0: [0, 1, 2, 3], 1: [0, 1]}
    kept = select_experts(stats, "frequency", 3, budget="global", top_k=1, min_per_layer=3)
    assert {layer: len(k) for layer, k in kept.items()} == {0: 3, 1: 3}
    with pytest.raises(CompressError, match="per-layer minimum"):
        select_experts(stats, "frequency", 1, budget="global", top_k=2)


def test_group_limited_routing_keeps_equal_counts_per_group():
    stats = _stats({1: [9, 8, 7, 1, 2, 3]})
    assert select_experts(stats, "frequency", 4, top_k=2, groups=2) == {1: [0, 1, 4, 5]}
    with pytest.raises(CompressError, match="routing groups"):
        select_experts(stats, "frequency", 3, top_k=2, groups=2)
    plan = PrunePlan({"num_experts": 6}, {1: [0, 1, 2, 5]}, 2)
    with pytest.raises(CompressError, match="same number"):
        plan.check([1], 6, 2, None, 2)


def _independent_error(model, family, layer, hidden, logits, kept) -> float:
    """‖y_S − y_all‖² with transformers' own experts module and the family's routing."""
    experts = family.experts(model, layer)
    buffers = family.router_buffers(model, layer)

    def output(mask):
        w, idx = family.route(logits.masked_fill(~mask, float("-inf")), model.config,
                              {k: v.masked_fill(~mask, float("-inf")) for k, v in buffers.items()})
        with torch.no_grad():
            return experts(hidden, idx, w)

    full = torch.ones(logits.shape[1], dtype=torch.bool)
    mask = torch.zeros_like(full)
    mask[kept] = True
    return float(((output(mask) - output(full)) ** 2).sum())


@pytest.mark.parametrize("family_name", ["gpt_oss", "qwen3_moe"])
def test_reconstruction_error_and_search(family_name):
    model = build_tiny_model(family_name)
    family = get_family(family_name)
    windows = torch.randint(3, 64, (4, 16), generator=torch.Generator().manual_seed(9))
    captured = capture_layer_inputs(model, windows, batch_size=2, max_tokens=48)
    hidden, logits = captured[0]
    assert hidden.shape == (48, 32) and logits.shape == (48, 6)
    layer = LayerReconstruction.of_sample(LayerSample.of_model(model, 0, hidden, logits))
    errors = {}
    for kept in itertools.combinations(range(6), 3):
        errors[kept] = _independent_error(model, family, 0, hidden, logits, list(kept))
        assert layer.error(list(kept)) == pytest.approx(errors[kept], rel=1e-4, abs=1e-7)
    chosen = reconstruction_selection(model, windows, 3, batch_size=2, max_tokens=48, progress=False)
    assert errors[tuple(chosen[0])] == min(errors.values())  # few sets: searched exhaustively


def test_global_reconstruction_budget_spends_each_removal_where_the_relative_error_grows_least():
    from compress.pruning.reconstruct import global_kept_sets

    # Two layers' greedy removal paths (kept set, error); layer 1's outputs are 10× larger.
    paths = {0: [([0, 1, 2, 3], 0.0), ([0, 1, 2], 1.0), ([0, 1], 2.0), ([0], 9.0)],
             1: [([0, 1, 2, 3], 0.0), ([0, 1, 3], 5.0), ([0, 3], 30.0), ([3], 31.0)]}
    scale = {0: 1.0, 1: 10.0}
    # Relative increments: layer 0: 1, 1, 7; layer 1: 0.5, 2.5, 0.1 (the last one is behind a costly step).
    assert global_kept_sets(paths, scale, 7) == {0: [0, 1, 2, 3], 1: [0, 1, 3]}
    assert global_kept_sets(paths, scale, 5) == {0: [0, 1], 1: [0, 1, 3]}
    assert global_kept_sets(paths, scale, 3) == {0: [0, 1], 1: [3]}  # paths are followed, never skipped
    assert global_kept_sets(paths, scale, 2) == {0: [0], 1: [3]}
    assert global_kept_sets(paths, scale, 1) == {0: [0], 1: [3]}  # a path's end is its layer's minimum


def test_global_reconstruction_keeps_the_budget_and_the_per_layer_minimum():
    model = build_tiny_model("gpt_oss")
    windows = torch.randint(3, 64, (4, 16), generator=torch.Generator().manual_seed(3))
    kept = reconstruction_selection(model, windows, 3, batch_size=2, max_tokens=48, progress=False, budget="global")
    assert sum(len(k) for k in kept.values()) == 3 * len(kept)
    assert all(len(k) >= 2 for k in kept.values())  # top-k of the tiny model


EXPERT_COUNT_FIELD = {"gpt_oss": "num_local_experts", "mixtral": "num_local_experts", "qwen2_moe": "num_experts",
                      "qwen3_moe": "num_experts", "olmoe": "num_experts", "deepseek_v3": "n_routed_experts"}


@pytest.mark.parametrize("family_name", list(EXPERT_COUNT_FIELD))
def test_greedy_removal_path_equals_a_naive_greedy_search(family_name):
    """The search updates each candidate's error from the tokens whose routing changes; a naive
    greedy search recombining every token with a dense weight matrix must take the same path."""
    from compress.pruning.reconstruct import removal_path
    from conftest import tiny_config

    config = tiny_config(family_name, **{EXPERT_COUNT_FIELD[family_name]: 12})
    family = get_family(family_name)
    generator = torch.Generator().manual_seed(5)
    logits, outputs = torch.randn(40, 12, generator=generator), torch.randn(40, 12, 8, generator=generator)
    buffers = {"e_score_correction_bias": torch.rand(12, generator=generator) * 0.2} if family_name == "deepseek_v3" else {}
    groups = family.routing_groups(config)

    def output(kept):
        mask = torch.zeros(12, dtype=torch.bool)
        mask[list(kept)] = True
        weights, index = family.route(logits.masked_fill(~mask, float("-inf")), config,
                                      {k: v.masked_fill(~mask, float("-inf")) for k, v in buffers.items()})
        dense = torch.zeros(40, 12).scatter_(1, index, weights.float())
        return torch.einsum("te,teh->th", dense, outputs)

    full = output(range(12))
    kept, naive = list(range(12)), []
    while len(kept) > 4:
        counts = [sum(1 for e in kept if e // (12 // groups) == g) for g in range(groups)]
        removable = [e for e in kept if counts[e // (12 // groups)] == max(counts)]
        errors = {e: float(((output([x for x in kept if x != e]) - full) ** 2).sum()) for e in removable}
        kept.remove(min(errors, key=errors.get))
        naive.append((list(kept), min(errors.values())))
    path = removal_path(LayerReconstruction(family, config, buffers, logits, outputs), 4, set(), groups)
    assert [kept for kept, _ in path[1:]] == [kept for kept, _ in naive]
    assert [error for _, error in path[1:]] == pytest.approx([error for _, error in naive], rel=1e-5)


def test_man_and_msan_scores_come_from_routed_output_norms():
    model = build_tiny_model("mixtral")
    stats = profile_windows(model, WINDOWS, batch_size=4, model_name="tiny", domain="d", data="x", progress=False)
    hidden, logits = capture_layer_inputs(model, WINDOWS, batch_size=4, max_tokens=WINDOWS.numel())[0]
    sample = LayerSample.of_model(model, 0, hidden, logits)
    _, ids = sample.route()
    norms = sample.outputs.norm(dim=-1).double()  # [T, E]
    routed = torch.zeros_like(norms).scatter_(1, ids, 1.0).bool()
    counts = routed.sum(dim=0).double().clamp(min=1)
    torch.testing.assert_close(expert_scores(stats, 0, "man"), (norms * routed).sum(dim=0) / counts, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(expert_scores(stats, 0, "msan"), (norms.square() * routed).sum(dim=0) / counts, rtol=1e-4, atol=1e-5)
