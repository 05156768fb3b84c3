"""Image folders (ped_fast.zoo.images): layout, fingerprint, bad folders, and
undecodable images skipped and counted through extraction and the screen."""
import os
import shutil

import numpy as np
import pytest

from ped_fast.zoo import extract, image_files, image_folder, screen
from zoo_helpers import small_checkpoint, write_image_folder

# Features of the same image computed in batches of different sizes: oneDNN
# may pick another convolution kernel per batch size, which changes float32
# results in the last bits (~1e-6 relative), never more.
BATCH_TOLERANCE = 1e-4


def test_labels_follow_sorted_class_folders(tmp_path):
    write_image_folder(tmp_path / "d", classes=3, per_class=2, size=8)
    os.rename(tmp_path / "d" / "class0", tmp_path / "d" / "zebra")
    (tmp_path / "d" / "class1" / ".hidden.png").write_bytes(b"x")
    (tmp_path / "d" / "class1" / "notes.txt").write_text("not an image")
    images = image_folder(tmp_path / "d")
    assert images.classes == ("class1", "class2", "zebra")
    assert images.paths == ("class1/0.png", "class1/1.png", "class2/0.png", "class2/1.png", "zebra/0.png",
                            "zebra/1.png")
    assert images.labels.tolist() == [0, 0, 1, 1, 2, 2]
    flat = image_files(tmp_path / "d")
    assert len(flat) == 6 and flat.labels is None


def test_fingerprint_follows_names_sizes_and_times(tmp_path):
    write_image_folder(tmp_path / "d", classes=2, per_class=2, size=8)
    first = image_folder(tmp_path / "d").fingerprint
    assert image_folder(tmp_path / "d").fingerprint == first
    target = tmp_path / "d" / "class0" / "0.png"
    stat = target.stat()
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    touched = image_folder(tmp_path / "d").fingerprint
    assert touched != first
    os.rename(target, tmp_path / "d" / "class0" / "renamed.png")
    assert image_folder(tmp_path / "d").fingerprint not in (first, touched)
    # The same files listed as a reference set are another set.
    assert image_files(tmp_path / "d").fingerprint != image_folder(tmp_path / "d").fingerprint


def test_missing_and_empty_folders_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data folder '.*nowhere' does not exist"):
        image_folder(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is not a folder"):
        image_folder(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"data folder '.*empty' has no class subfolders"):
        image_folder(tmp_path / "empty")
    with pytest.raises(ValueError, match=r"reference folder '.*empty' holds no images"):
        image_files(tmp_path / "empty", what="reference")
    write_image_folder(tmp_path / "d", classes=2, per_class=1, size=8)
    (tmp_path / "d" / "class9").mkdir()
    with pytest.raises(ValueError, match=r"class folder '.*class9' of the data folder holds no images"):
        image_folder(tmp_path / "d")


@pytest.fixture(scope="module")
def broken_data(tmp_path_factory):
    """A clean folder and the same folder with one undecodable image."""
    root = tmp_path_factory.mktemp("images")
    write_image_folder(root / "clean", classes=3, per_class=6, size=32)
    shutil.copytree(root / "clean", root / "broken")
    (root / "broken" / "class1" / "2b.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a PNG")
    write_image_folder(root / "reference", classes=2, per_class=4, size=32, seed=1, labelled=False)
    return root, f"m:test_resnet={small_checkpoint(root / 'm', 'test_resnet', 0)}"


def test_undecodable_image_is_skipped_with_a_warning(broken_data, tmp_path):
    broken_data, spec = broken_data
    with pytest.warns(RuntimeWarning, match=r"1 of 19 images under .*broken could not be decoded.*class1/2b\.png"):
        broken = extract(spec, broken_data / "broken", cache=tmp_path, batch_size=5, progress=False,
                         predictions="exact")["m"]
    clean = extract(spec, broken_data / "clean", cache=tmp_path, batch_size=5, progress=False,
                    predictions="exact")["m"]
    assert broken.skipped == ["class1/2b.png"]
    assert broken.features.shape == clean.features.shape == (18, 96)
    # The remaining rows are the right images, in order, with their labels.
    np.testing.assert_array_equal(broken.labels, clean.labels)
    scale = np.abs(clean.features).max()
    np.testing.assert_allclose(broken.features, clean.features, rtol=0, atol=BATCH_TOLERANCE * scale)
    broken_logits, clean_logits = broken.predictions.arrays["logits"], clean.predictions.arrays["logits"]
    np.testing.assert_allclose(broken_logits, clean_logits, rtol=0, atol=BATCH_TOLERANCE * np.abs(clean_logits).max())
    # Read back from the cache, the skipped image is still reported.
    again = extract(spec, broken_data / "broken", cache=tmp_path, batch_size=5, progress=False,
                    predictions="exact")["m"]
    assert again.cached and again.skipped == ["class1/2b.png"]


def test_screen_counts_skipped_images(broken_data, tmp_path):
    broken_data, spec = broken_data
    (broken_data / "reference" / "zz.png").write_bytes(b"GIF89a broken")
    with pytest.warns(RuntimeWarning, match="could not be decoded"):
        results = screen(spec, broken_data / "broken", broken_data / "reference", cache=tmp_path, progress=False)
    assert results["skipped_images"] == {"data": 1, "reference": 1}
    assert results["skipped_files"] == {"data": ["class1/2b.png"], "reference": ["zz.png"]}
    assert results["models"][0]["n"] == 18 and results["models"][0]["error"] is None
    messages = [w["message"] for w in results["warnings"]]
    assert any("1 image(s) of the data folder could not be decoded" in m for m in messages)
    # A fully cached re-run reports them too.
    cached = screen(spec, broken_data / "broken", broken_data / "reference", cache=tmp_path, progress=False)
    assert cached["models"][0]["cached"] == ["features", "reference", "scores"]
    assert cached["skipped_images"] == {"data": 1, "reference": 1}
