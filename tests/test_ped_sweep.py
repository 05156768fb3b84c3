"""ped_sweep(): every scorer at every point of a grid of PED's
hyper-parameters, sharing what does not depend on the setting (the plain
scores, each scorer's shared work), equal to ped_scores at each point.

Tolerances, against ped_scores or ped_score run alone at the same point:
1e-10 relative for float64 features (docs/spec.md §6.3's float64 bar);
1e-7 for float32 features: SFDA's first fit from the second point on is
computed in the class means' hull, where ped_score solves B^-1 for the
moved means, and the two differ by how rounding the moved features to
float32 (~6e-8 of a row) moved each class mean (measured 2e-10)."""
import importlib

import pytest
import torch
from conftest import assert_close, make_classes

from ped_fast.score import grid_points, parse_ped_grid, ped_score, ped_scores, ped_sweep

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


# --- what the sweep shares, and that it stays each point's score -------------

SCORERS = ["sfda", "logme", "hscore", "gbc"]


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-10), (torch.float32, 1e-7)])
@pytest.mark.parametrize("n, d, c", [(301, 37, 5), (997, 129, 13), (211, 9, 7)])
def test_each_point_is_ped_score_at_that_point(n, d, c, dtype, rtol):
    """Odd sizes, float64 and float32 features, C below and above D / 2
    (SFDA's first fit in the class means' hull, or not), points that move
    a little and a lot; against ped_score run alone at each point."""
    x, y = make_classes(n, d, c, separation=0.35, seed=n, dtype=dtype)
    g, _ = make_classes(150, d, 3, seed=d, dtype=dtype)
    grid = {"nsigma": [0.3, 0.9], "time_step": [0.05, 0.5]}
    out = ped_sweep(x, y, SCORERS, grid, reference=g)
    moved = set()
    for point, scores in out:
        for name in SCORERS:
            alone = ped_score(x, y, name, reference=g, return_baseline=True, **point)
            assert_close(scores[name].ped, alone.ped, rtol, f"{name} at {point}")
            assert_close(scores[name].baseline, alone.baseline, rtol, f"{name} baseline")
            assert scores[name].result.steps == alone.result.steps
        moved.add(round(scores["sfda"].ped, 9))
    assert len(moved) == len(out), "each point must move the features differently"


def test_sfda_first_fit_is_shared_from_the_second_point_on(monkeypatch):
    """From the second score on, SFDA's first fit is computed in the hull
    of the input's class means (an N x C product formed once), not from
    B^-1 and the N x D residuals at every point."""
    x, y, g = _data()
    solved = []
    own = sfda_module.SFDAResiduals._own_probability

    def spy(self, residual, mu, solver, *, soften):
        solved.append(soften)
        return own(self, residual, mu, solver, soften=soften)

    monkeypatch.setattr(sfda_module.SFDAResiduals, "_own_probability", spy)
    out = ped_sweep(x, y, "sfda", {"nsigma": [0.4, 0.6, 0.8, 1.0]}, reference=g)
    # The baseline's first fit in full, then one second fit per score.
    assert solved == [True, False] + [False] * len(out)
    for point, scores in out:
        assert_close(scores["sfda"].ped, ped_score(x, y, "sfda", reference=g, **point), 1e-10, f"at {point}")


def test_a_mean_outside_the_hull_is_scored_in_full():
    """The hull's basis is used only for means PED could have moved there:
    a feature set whose class means leave the input means' hull is scored
    from B^-1 as ever, and agrees with sfda() on it."""
    from ped_fast.scorers._input import class_moments, prepare

    x, y, _ = _data()
    prep = prepare(x, y, torch.float64, "auto", "sfda")
    state = sfda_module.SFDAResiduals(prep.x, prep.index, prep.counts, prep.dtype, prep.launcher,
                                      class_moments(prep))
    state.score(state.means, consume=False)
    state.score(state.means, consume=False)
    assert state.hull is not None
    push = torch.zeros_like(state.means)
    push[0, 0] = 3.0  # the 4 class means span 3 of the 12 dimensions: not in their hull
    other = x + push[y]
    assert state._in_hull(state.means + push, state.means + push - (state.means + push).mean(0)) is None
    assert_close(state.score(state.means + push, consume=True), sfda_module.sfda(other, y), 1e-10)


def test_points_that_reach_one_state_share_its_scores(sfda_scores):
    """Points at which PED moves nothing score what the input scores;
    points whose loops stop at the same step share one score."""
    x, y, g = _data()
    calls = sfda_scores
    still = ped_sweep(x, y, "sfda", {"nsigma": [1e-6, 2e-6, 3e-6]}, reference=g)
    assert [scores["sfda"].result.steps for _, scores in still] == [0, 0, 0]
    assert len(calls) == 1  # the baseline's only
    assert all(scores["sfda"].ped == scores["sfda"].baseline for _, scores in still)
    calls.clear()
    out = ped_sweep(x, y, "sfda", {"exit_ratio": [0.9, 0.5], "max_steps": [2, 40]}, reference=g, time_step=0.3)
    assert [scores["sfda"].result.steps for _, scores in out] == [1, 1, 2, 4]
    assert len(calls) == 1 + 3  # the baseline, then three distinct shifts
    for point, scores in out:
        alone = ped_score(x, y, "sfda", reference=g, time_step=0.3, **point)
        assert_close(scores["sfda"].ped, alone, 1e-10, f"at {point}")


def test_without_baselines(sfda_scores):
    x, y, g = _data()
    calls = sfda_scores
    grid = {"nsigma": [0.4, 0.8]}
    out = ped_sweep(x, y, ["sfda", "knn"], grid, reference=g, return_baseline=False)
    assert len(calls) == 2
    full = ped_sweep(x, y, ["sfda", "knn"], grid, reference=g)
    for (_, scores), (_, expected) in zip(out, full):
        for name in ("sfda", "knn"):
            assert scores[name].baseline is None and scores[name].ped == pytest.approx(expected[name].ped, rel=1e-12)
    with pytest.raises(TypeError, match="return_baseline must be True or False, got 'no'"):
        ped_sweep(x, y, "sfda", grid, reference=g, return_baseline="no")


def test_float32_arithmetic():
    """SFDA computed in float32 (scorer_options dtype): the hull's products
    are float32 too; within float32's reach of ped_score's (1e-5 relative,
    docs/spec.md §6.3's float32 bar; measured 1e-7)."""
    x, y = make_classes(401, 40, 6, separation=0.4, seed=2, dtype=torch.float32)
    g, _ = make_classes(100, 40, 3, seed=3, dtype=torch.float32)
    options = {"dtype": torch.float32}
    out = ped_sweep(x, y, "sfda", {"nsigma": [0.4, 0.8, 1.2]}, reference=g, scorer_options={"sfda": options})
    for point, scores in out:
        alone = ped_score(x, y, "sfda", reference=g, scorer_options=options, **point)
        assert_close(scores["sfda"].ped, alone, 1e-5, f"at {point}")
