"""The fine-tuning harness that makes ground truth (ped_fast.zoo.finetune).

A tiny task the harness must learn: 16x16 images whose class is their
dominant colour, with random noise; tiny timm models saved with a 16-pixel
data config so that everything runs in seconds."""
import dataclasses
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import ped_fast.zoo.finetune as finetune_module
from ped_fast.zoo.finetune import FinetuneFailed, Recipe, finetune, finetune_zoo, train
from ped_fast.zoo.models import load_model, save_model_dir
from ped_fast.zoo.report import load_ground_truth
from zoo_helpers import small_checkpoint, write_image_folder

SIZE = 16
CFG = {"input_size": (3, SIZE, SIZE), "interpolation": "bilinear", "mean": (0.5, 0.5, 0.5),
       "std": (0.5, 0.5, 0.5), "crop_pct": 1.0, "crop_mode": "center"}
FAST = Recipe(epochs=4, lr=2e-3, head_lr_scale=1.0, batch_size=8)


def _write_split(root, per_class, seed, classes=("blue", "green", "red")):
    rng = np.random.default_rng(seed)
    channel = {"red": 0, "green": 1, "blue": 2}
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            image = rng.integers(0, 90, size=(SIZE, SIZE, 3))
            image[..., channel[name]] += 160
            Image.fromarray(image.astype(np.uint8)).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: a second torch thread saves nothing, and on a
    shared 2-core runner two threads waiting for each other made this file
    ~8x slower (measured: 40 s instead of 5 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """finetune_zoo caches every run: never in the user's cache."""
    monkeypatch.setenv("PED_FAST_CACHE", str(tmp_path / "default-cache"))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("colours")
    return _write_split(root / "train", 12, seed=0), _write_split(root / "test", 6, seed=1)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = load_model("test_resnet", pretrained=False, seed=3).model
    return save_model_dir(model, tmp_path_factory.mktemp("zoo") / "resnet16", architecture="test_resnet",
                          pretrained_cfg=CFG)


def test_finetune_learns_and_leaves_inputs_alone(folders, checkpoint):
    loaded = load_model(f"test_resnet={checkpoint}")
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    torch.manual_seed(7)
    rng = torch.get_rng_state()
    result = finetune(loaded, *folders, recipe=FAST, seed=0, progress=False)
    # Colour is trivially learnable: a harness that mixes up labels, heads or
    # transforms stays near chance (1/3).
    assert result["accuracy"] >= 0.9
    assert result["n_train"] == 36 and result["n_test"] == 18 and result["epochs"] == FAST.epochs
    assert result["seconds"] > 0 and np.isfinite(result["train_loss"])
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in loaded.model.state_dict().items())
    assert loaded.model.num_classes == 1000


def test_finetune_is_deterministic_for_a_seed(folders, checkpoint):
    runs = [finetune(f"test_resnet={checkpoint}", *folders, recipe=FAST, seed=seed, progress=False)
            for seed in (0, 0)]
    assert runs[0]["accuracy"] == runs[1]["accuracy"] and runs[0]["train_loss"] == runs[1]["train_loss"]


@pytest.mark.parametrize("augmentation", ["none", "light"])
def test_train_is_deterministic_and_seeded(augmentation):
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(24, 3, 32, 32, generator=g), torch.arange(24) % 3)
    recipe = Recipe(epochs=2, lr=1e-3, batch_size=8, augmentation=augmentation)

    def weights(seed):
        model = load_model("test_convnext", pretrained=False).model
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model.reset_classifier(3)
        train(model, data, recipe, seed=seed, progress=False)
        assert not model.training
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    first = weights(0)
    assert torch.equal(first, weights(0))
    assert not torch.equal(first, weights(1))


def test_head_has_its_own_learning_rate():
    """Body at lr 1e-12, head at 1e-12 x 1e10 = 1e-2: an AdamW step moves a
    weight by at most about lr, so over 2 steps the body moves < 1e-10
    while the head moves by ~1e-2."""
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(16, 3, 32, 32, generator=g), torch.arange(16) % 2)
    model = load_model("test_resnet", pretrained=False).model
    model.reset_classifier(2)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    train(model, data, Recipe(epochs=1, lr=1e-12, head_lr_scale=1e10, batch_size=8), progress=False)
    change = {k: float((v.detach() - before[k]).abs().max()) for k, v in model.named_parameters()}
    assert max(v for k, v in change.items() if not k.startswith("fc.")) < 1e-10
    assert min(change["fc.weight"], change["fc.bias"]) > 1e-3
    with pytest.raises(ValueError, match="dataset is empty"):
        train(model, torch.utils.data.TensorDataset(torch.zeros(0, 3, 32, 32), torch.zeros(0)), progress=False)


