"""Model specs: parse them, build the model with timm, load weights the way
timm loads them, and name the weights for the cache without building
anything.

A SPEC is one of
- ``NAME``: a timm model name (optionally with a pretrained tag,
  ``resnet18.a1_in1k``); pretrained weights come through timm (the Hugging
  Face hub when it can be reached, else, at once, the local hub cache);
- ``NAME=PATH``: weights from a local file (``.safetensors``, or a PyTorch
  checkpoint ``.pt``/``.pth``/``.bin``/``.ckpt``/``.pth.tar`` read with
  ``torch.load(weights_only=True)``: a pickle that would run code is refused),
  or from a directory in timm's hub layout (``config.json`` + ``model.safetensors``
  or ``pytorch_model.bin``, see :func:`save_model_dir`);
- ``LABEL:NAME[=PATH]``: the same, with the row's own name;
- ``[LABEL:]SOURCE:ID``, from another source: timm's own ``hf-hub:ORG/NAME``
  and ``local-dir:PATH``, ``torchvision:NAME[:WEIGHTS][=PATH]`` and
  ``hf:ID_OR_PATH`` (transformers). A first field naming a source is the
  source, any other is the LABEL (so a label is never a source's name);
  after the source, the rest is the ID. ped_fast.zoo.sources dresses these
  models, and models held in memory (``{label: model}`` mappings,
  :class:`Model`), as timm models; docs/screening.md §2 has the details.

A checkpoint loads as timm's own pretrained path loads a local file
(``timm.models.load_state_dict``, then ``create_model(pretrained=True)``):
a training checkpoint's EMA weights are preferred (``use_ema=False``: its
plain ones), DataParallel's ``module.`` and torch.compile's ``_orig_mod.``
prefixes are stripped, and the architecture's checkpoint filter converts
original-format checkpoints (DeiT, BEiT, ConvNeXt) and resizes a ViT's
position embedding to the built image size. The classifier is sized like
the checkpoint's (any width is kept; none: the model is built headless).

The default label is NAME, or ``NAME-STEM`` when PATH is given (STEM: the
file name without its suffix, or the directory's name), so that two
checkpoints of one architecture get different rows. Labels name files in
reports and feature folders, so they are limited to letters, digits and
``._+@-``, and may not be named like the other files of a ``--features``
folder (``labels``, ``*.logits``, ``*.reference``, ``*.reference_stats``).

A spec with a PATH always loads that file; ``pretrained=False`` (the CLI's
``--no-pretrained``) only replaces hub weights of plain ``NAME`` specs by
seeded random weights.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import functools
import hashlib
import json
import os
import pickle
import re
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import torch

from . import sources
from .digest import file_sha256, remembered
# Model is re-exported: ped_fast.zoo.models.Model is the name the docs give it.
from .sources import DataConfig
from .sources import Model as Model

if TYPE_CHECKING:
    from .cache import Cache

_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+@-]*")
# A --features folder holds labels.npy and, per label, LABEL.npy,
# LABEL.logits.npy, LABEL.reference.npy and LABEL.reference_stats.npz: a
# label named like one of the others' files would overwrite it (ignoring
# case, for case-insensitive file systems).
_RESERVED_LABEL = re.compile(r"labels|.+\.(logits|reference|reference_stats)", re.IGNORECASE)
# ".pth.tar": the name timm's train.py gives its checkpoints (model_best.pth.tar).
_TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pth.tar")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# The entries timm.models.load_state_dict takes a training checkpoint's
# weights from: with use_ema, the first EMA entry present; else the first
# plain one.
_EMA_ENTRIES = ("state_dict_ema", "model_ema")
_PLAIN_ENTRIES = ("state_dict", "model")
# pretrained_cfg keys that decide the eval transform; save_model_dir keeps
# these and drops hub addresses that would not describe a local checkpoint.
_DATA_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
# How many key names an architecture-mismatch error lists of each kind.
_SHOWN_KEYS = 5
# Seconds to wait for the Hugging Face hub to answer before taking hub
# weights from the local cache only.
_HUB_PROBE_SECONDS = 5


@dataclass(frozen=True)
class ModelSpec:
    """One candidate: `label` names its row; `source` says where the model
    comes from ("timm", "torchvision", "hf", "hf-hub", "local-dir", or
    "module"/"callable" for an in-memory `model`); `name` is the timm
    architecture (with an optional pretrained tag) or SOURCE:NAME; `path` a
    local weights file or folder, or a hub repository (None: weights
    through the source's own cache)."""
    label: str
    name: str
    path: str | None = None
    source: str = "timm"
    model: Model | None = field(default=None, compare=False, repr=False)


@dataclass
class LoadedModel:
    """A built model in eval mode on the CPU.

    identity: the weights' identity for cache keys (see
    :func:`weights_identity`). data_config: timm's resolved data config
    (input_size, interpolation, mean, std, crop_pct, crop_mode)."""
    spec: ModelSpec
    model: torch.nn.Module
    identity: str
    data_config: DataConfig


def parse_spec(text: str | ModelSpec) -> ModelSpec:
    """Parse one SPEC string (see the module docstring)."""
    return _parse(text)


def _parse(text: object, label: str | None = None) -> ModelSpec:
    """A SPEC string as a ModelSpec; `label` (a mapping's key) names the row
    instead of a LABEL in the text, which it may not contradict."""
    if isinstance(text, ModelSpec):
        if label is not None and label != text.label:
            return dataclasses.replace(text, label=_checked_label(label, text, f"LABEL:{text.name}"))
        return text
    if not isinstance(text, str):
        raise TypeError(f"model spec must be a string like NAME, NAME=PATH, LABEL:NAME[=PATH] or "
                        f"[LABEL:]SOURCE:ID, got {type(text).__name__}")
    spec = text.strip()
    given, source, body = _split_source(spec)
    if given is not None and label is not None and given != label:
        raise ValueError(f"models[{label!r}]: spec {text!r} names another label, {given!r}")
    if given == "":
        raise ValueError(f"model spec {text!r} has ':' but no label before it")
    if source in ("hf", "hf-hub", "local-dir"):
        return _parse_located(text, label or given, source, body.strip())
    name, has_path, path = body.partition("=")
    name, path = name.strip(), path.strip()
    if not name:
        raise ValueError(f"model spec {text!r} has no model name; expected NAME, NAME=PATH or LABEL:NAME[=PATH]")
    if has_path and not path:
        raise ValueError(f"model spec {text!r} has '=' but no weights path after it")
    if source == "torchvision":
        builder, has_weights, weights = name.partition(":")
        builder, weights = builder.strip(), weights.strip()
        if not builder or (has_weights and not weights) or any(c in name for c in "/\\.") or ":" in weights:
            raise ValueError(f"model spec {text!r}: expected torchvision:NAME[:WEIGHTS][=PATH] with NAME a "
                             f"torchvision model builder and WEIGHTS one of its weights (e.g. IMAGENET1K_V1)")
        tag = f".{weights}" if weights else ""
        default = f"{builder}{tag}" if not has_path else f"{builder}{tag}-{_stem(path)}"
        again = f"LABEL:torchvision:{name}{'=' + path if has_path else ''}"
        # NAME.WEIGHTS, like timm's NAME.TAG: extraction takes the part
        # before the first '.' as the architecture, which the weights'
        # identity completes.
        return ModelSpec(label=_checked_label(label or given or default, text, again),
                         name=f"torchvision:{builder}{tag}", path=path or None, source="torchvision")
    if any(c in name for c in "/\\:"):
        prefix = name.partition(":")[0] if ":" in name else ""
        if prefix:
            raise ValueError(f"model spec {text!r}: unknown model source {prefix!r}; the sources are "
                             f"{', '.join(SOURCES)} (or a timm model NAME, with no source)")
        raise ValueError(f"model spec {text!r}: model name {name!r} must be a timm model name "
                         f"(no '/', '\\' or ':'); give local weights as NAME=PATH, a Hugging Face repository as "
                         f"hf-hub:{name} (timm) or hf:{name} (transformers)")
    default = name if not has_path else f"{name}-{_stem(path)}"
    again = f"LABEL:{name}{'=' + path if has_path else ''}"
    return ModelSpec(label=_checked_label(label or given or default, text, again), name=name, path=path or None)


# What parse_models (and so screen, extract, reference_stats) take as models.
Models = Union[str, os.PathLike[str], Sequence[Union[str, ModelSpec]], Mapping[str, object]]

# The sources a SPEC may start with (after an optional LABEL:). timm's own
# prefixes keep their meaning (hf_hub is timm's old spelling of hf-hub).
SOURCES = ("hf-hub", "local-dir", "torchvision", "hf")
_SOURCE_ALIASES = {"hf_hub": "hf-hub"}


def _split_source(spec: str) -> tuple[str | None, str, str]:
    """(label or None, source, the rest) of a SPEC. Only the part before the
    first '=' is read for them (a PATH may hold ':'): a first field that is
    a source name is the source; otherwise it is the LABEL, and a second
    field that is a source name is the source. So a label can never be a
    source name, and a source never reads as a label."""
    head = spec.partition("=")[0]
    first, has_colon, rest = head.partition(":")
    first = first.strip()
    if _SOURCE_ALIASES.get(first, first) in SOURCES:
        return None, _SOURCE_ALIASES.get(first, first), spec.partition(":")[2]
    if not has_colon:
        return None, "timm", spec
    after = spec.partition(":")[2]
    second, has_second, _ = rest.partition(":")
    second = second.strip()
    if has_second and _SOURCE_ALIASES.get(second, second) in SOURCES:
        return first, _SOURCE_ALIASES.get(second, second), after.partition(":")[2]
    return first, "timm", after


def _parse_located(text: object, label: str | None, source: str, location: str) -> ModelSpec:
    """hf:ID_OR_PATH (transformers), hf-hub:ORG/NAME[@REVISION] and
    local-dir:PATH (timm's): the whole rest is the location (a folder path
    may hold ':' or '='); the name is SOURCE:LAST (its last path part), so
    that moving a folder changes no cache key."""
    if not location:
        raise ValueError(f"model spec {text!r} has nothing after '{source}:'; expected {source}:"
                         f"{'ORG/NAME' if source == 'hf-hub' else 'PATH' if source == 'local-dir' else 'ID_OR_PATH'}")
    last = Path(location.rstrip("/\\").partition("@")[0] if source == "hf-hub" else location.rstrip("/\\")).name
    if source == "hf-hub" and location.count("/") != 1:
        raise ValueError(f"model spec {text!r}: hf-hub: takes a Hugging Face repository ORG/NAME[@REVISION], "
                         f"got {location!r}")
    return ModelSpec(label=_checked_label(label or last, text, f"LABEL:{source}:{location}"),
                     name=f"{source}:{last}", path=location, source=source)


def _checked_label(label: object, text: object, again: str) -> str:
    if not isinstance(label, str) or not _LABEL.fullmatch(label):
        raise ValueError(f"model spec {text!r}: label {label!r} must start with a letter or digit and contain "
                         f"only letters, digits and '._+@-' (it names files); give one as {again}")
    if _RESERVED_LABEL.fullmatch(label):
        raise ValueError(f"model spec {text!r}: label {label!r} is named like another file of a --features folder "
                         f"(labels.npy, LABEL.logits.npy, LABEL.reference.npy, LABEL.reference_stats.npz); "
                         f"give another as {again}")
    if _SOURCE_ALIASES.get(label, label) in SOURCES:
        raise ValueError(f"model spec {text!r}: label {label!r} is a model source's name, which a spec would read "
                         f"as the source; give another as {again}")
    return label


def _stem(path: str) -> str:
    name = Path(path.rstrip("/\\")).name
    suffix = _suffix(name)
    return name[:-len(suffix)] if suffix else name


def _suffix(name: str) -> str:
    """The weights-file suffix `name` ends with ("" when none). timm reads
    a file as safetensors only when its name ends in lower-case
    ".safetensors" (anything else goes to torch.load), so that one suffix
    is matched with its case and the torch ones without."""
    if name.endswith(".safetensors"):
        return ".safetensors"
    return next((name[-len(s):] for s in _TORCH_SUFFIXES if name.lower().endswith(s)), "")


def parse_models(value: Models) -> list[ModelSpec]:
    """Specs from a comma-separated string, a list of strings (or ModelSpec),
    the path of a JSON file holding a list of spec strings, or a mapping
    {label: model} whose values are spec strings (without a label, or with
    the same one), nn.Modules, callables images -> features or
    :class:`Model`s (see :func:`memory_spec`)."""
    if isinstance(value, Mapping):
        if not value:
            raise ValueError("models is an empty mapping; give at least one {label: model}")
        specs = [_parse(item, label) if isinstance(item, (str, ModelSpec)) else memory_spec(label, item)
                 for label, item in value.items()]
        return _unique(specs)
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
        raise TypeError(f"models must be a comma-separated string, a list of specs, a JSON file path or a mapping "
                        f"{{label: model}}, "
                        f"got {type(value).__name__}")
    if not items:
        raise ValueError(f"models is empty: got {value!r}; give at least one SPEC")
    return _unique([parse_spec(item) for item in items])


def _unique(specs: list[ModelSpec]) -> list[ModelSpec]:
    labels = [spec.label for spec in specs]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ValueError(f"models has duplicate labels {duplicates}; give each row its own name as LABEL:NAME[=PATH]")
    return specs


def memory_spec(label: object, model: object) -> ModelSpec:
    """The spec of an in-memory model: an nn.Module, a callable images ->
    features, or a :class:`Model` (which also takes a layer, a transform and
    an identity). Each call makes its own Model, so that the weights' hash
    is taken afresh (the module may have been trained since)."""
    if not isinstance(label, str):
        raise TypeError(f"models mapping keys must be labels (strings), got {type(label).__name__} {label!r}")
    if isinstance(model, Model):
        model = Model(model.model, layer=model.layer, data_config=model.data_config, identity=model.identity)
    elif callable(model):
        model = Model(model)
    else:
        raise TypeError(f"models[{label!r}] must be a spec string, an nn.Module, a callable images -> features or "
                        f"a ped_fast.zoo.models.Model, got {type(model).__name__}")
    label = _checked_label(label, label, "another key")
    return ModelSpec(label=label, name=f"{model.kind}:{model.type_name()}", source=model.kind, model=model)


def check_name(spec: ModelSpec) -> str:
    """The architecture of `spec.name` (tag removed). An unknown name
    raises a ValueError listing close matches among timm's models; a
    pretrained tag timm does not know raises one listing the known tags,
    whether or not the weights are wanted (the tag also picks the
    transform)."""
    import timm
    from timm.models import get_pretrained_cfg, split_model_name_tag

    arch, tag = split_model_name_tag(spec.name)
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; close matches: {', '.join(close)}" if close else "; see timm.list_models()"
        raise ValueError(f"model {spec.label!r}: unknown timm model name {spec.name!r}{hint}")
    if "." in spec.name:
        try:
            get_pretrained_cfg(spec.name)
        except RuntimeError:
            known = [name.partition(".")[2] for name in timm.list_pretrained(f"{arch}.*")]
            raise ValueError(f"model {spec.label!r}: unknown pretrained tag {tag!r} for {arch!r} in {spec.name!r}; "
                             f"timm knows {', '.join(known) if known else 'none'}") from None
    return arch


def weights_identity(spec: str | ModelSpec, *, pretrained: bool = True, seed: int = 0, use_ema: bool = True,
                     cache: Cache | None = None) -> str:
    """The identity LoadedModel.identity will have, without building the
    model or downloading anything (but a hub repository of an hf: or hf-hub:
    spec, whose files are what is identified: it is fetched once per process
    unless the local Hugging Face cache holds it and the hub cannot be used):

    - ``sha256:<hex>`` of the weights file (of ``config.json`` + weights for
      a hub-layout directory), followed by ``:ema`` or ``:no-ema`` when the
      file is a training checkpoint holding EMA weights, whose choice
      (`use_ema`) changes the model;
    - ``timm:<arch>.<tag>`` for timm's pretrained weights;
    - ``random:seed=<seed>`` for seeded random weights;
    - those of the other sources (see :func:`_source_identity`).

    A PyTorch checkpoint is opened here (its pickle only, where it can be
    memory-mapped) to see whether it holds EMA weights, so one whose pickle
    would run code, or one holding only EMA weights when use_ema=False,
    raises its ValueError here, before any model is built.

    cache: a Cache in which each file's digest and layout are remembered
    (by path, size, modification time and inode), so that a re-run reads no
    checkpoint bytes; None: remembered in this process only."""
    spec = parse_spec(spec)
    if spec.source != "timm":
        return _source_identity(spec, pretrained=pretrained, seed=seed, use_ema=use_ema, cache=cache)
    arch = check_name(spec)
    if spec.path is not None:
        files = _weight_files(spec, arch)
        if len(files) == 1:
            digest = file_sha256(files[0], cache)
        else:
            # A directory: config.json changes the model (model_args, transform),
            # so it is part of the identity along with the weights.
            joined = "".join(f"{f.name}:{file_sha256(f, cache)}\n" for f in files)
            digest = hashlib.sha256(joined.encode()).hexdigest()
        return f"sha256:{digest}{_ema_choice(spec, files[-1], use_ema, cache)}"
    if not pretrained:
        return f"random:seed={seed}"
    return f"timm:{arch}.{_pretrained_tag(spec, arch)}"


def _source_identity(spec: ModelSpec, *, pretrained: bool, seed: int, use_ema: bool, cache: Cache | None) -> str:
    """weights_identity of the sources other than timm names:

    - hf-hub:, local-dir: that of the timm folder (its files' sha256);
    - torchvision: ``torchvision:<Enum>.<member>:<url>`` for its weights
      enum's (torchvision downloads them, or reads torch's hub cache), the
      file's ``sha256:<hex>`` (as for timm) for a PATH, or
      ``random:seed=<seed>``;
    - hf: ``sha256:<hex>`` of the folder's configs and weights (a hub
      repository: those of its snapshot, resolved in the local Hugging Face
      cache, or downloaded), with ``:transformers=<version>``, whose code
      decides the numbers;
    - in-memory models: see :class:`Model` (``sha256:`` of the module's
      class and state dict, or ``given:<identity>``)."""
    if spec.source in ("module", "callable"):
        assert spec.model is not None  # memory_spec gives every in-memory spec its Model
        return spec.model.digest(spec.label)
    if spec.source in ("hf-hub", "local-dir"):
        return weights_identity(_timm_folder(spec), pretrained=pretrained, seed=seed, use_ema=use_ema, cache=cache)
    if spec.source == "hf":
        folder = _located_folder(spec)
        joined = "".join(f"{f.name}:{file_sha256(f, cache)}\n" for f in sources.hf_files(folder, spec.label))
        version = sources.import_transformers(spec.label).__version__
        return f"sha256:{hashlib.sha256(joined.encode()).hexdigest()}:transformers={version}"
    builder, weights = sources.torchvision_parts(spec)
    if spec.path is not None:
        path = _weights_file(spec)
        return f"sha256:{file_sha256(path, cache)}{_ema_choice(spec, path, use_ema, cache)}"
    if not pretrained:
        return f"random:seed={seed}"
    if weights is None:
        raise ValueError(f"model {spec.label!r}: torchvision has no pretrained weights for {builder!r}; give a "
                         f"weights file as torchvision:{builder}=PATH or use random weights (--no-pretrained)")
    return sources.weights_name(weights)


def _weights_file(spec: ModelSpec) -> Path:
    """A torchvision spec's PATH: an existing weights file."""
    assert spec.path is not None  # called for a spec with a PATH only
    path = Path(spec.path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"model {spec.label!r}: weights file {str(path)!r} does not exist"
                                f"{' (a folder: torchvision specs take a state-dict file)' if path.is_dir() else ''}")
    if not _suffix(path.name):
        raise ValueError(f"model {spec.label!r}: weights file {str(path)!r} has unknown type "
                         f"{path.suffix or '(none)'!r}; expected .safetensors or {', '.join(_TORCH_SUFFIXES)}")
    return path


def _located_folder(spec: ModelSpec) -> Path:
    """The local folder of an hf:, hf-hub: or local-dir: spec: the folder
    itself, or a hub repository's snapshot (see _snapshot)."""
    assert spec.path is not None  # _parse_located gives these sources their location
    local = Path(spec.path).expanduser()
    if spec.source == "local-dir" or local.is_dir():
        if not local.is_dir():
            raise FileNotFoundError(f"model {spec.label!r}: local-dir: folder {spec.path!r} does not exist")
        return local
    repo, _, revision = spec.path.partition("@")
    if spec.path.startswith((".", "/", "~", "\\")) or "\\" in spec.path or repo.count("/") > 1:
        raise FileNotFoundError(f"model {spec.label!r}: {spec.path!r} is neither a folder nor a Hugging Face "
                                f"repository (ORG/NAME)")
    patterns = sources.HF_PATTERNS if spec.source == "hf" else ("config.json",) + _WEIGHT_FILES
    try:
        return Path(_snapshot(repo, revision or None, patterns))
    except (FileNotFoundError, RuntimeError) as error:
        raise type(error)(f"model {spec.label!r}: {error}") from None


@functools.lru_cache(maxsize=None)
def _snapshot(repo: str, revision: str | None, patterns: tuple[str, ...]) -> str:
    """The local snapshot folder of a hub repository's files matching
    `patterns`, resolved once per process: from the local Hugging Face cache
    without a network attempt when the hub cannot be used (as _hub_model),
    else downloaded (only what is not cached yet)."""
    from huggingface_hub import constants, snapshot_download

    offline = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else _hub_unreachable()
    try:
        with _hub_offline(bool(offline)):
            return snapshot_download(repo, revision=revision, allow_patterns=list(patterns))
    except Exception as error:
        # Not cached while offline: like a missing weights file (huggingface_hub's
        # LocalEntryNotFoundError is a FileNotFoundError); else the hub's failure.
        where = f"not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and the hub cannot be used " \
                f"({offline})" if offline else "could not be downloaded"
        kind = FileNotFoundError if isinstance(error, FileNotFoundError) else RuntimeError
        raise kind(f"Hugging Face repository {repo!r}{'@' + revision if revision else ''} is {where}: "
                   f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}") from None


def _timm_folder(spec: ModelSpec) -> ModelSpec:
    """The timm spec ARCHITECTURE=FOLDER that an hf-hub: or local-dir: spec
    stands for (timm's hub layout; the architecture from its config.json)."""
    folder = _located_folder(spec)
    config = folder / "config.json"
    try:
        architecture = json.loads(config.read_text()).get("architecture")
    except (OSError, ValueError, AttributeError) as error:
        raise ValueError(f"model {spec.label!r}: cannot read timm's config {str(config)!r}: {error}") from None
    if not isinstance(architecture, str):
        raise ValueError(f"model {spec.label!r}: {str(config)!r} has no 'architecture' entry (expected timm's hub "
                         f"layout; for transformers models use hf:{spec.path})")
    return ModelSpec(label=spec.label, name=architecture, path=str(folder))


def _pretrained_tag(spec: ModelSpec, arch: str) -> str:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(spec.name)  # a known name and tag: check_name has run
    if cfg is None or not (cfg.url or cfg.hf_hub_id or cfg.file or cfg.state_dict) or not cfg.tag:
        raise ValueError(f"model {spec.label!r}: timm has no pretrained weights for {spec.name!r}; "
                         f"give a weights file as {spec.name}=PATH or use random weights (--no-pretrained)")
    return cfg.tag


def _ema_choice(spec: ModelSpec, path: Path, use_ema: bool, cache: Cache | None = None) -> str:
    """":ema" or ":no-ema" when the checkpoint at `path` holds EMA weights
    (which entry timm.models.load_state_dict takes then depends on
    use_ema), else "". Its top-level entries are read once per file version,
    with the tensors memory-mapped (only the pickle is read) where the file
    is in torch's zip format."""
    if path.name.endswith(".safetensors"):
        return ""

    def layout(path: Path) -> list[str | bool | None]:
        with _reading(spec, path):
            checkpoint = _torch_load(path, mmap=zipfile.is_zipfile(path))
        entries = checkpoint if isinstance(checkpoint, dict) else {}
        return [next((k for k in _EMA_ENTRIES if entries.get(k) is not None), None),
                any(k in entries for k in _PLAIN_ENTRIES)]

    ema, plain = remembered(path, "checkpoint-entries", layout, cache)
    if ema is None:
        return ""
    if use_ema:
        return ":ema"
    if not plain:
        raise ValueError(f"model {spec.label!r}: {str(path)!r} holds only EMA weights ({ema!r}), so use_ema=False "
                         f"(--no-ema) leaves nothing to load; load it with its EMA weights")
    return ":no-ema"


def _torch_load(path: Path, mmap: bool) -> Any:
    # timm's training checkpoints store their argparse.Namespace of
    # arguments; timm's own loader allows that class, and so does this.
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def _weight_files(spec: ModelSpec, arch: str) -> list[Path]:
    """[weights file] for a file PATH, [config.json, weights] for a directory."""
    assert spec.path is not None  # called for a spec with a PATH only
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
    if not _suffix(path.name):
        raise ValueError(f"model {spec.label!r}: weights file {str(path)!r} has unknown type "
                         f"{path.suffix or '(none)'!r}; expected .safetensors, {', '.join(_TORCH_SUFFIXES)} "
                         f"or a hub-layout directory")
    return [path]


def load_model(spec: str | ModelSpec, *, pretrained: bool = True, seed: int = 0, use_ema: bool = True) -> LoadedModel:
    """Build `spec` with timm, in eval mode on the CPU.

    pretrained: for a plain NAME, timm's pretrained weights (True) or
    random weights seeded with `seed` (False); a spec with a PATH always
    loads its file. use_ema: take a training checkpoint's EMA weights when
    it has them (timm's default), else its plain weights. Model
    initialisation runs under a forked RNG, so the caller's torch RNG state
    is left as it was."""
    spec = parse_spec(spec)
    if spec.source in ("hf-hub", "local-dir"):
        loaded = load_model(_timm_folder(spec), pretrained=pretrained, seed=seed, use_ema=use_ema)
        return dataclasses.replace(loaded, spec=spec)
    if spec.source != "timm":
        identity = weights_identity(spec, pretrained=pretrained, seed=seed, use_ema=use_ema)
        model, data_config = _load_source(spec, pretrained=pretrained, seed=seed, use_ema=use_ema)
        return LoadedModel(spec=spec, model=model.eval(), identity=identity, data_config=data_config)
    arch = check_name(spec)
    identity = weights_identity(spec, pretrained=pretrained, seed=seed, use_ema=use_ema)
    if spec.path is None and pretrained:
        model = _hub_model(spec)
    elif spec.path is None:
        model = _seeded(spec.name, seed, pretrained=False)
    else:
        model = _from_checkpoint(spec, arch, _weight_files(spec, arch), use_ema)
    model.eval()
    return LoadedModel(spec=spec, model=model, identity=identity,
                       data_config=_resolved_config(model))


def _load_source(spec: ModelSpec, *, pretrained: bool, seed: int,
                 use_ema: bool) -> tuple[torch.nn.Module, DataConfig]:
    """(the model dressed as a timm model, its data config) of a torchvision,
    hf or in-memory spec (see ped_fast.zoo.sources)."""
    if spec.source in ("module", "callable"):
        assert spec.model is not None  # memory_spec gives every in-memory spec its Model
        return sources.load_memory(spec.model, spec.label), sources.memory_config(spec.model, spec.label)
    if spec.source == "hf":
        folder = _located_folder(spec)
        return sources.load_hf(folder, spec.label), sources.hf_config(folder, spec.label)
    _, weights = sources.torchvision_parts(spec)
    config = sources.torchvision_config(spec)
    if spec.path is not None:
        return sources.build_torchvision(spec, state=_read_state_dict(spec, _weights_file(spec), use_ema)), config
    if pretrained:
        return sources.build_torchvision(spec, weights=weights), config
    return sources.build_torchvision(spec, seed=seed), config


def planned_data_config(spec: str | ModelSpec) -> DataConfig | None:
    """The data config `spec` will have once built, resolved from timm's
    registered pretrained config of the architecture and tag (with a
    hub-layout folder's config.json overlaid) as timm's builder resolves
    it, without building the model: nothing is allocated or read but the
    folder's config.json. For planning which models share decoding; the
    built model's own config decides (of timm's architectures, only
    vitamin_xlarge_336 builds a variant other than its name and so plans
    another input size: docs/screening.md §7)."""
    from timm.data.config import resolve_data_config
    from timm.models import resolve_pretrained_cfg, split_model_name_tag

    spec = parse_spec(spec)
    if spec.source in ("hf-hub", "local-dir"):
        return planned_data_config(_timm_folder(spec))
    if spec.source in ("module", "callable"):
        assert spec.model is not None  # memory_spec gives every in-memory spec its Model
        return sources.memory_config(spec.model, spec.label)
    if spec.source == "torchvision":
        return sources.torchvision_config(spec)
    if spec.source == "hf":
        return sources.hf_config(_located_folder(spec), spec.label)
    arch = check_name(spec)
    overlay: dict[str, Any]
    name, overlay = spec.name, {}
    if spec.path is not None:
        files = _weight_files(spec, arch)
        if len(files) == 2:  # the model's arguments (config.json's model_args) leave its pretrained_cfg alone
            name = arch
            overlay = _directory_config(spec, arch, files[0])[1]
    architecture, tag = split_model_name_tag(name)
    # timm's PretrainedCfg and resolve_data_config have no annotations: Any.
    cfg: Any = resolve_pretrained_cfg(architecture, pretrained_cfg=tag or None,
                                      pretrained_cfg_overlay=overlay or None)
    resolve: Any = resolve_data_config
    return dict(resolve(pretrained_cfg=cfg.to_dict()))


def _resolved_config(model: torch.nn.Module) -> DataConfig:
    """timm's data config of a built timm model (timm exports the function
    without annotations, so it is Any here)."""
    from timm.data.config import resolve_model_data_config

    resolve: Any = resolve_model_data_config
    return dict(resolve(model))


def _pretrained_cfg(model: torch.nn.Module) -> dict[str, Any]:
    """A timm model's pretrained_cfg (torch's stubs type a module's
    attributes as Tensor | Module)."""
    cfg: dict[str, Any] = getattr(model, "pretrained_cfg")
    return cfg


def _seeded(name: str, seed: int, **kwargs: Any) -> torch.nn.Module:
    import timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return timm.create_model(name, **kwargs)


def _hub_model(spec: ModelSpec) -> torch.nn.Module:
    """timm's pretrained weights. When the hub cannot be used (HF_HUB_OFFLINE
    set, or no answer within _HUB_PROBE_SECONDS) they come from the local
    Hugging Face cache without a network attempt, or the error comes at once,
    instead of after huggingface_hub's retries (about 50 s)."""
    import timm
    from huggingface_hub import constants

    offline = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else _hub_unreachable()
    try:
        with _hub_offline(bool(offline)):
            return timm.create_model(spec.name, pretrained=True)
    except Exception as err:
        hint = f"give a weights file as {spec.name}=PATH, or use random weights (--no-pretrained)"
        if offline and isinstance(err, FileNotFoundError):  # huggingface_hub's LocalEntryNotFoundError
            raise RuntimeError(f"model {spec.label!r}: timm's pretrained weights for {spec.name!r} are not in the "
                               f"local Hugging Face cache ({constants.HF_HUB_CACHE}) and the hub cannot be used "
                               f"({offline}); download them once online, or {hint}") from err
        where = f" without the hub ({offline})" if offline else ""
        raise RuntimeError(f"model {spec.label!r}: could not get timm's pretrained weights for {spec.name!r}{where} "
                           f"({type(err).__name__}: {err}); {hint}") from err


@functools.lru_cache(maxsize=1)
def _hub_unreachable() -> str:
    """Why the Hugging Face hub cannot be reached ("" when it answers),
    asked once per process through huggingface_hub's own HTTP client (so
    with its proxy settings)."""
    from huggingface_hub import constants, get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=_HUB_PROBE_SECONDS)
    except Exception as err:
        return f"{constants.ENDPOINT} cannot be reached: {type(err).__name__}: {err}"
    return ""


