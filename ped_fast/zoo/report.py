"""The screen's report: results.json, results.csv, ranking.png and the
printed table; the ranking measures against ground-truth accuracies (from
ped_fast.evaluate)."""
from __future__ import annotations

import csv
import functools
import json
import math
import os
import tempfile
import textwrap
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from ..evaluate import BOOTSTRAP, CONFIDENCE, check_bootstrap, judge
from ._files import fsync_directory, temporary_name
from .scoring import display_name

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

MEASURES = ("weighted_tau", "kendall_tau", "pearson", "rel@1", "rel@3")
FILES = ("results.json", "results.csv", "ranking.png")
# A ground-truth table as given: {model: accuracy or [accuracy per seed]}.
TruthTable = Mapping[str, Union[float, Sequence[float]]]
# A ranking's key: (scorer or --combine SPEC, "baseline" | "ped" | "combined"), or
# (grid point, scorer).
Key = tuple[Any, str]


class GroundTruth(dict[str, float]):
    """The ground truth: {model: accuracy}, the mean over the model's
    fine-tuning seeds (what ranks, and what the table prints), with
    `seeds` {model: [accuracy of each seed]} (one entry for a model given
    a single number), which the bootstrap resamples."""

    def __init__(self, seeds: Mapping[str, Sequence[float]]) -> None:
        super().__init__({name: sum(runs) / len(runs) for name, runs in seeds.items()})
        self.seeds = seeds


