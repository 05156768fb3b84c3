"""class_stats alone: one read of X; achieved GB/s against the copy ceiling
measured by bench_bandwidth.py."""
import pytest

from conftest import DEVICES, EACH_BACKEND, EACH_PASS_CASE, dataset, launcher_or_skip, record, synchronized


@pytest.mark.parametrize("device", DEVICES)
@EACH_PASS_CASE
@EACH_BACKEND
def test_class_stats(benchmark, device, shape, dtype, backend):
    launcher = launcher_or_skip(backend, device)
    x, labels, _ = dataset(shape, dtype, device)
    c = int(labels.max()) + 1
    benchmark.pedantic(synchronized(device, launcher.class_stats), args=(x, labels, c), rounds=5, iterations=1,
                       warmup_rounds=1)
    record(benchmark, shape=shape, dtype=str(dtype)[6:], device=device, backend=backend, bytes=x.nbytes,
           gbps=x.nbytes / benchmark.stats.stats.median / 1e9)
