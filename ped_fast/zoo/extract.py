"""Feature extraction: image folders through timm models, batched, on the GPU
when there is one, cached per (model, image set, data config, precision).

Features are a model's pre-logit features: ``forward_features`` then
``forward_head(..., pre_logits=True)``, stored float32. Only when a scorer
reads the source model's predictions (LEEP, NCE) is its classifier head
applied too, to the same trunk output, and its predictions kept, in the
form zoo.predictions describes (a separate cache entry, "predictions"); the
reference pass never computes them.

Models that share a resize config (timm's resolved input size,
interpolation and crop) share decoded batches, whatever their
normalisation: each image is decoded and transformed once per resize
group, and each model normalises the batch on its device. Passes are
planned over the whole zoo (grouped by resize config, then filled); a pass
holds up to ``models_per_pass`` models (their weights) at once, by default
16 or as many as a weights budget allows, and a group's decoded images are
kept across its passes within a memory budget (beyond it, each pass
decodes them again); each model's
features go straight into its own N x D float32 file in the cache (a
memory-mapped temporary file, renamed into place when complete), so no
model's feature matrix is ever held in memory by extraction.

One model's failure (cannot load, out of memory, a forward error) is
recorded for that model and the pass goes on with the others.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import time
import warnings
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import numpy.typing as npt
import torch

from .._validate import check_integer
from .cache import Cache, content_key
from .errors import checking_inputs, describe
from .device import MATH_MODES, device_name, math_context, resolve_device
from .images import ImageSet, image_set, load_rgb
from .predictions import COMPACT_BYTES, Predictions, check_form, compact_rows
from .progress import progress as progress_bar

if TYPE_CHECKING:
    from pathlib import Path

    from .cache import CacheEntry
    from .models import LoadedModel, Models, ModelSpec

# Part of every cache key of extracted data: bump it whenever a change here
# would change the numbers extraction produces. 2: keys hold the library
# versions and the math mode, and the architecture instead of the spec's name.
EXTRACTION_VERSION = 2
# Part of every predictions key: bump it when their form changes.
PREDICTIONS_VERSION = 1
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Rows copied at once when compacting a feature file after skipped images.
_COPY_ROWS = 8192
# A decoded image (_Decoded): its index, the transformed image or None, the
# error message or None; and a batch of them (_collate): the indices of the
# decoded images, their stacked batch or None, the (index, message) of the
# others.
_Item = tuple[int, "torch.Tensor | None", "str | None"]
_Batch = tuple["npt.NDArray[np.int64]", "torch.Tensor | None", list[tuple[int, "str | None"]]]
# A model of a pass: its Outcome and the built model (_Built), with the
# stages it still needs (_Member).
_Built = tuple["Outcome", "LoadedModel"]
_Member = tuple["Outcome", "LoadedModel", list["Stage"]]


@dataclass(frozen=True)
class Settings:
    """How models are built and run (picklable: a work unit's argument).

    device: a torch device string, or None for cuda when the process that
    does the work has one (resolved there, not where the settings were
    made: a Ray worker may have a GPU its driver lacks). workers: DataLoader
    worker processes decoding images (0: in the main process; None: 0 on
    the CPU, where decoding would take cores from the forward passes, up to
    8 with a GPU). models_per_pass: how many models' weights one shared pass
    over the images holds at once (None: as many as fit in 1 GiB of weights
    on the CPU, 40% of a GPU's memory, and at most 16 when the resize
    group's decoded images fit in the 1 GiB kept across its passes; see
    run_stages). threads: torch's intra-op threads
    during the forward passes (None: the cores this process may use less
    the decoding workers, at least 1, so decoding and forward passes never
    oversubscribe the cores). use_ema: a training checkpoint's EMA
    weights when it holds them (timm's preference), else its plain ones."""
    pretrained: bool = True
    seed: int = 0
    batch_size: int = 64
    device: str | None = None
    precision: str = "fp32"
    workers: int | None = None
    models_per_pass: int | None = None
    progress: bool = True
    use_ema: bool = True
    threads: int | None = None

    @classmethod
    def make(cls, *, pretrained: bool = True, seed: int = 0, batch_size: int = 64,
             device: str | torch.device | None = None, precision: str = "fp32", workers: int | None = None,
             models_per_pass: int | None = None, progress: bool = True, use_ema: bool = True,
             threads: int | None = None, check_device: bool = True) -> Settings:
        """Validated settings. check_device: also check that `device` is
        usable in this process (off when the work runs elsewhere)."""
        value: object  # each argument below, whatever the caller passed
        for name, value in (("pretrained", pretrained), ("use_ema", use_ema)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be True or False, got {value!r}")
        if device is not None:
            device = str(resolve_device(device) if check_device else _device_syntax(device))
        check_integer(seed, "seed", minimum=0)
        check_integer(batch_size, "batch_size", minimum=1)
        for name, value, low in (("models_per_pass", models_per_pass, 1), ("workers", workers, 0),
                                 ("threads", threads, 1)):
            if value is not None:
                check_integer(value, name, minimum=low)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        return cls(pretrained=pretrained, seed=seed, batch_size=batch_size, device=device, precision=precision,
                   workers=workers, models_per_pass=models_per_pass, progress=bool(progress), use_ema=use_ema,
                   threads=threads)

    def identity(self, spec: ModelSpec, cache: Cache | None = None) -> str:
        """The weights' identity of `spec` under these settings (file facts
        remembered in `cache`)."""
        from .models import weights_identity

        return weights_identity(spec, pretrained=self.pretrained, seed=self.seed, use_ema=self.use_ema, cache=cache)

    def load(self, spec: ModelSpec) -> LoadedModel:
        """`spec` built under these settings (models.load_model)."""
        from .models import load_model

        return load_model(spec, pretrained=self.pretrained, seed=self.seed, use_ema=self.use_ema)

    def torch_device(self) -> torch.device:
        """The device the work runs on, resolved in this process."""
        return resolve_device(self.device)

    def decoding_workers(self, device: torch.device) -> int:
        if self.workers is not None:
            return self.workers
        return 0 if device.type == "cpu" else min(8, available_cores())

    def forward_threads(self, device: torch.device) -> int:
        if self.threads is not None:
            return self.threads
        return max(1, available_cores() - self.decoding_workers(device))


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity: a container's
    or a cluster task's share, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op thread count for the block, restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _device_syntax(device: str | torch.device) -> torch.device:
    """A cpu or cuda torch.device, not checked against this machine."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be a torch device such as 'cpu', 'cuda' or 'cuda:1', got {device!r}") from None
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or a CUDA device, got {device!r}")
    return resolved


@functools.cache
def library_versions() -> dict[str, str]:
    """The versions of the libraries that decide extracted numbers: the
    model code and its configs (timm), the kernels (torch), the transforms
    (torchvision) and image decoding (Pillow). Part of every extraction key:
    an upgrade that changes a model or a transform recomputes, never reuses."""
    import PIL
    import timm
    import torchvision

    return {"torch": torch.__version__, "timm": timm.__version__, "torchvision": torchvision.__version__,
            "pillow": PIL.__version__}


def architecture(spec: ModelSpec) -> str:
    """The timm architecture of a spec, without its pretrained tag: with the
    weights' identity, what decides the model (`resnet50` and
    `resnet50.a1_in1k` with the same weights are one model)."""
    from timm.models import split_model_name_tag

    return split_model_name_tag(spec.name)[0]


@dataclass
class FeatureSet:
    """One model's features of one labelled image set.

    features: N x D float32 (read-only, memory-mapped from the cache).
    predictions: the classifier head's predictions (zoo.predictions), when
    they were asked for and the model has a head; else None. labels: N int64 class indices; classes[c] names class c.
    skipped: relative paths of images that could not be decoded (not in
    the N rows). key: the cache key. cached: read from the cache rather than
    computed in this call. seconds: this model's forward time plus its share
    of the pass's decoding time. device, math: what computed the features
    (device_name(), MATH_MODES) — a cached set keeps its original's."""
    label: str
    name: str
    identity: str
    key: str
    features: npt.NDArray[Any]
    predictions: Predictions | None
    labels: npt.NDArray[np.int64]
    classes: tuple[str, ...]
    skipped: list[str]
    data_config: dict[str, Any]
    cached: bool = False
    seconds: float = 0.0
    device: str | None = None
    math: str | None = None

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])


