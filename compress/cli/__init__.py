"""`compress`: one command, one module per subcommand.

Each subcommand module defines ``add_parser(subparsers)``, which registers its options and sets
``run`` as the handler; it imports nothing heavy at the top (no torch, no transformers), so
``--help``, ``--version`` and usage errors answer at once. `compress.process` runs the handler
(in a worker thread, so interrupts are answered at once) and maps outcomes to the exit status
that `EPILOG` lists.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import signal
import sys
import threading

from .. import __version__
from ..errors import CompressError
from ..process import (
    EXIT_BAD_INPUT,
    EXIT_INTERRUPTED,
    EXIT_OK,
    exit_interrupted,
    internal_error,
    interrupt_on_terminate,
    one_line,
    run_in_worker,
)

SUBCOMMANDS = ("info", "profile", "stats", "prune", "merge", "convert", "distill", "eval", "compare", "gate", "push", "analyze",
               "report", "train_demo")

DESCRIPTION = """\
Make Mixture-of-Experts language models smaller, and prove what quality survives.

  routing statistics -> plan -> derived checkpoint -> evaluation / quality gate -> Hub

MODEL arguments take a local directory, a Hugging Face Hub id (OWNER/NAME; only safetensors,
config and tokenizer files are downloaded) or `demo`, the small trained MoE shipped with the package.
"""

EPILOG = """\
exit status: 0 success, 1 the quality gate failed, 2 bad input (one line says what to do),
3 internal error (one line names the log with the traceback; --debug prints it), 130 interrupted.
"""


class UsageError(CompressError):
    """The command line itself is wrong (unknown option, missing argument)."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with usage errors raised as one-line `UsageError`s instead of printed usage."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message} (see `{self.prog} --help`)")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="compress", description=DESCRIPTION, epilog=EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"moe-compress {__version__}")
    parser.add_argument("--debug", action="store_true", help="print the traceback of internal errors (anywhere on the line)")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv or bool(os.environ.get("MOE_COMPRESS_DEBUG"))
    argv = [arg for arg in argv if arg != "--debug"]
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    in_main_thread = threading.current_thread() is threading.main_thread()
    try:
        args = build_parser().parse_args(argv)
        args.command_line = shlex.join(["compress", *argv])  # recorded in the provenance of derived checkpoints
        if not in_main_thread:  # signals cannot be handled here: run in this thread
            return args.run(args) or EXIT_OK
        previous = signal.signal(signal.SIGTERM, interrupt_on_terminate)
        try:
            return run_in_worker(lambda: args.run(args)) or EXIT_OK
        finally:
            signal.signal(signal.SIGTERM, previous)
    except CompressError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        if in_main_thread:
            exit_interrupted()
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader of our output left early (`compress info --json | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush stays quiet
        return EXIT_OK
    except SystemExit:
        raise
    except Exception as exc:
        return internal_error(exc, argv, debug)
