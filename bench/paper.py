"""The published PED formulation in numpy, as the "paper" baseline.

Faithful to what docs/spec.md §1 says the published code does: float64
throughout, X rescaled into Z-space, class statistics recomputed from all N
samples at every step, C x C x D arrays for the pair differences, their
directions and the weighted forces, every sample moved at every step, and a
round trip back to the original space. Its memory is O(C^2 D): 2.6 GB per
C x C x D array at SUN397 shape, 16 GB at ImageNet shape.
"""
import numpy as np


def ped_paper(x, y, g, time_step=0.1, nsigma=0.6, force_constant=1.0, exit_ratio=0.5, max_steps=6, eps=1e-3):
    """Returns (moved X, steps, position changes)."""
    x = np.asarray(x, dtype=np.float64)
    g = np.asarray(g, dtype=np.float64)
    m = g.mean(axis=0)
    s = np.maximum(g.std(axis=0), eps)
    z = (x - m) / s
    classes, inverse = np.unique(y, return_inverse=True)
    eye = np.eye(len(classes), dtype=bool)
    position_changes, steps, first = [], 0, None
    for _ in range(max_steps):
        members = [z[inverse == c] for c in range(len(classes))]
        mu = np.stack([rows.mean(axis=0) for rows in members])
        radius = np.sqrt(np.stack([rows.var(axis=0) for rows in members]).sum(axis=1))
        diff = mu[:, None, :] - mu[None, :, :]
        dist = np.sqrt((diff**2).sum(axis=2))
        overlap = np.maximum(nsigma * (radius[:, None] + radius[None, :]) - dist, 0.0)
        overlap[eye] = 0.0
        magnitude = np.minimum(0.5 * time_step**2 * force_constant * overlap, overlap)
        with np.errstate(invalid="ignore", divide="ignore"):
            direction = diff / dist[:, :, None]
        direction[eye] = 0.0
        delta = (magnitude[:, :, None] * direction).sum(axis=1)
        p = float(np.abs(delta).sum())
        position_changes.append(p)
        first = p if first is None else first
        # 0/0 when nothing overlaps: NaN > ratio is False, as in the original.
        with np.errstate(invalid="ignore", divide="ignore"):
            if not np.float64(p) / first > exit_ratio:
                break
        z = z + delta[inverse]
        steps += 1
    return z * s + m, steps, position_changes
