"""`compress prune` end to end on the demo model: outputs, plans, budgets, provenance, errors and
interruption."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from compress.checkpoint.files import read_config
from compress.checkpoint.reader import CheckpointReader
from compress.cli import main
from compress.pruning.plan import PrunePlan
from compress.pruning.select import expert_scores
from compress.resolve import demo_model_path
from compress.stats import RoutingStats
from conftest import cli_error, glob_loaded_weight_files

FAST = ["--samples", "8", "--seq-len", "64", "--dtype", "float32", "--quiet"]


@pytest.fixture(scope="module")
def math_stats(tmp_path_factory):
    path = tmp_path_factory.mktemp("prune") / "math.safetensors"
    assert main(["profile", "--model", "demo", "--domain", "math", "--out", str(path), *FAST]) == 0
    return path


def _prune(*argv) -> int:
    return main(["prune", "--model", "demo", "--quiet", *argv])


def test_main_job_profiles_selects_and_writes_a_stock_checkpoint(tmp_path, capsys):
    """The README's main job (with fewer calibration windows, for time)."""
    out = tmp_path / "demo-math-keep8"
    assert _prune("--domain", "math", "--keep", "8", "--out", str(out), "--samples", "16", "--seq-len", "128") == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith("kept 8 of 16 experts in each of 6 MoE layers (reconstruct); parameters 5.59M → 3.21M")
    config = read_config(out)
    assert (config["num_local_experts"], config["num_experts_per_tok"], config["model_type"]) == (8, 4, "gpt_oss")
    provenance = json.loads((out / "compress.json").read_text())
    assert provenance["plan"]["provenance"]["criterion"] == "reconstruct"
    assert provenance["statistics"]["sha256"] == "sha256:" + hashlib.sha256((out / "routing_stats.moe-stats").read_bytes()).hexdigest()
    stats = RoutingStats.load(out / "routing_stats.moe-stats")
    assert glob_loaded_weight_files(out) == ["model.safetensors"]  # engines take the weights and nothing else
    assert stats.metadata["domain"] == "math" and stats.metadata["tokens"] == 16 * 128
    card = (out / "README.md").read_text()
    assert "base_model: demo" in card and "![expert usage and removed experts](expert_usage.png)" in card
    assert (out / "expert_usage.png").read_bytes()[:4] == b"\x89PNG"
    model = AutoModelForCausalLM.from_pretrained(out)  # stock transformers, no remote code
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("Q: What is 2 + 3?\nA:", return_tensors="pt").input_ids
    generated = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    assert generated.shape[1] == ids.shape[1] + 8


@pytest.mark.parametrize("criterion", ["reap", "gate-mass"])
def test_score_criteria_keep_the_top_scores_of_the_statistics(math_stats, tmp_path, criterion):
    out = tmp_path / "pruned"
    assert _prune("--stats", str(math_stats), "--keep", "8", "--criterion", criterion, "--out", str(out)) == 0
    plan = PrunePlan.from_dict(json.loads((out / "compress.json").read_text())["plan"])
    stats = RoutingStats.load(math_stats)
    for layer, kept in plan.layers.items():
        s = stats.layers[layer]
        scores = s["reap_sum"] / s["selections"].clamp(min=1) if criterion == "reap" else s["gate_mass"]
        assert sorted(kept) == sorted(torch.argsort(scores, descending=True, stable=True)[:8].tolist())
    assert (out / "routing_stats.moe-stats").read_bytes() == math_stats.read_bytes()


def test_plan_only_then_an_edited_plan(math_stats, tmp_path):
    plan_path = tmp_path / "plan.json"
    assert _prune("--stats", str(math_stats), "--keep", "6", "--criterion", "frequency", "--plan-only", "--out", str(plan_path)) == 0
    assert not (tmp_path / "plan").exists()
    data = json.loads(plan_path.read_text())
    assert data["provenance"]["criterion"] == "frequency" and all(len(k) == 6 for k in data["layers"].values())
    data["layers"]["0"] = [15, 0, 1, 2, 3, 4]  # by hand: order is the new numbering
    plan_path.write_text(json.dumps(data))
    out = tmp_path / "edited"
    assert _prune("--plan", str(plan_path), "--out", str(out)) == 0
    source, pruned = CheckpointReader(demo_model_path()), CheckpointReader(out)
    key = "model.layers.0.mlp.router.weight"
    assert torch.equal(pruned.read(key), source.read(key)[[15, 0, 1, 2, 3, 4]])


