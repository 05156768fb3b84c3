// class_stats: per-class counts, means and population variances of X (N x D)
// in one pass over X.
//
// Rows are bucketed by class first (a stable counting sort of the labels), and
// the work is split into (class, column block) items, so that each item's
// accumulators stay in L1 while its rows stream past, every output element is
// written by exactly one thread (no atomics, no per-thread C x D copies), and
// the summation order is fixed: results are identical run to run and for any
// number of threads.
//
// Sums are taken relative to the first row of the class (a shifted-data
// variance): var = S2/n - (S1/n)^2 then cancels only as badly as that row is
// far from the class mean, i.e. by about one standard deviation, instead of by
// the mean's distance from zero.
#include <omp.h>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "../ped_math.h"
#include "ops.h"

namespace ped {
namespace {

// Columns per work item: enough items for every thread, at most 1024 columns
// (8 KiB of float64 accumulators per sum) so that both sums fit in L1.
int64_t column_block(int64_t num_classes, int64_t dim) {
  const int64_t threads = omp_get_max_threads();
  const int64_t want_blocks = std::max<int64_t>(1, (4 * threads + num_classes - 1) / num_classes);
  int64_t block = (dim + want_blocks - 1) / want_blocks;
  block = std::max<int64_t>(block, 64);
  return std::min<int64_t>({block, 1024, dim});
}

// Rows of a class sit at unrelated addresses, which the hardware prefetcher
// cannot guess: ask for a row segment before it is needed.
template <typename T>
inline void prefetch_row(const T* row, int64_t width) {
  constexpr int64_t kLine = 64 / sizeof(T);
  for (int64_t k = 0; k < width; k += kLine) __builtin_prefetch(row + k);
}

template <typename T>
void class_stats_impl(const T* x, int64_t n, int64_t dim, int64_t row_stride, const int64_t* index,
                      int64_t num_classes, int64_t* counts, double* mean, double* var) {
  std::vector<int64_t> start(num_classes + 1, 0);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t c = index[i];
    if (c < 0 || c >= num_classes) {
      throw std::invalid_argument("class_stats: index[" + std::to_string(i) + "] = " + std::to_string(c) +
                                  " is outside [0, " + std::to_string(num_classes) + ")");
    }
    ++start[c + 1];
  }
  for (int64_t c = 0; c < num_classes; ++c) {
    counts[c] = start[c + 1];
    start[c + 1] += start[c];
  }
  std::vector<int64_t> order(n);
  {
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t i = 0; i < n; ++i) order[fill[index[i]]++] = i;
  }

  const int64_t block = column_block(num_classes, dim);
  const int64_t blocks = (dim + block - 1) / block;
  const int64_t items = num_classes * blocks;

#pragma omp parallel
  {
    std::vector<double> s1(block), s2(block);
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t c = item / blocks;
      const int64_t col = (item % blocks) * block;
      const int64_t width = std::min(block, dim - col);
      double* mean_out = mean + c * dim + col;
      double* var_out = var + c * dim + col;
      const int64_t first = start[c], last = start[c + 1];
      if (first == last) {
        std::fill(mean_out, mean_out + width, 0.0);
        std::fill(var_out, var_out + width, 0.0);
        continue;
      }
      const T* x0 = x + order[first] * row_stride + col;
      std::fill(s1.begin(), s1.begin() + width, 0.0);
      std::fill(s2.begin(), s2.begin() + width, 0.0);
      double* a1 = s1.data();
      double* a2 = s2.data();
      // Two rows per pass: twice the loads in flight for rows that the
      // prefetcher cannot predict, and half the accumulator traffic.
      int64_t r = first + 1;
      for (; r + 1 < last; r += 2) {
        const T* xr = x + order[r] * row_stride + col;
        const T* xq = x + order[r + 1] * row_stride + col;
        if (r + 3 < last) prefetch_row(x + order[r + 3] * row_stride + col, width);
        if (r + 2 < last) prefetch_row(x + order[r + 2] * row_stride + col, width);
#pragma omp simd
        for (int64_t k = 0; k < width; ++k) {
          const double base = static_cast<double>(x0[k]);
          const double t = static_cast<double>(xr[k]) - base;
          const double u = static_cast<double>(xq[k]) - base;
          a1[k] += t + u;
          a2[k] += t * t + u * u;
        }
      }
      if (r < last) {
        const T* xr = x + order[r] * row_stride + col;
#pragma omp simd
        for (int64_t k = 0; k < width; ++k) {
          const double t = static_cast<double>(xr[k]) - static_cast<double>(x0[k]);
          a1[k] += t;
          a2[k] += t * t;
        }
      }
      for (int64_t k = 0; k < width; ++k) {
        shifted_moments(static_cast<double>(x0[k]), a1[k], a2[k], last - first, mean_out + k, var_out + k);
      }
    }
  }
}

}  // namespace

void class_stats(const void* x, bool is_double, int64_t n, int64_t dim, int64_t row_stride,
                 const int64_t* index, int64_t num_classes, int64_t* counts, double* mean, double* var) {
  if (n < 1 || dim < 1 || num_classes < 1 || row_stride < dim) {
    throw std::invalid_argument("class_stats: need n >= 1, dim >= 1, num_classes >= 1 and row_stride >= dim");
  }
  if (is_double) {
    class_stats_impl(static_cast<const double*>(x), n, dim, row_stride, index, num_classes, counts, mean, var);
  } else {
    class_stats_impl(static_cast<const float*>(x), n, dim, row_stride, index, num_classes, counts, mean, var);
  }
}

}  // namespace ped
