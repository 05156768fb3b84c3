"""ped_sweep(): every scorer at every point of a grid of PED's
hyper-parameters, sharing what does not depend on the setting (the plain
scores, each scorer's shared work), equal to ped_scores at each point.

Tolerance: 1e-10 relative against ped_scores at the same point (the same
shared computation, prepared once instead of once per call: equal bit for
bit in practice; the bar leaves room for a BLAS that reorders sums)."""
import importlib

import pytest
from conftest import assert_close, make_classes

from ped_fast.score import grid_points, parse_ped_grid, ped_scores, ped_sweep

sfda_module = importlib.import_module("ped_fast.scorers.sfda")


def _data():
    x, y = make_classes(300, 12, 4, separation=0.4, seed=3)
    g, _ = make_classes(200, 12, 3, seed=4)
    return x, y, g


def test_each_point_is_ped_scores_at_that_point():
    x, y, g = _data()
    grid = {"nsigma": [0.4, 0.8], "time_step": [0.05, 0.2]}
    out = ped_sweep(x, y, ["sfda", "logme", "knn"], grid, reference=g, max_steps=4)
    assert [point for point, _ in out] == [{"nsigma": 0.4, "time_step": 0.05}, {"nsigma": 0.4, "time_step": 0.2},
                                          {"nsigma": 0.8, "time_step": 0.05}, {"nsigma": 0.8, "time_step": 0.2}]
    peds = set()
    for point, scores in out:
        expected = ped_scores(x, y, ["sfda", "logme", "knn"], reference=g, max_steps=4, **point)
        for name, value in scores.items():
            assert value.ped < 1 - 1e-6 or name != "sfda", "the data must not saturate SFDA"
            assert_close(value.ped, expected[name].ped, 1e-10, f"{name} at {point}")
            assert_close(value.baseline, expected[name].baseline, 1e-10, f"{name} baseline")
            assert value.result.steps == expected[name].result.steps
            peds.add((name, round(value.ped, 12)))
    assert len(peds) > 3 * 2, "the grid's points must move the features differently"


def test_shared_work_is_prepared_once(monkeypatch):
    x, y, g = _data()
    calls = []

    class Counted(sfda_module.SFDAResiduals):
        def __init__(self, *args):
            calls.append(1)
            super().__init__(*args)

    monkeypatch.setattr(sfda_module, "SFDAResiduals", Counted)
    ped_sweep(x, y, "sfda", {"nsigma": [0.2, 0.4, 0.6]}, reference=g)
    assert len(calls) == 1


def test_points_given_as_a_list():
    x, y, g = _data()
    out = ped_sweep(x, y, "logme", [{"exit_ratio": 0.3}, {"max_steps": 2, "nsigma": 1.0}], reference=g)
    assert [point for point, _ in out] == [{"exit_ratio": 0.3}, {"max_steps": 2, "nsigma": 1.0}]
    assert out[1][1]["logme"].result.steps <= 2


def test_parse_ped_grid():
    assert parse_ped_grid("nsigma=0.4,0.6,0.8;time_step=0.05,0.1") == {"nsigma": [0.4, 0.6, 0.8],
                                                                      "time_step": [0.05, 0.1]}
    assert parse_ped_grid("max_steps=2,6") == {"max_steps": [2, 6]}
    assert len(grid_points(parse_ped_grid("nsigma=0.4,0.6,0.8;time_step=0.05,0.1"))) == 6


@pytest.mark.parametrize("spec,message", [
    ("", "NAME=V"), ("nsigma", "NAME=V"), ("nsigma=0.4;nsigma=0.6", "each NAME once"),
    ("nsigma=a", "must be numbers"), ("sigma=0.4", "not one of ped"), ("max_steps=2.5", "must be numbers"),
])
def test_parse_ped_grid_refuses(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_ped_grid(spec)


def test_bad_values_are_refused_before_any_work():
    x, y, g = _data()
    with pytest.raises(ValueError, match="nsigma"):
        ped_sweep(x, y, "sfda", {"nsigma": [0.4, -1.0]}, reference=g)
    with pytest.raises(ValueError, match="inplace"):
        ped_sweep(x, y, "sfda", {"nsigma": [0.4]}, reference=g, inplace=True)
