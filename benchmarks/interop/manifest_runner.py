"""The loop every engine script shares: each output of the manifest through one engine, a failure
recorded as "refused" with its first line (the others go on), the results file rewritten after
every output (a crash keeps what was measured). Standard library only: the engines' venvs do not
all hold the project.

    python engine_<name>.py MANIFEST.json RESULTS.json
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path


def first_line(error: BaseException) -> str:
    lines = [line.rstrip() for line in str(error).strip().splitlines()]
    return f"{type(error).__name__}: {lines[0][:300]}" if lines else type(error).__name__


def run_manifest(engine: str, version: str, run_one, argv: list[str]) -> int:
    """`run_one(entry) -> dict` for every manifest entry; writes {"engine", "version", "outputs": {name: result}}."""
    if len(argv) != 2:
        print(f"usage: {Path(sys.argv[0]).name} MANIFEST.json RESULTS.json", file=sys.stderr)
        return 2
    manifest, results_path = json.loads(Path(argv[0]).read_text()), Path(argv[1])
    results = {"engine": engine, "version": version, "outputs": {}}
    for entry in manifest["outputs"]:
        try:
            result = run_one(entry)
        except Exception as error:  # one output's refusal is a result, not the end of the run
            traceback.print_exc(limit=3)
            result = {"status": "refused", "error": first_line(error)}
        results["outputs"][entry["name"]] = result
        print(f"[{engine}] {entry['name']}: {result.get('note') or result['status']} {result.get('error', '')}",
              file=sys.stderr, flush=True)
        staging = results_path.with_name(results_path.name + ".tmp")
        staging.write_text(json.dumps(results, indent=1) + "\n")
        os.replace(staging, results_path)
    return 0
