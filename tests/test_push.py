"""`compress push`: the dry run's file list and card, sufficiency of those files, errors, and a
real-Hub round trip that runs only with a token and network."""

from __future__ import annotations

import os
import re
import shutil
import uuid

import pytest
import torch
from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM

from compress.cli import main
from conftest import cli_error


@pytest.fixture(scope="module")
def derived(tmp_path_factory):
    root = tmp_path_factory.mktemp("push")
    fast = ["--samples", "8", "--seq-len", "64", "--dtype", "float32", "--quiet"]
    assert main(["profile", "--model", "demo", "--domain", "math", "--out", str(root / "math.safetensors"), *fast]) == 0
    assert main(["prune", "--model", "demo", "--stats", str(root / "math.safetensors"), "--keep", "8", "--criterion",
                 "gate-mass", "--out", str(root / "uniform"), "--quiet"]) == 0
    assert main(["prune", "--model", "demo", "--stats", str(root / "math.safetensors"), "--keep", "8", "--budget", "global",
                 "--criterion", "frequency", "--out", str(root / "global"), "--quiet"]) == 0
    text = root / "notes.txt"
    text.write_text("Q: What is 2 + 3?\nA: 5\n\nQ: What is 7 + 1?\nA: 8\n" * 20)
    assert main(["eval", "--model", str(root / "uniform"), "--tasks", f"perplexity:{text}",
                 "--seq-len", "64", "--dtype", "float32", "--quiet"]) == 0  # a full evaluation
    assert main(["eval", "--model", str(root / "uniform"), "--tasks", "perplexity:math", "--limit", "20",
                 "--seq-len", "64", "--dtype", "float32", "--quiet"]) == 0  # a limited one
    return root


def _dry_run(capsys, directory) -> tuple[list[str], ModelCard]:
    capsys.readouterr()
    assert main(["push", str(directory), "--repo", "someone/derived-demo", "--dry-run"]) == 0
    out = capsys.readouterr().out
    listing, card_text = out.split("\n\n", 1)
    files = [line.split()[0] for line in listing.splitlines()[1:] if line.startswith("  ")]
    return files, ModelCard(card_text)  # huggingface_hub's own parser


@pytest.mark.parametrize("name", ["uniform", "global"])
def test_dry_run_lists_sufficient_files_and_a_valid_card(derived, capsys, tmp_path, name):
    files, card = _dry_run(capsys, derived / name)
    expected = sorted(p.name for p in (derived / name).iterdir() if p.is_file() and p.name != "README.md") + ["README.md"]
    assert sorted(files) == sorted(expected)
    data = card.data
    assert data.library_name == "transformers" and data.pipeline_tag == "text-generation"
    assert {"moe", "moe-compress", "pruned", "gpt_oss"} <= set(data.tags)
    assert data.base_model is None  # the demo is not a Hub model; a Hub source would be named here
    assert "## What was removed, and why" in card.text and "![expert usage" in card.text
    assert "## Reproduce" in card.text and "compress prune --model demo" in card.text
    if name == "uniform":  # full `compress eval` results become model-index entries; limited ones only text
        metrics = {(result.dataset_name, result.metric_type): result.metric_value for result in data.eval_results}
        assert metrics[(f"perplexity:{derived / 'notes.txt'}", "perplexity")] > 1
        assert not any(task == "perplexity:math" for task, _ in metrics)
        assert "limited to 20 documents/examples per task: not a full evaluation" in card.text
    else:
        assert "modeling_moe_compress.py" in files
    # The listed files alone are a loadable model.
    copy = tmp_path / "copy"
    copy.mkdir()
    for file in files:
        if file != "README.md":
            shutil.copyfile(derived / name / file, copy / file)
    card.save(copy / "README.md")
    model = AutoModelForCausalLM.from_pretrained(copy)
    with torch.no_grad():
        assert model(input_ids=torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 2048)


