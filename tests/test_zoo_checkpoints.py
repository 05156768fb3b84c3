"""Checkpoints load the way timm loads them (ped_fast.zoo.models), and hub
weights fail fast offline.

Every expected model here comes from timm itself: timm.models.load_checkpoint
for training checkpoints, timm.create_model(pretrained=True) with a file
overlay for timm's pretrained path. No network is needed."""
import argparse
import hashlib
import re
import time

import pytest
import timm
import torch
from safetensors.torch import save_file

from ped_fast.zoo import models
from ped_fast.zoo.models import load_model, save_model_dir, weights_identity


def _outputs(model, size=32, seed=0):
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.eval()(x)


def _seeded_model(name, seed, **kwargs):
    torch.manual_seed(seed)
    return timm.create_model(name, **kwargs).eval()


def _timm_pretrained_path(name, file, **overlay):
    """What timm's own pretrained path builds from a local file."""
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(file), **overlay)).eval()


# --- training checkpoints ----------------------------------------------------

def _train_py_checkpoints(folder):
    """Checkpoints written by timm's CheckpointSaver, as timm's train.py
    writes them: epoch, arch, args (an argparse.Namespace), optimizer state,
    state_dict and, with --model-ema, a different state_dict_ema."""
    from timm.utils import CheckpointSaver, ModelEmaV3

    model = _seeded_model("test_resnet", 0)
    ema = ModelEmaV3(model, decay=0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    model.train()
    for step in range(2):
        optimizer.zero_grad()
        model(x).logsumexp(dim=1).mean().backward()
        optimizer.step()
        ema.update(model, step=step + 1)  # step 0 copies the weights outright
    args = argparse.Namespace(model="test_resnet", lr=0.5, model_ema=True)
    saver = CheckpointSaver(model, optimizer, args=args, model_ema=ema, checkpoint_dir=str(folder))
    saver.save_checkpoint(epoch=0, metric=0.5)
    return folder / "model_best.pth.tar", folder / "checkpoint-0.pth.tar"


def test_train_py_checkpoint_loads_its_ema_weights_as_timm_does(tmp_path):
    best, numbered = _train_py_checkpoints(tmp_path)
    raw = torch.load(best, weights_only=False)
    assert {"epoch", "arch", "args", "optimizer", "state_dict", "state_dict_ema"} <= set(raw)
    assert not torch.equal(raw["state_dict"]["fc.weight"], raw["state_dict_ema"]["fc.weight"])
    for path in (best, numbered):
        for choice in ({}, {"use_ema": True}, {"use_ema": False}):
            expected = _seeded_model("test_resnet", 9)
            timm.models.load_checkpoint(expected, str(path), **choice)
            loaded = load_model(f"test_resnet={path}", **choice)
            assert torch.equal(_outputs(loaded.model), _outputs(expected))
            assert loaded.identity == weights_identity(f"test_resnet={path}", **choice)
    assert load_model(f"test_resnet={best}").spec.label == "test_resnet-model_best"
    assert not torch.equal(_outputs(load_model(f"test_resnet={best}").model),
                           _outputs(load_model(f"test_resnet={best}", use_ema=False).model))


@pytest.mark.parametrize("entries", [("state_dict", "state_dict_ema"), ("model", "model_ema")])
def test_ema_weights_are_preferred(tmp_path, entries):
    plain, ema = _seeded_model("test_resnet", 0), _seeded_model("test_resnet", 1)
    file = tmp_path / "w.pth"
    torch.save({entries[0]: plain.state_dict(), entries[1]: ema.state_dict()}, file)
    assert torch.equal(_outputs(load_model(f"test_resnet={file}").model), _outputs(ema))
    assert torch.equal(_outputs(load_model(f"test_resnet={file}", use_ema=False).model), _outputs(plain))


def test_ema_choice_is_part_of_the_identity(tmp_path):
    """EMA and plain weights of one file are different models for the
    cache; a file without EMA weights has one identity either way."""
    best, _ = _train_py_checkpoints(tmp_path)
    ema, plain = (weights_identity(f"test_resnet={best}", use_ema=choice) for choice in (True, False))
    assert ema != plain and ema.endswith(":ema") and plain.endswith(":no-ema")
    assert ema.startswith(weights_identity(f"test_resnet={best}").partition(":ema")[0])
    single = tmp_path / "plain.pth"
    torch.save({"state_dict": _seeded_model("test_resnet", 0).state_dict()}, single)
    assert (weights_identity(f"test_resnet={single}") == weights_identity(f"test_resnet={single}", use_ema=False)
            == "sha256:" + hashlib.sha256(single.read_bytes()).hexdigest())


def test_ema_only_checkpoint_without_ema_is_refused(tmp_path):
    file = tmp_path / "ema_only.pth"
    torch.save({"epoch": 3, "state_dict_ema": _seeded_model("test_resnet", 0).state_dict()}, file)
    assert weights_identity(f"test_resnet={file}").endswith(":ema")
    with pytest.raises(ValueError, match=r"'test_resnet-ema_only'.*only EMA weights \('state_dict_ema'\).*--no-ema"):
        weights_identity(f"test_resnet={file}", use_ema=False)


@pytest.mark.parametrize("wrap", ["torch.compile", "DataParallel", "compiled DataParallel"])
def test_wrapper_prefixes_are_stripped(tmp_path, wrap):
    source = _seeded_model("test_resnet", 3)
    wrapped = {"torch.compile": lambda m: torch.compile(m),
               "DataParallel": lambda m: torch.nn.DataParallel(m),
               "compiled DataParallel": lambda m: torch.compile(torch.nn.DataParallel(m))}[wrap](source)
    state = wrapped.state_dict()
    prefix = {"torch.compile": "_orig_mod.", "DataParallel": "module.", "compiled DataParallel": "_orig_mod.module."}
    assert all(key.startswith(prefix[wrap]) for key in state)
    file = tmp_path / "wrapped.pth"
    torch.save({"state_dict": state}, file)
    assert torch.equal(_outputs(load_model(f"test_resnet={file}").model), _outputs(source))


def test_pth_tar_loads_and_tar_is_refused(tmp_path):
    source = _seeded_model("test_vit", 4)
    file = tmp_path / "last.pth.tar"
    torch.save(source.state_dict(), file)
    loaded = load_model(f"test_vit={file}")
    assert loaded.spec.label == "test_vit-last"
    assert torch.equal(_outputs(loaded.model, size=160), _outputs(source, size=160))
    archive = tmp_path / "weights.tar"
    archive.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"weights\.tar.*unknown type '\.tar'"):
        weights_identity(f"test_vit={archive}")


