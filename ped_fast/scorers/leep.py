"""LEEP, the log expected empirical prediction (Nguyen et al., "LEEP: a new
measure to evaluate transferability of learned representations", ICML
2020), as tllib computes it (tllib/ranking/leep.py); docs/spec.md §2.6.

LEEP reads the source model's predicted probabilities on the target
samples, not features: PED does not apply to it.

The published code forms the N x C matrix of every sample's expected
empirical prediction of every class and then picks each sample's own
class; only those N entries are computed here (a row-wise dot product of
each sample's probabilities with its class's row of p(y | z)), in row
chunks, so memory is O(C K + chunk K).
"""
from __future__ import annotations

import torch

from .. import _backends
from .._validate import ArrayLike, labels_tensor
from ._input import DtypeLike, check_classes, compute_dtype, probabilities_tensor
from ._linalg import group_sums

_CHUNK_ELEMENTS = 1 << 22


def leep(probabilities: ArrayLike, labels: ArrayLike, *, logits: bool = False, dtype: DtypeLike = torch.float64,
         backend: str = "auto") -> float:
    """LEEP score of the source model's `probabilities` (N x K: one row per
    target sample, one column per source class, each row summing to 1) for
    the target `labels` (N): the mean log of the expected empirical
    probability of each sample's label, a float <= 0; higher is better.

    logits=True: `probabilities` are the source model's logits, turned into
    probabilities by a softmax (in the compute dtype). dtype: torch.float64
    (default) or torch.float32. backend: checked as ped() checks it, so that
    every scorer takes the same options (LEEP runs no backend operation).
    Labels may be any integers; at least two classes. **ped_fast**: a source
    class with zero total probability contributes nothing (the published
    0/0 makes the score NaN).
    """
    dtype = compute_dtype(dtype)
    theta = probabilities_tensor(probabilities, logits, dtype, "leep")
    index, classes, _ = labels_tensor(labels, theta.shape[0], theta.device, "probabilities")
    check_classes(classes, "leep")
    _backends.resolve(backend, theta.device)
    n, sources = theta.shape
    joint = group_sums(index, theta, classes.shape[0]) / n  # p(y, z), C x K
    marginal = joint.sum(0)  # p(z)
    conditional = torch.where(marginal > 0, joint / marginal.clamp_min(torch.finfo(dtype).tiny), 0.0)  # p(y | z)
    total = 0.0
    step = max(1, _CHUNK_ELEMENTS // sources)
    for start in range(0, n, step):
        rows = slice(start, start + step)
        expected = (theta[rows] * conditional[index[rows]]).sum(1)  # sum_z theta_iz p(y_i | z)
        total += float(torch.log(expected).sum())
    return total / n
