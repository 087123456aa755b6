"""How a command runs as a process: in a worker thread while the main thread waits, so that an
interrupt (Ctrl-C, SIGTERM) is answered within a fraction of a second even inside one long matrix
product — the main thread removes every partial output and exits 130 — and with internal errors
reduced to one line naming a log file that holds the traceback (exit 3)."""

from __future__ import annotations

import datetime
import os
import shlex
import sys
import threading
import traceback
from pathlib import Path

from . import __version__

EXIT_OK, EXIT_GATE_FAILED, EXIT_BAD_INPUT, EXIT_INTERNAL_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def interrupt_on_terminate(signum, frame):
    # `kill` stops us like Ctrl-C, so half-written outputs are removed on the way out.
    raise KeyboardInterrupt


def one_line(exc: BaseException) -> str:
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def log_dir() -> Path:
    return Path(os.environ.get("MOE_COMPRESS_CACHE") or Path.home() / ".cache" / "moe-compress") / "logs"


def internal_error(exc: BaseException, argv: list[str], debug: bool) -> int:
    text = "".join(traceback.format_exception(exc))
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    log = log_dir() / f"compress-{stamp}-{os.getpid()}.log"
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"moe-compress {__version__}\n{shlex.join(['compress', *argv])}\n\n{text}")
        where = f"the traceback is in {log}"
    except OSError:
        where = "the traceback could not be saved"
    if debug:
        print(text, file=sys.stderr, end="")
    summary = (str(exc).strip().splitlines() or [""])[0][:300]
    print(f"error: internal error ({type(exc).__name__}{': ' + summary if summary else ''}); {where} "
          "(rerun with --debug to print it); please report it", file=sys.stderr)
    return EXIT_INTERNAL_ERROR


def run_in_worker(function):
    """Run `function` in a worker thread; the main thread stays free to answer signals."""
    outcome: dict = {}

    def work():
        try:
            outcome["result"] = function()
        except BaseException as exc:  # handed to the main thread, which decides what it means
            outcome["error"] = exc

    worker = threading.Thread(target=work, name="compress-job", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.1)
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("result")


def exit_interrupted() -> None:
    """Remove partial outputs and leave now, whatever the worker thread is in the middle of."""
    from .checkpoint.output import remove_partial_outputs

    remove_partial_outputs()
    print("interrupted", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(EXIT_INTERRUPTED)
