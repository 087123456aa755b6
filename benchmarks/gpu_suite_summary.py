"""The GPU suite's summary: every step's status, the tests, the goals met or not, into results.json.

Called by `gpu_suite.sh` as its last step; prints a short table (the end of a device run's output
is what comes back first) and exits 1 when a correctness check failed or a step broke.

    python benchmarks/gpu_suite_summary.py OUT --mode gpu|dry --notes DIR [--failed STEP ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

PROFILE_OVERHEAD_GOAL = 1.10


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def test_report(path: Path) -> dict | None:
    """Counts and the names of failed and skipped tests from pytest's JUnit XML."""
    try:
        root = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError):
        return None
    report = {"passed": 0, "failed": [], "skipped": []}
    for case in root.iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            report["failed"].append(name)
        elif case.find("skipped") is not None:
            report["skipped"].append(name)
        else:
            report["passed"] += 1
    return report


def steps(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        name, status, seconds = line.split("\t")
        rows.append({"step": name, "exit": status, "seconds": int(seconds)})
    return rows


def gpu_description(path: Path) -> dict | None:
    lines = path.read_text().splitlines() if path.is_file() else []
    if len(lines) < 2:
        return None
    return dict(zip((h.strip() for h in lines[0].split(",")), (v.strip() for v in lines[1].split(","))))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--mode", choices=("gpu", "dry"), required=True)
    parser.add_argument("--notes", type=Path, required=True, help="the suite's scratch folder (steps.tsv, pytest.xml, nvidia_smi.csv)")
    parser.add_argument("--failed", nargs="*", default=[], help="steps that broke")
    args = parser.parse_args(argv)

    kernel = _read_json(args.out / "moe_kernel.json")
    tuned = _read_json(args.out / "moe_kernel_tuned.json")
    tune = _read_json(args.out / "tune.json")
    overhead = _read_json(args.out / "profile_overhead.json")
    tests = test_report(args.notes / "pytest.xml")
    problems = list(args.failed)
    if tests is None:
        problems.append("no test report")
    else:
        problems += [f"test failed: {name}" for name in tests["failed"]]
        if args.mode == "gpu":  # on the GPU machine nothing may skip for want of a GPU
            problems += [f"test skipped on the GPU: {name}" for name in tests["skipped"] if "gpu" in name.lower()]
    for name, result in (("moe_kernel", kernel), ("moe_kernel_tuned", tuned)):
        if result is None:
            problems.append(f"{name}: no results")
        elif not result["goals"]["met"]["correct_on_every_shape"]:
            problems.append(f"{name}: the kernel's output is wrong on " + ", ".join(
                f"{row['shape']} T={row['tokens']}" for row in result["rows"] if not row["correct"]))

    goals = {}
    if kernel:
        goals.update({goal: {"met": met, "worst": kernel["goals"]["worst"][goal]} for goal, met in kernel["goals"]["met"].items()})
    if tuned:
        goals.update({f"tuned gpt-oss-20b: {goal}": {"met": met, "worst": tuned["goals"]["worst"][goal]}
                      for goal, met in tuned["goals"]["met"].items()})
    if overhead:
        goals["profiling_overhead<=1.10x"] = {"met": overhead["ratio"] <= PROFILE_OVERHEAD_GOAL, "worst": overhead["ratio"]}
    results = {
        "mode": args.mode, "gpu": gpu_description(args.notes / "nvidia_smi.csv"),
        "environment": (kernel or {}).get("environment"), "ceilings": (kernel or {}).get("ceilings"),
        "steps": steps(args.notes / "steps.tsv"), "tests": tests, "goals": goals,
        "tuning": [{key: bucket[key] for key in ("shape", "bucket", "tokens", "tried", "best", "default")}
                   for bucket in (tune or {}).get("buckets", [])],
        "profile_overhead": overhead, "problems": problems,
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")

    print(f"\n=== summary ({args.mode}): {args.out / 'results.json'}")
    for row in results["steps"]:
        print(f"  step {row['step']:<18} exit {row['exit']:<7} {row['seconds']:>4} s")
    if tests:
        print(f"  tests: {tests['passed']} passed, {len(tests['failed'])} failed, {len(tests['skipped'])} skipped")
    for goal, value in goals.items():
        worst = value["worst"]
        worst = f"{worst:.3g}" if isinstance(worst, float) else worst
        print(f"  goal {goal}: {'met' if value['met'] else 'NOT met'} ({worst})")
    for problem in problems:
        print(f"  PROBLEM: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
