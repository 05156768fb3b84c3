"""What every scorer does before scoring: validate the inputs, encode the
labels, pick the compute dtype and resolve the backend whose operations
(class_stats, integrate, own_class_probability) the scorer calls; and the
per-class statistics and residual Gram matrix that several scorers, and
ped_score's shared computations, start from.

The checks themselves are ped_fast._validate's and the backend choice is
ped_fast._backends'; this module only adds what is particular to scorers
(the class count a score needs, the dtype option, source-model
probabilities).
"""
from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any, Union

import numpy as np
import torch

from .. import _backends
from .._validate import ArrayLike, all_finite, features_tensor, labels_tensor, raise_non_finite, to_tensor
from ._linalg import gram

_DTYPES: dict[Any, torch.dtype] = {
    torch.float64: torch.float64,
    torch.float32: torch.float32,
    np.float64: torch.float64,
    np.float32: torch.float32,
    "float64": torch.float64,
    "float32": torch.float32,
}


PROBABILITY_SUM_TOLERANCE = 1e-3
# A scorer's dtype option: torch.float64, torch.float32, their numpy
# types or their names.
DtypeLike = Union[torch.dtype, type, str]


@dataclass
class Prepared:
    """x: the caller's N x D features as a torch view (never written);
    index: N int64 class positions; classes: the sorted unique labels;
    counts: C int64 samples per class; dtype: the compute dtype;
    launcher: the launcher module of the resolved backend."""

    x: torch.Tensor
    index: torch.Tensor
    classes: torch.Tensor
    counts: torch.Tensor
    dtype: torch.dtype
    launcher: ModuleType

    @property
    def num_classes(self) -> int:
        return self.classes.shape[0]


@dataclass
class ClassMoments:
    """Per-class means and population variances (C x D, float64) of one
    feature set, row c for class c of the labels' sorted classes."""

    means: torch.Tensor
    variances: torch.Tensor


def compute_dtype(dtype: object) -> torch.dtype:
    try:
        return _DTYPES[dtype]
    except (KeyError, TypeError):
        raise TypeError(f"dtype must be torch.float64 (the default) or torch.float32, got {dtype!r}") from None


def prepare(features: ArrayLike, labels: ArrayLike, dtype: object, backend: str, scorer: str) -> Prepared:
    """Validate (features, labels) for `scorer`, which needs two classes:
    with one class every sample is trivially "correct" and the score ranks
    nothing. `backend` is resolved for the features' device as ped()
    resolves it (same errors)."""
    dtype = compute_dtype(dtype)
    x, _ = features_tensor(features)
    index, classes, _ = labels_tensor(labels, x.shape[0], x.device)
    check_classes(classes, scorer)
    _, launcher = _backends.resolve(backend, x.device)
    counts = torch.bincount(index, minlength=classes.shape[0])
    return Prepared(x, index, classes, counts, dtype, launcher)


def check_classes(classes: torch.Tensor, scorer: str) -> None:
    if classes.shape[0] < 2:
        raise ValueError(
            f"{scorer} needs at least 2 classes to score how well features separate them, but labels has "
            f"{classes.shape[0]} distinct value ({classes.tolist()})"
        )


def class_moments(prep: Prepared, x: torch.Tensor | None = None) -> ClassMoments:
    """The ClassMoments of `x` (default prep.x; any N x D features with
    prep's labels), from the backend's class_stats: one pass over x.
    Non-finite features raise ValueError naming the first bad row."""
    x = prep.x if x is None else x
    _, means, variances = prep.launcher.class_stats(x, prep.index, prep.num_classes)
    if not all_finite(means, variances):
        raise_non_finite(x, "features")
    return ClassMoments(means, variances)