def test_light_augmentation_shifts_within_an_eighth():
    from ped_fast.zoo.finetune import _shift

    images = torch.arange(2 * 16 * 16, dtype=torch.float32).view(2, 1, 16, 16) + 1
    out = _shift(images, torch.Generator().manual_seed(0))
    for src, dst in zip(images, out):
        # Find the shift: every kept pixel is the source pixel (dy, dx) away.
        found = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                 if torch.equal(dst[0, max(dy, 0):16 + min(dy, 0), max(dx, 0):16 + min(dx, 0)],
                                src[0, max(-dy, 0):16 + min(-dy, 0), max(-dx, 0):16 + min(-dx, 0)])]
        assert len(found) == 1
        dy, dx = found[0]
        assert int((dst == 0).sum()) == 16 * 16 - (16 - abs(dy)) * (16 - abs(dx))


def test_test_labels_follow_class_names(tmp_path, folders, checkpoint):
    """A test split with only some classes: its labels are the training
    split's indices of the same folder names (ImageFolder alone would call
    'green' 0 here, and accuracy would collapse)."""
    test = _write_split(tmp_path / "test", 6, seed=2, classes=("green", "red"))
    result = finetune(f"test_resnet={checkpoint}", folders[0], test, recipe=FAST, progress=False)
    assert result["accuracy"] >= 0.9 and result["n_test"] == 12


def test_bad_folders(tmp_path, folders, checkpoint):
    spec = f"test_resnet={checkpoint}"
    extra = _write_split(tmp_path / "extra", 2, seed=3, classes=("blue", "red"))
    (extra / "purple").mkdir()
    Image.new("RGB", (SIZE, SIZE)).save(extra / "purple" / "0.png")
    with pytest.raises(ValueError, match=r"test_dir .* has classes \['purple'\] that train_dir"):
        finetune(spec, folders[0], extra, recipe=FAST, progress=False)
    with pytest.raises(FileNotFoundError, match="train_dir .*nowhere"):
        finetune(spec, tmp_path / "nowhere", folders[1], recipe=FAST, progress=False)
    single = _write_split(tmp_path / "single", 2, seed=4, classes=("red",))
    with pytest.raises(ValueError, match="has 1 class; fine-tuning needs at least 2"):
        finetune_zoo([spec], single, single, progress=False)
    (tmp_path / "empty" / "red").mkdir(parents=True)
    with pytest.raises(ValueError, match="empty/red' of the train_dir folder holds no images"):
        finetune_zoo([spec], tmp_path / "empty", folders[1], progress=False)


def test_an_unusable_device_is_one_error_before_any_model(folders, checkpoint):
    """Before, each model failed on its own with torch's error, and the
    ground-truth file was written empty."""
    with pytest.raises(ValueError, match="device 'mps' |device must be 'cpu' or a CUDA device, got 'mps'"):
        finetune_zoo([f"a:test_resnet={checkpoint}", f"b:test_resnet={checkpoint}"], folders[0], folders[1], device="mps", progress=False)


def test_the_command_defaults_are_the_recipe():
    from ped_fast.__main__ import _parser

    parser, _ = _parser("ped-fast")
    args = parser.parse_args(["finetune", "--models", "m", "--data", "d", "--test", "t"])
    recipe = Recipe()
    assert (args.epochs, args.lr, args.batch_size, args.optimizer, args.augmentation) == (
        recipe.epochs, recipe.lr, recipe.batch_size, recipe.optimizer, recipe.augmentation)


def test_finetune_zoo_writes_ground_truth_and_goes_on_after_a_failure(tmp_path, folders, checkpoint):
    out = tmp_path / "gt" / "truth.json"
    specs = [f"a:test_resnet={checkpoint}", f"bad:test_resnet={tmp_path / 'missing.safetensors'}",
             f"b:test_resnet={checkpoint}"]
    with pytest.raises(FinetuneFailed) as info:
        finetune_zoo(specs, *folders, out=out, recipe=FAST, progress=False)
    assert list(info.value.errors) == ["bad"] and "missing.safetensors" in info.value.errors["bad"]
    assert "1 of 3 models failed" in str(info.value)
    written = json.loads(out.read_text())
    assert list(written) == ["a", "b"] and written == info.value.accuracies
    assert written["a"] == written["b"] >= 0.9
    assert sorted(p.name for p in out.parent.iterdir()) == ["truth.json"]
    assert finetune_zoo(specs[:1], *folders, out=out, recipe=FAST, progress=False) == {"a": written["a"]}
    assert json.loads(out.read_text()) == {"a": written["a"]}


