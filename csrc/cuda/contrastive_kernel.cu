// CUDA kernels of the contrastive family: a warp per tile row, running the shared row functions
// of fastadv/contrastive.h with 32 lanes (the tiles and the matrix products around them are
// cuBLAS's and ATen's, driven by csrc/contrastive_glue.h). No torch here.
//
// Launch errors are left in the CUDA runtime's last-error slot, where the glue's
// C10_CUDA_KERNEL_LAUNCH_CHECK turns them into a TORCH_CHECK.
#include "common.cuh"
#include "fastadv/contrastive.h"

namespace fastadv {
namespace {

using cuda::kWarpSize;

constexpr int kThreadsPerBlock = 256;  // 8 rows per block

// A warp per row, grid-stride over the rows. The row index is uniform across the warp, so every
// lane reaches the row's collective reductions.
template <typename T, typename Params, void (*Row)(const Params&, int64_t, const cuda::WarpLane&)>
__global__ void __launch_bounds__(kThreadsPerBlock) rows_kernel(Params p, int64_t rows) {
  const cuda::WarpLane lane{threadIdx.x % kWarpSize};
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / kWarpSize);
  for (int64_t r = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarpSize; r < rows; r += warps) {
    Row(p, r, lane);
  }
}

template <typename Params, void (*FloatRow)(const Params&, int64_t, const cuda::WarpLane&),
          void (*DoubleRow)(const Params&, int64_t, const cuda::WarpLane&)>
void launch_rows(const Params& p, int64_t rows, ScalarKind kind, void* stream) {
  if (rows == 0) return;
  const int64_t max_blocks = cuda::max_grid_blocks();
  if (max_blocks == 0) return;
  constexpr int64_t kRowsPerBlock = kThreadsPerBlock / kWarpSize;
  const unsigned blocks = cuda::grid_size(cuda::ceil_div(rows, kRowsPerBlock), max_blocks);
  auto s = static_cast<cudaStream_t>(stream);
  // The glue computes in the accumulation type: float32 (every half input) or float64.
  if (kind == ScalarKind::Float64) {
    rows_kernel<double, Params, DoubleRow><<<blocks, kThreadsPerBlock, 0, s>>>(p, rows);
  } else {
    rows_kernel<float, Params, FloatRow><<<blocks, kThreadsPerBlock, 0, s>>>(p, rows);
  }
}

constexpr int kLanes = kWarpSize;

// The columns' side of a tile: a thread per column anchor, walking down the tile's rows.
template <typename T>
__global__ void __launch_bounds__(kThreadsPerBlock) column_stats_kernel(SupconTileParams p) {
  const int64_t threads = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < p.tile.cols; j += threads) {
    supcon_column_stats_any<T, 1>(p, j);
  }
}

}  // namespace

void launch_supcon_stats_cuda(const SupconTileParams& p, ScalarKind kind, void* stream) {
  launch_rows<SupconTileParams, supcon_stats_row_any<float, kLanes, cuda::WarpLane>,
              supcon_stats_row_any<double, kLanes, cuda::WarpLane>>(p, p.tile.rows, kind, stream);
}

void launch_supcon_column_stats_cuda(const SupconTileParams& p, ScalarKind kind, void* stream) {
  if (p.tile.cols == 0) return;
  const int64_t max_blocks = cuda::max_grid_blocks();
  if (max_blocks == 0) return;
  const unsigned blocks = cuda::grid_size(cuda::ceil_div(p.tile.cols, kThreadsPerBlock), max_blocks);
  auto s = static_cast<cudaStream_t>(stream);
  if (kind == ScalarKind::Float64) {
    column_stats_kernel<double><<<blocks, kThreadsPerBlock, 0, s>>>(p);
  } else {
    column_stats_kernel<float><<<blocks, kThreadsPerBlock, 0, s>>>(p);
  }
}

void launch_supcon_gradient_cuda(const SupconTileParams& p, ScalarKind kind, void* stream) {
  launch_rows<SupconTileParams, supcon_gradient_row_any<float, kLanes, cuda::WarpLane>,
              supcon_gradient_row_any<double, kLanes, cuda::WarpLane>>(p, p.tile.rows, kind, stream);
}

void launch_compactness_cuda(const CompactnessTileParams& p, ScalarKind kind, void* stream) {
  launch_rows<CompactnessTileParams, compactness_row<float, kLanes, cuda::WarpLane>,
              compactness_row<double, kLanes, cuda::WarpLane>>(p, p.tile.rows, kind, stream);
}

void launch_compactness_gradient_cuda(const CompactnessTileParams& p, ScalarKind kind, void* stream) {
  launch_rows<CompactnessTileParams, compactness_gradient_row<float, kLanes, cuda::WarpLane>,
              compactness_gradient_row<double, kLanes, cuda::WarpLane>>(p, p.tile.rows, kind, stream);
}

void launch_distance_tile_cuda(const DistanceTileParams& p, ScalarKind kind, void* stream) {
  launch_rows<DistanceTileParams, distance_tile_row<float, kLanes, cuda::WarpLane>,
              distance_tile_row<double, kLanes, cuda::WarpLane>>(p, p.rows, kind, stream);
}

void launch_distance_gradient_cuda(const DistanceGradientParams& p, ScalarKind kind, void* stream) {
  launch_rows<DistanceGradientParams, distance_gradient_row<float, kLanes, cuda::WarpLane>,
              distance_gradient_row<double, kLanes, cuda::WarpLane>>(p, p.a_count, kind, stream);
}

}  // namespace fastadv
