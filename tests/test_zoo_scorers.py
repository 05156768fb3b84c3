"""screen() with every registered scorer (leep and nce from the models'
logits), saturation diagnostics, reduce="pca:K" and --combine."""
import csv
import json

import numpy as np
import pytest

import ped_fast
from ped_fast.__main__ import main
from ped_fast.evaluate import evaluate
from ped_fast.scorers import available, leep, nce
from ped_fast.zoo import extract, format_table, screen
from ped_fast.zoo.extract import export_features
from ped_fast.zoo.report import MEASURES
from zoo_helpers import small_checkpoint, write_image_folder

# Scores computed by the screen and by the scorer called directly on the
# same float32 arrays run the same float64 code on the same numbers; only
# the PED path's streamed statistics differ (~1e-15), amplified by PED's
# steps to ~1e-12 at most (tests/test_zoo_screen.py): 1e-10 is far above.
SCORE_TOLERANCE = 1e-10


def write_features(folder, labels, models):
    """labels.npy and per model NAME.npy, optional NAME.logits.npy and
    NAME.reference.npy: models {name: (features, logits, reference)}."""
    folder.mkdir()
    np.save(folder / "labels.npy", labels)
    for name, (x, logits, reference) in models.items():
        np.save(folder / f"{name}.npy", x)
        for suffix, array in ((".logits.npy", logits), (".reference.npy", reference)):
            if array is not None:
                np.save(folder / f"{name}{suffix}", array)


def gaussian_models(rng, labels, dims, classes=3):
    return {name: (rng.standard_normal((classes, dim))[labels] + rng.standard_normal((labels.size, dim)),
                   rng.standard_normal((labels.size, 7)), rng.standard_normal((40, dim)) + 0.2)
            for name, dim in dims.items()}


def test_all_scorers_features_folder(tmp_path):
    """scorers="all": every registered scorer; leep and nce from
    NAME.logits.npy with no PED score; a model without logits gets null
    scores and a warning, not an error."""
    rng = np.random.default_rng(0)
    labels = np.arange(45) % 3
    models = gaussian_models(rng, labels, {"m1": 5, "m2": 4})
    models["headless"] = (models["m2"][0] * 2.0, None, None)
    write_features(tmp_path / "f", labels, models)
    results = screen(features=tmp_path / "f", reference="self", scorers="all", cache=tmp_path / "c", progress=False)
    names = [record.name for record in available()]
    assert results["scorers"] == names and {"leep", "nce", "sfda"} <= set(names)
    rows = {row["name"]: row for row in results["models"]}
    assert all(row["error"] is None and list(row["scores"]) == names for row in rows.values())
    for name in ("m1", "m2"):
        logits = models[name][1]
        for scorer, function in (("leep", leep), ("nce", nce)):
            score = rows[name]["scores"][scorer]
            assert score["baseline"] == pytest.approx(function(logits, labels, logits=True), rel=SCORE_TOLERANCE)
            assert score["ped"] is None and score["saturated"] == {"baseline": None, "ped": None}
        direct = ped_fast.ped_score(models[name][0], labels, "knn", rescale="self", return_baseline=True)
        assert rows[name]["scores"]["knn"]["ped"] == pytest.approx(direct.ped, rel=SCORE_TOLERANCE)
    headless = rows["headless"]
    assert headless["scores"]["leep"] == {"baseline": None, "ped": None, "saturated": {"baseline": None, "ped": None}}
    assert any(w.startswith("LEEP: no score, the model has no classifier head") for w in headless["warnings"])
    assert headless["scores"]["sfda"]["baseline"] is not None
    table = format_table(results)
    header, *lines = table.splitlines()
    position = header.split().index("PED+LEEP")
    assert lines[0].split()[position] == "n/a"  # m1 (rows sorted by name: headless, m1, m2)
    # Cached re-run: the same row, warnings included, from the cache.
    again = screen(features=tmp_path / "f", reference="self", scorers="all", cache=tmp_path / "c", progress=False)
    assert [row["scores"] for row in again["models"]] == [row["scores"] for row in results["models"]]
    assert [row["cached"] for row in again["models"]] == [["scores"]] * 3
    assert again["models"][0]["warnings"] == headless["warnings"]


