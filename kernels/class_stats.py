"""class_stats kernels: per-class counts, means and population variances of X.

The launcher buckets the rows by class (a stable argsort of the labels) and
cuts every class into chunks of at most ROWS_PER_CHUNK consecutive rows of
that order, so that a few large classes (the one-class statistics of the
reference set) still fill the GPU. Two passes, no atomics, fixed summation
order: results are identical run to run.

1. partial_sums_kernel: one program per (chunk, column block) sums t and t*t
   in float64 over its rows, with t = x - x0 and x0 the first row of the
   chunk's class (a shifted-data variance, as in csrc/cpu/class_stats.cpp:
   S2/n - (S1/n)^2 then cancels only as badly as x0 is far from the class
   mean, about one standard deviation).
2. finalize_kernel: one program per (class, column block) adds its chunks'
   partial sums in chunk order and writes mean = x0 + S1/n and
   var = max(S2/n - (S1/n)^2, 0).

Both take every num_programs(1)-th column block: the launcher caps the
second grid axis, where CUDA allows 65535 programs (D / BLOCK_D passes that
at D of about eight million).

Offsets into X and the partial sums are int64. A loop counter takes the type
of its bounds (int64 here) when compiled but is a Python int, hence int32 in
offset arithmetic, under the interpreter: it is cast so that both modes
compute the same offsets.
"""
import triton
import triton.language as tl


@triton.jit
def partial_sums_kernel(
    x_ptr, stride_row, stride_col,  # X (N x D), any strides
    order_ptr,  # N int64: row numbers of X sorted by class (stable)
    chunk_begin_ptr, chunk_end_ptr,  # per chunk: its range [begin, end) in `order`
    chunk_shift_ptr,  # per chunk: row of X that is its class's shift x0
    s1_ptr, s2_ptr,  # chunks x D float64 outputs
    dim,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    chunk = tl.program_id(0)
    begin = tl.load(chunk_begin_ptr + chunk)
    end = tl.load(chunk_end_ptr + chunk)
    shift_row = tl.load(chunk_shift_ptr + chunk)
    for col_block in range(tl.program_id(1), tl.cdiv(dim, BLOCK_D), tl.num_programs(1)):
        cols = col_block * BLOCK_D + tl.arange(0, BLOCK_D)
        col_mask = cols < dim
        col_offset = cols.to(tl.int64) * stride_col
        x0 = tl.load(x_ptr + shift_row * stride_row + col_offset, mask=col_mask, other=0.0).to(tl.float64)

        # Per-lane accumulators, reduced once at the end: a fixed order.
        acc1 = tl.zeros([BLOCK_R, BLOCK_D], dtype=tl.float64)
        acc2 = tl.zeros([BLOCK_R, BLOCK_D], dtype=tl.float64)
        for start in range(begin, end, BLOCK_R):
            rows = tl.cast(start, tl.int64) + tl.arange(0, BLOCK_R)
            row_mask = rows < end
            source = tl.load(order_ptr + rows, mask=row_mask, other=0)
            mask = row_mask[:, None] & col_mask[None, :]
            x = tl.load(x_ptr + source[:, None] * stride_row + col_offset[None, :], mask=mask, other=0.0)
            t = tl.where(mask, x.to(tl.float64) - x0[None, :], 0.0)
            acc1 += t
            acc2 += t * t
        out = chunk.to(tl.int64) * dim + cols
        tl.store(s1_ptr + out, tl.sum(acc1, axis=0), mask=col_mask)
        tl.store(s2_ptr + out, tl.sum(acc2, axis=0), mask=col_mask)


@triton.jit
def finalize_kernel(
    x_ptr, stride_row, stride_col,  # X (N x D), any strides
    class_shift_ptr,  # C int64: row of X that is the class's shift x0
    counts_ptr,  # C int64
    class_chunks_ptr,  # C + 1 int64: class c owns chunks [class_chunks[c], class_chunks[c + 1])
    s1_ptr, s2_ptr,  # chunks x D float64 partial sums
    mean_ptr, var_ptr,  # C x D float64 outputs
    dim,
    BLOCK_D: tl.constexpr,
):
    c = tl.program_id(0)
    first = tl.load(class_chunks_ptr + c)
    last = tl.load(class_chunks_ptr + c + 1)
    count = tl.load(counts_ptr + c)
    shift_row = tl.load(class_shift_ptr + c)
    n = tl.maximum(count, 1).to(tl.float64)
    for col_block in range(tl.program_id(1), tl.cdiv(dim, BLOCK_D), tl.num_programs(1)):
        cols = col_block * BLOCK_D + tl.arange(0, BLOCK_D)
        col_mask = cols < dim
        s1 = tl.zeros([BLOCK_D], dtype=tl.float64)
        s2 = tl.zeros([BLOCK_D], dtype=tl.float64)
        for chunk in range(first, last):
            partial = tl.cast(chunk, tl.int64) * dim + cols
            s1 += tl.load(s1_ptr + partial, mask=col_mask, other=0.0)
            s2 += tl.load(s2_ptr + partial, mask=col_mask, other=0.0)
        x0 = tl.load(x_ptr + shift_row * stride_row + cols.to(tl.int64) * stride_col, mask=col_mask, other=0.0)
        m1 = s1 / n
        # An empty class has no rows (s1 = s2 = 0) and its x0 is an arbitrary
        # row: mean and variance 0, like the other backends.
        mean = tl.where(count > 0, x0.to(tl.float64) + m1, 0.0)
        v = s2 / n - m1 * m1
        # Clamp rounding below zero; NaN (non-finite input) passes through so
        # the caller can detect it.
        var = tl.where(v < 0.0, 0.0, v)
        out = c.to(tl.int64) * dim + cols
        tl.store(mean_ptr + out, mean, mask=col_mask)
        tl.store(var_ptr + out, var, mask=col_mask)
