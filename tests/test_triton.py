"""The Triton backend (ped_fast/triton.py, kernels/) against the reference path.

With a CUDA device the kernels are compiled and run on CUDA tensors. Without
one they run on CPU tensors through Triton's interpreter, which needs
TRITON_INTERPRET=1 in the environment before triton is first imported.
Nothing in ped_fast imports triton before a Triton kernel is first used, so
setting it here, at collection, is early enough unless another module
imported triton first; `kernel_mode` below then fails with that explanation.
The public API takes backend="triton" on CPU tensors under the interpreter,
so the tests at the end go through it, as a user debugging a kernel would.

Without a GPU and without triton every test skips; on a GPU machine a Triton
backend that cannot run (triton missing, say) fails every test
(conftest.gpu_test_outcome).
"""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import GOLDEN, golden_case, make_classes, require_backend

INTERPRET = not torch.cuda.is_available()
if INTERPRET:
    os.environ["TRITON_INTERPRET"] = "1"

import ped_fast  # noqa: E402
from ped_fast import reference  # noqa: E402
from ped_fast import triton as backend  # noqa: E402

DEVICE = torch.device("cpu" if INTERPRET else "cuda")
pytestmark = pytest.mark.interpreter if INTERPRET else pytest.mark.gpu

# Tolerances, all float64 comparisons (float32 inputs convert to float64
# exactly, and every backend computes the statistics and forces in float64):
# - class_stats: the same values summed in another order and with another
#   formula (shifted one-pass here, two-pass in the reference): a few n * 2^-53
#   relative to the sums, n <= 600 here, i.e. < 1e-13; measured: 2e-15
#   relative in the means, 2e-14 absolute in variances of about 4.
STATS_TOL = dict(rtol=1e-12, atol=1e-12)
# - pairwise_forces: the reference forms rowsum(W) * mu - W @ mu, which cancels
#   to about C * 2^-53 * max(w) * max|mu| (< 1e-13 for these means), while the
#   kernel sums w_ij (mu_i - mu_j) directly; measured < 1e-15.
FORCES_TOL = dict(rtol=1e-10, atol=1e-12)
# - the golden cases: docs/spec.md §6.2, float64 agreement with the
#   published code: shifts within 1e-9 absolute, position changes 1e-9 relative.
GOLDEN_SHIFT_ATOL = 1e-9
GOLDEN_P_RTOL = 1e-9
# integrate performs one addition in X's dtype, like the reference: exact.

DTYPES = (torch.float32, torch.float64)


@pytest.fixture(scope="module", autouse=True)
def kernel_mode():
    require_backend("triton")
    import triton.language.standard
    from triton.runtime.interpreter import InterpretedFunction

    # triton's own jit functions (tl.zeros, ...) and ours must both have been
    # defined in the mode this machine needs.
    for function in (triton.language.standard.zeros, backend._kernels().integrate_kernel):
        if isinstance(function, InterpretedFunction) != INTERPRET:
            pytest.fail(
                f"triton was imported before this module set TRITON_INTERPRET=1 ({'no' if INTERPRET else 'a'} CUDA "
                "device here), so its kernels cannot run as they must. Set it in tests/conftest.py when "
                "torch.cuda.is_available() is False.",
                pytrace=False,
            )


def _generator(seed):
    return torch.Generator().manual_seed(seed)


def _layout(x, layout):
    """x (N x D) with the same values, laid out as asked."""
    if layout == "contiguous":
        return x.contiguous()
    if layout == "row_stride":  # rows contiguous, 3 columns of padding between rows
        wide = torch.full((x.shape[0], x.shape[1] + 3), float("nan"), dtype=x.dtype, device=x.device)
        wide[:, : x.shape[1]] = x
        return wide[:, : x.shape[1]]
    if layout == "transposed":  # column-major: rows are not contiguous
        return x.t().contiguous().t()
    raise ValueError(layout)


# ---------------------------------------------------------------- class_stats

