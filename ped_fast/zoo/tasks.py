"""Several target tasks in one screen, and the summary across them
(docs/screening.md, "Several target tasks").

One task is one setup: which scorer ranks a zoo best flips from one task to
another (Agostinelli et al., "How stable are transferability metrics
evaluations?", ECCV 2022), so a benchmark screens one zoo against many and
reads the aggregate. screen_tasks() plans every task (all arguments
checked before any work), runs one shared extraction phase over all their
target sets (each model built once per pass, the reference statistics
computed once), then each task's screen, which finds its inputs in the
cache, and writes the summary. summarize() builds the same summary from
screens that already ran: from each results.json's scores and ground truth,
so the two agree.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..evaluate import BOOTSTRAP, CONFIDENCE, MIN_MODELS, check_bootstrap, weighted_tau
from ._files import atomic_write_text
from .errors import checking_inputs
from .cache import Cache
from .images import ImageSet
from .report import (TruthTable, _combined_terms, _judged, _saturated, as_ground_truth, check_ground_truth,
                     check_output_folder, json_safe, kinds)
from .scoring import display_name
from .screen import _executor, _plan, _run, extract_shared, failed

# summary.{json,csv,md} (the Markdown file's name is spelt out nowhere, so
# that tests/test_docs.py does not take it for a missing document).
SUMMARY_FILES = tuple(f"summary.{extension}" for extension in ("json", "csv", "md"))
# A task name names its report folder OUT/TASK.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+@-]*")
_FIELDS = ("name", "data", "features", "ground_truth")
# Weighted taus closer than this are a tie (the same ranking gives the same
# float; this only absorbs rounding).
_TIE = 1e-12


@dataclass(frozen=True)
class Task:
    """One target task: its name (the report's folder OUT/NAME), exactly one
    of `data` (labelled images: what screen()'s `data` takes) and
    `features` (a --features folder), and optionally its ground truth (a
    JSON file, or {model: accuracy or [accuracy per seed]})."""
    name: str
    data: str | None = None
    features: str | None = None
    ground_truth: str | TruthTable | None = None


def load_tasks(tasks: str | os.PathLike[str] | Sequence[Task | Mapping[str, Any]]) -> list[Task]:
    """The tasks of a TASKS.json file (a JSON list of {"name", "data" or
    "features", "ground_truth"?}; relative paths are relative to the
    file's folder), or of a list of such dicts or Tasks (relative paths
    relative to the working folder). Every mistake is a one-line error
    naming the task and its field."""
    folder: Path | None = None
    source = "tasks"
    if isinstance(tasks, (str, os.PathLike)):
        path = Path(tasks)
        source = f"tasks file {str(path)!r}"
        if not path.is_file():
            raise FileNotFoundError(f"{source} does not exist")
        try:
            tasks = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{source} is not valid JSON: {error}") from None
        folder = path.parent
    if not isinstance(tasks, (list, tuple)) or not tasks:
        raise ValueError(f"{source} must be a non-empty list of tasks ({{\"name\": ..., \"data\" or \"features\": "
                         f"FOLDER, \"ground_truth\": FILE}}), got {_kind(tasks)}")
    out: list[Task] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(tasks):
        task = _task(entry, index, source, folder)
        if task.name in seen:
            raise ValueError(f"{source}: tasks {seen[task.name] + 1} and {index + 1} are both named {task.name!r} "
                             f"(each names its own report folder)")
        seen[task.name] = index
        out.append(task)
    return out


def _task(entry: object, index: int, source: str, folder: Path | None) -> Task:
    where = f"{source}: task {index + 1}"
    if isinstance(entry, Task):
        entry = {name: getattr(entry, name) for name in _FIELDS if getattr(entry, name) is not None}
    if not isinstance(entry, dict):
        raise ValueError(f"{where} must be an object {{\"name\", \"data\" or \"features\", \"ground_truth\"?}}, got "
                         f"{_kind(entry)}")
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in SUMMARY_FILES:
        raise ValueError(f"{where}: \"name\" must be a name for its report folder (letters, digits and ._+@-, not "
                         f"starting with . _ + @ -), got {name!r}")
    where = f"{source}: task {name!r}"
    unknown = [key for key in entry if key not in _FIELDS]
    if unknown:
        raise ValueError(f"{where}: unknown field {unknown[0]!r} (a task has {', '.join(_FIELDS)})")
    given = [key for key in ("data", "features") if entry.get(key) is not None]
    if len(given) != 1:
        raise ValueError(f"{where}: give exactly one of \"data\" (a labelled image folder) and \"features\" (a "
                         f"--features folder), got {' and '.join(given) if given else 'neither'}")
    paths: dict[str, Any] = {}
    for key in (*given, "ground_truth"):
        value = entry.get(key)
        if value is None or (key == "ground_truth" and isinstance(value, dict)):
            paths[key] = value
            continue
        if not isinstance(value, (str, os.PathLike)) or not str(value):
            expected = {"ground_truth": "a JSON file or an object {model: accuracy}", "features": "a folder",
                        "data": "a path (what --data takes)"}[key]
            raise ValueError(f"{where}: \"{key}\" must be {expected}, got {value!r}")
        paths[key] = str(Path(folder, value) if folder is not None else Path(value))
    return Task(name=name, **paths)


def _kind(value: object) -> str:
    return "an empty list" if value == [] else type(value).__name__


def screen_tasks(models: Any, tasks: str | os.PathLike[str] | Sequence[Task | Mapping[str, Any]],
                 reference: str | os.PathLike[str] | ImageSet | None = None, *,
                 scorers: str | Sequence[str] = ("sfda",),
                 out: str | os.PathLike[str] | None = None, cache: Cache | str | os.PathLike[str] | None = None,
                 executor: Any = None, bootstrap: int = BOOTSTRAP, confidence: float = CONFIDENCE,
                 bootstrap_seed: int = 0, **options: Any) -> dict[str, Any]:
    """Screen one zoo against every task: {"tasks": {name: results (what
    screen() returns)}, "summary": summarize()'s}. With `out`, each task's
    report goes to OUT/NAME/ and the summary to OUT/ (summary.json,
    summary.csv and the Markdown table, SUMMARY_FILES).

    tasks: a TASKS.json file or a list (load_tasks). models, reference,
    scorers, cache, executor and the keyword options are screen()'s, the
    same for every task: a data task screens `models` on its folder with
    `reference`; a features task screens its folder's files, with
    reference "self" when `reference` is "self", else each model's
    reference file. Every task is checked before any work (an error names
    the task). The models whose scores some task lacks are then built once
    per pass and pushed through every such task's images and the reference
    set together (the reference statistics once); each task's screen then
    reads them from the cache. bootstrap, confidence, bootstrap_seed: the
    intervals of each task's ranking measures and of the summary.
    """
    with checking_inputs():
        tasks = load_tasks(tasks)
        check_bootstrap(bootstrap, confidence, bootstrap_seed)
        executor = _executor(executor)  # one executor for every task (a Ray client is started once)
        if models is None and any(task.data is not None for task in tasks):
            name = next(task.name for task in tasks if task.data is not None)
            raise ValueError(f"task {name!r} has data, which needs models to screen (--models)")
        if out is not None:
            out = check_output_folder(out)
        shared = dict(options, scorers=scorers, cache=cache, executor=executor, bootstrap=bootstrap,
                      confidence=confidence, bootstrap_seed=bootstrap_seed)
        plans = [_plan(models if task.data is not None else None, task.data,
                       reference if task.data is not None else ("self" if reference == "self" else None),
                       features=task.features, ground_truth=task.ground_truth,
                       out=None if out is None else out / task.name, task=task.name, **shared)
                 for task in tasks]
    screens = [plan for plan in plans if plan.specs is not None]
    shared_outcomes = iter(extract_shared(screens))
    results = {}
    for task, plan in zip(tasks, plans):
        plan.log(f"task {task.name}:")
        results[task.name] = _run(plan, next(shared_outcomes) if plan.specs is not None else None)
    paths = {task.name: str(out / task.name / "results.json") for task in tasks} if out is not None else {}
    summary = _summary(results, paths, out, dict(bootstrap=bootstrap, confidence=confidence, seed=bootstrap_seed))
    return {"tasks": results, "summary": summary}


def failed_tasks(screened: Mapping[str, Any]) -> dict[str, list[str]]:
    """{task: [failed model]} of screen_tasks()'s result, for the tasks
    with failures."""
    return {name: bad for name, results in screened["tasks"].items() if (bad := failed(results))}


def read_results(path: str | os.PathLike[str], what: str = "results") -> dict[str, Any]:
    """A screen's results.json: the file, or the --out folder holding it.
    what: how errors name the argument ("--results" for the CLI)."""
    file = Path(path)
    if file.is_dir():
        file = file / "results.json"
        if not file.is_file():
            raise FileNotFoundError(f"{what} folder {str(path)!r} has no results.json (a screen's --out folder "
                                    f"holds one)")
    elif not file.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist")
    try:
        results = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{what} {str(file)!r} is not valid JSON: {error}") from None
    if not isinstance(results, dict) or "models" not in results or "scorers" not in results:
        raise ValueError(f"{what} {str(file)!r} is not a screen's results.json (no 'models' and 'scorers')")
    return results


def task_name(path: str | os.PathLike[str]) -> str:
    """The task a results path stands for: the folder holding results.json
    (OUT/NAME/results.json, or OUT/NAME), else the file's stem."""
    path = Path(path)
    if path.is_dir():
        return path.resolve().name
    return path.resolve().parent.name if path.name == "results.json" else path.stem


def summarize(results: Mapping[str, Mapping[str, Any] | str | os.PathLike[str]]
              | Sequence[str | os.PathLike[str] | tuple[str, str | os.PathLike[str]]],
              out: str | os.PathLike[str] | None = None, *, bootstrap: int = BOOTSTRAP, confidence: float = CONFIDENCE,
              seed: int = 0) -> dict[str, Any]:
    """The summary of screens of one zoo on several tasks, written to `out`
    (SUMMARY_FILES: summary.json, summary.csv and the Markdown table) when
    given.

    results: {task name: results (a screen's results dict), or the path of
    its results.json or of the folder holding it}, or a sequence of such
    paths, each task named by its folder (task_name), or of (task name,
    path) pairs. Each task's weighted taus are computed again from its
    rows and ground truth, with intervals (bootstrap, confidence, seed:
    evaluate()'s, so the defaults give each task's report's intervals); a
    task without ground truth is listed, not judged. Returns {"ped_fast_version", "rankings" (the compared rankings:
    SFDA, PED+SFDA, ..., each combination), "tasks": [per task: "name",
    "results", "models", "note", "best", "rankings": {ranking:
    "weighted_tau", "interval", "saturated", "versus_best"}], "mean":
    {ranking: "weighted_tau", "interval", "tasks"}, "win_rate": {ranking:
    share}, "resolved_wins": {ranking: share}, "judged_tasks",
    "bootstrap"}; docs/screening.md says what each is.
    """
    with checking_inputs():
        check_bootstrap(bootstrap, confidence, seed)
        named, paths = _named(results)
        if out is not None:
            out = check_output_folder(out)
    return _summary(named, paths, out, dict(bootstrap=bootstrap, confidence=confidence, seed=seed))


def _summary(named: Mapping[str, Mapping[str, Any]], paths: Mapping[str, str], out: Path | None,
             options: Mapping[str, Any]) -> dict[str, Any]:
    """summarize() of checked screens ({task: results}, {task: path})."""
    tasks = [dict(_judge_task(name, screened, options), results=paths.get(name)) for name, screened in named.items()]
    rankings = list(dict.fromkeys(label for task in tasks for label in task["rankings"]))
    judged = [task for task in tasks if task["best"]]
    summary: dict[str, Any] = {"ped_fast_version": __version__, "rankings": rankings, "tasks": tasks,
               "mean": _means(rankings, judged, **options),
               "win_rate": {label: _share(judged, lambda task: task["best"].count(label) / len(task["best"]))
                            for label in rankings},
               "resolved_wins": {label: _share(judged, lambda task: task["best"] == [label] and _resolved(task))
                                 for label in rankings},
               "judged_tasks": len(judged),
               "bootstrap": {"resamples": options["bootstrap"], "confidence": options["confidence"],
                             "seed": options["seed"]}}
    summary = json_safe(summary)
    if out is not None:
        write_summary(summary, out)
    return summary


def _named(results: object) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """({task: results dict}, {task: path}) of summarize()'s argument."""
    if isinstance(results, dict) and "models" in results and "scorers" in results:
        raise TypeError("summarize takes several screens: {task name: results} or a list of results.json paths, "
                        "got one screen's results")
    if isinstance(results, dict):
        pairs = list(results.items())
    elif isinstance(results, (list, tuple)) and results:
        pairs = []
        for item in results:
            if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
                pairs.append(item)
            elif isinstance(item, (str, os.PathLike)):
                pairs.append((task_name(item), item))
            else:
                raise TypeError(f"summarize's list holds results.json paths or (task name, path) pairs (or use "
                                f"{{task name: results}}), got {type(item).__name__}")
    else:
        raise ValueError(f"summarize needs at least one screen: {{task name: results}} or results.json paths, got "
                         f"{_kind(results)}")
    if not pairs:
        raise ValueError("summarize needs at least one screen, got none")
    sources: dict[str, object] = {}
    for name, item in pairs:
        if name in sources:
            raise ValueError(f"two screens are named {name!r} ({sources[name]} and {item}): name them, "
                             f"NAME=PATH on the command line")
        sources[name] = item if isinstance(item, (str, os.PathLike)) else "results"
    named, paths = {}, {}
    for name, item in pairs:
        if isinstance(item, (str, os.PathLike)):
            named[name] = read_results(item)
            paths[name] = str(item)
        elif isinstance(item, dict) and "models" in item and "scorers" in item:
            named[name] = item
        else:
            raise TypeError(f"task {name!r}: expected a screen's results or its results.json path, got "
                            f"{type(item).__name__}")
        truth = named[name].get("ground_truth")
        if truth:
            ground_truth = as_ground_truth(truth, f"the ground truth of task {name!r}")
            check_ground_truth(ground_truth, [row["name"] for row in named[name]["models"] if not row["error"]],
                               f"the ground truth of task {name!r}")
    return named, paths


def _judge_task(name: str, results: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
    """One task's line of the summary: each ranking's weighted tau with its
    interval, the best ranking(s), and each other ranking's paired
    difference from the best."""
    rows = [row for row in results["models"] if not row["error"]]
    rankings, saturated = {}, {}
    for scorer in results["scorers"]:
        for kind in kinds(results, scorer):
            label = display_name(scorer, kind)
            rankings[label] = {row["name"]: row["scores"][scorer][kind] for row in rows}
            saturated[label] = sorted(row["name"] for row in rows if _saturated(row["scores"][scorer], kind)
                                      and row["scores"][scorer][kind] is not None)
    for spec, values in (results.get("combined") or {}).items():
        rankings[spec] = {row["name"]: values.get(row["name"]) for row in rows}
        saturated[spec] = sorted(row["name"] for row in rows if values.get(row["name"]) is not None
                                 and any(_saturated(row["scores"][s], k) for s, k in _combined_terms(spec)))
    task: dict[str, Any] = {"name": name, "models": len(rows), "note": None, "best": [],
            "rankings": {label: {"weighted_tau": None, "interval": None, "saturated": saturated[label],
                                 "versus_best": None} for label in rankings}}
    truth = results.get("ground_truth")
    if not truth:
        task["note"] = "no ground truth: not judged"
        return task
    if len(rows) < 2:
        task["note"] = f"{len(rows)} scored model(s): not judged"
        return task
    truth = as_ground_truth(truth)
    points = {label: _point_tau(values, truth) for label, values in rankings.items()}
    valid = {label: tau for label, tau in points.items() if tau is not None and not saturated[label]}
    top = max(valid.values(), default=math.nan)  # the default is never compared: no valid label
    task["best"] = [label for label, tau in valid.items() if abs(tau - top) <= _TIE]
    pairs = [(best, other) for best in task["best"] for other in valid if other not in task["best"]] \
        if options["bootstrap"] else []
    # report.Key names a report's (scorer, kind) keys; _judged takes any hashable key, here the ranking labels.
    measures, comparisons = _judged(rankings, truth, pairs, options)  # type: ignore[arg-type]
    for label, entry in task["rankings"].items():
        entry["weighted_tau"] = measures[label]["weighted_tau"]
        entry["interval"] = (measures[label].get("interval") or {}).get("weighted_tau")
        if label in valid and label not in task["best"]:
            entry["versus_best"] = _versus_best([comparisons.get((best, label)) for best in task["best"]])
    if not valid:
        task["note"] = "no ranking with a defined, unsaturated weighted tau: not judged"
    return task


def _point_tau(values: Mapping[str, float | None], truth: Mapping[str, float]) -> float | None:
    """The weighted tau of the models that have a score (as _judged takes
    them); None where undefined."""
    # In the accuracies' order, as _judged.
    scored = {model: value for model in truth if (value := values.get(model)) is not None}
    if len(scored) < 2:
        return None
    tau = weighted_tau(list(scored.values()), [truth[m] for m in scored])
    return tau if math.isfinite(tau) else None


def _versus_best(comparisons: Sequence[Mapping[str, Any] | None]) -> dict[str, Any] | None:
    """The paired difference best - this ranking (against the first best;
    "resolved" only when its lead over this one is resolved against every
    best, i.e. each interval lies above 0); None without intervals or when
    the two rank different models (a scorer without some model's score)."""
    known = [c for c in comparisons if c is not None and c.get("delta_weighted_tau") is not None]
    if not known or len(known) < len(comparisons):
        return None
    first = known[0]
    return {"delta": first["delta"], "delta_weighted_tau": first["delta_weighted_tau"],
            "p_better": first["p_better"], "resolved": all(c["delta_weighted_tau"][0] > 0 for c in known)}


def _resolved(task: Mapping[str, Any]) -> bool:
    """Whether the task's single best ranking leads every other ranking
    judged there by a resolved difference."""
    others = [entry for label, entry in task["rankings"].items() if label not in task["best"]
              and entry["weighted_tau"] is not None and not entry["saturated"]]
    return all(entry["versus_best"] is not None and entry["versus_best"]["resolved"] for entry in others)


def _share(tasks: Sequence[Mapping[str, Any]], value: Callable[[Mapping[str, Any]], float]) -> float | None:
    return sum(float(value(task)) for task in tasks) / len(tasks) if tasks else None


def _means(rankings: Sequence[str], judged: Sequence[Mapping[str, Any]], *, bootstrap: int, confidence: float,
           seed: int) -> dict[str, dict[str, Any]]:
    """{ranking: {"weighted_tau": the mean over the judged tasks where it is
    defined and unsaturated, "interval": percentile bootstrap over the
    tasks (the same draws of tasks for every ranking), "tasks": how many
    tasks the mean is over}}. No interval over fewer than MIN_MODELS tasks
    or when fewer than half the draws hold one of its tasks."""
    taus = np.array([[_usable(task["rankings"].get(label)) for label in rankings] for task in judged],
                    dtype=np.float64).reshape(len(judged), len(rankings))
    counts = (~np.isnan(taus)).sum(axis=0)
    draws = None
    if bootstrap and len(judged):
        rng = np.random.default_rng(seed)
        draws = taus[rng.integers(0, len(judged), size=(bootstrap, len(judged)))]  # B x T x R
    out = {}
    for column, label in enumerate(rankings):
        entry: dict[str, Any] = {"weighted_tau": float(np.nanmean(taus[:, column])) if counts[column] else None,
                                 "interval": None, "tasks": int(counts[column])}
        if draws is not None and counts[column] >= MIN_MODELS:
            values = draws[:, :, column]
            defined = ~np.isnan(values)
            means = values[defined.any(axis=1)]
            if means.shape[0] * 2 >= bootstrap:
                means = np.nanmean(means, axis=1)
                low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
                entry["interval"] = [float(low), float(high)]
        out[label] = entry
    return out


def _usable(entry: Mapping[str, Any] | None) -> float:
    """A task's weighted tau of a ranking as the mean takes it: NaN when
    undefined, saturated or missing."""
    if entry is None or entry["weighted_tau"] is None or entry["saturated"]:
        return math.nan
    tau: float = entry["weighted_tau"]
    return tau


def write_summary(summary: Mapping[str, Any], out: str | os.PathLike[str]) -> list[Path]:
    """SUMMARY_FILES (summary.json, summary.csv, the Markdown table) in
    `out`, each written atomically; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    texts = (json.dumps(summary, indent=2) + "\n", summary_csv(summary), format_summary(summary) + "\n")
    paths = [out / name for name in SUMMARY_FILES]
    for path, text in zip(paths, texts):
        atomic_write_text(path, text)
    return paths


def summary_csv(summary: Mapping[str, Any]) -> str:
    """The summary table as CSV: one line per task (its models, its best
    ranking(s), then per ranking its weighted tau and interval, the rankings
    resolved below the best and the saturated ones), then the mean line
    (over tasks, with the interval from resampling them), the win-rate line
    and the resolved-win line. Empty cells where a value does not exist."""
    rankings = summary["rankings"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["task", "models", "best"] + [f"{label}{part}" for label in rankings
                                                  for part in ("", " low", " high")]
                    + ["resolved below best", "saturated", "note"])
    for task in summary["tasks"]:
        line = [task["name"], task["models"], " | ".join(task["best"])]
        for label in rankings:
            entry = task["rankings"].get(label) or {}
            line += [_cell(entry.get("weighted_tau")), *_bounds(entry.get("interval"))]
        line += [" | ".join(label for label, entry in task["rankings"].items()
                            if (entry["versus_best"] or {}).get("resolved")),
                 " | ".join(label for label, entry in task["rankings"].items() if entry["saturated"]),
                 task["note"] or ""]
        writer.writerow(line)
    mean: list[float | str] = ["mean", "", ""]
    for label in rankings:
        mean += [_cell(summary["mean"][label]["weighted_tau"]), *_bounds(summary["mean"][label]["interval"])]
    writer.writerow(mean + ["", "", f"over {summary['judged_tasks']} judged task(s)"])
    for title, shares in (("win rate", summary["win_rate"]), ("resolved wins", summary["resolved_wins"])):
        writer.writerow([title, "", ""] + [part for label in rankings for part in (_cell(shares[label]), "", "")]
                        + ["", "", ""])
    return buffer.getvalue()


def _cell(value: float | None) -> float | str:
    return "" if value is None else value


def _bounds(interval: Sequence[float] | None) -> tuple[float | str, ...]:
    return ("", "") if interval is None else tuple(interval)


def format_summary(summary: Mapping[str, Any]) -> str:
    """The summary as Markdown (its .md file, and what `screen --tasks` and
    `summarize` print): a tasks x rankings table of weighted tau with
    intervals, the mean row, the win rates, and what the marks mean."""
    rankings = summary["rankings"]
    settings = summary["bootstrap"]
    level = f"{settings['confidence']:.0%}"
    lines = ["# Weighted tau across tasks", ""]
    if settings["resamples"]:
        lines += [f"{level} percentile bootstrap intervals: {settings['resamples']} resamples of each task's models "
                  f"(and of their fine-tuning seeds), seed {settings['seed']}; the mean's interval resamples the "
                  f"tasks.", ""]
    lines.append("| task | models | " + " | ".join(rankings) + " |")
    lines.append("|---|---:|" + "---:|" * len(rankings))
    for task in summary["tasks"]:
        cells = [_task_cell(task, label) for label in rankings]
        lines.append(f"| {task['name']} | {task['models']} | " + " | ".join(cells) + " |")
    judged = summary["judged_tasks"]
    mean = [_mean_cell(summary["mean"][label], judged) for label in rankings]
    lines.append(f"| **mean** | {judged} task{'s' if judged != 1 else ''} | " + " | ".join(mean) + " |")
    for title, shares in (("**win rate**", summary["win_rate"]), ("resolved wins", summary["resolved_wins"])):
        lines.append(f"| {title} | | " + " | ".join("-" if shares[label] is None else f"{shares[label]:.2f}"
                                                   for label in rankings) + " |")
    lines += ["", "**bold**: the task's best weighted tau. "
                  + (f"†: below the best, resolved at {level} (the paired bootstrap interval of the difference "
                     f"excludes 0); unmarked values are not resolved from the best. " if settings["resamples"] else "")
              + "*: saturated scores rank noise: not a result, left out of the best, the mean and the wins. "
                "win rate: the share of the judged tasks on which the ranking has the best weighted tau (a tie "
                "shares the task); resolved wins: the share on which it is the only best and its lead over every "
                "other ranking is resolved."]
    notes = [f"{task['name']}: {task['note']}" for task in summary["tasks"] if task["note"]]
    if notes:
        lines += [""] + [f"- {note}" for note in notes]
    return "\n".join(lines)


def _task_cell(task: Mapping[str, Any], label: str) -> str:
    entry = task["rankings"].get(label)
    if entry is None or entry["weighted_tau"] is None:
        return "-" if entry is None or task["note"] else "n/a"
    text = f"{entry['weighted_tau']:.3f}"
    if entry["saturated"]:
        return text + "*"
    if label in task["best"]:
        text = f"**{text}**"
    elif (entry["versus_best"] or {}).get("resolved"):
        text += "†"
    interval = entry["interval"]
    return text + (f" [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else "")


def _mean_cell(entry: Mapping[str, Any], judged: int) -> str:
    if entry["weighted_tau"] is None:
        return "-"
    text = f"{entry['weighted_tau']:.3f}"
    if entry["interval"]:
        text += f" [{entry['interval'][0]:.2f}, {entry['interval'][1]:.2f}]"
    return text + (f" ({entry['tasks']} of {judged})" if entry["tasks"] != judged else "")
