"""The screening cache: the only state shared between runs, stages,
processes and machines, kept in this one module.

Layout: ``ROOT/KIND/KEY.json`` (the entry's manifest) and, for entries with
arrays, ``ROOT/KIND/KEY.NAME.npy``; ``ROOT/.locks/KIND/KEY.lock`` is the
entry's lock (an empty file, never read as data; hidden folders are never
kinds). KEY is a hash of everything the entry's content depends on
(:func:`content_key`), so a changed input is a different key.

Atomicity. Every file is written under a temporary name in its final folder
(ped_fast.zoo._files), flushed to disk, then renamed over its final name,
and the manifest is written last, naming each array file with its shape,
dtype, size and CRC-32. An entry without a manifest does not exist; so a
run killed at any point (Ctrl-C, a crash, SIGKILL, a full disk) leaves
either a complete entry or none, and at worst temporaries, which are never
read. put() on an existing key replaces the entry (the `config` kind
remembers a model's latest data config that way, and a damaged entry is
recomputed that way); the manifest's rename is what readers see switch.

Locking. A writer holds the entry's lock (:meth:`Cache.lock`, a file lock)
while it computes and writes the entry, so that two processes sharing the
cache (two terminals, Ray workers on a shared file system) compute it once:
the second waits, or defers the entry and comes back, then reads the
finished one. new_array() and put() take the lock themselves when the
caller does not hold it (locks are reentrant within a thread). Temporaries
exist only while their writer holds the entry's lock, so sweep() removes
exactly those whose lock it can take: no host names or pids are trusted.

Integrity. get() checks the manifest's format, and each array file's size,
shape, dtype and CRC-32 (zlib.crc32 in 16 MiB chunks: about 3 GB/s on one
core, once per file and process), so a truncated or altered file (a full
disk, an interrupted copy, a bit flip) is never read as data: the entry is
treated as missing, with a warning, and recomputed. entries(), verify() and
prune() let users see, check and clean the cache (``ped-fast cache``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import fnmatch
import functools
import hashlib
import json
import math
import os
import re
import threading
import time
import warnings
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt
from filelock import FileLock, Timeout

from ._files import atomic_write, atomic_write_json, remove_temporaries, sweep_temporaries, temporary_name

ENV = "PED_FAST_CACHE"
# Written in every manifest and checked on every read: 2 added each array's
# size and CRC-32. An entry of another format is recomputed.
_FORMAT = 2
_LOCKS = ".locks"
_CHUNK = 16 << 20


def default_root() -> Path:
    """$PED_FAST_CACHE, else ~/.cache/ped_fast."""
    value = os.environ.get(ENV)
    return Path(value).expanduser().absolute() if value else Path.home() / ".cache" / "ped_fast"


def content_key(*parts: Any) -> str:
    """A 32-hex-digit hash of `parts` (anything JSON can write: strings,
    numbers, lists, dicts; dict order does not matter)."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=_jsonable)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _jsonable(value: object) -> object:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cache key parts must be JSON values, got {type(value).__name__}")


class CacheEntry:
    """A complete entry: `meta` (a dict) and `arrays` ({name: read-only
    numpy memmap})."""

    def __init__(self, kind: str, key: str, meta: dict[str, Any], arrays: dict[str, np.memmap[Any, Any]],
                 path: Path) -> None:
        self.kind = kind
        self.key = key
        self.meta = meta
        self.arrays = arrays
        self.path = path

    def __repr__(self) -> str:
        return f"CacheEntry({self.kind}/{self.key}, arrays={sorted(self.arrays)})"


@dataclass(frozen=True)
class EntryRecord:
    """One entry as entries() lists it. label, model: the row label and the
    model name its meta records (None for kinds that record none, or when
    the manifest cannot be read); bytes: the size of its files; created:
    the manifest's modification time (seconds since the epoch); format:
    the manifest's format (None when unreadable)."""
    kind: str
    key: str
    label: str | None
    model: str | None
    bytes: int
    created: float
    files: tuple[Path, ...]
    format: int | None


@dataclass(frozen=True)
class Problem:
    """Something verify() found: `files` would be removed by
    ``prune(damaged=True)``."""
    kind: str
    key: str
    message: str
    files: tuple[Path, ...]

    def __str__(self) -> str:
        return f"{self.kind}/{self.key}: {self.message}"


