"""The report (ped_fast.zoo.report) and the demo's verdict, on hand-made
results: the table, the CSV, the plot files, ground-truth files."""
import json
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.text import Text  # noqa: E402
from PIL import Image  # noqa: E402

from ped_fast.evaluate import evaluate  # noqa: E402
from ped_fast.zoo.demo import verdict  # noqa: E402
from ped_fast.zoo.report import (MEASURES, TABLE_WIDTH, GroundTruth, evaluation, format_evaluation,  # noqa: E402
                                 format_table, json_safe, load_ground_truth, ranking_figure, recorded_ground_truth,
                                 write_report)


def results(truth=None):
    def row(name, sfda, ped, error=None, warnings=()):
        return {"name": name, "dim": 64, "n": 300, "steps": 6, "error": error, "warnings": list(warnings),
                "scores": {} if error else {"sfda": {"baseline": sfda, "ped": ped}}, "seconds": {"total": 1.5},
                "identity": f"sha256:{name}", "cached": []}

    out = {"scorers": ["sfda"], "models": [row("good", 0.8, 0.9), row("fair", 0.6, 0.95, warnings=["w1"]),
                                           row("poor", 0.5, 0.55), row("broken", 0, 0, error="ValueError: bad")],
           "warnings": [{"models": [], "message": "3 image(s) of the data folder could not be decoded"}]}
    if truth:
        from ped_fast.zoo.report import evaluation

        out["ground_truth"] = truth
        out["evaluation"] = evaluation(out, truth)
    return out


def test_table_lists_every_model_errors_and_warnings():
    lines = format_table(results()).splitlines()
    assert lines[0].split() == ["model", "D", "N", "steps", "SFDA", "PED+SFDA", "seconds"]
    assert lines[1].split() == ["good", "64", "300", "6", "0.8000", "0.9000", "1.50"]
    assert lines[2].endswith("*") and lines[4] == "broken failed: ValueError: bad"
    assert "  - 3 image(s) of the data folder could not be decoded" in lines
    assert "  - fair: w1" in lines


def test_evaluation_in_table_and_verdict():
    truth = {"good": 0.9, "fair": 0.7, "poor": 0.5, "broken": 0.1}
    table = format_table(results(truth)).splitlines()
    assert table[0].split()[-2:] == ["accuracy", "seconds"]
    ped_line = next(line for line in table if line.startswith("PED+SFDA "))
    sfda_line = next(line for line in table if line.startswith("SFDA "))
    assert sfda_line.split()[1:3] == ["1.000", "1.000"]  # plain SFDA orders the three as the accuracies do
    assert float(ped_line.split()[1]) < 1
    lines = verdict(results(truth))
    assert lines[0].startswith("PED+SFDA ranked the zoo worse than SFDA: weighted tau")
    assert lines[1] == "best ranking of this zoo: SFDA (weighted tau 1.000; 1 = the fine-tuning order)"


def test_report_files(tmp_path):
    for folder, truth in (("plain", None), ("truth", {"good": 0.9, "fair": 0.7, "poor": 0.5})):
        data = results(truth)
        paths = write_report(data, tmp_path / folder)
        assert [p.name for p in paths] == ["results.json", "results.csv", "ranking.png"]
        assert json.loads(paths[0].read_text())["models"][3]["error"] == "ValueError: bad"
        csv_lines = paths[1].read_text().splitlines()
        assert csv_lines[0] == ("name,dim,n,steps,SFDA,PED+SFDA," + ("accuracy," if truth else "")
                                + "seconds,identity,saturated,warnings,error")
        assert csv_lines[4].startswith("broken,64,300,6,,,") and csv_lines[4].endswith("ValueError: bad")
        assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.rglob(".*.tmp"))


def leep_results():
    """Two scorers: sfda, saturated for one model, and leep (no PED score;
    no value for a model without a classifier head)."""
    def row(name, sfda, leep, saturated=None):
        return {"name": name, "dim": 8, "n": 6, "steps": 6, "error": None, "warnings": [], "seconds": {"total": 1.0},
                "identity": name, "cached": [],
                "scores": {"sfda": {"baseline": sfda, "ped": sfda, "saturated": {"baseline": saturated, "ped": None}},
                           "leep": {"baseline": leep, "ped": None, "saturated": {"baseline": None, "ped": None}}}}

    return {"scorers": ["sfda", "leep"], "warnings": [],
            "models": [row("x", 1.0, -0.5, saturated="sfda is 1"), row("y", 0.7, None), row("z", 0.6, -0.9)]}


