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


def sizes(options, source) -> list | None:
    """One `Size` per requested size (``keep`` or ``keep_ratio`` a tuple), smallest first, or None
    for one size. Refuses sizes that come to the same count, or one that keeps
    every expert (the base model itself, which `compress compare` draws anyway)."""
    from ..errors import CompressError
    from ..families.derived import TIERED
    from .reduction import keep_count, units_per_layer

    if isinstance(options.keep, tuple):
        flag, values, copies = "--keep", options.keep, [dataclasses.replace(options, keep=keep) for keep in options.keep]
    elif isinstance(options.keep_ratio, tuple):
        flag, values = "--keep-ratio", options.keep_ratio
        copies = [dataclasses.replace(options, keep_ratio=ratio) for ratio in options.keep_ratio]
    else:
        return None
    text = ",".join(map(str, values))
    counts = [keep_count(copy, source) for copy in copies]
    units = units_per_layer(source)
    what = "teams" if source.derived == TIERED else "experts"
    for count in counts:
        if counts.count(count) > 1:
            raise CompressError(f"{flag} {text} comes to {count} of the {min(units.values())} {what} per layer more than once: "
                                f"give sizes that differ by at least one {what[:-1]}")
        if all(count >= n for n in units.values()):
            raise CompressError(f"{flag} {text}: keeping {count} {what} keeps every one, which is the model itself "
                                "(`compress compare --base` draws it): drop it from the frontier")
    return [Size(copy, count) for count, copy in sorted(zip(counts, copies), key=lambda pair: pair[0])]


@dataclass(frozen=True)
class Size:
    """One size of a job: the options and `keep` resolved once (None with a plan file), and the name
    of its folder in a frontier."""

    options: object
    keep: int | None

    @property
    def name(self) -> str:
        return f"keep{self.keep}"


@dataclass(frozen=True)
class FrontierResult:
    out: Path
    results: list  # one `PruneResult` / `MergeResult` per size, smallest first

    def to_dict(self) -> dict:
        return {"out": str(self.out), "models": [result.to_dict() for result in self.results]}

    def summary(self) -> str:
        names = ", ".join(result.out.name for result in self.results)
        lines = [result.summary() for result in self.results]
        return "\n".join([*lines, f"size frontier of {len(self.results)} models ({names}) → {self.out}"])


def write_index(staging: Path, operation: str, source, command: str | None, names: list[str]) -> None:
    """The frontier directory's own compress.json."""
    record = {"tool": "moe-compress", "tool_version": __version__,
              "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "operation": "frontier", "of": operation, "source": {"model": source.name, "fingerprint": source.fingerprint},
              "command": command, "models": names}
    (Path(staging) / PROVENANCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