def load_ground_truth(path: str | os.PathLike[str]) -> GroundTruth:
    """The GroundTruth of a JSON file holding {model: accuracy} or
    {model: [accuracy per fine-tuning seed]} (both forms may mix)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ground-truth file {str(path)!r} does not exist")
    try:
        table = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"ground-truth file {str(path)!r} is not valid JSON: {error}") from None
    return as_ground_truth(table, f"ground-truth file {str(path)!r}")


def as_ground_truth(table: TruthTable, source: str = "the ground truth") -> GroundTruth:
    """`table` ({model: accuracy or [accuracy per seed]}, or a GroundTruth)
    as a GroundTruth, checked: a one-line error naming `source` and the
    models whose accuracies are not finite numbers or non-empty lists of
    them."""
    if isinstance(table, GroundTruth):
        return table
    if not isinstance(table, dict) or not table:
        raise ValueError(f"{source} must hold a JSON object {{model: accuracy}} (or {{model: [accuracy per seed]}}), "
                         f"got {type(table).__name__ if table else 'an empty object'}")
    seeds, bad = {}, []
    for name, value in table.items():
        runs = list(value) if isinstance(value, (list, tuple)) else [value]
        if runs and all(not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) for v in runs):
            seeds[name] = [float(v) for v in runs]
        else:
            bad.append(name)
    if bad:
        raise ValueError(f"{source}: accuracies must be finite numbers or non-empty lists of them (one per "
                         f"fine-tuning seed), but {bad} are not")
    return GroundTruth(seeds)


def recorded_ground_truth(ground_truth: TruthTable, names: Iterable[str]) -> dict[str, float | Sequence[float]]:
    """The ground truth of the models `names` as results.json records it:
    {model: accuracy}, or [accuracy per seed] for a model with several."""
    truth = as_ground_truth(ground_truth)
    return {name: truth.seeds[name] if len(truth.seeds[name]) > 1 else truth[name] for name in names}


def check_ground_truth(ground_truth: Mapping[str, object], names: Iterable[str],
                       source: str = "the ground truth") -> None:
    """Raise naming every model of `names` that `ground_truth` lacks."""
    missing = [name for name in names if name not in ground_truth]
    if missing:
        raise ValueError(f"{source} has no accuracy for the models {missing} (it has {sorted(ground_truth)})")


def evaluation(results: Mapping[str, Any], ground_truth: TruthTable, *, bootstrap: int = BOOTSTRAP,
               confidence: float = CONFIDENCE, seed: int = 0) -> dict[str, dict[str, Any]]:
    """{scorer: {"baseline": measures, "ped": measures, "ped_vs_baseline":
    comparison}} for the finished rows of `results`, and {SPEC:
    {"combined": measures}} for each of its "combined" scores.

    measures: ped_fast.evaluate.evaluate's (MEASURES, each None where
    undefined: rel@3 with fewer than three models; "interval", "bootstrap")
    plus "saturated", the models whose score saturated (for a combination:
    of any of its terms): when it is not empty, the measures rank noise
    and the report marks them. "ped" is None for a scorer without PED
    scores (leep, nce); a model without a score (no classifier head) is
    left out of that score's measures, which are all None with fewer than
    two models left. comparison: ped_fast.evaluate.compare of the PED score
    against the plain one on the same resamples ({"p_better",
    "delta_weighted_tau", "delta"}, and "saturated"), None without PED
    scores. ground_truth: {model: accuracy or [accuracy per seed]} or a
    GroundTruth; bootstrap, confidence, seed: evaluate's. Needs at least two
    finished models."""
    check_bootstrap(bootstrap, confidence, seed)
    truth = as_ground_truth(ground_truth)
    rows = [row for row in results["models"] if not row["error"]]
    check_ground_truth(truth, [row["name"] for row in rows])
    if len(rows) < 2:
        raise ValueError(f"ranking measures need at least 2 scored models, got {len(rows)}")
    rankings: dict[Key, dict[str, float | None]] = {}
    saturated: dict[Key, set[str]] = {}
    pairs: list[tuple[Key, Key]] = []
    for scorer in results["scorers"]:
        shown = kinds(results, scorer)
        for kind in shown:
            rankings[scorer, kind] = _values(rows, scorer, kind)
            saturated[scorer, kind] = {row["name"] for row in rows if _saturated(row["scores"][scorer], kind)}
        if "ped" in shown and bootstrap:
            pairs.append(((scorer, "ped"), (scorer, "baseline")))
    for spec, values in results.get("combined", {}).items():
        terms = _combined_terms(spec)
        rankings[spec, "combined"] = values
        saturated[spec, "combined"] = {row["name"] for row in rows
                                       if any(_saturated(row["scores"][s], k) for s, k in terms)}
    measures, comparisons = _judged(rankings, truth, pairs, dict(bootstrap=bootstrap, confidence=confidence,
                                                                seed=seed))
    out: dict[str, dict[str, Any]] = {}
    for (name, kind), judged in measures.items():
        out.setdefault(name, {"baseline": None, "ped": None, "ped_vs_baseline": None} if kind != "combined" else {})
        marked = [model for model, value in rankings[name, kind].items()
                  if value is not None and model in saturated[name, kind]]
        out[name][kind] = judged | {"saturated": marked}
    for (ped, baseline), versus in comparisons.items():
        marked = [model for model in rankings[ped] if model in saturated[ped] or model in saturated[baseline]]
        out[ped[0]]["ped_vs_baseline"] = versus | {"saturated": marked}
    return out


def grid_evaluation(results: Mapping[str, Any], ground_truth: TruthTable, *, bootstrap: int = BOOTSTRAP,
                    confidence: float = CONFIDENCE, seed: int = 0) -> list[dict[str, Any]]:
    """The ranking measures of each scorer's PED score at each point of
    results["ped_grid"] (screen(ped_grid=...)): [{scorer: measures}], one
    per point, measures as evaluation()'s (MEASURES, "interval",
    "bootstrap"), every point judged on the same resamples of the models
    (one seed), so that the points differ by their setting, not their
    draw. Needs at least two finished models."""
    check_bootstrap(bootstrap, confidence, seed)
    truth = as_ground_truth(ground_truth)
    rows = [row for row in results["models"] if not row["error"]]
    check_ground_truth(truth, [row["name"] for row in rows])
    if len(rows) < 2:
        raise ValueError(f"ranking measures need at least 2 scored models, got {len(rows)}")
    grid = results["ped_grid"]
    rankings = {(index, scorer): {row["name"]: row["ped_grid"][index][scorer] for row in rows}
                for index in range(len(grid["points"])) for scorer in grid["scorers"]}
    measures, _ = _judged(rankings, truth, (), dict(bootstrap=bootstrap, confidence=confidence, seed=seed))
    return [{scorer: measures[index, scorer] for scorer in grid["scorers"]} for index in range(len(grid["points"]))]


def format_grid(results: Mapping[str, Any]) -> str:
    """PED's sensitivity grid: one line per point (its setting), each
    scorer's weighted tau of its PED score there with its interval; a
    line saying where the scores are without ground truth."""
    grid = results["ped_grid"]
    labels = [" ".join(f"{k}={v:g}" for k, v in point.items()) for point in grid["points"]]
    if grid.get("evaluation") is None:
        return (f"PED's scores at the {len(labels)} grid points are in results.json (each model's \"ped_grid\"); "
                f"their weighted tau across the grid needs ground truth")
    width = max(len("PED setting"), *map(len, labels))
    level = next((f"{m['bootstrap']['confidence']:.0%}" for point in grid["evaluation"] for m in point.values()
                  if m.get("bootstrap")), None)
    title = "weighted tau of each PED score across PED's settings" + (f", {level} bootstrap intervals" if level else "")
    lines = [title, f"{'PED setting':<{width}}" + "".join(f" {display_name(s, 'ped'):>22}" for s in grid["scorers"])]
    for label, measures in zip(labels, grid["evaluation"]):
        cells = []
        for scorer in grid["scorers"]:
            interval = (measures[scorer].get("interval") or {}).get("weighted_tau") if level else None
            text = _number(measures[scorer]["weighted_tau"]) + (f" {_interval_text(interval)}" if level else "")
            cells.append(f" {text:>22}")
        lines.append(f"{label:<{width}}" + "".join(cells))
    return "\n".join(lines)


def _judged(rankings: Mapping[Key, Mapping[str, float | None]], truth: GroundTruth, pairs: Sequence[tuple[Key, Key]],
            options: Mapping[str, Any]) -> tuple[dict[Key, dict[str, Any]], dict[tuple[Key, Key], dict[str, Any]]]:
    """ped_fast.evaluate.judge over the rankings, which it takes by the set
    of models that have a score (a model without one, e.g. LEEP without
    logits, is left out of that ranking): ({key: measures} (MEASURES, None
    where undefined, "interval", "bootstrap"), {pair: comparison})."""
    groups: dict[frozenset[str], dict[Key, dict[str, float]]] = {}
    for key, values in rankings.items():
        scored = {name: value for name, value in values.items() if value is not None}
        groups.setdefault(frozenset(scored), {})[key] = scored
    measures: dict[Key, dict[str, Any]] = {}
    comparisons: dict[tuple[Key, Key], dict[str, Any]] = {}
    for models, group in groups.items():
        if len(models) < 2:
            measures.update({key: dict.fromkeys(MEASURES) | {"interval": dict.fromkeys(MEASURES)} for key in group})
            continue
        ks = tuple(k for k in (1, 3) if k <= len(models))
        inside = [pair for pair in pairs if pair[0] in group and pair[1] in group]
        judged, compared = judge(group, truth.seeds, pairs=inside, ks=ks, **options)
        for key, result in judged.items():
            measures[key] = {name: result.get(name) for name in MEASURES}
            if "interval" in result:
                measures[key] |= {"interval": {name: result["interval"].get(name) for name in MEASURES},
                                  "bootstrap": result["bootstrap"]}
        comparisons.update(compared)
    return {key: measures[key] for key in rankings}, comparisons


def _combined_terms(spec: str) -> list[tuple[str, str]]:
    """[(scorer, kind)] of a checked --combine SPEC "minmax:TERM+TERM...",
    TERM a scorer (its plain score) or ped_SCORER (its PED score)."""
    return [(term[4:], "ped") if term.startswith("ped_") else (term, "baseline")
            for term in spec.partition(":")[2].split("+")]


def _values(rows: Iterable[Mapping[str, Any]], scorer: str, kind: str) -> dict[str, float | None]:
    return {row["name"]: row["scores"][scorer][kind] for row in rows}


def kinds(results: Mapping[str, Any], scorer: str) -> tuple[str, ...]:
    """("baseline", "ped"), or ("baseline",) for a scorer whose finished
    rows have no PED score (PED does not apply to leep and nce)."""
    rows = [row for row in results["models"] if not row["error"]]
    has_ped = any(row["scores"][scorer]["ped"] is not None for row in rows)
    return ("baseline", "ped") if has_ped else ("baseline",)


def _saturated(score: Mapping[str, Any], kind: str) -> str | None:
    """The reason `score`'s `kind` value saturated, or None (results from
    before saturation was recorded have no "saturated")."""
    return (score.get("saturated") or {}).get(kind)


def check_output_folder(out: str | os.PathLike[str]) -> Path:
    """`out` as a folder this process can write (created if missing), checked
    before any work: a screen must not fail at its report after hours of
    extraction."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output folder {str(out)!r} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as error:
        raise type(error)(error.errno, f"output folder {str(out)!r} cannot be written: {error.strerror}") from None
    return out


