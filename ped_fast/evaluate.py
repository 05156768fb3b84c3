"""Judging a ranking of models (docs/spec.md §4): how well scores
predict fine-tuning accuracies, and how sure that judgement is.

weighted_tau follows scipy.stats.weightedtau exactly (Vigna's weighted
Kendall tau: hyperbolic weights 1/(r+1) on the rank r of each element, a
pair weighing the sum of its elements' weights, ties handled like tau-b, and
by default the average of the values ranked by either variable). The
measures are written out pairwise in numpy, O(M^2) for M models.

A handful of models ranks noisily: which of two scorers "wins" often flips
with the models or the fine-tuning seeds chosen (Agostinelli et al., ECCV
2022). evaluate() and compare() therefore give percentile bootstrap
intervals: the models are resampled with replacement and, where the ground
truth has one accuracy per fine-tuning seed, each model's seeds too. Every
measure of every resample is computed at once, batched over resamples
(docs/spec.md §4 has the method and its cost).
"""
from __future__ import annotations

import json
import math
import numbers
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from importlib import resources
from typing import Any, TypeVar, Union

import numpy as np
import numpy.typing as npt

__all__ = ["evaluate", "compare", "judge", "weighted_tau", "kendall_tau", "pearson", "rel_at_k",
           "ssl_resnet50_accuracies"]

# A ranking's scores: {model: score}, or a sequence aligned with the
# accuracies. Accuracies: {model: accuracy} or a sequence, an accuracy
# being a number or a list of them, one per fine-tuning seed.
Scores = Union[Mapping[Any, float], npt.ArrayLike]
Accuracies = Union[Mapping[Any, Union[float, Sequence[float]]], Sequence[Union[float, Sequence[float]]],
                   npt.NDArray[Any]]
# A ranking's name in judge() (a scorer's, or any key the caller keeps).
Name = TypeVar("Name", bound=Hashable)
# evaluate()'s result: measures (floats), "interval" and "bootstrap" (dicts).
Result = dict[str, Any]
_Floats = npt.NDArray[np.floating[Any]]

MEASURES = ("weighted_tau", "kendall_tau", "pearson")
BOOTSTRAP, CONFIDENCE = 1000, 0.95
# Fewer models than this get no interval (see _interval).
MIN_MODELS = 3


def weighted_tau(scores: npt.ArrayLike, accuracies: npt.ArrayLike, *, rank: bool | npt.ArrayLike | None = True,
                 weigher: Callable[[int], float] | None = None, additive: bool = True) -> float:
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


def kendall_tau(scores: npt.ArrayLike, accuracies: npt.ArrayLike) -> float:
    """Kendall's tau-b (scipy.stats.kendalltau's default variant)."""
    x, y = _pair(scores, accuracies)
    return _tau(x, y, np.ones((x.size, x.size)))


def pearson(scores: npt.ArrayLike, accuracies: npt.ArrayLike) -> float:
    """Pearson's correlation coefficient; NaN when either input is constant."""
    x, y = _pair(scores, accuracies)
    xc, yc = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float(xc @ xc)) * math.sqrt(float(yc @ yc))
    if denominator == 0:
        return math.nan
    return max(-1.0, min(1.0, float(xc @ yc) / denominator))


def rel_at_k(scores: npt.ArrayLike, accuracies: npt.ArrayLike, k: int) -> float:
    """rel@k: the best accuracy among the k best-scored models divided by the
    best accuracy overall (1.0 when the top-k holds the best model).

    Models tied in score at the cut-off are resolved against the scorer:
    among them, the lower accuracies enter the top k first, so a tie never
    earns credit that an ordering of the tied models would not.
    """
    x, y = _pair(scores, accuracies)
    _check_k(k, x.size)
    best = y.max()
    if best <= 0:
        raise ValueError(f"rel@k divides by the best accuracy, which must be positive, got {best}")
    order = np.lexsort((y, -x))  # by decreasing score, then increasing accuracy
    return float(y[order[:k]].max() / best)


