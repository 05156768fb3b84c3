"""The source model's predictions (issue 15): kept only when a scorer reads
them, never for the reference set, at most 1 KiB per image in the compact
form, and LEEP and NCE from either form equal to the scorers on the full
logits (exactly for NCE; for LEEP exactly when the head fits, and within
what docs/spec.md states otherwise)."""
import importlib
import os
import subprocess
import sys

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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,k", [(250, 7), (251, 301)])
def test_leep_and_nce_from_every_form_equal_the_scorers(n, k, dtype, monkeypatch):
    """A small head is kept whole (exact LEEP); small row blocks (not
    dividing N) exercise the streaming; odd label values and an odd number
    of classes exercise the label mapping."""
    monkeypatch.setattr(predictions_module, "_BLOCK_ELEMENTS", 64)
    rng = np.random.default_rng(k)
    labels = rng.integers(0, 5, n) * 3 + 1
    logits = logits_of(rng, n, k, 3.0).astype(dtype)
    exact = Predictions(form="exact", num_sources=k, arrays={"logits": logits})
    want = leep(logits, labels, logits=True)
    assert exact.leep(labels) == pytest.approx(want, rel=BLOCK_TOLERANCE)
    np.testing.assert_array_equal(exact.argmax(), logits.argmax(1))
    compact = compact_of(logits)
    np.testing.assert_array_equal(compact.argmax(), logits.argmax(1))
    want_nce = nce(logits, labels, logits=True)
    assert exact.nce(labels) == pytest.approx(want_nce, rel=BLOCK_TOLERANCE)
    assert compact.nce(labels) == exact.nce(labels)
    if kept_classes(k) == k:
        assert compact.leep(labels) == pytest.approx(want, rel=1e-7)  # float32-stored probabilities
    else:
        assert compact.leep(labels) != want


@pytest.mark.parametrize("case", ["one class predicted", "every class predicted", "zero-probability classes"])
def test_nce_and_leep_on_edge_predictions(case):
    """NCE's empty cells (the 1e-20 offset, added in closed form) when one
    source class, or one per sample, is predicted; LEEP's rule for a source
    class of zero probability (no contribution)."""
    rng = np.random.default_rng(3)
    n, k = 40, 50
    labels = rng.integers(0, 3, n)
    logits = rng.standard_normal((n, k))
    if case == "one class predicted":
        logits[:, 7] += 100.0
    elif case == "every class predicted":
        logits[np.arange(n), np.arange(n)] += 100.0
    else:
        logits[:, :10] = -1e4  # exp underflows to 0 in float64: p(z) = 0
    exact = Predictions(form="exact", num_sources=k, arrays={"logits": logits})
    assert exact.nce(labels) == pytest.approx(nce(logits, labels, logits=True), rel=BLOCK_TOLERANCE, abs=1e-300)
    assert exact.leep(labels) == pytest.approx(leep(logits, labels, logits=True), rel=BLOCK_TOLERANCE)


def test_nce_needs_two_classes():
    predictions = Predictions(form="compact", num_sources=5, arrays=compact_rows(torch.zeros(4, 5)))
    with pytest.raises(ValueError, match="nce needs at least 2 classes, got 1"):
        predictions.nce(np.zeros(4))
    with pytest.raises(ValueError, match=r"labels must be 4 class labels .* got shape \(3,\)"):
        predictions.nce(np.arange(3))


# A child process scores N x K logits of C target classes and prints the
# growth of its peak resident memory (VmHWM, reset before the call; the
# input is built before, so only what scoring allocates counts), after a
# warm-up on a few rows. glibc returns freed blocks at once (as in
# bench/bench_predictions.py).
MEMORY_SCRIPT = """
import numpy as np, torch
from ped_fast.zoo.predictions import Predictions, compact_rows
form, scorer, n, k, c = {form!r}, {scorer!r}, {n}, {k}, {c}
logits = np.random.default_rng(0).standard_normal((n, k), dtype=np.float32)
labels = np.arange(n) % c
arrays = {{"logits": logits}} if form == "exact" else compact_rows(torch.as_tensor(logits))
def score(rows):
    predictions = Predictions(form, k, {{name: a[:rows] for name, a in arrays.items()}})
    return getattr(predictions, scorer)(labels[:rows])
def peak():
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM"))
score(2 * c)
open("/proc/self/clear_refs", "w").write("5")
before = peak()
score(n)
print(peak() - before)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc to read peak memory")
@pytest.mark.parametrize("form,scorer", [("exact", "leep"), ("compact", "leep"), ("exact", "nce"),
                                         ("compact", "nce")])
def test_scoring_memory_is_one_table_and_a_few_blocks(form, scorer):
    """LEEP holds one C x K float64 table (40 MB here) beside a few row
    blocks of 8 MiB, never copies of the table (the library held four:
    180 MB); NCE counts only the pairs that occur (O(N)), not C x K."""
    n, k, c = 3000, 5003, 1000
    code = MEMORY_SCRIPT.format(form=form, scorer=scorer, n=n, k=k, c=c)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
    growth = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                                check=True).stdout.split()[-1])
    block = 8 * (1 << 20)
    limit = c * k * 8 + 5 * block if scorer == "leep" else 16 * n * 8 + block
    assert growth <= limit, f"{scorer}, {form} form: peak memory grew by {growth / 1e6:.0f} MB > {limit / 1e6:.0f}"


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