def test_global_budget_gives_per_layer_counts_that_load_with_auto_classes(math_stats, tmp_path):
    out = tmp_path / "global"
    assert _prune("--stats", str(math_stats), "--keep", "8", "--budget", "global", "--min-per-layer", "5",
                  "--criterion", "frequency", "--out", str(out)) == 0
    config = read_config(out)
    counts = {int(layer): n for layer, n in config["experts_per_layer"].items()}
    assert sum(counts.values()) == 8 * 6 and min(counts.values()) >= 5 and len(set(counts.values())) > 1
    model = AutoModelForCausalLM.from_pretrained(out)
    for layer, n in counts.items():
        assert model.model.layers[layer].mlp.experts.gate_up_proj.shape[0] == n


def test_protected_experts_are_kept(math_stats, tmp_path):
    plan_path = tmp_path / "plan.json"
    stats = RoutingStats.load(math_stats)
    coldest = int(torch.argmin(expert_scores(stats, 2, "reap")))
    assert _prune("--stats", str(math_stats), "--keep", "4", "--criterion", "reap", "--protect", f"2:{coldest}", "--protect", "all:0",
                  "--plan-only", "--out", str(plan_path)) == 0
    plan = PrunePlan.load(plan_path)
    assert coldest in plan.layers[2] and all(0 in kept for kept in plan.layers.values())


def test_reconstruct_criterion_on_the_demo_model(tmp_path):
    plan_path = tmp_path / "plan.json"
    assert _prune("--domain", "code", "--keep", "4", "--criterion", "reconstruct", "--plan-only", "--out", str(plan_path),
                  "--samples", "4", "--seq-len", "64", "--dtype", "float32") == 0
    plan = PrunePlan.load(plan_path)
    assert plan.provenance["criterion"] == "reconstruct" and all(len(k) == 4 for k in plan.layers.values())


def _error(capsys, *argv) -> str:
    return cli_error(capsys, "prune", "--quiet", *argv)


def test_bad_input_gives_one_line_errors(math_stats, tmp_path, capsys):
    source = tmp_path / "source"
    shutil.copytree(demo_model_path(), source)
    before = {p.name: p.read_bytes() for p in source.iterdir()}
    base = ["--model", str(source), "--stats", str(math_stats)]
    # the statistics belong to `demo`, whose fingerprint the copy shares
    assert "more than the 16 experts" in _error(capsys, *base, "--keep", "17", "--out", str(tmp_path / "a"))
    assert "at least 1" in _error(capsys, *base, "--keep", "0", "--out", str(tmp_path / "a"))
    assert "--keep-ratio: must be in (0, 1]" in _error(capsys, *base, "--keep-ratio", "1.5", "--out", str(tmp_path / "a"))
    assert "is the source model or inside it" in _error(capsys, *base, "--keep", "8", "--out", str(source))
    assert "is the source model or inside it" in _error(capsys, *base, "--keep", "8", "--out", str(source / "pruned"))
    assert "contains the source model" in _error(capsys, *base, "--keep", "8", "--out", str(tmp_path), "--overwrite")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")  # an empty directory would count as free
    assert "exists: pass --overwrite" in _error(capsys, *base, "--keep", "8", "--out", str(tmp_path / "taken"))
    assert "invalid choice: 'loudest'" in _error(capsys, *base, "--keep", "8", "--criterion", "loudest", "--out", str(tmp_path / "a"))
    assert "say how many experts to keep" in _error(capsys, *base, "--out", str(tmp_path / "a"))
    assert "pass --domain" in _error(capsys, "--model", str(source), "--keep", "8", "--out", str(tmp_path / "a"))
    assert {p.name: p.read_bytes() for p in source.iterdir()} == before
    assert not (tmp_path / "a").exists()


def test_statistics_of_another_model_and_dense_models_are_refused(math_stats, tmp_path, capsys):
    from conftest import build_tiny_model

    tiny = build_tiny_model("mixtral")
    tiny.save_pretrained(tmp_path / "mixtral")
    err = _error(capsys, "--model", str(tmp_path / "mixtral"), "--stats", str(math_stats), "--keep", "2", "--out", str(tmp_path / "x"))
    assert "different model" in err
    import transformers

    dense = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    dense.save_pretrained(tmp_path / "dense")
    assert "dense" in _error(capsys, "--model", str(tmp_path / "dense"), "--keep", "2", "--out", str(tmp_path / "y"))