def check_output_file(path: str | os.PathLike[str]) -> Path:
    """`path` as a file this process can write (its folder created if
    missing), checked before any work."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"output file {str(path)!r} is a folder")
    check_output_folder(path.parent)
    return path


def write_report(results: Mapping[str, Any], out: str | os.PathLike[str]) -> list[Path]:
    """Write results.json, results.csv and ranking.png into `out` as one
    set; returns the paths written.

    Each file is written in full under a temporary name first; only when
    all are complete are they renamed into place, one after another. A
    failure before that leaves the previous set as it was; a report is
    never two runs' files mixed. A plot that cannot be drawn (a matplotlib
    failure) is skipped with a warning saying why, and a ranking.png left by
    an earlier run is removed."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / name for name in FILES]
    temporaries = [out / temporary_name(path.name) for path in paths]
    try:
        temporaries[0].write_text(json.dumps(json_safe(results), indent=2) + "\n")
        write_csv(results, temporaries[1])
        try:
            plot_ranking(results, temporaries[2])
        except Exception as error:
            warnings.warn(f"{paths[2]} not drawn ({type(error).__name__}: {error}); results.json and results.csv "
                          f"hold every number", RuntimeWarning, stacklevel=2)
            temporaries[2].unlink(missing_ok=True)
        for temporary, path in zip(temporaries, paths):
            if temporary.exists():
                os.replace(temporary, path)
            else:
                path.unlink(missing_ok=True)
    finally:
        for temporary in temporaries:
            temporary.unlink(missing_ok=True)
    fsync_directory(out)
    return [path for path in paths if path.exists()]


