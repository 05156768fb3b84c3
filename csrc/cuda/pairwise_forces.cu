// pairwise_forces on the GPU: one PED step on the C x D class means
// (docs/spec.md §1.4), with O(C^2) scratch and no C x C x D array.
//
// 1. pair_weights_kernel: one block per 32 x 32 tile of class pairs (upper
//    triangle). Distances come from direct float64 differences, staged
//    through shared memory 16 columns at a time like a GEMM tile, 2 x 2 pairs
//    per thread. The weights w_ij = a_ij / d_ij (ped_math.h, the CPU's
//    expressions) go into a dense C x C matrix, both (i, j) and (j, i), and
//    coincident pairs (d_ij == 0) into the caller's C x C flags.
//    On later steps the tile first applies the drift bound of PairBounds
//    (pair_pruned, ped_math.h): a tile with no candidate is skipped, a tile
//    with a few is measured pair by pair, a tile with many as a whole. Only
//    the candidates are used and counted as evaluated, as on the CPU and in
//    Triton: a tile measured whole still prunes its other pairs. A pruned
//    pair's weight would be exactly zero, so pruning changes no force, but
//    the result equals the all-pairs result only up to rounding: a
//    candidate of a sparse tile has its squared distance tree-reduced over
//    the block, where a tile measured whole (every tile on a full step)
//    sums it sequentially per thread.
// 2. delta_kernel: delta_i = sum_j w_ij (mu_i - mu_j) as a tiled
//    matrix product, accumulated over j in ascending order (as on the CPU),
//    skipping 16-column blocks of W that are all zero (sparse overlaps).
// 3. finish_kernel: P = sum |delta| and the pair counts, reduced in a fixed
//    order by one block.
// No floating-point atomics anywhere: every sum has a fixed order that
// depends on the sizes only, so results are bit-identical run to run.
#include "ops.h"

#include <cmath>
#include <string>

#include "../ped_math.h"

namespace ped {
namespace cuda {
namespace {

constexpr int kTile = 32;          // pairs per tile edge; rows of mu per delta tile
constexpr int kHalf = 16;          // threads per block edge (16 x 16), 2 x 2 pairs each
constexpr int kThreads = kHalf * kHalf;
constexpr int kChunk = 16;         // columns of mu (pairs) or of W (delta) per shared stage
constexpr int kSparsePairs = 64;   // tiles with at most this many candidates: measured pair by pair
constexpr int kDeltaCols = 64;     // columns of delta per block, 4 per thread
constexpr int64_t kMaxGridY = 65535;

struct Totals {
  double position_change;
  long long evaluated, active, coincident;
};

struct Layout {
  int64_t tiles;     // pair tiles per edge
  int64_t l1_blocks; // delta blocks
  int64_t weight, tile_counts, l1, totals, bytes;  // offsets into the workspace
};

Layout layout(int64_t C, int64_t D) {
  Layout l;
  l.tiles = ceil_div(C, kTile);
  l.l1_blocks = l.tiles * ceil_div(D, kDeltaCols);
  l.weight = 0;
  l.tile_counts = l.weight + align_up(C * C * static_cast<int64_t>(sizeof(double)));
  l.l1 = l.tile_counts + align_up(3 * l.tiles * l.tiles * static_cast<int64_t>(sizeof(long long)));
  l.totals = l.l1 + align_up(l.l1_blocks * static_cast<int64_t>(sizeof(double)));
  l.bytes = l.totals + align_up(sizeof(Totals));
  return l;
}

// Sum of red[0..kThreads) into red[0], pairwise in a fixed order.
__device__ __forceinline__ void block_tree_sum(double* red, int tid) {
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (tid < s) red[tid] += red[tid + s];
    __syncthreads();
  }
}

__global__ void __launch_bounds__(kThreads)
    pair_weights_kernel(const double* __restrict__ mu, const double* __restrict__ radius, int64_t C, int64_t D,
                        double nsigma, double coef, double* __restrict__ dist, const double* __restrict__ drift,
                        bool full, double* __restrict__ weight, unsigned char* __restrict__ coincident,
                        long long* __restrict__ tile_counts) {
  const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * kHalf + tx;
  const int64_t bi = blockIdx.y, bj = blockIdx.x;
  long long* counts_out = tile_counts + 3 * (bi * gridDim.x + bj);
  if (bj < bi) {  // lower triangle: nothing to do, but its counts are summed
    if (tid == 0) counts_out[0] = counts_out[1] = counts_out[2] = 0;
    return;
  }
  __shared__ int n_candidates, n_evaluated, n_active, n_coincident;
  __shared__ int candidate_pair[kSparsePairs];
  __shared__ double candidate_sq[kSparsePairs];
  __shared__ double red[kThreads];
  __shared__ double a_tile[kTile][kChunk + 1];  // +1: conflict-free column reads
  __shared__ double b_tile[kTile][kChunk + 1];
  if (tid == 0) n_candidates = n_evaluated = n_active = n_coincident = 0;
  __syncthreads();

  const int64_t i0 = bi * kTile, j0 = bj * kTile;
  // This thread's pairs: rows ty, ty + 16 and columns tx, tx + 16 of the tile.
  bool valid[2][2], wanted[2][2];
  int slot[2][2];
  double threshold[2][2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      const int64_t i = i0 + ty + kHalf * r, j = j0 + tx + kHalf * c;
      valid[r][c] = i < j && j < C;
      threshold[r][c] = valid[r][c] ? overlap_threshold(radius[i], radius[j], nsigma) : 0.0;
      wanted[r][c] = valid[r][c] && (full || !pair_pruned(dist[i * C + j], drift[i], drift[j], threshold[r][c]));
      slot[r][c] = -1;
      if (wanted[r][c]) {
        // The slot order varies between runs, but each pair's distance is
        // computed the same way whatever its slot.
        slot[r][c] = atomicAdd(&n_candidates, 1);
        if (slot[r][c] < kSparsePairs) candidate_pair[slot[r][c]] = (ty + kHalf * r) * kTile + tx + kHalf * c;
      }
    }
  }
  __syncthreads();
  const int candidates = n_candidates;
  if (candidates == 0) {
    if (tid == 0) counts_out[0] = counts_out[1] = counts_out[2] = 0;
    return;
  }

