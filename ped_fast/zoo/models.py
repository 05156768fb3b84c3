"""Model specs: parse them, build the model with timm, load weights safely,
and name the weights for the cache without building anything.

A SPEC is one of
- ``NAME``: a timm model name (optionally with a pretrained tag,
  ``resnet18.a1_in1k``); pretrained weights come through timm (the Hugging
  Face hub when online, the local hub cache when offline);
- ``NAME=PATH``: weights from a local file (``.safetensors``, or a PyTorch
  state dict ``.pt``/``.pth``/``.bin``/``.ckpt`` read with
  ``torch.load(weights_only=True)``: a pickle that would run code is refused),
  or from a directory in timm's hub layout (``config.json`` + ``model.safetensors``
  or ``pytorch_model.bin``, see :func:`save_model_dir`);
- ``LABEL:NAME[=PATH]``: the same, with the row's own name.

The default label is NAME, or ``NAME-STEM`` when PATH is given (STEM: the
file name without its suffix, or the directory's name), so that two
checkpoints of one architecture get different rows. Labels name files in
reports and feature folders, so they are limited to letters, digits and
``._+@-``.

A spec with a PATH always loads that file; ``pretrained=False`` (the CLI's
``--no-pretrained``) only replaces hub weights of plain ``NAME`` specs by
seeded random weights.
"""
from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import os
import pickle
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+@-]*")
_TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# pretrained_cfg keys that decide the eval transform; save_model_dir keeps
# these and drops hub addresses that would not describe a local checkpoint.
_DATA_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
# How many key names an architecture-mismatch error lists of each kind.
_SHOWN_KEYS = 5


@dataclass(frozen=True)
class ModelSpec:
    """One candidate: `label` names its row, `name` is the timm
    architecture (with an optional pretrained tag), `path` a local weights
    file or hub-layout directory (None: weights through timm)."""
    label: str
    name: str
    path: str | None = None


@dataclass
class LoadedModel:
    """A built model in eval mode on the CPU.

    identity: the weights' identity for cache keys ("sha256:<hex>" of the
    weights file(s), "timm:<arch>.<tag>" for hub weights, "random:seed=<s>"
    for seeded random weights). data_config: timm's resolved data config
    (input_size, interpolation, mean, std, crop_pct, crop_mode)."""
    spec: ModelSpec
    model: torch.nn.Module
    identity: str
    data_config: dict


def parse_spec(text) -> ModelSpec:
    """Parse one SPEC string (see the module docstring)."""
    if isinstance(text, ModelSpec):
        return text
    if not isinstance(text, str):
        raise TypeError(f"model spec must be a string like NAME, NAME=PATH or LABEL:NAME[=PATH], "
                        f"got {type(text).__name__}")
    spec = text.strip()
    head, has_path, path = spec.partition("=")
    label, has_label, name = head.partition(":")
    if not has_label:
        label, name = "", head
    label, name, path = label.strip(), name.strip(), path.strip()
    if not name:
        raise ValueError(f"model spec {text!r} has no model name; expected NAME, NAME=PATH or LABEL:NAME[=PATH]")
    if has_path and not path:
        raise ValueError(f"model spec {text!r} has '=' but no weights path after it")
    if has_label and not label:
        raise ValueError(f"model spec {text!r} has ':' but no label before it")
    if any(c in name for c in "/\\:"):
        raise ValueError(f"model spec {text!r}: model name {name!r} must be a timm model name "
                         f"(no '/', '\\' or ':'); give local weights as NAME=PATH")
    if not label:
        label = name if not has_path else f"{name}-{_stem(path)}"
    if not _LABEL.fullmatch(label):
        raise ValueError(f"model spec {text!r}: label {label!r} must start with a letter or digit and contain "
                         f"only letters, digits and '._+@-' (it names files); give one as LABEL:{name}"
                         f"{'=' + path if has_path else ''}")
    return ModelSpec(label=label, name=name, path=path or None)


def _stem(path):
    p = Path(path.rstrip("/\\"))
    return p.name if p.suffix.lower() not in (".safetensors",) + _TORCH_SUFFIXES else p.stem


def parse_models(value) -> list[ModelSpec]:
    """Specs from a comma-separated string, a list of strings (or ModelSpec),
    or the path of a JSON file holding a list of spec strings."""
    if isinstance(value, (str, os.PathLike)):
        text = os.fspath(value).strip()
        if text.lower().endswith(".json") and "," not in text and "=" not in text:
            file = Path(text)
            if not file.is_file():
                raise FileNotFoundError(f"models file {text!r} does not exist")
            try:
                items = json.loads(file.read_text())
            except json.JSONDecodeError as err:
                raise ValueError(f"models file {text!r} is not valid JSON: {err}") from None
            if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
                raise ValueError(f"models file {text!r} must hold a JSON list of spec strings, "
                                 f"got {type(items).__name__}")
        else:
            items = [item for item in text.split(",") if item.strip()]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise TypeError(f"models must be a comma-separated string, a list of specs or a JSON file path, "
                        f"got {type(value).__name__}")
    if not items:
        raise ValueError(f"models is empty: got {value!r}; give at least one SPEC")
    specs = [parse_spec(item) for item in items]
    labels = [spec.label for spec in specs]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ValueError(f"models has duplicate labels {duplicates}; give each row its own name as LABEL:NAME[=PATH]")
    return specs


