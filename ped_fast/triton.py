"""Launcher of the Triton kernels (kernels/, installed as ped_fast.kernels).

Chooses block sizes and grids and prepares the small index tables the
kernels read. Runs on CUDA tensors. With TRITON_INTERPRET=1 in the
environment when the kernels are first used, Triton's interpreter runs them
instead, on tensors of any device: `backend="triton"` then works on CPU
tensors too, slowly, so that anyone can step through a kernel on a laptop
(and the tests run without a GPU). backend="auto" never picks the
interpreter (_backends.resolve).

X may have any row and column strides: the kernels take both, so no copy of
X is ever made. Everything else is made contiguous.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import sys
from typing import Any

import torch

from ._common import Forces, PairBounds, bucket_rows, contiguous_delta
from ._common import make_bounds  # noqa: F401  (every launcher module has one)

# Where the compiled kernels run; under the interpreter, any device.
DEVICES = ("cuda",)
# How triton reads TRITON_INTERPRET (triton.knobs, getenv_bool).
_TRUE = ("1", "true", "on", "yes")

# Relative slack of the pruning test: csrc/ped_math.h, kPruneSlack.
PRUNE_SLACK = 1e-12

# class_stats: rows per chunk (enough chunks for the GPU even when one class
# holds all of X, as for the reference set), rows per loop iteration.
ROWS_PER_CHUNK = 256
STATS_ROWS = 8
# pairwise_forces: class tile of both kernels; columns per distance chunk;
# columns per displacement program (16: its 16-way unrolled loop over
# partners then needs about 128 registers on sm_90; 64 columns spill).
PAIR_BLOCK = 16
PAIR_COLS = 16
DELTA_COLS = 16
# integrate: elements per program.
INTEGRATE_TILE = 2048
# Most programs on a grid's second axis (CUDA's limit on gridDim.y): the
# kernels loop over column blocks, so a wider D gives each program more.
MAX_GRID_Y = 65535


def status() -> tuple[bool, str]:
    if importlib.util.find_spec("triton") is None:
        return False, "triton is not installed (`pip install triton`)"
    version = f"triton {_triton_version()}"
    if importlib.util.find_spec(f"{__package__}.kernels") is None:
        return False, f"{version}; ped_fast.kernels is not installed: reinstall with `pip install -e .`"
    if interpreting():
        return True, f"{version} through its interpreter (TRITON_INTERPRET=1): tensors on any device, slowly"
    if not torch.cuda.is_available():
        return False, (f"{version}; no CUDA device (set TRITON_INTERPRET=1 to run the kernels on CPU tensors "
                       "through Triton's interpreter)")
    return True, f"{version} on {torch.cuda.get_device_name()}"


def interpreting() -> bool:
    """Whether Triton's interpreter runs the kernels: how they were defined
    once imported, else what TRITON_INTERPRET will make them."""
    kernels = sys.modules.get(f"{__package__}.kernels")
    if kernels is None:
        return os.environ.get("TRITON_INTERPRET", "").strip().lower() in _TRUE
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(kernels.integrate_kernel, InterpretedFunction)


def _triton_version() -> str:
    for distribution in ("triton", "pytorch-triton"):
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            pass
    return "(version unknown)"


def _kernels() -> Any:
    # Nothing imports triton before a kernel is first used: triton reads
    # TRITON_INTERPRET when it is imported and when each kernel is defined,
    # so available_backends() must not import it before a test has set it.
    import ped_fast.kernels as kernels

    return kernels


def _on(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """Launch on `device`, not on whichever CUDA device is current."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _columns(dim: int, largest: int) -> int:
    """Block of columns: a power of two from 16 to `largest`."""
    return max(16, min(largest, 1 << (dim - 1).bit_length()))


def _column_programs(dim: int, block: int) -> int:
    """Programs along the second grid axis for `dim` columns in blocks of `block`."""
    return min(_cdiv(dim, block), MAX_GRID_Y)


