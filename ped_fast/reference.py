"""The reference path: the three operations in plain vectorised PyTorch, on
any device. Every other backend is tested against these functions, and the
benchmarks time them as the baseline that a fused backend must beat.

They follow docs/spec.md §1 directly: a two-pass mean and variance per class, all
C x C distances by direct differences (torch.cdist without the Gram-matrix
shortcut), a dense weight matrix, and delta = rowsum(W) * mu - W @ mu.
"""
from __future__ import annotations

import torch

from ._common import Forces, PairBounds

DEVICES = None  # any device torch supports


def status() -> tuple[bool, str]:
    return True, f"torch {torch.__version__}"


def class_stats(x: torch.Tensor, index: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x: N x D float32/float64; index: N int64 in [0, C).
    Returns counts (C int64), mean and population variance (C x D float64)."""
    counts = torch.bincount(index, minlength=num_classes)
    xd = x.to(torch.float64)
    n = counts.to(torch.float64).clamp_min(1).unsqueeze(1)
    mean = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, device=x.device).index_add_(0, index, xd) / n
    centered = xd - mean[index]
    var = torch.zeros_like(mean).index_add_(0, index, centered * centered) / n
    return counts, mean, var


def make_bounds(num_classes: int, device: torch.device) -> None:
    """The reference path measures every pair at every step: no bounds."""
    return None


def pairwise_forces(mu: torch.Tensor, radius: torch.Tensor, *, nsigma: float, coef: float, bounds: PairBounds | None = None,
                    out: torch.Tensor | None = None) -> Forces:
    """mu: C x D float64 means, radius: C float64, coef = 0.5 * dt^2 * k.
    `out` (C x D float64), when given, receives delta (a buffer reused
    across steps)."""
    num_classes = mu.shape[0]
    dist = torch.cdist(mu, mu, compute_mode="donot_use_mm_for_euclid_dist")
    threshold = nsigma * (radius.unsqueeze(1) + radius.unsqueeze(0))
    overlap = (threshold - dist).clamp_min(0.0)
    magnitude = torch.minimum(coef * overlap, overlap)
    off_diagonal = ~torch.eye(num_classes, dtype=torch.bool, device=mu.device)
    positive = (dist > 0) & off_diagonal
    weight = torch.where(positive, magnitude / torch.where(positive, dist, 1.0), 0.0)
    delta = weight.sum(dim=1, keepdim=True) * mu - weight @ mu
    if out is not None:
        delta = out.copy_(delta)
    coincident = torch.nonzero(torch.triu((dist == 0) & off_diagonal))
    return Forces(
        delta=delta,
        position_change=float(delta.abs().sum()),
        coincident=coincident,
        evaluated_pairs=num_classes * (num_classes - 1) // 2,
        active_pairs=int(torch.triu(weight != 0).sum()),
    )


def integrate(x: torch.Tensor, index: torch.Tensor, shift: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out[i] = x[i] + shift[index[i]]; `out` may be `x` (in place)."""
    return torch.add(x, shift[index], out=out)


def own_class_probability(logits: torch.Tensor, table: torch.Tensor, index: torch.Tensor, *, soften: bool) -> torch.Tensor:
    """p_i[y_i] for the posteriors p_i = softmax(logits_i + table[y_i]) of a
    linear classifier (N x C logits without their class-dependent term,
    C x C table of it, y = index: N int64 in [0, C)); with soften=True p_i is
    first replaced by softmax(p_i), as the published SFDA does. Returns N
    values in the logits' dtype; never writes its inputs. Backends without a
    fused version of this tail use this one."""
    prob = torch.softmax(logits + table[index].to(logits.dtype), dim=1)
    if soften:
        prob = torch.softmax(prob, dim=1)
    return prob.gather(1, index.unsqueeze(1)).squeeze(1)
