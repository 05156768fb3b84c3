"""Cache.lock between processes: an entry is computed once, a non-blocking
attempt reports a busy entry, a dead writer's lock is free, and the sweep
keeps a live writer's temporaries on another process's say-so."""
import importlib
import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ped_fast.zoo.cache import Cache

cache_module = importlib.import_module("ped_fast.zoo.cache")

# fork: the children start at once (spawn re-imports torch through ped_fast.zoo);
# each still takes its own locks, as a second terminal or a Ray worker would.
CONTEXT = multiprocessing.get_context("fork")


def _compute_once(root, log, start):
    """What a stage does with the lock: take it, read the entry if another
    process finished it meanwhile, else compute and write it."""
    cache = Cache(root)
    start.wait(60)
    with cache.lock("features", "k") as got:
        assert got
        entry = cache.get("features", "k")
        if entry is None:
            with open(log, "a") as f:
                f.write(f"{os.getpid()}\n")
            array = cache.new_array("features", "k", "features", (64, 8), np.float32)
            time.sleep(0.5)  # long enough for the other process to be waiting
            array[:] = 3.0
            entry = cache.put("features", "k", {"by": os.getpid()}, {"features": array})
    return float(entry.arrays["features"].sum()), entry.meta["by"]


def _compute_once_in_child(root, log, start, out):
    out.put(_compute_once(root, log, start))


def test_two_processes_compute_an_entry_once_and_both_read_it(tmp_path):
    log = tmp_path / "computed.log"
    start, out = CONTEXT.Event(), CONTEXT.Queue()
    children = [CONTEXT.Process(target=_compute_once_in_child, args=(tmp_path / "c", log, start, out))
                for _ in range(2)]
    for child in children:
        child.start()
    start.set()
    results = [out.get(timeout=120) for _ in children]
    for child in children:
        child.join(60)
        assert child.exitcode == 0
    assert len(log.read_text().split()) == 1  # computed exactly once
    assert results[0] == results[1] == (64 * 8 * 3.0, int(log.read_text()))
    assert sorted(p.name for p in (tmp_path / "c" / "features").iterdir()) == ["k.features.npy", "k.json"]


def _hold(root, kind, key, ready, release, with_array):
    cache = Cache(root)
    with cache.lock(kind, key):
        array = cache.new_array(kind, key, "x", (4, 4), np.float32) if with_array else None
        ready.put(array.filename if with_array else "")
        release.wait(120)
        if with_array:
            cache.put(kind, key, {}, {"x": array})


def test_non_blocking_attempt_reports_a_busy_entry_and_timeout_gives_up(tmp_path):
    ready, release = CONTEXT.Queue(), CONTEXT.Event()
    holder = CONTEXT.Process(target=_hold, args=(tmp_path, "score", "k", ready, release, False))
    holder.start()
    try:
        ready.get(timeout=60)
        cache = Cache(tmp_path)
        with cache.lock("score", "k", blocking=False) as got:
            assert got is False
        began = time.perf_counter()
        with cache.lock("score", "k", timeout=0.3) as got:
            assert got is False
        assert time.perf_counter() - began >= 0.3
        with cache.lock("score", "other", blocking=False) as got:  # other entries are free
            assert got is True
        release.set()
        with cache.lock("score", "k", timeout=60) as got:
            assert got is True
    finally:
        release.set()
        holder.join(60)
    assert holder.exitcode == 0


def test_a_killed_writers_lock_is_free_and_its_temporary_is_swept(tmp_path):
    ready, release = CONTEXT.Queue(), CONTEXT.Event()
    writer = CONTEXT.Process(target=_hold, args=(tmp_path, "features", "k", ready, release, True))
    writer.start()
    try:
        temporary = Path(ready.get(timeout=60))
        cache = Cache(tmp_path)
        assert cache.sweep() == [] and temporary.exists()  # a live writer's work
        with cache.lock("features", "k", blocking=False) as got:
            assert got is False
        os.kill(writer.pid, signal.SIGKILL)
        writer.join(60)
        assert cache.sweep() == [temporary]
        with cache.lock("features", "k", blocking=False) as got:
            assert got is True
        assert cache.get("features", "k") is None
    finally:
        if writer.is_alive():
            writer.kill()
            writer.join()


def test_the_lock_is_reentrant_in_a_thread_and_rejects_bad_arguments(tmp_path):
    cache = Cache(tmp_path)
    with cache.lock("features", "k") as outer:
        with Cache(tmp_path).lock("features", "k", blocking=False) as inner:  # another Cache object, same root
            assert outer and inner
        array = cache.new_array("features", "k", "x", (2,), np.float32)
        cache.put("features", "k", {}, {"x": array})
    for key in ("a.b", "../k", "", None):
        with pytest.raises(ValueError, match="cache key must be a plain name"):
            with cache.lock("features", key):
                pass
    with pytest.raises(ValueError, match="timeout must be None or a number of seconds >= 0, got -1"):
        with cache.lock("features", "k", timeout=-1):
            pass


def test_no_lock_object_outlives_its_holders_and_waiters(tmp_path):
    """Issue 15 (noticed): the process kept one lock object per entry it
    ever locked, about 6 KB per model screened, for its whole life. Now
    only while a thread holds or waits for the lock."""
    cache = Cache(tmp_path)
    held = cache.lock_path("features", "k")
    waited = []

    def objects():  # this cache's (another test's new_array left unfinished holds its lock, as a killed writer)
        return [path for path in cache_module._PROCESS_LOCKS if tmp_path in path.parents]

    def wait():
        with Cache(tmp_path).lock("features", "k", timeout=0.2) as got:
            waited.append((got, objects()))

    with cache.lock("features", "k"):
        with Cache(tmp_path).lock("features", "k") as inner:  # reentrant: the same object
            assert inner and objects() == [held]
        waiter = threading.Thread(target=wait)
        waiter.start()
        waiter.join(60)
        assert waited == [(False, [held])]  # another thread waits on the same object, then gives up
        array = cache.new_array("features", "k", "x", (2,), np.float32)
        cache.put("features", "k", {}, {"x": array})
        assert objects() == [held]
    abandoned = cache.new_array("features", "other", "x", (2,), np.float32)
    assert objects() == [cache.lock_path("features", "other")]
    Cache.discard(abandoned)
    cache.put("score", "s", {"value": 1})
    assert objects() == []
    with Cache(tmp_path).lock("features", "k", blocking=False) as again:  # free, and taken again
        assert again
    assert objects() == []