def test_saturated_and_missing_scores_in_table_csv_and_plot(tmp_path):
    lines = format_table(leep_results()).splitlines()
    assert lines[0].split()[4:8] == ["SFDA", "PED+SFDA", "LEEP", "PED+LEEP"]
    assert lines[1].split()[4:8] == ["1.0000*", "1.0000", "-0.5000", "n/a"]
    assert lines[2].split()[6:8] == ["n/a", "n/a"]
    assert len({len(line) for line in lines[:4]}) == 1  # the marker keeps the columns aligned
    assert "value*: saturated" in lines[4]
    paths = write_report(leep_results(), tmp_path)
    csv_lines = paths[1].read_text().splitlines()
    assert csv_lines[1].split(",")[4:8] == ["1.0", "1.0", "-0.5", "n/a"]
    assert csv_lines[1].split(",")[-3] == "SFDA" and csv_lines[2].split(",")[-3] == ""
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluation_skips_missing_scores_and_adds_combined():
    data = leep_results()
    data["combined"] = {"minmax:sfda+leep": {"x": 0.5, "y": None, "z": 0.25}}
    truth = {"x": 0.9, "y": 0.2, "z": 0.5}
    table = evaluation(data, truth)
    assert table["leep"]["ped"] is None and table["leep"]["ped_vs_baseline"] is None
    expected = evaluate({"x": -0.5, "z": -0.9}, {"x": 0.9, "z": 0.5}, ks=(1,))
    assert {k: table["leep"]["baseline"][k] for k in MEASURES} == {k: expected.get(k) for k in MEASURES}
    assert table["leep"]["baseline"]["interval"] == dict.fromkeys(MEASURES)  # two models: no interval
    expected = evaluate({"x": 0.5, "z": 0.25}, {"x": 0.9, "z": 0.5}, ks=(1,))
    assert list(table["minmax:sfda+leep"]) == ["combined"]
    combined = table["minmax:sfda+leep"]["combined"]
    assert {k: combined[k] for k in MEASURES} == {k: expected.get(k) for k in MEASURES}
    assert combined["saturated"] == ["x"]  # a term (SFDA) saturated for x
    lines = format_evaluation(table).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("ranking by"))
    assert [line.split()[0] for line in lines[start + 1:start + 5]] == ["SFDA", "PED+SFDA", "LEEP",
                                                                      "minmax:sfda+leep"]


def test_json_safe_turns_nan_into_null():
    assert json_safe({"a": [1.0, math.nan, {"b": math.inf}], "c": "x"}) == {"a": [1.0, None, {"b": None}], "c": "x"}


@pytest.mark.parametrize("text, message", [
    ("[1, 2]", "must hold a JSON object"),
    ("{}", "an empty object"),
    ('{"a": "high"}', r"accuracies must be finite numbers or non-empty lists of them .*, but \['a'\]"),
    ('{"a": [], "b": [0.5, "x"], "c": [0.5, 0.6]}', r"but \['a', 'b'\] are not"),
    ('{"a": 0.5,', "is not valid JSON"),
])
def test_ground_truth_file_errors(tmp_path, text, message):
    (tmp_path / "truth.json").write_text(text)
    with pytest.raises(ValueError, match=message):
        load_ground_truth(tmp_path / "truth.json")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_ground_truth(tmp_path / "none.json")


