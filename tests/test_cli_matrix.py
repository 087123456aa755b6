"""Every kind of output the project writes, through every command that takes a model, as users run
them: one `compress` process per cell. A fresh process matters: transformers caches decisions per
model class in-process, and a model loaded earlier once hid a crash on our own outputs. The cells
are forked from a server that has only imported torch and transformers (`cli_cells`).

Each cell exits 0, or is a refusal this module documents (`REFUSED`): exit 2, one line, its
phrase. A documented refusal that starts to succeed fails too, so the table stays true.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from cli_cells import run_command_lines

from compress.checkpoint.mxfp4 import write_mxfp4_checkpoint
from compress.cli import main
from compress.resolve import demo_model_path

# A hang guard, not a time limit: the 88 processes take about 2 minutes on a quiet 2-core machine
# and several times that on a busy one (pytest-timeout also counts the fixture that runs them).
pytestmark = pytest.mark.timeout(3600)

FAST = "--samples 4 --seq-len 32 --quiet"
SCORE = "--max-tokens 128 --seq-len 32 --quiet"

# The outputs: {name: (the command that makes it from {src} with {stats}, its path under the workspace)}.
OUTPUTS = {
    "uniform": "prune --model {src} --stats {stats} --keep 8 --criterion frequency --out {out}",
    "global-budget": "prune --model {src} --stats {stats} --keep 8 --budget global --criterion gate-mass --out {out}",
    "merge": f"merge --model {{src}} --domain math --keep 8 {FAST} --out {{out}}",
    "compensated": f"prune --model {{src}} --stats {{stats}} --keep 8 --criterion frequency --compensate --domain math {FAST} "
                   "--out {out}",
    "frontier-member": "prune --model {src} --stats {stats} --keep 4,8 --criterion frequency --out {out}-frontier",
    "tiered": "convert tiered --model {src} --stats {stats} --tiers 0-1:4,2-3:3,4-5:2 --team-size 2 --out {out}",
    "distilled": f"distill --teacher {{src}} --student {{root}}/uniform --domain math --steps 2 --batch-size 4 {FAST} --out {{out}}",
    "mxfp4": "prune --model {src} --stats {stats} --keep 8 --criterion frequency --out {out}",
}

# The commands, run on each output {model} (made from {src}); {cell} is a path of the cell's own.
COMMANDS = {
    "info": "info {model}",
    "profile": f"profile --model {{model}} --domain math {FAST} --out {{cell}}.safetensors",
    "prune-score": f"prune --model {{model}} --domain math --criterion frequency --keep-ratio 0.5 {FAST} --out {{cell}}",
    "prune-reconstruct": f"prune --model {{model}} --domain math --criterion reconstruct --keep-ratio 0.5 {FAST} --out {{cell}}",
    "merge": f"merge --model {{model}} --domain math --keep-ratio 0.5 {FAST} --out {{cell}}",
    "convert-tiered": f"convert tiered --model {{model}} --domain math {FAST} --out {{cell}}",
    "eval": f"eval --model {{model}} --tasks perplexity:math {SCORE}",
    "compare": f"compare --base {{src}} --candidate {{model}} --tasks perplexity:math {SCORE} --plot {{cell}}.png",
    "gate": f"gate --base {{src}} --candidate {{model}} --tasks perplexity:math {SCORE} --max-ppl-gap 1000",
    "analyze-trace": "analyze trace --model {model} --prompt '12 + 7 =' --max-new-tokens 2 --quiet",
    "push": "push {model} --repo someone/matrix --dry-run --report",  # with the routing report made from the output
}

# The documented refusals: {(output, command): a phrase of the one line}.
REFUSED = {
    ("tiered", "prune-reconstruct"): "a tiered model routes teams",
    ("tiered", "merge"): "is a tiered model: merging works on plain experts",
    ("tiered", "convert-tiered"): "is already a moe-compress tiered model",
    ("global-budget", "convert-tiered"): "is already a moe-compress per-layer model",
}

CELLS = [(output, command) for output in OUTPUTS for command in COMMANDS]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """Every kind of output, made through the command line (in-process: these are not under test here)."""
    root = tmp_path_factory.mktemp("matrix")
    write_mxfp4_checkpoint(demo_model_path(), root / "demo-mxfp4")  # the demo's experts in gpt-oss's published layout
    for source, stats in (("demo", root / "demo.safetensors"), (str(root / "demo-mxfp4"), root / "mxfp4.safetensors")):
        assert main(["profile", "--model", source, "--domain", "math", "--out", str(stats), *FAST.split()]) == 0
    for name, template in OUTPUTS.items():
        src, stats = (root / "demo-mxfp4", root / "mxfp4.safetensors") if name == "mxfp4" else ("demo", root / "demo.safetensors")
        argv = shlex.split(template.format(src=src, stats=stats, out=root / name, root=root))
        assert main([*argv, "--quiet"] if "--quiet" not in argv else argv) == 0, name
    return root


def model_path(root: Path, output: str) -> Path:
    return root / "frontier-member-frontier" / "keep4" if output == "frontier-member" else root / output


@pytest.fixture(scope="module")
def results(workspace) -> dict:
    """{(output, command): the finished process}, two at a time, each cell a process of its own that
    starts with nothing cached about any model class (`cli_cells`)."""
    (workspace / "cells").mkdir()
    command_lines = []
    for output, command in CELLS:
        src = workspace / "demo-mxfp4" if output == "mxfp4" else "demo"
        cell = workspace / "cells" / f"{output}-{command}"
        command_lines.append(shlex.split(COMMANDS[command].format(model=model_path(workspace, output), src=src, cell=cell)))
    return dict(zip(CELLS, run_command_lines(command_lines)))


@pytest.mark.parametrize("output, command", CELLS, ids=[f"{o}-{c}" for o, c in CELLS])
def test_every_output_through_every_command(results, output, command):
    done = results[(output, command)]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    phrase = REFUSED.get((output, command))
    if phrase is None:
        assert done.returncode == 0, f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"
    else:
        assert done.returncode == 2, f"documented as refused ({phrase!r}) but exited {done.returncode}"
        assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1 and phrase in done.stderr, done.stderr


def test_the_matrix_covers_every_output_kind_and_every_command_that_takes_a_model():
    assert len(OUTPUTS) == 8 and len(COMMANDS) == 11 and set(REFUSED) <= set(CELLS)
