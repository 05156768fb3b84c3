"""integrate kernel: out[i, :] = x[i, :] + shift[index[i], :].

One read and one write of X; every element is read and written by the same
program, so `out` may be `x` (in place). Any row and column strides. A
program takes every num_programs(1)-th column block: the launcher caps the
second grid axis, where CUDA allows 65535 programs.
"""
import triton
import triton.language as tl


@triton.jit
def integrate_kernel(
    x_ptr, x_stride_row, x_stride_col,  # N x D, float32 or float64
    out_ptr, out_stride_row, out_stride_col,  # N x D, x's dtype
    index_ptr,  # N int64 class of every row
    shift_ptr,  # C x D contiguous, x's dtype
    n, dim,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = rows < n
    cls = tl.load(index_ptr + rows, mask=row_mask, other=0)
    for col_block in range(tl.program_id(1), tl.cdiv(dim, BLOCK_D), tl.num_programs(1)):
        cols64 = (col_block * BLOCK_D + tl.arange(0, BLOCK_D)).to(tl.int64)
        mask = row_mask[:, None] & (cols64 < dim)[None, :]
        x = tl.load(x_ptr + rows[:, None] * x_stride_row + cols64[None, :] * x_stride_col, mask=mask, other=0.0)
        shift = tl.load(shift_ptr + cls[:, None] * dim + cols64[None, :], mask=mask, other=0.0)
        tl.store(out_ptr + rows[:, None] * out_stride_row + cols64[None, :] * out_stride_col, x + shift, mask=mask)
