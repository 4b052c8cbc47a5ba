// CUDA kernels of the pgd family. No torch here (DESIGN.md, op contract item 7): the glue in
// pgd.cpp turns tensors into a PgdStepParams, and this file compiles in seconds.
//
// Launch errors are left in the CUDA runtime's last-error slot, where the glue's
// C10_CUDA_KERNEL_LAUNCH_CHECK turns them into a TORCH_CHECK; nothing here reads that slot,
// so nothing here can clear an error before the glue sees it.
#include "common.cuh"
#include "fastadv/pgd.h"

namespace fastadv {
namespace {

using cuda::kWarpSize;

constexpr int kThreadsPerBlock = 256;
// An L2 row is spread over enough threads that each loads about this many packs per pass:
// fewer leaves too little independent memory traffic per thread, more too few threads per row.
constexpr int kPacksPerThread = 4;

// VEC consecutive elements moved as one access: with VEC * sizeof(T) == 16 the alignment makes
// the compiler emit 128-bit loads and stores; VEC == 1 is the plain scalar path.
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

template <typename T, int VEC>
__device__ __forceinline__ Pack<T, VEC> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, VEC>*>(p);
}

template <typename T, int VEC>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, VEC>& pack) {
  *reinterpret_cast<Pack<T, VEC>*>(p) = pack;
}

// The per-sample value when a per-sample tensor is given, the scalar otherwise.
template <typename acc_t>
__device__ __forceinline__ acc_t sample_value(const void* per_sample, double scalar, int64_t row) {
  return per_sample != nullptr ? static_cast<const acc_t*>(per_sample)[row] : static_cast<acc_t>(scalar);
}

// No __restrict__ anywhere: out may be x_adv (in place) and nothing stops a caller from passing
// x as x_adv too. Every element is loaded before it is stored, at the same index, by the same
// thread, so the aliasing is harmless.
template <typename T, int VEC>
__global__ void pgd_linf_kernel(PgdStepParams p) {
  using acc_t = cuda::accumulate_t<T>;
  T* out = static_cast<T*>(p.out);
  const T* x_adv = static_cast<const T*>(p.x_adv);
  const T* grad = static_cast<const T*>(p.grad);
  const T* x = static_cast<const T*>(p.x);
  const acc_t lo = static_cast<acc_t>(p.clip_min);
  const acc_t hi = static_cast<acc_t>(p.clip_max);
  // The 64-bit division that finds the row is skipped when no per-row input exists.
  const bool per_row = p.eps_per_sample != nullptr || p.alpha_per_sample != nullptr || p.active != nullptr;
  const int64_t n = p.rows * p.row_size;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x * VEC;
  // The launcher picks VEC > 1 only when VEC divides row_size, so a pack never spans two rows.
  for (int64_t i = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * VEC; i < n; i += stride) {
    acc_t eps = static_cast<acc_t>(p.eps);
    acc_t alpha = static_cast<acc_t>(p.alpha);
    if (per_row) {
      const int64_t row = i / p.row_size;
      if (p.active != nullptr && !p.active[row]) {
        if (out != x_adv) store_pack<T, VEC>(out + i, load_pack<T, VEC>(x_adv + i));
        continue;
      }
      eps = sample_value<acc_t>(p.eps_per_sample, p.eps, row);
      alpha = sample_value<acc_t>(p.alpha_per_sample, p.alpha, row);
    }
    const Pack<T, VEC> a = load_pack<T, VEC>(x_adv + i);
    const Pack<T, VEC> g = load_pack<T, VEC>(grad + i);
    const Pack<T, VEC> o = load_pack<T, VEC>(x + i);
    Pack<T, VEC> r;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      r.v[j] = cuda::from_acc<T>(pgd_linf_element<acc_t>(
          cuda::to_acc(a.v[j]), cuda::to_acc(g.v[j]), cuda::to_acc(o.v[j]), eps, alpha, lo, hi));
    }
    store_pack<T, VEC>(out + i, r);
  }
}