def global_mean(counts: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """The mean of all samples (D, float64) from per-class counts (C) and
    means (C x D, float64)."""
    weights = counts.to(torch.float64)
    return (weights.unsqueeze(1) * means).sum(0) / weights.sum()


def residual_gram(prep: Prepared, means: torch.Tensor) -> torch.Tensor:
    """R^T R (D x D, prep.dtype, both triangles) for the within-class
    residuals R = X - mu_y of prep.x, with `means` its class means (C x D).
    R is formed in the compute dtype by the backend's integrate (the
    caller's features are never written) and freed after the product."""
    residual = prep.x.to(prep.dtype, memory_format=torch.contiguous_format, copy=True)
    prep.launcher.integrate(residual, prep.index, (-means).to(prep.dtype), residual)
    return gram(residual)


def probabilities_tensor(probabilities: ArrayLike, logits: bool, dtype: torch.dtype, scorer: str) -> torch.Tensor:
    """Source-model outputs (N x K, numpy or torch, any device) as a `dtype`
    tensor of probabilities. logits=True: softmax over each row (in
    `dtype`). Otherwise the rows must already be probabilities: finite, >= 0 and
    summing to 1 within 1e-3 (softmax outputs in float32 sum to 1 within
    ~K * 6e-8; logits passed by mistake fail this check)."""
    if not isinstance(logits, bool):
        raise TypeError(f"logits must be True or False, got {logits!r}")
    p, _ = to_tensor(probabilities, "probabilities")
    if p.dim() != 2 or p.shape[0] == 0 or p.shape[1] == 0:
        raise ValueError(f"{scorer} reads the source model's outputs as probabilities, N samples x K source classes, "
                         f"got shape {tuple(p.shape)}")
    if p.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"probabilities must be float32 or float64, got {str(p.dtype).replace('torch.', '')}")
    if not all_finite(p):
        raise_non_finite(p, "probabilities")
    p = p.to(dtype)
    if logits:
        return torch.softmax(p, dim=1)
    if bool((p < 0).any()):
        row = int(torch.nonzero((p < 0).any(dim=1))[0, 0])
        raise ValueError(f"probabilities has negative values (first in row {row}); pass logits=True if these are the "
                         f"source model's logits")
    total = p.sum(dim=1)
    off = (total - 1).abs() > PROBABILITY_SUM_TOLERANCE
    if bool(off.any()):
        row = int(torch.nonzero(off)[0, 0])
        raise ValueError(f"rows of probabilities must sum to 1, but row {row} sums to {float(total[row]):.6g}; pass "
                         f"logits=True if these are the source model's logits")
    return p


def total_scatter(residual: torch.Tensor, counts: torch.Tensor, means: torch.Tensor, dtype: torch.dtype, *,
                  inplace: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(S, centred means): the total scatter S = sum_i (x_i - m)(x_i - m)^T
    (D x D, `dtype`) of features whose within-class residuals have Gram
    matrix `residual` (D x D, both triangles) and whose class means are
    `means` (C x D, float64, counts C), by S = R^T R + sum_c n_c (mu_c - m)
    (mu_c - m)^T; and the centred means mu_c - m (C x D, `dtype`), m the
    mean of all samples. inplace=True adds into `residual`."""
    centred = (means - global_mean(counts, means)).to(dtype)
    weighted = centred * counts.to(dtype).sqrt().unsqueeze(1)
    scatter = residual if inplace else residual.clone()
    scatter += weighted.T @ weighted
    return scatter, centred


class ScatterState:
    """What the H-scores and TransRate need from features beyond their class
    means: the within-class residuals' Gram matrix (D x D), which PED's
    moved features share with the input (prep: the input's Prepared,
    moments its ClassMoments)."""

    def __init__(self, prep: Prepared, moments: ClassMoments) -> None:
        self.residual: torch.Tensor | None = residual_gram(prep, moments.means)
        self.counts = prep.counts
        self.index = prep.index
        self.dtype = prep.dtype

    def total(self, moments: ClassMoments, last: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(total scatter S, centred class means) of features with these
        class moments; last=True reuses the residual Gram matrix's memory."""
        if self.residual is None:
            raise RuntimeError("ScatterState.total called after its last=True call, which used up the residual")
        scatter, centred = total_scatter(self.residual, self.counts, moments.means, self.dtype, inplace=last)
        if last:
            self.residual = None
        return scatter, centred
