"""argparse pieces shared by the subcommands: value types that refuse nonsense while parsing (so a
bad number fails in a second, with one line, before any model is loaded) and the options several
commands declare the same way."""

from __future__ import annotations

import argparse

from ..checkpoint.files import DEFAULT_MAX_SHARD_BYTES
from ..model_loading import DEVICES, DTYPE_HELP, DTYPES

MODEL_HELP = "local directory, Hub id (OWNER/NAME) or `demo`"


def _number(kind, text: str, low: float | None, inclusive: bool, what: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    if low is not None and (value < low if inclusive else value <= low):
        raise argparse.ArgumentTypeError(f"must be {what}, not {text}")
    return value


def positive_int(text: str) -> int:
    return _number(int, text, 1, True, "at least 1")


def non_negative_int(text: str) -> int:
    return _number(int, text, 0, True, "0 or more")


def positive_float(text: str) -> float:
    return _number(float, text, 0.0, False, "greater than 0")


def non_negative_float(text: str) -> float:
    return _number(float, text, 0.0, True, "0 or more")


def fraction(text: str) -> float:
    """A share in (0, 1]."""
    value = positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], not {text}")
    return value


def add_compute_arguments(parser, device_default: str = "auto") -> None:
    parser.add_argument("--device", choices=DEVICES, default=device_default,
                        help=f"auto: GPU(s) when present, else CPU (default: {device_default})")
    parser.add_argument("--dtype", choices=DTYPES, default="auto", help=DTYPE_HELP)


def add_checkpoint_output_arguments(parser, *, max_shard_size: bool = True) -> None:
    parser.add_argument("--out", required=True, help="output directory (it appears only when complete)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out if it is an earlier moe-compress output (other directories are never replaced)")
    if max_shard_size:
        parser.add_argument("--max-shard-size", type=positive_int, default=DEFAULT_MAX_SHARD_BYTES, metavar="BYTES",
                            help=f"largest output shard (default: {DEFAULT_MAX_SHARD_BYTES} = 5 GiB)")
