"""Scoring one model: each scorer, plain and with PED, from one model's
features (or, for the scorers that read the source model's predictions,
from its logits); cached per (features, reference, scorer, reduce); the
warnings that say when a score means little; and the zoo-level
combinations of scores (--combine).

Every features score goes through ``ped_fast.ped_score(...,
return_baseline=True)``, which scores the plain and the PED-moved features
sharing what the two have in common and says which scores saturated.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import numpy.typing as npt
import torch

from ..score import ped_scores, ped_sweep
from ..scorers import available, get, saturation
from ..scorers.sfda import PROJECTION_REMEDY
from .cache import Cache, CacheEntry, content_key
from .predictions import Predictions
from .refstats import ReferenceStats

# Part of every score's cache key: bump it when a change here would change a
# cached score. 3: entries hold the saturation reasons. 4: keys hold the
# scoring code's hash. (Changes to PED and the scorers are covered by
# scoring_code(), without a bump.)
SCORE_VERSION = 4
# Scores that agree to this relative precision are reported as tied: float64
# scores of different models agree this closely only when the models cannot
# be told apart by the scorer.
_TIE = 1e-9
# A result row (docs/screening.md §5), as empty_row starts it.
Row = dict[str, Any]
# A score's cache key parts before the scorer: (features key, reference key
# or "self", predictions form or None).
ScoreKeys = tuple[str, str, Union[str, None]]
# What score_features rescales by: "self", (mean, std), or reference features (M x D).
FeaturesReference = Union[str, tuple[npt.ArrayLike, npt.ArrayLike], npt.ArrayLike]


def check_scorers(scorers: str | Iterable[str]) -> tuple[str, ...]:
    """Validated scorer names, from a comma-separated string or a sequence;
    "all" is every registered scorer (ped_fast.scorers.available()). Names
    are case-insensitive ("SFDA", as the tables print it, is sfda)."""
    names = tuple(record.name for record in available())
    if isinstance(scorers, str):
        scorers = names if scorers.strip().lower() == "all" else [s.strip() for s in scorers.split(",") if s.strip()]
    if not all(isinstance(s, str) for s in scorers):
        raise TypeError(f"scorers must be names (strings), got {list(scorers)!r}")
    scorers = tuple(s if s in names else s.lower() for s in scorers)
    unknown = [s for s in scorers if s not in names]
    if unknown:
        raise ValueError(f"unknown scorer{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}: expected "
                         f"'all' or one or more of {', '.join(names)}")
    if not scorers:
        raise ValueError(f"scorers is empty: expected 'all' or one or more of {', '.join(names)}")
    if len(set(scorers)) != len(scorers):
        raise ValueError(f"scorers lists a name twice: {list(scorers)}")
    return scorers


def score_key(features_key: str, reference_key: str, predictions: str | None, scorer: str,
              reduce: str | None = None) -> str:
    """Cache key of one score: the features' and the reference's keys
    (reference_key "self" for rescale='self'), the form of the predictions
    (zoo.predictions.FORMS, or None when no scorer reads them), the scorer
    and `reduce`. A scorer that reads the source model's predictions
    depends on the features key (which names the model and images) and the
    predictions' form, not on the reference or `reduce`."""
    if not get(scorer).ped_applies:
        return content_key("score", SCORE_VERSION, scoring_code(), features_key, "predictions", predictions, scorer)
    return content_key("score", SCORE_VERSION, scoring_code(), features_key, reference_key, scorer,
                       *(() if reduce is None else (reduce,)))


# The modules of the package that turn features into a score (besides
# scorers/ and the Triton kernels): PED, ped_score, the backends' launchers
# and what they share.
_SCORING_MODULES = ("ped.py", "score.py", "ops.py", "_validate.py", "_common.py", "_backends.py", "reference.py",
                    "cpu.py", "triton.py", "cuda.py")


