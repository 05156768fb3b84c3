"""The backend registry (ped_fast/_backends.py) and what the launchers share
(ped_fast/_common.py): which backend a call gets, when a GPU test fails
rather than skips, and the one copy of the helpers every launcher uses."""
import itertools

import pytest
import torch

import ped_fast
from conftest import gpu_test_outcome, make_classes, require_backend
from ped_fast import _backends, _common, cpu, cuda, reference
from ped_fast import triton as triton_launcher

# ------------------------------------------------- GPU tests: fail or skip


@pytest.mark.parametrize("available,gpu_expected,opted_out", list(itertools.product([False, True], repeat=3)))
def test_gpu_test_outcome(available, gpu_expected, opted_out):
    # A usable backend always runs (Triton's interpreter included); an
    # unusable one fails where a GPU is expected, unless it was left out on
    # purpose, and skips everywhere else.
    want = "run" if available else ("fail" if gpu_expected and not opted_out else "skip")
    assert gpu_test_outcome(available, gpu_expected, opted_out) == want


# ------------------------------------------------------ backend="auto"


def test_auto_on_cpu_tensors_never_picks_triton():
    # The tests run with TRITON_INTERPRET=1 when there is no GPU, so Triton
    # can run CPU tensors here; auto must still take the fast CPU path.
    x, labels = make_classes(60, 4, 3, seed=1)
    want = "cpu" if ped_fast.available_backends()["cpu"].available else "reference"
    assert _backends.resolve("auto", x.device)[0] == want
    assert ped_fast.ped(x, labels, rescale="self").backend == want
    if triton_launcher.interpreting():
        assert ped_fast.available_backends()["triton"].available
        assert _backends.resolve("triton", x.device) == ("triton", triton_launcher)


@pytest.fixture
def gpu_backends():
    # Without a GPU the cuda backend cannot run: skip (or fail where one is
    # expected). With one, both GPU backends must run.
    require_backend("cuda")
    require_backend("triton")


@pytest.mark.usefixtures("gpu_backends")
def test_auto_on_cuda_tensors_picks_cuda(monkeypatch):
    monkeypatch.delenv("PED_FAST_BACKEND", raising=False)
    x, labels = (t.cuda() for t in make_classes(300, 20, 5, seed=2))
    assert _backends.resolve("auto", x.device)[0] == "cuda"
    assert ped_fast.ped(x, labels, rescale="self").backend == "cuda"
    # PED_FAST_BACKEND steers auto, through the same resolve().
    monkeypatch.setenv("PED_FAST_BACKEND", "triton")
    result = ped_fast.ped(x, labels, rescale="self")
    assert result.backend == "triton"
    assert ped_fast.ped(x, labels, rescale="self", backend="reference").steps == result.steps


# ------------------------------------------- one copy of the shared helpers


def test_make_bounds_is_one_function():
    assert cpu.make_bounds is triton_launcher.make_bounds is cuda.make_bounds is _common.make_bounds
    bounds = _common.make_bounds(4, torch.device("cpu"))
    assert bounds.full and bounds.dist.shape == (4, 4) and not bounds.drift.any()
    assert reference.make_bounds(4, torch.device("cpu")) is None  # the reference path never prunes


@pytest.mark.parametrize("rows_per_chunk", [1, 3, 64])
@pytest.mark.parametrize("n,num_classes,seed", [(1, 1, 0), (7, 9, 1), (200, 5, 2), (501, 40, 3)])
def test_bucket_rows_matches_a_direct_construction(n, num_classes, rows_per_chunk, seed):
    g = torch.Generator().manual_seed(seed)
    # Skewed labels with empty classes: class c drawn with weight (c + 1)^2,
    # and every third class left out.
    weights = torch.arange(1, num_classes + 1, dtype=torch.float64) ** 2
    weights[1::3] = 0
    index = torch.multinomial(weights, n, replacement=True, generator=g)
    got = _common.bucket_rows(index, num_classes, rows_per_chunk)

    order, chunks, class_chunks = [], [], [0]
    for c in range(num_classes):
        rows = [i for i in range(n) if int(index[i]) == c]
        start = len(order)
        order += rows
        for begin in range(start, start + len(rows), rows_per_chunk):
            chunks.append((c, begin, min(begin + rows_per_chunk, start + len(rows))))
        class_chunks.append(len(chunks))
    assert got.order.tolist() == order
    assert got.counts.tolist() == torch.bincount(index, minlength=num_classes).tolist()
    assert got.starts.tolist() == [int((index < c).sum()) for c in range(num_classes)]
    assert got.class_chunks.tolist() == class_chunks
    # The table has a size known from N and C; past the real chunks, empty ones.
    table = got.chunks.t().tolist()
    assert len(table) == -(-n // rows_per_chunk) + num_classes
    assert [tuple(row) for row in table[:len(chunks)]] == chunks
    assert all(begin >= end for _, begin, end in table[len(chunks):])

