"""The scorer registry (docs/spec.md §2.13): every scorer ped_fast knows,
registered once under its name with what it reads, its options, where it
comes from, the work it can share between the input and PED's moved
features, and how to tell when its score has saturated.

ped_score() looks scorers up here and never names one itself; users add
their own with register().
"""
from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Callable, Optional

NEEDS = {
    "features": "features (N x D) and labels",
    "probabilities": "source-model probabilities or logits (N x K) and labels",
}
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class SharedWork:
    """Work a features scorer computes once for the input and reuses for
    PED's moved features, which differ from the input only in their class
    means (docs/spec.md §3). ped_score() calls

        state = prepare(prep, moments, options)
        score(state, x, moments, last) -> float

    prepare reads the validated input before PED runs (PED may overwrite it
    in place): prep is a ped_fast.scorers.Prepared (features prep.x, class
    positions prep.index, counts, compute dtype, backend launcher), moments
    the input's ClassMoments, options the scorer options other than dtype
    and backend. score gives the scorer's value for features x (the input
    or PED's moved features, N x D) whose class statistics are `moments`
    and whose within-class residuals are the input's; last=True is the
    final call, which may consume the state. applies(n, d, baseline), when
    given, says whether sharing pays off for N x D features, with or
    without a baseline score; when it returns False ped_score calls the
    scorer on each feature set instead.
    """

    prepare: Callable
    score: Callable
    applies: Optional[Callable] = None


@dataclass(frozen=True)
class Scorer:
    """One registered scorer.

    name: its registry name; function: f(inputs, labels, **options) ->
    number; needs: "features" or "probabilities" (what `inputs` is);
    source: the paper and the published code it follows; options: the
    keyword options it accepts (None: any); shared: a SharedWork or None;
    saturation: f(value, *, samples, dimensions, classes) -> reason or None.
    """

    name: str
    function: Callable
    needs: str
    source: str
    options: Optional[tuple]
    shared: Optional[SharedWork]
    saturation: Optional[Callable]

    @property
    def ped_applies(self) -> bool:
        """PED moves features: it applies to the scorers that read them."""
        return self.needs == "features"

    @property
    def reads(self) -> str:
        return NEEDS[self.needs]

    @property
    def takes_backend(self) -> bool:
        return _has_keyword(self.function, "backend")

    def check_options(self, options):
        """TypeError unless every key of `options` is an option of this
        scorer (backend excluded: ped_score passes its own)."""
        if self.options is None:
            if "backend" in options:
                raise TypeError(f"scorer_options for {self.name!r} must not hold backend: backend is ped_score's own "
                                "keyword (it steers ped() and the scorer)")
            return
        accepted = sorted(set(self.options) - {"backend"})
        unknown = set(options) - set(accepted)
        if unknown:
            hint = "; backend is ped_score's own keyword (it steers ped() and the scorer)" if "backend" in unknown else ""
            raise TypeError(f"scorer_options for {self.name!r} accepts {accepted}, got {sorted(unknown)}{hint}")


_REGISTRY: dict = {}


def register(name, function, *, needs="features", shared=None, source="", options=None, saturation=None,
             replace=False):
    """Register `function` as scorer `name` and return its Scorer record.

    function: f(inputs, labels, **options) -> number, where inputs are the
        features (needs="features") or the source model's probabilities
        (needs="probabilities"). ped_score() runs features scorers on the
        input and PED's moved features (passing backend= when f has a
        backend parameter); PED does not apply to the others.
    shared: a SharedWork, for a features scorer whose work PED's moved
        features can partly reuse; None to score each feature set alone.
    source: the paper and published code it follows (for listings).
    options: the keyword options f accepts; default: read from f's
        signature (its parameters after the first two; any, if it takes
        **kwargs).
    saturation: f(value, *, samples, dimensions, classes) -> str or None,
        the reason a value carries no ranking information (e.g. SFDA at 1).
    replace: allow replacing a scorer already registered under `name`.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"a scorer name must be a string of letters, digits and underscores starting with a letter, "
                         f"got {name!r}")
    if not callable(function):
        raise TypeError(f"function must be callable, got {type(function).__name__}")
    if needs not in NEEDS:
        raise ValueError(f"needs must be one of {', '.join(map(repr, NEEDS))}, got {needs!r}")
    if shared is not None and not isinstance(shared, SharedWork):
        raise TypeError(f"shared must be a SharedWork or None, got {type(shared).__name__}")
    if shared is not None and needs != "features":
        raise ValueError("shared work is work shared between the input and PED's moved features: only a scorer with "
                         "needs='features' can have it")
    if saturation is not None and not callable(saturation):
        raise TypeError(f"saturation must be callable or None, got {type(saturation).__name__}")
    if not isinstance(replace, bool):
        raise TypeError(f"replace must be True or False, got {replace!r}")
    if name in _REGISTRY and not replace:
        raise ValueError(f"a scorer named {name!r} is already registered; pass replace=True to replace it")
    _check_two_arguments(function)
    record = Scorer(name=name, function=function, needs=needs, source=str(source),
                    options=_options(function) if options is None else tuple(options), shared=shared,
                    saturation=saturation)
    _REGISTRY[name] = record
    return record


def unregister(name):
    """Remove scorer `name` from the registry."""
    get(name)
    del _REGISTRY[name]


def get(name) -> Scorer:
    """The Scorer registered as `name`; ValueError naming the registered
    ones otherwise."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"scorer must be one of {', '.join(map(repr, _REGISTRY))} or a callable, got {name!r}") from None


def available():
    """Every registered scorer, in registration order: a tuple of Scorer
    records (name, source, needs, reads, ped_applies, options, ...)."""
    return tuple(_REGISTRY.values())


def saturation(name, value, *, samples, dimensions, classes):
    """Why scorer `name`'s `value` on `samples` x `dimensions` features in
    `classes` classes carries no ranking information (e.g. SFDA at 1.0, the
    features separating every sample), or None when it does."""
    check = get(name).saturation
    if check is None:
        return None
    return check(float(value), samples=samples, dimensions=dimensions, classes=classes)


class _FeatureScorers(Mapping):
    """{name: function} of the registered scorers that read features (the
    ones ped_score runs), kept up to date with the registry."""

    def _names(self):
        return [name for name, record in _REGISTRY.items() if record.needs == "features"]

    def __getitem__(self, name):
        record = _REGISTRY.get(name)
        if record is None or record.needs != "features":
            raise KeyError(name)
        return record.function

    def __iter__(self):
        return iter(self._names())

    def __len__(self):
        return len(self._names())

    def __repr__(self):
        return f"SCORERS({', '.join(self._names())})"


SCORERS = _FeatureScorers()


def _signature(function):
    try:
        return inspect.signature(function)
    except (TypeError, ValueError):  # builtins without a signature
        return None


def _options(function):
    signature = _signature(function)
    if signature is None or any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
        return None
    params = list(signature.parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)][:2]
    return tuple(p.name for p in params if p not in positional and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def _has_keyword(function, keyword):
    signature = _signature(function)
    if signature is None:
        return False
    parameter = signature.parameters.get(keyword)
    return parameter is not None and parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)


def _check_two_arguments(function):
    signature = _signature(function)
    if signature is None:
        return
    try:
        signature.bind(None, None)
    except TypeError:
        raise TypeError(f"a scorer is called as f(inputs, labels, **options), but {getattr(function, '__name__', function)!r} "
                        f"has signature {signature}") from None
