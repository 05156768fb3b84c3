"""Every backend agrees with the reference path on every output of the public
operations and of ped(): values within conftest.TOLERANCE (the backends
differ in summation order only), and every count, list of pairs and class
exactly, bad input included (the same error on every backend).

The fast backends run here: cpu; triton on a GPU, or through Triton's
interpreter on the CPU (conftest sets TRITON_INTERPRET=1 without a GPU:
slow, so the shapes are small); cuda wherever a GPU is present (it skips
elsewhere, and fails where a GPU is expected but the backend cannot run:
conftest.require_backend). The shapes exercise pruning (classes in far
apart groups, interleaved so that every pair tile holds candidates and
pruned pairs), coef = 0 (time_step=0: pairs overlap but weigh nothing),
coincident means (in different tiles), singletons, partial tiles (C not a
multiple of the kernels' 16- and 32-class tiles) and odd sizes, in float32
and float64.

evaluated_pairs is checked against what docs/spec.md §1.4 defines, computed
here from the reference path's trajectory: every pair on the first step,
then the pairs that the first-step distances minus the drift since do not
prove apart (the reference backend itself measures every pair every step).
"""
import pytest
import torch

import ped_fast
from conftest import DTYPES, TOLERANCE, assert_close, require_backend
from ped_fast import cpu, cuda, reference
from ped_fast import triton as triton_launcher
from ped_fast.ped import step_coefficient

LAUNCHERS = {"reference": reference, "cpu": cpu, "triton": triton_launcher, "cuda": cuda}
F64 = TOLERANCE[torch.float64]
PRUNE_SLACK = 1e-12  # docs/spec.md §1.4


@pytest.fixture(params=["cpu", "triton", "cuda"])
def backend(request):
    name = request.param
    if name == "cpu":
        status = ped_fast.available_backends()["cpu"]
        if not status.available:
            pytest.skip(f"cpu: {status.reason}")
    else:
        require_backend(name)
    return name


def device_of(backend):
    """Where a backend's tensors live: the GPU backends on the GPU when there
    is one (Triton's interpreter takes CPU tensors)."""
    on_gpu = backend == "cuda" or (backend == "triton" and torch.cuda.is_available())
    return torch.device("cuda" if on_gpu else "cpu")


def cpu_tensors(value):
    return value.cpu() if isinstance(value, torch.Tensor) else value


# ------------------------------------------------------------------ inputs


def interleaved_groups(num_classes, dim, seed=0):
    """Means of classes in three groups 100 apart, class c in group c % 3 (so
    every pair tile mixes groups), and radii that make most pairs within a
    group overlap: after the first step the pairs across groups are pruned,
    and the others stay candidates (more than 64 in a 32 x 32 tile)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.zeros(3, dim, dtype=torch.float64)
    centres[:, 0] = torch.tensor([0.0, 100.0, 200.0])
    mu = centres[torch.arange(num_classes) % 3] + torch.randn(num_classes, dim, generator=g, dtype=torch.float64)
    radius = 4.0 + 2.0 * torch.rand(num_classes, generator=g, dtype=torch.float64)
    return mu, radius


def coincident_means(seed=1):
    """37 classes (three 16-class tiles, the last partial; two 32-class tiles)
    with four coincident pairs, two of them across tiles."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(37, 6, generator=g, dtype=torch.float64)
    mu[30] = mu[3]
    mu[9] = mu[5]
    mu[36] = mu[5]
    radius = 2.0 * torch.rand(37, generator=g, dtype=torch.float64) + 0.2
    return mu, radius


def spec_evaluated_pairs(mu, radius, nsigma, coef, steps):
    """evaluated_pairs of `steps` steps applied one after another, as
    docs/spec.md §1.4 defines them for a pruning backend, and the reference
    path's Forces of each step."""
    num_classes = mu.shape[0]
    mu = mu.clone()
    upper = torch.triu(torch.ones(num_classes, num_classes, dtype=torch.bool), diagonal=1)
    threshold = nsigma * (radius[:, None] + radius[None, :])
    drift = torch.zeros(num_classes, dtype=torch.float64)
    counts, forces = [], []
    for step in range(steps):
        if step == 0:
            dist0 = torch.cdist(mu, mu, compute_mode="donot_use_mm_for_euclid_dist")
            kept = upper
        else:
            kept = upper & ~(dist0 - drift[:, None] - drift[None, :] > threshold * (1 + PRUNE_SLACK))
        counts.append(int(kept.sum()))
        forces.append(reference.pairwise_forces(mu, radius, nsigma=nsigma, coef=coef))
        mu += forces[-1].delta
        drift += torch.linalg.vector_norm(forces[-1].delta, dim=1)
    return counts, forces