def check_name(spec: ModelSpec) -> str:
    """The architecture of `spec.name` (tag removed); unknown names raise a
    ValueError listing close matches among timm's models."""
    import timm
    from timm.models import split_model_name_tag

    arch = split_model_name_tag(spec.name)[0]
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; close matches: {', '.join(close)}" if close else "; see timm.list_models()"
        raise ValueError(f"model {spec.label!r}: unknown timm model name {spec.name!r}{hint}")
    return arch


def weights_identity(spec, *, pretrained=True, seed=0) -> str:
    """The identity LoadedModel.identity will have, without building the
    model or downloading anything."""
    spec = parse_spec(spec)
    arch = check_name(spec)
    if spec.path is not None:
        files = _weight_files(spec, arch)
        if len(files) == 1:
            return "sha256:" + _file_sha256(files[0])
        # A directory: config.json changes the model (model_args, transform),
        # so it is part of the identity along with the weights.
        joined = "".join(f"{f.name}:{_file_sha256(f)}\n" for f in files)
        return "sha256:" + hashlib.sha256(joined.encode()).hexdigest()
    if not pretrained:
        return f"random:seed={seed}"
    return f"timm:{arch}.{_pretrained_tag(spec, arch)}"


def _pretrained_tag(spec, arch):
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(spec.name)
    except RuntimeError as err:
        raise ValueError(f"model {spec.label!r}: {err}") from None
    if cfg is None or not (cfg.url or cfg.hf_hub_id or cfg.file or cfg.state_dict) or not cfg.tag:
        raise ValueError(f"model {spec.label!r}: timm has no pretrained weights for {spec.name!r}; "
                         f"give a weights file as {spec.name}=PATH or use random weights (--no-pretrained)")
    return cfg.tag


_HASHES: dict = {}


def _file_sha256(path: Path) -> str:
    """sha256 of a file's contents, computed once per (path, size, mtime)
    in this process: a zoo's checkpoints are hashed for every cache lookup."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


def _weight_files(spec, arch) -> list[Path]:
    """[weights file] for a file PATH, [config.json, weights] for a directory."""
    path = Path(spec.path).expanduser()
    if path.is_dir():
        config = path / "config.json"
        if not config.is_file():
            raise FileNotFoundError(f"model {spec.label!r}: weights directory {str(path)!r} has no config.json "
                                    f"(expected timm's hub layout: config.json + model.safetensors)")
        weights = [path / name for name in _WEIGHT_FILES if (path / name).is_file()]
        if not weights:
            raise FileNotFoundError(f"model {spec.label!r}: weights directory {str(path)!r} has neither "
                                    f"{' nor '.join(_WEIGHT_FILES)}")
        return [config, weights[0]]
    if not path.exists():
        raise FileNotFoundError(f"model {spec.label!r}: weights file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix != ".safetensors" and suffix not in _TORCH_SUFFIXES:
        raise ValueError(f"model {spec.label!r}: weights file {str(path)!r} has unknown type {suffix or '(none)'!r}; "
                         f"expected .safetensors, {', '.join(_TORCH_SUFFIXES)} or a hub-layout directory")
    return [path]


def load_model(spec, *, pretrained=True, seed=0) -> LoadedModel:
    """Build `spec` with timm, in eval mode on the CPU.

    pretrained: for a plain NAME, timm's pretrained weights (True) or
    random weights seeded with `seed` (False); a spec with a PATH always
    loads its file. Random initialisation runs under a forked RNG, so the
    caller's torch RNG state is left as it was."""
    import timm

    spec = parse_spec(spec)
    arch = check_name(spec)
    identity = weights_identity(spec, pretrained=pretrained, seed=seed)
    if spec.path is None and pretrained:
        try:
            model = timm.create_model(spec.name, pretrained=True)
        except Exception as err:
            raise RuntimeError(f"model {spec.label!r}: could not get timm's pretrained weights for {spec.name!r} "
                               f"({type(err).__name__}: {err}); offline, they must already be in the Hugging Face "
                               f"cache; or use random weights (--no-pretrained)") from err
    elif spec.path is None:
        model = _random_model(spec.name, seed)
    else:
        files = _weight_files(spec, arch)
        if len(files) == 2:
            model = _from_directory(spec, arch, files)
        else:
            state = _read_state_dict(spec, files[0])
            model = _random_model(spec.name, seed)
            _fit_head(model, state)
            _load_strict(spec, model, state, files[0])
    model.eval()
    return LoadedModel(spec=spec, model=model, identity=identity,
                       data_config=dict(timm.data.resolve_model_data_config(model)))


