"""Evaluation results in a derived checkpoint's model card (and its compress.json).

Only checkpoints written by moe-compress (they hold ``compress.json``) are touched: a base model
is never modified. Every `compress eval`, `compare` and `gate` run adds one record to
``compress.json["evaluations"]``; a record replaces an earlier one only when it is the same
measurement again (same command, base model, tasks and limits), so a later gate never erases a
comparison. The card's evaluation section, between two markers, is rebuilt from all records.
Results measured on part of a task (``--limit``, ``--max-tokens``) are marked as such, and
`compress push` leaves them out of the card's machine-readable ``model-index``.
"""

from __future__ import annotations

import json
from pathlib import Path

BEGIN, END = "<!-- moe-compress evaluation -->", "<!-- /moe-compress evaluation -->"
RECORDS = "evaluations"


def is_derived(directory: Path) -> bool:
    return (Path(directory) / "compress.json").is_file()


def limit_text(settings: dict) -> str | None:
    """How a measurement was cut short, or None for a full evaluation."""
    parts = []
    if settings.get("limit"):
        parts.append(f"{settings['limit']} documents/examples per task")
    if settings.get("max_tokens"):
        parts.append(f"{settings['max_tokens']:,} tokens per perplexity task")
    return " and ".join(parts) or None


def evaluation_record(command: str, report: dict, changes=None, base_name: str | None = None, verdict=None) -> dict:
    """One run's results for compress.json: the candidate's own report plus, for compare and gate,
    the base it was measured against, every metric's change and the verdict."""
    record = {"command": command, "base": base_name, "report": report, "limited": limit_text(report["settings"])}
    if changes is not None:
        record["changes"] = [{"task": c.task, "metric": c.metric, "base": c.base, "candidate": c.candidate,
                              "relative": c.relative} for c in changes]
    if verdict is not None:
        record["verdict"] = {"passed": verdict.passed, "band": verdict.band, "worst_ppl_gap": verdict.worst_ppl_gap,
                             "failures": verdict.failures}
    return record


def _identity(record: dict) -> tuple:
    settings = record["report"]["settings"]
    return (record["command"], record.get("base"), tuple(sorted(record["report"]["tasks"])),
            settings.get("limit"), settings.get("max_tokens"))


def _record_markdown(record: dict) -> list[str]:
    report, settings = record["report"], record["report"]["settings"]
    scope = f" — **limited to {record['limited']}: not a full evaluation**" if record["limited"] else ""
    if record.get("changes"):
        title = "Quality gate" if record["command"] == "gate" else "Comparison"
        lines = [f"### {title} against `{record['base']}`{scope}", "",
                 "| task | metric | base | this model | change |", "|---|---|---|---|---|"]
        lines += [f"| {c['task']} | {c['metric'].split(',')[0]} | {c['base']:.4g} | {c['candidate']:.4g} | {c['relative']:+.1%} |"
                  for c in record["changes"]]
        if record.get("verdict"):
            verdict = record["verdict"]
            lines += ["", f"Quality gate: **{'pass' if verdict['passed'] else 'fail'}** ({verdict['band']})."]
    else:
        lines = [f"### Measured{scope}", "", "| task | metric | value |", "|---|---|---|"]
        for task, result in report["tasks"].items():
            lines += [f"| {task} | {metric.split(',')[0]} | {value:.4g} |" for metric, value in result["metrics"].items()]
    lines += ["", f"Settings: limit {settings.get('limit') or 'none'}, max tokens {settings.get('max_tokens') or 'none'}, "
                  f"batch size {settings['batch_size']}, dtype {settings['dtype']}; moe-compress {report['tool_version']}.", ""]
    return lines


def evaluation_markdown(records: list[dict]) -> str:
    lines = ["## Evaluation", ""]
    for record in records:
        lines += _record_markdown(record)
    return "\n".join(lines).rstrip("\n")


def write_evaluation(directory: Path, record: dict) -> bool:
    """Add `record` to compress.json and rebuild the card's evaluation section; False when
    `directory` is not a moe-compress checkpoint (nothing is written then)."""
    directory = Path(directory)
    if not is_derived(directory):
        return False
    provenance = json.loads((directory / "compress.json").read_text())
    records = [r for r in provenance.get(RECORDS, []) if _identity(r) != _identity(record)] + [record]
    provenance[RECORDS] = records
    card_path = directory / "README.md"
    card = card_path.read_text() if card_path.is_file() else ""
    section = f"{BEGIN}\n{evaluation_markdown(records)}\n{END}"
    if BEGIN in card and END in card:
        card = card[: card.index(BEGIN)] + section + card[card.index(END) + len(END):]
    else:
        card = card.rstrip("\n") + "\n\n" + section + "\n"
    from compress.checkpoint.output import atomic_file

    with atomic_file(directory / "compress.json") as temporary:
        temporary.write_text(json.dumps(provenance, indent=2) + "\n")
    with atomic_file(card_path) as temporary:
        temporary.write_text(card)
    return True


def full_results(provenance: dict) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} of this model from every evaluation that covered whole tasks (the
    latest wins), for the card's model-index."""
    results: dict[str, dict[str, float]] = {}
    for record in provenance.get(RECORDS, []):
        if record.get("limited"):
            continue
        for task, result in record["report"]["tasks"].items():
            results.setdefault(task, {}).update(result.get("metrics", {}))
    return results
