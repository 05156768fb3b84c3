"""Every cache key covers what its entry depends on (docs/screening.md):
with one shared cache, changing any input gives fresh numbers, never the
entry of the old input.

A key that misses an input goes unnoticed by tests that use one input per
cache: the entry of the other input is returned, with cached=True and the
right shape. So each test here fills one cache with one input, changes
that input, and checks the result against a computation without the cache.
"""
import os

import numpy as np
import pytest
import timm
from PIL import Image

import ped_fast
from ped_fast.zoo import extract, image_files, image_folder, load_model, reference_stats, screen
from zoo_helpers import SMALL_CONFIG, small_checkpoint, timm_features

# Scores computed by the screen and by ped_score on the same arrays: the
# same float64 code, the screen's reference moments streamed (~1e-15
# relative), amplified by PED's steps (tests/test_zoo_scorers.py).
SCORE_TOLERANCE = 1e-10


def write_bmp_folder(root, *, seed, classes=2, per_class=4, size=32):
    """ROOT/class{c}/{i}.bmp. Uncompressed, so every file has the same
    size whatever its pixels: a changed image is told apart by its
    modification time and content only, not by its size."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            write_bmp(root / f"class{c}" / f"{i}.bmp", rng, size)
    return root


def write_bmp(path, rng, size=32):
    pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="BMP")


def change_one_image(path, seed):
    """Rewrite `path` with other pixels (same size in bytes), with a later
    modification time, as an edit a second later would leave it."""
    before = os.stat(path)
    write_bmp(path, np.random.default_rng(seed))
    assert os.stat(path).st_size == before.st_size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))


def files_of(images):
    return [images.file(i) for i in range(len(images))]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    return f"m:test_resnet={small_checkpoint(root / 'm', 'test_resnet', 3)}"


def moments(features):
    features = np.asarray(features, dtype=np.float64)
    return features.mean(axis=0), features.std(axis=0)


def check_features(result, folder, checkpoint, config=SMALL_CONFIG):
    """`result` holds the features of the images now under `folder`."""
    model = load_model(checkpoint).model
    np.testing.assert_array_equal(result.features, timm_features(model, files_of(image_folder(folder)), config))


def check_stats(stats, folder, checkpoint, config=SMALL_CONFIG):
    """`stats` are the moments of the features of the images now under
    `folder`: float64 streamed against numpy's two-pass moments of the same
    float32 features (~1e-12 relative)."""
    model = load_model(checkpoint).model
    mean, std = moments(timm_features(model, files_of(image_files(folder)), config))
    np.testing.assert_allclose(stats.mean, mean, rtol=1e-9, atol=1e-9 * np.abs(mean).max())
    np.testing.assert_allclose(stats.std, std, rtol=1e-9, atol=1e-9 * std.max())


def test_features_key_covers_the_image_set(checkpoint, tmp_path):
    """Two folders with the same layout and file names but other images,
    then one image of a folder rewritten (same size in bytes): each
    extraction with the shared cache is fresh and gives that folder's
    features."""
    cache = tmp_path / "cache"
    first, second = write_bmp_folder(tmp_path / "first", seed=0), write_bmp_folder(tmp_path / "second", seed=1)
    a = extract(checkpoint, first, cache=cache, batch_size=8, progress=False)["m"]
    b = extract(checkpoint, second, cache=cache, batch_size=8, progress=False)["m"]
    assert not a.cached and not b.cached and a.key != b.key
    check_features(b, second, checkpoint)
    assert not np.array_equal(a.features, b.features)
    assert extract(checkpoint, first, cache=cache, progress=False)["m"].cached  # the cache is used at all

    change_one_image(first / "class1" / "2.bmp", seed=7)
    changed = extract(checkpoint, first, cache=cache, batch_size=8, progress=False)["m"]
    assert not changed.cached and changed.key != a.key
    check_features(changed, first, checkpoint)
    row = image_folder(first).paths.index("class1/2.bmp")
    assert not np.array_equal(changed.features[row], a.features[row])


def test_reference_key_covers_the_image_set(checkpoint, tmp_path):
    """The same for reference statistics (a reference set: any layout)."""
    cache = tmp_path / "cache"
    first, second = write_bmp_folder(tmp_path / "first", seed=2), write_bmp_folder(tmp_path / "second", seed=3)
    a = reference_stats(checkpoint, first, cache=cache, batch_size=8, progress=False)["m"]
    b = reference_stats(checkpoint, second, cache=cache, batch_size=8, progress=False)["m"]
    assert not a.cached and not b.cached and a.key != b.key
    check_stats(b, second, checkpoint)
    assert reference_stats(checkpoint, first, cache=cache, progress=False)["m"].cached

    change_one_image(first / "class0" / "1.bmp", seed=8)
    changed = reference_stats(checkpoint, first, cache=cache, batch_size=8, progress=False)["m"]
    assert not changed.cached and changed.key != a.key
    check_stats(changed, first, checkpoint)
    assert not np.allclose(changed.mean, a.mean, rtol=1e-6, atol=0)


def test_keys_cover_the_data_config(tmp_path):
    """The same architecture and weights identity with two data configs:
    timm gives each pretrained tag of an architecture its own config
    (mobilenetv4_conv_small.e1200_r224_in1k: 224 x 224, crop 0.875;
    .e3600_r256_in1k: 256 x 256, crop 0.95), and with random weights both
    tags have the identity "random:seed=0". The stage keys name the
    architecture, not the tag (the tag changes no number but through the
    config), so only the data config tells their features, and their
    reference statistics, apart.

    Why not a hub-layout checkpoint with an edited input size: its
    config.json is hashed into the weights identity, so the data config
    would not be the only difference between the two."""
    data, reference = (write_bmp_folder(tmp_path / name, seed=seed, per_class=2)
                       for name, seed in (("data", 4), ("reference", 5)))
    options = dict(cache=tmp_path / "cache", pretrained=False, batch_size=8, progress=False)
    first, second = "mobilenetv4_conv_small.e1200_r224_in1k", "mobilenetv4_conv_small.e3600_r256_in1k"
    a = extract(first, data, **options)[first]
    a_stats = reference_stats(first, reference, **options)[first]
    b = extract(second, data, **options)[second]
    b_stats = reference_stats(second, reference, **options)[second]
    assert a.identity == b.identity == "random:seed=0"
    assert (tuple(a.data_config["input_size"]), tuple(b.data_config["input_size"])) == ((3, 224, 224), (3, 256, 256))
    assert not b.cached and not b_stats.cached and b.key != a.key and b_stats.key != a_stats.key
    model = load_model(second, pretrained=False).model
    config = timm.data.resolve_model_data_config(model)
    np.testing.assert_array_equal(b.features, timm_features(model, files_of(image_folder(data)), config))
    mean, std = moments(timm_features(model, files_of(image_files(reference)), config))
    np.testing.assert_allclose(b_stats.mean, mean, rtol=1e-9, atol=1e-9 * np.abs(mean).max())
    np.testing.assert_allclose(b_stats.std, std, rtol=1e-9, atol=1e-9 * std.max())


def write_features(folder, x, labels, reference):
    folder.mkdir(exist_ok=True)
    np.save(folder / "labels.npy", labels)
    np.save(folder / "m.npy", x)
    np.save(folder / "m.reference.npy", reference)


def screened(folder, cache, **options):
    row = screen(features=folder, scorers="sfda,logme", cache=cache, progress=False, **options)["models"][0]
    assert row["error"] is None
    return row


def check_scores(row, x, labels, **options):
    for scorer in ("sfda", "logme"):
        direct = ped_fast.ped_score(x, labels, scorer, return_baseline=True, **options)
        assert row["scores"][scorer]["baseline"] == pytest.approx(direct.baseline, rel=SCORE_TOLERANCE)
        assert row["scores"][scorer]["ped"] == pytest.approx(direct.ped, rel=SCORE_TOLERANCE)


def test_score_key_covers_reference_reduce_and_labels(tmp_path):
    """One features folder screened, with one cache, against its reference
    file, then with rescale 'self', then reduced to 3 principal
    components, then with other labels: each time scores of that input."""
    rng = np.random.default_rng(11)
    labels = np.arange(60) % 3
    x = 0.8 * rng.standard_normal((3, 6))[labels] + rng.standard_normal((60, 6))
    reference = 3.0 * rng.standard_normal((50, 6)) + 1.0
    folder, cache = tmp_path / "f", tmp_path / "c"
    write_features(folder, x, labels, reference)

    with_file = screened(folder, cache)
    check_scores(with_file, x, labels, reference=(reference.mean(0), reference.std(0)))
    with_self = screened(folder, cache, reference="self")
    check_scores(with_self, x, labels, rescale="self")
    assert with_self["scores"]["sfda"]["ped"] != pytest.approx(with_file["scores"]["sfda"]["ped"], rel=1e-6)
    reduced = screened(folder, cache, reference="self", reduce="pca:3")
    check_scores(reduced, x, labels, rescale="self", reduce="pca:3")
    assert reduced["scores"]["sfda"]["baseline"] != pytest.approx(with_self["scores"]["sfda"]["baseline"], rel=1e-6)
    assert screened(folder, cache, reference="self")["cached"] == ["scores"]

    other = rng.permutation(labels)  # another partition of the samples, not a renaming of the classes
    np.save(folder / "labels.npy", other)
    stat = os.stat(folder / "labels.npy")
    os.utime(folder / "labels.npy", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    relabelled = screened(folder, cache, reference="self")
    assert relabelled["cached"] == []
    check_scores(relabelled, x, other, rescale="self")
    assert relabelled["scores"]["sfda"]["baseline"] != pytest.approx(with_self["scores"]["sfda"]["baseline"], rel=1e-6)