@dataclass
class Pruned:
    """What prune() removed (or, with dry_run, would remove); `busy`: entries
    that matched but were being written by another process, left alone."""
    removed: list[EntryRecord] = field(default_factory=list)
    busy: list[EntryRecord] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(record.bytes for record in self.removed)


class Cache:
    """Content-keyed entries under `root` (default: :func:`default_root`)."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        # Absolute: memory-mapped arrays report absolute file names (put()
        # recognises its own files by them), and Ray workers resolve the
        # root in their own working folders.
        self.root = Path(root).expanduser().absolute() if root is not None else default_root()

    @classmethod
    def of(cls, cache: Cache | str | os.PathLike[str] | None) -> Cache:
        """`cache` itself when it is a Cache, else Cache(cache) (a folder or None)."""
        return cache if isinstance(cache, Cache) else cls(cache)

    def __repr__(self) -> str:
        return f"Cache({str(self.root)!r})"

    def _folder(self, kind: str) -> Path:
        folder = self.root / kind
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _kinds(self, kind: str | None = None) -> list[Path]:
        if kind is not None:
            _validate_name(kind, "kind")
            return [self.root / kind] if (self.root / kind).is_dir() else []
        if not self.root.is_dir():
            return []
        return sorted(folder for folder in self.root.iterdir() if folder.is_dir() and not folder.name.startswith("."))

    # Locking

    def lock_path(self, kind: str, key: str) -> Path:
        """The lock file of entry (kind, key)."""
        _validate_name(kind, "kind")
        _validate_key(key)
        return self.root / _LOCKS / kind / f"{key}.lock"

    @contextlib.contextmanager
    def lock(self, kind: str, key: str, *, blocking: bool = True, timeout: float | None = None) -> Iterator[bool]:
        """Hold the lock of entry (kind, key) for the ``with`` block, which
        receives whether it got it: always True when blocking without a
        timeout; with blocking=False (one attempt) or a timeout (seconds), False
        when another process (or thread) holds it, and then nothing is held.

        A writer holds it while it computes and writes the entry; typically:
        try blocking=False, defer the entry when another process is computing
        it, come back with blocking=True and get() the finished entry before
        computing. Reentrant within a thread (new_array and put take it
        again); exclusive between threads and processes. Hold at most one
        entry's lock while waiting for another's, or two processes waiting
        for each other's would wait forever."""
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                    or not timeout >= 0):
            raise ValueError(f"timeout must be None or a number of seconds >= 0, got {timeout!r}")
        path = self.lock_path(kind, key)
        try:
            lock = _hold_lock(path, timeout=-1 if timeout is None else timeout, blocking=bool(blocking))
        except Timeout:
            yield False
            return
        try:
            yield True
        finally:
            _drop_lock(path, lock)

    def sweep(self) -> list[Path]:
        """Remove the temporaries that no live writer holds (killed runs'
        leftovers, on any machine sharing the cache); returns their paths."""
        removed: list[Path] = []
        for folder in self._kinds():
            removed += sweep_temporaries(folder, functools.partial(self._lock_of_file, folder.name))
        return removed

    def _lock_of_file(self, kind: str, name: str) -> Path | None:
        key = name.split(".", 1)[0]
        try:
            return self.lock_path(kind, key)
        except ValueError:
            return None  # not a name this cache writes: leave it alone

    # Entries

    def manifest_path(self, kind: str, key: str) -> Path:
        return self.root / kind / f"{key}.json"

    def has(self, kind: str, key: str) -> bool:
        """Whether a manifest of this format exists (cheap: it does not read
        the arrays, which get() checks)."""
        try:
            record = json.loads(self.manifest_path(kind, key).read_text())
        except (OSError, ValueError):
            return False
        return isinstance(record, dict) and record.get("format") == _FORMAT

    def get(self, kind: str, key: str) -> CacheEntry | None:
        """The entry, or None when it does not exist, is of another format or
        cannot be read, or an array file does not hold what its manifest
        says (size, shape, dtype, CRC-32); then with a warning naming the
        file. The arrays are read-only memory maps."""
        manifest = self.manifest_path(kind, key)
        try:
            text = manifest.read_text()
        except FileNotFoundError:
            return None
        except OSError as error:
            _unreadable(manifest, error)
            return None
        try:
            record = json.loads(text)
            _check_format(record)
            arrays = {name: _open_array(manifest.parent, info, memo=True) for name, info in record["arrays"].items()}
            return CacheEntry(kind, key, record["meta"], arrays, manifest)
        except _OtherFormat as error:
            warnings.warn(f"cache entry {manifest} {error}; treating it as missing and recomputing it",
                          RuntimeWarning, stacklevel=2)
            return None
        except (OSError, ValueError, KeyError, TypeError, EOFError) as error:
            _unreadable(manifest, error)
            return None

    def new_array(self, kind: str, key: str, name: str, shape: Iterable[int],
                  dtype: npt.DTypeLike) -> np.memmap[Any, Any]:
        """A writable array backed by a temporary file, to be filled in place
        (an N x D feature matrix need never be in memory) and passed to
        put(); discard() removes it if the entry is abandoned. Its disk
        space is reserved now, so a full disk raises OSError(ENOSPC) here
        rather than killing the process (SIGBUS) when a page is written.
        Holds the entry's lock until put() or discard()."""
        _validate_name(kind, "kind")
        _validate_key(key)
        _validate_name(name, "array name")
        folder = self._folder(kind)
        lock_path = self.lock_path(kind, key)
        lock = _hold_lock(lock_path)
        path = folder / temporary_name(f"{key}.{name}.npy")
        try:
            array = _allocate(path, shape, dtype)
        except BaseException:
            path.unlink(missing_ok=True)
            _drop_lock(lock_path, lock)
            raise
        with _GUARD:
            _ARRAY_LOCKS[str(_file_of(array))] = (lock_path, lock)  # mapped from a path: never None
        return array

    def put(self, kind: str, key: str, meta: Mapping[str, Any],
            arrays: Mapping[str, npt.ArrayLike] | None = None) -> CacheEntry:
        """Write an entry atomically, under its lock. arrays: {name: numpy
        array, or a memmap from new_array(), which is moved into place
        rather than copied}. On any failure (bad input, a full disk...) it
        leaves nothing: the new_array() temporaries given are discarded, no
        array file stays, and no entry (once an array file is replaced, an
        older entry of the key goes too, since it no longer matches).
        Returns the entry as get() reads it back; OSError when it cannot be
        (get() warns why), rather than a None that would fail later."""
        arrays = dict(arrays or {})
        # new_array()'s memmaps: {file name: array}.
        streamed = {file: array for array in arrays.values() if isinstance(array, np.memmap)
                    and (file := _file_of(array)) is not None and file in _ARRAY_LOCKS}
        manifest = self.manifest_path(kind, key)
        placed: list[Path] = []
        try:
            _validate_name(kind, "kind")
            _validate_key(key)
            for name, value in arrays.items():
                _validate_name(name, "array name")
                if np.asarray(value).dtype.hasobject:
                    raise ValueError(f"cache array {name!r} must hold numbers, got dtype object (it would need "
                                     f"pickle)")
            folder = self._folder(kind)
            with self.lock(kind, key):
                files: dict[str, dict[str, Any]] = {}
                for name, value in arrays.items():
                    final = folder / f"{key}.{name}.npy"
                    filename = next((filename for filename, own in streamed.items() if own is value), None)
                    array: npt.NDArray[Any]
                    if filename is not None:
                        array = streamed[filename]
                        array.flush()
                        crc = _crc32(array)
                        _fsync_file(filename)
                        placed.append(final)
                        os.replace(filename, final)
                    else:
                        array = np.ascontiguousarray(value)
                        crc = _crc32(array)
                        placed.append(final)
                        atomic_write(final, functools.partial(_write_npy, array=array))
                    files[name] = {"file": final.name, "shape": list(array.shape), "dtype": str(array.dtype),
                                   "bytes": final.stat().st_size, "crc32": crc}
                record = {"format": _FORMAT, "kind": kind, "key": key, "meta": meta, "arrays": files}
                atomic_write_json(manifest, record)
        except BaseException:
            if placed:
                manifest.unlink(missing_ok=True)
                for path in placed:
                    path.unlink(missing_ok=True)
            for own in streamed.values():
                Cache.discard(own)
            raise
        for filename in streamed:
            _release_array(filename)
        entry = self.get(kind, key)
        if entry is None:
            raise OSError(f"cache entry {manifest} was written but cannot be read back")
        return entry

    @staticmethod
    def discard(array: npt.NDArray[Any]) -> None:
        """Remove the temporary file behind an abandoned new_array() (and
        release the entry lock it held)."""
        file = _file_of(array) if isinstance(array, np.memmap) else None
        if file is not None:
            Path(file).unlink(missing_ok=True)
            _release_array(file)

    # Management: ped-fast cache ls | verify | prune

    def entries(self, kind: str | None = None) -> list[EntryRecord]:
        """Every entry (of `kind`, or all kinds) as EntryRecords, by kind then
        key. Array files with no manifest are not entries (verify() lists them)."""
        records: list[EntryRecord] = []
        for folder in self._kinds(kind):
            for manifest in sorted(folder.glob("*.json")):
                # A key has no dot: anything else is no manifest of this cache.
                if manifest.name.count(".") == 1 and not manifest.name.startswith("."):
                    records.append(self._record(folder.name, manifest))
        return records

    def _record(self, kind: str, manifest: Path) -> EntryRecord:
        key = manifest.name[:-len(".json")]
        files = [manifest] + sorted(manifest.parent.glob(f"{key}.*.npy"))
        try:
            record = json.loads(manifest.read_text())
            meta = record.get("meta") or {}
            label, model, form = meta.get("label"), meta.get("model"), record.get("format")
        except (OSError, ValueError, AttributeError):
            label = model = form = None
        sizes, created = 0, 0.0
        for path in files:
            try:
                stat = path.stat()
            except OSError:
                continue
            sizes += stat.st_size
            if path == manifest:
                created = stat.st_mtime
        return EntryRecord(kind=kind, key=key, label=label if isinstance(label, str) else None,
                           model=model if isinstance(model, str) else None, bytes=sizes, created=created,
                           files=tuple(files), format=form if isinstance(form, int) else None)

    def verify(self, kind: str | None = None) -> list[Problem]:
        """Read every entry (of `kind`, or all kinds) in full: a Problem for
        each that get() would refuse (unreadable manifest, another format, an
        array file missing or not of its manifest's size, shape, dtype or
        CRC-32) and for each array file that belongs to no entry."""
        problems: list[Problem] = []
        for folder in self._kinds(kind):
            named: set[str] = set()
            for record in self.entries(folder.name):
                manifest = record.files[0]
                try:
                    content = json.loads(manifest.read_text())
                    _check_format(content)
                    for info in content["arrays"].values():
                        named.add(info["file"])
                        _open_array(folder, info, memo=False)
                except (_OtherFormat, OSError, ValueError, KeyError, TypeError, EOFError) as error:
                    problems.append(Problem(record.kind, record.key, f"{type(error).__name__}: {error}"
                                            if not isinstance(error, _OtherFormat) else str(error), record.files))
            for path in sorted(folder.glob("*.npy")):
                if not path.name.startswith(".") and path.name not in named:
                    key = path.name.split(".", 1)[0]
                    if not any(p.kind == folder.name and p.key == key for p in problems):
                        problems.append(Problem(folder.name, key, f"{path.name} belongs to no entry (a writer was "
                                                "stopped before its manifest); nothing reads it", (path,)))
        return problems

    def prune(self, *, model: str | None = None, kind: str | None = None, older_than: float | timedelta | None = None,
              damaged: bool = False, dry_run: bool = False) -> Pruned:
        """Remove the entries that match every filter given: `model` (a row
        label or model name, shell wildcards allowed, e.g. ``"resnet*"``),
        `kind`, `older_than` (seconds, or a timedelta: entries created before
        that long ago; parse_age reads "30d"), `damaged` (what verify()
        reports). At least one filter is needed (to empty the cache, delete
        its folder). Each entry is removed under its lock, manifest first
        (so it stops existing at once); entries another process is writing
        are left alone and listed in `busy`. dry_run: remove nothing, report
        what would be removed."""
        if model is None and kind is None and older_than is None and not damaged:
            raise ValueError("prune needs at least one of model, kind, older_than or damaged; to empty the cache, "
                             "delete its folder")
        if isinstance(older_than, timedelta):
            older_than = older_than.total_seconds()
        if older_than is not None and (isinstance(older_than, bool) or not isinstance(older_than, (int, float))
                                       or not older_than >= 0):
            raise ValueError(f"older_than must be a number of seconds >= 0 or a timedelta, got {older_than!r}")
        if model is not None and (not isinstance(model, str) or not model):
            raise ValueError(f"model must be a non-empty label or model name, got {model!r}")
        if damaged:
            candidates = [_problem_record(self, problem) for problem in self.verify(kind)]
        else:
            candidates = self.entries(kind)
        cutoff = time.time() - older_than if older_than is not None else None
        result = Pruned()
        for record in candidates:
            if model is not None and not any(name is not None and fnmatch.fnmatchcase(name, model)
                                             for name in (record.label, record.model)):
                continue
            if cutoff is not None and record.created >= cutoff:
                continue
            if dry_run:
                result.removed.append(record)
                continue
            with self.lock(record.kind, record.key, blocking=False) as got:
                if not got:
                    result.busy.append(record)
                    continue
                manifest = self.manifest_path(record.kind, record.key)
                if record.files and record.files[0] == manifest:
                    # What the entry holds now: a writer may have replaced it since it was listed.
                    record = dataclasses.replace(record, files=self._record(record.kind, manifest).files)
                for path in record.files:  # the manifest first
                    path.unlink(missing_ok=True)
                remove_temporaries(self.root / record.kind, match=functools.partial(_of_key, record.key))
            result.removed.append(record)
        return result


