"""What every scorer does before scoring: validate the inputs, encode the
labels, pick the compute dtype and resolve the backend whose operations
(class_stats, integrate, own_class_probability) the scorer calls.

The checks themselves are ped_fast._validate's and the backend choice is
ped_fast._backends'; this module only adds what is particular to scorers
(the class count a score needs, the dtype option).
"""
from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import numpy as np
import torch

from .. import _backends
from .._validate import features_tensor, labels_tensor

_DTYPES = {
    torch.float64: torch.float64,
    torch.float32: torch.float32,
    np.float64: torch.float64,
    np.float32: torch.float32,
    "float64": torch.float64,
    "float32": torch.float32,
}


@dataclass
class Prepared:
    """x: the caller's N x D features as a torch view (never written);
    index: N int64 class positions; classes: the sorted unique labels;
    counts: C int64 samples per class; dtype: the compute dtype;
    launcher: the launcher module of the resolved backend."""

    x: torch.Tensor
    index: torch.Tensor
    classes: torch.Tensor
    counts: torch.Tensor
    dtype: torch.dtype
    launcher: ModuleType

    @property
    def num_classes(self):
        return self.classes.shape[0]


def compute_dtype(dtype):
    try:
        return _DTYPES[dtype]
    except (KeyError, TypeError):
        raise TypeError(f"dtype must be torch.float64 (the default) or torch.float32, got {dtype!r}") from None


def prepare(features, labels, dtype, backend, scorer):
    """Validate (features, labels) for `scorer`, which needs two classes:
    with one class every sample is trivially "correct" and the score ranks
    nothing. `backend` is resolved for the features' device as ped()
    resolves it (same errors)."""
    dtype = compute_dtype(dtype)
    x, _ = features_tensor(features)
    index, classes, _ = labels_tensor(labels, x.shape[0], x.device)
    check_classes(classes, scorer)
    _, launcher = _backends.resolve(backend, x.device)
    counts = torch.bincount(index, minlength=classes.shape[0])
    return Prepared(x, index, classes, counts, dtype, launcher)


def check_classes(classes, scorer):
    if classes.shape[0] < 2:
        raise ValueError(
            f"{scorer} needs at least 2 classes to score how well features separate them, but labels has "
            f"{classes.shape[0]} distinct value ({classes.tolist()})"
        )
