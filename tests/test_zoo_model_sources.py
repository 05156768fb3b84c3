"""Model sources beyond timm names (ped_fast.zoo.models, ped_fast.zoo.sources):
torchvision builders and weights, Hugging Face transformers backbones,
timm's own hf-hub: and local-dir:, and models held in memory. Every model is
small, random and saved here: no network is used."""
import json
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import transformers
from PIL import Image
from torchvision.models import get_model, get_model_weights

from ped_fast.zoo import extract, screen
from ped_fast.zoo.extract import ExtractionError
from ped_fast.zoo.models import Model, load_model, parse_models, parse_spec, weights_identity
from ped_fast.zoo.sources import processor_config, transforms_config
from zoo_helpers import SMALL_CONFIG, small_checkpoint, timm_features, write_image_folder


def tiny_vit_config():
    return transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                  image_size=32, patch_size=8)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    write_image_folder(root / "data", classes=2, per_class=3, size=32)
    torch.manual_seed(0)
    # A fine-tuned torchvision model: 7 classes, saved as a state dict.
    torch.save(get_model("mobilenet_v3_small", num_classes=7).state_dict(), root / "mnv3.pth")
    # transformers: a ViT classification checkpoint (no pooler weights: its
    # classifier reads the first token) and a ResNet backbone (pooled output).
    transformers.ViTForImageClassification(tiny_vit_config()).save_pretrained(root / "vit")
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root / "vit")
    transformers.ResNetModel(transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16],
                                                       depths=[1, 1])).save_pretrained(root / "resnet")
    transformers.BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                   do_center_crop=True).save_pretrained(root / "resnet")
    return {"root": root, "data": root / "data", "files": sorted((root / "data").rglob("*.png")),
            "mnv3": root / "mnv3.pth", "vit": root / "vit", "resnet": root / "resnet",
            "timm": small_checkpoint(root / "timm", "test_resnet", 3)}


def run(models, zoo, cache, **options):
    return extract(models, zoo["data"], cache=cache, batch_size=4, progress=False, **options)


def pil_images(files):
    return [Image.open(f).convert("RGB") for f in files]


# --- the grammar ---------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("torchvision:resnet18", ("resnet18", "torchvision:resnet18", None, "torchvision")),
    ("torchvision:resnet18:IMAGENET1K_V1",
     ("resnet18.IMAGENET1K_V1", "torchvision:resnet18.IMAGENET1K_V1", None, "torchvision")),
    ("tv:torchvision:resnet18=/w/ft.pth", ("tv", "torchvision:resnet18", "/w/ft.pth", "torchvision")),
    ("torchvision:resnet18=/w/ft.pth", ("resnet18-ft", "torchvision:resnet18", "/w/ft.pth", "torchvision")),
    ("hf:google/vit-base-patch16-224",
     ("vit-base-patch16-224", "hf:vit-base-patch16-224", "google/vit-base-patch16-224", "hf")),
    # After the source, the rest is the location, ':' and '=' included.
    ("mine:hf:/models/a:b=c/", ("mine", "hf:a:b=c", "/models/a:b=c/", "hf")),
    ("hf-hub:timm/resnet18.a1_in1k",
     ("resnet18.a1_in1k", "hf-hub:resnet18.a1_in1k", "timm/resnet18.a1_in1k", "hf-hub")),
    ("r:hf_hub:timm/resnet18.a1_in1k@main",
     ("r", "hf-hub:resnet18.a1_in1k", "timm/resnet18.a1_in1k@main", "hf-hub")),
    ("local-dir:/w/run3", ("run3", "local-dir:run3", "/w/run3", "local-dir")),
    # A PATH may hold ':' (a Windows drive).
    ("x:test_vit=C:\\w\\a.pth", ("x", "test_vit", "C:\\w\\a.pth", "timm")),
])
def test_spec_grammar(text, expected):
    spec = parse_spec(text)
    assert (spec.label, spec.name, spec.path, spec.source) == expected


@pytest.mark.parametrize("text, message", [
    # A label can never be a source's name, nor swallow a source prefix.
    ("hf:resnet18=/w/a.pth", None),
    ("torchvision:x:y:z", "expected torchvision:NAME[:WEIGHTS]"),
    ("mine:huggingface:org/model", "unknown model source 'huggingface'"),
    ("org/model", "hf-hub:org/model (timm) or hf:org/model (transformers)"),
    ("hf:", "nothing after 'hf:'"),
    ("hf-hub:resnet18", "ORG/NAME[@REVISION]"),
    ("torchvision:resnet18:", "expected torchvision:NAME[:WEIGHTS]"),
])
def test_spec_grammar_errors(text, message):
    if message is None:  # reads as an hf: location, not as a label "hf"
        assert parse_spec(text).source == "hf"
        return
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")
                       .replace("]", r"\]")) as error:
        parse_spec(text)
    assert "\n" not in str(error.value)


