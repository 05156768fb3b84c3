// own_class_probability: the tail of a linear classifier's posterior, fused
// into one pass over the N x C logits (SFDA's, ped_fast/scorers/sfda.py).
//
//   z = logits[i, :] + table[index[i], :]
//   p = softmax(z)                      (max-subtracted, as torch.softmax)
//   p = softmax(p)       when soften    (the published SFDA's quirk)
//   own[i] = p[index[i]]
//
// The unfused PyTorch form materialises table[index] (N x C), the sum, one
// or two softmaxes and a gather: about seven N x C passes for one here.
// Sums are taken in double for float and double input alike; rows are
// independent, so thread count cannot change a result.
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "ops.h"

namespace ped {
namespace {

// exp(x) for x <= 0 in plain arithmetic that the compiler vectorises (a call
// to std::exp keeps the loop scalar: 7 ns an element here, two thirds of the
// pass). Cody-Waite reduction x = k ln2 + r, |r| <= ln2/2, then exp(r) by its
// Taylor polynomial to r^13 (truncation below 1e-17 relative) and 2^k put in
// the exponent bits: within a few ulp of std::exp. Below -708 the result
// would be subnormal, so it is returned as 0. always_inline: left to itself
// GCC keeps one of the three call sites a call, and the pass takes twice as
// long.
__attribute__((always_inline)) inline double exp_nonpositive(double x) {
  constexpr double kLog2e = 1.4426950408889634074;
  constexpr double kLn2Hi = 6.93147180369123816490e-01;  // low bits zero: k * kLn2Hi is exact
  constexpr double kLn2Lo = 1.90821492927058770002e-10;
  constexpr double kShifter = 6755399441055744.0;  // 1.5 * 2^52: adding it rounds to an integer
  const double clamped = x > -708.0 ? x : -708.0;
  const double shifted = clamped * kLog2e + kShifter;
  const double k = shifted - kShifter;
  const double r = (clamped - k * kLn2Hi) - k * kLn2Lo;
  double p = 1.0 / 6227020800.0;
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  // The low bits of `shifted` hold k; shifting them into the exponent field
  // drops the shifter's own bits: (k + 1023) << 52 is 2^k.
  const double scale = __builtin_bit_cast(double, (__builtin_bit_cast(uint64_t, shifted) + 1023) << 52);
  return x < -708.0 ? 0.0 : p * scale;
}

template <typename T>
void own_class_probability_impl(const T* logits, const T* table, const int64_t* index, int64_t n, int64_t num_classes,
                                bool soften, T* own) {
  for (int64_t i = 0; i < n; ++i) {
    if (index[i] < 0 || index[i] >= num_classes) {
      throw std::invalid_argument("own_class_probability: index out of range");
    }
  }
#pragma omp parallel
  {
    std::vector<double> buffer(num_classes);
    double* e = buffer.data();
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const T* row = logits + i * num_classes;
      const T* shift = table + index[i] * num_classes;
      double top = -INFINITY;
#pragma omp simd reduction(max : top)
      for (int64_t c = 0; c < num_classes; ++c) {
        e[c] = static_cast<double>(row[c]) + static_cast<double>(shift[c]);
        top = e[c] > top ? e[c] : top;
      }
      double total = 0.0;
#pragma omp simd reduction(+ : total)
      for (int64_t c = 0; c < num_classes; ++c) {
        e[c] = exp_nonpositive(e[c] - top);
        total += e[c];
      }
      double result;
      if (soften) {
        // p = e / total is in [0, 1], so exp(p - 1) <= 1: the same ratio,
        // through the same non-positive exp.
        const double inverse = 1.0 / total;
        double softened = 0.0;
#pragma omp simd reduction(+ : softened)
        for (int64_t c = 0; c < num_classes; ++c) softened += exp_nonpositive(e[c] * inverse - 1.0);
        result = exp_nonpositive(e[index[i]] * inverse - 1.0) / softened;
      } else {
        result = e[index[i]] / total;
      }
      own[i] = static_cast<T>(result);
    }
  }
}

}  // namespace

void own_class_probability(const void* logits, const void* table, bool is_double, const int64_t* index, int64_t n,
                           int64_t num_classes, bool soften, void* own) {
  if (n < 0 || num_classes < 1) throw std::invalid_argument("own_class_probability: need num_classes >= 1");
  if (is_double) {
    own_class_probability_impl(static_cast<const double*>(logits), static_cast<const double*>(table), index, n,
                               num_classes, soften, static_cast<double*>(own));
  } else {
    own_class_probability_impl(static_cast<const float*>(logits), static_cast<const float*>(table), index, n,
                               num_classes, soften, static_cast<float*>(own));
  }
}

}  // namespace ped