def json_safe(value: Any) -> Any:
    """NaN and infinities (a tau of constant scores is NaN) become null:
    JSON has no NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_csv(results: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """One line per model: its scores, plain and PED, per scorer, written to
    `path` (write_report makes it atomic)."""
    scorers = results["scorers"]
    truth = results.get("ground_truth") or {}
    combined = results.get("combined", {})
    header = ["name", "dim", "n", "steps"]
    for scorer in scorers:
        header += [display_name(scorer, "baseline"), display_name(scorer, "ped")]
    header += list(combined)
    header += (["accuracy"] if truth else []) + ["seconds", "identity", "saturated", "warnings", "error"]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row in results["models"]:
            line = [row["name"], row["dim"], row["n"], row["steps"]]
            saturated = []
            for scorer in scorers:
                score = row["scores"].get(scorer)
                if score is None:  # a failed model
                    line += ["", ""]
                    continue
                for kind in ("baseline", "ped"):
                    line.append("n/a" if score[kind] is None else score[kind])
                    if _saturated(score, kind):
                        saturated.append(display_name(scorer, kind))
            line += [values.get(row["name"]) for values in combined.values()]
            line += ([_accuracy(truth.get(row["name"], ""))] if truth else [])
            line += [round(row["seconds"].get("total", 0.0), 3), row.get("identity") or "", " | ".join(saturated),
                     " | ".join(row["warnings"]), row["error"] or ""]
            writer.writerow(["" if v is None else v for v in line])


def _accuracy(value: Any) -> Any:
    """A ground-truth entry as one accuracy: a per-seed list's mean (any
    other value, such as results.csv's blank, as it is)."""
    return sum(value) / len(value) if isinstance(value, (list, tuple)) else value


# ranking.png: a grid of panels of a fixed size (inches), one per scorer and
# per combination, whatever the number of models; each panel is its axes,
# a margin on the left (ticks, axis label), a column on the right for the
# model labels and the title above.
DPI = 100
_AXES = (3.6, 2.8)
_MARGINS = {"left": 0.8, "labels": 1.6, "bottom": 0.55, "title": 0.8}
_HEADER = 0.75  # the figure's title and legend
_LABEL_FONT = 7
_LABEL_ALL = 12  # a zoo up to this size has every model labelled; a larger one its best and worst _LABEL_FEW
_LABEL_FEW = 4
_LABEL_CHARS = 26