def test_mapping_labels(zoo):
    specs = parse_models({"a": "torchvision:resnet18", "b": "b:test_resnet", "c": torch.nn.Linear(3, 2)})
    assert [(s.label, s.source) for s in specs] == [("a", "torchvision"), ("b", "timm"), ("c", "module")]
    for models, message in [({"a": "b:test_resnet"}, "names another label, 'b'"),
                            ({"hf": torch.nn.Linear(3, 2)}, "is a model source's name"),
                            ({"a": 3}, "must be a spec string, an nn.Module"),
                            ({}, "empty mapping")]:
        with pytest.raises((ValueError, TypeError), match=message):
            parse_models(models)


# --- torchvision ----------------------------------------------------------------

def test_torchvision_transforms_are_timm_configs():
    """Every torchvision classification weights' transform maps to a timm
    config whose eval transform gives the very same pixels."""
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 260, 3), dtype=np.uint8))
    seen = set()
    for builder in ("resnet50", "vit_b_16", "efficientnet_b3", "convnext_tiny", "regnet_y_16gf"):
        for weights in get_model_weights(builder):
            config = transforms_config(weights.transforms(), "m")
            key = json.dumps(config, sort_keys=True)
            if key in seen:
                continue
            seen.add(key)
            expected = weights.transforms()(image)
            got = timm.data.create_transform(**config)(image)
            assert got.shape == expected.shape, (builder, weights)
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert len(seen) >= 4


def test_torchvision_file_penultimate_features_and_logits(zoo, tmp_path):
    """torchvision:NAME=FILE: the input of the classifier's last Linear, and
    its logits, through the weights' own transform."""
    out = run(f"tv:torchvision:mobilenet_v3_small={zoo['mnv3']}", zoo, tmp_path, predictions="exact")["tv"]
    model = get_model("mobilenet_v3_small", num_classes=7)
    model.load_state_dict(torch.load(zoo["mnv3"]))
    transform = get_model_weights("mobilenet_v3_small").DEFAULT.transforms()
    batch = torch.stack([transform(image) for image in pil_images(zoo["files"])])
    with torch.inference_mode():
        model.eval()
        penultimate = model.classifier[:-1](torch.flatten(model.avgpool(model.features(batch)), 1))
        logits = model(batch)
    np.testing.assert_allclose(out.features, penultimate.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out.predictions.arrays["logits"], logits.numpy(), rtol=1e-4, atol=1e-5)
    assert out.identity.startswith("sha256:") and out.data_config["input_size"] == [3, 224, 224]


def test_torchvision_weights_from_torch_hub_cache(zoo, tmp_path, monkeypatch):
    """torchvision:NAME:WEIGHTS loads the enum's file from torch's hub cache
    (no download when it is there) and is identified by the enum and URL."""
    weights = get_model_weights("mobilenet_v3_small").IMAGENET1K_V1
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = tmp_path / "torch" / "hub" / "checkpoints" / Path(weights.url).name
    cached.parent.mkdir(parents=True)
    torch.manual_seed(5)
    torch.save(get_model("mobilenet_v3_small").state_dict(), cached)
    spec = "torchvision:mobilenet_v3_small:IMAGENET1K_V1"
    assert weights_identity(spec) == f"torchvision:MobileNet_V3_Small_Weights.IMAGENET1K_V1:{weights.url}"
    hub = run({"hub": spec, "file": f"torchvision:mobilenet_v3_small={cached}"}, zoo, tmp_path / "c")
    np.testing.assert_array_equal(hub["hub"].features, hub["file"].features)
    # Random weights, seeded: the transform still the named weights'.
    assert weights_identity(spec, pretrained=False, seed=3) == "random:seed=3"


def test_torchvision_errors(zoo, tmp_path):
    for spec, message in [("torchvision:resnet81", "unknown torchvision classification model 'resnet81'; close "
                                                   "matches: resnet18"),
                          ("torchvision:resnet18:IMAGENET9K", "unknown weights 'IMAGENET9K' for torchvision's "
                                                              "'resnet18'; it has IMAGENET1K_V1"),
                          (f"torchvision:resnet18={zoo['mnv3']}", "does not fit torchvision's 'resnet18'")]:
        with pytest.raises((ValueError, ExtractionError), match=message) as error:
            run(spec, zoo, tmp_path, pretrained=False)
        assert "\n" not in str(error.value)
    # No Linear classifier to take the penultimate features from: the model's error.
    with pytest.raises(ExtractionError, match="has no nn.Linear classifier"):
        run("torchvision:squeezenet1_0", zoo, tmp_path, pretrained=False)