# --- timm's pretrained path: checkpoint filters ------------------------------

def test_vit_checkpoint_for_another_image_size_is_resized(tmp_path):
    """A ViT trained at 64 pixels, loaded as the 160-pixel test_vit: the
    checkpoint filter resizes pos_embed, as timm's pretrained path does."""
    source = _seeded_model("test_vit", 5, img_size=64)
    file = tmp_path / "vit64.safetensors"
    save_file(source.state_dict(), str(file))
    expected = _timm_pretrained_path("test_vit", file)
    assert expected.pos_embed.shape != source.pos_embed.shape
    loaded = load_model(f"test_vit={file}")
    assert loaded.model.pos_embed.shape == expected.pos_embed.shape
    assert torch.equal(_outputs(loaded.model, size=160), _outputs(expected, size=160))


def test_directory_pretrained_cfg_reaches_timms_loader(tmp_path):
    """A hub-layout folder whose recorded transform is 32 pixels: timm
    builds the fixed-size ViT at 32 pixels and its filter resizes the saved
    160-pixel pos_embed, as timm's pretrained path with that overlay does."""
    cfg = {"input_size": (3, 32, 32), "interpolation": "bilinear", "mean": (0.5, 0.5, 0.5),
           "std": (0.5, 0.5, 0.5), "crop_pct": 1.0, "crop_mode": "center"}
    source = _seeded_model("test_vit", 6)
    directory = save_model_dir(source, tmp_path / "vit", architecture="test_vit", pretrained_cfg=cfg)
    expected = _timm_pretrained_path("test_vit", directory / "model.safetensors", **cfg)
    loaded = load_model(f"test_vit={directory}")
    assert loaded.data_config == cfg
    assert torch.equal(_outputs(loaded.model), _outputs(expected))
    assert "state_dict" not in loaded.model.pretrained_cfg


