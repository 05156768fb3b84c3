"""screen() (ped_fast.zoo.screen): cached re-runs, failing models as error
rows, --features folders, ground truth, warnings."""
import importlib
import json

import numpy as np
import pytest
import torch

import ped_fast
from ped_fast.evaluate import evaluate
from ped_fast.zoo import failed, screen
from zoo_helpers import small_checkpoint, write_image_folder

extract_module = importlib.import_module("ped_fast.zoo.extract")
score_module = importlib.import_module("ped_fast.zoo.scoring")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("screen")
    write_image_folder(root / "data", classes=3, per_class=8, size=32)
    write_image_folder(root / "reference", classes=2, per_class=5, size=32, seed=7, labelled=False)
    return {
        "root": root,
        "data": root / "data",
        "reference": root / "reference",
        # All three record SMALL_CONFIG, so they share every decoded batch.
        "specs": [f"a:test_convnext={small_checkpoint(root / 'a', 'test_convnext', 1)}",
                  f"b:test_convnext={small_checkpoint(root / 'b', 'test_convnext', 2)}",
                  f"c:test_resnet={small_checkpoint(root / 'c', 'test_resnet', 3)}"],
    }


def counting_forward(monkeypatch):
    calls = []
    original = extract_module._forward

    def forward(model, batch, precision, **options):
        calls.append(type(model).__name__)
        return original(model, batch, precision, **options)

    monkeypatch.setattr(extract_module, "_forward", forward)
    return calls


def scores(results):
    return {row["name"]: row["scores"] for row in results["models"]}


def test_cached_rerun_does_no_forward_pass(zoo, tmp_path, monkeypatch):
    calls = counting_forward(monkeypatch)
    first = screen(zoo["specs"], zoo["data"], zoo["reference"], scorers="sfda,logme", cache=tmp_path,
                   batch_size=10, progress=False)
    # 24 data images in batches of 10 (3 batches) and 10 reference images
    # (1 batch), for each of the 3 models; the two convnexts share batches.
    assert len(calls) == 3 * (3 + 1)
    assert all(row["cached"] == [] and "extract" in row["seconds"] for row in first["models"])

    calls.clear()
    monkeypatch.setattr(score_module, "score_features", lambda *a, **k: pytest.fail("re-scored"))
    again = screen(zoo["specs"], zoo["data"], zoo["reference"], scorers="sfda,logme", cache=tmp_path,
                   batch_size=10, progress=False)
    assert calls == []
    assert scores(again) == scores(first)
    assert all(row["cached"] == ["features", "reference", "scores"] for row in again["models"])
    assert all("extract" not in row["seconds"] for row in again["models"])


def test_new_scorer_reuses_cached_features(zoo, tmp_path, monkeypatch):
    first = screen(zoo["specs"][:2], zoo["data"], "self", scorers="sfda", cache=tmp_path, progress=False)
    calls = counting_forward(monkeypatch)
    more = screen(zoo["specs"][:2], zoo["data"], "self", scorers="sfda,gbc", cache=tmp_path, progress=False)
    assert calls == []
    for name in ("a", "b"):
        assert scores(more)[name]["sfda"] == scores(first)[name]["sfda"]
        assert "gbc" in scores(more)[name]
    assert all(row["cached"] == ["features", "scores"] for row in more["models"])


def test_failing_model_is_an_error_row(zoo, tmp_path, monkeypatch):
    """A checkpoint that cannot be read, and an out-of-memory error in the
    middle of a shared pass: both become error rows; the other models of
    the pass are scored."""
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not safetensors at all")
    original = extract_module._forward
    seen = []

    def forward(model, batch, precision, **options):
        seen.append(model)
        if model is seen[0] and len(seen) > 2:  # model a, on its second batch
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(model, batch, precision, **options)

    monkeypatch.setattr(extract_module, "_forward", forward)
    specs = zoo["specs"][:2] + [f"bad:test_resnet={bad}"]
    results = screen(specs, zoo["data"], "self", cache=tmp_path, batch_size=10, progress=False)
    rows = {row["name"]: row for row in results["models"]}
    assert rows["a"]["error"] == "OutOfMemoryError: CUDA out of memory (simulated)"
    assert rows["b"]["error"] is None and rows["b"]["scores"]["sfda"]["baseline"] > 0
    assert rows["bad"]["error"].startswith("ValueError: model 'bad': cannot read safetensors file")
    assert failed(results) == ["a", "bad"]
    # Nothing half-written was left for a: a re-run extracts it again.
    monkeypatch.setattr(extract_module, "_forward", original)
    again = screen(zoo["specs"][:2], zoo["data"], "self", cache=tmp_path, batch_size=10, progress=False)
    assert failed(again) == []
    assert {row["name"]: row["cached"] for row in again["models"]} == {"a": [], "b": ["features", "scores"]}