def evaluate(scores: Scores | Mapping[Any, Scores], accuracies: Accuracies, *, ks: Iterable[int] = (1, 3),
             bootstrap: int = BOOTSTRAP, confidence: float = CONFIDENCE, seed: int = 0) -> Result:
    """Every ranking measure of `scores` against ground-truth `accuracies`,
    with bootstrap confidence intervals.

    scores: {model: score}, or {scorer name: {model: score}} (a table: one
    result per scorer, as judge() gives them), or a sequence of scores
    aligned with a sequence of accuracies. accuracies: {model: accuracy}
    (matched to the scores by model name; every scored model needs one) or
    a sequence; an accuracy may be a list, one per fine-tuning seed: the
    measures use each model's mean and the bootstrap resamples the seeds.
    bootstrap: resamples (0: no intervals); confidence: the intervals'
    level; seed: the resampling's seed (the same seed, the same intervals).
    Returns {"weighted_tau", "kendall_tau", "pearson", "rel@k" for k in ks}
    (floats; NaN where undefined, e.g. a tau of constant scores), plus with
    bootstrap > 0 "interval": {measure: [low, high], or None where
    undefined or with fewer than MIN_MODELS models} and "bootstrap":
    {"resamples", "confidence", "seed", "models" (M), "seeds_resampled"
    (whether some model had several accuracies), "undefined": {measure:
    resamples where it was undefined, left out of its interval}}; or
    {scorer name: that dict} for a table.
    """
    options: dict[str, Any] = dict(ks=ks, bootstrap=bootstrap, confidence=confidence, seed=seed)
    if isinstance(scores, Mapping) and scores and all(isinstance(v, Mapping) for v in scores.values()):
        return judge(scores, accuracies, **options)[0]
    return _judge({"scores": scores}, accuracies, **options, minimum=0, label=str)[0]["scores"]


def compare(scores_a: Scores, scores_b: Scores, accuracies: Accuracies, *, measure: str = "weighted_tau",
            bootstrap: int = BOOTSTRAP, confidence: float = CONFIDENCE, seed: int = 0) -> dict[str, Any]:
    """Is ranking a better than ranking b? A paired bootstrap: both are
    judged on the same resamples of the models (and seeds), so what the
    two share (an easy or a hard draw of models) cancels out.

    scores_a, scores_b: {model: score} over the same models, or sequences
    aligned with `accuracies` (as for evaluate). measure: "weighted_tau"
    (default), "kendall_tau", "pearson" or "rel@k".
    Returns {"delta": measure(a) - measure(b) (NaN where either is
    undefined), "delta_" + measure: [low, high], the `confidence` interval
    of that difference (None where undefined or with fewer than
    MIN_MODELS models), "p_better": the share of resamples in which a
    scores higher (ties count half; None with the interval)}. The
    difference is resolved at that confidence when its interval excludes 0.
    """
    if isinstance(scores_a, Mapping) != isinstance(scores_b, Mapping):
        raise TypeError("scores_a and scores_b must both be {model: score} mappings or both be sequences")
    if isinstance(scores_a, Mapping) and isinstance(scores_b, Mapping) and set(scores_a) != set(scores_b):
        raise ValueError(f"scores_a and scores_b must score the same models; only one of them scores "
                         f"{sorted(set(scores_a) ^ set(scores_b), key=str)}")
    _, comparisons = _judge({"scores_a": scores_a, "scores_b": scores_b}, accuracies, pairs=[("scores_a", "scores_b")],
                            measure=measure, ks=(), bootstrap=bootstrap, confidence=confidence, seed=seed, minimum=1,
                            label=str)
    return comparisons["scores_a", "scores_b"]