def _facebook_convnext(state):
    """`state` (timm's ConvNeXt names) in the original facebookresearch
    layout that timm's ConvNeXt filter converts back."""
    out = {}
    for key, value in state.items():
        key = re.sub(r"^stem\.", "downsample_layers.0.", key)
        key = re.sub(r"^stages\.(\d+)\.downsample\.", r"downsample_layers.\1.", key)
        key = re.sub(r"^stages\.(\d+)\.blocks\.", r"stages.\1.", key)
        key = key.replace("conv_dw", "dwconv").replace("mlp.fc", "pwconv")
        out[key.replace("head.fc.", "head.").replace("head.norm.", "norm.")] = value
    return {"model": out}


def test_original_format_convnext_loads_through_its_filter(tmp_path):
    source = _seeded_model("test_convnext", 7)
    checkpoint = _facebook_convnext(source.state_dict())
    assert "head.weight" in checkpoint["model"] and "head.fc.weight" not in checkpoint["model"]
    file = tmp_path / "convnext_fb.pth"
    torch.save(checkpoint, file)
    loaded = load_model(f"test_convnext={file}")
    assert loaded.model.num_classes == 1000
    assert torch.equal(_outputs(loaded.model), _outputs(_timm_pretrained_path("test_convnext", file)))
    assert torch.equal(_outputs(loaded.model), _outputs(source))


# --- bad checkpoints -----------------------------------------------------------

def test_argparse_namespace_is_allowed_but_code_is_not(tmp_path):
    """The one non-tensor class timm's loader allows (train.py's args)
    loads; anything that would run code is still refused, before any model
    is built (weights_identity reads the pickle)."""
    marker = tmp_path / "marker.txt"

    class Payload:
        def __reduce__(self):
            return exec, (f"open({str(marker)!r}, 'w').write('owned')",)

    file = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": _seeded_model("test_resnet", 0).state_dict(), "args": Payload()}, file)
    with pytest.raises(ValueError, match=r"refused to load .*evil\.pth\.tar.*would run code"):
        weights_identity(f"test_resnet={file}")
    assert not marker.exists()


# --- hub weights offline ---------------------------------------------------------

@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return tmp_path / "hub"


def _fake_hub_entry(cache, repo_id, state):
    """`state` as the cached model.safetensors of hub repo `repo_id`, in
    huggingface_hub's cache layout."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    save_file(state, str(repo / "snapshots" / commit / "model.safetensors"))


def test_unreachable_hub_fails_at_once_with_the_hint(empty_hub_cache, monkeypatch):
    monkeypatch.setattr(models, "_hub_unreachable", lambda: "https://huggingface.co cannot be reached: test")
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match=r"'resnet18'.*not in the local Hugging Face cache.*cannot be reached: test"
                                           r".*--no-pretrained"):
        load_model("resnet18")
    assert time.perf_counter() - start < 15


def test_unreachable_hub_takes_cached_weights_without_retries(empty_hub_cache, monkeypatch):
    monkeypatch.setattr(models, "_hub_unreachable", lambda: "https://huggingface.co cannot be reached: test")
    source = _seeded_model("test_resnet", 11)
    _fake_hub_entry(empty_hub_cache, "timm/test_resnet.r160_in1k", source.state_dict())
    start = time.perf_counter()
    loaded = load_model("test_resnet")
    assert time.perf_counter() - start < 15
    assert loaded.identity == "timm:test_resnet.r160_in1k"
    assert torch.equal(_outputs(loaded.model), _outputs(source))


def test_hf_hub_offline_is_honoured_without_probing(empty_hub_cache, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(models, "_hub_unreachable", lambda: pytest.fail("probed the hub although HF_HUB_OFFLINE is set"))
    with pytest.raises(RuntimeError, match=r"not in the local Hugging Face cache .*HF_HUB_OFFLINE is set"):
        load_model("resnet18")
    assert constants.HF_HUB_OFFLINE is True


def test_hub_probe_reports_an_unreachable_endpoint(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    models._hub_unreachable.cache_clear()
    try:
        start = time.perf_counter()
        reason = models._hub_unreachable()
        assert time.perf_counter() - start <= models._HUB_PROBE_SECONDS + 1
    finally:
        models._hub_unreachable.cache_clear()
    assert reason.startswith("http://127.0.0.1:9 cannot be reached: ")

