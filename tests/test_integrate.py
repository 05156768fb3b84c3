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


# The public entry point, ops.integrate: the same in-place checks as ped(). ---

import numpy as np  # noqa: E402

import ped_fast  # noqa: E402

LABELS = np.array([0, 1, 0, 1])
SHIFT = np.ones((2, 3))


def features():
    return np.arange(12.0).reshape(4, 3)


def test_ops_integrate_in_place_writes_the_callers_array():
    x = features()
    want = x + SHIFT[LABELS]
    assert ped_fast.ops.integrate(x, LABELS, SHIFT, inplace=True) is x
    np.testing.assert_array_equal(x, want)


def in_place_refusals():
    read_only = features()
    read_only.flags.writeable = False
    broadcast = torch.zeros(1, 3, dtype=torch.float64).expand(4, 3)
    overlapping = torch.zeros(13, dtype=torch.float64).as_strided((4, 3), (2, 1))  # rows share elements
    return [
        (read_only, ValueError, "inplace=True but features is a read-only array"),
        (features()[::-1], ValueError, r"inplace=True needs non-negative strides, but features has strides"),
        (features().tolist(), TypeError, "inplace=True needs a numpy array or torch tensor, got list"),
        (broadcast, ValueError, r"inplace=True but features is a broadcast view \(a stride of 0\)"),
        (overlapping, ValueError, r"inplace=True but features is a view whose elements overlap in memory \(shape "
                                  r"\(4, 3\), strides \(2, 1\) in elements\)"),
    ]


@pytest.mark.parametrize("entry", ["ops.integrate", "ped"])
@pytest.mark.parametrize("value,error,message", in_place_refusals(),
                         ids=["read-only", "reversed", "list", "broadcast", "overlapping"])
def test_in_place_refusals_are_the_same_everywhere(entry, value, error, message):
    """Before, ops.integrate wrote into a read-only array, left a reversed
    view unchanged (it wrote into a copy) and returned a list unchanged."""
    before = np.array(value, copy=True) if not isinstance(value, torch.Tensor) else value.clone()
    with pytest.raises(error, match=message):
        if entry == "ped":
            ped_fast.ped(value, LABELS, rescale=None, time_step=3.0, inplace=True)
        else:
            ped_fast.ops.integrate(value, LABELS, SHIFT, inplace=True)
    np.testing.assert_array_equal(np.asarray(value), np.asarray(before))


def test_inplace_must_be_a_bool():
    with pytest.raises(TypeError, match="inplace must be True or False, got 1"):
        ped_fast.ops.integrate(features(), LABELS, SHIFT, inplace=1)
