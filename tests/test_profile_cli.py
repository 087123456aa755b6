"""`compress profile` and `compress stats` end to end on the demo model: files, merges, torchrun,
readable output, and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from compress.cli import main
from compress.data.calibration import calibration_source
from compress.resolve import demo_model_path
from compress.stats import RoutingStats
from conftest import cli_error

FAST = ["--samples", "8", "--seq-len", "64", "--batch-size", "2", "--dtype", "float32", "--quiet"]


def _profile(out, *extra):
    assert main(["profile", "--model", "demo", "--out", str(out), *FAST, *extra]) == 0


@pytest.fixture(scope="module")
def domain_stats(tmp_path_factory):
    root = tmp_path_factory.mktemp("stats")
    for domain in ("math", "code"):
        _profile(root / f"{domain}.safetensors", "--domain", domain)
    return root


def _tensors(stats: RoutingStats) -> dict:
    return {(layer, name): t for layer, s in stats.layers.items() for name, t in s.items()}


def test_profile_writes_statistics_of_every_moe_layer(domain_stats):
    stats = RoutingStats.load(domain_stats / "math.safetensors")
    assert stats.layer_indices == list(range(6))
    m = stats.metadata
    assert (m["model"], m["family"], m["top_k"], m["domain"], m["samples"], m["seq_len"], m["tokens"]) == (
        "demo", "gpt_oss", 4, "math", 8, 64, 512)
    assert m["sources"][0]["data"] == "built-in corpus: math (calibration split)"
    for layer in stats.layer_indices:
        s = stats.layers[layer]
        assert int(s["tokens"]) == 512 and int(s["selections"].sum()) == 512 * 4 and int(s["top1"].sum()) == 512
        assert int(s["position0"].sum()) == 8 * 4
        assert torch.equal(s["coactivation"].diagonal(), s["selections"])
        assert float(s["gate_mass"].sum()) == pytest.approx(512, rel=1e-5)  # gpt-oss weights sum to 1 per token
        assert ("transitions" in s) == (layer > 0)


def test_merge_of_two_halves_equals_profiling_the_whole(tmp_path):
    _profile(tmp_path / "whole.safetensors", "--domain", "code")
    _profile(tmp_path / "a.safetensors", "--domain", "code", "--samples", "4")
    _profile(tmp_path / "b.safetensors", "--domain", "code", "--samples", "4", "--skip-samples", "4")
    assert main(["stats", "merge", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"),
                 "-o", str(tmp_path / "merged.safetensors")]) == 0
    whole, merged = (RoutingStats.load(tmp_path / f"{name}.safetensors") for name in ("whole", "merged"))
    a = RoutingStats.load(tmp_path / "a.safetensors")
    assert not all(torch.equal(t, _tensors(whole)[key]) for key, t in _tensors(a).items())  # the halves differ
    for key, tensor in _tensors(whole).items():
        assert torch.equal(_tensors(merged)[key], tensor), key
    assert (merged.metadata["tokens"], merged.metadata["samples"], merged.metadata["seq_len"]) == (512, 8, 64)


def test_two_torchrun_processes_write_the_same_file_as_one(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # same CPU kernels in every process
    args = ["profile", "--model", "demo", "--domain", "general", *FAST, "--samples", "6"]
    one = subprocess.run([sys.executable, "-m", "compress", *args, "--out", str(tmp_path / "one.safetensors")],
                         env=env, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "compress", *args, "--out", str(tmp_path / "two.safetensors")],
                         env=env, capture_output=True, text=True)
    assert two.returncode == 0, two.stderr
    assert "2 processes" in two.stdout
    assert (tmp_path / "two.safetensors").read_bytes() == (tmp_path / "one.safetensors").read_bytes()


def test_show_lists_entropy_concentration_and_cold_experts(domain_stats, capsys):
    assert main(["stats", "show", str(domain_stats / "math.safetensors"), "--cold-threshold", "0.05", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    stats = RoutingStats.load(domain_stats / "math.safetensors")
    layer0 = summary["layers"][0]
    rates = stats.layers[0]["selections"].double() / 512
    assert layer0["cold_experts"] == [e for e in range(16) if rates[e] < 0.05]
    assert layer0["top_experts"][0]["expert"] == int(rates.argmax())
    assert layer0["entropy_nats"] == pytest.approx(float(stats.layers[0]["entropy_sum"]) / 512, abs=1e-4)
    assert 0 < layer0["entropy_normalized"] <= 1 and 0 <= layer0["gini"] < 1
    assert main(["stats", "show", str(domain_stats / "math.safetensors")]) == 0
    text = capsys.readouterr().out
    assert "demo (gpt_oss, top-4) · domain math" in text and "entropy" in text


def test_diff_shows_per_layer_divergence_between_domains(domain_stats, capsys):
    assert main(["stats", "diff", str(domain_stats / "math.safetensors"), str(domain_stats / "code.safetensors"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    math_stats, code_stats = (RoutingStats.load(domain_stats / f"{d}.safetensors") for d in ("math", "code"))
    for layer in result["layers"]:
        p = math_stats.layers[layer["layer"]]["selections"].double()
        q = code_stats.layers[layer["layer"]]["selections"].double()
        p, q = p / p.sum(), q / q.sum()
        m = (p + q) / 2
        expected = 0.5 * float((p * (p / m).log2()).nansum()) + 0.5 * float((q * (q / m).log2()).nansum())
        assert layer["js_divergence_bits"] == pytest.approx(expected, abs=1e-4)
    assert result["mean_js_divergence_bits"] > 0.05  # the demo routes math and code differently
    assert main(["stats", "diff", str(domain_stats / "math.safetensors"), str(domain_stats / "math.safetensors"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["mean_js_divergence_bits"] == 0


def test_plot_writes_png_heatmaps(domain_stats, tmp_path, capsys):
    assert main(["stats", "plot", str(domain_stats / "math.safetensors"), "-o", str(tmp_path), "--layer", "2"]) == 0
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {"usage.png", "reap.png", "coactivation_layer2.png", "transitions_layer2.png"}
    for path in tmp_path.iterdir():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_calibration_files_txt_jsonl_parquet(tmp_path):
    (tmp_path / "a.txt").write_text("first document\n\nsecond document\n")
    assert list(calibration_source("x", str(tmp_path / "a.txt")).texts) == ["first document", "second document"]
    (tmp_path / "a.jsonl").write_text('{"q": "two", "a": "2"}\n\n{"q": "three", "a": "3"}\n')
    assert list(calibration_source("x", str(tmp_path / "a.jsonl"), "q,a").texts) == ["two\n\n2", "three\n\n3"]
    pyarrow = pytest.importorskip("pyarrow")
    import pyarrow.parquet as parquet

    parquet.write_table(pyarrow.table({"text": ["alpha", "beta"], "n": [1, 2]}), tmp_path / "a.parquet")
    assert list(calibration_source("x", str(tmp_path / "a.parquet")).texts) == ["alpha", "beta"]


def test_profile_from_a_jsonl_file(tmp_path):
    lines = [json.dumps({"body": f"Q: What is {i} + {i}?\nA: {i} + {i} = {2 * i}. The answer is {2 * i}."}) for i in range(200)]
    (tmp_path / "data.jsonl").write_text("\n".join(lines))
    _profile(tmp_path / "s.safetensors", "--domain", "sums", "--dataset", str(tmp_path / "data.jsonl"), "--text-field", "body")
    stats = RoutingStats.load(tmp_path / "s.safetensors")
    assert stats.metadata["domain"] == "sums" and stats.metadata["tokens"] == 512
    assert stats.metadata["sources"][0]["data"].endswith("data.jsonl (field body)")



def test_bad_input_gives_one_line_errors(tmp_path, capsys):
    out = str(tmp_path / "out.safetensors")
    base = ["profile", "--model", "demo", "--domain", "math", "--out", out, "--quiet"]
    (tmp_path / "empty.jsonl").write_text("")
    assert "is empty" in cli_error(capsys, *base, "--dataset", str(tmp_path / "empty.jsonl"))
    (tmp_path / "blank.txt").write_text("\n\n  \n")
    assert "holds no text" in cli_error(capsys, *base, "--dataset", str(tmp_path / "blank.txt"))
    assert "does not exist" in cli_error(capsys, *base, "--dataset", str(tmp_path / "missing.jsonl"))
    (tmp_path / "rows.jsonl").write_text('{"content": "hello"}\n')
    err = cli_error(capsys, *base, "--dataset", str(tmp_path / "rows.jsonl"), "--text-field", "text")
    assert "no field 'text'" in err and "content" in err
    assert "is a directory" in cli_error(capsys, *base, "--dataset", str(tmp_path))
    assert "Hub dataset someone/nonexistent" in cli_error(capsys, *base, "--dataset", "someone/nonexistent")
    assert "beyond the model's 512 positions" in cli_error(capsys, *base, "--seq-len", "600")
    assert "no built-in corpus for domain 'law'" in cli_error(capsys, "profile", "--model", "demo", "--domain", "law", "--out", out)
    assert not os.path.exists(out)
    (tmp_path / "taken.safetensors").write_bytes(b"keep")
    assert "exists" in cli_error(capsys, "profile", "--model", "demo", "--domain", "math", "--out", str(tmp_path / "taken.safetensors"))
    assert (tmp_path / "taken.safetensors").read_bytes() == b"keep"


def test_merging_files_of_different_models_is_refused(domain_stats, tmp_path, capsys):
    from compress.stats.profile import profile_windows
    from conftest import build_tiny_model, cli_error

    tiny = profile_windows(build_tiny_model("gpt_oss"), torch.randint(3, 64, (2, 8)), batch_size=2, model_name="tiny",
                   domain="math", data="random", progress=False)
    tiny.save(tmp_path / "tiny.safetensors")
    err = cli_error(capsys, "stats", "merge", str(domain_stats / "math.safetensors"), str(tmp_path / "tiny.safetensors"),
                 "-o", str(tmp_path / "merged.safetensors"))
    assert "different models" in err
    assert not (tmp_path / "merged.safetensors").exists()
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    assert "not a readable safetensors statistics file" in cli_error(capsys, "stats", "show", str(tmp_path / "junk.safetensors"))
    assert "does not exist" in cli_error(capsys, "stats", "show", str(tmp_path / "nothing.safetensors"))


def test_the_default_window_fits_a_model_with_fewer_positions(tmp_path):
    source = tmp_path / "short"
    shutil.copytree(demo_model_path(), source)
    config = json.loads((source / "config.json").read_text())
    config["max_position_embeddings"] = 128
    (source / "config.json").write_text(json.dumps(config))
    out = tmp_path / "stats.safetensors"
    assert main(["profile", "--model", str(source), "--domain", "math", "--samples", "2", "--quiet", "--out", str(out)]) == 0
    assert RoutingStats.load(out).metadata["seq_len"] == 128  # not the 512 default, which this model cannot take
