// The contrastive family: the per-tile math of ASCL's supervised contrastive loss L_SCL and of
// ADR's pairwise compactness (METHODS.md section 2, seed 003 ch. 3; the oracles are in
// fastadv/reference/contrastive.py), shared by the CPU and CUDA kernels.
//
// Neither op materialises an N × N matrix. The glue (csrc/contrastive_glue.h) walks the
// similarity matrix in tiles of at most kContrastiveTile × kContrastiveTile: it computes a tile
// with a matrix product (cosine) or a direct distance (l1, l2), and the kernels below fold each
// tile row into per-anchor statistics (forward: an online log-sum-exp, flash-attention's habit)
// or turn it into the tile of dL/ds (backward, recomputing the tile from the saved per-anchor
// log-sum-exp), which the glue multiplies back onto the representations.
//
// A tile row is processed by `Lanes` cooperating threads, as in the logits family: lane
// `lane.index` takes columns index, index + Lanes, ...; `lane.sum` / `lane.max` combine over
// the row's lanes (the CPU: one lane, fastadv::SingleLane; CUDA: a warp, cuda::WarpLane).
#pragma once

#include "fastadv/common.h"

namespace fastadv {

// Codes of the schemas' int arguments (fastadv/ops/contrastive.py names them).
enum class ContrastiveStrategy : int { Global = 0, HardLS = 1, SoftLS = 2, LeakedLS = 3 };
enum class ContrastiveSimilarity : int { Cosine = 0, L1 = 1, L2 = 2 };

// torch.nn.functional.normalize's guard: û = u / max(‖u‖₂, eps).
constexpr double kNormalizeEps = 1e-12;
// Rows and columns of a similarity tile: 4 MiB of float32, whatever N is.
constexpr int64_t kContrastiveTile = 1024;

// One tile of the similarity matrix, rows [row0, row0 + rows) × columns [col0, col0 + cols) of
// the N × N matrix, row-major with row stride `ld`, in the accumulation type T (float or double).
struct ContrastiveTile {
  const void* similarity;
  void* gradient;  // the backward's [rows, cols] output, same layout
  int64_t ld;
  int64_t row0;
  int64_t col0;
  int64_t rows;
  int64_t cols;
  int64_t n;  // N
  const int32_t* labels;  // the indices as int32 (the glue converts them): 16 lanes of a vector, as the floats
};

struct SupconTileParams {
  ContrastiveTile tile;
  const int32_t* preds;
  const int32_t* pair;
  // Forward: [4, N] running statistics of every anchor: the maximum and the sum of exp(t − max)
  // over its denominator set, the sum of t over its positives, the number of positives.
  void* stats;
  // Backward, per anchor: the log-sum-exp the forward returned, g_i/τ (g_i the incoming gradient
  // of its loss, the reduction's 1/N applied; 0 for an anchor without positives) and 1/|P_i|.
  const void* lse;
  const void* coefficient;
  const void* inv_positives;
  double tau;
  ContrastiveStrategy strategy;
  ContrastiveSimilarity sim;
};

struct CompactnessTileParams {
  ContrastiveTile tile;  // similarity = −‖f_i − f_j‖_p
  void* row_sums;        // forward: [N], Σ_j w_ij ‖f_i − f_j‖_p accumulated over the tiles
  double other_weight;   // w_ij for different labels, (a − 1)/a
  double scale;          // what the tile's terms are multiplied by (2 for a tile that stands for its transpose too)
  ContrastiveSimilarity sim;
};

// The tile s_ab = −‖u_a − u_b‖_p (l1 or l2) of a block of rows against a block of columns, from
// the differences themselves, so that coinciding rows are exactly 0 apart (at::cdist's direct path
// was 30× slower; the matrix-product form ‖a‖² + ‖b‖² − 2ab cancels for close rows).
struct DistanceTileParams {
  const void* u_rows;    // [rows, D]
  const void* u_cols_t;  // [D, cols]: the column block transposed, so a row's loop runs along contiguous columns
  void* out;             // [rows, cols] with row stride ld
  int64_t ld;
  int64_t rows;
  int64_t cols;
  int64_t dim;
  double scale;               // out = −scale·‖u_a − u_b‖
  ContrastiveSimilarity sim;  // L1 or L2
};

// dU[a] += −Σ_b H_ab ∂‖u_a − u_b‖/∂u_a for the rows a of `u_out`: what the tile H = dL/ds of a
// distance similarity s_ab = −‖u_a − u_b‖ carries back (l1: the sign of the difference; l2: the
// difference, H already holding dL/ds / d). A direct loop over the differences rather than matrix
// products: for l2, H·U − rowsum(H)·u_a cancels in float32 when two rows nearly coincide (H is
// then of order 1/d), where the difference taken first stays exact.
struct DistanceGradientParams {
  const void* h;       // H, element (a, b) at h[a * h_row + b * h_col]
  int64_t h_row;
  int64_t h_col;
  const void* u_out;   // [A, D] the rows whose gradient is accumulated
  const void* u_other; // [B, D]
  void* grad_out;      // [A, D], accumulated into
  int64_t a_count;
  int64_t b_count;
  int64_t dim;
  ContrastiveSimilarity sim;  // L1 or L2
};

// ----------------------------------------------------------------------------- selection
// A candidate's place in anchor i's sums, as one int (a struct of two bools in an `omp simd`
// loop is kept in memory, which stops GCC from vectorising the loop): excluded, a negative (in
// the denominator only) or a positive (in both).
enum CandidateRole : int { kExcluded = 0, kNegative = 1, kPositive = 3 };

FASTADV_HOST_DEVICE bool in_denominator(int role) { return role != kExcluded; }
FASTADV_HOST_DEVICE bool is_positive(int role) { return role == kPositive; }

struct Anchor {
  int32_t index;
  int32_t label;
  int32_t pred;         // the prediction of the anchor's own view
  int32_t counterpart;  // pair[i]; == index when the anchor has none
};

FASTADV_HOST_DEVICE Anchor anchor_of(const SupconTileParams& p, int64_t i) {
  return Anchor{static_cast<int32_t>(i), p.tile.labels[i], p.preds[i], p.pair[i]};
}

// METHODS.md section 2's table: the counterpart is always a positive; every other candidate
// j ≠ i is a positive, a negative, or excluded from both sums. The anchor is given by its fields
// (so that a loop over anchors in vector lanes keeps them in registers).
template <ContrastiveStrategy S>
FASTADV_HOST_DEVICE int candidate_role(int32_t i, int32_t label_i, int32_t pred_i, int32_t counterpart_i, int32_t j,
                                       int32_t label_j, int32_t pred_j) {
  const bool other = j != i;
  const bool counterpart = other && j == counterpart_i;
  const bool same_label = label_j == label_i;
  // hard-ls compares the candidate's prediction with the anchor's label, soft-ls and leaked-ls
  // with the anchor's prediction.
  const bool predicted_alike = S == ContrastiveStrategy::HardLS ? pred_j == label_i : pred_j == pred_i;
  const bool positive = (S == ContrastiveStrategy::LeakedLS ? same_label && predicted_alike : same_label);
  const bool negative = !same_label && (S == ContrastiveStrategy::Global || predicted_alike);
  const bool is_positive_candidate = counterpart || (other && positive);
  const bool is_negative_candidate = other && !counterpart && negative;
  return is_positive_candidate ? kPositive : (is_negative_candidate ? kNegative : kExcluded);
}

template <ContrastiveStrategy S>
FASTADV_HOST_DEVICE int candidate_role(const Anchor& a, int32_t j, int32_t label_j, int32_t pred_j) {
  return candidate_role<S>(a.index, a.label, a.pred, a.counterpart, j, label_j, pred_j);
}

// ----------------------------------------------------------------------------- L_SCL
// The tiles of L_SCL hold t = s/τ: the glue scales them as it makes them (the matrix product's
// alpha, the distance kernel's scale), so that no kernel multiplies s by 1/τ next to a
// subtraction, where a fused multiply-add would round differently in the forward and the
// backward (an anchor with one candidate then got exp(t − lse) ≠ 1 and a gradient of 1e-4 where
// it is 0).
//
// Forward: fold row r of the tile into anchor (row0 + r)'s running statistics.
template <ContrastiveStrategy S, typename T, int Lanes, typename Lane>
FASTADV_HOST_DEVICE void supcon_stats_row(const SupconTileParams& p, int64_t r, const Lane& lane) {
  const ContrastiveTile& tile = p.tile;
  const int64_t i = tile.row0 + r;
  const Anchor anchor = anchor_of(p, i);
  const T* s = static_cast<const T*>(tile.similarity) + r * tile.ld;
  T tile_max = -infinity_of<T>(), positive_sum = T(0), positives = T(0);
  FASTADV_SIMD_MAX_AND_SUM(tile_max, positive_sum, positives)
  for (int64_t j = lane.index; j < tile.cols; j += Lanes) {
    const int32_t column = static_cast<int32_t>(tile.col0 + j);
    const int role = candidate_role<S>(anchor, column, tile.labels[column], p.preds[column]);
    const T t = s[j];
    tile_max = in_denominator(role) ? larger(tile_max, t) : tile_max;
    positive_sum += is_positive(role) ? t : T(0);
    positives += is_positive(role) ? T(1) : T(0);
  }
  tile_max = lane.max(tile_max);
  positive_sum = lane.sum(positive_sum);
  positives = lane.sum(positives);
  T* stats = static_cast<T*>(p.stats);
  const T old_max = stats[i];
  const T new_max = larger(old_max, tile_max);
  T sum = T(0);
  if (new_max != -infinity_of<T>()) {
    FASTADV_SIMD_REDUCE(+, sum)
    for (int64_t j = lane.index; j < tile.cols; j += Lanes) {
      const int32_t column = static_cast<int32_t>(tile.col0 + j);
      const int role = candidate_role<S>(anchor, column, tile.labels[column], p.preds[column]);
      sum += in_denominator(role) ? exp_nonpositive(s[j] - new_max) : T(0);
    }
    sum = lane.sum(sum);
  }
  if (lane.index == 0) {
    // exp(old − new) is 0 while the anchor had nothing in its denominator (old = −inf).
    const T rescaled = new_max == -infinity_of<T>() ? T(0) : stats[tile.n + i] * exp_nonpositive(old_max - new_max);
    stats[i] = new_max;
    stats[tile.n + i] = rescaled + sum;
    stats[2 * tile.n + i] += positive_sum;
    stats[3 * tile.n + i] += positives;
  }
}

// ∂s/∂(distance) scaling of the backward: for l2 the distance-gradient kernel multiplies dL/ds by
// the difference u_i − u_j, so the tile carries dL/ds / d, and 0 at coinciding points (the norm's
// subgradient there). `distance` is d (≥ 0).
template <typename T>
FASTADV_HOST_DEVICE T similarity_coefficient(T g, T distance, ContrastiveSimilarity sim) {
  if (sim != ContrastiveSimilarity::L2) return g;
  return distance == T(0) ? T(0) : g / distance;
}

// Forward, the columns' side of a tile off the diagonal: the tile seen from its column anchors
// (s is symmetric, so column j of the tile is anchor (col0 + j)'s row of the tile below the
// diagonal). W column anchors at once, walking down the tile's rows: the CPU takes W = 64 (their
// statistics in vector registers, the rows read contiguously), CUDA a thread per column (W = 1).
template <ContrastiveStrategy S, typename T, int W>
FASTADV_HOST_DEVICE void supcon_column_stats(const SupconTileParams& p, int64_t j0) {
  const ContrastiveTile& tile = p.tile;
  const int32_t c0 = static_cast<int32_t>(tile.col0 + j0);
  const int32_t* labels = tile.labels;
  const int32_t* preds = p.preds;
  const int32_t* pair = p.pair;
  const T* s = static_cast<const T*>(tile.similarity) + j0;
  T tile_max[W], positive_sum[W], positives[W], sum[W];
  for (int w = 0; w < W; ++w) {
    tile_max[w] = -infinity_of<T>();
    positive_sum[w] = positives[w] = sum[w] = T(0);
  }
  for (int64_t r = 0; r < tile.rows; ++r) {
    const int32_t i = static_cast<int32_t>(tile.row0 + r);
    const int32_t label_i = labels[i], pred_i = preds[i];
    const T* row = s + r * tile.ld;
    FASTADV_SIMD
    for (int w = 0; w < W; ++w) {
      const int32_t j = c0 + w;
      const int role = candidate_role<S>(j, labels[j], preds[j], pair[j], i, label_i, pred_i);
      const T t = row[w];
      tile_max[w] = in_denominator(role) ? larger(tile_max[w], t) : tile_max[w];
      positive_sum[w] += is_positive(role) ? t : T(0);
      positives[w] += is_positive(role) ? T(1) : T(0);
    }
  }
  T* stats = static_cast<T*>(p.stats);
  T new_max[W];
  for (int w = 0; w < W; ++w) new_max[w] = larger(stats[c0 + w], tile_max[w]);
  for (int64_t r = 0; r < tile.rows; ++r) {
    const int32_t i = static_cast<int32_t>(tile.row0 + r);
    const int32_t label_i = labels[i], pred_i = preds[i];
    const T* row = s + r * tile.ld;
    FASTADV_SIMD
    for (int w = 0; w < W; ++w) {
      const int32_t j = c0 + w;
      const int role = candidate_role<S>(j, labels[j], preds[j], pair[j], i, label_i, pred_i);
      sum[w] += in_denominator(role) ? exp_nonpositive(row[w] - new_max[w]) : T(0);
    }
  }
  for (int w = 0; w < W; ++w) {
    const int32_t j = c0 + w;
    const T old_max = stats[j];
    const T rescaled = new_max[w] == -infinity_of<T>() ? T(0) : stats[tile.n + j] * exp_nonpositive(old_max - new_max[w]);
    stats[j] = new_max[w];
    stats[tile.n + j] = rescaled + sum[w];
    stats[2 * tile.n + j] += positive_sum[w];
    stats[3 * tile.n + j] += positives[w];
  }
}

// ∂L/∂s of one ordered pair from anchor a's side: (g_a/τ)(exp(t − lse_a) − [b ∈ P_a]/|P_a|) on a's
// denominator set, 0 elsewhere (and for an anchor without positives, whose coefficient is 0 and
// whose lse is never exponentiated).
// t − lse is clamped at 0: it is ≤ 0 up to rounding for an anchor with positives, and an anchor
// without has lse 0 and a coefficient of 0, so the exponential stays finite whatever t.
template <typename T>
FASTADV_HOST_DEVICE T supcon_pair_gradient(int role, T t, T lse, T coefficient, T inv_positives) {
  const T probability = exp_nonpositive(smaller(t - lse, T(0)));
  return in_denominator(role) ? coefficient * (probability - (is_positive(role) ? inv_positives : T(0))) : T(0);
}

// Backward: row r of the tile H of dL/ds of both orders of each pair, from the recomputed tile of
// t (s is symmetric): H_ij = ∂L_i/∂s_ij + ∂L_j/∂s_ji, anchor i = row0 + r against the column
// anchors j in the lanes. On the diagonal tile this is G + Gᵀ; off it, G_rc + G_crᵀ, without
// transposing anything.
template <ContrastiveStrategy S, typename T, int Lanes, typename Lane>
FASTADV_HOST_DEVICE void supcon_gradient_row(const SupconTileParams& p, int64_t r, const Lane& lane) {
  const ContrastiveTile& tile = p.tile;
  const int32_t i = static_cast<int32_t>(tile.row0 + r);
  const int32_t label_i = tile.labels[i], pred_i = p.preds[i], counterpart_i = p.pair[i];
  const T* s = static_cast<const T*>(tile.similarity) + r * tile.ld;
  T* g = static_cast<T*>(tile.gradient) + r * tile.ld;
  const T* lse = static_cast<const T*>(p.lse);
  const T* coefficient = static_cast<const T*>(p.coefficient);
  const T* inv_positives = static_cast<const T*>(p.inv_positives);
  const T lse_i = lse[i], coefficient_i = coefficient[i], inv_positives_i = inv_positives[i];
  const T tau = static_cast<T>(p.tau);
  // The column anchors' fields from the tile's first column on, read at c as contiguous vectors.
  const int32_t col0 = static_cast<int32_t>(tile.col0);
  const int32_t* labels = tile.labels + col0;
  const int32_t* preds = p.preds + col0;
  const int32_t* pair = p.pair + col0;
  const T* lse_j = lse + col0;
  const T* coefficient_j = coefficient + col0;
  const T* inv_positives_j = inv_positives + col0;
  const ContrastiveSimilarity sim = p.sim;
  // Two loops, one per side (one loop computing both roles is not vectorised by GCC).
  FASTADV_SIMD
  for (int64_t c = lane.index; c < tile.cols; c += Lanes) {
    const int32_t j = col0 + static_cast<int32_t>(c);
    const int role_i = candidate_role<S>(i, label_i, pred_i, counterpart_i, j, labels[c], preds[c]);
    g[c] = supcon_pair_gradient(role_i, s[c], lse_i, coefficient_i, inv_positives_i);
  }
  FASTADV_SIMD
  for (int64_t c = lane.index; c < tile.cols; c += Lanes) {
    const int32_t j = col0 + static_cast<int32_t>(c);
    const int role_j = candidate_role<S>(j, labels[c], preds[c], pair[c], i, label_i, pred_i);
    const T value = g[c] + supcon_pair_gradient(role_j, s[c], lse_j[c], coefficient_j[c], inv_positives_j[c]);
    g[c] = similarity_coefficient(value, -s[c] * tau, sim);
  }
}

template <typename T, int Lanes, typename Lane>
FASTADV_HOST_DEVICE void supcon_stats_row_any(const SupconTileParams& p, int64_t r, const Lane& lane) {
  switch (p.strategy) {
    case ContrastiveStrategy::Global: supcon_stats_row<ContrastiveStrategy::Global, T, Lanes>(p, r, lane); break;
    case ContrastiveStrategy::HardLS: supcon_stats_row<ContrastiveStrategy::HardLS, T, Lanes>(p, r, lane); break;
    case ContrastiveStrategy::SoftLS: supcon_stats_row<ContrastiveStrategy::SoftLS, T, Lanes>(p, r, lane); break;
    case ContrastiveStrategy::LeakedLS: supcon_stats_row<ContrastiveStrategy::LeakedLS, T, Lanes>(p, r, lane); break;
  }
}

template <typename T, int W>
FASTADV_HOST_DEVICE void supcon_column_stats_any(const SupconTileParams& p, int64_t j0) {
  switch (p.strategy) {
    case ContrastiveStrategy::Global: supcon_column_stats<ContrastiveStrategy::Global, T, W>(p, j0); break;
    case ContrastiveStrategy::HardLS: supcon_column_stats<ContrastiveStrategy::HardLS, T, W>(p, j0); break;
    case ContrastiveStrategy::SoftLS: supcon_column_stats<ContrastiveStrategy::SoftLS, T, W>(p, j0); break;
    case ContrastiveStrategy::LeakedLS: supcon_column_stats<ContrastiveStrategy::LeakedLS, T, W>(p, j0); break;
  }
}

template <typename T, int Lanes, typename Lane>
FASTADV_HOST_DEVICE void supcon_gradient_row_any(const SupconTileParams& p, int64_t r, const Lane& lane) {
  switch (p.strategy) {
    case ContrastiveStrategy::Global: supcon_gradient_row<ContrastiveStrategy::Global, T, Lanes>(p, r, lane); break;
    case ContrastiveStrategy::HardLS: supcon_gradient_row<ContrastiveStrategy::HardLS, T, Lanes>(p, r, lane); break;
    case ContrastiveStrategy::SoftLS: supcon_gradient_row<ContrastiveStrategy::SoftLS, T, Lanes>(p, r, lane); break;
    case ContrastiveStrategy::LeakedLS: supcon_gradient_row<ContrastiveStrategy::LeakedLS, T, Lanes>(p, r, lane); break;
  }
}

// ----------------------------------------------------------------------------- compactness
// ADR's w_ij (seed 003 ch. 3, Eq. 2): 1 for the same label, (a − 1)/a otherwise.
template <typename T>
FASTADV_HOST_DEVICE T compactness_weight(int32_t label_i, int32_t label_j, T other_weight) {
  return label_i == label_j ? T(1) : other_weight;
}

// Forward: row_sums[i] += Σ_j w_ij ‖f_i − f_j‖_p over the tile's columns (the tile holds −‖·‖).
template <typename T, int Lanes, typename Lane>
FASTADV_HOST_DEVICE void compactness_row(const CompactnessTileParams& p, int64_t r, const Lane& lane) {
  const ContrastiveTile& tile = p.tile;
  const int64_t i = tile.row0 + r;
  const int32_t label = tile.labels[i];
  const T* s = static_cast<const T*>(tile.similarity) + r * tile.ld;
  const T other_weight = static_cast<T>(p.other_weight);
  T sum = T(0);
  FASTADV_SIMD_REDUCE(+, sum)
  for (int64_t j = lane.index; j < tile.cols; j += Lanes) {
    sum -= compactness_weight(label, tile.labels[tile.col0 + j], other_weight) * s[j];
  }
  sum = lane.sum(sum);
  if (lane.index == 0) static_cast<T*>(p.row_sums)[i] += static_cast<T>(p.scale) * sum;
}

// Backward: the tile of d(Σ w_ij ‖f_i − f_j‖)/ds = −w_ij times p.scale (the incoming gradient and
// 1/N² are applied by the glue), scaled for l2 as the contrastive loss's.
template <typename T, int Lanes, typename Lane>
FASTADV_HOST_DEVICE void compactness_gradient_row(const CompactnessTileParams& p, int64_t r, const Lane& lane) {
  const ContrastiveTile& tile = p.tile;
  const int32_t label = tile.labels[tile.row0 + r];
  const T* s = static_cast<const T*>(tile.similarity) + r * tile.ld;
  T* g = static_cast<T*>(tile.gradient) + r * tile.ld;
  const T other_weight = static_cast<T>(p.other_weight), scale = static_cast<T>(p.scale);
  const ContrastiveSimilarity sim = p.sim;
  FASTADV_SIMD
  for (int64_t j = lane.index; j < tile.cols; j += Lanes) {
    const T value = -scale * compactness_weight(label, tile.labels[tile.col0 + j], other_weight);
    g[j] = similarity_coefficient(value, -s[j], sim);
  }
}

// ----------------------------------------------------------------------------- distance tile
// Row a of the distance tile, each lane its own columns b, b + Lanes, ... (CUDA: a warp's lanes
// read contiguous columns of u_cols_t). A distance is Σ_k in order of k.
constexpr int64_t kDistanceBlock = 32;
constexpr int kDistanceRows = 4;

template <typename T>
FASTADV_HOST_DEVICE T distance_term(T difference, bool l1) {
  return l1 ? (difference < T(0) ? -difference : difference) : difference * difference;
}

template <typename T>
FASTADV_HOST_DEVICE T distance_of_sum(T sum, bool l1) {
  return l1 ? sum : sqrt(sum);
}

template <typename T, int Lanes, typename Lane>
FASTADV_HOST_DEVICE void distance_tile_row(const DistanceTileParams& p, int64_t a, const Lane& lane) {
  const T* u = static_cast<const T*>(p.u_rows) + a * p.dim;
  const T* columns = static_cast<const T*>(p.u_cols_t);
  T* out = static_cast<T*>(p.out) + a * p.ld;
  const bool l1 = p.sim == ContrastiveSimilarity::L1;
  for (int64_t b = lane.index; b < p.cols; b += Lanes) {
    T sum = T(0);
    for (int64_t k = 0; k < p.dim; ++k) sum += distance_term(u[k] - columns[k * p.cols + b], l1);
    out[b] = -static_cast<T>(p.scale) * distance_of_sum(sum, l1);
  }
}

// The CPU's form of distance_tile_row: R rows at once (each column block loaded once for all of
// them) and blocks of kDistanceBlock columns, the R × kDistanceBlock sums in registers across the
// coordinates k (independent chains of additions). The same sums, in the same order.
template <typename T, int R>
FASTADV_HOST_DEVICE void distance_tile_rows(const DistanceTileParams& p, int64_t a0) {
  const T* columns = static_cast<const T*>(p.u_cols_t);
  const int64_t cols = p.cols, dim = p.dim;
  const bool l1 = p.sim == ContrastiveSimilarity::L1;
  const T scale = static_cast<T>(p.scale);
  for (int64_t start = 0; start < cols; start += kDistanceBlock) {
    // The last block overlaps the one before it rather than ending in scalar columns.
    const int64_t b0 = start + kDistanceBlock <= cols ? start : cols - kDistanceBlock;
    T sums[R][kDistanceBlock] = {};
    for (int64_t k = 0; k < dim; ++k) {
      const T* column_k = columns + k * cols + b0;
      for (int r = 0; r < R; ++r) {
        const T uk = static_cast<const T*>(p.u_rows)[(a0 + r) * dim + k];
        FASTADV_SIMD
        for (int64_t b = 0; b < kDistanceBlock; ++b) sums[r][b] += distance_term(uk - column_k[b], l1);
      }
    }
    for (int r = 0; r < R; ++r) {
      T* out = static_cast<T*>(p.out) + (a0 + r) * p.ld + b0;
      FASTADV_SIMD
      for (int64_t b = 0; b < kDistanceBlock; ++b) out[b] = -scale * distance_of_sum(sums[r][b], l1);
    }
  }
}

// ----------------------------------------------------------------------------- distance gradient
// ∂‖d‖/∂d for one coordinate of d = u_a − u_b: sign(d) for l1 (0 at 0), d itself for l2 (the
// tile carries the 1/‖d‖).
template <typename T>
FASTADV_HOST_DEVICE T distance_gradient_term(T difference, bool l1) {
  return l1 ? sign_propagating_nan(difference) : difference;
}

// dU[a, k] −= Σ_b H_ab ∂‖u_a − u_b‖/∂u_ak for one row a, lanes over the coordinates k, in chunks
// of kGradientChunk coordinates whose sums stay in registers over the candidates b.
constexpr int64_t kGradientChunk = 64;

template <typename T, int Lanes, typename Lane>
FASTADV_HOST_DEVICE void distance_gradient_row(const DistanceGradientParams& p, int64_t a, const Lane& lane) {
  const T* h = static_cast<const T*>(p.h) + a * p.h_row;
  const T* u = static_cast<const T*>(p.u_out) + a * p.dim;
  const T* others = static_cast<const T*>(p.u_other);
  T* grad = static_cast<T*>(p.grad_out) + a * p.dim;
  const int64_t dim = p.dim, h_col = p.h_col;
  const bool l1 = p.sim == ContrastiveSimilarity::L1;
  for (int64_t k0 = 0; k0 < dim; k0 += kGradientChunk) {
    const int64_t chunk = dim - k0 < kGradientChunk ? dim - k0 : kGradientChunk;
    T sums[kGradientChunk] = {};
    for (int64_t b = 0; b < p.b_count; ++b) {
      const T weight = h[b * h_col];
      const T* other = others + b * dim + k0;
      FASTADV_SIMD
      for (int64_t k = lane.index; k < chunk; k += Lanes) {
        sums[k] += weight * distance_gradient_term(u[k0 + k] - other[k], l1);
      }
    }
    FASTADV_SIMD
    for (int64_t k = lane.index; k < chunk; k += Lanes) grad[k0 + k] -= sums[k];
  }
}

// ----------------------------------------------------------------------------- CUDA launchers
// Implemented in csrc/cuda/contrastive_kernel.cu; `kind` is Float32 or Float64 (the glue
// computes in the accumulation type), `stream` a cudaStream_t.
void launch_supcon_stats_cuda(const SupconTileParams& p, ScalarKind kind, void* stream);
void launch_supcon_column_stats_cuda(const SupconTileParams& p, ScalarKind kind, void* stream);
void launch_supcon_gradient_cuda(const SupconTileParams& p, ScalarKind kind, void* stream);
void launch_compactness_cuda(const CompactnessTileParams& p, ScalarKind kind, void* stream);
void launch_compactness_gradient_cuda(const CompactnessTileParams& p, ScalarKind kind, void* stream);
void launch_distance_tile_cuda(const DistanceTileParams& p, ScalarKind kind, void* stream);
void launch_distance_gradient_cuda(const DistanceGradientParams& p, ScalarKind kind, void* stream);

}  // namespace fastadv
