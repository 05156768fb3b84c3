"""Atomic writes for the whole zoo package, and the one way its temporary
files are named and swept.

Every file or folder is written under a temporary name in its final folder
(``.tmp-<random>-<final name>``: hidden, so image and checkpoint listings
never see it; the random part keeps concurrent writers apart; the final
name lets a sweep tell whose it is), flushed to disk, then renamed onto
its final name. A reader therefore sees the old content or the complete
new one, never a partial one, and a process killed at any point leaves at
worst a temporary, which nothing reads.

Temporaries are removed by :func:`sweep_temporaries`, never by guessing
from host names or process ids (containers sharing a host network share
pids and host names): a writer holds a file lock while its temporaries
exist, and a temporary is stale exactly when no process holds its lock.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from filelock import FileLock, Timeout

TEMP_PREFIX = ".tmp-"
_TEMPORARY = re.compile(rf"{re.escape(TEMP_PREFIX)}[0-9a-f]{{12}}-(?P<final>.+)")


def temporary_name(final_name: str) -> str:
    """A fresh temporary name, in the same folder, for `final_name`."""
    return f"{TEMP_PREFIX}{uuid.uuid4().hex[:12]}-{final_name}"


def temporary_target(name: str) -> str | None:
    """The final name a temporary named `name` stands for; None when `name`
    is not a temporary's name."""
    match = _TEMPORARY.fullmatch(name)
    return match.group("final") if match else None


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object]) -> None:
    """Write `path` atomically: `write(f)` fills a binary file object opened
    on a temporary in the same folder, which is flushed to disk and renamed
    over `path` (the rename then reaches the disk too). On any exception
    (including KeyboardInterrupt) the temporary is removed and `path` is
    untouched."""
    path = Path(path)
    temporary = path.parent / temporary_name(path.name)
    try:
        with open(temporary, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """atomic_write of `text`, UTF-8 encoded."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_json(path: str | os.PathLike[str], value: Any) -> None:
    """atomic_write of `value` as JSON (indent=1, sorted keys; NaN and
    infinities allowed, as Python's json writes them), ending with a newline."""
    atomic_write_text(path, json.dumps(value, indent=1, sort_keys=True, allow_nan=True) + "\n")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling folder of `path` to fill; when the block
    ends without error it takes the place of `path`, which need not exist.

    Guarantee: where the kernel can exchange two names atomically (Linux's
    renameat2 RENAME_EXCHANGE: ext4, xfs, btrfs, tmpfs and most local file
    systems), `path` is at every instant either the old complete folder or
    the new complete one, never missing and never partial; the old one is
    removed after the exchange. Elsewhere (NFS, macOS) the old folder is
    renamed aside and the new one renamed in: `path` is never partial, but
    is missing between the two renames (microseconds). Two processes
    replacing the same `path` at once both succeed, and `path` ends as one
    of their complete folders (the last rename wins). On error
    the temporary is removed; a killed process leaves only the hidden
    temporary, which :func:`sweep_temporaries` removes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / temporary_name(path.name)
    tmp.mkdir()
    try:
        yield tmp
        fsync_directory(tmp)
        _put_in_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_directory(path.parent)


def _put_in_place(new: Path, path: Path) -> None:
    """Move the folder `new` to `path`, replacing whatever folder is there,
    then remove the replaced one."""
    replaced = []
    while True:
        try:
            # Atomic where `path` is absent (or an empty folder).
            os.rename(new, path)
            break
        except OSError as error:
            if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        try:
            _exchange(new, path)
        except FileNotFoundError:
            continue  # another writer moved `path` away meanwhile: rename again
        except _NoExchange:
            aside = path.parent / temporary_name(path.name)
            try:
                os.rename(path, aside)
            except FileNotFoundError:
                continue
            replaced.append(aside)
            continue
        replaced.append(new)  # the exchange left the old folder under the temporary name
        break
    for folder in replaced:
        shutil.rmtree(folder, ignore_errors=True)


class _NoExchange(Exception):
    """The platform or file system cannot exchange two names atomically."""


def _renameat2() -> Any:
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    function.restype = ctypes.c_int
    return function


_RENAMEAT2 = _renameat2() if os.name == "posix" else None
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> None:
    """Swap the names `a` and `b` atomically (both must exist)."""
    if _RENAMEAT2 is None:
        raise _NoExchange
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        raise _NoExchange
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def fsync_directory(folder: str | os.PathLike[str]) -> None:
    """Make the renames in `folder` durable (a power cut otherwise may lose
    them); not every platform can open a directory, and there it is a no-op."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_temporaries(folder: str | os.PathLike[str], *, match: Callable[[str], bool] | None = None,
                       hidden: bool = False) -> list[Path]:
    """Remove the temporaries (files or folders) in `folder` whose final name
    satisfies `match` (default: all of them); returns the paths removed.
    hidden=True: every hidden entry too, for a folder whose only writer
    works under the caller's lock (whatever names older versions gave their
    temporaries). The caller must hold the lock their writers hold while
    writing (else a live writer's work would be removed):
    :func:`sweep_temporaries` does so."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        final = temporary_target(path.name)
        if final is None and not (hidden and path.name.startswith(".")):
            continue
        if final is not None and match is not None and not match(final):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def sweep_temporaries(folder: str | os.PathLike[str],
                      lock_of: Callable[[str], str | os.PathLike[str] | None]) -> list[Path]:
    """Remove the temporaries in `folder` that no live writer holds; returns
    the paths removed.

    lock_of(final_name) names the lock file the writer of that final name
    holds while its temporaries exist (None: keep the temporary). For each
    such lock, one non-blocking attempt with a fresh lock object (so a lock
    this very process holds counts as held): when it succeeds no process is
    writing, and the temporaries are removed while it is held, so that no
    writer can start meanwhile."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    locks: dict[Path, set[str]] = {}
    for path in folder.iterdir():
        final = temporary_target(path.name)
        if final is None:
            continue
        lock = lock_of(final)
        if lock is not None:
            locks.setdefault(Path(lock), set()).add(final)
    removed: list[Path] = []
    for lock, finals in locks.items():
        if not lock.parent.is_dir():
            lock.parent.mkdir(parents=True, exist_ok=True)
        probe = FileLock(lock, thread_local=False)
        try:
            probe.acquire(blocking=False)
        except Timeout:
            continue
        try:
            removed += remove_temporaries(folder, match=finals.__contains__)
        finally:
            probe.release()
    return removed
