"""A size frontier: one prune or merge job at several sizes (``--keep 4,8,12``), written as
``OUT/keep4``, ``OUT/keep8``, … from one set of routing statistics.

``OUT`` itself holds the models and a ``compress.json`` naming them (``operation: frontier``), so
it can be replaced with ``--overwrite`` like any moe-compress output; each ``OUT/keepN`` is an
ordinary pruned or merged checkpoint, accepted by every command that takes a model.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..checkpoint.files import PROVENANCE_FILE


def sizes(options) -> list | None:
    """One copy of `options` per requested size when several are asked for (``keep`` or
    ``keep_ratio`` a tuple), else None."""
    if isinstance(options.keep, tuple):
        return [dataclasses.replace(options, keep=keep) for keep in options.keep]
    if isinstance(options.keep_ratio, tuple):
        return [dataclasses.replace(options, keep_ratio=ratio) for ratio in options.keep_ratio]
    return None


@dataclass(frozen=True)
class FrontierResult:
    out: Path
    results: list  # one `PruneResult` / `MergeResult` per size, smallest first

    def to_dict(self) -> dict:
        return {"out": str(self.out), "models": [result.to_dict() for result in self.results]}

    def summary(self) -> str:
        return "\n".join(result.summary() for result in self.results) + f"\nsize frontier of {len(self.results)} models → {self.out}"


def write_index(staging: Path, operation: str, source, command: str | None, names: list[str]) -> None:
    """The frontier directory's own compress.json."""
    record = {"tool": "moe-compress", "tool_version": __version__,
              "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "operation": "frontier", "of": operation, "source": {"model": source.name, "fingerprint": source.fingerprint},
              "command": command, "models": names}
    (Path(staging) / PROVENANCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