def class_stats(x: torch.Tensor, index: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """See reference.class_stats."""
    kernels = _kernels()
    n, dim = x.shape
    device = x.device
    buckets = bucket_rows(index, num_classes, ROWS_PER_CHUNK)
    # Shift of class c: its first row (any row for an empty class, whose sums are 0).
    class_shift = buckets.order[buckets.starts.clamp_max(n - 1)]
    chunk_class, chunk_begin, chunk_end = buckets.chunks
    chunk_shift = class_shift[chunk_class]
    max_chunks = chunk_class.shape[0]

    block_d = _columns(dim, 128)
    s1 = torch.empty(max_chunks, dim, dtype=torch.float64, device=device)
    s2 = torch.empty_like(s1)
    mean = torch.empty(num_classes, dim, dtype=torch.float64, device=device)
    var = torch.empty_like(mean)
    with _on(device):
        kernels.partial_sums_kernel[(max_chunks, _column_programs(dim, block_d))](
            x, x.stride(0), x.stride(1), buckets.order, chunk_begin, chunk_end, chunk_shift, s1, s2, dim,
            BLOCK_R=STATS_ROWS, BLOCK_D=block_d)
        kernels.finalize_kernel[(num_classes, _column_programs(dim, block_d))](
            x, x.stride(0), x.stride(1), class_shift, buckets.counts, buckets.class_chunks, s1, s2, mean, var, dim,
            BLOCK_D=block_d)
    return buckets.counts, mean, var


@contiguous_delta
def pairwise_forces(mu: torch.Tensor, radius: torch.Tensor, *, nsigma: float, coef: float, bounds: PairBounds | None,
                    out: torch.Tensor | None = None) -> Forces:
    """See reference.pairwise_forces; `bounds` (from make_bounds, or None for
    a full evaluation that keeps nothing) lets later steps skip the pairs
    that provably do not overlap; `out` (C x D float64, any layout) receives
    delta."""
    kernels = _kernels()
    mu = mu.contiguous()
    radius = radius.contiguous()
    num_classes, dim = mu.shape
    device = mu.device
    full = bounds is None or bounds.full
    weight = torch.zeros(num_classes, num_classes, dtype=torch.float64, device=device)
    if bounds is not None and full:
        dist_out = bounds.dist
    else:
        dist_out = torch.empty(num_classes, num_classes, dtype=torch.float64, device=device)
    dist0, drift = (dist_out, radius) if bounds is None else (bounds.dist, bounds.drift)
    params = torch.tensor([nsigma, coef, 1.0 + PRUNE_SLACK], dtype=torch.float64, device=device)
    blocks = _cdiv(num_classes, PAIR_BLOCK)
    tiles = torch.triu_indices(blocks, blocks, device=device)
    tally = torch.empty(tiles.shape[1], 3, dtype=torch.int32, device=device)
    delta = torch.empty_like(mu) if out is None else out
    with _on(device):
        kernels.pair_weights_kernel[(tiles.shape[1],)](
            mu, radius, params, tiles[0], tiles[1], dist0, drift, dist_out, weight, tally, num_classes, dim,
            FULL=full, BLOCK_C=PAIR_BLOCK, BLOCK_D=PAIR_COLS)
        kernels.displacement_kernel[(blocks, _column_programs(dim, DELTA_COLS))](
            mu, weight, delta, num_classes, dim, BLOCK_C=PAIR_BLOCK, BLOCK_J=PAIR_BLOCK, BLOCK_D=DELTA_COLS)
    # One host sync for all four numbers (the pair counts are exact in float64).
    position_change, evaluated, active, coincident = torch.cat(
        [delta.abs().sum().reshape(1), tally.sum(dim=0, dtype=torch.float64)]).tolist()
    if coincident:
        pairs = torch.nonzero(torch.triu(dist_out == 0.0, diagonal=1))
    else:
        pairs = torch.empty(0, 2, dtype=torch.int64, device=device)
    return Forces(
        delta=delta,
        position_change=position_change,
        coincident=pairs,
        evaluated_pairs=int(evaluated),
        active_pairs=int(active),
    )


def integrate(x: torch.Tensor, index: torch.Tensor, shift: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """See reference.integrate. `out` may be `x` (in place); both may have
    any strides."""
    kernels = _kernels()
    n, dim = x.shape
    index = index.contiguous()
    shift = shift.contiguous()
    block_d = _columns(dim, 128)
    block_r = INTEGRATE_TILE // block_d
    with _on(x.device):
        kernels.integrate_kernel[(_cdiv(n, block_r), _column_programs(dim, block_d))](
            x, x.stride(0), x.stride(1), out, out.stride(0), out.stride(1), index, shift, n, dim,
            BLOCK_R=block_r, BLOCK_D=block_d)
    return out
