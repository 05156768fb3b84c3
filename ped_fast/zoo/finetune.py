"""Ground truth for a ranking: fine-tune each candidate with one fixed recipe
on the target's training split and measure its accuracy on a disjoint test
split (``ped-fast finetune``).

A transferability score is judged by how well it predicts this accuracy, so
the harness is deliberately plain and identical for every model: the
model's own eval transform for both splits (no random augmentation unless
asked; a split that fits in 1 GiB is decoded once, not once per epoch), a
fresh linear head for the target classes, all weights trained,
deterministic for a seed. Each (model, seed) run is cached as it
finishes, so a killed ``ped-fast finetune`` resumes.
"""
from __future__ import annotations

import copy
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy.typing as npt

import numpy as np
import torch

from ._files import atomic_write_text
from .cache import Cache, content_key
from .._validate import check_integer, check_number
from .device import resolve_device
from .errors import checking_inputs, describe
from .progress import progress as progress_bar
from .progress import write
from .report import check_output_file
from .images import ImageSet, image_set, load_rgb
from .models import LoadedModel, load_model, parse_models, parse_spec, weights_identity

__all__ = ["finetune_zoo", "finetune", "train", "accuracy", "Recipe", "FinetuneFailed"]

# Bumped when the same inputs would give other numbers (the harness, the
# splits' reading, the recipe's meaning): the cache's "finetune" entries of
# older versions are then not reused.
FINETUNE_VERSION = 1

# Splits up to this size are decoded once and kept as tensors (1 GiB: about
# 1,780 float32 images at 3 x 224 x 224).
_IN_MEMORY_BYTES = 1 << 30

# A timm model (get_classifier, reset_classifier): torch's nn.Module types
# its attributes as Tensor | Module, which would hide those methods.
TimmModel = Any
# Where a labelled image set comes from: anything images.image_set reads.
ImageSource = Any


@dataclass(frozen=True)
class Recipe:
    """The fine-tuning recipe, the same for every candidate.

    The defaults are a common full fine-tuning setting for pretrained
    ImageNet models on a small target set: AdamW, a low learning rate for
    the pretrained weights so that they adapt rather than restart, a 10x
    higher one for the new head, which starts from nothing.

    optimizer: "adamw" (torch.optim.AdamW) or "sgd" (momentum 0.9,
        Nesterov); lr: the peak learning rate of the pretrained weights,
        decayed to zero along a cosine over all steps (no warm-up: the
        steps are few); head_lr_scale: the classifier head's learning rate
        relative to lr;
    weight_decay: decoupled for AdamW, L2 for SGD;
    epochs, batch_size: passes over the training split and images per step
        (a last partial batch is dropped, so BatchNorm never sees one image);
    augmentation: "none" (the eval transform only: cheap and deterministic)
        or "light" (random shifts of up to 1/8 of the image, after the
        transform, drawn from the seeded RNG).
    """
    optimizer: str = "adamw"
    lr: float = 1e-4
    head_lr_scale: float = 10.0
    weight_decay: float = 0.05
    epochs: int = 5
    batch_size: int = 32
    augmentation: str = "none"

    def __post_init__(self) -> None:
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"recipe optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        if self.augmentation not in ("none", "light"):
            raise ValueError(f"recipe augmentation must be 'none' or 'light', got {self.augmentation!r}")
        for name in ("epochs", "batch_size"):
            check_integer(getattr(self, name), f"recipe {name}", minimum=1)
        for name in ("lr", "head_lr_scale", "weight_decay"):
            check_number(getattr(self, name), f"recipe {name}")


class FinetuneFailed(RuntimeError):
    """Some models could not be fine-tuned. `accuracies` holds the others'
    results (written to the output file), `errors` {label: message}."""

    def __init__(self, accuracies: Mapping[str, float], errors: Mapping[str, str]) -> None:
        self.accuracies = accuracies
        self.errors = errors
        lines = "\n".join(f"  {label}: {message}" for label, message in errors.items())
        super().__init__(f"{len(errors)} of {len(errors) + len(accuracies)} models failed to fine-tune:\n{lines}")


@dataclass(frozen=True)
class _Splits:
    """Both splits as listed once by the screening's reader; train_labels,
    test_labels: each image's class as an index into train.classes."""
    train: ImageSet
    test: ImageSet
    train_labels: npt.NDArray[np.int64]
    test_labels: npt.NDArray[np.int64]


