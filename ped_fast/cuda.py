"""Launcher of the CUDA C++ kernels (csrc/cuda/, module ped_fast._cuda).

Hands the extension raw device addresses, the device ordinal and torch's
current stream on that device, after fixing the layouts it accepts (X with
contiguous rows and any row stride; everything else contiguous). Scratch
memory comes from torch's caching allocator on that same stream. The rows are
bucketed by class here (_common.bucket_rows, a stable sort), so the kernels'
summation order is fixed: class_stats and pairwise_forces are bit-identical
run to run.

class_stats and integrate queue their work on the stream and return: nothing
here or in the extension waits for the GPU, and a failed launch raises from
the call that made it (csrc/cuda/ops.h). Only pairwise_forces waits, because
its results (P and the pair counts) go to the host. The class indices are
trusted, as by every launcher: the public layer builds them in [0, C)
(_validate.labels_tensor).
"""
from __future__ import annotations

import functools
import importlib.util

import torch

from ._common import (
    ClassBuckets,
    Forces,
    PairBounds,
    bucket_rows,
    contiguous_delta,
    kernel_layout,
    row_stride,
    rows_contiguous_integrate,
)
from ._common import make_bounds  # noqa: F401  (every launcher module has one)

DEVICES = ("cuda",)

# class_stats: columns per block (csrc/cuda/class_stats.cu, kCols), and the
# rows of one class that one block sums: enough chunks for about
# STATS_TARGET_BLOCKS blocks when one class holds every row, at least
# STATS_MIN_ROWS (8 per warp), at most STATS_MAX_ROWS (128 per warp), so that
# a large class is split among blocks however many classes there are.
STATS_COLS = 32
STATS_TARGET_BLOCKS = 2048
STATS_MIN_ROWS = 64
STATS_MAX_ROWS = 1024
# Elements of the C x C coincidence flags searched per torch.nonzero call
# (older torch releases refuse more than 2^31 - 1 on CUDA tensors).
FLAG_ELEMENTS = 1 << 28

try:
    import ped_fast._cuda as _cuda
except ImportError as error:  # a missing build must not break `import ped_fast`
    _cuda = None
    if importlib.util.find_spec(f"{__package__}._cuda") is None:
        _IMPORT_ERROR = "not built: nvcc not found at build time; reinstall with nvcc on PATH"
    else:
        _IMPORT_ERROR = f"built but cannot be loaded ({error}); reinstall with `pip install -e .`"


def status() -> tuple[bool, str]:
    if _cuda is None:
        return False, _IMPORT_ERROR
    if not torch.cuda.is_available():
        return False, "built; no CUDA device"
    usable, reason = _probe()
    if not usable:
        return False, reason
    return True, f"built; {torch.cuda.get_device_name()}"


@functools.lru_cache(maxsize=None)
def _probe() -> tuple[bool, str]:
    """The extension links its own CUDA runtime: torch may see a GPU that this
    runtime cannot use (a driver older than the toolkit that built it)."""
    count, error = _cuda.probe()
    if count == 0:
        version = _cuda.runtime_version()
        return False, f"built; its CUDA runtime {version // 1000}.{version % 1000 // 10} cannot use the GPU: {error}"
    return True, ""