@functools.cache
def scoring_code() -> str:
    """A hash of the source of everything that turns features into a score:
    PED and its backends' launchers, ped_score, the scorers, the Triton
    kernels and this module. Part of every score key, so that a changed
    scorer or PED (a changed default included) never returns a score cached
    by the old code, without anyone remembering a version bump. The C++ and
    CUDA sources are not shipped with the package and are not hashed."""
    import importlib.util

    package = Path(__file__).resolve().parent.parent
    spec = importlib.util.find_spec("ped_fast.kernels")
    assert spec is not None and spec.submodule_search_locations is not None  # a package the wheel ships
    kernels = spec.submodule_search_locations[0]
    files = sorted([*(package / name for name in _SCORING_MODULES), *(package / "scorers").glob("*.py"),
                    *Path(kernels).glob("*.py"), Path(__file__).resolve()])
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def score_features(features: npt.ArrayLike, labels: npt.ArrayLike, scorers: str | Iterable[str], *,
                   reference: FeaturesReference, backend: str = "auto", device: str | torch.device = "cpu",
                   reduce: str | None = None) -> dict[str, dict[str, Any]]:
    """Scorers that read features, each plain and with PED, on one model's
    features, with PED (and reduce's projection) computed once for all of
    them (ped_fast.ped_scores).

    features: N x D; labels: N class indices; scorers: a name or names;
    reference: (mean, std) of the model's reference features (float64
    vectors of length D), the M x D reference features, or "self" to
    rescale by the features' own moments. device: where the features are
    scored (a CUDA device runs PED and the scorers on the GPU backends).
    reduce: None or "pca:K" (ped_score's).
    Returns {scorer: {"baseline", "ped", "steps", "seconds", "saturated"}},
    saturated being {"baseline": reason or None, "ped": reason or None};
    seconds: the scorer's share of the call (PED's time split evenly)."""
    names = [scorers] if isinstance(scorers, str) else list(scorers)
    start = time.perf_counter()
    x, y, options = _ped_inputs(features, labels, reference, device)
    results = ped_scores(x, y, names, backend=backend, reduce=reduce, **options)
    seconds = (time.perf_counter() - start) / len(names)
    # The scorer's own reasons (PEDScore's spell the remedy in Python; the
    # screen's warnings spell it for their reader, zoo_warnings), for the
    # features scored: reduce's K columns when it projected them.
    shape = dict(samples=int(x.shape[0]), classes=int(torch.unique(y).numel()))
    return {name: {"baseline": result.baseline, "ped": float(result.ped), "steps": int(result.result.steps),
                   "seconds": seconds,
                   "saturated": {kind: saturation(name, getattr(result, kind), dimensions=int(
                       result.result.features.shape[1]), **shape) for kind in ("baseline", "ped")}}
            for name, result in results.items()}


def _ped_inputs(features: npt.ArrayLike, labels: npt.ArrayLike, reference: FeaturesReference,
                device: str | torch.device) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """(features, labels, ped()'s reference options) on `device`."""
    x = torch.as_tensor(np.asarray(features)).to(device)
    y = torch.as_tensor(np.asarray(labels)).to(device)
    if isinstance(reference, str) and reference == "self":
        return x, y, {"rescale": "self"}
    if isinstance(reference, tuple):
        return x, y, {"reference": reference}
    return x, y, {"reference": torch.as_tensor(np.asarray(reference)).to(device)}


def grid_scores(features: npt.ArrayLike, labels: npt.ArrayLike, scorers: Iterable[str],
                points: Iterable[Mapping[str, Any]], *, reference: FeaturesReference, backend: str = "auto",
                device: str | torch.device = "cpu", reduce: str | None = None) -> list[dict[str, float]]:
    """PED's score of each scorer that reads features at each of `points`
    (ped()'s settings, {parameter: value}), from ped_fast.score.ped_sweep:
    [{scorer: value}], one per point. Arguments as for score_features; the
    grid's scores are not cached (they are the study of a setting, not a
    zoo's ranking)."""
    # A copy: the cache's features are read-only memory maps, which torch warns about.
    x, y, options = _ped_inputs(np.array(features), labels, reference, device)
    # Without the plain scores: the row has them (score_row, cached).
    sweep = ped_sweep(x, y, list(scorers), list(points), backend=backend, reduce=reduce, return_baseline=False,
                      **options)
    return [{name: float(score.ped) for name, score in scores.items()} for _, scores in sweep]


