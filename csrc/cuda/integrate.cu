// integrate on the GPU: out[i, :] = x[i, :] + shift[index[i], :], one read and
// one write of X; `out` may be `x` (in place: each element is read and then
// written by the same thread). Pure elementwise, so trivially deterministic.
//
// A block is a few rows wide and a warp-multiple of vectors across: 16-byte
// loads and stores (float4 / double2) when every row start is 16-byte
// aligned, scalar otherwise. Queued on the caller's stream without waiting:
// the class indices are in range by construction (ops.h).
#include "ops.h"

namespace ped {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535;

template <typename T, int V>
struct alignas(sizeof(T) * V) Vec {
  T v[V];
};

template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
    integrate_kernel(const T* x, int64_t x_stride, T* out, int64_t out_stride, const int64_t* __restrict__ index,
                     const T* __restrict__ shift, int64_t n, int64_t dim) {
  using Vector = Vec<T, V>;
  const int64_t vectors = dim / V;  // per row
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; row < n;
       row += static_cast<int64_t>(gridDim.x) * blockDim.y) {
    const int64_t c = index[row];
    const Vector* src = reinterpret_cast<const Vector*>(x + row * x_stride);
    const Vector* sh = reinterpret_cast<const Vector*>(shift + c * dim);
    Vector* dst = reinterpret_cast<Vector*>(out + row * out_stride);
    for (int64_t k = threadIdx.x; k < vectors; k += blockDim.x) {
      Vector a = src[k];
      const Vector b = sh[k];
#pragma unroll
      for (int q = 0; q < V; ++q) a.v[q] += b.v[q];
      dst[k] = a;
    }
  }
}

template <typename T, int V>
void launch_vec(const T* x, int64_t x_stride, T* out, int64_t out_stride, const int64_t* index, const T* shift,
                int64_t n, int64_t dim, cudaStream_t stream) {
  // Threads across a row: the vectors of a row rounded up to a warp, at most
  // the whole block; the rest of the block takes further rows.
  const int64_t vectors = dim / V;
  int64_t across = ceil_div(vectors, 32) * 32;
  if (across > kThreads) across = kThreads;
  const dim3 block(static_cast<unsigned>(across), static_cast<unsigned>(kThreads / across));
  int64_t blocks = ceil_div(n, block.y);
  if (blocks > kMaxBlocks) blocks = kMaxBlocks;
  integrate_kernel<T, V><<<static_cast<unsigned>(blocks), block, 0, stream>>>(x, x_stride, out, out_stride, index,
                                                                              shift, n, dim);
  check_launch("integrate_kernel");
}

bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

template <typename T>
void launch(const T* x, int64_t x_stride, T* out, int64_t out_stride, const int64_t* index, const T* shift, int64_t n,
            int64_t dim, cudaStream_t stream) {
  constexpr int V = 16 / sizeof(T);
  const bool vectorizable = dim % V == 0 && x_stride % V == 0 && out_stride % V == 0 && aligned16(x) &&
                            aligned16(out) && aligned16(shift);
  if (vectorizable) {
    launch_vec<T, V>(x, x_stride, out, out_stride, index, shift, n, dim, stream);
  } else {
    launch_vec<T, 1>(x, x_stride, out, out_stride, index, shift, n, dim, stream);
  }
}

}  // namespace

void integrate(const void* x, int64_t x_stride, void* out, int64_t out_stride, bool is_double, const int64_t* index,
               const void* shift, int64_t n, int64_t dim, int device, void* stream_handle) {
  if (n < 0 || dim < 1 || x_stride < dim || out_stride < dim) {
    throw std::invalid_argument("integrate: need dim >= 1 and row strides >= dim");
  }
  if (n == 0) return;
  use_device(device);
  const cudaStream_t stream = as_stream(stream_handle);
  if (is_double) {
    launch(static_cast<const double*>(x), x_stride, static_cast<double*>(out), out_stride, index,
           static_cast<const double*>(shift), n, dim, stream);
  } else {
    launch(static_cast<const float*>(x), x_stride, static_cast<float*>(out), out_stride, index,
           static_cast<const float*>(shift), n, dim, stream);
  }
}

}  // namespace cuda
}  // namespace ped
