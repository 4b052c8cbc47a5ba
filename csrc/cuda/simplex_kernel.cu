// CUDA kernels of the simplex family: a thread per row, the row (and, for min_norm_weights, its
// m×m matrix) in registers or local memory, over the shared per-row math of fastadv/simplex.h.
// Rows of at most 32 tasks are small: a row per thread keeps every step of a solver in one
// thread with no synchronisation. No torch here (DESIGN.md, op contract item 7).
//
// Launch errors are left in the CUDA runtime's last-error slot for the glue's
// C10_CUDA_KERNEL_LAUNCH_CHECK.
#include "common.cuh"
#include "fastadv/simplex.h"

namespace fastadv {
namespace {

constexpr int kThreadsPerBlock = 128;

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

}  // namespace

void launch_simplex_project_cuda(const SimplexProjectParams& params, ScalarKind kind, void* stream) {
  launch_rows<simplex_project_kernel_launcher>(params, kind, stream);
}

void launch_simplex_distance_sq_cuda(const SimplexDistanceParams& params, ScalarKind kind, void* stream) {
  launch_rows<simplex_distance_sq_kernel_launcher>(params, kind, stream);
}

void launch_min_norm_weights_cuda(const MinNormParams& params, ScalarKind kind, void* stream) {
  launch_rows<min_norm_weights_kernel_launcher>(params, kind, stream);
}

}  // namespace fastadv
