"""Fitted router rows (``router: fitted``, `compress/merging/router_fit.py`) against a dense solve.

The reference is written out here: the router module's own inputs (a forward hook), its logits
from its weight and bias, each group's logit as an explicit log of summed exponentials (or, for
DeepSeek-V3's sigmoid scores, the logit of the summed scores), and the ridge least squares toward
the dominant member's row solved at once as an augmented system by `torch.linalg.lstsq`.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from compress.cli import main
from compress.families import get_family
from compress.jobs.source import open_model
from compress.layer_sample import search_model
from compress.layerwise import calibrate
from compress.merging.apply import apply_merge_to_model
from compress.merging.plan import MergePlan, from_prune_plan
from compress.merging.requests import CompensationRequest
from compress.merging.router_fit import ROUTER_RIDGE
from compress.pruning.plan import PrunePlan
from conftest import build_tiny_model, cli_error

WINDOWS = torch.randint(3, 64, (8, 16), generator=torch.Generator().manual_seed(5))
GROUPS = [[1, 0], [2], [5, 3], [4]]  # inside DeepSeek's tiny routing groups of three
WEIGHTS = [[0.7, 0.3], [1.0], [0.4, 0.6], [1.0]]
FITTED_FAMILIES = ("gpt_oss", "qwen3_moe", "deepseek_v3")  # router bias; softmax without; sigmoid scores and a correction bias


def _plan(model, family_name: str, router: str = "fitted") -> MergePlan:
    family = get_family(family_name)
    source = {"model": "tiny", "num_experts": family.num_experts(model.config), "top_k": family.top_k(model.config)}
    layers = family.moe_layer_indices(model)
    return MergePlan(source, {layer: copy.deepcopy(GROUPS) for layer in layers}, {layer: copy.deepcopy(WEIGHTS) for layer in layers},
                     min(source["top_k"], len(GROUPS)), router)


def _reference_rows(model, family_name: str, layer: int) -> torch.Tensor:
    """[G, H (+1 with a bias)] float64: the new router rows by one dense solve per merged group."""
    router = get_family(family_name).router(model, layer)
    seen = []
    hook = router.register_forward_hook(lambda module, args, output: seen.append(args[0].reshape(-1, args[0].shape[-1]).double()))
    with torch.no_grad():
        model(WINDOWS)
    hook.remove()
    x = torch.cat(seen)
    weight = router.weight.detach().double()
    bias = getattr(router, "bias", None)
    rows = weight if bias is None else torch.cat([weight, bias.detach().double().unsqueeze(1)], dim=1)
    features = x if bias is None else torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], dim=1)
    logits = features @ rows.T
    strength = ROUTER_RIDGE * (features.T @ features).diagonal().mean()
    expected = []
    for members in GROUPS:
        prior = rows[members[0]]
        if len(members) == 1:
            expected.append(prior)
            continue
        if family_name == "deepseek_v3":
            summed = sum(1 / (1 + torch.exp(-logits[:, m])) for m in members).clamp(max=1 - 1e-6)  # clipped below 1
            target = torch.log(summed / (1 - summed))
        else:
            target = torch.log(sum(torch.exp(logits[:, m]) for m in members))
        system = torch.cat([features, math.sqrt(strength) * torch.eye(features.shape[1], dtype=torch.float64)])
        wanted = torch.cat([target, math.sqrt(strength) * prior])
        expected.append(torch.linalg.lstsq(system, wanted.unsqueeze(1)).solution[:, 0])
    return torch.stack(expected)


def _written_rows(model, family_name: str, layer: int) -> torch.Tensor:
    router = get_family(family_name).router(model, layer)
    bias = getattr(router, "bias", None)
    return router.weight.detach().double() if bias is None else torch.cat([router.weight.detach().double(),
                                                                          bias.detach().double().unsqueeze(1)], dim=1)


@pytest.mark.parametrize("family_name", FITTED_FAMILIES)
def test_fitted_router_rows_are_the_ridge_least_squares_fit_of_each_groups_logit(family_name):
    model = build_tiny_model(family_name)
    plan = _plan(model, family_name)
    fits = search_model(model, WINDOWS, CompensationRequest(plan, compensate=False), progress=False)
    assert all(fit.error_before is None for fit in fits.values())  # no compensation: the experts are the plain merge
    merged, dominant = copy.deepcopy(model), copy.deepcopy(model)
    apply_merge_to_model(merged, plan, fits)
    apply_merge_to_model(dominant, _plan(model, family_name, "dominant"))
    family = get_family(family_name)
    for layer in plan.layers:
        expected = _reference_rows(model, family_name, layer)
        torch.testing.assert_close(_written_rows(merged, family_name, layer), expected, rtol=1e-4, atol=1e-5)
        for g, members in enumerate(GROUPS):
            if len(members) == 1:  # a one-expert group keeps its row as stored
                assert torch.equal(_written_rows(merged, family_name, layer)[g], _written_rows(dominant, family_name, layer)[g])
        assert torch.equal(family.experts(merged, layer).down_proj, family.experts(dominant, layer).down_proj)
        for name, buffer in family.router_buffers(merged, layer).items():  # DeepSeek's correction bias: the dominant's
            assert torch.equal(buffer, family.router_buffers(dominant, layer)[name])


def test_a_fitted_router_leaves_a_prune_plan_unchanged():
    model = build_tiny_model("gpt_oss")
    prune = from_prune_plan(PrunePlan(_plan(model, "gpt_oss").source, {0: [0, 2, 4, 5], 1: [1, 2, 3, 5]}, 4))
    fitted = MergePlan(prune.source, prune.layers, prune.weights, prune.top_k, "fitted")
    fits = search_model(model, WINDOWS, CompensationRequest(fitted, compensate=False), progress=False)
    merged, pruned = copy.deepcopy(model), copy.deepcopy(model)
    apply_merge_to_model(merged, fitted, fits)
    apply_merge_to_model(pruned, prune)
    for (name, a), b in zip(merged.state_dict().items(), pruned.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("compensate", [False, True])
@pytest.mark.parametrize("family_name", FITTED_FAMILIES)
def test_the_engine_fits_the_router_as_the_loaded_model_does(family_name, compensate, tmp_path):
    """The engine's chunks (two windows each; with compensation, a sweep of the router first) give
    the one-chunk fit of the loaded model: compensation is fitted under the fitted router's routing."""
    model = build_tiny_model(family_name)
    model.save_pretrained(tmp_path / "source", max_shard_size="40KB")
    plan = _plan(model, family_name)
    request = CompensationRequest(plan, compensate=compensate)
    _, engine = calibrate(open_model(str(tmp_path / "source")), WINDOWS, batch_size=2, domain="d", data="x", search=request,
                          statistics=False, experts_per_group=4, progress=False)
    expected = search_model(model, WINDOWS, request, batch_size=2, progress=False)
    for layer, fit in expected.items():
        for name, tensor in fit.tensors.items():
            torch.testing.assert_close(engine[layer].tensors[name], tensor, rtol=1e-4, atol=1e-5)
        if compensate:
            assert engine[layer].error_after == pytest.approx(fit.error_after, rel=1e-4, abs=1e-7)
    if compensate:  # routed by the fitted rows: not the fit the dominant rows give
        dominant = search_model(model, WINDOWS, CompensationRequest(_plan(model, family_name, "dominant")), progress=False)
        assert any(not torch.allclose(dominant[layer].tensors["down_proj"], fit.tensors["down_proj"]) for layer, fit in expected.items())