def judge(rankings: Mapping[Name, Scores], accuracies: Accuracies, *, pairs: Iterable[tuple[Name, Name]] = (),
          measure: str = "weighted_tau", ks: Iterable[int] = (1, 3), bootstrap: int = BOOTSTRAP,
          confidence: float = CONFIDENCE,
          seed: int = 0) -> tuple[dict[Name, Result], dict[tuple[Name, Name], dict[str, Any]]]:
    """evaluate() of several rankings and compare() of pairs of them at
    once: rankings of the same models share their resamples, and what the
    resamples cost for the ground truth alone is done once for all.

    rankings: {name: {model: score}} (or {name: sequence}, with sequence
    accuracies); pairs: (name a, name b) to compare on `measure`, each
    two rankings of the same models. The other arguments are evaluate()'s.
    Returns ({name: evaluate()'s result}, {(a, b): compare()'s result}).
    """
    return _judge(rankings, accuracies, pairs=pairs, measure=measure, ks=ks, bootstrap=bootstrap,
                  confidence=confidence, seed=seed, minimum=1 if pairs else 0,
                  label=lambda name: f"the scores of {name!r}")


def _judge(rankings: Mapping[Name, object], accuracies: object, *, pairs: Iterable[tuple[Name, Name]] = (),
           measure: str = "weighted_tau", ks: Iterable[int], bootstrap: int, confidence: float, seed: int,
           minimum: int, label: Callable[[Name], str]) -> tuple[dict[Name, Result],
                                                                dict[tuple[Name, Name], dict[str, Any]]]:
    """judge(); label(name) names a ranking in errors."""
    check_bootstrap(bootstrap, confidence, seed, minimum=minimum)
    ks = tuple(ks)
    computed = tuple(dict.fromkeys(ks + _measure_ks(measure)))
    # The rankings of each set of models (each in the accuracies' order).
    groups: dict[frozenset[Any] | None, dict[str, Any]] = {}
    group_of: dict[Name, dict[str, Any]] = {}
    for name, scores in rankings.items():
        x, truth = _aligned(scores, accuracies)
        group = groups.setdefault(frozenset(scores) if isinstance(scores, Mapping) else None,
                                  {"truth": truth, "names": [], "x": []})
        group["names"].append(name)
        group["x"].append(_vector(x, label(name)))
        group_of[name] = group
    for a, b in pairs:
        for name in (a, b):
            if name not in rankings:
                raise ValueError(f"pairs names {name!r}, which is not one of the rankings {list(rankings)}")
        if group_of[a] is not group_of[b]:
            raise ValueError(f"rankings {a!r} and {b!r} must score the same models to be compared")
    for group in groups.values():
        group["truth"] = _Truth.of(group["truth"])
        for x in group["x"]:
            _check_sizes(x, group["truth"].mean)
            for k in computed:
                _check_k(k, x.size)
    out: dict[Name, Result] = {}
    resampled: dict[Name, tuple[dict[str, float], dict[str, _Floats]]] = {}
    for group in groups.values():
        truth = group["truth"]
        values = _bootstrap_values(group["x"], truth, computed, bootstrap, seed) if bootstrap else None
        for index, (name, x) in enumerate(zip(group["names"], group["x"])):
            point = _point(x, truth.mean, computed)
            out[name] = {measure_name: point[measure_name] for measure_name in _names(ks)}
            if values is not None:
                resampled[name] = (point, values[index])
                shown = {measure_name: values[index][measure_name] for measure_name in out[name]}
                out[name].update(_summary(out[name], shown, bootstrap, confidence, seed, truth))
    comparisons: dict[tuple[Name, Name], dict[str, Any]] = {}
    for a, b in pairs:
        delta = resampled[a][1][measure] - resampled[b][1][measure]
        interval, _ = _interval(delta, bootstrap, confidence, group_of[a]["truth"].mean.size)
        p_better = None
        if interval is not None:
            defined = delta[~np.isnan(delta)]
            p_better = float(((defined > 0).sum() + 0.5 * (defined == 0).sum()) / defined.size)
        comparisons[a, b] = {"delta": resampled[a][0][measure] - resampled[b][0][measure],
                             f"delta_{measure}": interval, "p_better": p_better}
    return out, comparisons


