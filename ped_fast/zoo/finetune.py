"""Ground truth for a ranking: fine-tune each candidate with one fixed recipe
on the target's training split and measure its accuracy on a disjoint test
split (``ped-fast finetune``).

A transferability score is judged by how well it predicts this accuracy, so
the harness is deliberately plain and identical for every model: the
model's own eval transform for both splits (no random augmentation unless
asked; a split that fits in 1 GiB is decoded once, not once per epoch), a
fresh linear head for the target classes, all weights trained,
deterministic for a seed.
"""
from __future__ import annotations

import copy
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .extract import resolve_device
from .models import LoadedModel, load_model, parse_models, parse_spec


# Splits up to this size are decoded once and kept as tensors (1 GiB: about
# 1,780 float32 images at 3 x 224 x 224).
_IN_MEMORY_BYTES = 1 << 30


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

    def __post_init__(self):
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"recipe optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        if self.augmentation not in ("none", "light"):
            raise ValueError(f"recipe augmentation must be 'none' or 'light', got {self.augmentation!r}")
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"recipe {name} must be a positive integer, got {value!r}")
        for name in ("lr", "head_lr_scale", "weight_decay"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"recipe {name} must be a finite number >= 0, got {value!r}")


class FinetuneFailed(RuntimeError):
    """Some models could not be fine-tuned. `accuracies` holds the others'
    results (written to the output file), `errors` {label: message}."""

    def __init__(self, accuracies, errors):
        self.accuracies = accuracies
        self.errors = errors
        lines = "\n".join(f"  {label}: {message}" for label, message in errors.items())
        super().__init__(f"{len(errors)} of {len(errors) + len(accuracies)} models failed to fine-tune:\n{lines}")


def _splits(train_dir, test_dir, transform):
    """ImageFolders for both splits, the test split's labels mapped to the
    training split's classes by folder name."""
    from torchvision.datasets import ImageFolder

    folders = []
    for what, root in (("train_dir", train_dir), ("test_dir", test_dir)):
        if not Path(root).is_dir():
            raise FileNotFoundError(f"{what} {str(root)!r} is not a directory (expected one subfolder per class)")
        try:
            folders.append(ImageFolder(str(root), transform=transform))
        except (FileNotFoundError, RuntimeError) as err:
            raise ValueError(f"{what} {str(root)!r}: {err}") from None
    train, test = folders
    unknown = sorted(set(test.classes) - set(train.classes))
    if unknown:
        raise ValueError(f"test_dir {str(test_dir)!r} has classes {unknown} that train_dir {str(train_dir)!r} lacks")
    if len(train.classes) < 2:
        raise ValueError(f"train_dir {str(train_dir)!r} has {len(train.classes)} class; fine-tuning needs at least 2")
    test.samples = [(path, train.class_to_idx[test.classes[target]]) for path, target in test.samples]
    test.targets = [target for _, target in test.samples]
    return train, test


def _in_memory(dataset):
    """`dataset` decoded and transformed once into tensors when that takes
    at most _IN_MEMORY_BYTES (the eval transform is deterministic, so every
    epoch would redo the same work), else `dataset` itself."""
    first = dataset[0][0]
    if first.numel() * first.element_size() * len(dataset) > _IN_MEMORY_BYTES:
        return dataset
    images = torch.stack([first] + [dataset[i][0] for i in range(1, len(dataset))])
    return torch.utils.data.TensorDataset(images, torch.as_tensor(dataset.targets, dtype=torch.int64))