def test_scorer_exception_is_an_error_row(zoo, tmp_path, monkeypatch):
    """The second scorer fails: the row is an error row with empty scores
    (as results.json documents), not the first scorer's score beside an
    error."""
    original = score_module.score_features

    def broken(features, labels, scorers, **options):
        if "gbc" in scorers:
            raise np.linalg.LinAlgError("singular matrix (simulated)")
        return original(features, labels, scorers, **options)

    monkeypatch.setattr(score_module, "score_features", broken)
    results = screen(zoo["specs"][:1], zoo["data"], "self", scorers=("sfda", "gbc"), cache=tmp_path,
                     progress=False)
    assert results["models"][0]["error"] == "LinAlgError: singular matrix (simulated)"
    assert results["models"][0]["scores"] == {}
    assert failed(results) == ["a"]


def test_ground_truth_missing_models_are_named(zoo, tmp_path):
    truth = tmp_path / "truth.json"
    truth.write_text(json.dumps({"a": 0.5, "zzz": 0.2}))
    with pytest.raises(ValueError, match=r"ground-truth file '.*truth\.json' has no accuracy for the models "
                                         r"\['b', 'c'\]"):
        screen(zoo["specs"], zoo["data"], "self", ground_truth=truth, cache=tmp_path, progress=False)
    assert not (tmp_path / "features").exists()  # refused before any work


