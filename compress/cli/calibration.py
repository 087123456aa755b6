"""Command-line options shared by the commands that run calibration text through a model
(`profile`, `prune`, `convert tiered`, `distill`): where the text comes from, how it is cut into
windows, where the model runs."""

from __future__ import annotations

import sys

from ..errors import CompressError, DataError
from .options import add_compute_arguments, non_negative_int, positive_int

DEFAULT_SAMPLES = 128
DEFAULT_SEQ_LEN = 512


def add_calibration_arguments(parser, samples_help: str = "windows of --seq-len tokens to profile") -> None:
    group = parser.add_argument_group("calibration data and compute")
    group.add_argument(
        "--dataset", metavar="PATH_OR_HUB_ID",
        help="calibration text: a .txt/.jsonl/.parquet file, a Hub dataset id, or `preset` for the domain's "
        "Hub dataset (default: the built-in corpus of --domain)",
    )
    group.add_argument("--text-field", help="record field(s) holding the text, comma-separated (default: text)")
    group.add_argument("--split", default="train", help="Hub dataset split (default: train)")
    group.add_argument("--samples", type=positive_int, help=f"{samples_help} (default: {DEFAULT_SAMPLES}, or as many as the data holds)")
    group.add_argument("--seq-len", type=positive_int,
                       help=f"tokens per window (default: {DEFAULT_SEQ_LEN}, or the model's positions when fewer)")
    group.add_argument("--skip-samples", type=non_negative_int, default=0,
                       help="windows to skip first, to profile a later shard (default: 0)")
    group.add_argument("--batch-size", type=positive_int, default=8, help="windows per forward pass (default: 8)")
    add_compute_arguments(group)


def check_calibration_arguments(args, config: dict) -> None:
    """Settle ``--seq-len`` against the model's positions (its default fits every model)."""
    positions = config.get("max_position_embeddings")
    if args.seq_len is None:
        args.seq_len = min(DEFAULT_SEQ_LEN, positions) if positions else DEFAULT_SEQ_LEN
    elif positions is not None and args.seq_len > positions:
        raise CompressError(f"--seq-len {args.seq_len} is beyond the model's {positions} positions: use --seq-len {positions} or less")


def check_calibration_source(args, builtin_split: str = "calibration"):
    """The calibration text source for the parsed options, checked before any model is loaded."""
    from ..data.calibration import calibration_source

    return calibration_source(args.domain, args.dataset, args.text_field, args.split, builtin_split)


def calibration_windows(args, tokenizer, builtin_split: str = "calibration"):
    """(token windows [N, seq_len], description of the data) for the parsed options."""
    from ..data.tokens import token_stream, token_windows

    source = check_calibration_source(args, builtin_split)
    samples = args.samples or DEFAULT_SAMPLES
    wanted = args.skip_samples + samples
    stream = token_stream(tokenizer, source.texts, max_tokens=wanted * args.seq_len)
    if len(stream) == 0:
        raise DataError(f"the calibration data ({source.description}) holds no text")
    windows = token_windows(stream, args.seq_len, wanted)[args.skip_samples :]
    if len(windows) == 0:
        raise DataError(
            f"the calibration data ({source.description}) has {len(stream)} tokens, fewer than "
            f"{args.skip_samples + 1} windows of {args.seq_len}: lower --seq-len or --skip-samples, or add text"
        )
    if args.samples is not None and len(windows) < args.samples:
        print(f"warning: the calibration data has only {len(windows)} windows of {args.seq_len} tokens after "
              f"skipping {args.skip_samples}; using those", file=sys.stderr)
    return windows, source.description
