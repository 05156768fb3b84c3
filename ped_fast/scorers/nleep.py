"""NLEEP (Li et al., CVPR 2021): PCA to 80% of the variance, a Gaussian
mixture with 5 components per class, and the expected empirical conditional
probability of the true label (docs/spec.md §2).

The published code fits scikit-learn's GaussianMixture unseeded. Here PCA,
k-means++ and EM are written in PyTorch with the same settings as that
mixture (full covariances, reg_covar 1e-6, tol 1e-3 on the mean
log-likelihood, at most 100 EM iterations, k-means initialisation with one
k-means++ run). Every random number is drawn from a seeded CPU
torch.Generator and then moved to the features' device: torch's CUDA
generator is another stream than the CPU's, so drawing on the device would
make the score depend on where the features live; this way the same seed
gives the same draws, hence the same score, on any device.
Per-component work is done in chunks so that memory stays O(N K + chunk N d).
"""
from __future__ import annotations

import math

import torch

from .._validate import ArrayLike, all_finite, check_count, raise_non_finite
from ._input import DtypeLike, prepare
from ._linalg import group_sums, principal_axes

VARIANCE_KEPT = 0.8
REG_COVAR = 1e-6
EM_TOLERANCE = 1e-3
EM_ITERATIONS = 100
KMEANS_ITERATIONS = 300
KMEANS_TOLERANCE = 1e-4
_CHUNK_ELEMENTS = 1 << 22


def nleep(features: ArrayLike, labels: ArrayLike, *, seed: int = 0, component_ratio: int = 5,
          dtype: DtypeLike = torch.float64, backend: str = "auto") -> float:
    """NLEEP score of `features` (N x D) for `labels` (N): a float in (0, 1],
    higher is better.

    seed: seeds k-means++ (the only randomness); the same seed gives the same
    score. component_ratio: mixture components per class (the paper's 5).
    dtype: torch.float64 (default) or torch.float32. backend: checked as
    ped() checks it ("auto", "reference", "cpu", ...; see
    available_backends()), so that every scorer takes the same options;
    NLEEP's PCA, k-means and EM are dense PyTorch and LAPACK work that no
    backend replaces. Labels may be any integers; at least two classes.
    Raises ValueError when there are fewer samples than mixture components,
    or when a component's covariance is singular even after regularisation
    (as scikit-learn does).
    """
    prep = prepare(features, labels, dtype, backend, "nleep")
    return nleep_prepared(prep.x, prep.index, prep.num_classes, seed=seed, component_ratio=component_ratio,
                          dtype=prep.dtype)


def nleep_prepared(x: torch.Tensor, index: torch.Tensor, num_classes: int, *, seed: int = 0, component_ratio: int = 5,
                   dtype: torch.dtype = torch.float64) -> float:
    """NLEEP on validated features and class positions (index: N ints in
    [0, C))."""
    seed = check_count(seed, "seed")
    component_ratio = check_count(component_ratio, "component_ratio")
    if component_ratio < 1:
        raise ValueError(f"component_ratio must be >= 1, got {component_ratio}")
    n = x.shape[0]
    components = component_ratio * num_classes
    if components > n:
        raise ValueError(
            f"nleep fits {components} mixture components ({component_ratio} per class x {num_classes} classes) "
            f"but features has only {n} rows; pass a smaller component_ratio"
        )
    z = _pca(x, dtype)
    resp = mixture_responsibilities(z, _kmeans(z, components, seed), components)
    return nleep_from_responsibilities(resp, index, num_classes)


def nleep_from_responsibilities(resp: torch.Tensor, index: torch.Tensor, num_classes: int) -> float:
    """Mean p(y_i | x_i) from p(z | x) (N x K) and class positions (N)."""
    n = resp.shape[0]
    # p(y, z) = sum over samples of class y of p(z | x) / N; p(y | z) = p(y, z) / p(z).
    joint = group_sums(index, resp, num_classes) / n
    marginal = joint.sum(0)
    # A component no sample reaches (p(z) underflows to 0) contributes
    # nothing, where 0/0 would make the score NaN.
    conditional = torch.where(marginal > 0, joint / marginal.clamp_min(torch.finfo(joint.dtype).tiny), 0.0)
    # p(y_i | x_i) = sum_z p(z | x_i) p(y_i | z)
    return float((resp * conditional[index]).sum() / n)


