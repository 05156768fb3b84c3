"""The screen's report: results.json, results.csv, ranking.png and the
printed table; the ranking measures against ground-truth accuracies (from
ped_fast.evaluate)."""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

from ..evaluate import evaluate
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


def write_report(results, out) -> list:
    """Write results.json, results.csv and ranking.png into `out`; returns
    their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / name for name in FILES]
    _write_text(paths[0], json.dumps(json_safe(results), indent=2) + "\n")
    write_csv(results, paths[1])
    plot_ranking(results, paths[2])
    return paths


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


def _write_text(path, text):
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def write_csv(results, path):
    """One line per model: its scores, plain and PED, per scorer."""
    scorers = results["scorers"]
    truth = results.get("ground_truth") or {}
    combined = results.get("combined", {})
    header = ["name", "dim", "n", "steps"]
    for scorer in scorers:
        header += [display_name(scorer, "baseline"), display_name(scorer, "ped")]
    header += list(combined)
    header += (["accuracy"] if truth else []) + ["seconds", "identity", "saturated", "warnings", "error"]
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "w", newline="") as f:
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
    os.replace(temporary, path)


def plot_ranking(results, path):
    """With ground truth: each scorer's score (plain and PED) against the
    fine-tuning accuracy, one panel each, weighted tau in the title. Without:
    the models ranked by each score, as bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in results["models"] if not row["error"]]
    scorers = results["scorers"]
    truth = results.get("ground_truth")
    failed = len(results["models"]) - len(rows)
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
                _scatter(axis, names, scores, [truth[n] for n in names], title,
                         results["evaluation"][scorer][kind]["weighted_tau"])
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
    tau_text = "undefined (constant scores)" if tau is None or not math.isfinite(tau) else f"{tau:.3f}"
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
