"""pairwise_forces at C=1000, D=2048: the first step (every pair measured)
and a later one (pairs pruned by the drift bound), in GFLOP/s of the
C(C-1)/2 x D difference-square-accumulate work of a full evaluation."""
import pytest
import torch

from conftest import DEVICES, EACH_BACKEND, dataset, launcher_or_skip, record, synchronized
from ped_fast import _backends


def means_and_radii(device):
    x, labels, _ = dataset("imagenet", torch.float32, device)
    launcher = _backends._module("cpu" if device == "cpu" else "reference")
    _, mean, var = launcher.class_stats(x, labels, int(labels.max()) + 1)
    return mean.contiguous(), var.sum(dim=1).sqrt()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("step", ["first", "later"])
@EACH_BACKEND
def test_pairwise_forces(benchmark, device, step, backend):
    launcher = launcher_or_skip(backend, device)
    mu, radius = means_and_radii(device)
    c, d = mu.shape
    bounds = launcher.make_bounds(c, mu.device)
    out = torch.empty_like(mu)
    params = dict(nsigma=0.6, coef=0.005, bounds=bounds, out=out)
    if step == "later":
        launcher.pairwise_forces(mu, radius, **params)
        if bounds is not None:
            bounds.advance(out)  # a pruned call leaves the bounds as they are
        mu = mu + out

    def setup():
        if step == "first" and bounds is not None:
            bounds.full = True
        return (mu, radius), params

    forces = benchmark.pedantic(synchronized(device, launcher.pairwise_forces), setup=setup, rounds=5, iterations=1,
                                warmup_rounds=1)
    flops = 3.0 * c * (c - 1) / 2 * d
    record(benchmark, device=device, backend=backend, step=step, c=c, d=d,
           evaluated_pairs=forces.evaluated_pairs, active_pairs=forces.active_pairs,
           gflops_full_equivalent=flops / benchmark.stats.stats.median / 1e9)
