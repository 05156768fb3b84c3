"""Where the screening layer computes: device resolution, the device's name
for reports, and the floating-point math mode of a forward pass.

Kept apart from extraction so that fine-tuning, the CLI and the Ray workers
can resolve a device without importing the extraction machinery.
"""
from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Iterator
from typing import Any

import torch

# How features are computed, by --precision: the cache key and every result
# row carry this, so features computed in different math never mix. "fp32"
# is IEEE float32 everywhere (TF32 off, see exact_float32); "bf16"/"fp16"
# are torch.autocast to that dtype.
MATH_MODES = {"fp32": "fp32-ieee", "bf16": "autocast-bf16", "fp16": "autocast-fp16"}


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """torch.device(device), or cuda when available and device is None; an
    unusable device is a ValueError naming it."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be a torch device such as 'cpu', 'cuda' or 'cuda:1', got {device!r}") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: no CUDA device is available here (torch.cuda.is_available() "
                             f"is False)")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA devices")
    elif resolved.type != "cpu":
        raise ValueError(f"device must be 'cpu' or a CUDA device, got {device!r}")
    return resolved


def device_name(device: str | torch.device) -> str:
    """"cuda:0 (NVIDIA H100 ...)" or "cpu (x86_64, 16 cores)": what computed
    a result, as results.json records it."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.machine()}, {os.cpu_count()} cores)"


def _float32_switches() -> list[tuple[Any, str, object]]:
    """(object, attribute, IEEE value) of each of torch's switches of float32
    math: the fp32_precision API where torch has it (2.9 and later; it
    refuses to mix with the older allow_tf32 flags, so only it is touched),
    else the allow_tf32 flags."""
    # Any: torch's stubs lack cudnn.conv and cudnn.rnn, which it sets up at run time.
    backends: Any = torch.backends
    if hasattr(backends.cuda.matmul, "fp32_precision"):
        return [(backends.cuda.matmul, "fp32_precision", "ieee"), (backends.cudnn.conv, "fp32_precision", "ieee"),
                (backends.cudnn.rnn, "fp32_precision", "ieee")]
    return [(backends.cuda.matmul, "allow_tf32", False), (backends.cudnn, "allow_tf32", False)]


@contextlib.contextmanager
def exact_float32() -> Iterator[None]:
    """IEEE float32 matrix products and convolutions for the block, the
    previous settings restored after it.

    torch leaves cuDNN's TF32 on by default (and users or libraries may turn
    it on for matmul too), so a float32 convolution on an Ampere or newer GPU
    is computed with a 10-bit mantissa (about 1e-3 relative): features that
    --precision fp32 promises to be float32 would not be, and would differ
    from the CPU's by far more than float32 rounding."""
    switches = _float32_switches()
    before = [getattr(owner, name) for owner, name, _ in switches]
    try:
        for owner, name, exact in switches:
            setattr(owner, name, exact)
        yield
    finally:
        for (owner, name, _), value in zip(switches, before):
            setattr(owner, name, value)


def math_context(precision: str) -> contextlib.AbstractContextManager[None]:
    """The context a forward pass at `precision` runs in: exact float32 for
    "fp32", nothing extra for the autocast precisions (autocast itself is
    applied per batch)."""
    return exact_float32() if precision == "fp32" else contextlib.nullcontext()
