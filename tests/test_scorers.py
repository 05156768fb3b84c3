"""The scorers of ped_fast.scorers against the published numbers and
formulations (docs/spec.md §2).

Tolerances:
- golden, float64: 1e-9 relative, the golden cases' own bar (the first
  issue asked for 1e-7). The published code and ours differ in summation
  order and in solving B^-1 by Cholesky instead of a generalized
  eigendecomposition; measured agreement is ~1e-14.
- golden, float32: 1e-3 absolute (the issue's bar); measured ~2e-7.
- against the numpy transcriptions of the published code in
  bench/baselines_scorers.py on other inputs: 1e-9 relative, the golden
  README's bar for float64 agreement (measured ~1e-12: different LAPACK
  routines for the SVD/eigendecomposition).
- GBC against its formula evaluated directly in float64 numpy: 1e-9
  relative (the issue's bar; same operations, other summation order).
- NLEEP's EM against scikit-learn from the same k-means labels: 1e-8 on
  responsibilities. Both run the same float64 EM; what differs is how the
  Gaussian log-densities are formed (batched products vs per-component
  loops), worth ~1e-14 per E-step, and EM is a contraction near its optimum.
"""
import importlib
import math
import re

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits
from conftest import GOLDEN, TOLERANCE, assert_close, bench_module, golden_case, make_classes

import ped_fast
from ped_fast import cpu as cpu_launcher
from ped_fast import reference as reference_launcher
from ped_fast.scorers import SCORERS, gbc, logme, nleep, sfda

# The package exports the functions under the modules' names.
gbc_module = importlib.import_module("ped_fast.scorers.gbc")
linalg_module = importlib.import_module("ped_fast.scorers._linalg")
logme_module = importlib.import_module("ped_fast.scorers.logme")
nleep_module = importlib.import_module("ped_fast.scorers.nleep")

CASES = sorted(GOLDEN)
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


published = bench_module("baselines_scorers")


def small_problem(n=240, d=12, c=4, seed=0, **kw):
    x, y = make_classes(n, d, c, seed=seed, **kw)
    return x.numpy(), y.numpy()


# --- golden cases -----------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", ["sfda", "logme"])
def test_golden_float64(case, name):
    data, expected = golden_case(case)
    score = SCORERS[name](data["X"], data["y"])
    assert_close(score, expected[name], 1e-9, f"{name} on {case}")


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", ["sfda", "logme"])
def test_golden_float32(case, name):
    data, expected = golden_case(case)
    score = SCORERS[name](data["X"].astype(np.float32), data["y"], dtype=torch.float32)
    assert abs(score - expected[name]) <= 1e-3, f"{name} float32 on {case}: {score} vs {expected[name]}"


@pytest.mark.parametrize("case", CASES)
def test_benchmark_baselines_reproduce_golden(case):
    """The numpy baselines the benchmarks time compute the published numbers."""
    data, expected = golden_case(case)
    assert_close(published.sfda_published(data["X"], data["y"]), expected["sfda"], 1e-9, "published sfda")
    assert_close(published.logme_published(data["X"], data["y"]), expected["logme"], 1e-9, "published logme")


# --- against the published formulation on other inputs ----------------------


@pytest.mark.parametrize("n,d", [(300, 20), (40, 64), (60, 60)], ids=["N>D", "N<D", "N=D"])
def test_logme_matches_published(n, d):
    x, y = small_problem(n, d, 5, seed=1)
    assert_close(logme(x, y), published.logme_published(x, y), 1e-9, "logme")


@pytest.mark.parametrize("n,d", [(300, 20), (40, 64)], ids=["N>D", "N<D"])
@pytest.mark.parametrize("k", [1, 3])
def test_logme_regression_matches_published(n, d, k):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((n, d))
    targets = x @ rng.standard_normal((d, k)) + 0.3 * rng.standard_normal((n, k))
    targets = targets[:, 0] if k == 1 else targets
    expected = published.logme_published(x, targets, regression=True)
    assert_close(logme(x, targets, regression=True), expected, 1e-9, "logme regression")


