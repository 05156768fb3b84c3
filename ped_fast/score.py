"""ped_score(): the transferability score of PED-moved features with any
scorer, the paper's "seamless integration into existing ranking techniques".

PED moves every sample of a class by the same vector, so the moved features
have the same within-class residuals X - mu_y and variances as the input;
only the C class means change. SFDA and LogME use that to score the input
(the baseline) and the moved features with one D x D product of the
residuals:
- sfda: residuals, Sw, the shrinkage and the first fit's Cholesky factor
  are shared; each score then costs one more D x D product (its ConfMix
  pass) instead of two;
- logme: X^T X = R^T R + sum_c n_c mu_c mu_c^T, so the D x D product of the
  residuals is computed once and each score adds a rank-C update;
- gbc: needs only class means and variances, one pass over each feature
  set;
- nleep: fits its mixture on each feature set (nothing to share past the
  validated inputs).
The residuals are the same only in exact arithmetic: x + shift is rounded to
the features' dtype, and a shift many orders of magnitude above a class's
spread rounds the spread away. So the moved features' class statistics are
read (one pass over them, O(N D) against the D x D product's O(N D^2)), and
when a class's spread has changed beyond rounding the moved features are
scored by the scorer itself: ped_score gives what the scorer gives on
result.features, errors included.
A callable scorer is called as f(features, labels, **scorer_options) on the
moved features (and on the input when return_baseline=True).
"""
from __future__ import annotations

import difflib
import inspect
import math
from dataclasses import dataclass

import torch

from .ped import PEDResult, ped
from ._validate import all_finite, raise_non_finite, to_tensor
from .scorers import SCORERS
from .scorers._input import compute_dtype, prepare
from .scorers._linalg import gram
from .scorers.gbc import check_gaussian, gbc_prepared
from .scorers.logme import evidence_from_gram
from .scorers.nleep import nleep_prepared
from .scorers.sfda import SFDAResiduals

_OPTIONS = {
    "sfda": {"dtype"},
    "logme": {"dtype"},
    "nleep": {"dtype", "seed", "component_ratio"},
    "gbc": {"dtype", "gaussian"},
}
# ped()'s options that ped_score passes through; read from ped's signature
# so the two cannot drift apart. reference and backend are ped_score's own.
_PED_OPTIONS = tuple(
    name for name, parameter in inspect.signature(ped).parameters.items()
    if parameter.kind is parameter.KEYWORD_ONLY and name not in ("reference", "backend")
)
_OWN_KEYWORDS = ("scorer", "reference", "return_baseline", "scorer_options", "backend")
# How far a class's within-class spread (the sum of its variances) may move
# between the input and PED's moved features before the moved features are
# scored by themselves. Rounding x + shift to the features' dtype moves each
# value by half an ulp of |x + shift|: for the shifts PED makes (a few class
# spreads) that changes a spread by ~eps relative. A change of sqrt(eps)
# means half its digits are gone (a shift ~1/sqrt(eps) spreads away or
# more): the moved features are then another matrix than one with the
# input's residuals, and only the scorer run on them says what it makes of
# them (a score, or its error).
_SPREAD_TOLERANCE = {dtype: math.sqrt(torch.finfo(dtype).eps) for dtype in (torch.float32, torch.float64)}


@dataclass
class PEDScore:
    """What ped_score(..., return_baseline=True) returns.

    ped: the scorer's value on the PED-moved features.
    baseline: its value on the input features.
    result: the PEDResult of the dynamics (moved features, shift, steps...).
    """

    ped: float
    baseline: float
    result: PEDResult


def ped_score(features, labels, scorer="sfda", *, reference=None, return_baseline=False, scorer_options=None,
              backend="auto", **ped_options):
    """Score the PED-moved `features` (N x D) for `labels` (N).

    scorer: "sfda" (the paper's default), "logme", "nleep", "gbc", or any
        callable f(features, labels) -> float.
    reference: the reference features or (mean, std), as for ped().
    return_baseline: also score the un-moved features; returns a PEDScore
        (ped, baseline, result) instead of a float.
    scorer_options: keyword arguments for the scorer, e.g. {"dtype":
        torch.float32} or {"seed": 1} for nleep.
    backend: "auto", "reference", "cpu", ... (see available_backends()),
        for ped() and for a named scorer alike (a callable scorer is called
        without it).
    ped_options: ped()'s other keyword arguments (time_step, nsigma, ...,
        rescale, inplace).

    A named scorer gives what it gives on result.features, errors included;
    the shared computation is used only while the moved features keep the
    input's within-class spread.
    """
    _check_ped_options(ped_options)
    if not isinstance(return_baseline, bool):
        raise TypeError(f"return_baseline must be True or False, got {return_baseline!r}")
    options = dict(scorer_options or {})
    if callable(scorer):
        return _callable_score(scorer, features, labels, reference, return_baseline, options, backend, ped_options)
    if scorer not in SCORERS:
        raise ValueError(f"scorer must be one of {', '.join(repr(s) for s in SCORERS)} or a callable, got {scorer!r}")
    unknown = set(options) - _OPTIONS[scorer]
    if unknown:
        hint = "; backend is ped_score's own keyword (it steers ped() and the scorer)" if "backend" in unknown else ""
        raise TypeError(f"scorer_options for {scorer!r} accepts {sorted(_OPTIONS[scorer])}, got {sorted(unknown)}"
                        f"{hint}")
    dtype = compute_dtype(options.pop("dtype", torch.float64))
    # The input is read (and validated) before ped(), which may overwrite it
    # when inplace=True.
    prep = prepare(features, labels, dtype, backend, scorer)

    def run_ped():
        return ped(features, labels, reference=reference, backend=backend, **ped_options)

    if scorer == "sfda":
        return _sfda(prep, labels, run_ped, return_baseline, backend)
    if scorer == "logme":
        return _logme(prep, features, labels, run_ped, return_baseline, backend)
    if scorer == "gbc":
        return _gbc(prep, run_ped, return_baseline, options)
    return _nleep(prep, run_ped, return_baseline, options)


