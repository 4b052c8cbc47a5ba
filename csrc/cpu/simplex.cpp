// CPU kernels of the simplex family: parallel over blocks of rows; within a block, the rows run
// side by side in the lanes of a vector. A block's inputs are first transposed into [task][row]
// arrays, so that the `omp simd` loop over its rows reads and writes whole vectors, and each
// lane runs the shared per-row math of fastadv/simplex.h (the same math the CUDA threads run),
// with the row's coordinates unrolled (code compiled for each m from 1 to 8; 16 and 32 padded).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>

#include "../simplex_glue.h"
#include "fastadv/simplex.h"

namespace fastadv {
namespace {

// Rows per block: a vector's lanes (16 floats with AVX-512) for the exact sizes; the padded sizes
// run a row at a time (their [M][M] matrices would not fit the registers of a block anyway).
template <int M>
constexpr int block_rows() {
  return M <= 8 ? 16 : 1;
}

template <typename T, int M>
FASTADV_CPU_CLONES __attribute__((flatten)) void project_rows(const SimplexProjectParams& p, int64_t begin,
                                                              int64_t end) {
  constexpr int B = block_rows<M>();
  const int n = p.tasks;
  const T* v = static_cast<const T*>(p.v);
  T* out = static_cast<T*>(p.out);
  for (int64_t start = begin; start < end; start += B) {
    const int count = static_cast<int>(std::min<int64_t>(B, end - start));
    T values[M][B], results[M][B];
    bool masks[M][B];
    for (int r = 0; r < B; ++r) {
      const int64_t row = start + (r < count ? r : 0);
      for (int i = 0; i < M; ++i) {
        values[i][r] = i < n ? v[row * n + i] : T(0);
        masks[i][r] = i < n && (p.mask == nullptr || p.mask[row * n + i]);
      }
    }
#pragma omp simd
    for (int r = 0; r < B; ++r) {
      T row_values[M], row_out[M];
      bool row_mask[M], allowed[M];
      FASTADV_TASK_UNROLL
      for (int i = 0; i < M; ++i) {
        row_values[i] = values[i][r];
        row_mask[i] = masks[i][r];
      }
      effective_mask<M>(row_mask, n, allowed);
      project_row<T, M>(row_values, allowed, n, row_out);
      FASTADV_TASK_UNROLL
      for (int i = 0; i < M; ++i) results[i][r] = row_out[i];
    }
    for (int r = 0; r < count; ++r) {
      for (int i = 0; i < n; ++i) out[(start + r) * n + i] = results[i][r];
    }
  }
}

template <typename T, int M>
FASTADV_CPU_CLONES __attribute__((flatten)) void distance_rows(const SimplexDistanceParams& p, int64_t begin,
                                                               int64_t end) {
  constexpr int B = block_rows<M>();
  const int n = p.tasks;
  const T* w = static_cast<const T*>(p.w);
  T* omega = static_cast<T*>(p.omega);
  T* grad = static_cast<T*>(p.grad);
  const bool want_grad = grad != nullptr;
  for (int64_t start = begin; start < end; start += B) {
    const int count = static_cast<int>(std::min<int64_t>(B, end - start));
    T values[M][B], grads[M][B], omegas[B];
    bool achieved[M][B];
    for (int r = 0; r < B; ++r) {
      const int64_t row = start + (r < count ? r : 0);
      for (int i = 0; i < M; ++i) {
        values[i][r] = i < n ? w[row * n + i] : T(0);
        achieved[i][r] = i < n && p.achieved != nullptr && p.achieved[row * n + i];
      }
    }
#pragma omp simd
    for (int r = 0; r < B; ++r) {
      T row_values[M], row_grad[M];
      bool row_achieved[M];
      bool finite = true;
      FASTADV_TASK_UNROLL
      for (int i = 0; i < M; ++i) {
        row_values[i] = values[i][r];
        row_achieved[i] = achieved[i][r];
        row_grad[i] = T(0);
        finite = finite && is_finite_value(row_values[i]);
      }
      const TaskSplit<T, M> split = task_split<T, M>(row_achieved, n);
      const T value = distance_sq_row<T, M>(row_values, split, n);
      add_distance_sq_gradient<T, M>(row_values, split, n, T(1), row_grad);
      omegas[r] = finite ? value : quiet_nan<T>();
      FASTADV_TASK_UNROLL
      for (int i = 0; i < M; ++i) grads[i][r] = finite ? row_grad[i] : quiet_nan<T>();
    }
    for (int r = 0; r < count; ++r) {
      omega[start + r] = omegas[r];
      if (want_grad) {
        for (int i = 0; i < n; ++i) grad[(start + r) * n + i] = grads[i][r];
      }
    }
  }
}

template <typename T, int M>
FASTADV_CPU_CLONES __attribute__((flatten)) void min_norm_rows(const MinNormParams& p, int64_t begin, int64_t end) {
  constexpr int B = block_rows<M>();
  const int n = p.tasks;
  const T* Q = static_cast<const T*>(p.Q);
  const T* init = static_cast<const T*>(p.init);
  T* w = static_cast<T*>(p.w);
  T* objective = static_cast<T*>(p.objective);
  const bool has_init = init != nullptr;
  const T lam = static_cast<T>(p.lam), lr = static_cast<T>(p.lr);
  const int steps = p.steps;
  const SimplexSolver solver = p.solver;
  for (int64_t start = begin; start < end; start += B) {
    const int count = static_cast<int>(std::min<int64_t>(B, end - start));
    T grams[M][M][B], inits[M][B], results[M][B], objectives[B];
    bool achieved[M][B];
    for (int r = 0; r < B; ++r) {
      const int64_t row = start + (r < count ? r : 0);
      for (int i = 0; i < M; ++i) {
        for (int j = 0; j < M; ++j) grams[i][j][r] = i < n && j < n ? Q[(row * n + i) * n + j] : T(0);
        inits[i][r] = has_init && i < n ? init[row * n + i] : T(0);
        achieved[i][r] = i < n && p.achieved != nullptr && p.achieved[row * n + i];
      }
    }
#pragma omp simd
    for (int r = 0; r < B; ++r) {
      T row_gram[M][M], row_init[M], row_w[M];
      bool row_achieved[M];
      FASTADV_TASK_UNROLL
      for (int i = 0; i < M; ++i) {
        FASTADV_TASK_UNROLL
        for (int j = 0; j < M; ++j) row_gram[i][j] = grams[i][j][r];
        row_init[i] = inits[i][r];
        row_achieved[i] = achieved[i][r];
      }
      objectives[r] = min_norm_row<T, M>(row_gram, row_achieved, row_init, has_init, n, lam, solver, steps, lr, row_w);
      FASTADV_TASK_UNROLL
      for (int i = 0; i < M; ++i) results[i][r] = row_w[i];
    }
    for (int r = 0; r < count; ++r) {
      objective[start + r] = objectives[r];
      for (int i = 0; i < n; ++i) w[(start + r) * n + i] = results[i][r];
    }
  }
}

// Rows per parallel task: enough work to amortise the scheduling.
inline int64_t grain_for(int tasks, int64_t work_per_task) {
  return std::max<int64_t>(64, 65536 / std::max<int64_t>(1, tasks * work_per_task));
}

template <typename Body>
void dispatch_float(const at::Tensor& t, const Body& body) {
  switch (t.scalar_type()) {
    case at::kFloat: body(float{}); break;
    case at::kDouble: body(double{}); break;
    default:
      TORCH_CHECK(false, "fastadv: the CPU simplex kernels support float32 and float64, got ", t.scalar_type());
  }
}

void run_project_cpu(const SimplexProjectParams& p, const at::Tensor& v) {
  dispatch_float(v, [&](auto zero) {
    using T = decltype(zero);
    dispatch_tasks(p.tasks, [&](auto tasks) {
      constexpr int M = decltype(tasks)::value;
      at::parallel_for(0, p.rows, grain_for(p.tasks, p.tasks),
                       [&](int64_t begin, int64_t end) { project_rows<T, M>(p, begin, end); });
    });
  });
}

void run_distance_cpu(const SimplexDistanceParams& p, const at::Tensor& w) {
  dispatch_float(w, [&](auto zero) {
    using T = decltype(zero);
    dispatch_tasks(p.tasks, [&](auto tasks) {
      constexpr int M = decltype(tasks)::value;
      at::parallel_for(0, p.rows, grain_for(p.tasks, 1),
                       [&](int64_t begin, int64_t end) { distance_rows<T, M>(p, begin, end); });
    });
  });
}

void run_min_norm_cpu(const MinNormParams& p, const at::Tensor& Q) {
  const int64_t work = static_cast<int64_t>(p.tasks) * (p.solver == SimplexSolver::Exact2 ? 1 : p.steps);
  dispatch_float(Q, [&](auto zero) {
    using T = decltype(zero);
    dispatch_tasks(p.tasks, [&](auto tasks) {
      constexpr int M = decltype(tasks)::value;
      at::parallel_for(0, p.rows, grain_for(p.tasks, work),
                       [&](int64_t begin, int64_t end) { min_norm_rows<T, M>(p, begin, end); });
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastadv, CPU, m) {
  register_simplex_kernels<SimplexEntryPoints<run_project_cpu, run_distance_cpu, run_min_norm_cpu>>(m);
}

}  // namespace fastadv
