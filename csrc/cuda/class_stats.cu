// class_stats on the GPU: per-class counts, means and population variances of
// X (N x D) in one pass over X, deterministically.
//
// The launcher (ped_fast/cuda.py, with _common.bucket_rows) hands over the
// rows bucketed by class (a stable argsort of the labels, per-class counts
// and starts) and cut into chunks of at most rows_per_chunk consecutive rows
// of one class, so that a large class is summed by many blocks whatever the
// number of classes (one dominant class among a thousand, or the one-class
// reference set). The chunk table has a size known from N and C alone and is
// built on the device: nothing is read back to the host.
//
// 1. class_stats_kernel: one block per (chunk, column tile): its 32 columns
//    are read by a warp per row (128 contiguous bytes for float32), its 8
//    warps take every 8th row of the chunk, and the 8 partial sums are
//    combined in a fixed order. A class of one chunk writes its mean and
//    variance directly; the chunks of a larger class write their sums to the
//    workspace.
// 2. class_stats_finish_kernel: one block per (class, column range) adds the
//    chunk sums of a split class in chunk order, and writes zeros for an
//    empty class.
// Every output element is written by exactly one thread and there are no
// atomics, so the summation order depends only on the sizes and the labels:
// results are bit-identical run to run and on any GPU.
//
// Sums are taken in float64 relative to the class's first row (shifted data,
// as in the CPU kernel), so var = S2/n - (S1/n)^2 cancels only by about a
// standard deviation.
#include "ops.h"

#include "../ped_math.h"

