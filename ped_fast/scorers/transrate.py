"""TransRate (Huang et al., "Frustratingly easy transferability estimation",
ICML 2022) as tllib computes it (tllib/ranking/transrate.py);
docs/spec.md §2.10.

With F the globally centred features and F_c its rows of class c, the
published score is R(F) - (1/C) sum_c R(F_c), where the coding rate of an
n x D matrix is R = 1/2 log det(I_D + F^T F / (n eps)). The published code
takes the log-determinant of a D x D matrix per class (C LU factorisations
of D x D); by Sylvester's identity det(I_D + a F_c^T F_c) = det(I_n +
a F_c F_c^T), so a class with n_c <= D costs an n_c x n_c Gram matrix and
Cholesky factorisation instead, and so does the whole set when N <= D.
For N > D, F^T F is the total scatter, the residuals' Gram matrix plus a
rank-C term in the class means: for PED's moved features the D x D product
is shared (SHARED, docs/spec.md §3).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .._validate import ArrayLike, check_number
from ._input import ClassMoments, DtypeLike, Prepared, ScatterState, class_moments, global_mean, prepare
from ._linalg import gram, matmul, spd_logdet
from ._registry import SharedWork

EPS = 1e-4


def transrate(features: ArrayLike, labels: ArrayLike, *, eps: float = EPS, dtype: DtypeLike = torch.float64,
              backend: str = "auto") -> float:
    """TransRate of `features` (N x D) for `labels` (N): the coding rate of
    the centred features minus the mean coding rate of each class's rows, a
    float; higher is better. eps: the distortion (the published 1e-4).
    dtype: torch.float64 (default) or torch.float32. backend: runs the
    per-class statistics and the residuals, as for ped() ("auto",
    "reference", "cpu", ...). Labels may be any integers; at least two
    classes. Constant features score 0 (every coding rate is 0).
    """
    eps = check_number(eps, "eps", strict=True)
    prep = prepare(features, labels, dtype, backend, "transrate")
    moments = class_moments(prep)
    return _score((_scatter_state(prep, moments), eps, prep), prep.x, moments, True)


def _scatter_state(prep: Prepared, moments: ClassMoments) -> ScatterState | None:
    """The residuals' Gram matrix when the total scatter is the smaller
    Gram matrix (N > D); None otherwise."""
    n, dim = prep.x.shape
    return ScatterState(prep, moments) if n > dim else None


def _coding_rate(gram_matrix: torch.Tensor, rows: int, eps: float) -> float:
    """1/2 log det(I + G / (rows eps)) for the Gram matrix G of `rows`
    rows (either F^T F or F F^T: the same determinant)."""
    shifted = gram_matrix / (rows * eps)
    shifted.diagonal().add_(1.0)
    return 0.5 * spd_logdet(shifted)


def _score(state: tuple[ScatterState | None, float, Prepared], x: torch.Tensor, moments: ClassMoments, last: bool) -> float:
    scatter_state, eps, prep = state
    n, dim = x.shape
    center = global_mean(prep.counts, moments.means).to(prep.dtype)
    if scatter_state is None:
        # N <= D: F F^T (N x N) has only F's nonzero eigenvalues, where the
        # D x D F^T F adds D - N + 1 zero ones that come out as rounding
        # noise (visible in float32).
        centred = x.to(prep.dtype) - center
        rate = _coding_rate(matmul(centred, centred.T), n, eps)
        del centred
    else:
        rate = _coding_rate(scatter_state.total(moments, last)[0], n, eps)
    order = torch.argsort(prep.index, stable=True)
    class_rates = 0.0
    start = 0
    for count in prep.counts.tolist():
        rows = x[order[start : start + count]].to(prep.dtype) - center
        start += count
        # Sylvester: the smaller of F_c F_c^T and F_c^T F_c.
        class_gram = matmul(rows, rows.T) if count <= dim else gram(rows)
        class_rates += _coding_rate(class_gram, count, eps)
    return rate - class_rates / prep.counts.shape[0]


def _prepare(prep: Prepared, moments: ClassMoments,
             options: Mapping[str, Any]) -> tuple[ScatterState | None, float, Prepared]:
    return ScatterState(prep, moments), check_number(options.get("eps", EPS), "eps", strict=True), prep


def _applies(n: int, dim: int, baseline: bool) -> bool:
    # Without a baseline there is one feature set to score, and with N <= D
    # the coding rate comes from F F^T: nothing to share.
    return baseline and n > dim


# The residuals' Gram matrix is the input's for PED's moved features; the
# per-class Gram matrices are read from each feature set (docs/spec.md §3).
SHARED = SharedWork(prepare=_prepare, score=_score, applies=_applies)