  double sq[2][2] = {{0.0, 0.0}, {0.0, 0.0}};
  if (full || candidates > kSparsePairs) {
    // The whole tile, GEMM-like: every loaded column serves 2 x 2 pairs.
    for (int64_t k0 = 0; k0 < D; k0 += kChunk) {
#pragma unroll
      for (int e = tid; e < kTile * kChunk; e += kThreads) {
        const int row = e / kChunk, kk = e % kChunk;
        const int64_t k = k0 + kk, i = i0 + row, j = j0 + row;
        a_tile[row][kk] = i < C && k < D ? mu[i * D + k] : 0.0;
        b_tile[row][kk] = j < C && k < D ? mu[j * D + k] : 0.0;
      }
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < kChunk; ++kk) {
        const double a0 = a_tile[ty][kk], a1 = a_tile[ty + kHalf][kk];
        const double b0 = b_tile[tx][kk], b1 = b_tile[tx + kHalf][kk];
        const double t00 = a0 - b0, t01 = a0 - b1, t10 = a1 - b0, t11 = a1 - b1;
        sq[0][0] += t00 * t00;
        sq[0][1] += t01 * t01;
        sq[1][0] += t10 * t10;
        sq[1][1] += t11 * t11;
      }
      __syncthreads();
    }
  } else {
    // A few candidates: the whole block measures one pair at a time.
    for (int q = 0; q < candidates; ++q) {
      const int pair = candidate_pair[q];
      const double* mi = mu + (i0 + pair / kTile) * D;
      const double* mj = mu + (j0 + pair % kTile) * D;
      double partial = 0.0;
      for (int64_t k = tid; k < D; k += kThreads) {
        const double t = mi[k] - mj[k];
        partial += t * t;
      }
      red[tid] = partial;
      __syncthreads();
      block_tree_sum(red, tid);
      if (tid == 0) candidate_sq[q] = red[0];
      __syncthreads();  // red is rewritten by the next pair
    }
#pragma unroll
    for (int r = 0; r < 2; ++r)
#pragma unroll
      for (int c = 0; c < 2; ++c)
        if (wanted[r][c]) sq[r][c] = candidate_sq[slot[r][c]];
  }

