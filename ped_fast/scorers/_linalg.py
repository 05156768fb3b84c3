"""The dense linear algebra the scorers share: a Gram matrix, products, a
symmetric eigendecomposition, principal axes, a symmetric positive definite
solver and per-group row sums, on any device.

On the CPU every BLAS and LAPACK call here goes to one library, scipy's
OpenBLAS. numpy's and scipy's wheels each bundle their own OpenBLAS, and a
pool's threads spin for about 0.1 s after each call, so alternating between
the two (or with torch's MKL) makes each call share the two cores with the
other pool's spinning threads: SFDA at SUN397 shape measured 4.30 s mixing
numpy and scipy, 4.12 s on scipy's alone (median of 5, 2 cores).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from scipy import linalg
from scipy.linalg import blas, lapack


def gram(a: torch.Tensor, *, lower_only: bool = False) -> torch.Tensor:
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


def _mirror_lower(m: npt.NDArray[Any], block: int = 256) -> None:
    """Copy the strict lower triangle of square m onto its upper one (which
    holds zeros), in blocks of rows so the transposed reads stay cached."""
    dim = m.shape[0]
    for start in range(0, dim, block):
        stop = min(start + block, dim)
        m[start:stop, stop:] = m[stop:, start:stop].T
        m[start:stop, start:stop] += np.tril(m[start:stop, start:stop], -1).T


def symmetric_matvec(b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """b @ x for symmetric b (D x D) of which only the lower triangle is
    read (see gram's lower_only)."""
    if b.device.type != "cpu":
        return b @ x
    bn = b.contiguous().numpy()
    symv = blas.get_blas_funcs("symv", (bn,))
    return torch.from_numpy(symv(1.0, bn.T, x.contiguous().numpy(), lower=0))


def symmetric_eigh(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(values ascending, vectors as columns) of symmetric b (D x D), of
    which only the lower triangle is read. On the CPU: LAPACK's
    divide-and-conquer syevd through scipy, on the column-major view of b
    (1.13 s at D=2048 in float64 on 2 cores; torch's 1.27 s)."""
    if b.device.type != "cpu":
        eigen: tuple[torch.Tensor, torch.Tensor] = torch.linalg.eigh(b)
        return eigen
    bn = b.contiguous().numpy()
    values, vectors = linalg.eigh(bn.T, lower=False, driver="evd", check_finite=False)
    return torch.from_numpy(values), torch.from_numpy(vectors)


def matmul(a: torch.Tensor, b: torch.Tensor, *, alpha: float = 1.0, add: torch.Tensor | None = None) -> torch.Tensor:
    """alpha a @ b for 2-D tensors of one dtype, added into `add` (a
    row-major tensor of the result's shape, overwritten and returned) when
    given; on the CPU through scipy's BLAS (see the module docstring),
    which at SFDA's logit shape (N x D times D x C, N=19850, D=2048, C=397,
    float64) takes 0.41 s on 2 cores against torch's 0.51 s. Row- or
    column-major operands are viewed, not copied."""
    if a.device.type != "cpu":
        return a @ b if add is None else add.addmm_(a, b, alpha=alpha)
    an, bn = a.numpy(), b.numpy()
    gemm = blas.get_blas_funcs("gemm", (an, bn))
    # Column-major BLAS computes (a b)^T = b^T a^T; its row-major view is a b.
    # A row-major operand is passed as its column-major transpose, a
    # column-major one as itself with the transpose flag.
    b_major, b_trans = (bn, 1) if bn.flags.f_contiguous and not bn.flags.c_contiguous else (bn.T, 0)
    a_major, a_trans = (an, 1) if an.flags.f_contiguous and not an.flags.c_contiguous else (an.T, 0)
    if add is None:
        return torch.from_numpy(gemm(alpha, b_major, a_major, trans_a=b_trans, trans_b=a_trans).T)
    # add's row-major memory is the column-major (a b)^T that gemm updates.
    gemm(alpha, b_major, a_major, beta=1.0, c=add.numpy().T, trans_a=b_trans, trans_b=a_trans, overwrite_c=True)
    return add


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

    def __init__(self, b: torch.Tensor, floor: float) -> None:
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

    def solve(self, rhs: torch.Tensor) -> torch.Tensor:
        """b^-1 rhs for rhs D x K (any layout)."""
        if not self.cholesky:
            return self.vectors @ ((self.vectors.T @ rhs) / self.values.unsqueeze(1))
        if self.lapack:
            solution, info = self._potrs(self.factor, np.asfortranarray(rhs.numpy()), lower=False)
            if info != 0:
                raise RuntimeError(f"LAPACK potrs failed (info={info})")
            return torch.from_numpy(solution)
        return torch.cholesky_solve(rhs, self.factor)


def principal_axes(xc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, axes) of centred features xc (N x D): the eigenvalues of
    xc^T xc in descending order, clamped at 0, and its eigenvectors as the
    columns of axes (D x r). From the eigendecomposition of the D x D Gram
    matrix when N > D, from the thin SVD of xc (values s^2, r = N)
    otherwise. Signs are as the solver returns them."""
    n, dim = xc.shape
    if n > dim:
        values, vectors = symmetric_eigh(gram(xc, lower_only=True))
        return values.flip(0).clamp_min(0), vectors.flip(1)
    _, s, vt = torch.linalg.svd(xc, full_matrices=False)
    return s * s, vt.T


_GROUP_CHUNK_ELEMENTS = 1 << 22


def group_sums(groups: torch.Tensor, values: torch.Tensor, count: int) -> torch.Tensor:
    """Row sums of `values` (N x m) per group (N ints in [0, count)):
    count x m.

    index_add_ is deterministic on the CPU but accumulates with atomics on a
    GPU, whose order varies from run to run; there a one-hot product (in row
    chunks of ~4M one-hot elements) gives the same bits every time."""
    if values.device.type == "cpu":
        return torch.zeros(count, values.shape[1], dtype=values.dtype).index_add_(0, groups, values)
    out = torch.zeros(count, values.shape[1], dtype=values.dtype, device=values.device)
    step = max(1, _GROUP_CHUNK_ELEMENTS // max(count, 1))
    for start in range(0, values.shape[0], step):
        rows = slice(start, min(start + step, values.shape[0]))
        onehot = torch.zeros(rows.stop - rows.start, count, dtype=values.dtype, device=values.device)
        onehot.scatter_(1, groups[rows].unsqueeze(1), 1.0)
        out += onehot.T @ values[rows]
    return out


def spd_logdet(b: torch.Tensor) -> float:
    """log det of a symmetric positive definite b (any square size), from
    its Cholesky factor (LAPACK potrf through scipy on the CPU, on the
    column-major view of b: only b's lower triangle is read)."""
    if b.device.type == "cpu":
        bn = b.contiguous().numpy()
        potrf = lapack.get_lapack_funcs("potrf", (bn,))
        factor, info = potrf(bn.T, lower=False, clean=False, overwrite_a=False)
        if info != 0:
            raise ValueError(f"a matrix that must be positive definite is not (LAPACK potrf info={info})")
        return 2.0 * float(np.log(np.diagonal(factor)).sum())
    factor, info = torch.linalg.cholesky_ex(b)
    if int(info) != 0:
        raise ValueError(f"a matrix that must be positive definite is not (Cholesky info={int(info)})")
    return 2.0 * float(torch.log(factor.diagonal()).sum())


def thin_qr_basis(a: torch.Tensor) -> torch.Tensor:
    """Q of the thin QR factorisation of a (m x k, m >= k or not): m x
    min(m, k) orthonormal columns (LAPACK geqrf/orgqr; through scipy on the
    CPU)."""
    if a.device.type != "cpu":
        q: torch.Tensor = torch.linalg.qr(a, mode="reduced")[0]
        return q
    return torch.from_numpy(linalg.qr(a.numpy(), mode="economic", check_finite=False)[0])


def thin_svd(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U, s, Vt) of the thin SVD of a (LAPACK gesdd; through scipy on the
    CPU)."""
    if a.device.type != "cpu":
        svd: tuple[torch.Tensor, torch.Tensor, torch.Tensor] = torch.linalg.svd(a, full_matrices=False)
        return svd
    u, s, vt = linalg.svd(a.numpy(), full_matrices=False, lapack_driver="gesdd", check_finite=False)
    return torch.from_numpy(u), torch.from_numpy(s), torch.from_numpy(vt)