@pytest.mark.parametrize("field, value", [("optimizer", "adam"), ("augmentation", "heavy"), ("epochs", 0),
                                          ("batch_size", 2.5), ("lr", float("nan")), ("head_lr_scale", -1)])
def test_recipe_rejects(field, value):
    # _validate's convention: TypeError for a value of the wrong type (2.5
    # for an integer), ValueError for one out of range.
    with pytest.raises(TypeError if isinstance(value, float) and field == "batch_size" else ValueError,
                       match=f"recipe {field} must"):
        Recipe(**{field: value})


def test_sgd_recipe_trains(folders, checkpoint):
    recipe = Recipe(optimizer="sgd", epochs=4, lr=0.05, head_lr_scale=1.0, batch_size=8)
    assert finetune(f"test_resnet={checkpoint}", *folders, recipe=recipe, progress=False)["accuracy"] >= 0.9


# The resumption tests: three tiny models of three families (32x32, one
# epoch), so that a rerun that retrains anything shows in the train calls.
TINY = Recipe(epochs=1, lr=1e-3, head_lr_scale=1.0, batch_size=8)


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    train_dir = write_image_folder(root / "train", classes=3, per_class=4, size=32, seed=0)
    test_dir = write_image_folder(root / "test", classes=3, per_class=2, size=32, seed=1)
    specs = [f"{label}:{arch}={small_checkpoint(root / label, arch, seed)}"
             for label, arch, seed in (("a", "test_resnet", 1), ("b", "test_convnext", 2),
                                       ("c", "test_efficientnet", 3))]
    return specs, train_dir, test_dir


class _Killed(BaseException):
    """Stands for Ctrl-C or SIGKILL: not an Exception, so finetune_zoo does
    not take it for one model's failure."""


def _spy_train(monkeypatch, kill_at=None):
    """Record (label, seed) of every training run; raise _Killed on kill_at."""
    calls = []

    def spy(model, dataset, recipe=Recipe(), *, seed=0, desc="train", **kwargs):
        run = (desc.removeprefix("fine-tune "), seed)
        calls.append(run)
        if run == kill_at:
            raise _Killed
        return train(model, dataset, recipe, seed=seed, desc=desc, **kwargs)

    monkeypatch.setattr(finetune_module, "train", spy)
    return calls


def test_a_killed_finetune_resumes_with_what_is_missing(tmp_path, monkeypatch, tiny_zoo):
    """Before, the ground truth was written only after the last model and
    nothing was cached: a kill lost every finished run."""
    specs, train_dir, test_dir = tiny_zoo
    cache, out = tmp_path / "cache", tmp_path / "truth.json"
    kwargs = dict(out=out, recipe=TINY, seeds=(0, 1), cache=cache, progress=False)

    calls = _spy_train(monkeypatch, kill_at=("b", 1))
    with pytest.raises(_Killed):
        finetune_zoo(specs, train_dir, test_dir, **kwargs)
    assert calls == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    # The file holds the finished model; model b's seed 0 is cached too.
    assert list(json.loads(out.read_text())) == ["a"]
    assert len(list((cache / "finetune").glob("*.json"))) == 3

    calls = _spy_train(monkeypatch)
    truth = finetune_zoo(specs, train_dir, test_dir, **kwargs)
    assert calls == [("b", 1), ("c", 0), ("c", 1)]
    assert list(truth) == ["a", "b", "c"] and load_ground_truth(out) == truth

    # The entries: one per (model, seed), the per-seed accuracies whose mean
    # is the ground truth.
    metas = [json.loads(p.read_text())["meta"] for p in (cache / "finetune").glob("*.json")]
    runs = {(m["label"], m["seed"]): m for m in metas}
    assert sorted(runs) == [(label, seed) for label in "abc" for seed in (0, 1)]
    for label in "abc":
        assert truth[label] == (runs[label, 0]["accuracy"] + runs[label, 1]["accuracy"]) / 2
        assert runs[label, 0]["skipped"] == {"train": [], "test": []}
        assert runs[label, 0]["recipe"]["lr"] == TINY.lr and runs[label, 0]["n_train"] == 12

    calls = _spy_train(monkeypatch)
    assert finetune_zoo(specs, train_dir, test_dir, **kwargs) == truth
    assert calls == []