# (name, labels, D): labels are arbitrary integers, mapped to 0..C-1 as ped() does.
STATS_CASES = [
    ("one_row", [5], 1),
    ("one_class", [2] * 9, 5),
    ("two_classes_d1", [0, 1, 1, 0, 1, 0, 0, 1, 1, 1, 0], 1),
    ("n_equals_c", [6, 0, 4, 2, 5, 1, 3], 3),
    ("labels_3_17_99_singleton", [3, 17, 99] * 13 + [42], 33),
    ("chunks_and_column_blocks", [1] * 520 + [0] * 50 + [2] * 30, 130),
]


def _stats_input(labels, dim, dtype, seed):
    g = _generator(seed)
    y = torch.tensor(labels)
    _, index = torch.unique(y, sorted=True, return_inverse=True)
    # An offset far from zero, as real features have, tests the shifted sums.
    x = (torch.randn(len(labels), dim, generator=g, dtype=torch.float64) * 2 + 40).to(dtype)
    return x.to(DEVICE), index.to(DEVICE), int(index.max()) + 1


@pytest.mark.parametrize("layout", ["contiguous", "row_stride", "transposed"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,labels,dim", STATS_CASES, ids=[c[0] for c in STATS_CASES])
def test_class_stats_matches_reference(name, labels, dim, dtype, layout):
    x, index, num_classes = _stats_input(labels, dim, dtype, seed=len(labels) * 31 + dim)
    x = _layout(x, layout)
    counts, mean, var = backend.class_stats(x, index, num_classes)
    ref_counts, ref_mean, ref_var = reference.class_stats(x, index, num_classes)
    assert counts.dtype == torch.int64 and mean.dtype == torch.float64 and var.dtype == torch.float64
    assert torch.equal(counts, ref_counts)
    torch.testing.assert_close(mean, ref_mean, **STATS_TOL)
    torch.testing.assert_close(var, ref_var, **STATS_TOL)


def test_class_stats_empty_class_is_zero():
    # ops.class_stats never passes an empty class, but the launcher contract
    # (counts via bincount(minlength=C)) allows one: mean and variance 0.
    x, _, _ = _stats_input(list(range(7)), 4, torch.float64, seed=7)
    index = torch.tensor([0, 2, 2, 3, 0, 3, 3], device=DEVICE)
    counts, mean, var = backend.class_stats(x, index, 5)
    ref = reference.class_stats(x, index, 5)
    assert counts.tolist() == [2, 0, 2, 3, 0]
    torch.testing.assert_close(mean, ref[1], **STATS_TOL)
    torch.testing.assert_close(var, ref[2], **STATS_TOL)
    assert not mean[1].any() and not var[4].any()


def test_class_stats_is_deterministic():
    x, index, num_classes = _stats_input([1] * 520 + [0] * 80, 130, torch.float32, seed=3)
    first = backend.class_stats(x, index, num_classes)
    second = backend.class_stats(x, index, num_classes)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_class_stats_propagates_non_finite():
    # ped() detects non-finite features from non-finite statistics.
    x, index, num_classes = _stats_input([0, 0, 1, 1], 3, torch.float64, seed=5)
    x[2, 1] = float("nan")
    _, mean, var = backend.class_stats(x, index, num_classes)
    assert torch.isnan(mean[1, 1]) and torch.isnan(var[1, 1])
    assert torch.isfinite(mean[0]).all() and torch.isfinite(var[0]).all()


# ------------------------------------------------------------ pairwise_forces

def _means(num_classes, dim, seed, spread=1.0):
    g = _generator(seed)
    mu = torch.randn(num_classes, dim, generator=g, dtype=torch.float64) * spread
    radius = torch.rand(num_classes, generator=g, dtype=torch.float64) * 2 + 0.1
    return mu, radius


def _forces_cases():
    cases = {}
    cases["one_class"] = (*_means(1, 4, seed=1), 0.6, 0.005)
    cases["two_classes_d1"] = (*_means(2, 1, seed=2), 0.6, 0.005)
    mu, radius = _means(2, 3, seed=3)
    mu[1] = mu[0]
    cases["two_coincident"] = (mu, radius, 0.6, 0.005)
    # 37 classes: three tiles a side, a partial last one; some pairs overlap,
    # some do not, and classes 3 and 30 (different tiles) and 5 and 9 coincide.
    mu, radius = _means(37, 5, seed=4, spread=1.0)
    mu[30] = mu[3]
    mu[9] = mu[5]
    cases["37_classes"] = (mu, radius, 0.6, 0.005)
    # coef > 1: the magnitude is the overlap itself (min(coef * o, o) = o).
    cases["37_classes_big_step"] = (mu, radius, 0.6, 4.5)
    cases["20_classes_d130"] = (*_means(20, 130, seed=5, spread=0.05), 0.3, 0.005)
    cases["none_overlap"] = (*_means(9, 6, seed=6, spread=100.0), 0.6, 0.005)
    return cases


FORCES_CASES = _forces_cases()


def _check_forces(forces, mu, radius, nsigma, coef, *, full=True):
    ref = reference.pairwise_forces(mu, radius, nsigma=nsigma, coef=coef)
    assert forces.delta.shape == mu.shape and forces.delta.dtype == torch.float64
    torch.testing.assert_close(forces.delta, ref.delta, **FORCES_TOL)
    assert forces.position_change == pytest.approx(ref.position_change, rel=FORCES_TOL["rtol"], abs=FORCES_TOL["atol"])
    assert forces.coincident.tolist() == ref.coincident.tolist()
    assert forces.active_pairs == ref.active_pairs
    if full:
        assert forces.evaluated_pairs == ref.evaluated_pairs


@pytest.mark.parametrize("case", list(FORCES_CASES))
def test_pairwise_forces_matches_reference(case):
    mu, radius, nsigma, coef = (t.to(DEVICE) if isinstance(t, torch.Tensor) else t for t in FORCES_CASES[case])
    bounds = backend.make_bounds(mu.shape[0], DEVICE)
    out = torch.full_like(mu, float("nan"))
    forces = backend.pairwise_forces(mu, radius, nsigma=nsigma, coef=coef, bounds=bounds, out=out)
    assert forces.delta is out
    _check_forces(forces, mu, radius, nsigma, coef)
    # The full step keeps every pair's distance for later pruning.
    upper = torch.triu(torch.ones(mu.shape[0], mu.shape[0], dtype=torch.bool, device=DEVICE), diagonal=1)
    exact = torch.cdist(mu, mu, compute_mode="donot_use_mm_for_euclid_dist")
    torch.testing.assert_close(bounds.dist[upper], exact[upper], **FORCES_TOL)


def test_pairwise_forces_without_bounds():
    mu, radius, nsigma, coef = (t.to(DEVICE) if isinstance(t, torch.Tensor) else t for t in FORCES_CASES["37_classes"])
    _check_forces(backend.pairwise_forces(mu, radius, nsigma=nsigma, coef=coef, bounds=None), mu, radius, nsigma, coef)


def test_pairwise_forces_pruned_steps():
    # Classes in well separated groups: after a full step, pairs across groups
    # are pruned by the drift bound, pairs within a group are measured again.
    g = _generator(11)
    centres = torch.randn(4, 6, generator=g, dtype=torch.float64) * 40
    spread = 0.3 * torch.randn(40, 6, generator=g, dtype=torch.float64)
    mu = (centres.repeat_interleave(10, dim=0) + spread).to(DEVICE)
    radius = (torch.rand(40, generator=g, dtype=torch.float64) + 0.5).to(DEVICE)
    nsigma, coef = 0.6, 0.5
    bounds = backend.make_bounds(40, DEVICE)
    total_pairs = 40 * 39 // 2
    for step in range(3):
        forces = backend.pairwise_forces(mu, radius, nsigma=nsigma, coef=coef, bounds=bounds)
        _check_forces(forces, mu, radius, nsigma, coef, full=step == 0)
        if step == 0:
            assert forces.evaluated_pairs == total_pairs
        else:
            threshold = nsigma * (radius[:, None] + radius[None, :])
            lower = bounds.dist - bounds.drift[:, None] - bounds.drift[None, :]
            kept = ~(lower > threshold * (1.0 + backend.PRUNE_SLACK))
            expected = int(torch.triu(kept, diagonal=1).sum())
            assert forces.evaluated_pairs == expected
            assert 0 < expected < total_pairs
        assert forces.active_pairs > 0
        mu = mu + forces.delta
        bounds.advance(forces.delta)


def test_active_pairs_are_the_pairs_with_a_weight():
    """docs/spec.md §1.6: overlapping_pairs counts the pairs with a non-zero
    weight. Before, the kernel counted the overlapping pairs, which with
    coef = 0 (time_step=0 or force_constant=0) weigh nothing: ped() on a
    60 x 4, 3-class input reported [3] here and [0] on the other backends."""
    mu, radius, nsigma, _ = (t.to(DEVICE) if isinstance(t, torch.Tensor) else t for t in FORCES_CASES["37_classes"])
    forces = backend.pairwise_forces(mu, radius, nsigma=nsigma, coef=0.0, bounds=backend.make_bounds(37, DEVICE))
    _check_forces(forces, mu, radius, nsigma, 0.0)
    assert forces.active_pairs == 0 and forces.position_change == 0.0
    x, labels = make_classes(60, 4, 3, seed=1)
    for options in (dict(time_step=0.0), dict(force_constant=0.0)):
        result = ped_fast.ped(x.to(DEVICE), labels.to(DEVICE), rescale="self", backend="triton", **options)
        assert result.diagnostics["overlapping_pairs"] == [0] and result.position_changes == [0.0]
    overlapping = ped_fast.ped(x, labels, rescale="self", backend="reference").diagnostics["overlapping_pairs"]
    assert overlapping[0] == 3  # with coef > 0 the same pairs have weights


def test_delta_written_into_a_non_contiguous_out():
    """Before, the launcher wrote delta as if `out` were contiguous."""
    mu, radius, nsigma, coef = (t.to(DEVICE) if isinstance(t, torch.Tensor) else t for t in FORCES_CASES["37_classes"])
    out = torch.full((mu.shape[1], mu.shape[0]), float("nan"), dtype=torch.float64, device=DEVICE).t()
    forces = backend.pairwise_forces(mu, radius, nsigma=nsigma, coef=coef, bounds=backend.make_bounds(37, DEVICE),
                                     out=out)
    assert forces.delta is out
    _check_forces(forces, mu, radius, nsigma, coef)


# ------------------------------------------------------------------ integrate

INTEGRATE_SHAPES = [(1, 1, 1), (7, 3, 7), (50, 1, 2), (203, 130, 5)]


@pytest.mark.parametrize("mode", ["new_out", "in_place", "x_row_stride", "out_transposed"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,dim,num_classes", INTEGRATE_SHAPES)
def test_integrate_matches_reference(n, dim, num_classes, dtype, mode):
    g = _generator(n * 7 + dim)
    x = torch.randn(n, dim, generator=g, dtype=torch.float64).to(dtype).to(DEVICE)
    index = torch.randint(0, num_classes, (n,), generator=g).to(DEVICE)
    shift = torch.randn(num_classes, dim, generator=g, dtype=torch.float64).to(dtype).to(DEVICE)
    expected = reference.integrate(x, index, shift, torch.empty_like(x))
    if mode == "new_out":
        out = backend.integrate(x, index, shift, torch.empty_like(x))
    elif mode == "in_place":
        x = x.clone()
        out = backend.integrate(x, index, shift, x)
        assert out is x
    elif mode == "x_row_stride":
        out = backend.integrate(_layout(x, "row_stride"), index, shift, torch.empty_like(x))
    else:
        out = backend.integrate(x, index, shift, _layout(torch.empty_like(x), "transposed"))
    assert torch.equal(out, expected)


# ------------------------------------------- offsets (C * D or C * C > 2^31)

@pytest.mark.skipif(not INTERPRET, reason="the interpreter shows the offsets' types; compiled kernels do not")
def test_every_block_offset_is_int64(monkeypatch):
    # C x C and C x D arrays pass 2^31 elements on one large GPU (C = 46341,
    # or C * D = 2^31), which cannot be allocated here. What overflows there
    # is an offset computed in int32, so the interpreter records the type of
    # every offset that the kernels add to a pointer: all of them must be
    # int64 (scalar offsets of a few units, e.g. params_ptr + 1, aside).
    from triton.runtime import interpreter

    narrow = []
    add = interpreter.InterpreterBuilder.create_addptr

    def create_addptr(self, ptr, offset):
        if offset.data.size > 1 and offset.data.dtype != np.int64:
            narrow.append(offset.data.dtype)
        return add(self, ptr, offset)

    monkeypatch.setattr(interpreter.InterpreterBuilder, "create_addptr", create_addptr)
    mu, radius = _means(20, 5, seed=8)
    bounds = backend.make_bounds(20, DEVICE)
    for _ in range(2):  # a full step, then a pruned one
        forces = backend.pairwise_forces(mu, radius, nsigma=0.6, coef=0.005, bounds=bounds)
        assert not narrow, f"pairwise_forces: {len(narrow)} offsets of type {narrow[0]}"
        mu = mu + forces.delta
        bounds.advance(forces.delta)
    x, index, num_classes = _stats_input([1] * 40 + [0] * 300 + [2] * 5, 20, torch.float32, seed=9)
    counts, mean, _ = backend.class_stats(x, index, num_classes)
    assert not narrow, f"class_stats: {len(narrow)} offsets of type {narrow[0]}"
    backend.integrate(x, index, mean.float(), torch.empty_like(x))
    assert not narrow, f"integrate: {len(narrow)} offsets of type {narrow[0]}"
    assert int(counts.sum()) == 345  # the kernels did run


# --------------------------------------------------- grid limits (large D)

class _RecordedKernel:
    """Stands in for a kernel: records the grid of each launch, runs nothing."""

    def __init__(self, grids, name):
        self.grids, self.name = grids, name

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.grids.append((self.name, grid))


def test_launch_grids_stay_within_cuda_limits(monkeypatch):
    """CUDA allows 2^31 - 1 programs on a grid's first axis and 65535 on the
    others. Before, the second axis counted column blocks: a launch failed
    above D = 65535 * 16 (displacement) or 65535 * 128 (the others). The
    kernels are not run (D here is too wide for the interpreter): the
    launcher's grids are recorded, and the test below checks that the
    kernels cover every column with a capped grid."""
    grids = []
    names = ["partial_sums_kernel", "finalize_kernel", "pair_weights_kernel", "displacement_kernel", "integrate_kernel"]
    kernels = type("Kernels", (), {name: _RecordedKernel(grids, name) for name in names})
    monkeypatch.setattr(backend, "_kernels", lambda: kernels)
    dim = 65535 * 128 + 1
    # torch.empty only reserves memory: nothing here is written or read but the
    # tiny tables, so the 200 MB buffers cost no RAM.
    x = torch.empty(1, dim, dtype=torch.float32, device=DEVICE)
    index = torch.zeros(1, dtype=torch.int64, device=DEVICE)
    backend.class_stats(x, index, 1)
    backend.integrate(x, index, torch.empty(1, dim, dtype=torch.float32, device=DEVICE), x)
    mu = torch.empty(2, dim, dtype=torch.float64, device=DEVICE)
    backend.pairwise_forces(mu, torch.ones(2, dtype=torch.float64, device=DEVICE), nsigma=0.6, coef=0.005,
                            bounds=backend.make_bounds(2, DEVICE))
    assert sorted({name for name, _ in grids}) == sorted(names)
    for name, grid in grids:
        assert grid[0] <= 2**31 - 1 and all(1 <= g <= 65535 for g in grid[1:]), (name, grid)


def test_kernels_cover_every_column_block_with_a_capped_grid(monkeypatch):
    """With the second grid axis capped at 2 programs, each program takes
    several column blocks (130 or 300 columns: 3 blocks of 128, 4 and 19
    blocks of 16)."""
    monkeypatch.setattr(backend, "MAX_GRID_Y", 2)
    x, index, num_classes = _stats_input([1] * 300 + [0] * 40 + [2] * 5, 300, torch.float32, seed=13)
    got = backend.class_stats(x, index, num_classes)
    want = reference.class_stats(x, index, num_classes)
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1], **STATS_TOL)
    torch.testing.assert_close(got[2], want[2], **STATS_TOL)
    shift = torch.randn(num_classes, 300, generator=_generator(14)).to(DEVICE)
    assert torch.equal(backend.integrate(x, index, shift, torch.empty_like(x)),
                       reference.integrate(x, index, shift, torch.empty_like(x)))
    for dim in (60, 300):
        mu, radius = (t.to(DEVICE) for t in _means(20, dim, seed=dim, spread=0.3))
        nsigma = 0.6 * (dim / 6) ** 0.5  # radii about sqrt(dim) times smaller than the distances: some overlap
        forces = backend.pairwise_forces(mu, radius, nsigma=nsigma, coef=0.005, bounds=backend.make_bounds(20, DEVICE))
        _check_forces(forces, mu, radius, nsigma, 0.005)
        assert forces.active_pairs > 0


# ------------------------------------------------ through the public API

@pytest.mark.parametrize("case", list(GOLDEN))
def test_golden_cases_through_ped(case):
    data, expected = golden_case(case)
    x = torch.from_numpy(data["X"]).to(DEVICE)
    g = torch.from_numpy(data["G"]).to(DEVICE)
    result = ped_fast.ped(x, torch.from_numpy(data["y"]), reference=g, backend="triton", **expected["params"])
    assert result.backend == "triton"
    assert result.steps == expected["steps_taken"]
    assert result.position_changes == pytest.approx(expected["position_change"], rel=GOLDEN_P_RTOL)
    torch.testing.assert_close(result.shift.cpu(), torch.from_numpy(data["shift"]), rtol=0, atol=GOLDEN_SHIFT_ATOL)
    moved = x + result.shift[torch.from_numpy(data["y"]).to(DEVICE)]
    assert torch.equal(result.features, moved)


def test_float32_inplace_through_ped_matches_reference_backend():
    data, _ = golden_case("small_overlap")
    x = torch.from_numpy(data["X"]).float().to(DEVICE)
    y = torch.from_numpy(data["y"])
    params = GOLDEN["small_overlap"]["params"]
    ref = ped_fast.ped(x, y, rescale="self", backend="reference", **params)
    moved = x.clone()
    result = ped_fast.ped(moved, y, rescale="self", inplace=True, backend="triton", **params)
    assert result.features is moved and result.backend == "triton"
    assert result.steps == ref.steps == GOLDEN["small_overlap"]["steps_taken"]
    assert result.position_changes == pytest.approx(ref.position_changes, rel=1e-12)  # float64 math on equal inputs
    # Shifts agree in float64 to ~1e-13; cast to float32 they may differ by one
    # rounding (2^-24 relative), and so may the moved features.
    torch.testing.assert_close(result.shift, ref.shift, rtol=2**-23, atol=0)
    torch.testing.assert_close(moved, ref.features, rtol=2**-23, atol=1e-6)


def _public_stats_input():
    x, index, _ = _stats_input([3, 17, 99] * 13 + [42], 33, torch.float64, seed=10)
    return x, torch.tensor([3, 17, 42, 99])[index.cpu()].to(DEVICE)


def test_ops_class_stats_through_the_public_api():
    x, labels = _public_stats_input()
    got = ped_fast.ops.class_stats(x, labels, backend="triton")
    want = ped_fast.ops.class_stats(x, labels, backend="reference")
    assert got[0].tolist() == [3, 17, 42, 99] and torch.equal(got[1], want[1])
    torch.testing.assert_close(got[2], want[2], **STATS_TOL)
    torch.testing.assert_close(got[3], want[3], **STATS_TOL)


def test_ops_pairwise_forces_through_the_public_api():
    mu, radius, nsigma, _ = (t.to(DEVICE) if isinstance(t, torch.Tensor) else t for t in FORCES_CASES["37_classes"])
    forces = ped_fast.ops.pairwise_forces(mu, radius, nsigma=nsigma, backend="triton")
    ref = ped_fast.ops.pairwise_forces(mu, radius, nsigma=nsigma, backend="reference")
    torch.testing.assert_close(forces.delta, ref.delta, **FORCES_TOL)
    assert forces.coincident.tolist() == ref.coincident.tolist() and forces.active_pairs == ref.active_pairs


def test_ops_integrate_through_the_public_api():
    x, labels = _public_stats_input()
    shift = torch.randn(4, x.shape[1], generator=_generator(12), dtype=x.dtype).to(DEVICE)
    moved = x.clone()
    assert ped_fast.ops.integrate(moved, labels, shift, inplace=True, backend="triton") is moved
    assert torch.equal(moved, ped_fast.ops.integrate(x, labels, shift, backend="reference"))


def test_ped_score_through_the_public_api():
    data, expected = golden_case("small_overlap")
    x = torch.from_numpy(data["X"]).to(DEVICE)
    y = torch.from_numpy(data["y"]).to(DEVICE)
    g = torch.from_numpy(data["G"]).to(DEVICE)
    args = dict(reference=g, return_baseline=True, **expected["params"])
    got = ped_fast.ped_score(x, y, backend="triton", **args)
    want = ped_fast.ped_score(x, y, backend="reference", **args)
    assert got.result.backend == "triton"
    # The scores are smooth functions of the shift, which agrees to 1e-9
    # (GOLDEN_SHIFT_ATOL): 1e-8 relative leaves room for their conditioning.
    assert got.ped == pytest.approx(want.ped, rel=1e-8)
    assert got.baseline == pytest.approx(want.baseline, rel=1e-8)


def test_status_reports_version_and_device():
    import triton

    available, reason = backend.status()
    assert available, reason
    assert f"triton {triton.__version__.split('+')[0]}" in reason
    assert backend.interpreting() == INTERPRET
    if INTERPRET:
        assert "interpreter (TRITON_INTERPRET=1)" in reason
        assert ped_fast.available_backends()["triton"] == ped_fast.BackendStatus(True, reason)
    else:
        assert reason.endswith(f"on {torch.cuda.get_device_name()}")


def test_cpu_tensors_without_the_interpreter_name_it():
    # A fresh process without TRITON_INTERPRET: the kernels are compiled, so
    # CPU tensors are refused, by an error that says how to debug on the CPU.
    script = """
import torch, ped_fast
x = torch.randn(6, 3, dtype=torch.float64)
y = torch.tensor([0, 0, 1, 1, 2, 2])
for call in (lambda: ped_fast.ped(x, y, backend="triton"), lambda: ped_fast.ops.class_stats(x, y, backend="triton")):
    try:
        call()
    except (RuntimeError, ValueError) as error:
        print(type(error).__name__, error)
    else:
        print("accepted")
print("status", ped_fast.available_backends()["triton"])
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 3, done.stdout
    for line in lines[:2]:
        assert "backend 'triton'" in line and "TRITON_INTERPRET=1" in line, line
    # Compiled kernels: usable with a GPU, and without one unavailable.
    assert lines[2].startswith(f"status BackendStatus(available={torch.cuda.is_available()}"), lines[2]
