"""ped_score(): the transferability score of PED-moved features with any
scorer, the paper's "seamless integration into existing ranking techniques"
(docs/spec.md §3).

Scorers come from the registry (ped_fast.scorers): ped_score names none of
them. A scorer that reads features is run on PED's moved features (and on
the input, with return_baseline=True); PED does not apply to one that reads
the source model's probabilities. A scorer registered with shared work
(SFDA, LogME, GBC, the H-scores, TransRate) computes what the input and the
moved features have in common once: PED moves every sample of a class by
the same vector, so the moved features have the input's within-class
residuals X - mu_y and variances, and only the C class means differ.
The residuals are the same only in exact arithmetic: x + shift is rounded to
the features' dtype, and a shift many orders of magnitude above a class's
spread rounds the spread away. So the moved features' class statistics are
read (one pass over them, O(N D) against a D x D product's O(N D^2)), and
when a class's spread has changed beyond rounding the moved features are
scored by the scorer itself: ped_score gives what the scorer gives on
result.features, errors included.
A callable scorer is called as f(features, labels, **scorer_options) on the
moved features (and on the input when return_baseline=True).
reduce="pca:K" projects the features (and reference features) on the
target features' K principal axes before PED and scoring.
"""
from __future__ import annotations

import difflib
import inspect
import itertools
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Union, overload

import torch

from .ped import PEDResult, Reference, _rescaling, check_parameters, ped
from ._validate import ArrayLike, all_finite, check_inplace, features_tensor, raise_non_finite, to_tensor
from .scorers import _registry
from .scorers._input import ClassMoments, Prepared, class_moments, prepare
from .scorers._linalg import matmul, principal_axes
from .scorers.sfda import PROJECTION_REMEDY

# ped()'s options that ped_score passes through; read from ped's signature
# so the two cannot drift apart. reference and backend are ped_score's own.
_PED_OPTIONS = tuple(
    name for name, parameter in inspect.signature(ped).parameters.items()
    if parameter.kind is parameter.KEYWORD_ONLY and name not in ("reference", "backend")
)
_OWN_KEYWORDS = ("scorer", "reference", "return_baseline", "scorer_options", "backend", "reduce")
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
_REDUCE = re.compile(r"^pca:([0-9]+)$")
# A scorer for ped_score: a registered name, or f(features, labels, **options) -> a number.
ScorerLike = Union[str, Callable[..., Any]]
# A grid for ped_sweep: {parameter: [values]} or a sequence of {parameter: value} points.
Grid = Union[Mapping[str, Sequence[Any]], Sequence[Mapping[str, Any]]]


@dataclass
class PEDScore:
    """What ped_score(..., return_baseline=True) returns.

    ped: the scorer's value on the PED-moved features.
    baseline: its value on the input features.
    result: the PEDResult of the dynamics (moved features, shift, steps...).
    saturation: {"baseline": reason, "ped": reason} for each of the two
        scores that carries no ranking information (e.g. SFDA at 1.0 when
        the features separate every sample); empty when neither does. See
        ped_fast.scorers.saturation.
    """

    ped: float
    baseline: float | None
    result: PEDResult
    saturation: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        # The dataclass repr would print the moved N x D features in full.
        saturated = f", saturation={self.saturation!r}" if self.saturation else ""
        return (f"PEDScore(ped={self.ped!r}, baseline={self.baseline!r}, steps={self.result.steps}, "
                f"classes={len(self.result.classes)}{saturated})")

    @property
    def saturated(self) -> bool:
        """True when the baseline or the PED score has saturated."""
        return bool(self.saturation)

    @property
    def reason(self) -> str | None:
        """Why (one line per saturated score), or None."""
        if not self.saturation:
            return None
        return "\n".join(f"{kind}: {why}" for kind, why in self.saturation.items())


