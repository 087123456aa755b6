"""Output safety: every file or directory moe-compress writes goes through `claim_output`.

One mechanism for every command that writes:

1. **Checked before any work.** The target is refused when it is empty, the current, home or root
   directory, the source model, inside it or a parent of it; when it sits under a file or
   somewhere nothing can be created (``/proc``); when it is a directory where a file is expected
   (or the reverse); and when it exists and ``overwrite`` is not set. ``overwrite`` only ever
   replaces what moe-compress wrote itself: a checkpoint directory holding our ``compress.json``,
   or a file of the kind being written (a statistics file, a plan). An empty directory counts as
   free.
2. **Locked while the command runs.** A lock file ``.NAME.lock`` beside the target is held
   (``flock``) from the check to the commit, so a second writer to the same target fails at once
   instead of silently replacing the first. The kernel drops the lock when a process dies, so a
   killed run never blocks the next one.
3. **Written beside, then renamed.** Work goes into a hidden sibling directory
   ``.NAME.tmp-PID-XXXXXXXX`` on the same filesystem (a file is written inside it under its own
   name); the target appears only when the work is complete (one rename; an overwritten directory
   is first moved to ``.NAME.old-PID-XXXXXXXX`` and removed after).
4. **Nothing left behind.** An exception or interrupt removes the staging sibling, restores a
   half-replaced target and removes the lock and any parent directories the claim created
   (`remove_partial_outputs` does this from the interrupt handler, while the work may still be
   running in another thread: staging directories are made and registered in one step under the
   lock the handler takes, so each is either removed or never made, and a file the work writes
   after that has no directory to go into). Siblings left by a run that was killed outright (``kill -9``, a
   power cut) carry their process id: the next run to the same place reports them and removes
   those whose process is gone.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import CompressError, OutputExistsError
from .files import PROVENANCE_FILE

# The target's suffix is repeated at the end, so writers that go by it (matplotlib) still can.
_SIBLING = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-[0-9a-f]{8}(\.[^.]*)?$")

# What an interrupt must undo, registered while work is in progress: staging siblings to remove,
# retired targets to put back, locks to release, created parents to remove. Commits hold the lock,
# so an interrupt never sees a half-done rename.
_commit_lock = threading.RLock()
_cleanups: dict[int, Callable[[], None]] = {}
_interrupted = threading.Event()  # set once partial outputs are removed: the process is on its way out


def _register(cleanup: Callable[[], None]) -> int:
    """Register `cleanup` before the thing it removes is made; after an interrupt nothing new may
    start (the worker thread runs on until the process exits), so this raises instead."""
    with _commit_lock:
        if _interrupted.is_set():
            raise KeyboardInterrupt
        token = id(cleanup)
        _cleanups[token] = cleanup
        return token


def _unregister(token: int) -> None:
    with _commit_lock:
        _cleanups.pop(token, None)


def remove_partial_outputs() -> None:
    """Undo every output in progress (called on an interrupt, from the main thread)."""
    with _commit_lock:
        _interrupted.set()
        for cleanup in reversed(list(_cleanups.values())):
            try:
                cleanup()
            except OSError:
                pass
        _cleanups.clear()


def _remove(path: Path) -> None:
    for _ in range(5):  # the interrupted work may still be adding files while we remove
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        if not os.path.lexists(path):
            return


def _make_staging(target: Path) -> tuple[Path, int]:
    """A new hidden staging directory beside `target` and the token of its registered removal,
    made and registered in one step (see the module docstring, point 4)."""
    directory = sibling_path(target, "tmp")
    with _commit_lock:
        token = _register(lambda: _remove(directory))
        try:
            directory.mkdir()
        except BaseException:
            _unregister(token)
            raise
    return directory, token


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def is_project_output(directory: Path) -> bool:
    """A directory moe-compress wrote: its compress.json says so (distillation runs in progress are
    recognised by their log, demo models from `compress train-demo` by their training report)."""
    def json_of(name: str) -> dict:
        try:
            data = json.loads((directory / name).read_text())
        except (ValueError, OSError, UnicodeDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    return (json_of(PROVENANCE_FILE).get("tool") == "moe-compress" or (directory / "distill_log.jsonl").is_file()
            or "recipe" in json_of("training.json"))


def _describe(path: Path, flag: str) -> str:
    return f"{flag} {path}" if flag else str(path)


def check_output_path(target: str | os.PathLike, *, kind: str, overwrite: bool = False, flag: str = "--out",
                      sources: tuple = (), recognise: Callable[[Path], bool] | None = None,
                      what: str = "output", reuse: bool = False) -> Path:
    """The absolute target path, after refusing every unsafe or impossible target (see the module docstring).

    kind: ``"directory"`` (a checkpoint: replaced only when it is a moe-compress output),
    ``"file"`` (replaced with `overwrite` only when `recognise` accepts it) or ``"report"`` (a
    result file such as JSON or PNG, replaced freely). `reuse` accepts an existing moe-compress
    output directory that the command continues in place (`ClaimedOutput.in_place`).
    """
    text = os.fspath(target)
    if not text.strip():
        raise CompressError(f"{flag} is empty: name the {what} to write")
    path = Path(text).expanduser()
    path = Path(os.path.abspath(path))
    if path.exists() or path.is_symlink():
        path = path.resolve()
    else:
        path = path.parent.resolve() / path.name
    special = {Path("/"): "the root directory", Path.home().resolve(): "your home directory",
               Path.cwd().resolve(): "the current directory"}
    if path in special and kind == "directory":
        raise CompressError(f"{_describe(Path(text), flag)} is {special[path]}: "
                            f"name a new directory for the {what}, e.g. ./{what.split()[0]}")
    for source in sources:
        source = Path(source).resolve()
        if path == source or source in path.parents:
            raise CompressError(f"{_describe(path, flag)} is the source model or inside it: write somewhere else")
        if path in source.parents:
            raise CompressError(f"{_describe(path, flag)} contains the source model {source}: choose another {flag or 'output'}")
    for ancestor in path.parents:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise CompressError(f"{_describe(path, flag)} is under {ancestor}, which is a file: choose another {flag or 'output'}")
            break
    if path.is_dir():
        if kind != "directory":
            raise CompressError(f"{_describe(path, flag)} is a directory: give the path of the {what} to write, "
                                f"e.g. {path / 'NAME'}")
        if any(path.iterdir()):
            if reuse and not is_project_output(path):
                raise OutputExistsError(f"{path} is not a moe-compress output: there is nothing to continue in it")
            if not overwrite and not reuse:
                raise OutputExistsError(f"{path} exists: pass --overwrite to replace it, or choose another {flag or 'output'}")
            if not is_project_output(path):
                raise OutputExistsError(
                    f"{path} exists and is not a moe-compress output (no {PROVENANCE_FILE}): --overwrite only replaces "
                    f"outputs of moe-compress; remove it yourself or choose another {flag or 'output'}")
    elif path.exists():
        if kind == "directory":
            raise CompressError(f"{_describe(path, flag)} is a file, not a directory: choose another {flag or 'output'}")
        if kind == "file":
            if not overwrite:
                raise OutputExistsError(f"{path} exists: pass --overwrite to replace it, or choose another {flag or 'output'}")
            if recognise is not None and not recognise(path):
                raise OutputExistsError(f"{path} exists and is not a {what} written by moe-compress: --overwrite only "
                                        f"replaces those; remove it yourself or choose another {flag or 'output'}")
    return path


class ClaimedOutput:
    """A checked, locked output target; `write` stages and commits it."""

    def __init__(self, path: Path, kind: str, overwrite: bool, flag: str, what: str):
        self.path, self.kind, self.overwrite, self.flag, self.what = path, kind, overwrite, flag, what
        self._created: list[Path] = []  # parent directories this claim made
        self._lock_fd: int | None = None
        self._token: int | None = None

    # --- claiming --------------------------------------------------------------------------------
    def acquire(self) -> ClaimedOutput:
        self._token = _register(self.release)
        try:
            self._make_parents()
            self._lock()
            self._remove_stale_siblings()
        except BaseException:
            self.release()
            raise
        return self

    def _make_parents(self) -> None:
        missing = []
        for ancestor in self.path.parents:
            if ancestor.exists():
                break
            missing.append(ancestor)
        try:
            for directory in reversed(missing):
                directory.mkdir()
                self._created.append(directory)
        except OSError as exc:
            self._remove_created()
            raise CompressError(f"cannot create {self.flag} {self.path}: {exc.strerror} ({exc.filename}); "
                                "choose a writable place") from None

    def _lock(self) -> None:
        lock_path = self.path.parent / f".{self.path.name}.lock"
        while True:
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                self._remove_created()
                raise CompressError(f"cannot write {self.flag} {self.path}: {exc.strerror} in {self.path.parent}; "
                                    "choose a writable place") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                os.close(fd)
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                self._remove_created()
                raise CompressError(f"another moe-compress process{f' (pid {holder})' if holder else ''} is writing {self.path}: "
                                    f"wait for it to finish or choose another {self.flag or 'output'}") from None
            try:  # the previous holder may have removed the file between our open and our lock
                same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd, self._lock_path = fd, lock_path

    def _remove_stale_siblings(self) -> None:
        for sibling in self.path.parent.iterdir():
            match = _SIBLING.match(sibling.name)
            if not match or match["name"] != self.path.name or _process_alive(int(match["pid"])):
                continue
            if match["kind"] == "old" and not self.path.exists():  # a replaced output that never got its successor
                os.rename(sibling, self.path)
                print(f"note: restored {self.path} from {sibling.name}, left by an interrupted moe-compress run "
                      f"(process {match['pid']})", file=sys.stderr)
                continue
            _remove(sibling)
            print(f"note: removed {sibling}, left by an interrupted moe-compress run (process {match['pid']})", file=sys.stderr)

    def _remove_created(self) -> None:
        for directory in reversed(self._created):
            try:
                directory.rmdir()
            except OSError:
                break
        self._created.clear()

    def release(self, failed: bool = True) -> None:
        """Drop the lock (and, after a failure, the parent directories this claim created)."""
        if self._lock_fd is not None:
            Path(self._lock_path).unlink(missing_ok=True)
            os.close(self._lock_fd)
            self._lock_fd = None
        if failed and not self.path.exists():
            self._remove_created()
        if self._token is not None:
            _unregister(self._token)
            self._token = None

    # --- writing ---------------------------------------------------------------------------------
    def _sibling(self, kind: str) -> Path:
        return sibling_path(self.path, kind)

    @contextmanager
    def write(self) -> Iterator[Path]:
        """Yield a staging path (a directory for ``kind="directory"``, else a file path) that
        becomes the target when the block finishes without an exception."""
        directory, token = _make_staging(self.path)
        staging = directory if self.kind == "directory" else directory / self.path.name
        try:
            yield staging
        except BaseException:
            with _commit_lock:
                _remove(directory)
                _unregister(token)
            raise
        with _commit_lock:
            _unregister(token)
            try:
                self._commit(staging)
            finally:
                _remove(directory)

    @contextmanager
    def scratch(self) -> Iterator[Path]:
        """Yield a scratch directory for intermediate files (compensation fits), a hidden sibling
        named like a staging one: removed when the block ends or the command is interrupted, and by
        the next run to this target after a ``kill -9``."""
        directory, token = _make_staging(self.path)
        try:
            yield directory
        finally:
            with _commit_lock:
                _remove(directory)
                _unregister(token)

    @contextmanager
    def in_place(self, keep_partial: Callable[[Path], bool]) -> Iterator[Path]:
        """Yield the target directory itself, for work that must survive an interruption (training
        checkpoints to resume from). With ``overwrite`` an earlier output is set aside first and
        removed when the block succeeds. After a failure the directory is removed again unless
        `keep_partial` says it holds something worth resuming; a set-aside output then comes back."""
        retired = None
        if self.overwrite and self.path.is_dir() and any(self.path.iterdir()):
            retired = self._sibling("old")
        created = retired is not None or not self.path.exists()

        def undo() -> None:
            if created and not keep_partial(self.path):
                _remove(self.path)
                if retired is not None and os.path.lexists(retired):
                    os.rename(retired, self.path)

        with _commit_lock:  # set aside, made and registered in one step, as `_make_staging`
            token = _register(undo)
            try:
                if retired is not None:
                    os.rename(self.path, retired)
                self.path.mkdir(exist_ok=True)
            except BaseException:  # nothing made: put back what was set aside
                _unregister(token)
                if retired is not None and os.path.lexists(retired):
                    os.rename(retired, self.path)
                raise
        try:
            yield self.path
        except BaseException:
            with _commit_lock:
                _unregister(token)
                undo()
            raise
        with _commit_lock:
            _unregister(token)
            if retired is not None:
                _remove(retired)

    def _commit(self, staging: Path) -> None:
        if self.kind != "directory":
            if os.path.lexists(staging):
                _replace(staging, self.path)
            return
        if self.path.is_dir() and not any(self.path.iterdir()):
            self.path.rmdir()
        if not self.path.exists():
            os.rename(staging, self.path)
            return
        retired = self._sibling("old")
        os.rename(self.path, retired)
        try:
            os.rename(staging, self.path)
        except BaseException:
            os.rename(retired, self.path)
            _remove(staging)
            raise
        _remove(retired)


@contextmanager
def claim_output(target: str | os.PathLike, *, kind: str = "directory", overwrite: bool = False, flag: str = "--out",
                 sources: tuple = (), recognise: Callable[[Path], bool] | None = None,
                 what: str = "output", reuse: bool = False) -> Iterator[ClaimedOutput]:
    """Check and lock `target` for the duration of the block (see `check_output_path` for the rules);
    write it with ``with claimed.write() as staging: ...``. Claim before any long work, so a bad
    target fails in a second, not after an hour of profiling."""
    path = check_output_path(target, kind=kind, overwrite=overwrite, flag=flag, sources=sources, recognise=recognise,
                             what=what, reuse=reuse)
    claimed = ClaimedOutput(path, kind, overwrite, flag, what).acquire()
    try:
        yield claimed
    except BaseException:
        claimed.release(failed=True)
        raise
    claimed.release(failed=False)


def ensure_free_space(directory: Path, needed: int) -> None:
    """Refuse to start writing `needed` bytes into `directory` when its filesystem has less free."""
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise CompressError(f"the output needs {needed / 1e9:.2f} GB but {directory.parent} has only {free / 1e9:.2f} GB free: "
                            "free some space or write somewhere else")


def report_directory(target: str | os.PathLike, flag: str = "-o") -> Path:
    """A directory for report files (plots) that replace earlier ones of the same name: created
    when missing, refused when it is a file or cannot be created."""
    path = Path(target)
    if path.exists() and not path.is_dir():
        raise CompressError(f"{flag} {path} is a file: name a directory for the report files")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CompressError(f"cannot create {flag} {path}: {exc.strerror}; choose a writable place") from None
    return path


def sibling_path(target: Path, kind: str) -> Path:
    """A hidden staging (``tmp``) or retired (``old``) sibling of `target`, named after this process."""
    return target.parent / f".{target.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}{target.suffix}"


@contextmanager
def atomic_output_dir(target: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """A checkpoint directory that appears whole or not at all (the library form of `claim_output`)."""
    with claim_output(target, kind="directory", overwrite=overwrite, flag="") as claimed, claimed.write() as staging:
        yield staging


@contextmanager
def atomic_file(target: str | Path) -> Iterator[Path]:
    """A file that replaces `target` only when the block succeeds (no checks: the caller has decided)."""
    target = Path(target)
    directory, token = _make_staging(target)
    try:
        yield directory / target.name
    except BaseException:
        with _commit_lock:
            _remove(directory)
            _unregister(token)
        raise
    with _commit_lock:
        _unregister(token)
        try:
            _replace(directory / target.name, target)
        finally:
            _remove(directory)


def _replace(temporary: Path, target: Path) -> None:
    """Move a finished file onto its target with ordinary permissions (safetensors creates owner-only files)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    os.replace(temporary, target)
