"""The screen's report: results.json, results.csv, ranking.png and the
printed table; the ranking measures against ground-truth accuracies (from
ped_fast.evaluate)."""
from __future__ import annotations

import csv
import json
import math
import os
import tempfile
import warnings
from pathlib import Path

from ..evaluate import evaluate
from ._files import fsync_directory, temporary_name
from .scoring import display_name

MEASURES = ("weighted_tau", "kendall_tau", "pearson", "rel@1", "rel@3")
FILES = ("results.json", "results.csv", "ranking.png")


def load_ground_truth(path) -> dict:
    """{model: accuracy} from a JSON file holding such an object."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ground-truth file {str(path)!r} does not exist")
    try:
        table = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"ground-truth file {str(path)!r} is not valid JSON: {error}") from None
    if not isinstance(table, dict) or not table:
        raise ValueError(f"ground-truth file {str(path)!r} must hold a JSON object {{model: accuracy}}, got "
                         f"{type(table).__name__ if table else 'an empty object'}")
    bad = [name for name, value in table.items()
           if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)]
    if bad:
        raise ValueError(f"ground-truth file {str(path)!r}: accuracies must be finite numbers, but {bad} are not")
    return {name: float(value) for name, value in table.items()}


def check_ground_truth(ground_truth, names, source="the ground truth"):
    """Raise naming every model of `names` that `ground_truth` lacks."""
    missing = [name for name in names if name not in ground_truth]
    if missing:
        raise ValueError(f"{source} has no accuracy for the models {missing} (it has {sorted(ground_truth)})")


def evaluation(results, ground_truth) -> dict:
    """{scorer: {"baseline": measures, "ped": measures}} for the finished
    rows of `results`, and {SPEC: {"combined": measures}} for each of its
    "combined" scores; measures are MEASURES (rel@3 is None with fewer than
    three models). "ped" is None for a scorer without PED scores (leep,
    nce); a model without a score (no classifier head) is left out of that
    score's measures, which are all None with fewer than two models left.
    Needs at least two finished models."""
    rows = [row for row in results["models"] if not row["error"]]
    check_ground_truth(ground_truth, [row["name"] for row in rows])
    if len(rows) < 2:
        raise ValueError(f"ranking measures need at least 2 scored models, got {len(rows)}")
    accuracies = {row["name"]: ground_truth[row["name"]] for row in rows}
    ks = tuple(k for k in (1, 3) if k <= len(rows))
    out = {}
    for scorer in results["scorers"]:
        out[scorer] = {kind: _measures({row["name"]: row["scores"][scorer][kind] for row in rows}, accuracies, ks)
                       if kind in kinds(results, scorer) else None for kind in ("baseline", "ped")}
    for spec, values in results.get("combined", {}).items():
        out[spec] = {"combined": _measures(values, accuracies, ks)}
    return out


def _measures(scores, accuracies, ks):
    scores = {name: value for name, value in scores.items() if value is not None and name in accuracies}
    if len(scores) < 2:
        return dict.fromkeys(MEASURES)
    measures = evaluate(scores, {name: accuracies[name] for name in scores}, ks=tuple(k for k in ks
                                                                                       if k <= len(scores)))
    return {name: measures.get(name) for name in MEASURES}


def kinds(results, scorer) -> tuple:
    """("baseline", "ped"), or ("baseline",) for a scorer whose finished
    rows have no PED score (PED does not apply to leep and nce)."""
    rows = [row for row in results["models"] if not row["error"]]
    has_ped = any(row["scores"][scorer]["ped"] is not None for row in rows)
    return ("baseline", "ped") if has_ped else ("baseline",)


def _saturated(score, kind):
    """The reason `score`'s `kind` value saturated, or None (results from
    before saturation was recorded have no "saturated")."""
    return (score.get("saturated") or {}).get(kind)


def check_output_folder(out) -> Path:
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


def check_output_file(path) -> Path:
    """`path` as a file this process can write (its folder created if
    missing), checked before any work."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"output file {str(path)!r} is a folder")
    check_output_folder(path.parent)
    return path


