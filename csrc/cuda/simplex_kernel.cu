// CUDA kernels of the simplex family, over the shared per-row math of fastadv/simplex.h.
// Rows of at most 32 tasks (the register path) are small: a thread per row, the row (and, for
// min_norm_weights, its m×m matrix) in registers or local memory, every step of a solver in one
// thread with no synchronisation. Longer rows of simplex_project and simplex_distance_sq (the wide
// path) run on a warp per row up to kWarpRowTasks coordinates and on a block of kBlockRowThreads
// above, the row read from memory (L1/L2) in each pass of project_wide_row / distance_sq_wide_row.
// No torch here (DESIGN.md, op contract item 7).
//
// Launch errors are left in the CUDA runtime's last-error slot for the glue's
// C10_CUDA_KERNEL_LAUNCH_CHECK.
#include <type_traits>

#include "common.cuh"
#include "fastadv/simplex.h"

namespace fastadv {
namespace {

constexpr int kThreadsPerBlock = 128;
// The wide path: a warp per row up to this many coordinates (a few dozen per lane and pass), a
// block of kBlockRowThreads threads per row above.
constexpr int kWarpRowTasks = 2048;
constexpr int kBlockRowThreads = 256;

template <typename S, typename T>
struct DeviceIo {
  static __device__ __forceinline__ T load(const S* ptr, int64_t j) { return cuda::to_acc(ptr[j]); }
  static __device__ __forceinline__ void store(S* ptr, int64_t j, T v) { ptr[j] = cuda::from_acc<S>(v); }
};

// A row's lanes when a block of Threads threads works on it: warp reductions (butterfly, so every
// lane of a warp holds its total), then the warps' totals through shared memory, added by every
// thread in the same order, so every thread of the block gets the same value. Every thread must
// call each reduction (the row functions' control flow depends only on reduced values).
template <int Threads>
struct BlockLane {
  static constexpr int kWarps = Threads / cuda::kWarpSize;
  int64_t index;

  template <typename T>
  __device__ __forceinline__ T sum(T v) const {
    __shared__ T partial[kWarps];
    v = cuda::warp_sum(v);
    __syncthreads();  // the previous reduction's readers are done with `partial`
    if (threadIdx.x % cuda::kWarpSize == 0) partial[threadIdx.x / cuda::kWarpSize] = v;
    __syncthreads();
    T total = partial[0];
#pragma unroll
    for (int w = 1; w < kWarps; ++w) total += partial[w];
    return total;
  }

  template <typename T>
  __device__ __forceinline__ T max(T v) const {
    __shared__ T partial[kWarps];
    v = cuda::warp_max(v);
    __syncthreads();
    if (threadIdx.x % cuda::kWarpSize == 0) partial[threadIdx.x / cuda::kWarpSize] = v;
    __syncthreads();
    T total = partial[0];
#pragma unroll
    for (int w = 1; w < kWarps; ++w) total = cuda::max_of(total, partial[w]);
    return total;
  }
};

template <typename S, int M>
__global__ void simplex_project_kernel(SimplexProjectParams p) {
  using acc_t = cuda::accumulate_t<S>;
  const int n = p.tasks;
  const S* v = static_cast<const S*>(p.v);
  S* out = static_cast<S*>(p.out);
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; row < p.rows;
       row += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    acc_t values[M], w[M];
    bool mask[M], allowed[M];
    FASTADV_TASK_UNROLL
    for (int i = 0; i < M; ++i) {
      values[i] = i < n ? cuda::to_acc(v[row * n + i]) : acc_t(0);
      mask[i] = i < n && (p.mask == nullptr || p.mask[row * n + i]);
    }
    effective_mask<M>(mask, n, allowed);
    project_row<acc_t, M>(values, allowed, n, w);
    FASTADV_TASK_UNROLL
    for (int i = 0; i < M; ++i) {
      if (i < n) out[row * n + i] = cuda::from_acc<S>(w[i]);
    }
  }
}

template <typename S, int M>
__global__ void simplex_distance_sq_kernel(SimplexDistanceParams p) {
  using acc_t = cuda::accumulate_t<S>;
  const int n = p.tasks;
  const S* w = static_cast<const S*>(p.w);
  S* omega = static_cast<S*>(p.omega);
  S* grad = static_cast<S*>(p.grad);
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; row < p.rows;
       row += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    acc_t values[M], g[M];
    bool achieved[M];
    bool finite = true;
    FASTADV_TASK_UNROLL
    for (int i = 0; i < M; ++i) {
      values[i] = i < n ? cuda::to_acc(w[row * n + i]) : acc_t(0);
      achieved[i] = i < n && p.achieved != nullptr && p.achieved[row * n + i];
      g[i] = acc_t(0);
      finite = finite && is_finite_value(values[i]);
    }
    const TaskSplit<acc_t, M> split = task_split<acc_t, M>(achieved, n);
    const acc_t value = distance_sq_row<acc_t, M>(values, split, n);
    omega[row] = cuda::from_acc<S>(finite ? value : quiet_nan<acc_t>());
    if (grad != nullptr) {
      add_distance_sq_gradient<acc_t, M>(values, split, n, acc_t(1), g);
      FASTADV_TASK_UNROLL
      for (int i = 0; i < M; ++i) {
        if (i < n) grad[row * n + i] = cuda::from_acc<S>(finite ? g[i] : quiet_nan<acc_t>());
      }
    }
  }
}