def _names(ks: Iterable[int]) -> tuple[str, ...]:
    return MEASURES + tuple(f"rel@{k}" for k in ks)


def _point(x: _Floats, y: _Floats, ks: Iterable[int]) -> dict[str, float]:
    out = {"weighted_tau": weighted_tau(x, y), "kendall_tau": kendall_tau(x, y), "pearson": pearson(x, y)}
    for k in ks:
        out[f"rel@{k}"] = rel_at_k(x, y, k)
    return out


def ssl_resnet50_accuracies() -> dict[str, dict[str, float]]:
    """The published fine-tuning accuracies (%) of 12 self-supervised
    ResNet-50 models on 11 datasets (Ericsson et al.), the ground truth that
    SFDA and PED rank against: {dataset: {model: accuracy}}."""
    text = resources.files("ped_fast").joinpath("data/ssl_resnet50_finetune_accuracy.json").read_text()
    accuracies: dict[str, dict[str, float]] = json.loads(text)
    return accuracies


class _Truth:
    """The ground truth of M models: `mean` (M,), each model's mean
    accuracy, and for the bootstrap `seeds` (M x S, each model's per-seed
    accuracies, NaN-padded) with `counts` (M,)."""

    def __init__(self, mean: _Floats, seeds: _Floats, counts: npt.NDArray[np.intp]) -> None:
        self.mean, self.seeds, self.counts = mean, seeds, counts

    @classmethod
    def of(cls, accuracies: object) -> _Truth:
        if isinstance(accuracies, (str, bytes)) or not isinstance(accuracies, (Sequence, np.ndarray)):
            raise TypeError(f"accuracies must be numbers (or per-seed lists of numbers), got "
                            f"{type(accuracies).__name__}")
        lists = []
        for position, value in enumerate(accuracies):
            runs = list(value) if isinstance(value, (Sequence, np.ndarray)) and not isinstance(value, (str, bytes)) \
                else [value]
            if not runs or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in runs):
                raise TypeError(f"accuracies must be numbers or non-empty lists of numbers (one per fine-tuning "
                                f"seed), got {value!r} at position {position}")
            if not all(math.isfinite(v) for v in runs):
                raise ValueError(f"accuracies has non-finite values (NaN or inf) at position {position}: {value!r}")
            lists.append([float(v) for v in runs])
        counts = np.array([len(runs) for runs in lists], dtype=np.intp)
        seeds = np.full((len(lists), int(counts.max(initial=1))), np.nan)
        for row, runs in zip(seeds, lists):
            row[:len(runs)] = runs
        mean = np.array([sum(runs) / len(runs) for runs in lists])
        return cls(mean, seeds, counts)


class _Samples:
    """B bootstrap resamples of M models: `models` (B x M, the models drawn),
    `counts` (B x M, how often each model was drawn), `accuracies` (B x M,
    each model's accuracy in each resample; None when every model has one
    accuracy, which then holds in every resample) and `degenerate` (B,):
    resamples that drew a single model, which rank nothing."""

    def __init__(self, models: npt.NDArray[np.int64], counts: _Floats, accuracies: _Floats | None,
                 degenerate: npt.NDArray[np.bool_]) -> None:
        self.models, self.counts, self.accuracies, self.degenerate = models, counts, accuracies, degenerate


