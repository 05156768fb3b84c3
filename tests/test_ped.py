"""ped(): odd shapes on every backend against the reference path, input
checks, in-place semantics and diagnostics."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import ped_fast
from conftest import BACKENDS, DTYPES, FAST_BACKENDS, TOLERANCE, assert_close, golden_case, make_classes

ODD_CASES = {  # name: (N, D, C, extra ped() options)
    "one class": (20, 4, 1, {}),
    "two classes": (30, 3, 2, {}),
    "one dimension": (40, 1, 3, {}),
    "N equals C": (6, 5, 6, {}),
    "non power of two": (333, 37, 7, {}),
    "rescale self": (120, 9, 5, {"rescale": "self"}),
    "no rescale": (120, 9, 5, {"rescale": None}),
    "coef above one": (90, 6, 4, {"time_step": 3.0}),
}


def reference_for(x, seed=7):
    g = torch.Generator().manual_seed(seed)
    dtype = x.dtype if isinstance(x, torch.Tensor) else torch.from_numpy(np.empty(0, x.dtype)).dtype
    return torch.randn(50, x.shape[1], generator=g, dtype=torch.float64).to(dtype) * 0.8 + 0.1


def run(x, labels, backend, **options):
    if options.get("rescale", "reference") == "reference":
        options.setdefault("reference", reference_for(x))
    return ped_fast.ped(x, labels, backend=backend, **options)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(ODD_CASES))
def test_backend_equals_reference(backend, dtype, case):
    n, d, c, options = ODD_CASES[case]
    x, labels = make_classes(n, d, c, dtype=dtype, seed=n * d)
    got = run(x, labels, backend, **options)
    want = run(x, labels, "reference", **options)
    assert got.steps == want.steps
    assert got.backend == backend and want.backend == "reference"
    np.testing.assert_allclose(got.position_changes, want.position_changes, rtol=TOLERANCE[torch.float64])
    assert_close(got.shift, want.shift, TOLERANCE[dtype], "shift")
    assert_close(got.features, want.features, TOLERANCE[dtype], "features")


def test_cases_move_something():
    """The odd cases above are not all trivially zero-step."""
    moved = [case for case, (n, d, c, o) in ODD_CASES.items() if run(*make_classes(n, d, c, seed=n * d), "reference", **o).steps]
    assert len(moved) >= len(ODD_CASES) - 2  # "one class" and perhaps "N equals C" cannot move


@pytest.mark.parametrize("backend", BACKENDS)
def test_arbitrary_labels_singletons_and_noncontiguous(backend):
    x, idx = make_classes(80, 12, 4, seed=11)
    labels = torch.tensor([99, 3, 17, 42])[idx].numpy()
    labels[5] = 1000  # a class with one sample
    wide = np.zeros((80, 30))
    wide[:, 3:15] = x.numpy()
    view = wide[:, 3:15]
    result = run(view, labels, backend)
    dense = run(np.ascontiguousarray(view), labels, "reference")
    assert result.classes.tolist() == [3, 17, 42, 99, 1000]
    assert result.diagnostics["singleton_classes"] == [1000]
    assert result.steps == dense.steps > 0
    np.testing.assert_allclose(result.shift, dense.shift, rtol=0, atol=1e-10 * np.abs(dense.shift).max())
    np.testing.assert_allclose(result.features, view + result.shift[np.searchsorted(result.classes, labels)], atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_in_torch_out_numpy_in_numpy_out(backend):
    x, labels = make_classes(50, 6, 3, seed=2, dtype=torch.float32)
    g = reference_for(x)
    r_torch = ped_fast.ped(x, labels, reference=g, backend=backend)
    assert isinstance(r_torch.features, torch.Tensor) and r_torch.features.dtype == torch.float32
    assert isinstance(r_torch.shift, torch.Tensor) and r_torch.shift.dtype == torch.float32
    r_numpy = ped_fast.ped(x.numpy(), labels.numpy(), reference=g.numpy(), backend=backend)
    assert isinstance(r_numpy.features, np.ndarray) and r_numpy.features.dtype == np.float32
    np.testing.assert_array_equal(r_numpy.features, r_torch.features.numpy())


@pytest.mark.parametrize("backend", BACKENDS)
def test_inputs_are_not_modified(backend):
    data, expected = golden_case("small_overlap")
    copies = {k: v.copy() for k, v in data.items()}
    result = ped_fast.ped(data["X"], data["y"], reference=data["G"], backend=backend)
    assert result.steps == expected["steps_taken"]
    for key in data:
        np.testing.assert_array_equal(data[key], copies[key])
    assert not np.shares_memory(result.features, data["X"])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_inplace_updates_the_callers_array(backend, kind):
    data, expected = golden_case("default_hparams")
    x = data["X"].copy() if kind == "numpy" else torch.from_numpy(data["X"].copy())
    result = ped_fast.ped(x, data["y"], reference=data["G"], backend=backend, inplace=True)
    assert result.features is x
    moved = x if kind == "numpy" else x.numpy()
    np.testing.assert_allclose(moved, data["X"] + data["shift"][data["y"]], rtol=0, atol=1e-9)


MEMORY_SCRIPT = textwrap.dedent(
    """
    import numpy as np, ped_fast
    def hwm_kb():
        return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
    rng = np.random.default_rng(0)
    y = rng.integers(0, 20, 20000)
    x = rng.standard_normal((20000, 500)) * 2 + rng.standard_normal((20, 500))[y]
    g = rng.standard_normal((100, 500))
    ped_fast.ped(x[:100].copy(), y[:100], reference=g)  # load everything once
    open("/proc/self/clear_refs", "w").write("5")
    before = hwm_kb()
    before_sum = x.sum()
    result = ped_fast.ped(x, y, reference=g, backend="cpu", inplace=True)
    assert result.steps > 0 and result.features is x and x.sum() != before_sum
    print((hwm_kb() - before) * 1024 / x.nbytes)
    """
)


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc to read peak memory")
@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_inplace_allocates_no_copy_of_x(backend):
    # A fixed mmap threshold, so that no block freed by the warm-up call is
    # reused from the heap without raising the high-water mark.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT], capture_output=True, text=True, check=True, env=env)
    extra = float(out.stdout.strip().splitlines()[-1])
    # A copy of X would be >= 1.0; C x D statistics here are ~0.5% of X.
    assert extra < 0.25, f"peak memory grew by {extra:.2f} x the size of X"


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_reference_std_is_floored_by_eps(backend):
    x, labels = make_classes(60, 3, 3, seed=4, separation=0.01, spread=0.02)
    g = np.ones((10, 3))
    g[:, 0] = np.arange(10)  # dimensions 1 and 2 have std 0
    eps = 0.05
    result = ped_fast.ped(x.numpy(), labels.numpy(), reference=g, eps=eps, backend=backend)
    scale = np.array([np.std(np.arange(10)), eps, eps])
    pair = ped_fast.ped(x.numpy(), labels.numpy(), reference=(g.mean(0), g.std(0)), eps=eps, backend=backend)
    explicit = ped_fast.ped(x.numpy(), labels.numpy(), reference=(g.mean(0), scale), eps=eps, backend=backend)
    assert result.steps > 0 and np.isfinite(result.shift).all()
    np.testing.assert_allclose(result.shift, pair.shift, rtol=1e-12, atol=0)
    np.testing.assert_allclose(result.shift, explicit.shift, rtol=1e-12, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_coincident_class_means_give_no_nan(backend):
    rng = np.random.default_rng(0)
    base = rng.standard_normal((30, 4))
    x = np.concatenate([base, base, base[:10] + 0.5])  # classes 0 and 1: the same points
    labels = np.repeat([0, 1, 2], [30, 30, 10])
    result = ped_fast.ped(x, labels, rescale=None, backend=backend)
    assert result.steps > 0
    assert np.isfinite(result.features).all() and np.isfinite(result.shift).all()
    assert result.diagnostics["coincident_means"] == [(0, 1)]
    np.testing.assert_allclose(result.shift[0], result.shift[1], rtol=0, atol=1e-12)


def test_no_overlap_means_zero_steps_and_a_copy():
    data, _ = golden_case("nsigma_0.3")
    result = ped_fast.ped(data["X"], data["y"], reference=data["G"], nsigma=0.3)
    assert result.steps == 0 and result.position_changes == [0.0]
    np.testing.assert_array_equal(result.features, data["X"])
    assert not np.shares_memory(result.features, data["X"])
    assert ped_fast.ped(data["X"], data["y"], reference=data["G"], max_steps=0).position_changes == []


def test_available_backends_explain_themselves():
    status = ped_fast.available_backends()
    assert {"reference", "cpu"} <= set(status)
    assert status["reference"].available
    for name, s in status.items():
        assert isinstance(s.available, bool) and s.reason, name


def test_backend_override_and_errors(monkeypatch):
    x, labels = make_classes(20, 3, 2, seed=0)
    monkeypatch.setenv("PED_FAST_BACKEND", "reference")
    assert ped_fast.ped(x, labels, rescale=None).backend == "reference"
    assert ped_fast.ped(x, labels, rescale=None, backend="cpu").backend == "cpu"
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        ped_fast.ped(x, labels, rescale=None, backend="gpu")


X_OK = np.random.default_rng(0).standard_normal((10, 3))
Y_OK = np.arange(10) % 2
G_OK = np.random.default_rng(1).standard_normal((5, 3))


def with_nan(a, row, col, value=np.nan):
    a = a.copy()
    a[row, col] = value
    return a


BAD_INPUT = [  # (call arguments, exception, message fragment)
    ((X_OK, Y_OK[:9]), {}, ValueError, "labels has 9 entries but features has 10 rows"),
    ((X_OK[0], Y_OK), {}, ValueError, r"features must be 2-D .* got shape \(3,\)"),
    ((X_OK[None], Y_OK), {}, ValueError, r"features must be 2-D .* got shape \(1, 10, 3\)"),
    ((np.zeros((0, 3)), Y_OK[:0]), {}, ValueError, r"features is empty: shape \(0, 3\)"),
    ((np.zeros((10, 0)), Y_OK), {}, ValueError, r"features is empty: shape \(10, 0\)"),
    ((X_OK.astype(np.int64), Y_OK), {}, TypeError, "features must be float32 or float64, got int64"),
    ((X_OK, Y_OK + 0.5), {}, TypeError, "labels must be integers, got float64 with value 0.5 at position 0"),
    ((X_OK, np.array(["a"] * 10)), {}, TypeError, "labels must be a numeric array"),
    ((X_OK, Y_OK[:, None]), {}, ValueError, r"labels must be 1-D"),
    ((with_nan(with_nan(X_OK, 4, 1), 7, 2, np.inf), Y_OK), {}, ValueError, "features has 2 non-finite values .* first is in row 4"),
    ((X_OK, Y_OK), {"reference": with_nan(G_OK, 3, 0)}, ValueError, "reference has 1 non-finite values .* first is in row 3"),
    ((X_OK, Y_OK), {"reference": G_OK[:, :2]}, ValueError, "reference has 2 columns but features has 3"),
    ((X_OK, Y_OK), {"reference": (np.zeros(4), np.ones(3))}, ValueError, r"reference mean must be a vector of length 3 .* got shape \(4,\)"),
    ((X_OK, Y_OK), {"reference": (np.zeros(3), -np.ones(3))}, ValueError, "reference std must be >= 0"),
    ((X_OK, Y_OK), {"reference": (np.zeros(3), np.array([1, np.nan, 1]))}, ValueError, "reference std has 1 non-finite values; the first is at index 1"),
    ((X_OK, Y_OK), {"reference": None}, ValueError, "reference is required with rescale='reference'"),
    ((X_OK, Y_OK), {"rescale": "self", "reference": G_OK}, ValueError, "reference is only used with rescale='reference'"),
    ((X_OK, Y_OK), {"rescale": "imagenet"}, ValueError, "rescale must be 'reference', 'self' or None, got 'imagenet'"),
    ((X_OK, Y_OK), {"time_step": -0.1}, ValueError, r"time_step must be a finite number >= 0, got -0.1"),
    ((X_OK, Y_OK), {"nsigma": float("nan")}, ValueError, r"nsigma must be a finite number >= 0, got nan"),
    ((X_OK, Y_OK), {"force_constant": float("inf")}, ValueError, r"force_constant must be a finite number >= 0, got inf"),
    ((X_OK, Y_OK), {"exit_ratio": -1}, ValueError, r"exit_ratio must be a finite number >= 0, got -1.0"),
    ((X_OK, Y_OK), {"eps": 0.0}, ValueError, r"eps must be a finite number > 0, got 0.0"),
    ((X_OK, Y_OK), {"max_steps": -2}, ValueError, r"max_steps must be >= 0, got -2"),
    ((X_OK, Y_OK), {"max_steps": 2.5}, TypeError, r"max_steps must be an integer, got float 2.5"),
    ((X_OK, Y_OK), {"time_step": "0.1"}, TypeError, r"time_step must be a real number, got str '0.1'"),
    ((X_OK.tolist(), Y_OK), {"inplace": True}, TypeError, "inplace=True needs a numpy array or torch tensor, got list"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("args,options,error,message", BAD_INPUT, ids=[m[:40] for *_, m in BAD_INPUT])
def test_bad_input_is_named(backend, args, options, error, message):
    options = {"reference": G_OK, **options}
    with pytest.raises(error, match=message):
        ped_fast.ped(*args, backend=backend, **options)


def test_read_only_array_in_place_is_refused():
    x = X_OK.copy()
    x.flags.writeable = False
    with pytest.raises(ValueError, match="inplace=True but features is a read-only array"):
        ped_fast.ped(x, Y_OK, reference=G_OK, inplace=True)
    assert ped_fast.ped(x, Y_OK, reference=G_OK).features.shape == x.shape  # reading it is fine


@pytest.mark.parametrize("convert", [
    lambda y: y.astype(np.int32), lambda y: y.astype(np.uint8), lambda y: y.astype(np.float32),
    lambda y: y * 10**9 - 7, lambda y: torch.tensor(y, dtype=torch.uint8), lambda y: torch.tensor(y),
], ids=["int32", "uint8", "whole floats", "large and negative", "torch uint8", "torch int64"])
def test_label_dtypes_give_the_same_dynamics(convert):
    # uint8 and bool tensors index as masks in torch: labels must not.
    x, labels = make_classes(90, 5, 4, seed=8)
    want = run(x, labels.numpy(), "reference")
    got = run(x, convert(labels.numpy()), "reference")
    assert got.steps == want.steps > 0
    assert torch.equal(got.shift, want.shift)


def test_reversed_views_are_read_and_refused_in_place():
    x, labels = make_classes(60, 4, 3, seed=9)
    flipped = x.numpy()[::-1]
    got = run(flipped, labels.numpy()[::-1], "cpu")
    want = run(np.ascontiguousarray(flipped), labels.numpy()[::-1].copy(), "reference")
    np.testing.assert_allclose(got.features, want.features, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"inplace=True needs non-negative strides, but features has strides"):
        ped_fast.ped(flipped, labels.numpy(), reference=reference_for(x), inplace=True)



@pytest.mark.parametrize("which", ["features", "labels", "reference"])
def test_meta_tensors_are_refused_by_name(which):
    """A meta tensor has no values; before, it failed deep inside with
    "Tensor.item() cannot be called on meta tensors"."""
    x, labels = make_classes(20, 3, 2, seed=1)
    args = {"features": x, "labels": labels, "reference": x}
    args[which] = torch.empty_like(args[which], device="meta")
    with pytest.raises(ValueError, match=f"^{which} is on the meta device, which holds no data"):
        ped_fast.ped(args["features"], args["labels"], reference=args["reference"])
    if which != "reference":
        with pytest.raises(ValueError, match=f"^{which} is on the meta device"):
            ped_fast.ops.class_stats(args["features"], args["labels"])