@dataclass(frozen=True)
class _Data:
    """Both splits decoded with one model's transform: torch Datasets of
    (image tensor, label), and the relative paths skipped in each."""
    train: torch.utils.data.Dataset[Any]
    test: torch.utils.data.Dataset[Any]
    classes: int
    skipped: dict[str, list[str]]


def _splits(train_dir: ImageSource, test_dir: ImageSource) -> _Splits:
    """List both splits with the screening's reader (images.image_set: a
    folder's images with the same extensions, hidden files and folders
    such as .ipynb_checkpoints not images or classes; or a manifest or a
    dataset) and map the test split's classes to the training split's by
    name."""
    train = image_set(train_dir, what="train_dir")
    test = image_set(test_dir, what="test_dir")
    unknown = sorted(set(test.classes) - set(train.classes))
    if unknown:
        raise ValueError(f"test_dir {test.root!r} has classes {unknown} that train_dir {train.root!r} lacks")
    if len(train.classes) < 2:
        raise ValueError(f"train_dir {train.root!r} has {len(train.classes)} class; fine-tuning needs at least 2")
    index = {name: i for i, name in enumerate(train.classes)}
    mapping = np.array([index[name] for name in test.classes], dtype=np.int64)
    # image_set's labelled sets (the default) always have labels.
    train_labels, test_labels = (cast("npt.NDArray[np.int64]", images.labels) for images in (train, test))
    return _Splits(train, test, train_labels, mapping[test_labels])


def _decode(splits: _Splits, data_config: Mapping[str, Any]) -> _Data:
    """Both splits with the eval transform of `data_config`."""
    from timm.data.transforms_factory import create_transform

    transform = create_transform(**data_config, is_training=False)
    (train, skipped_train), (test, skipped_test) = (
        _decoded(images, labels, transform, what)
        for images, labels, what in ((splits.train, splits.train_labels, "train_dir"),
                                     (splits.test, splits.test_labels, "test_dir")))
    return _Data(train, test, len(splits.train.classes), {"train": skipped_train, "test": skipped_test})


class _Files(torch.utils.data.Dataset[tuple[torch.Tensor, int]]):
    """The images of `images` at `indices`, decoded when read."""

    def __init__(self, images: ImageSet, indices: list[int], labels: npt.NDArray[np.int64],
                 transform: Callable[[Any], torch.Tensor]) -> None:
        self.images, self.indices, self.labels, self.transform = images, indices, labels, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(load_rgb(self.images.file(self.indices[i]))), int(self.labels[i])


def _decoded(images: ImageSet, labels: npt.NDArray[np.int64], transform: Callable[[Any], torch.Tensor],
             what: str) -> tuple[torch.utils.data.Dataset[Any], list[str]]:
    """(a torch Dataset of (image tensor, label), the relative paths of the
    images that could not be decoded). An undecodable image is skipped
    with a warning, as in extraction, not a failed model.

    Every image is decoded here once, which finds the bad ones. When the
    split's tensors take at most _IN_MEMORY_BYTES they are kept (the eval
    transform is deterministic, so every epoch would redo the same work);
    a larger split is decoded again each epoch, without the bad ones."""
    kept: list[int] = []
    tensors: list[torch.Tensor] | None = []
    failed: list[tuple[str, str]] = []
    for index in range(len(images)):
        try:
            tensor = transform(load_rgb(images.file(index)))
        except Exception as error:  # noqa: BLE001 - PIL reports a bad file with many exception types
            failed.append((images.paths[index], describe(error)))
            continue
        kept.append(index)
        if tensors is not None:
            tensors.append(tensor)
            if tensor.numel() * tensor.element_size() * len(images) > _IN_MEMORY_BYTES:
                tensors = None
    if failed:
        shown = "; ".join(f"{path} ({message})" for path, message in failed[:5])
        warnings.warn(f"{len(failed)} of {len(images)} images under {images.root} could not be decoded and were "
                      f"skipped: {shown}{'; ...' if len(failed) > 5 else ''}", RuntimeWarning, stacklevel=3)
    if not kept:
        raise ValueError(f"{what} {images.root!r}: none of its {len(images)} images could be decoded")
    labels = labels[kept]
    dataset: torch.utils.data.Dataset[Any]
    if tensors is None:
        dataset = _Files(images, kept, labels, transform)
    else:
        dataset = torch.utils.data.TensorDataset(torch.stack(tensors), torch.as_tensor(labels, dtype=torch.int64))
    return dataset, [path for path, _ in failed]


