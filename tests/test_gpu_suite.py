"""The GPU suite (`benchmarks/gpu_suite.sh`) on CPU: its dry run (every step, Triton's interpreter,
tiny shapes) must pass and bring back what a device run brings back, and its correctness checks
must fail when the kernel is wrong — so the one prepared GPU run of a later session works."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compress.kernels import fused_moe

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import gpu_suite_summary  # noqa: E402
import moe_kernel  # noqa: E402
from test_kernels import interpreted  # noqa: E402  (skips where Triton's interpreter is broken)


@pytest.mark.rehearsal  # minutes of Triton's interpreter: `.ci/run` runs it, the unit suite does not
@interpreted
def test_the_dry_run_passes_and_returns_what_a_device_run_can_bring_back(tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(["bash", str(BENCHMARKS / "gpu_suite.sh"), "--dry-run"], capture_output=True, text=True,
                            env={**os.environ, "OUT": str(out), "PYTHON": sys.executable})
    assert result.returncode == 0, result.stdout[-4000:]
    names = sorted(path.name for path in out.iterdir())
    assert names == ["interpreter.json", "moe_kernel.json", "moe_kernel_tuned.json", "profile_overhead.json", "results.json",
                     "suite.log", "tune.json"]  # a device run brings back at most 8 plain files
    results = json.loads((out / "results.json").read_text())
    assert results["problems"] == []
    assert [(step["step"], step["exit"]) for step in results["steps"]] == [
        ("tests", "0"), ("moe_kernel", "0"), ("profile_overhead", "0"), ("tune", "0"), ("moe_kernel_tuned", "0")]
    assert results["tests"]["passed"] >= 20 and results["tests"]["failed"] == []
    assert results["goals"]["correct_on_every_shape"]["met"] is True
    kernel = json.loads((out / "moe_kernel.json").read_text())
    assert {(row["shape"], row["tokens"]) for row in kernel["rows"]} == {
        (shape.name, tokens) for shape in moe_kernel.TINY_SHAPES for tokens in (1, 8)}
    for row in kernel["rows"]:
        mxfp4 = {moe_kernel.MXFP4} if row["shape"] == "gpt-oss-tiny" else set()  # ours on MXFP4 weights: gpt-oss only
        assert set(row["results"]) == set(moe_kernel.IMPLEMENTATIONS) | mxfp4
        assert row["correct"] and all(row["results"][name]["error"] < 1e-5 for name in ("compress_triton", *mxfp4))  # fp32
        assert row["flops"] == 6 * row["tokens"] * row["top_k"] * row["hidden"] * row["intermediate"]
    # The tuned table is in the format launch_config reads, keyed by both GEMMs of the tuned shape.
    table = json.loads((out / "interpreter.json").read_text())
    assert set(table) == {"E8_N96_K64", "E8_N64_K96"} and all(set(rows) == {"1", "16"} for rows in table.values())
    overhead = json.loads((out / "profile_overhead.json").read_text())
    assert overhead["ratio"] > 0 and overhead["model"] == "gpt-oss-tiny stack of 2 layers"


@interpreted
def test_the_benchmark_exits_1_when_the_kernel_is_wrong(tmp_path, monkeypatch):
    original = fused_moe.fused_experts
    monkeypatch.setattr(fused_moe, "fused_experts", lambda *a, **k: original(*a, **k) * 1.01)  # 1% off
    path = tmp_path / "kernel.json"
    assert moe_kernel.main(["--tiny", "--shape", "Mixtral-tiny", "--tokens", "1", "--repeats", "1", "--json", str(path)]) == 1
    rows = json.loads(path.read_text())["rows"]
    assert len(rows) == 1 and rows[0]["correct"] is False
    assert rows[0]["results"]["compress_triton"]["error"] == pytest.approx(0.01, rel=1e-3)
    assert rows[0]["results"]["grouped_mm"]["error"] < 1e-5  # the references are untouched


def test_relative_error_counts_a_non_finite_output_as_wrong():
    reference = torch.ones(3, 4)
    assert moe_kernel.relative_error(reference.clone(), reference) == 0.0
    broken = reference.clone()
    broken[1, 2] = float("nan")
    assert moe_kernel.relative_error(broken, reference) == float("inf")


def _write_suite_notes(directory: Path, failed_test: bool) -> None:
    failure = '<failure message="boom"/>' if failed_test else ""
    (directory / "pytest.xml").write_text(
        '<testsuites><testsuite><testcase classname="tests.test_kernels" name="test_alignment"/>'
        f'<testcase classname="tests.test_kernels" name="test_bf16_kernels_on_a_gpu">{failure}</testcase>'
        "</testsuite></testsuites>")
    (directory / "steps.tsv").write_text("tests\t0\t3\n")


def test_the_summary_fails_the_suite_on_a_failed_test_or_a_missing_benchmark(tmp_path):
    out, notes = tmp_path / "out", tmp_path / "notes"
    out.mkdir()
    notes.mkdir()
    _write_suite_notes(notes, failed_test=True)
    assert gpu_suite_summary.main([str(out), "--mode", "gpu", "--notes", str(notes)]) == 1
    problems = json.loads((out / "results.json").read_text())["problems"]
    assert problems == ["test failed: tests.test_kernels::test_bf16_kernels_on_a_gpu", "moe_kernel: no results",
                        "moe_kernel_tuned: no results"]


def test_the_summary_fails_a_gpu_run_whose_gpu_tests_skipped(tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "pytest.xml").write_text(
        '<testsuite><testcase classname="tests.test_kernels" name="test_bf16_kernels_on_a_gpu"><skipped/></testcase></testsuite>')
    assert gpu_suite_summary.main([str(tmp_path), "--mode", "gpu", "--notes", str(notes)]) == 1
    problems = json.loads((tmp_path / "results.json").read_text())["problems"]
    assert "test skipped on the GPU: tests.test_kernels::test_bf16_kernels_on_a_gpu" in problems


def test_a_pruned_model_uses_the_table_tuned_for_the_nearest_expert_count_of_the_same_gemm():
    tuned = {"E32_N2880_K2880": {"1": "e32"}, "E128_N2880_K2880": {"1": "e128"}, "E8_N768_K2048": {"1": "qwen"},
             "default": {"1": "fallback"}}
    assert fused_moe.tuned_table(tuned, 32, 2880, 2880) == {"1": "e32"}
    assert fused_moe.tuned_table(tuned, 16, 2880, 2880) == {"1": "e32"}  # gpt-oss-20b pruned to 16
    assert fused_moe.tuned_table(tuned, 96, 2880, 2880) == {"1": "e128"}
    assert fused_moe.tuned_table(tuned, 16, 4096, 14336) == {"1": "fallback"}  # no table for this GEMM
    assert fused_moe.tuned_table({}, 16, 4096, 14336) is None


def _fake_wheel(directory: Path, name: str, version: str, requires: list[str]) -> Path:
    import zipfile

    path = directory / f"{name}-{version}-py3-none-any.whl"
    metadata = "\n".join([f"Name: {name}", f"Version: {version}", *(f"Requires-Dist: {r}" for r in requires)])
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name}-{version}.dist-info/METADATA", metadata + "\n")
    return path


@pytest.mark.parametrize("image, expected", [
    ({"transformers": "5.24.0", "regex": "2020.1.1"}, []),  # in setup.py's range: nothing is brought
    ({"transformers": "5.17.0", "regex": "2026.1.1"}, ["transformers"]),
    ({"transformers": "5.17.0", "regex": "2024.1.1"}, ["transformers", "regex"]),  # checked by transformers on import
    ({"regex": "2026.1.1"}, ["transformers"]),
])
def test_the_suite_brings_transformers_and_only_the_requirements_the_image_lacks(image, expected, tmp_path, monkeypatch, capsys):
    import gpu_suite_wheels

    wheels = {"transformers": _fake_wheel(tmp_path, "transformers", "5.24.0",
                                          ["regex>=2025.10.22", "numpy>=1.17", 'pytest; extra == "testing"']),
              "regex": _fake_wheel(tmp_path, "regex", "2026.11.19", [])}
    monkeypatch.setattr(gpu_suite_wheels, "installed", lambda name: {**image, "numpy": "2.5.2"}.get(name))
    monkeypatch.chdir(BENCHMARKS.parent)  # it reads setup.py's transformers range
    assert gpu_suite_wheels.main([str(tmp_path)]) == 0
    assert capsys.readouterr().out.split() == [str(wheels[name]) for name in expected]


def test_the_suite_stops_when_a_needed_wheel_is_not_carried(tmp_path, monkeypatch, capsys):
    import gpu_suite_wheels

    _fake_wheel(tmp_path, "transformers", "5.24.0", ["regex>=2025.10.22"])
    monkeypatch.setattr(gpu_suite_wheels, "installed", {"transformers": "5.17.0", "regex": "2024.1.1"}.get)
    monkeypatch.chdir(BENCHMARKS.parent)
    assert gpu_suite_wheels.main([str(tmp_path)]) == 1
    assert "lacks wheels for regex" in capsys.readouterr().err