@overload
def ped_score(features: ArrayLike, labels: ArrayLike, scorer: ScorerLike = ..., *, reference: Reference | None = ...,
              return_baseline: Literal[False] = ..., scorer_options: Mapping[str, Any] | None = ...,
              backend: str = ..., reduce: str | None = ..., **ped_options: Any) -> float: ...


@overload
def ped_score(features: ArrayLike, labels: ArrayLike, scorer: ScorerLike = ..., *, reference: Reference | None = ...,
              return_baseline: Literal[True], scorer_options: Mapping[str, Any] | None = ...,
              backend: str = ..., reduce: str | None = ..., **ped_options: Any) -> PEDScore: ...


@overload
def ped_score(features: ArrayLike, labels: ArrayLike, scorer: ScorerLike = ..., *, reference: Reference | None = ...,
              return_baseline: bool, scorer_options: Mapping[str, Any] | None = ...,
              backend: str = ..., reduce: str | None = ..., **ped_options: Any) -> float | PEDScore: ...


def ped_score(features: ArrayLike, labels: ArrayLike, scorer: ScorerLike = "sfda", *,
              reference: Reference | None = None, return_baseline: bool = False,
              scorer_options: Mapping[str, Any] | None = None, backend: str = "auto", reduce: str | None = None,
              **ped_options: Any) -> float | PEDScore:
    """Score the PED-moved `features` (N x D) for `labels` (N).

    scorer: the name of a registered scorer that reads features ("sfda",
        the paper's default, "logme", "nleep", "gbc", "hscore",
        "reg_hscore", "transrate", "parc", "knn", or one added with
        ped_fast.scorers.register; see ped_fast.scorers.available()), or
        any callable f(features, labels) -> float.
    reference: the reference features or (mean, std), as for ped().
    return_baseline: also score the un-moved features; returns a PEDScore
        (ped, baseline, result, saturation) instead of a float.
    scorer_options: keyword arguments for the scorer, e.g. {"dtype":
        torch.float32} or {"seed": 1} for nleep.
    backend: "auto", "reference", "cpu", ... (see available_backends()),
        for ped() and for a named scorer alike (a callable scorer is called
        without it).
    reduce: None, or "pca:K": project the features on the K principal axes
        of the (centred) target features, in float64, before PED and
        scoring; reference features are projected on the same axes (a
        (mean, std) reference cannot be, and is refused). result.features
        are then the moved N x K projections.
    ped_options: ped()'s other keyword arguments (time_step, nsigma, ...,
        rescale, inplace).

    A named scorer gives what it gives on result.features, errors included;
    the shared computation is used only while the moved features keep the
    input's within-class spread.
    """
    # Every argument is checked before any work (a baseline score, a PCA).
    _check_ped_options(ped_options)
    check_parameters(**{k: v for k, v in ped_options.items() if k != "inplace"})
    check_inplace(ped_options.get("inplace", False), features)
    if not isinstance(return_baseline, bool):
        raise TypeError(f"return_baseline must be True or False, got {return_baseline!r}")
    options = dict(scorer_options or {})
    entry = None if callable(scorer) else _feature_scorer(scorer, options)
    if reduce is not None:
        features, reference = _reduce(features, reference, reduce, ped_options.get("inplace", False))
    if entry is None:
        assert callable(scorer)  # entry is None for a callable scorer only
        return _callable_score(scorer, features, labels, reference, return_baseline, options, backend, ped_options)

    def run_ped() -> PEDResult:
        return ped(features, labels, reference=reference, backend=backend, **ped_options)

    score = _score_entry(entry, features, labels, run_ped, return_baseline, options, backend)
    return score if return_baseline else score.ped