def score_predictions(predictions: Predictions | None, labels: npt.NDArray[Any], scorer: str, *, backend: str = "auto",
                      device: str | torch.device = "cpu") -> dict[str, Any]:
    """A scorer that reads the source model's predictions (leep, nce, or a
    registered one), from `predictions` (zoo.predictions.Predictions); PED
    does not apply ("ped" is None). LEEP and NCE are computed in row blocks
    from either form; another scorer needs the exact form, and gets its
    logits (or their softmax) whole. predictions None (a model without a
    classifier head): every value None and a "note" saying why. Same keys
    as score_features' values."""
    start = time.perf_counter()
    nothing = {"baseline": None, "ped": None, "steps": None, "saturated": {"baseline": None, "ped": None}}
    if predictions is None:
        return dict(nothing, seconds=0.0, note=f"{scorer.upper()}: no score, the model has no classifier head (it "
                                              f"reads the source model's predictions)")
    if scorer == "leep":
        value = predictions.leep(labels)
    elif scorer == "nce":
        value = predictions.nce(labels)
    else:
        if not predictions.serves(scorer):
            raise ValueError(f"{scorer} reads the source model's full predictions, but only their compact form is "
                             f"cached; screen with predictions='exact' (--predictions exact)")
        value = _dense_predictions_score(predictions.arrays["logits"], labels, scorer, backend, device)
    classes = int(np.unique(labels).size)
    reason = saturation(scorer, value, samples=int(len(labels)), dimensions=predictions.num_sources, classes=classes)
    return dict(nothing, baseline=value, seconds=time.perf_counter() - start,
                saturated={"baseline": reason, "ped": None})


def _dense_predictions_score(logits: npt.NDArray[Any], labels: npt.ArrayLike, scorer: str, backend: str,
                             device: str | torch.device) -> float:
    y = torch.as_tensor(np.asarray(labels)).to(device)
    record = get(scorer)
    # A copy: the cache's logits are read-only memory maps, which torch warns about.
    inputs = torch.as_tensor(np.array(logits)).to(device)
    options: dict[str, object] = {"backend": backend} if record.takes_backend else {}
    if record.options is None or "logits" in record.options:
        options["logits"] = True
    else:  # a registered scorer that reads probabilities only
        inputs = torch.softmax(inputs.to(torch.float64), dim=1)
    return float(record.function(inputs, y, **options))


def empty_row(name: str) -> Row:
    """A result row before anything is known (see docs/screening.md §5)."""
    return {"name": name, "dim": None, "n": None, "steps": None, "scores": {}, "seconds": {}, "warnings": [],
            "error": None, "identity": None, "cached": [], "device": None, "math": None, "reference_images": None}


def cached_row(row: Row, cache: Cache, keys: ScoreKeys, scorers: Sequence[str], stages: Sequence[str],
               reduce: str | None = None) -> bool:
    """Fill `row` from the cache when every scorer's score is there (then
    the `stages` before scoring were skipped too); keys: (features key,
    reference key or "self", predictions form)."""
    found = [cache.get("score", score_key(*keys, scorer, reduce)) for scorer in scorers]
    entries = [entry for entry in found if entry is not None]
    if len(entries) != len(found):
        return False
    for scorer, entry in zip(scorers, entries):
        _take_score(row, scorer, entry.meta)
    row["cached"] = [*stages, "scores"]
    row["_skipped"] = entries[0].meta["skipped"]
    return True


