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

// A warp per row, grid-stride over rows. The row index is uniform across the warp, so every
// lane reaches the row's collective reductions.
template <typename S, LogitsOp Op>
__global__ void __launch_bounds__(kThreadsPerBlock) logits_kernel(LogitsParams p) {
  using T = cuda::accumulate_t<S>;
  const cuda::WarpLane lane{threadIdx.x % kWarpSize};
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

// ----------------------------------------------------------------------------- member ops
// A block per sample (grid-stride over samples): the warps share the M(M+1)/2 pairs of the raw
// Gram, a warp per pair over the columns (masked_dot; the sample's rows, re-read per pair, stay
// in L1/L2), into shared memory; then the block's threads finish the M×M entries, or, backward,
// the coefficients and every (member, column) of the gradient.
constexpr int kMemberThreads = 256;

template <typename T, typename S>
__device__ void masked_gram_raw_block(const MemberParams& p, int64_t b, int64_t y, T* raw) {
  const int64_t members = p.members, pairs = members * (members + 1) / 2;
  const cuda::WarpLane lane{threadIdx.x % kWarpSize};
  for (int64_t q = threadIdx.x / kWarpSize; q < pairs; q += kMemberThreads / kWarpSize) {
    int64_t m, n;
    member_pair(q, members, m, n);
    const T dot = masked_dot<T, kWarpSize, S, DeviceIo<S, T>>(member_row<S>(p, m, b), member_row<S>(p, n, b), p.cols,
                                                              y, lane);
    if (lane.index == 0) raw[m * members + n] = raw[n * members + m] = dot;
  }
}

template <typename S>
__global__ void __launch_bounds__(kMemberThreads) masked_gram_kernel(MemberParams p) {
  using T = cuda::accumulate_t<S>;
  extern __shared__ __align__(16) unsigned char shared[];
  const int64_t members = p.members, entries = members * members;
  T* raw = reinterpret_cast<T*>(shared);
  T* divisors = raw + entries;
  for (int64_t b = blockIdx.x; b < p.rows; b += gridDim.x) {
    masked_gram_raw_block<T, S>(p, b, p.labels[b], raw);
    __syncthreads();
    for (int64_t m = threadIdx.x; m < members; m += blockDim.x) divisors[m] = masked_gram_divisor(raw[m * members + m]);
    __syncthreads();
    S* gram = static_cast<S*>(p.out) + b * entries;
    for (int64_t e = threadIdx.x; e < entries; e += blockDim.x) {
      const int64_t m = e / members, n = e % members;
      gram[e] = cuda::from_acc<S>(masked_gram_entry(raw[e], divisors[m], divisors[n], p.flags[0]));
    }
    __syncthreads();  // raw is rewritten by the next sample
  }
}

template <typename S>
__global__ void __launch_bounds__(kMemberThreads) masked_gram_backward_kernel(MemberParams p) {
  using T = cuda::accumulate_t<S>;
  extern __shared__ __align__(16) unsigned char shared[];
  const int64_t members = p.members, entries = members * members, cols = p.cols;
  T* raw = reinterpret_cast<T*>(shared);
  T* sym = raw + entries;
  T* coefficients = sym + entries;
  T* divisors = coefficients + entries;
  for (int64_t b = blockIdx.x; b < p.rows; b += gridDim.x) {
    const int64_t y = p.labels[b];
    if (p.flags[0]) masked_gram_raw_block<T, S>(p, b, y, raw);  // unnormalised, A = S needs no R
    const S* grad = static_cast<const S*>(p.grad) + b * entries;
    for (int64_t e = threadIdx.x; e < entries; e += blockDim.x) {
      const int64_t m = e / members, n = e % members;
      sym[e] = cuda::to_acc(grad[e]) + cuda::to_acc(grad[n * members + m]);
    }
    __syncthreads();
    if (p.flags[0]) {
      for (int64_t m = threadIdx.x; m < members; m += blockDim.x) divisors[m] = masked_gram_divisor(raw[m * members + m]);
      __syncthreads();
    }
    for (int64_t e = threadIdx.x; e < entries; e += blockDim.x)
      coefficients[e] = masked_gram_coefficient(raw, sym, divisors, members, e / members, e % members, p.flags[0]);
    __syncthreads();
    for (int64_t e = threadIdx.x; e < members * cols; e += blockDim.x) {
      const int64_t m = e / cols, c = e % cols;
      static_cast<S*>(p.out)[(m * p.rows + b) * cols + c] =
          cuda::from_acc<S>(masked_gram_gradient<T, S, DeviceIo<S, T>>(coefficients, p, b, m, c, y));
    }
    __syncthreads();
  }
}

template <MemberOp Op>
void launch_members(bool backward, const MemberParams& p, ScalarKind kind, cudaStream_t stream, int64_t max_blocks) {
  const unsigned blocks = cuda::grid_size(p.rows, max_blocks);
  cuda::dispatch_storage(kind, [&](auto storage) {
    using S = typename decltype(storage)::type;
    using T = cuda::accumulate_t<S>;
    const size_t matrix = static_cast<size_t>(p.members * p.members) * sizeof(T);
    const size_t vector = static_cast<size_t>(p.members) * sizeof(T);
    switch (Op) {
      case MemberOp::masked_gram:  // R (S and A backward) and the divisors in shared memory
        if (backward) {
          masked_gram_backward_kernel<S><<<blocks, kMemberThreads, 3 * matrix + vector, stream>>>(p);
        } else {
          masked_gram_kernel<S><<<blocks, kMemberThreads, matrix + vector, stream>>>(p);
        }
        break;
    }
  });
}

}  // namespace

void launch_logits_member_cuda(MemberOp op, bool backward, const MemberParams& p, ScalarKind kind, void* stream) {
  if (p.rows == 0) return;
  const int64_t max_blocks = cuda::max_grid_blocks();
  if (max_blocks == 0) return;
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
#define FASTADV_LOGITS_MEMBER_LAUNCH(name, schema, backward_schema) \
  case MemberOp::name: launch_members<MemberOp::name>(backward, p, kind, s, max_blocks); break;
  switch (op) { FASTADV_LOGITS_MEMBER_OPS(FASTADV_LOGITS_MEMBER_LAUNCH) }
#undef FASTADV_LOGITS_MEMBER_LAUNCH
}

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