def ped_scores(features: ArrayLike, labels: ArrayLike, scorers: str | Iterable[str], *,
               reference: Reference | None = None, scorer_options: Mapping[str, Mapping[str, Any]] | None = None,
               backend: str = "auto", reduce: str | None = None, **ped_options: Any) -> dict[str, PEDScore]:
    """Several registered scorers on one model's features, each plain and
    with PED: {name: PEDScore}, as ped_score(..., return_baseline=True)
    gives for each, but with PED (and reduce's projection) computed once
    and shared: the dynamics do not depend on the scorer.

    scorers: names of registered scorers that read features.
    scorer_options: {name: keyword arguments for that scorer}.
    Other arguments as for ped_score; inplace=True is refused (every scorer
    reads the input)."""
    _check_ped_options(ped_options)
    check_parameters(**{k: v for k, v in ped_options.items() if k != "inplace"})
    if ped_options.get("inplace", False) is not False:
        raise ValueError(f"ped_scores does not take inplace=True: every scorer reads the input features, got "
                         f"inplace={ped_options['inplace']!r}")
    options, entries = _feature_scorers(scorers, scorer_options)
    if reduce is not None:
        features, reference = _reduce(features, reference, reduce, False)
    computed: list[PEDResult] = []

    def run_ped() -> PEDResult:
        if not computed:
            computed.append(ped(features, labels, reference=reference, backend=backend, **ped_options))
        return computed[0]

    return {name: _score_entry(entry, features, labels, run_ped, True, options[name], backend)
            for name, entry in entries.items()}


def ped_sweep(features: ArrayLike, labels: ArrayLike, scorers: str | Iterable[str], grid: Grid, *,
              reference: Reference | None = None, scorer_options: Mapping[str, Mapping[str, Any]] | None = None,
              backend: str = "auto", reduce: str | None = None, return_baseline: bool = True,
              **ped_options: Any) -> list[tuple[dict[str, Any], dict[str, PEDScore]]]:
    """Several registered scorers on one model's features at every point of
    a grid of PED's hyper-parameters (the paper's sensitivity study):
    [(point, {name: PEDScore})], one pair per point in grid order, each
    PEDScore what ped_scores(..., **ped_options, **point) gives.

    grid: {parameter: [values]} (every combination, the last parameter
        varying fastest) or a sequence of {parameter: value} points; the
        parameters are ped()'s (time_step, nsigma, exit_ratio, max_steps,
        ...). parse_ped_grid reads the CLI's "nsigma=0.4,0.6;time_step=0.1".
    ped_options: the settings every point shares (a point overrides them).
    return_baseline: False leaves the plain scores out (PEDScore.baseline
        None, saturation for the PED score only), for a caller that has
        them (the screen's cache).
    Other arguments as for ped_scores.

    What does not depend on the setting is computed once: reduce's
    projection, the reference features' mean and std, each plain score and
    each scorer's shared work (SFDA's residuals, within-class scatter, its
    factorisation and the first fit in the class means' hull; LogME's
    R^T R); per point ped() runs, the moved features' class statistics are
    read once for all scorers, and each is scored from its shared work.
    Points whose ped() moved nothing, or moved the classes by the same
    shift as an earlier point, share that feature set's scores."""
    points = grid_points(grid)
    for point in points:
        _check_ped_options(dict(ped_options, **point))
        check_parameters(**{k: v for k, v in dict(ped_options, **point).items() if k != "inplace"})
    if ped_options.get("inplace", False) is not False or any("inplace" in point for point in points):
        raise ValueError("ped_sweep does not take inplace: every grid point moves the input features")
    if not isinstance(return_baseline, bool):
        raise TypeError(f"return_baseline must be True or False, got {return_baseline!r}")
    options, entries = _feature_scorers(scorers, scorer_options)
    if reduce is not None:
        features, reference = _reduce(features, reference, reduce, False)
    x = features_tensor(features)[0]
    n, dim = x.shape
    if reference is not None and not isinstance(reference, tuple) and \
            all(dict(ped_options, **point).get("rescale", "reference") == "reference" for point in points):
        # The reference features' mean and std, once: ped() would read the
        # M x D reference at every point. eps=0 leaves the std unclamped, so
        # that each point's ped() clamps it by its own eps, as it would.
        # rescale="reference" reads no class statistics (counts, mean, var).
        reference = _rescaling(reference, "reference", 0.0, x, backend,
                               None, None, None)  # type: ignore[arg-type]
    prepared = {name: _Prepared(entry, features, labels, options[name], backend) for name, entry in entries.items()
                if entry.shared is not None and (entry.shared.applies is None or entry.shared.applies(n, dim, True))}
    # The scores of each distinct feature set, {name: score}: `unmoved`, the
    # input's (the plain scores, and the PED scores of points at which ped()
    # moved nothing); `moved_sets`, [(shift, scores)], one per distinct shift.
    unmoved: dict[str, float] = {}
    if return_baseline:
        unmoved = {name: prepared[name].baseline() if name in prepared else
                   _call(entry, features, labels, options[name], backend) for name, entry in entries.items()}
    baselines = {name: unmoved.get(name) for name in entries}
    moved_sets: list[tuple[torch.Tensor, dict[str, float]]] = []
    out: list[tuple[dict[str, Any], dict[str, PEDScore]]] = []
    for number, point in enumerate(points):
        result = ped(features, labels, reference=reference, backend=backend, **dict(ped_options, **point))
        shift = to_tensor(result.shift, "shift")[0]
        known: dict[str, float] | None
        if result.steps == 0:
            known = unmoved
        else:
            known = next((scores for other, scores in moved_sets if torch.equal(other, shift)), None)
        if not known:
            known = _score_moved(entries, prepared, result, labels, options, backend,
                                 last=number == len(points) - 1)
            if result.steps == 0:
                unmoved.update(known)
            else:
                moved_sets.append((shift, known))
        out.append((dict(point), {
            name: PEDScore(ped=known[name], baseline=baselines[name], result=result,
                           saturation=_saturation(entry, baselines[name], known[name], result, labels))
            for name, entry in entries.items()}))
    return out


