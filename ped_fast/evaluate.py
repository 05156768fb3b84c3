"""Judging a ranking of models (docs/spec.md §4): how well scores
predict fine-tuning accuracies.

weighted_tau follows scipy.stats.weightedtau exactly (Vigna's weighted
Kendall tau: hyperbolic weights 1/(r+1) on the rank r of each element, a
pair weighing the sum of its elements' weights, ties handled like tau-b, and
by default the average of the values ranked by either variable). The
measures are written out pairwise in numpy, O(M^2) for M models: model zoos
have tens of models, where this is instant and easy to check.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from importlib import resources

import numpy as np

MEASURES = ("weighted_tau", "kendall_tau", "pearson")


def weighted_tau(scores, accuracies, *, rank=True, weigher=None, additive=True):
    """Weighted Kendall's tau with scipy.stats.weightedtau's semantics.

    rank: True (default) averages the values obtained with the elements
    ranked by decreasing (scores, accuracies) and by decreasing (accuracies,
    scores), lexicographically; None ranks by (scores, accuracies) only;
    False uses the input order as the rank; an array gives the rank of each
    element (0 = most important). weigher: rank -> weight, default
    1 / (rank + 1). additive: a pair weighs w_i + w_j (default) or w_i w_j.
    Returns NaN when either input is constant, like scipy.
    """
    x, y = _pair(scores, accuracies)
    if rank is True:
        return (_weighted_tau(x, y, None, weigher, additive) + _weighted_tau(y, x, None, weigher, additive)) / 2
    if rank is False:
        rank = np.arange(x.size)
    elif rank is not None:
        rank = np.asarray(rank)
        if rank.shape != x.shape or not np.issubdtype(rank.dtype, np.integer) or (rank < 0).any():
            raise ValueError(f"rank must be {x.size} non-negative integers, got {rank!r}")
    return _weighted_tau(x, y, rank, weigher, additive)


def kendall_tau(scores, accuracies):
    """Kendall's tau-b (scipy.stats.kendalltau's default variant)."""
    x, y = _pair(scores, accuracies)
    return _tau(x, y, np.ones((x.size, x.size)))


def pearson(scores, accuracies):
    """Pearson's correlation coefficient; NaN when either input is constant."""
    x, y = _pair(scores, accuracies)
    xc, yc = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float(xc @ xc)) * math.sqrt(float(yc @ yc))
    if denominator == 0:
        return math.nan
    return max(-1.0, min(1.0, float(xc @ yc) / denominator))


def rel_at_k(scores, accuracies, k):
    """rel@k: the best accuracy among the k best-scored models divided by the
    best accuracy overall (1.0 when the top-k holds the best model).

    Models tied in score at the cut-off are resolved against the scorer:
    among them, the lower accuracies enter the top k first, so a tie never
    earns credit that an ordering of the tied models would not.
    """
    x, y = _pair(scores, accuracies)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= x.size:
        raise ValueError(f"k must be an integer in [1, {x.size}] (the number of models), got {k!r}")
    best = y.max()
    if best <= 0:
        raise ValueError(f"rel@k divides by the best accuracy, which must be positive, got {best}")
    order = np.lexsort((y, -x))  # by decreasing score, then increasing accuracy
    return float(y[order[:k]].max() / best)


def evaluate(scores, accuracies, *, ks=(1, 3)):
    """Every ranking measure of `scores` against ground-truth `accuracies`.

    scores: {model: score}, or {scorer name: {model: score}} (a table: one
    result per scorer), or a sequence of scores aligned with a sequence of
    accuracies. accuracies: {model: accuracy} (matched to the scores by
    model name; every scored model needs one) or a sequence.
    Returns {"weighted_tau", "kendall_tau", "pearson", "rel@k" for k in ks}
    (floats), or {scorer name: that dict} for a table.
    """
    if isinstance(scores, Mapping) and scores and all(isinstance(v, Mapping) for v in scores.values()):
        return {name: evaluate(table, accuracies, ks=ks) for name, table in scores.items()}
    x, y = _aligned(scores, accuracies)
    out = {
        "weighted_tau": weighted_tau(x, y),
        "kendall_tau": kendall_tau(x, y),
        "pearson": pearson(x, y),
    }
    for k in ks:
        out[f"rel@{k}"] = rel_at_k(x, y, k)
    return out


def ssl_resnet50_accuracies():
    """The published fine-tuning accuracies (%) of 12 self-supervised
    ResNet-50 models on 11 datasets (Ericsson et al.), the ground truth that
    SFDA and PED rank against: {dataset: {model: accuracy}}."""
    text = resources.files("ped_fast").joinpath("data/ssl_resnet50_finetune_accuracy.json").read_text()
    return json.loads(text)


def _aligned(scores, accuracies):
    if isinstance(scores, Mapping):
        if not isinstance(accuracies, Mapping):
            raise TypeError("scores is a {model: score} mapping, so accuracies must be a {model: accuracy} mapping")
        missing = [m for m in scores if m not in accuracies]
        if missing:
            raise ValueError(f"accuracies has no entry for the scored models {missing}")
        models = list(scores)
        return [scores[m] for m in models], [accuracies[m] for m in models]
    if isinstance(accuracies, Mapping):
        raise TypeError("accuracies is a {model: accuracy} mapping, so scores must be a {model: score} mapping")
    return scores, accuracies


def _pair(scores, accuracies):
    x = _vector(scores, "scores")
    y = _vector(accuracies, "accuracies")
    if x.size != y.size:
        raise ValueError(f"scores has {x.size} entries but accuracies has {y.size}")
    if x.size < 2:
        raise ValueError(f"a ranking needs at least 2 models, got {x.size}")
    return x, y


def _vector(values, name):
    try:
        v = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be numbers, got {type(values).__name__}") from None
    if v.ndim != 1:
        raise ValueError(f"{name} must be one number per model (1-D), got shape {v.shape}")
    if not np.isfinite(v).all():
        bad = np.flatnonzero(~np.isfinite(v)).tolist()
        raise ValueError(f"{name} has non-finite values (NaN or inf) at positions {bad}")
    return v


def _weighted_tau(x, y, rank, weigher, additive):
    if rank is None:
        # Rank 0 goes to the largest (x, y), lexicographically; joint ties are
        # broken by position as scipy's stable sort breaks them.
        rank = np.empty(x.size, dtype=np.intp)
        rank[np.lexsort((y, x))[::-1]] = np.arange(x.size)
    weigher = weigher if weigher is not None else (lambda r: 1.0 / (r + 1.0))
    w = np.array([weigher(int(r)) for r in rank], dtype=np.float64)
    pair_weight = w[:, None] + w[None, :] if additive else w[:, None] * w[None, :]
    return _tau(x, y, pair_weight)


def _tau(x, y, pair_weight):
    """sum_{i<j} w_ij sgn(dx) sgn(dy) / sqrt(sum w_ij [dx != 0] sum w_ij [dy != 0])."""
    upper = np.triu(np.ones(pair_weight.shape, dtype=bool), 1)
    sx = np.sign(x[:, None] - x[None, :])[upper]
    sy = np.sign(y[:, None] - y[None, :])[upper]
    w = pair_weight[upper]
    norm_x = float(w @ np.abs(sx))
    norm_y = float(w @ np.abs(sy))
    if norm_x == 0 or norm_y == 0:
        return math.nan
    tau = float(w @ (sx * sy)) / math.sqrt(norm_x) / math.sqrt(norm_y)
    return max(-1.0, min(1.0, tau))
