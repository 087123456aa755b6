"""Adding a pruning criterion or a merge grouping is one registry entry: registered here, a toy of
each is offered by the command line (choices and help), chooses what it says it chooses, and names
itself in the model card."""

from __future__ import annotations

import json

import pytest
import torch

from compress.cli import main
from compress.merging.groupings import GROUPINGS, Grouping
from compress.pruning.criteria import CRITERIA, Criterion

FAST = ["--samples", "4", "--seq-len", "32", "--quiet"]


def _help(capsys, command: str) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def _listed(text: str, name: str, help_text: str) -> bool:
    return any(line.split()[:1] == [name] and line.endswith(help_text) for line in text.splitlines())


def test_a_registered_criterion_is_offered_selects_and_names_itself(tmp_path, capsys, monkeypatch):
    toy = Criterion("toy-highest-ids", "keeps the experts with the highest ids", "the toy rule of the highest ids",
                    score=lambda stats, layer, seed: torch.arange(stats["selections"].shape[0], dtype=torch.float64))
    monkeypatch.setitem(CRITERIA, toy.name, toy)
    text = _help(capsys, "prune")
    assert _listed(text, toy.name, toy.help) and "toy-highest-ids}" in text  # the epilog's table and the choices
    stats = tmp_path / "math.safetensors"
    assert main(["profile", "--model", "demo", "--domain", "math", "--out", str(stats), *FAST]) == 0
    out = tmp_path / "pruned"
    assert main(["prune", "--model", "demo", "--stats", str(stats), "--criterion", toy.name, "--keep", "4", "--out", str(out),
                 "--quiet"]) == 0
    plan = json.loads((out / "compress.json").read_text())["plan"]
    assert plan["provenance"]["criterion"] == toy.name
    assert all(kept == [12, 13, 14, 15] for kept in plan["layers"].values())
    assert "Experts were ranked by the toy rule of the highest ids" in (out / "README.md").read_text()


def test_a_registered_grouping_is_offered_groups_and_names_itself(tmp_path, capsys, monkeypatch):
    def pairs(sample, keep, used, routing_groups):  # neighbours, two by two
        return [[2 * g, 2 * g + 1] for g in range(keep)]

    toy = Grouping("toy-pairs", "neighbouring experts, two by two", "the toy rule of neighbouring pairs", pairs)
    monkeypatch.setitem(GROUPINGS, toy.name, toy)
    text = _help(capsys, "merge")
    assert _listed(text, toy.name, toy.help) and "toy-pairs}" in text
    out = tmp_path / "merged"
    assert main(["merge", "--model", "demo", "--domain", "math", "--keep", "8", "--grouping", toy.name, "--out", str(out), *FAST]) == 0
    plan = json.loads((out / "compress.json").read_text())["plan"]
    assert plan["provenance"]["grouping"] == toy.name
    assert all(sorted(map(sorted, groups)) == [[2 * g, 2 * g + 1] for g in range(8)] for groups in plan["layers"].values())
    assert "Grouping: the toy rule of neighbouring pairs" in (out / "README.md").read_text()