template <typename acc_t>
struct L2Sums {
  acc_t grad_sq;
  acc_t delta_sq;
  acc_t delta_dot_grad;
};

// Every lane ends with the totals (cuda::warp_sum), so all threads of a row use the same
// coefficients.
template <typename acc_t>
__device__ __forceinline__ L2Sums<acc_t> warp_sum(L2Sums<acc_t> s) {
  return {cuda::warp_sum(s.grad_sq), cuda::warp_sum(s.delta_sq), cuda::warp_sum(s.delta_dot_grad)};
}

struct WarpReduce {
  template <typename acc_t>
  __device__ __forceinline__ L2Sums<acc_t> operator()(L2Sums<acc_t> s) const {
    return warp_sum(s);
  }
};

// blockDim.x is a multiple of the warp size and at most 32 warps (the launcher's choice).
template <typename acc_t>
struct BlockReduce {
  L2Sums<acc_t>* partial;  // one slot per warp, in shared memory
  L2Sums<acc_t>* total;    // in shared memory

  __device__ __forceinline__ L2Sums<acc_t> operator()(L2Sums<acc_t> s) const {
    const int lane = threadIdx.x % kWarpSize;
    const int warp = threadIdx.x / kWarpSize;
    const int warps = blockDim.x / kWarpSize;
    s = warp_sum(s);
    if (lane == 0) partial[warp] = s;
    __syncthreads();
    if (warp == 0) {
      s = lane < warps ? partial[lane] : L2Sums<acc_t>{acc_t(0), acc_t(0), acc_t(0)};
      s = warp_sum(s);
      if (lane == 0) *total = s;
    }
    // Also orders this row's reads of `partial` (warp 0, above) before the next row's writes,
    // and the next row's write of `total` comes after its first barrier, which every thread
    // reaches only after reading this row's `total`.
    __syncthreads();
    return *total;
  }
};

// One L2 step of one row by `threads` cooperating threads (a warp or a block), `thread` being
// this one's rank among them. All of them must call this for the same row: the early return
// of an inactive row is uniform across them, so `reduce` sees every thread or none.
template <typename T, int VEC, typename Reduce>
__device__ __forceinline__ void pgd_l2_row(const PgdStepParams& p, int64_t row, int thread, int threads,
                                           Reduce reduce) {
  using acc_t = cuda::accumulate_t<T>;
  const int64_t n = p.row_size;
  const int64_t offset = row * n;
  const int64_t first = static_cast<int64_t>(thread) * VEC;
  const int64_t stride = static_cast<int64_t>(threads) * VEC;
  T* out = static_cast<T*>(p.out) + offset;
  const T* x_adv = static_cast<const T*>(p.x_adv) + offset;
  if (p.active != nullptr && !p.active[row]) {
    if (out != x_adv) {
      for (int64_t i = first; i < n; i += stride) store_pack<T, VEC>(out + i, load_pack<T, VEC>(x_adv + i));
    }
    return;
  }
  const T* grad = static_cast<const T*>(p.grad) + offset;
  const T* x = static_cast<const T*>(p.x) + offset;

  L2Sums<acc_t> s{acc_t(0), acc_t(0), acc_t(0)};
  for (int64_t i = first; i < n; i += stride) {
    const Pack<T, VEC> a = load_pack<T, VEC>(x_adv + i);
    const Pack<T, VEC> g = load_pack<T, VEC>(grad + i);
    const Pack<T, VEC> o = load_pack<T, VEC>(x + i);
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const acc_t gj = cuda::to_acc(g.v[j]);
      const acc_t d = cuda::to_acc(a.v[j]) - cuda::to_acc(o.v[j]);
      s.grad_sq += gj * gj;
      s.delta_sq += d * d;
      s.delta_dot_grad += d * gj;
    }
  }
  s = reduce(s);
  const PgdL2Coefficients<acc_t> c = pgd_l2_coefficients<acc_t>(
      s.grad_sq, s.delta_sq, s.delta_dot_grad, sample_value<acc_t>(p.eps_per_sample, p.eps, row),
      sample_value<acc_t>(p.alpha_per_sample, p.alpha, row));
  const acc_t lo = static_cast<acc_t>(p.clip_min);
  const acc_t hi = static_cast<acc_t>(p.clip_max);

  // The same elements as the first pass, by the same thread: short rows are still in L1.
  for (int64_t i = first; i < n; i += stride) {
    const Pack<T, VEC> a = load_pack<T, VEC>(x_adv + i);
    const Pack<T, VEC> g = load_pack<T, VEC>(grad + i);
    const Pack<T, VEC> o = load_pack<T, VEC>(x + i);
    Pack<T, VEC> r;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      r.v[j] = cuda::from_acc<T>(pgd_l2_element<acc_t>(
          cuda::to_acc(a.v[j]), cuda::to_acc(g.v[j]), cuda::to_acc(o.v[j]), c, lo, hi));
    }
    store_pack<T, VEC>(out + i, r);
  }
}

