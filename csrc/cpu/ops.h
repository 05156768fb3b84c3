// The three CPU operations of PED, and one of SFDA's. Pointers are host
// memory; X rows may be strided (row_stride elements apart) but each row is
// contiguous. All sizes are checked by the Python callers (ped_fast/cpu.py,
// ped_fast/scorers/_input.py); these functions throw std::invalid_argument
// only for what would corrupt memory.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

namespace ped {

// counts[C], mean[C*D], var[C*D]: population statistics in the input space,
// accumulated in float64 for float32 and float64 X alike.
void class_stats(const void* x, bool is_double, int64_t n, int64_t dim, int64_t row_stride, const int64_t* index,
                 int64_t num_classes, int64_t* counts, double* mean, double* var);

struct ForcesResult {
  double position_change = 0.0;   // P = sum |delta| (L1 over C x D)
  int64_t evaluated_pairs = 0;    // pairs whose distance was measured
  int64_t active_pairs = 0;       // pairs with a non-zero weight (docs/spec.md §1.6)
  std::vector<std::pair<int64_t, int64_t>> coincident;  // i < j with mu_i == mu_j
};

// mu[C*D] and radius[C] in rescaled space; coef = 0.5 * dt^2 * k.
// dist[C*C]: upper triangle written when `full`, read (with drift[C]) to prune
// pairs otherwise. delta[C*D] is overwritten.
ForcesResult pairwise_forces(const double* mu, const double* radius, int64_t num_classes, int64_t dim, double nsigma,
                             double coef, double* dist, const double* drift, bool full, double* delta);

void integrate(const void* x, int64_t x_stride, void* out, int64_t out_stride, bool is_double, const int64_t* index,
               const void* shift, int64_t n, int64_t dim, int64_t num_classes);

// A scorer's kernel, not one of PED's: own[i] = softmax(logits[i] + table[index[i]])[index[i]],
// with a second softmax before the pick when `soften`. logits[N*C], table[C*C], own[N].
void own_class_probability(const void* logits, const void* table, bool is_double, const int64_t* index, int64_t n,
                           int64_t num_classes, bool soften, void* own);

}  // namespace ped
