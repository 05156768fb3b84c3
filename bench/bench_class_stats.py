"""class_stats alone: one read of X; achieved GB/s against the copy ceiling
measured by bench_bandwidth.py."""
import pytest
import torch

from conftest import DEVICES, dataset, launcher_or_skip, record, synchronized

CASES = [("sun397", torch.float64), ("imagenet", torch.float32)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape,dtype", CASES, ids=[f"{s}-{str(d)[6:]}" for s, d in CASES])
@pytest.mark.parametrize("backend", ["reference", "cpu", "triton", "cuda"])
def test_class_stats(benchmark, device, shape, dtype, backend):
    launcher = launcher_or_skip(backend, device)
    x, labels, _ = dataset(shape, dtype, device)
    c = int(labels.max()) + 1
    benchmark.pedantic(synchronized(device, launcher.class_stats), args=(x, labels, c), rounds=5, iterations=1,
                       warmup_rounds=1)
    record(benchmark, shape=shape, dtype=str(dtype)[6:], device=device, backend=backend, bytes=x.nbytes,
           gbps=x.nbytes / benchmark.stats.stats.median / 1e9)
