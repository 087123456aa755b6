"""Golden hashes: the bytes every reduction method writes for every family stay the same.

Each family's tiny fixture (`conftest.tiny_checkpoints`) is pruned uniformly, pruned per layer,
merged and converted to teams from fixed plan files, through the command line. The SHA-256 of
every weight shard and of config.json must equal `golden/outputs.json`. It guards refactors of the
writers: a change in what they write fails here even when the model still computes the same.

Compensation is left out: its least squares runs through BLAS, whose last bits differ between
CPUs. After an intended change of the output format, regenerate the file with
``MOE_COMPRESS_WRITE_GOLDEN=1 python -m pytest tests/test_golden_outputs.py`` and say why in the commit.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from compress.cli import main
from compress.jobs.source import open_model
from conftest import FAMILIES, NO_TIERED

GOLDEN = Path(__file__).parent / "golden" / "outputs.json"
METHODS = ("prune", "prune-per-layer", "merge", "tiered")
KEPT = [0, 2, 3, 5]  # two experts of each of DeepSeek-V3's two routing groups
KEPT_PER_LAYER = [0, 1, 2, 3, 4, 5]  # the other MoE layers keep KEPT: a non-uniform plan
GROUPS, WEIGHTS = [[1, 0], [2], [5, 3], [4]], [[0.7, 0.3], [1.0], [0.4, 0.6], [1.0]]
TEAMS, MIXING = [[0, 1], [3, 4]], [[0.75, 0.25], [0.5, 0.5]]
UNSUPPORTED = {(family, "tiered") for family in NO_TIERED}


def _plan(method: str, source) -> dict:
    header = {"source": {"model": "tiny", "fingerprint": source.fingerprint, "family": source.family.name,
                         "num_experts": source.num_experts, "top_k": source.top_k}}
    layers = source.moe_layers
    if method == "prune":
        return {**header, "format": "moe-compress prune plan", "format_version": 1, "top_k": min(source.top_k, len(KEPT)),
                "layers": {str(layer): KEPT for layer in layers}}
    if method == "prune-per-layer":
        return {**header, "format": "moe-compress prune plan", "format_version": 1, "top_k": min(source.top_k, len(KEPT)),
                "layers": {str(layer): KEPT_PER_LAYER if i == 0 else KEPT for i, layer in enumerate(layers)}}
    if method == "merge":
        return {**header, "format": "moe-compress merge plan", "format_version": 1, "top_k": min(source.top_k, len(GROUPS)),
                "router": "weighted", "layers": {str(layer): GROUPS for layer in layers},
                "weights": {str(layer): WEIGHTS for layer in layers}}
    return {**header, "format": "moe-compress tiered plan", "format_version": 1, "team_top_k": 1,
            "layers": {str(layer): {"teams": TEAMS, "mixing": MIXING} for layer in layers}}


COMMANDS = {"prune": "prune", "prune-per-layer": "prune", "merge": "merge", "tiered": "convert tiered"}


def _hashes(directory: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(directory.iterdir()) if path.suffix == ".safetensors" or path.name == "config.json"}


@pytest.fixture(scope="module")
def written(tiny_checkpoints, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("golden")
    hashes = {}
    for family in FAMILIES:
        directory = tiny_checkpoints[family][1]
        source = open_model(str(directory))
        for method in METHODS:
            if (family, method) in UNSUPPORTED:
                continue
            plan, out = root / f"{family}-{method}.json", root / f"{family}-{method}"
            plan.write_text(json.dumps(_plan(method, source)))
            argv = [*COMMANDS[method].split(), "--model", str(directory), "--plan", str(plan), "--max-shard-size", "40000",
                    "--quiet", "--out", str(out)]
            assert main(argv) == 0, (family, method)
            hashes[f"{family}/{method}"] = _hashes(out)
    if os.environ.get("MOE_COMPRESS_WRITE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(hashes, indent=1, sort_keys=True) + "\n")
    return hashes


CASES = [(family, method) for family in FAMILIES for method in METHODS if (family, method) not in UNSUPPORTED]


@pytest.mark.parametrize("family, method", CASES, ids=[f"{f}-{m}" for f, m in CASES])
def test_outputs_are_byte_identical_to_the_golden_hashes(written, family, method):
    golden = json.loads(GOLDEN.read_text())
    assert written[f"{family}/{method}"] == golden[f"{family}/{method}"]