def write_report(results, out) -> list:
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


def json_safe(value):
    """NaN and infinities (a tau of constant scores is NaN) become null:
    JSON has no NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_csv(results, path):
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
            line += ([truth.get(row["name"], "")] if truth else [])
            line += [round(row["seconds"].get("total", 0.0), 3), row.get("identity") or "", " | ".join(saturated),
                     " | ".join(row["warnings"]), row["error"] or ""]
            writer.writerow(["" if v is None else v for v in line])


def plot_ranking(results, path):
    """With ground truth: each scorer's score (plain and PED) against the
    fine-tuning accuracy, one panel each, weighted tau in the title (when
    there are ranking measures: two models or more). Without: the models
    ranked by each score, as bars. With no model scored, a figure that says
    so."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in results["models"] if not row["error"]]
    scorers = results["scorers"]
    truth = results.get("ground_truth")
    failed = len(results["models"]) - len(rows)
    if not rows:
        figure = plt.figure(figsize=(8, 2))
        figure.text(0.5, 0.5, f"No model was scored: all {failed} failed (their errors are in results.json)",
                    ha="center", va="center", fontsize=11)
        figure.savefig(path, dpi=110)
        plt.close(figure)
        return
    evaluation = results.get("evaluation") or {}
    height = 3.6 if truth else 0.9 + 0.32 * max(len(rows), 3)
    figure, axes = plt.subplots(len(scorers), 2, figsize=(11, height * len(scorers)), squeeze=False,
                                layout="constrained")
    for axes_row, scorer in zip(axes, scorers):
        shown = kinds(results, scorer) if rows else ()
        for axis, kind in zip(axes_row, ("baseline", "ped")):
            title = display_name(scorer, kind)
            scored = [row for row in rows if row["scores"][scorer][kind] is not None] if kind in shown else []
            if not scored:  # PED does not apply to the scorer, or no model has its score
                axis.axis("off")
                continue
            scores = [row["scores"][scorer][kind] for row in scored]
            names = [row["name"] for row in scored]
            if truth:
                measures = (evaluation.get(scorer) or {}).get(kind) or {}
                _scatter(axis, names, scores, [truth[n] for n in names], title, measures.get("weighted_tau"))
            else:
                _bars(axis, names, scores, title)
    if truth:
        heading = ("Does each score predict fine-tuning accuracy? (weighted tau: 1 = perfect ranking, "
                   "0 = no better than chance, -1 = reversed)")
    else:
        heading = "Models ranked by each score (higher = predicted to transfer better)"
    if failed:
        heading += f"\n{failed} model(s) failed and are not shown; see results.json"
    figure.suptitle(heading, fontsize=11)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _scatter(axis, names, scores, accuracies, title, tau):
    axis.scatter(scores, accuracies, color="tab:blue")
    for name, x, y in zip(names, scores, accuracies):
        axis.annotate(name, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    if len(names) < 2:
        tau_text = "undefined (one model)"
    elif tau is None or not math.isfinite(tau):
        tau_text = "undefined (constant scores)"
    else:
        tau_text = f"{tau:.3f}"
    axis.set_title(f"{title}: weighted tau {tau_text}", fontsize=10)
    axis.set_xlabel(f"{title} score (higher = predicted better)")
    axis.set_ylabel("fine-tuning accuracy (ground truth)")
    axis.grid(alpha=0.3)


def _bars(axis, names, scores, title):
    # Bars start just below the lowest score, not at 0: LogME and GBC are
    # often negative, and only the differences between models matter.
    order = sorted(range(len(names)), key=lambda i: scores[i])
    low, high = min(scores), max(scores)
    start = low - 0.1 * ((high - low) or abs(low) or 1.0)
    ranked = [f"{len(order) - position}. {names[i]}" for position, i in enumerate(order)]
    axis.barh(ranked, [scores[i] - start for i in order], left=start, color="tab:blue")
    for position, i in enumerate(order):
        axis.annotate(f"{scores[i]:.4g}", (scores[i], position), textcoords="offset points", xytext=(3, 0),
                      va="center", fontsize=7)
    axis.set_title(f"ranked by {title} (best at the top)", fontsize=10)
    axis.set_xlabel(f"{title} score")
    axis.locator_params(axis="x", nbins=5)
    axis.tick_params(axis="y", labelsize=8)
    axis.grid(axis="x", alpha=0.3)


def format_table(results) -> str:
    """The table printed at the end of a screen: one line per model, then the
    ranking measures (with ground truth) and the warnings."""
    scorers = results["scorers"]
    truth = results.get("ground_truth") or {}
    combined = results.get("combined", {})
    width = max([5] + [len(row["name"]) for row in results["models"]])
    columns = [display_name(s, k) for s in scorers for k in ("baseline", "ped")] + list(combined)
    widths = [max(10, len(c)) for c in columns]
    header = f"{'model':<{width}} {'D':>5} {'N':>6} {'steps':>5} " + " ".join(f"{c:>{w}}" for c, w in zip(columns,
                                                                                                        widths))
    header += (f" {'accuracy':>9}" if truth else "") + f" {'seconds':>8}"
    lines, marked = [header], False
    for row in results["models"]:
        if row["error"]:
            lines.append(f"{row['name']:<{width}} failed: {row['error']}")
            continue
        cells = [_cell(row["scores"][s][k], _saturated(row["scores"][s], k)) for s in scorers
                 for k in ("baseline", "ped")]
        cells += [_cell(values.get(row["name"]), None) for values in combined.values()]
        cells = [f"{cell:>{w}}" for cell, w in zip(cells, widths)]
        marked = marked or any(_saturated(row["scores"][s], k) for s in scorers for k in ("baseline", "ped"))
        steps = "-" if row["steps"] is None else row["steps"]
        line = f"{row['name']:<{width}} {row['dim']:>5} {row['n']:>6} {steps:>5} {' '.join(cells)}"
        line += (f" {truth[row['name']]:>9.4g}" if truth else "") + f" {row['seconds'].get('total', 0.0):>8.2f}"
        lines.append(line + ("  *" if row["warnings"] else ""))
    if marked:
        lines.append("value*: saturated, it carries no ranking information (the reason is among the warnings)")
    if results.get("evaluation"):
        lines += ["", format_evaluation(results["evaluation"])]
    notes = [w["message"] for w in results.get("warnings", [])]
    notes += [f"{row['name']}: {w}" for row in results["models"] for w in row["warnings"] if w not in notes]
    if notes:
        lines += ["", "warnings (* in the table):"] + [f"  - {note}" for note in notes]
    return "\n".join(lines)


def format_evaluation(table) -> str:
    """The ranking measures, one line per scorer and kind (plain, PED; none
    for a PED score that does not exist) and per combination."""
    names = {(scorer, kind): _row_label(scorer, kind) for scorer, measures in table.items() for kind in measures}
    width = max([12] + [len(name) for name in names.values()])
    lines = [f"{'ranking by':<{width}} " + " ".join(f"{m:>12}" for m in MEASURES)]
    for (scorer, kind), name in names.items():
        measures = table[scorer][kind]
        if measures is not None:
            lines.append(f"{name:<{width}} " + " ".join(f"{_number(measures[m]):>12}" for m in MEASURES))
    return "\n".join(lines)


def _row_label(scorer, kind):
    """The row label of a score: display_name's, or a combination's SPEC."""
    return scorer if kind == "combined" else display_name(scorer, kind)


def _cell(value, saturated):
    """A table cell of width 10: the value, with * in place of its leading
    space when it saturated; "n/a" for a score that does not exist."""
    if value is None:
        return f"{'n/a':>10}"
    return f"{value:>9.4f}*" if saturated else f"{value:>10.4f}"


def _number(value):
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.3f}"