def _resample(truth: _Truth, resamples: int, seed: int) -> _Samples:
    """Models drawn with replacement; for a model with S > 1 seeds, its
    accuracy in a resample is the mean of S seeds drawn with replacement
    from its own (the bootstrap of that mean), the same for every copy of
    the model within the resample."""
    rng = np.random.default_rng(seed)
    m = truth.mean.size
    models = rng.integers(0, m, size=(resamples, m))
    counts: npt.NDArray[Any] = np.bincount((models + m * np.arange(resamples)[:, None]).ravel(),
                                           minlength=resamples * m)
    counts = counts.reshape(resamples, m).astype(np.float64)
    accuracies = None
    if truth.counts.max() > 1:
        draws = np.floor(rng.random((resamples, m, truth.seeds.shape[1])) * truth.counts[None, :, None])
        used = np.arange(truth.seeds.shape[1])[None, None, :] < truth.counts[None, :, None]
        picked = np.where(used, truth.seeds[np.arange(m)[None, :, None], draws.astype(np.intp)], 0.0)
        accuracies = picked.sum(axis=2) / truth.counts[None, :]
    return _Samples(models, counts, accuracies, counts.max(axis=1) == m)


def _bootstrap_values(xs: list[_Floats], truth: _Truth, ks: Iterable[int], resamples: int,
                      seed: int) -> list[dict[str, _Floats]]:
    """[{measure: (B,) values}] of each ranking of `xs` (scores of the same
    M models) on B = `resamples` resamples drawn with `seed`; NaN where
    undefined: a tau or r of constant scores or accuracies, rel@k with a
    best accuracy <= 0, and every measure of a degenerate resample."""
    samples = _resample(truth, resamples, seed)
    y = truth.mean[samples.models] if samples.accuracies is None else \
        np.take_along_axis(samples.accuracies, samples.models, axis=1)
    out = []
    for x, taus in zip(xs, _taus(xs, truth, samples, y)):
        drawn = x[samples.models]
        values = {"weighted_tau": taus[0], "kendall_tau": taus[1], "pearson": _pearson_rows(drawn, y)}
        for k in ks:
            values[f"rel@{k}"] = _rel_rows(drawn, y, k)
        for array in values.values():
            array[samples.degenerate] = np.nan
        out.append(values)
    return out


def _taus(xs: list[_Floats], truth: _Truth, samples: _Samples, ys: _Floats) -> list[tuple[_Floats, _Floats]]:
    """[(weighted tau, Kendall's tau-b) of each resample] for each ranking
    of `xs` (ys: B x M, the drawn models' accuracies).

    With s_ij = sgn(x_i - x_j) sgn(y_i - y_j), symmetric, a pair weight
    w_i + w_j sums as sum_{i<j} (w_i + w_j) s_ij = sum_i w_i c_i, with
    c_i = sum_j s_ij; the same for the norms with |sgn(dx)| and |sgn(dy)|.
    And c_i depends only on which model element i is: it is the model's
    row of the M x M matrix s weighted by how often each model was drawn.
    So one (B x M) @ (M x M) product gives every resample's row sums, or,
    when the seeds make y differ between resamples, M products (B x M) @
    (M x R) for the R rankings together; both weighted-tau rankings and
    Kendall's tau (w = 1) share them."""
    n = samples.counts
    sxs = [np.sign(x[:, None] - x[None, :]) for x in xs]
    concordance: list[_Floats] | _Floats
    if samples.accuracies is None:
        sy = np.sign(truth.mean[:, None] - truth.mean[None, :])
        norm_y = n @ np.abs(sy)
        concordance = [n @ (sx * sy) for sx in sxs]
    else:
        # Model v's row of s in every resample at once: (B x M) signs of
        # its accuracy against the others', times the counts, times each
        # ranking's signs (one B x M @ M x R product).
        a = samples.accuracies
        by_model = np.stack(sxs, axis=2)  # M x M x R
        norm_y = np.empty_like(n)
        concordance = np.empty((len(xs),) + n.shape)
        for v in range(n.shape[1]):
            q = np.sign(a[:, v:v + 1] - a) * n
            norm_y[:, v] = np.abs(q).sum(axis=1)
            concordance[:, :, v] = (q @ by_model[v]).T
    sums = [(c, n @ np.abs(sx), norm_y) for c, sx in zip(concordance, sxs)]
    out: list[tuple[_Floats, _Floats]] = []
    for x, entry in zip(xs, sums):
        drawn = x[samples.models]
        per_element = np.stack([np.take_along_axis(v, samples.models, axis=1) for v in entry])
        weighted = [_ratio(*(w * per_element).sum(axis=2))
                    for w in (_hyperbolic_weights(drawn, ys), _hyperbolic_weights(ys, drawn))]
        out.append(((weighted[0] + weighted[1]) / 2, _ratio(*per_element.sum(axis=2))))
    return out