// Short rows: a warp per row, several rows per block, no shared memory and no barrier. Lanes
// past the end of a row shorter than the warp contribute zeros to the sums.
template <typename T, int VEC>
__global__ void pgd_l2_warp_per_row_kernel(PgdStepParams p) {
  const int lane = threadIdx.x % kWarpSize;
  const int64_t first = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarpSize;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * blockDim.x / kWarpSize;
  for (int64_t row = first; row < p.rows; row += warps) {
    pgd_l2_row<T, VEC>(p, row, lane, kWarpSize, WarpReduce{});
  }
}

// Long rows: a block per row. The row loop is uniform across the block, so the barriers in
// BlockReduce are reached by every thread.
template <typename T, int VEC>
__global__ void pgd_l2_block_per_row_kernel(PgdStepParams p) {
  using acc_t = cuda::accumulate_t<T>;
  __shared__ L2Sums<acc_t> partial[kWarpSize];
  __shared__ L2Sums<acc_t> total;
  for (int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) {
    pgd_l2_row<T, VEC>(p, row, threadIdx.x, blockDim.x, BlockReduce<acc_t>{partial, &total});
  }
}

using cuda::ceil_div;
using cuda::grid_size;

template <typename T, int VEC>
void launch_for_pack(const PgdStepParams& p, cudaStream_t stream, int64_t max_blocks) {
  const int64_t packs_per_row = p.row_size / VEC;
  if (p.norm == PgdNorm::Linf) {
    const int64_t blocks = ceil_div(p.rows * packs_per_row, kThreadsPerBlock);
    pgd_linf_kernel<T, VEC><<<grid_size(blocks, max_blocks), kThreadsPerBlock, 0, stream>>>(p);
  } else if (packs_per_row <= static_cast<int64_t>(kWarpSize) * kPacksPerThread) {
    const int64_t blocks = ceil_div(p.rows, kThreadsPerBlock / kWarpSize);
    pgd_l2_warp_per_row_kernel<T, VEC><<<grid_size(blocks, max_blocks), kThreadsPerBlock, 0, stream>>>(p);
  } else {
    // The smallest power of two from 64 to 512 threads that keeps kPacksPerThread per thread:
    // a CIFAR row (3072 floats, 768 packs) gets 256, an ImageNet row 512.
    const int64_t wanted = ceil_div(packs_per_row, kPacksPerThread);
    int threads = 2 * kWarpSize;
    while (threads < 512 && threads < wanted) threads *= 2;
    pgd_l2_block_per_row_kernel<T, VEC><<<grid_size(p.rows, max_blocks), threads, 0, stream>>>(p);
  }
}

bool is_aligned(const void* ptr, size_t bytes) { return reinterpret_cast<uintptr_t>(ptr) % bytes == 0; }

