"""The screen's numbers end up where they belong: each row's plain and PED
scores are ped_score's (every scorer PED applies to), and results.csv holds
the values of results.json in the right columns.

Both checks run on data where every scorer's PED score differs from its
plain score (asserted), so that a PED score replaced by the plain one, or
two columns swapped, cannot pass unnoticed.
"""
import csv
import json

import numpy as np
import pytest

import ped_fast
from ped_fast.scorers import available
from ped_fast.zoo import screen

# The screen and ped_score run the same float64 code on the same arrays;
# only the screen's streamed reference moments differ (~1e-15 relative),
# amplified by PED's steps (tests/test_zoo_scorers.py).
SCORE_TOLERANCE = 1e-10
# PED's scores differ from the plain ones by more than this (relative) on
# the data below; far above SCORE_TOLERANCE.
DIFFERENT = 1e-4
PED_SCORERS = [record.name for record in available() if record.ped_applies]


def model_data(seed, dim):
    """Three overlapping classes, 90 samples, and a reference set: PED
    moves them enough to change every scorer's value (k-NN's too: a few
    nearest neighbours change class)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(90) % 3
    x = 0.5 * rng.standard_normal((3, dim))[labels] + rng.standard_normal((90, dim))
    return labels, x, 1.5 * rng.standard_normal((40, dim)), rng.standard_normal((90, 7))


@pytest.fixture(scope="module")
def screened(tmp_path_factory):
    """Two models (one with logits, for LEEP and NCE), every scorer:
    (results, features folder, cache, {model: (features, reference)},
    labels)."""
    root = tmp_path_factory.mktemp("values")
    folder = root / "features"
    folder.mkdir()
    models = {}
    for name, seed, dim in (("m1", 0, 6), ("m2", 2, 5)):
        labels, x, reference, logits = model_data(seed, dim)
        models[name] = (x, reference)
        np.save(folder / f"{name}.npy", x)
        np.save(folder / f"{name}.reference.npy", reference)
        if name == "m1":
            np.save(folder / f"{name}.logits.npy", logits)
    np.save(folder / "labels.npy", labels)
    results = screen(features=folder, scorers="all", cache=root / "cache", progress=False)
    assert all(row["error"] is None for row in results["models"])
    return results, folder, root / "cache", models, labels


def test_every_ped_score_is_ped_scores(screened):
    results, _, _, models, labels = screened
    assert {"knn", "gbc", "nleep", "hscore", "reg_hscore", "transrate", "parc", "sfda", "logme"} <= set(PED_SCORERS)
    for row in results["models"]:
        x, reference = models[row["name"]]
        for scorer in PED_SCORERS:
            direct = ped_fast.ped_score(x, labels, scorer, reference=(reference.mean(0), reference.std(0)),
                                        return_baseline=True)
            assert abs(direct.ped - direct.baseline) > DIFFERENT * abs(direct.baseline), (row["name"], scorer)
            score = row["scores"][scorer]
            assert score["baseline"] == pytest.approx(direct.baseline, rel=SCORE_TOLERANCE), (row["name"], scorer)
            assert score["ped"] == pytest.approx(direct.ped, rel=SCORE_TOLERANCE), (row["name"], scorer)
            assert row["steps"] == direct.result.steps


def test_csv_holds_the_json_values(screened):
    """results.csv read back as a user would (csv.DictReader, the columns
    by name: docs/screening.md §5) against results.json."""
    _, folder, cache, _, _ = screened
    out = folder.parent / "out"
    screen(features=folder, scorers="all", cache=cache, out=out, progress=False)
    written = json.loads((out / "results.json").read_text())
    with open(out / "results.csv", newline="") as f:
        lines = list(csv.DictReader(f))
    assert [line["name"] for line in lines] == [row["name"] for row in written["models"]]
    compared = 0
    for line, row in zip(lines, written["models"]):
        assert [line["dim"], line["n"], line["steps"]] == [str(row["dim"]), str(row["n"]), str(row["steps"])]
        for scorer in written["scorers"]:
            score = row["scores"][scorer]
            for kind, column in (("baseline", scorer.upper()), ("ped", f"PED+{scorer.upper()}")):
                if score[kind] is None:
                    assert line[column] == "n/a", (row["name"], column)
                else:
                    assert float(line[column]) == score[kind], (row["name"], column)
                    compared += 1
            if scorer in PED_SCORERS:
                assert abs(score["ped"] - score["baseline"]) > DIFFERENT * abs(score["baseline"]), (row["name"], scorer)
    assert compared == 2 * 2 * len(PED_SCORERS) + 2  # and LEEP, NCE of m1
