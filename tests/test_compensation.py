"""Streamed compensation (`compress/merging/compensate.py`) against a dense least-squares solve.

The reference is written out here with plain tensors: the merged Mixtral layer's own router and
an explicit SwiGLU per routed (token, expert) pair give each pair's features w·a(x); the full
layer's output comes from the source model's own sparse MoE block; every fitted pair of a new
expert is stacked into one matrix and its ridge least squares solved at once in float64.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from compress.layer_sample import LayerSample, capture_layer_inputs
from compress.merging.apply import apply_merge_to_model
from compress.merging.compensate import RIDGE, LayerFit, heldout_tokens
from compress.merging.plan import MergePlan
from conftest import build_tiny_model

WINDOWS = torch.randint(3, 64, (8, 16), generator=torch.Generator().manual_seed(5))
GROUPS = [[1, 0], [2], [5, 3], [4]]
WEIGHTS = [[0.7, 0.3], [1.0], [0.4, 0.6], [1.0]]


def _dense_corrections(model, merged, layer: int, hidden: torch.Tensor):
    """({new expert: Δ [I, H]}, (held-out error before, after)) by one dense solve per new expert."""
    source_block, block = model.model.layers[layer].mlp, merged.model.layers[layer].mlp
    with torch.no_grad():
        full = source_block(hidden.unsqueeze(0)).squeeze(0).double()
        _, weights, ids = block.gate(hidden)
        experts = block.experts
        activations = torch.zeros(*ids.shape, experts.intermediate_dim, dtype=torch.float64)
        outputs = torch.zeros(*ids.shape, hidden.shape[-1], dtype=torch.float64)
        for t in range(len(hidden)):
            for j, g in enumerate(ids[t].tolist()):
                gate, up = (experts.gate_up_proj[g].double() @ hidden[t].double()).chunk(2)
                activations[t, j] = torch.nn.functional.silu(gate) * up
                outputs[t, j] = experts.down_proj[g].double() @ activations[t, j]
    w = weights.double().unsqueeze(-1)
    error = full - (w * outputs).sum(dim=1)
    share = w / w.sum(dim=1, keepdim=True)
    held = heldout_tokens(len(hidden))
    deltas = {}
    for g in range(len(GROUPS)):
        token, slot = ((ids == g) & ~held.unsqueeze(-1)).nonzero(as_tuple=True)
        features = w[token, slot] * activations[token, slot]
        normal = features.T @ features
        strength = RIDGE * normal.diagonal().mean()
        deltas[g] = torch.linalg.solve(normal + strength * torch.eye(len(normal), dtype=torch.float64),
                                       features.T @ (share[token, slot] * error[token]))
    corrected = error.clone()
    for t in range(len(hidden)):
        for j, g in enumerate(ids[t].tolist()):
            corrected[t] -= w[t, j] * activations[t, j] @ deltas[g]
    norm = full[held].square().sum()
    return deltas, (float(error[held].square().sum() / norm), float(corrected[held].square().sum() / norm))


@pytest.mark.parametrize("chunks", [1, 3])
def test_streamed_normal_equations_equal_the_dense_least_squares_solution(chunks):
    model = build_tiny_model("mixtral")
    layers = [0, 1]
    plan = MergePlan({"model": "tiny", "num_experts": 6, "top_k": 2}, {layer: copy.deepcopy(GROUPS) for layer in layers},
                     {layer: copy.deepcopy(WEIGHTS) for layer in layers}, 2)
    merged = copy.deepcopy(model)
    apply_merge_to_model(merged, plan)
    for layer, (hidden, logits) in capture_layer_inputs(model, WINDOWS, batch_size=4, max_tokens=WINDOWS.numel()).items():
        sample = LayerSample.of_model(model, layer, hidden, logits, every_expert=False)
        fit = LayerFit(plan.merge_matrix(layer), plan.router_matrix(layer), plan.top_k, len(hidden), members_of=plan.layers[layer])
        for rows in torch.arange(len(hidden)).tensor_split(chunks):  # the engine's chunks, in order
            fit.add(dataclasses.replace(sample, inputs=sample.inputs[rows], logits=sample.logits[rows], full=sample.full[rows]))
        result = fit.result()
        deltas, (held_before, held_after) = _dense_corrections(model, merged, layer, hidden)
        down = merged.model.layers[layer].mlp.experts.down_proj.detach().double()
        expected = torch.stack([down[g] + deltas[g].T for g in range(len(GROUPS))]).float()
        torch.testing.assert_close(result.tensors["down_proj"], expected, rtol=1e-4, atol=1e-5)
        assert result.heldout_before == pytest.approx(held_before, rel=1e-4)
        assert result.heldout_after == pytest.approx(held_after, rel=1e-3)
        assert max(delta.abs().max() for delta in deltas.values()) > 1e-3  # a real correction, not the merged weights