def _random_model(name, seed, **kwargs):
    import timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return timm.create_model(name, pretrained=False, **kwargs)


def _from_directory(spec, arch, files):
    from timm.models import split_model_name_tag

    config_file, weights_file = files
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"model {spec.label!r}: {str(config_file)!r} is not valid JSON: {err}") from None
    saved = config.get("architecture") if isinstance(config, dict) else None
    if not isinstance(saved, str):
        raise ValueError(f"model {spec.label!r}: {str(config_file)!r} has no 'architecture' entry")
    if split_model_name_tag(saved)[0] != arch:
        raise ValueError(f"model {spec.label!r}: spec names architecture {spec.name!r} but {str(config_file)!r} "
                         f"holds a {saved!r}; write the spec as ...:{saved}={spec.path}")
    kwargs = dict(config.get("model_args") or {})
    if "num_classes" in config:
        kwargs["num_classes"] = config["num_classes"]
    # JSON has no tuples; timm's own configs (and so cache keys derived
    # from data configs) use them.
    overlay = {k: tuple(v) if isinstance(v, list) else v for k, v in (config.get("pretrained_cfg") or {}).items()}
    overlay.update(file=str(weights_file), source="local-dir", hf_hub_id=None, url="")
    model = _random_model(arch, 0, pretrained_cfg_overlay=overlay, **kwargs)
    _load_strict(spec, model, _read_state_dict(spec, weights_file), weights_file)
    return model


def _read_state_dict(spec, path: Path) -> dict:
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as err:
            raise ValueError(f"model {spec.label!r}: cannot read safetensors file {str(path)!r}: {err}") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message is a page of advice; keep the line naming the
        # offending global ("Unsupported global: GLOBAL exec ...").
        lines = [line.strip() for line in str(err).splitlines()]
        reason = next((line.split(". Please")[0] for line in lines if "WeightsUnpickler error" in line), lines[0])
        raise ValueError(f"model {spec.label!r}: refused to load {str(path)!r}: its pickle would run code or build "
                         f"objects other than tensors, which torch.load(weights_only=True) does not allow "
                         f"({reason}). Re-save the weights as .safetensors or as a plain state dict") from None
    except Exception as err:
        raise ValueError(f"model {spec.label!r}: cannot read {str(path)!r} as a PyTorch state dict: {err}") from None
    # Training checkpoints wrap the state dict; DataParallel prefixes keys.
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"model {spec.label!r}: {str(path)!r} does not hold a state dict (name -> tensor)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _classifier_name(model):
    name = model.pretrained_cfg.get("classifier")
    return name[0] if isinstance(name, (tuple, list)) else name


def _fit_head(model, state):
    """Size the classifier like the checkpoint's: keep a saved head of any
    width (its logits are source-model probabilities), or drop the head when
    the checkpoint has none."""
    classifier = _classifier_name(model)
    weight = state.get(f"{classifier}.weight") if classifier else None
    own = model.state_dict().get(f"{classifier}.weight") if classifier else None
    if weight is None and own is not None:
        model.reset_classifier(0)
    elif weight is not None and own is not None and weight.shape[0] != own.shape[0]:
        model.reset_classifier(weight.shape[0])


def _load_strict(spec, model, state, path):
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        parts = [f"{len(keys)} {what} ({', '.join(keys[:_SHOWN_KEYS])}{', ...' if len(keys) > _SHOWN_KEYS else ''})"
                 for what, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                    ("shape mismatches", mismatched)) if keys]
        raise ValueError(f"model {spec.label!r}: checkpoint {str(path)!r} does not fit architecture "
                         f"{spec.name!r}: {'; '.join(parts)}")
    model.load_state_dict(state)


@contextlib.contextmanager
def atomic_directory(path):
    """Yield a temporary sibling folder of `path` to fill; when the block
    ends without error, it replaces `path` (rename: readers see the old
    folder or the complete new one, never a half-written one). On error it
    is removed; a killed process leaves only the hidden ``.NAME.*`` folder,
    which nothing reads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_model_dir(model, directory, *, architecture, model_args=None, pretrained_cfg=None) -> Path:
    """Write `model` in timm's hub layout (config.json + model.safetensors)
    so that ``ARCHITECTURE=DIRECTORY`` loads it with its transform.

    model_args: keyword arguments for timm.create_model (e.g. img_size);
    pretrained_cfg: the data config to record (default: the model's own
    input_size, interpolation, mean, std, crop_pct, crop_mode). Written
    through :func:`atomic_directory`; an existing directory is replaced."""
    from safetensors.torch import save_file

    cfg = pretrained_cfg if pretrained_cfg is not None else {k: model.pretrained_cfg[k] for k in _DATA_KEYS
                                                             if k in model.pretrained_cfg}
    config = {"architecture": architecture, "num_classes": model.num_classes,
              "num_features": model.num_features, "model_args": dict(model_args or {}),
              "pretrained_cfg": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}}
    with atomic_directory(directory) as tmp:
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"))
    return Path(directory)