@contextlib.contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """huggingface_hub's offline mode for the block when `offline`.
    huggingface_hub reads HF_HUB_OFFLINE once, at import, into this
    constant, which it consults on every request: in offline mode a download
    takes the cached file and makes no request."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = saved or offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def _from_checkpoint(spec: ModelSpec, arch: str, files: list[Path], use_ema: bool) -> torch.nn.Module:
    """Build `spec` from its weights file through timm's pretrained path
    (the architecture's checkpoint filter, then a load as strict as timm
    makes it: strict for all but a few architectures, e.g. dla), with the
    classifier sized like the checkpoint's."""
    weights = files[-1]
    state = _read_state_dict(spec, weights, use_ema)
    kwargs: dict[str, Any]
    overlay: dict[str, Any]
    name, kwargs, overlay = spec.name, {}, {}
    if len(files) == 2:
        name = arch
        kwargs, overlay = _directory_config(spec, arch, files[0])
    # The state dict goes to timm as read (one read, the EMA choice made);
    # file records where it came from, and hub addresses would not describe it.
    overlay.update(state_dict=state, file=str(weights), url="", hf_hub_id=None)
    widths: list[int | None]
    if "num_classes" in kwargs:
        widths = [kwargs.pop("num_classes")]
    else:
        widths = _head_widths(name, state)
    failures = []
    for width in widths:
        sized, cfg = dict(kwargs), dict(overlay)
        if width is not None:
            # timm loads the classifier only when the config's width is the model's.
            sized.update(num_classes=width)
            cfg.update(num_classes=width)
        try:
            # Seed 0, not the caller's: the identity (the file's hash) must
            # decide every weight, including any a non-strict load leaves.
            model = _seeded(name, 0, pretrained=True, pretrained_cfg_overlay=cfg, **sized)
        except Exception as err:
            failures.append((sized, cfg, err))
            continue
        # timm keeps the overlay in pretrained_cfg: a second copy of the weights.
        _pretrained_cfg(model).pop("state_dict", None)
        return model
    raise _mismatch(spec, name, state, weights, *failures[0])


