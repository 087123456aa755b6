"""TIES merging of a group's members (`compress/merging/align.py`, ``merge_method: ties``), against
an entry-by-entry loop written from the TIES-merging paper: trim each task vector to its largest
magnitudes, elect each entry's sign, sum the agreeing members' weighted values."""

from __future__ import annotations

import copy

import torch
from transformers import AutoModelForCausalLM

from compress.checkpoint.output import atomic_output_dir
from compress.jobs.source import open_model
from compress.merging import TIES_DENSITY
from compress.merging.align import ties_delta
from compress.merging.apply import apply_merge_to_model, write_merged_checkpoint
from compress.merging.plan import MergePlan
from conftest import build_tiny_model

GROUPS = [[1, 0, 4], [2], [5, 3]]
WEIGHTS = [[0.5, 0.3, 0.2], [1.0], [0.4, 0.6]]


def _naive_ties(dominant: torch.Tensor, others: list[torch.Tensor], weights: list[float], density: float) -> torch.Tensor:
    """dominant + TIES(others − dominant), one entry at a time."""
    deltas = [(other - dominant).double().flatten() for other in others]
    trimmed = []
    for delta in deltas:
        kept = max(1, round(density * len(delta)))
        smallest_kept = sorted(delta.abs().tolist(), reverse=True)[kept - 1]
        trimmed.append([value if abs(value) >= smallest_kept else 0.0 for value in delta.tolist()])
    merged = []
    for entry in range(len(deltas[0])):
        vote = sum(w * t[entry] for w, t in zip(weights, trimmed))
        sign = (vote > 0) - (vote < 0)
        merged.append(sum(w * t[entry] for w, t in zip(weights, trimmed) if ((t[entry] > 0) - (t[entry] < 0)) == sign))
    return dominant.double() + torch.tensor(merged, dtype=torch.float64).reshape(dominant.shape)


def test_ties_delta_is_the_papers_trim_elect_and_disjoint_sum():
    generator = torch.Generator().manual_seed(0)
    dominant, others = torch.randn(6, 5, generator=generator), [torch.randn(6, 5, generator=generator) for _ in range(3)]
    weights = [0.2, 0.5, 0.1]
    for density in (0.2, 0.5, 1.0):
        got = dominant.double() + ties_delta(torch.stack(others).double() - dominant.double(), torch.tensor(weights), density)
        torch.testing.assert_close(got, _naive_ties(dominant, others, weights, density))
    # everything kept and of one sign: the weighted average, as `average` merges
    same = [dominant + (index + 1) * torch.rand(6, 5, generator=generator) for index in range(2)]
    got = dominant.double() + ties_delta(torch.stack(same).double() - dominant.double(), torch.tensor([0.3, 0.2]), 1.0)
    torch.testing.assert_close(got, 0.5 * dominant.double() + 0.3 * same[0].double() + 0.2 * same[1].double())


def test_a_ties_plan_merges_the_same_in_memory_and_on_disk(tmp_path):
    model = build_tiny_model("mixtral")
    model.save_pretrained(tmp_path / "source")
    layers = [0, 1]
    plan = MergePlan({"model": "tiny", "num_experts": 6, "top_k": 2}, {layer: copy.deepcopy(GROUPS) for layer in layers},
                     {layer: copy.deepcopy(WEIGHTS) for layer in layers}, 2, merge_method="ties")
    plan.check(layers, {layer: 6 for layer in layers}, 2)
    with atomic_output_dir(tmp_path / "merged") as staging:
        write_merged_checkpoint(open_model(str(tmp_path / "source")), staging, plan)
    on_disk = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    in_memory = copy.deepcopy(model)
    apply_merge_to_model(in_memory, plan)
    for layer in layers:
        experts = model.model.layers[layer].mlp.experts
        for name in ("gate_up_proj", "down_proj"):
            tensor = getattr(experts, name).detach()
            for g, (members, weights) in enumerate(zip(GROUPS, WEIGHTS)):
                if len(members) == 1:
                    expected = tensor[members[0]].double()
                else:
                    expected = _naive_ties(tensor[members[0]], [tensor[m] for m in members[1:]], weights[1:], TIES_DENSITY)
                for merged in (on_disk, in_memory):
                    got = getattr(merged.model.layers[layer].mlp.experts, name).detach()[g]
                    torch.testing.assert_close(got, expected.float(), rtol=1e-6, atol=1e-7)


def test_the_merge_command_records_ties_in_the_plan_and_checks_it(tmp_path, capsys):
    import json

    from compress.cli import main
    from conftest import cli_error

    plan_file = tmp_path / "plan.json"
    assert main(["merge", "--model", "demo", "--domain", "math", "--keep", "8", "--merge-method", "ties", "--router", "dominant",
                 "--samples", "8", "--seq-len", "64", "--quiet", "--plan-only", "--out", str(plan_file)]) == 0
    plan = json.loads(plan_file.read_text())
    assert plan["merge_method"] == "ties"
    assert main(["merge", "--model", "demo", "--plan", str(plan_file), "--quiet", "--out", str(tmp_path / "merged")]) == 0
    assert json.loads((tmp_path / "merged" / "compress.json").read_text())["plan"]["merge_method"] == "ties"
    plan_file.write_text(json.dumps({**plan, "merge_method": "median"}))
    assert "\"merge_method\" is 'median': choose one of average, ties" in cli_error(
        capsys, "merge", "--model", "demo", "--plan", str(plan_file), "--out", str(tmp_path / "again"))
