"""pairwise_forces of every fast CPU backend against the reference path,
including the steps where pruned pairs are skipped; the public op's checks."""
import re

import pytest
import torch

from conftest import BACKENDS, FAST_BACKENDS, TOLERANCE, assert_close, make_classes, means_and_radii, run_steps
import ped_fast
from ped_fast import cpu, reference

LAUNCHERS = {"cpu": cpu}
F64 = TOLERANCE[torch.float64]


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("c,d", [(1, 1), (2, 1), (2, 5), (3, 1), (7, 33), (13, 129), (61, 17)])
@pytest.mark.parametrize("coef", [0.005, 4.5])  # paper's 0.5*dt^2*k, and a = o (coef > 1)
def test_matches_reference_over_steps(backend, c, d, coef):
    mu, radius = means_and_radii(c, d, seed=c * 100 + d)
    params = dict(nsigma=0.6, coef=coef)
    got = run_steps(LAUNCHERS[backend], mu, radius, 6, **params)
    want = run_steps(reference, mu, radius, 6, **params)
    for step, (a, b) in enumerate(zip(got, want)):
        assert_close(a.delta, b.delta, F64, f"delta at step {step}")
        assert a.position_change == pytest.approx(b.position_change, rel=F64, abs=1e-300)
        assert a.active_pairs == b.active_pairs
        assert torch.equal(a.coincident, b.coincident)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_pruning_skips_far_pairs_and_keeps_results(backend):
    # Two tight groups far apart: after the first full evaluation, only the
    # pairs inside a group stay candidates.
    g = torch.Generator().manual_seed(0)
    groups = torch.cat([torch.zeros(5, 8), torch.full((5, 8), 100.0)]).double()
    mu = groups + 0.1 * torch.randn(10, 8, generator=g, dtype=torch.float64)
    radius = torch.full((10,), 1.0, dtype=torch.float64)
    got = run_steps(LAUNCHERS[backend], mu, radius, 3, nsigma=0.6, coef=0.005)
    want = run_steps(reference, mu, radius, 3, nsigma=0.6, coef=0.005)
    assert got[0].evaluated_pairs == 45
    assert got[1].evaluated_pairs == got[2].evaluated_pairs == 20
    for a, b in zip(got, want):
        assert_close(a.delta, b.delta, F64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_coincident_means_give_no_nan(backend):
    launcher = LAUNCHERS.get(backend, reference)
    mu = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    radius = torch.ones(3, dtype=torch.float64)
    forces = launcher.pairwise_forces(mu, radius, nsigma=0.6, coef=0.005, bounds=launcher.make_bounds(3, mu.device))
    assert torch.isfinite(forces.delta).all()
    assert forces.coincident.tolist() == [[0, 1]]
    # Classes 0 and 1 are pushed by class 2 only: equally, in -x.
    assert forces.delta[0, 0] < 0 and forces.delta[0, 0] == forces.delta[1, 0]


def test_ops_pairwise_forces_on_the_reference_backend():
    """The public op used to raise TypeError for every input (a misspelt
    Tensor.to call), so it had never run."""
    mu, radius = means_and_radii(7, 5, seed=3)
    forces = ped_fast.ops.pairwise_forces(mu.numpy(), radius.numpy(), nsigma=0.6, time_step=0.1, backend="reference")
    want = reference.pairwise_forces(mu, radius, nsigma=0.6, coef=0.5 * 0.1**2)
    assert torch.equal(forces.delta, want.delta) and forces.position_change == want.position_change


@pytest.mark.parametrize("backend", BACKENDS)
def test_delta_written_into_a_non_contiguous_out(backend):
    """Before, the cpu launcher wrote delta as if `out` were contiguous: into
    a transposed buffer, in the wrong places."""
    launcher = LAUNCHERS.get(backend, reference)
    mu, radius = means_and_radii(7, 5, seed=3)
    want = reference.pairwise_forces(mu, radius, nsigma=0.6, coef=0.005)
    out = torch.full((5, 7), float("nan"), dtype=torch.float64).t()
    forces = launcher.pairwise_forces(mu, radius, nsigma=0.6, coef=0.005, bounds=launcher.make_bounds(7, mu.device),
                                      out=out)
    assert forces.delta is out
    assert_close(out, want.delta, F64, "delta")
    assert forces.position_change == pytest.approx(want.position_change, rel=F64)


PED_ERRORS = [  # ped()'s parameters, each bad in one way
    dict(time_step=-0.1),
    dict(time_step="0.1"),
    dict(nsigma=float("nan")),
    dict(nsigma=-0.6),
    dict(force_constant=-1.0),
    dict(force_constant=float("inf")),
    dict(force_constant=True),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", PED_ERRORS, ids=lambda p: f"{next(iter(p))}={next(iter(p.values()))!r}")
def test_ops_pairwise_forces_checks_parameters_as_ped_does(backend, bad):
    """Before, the op took any parameters and the backends disagreed: with
    force_constant=-1 the reference moved the classes together, cpu did
    not move them, and Triton counted 174 active pairs."""
    mu, radius = means_and_radii(20, 3, seed=1)
    x, labels = make_classes(30, 3, 2, seed=0)
    with pytest.raises((TypeError, ValueError)) as from_ped:
        ped_fast.ped(x, labels, rescale=None, backend=backend, **bad)
    with pytest.raises(from_ped.type, match=f"^{re.escape(str(from_ped.value))}$"):
        ped_fast.ops.pairwise_forces(mu, radius, backend=backend, **bad)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("means,radii,error,message", [
    (torch.zeros(3, 2).fill_(float("nan")), torch.ones(3), ValueError,
     r"means has 6 non-finite values \(NaN or inf\); the first is in row 0"),
    (torch.zeros(3, 2), torch.tensor([1.0, -1.0, 1.0]), ValueError, r"radii must be finite and >= 0, got -1.0 at index 1"),
    (torch.zeros(3, 2), torch.tensor([1.0, 1.0, float("inf")]), ValueError,
     r"radii must be finite and >= 0, got inf at index 2"),
    (torch.zeros(3, 2), torch.ones(2), ValueError, r"radii must be a vector of length 3 \(one per row of means\), "
                                                    r"got shape \(2,\)"),
    (torch.zeros(0, 2), torch.ones(0), ValueError, r"means must be C x D with at least one class and one dimension, "
                                                    r"got shape \(0, 2\)"),
    (torch.zeros(3), torch.ones(3), ValueError, r"means must be C x D .* got shape \(3,\)"),
    (torch.zeros(3, 2, dtype=torch.complex128), torch.ones(3), TypeError, "means must be real numbers, got complex128"),
])
def test_ops_pairwise_forces_checks_means_and_radii(backend, means, radii, error, message):
    with pytest.raises(error, match=message):
        ped_fast.ops.pairwise_forces(means, radii, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_step_coefficient_that_overflows_acts_as_one(backend):
    """1/2 dt^2 k above 1 gives steps as long as the overlaps (min(coef * o, o)
    = o), however large. Before, time_step=1e155 made ped() raise
    OverflowError (from time_step**2), and coef = inf made the reference
    path's delta NaN (inf * 0 for the pairs that do not overlap)."""
    mu, radius = means_and_radii(13, 4, seed=2)
    want = ped_fast.ops.pairwise_forces(mu, radius, time_step=3.0, backend=backend)
    assert want.active_pairs > 0
    for huge in (dict(time_step=1e155), dict(time_step=1e154, force_constant=1e10)):
        got = ped_fast.ops.pairwise_forces(mu, radius, backend=backend, **huge)
        assert torch.equal(got.delta, want.delta) and got.active_pairs == want.active_pairs
    x, labels = make_classes(90, 6, 4, seed=8)
    want = ped_fast.ped(x, labels, rescale=None, time_step=3.0, backend=backend)
    got = ped_fast.ped(x, labels, rescale=None, time_step=1e155, backend=backend)
    assert got.steps == want.steps > 0 and torch.equal(got.shift, want.shift)
