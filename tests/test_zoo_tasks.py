"""Several target tasks in one screen (issue 16 point 4): screen_tasks /
`ped-fast screen --tasks` builds each model once per pass and computes its
reference statistics once for all tasks, writes each task's report and the
summary across tasks; `ped-fast summarize` builds the same summary from
finished screens; bad task files are one-line errors before any work."""
import csv
import importlib
import json
import math

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from ped_fast.__main__ import main
from ped_fast.evaluate import weighted_tau
from ped_fast.zoo import screen, screen_tasks, summarize
from ped_fast.zoo.extract import Settings
from ped_fast.zoo.tasks import SUMMARY_FILES, load_tasks
from zoo_helpers import small_checkpoint, write_image_folder

extract_module = importlib.import_module("ped_fast.zoo.extract")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    write_image_folder(root / "one", classes=3, per_class=6, size=32)
    write_image_folder(root / "two", classes=2, per_class=8, size=32, seed=3)
    write_image_folder(root / "reference", classes=2, per_class=5, size=32, seed=7, labelled=False)
    # A features task: four models' features and reference features, as files.
    rng = np.random.default_rng(0)
    features = root / "three"
    features.mkdir()
    labels = np.repeat(np.arange(3), 10)
    np.save(features / "labels.npy", labels)
    for index, name in enumerate(("w", "x", "y", "z")):
        centres = rng.normal(size=(3, 6)) * (index + 1)
        np.save(features / f"{name}.npy", (centres[labels] + rng.normal(size=(30, 6))).astype(np.float32))
        np.save(features / f"{name}.reference.npy", rng.normal(size=(20, 6)).astype(np.float32))
    torch.manual_seed(5)
    # A checkpoint that does not fit its architecture: the model fails when built.
    save_file(timm.create_model("test_resnet").state_dict(), str(root / "wrong.safetensors"))
    (root / "truth_one.json").write_text(json.dumps({"a": 0.8, "b": [0.6, 0.64], "c": 0.7, "bad": 0.5}))
    (root / "truth_three.json").write_text(json.dumps({"w": 0.5, "x": 0.6, "y": 0.7, "z": 0.8}))
    tasks = root / "tasks.json"
    tasks.write_text(json.dumps([{"name": "one", "data": "one", "ground_truth": "truth_one.json"},
                                 {"name": "two", "data": "two"},
                                 {"name": "three", "features": "three", "ground_truth": "truth_three.json"}]))
    return {"root": root, "tasks": tasks, "reference": root / "reference",
            "specs": [f"a:test_convnext={small_checkpoint(root / 'a', 'test_convnext', 1)}",
                      f"b:test_convnext={small_checkpoint(root / 'b', 'test_convnext', 2)}",
                      f"c:test_resnet={small_checkpoint(root / 'c', 'test_resnet', 3)}",
                      f"bad:test_convnext={root / 'wrong.safetensors'}"]}


@pytest.fixture(scope="module")
def screened(zoo, tmp_path_factory):
    """screen_tasks over the three tasks, counting model builds and forward
    passes."""
    out, cache = tmp_path_factory.mktemp("out"), tmp_path_factory.mktemp("cache")
    builds, forwards = [], []
    load, forward = Settings.load, extract_module._forward

    def counting_load(self, spec):
        builds.append(spec.label)
        return load(self, spec)

    def counting_forward(model, batch, precision, **options):
        forwards.append(len(batch))
        return forward(model, batch, precision, **options)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Settings, "load", counting_load)
        patch.setattr(extract_module, "_forward", counting_forward)
        result = screen_tasks(zoo["specs"], zoo["tasks"], zoo["reference"], scorers="sfda,logme", out=out,
                              cache=cache, batch_size=10, progress=False, bootstrap=200)
    return {"result": result, "out": out, "cache": cache, "builds": builds, "forwards": forwards}


def test_each_model_built_once_and_reference_computed_once(screened):
    # One pass holds every model (tiny weights): each is built once, the
    # failing one too (its error is the row of both data tasks).
    assert sorted(screened["builds"]) == ["a", "b", "bad", "c"]
    # Per model that builds: task one's 18 images (2 batches of 10), task
    # two's 16 (2) and the reference's 10 (1): the reference once, not once
    # per task.
    assert sorted(screened["forwards"]) == sorted([10, 8, 10, 6, 10] * 3)
    tasks = screened["result"]["tasks"]
    for name in ("one", "two"):
        rows = {row["name"]: row for row in tasks[name]["models"]}
        assert rows["bad"]["error"] and "test_convnext" in rows["bad"]["error"]
        assert all(rows[m]["error"] is None for m in "abc")
    assert [row["name"] for row in tasks["three"]["models"]] == ["w", "x", "y", "z"]
    # The first task's rows time the one reference pass; the second's read it.
    for m in "abc":
        first, second = ({row["name"]: row for row in tasks[name]["models"]}[m] for name in ("one", "two"))
        assert "reference" in first["seconds"] and "reference" not in first["cached"]
        assert "reference" in second["cached"] and "extract" in second["seconds"]


