"""Atomic outputs: a derived checkpoint (or a single file) appears whole or not at all.

Everything is written into a hidden temporary sibling of the target (same filesystem, so the final
rename is atomic); the target only appears when the block finishes without an exception. An
existing target is refused unless ``overwrite`` is set, and even then it is replaced only after the
new one is complete.
"""

from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import OutputExistsError


@contextmanager
def atomic_output_dir(target: str | Path, overwrite: bool = False) -> Iterator[Path]:
    target = Path(target).absolute()
    if target.exists() and not overwrite:
        raise OutputExistsError(f"output {target} already exists: choose another --out or pass --overwrite")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if target.exists():
        retired = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(target, retired)
        os.rename(staging, target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.rename(staging, target)


@contextmanager
def atomic_file(target: str | Path) -> Iterator[Path]:
    """Yield a hidden temporary sibling to write; it replaces `target` only when the block succeeds,
    with ordinary permissions (some writers create their files owner-only)."""
    target = Path(target)
    temporary = target.with_name(f".{target.name}.partial")
    try:
        yield temporary
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    os.replace(temporary, target)
