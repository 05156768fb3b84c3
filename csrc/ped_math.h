// Math shared by the CPU (C++/OpenMP) and CUDA kernels, so that both backends
// evaluate one pair of classes with the same expressions in the same order.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define PED_HD __host__ __device__ __forceinline__
#else
#define PED_HD inline
#endif

namespace ped {

// Relative slack on the pruning test of pairwise_forces: a pair is skipped
// only when its distance lower bound exceeds the overlap threshold by more
// than rounding could explain, so pruning never changes a force.
constexpr double kPruneSlack = 1e-12;

// Overlap threshold nsigma * (R_i + R_j): pairs closer than this repel.
PED_HD double overlap_threshold(double radius_i, double radius_j, double nsigma) {
  return nsigma * (radius_i + radius_j);
}

// Weight w_ij = a_ij / d_ij of one pair (docs/spec.md §1.4) with
// a_ij = min(coef * o_ij, o_ij), coef = 0.5 * dt^2 * k, o_ij the overlap.
// Coincident means (d_ij == 0) have no direction: they exert no force, and
// the caller reports them.
PED_HD double pair_weight(double dist, double threshold, double coef) {
  const double overlap = threshold - dist;
  if (!(overlap > 0.0) || !(dist > 0.0)) return 0.0;
  const double scaled = coef * overlap;
  return (scaled < overlap ? scaled : overlap) / dist;
}

// True when a pair whose distance was `dist0` before the means drifted by at
// most drift_i and drift_j (L2) is certain to be farther apart than
// `threshold` now, by the triangle inequality.
PED_HD bool pair_pruned(double dist0, double drift_i, double drift_j, double threshold) {
  return dist0 - drift_i - drift_j > threshold * (1.0 + kPruneSlack);
}

// Mean and population variance of n values from their shifted sums
// s1 = sum(x - x0), s2 = sum((x - x0)^2) (a shifted-data variance: the
// subtraction cancels only as badly as x0 is far from the mean).
// max(., 0) keeps rounding from producing a negative variance; NaN
// (non-finite input) passes through so the caller can detect it.
PED_HD void shifted_moments(double x0, double s1, double s2, int64_t n, double* mean, double* var) {
  const double inv_n = 1.0 / static_cast<double>(n);
  const double m1 = s1 * inv_n;
  *mean = x0 + m1;
  const double v = s2 * inv_n - m1 * m1;
  *var = v < 0.0 ? 0.0 : v;
}

}  // namespace ped