def _score_moved(entries: Mapping[str, _registry.Scorer], prepared: Mapping[str, _Prepared], result: PEDResult,
                 labels: ArrayLike, options: Mapping[str, Mapping[str, Any]], backend: str, *,
                 last: bool) -> dict[str, float]:
    """{name: score} of PED's moved features `result.features` for each
    scorer: from its shared work (prepared) when it has one, the moved
    features' class statistics read once for all of them."""
    moved = to_tensor(result.features, "features")[0]
    moments = [prepared[name].moved_moments(moved) for name in list(prepared)[:1]]
    return {name: prepared[name].score_moved(moved, moments[0], last=last) if name in prepared else
            _call(entry, result.features, labels, options[name], backend) for name, entry in entries.items()}


def grid_points(grid: Grid) -> list[dict[str, Any]]:
    """The points ({parameter: value}) of a grid given as {parameter:
    [values]} (every combination, the last parameter fastest) or as a
    sequence of points; ValueError naming what came when it is neither, is
    empty, or names a parameter that is not ped()'s."""
    if isinstance(grid, dict):
        if not grid or not all(isinstance(v, (list, tuple)) and v for v in grid.values()):
            raise ValueError(f"grid must map each of ped()'s parameters to a non-empty list of values, got {grid!r}")
        points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    elif isinstance(grid, (list, tuple)) and grid and all(isinstance(p, dict) for p in grid):
        points = [dict(p) for p in grid]
    else:
        raise ValueError(f"grid must be {{parameter: [values]}} or a non-empty list of {{parameter: value}} points, "
                         f"got {grid!r}")
    accepted = [name for name in _PED_OPTIONS if name != "inplace"]
    for point in points:
        unknown = sorted(set(point) - set(accepted))
        if unknown:
            raise ValueError(f"grid names {', '.join(map(repr, unknown))}, not one of ped()'s parameters "
                             f"{', '.join(accepted)}")
    return points