def zoo(m, *, scorers=("sfda",), truth=None, seed=0, saturated=(), ped=None, prefix=""):
    """m models scored by `scorers` (the baseline a noisy copy of the
    accuracy, PED as `ped(accuracy, rng)` or another noisy copy); `truth`
    {name: accuracy or [per seed]}; scorers in `saturated` at 4.0 to
    within 1e-11 and flagged, as the H-score of three real-size models was
    (issue 16). Models are named prefix + m0, m1, ..."""
    rng = np.random.default_rng(seed)
    names = [f"{prefix}m{i}" for i in range(m)]
    accuracies = {n: float(np.mean(truth[n])) if truth else float(rng.random()) for n in names}
    rows = []
    for index, name in enumerate(names):
        scores = {}
        for scorer in scorers:
            if scorer in saturated:
                value = 4.0 - index * 1e-12
                scores[scorer] = {"baseline": value, "ped": value - 1e-12,
                                  "saturated": {"baseline": "hscore is 4", "ped": "hscore is 4"}}
                continue
            base = accuracies[name] + rng.normal(0, 0.3)
            moved = ped(accuracies[name], rng) if ped else accuracies[name] + rng.normal(0, 0.3)
            scores[scorer] = {"baseline": base, "ped": moved, "saturated": {"baseline": None, "ped": None}}
        rows.append({"name": name, "dim": 192, "n": 100, "steps": 6, "error": None, "warnings": [], "scores": scores,
                     "seconds": {"total": 1.0}, "identity": name, "cached": []})
    results = {"scorers": list(scorers), "models": rows, "warnings": []}
    if truth:
        results["ground_truth"] = truth
        results["evaluation"] = evaluation(results, truth)
    return results


def test_evaluation_has_intervals_and_ped_against_plain():
    """Issue 16.1-2: each measure gains its interval; each scorer its
    paired PED-vs-plain comparison, said in words."""
    truth = {f"m{i}": 0.5 + 0.01 * i for i in range(40)}
    data = zoo(40, truth=truth, ped=lambda accuracy, rng: accuracy + rng.normal(0, 0.002))
    table = data["evaluation"]["sfda"]
    for kind in ("baseline", "ped"):
        assert set(table[kind]) == set(MEASURES) | {"interval", "bootstrap", "saturated"}
        assert set(table[kind]["interval"]) == set(MEASURES) and table[kind]["saturated"] == []
        low, high = table[kind]["interval"]["weighted_tau"]
        assert low <= table[kind]["weighted_tau"] <= high
        assert table[kind]["bootstrap"]["resamples"] == 1000 and table[kind]["bootstrap"]["confidence"] == 0.95
    versus = table["ped_vs_baseline"]
    assert set(versus) == {"p_better", "delta_weighted_tau", "delta", "saturated"}
    assert versus["delta_weighted_tau"][0] > 0 and versus["p_better"] > 0.99  # PED nearly is the accuracy here
    assert versus["delta"] == pytest.approx(table["ped"]["weighted_tau"] - table["baseline"]["weighted_tau"])
    words = format_evaluation(data["evaluation"]).splitlines()
    assert words[0].startswith("95% intervals: percentile bootstrap, 1000 resamples of the models")
    (line,) = [w for w in words if w.startswith("  SFDA: PED +")]
    assert line.endswith("resolved, PED ranks better")
    noise = zoo(12, truth={f"m{i}": 0.5 + 0.01 * i for i in range(12)}, seed=1)
    (line,) = [w for w in format_evaluation(noise["evaluation"]).splitlines() if w.startswith("  SFDA: ")]
    assert line.endswith("not resolved at 95%")
    again = evaluation(noise, noise["ground_truth"], bootstrap=200, confidence=0.8, seed=3)
    assert again["sfda"]["ped"]["bootstrap"] == {"resamples": 200, "confidence": 0.8, "seed": 3, "models": 12,
                                                 "seeds_resampled": False,
                                                 "undefined": dict.fromkeys(MEASURES, 0)}
    assert again == evaluation(noise, noise["ground_truth"], bootstrap=200, confidence=0.8, seed=3)
    assert "interval" not in evaluation(noise, noise["ground_truth"], bootstrap=0)["sfda"]["ped"]