def _hyperbolic_weights(x: _Floats, y: _Floats) -> _Floats:
    """1 / (r + 1) for the rank r of each element by decreasing (x, y),
    joint ties by position as in _weighted_tau (per row)."""
    b, m = x.shape
    order = np.lexsort((y, x), axis=1)[:, ::-1]
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(m), (b, m)), axis=1)
    return 1.0 / (rank + 1.0)


def _ratio(numerator: _Floats, norm_x: _Floats, norm_y: _Floats) -> _Floats:
    with np.errstate(divide="ignore", invalid="ignore"):
        tau = numerator / np.sqrt(norm_x * norm_y)
    tau[(norm_x == 0) | (norm_y == 0)] = np.nan
    return np.clip(tau, -1.0, 1.0)


def _pearson_rows(x: _Floats, y: _Floats) -> _Floats:
    xc = x - x.mean(axis=1, keepdims=True)
    yc = y - y.mean(axis=1, keepdims=True)
    denominator = np.sqrt((xc * xc).sum(1)) * np.sqrt((yc * yc).sum(1))
    with np.errstate(divide="ignore", invalid="ignore"):
        r: _Floats = (xc * yc).sum(1) / denominator
    r[denominator == 0] = np.nan
    return np.clip(r, -1.0, 1.0)


def _rel_rows(x: _Floats, y: _Floats, k: int) -> _Floats:
    order = np.lexsort((y, -x), axis=1)[:, :k]
    best = y.max(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel: _Floats = np.take_along_axis(y, order, axis=1).max(axis=1) / best
    rel[best <= 0] = np.nan
    return rel


def _summary(point: Mapping[str, float], values: Mapping[str, _Floats], resamples: int, confidence: float, seed: int,
             truth: _Truth) -> dict[str, Any]:
    """The "interval" and "bootstrap" entries of evaluate()'s result."""
    intervals: dict[str, list[float] | None] = {}
    undefined: dict[str, int] = {}
    for measure, samples in values.items():
        interval, undefined[measure] = _interval(samples, resamples, confidence, truth.mean.size)
        intervals[measure] = interval if math.isfinite(point[measure]) else None
    return {"interval": intervals,
            "bootstrap": {"resamples": resamples, "confidence": confidence, "seed": seed, "models": truth.mean.size,
                          "seeds_resampled": bool(truth.counts.max() > 1), "undefined": undefined}}


def _interval(samples: _Floats, resamples: int, confidence: float, models: int) -> tuple[list[float] | None, int]:
    """([low, high], the percentile interval of the defined resamples, and
    how many were undefined). None for fewer than MIN_MODELS models (two
    models give every resample the same tau: a zero-width interval that
    says nothing) or when fewer than half of the resamples are defined."""
    defined = samples[~np.isnan(samples)]
    missing = int(samples.size - defined.size)
    if models < MIN_MODELS or defined.size * 2 < resamples:
        return None, missing
    low, high = np.quantile(defined, [(1 - confidence) / 2, (1 + confidence) / 2])
    return [float(low), float(high)], missing


def _measure_ks(measure: object) -> tuple[int, ...]:
    if measure in MEASURES:
        return ()
    if isinstance(measure, str) and measure.startswith("rel@") and measure[4:].isdigit() and int(measure[4:]) >= 1:
        return (int(measure[4:]),)
    raise ValueError(f"measure must be one of {', '.join(MEASURES)} or 'rel@k' with k a positive integer, got "
                     f"{measure!r}")


def check_bootstrap(bootstrap: object, confidence: object, seed: object, minimum: int = 0) -> None:
    """Raise naming the bad one of evaluate()'s bootstrap options (for
    callers that check their arguments before any work)."""
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, numbers.Integral) or bootstrap < minimum:
        raise ValueError(f"bootstrap must be an integer >= {minimum} (the number of resamples), got {bootstrap!r}")
    if isinstance(confidence, bool) or not isinstance(confidence, numbers.Real) or not 0 < float(confidence) < 1:
        raise ValueError(f"confidence must be a number strictly between 0 and 1 (e.g. 0.95), got {confidence!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer (the resampling's seed), got {seed!r}")


