"""Input checks and numpy/torch conversion shared by every public function.

Errors name the argument, what was expected and what came. Nothing here copies
a float32/float64 array that is already laid out usably: numpy arrays become
torch tensors over the same memory.
"""
from __future__ import annotations

import math
import numbers
import warnings
from typing import Any, NoReturn, Union

import numpy as np
import numpy.typing as npt
import torch

FLOAT_DTYPES = (torch.float32, torch.float64)
_CHUNK_ROWS = 4096

# What the public functions take (numpy, torch or anything np.asarray reads)
# and give back (the caller's array type: numpy in, numpy out).
ArrayLike = Union[npt.ArrayLike, torch.Tensor]
Array = Union[npt.NDArray[Any], torch.Tensor]


def to_tensor(value: ArrayLike, name: str) -> tuple[torch.Tensor, bool]:
    """(tensor, was_numpy): a torch view of `value` (numpy, torch or array-like)."""
    if isinstance(value, torch.Tensor):
        if value.device.type == "meta":
            # A meta tensor has a shape but no values: nothing can be computed
            # from it, and the first read would fail far from here.
            raise ValueError(f"{name} is on the meta device, which holds no data; pass a tensor with values "
                             "(on the CPU or a GPU) or a numpy array")
        return value.detach(), False
    array = np.asarray(value)
    if array.dtype == object or array.dtype.kind in "USV":
        raise TypeError(f"{name} must be a numeric array, got {type(value).__name__} of dtype {array.dtype}")
    if any(stride < 0 for stride in array.strides):
        array = np.ascontiguousarray(array)  # torch cannot view negative strides
    with warnings.catch_warnings():
        # Read-only arrays are only ever read; writes go through inplace=True,
        # which checks writability itself.
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array), True


def check_inplace(inplace: bool, value: ArrayLike, name: str = "features") -> None:
    """Validate `inplace` and, when True, that `value` can be written where
    it lies: a numpy array or torch tensor (a list would be converted to a
    copy and the result thrown away), writable, with non-negative strides
    (torch cannot view reversed numpy arrays, so it would write into a copy),
    and with no element sharing memory with another (an expanded view would
    take several rows' results in one place)."""
    if not isinstance(inplace, bool):
        raise TypeError(f"inplace must be True or False, got {inplace!r}")
    if not inplace:
        return
    if isinstance(value, np.ndarray):
        if not value.flags.writeable:
            raise ValueError(f"inplace=True but {name} is a read-only array")
        if any(stride < 0 for stride in value.strides):
            raise ValueError(f"inplace=True needs non-negative strides, but {name} has strides {value.strides}")
        # In elements, as torch counts them.
        strides = [s // value.itemsize for s in value.strides]
    elif isinstance(value, torch.Tensor):
        strides = list(value.stride())
    else:
        raise TypeError(f"inplace=True needs a numpy array or torch tensor, got {type(value).__name__}")
    dims = sorted((stride, size) for stride, size in zip(strides, value.shape) if size > 1)
    if any(stride == 0 for stride, _ in dims):
        raise ValueError(f"inplace=True but {name} is a broadcast view (a stride of 0): several elements share "
                         "one memory location; pass a copy, or inplace=False")
    # No two elements share memory when each stride, in increasing order,
    # steps over everything the smaller ones span.
    span = 1
    for stride, size in dims:
        if stride < span:
            raise ValueError(f"inplace=True but {name} is a view whose elements overlap in memory (shape "
                             f"{tuple(value.shape)}, strides {tuple(strides)} in elements); pass a copy, or "
                             "inplace=False")
        span = stride * size


def to_user(tensor: torch.Tensor, as_numpy: bool) -> Array:
    """Return a result in the caller's array type."""
    return tensor.cpu().numpy() if as_numpy else tensor


def features_tensor(features: ArrayLike, name: str = "features") -> tuple[torch.Tensor, bool]:
    x, as_numpy = to_tensor(features, name)
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D (N samples x D dimensions), got shape {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(x.shape)}; need at least one sample and one dimension")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {str(x.dtype).replace('torch.', '')}")
    return x, as_numpy


def labels_tensor(labels: ArrayLike, n: int, device: torch.device | str,
                  rows_name: str = "features") -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(index int64 on `device`, classes, as_numpy): classes are the sorted
    unique labels and index[i] is the position of labels[i] among them;
    `rows_name` is the argument whose N rows the labels must match."""
    y, as_numpy = to_tensor(labels, "labels")
    if y.dim() != 1:
        raise ValueError(f"labels must be 1-D with one label per sample, got shape {tuple(y.shape)}")
    if y.shape[0] != n:
        raise ValueError(f"labels has {y.shape[0]} entries but {rows_name} has {n} rows")
    if y.dtype.is_complex:
        raise TypeError(f"labels must be integers, got {str(y.dtype).replace('torch.', '')}")
    if y.dtype.is_floating_point:
        # Whole-valued floats (labels loaded from a float column) are accepted.
        whole = torch.isfinite(y) & (y == torch.round(y))
        if not bool(whole.all()):
            first = int(torch.nonzero(~whole)[0, 0])
            raise TypeError(
                f"labels must be integers, got {str(y.dtype).replace('torch.', '')} with value {y[first].item()} "
                f"at position {first}"
            )
    # int64 throughout: uint8 and bool tensors would index as masks.
    y = y.to(device=device, dtype=torch.int64)
    low, high = int(y.min()), int(y.max())
    if low >= 0 and high < max(4 * n, 1 << 16):
        # Small non-negative labels (the usual 0..C-1): a bucket table,
        # O(N + max label), instead of torch.unique's sort.
        present = torch.bincount(y, minlength=high + 1) > 0
        classes = torch.nonzero(present).flatten()
        index = (torch.cumsum(present, 0) - 1)[y]
    else:
        classes, index = torch.unique(y, sorted=True, return_inverse=True)
    return index, classes, as_numpy


def check_number(value: object, name: str, *, minimum: float = 0.0, strict: bool = False) -> float:
    """A finite real >= minimum (> minimum when strict), returned as float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    bound = ">" if strict else ">="
    if not math.isfinite(value) or value < minimum or (strict and value == minimum):
        raise ValueError(f"{name} must be a finite number {bound} {minimum:g}, got {value!r}")
    return value


def check_count(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return int(value)


def check_integer(value: object, name: str, *, minimum: int = 0) -> int:
    """An integer >= minimum (bool refused), returned as int; TypeError for
    a non-integer, ValueError below the minimum, both naming `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def all_finite(*tensors: torch.Tensor) -> bool:
    """True when every value is finite; one reduction per tensor, no mask.
    (A sum can also overflow on finite values: only then are masks built.)"""
    if all(bool(torch.isfinite(t.sum())) for t in tensors):
        return True
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def raise_non_finite(x: torch.Tensor, name: str) -> NoReturn:
    """Locate the non-finite values of `x` (N x D) chunk by chunk, without an
    N x D mask, and raise ValueError saying how many and the first row."""
    count, first = 0, None
    for start in range(0, x.shape[0], _CHUNK_ROWS):
        bad = ~torch.isfinite(x[start : start + _CHUNK_ROWS])
        n_bad = int(bad.sum())
        if n_bad and first is None:
            first = start + int(torch.nonzero(bad.any(dim=1))[0, 0])
        count += n_bad
    if count:
        raise ValueError(f"{name} has {count} non-finite values (NaN or inf); the first is in row {first}")
    raise ValueError(f"{name} has values too large to square in float64: class variances overflow")