def _pca(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Projection of the centred features on the fewest principal axes whose
    cumulative explained variance exceeds 80% (scikit-learn's
    PCA(n_components=0.8) rule)."""
    xc = x.to(dtype)
    mean = xc.mean(0)
    if not all_finite(mean):
        raise_non_finite(x, "features")
    xc = xc - mean
    values, vectors = principal_axes(xc)
    total = values.sum()
    if not float(total) > 0:
        raise ValueError("nleep: features are constant (zero variance), so there is nothing to cluster")
    cumulative = torch.cumsum(values / total, 0)
    keep = min(int(torch.searchsorted(cumulative, torch.tensor([VARIANCE_KEPT], dtype=dtype, device=x.device),
                                      right=True)) + 1, values.shape[0])
    return xc @ vectors[:, :keep]


def mixture_responsibilities(z: torch.Tensor, init_labels: torch.Tensor, components: int) -> torch.Tensor:
    """EM for a full-covariance Gaussian mixture started, like
    scikit-learn's, from the M-step of a hard assignment (init_labels, N
    ints in [0, K)); returns the final p(component | sample), N x K."""
    resp = torch.zeros(z.shape[0], components, dtype=z.dtype, device=z.device)
    resp.scatter_(1, init_labels.unsqueeze(1), 1.0)
    weights, means, factors = _m_step(z, resp)
    lower_bound = -math.inf
    for _ in range(EM_ITERATIONS):
        previous = lower_bound
        log_norm, resp = _e_step(z, weights, means, factors)
        weights, means, factors = _m_step(z, resp)
        lower_bound = float(log_norm.mean())
        if abs(lower_bound - previous) < EM_TOLERANCE:
            break
    return _e_step(z, weights, means, factors)[1]


def _m_step(z: torch.Tensor, resp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mixture weights, means and Cholesky factors of the covariances
    (+ reg_covar on the diagonal) from responsibilities."""
    n, dim = z.shape
    eps = 10 * torch.finfo(z.dtype).eps
    nk = resp.sum(0) + eps
    means = (resp.T @ z) / nk.unsqueeze(1)
    covariances = torch.empty(nk.shape[0], dim, dim, dtype=z.dtype, device=z.device)
    for chunk in _chunks(nk.shape[0], n * dim):
        diff = z.unsqueeze(0) - means[chunk].unsqueeze(1)  # k x N x d
        weighted = diff * resp[:, chunk].T.unsqueeze(2)
        covariances[chunk] = weighted.transpose(1, 2) @ diff / nk[chunk].view(-1, 1, 1)
    covariances.diagonal(dim1=1, dim2=2).add_(REG_COVAR)
    factors, info = torch.linalg.cholesky_ex(covariances)
    if bool((info != 0).any()):
        raise ValueError(
            "nleep: a mixture component has a singular covariance even with reg_covar=1e-6 (too few distinct "
            "samples per component); pass a smaller component_ratio"
        )
    return nk / n, means, factors


