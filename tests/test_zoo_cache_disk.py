"""A full disk is an error, not a crash: the cache reserves an array's
space before mapping it, so ENOSPC is an OSError where it happens, and a
failed write leaves no temporary, no stray array and no entry."""
import errno
import gc
import os
import subprocess
import sys
import textwrap
import threading
import uuid

import numpy as np
import pytest

from ped_fast.zoo import cache as cache_module
from ped_fast.zoo.cache import Cache
from zoo_helpers import write_image_folder


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs: needs root and a kernel that lets this process mount
    (as on the CI machines); skipped otherwise."""
    folder = tmp_path / "small"
    folder.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)], capture_output=True,
                              text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        pytest.skip(f"cannot run mount to make a small file system: {error}")
    if done.returncode != 0:
        pytest.skip(f"mounting a 2 MiB tmpfs is not permitted here: {done.stderr.strip()}")
    try:
        yield folder
    finally:
        gc.collect()  # memory maps of its files keep it busy
        if subprocess.run(["umount", str(folder)], capture_output=True, timeout=30).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], check=False, timeout=30)


def _left(folder):
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*")
                  if path.is_file() and ".locks" not in path.parts)


def test_filling_an_array_on_a_full_disk_raises_enospc_instead_of_sigbus(small_disk):
    """The old cache mapped a sparse file: writing its pages on a full disk
    killed the process with SIGBUS (exit -7), leaving the temporary."""
    script = textwrap.dedent(f"""
        import numpy as np
        from ped_fast.zoo.cache import Cache
        cache = Cache({str(small_disk)!r})
        array = cache.new_array("features", "k", "features", (1024, 1024), np.float32)  # 4 MiB > 2 MiB
        array[:] = 1.0
        cache.put("features", "k", {{}}, {{"features": array}})
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
    assert "OSError: [Errno 28] No space left on device (reserving 4.2 MB for a cache array)" in done.stderr
    assert _left(small_disk) == []


def test_a_put_too_large_for_the_disk_leaves_nothing(small_disk):
    cache = Cache(small_disk)
    cache.put("features", "small", {}, {"x": np.ones(1000, np.float32)})
    with pytest.raises(OSError) as failure:
        cache.put("features", "k", {}, {"a": np.ones(1000, np.float32), "b": np.ones((1024, 1024), np.float32)})
    assert failure.value.errno == errno.ENOSPC
    assert _left(small_disk) == ["features/small.json", "features/small.x.npy"]
    with pytest.raises(OSError) as failure:
        cache.new_array("features", "k", "x", (1024, 1024), np.float32)
    assert failure.value.errno == errno.ENOSPC
    assert _left(small_disk) == ["features/small.json", "features/small.x.npy"]
    assert cache.get("features", "small") is not None


def test_without_fallocate_the_zeros_are_written_and_a_full_disk_still_raises(small_disk, monkeypatch):
    def unsupported(fd, offset, length):
        raise OSError(errno.EOPNOTSUPP, "not supported")

    monkeypatch.setattr(os, "posix_fallocate", unsupported)
    cache = Cache(small_disk)
    with pytest.raises(OSError) as failure:
        cache.new_array("features", "k", "x", (1024, 1024), np.float32)
    assert failure.value.errno == errno.ENOSPC
    assert _left(small_disk) == []
    array = cache.new_array("features", "k", "x", (100, 10), np.float32)  # fits: the header must survive
    array[:] = 2.0
    assert cache.put("features", "k", {}, {"x": array}).arrays["x"].sum() == 2000.0


def _lock_is_free(cache, kind, key):
    result = []

    def attempt():  # another thread: a lock this thread holds is reentrant for it
        with cache.lock(kind, key, blocking=False) as got:
            result.append(got)

    thread = threading.Thread(target=attempt)
    thread.start()
    thread.join()
    return result[0]


def test_enospc_from_fallocate_is_an_oserror_naming_the_folder(tmp_path, monkeypatch):
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    cache = Cache(tmp_path)
    with pytest.raises(OSError, match=r"No space left on device \(reserving 4\.2 MB for a cache array\): "
                                      r".*features") as failure:
        cache.new_array("features", "k", "x", (1024, 1024), np.float32)
    assert failure.value.errno == errno.ENOSPC
    assert list((tmp_path / "features").iterdir()) == []
    assert _lock_is_free(cache, "features", "k")


