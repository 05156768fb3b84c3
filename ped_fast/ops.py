"""The three operations of PED's hot path, on any backend.

These are thin public entry points over the launchers (ped_fast.reference,
ped_fast.cpu, ...), which all share one signature per operation. They check
what the launchers assume, with ped()'s errors, so they can be called on
their own, e.g. to reuse the class statistics for another scorer, and every
backend gives the same answer or the same error.
"""
from __future__ import annotations

from typing import cast

import torch

from . import _backends
from ._common import Forces
from ._validate import (
    Array,
    ArrayLike,
    all_finite,
    check_inplace,
    check_number,
    features_tensor,
    labels_tensor,
    raise_non_finite,
    to_tensor,
    to_user,
)
from .ped import step_coefficient

__all__ = ["class_stats", "pairwise_forces", "integrate", "Forces"]


def class_stats(features: ArrayLike, labels: ArrayLike, *,
                backend: str = "auto") -> tuple[Array, Array, Array, Array]:
    """Per-class statistics of `features` (N x D) in one pass.

    Returns (classes, counts, mean, var): the sorted unique labels (C), the
    sample count of each class (C), and per-class means and population
    variances (C x D, float64), in the caller's array type. Non-finite
    features raise ped()'s error (how each backend's statistics carry them
    differs: a NaN mean on one is an inf on another).
    """
    x, as_numpy = features_tensor(features)
    index, classes, _ = labels_tensor(labels, x.shape[0], x.device)
    _, launcher = _backends.resolve(backend, x.device)
    counts, mean, var = launcher.class_stats(x, index, classes.shape[0])
    if not all_finite(mean, var):
        raise_non_finite(x, "features")
    return to_user(classes, as_numpy), to_user(counts, as_numpy), to_user(mean, as_numpy), to_user(var, as_numpy)


def pairwise_forces(means: ArrayLike, radii: ArrayLike, *, nsigma: float = 0.6, time_step: float = 0.1,
                    force_constant: float = 1.0, backend: str = "auto") -> Forces:
    """One PED step on class means `means` (C x D) with radii `radii` (C), in
    rescaled space, measuring every pair: returns a ped_fast._common.Forces
    (delta is C x D float64). nsigma, time_step and force_constant are
    ped()'s (docs/spec.md §1.1), checked as ped() checks them; means and radii
    must be finite, radii >= 0."""
    time_step = check_number(time_step, "time_step")
    nsigma = check_number(nsigma, "nsigma")
    force_constant = check_number(force_constant, "force_constant")
    mu = _real_tensor(means, "means")
    radius = _real_tensor(radii, "radii")
    if mu.dim() != 2 or mu.shape[0] == 0 or mu.shape[1] == 0:
        raise ValueError(f"means must be C x D with at least one class and one dimension, got shape {tuple(mu.shape)}")
    if radius.shape != (mu.shape[0],):
        raise ValueError(f"radii must be a vector of length {mu.shape[0]} (one per row of means), "
                         f"got shape {tuple(radius.shape)}")
    mu = mu.to(torch.float64)
    radius = radius.to(device=mu.device, dtype=torch.float64)
    if not all_finite(mu):
        raise_non_finite(mu, "means")
    bad = ~torch.isfinite(radius) | (radius < 0)
    if bool(bad.any()):
        first = int(torch.nonzero(bad)[0, 0])
        raise ValueError(f"radii must be finite and >= 0, got {float(radius[first])!r} at index {first}")
    _, launcher = _backends.resolve(backend, mu.device)
    bounds = launcher.make_bounds(mu.shape[0], mu.device)
    forces: Forces = launcher.pairwise_forces(mu, radius, nsigma=nsigma,
                                              coef=step_coefficient(time_step, force_constant), bounds=bounds)
    return forces


def _real_tensor(value: ArrayLike, name: str) -> torch.Tensor:
    t, _ = to_tensor(value, name)
    if t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"{name} must be real numbers, got {str(t.dtype).replace('torch.', '')}")
    return t


def integrate(features: ArrayLike, labels: ArrayLike, shift: ArrayLike, *, inplace: bool = False,
              backend: str = "auto") -> Array:
    """features[i] + shift[class of labels[i]] for every row; `shift` is
    C x D, one row per sorted unique label. With inplace=True the caller's
    array is updated and returned (it must be a writable numpy array or
    torch tensor, as for ped(inplace=True))."""
    check_inplace(inplace, features)
    x, as_numpy = features_tensor(features)
    index, classes, _ = labels_tensor(labels, x.shape[0], x.device)
    sh, _ = to_tensor(shift, "shift")
    if tuple(sh.shape) != (classes.shape[0], x.shape[1]):
        raise ValueError(f"shift must be {classes.shape[0]} x {x.shape[1]} (classes x D), got {tuple(sh.shape)}")
    _, launcher = _backends.resolve(backend, x.device)
    out = x if inplace else torch.empty_like(x, memory_format=torch.contiguous_format)
    launcher.integrate(x, index, sh.to(device=x.device, dtype=x.dtype), out)
    # check_inplace made sure an in-place `features` is an array.
    return cast(Array, features) if inplace else to_user(out, as_numpy)