def _head_widths(name: str, state: dict[str, torch.Tensor]) -> list[int | None]:
    """The classifier widths to build with, in turn: the width of the
    checkpoint's classifier under timm's name for it; when it has none
    there, 0 (headless), then None (timm's default head: the architecture's
    filter may rename an original-format head, as ConvNeXt's does)."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)  # a known name: check_name has run
    # timm types it as a name, but a distilled model's is a (head, head_dist) pair.
    classifier: str | tuple[str, ...] | list[str] | None = cfg.classifier if cfg is not None else None
    if isinstance(classifier, (tuple, list)):
        classifier = classifier[0]
    if not classifier:
        return [None]
    weight = state.get(f"{classifier}.weight")
    return [weight.shape[0]] if weight is not None else [0, None]


def _mismatch(spec: ModelSpec, name: str, state: dict[str, torch.Tensor], path: Path, kwargs: dict[str, Any],
              cfg: dict[str, Any], err: Exception) -> ValueError:
    """The error for a checkpoint that timm could not load: the keys (as the
    checkpoint names them) the architecture lacks, has in addition, or has
    in another shape; timm's own error when the keys all fit."""
    cfg = {k: v for k, v in cfg.items() if k != "state_dict"}
    own = _seeded(name, 0, pretrained=False, pretrained_cfg_overlay=cfg, **kwargs).state_dict()
    parts = sources.key_differences(own, state, _SHOWN_KEYS)
    if not parts:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return ValueError(f"model {spec.label!r}: timm could not load checkpoint {str(path)!r} into architecture "
                          f"{spec.name!r}: {type(err).__name__}: {reason}")
    return ValueError(f"model {spec.label!r}: checkpoint {str(path)!r} does not fit architecture "
                      f"{spec.name!r}: {'; '.join(parts)}")


