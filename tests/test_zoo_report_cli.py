"""The report's command-line options (issue 16 points 1-3, issue 15 point
6): --bootstrap, --confidence and the resampling's seed on `evaluate` and
`screen`, per-seed ground truth, `screen --show fit|all`; and the
ground-truth file `finetune_zoo` writes with several seeds."""
import json

import numpy as np
import pytest

from ped_fast.__main__ import main
from ped_fast.zoo.finetune import Recipe, finetune_zoo
from ped_fast.zoo.report import TABLE_WIDTH, load_ground_truth
from test_zoo_scorers import gaussian_models, write_features
from zoo_helpers import small_checkpoint, write_image_folder


def screened(tmp_path, m=12):
    """A finished screen's results.json (sfda, m models) and a per-seed
    ground truth for it."""
    rng = np.random.default_rng(0)
    names = [f"m{i}" for i in range(m)]
    rows = [{"name": name, "error": None, "dim": 8, "n": 30, "steps": 6, "warnings": [], "seconds": {"total": 1.0},
             "scores": {"sfda": {"baseline": float(rng.random()), "ped": float(rng.random()),
                                 "saturated": {"baseline": None, "ped": None}}}} for name in names]
    (tmp_path / "results.json").write_text(json.dumps({"scorers": ["sfda"], "models": rows, "warnings": []}))
    truth = {name: [0.5 + 0.01 * i, 0.52 + 0.01 * i, 0.49 + 0.01 * i] for i, name in enumerate(names)}
    (tmp_path / "truth.json").write_text(json.dumps(truth))
    return tmp_path / "results.json", tmp_path / "truth.json", truth


def test_evaluate_bootstrap_options_and_seeds(tmp_path, capsys):
    results, truth_file, truth = screened(tmp_path)
    arguments = ["evaluate", "--results", str(results), "--ground-truth", str(truth_file), "--bootstrap", "200",
                 "--confidence", "0.9", "--seed", "3"]
    assert main([*arguments, "--out", str(tmp_path / "a")]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("90% intervals: percentile bootstrap, 200 resamples of the models and of each "
                                 "model's fine-tuning seeds (seed 3)")
    assert any(line.startswith("  SFDA: PED ") for line in printed)
    written = json.loads((tmp_path / "a" / "results.json").read_text())
    assert written["ground_truth"] == truth  # the per-seed lists, as the file gives them
    for kind in ("baseline", "ped"):
        measures = written["evaluation"]["sfda"][kind]
        assert measures["bootstrap"] == {"resamples": 200, "confidence": 0.9, "seed": 3, "models": 12,
                                         "seeds_resampled": True, "undefined": {m: 0 for m in measures["interval"]}}
    assert set(written["evaluation"]["sfda"]["ped_vs_baseline"]) == {"delta", "delta_weighted_tau", "p_better",
                                                                     "saturated"}
    # The same seed (by its other name), the same intervals.
    assert main([*arguments[:-2], "--bootstrap-seed", "3", "--out", str(tmp_path / "b")]) == 0
    again = json.loads((tmp_path / "b" / "results.json").read_text())
    assert again["evaluation"] == written["evaluation"]


@pytest.mark.parametrize("option, value, message", [
    ("--confidence", "1.5", "confidence must be a number strictly between 0 and 1"),
    ("--bootstrap", "-5", "bootstrap must be an integer >= 0"),
])
def test_evaluate_bad_bootstrap_option_is_one_line(tmp_path, capsys, option, value, message):
    results, truth_file, _ = screened(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--results", str(results), "--ground-truth", str(truth_file), option, value])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err.splitlines()[-1]


def test_screen_bootstrap_options_and_show(tmp_path, capsys):
    """screen --bootstrap/--bootstrap-seed reach results.json; the printed
    table fits 120 columns by default and --show all prints every column."""
    rng = np.random.default_rng(4)
    labels = np.arange(30) % 3
    write_features(tmp_path / "f", labels, gaussian_models(rng, labels, {f"model_with_a_long_name_{i}": 3 + i
                                                                         for i in range(4)}))
    truth = {f"model_with_a_long_name_{i}": [0.2 + 0.1 * i, 0.25 + 0.1 * i] for i in range(4)}
    (tmp_path / "truth.json").write_text(json.dumps(truth))
    common = ["screen", "--features", str(tmp_path / "f"), "--reference", "self", "--scorers", "all",
              "--ground-truth", str(tmp_path / "truth.json"), "--cache", str(tmp_path / "c"), "--quiet"]
    assert main([*common, "--out", str(tmp_path / "fit"), "--bootstrap", "100", "--bootstrap-seed", "5"]) == 0
    fitted = capsys.readouterr().out.splitlines()
    results = json.loads((tmp_path / "fit" / "results.json").read_text())
    assert results["evaluation"]["sfda"]["ped"]["bootstrap"]["resamples"] == 100
    assert results["evaluation"]["sfda"]["ped"]["bootstrap"]["seed"] == 5
    assert fitted[-1].startswith("wrote the report")  # names --out, however long
    assert max(len(line) for line in fitted[:-1]) <= TABLE_WIDTH
    assert fitted[0].split()[-1] == "accuracy" and any(line.startswith("columns not shown:") for line in fitted)
    assert main([*common, "--out", str(tmp_path / "all"), "--show", "all"]) == 0
    full = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in full) > TABLE_WIDTH and "PED+KNN" in full[0].split()
    assert json.loads((tmp_path / "all" / "results.json").read_text())["evaluation"]["sfda"]["ped"]["bootstrap"][
        "resamples"] == 1000


def test_finetune_zoo_writes_every_seed(tmp_path, monkeypatch):
    """Issue 16.3: with several seeds the ground-truth file keeps each
    seed's accuracy (the returned table, and load_ground_truth's view, are
    their means); with one seed it stays {model: accuracy}."""
    monkeypatch.setenv("PED_FAST_CACHE", str(tmp_path / "cache"))
    train = write_image_folder(tmp_path / "train", classes=2, per_class=4, size=32, seed=0)
    test = write_image_folder(tmp_path / "test", classes=2, per_class=2, size=32, seed=1)
    spec = f"a:test_resnet={small_checkpoint(tmp_path / 'a', 'test_resnet', 1)}"
    recipe = Recipe(epochs=1, lr=1e-3, head_lr_scale=1.0, batch_size=8)
    means = finetune_zoo([spec], train, test, out=tmp_path / "seeds.json", recipe=recipe, seeds=(0, 1),
                         progress=False)
    written = json.loads((tmp_path / "seeds.json").read_text())
    assert isinstance(written["a"], list) and len(written["a"]) == 2
    assert means["a"] == sum(written["a"]) / 2 == load_ground_truth(tmp_path / "seeds.json")["a"]
    one = finetune_zoo([spec], train, test, out=tmp_path / "one.json", recipe=recipe, progress=False)
    assert json.loads((tmp_path / "one.json").read_text()) == one and isinstance(one["a"], float)
