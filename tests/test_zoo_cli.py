"""The ped-fast verbs end to end, offline (issue 9, acceptance 1 and 2):
extract -> reference-stats -> screen -> evaluate checked against timm and
ped_score run directly; a screen killed midway resumes with identical
results; bad input is a one-line error."""
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

import ped_fast
from ped_fast.__main__ import main
from ped_fast.evaluate import evaluate
from ped_fast.zoo import Cache, image_files, image_folder
from zoo_helpers import small_checkpoint, timm_features, write_image_folder

SCORERS = ("sfda", "logme", "gbc")
# Both sides compute the same float32 features with the same batch (one
# batch of all images); what can differ is the order of float64 sums
# (streamed reference statistics, ~1e-15), amplified by PED's six steps and
# the scorers' solves: 1e-9 relative is far above that and far below any
# real difference between two models' scores.
SCORE_TOLERANCE = 1e-9


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    write_image_folder(root / "data", classes=3, per_class=8, size=32)
    write_image_folder(root / "reference", classes=2, per_class=6, size=32, seed=5, labelled=False)
    return root


def test_extract_reference_screen_evaluate(folders, tmp_path, capsys):
    """Acceptance 1: a random-weight model (--no-pretrained) and one from a
    local checkpoint file, through every verb; results.json against timm
    and ped_fast.ped_score run directly."""
    torch.manual_seed(11)
    checkpoint = tmp_path / "resnet.safetensors"
    save_file(timm.create_model("test_resnet").state_dict(), str(checkpoint))
    models = f"rand:test_convnext,ckpt:test_resnet={checkpoint}"
    common = ["--models", models, "--cache", str(tmp_path / "cache"), "--no-pretrained", "--quiet"]
    assert main(["extract", *common, "--data", str(folders / "data"), "--out", str(tmp_path / "f")]) == 0
    assert main(["reference-stats", *common, "--reference", str(folders / "reference"),
                 "--out", str(tmp_path / "f")]) == 0
    out = capsys.readouterr().out
    assert "rand: 24 x 64 features in" in out and "ckpt: mean and std of 96 dimensions over 12 images" in out
    assert main(["screen", *common, "--data", str(folders / "data"), "--reference", str(folders / "reference"),
                 "--scorers", ",".join(SCORERS), "--out", str(tmp_path / "report")]) == 0
    table = capsys.readouterr().out
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    # The screen reused what extract and reference-stats cached.
    assert [row["cached"] for row in results["models"]] == [["features", "reference"]] * 2

    # The same numbers with timm and ped_score, without ped_fast.zoo.
    torch.manual_seed(0)  # --no-pretrained: random weights seeded with --seed (0)
    random_model = timm.create_model("test_convnext")
    checkpoint_model = timm.create_model("test_resnet")
    checkpoint_model.load_state_dict(load_file(str(checkpoint)))
    data, reference = image_folder(folders / "data"), image_files(folders / "reference")
    labels = data.labels
    expected_identity = {"rand": "random:seed=0",
                         "ckpt": "sha256:" + hashlib.sha256(checkpoint.read_bytes()).hexdigest()}
    assert results["scorers"] == list(SCORERS) and results["ped_fast_version"] == ped_fast.__version__
    assert results["data"]["images"] == 24 and results["reference"]["images"] == 12
    rows = {row["name"]: row for row in results["models"]}
    assert list(rows) == ["rand", "ckpt"]
    for name, model in (("rand", random_model), ("ckpt", checkpoint_model)):
        features = timm_features(model, [data.file(i) for i in range(len(data))])
        reference_features = timm_features(model, [reference.file(i) for i in range(len(reference))])
        np.testing.assert_array_equal(np.load(tmp_path / "f" / f"{name}.npy"), features)
        stats = np.load(tmp_path / "f" / f"{name}.reference_stats.npz")
        mean, std = reference_features.astype(np.float64).mean(0), reference_features.astype(np.float64).std(0)
        np.testing.assert_allclose(stats["mean"], mean, rtol=1e-12, atol=0)
        np.testing.assert_allclose(stats["std"], std, rtol=1e-12, atol=0)
        row = rows[name]
        assert (row["dim"], row["n"], row["error"], row["identity"]) == (features.shape[1], 24, None,
                                                                        expected_identity[name])
        for scorer in SCORERS:
            direct = ped_fast.ped_score(features, labels, scorer, reference=reference_features, return_baseline=True)
            assert row["scores"][scorer]["baseline"] == pytest.approx(direct.baseline, rel=SCORE_TOLERANCE)
            assert row["scores"][scorer]["ped"] == pytest.approx(direct.ped, rel=SCORE_TOLERANCE)
            assert row["steps"] == direct.result.steps
        assert name in table
    np.testing.assert_array_equal(np.load(tmp_path / "f" / "labels.npy"), labels)

    truth = tmp_path / "truth.json"
    truth.write_text(json.dumps({"rand": 0.55, "ckpt": 0.8, "unused": 0.1}))
    assert main(["evaluate", "--results", str(tmp_path / "report" / "results.json"), "--ground-truth", str(truth),
                 "--out", str(tmp_path / "evaluated")]) == 0
    printed = capsys.readouterr().out.splitlines()
    evaluated = json.loads((tmp_path / "evaluated" / "results.json").read_text())
    for scorer in SCORERS:
        for kind, title in (("baseline", scorer.upper()), ("ped", f"PED+{scorer.upper()}")):
            direct = evaluate({name: rows[name]["scores"][scorer][kind] for name in rows}, {"rand": 0.55, "ckpt": 0.8},
                              ks=(1,))
            measures = evaluated["evaluation"][scorer][kind]
            assert measures["rel@1"] == direct["rel@1"] and measures["rel@3"] is None
            # Saturated SFDA gives both models 1.0: tau is NaN, written as null.
            assert measures["kendall_tau"] == (None if math.isnan(direct["kendall_tau"]) else direct["kendall_tau"])
            (line,) = [line for line in printed if line.split()[:1] == [title]]
            assert line.split()[4] == f"{direct['rel@1']:.3f}"


