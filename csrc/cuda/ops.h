// The three CUDA operations. Pointers are device memory on `device`; every
// kernel is queued on `stream` (a cudaStream_t passed as void*, so that the
// bindings need no CUDA header). X rows may be strided (row_stride elements
// apart) but each row is contiguous. Sizes are checked by the Python launcher
// (ped_fast/cuda.py); these functions throw std::invalid_argument only for
// what would corrupt memory or exceed a launch limit, and std::runtime_error
// (with cudaGetErrorString) when a CUDA call or launch fails.
//
// class_stats and integrate only queue work: they return without waiting for
// the GPU, and a launch error is reported by the launch that caused it. A
// fault while a kernel runs surfaces at the next synchronisation (the next
// pairwise_forces, or torch's); run with CUDA_LAUNCH_BLOCKING=1 to have it
// reported by the launch itself. Class indices are trusted: they come from
// ped_fast/_validate.labels_tensor, in [0, C) by construction, and checking
// them here would need a synchronisation to report.
//
// Scratch memory comes from the caller (the launcher allocates it with torch,
// so it is stream-ordered by torch's caching allocator): *_workspace_bytes
// says how much.
#pragma once

#include <cstdint>

namespace ped {
namespace cuda {

// The rows of X bucketed by class and cut into chunks (ped_fast/_common.py,
// ClassBuckets): order[N] row numbers sorted by class, stably; counts[C],
// starts[C] (first position of the class in order); class_chunks[C + 1]
// (class c owns chunks [class_chunks[c], class_chunks[c + 1])); per chunk
// (`chunks` of them) its class and its range [begin, end) in order, begin >=
// end for a surplus chunk.
struct ClassChunks {
  const int64_t* order;
  const int64_t* counts;
  const int64_t* starts;
  const int64_t* class_chunks;
  const int64_t* chunk_class;
  const int64_t* chunk_begin;
  const int64_t* chunk_end;
  int64_t num_classes;
  int64_t chunks;
};

// mean[C*D], var[C*D]: population statistics accumulated in float64 for
// float32 and float64 X alike.
int64_t class_stats_workspace_bytes(int64_t chunks, int64_t dim);
void class_stats(const void* x, bool is_double, int64_t n, int64_t dim, int64_t row_stride, const ClassChunks& chunks,
                 double* mean, double* var, void* workspace, int device, void* stream);

// What one pairwise_forces step reports (docs/spec.md §1.6).
struct ForcesTotals {
  double position_change;    // P = sum |delta| (L1 over C x D)
  int64_t evaluated_pairs;   // unordered pairs measured (the candidates on a pruned step)
  int64_t active_pairs;      // pairs with a non-zero weight
  int64_t coincident_pairs;  // pairs i < j with mu_i == mu_j, flagged in `coincident`
};

// mu[C*D], radius[C] in rescaled space; coef = 0.5 * dt^2 * k. dist[C*C]:
// upper triangle written when `full`, read (with drift[C]) to prune pairs
// otherwise. delta[C*D] is overwritten. coincident[C*C] is zeroed, then
// coincident[i*C + j] = 1 for every coincident pair i < j: the caller lists
// them on the device (only they, not the C x C flags, need reach the host).
// Waits for the stream (the totals go to the host).
int64_t pairwise_forces_workspace_bytes(int64_t num_classes, int64_t dim);
ForcesTotals pairwise_forces(const double* mu, const double* radius, int64_t num_classes, int64_t dim, double nsigma,
                             double coef, double* dist, const double* drift, bool full, double* delta,
                             unsigned char* coincident, void* workspace, int device, void* stream);

// out[i] = x[i] + shift[index[i]]; `out` may be `x`.
void integrate(const void* x, int64_t x_stride, void* out, int64_t out_stride, bool is_double, const int64_t* index,
               const void* shift, int64_t n, int64_t dim, int device, void* stream);

}  // namespace cuda
}  // namespace ped

// Helpers for the .cu files only.
#if defined(__CUDACC__)
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace ped {
namespace cuda {

inline void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string("ped_fast CUDA: ") + what + ": " + cudaGetErrorString(status));
  }
}

// Right after a <<<...>>> launch, without waiting for the kernel: a launch
// error (grid, resources, no kernel image for this GPU) is reported here, by
// the operation that caused it.
inline void check_launch(const char* kernel) { check(cudaGetLastError(), kernel); }

// Start of every operation: the caller's device, and clear any error left
// by an earlier failure so it is not blamed on this launch.
inline void use_device(int device) {
  check(cudaSetDevice(device), "cudaSetDevice");
  (void)cudaGetLastError();
}

inline cudaStream_t as_stream(void* stream) { return static_cast<cudaStream_t>(stream); }

__host__ __device__ constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Scratch regions carved out of the caller's workspace, 256-byte aligned.
constexpr int64_t align_up(int64_t bytes) { return ceil_div(bytes, 256) * 256; }

}  // namespace cuda
}  // namespace ped
#endif
