"""The machine's ceilings that the other benchmarks are judged against:
memory bandwidth (a copy, and an in-place update, of an ImageNet-sized
float32 array: the access patterns of class_stats and integrate) and the
float64/float32 matmul rate."""
import pytest
import torch

from conftest import DEVICES, record, synchronized

NBYTES = 50000 * 2048 * 4


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["copy", "inplace_add"])
def test_memory_bandwidth(benchmark, device, kind):
    src = torch.ones(NBYTES // 4, dtype=torch.float32, device=device)
    dst = torch.zeros_like(src)
    fn = (lambda: dst.copy_(src)) if kind == "copy" else (lambda: src.add_(1e-3))
    benchmark.pedantic(synchronized(device, fn), rounds=7, iterations=1, warmup_rounds=1)
    moved = 2 * NBYTES  # read + write
    record(benchmark, device=device, kind=kind, bytes=moved, gbps=moved / benchmark.stats.stats.median / 1e9)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_matmul_rate(benchmark, device, dtype):
    n = 2048 if device == "cpu" else 8192
    a = torch.randn(n, n, dtype=dtype, device=device)
    benchmark.pedantic(synchronized(device, torch.matmul), args=(a, a), rounds=5, iterations=1, warmup_rounds=1)
    record(benchmark, device=device, dtype=str(dtype)[6:], gflops=2 * n**3 / benchmark.stats.stats.median / 1e9)