def test_evaluation_and_report_files(zoo, tmp_path):
    truth = {"a": 0.61, "b": 0.4, "c": 0.75}
    results = screen(zoo["specs"], zoo["data"], zoo["reference"], scorers=["sfda", "gbc"], ground_truth=truth,
                     cache=tmp_path / "c", out=tmp_path / "out", progress=False)
    for scorer in ("sfda", "gbc"):
        for kind in ("baseline", "ped"):
            expected = evaluate({name: s[scorer][kind] for name, s in scores(results).items()}, truth)
            got = results["evaluation"][scorer][kind]
            measures = ("weighted_tau", "kendall_tau", "pearson", "rel@1", "rel@3")
            assert {k: got[k] for k in measures} == {k: expected[k] for k in measures}
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    assert written["models"] == json.loads(json.dumps(results["models"]))
    assert written["ground_truth"] == truth and written["ped_fast_version"] == ped_fast.__version__
    lines = (tmp_path / "out" / "results.csv").read_text().splitlines()
    assert lines[0].startswith("name,dim,n,steps,SFDA,PED+SFDA,GBC,PED+GBC,accuracy")
    assert [line.split(",")[0] for line in lines[1:]] == ["a", "b", "c"]
    assert (tmp_path / "out" / "ranking.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def write_features(folder, labels, models):
    folder.mkdir()
    np.save(folder / "labels.npy", labels)
    for name, (x, reference) in models.items():
        np.save(folder / f"{name}.npy", x)
        if reference is not None:
            np.save(folder / f"{name}.reference.npy", reference)


def test_features_folder_matches_ped_score(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 120)
    models = {}
    for name, dim in (("wide", 40), ("narrow", 6)):
        x = rng.standard_normal((4, dim))[labels] + rng.standard_normal((120, dim))
        models[name] = (x.astype(np.float32), rng.standard_normal((90, dim)) + 0.3)
    write_features(tmp_path / "f", labels, models)
    stats_x = rng.standard_normal((50, 6))
    np.savez(tmp_path / "f" / "narrow.reference_stats.npz", mean=stats_x.mean(0), std=stats_x.std(0))
    (tmp_path / "f" / "narrow.reference.npy").unlink()
    results = screen(features=tmp_path / "f", scorers="sfda,logme", cache=tmp_path / "c", progress=False)
    rows = {row["name"]: row for row in results["models"]}
    references = {"wide": models["wide"][1], "narrow": (stats_x.mean(0), stats_x.std(0))}
    for name, (x, _) in models.items():
        for scorer in ("sfda", "logme"):
            direct = ped_fast.ped_score(x, labels, scorer, reference=references[name], return_baseline=True)
            # Streamed reference statistics vs ped()'s own: equal to ~1e-15,
            # amplified by the dynamics and the scorer to ~1e-12 at most.
            assert rows[name]["scores"][scorer]["baseline"] == pytest.approx(direct.baseline, rel=1e-10)
            assert rows[name]["scores"][scorer]["ped"] == pytest.approx(direct.ped, rel=1e-10)
            assert rows[name]["steps"] == direct.result.steps
        assert (rows[name]["dim"], rows[name]["n"]) == (x.shape[1], 120)
    selfish = screen(features=tmp_path / "f", reference="self", cache=tmp_path / "c", progress=False)
    direct = ped_fast.ped_score(models["wide"][0], labels, "sfda", rescale="self", return_baseline=True)
    assert scores(selfish)["wide"]["sfda"]["ped"] == pytest.approx(direct.ped, rel=1e-10)


@pytest.mark.parametrize("problem, message", [
    ("rows", r"'.*m\.npy' has 29 rows but '.*labels\.npy' has 30 labels"),
    ("reference", r"'.*m\.reference\.npy' has shape \(10, 4\), but the reference of 'm' must be M x 5"),
    ("stats", r"reference statistics from '.*m\.reference_stats\.npz' have 3 dimensions but model 'm' has "
              r"5-dimensional"),
    ("no reference", r"model 'm' has no reference: expected '.*m\.reference\.npy' or "),
    ("no labels", r"features folder '.*' has no labels\.npy"),
])
def test_features_folder_errors(tmp_path, problem, message):
    rng = np.random.default_rng(0)
    labels = np.arange(30) % 3
    x = rng.standard_normal((29 if problem == "rows" else 30, 5))
    reference = rng.standard_normal((10, 4 if problem == "reference" else 5))
    write_features(tmp_path / "f", labels, {"m": (x, None if problem in ("stats", "no reference") else reference)})
    if problem == "stats":
        np.savez(tmp_path / "f" / "m.reference_stats.npz", mean=np.zeros(3), std=np.ones(3))
    if problem == "no labels":
        (tmp_path / "f" / "labels.npy").unlink()
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        screen(features=tmp_path / "f", cache=tmp_path / "c", progress=False)


def test_saturation_and_tie_warnings(tmp_path):
    """SFDA is 1.0 when D >= N (the features separate every sample); two
    identical models tie on every score."""
    rng = np.random.default_rng(0)
    labels = np.arange(12) % 3
    wide = rng.standard_normal((12, 40))
    write_features(tmp_path / "f", labels, {"m1": (wide, None), "m2": (wide, None),
                                            "m3": (rng.standard_normal((12, 2)), None)})
    results = screen(features=tmp_path / "f", reference="self", scorers="sfda,logme", cache=tmp_path / "c",
                     progress=False)
    messages = [w["message"] for w in results["warnings"]]
    saturated = [m for m in messages if m.startswith("SFDA: sfda is 1") and m.endswith("(2 model(s): m1, m2)")]
    tie = [m for m in messages if m.startswith("LOGME: 2 models tie for the top score") and "(m1, m2)" in m]
    assert len(saturated) == len(tie) == 1
    rows = {row["name"]: row for row in results["models"]}
    assert saturated[0] in rows["m1"]["warnings"] and tie[0] in rows["m2"]["warnings"]
    assert rows["m3"]["warnings"] == []
    assert scores(results)["m3"]["sfda"]["baseline"] < 0.99