def assert_same_forces(got, want, what):
    assert got.delta.dtype == torch.float64 and got.delta.shape == want.delta.shape, what
    assert_close(got.delta.cpu(), want.delta, F64, f"{what}: delta")
    assert got.position_change == pytest.approx(want.position_change, rel=F64, abs=1e-300), what
    assert got.coincident.tolist() == want.coincident.tolist(), what
    assert got.active_pairs == want.active_pairs, what


# ------------------------------------------------------------ class_stats

STATS_CASES = {  # name: (labels, D)
    "singleton and arbitrary labels": ([3, 17, 99, 42, 8, -5, 11] * 10 + [1000], 37),
    "N equals C, D = 1": ([4, 0, 3, 1, 2], 1),
    "one class, column blocks": ([7] * 300, 130),
    "chunks of uneven classes": ([1] * 520 + [0] * 50 + [2] * 31, 129),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(STATS_CASES))
def test_class_stats(backend, case, dtype):
    labels, dim = STATS_CASES[case]
    g = torch.Generator().manual_seed(len(labels) + dim)
    # An offset far from zero, as real features have: the shifted sums must
    # not lose the variance to it.
    x = (2.0 * torch.randn(len(labels), dim, generator=g, dtype=torch.float64) + 40.0).to(dtype)
    y = torch.tensor(labels)
    device = device_of(backend)
    got = ped_fast.ops.class_stats(x.to(device), y.to(device), backend=backend)
    want = ped_fast.ops.class_stats(x, y, backend="reference")
    assert got[0].tolist() == want[0].tolist() == sorted(set(labels))
    assert got[1].tolist() == want[1].tolist()
    assert got[2].dtype == got[3].dtype == torch.float64
    assert_close(got[2].cpu(), want[2], F64, "mean")
    # Variances of about 4 next to means of about 40: as in test_class_stats.py.
    assert_close(got[3].cpu(), want[3], F64 * 50, "var")


# -------------------------------------------------------- pairwise_forces


def public_forces_cases():
    mu, radius = coincident_means()
    return {  # name: (means, radii, ped() parameters)
        "coincident means across tiles": (mu, radius, dict(nsigma=0.6, time_step=0.1, force_constant=1.0)),
        "coef = 0": (mu, radius, dict(nsigma=0.6, time_step=0.0, force_constant=1.0)),
        "coef above one": (mu, radius, dict(nsigma=0.6, time_step=3.0, force_constant=1.0)),
        "one class": (mu[:1], radius[:1], dict(nsigma=0.6, time_step=0.1, force_constant=1.0)),
        "two classes, D = 1": (mu[:2, :1], radius[:2], dict(nsigma=5.0, time_step=0.1, force_constant=1.0)),
        "partial tiles": (*interleaved_groups(37, 3, seed=2), dict(nsigma=0.6, time_step=1.0, force_constant=2.0)),
    }


PUBLIC_FORCES = public_forces_cases()


@pytest.mark.parametrize("case", list(PUBLIC_FORCES))
def test_public_pairwise_forces(backend, case):
    mu, radius, params = PUBLIC_FORCES[case]
    device = device_of(backend)
    got = ped_fast.ops.pairwise_forces(mu.to(device), radius.to(device), backend=backend, **params)
    want = ped_fast.ops.pairwise_forces(mu, radius, backend="reference", **params)
    assert_same_forces(got, want, case)
    assert got.delta.device.type == device.type and got.coincident.device.type == device.type
    assert got.evaluated_pairs == want.evaluated_pairs == mu.shape[0] * (mu.shape[0] - 1) // 2
    if params["time_step"] == 0.0:
        # The pairs overlap, but with coef = 0 none has a weight.
        assert want.active_pairs == 0 and want.position_change == 0.0


def test_the_cases_are_not_trivial():
    """The cases above do what their names say, on the reference path."""
    forces = {case: ped_fast.ops.pairwise_forces(mu, radius, backend="reference", **params)
              for case, (mu, radius, params) in PUBLIC_FORCES.items()}
    assert forces["coincident means across tiles"].coincident.tolist() == [[3, 30], [5, 9], [5, 36], [9, 36]]
    assert 0 < forces["coincident means across tiles"].active_pairs < 37 * 36 // 2
    mu, radius, params = PUBLIC_FORCES["coef = 0"]
    overlap = params["nsigma"] * (radius[:, None] + radius[None, :]) - torch.cdist(mu, mu)
    assert int(torch.triu(overlap > 0, diagonal=1).sum()) > 0
    assert forces["two classes, D = 1"].active_pairs == 1