def test_logme_regression_checks_targets():
    x, _ = small_problem()
    with pytest.raises(ValueError, match="N or N x K"):
        logme(x, np.zeros((x.shape[0] + 1, 2)), regression=True)
    with pytest.raises(ValueError, match="non-finite"):
        logme(x, np.full(x.shape[0], np.nan), regression=True)


def test_sfda_singleton_class_matches_published():
    x, y = small_problem(200, 10, 5, seed=3)
    y[7] = 5  # class 5 has one sample
    assert_close(sfda(x, y), published.sfda_published(x, y), 1e-9, "sfda, one class with one sample")
    assert_close(logme(x, y), published.logme_published(x, y), 1e-9, "logme, one class with one sample")


# --- GBC against its formula ------------------------------------------------


def gbc_direct(x, y, gaussian):
    """GBC exactly as Google Research's published numpy code evaluates it."""
    stats = {}
    for label in np.unique(y):
        rows = x[y == label]
        stats[label] = rows.mean(axis=0), np.maximum(rows.var(axis=0), 1e-4)
    total = 0.0
    for a in stats:
        for b in stats:
            if a == b:
                continue
            (mu1, s1), (mu2, s2) = stats[a], stats[b]
            if gaussian == "spherical":
                s1, s2 = np.mean(s1), np.mean(s2)
            avg = (s1 + s2) / 2
            distance = np.sum((mu1 - mu2) ** 2 / avg) / 8 + 0.5 * (
                np.sum(np.log(avg)) - 0.5 * np.sum(np.log(s1)) - 0.5 * np.sum(np.log(s2)))
            total += np.exp(-distance)
    return -total


@pytest.mark.parametrize("gaussian", ["spherical", "diagonal"])
@pytest.mark.parametrize("case", ["small_overlap", "default_hparams"])
def test_gbc_golden_inputs(case, gaussian):
    data, _ = golden_case(case)
    assert_close(gbc(data["X"], data["y"], gaussian=gaussian), gbc_direct(data["X"], data["y"], gaussian), 1e-9,
                 f"gbc {gaussian}")


@pytest.mark.parametrize("gaussian", ["spherical", "diagonal"])
def test_gbc_tiles_singletons_and_floor(monkeypatch, gaussian):
    """Many small tiles (tile boundaries inside and across rows), a class
    with one sample and a constant column (variances at the 1e-4 floor)."""
    monkeypatch.setattr(gbc_module, "_TILE_ELEMENTS", 100)
    x, y = small_problem(300, 9, 23, seed=4, separation=0.3)
    x[:, 4] = 2.5
    y[0] = 23
    assert_close(gbc(x, y, gaussian=gaussian), gbc_direct(x, y, gaussian), 1e-9, f"gbc {gaussian}")


def test_gbc_rejects_unknown_gaussian():
    x, y = small_problem()
    with pytest.raises(ValueError, match="'spherical' or 'diagonal'"):
        gbc(x, y, gaussian="full")


# --- NLEEP ------------------------------------------------------------------


def test_nleep_is_deterministic_per_seed():
    data, _ = golden_case("small_overlap")
    first = nleep(data["X"], data["y"], seed=3)
    assert nleep(data["X"], data["y"], seed=3) == first
    assert nleep(torch.from_numpy(data["X"]), torch.from_numpy(data["y"]), seed=3) == first
    # Different seeds start k-means elsewhere; on these overlapping classes
    # the mixtures (and scores) differ.
    assert nleep(data["X"], data["y"], seed=4) != first


