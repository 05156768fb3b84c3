"""What every scorer does before scoring: validate, encode labels, pick the
compute dtype; and the dense linear algebra they share (a Gram matrix,
products, a symmetric solver, the tail of a classifier's posterior).

The checks themselves are ped_fast._validate's; this module only adds what is
particular to scorers (the class count a score needs, the dtype option).

On the CPU every BLAS and LAPACK call here goes to one library, scipy's
OpenBLAS. numpy's and scipy's wheels each bundle their own OpenBLAS, and a
pool's threads spin for about 0.1 s after each call, so alternating between
the two (or with torch's MKL) makes each call share the two cores with the
other pool's spinning threads: SFDA at SUN397 shape measured 4.30 s mixing
numpy and scipy, 4.12 s on scipy's alone (median of 5, 2 cores).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import linalg
from scipy.linalg import blas, lapack

from .. import cpu as cpu_launcher
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
    counts: C int64 samples per class; dtype: the compute dtype."""

    x: torch.Tensor
    index: torch.Tensor
    classes: torch.Tensor
    counts: torch.Tensor
    dtype: torch.dtype

    @property
    def num_classes(self):
        return self.classes.shape[0]


def compute_dtype(dtype):
    try:
        return _DTYPES[dtype]
    except (KeyError, TypeError):
        raise TypeError(f"dtype must be torch.float64 (the default) or torch.float32, got {dtype!r}") from None


def prepare(features, labels, dtype, scorer):
    """Validate (features, labels) for `scorer`, which needs two classes:
    with one class every sample is trivially "correct" and the score ranks
    nothing."""
    dtype = compute_dtype(dtype)
    x, _ = features_tensor(features)
    index, classes, _ = labels_tensor(labels, x.shape[0], x.device)
    check_classes(classes, scorer)
    counts = torch.bincount(index, minlength=classes.shape[0])
    return Prepared(x, index, classes, counts, dtype)


def check_classes(classes, scorer):
    if classes.shape[0] < 2:
        raise ValueError(
            f"{scorer} needs at least 2 classes to score how well features separate them, but labels has "
            f"{classes.shape[0]} distinct value ({classes.tolist()})"
        )


def gram(a, *, lower_only=False):
    """a^T a (D x D) for an N x D matrix.

    On the CPU: BLAS syrk, half the flops of the general product torch.mm
    runs (1.3 s instead of 2.3 s at N=19850, D=2048 in float64 on 2 cores),
    on a column-major view of `a` (nothing is copied). syrk computes the
    lower triangle; the upper is mirrored from it (14 ms at D=2048) unless
    `lower_only`, when it holds zeros and only readers of the lower triangle
    may use the result: symmetric_eigh, SymmetricSolver and
    symmetric_matvec.
    """
    if a.device.type != "cpu":
        return a.T @ a
    an = a.contiguous().numpy()
    syrk = blas.get_blas_funcs("syrk", (an,))
    # an.T is column-major: syrk(an.T) = an.T @ an in the upper triangle of
    # a column-major result, which is the lower triangle of its row-major
    # transpose.
    result = syrk(1.0, an.T, trans=0, lower=0).T
    if not lower_only:
        _mirror_lower(result)
    return torch.from_numpy(result)


def _mirror_lower(m, block=256):
    """Copy the strict lower triangle of square m onto its upper one (which
    holds zeros), in blocks of rows so the transposed reads stay cached."""
    dim = m.shape[0]
    for start in range(0, dim, block):
        stop = min(start + block, dim)
        m[start:stop, stop:] = m[stop:, start:stop].T
        m[start:stop, start:stop] += np.tril(m[start:stop, start:stop], -1).T


def symmetric_matvec(b, x):
    """b @ x for symmetric b (D x D) of which only the lower triangle is
    read (see gram's lower_only)."""
    if b.device.type != "cpu":
        return b @ x
    bn = b.contiguous().numpy()
    symv = blas.get_blas_funcs("symv", (bn,))
    return torch.from_numpy(symv(1.0, bn.T, x.contiguous().numpy(), lower=0))


def symmetric_eigh(b):
    """(values ascending, vectors as columns) of symmetric b (D x D), of
    which only the lower triangle is read. On the CPU: LAPACK's
    divide-and-conquer syevd through scipy, on the column-major view of b
    (1.13 s at D=2048 in float64 on 2 cores; torch's 1.27 s)."""
    if b.device.type != "cpu":
        return torch.linalg.eigh(b)
    bn = b.contiguous().numpy()
    values, vectors = linalg.eigh(bn.T, lower=False, driver="evd", check_finite=False)
    return torch.from_numpy(values), torch.from_numpy(vectors)


