"""PED before transformer-ranker's estimators (docs/integrations.md).

transformer-ranker (pip install 'ped_fast[transformer-ranker]') ranks
language models for a text dataset: TransformerRanker(dataset).run(models,
estimator="hscore") embeds the texts with each model and scores the
embeddings with an estimator (hscore, logme or knn), one object whose
fit(embeddings=N x D, labels=N) returns the score. PED moves the classes
of the embeddings apart before that score is taken (ped_fast.ped).

- PEDEstimator(estimator, reference=None, **ped_options): an estimator
  that runs PED on the embeddings and the wrapped estimator on the moved
  ones; use it on embeddings you already have.
- add_ped_estimators(ranker): adds "ped_hscore", "ped_logme" and "ped_knn"
  to a TransformerRanker, so that ranker.run(models,
  estimator="ped_hscore") applies PED to every model's embeddings.

The reference is handled as ped_fast does: without one, PED rescales by
the embeddings' own moments (rescale="self"). Within run() it has to be:
the ranker gives its estimator each model's (and layer's) embeddings and
labels but not which model they come from, so no per-model reference can
be chosen there.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from transformer_ranker.estimators import HScore, LogME, NearestNeighbors
from transformer_ranker.estimators.base import Estimator

from .._validate import ArrayLike
from ..ped import PEDResult, Reference, check_parameters, ped

__all__ = ["PEDEstimator", "add_ped_estimators"]

# The estimators TransformerRanker.run() takes by name, as its own table
# (TransformerRanker.transferability_metrics) names them.
ESTIMATORS = {"hscore": HScore, "logme": LogME, "knn": NearestNeighbors}
# ped()'s keyword options an estimator passes on; inplace is not one: an
# estimator does not modify the embeddings it is given.
PED_OPTIONS = tuple(name for name, parameter in inspect.signature(ped).parameters.items()
                    if parameter.kind is parameter.KEYWORD_ONLY and name not in ("reference", "inplace"))


class PEDEstimator(Estimator):
    """A transformer-ranker estimator that scores PED's moved embeddings.

    estimator: "hscore", "logme" or "knn" (transformer-ranker's estimator
        of that name), or an Estimator instance to wrap.
    regression: transformer-ranker's flag for a regression dataset. PED
        moves classes apart, so it needs class labels: True is refused.
    reference: the same model's embeddings of a reference set (M x D) or
        their (mean, std); None (the default) rescales by the embeddings'
        own moments, ped(..., rescale="self").
    ped_options: ped()'s other options (time_step, nsigma, force_constant,
        exit_ratio, max_steps, eps, rescale, backend).

    fit(embeddings, labels, **kwargs) runs ped() on the N x D embeddings
    and returns the wrapped estimator's fit on the moved ones (kwargs are
    the wrapped estimator's, e.g. knn's distance_metric). Embeddings in
    float16 or bfloat16 (a model loaded in half precision) are moved in
    float32, ped()'s narrowest type; transformer-ranker's estimators widen
    them too. After fit, `score` is the score and `result` ped()'s
    PEDResult (steps, diagnostics, the moved features).
    """

    def __init__(self, estimator: str | Estimator = "hscore", *, regression: bool = False,
                 reference: Reference | None = None, **ped_options: Any) -> None:
        if not isinstance(regression, bool):
            raise TypeError(f"regression must be True or False, got {regression!r}")
        if regression:
            raise ValueError("regression=True: PED moves the classes of the embeddings apart and needs class "
                             "labels, and this is a regression task; use transformer-ranker's estimator alone")
        super().__init__(regression=False)
        if isinstance(estimator, str):
            if estimator not in ESTIMATORS:
                raise ValueError(f"estimator must be one of {', '.join(map(repr, ESTIMATORS))} or a "
                                 f"transformer-ranker Estimator, got {estimator!r}")
            estimator = ESTIMATORS[estimator](regression=False)
        elif not isinstance(estimator, Estimator):
            raise TypeError(f"estimator must be one of {', '.join(map(repr, ESTIMATORS))} or a transformer-ranker "
                            f"Estimator, got {type(estimator).__name__}")
        elif estimator.regression:
            raise ValueError("estimator was made for a regression task (regression=True): PED needs class labels")
        self.estimator = estimator
        self.reference = reference
        self.ped_options = _ped_options(ped_options, reference)
        self.result: PEDResult | None = None

    def fit(self, embeddings: ArrayLike, labels: ArrayLike, **kwargs: Any) -> float:
        if isinstance(embeddings, torch.Tensor) and embeddings.dtype in (torch.float16, torch.bfloat16):
            embeddings = embeddings.float()
        self.result = ped(embeddings, labels, reference=self.reference, **self.ped_options)
        score: float = self.estimator.fit(embeddings=self.result.features, labels=labels, **kwargs)
        self.score = score
        return score

    def __repr__(self) -> str:
        options = "".join(f", {key}={value!r}" for key, value in self.ped_options.items())
        return f"PEDEstimator({type(self.estimator).__name__}{options})"


def add_ped_estimators(ranker: Any, estimators: str | Iterable[str] = ("hscore", "logme", "knn"),
                       **ped_options: Any) -> tuple[str, ...]:
    """Let `ranker` (a TransformerRanker) run each of `estimators` after
    PED: ranker.run(models, estimator="ped_hscore") scores every model's
    embeddings (each layer's, with layer_aggregator="bestlayer") with
    PEDEstimator around the ranker's own "hscore". Returns the names added
    ("ped_hscore", ...). ped_options: as for PEDEstimator; there is no
    reference (see the module's docstring), PED rescales by each model's
    embeddings (rescale="self").

    The names are added to the ranker's table of estimators
    (ranker.transferability_metrics), the table run() looks its estimator
    argument up in and makes the estimator from."""
    metrics = getattr(ranker, "transferability_metrics", None)
    if not isinstance(metrics, dict):
        raise TypeError(f"ranker must be a transformer_ranker.TransformerRanker (0.2 or later, whose "
                        f"transferability_metrics table run() reads), got {type(ranker).__name__} without one")
    if "reference" in ped_options:
        raise TypeError("add_ped_estimators takes no reference: run() gives an estimator each model's embeddings "
                        "without saying which model they come from, so PED rescales each by its own moments; "
                        "use PEDEstimator(..., reference=...) on embeddings you have")
    names = [estimators] if isinstance(estimators, str) else list(estimators)
    unknown = [name for name in names if name not in metrics]
    if unknown or not names:
        raise ValueError(f"estimators must name some of the ranker's estimators {', '.join(map(repr, metrics))}, "
                         f"got {names!r}")
    options = _ped_options(ped_options, None)
    added = {f"ped_{name}": _Factory(metrics[name], options) for name in names}
    metrics.update(added)
    return tuple(added)


class _Factory:
    """What run() calls to make its estimator, factory(regression=...): a
    PEDEstimator around the ranker's own estimator class."""

    def __init__(self, estimator_class: Callable[..., Estimator], ped_options: Mapping[str, Any]) -> None:
        self.estimator_class = estimator_class
        self.ped_options = ped_options

    def __call__(self, regression: bool = False) -> PEDEstimator:
        if regression:
            raise ValueError("this dataset is a regression task: PED moves the classes of the embeddings apart and "
                             "needs class labels; run the estimator without the ped_ prefix")
        return PEDEstimator(self.estimator_class(regression=False), **self.ped_options)


def _ped_options(options: Mapping[str, Any], reference: Reference | None) -> dict[str, Any]:
    """ped()'s options, checked, with rescale="self" when there is no
    reference and no rescale was chosen."""
    unknown = sorted(set(options) - set(PED_OPTIONS))
    if unknown:
        raise TypeError(f"unexpected PED option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}: "
                        f"expected some of {', '.join(PED_OPTIONS)} (inplace is not one: an estimator leaves the "
                        f"embeddings as they are)")
    options = dict(options)
    options.setdefault("rescale", "self" if reference is None else "reference")
    check_parameters(**{key: value for key, value in options.items() if key != "backend"})
    if reference is None and options["rescale"] == "reference":
        raise ValueError("rescale='reference' needs a reference: pass reference= (the model's embeddings of a "
                         "reference set, or their (mean, std)), or leave rescale out to rescale by the embeddings' "
                         "own moments")
    if reference is not None and options["rescale"] != "reference":
        raise ValueError(f"reference is only used with rescale='reference', got rescale={options['rescale']!r}")
    return options
