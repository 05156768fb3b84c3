"""Streamed reference statistics (ped_fast.zoo.refstats): equal to the full
feature matrix's mean and std within 1e-9 relative (float64), for any split
into batches and any merge order; cached; refused for another dimension."""
import numpy as np
import pytest

from ped_fast.zoo import Cache, extract, reference_stats, screen, stats_of
from ped_fast.zoo import refstats as reference_module
from ped_fast.zoo.refstats import RunningMoments, load_stats_file
from zoo_helpers import small_checkpoint, write_image_folder

# Acceptance 3: streamed float64 statistics agree with the two-pass ones on
# the whole matrix to 1e-9 relative. The merge's rounding is a few ulps per
# merge (~1e-15); 1e-9 leaves room for thousands of merges, but not for the
# cancellation of a one-pass sum of squares (E[x^2] - E[x]^2 loses
# log10(offset^2 / var) = 8 digits on the data below).
RELATIVE = 1e-9


def full_stats(x):
    x = np.asarray(x, dtype=np.float64)
    return x.mean(axis=0), x.std(axis=0, ddof=0)


def assert_stats(mean, std, x):
    expected_mean, expected_std = full_stats(x)
    np.testing.assert_allclose(mean, expected_mean, rtol=RELATIVE, atol=0)
    np.testing.assert_allclose(std, expected_std, rtol=RELATIVE, atol=0)


@pytest.fixture(scope="module")
def offset_features():
    """Features far from zero relative to their spread (as post-ReLU
    features often are), float32 like extracted ones, D = 37."""
    rng = np.random.default_rng(0)
    return (1e4 + rng.standard_normal((2003, 37)) * rng.uniform(0.5, 2.0, 37)).astype(np.float32)


def test_uneven_batches_equal_the_full_matrix(offset_features):
    moments = RunningMoments()
    sizes = [1, 7, 300, 2, 1000, 1, 692]
    assert sum(sizes) == offset_features.shape[0]
    start = 0
    for size in sizes:
        moments.update(offset_features[start:start + size])
        start += size
    assert moments.count == offset_features.shape[0]
    assert_stats(moments.mean, moments.std, offset_features)


def test_partial_sums_merge_in_any_order(offset_features):
    rng = np.random.default_rng(1)
    cuts = np.sort(rng.choice(np.arange(1, offset_features.shape[0]), size=9, replace=False))
    parts = [RunningMoments().update(chunk) for chunk in np.split(offset_features, cuts)]
    for order in (range(len(parts)), reversed(range(len(parts))), rng.permutation(len(parts))):
        total = RunningMoments()
        for i in order:
            total.merge(parts[i])
        assert_stats(total.mean, total.std, offset_features)
    # Merging nothing changes nothing; an empty batch is no sample.
    total.merge(RunningMoments()).update(offset_features[:0])
    assert total.count == offset_features.shape[0]


def test_merging_other_dimensions_is_refused():
    a = RunningMoments().update(np.ones((3, 4)))
    with pytest.raises(ValueError, match="cannot merge statistics of 5 dimensions into 4"):
        a.merge(RunningMoments().update(np.ones((2, 5))))


def test_stats_of_a_matrix_streams_in_chunks(offset_features, monkeypatch):
    monkeypatch.setattr(reference_module, "_CHUNK_ROWS", 333)  # 2003 rows: 6 chunks and a partial one
    stats = stats_of(offset_features, source="x")
    assert stats.count == 2003 and stats.dim == 37
    assert_stats(stats.mean, stats.std, offset_features)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("reference")
    write_image_folder(root / "reference", classes=3, per_class=5, size=32, seed=3)
    return {"root": root, "resnet": f"test_resnet={small_checkpoint(root / 'resnet', 'test_resnet', 1)}",
            "convnext": f"test_convnext={small_checkpoint(root / 'convnext', 'test_convnext', 2)}"}


def test_reference_stats_of_a_folder_equal_its_features_stats(zoo, tmp_path):
    """Streamed over batches of 4 (15 images: 4+4+4+3), both models in one
    pass, against the mean/std of the same models' full feature matrix of
    the same images."""
    specs = [zoo["resnet"], zoo["convnext"]]
    stats = reference_stats(specs, zoo["root"] / "reference", cache=tmp_path, batch_size=4, progress=False)
    features = extract(specs, zoo["root"] / "reference", cache=tmp_path, batch_size=4, progress=False)
    assert list(stats) == list(features) == ["test_resnet-resnet", "test_convnext-convnext"]
    for label, item in stats.items():
        assert item.count == 15 and not item.cached
        assert_stats(item.mean, item.std, features[label].features)
    again = reference_stats(specs, zoo["root"] / "reference", cache=tmp_path, batch_size=4, progress=False)
    for label, item in again.items():
        assert item.cached
        np.testing.assert_array_equal(item.mean, stats[label].mean)
        np.testing.assert_array_equal(item.std, stats[label].std)


def test_cached_stats_of_another_dimension_are_refused(zoo, tmp_path):
    """A cache entry whose statistics do not fit the model's features (a
    foreign or hand-edited entry) is a clear error in that model's row."""
    write_image_folder(tmp_path / "data", classes=2, per_class=4, size=32)
    results = screen(zoo["resnet"], tmp_path / "data", zoo["root"] / "reference", cache=tmp_path / "c",
                     progress=False)
    assert results["models"][0]["error"] is None
    cache = Cache(tmp_path / "c")
    (entry_file,) = (tmp_path / "c" / "reference").glob("*.json")
    key = entry_file.stem
    cache.put("reference", key, cache.get("reference", key).meta, {"mean": np.zeros(5), "std": np.ones(5)})
    for file in (tmp_path / "c" / "score").glob("*.json"):
        file.unlink()  # force re-scoring, which reads the statistics
    results = screen(zoo["resnet"], tmp_path / "data", zoo["root"] / "reference", cache=cache, progress=False)
    error = results["models"][0]["error"]
    assert error.startswith("ValueError: reference statistics from the cache entry") and key in error
    assert "have 5 dimensions but model 'test_resnet-resnet' has 96-dimensional features" in error


def test_stats_file_errors(tmp_path):
    np.savez(tmp_path / "a.npz", mean=np.zeros(3))
    with pytest.raises(ValueError, match=r"must hold arrays 'mean' and 'std', but has no \['std'\]"):
        load_stats_file(tmp_path / "a.npz")
    np.savez(tmp_path / "b.npz", mean=np.zeros(3), std=np.ones(4))
    with pytest.raises(ValueError, match="vectors of one length"):
        load_stats_file(tmp_path / "b.npz")
    np.savez(tmp_path / "c.npz", mean=np.zeros(3), std=np.ones(3))
    with pytest.raises(ValueError, match="have 3 dimensions but model 'm' has 8-dimensional features"):
        load_stats_file(tmp_path / "c.npz").check_dim(8, "m")