def score_row(row: Row, cache: Cache, keys: ScoreKeys, features: npt.ArrayLike, labels: npt.NDArray[Any],
              reference: ReferenceStats | str | npt.ArrayLike, scorers: Sequence[str], skipped: Mapping[str, Any], *,
              predictions: Predictions | None = None, backend: str = "auto", device: str | torch.device = "cpu",
              reduce: str | None = None) -> None:
    """Fill `row` with one model's scores, plain and with PED, computing
    (and caching) those not in the cache. features: N x D (read into memory
    here: one model's at a time); reference: ReferenceStats, M x D
    reference features, or "self"; keys: (features key, reference key,
    predictions form); predictions: zoo.predictions.Predictions or None (no
    classifier head), for the scorers that read them; skipped: {"data": [...],
    "reference": [...]} undecodable images; reduce: None or "pca:K"."""
    classes = int(np.unique(labels).size)
    row["_skipped"] = skipped
    features = np.array(features)
    reference_arg: FeaturesReference
    if isinstance(reference, str):
        reference_arg = reference
    elif isinstance(reference, ReferenceStats):
        reference_arg = (reference.mean, reference.std)
    else:
        reference_arg = reference
    context = dict(features=features, labels=labels, predictions=predictions, reference=reference_arg, backend=backend,
                   device=device, reduce=reduce, meta=dict(dim=int(features.shape[1]), n=int(features.shape[0]),
                                                           classes=classes, skipped=skipped, model=row["name"],
                                                           features_device=row["device"], features_math=row["math"],
                                                           reference_images=row["reference_images"]))
    scorer_keys = {scorer: score_key(*keys, scorer, reduce) for scorer in scorers}
    entries: dict[str, CacheEntry] = {}
    waiting: list[str] = []
    with contextlib.ExitStack() as held:
        mine: list[str] = []
        for scorer, key in scorer_keys.items():
            # Two screens of one model score it once: the scores this process
            # can lock it computes together (one PED run); the others it
            # waits for below, holding no lock.
            if not held.enter_context(cache.lock("score", key, blocking=False)):
                waiting.append(scorer)
            elif (entry := cache.get("score", key)) is not None:
                entries[scorer] = entry
            else:
                mine.append(scorer)
        computed = _compute_scores(cache, scorer_keys, mine, context)
    for scorer in waiting:
        with cache.lock("score", scorer_keys[scorer]):
            entry = cache.get("score", scorer_keys[scorer])
            if entry is not None:
                entries[scorer] = entry
            else:
                computed.update(_compute_scores(cache, scorer_keys, [scorer], context))
    for scorer in scorers:
        if scorer in computed:
            entry = computed[scorer]
            row["seconds"][scorer] = entry.meta["seconds"]
        else:
            entry = entries[scorer]
            if "scores" not in row["cached"]:
                row["cached"].append("scores")
        _take_score(row, scorer, entry.meta)


def _compute_scores(cache: Cache, keys: Mapping[str, str], scorers: Sequence[str],
                    context: Mapping[str, Any]) -> dict[str, CacheEntry]:
    """Compute and cache `scorers` ({scorer: entry}): the features scorers
    together (one PED), the logits scorers one by one."""
    features = [s for s in scorers if get(s).ped_applies]
    values = score_features(context["features"], context["labels"], features, reference=context["reference"],
                            backend=context["backend"], device=context["device"], reduce=context["reduce"]) \
        if features else {}
    for scorer in scorers:
        if scorer not in values:
            values[scorer] = score_predictions(context["predictions"], context["labels"], scorer,
                                               backend=context["backend"], device=context["device"])
    return {scorer: cache.put("score", keys[scorer], dict(values[scorer], scorer=scorer, **context["meta"]))
            for scorer in scorers}


def _take_score(row: Row, scorer: str, meta: Mapping[str, Any]) -> None:
    row["scores"][scorer] = {"baseline": meta["baseline"], "ped": meta["ped"], "saturated": meta["saturated"]}
    row["dim"], row["n"] = meta["dim"], meta["n"]
    # What computed the features scored: a cached row keeps its original's.
    row["device"], row["math"] = meta.get("features_device"), meta.get("features_math")
    row["reference_images"] = meta.get("reference_images")
    if meta["steps"] is not None:  # None for the scorers PED does not apply to
        row["steps"] = meta["steps"]
    if meta.get("note"):
        row["warnings"].append(meta["note"])


# How a screen projects the features, added to a saturation reason that
# recommends the projection (the scorers' reasons name no API): the
# command's options, and screen()'s arguments for a Python caller.
SCREEN_REMEDY = "ped-fast screen --reduce pca:K --reference self; in Python, screen(..., reduce='pca:K', reference='self')"