def _of_key(key: str, final: str) -> bool:
    return final.split(".", 1)[0] == key


def _problem_record(cache: Cache, problem: Problem) -> EntryRecord:
    files = tuple(path for path in problem.files if path.exists())
    manifest = cache.manifest_path(problem.kind, problem.key)
    if manifest in files:
        record = cache._record(problem.kind, manifest)
        return dataclasses.replace(record, files=files, bytes=sum(path.stat().st_size for path in files))
    stats = [path.stat() for path in files]
    return EntryRecord(kind=problem.kind, key=problem.key, label=None, model=None,
                       bytes=sum(s.st_size for s in stats), created=min((s.st_mtime for s in stats), default=0.0),
                       files=files, format=None)


# Plain-text output for ``ped-fast cache``.

def format_size(n: float) -> str:
    """1234567 -> '1.2 MB' (decimal units, as disks are sold and df -H shows)."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def format_age(seconds: float) -> str:
    """Seconds -> '40 s', '12 min', '5 h', '3 d'."""
    for unit, length in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= length:
            return f"{seconds / length:.0f} {unit}"
    return f"{max(seconds, 0):.0f} s"


_AGE = re.compile(r"\s*(\d+(?:\.\d*)?)\s*(s|min|h|d|w)\s*")
_AGE_UNITS = {"s": 1, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_age(text: str | float, what: str = "--older-than") -> float:
    """'30d', '12h', '90min', '2w', '45s' -> seconds."""
    match = _AGE.fullmatch(str(text))
    if not match:
        raise ValueError(f"{what} must be a number with a unit s, min, h, d or w (e.g. 30d), got {text!r}")
    return float(match.group(1)) * _AGE_UNITS[match.group(2)]


def format_entries(records: Sequence[EntryRecord], *, now: float | None = None) -> str:
    """The table of ``ped-fast cache ls``: one line per entry (kind, model,
    key, size, age), then each kind's total and the grand total."""
    now = time.time() if now is None else now
    lines = [f"{'KIND':<10} {'MODEL':<32} {'KEY':<12} {'SIZE':>9} {'AGE':>7}"]
    totals: dict[str, tuple[int, int]] = {}
    for r in records:
        name = r.label or r.model or ("(unreadable)" if r.format is None else "-")
        if r.format is not None and r.format != _FORMAT:
            name += f" (format {r.format})"
        lines.append(f"{r.kind:<10} {name:<32} {r.key[:12]:<12} {format_size(r.bytes):>9} "
                     f"{format_age(now - r.created):>7}")
        count, size = totals.get(r.kind, (0, 0))
        totals[r.kind] = (count + 1, size + r.bytes)
    for kind, (count, size) in totals.items():
        lines.append(f"{kind}: {count} entr{'y' if count == 1 else 'ies'}, {format_size(size)}")
    lines.append(f"total: {len(records)} entr{'y' if len(records) == 1 else 'ies'}, "
                 f"{format_size(sum(r.bytes for r in records))}")
    return "\n".join(lines)


