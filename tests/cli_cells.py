"""Run many `compress` command lines, each in a process of its own, without paying the 4-second
import of torch and transformers each time.

A server process imports torch, transformers and the CLI, and nothing else happens in it: no model
is loaded and no config read. Each command line then runs in a child forked from it, which does
what `python -m compress ARGS` does (`sys.exit(main(ARGS))`, `compress/__main__.py`), so every
command starts with nothing cached about any model class, in a process of its own, and its exit
status, stdout and stderr come back as a `subprocess.CompletedProcess`. The real entry point is run
by `test_cli_contract` and the README test.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# Imports only: importing a module decides nothing about a model class.
PRELOAD = ("torch", "transformers", "transformers.modeling_utils", "transformers.generation.utils", "transformers.masking_utils",
           "transformers.modeling_layers", "transformers.models.auto.modeling_auto", "compress.cli", "compress.jobs.source")


def serve(workers: int) -> None:
    """Read one JSON request per stdin line ({"argv", "stdout", "stderr"}), run each in a forked child,
    `workers` at a time, and print their exit statuses (a JSON list, in request order)."""
    for module in PRELOAD:
        importlib.import_module(module)
    requests = [json.loads(line) for line in sys.stdin]
    pending, running, codes = list(enumerate(requests)), {}, [None] * len(requests)
    while pending or running:
        while pending and len(running) < workers:
            index, request = pending.pop(0)
            pid = os.fork()
            if pid == 0:
                _child(request)
            running[pid] = index
        pid, status = os.wait()
        codes[running.pop(pid)] = os.waitstatus_to_exitcode(status)
    print(json.dumps(codes))


def _child(request: dict) -> None:
    for stream, path in ((1, request["stdout"]), (2, request["stderr"])):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), stream)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    from compress.cli import main

    sys.exit(main(request["argv"]))


def run_command_lines(command_lines: list[list[str]], workers: int = 2) -> list[subprocess.CompletedProcess]:
    """Each of `command_lines` (the arguments after ``compress``) in its own process, `workers` at a time."""
    with tempfile.TemporaryDirectory(prefix="cli-cells-") as scratch:
        requests = [{"argv": argv, "stdout": f"{scratch}/{i}.out", "stderr": f"{scratch}/{i}.err"}
                    for i, argv in enumerate(command_lines)]
        server = subprocess.run(
            [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import cli_cells; "
                                   f"cli_cells.serve({workers})"],
            input="".join(json.dumps(request) + "\n" for request in requests), capture_output=True, text=True, check=True)
        codes = json.loads(server.stdout.strip().splitlines()[-1])
        return [subprocess.CompletedProcess(["compress", *request["argv"]], code, Path(request["stdout"]).read_text(),
                                            Path(request["stderr"]).read_text()) for request, code in zip(requests, codes)]
