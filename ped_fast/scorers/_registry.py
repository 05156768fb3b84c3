"""The scorer registry (docs/spec.md §2.13): every scorer ped_fast knows,
registered once under its name with what it reads, its options, where it
comes from, the work it can share between the input and PED's moved
features, and how to tell when its score has saturated.

ped_score() looks scorers up here and never names one itself; users add
their own with register(), and installed packages add theirs as plugins:
an entry point in the "ped_fast.scorers" group names a function, called
with no arguments, that registers the package's scorers with register().
Plugins are loaded once, on the first lookup (available(), get(),
SCORERS), so that `import ped_fast` does not import them; one that fails
is left out with a PluginWarning and listed by plugin_errors(), and the
others still load.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import inspect
import re
import threading
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Callable, Optional

NEEDS = {
    "features": "features (N x D) and labels",
    "probabilities": "source-model probabilities or logits (N x K) and labels",
}
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
# f(inputs, labels, **options) -> number.
ScorerFunction = Callable[..., float]
# f(value, *, samples, dimensions, classes) -> reason or None.
SaturationCheck = Callable[..., Optional[str]]


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

    prepare: Callable[..., Any]
    score: Callable[..., float]
    applies: Optional[Callable[[int, int, bool], bool]] = None


@dataclass(frozen=True)
class Scorer:
    """One registered scorer.

    name: its registry name; function: f(inputs, labels, **options) ->
    number; needs: "features" or "probabilities" (what `inputs` is);
    source: the paper and the published code it follows; options: the
    keyword options it accepts (None: any); shared: a SharedWork or None;
    saturation: f(value, *, samples, dimensions, classes) -> reason or None;
    plugin: "distribution version" of the installed package whose plugin
    registered it, None for the built-in scorers and register() calls.
    """

    name: str
    function: ScorerFunction
    needs: str
    source: str
    options: Optional[tuple[str, ...]]
    shared: Optional[SharedWork]
    saturation: Optional[SaturationCheck]
    plugin: Optional[str] = None

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

    def check_options(self, options: Mapping[str, object]) -> None:
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


_REGISTRY: dict[str, Scorer] = {}


def register(name: str, function: ScorerFunction, *, needs: str = "features", shared: SharedWork | None = None,
             source: str = "", options: Iterable[str] | None = None, saturation: SaturationCheck | None = None,
             replace: bool = False) -> Scorer:
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


def unregister(name: str) -> None:
    """Remove scorer `name` from the registry."""
    get(name)
    del _REGISTRY[name]


def get(name: str) -> Scorer:
    """The Scorer registered as `name`; ValueError naming the registered
    ones otherwise."""
    _load_plugins()
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"scorer must be one of {', '.join(map(repr, _REGISTRY))} or a callable, got {name!r}") from None


def available() -> tuple[Scorer, ...]:
    """Every registered scorer, in registration order: a tuple of Scorer
    records (name, source, needs, reads, ped_applies, options, plugin,
    ...): the built-in ones, then those registered with register() and by
    plugins."""
    _load_plugins()
    return tuple(_REGISTRY.values())


def saturation(name: str, value: float, *, samples: int, dimensions: int, classes: int) -> str | None:
    """Why scorer `name`'s `value` on `samples` x `dimensions` features in
    `classes` classes carries no ranking information (e.g. SFDA at 1.0, the
    features separating every sample), or None when it does."""
    check = get(name).saturation
    if check is None:
        return None
    return check(float(value), samples=samples, dimensions=dimensions, classes=classes)


class _FeatureScorers(Mapping[str, ScorerFunction]):
    """{name: function} of the registered scorers that read features (the
    ones ped_score runs), kept up to date with the registry."""

    def _names(self) -> list[str]:
        _load_plugins()
        return [name for name, record in _REGISTRY.items() if record.needs == "features"]

    def __getitem__(self, name: str) -> ScorerFunction:
        _load_plugins()
        record = _REGISTRY.get(name)
        if record is None or record.needs != "features":
            raise KeyError(name)
        return record.function

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def __repr__(self) -> str:
        return f"SCORERS({', '.join(self._names())})"


SCORERS = _FeatureScorers()

ENTRY_POINT_GROUP = "ped_fast.scorers"


class PluginWarning(UserWarning):
    """A scorer plugin that could not be loaded (its scorers are left out)."""


@dataclass(frozen=True)
class PluginError:
    """A scorer plugin that could not be loaded.

    distribution: "name version" of the installed package declaring it;
    entry_point: "name = module:function" as the package declares it (None
    when the package's entry points could not be read); error: "Type:
    message"; exception: the exception itself, with its traceback.
    """

    distribution: str
    entry_point: Optional[str]
    error: str
    exception: BaseException = dataclasses.field(compare=False, repr=False)

    def __str__(self) -> str:
        where = f"scorer plugin {self.entry_point!r}" if self.entry_point else "the scorer plugins"
        return f"{where} of package {self.distribution} failed to load, its scorers are left out: {self.error}"


class _Plugins:
    """Whether the plugins were loaded, and which failed. The lock makes a
    second thread wait for the first one's loading; it is re-entrant so
    that a plugin that looks scorers up while registering (in the loading
    thread) sees the registry as it stands instead of deadlocking."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.loading = False
        self.done = False
        self.errors: tuple[PluginError, ...] = ()


_PLUGINS = _Plugins()


def plugin_errors() -> tuple[PluginError, ...]:
    """The scorer plugins that could not be loaded: a tuple of PluginError
    (package, entry point, error), empty when every plugin loaded."""
    _load_plugins()
    return _PLUGINS.errors


def _load_plugins() -> None:
    """Load every installed scorer plugin, once: each entry point of the
    "ped_fast.scorers" group names a function that registers scorers when
    called with no arguments. A plugin that fails to import or register, or
    that replaces or removes a scorer registered before it, keeps none of
    its scorers and is reported; the others still load. Entry points load
    in the order of their package's and their own names, so that every
    machine lists the scorers in one order."""
    state = _PLUGINS
    if state.done:
        return
    with state.lock:
        if state.done or state.loading:
            return
        state.loading = True
        errors: list[PluginError] = []
        try:
            for distribution, entry_point in _entry_points(errors):
                error = _load_plugin(distribution, entry_point)
                if error is not None:
                    errors.append(error)
        finally:
            state.errors = tuple(errors)
            state.loading = False
            state.done = True
        for error in errors:
            warnings.warn(str(error), PluginWarning, stacklevel=3)


def _entry_points(errors: list[PluginError]) -> list[tuple[str, importlib.metadata.EntryPoint]]:
    """[(distribution, entry point)] of the group, sorted, each package read
    on its own so that one with unreadable metadata is reported without
    hiding the others; a package installed twice on sys.path counts once,
    from the first, as importlib.metadata.entry_points() does."""
    found: list[tuple[str, importlib.metadata.EntryPoint]] = []
    seen: set[str] = set()
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"] or "(unnamed)"
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        seen.add(key)
        distribution = f"{name} {dist.version}"
        try:
            points = dist.entry_points.select(group=ENTRY_POINT_GROUP)
        except Exception as exception:  # noqa: BLE001 - a broken package must not hide the others
            # Reported only when its metadata names the group: another
            # package's broken entry points are not ped_fast's business.
            if f"[{ENTRY_POINT_GROUP}]" in (dist.read_text("entry_points.txt") or ""):
                errors.append(_error(distribution, None, exception))
            continue
        found += [(distribution, point) for point in points]
    return sorted(found, key=lambda pair: (pair[0], pair[1].name))


def _load_plugin(distribution: str, entry_point: importlib.metadata.EntryPoint) -> PluginError | None:
    """Run one plugin; a PluginError, with the registry as it was before it,
    when it fails; None when it loaded, its scorers marked as its own."""
    before = dict(_REGISTRY)
    declared = f"{entry_point.name} = {entry_point.value}"
    try:
        hook = entry_point.load()
        if not callable(hook):
            raise TypeError(f"{entry_point.value} must be a function that registers scorers when called with no "
                            f"arguments, got {type(hook).__name__}")
        hook()
        changed = [name for name, record in before.items() if _REGISTRY.get(name) is not record]
        if changed:
            raise ValueError(f"it replaced or removed scorers registered before it ({', '.join(changed)}); a plugin "
                             f"may only add scorers")
    except Exception as exception:  # noqa: BLE001 - a broken plugin must not break the others
        _REGISTRY.clear()
        _REGISTRY.update(before)
        return _error(distribution, declared, exception)
    for name in [name for name in _REGISTRY if name not in before]:
        _REGISTRY[name] = dataclasses.replace(_REGISTRY[name], plugin=distribution)
    return None


def _error(distribution: str, declared: str | None, exception: BaseException) -> PluginError:
    return PluginError(distribution=distribution, entry_point=declared,
                       error=f"{type(exception).__name__}: {exception}", exception=exception)


def _signature(function: Callable[..., object]) -> inspect.Signature | None:
    try:
        return inspect.signature(function)
    except (TypeError, ValueError):  # builtins without a signature
        return None


def _options(function: Callable[..., object]) -> tuple[str, ...] | None:
    signature = _signature(function)
    if signature is None or any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
        return None
    params = list(signature.parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)][:2]
    return tuple(p.name for p in params if p not in positional and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def _has_keyword(function: Callable[..., object], keyword: str) -> bool:
    signature = _signature(function)
    if signature is None:
        return False
    parameter = signature.parameters.get(keyword)
    return parameter is not None and parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)


def _check_two_arguments(function: Callable[..., object]) -> None:
    signature = _signature(function)
    if signature is None:
        return
    try:
        signature.bind(None, None)
    except TypeError:
        raise TypeError(f"a scorer is called as f(inputs, labels, **options), but {getattr(function, '__name__', function)!r} "
                        f"has signature {signature}") from None
