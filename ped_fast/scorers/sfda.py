"""SFDA (Shao et al., ECCV 2022) as the published code computes it
(docs/spec.md §2), in PyTorch on any device.

Every step of the published code is a function of per-class means and the
within-class residuals R = X - mu_y, and nothing else:
- Sw = R^T R / N: one D x D product, with no per-class loop and, unlike
  X^T X - sum_c n_c mu_c mu_c^T, no cancellation between two large terms;
- the logits x_i W_c + b_c = r_i W_c + (mu_y W_c + b_c): R W^T plus a C x C
  table gathered per sample; shifting every x and mu by one vector changes
  each row of logits by a constant, which softmax ignores, so the means are
  taken relative to the global mean (smaller numbers, same probabilities);
- ConfMix x'_i = q_i x_i + (1 - q_i) o_y moves each class towards o_c, so
  x'_i - o_c = q_i (r_i + mu_c - o_c), and the second fit's residuals are
  those rows minus their class mean: R is updated in place, N x D is held
  once, and the caller's features are never written.
B^-1 comes from a Cholesky solve instead of the published generalized
eigendecomposition (V V^T = B^-1 exactly, docs/spec.md §2.2).

Because PED moves whole classes, PED-moved features have the same residuals
R, hence the same Sw, shrinkage and first-pass factorisation as the input:
`SFDAResiduals` holds those, and ped_score() scores both from one of them
(SHARED, the registry's shared work for "sfda").

PED's forces point along differences of class means, so the moved means
stay in the affine hull of the input's: mu' - center = A Q^T for an
orthonormal D x C basis Q of the centred input means. When SFDAResiduals
scores several feature sets (ped_sweep's grid) and C is well below D, the
first fit's logits R B^-1 mu'^T are (R B^-1 Q) A^T: an N x C matrix formed
once, then N C^2 per score instead of N D C, and B^-1 is no longer solved
for mu'. The second (ConfMix) fit cannot be shared: it weighs each residual
by its own-class probability q_i, which moves with the means, so its
scatter sum_i q_i^2 r_i r_i^T is formed at every score (N D^2).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

import torch

from .. import reference
from .._validate import ArrayLike
from ._input import ClassMoments, DtypeLike, Prepared, class_moments, prepare
from ._linalg import SymmetricSolver, gram, matmul, symmetric_matvec, thin_qr_basis
from ._registry import SharedWork

POWER_ITERATIONS = 3
SHRINKAGE_FLOOR = 1e-10
# How far (in units of the features' eps times the size of a class's rows)
# a class mean may lie outside the input means' affine hull for the first
# fit to use the hull's basis: rounding the moved features to their dtype
# moves a class mean by about eps/2 of its rows' size, which the per-score
# path carries too; a mean farther out was not moved by PED alone.
HULL_TOLERANCE = 8.0
# SFDA is a mean probability of the true class, at most 1. Within 1e-6 of 1
# every sample's own class takes all but a millionth of its probability:
# the features separate the samples perfectly (with D >= N any labelling
# is separable), and models that all reach it cannot be ranked.
SATURATION_GAP = 1e-6
# The remedy a saturation reason recommends (sfda's and hscore's), in no
# API's terms: ped_score and the screen find this phrase and add how their
# users ask for it (a Python argument, a command-line option).
PROJECTION_REMEDY = "project the features on K principal axes with K well below N"


def sfda(features: ArrayLike, labels: ArrayLike, *, dtype: DtypeLike = torch.float64, backend: str = "auto") -> float:
    """SFDA transferability score of `features` (N x D) for `labels` (N).

    Returns a float in (0, 1): the mean probability the second (ConfMix)
    Fisher classifier gives each sample's own class. Higher means the classes
    separate better. dtype: torch.float64 (default, the published precision)
    or torch.float32 (about twice as fast; within 1e-7 of float64 on the
    golden cases). backend: runs the per-class statistics, the residual
    updates and the posterior tail, as for ped() ("auto", "reference",
    "cpu", ...; see available_backends()). Labels may be any integers;
    classes are the sorted unique labels. Needs at least two classes.
    """
    prep = prepare(features, labels, dtype, backend, "sfda")
    state = SFDAResiduals(prep.x, prep.index, prep.counts, prep.dtype, prep.launcher, class_moments(prep))
    return state.score(state.means, consume=True)


def saturation(value: float, *, samples: int, dimensions: int, classes: int) -> str | None:
    """The reason an SFDA score carries no ranking information (within
    SATURATION_GAP of its maximum 1), or None."""
    if value < 1.0 - SATURATION_GAP:
        return None
    why = f" (D = {dimensions} >= N = {samples}: any labelling is separable)" if dimensions >= samples else ""
    return (f"sfda is {value:.9g}, within {SATURATION_GAP:g} of its maximum 1: the features separate the samples "
            f"perfectly{why}, so models that do cannot be ranked; {PROJECTION_REMEDY}, or score more samples")


class SFDAResiduals:
    """Everything SFDA needs from the features that does not depend on where
    the class means are: residuals R (N x D, owned, compute dtype), priors,
    the shrinkage lambda and the first pass's factorised B (from Sw).
    `launcher` is the backend's launcher module that runs class_stats,
    integrate and (where it has one) the fused own_class_probability;
    `moments` the ClassMoments of x."""

    def __init__(self, x: torch.Tensor, index: torch.Tensor, counts: torch.Tensor, dtype: torch.dtype,
                 launcher: ModuleType, moments: ClassMoments) -> None:
        n, dim = x.shape
        mean, var = moments.means, moments.variances
        if float(var.sum()) == 0.0:
            raise ValueError(
                "sfda: features are constant within every class (within-class scatter is zero), so the "
                "Fisher classifier is undefined"
            )
        # Residuals in the compute dtype, written by the backend's integrate
        # (out = x + shift[class]) without an N x D temporary.
        if x.dtype == dtype:
            residual = torch.empty(n, dim, dtype=dtype, device=x.device)
            launcher.integrate(x, index, (-mean).to(dtype), residual)
        else:
            residual = x.to(dtype, memory_format=torch.contiguous_format, copy=True)
            launcher.integrate(residual, index, (-mean).to(dtype), residual)
        self.launcher = launcher
        # Backends without a fused posterior tail (triton, cuda) use the
        # reference twin's PyTorch ops.
        self.own_class_probability: Callable[..., torch.Tensor] = getattr(
            launcher, "own_class_probability", reference.own_class_probability)
        self.residual = residual
        self.index = index
        self.counts = counts
        self.log_prior = torch.log(counts.to(torch.float64) / n).to(dtype)
        self.means = mean  # float64, original coordinates
        self.variances = var  # float64, per class and dimension
        scatter = gram(residual, lower_only=True).div_(n)
        self.shrinkage = _shrinkage(scatter)
        self.solver = _shrunk_solver(scatter, self.shrinkage)
        self.feature_eps = torch.finfo(x.dtype).eps
        self.scored = 0
        # (Q, R B^-1 Q, Q^T B^-1 Q), from the second score on
        self.hull: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.scratch: torch.Tensor | None = None  # the second fit's N x D buffer, kept between scores

    def score(self, means: torch.Tensor, *, consume: bool) -> float:
        """SFDA score of the features whose class means are `means` (C x D,
        float64) and whose residuals are self.residual. consume=True updates
        the residuals in place (the object is spent); otherwise the second
        pass works in a buffer kept for the next score."""
        dtype = self.residual.dtype
        n, dim = self.residual.shape
        num_classes = means.shape[0]
        center = (self.counts.to(torch.float64).unsqueeze(1) * means).sum(0) / n
        centred = means - center
        mu = centred.to(dtype)

        if self.hull is None and not consume and self.scored and 2 * num_classes <= dim:
            self.hull = self._hull_basis()
        in_hull = None if self.hull is None else self._in_hull(means, centred)
        # "Soften": the published code exponentiates the probabilities again.
        if in_hull is None:
            q = self._own_probability(self.residual, mu, self.solver, soften=True)
        else:
            assert self.hull is not None  # in_hull is only computed with the hull basis
            basis, residual_basis, basis_inverse = self.hull
            table = matmul(in_hull, matmul(basis_inverse, in_hull.T))
            table += self.log_prior - 0.5 * table.diagonal()
            q = self.own_class_probability(matmul(residual_basis, in_hull.T), table, self.index, soften=True)
        q = q.unsqueeze(1)
        self.scored += 1
        others = (mu.sum(0) - mu) / (num_classes - 1)

        # ConfMix: x'_i - o_c = q_i (r_i + mu_c - o_c); then centre per class.
        if consume:
            mixed, self.scratch = self.residual, None
        else:
            if self.scratch is None:
                self.scratch = torch.empty_like(self.residual)
            mixed = self.scratch
        self.launcher.integrate(self.residual, self.index, mu - others, mixed)
        mixed.mul_(q)
        _, offset, _ = self.launcher.class_stats(mixed, self.index, num_classes)
        offset = offset.to(dtype)
        self.launcher.integrate(mixed, self.index, -offset, mixed)
        mu2 = offset + others

        solver2 = _shrunk_solver(gram(mixed, lower_only=True).div_(n), self.shrinkage)
        own = self._own_probability(mixed, mu2, solver2, soften=False)
        return float(own.mean())

    def _hull_basis(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(Q, R B^-1 Q, Q^T B^-1 Q): Q (D x C, float64) an orthonormal
        basis of the centred input means, which spans their affine hull;
        the two products in the compute dtype."""
        center = (self.counts.to(torch.float64).unsqueeze(1) * self.means).sum(0) / self.residual.shape[0]
        basis = thin_qr_basis((self.means - center).T.contiguous())
        inverse = self.solver.solve(basis.to(self.residual.dtype))  # D x C = B^-1 Q
        return basis, matmul(self.residual, inverse), matmul(basis.T.to(inverse.dtype).contiguous(), inverse)

    def _in_hull(self, means: torch.Tensor, centred: torch.Tensor) -> torch.Tensor | None:
        """The coordinates A (C x C, compute dtype) of the centred class
        means `centred` in the hull basis, or None when a class mean lies
        outside the input means' affine hull by more than rounding the
        features could put it there (HULL_TOLERANCE)."""
        assert self.hull is not None  # called once the hull basis is built
        basis = self.hull[0]
        coordinates = matmul(centred, basis)
        outside = torch.linalg.vector_norm(centred - matmul(coordinates, basis.T.contiguous()), dim=1)
        rows = (torch.linalg.vector_norm(means, dim=1) + torch.linalg.vector_norm(self.means, dim=1)
                + self.variances.sum(1).sqrt())
        if not bool((outside <= HULL_TOLERANCE * self.feature_eps * rows).all()):
            return None
        return coordinates.to(self.residual.dtype)

    def _own_probability(self, residual: torch.Tensor, mu: torch.Tensor, solver: SymmetricSolver, *,
                         soften: bool) -> torch.Tensor:
        """The probability the shrinkage-LDA classifier with class means `mu`
        (C x D, relative to any common origin) gives each sample r_i +
        mu_{y_i} of its own class (N); `solver` applies B^-1. soften: see
        reference.own_class_probability."""
        coef_t = solver.solve(mu.T)  # D x C = B^-1 mu^T
        table = matmul(mu, coef_t)
        # table[k, c] = mu_k W_c; the intercept is -1/2 mu_c W_c + log pi_c.
        table += self.log_prior - 0.5 * table.diagonal()
        return self.own_class_probability(matmul(residual, coef_t), table, self.index, soften=soften)


