// pairwise_forces: one PED step on the C x D class means (docs/spec.md
// §1.4): overlaps and weights of all class pairs, and the
// displacement delta_i = sum_j w_ij (mu_i - mu_j), without any C x C x D
// array.
//
// Distances come from direct differences (no Gram-matrix cancellation). On a
// full evaluation every pair is measured, 4 rows of i against each row of j so
// that each loaded row of j serves four pairs. Later steps reuse those
// distances: the means move by at most `drift` (the summed L2 norms of their
// applied displacements), so by the triangle inequality a pair whose old
// distance minus both drifts still exceeds its overlap threshold cannot
// overlap now and is skipped. Only the remaining candidates are measured.
// A skipped pair's weight would be exactly zero, so the result is the
// all-pairs result up to rounding: a candidate's distance is summed by
// squared_distance, where an all-pairs step sums it in the four-row loop of
// all_distances (its own vectorised order).
//
// Displacements are accumulated per class over its overlapping partners in
// ascending order, so the result does not depend on the number of threads.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <utility>
#include <vector>

#include "../ped_math.h"
#include "ops.h"

namespace ped {
namespace {

inline double squared_distance(const double* a, const double* b, int64_t dim) {
  double acc = 0.0;
#pragma omp simd reduction(+ : acc)
  for (int64_t k = 0; k < dim; ++k) {
    const double t = a[k] - b[k];
    acc += t * t;
  }
  return acc;
}

// Upper triangle of the C x C distance matrix.
void all_distances(const double* mu, int64_t num_classes, int64_t dim, double* dist) {
  const int64_t groups = (num_classes + 3) / 4;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t i0 = 4 * g;
    const int64_t rows = std::min<int64_t>(4, num_classes - i0);
    for (int64_t i = i0; i < i0 + rows; ++i) {
      for (int64_t j = i + 1; j < i0 + rows; ++j) dist[i * num_classes + j] = std::sqrt(squared_distance(mu + i * dim, mu + j * dim, dim));
    }
    if (rows < 4) {
      for (int64_t i = i0; i < i0 + rows; ++i) {
        for (int64_t j = i0 + rows; j < num_classes; ++j) dist[i * num_classes + j] = std::sqrt(squared_distance(mu + i * dim, mu + j * dim, dim));
      }
      continue;
    }
    const double* m0 = mu + i0 * dim;
    const double* m1 = m0 + dim;
    const double* m2 = m1 + dim;
    const double* m3 = m2 + dim;
    for (int64_t j = i0 + 4; j < num_classes; ++j) {
      const double* mj = mu + j * dim;
      double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
      for (int64_t k = 0; k < dim; ++k) {
        const double v = mj[k];
        const double t0 = m0[k] - v, t1 = m1[k] - v, t2 = m2[k] - v, t3 = m3[k] - v;
        a0 += t0 * t0;
        a1 += t1 * t1;
        a2 += t2 * t2;
        a3 += t3 * t3;
      }
      dist[(i0 + 0) * num_classes + j] = std::sqrt(a0);
      dist[(i0 + 1) * num_classes + j] = std::sqrt(a1);
      dist[(i0 + 2) * num_classes + j] = std::sqrt(a2);
      dist[(i0 + 3) * num_classes + j] = std::sqrt(a3);
    }
  }
}

struct Pair {
  int64_t i, j;
  double dist;
};

}  // namespace

ForcesResult pairwise_forces(const double* mu, const double* radius, int64_t num_classes, int64_t dim,
                             double nsigma, double coef, double* dist, const double* drift, bool full,
                             double* delta) {
  if (num_classes < 1 || dim < 1) throw std::invalid_argument("pairwise_forces: need num_classes >= 1 and dim >= 1");
  const int64_t C = num_classes;
  ForcesResult out;
  std::vector<Pair> candidates;
  if (full) {
    all_distances(mu, C, dim, dist);
    out.evaluated_pairs = C * (C - 1) / 2;
    // Keep only the pairs that can matter below: overlapping or coincident.
    for (int64_t i = 0; i < C; ++i)
      for (int64_t j = i + 1; j < C; ++j) {
        const double d = dist[i * C + j];
        if (d == 0.0 || d < overlap_threshold(radius[i], radius[j], nsigma)) candidates.push_back({i, j, d});
      }
  } else {
    for (int64_t i = 0; i < C; ++i)
      for (int64_t j = i + 1; j < C; ++j)
        if (!pair_pruned(dist[i * C + j], drift[i], drift[j], overlap_threshold(radius[i], radius[j], nsigma)))
          candidates.push_back({i, j, 0.0});
    const int64_t m = static_cast<int64_t>(candidates.size());
#pragma omp parallel for schedule(dynamic, 16)
    for (int64_t p = 0; p < m; ++p) {
      Pair& q = candidates[p];
      q.dist = std::sqrt(squared_distance(mu + q.i * dim, mu + q.j * dim, dim));
    }
    out.evaluated_pairs = m;
  }
  // Symmetric weights as adjacency lists; filled in (i, j) order, so every
  // list is sorted by partner.
  std::vector<int64_t> degree(C + 1, 0);
  std::vector<std::pair<int64_t, double>> active;  // (pair index, weight)
  for (int64_t p = 0; p < static_cast<int64_t>(candidates.size()); ++p) {
    const Pair& q = candidates[p];
    if (q.dist == 0.0) out.coincident.emplace_back(q.i, q.j);
    const double w = pair_weight(q.dist, overlap_threshold(radius[q.i], radius[q.j], nsigma), coef);
    if (w != 0.0) {
      active.emplace_back(p, w);
      ++degree[q.i + 1];
      ++degree[q.j + 1];
    }
  }
  out.active_pairs = static_cast<int64_t>(active.size());
  for (int64_t c = 0; c < C; ++c) degree[c + 1] += degree[c];
  std::vector<int64_t> partner(degree[C]);
  std::vector<double> weight(degree[C]);
  {
    std::vector<int64_t> fill(degree.begin(), degree.end() - 1);
    // Pairs arrive sorted by (i, j). Filling every row first with its lower
    // partners, then with its upper ones, leaves each list sorted.
    for (const auto& [p, w] : active) {
      const Pair& q = candidates[p];
      partner[fill[q.j]] = q.i;
      weight[fill[q.j]++] = w;
    }
    for (const auto& [p, w] : active) {
      const Pair& q = candidates[p];
      partner[fill[q.i]] = q.j;
      weight[fill[q.i]++] = w;
    }
  }

  std::vector<double> row_l1(C, 0.0);
#pragma omp parallel for schedule(dynamic, 4)
  for (int64_t i = 0; i < C; ++i) {
    double* d_i = delta + i * dim;
    std::fill(d_i, d_i + dim, 0.0);
    const double* m_i = mu + i * dim;
    for (int64_t e = degree[i]; e < degree[i + 1]; ++e) {
      const double w = weight[e];
      const double* m_j = mu + partner[e] * dim;
#pragma omp simd
      for (int64_t k = 0; k < dim; ++k) d_i[k] += w * (m_i[k] - m_j[k]);
    }
    double l1 = 0.0;
#pragma omp simd reduction(+ : l1)
    for (int64_t k = 0; k < dim; ++k) l1 += std::fabs(d_i[k]);
    row_l1[i] = l1;
  }
  out.position_change = 0.0;
  for (int64_t i = 0; i < C; ++i) out.position_change += row_l1[i];
  return out;
}

}  // namespace ped