def _interrupted_once_staging_appears(argv: list[str], sig) -> subprocess.Popen:
    """`compress ARGV` in a process of its own, sent `sig` as soon as a staging sibling of its
    --out appears; returned once it has ended."""
    out = Path(argv[argv.index("--out") + 1])
    process = subprocess.Popen([sys.executable, "-m", "compress", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 540  # a hang guard under pytest's own 600 s, not a time limit on the work
    while not list(out.parent.glob(f".{out.name}.tmp-*")) and process.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    assert process.poll() is None, "the run ended before it could be interrupted"
    process.send_signal(sig)
    process.wait(timeout=60)
    return process


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_an_interrupted_run_leaves_no_output_and_the_source_unchanged(math_stats, tmp_path, sig):
    source = tmp_path / "source"
    shutil.copytree(demo_model_path(), source)
    before = {p.name: p.read_bytes() for p in source.iterdir()}
    out = tmp_path / "pruned"
    process = _interrupted_once_staging_appears(["prune", "--model", str(source), "--stats", str(math_stats), "--keep", "8",
                                                 "--criterion", "ean", "--out", str(out)], sig)
    assert process.returncode != 0
    assert not out.exists()
    if sig == signal.SIGTERM:  # a catchable stop also removes the half-written staging directory
        assert not list(tmp_path.glob(".pruned*")), list(tmp_path.iterdir())
    assert {p.name: p.read_bytes() for p in source.iterdir()} == before


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_an_interrupted_compensation_leaves_nothing_the_next_run_does_not_remove(math_stats, tmp_path, sig, capsys):
    """--compensate keeps its fits in a scratch sibling of the output: an interrupt removes it, and
    after a ``kill -9`` the next run to the same output does (and says so)."""
    out = tmp_path / "pruned"
    argv = ["prune", "--model", "demo", "--stats", str(math_stats), "--keep", "8", "--criterion", "frequency", "--compensate",
            "--domain", "math", "--samples", "64", "--seq-len", "128", "--out", str(out)]
    process = _interrupted_once_staging_appears(argv, sig)
    assert process.returncode != 0 and not out.exists()
    left = sorted(path.name for path in tmp_path.iterdir() if path.name.startswith("."))
    if sig == signal.SIGTERM:
        assert left == [], process.stderr.read().decode()[-3000:]
        return
    assert left and all(name.startswith(".pruned.") for name in left), left
    capsys.readouterr()
    assert main([*argv[:9], "--out", str(out), "--quiet"]) == 0  # the same output, without --compensate
    assert "left by an interrupted moe-compress run" in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["pruned"]


def test_only_compensation_makes_a_scratch_directory(math_stats, tmp_path, monkeypatch):
    from compress.checkpoint.output import ClaimedOutput

    def refuse(self):
        raise AssertionError("a scratch directory without --compensate")

    monkeypatch.setattr(ClaimedOutput, "scratch", refuse)
    assert main(["merge", "--model", "demo", "--domain", "math", "--keep", "8", "--samples", "4", "--seq-len", "64", "--quiet",
                 "--out", str(tmp_path / "merged")]) == 0
    assert main(["prune", "--model", "demo", "--stats", str(math_stats), "--keep", "8", "--criterion", "frequency", "--quiet",
                 "--out", str(tmp_path / "pruned")]) == 0


def test_prune_with_compensation_records_it_and_needs_calibration_text(tmp_path, capsys):
    stats = tmp_path / "math.safetensors"
    calibration = ["--samples", "8", "--seq-len", "64", "--quiet"]
    assert main(["profile", "--model", "demo", "--domain", "math", "--out", str(stats), *calibration]) == 0
    prune = ["prune", "--model", "demo", "--stats", str(stats), "--criterion", "gate-mass", "--keep", "8", "--compensate"]
    assert "pass --domain" in cli_error(capsys, *prune, "--out", str(tmp_path / "x"))
    assert main([*prune, "--domain", "math", "--out", str(tmp_path / "pruned"), *calibration]) == 0
    record = json.loads((tmp_path / "pruned" / "compress.json").read_text())
    assert record["operation"] == "prune" and record["plan"]["format"] == "moe-compress prune plan"
    assert all(layer["error_after"] < layer["error_before"] for layer in record["compensation"].values())
    assert all(0 < layer["heldout_error_after"] and 0 < layer["heldout_error_before"] for layer in record["compensation"].values())
    card = (tmp_path / "pruned" / "README.md").read_text()
    assert "## Compensation" in card and "| layer | fitted, without | fitted, with | held out, without | held out, with |" in card
    assert not any(path.name.startswith(".moe-compress-compensation") for path in tmp_path.iterdir())  # spill removed
    glob_loaded_weight_files(tmp_path / "pruned")
    AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