def test_torchvision_weights_not_to_be_had(zoo, tmp_path, monkeypatch):
    """Weights neither in torch's hub cache nor downloadable: the model's
    one-line error, with the ways out."""
    import urllib.error

    import torchvision.models._api

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(ExtractionError, match="could not get torchvision's weights torchvision:"
                                              "MobileNet_V3_Small_Weights.IMAGENET1K_V1.*--no-pretrained") as error:
        run("torchvision:mobilenet_v3_small", zoo, tmp_path)
    assert "\n" not in str(error.value)


# --- Hugging Face transformers ---------------------------------------------------

def hf_twin(folder, files):
    """Features computed with transformers alone: its own processor and
    model, the pooled output (the first token when the checkpoint has no
    pooler weights)."""
    processor = transformers.AutoImageProcessor.from_pretrained(folder)
    model = transformers.AutoModel.from_pretrained(folder).eval()
    with torch.inference_mode():
        out = model(**processor(pil_images(files), return_tensors="pt"))
    if isinstance(model, transformers.ViTModel):
        return out.last_hidden_state[:, 0].numpy()
    return out.pooler_output.flatten(1).numpy()


def test_hf_folders(zoo, tmp_path):
    out = run([f"hf:{zoo['vit']}", f"rn:hf:{zoo['resnet']}"], zoo, tmp_path)
    for label, folder in (("vit", zoo["vit"]), ("rn", zoo["resnet"])):
        np.testing.assert_allclose(out[label].features, hf_twin(folder, zoo["files"]), rtol=1e-4, atol=1e-5)
        assert out[label].identity.endswith(f":transformers={transformers.__version__}")
    assert out["vit"].data_config == {"input_size": [3, 32, 32], "interpolation": "bilinear", "mean": [0.5] * 3,
                                      "std": [0.5] * 3, "crop_pct": 1.0, "crop_mode": "squash"}
    again = run([f"hf:{zoo['vit']}", f"rn:hf:{zoo['resnet']}"], zoo, tmp_path)
    assert all(result.cached for result in again.values())


def fake_hub(cache, repo, folder, commit="0" * 40):
    """A local Hugging Face hub cache holding `folder` as `repo`'s main."""
    base = Path(cache) / f"models--{repo.replace('/', '--')}"
    snapshot = base / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in Path(folder).iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(commit)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "hub"


def test_hub_repositories_from_the_local_cache(zoo, tmp_path, offline_hub):
    """hf:ORG/NAME and timm's hf-hub:ORG/NAME from the local hub cache,
    offline: the same models, identities and features as their folders."""
    fake_hub(offline_hub, "someone/tiny-vit", zoo["vit"])
    fake_hub(offline_hub, "someone/tiny-timm", zoo["timm"])
    out = run(["hf:someone/tiny-vit", f"vitdir:hf:{zoo['vit']}", "hf-hub:someone/tiny-timm",
               f"timmdir:test_resnet={zoo['timm']}", f"local-dir:{zoo['timm']}"], zoo, tmp_path / "c")
    np.testing.assert_array_equal(out["tiny-vit"].features, out["vitdir"].features)
    assert out["tiny-vit"].identity == out["vitdir"].identity
    for label in ("tiny-timm", "timm"):
        np.testing.assert_array_equal(out[label].features, out["timmdir"].features)
        assert out[label].identity == out["timmdir"].identity
    with pytest.raises(FileNotFoundError, match="'someone/absent' is not in the local Hugging Face cache") as error:
        run("hf:someone/absent", zoo, tmp_path / "c")
    assert "\n" not in str(error.value)


def test_hf_errors(zoo, tmp_path):
    bert = tmp_path / "bert"
    transformers.BertModel(transformers.BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                                   intermediate_size=8, vocab_size=20)).save_pretrained(bert)
    transformers.ViTImageProcessor().save_pretrained(bert)
    unresized = tmp_path / "unresized"
    transformers.ViTModel(tiny_vit_config()).save_pretrained(unresized)
    transformers.ViTImageProcessor(do_resize=False).save_pretrained(unresized)
    (tmp_path / "empty").mkdir()
    for spec, message in [(f"hf:{bert}", "is not a vision backbone"),
                          (f"hf:{unresized}", "does not resize"),
                          (f"hf:{tmp_path / 'empty'}", "has no config.json"),
                          (f"hf:{tmp_path / 'absent'}", "is neither a folder nor a Hugging Face repository")]:
        with pytest.raises((ValueError, OSError, ExtractionError), match=message) as error:
            run(spec, zoo, tmp_path / "c")
        assert "\n" not in str(error.value)


