"""Types shared by the backends' launchers."""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch


@dataclass
class Forces:
    """One evaluation of pairwise_forces.

    delta: C x D float64 displacement of every class mean (rescaled space).
    position_change: P = sum |delta| (PED_SPEC.md section 1, step 3).
    coincident: K x 2 int64 class indices (i < j) whose means coincide.
    evaluated_pairs / active_pairs: pairs measured / pairs overlapping.
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

    def __init__(self, num_classes, device):
        self.dist = torch.empty(num_classes, num_classes, dtype=torch.float64, device=device)
        self.drift = torch.zeros(num_classes, dtype=torch.float64, device=device)
        self.full = True

    def advance(self, delta):
        self.drift += torch.linalg.vector_norm(delta, dim=1)
        self.full = False


def kernel_layout(x):
    """x itself when the C++/CUDA kernels can read it (contiguous rows, rows at least a
    row apart), else a contiguous copy."""
    rows_ok = x.shape[1] == 1 or x.stride(1) == 1
    stride_ok = x.shape[0] == 1 or x.stride(0) >= x.shape[1]
    return x if rows_ok and stride_ok else x.contiguous()


def row_stride(x):
    return x.stride(0) if x.shape[0] > 1 else x.shape[1]


def rows_contiguous_integrate(kernel):
    """An integrate launcher from `kernel(source, index, shift, out)`, which
    needs both X and `out` in kernel_layout and index and shift contiguous.
    An `out` the kernel cannot write directly (e.g. a transposed view) is
    written through a contiguous temporary."""

    @functools.wraps(kernel)
    def integrate(x, index, shift, out):
        if kernel_layout(out) is not out:
            tmp = x.clone(memory_format=torch.contiguous_format)
            integrate(tmp, index, shift, tmp)
            return out.copy_(tmp)
        kernel(kernel_layout(x), index.contiguous(), shift.contiguous(), out)
        return out

    return integrate
