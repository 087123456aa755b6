"""The built-in corpus, calibration mixtures of domains and `--model` resolution."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from compress.data.corpus import DOMAINS, SPLITS, load_texts
from compress.data.presets import HUB_PRESETS, preset_for
from compress.errors import DataError, ModelNotFoundError
from compress.resolve import demo_model_path, resolve_model
from conftest import cli_error


@pytest.mark.parametrize("domain", DOMAINS)
def test_splits_are_disjoint_deterministic_and_non_empty(domain):
    splits = {split: load_texts(domain, split) for split in SPLITS}
    for split, texts in splits.items():
        assert len(texts) > 10 and all(texts), (domain, split)
        assert load_texts(domain, split) == texts
    assert not set(splits["train"]) & set(splits["heldout"])
    assert not set(splits["train"]) & set(splits["calibration"])
    assert not set(splits["calibration"]) & set(splits["heldout"])


def test_math_problems_have_worked_answers_that_are_right():
    for text in load_texts("math", "calibration")[:200]:
        question, answer = text.split("\nA: ")
        assert question.startswith("Q: ") and "The answer is " in answer
        for step in answer.split(". "):  # every "a op b = c" step is correct arithmetic
            if " = " in step and "remainder" not in step and "%" not in step:
                lhs, rhs = step.split(" = ")
                assert eval(lhs.replace("divided by", "/")) == float(rhs.rstrip(".")), step


def test_code_and_prose_come_from_this_python():
    assert any("def " in text for text in load_texts("code", "heldout"))
    assert any(" the " in text for text in load_texts("general", "heldout"))


def test_unknown_domain_or_split():
    with pytest.raises(DataError, match="choose one of math, code, general"):
        load_texts("poetry", "train")
    with pytest.raises(DataError, match="unknown split"):
        load_texts("math", "test")


def test_hub_presets_cover_the_users_domains():
    for domain in ("math", "code", "science", "health", "law", "safety", "instruction_following", "general"):
        preset = preset_for(domain)
        assert "/" in preset.repo_id and preset.text_fields
    assert set(HUB_PRESETS) >= {"math", "code", "general"}
    with pytest.raises(DataError, match="no Hub preset"):
        preset_for("astrology")


def test_resolve_demo_local_and_bad_paths(tmp_path):
    demo = resolve_model("demo")
    assert demo.path == demo_model_path() and (demo.path / "config.json").is_file()
    assert resolve_model(str(tmp_path)).path == tmp_path.resolve()
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ModelNotFoundError, match="is a file"):
        resolve_model(str(tmp_path / "file.txt"))
    with pytest.raises(ModelNotFoundError, match="no such directory"):
        resolve_model(str(tmp_path / "missing"))
    with pytest.raises(ModelNotFoundError, match="could not be reached"):
        resolve_model("openai/gpt-oss-20b")  # HF_HUB_OFFLINE=1 in the tests


def test_no_top_level_kernels_or_evals_module_is_installed(tmp_path):
    """transformers probes find_spec("kernels"): the installed package must only provide
    compress.kernels (checked from another directory, so the source tree is not on sys.path)."""
    probe = (
        "import importlib.util as u; "
        "print([u.find_spec(n) is not None for n in "
        "('compress.kernels', 'compress.recipes', 'compress.evals', 'kernels', 'evals', 'recipes')])"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    assert result.stdout.strip() == "[True, True, True, False, False, False]", result.stderr


def test_hub_ids_download_only_safetensors_config_and_tokenizer(monkeypatch, tmp_path):
    import huggingface_hub
    from huggingface_hub.utils import filter_repo_objects

    calls = []

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None, ignore_patterns=None, **kwargs):
        calls.append((repo_id, revision, allow_patterns, ignore_patterns))
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    resolved = resolve_model("openai/gpt-oss-20b", revision="main")
    assert (resolved.path, resolved.hub_id, resolved.name) == (tmp_path, "openai/gpt-oss-20b", "openai/gpt-oss-20b")
    (repo_id, revision, allow, ignore), = calls
    assert (repo_id, revision) == ("openai/gpt-oss-20b", "main")
    # The files of the published gpt-oss-20b repository, filtered the way huggingface_hub filters them.
    wanted = ["model-00000-of-00002.safetensors", "model.safetensors.index.json", "config.json", "generation_config.json",
              "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "README.md"]
    unwanted = ["original/model.safetensors", "original/config.json", "metal/model.bin", "pytorch_model.bin",
                "consolidated.pt", "LICENSE", "USAGE_POLICY"]
    assert sorted(filter_repo_objects(wanted + unwanted, allow_patterns=allow, ignore_patterns=ignore)) == sorted(wanted)


def test_mixed_calibration_takes_each_domains_share_of_the_windows():
    from compress.jobs.calibration import calibration_windows
    from compress.jobs.options import CalibrationOptions
    from compress.model_loading import load_tokenizer

    tokenizer = load_tokenizer(demo_model_path())
    mixed, description = calibration_windows(CalibrationOptions(domain="math:0.75,general:0.25", samples=8, seq_len=32), tokenizer)
    math, _ = calibration_windows(CalibrationOptions(domain="math", samples=6, seq_len=32), tokenizer)
    general, _ = calibration_windows(CalibrationOptions(domain="general", samples=2, seq_len=32), tokenizer)
    assert torch.equal(mixed, torch.cat([math, general]))
    assert description.startswith("mixture: math, 6 of 8 windows (weight 0.75): ")
    assert "; general, 2 of 8 windows (weight 0.25): " in description
    # Weights near the float limit are a ratio like any others; a tiny share still gets its one window, and says so.
    huge, description = calibration_windows(CalibrationOptions(domain="math:1e308,general:1e308", samples=4, seq_len=32), tokenizer)
    assert huge.shape[0] == 4 and "math, 2 of 4 windows (weight 0.5)" in description and "general, 2 of 4 windows" in description
    _, description = calibration_windows(CalibrationOptions(domain="math:1,general:1e-9", samples=4, seq_len=32), tokenizer)
    assert "math, 3 of 4 windows (weight 1)" in description and "general, 1 of 4 windows (weight 1e-09)" in description


def test_bad_mixtures_are_refused(tmp_path, capsys):
    out = str(tmp_path / "out")
    for spec, message in (("math:0.8,general", "positive weights"), ("math:0.5,math:0.5", "twice"), ("math:-1,code:2", "positive")):
        assert message in cli_error(capsys, "prune", "--model", "demo", "--domain", spec, "--keep", "8", "--out", out)
    (tmp_path / "notes.txt").write_text("some text\n")
    assert "mixes domains" in cli_error(capsys, "prune", "--model", "demo", "--domain", "math:0.5,code:0.5", "--dataset",
                                        str(tmp_path / "notes.txt"), "--keep", "8", "--out", out)
