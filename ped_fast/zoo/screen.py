"""screen(): extract (or reuse) every model's features, score each model
with each scorer, plain and with PED, and write the report.

The screen is two phases over the cache. First, models whose scores are not
all cached are pushed through the image folders together (shared decoding,
extract.run_stages), which fills the cache with features and reference
statistics. Then one work unit per model (:func:`screen_model`, a function of
one picklable :class:`ModelTask` returning a result row) reads its cached
inputs, scores them and caches the scores. An executor runs the units: here
:class:`LocalExecutor`, one after another; a distributed executor only has
to provide ``map`` (the core knows nothing of it; ``ray_executor`` is the
one module that imports Ray). An executor whose ``extracts_per_unit`` is
true skips the shared phase: each unit extracts its own model where it runs
(a cluster's workers, not the driver, hold the GPUs). A unit never raises: a
model that fails becomes a row with its error, and the screen goes on.
Because units run one at a time and features stay in cache files until a
unit reads them, at most one model's features are in memory at once.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import torch

from .. import __version__, _backends
from ..evaluate import BOOTSTRAP, CONFIDENCE, check_bootstrap
from ..ped import check_parameters
from ..score import grid_points, parse_ped_grid, parse_reduce
from ..scorers import get as get_scorer
from .cache import Cache, content_key
from .device import device_name
from .digest import file_sha256
from .errors import checking_inputs, describe, is_transient
from .extract import FeaturesStage, Outcome, Settings, Stage, check_models, remembered_config, run_stages
from .images import ImageSet, image_set
from .predictions import COMPACT_SCORERS, Predictions, check_form
from .models import ModelSpec
from .refstats import Budget, ReferenceStage, ReferenceStats, check_budget, load_stats_file, stats_of
from .report import (TruthTable, check_ground_truth, check_output_folder, evaluation, grid_evaluation, json_safe,
                     load_ground_truth, recorded_ground_truth, write_report)
from .scoring import (cached_row, check_combine, check_scorers, combine_scores, empty_row, grid_scores, score_key,
                      score_row, zoo_warnings)

# The row's "seconds" entry of each extraction stage.
_TIMINGS = {"features": "extract", "reference": "reference"}
# A unit's scoring inputs (_score): features, labels, predictions or None,
# the reference (statistics, features, or "self"), the cache keys of the
# stages (_stage_keys) and the skipped images of each set.
_Keys = tuple[str, str, "str | None"]
_Inputs = tuple[npt.NDArray[Any], npt.NDArray[Any], "Predictions | None", "ReferenceStats | npt.NDArray[Any] | str",
                _Keys, dict[str, list[str]]]
_T = TypeVar("_T")
_R = TypeVar("_R")


@dataclass(frozen=True)
class FeatureFiles:
    """One model of a --features folder: its N x D features file,
    optionally its reference (an M x D .reference.npy or a
    .reference_stats.npz with mean and std) and its N x K logits
    (.logits.npy, for the scorers that read predictions)."""
    features: str
    labels: str
    reference: str | None = None
    logits: str | None = None


@dataclass(frozen=True)
class ModelTask:
    """Everything a work unit needs (picklable). Exactly one of `spec`
    (a model to build) and `files` (features given as files) is set.
    reference: an ImageSet, "self", or None (files mode: the model's own
    reference file). prior_seconds: time already spent on this model by the
    shared extraction phase; prior_error: how that phase failed for it."""
    name: str
    scorers: tuple[str, ...]
    backend: str
    settings: Settings
    cache_root: str
    spec: ModelSpec | None = None
    data: ImageSet | None = None
    reference: ImageSet | str | None = None
    files: FeatureFiles | None = None
    prior_seconds: dict[str, float] = field(default_factory=dict)
    prior_error: str | None = None
    reduce: str | None = None
    predictions: str | None = None
    reference_budget: tuple[Budget, float] = (None, 0.01)
    ped_grid: tuple[dict[str, float], ...] = ()


class LocalExecutor:
    """Runs work units one after another in this process."""

    extracts_per_unit = False

    def map(self, function: Callable[[_T], _R], tasks: Iterable[_T]) -> Iterator[_R]:
        for task in tasks:
            yield function(task)


def screen(models: Any = None, data: str | os.PathLike[str] | ImageSet | None = None,
           reference: str | os.PathLike[str] | ImageSet | None = None, scorers: str | Sequence[str] = ("sfda",),
           ground_truth: str | os.PathLike[str] | TruthTable | None = None, out: str | os.PathLike[str] | None = None,
           cache: Cache | str | os.PathLike[str] | None = None, features: str | os.PathLike[str] | None = None,
           pretrained: bool = True, seed: int = 0, batch_size: int = 64, device: str | torch.device | None = None,
           precision: str = "fp32", backend: str = "auto", workers: int | None = None,
           models_per_pass: int | None = None, progress: bool = True, executor: Any = None,
           log: Callable[[str], object] | None = None, reduce: str | None = None,
           combine: str | Sequence[str] | None = None, use_ema: bool = True, predictions: str = "compact",
           reference_images: Budget = None, reference_tolerance: float = 0.01, threads: int | None = None,
           bootstrap: int = BOOTSTRAP, confidence: float = CONFIDENCE, bootstrap_seed: int = 0,
           ped_grid: str | Mapping[str, Sequence[float]] | Sequence[Mapping[str, float]] | None = None
           ) -> dict[str, Any]:
    """Rank a model zoo: the content of results.json (also written to `out`
    with results.csv and ranking.png when `out` is given).

    models + data: model specs (see ped_fast.zoo.models) and a labelled
        image set: an ImageFolder-layout folder, a manifest, a Hugging Face
        dataset or an ImageSet (images.image_set).
    features: instead of models + data, a folder with labels.npy and one
        NAME.npy (N x D) per model, optionally NAME.reference.npy (M x D) or
        NAME.reference_stats.npz (mean, std), and NAME.logits.npy (N x K,
        for leep and nce).
    reference: an image folder, manifest, dataset or ImageSet (the
        reference set, labels ignored; images.image_set) whose
        feature statistics rescale PED; "self" to rescale each model by its
        own target features; None only with `features` (each model's
        reference file).
    scorers: registered scorer names (ped_fast.scorers.available(); a
        sequence or a comma-separated string), or "all". Scorers that read
        the source model's predictions (leep, nce) score its cached logits
        and have no PED score. ground_truth: {model: accuracy} or a JSON
        file of it; adds the ranking measures ("evaluation").
    reduce: None or "pca:K", ped_score's: project each model's features on
        their K principal axes before PED and scoring. It needs reference
        features, so reference "self" or (with `features`) NAME.reference.npy
        matrices; streamed (mean, std) statistics are refused.
    combine: None, or one or more "minmax:TERM+TERM..." specs, zoo-level
        combinations of the scores ("combined"; docs/screening.md §5).
    cache: a Cache, a folder, or None (PED_FAST_CACHE or ~/.cache/ped_fast).
    pretrained, seed: False builds plain NAME specs with random weights
        seeded by `seed` instead of timm's pretrained weights (tests,
        offline trials); a spec with a weights PATH always loads its file.
    use_ema: a training checkpoint's EMA weights when it holds them (as
        timm prefers), else its plain ones.
    batch_size, device, precision, workers, models_per_pass, threads: extraction's
        (see extract()); device None is cuda where the work runs, when
        there is one.
    predictions: how the source model's predictions are kept when a scorer
        reads them: "compact" (at most 1 KiB per image; serves leep and
        nce) or "exact" (the N x K logits; any scorer). docs/spec.md §2.6.
    reference_images, reference_tolerance: the reference budget of each
        model's statistics: None (every image, the paper's setting), N (a
        seeded random subset, the same for every model) or "auto" (stop
        once every dimension's mean and std are known to
        reference_tolerance; see refstats.ReferenceStage). Each row's
        "reference_images" says how many it used.
    bootstrap, confidence, bootstrap_seed: the bootstrap intervals of the
        ranking measures (with ground truth; ped_fast.evaluate.evaluate).
    ped_grid: None, or a grid of PED's settings ("nsigma=0.4,0.6;time_step=0.05,0.1",
        {parameter: [values]} or [{parameter: value}]): each model's PED
        score of each scorer that reads features at every point
        (ped_fast.score.ped_sweep, its row's "ped_grid"), and with ground
        truth each scorer's weighted tau across the grid with intervals
        (results["ped_grid"]).
    executor: runs the per-model work units: "local" (default, one after
        another in this process), "ray" (ped_fast.zoo.ray_executor, Ray's
        defaults) or an object with map(function, tasks) yielding the rows
        in task order (e.g. a configured RayExecutor). An executor with a
        summary() adds it to the results as "executor".
    log: a callable receiving progress lines (default: stderr when
        `progress`).
    Models that fail get their error in their row ("error"); check
    `failed(results)`.
    """
    # locals() holds exactly the arguments here, its first statement.
    return _run(_plan(**locals()))


@dataclass
class _Plan:
    """A screen whose arguments are all checked, before any work: screen()
    plans one; screen_tasks plans every task before extracting for all of
    them. Model screens have `specs`, `images`, `reference` (an ImageSet
    or "self") and their extraction `stages`; --features screens their
    `file_tasks`."""
    started: float
    scorers: tuple[str, ...]
    settings: Settings
    cache: Cache
    executor: Any
    here: bool
    backend: str
    reduce: str | None
    predictions: str
    budget: tuple[Budget, float]
    combine: tuple[str, ...]
    points: tuple[dict[str, float], ...]
    intervals: dict[str, Any]
    truth: TruthTable | None
    header: dict[str, Any]
    out: str | os.PathLike[str] | None
    log: Callable[[str], object]
    specs: list[ModelSpec] | None = None
    images: ImageSet | None = None
    reference: ImageSet | str | None = None
    stages: list[Stage] = field(default_factory=list)
    file_tasks: list[ModelTask] | None = None


def _plan(models: Any = None, data: str | os.PathLike[str] | ImageSet | None = None,
          reference: str | os.PathLike[str] | ImageSet | None = None, scorers: str | Sequence[str] = ("sfda",),
          ground_truth: str | os.PathLike[str] | TruthTable | None = None, out: str | os.PathLike[str] | None = None,
          cache: Cache | str | os.PathLike[str] | None = None, features: str | os.PathLike[str] | None = None,
          pretrained: bool = True, seed: int = 0, batch_size: int = 64, device: str | torch.device | None = None,
          precision: str = "fp32", backend: str = "auto", workers: int | None = None,
          models_per_pass: int | None = None, progress: bool = True, executor: Any = None,
          log: Callable[[str], object] | None = None, reduce: str | None = None,
          combine: str | Sequence[str] | None = None, use_ema: bool = True, predictions: str = "compact",
          reference_images: Budget = None, reference_tolerance: float = 0.01, threads: int | None = None,
          bootstrap: int = BOOTSTRAP, confidence: float = CONFIDENCE, bootstrap_seed: int = 0,
          ped_grid: str | Mapping[str, Sequence[float]] | Sequence[Mapping[str, float]] | None = None,
          task: str | None = None) -> _Plan:
    """screen()'s arguments checked (every mistake is found here, before
    any work). task: the name of screen_tasks' target set, which the
    errors about its own data, features and ground truth then name."""
    started = time.perf_counter()
    with checking_inputs():
        scorers = check_scorers(scorers)
        check_form(predictions)
        check_bootstrap(bootstrap, confidence, bootstrap_seed)
        budget = check_budget(reference_images, reference_tolerance)
        combine = check_combine(combine, scorers)
        points = _check_grid(ped_grid, scorers)
        _check_reduce(reduce, reference, features)
        executor = _executor(executor)
        # An executor that extracts in its work units resolves the device
        # where each unit runs (a GPU worker under a CPU-only driver).
        here = not getattr(executor, "extracts_per_unit", False)
        settings = Settings.make(pretrained=pretrained, seed=seed, batch_size=batch_size, device=device,
                                 precision=precision, workers=workers, models_per_pass=models_per_pass,
                                 progress=progress, use_ema=use_ema, threads=threads,
                                 check_device=here)
        if here:
            _check_backend(backend, settings.torch_device())
        cache = Cache.of(cache)
        if out is not None:
            check_output_folder(out)
        if log is None:
            log = (lambda line: print(line, file=sys.stderr, flush=True)) if progress else (lambda line: None)
        plan = _Plan(started=started, scorers=scorers, settings=settings, cache=cache, executor=executor, here=here,
                     backend=backend, reduce=reduce, predictions=predictions, budget=budget, combine=combine,
                     points=points, truth=None, header={}, out=out, log=log,
                     intervals=dict(bootstrap=bootstrap, confidence=confidence, seed=bootstrap_seed))
        if features is not None:
            if models is not None or data is not None:
                raise ValueError("give either features (a folder of .npy files) or models and data, not both")
        else:
            if models is None or data is None:
                raise ValueError("screen needs models and data (an image folder), or features (a folder of .npy "
                                 "files)")
            plan.specs = check_models(models, settings, cache)
            if reference is None:
                raise ValueError("reference is required: an image folder (e.g. ImageNet-val), or 'self' to rescale "
                                 "each model by its own features")
            plan.reference = "self" if reference == "self" else image_set(reference, what="reference", labelled=False)
        with _naming_task(task):
            truth = load_ground_truth(ground_truth) if isinstance(ground_truth, (str, os.PathLike)) else ground_truth
            if features is not None:
                plan.file_tasks = _file_tasks(features, reference, scorers, backend, settings, cache, reduce, points)
                names = [unit.name for unit in plan.file_tasks]
                plan.header = {"data": {"features": str(features)},
                               "reference": _describe_reference(reference, files=True)}
            else:
                assert data is not None and plan.specs is not None  # checked above, for a screen without features
                images = plan.images = image_set(data, what="data")
                if len(images.classes) < 2:
                    raise ValueError(f"data {images.root!r} has {len(images.classes)} class; scoring "
                                     f"needs at least 2")
                plan.stages = stages_of(images, plan.reference, predictions_form(scorers, predictions), budget)
                names = [spec.label for spec in plan.specs]
                plan.header = {"data": {"path": images.root, "images": len(images), "classes": list(images.classes)},
                               "reference": _describe_reference(plan.reference)}
            if truth is not None:
                check_ground_truth(truth, names, _truth_source(ground_truth))
            plan.truth = truth
    return plan


def _run(plan: _Plan, extracted: Mapping[str, Outcome] | None = None) -> dict[str, Any]:
    """Run a planned screen: its results. extracted: {label: Outcome} of a
    shared extraction phase already run for this screen (screen_tasks');
    None runs this screen's own."""
    cache, log = plan.cache, plan.log
    cache.sweep()
    tasks = plan.file_tasks
    if tasks is None:
        if extracted is None:
            extracted = extract_shared([plan])[0]
        tasks = _model_tasks(plan, extracted)
    # What the driver's view of the cache holds for each unit: a unit run
    # elsewhere that reports fewer cache hits recomputed what its machine
    # could not see.
    expected = [cached_stages(task) for task in tasks] if not plan.here else None
    rows: list[dict[str, Any]] = []
    # strict: an executor must yield one item per task (and zip then runs
    # its generator to the end, where it finishes its summary).
    for index, (task, outcome) in enumerate(zip(tasks, plan.executor.map(screen_model, tasks), strict=True)):
        row = outcome if isinstance(outcome, dict) else _failed_unit(task, outcome)
        rows.append(row)
        status = f"failed: {row['error']}" if row["error"] else (
            f"{row['seconds'].get('total', 0.0):.2f} s" + (f", cached: {', '.join(row['cached'])}"
                                                            if row["cached"] else ""))
        log(f"[{index + 1}/{len(tasks)}] {row['name']}: {status}")

    results: dict[str, Any] = _assemble(rows, plan.scorers, plan.header, plan.settings, plan.truth, plan.combine,
                                        plan.intervals, plan.points)
    summary = plan.executor.summary() if callable(getattr(plan.executor, "summary", None)) else None
    if expected is not None:
        summary = dict(summary or {}, **_cache_misses(tasks, rows, expected))
    if summary is not None:
        results["executor"] = summary
    results["seconds"] = time.perf_counter() - plan.started
    results = json_safe(results)  # what results.json holds: NaN (an undefined tau) as None
    if plan.out is not None:
        write_report(results, plan.out)
    return results


@contextlib.contextmanager
def _naming_task(task: str | None) -> Iterator[None]:
    """Put `task` (a target set of screen_tasks) at the front of the
    message of every input error raised in the block; nothing without one."""
    try:
        yield
    except (ValueError, TypeError, OSError, LookupError) as error:
        if task is None:
            raise
        raise _prefixed(error, f"task {task!r}: ") from None


def _prefixed(error: Exception, prefix: str) -> Exception:
    """`error` again, of its type (and errno: a refused folder stays a
    failure of the machine), with `prefix` before its message."""
    try:
        if isinstance(error, OSError) and error.errno is not None:
            return type(error)(error.errno, prefix + (error.strerror or ""),
                               *([error.filename] if error.filename is not None else []))
        message = error.args[0] if isinstance(error, KeyError) and len(error.args) == 1 else str(error)
        return type(error)(prefix + str(message))
    except TypeError:  # an exception type with a constructor of its own
        return error


def _failed_unit(task: ModelTask, error: BaseException) -> dict[str, Any]:
    """The error row of a unit the executor could not run (what it yields
    in place of a row)."""
    row = empty_row(task.name)
    row["error"] = describe(error)
    return row


def _cache_misses(tasks: Sequence[ModelTask], rows: Sequence[Mapping[str, Any]],
                  expected: Sequence[list[str]]) -> dict[str, Any]:
    """{"cache_misses": count, "cache_misses_by_model": {model: [stage]}}:
    the stages the driver's cache held that a unit recomputed."""
    misses: dict[str, list[str]] = {}
    for task, row, had in zip(tasks, rows, expected):
        missed = [stage for stage in had if stage not in row["cached"]] if not row["error"] else []
        if missed:
            misses[task.name] = missed
    return {"cache_misses": sum(len(stages) for stages in misses.values()), "cache_misses_by_model": misses}


def failed(results: Mapping[str, Any]) -> list[str]:
    """Names of the models whose row has an error."""
    return [row["name"] for row in results["models"] if row["error"]]


def _check_reduce(reduce: str | None, reference: object, features: object) -> None:
    """reduce: None or "pca:K" (checked before any work, not per model),
    and it needs reference features (or "self"): ped_score cannot project
    (mean, std) statistics on principal axes."""
    if reduce is None:
        return
    if parse_reduce(reduce) < 1:
        raise ValueError(f"reduce must be None or 'pca:K' with K a positive integer, got {reduce!r}")
    if isinstance(reference, str) and reference == "self":
        return
    if features is None:
        raise ValueError(f"reduce {reduce!r} needs reference 'self' or, with features, NAME.reference.npy "
                         f"matrices: a reference image folder gives streamed (mean, std) statistics, which cannot be "
                         f"projected on principal axes")


def _check_grid(ped_grid: str | Mapping[str, Sequence[float]] | Sequence[Mapping[str, float]] | None,
                scorers: Sequence[str]) -> tuple[dict[str, float], ...]:
    """The points of --ped-grid (() without one), checked before any work:
    it needs a scorer that PED applies to."""
    if ped_grid is None:
        return ()
    points = grid_points(parse_ped_grid(ped_grid) if isinstance(ped_grid, str) else ped_grid)
    for point in points:
        check_parameters(**point)
    if not any(get_scorer(scorer).ped_applies for scorer in scorers):
        raise ValueError(f"ped_grid needs a scorer that reads features (PED moves features), got scorers "
                         f"{', '.join(scorers)}")
    return tuple(points)


def _executor(executor: Any) -> Any:
    if executor is None or (isinstance(executor, str) and executor == "local"):
        return LocalExecutor()
    if isinstance(executor, str) and executor == "ray":
        from .ray_executor import RayExecutor  # Ray is optional: imported only when asked for

        return RayExecutor()
    if isinstance(executor, str) or not callable(getattr(executor, "map", None)):
        raise ValueError(f"executor must be 'local', 'ray' or an object with map(function, tasks), got {executor!r}")
    return executor


def _truth_source(ground_truth: object) -> str:
    return f"ground-truth file {str(ground_truth)!r}" if isinstance(ground_truth, (str, os.PathLike)) else \
        "the ground truth"


def _check_backend(backend: str, device: str | torch.device) -> None:
    try:
        _backends.resolve(backend, torch.device(device))
    except (ValueError, RuntimeError) as error:
        raise ValueError(f"backend {backend!r}: {error}") from None


def _describe_reference(reference: object, files: bool = False) -> dict[str, Any] | str | None:
    if isinstance(reference, ImageSet):
        return {"path": reference.root, "images": len(reference)}
    if reference == "self":
        return "self"
    return "per-model files" if files else None


def stages_of(images: ImageSet, reference: ImageSet | str | None, predictions: str | None = None,
              budget: tuple[Budget, float] = (None, 0.01)) -> list[Stage]:
    """The extraction stages of a screen: the features of `images` (with
    the source model's predictions in form `predictions`, when a scorer
    reads them), then the reference statistics when `reference` is an image
    set (not "self"), within `budget` (reference images, tolerance)."""
    return [FeaturesStage(images, predictions)] + ([ReferenceStage(reference, *budget)]
                                                   if isinstance(reference, ImageSet) else [])


def predictions_form(scorers: Sequence[str], predictions: str) -> str | None:
    """The form of predictions a screen keeps: None when no scorer reads
    them; `predictions` ("compact" by default) when every such scorer is
    one the compact form serves, else "exact"."""
    readers = [scorer for scorer in scorers if not get_scorer(scorer).ped_applies]
    if not readers:
        return None
    return predictions if all(scorer in COMPACT_SCORERS for scorer in readers) else "exact"


def extract_shared(plans: Sequence[_Plan]) -> list[dict[str, Outcome]]:
    """The shared extraction phase of one or more planned model screens of
    the same models: [{label: Outcome}] per plan, for its models whose
    scores are not all cached. The models any plan needs are pushed
    through the stages of every plan that needs them in one run_stages, so
    each model is built once per pass; a stage two plans have in common
    (the reference statistics, a target set given twice) is computed for
    the first and read from the cache for the others (run_stages looks
    again before it computes). Nothing for a plan whose executor extracts
    in its units."""
    needed: list[set[str]] = []
    stages: list[Stage] = []
    todo: dict[str, ModelSpec] = {}
    for plan in plans:
        assert plan.specs is not None  # a model screen's plan (not --features)
        specs = [spec for spec in plan.specs if not _scores_cached(spec, plan.stages, plan.scorers, plan.settings,
                                                                   plan.cache, plan.reduce)] if plan.here else []
        needed.append({spec.label for spec in specs})
        if specs:
            stages += plan.stages
            todo.update((spec.label, spec) for spec in specs)
    if not todo:
        return [{} for _ in plans]
    first = plans[0]
    sets = sum(isinstance(stage, FeaturesStage) for stage in stages)
    first.log(f"extracting for {len(todo)} model(s) whose scores are not all in the cache {first.cache.root}"
              + (f", on {sets} target sets" if sets > 1 else ""))
    outcomes = run_stages(list(todo.values()), stages, first.settings, first.cache)
    return [{label: outcomes[label] for label in labels} for labels in needed]


def _model_tasks(plan: _Plan, extracted: Mapping[str, Outcome]) -> list[ModelTask]:
    """One task per model of `plan`, after the shared extraction phase
    (`extracted`: {label: Outcome} of the models it ran for), whose times
    and errors the units take over."""
    prior: dict[str, dict[str, float]] = {}
    errors: dict[str, str] = {}
    for label, outcome in extracted.items():
        prior[label] = dict(outcome.seconds)
        for stage in plan.stages:
            result = outcome.results.get(stage)
            if isinstance(result, BaseException):
                errors.setdefault(label, describe(result))
            elif result is not None and not result.cached:
                prior[label][_TIMINGS[stage.name]] = result.seconds
    form = predictions_form(plan.scorers, plan.predictions)
    assert plan.specs is not None  # a model screen's plan (not --features)
    return [ModelTask(name=spec.label, scorers=plan.scorers, backend=plan.backend, settings=plan.settings,
                      cache_root=str(plan.cache.root), spec=spec, data=plan.images, reference=plan.reference,
                      prior_seconds=prior.get(spec.label, {}), prior_error=errors.get(spec.label), reduce=plan.reduce,
                      predictions=form, reference_budget=plan.budget, ped_grid=plan.points)
            for spec in plan.specs]


def _scores_cached(spec: ModelSpec, stages: Sequence[Stage], scorers: Sequence[str], settings: Settings, cache: Cache,
                   reduce: str | None) -> bool:
    identity = settings.identity(spec, cache)  # checked by check_models
    keys = _stage_keys(spec, identity, stages, settings, cache)
    return keys is not None and all(cache.has("score", score_key(*keys, s, reduce)) for s in scorers)


def _stage_keys(spec: ModelSpec, identity: str, stages: Sequence[Stage], settings: Settings,
                cache: Cache) -> _Keys | None:
    """(features key, reference key or "self", predictions form), or None
    while the model's data config is unknown (never built with this
    cache)."""
    config = remembered_config(cache, spec, identity)
    if config is None:
        return None
    keys = [stage.key(spec, identity, config, settings.precision) for stage in stages]
    features = stages[0]
    assert isinstance(features, FeaturesStage)  # stages_of's first stage
    return keys[0], keys[1] if len(keys) > 1 else "self", features.predictions


def cached_stages(task: ModelTask) -> list[str]:
    """What this process's view of the cache holds for `task`, in the terms
    of its row's "cached" list: with every score cached, each stage and
    "scores" (the unit reads nothing else); otherwise the stages whose
    entries exist. A unit that ran elsewhere and reports fewer recomputed
    what its machine could not see."""
    cache = Cache(task.cache_root)
    stages: list[Stage]
    keys: _Keys | None
    if task.files is not None:
        stages, keys = [], _files_keys(task.files, cache)
    else:
        assert task.spec is not None and task.data is not None  # a model's task (not --features)
        stages = stages_of(task.data, task.reference, task.predictions, task.reference_budget)
        identity = task.settings.identity(task.spec, cache)
        keys = _stage_keys(task.spec, identity, stages, task.settings, cache)
        if keys is None:
            return []
    if all(cache.has("score", score_key(*keys, scorer, task.reduce)) for scorer in task.scorers):
        return [stage.name for stage in stages] + ["scores"]
    return [stage.name for stage, key in zip(stages, keys[:2]) if cache.has(stage.name, key)]  # keys[2]: a form


def screen_model(task: ModelTask, *, raise_transient: bool = False) -> dict[str, Any]:
    """The work unit: one model's result row (its error in the row when it
    fails). raise_transient: raise the failures a retry may cure
    (errors.is_transient: an I/O hiccup, memory taken by another process)
    instead of making them the row, for an executor that retries; else it
    never raises an Exception."""
    start = time.perf_counter()
    row = empty_row(task.name)
    row["seconds"].update(task.prior_seconds)
    try:
        if task.files is not None:
            _score_files(task, row)
        else:
            _score_model(task, row)
    except Exception as error:
        if raise_transient and is_transient(error):
            raise
        row["error"] = describe(error)
        row["scores"] = {}  # an error row scores nothing, whichever scorer failed
        row.pop("ped_grid", None)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    row["seconds"]["total"] = sum(task.prior_seconds.values()) + time.perf_counter() - start
    return row


def _score_model(task: ModelTask, row: dict[str, Any]) -> None:
    cache = Cache(task.cache_root)
    settings = task.settings
    assert task.spec is not None  # a model's task (not --features)
    row["identity"] = settings.identity(task.spec, cache)
    if task.prior_error is not None:
        # After the identity, so that the row is the same whichever phase
        # (the shared one, or the unit itself) met the error.
        row["error"] = task.prior_error
        return
    assert task.spec is not None and task.data is not None  # a model's task (not --features)
    stages = stages_of(task.data, task.reference, task.predictions, task.reference_budget)
    keys = _stage_keys(task.spec, row["identity"], stages, settings, cache)
    # The grid's scores are not cached: with a grid the unit reads the features.
    if keys is not None and not task.ped_grid and cached_row(row, cache, keys, task.scorers,
                                                             [s.name for s in stages], task.reduce):
        return

    def inputs() -> _Inputs:
        outcome = run_stages([task.spec], stages, settings, cache)[task.name]
        # A failed stage skips the ones after it: its exception is the row's.
        for stage in stages:
            if isinstance(outcome.results.get(stage), BaseException):
                raise outcome.results[stage]
        results = [outcome.results[stage] for stage in stages]
        row["seconds"].update(outcome.seconds)
        for stage, result in zip(stages, results):
            timing = _TIMINGS[stage.name]
            if not result.cached:
                row["seconds"][timing] = result.seconds
            elif timing not in task.prior_seconds:
                row["cached"].append(stage.name)
        features = results[0]
        row["device"], row["math"] = features.device, features.math
        reference = results[1] if len(results) > 1 else "self"
        if isinstance(reference, ReferenceStats):
            reference.check_dim(features.dim, task.name)
            row["reference_images"] = reference.count
        skipped = {"data": features.skipped, "reference": [] if isinstance(reference, str) else reference.skipped}
        return features.features, features.labels, features.predictions, reference, \
            (features.key, getattr(reference, "key", "self"), task.predictions), skipped

    _score(task, row, cache, inputs)


def _score(task: ModelTask, row: dict[str, Any], cache: Cache, inputs: Callable[[], _Inputs]) -> None:
    """Score every scorer whose score is not cached; `inputs()` gives
    (features, labels, predictions or None, reference stats, reference
    features or "self", keys, skipped images)."""
    features, labels, predictions, reference, keys, skipped = inputs()
    score_row(row, cache, keys, features, labels, reference, task.scorers, skipped, predictions=predictions,
              backend=task.backend, device=task.settings.torch_device(), reduce=task.reduce)
    if task.ped_grid:
        readers = [scorer for scorer in task.scorers if get_scorer(scorer).ped_applies]
        stats = (reference.mean, reference.std) if isinstance(reference, ReferenceStats) else reference
        row["ped_grid"] = grid_scores(features, labels, readers, task.ped_grid, reference=stats,
                                      backend=task.backend, device=task.settings.torch_device(), reduce=task.reduce)


def _file_tasks(folder: str | os.PathLike[str], reference: object, scorers: tuple[str, ...], backend: str,
                settings: Settings, cache: Cache, reduce: str | None = None,
                ped_grid: tuple[dict[str, float], ...] = ()) -> list[ModelTask]:
    """One task per NAME.npy of a --features folder, every file checked
    (shapes only: headers are read, not data) before any scoring."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"features folder {str(folder)!r} does not exist or is not a folder")
    labels_path = folder / "labels.npy"
    if not labels_path.is_file():
        raise FileNotFoundError(f"features folder {str(folder)!r} has no labels.npy (N class labels)")
    labels = np.load(labels_path, mmap_mode="r", allow_pickle=False)
    if labels.ndim != 1:
        raise ValueError(f"{str(labels_path)!r} must hold N labels (1-D), got shape {labels.shape}")
    names = sorted(p.name[:-4] for p in folder.glob("*.npy") if p.name != "labels.npy" and not p.name.startswith(".")
                   and not p.name.endswith((".reference.npy", ".logits.npy")))
    if not names:
        raise ValueError(f"features folder {str(folder)!r} has no NAME.npy feature files besides labels.npy")
    if reference not in (None, "self"):
        raise ValueError(f"with features, reference must be 'self' or None (each model's NAME.reference.npy or "
                         f"NAME.reference_stats.npz), got {reference!r}")
    tasks: list[ModelTask] = []
    for name in names:
        path = folder / f"{name}.npy"
        matrix = np.load(path, mmap_mode="r", allow_pickle=False)
        if matrix.ndim != 2:
            raise ValueError(f"{str(path)!r} must hold an N x D feature matrix, got shape {matrix.shape}")
        if matrix.shape[0] != labels.shape[0]:
            raise ValueError(f"{str(path)!r} has {matrix.shape[0]} rows but {str(labels_path)!r} has "
                             f"{labels.shape[0]} labels")
        reference_file: Path | None = None
        if reference is None:
            reference_file = _reference_file(folder, name, matrix.shape[1])
            if reduce is not None and reference_file.suffix == ".npz":
                raise ValueError(f"reduce {reduce!r} needs reference features, but model {name!r} has only "
                                 f"(mean, std) statistics {str(reference_file)!r}: give {name}.reference.npy "
                                 f"(M x D) or reference 'self'")
        logits_path = folder / f"{name}.logits.npy"
        if logits_path.is_file():
            logits = np.load(logits_path, mmap_mode="r", allow_pickle=False)
            if logits.ndim != 2 or logits.shape[0] != labels.shape[0]:
                raise ValueError(f"{str(logits_path)!r} has shape {logits.shape}, but the logits of {name!r} must be "
                                 f"{labels.shape[0]} x K (one row per label)")
        tasks.append(ModelTask(name=name, scorers=scorers, backend=backend, settings=settings,
                               cache_root=str(cache.root), reference=reference, reduce=reduce, ped_grid=ped_grid,
                               files=FeatureFiles(str(path), str(labels_path),
                                                  str(reference_file) if reference_file else None,
                                                  str(logits_path) if logits_path.is_file() else None)))
    return tasks


def _reference_file(folder: Path, name: str, dim: int) -> Path:
    matrix_path, stats_path = folder / f"{name}.reference.npy", folder / f"{name}.reference_stats.npz"
    if matrix_path.is_file():
        matrix = np.load(matrix_path, mmap_mode="r", allow_pickle=False)
        if matrix.ndim != 2 or matrix.shape[1] != dim:
            raise ValueError(f"{str(matrix_path)!r} has shape {matrix.shape}, but the reference of {name!r} must be "
                             f"M x {dim} (its features have {dim} dimensions)")
        return matrix_path
    if stats_path.is_file():
        load_stats_file(stats_path).check_dim(dim, name)
        return stats_path
    raise FileNotFoundError(f"model {name!r} has no reference: expected {str(matrix_path)!r} or "
                            f"{str(stats_path)!r}, or use reference 'self'")


def _file_key(path: str, cache: Cache) -> str:
    """A --features file by its content (a moved or copied folder finds its
    entries again); the digest is remembered, so a re-run reads no bytes."""
    return content_key("file", file_sha256(path, cache))


def _files_keys(files: FeatureFiles, cache: Cache) -> _Keys:
    """(features key, reference key or "self") of a --features model; the
    features key covers the logits file when there is one."""
    features_key = content_key("features-file", _file_key(files.features, cache), _file_key(files.labels, cache),
                               *([_file_key(files.logits, cache)] if files.logits else []))
    return features_key, _file_key(files.reference, cache) if files.reference else "self", "exact"


def _score_files(task: ModelTask, row: dict[str, Any]) -> None:
    cache = Cache(task.cache_root)
    files = task.files
    assert files is not None  # screen_model calls this for a --features task
    keys = _files_keys(files, cache)
    if not task.ped_grid and cached_row(row, cache, keys, task.scorers, [], task.reduce):
        return

    def inputs() -> _Inputs:
        features = np.load(files.features, mmap_mode="r", allow_pickle=False)
        labels = np.load(files.labels, allow_pickle=False)
        predictions: Predictions | None = None
        reference: ReferenceStats | npt.NDArray[Any] | str
        if files.logits:
            logits = np.load(files.logits, mmap_mode="r", allow_pickle=False)
            predictions = Predictions(form="exact", num_sources=int(logits.shape[1]), arrays={"logits": logits})
        if files.reference is None:
            reference = "self"
        elif files.reference.endswith(".npz"):
            reference = load_stats_file(files.reference)
        elif task.reduce is not None:  # reduce projects the reference features themselves
            reference = np.load(files.reference, allow_pickle=False)
        else:
            start = time.perf_counter()
            reference = stats_of(np.load(files.reference, mmap_mode="r", allow_pickle=False),
                                 source=repr(files.reference))
            row["seconds"]["reference"] = time.perf_counter() - start
        if isinstance(reference, ReferenceStats):
            reference.check_dim(features.shape[1], task.name)
        return features, labels, predictions, reference, keys, {"data": [], "reference": []}

    _score(task, row, cache, inputs)


def _assemble(rows: list[dict[str, Any]], scorers: Sequence[str], header: Mapping[str, Any], settings: Settings,
              truth: TruthTable | None, combine: Sequence[str] = (), intervals: Mapping[str, Any] | None = None,
              ped_grid: Sequence[Mapping[str, float]] = ()) -> dict[str, Any]:
    skipped: dict[str, list[str]] = {"data": [], "reference": []}
    for row in rows:
        for which, paths in (row.pop("_skipped", None) or {}).items():
            if paths and not skipped[which]:
                skipped[which] = list(paths)
    warnings = zoo_warnings(rows, scorers)
    for warning in warnings:
        for row in rows:
            if row["name"] in warning["models"]:
                row["warnings"].append(warning["message"])
    for which in ("data", "reference"):
        if skipped[which]:
            shown = ", ".join(skipped[which][:5]) + (", ..." if len(skipped[which]) > 5 else "")
            warnings.append({"models": [], "message": f"{len(skipped[which])} image(s) of the {which} folder could "
                                                      f"not be decoded and were skipped: {shown}"})
    results: dict[str, Any] = {"ped_fast_version": __version__, "device": _driver_device(settings),
                               "scorers": list(scorers), **header, "models": rows, "warnings": warnings,
                               "skipped_images": {which: len(paths) for which, paths in skipped.items()},
                               "skipped_files": skipped}
    if combine:
        results["combined"] = {spec: combine_scores(rows, spec) for spec in combine}
    if ped_grid:
        results["ped_grid"] = {"points": [dict(point) for point in ped_grid],
                               "scorers": [scorer for scorer in scorers if get_scorer(scorer).ped_applies],
                               "evaluation": None}
    if truth is not None:
        results["ground_truth"] = recorded_ground_truth(truth, [row["name"] for row in rows])
        if sum(not row["error"] for row in rows) >= 2:
            results["evaluation"] = evaluation(results, truth, **(intervals or {}))
            if ped_grid:
                results["ped_grid"]["evaluation"] = grid_evaluation(results, truth, **(intervals or {}))
        else:
            results["warnings"].append({"models": [], "message": "fewer than 2 models were scored: no ranking "
                                                                 "measures"})
    return results


def _driver_device(settings: Settings) -> str:
    """The device this process screens on; with an executor that resolves
    it in each unit, what was asked for. Each row says what computed its
    features ("device", "math")."""
    try:
        return device_name(settings.torch_device())
    except ValueError:
        return f"{settings.device or 'auto'}, resolved in each work unit"