@pytest.mark.parametrize("failure", ["full disk", "meta not JSON"])
def test_a_failed_manifest_write_leaves_no_array_temporary_or_entry(tmp_path, monkeypatch, failure):
    """The old put() renamed the arrays into place, then failed on the
    manifest: the array files stayed, belonging to no entry, and the
    streamed temporary's clean-up was left to a caller that (extraction)
    had already let go of it."""
    cache = Cache(tmp_path)
    cache.put("features", "k", {"old": True}, {"x": np.zeros(4, np.float32)})
    streamed = cache.new_array("features", "k", "x", (100, 10), np.float32)
    meta = {"new": True}
    if failure == "full disk":
        def full(path, value):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))

        monkeypatch.setattr(cache_module, "atomic_write_json", full)
    else:
        meta["oops"] = object()
    with pytest.raises(OSError if failure == "full disk" else TypeError):
        cache.put("features", "k", meta, {"x": streamed, "labels": np.arange(100)})
    # The old entry went too: its array had been replaced by the new one.
    assert list((tmp_path / "features").iterdir()) == []
    assert cache.get("features", "k") is None
    assert _lock_is_free(cache, "features", "k")
    Cache.discard(streamed)  # what extraction's clean-up may do afterwards: harmless
    assert _lock_is_free(cache, "features", "k")


def test_a_rejected_put_discards_its_streamed_temporaries(tmp_path):
    cache = Cache(tmp_path)
    streamed = cache.new_array("features", "k", "x", (10, 10), np.float32)
    with pytest.raises(ValueError, match="cache array name must be a plain name"):
        cache.put("features", "k", {}, {"x": streamed, ".bad": np.zeros(3)})
    assert list((tmp_path / "features").iterdir()) == []
    assert _lock_is_free(cache, "features", "k")


def test_arrays_round_trip_when_the_space_is_reserved(tmp_path):
    cache = Cache(tmp_path)
    array = cache.new_array("features", uuid.uuid4().hex, "x", (3, 5), np.float64)
    assert os.stat(array.filename).st_blocks * 512 >= array.nbytes  # allocated, not sparse
    array[:] = np.arange(15).reshape(3, 5)
    key = os.path.basename(array.filename).split("-", 2)[2].split(".")[0]
    np.testing.assert_array_equal(cache.put("features", key, {}, {"x": array}).arrays["x"],
                                  np.arange(15).reshape(3, 5))


def test_a_screen_on_a_full_disk_reports_enospc_and_leaves_no_temporary(small_disk, tmp_path):
    """Issue 14: the screen died of SIGBUS (exit -7) with no message, no
    report and its temporaries left behind. 300 images with the exact
    predictions kept (LEEP; 1.2 MB of logits per model): the first model's
    entries fit the 2 MiB disk, the second's do not."""
    from zoo_helpers import small_checkpoint

    write_image_folder(tmp_path / "data", classes=3, per_class=100, size=32)
    write_image_folder(tmp_path / "reference", classes=2, per_class=10, size=32, seed=5, labelled=False)
    specs = ",".join(f"{name}:{arch}={small_checkpoint(tmp_path / name, arch, seed)}"
                     for name, arch, seed in (("m1", "test_resnet", 1), ("m2", "test_convnext", 2)))
    done = subprocess.run([sys.executable, "-m", "ped_fast", "screen", "--models", specs,
                           "--data", str(tmp_path / "data"), "--reference", str(tmp_path / "reference"),
                           "--scorers", "sfda,leep", "--predictions", "exact", "--cache", str(small_disk),
                           "--out", str(tmp_path / "report"),
                           "--quiet"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
    assert any(line.startswith("m2 ") and "failed: OSError: [Errno 28] No space left on device" in line
               for line in done.stdout.splitlines()), done.stdout
    assert (tmp_path / "report" / "results.json").is_file()
    assert [p for p in small_disk.rglob("*") if p.name.startswith(".tmp-")] == []
    assert Cache(small_disk).verify() == []  # no array of an unfinished entry either
