"""The CUDA C++ backend (ped_fast.cuda, extension ped_fast._cuda) against the
reference path on the same GPU.

Every kernel test needs a CUDA device and a usable extension. Without a GPU
it skips with the launcher's reason; with one (or with PED_FAST_EXPECT_GPU=1)
an unusable backend is a failure that says why (conftest.gpu_test_outcome).
test_extension_built_when_nvcc_exists and the chunk-plan tests run
everywhere: on a machine with nvcc (CI has one, no GPU) the extension must
have been built, so a CUDA compile error cannot hide behind skipped tests.

Tolerances: conftest.TOLERANCE (summation order only; float64 statistics).
"""
import importlib
import importlib.util
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch

import ped_fast
from conftest import DTYPES, GOLDEN, TOLERANCE, assert_close, golden_case, make_classes, require_backend, run_steps
from conftest import means_and_radii as shared_means_and_radii
from ped_fast import cpu, cuda, reference
from test_cross_backend import interleaved_groups, spec_evaluated_pairs

DEVICE = torch.device("cuda")
F64 = TOLERANCE[torch.float64]


@pytest.fixture
def cuda_backend():
    require_backend("cuda")


gpu = pytest.mark.usefixtures("cuda_backend")


def test_extension_built_when_nvcc_exists():
    path = pathlib.Path(__file__).resolve().parents[1] / "build_cuda.py"
    if not path.is_file():
        pytest.skip("build_cuda.py is not next to the tests (installed package)")
    spec = importlib.util.spec_from_file_location("build_cuda", path)
    build_cuda = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_cuda)
    if os.environ.get("PED_FAST_NO_CUDA", "") not in ("", "0"):
        pytest.skip("PED_FAST_NO_CUDA is set: the CUDA extension is not built on purpose")
    nvcc = build_cuda.find_nvcc()
    if nvcc is None:
        if cuda._cuda is None:
            assert cuda.status() == (False, "not built: nvcc not found at build time; reinstall with nvcc on PATH")
        pytest.skip("no nvcc here: the CUDA extension need not be built")
    # nvcc is here, so `pip install -e .` must have built the extension, and
    # its host code must run.
    module = importlib.import_module("ped_fast._cuda")
    assert module.class_stats_workspace_bytes(4, 3) == 2 * 4 * 3 * 8
    # What its own (static) CUDA runtime sees must agree with torch: with a
    # GPU, the backend is usable; without one, the runtime sees no device
    # and says why.
    count, error = module.probe()
    if torch.cuda.is_available():
        assert cuda.status() == (True, f"built; {torch.cuda.get_device_name()}"), cuda.status()[1]
        assert (count, error) == (torch.cuda.device_count(), "")
    else:
        assert cuda.status() == (False, "built; no CUDA device")
        assert count == 0 and error


def on_gpu(*tensors):
    return [t.to(DEVICE) for t in tensors]


# class_stats ---------------------------------------------------------------

STATS_SHAPES = [  # (N, D, C)
    (1, 1, 1),
    (2, 1, 2),
    (7, 1, 3),  # D = 1
    (5, 3, 5),  # N = C: every class a singleton
    (37, 13, 2),
    (301, 67, 11),
    (1000, 129, 1),  # one class: split into row chunks
    (5000, 3, 2),  # few classes, many rows: chunks of uneven classes
    (300, 1024, 64),  # enough (class, column tile) items: no chunks
]


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,d,c", STATS_SHAPES)
def test_class_stats_matches_reference(dtype, n, d, c):
    x, labels = on_gpu(*make_classes(n, d, c, dtype=dtype, seed=n + d + c))
    x = x + 50.0  # an offset the shifted sums must not lose precision to
    counts, mean, var = cuda.class_stats(x, labels, c)
    r_counts, r_mean, r_var = reference.class_stats(x, labels, c)
    assert torch.equal(counts, r_counts)
    assert mean.dtype == var.dtype == torch.float64 and mean.device == x.device
    assert_close(mean, r_mean, F64, "mean")
    # Variances ~1 next to means ~50: see test_class_stats.py.
    assert_close(var, r_var, F64 * 50, "var")


@gpu
def test_class_stats_singleton_and_empty_classes():
    x = torch.tensor([[1.0, -2.0], [3.0, 4.0], [5.0, 6.0]], dtype=torch.float64, device=DEVICE)
    labels = torch.tensor([0, 2, 2], device=DEVICE)  # class 1 and 3 empty, class 0 a singleton
    counts, mean, var = cuda.class_stats(x, labels, 4)
    assert counts.tolist() == [1, 0, 2, 0]
    assert mean.tolist() == [[1.0, -2.0], [0.0, 0.0], [4.0, 5.0], [0.0, 0.0]]
    assert var.tolist() == [[0.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.0, 0.0]]


