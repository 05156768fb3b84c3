"""pairwise_forces at C=1000, D=2048: the first step (every pair measured)
and a later one (pairs pruned by the drift bound), in GFLOP/s of the
C(C-1)/2 x D difference-square-accumulate work of a full evaluation."""
import functools

import pytest
import torch

from conftest import DEVICES, EACH_BACKEND, check_close, dataset, launcher_or_skip, record, synchronized
from ped_fast import reference

NSIGMA, COEF = 0.6, 0.005  # the paper's nsigma and 0.5 * dt^2 * k


@functools.cache
def means_and_radii(device):
    """The ImageNet-shaped classes' means (C x D) and radii (C), from the
    reference path's statistics."""
    x, labels, _ = dataset("imagenet", torch.float32, device)
    _, mean, var = reference.class_stats(x, labels, int(labels.max()) + 1)
    return mean, var.sum(dim=1).sqrt()


@functools.cache
def expected(device):
    """The reference path's forces at the first step and at the later one
    (the means moved by the first step's delta), for every backend."""
    mu, radius = means_and_radii(device)
    first = reference.pairwise_forces(mu, radius, nsigma=NSIGMA, coef=COEF)
    later = reference.pairwise_forces(mu + first.delta, radius, nsigma=NSIGMA, coef=COEF)
    return {"first": first, "later": later}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("step", ["first", "later"])
@EACH_BACKEND
def test_pairwise_forces(benchmark, device, step, backend):
    launcher = launcher_or_skip(backend, device)
    mu, radius = means_and_radii(device)
    c, d = mu.shape
    bounds = launcher.make_bounds(c, mu.device)
    out = torch.empty_like(mu)
    params = dict(nsigma=NSIGMA, coef=COEF, bounds=bounds, out=out)
    if step == "later":
        launcher.pairwise_forces(mu, radius, **params)
        if bounds is not None:
            bounds.advance(out)  # a pruned call leaves the bounds as they are
        mu = mu + out

    def setup():
        if step == "first" and bounds is not None:
            bounds.full = True
        return (mu, radius), params

    if backend != "reference":  # the path the others are checked against
        args, kwargs = setup()
        forces = launcher.pairwise_forces(*args, **kwargs)  # the call that is timed below
        case = f"{backend} pairwise_forces, {step} step, at C x D = {c} x {d} on {device}"
        want = expected(device)[step]
        check_close(forces.delta, want.delta, f"{case}: delta")
        check_close(forces.position_change, want.position_change, f"{case}: position_change")
    forces = benchmark.pedantic(synchronized(device, launcher.pairwise_forces), setup=setup, rounds=5, iterations=1,
                                warmup_rounds=1)
    flops = 3.0 * c * (c - 1) / 2 * d
    record(benchmark, device=device, backend=backend, step=step, c=c, d=d,
           evaluated_pairs=forces.evaluated_pairs, active_pairs=forces.active_pairs,
           gflops_full_equivalent=flops / benchmark.stats.stats.median / 1e9)
