"""What `compress report` shows, gathered from its inputs as plain data (JSON-ready).

Inputs are recognised by what they are: a routing statistics file (`compress profile`), a derived
output (a folder with ``compress.json``), a size frontier (its ``compress.json`` says
``operation: frontier``); token-level routing needs a model and prompts. The numbers of a
statistics file are the ones `compress stats show --json` prints (`stats.summary.summarize`) plus
the per-expert sums the heatmaps draw, so the page and the command never disagree.
"""

from __future__ import annotations

import datetime
import itertools
import json
from pathlib import Path

from .. import __version__
from ..checkpoint.files import PROVENANCE_FILE
from ..errors import CompressError


def _rounded(values, digits: int = 6) -> list:
    """Floats kept to `digits` significant digits: the page shows 3-4, and the file stays small."""
    return [float(f"{v:.{digits}g}") for v in values.tolist()]


def statistics_entry(name: str, stats) -> dict:
    """One statistics file: its `compress stats show --json` summary and per-expert sums per layer."""
    from ..stats.summary import header, reap_saliency, summarize

    layers = stats.layer_indices  # the summary's order; the page reads layer numbers and token counts from it
    return {
        "name": name, "header": header(stats),
        "summary": summarize(stats),
        "selections": [stats.layers[layer]["selections"].tolist() for layer in layers],
        "gate_mass": [_rounded(stats.layers[layer]["gate_mass"]) for layer in layers],
        "reap": [_rounded(reap_saliency(stats, layer)) for layer in layers],
    }


def divergence_entries(statistics: list[tuple[str, object]]) -> list[dict]:
    """Per-layer divergence (`compress stats diff`) of every pair of domains measured on the same model."""
    from ..stats.summary import divergence

    return [{"a": a_name, "b": b_name, "result": divergence(a, b)}
            for (a_name, a), (b_name, b) in itertools.combinations(statistics, 2)
            if a.metadata.get("fingerprint") == b.metadata.get("fingerprint") and a.layer_indices == b.layer_indices
            and a.metadata.get("domain") != b.metadata.get("domain")]


def _units(plan: dict) -> dict[str, list[dict]]:
    """Per MoE layer, what became of each of the source's experts (teams, for a tiered source):
    kept, dropped, merged into a group (with its dominant expert), or placed in a tiered team."""
    counts = (plan.get("source") or {}).get("experts_per_layer") or {}
    result = {}
    for layer, entry in plan["layers"].items():
        if isinstance(entry, dict):  # tiered conversion: teams of original experts
            groups, state = entry["teams"], "team"
        elif entry and isinstance(entry[0], list):  # merge: groups, the dominant expert first
            groups, state = entry, "merged"
        else:  # prune: the kept experts
            groups, state = [[e] for e in entry], "kept"
        seen = {e for group in groups for e in group}
        total = int(counts.get(layer, max(seen, default=-1) + 1))
        units = [{"expert": e, "state": "dropped"} for e in range(total)]
        for index, group in enumerate(groups):
            for e in group:
                units[e] = {"expert": e, "state": "kept" if state != "team" and len(group) == 1 else state,
                            "group": index, "members": group}
        result[layer] = units
    return result


def _evaluations(provenance: dict) -> list[dict]:
    """compress.json's evaluation records, reduced to what the page's table shows."""
    records = []
    for record in provenance.get("evaluations", []):
        tasks = {task: {metric: value for metric, value in result["metrics"].items() if not metric.startswith("tokens")}
                 for task, result in record["report"]["tasks"].items()}
        records.append({"command": record["command"], "base": record.get("base"), "limited": record.get("limited"),
                        "tasks": tasks, "changes": record.get("changes") or [],
                        "verdict": record.get("verdict")})
    return records