template <typename S, int M>
__global__ void min_norm_weights_kernel(MinNormParams p) {
  using acc_t = cuda::accumulate_t<S>;
  const int n = p.tasks;
  const S* Q = static_cast<const S*>(p.Q);
  const S* init = static_cast<const S*>(p.init);
  S* w = static_cast<S*>(p.w);
  S* objective = static_cast<S*>(p.objective);
  const acc_t lam = static_cast<acc_t>(p.lam), lr = static_cast<acc_t>(p.lr);
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; row < p.rows;
       row += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    acc_t gram[M][M], start[M], result[M];
    bool achieved[M];
    FASTADV_TASK_UNROLL
    for (int i = 0; i < M; ++i) {
      FASTADV_TASK_UNROLL
      for (int j = 0; j < M; ++j) gram[i][j] = i < n && j < n ? cuda::to_acc(Q[(row * n + i) * n + j]) : acc_t(0);
      start[i] = init != nullptr && i < n ? cuda::to_acc(init[row * n + i]) : acc_t(0);
      achieved[i] = i < n && p.achieved != nullptr && p.achieved[row * n + i];
    }
    const acc_t value =
        min_norm_row<acc_t, M>(gram, achieved, start, init != nullptr, n, lam, p.solver, p.steps, lr, result);
    objective[row] = cuda::from_acc<S>(value);
    FASTADV_TASK_UNROLL
    for (int i = 0; i < M; ++i) {
      if (i < n) w[row * n + i] = cuda::from_acc<S>(result[i]);
    }
  }
}

// The wide path: `Lanes` threads per row (a warp, or the whole block), grid-stride over rows; the
// row index is uniform across a row's threads, so they all reach the row's reductions.
template <typename S, int Lanes>
__global__ void __launch_bounds__(Lanes > cuda::kWarpSize ? Lanes : kThreadsPerBlock)
    simplex_project_wide_kernel(SimplexProjectParams p) {
  using acc_t = cuda::accumulate_t<S>;
  using Lane = typename std::conditional<Lanes == cuda::kWarpSize, cuda::WarpLane, BlockLane<Lanes>>::type;
  const int64_t n = p.tasks;
  const int64_t rows_per_block = blockDim.x / Lanes;
  const S* v = static_cast<const S*>(p.v);
  S* out = static_cast<S*>(p.out);
  const Lane lane{threadIdx.x % Lanes};
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * rows_per_block + threadIdx.x / Lanes; row < p.rows;
       row += static_cast<int64_t>(gridDim.x) * rows_per_block) {
    project_wide_row<acc_t, Lanes, S, DeviceIo<S, acc_t>>(v + row * n, p.mask == nullptr ? nullptr : p.mask + row * n,
                                                          n, out + row * n, lane);
  }
}

template <typename S, int Lanes>
__global__ void __launch_bounds__(Lanes > cuda::kWarpSize ? Lanes : kThreadsPerBlock)
    simplex_distance_sq_wide_kernel(SimplexDistanceParams p) {
  using acc_t = cuda::accumulate_t<S>;
  using Lane = typename std::conditional<Lanes == cuda::kWarpSize, cuda::WarpLane, BlockLane<Lanes>>::type;
  const int64_t n = p.tasks;
  const int64_t rows_per_block = blockDim.x / Lanes;
  const S* w = static_cast<const S*>(p.w);
  S* omega = static_cast<S*>(p.omega);
  S* grad = static_cast<S*>(p.grad);
  const Lane lane{threadIdx.x % Lanes};
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * rows_per_block + threadIdx.x / Lanes; row < p.rows;
       row += static_cast<int64_t>(gridDim.x) * rows_per_block) {
    const acc_t value = distance_sq_wide_row<acc_t, Lanes, S, DeviceIo<S, acc_t>>(
        w + row * n, p.achieved == nullptr ? nullptr : p.achieved + row * n, n,
        grad == nullptr ? nullptr : grad + row * n, lane);
    if (lane.index == 0) omega[row] = cuda::from_acc<S>(value);
  }
}