def parse_ped_grid(spec: str) -> dict[str, list[float]]:
    """{parameter: [values]} of a grid spec "nsigma=0.4,0.6,0.8;time_step=0.05,0.1"
    (values are numbers; max_steps' are integers); ValueError naming what
    came when it is not of that form."""
    form = "'NAME=V,V,...;NAME=V,...' with NAME one of ped()'s parameters and each V a number"
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"ped_grid must be {form}, got {spec!r}")
    grid: dict[str, list[float]] = {}
    for part in spec.split(";"):
        name, sep, values = part.partition("=")
        name = name.strip()
        if not sep or not name or name in grid:
            raise ValueError(f"ped_grid must be {form} (each NAME once), got {spec!r}")
        try:
            grid[name] = [int(v) if name == "max_steps" else float(v) for v in values.split(",")]
        except ValueError:
            raise ValueError(f"ped_grid {spec!r}: the values of {name!r} must be numbers, got {values!r}") from None
    grid_points(grid)
    return grid


def _feature_scorers(scorers: str | Iterable[str], scorer_options: Mapping[str, Mapping[str, Any]] | None,
                     ) -> tuple[dict[str, dict[str, Any]], dict[str, _registry.Scorer]]:
    """({name: options}, {name: registry entry}) of the named feature
    scorers, each named once, their options checked (ped_scores, ped_sweep)."""
    names = [scorers] if isinstance(scorers, str) else list(scorers)
    if not names or len(set(names)) != len(names):
        raise ValueError(f"scorers must name each scorer once, at least one, got {names!r}")
    given = dict(scorer_options or {})
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise ValueError(f"scorer_options names scorers that are not scored: {unknown} (scorers: {names})")
    options = {name: dict(given.get(name) or {}) for name in names}
    entries = {name: _feature_scorer(name, options[name]) for name in names}
    return options, entries


def _feature_scorer(name: str, options: Mapping[str, Any]) -> _registry.Scorer:
    """The registry entry of a scorer that reads features, its options checked."""
    entry = _registry.get(name)
    if not entry.ped_applies:
        raise ValueError(f"PED does not apply to {name!r}: it reads {entry.reads}, not features, and PED "
                         f"moves features; call ped_fast.scorers.{name}(probabilities, labels) for its score")
    entry.check_options(options)
    return entry


def _score_entry(entry: _registry.Scorer, features: ArrayLike, labels: ArrayLike, run_ped: Callable[[], PEDResult],
                 return_baseline: bool, options: Mapping[str, Any], backend: str) -> PEDScore:
    """One registered scorer, on the input (when return_baseline) and on
    PED's moved features from run_ped(), sharing what it can."""
    shared = entry.shared
    if shared is not None and shared.applies is not None:
        n, dim = features_tensor(features)[0].shape
        if not shared.applies(n, dim, return_baseline):
            shared = None
    if shared is None:
        baseline, moved, result = _separate(entry, features, labels, run_ped, return_baseline, options, backend)
    else:
        baseline, moved, result = _shared(entry, features, labels, run_ped, return_baseline, options, backend)
    saturation = _saturation(entry, baseline, moved, result, labels) if return_baseline else {}
    return PEDScore(ped=moved, baseline=baseline, result=result, saturation=saturation)


def _check_ped_options(ped_options: Mapping[str, Any]) -> None:
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


def _call(entry: _registry.Scorer, features: ArrayLike, labels: ArrayLike, options: Mapping[str, Any],
          backend: str) -> float:
    """The registered scorer's value on `features` (backend= passed when the
    function takes it)."""
    kwargs = dict(options, backend=backend) if entry.takes_backend else options
    return _as_float(entry.function(features, labels, **kwargs), entry.name)


def _separate(entry: _registry.Scorer, features: ArrayLike, labels: ArrayLike, run_ped: Callable[[], PEDResult],
              return_baseline: bool, options: Mapping[str, Any],
              backend: str) -> tuple[float | None, float, PEDResult]:
    """Nothing shared: the scorer on the input (read before ped(), which may
    overwrite it in place), then on the moved features."""
    baseline = _call(entry, features, labels, options, backend) if return_baseline else None
    result = run_ped()
    return baseline, _call(entry, result.features, labels, options, backend), result