def _e_step(z: torch.Tensor, weights: torch.Tensor, means: torch.Tensor, factors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(x_i), responsibilities): per-sample log-likelihood under the
    mixture (N) and p(component | sample) (N x K). Like scikit-learn, through
    the inverse Cholesky factors: batched matrix products instead of
    batched triangular solves."""
    n, dim = z.shape
    eye = torch.eye(dim, dtype=z.dtype, device=z.device).expand_as(factors)
    inverse_t = torch.linalg.solve_triangular(factors, eye, upper=False).transpose(1, 2)  # L^-T
    shifted_means = (means.unsqueeze(1) @ inverse_t).squeeze(1)  # mu_k L_k^-T
    log_det = torch.log(factors.diagonal(dim1=1, dim2=2)).sum(1)
    log_prob = torch.empty(n, weights.shape[0], dtype=z.dtype, device=z.device)
    for chunk in _chunks(weights.shape[0], n * dim):
        y = (z @ inverse_t[chunk]).sub_(shifted_means[chunk].unsqueeze(1))  # k x N x d
        log_prob[:, chunk] = (-0.5 * (y * y).sum(2) - log_det[chunk].unsqueeze(1)).T
    log_prob += torch.log(weights) - 0.5 * dim * math.log(2 * math.pi)
    log_norm = torch.logsumexp(log_prob, dim=1)
    return log_norm, torch.exp(log_prob - log_norm.unsqueeze(1))


def _kmeans(z: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """Labels from k-means (k-means++ seeding with 2 + log k local trials,
    then Lloyd's iterations), as scikit-learn's KMeans(n_init=1) runs it."""
    sq_norms = (z * z).sum(1)
    centers = _kmeans_plus_plus(z, sq_norms, k, seed)
    tolerance = KMEANS_TOLERANCE * float(z.var(0, unbiased=False).mean())
    labels = None
    for _ in range(KMEANS_ITERATIONS):
        distances = _sq_distances(z, sq_norms, centers)
        new_labels = distances.argmin(1)
        counts = torch.bincount(new_labels, minlength=k)
        new_centers = group_sums(new_labels, z, k) / counts.clamp_min(1).unsqueeze(1).to(z.dtype)
        empty = counts == 0
        if bool(empty.any()):
            # An empty cluster takes the point farthest from its centre.
            far = distances.gather(1, new_labels.unsqueeze(1)).squeeze(1).argsort(descending=True)
            new_centers[empty] = z[far[: int(empty.sum())]]
        shift = float(((new_centers - centers) ** 2).sum())
        centers = new_centers
        if labels is not None and bool((new_labels == labels).all()):
            break
        labels = new_labels
        if shift <= tolerance:
            break
    return _sq_distances(z, sq_norms, centers).argmin(1)


def seeding_draws(seed: int, n: int, k: int, dtype: torch.dtype, device: torch.device) -> tuple[int, torch.Tensor]:
    """The random numbers of one k-means++ run choosing k centres among n
    samples: (first, fractions) where first is the index of the first
    centre and fractions ((k - 1) x (2 + floor(log k)), `dtype`, on
    `device`) are uniform in [0, 1), one row of candidate draws per further
    centre. Drawn on the CPU whatever `device` is (see the module
    docstring), all at once so that one copy moves them; the CPU stream
    gives the same numbers as drawing them row by row."""
    generator = torch.Generator().manual_seed(seed)
    first = int(torch.randint(n, (1,), generator=generator))
    fractions = torch.rand(k - 1, 2 + int(math.log(k)), generator=generator, dtype=dtype)
    return first, fractions.to(device)


def _kmeans_plus_plus(z: torch.Tensor, sq_norms: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    n = z.shape[0]
    first, fractions = seeding_draws(seed, n, k, z.dtype, z.device)
    centers = torch.empty(k, z.shape[1], dtype=z.dtype, device=z.device)
    centers[0] = z[first]
    closest = _sq_distances(z, sq_norms, centers[:1]).squeeze(1)
    potential = closest.sum()
    for c in range(1, k):
        # Candidates drawn with probability proportional to the squared
        # distance, by inverting the cumulative sum as scikit-learn does.
        draws = fractions[c - 1] * potential
        candidates = torch.searchsorted(torch.cumsum(closest, 0), draws).clamp_max_(n - 1)
        candidate_dist = torch.minimum(closest, _sq_distances(z, sq_norms, z[candidates]).T)
        sums = candidate_dist.sum(1)
        best = int(sums.argmin())
        centers[c] = z[candidates[best]]
        closest, potential = candidate_dist[best], sums[best]
    return centers


def _sq_distances(a: torch.Tensor, a_sq: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a_i - b_j|^2 (P x Q) for a: P x d with squared norms a_sq, b: Q x d,
    by the expanded form clamped at 0, as scikit-learn's k-means does."""
    d = torch.addmm(a_sq.unsqueeze(1), a, b.T, alpha=-2.0)
    d += (b * b).sum(1)
    return d.clamp_min_(0)


def _chunks(count: int, per_item: int) -> list[slice]:
    """Slices of range(count) with at most ~4M elements of per-item work."""
    step = max(1, _CHUNK_ELEMENTS // max(per_item, 1))
    return [slice(start, min(start + step, count)) for start in range(0, count, step)]