def _shift(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to 1/8 of its size (zero fill)."""
    n, _, h, w = images.shape
    out = torch.zeros_like(images)
    dy = torch.randint(-(h // 8), h // 8 + 1, (n,), generator=generator).tolist()
    dx = torch.randint(-(w // 8), w // 8 + 1, (n,), generator=generator).tolist()
    for i, (y, x) in enumerate(zip(dy, dx)):
        out[i, :, max(y, 0):h + min(y, 0), max(x, 0):w + min(x, 0)] = \
            images[i, :, max(-y, 0):h + min(-y, 0), max(-x, 0):w + min(-x, 0)]
    return out


def train(model: TimmModel, dataset: torch.utils.data.Dataset[Any], recipe: Recipe = Recipe(), *, seed: int = 0,
          device: str | torch.device | None = None, progress: bool = True, desc: str = "train") -> float:
    """Train every weight of `model` (in place, left in eval mode on
    `device`) on `dataset` (any torch Dataset of (image tensor, label))
    with cross-entropy and `recipe`; returns the last epoch's mean loss.

    Deterministic for a seed (shuffling, augmentation and dropout draw from
    it; num_workers=0); the caller's torch RNG state is left as it was."""
    if _size(dataset) == 0:
        raise ValueError("dataset is empty; training needs at least one (image, label) pair")
    device = resolve_device(device)
    batch = min(recipe.batch_size, _size(dataset))
    steps = recipe.epochs * (_size(dataset) // batch)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True, num_workers=0,
                                         generator=torch.Generator().manual_seed(seed))
    model.to(device)
    head = {id(p) for p in model.get_classifier().parameters()}
    groups = [{"params": [p for p in model.parameters() if (id(p) in head) == is_head], "lr": lr}
              for is_head, lr in ((False, recipe.lr), (True, recipe.lr * recipe.head_lr_scale))]
    groups = [group for group in groups if group["params"]]  # a headless model has no head group
    optimizer: torch.optim.Optimizer
    if recipe.optimizer == "adamw":
        optimizer = torch.optim.AdamW(groups, weight_decay=recipe.weight_decay)
    else:
        optimizer = torch.optim.SGD(groups, momentum=0.9, nesterov=True, weight_decay=recipe.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)))
    shifts = torch.Generator().manual_seed(seed + 1)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        model.train()
        with progress_bar(total=steps, desc=desc, unit="step", enabled=progress, leave=False) as bar:
            for _ in range(recipe.epochs):
                total, count = 0.0, 0
                for images, labels in loader:
                    if recipe.augmentation == "light":
                        images = _shift(images, shifts)
                    images, labels = images.to(device), labels.to(device)
                    loss = torch.nn.functional.cross_entropy(model(images), labels)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    schedule.step()
                    total, count = total + loss.item() * len(labels), count + len(labels)
                    bar.update()
                    bar.set_postfix_str(f"loss={total / count:.3f}")
    model.eval()
    return total / count


def _size(dataset: torch.utils.data.Dataset[Any]) -> int:
    # A map-style Dataset has __len__; torch's base class does not declare it.
    return len(dataset)  # type: ignore[arg-type]


def accuracy(model: torch.nn.Module, dataset: torch.utils.data.Dataset[Any], *, batch_size: int = 256,
             device: str | torch.device | None = None) -> float:
    """Top-1 accuracy of `model` (in eval mode) on `dataset`."""
    device = resolve_device(device)
    correct = 0
    with torch.inference_mode():
        # An own generator: DataLoader draws a base seed from the global
        # RNG otherwise, and the caller's RNG is left alone.
        for images, labels in torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=0,
                                                          generator=torch.Generator()):
            correct += int((model(images.to(device)).argmax(1).cpu() == labels).sum())
    return correct / _size(dataset)


