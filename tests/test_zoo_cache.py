"""The screening cache (ped_fast.zoo.cache): content keys, atomic entries,
unreadable entries treated as missing, leftovers of killed writers removed."""
import warnings
from pathlib import Path

import numpy as np
import pytest

from ped_fast.zoo._files import temporary_name
from ped_fast.zoo.cache import Cache, content_key, default_root


def test_content_key_depends_on_every_part_and_not_on_dict_order():
    key = content_key("features", {"a": 1, "b": [1, 2]}, "x")
    assert key == content_key("features", {"b": (1, 2), "a": 1}, "x")
    assert key != content_key("features", {"a": 1, "b": [1, 3]}, "x")
    assert key != content_key("features", {"a": 1, "b": [1, 2]}, "y")
    assert len(key) == 32 and int(key, 16) >= 0


def test_default_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PED_FAST_CACHE", str(tmp_path / "c"))
    assert default_root() == tmp_path / "c"
    assert Cache().root == tmp_path / "c"
    monkeypatch.delenv("PED_FAST_CACHE")
    assert default_root().parts[-2:] == (".cache", "ped_fast")


def test_relative_root_is_made_absolute(tmp_path, monkeypatch):
    """With a relative root, put() did not recognise its own memory-mapped
    file (numpy reports it by absolute name), copied it and left the
    full-size temporary behind; Ray workers would also resolve it elsewhere."""
    monkeypatch.chdir(tmp_path)
    cache = Cache("relative")
    assert cache.root == tmp_path / "relative"
    streamed = cache.new_array("features", "k1", "x", (4, 2), np.float32)
    streamed[:] = 1.0
    cache.put("features", "k1", {}, {"x": streamed})
    assert sorted(p.name for p in (tmp_path / "relative" / "features").iterdir()) == ["k1.json", "k1.x.npy"]
    monkeypatch.setenv("PED_FAST_CACHE", "env-relative")
    assert default_root() == tmp_path / "env-relative"


def test_put_then_get_round_trips_arrays_and_memmaps(tmp_path):
    cache = Cache(tmp_path)
    streamed = cache.new_array("features", "k1", "x", (5, 3), np.float32)
    streamed[:] = np.arange(15, dtype=np.float32).reshape(5, 3)
    labels = np.array([0, 1, 1, 2, 0])
    assert not cache.has("features", "k1")
    entry = cache.put("features", "k1", {"n": 5}, {"x": streamed, "labels": labels})
    again = Cache(tmp_path).get("features", "k1")
    for got in (entry, again):
        assert got.meta == {"n": 5}
        np.testing.assert_array_equal(got.arrays["x"], np.arange(15).reshape(5, 3))
        np.testing.assert_array_equal(got.arrays["labels"], labels)
        assert got.arrays["x"].dtype == np.float32
    # The streamed file was moved into place, not copied: no temporary remains.
    assert not list((tmp_path / "features").glob(".tmp-*"))
    assert cache.get("features", "other") is None


def test_entry_without_manifest_does_not_exist(tmp_path):
    """A writer killed after its arrays but before its manifest leaves no entry."""
    cache = Cache(tmp_path)
    array = cache.new_array("features", "k", "x", (4, 2), np.float32)
    array[:] = 1.0
    assert cache.get("features", "k") is None
    np.save(tmp_path / "features" / "k.x.npy", np.ones((4, 2), np.float32))
    assert cache.get("features", "k") is None


@pytest.mark.parametrize("damage", ["truncate array", "bad manifest", "missing array", "shape changed"])
def test_unreadable_entry_is_a_miss_with_a_warning(tmp_path, damage):
    cache = Cache(tmp_path)
    cache.put("features", "k", {"n": 100}, {"x": np.ones((100, 8), np.float32)})
    array_file = tmp_path / "features" / "k.x.npy"
    if damage == "truncate array":
        array_file.write_bytes(array_file.read_bytes()[:200])
    elif damage == "bad manifest":
        (tmp_path / "features" / "k.json").write_text('{"format": 1, "meta"')
    elif damage == "missing array":
        array_file.unlink()
    else:
        np.save(array_file, np.ones((99, 8), np.float32))
    with pytest.warns(RuntimeWarning, match=r"k\.json cannot be read.*treating it as missing"):
        assert cache.get("features", "k") is None
    # Recomputing replaces it.
    cache.put("features", "k", {"n": 100}, {"x": np.ones((100, 8), np.float32)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cache.get("features", "k").meta == {"n": 100}


def test_failed_write_leaves_nothing_behind(tmp_path):
    cache = Cache(tmp_path)
    with pytest.raises(ValueError, match="array 'x' must hold numbers"):
        cache.put("features", "k", {}, {"x": np.array([object()])})  # np.save refuses pickles
    assert not (tmp_path / "features").exists() or list((tmp_path / "features").iterdir()) == []


def test_sweep_removes_only_temporaries_whose_entry_lock_is_free(tmp_path):
    """The old sweep trusted host name + pid: a writer in another container
    (same host name, its own pids) was taken for dead, a dead one for alive
    whenever its pid was reused. Now a temporary is stale exactly when its
    entry's lock is free."""
    cache = Cache(tmp_path)
    live = cache.new_array("features", "k2", "x", (2, 2), np.float32)  # holds k2's lock until put/discard
    folder = tmp_path / "features"
    dead = folder / temporary_name("k1.x.npy")  # its writer is gone: nobody holds k1's lock
    dead.write_bytes(b"partial")
    foreign = folder / ".tmp-otherhost-123-abcd1234-k1.x.npy"  # not a name this cache writes
    foreign.write_bytes(b"?")
    assert cache.sweep() == [dead]
    assert Path(live.filename).exists() and foreign.exists()
    cache.discard(live)
    assert not Path(live.filename).exists()
    assert not any(p.name.endswith(".lock") for p in folder.iterdir())  # locks live apart from entries