def _check_k(k: object, size: int) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= size:
        raise ValueError(f"k must be an integer in [1, {size}] (the number of models), got {k!r}")


def _aligned(scores: object, accuracies: object) -> tuple[Any, Any]:
    if isinstance(scores, Mapping):
        if not isinstance(accuracies, Mapping):
            raise TypeError("scores is a {model: score} mapping, so accuracies must be a {model: accuracy} mapping")
        missing = [m for m in scores if m not in accuracies]
        if missing:
            raise ValueError(f"accuracies has no entry for the scored models {missing}")
        # In the accuracies' order: the resamples, drawn by position, then
        # do not depend on the order of a scores mapping's keys.
        models = [m for m in accuracies if m in scores]
        return [scores[m] for m in models], [accuracies[m] for m in models]
    if isinstance(accuracies, Mapping):
        raise TypeError("accuracies is a {model: accuracy} mapping, so scores must be a {model: score} mapping")
    return scores, accuracies


def _pair(scores: npt.ArrayLike, accuracies: npt.ArrayLike) -> tuple[_Floats, _Floats]:
    x = _vector(scores, "scores")
    y = _vector(accuracies, "accuracies")
    _check_sizes(x, y)
    return x, y


def _check_sizes(x: _Floats, y: _Floats) -> None:
    if x.size != y.size:
        raise ValueError(f"scores has {x.size} entries but accuracies has {y.size}")
    if x.size < 2:
        raise ValueError(f"a ranking needs at least 2 models, got {x.size}")


def _vector(values: object, name: str) -> _Floats:
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


def _weighted_tau(x: _Floats, y: _Floats, rank: npt.NDArray[np.integer[Any]] | None,
                  weigher: Callable[[int], float] | None, additive: bool) -> float:
    if rank is None:
        # Rank 0 goes to the largest (x, y), lexicographically; joint ties are
        # broken by position as scipy's stable sort breaks them.
        rank = np.empty(x.size, dtype=np.intp)
        rank[np.lexsort((y, x))[::-1]] = np.arange(x.size)
    weigher = weigher if weigher is not None else (lambda r: 1.0 / (r + 1.0))
    w = np.array([weigher(int(r)) for r in rank], dtype=np.float64)
    pair_weight = w[:, None] + w[None, :] if additive else w[:, None] * w[None, :]
    return _tau(x, y, pair_weight)


def _tau(x: _Floats, y: _Floats, pair_weight: _Floats) -> float:
    """sum_{i<j} w_ij sgn(dx) sgn(dy) / sqrt(sum w_ij [dx != 0] sum w_ij [dy != 0])."""
    upper = np.triu(np.ones(pair_weight.shape, dtype=bool), 1)
    sx = np.sign(x[:, None] - x[None, :])[upper]
    sy = np.sign(y[:, None] - y[None, :])[upper]
    w = pair_weight[upper]
    norm_x = float(w @ np.abs(sx))
    norm_y = float(w @ np.abs(sy))
    if norm_x == 0 or norm_y == 0:
        return math.nan
    # One square root of the product: a perfect ranking (numerator = norms)
    # gives exactly 1 (sqrt(fl(a * a)) == a), not 1 - 1e-16.
    tau = float(w @ (sx * sy)) / math.sqrt(norm_x * norm_y)
    return max(-1.0, min(1.0, tau))
