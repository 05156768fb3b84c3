"""integrate alone, in place: one read and one write of X; achieved GB/s
against the copy ceiling measured by bench_bandwidth.py."""
import pytest
import torch

from conftest import DEVICES, EACH_BACKEND, EACH_PASS_CASE, dataset, launcher_or_skip, record, synchronized


@pytest.mark.parametrize("device", DEVICES)
@EACH_PASS_CASE
@EACH_BACKEND
def test_integrate_inplace(benchmark, device, shape, dtype, backend):
    launcher = launcher_or_skip(backend, device)
    x, labels, _ = dataset(shape, dtype, device)
    work = x.clone()
    c = int(labels.max()) + 1
    shift = torch.full((c, x.shape[1]), 1e-3, dtype=dtype, device=device)
    benchmark.pedantic(synchronized(device, launcher.integrate), args=(work, labels, shift, work), rounds=7,
                       iterations=1, warmup_rounds=1)
    moved = 2 * x.nbytes
    record(benchmark, shape=shape, dtype=str(dtype)[6:], device=device, backend=backend, bytes=moved,
           gbps=moved / benchmark.stats.stats.median / 1e9)