@gpu
def test_class_stats_strided_rows_and_columns():
    x, labels = on_gpu(*make_classes(200, 40, 6, seed=3))
    wide = torch.zeros(200, 90, dtype=torch.float64, device=DEVICE)
    wide[:, 5:45] = x
    want = reference.class_stats(x, labels, 6)
    for view in (wide[:, 5:45], x.t().contiguous().t()):  # strided rows; non-contiguous rows (copied)
        for a, b in zip(cuda.class_stats(view, labels, 6), want):
            assert_close(a, b, F64)


@gpu
@pytest.mark.parametrize("n,d,c", [(20000, 70, 1), (3000, 70, 9), (4000, 2048, 40)])
def test_class_stats_deterministic(n, d, c):
    x, labels = on_gpu(*make_classes(n, d, c, seed=5, dtype=torch.float32))
    first = cuda.class_stats(x, labels, c)
    second = cuda.class_stats(x, labels, c)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


# One class holding most rows among a thousand. The old launch plan split
# classes into row chunks only while (classes x column tiles) < 2048, so here
# (1000 classes x 3 column tiles) one block summed the whole class serially.
DOMINANT = [(1000, 20_000, 70), (1000, 300_000, 2048)]  # (classes, rows of class 0, D)


def dominant_class_labels(num_classes, big):
    labels = torch.cat([torch.zeros(big, dtype=torch.int64), torch.arange(1, num_classes)])
    return labels[torch.randperm(labels.shape[0], generator=torch.Generator().manual_seed(0))]