def finetune(loaded_or_spec: LoadedModel | Any, train_dir: ImageSource, test_dir: ImageSource, *,
             recipe: Recipe = Recipe(), seed: int = 0, pretrained: bool = True,
             device: str | torch.device | None = None, progress: bool = True,
             use_ema: bool = True) -> dict[str, Any]:
    """Fine-tune one model and test it.

    loaded_or_spec: a LoadedModel (left unchanged: a copy is trained), a
    ModelSpec or a SPEC string (loaded with `pretrained` and `seed`).
    train_dir, test_dir: labelled image sets, read as the screening reads
    its data (images.image_set: ImageFolder layouts, manifests, Hugging Face
    datasets or ImageSets); test classes must be among the training
    classes.
    device: "cpu", "cuda", ... (default: cuda when available).
    Returns {"accuracy": test top-1 in [0, 1], "seconds": wall time,
    "epochs", "train_loss": mean loss of the last epoch, "n_train",
    "n_test": the images used, "skipped": {"train": [...], "test": [...]},
    the relative paths of the images that could not be decoded}. The same
    inputs and seed give the same accuracy on one machine; the caller's
    torch RNG state is left as it was."""
    start = time.perf_counter()
    if isinstance(loaded_or_spec, LoadedModel):
        loaded = loaded_or_spec
        model = copy.deepcopy(loaded.model)
    else:
        loaded = load_model(parse_spec(loaded_or_spec), pretrained=pretrained, seed=seed, use_ema=use_ema)
        model = loaded.model
    data = _decode(_splits(train_dir, test_dir), loaded.data_config)
    result = _run(model, loaded.spec.label, data, recipe, seed=seed, device=device, progress=progress)
    return {**result, "seconds": time.perf_counter() - start}


