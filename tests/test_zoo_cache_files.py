"""ped_fast.zoo._files: atomic files and folders, the temporary-name
scheme, and the lock-tested sweep of temporaries."""
import json
import math
import multiprocessing
import os
import signal
import threading

import pytest
from filelock import FileLock

from ped_fast.zoo import _files
from ped_fast.zoo._files import (atomic_directory, atomic_write, atomic_write_json, atomic_write_text,
                                 remove_temporaries, sweep_temporaries, temporary_name, temporary_target)


def test_temporary_names_map_back_to_their_final_name():
    name = temporary_name("k1.features.npy")
    assert name.startswith(".tmp-") and name != temporary_name("k1.features.npy")
    assert temporary_target(name) == "k1.features.npy"
    for other in ("k1.json", ".tmp-k1.json", ".hidden", ".tmp-host-123-abcd1234-k.npy"):
        assert temporary_target(other) is None


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "a.json"
    atomic_write_text(target, "old")
    atomic_write_json(target, {"b": float("nan"), "a": [1, 2]})
    text = target.read_text()
    assert text.index('"a"') < text.index('"b"') and text.endswith("\n")
    assert math.isnan(json.loads(text)["b"])
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_atomic_write_failure_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "a.bin"
    atomic_write(target, lambda f: f.write(b"old"))

    def fail(f):
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, fail)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "rename-aside"])
def test_atomic_directory_creates_replaces_and_cleans_up(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(_files, "_RENAMEAT2", None)
    target = tmp_path / "models" / "m"
    with atomic_directory(target) as tmp:
        (tmp / "v").write_text("1")
        (tmp / "only-in-1").write_text("x")
    with atomic_directory(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".tmp-")
        (tmp / "v").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["v"] and (target / "v").read_text() == "2"
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "v").write_text("3")
            raise RuntimeError("boom")
    assert (target / "v").read_text() == "2"
    assert [p.name for p in target.parent.iterdir()] == ["m"]


def test_atomic_directory_is_never_missing_while_replaced(tmp_path):
    """The old atomic_directory (models.py) removed the folder, then renamed
    the new one in: a reader could find it missing."""
    if _files._RENAMEAT2 is None:
        pytest.skip("no renameat2 on this platform: the documented guarantee there allows a brief window")
    target = tmp_path / "m"
    with atomic_directory(target) as tmp:
        (tmp / "a").write_text("0" * 100_000)
    seen, stop = [], threading.Event()

    def look():
        while not stop.is_set():
            seen.append(target.is_dir())

    reader = threading.Thread(target=look)
    reader.start()
    try:
        for version in range(1, 100):
            with atomic_directory(target) as tmp:
                for name in "abcdefgh":
                    (tmp / name).write_text(str(version) * 100_000)
    finally:
        stop.set()
        reader.join()
    assert seen and all(seen)
    assert sorted(os.listdir(target)) == list("abcdefgh") and (target / "h").read_text()[:2] == "99"


def _hold(lock_path, ready):
    lock = FileLock(lock_path)  # referenced until the process dies: a collected lock is released
    lock.acquire()
    ready.set()
    signal.pause()


def test_sweep_removes_only_temporaries_no_live_writer_holds(tmp_path):
    folder = tmp_path / "features"
    folder.mkdir()
    locks = tmp_path / "locks"
    held_by_child = folder / temporary_name("k1.x.npy")
    held_here = folder / temporary_name("k2.x.npy")
    dead = folder / temporary_name("k3.x.npy")
    dead_dir = folder / temporary_name("k3.dir")
    unmapped = folder / temporary_name("k4.x.npy")
    for path in (held_by_child, held_here, dead, unmapped):
        path.write_bytes(b"partial")
    dead_dir.mkdir()
    (dead_dir / "f").write_text("x")
    entry = folder / "k3.json"
    entry.write_text("{}")

    def lock_of(final):
        key = final.split(".")[0]
        return None if key == "k4" else locks / f"{key}.lock"

    locks.mkdir()
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    child = context.Process(target=_hold, args=(locks / "k1.lock", ready))
    child.start()
    try:
        assert ready.wait(60)
        with FileLock(locks / "k2.lock"):  # this process: a live writer too
            removed = sweep_temporaries(folder, lock_of)
        assert sorted(removed) == sorted([dead, dead_dir])
        assert held_by_child.exists() and held_here.exists() and unmapped.exists() and entry.exists()
        os.kill(child.pid, signal.SIGKILL)  # the writer dies: its lock goes with it
        child.join()
        assert sorted(sweep_temporaries(folder, lock_of)) == sorted([held_by_child, held_here])
    finally:
        if child.is_alive():
            child.kill()
            child.join()
    assert sorted(p.name for p in folder.iterdir()) == sorted(["k3.json", unmapped.name])


def test_remove_temporaries_filters_by_final_name(tmp_path):
    keep, drop = tmp_path / temporary_name("a"), tmp_path / temporary_name("b")
    for path in (keep, drop):
        path.write_text("x")
    assert remove_temporaries(tmp_path, match=lambda final: final == "b") == [drop]
    assert keep.exists() and not drop.exists()
