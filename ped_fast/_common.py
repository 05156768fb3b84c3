"""Types and helpers shared by the backends' launchers."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Protocol

import torch


@dataclass
class Forces:
    """One evaluation of pairwise_forces.

    delta: C x D float64 displacement of every class mean (rescaled space).
    position_change: P = sum |delta| (docs/spec.md §1.4).
    coincident: K x 2 int64 class indices (i < j) whose means coincide,
        sorted, on the means' device.
    evaluated_pairs / active_pairs: unordered pairs measured / pairs with a
        non-zero weight (docs/spec.md §1.6).
    """

    delta: torch.Tensor
    position_change: float
    coincident: torch.Tensor
    evaluated_pairs: int
    active_pairs: int


class PairBounds:
    """What a pruning backend keeps between steps: the C x C distances of its
    last full evaluation and, per class, the summed L2 length of the steps
    applied since (an upper bound on how far each mean has moved)."""

    def __init__(self, num_classes: int, device: torch.device) -> None:
        self.dist = torch.empty(num_classes, num_classes, dtype=torch.float64, device=device)
        self.drift = torch.zeros(num_classes, dtype=torch.float64, device=device)
        self.full = True

    def advance(self, delta: torch.Tensor) -> None:
        self.drift += torch.linalg.vector_norm(delta, dim=1)
        self.full = False


class PairwiseForces(Protocol):
    """A launcher's pairwise_forces (docs/design.md §4)."""

    def __call__(self, mu: torch.Tensor, radius: torch.Tensor, *, nsigma: float, coef: float,
                 bounds: PairBounds, out: torch.Tensor | None = None) -> Forces: ...


# A launcher's integrate(x, index, shift, out) -> out.
Integrate = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def make_bounds(num_classes: int, device: torch.device) -> PairBounds:
    """The PairBounds of a backend that prunes pairs (cpu, triton, cuda)."""
    return PairBounds(num_classes, device)


@dataclass
class ClassBuckets:
    """The rows of X grouped by class and cut into chunks of consecutive rows
    of one class, as the GPU class_stats kernels read them (bucket_rows).

    order: N int64 row numbers of X sorted by class, stably.
    counts, starts: C int64; the rows of class c are order[starts[c]:starts[c] + counts[c]].
    class_chunks: C + 1 int64; class c owns chunks [class_chunks[c], class_chunks[c + 1]),
        none when it is empty.
    chunks: 3 x K int64, per chunk its class and its range [begin, end) in `order`.
        K = ceil(N / rows_per_chunk) + C bounds the number of chunks from the
        sizes alone, so a launch over K chunks needs nothing read back from
        the device. The chunks past class_chunks[C] are surplus: they belong
        to the last class with begin >= end, and sum nothing.
    """

    order: torch.Tensor
    counts: torch.Tensor
    starts: torch.Tensor
    class_chunks: torch.Tensor
    chunks: torch.Tensor


def bucket_rows(index: torch.Tensor, num_classes: int, rows_per_chunk: int) -> ClassBuckets:
    """ClassBuckets of `index` (N int64 in [0, num_classes)), with at most
    `rows_per_chunk` rows per chunk. Only device-side torch ops: no host sync
    (torch.bincount on CUDA would read the largest label back to the host;
    searchsorted on the sorted labels gives the counts without it)."""
    n = index.shape[0]
    device = index.device
    sorted_index, order = torch.sort(index, stable=True)
    edges = torch.searchsorted(sorted_index, torch.arange(num_classes + 1, device=device))
    starts = edges[:-1]
    counts = edges[1:] - starts
    class_chunks = torch.zeros(num_classes + 1, dtype=torch.int64, device=device)
    torch.cumsum((counts + rows_per_chunk - 1) // rows_per_chunk, 0, out=class_chunks[1:])
    # sum_c ceil(n_c / R) <= N / R + C.
    chunk = torch.arange(-(-n // rows_per_chunk) + num_classes, device=device)
    chunk_class = torch.searchsorted(class_chunks[1:], chunk, right=True).clamp_max(num_classes - 1)
    begin = starts[chunk_class] + (chunk - class_chunks[chunk_class]) * rows_per_chunk
    end = torch.minimum(begin + rows_per_chunk, edges[1:][chunk_class])
    return ClassBuckets(order=order, counts=counts, starts=starts, class_chunks=class_chunks,
                        chunks=torch.stack([chunk_class, begin, end]))


def kernel_layout(x: torch.Tensor) -> torch.Tensor:
    """x itself when the C++/CUDA kernels can read it (contiguous rows, rows at least a
    row apart), else a contiguous copy."""
    rows_ok = x.shape[1] == 1 or x.stride(1) == 1
    stride_ok = x.shape[0] == 1 or x.stride(0) >= x.shape[1]
    return x if rows_ok and stride_ok else x.contiguous()


def row_stride(x: torch.Tensor) -> int:
    return x.stride(0) if x.shape[0] > 1 else x.shape[1]


def contiguous_delta(pairwise_forces: PairwiseForces) -> PairwiseForces:
    """A pairwise_forces launcher whose kernels write delta as a contiguous
    C x D array: an `out` of another layout (e.g. a transposed view) is
    filled from a contiguous temporary."""

    @functools.wraps(pairwise_forces)
    def launcher(mu: torch.Tensor, radius: torch.Tensor, *, nsigma: float, coef: float, bounds: PairBounds,
                 out: torch.Tensor | None = None) -> Forces:
        if out is None or out.is_contiguous():
            return pairwise_forces(mu, radius, nsigma=nsigma, coef=coef, bounds=bounds, out=out)
        forces = pairwise_forces(mu, radius, nsigma=nsigma, coef=coef, bounds=bounds)
        forces.delta = out.copy_(forces.delta)
        return forces

    return launcher


def rows_contiguous_integrate(
        kernel: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], object]) -> Integrate:
    """An integrate launcher from `kernel(source, index, shift, out)`, which
    needs both X and `out` in kernel_layout and index and shift contiguous.
    An `out` the kernel cannot write directly (e.g. a transposed view) is
    written through a contiguous temporary."""

    @functools.wraps(kernel)
    def integrate(x: torch.Tensor, index: torch.Tensor, shift: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        if kernel_layout(out) is not out:
            tmp = x.clone(memory_format=torch.contiguous_format)
            integrate(tmp, index, shift, tmp)
            return out.copy_(tmp)
        kernel(kernel_layout(x), index.contiguous(), shift.contiguous(), out)
        return out

    return integrate