def test_each_task_as_its_own_screen(zoo, screened, tmp_path):
    """The shared phase changes no number: task two screened alone, in a
    cache of its own, gives the same scores."""
    alone = screen(zoo["specs"][:3], zoo["root"] / "two", zoo["reference"], scorers="sfda,logme", cache=tmp_path,
                   batch_size=10, progress=False)
    shared = {row["name"]: row["scores"] for row in screened["result"]["tasks"]["two"]["models"]}
    for row in alone["models"]:
        for scorer in ("sfda", "logme"):
            for kind in ("baseline", "ped"):
                assert math.isclose(row["scores"][scorer][kind], shared[row["name"]][scorer][kind], rel_tol=1e-9)


def test_reports_and_summary_files(screened):
    out, summary = screened["out"], screened["result"]["summary"]
    for name in ("one", "two", "three"):
        assert (out / name / "results.json").is_file() and (out / name / "results.csv").is_file()
    assert json.loads((out / "summary.json").read_text()) == summary
    assert summary["rankings"] == ["SFDA", "PED+SFDA", "LOGME", "PED+LOGME"]
    tasks = {task["name"]: task for task in summary["tasks"]}
    assert tasks["two"]["note"] == "no ground truth: not judged" and tasks["two"]["best"] == []
    assert summary["judged_tasks"] == 2
    # The summary's taus and intervals are each task's report's (same seed, same resamples).
    for name in ("one", "three"):
        evaluation = screened["result"]["tasks"][name]["evaluation"]
        for scorer in ("sfda", "logme"):
            for kind, label in (("baseline", scorer.upper()), ("ped", f"PED+{scorer.upper()}")):
                entry = tasks[name]["rankings"][label]
                assert entry["weighted_tau"] == evaluation[scorer][kind]["weighted_tau"]
                assert entry["interval"] == evaluation[scorer][kind]["interval"]["weighted_tau"]
    # The mean row: the mean of the judged tasks' taus, saturated ones left
    # out (SFDA saturates on these few images: D >= N).
    assert tasks["one"]["rankings"]["SFDA"]["saturated"] and summary["mean"]["SFDA"]["weighted_tau"] is None
    for label in ("LOGME", "PED+LOGME"):
        taus = [tasks[name]["rankings"][label]["weighted_tau"] for name in ("one", "three")]
        assert summary["mean"][label]["weighted_tau"] == pytest.approx(np.mean(taus), abs=1e-15)
        assert summary["mean"][label]["tasks"] == 2
        assert summary["mean"][label]["interval"] is None  # two tasks: too few to resample
    assert sum(summary["win_rate"].values()) == pytest.approx(1.0)
    with open(out / "summary.csv", newline="") as f:
        lines = list(csv.reader(f))
    assert lines[0][:6] == ["task", "models", "best", "SFDA", "SFDA low", "SFDA high"]
    assert [line[0] for line in lines[1:]] == ["one", "two", "three", "mean", "win rate", "resolved wins"]
    text = (out / SUMMARY_FILES[2]).read_text()  # the Markdown table
    assert "| task | models | SFDA | PED+SFDA | LOGME | PED+LOGME |" in text
    assert "| **mean** | 2 tasks |" in text and "| **win rate** |" in text
    assert "- two: no ground truth: not judged" in text
    assert "| one | 3 | 0.203* |" in text.replace(f"{tasks['one']['rankings']['SFDA']['weighted_tau']:.3f}", "0.203")


def test_summarize_command_gives_the_same_summary(screened, tmp_path, capsys):
    out = screened["out"]
    assert main(["summarize", str(out / "one"), str(out / "two" / "results.json"), f"three={out / 'three'}",
                 "--bootstrap", "200", "--out", str(tmp_path)]) == 0
    again = json.loads((tmp_path / "summary.json").read_text())
    first = screened["result"]["summary"]
    def without_paths(summary):
        return [{k: v for k, v in task.items() if k != "results"} for task in summary["tasks"]]

    assert without_paths(again) == without_paths(first)
    assert {k: v for k, v in again.items() if k != "tasks"} == {k: v for k, v in first.items() if k != "tasks"}
    assert "| **mean** |" in capsys.readouterr().out


