"""The source model's predictions (issue 15): kept only when a scorer reads
them, never for the reference set, at most 1 KiB per image in the compact
form, and LEEP and NCE from either form equal to the scorers on the full
logits (exactly for NCE; for LEEP exactly when the head fits, and within
what docs/spec.md states otherwise)."""
import importlib

import numpy as np
import pytest
import torch

from ped_fast.scorers import leep, nce
from ped_fast.zoo import extract, screen
from ped_fast.zoo.predictions import COMPACT_BYTES, Predictions, compact_rows, kept_classes
from zoo_helpers import small_checkpoint, write_image_folder

predictions_module = importlib.import_module("ped_fast.zoo.predictions")
# LEEP in row blocks against the scorer's one-piece float64 sums: the same
# terms summed in another order (~1e-15 relative).
BLOCK_TOLERANCE = 1e-12


def logits_of(rng, n, k, peak):
    """N x K logits, one source class per sample raised by `peak`."""
    logits = rng.standard_normal((n, k)).astype(np.float32)
    logits[np.arange(n), rng.integers(0, k, n)] += peak
    return logits


def compact_of(logits):
    rows = compact_rows(torch.as_tensor(logits))
    return Predictions(form="compact", num_sources=logits.shape[1], arrays=rows)


@pytest.mark.parametrize("k", [7, 300])
def test_leep_and_nce_from_every_form_equal_the_scorers(k, monkeypatch):
    """A small head is kept whole (exact LEEP); small row blocks exercise the
    streaming."""
    monkeypatch.setattr(predictions_module, "_BLOCK_ELEMENTS", 64)
    rng = np.random.default_rng(k)
    labels = rng.integers(0, 4, 250) * 3 + 1
    logits = logits_of(rng, 250, k, 3.0)
    exact = Predictions(form="exact", num_sources=k, arrays={"logits": logits})
    want = leep(logits, labels, logits=True)
    assert exact.leep(labels) == pytest.approx(want, rel=BLOCK_TOLERANCE)
    np.testing.assert_array_equal(exact.argmax(), logits.argmax(1))
    compact = compact_of(logits)
    np.testing.assert_array_equal(compact.argmax(), logits.argmax(1))
    assert nce(compact.argmax(), labels) == nce(logits, labels, logits=True)
    if kept_classes(k) == k:
        assert compact.leep(labels) == pytest.approx(want, rel=1e-7)  # float32-stored probabilities
    else:
        assert compact.leep(labels) != want


def test_the_compact_form_fits_in_a_kibibyte():
    for k in (10, 1000, 21843, 70000):
        rows = compact_rows(torch.zeros(2, k))
        assert sum(array[0].nbytes for array in rows.values()) <= COMPACT_BYTES


def test_compact_leep_on_a_21k_head_peaked_predictions():
    """A confident 21,843-class head: the probability outside the kept 169
    classes is ~1e-13 per image, and LEEP from the compact form agrees
    with the exact one to 1e-6 (the docs/spec.md target)."""
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 10, 300)
    logits = logits_of(rng, 300, 21843, 40.0)
    exact = leep(logits, labels, logits=True)
    assert compact_of(logits).leep(labels) == pytest.approx(exact, rel=1e-6)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("predictions")
    write_image_folder(root / "data", classes=3, per_class=5, size=32)
    write_image_folder(root / "reference", classes=2, per_class=3, size=32, seed=4, labelled=False)
    return root, f"r:test_resnet={small_checkpoint(root / 'r', 'test_resnet', 2)}"


def test_no_predictions_unless_a_scorer_reads_them(zoo, tmp_path, monkeypatch):
    root, spec = zoo
    extract_module = importlib.import_module("ped_fast.zoo.extract")
    asked = []
    forward = extract_module._forward
    monkeypatch.setattr(extract_module, "_forward",
                        lambda model, batch, precision, logits=False: asked.append(logits) or
                        forward(model, batch, precision, logits))
    screen([spec], root / "data", root / "reference", scorers="sfda", cache=tmp_path / "c", progress=False)
    assert asked and not any(asked)
    assert not (tmp_path / "c" / "predictions").exists()
    asked.clear()
    results = screen([spec], root / "data", root / "reference", scorers="sfda,leep,nce", cache=tmp_path / "c2",
                     progress=False)
    # The features pass computes the head, the reference pass never does.
    assert True in asked and asked.count(True) < len(asked)
    row = results["models"][0]
    assert row["scores"]["leep"]["baseline"] is not None
    (entry,) = (tmp_path / "c2" / "predictions").glob("*.json")
    bytes_per_image = sum(p.stat().st_size for p in (tmp_path / "c2" / "predictions").glob("*.npy")) / 15
    assert bytes_per_image <= COMPACT_BYTES + 200  # plus the .npy headers, shared by 15 images here


def test_cache_holds_only_features_with_the_default_scorer(zoo, tmp_path):
    root, spec = zoo
    screen([spec], root / "data", "self", scorers="sfda", cache=tmp_path / "c", progress=False)
    features = sum(p.stat().st_size for p in (tmp_path / "c" / "features").glob("*.features.npy"))
    everything = sum(p.stat().st_size for p in (tmp_path / "c").rglob("*.npy"))
    assert everything <= 1.05 * features + 1024