def matmul(a, b):
    """a @ b for 2-D tensors of one dtype; on the CPU through scipy's BLAS
    (see the module docstring), which at SFDA's logit shape (N x D times
    D x C, N=19850, D=2048, C=397, float64) takes 0.41 s on 2 cores against
    torch's 0.51 s. Row- or column-major operands are viewed, not copied."""
    if a.device.type != "cpu":
        return a @ b
    an, bn = a.numpy(), b.numpy()
    gemm = blas.get_blas_funcs("gemm", (an, bn))
    # Column-major BLAS computes (a b)^T = b^T a^T; its row-major view is a b.
    # A row-major operand is passed as its column-major transpose, a
    # column-major one as itself with the transpose flag.
    b_major, b_trans = (bn, 1) if bn.flags.f_contiguous and not bn.flags.c_contiguous else (bn.T, 0)
    a_major, a_trans = (an, 1) if an.flags.f_contiguous and not an.flags.c_contiguous else (an.T, 0)
    return torch.from_numpy(gemm(1.0, b_major, a_major, trans_a=b_trans, trans_b=a_trans).T)


class SymmetricSolver:
    """Solves b x = rhs for a symmetric positive definite b (D x D), factored
    once.

    Cholesky when b is numerically positive definite. Otherwise (a shrinkage
    too small to lift a singular scatter above rounding) an
    eigendecomposition whose eigenvalues are clamped at `floor`, the
    smallest eigenvalue b has in exact arithmetic: a finite answer, though
    in the directions that rounding swamped it reflects rounding, as any
    solver's answer would (the published generalized eigensolver refuses).

    Only b's lower triangle is read (gram's lower_only output will do). On
    the CPU the factorisation and solves call LAPACK on the column-major
    view of b, whose upper triangle is b's lower one: at D=2048 in
    float64 on 2 cores, 60 + 65 ms against torch's 105 + 105 ms, which also
    copies the factor to zero its unused triangle.
    """

    def __init__(self, b, floor):
        self.lapack = b.device.type == "cpu"
        if self.lapack:
            bn = b.contiguous().numpy()
            potrf, self._potrs = lapack.get_lapack_funcs(("potrf", "potrs"), (bn,))
            # overwrite_a=False: b stays whole for the fallback below.
            self.factor, info = potrf(bn.T, lower=False, clean=False, overwrite_a=False)
        else:
            self.factor, info = torch.linalg.cholesky_ex(b)
        self.cholesky = int(info) == 0
        if not self.cholesky:
            self.factor = None
            values, self.vectors = symmetric_eigh(b)
            self.values = values.clamp_min(floor)

    def solve(self, rhs):
        """b^-1 rhs for rhs D x K (any layout)."""
        if not self.cholesky:
            return self.vectors @ ((self.vectors.T @ rhs) / self.values.unsqueeze(1))
        if self.lapack:
            solution, info = self._potrs(self.factor, np.asfortranarray(rhs.numpy()), lower=False)
            if info != 0:
                raise RuntimeError(f"LAPACK potrs failed (info={info})")
            return torch.from_numpy(solution)
        return torch.cholesky_solve(rhs, self.factor)


def own_class_probability(logits, table, index, *, soften):
    """p_i[y_i] for the posteriors p_i = softmax(logits_i + table[y_i]) of a
    linear classifier (N x C logits without their class-dependent term,
    C x C table of it, y = index); with soften=True p_i is first replaced by
    softmax(p_i), as the published SFDA does. Returns N values in the
    logits' dtype; never writes its inputs.

    On the CPU this is one fused pass (csrc/cpu/own_class_probability.cpp)
    instead of about seven N x C passes of PyTorch ops.
    """
    if logits.device.type == "cpu" and cpu_launcher.status()[0]:
        logits = logits.contiguous()
        table = table.to(logits.dtype).contiguous()
        index = index.contiguous()
        n, num_classes = logits.shape
        own = torch.empty(n, dtype=logits.dtype)
        cpu_launcher._C.own_class_probability(logits.data_ptr(), table.data_ptr(), logits.dtype == torch.float64,
                                              index.data_ptr(), n, num_classes, soften, own.data_ptr())
        return own
    return own_class_probability_reference(logits, table, index, soften=soften)


def own_class_probability_reference(logits, table, index, *, soften):
    """own_class_probability in plain PyTorch ops, on any device."""
    prob = torch.softmax(logits + table[index], dim=1)
    if soften:
        prob = torch.softmax(prob, dim=1)
    return prob.gather(1, index.unsqueeze(1)).squeeze(1)