def zoo_warnings(rows: Iterable[Row], scorers: Iterable[str]) -> list[dict[str, Any]]:
    """Warnings about the screen's finished rows: scores that carry no
    ranking information (each row's scores[S]["saturated"], from the
    scorer's saturation check, e.g. SFDA at 1.0) and ties among the top
    models. Each warning is {"models": [names], "message": text}; the
    screen adds the message to each named model's row too. Saturated
    models are grouped by their reason, which quotes their own value and
    shape (D differs between models), and a recommended projection is
    spelled as the screen's options (SCREEN_REMEDY)."""
    rows = [row for row in rows if not row.get("error")]
    out: list[dict[str, Any]] = []
    for scorer in scorers:
        for kind in ("baseline", "ped"):
            title = display_name(scorer, kind)
            values = {row["name"]: row["scores"][scorer][kind] for row in rows
                      if row["scores"][scorer][kind] is not None}
            reasons = {row["name"]: row["scores"][scorer]["saturated"][kind] for row in rows}
            saturated = [name for name in values if reasons[name]]
            groups: dict[str, list[str]] = {}
            for name in saturated:
                groups.setdefault(reasons[name], []).append(name)
            for reason, names in groups.items():
                reason = reason.replace(PROJECTION_REMEDY, f"{PROJECTION_REMEDY} ({SCREEN_REMEDY})")
                out.append({"models": names,
                            "message": f"{title}: {reason} ({len(names)} model(s): {', '.join(names)})"})
            best = max((v for name, v in values.items() if name not in saturated), default=None)
            tied = [name for name, value in values.items()
                    if name not in saturated and best is not None and _close(value, best)]
            if len(tied) > 1:
                out.append({"models": tied,
                            "message": f"{title}: {len(tied)} models tie for the top score {best:.6g} "
                                       f"({', '.join(tied)}); the ranking cannot choose among them"})
    return out


def check_combine(combine: str | Iterable[str] | None, scorers: Sequence[str]) -> tuple[str, ...]:
    """Validated --combine specs: None, one SPEC string or a sequence of
    them. SPEC is "minmax:TERM+TERM[+...]", TERM a screened scorer's name
    (its plain score) or "ped_" + the name (its PED score); see
    docs/screening.md §5."""
    if combine is None:
        return ()
    specs = (combine,) if isinstance(combine, str) else tuple(combine)
    for spec in specs:
        method, _, terms = spec.partition(":") if isinstance(spec, str) else ("", "", "")
        if method != "minmax" or not terms:
            raise ValueError(f"combine {spec!r}: expected 'minmax:TERM+TERM...' with each TERM a screened scorer "
                             f"(its plain score) or ped_SCORER (its PED score)")
        for term in terms.split("+"):
            scorer, kind = _term(term)
            if scorer not in scorers:
                raise ValueError(f"combine {spec!r}: {term!r} is not a screened score; the screened scorers are "
                                 f"{', '.join(scorers)} (ped_NAME for a PED score)")
            if kind == "ped" and not get(scorer).ped_applies:
                raise ValueError(f"combine {spec!r}: {term!r}: PED does not apply to {scorer!r} (it reads the source "
                                 f"model's predictions), so it has no PED score")
    if len(set(specs)) != len(specs):
        raise ValueError(f"combine lists a spec twice: {list(specs)}")
    return specs


def combine_scores(rows: Iterable[Row], spec: str) -> dict[str, float | None]:
    """{model: combined value} of one checked SPEC over the finished rows:
    each named score min-max normalised across the models that have every
    named score ((v - min) / (max - min); 0 for all when the score is the
    same for every model), then averaged. Models lacking a named score (a
    failed model, or a model without a classifier head for leep/nce) get
    None."""
    terms = [_term(term) for term in spec.partition(":")[2].split("+")]
    rows = [row for row in rows if not row.get("error")]
    complete = [row for row in rows if all(row["scores"][s][k] is not None for s, k in terms)]
    total = {row["name"]: 0.0 for row in complete}
    for scorer, kind in terms:
        values = [row["scores"][scorer][kind] for row in complete]
        low, span = min(values, default=0.0), max(values, default=0.0) - min(values, default=0.0)
        for row, value in zip(complete, values):
            total[row["name"]] += (value - low) / span if span > 0 else 0.0
    return {row["name"]: total[row["name"]] / len(terms) if row["name"] in total else None for row in rows}


def _term(term: str) -> tuple[str, str]:
    """(scorer, "baseline" or "ped") of one --combine TERM."""
    return (term[4:], "ped") if term.startswith("ped_") else (term, "baseline")


def display_name(scorer: str, kind: str) -> str:
    """"SFDA" for the plain scores, "PED+SFDA" for the PED ones."""
    name = scorer.upper()
    return name if kind == "baseline" else f"PED+{name}"


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=_TIE, abs_tol=_TIE)
