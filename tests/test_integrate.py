"""integrate of every fast CPU backend against the reference path."""
import pytest
import torch

from conftest import DTYPES, FAST_BACKENDS, make_classes
from ped_fast import cpu, reference

LAUNCHERS = {"cpu": cpu}


def shifts(c, d, dtype, seed=0):
    return torch.randn(c, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,d,c", [(1, 1, 1), (5, 3, 5), (37, 1, 2), (301, 67, 11)])
def test_out_of_place_equals_reference(backend, dtype, n, d, c):
    x, labels = make_classes(n, d, c, dtype=dtype, seed=n)
    shift = shifts(c, d, dtype)
    before = x.clone()
    out = torch.empty_like(x)
    LAUNCHERS[backend].integrate(x, labels, shift, out)
    # One addition per element in the same dtype on both sides: bitwise equal.
    assert torch.equal(out, reference.integrate(x, labels, shift, torch.empty_like(x)))
    assert torch.equal(x, before)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_in_place_writes_the_callers_buffer(backend, dtype):
    x, labels = make_classes(257, 31, 4, dtype=dtype, seed=2)
    shift = shifts(4, 31, dtype)
    expected = x + shift[labels]
    address = x.data_ptr()
    result = LAUNCHERS[backend].integrate(x, labels, shift, x)
    assert result is x and x.data_ptr() == address
    assert torch.equal(x, expected)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_strided_layouts(backend):
    x, labels = make_classes(64, 10, 3, seed=4)
    shift = shifts(3, 10, torch.float64)
    expected = x + shift[labels]
    wide = torch.zeros(64, 25, dtype=torch.float64)
    wide[:, 7:17] = x
    LAUNCHERS[backend].integrate(wide[:, 7:17], labels, shift, wide[:, 7:17])
    assert torch.equal(wide[:, 7:17], expected)
    assert torch.equal(wide[:, :7], torch.zeros(64, 7, dtype=torch.float64))
    transposed = x.t().contiguous().t()  # columns contiguous, rows not
    LAUNCHERS[backend].integrate(transposed, labels, shift, transposed)
    assert torch.equal(transposed, expected)
