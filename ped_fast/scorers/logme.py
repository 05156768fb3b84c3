"""LogME (You et al., ICML 2021) with the fixed-point solver of their 2021
follow-up, as the published PED/SFDA code calls it (docs/spec.md §2).

With N > D everything comes from the D x D Gram matrix X^T X: its
eigendecomposition gives the singular values s and right vectors V, and the
projections of a target t on the left vectors are z = V^T (X^T t) / s. For
class targets X^T t is a column of per-class sums, so no N x C one-hot matrix
is formed and X is read twice (Gram matrix, class sums). The fixed-point
iteration then runs for all targets at once on k x K numbers, each target
stopping at its own iteration exactly as the published per-class loop does.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NoReturn

import torch

from .. import _backends
from .._validate import ArrayLike, all_finite, features_tensor, raise_non_finite, to_tensor
from ._input import ClassMoments, DtypeLike, Prepared, class_moments, compute_dtype, prepare, residual_gram
from ._linalg import gram, symmetric_eigh
from ._registry import SharedWork

MAX_ITERATIONS = 11
TOLERANCE = 1e-3
EPSILON = 1e-5
SINGULAR_FLOOR = 1e-10


def logme(features: ArrayLike, labels: ArrayLike, *, regression: bool = False, dtype: DtypeLike = torch.float64,
          backend: str = "auto") -> float:
    """LogME evidence of `features` (N x D) for `labels`.

    Classification (default): labels are N integers (any values; classes are
    the sorted unique labels; at least two classes), one one-vs-rest target
    per class. regression=True: labels are real targets, N or N x K.
    Returns the mean over targets of the maximised log evidence per sample (a
    float, higher is better). dtype: torch.float64 (default, the published
    precision) or torch.float32. backend: runs the per-class sums, as for
    ped() ("auto", "reference", "cpu", ...; see available_backends()); the
    regression targets need no backend operation, but the name is checked
    all the same.

    Rank-deficient features (N > D): directions whose eigenvalue of X^T X
    is within rounding of zero are dropped, so the score does not depend on
    how a LAPACK build rounds them (see evidence_from_gram). Features that
    are zero, or so small that every singular value is at most the
    published floor 1e-10, raise ValueError.
    """
    if not isinstance(regression, bool):
        raise TypeError(f"regression must be True or False, got {regression!r}")
    if regression:
        return _regression(features, labels, compute_dtype(dtype), backend)
    prep = prepare(features, labels, dtype, backend, "logme")
    x = prep.x
    counts = prep.counts.to(prep.dtype)
    sums = class_moments(prep).means.to(prep.dtype).T * counts  # D x C = X^T T
    n, dim = x.shape
    if n > dim:
        return evidence_from_gram(gram(_as(x, prep.dtype), lower_only=True), sums, counts, n)
    onehot = torch.zeros(n, prep.num_classes, dtype=prep.dtype, device=x.device)
    onehot.scatter_(1, prep.index.unsqueeze(1), 1.0)
    return _evidence_from_svd(_as(x, prep.dtype), onehot)


def evidence_from_gram(gram_matrix: torch.Tensor, xt_targets: torch.Tensor, target_sq: torch.Tensor, n: int) -> float:
    """Mean LogME evidence for N > D from X^T X (D x D, lower triangle
    read), X^T T (D x K) and the squared norms of the K targets (K).

    The published code keeps the singular values s of X (square roots of
    X^T X's) above 1e-10 and drops the rest; each one dropped or kept moves
    the evidence by about log(alpha) / (2N), so the count matters. For
    rank-deficient X (constant, duplicated or dead-unit columns) X^T X's
    zero eigenvalues come out of any eigensolver as rounding noise, up to
    about eps * D * lambda_max and of either sign, which the 1e-10 floor
    keeps or drops as the LAPACK build happens to round (constant 100 x 5
    features: -0.5054 with numpy's, -0.5384 with scipy's). Here an
    eigenvalue counts as zero at or below numpy.linalg.matrix_rank's default
    tolerance for X^T X, lambda_max * D * eps of the compute dtype, as well
    as below the published floor: the rank, hence the score, is X's in
    exact arithmetic whatever the build. Features whose every direction
    stands above rounding keep every value, as published (the golden cases'
    smallest eigenvalue ratio is ~1e-2, eleven orders above the tolerance).
    Raises ValueError when no
    value is kept: X is zero (or below the floor everywhere), and the
    evidence would be log(0)."""
    dim = gram_matrix.shape[0]
    values, vectors = symmetric_eigh(gram_matrix)
    # Singular values of the symmetric X^T X are |eigenvalues|, as the
    # published code's SVD of X^T X gives them.
    magnitude = values.abs()
    rank_tolerance = float(magnitude.max()) * dim * torch.finfo(magnitude.dtype).eps
    keep = (magnitude > rank_tolerance) & (magnitude.sqrt() > SINGULAR_FLOOR)
    if not bool(keep.any()):
        _raise_no_singular_value()
    s, vectors = magnitude[keep].sqrt(), vectors[:, keep]
    z = (vectors.T @ xt_targets) / s.unsqueeze(1)
    return _fixed_point(s * s, z, target_sq, n, dim)


def _evidence_from_svd(x: torch.Tensor, targets: torch.Tensor) -> float:
    """N <= D: the thin SVD of X itself, keeping all min(N, D) values, as
    published. No count depends on rounding here: every term of the fixed
    point is continuous in sigma = s^2 at 0, so a zero singular value that
    comes out as noise (sigma ~ (eps s_max)^2) changes nothing measurable.
    Raises ValueError when even the
    largest is below the published floor 1e-10, as evidence_from_gram
    does (for X = 0 the fixed point would divide 0 by 0)."""
    n, dim = x.shape
    u, s, _ = torch.linalg.svd(x, full_matrices=False)
    if not float(s.max()) > SINGULAR_FLOOR:
        _raise_no_singular_value()
    z = u.T @ targets
    return _fixed_point(s * s, z, (targets * targets).sum(0), n, dim)


def _raise_no_singular_value() -> NoReturn:
    raise ValueError(
        f"logme: every singular value of features is at most {SINGULAR_FLOOR:g} (the features are zero or nearly "
        f"so), so there is no evidence to maximise"
    )


def _fixed_point(sigma: torch.Tensor, z: torch.Tensor, target_sq: torch.Tensor, n: int, dim: int) -> float:
    """sigma: k squared singular values; z: k x K projections of the K
    targets; target_sq: ||t||^2 per target. Returns the mean evidence / N."""
    sigma = sigma.unsqueeze(1)
    z2 = z * z
    residual_sq = target_sq - z2.sum(0)
    num_targets = z.shape[1]
    alpha = torch.ones(num_targets, dtype=z.dtype, device=z.device)
    beta = torch.ones_like(alpha)
    m2 = torch.zeros_like(alpha)
    res2 = torch.zeros_like(alpha)
    active = torch.ones(num_targets, dtype=torch.bool, device=z.device)
    for _ in range(MAX_ITERATIONS):
        t = alpha / beta
        gamma = (sigma / (sigma + t)).sum(0)
        new_m2 = (sigma * z2 / (t + sigma) ** 2).sum(0)
        new_res2 = (z2 / (1 + sigma / t) ** 2).sum(0) + residual_sq
        new_alpha = gamma / (new_m2 + EPSILON)
        new_beta = (n - gamma) / (new_res2 + EPSILON)
        # A target that has converged keeps the values of its last iteration.
        m2 = torch.where(active, new_m2, m2)
        res2 = torch.where(active, new_res2, res2)
        alpha = torch.where(active, new_alpha, alpha)
        beta = torch.where(active, new_beta, beta)
        active &= (new_alpha / new_beta - t).abs() / t > TOLERANCE
        if not bool(active.any()):
            break
    evidence = (
        dim / 2.0 * torch.log(alpha)
        + n / 2.0 * torch.log(beta)
        - 0.5 * torch.log(alpha + beta * sigma).sum(0)
        - beta / 2.0 * res2
        - alpha / 2.0 * m2
        - n / 2.0 * math.log(2 * math.pi)
    ) / n
    return float(evidence.mean())


def _regression(features: ArrayLike, targets: ArrayLike, dtype: torch.dtype, backend: str) -> float:
    x, _ = features_tensor(features)
    _backends.resolve(backend, x.device)
    t, _ = to_tensor(targets, "labels")
    if t.dim() == 1:
        t = t.unsqueeze(1)
    if t.dim() != 2 or t.shape[0] != x.shape[0]:
        raise ValueError(
            f"regression targets must be N or N x K with N = {x.shape[0]} (the rows of features), got shape "
            f"{tuple(t.shape)}"
        )
    if t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"regression targets must be real numbers, got {str(t.dtype).replace('torch.', '')}")
    t = t.to(device=x.device, dtype=dtype)
    if not all_finite(t):
        raise_non_finite(t, "labels")
    xc = _as(x, dtype)
    xt_targets = xc.T @ t
    if not all_finite(xt_targets):
        raise_non_finite(x, "features")
    n, dim = x.shape
    if n > dim:
        return evidence_from_gram(gram(xc, lower_only=True), xt_targets, (t * t).sum(0), n)
    return _evidence_from_svd(xc, t)


def _as(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x in `dtype` with contiguous rows (a copy only when needed)."""
    return x.to(dtype).contiguous()


def _shared_applies(n: int, dim: int, baseline: bool) -> bool:
    # One feature set to score, or N <= D (an SVD of X itself): nothing to
    # share.
    return baseline and n > dim


def _shared_prepare(prep: Prepared, moments: ClassMoments,
                    options: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.dtype]:
    return residual_gram(prep, moments.means), prep.counts.to(prep.dtype), prep.dtype


def _shared_score(state: tuple[torch.Tensor, torch.Tensor, torch.dtype], x: torch.Tensor, moments: ClassMoments,
                  last: bool) -> float:
    residual, counts, dtype = state
    means = moments.means.to(dtype)
    sums = means.T * counts  # X^T T, D x C
    return evidence_from_gram(residual + sums @ means, sums, counts, x.shape[0])


# X^T X = R^T R + sum_c n_c mu_c mu_c^T and X^T t_c = n_c mu_c: the
# residuals' Gram matrix is the input's for PED's moved features, and each
# score adds a rank-C update (docs/spec.md §3).
SHARED = SharedWork(prepare=_shared_prepare, score=_shared_score, applies=_shared_applies)