@pytest.mark.parametrize("case", CASES)
def test_nleep_em_matches_scikit_learn(case):
    """Given scikit-learn's k-means labels, our PCA, EM and NLEEP reproduce
    PCA(0.8) + GaussianMixture(5C) + the NLEEP formula."""
    decomposition = pytest.importorskip("sklearn.decomposition")
    mixture = pytest.importorskip("sklearn.mixture")
    cluster = pytest.importorskip("sklearn.cluster")
    data, _ = golden_case(case)
    x, y = data["X"], data["y"]
    components = 5 * len(np.unique(y))
    z = decomposition.PCA(n_components=0.8).fit_transform(x)
    ours_z = nleep_module._pca(torch.from_numpy(x), torch.float64).numpy()
    assert ours_z.shape == z.shape
    assert_close(np.abs(ours_z), np.abs(z), 1e-9, "PCA projection (up to sign)")

    seed = 0
    with threadpool_limits(1):  # scikit-learn's threads oversubscribe 2 busy cores (10x slower)
        gmm = mixture.GaussianMixture(n_components=components, random_state=seed).fit(z)
        labels = cluster.KMeans(components, n_init=1, random_state=np.random.RandomState(seed)).fit(z).labels_
    resp = nleep_module.mixture_responsibilities(torch.from_numpy(z), torch.from_numpy(labels).long(), components)
    expected_resp = gmm.predict_proba(z)
    assert float(np.abs(resp.numpy() - expected_resp).max()) <= 1e-8

    n = len(y)
    joint = np.stack([expected_resp[y == c].sum(0) / n for c in range(len(np.unique(y)))])
    expected = (expected_resp @ (joint / joint.sum(0)).T)[np.arange(n), y].mean()
    assert_close(nleep_module.nleep_from_responsibilities(resp, torch.from_numpy(y), joint.shape[0]), expected,
                 1e-8, "nleep from responsibilities")


def test_kmeans_lloyd_matches_scikit_learn():
    cluster = pytest.importorskip("sklearn.cluster")
    data, _ = golden_case("small_overlap")
    z = data["X"][:, :8]
    with threadpool_limits(1):
        init = cluster.kmeans_plusplus(z, 30, random_state=0)[0]
        expected = cluster.KMeans(30, init=init, n_init=1).fit(z).labels_
    zt = torch.from_numpy(z)
    original = nleep_module._kmeans_plus_plus
    try:
        nleep_module._kmeans_plus_plus = lambda *args: torch.from_numpy(init.copy())
        labels = nleep_module._kmeans(zt, 30, 0)
    finally:
        nleep_module._kmeans_plus_plus = original
    assert (labels.numpy() == expected).all()


@pytest.mark.parametrize("case", ["nsigma_0.3", "default_hparams"])
def test_nleep_end_to_end_near_scikit_learn(case):
    """Whole pipelines with independent random streams: the mean over four
    seeds is within 0.02 of scikit-learn's mean over four seeds. (Per-seed
    spread is ~0.007-0.014 on these cases, so the 4-seed means have a
    standard error of ~0.005 each; a 200-seed study showed no bias.)"""
    decomposition = pytest.importorskip("sklearn.decomposition")
    mixture = pytest.importorskip("sklearn.mixture")
    data, _ = golden_case(case)
    x, y = data["X"], data["y"]
    n, c = len(y), len(np.unique(y))
    z = decomposition.PCA(n_components=0.8).fit_transform(x)
    reference = []
    for seed in range(4):
        with threadpool_limits(1):
            prob = mixture.GaussianMixture(n_components=5 * c, random_state=seed).fit(z).predict_proba(z)
        joint = np.stack([prob[y == k].sum(0) / n for k in range(c)])
        reference.append((prob @ (joint / joint.sum(0)).T)[np.arange(n), y].mean())
    ours = [nleep(x, y, seed=seed) for seed in range(4)]
    assert abs(np.mean(ours) - np.mean(reference)) <= 0.02, (ours, reference)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_nleep_draws_are_the_cpu_streams_on_every_device(dtype):
    """k-means++'s random numbers come from a seeded CPU generator and are
    moved to the features' device afterwards, so a seed gives the same draws
    (hence the same centres and score) wherever the features are. On the
    meta device, which has no generator of its own, the first centre (a
    plain int) is the CPU's and the candidate fractions land on meta."""
    n, k, seed = 120, 17, 5
    trials = 2 + int(math.log(k))
    generator = torch.Generator().manual_seed(seed)
    first = int(torch.randint(n, (1,), generator=generator))
    fractions = torch.rand(k - 1, trials, generator=generator, dtype=dtype)
    got_first, got_fractions = nleep_module.seeding_draws(seed, n, k, dtype, torch.device("cpu"))
    assert got_first == first and torch.equal(got_fractions, fractions)
    meta_first, meta_fractions = nleep_module.seeding_draws(seed, n, k, dtype, torch.device("meta"))
    assert meta_first == first
    assert meta_fractions.device.type == "meta" and meta_fractions.shape == (k - 1, trials)
    assert meta_fractions.dtype == dtype
    if torch.cuda.is_available():
        cuda_first, cuda_fractions = nleep_module.seeding_draws(seed, n, k, dtype, torch.device("cuda"))
        assert cuda_first == first and torch.equal(cuda_fractions.cpu(), fractions)