@pytest.mark.parametrize("processor", [
    transformers.ViTImageProcessor(size={"height": 48, "width": 40}),
    transformers.ConvNextImageProcessor(size={"shortest_edge": 40}, crop_pct=0.8),
    transformers.BitImageProcessor(size={"shortest_edge": 48}, crop_size={"height": 40, "width": 40},
                                   resample=2, do_center_crop=True),
], ids=["squash", "convnext", "shortest-edge-crop"])
def test_processor_geometry_is_kept(processor):
    """A processor's resize and crop, as a timm config, give its pixels
    (within resizing's rounding: transformers may resize tensors, timm
    resizes with PIL)."""
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (90, 70, 3), dtype=np.uint8))
    config = processor_config(processor, "m")
    expected = processor(image, return_tensors="pt")["pixel_values"][0]
    got = timm.data.create_transform(**config)(image)
    assert got.shape == expected.shape
    assert (got - expected).abs().mean() < 0.05


# --- models in memory ------------------------------------------------------------

def test_in_memory_models(zoo, tmp_path):
    """A timm model (its pre-logits and own config), any module's output or
    a named layer's, and a callable, beside a spec of the same checkpoint;
    the caller's modules are left as they were."""
    checkpoint = load_model(f"test_resnet={zoo['timm']}").model
    timm_model = timm.create_model("test_resnet", pretrained_cfg_overlay=SMALL_CONFIG)
    timm_model.load_state_dict(checkpoint.state_dict())
    timm_model.train()
    net = get_model("resnet18", num_classes=5)
    out = run({"spec": f"test_resnet={zoo['timm']}", "timm": timm_model, "out": Model(net, data_config=SMALL_CONFIG),
               "pool": Model(net, layer="avgpool", data_config=SMALL_CONFIG),
               "fn": Model(lambda batch: batch.mean(dim=(2, 3)), data_config=SMALL_CONFIG, identity="mean")},
              zoo, tmp_path, predictions="exact")
    np.testing.assert_array_equal(out["timm"].features, out["spec"].features)
    np.testing.assert_allclose(out["timm"].features, timm_features(checkpoint, zoo["files"], SMALL_CONFIG),
                               rtol=1e-5, atol=1e-6)
    assert out["timm"].predictions.num_sources == checkpoint.num_classes
    transform = timm.data.create_transform(**SMALL_CONFIG)
    batch = torch.stack([transform(image) for image in pil_images(zoo["files"])])
    with torch.inference_mode():
        net.eval()
        pooled = torch.flatten(net.avgpool(net.layer4(net.layer3(net.layer2(net.layer1(net.maxpool(net.relu(
            net.bn1(net.conv1(batch))))))))), 1)
        np.testing.assert_allclose(out["out"].features, net(batch).numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["pool"].features, pooled.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["fn"].features, batch.mean(dim=(2, 3)).numpy(), rtol=1e-5, atol=1e-6)
    assert out["out"].predictions is None and out["fn"].identity.startswith("given:mean:transform=")
    assert timm_model.training  # screened as a copy


def test_in_memory_identity_follows_the_weights(zoo, tmp_path):
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 4))
    model = Model(net, data_config=SMALL_CONFIG)
    first = run({"net": model}, zoo, tmp_path)["net"]
    assert run({"net": model}, zoo, tmp_path)["net"].cached
    with torch.no_grad():
        net[1].weight.add_(1.0)
    changed = run({"net": model}, zoo, tmp_path)["net"]
    assert not changed.cached and changed.identity != first.identity
    assert not np.array_equal(changed.features, first.features)
    # Another transform for the same weights is another model for the cache.
    other = dict(SMALL_CONFIG, mean=(0.0, 0.0, 0.0))
    for given in (None, "v1"):
        a, b = (run({"net": Model(net, data_config=config, identity=given)}, zoo, tmp_path)["net"]
                for config in (SMALL_CONFIG, other))
        assert a.identity != b.identity and not b.cached and not np.array_equal(a.features, b.features)


def test_in_memory_transformers_model_takes_its_processor(zoo, tmp_path):
    model = transformers.AutoModel.from_pretrained(zoo["resnet"])
    out = run({"mem": model, "spec": f"hf:{zoo['resnet']}"}, zoo, tmp_path)
    np.testing.assert_allclose(out["mem"].features, out["spec"].features, rtol=1e-5, atol=1e-6)
    assert out["mem"].data_config == out["spec"].data_config


