"""pairwise_forces of every fast CPU backend against the reference path,
including the steps where pruned pairs are skipped."""
import pytest
import torch

from conftest import BACKENDS, FAST_BACKENDS, TOLERANCE, assert_close, means_and_radii, run_steps
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