def read_provenance(directory: Path) -> dict:
    try:
        return json.loads((directory / PROVENANCE_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise CompressError(f"{directory / PROVENANCE_FILE} cannot be read ({exc}): is {directory} an output of moe-compress?") from None


def derived_entry(directory: Path, provenance: dict) -> tuple[dict, object | None]:
    """One derived output: what was done, per-layer fate of each expert, evaluations; and the
    statistics that chose them (its own copy in the folder), or None."""
    from ..stats import RoutingStats

    plan = provenance.get("plan")
    statistics = provenance.get("statistics") or {}
    stats = None
    if statistics.get("file") and (directory / statistics["file"]).is_file():
        stats = RoutingStats.load(directory / statistics["file"])
    entry = {
        "name": directory.name, "operation": provenance.get("operation"),
        "command": provenance.get("command"), "source": (provenance.get("source") or {}).get("model"),
        "parameters": provenance.get("parameters"), "units": _units(plan) if plan and "layers" in plan else None,
        "statistics": None, "evaluations": _evaluations(provenance),
    }
    return entry, stats


def _main_metric(metrics: dict) -> str | None:
    """The metric a chart shows for a task: its perplexity, or else its first (as `compare --frontier`)."""
    names = [m for m in metrics if "stderr" not in m and m.split(",")[0] not in ("tokens", "sample_len")]
    return next((m for m in names if m.split(",")[0] == "perplexity"), names[0] if names else None)


def frontier_entry(directory: Path, provenance: dict) -> dict:
    """A size frontier: each member's size and its latest measured value of every task, and the
    base's values where a comparison measured them."""
    members, base = [], {"name": None, "parameters": None, "tasks": {}}
    for name in provenance.get("models", []):
        member = read_provenance(directory / name)
        parameters = member.get("parameters") or {}
        tasks = {}
        for record in member.get("evaluations", []):  # later records replace earlier ones
            base_values = {(change["task"], change["metric"]): change["base"] for change in record.get("changes") or []}
            for task, result in record["report"]["tasks"].items():
                metric = _main_metric(result["metrics"])
                if metric is None:
                    continue
                tasks[task] = {"metric": metric.split(",")[0], "value": result["metrics"][metric]}
                if (task, metric) in base_values:
                    base["tasks"][task] = base_values[task, metric]
                    base.update(name=record.get("base"), parameters=(parameters.get("before") or {}).get("total"))
        members.append({"name": name, "parameters": (parameters.get("after") or {}).get("total"), "tasks": tasks})
    return {"name": directory.name, "of": provenance.get("of"),
            "source": (provenance.get("source") or {}).get("model"), "command": provenance.get("command"),
            "members": members, "base": base}


def trace_entries(model_spec: str, prompts: list[str]) -> list[dict]:
    """Token-level routing of each prompt (`compress analyze trace`)."""
    from ..analyze.analyses import trace
    from ..jobs.source import open_model

    source = open_model(model_spec)
    model, tokenizer = source.load(), source.tokenizer()  # float32 on a CPU; the GPU (and its dtype) where there is one
    return [{"model": source.name, "prompt": prompt, "tokens": trace(model, tokenizer, prompt)["tokens"]} for prompt in prompts]


def collect(inputs: list[str], model: str | None = None, prompts: list[str] = (), title: str | None = None) -> dict:
    """The page's data from its inputs (see the module docstring)."""
    from ..stats import RoutingStats
    from ..stats.routing_stats import is_routing_stats_file

    if prompts and not model:
        raise CompressError("--prompt traces routing through a model: add --model")
    if model and not prompts:
        raise CompressError("--model is for token-level routing: add --prompt TEXT (once per prompt)")
    if not inputs and not model:
        raise CompressError("nothing to report: give statistics files, derived outputs or frontier folders, "
                            "and/or --model with --prompt")
    files, directories = [], []
    for text in inputs:
        path = Path(text)
        if path.is_file() and is_routing_stats_file(path):
            files.append(path)
        elif path.is_dir() and (path / PROVENANCE_FILE).is_file():
            directories.append(path)
        elif not path.exists():
            raise CompressError(f"{text} does not exist: give statistics files, derived outputs or frontier folders")
        else:
            raise CompressError(f"{text} is neither a routing statistics file (`compress profile`) nor an output of "
                                "moe-compress (a folder with compress.json)")
    # the inputs' statistics first (divergence compares those), then derived outputs' own copies,
    # each file once (a derived output's copy of an input is the input)
    statistics = [(path.name, RoutingStats.load(path)) for path in files]
    hashes = [stats.sha256() for _, stats in statistics]
    derived, frontiers = [], []
    for path in directories:
        provenance = read_provenance(path)
        if provenance.get("operation") == "frontier":
            frontiers.append(frontier_entry(path, provenance))
            continue
        entry, stats = derived_entry(path, provenance)
        if stats is not None:
            sha = stats.sha256()
            if sha not in hashes:
                statistics.append((f"{path.name}/{provenance['statistics']['file']}", stats))
                hashes.append(sha)
            entry["statistics"] = hashes.index(sha)
        derived.append(entry)
    return {
        "title": title or "moe-compress routing report",
        "generated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "tool_version": __version__,
        "statistics": [statistics_entry(name, stats) for name, stats in statistics],
        "divergence": divergence_entries(statistics[:len(files)]),
        "traces": trace_entries(model, list(prompts)) if model else [],
        "derived": derived,
        "frontiers": frontiers,
    }