def test_screen_tasks_command(zoo, screened, tmp_path, capsys):
    """The command over the same cache: every score is cached, no model is
    built; exit 1 (a model failed), the summary printed and written."""
    status = main(["screen", "--tasks", str(zoo["tasks"]), "--models", ",".join(zoo["specs"]), "--reference",
                   str(zoo["reference"]), "--scorers", "sfda,logme", "--cache", str(screened["cache"]),
                   "--out", str(tmp_path), "--batch-size", "10", "--bootstrap", "200", "--quiet"])
    captured = capsys.readouterr()
    assert status == 1 and "bad" in captured.err
    assert "| task | models | SFDA | PED+SFDA | LOGME | PED+LOGME |" in captured.out
    assert json.loads((tmp_path / "summary.json").read_text())["tasks"] == \
        [dict(task, results=str(tmp_path / task["name"] / "results.json"))
         for task in screened["result"]["summary"]["tasks"]]


def fake_results(scores, truth):
    """A results dict of rows with the given {scorer: {kind: {model: score}}}."""
    models = list(truth)
    rows = [{"name": m, "error": None,
             "scores": {s: {kind: by_kind[kind][m] for kind in ("baseline", "ped")} | {"saturated": {}}
                        for s, by_kind in scores.items()}} for m in models]
    return {"scorers": list(scores), "models": rows, "ground_truth": truth}


def test_win_rate_mean_and_resolution_known_answers():
    m = 40
    truth = {f"m{i}": float(i) for i in range(m)}
    perfect = {f"m{i}": float(i) for i in range(m)}
    reverse = {f"m{i}": float(-i) for i in range(m)}
    noise = {f"m{i}": float(v) for i, v in enumerate(np.random.default_rng(1).permutation(m))}
    tasks = {
        # SFDA perfect and alone at the top, far ahead: a resolved win.
        "a": fake_results({"sfda": {"baseline": perfect, "ped": noise}, "logme": {"baseline": reverse, "ped": noise}},
                          truth),
        # SFDA and PED+SFDA tie (the same ranking): they share the task.
        "b": fake_results({"sfda": {"baseline": perfect, "ped": perfect},
                           "logme": {"baseline": noise, "ped": reverse}}, truth),
        # PED+LOGME wins.
        "c": fake_results({"sfda": {"baseline": noise, "ped": reverse},
                           "logme": {"baseline": reverse, "ped": perfect}}, truth),
    }
    summary = summarize(tasks, bootstrap=300)
    assert summary["win_rate"] == {"SFDA": pytest.approx(0.5), "PED+SFDA": pytest.approx(1 / 6), "LOGME": 0.0,
                                   "PED+LOGME": pytest.approx(1 / 3)}
    assert summary["resolved_wins"] == {"SFDA": pytest.approx(1 / 3), "PED+SFDA": 0.0, "LOGME": 0.0,
                                        "PED+LOGME": pytest.approx(1 / 3)}
    by_name = {task["name"]: task for task in summary["tasks"]}
    assert by_name["b"]["best"] == ["SFDA", "PED+SFDA"]
    assert by_name["a"]["rankings"]["LOGME"]["versus_best"]["resolved"] is True
    # The mean over tasks, and its interval from resampling them.
    expected = np.mean([1.0, 1.0, weighted_tau(list(noise.values()), list(truth.values()))])
    assert summary["mean"]["SFDA"]["weighted_tau"] == pytest.approx(expected)
    low, high = summary["mean"]["SFDA"]["interval"]
    assert low < expected < high <= 1.0
    perfect_everywhere = summarize({name: fake_results({"sfda": {"baseline": perfect, "ped": perfect}}, truth)
                                    for name in "abc"}, bootstrap=100)
    assert perfect_everywhere["mean"]["SFDA"] == {"weighted_tau": 1.0, "interval": [1.0, 1.0], "tasks": 3}


def test_few_models_leave_the_win_unresolved():
    truth = {"m0": 0.1, "m1": 0.2, "m2": 0.3, "m3": 0.4}
    good = {"m0": 0.0, "m1": 1.0, "m2": 2.0, "m3": 3.0}
    worse = {"m0": 1.0, "m1": 0.0, "m2": 2.0, "m3": 3.0}
    summary = summarize({"t": fake_results({"sfda": {"baseline": good, "ped": worse}}, truth)}, bootstrap=300)
    task = summary["tasks"][0]
    assert task["best"] == ["SFDA"]
    assert task["rankings"]["PED+SFDA"]["versus_best"]["resolved"] is False
    assert summary["resolved_wins"]["SFDA"] == 0.0 and summary["win_rate"]["SFDA"] == 1.0


