"""integrate alone, in place: one read and one write of X; achieved GB/s
against the copy ceiling measured by bench_bandwidth.py."""
import functools

import pytest
import torch

from conftest import DEVICES, EACH_BACKEND, EACH_PASS_CASE, check_close, dataset, launcher_or_skip, record, synchronized
from ped_fast import reference


def shift_for(shape, dtype, device):
    x, labels, _ = dataset(shape, dtype, device)
    return torch.full((int(labels.max()) + 1, x.shape[1]), 1e-3, dtype=dtype, device=device)


@functools.cache
def expected(shape, dtype, device):
    """The reference path's X + shift[labels]: once per case, for every backend."""
    x, labels, _ = dataset(shape, dtype, device)
    return reference.integrate(x, labels, shift_for(shape, dtype, device), torch.empty_like(x))


@pytest.mark.parametrize("device", DEVICES)
@EACH_PASS_CASE
@EACH_BACKEND
def test_integrate_inplace(benchmark, device, shape, dtype, backend):
    launcher = launcher_or_skip(backend, device)
    x, labels, _ = dataset(shape, dtype, device)
    work = x.clone()
    shift = shift_for(shape, dtype, device)
    if backend != "reference":  # the path the others are checked against
        launcher.integrate(work, labels, shift, work)  # in place, as timed
        what = f"{backend} integrate at {shape} {str(dtype)[6:]} on {device}"
        check_close(work, expected(shape, dtype, device), what)
    benchmark.pedantic(synchronized(device, launcher.integrate), args=(work, labels, shift, work), rounds=7,
                       iterations=1, warmup_rounds=1)
    moved = 2 * x.nbytes
    record(benchmark, shape=shape, dtype=str(dtype)[6:], device=device, backend=backend, bytes=moved,
           gbps=moved / benchmark.stats.stats.median / 1e9)
