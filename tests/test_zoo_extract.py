"""Feature extraction (ped_fast.zoo.extract): one decode per image and data
config, logits from the same pass, workers and precision."""
import importlib

import numpy as np
import pytest
import timm
import torch

from ped_fast.zoo import extract, image_folder
from ped_fast.zoo.models import load_model, save_model_dir
from zoo_helpers import SMALL_CONFIG, small_checkpoint, timm_features, write_image_folder

extract_module = importlib.import_module("ped_fast.zoo.extract")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("extract")
    write_image_folder(root / "data", classes=3, per_class=5, size=32)
    torch.manual_seed(4)
    save_model_dir(timm.create_model("test_convnext", num_classes=0), root / "headless",
                   architecture="test_convnext", pretrained_cfg=SMALL_CONFIG)
    return {"data": root / "data",
            "a": f"a:test_resnet={small_checkpoint(root / 'a', 'test_resnet', 1)}",
            "b": f"b:test_convnext={small_checkpoint(root / 'b', 'test_convnext', 2)}",
            "headless": f"headless:test_convnext={root / 'headless'}"}


def counting_decodes(monkeypatch):
    files = []
    original = extract_module.load_rgb

    def load(path):
        files.append(path)
        return original(path)

    monkeypatch.setattr(extract_module, "load_rgb", load)
    return files


def test_one_decode_per_image_and_data_config(zoo, tmp_path, monkeypatch):
    files = counting_decodes(monkeypatch)
    shared = extract([zoo["a"], zoo["b"]], zoo["data"], cache=tmp_path / "shared", batch_size=4, progress=False)
    assert len(files) == 15 and len(set(files)) == 15
    files.clear()
    apart = extract([zoo["a"], zoo["b"]], zoo["data"], cache=tmp_path / "apart", batch_size=4, models_per_pass=1,
                    progress=False)
    assert len(files) == 30
    for label in ("a", "b"):
        np.testing.assert_array_equal(shared[label].features, apart[label].features)
    # A model with another data config (timm's own, 160x160 bicubic) needs its own pass.
    files.clear()
    extract([zoo["a"], "c:test_convnext"], zoo["data"], cache=tmp_path / "mixed", pretrained=False, batch_size=8,
            progress=False)
    assert len(files) == 30


def test_logits_come_from_the_same_pass(zoo, tmp_path):
    result = extract([zoo["a"], zoo["headless"]], zoo["data"], cache=tmp_path, batch_size=8, progress=False,
                     predictions="exact")
    images = image_folder(zoo["data"])
    files = [images.file(i) for i in range(len(images))]
    model = load_model(zoo["a"]).model
    np.testing.assert_array_equal(result["a"].features, timm_features(model, files, SMALL_CONFIG))
    transform = timm.data.create_transform(**SMALL_CONFIG)
    from PIL import Image

    with torch.inference_mode():
        logits = model(torch.stack([transform(Image.open(f).convert("RGB")) for f in files])).numpy()
    # The head applied inside the pass vs model() in one batch of 15 images
    # instead of batches of 8: float32 kernel choice only (~1e-6 relative).
    kept = result["a"].predictions.arrays["logits"]
    np.testing.assert_allclose(kept, logits, rtol=0, atol=1e-4 * np.abs(logits).max())
    assert kept.shape == (15, 1000)
    assert result["headless"].predictions is None and result["headless"].features.shape == (15, 64)


def test_workers_and_precision(zoo, tmp_path):
    # One torch thread for both: by default the forward passes get the cores
    # the decoding workers leave, and another thread count may round a
    # convolution's sums differently (last bits; not part of the key).
    plain = extract(zoo["a"], zoo["data"], cache=tmp_path / "0", batch_size=4, threads=1, progress=False)["a"]
    workers = extract(zoo["a"], zoo["data"], cache=tmp_path / "1", batch_size=4, workers=2, threads=1,
                      progress=False)["a"]
    np.testing.assert_array_equal(workers.features, plain.features)
    assert workers.key == plain.key
    half = extract(zoo["a"], zoo["data"], cache=tmp_path / "0", batch_size=4, precision="bf16", progress=False)["a"]
    assert half.key != plain.key and not half.cached
    assert half.features.dtype == np.float32
    # bfloat16 keeps 8 significant bits (relative rounding 2^-8 ~ 4e-3 per
    # operation) through a dozen layers: a few percent of the largest value.
    scale = np.abs(plain.features).max()
    assert 0 < np.abs(half.features - plain.features).max() <= 5e-2 * scale


@pytest.mark.parametrize("name, value, message", [
    ("batch_size", 0, "batch_size must be an integer >= 1, got 0"),
    ("workers", -1, "workers must be an integer >= 0, got -1"),
    ("precision", "fp8", "precision must be one of fp32, bf16, fp16, got 'fp8'"),
    ("device", "mps", "device must be 'cpu' or a CUDA device, got 'mps'"),
    ("device", "gpu0", "device must be a torch device"),
])
def test_bad_settings(zoo, tmp_path, name, value, message):
    with pytest.raises(ValueError, match=message):
        extract(zoo["a"], zoo["data"], cache=tmp_path, progress=False, **{name: value})


def test_a_remembered_config_the_model_disagrees_with_is_not_used(zoo, tmp_path):
    """The config remembered for a model lets a re-run skip building it;
    once the model is built anyway, its own config decides, and the
    remembered entry is left as it is (an entry is never rewritten; the key
    holds the library versions, so a timm upgrade remembers anew)."""
    from ped_fast.zoo import Cache, parse_spec, weights_identity

    cache = Cache(tmp_path / "c")
    spec = parse_spec(zoo["a"])
    identity = weights_identity(spec)
    stale = extract_module.canonical_config(dict(SMALL_CONFIG, input_size=(3, 16, 16), crop_pct=0.5))
    cache.put("config", extract_module.data_config_key(spec, identity),
              {"model": spec.name, "identity": identity, "data_config": stale})
    got = extract(zoo["a"], zoo["data"], cache=cache, progress=False)["a"]
    own = extract_module.canonical_config(load_model(spec).data_config)
    assert own != stale
    assert extract_module.remembered_config(cache, spec, identity) == stale
    data = image_folder(zoo["data"])
    want = timm_features(load_model(spec).model, [data.file(i) for i in range(len(data))], own)
    np.testing.assert_array_equal(got.features, want)


def test_a_failed_stage_keeps_no_traceback():
    """A stored exception's traceback holds the frames of the failed forward
    pass and so its activations: they must be freed while other models run."""
    try:
        raise RuntimeError("out of memory")
    except RuntimeError as caught:
        error = caught
    outcome = extract_module.Outcome(spec=None)
    stage = extract_module.FeaturesStage(None)
    outcome.fail([stage], error)
    assert outcome.results[stage] is error and error.__traceback__ is None


def test_two_feature_stages_of_one_run_keep_their_own_results(zoo, tmp_path):
    """Screening several target tasks pushes each model through one
    features stage per task in one run: each stage's result is its own
    task's, not the last stage's."""
    write_image_folder(tmp_path / "other", classes=2, per_class=4, size=32)
    first = extract_module.FeaturesStage(image_folder(zoo["data"]))
    second = extract_module.FeaturesStage(image_folder(tmp_path / "other"))
    settings = extract_module.Settings.make(batch_size=4, progress=False)
    cache = extract_module.Cache(tmp_path / "cache")
    outcome = extract_module.run_stages([zoo["a"]], [first, second], settings, cache)["a"]
    assert outcome.results[first].features.shape[0] == 15
    assert outcome.results[second].features.shape[0] == 8
