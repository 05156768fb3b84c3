"""H-score (Bao et al., ICIP 2019) as tllib computes it
(tllib/ranking/hscore.py, h_score), and the regularized H-score with
Ledoit-Wolf shrinkage (Ibrahim et al., "Newer is not always better:
rethinking transferability metrics, their peculiarities, stability and
performance", arXiv 2212.10082) as transformer-ranker computes it
(transformer_ranker/estimators/hscore.py); docs/spec.md §2.8, §2.9.

Both read the features only through the total scatter
S = sum_i (x_i - m)(x_i - m)^T and the class means: the published code's
np.cov(g) of the per-sample class means is sum_c n_c (mu_c - m)(mu_c - m)^T
/ (N - 1), so no N x D matrix of class means is formed, and
trace(pinv(A) B) for that rank-C matrix B is a sum over C projections on
A's eigenvectors, from one symmetric eigendecomposition instead of the
published SVD-based pseudo-inverse and D x D product. S is the within-class
residuals' Gram matrix plus a rank-C term in the class means, so for PED's
moved features (same residuals, other means) the D x D product is shared
(SHARED, docs/spec.md §3).

The pseudo-inverse drops the eigenvalues at or below lambda_max * max(N, D)
* eps of the compute dtype, the rank tolerance of a Gram matrix, where the
published rcond=1e-15 can keep rounding noise (of either sign) of a
singular covariance and invert it.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .._validate import ArrayLike
from ._input import ClassMoments, DtypeLike, Prepared, ScatterState, class_moments, global_mean, prepare
from ._linalg import symmetric_eigh
from ._registry import SharedWork
from .sfda import PROJECTION_REMEDY

# At or above (C - 1)(1 - 1e-6) the H-score is at its maximum C - 1 (the
# features determine the class linearly, as any labelling does when
# D >= N - 1): models that reach it cannot be ranked.
SATURATION_GAP = 1e-6
_CHUNK_ELEMENTS = 1 << 22


def hscore(features: ArrayLike, labels: ArrayLike, *, dtype: DtypeLike = torch.float64, backend: str = "auto") -> float:
    """H-score of `features` (N x D) for `labels` (N):
    trace(pinv(cov(X)) cov(E[X | y])), a float in [0, C - 1]; higher is
    better. It reaches C - 1 when D >= N - 1 (see saturation). dtype:
    torch.float64 (default) or torch.float32. backend: runs the per-class
    statistics and the residuals, as for ped() ("auto", "reference",
    "cpu", ...). Labels may be any integers; at least two classes. Constant
    features score 0 (the pseudo-inverse of a zero covariance is zero, as
    published).
    """
    prep = prepare(features, labels, dtype, backend, "hscore")
    moments = class_moments(prep)
    return _hscore_score(ScatterState(prep, moments), prep.x, moments, True)


def reg_hscore(features: ArrayLike, labels: ArrayLike, *, dtype: DtypeLike = torch.float64,
               backend: str = "auto") -> float:
    """Regularized H-score of `features` (N x D) for `labels` (N):
    trace(pinv(cov_a) (1 - a) cov(E[X | y])) with cov_a the Ledoit-Wolf
    shrunk covariance and a its shrinkage, a float >= 0; higher is better.
    As transformer-ranker computes it: population covariance (/N) for
    cov_a, /(N - 1) for the class-mean covariance. **ped_fast**: when the
    shrinkage target's distance is zero (cov is a multiple of the identity:
    D = 1, constant features) the shrinkage is 0, scikit-learn's rule (as
    tllib's regularized_h_score has it), where transformer-ranker divides
    by zero (shrinkage 1 and a score of 0, or NaN); constant features then
    score 0. dtype, backend: as for hscore.
    """
    prep = prepare(features, labels, dtype, backend, "reg_hscore")
    moments = class_moments(prep)
    return _reg_hscore_score(ScatterState(prep, moments), prep.x, moments, True)


def saturation(value: float, *, samples: int, dimensions: int, classes: int) -> str | None:
    """The reason an H-score carries no ranking information (within
    SATURATION_GAP of its maximum C - 1), or None."""
    top = classes - 1
    if value < top * (1.0 - SATURATION_GAP):
        return None
    why = f" (D = {dimensions} >= N - 1 = {samples - 1})" if dimensions >= samples - 1 else ""
    return (f"hscore is {value:.9g}, at its maximum C - 1 = {top}: the features determine the class linearly{why}, "
            f"so models that do cannot be ranked; {PROJECTION_REMEDY}, or score more samples")


def _projected_mass(values: torch.Tensor, vectors: torch.Tensor, centred: torch.Tensor, counts: torch.Tensor,
                    dim_n: int) -> float:
    """sum_c n_c mu_c^T pinv(A) mu_c for A = V diag(values) V^T: the
    eigenvalues at or below values.max() * max(N, D) * eps count as zero.
    centred: C x D centred class means; dim_n: max(N, D)."""
    top = float(values.max())
    if not top > 0:
        return 0.0
    keep = values > top * dim_n * torch.finfo(values.dtype).eps
    weighted = centred * counts.to(centred.dtype).sqrt().unsqueeze(1)
    projections = vectors[:, keep].T @ weighted.T  # k x C
    return float(((projections * projections).sum(1) / values[keep]).sum())


def _hscore_score(state: ScatterState, x: torch.Tensor, moments: ClassMoments, last: bool) -> float:
    n, dim = x.shape
    scatter, centred = state.total(moments, last)
    # cov(X) = S / (N - 1) and cov(E[X|y]) = sum_c n_c mu_c mu_c^T / (N - 1):
    # the two factors cancel in trace(pinv(cov(X)) cov(E[X|y])).
    values, vectors = symmetric_eigh(scatter)
    return _projected_mass(values, vectors, centred, state.counts, max(n, dim))


def _reg_hscore_score(state: ScatterState, x: torch.Tensor, moments: ClassMoments, last: bool) -> float:
    n, dim = x.shape
    scatter, centred = state.total(moments, last)
    cov = scatter.div_(n)
    trace = float(cov.diagonal().sum())
    mu = trace / dim
    delta_sq = float((cov * cov).sum())  # sum of the squared covariances
    # The published beta_ is the sum of all entries of X2^T X2 (X2 the
    # squared centred features): sum_i ||x_i - m||^4, one pass over X instead
    # of an N D^2 product.
    fourth = _sum_fourth_powers(x, global_mean(state.counts, moments.means).to(state.dtype)) / n
    beta = (fourth - delta_sq) / (dim * n)
    delta = (delta_sq - 2.0 * mu * trace + dim * mu**2) / dim
    shrinkage = 0.0 if delta == 0.0 else min(max(beta / delta, 0.0), 1.0)
    values, vectors = symmetric_eigh(cov)
    shrunk = (1.0 - shrinkage) * values + shrinkage * mu
    return (1.0 - shrinkage) / (n - 1) * _projected_mass(shrunk, vectors, centred, state.counts, max(n, dim))


def _sum_fourth_powers(x: torch.Tensor, center: torch.Tensor) -> float:
    """sum_i ||x_i - center||^4 over the rows of x, in row chunks of ~4M
    elements in center's dtype."""
    total = 0.0
    step = max(1, _CHUNK_ELEMENTS // x.shape[1])
    for start in range(0, x.shape[0], step):
        rows = x[start : start + step].to(center.dtype) - center
        total += float(rows.square_().sum(1).square_().sum())
    return total


def _applies(n: int, dim: int, baseline: bool) -> bool:
    # Without a baseline there is one feature set to score: nothing to share.
    return baseline


def _prepare(prep: Prepared, moments: ClassMoments, options: Mapping[str, Any]) -> ScatterState:
    return ScatterState(prep, moments)


# The residuals' Gram matrix is the input's for PED's moved features
# (docs/spec.md §3); each score adds its rank-C term and decomposes S.
HSCORE_SHARED = SharedWork(prepare=_prepare, score=_hscore_score, applies=_applies)
REG_HSCORE_SHARED = SharedWork(prepare=_prepare, score=_reg_hscore_score, applies=_applies)