def _directory_config(spec: ModelSpec, arch: str, config_file: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(create_model keyword arguments, pretrained_cfg overlay) from a
    hub-layout directory's config.json."""
    from timm.models import split_model_name_tag

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
    return kwargs, overlay


@contextlib.contextmanager
def _reading(spec: ModelSpec, path: Path) -> Iterator[None]:
    """Turn a failure to read the weights file `path` into a one-line
    ValueError naming it; a pickle that weights_only refused says so."""
    try:
        yield
    except Exception as err:
        refused = err if isinstance(err, pickle.UnpicklingError) else err.__cause__
        if isinstance(refused, pickle.UnpicklingError):
            # torch's message is a page of advice; keep the line naming the
            # offending global ("Unsupported global: GLOBAL exec ...").
            lines = [line.strip() for line in str(refused).splitlines() if line.strip()]
            reason = next((line.split(". Please")[0] for line in lines if "WeightsUnpickler error" in line), lines[0])
            raise ValueError(f"model {spec.label!r}: refused to load {str(path)!r}: its pickle would run code or "
                             f"build objects other than tensors, which torch.load(weights_only=True) does not allow "
                             f"({reason}). Re-save the weights as .safetensors or as a plain state dict") from None
        if path.name.endswith(".safetensors"):
            raise ValueError(f"model {spec.label!r}: cannot read safetensors file {str(path)!r}: {err}") from None
        raise ValueError(f"model {spec.label!r}: cannot read {str(path)!r} as a PyTorch checkpoint: "
                         f"{type(err).__name__}: {err}") from None


def _read_state_dict(spec: ModelSpec, path: Path, use_ema: bool) -> dict[str, torch.Tensor]:
    """The checkpoint's weights as timm.models.load_state_dict takes them:
    the EMA entry when use_ema and there is one, else ``state_dict`` or
    ``model``, else the whole file; DataParallel and torch.compile prefixes
    removed."""
    from timm.models import load_state_dict

    with _reading(spec, path):
        state = load_state_dict(str(path), use_ema=use_ema, weights_only=True)
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"model {spec.label!r}: {str(path)!r} does not hold a state dict (name -> tensor)")
    return state


def save_model_dir(model: torch.nn.Module, directory: str | os.PathLike[str], *, architecture: str,
                   model_args: Mapping[str, Any] | None = None,
                   pretrained_cfg: Mapping[str, Any] | None = None) -> Path:
    """Write `model` in timm's hub layout (config.json + model.safetensors)
    so that ``ARCHITECTURE=DIRECTORY`` loads it with its transform.

    model_args: keyword arguments for timm.create_model (e.g. img_size);
    pretrained_cfg: the data config to record (default: the model's own
    input_size, interpolation, mean, std, crop_pct, crop_mode). Written
    through :func:`ped_fast.zoo._files.atomic_directory`: readers see the old
    directory or the complete new one, which replaces it."""
    from safetensors.torch import save_file

    from ._files import atomic_directory

    own = _pretrained_cfg(model)
    cfg = pretrained_cfg if pretrained_cfg is not None else {k: own[k] for k in _DATA_KEYS if k in own}
    config = {"architecture": architecture, "num_classes": model.num_classes,
              "num_features": model.num_features, "model_args": dict(model_args or {}),
              "pretrained_cfg": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}}
    with atomic_directory(directory) as tmp:
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"))
    return Path(directory)
