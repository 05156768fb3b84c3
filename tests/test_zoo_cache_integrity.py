"""A damaged cache is detected (size, shape, dtype, CRC-32, format on every
read) and the cache can be managed: entries, verify, prune, and the text
the ``ped-fast cache`` verb prints."""
import json
import multiprocessing
import os
import time
import warnings
from datetime import timedelta

import numpy as np
import pytest

from ped_fast.zoo import cache as cache_module
from ped_fast.zoo._files import temporary_name
from ped_fast.zoo.cache import (Cache, format_age, format_entries, format_problems, format_pruned, format_size,
                                parse_age)


def _features(cache, key, label, rows=100, value=1.0):
    array = np.full((rows, 8), value, np.float32)
    return cache.put("features", key, {"label": label, "model": f"timm/{label}"}, {"features": array,
                                                                                   "labels": np.arange(rows)})


def _flip_a_bit(path, offset=-5):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["bit flip", "bytes appended", "other format", "no checksum"])
def test_damage_the_old_reader_missed_is_a_miss_with_a_warning(tmp_path, damage):
    """The old get() checked only that np.load gave the manifest's shape and
    dtype: a flipped bit or appended bytes were read as data, and a manifest
    of another format was trusted."""
    cache = Cache(tmp_path)
    _features(cache, "k", "m")
    array_file, manifest = tmp_path / "features" / "k.features.npy", tmp_path / "features" / "k.json"
    if damage == "bit flip":
        _flip_a_bit(array_file)
        message = r"k\.features\.npy fails its checksum"
    elif damage == "bytes appended":
        with open(array_file, "ab") as f:
            f.write(b"\0" * 64)
        message = r"k\.features\.npy has 3392 bytes, the manifest says 3328"
    else:
        record = json.loads(manifest.read_text())
        if damage == "other format":
            record["format"] = 1
        else:
            del record["arrays"]["features"]["crc32"]
        manifest.write_text(json.dumps(record))
        message = (r"written in format 1 by another version of ped_fast \(this one reads format 2\)"
                   if damage == "other format" else "KeyError: 'crc32'")
    with pytest.warns(RuntimeWarning, match=rf"cache entry .*k\.json.*{message}.*treating it as missing"):
        assert cache.get("features", "k") is None
    if damage == "other format":
        assert not cache.has("features", "k")  # the screen's "all scored?" test recomputes it too
    _features(cache, "k", "m")  # recomputing replaces it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cache.get("features", "k").arrays["features"].sum() == 800


def test_each_file_is_checksummed_once_per_process_until_it_changes(tmp_path, monkeypatch):
    cache = Cache(tmp_path)
    _features(cache, "k", "m")  # put() reads its entry back: checked once
    calls = []
    original = cache_module._crc32
    monkeypatch.setattr(cache_module, "_crc32", lambda array: calls.append(array.shape) or original(array))
    for _ in range(3):
        assert cache.get("features", "k") is not None
    assert calls == []
    _features(cache, "k", "m", value=2.0)  # a new file: checked again
    calls.clear()
    assert cache.get("features", "k").arrays["features"][0, 0] == 2.0
    assert calls == []  # put() computed both checksums and its read-back checked them
    _flip_a_bit(tmp_path / "features" / "k.features.npy")
    with pytest.warns(RuntimeWarning, match="fails its checksum"):
        assert cache.get("features", "k") is None


def test_entries_list_kind_model_size_and_age_and_nothing_else(tmp_path):
    cache = Cache(tmp_path)
    _features(cache, "k1", "resnet")
    _features(cache, "k2", "vit", rows=10)
    cache.put("score", "s1", {"model": "resnet", "baseline": 0.5})
    cache.put("config", "c1", {"model": "timm/resnet", "data_config": {}})
    (tmp_path / "features" / temporary_name("k3.features.npy")).write_bytes(b"partial")
    np.save(tmp_path / "features" / "k4.features.npy", np.zeros(3))  # no manifest: not an entry
    (tmp_path / "features" / "notes.v2.json").write_text("{}")  # no key has a dot: not a manifest
    records = cache.entries()
    assert [(r.kind, r.key, r.label, r.model) for r in records] == [
        ("config", "c1", None, "timm/resnet"), ("features", "k1", "resnet", "timm/resnet"),
        ("features", "k2", "vit", "timm/vit"), ("score", "s1", None, "resnet")]
    k1 = records[1]
    assert k1.bytes == sum(path.stat().st_size for path in k1.files) and len(k1.files) == 3
    assert k1.format == 2 and abs(k1.created - time.time()) < 60
    assert [r.key for r in cache.entries("features")] == ["k1", "k2"]
    assert Cache(tmp_path / "absent").entries() == []
    table = format_entries(records, now=k1.created + 7200)
    assert "features   resnet" in table and "2 h" in table
    assert "features: 2 entries" in table and table.splitlines()[-1].startswith("total: 4 entries, ")