def _shared(entry: _registry.Scorer, features: ArrayLike, labels: ArrayLike, run_ped: Callable[[], PEDResult],
            return_baseline: bool, options: Mapping[str, Any],
            backend: str) -> tuple[float | None, float, PEDResult]:
    """The scorer's shared work (ped_fast.scorers.SharedWork) prepared from
    the input, then each score from it."""
    # The input is read (and validated) before ped(), which may overwrite it
    # when inplace=True.
    work = _Prepared(entry, features, labels, options, backend)
    baseline = work.baseline() if return_baseline else None
    result = run_ped()
    return baseline, work.moved(result, last=True), result


class _Prepared:
    """One scorer's shared work prepared from the input features, once: the
    input's score and the score of any PED-moved features of them (one
    ped() result or many, as a sweep gives) come from it."""

    def __init__(self, entry: _registry.Scorer, features: ArrayLike, labels: ArrayLike, options: Mapping[str, Any],
                 backend: str) -> None:
        self.entry, self.labels, self.options, self.backend = entry, labels, options, backend
        assert entry.shared is not None  # made for a scorer with shared work only
        self.shared = entry.shared
        dtype = options.get("dtype", torch.float64)
        self.prep = prepare(features, labels, dtype, backend, entry.name)
        self.moments = class_moments(self.prep)
        self.state = self.shared.prepare(self.prep, self.moments, {k: v for k, v in options.items() if k != "dtype"})

    def baseline(self) -> float:
        return float(self.shared.score(self.state, self.prep.x, self.moments, False))

    def moved(self, result: PEDResult, *, last: bool) -> float:
        """The score of PED's moved features `result.features`; last: no
        other score follows, so the shared work may be spent on this one."""
        moved, _ = to_tensor(result.features, "features")
        return self.score_moved(moved, self.moved_moments(moved), last=last)

    def moved_moments(self, moved: torch.Tensor) -> ClassMoments | None:
        """_shared_moments of PED's moved features `moved` (a tensor): the
        same for every scorer, whose preparations share the labels and
        the input's class variances."""
        return _shared_moments(self.prep, moved, self.moments.variances)

    def score_moved(self, moved: torch.Tensor, moved_moments: ClassMoments | None, *, last: bool) -> float:
        """The score of PED's moved features `moved`, whose moved_moments
        are given (None: scored by the scorer itself)."""
        if moved_moments is None:
            # The caller's options unchanged: a registered scorer need not take dtype.
            return _call(self.entry, moved, self.labels, self.options, self.backend)
        return float(self.shared.score(self.state, moved, moved_moments, last))


def _shared_moments(prep: Prepared, moved: torch.Tensor, variances: torch.Tensor) -> ClassMoments | None:
    """The ClassMoments of PED's moved features `moved`, when their
    within-class spread is the input's (`variances`, C x D) up to rounding,
    so that scoring them from the input's residuals is scoring them; None
    when it is not (see _SPREAD_TOLERANCE) or when they are not finite. One
    pass over the moved features."""
    _, means, moved_variances = prep.launcher.class_stats(moved, prep.index, prep.num_classes)
    if not all_finite(means, moved_variances):
        return None
    spread, moved_spread = variances.sum(dim=1), moved_variances.sum(dim=1)
    if bool(((moved_spread - spread).abs() > _SPREAD_TOLERANCE[moved.dtype] * spread).any()):
        return None
    return ClassMoments(means, moved_variances)


# How a Python user projects the features, added to a saturation reason
# that recommends the projection: the scorers' reasons name no API (the
# screen names its command-line options instead).
_PYTHON_REMEDY = "ped_score(..., reduce='pca:K')"


