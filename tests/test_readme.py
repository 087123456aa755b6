"""The README's examples, run in order in one directory as a new user would run them (offline).

`bash` blocks are commands to run: the main job's `compress` command (after its install steps),
then every line of every later `bash` block (the test command's block only installs and runs this
suite, so it is skipped; so are `pip install` lines of extras, which the test command's dev extra
holds). A command must exit 0, or the status its comment states (``# exits 1``: a gate that fails
its candidate). `python` blocks are executed too. `text` blocks (Hub, GPU) are not run.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from compress.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"
INSTALL = "python3 -m venv"


def readme_steps() -> list[tuple[str, str]]:
    """(kind, code) in document order: ("command", a compress command line) or ("python", a block)."""
    steps = []
    for kind, body in re.findall(r"^```(\w*)\n(.*?)^```", README.read_text(), flags=re.S | re.M):
        if kind == "python":
            steps.append(("python", body))
        elif kind == "bash":
            for line in body.splitlines():
                if line.startswith(INSTALL):  # the main job: its last step is a compress command
                    last = line.split("&&")[-1].strip()
                    if last.startswith("compress "):
                        steps.append(("command", last))
                elif line.strip() and not line.startswith("pip install "):
                    steps.append(("command", line.strip()))
    return steps


def test_the_readme_has_the_examples_this_test_runs():
    commands = [code for kind, code in readme_steps() if kind == "command"]
    assert commands[0].startswith("compress prune --model demo --domain math --keep 8")  # the main job comes first
    assert all(command.startswith("compress ") for command in commands)
    for name in ("profile", "stats", "prune", "merge", "eval", "compare", "gate", "convert", "distill", "analyze", "report", "push",
                 "info"):
        assert any(command.startswith(f"compress {name} ") for command in commands), name
    assert sum(kind == "python" for kind, _ in readme_steps()) >= 2


@pytest.mark.timeout(1200)  # some thirty commands, each a real job on the demo model
def test_readme_examples_run_in_order(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for kind, code in readme_steps():
        if kind == "python":
            exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
            continue
        argv = shlex.split(code, comments=True)[1:]
        stated = re.search(r"#\s*exits (\d+)", code)
        status = main(argv)
        err = capsys.readouterr().err
        expected = int(stated.group(1)) if stated else 0
        assert status == expected, f"`{code}` exited {status}, not {expected}: {err.strip().splitlines()[-1:] if err else ''}"
        assert "Traceback" not in err