@pytest.mark.parametrize("coef", [0.005, 0.0, 1.0])
def test_pairwise_forces_over_pruned_steps(backend, coef):
    # The case: C = 70, D = 5, three interleaved groups. On the CUDA
    # backend a 32 x 32 tile then holds more than 64 candidates, which it
    # measures as a whole.
    mu, radius = interleaved_groups(70, 5)
    want_evaluated, want = spec_evaluated_pairs(mu, radius, 0.6, coef, 3)
    assert want_evaluated[0] == 70 * 69 // 2 and 0 < want_evaluated[1] < want_evaluated[0] // 2
    launcher = LAUNCHERS[backend]
    device = device_of(backend)
    mu, radius = mu.to(device), radius.to(device)
    bounds = launcher.make_bounds(70, device)
    for step in range(3):
        got = launcher.pairwise_forces(mu, radius, nsigma=0.6, coef=coef, bounds=bounds)
        assert_same_forces(got, want[step], f"step {step}")
        assert got.evaluated_pairs == want_evaluated[step], f"step {step}"
        mu = mu + got.delta
        bounds.advance(got.delta)


# -------------------------------------------------------------- integrate


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("inplace", [False, True])
def test_integrate(backend, dtype, inplace):
    labels, dim = STATS_CASES["singleton and arbitrary labels"]
    g = torch.Generator().manual_seed(3)
    x = torch.randn(len(labels), dim, generator=g, dtype=torch.float64).to(dtype)
    shift = torch.randn(8, dim, generator=g, dtype=torch.float64).to(dtype)
    y = torch.tensor(labels)
    want = ped_fast.ops.integrate(x, y, shift, backend="reference")
    device = device_of(backend)
    moved = x.to(device)
    got = ped_fast.ops.integrate(moved, y.to(device), shift.to(device), inplace=inplace, backend=backend)
    assert (got is moved) == inplace
    # One addition in the features' dtype on every backend: bit for bit.
    assert torch.equal(got.cpu(), want)


# -------------------------------------------------------------------- ped


def ped_input(num_classes, dim, per_class, *, seed, groups, spread=0.6):
    """N x D features, per_class rows of each class around interleaved_groups'
    means (groups=True) or standard normal ones, `spread` per dimension
    (which sets the radii); labels 5c + 2, rows shuffled."""
    g = torch.Generator().manual_seed(seed)
    if groups:
        mu, _ = interleaved_groups(num_classes, dim, seed)
    else:
        mu = torch.randn(num_classes, dim, generator=g, dtype=torch.float64)
    index = torch.arange(num_classes).repeat(per_class)
    index = index[torch.randperm(index.shape[0], generator=g)]
    x = mu[index] + spread * torch.randn(index.shape[0], dim, generator=g, dtype=torch.float64)
    return x, 5 * index + 2


def coincident_input():
    """37 classes of 4 samples; classes 5 and 9 (labels 27 and 47) hold the
    same samples, so their means are equal, and class 36 (label 182) has
    one sample."""
    x, labels = ped_input(37, 6, 4, seed=3, groups=False)
    x[labels == 47] = x[labels == 27]
    keep = torch.ones(labels.shape[0], dtype=torch.bool)
    keep[torch.nonzero(labels == 182).flatten()[1:]] = False
    return x[keep], labels[keep]


PED_CASES = {  # name: (features, labels, ped() options)
    "pruning, partial tiles": (*ped_input(40, 5, 4, seed=0, groups=True, spread=2.0), dict(max_steps=4)),
    "coincident means and a singleton": (*coincident_input(), dict(nsigma=0.8, max_steps=3)),
    "coef = 0": (*ped_input(3, 4, 20, seed=4, groups=False), dict(time_step=0.0, nsigma=2.0)),
    "N equals C, D = 1": (*ped_input(5, 1, 1, seed=5, groups=True), {}),
    "two classes, odd N": (*ped_input(2, 3, 15, seed=6, groups=False), dict(nsigma=2.0)),
}


