// CUDA kernels of the logits family: a warp per row, running the shared row algorithms of
// fastadv/logits.h with 32 lanes. No torch here: the glue (logits_glue.h) turns tensors into a
// LogitsParams and reduces the per-row losses.
//
// Launch errors are left in the CUDA runtime's last-error slot, where the glue's
// C10_CUDA_KERNEL_LAUNCH_CHECK turns them into a TORCH_CHECK.
#include "common.cuh"
#include "fastadv/logits.h"

namespace fastadv {
namespace {

using cuda::kWarpSize;

constexpr int kThreadsPerBlock = 256;  // 8 rows per block

template <typename S, typename T>
struct DeviceIo {
  static __device__ __forceinline__ T load(const S* ptr, int64_t j) { return cuda::to_acc(ptr[j]); }
  static __device__ __forceinline__ void store(S* ptr, int64_t j, T v) { ptr[j] = cuda::from_acc<S>(v); }
};

// A row's 32 lanes.
struct WarpLane {
  int64_t index;

  template <typename T>
  __device__ __forceinline__ T sum(T v) const {
    return cuda::warp_sum(v);
  }

  template <typename T>
  __device__ __forceinline__ T max(T v) const {
    return cuda::warp_max(v);
  }
};

// A warp per row, grid-stride over rows. The row index is uniform across the warp, so every
// lane reaches the row's collective reductions.
template <typename S, LogitsOp Op>
__global__ void __launch_bounds__(kThreadsPerBlock) logits_kernel(LogitsParams p) {
  using T = cuda::accumulate_t<S>;
  const WarpLane lane{threadIdx.x % kWarpSize};
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / kWarpSize);
  for (int64_t r = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarpSize; r < p.rows; r += warps) {
    logits_row<T, kWarpSize, S, DeviceIo<S, T>>(Op, p, r, lane);
  }
}

template <LogitsOp Op>
void launch_rows(const LogitsParams& p, ScalarKind kind, cudaStream_t stream, int64_t max_blocks) {
  constexpr int64_t kRowsPerBlock = kThreadsPerBlock / kWarpSize;
  const unsigned blocks = cuda::grid_size(cuda::ceil_div(p.rows, kRowsPerBlock), max_blocks);
  cuda::dispatch_storage(kind, [&](auto storage) {
    using S = typename decltype(storage)::type;
    logits_kernel<S, Op><<<blocks, kThreadsPerBlock, 0, stream>>>(p);
  });
}

}  // namespace

void launch_logits_cuda(LogitsOp op, const LogitsParams& p, ScalarKind kind, void* stream) {
  if (p.rows == 0) return;
  const int64_t max_blocks = cuda::max_grid_blocks();
  if (max_blocks == 0) return;
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
#define FASTADV_LOGITS_LAUNCH(name, schema) \
  case LogitsOp::name: launch_rows<LogitsOp::name>(p, kind, s, max_blocks); break;
  switch (op) { FASTADV_LOGITS_OPS(FASTADV_LOGITS_LAUNCH) }
#undef FASTADV_LOGITS_LAUNCH
}

}  // namespace fastadv
