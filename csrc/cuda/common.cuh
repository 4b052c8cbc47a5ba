// What the CUDA kernels of every family share: the accumulation type of a storage type and the
// conversions between them, warp reductions, the grid size of grid-stride kernels and the
// storage-type dispatch. Included by every csrc/cuda/<family>_kernel.cu; no torch here
// (DESIGN.md, op contract item 7).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "fastadv/common.h"

namespace fastadv {
namespace cuda {

constexpr int kWarpSize = 32;
// Grid-stride loops keep the grid at a few waves of a fully occupied device; more blocks only
// add scheduling work.
constexpr int kBlocksPerMultiprocessor = 32;

// Accumulation type of a storage type: double for double, float otherwise (DESIGN.md, numerics).
template <typename S>
struct Accumulate {
  using type = float;
};

template <>
struct Accumulate<double> {
  using type = double;
};

template <typename S>
using accumulate_t = typename Accumulate<S>::type;

// Storage <-> accumulation conversions. Explicit intrinsics because torch's nvcc flags
// (__CUDA_NO_HALF_CONVERSIONS__ and friends) disable the implicit half/bfloat16 conversions.
__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename S>
__device__ __forceinline__ S from_acc(accumulate_t<S> v) {
  return v;
}

template <>
__device__ __forceinline__ __half from_acc<__half>(float v) {
  return __float2half_rn(v);
}

template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// fmax rather than a comparison: it is symmetric even when one side is NaN, so every lane of a
// butterfly ends with the same maximum.
__device__ __forceinline__ float max_of(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double max_of(double a, double b) { return fmax(a, b); }

// Butterfly (xor) reductions over a warp: every lane ends with the same total (a + b == b + a
// exactly), so all lanes take the same branches and use the same coefficients afterwards.
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

template <typename T>
__device__ __forceinline__ T warp_max(T v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) v = max_of(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// A row's 32 lanes (the shared row functions' `lane`; the CPU's is fastadv::SingleLane).
struct WarpLane {
  int64_t index;

  template <typename T>
  __device__ __forceinline__ T sum(T v) const {
    return warp_sum(v);
  }

  template <typename T>
  __device__ __forceinline__ T max(T v) const {
    return warp_max(v);
  }
};

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The most blocks a grid-stride kernel gets on the current device, or 0 when the device query
// fails: the launcher then returns without launching and the error stays in the runtime's
// last-error slot, where the glue's C10_CUDA_KERNEL_LAUNCH_CHECK reports it.
inline int64_t max_grid_blocks() {
  int device = 0;
  int multiprocessors = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return 0;
  if (cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) return 0;
  return static_cast<int64_t>(multiprocessors) * kBlocksPerMultiprocessor;
}

inline unsigned grid_size(int64_t blocks_needed, int64_t max_blocks) {
  return static_cast<unsigned>(blocks_needed < max_blocks ? blocks_needed : max_blocks);
}

template <typename S>
struct Storage {
  using type = S;
};

// Calls body(Storage<S>{}) with the storage type of `kind`.
template <typename Body>
void dispatch_storage(ScalarKind kind, const Body& body) {
  switch (kind) {
    case ScalarKind::Float32: body(Storage<float>{}); break;
    case ScalarKind::Float64: body(Storage<double>{}); break;
    case ScalarKind::Float16: body(Storage<__half>{}); break;
    case ScalarKind::BFloat16: body(Storage<__nv_bfloat16>{}); break;
  }
}

}  // namespace cuda
}  // namespace fastadv
