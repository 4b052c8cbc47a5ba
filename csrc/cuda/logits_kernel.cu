// CUDA kernels of the logits family: a warp per row, running the shared row algorithms of
// fastadv/logits.h with 32 lanes. No torch here: the glue in logits.cpp turns tensors into a
// LogitsParams.
//
// Launch errors are left in the CUDA runtime's last-error slot, where the glue's
// C10_CUDA_KERNEL_LAUNCH_CHECK turns them into a TORCH_CHECK.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "fastadv/logits.h"

namespace fastadv {
namespace {

constexpr int kWarpSize = 32;
constexpr int kThreadsPerBlock = 256;  // 8 rows per block
// Grid-stride loops keep the grid at a few waves of a fully occupied device; more blocks only
// add scheduling work.
constexpr int kBlocksPerMultiprocessor = 32;
constexpr int kReduceThreads = 1024;

// Accumulation type of a storage type: double for double, float otherwise.
template <typename S>
struct Accumulate {
  using type = float;
};

template <>
struct Accumulate<double> {
  using type = double;
};

// Storage <-> accumulation conversions. Explicit intrinsics because torch's nvcc flags
// (__CUDA_NO_HALF_CONVERSIONS__ and friends) disable the implicit half/bfloat16 conversions.
__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

__device__ __forceinline__ void assign(float& dst, float v) { dst = v; }
__device__ __forceinline__ void assign(double& dst, double v) { dst = v; }
__device__ __forceinline__ void assign(__half& dst, float v) { dst = __float2half_rn(v); }
__device__ __forceinline__ void assign(__nv_bfloat16& dst, float v) { dst = __float2bfloat16_rn(v); }

template <typename S, typename T>
struct DeviceIo {
  static __device__ __forceinline__ T load(const S* ptr, int64_t j) { return to_acc(ptr[j]); }
  static __device__ __forceinline__ void store(S* ptr, int64_t j, T v) { assign(ptr[j], v); }
};

// fmax rather than `larger`: it is symmetric even when one side is NaN, so every lane of the
// butterfly ends with the same maximum (a NaN still reaches the row's sums and results).
__device__ __forceinline__ float max_of(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double max_of(double a, double b) { return fmax(a, b); }

// A row's 32 lanes. Butterfly (xor) reductions: every lane ends with the same total (a + b ==
// b + a exactly), so all lanes of a row take the same branches and use the same coefficients.
struct WarpLane {
  int64_t index;

  template <typename T>
  __device__ __forceinline__ T sum(T v) const {
#pragma unroll
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
  }

  template <typename T>
  __device__ __forceinline__ T max(T v) const {
#pragma unroll
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) v = max_of(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
  }
};

// A warp per row, grid-stride over rows. The row index is uniform across the warp, so every
// lane reaches the row's collective reductions.
template <typename S, LogitsOp Op>
__global__ void __launch_bounds__(kThreadsPerBlock) logits_kernel(LogitsParams p) {
  using T = typename Accumulate<S>::type;
  const WarpLane lane{threadIdx.x % kWarpSize};
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / kWarpSize);
  for (int64_t r = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarpSize; r < p.rows; r += warps) {
    logits_row<T, kWarpSize, S, DeviceIo<S, T>>(Op, p, r, lane);
  }
}

// mhuber's mean: one block adds the [rows] partial sums in an order fixed by the block size
// alone (strided per thread, then a tree), so the result is the same from run to run. An
// empty input gives 0 / 0 = NaN, torch's mean of an empty tensor.
template <typename T>
__global__ void __launch_bounds__(kReduceThreads) mhuber_mean_kernel(const T* partial, int64_t rows, double count,
                                                                     T* total) {
  __shared__ T warp_sums[kReduceThreads / kWarpSize];
  const WarpLane lane{threadIdx.x % kWarpSize};
  T sum = 0;
  for (int64_t r = threadIdx.x; r < rows; r += kReduceThreads) sum += partial[r];
  sum = lane.sum(sum);
  if (lane.index == 0) warp_sums[threadIdx.x / kWarpSize] = sum;
  __syncthreads();
  if (threadIdx.x < kWarpSize) {
    sum = lane.sum(warp_sums[threadIdx.x]);
    if (threadIdx.x == 0) *total = sum / static_cast<T>(count);
  }
}

template <typename S, LogitsOp Op>
void launch_rows(const LogitsParams& p, cudaStream_t stream, int64_t max_blocks) {
  constexpr int64_t kRowsPerBlock = kThreadsPerBlock / kWarpSize;
  const int64_t blocks = (p.rows + kRowsPerBlock - 1) / kRowsPerBlock;
  logits_kernel<S, Op><<<static_cast<unsigned>(blocks < max_blocks ? blocks : max_blocks), kThreadsPerBlock, 0,
                         stream>>>(p);
}

template <typename S>
void launch_typed(LogitsOp op, const LogitsParams& p, cudaStream_t stream, int64_t max_blocks) {
  switch (op) {
    case LogitsOp::SoftCrossEntropy: launch_rows<S, LogitsOp::SoftCrossEntropy>(p, stream, max_blocks); break;
    case LogitsOp::SmoothedCrossEntropy: launch_rows<S, LogitsOp::SmoothedCrossEntropy>(p, stream, max_blocks); break;
    case LogitsOp::BoostedCrossEntropy: launch_rows<S, LogitsOp::BoostedCrossEntropy>(p, stream, max_blocks); break;
    case LogitsOp::TradesKl: launch_rows<S, LogitsOp::TradesKl>(p, stream, max_blocks); break;
    case LogitsOp::MartLoss: launch_rows<S, LogitsOp::MartLoss>(p, stream, max_blocks); break;
    case LogitsOp::MarginSqHinge: launch_rows<S, LogitsOp::MarginSqHinge>(p, stream, max_blocks); break;
    case LogitsOp::Mhuber: launch_rows<S, LogitsOp::Mhuber>(p, stream, max_blocks); break;
    case LogitsOp::LogitPairing: launch_rows<S, LogitsOp::LogitPairing>(p, stream, max_blocks); break;
    case LogitsOp::LogitSqueeze: launch_rows<S, LogitsOp::LogitSqueeze>(p, stream, max_blocks); break;
    case LogitsOp::MhuberMovingAverage: launch_rows<S, LogitsOp::MhuberMovingAverage>(p, stream, max_blocks); break;
  }
}

template <typename T>
void launch_mhuber_mean(const LogitsParams& p, void* total, cudaStream_t stream) {
  const double count = static_cast<double>(p.rows) * static_cast<double>(p.cols);
  mhuber_mean_kernel<T><<<1, kReduceThreads, 0, stream>>>(static_cast<const T*>(p.loss), p.rows, count,
                                                          static_cast<T*>(total));
}

}  // namespace

void launch_logits_cuda(LogitsOp op, const LogitsParams& p, ScalarKind kind, void* mhuber_total, void* stream) {
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (p.rows > 0) {
    int device = 0;
    int multiprocessors = 0;
    // A failed query leaves its error in the last-error slot for the glue to report.
    if (cudaGetDevice(&device) != cudaSuccess) return;
    if (cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) return;
    const int64_t max_blocks = static_cast<int64_t>(multiprocessors) * kBlocksPerMultiprocessor;
    switch (kind) {
      case ScalarKind::Float32: launch_typed<float>(op, p, s, max_blocks); break;
      case ScalarKind::Float64: launch_typed<double>(op, p, s, max_blocks); break;
      case ScalarKind::Float16: launch_typed<__half>(op, p, s, max_blocks); break;
      case ScalarKind::BFloat16: launch_typed<__nv_bfloat16>(op, p, s, max_blocks); break;
    }
  }
  // Also on an empty input, which has no partial sums: the mean is then NaN.
  if (op == LogitsOp::Mhuber || op == LogitsOp::MhuberMovingAverage) {
    if (kind == ScalarKind::Float64) {
      launch_mhuber_mean<double>(p, mhuber_total, s);
    } else {
      launch_mhuber_mean<float>(p, mhuber_total, s);
    }
  }
}

}  // namespace fastadv