def test_merge_router_fitted_end_to_end(tmp_path, capsys):
    calibration = ["--domain", "math", "--samples", "8", "--seq-len", "64", "--quiet"]
    out, dominant = tmp_path / "fitted", tmp_path / "dominant"
    assert main(["merge", "--model", "demo", "--keep", "8", "--router", "fitted", "--out", str(out), *calibration]) == 0
    assert main(["merge", "--model", "demo", "--keep", "8", "--router", "dominant", "--out", str(dominant), *calibration]) == 0
    provenance = json.loads((out / "compress.json").read_text())
    assert provenance["plan"]["router"] == "fitted" and provenance["compensation"] is None
    assert "log-sum-exp of its members' logits" in (out / "README.md").read_text()
    fitted_model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    dominant_model = AutoModelForCausalLM.from_pretrained(dominant, dtype=torch.float32)
    for layer, groups in provenance["plan"]["layers"].items():
        a, b = fitted_model.model.layers[int(layer)].mlp.router, dominant_model.model.layers[int(layer)].mlp.router
        for g, members in enumerate(groups):
            assert torch.equal(a.weight[g], b.weight[g]) == (len(members) == 1), (layer, g)
        assert torch.equal(fitted_model.model.layers[int(layer)].mlp.experts.down_proj,
                           dominant_model.model.layers[int(layer)].mlp.experts.down_proj)
    assert main(["info", str(out)]) == 0
    # a plan file asking for fitted rows is fitted when applied, on the calibration text it is given
    assert main(["merge", "--model", "demo", "--keep", "8", "--router", "fitted", "--plan-only", "--out", str(tmp_path / "plan.json"),
                 *calibration]) == 0
    assert "pass --domain" in cli_error(capsys, "merge", "--model", "demo", "--plan", str(tmp_path / "plan.json"),
                                        "--out", str(tmp_path / "nothing"))
    assert not (tmp_path / "nothing").exists()
    assert main(["merge", "--model", "demo", "--plan", str(tmp_path / "plan.json"), "--out", str(tmp_path / "applied"), *calibration]) == 0
    applied = AutoModelForCausalLM.from_pretrained(tmp_path / "applied", dtype=torch.float32)
    for layer in provenance["plan"]["layers"]:
        torch.testing.assert_close(applied.model.layers[int(layer)].mlp.router.weight,
                                   fitted_model.model.layers[int(layer)].mlp.router.weight)


