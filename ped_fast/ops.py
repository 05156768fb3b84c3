"""The three operations of PED's hot path, on any backend.

These are thin public entry points over the launchers (ped_fast.reference,
ped_fast.cpu, ...), which all share one signature per operation. They check
what the launchers assume, so they can be called on their own, e.g. to reuse
the class statistics for another scorer.
"""
from __future__ import annotations

import torch

from . import _backends
from ._validate import check_inplace, features_tensor, labels_tensor, to_tensor, to_user


def class_stats(features, labels, *, backend="auto"):
    """Per-class statistics of `features` (N x D) in one pass.

    Returns (classes, counts, mean, var): the sorted unique labels (C), the
    sample count of each class (C), and per-class means and population
    variances (C x D, float64), in the caller's array type.
    """
    x, as_numpy = features_tensor(features)
    index, classes, _ = labels_tensor(labels, x.shape[0], x.device)
    _, launcher = _backends.resolve(backend, x.device)
    counts, mean, var = launcher.class_stats(x, index, classes.shape[0])
    return tuple(to_user(t, as_numpy) for t in (classes, counts, mean, var))


def pairwise_forces(means, radii, *, nsigma=0.6, time_step=0.1, force_constant=1.0, backend="auto"):
    """One PED step on class means `means` (C x D) with radii `radii` (C), in
    rescaled space: returns a ped_fast._common.Forces (delta is C x D float64)."""
    mu, _ = to_tensor(means, "means")
    radius, _ = to_tensor(radii, "radii")
    if mu.dim() != 2 or radius.shape != (mu.shape[0],):
        raise ValueError(f"means must be C x D and radii of length C, got {tuple(mu.shape)} and {tuple(radius.shape)}")
    mu = mu.to(torch.float64)
    radius = radius.to(device=mu.device, dtype=torch.float64)
    _, launcher = _backends.resolve(backend, mu.device)
    bounds = launcher.make_bounds(mu.shape[0], mu.device)
    return launcher.pairwise_forces(mu, radius, nsigma=nsigma, coef=0.5 * time_step**2 * force_constant, bounds=bounds)


def integrate(features, labels, shift, *, inplace=False, backend="auto"):
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
    return features if inplace else to_user(out, as_numpy)