def _saturation(entry: _registry.Scorer, baseline: float | None, moved: float | None, result: PEDResult,
                labels: ArrayLike) -> dict[str, str]:
    """{kind: reason} for the scores that saturated (docs/spec.md §3), a
    recommended projection spelled as ped_score's argument; kinds whose
    score is None (not computed) are left out."""
    if entry.saturation is None:
        return {}
    x, _ = to_tensor(result.features, "features")
    classes = len(torch.unique(to_tensor(labels, "labels")[0]))
    shape = dict(samples=x.shape[0], dimensions=x.shape[1], classes=classes)
    out: dict[str, str] = {}
    for kind, value in (("baseline", baseline), ("ped", moved)):
        reason = None if value is None else entry.saturation(value, **shape)
        if reason is not None:
            out[kind] = reason.replace(PROJECTION_REMEDY, f"{PROJECTION_REMEDY} ({_PYTHON_REMEDY})")
    return out


def parse_reduce(spec: str) -> int:
    """K of a reduce spec "pca:K"; ValueError naming what came when it is
    not of that form. Whether K fits the features (1 <= K <= min(N - 1, D))
    is checked where they are known. Public so that callers (the zoo) can
    check the form before any work."""
    match = _REDUCE.match(spec) if isinstance(spec, str) else None
    if match is None:
        raise ValueError(f"reduce must be None or 'pca:K' with K a positive integer, got {spec!r}")
    return int(match.group(1))


def _reduce(features: ArrayLike, reference: Reference | None, spec: str,
            inplace: bool) -> tuple[ArrayLike, Reference | None]:
    """(features, reference) projected on the K principal axes of the
    centred features, in float64 (docs/spec.md §3): the axes are the
    eigenvectors of the features' scatter with the K largest eigenvalues,
    each signed so that its largest-magnitude entry is positive (the first
    such entry on a tie), and reference features are centred on the
    features' mean and projected on the same axes, so that PED rescales by
    the reference's spread along the axes it scores. The caller's array
    type and device are kept."""
    k = parse_reduce(spec)
    if inplace is True:
        raise ValueError("inplace=True cannot be combined with reduce: PED moves the reduced copy, not the caller's "
                         "features")
    x, as_numpy = features_tensor(features)
    n, dim = x.shape
    if not 1 <= k <= min(n - 1, dim):
        raise ValueError(f"reduce='pca:{k}' needs 1 <= K <= min(N - 1, D) = {min(n - 1, dim)} (centred N x D features "
                         f"have at most N - 1 principal axes with variance)")
    if isinstance(reference, tuple):
        raise ValueError("reduce cannot project a (mean, std) reference: the spread of the reference along a principal "
                         "axis needs the reference's covariance, not its per-dimension std; pass the reference "
                         "features, or rescale='self'")
    xd = x.to(torch.float64)
    mean = xd.mean(0)
    if not all_finite(mean):
        raise_non_finite(x, "features")
    centred = xd - mean
    _, axes = principal_axes(centred)
    axes = axes[:, :k]
    signs = torch.sign(axes.gather(0, axes.abs().argmax(0, keepdim=True)))
    axes = axes * signs
    projected = matmul(centred, axes)
    if reference is not None:
        g, _ = features_tensor(reference, "reference")
        if g.shape[1] != dim:
            raise ValueError(f"reference has {g.shape[1]} columns but features has {dim}")
        reference = matmul(g.to(device=x.device, dtype=torch.float64) - mean, axes)
        reference = reference.cpu().numpy() if as_numpy else reference
    return (projected.cpu().numpy() if as_numpy else projected), reference


def _callable_score(scorer: Callable[..., Any], features: ArrayLike, labels: ArrayLike, reference: Reference | None,
                    return_baseline: bool, options: Mapping[str, Any], backend: str,
                    ped_options: Mapping[str, Any]) -> float | PEDScore:
    baseline = _as_float(scorer(features, labels, **options), "the scorer") if return_baseline else None
    result = ped(features, labels, reference=reference, backend=backend, **ped_options)
    moved = _as_float(scorer(result.features, labels, **options), "the scorer")
    return PEDScore(ped=moved, baseline=baseline, result=result) if return_baseline else moved


def _as_float(value: Any, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must return a number, but it returned {type(value).__name__}") from None