def test_nleep_needs_enough_samples():
    x, y = small_problem(30, 4, 10)
    with pytest.raises(ValueError, match="50 mixture components"):
        nleep(x, y)
    assert 0.0 < nleep(x, y, component_ratio=1) <= 1.0


# --- every scorer: inputs, dtypes, devices, degenerate cases -----------------

NAMES = sorted(SCORERS)


@pytest.mark.parametrize("name", NAMES)
def test_inputs_are_never_modified(name):
    x, y = small_problem()
    x_before, y_before = x.copy(), y.copy()
    xt, yt = torch.from_numpy(x.copy()), torch.from_numpy(y.copy())
    SCORERS[name](x, y)
    SCORERS[name](xt, yt)
    assert np.array_equal(x, x_before) and np.array_equal(y, y_before)
    assert np.array_equal(xt.numpy(), x_before) and np.array_equal(yt.numpy(), y_before)


@pytest.mark.parametrize("name", NAMES)
def test_numpy_torch_readonly_and_strided_inputs_agree(name):
    x, y = small_problem()
    expected = SCORERS[name](x, y)
    readonly = x.copy()
    readonly.setflags(write=False)
    strided = np.asfortranarray(x)  # column-major: rows are not contiguous
    wide = np.zeros((x.shape[0], 2 * x.shape[1]))
    wide[:, ::2] = x
    for variant in (torch.from_numpy(x), readonly, strided, wide[:, ::2]):
        assert_close(SCORERS[name](variant, y), expected, 1e-12, f"{name} on {type(variant).__name__}")


@pytest.mark.parametrize("name", NAMES)
def test_float32_inputs_and_float32_compute(name):
    x, y = small_problem()
    expected = SCORERS[name](x, y)
    # float32 features scored in float64: only the inputs' rounding differs
    # (2^-24 relative per value), amplified by the fit's conditioning.
    assert_close(SCORERS[name](x.astype(np.float32), y), expected, 1e-5, f"{name} float32 input")
    low = SCORERS[name](x.astype(np.float32), y, dtype=torch.float32)
    # Computed in float32: 1e-3, the float32 bar. NLEEP's k-means
    # takes other branches on float32 distances, so its mixture is another
    # local optimum, as a different seed gives: 0.05, ~3x the seed-to-seed
    # spread of this problem.
    bound = 0.05 if name == "nleep" else 1e-3 * max(1.0, abs(expected))
    assert abs(low - expected) <= bound, f"{name} float32 compute: {low} vs {expected}"
    with pytest.raises(TypeError, match="dtype"):
        SCORERS[name](x, y, dtype=torch.float16)


@pytest.mark.parametrize("name", NAMES)
def test_labels_need_not_be_0_to_c_minus_1(name):
    x, y = small_problem()
    expected = SCORERS[name](x, y)
    assert SCORERS[name](x, 7 * y - 20) == expected
    assert SCORERS[name](x, (y + 100).astype(np.float64)) == expected  # whole-valued floats


@pytest.mark.parametrize("name", NAMES)
def test_one_class_is_an_error(name):
    x, _ = small_problem()
    with pytest.raises(ValueError, match="at least 2 classes"):
        SCORERS[name](x, np.full(x.shape[0], 3))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_features_are_an_error(name, bad):
    x, y = small_problem()
    x[17, 3] = bad
    with pytest.raises(ValueError, match="non-finite.*row 17"):
        SCORERS[name](x, y)


@pytest.mark.parametrize("name", NAMES)
def test_one_sample_class_gives_a_finite_score(name):
    x, y = small_problem(200, 6, 3)
    y[0] = 3
    options = {"component_ratio": 1} if name == "nleep" else {}
    assert np.isfinite(SCORERS[name](x, y, **options))


