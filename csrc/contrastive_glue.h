// The contrastive family's driver, shared by the CPU and CUDA registrations: the second line of
// checks (fastadv/ops/contrastive.py validates first), the walk over the similarity matrix in
// tiles, and the registered entry points.
//
// A tile of similarities is a matrix product of the unit rows (cosine) or a direct distance
// (the backend's distance kernel, so that coinciding points are exactly 0 apart); the backend's kernels (contrastive.h's row functions)
// fold it into per-anchor statistics or turn it into the tile of dL/ds, which matrix products
// (cosine) or the distance-gradient kernel (l1, l2) carry back onto the rows. Memory: the [N, D] rows, a few [N]
// vectors and one or two tiles of kContrastiveTile², whatever N is.
#pragma once

#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>

#include "common_glue.h"
#include "fastadv/contrastive.h"

namespace fastadv {
namespace contrastive {

// float64 stays float64; every other dtype is computed in float32.
inline at::ScalarType accumulation_type(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_rows(const at::Tensor& z, const char* name) {
  TORCH_CHECK(z.dim() == 2 && z.size(1) >= 1, "fastadv: ", name, " must have shape [N, D] with D >= 1, got ",
              z.sizes());
  TORCH_CHECK(z.is_floating_point(), "fastadv: ", name, " must be a floating tensor, got ", z.scalar_type());
}

inline void check_indices(const at::Tensor& t, const at::Tensor& z, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kLong, "fastadv: ", name, " must be an int64 tensor, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == z.size(0), "fastadv: ", name, " must have shape [N] = [", z.size(0),
              "], got ", t.sizes());
  TORCH_CHECK(t.device() == z.device(), "fastadv: ", name, " must be on ", z.device(), ", got ", t.device());
  TORCH_CHECK(t.is_contiguous(), "fastadv: ", name, " must be contiguous");
}

inline void check_supcon_arguments(const at::Tensor& z, const at::Tensor& labels, const at::Tensor& preds,
                                   const at::Tensor& pair, double tau, int64_t strategy, int64_t sim,
                                   int64_t reduction) {
  check_rows(z, "z");
  check_indices(labels, z, "labels");
  check_indices(preds, z, "preds");
  check_indices(pair, z, "pair");
  TORCH_CHECK(tau > 0 && std::isfinite(tau), "fastadv: tau must be a finite number > 0, got ", tau);
  TORCH_CHECK(strategy >= 0 && strategy <= 3,
              "fastadv: strategy must be 0 (global), 1 (hard-ls), 2 (soft-ls) or 3 (leaked-ls), got ", strategy);
  TORCH_CHECK(sim >= 0 && sim <= 2, "fastadv: sim must be 0 (cosine), 1 (l1) or 2 (l2), got ", sim);
  TORCH_CHECK(reduction >= 0 && reduction <= 2, "fastadv: reduction must be 0 (none), 1 (mean) or 2 (sum), got ",
              reduction);
}

inline void check_compactness_arguments(const at::Tensor& f, const at::Tensor& labels, double a, int64_t p) {
  check_rows(f, "f");
  check_indices(labels, f, "labels");
  TORCH_CHECK(a > 0 && a <= 1, "fastadv: a must lie in (0, 1], got ", a);
  TORCH_CHECK(p == 1 || p == 2, "fastadv: p must be 1 or 2, got ", p);
}

// The rows the tiles are made of: unit rows for the cosine similarity, the rows themselves for
// the distances, in the accumulation type.
inline at::Tensor tile_rows(const at::Tensor& z, ContrastiveSimilarity sim) {
  at::Tensor work = z.to(accumulation_type(z)).contiguous();
  if (sim != ContrastiveSimilarity::Cosine) return work;
  return work / work.norm(2, {1}, true).clamp_min(kNormalizeEps);
}

// normalize's backward: dz = (dû − û(û·dû))/‖z‖ where ‖z‖ > eps, dû/eps where the guard holds.
inline at::Tensor unit_rows_backward(const at::Tensor& grad_unit, const at::Tensor& work) {
  at::Tensor norm = work.norm(2, {1}, true);
  at::Tensor unit = work / norm.clamp_min(kNormalizeEps);
  at::Tensor projected = (grad_unit - unit * (unit * grad_unit).sum({1}, true)) / norm.clamp_min(kNormalizeEps);
  return at::where(norm > kNormalizeEps, projected, grad_unit / kNormalizeEps);
}

// The tile scale·s of rows [r0, r0 + rows) against rows [c0, c0 + cols), contiguous: the product
// of the unit rows (cosine; the scale is the product's alpha), or minus the distances by the
// backend's DistanceTile kernel.
template <void (*DistanceTile)(const DistanceTileParams&, ScalarKind, const at::Tensor&)>
at::Tensor similarity_tile(const at::Tensor& u, int64_t r0, int64_t rows, int64_t c0, int64_t cols,
                           ContrastiveSimilarity sim, double scale) {
  const at::Tensor a = u.narrow(0, r0, rows), b = u.narrow(0, c0, cols);
  at::Tensor out = at::empty({rows, cols}, u.options());
  // beta = 0: out's contents are never read.
  if (sim == ContrastiveSimilarity::Cosine) return at::addmm_out(out, out, a, b.t(), 0.0, scale);
  const at::Tensor b_t = b.t().contiguous();
  DistanceTileParams p{};
  p.u_rows = a.data_ptr();
  p.u_cols_t = b_t.data_ptr();
  p.out = out.data_ptr();
  p.ld = out.stride(0);
  p.rows = rows;
  p.cols = cols;
  p.dim = u.size(1);
  p.scale = scale;
  p.sim = sim;
  DistanceTile(p, scalar_kind_of(u, "z"), u);
  return out;
}

// dU[rows] += what H carries back onto the rows' side, and, off the diagonal, dU[cols] += what
// Hᵀ carries back onto the columns' side. H is the tile of dL/ds of both orders of each pair:
// H = G_rc + G_crᵀ (on the diagonal, G + Gᵀ), since s is symmetric; for l2 it holds dL/ds / d.
template <void (*DistanceGradient)(const DistanceGradientParams&, ScalarKind, const at::Tensor&)>
void accumulate_tile_gradient(at::Tensor& grad_u, const at::Tensor& u, const at::Tensor& h, int64_t r0, int64_t rows,
                              int64_t c0, int64_t cols, ContrastiveSimilarity sim) {
  const bool diagonal = r0 == c0;
  const at::Tensor a = u.narrow(0, r0, rows), b = u.narrow(0, c0, cols);
  at::Tensor grad_a = grad_u.narrow(0, r0, rows), grad_b = grad_u.narrow(0, c0, cols);
  if (sim == ContrastiveSimilarity::Cosine) {  // ∂s_ij/∂u_i = u_j
    grad_a.addmm_(h, b);
    if (!diagonal) grad_b.addmm_(h.t(), a);
  } else {  // ∂s_ij/∂u_i = −∂‖u_i − u_j‖/∂u_i
    const ScalarKind kind = scalar_kind_of(u, "z");
    // One side: the rows `out` (their gradient `grad`) against `other`, H read with these strides.
    auto side = [&](int64_t h_row, int64_t h_col, const at::Tensor& out, const at::Tensor& other, at::Tensor& grad) {
      DistanceGradientParams p{};
      p.sim = sim;
      p.dim = u.size(1);
      p.h = h.data_ptr();
      p.h_row = h_row;
      p.h_col = h_col;
      p.u_out = out.data_ptr();
      p.u_other = other.data_ptr();
      p.grad_out = grad.data_ptr();
      p.a_count = out.size(0);
      p.b_count = other.size(0);
      DistanceGradient(p, kind, u);
    };
    side(h.stride(0), h.stride(1), a, b, grad_a);
    // The columns' side: the transposed tile, the roles of the two blocks swapped.
    if (!diagonal) side(h.stride(1), h.stride(0), b, a, grad_b);
  }
}

// The indices as the kernels read them: int32, 16 to a vector like the floats (N < 2^31).
inline at::Tensor int32_indices(const at::Tensor& t) { return t.to(at::kInt).contiguous(); }

inline ContrastiveTile tile_of(const at::Tensor& s, const at::Tensor& labels, int64_t r0, int64_t c0, int64_t n) {
  ContrastiveTile tile{};
  tile.similarity = s.data_ptr();
  tile.ld = s.stride(0);
  tile.row0 = r0;
  tile.col0 = c0;
  tile.rows = s.size(0);
  tile.cols = s.size(1);
  tile.n = n;
  tile.labels = labels.data_ptr<int32_t>();
  return tile;
}

// Calls visit(r0, rows, c0, cols) for the tiles on and above the diagonal of the N × N matrix:
// s is symmetric, so each tile below it is the transpose of one visited.
template <typename Visit>
void for_each_tile_pair(int64_t n, Visit&& visit) {
  for (int64_t r0 = 0; r0 < n; r0 += kContrastiveTile) {
    const int64_t rows = std::min(kContrastiveTile, n - r0);
    for (int64_t c0 = r0; c0 < n; c0 += kContrastiveTile) visit(r0, rows, c0, std::min(kContrastiveTile, n - c0));
  }
}

// A backend's kernels: DistanceTile takes a DistanceTileParams, Stats / ColumnStats / Gradient a SupconTileParams, Compactness /
// CompactnessGradient a CompactnessTileParams, DistanceGradient an DistanceGradientParams; each runs on the
// tensors' device (the at::Tensor argument says which).
template <void (*DistanceTile)(const DistanceTileParams&, ScalarKind, const at::Tensor&),
          void (*Stats)(const SupconTileParams&, ScalarKind, const at::Tensor&),
          void (*ColumnStats)(const SupconTileParams&, ScalarKind, const at::Tensor&),
          void (*Gradient)(const SupconTileParams&, ScalarKind, const at::Tensor&),
          void (*Compactness)(const CompactnessTileParams&, ScalarKind, const at::Tensor&),
          void (*CompactnessGradient)(const CompactnessTileParams&, ScalarKind, const at::Tensor&),
          void (*DistanceGradient)(const DistanceGradientParams&, ScalarKind, const at::Tensor&)>
struct EntryPoints {
  // preds and pair: int32_indices.
  static SupconTileParams supcon_params(const at::Tensor& preds, const at::Tensor& pair, double tau, int64_t strategy,
                                        int64_t sim) {
    SupconTileParams p{};
    p.preds = preds.data_ptr<int32_t>();
    p.pair = pair.data_ptr<int32_t>();
    p.tau = tau;
    p.strategy = static_cast<ContrastiveStrategy>(strategy);
    p.sim = static_cast<ContrastiveSimilarity>(sim);
    return p;
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor> supcon(const at::Tensor& z, const at::Tensor& labels,
                                                               const at::Tensor& preds, const at::Tensor& pair,
                                                               double tau, int64_t strategy, int64_t sim,
                                                               int64_t reduction) {
    check_supcon_arguments(z, labels, preds, pair, tau, strategy, sim, reduction);
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    const at::Tensor labels32 = int32_indices(labels), preds32 = int32_indices(preds), pair32 = int32_indices(pair);
    const int64_t n = z.size(0);
    const auto similarity = static_cast<ContrastiveSimilarity>(sim);
    const at::Tensor u = tile_rows(z, similarity);
    at::Tensor stats = at::zeros({4, n}, u.options());
    stats[0].fill_(-std::numeric_limits<double>::infinity());
    SupconTileParams p = supcon_params(preds32, pair32, tau, strategy, sim);
    p.stats = stats.data_ptr();
    const ScalarKind kind = scalar_kind_of(u, "z");
    for_each_tile_pair(n, [&](int64_t r0, int64_t rows, int64_t c0, int64_t cols) {
      const at::Tensor s = similarity_tile<DistanceTile>(u, r0, rows, c0, cols, similarity, 1.0 / tau);
      p.tile = tile_of(s, labels32, r0, c0, n);
      Stats(p, kind, u);
      // Off the diagonal the same similarities also fold into the columns' anchors.
      if (r0 != c0) ColumnStats(p, kind, u);
    });
    const at::Tensor positives = stats[3];
    const at::Tensor has_positive = positives > 0;
    const at::Tensor zero = at::zeros({}, u.options());
    // An anchor with a positive has a nonempty denominator; one without has loss 0 (its lse is
    // set to 0, never read).
    const at::Tensor lse = at::where(has_positive, stats[0] + stats[1].log(), zero);
    const at::Tensor per_anchor = at::where(has_positive, lse - stats[2] / positives.clamp_min(1), zero);
    at::Tensor loss = reduction == 0 ? per_anchor : (reduction == 1 ? per_anchor.mean() : per_anchor.sum());
    return {loss.to(z.scalar_type()), lse, positives.clone()};
  }

  static at::Tensor supcon_backward(const at::Tensor& grad_loss, const at::Tensor& z, const at::Tensor& labels,
                                    const at::Tensor& preds, const at::Tensor& pair, const at::Tensor& lse,
                                    const at::Tensor& positives, double tau, int64_t strategy, int64_t sim,
                                    int64_t reduction) {
    check_supcon_arguments(z, labels, preds, pair, tau, strategy, sim, reduction);
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    const at::Tensor labels32 = int32_indices(labels), preds32 = int32_indices(preds), pair32 = int32_indices(pair);
    const int64_t n = z.size(0);
    const auto similarity = static_cast<ContrastiveSimilarity>(sim);
    const at::Tensor work = z.to(accumulation_type(z)).contiguous();
    const at::Tensor u = tile_rows(z, similarity);
    TORCH_CHECK(lse.sizes() == at::IntArrayRef{n} && positives.sizes() == at::IntArrayRef{n} &&
                    lse.scalar_type() == u.scalar_type() && positives.scalar_type() == u.scalar_type(),
                "fastadv: row_lse and row_positives must be the forward's [N] outputs");
    at::Tensor grad = grad_loss.to(u.scalar_type());
    if (reduction == 1) grad = grad / static_cast<double>(n);
    // Per anchor: g_i/τ and 1/|P_i|, 0 for an anchor without positives (loss 0, no gradient).
    const at::Tensor has_positive = positives > 0;
    const at::Tensor zero = at::zeros({}, u.options());
    const at::Tensor coefficient = at::where(has_positive, (grad / tau).expand({n}), zero).contiguous();
    const at::Tensor inv_positives = at::where(has_positive, positives.clamp_min(1).reciprocal(), zero).contiguous();
    const at::Tensor lse_c = lse.contiguous();
    at::Tensor grad_u = at::zeros_like(u);
    SupconTileParams p = supcon_params(preds32, pair32, tau, strategy, sim);
    p.lse = lse_c.data_ptr();
    p.coefficient = coefficient.data_ptr();
    p.inv_positives = inv_positives.data_ptr();
    const ScalarKind kind = scalar_kind_of(u, "z");
    for_each_tile_pair(n, [&](int64_t r0, int64_t rows, int64_t c0, int64_t cols) {
      const at::Tensor s = similarity_tile<DistanceTile>(u, r0, rows, c0, cols, similarity, 1.0 / tau);
      at::Tensor g = at::empty_like(s);
      p.tile = tile_of(s, labels32, r0, c0, n);
      p.tile.gradient = g.data_ptr();
      Gradient(p, kind, u);  // H = G_rc + G_crᵀ, both anchor blocks' sides
      accumulate_tile_gradient<DistanceGradient>(grad_u, u, g, r0, rows, c0, cols, similarity);
    });
    const at::Tensor grad_z = similarity == ContrastiveSimilarity::Cosine ? unit_rows_backward(grad_u, work) : grad_u;
    return grad_z.to(z.scalar_type());
  }

  static CompactnessTileParams compactness_params(double a, int64_t p_norm) {
    CompactnessTileParams p{};
    p.other_weight = (a - 1.0) / a;
    p.sim = p_norm == 1 ? ContrastiveSimilarity::L1 : ContrastiveSimilarity::L2;
    return p;
  }

  static at::Tensor compactness(const at::Tensor& f, const at::Tensor& labels, double a, int64_t p_norm) {
    check_compactness_arguments(f, labels, a, p_norm);
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    const at::Tensor labels32 = int32_indices(labels);
    const int64_t n = f.size(0);
    CompactnessTileParams p = compactness_params(a, p_norm);
    const at::Tensor u = tile_rows(f, p.sim);
    at::Tensor row_sums = at::zeros({n}, u.options());
    p.row_sums = row_sums.data_ptr();
    const ScalarKind kind = scalar_kind_of(u, "f");
    for_each_tile_pair(n, [&](int64_t r0, int64_t rows, int64_t c0, int64_t cols) {
      const at::Tensor s = similarity_tile<DistanceTile>(u, r0, rows, c0, cols, p.sim, 1.0);
      p.tile = tile_of(s, labels32, r0, c0, n);
      // w and the distance are symmetric: a tile off the diagonal counts for its transpose too.
      p.scale = r0 == c0 ? 1.0 : 2.0;
      Compactness(p, kind, u);
    });
    return (row_sums.sum() / (static_cast<double>(n) * static_cast<double>(n))).to(f.scalar_type());
  }

  static at::Tensor compactness_backward(const at::Tensor& grad, const at::Tensor& f, const at::Tensor& labels,
                                         double a, int64_t p_norm) {
    check_compactness_arguments(f, labels, a, p_norm);
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    const at::Tensor labels32 = int32_indices(labels);
    const int64_t n = f.size(0);
    CompactnessTileParams p = compactness_params(a, p_norm);
    const at::Tensor u = tile_rows(f, p.sim);
    at::Tensor grad_u = at::zeros_like(u);
    const ScalarKind kind = scalar_kind_of(u, "f");
    for_each_tile_pair(n, [&](int64_t r0, int64_t rows, int64_t c0, int64_t cols) {
      const at::Tensor s = similarity_tile<DistanceTile>(u, r0, rows, c0, cols, p.sim, 1.0);
      at::Tensor g = at::empty_like(s);
      p.tile = tile_of(s, labels32, r0, c0, n);
      p.tile.gradient = g.data_ptr();
      // The tile of the transposed pair is Gᵀ (w and the distance are symmetric): H = 2G.
      p.scale = 2.0;
      CompactnessGradient(p, kind, u);
      accumulate_tile_gradient<DistanceGradient>(grad_u, u, g, r0, rows, c0, cols, p.sim);
    });
    // The incoming gradient and the mean's 1/N², as a tensor: no value is read back.
    grad_u.mul_(grad.to(u.scalar_type()) / (static_cast<double>(n) * static_cast<double>(n)));
    return grad_u.to(f.scalar_type());
  }
};

template <typename Entry>
void register_kernels(torch::Library& m) {
  m.impl("supcon_loss", &Entry::supcon);
  m.impl("_supcon_loss_backward", &Entry::supcon_backward);
  m.impl("pairwise_compactness", &Entry::compactness);
  m.impl("_pairwise_compactness_backward", &Entry::compactness_backward);
}

}  // namespace contrastive
}  // namespace fastadv