def test_ground_truth_with_seeds(tmp_path):
    """Issue 16.3: per-seed lists (mixed with plain numbers) load; the mean
    ranks and is what the table prints, the spread widens the interval."""
    per_seed = {f"m{i}": [0.5 + 0.01 * i - 0.05, 0.5 + 0.01 * i + 0.05] for i in range(12)}
    per_seed["m0"] = 0.5
    (tmp_path / "truth.json").write_text(json.dumps(per_seed))
    truth = load_ground_truth(tmp_path / "truth.json")
    assert isinstance(truth, GroundTruth) and truth["m3"] == pytest.approx(0.53) and truth["m0"] == 0.5
    assert truth.seeds["m3"] == per_seed["m3"] and truth.seeds["m0"] == [0.5]
    assert recorded_ground_truth(truth, ["m0", "m3"]) == {"m0": 0.5, "m3": per_seed["m3"]}
    data = zoo(12, truth=recorded_ground_truth(truth, list(truth)))
    means = evaluation(data, dict(truth))["sfda"]["baseline"]
    seeded = evaluation(data, truth)["sfda"]["baseline"]
    assert seeded["weighted_tau"] == means["weighted_tau"]
    assert seeded["bootstrap"]["seeds_resampled"] and not means["bootstrap"]["seeds_resampled"]
    assert seeded["interval"]["weighted_tau"] != means["interval"]["weighted_tau"]
    assert evaluation(data, per_seed) == evaluation(data, truth)  # a dict with lists works as well
    lines = format_table(data).splitlines()
    assert lines[4].split()[-2] == f"{truth['m3']:.4g}"  # the mean
    paths = write_report(data, tmp_path / "out")
    assert json.loads(paths[0].read_text())["ground_truth"]["m3"] == per_seed["m3"]
    csv_line = paths[1].read_text().splitlines()[4].split(",")
    assert float(csv_line[6]) == pytest.approx(truth["m3"])


def test_saturated_scores_are_not_judged_as_rankings():
    """Issue 16.6: three H-scores at 4.0 to within 1e-11, flagged: their
    measures are marked in results.json, the table shows no interval and
    says why, the comparison is not made, the plot's title marks them."""
    truth = {"resnet18": 0.81, "vit_tiny": 0.74, "convnext": 0.86}
    data = zoo(3, scorers=("hscore", "sfda"), saturated=("hscore",), truth=None)
    for row, name in zip(data["models"], truth):
        row["name"] = name
    data["ground_truth"] = truth
    data["evaluation"] = evaluation(data, truth)
    hscore = data["evaluation"]["hscore"]
    for kind in ("baseline", "ped"):
        assert hscore[kind]["saturated"] == list(truth)
        assert math.isfinite(hscore[kind]["weighted_tau"])  # a number: it ranks floating-point noise
    assert hscore["ped_vs_baseline"]["saturated"] == list(truth)
    assert data["evaluation"]["sfda"]["baseline"]["saturated"] == []
    lines = format_evaluation(data["evaluation"]).splitlines()
    for title in ("HSCORE", "PED+HSCORE"):
        (line,) = [line for line in lines if line.split()[:1] == [title]]
        assert line.endswith("* saturated scores (3 model(s)): noise, not a result") and "[" not in line
    assert "  HSCORE: not compared: saturated scores (3 model(s)) rank noise" in lines
    (line,) = [line for line in lines if line.split()[:1] == ["SFDA"]]
    assert "saturated" not in line
    figure = ranking_figure(data)
    titles = [axis.get_title() for axis in figure.axes]
    assert "(saturated: noise)" in titles[0] and "*" in titles[0] and "saturated" not in titles[1]