@pytest.mark.parametrize("name", NAMES)
def test_fewer_samples_than_dimensions(name):
    x, y = small_problem(30, 50, 3, seed=5)
    options = {"component_ratio": 2} if name == "nleep" else {}
    score = SCORERS[name](x, y, **options)
    assert np.isfinite(score)
    if name == "sfda":
        assert 0.0 < score <= 1.0


def test_sfda_ill_conditioned_n_le_d_matches_published():
    """N < D, so Sw is singular, and one direction carries 1e16 times the
    variance of the others: B = Sw + 1e-10 tr(Sw)/D I is positive definite
    by a hair. Measured agreement with the published generalized
    eigensolver: 4e-12 relative; 1e-6 leaves room for other LAPACK builds on
    a problem whose condition number is ~1e17."""
    x, y = small_problem(20, 80, 2, seed=6)
    x[:, 0] *= 1e8
    x = x @ np.linalg.qr(np.random.default_rng(0).standard_normal((80, 80)))[0]
    score = sfda(x, y)
    assert 0.0 < score < 0.9  # not saturated: the solve matters
    assert_close(score, published.sfda_published(x, y), 1e-6, "sfda, N < D, ill-conditioned")


def test_symmetric_solver_falls_back_to_clamped_eigenvalues():
    """When rounding leaves B indefinite (Cholesky fails), B^-1 is applied
    with B's eigenvalues clamped at the floor it has in exact arithmetic."""
    rng = np.random.default_rng(8)
    q = np.linalg.qr(rng.standard_normal((6, 6)))[0]
    values = np.array([-1e-18, 1e-19, 0.5, 1.0, 2.0, 4.0])  # "rounding" below the floor
    b = torch.from_numpy((q * values) @ q.T)
    rhs = torch.from_numpy(rng.standard_normal((6, 3)))
    solver = linalg_module.SymmetricSolver(b, 1e-3)
    assert not solver.cholesky
    expected = (q / np.maximum(values, 1e-3)) @ q.T @ rhs.numpy()
    assert_close(solver.solve(rhs), expected, 1e-9, "clamped eigen solve")
    healthy = linalg_module.SymmetricSolver(b + torch.eye(6, dtype=torch.float64), 1e-3)
    assert healthy.cholesky
    assert_close(healthy.solve(rhs), np.linalg.solve(b.numpy() + np.eye(6), rhs.numpy()), 1e-12, "Cholesky solve")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cpu_blas_helpers_match_torch(dtype):
    """gram (full and lower-only), symmetric_matvec, symmetric_eigh and
    matmul, which call scipy's BLAS and LAPACK on the CPU, against torch on odd sizes, with operands in
    row- and column-major layouts and strided; inputs are left alone."""
    g = torch.Generator().manual_seed(3)
    a = torch.randn(301, 37, generator=g, dtype=torch.float64).to(dtype)
    rtol = TOLERANCE[dtype]
    expected = a.double().T @ a.double()
    gram = linalg_module.gram
    assert_close(gram(a), expected, rtol, "gram")
    assert torch.equal(gram(a), gram(a).T)
    lower = gram(a, lower_only=True)
    assert_close(torch.tril(lower), torch.tril(expected), rtol, "gram lower triangle")
    assert_close(gram(a[::2, 1:]), a[::2, 1:].double().T @ a[::2, 1:].double(), rtol, "gram of a strided view")
    v = torch.randn(37, generator=g, dtype=torch.float64).to(dtype)
    assert_close(linalg_module.symmetric_matvec(lower, v), expected @ v.double(), rtol, "symmetric_matvec")
    values, vectors = linalg_module.symmetric_eigh(lower)
    assert_close(values, torch.linalg.eigvalsh(expected), rtol, "symmetric_eigh values")
    assert_close(vectors @ torch.diag(values) @ vectors.T, expected, 10 * rtol, "symmetric_eigh reconstruction")
    b = torch.randn(37, 11, generator=g, dtype=torch.float64).to(dtype)
    before = (a.clone(), b.clone())
    for left in (a, a.T.contiguous().T, a[::3]):
        for right in (b, b.T.contiguous().T, b[:, ::2]):
            assert_close(linalg_module.matmul(left, right), left.double() @ right.double(), rtol, "matmul")
    assert torch.equal(a, before[0]) and torch.equal(b, before[1])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_symmetric_solver_lapack_matches_torch(dtype):
    """The CPU solver (LAPACK through scipy, on a column-major view) against
    torch's Cholesky, with right-hand sides in either layout; b is left
    as it was."""
    rng = np.random.default_rng(9)
    a = torch.from_numpy(rng.standard_normal((40, 23))).to(dtype)
    b = a.T @ a + torch.eye(23, dtype=dtype)
    before = b.clone()
    solver = linalg_module.SymmetricSolver(b, 1e-3)
    assert solver.cholesky and solver.lapack
    expected = torch.cholesky_solve(torch.from_numpy(rng.standard_normal((23, 5))).to(dtype), torch.linalg.cholesky(b))
    rhs = b @ expected
    for layout in (rhs, rhs.T.contiguous().T):
        assert_close(solver.solve(layout), expected, 1e-10 if dtype == torch.float64 else 1e-4, "lapack solve")
    assert torch.equal(b, before)


