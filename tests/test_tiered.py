"""TieredLightweightMoE: conversion round trip, weight transfer, the team-router rule, gradients,
clustering, distillation (improvement and exact resume) and bad input."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from compress.checkpoint.reader import CheckpointReader
from compress.cli import main
from compress.distill import DistillSettings, distillation_loss
from compress.families import get_family
from compress.stats.profile import profile_windows
from compress.tiering.teams import agglomerative_teams, greedy_teams, mixing_weights
from conftest import FAMILIES, MOE_LAYERS, NO_TIERED, build_tiny_model

INPUT = torch.randint(3, 64, (4, 16), generator=torch.Generator().manual_seed(11))


def _tiny_with_stats(family_name: str, root):
    model = build_tiny_model(family_name)
    model.save_pretrained(root / "source")
    stats = profile_windows(model, torch.randint(3, 64, (8, 16), generator=torch.Generator().manual_seed(1)), batch_size=4,
                    model_name="tiny", domain="d", data="random", progress=False)
    stats.save(root / "stats.safetensors")
    return model


def _convert(root, *argv) -> int:
    return main(["convert", "tiered", "--model", str(root / "source"), "--stats", str(root / "stats.safetensors"),
                 "--out", str(root / "tiered"), "--quiet", *argv])


@pytest.mark.parametrize("family_name", [family for family in FAMILIES if family not in NO_TIERED])
def test_teams_of_one_with_every_expert_reproduce_the_original(family_name, tmp_path):
    model = _tiny_with_stats(family_name, tmp_path)
    layers = MOE_LAYERS[family_name]
    assert _convert(tmp_path, "--tiers", f"{layers[0]}-{layers[-1]}:6", "--team-size", "1", "--team-top-k", "2") == 0
    converted = AutoModelForCausalLM.from_pretrained(tmp_path / "tiered", dtype=torch.float32)
    assert type(converted).__name__.endswith("TieredForCausalLM")
    with torch.no_grad():
        torch.testing.assert_close(converted(input_ids=INPUT).logits, model(input_ids=INPUT).logits, rtol=1e-6, atol=1e-6)


def test_conversion_transfers_experts_and_builds_team_routers_from_member_rows(tmp_path):
    model = _tiny_with_stats("gpt_oss", tmp_path)
    assert _convert(tmp_path, "--tiers", "0:3,1:2", "--team-size", "2") == 0
    provenance = json.loads((tmp_path / "tiered" / "compress.json").read_text())
    converted = AutoModelForCausalLM.from_pretrained(tmp_path / "tiered", dtype=torch.float32)
    family = get_family("gpt_oss")
    for layer in (0, 1):
        planned = provenance["plan"]["layers"][str(layer)]  # the plan, recorded in the provenance
        teams, mixing = planned["teams"], torch.tensor(planned["mixing"])
        members = [e for team in teams for e in team]
        source_experts, converted_experts = family.experts(model, layer), family.experts(converted, layer)
        for name in family.expert_tensors:
            assert torch.equal(getattr(converted_experts, name), getattr(source_experts, name)[members])
        source_router = family.router(model, layer)
        router = converted.model.layers[layer].mlp.router
        for t, team in enumerate(teams):  # the documented rule: mixing-weighted sum of member rows and biases
            expected = sum(mixing[t, m] * source_router.weight[e] for m, e in enumerate(team))
            torch.testing.assert_close(router.weight[t], expected)
            torch.testing.assert_close(router.bias[t], sum(mixing[t, m] * source_router.bias[e] for m, e in enumerate(team)))
        torch.testing.assert_close(router.mixing, mixing)
        torch.testing.assert_close(router.mixing.sum(dim=1), torch.ones(len(teams)))
    assert (tmp_path / "tiered" / "modeling_tiered_moe.py").is_file()
    assert json.loads((tmp_path / "tiered" / "config.json").read_text())["auto_map"]["AutoModelForCausalLM"] == \
        "modeling_tiered_moe.GptOssTieredForCausalLM"
    reader = CheckpointReader(tmp_path / "tiered")
    assert reader.entries["model.layers.0.mlp.router.mixing"].shape == (3, 2)


def test_gradient_reaches_every_trainable_parameter(tmp_path):
    teacher = _tiny_with_stats("gpt_oss", tmp_path)
    assert _convert(tmp_path, "--tiers", "0-1:2", "--team-size", "2", "--team-top-k", "1") == 0
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "tiered", dtype=torch.float32).train()
    batch = torch.randint(3, 64, (8, 32), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        teacher_out = teacher(input_ids=batch, output_hidden_states=True)
    loss, _ = distillation_loss(student(input_ids=batch, output_hidden_states=True), teacher_out, DistillSettings(steps=1))
    loss.backward()
    params = dict(student.named_parameters())
    no_gradient = [name for name, p in params.items() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not no_gradient, no_gradient
    assert any(name.endswith("router.mixing") for name in params) and any(name.endswith("router.weight") for name in params)


def test_clustering_groups_co_activating_experts():
    selections = torch.tensor([90, 80, 70, 60, 5, 4])
    coactivation = torch.zeros(6, 6, dtype=torch.long)
    for a, b, n in ((0, 3, 50), (1, 2, 40), (0, 1, 5), (4, 5, 3)):
        coactivation[a, b] = coactivation[b, a] = n
    assert greedy_teams(selections, coactivation, 2, 2) == [[0, 3], [1, 2]]
    assert sorted(map(sorted, agglomerative_teams(selections, coactivation, 2, 2))) == [[0, 3], [1, 2]]
    weights = mixing_weights(selections, [[0, 3], [1, 2]])
    torch.testing.assert_close(weights, torch.tensor([[0.6, 0.4], [80 / 150, 70 / 150]]))


def test_bad_input_gives_one_line_errors(tmp_path, capsys):
    _tiny_with_stats("mixtral", tmp_path)

    def error(*argv) -> str:
        assert _convert(tmp_path, *argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
        return err

    assert "must cover exactly the MoE layers" in error("--tiers", "0:2", "--team-size", "2")
    assert "more than the 6 experts" in error("--tiers", "0-1:4", "--team-size", "2")
    assert "names layer 1 twice" in error("--tiers", "0-1:2,1:2", "--team-size", "2")
    other = build_tiny_model("olmoe")
    profile_windows(other, torch.randint(3, 64, (2, 8)), batch_size=2, model_name="olmoe", domain="d", data="x",
            progress=False).save(tmp_path / "stats.safetensors")
    assert "different model" in error("--tiers", "0-1:2", "--team-size", "2")
    assert not (tmp_path / "tiered").exists()


@pytest.fixture(scope="module")
def demo_tiered(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo-tiered")
    fast = ["--samples", "8", "--seq-len", "64", "--dtype", "float32", "--quiet"]
    assert main(["profile", "--model", "demo", "--domain", "math", "--out", str(root / "math.safetensors"), *fast]) == 0
    assert main(["convert", "tiered", "--model", "demo", "--stats", str(root / "math.safetensors"), "--tiers", "0-5:3",
                 "--team-size", "2", "--out", str(root / "tiered"), "--quiet"]) == 0
    return root


DISTILL = ["--domain", "math", "--seq-len", "64", "--samples", "32", "--batch-size", "4", "--lr", "3e-4", "--quiet"]


def test_distillation_improves_the_converted_model_and_resume_is_exact(demo_tiered, capsys):
    root = demo_tiered
    assert main(["distill", "--teacher", "demo", "--student", str(root / "tiered"), "--steps", "6", "--save-every", "3",
                 "--out", str(root / "straight"), *DISTILL]) == 0
    straight = [json.loads(line) for line in (root / "straight" / "distill_log.jsonl").read_text().splitlines()]
    assert len(straight) == 6 and straight[-1]["loss"] < straight[0]["loss"]
    # An interrupted run: only the step-3 checkpoint exists; --resume finishes it.
    (root / "resumed" / "checkpoints").mkdir(parents=True)
    shutil.copytree(root / "straight" / "checkpoints" / "step-3", root / "resumed" / "checkpoints" / "step-3")
    (root / "resumed" / "distill_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in straight[:3]))
    assert main(["distill", "--teacher", "demo", "--student", str(root / "tiered"), "--steps", "6", "--save-every", "3",
                 "--out", str(root / "resumed"), "--resume", *DISTILL]) == 0
    resumed = [json.loads(line) for line in (root / "resumed" / "distill_log.jsonl").read_text().splitlines()]
    assert resumed[:4] == straight[:4]  # the logged steps and the first resumed one are bit-identical
    for a, b in zip(resumed, straight):  # later ones carry the scatter-add rounding noted below
        assert a["step"] == b["step"] and all(a[k] == pytest.approx(b[k], rel=1e-6) for k in ("loss", "kl", "hidden_mse"))
    a = AutoModelForCausalLM.from_pretrained(root / "straight").state_dict()
    b = AutoModelForCausalLM.from_pretrained(root / "resumed").state_dict()
    for key in a:  # the bias gradients are summed with scatter-adds, not bit-reproducible across runs on CPU
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
    assert (root / "straight" / "distill_loss.png").read_bytes()[:4] == b"\x89PNG"
    card = (root / "straight" / "README.md").read_text()  # a distilled checkpoint describes itself
    assert "distilled from demo" in card and "6 × 4 windows" in card and "compress.register()" in card

    capsys.readouterr()
    gate = ["--tasks", "perplexity:math", "--limit", "100", "--seq-len", "64", "--dtype", "float32", "--quiet"]
    assert main(["compare", "--base", str(root / "tiered"), "--candidate", str(root / "straight"), *gate, "--json"]) == 0
    changes = json.loads(capsys.readouterr().out)
    perplexity = next(c for c in next(iter(changes.values())) if c["metric"] == "perplexity")
    assert perplexity["candidate"] < perplexity["base"]  # distillation strictly improves the converted model


def test_distill_refuses_an_existing_output_without_resume(demo_tiered, capsys):
    (demo_tiered / "taken").mkdir(exist_ok=True)
    (demo_tiered / "taken" / "x").write_text("keep")
    assert main(["distill", "--teacher", "demo", "--student", str(demo_tiered / "tiered"), "--steps", "1",
                 "--out", str(demo_tiered / "taken"), *DISTILL]) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert main(["distill", "--teacher", "demo", "--student", str(demo_tiered / "tiered"), "--steps", "1",
                 "--out", str(demo_tiered / "fresh"), "--resume", *DISTILL]) == 2
    assert "holds no checkpoint" in capsys.readouterr().err


def test_converted_checkpoint_loads_with_remote_code_without_moe_compress(demo_tiered):
    import subprocess
    import sys

    script = (
        "import sys, torch; sys.modules['compress'] = None\n"
        "from transformers import AutoModelForCausalLM\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(demo_tiered / 'tiered')!r}, trust_remote_code=True)\n"
        "print(type(m).__name__, tuple(m(input_ids=torch.tensor([[1, 2, 3]])).logits.shape))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "GptOssTieredForCausalLM (1, 3, 2048)" in result.stdout


def test_the_default_tiers_keep_their_proportions_on_other_models():
    from compress.tiering.recipe import default_recipe, scaled_tiers

    recipe = default_recipe()
    assert scaled_tiers(recipe, list(range(24)), 32, 4) == "0-7:4,8-17:8,18-23:6"  # the model they were designed for
    assert scaled_tiers(recipe, list(range(6)), 16, 4) == "0-1:2,2-4:4,5:3"  # the demo: thirds of depth, shares of teams
    assert scaled_tiers(recipe, list(range(36)), 128, 4) == "0-11:16,12-26:32,27-35:24"  # gpt-oss-120b's 36 layers
    assert scaled_tiers(recipe, [1, 2, 4], 6, 2) == "1:2,2:3,4:3"  # MoE layers that are not contiguous keep their own ids