template <typename T>
void launch_typed(const PgdStepParams& p, cudaStream_t stream, int64_t max_blocks) {
  constexpr int kVec = 16 / sizeof(T);
  // Rows start at multiples of row_size, so aligned base pointers and kVec | row_size make
  // every pack of every row 16-byte aligned.
  const bool vectorised = p.row_size % kVec == 0 && is_aligned(p.out, 16) && is_aligned(p.x_adv, 16) &&
                          is_aligned(p.grad, 16) && is_aligned(p.x, 16);
  if (vectorised) {
    launch_for_pack<T, kVec>(p, stream, max_blocks);
  } else {
    launch_for_pack<T, 1>(p, stream, max_blocks);
  }
}

}  // namespace

void launch_pgd_step_cuda(const PgdStepParams& params, ScalarKind kind, void* stream) {
  if (params.rows == 0 || params.row_size == 0) return;
  const int64_t max_blocks = cuda::max_grid_blocks();
  if (max_blocks == 0) return;
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  cuda::dispatch_storage(kind, [&](auto storage) {
    launch_typed<typename decltype(storage)::type>(params, s, max_blocks);
  });
}

// ----------------------------------------------------------------------------- UDR
namespace {

// Sum or maximum over a block's threads; every thread ends with the result.
template <typename acc_t, bool Max>
__device__ acc_t udr_block_reduce(acc_t v, acc_t* shared) {
  v = Max ? cuda::warp_max(v) : cuda::warp_sum(v);
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  __syncthreads();  // `shared` may still be read by a previous reduction
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < static_cast<int>(blockDim.x / kWarpSize) ? shared[lane] : (Max ? acc_t(0) : acc_t(0));
  return Max ? cuda::warp_max(v) : cuda::warp_sum(v);
}

// A block per row, grid-stride over rows: as udr_row (csrc/cpu/pgd.cpp), the elementwise costs in
// one pass, linf's reductions, then the write.
template <typename T>
__global__ void __launch_bounds__(kThreadsPerBlock) udr_step_kernel(UdrStepParams p) {
  using acc_t = cuda::accumulate_t<T>;
  __shared__ acc_t shared[kThreadsPerBlock / kWarpSize];
  const acc_t lo = static_cast<acc_t>(p.clip_min), hi = static_cast<acc_t>(p.clip_max);
  const acc_t eta = static_cast<acc_t>(p.eta), lam = static_cast<acc_t>(p.lam), tau = static_cast<acc_t>(p.tau);
  const acc_t* eps_ps = static_cast<const acc_t*>(p.eps_per_sample);
  for (int64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
    const int64_t offset = r * p.row_size;
    T* out = static_cast<T*>(p.out) + offset;
    const T* x_adv = static_cast<const T*>(p.x_adv) + offset;
    const T* grad = static_cast<const T*>(p.grad) + offset;
    const T* x = static_cast<const T*>(p.x) + offset;
    if (p.active != nullptr && !p.active[r]) {
      if (out != x_adv) {
        for (int64_t i = threadIdx.x; i < p.row_size; i += blockDim.x) out[i] = x_adv[i];
      }
      continue;
    }
    const acc_t eps = eps_ps ? eps_ps[r] : static_cast<acc_t>(p.eps);
    if (udr_elementwise(p.cost)) {  // the same branch for the whole block: no reduction
      for (int64_t i = threadIdx.x; i < p.row_size; i += blockDim.x) {
        const acc_t x_int = udr_intermediate<acc_t>(cuda::to_acc(x_adv[i]), cuda::to_acc(grad[i]), eta);
        out[i] = cuda::from_acc<T>(
            udr_elementwise_element<acc_t>(x_int, cuda::to_acc(x[i]), eps, eta * lam, tau, p.cost, lo, hi));
      }
      continue;
    }
    acc_t partial = 0;
    for (int64_t i = threadIdx.x; i < p.row_size; i += blockDim.x) {
      const acc_t d = udr_intermediate<acc_t>(cuda::to_acc(x_adv[i]), cuda::to_acc(grad[i]), eta) - cuda::to_acc(x[i]);
      partial = cuda::max_of(partial, d < acc_t(0) ? -d : d);
    }
    const acc_t c = udr_block_reduce<acc_t, true>(partial, shared);
    acc_t count = 0;
    for (int64_t i = threadIdx.x; i < p.row_size; i += blockDim.x) {
      const acc_t d = udr_intermediate<acc_t>(cuda::to_acc(x_adv[i]), cuda::to_acc(grad[i]), eta) - cuda::to_acc(x[i]);
      count += (d < acc_t(0) ? -d : d) == c ? acc_t(1) : acc_t(0);
    }
    const acc_t ties = udr_block_reduce<acc_t, false>(count, shared);
    const acc_t coefficient = udr_linf_coefficient<acc_t>(c, ties, eps, eta, lam, tau);
    for (int64_t i = threadIdx.x; i < p.row_size; i += blockDim.x) {
      const acc_t x_int = udr_intermediate<acc_t>(cuda::to_acc(x_adv[i]), cuda::to_acc(grad[i]), eta);
      out[i] = cuda::from_acc<T>(udr_linf_element<acc_t>(x_int, cuda::to_acc(x[i]), c, coefficient, lo, hi));
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreadsPerBlock) soft_cost_kernel(SoftCostParams p) {
  using acc_t = cuda::accumulate_t<T>;
  __shared__ acc_t shared[kThreadsPerBlock / kWarpSize];
  const acc_t* eps_ps = static_cast<const acc_t*>(p.eps_per_sample);
  for (int64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
    const T* x_adv = static_cast<const T*>(p.x_adv) + r * p.row_size;
    const T* x = static_cast<const T*>(p.x) + r * p.row_size;
    const bool sum = p.cost == UdrCost::Pixel;  // Σ|d| for pixel's mean, max |d| otherwise
    acc_t partial = 0;
    for (int64_t i = threadIdx.x; i < p.row_size; i += blockDim.x) {
      const acc_t d = cuda::to_acc(x_adv[i]) - cuda::to_acc(x[i]);
      const acc_t magnitude = d < acc_t(0) ? -d : d;
      partial = sum ? partial + magnitude : cuda::max_of(partial, magnitude);
    }
    const acc_t reduced = sum ? udr_block_reduce<acc_t, false>(partial, shared) : udr_block_reduce<acc_t, true>(partial, shared);
    if (threadIdx.x == 0) {
      static_cast<acc_t*>(p.out)[r] = udr_statistic<acc_t>(reduced, p.row_size, eps_ps ? eps_ps[r] : static_cast<acc_t>(p.eps),
                                                           static_cast<acc_t>(p.tau), p.cost);
    }
  }
}

}  // namespace

void launch_udr_step_cuda(const UdrStepParams& params, ScalarKind kind, void* stream) {
  if (params.rows == 0 || params.row_size == 0) return;
  const int64_t max_blocks = cuda::max_grid_blocks();
  if (max_blocks == 0) return;
  const unsigned blocks = cuda::grid_size(params.rows, max_blocks);
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  cuda::dispatch_storage(kind, [&](auto storage) {
    udr_step_kernel<typename decltype(storage)::type><<<blocks, kThreadsPerBlock, 0, s>>>(params);
  });
}

void launch_soft_cost_cuda(const SoftCostParams& params, ScalarKind kind, void* stream) {
  if (params.rows == 0) return;
  const int64_t max_blocks = cuda::max_grid_blocks();
  if (max_blocks == 0) return;
  const unsigned blocks = cuda::grid_size(params.rows, max_blocks);
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  cuda::dispatch_storage(kind, [&](auto storage) {
    soft_cost_kernel<typename decltype(storage)::type><<<blocks, kThreadsPerBlock, 0, s>>>(params);
  });
}

}  // namespace fastadv
