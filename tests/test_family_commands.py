"""Every command on every supported model type, through the command line: each model type's tiny
model (with the demo's tokenizer, so the built-in calibration text runs) is profiled by the
layer-wise engine, pruned uniformly and to a global budget, compensated, merged, converted to teams
where its routing allows, evaluated, traced, distilled for two steps and pushed as a dry run; the
model types published in block-scaled FP8 also as such a checkpoint.

Exactness is the other tests' job (`test_prune_exactness`, `test_layerwise`, `test_merge`, ...);
here every command must accept every model type and what it writes must load again.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from compress.cli import main
from compress.resolve import demo_model_path
from conftest import FAMILIES, FP8_FAMILIES, GROUP_LIMITED, MOE_LAYERS, NO_TIERED, build_tiny_model, write_fp8_checkpoint

FAST = ["--samples", "4", "--seq-len", "32", "--quiet"]


def _run(*argv: str) -> None:
    assert main(list(argv)) == 0, argv


@pytest.mark.parametrize(("family_name", "fp8"), [(family, False) for family in FAMILIES] + [(family, True) for family in FP8_FAMILIES],
                         ids=[*FAMILIES, *(f"{family}-fp8" for family in FP8_FAMILIES)])
def test_every_command_takes_every_model_type(family_name, fp8, tmp_path, capsys):
    source = tmp_path / "source"
    model = build_tiny_model(family_name, vocab_size=2048)  # the demo tokenizer's vocabulary
    if fp8:  # as published FP8 checkpoints store it
        model.save_pretrained(tmp_path / "plain")
        write_fp8_checkpoint(tmp_path / "plain", source)
    else:
        model.save_pretrained(source, max_shard_size="40KB")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(demo_model_path() / name, source / name)
    stats, out = tmp_path / "stats.safetensors", {name: tmp_path / name for name in ("uniform", "budget", "merged", "tiered", "distilled")}

    _run("info", str(source))
    _run("profile", "--model", str(source), "--domain", "math", *FAST, "--out", str(stats))
    _run("prune", "--model", str(source), "--stats", str(stats), "--keep", "4", "--criterion", "frequency", "--quiet",
         "--out", str(out["uniform"]))
    # Group-limited routing keeps a count per group, so it has no global budget; it is compensated uniformly instead.
    budget = ["--keep", "4", "--criterion", "gate-mass"] + ([] if family_name in GROUP_LIMITED else ["--budget", "global"])
    _run("prune", "--model", str(source), "--stats", str(stats), *budget, "--compensate", "--domain", "math", *FAST,
         "--out", str(out["budget"]))
    _run("merge", "--model", str(source), "--domain", "math", "--keep", "4", *FAST, "--out", str(out["merged"]))
    if family_name not in NO_TIERED:
        layers = MOE_LAYERS[family_name]
        _run("convert", "tiered", "--model", str(source), "--stats", str(stats), "--tiers", f"{layers[0]}-{layers[-1]}:3",
             "--team-size", "2", "--quiet", "--out", str(out["tiered"]))
    _run("distill", "--teacher", str(source), "--student", str(out["uniform"]), "--domain", "math", "--steps", "2",
         "--batch-size", "2", *FAST, "--out", str(out["distilled"]))
    written = [path for path in out.values() if path.exists()]
    for path in written:
        _run("eval", "--model", str(path), "--tasks", "perplexity:math", "--max-tokens", "128", "--seq-len", "32", "--quiet")
    _run("analyze", "trace", "--model", str(out["budget"]), "--prompt", "1 + 1 =", "--max-new-tokens", "1", "--quiet")
    _run("push", str(out["budget"]), "--repo", "someone/tiny", "--dry-run")
    capsys.readouterr()

    record = json.loads((out["budget"] / "compress.json").read_text())
    assert record["operation"] == "prune" and record["compensation"]
    ids = torch.randint(3, 2048, (1, 8))
    for path in written:  # every output loads in transformers (per-layer ones through our registered classes) and runs
        loaded = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        assert torch.isfinite(loaded(input_ids=ids).logits).all(), path.name