@pytest.mark.skipif(not cpu_launcher.status()[0], reason="the CPU extension is not built")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("soften", [True, False])
@pytest.mark.parametrize("n,c", [(1, 1), (9, 2), (37, 5), (211, 397)])
@pytest.mark.parametrize("scale", [3.0, 300.0])
def test_own_class_probability_fused_matches_torch(n, c, scale, soften, dtype):
    """The CPU launcher's fused pass (with its own vectorised exp) against
    its reference twin, the PyTorch ops it replaces: on moderate logits, on
    logits large enough that an unshifted exp would overflow and most terms
    underflow, on a transposed (non-contiguous) logits view, and with labels
    hitting every class."""
    g = torch.Generator().manual_seed(n * c)
    logits = (scale * torch.randn(c, n, generator=g, dtype=torch.float64)).to(dtype).T
    table = (scale / 6 * torch.randn(c, c, generator=g, dtype=torch.float64)).to(dtype)
    index = torch.randint(0, c, (n,), generator=g)
    index[: min(n, c)] = torch.arange(min(n, c))
    inputs = [t.clone() for t in (logits, table, index)]
    fused = cpu_launcher.own_class_probability(logits, table, index, soften=soften)
    expected = reference_launcher.own_class_probability(logits.double(), table.double(), index, soften=soften)
    assert fused.dtype == dtype and fused.shape == (n,)
    assert_close(fused, expected, TOLERANCE[dtype], "own-class probability")
    assert all(torch.equal(a, b) for a, b in zip(inputs, (logits, table, index)))


def test_constant_features(monkeypatch):
    x = np.full((100, 5), 3.0)
    y = np.arange(100) % 4
    with pytest.raises(ValueError, match="constant within every class"):
        sfda(x, y)
    with pytest.raises(ValueError, match="constant"):
        nleep(x, y)
    # GBC floors variances at 1e-4 (published): identical classes, each
    # pair's coefficient is 1, so the score is -C(C-1).
    assert gbc(x, y) == pytest.approx(-12.0, rel=1e-12)
    assert gbc(x, y, gaussian="diagonal") == pytest.approx(-12.0, rel=1e-12)
    # LogME: X = 3 * ones(N) ones(D)^T has rank one. Its documented value is
    # the published formula on X's exact SVD (one singular value 3 sqrt(N D)).
    # The published code's own value depends on which of X^T X's four zero
    # eigenvalues rounding lifts above its 1e-10 floor: -0.5054 with numpy's
    # LAPACK, -0.5384 with scipy's.
    n, d = x.shape
    exact_svd = (np.full((n, 1), n**-0.5), np.array([[3.0 * (n * d) ** 0.5]]), np.full((1, d), d**-0.5))
    monkeypatch.setattr(published, "_truncated_svd", lambda f: exact_svd)
    assert_close(logme(x, y), published.logme_published(x, y), 1e-9, "logme on constant features, exact rank one")


