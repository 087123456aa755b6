"""Calibration text for a job: the source checked before any model is loaded, then cut into windows."""

from __future__ import annotations

import dataclasses
import sys

from ..errors import CompressError, DataError
from .options import CalibrationOptions

DEFAULT_SAMPLES = 128
DEFAULT_SEQ_LEN = 512


def settle(options: CalibrationOptions, source, builtin_split: str = "calibration") -> CalibrationOptions:
    """`options` with ``seq_len`` fitted to the model (512, or its positions when fewer), checked
    against the model and with its text source checked (a missing file fails here, in seconds)."""
    from ..data.calibration import calibration_source

    if options.domain is None:
        raise CompressError("say which calibration text to use: --domain (math, code, general, or your own name with --dataset)")
    positions = source.raw_config.get("max_position_embeddings")
    seq_len = options.seq_len
    if seq_len is None:
        seq_len = min(DEFAULT_SEQ_LEN, positions) if positions else DEFAULT_SEQ_LEN
    elif positions is not None and seq_len > positions:
        raise CompressError(f"--seq-len {seq_len} is beyond the model's {positions} positions: use --seq-len {positions} or less")
    calibration_source(options.domain, options.dataset, options.text_field, options.split, builtin_split)
    return dataclasses.replace(options, seq_len=seq_len)


def calibration_windows(options: CalibrationOptions, tokenizer, builtin_split: str = "calibration"):
    """(token windows [N, seq_len], description of the data) for settled `options`."""
    from ..data.calibration import calibration_source
    from ..data.tokens import token_stream, token_windows

    source = calibration_source(options.domain, options.dataset, options.text_field, options.split, builtin_split)
    samples = options.samples or DEFAULT_SAMPLES
    wanted = options.skip_samples + samples
    stream = token_stream(tokenizer, source.texts, max_tokens=wanted * options.seq_len)
    if len(stream) == 0:
        raise DataError(f"the calibration data ({source.description}) holds no text")
    windows = token_windows(stream, options.seq_len, wanted)[options.skip_samples :]
    if len(windows) == 0:
        raise DataError(
            f"the calibration data ({source.description}) has {len(stream)} tokens, fewer than "
            f"{options.skip_samples + 1} windows of {options.seq_len}: lower --seq-len or --skip-samples, or add text"
        )
    if options.samples is not None and len(windows) < options.samples:
        print(f"warning: the calibration data has only {len(windows)} windows of {options.seq_len} tokens after "
              f"skipping {options.skip_samples}; using those", file=sys.stderr)
    return windows, source.description
