"""class_stats alone: one read of X; achieved GB/s against the copy ceiling
measured by bench_bandwidth.py."""
import functools

import pytest

from conftest import (DEVICES, EACH_BACKEND, EACH_PASS_CASE, check_close, check_equal, dataset, launcher_or_skip,
                      record, synchronized)
from ped_fast import reference


@functools.cache
def expected(shape, dtype, device):
    """The reference path's (counts, mean, variance): once per case, for every backend."""
    x, labels, _ = dataset(shape, dtype, device)
    return reference.class_stats(x, labels, int(labels.max()) + 1)


@pytest.mark.parametrize("device", DEVICES)
@EACH_PASS_CASE
@EACH_BACKEND
def test_class_stats(benchmark, device, shape, dtype, backend):
    launcher = launcher_or_skip(backend, device)
    x, labels, _ = dataset(shape, dtype, device)
    c = int(labels.max()) + 1
    if backend != "reference":  # the path the others are checked against
        case = f"{backend} class_stats at {shape} {str(dtype)[6:]} on {device}"
        counts, mean, var = launcher.class_stats(x, labels, c)
        want_counts, want_mean, want_var = expected(shape, dtype, device)
        check_equal(counts, want_counts, f"{case}: counts")
        check_close(mean, want_mean, f"{case}: mean")
        check_close(var, want_var, f"{case}: variance")
    benchmark.pedantic(synchronized(device, launcher.class_stats), args=(x, labels, c), rounds=5, iterations=1,
                       warmup_rounds=1)
    record(benchmark, shape=shape, dtype=str(dtype)[6:], device=device, backend=backend, bytes=x.nbytes,
           gbps=x.nbytes / benchmark.stats.stats.median / 1e9)
