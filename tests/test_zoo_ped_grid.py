"""screen(ped_grid=...) and `ped-fast screen --ped-grid`: every model's PED
score at every point of a grid of PED's settings (equal to ped_score's at
that setting) and, with ground truth, each scorer's weighted tau across the
grid with bootstrap intervals."""
import json

import numpy as np
import pytest

import ped_fast
from ped_fast.__main__ import main
from ped_fast.evaluate import evaluate
from ped_fast.zoo.screen import screen

GRID = "nsigma=0.4,0.8;time_step=0.05,0.2"
POINTS = [{"nsigma": 0.4, "time_step": 0.05}, {"nsigma": 0.4, "time_step": 0.2}, {"nsigma": 0.8, "time_step": 0.05},
          {"nsigma": 0.8, "time_step": 0.2}]


def _zoo(folder):
    """Four models of a 4-class task (features folder) and their accuracies."""
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 4, 160)
    folder.mkdir()
    np.save(folder / "labels.npy", labels)
    models = {}
    for index, dim in enumerate((8, 10, 12, 14)):
        x = (0.3 + 0.2 * index) * rng.standard_normal((4, dim))[labels] + rng.standard_normal((160, dim))
        reference = rng.standard_normal((80, dim)) + 0.2
        np.save(folder / f"m{index}.npy", x)
        np.save(folder / f"m{index}.reference.npy", reference)
        models[f"m{index}"] = (x, reference)
    return labels, models, {"m0": 40.0, "m1": 55.0, "m2": 50.0, "m3": 70.0}


def test_screen_scores_every_grid_point(tmp_path):
    labels, models, truth = _zoo(tmp_path / "f")
    results = screen(features=tmp_path / "f", scorers="sfda,logme,leep", cache=tmp_path / "c", progress=False,
                     ground_truth=truth, ped_grid=GRID, bootstrap=200)
    grid = results["ped_grid"]
    assert grid["points"] == POINTS
    assert grid["scorers"] == ["sfda", "logme"]  # leep reads predictions: PED does not apply
    rows = {row["name"]: row for row in results["models"]}
    for name, (x, reference) in models.items():
        assert len(rows[name]["ped_grid"]) == len(POINTS)
        for point, scores in zip(POINTS, rows[name]["ped_grid"]):
            for scorer in ("sfda", "logme"):
                direct = ped_fast.ped_score(x, labels, scorer, reference=reference, **point)
                assert scores[scorer] == pytest.approx(direct, rel=1e-10)
    for point_index, measures in enumerate(grid["evaluation"]):
        for scorer in ("sfda", "logme"):
            values = {name: rows[name]["ped_grid"][point_index][scorer] for name in rows}
            expected = evaluate(values, truth, bootstrap=200)
            assert measures[scorer]["weighted_tau"] == pytest.approx(expected["weighted_tau"])
            assert measures[scorer]["interval"]["weighted_tau"] == pytest.approx(expected["interval"]["weighted_tau"])
    # A re-run finds every plain score in the cache, and still scores the grid.
    again = screen(features=tmp_path / "f", scorers="sfda,logme,leep", cache=tmp_path / "c", progress=False,
                   ped_grid=GRID)
    assert [row["ped_grid"] for row in again["models"]] == [rows[name]["ped_grid"] for name in sorted(rows)]
    assert all("scores" in row["cached"] for row in again["models"])
    assert again["ped_grid"]["evaluation"] is None


@pytest.mark.parametrize("grid, message", [
    ("nsigma=0.4;sigma=1", "not one of ped"), ("nsigma=-1", "nsigma"), ("nsigma", "NAME=V"),
])
def test_bad_grid_is_refused_before_any_work(tmp_path, grid, message):
    _zoo(tmp_path / "f")
    with pytest.raises(ValueError, match=message):
        screen(features=tmp_path / "f", cache=tmp_path / "c", progress=False, ped_grid=grid)
    assert not (tmp_path / "c").exists()


def test_grid_needs_a_features_scorer(tmp_path):
    _zoo(tmp_path / "f")
    with pytest.raises(ValueError, match="ped_grid needs a scorer that reads features"):
        screen(features=tmp_path / "f", scorers="leep", cache=tmp_path / "c", progress=False, ped_grid="nsigma=0.4")


def test_cli_ped_grid(tmp_path, capsys):
    _, _, truth = _zoo(tmp_path / "f")
    (tmp_path / "truth.json").write_text(json.dumps(truth))
    code = main(["screen", "--features", str(tmp_path / "f"), "--cache", str(tmp_path / "c"), "--out",
                 str(tmp_path / "out"), "--ground-truth", str(tmp_path / "truth.json"), "--ped-grid", GRID,
                 "--bootstrap", "100", "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    assert "weighted tau of each PED score across PED's settings, 95% bootstrap intervals" in out
    assert "nsigma=0.8 time_step=0.2" in out
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(saved["ped_grid"]["evaluation"]) == 4
    with pytest.raises(SystemExit) as exit_info:
        main(["screen", "--features", str(tmp_path / "f"), "--cache", str(tmp_path / "c"), "--out",
              str(tmp_path / "out2"), "--ped-grid", "nsigma=x", "--quiet"])
    assert exit_info.value.code == 2
    assert "ped_grid 'nsigma=x': the values of 'nsigma' must be numbers, got 'x'" in capsys.readouterr().err


def test_grid_scores_skip_the_plain_scores(tmp_path, sfda_scores):
    """The row has each plain score (cached): the grid computes PED's only,
    one SFDA score per distinct moved feature set."""
    from ped_fast.zoo.scoring import grid_scores

    labels, models, _ = _zoo(tmp_path / "f")
    x, reference = models["m2"]
    calls = sfda_scores
    values = grid_scores(x, labels, ["sfda"], POINTS, reference=reference)
    shifts = {ped_fast.ped(x, labels, reference=reference, **point).shift.tobytes() for point in POINTS}
    assert len(calls) == len(shifts)  # one per distinct feature set, none for the plain one
    for point, value in zip(POINTS, values):
        assert value["sfda"] == pytest.approx(ped_fast.ped_score(x, labels, "sfda", reference=reference, **point),
                                              rel=1e-10)