@pytest.mark.parametrize("c,big,d", DOMINANT)
def test_class_stats_plan_splits_a_dominant_class(c, big, d):
    # The chunk table that class_stats hands to its kernels, built here on CPU
    # tensors with the launcher's own code: one block per chunk.
    labels = dominant_class_labels(c, big)
    plan = cuda.class_stats_plan(labels, c, d)
    rows = cuda.stats_rows_per_chunk(labels.shape[0], d)
    assert cuda.STATS_MIN_ROWS <= rows <= cuda.STATS_MAX_ROWS
    chunk_class, begin, end = plan.chunks
    sizes = (end - begin).clamp_min(0)
    assert int(sizes.max()) <= rows
    first, last = plan.class_chunks[:2].tolist()
    assert last - first == -(-big // rows) > 1
    assert (chunk_class[first:last] == 0).all() and int(sizes[first:last].sum()) == big
    # Every other class is one chunk of one row.
    assert torch.equal(plan.class_chunks[2:] - plan.class_chunks[1:-1], torch.ones(c - 1, dtype=torch.int64))


@gpu
def test_class_stats_dominant_class_matches_reference():
    c, big, d = DOMINANT[0]
    labels = dominant_class_labels(c, big).to(DEVICE)
    g = torch.Generator().manual_seed(12)
    x = (3.0 * torch.randn(labels.shape[0], d, generator=g) + 20.0).to(DEVICE)
    counts, mean, var = cuda.class_stats(x, labels, c)
    r_counts, r_mean, r_var = reference.class_stats(x, labels, c)
    assert torch.equal(counts, r_counts)
    assert_close(mean, r_mean, F64, "mean")
    assert_close(var, r_var, F64 * 50, "var")  # as in test_class_stats_matches_reference
    assert all(torch.equal(a, b) for a, b in zip((counts, mean, var), cuda.class_stats(x, labels, c)))


@gpu
def test_class_stats_and_integrate_do_not_wait_for_the_gpu():
    x, labels = on_gpu(*make_classes(3000, 70, 9, seed=8))
    want = reference.class_stats(x, labels, 9)
    torch.cuda.synchronize()
    # About half a second of GPU work queued ahead of the launches: a launcher
    # that waited for the GPU (a host sync in torch or in the extension)
    # would return only after it, with the stream idle.
    torch.cuda._sleep(1_000_000_000)
    torch.cuda.set_sync_debug_mode("error")  # a synchronising torch op raises, naming itself
    try:
        got = cuda.class_stats(x, labels, 9)
        moved = torch.empty_like(x)
        cuda.integrate(x, labels, got[1], moved)
        pending = not torch.cuda.current_stream().query()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert pending, "class_stats or integrate waited for the GPU"
    for a, b in zip(got, want):
        assert_close(a, b, F64)
    assert torch.equal(moved, x + got[1][labels])


@gpu
def test_public_class_stats_with_arbitrary_labels():
    x, labels = make_classes(60, 5, 3, seed=1)
    raw = torch.tensor([3, 17, 99])[labels]
    classes, counts, mean, var = ped_fast.ops.class_stats(x.to(DEVICE), raw.to(DEVICE), backend="cuda")
    assert classes.tolist() == [3, 17, 99]
    for c in range(3):
        rows = x[labels == c]
        assert int(counts[c]) == rows.shape[0]
        assert_close(mean[c].cpu(), rows.mean(0), 1e-12)
        assert_close(var[c].cpu(), rows.var(0, correction=0), 1e-12)


# pairwise_forces -----------------------------------------------------------


def means_and_radii(c, d, seed, separation=1.0):
    return on_gpu(*shared_means_and_radii(c, d, seed, separation))


def assert_forces_close(got, want):
    for step, (a, b) in enumerate(zip(got, want)):
        assert a.delta.device == b.delta.device
        assert_close(a.delta, b.delta, F64, f"delta at step {step}")
        assert a.position_change == pytest.approx(b.position_change, rel=F64, abs=1e-300)
        assert a.active_pairs == b.active_pairs
        assert torch.equal(a.coincident.cpu(), b.coincident.cpu())


@gpu
@pytest.mark.parametrize("c,d", [(1, 1), (2, 1), (2, 5), (3, 1), (7, 33), (13, 129), (33, 17), (61, 70), (100, 3)])
@pytest.mark.parametrize("coef", [0.005, 4.5])  # paper's 0.5*dt^2*k, and a = o (coef > 1)
def test_pairwise_forces_matches_reference_over_steps(c, d, coef):
    mu, radius = means_and_radii(c, d, seed=c * 100 + d)
    params = dict(nsigma=0.6, coef=coef)
    got = run_steps(cuda, mu, radius, 6, **params)
    want = run_steps(reference, mu, radius, 6, **params)
    assert got[0].evaluated_pairs == c * (c - 1) // 2
    assert_forces_close(got, want)


@gpu
@pytest.mark.parametrize("size", [5, 40])  # a few candidates per tile (one by one), many (whole tile)
def test_pairwise_forces_pruning_keeps_results(size):
    # Two tight groups far apart: after the first full evaluation, only the
    # pairs inside a group stay candidates. With 40 per group, the tile of
    # classes 0-31 against 32-63 holds 256 candidates (measured as a whole
    # tile) and 768 pruned pairs, which before were counted as evaluated too.
    g = torch.Generator().manual_seed(0)
    groups = torch.cat([torch.zeros(size, 8), torch.full((size, 8), 100.0)]).double()
    mu = groups + 0.1 * torch.randn(2 * size, 8, generator=g, dtype=torch.float64)
    radius = torch.full((2 * size,), 1.0, dtype=torch.float64)
    evaluated, want = spec_evaluated_pairs(mu, radius, 0.6, 0.005, 3)
    mu, radius = on_gpu(mu, radius)
    got = run_steps(cuda, mu, radius, 3, nsigma=0.6, coef=0.005)
    assert evaluated == [size * (2 * size - 1)] + [size * (size - 1)] * 2
    assert [f.evaluated_pairs for f in got] == evaluated
    assert_forces_close(got, want)


@gpu
def test_pruned_steps_count_the_candidates_as_cpu_and_triton_do():
    """The issue's case: C = 70, D = 5, three interleaved groups. Before, the
    first pruned step reported 2142 evaluated pairs here (every valid pair of
    a tile with more than 64 candidates) against 771 on cpu and Triton."""
    mu, radius = interleaved_groups(70, 5)
    evaluated, want = spec_evaluated_pairs(mu, radius, 0.6, 0.005, 3)
    got = run_steps(cuda, *on_gpu(mu, radius), 3, nsigma=0.6, coef=0.005)
    on_cpu = run_steps(cpu, mu, radius, 3, nsigma=0.6, coef=0.005)
    assert [f.evaluated_pairs for f in got] == [f.evaluated_pairs for f in on_cpu] == evaluated
    assert evaluated[1] < 70 * 69 // 6
    assert_forces_close(got, want)


@gpu
def test_delta_written_into_a_non_contiguous_out():
    mu, radius = means_and_radii(37, 6, seed=9)
    out = torch.full((6, 37), float("nan"), dtype=torch.float64, device=DEVICE).t()
    forces = cuda.pairwise_forces(mu, radius, nsigma=0.6, coef=0.005, bounds=cuda.make_bounds(37, DEVICE), out=out)
    assert forces.delta is out
    assert_forces_close([forces], [reference.pairwise_forces(mu, radius, nsigma=0.6, coef=0.005)])


@gpu
def test_pairwise_forces_coincident_means():
    mu, radius = means_and_radii(37, 6, seed=9)
    mu[5] = mu[2]
    mu[36] = mu[2]
    mu[20] = mu[11]
    forces = cuda.pairwise_forces(mu, radius, nsigma=0.6, coef=0.005, bounds=cuda.make_bounds(37, DEVICE))
    want = reference.pairwise_forces(mu, radius, nsigma=0.6, coef=0.005)
    assert forces.coincident.tolist() == [[2, 5], [2, 36], [5, 36], [11, 20]]
    assert torch.isfinite(forces.delta).all()
    assert_forces_close([forces], [want])


def test_flagged_pairs_lists_the_flags_in_order(monkeypatch):
    # The coincident pairs are read from the C x C flags on the device, a
    # block of rows per torch.nonzero call; plain torch, so checked here on
    # CPU tensors, with blocks of a row or two.
    flags = torch.zeros(9, 9, dtype=torch.uint8)
    for i, j in [(0, 3), (0, 8), (2, 5), (6, 7), (7, 8)]:
        flags[i, j] = 1
    want = torch.nonzero(flags)
    for elements in (9, 18, 81, 1 << 28):
        monkeypatch.setattr(cuda, "FLAG_ELEMENTS", elements)
        assert torch.equal(cuda.flagged_pairs(flags), want)


COINCIDENT_MEMORY_SCRIPT = """
import torch
from ped_fast import cuda

def hwm():
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM"))

C = 20_000  # a 400 MB C x C flag matrix
g = torch.Generator().manual_seed(0)
mu = torch.randn(C, 2, generator=g, dtype=torch.float64).cuda()
radius = torch.full((C,), 1e-3, dtype=torch.float64, device="cuda")
cuda.pairwise_forces(mu, radius, nsigma=0.6, coef=0.005, bounds=cuda.make_bounds(C, mu.device))  # warm-up
mu[7] = mu[3]
open("/proc/self/clear_refs", "w").write("5")
before = hwm()
forces = cuda.pairwise_forces(mu, radius, nsigma=0.6, coef=0.005, bounds=cuda.make_bounds(C, mu.device))
print(forces.coincident.tolist(), hwm() - before)
"""


@gpu
@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc to read peak memory")
def test_coincident_means_copy_only_their_pairs_to_the_host():
    """Before, two coincident means made the extension copy the whole C x C
    flag matrix to the host (400 MB here, 2.5 GB at C = 50,000)."""
    done = subprocess.run([sys.executable, "-c", COINCIDENT_MEMORY_SCRIPT], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    pairs, grown = done.stdout.rsplit(maxsplit=1)
    assert pairs == "[[3, 7]]"
    assert int(grown) < 50 * 2**20, f"host peak memory grew by {int(grown) / 2**20:.0f} MB"


@gpu
def test_pairwise_forces_deterministic():
    mu, radius = means_and_radii(150, 300, seed=4)
    first = run_steps(cuda, mu, radius, 4, nsigma=0.6, coef=0.005)
    second = run_steps(cuda, mu, radius, 4, nsigma=0.6, coef=0.005)
    for a, b in zip(first, second):
        assert torch.equal(a.delta, b.delta)
        assert a.position_change == b.position_change
        assert (a.evaluated_pairs, a.active_pairs) == (b.evaluated_pairs, b.active_pairs)


# integrate -----------------------------------------------------------------


def shifts(c, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(c, d, generator=g, dtype=torch.float64).to(dtype).to(DEVICE)


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,d,c", [(1, 1, 1), (5, 3, 5), (37, 1, 2), (301, 67, 11), (64, 8, 3), (1000, 2048, 7)])
def test_integrate_out_of_place_equals_reference(dtype, n, d, c):
    x, labels = on_gpu(*make_classes(n, d, c, dtype=dtype, seed=n))
    shift = shifts(c, d, dtype)
    before = x.clone()
    out = torch.empty_like(x)
    cuda.integrate(x, labels, shift, out)
    # One addition per element in the same dtype on both sides: bitwise equal.
    assert torch.equal(out, reference.integrate(x, labels, shift, torch.empty_like(x)))
    assert torch.equal(x, before)


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_integrate_in_place(dtype):
    x, labels = on_gpu(*make_classes(257, 32, 4, dtype=dtype, seed=2))
    shift = shifts(4, 32, dtype)
    expected = x + shift[labels]
    address = x.data_ptr()
    result = cuda.integrate(x, labels, shift, x)
    assert result is x and x.data_ptr() == address
    assert torch.equal(x, expected)


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_integrate_strided_and_misaligned(dtype):
    x, labels = on_gpu(*make_classes(64, 12, 3, seed=4, dtype=dtype))
    shift = shifts(3, 12, dtype)
    expected = x + shift[labels]
    for start in (0, 1, 4, 7):  # aligned for 16-byte vectors or not
        wide = torch.zeros(64, 30, dtype=dtype, device=DEVICE)
        wide[:, start:start + 12] = x
        cuda.integrate(wide[:, start:start + 12], labels, shift, wide[:, start:start + 12])
        assert torch.equal(wide[:, start:start + 12], expected)
        assert torch.equal(wide[:, :start], torch.zeros(64, start, dtype=dtype, device=DEVICE))
    transposed = x.t().contiguous().t()  # columns contiguous, rows not
    cuda.integrate(transposed, labels, shift, transposed)
    assert torch.equal(transposed, expected)
    out = torch.empty(12, 64, dtype=dtype, device=DEVICE).t()
    cuda.integrate(x, labels, shift, out)
    assert torch.equal(out, expected)


# the driver ----------------------------------------------------------------


@gpu
@pytest.mark.parametrize("case", sorted(GOLDEN))
def test_golden_float64(case):
    data, expected = golden_case(case)
    x, g = (torch.from_numpy(data[k]).to(DEVICE) for k in ("X", "G"))
    result = ped_fast.ped(x, data["y"], reference=g, backend="cuda", **expected["params"])
    assert result.backend == "cuda" and result.features.device == x.device
    # 1e-9: the golden README's agreement for float64 shifts and position changes.
    np.testing.assert_allclose(result.shift.cpu().numpy(), data["shift"], rtol=0, atol=1e-9)
    assert result.steps == expected["steps_taken"]
    np.testing.assert_allclose(result.position_changes, expected["position_change"], rtol=1e-9, atol=0)
    np.testing.assert_allclose(result.features.cpu().numpy(), data["X"] + data["shift"][data["y"]], rtol=0, atol=1e-9)


@gpu
@pytest.mark.parametrize("case", sorted(GOLDEN))
def test_golden_float32_matches_float64(case):
    data, expected = golden_case(case)
    args = dict(backend="cuda", **expected["params"])
    x, g = (torch.from_numpy(data[k]).to(DEVICE) for k in ("X", "G"))
    exact = ped_fast.ped(x, data["y"], reference=g, **args)
    single = ped_fast.ped(x.float(), data["y"], reference=g.float(), **args)
    assert single.shift.dtype == torch.float32 and single.features.dtype == torch.float32
    assert single.steps == exact.steps
    # 1e-4 relative in the Frobenius norm: the float32 contract.
    err = torch.linalg.vector_norm(single.shift.double() - exact.shift)
    assert err <= 1e-4 * torch.linalg.vector_norm(exact.shift)


@gpu
def test_ped_arbitrary_labels_inplace_and_deterministic():
    x, labels = make_classes(500, 48, 3, seed=7, spread=1.0, separation=0.3)
    raw = torch.tensor([3, 17, 99])[labels].to(DEVICE)
    x = x.to(DEVICE)
    want = ped_fast.ped(x, raw, rescale="self", backend="reference")
    first = ped_fast.ped(x, raw, rescale="self", backend="cuda")
    second = ped_fast.ped(x, raw, rescale="self", backend="cuda")
    assert first.classes.tolist() == [3, 17, 99] and first.steps == want.steps
    assert_close(first.shift, want.shift, F64, "shift")
    assert torch.equal(first.features, second.features) and first.position_changes == second.position_changes
    moved = x.clone()
    result = ped_fast.ped(moved, raw, rescale="self", backend="cuda", inplace=True)
    assert result.features is moved and torch.equal(moved, first.features)


@gpu
def test_runs_on_the_current_stream():
    x, labels = on_gpu(*make_classes(3000, 70, 9, seed=8))
    want = reference.class_stats(x, labels, 9)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        got = cuda.class_stats(x, labels, 9)
        moved = torch.empty_like(x)
        cuda.integrate(x, labels, got[1].to(x.dtype), moved)
    torch.cuda.current_stream().wait_stream(stream)
    for a, b in zip(got, want):
        assert_close(a, b, F64)
    assert torch.equal(moved, x + got[1][labels])


@gpu
def test_second_device():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    device = torch.device("cuda", 1)
    x, labels = (t.to(device) for t in make_classes(300, 20, 4, seed=6))
    got = cuda.class_stats(x, labels, 4)
    assert got[1].device == device
    assert torch.cuda.current_device() == 0
    for a, b in zip(got, reference.class_stats(x, labels, 4)):
        assert_close(a, b, F64)