def spec_ped_evaluated_pairs(x, labels, *, time_step=0.1, nsigma=0.6, force_constant=1.0, exit_ratio=0.5,
                             max_steps=6):
    """evaluated_pairs of ped(rescale=None) on a pruning backend (docs/spec.md
    §1.4-§1.5), replayed on the reference path."""
    _, _, mean, var = ped_fast.ops.class_stats(x.double(), labels, backend="reference")
    mu, radius = mean, var.sum(dim=1).sqrt()
    coef = step_coefficient(time_step, force_constant)
    counts, forces = spec_evaluated_pairs(mu, radius, nsigma, coef, max_steps)
    first = forces[0].position_change if forces else 0.0
    for step, f in enumerate(forces):
        if first == 0.0 or not f.position_change / first > exit_ratio:
            return counts[: step + 1]
    return counts


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(PED_CASES))
def test_ped(backend, case, dtype):
    x, labels, options = PED_CASES[case]
    x = x.to(dtype)
    device = device_of(backend)
    got = ped_fast.ped(x.to(device), labels.to(device), rescale=None, backend=backend, **options)
    want = ped_fast.ped(x, labels, rescale=None, backend="reference", **options)
    assert (got.backend, want.backend) == (backend, "reference")
    assert got.features.dtype == got.shift.dtype == dtype and got.features.device.type == device.type
    assert got.classes.tolist() == want.classes.tolist()
    assert got.steps == want.steps
    assert got.position_changes == pytest.approx(want.position_changes, rel=F64, abs=1e-300)
    assert_close(got.shift.cpu(), want.shift, TOLERANCE[dtype], "shift")
    assert_close(got.features.cpu(), want.features, TOLERANCE[dtype], "features")
    for key in ("coincident_means", "singleton_classes", "overlapping_pairs"):
        assert got.diagnostics[key] == want.diagnostics[key], key
    total = len(want.classes) * (len(want.classes) - 1) // 2
    assert want.diagnostics["evaluated_pairs"] == [total] * len(want.position_changes)
    assert got.diagnostics["evaluated_pairs"] == spec_ped_evaluated_pairs(x, labels, **options)


def test_the_ped_cases_are_not_trivial():
    results = {case: ped_fast.ped(x, y, rescale=None, backend="reference", **options)
               for case, (x, y, options) in PED_CASES.items()}
    pruning = spec_ped_evaluated_pairs(*PED_CASES["pruning, partial tiles"][:2], max_steps=4)
    assert results["pruning, partial tiles"].steps == 4 and max(pruning[1:]) < pruning[0] // 2
    coincident = results["coincident means and a singleton"]
    assert coincident.steps > 0 and coincident.diagnostics["coincident_means"] == [(27, 47)]
    assert coincident.diagnostics["singleton_classes"] == [182]
    assert results["coef = 0"].position_changes == [0.0]
    x, y, _ = PED_CASES["coef = 0"]  # the pairs overlap: with coef > 0 they have weights
    assert ped_fast.ped(x, y, rescale=None, nsigma=2.0, backend="reference").diagnostics["overlapping_pairs"][0] == 3
    assert results["two classes, odd N"].steps > 0


# -------------------------------------------------------------- bad input

BAD_PARAMETERS = [
    dict(time_step=-0.1),
    dict(nsigma=float("nan")),
    dict(force_constant=-1.0),
    dict(force_constant=float("inf")),
    dict(time_step="0.1"),
    dict(nsigma=True),
]


def error_of(call):
    with pytest.raises(Exception) as caught:
        call()
    return type(caught.value), str(caught.value)


@pytest.mark.parametrize("bad", BAD_PARAMETERS, ids=lambda p: f"{next(iter(p))}={next(iter(p.values()))!r}")
@pytest.mark.parametrize("name", ["reference", "cpu", "triton", "cuda"])
def test_bad_parameters_give_ped_errors(name, bad):
    if name in ("triton", "cuda"):
        require_backend(name)
    device = device_of(name)
    mu, radius = coincident_means()
    x, labels, _ = PED_CASES["two classes, odd N"]
    want = error_of(lambda: ped_fast.ped(x, labels, rescale=None, backend=name, **bad))
    assert error_of(lambda: ped_fast.ops.pairwise_forces(mu.to(device), radius.to(device), backend=name, **bad)) == want


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf - inf, in the interpreter
@pytest.mark.parametrize("name", ["reference", "cpu", "triton", "cuda"])
def test_non_finite_features_give_ped_errors(name):
    if name in ("triton", "cuda"):
        require_backend(name)
    device = device_of(name)
    x, labels, _ = PED_CASES["two classes, odd N"]
    x = x.clone()
    x[4, 1] = float("inf")  # a NaN mean on some backends, an inf on others
    x[9, 0] = float("nan")
    x, labels = x.to(device), labels.to(device)
    want = error_of(lambda: ped_fast.ped(x, labels, rescale=None, backend=name))
    assert want == (ValueError, "features has 2 non-finite values (NaN or inf); the first is in row 4")
    assert error_of(lambda: ped_fast.ops.class_stats(x, labels, backend=name)) == want
