"""pairwise_forces kernels: one PED step on the C x D float64 class means
(docs/spec.md §1.4), in two launches and O(C^2 + C D) memory.

1. pair_weights_kernel: one program per BLOCK_C x BLOCK_C tile of the upper
   triangle of the C x C pair matrix measures its distances by direct
   differences (float64, summed over D in chunks; no Gram-matrix shortcut),
   and writes the weights w_ij = min(coef * o, o) / d (csrc/ped_math.h,
   pair_weight) to both W[i, j] and W[j, i], the distances to dist_out[i, j]
   (i < j only), and per tile the numbers of evaluated pairs, pairs with a
   non-zero weight (what docs/spec.md §1.6 calls overlapping: with coef = 0
   pairs overlap but weigh nothing) and coincident pairs. On a pruned step
   (FULL false) a pair whose distance at the last full step, minus both
   means' drift since, still exceeds its threshold (ped_math.h,
   pair_pruned) is not evaluated: weight 0, distance +inf; a tile with no
   pair left skips its distance loop.
2. displacement_kernel: one program per (BLOCK_C rows, BLOCK_D columns) of
   delta accumulates delta_i = sum_j w_ij (mu_i - mu_j) over j in ascending
   order, the order of the CPU kernel, skipping blocks of j whose weights are
   all zero. No C x C x D array exists. The second grid axis is capped
   (CUDA allows 65535 programs on it; D / BLOCK_D passes that at D of about
   a million), so a program takes every num_programs(1)-th column block.

Scalars that must stay float64 (nsigma, coef) come through a tensor, because
Triton passes Python floats to kernels as float32. Every offset is int64 and
computed as one expression before it is added to a pointer: Triton's
integers are int32 by default, and i * C + j or i * D + k pass 2^31 at
C = 46341 (a 17 GB weight matrix) or C * D = 2^31 (16 GB of means), sizes
that one GPU holds.
"""
import triton
import triton.language as tl


@triton.jit
def pair_weights_kernel(
    mu_ptr,  # C x D float64, contiguous
    radius_ptr,  # C float64
    params_ptr,  # float64 [nsigma, coef, 1 + prune slack]
    tile_i_ptr, tile_j_ptr,  # per program: block row and block column (tile_i <= tile_j)
    dist0_ptr,  # C x C float64: distances at the last full step (read when not FULL)
    drift_ptr,  # C float64: L2 length of the steps since (read when not FULL)
    dist_out_ptr,  # C x C float64: distances of this step, upper triangle
    weight_ptr,  # C x C float64, zero-filled: symmetric weights
    tally_ptr,  # tiles x 3 int32: evaluated, overlapping, coincident pairs
    num_classes, dim,
    FULL: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    tile = tl.program_id(0)
    i = tl.load(tile_i_ptr + tile) * BLOCK_C + tl.arange(0, BLOCK_C)  # int64, like the tile table
    j = tl.load(tile_j_ptr + tile) * BLOCK_C + tl.arange(0, BLOCK_C)
    i_in = i < num_classes
    j_in = j < num_classes
    # Only i < j is measured; W[j, i] is a copy, so W is exactly symmetric.
    pair = (i[:, None] < j[None, :]) & i_in[:, None] & j_in[None, :]
    pair_offset = i[:, None] * num_classes + j[None, :]

    nsigma = tl.load(params_ptr)
    coef = tl.load(params_ptr + 1)
    radius_i = tl.load(radius_ptr + i, mask=i_in, other=0.0)
    radius_j = tl.load(radius_ptr + j, mask=j_in, other=0.0)
    threshold = nsigma * (radius_i[:, None] + radius_j[None, :])
    if FULL:
        evaluate = pair
    else:
        prune_scale = tl.load(params_ptr + 2)
        dist0 = tl.load(dist0_ptr + pair_offset, mask=pair, other=0.0)
        drift_i = tl.load(drift_ptr + i, mask=i_in, other=0.0)
        drift_j = tl.load(drift_ptr + j, mask=j_in, other=0.0)
        pruned = dist0 - drift_i[:, None] - drift_j[None, :] > threshold * prune_scale
        evaluate = pair & ~pruned

    squared = tl.zeros([BLOCK_C, BLOCK_C], dtype=tl.float64)
    if tl.max(evaluate.to(tl.int32)) > 0:
        for start in range(0, dim, BLOCK_D):
            cols = start + tl.arange(0, BLOCK_D)
            col_mask = cols < dim
            mu_i = tl.load(mu_ptr + (i[:, None] * dim + cols[None, :]), mask=i_in[:, None] & col_mask[None, :],
                           other=0.0)
            mu_j = tl.load(mu_ptr + (j[:, None] * dim + cols[None, :]), mask=j_in[:, None] & col_mask[None, :],
                           other=0.0)
            diff = mu_i[:, None, :] - mu_j[None, :, :]
            squared += tl.sum(diff * diff, axis=2)
    dist = tl.sqrt(squared)
    overlap = threshold - dist
    positive = evaluate & (overlap > 0.0) & (dist > 0.0)
    weight = tl.where(positive, tl.minimum(coef * overlap, overlap) / tl.where(positive, dist, 1.0), 0.0)

    tl.store(weight_ptr + pair_offset, weight, mask=pair)
    tl.store(weight_ptr + (j[None, :] * num_classes + i[:, None]), weight, mask=pair)
    tl.store(dist_out_ptr + pair_offset, tl.where(evaluate, dist, float("inf")), mask=pair)
    tally = tally_ptr + 3 * tile.to(tl.int64)
    tl.store(tally, tl.sum(evaluate.to(tl.int32)))
    tl.store(tally + 1, tl.sum((weight != 0.0).to(tl.int32)))
    tl.store(tally + 2, tl.sum((evaluate & (squared == 0.0)).to(tl.int32)))


@triton.jit
def displacement_kernel(
    mu_ptr,  # C x D float64, contiguous
    weight_ptr,  # C x C float64 symmetric weights, zero diagonal
    delta_ptr,  # C x D float64 output
    num_classes, dim,
    BLOCK_C: tl.constexpr,
    BLOCK_J: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    i = tl.program_id(0).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    i_in = i < num_classes
    for col_block in range(tl.program_id(1), tl.cdiv(dim, BLOCK_D), tl.num_programs(1)):
        cols = col_block * BLOCK_D + tl.arange(0, BLOCK_D)
        col_mask = cols < dim
        mask = i_in[:, None] & col_mask[None, :]
        mu_i = tl.load(mu_ptr + (i[:, None] * dim + cols[None, :]), mask=mask, other=0.0)
        acc = tl.zeros([BLOCK_C, BLOCK_D], dtype=tl.float64)
        for start in range(0, num_classes, BLOCK_J):
            js = start + tl.arange(0, BLOCK_J)
            block = tl.load(weight_ptr + (i[:, None] * num_classes + js[None, :]),
                            mask=i_in[:, None] & (js < num_classes)[None, :], other=0.0)
            # A block of partners with zero weights adds nothing.
            if tl.max(tl.abs(block)) > 0.0:
                for u in tl.static_range(BLOCK_J):
                    j = tl.cast(start + u, tl.int64)
                    j_in = j < num_classes
                    w = tl.load(weight_ptr + (i * num_classes + j), mask=i_in & j_in, other=0.0)
                    mu_j = tl.load(mu_ptr + (j * dim + cols), mask=col_mask & j_in, other=0.0)
                    acc += w[:, None] * (mu_i - mu_j[None, :])
        tl.store(delta_ptr + (i[:, None] * dim + cols[None, :]), acc, mask=mask)