def test_a_cached_run_is_the_run_itself(tmp_path, monkeypatch, tiny_zoo):
    """A seed's cached accuracy is finetune()'s for that seed, and what the
    accuracy depends on (here the recipe and the images) is in the key."""
    specs, train_dir, test_dir = tiny_zoo
    cache = tmp_path / "cache"
    truth = finetune_zoo(specs[:1], train_dir, test_dir, recipe=TINY, seeds=(0, 1), cache=cache, progress=False)
    alone = [finetune(specs[0], train_dir, test_dir, recipe=TINY, seed=seed, progress=False)["accuracy"]
             for seed in (0, 1)]
    assert truth == {"a": (alone[0] + alone[1]) / 2}

    calls = _spy_train(monkeypatch)
    other = dataclasses.replace(TINY, lr=2e-3)
    finetune_zoo(specs[:1], train_dir, test_dir, recipe=other, cache=cache, progress=False)
    assert calls == [("a", 0)]
    touched = shutil.copytree(train_dir, tmp_path / "train-touched")
    os.utime(touched / "class0" / "0.png", ns=(0, 0))
    finetune_zoo(specs[:1], touched, test_dir, recipe=TINY, cache=cache, progress=False)
    assert calls == [("a", 0), ("a", 0)]
    # Another label, the same model: the same runs.
    finetune_zoo(["renamed:" + specs[0].split(":", 1)[1]], train_dir, test_dir, recipe=TINY, seeds=(0, 1),
                 cache=cache, progress=False)
    assert len(calls) == 2


@pytest.mark.parametrize("seeds, message", [((), "non-empty"), ((0, 0), "distinct"), ((0, 1.5), "integers")])
def test_finetune_zoo_rejects_seeds(tiny_zoo, seeds, message):
    specs, train_dir, test_dir = tiny_zoo
    with pytest.raises(ValueError, match=f"seeds must be .*{message}"):
        finetune_zoo(specs, train_dir, test_dir, seeds=seeds, progress=False)


def test_splits_are_read_as_the_screening_reads_them(tmp_path, monkeypatch, tiny_zoo):
    """A notebook's hidden .ipynb_checkpoints folder is not a class, a
    hidden file not an image, and an undecodable image is skipped and
    counted, not a failed model (before: a fourth class, and the model
    failed on the bad file)."""
    specs, train_dir, test_dir = tiny_zoo
    messy = shutil.copytree(train_dir, tmp_path / "train")
    shutil.copytree(messy / "class0", messy / ".ipynb_checkpoints")
    shutil.copy(messy / "class0" / "0.png", messy / "class1" / ".hidden.png")
    (messy / "class2" / "bad.png").write_bytes(b"not a png")
    with pytest.warns(RuntimeWarning, match=r"1 of 13 images under .*train could not be decoded and were skipped: "
                                            r"class2/bad.png \("):
        result = finetune(specs[0], messy, test_dir, recipe=TINY, progress=False)
    clean = finetune(specs[0], train_dir, test_dir, recipe=TINY, progress=False)
    assert result["n_train"] == 12 and result["skipped"] == {"train": ["class2/bad.png"], "test": []}
    assert result["accuracy"] == clean["accuracy"] and result["train_loss"] == clean["train_loss"]

    # A split too big to keep in memory is decoded each epoch, without the
    # bad file: the same numbers.
    monkeypatch.setattr(finetune_module, "_IN_MEMORY_BYTES", 0)
    with pytest.warns(RuntimeWarning, match="could not be decoded"):
        truth = finetune_zoo(specs[:1], messy, test_dir, recipe=TINY, cache=tmp_path / "cache", progress=False)
    assert truth == {"a": clean["accuracy"]}
    [entry] = (tmp_path / "cache" / "finetune").glob("*.json")
    assert json.loads(entry.read_text())["meta"]["skipped"] == {"train": ["class2/bad.png"], "test": []}


def test_a_split_with_no_decodable_image_fails_the_model(tmp_path, tiny_zoo):
    specs, train_dir, _ = tiny_zoo
    test = tmp_path / "test"
    for name in ("class0", "class1"):
        (test / name).mkdir(parents=True)
        (test / name / "0.png").write_bytes(b"broken")
    with pytest.warns(RuntimeWarning), pytest.raises(FinetuneFailed) as info:
        finetune_zoo(specs[:1], train_dir, test, recipe=TINY, cache=tmp_path / "cache", progress=False)
    assert "test_dir" in info.value.errors["a"] and "none of its 2 images could be decoded" in info.value.errors["a"]
