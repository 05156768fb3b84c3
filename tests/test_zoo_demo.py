"""The demo's data and trained zoo (ped_fast.zoo.demo_zoo), at a reduced
size: a few dozen images, one epoch, three checkpoints of three families."""
import json
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

from ped_fast.zoo import demo_zoo
from ped_fast.zoo.demo_zoo import PRETRAINED_CFG, ZOO, Checkpoint, DemoConfig, _Data, build_demo
from ped_fast.zoo.finetune import Recipe
from ped_fast.zoo.models import load_model, parse_models

SMALL = DemoConfig(
    n_source=120, n_train=40, n_test=30, n_photo=60, n_reference=20,
    zoo=(Checkpoint("resnet-digits0-4", "test_resnet", "digits0-4", 1),
         Checkpoint("convnext-rotation", "test_convnext", "rotation", 1),
         Checkpoint("vit-photo-rotation", "test_vit", "photo-rotation", 1, (("img_size", 32), ("patch_size", 8)))),
    source_recipe=Recipe(lr=2e-3, head_lr_scale=1.0, batch_size=32),
    finetune_recipe=Recipe(epochs=1, lr=1e-3, head_lr_scale=1.0, batch_size=16),
    finetune_seeds=(0, 1),
)
LABELS = [ck.label for ck in SMALL.zoo]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return cache, build_demo(cache, config=SMALL, progress=False, workers=2)


def _pngs(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))


def test_layout(built):
    cache, demo = built
    assert demo.root == cache / "demo" / SMALL.key()
    assert sorted(p.name for p in demo.root.iterdir()) == ["finetune", "ground_truth.json", "reference",
                                                           "target-test", "target-train", "zoo"]
    for folder, n in ((demo.target_train, SMALL.n_train), (demo.target_test, SMALL.n_test)):
        files = _pngs(folder)
        assert len(files) == n
        assert {f.split("/")[0] for f in files} <= {str(d) for d in range(10)}
        with Image.open(folder / files[0]) as image:
            assert image.size == (32, 32) and image.mode == "RGB"
    reference = _pngs(demo.reference)
    assert len(reference) == SMALL.n_reference
    assert {f.split("/")[0] for f in reference} == {"digits", "photos"}
    assert demo.trained == LABELS
    assert demo.finetuned == [f"{label}.seed{seed}" for label in LABELS for seed in SMALL.finetune_seeds]
    assert set(demo.seconds) == {"data", "source training", "fine-tuning"}


def test_checkpoints_load_with_their_config(built):
    _, demo = built
    specs = parse_models(demo.specs)
    assert [spec.label for spec in specs] == LABELS
    heads = {"digits0-4": 5, "rotation": 4, "photo-rotation": 4}
    for spec, ck in zip(specs, SMALL.zoo):
        loaded = load_model(spec)
        assert loaded.data_config == PRETRAINED_CFG
        assert loaded.model.num_classes == heads[ck.source]
        assert loaded.identity.startswith("sha256:")
    assert {ck.architecture for ck in ZOO} >= {"test_resnet", "test_convnext", "test_vit", "test_efficientnet"}
    assert len(ZOO) >= 6 and len({ck.source for ck in ZOO}) == 3


def test_ground_truth_holds_each_seeds_accuracy(built):
    _, demo = built
    truth = json.loads(demo.ground_truth.read_text())
    assert list(truth) == LABELS
    for label in LABELS:
        runs = [json.loads((demo.root / "finetune" / f"{label}.seed{seed}.json").read_text())
                for seed in SMALL.finetune_seeds]
        assert truth[label] == [run["accuracy"] for run in runs]  # what the evaluation's bootstrap resamples
        assert all(run["n_test"] == SMALL.n_test and 0.0 <= run["accuracy"] <= 1.0 for run in runs)


def test_rerun_trains_nothing(built, monkeypatch):
    cache, demo = built
    weights = demo.root / "zoo" / LABELS[0] / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    monkeypatch.setattr("ped_fast.zoo.demo_zoo._Data", None)  # generating data again would fail

    def started(*args, **kwargs):
        raise AssertionError("a cached re-run started a training process")

    monkeypatch.setattr(subprocess, "run", started)
    again = build_demo(cache, config=SMALL, progress=False)
    assert again.trained == [] and again.finetuned == []
    assert again.specs == demo.specs
    assert json.loads(again.ground_truth.read_text()) == json.loads(demo.ground_truth.read_text())
    assert weights.stat().st_mtime_ns == stamp


def test_missing_pieces_are_redone_and_training_is_reproducible(built, tmp_path):
    cache, demo = built
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    root = copy / "demo" / SMALL.key()
    shutil.rmtree(root / "zoo" / LABELS[1])
    (root / "finetune" / f"{LABELS[2]}.seed0.json").unlink()
    again = build_demo(copy, config=SMALL, progress=False, workers=1)
    assert again.trained == [LABELS[1]]
    # Seeded training: the retrained checkpoint is the same, bit for bit, so
    # its fine-tuning result still holds; only the deleted one is redone.
    assert again.finetuned == [f"{LABELS[2]}.seed0"] and set(again.seconds) == {"data", "source training",
                                                                                "fine-tuning"}
    assert (root / "zoo" / LABELS[1] / "model.safetensors").read_bytes() == \
        (demo.root / "zoo" / LABELS[1] / "model.safetensors").read_bytes()
    assert json.loads(again.ground_truth.read_text()) == json.loads(demo.ground_truth.read_text())
    # Results of other weights are stale: a changed checkpoint is fine-tuned again.
    result = root / "finetune" / f"{LABELS[0]}.seed0.json"
    result.write_text(json.dumps({**json.loads(result.read_text()), "weights": "sha256:0", "accuracy": 2.0}))
    assert build_demo(copy, config=SMALL, progress=False, workers=1).finetuned == [f"{LABELS[0]}.seed0"]
    assert json.loads(result.read_text())["accuracy"] <= 1.0


