"""Content hashes of large files, remembered so that a re-run reads no
file's bytes again.

A file's sha256 is kept in the cache (kind "digest") under a key made of
its absolute path, size, modification time (ns), inode and device: any
rewrite of the file changes at least one of them, so a remembered digest
is used only for the very file it was computed from. A moved or copied
file is hashed once more, and then has the same content key as before: the
entries keyed by its content are found again.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from .cache import Cache, content_key

_BLOCK = 1 << 20
# Digests computed in this process (a zoo's checkpoints are looked up for
# every cache key of every stage).
_MEMO: dict = {}


def _stat_key(path: Path):
    stat = path.stat()
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_dev)


def file_sha256(path, cache: Cache | None = None) -> str:
    """The sha256 (hex) of the file's bytes: from this process's memo, else
    from `cache`'s remembered digests, else read and hashed (and remembered
    in both)."""
    path = Path(path)
    stat_key = _stat_key(path)
    if stat_key in _MEMO:
        return _MEMO[stat_key]
    key = content_key("digest", *stat_key)
    entry = cache.get("digest", key) if cache is not None else None
    if entry is not None:
        digest = entry.meta["sha256"]
    else:
        hasher = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(_BLOCK), b""):
                hasher.update(block)
        digest = hasher.hexdigest()
        if cache is not None and _stat_key(path) == stat_key:  # unchanged while it was read
            cache.put("digest", key, {"path": stat_key[0], "bytes": stat_key[1], "sha256": digest})
    _MEMO[stat_key] = digest
    return digest

