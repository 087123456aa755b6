"""The project's own outputs as inputs: non-uniform (per-layer) and tiered checkpoints prune again
(every command on every output kind: test_cli_matrix.py); tiered models prune by whole teams,
exactly; tiered plans round-trip; the derived model types come from one registry."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from compress.cli import main
from compress.families import family_for_config
from compress.families.derived import SUFFIXES, split_model_type
from compress.jobs.source import open_model
from compress.models import modeling_moe_compress, modeling_tiered_moe
from compress.pruning.apply import apply_plan_to_model
from compress.pruning.plan import PrunePlan
from compress.stats import RoutingStats
from conftest import glob_loaded_weight_files

FAST = ["--samples", "8", "--seq-len", "64", "--quiet"]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("derived")
    stats = root / "math.safetensors"
    assert main(["profile", "--model", "demo", "--domain", "math", "--out", str(stats), *FAST]) == 0
    assert main(["prune", "--model", "demo", "--stats", str(stats), "--keep", "8", "--budget", "global", "--criterion",
                 "frequency", "--out", str(root / "per-layer"), "--quiet"]) == 0
    assert main(["convert", "tiered", "--model", "demo", "--stats", str(stats), "--tiers", "0-1:4,2-3:3,4-5:2", "--team-size", "2",
                 "--out", str(root / "tiered"), "--quiet"]) == 0
    for kind in ("per-layer", "tiered"):  # each pruned again (every other command on them: test_cli_matrix.py)
        kind_stats = root / f"{kind}.safetensors"
        assert main(["profile", "--model", str(root / kind), "--domain", "math", "--out", str(kind_stats), *FAST]) == 0
        assert RoutingStats.load(kind_stats).metadata["fingerprint"] == open_model(str(root / kind)).fingerprint
        assert main(["prune", "--model", str(root / kind), "--stats", str(kind_stats), "--keep", "2", "--criterion", "frequency",
                     "--out", str(root / f"{kind}-pruned"), "--quiet"]) == 0
        glob_loaded_weight_files(root / f"{kind}-pruned")
    return root


def test_a_uniform_prune_of_a_per_layer_model_is_stock_again(outputs):
    config = json.loads((outputs / "per-layer-pruned" / "config.json").read_text())
    assert (config["model_type"], config["architectures"]) == ("gpt_oss", ["GptOssForCausalLM"])
    assert "experts_per_layer" not in config and "auto_map" not in config
    assert not list((outputs / "per-layer-pruned").glob("modeling_*.py"))


def _masked_team_logits(model, dropped: dict[int, list[int]], ids: torch.Tensor) -> torch.Tensor:
    """The reference: the tiered model with the dropped teams' router bias at -inf (never chosen)."""
    with torch.no_grad():
        for layer, teams in dropped.items():
            model.model.layers[layer].mlp.router.bias[teams] = float("-inf")
        return model(input_ids=ids).logits


