"""The screening cache: the only state shared between runs, stages and
(later) machines, kept in this one module.

Layout: ``ROOT/KIND/KEY.json`` (the entry's manifest) and, for entries with
arrays, ``ROOT/KIND/KEY.NAME.npy``. KEY is a hash of everything the entry's
content depends on (:func:`content_key`), so an entry is never updated: a
changed input is a different key.

Every file is written under a temporary name in its final folder, flushed to
disk, then renamed over its final name (``os.replace`` is atomic), and the
manifest is written last, naming each array file with its shape and dtype.
An entry without a manifest does not exist; so a run killed at any point
(Ctrl-C, a crash, SIGKILL) leaves either a complete entry or none, and at
worst some temporary files, which are never read and are removed by the next
run on the same machine once the process that wrote them has exited. An
entry that still cannot be read (a disk error, a file edited by hand) is
treated as missing, with a warning, and recomputed.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import uuid
import warnings
from pathlib import Path

import numpy as np

from ._files import atomic_write, fsync_directory

ENV = "PED_FAST_CACHE"
_TEMP_PREFIX = ".tmp-"
_FORMAT = 1


def default_root() -> Path:
    """$PED_FAST_CACHE, else ~/.cache/ped_fast."""
    value = os.environ.get(ENV)
    return Path(value).expanduser().absolute() if value else Path.home() / ".cache" / "ped_fast"


def content_key(*parts) -> str:
    """A 32-hex-digit hash of `parts` (anything JSON can write: strings,
    numbers, lists, dicts; dict order does not matter)."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=_jsonable)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _jsonable(value):
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cache key parts must be JSON values, got {type(value).__name__}")


class CacheEntry:
    """A complete entry: `meta` (a dict) and `arrays` ({name: read-only
    numpy memmap})."""

    def __init__(self, kind, key, meta, arrays, path):
        self.kind = kind
        self.key = key
        self.meta = meta
        self.arrays = arrays
        self.path = path

    def __repr__(self):
        return f"CacheEntry({self.kind}/{self.key}, arrays={sorted(self.arrays)})"


class Cache:
    """Content-keyed entries under `root` (default: :func:`default_root`)."""

    def __init__(self, root=None):
        # Absolute: memory-mapped arrays report absolute file names (put()
        # recognises its own files by them), and Ray workers resolve the
        # root in their own working folders.
        self.root = Path(root).expanduser().absolute() if root is not None else default_root()

    @classmethod
    def of(cls, cache):
        """`cache` itself when it is a Cache, else Cache(cache) (a folder or None)."""
        return cache if isinstance(cache, cls) else cls(cache)

    def __repr__(self):
        return f"Cache({str(self.root)!r})"

    def _folder(self, kind) -> Path:
        folder = self.root / kind
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def sweep(self):
        """Remove the temporary files that killed runs on this machine left
        behind (those of processes still running are kept)."""
        if self.root.is_dir():
            for folder in self.root.iterdir():
                if folder.is_dir():
                    _remove_stale_temporaries(folder)

    def manifest_path(self, kind, key) -> Path:
        return self.root / kind / f"{key}.json"

    def has(self, kind, key) -> bool:
        """Whether a manifest exists (cheap; get() also checks the arrays)."""
        return self.manifest_path(kind, key).is_file()

    def get(self, kind, key) -> CacheEntry | None:
        """The entry, or None when it does not exist or cannot be read (then
        with a warning naming the file)."""
        manifest = self.manifest_path(kind, key)
        try:
            text = manifest.read_text()
        except FileNotFoundError:
            return None
        except OSError as error:
            return _unreadable(manifest, error)
        try:
            record = json.loads(text)
            arrays = {}
            for name, info in record["arrays"].items():
                path = manifest.parent / info["file"]
                array = np.load(path, mmap_mode="r", allow_pickle=False)
                if list(array.shape) != info["shape"] or str(array.dtype) != info["dtype"]:
                    raise ValueError(f"{path.name} holds {array.dtype} {list(array.shape)}, the manifest says "
                                     f"{info['dtype']} {info['shape']}")
                arrays[name] = array
            return CacheEntry(kind, key, record["meta"], arrays, manifest)
        except (OSError, ValueError, KeyError, TypeError) as error:
            return _unreadable(manifest, error)

    def new_array(self, kind, key, name, shape, dtype) -> np.memmap:
        """A writable array backed by a temporary file, to be filled in place
        (an N x D feature matrix need never be in memory) and passed to
        put(); discard() removes it if the entry is abandoned."""
        path = self._folder(kind) / _temporary_name(f"{key}.{name}.npy")
        return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=tuple(shape))

    def put(self, kind, key, meta, arrays=None) -> CacheEntry:
        """Write an entry atomically. arrays: {name: numpy array, or a memmap
        from new_array(), which is moved into place rather than copied}."""
        _validate_name(kind, "kind")
        folder = self._folder(kind)
        files = {}
        for name, array in (arrays or {}).items():
            _validate_name(name, "array name")
            final = folder / f"{key}.{name}.npy"
            if isinstance(array, np.memmap) and array.filename and Path(array.filename).parent == folder:
                array.flush()
                _fsync_file(array.filename)
                os.replace(array.filename, final)
            else:
                array = np.ascontiguousarray(array)
                atomic_write(final, lambda f, a=array: np.save(f, a, allow_pickle=False))
            files[name] = {"file": final.name, "shape": list(array.shape), "dtype": str(array.dtype)}
        record = {"format": _FORMAT, "kind": kind, "key": key, "meta": meta, "arrays": files}
        text = json.dumps(record, indent=1, sort_keys=True, allow_nan=True)
        atomic_write(self.manifest_path(kind, key), lambda f: f.write(text.encode()))
        return self.get(kind, key)

    @staticmethod
    def discard(array):
        """Remove the temporary file behind an abandoned new_array()."""
        if isinstance(array, np.memmap) and array.filename:
            Path(array.filename).unlink(missing_ok=True)


def _validate_name(name, what):
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"cache {what} must be a plain name (no '/', not starting with '.'), got {name!r}")


def _unreadable(path, error):
    warnings.warn(f"cache entry {path} cannot be read ({type(error).__name__}: {error}); treating it as missing "
                  f"and recomputing it", RuntimeWarning, stacklevel=3)
    return None


def _temporary_name(final_name):
    # Host and pid in the name let a later run tell a dead writer's leftovers
    # from a live writer's work in progress (a cache may be shared).
    return f"{_TEMP_PREFIX}{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}-{final_name}"


def _fsync_file(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_stale_temporaries(folder: Path):
    # The whole name must match (_temporary_name): a prefix match would also
    # take host "node-31337"'s files for host "node"'s.
    own = re.compile(rf"{re.escape(_TEMP_PREFIX + socket.gethostname())}-(\d+)-[0-9a-f]{{8}}-.+")
    for path in folder.glob(f"{_TEMP_PREFIX}*"):
        match = own.fullmatch(path.name)
        if match and not _alive(int(match.group(1))):
            path.unlink(missing_ok=True)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