def test_verify_reports_every_damaged_entry_and_stray_file(tmp_path):
    cache = Cache(tmp_path)
    for key in ("ok", "flipped", "missing", "old"):
        _features(cache, key, key)
    assert cache.verify() == [] and format_problems([]) == "every entry is intact"
    folder = tmp_path / "features"
    _flip_a_bit(folder / "flipped.features.npy")
    (folder / "missing.labels.npy").unlink()
    record = json.loads((folder / "old.json").read_text())
    record["format"] = 1
    (folder / "old.json").write_text(json.dumps(record))
    np.save(folder / "stray.features.npy", np.zeros(3))
    (folder / "broken.json").write_text("{")
    problems = cache.verify()
    found = {problem.key: str(problem) for problem in problems}
    assert sorted(found) == ["broken", "flipped", "missing", "old", "stray"]
    assert "fails its checksum" in found["flipped"] and "FileNotFoundError" in found["missing"]
    assert "format 1" in found["old"] and "belongs to no entry" in found["stray"]
    assert "JSONDecodeError" in found["broken"]
    assert format_problems(problems).count("\n") == 4
    # The memo of get() does not hide damage from verify: it reads everything.
    assert cache.verify("score") == []


def test_prune_by_model_kind_age_and_damage_with_dry_run(tmp_path):
    cache = Cache(tmp_path)
    _features(cache, "k1", "resnet-a")
    _features(cache, "k2", "resnet-b")
    _features(cache, "k3", "vit")
    cache.put("score", "s1", {"model": "vit"})
    old = time.time() - 40 * 86400
    os.utime(tmp_path / "features" / "k3.json", (old, old))
    with pytest.raises(ValueError, match="prune needs at least one of model, kind, older_than or damaged"):
        cache.prune()
    with pytest.raises(ValueError, match="older_than must be a number of seconds >= 0 or a timedelta, got '3'"):
        cache.prune(older_than="3")

    planned = cache.prune(model="resnet*", dry_run=True)
    assert [r.key for r in planned.removed] == ["k1", "k2"] and planned.bytes > 0
    assert "would remove features/k1 resnet-a" in format_pruned(planned, dry_run=True)
    assert len(cache.entries()) == 4  # nothing removed

    assert [r.key for r in cache.prune(older_than=timedelta(days=30)).removed] == ["k3"]
    assert not list((tmp_path / "features").glob("k3*"))
    assert [r.key for r in cache.prune(model="vit", kind="score").removed] == ["s1"]
    _flip_a_bit(tmp_path / "features" / "k2.features.npy")
    pruned = cache.prune(damaged=True)
    assert [r.key for r in pruned.removed] == ["k2"]
    assert format_pruned(pruned).splitlines()[-1].startswith("removed 1 entry, ")
    assert [r.key for r in cache.entries()] == ["k1"] and cache.verify() == []


def _hold_entry(root, ready, release):
    cache = Cache(root)
    with cache.lock("features", "k1"):
        ready.set()
        release.wait(60)


def test_prune_leaves_an_entry_another_process_is_writing(tmp_path):
    cache = Cache(tmp_path)
    _features(cache, "k1", "m")
    _features(cache, "k2", "m")
    context = multiprocessing.get_context("fork")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_entry, args=(tmp_path, ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        pruned = cache.prune(model="m")
    finally:
        release.set()
        holder.join(60)
    assert [r.key for r in pruned.removed] == ["k2"] and [r.key for r in pruned.busy] == ["k1"]
    assert "skipped features/k1" in format_pruned(pruned)
    assert cache.get("features", "k1") is not None


def test_text_helpers():
    assert (format_size(999), format_size(1234567), format_size(6.1e11)) == ("999 B", "1.2 MB", "610.0 GB")
    assert (format_age(40), format_age(720), format_age(5 * 3600), format_age(3 * 86400)) == \
        ("40 s", "12 min", "5 h", "3 d")
    assert parse_age("30d") == 30 * 86400 and parse_age("90min") == 5400 and parse_age("1.5h") == 5400
    assert parse_age(" 2w ") == 14 * 86400 and parse_age("45s") == 45
    for bad in ("30", "d", "-1d", "3 days"):
        with pytest.raises(ValueError, match=r"--older-than must be a number with a unit s, min, h, d or w "
                                             r"\(e.g. 30d\), got"):
            parse_age(bad)
