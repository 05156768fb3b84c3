"""ped()'s defaults are the paper's (docs/spec.md §1.1), and a case run with
them that each default decides.

The golden cases pass every parameter explicitly, and their P_t / P_0 ratios
are about 0.69 or higher, so any exit ratio up to about 0.69 behaves alike on
them: a changed default would go unnoticed. The case here has a closed form
(below) whose first ratio, 0.525, falls between the paper's exit ratio 0.5
and 0.55, and whose shift depends on every other default.
"""
import inspect

import numpy as np
import pytest

import ped_fast
from conftest import BACKENDS
from ped_fast.ped import check_parameters

# time_step, nsigma, force_constant, exit_ratio, max_steps, eps
PAPER = {"time_step": 0.1, "nsigma": 0.6, "force_constant": 1.0, "exit_ratio": 0.5, "max_steps": 6, "eps": 1e-3}


def test_defaults_are_the_papers():
    parameters = inspect.signature(ped_fast.ped).parameters
    assert {name: parameters[name].default for name in PAPER} == PAPER
    assert parameters["rescale"].default == "reference"
    assert check_parameters() == tuple(PAPER.values())


def pushed_class(pushers):
    """One class A and `pushers` classes whose means coincide exactly.

    Coincident means exert no force on each other (docs/spec.md §1.4), so
    each pusher feels only A and A feels every pusher: with overlap o, a
    step moves A by pushers * coef * o and each pusher by coef * o, apart
    along one axis, so the overlap shrinks to o * r with
    r = 1 - (pushers + 1) * coef, and P_t / P_0 = r^t exactly. Every
    feature value is a power of two times a small integer, so the class
    statistics are exact in any summation order and the pushers' means
    stay equal bit for bit.

    Dimensions: 0, the axis A and the pushers lie on; 1, the classes'
    spread; 2, a spread the reference does not have (its std is 0, so eps
    scales it). Returns X, y, G and the closed-form (o, R_A, R_pusher)."""
    spread = np.array([[0.0, 4.0, 2.0**-10], [0.0, -4.0, -2.0**-10]])  # two samples per class: mean +- this
    means = np.zeros((pushers + 1, 3))
    means[1:, 0] = 2.0  # A at the origin, every pusher at distance 2
    x = (means[:, None, :] + spread[None]).reshape(-1, 3)
    y = np.repeat(np.arange(pushers + 1), 2)
    g = np.array([[1.0, 1.0, 0.0], [-1.0, -1.0, 0.0]])  # mean 0, std (1, 1, 0)
    scale = np.maximum(g.std(axis=0), PAPER["eps"])
    radius = np.sqrt(((spread[0] / scale) ** 2).sum())  # both samples deviate by +-spread: var = spread^2
    overlap = PAPER["nsigma"] * 2 * radius - 2.0
    return x, y, g, overlap


def closed_form(pushers, overlap):
    """(steps, shift of A along axis 0, shift of each pusher) with the
    paper's parameters, from P_t / P_0 = r^t."""
    coef = 0.5 * PAPER["time_step"] ** 2 * PAPER["force_constant"]
    ratio = 1 - (pushers + 1) * coef
    steps = 0
    while steps < PAPER["max_steps"] and ratio**steps > PAPER["exit_ratio"]:
        steps += 1
    moved = coef * overlap * sum(ratio**t for t in range(steps))  # what one pair's force moved one class
    return steps, ratio, -pushers * moved, moved


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pushers, steps", [(94, 2), (1, 6)])
def test_a_closed_form_case_run_with_the_defaults(backend, pushers, steps):
    """94 pushers: r = 0.525, between the exit ratios 0.5 (the paper's:
    step 1 is applied, 2 steps) and 0.55 (1 step). One pusher: r = 0.99,
    so the loop runs until max_steps. The shifts depend on time_step and
    force_constant (through coef), nsigma and eps (through the overlap)."""
    x, y, g, overlap = pushed_class(pushers)
    want_steps, ratio, shift_a, shift_pusher = closed_form(pushers, overlap)
    assert want_steps == steps
    if pushers == 94:
        assert 0.5 < ratio < 0.55
    result = ped_fast.ped(x, y, reference=g, backend=backend)
    assert result.steps == steps
    np.testing.assert_allclose(np.array(result.position_changes) / result.position_changes[0],
                               ratio ** np.arange(len(result.position_changes)), rtol=1e-12)
    expected = np.zeros((pushers + 1, 3))
    expected[0, 0], expected[1:, 0] = shift_a, shift_pusher
    np.testing.assert_allclose(result.shift, expected, rtol=1e-12, atol=1e-15)
    if pushers == 94:
        assert ped_fast.ped(x, y, reference=g, backend=backend, exit_ratio=0.55).steps == 1
        assert ped_fast.ped(x, y, reference=g, backend=backend, exit_ratio=0.5).steps == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_rescale_self_is_rescaling_by_the_features_themselves(backend):
    """rescale="self" takes X's moments from the class statistics (law of
    total variance); passing X as its own reference computes them
    directly."""
    rng = np.random.default_rng(2)
    y = np.arange(90) % 4
    x = 0.6 * rng.standard_normal((4, 5))[y] + rng.standard_normal((90, 5)) * np.array([1, 2, 0.5, 1, 3])
    own = ped_fast.ped(x, y, rescale="self", backend=backend)
    direct = ped_fast.ped(x, y, reference=x, backend=backend)
    assert own.steps == direct.steps > 0
    np.testing.assert_allclose(own.shift, direct.shift, rtol=1e-10, atol=0)
