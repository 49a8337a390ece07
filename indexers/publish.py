"""Claiming and publishing an index directory: one build per target, an atomic swap, crash repair.

Every build (single-node or sharded) writes into ``<out>.building`` and publishes it at ``<out>``
with :func:`swap_in`. The steps, and what a crash after each leaves (``recover`` repairs it when the
next build claims the target with :func:`claimed_target`):

1. ``<out>.building/.publishing`` is written: the marker saying this build is being published.
   Crash: the old index is at ``<out>``; the finished build waits in ``<out>.building`` (``--resume``
   installs it without rebuilding).
2. Where ``<out>`` exists: one atomic exchange of ``<out>.building`` and ``<out>`` (Linux
   ``renameat2(RENAME_EXCHANGE)``), so readers see the old index or the new one, never nothing.
   Crash: the new index is at ``<out>`` (with the marker), the old one at ``<out>.building``.
   Where the filesystem cannot exchange, two renames (``<out>`` -> ``<out>.old``, then the build ->
   ``<out>``); a crash between them leaves ``<out>`` missing for that moment, and ``recover`` installs
   the finished build.
3. The previous index is renamed to ``<out>.old``; 4. the marker is removed; 5. ``<out>.old`` is deleted.

The marker is what tells "a finished build not yet published" from "the previous index, swapped
out": both hold a ``manifest.json``.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from trident_search.errors import TridentError
from trident_search.indexers.checkpoint import fsync_dir, write_atomic
from trident_search.indexers.corpus import corpus_file
from trident_search.indexers.manifest import MANIFEST

log = logging.getLogger(__name__)

PUBLISHING = ".publishing"

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


class BuildError(TridentError, RuntimeError):
    """A build that cannot start, continue or publish; the message says what to change."""


def work_dir(out: Path) -> Path:
    """Where the build of ``out`` is written (and its checkpoints kept for ``--resume``)."""
    return out.with_name(out.name + ".building")


def old_dir(out: Path) -> Path:
    """Where the previous index waits for deletion during a swap."""
    return out.with_name(out.name + ".old")


def lock_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.lock")


@contextmanager
def lock(out: Path) -> Iterator[None]:
    """Hold the build lock of ``out`` (one build per output directory at a time)."""
    path = lock_path(out)
    try:
        fh = open(path, "w")  # noqa: SIM115 - closed below, after the lock is released
    except OSError as exc:
        raise BuildError(describe_os_error(exc, out=out)) from exc
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BuildError(f"another build of {out} is running (lock {path})") from None
        yield


@contextmanager
def claimed_target(out: str | Path, corpus: str | Path) -> Iterator[tuple[Path, Path]]:
    """Resolve ``out`` and the corpus file, then hold ``out``'s build lock with any half-finished
    swap repaired and a non-index folder refused: what every build (single or sharded) starts with."""
    target = Path(out).resolve()
    source = corpus_file(corpus).resolve()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BuildError(describe_os_error(exc, out=target)) from exc
    with lock(target):
        try:
            recover(target)
        except OSError as exc:
            raise BuildError(f"cannot repair the interrupted publish of {target}: "
                             f"{describe_os_error(exc, out=target)}") from exc
        check_target(target)
        yield target, source


def check_target(out: Path) -> None:
    """Refuse to replace something that is not a Trident index (a user's folder, a file)."""
    if not out.exists():
        return
    if out.is_dir() and ((out / MANIFEST).is_file() or not any(out.iterdir())):
        return
    raise BuildError(f"{out} exists and is not a Trident index; remove it or choose another --out")


def swap_in(work: Path, out: Path) -> None:
    """Publish the finished build ``work`` at ``out`` (steps in the module docstring)."""
    old = old_dir(out)
    write_atomic(work / PUBLISHING, json.dumps({"pid": os.getpid(), "time": time.time()}).encode())
    if not out.exists():
        os.rename(work, out)
    elif _exchange(work, out):
        os.rename(work, old)  # work now holds the previous index
    else:
        os.rename(out, old)
        os.rename(work, out)
    fsync_dir(out.parent)
    _finish(out)


def recover(out: str | Path) -> None:
    """Repair a publish interrupted by a crash: finish it where the new index is at ``out`` or
    whole in the build folder, else put the previous index back."""
    out = Path(out)
    old, work = old_dir(out), work_dir(out)
    if (out / PUBLISHING).exists():  # the swap happened: anything in work is the previous index
        log.warning("finishing an interrupted publish of %s", out)
        if work.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.rename(work, old)
        _finish(out)
        return
    if (work / PUBLISHING).exists():  # not swapped yet: the finished build waits for --resume
        (work / PUBLISHING).unlink()
    if not old.exists():
        return
    if out.exists():
        log.info("removing the previous index left at %s", old)
    elif (work / MANIFEST).is_file():
        log.warning("finishing an interrupted publish: installing %s", work)
        os.rename(work, out)
    else:
        log.warning("restoring the previous index from %s", old)
        os.rename(old, out)
        fsync_dir(out.parent)
        return
    fsync_dir(out.parent)
    shutil.rmtree(old)


def _finish(out: Path) -> None:
    (out / PUBLISHING).unlink(missing_ok=True)
    fsync_dir(out)
    old = old_dir(out)
    if old.exists():
        shutil.rmtree(old)


_renameat2: object = None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories atomically (Linux ``renameat2``); False where that is not supported."""
    global _renameat2
    if _renameat2 is None:
        try:
            fn = ctypes.CDLL(None, use_errno=True).renameat2
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            fn.restype = ctypes.c_int
            _renameat2 = fn
        except (AttributeError, OSError):
            _renameat2 = False
    if _renameat2 is False:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:  # type: ignore[operator]
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def describe_os_error(exc: OSError, *, out: Path | None = None) -> str:
    """One line for a filesystem error: what failed, where, and what to do."""
    if exc.errno is None:  # raised with a message of ours (e.g. "corpus not found: ...")
        return str(exc)
    where = exc.filename or (out if out is not None else "")
    ours = out is not None and str(where).startswith(str(out.parent))
    target = "choose another --out" if ours else "fix the path"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        what = "no space left on the device" if exc.errno == errno.ENOSPC else "disk quota exceeded"
        return f"{what} while writing {where}: free some space or {target}"
    if exc.errno == errno.EROFS:
        return f"{where} is on a read-only file system: {target} on a writable one"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return (f"permission denied on {where}: give this user write access to its folder or {target}"
                if ours else f"permission denied on {where}: make it readable by this user")
    return f"{exc.strerror or exc} ({where})"