def test_in_memory_errors(zoo, tmp_path):
    class Dict(torch.nn.Module):
        def forward(self, x):
            return {"features": x.mean(dim=(2, 3))}

    for models, message in [({"f": lambda x: x}, "a plain callable has no weights to identify it by"),
                            ({"m": torch.nn.Flatten()}, "has no timm or transformers config to take its transform"),
                            ({"m": Model(torch.nn.Flatten(), data_config={"input_size": (3, 32, 32)})},
                             "data_config must give input_size, mean and std"),
                            ({"d": Model(Dict(), data_config=SMALL_CONFIG)},
                             "the output of Dict is a dict, not a tensor of features"),
                            ({"t": Model(torch.nn.Flatten(2), data_config=SMALL_CONFIG)},
                             r"the output of Flatten has shape \(4, 3, 1024\); expected batch x features")]:
        with pytest.raises((ValueError, ExtractionError), match=message) as error:
            run(models, zoo, tmp_path)
        assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="layer must name a submodule of Linear"):
        Model(torch.nn.Linear(2, 2), layer="fc")


def test_in_memory_models_pickle_for_other_processes():
    """Ray ships specs to its workers pickled: an in-memory model goes with
    cloudpickle (lambdas too); one that cannot be pickled says to use the
    local executor."""
    spec = parse_models({"fn": Model(lambda x: x * 2, data_config=SMALL_CONFIG, identity="double"),
                         "net": Model(torch.nn.Linear(2, 2), data_config=SMALL_CONFIG)})
    digest = spec[1].model.digest("net")
    copies = pickle.loads(pickle.dumps(spec))
    assert copies[0].model.model(torch.tensor(2.0)) == 4.0
    assert copies[1].model._digest == digest  # shipped: the worker does not hash the weights again
    copies[1].model._digest = None
    assert copies[1].model.digest("net") == digest
    lock = threading.Lock()
    spec = parse_models({"bad": Model(lambda x: lock and x, data_config=SMALL_CONFIG, identity="x")})
    with pytest.raises(TypeError, match="cannot be pickled .* screen it with the local executor"):
        pickle.dumps(spec)


def test_screen_takes_a_mapping(zoo, tmp_path):
    net = get_model("resnet18", num_classes=5)
    results = screen({"pool": Model(net, layer="avgpool", data_config=SMALL_CONFIG), "vit": f"hf:{zoo['vit']}",
                      "spec": f"test_resnet={zoo['timm']}"}, zoo["data"], "self", scorers=("sfda",),
                     cache=tmp_path / "c", batch_size=4, progress=False)
    rows = {row["name"]: row for row in results["models"]}
    assert set(rows) == {"pool", "vit", "spec"} and not any(row["error"] for row in rows.values())
    assert all(np.isfinite(row["scores"]["sfda"]["ped"]) for row in rows.values())


def test_cli_takes_the_new_sources(zoo, tmp_path):
    from ped_fast.__main__ import main

    out = tmp_path / "features"
    assert main(["extract", "--models", f"torchvision:mobilenet_v3_small={zoo['mnv3']},hf:{zoo['vit']}", "--data",
                 str(zoo["data"]), "--cache", str(tmp_path / "c"), "--out", str(out), "--batch-size", "4",
                 "--quiet"]) == 0
    assert np.load(out / "mobilenet_v3_small-mnv3.npy").shape == (6, 1024) and np.load(out / "vit.npy").shape == (6, 32)


def test_in_memory_models_on_ray(zoo, tmp_path):
    """With the Ray executor, in-memory models are pickled to the workers
    (a lambda too) and give the rows the local executor gives."""
    import ray

    from ped_fast.zoo.ray_executor import RayExecutor

    net = get_model("resnet18", num_classes=5)
    models = {"pool": Model(net, layer="avgpool", data_config=SMALL_CONFIG),
              "fn": Model(lambda batch: batch.mean(dim=(2, 3)), data_config=SMALL_CONFIG, identity="mean")}
    options = dict(scorers=("sfda",), batch_size=4, progress=False)
    local = screen(models, zoo["data"], "self", cache=tmp_path / "local", **options)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = screen(models, zoo["data"], "self", cache=tmp_path / "ray", executor=RayExecutor(progress=False),
                        **options)
    finally:
        ray.shutdown()
    for mine, theirs in zip(local["models"], remote["models"], strict=True):
        assert theirs["error"] is None and mine["identity"] == theirs["identity"]
        assert mine["scores"] == theirs["scores"]