  int evaluated = 0, active = 0, coincident_here = 0;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      if (!wanted[r][c]) continue;
      const int64_t i = i0 + ty + kHalf * r, j = j0 + tx + kHalf * c;
      const double d = sqrt(sq[r][c]);
      if (full) dist[i * C + j] = d;
      const double w = pair_weight(d, threshold[r][c], coef);
      if (w != 0.0) {
        weight[i * C + j] = w;
        weight[j * C + i] = w;
        ++active;
      }
      if (d == 0.0) {
        coincident[i * C + j] = 1;
        ++coincident_here;
      }
      ++evaluated;
    }
  }
  // Integer counts: atomics give the same totals in any order.
  if (evaluated) atomicAdd(&n_evaluated, evaluated);
  if (active) atomicAdd(&n_active, active);
  if (coincident_here) atomicAdd(&n_coincident, coincident_here);
  __syncthreads();
  if (tid == 0) {
    counts_out[0] = n_evaluated;
    counts_out[1] = n_active;
    counts_out[2] = n_coincident;
  }
}

// delta[i, k] = sum_j W[i, j] * (mu[i, k] - mu[j, k]) for a 32 x 64 tile of
// delta (2 x 4 elements per thread), j ascending; and the tile's L1 norm.
__global__ void __launch_bounds__(kThreads)
    delta_kernel(const double* __restrict__ mu, const double* __restrict__ weight, int64_t C, int64_t D,
                 double* __restrict__ delta, double* __restrict__ l1_partial) {
  const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * kHalf + tx;
  const int64_t i0 = static_cast<int64_t>(blockIdx.y) * kTile, k0 = static_cast<int64_t>(blockIdx.x) * kDeltaCols;
  __shared__ double w_tile[kTile][kChunk + 1];
  __shared__ double m_tile[kChunk][kDeltaCols];
  __shared__ double red[kThreads];

  double mine[2][4], acc[2][4];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int64_t i = i0 + ty + kHalf * r, k = k0 + tx + kHalf * c;
      mine[r][c] = i < C && k < D ? mu[i * D + k] : 0.0;
      acc[r][c] = 0.0;
    }
  }
  for (int64_t j0 = 0; j0 < C; j0 += kChunk) {
    bool nonzero = false;
#pragma unroll
    for (int e = tid; e < kTile * kChunk; e += kThreads) {
      const int row = e / kChunk, jj = e % kChunk;
      const int64_t i = i0 + row, j = j0 + jj;
      const double w = i < C && j < C ? weight[i * C + j] : 0.0;
      w_tile[row][jj] = w;
      nonzero |= w != 0.0;
    }
    // A zero weight adds an exact zero, so skipping all-zero blocks of W
    // does not change any bit of the result.
    if (!__syncthreads_or(nonzero)) continue;
#pragma unroll
    for (int e = tid; e < kChunk * kDeltaCols; e += kThreads) {
      const int jj = e / kDeltaCols, kk = e % kDeltaCols;
      const int64_t j = j0 + jj, k = k0 + kk;
      m_tile[jj][kk] = j < C && k < D ? mu[j * D + k] : 0.0;
    }
    __syncthreads();
#pragma unroll
    for (int jj = 0; jj < kChunk; ++jj) {
      const double w0 = w_tile[ty][jj], w1 = w_tile[ty + kHalf][jj];
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const double m = m_tile[jj][tx + kHalf * c];
        acc[0][c] += w0 * (mine[0][c] - m);
        acc[1][c] += w1 * (mine[1][c] - m);
      }
    }
    __syncthreads();
  }

  double l1 = 0.0;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int64_t i = i0 + ty + kHalf * r, k = k0 + tx + kHalf * c;
      if (i < C && k < D) {
        delta[i * D + k] = acc[r][c];
        l1 += fabs(acc[r][c]);
      }
    }
  }
  red[tid] = l1;
  __syncthreads();
  block_tree_sum(red, tid);
  if (tid == 0) l1_partial[static_cast<int64_t>(blockIdx.y) * gridDim.x + blockIdx.x] = red[0];
}

