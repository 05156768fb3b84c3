"""integrate alone, in place: one read and one write of X; achieved GB/s
against the copy ceiling measured by bench_bandwidth.py."""
import pytest
import torch

from conftest import DEVICES, dataset, launcher_or_skip, record, synchronized

CASES = [("sun397", torch.float64), ("imagenet", torch.float32)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape,dtype", CASES, ids=[f"{s}-{str(d)[6:]}" for s, d in CASES])
@pytest.mark.parametrize("backend", ["reference", "cpu", "triton", "cuda"])
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