namespace ped {
namespace cuda {
namespace {

constexpr int kCols = 32;      // columns per block (one warp wide): ped_fast/cuda.py, STATS_COLS
constexpr int kRowGroups = 8;  // warps per block, each taking every 8th row
constexpr int kFinishThreads = 256;
constexpr int64_t kMaxGridY = 65535;

template <typename T>
__global__ void __launch_bounds__(kCols* kRowGroups)
    class_stats_kernel(const T* __restrict__ x, int64_t dim, int64_t row_stride, const int64_t* __restrict__ order,
                       const int64_t* __restrict__ counts, const int64_t* __restrict__ starts,
                       const int64_t* __restrict__ class_chunks, const int64_t* __restrict__ chunk_class,
                       const int64_t* __restrict__ chunk_begin, const int64_t* __restrict__ chunk_end,
                       int64_t col_tiles, double* __restrict__ mean, double* __restrict__ var,
                       double* __restrict__ partial1, double* __restrict__ partial2) {
  const int64_t chunk = blockIdx.x;
  const int64_t begin = chunk_begin[chunk], end = chunk_end[chunk];
  if (begin >= end) return;  // the whole block: a surplus chunk of the fixed-size grid
  const int64_t c = chunk_class[chunk];
  const int64_t count = counts[c];
  const bool whole_class = class_chunks[c + 1] - class_chunks[c] == 1;
  const T* x0_row = x + order[starts[c]] * row_stride;

  __shared__ double s1[kRowGroups][kCols];
  __shared__ double s2[kRowGroups][kCols];
  for (int64_t tile = blockIdx.y; tile < col_tiles; tile += gridDim.y) {
    const int64_t col = tile * kCols + threadIdx.x;
    double a1 = 0.0, a2 = 0.0;
    if (col < dim) {
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
      if (whole_class) {
        shifted_moments(static_cast<double>(x0_row[col]), a1, a2, count, &mean[c * dim + col], &var[c * dim + col]);
      } else {
        partial1[chunk * dim + col] = a1;
        partial2[chunk * dim + col] = a2;
      }
    }
    __syncthreads();  // s1/s2 are reused by the next tile
  }
}

// Adds the chunk sums of every split class, in chunk order; zeros for an
// empty class (no chunk wrote it).
template <typename T>
__global__ void __launch_bounds__(kFinishThreads)
    class_stats_finish_kernel(const T* __restrict__ x, int64_t dim, int64_t row_stride,
                              const int64_t* __restrict__ order, const int64_t* __restrict__ counts,
                              const int64_t* __restrict__ starts, const int64_t* __restrict__ class_chunks,
                              double* __restrict__ mean, double* __restrict__ var,
                              const double* __restrict__ partial1, const double* __restrict__ partial2) {
  const int64_t c = blockIdx.x;
  const int64_t first = class_chunks[c], last = class_chunks[c + 1];
  if (last - first == 1) return;  // written by class_stats_kernel
  const int64_t count = counts[c];
  for (int64_t col = static_cast<int64_t>(blockIdx.y) * kFinishThreads + threadIdx.x; col < dim;
       col += static_cast<int64_t>(gridDim.y) * kFinishThreads) {
    if (count == 0) {
      mean[c * dim + col] = 0.0;
      var[c * dim + col] = 0.0;
      continue;
    }
    double a1 = 0.0, a2 = 0.0;
    for (int64_t k = first; k < last; ++k) {
      a1 += partial1[k * dim + col];
      a2 += partial2[k * dim + col];
    }
    const double x0 = static_cast<double>(x[order[starts[c]] * row_stride + col]);
    shifted_moments(x0, a1, a2, count, &mean[c * dim + col], &var[c * dim + col]);
  }
}

template <typename T>
void launch(const T* x, int64_t dim, int64_t row_stride, const ClassChunks& b, double* mean, double* var,
            void* workspace, cudaStream_t stream) {
  double* partial1 = static_cast<double*>(workspace);
  double* partial2 = partial1 + b.chunks * dim;
  const int64_t col_tiles = ceil_div(dim, kCols);
  const dim3 grid(static_cast<unsigned>(b.chunks), static_cast<unsigned>(col_tiles < kMaxGridY ? col_tiles : kMaxGridY));
  const dim3 block(kCols, kRowGroups);
  class_stats_kernel<T><<<grid, block, 0, stream>>>(x, dim, row_stride, b.order, b.counts, b.starts, b.class_chunks,
                                                    b.chunk_class, b.chunk_begin, b.chunk_end, col_tiles, mean, var,
                                                    partial1, partial2);
  check_launch("class_stats_kernel");
  const int64_t finish_tiles = ceil_div(dim, kFinishThreads);
  const dim3 finish_grid(static_cast<unsigned>(b.num_classes),
                         static_cast<unsigned>(finish_tiles < kMaxGridY ? finish_tiles : kMaxGridY));
  class_stats_finish_kernel<T><<<finish_grid, kFinishThreads, 0, stream>>>(
      x, dim, row_stride, b.order, b.counts, b.starts, b.class_chunks, mean, var, partial1, partial2);
  check_launch("class_stats_finish_kernel");
}

}  // namespace

int64_t class_stats_workspace_bytes(int64_t chunks, int64_t dim) {
  return 2 * chunks * dim * static_cast<int64_t>(sizeof(double));
}

void class_stats(const void* x, bool is_double, int64_t n, int64_t dim, int64_t row_stride, const ClassChunks& chunks,
                 double* mean, double* var, void* workspace, int device, void* stream) {
  if (n < 1 || dim < 1 || row_stride < dim || chunks.num_classes < 1 || chunks.chunks < chunks.num_classes) {
    throw std::invalid_argument("class_stats: need n >= 1, dim >= 1, row_stride >= dim, num_classes >= 1 and "
                                "chunks >= num_classes");
  }
  if (chunks.chunks > 0x7fffffff || chunks.num_classes > 0x7fffffff) {
    throw std::invalid_argument("class_stats: too many chunks for one launch (" + std::to_string(chunks.chunks) + ")");
  }
  use_device(device);
  if (is_double) {
    launch(static_cast<const double*>(x), dim, row_stride, chunks, mean, var, workspace, as_stream(stream));
  } else {
    launch(static_cast<const float*>(x), dim, row_stride, chunks, mean, var, workspace, as_stream(stream));
  }
}

}  // namespace cuda
}  // namespace ped