// One block: P and the pair counts, each summed in a fixed order.
__global__ void __launch_bounds__(kThreads)
    finish_kernel(const double* __restrict__ l1_partial, int64_t l1_blocks,
                  const long long* __restrict__ tile_counts, int64_t tiles, Totals* __restrict__ totals) {
  const int tid = threadIdx.x;
  __shared__ double red[kThreads];
  __shared__ long long counts[3][kThreads];
  double p = 0.0;
  for (int64_t t = tid; t < l1_blocks; t += kThreads) p += l1_partial[t];
  long long sums[3] = {0, 0, 0};
  for (int64_t t = tid; t < tiles; t += kThreads)
    for (int q = 0; q < 3; ++q) sums[q] += tile_counts[3 * t + q];
  red[tid] = p;
  for (int q = 0; q < 3; ++q) counts[q][tid] = sums[q];
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (tid < s) {
      red[tid] += red[tid + s];
      for (int q = 0; q < 3; ++q) counts[q][tid] += counts[q][tid + s];
    }
    __syncthreads();
  }
  if (tid == 0) {
    totals->position_change = red[0];
    totals->evaluated = counts[0][0];
    totals->active = counts[1][0];
    totals->coincident = counts[2][0];
  }
}

}  // namespace

int64_t pairwise_forces_workspace_bytes(int64_t num_classes, int64_t dim) { return layout(num_classes, dim).bytes; }

ForcesTotals pairwise_forces(const double* mu, const double* radius, int64_t num_classes, int64_t dim, double nsigma,
                             double coef, double* dist, const double* drift, bool full, double* delta,
                             unsigned char* coincident, void* workspace, int device, void* stream_handle) {
  if (num_classes < 1 || dim < 1) throw std::invalid_argument("pairwise_forces: need num_classes >= 1 and dim >= 1");
  const int64_t C = num_classes, D = dim;
  const Layout l = layout(C, D);
  if (l.tiles > kMaxGridY) {
    throw std::invalid_argument("pairwise_forces: at most " + std::to_string(kMaxGridY * kTile) +
                                " classes, got " + std::to_string(C));
  }
  use_device(device);
  const cudaStream_t stream = as_stream(stream_handle);
  char* ws = static_cast<char*>(workspace);
  double* weight = reinterpret_cast<double*>(ws + l.weight);
  long long* tile_counts = reinterpret_cast<long long*>(ws + l.tile_counts);
  double* l1_partial = reinterpret_cast<double*>(ws + l.l1);
  Totals* totals = reinterpret_cast<Totals*>(ws + l.totals);

  check(cudaMemsetAsync(weight, 0, C * C * sizeof(double), stream), "cudaMemsetAsync(weights)");
  check(cudaMemsetAsync(coincident, 0, C * C, stream), "cudaMemsetAsync(coincident)");
  const dim3 block(kHalf, kHalf);
  const dim3 pair_grid(static_cast<unsigned>(l.tiles), static_cast<unsigned>(l.tiles));
  pair_weights_kernel<<<pair_grid, block, 0, stream>>>(mu, radius, C, D, nsigma, coef, dist, drift, full, weight,
                                                       coincident, tile_counts);
  check_launch("pair_weights_kernel");
  const dim3 delta_grid(static_cast<unsigned>(ceil_div(D, kDeltaCols)), static_cast<unsigned>(l.tiles));
  delta_kernel<<<delta_grid, block, 0, stream>>>(mu, weight, C, D, delta, l1_partial);
  check_launch("delta_kernel");
  finish_kernel<<<1, kThreads, 0, stream>>>(l1_partial, l.l1_blocks, tile_counts, l.tiles * l.tiles, totals);
  check_launch("finish_kernel");

  Totals host;
  check(cudaMemcpyAsync(&host, totals, sizeof(Totals), cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync(totals)");
  check(cudaStreamSynchronize(stream), "pairwise_forces kernels");
  return ForcesTotals{host.position_change, host.evaluated, host.active, host.coincident};
}

}  // namespace cuda
}  // namespace ped