def _run(model: TimmModel, label: str, data: _Data, recipe: Recipe, *, seed: int,
         device: str | torch.device | None, progress: bool) -> dict[str, Any]:
    """Give `model` a fresh head for the target classes, train it (in place)
    and test it: finetune()'s result without "seconds"."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.reset_classifier(data.classes)
    loss = train(model, data.train, recipe, seed=seed, device=device, progress=progress, desc=f"fine-tune {label}")
    return {"accuracy": accuracy(model, data.test, device=device), "epochs": recipe.epochs, "train_loss": loss,
            "n_train": _size(data.train), "n_test": _size(data.test), "skipped": data.skipped}


def _key(spec: Any, identity: Any, recipe: Recipe, seed: int, splits: _Splits) -> str:
    """The cache key of one fine-tuning run: everything its accuracy
    depends on. The row's label, the device and `progress` are not in it
    (as in extraction: a run on another device reuses the entry)."""
    import timm

    return content_key("finetune", FINETUNE_VERSION, parse_spec(spec).name, identity, asdict(recipe), seed,
                       splits.train.fingerprint, splits.test.fingerprint, torch.__version__, timm.__version__)


def finetune_zoo(specs: Any, train_dir: ImageSource, test_dir: ImageSource, *, out: str | os.PathLike[str] | None = None,
                 recipe: Recipe = Recipe(), seed: int = 0, seeds: Iterable[int] | None = None,
                 pretrained: bool = True, device: str | torch.device | None = None,
                 cache: Cache | str | os.PathLike[str] | None = None, progress: bool = True, use_ema: bool = True) -> dict[str, float]:
    """Fine-tune every model of `specs` (anything parse_models takes) once
    per seed of `seeds` and return the ground truth {label: mean accuracy
    over the seeds}, in the specs' order.

    seed: the seed of random weights (pretrained=False) and, when `seeds`
    is None, the one fine-tuning seed. use_ema: as in load_model. Each (model, seed) run is kept in
    `cache` (a Cache, a folder, or None for the default) as soon as it
    finishes, kind "finetune", its meta finetune()'s result (the per-seed
    accuracy, the skipped images, ...) with the run's inputs; so a killed
    run, run again, fine-tunes only what is missing.

    out: a JSON file {label: accuracy} for one seed, {label: [accuracy of
    each seed]} for several (what ``ped-fast evaluate --ground-truth``
    reads), rewritten atomically after each model, so that it always
    holds the models this call has finished. A model that fails
    does not stop the others; after the last one, FinetuneFailed names the
    failures (the file then holds the models that succeeded)."""
    # Bad specs, folders, seeds and an unusable device are the caller's
    # error, said once before any work, not every model's.
    with checking_inputs():
        specs = parse_models(specs)
        seed_list = _check_seeds(seed, seeds)
        splits = _splits(train_dir, test_dir)
        device = resolve_device(device)
        if out is not None:
            check_output_file(out)
    cache = Cache.of(cache)
    accuracies: dict[str, float] = {}
    written: dict[str, float | list[float]] = {}
    errors: dict[str, str] = {}
    if out is not None:
        write_json(out, written)
    for spec in progress_bar(specs, desc="fine-tuning", unit="model", enabled=progress):
        try:
            runs, ran = _finetune_model(spec, splits, seed_list, recipe=recipe, seed=seed, pretrained=pretrained,
                                        use_ema=use_ema, device=device, cache=cache, progress=progress)
        except Exception as err:  # noqa: BLE001 - one model's failure must not end the run
            errors[spec.label] = describe(err)
        else:
            accuracies[spec.label] = sum(run["accuracy"] for run in runs) / len(runs)
            # The file keeps every seed's accuracy: the mean ranks, the spread
            # feeds the bootstrap intervals of ped_fast.evaluate.
            written[spec.label] = [run["accuracy"] for run in runs] if len(runs) > 1 else accuracies[spec.label]
            if progress:
                mean = f" (mean of {len(runs)} seeds)" if len(runs) > 1 else ""
                took = f"{sum(run['seconds'] for run in ran):.1f} s" if ran else "cached"
                write(f"{spec.label}: accuracy {accuracies[spec.label]:.4f}{mean} ({took})")
        if out is not None:
            write_json(out, written)
    if errors:
        raise FinetuneFailed(accuracies, errors)
    return accuracies


def _check_seeds(seed: int, seeds: Any) -> tuple[int, ...]:
    if seeds is None:
        seeds = (seed,)
    if isinstance(seeds, (str, bytes)) or not hasattr(seeds, "__iter__"):
        raise TypeError(f"seeds must be a sequence of integers, got {seeds!r}")
    checked: tuple[int, ...] = tuple(seeds)
    if not checked or not all(isinstance(s, int) and not isinstance(s, bool) for s in checked):
        raise ValueError(f"seeds must be a non-empty sequence of integers, got {checked!r}")
    if len(set(checked)) != len(checked):
        raise ValueError(f"seeds must be distinct (a repeated seed repeats the same run), got {checked!r}")
    return checked


def _finetune_model(spec: Any, splits: _Splits, seeds: tuple[int, ...], *, recipe: Recipe, seed: int, pretrained: bool,
                    use_ema: bool, device: torch.device, cache: Cache,
                    progress: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(every seed's run meta, in `seeds`' order; the runs done now). Only
    the runs the cache lacks are done: the model is built and the images
    decoded once for them, and each run is cached as soon as it ends."""
    identity = weights_identity(spec, pretrained=pretrained, seed=seed, use_ema=use_ema, cache=cache)
    keys = {s: _key(spec, identity, recipe, s, splits) for s in seeds}
    runs: dict[int, dict[str, Any]] = {}
    for s in seeds:
        entry = cache.get("finetune", keys[s])
        if entry is not None:
            runs[s] = entry.meta
    missing = [s for s in seeds if s not in runs]
    ran: list[dict[str, Any]] = []
    if missing:
        import timm

        start = time.perf_counter()
        loaded = load_model(spec, pretrained=pretrained, seed=seed, use_ema=use_ema)
        data = _decode(splits, loaded.data_config)
        shared = (time.perf_counter() - start) / len(missing)
        for s in missing:
            start = time.perf_counter()
            result = _run(copy.deepcopy(loaded.model), spec.label, data, recipe, seed=s, device=device,
                          progress=progress)
            meta = {**result, "seconds": shared + time.perf_counter() - start, "seed": s, "label": spec.label,
                    "model": spec.name, "identity": identity, "recipe": asdict(recipe),
                    "train": {"path": splits.train.root, "fingerprint": splits.train.fingerprint},
                    "test": {"path": splits.test.root, "fingerprint": splits.test.fingerprint},
                    "version": FINETUNE_VERSION, "torch": torch.__version__, "timm": timm.__version__}
            cache.put("finetune", keys[s], meta)
            runs[s] = meta
            ran.append(meta)
    return [runs[s] for s in seeds], ran


def write_json(path: str | os.PathLike[str], value: Any) -> None:
    """Write `value` as JSON through the package's atomic write, into a
    folder made when missing (finetune_zoo's output and demo_zoo's files).
    Not _files.atomic_write_json: it sorts keys, and a ground truth lists
    its models in the order they were given."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(value, indent=2) + "\n")
