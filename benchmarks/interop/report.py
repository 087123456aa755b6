"""Compare what each engine computed with transformers' reference, print the engine × output table,
and write it into README.md between its markers; exit 1 when an output an engine should serve is
refused or computes something else.

    python benchmarks/interop/report.py OUT [--readme README.md]

OUT holds manifest.json (build.py) and one results file per engine (vllm.json, mlx.json). An
output matches when every next-token log-probability is within the tolerance of transformers'
(fp32: 1e-4; an engine that computes in bf16 is held to 5e-2) and the greedy continuations are
equal. Refusals that are the engine's known limits, not the outputs' faults, are listed with their
reason and do not fail the check.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

TOLERANCE = {"float32": 1e-4, "bfloat16": 5e-2}
ENGINES = {"vllm": "vLLM", "mlx": "mlx-lm"}
# (engine, a refusal's error text, which outputs it may concern, why it is the engine's limit)
KNOWN_LIMITS = [
    ("vllm", "No MXFP4 MoE backend supports", lambda entry: "mxfp4" in entry["kind"],
     "vLLM's CPU MXFP4 kernel needs AMX (Sapphire Rapids or later); GPUs serve it"),
    ("mlx", "not supported", lambda entry: "non-uniform" in entry["kind"], "mlx-lm has no per-layer expert counts"),
    ("mlx", "parameters not in model", lambda entry: entry["family"] == "gpt_oss",
     "mlx-lm reads gpt-oss only in the MXFP4 layout"),
]
BEGIN, END = "<!-- interop table: begin -->", "<!-- interop table: end -->"


def known_limit(engine: str, entry: dict, error: str) -> str | None:
    for limit_engine, text, concerns, why in KNOWN_LIMITS:
        if limit_engine == engine and text in error and concerns(entry):
            return why
    return None


def difference(entry: dict, result: dict) -> tuple[float, bool, bool]:
    """(max |Δ log-probability|, greedy tokens equal, within the tolerance of the result's dtype)."""
    reference = entry["reference"]
    delta = max(abs(a - b) for got, want in zip(result["prompt_logprobs"], reference["prompt_logprobs"])
                for a, b in zip(got, want))
    same_tokens = result["greedy"] == reference["greedy"]
    return delta, same_tokens, delta <= TOLERANCE[result.get("dtype", "float32")] and same_tokens


def verdict(entry: dict, result: dict | None, engine: str, control: dict | None) -> tuple[str, bool]:
    """(table cell, whether it is acceptable). `control` is the engine's result on the family's
    unmodified source: where the engine already disagrees with transformers there, the family's
    rows show their differences but cannot be judged by this engine."""
    if result is None:
        return "not run", False
    if result["status"] != "ok":
        why = known_limit(engine, entry, result["error"])
        return (f"— {why}", True) if why else (f"**refused**: {result['error'][:120]}", False)
    delta, same_tokens, matches = difference(entry, result)
    dtype = "" if result.get("dtype", "float32") == "float32" else f" ({result['dtype']})"
    if matches:
        return f"✓ {delta:.1e}{dtype}", True
    if control is not None and control[1]["status"] == "ok" and not difference(*control)[2]:
        return (f"— loads; Δ {delta:.1e}, but the engine differs from transformers on the unmodified model "
                f"too (Δ {difference(*control)[0]:.1e})", True)
    return f"**✗** Δ {delta:.1e}{dtype}, greedy {'equal' if same_tokens else 'differs'}", False


def group(entry: dict) -> str:
    """A source and what was derived from it share the first part of their names ("mixtral/merged")."""
    return entry["name"].split("/")[0]


def table(manifest: dict, results: dict[str, dict]) -> tuple[str, list[str]]:
    """The markdown table (rows: family and output kind; columns: engines) and the failures."""
    engines = [engine for engine in ENGINES if engine in results]
    header = "| model | output | " + " | ".join(
        f"{ENGINES[e]} {results[e]['version']}" for e in engines) + " |"
    lines = [header, "|" + "---|" * (2 + len(engines))]
    failures = []
    originals = {group(entry): entry for entry in manifest["outputs"] if entry["kind"] == "original"}
    for entry in manifest["outputs"]:
        cells = []
        for engine in engines:
            outputs = results[engine]["outputs"]
            original = originals.get(group(entry))
            control = (original, outputs[original["name"]]) if original and original["name"] in outputs else None
            cell, ok = verdict(entry, outputs.get(entry["name"]), engine, control)
            cells.append(cell)
            if not ok:
                failures.append(f"{ENGINES[engine]} {entry['name']}: {cell}")
        lines.append(f"| {group(entry)} | {entry['kind']} | " + " | ".join(cells) + " |")
    return "\n".join(lines), failures


def eval_table(out: Path) -> tuple[str, list[str]]:
    """`compress eval --backend vllm` against the transformers backend on the same tasks (perplexity
    within 1e-3 relative), when run.sh wrote both reports."""
    paths = {backend: out / f"eval-{backend}.json" for backend in ("transformers", "vllm")}
    if not all(path.is_file() for path in paths.values()):
        return "", []
    reports = {backend: json.loads(path.read_text())["tasks"] for backend, path in paths.items()}
    lines = ["| `compress eval` on the demo | transformers | vLLM | relative difference |", "|---|---|---|---|"]
    failures = []
    for task, result in reports["transformers"].items():
        ours, theirs = result["metrics"]["perplexity"], reports["vllm"][task]["metrics"]["perplexity"]
        relative = abs(theirs - ours) / ours
        lines.append(f"| {task} perplexity | {ours:.4f} | {theirs:.4f} | {relative:.1e} |")
        if relative > 1e-3:
            failures.append(f"--backend vllm {task}: perplexity {theirs} against {ours} ({relative:.1e} relative)")
    return "\n".join(lines), failures


def served_line(out: Path) -> tuple[str, list[str]]:
    """What the vLLM server answered for a non-uniform output (run.sh asked it for 8 tokens)."""
    path = out / "served.json"
    if not path.is_file():
        return "", []
    answer = json.loads(path.read_text())
    tokens = answer.get("usage", {}).get("completion_tokens")
    text = (f"vLLM's OpenAI-compatible server on the demo's non-uniform prune answered "
            f"`Q: What is 17 + 25?\\nA:` with {tokens} tokens: `{answer['choices'][0]['text']}`")
    return text, [] if tokens == 8 else [f"the vLLM server answered {tokens} tokens, not 8"]


def write_into_readme(readme: Path, text: str) -> None:
    content = readme.read_text()
    if BEGIN not in content or END not in content:
        raise SystemExit(f"{readme} has no {BEGIN} … {END} markers")
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    readme.write_text(pattern.sub(lambda _: f"{BEGIN}\n{text}\n{END}", content))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--readme", type=Path, help="README to write the table into (between its markers)")
    args = parser.parse_args()
    manifest = json.loads((args.out / "manifest.json").read_text())
    results = {engine: json.loads((args.out / f"{engine}.json").read_text())
               for engine in ENGINES if (args.out / f"{engine}.json").is_file()}
    if not results:
        print(f"no engine results in {args.out}", file=sys.stderr)
        return 1
    text, failures = table(manifest, results)
    for extra, extra_failures in (eval_table(args.out), served_line(args.out)):
        if extra:
            text, failures = f"{text}\n\n{extra}", failures + extra_failures
    print(text)
    if args.readme:
        write_into_readme(args.readme, text)
    for failure in failures:
        print(f"FAILED {failure}", file=sys.stderr)
    print(f"interop: {len(failures)} mismatches or unexpected refusals")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
