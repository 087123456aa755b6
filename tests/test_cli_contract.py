"""The command line's contract beyond single bad inputs: what --help imports, internal errors,
interrupts inside long compute steps, concurrent writers and what killed runs leave behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import transformers

from compress.cli import main
from compress.resolve import demo_model_path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def _compress(*argv: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    return subprocess.Popen([sys.executable, "-m", "compress", *argv], env=env, text=True, **kwargs)


def test_help_version_and_usage_errors_import_neither_torch_nor_transformers():
    code = """
import sys
from compress.cli import main
for argv in (["--help"], ["--version"], ["prune", "--help"]):
    try:
        main(argv)
    except SystemExit:
        pass
assert main(["prune", "--keep", "0"]) == 2
heavy = sorted(name for name in ("torch", "transformers", "compress.models", "safetensors") if name in sys.modules)
print("HEAVY", heavy)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout


def test_an_internal_error_is_one_line_naming_the_log_and_debug_prints_the_traceback(monkeypatch, capsys):
    import compress.model_info

    def broken(resolved):
        raise RuntimeError("something the project did wrong")

    monkeypatch.setattr(compress.model_info, "describe", broken)
    capsys.readouterr()
    assert main(["info", "demo"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error (RuntimeError: something the project did wrong)" in err
    log = Path(err.split("the traceback is in ")[1].split(" (rerun")[0])
    assert "Traceback" in log.read_text() and "compress info demo" in log.read_text()
    assert main(["info", "demo", "--debug"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and "RuntimeError: something the project did wrong" in err


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory) -> Path:
    """A gpt-oss model whose every compute step is long: one layer with two 2048×4096 experts, so
    one 16×512-token batch takes 10 s or more on 2 CPU cores in fp32 (25 s at 32×512, measured)."""
    directory = tmp_path_factory.mktemp("slow") / "model"
    rope = {"rope_type": "yarn", "factor": 1.0, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
            "original_max_position_embeddings": 512, "rope_theta": 150000.0}
    config = transformers.GptOssConfig(
        vocab_size=2048, hidden_size=2048, intermediate_size=4096, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=1, head_dim=64, num_local_experts=2, num_experts_per_tok=2, max_position_embeddings=512,
        sliding_window=128, rope_parameters=rope, layer_types=["full_attention"], eos_token_id=0, pad_token_id=0)
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).to(torch.bfloat16).save_pretrained(directory)
    for name in TOKENIZER_FILES:
        shutil.copyfile(demo_model_path() / name, directory / name)
    return directory


def _wait_for(path: Path, text: str, timeout: float = 540) -> str:
    """The file's text once it holds `text` (`timeout`: a hang guard under pytest's own 600 s, not a time limit)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = path.read_text() if path.exists() else ""
        if text in content:
            return content
        time.sleep(0.2)
    raise AssertionError(f"{text!r} never appeared in {path}: {path.read_text() if path.exists() else ''}")


def _profile_argv(model: Path, out: Path) -> list[str]:
    return ["profile", "--model", str(model), "--domain", "math", "--samples", "16", "--seq-len", "512",
            "--batch-size", "16", "--out", str(out)]


def test_sigterm_inside_a_long_step_stops_within_seconds_and_a_second_writer_fails_at_once(slow_model, tmp_path):
    out = tmp_path / "results" / "stats.safetensors"
    log = tmp_path / "first.log"
    with open(log, "w") as stderr:
        first = _compress(*_profile_argv(slow_model, out), stderr=stderr, stdout=subprocess.DEVNULL)
    try:
        _wait_for(log, "calibrating layers")  # the (long) layer is running
        second = subprocess.run([sys.executable, "-m", "compress", *_profile_argv(slow_model, out)],
                                capture_output=True, text=True, env={**os.environ, "TRITON_INTERPRET": "0"})
        assert second.returncode == 2
        assert second.stderr.count("\n") == 1 and f"another moe-compress process (pid {first.pid}) is writing" in second.stderr
        progress = log.read_text()
        assert first.poll() is None and "1/1" not in progress  # still inside its one long layer
        start = time.monotonic()
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=60)
        elapsed = time.monotonic() - start
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 130 and "interrupted" in log.read_text()
    assert elapsed < 5, f"took {elapsed:.1f} s to stop"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first.log"]  # no output, staging, lock or created parent


def test_work_that_runs_on_after_an_interrupt_adds_nothing_beside_its_outputs(tmp_path, monkeypatch):
    """The interrupt handler removes partial outputs while the worker thread runs on until the
    process exits: whatever the worker writes or starts after that must fail, not reappear."""
    import contextlib
    import threading

    from compress.checkpoint import output

    monkeypatch.setattr(output, "_interrupted", threading.Event())  # this process goes on after the test
    monkeypatch.setattr(output, "_cleanups", {})
    claimed = output.ClaimedOutput(tmp_path / "pruned", "directory", False, "--out", "output").acquire()
    work = contextlib.ExitStack()
    scratch = work.enter_context(claimed.scratch())
    staging = work.enter_context(claimed.write())
    temporary = work.enter_context(output.atomic_file(tmp_path / "plan.json"))
    (staging / "config.json").write_text("{}")
    assert len(list(tmp_path.iterdir())) == 4  # lock, scratch, staging, the plan's staging

    output.remove_partial_outputs()  # what the interrupt handler does
    assert list(tmp_path.iterdir()) == []
    for late in (temporary, staging / "model.safetensors", scratch / "layer-0.safetensors"):
        with pytest.raises(FileNotFoundError):
            late.write_text("written after the interrupt")
    for start in (claimed.write, claimed.scratch, lambda: output.atomic_file(tmp_path / "stats.safetensors")):
        with pytest.raises(KeyboardInterrupt):
            start().__enter__()
    work.__exit__(KeyboardInterrupt, KeyboardInterrupt(), None)
    assert list(tmp_path.iterdir()) == []


def test_a_killed_run_leaves_siblings_the_next_run_reports_and_removes(slow_model, tmp_path, capsys):
    out = tmp_path / "stats.safetensors"
    log = tmp_path / "killed.log"
    with open(log, "w") as stderr:
        killed = _compress(*_profile_argv(slow_model, out), stderr=stderr, stdout=subprocess.DEVNULL)
    _wait_for(log, "calibrating layers")
    killed.kill()  # kill -9: nothing of ours runs
    killed.wait(timeout=30)
    assert (tmp_path / ".stats.safetensors.lock").is_file()  # the lock file stays, but its lock died with the process
    # What a run killed while writing leaves: its staging sibling, named after its (now gone) process.
    staging = tmp_path / f".stats.safetensors.tmp-{killed.pid}-0123abcd.safetensors"
    staging.write_bytes(b"half a statistics file")
    demo_stats = tmp_path / "demo.safetensors"
    assert main(["profile", "--model", "demo", "--domain", "math", "--samples", "2", "--seq-len", "32", "--quiet",
                 "--out", str(demo_stats)]) == 0
    capsys.readouterr()
    assert main(["stats", "merge", str(demo_stats), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"removed {staging}, left by an interrupted moe-compress run (process {killed.pid})" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.safetensors", "killed.log", "stats.safetensors"]


def test_overwriting_each_kind_of_output_leaves_nothing_beside_it(tmp_path, capsys):
    stats, plan, pruned = tmp_path / "math.safetensors", tmp_path / "plan.json", tmp_path / "pruned"
    profile = ["profile", "--model", "demo", "--domain", "math", "--samples", "2", "--seq-len", "32", "--quiet", "--out", str(stats)]
    prune = ["prune", "--model", "demo", "--stats", str(stats), "--keep", "8", "--criterion", "frequency", "--quiet"]
    for overwrite in ([], ["--overwrite"]):
        assert main([*profile, *overwrite]) == 0
        assert main([*prune, "--plan-only", "--out", str(plan), *overwrite]) == 0
        assert main([*prune, "--out", str(pruned), *overwrite]) == 0
        assert main(["stats", "merge", str(stats), "-o", str(tmp_path / "merged.safetensors"), *overwrite]) == 0
        assert main(["eval", "--model", str(pruned), "--tasks", "perplexity:math", "--max-tokens", "64", "--seq-len", "32",
                     "--quiet", "--json", str(tmp_path / "eval.json")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.json", "math.safetensors", "merged.safetensors", "plan.json", "pruned"]
    assert json.loads(plan.read_text())["format"] == "moe-compress prune plan"
