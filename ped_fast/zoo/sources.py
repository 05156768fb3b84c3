"""Models from sources other than timm's registry, dressed as timm models.

Extraction (ped_fast.zoo.extract) runs every model as it runs a timm model:
``forward_features(batch)``, then ``forward_head(trunk, pre_logits=True)``
for the features (and ``forward_head(trunk)`` for the logits when the
model's ``num_classes`` is not 0), on batches that timm's eval transform of
a data config (input_size, interpolation, crop_pct, crop_mode, mean, std)
made. This module makes the others look so:

- torchvision's model builders and weight enums (spec ``torchvision:``):
  the input of the model's last ``nn.Linear`` (its classifier) is the
  feature vector, its output the logits; the transform is the weights' own
  (``weights.transforms()``);
- Hugging Face ``transformers`` vision backbones (spec ``hf:``), through
  ``AutoModel`` and ``AutoImageProcessor``: the pooled output is the feature
  vector; the transform is the image processor's;
- models held in memory (:class:`Model`): an ``nn.Module`` (a timm model's
  pre-logits, a transformers model's pooled output, any other module's
  output, or the output of a named layer) or a callable ``images ->
  features``.

Each is wrapped in a small adapter module exposing forward_features /
forward_head / num_classes, and its transform is expressed as a timm data
config; a transform that timm's eval transform cannot express (no resize,
padding, a non-square crop of a squashed image...) is refused with a
one-line error rather than approximated.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib
import inspect
import json
import math
import pickle
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

# A timm data config: input_size, interpolation, mean, std, crop_pct, crop_mode.
DataConfig = dict[str, Any]
# What an adapter's forward_features returns: (features, logits or None).
Trunk = tuple[torch.Tensor, "torch.Tensor | None"]

# PIL's resampling filters by number (as transformers' processors store
# them) -> timm's interpolation names.
_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
_CROP_MODES = ("center", "squash", "border")
# The files of a transformers model folder that decide the model and its
# transform: configs (config.json, preprocessor_config.json) and weights,
# sharded or not. Hashed for the identity, and the only ones downloaded.
HF_PATTERNS = ("*.json", "model*.safetensors", "pytorch_model*.bin")
# ConvNextImageProcessor's rule: below this shortest edge it resizes to
# shortest_edge / crop_pct and crops; at or above it, it warps.
_CONVNEXT_WARP = 384


@dataclasses.dataclass(eq=False)
class Model:
    """A model held in memory, for the mapping ``{label: model}`` that
    screen, extract and reference_stats take besides specs.

    model: an ``nn.Module`` or a callable ``images -> features`` (a
        normalised B x 3 x H x W float batch on the extraction device ->
        B x D features). A module is screened as a copy (the original is
        left in its mode and on its device).
    layer: for a module, the name of a submodule (as in
        ``module.named_modules()``) whose output is the feature vector;
        the forward pass stops there. None: a timm model's pre-logits, a
        transformers model's pooled output, any other module's output.
    data_config: the transform: a timm data config (a dict with
        input_size, mean and std, and optionally interpolation, crop_pct,
        crop_mode), torchvision weights' transforms (``weights.transforms()``)
        or a transformers image processor. None: the model's own timm config,
        or a transformers model's image processor when its
        ``name_or_path`` is a local folder holding one.
    identity: names the weights in cache keys. None: a hash of the
        module's class and every tensor of its state dict (reading each
        weight once per screen call: about a second per GB), or of the
        module a bound method belongs to. A plain function has no weights
        to hash, so it must be given one (change it when what the function
        computes changes).

    Outputs of 4 dimensions (B x C x H x W) are averaged over H and W (as
    timm's average pooling); a feature vector must otherwise be 2-D.

    With the Ray executor the model is pickled (cloudpickle, which also
    takes lambdas and classes defined in a notebook) to the workers, which
    must be able to import the modules its classes come from."""
    model: object
    layer: str | None = None
    data_config: object = None
    identity: str | None = None

    def __post_init__(self) -> None:
        if not callable(self.model):
            raise TypeError(f"Model's model must be an nn.Module or a callable images -> features, "
                            f"got {type(self.model).__name__}")
        if self.layer is not None:
            if not isinstance(self.model, torch.nn.Module):
                raise TypeError(f"Model's layer={self.layer!r} needs an nn.Module, got a "
                                f"{type(self.model).__name__}")
            if not isinstance(self.layer, str) or self.layer not in dict(self.model.named_modules()):
                raise ValueError(f"Model's layer must name a submodule of {type(self.model).__name__} "
                                 f"(see named_modules()), got {self.layer!r}")
        if self.identity is not None and (not isinstance(self.identity, str) or not self.identity.strip()):
            raise ValueError(f"Model's identity must be a non-empty string, got {self.identity!r}")
        self._digest: str | None = None

    def __reduce__(self) -> tuple[Callable[[bytes], Model], tuple[bytes]]:
        # cloudpickle takes what plain pickle refuses (lambdas, closures,
        # classes of __main__); what it cannot take either fails here, with
        # the way out, rather than deep inside an executor.
        try:
            state = _pickler().dumps((self.model, self.layer, self.data_config, self.identity, self._digest))
        except Exception as error:
            raise TypeError(f"in-memory model {type(self.model).__name__} cannot be pickled to send it to another "
                            f"process ({type(error).__name__}: {error}); screen it with the local executor, "
                            f"or give it as a spec of a saved model") from None
        return _unpickle_model, (state,)

    @property
    def kind(self) -> str:
        return "module" if isinstance(self.model, torch.nn.Module) else "callable"

    def type_name(self) -> str:
        """What the spec's name says of it: the module's class, or the
        callable's qualified name."""
        if self.kind == "module":
            return type(self.model).__name__
        return getattr(self.model, "__qualname__", type(self.model).__name__)

    def digest(self, label: str) -> str:
        """The identity (see the class docstring), computed once per Model
        (parse_models makes a new one per call, so weights changed between
        calls are hashed again)."""
        if self._digest is None:
            self._digest = self._identity(label)
        return self._digest

    def _identity(self, label: str) -> str:
        # The transform is part of it: extraction remembers a model's data
        # config under its name and identity, which for a timm model decide
        # it, but here the caller may give another one to the same weights.
        owner = _owner(self.model)
        if owner is None and self.identity is None:
            raise ValueError(f"model {label!r}: a plain callable has no weights to identify it by in the cache; "
                             f"give Model(function, identity='...', data_config=...)")
        transform = json.dumps(memory_config(self, label), sort_keys=True)
        if owner is None or self.identity is not None:
            return f"given:{self.identity}:transform={hashlib.sha256(transform.encode()).hexdigest()[:16]}"
        method = "" if owner is self.model else getattr(self.model, "__name__")
        extra = [f"method={method}", f"layer={self.layer or ''}", f"transform={transform}"]
        if _is_transformers(owner):
            extra.append(f"transformers={sys.modules['transformers'].__version__}")
        return f"sha256:{module_digest(owner, *extra)}"


def _pickler() -> Any:
    """cloudpickle where installed (it ships with Ray), else pickle. Imported
    by name because cloudpickle has no annotations: the module is Any."""
    try:
        return importlib.import_module("cloudpickle")
    except ImportError:
        return pickle


def _unpickle_model(state: bytes) -> Model:
    model, layer, data_config, identity, digest = _pickler().loads(state)
    copy = Model(model, layer=layer, data_config=data_config, identity=identity)
    copy._digest = digest  # the hash of the very weights that were pickled: not taken again
    return copy


def _owner(function: object) -> torch.nn.Module | None:
    """The module whose weights decide `function`'s output: the module
    itself, the module a bound method belongs to, or None."""
    if isinstance(function, torch.nn.Module):
        return function
    owner = getattr(function, "__self__", None)
    return owner if isinstance(owner, torch.nn.Module) else None


def module_digest(module: torch.nn.Module, *extra: str) -> str:
    """sha256 (hex) of the module's class, `extra` and every state-dict
    entry (name, dtype, shape and bytes): what decides its outputs, short
    of its code."""
    digest = hashlib.sha256()
    cls = type(module)
    digest.update(f"{cls.__module__}.{cls.__qualname__}\n".encode())
    for item in extra:
        digest.update(f"{item}\n".encode())
    for name, tensor in module.state_dict().items():
        tensor = tensor.detach()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _is_transformers(module: object) -> bool:
    # Only when transformers is imported already: a module cannot be a
    # transformers model otherwise, and importing it costs seconds.
    transformers = sys.modules.get("transformers")
    return transformers is not None and isinstance(module, transformers.PreTrainedModel)


def _is_timm(module: object) -> bool:
    return all(hasattr(module, attr) for attr in ("forward_features", "forward_head", "pretrained_cfg"))


# --- transforms as timm data configs ----------------------------------------

def data_config_of(value: object, what: str) -> DataConfig:
    """A timm data config from a dict (completed by timm's defaults for
    interpolation, crop_pct and crop_mode), torchvision weights' transforms,
    or a transformers image processor."""
    if isinstance(value, dict):
        return _checked_config(value, what)
    if all(hasattr(value, attr) for attr in ("crop_size", "resize_size", "mean", "std", "interpolation")):
        return transforms_config(value, what)
    if hasattr(value, "image_mean") or hasattr(value, "do_resize"):
        return processor_config(value, what)
    raise TypeError(f"{what}: data_config must be a timm data config dict, torchvision weights' transforms or a "
                    f"transformers image processor, got {type(value).__name__}")


def _checked_config(config: dict[str, Any], what: str) -> DataConfig:
    import timm.data

    resolve: Any = timm.data.resolve_data_config  # type: ignore[attr-defined]  # timm exports it, untyped
    keys = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
    unknown = sorted(set(config) - set(keys))
    missing = [k for k in ("input_size", "mean", "std") if k not in config]
    if unknown or missing:
        raise ValueError(f"{what}: data_config must give input_size, mean and std (and may give interpolation, "
                         f"crop_pct, crop_mode); got {sorted(config)}")
    resolved = resolve(args=dict(config))
    size, mean, std = resolved["input_size"], resolved["mean"], resolved["std"]
    if len(size) != 3 or size[0] != 3 or not all(isinstance(v, int) and v > 0 for v in size):
        raise ValueError(f"{what}: data_config input_size must be (3, height, width), got {config['input_size']!r}")
    for name, value in (("mean", mean), ("std", std)):
        if len(value) != 3 or not all(isinstance(v, (int, float)) for v in value):
            raise ValueError(f"{what}: data_config {name} must be 3 numbers (R, G, B), got {value!r}")
    if any(v <= 0 for v in std):
        raise ValueError(f"{what}: data_config std must be positive, got {std!r}")
    if resolved["interpolation"] not in _RESAMPLE.values():
        raise ValueError(f"{what}: data_config interpolation must be one of {', '.join(_RESAMPLE.values())}, "
                         f"got {resolved['interpolation']!r}")
    if resolved["crop_mode"] not in _CROP_MODES:
        raise ValueError(f"{what}: data_config crop_mode must be one of {', '.join(_CROP_MODES)}, "
                         f"got {resolved['crop_mode']!r}")
    if not isinstance(resolved["crop_pct"], (int, float)) or resolved["crop_pct"] <= 0:
        raise ValueError(f"{what}: data_config crop_pct must be a positive number, got {resolved['crop_pct']!r}")
    return {"input_size": tuple(size), "interpolation": resolved["interpolation"], "mean": tuple(mean),
            "std": tuple(std), "crop_pct": float(resolved["crop_pct"]), "crop_mode": resolved["crop_mode"]}


def _refuse(what: str, owner: str, why: str) -> ValueError:
    return ValueError(f"{what}: {owner} {why}, which timm's eval transform (resize, center crop, normalise) "
                      f"cannot express; give the transform as Model(model, data_config={{...}})")


def transforms_config(transform: Any, what: str) -> DataConfig:
    """torchvision's ImageClassification transform (resize the shorter
    side to resize_size, center-crop crop_size, normalise) as a timm data
    config: timm resizes to floor(crop / crop_pct), so crop_pct =
    crop / resize gives back the same resize."""
    crop, resize = list(transform.crop_size), list(transform.resize_size)
    owner = f"torchvision transform {type(transform).__name__}"
    if len(set(crop)) != 1 or len(set(resize)) != 1:
        raise _refuse(what, owner, f"crops {crop} after resizing to {resize} (not squares)")
    crop, resize = crop[0], resize[0]
    pct = crop / resize
    if math.floor(crop / pct) != resize:
        raise _refuse(what, owner, f"resizes to {resize} and crops {crop}")
    interpolation = getattr(transform.interpolation, "value", transform.interpolation)
    return _checked_config({"input_size": (3, crop, crop), "interpolation": interpolation,
                            "mean": tuple(transform.mean), "std": tuple(transform.std), "crop_pct": pct,
                            "crop_mode": "center"}, what)


def _dims(value: Any) -> dict[str, int]:
    """A transformers size (SizeDict, dict) as {key: int} of its set entries."""
    if value is None:
        return {}
    keys = ("height", "width", "shortest_edge", "longest_edge")
    if isinstance(value, dict):
        return {k: value[k] for k in keys if value.get(k) is not None}
    return {k: getattr(value, k) for k in keys if getattr(value, k, None) is not None}


def processor_config(processor: Any, what: str) -> DataConfig:
    """A transformers image processor's resize, crop, rescale and
    normalisation as a timm data config (the resizing itself is then
    timm's: PIL's, which a "fast" processor's tensor resizing approximates
    within rounding)."""
    name = type(processor).__name__
    owner = f"image processor {name}"

    def get(key: str, default: Any = None) -> Any:
        return getattr(processor, key, default)

    if not get("do_resize", False):
        raise _refuse(what, owner, "does not resize (images of varied sizes)")
    for flag in ("do_pad", "do_flip_channel_order", "do_reduce_labels"):
        if get(flag):
            raise _refuse(what, owner, f"sets {flag}")
    if get("do_rescale", True) is False or abs(float(get("rescale_factor", 1 / 255)) - 1 / 255) > 1e-9:
        raise _refuse(what, owner, f"rescales pixels by {get('rescale_factor')} (do_rescale={get('do_rescale')})")
    resample = get("resample", 2)
    resample = getattr(resample, "value", resample)
    interpolation = resample if isinstance(resample, str) else _RESAMPLE.get(int(resample))
    size, crop = _dims(get("size")), _dims(get("crop_size")) if get("do_center_crop") else {}
    edge = size.get("shortest_edge", 0)
    exact = (size["height"], size["width"]) if "height" in size and "width" in size else None
    crop_side = crop.get("height", 0) if crop.get("height") == crop.get("width") else 0
    if crop and not crop_side:
        raise _refuse(what, owner, f"crops a non-square {crop}")
    if get("crop_pct") is not None and not name.startswith("ConvNext"):
        raise _refuse(what, owner, f"has crop_pct={get('crop_pct')} with rules of its own")
    if edge and get("crop_pct") is not None and not crop:
        # ConvNextImageProcessor: resize to edge / crop_pct, crop edge; warp from 384 up.
        shape, pct, mode = (edge, edge), float(get("crop_pct")), "center"
        if edge >= _CONVNEXT_WARP:
            pct, mode = 1.0, "squash"
    elif edge and crop and not exact:
        shape, pct, mode = (crop_side, crop_side), crop_side / edge, "center"
        if math.floor(crop_side / pct) != edge:
            raise _refuse(what, owner, f"resizes to {edge} and crops {crop_side}")
    elif exact is not None and (not crop or (crop_side, crop_side) == exact):
        # Resized to exactly height x width: timm's "squash".
        shape, pct, mode = exact, 1.0, "squash"
    else:
        raise _refuse(what, owner, f"resizes to {size or None} and crops {crop or None}")
    if get("do_normalize", True):
        mean, std = get("image_mean"), get("image_std")
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return _checked_config({"input_size": (3, *shape), "interpolation": interpolation,
                            "mean": tuple(mean), "std": tuple(std), "crop_pct": pct, "crop_mode": mode}, what)


# --- adapters ----------------------------------------------------------------

def as_features(value: object, what: str) -> torch.Tensor:
    """`value` as a B x D feature matrix: a 4-D B x C x H x W output is
    averaged over H and W; anything else but a 2-D tensor is refused."""
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{what} is a {type(value).__name__}, not a tensor of features; pick a layer with "
                         f"Model(module, layer=NAME) or give a callable that returns B x D features")
    if value.dim() == 4:
        value = value.mean(dim=(2, 3))
    if value.dim() != 2:
        raise ValueError(f"{what} has shape {tuple(value.shape)}; expected batch x features (2-D) or batch x "
                         f"channels x height x width (4-D, averaged over height and width)")
    return value


