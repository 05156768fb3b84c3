// The three CUDA operations. Pointers are device memory on `device`; every
// kernel is queued on `stream` (a cudaStream_t passed as void*, so that the
// bindings need no CUDA header). X rows may be strided (row_stride elements
// apart) but each row is contiguous. Sizes are checked by the Python launcher
// (ped_fast/cuda.py); these functions throw std::invalid_argument only for
// what would corrupt memory or exceed a launch limit, and std::runtime_error
// (with cudaGetErrorString) when a CUDA call or launch fails.
//
// Scratch memory comes from the caller (the launcher allocates it with torch,
// so it is stream-ordered by torch's caching allocator): *_workspace_bytes
// says how much.
#pragma once

#include <cstdint>

#include "../cpu/ops.h"  // ped::ForcesResult, shared with the CPU backend

namespace ped {
namespace cuda {

// counts[C]: rows per class; order[N]: row numbers sorted by class, stably;
// starts[C]: exclusive prefix sum of counts (the class's first position in
// order); max_count = max(counts). mean[C*D], var[C*D]: population statistics
// accumulated in float64 for float32 and float64 X alike.
int64_t class_stats_workspace_bytes(int64_t n, int64_t dim, int64_t num_classes, int64_t max_count);
void class_stats(const void* x, bool is_double, int64_t n, int64_t dim, int64_t row_stride, const int64_t* order,
                 const int64_t* counts, const int64_t* starts, int64_t num_classes, int64_t max_count, double* mean,
                 double* var, void* workspace, int device, void* stream);

// mu[C*D], radius[C] in rescaled space; coef = 0.5 * dt^2 * k. dist[C*C]:
// upper triangle written when `full`, read (with drift[C]) to prune pairs
// otherwise. delta[C*D] is overwritten. Waits for the stream (the results go
// to the host).
int64_t pairwise_forces_workspace_bytes(int64_t num_classes, int64_t dim);
ForcesResult pairwise_forces(const double* mu, const double* radius, int64_t num_classes, int64_t dim, double nsigma,
                             double coef, double* dist, const double* drift, bool full, double* delta, void* workspace,
                             int device, void* stream);

// out[i] = x[i] + shift[index[i]]; `out` may be `x`. Waits for the stream to
// report an index outside [0, num_classes) as std::invalid_argument.
int64_t integrate_workspace_bytes();
void integrate(const void* x, int64_t x_stride, void* out, int64_t out_stride, bool is_double, const int64_t* index,
               const void* shift, int64_t n, int64_t dim, int64_t num_classes, void* workspace, int device,
               void* stream);

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

// After a <<<...>>> launch: configuration errors show up here.
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
