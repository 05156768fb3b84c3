"""GBC, the Gaussian Bhattacharyya Coefficient (Pándy et al., CVPR 2022),
as Google Research's published code computes it (docs/spec.md §2).

Like PED's forces, GBC is a reduction over D for every pair of classes, and
it starts from the same per-class means and population variances, which come
from the backends' class_stats (one pass over X, float64). The spherical
variant needs only the C x C distances between class means, computed as
PED's reference path computes them (torch.cdist by direct differences, no
Gram-matrix cancellation); the diagonal variant weighs every dimension by
the pair's own variances, so its C x C x D terms are summed in tiles over the
upper triangle (DB is symmetric) with O(tile x C x D) memory.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from .._validate import ArrayLike
from ._input import ClassMoments, DtypeLike, Prepared, class_moments, prepare
from ._registry import SharedWork

VARIANCE_FLOOR = 1e-4
GAUSSIANS = ("spherical", "diagonal")
_TILE_ELEMENTS = 1 << 22


def gbc(features: ArrayLike, labels: ArrayLike, *, gaussian: str = "spherical", dtype: DtypeLike = torch.float64,
        backend: str = "auto") -> float:
    """GBC score of `features` (N x D) for `labels` (N): minus the sum over
    ordered pairs of classes of their Bhattacharyya coefficients, a float
    <= 0; higher (closer to 0) means better separated classes.

    gaussian: "spherical" (the published default: one variance per class,
    the mean of its floored per-dimension variances) or "diagonal" (one
    variance per class and dimension). Variances are floored at 1e-4 as
    published, so constant features and one-sample classes give a finite
    score. dtype: torch.float64 (default) or torch.float32. backend: runs the
    per-class statistics, as for ped() ("auto", "reference", "cpu", ...; see
    available_backends()). Labels may be any integers; at least two classes.
    """
    check_gaussian(gaussian)
    prep = prepare(features, labels, dtype, backend, "gbc")
    moments = class_moments(prep)
    return gbc_from_stats(moments.means.to(prep.dtype), moments.variances.to(prep.dtype), gaussian)


def check_gaussian(gaussian: str) -> None:
    if gaussian not in GAUSSIANS:
        raise ValueError(f"gaussian must be 'spherical' or 'diagonal', got {gaussian!r}")


def gbc_from_stats(mean: torch.Tensor, var: torch.Tensor, gaussian: str) -> float:
    """GBC from per-class means and population variances (C x D each)."""
    var = var.clamp_min(VARIANCE_FLOOR)
    if gaussian == "spherical":
        distance = _bhattacharyya_spherical(mean, var.mean(dim=1))
        distance.fill_diagonal_(math.inf)
        return -float(torch.exp(-distance).sum())
    return -2.0 * _upper_coefficient_sum(mean, var)


def _bhattacharyya_spherical(mean: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """C x C distances for isotropic Gaussians with variances `sigma` (C).
    As published, the log-determinant terms are those of the scalar
    variances (not multiplied by D)."""
    sq_dist = torch.cdist(mean, mean, compute_mode="donot_use_mm_for_euclid_dist").square_()
    avg = 0.5 * (sigma.unsqueeze(1) + sigma.unsqueeze(0))
    log_sigma = torch.log(sigma)
    return sq_dist / (8.0 * avg) + 0.5 * (torch.log(avg) - 0.5 * log_sigma.unsqueeze(1) - 0.5 * log_sigma.unsqueeze(0))


def _upper_coefficient_sum(mean: torch.Tensor, var: torch.Tensor) -> float:
    """sum over i < j of exp(-DB_ij) for diagonal Gaussians, in row tiles:
    DB_ij = 1/8 sum_d (mu_id - mu_jd)^2 / s_d + 1/2 (sum_d log s_d
    - 1/2 sum_d log var_id - 1/2 sum_d log var_jd), s = (var_i + var_j) / 2."""
    num_classes, dim = mean.shape
    log_det = torch.log(var).sum(dim=1)
    total = torch.zeros((), dtype=mean.dtype, device=mean.device)
    start = 0
    while start < num_classes - 1:
        # Rows [start, stop) against columns (row, C): a tile of at most
        # ~4M elements; later rows have fewer columns, so tiles grow.
        columns = num_classes - start - 1
        stop = min(num_classes - 1, start + max(1, _TILE_ELEMENTS // max(columns * dim, 1)))
        rows = slice(start, stop)
        cols = slice(start + 1, num_classes)
        avg = 0.5 * (var[rows].unsqueeze(1) + var[cols].unsqueeze(0))
        diff = mean[rows].unsqueeze(1) - mean[cols].unsqueeze(0)
        distance = 0.125 * (diff.square_() / avg).sum(dim=2)
        log_terms = torch.log(avg).sum(dim=2) - 0.5 * log_det[rows].unsqueeze(1) - 0.5 * log_det[cols].unsqueeze(0)
        distance += 0.5 * log_terms
        # Keep j > i only: row i of the tile starts at column i + 1.
        upper = torch.ones(stop - start, columns, dtype=torch.bool, device=mean.device).triu_()
        total += torch.exp(-distance).masked_fill_(~upper, 0.0).sum()
        start = stop
    return float(total)


def _shared_prepare(prep: Prepared, moments: ClassMoments, options: Mapping[str, Any]) -> tuple[str, torch.dtype]:
    gaussian = options.get("gaussian", "spherical")
    check_gaussian(gaussian)
    return gaussian, prep.dtype


def _shared_score(state: tuple[str, torch.dtype], x: torch.Tensor, moments: ClassMoments, last: bool) -> float:
    gaussian, dtype = state
    return gbc_from_stats(moments.means.to(dtype), moments.variances.to(dtype), gaussian)


# GBC reads only class means and variances: ped_score has them for both
# feature sets (the moved ones from the pass that checks their spread), so
# each score costs no pass of its own (docs/spec.md §3).
SHARED = SharedWork(prepare=_shared_prepare, score=_shared_score)