@pytest.mark.parametrize("case", ["constant", "repeated columns", "dead units"])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_logme_rank_does_not_depend_on_rounding(monkeypatch, case, sign):
    """Rank-deficient features (N > D): X^T X's zero eigenvalues come out of
    an eigensolver as noise whose size and sign depend on the LAPACK build.
    Moving every eigenvalue by +-lambda_max * eps (12x the noise measured
    with numpy's and scipy's builds on the constant case) must not change
    the score: those directions are zero, whatever the noise. (1e-12: the
    perturbation moves the kept eigenvalues by eps relative.)"""
    rng = np.random.default_rng(11)
    y = np.arange(200) % 4
    if case == "constant":
        x = np.full((200, 6), 3.0)
    else:
        x = rng.standard_normal((200, 6)) + y[:, None]
        if case == "repeated columns":
            x[:, 4] = x[:, 0]
            x[:, 5] = x[:, 1] + x[:, 2]
        else:
            x[:, 3:] = 0.0
    expected = logme(x, y)
    eigh = logme_module.symmetric_eigh

    def rounded_otherwise(matrix):
        values, vectors = eigh(matrix)
        return values + sign * float(values.abs().max()) * torch.finfo(values.dtype).eps, vectors

    monkeypatch.setattr(logme_module, "symmetric_eigh", rounded_otherwise)
    assert_close(logme(x, y), expected, 1e-12, f"logme on {case} features, eigenvalues rounded otherwise")


@pytest.mark.parametrize("n,d", [(100, 5), (10, 20)], ids=["N>D", "N<=D"])
def test_logme_zero_features_are_an_error(n, d):
    """X = 0 has no singular value above the published floor; the published
    code's fixed point then takes log(0) or 0/0."""
    with pytest.raises(ValueError, match="every singular value of features is at most 1e-10"):
        logme(np.zeros((n, d)), np.arange(n) % 2)


def test_sfda_constant_column_matches_published():
    """A constant dimension has zero within-class scatter; only the
    shrinkage term holds it. The published code multiplies it by the raw
    class means (a large logit, equal for every class, that softmax
    cancels); we work relative to the global mean, where it is zero."""
    x, y = small_problem(300, 10, 4, seed=7)
    x = np.concatenate([x, np.full((x.shape[0], 1), 30.0)], axis=1)
    assert_close(sfda(x, y), published.sfda_published(x, y), 1e-9, "sfda with a constant column")


@CUDA
@pytest.mark.parametrize("name", NAMES)
def test_cuda_matches_cpu(name):
    x, y = small_problem()
    xt, yt = torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()
    # float64 on both; cuBLAS/cuSOLVER sum in other orders than MKL/LAPACK.
    # NLEEP draws its k-means++ numbers on the CPU for every device, so each
    # seed starts from the same centres on both.
    seeds = [{"seed": 0}, {"seed": 1}] if name == "nleep" else [{}]
    for options in seeds:
        assert_close(SCORERS[name](xt, yt, **options), SCORERS[name](x, y, **options), 1e-9, f"{name} on cuda")
    if name == "nleep":
        assert SCORERS[name](xt, yt, seed=1) == SCORERS[name](xt, yt, seed=1)


# --- backend= ---------------------------------------------------------------

# What a scorer runs on its backend's launcher (NLEEP, PARC and k-NN run
# none of them).
LAUNCHER_OPS = {
    "sfda": {"class_stats", "integrate", "own_class_probability"},
    "logme": {"class_stats"},
    "gbc": {"class_stats"},
    "nleep": set(),
    "hscore": {"class_stats", "integrate"},
    "reg_hscore": {"class_stats", "integrate"},
    "transrate": {"class_stats", "integrate"},
    "parc": set(),
    "knn": set(),
}
CPU_BUILT = pytest.mark.skipif(not cpu_launcher.status()[0], reason="the CPU extension is not built")


def spy_on_launchers(monkeypatch, names=("class_stats", "integrate", "own_class_probability")):
    """Wrap the named functions of the reference and cpu launchers so that
    every call is recorded as (backend, function); resolve is left alone."""
    calls = []
    for module in (reference_launcher, cpu_launcher):
        backend = module.__name__.rsplit(".", 1)[-1]
        for name in names:
            original = getattr(module, name)

            def spy(*args, _original=original, _call=(backend, name), **kwargs):
                calls.append(_call)
                return _original(*args, **kwargs)

            monkeypatch.setattr(module, name, spy)
    return calls


