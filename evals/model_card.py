"""Evaluation results in a derived checkpoint's model card (and its compress.json).

Only checkpoints written by moe-compress (they hold ``compress.json``) are touched: a base model
is never modified. The card's evaluation section sits between two markers and is replaced on
every run.
"""

from __future__ import annotations

import json
from pathlib import Path

BEGIN, END = "<!-- moe-compress evaluation -->", "<!-- /moe-compress evaluation -->"


def is_derived(directory: Path) -> bool:
    return (Path(directory) / "compress.json").is_file()


def evaluation_markdown(report: dict, changes=None, base_name: str | None = None, verdict=None) -> str:
    lines = ["## Evaluation", ""]
    if changes:
        lines += [f"Against `{base_name}` (`compress compare` / `compress gate`):", "",
                  "| task | metric | base | this model | change |", "|---|---|---|---|---|"]
        lines += [f"| {c.task} | {c.metric.split(',')[0]} | {c.base:.4g} | {c.candidate:.4g} | {c.relative:+.1%} |" for c in changes]
        if verdict is not None:
            lines += ["", f"Quality gate: **{'pass' if verdict.passed else 'fail'}** ({verdict.band})."]
    else:
        lines += ["| task | metric | value |", "|---|---|---|"]
        for task, result in report["tasks"].items():
            lines += [f"| {task} | {metric.split(',')[0]} | {value:.4g} |" for metric, value in result["metrics"].items()]
    settings = report["settings"]
    lines += ["", f"Settings: limit {settings['limit'] or 'none'}, batch size {settings['batch_size']}, "
                  f"dtype {settings['dtype']}; moe-compress {report['tool_version']}."]
    return "\n".join(lines)


def write_evaluation(directory: Path, report: dict, markdown: str) -> bool:
    """Put `markdown` into the card and `report` into compress.json; False when not a derived checkpoint."""
    directory = Path(directory)
    if not is_derived(directory):
        return False
    card_path = directory / "README.md"
    card = card_path.read_text() if card_path.is_file() else ""
    section = f"{BEGIN}\n{markdown}\n{END}"
    if BEGIN in card and END in card:
        card = card[: card.index(BEGIN)] + section + card[card.index(END) + len(END):]
    else:
        card = card.rstrip("\n") + "\n\n" + section + "\n"
    card_path.write_text(card)
    provenance = json.loads((directory / "compress.json").read_text())
    provenance["evaluation"] = report
    (directory / "compress.json").write_text(json.dumps(provenance, indent=2) + "\n")
    return True