def format_problems(problems: Sequence[Problem]) -> str:
    """One line per verify() problem, or a line saying there is none."""
    if not problems:
        return "every entry is intact"
    return "\n".join(str(problem) for problem in problems)


def format_pruned(pruned: Pruned, *, dry_run: bool = False) -> str:
    """What prune() did (or would do), one line per entry and a total."""
    verb = "would remove" if dry_run else "removed"
    lines = [f"{verb} {r.kind}/{r.key[:12]} {r.label or r.model or ''} ({format_size(r.bytes)})".rstrip()
             for r in pruned.removed]
    lines += [f"skipped {r.kind}/{r.key[:12]}: another process is writing it" for r in pruned.busy]
    lines.append(f"{verb} {len(pruned.removed)} entr{'y' if len(pruned.removed) == 1 else 'ies'}, "
                 f"{format_size(pruned.bytes)}")
    return "\n".join(lines)


# Internals

class _OtherFormat(ValueError):
    pass


def _check_format(record: object) -> None:
    form = record.get("format") if isinstance(record, dict) else None
    if form != _FORMAT:
        raise _OtherFormat(f"was written in format {form!r} by another version of ped_fast (this one reads format "
                           f"{_FORMAT})")


def _validate_name(name: object, what: str) -> None:
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"cache {what} must be a plain name (no '/', not starting with '.'), got {name!r}")