def test_saturated_ranking_never_wins():
    truth = {f"m{i}": float(i) for i in range(5)}
    perfect = {f"m{i}": float(i) for i in range(5)}
    weaker = {"m0": 1.0, "m1": 0.0, "m2": 2.0, "m3": 4.0, "m4": 3.0}
    results = fake_results({"sfda": {"baseline": perfect, "ped": weaker}}, truth)
    for row in results["models"]:
        row["scores"]["sfda"]["saturated"] = {"baseline": "SFDA within 1e-6 of 1.0"}
    summary = summarize({"t": results, "u": fake_results({"sfda": {"baseline": perfect, "ped": weaker}}, truth)},
                        bootstrap=100)
    task = summary["tasks"][0]
    assert task["best"] == ["PED+SFDA"] and task["rankings"]["SFDA"]["saturated"]
    assert summary["mean"]["SFDA"]["tasks"] == 1 and summary["mean"]["PED+SFDA"]["tasks"] == 2
    assert summary["win_rate"] == {"SFDA": 0.5, "PED+SFDA": 0.5}


@pytest.mark.parametrize("entries, message", [
    ({"name": "x"}, "tasks file"),
    ([], "must be a non-empty list of tasks"),
    ([{"name": "one", "data": "one", "truth": "t.json"}], "task 'one': unknown field 'truth'"),
    ([{"name": "one"}], "task 'one': give exactly one of \"data\""),
    ([{"name": "one", "data": "one", "features": "three"}], "got data and features"),
    ([{"name": "one", "data": "one"}, {"name": "one", "data": "two"}], "tasks 1 and 2 are both named 'one'"),
    ([{"name": "../up", "data": "one"}], "task 1: \"name\" must be a name for its report folder"),
    ([{"name": "one", "data": "missing"}], "task 'one': data"),
    ([{"name": "one", "data": 3}], "task 'one': \"data\" must be a path"),
    ([{"name": "one", "features": "missing"}], "task 'one': features folder"),
    ([{"name": "one", "data": "one", "ground_truth": "nowhere.json"}], "task 'one': ground-truth file"),
    ([{"name": "one", "data": "one", "ground_truth": "truth_three.json"}],
     "task 'one': ground-truth file"),
    ([{"name": "one", "data": "reference"}], "task 'one': data"),
])
def test_bad_tasks_file_is_one_line_before_any_work(zoo, tmp_path, capsys, entries, message):
    tasks = zoo["root"] / "bad_tasks.json"
    tasks.write_text(json.dumps(entries))
    with pytest.raises(SystemExit) as exit_:
        main(["screen", "--tasks", str(tasks), "--models", ",".join(zoo["specs"][:3]), "--reference",
              str(zoo["reference"]), "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out"), "--quiet"])
    assert exit_.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in error, error
    assert not (tmp_path / "cache" / "features").exists()


def test_tasks_excludes_data_and_ground_truth(zoo, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["screen", "--tasks", str(zoo["tasks"]), "--data", str(zoo["root"] / "one"), "--models", "x",
              "--reference", "self", "--out", str(tmp_path)])
    assert exit_.value.code == 2 and "--tasks" in capsys.readouterr().err


def test_tasks_from_a_list_and_bad_summarize_input(zoo, tmp_path):
    tasks = load_tasks([{"name": "t", "features": str(zoo["root"] / "three")}])
    assert tasks[0].features == str(zoo["root"] / "three") and tasks[0].data is None
    with pytest.raises(ValueError, match="two screens are named 'three'"):
        summarize([zoo["root"] / "missing" / "three", zoo["root"] / "other" / "three"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        summarize([zoo["root"] / "missing" / "results.json"])


def test_tasks_sharing_a_folder_extract_it_once(zoo, tmp_path, monkeypatch):
    forwards = []
    forward = extract_module._forward

    def counting_forward(model, batch, precision, **options):
        forwards.append(len(batch))
        return forward(model, batch, precision, **options)

    monkeypatch.setattr(extract_module, "_forward", counting_forward)
    tasks = [{"name": "p", "data": str(zoo["root"] / "one")}, {"name": "q", "data": str(zoo["root"] / "one")}]
    screened = screen_tasks(zoo["specs"][:1], tasks, "self", scorers="logme", cache=tmp_path, batch_size=10,
                            progress=False)
    assert forwards == [10, 8]  # one pass over the 18 images, for both tasks
    assert screened["tasks"]["p"]["models"][0]["scores"] == screened["tasks"]["q"]["models"][0]["scores"]
    assert screened["summary"]["judged_tasks"] == 0 and screened["summary"]["win_rate"] == {"LOGME": None,
                                                                                            "PED+LOGME": None}