def _shift(images, generator):
    """Shift each image by up to 1/8 of its size (zero fill)."""
    n, _, h, w = images.shape
    out = torch.zeros_like(images)
    dy = torch.randint(-(h // 8), h // 8 + 1, (n,), generator=generator).tolist()
    dx = torch.randint(-(w // 8), w // 8 + 1, (n,), generator=generator).tolist()
    for i, (y, x) in enumerate(zip(dy, dx)):
        out[i, :, max(y, 0):h + min(y, 0), max(x, 0):w + min(x, 0)] = \
            images[i, :, max(-y, 0):h + min(-y, 0), max(-x, 0):w + min(-x, 0)]
    return out


def train(model, dataset, recipe=Recipe(), *, seed=0, device=None, progress=True, desc="train") -> float:
    """Train every weight of `model` (in place, left in eval mode on
    `device`) on `dataset` (any torch Dataset of (image tensor, label))
    with cross-entropy and `recipe`; returns the last epoch's mean loss.

    Deterministic for a seed (shuffling, augmentation and dropout draw from
    it; num_workers=0); the caller's torch RNG state is left as it was."""
    from tqdm.auto import tqdm

    if len(dataset) == 0:
        raise ValueError("dataset is empty; training needs at least one (image, label) pair")
    device = resolve_device(device)
    batch = min(recipe.batch_size, len(dataset))
    steps = recipe.epochs * (len(dataset) // batch)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True, num_workers=0,
                                         generator=torch.Generator().manual_seed(seed))
    model.to(device)
    head = {id(p) for p in model.get_classifier().parameters()}
    groups = [{"params": [p for p in model.parameters() if (id(p) in head) == is_head], "lr": lr}
              for is_head, lr in ((False, recipe.lr), (True, recipe.lr * recipe.head_lr_scale))]
    groups = [group for group in groups if group["params"]]  # a headless model has no head group
    if recipe.optimizer == "adamw":
        optimizer = torch.optim.AdamW(groups, weight_decay=recipe.weight_decay)
    else:
        optimizer = torch.optim.SGD(groups, momentum=0.9, nesterov=True, weight_decay=recipe.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)))
    shifts = torch.Generator().manual_seed(seed + 1)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        model.train()
        with tqdm(total=steps, desc=desc, unit="step", disable=not progress, leave=False) as bar:
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
                    bar.set_postfix(loss=f"{total / count:.3f}")
    model.eval()
    return total / count


def accuracy(model, dataset, *, batch_size=256, device=None) -> float:
    """Top-1 accuracy of `model` (in eval mode) on `dataset`."""
    device = resolve_device(device)
    correct = 0
    with torch.inference_mode():
        # An own generator: DataLoader draws a base seed from the global
        # RNG otherwise, and the caller's RNG is left alone.
        for images, labels in torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=0,
                                                          generator=torch.Generator()):
            correct += int((model(images.to(device)).argmax(1).cpu() == labels).sum())
    return correct / len(dataset)


def finetune(loaded_or_spec, train_dir, test_dir, *, recipe=Recipe(), seed=0, pretrained=True, device=None,
             progress=True) -> dict:
    """Fine-tune one model and test it.

    loaded_or_spec: a LoadedModel (left unchanged: a copy is trained), a
    ModelSpec or a SPEC string (loaded with `pretrained` and `seed`).
    train_dir, test_dir: ImageFolder layouts (one subfolder per class);
    test classes must be among the training classes.
    device: "cpu", "cuda", ... (default: cuda when available).
    Returns {"accuracy": test top-1 in [0, 1], "seconds": wall time,
    "epochs", "train_loss": mean loss of the last epoch, "n_train",
    "n_test"}. The same inputs and seed give the same accuracy on one
    machine; the caller's torch RNG state is left as it was."""
    import timm

    start = time.perf_counter()
    if isinstance(loaded_or_spec, LoadedModel):
        loaded = loaded_or_spec
        model = copy.deepcopy(loaded.model)
    else:
        loaded = load_model(parse_spec(loaded_or_spec), pretrained=pretrained, seed=seed)
        model = loaded.model
    transform = timm.data.create_transform(**loaded.data_config, is_training=False)
    train_set, test_set = _splits(train_dir, test_dir, transform)
    classes = train_set.classes
    train_set, test_set = _in_memory(train_set), _in_memory(test_set)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.reset_classifier(len(classes))
    loss = train(model, train_set, recipe, seed=seed, device=device, progress=progress,
                 desc=f"fine-tune {loaded.spec.label}")
    return {"accuracy": accuracy(model, test_set, device=device), "seconds": time.perf_counter() - start,
            "epochs": recipe.epochs, "train_loss": loss, "n_train": len(train_set), "n_test": len(test_set)}


def finetune_zoo(specs, train_dir, test_dir, *, out=None, recipe=Recipe(), seed=0, pretrained=True, device=None,
                 progress=True) -> dict:
    """Fine-tune every model of `specs` (anything parse_models takes) and
    return the ground truth {label: accuracy}, in the specs' order.

    out: a JSON file to write the ground truth to (what ``ped-fast
    evaluate --ground-truth`` reads), written atomically. A model that fails
    does not stop the others; after the last one, FinetuneFailed names the
    failures (the file then holds the models that succeeded)."""
    from tqdm.auto import tqdm

    specs = parse_models(specs)
    # Bad folders and an unusable device are the caller's error, said once,
    # not every model's.
    _splits(train_dir, test_dir, None)
    device = resolve_device(device)
    accuracies, errors = {}, {}
    for spec in tqdm(specs, desc="fine-tuning", unit="model", disable=not progress):
        try:
            result = finetune(spec, train_dir, test_dir, recipe=recipe, seed=seed, pretrained=pretrained,
                              device=device, progress=progress)
        except Exception as err:  # noqa: BLE001 - one model's failure must not end the run
            errors[spec.label] = f"{type(err).__name__}: {err}"
            continue
        accuracies[spec.label] = result["accuracy"]
        if progress:
            tqdm.write(f"{spec.label}: accuracy {result['accuracy']:.4f} ({result['seconds']:.1f} s)")
    if out is not None:
        write_json(out, accuracies)
    if errors:
        raise FinetuneFailed(accuracies, errors)
    return accuracies


def write_json(path, value):
    """Write `value` as JSON to `path` under a temporary name, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(value, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

