"""Launcher of the C++/OpenMP CPU kernels (csrc/cpu/, module ped_fast._C).

Hands raw addresses of CPU tensors to the extension after fixing the layouts
it accepts: X with contiguous rows (any row stride), everything else
contiguous. Threads: OpenMP's, so OMP_NUM_THREADS applies.
"""
from __future__ import annotations

import functools

import torch

from ._common import Forces, PairBounds, contiguous_delta, kernel_layout, row_stride, rows_contiguous_integrate
from ._common import make_bounds  # noqa: F401  (every launcher module has one)

DEVICES = ("cpu",)

try:
    import ped_fast._C as _C
except ImportError as error:  # a missing build must not break `import ped_fast`
    _C = None
    _IMPORT_ERROR = str(error)


@functools.cache
def status() -> tuple[bool, str]:
    if _C is None:
        return False, f"not built ({_IMPORT_ERROR}); build it with `pip install -e .`"
    return True, f"built; {_C.num_threads()} OpenMP threads"


def class_stats(x: torch.Tensor, index: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """See reference.class_stats."""
    x = kernel_layout(x)
    index = index.contiguous()
    n, dim = x.shape
    counts = torch.empty(num_classes, dtype=torch.int64)
    mean = torch.empty(num_classes, dim, dtype=torch.float64)
    var = torch.empty(num_classes, dim, dtype=torch.float64)
    _C.class_stats(x.data_ptr(), x.dtype == torch.float64, n, dim, row_stride(x), index.data_ptr(),
                   num_classes, counts.data_ptr(), mean.data_ptr(), var.data_ptr())
    return counts, mean, var


@contiguous_delta
def pairwise_forces(mu: torch.Tensor, radius: torch.Tensor, *, nsigma: float, coef: float, bounds: PairBounds,
                    out: torch.Tensor | None = None) -> Forces:
    """See reference.pairwise_forces; `bounds` (from make_bounds) lets later
    steps skip the pairs that provably do not overlap."""
    mu = mu.contiguous()
    radius = radius.contiguous()
    num_classes, dim = mu.shape
    delta = torch.empty_like(mu) if out is None else out
    position_change, evaluated, active, coincident = _C.pairwise_forces(
        mu.data_ptr(), radius.data_ptr(), num_classes, dim, nsigma, coef, bounds.dist.data_ptr(),
        bounds.drift.data_ptr(), bounds.full, delta.data_ptr())
    return Forces(
        delta=delta,
        position_change=position_change,
        coincident=torch.tensor(coincident, dtype=torch.int64).reshape(-1, 2),
        evaluated_pairs=evaluated,
        active_pairs=active,
    )


@rows_contiguous_integrate
def integrate(x: torch.Tensor, index: torch.Tensor, shift: torch.Tensor, out: torch.Tensor) -> None:
    """See reference.integrate; `out` may be `x` (in place)."""
    n, dim = x.shape
    _C.integrate(x.data_ptr(), row_stride(x), out.data_ptr(), row_stride(out), x.dtype == torch.float64,
                 index.data_ptr(), shift.data_ptr(), n, dim, shift.shape[0])


def own_class_probability(logits: torch.Tensor, table: torch.Tensor, index: torch.Tensor, *, soften: bool) -> torch.Tensor:
    """See reference.own_class_probability: one fused pass
    (csrc/cpu/own_class_probability.cpp) instead of about seven N x C passes
    of PyTorch ops."""
    logits = logits.contiguous()
    table = table.to(logits.dtype).contiguous()
    index = index.contiguous()
    n, num_classes = logits.shape
    own = torch.empty(n, dtype=logits.dtype)
    _C.own_class_probability(logits.data_ptr(), table.data_ptr(), logits.dtype == torch.float64, index.data_ptr(),
                             n, num_classes, soften, own.data_ptr())
    return own
