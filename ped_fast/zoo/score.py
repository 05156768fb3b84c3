"""Scoring one model: PED and each scorer, plain and with PED, from one
model's features; cached per (features, reference, scorer); and the warnings
that say when a score means little.

Every score goes through ``ped_fast.ped_score(..., return_baseline=True)``,
which scores the plain and the PED-moved features sharing what the two have
in common.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from ..score import ped_score
from ..scorers import SCORERS, saturation
from .cache import content_key

# Part of every score's cache key: bump it when a change here (or in
# ped_score's defaults) would change a cached score.
SCORE_VERSION = 2
# Scores that agree to this relative precision are reported as tied: float64
# scores of different models agree this closely only when the models cannot
# be told apart by the scorer.
_TIE = 1e-9


def check_scorers(scorers) -> tuple:
    """Validated scorer names, from a comma-separated string or a sequence."""
    if isinstance(scorers, str):
        scorers = [s.strip() for s in scorers.split(",") if s.strip()]
    scorers = tuple(scorers)
    unknown = [s for s in scorers if s not in SCORERS]
    if not scorers or unknown:
        raise ValueError(f"scorers {list(scorers)}: expected one or more of {', '.join(SCORERS)}")
    if len(set(scorers)) != len(scorers):
        raise ValueError(f"scorers lists a name twice: {list(scorers)}")
    return scorers


def score_key(features_key, reference_key, scorer) -> str:
    """Cache key of one score: the features' and the reference statistics'
    keys (reference_key "self" for rescale='self') and the scorer."""
    return content_key("score", SCORE_VERSION, features_key, reference_key, scorer)


def score_features(features, labels, scorer, *, reference, backend="auto", device="cpu") -> dict:
    """One scorer, plain and with PED, on one model's features.

    features: N x D; labels: N class indices; reference: (mean, std) of the
    model's reference features (float64 vectors of length D), or "self" to
    rescale by the features' own moments. device: where the features are
    scored (a CUDA device runs PED and the scorer on the GPU backends).
    Returns {"baseline", "ped", "steps", "seconds"}."""
    start = time.perf_counter()
    x = torch.as_tensor(np.asarray(features)).to(device)
    y = torch.as_tensor(np.asarray(labels)).to(device)
    options = {"rescale": "self"} if isinstance(reference, str) and reference == "self" else {"reference": reference}
    result = ped_score(x, y, scorer, return_baseline=True, backend=backend, **options)
    return {"baseline": float(result.baseline), "ped": float(result.ped), "steps": int(result.result.steps),
            "seconds": time.perf_counter() - start}


def empty_row(name) -> dict:
    """A result row before anything is known (see docs/screening.md §5)."""
    return {"name": name, "dim": None, "n": None, "steps": None, "scores": {}, "seconds": {}, "warnings": [],
            "error": None, "identity": None, "cached": []}


def cached_row(row, cache, keys, scorers, stages) -> bool:
    """Fill `row` from the cache when every scorer's score is there (then
    the `stages` before scoring were skipped too); keys: (features key,
    reference key or "self")."""
    entries = [cache.get("score", score_key(*keys, scorer)) for scorer in scorers]
    if any(entry is None for entry in entries):
        return False
    for scorer, entry in zip(scorers, entries):
        _take_score(row, scorer, entry.meta)
    row["cached"] = [*stages, "scores"]
    row["_skipped"], row["_classes"] = entries[0].meta["skipped"], entries[0].meta["classes"]
    return True


def score_row(row, cache, keys, features, labels, reference, scorers, skipped, *, backend="auto", device="cpu"):
    """Fill `row` with one model's scores, plain and with PED, computing
    (and caching) those not in the cache. features: N x D (read into memory
    here: one model's at a time); reference: ReferenceStats or "self";
    skipped: {"data": [...], "reference": [...]} undecodable images."""
    classes = int(np.unique(labels).size)
    row["_skipped"], row["_classes"] = skipped, classes
    features = np.array(features)
    reference_arg = "self" if reference == "self" else (reference.mean, reference.std)
    for scorer in scorers:
        key = score_key(*keys, scorer)
        entry = cache.get("score", key)
        if entry is None:
            value = score_features(features, labels, scorer, reference=reference_arg, backend=backend, device=device)
            meta = dict(value, dim=int(features.shape[1]), n=int(features.shape[0]), classes=classes,
                        skipped=skipped, scorer=scorer, model=row["name"])
            cache.put("score", key, meta)
            row["seconds"][scorer] = value["seconds"]
            _take_score(row, scorer, meta)
        else:
            _take_score(row, scorer, entry.meta)
            if "scores" not in row["cached"]:
                row["cached"].append("scores")


def _take_score(row, scorer, meta):
    row["scores"][scorer] = {"baseline": meta["baseline"], "ped": meta["ped"]}
    row["dim"], row["n"], row["steps"] = meta["dim"], meta["n"], meta["steps"]


def zoo_warnings(rows, scorers, classes) -> list:
    """Warnings about the screen's finished rows: scores that carry no
    ranking information (the scorer's saturation check, e.g. SFDA at 1.0)
    and ties among the top models. classes: {model name: number of classes
    it was scored on}. Each warning is {"models": [names], "message": text};
    the screen adds the message to each named model's row too."""
    rows = [row for row in rows if not row.get("error")]
    out = []
    for scorer in scorers:
        for kind in ("baseline", "ped"):
            title = display_name(scorer, kind)
            values = {row["name"]: row["scores"][scorer][kind] for row in rows}
            reasons = {row["name"]: saturation(scorer, values[row["name"]], samples=row["n"], dimensions=row["dim"],
                                               classes=classes[row["name"]]) for row in rows}
            saturated = [name for name, reason in reasons.items() if reason]
            if saturated:
                out.append({"models": saturated,
                            "message": f"{title}: {reasons[saturated[0]]} ({len(saturated)} model(s): "
                                       f"{', '.join(saturated)})"})
            best = max((v for name, v in values.items() if name not in saturated), default=None)
            tied = [name for name, value in values.items() if name not in saturated and _close(value, best)]
            if len(tied) > 1:
                out.append({"models": tied,
                            "message": f"{title}: {len(tied)} models tie for the top score {best:.6g} "
                                       f"({', '.join(tied)}); the ranking cannot choose among them"})
    return out


def display_name(scorer, kind) -> str:
    """"SFDA" for the plain scores, "PED+SFDA" for the PED ones."""
    name = scorer.upper()
    return name if kind == "baseline" else f"PED+{name}"


def _close(a, b):
    return math.isclose(a, b, rel_tol=_TIE, abs_tol=_TIE)