def _launch(device: torch.device) -> tuple[int, int]:
    """(device ordinal, stream handle) for kernels on `device`; call inside
    `with torch.cuda.device(device)`."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    return index, torch.cuda.current_stream(index).cuda_stream


def _workspace(nbytes: int, device: torch.device) -> torch.Tensor:
    return torch.empty(nbytes, dtype=torch.uint8, device=device)


def stats_rows_per_chunk(n: int, dim: int) -> int:
    """Rows of one class per class_stats block, from the sizes alone."""
    col_tiles = -(-dim // STATS_COLS)
    return min(max(-(-n * col_tiles // STATS_TARGET_BLOCKS), STATS_MIN_ROWS), STATS_MAX_ROWS)


def class_stats_plan(index: torch.Tensor, num_classes: int, dim: int) -> ClassBuckets:
    """The ClassBuckets that class_stats hands to its kernels (any device)."""
    return bucket_rows(index, num_classes, stats_rows_per_chunk(index.shape[0], dim))


def class_stats(x: torch.Tensor, index: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """See reference.class_stats."""
    x = kernel_layout(x)
    n, dim = x.shape
    device = x.device
    with torch.cuda.device(device):
        plan = class_stats_plan(index, num_classes, dim)
        chunk_class, chunk_begin, chunk_end = plan.chunks
        chunks = chunk_class.shape[0]
        mean = torch.empty(num_classes, dim, dtype=torch.float64, device=device)
        var = torch.empty_like(mean)
        workspace = _workspace(_cuda.class_stats_workspace_bytes(chunks, dim), device)
        _cuda.class_stats(x.data_ptr(), x.dtype == torch.float64, n, dim, row_stride(x), plan.order.data_ptr(),
                          plan.counts.data_ptr(), plan.starts.data_ptr(), plan.class_chunks.data_ptr(), num_classes,
                          chunk_class.data_ptr(), chunk_begin.data_ptr(), chunk_end.data_ptr(), chunks,
                          mean.data_ptr(), var.data_ptr(), workspace.data_ptr(), *_launch(device))
    return plan.counts, mean, var


@contiguous_delta
def pairwise_forces(mu: torch.Tensor, radius: torch.Tensor, *, nsigma: float, coef: float, bounds: PairBounds | None,
                    out: torch.Tensor | None = None) -> Forces:
    """See reference.pairwise_forces; `bounds` (from make_bounds) lets later
    steps skip the pairs that provably do not overlap. Waits for the GPU:
    P and the pair counts come back to the host; the coincident pairs stay
    on the device."""
    mu = mu.contiguous()
    radius = radius.contiguous()
    num_classes, dim = mu.shape
    device = mu.device
    if bounds is None:
        bounds = PairBounds(num_classes, device)
    with torch.cuda.device(device):
        delta = torch.empty_like(mu) if out is None else out
        flags = torch.empty(num_classes, num_classes, dtype=torch.uint8, device=device)
        workspace = _workspace(_cuda.pairwise_forces_workspace_bytes(num_classes, dim), device)
        position_change, evaluated, active, coincident = _cuda.pairwise_forces(
            mu.data_ptr(), radius.data_ptr(), num_classes, dim, float(nsigma), float(coef), bounds.dist.data_ptr(),
            bounds.drift.data_ptr(), bounds.full, delta.data_ptr(), flags.data_ptr(), workspace.data_ptr(),
            *_launch(device))
        pairs = flagged_pairs(flags) if coincident else torch.empty(0, 2, dtype=torch.int64, device=device)
    return Forces(
        delta=delta,
        position_change=position_change,
        coincident=pairs,
        evaluated_pairs=evaluated,
        active_pairs=active,
    )


def flagged_pairs(flags: torch.Tensor) -> torch.Tensor:
    """K x 2 int64 (i, j), sorted, of the non-zero entries of the C x C
    `flags`, found on its device: only the rows holding a flag are searched,
    FLAG_ELEMENTS at a time, and only the K pairs are written."""
    rows = torch.nonzero(flags.any(dim=1)).flatten()
    per_call = max(1, FLAG_ELEMENTS // flags.shape[1])
    blocks = []
    for start in range(0, rows.shape[0], per_call):
        block_rows = rows[start : start + per_call]
        found = torch.nonzero(flags[block_rows])
        blocks.append(torch.stack([block_rows[found[:, 0]], found[:, 1]], dim=1))
    return torch.cat(blocks)


@rows_contiguous_integrate
def integrate(x: torch.Tensor, index: torch.Tensor, shift: torch.Tensor, out: torch.Tensor) -> None:
    """See reference.integrate; `out` may be `x` (in place)."""
    n, dim = x.shape
    with torch.cuda.device(x.device):
        _cuda.integrate(x.data_ptr(), row_stride(x), out.data_ptr(), row_stride(out), x.dtype == torch.float64,
                        index.data_ptr(), shift.data_ptr(), n, dim, *_launch(x.device))