def test_evaluate_names_missing_models(folders, tmp_path):
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"scorers": ["sfda"], "models": [
        {"name": n, "error": None, "scores": {"sfda": {"baseline": s, "ped": s}}} for n, s in
        (("m1", 0.2), ("m2", 0.3), ("m3", 0.1))]}))
    truth = tmp_path / "truth.json"
    truth.write_text(json.dumps({"m2": 0.5}))
    done = subprocess.run([sys.executable, "-m", "ped_fast", "evaluate", "--results", str(results),
                           "--ground-truth", str(truth)], capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "python -m ped_fast evaluate: error: the ground truth has no accuracy for the models ['m1', 'm3'] "
        "(it has ['m2'])")


@pytest.mark.parametrize("arguments, message", [
    (["screen", "--models", "test_resnet", "--data", "{tmp}/nowhere", "--reference", "self"],
     "data folder '{tmp}/nowhere' does not exist"),
    (["screen", "--models", "test_resnet", "--data", "{tmp}/empty", "--reference", "self"],
     "data folder '{tmp}/empty' has no class subfolders"),
    (["screen", "--models", "test_resnet", "--data", "{data}", "--reference", "{tmp}/empty"],
     "reference folder '{tmp}/empty' holds no images"),
    (["screen", "--models", "test_resnet", "--data", "{data}"], "reference is required"),
    (["screen", "--models", "test_resnat", "--data", "{data}", "--reference", "self"],
     "unknown timm model name 'test_resnat'; close matches: test_resnet"),
    (["extract", "--models", "a:test_resnet={tmp}/none.safetensors", "--data", "{data}"],
     "weights file '{tmp}/none.safetensors' does not exist"),
    (["screen", "--models", "test_resnet", "--data", "{data}", "--reference", "self", "--scorers", "sfda,foo"],
     "unknown scorer 'foo': expected 'all' or one or more of sfda, logme, "),
    (["screen", "--models", "test_resnet", "--data", "{data}", "--reference", "self", "--backend", "nope"],
     "--backend nope: backend must be 'auto' or one of"),
    (["reference-stats", "--models", "test_resnet", "--reference", "{data}", "--device", "cuda:7"],
     "device 'cuda:7': "),
])
def test_bad_input_is_a_one_line_error(folders, tmp_path, arguments, message, capsys):
    (tmp_path / "empty").mkdir()
    fill = {"tmp": str(tmp_path), "data": str(folders / "data")}
    with pytest.raises(SystemExit) as exit_info:
        main([a.format(**fill) for a in arguments] + ["--no-pretrained", "--cache", str(tmp_path / "c")])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    error = lines[-1]
    assert error.startswith(f"ped-fast {arguments[0]}: error: ") and message.format(**fill) in error
    assert lines[0].startswith("usage:") and not any(line.startswith("Traceback") for line in lines)


def test_interrupted_screen_resumes_with_identical_results(folders, tmp_path):
    """Acceptance 2: a real screen process, killed (SIGKILL) right after the
    first model's features reach the cache, then run again: the finished
    work is not redone, the results equal an uninterrupted screen's, and no
    temporary or unreadable file is left in the cache."""
    specs = ",".join(f"{name}:{arch}={small_checkpoint(tmp_path / name, arch, seed)}"
                     for name, arch, seed in (("m1", "test_resnet", 1), ("m2", "test_convnext", 2),
                                              ("m3", "test_resnet", 3), ("m4", "test_convnext", 4)))
    cache = tmp_path / "cache"
    command = [sys.executable, "-m", "ped_fast", "screen", "--models", specs, "--data", str(folders / "data"),
               "--reference", str(folders / "reference"), "--scorers", "sfda,logme", "--cache", str(cache),
               "--out", str(tmp_path / "report"), "--batch-size", "4", "--models-per-pass", "1", "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120

    def entries():  # complete entries: temporary files are hidden (".tmp-..."), which pathlib's glob matches too
        return [f for f in (cache / "features").glob("*.json") if not f.name.startswith(".")]

    while not entries():
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "no features entry appeared"
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    process.stderr.close()
    finished = {json.loads(f.read_text())["meta"]["label"] for f in entries()}
    assert 1 <= len(finished) < 4, finished  # killed midway

    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    resumed = json.loads((tmp_path / "report" / "results.json").read_text())
    rows = {row["name"]: row for row in resumed["models"]}
    # Models whose features were finished before the kill were not extracted again.
    assert {name for name, row in rows.items() if "features" in row["cached"]} == finished
    assert all(("extract" in row["seconds"]) == (name not in finished) for name, row in rows.items())

    assert main(command[3:-1] + ["--cache", str(tmp_path / "fresh"), "--out", str(tmp_path / "fresh-report"),
                                 "--quiet"]) == 0
    fresh = json.loads((tmp_path / "fresh-report" / "results.json").read_text())
    for key in ("name", "dim", "n", "steps", "scores", "error", "identity"):
        assert [row[key] for row in resumed["models"]] == [row[key] for row in fresh["models"]]

    leftovers = [p for p in cache.rglob("*") if p.name.startswith(".tmp-")]
    assert leftovers == []
    reader = Cache(cache)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an unreadable entry warns and reads as missing
        for manifest in cache.glob("*/*.json"):
            assert reader.get(manifest.parent.name, manifest.stem) is not None