class ExtractionError(RuntimeError):
    """Some models failed; `errors` maps their labels to the exceptions,
    `results` the others' labels to their results."""

    def __init__(self, errors: dict[str, BaseException], results: dict[str, Any]) -> None:
        self.errors = errors
        self.results = results
        lines = "; ".join(f"{label}: {describe(error)}" for label, error in errors.items())
        super().__init__(f"{len(errors)} of {len(errors) + len(results)} models failed: {lines}")


@dataclass
class Outcome:
    """What run_stages did for one model: `results` maps each stage (the
    object, so that two stages of one kind, such as the features of two
    target sets, are two entries) to its result or the exception that
    stopped it; seconds["load"] is the time spent building the model
    (absent when it was not built)."""
    spec: ModelSpec
    identity: str | None = None
    data_config: dict[str, Any] | None = None
    results: dict[Stage, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def failed(self) -> bool:
        """Whether a stage of this model has failed (the later ones are then
        skipped: no reference pass for a model without features)."""
        return any(isinstance(result, BaseException) for result in self.results.values())

    def fail(self, stages: Iterable[Stage], error: BaseException) -> None:
        # Without its traceback: the frames of a failed forward pass hold
        # its activations, which must be freed for the models still running.
        error = error.with_traceback(None)
        for stage in stages:
            self.results[stage] = error


class Stage:
    """One image set to push through models. Subclasses say what happens to
    each batch of features (sink) and how an entry of theirs becomes a
    result (result); `name` is also the cache kind of their entries."""
    name = ""

    def __init__(self, images: ImageSet) -> None:
        self.images = images

    def key(self, spec: ModelSpec, identity: str, data_config: Mapping[str, Any], precision: str) -> str:
        """Everything the entry's numbers depend on: the stage, the
        extraction code's version, the architecture and the weights'
        identity, the data config (the transform), the image set's
        fingerprint, the math mode and the library versions. Not the spec's
        label or pretrained tag: those name rows, they change no number."""
        return content_key(self.name, EXTRACTION_VERSION, architecture(spec), identity, data_config,
                           self.images.fingerprint, MATH_MODES[precision], library_versions())

    def cached(self, cache: Cache, key: str, label: str) -> Any:
        """The finished result in the cache, or None."""
        entry = cache.get(self.name, key)
        return None if entry is None else self.result(entry, label, cached=True)

    def result(self, entry: CacheEntry, label: str, *, cached: bool) -> Any:
        raise NotImplementedError

    def sink(self, cache: Cache, key: str, loaded: LoadedModel) -> Any:
        raise NotImplementedError


class FeaturesStage(Stage):
    """Writes each model's features of a labelled set to the cache, and its
    predictions when `predictions` names their form (zoo.predictions.FORMS)."""
    name = "features"

    def __init__(self, images: ImageSet, predictions: str | None = None) -> None:
        super().__init__(images)
        self.predictions = None if predictions is None else check_form(predictions)

    def predictions_key(self, features_key: str) -> str:
        return content_key("predictions", PREDICTIONS_VERSION, features_key, self.predictions, COMPACT_BYTES)

    def cached(self, cache: Cache, key: str, label: str) -> FeatureSet | None:
        """The features entry, with the predictions entry when they are asked
        for and the model has a head; None when either is missing."""
        entry = cache.get(self.name, key)
        if entry is None:
            return None
        predictions = None
        if self.predictions is not None and entry.meta.get("num_sources"):
            predictions = cache.get("predictions", self.predictions_key(key))
            if predictions is None:
                return None
            predictions = _remapped(cache, predictions)
        return self.result(_remapped(cache, entry), label, cached=True, predictions=predictions)

    def result(self, entry: CacheEntry, label: str, *, cached: bool,
               predictions: CacheEntry | None = None) -> FeatureSet:
        meta = entry.meta
        read = None
        if predictions is not None:
            read = Predictions(form=predictions.meta["form"], num_sources=predictions.meta["num_sources"],
                               arrays=cast("dict[str, npt.NDArray[Any]]", predictions.arrays))  # memmaps
        return FeatureSet(label=label, name=meta["model"], identity=meta["identity"], key=entry.key,
                          features=entry.arrays["features"], predictions=read,
                          labels=np.array(entry.arrays["labels"]), classes=tuple(meta["classes"]),
                          skipped=meta["skipped"], data_config=meta["data_config"], cached=cached,
                          seconds=0.0 if cached else meta["seconds"], device=meta.get("device"),
                          math=meta.get("math"))

    def sink(self, cache: Cache, key: str, loaded: LoadedModel) -> _FeatureSink:
        return _FeatureSink(self, cache, key, loaded)


def _remapped(cache: Cache, entry: CacheEntry) -> CacheEntry:
    """`entry`, just read by cache.get() or put(), mapped afresh. get()
    checks each array's CRC-32 by reading every page through the map it
    returns, and a map keeps the pages it read resident, counted in this
    process's memory, for as long as it lives: every model's features until
    the screen ends (at 200 models in bench_zoo_scale.py, most of the peak
    memory's growth over 50). The cache remembers what it has checked, so
    this get() reads no page, and the checked map is dropped with `entry`."""
    return cache.get(entry.kind, entry.key) or entry


def data_config_key(spec: ModelSpec, identity: str) -> str:
    """The key of a model's remembered data config. The spec's name with its
    tag: timm gives each pretrained tag its own config, even for random
    weights. The library versions: a timm upgrade may change a config, and
    an entry is never rewritten."""
    return content_key("config", spec.name, identity, library_versions())


def remembered_config(cache: Cache, spec: ModelSpec, identity: str) -> dict[str, Any] | None:
    """The data config recorded when this model was last built, or None:
    lets a re-run find its cache entries without building the model."""
    entry = cache.get("config", data_config_key(spec, identity))
    return entry.meta["data_config"] if entry is not None else None


def canonical_config(data_config: Mapping[str, Any]) -> dict[str, Any]:
    """timm's data config as JSON values (tuples become lists), so that equal
    configs compare, hash and group equal."""
    config: dict[str, Any] = json.loads(json.dumps(dict(data_config), sort_keys=True))
    return config


def check_models(models: Models, settings: Settings, cache: Cache | None = None) -> list[ModelSpec]:
    """Parsed specs, each with a known architecture and existing weights
    (hashing local files, or reading their remembered digests in `cache`):
    input mistakes fail here, before any model is built, rather than as one
    failed model each."""
    from .models import parse_models

    specs = parse_models(models)
    for spec in specs:
        settings.identity(spec, cache)
    return specs


def run_stages(models: Any, stages: Sequence[Stage], settings: Settings, cache: Cache) -> dict[str, Outcome]:
    """Run every stage for every model, skipping what the cache holds:
    {label: Outcome}. The caller sweeps the cache (once per run).

    Passes are planned over the whole zoo: the models are grouped by resize
    config (a data config less its normalisation, which each model applies
    to the shared decoded batch itself), and each group's models are built
    and pushed through the stages in passes as large as the pass budget
    allows (settings.models_per_pass, or _pass_limit's count and the
    weights' bytes). A group's decoded images are kept across its passes
    (_Reuse, within _DECODED_BYTES), so each image is decoded once per
    resize group and stage; beyond that budget, once per pass. A model
    whose stage fails skips the stages after it."""
    from .models import parse_models

    _steady_heap()
    outcomes: dict[str, Outcome]
    groups: dict[str, list[tuple[Outcome, list[Stage]]]]
    outcomes, groups = {}, {}
    for spec in parse_models(models):
        outcome = outcomes[spec.label] = Outcome(spec)
        try:
            outcome.identity = settings.identity(spec, cache)
        except Exception as error:
            outcome.fail(stages, error)
            continue
        outcome.data_config = remembered_config(cache, spec, outcome.identity)
        todo = _missing(outcome, stages, settings, cache)
        if todo:
            planned = outcome.data_config or _planned_config(spec)
            groups.setdefault(resize_key(planned), []).append((outcome, todo))
    while groups:  # a built model whose config moves it to another group joins (or reopens) that group
        key = next(iter(groups))
        pending = groups.pop(key)
        reuse = _Reuse(_DECODED_BYTES)
        limit = _pass_limit(key, stages, settings)
        members = []
        for position, (outcome, todo) in enumerate(pending):
            built = _build(outcome, stages, todo, settings, cache)
            if built is None:
                continue
            loaded, todo = built
            own = resize_key(outcome.data_config)
            if own != key:
                groups.setdefault(own, []).append((outcome, todo))
                continue
            members.append((outcome, loaded, todo))
            if _pass_full(members, settings, limit):
                reuse.keep = position + 1 < len(pending)  # another pass of this group may follow
                _run_group(members, stages, settings, cache, reuse)
                members = []
        if members:
            reuse.keep = False
            _run_group(members, stages, settings, cache, reuse)
        reuse.clear()
    return outcomes


def _planned_config(spec: ModelSpec) -> dict[str, Any] | None:
    from .models import planned_data_config

    try:
        return planned_data_config(spec)
    except Exception:  # reported when the model is built
        return None


def _build(outcome: Outcome, stages: Sequence[Stage], todo: list[Stage], settings: Settings,
           cache: Cache) -> tuple[LoadedModel, list[Stage]] | None:
    """(the built model, the stages it still needs), or None when it failed
    or the cache turned out to hold everything. The first build of a model
    records its data config (an entry is never rewritten); the built
    model's config decides over a remembered one."""
    start = time.perf_counter()
    try:
        loaded = settings.load(outcome.spec)
    except Exception as error:
        outcome.fail(todo, error)
        return None
    outcome.seconds["load"] = time.perf_counter() - start
    config = canonical_config(loaded.data_config)
    assert outcome.identity is not None  # run_stages builds only models whose identity it has
    if outcome.data_config is None:
        cache.put("config", data_config_key(outcome.spec, outcome.identity),
                  {"model": outcome.spec.name, "identity": outcome.identity, "data_config": config})
    if outcome.data_config != config:
        outcome.data_config = config
        todo = _missing(outcome, stages, settings, cache)
        if not todo:
            return None
    return loaded, todo


def resize_key(data_config: Mapping[str, Any] | None) -> str:
    """What decides the decoded pixels: the data config less its mean and
    std ("null" for a model whose config is not known yet: a group of its
    own)."""
    if data_config is None:
        return "null"
    return json.dumps({k: v for k, v in canonical_config(data_config).items() if k not in ("mean", "std")},
                      sort_keys=True)


# Weights one pass holds when models_per_pass is not given: on the CPU a
# fixed budget (so tiny and ImageNet-size models alike share passes); on a
# GPU a share of its memory, leaving room for the activations.
_PASS_BYTES_CPU = 1 << 30
_PASS_SHARE_GPU = 0.4
# And models one pass holds when the group's decoded images are kept across
# its passes (_pass_limit): what a pass holds beyond the weights (each
# model's activations, its sinks' buffers, its module objects) then does
# not grow with the zoo, where the weights' budget alone put a whole group
# of tiny models (67 at 200 in bench_zoo_scale.py) in one pass. A smaller
# pass costs no decoding then, only a replay of the kept batches; 16 models
# still share each replay's conversion and the per-pass set-up.
_PASS_MODELS = 16
# Decoded images one resize group keeps across its passes, all its stages
# together (uint8 where exact: 2,000 images at 224 x 224 are 300 MB).
# Beyond it each pass decodes again.
_DECODED_BYTES = 1 << 30


def _pass_limit(key: str, stages: Sequence[Stage], settings: Settings) -> int | None:
    """The most models one pass of resize group `key` holds when
    models_per_pass is not given: _PASS_MODELS when the group's decoded
    images (one uint8 per value) will fit in _DECODED_BYTES, so that a
    smaller pass decodes nothing again; None (the weights' budget alone)
    when each pass has to decode them again anyway."""
    size = json.loads(key).get("input_size") if key != "null" else None
    if not size:
        return None
    values = int(np.prod(size))
    return _PASS_MODELS if values * sum(len(stage.images) for stage in stages) <= _DECODED_BYTES else None


def _pass_full(members: Sequence[_Member], settings: Settings, limit: int | None = None) -> bool:
    """Whether a pass of `members` holds as many models as it may: the
    settings' models_per_pass, else `limit` models or the weights' budget."""
    if settings.models_per_pass is not None:
        return len(members) >= settings.models_per_pass
    if limit is not None and len(members) >= limit:
        return True
    device = settings.torch_device()
    budget = _PASS_BYTES_CPU if device.type == "cpu" else \
        _PASS_SHARE_GPU * torch.cuda.get_device_properties(device).total_memory
    held = sum(t.numel() * t.element_size() for _, loaded, _ in members
               for t in (*loaded.model.parameters(), *loaded.model.buffers()))
    return held >= budget


def _missing(outcome: Outcome, stages: Sequence[Stage], settings: Settings, cache: Cache) -> list[Stage]:
    """The stages whose result is not in the cache (all of them while the
    data config is unknown); cached results go into outcome.results."""
    if outcome.data_config is None:
        return list(stages)
    assert outcome.identity is not None  # run_stages looks only for models whose identity it has
    todo = []
    for stage in stages:
        key = stage.key(outcome.spec, outcome.identity, outcome.data_config, settings.precision)
        result = stage.cached(cache, key, outcome.spec.label)
        if result is None:
            todo.append(stage)
        else:
            outcome.results[stage] = result
    return todo


def _run_group(pending: list[_Member], stages: Sequence[Stage], settings: Settings, cache: Cache,
               reuse: _Reuse | None = None) -> None:
    device = settings.torch_device()
    members: list[_Member] = []
    for outcome, loaded, todo in pending:
        try:
            loaded.model.to(device)
        except Exception as error:
            outcome.fail(todo, error)
            continue
        members.append((outcome, loaded, todo))
    with torch_threads(settings.forward_threads(device)):
        for stage in stages:
            _run_stage(stage, members, settings, cache, device, reuse)
    # Dropping the last references frees the weights (reference counting);
    # the CUDA allocator keeps freed blocks cached unless told to return them.
    members.clear()
    pending.clear()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    _return_freed_memory()


@functools.cache
def _c_function(name: str) -> Callable[..., int] | None:
    """The C library's function `name`, or None where it has none (glibc's
    malloc_trim and mallopt: not in musl, macOS or Windows)."""
    try:
        return cast("Callable[..., int]", getattr(ctypes.CDLL(None), name))
    except (OSError, AttributeError, TypeError):
        return None


def _malloc_trim() -> Callable[..., int] | None:
    return _c_function("malloc_trim")


# mallopt's parameters (glibc's malloc.h), and the largest mmap threshold
# glibc's own dynamic rule sets (DEFAULT_MMAP_THRESHOLD_MAX: 32 MiB where a
# long is 8 bytes).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 4 * 1024 * 1024 * ctypes.sizeof(ctypes.c_long)


@functools.cache
def _steady_heap() -> None:
    """Once per process, keep the blocks of a forward pass in glibc's heap:
    set its mmap threshold to the largest its dynamic rule reaches and the
    trim threshold to twice that, where glibc itself leaves them once the
    process has freed a block that large. Until then both follow what the
    process happened to free before (128 KiB at first): an activation above
    the mmap threshold is a fresh mapping, more free memory than the trim
    threshold at the heap's top goes back to the system, and either way
    its pages are faulted in and zeroed again on every forward pass: one
    tiny ConvNeXt at 64 pixels took 40-45 ms a batch in some processes and
    30-33 ms in others, and a cold screen of 40 models at 2,000 images
    faulted 2.2 million pages (6.7 s of system time) against 51,000 (0.7
    s) in a process that had freed large blocks before. Where the user set
    these thresholds (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_,
    GLIBC_TUNABLES) or the C library is not glibc, nothing. What a pass
    frees still goes back to the system after it (_return_freed_memory)."""
    mallopt = _c_function("mallopt")
    if mallopt is None or {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"} & os.environ.keys() \
            or "threshold" in os.environ.get("GLIBC_TUNABLES", ""):
        return
    mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
    mallopt(_M_TRIM_THRESHOLD, 2 * _MMAP_THRESHOLD_MAX)


def _return_freed_memory() -> None:
    """Give the memory a pass freed back to the system. glibc keeps freed
    heap memory resident, and a pass's weights and activations, of other
    sizes each pass, leave holes the next pass cannot fill: a screen's
    resident memory crept up pass after pass (bench_zoo_scale.py, 40 models
    at 2,000 images, two per pass: peak 947 MiB without, 869 with; one
    call costs about a millisecond)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _run_stage(stage: Stage, members: Sequence[_Member], settings: Settings, cache: Cache, device: torch.device,
               reuse: _Reuse | None = None) -> None:
    due = [(outcome, loaded) for outcome, loaded, todo in members if stage in todo and not outcome.failed()]
    with contextlib.ExitStack() as held:
        mine, waiting = _claim(stage, due, settings, cache, held)
        _run_passes(stage, mine, settings, cache, device, reuse)
    for outcome, loaded in waiting:
        # Another process is computing this entry: wait for it, holding no
        # other lock (cache.lock's rule), and read it; compute it here only
        # if that process did not finish it.
        assert outcome.identity is not None and outcome.data_config is not None  # set before _build returned
        key = stage.key(outcome.spec, outcome.identity, outcome.data_config, settings.precision)
        with cache.lock(stage.name, key):
            result = stage.cached(cache, key, outcome.spec.label)
            if result is not None:
                outcome.results[stage] = result
            else:
                _run_passes(stage, [(outcome, loaded)], settings, cache, device, reuse)


def _claim(stage: Stage, due: Sequence[_Built], settings: Settings, cache: Cache,
           held: contextlib.ExitStack) -> tuple[list[_Built], list[_Built]]:
    """Split `due` into the models whose entry this process will compute
    (their entry locks taken into `held`) and those another process is
    computing now (lock held elsewhere). A model whose entry appeared since
    it was found missing takes the entry instead."""
    mine: list[_Built]
    waiting: list[_Built]
    mine, waiting = [], []
    for outcome, loaded in due:
        assert outcome.identity is not None and outcome.data_config is not None  # set before _build returned
        key = stage.key(outcome.spec, outcome.identity, outcome.data_config, settings.precision)
        if not held.enter_context(cache.lock(stage.name, key, blocking=False)):
            waiting.append((outcome, loaded))
            continue
        result = stage.cached(cache, key, outcome.spec.label)
        if result is not None:
            outcome.results[stage] = result
        else:
            mine.append((outcome, loaded))
    return mine, waiting


def _run_passes(stage: Stage, members: Sequence[_Built], settings: Settings, cache: Cache, device: torch.device,
                reuse: _Reuse | None = None) -> None:
    """One pass over the stage's images per resize config among `members`,
    replaying what `reuse` kept of them."""
    groups: dict[str, list[_Built]] = {}
    for outcome, loaded in members:
        groups.setdefault(resize_key(outcome.data_config), []).append((outcome, loaded))
    for key, group in groups.items():
        store = (reuse or _Reuse(0)).store(stage, key)
        _run_pass(stage, group, settings, cache, device, store)


class _Reuse:
    """The decoded images of one resize group, a _Store per (stage, resize
    config), kept across the group's passes within one run_stages call and
    sharing one budget of bytes. keep: whether the pass about to run records
    what it decodes (not when it is the group's last)."""
    stores: dict[tuple[Stage, str], _Store]

    def __init__(self, budget: int) -> None:
        self.budget, self.used, self.keep, self.stores = budget, 0, False, {}

    def store(self, stage: Stage, key: str) -> _Store:
        return self.stores.setdefault((stage, key), _Store(self))

    def clear(self) -> None:
        self.stores.clear()
        self.used = 0


class _Store:
    """One stage's decoded batches for one resize config, in order: those
    of the images before `next` (all of them once `complete`), each
    (index, batch or None, failed), so that a replay skips and reports the
    same undecodable images. A batch is kept as uint8 when that gives it
    back exactly (timm's eval transform ends with ToTensor, uint8 / 255: a
    quarter of the bytes), else as float32. A pass stopped early (a
    reference budget met) leaves the rest to the next pass, which decodes
    from `next` on, in the same batch windows. Once the group's stores
    outgrow their budget this one is emptied, and later passes decode
    again."""
    kept: list[_Batch]

    def __init__(self, reuse: _Reuse) -> None:
        self.reuse = reuse
        self.kept, self.next, self.bytes = [], 0, 0
        self.complete = self.dropped = False

    def batches(self, decode: Callable[[int], Iterable[_Batch]]) -> Generator[_Batch, None, None]:
        """(index, float32 batch or None, failed) of every image in order:
        the kept batches, then decode(first image) for the rest, recording
        them while the group keeps what it decodes."""
        for index, kept, failed in list(self.kept):
            yield index, kept.float().div(255) if kept is not None and kept.dtype == torch.uint8 else kept, failed
        if self.complete:
            return
        recording = self.reuse.keep and not self.dropped
        for index, batch, failed in decode(self.next):
            if recording:
                recording = self._record(index, batch, failed)
            yield index, batch, failed
        self.complete = recording

    def _record(self, index: npt.NDArray[np.int64], batch: torch.Tensor | None,
                failed: list[tuple[int, str | None]]) -> bool:
        """Keep one batch; False (and nothing kept) once over the budget."""
        kept = batch
        if batch is not None:
            exact = batch.mul(255).round_().to(torch.uint8)
            if torch.equal(exact.float().div(255), batch):
                kept = exact
        size = 0 if kept is None else kept.numel() * kept.element_size()
        if self.reuse.used + size > self.reuse.budget:
            self.reuse.used -= self.bytes
            self.kept, self.next, self.bytes, self.dropped = [], 0, 0, True
            return False
        self.kept.append((index, kept, failed))
        self.next += len(index) + len(failed)
        self.bytes += size
        self.reuse.used += size
        return True


class _Decoded(torch.utils.data.Dataset[_Item]):
    """(index, transformed image or None, error message or None) of the
    images from `start` on."""

    def __init__(self, images: ImageSet, transform: Callable[[Any], torch.Tensor], start: int = 0) -> None:
        self.images, self.transform, self.start = images, transform, start

    def __len__(self) -> int:
        return len(self.images) - self.start

    def __getitem__(self, index: int) -> _Item:
        index += self.start
        try:
            return index, self.transform(load_rgb(self.images.file(index))), None
        except Exception as error:
            # PIL reports malformed files with OSError, ValueError,
            # SyntaxError, struct.error, DecompressionBombError...: any of
            # them means "skip this image", never "stop the screen".
            return index, None, describe(error)


def _collate(items: Sequence[_Item]) -> _Batch:
    good = [(index, image) for index, image, _ in items if image is not None]
    failed = [(index, message) for index, image, message in items if image is None]
    index = np.array([i for i, _ in good], dtype=np.int64)
    batch = torch.stack([image for _, image in good]) if good else None
    return index, batch, failed


def _decoding(data_config: Mapping[str, Any]) -> Any:
    """timm's eval transform of `data_config` without its normalisation
    (mean 0, std 1: torchvision's normalize then subtracts 0 and divides by
    1, changing no value): the pixels every model of a resize group shares."""
    from timm.data.transforms_factory import create_transform

    config: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data_config.items()}
    return create_transform(**dict(config, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)))


def _normaliser(data_config: Mapping[str, Any], device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model's own normalisation of a decoded batch, as timm's transform
    computes it (torchvision's normalize: subtract the mean, then divide by
    the std, in float32): the same values as decoding with it."""
    mean = torch.as_tensor(data_config["mean"], dtype=torch.float32, device=device).view(-1, 1, 1)
    std = torch.as_tensor(data_config["std"], dtype=torch.float32, device=device).view(-1, 1, 1)
    return lambda batch: batch.sub(mean).div(std)


def _forward(model: Any, batch: torch.Tensor, precision: str,
             logits: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(pre-logit features B x D as float32 on the CPU, logits B x K float32
    on the device or None): the head's logits only when asked for and the
    model has a head."""
    dtype = PRECISIONS[precision]
    context = torch.autocast(batch.device.type, dtype=dtype) if dtype is not None else nullcontext()
    with context:
        trunk = model.forward_features(batch)
        features = model.forward_head(trunk, pre_logits=True)
        head = model.forward_head(trunk) if logits and getattr(model, "num_classes", False) else None
    if features.dim() != 2:
        raise ValueError(f"forward_head(pre_logits=True) returned shape {tuple(features.shape)}; expected "
                         f"batch x features (2-D)")
    return features.float().cpu(), (head.float() if head is not None else None)


def _run_pass(stage: Stage, group: Sequence[_Built], settings: Settings, cache: Cache, device: torch.device,
              store: _Store) -> None:
    """One pass over stage.images for a group of models sharing a resize
    config: each image decoded once (or replayed from `store`), each model
    normalising the batch its own way."""
    images = stage.images
    sinks: dict[str, Any]
    spent: dict[str, float]
    normalise: dict[str, Callable[[torch.Tensor], torch.Tensor]]
    sinks, spent, normalise = {}, {}, {}
    for outcome, loaded in group:
        assert outcome.identity is not None and outcome.data_config is not None  # set before _build returned
        label = outcome.spec.label
        key = stage.key(outcome.spec, outcome.identity, outcome.data_config, settings.precision)
        sinks[label] = stage.sink(cache, key, loaded)
        spent[label] = 0.0
        normalise[label] = _normaliser(outcome.data_config, device)
    active, satisfied = list(group), []
    assert group[0][0].data_config is not None  # as above
    transform = _decoding(group[0][0].data_config)

    def decode(start: int) -> torch.utils.data.DataLoader[_Item]:
        return torch.utils.data.DataLoader(_Decoded(images, transform, start), batch_size=settings.batch_size,
                                           shuffle=False, num_workers=settings.decoding_workers(device),
                                           collate_fn=_collate, pin_memory=device.type == "cuda")
    labels = ", ".join(outcome.spec.label for outcome, _ in group)
    failed, decoding = [], 0.0
    try:
        with torch.inference_mode(), math_context(settings.precision), \
                progress_bar(total=len(images), unit="img", enabled=settings.progress,
                             desc=f"{stage.name} of {images.root} [{labels}]") as bar, \
                contextlib.closing(store.batches(decode)) as batches:  # its loader's workers end with the pass
            while active:
                start = time.perf_counter()
                try:
                    index, batch, bad = next(batches)
                except StopIteration:
                    break
                decoding += time.perf_counter() - start
                failed += bad
                if batch is not None:
                    batch = batch.to(device, non_blocking=True)
                    for member in list(active):
                        outcome, loaded = member
                        label = outcome.spec.label
                        start = time.perf_counter()
                        try:
                            sinks[label].add(index, *_forward(loaded.model, normalise[label](batch),
                                                              settings.precision,
                                                              logits=getattr(stage, "predictions", None) is not None))
                        except Exception as error:
                            outcome.fail([stage], error)
                            sinks.pop(label).abandon()
                            active.remove(member)
                            if device.type == "cuda":
                                torch.cuda.empty_cache()
                        else:
                            if getattr(sinks[label], "done", False):  # needs no more images (a reference budget)
                                active.remove(member)
                                satisfied.append(member)
                        spent[label] += time.perf_counter() - start
                bar.update(len(index) + len(bad))
        skipped = sorted(i for i, _ in failed)
        if failed:
            shown = "; ".join(f"{images.paths[i]} ({message})" for i, message in sorted(failed)[:5])
            warnings.warn(f"{len(failed)} of {len(images)} images under {images.root} could not be decoded and were "
                          f"skipped: {shown}{'; ...' if len(failed) > 5 else ''}", RuntimeWarning, stacklevel=2)
        for outcome, loaded in active + satisfied:
            label = outcome.spec.label
            meta = {"label": label, "model": outcome.spec.name, "identity": outcome.identity,
                    "data_config": outcome.data_config,
                    "images": images.root, "fingerprint": images.fingerprint, "precision": settings.precision,
                    "math": MATH_MODES[settings.precision], "device": device_name(device),
                    "versions": library_versions(), "version": EXTRACTION_VERSION,
                    "skipped": [images.paths[i] for i in skipped], "seconds": spent[label] + decoding / len(group)}
            try:
                outcome.results[stage] = sinks.pop(label).finish(skipped, meta, label)
            except Exception as error:
                outcome.fail([stage], error)
    finally:
        for sink in sinks.values():
            sink.abandon()


class _FeatureSink:
    """Features (and, when asked for, predictions) of each image written to
    row `index` of memory-mapped temporary files, allocated at the first
    batch (when D and K are known)."""
    arrays: dict[str, np.memmap[Any, Any]]
    predictions: dict[str, np.memmap[Any, Any]]

    def __init__(self, stage: FeaturesStage, cache: Cache, key: str, loaded: LoadedModel) -> None:
        images = stage.images
        if images.labels is None:
            raise ValueError(f"features need a labelled image folder, got the unlabelled set {images.root!r}")
        self.stage, self.cache, self.key, self.images = stage, cache, key, images
        self.num_sources = int(getattr(loaded.model, "num_classes", 0) or 0)
        self.arrays, self.predictions = {}, {}

    def add(self, index: npt.NDArray[np.int64], features: torch.Tensor, logits: torch.Tensor | None) -> None:
        n = len(self.images)
        if not self.arrays:
            self.arrays["features"] = self.cache.new_array("features", self.key, "features",
                                                           (n, features.shape[1]), np.float32)
        self.arrays["features"][index] = features.numpy()
        if logits is None:
            return
        rows = compact_rows(logits) if self.stage.predictions == "compact" else {"logits": logits.cpu().numpy()}
        if not self.predictions:
            key = self.stage.predictions_key(self.key)
            self.predictions = {name: self.cache.new_array("predictions", key, name, (n, *part.shape[1:]), part.dtype)
                                for name, part in rows.items()}
        for name, part in rows.items():
            self.predictions[name][index] = part

    def finish(self, skipped: list[int], meta: Mapping[str, Any], label: str) -> FeatureSet:
        if not self.arrays:
            raise ValueError(f"no image of the data folder {self.images.root!r} could be decoded")
        assert self.images.labels is not None  # checked in __init__
        keep = np.ones(len(self.images), dtype=bool)
        if skipped:
            keep[skipped] = False
            self.arrays = {name: self._compact("features", name, array, keep) for name, array in self.arrays.items()}
            self.predictions = {name: self._compact("predictions", name, array, keep)
                                for name, array in self.predictions.items()}
        predictions = None
        if self.predictions:
            predictions = _remapped(self.cache, self.cache.put(
                "predictions", self.stage.predictions_key(self.key),
                {"form": self.stage.predictions, "num_sources": self.num_sources, "model": meta["model"],
                 "label": label}, self.predictions))
            self.predictions = {}
        entry = self.cache.get("features", self.key)
        if entry is None:  # not only the predictions were missing
            entry = self.cache.put("features", self.key, dict(meta, classes=list(self.images.classes),
                                                              num_sources=self.num_sources),
                                   dict(self.arrays, labels=self.images.labels[keep]))
        else:
            self.abandon()
        self.arrays = {}
        return self.stage.result(_remapped(self.cache, entry), label, cached=False, predictions=predictions)

    def _compact(self, kind: str, name: str, array: npt.NDArray[Any],
                 keep: npt.NDArray[np.bool_]) -> np.memmap[Any, Any]:
        rows = np.flatnonzero(keep)
        key = self.key if kind == "features" else self.stage.predictions_key(self.key)
        out = self.cache.new_array(kind, key, name, (rows.size, *array.shape[1:]), array.dtype)
        for start in range(0, rows.size, _COPY_ROWS):
            out[start:start + _COPY_ROWS] = array[rows[start:start + _COPY_ROWS]]
        Cache.discard(array)
        return out

    def abandon(self) -> None:
        for array in [*self.arrays.values(), *self.predictions.values()]:
            Cache.discard(array)
        self.arrays, self.predictions = {}, {}


def collect(outcomes: Mapping[str, Outcome], stage: Stage) -> dict[str, Any]:
    """{label: result} of one stage; raises ExtractionError when any failed."""
    results = {label: o.results[stage] for label, o in outcomes.items()}
    errors = {label: r for label, r in results.items() if isinstance(r, BaseException)}
    if errors:
        raise ExtractionError(errors, {label: r for label, r in results.items() if label not in errors})
    return results


def extract(models: Models, data: str | os.PathLike[str] | ImageSet, *,
            cache: Cache | str | os.PathLike[str] | None = None, pretrained: bool = True, seed: int = 0,
            batch_size: int = 64, device: str | torch.device | None = None, precision: str = "fp32",
            workers: int | None = None, models_per_pass: int | None = None, progress: bool = True,
            use_ema: bool = True, predictions: str | None = None,
            threads: int | None = None) -> dict[str, FeatureSet]:
    """Features of the labelled image set `data` from each model, cached:
    {label: FeatureSet}. data: an ImageFolder-layout folder, a manifest, a
    Hugging Face dataset or an ImageSet (images.image_set).

    models: model specs (a comma-separated string, a list, or a JSON file;
    see ped_fast.zoo.models). cache: a Cache, a folder, or None for the
    default. precision: "fp32", "bf16" or "fp16" (autocast; features are
    stored float32). Raises ExtractionError, after finishing the others,
    when a model fails.

    pretrained: False builds plain NAME specs with random weights seeded by
    `seed` instead of timm's pretrained weights (tests, offline trials); a
    spec with a weights PATH always loads its file. use_ema: a training
    checkpoint's EMA weights when it holds them (as timm prefers), else its
    plain ones. predictions: None, or keep the classifier head's predictions
    too, "compact" or "exact" (zoo.predictions; export_features writes the
    exact ones as LABEL.logits.npy)."""
    with checking_inputs():
        images = image_set(data, what="data")
        stage = FeaturesStage(images, predictions)
        settings = Settings.make(pretrained=pretrained, seed=seed, batch_size=batch_size, device=device,
                                 precision=precision, workers=workers, models_per_pass=models_per_pass,
                                 progress=progress, use_ema=use_ema, threads=threads)
        cache = Cache.of(cache)
        specs = check_models(models, settings, cache)
    return run_alone(specs, stage, settings, cache)


def run_alone(specs: Models, stage: Stage, settings: Settings, cache: Cache) -> dict[str, Any]:
    """One stage for every model ({label: result}; ExtractionError when any
    failed): extract() and refstats.reference_stats()."""
    cache.sweep()
    return collect(run_stages(specs, [stage], settings, cache), stage)


def export_features(feature_sets: Mapping[str, FeatureSet], out: str | os.PathLike[str]) -> list[Path]:
    """Write feature sets of one image folder in the layout `screen
    --features` reads: OUT/labels.npy, OUT/LABEL.npy (N x D) and, for models
    whose exact predictions were kept, OUT/LABEL.logits.npy. Returns the
    paths written."""
    from pathlib import Path

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    labels = None
    for label, fs in feature_sets.items():
        if labels is not None and not np.array_equal(labels, fs.labels):
            raise ValueError(f"feature sets to export must share their images, but {label!r} has other labels")
        labels = fs.labels
        logits = fs.predictions.arrays["logits"] if fs.predictions and fs.predictions.form == "exact" else None
        for suffix, array in ((".npy", fs.features), (".logits.npy", logits)):
            if array is not None:
                np.save(out / f"{label}{suffix}", np.asarray(array))
                written.append(out / f"{label}{suffix}")
    np.save(out / "labels.npy", labels)  # type: ignore[arg-type]  # None (saved as is) when there is no set
    return [out / "labels.npy"] + written
