// integrate: out[i, :] = x[i, :] + shift[index[i], :], one read and one write
// of X. `out` may be `x` (in place). Rows are independent, so the split over
// threads cannot change any result.
#include <stdexcept>

#include "ops.h"

namespace ped {
namespace {

template <typename T>
void integrate_impl(const T* x, int64_t x_stride, T* out, int64_t out_stride, const int64_t* index, const T* shift,
                    int64_t n, int64_t dim, int64_t num_classes) {
  for (int64_t i = 0; i < n; ++i) {
    if (index[i] < 0 || index[i] >= num_classes) throw std::invalid_argument("integrate: index out of range");
  }
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const T* src = x + i * x_stride;
    const T* sh = shift + index[i] * dim;
    T* dst = out + i * out_stride;
#pragma omp simd
    for (int64_t k = 0; k < dim; ++k) dst[k] = src[k] + sh[k];
  }
}

}  // namespace

void integrate(const void* x, int64_t x_stride, void* out, int64_t out_stride, bool is_double, const int64_t* index,
               const void* shift, int64_t n, int64_t dim, int64_t num_classes) {
  if (n < 0 || dim < 1 || x_stride < dim || out_stride < dim) {
    throw std::invalid_argument("integrate: need dim >= 1 and row strides >= dim");
  }
  if (is_double) {
    integrate_impl(static_cast<const double*>(x), x_stride, static_cast<double*>(out), out_stride, index,
                   static_cast<const double*>(shift), n, dim, num_classes);
  } else {
    integrate_impl(static_cast<const float*>(x), x_stride, static_cast<float*>(out), out_stride, index,
                   static_cast<const float*>(shift), n, dim, num_classes);
  }
}

}  // namespace ped