def _validate_key(key: object) -> None:
    # No '.': a file name's key is what precedes its first dot.
    if not isinstance(key, str) or not key or "." in key or "/" in key or "\\" in key:
        raise ValueError(f"cache key must be a plain name without '.', '/' or '\\', got {key!r}")


def _unreadable(path: Path, error: BaseException) -> None:
    warnings.warn(f"cache entry {path} cannot be read ({type(error).__name__}: {error}); treating it as missing "
                  f"and recomputing it", RuntimeWarning, stacklevel=3)
    return None


# Files this process has checked in full, by identity and content stamp:
# a re-read in the same process (a stage's result read again by the
# scoring unit) does not checksum the file again.
_VERIFIED: set[tuple[str, int, int, int, int, int]] = set()


def _open_array(folder: Path, info: dict[str, Any], *, memo: bool) -> np.memmap[Any, Any]:
    """The array file an entry's manifest describes, as a read-only memmap,
    after checking its size, shape, dtype and CRC-32."""
    name = info["file"]
    if not isinstance(name, str) or Path(name).name != name or name.startswith("."):
        raise ValueError(f"the manifest names the array file {name!r}, not a plain file name")
    path = folder / name
    stat = os.stat(path)
    if stat.st_size != info["bytes"]:
        raise ValueError(f"{name} has {stat.st_size} bytes, the manifest says {info['bytes']} (a truncated or "
                         f"altered file)")
    array: np.memmap[Any, Any] = np.load(path, mmap_mode="r", allow_pickle=False)
    if list(array.shape) != info["shape"] or str(array.dtype) != info["dtype"]:
        raise ValueError(f"{name} holds {array.dtype} {list(array.shape)}, the manifest says "
                         f"{info['dtype']} {info['shape']}")
    stamp = (str(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, info["crc32"])
    if not (memo and stamp in _VERIFIED):
        crc = _crc32(array)
        if crc != info["crc32"]:
            raise ValueError(f"{name} fails its checksum (CRC-32 {crc:08x}, the manifest says "
                             f"{info['crc32']:08x}): its data changed after it was written")
        _VERIFIED.add(stamp)
    return array


def _file_of(array: np.memmap[Any, Any]) -> str | None:
    """The file behind a memmap, as a str (numpy 2 gives a Path, its stubs
    say str), or None for one mapped from an open file object."""
    return os.fspath(array.filename) if array.filename else None


def _crc32(array: npt.NDArray[Any]) -> int:
    """CRC-32 of an array's data bytes, in chunks (zlib releases the GIL)."""
    flat = np.ravel(array, order="K").view(np.uint8) if array.size else b""
    crc = 0
    for start in range(0, len(flat), _CHUNK):
        # numpy declares its buffer protocol to type checkers for Python 3.12+ only.
        crc = zlib.crc32(flat[start:start + _CHUNK], crc)  # type: ignore[arg-type]
    return crc


def _allocate(path: Path, shape: Iterable[int], dtype: npt.DTypeLike) -> np.memmap[Any, Any]:
    """A .npy file at `path` whose data blocks are reserved on disk before
    it is mapped, open as a writable memmap. A written page of a sparse map
    that the disk cannot hold kills the process (SIGBUS); a reserved one
    cannot fail, and a full disk raises OSError(ENOSPC) here instead."""
    dtype, shape = np.dtype(dtype), tuple(int(n) for n in shape)
    with open(path, "xb") as f:
        _write_header(f, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
        offset = f.tell()
        size = offset + math.prod(shape) * dtype.itemsize
        try:
            _reserve(f, offset, size)
        except OSError as error:
            raise OSError(error.errno, f"{error.strerror} (reserving {format_size(size)} for a cache array)",
                          str(path.parent)) from error
    return np.memmap(path, dtype=dtype, mode="r+", offset=offset, shape=shape)


def _write_header(f: IO[bytes], header: dict[str, Any]) -> None:
    try:
        np.lib.format.write_array_header_1_0(f, header)
    except ValueError:  # too large for format 1.0 (millions of dimensions)
        np.lib.format.write_array_header_2_0(f, header)


def _write_npy(f: IO[bytes], array: npt.NDArray[Any]) -> None:
    """np.save of a C-contiguous array, but through f.write: numpy's own
    writer (ndarray.tofile) reports a full disk without its errno."""
    _write_header(f, np.lib.format.header_data_from_array_1_0(array))
    data = np.ravel(array, order="K").view(np.uint8) if array.size else b""
    for start in range(0, len(data), _CHUNK):
        f.write(data[start:start + _CHUNK])  # type: ignore[arg-type]  # as in _crc32


def _reserve(f: IO[bytes], start: int, size: int) -> None:
    if hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(f.fileno(), 0, size)
            return
        except OSError as error:
            if error.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
    # Nothing can reserve space here (macOS, some network file systems):
    # write the zeros, which fails with ENOSPC where the map would not.
    f.seek(start)
    zeros = bytes(min(_CHUNK, size - start))
    for offset in range(start, size, _CHUNK):
        f.write(zeros[:min(_CHUNK, size - offset)])
    f.flush()


def _fsync_file(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# One lock object per lock file in this process while any thread holds or
# waits for it, so that the entry lock is reentrant across Cache objects of
# one root (filelock counts holds per object and thread) and exclusive
# between threads and processes; {path: [lock, its holders and waiters]}.
# An entry goes once nobody holds or waits for its lock: kept for good, one
# per entry ever locked, they grew without bound in a long-lived process
# (about 6 KB per model screened).
_GUARD = threading.Lock()
_PROCESS_LOCKS: dict[Path, list[Any]] = {}
# new_array() file name -> (lock file, the entry lock it holds)
_ARRAY_LOCKS: dict[str, tuple[Path, FileLock]] = {}


def _hold_lock(path: Path, *, timeout: float = -1, blocking: bool = True) -> FileLock:
    """The process's lock object of `path`, acquired (filelock's Timeout
    when not got, and then nothing is held) and counted as used until
    _drop_lock."""
    with _GUARD:
        users = _PROCESS_LOCKS.get(path)
        if users is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            users = _PROCESS_LOCKS[path] = [FileLock(path), 0]
        users[1] += 1
        lock: FileLock = users[0]
    try:
        lock.acquire(timeout=timeout, blocking=blocking)
    except BaseException:
        _drop_lock(path, lock, held=False)
        raise
    return lock


def _drop_lock(path: Path, lock: FileLock, *, held: bool = True) -> None:
    """Release one hold of `lock` (when `held`) and end one use of it."""
    try:
        if held:
            lock.release()
    finally:
        with _GUARD:
            users = _PROCESS_LOCKS.get(path)
            if users is not None and users[0] is lock:
                users[1] -= 1
                if not users[1]:
                    del _PROCESS_LOCKS[path]


def _release_array(filename: str) -> None:
    with _GUARD:
        taken = _ARRAY_LOCKS.pop(filename, None)
    if taken is not None:
        _drop_lock(*taken)


def _after_fork() -> None:
    # A forked child holds none of its parent's locks, and must not wait on
    # a guard another parent thread held at the fork.
    global _GUARD
    _GUARD = threading.Lock()
    _PROCESS_LOCKS.clear()
    _ARRAY_LOCKS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