def _check_ped_options(ped_options):
    unknown = sorted(set(ped_options) - set(_PED_OPTIONS))
    if not unknown:
        return
    accepted = _OWN_KEYWORDS + _PED_OPTIONS
    close = [match for name in unknown for match in difflib.get_close_matches(name, accepted, n=1)]
    hint = f" (did you mean {', '.join(repr(m) for m in close)}?)" if close else ""
    raise TypeError(
        f"ped_score() got unexpected keyword argument{'s' if len(unknown) > 1 else ''} "
        f"{', '.join(repr(name) for name in unknown)}{hint}; it accepts {', '.join(_OWN_KEYWORDS)} and ped()'s "
        f"{', '.join(_PED_OPTIONS)}"
    )


def _finish(moved, baseline, result, return_baseline):
    return PEDScore(ped=moved, baseline=baseline, result=result) if return_baseline else moved


def _shared_means(prep, moved, variances):
    """The class means (C x D, float64) of PED's moved features `moved`,
    when their within-class spread is the input's (`variances`, C x D) up to
    rounding, so that scoring them from the input's residuals is scoring
    them; None when it is not (see _SPREAD_TOLERANCE) or when they are not
    finite. One pass over the moved features."""
    _, means, moved_variances = prep.launcher.class_stats(moved, prep.index, prep.num_classes)
    if not all_finite(means, moved_variances):
        return None
    spread, moved_spread = variances.sum(dim=1), moved_variances.sum(dim=1)
    if bool(((moved_spread - spread).abs() > _SPREAD_TOLERANCE[moved.dtype] * spread).any()):
        return None
    return means


def _sfda(prep, labels, run_ped, return_baseline, backend):
    state = SFDAResiduals(prep.x, prep.index, prep.counts, prep.dtype, prep.launcher)
    result = run_ped()
    moved, _ = to_tensor(result.features, "features")
    moved_means = _shared_means(prep, moved, state.variances)
    if moved_means is None:
        baseline = state.score(state.means, consume=True) if return_baseline else None
        del state
        return _finish(SCORERS["sfda"](moved, labels, dtype=prep.dtype, backend=backend), baseline, result,
                       return_baseline)
    baseline = state.score(state.means, consume=False) if return_baseline else None
    return _finish(state.score(moved_means, consume=True), baseline, result, return_baseline)


def _logme(prep, features, labels, run_ped, return_baseline, backend):
    x = prep.x
    n, dim = x.shape

    def alone(values):
        return SCORERS["logme"](values, labels, dtype=prep.dtype, backend=backend)

    if not return_baseline or n <= dim:
        # One feature set to score, or the N <= D path (an SVD of X itself):
        # nothing to share.
        baseline = alone(features) if return_baseline else None
        result = run_ped()
        return _finish(alone(result.features), baseline, result, return_baseline)
    _, means, var = prep.launcher.class_stats(x, prep.index, prep.num_classes)
    if not all_finite(means, var):
        raise_non_finite(x, "features")
    residual = x.to(prep.dtype, memory_format=torch.contiguous_format, copy=True)
    prep.launcher.integrate(residual, prep.index, (-means).to(prep.dtype), residual)
    residual_gram = gram(residual)
    del residual
    counts = prep.counts.to(prep.dtype)

    def evidence(class_means):
        class_means = class_means.to(prep.dtype)
        sums = class_means.T * counts  # X^T T, D x C
        return evidence_from_gram(residual_gram + sums @ class_means, sums, counts, n)

    baseline = evidence(means)
    result = run_ped()
    moved, _ = to_tensor(result.features, "features")
    moved_means = _shared_means(prep, moved, var)
    moved_score = alone(moved) if moved_means is None else evidence(moved_means)
    return _finish(moved_score, baseline, result, return_baseline)


def _gbc(prep, run_ped, return_baseline, options):
    # GBC needs only class means and variances: scoring the moved features
    # themselves costs one pass over them, and gives exactly gbc()'s value.
    gaussian = options.get("gaussian", "spherical")
    check_gaussian(gaussian)
    baseline = gbc_prepared(prep.x, prep, gaussian) if return_baseline else None
    result = run_ped()
    moved, _ = to_tensor(result.features, "features")
    return _finish(gbc_prepared(moved, prep, gaussian), baseline, result, return_baseline)


def _nleep(prep, run_ped, return_baseline, options):
    def score(x):
        return nleep_prepared(x, prep.index, prep.num_classes, dtype=prep.dtype, **options)

    baseline = score(prep.x) if return_baseline else None
    result = run_ped()
    moved, _ = to_tensor(result.features, "features")
    return _finish(score(moved), baseline, result, return_baseline)


def _callable_score(scorer, features, labels, reference, return_baseline, options, backend, ped_options):
    baseline = _as_float(scorer(features, labels, **options), "baseline") if return_baseline else None
    result = ped(features, labels, reference=reference, backend=backend, **ped_options)
    return _finish(_as_float(scorer(result.features, labels, **options), "ped"), baseline, result, return_baseline)


def _as_float(value, which):
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"the scorer must return a number; for the {which} features it returned "
                        f"{type(value).__name__}") from None