def test_logits_from_image_zoo_and_extract_out(tmp_path):
    """In the image mode leep reads the logits the extraction cached; the
    --features layout that extract --out writes gives the same score."""
    write_image_folder(tmp_path / "data", classes=3, per_class=6, size=32)
    spec = f"r:test_resnet={small_checkpoint(tmp_path / 'r', 'test_resnet', 4)}"
    results = screen([spec], tmp_path / "data", "self", scorers="leep,nce", cache=tmp_path / "c", progress=False,
                     predictions="exact")
    feature_sets = extract([spec], tmp_path / "data", cache=tmp_path / "c", progress=False, predictions="exact")
    logits, labels = np.asarray(feature_sets["r"].predictions.arrays["logits"]), feature_sets["r"].labels
    assert logits.shape == (18, 1000)  # test_resnet's ImageNet head
    row = results["models"][0]
    assert row["error"] is None and row["steps"] is None  # no PED ran
    assert row["scores"]["leep"]["baseline"] == pytest.approx(leep(logits, labels, logits=True), rel=SCORE_TOLERANCE)
    assert row["scores"]["nce"]["baseline"] == pytest.approx(nce(logits, labels, logits=True), rel=SCORE_TOLERANCE)
    written = export_features(feature_sets, tmp_path / "f")
    assert tmp_path / "f" / "r.logits.npy" in written
    from_files = screen(features=tmp_path / "f", reference="self", scorers="leep,nce", cache=tmp_path / "c",
                        progress=False)
    assert from_files["models"][0]["scores"] == row["scores"]


def test_saturation_recorded_and_cured_by_reduce(tmp_path):
    """D >= N: SFDA saturates at 1.0 (per score, in the row, the table and
    the CSV); with reduce="pca:3" the same models are not saturated, and
    the scores are ped_score(..., reduce="pca:3")'s."""
    rng = np.random.default_rng(1)
    labels = np.arange(12) % 3
    models = {name: (rng.standard_normal((12, 30)), None, rng.standard_normal((20, 30))) for name in ("w1", "w2")}
    write_features(tmp_path / "f", labels, models)
    plain = screen(features=tmp_path / "f", scorers="sfda", cache=tmp_path / "c", out=tmp_path / "out",
                   progress=False)
    for row in plain["models"]:
        saturated = row["scores"]["sfda"]["saturated"]
        assert saturated["baseline"].startswith("sfda is 1") and "D = 30 >= N = 12" in saturated["baseline"]
    assert any(w["message"].startswith("SFDA: sfda is 1") for w in plain["warnings"])
    table = format_table(plain).splitlines()
    assert table[1].split()[4].endswith("*") and any(line.startswith("value*: saturated") for line in table)
    with open(tmp_path / "out" / "results.csv", newline="") as f:
        header, first, _ = list(csv.reader(f))
    assert first[header.index("saturated")] == "SFDA | PED+SFDA"  # PED's moved features still have D >= N

    reduced = screen(features=tmp_path / "f", scorers="sfda", cache=tmp_path / "c", reduce="pca:3", progress=False)
    for row in reduced["models"]:
        direct = ped_fast.ped_score(models[row["name"]][0], labels, "sfda", reference=models[row["name"]][2],
                                    reduce="pca:3", return_baseline=True)
        score = row["scores"]["sfda"]
        assert score["saturated"] == {"baseline": None, "ped": None} and score["baseline"] < 0.99
        assert score["baseline"] == pytest.approx(direct.baseline, rel=SCORE_TOLERANCE)
        assert score["ped"] == pytest.approx(direct.ped, rel=SCORE_TOLERANCE)
    assert not any("sfda is 1" in w["message"] for w in reduced["warnings"])
    selfish = screen(features=tmp_path / "f", reference="self", scorers="sfda", cache=tmp_path / "c",
                     reduce="pca:3", progress=False)
    direct = ped_fast.ped_score(models["w1"][0], labels, "sfda", rescale="self", reduce="pca:3", return_baseline=True)
    assert selfish["models"][0]["scores"]["sfda"]["ped"] == pytest.approx(direct.ped, rel=SCORE_TOLERANCE)


def test_reduce_refuses_mean_std_references(tmp_path):
    rng = np.random.default_rng(2)
    labels = np.arange(12) % 3
    write_features(tmp_path / "f", labels, {"m": (rng.standard_normal((12, 5)), None, None)})
    np.savez(tmp_path / "f" / "m.reference_stats.npz", mean=np.zeros(5), std=np.ones(5))
    with pytest.raises(ValueError, match=r"reduce 'pca:2' needs reference features, but model 'm' has only \(mean, "
                                         r"std\) statistics"):
        screen(features=tmp_path / "f", reduce="pca:2", cache=tmp_path / "c", progress=False)
    for bad in ("pca:0", "pca:x", "svd:2"):
        with pytest.raises(ValueError, match=f"reduce must be None or 'pca:K' with K a positive integer, got '{bad}'"):
            screen(features=tmp_path / "f", reference="self", reduce=bad, cache=tmp_path / "c", progress=False)
    write_image_folder(tmp_path / "data", classes=2, per_class=2, size=32)
    with pytest.raises(ValueError, match=r"reduce 'pca:2' needs reference 'self' or, with features, "
                                         r"NAME\.reference\.npy"):
        screen(["test_resnet"], tmp_path / "data", tmp_path / "data", reduce="pca:2", pretrained=False,
               cache=tmp_path / "c", progress=False)
    assert not (tmp_path / "c" / "features").exists()  # refused before any work


