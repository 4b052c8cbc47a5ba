// CPU kernels of the contrastive family: the rows of a tile in parallel, each row a loop over the
// tile's columns through the shared row functions of fastadv/contrastive.h with one lane (the
// loops vectorised by the compiler, cloned for AVX-512 / AVX2 / baseline). The tiles themselves
// and the matrix products around them are ATen's (csrc/contrastive_glue.h).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "../contrastive_glue.h"
#include "fastadv/contrastive.h"

namespace fastadv {
namespace {

// flatten: the row function (and the strategy's role test) is inlined into each clone.
template <typename T, typename Params, void (*Row)(const Params&, int64_t, const SingleLane&)>
FASTADV_CPU_CLONES __attribute__((flatten)) void tile_rows_kernel(const Params& p, int64_t begin, int64_t end) {
  for (int64_t r = begin; r < end; ++r) Row(p, r, SingleLane{});
}

template <typename Params, void (*FloatRow)(const Params&, int64_t, const SingleLane&),
          void (*DoubleRow)(const Params&, int64_t, const SingleLane&)>
void run_rows(const Params& p, ScalarKind kind, int64_t rows, int64_t grain) {
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    if (kind == ScalarKind::Float64) {
      tile_rows_kernel<double, Params, DoubleRow>(p, begin, end);
    } else {
      tile_rows_kernel<float, Params, FloatRow>(p, begin, end);
    }
  });
}

// A tile row is kContrastiveTile columns at most: a few rows per task.
constexpr int64_t kRowGrain = 8;
// Column anchors per block of the columns' side: their statistics in vector registers.
constexpr int kColumnBlock = 64;

void run_supcon_stats(const SupconTileParams& p, ScalarKind kind, const at::Tensor&) {
  run_rows<SupconTileParams, supcon_stats_row_any<float, 1, SingleLane>, supcon_stats_row_any<double, 1, SingleLane>>(
      p, kind, p.tile.rows, kRowGrain);
}

template <typename T>
FASTADV_CPU_CLONES __attribute__((flatten)) void column_stats_kernel(const SupconTileParams& p, int64_t begin,
                                                                     int64_t end) {
  for (int64_t block = begin; block < end; ++block) {
    const int64_t j0 = block * kColumnBlock;
    if (j0 + kColumnBlock <= p.tile.cols) {
      supcon_column_stats_any<T, kColumnBlock>(p, j0);
    } else {
      for (int64_t j = j0; j < p.tile.cols; ++j) supcon_column_stats_any<T, 1>(p, j);
    }
  }
}

void run_supcon_column_stats(const SupconTileParams& p, ScalarKind kind, const at::Tensor&) {
  const int64_t blocks = (p.tile.cols + kColumnBlock - 1) / kColumnBlock;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    if (kind == ScalarKind::Float64) {
      column_stats_kernel<double>(p, begin, end);
    } else {
      column_stats_kernel<float>(p, begin, end);
    }
  });
}

void run_supcon_gradient(const SupconTileParams& p, ScalarKind kind, const at::Tensor&) {
  run_rows<SupconTileParams, supcon_gradient_row_any<float, 1, SingleLane>,
           supcon_gradient_row_any<double, 1, SingleLane>>(p, kind, p.tile.rows, kRowGrain);
}

void run_compactness(const CompactnessTileParams& p, ScalarKind kind, const at::Tensor&) {
  run_rows<CompactnessTileParams, compactness_row<float, 1, SingleLane>, compactness_row<double, 1, SingleLane>>(
      p, kind, p.tile.rows, kRowGrain);
}

void run_compactness_gradient(const CompactnessTileParams& p, ScalarKind kind, const at::Tensor&) {
  run_rows<CompactnessTileParams, compactness_gradient_row<float, 1, SingleLane>,
           compactness_gradient_row<double, 1, SingleLane>>(p, kind, p.tile.rows, kRowGrain);
}

template <typename T>
FASTADV_CPU_CLONES __attribute__((flatten)) void distance_tile_kernel(const DistanceTileParams& p, int64_t begin,
                                                                      int64_t end) {
  // Blocks of kDistanceRows rows; rows left over, and tiles narrower than a column block, one at a time.
  int64_t a = begin;
  if (p.cols >= kDistanceBlock) {
    for (; a + kDistanceRows <= end; a += kDistanceRows) distance_tile_rows<T, kDistanceRows>(p, a);
    for (; a < end; ++a) distance_tile_rows<T, 1>(p, a);
  }
  for (; a < end; ++a) distance_tile_row<T, 1>(p, a, SingleLane{});
}

void run_distance_tile(const DistanceTileParams& p, ScalarKind kind, const at::Tensor&) {
  at::parallel_for(0, p.rows, kRowGrain, [&](int64_t begin, int64_t end) {
    if (kind == ScalarKind::Float64) {
      distance_tile_kernel<double>(p, begin, end);
    } else {
      distance_tile_kernel<float>(p, begin, end);
    }
  });
}

void run_distance_gradient(const DistanceGradientParams& p, ScalarKind kind, const at::Tensor&) {
  run_rows<DistanceGradientParams, distance_gradient_row<float, 1, SingleLane>, distance_gradient_row<double, 1, SingleLane>>(
      p, kind, p.a_count, 1);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastadv, CPU, m) {
  contrastive::register_kernels<contrastive::EntryPoints<run_distance_tile, run_supcon_stats, run_supcon_column_stats, run_supcon_gradient, run_compactness,
                                                         run_compactness_gradient, run_distance_gradient>>(m);
}

}  // namespace fastadv