def test_pruning_a_tiered_model_keeps_whole_teams_exactly(outputs):
    source = open_model(str(outputs / "tiered"))
    written = outputs / "tiered-pruned"
    plan = PrunePlan.from_dict(json.loads((written / "compress.json").read_text())["plan"])
    assert plan.teams is not None and all(len(kept) == 2 for kept in plan.teams.values())
    size = {int(layer): spec["team_size"] for layer, spec in source.config.tiered_layers.items()}
    for layer, kept in plan.teams.items():  # the members of the kept teams, in team order
        assert plan.layers[layer] == [t * size[layer] + m for t in kept for m in range(size[layer])]
    teams = {int(layer): spec["teams"] for layer, spec in source.config.tiered_layers.items()}
    dropped = {layer: [t for t in range(teams[layer]) if t not in plan.teams[layer]] for layer in teams}
    ids = torch.randint(3, 2000, (2, 24), generator=torch.Generator().manual_seed(0))
    reference = _masked_team_logits(AutoModelForCausalLM.from_pretrained(outputs / "tiered", dtype=torch.float32).eval(), dropped, ids)
    pruned = AutoModelForCausalLM.from_pretrained(written, dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(pruned(input_ids=ids).logits, reference, rtol=1e-5, atol=1e-5)
        in_memory = AutoModelForCausalLM.from_pretrained(outputs / "tiered", dtype=torch.float32).eval()
        apply_plan_to_model(in_memory, plan)  # the same plan in memory gives the written model
        torch.testing.assert_close(in_memory(input_ids=ids).logits, pruned(input_ids=ids).logits, rtol=0, atol=0)


def test_reconstruct_is_refused_on_a_tiered_model(outputs, capsys):
    capsys.readouterr()
    assert main(["prune", "--model", str(outputs / "tiered"), "--domain", "math", "--keep", "2", "--out",
                 str(outputs / "nope"), *FAST]) == 2
    assert "a tiered model routes teams" in capsys.readouterr().err
    assert not (outputs / "nope").exists()


def test_a_tiered_plan_round_trips_to_the_same_checkpoint(outputs):
    stats, plan = outputs / "math.safetensors", outputs / "teams.json"
    argv = ["convert", "tiered", "--model", "demo", "--stats", str(stats), "--tiers", "0-1:4,2-3:3,4-5:2", "--team-size", "2",
            "--quiet"]
    assert main([*argv, "--plan-only", "--out", str(plan)]) == 0
    data = json.loads(plan.read_text())
    assert data["format"] == "moe-compress tiered plan" and data["layers"]["0"]["teams"]
    assert data["provenance"]["command"].startswith("compress convert tiered --model demo")
    assert main(["convert", "tiered", "--model", "demo", "--plan", str(plan), "--out", str(outputs / "from-plan"), "--quiet"]) == 0
    for name in ("model.safetensors", "config.json"):
        assert (outputs / "from-plan" / name).read_bytes() == (outputs / "tiered" / name).read_bytes()


def test_derived_model_types_come_from_one_registry():
    assert modeling_moe_compress.MODEL_TYPE_SUFFIX == SUFFIXES["per_layer"]  # the self-contained copies agree
    assert modeling_tiered_moe.MODEL_TYPE_SUFFIX == SUFFIXES["tiered"]
    assert split_model_type("qwen3_moe_tiered") == ("qwen3_moe", "tiered")
    assert split_model_type("mixtral") == ("mixtral", None)
    for base, (config_class, model_class) in {**modeling_moe_compress.CLASSES, **modeling_tiered_moe.CLASSES}.items():
        assert base in family_for_config({"model_type": config_class.model_type}).model_types
        module = modeling_tiered_moe if config_class.model_type.endswith("_tiered") else modeling_moe_compress
        assert getattr(module, model_class.__name__) is model_class  # auto_map names resolve
        assert model_class.config_class is config_class


@pytest.mark.parametrize("kind", ["per-layer", "tiered"])
def test_routing_analyses_see_the_experts_the_model_runs(outputs, kind):
    """`analyze`'s routing on our own model types equals what each experts module is handed in the
    model's own forward (transformers' experts interface: ``top_k_index`` / ``top_k_weights``)."""
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    from compress.analyze.routing import token_routing
    from compress.kernels.reference import combine_expert_outputs, routed_expert_outputs

    model = AutoModelForCausalLM.from_pretrained(outputs / kind, dtype=torch.float32).eval()
    family = family_for_config(model.config)
    handed = {}

    def recording(experts, hidden_states, top_k_index, top_k_weights):
        handed[experts._layer] = (top_k_index.clone(), top_k_weights.clone())
        return combine_expert_outputs(routed_expert_outputs(experts, hidden_states, top_k_index), top_k_weights, hidden_states.dtype)

    ALL_EXPERTS_FUNCTIONS.register("record_routing", recording)
    for layer in family.moe_layer_indices(model):
        family.experts(model, layer)._layer = layer
    ids = torch.randint(3, 2000, (2, 12), generator=torch.Generator().manual_seed(0))
    routing = token_routing(model, ids)
    model.set_experts_implementation("record_routing")
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    assert sorted(routing) == sorted(handed) == family.moe_layer_indices(model)
    for layer, (index, weights) in handed.items():
        assert torch.equal(routing[layer].experts, index)
        torch.testing.assert_close(routing[layer].weights, weights.float(), rtol=0, atol=0)