def test_combine_matches_numpy_and_evaluate(tmp_path):
    rng = np.random.default_rng(3)
    labels = np.arange(36) % 3
    models = gaussian_models(rng, labels, {"a": 3, "b": 6, "c": 4, "d": 5})
    write_features(tmp_path / "f", labels, models)
    truth = {"a": 0.3, "b": 0.9, "c": 0.5, "d": 0.6}
    specs = ["minmax:sfda+logme", "minmax:ped_sfda+leep+logme"]
    results = screen(features=tmp_path / "f", scorers="sfda,logme,leep", combine=specs, ground_truth=truth,
                     cache=tmp_path / "c", progress=False)
    names = [row["name"] for row in results["models"]]

    def column(scorer, kind):
        return np.array([row["scores"][scorer][kind] for row in results["models"]])

    def minmax(values):
        return (values - values.min()) / (values.max() - values.min())

    expected = {specs[0]: (minmax(column("sfda", "baseline")) + minmax(column("logme", "baseline"))) / 2,
                specs[1]: (minmax(column("sfda", "ped")) + minmax(column("leep", "baseline"))
                           + minmax(column("logme", "baseline"))) / 3}
    assert list(results["combined"]) == specs
    for spec in specs:
        got = np.array([results["combined"][spec][name] for name in names])
        np.testing.assert_allclose(got, expected[spec], rtol=1e-12, atol=1e-15)  # float64 rounding only
        direct = evaluate(dict(zip(names, expected[spec])), truth)
        measures = results["evaluation"][spec]["combined"]
        for measure in MEASURES:
            assert measures[measure] == pytest.approx(direct[measure], rel=1e-12)
    header = format_table(results).splitlines()[0].split()
    assert header[-4:] == specs + ["accuracy", "seconds"]


@pytest.mark.parametrize("combine, message", [
    ("sum:sfda+logme", r"combine 'sum:sfda\+logme': expected 'minmax:TERM\+TERM\.\.\.'"),
    ("minmax:sfda+gbc", r"combine 'minmax:sfda\+gbc': 'gbc' is not a screened score; the screened scorers are "
                        r"sfda, leep"),
    ("minmax:sfda+ped_leep", r"'ped_leep': PED does not apply to 'leep'"),
])
def test_combine_errors(tmp_path, combine, message):
    write_features(tmp_path / "f", np.arange(6) % 2, {"m": (np.ones((6, 2)), None, None)})
    with pytest.raises(ValueError, match=message):
        screen(features=tmp_path / "f", reference="self", scorers="sfda,leep", combine=combine, cache=tmp_path / "c",
               progress=False)


def test_cli_all_combine_reduce(tmp_path, capsys):
    rng = np.random.default_rng(4)
    labels = np.arange(30) % 3
    write_features(tmp_path / "f", labels, gaussian_models(rng, labels, {"a": 4, "b": 5, "c": 6}))
    truth = tmp_path / "truth.json"
    truth.write_text(json.dumps({"a": 0.2, "b": 0.5, "c": 0.4}))
    assert main(["screen", "--features", str(tmp_path / "f"), "--scorers", "all", "--reduce", "pca:3",
                 "--combine", "minmax:sfda+nce", "--combine", "minmax:ped_logme+leep", "--ground-truth", str(truth),
                 "--cache", str(tmp_path / "c"), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["scorers"] == [record.name for record in available()]
    assert list(results["combined"]) == ["minmax:sfda+nce", "minmax:ped_logme+leep"]
    assert set(results["evaluation"]["minmax:sfda+nce"]) == {"combined"}
    printed = capsys.readouterr().out
    assert any(line.startswith("minmax:sfda+nce ") for line in printed.splitlines())
    with pytest.raises(SystemExit) as exit_info:
        main(["screen", "--features", str(tmp_path / "f"), "--scorers", "sfda,nope", "--cache", str(tmp_path / "c")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("ped-fast screen: error: unknown scorer 'nope': expected 'all' or one or more of ")
    assert "leep" in error and "knn" in error


def test_registered_probabilities_scorer_gets_softmax(tmp_path):
    """A user's scorer registered with needs="probabilities" and no logits
    option gets the softmax of the model's logits."""
    def mean_true_class(probabilities, labels):
        return float(np.asarray(probabilities)[np.arange(len(labels)), np.asarray(labels)].mean())

    rng = np.random.default_rng(5)
    labels = np.arange(12) % 3
    logits = rng.standard_normal((12, 4))
    write_features(tmp_path / "f", labels, {"m": (rng.standard_normal((12, 3)), logits, None)})
    ped_fast.scorers.register("true_class_test", mean_true_class, needs="probabilities")
    try:
        results = screen(features=tmp_path / "f", reference="self", scorers="true_class_test", cache=tmp_path / "c",
                         progress=False)
    finally:
        ped_fast.scorers.unregister("true_class_test")
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    expected = probabilities[np.arange(12), labels].mean()
    # float64 softmax in torch against numpy's: a few ulps.
    assert results["models"][0]["scores"]["true_class_test"]["baseline"] == pytest.approx(expected, rel=1e-12)
