"""class_stats of every fast CPU backend against the reference path."""
import pytest
import torch

from conftest import BACKENDS, DTYPES, FAST_BACKENDS, TOLERANCE, assert_close, make_classes
from ped_fast import cpu, ops, reference

LAUNCHERS = {"cpu": cpu}

SHAPES = [  # (N, D, C)
    (1, 1, 1),
    (7, 1, 3),
    (5, 3, 5),  # N = C: every class has one sample
    (37, 13, 2),
    (301, 67, 11),
    (1000, 129, 1),
    (2, 1, 2),
]


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,d,c", SHAPES)
def test_matches_reference(backend, dtype, n, d, c):
    x, labels = make_classes(n, d, c, dtype=dtype, seed=n + d + c)
    x = x + 50.0  # an offset the shifted sums must not lose precision to
    counts, mean, var = LAUNCHERS[backend].class_stats(x, labels, c)
    r_counts, r_mean, r_var = reference.class_stats(x, labels, c)
    assert torch.equal(counts, r_counts)
    assert mean.dtype == var.dtype == torch.float64
    assert_close(mean, r_mean, TOLERANCE[torch.float64], "mean")
    # Variances are ~1 next to means ~50: 1e-10 relative to the larger
    # scale still checks the cancellation-prone part to ~1e-8.
    assert_close(var, r_var, TOLERANCE[torch.float64] * 50, "var")


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_strided_rows_and_columns(backend):
    x, labels = make_classes(200, 40, 6, seed=3)
    wide = torch.zeros(200, 90, dtype=torch.float64)
    wide[:, 5:45] = x
    for view in (wide[:, 5:45], x.t().contiguous().t(), x[::1]):
        got = LAUNCHERS[backend].class_stats(view, labels, 6)
        want = reference.class_stats(x, labels, 6)
        for a, b in zip(got, want):
            assert_close(a, b, TOLERANCE[torch.float64])


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_deterministic(backend):
    x, labels = make_classes(3000, 70, 9, seed=5, dtype=torch.float32)
    first = LAUNCHERS[backend].class_stats(x, labels, 9)
    second = LAUNCHERS[backend].class_stats(x, labels, 9)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_public_op_with_arbitrary_labels(backend):
    x, labels = make_classes(60, 5, 3, seed=1)
    raw = torch.tensor([3, 17, 99])[labels]
    classes, counts, mean, var = ops.class_stats(x.numpy(), raw.numpy(), backend=backend)
    assert classes.tolist() == [3, 17, 99]
    for c in range(3):
        rows = x[labels == c]
        assert counts[c] == rows.shape[0]
        assert_close(mean[c], rows.mean(0), 1e-12)
        assert_close(var[c], rows.var(0, correction=0), 1e-12)
