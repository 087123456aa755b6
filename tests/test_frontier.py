"""Size frontiers: several sizes from one command, each the model a single run of that size writes,
and the quality-against-size chart of `compress compare --frontier`."""

from __future__ import annotations

import json

import torch

from compress.checkpoint.reader import CheckpointReader
from compress.cli import main
from conftest import cli_error, glob_loaded_weight_files


def test_a_size_frontier_writes_one_model_per_size_from_one_profile(tmp_path, capsys):
    stats = tmp_path / "math.safetensors"
    calibration = ["--samples", "8", "--seq-len", "64", "--quiet"]
    assert main(["profile", "--model", "demo", "--domain", "math", "--out", str(stats), *calibration]) == 0
    prune = ["prune", "--model", "demo", "--stats", str(stats), "--criterion", "gate-mass", "--quiet"]
    capsys.readouterr()
    assert main([*prune, "--keep", "8,4", "--out", str(tmp_path / "frontier")]) == 0  # any order: written smallest first
    assert capsys.readouterr().out.strip().endswith(f"size frontier of 2 models (keep4, keep8) → {tmp_path / 'frontier'}")
    assert json.loads((tmp_path / "frontier" / "compress.json").read_text())["models"] == ["keep4", "keep8"]
    assert not list((tmp_path / "frontier").glob("*.safetensors"))
    glob_loaded_weight_files(tmp_path / "frontier" / "keep4")
    for keep in (4, 8):
        assert main([*prune, "--keep", str(keep), "--out", str(tmp_path / f"single{keep}")]) == 0
        alone, in_frontier = CheckpointReader(tmp_path / f"single{keep}"), CheckpointReader(tmp_path / "frontier" / f"keep{keep}")
        assert sorted(alone.keys()) == sorted(in_frontier.keys())
        assert all(torch.equal(alone.read(key), in_frontier.read(key)) for key in alone.keys())
    assert main(["compare", "--base", "demo", "--candidate", str(tmp_path / "frontier" / "keep4"), str(tmp_path / "frontier" / "keep8"),
                 "--tasks", "perplexity:math", "--max-tokens", "2000", "--frontier", str(tmp_path / "frontier.png"), "--quiet"]) == 0
    assert (tmp_path / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "drop --plan" in cli_error(capsys, *prune, "--keep", "4,8", "--plan-only", "--out", str(tmp_path / "p.json"))