// Launches the wide kernel<S, Lanes> for the row length: a warp per row (kThreadsPerBlock / 32
// rows per block) or a block per row.
template <template <typename, int> class Kernel, typename Params>
void launch_wide_rows(const Params& params, ScalarKind kind, void* stream) {
  const int64_t max_blocks = cuda::max_grid_blocks();
  if (max_blocks == 0) return;
  const bool per_warp = params.tasks <= kWarpRowTasks;
  const int threads = per_warp ? kThreadsPerBlock : kBlockRowThreads;
  const int64_t rows_per_block = per_warp ? kThreadsPerBlock / cuda::kWarpSize : 1;
  const unsigned blocks = cuda::grid_size(cuda::ceil_div(params.rows, rows_per_block), max_blocks);
  cuda::dispatch_storage(kind, [&](auto storage) {
    using S = typename decltype(storage)::type;
    if (per_warp) {
      Kernel<S, cuda::kWarpSize>::launch(params, blocks, threads, static_cast<cudaStream_t>(stream));
    } else {
      Kernel<S, kBlockRowThreads>::launch(params, blocks, threads, static_cast<cudaStream_t>(stream));
    }
  });
}

// Launches kernel<S, M>(params) over `rows` rows, a thread each, for the storage type of `kind`
// and the task capacity of `tasks`.
template <template <typename, int> class Kernel, typename Params>
void launch_rows(const Params& params, ScalarKind kind, void* stream) {
  const int64_t max_blocks = cuda::max_grid_blocks();
  if (max_blocks == 0) return;
  const unsigned blocks = cuda::grid_size(cuda::ceil_div(params.rows, kThreadsPerBlock), max_blocks);
  cuda::dispatch_storage(kind, [&](auto storage) {
    using S = typename decltype(storage)::type;
    dispatch_tasks(params.tasks, [&](auto tasks) {
      constexpr int M = decltype(tasks)::value;
      Kernel<S, M>::launch(params, blocks, static_cast<cudaStream_t>(stream));
    });
  });
}

#define FASTADV_SIMPLEX_LAUNCHER(kernel, Params)                                  \
  template <typename S, int M>                                                   \
  struct kernel##_launcher {                                                     \
    static void launch(const Params& p, unsigned blocks, cudaStream_t stream) {  \
      kernel<S, M><<<blocks, kThreadsPerBlock, 0, stream>>>(p);                  \
    }                                                                            \
  };
FASTADV_SIMPLEX_LAUNCHER(simplex_project_kernel, SimplexProjectParams)
FASTADV_SIMPLEX_LAUNCHER(simplex_distance_sq_kernel, SimplexDistanceParams)
FASTADV_SIMPLEX_LAUNCHER(min_norm_weights_kernel, MinNormParams)
#undef FASTADV_SIMPLEX_LAUNCHER

#define FASTADV_SIMPLEX_WIDE_LAUNCHER(kernel, Params)                                             \
  template <typename S, int Lanes>                                                               \
  struct kernel##_launcher {                                                                     \
    static void launch(const Params& p, unsigned blocks, int threads, cudaStream_t stream) {     \
      kernel<S, Lanes><<<blocks, threads, 0, stream>>>(p);                                       \
    }                                                                                            \
  };
FASTADV_SIMPLEX_WIDE_LAUNCHER(simplex_project_wide_kernel, SimplexProjectParams)
FASTADV_SIMPLEX_WIDE_LAUNCHER(simplex_distance_sq_wide_kernel, SimplexDistanceParams)
#undef FASTADV_SIMPLEX_WIDE_LAUNCHER

}  // namespace

void launch_simplex_project_cuda(const SimplexProjectParams& params, ScalarKind kind, void* stream) {
  if (params.tasks > kMaxTasks) return launch_wide_rows<simplex_project_wide_kernel_launcher>(params, kind, stream);
  launch_rows<simplex_project_kernel_launcher>(params, kind, stream);
}

void launch_simplex_distance_sq_cuda(const SimplexDistanceParams& params, ScalarKind kind, void* stream) {
  if (params.tasks > kMaxTasks) {
    return launch_wide_rows<simplex_distance_sq_wide_kernel_launcher>(params, kind, stream);
  }
  launch_rows<simplex_distance_sq_kernel_launcher>(params, kind, stream);
}

void launch_min_norm_weights_cuda(const MinNormParams& params, ScalarKind kind, void* stream) {
  launch_rows<min_norm_weights_kernel_launcher>(params, kind, stream);
}

}  // namespace fastadv
