"""One provenance writer for every derived checkpoint (prune, tiered conversion, distillation).

``compress.json`` records the tool and its version, when, the operation, the source model (name,
fingerprint, family, licence), the exact command, the plan, the statistics used (their file,
beside it, and its hash), the parameter counts and operation-specific details; the model card
``README.md`` is written beside it. Plans carry the same record of how they were made
(`plan_provenance`), so a plan file alone says where it came from.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

from .. import __version__
from ..checkpoint.files import PROVENANCE_FILE

# The statistics a derived checkpoint was made from, in safetensors format under a name that no
# weight loader picks up: vLLM and SGLang load every ``*.safetensors`` file of a folder that has no
# index, so a statistics file named so would be read as weights (and refused).
STATS_FILE = "routing_stats.moe-stats"
CARD_FILE = "README.md"


def source_record(source) -> dict:
    """The source model as provenance names it (a `SourceModel`)."""
    from ..publish import card_license

    return {"model": source.name, "fingerprint": source.fingerprint, "family": source.family.name,
            "license": card_license(Path(source.path))}


def statistics_record(stats) -> dict | None:
    """What the statistics were measured on, and the hash of their file (None without statistics)."""
    if stats is None:
        return None
    return {"file": STATS_FILE, "sha256": stats.sha256(),
            **{key: stats.metadata.get(key) for key in ("domain", "samples", "seq_len", "tokens")},
            "data": [source["data"] for source in stats.metadata.get("sources", [])]}


def plan_provenance(command: str | None, stats, **fields) -> dict:
    """How a plan was made: the tool version, the command and the statistics' record, plus `fields`."""
    return {"tool": "moe-compress", "tool_version": __version__, "command": command,
            "statistics": statistics_record(stats), **fields}


def write_provenance(directory: Path, *, operation: str, source: dict, command: str | None, card: str, stats=None,
                     plan: dict | None = None, parameters: dict | None = None, **details) -> dict:
    """Write the statistics used (if any), compress.json and the model card into `directory`."""
    directory = Path(directory)
    if stats is not None:
        stats.save(directory / STATS_FILE)
    record = {
        "tool": "moe-compress", "tool_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "operation": operation, "source": source, "command": command, "plan": plan,
        "statistics": statistics_record(stats), "parameters": parameters, **details,
    }
    (directory / PROVENANCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    (directory / CARD_FILE).write_text(card)
    return record