@CPU_BUILT
@pytest.mark.parametrize("name", NAMES)
def test_backend_reaches_the_scorer(monkeypatch, name):
    """backend="reference" and backend="cpu" each run the scorer's launcher
    operations on that backend only (the fused posterior tail included), and
    give the same score. (1e-10: conftest's float64 bar between backends,
    which differ in summation order only.)"""
    x, y = small_problem()
    calls = spy_on_launchers(monkeypatch)
    scores = {}
    for backend in ("reference", "cpu"):
        calls.clear()
        scores[backend] = SCORERS[name](x, y, backend=backend)
        assert set(calls) == {(backend, op) for op in LAUNCHER_OPS[name]}, f"{name}, backend={backend}: {calls}"
    assert_close(scores["reference"], scores["cpu"], 1e-10, f"{name} on reference vs cpu")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("backend", ["fastest", "cuda"])
def test_scorer_rejects_a_backend_as_ped_does(name, backend):
    """An unknown backend, or one that cannot run on these CPU tensors, is
    refused with ped()'s error, naming it."""
    x, y = small_problem()
    with pytest.raises((ValueError, RuntimeError)) as from_ped:
        ped_fast.ped(x, y, rescale=None, backend=backend)
    assert repr(backend) in str(from_ped.value)
    with pytest.raises(from_ped.type, match=re.escape(str(from_ped.value))):
        SCORERS[name](x, y, backend=backend)
    if name == "logme":
        with pytest.raises(from_ped.type, match=re.escape(str(from_ped.value))):
            logme(x, x[:, 0], regression=True, backend=backend)


# --- saturation messages: each model's own D, each reader's remedy ------------


def _saturating_models():
    """Two models of one 3-class task of N = 100 samples whose features
    separate every sample (D >= N): one with D = 192, one with D = 512."""
    rng = np.random.default_rng(11)
    labels = np.arange(100) % 3
    return labels, {"narrow": rng.standard_normal((100, 192)), "wide": rng.standard_normal((100, 512))}


def test_scorer_saturation_reasons_name_no_api():
    """The scorers' reasons are read by Python and command-line users
    alike: they recommend the projection in neither's terms."""
    for name, value, classes in (("sfda", 1.0, 3), ("hscore", 2.0, 3)):
        reason = ped_fast.scorers.saturation(name, value, samples=100, dimensions=192, classes=classes)
        assert "D = 192 >= N" in reason and "K principal axes" in reason
        assert "ped_score" not in reason and "--reduce" not in reason


def test_ped_score_spells_the_remedy_in_python():
    labels, models = _saturating_models()
    out = ped_fast.ped_score(models["narrow"], labels, "sfda", rescale="self", return_baseline=True)
    assert "D = 192 >= N = 100" in out.saturation["baseline"]
    assert "ped_score(..., reduce='pca:K')" in out.saturation["baseline"]
    assert "--reduce" not in out.saturation["baseline"]


def test_screen_warnings_quote_each_models_own_d_and_the_command_line_remedy():
    from ped_fast.zoo.scoring import score_features, zoo_warnings

    labels, models = _saturating_models()
    rows = []
    for name, x in models.items():
        scores = score_features(x, labels, ["sfda", "hscore"], reference="self")
        rows.append({"name": name, "scores": scores})
    warnings = zoo_warnings(rows, ["sfda", "hscore"])
    for scorer in ("SFDA", "HSCORE"):
        for name, dim in (("narrow", 192), ("wide", 512)):
            mine = [w for w in warnings if w["message"].startswith(f"{scorer}: ") and name in w["models"]]
            assert len(mine) == 1, (scorer, name, warnings)
            assert mine[0]["models"] == [name]
            assert f"D = {dim} >= N" in mine[0]["message"]
            assert "--reduce pca:K --reference self" in mine[0]["message"]
            assert "ped_score(" not in mine[0]["message"]
    # Models whose reasons agree share one warning.
    rows.append({"name": "twin", "scores": rows[0]["scores"]})
    grouped = [w for w in zoo_warnings(rows, ["sfda"]) if w["message"].startswith("SFDA: ")]
    assert sorted(map(tuple, (w["models"] for w in grouped))) == [("narrow", "twin"), ("wide",)]
