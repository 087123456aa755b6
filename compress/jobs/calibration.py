"""Calibration text for a job: the source checked before any model is loaded, then cut into windows.

``--domain`` names one domain, or a mixture with weights, ``math:0.8,general:0.2``: each domain
gives its share of the windows (rounded, at least one each) from its own text, domain after
domain, so a specialised model can keep a floor of another domain's ability. A mixture reads each
domain's built-in corpus, or each domain's Hub preset with ``--dataset preset``.
"""

from __future__ import annotations

import dataclasses
import math
import sys

from ..errors import CompressError, DataError
from .options import CalibrationOptions

DEFAULT_SAMPLES = 128
DEFAULT_SEQ_LEN = 512


def mixture(domain: str) -> list[tuple[str, float]]:
    """The (domain, share) parts of a ``--domain`` value; one part with share 1 for a plain domain."""
    if ":" not in domain and "," not in domain:
        return [(domain, 1.0)]
    parts = []
    for item in domain.split(","):
        name, _, weight = item.strip().partition(":")
        try:
            value = float(weight) if weight else float("nan")
        except ValueError:
            value = float("nan")
        if not name or not value > 0 or value == float("inf"):
            raise CompressError(f"--domain {domain!r}: write a mixture as DOMAIN:WEIGHT[,DOMAIN:WEIGHT...] with positive "
                                "weights, e.g. math:0.8,general:0.2")
        parts.append((name, value))
    names = [name for name, _ in parts]
    if len(set(names)) != len(names):
        raise CompressError(f"--domain {domain!r} names a domain twice")
    largest = max(value for _, value in parts)  # scaled first, so weights near the float limit do not overflow their sum
    total = math.fsum(value / largest for _, value in parts)
    return [(name, value / largest / total) for name, value in parts]


def _shares(count: int, parts: list[tuple[str, float]], minimum: int = 1) -> list[int]:
    """`count` split by the parts' shares (largest remainders; at least `minimum` each)."""
    raw = [share * count for _, share in parts]
    counts = [max(minimum, int(value)) for value in raw]
    for index in sorted(range(len(parts)), key=lambda i: int(raw[i]) - raw[i]):
        if sum(counts) >= count:
            break
        counts[index] += 1
    return counts


def _sources(options: CalibrationOptions, builtin_split: str):
    """(domain, share, `CalibrationSource`) of each part of the options' domain."""
    from ..data.calibration import calibration_source

    parts = mixture(options.domain)
    if len(parts) > 1 and options.dataset not in (None, "preset"):
        raise CompressError(f"--domain {options.domain!r} mixes domains, each from its built-in corpus or (with --dataset "
                            "preset) its Hub preset: a --dataset file or Hub id is one domain's text, so drop it or the mixture")
    return [(name, share, calibration_source(name, options.dataset, options.text_field, options.split, builtin_split))
            for name, share in parts]


def settle(options: CalibrationOptions, source, builtin_split: str = "calibration") -> CalibrationOptions:
    """`options` with ``seq_len`` fitted to the model (512, or its positions when fewer), checked
    against the model and with its text source checked (a missing file fails here, in seconds)."""

    if options.domain is None:
        raise CompressError("say which calibration text to use: --domain (math, code, general, or your own name with --dataset)")
    positions = source.raw_config.get("max_position_embeddings")
    seq_len = options.seq_len
    if seq_len is None:
        seq_len = min(DEFAULT_SEQ_LEN, positions) if positions else DEFAULT_SEQ_LEN
    elif positions is not None and seq_len > positions:
        raise CompressError(f"--seq-len {seq_len} is beyond the model's {positions} positions: use --seq-len {positions} or less")
    _sources(options, builtin_split)
    return dataclasses.replace(options, seq_len=seq_len)


def calibration_windows(options: CalibrationOptions, tokenizer, builtin_split: str = "calibration"):
    """(token windows [N, seq_len], description of the data) for settled `options` (a mixture's
    domains one after the other, each with its share of the windows and of ``skip_samples``)."""
    import torch

    sources = _sources(options, builtin_split)
    if len(sources) == 1:
        return _windows(options, tokenizer, sources[0][2])
    samples = _shares(options.samples or DEFAULT_SAMPLES, [(name, share) for name, share, _ in sources])
    skips = _shares(options.skip_samples, [(name, share) for name, share, _ in sources], minimum=0)
    parts, described = [], []
    for (name, share, source), count, skip in zip(sources, samples, skips):
        windows, description = _windows(dataclasses.replace(options, domain=name, samples=count, skip_samples=skip), tokenizer, source)
        parts.append(windows)
        described.append((name, share, len(windows), description))
    total = sum(len(windows) for windows in parts)
    # What was used, in windows: a share rounds to a whole number of them (at least one each).
    return torch.cat(parts), "mixture: " + "; ".join(f"{name}, {count} of {total} windows (weight {share:.3g}): {description}"
                                                     for name, share, count, description in described)


def _windows(options: CalibrationOptions, tokenizer, source):
    from ..data.tokens import token_stream, token_windows

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
