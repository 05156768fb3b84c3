"""Facts about large files (their sha256, what a checkpoint holds),
remembered so that a re-run reads no file's bytes again.

A fact is kept in this process and in the cache (kind "filefact") under a
key made of what it is, the file's absolute path, size, modification time
(ns), inode and device: any rewrite of the file changes at least one of
them, so a remembered fact is used only for the very file it was computed
from. A moved or copied file is read once more; its sha256 is then the
same as before, so the entries keyed by its content are found again.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .cache import Cache, content_key

_BLOCK = 1 << 20
# Facts computed or read in this process: a zoo's checkpoints are looked up
# for every cache key of every stage.
_MEMO: dict[tuple[Any, ...], Any] = {}


def _version(path: Path) -> tuple[str, int, int, int, int]:
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_dev


def remembered(path: str | os.PathLike[str], what: str, compute: Callable[[Path], Any],
               cache: Cache | None = None) -> Any:
    """compute(path) (a JSON value), from this process's memo, else from
    `cache`'s remembered facts, else computed (and remembered in both,
    unless the file changed while it was read)."""
    path = Path(path)
    version = _version(path)
    memo_key = (what, *version)
    if memo_key in _MEMO:
        return _MEMO[memo_key]
    key = content_key("filefact", what, *version)
    entry = cache.get("filefact", key) if cache is not None else None
    if entry is not None:
        value = entry.meta["value"]
    else:
        value = compute(path)
        if cache is not None and _version(path) == version:
            cache.put("filefact", key, {"what": what, "path": version[0], "bytes": version[1], "value": value})
    _MEMO[memo_key] = value
    return value


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike[str], cache: Cache | None = None) -> str:
    """The sha256 (hex) of the file's bytes, remembered (see remembered())."""
    sha256: str = remembered(path, "sha256", _sha256, cache)
    return sha256
