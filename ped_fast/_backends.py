"""Which backends exist, which are usable here, and which one runs a call."""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

NAMES = ("reference", "cpu", "triton", "cuda")
# backend="auto" tries these in order for the device type of the features.
AUTO_ORDER = {"cpu": ("cpu", "reference"), "cuda": ("cuda", "triton", "reference")}


@dataclass(frozen=True)
class BackendStatus:
    """Whether a backend can run here and, when it cannot, why."""

    available: bool
    reason: str


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"ped_fast.{name}")


def available_backends() -> dict[str, BackendStatus]:
    """{name: BackendStatus(available, reason)} for every backend: what was
    built, and why a backend cannot run here."""
    return {name: BackendStatus(*_module(name).status()) for name in NAMES}


def resolve(backend: str, device: torch.device) -> tuple[str, ModuleType]:
    """(name, launcher module) for `backend` and tensors on `device`."""
    if backend == "auto":
        backend = os.environ.get("PED_FAST_BACKEND", "auto")
    if backend == "auto":
        for name in AUTO_ORDER.get(device.type, ("reference",)):
            # Interpreted Triton kernels are for debugging, never a default.
            if _module(name).status()[0] and not _interpreted(name):
                return name, _module(name)
    if backend not in NAMES:
        raise ValueError(f"backend must be 'auto' or one of {', '.join(repr(n) for n in NAMES)}, got {backend!r}")
    module = _module(backend)
    available, reason = module.status()
    if not available:
        raise RuntimeError(f"backend {backend!r} is not available: {reason}")
    if module.DEVICES is not None and device.type not in module.DEVICES and not _interpreted(backend):
        hint = " (or any with TRITON_INTERPRET=1, through Triton's interpreter)" if backend == "triton" else ""
        raise ValueError(
            f"backend {backend!r} runs on {' or '.join(module.DEVICES)} tensors{hint}, but the features are on {device}"
        )
    return backend, module


def _interpreted(name: str) -> bool:
    """Whether `name`'s kernels run in Triton's interpreter (TRITON_INTERPRET=1),
    which takes tensors on any device."""
    return name == "triton" and _module(name).interpreting()
