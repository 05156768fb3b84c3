// class_stats on the GPU: per-class counts, means and population variances of
// X (N x D) in one pass over X, deterministically.
//
// The launcher hands over the rows bucketed by class (a stable argsort of the
// labels, with per-class counts and starts). One block owns one (class, row
// chunk, column tile) item: its 32 columns are read by a warp per row (128
// contiguous bytes for float32), its 8 warps take every 8th row of the chunk,
// and the 8 partial sums are combined in a fixed order. Every output element
// is written by exactly one thread and there are no atomics, so the summation
// order depends only on the sizes and the labels: results are bit-identical
// run to run and on any GPU.
//
// Sums are taken in float64 relative to the class's first row (shifted data,
// as in the CPU kernel), so var = S2/n - (S1/n)^2 cancels only by about a
// standard deviation.
//
// Classes are split into row chunks only when there are too few (class,
// column tile) items to fill the GPU (few classes, e.g. the one-class
// reference set): the chunks' sums then go to the workspace and a second
// kernel adds them up in chunk order. Chunking depends on the sizes only,
// never on the device.
#include "ops.h"

#include "../ped_math.h"

namespace ped {
namespace cuda {
namespace {

constexpr int kCols = 32;       // columns per block (one warp wide)
constexpr int kRowGroups = 8;   // warps per block, each taking every 8th row
constexpr int64_t kTargetBlocks = 2048;  // enough items to fill an H100 twice over
constexpr int64_t kMinChunkRows = 64;
constexpr int kFinishThreads = 256;
constexpr int64_t kMaxGridY = 65535;

struct Plan {
  int64_t col_tiles;
  int64_t rows_per_chunk;  // rows of one class per block
  int64_t chunks;          // row chunks of the largest class (1: no chunking)
};

Plan plan(int64_t n, int64_t dim, int64_t num_classes, int64_t max_count) {
  Plan p;
  p.col_tiles = ceil_div(dim, kCols);
  p.rows_per_chunk = max_count > 0 ? max_count : 1;
  p.chunks = 1;
  if (num_classes * p.col_tiles < kTargetBlocks && max_count > kMinChunkRows) {
    const int64_t want_chunks = ceil_div(kTargetBlocks, p.col_tiles);
    const int64_t rows = ceil_div(n, want_chunks);
    p.rows_per_chunk = rows > kMinChunkRows ? rows : kMinChunkRows;
    p.chunks = ceil_div(max_count, p.rows_per_chunk);
  }
  return p;
}

template <typename T>
__global__ void __launch_bounds__(kCols* kRowGroups)
    class_stats_kernel(const T* __restrict__ x, int64_t dim, int64_t row_stride, const int64_t* __restrict__ order,
                       const int64_t* __restrict__ counts, const int64_t* __restrict__ starts, int64_t rows_per_chunk,
                       int64_t chunks, int64_t col_tiles, double* __restrict__ mean, double* __restrict__ var,
                       double* __restrict__ partial1, double* __restrict__ partial2) {
  const int64_t c = blockIdx.x / chunks;
  const int64_t chunk = blockIdx.x % chunks;
  const int64_t count = counts[c];
  const int64_t class_chunks = ceil_div(count, rows_per_chunk);
  if (chunk > 0 && chunk >= class_chunks) return;  // the whole block: this class has fewer chunks
  const int64_t first = starts[c];
  const int64_t begin = first + chunk * rows_per_chunk;
  const int64_t end = first + (count < (chunk + 1) * rows_per_chunk ? count : (chunk + 1) * rows_per_chunk);
  const T* x0_row = count > 0 ? x + order[first] * row_stride : x;

  __shared__ double s1[kRowGroups][kCols];
  __shared__ double s2[kRowGroups][kCols];
  for (int64_t tile = blockIdx.y; tile < col_tiles; tile += gridDim.y) {
    const int64_t col = tile * kCols + threadIdx.x;
    double a1 = 0.0, a2 = 0.0;
    if (col < dim && count > 0) {
      const double x0 = static_cast<double>(x0_row[col]);
#pragma unroll 4
      for (int64_t r = begin + threadIdx.y; r < end; r += kRowGroups) {
        const double t = static_cast<double>(x[order[r] * row_stride + col]) - x0;
        a1 += t;
        a2 += t * t;
      }
    }
    s1[threadIdx.y][threadIdx.x] = a1;
    s2[threadIdx.y][threadIdx.x] = a2;
    __syncthreads();
    if (threadIdx.y == 0 && col < dim) {
      for (int g = 1; g < kRowGroups; ++g) {
        a1 += s1[g][threadIdx.x];
        a2 += s2[g][threadIdx.x];
      }
      if (count == 0) {
        mean[c * dim + col] = 0.0;
        var[c * dim + col] = 0.0;
      } else if (class_chunks == 1) {
        shifted_moments(static_cast<double>(x0_row[col]), a1, a2, count, &mean[c * dim + col], &var[c * dim + col]);
      } else {
        partial1[blockIdx.x * dim + col] = a1;
        partial2[blockIdx.x * dim + col] = a2;
      }
    }
    __syncthreads();  // s1/s2 are reused by the next tile
  }
}

// Adds the chunk sums of the classes that were split, in chunk order.
template <typename T>
__global__ void __launch_bounds__(kFinishThreads)
    class_stats_finish_kernel(const T* __restrict__ x, int64_t dim, int64_t row_stride,
                              const int64_t* __restrict__ order, const int64_t* __restrict__ counts,
                              const int64_t* __restrict__ starts, int64_t rows_per_chunk, int64_t chunks,
                              double* __restrict__ mean, double* __restrict__ var,
                              const double* __restrict__ partial1, const double* __restrict__ partial2) {
  const int64_t c = blockIdx.x;
  const int64_t count = counts[c];
  const int64_t class_chunks = ceil_div(count, rows_per_chunk);
  if (class_chunks < 2) return;
  const T* x0_row = x + order[starts[c]] * row_stride;
  for (int64_t col = static_cast<int64_t>(blockIdx.y) * kFinishThreads + threadIdx.x; col < dim;
       col += static_cast<int64_t>(gridDim.y) * kFinishThreads) {
    double a1 = 0.0, a2 = 0.0;
    for (int64_t k = 0; k < class_chunks; ++k) {
      a1 += partial1[(c * chunks + k) * dim + col];
      a2 += partial2[(c * chunks + k) * dim + col];
    }
    shifted_moments(static_cast<double>(x0_row[col]), a1, a2, count, &mean[c * dim + col], &var[c * dim + col]);
  }
}

template <typename T>
void launch(const T* x, int64_t n, int64_t dim, int64_t row_stride, const int64_t* order, const int64_t* counts,
            const int64_t* starts, int64_t num_classes, int64_t max_count, double* mean, double* var, void* workspace,
            cudaStream_t stream) {
  const Plan p = plan(n, dim, num_classes, max_count);
  if (num_classes * p.chunks > 0x7fffffff) {
    throw std::invalid_argument("class_stats: too many classes for one launch (" + std::to_string(num_classes) + ")");
  }
  double* partial1 = nullptr;
  double* partial2 = nullptr;
  if (p.chunks > 1) {
    partial1 = static_cast<double*>(workspace);
    partial2 = partial1 + num_classes * p.chunks * dim;
  }
  const dim3 grid(static_cast<unsigned>(num_classes * p.chunks),
                  static_cast<unsigned>(p.col_tiles < kMaxGridY ? p.col_tiles : kMaxGridY));
  const dim3 block(kCols, kRowGroups);
  class_stats_kernel<T><<<grid, block, 0, stream>>>(x, dim, row_stride, order, counts, starts, p.rows_per_chunk,
                                                    p.chunks, p.col_tiles, mean, var, partial1, partial2);
  check_launch("class_stats_kernel");
  if (p.chunks > 1) {
    const int64_t tiles = ceil_div(dim, kFinishThreads);
    const dim3 finish_grid(static_cast<unsigned>(num_classes),
                           static_cast<unsigned>(tiles < kMaxGridY ? tiles : kMaxGridY));
    class_stats_finish_kernel<T><<<finish_grid, kFinishThreads, 0, stream>>>(
        x, dim, row_stride, order, counts, starts, p.rows_per_chunk, p.chunks, mean, var, partial1, partial2);
    check_launch("class_stats_finish_kernel");
  }
}

}  // namespace

int64_t class_stats_workspace_bytes(int64_t n, int64_t dim, int64_t num_classes, int64_t max_count) {
  const Plan p = plan(n, dim, num_classes, max_count);
  return p.chunks > 1 ? 2 * num_classes * p.chunks * dim * static_cast<int64_t>(sizeof(double)) : 0;
}

void class_stats(const void* x, bool is_double, int64_t n, int64_t dim, int64_t row_stride, const int64_t* order,
                 const int64_t* counts, const int64_t* starts, int64_t num_classes, int64_t max_count, double* mean,
                 double* var, void* workspace, int device, void* stream) {
  if (n < 1 || dim < 1 || num_classes < 1 || row_stride < dim || max_count < 0 || max_count > n) {
    throw std::invalid_argument(
        "class_stats: need n >= 1, dim >= 1, num_classes >= 1, row_stride >= dim and 0 <= max_count <= n");
  }
  use_device(device);
  if (is_double) {
    launch(static_cast<const double*>(x), n, dim, row_stride, order, counts, starts, num_classes, max_count, mean, var,
           workspace, as_stream(stream));
  } else {
    launch(static_cast<const float*>(x), n, dim, row_stride, order, counts, starts, num_classes, max_count, mean, var,
           workspace, as_stream(stream));
  }
}

}  // namespace cuda
}  // namespace ped