def test_interrupted_write_leaves_no_checkpoint(built, tmp_path, monkeypatch):
    cache, _ = built
    # The training process's work, here in this process, where the
    # simulated kill can be planted.
    monkeypatch.setattr(demo_zoo, "_run_pinned",
                        lambda root, config, **options: demo_zoo._build(root, config, **options))
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    zoo = copy / "demo" / SMALL.key() / "zoo"
    shutil.rmtree(zoo / LABELS[0])
    real = safetensors.torch.save_file

    def killed(tensors, filename, *args, **kwargs):
        real(dict(list(tensors.items())[:3]), filename)  # a partial file, then the "kill"
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", killed)
    with pytest.raises(KeyboardInterrupt):
        build_demo(copy, config=SMALL, progress=False, workers=1)
    assert sorted(p.name for p in zoo.iterdir()) == sorted(LABELS[1:])
    # A hard kill leaves the temporary folder behind: it is never read, and
    # the next run removes it and trains the checkpoint.
    (zoo / f".{LABELS[0]}.abc123").mkdir()
    (zoo / f".{LABELS[0]}.abc123" / "config.json").write_text("{}")
    monkeypatch.setattr(safetensors.torch, "save_file", real)
    again = build_demo(copy, config=SMALL, progress=False, workers=1)
    assert again.trained == [LABELS[0]]
    assert sorted(p.name for p in zoo.iterdir()) == sorted(LABELS)
    load_model(again.specs[0])


def test_training_does_not_depend_on_the_callers_kernels(built, tmp_path):
    """What made the demo's numbers differ between machines: training is
    chaotic, and a CPU's own vector kernels (or thread count) round
    differently, so the same seed gave other checkpoints and accuracies.
    Another machine is emulated by a caller whose torch, MKL and oneDNN
    pick other kernels and threads; the zoo it builds, in one process
    where the fixture's was spread over one per core, must be this one's,
    bit for bit."""
    cache, demo = built
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    root = copy / "demo" / SMALL.key()
    for label in LABELS:
        shutil.rmtree(root / "zoo" / label)
    job = tmp_path / "config.pickle"
    job.write_bytes(pickle.dumps(SMALL))
    other_machine = {"ATEN_CPU_CAPABILITY": "default" if torch.backends.cpu.get_cpu_capability() != "DEFAULT"
                     else "avx2", "MKL_CBWR": "AUTO", "ONEDNN_MAX_CPU_ISA": "SSE41", "OMP_NUM_THREADS": "2"}
    code = ("import pickle, sys, torch; from ped_fast.zoo.demo_zoo import build_demo; torch.set_num_threads(2); "
            "print(build_demo(sys.argv[1], config=pickle.loads(open(sys.argv[2], 'rb').read()), progress=False, "
            "workers=1).finetuned)")
    done = subprocess.run([sys.executable, "-c", code, str(copy), str(job)], env={**os.environ, **other_machine},
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"  # the same weights: every fine-tuning result still holds
    for label in LABELS:
        assert (root / "zoo" / label / "model.safetensors").read_bytes() == \
            (demo.root / "zoo" / label / "model.safetensors").read_bytes()


def test_data_is_deterministic_and_splits_are_disjoint():
    a, b = _Data(SMALL), _Data(SMALL)
    for name in ("source", "train", "test", "source_labels", "train_labels", "test_labels"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert a.source.shape == (SMALL.n_source, 32, 32, 3) and a.source.dtype == np.uint8
    # Disjoint digits: no rendered image of one split equals one of another.
    flat = {name: {image.tobytes() for image in getattr(a, name)} for name in ("source", "train", "test")}
    assert not (flat["source"] & flat["train"]) and not (flat["train"] & flat["test"])
    other = _Data(DemoConfig(**{**SMALL.__dict__, "seed": 1}))
    assert not np.array_equal(a.train, other.train)
    images, labels, classes = a.source_task("digits0-4", seed=0)
    assert classes == 5 and set(labels.tolist()) <= set(range(5)) and len(images) == int((a.source_labels < 5).sum())


def test_bad_config():
    with pytest.raises(ValueError, match="asks for 1000 \\+ 500 \\+ 500 digits; scikit-learn ships 1797"):
        build_demo("/nonexistent", config=DemoConfig(n_source=1000, n_train=500, n_test=500))
    with pytest.raises(ValueError, match="workers must be an integer >= 1, got 0"):
        build_demo("/nonexistent", workers=0)
    with pytest.raises(ValueError, match="source must be one of"):
        Checkpoint("x", "test_resnet", "jigsaw", 1)
    assert DemoConfig().key() != SMALL.key()