def test_statistics_under_a_weights_name_are_not_uploaded(derived, capsys, tmp_path):
    """An output written before statistics moved out of `*.safetensors`: engines would load the file as weights."""
    old = tmp_path / "old-output"
    shutil.copytree(derived / "uniform", old)
    (old / "routing_stats.moe-stats").rename(old / "routing_stats.safetensors")
    files, _ = _dry_run(capsys, old)
    assert "routing_stats.safetensors" not in files and "model.safetensors" in files
    assert main(["push", str(old), "--repo", "someone/old", "--dry-run"]) == 0
    assert "left out routing_stats.safetensors" in capsys.readouterr().err


def test_bad_input_gives_one_line_errors(derived, capsys, tmp_path, monkeypatch):
    assert "not a Hub repository id" in cli_error(capsys, "push", str(derived / "uniform"), "--repo", "just-a-name", "--dry-run")
    broken = tmp_path / "broken"
    shutil.copytree(derived / "uniform", broken)
    (broken / "compress.json").unlink()
    assert "missing compress.json" in cli_error(capsys, "push", str(broken), "--repo", "a/b", "--dry-run")
    shutil.copytree(derived / "uniform", tmp_path / "no-weights")
    (tmp_path / "no-weights" / "model.safetensors").unlink()
    assert "missing the weights (model.safetensors" in cli_error(capsys, "push", str(tmp_path / "no-weights"), "--repo", "a/b", "--dry-run")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no stored login either
    assert "hf auth login" in cli_error(capsys, "push", str(derived / "uniform"), "--repo", "a/b")


def test_a_routing_report_is_opt_in_uploaded_and_linked_from_the_card(derived, capsys, tmp_path, monkeypatch):
    files, card = _dry_run(capsys, derived / "uniform")
    assert "report.html" not in files and "Routing report" not in card.text  # opt-in
    capsys.readouterr()
    assert main(["push", str(derived / "uniform"), "--repo", "a/b", "--dry-run", "--report"]) == 0
    assert re.search(r"^  report\.html  \([\d,]+ bytes, the routing report\)$", capsys.readouterr().out, re.M)
    assert "--report notes.txt is not a report" in cli_error(capsys, "push", str(derived / "uniform"), "--repo", "a/b", "--dry-run",
                                                              "--report", str(derived / "notes.txt")).replace(str(derived) + "/", "")
    # The upload: the folder, then report.html (the given report's bytes), then the card that links it.
    assert main(["report", str(derived / "math.safetensors"), "-o", str(tmp_path / "routing.html")]) == 0
    calls = []

    class Hub:
        def __init__(self, *args, **kwargs):
            pass

        def create_repo(self, repo_id, **kwargs):
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, **kwargs):
            calls.append(("folder", sorted(kwargs["allow_patterns"])))

        def upload_file(self, **kwargs):
            calls.append((kwargs["path_in_repo"], kwargs["path_or_fileobj"]))

    monkeypatch.setattr("huggingface_hub.HfApi", Hub)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: "token")
    monkeypatch.setattr(ModelCard, "push_to_hub", lambda card, *args, **kwargs: calls.append(("README.md", card.text)))
    assert main(["push", str(derived / "uniform"), "--repo", "a/b", "--report", str(tmp_path / "routing.html")]) == 0
    assert [call[0] for call in calls] == ["folder", "report.html", "README.md"]
    assert "report.html" not in calls[0][1] and calls[1][1] == (tmp_path / "routing.html").read_bytes()
    assert "## Routing report\n\n[report.html](report.html)" in calls[2][1]


@pytest.mark.skipif(not os.environ.get("HF_TOKEN") or os.environ.get("HF_HUB_OFFLINE") == "1",
                    reason="needs HF_TOKEN and network (tests run offline)")
def test_push_to_the_real_hub_and_load_back(derived):
    from huggingface_hub import HfApi, whoami

    repo = f"{whoami()['name']}/moe-compress-test-{uuid.uuid4().hex[:8]}"
    try:
        assert main(["push", str(derived / "uniform"), "--repo", repo, "--private", "--report"]) == 0
        model = AutoModelForCausalLM.from_pretrained(repo)
        assert "report.html" in HfApi().list_repo_files(repo)
        assert model.config.num_local_experts == 8
    finally:
        HfApi().delete_repo(repo, missing_ok=True)
