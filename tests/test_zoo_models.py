"""Model specs, safe weight loading and weights identities (ped_fast.zoo.models).

Only tiny timm test models with random weights: no network is needed."""
import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ped_fast.zoo.models import (LoadedModel, ModelSpec, load_model, parse_models, parse_spec, save_model_dir,
                                 weights_identity)

TINY = ["test_resnet", "test_vit", "test_convnext", "test_efficientnet"]


def _outputs(model, size=32, seed=0):
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(x)


# --- parsing ---------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("test_resnet", ModelSpec("test_resnet", "test_resnet", None)),
    (" resnet18.a1_in1k ", ModelSpec("resnet18.a1_in1k", "resnet18.a1_in1k", None)),
    ("test_vit=/w/run3.safetensors", ModelSpec("test_vit-run3", "test_vit", "/w/run3.safetensors")),
    ("test_vit=/w/ckpt_dir/", ModelSpec("test_vit-ckpt_dir", "test_vit", "/w/ckpt_dir/")),
    ("mine:test_vit=/w/a.pt", ModelSpec("mine", "test_vit", "/w/a.pt")),
    ("mine:test_vit", ModelSpec("mine", "test_vit", None)),
    ("test_vit=/w/model_best.pth.tar", ModelSpec("test_vit-model_best", "test_vit", "/w/model_best.pth.tar")),
    ("labels2:test_vit", ModelSpec("labels2", "test_vit", None)),
    ("a.logits2:test_vit", ModelSpec("a.logits2", "test_vit", None)),
])
def test_parse_spec(text, expected):
    assert parse_spec(text) == expected


@pytest.mark.parametrize("text, message", [
    ("", "no model name"),
    ("mine:", "no model name"),
    (":test_vit", "no label"),
    ("test_vit=", "no weights path"),
    ("timm/resnet18", "must be a timm model name"),  # hf-hub:timm/resnet18 is a source (test_zoo_model_sources)
    ("my model:test_vit", "label 'my model'"),
    ("labels:test_vit", "label 'labels' is named like another file of a --features folder"),
    ("Labels:test_vit", "label 'Labels' is named like another file"),
    ("a.logits:test_vit", "label 'a.logits' is named like another file"),
    ("a.reference:test_vit", "label 'a.reference' is named like another file"),
    ("a.Reference_Stats:test_vit", "label 'a.Reference_Stats' is named like another file"),
    ("test_vit=/w/x.reference.pt", r"label 'test_vit-x.reference'.*give another as LABEL:test_vit=/w/x.reference.pt"),
])
def test_parse_spec_rejects(text, message):
    with pytest.raises(ValueError, match=message):
        parse_spec(text)


def test_parse_models_forms(tmp_path):
    expected = [ModelSpec("test_resnet", "test_resnet"), ModelSpec("b", "test_vit", "w.pt")]
    assert parse_models("test_resnet, b:test_vit=w.pt") == expected
    assert parse_models(["test_resnet", "b:test_vit=w.pt"]) == expected
    file = tmp_path / "zoo.json"
    file.write_text(json.dumps(["test_resnet", "b:test_vit=w.pt"]))
    assert parse_models(str(file)) == expected
    assert parse_models(file) == expected


def test_parse_models_rejects(tmp_path):
    with pytest.raises(ValueError, match=r"duplicate labels \['test_vit'\]"):
        parse_models("test_vit,test_resnet,test_vit")
    with pytest.raises(ValueError, match="models is empty"):
        parse_models(" , ")
    with pytest.raises(FileNotFoundError, match="nope.json"):
        parse_models(str(tmp_path / "nope.json"))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"a": "test_vit"}))
    with pytest.raises(ValueError, match="JSON list of spec strings"):
        parse_models(str(bad))


# --- building and loading --------------------------------------------------

@pytest.mark.parametrize("name", TINY)
def test_random_weights_are_seeded_and_leave_global_rng(name):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = load_model(name, pretrained=False, seed=1)
    assert torch.equal(torch.get_rng_state(), before)
    b = load_model(name, pretrained=False, seed=1)
    c = load_model(name, pretrained=False, seed=2)
    assert isinstance(a, LoadedModel) and a.identity == "random:seed=1" and c.identity == "random:seed=2"
    assert not a.model.training
    assert a.data_config["input_size"] == (3, 160, 160)
    assert torch.equal(_outputs(a.model), _outputs(b.model))
    assert not torch.equal(_outputs(a.model), _outputs(c.model))


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_checkpoint_file_keeps_its_head(tmp_path, name, fmt):
    """A 7-class head saved with the weights comes back: the extractor keeps
    logits when there is a head."""
    source = load_model(name, pretrained=False, seed=5).model
    source.reset_classifier(7)
    torch.nn.init.normal_(source.get_classifier().weight, generator=torch.Generator().manual_seed(0))
    file = tmp_path / f"w.{fmt}"
    state = source.state_dict()
    save_file(state, str(file)) if fmt == "safetensors" else torch.save({"state_dict": state}, file)
    loaded = load_model(f"{name}={file}", pretrained=False, seed=99)
    assert loaded.model.num_classes == 7
    assert torch.equal(_outputs(loaded.model), _outputs(source.eval()))
    assert loaded.identity == weights_identity(f"{name}={file}") and loaded.identity.startswith("sha256:")