def test_many_models_table_fits_and_all_shows_everything(tmp_path):
    """Issue 15.6: 200 models, every scorer, long names, failures and
    warnings: the default printed table fits 120 columns (the best 20, the
    scores that rank), "all" has every row and column, so does the CSV."""
    from ped_fast.scorers import available

    scorers = [record.name for record in available()]
    data = zoo(200, scorers=scorers, seed=2, prefix="vit_base_patch16_clip_224.openai_ft_in12k_in1k_")
    for row in data["models"]:
        for scorer in ("leep", "nce"):
            row["scores"][scorer]["ped"] = None
    for row in data["models"][:15]:
        row["error"], row["scores"] = "RuntimeError: CUDA out of memory. " + "x" * 200, {}
    data["models"][20]["warnings"] = ["LEEP: no score, the model has no classifier head " + "y" * 150]
    fitted = format_table(data, width=TABLE_WIDTH).splitlines()
    assert max(len(line) for line in fitted) <= TABLE_WIDTH
    header = fitted[0].split()
    assert header[0] == "model" and "PED+SFDA" in header and "LEEP" in header and "PED+LEEP" not in header
    assert header[-1] == "PED+REG_HSCORE"  # the PED scores that fit, in order; nothing less telling after them
    assert sum(line.startswith("vit_base_patch1...") and "failed:" not in line for line in fitted) == 20
    assert sum("failed:" in line for line in fitted) == 10
    assert any(line.startswith("... and 5 more failed models") for line in fitted)
    assert any(line.startswith("the 20 best of 185 scored models by PED+SFDA") for line in fitted)
    assert any(line.startswith("columns not shown:") for line in fitted)
    best = max(data["models"][15:], key=lambda row: row["scores"]["sfda"]["ped"])
    assert fitted[1].startswith("vit_base_patch1...") and fitted[1].split()[0].endswith(best["name"][-12:])
    full = format_table(data).splitlines()
    columns = [column for s in scorers for column in (s.upper(), f"PED+{s.upper()}")]
    assert full[0].split() == ["model", "D", "N", "steps"] + columns + ["seconds"]
    assert sum(line.startswith("vit_base_patch16") for line in full) == 200
    paths = write_report(data, tmp_path)
    assert len(paths[1].read_text().splitlines()) == 201


def test_small_zoo_table_is_whole_when_it_fits():
    """A small zoo (8 models, 4 scorers, ground truth) fits 120 columns
    with every column and row: fitting it changes nothing."""
    truth = {f"m{i}": 0.2 + 0.07 * i for i in range(8)}
    data = zoo(8, scorers=("sfda", "logme", "nleep", "gbc"), truth=truth)
    assert format_table(data, width=TABLE_WIDTH) == format_table(data)
    assert max(len(line) for line in format_table(data).splitlines()) <= TABLE_WIDTH


def texts_that_overlap(figure):
    """Pairs of drawn texts whose boxes intersect: titles, axis and tick
    labels inside the view, model labels (their text, not their leader
    lines), the figure's title and legend."""
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    texts = list(figure.texts) + [text for legend in figure.legends for text in legend.get_texts()]
    for axis in figure.axes:
        texts += [axis.title, axis.xaxis.label, axis.yaxis.label, *axis.texts]
        low, high = sorted(axis.get_xlim())
        texts += [t for t in axis.get_xticklabels() if low <= t.get_position()[0] <= high]
        low, high = sorted(axis.get_ylim())
        texts += [t for t in axis.get_yticklabels() if low <= t.get_position()[1] <= high]
    boxes = [(t.get_text(), Text.get_window_extent(t, renderer)) for t in texts
             if t.get_visible() and t.get_text().strip()]
    return [(a[0], b[0]) for i, a in enumerate(boxes) for b in boxes[i + 1:]
            if a[1].x0 < b[1].x1 and b[1].x0 < a[1].x1 and a[1].y0 < b[1].y1 and b[1].y0 < a[1].y1]


@pytest.mark.parametrize("with_truth", [True, False])
def test_ranking_png_has_a_bounded_size_and_nothing_overlaps(tmp_path, with_truth):
    """Issue 15.6: one panel per scorer, whatever the number of models: 8
    and 200 models give the same image size; model labels (every model's
    for 8, the best and worst few for 200) overlap nothing."""
    scorers = ("sfda", "logme", "nleep", "gbc")
    sizes = {}
    for m in (8, 200):
        prefix = "convnext_tiny.fb_in22k_ft_in1k_"
        truth = {f"{prefix}m{i}": [0.3 + 0.002 * i, 0.32 + 0.002 * i] for i in range(m)} if with_truth else None
        data = zoo(m, scorers=scorers, truth=truth, seed=m, prefix=prefix)
        write_report(data, tmp_path / str(m))
        with Image.open(tmp_path / str(m) / "ranking.png") as image:
            sizes[m] = image.size
        figure = ranking_figure(data)
        assert texts_that_overlap(figure) == []
        labels = [text.get_text() for axis in figure.axes for text in axis.texts]
        assert len(labels) == len(scorers) * min(m, 8)
        plt.close(figure)
    assert sizes[8] == sizes[200] and sizes[200][0] <= 1400 and sizes[200][1] <= 1000