class Adapter(torch.nn.Module):
    """A model as extraction runs a timm model: forward_features returns
    (features, logits or None) and forward_head picks one of them, so the
    model runs once per batch. num_classes: the width of the logits (0:
    none to offer)."""

    def __init__(self, num_classes: int = 0) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward_features(self, batch: torch.Tensor) -> Trunk:
        raise NotImplementedError

    def forward_head(self, trunk: Trunk, pre_logits: bool = False) -> torch.Tensor | None:
        features, logits = trunk
        return features if pre_logits else logits

    def forward(self, batch: torch.Tensor) -> torch.Tensor | None:
        return self.forward_head(self.forward_features(batch))


class _Output(Adapter):
    """A module's own output as the features."""

    inner: torch.nn.Module

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.inner = module

    def forward_features(self, batch: torch.Tensor) -> Trunk:
        return as_features(self.inner(batch), f"the output of {type(self.inner).__name__}"), None


class _Stop(Exception):
    """Raised by a layer's hook to end the forward pass once it has what it needs."""


class _Layer(Adapter):
    """A named layer's output as the features: the forward pass stops
    after that layer."""

    inner: torch.nn.Module

    def __init__(self, module: torch.nn.Module, layer: str) -> None:
        super().__init__()
        self.inner, self.layer = module, layer
        module.get_submodule(layer).register_forward_hook(self._hook)

    @staticmethod
    def _hook(module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> None:
        raise _Stop(output)

    def forward_features(self, batch: torch.Tensor) -> Trunk:
        try:
            self.inner(batch)
        except _Stop as stop:
            return as_features(stop.args[0], f"the output of layer {self.layer!r}"), None
        raise ValueError(f"layer {self.layer!r} of {type(self.inner).__name__} did not run in its forward pass")


class _Classifier(Adapter):
    """A classifier whose last nn.Linear makes its output: that layer's
    input is the feature vector (the penultimate layer), its output the
    logits."""

    inner: torch.nn.Module

    def __init__(self, module: torch.nn.Module, linear: str) -> None:
        layer = module.get_submodule(linear)
        assert isinstance(layer, torch.nn.Linear)
        super().__init__(num_classes=layer.out_features)
        self.inner, self.linear = module, linear
        self._seen: tuple[Any, Any] | None = None
        layer.register_forward_hook(self._hook)

    def _hook(self, module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self._seen = (args[0], output)

    def _taken(self) -> tuple[Any, Any] | None:
        # What the hook saw, read through a method: the hook sets it during
        # the forward pass, which a checker reading forward_features alone
        # cannot see.
        seen, self._seen = self._seen, None
        return seen

    def forward_features(self, batch: torch.Tensor) -> Trunk:
        self._seen = None
        output = self.inner(batch)
        seen = self._taken()
        if seen is None or output is not seen[1]:
            raise ValueError(f"{type(self.inner).__name__}'s output is not the output of its last nn.Linear "
                             f"({self.linear!r}), so that layer's input is not its penultimate features")
        return as_features(seen[0], f"the input of {self.linear!r}"), output


class _Pooled(Adapter):
    """A transformers backbone's pooled output (pooler_output) as the
    features; the first token of last_hidden_state (after the model's final
    norm) when the model has no pooled output or its pooler's weights were
    not in the checkpoint (a classification checkpoint of a ViT, whose
    classifier reads that token)."""

    inner: torch.nn.Module

    def __init__(self, model: torch.nn.Module, first_token: bool = False) -> None:
        super().__init__()
        self.inner, self.first_token = model, first_token

    def forward_features(self, batch: torch.Tensor) -> Trunk:
        out = self.inner(pixel_values=batch)
        pooled = None if self.first_token else getattr(out, "pooler_output", None)
        if pooled is None:
            hidden = getattr(out, "last_hidden_state", None)
            if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3:
                raise ValueError(f"{type(self.inner).__name__} has no pooled output (pooler_output) and no token "
                                 f"sequence to take the first token of")
            return hidden[:, 0], None
        if pooled.dim() == 4 and pooled.shape[2:] == (1, 1):
            pooled = pooled.flatten(1)
        return as_features(pooled, f"the pooled output of {type(self.inner).__name__}"), None


class _Function(Adapter):
    """A callable images -> features; `owner` (the module a bound method
    belongs to) is registered so that moving the adapter moves it."""

    def __init__(self, function: Callable[[torch.Tensor], Any], owner: torch.nn.Module | None = None) -> None:
        super().__init__()
        self.function = function
        if owner is not None:
            self.inner = owner

    def forward_features(self, batch: torch.Tensor) -> Trunk:
        name = getattr(self.function, "__qualname__", type(self.function).__name__)
        return as_features(self.function(batch), f"the output of {name}"), None


# --- in-memory models --------------------------------------------------------

def memory_config(model: Model, label: str) -> DataConfig:
    """The data config of an in-memory model, without running it."""
    what = f"model {label!r}"
    if model.data_config is not None:
        return data_config_of(model.data_config, what)
    owner = _owner(model.model)
    if owner is not None and _is_timm(owner):
        import timm.data

        resolve: Any = timm.data.resolve_model_data_config  # type: ignore[attr-defined]  # exported, untyped
        return dict(resolve(owner))
    if owner is not None and _is_transformers(owner):
        folder = Path(str(getattr(owner, "name_or_path", "") or ""))
        if folder.is_dir() and (folder / "preprocessor_config.json").is_file():
            return processor_config(_processor(folder, label), what)
        raise ValueError(f"{what}: transformers model {type(owner).__name__} was not loaded from a local folder "
                         f"holding its image processor; give Model(model, data_config=processor)")
    raise ValueError(f"{what}: {model.type_name()} has no timm or transformers config to take its transform from; "
                     f"give Model(model, data_config={{'input_size': (3, H, W), 'mean': ..., 'std': ...}})")


def load_memory(model: Model, label: str) -> torch.nn.Module:
    """A copy of an in-memory module (or the callable itself), in eval mode
    on the CPU, dressed as a timm model."""
    function: Any = model.model
    owner = _owner(function)
    if owner is None:
        return _Function(function)
    module = copy.deepcopy(owner).cpu().eval()
    if owner is not function:
        return _Function(getattr(module, function.__name__), module)
    if model.layer is not None:
        return _Layer(module, model.layer)
    if _is_timm(module):
        return module
    if _is_transformers(module):
        return _Pooled(module)
    return _Output(module)


# --- torchvision --------------------------------------------------------------

def torchvision_parts(spec: Any) -> tuple[str, Any]:
    """(builder name, weights enum member or None) of a torchvision spec
    (name ``torchvision:NAME[.WEIGHTS]``); unknown names and weights raise
    a one-line ValueError listing close matches or the known ones."""
    import difflib

    import torchvision.models as tv

    builder, _, weights = spec.name.partition(":")[2].partition(".")
    known = tv.list_models(module=tv)
    if builder not in known:
        close = difflib.get_close_matches(builder, known, n=5, cutoff=0.6)
        hint = f"; close matches: {', '.join(close)}" if close else "; see torchvision.models.list_models()"
        raise ValueError(f"model {spec.label!r}: unknown torchvision classification model {builder!r}{hint}")
    try:
        enum = tv.get_model_weights(builder)
    except ValueError:
        enum = None
    if not weights:
        return builder, (enum.DEFAULT if enum is not None and "DEFAULT" in enum.__members__ else None)
    if enum is None or weights not in enum.__members__:
        names = ", ".join(enum.__members__) if enum is not None else "none"
        raise ValueError(f"model {spec.label!r}: unknown weights {weights!r} for torchvision's {builder!r}; "
                         f"it has {names}")
    return builder, enum[weights]


def torchvision_config(spec: Any) -> DataConfig:
    builder, weights = torchvision_parts(spec)
    if weights is None:
        raise ValueError(f"model {spec.label!r}: torchvision's {builder!r} has no weights enum to take its transform "
                         f"from; build it yourself and give Model(module, data_config=...)")
    return transforms_config(weights.transforms(), f"model {spec.label!r}")


def weights_name(weights: Any) -> str:
    """The identity of a torchvision weights enum member: its enum, name and URL."""
    return f"torchvision:{type(weights).__name__}.{weights.name}:{weights.url}"


def classifier_of(module: torch.nn.Module, label: str, builder: str) -> str:
    """The name of the module's last nn.Linear (its classifier)."""
    linears: list[str] = [name for name, layer in module.named_modules() if isinstance(layer, torch.nn.Linear)]
    if not linears:
        raise ValueError(f"model {label!r}: torchvision's {builder!r} has no nn.Linear classifier to take "
                         f"its penultimate features from; give Model(module, layer=NAME) instead")
    return linears[-1]


def build_torchvision(spec: Any, state: dict[str, torch.Tensor] | None = None, weights: Any = None,
                      seed: int = 0) -> Adapter:
    """The builder's model in eval mode on the CPU, dressed as a timm model:
    with `weights` (an enum member: torchvision loads them, from torch's hub
    cache when it holds them), with `state` (a state dict, its classifier's
    width kept), or seeded random weights."""
    from torchvision.models import get_model

    builder, _ = torchvision_parts(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if weights is not None:
            try:
                module = get_model(builder, weights=weights)
            except Exception as error:
                from torch.hub import get_dir

                raise RuntimeError(f"model {spec.label!r}: could not get torchvision's weights {weights_name(weights)} "
                                   f"(torch's hub cache: {get_dir()}/checkpoints): {type(error).__name__}: "
                                   f"{str(error).strip().splitlines()[0] if str(error).strip() else ''}; give a "
                                   f"weights file as torchvision:{builder}=PATH, or use random weights "
                                   f"(--no-pretrained)") from error
        else:
            module = get_model(builder, weights=None)
    linear = classifier_of(module, spec.label, builder)
    if state is not None:
        width = state.get(f"{linear}.weight")
        if width is not None and width.shape[0] != module.get_submodule(linear).out_features:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                module = get_model(builder, weights=None, num_classes=width.shape[0])
        _load_strict(module, state, spec)
    return _Classifier(module.eval(), linear)


def key_differences(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], shown: int = 5) -> list[str]:
    """How a checkpoint's state dict differs from a model's: the keys the
    model lacks, has in addition, or has in another shape, `shown` of each
    named; empty when they fit."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in state and state[k].shape != own[k].shape]
    return [f"{len(keys)} {what} ({', '.join(keys[:shown])}{', ...' if len(keys) > shown else ''})"
            for what, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                               ("shape mismatches", mismatched)) if keys]


def _load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], spec: Any) -> None:
    parts = key_differences(module.state_dict(), state)
    if parts:
        raise ValueError(f"model {spec.label!r}: checkpoint {spec.path!r} does not fit torchvision's "
                         f"{spec.name.partition(':')[2].partition('.')[0]!r}: {'; '.join(parts)}")
    module.load_state_dict(state)


# --- Hugging Face transformers ------------------------------------------------

def import_transformers(label: str) -> Any:
    try:
        import transformers
    except ImportError as error:
        raise ImportError(f"model {label!r}: hf: specs need Hugging Face transformers, which is not installed: "
                          f"pip install -e '.[hf]' (or pip install transformers)") from error
    return transformers


def hf_files(folder: Path, label: str) -> list[Path]:
    """The files of a transformers model folder that decide the model and
    its transform (HF_PATTERNS), sorted; a folder without config.json or
    weights raises a one-line error."""
    from fnmatch import fnmatch

    if not folder.is_dir():
        raise FileNotFoundError(f"model {label!r}: {str(folder)!r} is not a folder")
    files = sorted(f for f in folder.iterdir() if f.is_file() and any(fnmatch(f.name, p) for p in HF_PATTERNS))
    names = {f.name for f in files}
    if "config.json" not in names:
        raise FileNotFoundError(f"model {label!r}: {str(folder)!r} has no config.json (expected a folder written by "
                                f"transformers' save_pretrained)")
    if not any(fnmatch(n, p) for n in names for p in HF_PATTERNS[1:]):
        raise FileNotFoundError(f"model {label!r}: {str(folder)!r} has no weights (model.safetensors or "
                                f"pytorch_model.bin, or their shards)")
    return files


def _processor(folder: Path, label: str) -> Any:
    transformers = import_transformers(label)
    try:
        return transformers.AutoImageProcessor.from_pretrained(str(folder))
    except Exception as error:
        first = (str(error).strip().splitlines() or [""])[0]
        raise ValueError(f"model {label!r}: no image processor in {str(folder)!r} (preprocessor_config.json) for "
                         f"AutoImageProcessor: {type(error).__name__}: {first}") from None


def hf_config(folder: Path, label: str) -> DataConfig:
    return processor_config(_processor(folder, label), f"model {label!r}")


def load_hf(folder: Path, label: str) -> Adapter:
    """AutoModel's backbone from `folder` in float32, eval mode, on the CPU,
    dressed as a timm model. Weights the checkpoint lacks are refused
    (AutoModel would initialise them at random), except a pooler's, whose
    place the first token then takes."""
    transformers = import_transformers(label)
    logging = transformers.utils.logging
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    # Its missing-weights report is judged here instead, and a progress bar
    # per model would drown extraction's own.
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model, info = transformers.AutoModel.from_pretrained(str(folder), output_loading_info=True,
                                                                 dtype=torch.float32)
    except Exception as error:
        first = (str(error).strip().splitlines() or [""])[0]
        raise ValueError(f"model {label!r}: transformers' AutoModel cannot load {str(folder)!r}: "
                         f"{type(error).__name__}: {first}") from None
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()
    if "pixel_values" not in inspect.signature(model.forward).parameters:
        raise ValueError(f"model {label!r}: {type(model).__name__} from {str(folder)!r} is not a vision backbone "
                         f"(its forward takes no pixel_values)")
    missing = sorted(info.get("missing_keys") or ())
    pooler = [k for k in missing if k.startswith("pooler.")]
    others = [k for k in missing if not k.startswith("pooler.")] + sorted(
        str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys") or ())
    if others:
        raise ValueError(f"model {label!r}: {str(folder)!r} lacks {len(others)} weights of {type(model).__name__} "
                         f"({', '.join(others[:5])}{', ...' if len(others) > 5 else ''}) that AutoModel would "
                         f"initialise at random")
    return _Pooled(model.eval(), first_token=bool(pooler))
