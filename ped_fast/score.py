"""ped_score(): the transferability score of PED-moved features with any
scorer, the paper's "seamless integration into existing ranking techniques".

PED moves every sample of a class by the same vector, so the moved features
have the same within-class residuals X - mu_y and variances as the input;
only the C class means change. The named scorers use that to score the input
(the baseline) and the moved features from one pass over X:
- sfda: residuals, Sw, the shrinkage and the first fit's Cholesky factor
  are shared; each score then costs one more D x D product (its ConfMix
  pass) instead of two;
- logme: X^T X = R^T R + sum_c n_c mu_c mu_c^T, so the D x D product of the
  residuals is computed once and each score adds a rank-C update;
- gbc: class means and variances are computed once; the moved means are
  the input's plus PED's shift;
- nleep: fits its mixture on each feature set (nothing to share past the
  validated inputs).
A callable scorer is called as f(features, labels, **scorer_options) on the
moved features (and on the input when return_baseline=True).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import _backends
from .ped import PEDResult, ped
from ._validate import all_finite, raise_non_finite, to_tensor
from .scorers import SCORERS
from .scorers._input import compute_dtype, gram, prepare
from .scorers.gbc import GAUSSIANS, gbc_from_stats
from .scorers.logme import evidence_from_gram
from .scorers.nleep import nleep_prepared
from .scorers.sfda import SFDAResiduals

_OPTIONS = {
    "sfda": {"dtype"},
    "logme": {"dtype"},
    "nleep": {"dtype", "seed", "component_ratio"},
    "gbc": {"dtype", "gaussian"},
}


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
              **ped_options):
    """Score the PED-moved `features` (N x D) for `labels` (N).

    scorer: "sfda" (the paper's default), "logme", "nleep", "gbc", or any
        callable f(features, labels) -> float.
    reference: the reference features or (mean, std), as for ped().
    return_baseline: also score the un-moved features; returns a PEDScore
        (ped, baseline, result) instead of a float.
    scorer_options: keyword arguments for the scorer, e.g. {"dtype":
        torch.float32} or {"seed": 1} for nleep.
    ped_options: the keyword arguments of ped() (time_step, nsigma, ...,
        rescale, backend, inplace).
    """
    if not isinstance(return_baseline, bool):
        raise TypeError(f"return_baseline must be True or False, got {return_baseline!r}")
    options = dict(scorer_options or {})
    if callable(scorer):
        return _callable_score(scorer, features, labels, reference, return_baseline, options, ped_options)
    if scorer not in SCORERS:
        raise ValueError(f"scorer must be one of {', '.join(repr(s) for s in SCORERS)} or a callable, got {scorer!r}")
    unknown = set(options) - _OPTIONS[scorer]
    if unknown:
        raise TypeError(f"scorer_options for {scorer!r} accepts {sorted(_OPTIONS[scorer])}, got {sorted(unknown)}")
    dtype = compute_dtype(options.pop("dtype", torch.float64))
    # The input is read (and validated) before ped(), which may overwrite it
    # when inplace=True.
    prep = prepare(features, labels, dtype, scorer)
    if scorer == "sfda":
        return _sfda(prep, features, labels, reference, return_baseline, ped_options)
    if scorer == "logme":
        return _logme(prep, features, labels, reference, return_baseline, ped_options)
    if scorer == "gbc":
        return _gbc(prep, features, labels, reference, return_baseline, options, ped_options)
    return _nleep(prep, features, labels, reference, return_baseline, options, ped_options)


def _finish(moved, baseline, result, return_baseline):
    return PEDScore(ped=moved, baseline=baseline, result=result) if return_baseline else moved


def _moved_means(means, result):
    shift, _ = to_tensor(result.shift, "shift")
    return means + shift.to(device=means.device, dtype=torch.float64)


def _sfda(prep, features, labels, reference, return_baseline, ped_options):
    state = SFDAResiduals(prep.x, prep.index, prep.counts, prep.dtype)
    result = ped(features, labels, reference=reference, **ped_options)
    moved_means = _moved_means(state.means, result)
    baseline = state.score(state.means, consume=False) if return_baseline else None
    return _finish(state.score(moved_means, consume=True), baseline, result, return_baseline)


def _logme(prep, features, labels, reference, return_baseline, ped_options):
    x = prep.x
    n, dim = x.shape
    if not return_baseline or n <= dim:
        # One feature set to score, or the N <= D path (an SVD of X itself):
        # nothing to share.
        baseline = SCORERS["logme"](features, labels, dtype=prep.dtype) if return_baseline else None
        result = ped(features, labels, reference=reference, **ped_options)
        return _finish(SCORERS["logme"](result.features, labels, dtype=prep.dtype), baseline, result,
                       return_baseline)
    _, launcher = _backends.resolve("auto", x.device)
    _, means, var = launcher.class_stats(x, prep.index, prep.num_classes)
    if not all_finite(means, var):
        raise_non_finite(x, "features")
    residual = x.to(prep.dtype, memory_format=torch.contiguous_format, copy=True)
    launcher.integrate(residual, prep.index, (-means).to(prep.dtype), residual)
    residual_gram = gram(residual)
    del residual
    result = ped(features, labels, reference=reference, **ped_options)
    counts = prep.counts.to(prep.dtype)

    def evidence(class_means):
        class_means = class_means.to(prep.dtype)
        sums = class_means.T * counts  # X^T T, D x C
        return evidence_from_gram(residual_gram + sums @ class_means, sums, counts, n)

    return _finish(evidence(_moved_means(means, result)), evidence(means), result, return_baseline)


def _gbc(prep, features, labels, reference, return_baseline, options, ped_options):
    gaussian = options.get("gaussian", "spherical")
    if gaussian not in GAUSSIANS:
        raise ValueError(f"gaussian must be 'spherical' or 'diagonal', got {gaussian!r}")
    _, launcher = _backends.resolve("auto", prep.x.device)
    _, means, var = launcher.class_stats(prep.x, prep.index, prep.num_classes)
    if not all_finite(means, var):
        raise_non_finite(prep.x, "features")
    result = ped(features, labels, reference=reference, **ped_options)
    var = var.to(prep.dtype)
    moved = gbc_from_stats(_moved_means(means, result).to(prep.dtype), var, gaussian)
    baseline = gbc_from_stats(means.to(prep.dtype), var, gaussian) if return_baseline else None
    return _finish(moved, baseline, result, return_baseline)


def _nleep(prep, features, labels, reference, return_baseline, options, ped_options):
    def score(x):
        return nleep_prepared(x, prep.index, prep.num_classes, dtype=prep.dtype, **options)

    baseline = score(prep.x) if return_baseline else None
    result = ped(features, labels, reference=reference, **ped_options)
    moved, _ = to_tensor(result.features, "features")
    return _finish(score(moved), baseline, result, return_baseline)


def _callable_score(scorer, features, labels, reference, return_baseline, options, ped_options):
    baseline = _as_float(scorer(features, labels, **options), "baseline") if return_baseline else None
    result = ped(features, labels, reference=reference, **ped_options)
    return _finish(_as_float(scorer(result.features, labels, **options), "ped"), baseline, result, return_baseline)


def _as_float(value, which):
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"the scorer must return a number; for the {which} features it returned "
                        f"{type(value).__name__}") from None