def plot_ranking(results: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Draw ranking_figure(results) into `path` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = ranking_figure(results)
    figure.savefig(path, dpi=DPI)
    plt.close(figure)


def ranking_figure(results: Mapping[str, Any]) -> Figure:
    """The figure of ranking.png: one panel per scorer (and per
    combination), of a fixed size. Each model is a point at its score, a
    hollow one for the plain score and a filled one for the PED score,
    joined; its height is its fine-tuning accuracy with ground truth
    (weighted tau and its interval in the title), else its rank by the PED
    score. Saturated scores are crossed out and their measures marked.
    The model labels sit in a column right of each panel, every model's
    for small zoos and the best and worst few otherwise, spaced so that
    none overlaps. With no model scored, a figure that says so."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    rows = [row for row in results["models"] if not row["error"]]
    failed = len(results["models"]) - len(rows)
    if not rows:
        figure = plt.figure(figsize=(8, 2))
        figure.text(0.5, 0.5, f"No model was scored: all {failed} failed (their errors are in results.json)",
                    ha="center", va="center", fontsize=11)
        return figure
    truth = {name: _accuracy(value) for name, value in (results.get("ground_truth") or {}).items()}
    seeds = {name: value for name, value in (results.get("ground_truth") or {}).items()
             if isinstance(value, (list, tuple)) and len(value) > 1}
    evaluation = results.get("evaluation") or {}
    panels = [(scorer, kinds(results, scorer)) for scorer in results["scorers"]]
    panels += [(spec, ("combined",)) for spec in results.get("combined", {})]
    columns = 1 if len(panels) == 1 else 2 if len(panels) <= 4 else 3 if len(panels) <= 9 else 4
    grid_rows = math.ceil(len(panels) / columns)
    cell = (_MARGINS["left"] + _AXES[0] + _MARGINS["labels"], _MARGINS["bottom"] + _AXES[1] + _MARGINS["title"])
    size = (columns * cell[0], grid_rows * cell[1] + _HEADER)
    figure = plt.figure(figsize=size)
    for index, (name, shown) in enumerate(panels):
        row, column = divmod(index, columns)
        left = column * cell[0] + _MARGINS["left"]
        bottom = size[1] - _HEADER - (row + 1) * cell[1] + _MARGINS["bottom"]
        axis = figure.add_axes((left / size[0], bottom / size[1], _AXES[0] / size[0], _AXES[1] / size[1]))
        _panel(axis, results, rows, name, shown, truth, seeds, evaluation.get(name) or {})
    if truth:
        heading = ("Does each score predict fine-tuning accuracy? Weighted tau: 1 = the fine-tuning order, "
                   "0 = chance, -1 = reversed")
    else:
        heading = "Models ranked by each score (higher = predicted to transfer better)"
    if failed:
        heading += f"; {failed} model(s) failed and are not shown (see results.json)"
    figure.suptitle(heading, fontsize=11, y=1 - 0.12 / size[1], va="top")
    handles = [Line2D([], [], marker="o", color="tab:gray", markerfacecolor="white", linestyle="", label="plain score"),
               Line2D([], [], marker="o", color="tab:blue", linestyle="", label="PED score"),
               Line2D([], [], color="0.75", label="the same model")]
    if any(_saturated(row["scores"][scorer], kind) for row in rows for scorer in results["scorers"]
           for kind in ("baseline", "ped")):
        handles.append(Line2D([], [], marker="x", color="tab:red", linestyle="", label="saturated: noise"))
    if seeds:
        handles.append(Line2D([], [], color="tab:blue", alpha=0.4, label="range over fine-tuning seeds"))
    figure.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=8, frameon=False,
                  bbox_to_anchor=(0.5, 1 - 0.38 / size[1]))
    return figure


def _panel(axis: Axes, results: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], name: str, shown: Sequence[str],
           truth: Mapping[str, float], seeds: Mapping[str, Sequence[float]], measures: Mapping[str, Any]) -> None:
    """One scorer's (or combination's) panel; see ranking_figure."""
    from matplotlib.collections import LineCollection
    from matplotlib.ticker import MaxNLocator

    if shown == ("combined",):
        series = {"combined": {row["name"]: results["combined"][name].get(row["name"]) for row in rows}}
        saturated = {"combined": set((measures.get("combined") or {}).get("saturated") or ())}
    else:
        series = {kind: _values(rows, name, kind) for kind in shown}
        saturated = {kind: {row["name"] for row in rows if _saturated(row["scores"][name], kind)} for kind in shown}
    series = {kind: {model: value for model, value in values.items() if value is not None}
              for kind, values in series.items()}
    primary = "ped" if "ped" in series else next(iter(series))
    title = [name.upper() if shown != ("combined",) else name]
    if not series[primary]:
        axis.axis("off")
        axis.set_title("\n".join(title + ["no model has this score"]), fontsize=9)
        return
    ranked = sorted(series[primary], key=lambda model: -series[primary][model])
    if truth:
        height = {model: truth[model] for model in series[primary] if model in truth}
    else:
        height = {model: position + 1 for position, model in enumerate(ranked)}
    models = [model for model in ranked if model in height]
    if not models:  # a ground truth without these models (a hand-made results)
        axis.axis("off")
        axis.set_title("\n".join(title + ["no model with both a score and an accuracy"]), fontsize=9)
        return
    if len(series) > 1:
        joins = [[(series["baseline"][m], height[m]), (series["ped"][m], height[m])] for m in models
                 if m in series["baseline"]]
        axis.add_collection(LineCollection(joins, colors="0.75", linewidths=0.8, zorder=1))
    ranges = [[(series[primary][m], min(seeds[m])), (series[primary][m], max(seeds[m]))] for m in models if m in seeds]
    if ranges:
        axis.add_collection(LineCollection(ranges, colors="tab:blue", alpha=0.4, linewidths=1.5, zorder=1))
    for kind, values in series.items():
        points = [model for model in models if model in values]
        filled = kind != "baseline" or len(series) == 1
        axis.scatter([values[m] for m in points], [height[m] for m in points], s=22, zorder=2,
                     color="tab:gray" if kind == "baseline" and not filled else "tab:blue",
                     facecolors="tab:blue" if filled else "white")
        crossed = [m for m in points if m in saturated[kind]]
        if crossed:
            axis.scatter([values[m] for m in crossed], [height[m] for m in crossed], marker="x", s=40,
                         color="tab:red", zorder=3)
    for kind in series:
        title.append(_panel_measure(kind, measures.get(kind), truth, len(models)))
    axis.set_title("\n".join(line for line in title if line), fontsize=8.5)
    axis.set_xlabel(f"{title[0]} score (higher = predicted better)", fontsize=8)
    axis.tick_params(labelsize=7.5)
    axis.grid(alpha=0.3)
    axis.locator_params(axis="x", nbins=5)
    spans = [value for model in models for value in seeds.get(model, (height[model],))]
    low, high = min(spans), max(spans)
    pad = 0.08 * (high - low) if high > low else 0.5
    if truth:
        axis.set_ylim(low - pad, high + pad)
        axis.set_ylabel("fine-tuning accuracy (ground truth)", fontsize=8)
    else:
        axis.set_ylim(high + pad, low - pad)  # rank 1 at the top
        axis.set_ylabel(f"rank by {'PED+' if primary == 'ped' else ''}{title[0]} (1 = best)", fontsize=8)
        ticks = [int(t) for t in MaxNLocator(5, integer=True).tick_values(1, high) if 1 < t <= high]
        axis.set_yticks([1] + [t for t in ticks if t >= 1 + 0.1 * (high - 1)])
    labelled = models if len(models) <= _LABEL_ALL else \
        sorted(models, key=lambda m: -height[m] if truth else height[m])[:_LABEL_FEW] + \
        sorted(models, key=lambda m: height[m] if truth else -height[m])[:_LABEL_FEW]
    _label(axis, [(model, series[primary][model], height[model]) for model in labelled])


def _panel_measure(kind: str, measures: Mapping[str, Any] | None, truth: Mapping[str, float], count: int) -> str:
    """A title line: the weighted tau of one kind, with its interval and
    the saturation mark; empty without ground truth."""
    if not truth:
        return ""
    measures = measures or {}
    name = {"baseline": "plain", "ped": "PED", "combined": "combined"}[kind]
    tau = measures.get("weighted_tau")
    if count < 2:
        return f"{name}: weighted tau undefined (one model)"
    if tau is None or not math.isfinite(tau):
        return f"{name}: weighted tau undefined (constant scores)"
    interval = ((measures.get("interval") or {}).get("weighted_tau"))
    text = f"{name}: weighted tau {tau:.3f}" + (f" [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else "")
    if measures.get("saturated"):
        text = f"{name}: weighted tau {tau:.3f}* (saturated: noise)"
    return text


def _label(axis: Axes, points: Iterable[tuple[str, float, float]]) -> None:
    """Model names in a column right of the axes, each joined to its point,
    spaced at least a line apart (moved as little as that allows)."""
    low, high = axis.get_ylim()
    gap = _LABEL_FONT * 1.45 / 72 / _AXES[1]
    targets = sorted(((y - low) / (high - low), name, x, y) for name, x, y in points)
    positions: list[float] = []
    for target, *_ in targets:
        positions.append(max(target, positions[-1] + gap) if positions else max(target, gap / 2))
    ceiling = 1 - gap / 2
    for index in range(len(positions) - 1, -1, -1):
        ceiling = min(positions[index], ceiling)
        positions[index] = ceiling
        ceiling -= gap
    for position, (_, name, x, y) in zip(positions, targets):
        axis.annotate(_shorten(name, _LABEL_CHARS), xy=(x, y), xycoords="data", xytext=(1.03, position),
                      textcoords="axes fraction", fontsize=_LABEL_FONT, va="center", ha="left",
                      annotation_clip=False, arrowprops=dict(arrowstyle="-", color="0.6", linewidth=0.5,
                                                             shrinkA=0, shrinkB=3))


def _shorten(text: str, limit: int) -> str:
    """`text` cut in the middle to `limit` characters."""
    if len(text) <= limit:
        return text
    head = (limit - 3) // 2 + (limit - 3) % 2
    return text[:head] + "..." + text[len(text) - (limit - 3 - head):]


# The printed table: format_table(results, width=TABLE_WIDTH) fits a
# terminal, format_table(results) holds everything.
TABLE_WIDTH = 120
ROWS_FIT, _ROWS_BEST = 25, 20  # a fitted table lists up to ROWS_FIT models, else the best _ROWS_BEST
_NAME_FIT = 32
_FAILED_FIT, _NOTES_FIT = 10, 20
_NEVER_FIT = 9  # the priority of a column left out of every fitted table: PED+LEEP, PED+NCE (all n/a)


def format_table(results: Mapping[str, Any], *, width: int | None = None) -> str:
    """The table printed at the end of a screen: one line per model, then the
    ranking measures (with ground truth) and the warnings.

    width: None for every model and every column (results.csv's numbers);
    a number of columns (TABLE_WIDTH, the CLI's default) to fit: the most
    telling columns that fit (the accuracy, PED scores, combinations,
    plain scores, D, N, steps, seconds), at most ROWS_FIT models (else the
    best _ROWS_BEST by the first score shown) and at most _FAILED_FIT
    failures and _NOTES_FIT warnings, with a line saying what was left
    out."""
    scored = [row for row in results["models"] if not row["error"]]
    columns = _table_columns(results, scored)
    marker = 3 if any(row["warnings"] for row in scored) else 0
    names = {row["name"]: _shorten(row["name"], _NAME_FIT) if width is not None else row["name"] for row in results["models"]}
    name_width = max([5] + [len(names[row["name"]]) for row in scored])
    shown = columns
    notes = []
    if width is not None:
        shown, used = [], name_width + marker
        for column in sorted(columns, key=lambda c: c["priority"]):
            if column["priority"] >= _NEVER_FIT or used + 1 + column["width"] > width:
                break  # no less telling column in place of one that does not fit
            shown.append(column)
            used += 1 + column["width"]
        shown = [column for column in columns if column in shown]
        left_out = [column["header"] for column in columns if column not in shown]
        if left_out:
            notes.append(f"columns not shown: {', '.join(left_out)} (--show all prints them; results.csv has "
                         f"every column)")
    rows = results["models"]
    if width is not None:
        rows = scored
        if len(scored) > ROWS_FIT:
            rank = next((c for c in shown if c["priority"] == 1), None)
            if rank is not None:
                rows = sorted(scored, key=lambda row: math.inf if rank["values"].get(row["name"]) is None
                              else -rank["values"][row["name"]])  # a model without the score last
                notes.append(f"the {_ROWS_BEST} best of {len(scored)} scored models by {rank['header']} (--show all "
                             f"prints every model; results.csv has every row)")
            else:
                notes.append(f"the first {_ROWS_BEST} of {len(scored)} scored models (--show all prints every "
                             f"model; results.csv has every row)")
            rows = rows[:_ROWS_BEST]
    header = f"{'model':<{name_width}}" + "".join(f" {c['header']:>{c['width']}}" for c in shown)
    lines, marked = [header], False
    for row in rows:
        if row["error"]:
            lines.append(f"{names[row['name']]:<{name_width}} failed: {row['error']}")
            continue
        cells = "".join(f" {c['cells'][row['name']]:>{c['width']}}" for c in shown)
        marked = marked or any(c["cells"][row["name"]].endswith("*") for c in shown)
        lines.append(f"{names[row['name']]:<{name_width}}{cells}" + ("  *" if row["warnings"] else ""))
    if width is not None:
        failures = [row for row in results["models"] if row["error"]]
        lines += [_clip(f"{names[row['name']]} failed: {row['error']}", width) for row in failures[:_FAILED_FIT]]
        if len(failures) > _FAILED_FIT:
            lines.append(f"... and {len(failures) - _FAILED_FIT} more failed models (results.json has every error)")
    if marked:
        lines.append("value*: saturated, it carries no ranking information (the reason is among the warnings)")
    lines += [line for note in notes for line in _wrap(note, width)]
    if results.get("evaluation"):
        lines += ["", format_evaluation(results["evaluation"])]
    warned = [w["message"] for w in results.get("warnings", [])]
    warned += [f"{row['name']}: {w}" for row in results["models"] for w in row["warnings"] if w not in warned]
    if warned:
        lines += ["", "warnings (* in the table):"]
        shown_notes = warned[:_NOTES_FIT] if width is not None else warned
        for note in shown_notes:
            lines += _wrap(note, width, first="  - ", then="    ")
        if len(warned) > len(shown_notes):
            lines.append(f"  ... and {len(warned) - len(shown_notes)} more (results.json has every warning)")
    return "\n".join(lines)


def _table_columns(results: Mapping[str, Any], scored: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The table's columns, in their printed order: {"header", "cells"
    {model: text}, "values" {model: number or None}, "width", "priority"}
    (0: the accuracy, 1: the scores that rank, PED where it applies, ...
    8: seconds; _NEVER_FIT: a PED column of a scorer PED does not apply
    to)."""
    truth = results.get("ground_truth") or {}
    columns: list[dict[str, Any]] = []

    def add(header: str, values: Mapping[str, Any], text: Callable[[str, Any], str], priority: int) -> None:
        cells = {name: text(name, value) for name, value in values.items()}
        columns.append({"header": header, "cells": cells, "values": values, "priority": priority,
                        "width": max([len(header)] + [len(cell) for cell in cells.values()])})

    def plain(name: str, value: object) -> str:
        return "-" if value is None else str(value)

    add("D", {row["name"]: row["dim"] for row in scored}, plain, 6)
    add("N", {row["name"]: row["n"] for row in scored}, plain, 7)
    add("steps", {row["name"]: row["steps"] for row in scored}, plain, 8)
    for scorer in results["scorers"]:
        primary = "ped" if "ped" in kinds(results, scorer) else "baseline"
        for kind in ("baseline", "ped"):
            values = {row["name"]: row["scores"][scorer][kind] for row in scored}
            marks = {row["name"]: _saturated(row["scores"][scorer], kind) for row in scored}
            add(display_name(scorer, kind), values, functools.partial(_marked_cell, marks),
                1 if kind == primary else 4 if kind == "baseline" else _NEVER_FIT)
    for spec, values in results.get("combined", {}).items():
        add(spec, {row["name"]: values.get(row["name"]) for row in scored}, lambda name, value: _cell(value, None), 3)
    if truth:
        add("accuracy", {row["name"]: _accuracy(truth[row["name"]]) for row in scored},
            lambda name, value: f"{value:.4g}", 0)
    add("seconds", {row["name"]: row["seconds"].get("total", 0.0) for row in scored},
        lambda name, value: f"{value:.2f}", 8)
    return columns


def _marked_cell(marks: Mapping[str, str | None], name: str, value: float | None) -> str:
    return _cell(value, marks[name])


def _cell(value: float | None, saturated: object) -> str:
    """A score's cell: 4 decimals, with a * when it saturated; "n/a" for a
    score that does not exist."""
    if value is None:
        return "n/a"
    return f"{value:.4f}*" if saturated else f"{value:.4f}"


def _wrap(text: str, width: int | None, first: str = "", then: str = "") -> list[str]:
    if width is None:
        return [first + text]
    return textwrap.wrap(text, width, initial_indent=first, subsequent_indent=then, break_on_hyphens=False)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


_SHORT = {"weighted_tau": "w.tau", "kendall_tau": "tau", "pearson": "r", "rel@1": "rel@1", "rel@3": "rel@3"}


def format_evaluation(table: Mapping[str, Mapping[str, Any]]) -> str:
    """The ranking measures, one line per scorer and kind (plain, PED; none
    for a PED score that does not exist) and per combination: the measures,
    then their bootstrap intervals; a measure computed from saturated
    scores gets a note in place of its intervals saying it is not a result.
    Then, in words, PED against the plain score for each scorer: the
    difference in weighted tau, its interval and whether it is resolved."""
    entries = [(scorer, kind, measures) for scorer, by_kind in table.items() for kind, measures in by_kind.items()
               if kind != "ped_vs_baseline" and measures is not None]
    width = max([10] + [len(_row_label(scorer, kind)) for scorer, kind, _ in entries])
    settings = next((m["bootstrap"] for _, _, m in entries if m.get("bootstrap")), None)
    lines = []
    header = f"{'ranking by':<{width}}" + "".join(f" {_SHORT[m]:>6}" for m in MEASURES)
    if settings:
        level = f"{settings['confidence']:.0%}"
        seeds = " and of each model's fine-tuning seeds" if settings["seeds_resampled"] else ""
        lines.append(f"{level} intervals: percentile bootstrap, {settings['resamples']} resamples of the models{seeds} "
                     f"(seed {settings['seed']})")
        header += " " + "".join(f" {_SHORT[m] + ' ' + level:<13}" for m in MEASURES).rstrip()
    lines.append(header)
    for scorer, kind, measures in entries:
        line = f"{_row_label(scorer, kind):<{width}}" + "".join(f" {_number(measures[m]):>6}" for m in MEASURES)
        saturated = measures.get("saturated") or []
        if saturated:
            line += f"  * saturated scores ({len(saturated)} model(s)): noise, not a result"
        elif settings:
            intervals = measures.get("interval") or {}
            line += " " + "".join(f" {_interval_text(intervals.get(m)):<13}" for m in MEASURES).rstrip()
        lines.append(line)
    comparisons = [(scorer, by_kind) for scorer, by_kind in table.items() if by_kind.get("ped_vs_baseline")]
    if comparisons and settings:
        lines += ["", f"PED against the plain score (difference in weighted tau, same resamples; resolved: its {level} "
                      f"interval excludes 0):"]
        lines += [f"  {display_name(scorer, 'baseline')}: {_comparison(by_kind, level)}"
                  for scorer, by_kind in comparisons]
    return "\n".join(lines)


def _comparison(by_kind: Mapping[str, Any], level: str) -> str:
    """PED against plain, in words."""
    versus = by_kind["ped_vs_baseline"]
    if versus.get("saturated"):
        return f"not compared: saturated scores ({len(versus['saturated'])} model(s)) rank noise"
    delta, interval = versus.get("delta"), versus.get("delta_weighted_tau")
    if delta is None or not math.isfinite(delta):
        return "not compared: weighted tau undefined (constant scores)"
    if interval is None:
        return f"PED {delta:+.3f}; no interval (fewer than 3 models, or too many undefined resamples)"
    text = (f"PED {delta:+.3f} [{interval[0]:+.2f},{interval[1]:+.2f}], higher in {versus['p_better']:.0%} of "
            f"resamples: ")
    if interval[0] > 0:
        return text + "resolved, PED ranks better"
    if interval[1] < 0:
        return text + "resolved, PED ranks worse"
    return text + f"not resolved at {level}"


def _interval_text(interval: Sequence[float] | None) -> str:
    return "n/a" if interval is None else f"[{interval[0]:.2f},{interval[1]:.2f}]"


def _row_label(scorer: str, kind: str) -> str:
    """The row label of a score: display_name's, or a combination's SPEC."""
    return scorer if kind == "combined" else display_name(scorer, kind)


def _number(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.3f}"