def test_headless_checkpoint_loads_headless(tmp_path):
    source = load_model("test_convnext", pretrained=False).model
    source.reset_classifier(0)
    file = tmp_path / "headless.safetensors"
    save_file(source.state_dict(), str(file))
    loaded = load_model(f"test_convnext={file}")
    assert loaded.model.num_classes == 0
    assert torch.equal(_outputs(loaded.model), _outputs(source.eval()))


def test_directory_layout_applies_config(tmp_path):
    """config.json's model_args and pretrained_cfg rebuild the model and its
    transform (a 32-pixel ViT with its own normalisation)."""
    import timm

    cfg = {"input_size": (3, 32, 32), "interpolation": "bilinear", "mean": (0.1, 0.2, 0.3),
           "std": (0.3, 0.2, 0.1), "crop_pct": 1.0, "crop_mode": "center"}
    source = timm.create_model("test_vit", pretrained=False, num_classes=4, img_size=32).eval()
    directory = save_model_dir(source, tmp_path / "vit32", architecture="test_vit", model_args={"img_size": 32},
                               pretrained_cfg=cfg)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vit32"]
    loaded = load_model(f"test_vit={directory}", pretrained=False)
    assert loaded.spec.label == "test_vit-vit32"
    assert loaded.data_config == cfg
    assert torch.equal(_outputs(loaded.model), _outputs(source))
    # config.json is part of the identity: the same weights with another
    # transform are another model for the cache.
    before = weights_identity(f"test_vit={directory}")
    config = json.loads((directory / "config.json").read_text())
    config["pretrained_cfg"]["crop_pct"] = 0.875
    (directory / "config.json").write_text(json.dumps(config))
    assert weights_identity(f"test_vit={directory}") != before
    assert load_model(f"test_vit={directory}").data_config["crop_pct"] == 0.875


def test_save_model_dir_writes_through_the_package_temporaries(tmp_path, monkeypatch):
    """save_model_dir fills a temporary the package's sweep recognises
    (ped_fast.zoo._files), and a failed save leaves the old directory whole."""
    import safetensors.torch

    from ped_fast.zoo._files import temporary_target

    model = load_model("test_resnet", pretrained=False).model
    directory = save_model_dir(model, tmp_path / "r", architecture="test_resnet")
    before = {f.name: f.read_bytes() for f in directory.iterdir()}
    seen = []

    def failing_save(state, filename, *args, **kwargs):
        seen.append(Path(filename).parent.name)
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_model_dir(model, directory, architecture="test_resnet")
    assert [temporary_target(name) for name in seen] == ["r"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]
    assert {f.name: f.read_bytes() for f in directory.iterdir()} == before


def test_directory_architecture_must_match(tmp_path):
    directory = save_model_dir(load_model("test_resnet", pretrained=False).model, tmp_path / "r",
                               architecture="test_resnet")
    with pytest.raises(ValueError, match="'test_vit'.*holds a 'test_resnet'"):
        load_model(f"test_vit={directory}")
    (directory / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="neither model.safetensors nor pytorch_model.bin"):
        load_model(f"test_resnet={directory}")


def test_identity_is_hashed_once_per_file_version(tmp_path, monkeypatch):
    import hashlib

    from ped_fast.zoo import digest

    file = tmp_path / "w.safetensors"
    save_file(load_model("test_resnet", pretrained=False).model.state_dict(), str(file))
    calls = []
    real = digest._sha256
    monkeypatch.setattr(digest, "_sha256", lambda path: calls.append(1) or real(path))
    first = weights_identity(f"test_resnet={file}")
    assert weights_identity(f"test_resnet={file}") == first and len(calls) == 1
    assert first == "sha256:" + hashlib.sha256(file.read_bytes()).hexdigest()
    # A rewritten file (new size/mtime) is hashed again.
    save_file(load_model("test_resnet", pretrained=False, seed=3).model.state_dict(), str(file))
    assert weights_identity(f"test_resnet={file}") != first and len(calls) == 2


def test_hub_identity_needs_no_download():
    assert weights_identity("resnet18") == "timm:resnet18.a1_in1k"
    assert weights_identity("resnet18.tv_in1k") == "timm:resnet18.tv_in1k"
    assert weights_identity("test_vit", pretrained=False, seed=4) == "random:seed=4"
    with pytest.raises(ValueError, match="no pretrained weights for 'test_mambaout'"):
        weights_identity("test_mambaout")
    with pytest.raises(ValueError, match=r"unknown pretrained tag 'not_a_tag' for 'resnet18'.*timm knows .*a1_in1k"):
        weights_identity("resnet18.not_a_tag")


