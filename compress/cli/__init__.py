"""`compress`: one command, one module per subcommand.

Each subcommand module defines ``add_parser(subparsers)``, which registers its options and sets
``run`` as the handler. User mistakes raise `CompressError`: printed on one line, exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import shlex
import signal
import sys

from .. import __version__
from ..errors import CompressError

SUBCOMMANDS = ("info", "profile", "stats", "prune", "convert", "distill", "eval", "compare", "gate", "push", "analyze", "train_demo")

DESCRIPTION = """\
Make Mixture-of-Experts language models smaller, and prove what quality survives.

  routing statistics -> plan -> derived checkpoint -> evaluation / quality gate -> Hub

MODEL arguments take a local directory, a Hugging Face Hub id (OWNER/NAME; only safetensors,
config and tokenizer files are downloaded) or `demo`, the small trained MoE shipped with the package.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compress", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"moe-compress {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(subparsers)
    return parser


def _quiet_libraries() -> None:
    """transformers and huggingface_hub log load-time chatter that hides our one-line results."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    for name in ("huggingface_hub", "lm_eval", "lm-eval"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _interrupt_on_terminate(signum, frame):
    # `kill` stops us like Ctrl-C, so half-written outputs are removed on the way out.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["compress", *argv])  # recorded in the provenance of derived checkpoints
    _quiet_libraries()
    signal.signal(signal.SIGTERM, _interrupt_on_terminate)
    try:
        return args.run(args) or 0
    except CompressError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of our output left early (`compress info --json | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush stays quiet
        return 0