def _shrinkage(scatter: torch.Tensor) -> float:
    """lambda = max(exp(-5 lambda_max(Sw)), 1e-10), lambda_max by the
    published three rounds of power iteration from Sw 1. Reads the lower
    triangle of Sw only."""
    x = symmetric_matvec(scatter, torch.ones(scatter.shape[0], dtype=scatter.dtype, device=scatter.device))
    for _ in range(POWER_ITERATIONS):
        y = symmetric_matvec(scatter, x)
        y = y / torch.linalg.vector_norm(y)
        x = symmetric_matvec(scatter, y)
        x = x / torch.linalg.vector_norm(x)
    largest = float(x @ symmetric_matvec(scatter, y))
    return max(math.exp(-5.0 * largest), SHRINKAGE_FLOOR)


def _shrunk_solver(scatter: torch.Tensor, shrinkage: float) -> SymmetricSolver:
    """A solver for B = (1 - lambda) Sw + lambda tr(Sw)/D I (overwrites
    `scatter`). Sw is positive semi-definite, so B's eigenvalues are at least
    lambda tr(Sw)/D: the floor of the solver's fallback."""
    dim = scatter.shape[0]
    target = shrinkage * float(torch.trace(scatter)) / dim
    b = scatter.mul_(1.0 - shrinkage)
    b.diagonal().add_(target)
    return SymmetricSolver(b, target)


def _shared_prepare(prep: Prepared, moments: ClassMoments, options: Mapping[str, Any]) -> SFDAResiduals:
    return SFDAResiduals(prep.x, prep.index, prep.counts, prep.dtype, prep.launcher, moments)


def _shared_score(state: SFDAResiduals, x: torch.Tensor, moments: ClassMoments, last: bool) -> float:
    return state.score(moments.means, consume=last)


# Residuals, Sw, the shrinkage and the first fit's factorisation of B are
# the input's for PED's moved features too (docs/spec.md §3).
SHARED = SharedWork(prepare=_shared_prepare, score=_shared_score)