@pytest.mark.parametrize("spec", ["test_resnet.bogus", "mine:test_resnet.bogus", "test_resnet.bogus=FILE"])
def test_unknown_tag_is_refused_without_pretrained_weights(spec, tmp_path):
    """The tag picks the transform and names the weights: an unknown one is
    bad input even with random weights (--no-pretrained), found when the
    specs are checked, before any work."""
    file = tmp_path / "w.safetensors"
    save_file(load_model("test_resnet", pretrained=False).model.state_dict(), str(file))
    with pytest.raises(ValueError, match=r"unknown pretrained tag 'bogus' for 'test_resnet'.*timm knows r160_in1k"):
        weights_identity(spec.replace("FILE", str(file)), pretrained=False)
    assert weights_identity("test_resnet.r160_in1k", pretrained=False) == "random:seed=0"


# --- bad input ---------------------------------------------------------------

def test_unknown_name_lists_close_matches():
    with pytest.raises(ValueError, match=r"'mine'.*unknown timm model name 'resnet_18'.*close matches:.*resnet18"):
        load_model("mine:resnet_18", pretrained=False)
    with pytest.raises(ValueError, match="unknown timm model name 'zzzqqq'"):
        weights_identity("zzzqqq")


def test_checkpoint_of_another_architecture_names_keys(tmp_path):
    import timm

    file = tmp_path / "resnet.safetensors"
    resnet = load_model("test_resnet", pretrained=False).model.state_dict()
    # The checkpoint has no "head.weight", so the ViT is built headless.
    vit = timm.create_model("test_vit", num_classes=0).state_dict()
    save_file(resnet, str(file))
    with pytest.raises(ValueError) as info:
        load_model(f"test_vit={file}")
    message = str(info.value)
    assert "does not fit architecture 'test_vit'" in message and str(file) in message
    assert f"{len(vit)} missing keys (cls_token, pos_embed," in message
    assert f"{len(resnet)} unexpected keys (bn1.num_batches_tracked," in message


def test_shape_mismatch_is_named(tmp_path):
    state = load_model("test_resnet", pretrained=False).model.state_dict()
    state["conv1.0.weight"] = torch.zeros(3, 3, 3, 3)
    file = tmp_path / "w.pt"
    torch.save(state, file)
    with pytest.raises(ValueError, match=r"1 shape mismatches \(conv1.0.weight: checkpoint \(3, 3, 3, 3\)"):
        load_model(f"test_resnet={file}")


class _Payload:
    """Unpickling this would write a file: the attack weights_only blocks."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return exec, (f"open({self.target!r}, 'w').write('owned')",)


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_code_running_pickle_is_refused(tmp_path, writer):
    marker = tmp_path / "marker.txt"
    file = tmp_path / "evil.pth"
    state = {"fc.weight": torch.zeros(2, 2), "boom": _Payload(marker)}
    if writer == "torch.save":
        torch.save(state, file)
    else:
        with open(file, "wb") as f:
            pickle.dump(state, f, protocol=2)
    # The payload really runs when unpickled without protection.
    pickle.loads(pickle.dumps(_Payload(tmp_path / "control.txt")))
    assert (tmp_path / "control.txt").read_text() == "owned"
    with pytest.raises(ValueError, match=r"'test_resnet-evil'.*refused to load .*evil\.pth"):
        load_model(f"test_resnet={file}")
    assert not marker.exists()


def test_missing_and_unknown_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"'test_vit-nothere'.*nothere\.safetensors.*does not exist"):
        load_model(f"test_vit={tmp_path / 'nothere.safetensors'}")
    odd = tmp_path / "weights.h5"
    odd.write_bytes(b"\x89HDF")
    with pytest.raises(ValueError, match=r"weights\.h5.*unknown type '\.h5'"):
        weights_identity(f"test_vit={odd}")
    # timm reads a file as safetensors only by its lower-case suffix.
    shouting = tmp_path / "w.SAFETENSORS"
    save_file(load_model("test_vit", pretrained=False).model.state_dict(), str(shouting))
    with pytest.raises(ValueError, match=r"w\.SAFETENSORS.*unknown type '\.SAFETENSORS'; expected \.safetensors"):
        weights_identity(f"test_vit={shouting}")
    upper = tmp_path / "W.PTH"
    torch.save(load_model("test_vit", pretrained=False).model.state_dict(), upper)
    assert load_model(f"test_vit={upper}").spec.label == "test_vit-W"
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="cannot read safetensors file"):
        load_model(f"test_vit={junk}")
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_model(f"test_vit={tmp_path / 'emptydir'}")
