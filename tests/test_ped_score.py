"""ped_score(): PED with any scorer, and the baseline from the same call.

Tolerances:
- golden, float64: 1e-7 relative (the issue's bar; measured ~1e-14).
- golden, float32: 1e-3 absolute (the issue's bar).
- shared computation (return_baseline=True) against separate scorer calls:
  1e-10 relative. The shared path forms the moved features' statistics as
  the input's plus PED's shift (and, for LogME, X^T X as R^T R plus the
  class means' outer products) instead of re-reading the moved features:
  equal in exact arithmetic, a few ulps apart in float64.
"""
import numpy as np
import pytest
import torch
from conftest import GOLDEN, assert_close, golden_case, make_classes

import ped_fast
from ped_fast.score import PEDScore, ped_score
from ped_fast.scorers import SCORERS, sfda

CASES = sorted(GOLDEN)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", ["sfda", "logme"])
def test_golden(case, name):
    data, expected = golden_case(case)
    out = ped_score(data["X"], data["y"], name, reference=data["G"], return_baseline=True, **expected["params"])
    assert isinstance(out, PEDScore)
    assert_close(out.ped, expected[f"ped_{name}"], 1e-7, f"ped_{name} on {case}")
    assert_close(out.baseline, expected[name], 1e-7, f"{name} on {case}")
    assert out.result.steps == expected["steps_taken"]
    alone = ped_score(data["X"], data["y"], name, reference=data["G"], **expected["params"])
    assert_close(alone, expected[f"ped_{name}"], 1e-7, f"ped_{name} on {case}, without baseline")


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", ["sfda", "logme"])
def test_golden_float32(case, name):
    data, expected = golden_case(case)
    out = ped_score(data["X"].astype(np.float32), data["y"], name, reference=data["G"].astype(np.float32),
                    return_baseline=True, scorer_options={"dtype": torch.float32}, **expected["params"])
    assert abs(out.ped - expected[f"ped_{name}"]) <= 1e-3
    assert abs(out.baseline - expected[name]) <= 1e-3


def problem(seed=0):
    x, y = make_classes(300, 10, 5, seed=seed, separation=0.8)
    reference = torch.randn(200, 10, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    return x.numpy(), y.numpy(), reference.numpy()


OPTIONS = {"sfda": {}, "logme": {}, "nleep": {"seed": 2}, "gbc": {"gaussian": "diagonal"}}


@pytest.mark.parametrize("name", sorted(SCORERS))
def test_shared_path_equals_separate_calls(name):
    x, y, g = problem()
    x_before = x.copy()
    out = ped_score(x, y, name, reference=g, return_baseline=True, scorer_options=OPTIONS[name])
    assert np.array_equal(x, x_before)
    moved = ped_fast.ped(x, y, reference=g).features
    assert out.result.steps > 0  # PED moved the classes: the two scores are of different features
    assert_close(out.ped, SCORERS[name](moved, y, **OPTIONS[name]), 1e-10, f"ped_{name}")
    assert_close(out.baseline, SCORERS[name](x, y, **OPTIONS[name]), 1e-10, f"{name}")
    assert_close(ped_score(x, y, name, reference=g, scorer_options=OPTIONS[name]), out.ped, 1e-10, "alone")


def test_logme_n_le_d_is_scored_on_the_features():
    x, y = make_classes(30, 40, 3, seed=3)
    out = ped_score(x, y, "logme", rescale="self", return_baseline=True)
    assert_close(out.ped, SCORERS["logme"](out.result.features, y), 1e-12, "ped_logme, N <= D")
    assert_close(out.baseline, SCORERS["logme"](x, y), 1e-12, "logme, N <= D")


def test_callable_scorer():
    x, y, g = problem()
    calls = []

    def scorer(features, labels, scale=1.0):
        calls.append(np.array(features))
        return scale * sfda(features, labels)

    out = ped_score(x, y, scorer, reference=g, return_baseline=True, scorer_options={"scale": 2.0})
    assert len(calls) == 2 and np.array_equal(calls[0], x)
    assert np.array_equal(calls[1], out.result.features)
    assert_close(out.ped, 2.0 * sfda(out.result.features, y), 1e-12, "callable, moved")
    assert_close(out.baseline, 2.0 * sfda(x, y), 1e-12, "callable, baseline")
    with pytest.raises(TypeError, match="must return a number"):
        ped_score(x, y, lambda f, l: "high", reference=g)


def test_inplace_keeps_the_baseline_right():
    x, y, g = problem(4)
    expected = sfda(x, y)
    work = x.copy()
    out = ped_score(work, y, "sfda", reference=g, return_baseline=True, inplace=True)
    assert out.result.features is work and not np.array_equal(work, x)  # ped moved the caller's array
    assert_close(out.baseline, expected, 1e-12, "baseline read before the in-place move")
    assert_close(out.ped, sfda(work, y), 1e-10, "moved")


def test_torch_input_and_ped_options():
    x, y, g = problem(5)
    expected = ped_score(x, y, "sfda", reference=g, nsigma=0.3, max_steps=2)
    got = ped_score(torch.from_numpy(x), torch.from_numpy(y), "sfda", reference=torch.from_numpy(g), nsigma=0.3,
                    max_steps=2, backend="reference")
    assert_close(got, expected, 1e-10, "torch input, reference backend")


def test_errors():
    x, y, g = problem()
    with pytest.raises(ValueError, match="scorer must be one of"):
        ped_score(x, y, "leep", reference=g)
    with pytest.raises(TypeError, match="scorer_options for 'sfda' accepts"):
        ped_score(x, y, "sfda", reference=g, scorer_options={"seed": 1})
    with pytest.raises(TypeError, match="scorer_options for 'logme' accepts"):
        ped_score(x, y, "logme", reference=g, scorer_options={"regression": True})
    with pytest.raises(ValueError, match="reference is required"):
        ped_score(x, y, "sfda")
    with pytest.raises(ValueError, match="at least 2 classes"):
        ped_score(x, np.zeros(len(y), dtype=int), "gbc", reference=g)
    with pytest.raises(TypeError, match="return_baseline"):
        ped_score(x, y, reference=g, return_baseline=1)