@pytest.mark.parametrize("compensate", [False, True])
@pytest.mark.parametrize("family_name", FITTED_FAMILIES)
def test_the_grouping_pass_fits_router_and_compensation_as_a_pass_of_their_own_does(family_name, compensate, tmp_path):
    """Grouping with statistics runs every window: streamed into each layer's fit once the layer is
    answered (the sample windows first), they give the fit a pass of its own makes for the same plan."""
    from compress.merging.requests import MergeRequest

    model = build_tiny_model(family_name)
    model.save_pretrained(tmp_path / "source", max_shard_size="40KB")
    source, plan_source = open_model(str(tmp_path / "source")), _plan(model, family_name).source

    def refit(layer, answer):
        return CompensationRequest(MergePlan(plan_source, {layer: answer[0]}, {layer: answer[1]}, 4, "fitted"), compensate=compensate)

    routing_groups = get_family(family_name).routing_groups(model.config)
    request = MergeRequest(4, "m-smoe", "gate-mass", routing_groups, refit=refit)
    _, answers = calibrate(source, WINDOWS, batch_size=2, domain="d", data="x", search=request, experts_per_group=4, progress=False)
    assert request.fits.keys() == answers.keys()
    plan = MergePlan(plan_source, {layer: groups for layer, (groups, _, _) in answers.items()},
                     {layer: weights for layer, (_, weights, _) in answers.items()}, 4, "fitted")
    _, separate = calibrate(source, WINDOWS, batch_size=2, domain="d", data="x", search=CompensationRequest(plan, compensate=compensate),
                            statistics=False, experts_per_group=4, progress=False)
    for layer, fit in separate.items():
        assert request.fits[layer].tensors.keys() == fit.tensors.keys()
        for name, tensor in fit.tensors.items():
            torch.testing.assert_close(request.fits[layer].tensors[name], tensor, rtol=1e-4, atol=1e-5)
        if compensate:
            assert request.fits[layer].heldout_after == pytest.approx(fit.heldout_after, rel=1e-4, abs=1e-7)
    # without statistics only the sample windows run: nothing is fitted, the merge job makes a pass for it
    request = MergeRequest(4, "m-smoe", "gate-mass", routing_groups, refit=refit)
    calibrate(source, WINDOWS, batch_size=2, domain="d", data="x", search=request, statistics=False, experts_per_group=4, progress=False)
    assert request.fits == {}


def test_a_default_merge_makes_no_pass_of_its_own_for_router_or_compensation_unless_grouped_on_given_statistics(tmp_path, monkeypatch):
    import compress.jobs.reduce as reduce

    passes = []
    real = reduce.compensation
    monkeypatch.setattr(reduce, "compensation", lambda *args, **kwargs: passes.append(kwargs["compensate"]) or real(*args, **kwargs))
    calibration = ["--domain", "math", "--samples", "8", "--seq-len", "64", "--quiet"]
    assert main(["merge", "--model", "demo", "--keep", "8", "--out", str(tmp_path / "one"), *calibration]) == 0
    assert passes == []  # fitted while grouping
    assert main(["merge", "--model", "demo", "--keep", "4,8", "--out", str(tmp_path / "frontier"), *calibration]) == 0
    assert passes == [False]  # the second size groups on the first one's statistics, sample windows only: a pass of its own
    assert main(["merge", "--model", "demo", "--keep", "8", "--compensate", "--out", str(tmp_path / "three"), *calibration]) == 0
    assert passes == [False]  # compensation too is fitted while grouping (after the router rows)
    assert json.loads((tmp_path / "three" / "compress.json").read_text())["compensation"]
    # the same plan, its rows fitted while grouping or in a pass of their own
    one = AutoModelForCausalLM.from_pretrained(tmp_path / "one", dtype=torch.float32)
    two = AutoModelForCausalLM.from_pretrained(tmp_path / "frontier" / "keep8", dtype=torch.float32)
    assert json.loads((tmp_path / "one" / "compress.json").read_text())["plan"]["layers"] == \
        json.loads((tmp_path / "frontier" / "keep8" / "compress.json").read_text())["plan"]["layers"]
    torch.testing.assert_close(one.model.layers[0].mlp.router.weight, two.model.layers[0].mlp.router.weight, rtol=1e-4, atol=1e-5)
