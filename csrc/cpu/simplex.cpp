// CPU kernels of the simplex family: parallel over blocks of rows; within a block, the rows run
// side by side in the lanes of a vector. A block's inputs are first transposed into [task][row]
// arrays, so that the `omp simd` loop over its rows reads and writes whole vectors, and each
// lane runs the shared per-row math of fastadv/simplex.h (the same math the CUDA threads run),
// with the row's coordinates unrolled (code compiled for each m from 1 to 8; 16 and 32 padded).
// Rows of more than kMaxTasks coordinates (simplex_project and simplex_distance_sq) take the wide
// path instead: a row at a time per thread, the shared project_wide_row / distance_sq_wide_row on
// one lane, each of their passes over the row a vectorised loop.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

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

// ---------------------------------------------------------------------------- the wide path
template <typename T>
struct HostIo {
  static T load(const T* p, int64_t j) { return p[j]; }
  static void store(T* p, int64_t j, T v) { p[j] = v; }
};

// flatten: the shared row function and its loop bodies are inlined into each instruction-set clone.
template <typename T>
FASTADV_CPU_CLONES __attribute__((flatten)) void project_wide_rows(const SimplexProjectParams& p, int64_t begin,
                                                                   int64_t end) {
  const int64_t n = p.tasks;
  const T* v = static_cast<const T*>(p.v);
  T* out = static_cast<T*>(p.out);
  for (int64_t row = begin; row < end; ++row) {
    project_wide_row<T, 1, T, HostIo<T>>(v + row * n, p.mask == nullptr ? nullptr : p.mask + row * n, n,
                                         out + row * n, SingleLane{});
  }
}

template <typename T>
FASTADV_CPU_CLONES __attribute__((flatten)) void distance_wide_rows(const SimplexDistanceParams& p, int64_t begin,
                                                                    int64_t end) {
  const int64_t n = p.tasks;
  const T* w = static_cast<const T*>(p.w);
  T* omega = static_cast<T*>(p.omega);
  T* grad = static_cast<T*>(p.grad);
  for (int64_t row = begin; row < end; ++row) {
    omega[row] = distance_sq_wide_row<T, 1, T, HostIo<T>>(w + row * n,
                                                          p.achieved == nullptr ? nullptr : p.achieved + row * n, n,
                                                          grad == nullptr ? nullptr : grad + row * n, SingleLane{});
  }
}

// Rows per parallel task on the wide path: about 64k coordinates' passes (a projection makes 5 to
// 12 passes over its row).
inline int64_t wide_grain(int tasks, int64_t passes) {
  return std::max<int64_t>(1, 65536 / std::max<int64_t>(1, tasks * passes));
}

// ---------------------------------------------------------------------------- vector lanes
// For the exact sizes (m ≤ 8) on a CPU with AVX-512 (x86-64-v4) the projection and the iterative
// solvers run on GCC vector types: a block of rows side by side in the lanes of one 64-byte vector
// per coordinate (16 floats or 8 doubles), every select a blend. GCC does not vectorise the
// `omp simd` loop above over the scalar row functions (measured: no faster than a row at a time),
// so these are the same equations as fastadv/simplex.h's project_row, softmax_gd_row,
// projected_gradient_row and min_norm_row, written for lanes; both are tested against the one
// oracle. They are compiled for x86-64-v4 only: lowering 64-byte vectors for the baseline target
// took GCC minutes per file. exact2, Ω, the padded sizes and CPUs without AVX-512 keep the scalar
// row functions.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FASTADV_SIMPLEX_LANES 1
#define FASTADV_LANES_TARGET __attribute__((target("arch=x86-64-v4")))
#define FASTADV_LANES_INLINE inline __attribute__((always_inline))

inline bool lanes_supported() {
  static const bool supported = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                                __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512dq") &&
                                __builtin_cpu_supports("avx512vl");
  return supported;
}
template <typename T>
struct Lanes;
template <>
struct Lanes<float> {
  typedef float V __attribute__((vector_size(64)));
  typedef int32_t I __attribute__((vector_size(64)));
  static constexpr int L = 16;
};
template <>
struct Lanes<double> {
  typedef double V __attribute__((vector_size(64)));
  typedef int64_t I __attribute__((vector_size(64)));
  static constexpr int L = 8;
};

template <typename T, int M>
FASTADV_LANES_INLINE void project_lanes(const typename Lanes<T>::V (&v)[M],
                                                         const typename Lanes<T>::I (&allowed)[M],
                                                         typename Lanes<T>::V (&w)[M]) {
  using V = typename Lanes<T>::V;
  using I = typename Lanes<T>::I;
  const V zero = V{}, one = zero + T(1);
  V top = zero - static_cast<T>(INFINITY);
  for (int i = 0; i < M; ++i) {
    const I larger_allowed = allowed[i] & (v[i] > top);
    top = larger_allowed ? v[i] : top;
  }
  V u[M];
  for (int i = 0; i < M; ++i) u[i] = allowed[i] ? v[i] - top : zero;
  V tau = zero - static_cast<T>(INFINITY);
  for (int i = 0; i < M; ++i) {
    V sum = zero, count = zero;
    for (int j = 0; j < M; ++j) {
      const I above = allowed[j] & (u[j] >= u[i]);
      sum += above ? u[j] : zero;
      count += above ? one : zero;
    }
    const V candidate = (sum - one) / (count > zero ? count : one);
    const I better = allowed[i] & (candidate > tau);
    tau = better ? candidate : tau;
  }
  for (int i = 0; i < M; ++i) {
    const V shifted = u[i] - tau;
    w[i] = allowed[i] ? (shifted > zero ? shifted : zero) : zero;
  }
}

// A non-finite entry makes its lane's mask all ones (x − x is NaN exactly then).
template <typename T>
FASTADV_LANES_INLINE typename Lanes<T>::I non_finite(typename Lanes<T>::V x) {
  return (x - x) != typename Lanes<T>::V{};
}

template <typename T, int M, bool HasMask>
FASTADV_LANES_TARGET inline __attribute__((always_inline)) void project_lanes_block(const T* v, const bool* mask, T* out, int count) {
  using V = typename Lanes<T>::V;
  using I = typename Lanes<T>::I;
  constexpr int L = Lanes<T>::L;
  V values[M], w[M];
  I allowed[M];
  I bad = I{}, any = I{};
  for (int i = 0; i < M; ++i) {
    for (int l = 0; l < L; ++l) values[i][l] = v[(l < count ? l : 0) * M + i];
    if constexpr (HasMask) {
      for (int l = 0; l < L; ++l) allowed[i][l] = mask[(l < count ? l : 0) * M + i] ? -1 : 0;
      any |= allowed[i];
    }
    bad |= non_finite<T>(values[i]);
  }
  for (int i = 0; i < M; ++i) allowed[i] = HasMask ? allowed[i] | ~any : I{} - 1;
  project_lanes<T, M>(values, allowed, w);
  const V nan = V{} + quiet_nan<T>();
  for (int i = 0; i < M; ++i) w[i] = bad ? nan : w[i];
  for (int l = 0; l < count; ++l) {
    for (int i = 0; i < M; ++i) out[l * M + i] = w[i][l];
  }
}

template <typename T, int M>
FASTADV_LANES_TARGET void project_lanes_rows(const SimplexProjectParams& p, int64_t begin, int64_t end) {
  constexpr int L = Lanes<T>::L;
  const T* v = static_cast<const T*>(p.v);
  T* out = static_cast<T*>(p.out);
  for (int64_t start = begin; start < end; start += L) {
    const int count = static_cast<int>(std::min<int64_t>(L, end - start));
    if (p.mask == nullptr) {
      project_lanes_block<T, M, false>(v + start * M, nullptr, out + start * M, count);
    } else {
      project_lanes_block<T, M, true>(v + start * M, p.mask + start * M, out + start * M, count);
    }
  }
}

// The objective's gradient Sw + λ∇Ω(w) (S = Q + Qᵀ) and value ½wᵀSw + λΩ(w), for lanes.
template <typename T, int M>
struct MinNormLanes {
  typename Lanes<T>::V S[M][M];
  typename Lanes<T>::I unachieved[M];
  typename Lanes<T>::V inverse_free;
  T lam;

  FASTADV_LANES_INLINE void gradient(const typename Lanes<T>::V (&w)[M], typename Lanes<T>::V (&g)[M]) const {
    using V = typename Lanes<T>::V;
    V open_sum = V{};
    for (int i = 0; i < M; ++i) open_sum += unachieved[i] ? w[i] : V{};
    const V open_gradient = T(-2) * (T(1) - open_sum) * inverse_free;
    for (int i = 0; i < M; ++i) {
      V sum = V{};
      for (int j = 0; j < M; ++j) sum += S[i][j] * w[j];
      g[i] = sum + lam * (unachieved[i] ? open_gradient : T(2) * w[i]);
    }
  }

  FASTADV_LANES_INLINE typename Lanes<T>::V value(const typename Lanes<T>::V (&w)[M]) const {
    using V = typename Lanes<T>::V;
    V quadratic = V{}, on_achieved = V{}, open_sum = V{};
    for (int i = 0; i < M; ++i) {
      V sum = V{};
      for (int j = 0; j < M; ++j) sum += S[i][j] * w[j];
      quadratic += w[i] * sum;
      on_achieved += unachieved[i] ? V{} : w[i] * w[i];
      open_sum += unachieved[i] ? w[i] : V{};
    }
    const V gap = T(1) - open_sum;
    return T(0.5) * quadratic + lam * (on_achieved + gap * gap * inverse_free);
  }
};

template <typename T>
FASTADV_LANES_INLINE typename Lanes<T>::V exp_lanes(typename Lanes<T>::V x) {
  for (int l = 0; l < Lanes<T>::L; ++l) x[l] = exp_nonpositive(x[l]);
  return x;
}

template <typename T, int M>
FASTADV_LANES_TARGET void min_norm_lanes_rows(const MinNormParams& p, int64_t begin,
                                                                     int64_t end) {
  using V = typename Lanes<T>::V;
  using I = typename Lanes<T>::I;
  constexpr int L = Lanes<T>::L;
  const T* Q = static_cast<const T*>(p.Q);
  const T* init = static_cast<const T*>(p.init);
  T* w_out = static_cast<T*>(p.w);
  T* objective_out = static_cast<T*>(p.objective);
  const bool has_init = init != nullptr;
  const T lr = static_cast<T>(p.lr);
  const V zero = V{};
  for (int64_t start = begin; start < end; start += L) {
    const int count = static_cast<int>(std::min<int64_t>(L, end - start));
    MinNormLanes<T, M> problem;
    problem.lam = static_cast<T>(p.lam);
    V gram[M][M], start_w[M];
    I bad = I{}, achieved[M], any_open = I{};
    for (int i = 0; i < M; ++i) {
      for (int l = 0; l < L; ++l) {
        const int64_t row = start + (l < count ? l : 0);
        for (int j = 0; j < M; ++j) gram[i][j][l] = Q[(row * M + i) * M + j];
        start_w[i][l] = has_init ? init[row * M + i] : T(1) / M;
        achieved[i][l] = p.achieved != nullptr && p.achieved[row * M + i] ? -1 : 0;
      }
      for (int j = 0; j < M; ++j) bad |= non_finite<T>(gram[i][j]);
      if (has_init) bad |= non_finite<T>(start_w[i]);
      any_open |= ~achieved[i];
    }
    V free = zero;
    for (int i = 0; i < M; ++i) {
      for (int j = 0; j < M; ++j) problem.S[i][j] = gram[i][j] + gram[j][i];
      problem.unachieved[i] = ~achieved[i] | ~any_open;  // every task achieved: all count as open
      free += problem.unachieved[i] ? zero + T(1) : zero;
    }
    problem.inverse_free = T(1) / free;
    V w[M];
    if (p.solver == SimplexSolver::SoftmaxGd) {
      V alpha[M], sigma[M], g[M];
      for (int i = 0; i < M; ++i) {
        for (int l = 0; l < L; ++l) {
          alpha[i][l] = has_init ? std::log(start_w[i][l] > T(0) ? start_w[i][l] : T(0)) : T(1) / M;
        }
      }
      auto softmax = [&](V (&out)[M]) {
        V top = alpha[0];
        for (int i = 1; i < M; ++i) top = alpha[i] > top ? alpha[i] : top;
        V sum = zero;
        for (int i = 0; i < M; ++i) {
          out[i] = exp_lanes<T>(alpha[i] - top);
          sum += out[i];
        }
        const V inverse = T(1) / sum;
        for (int i = 0; i < M; ++i) out[i] *= inverse;
      };
      for (int step = 0; step < p.steps; ++step) {
        softmax(sigma);
        problem.gradient(sigma, g);
        V dot = zero;
        for (int i = 0; i < M; ++i) dot += sigma[i] * g[i];
        for (int i = 0; i < M; ++i) alpha[i] -= lr * (sigma[i] * (g[i] - dot));
      }
      softmax(w);
    } else {
      I every[M];
      for (int i = 0; i < M; ++i) every[i] = I{} - 1;
      if (has_init) {
        project_lanes<T, M>(start_w, every, w);
      } else {
        for (int i = 0; i < M; ++i) w[i] = start_w[i];
      }
      V frobenius_sq = zero;
      for (int i = 0; i < M; ++i) {
        for (int j = 0; j < M; ++j) {
          const V half = problem.S[i][j] * T(0.5);
          frobenius_sq += half * half;
        }
      }
      V lipschitz = zero;
      for (int l = 0; l < L; ++l) lipschitz[l] = T(2) * std::sqrt(frobenius_sq[l]) + T(2) * problem.lam;
      const V step_size = lipschitz > zero ? T(1) / lipschitz : zero;
      const bool accelerated = p.solver == SimplexSolver::Apgd;
      V y[M], g[M], point[M], next[M];
      for (int i = 0; i < M; ++i) y[i] = w[i];
      double t = 1.0;
      for (int step = 0; step < p.steps; ++step) {
        for (int i = 0; i < M; ++i) point[i] = accelerated ? y[i] : w[i];
        problem.gradient(point, g);
        for (int i = 0; i < M; ++i) point[i] -= step_size * g[i];
        project_lanes<T, M>(point, every, next);
        if (accelerated) {
          const double t_next = (1.0 + std::sqrt(1.0 + 4.0 * t * t)) / 2.0;
          const T momentum = static_cast<T>((t - 1.0) / t_next);
          for (int i = 0; i < M; ++i) y[i] = next[i] + momentum * (next[i] - w[i]);
          t = t_next;
        }
        for (int i = 0; i < M; ++i) w[i] = next[i];
      }
    }
    const V nan = zero + quiet_nan<T>();
    const V objective = bad ? nan : problem.value(w);
    for (int i = 0; i < M; ++i) w[i] = bad ? nan : w[i];
    for (int l = 0; l < count; ++l) {
      objective_out[start + l] = objective[l];
      for (int i = 0; i < M; ++i) w_out[(start + l) * M + i] = w[i][l];
    }
  }
}

#else
inline bool lanes_supported() { return false; }
#endif

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
    if (p.tasks > kMaxTasks) {
      at::parallel_for(0, p.rows, wide_grain(p.tasks, 8),
                       [&](int64_t begin, int64_t end) { project_wide_rows<T>(p, begin, end); });
      return;
    }
    dispatch_tasks(p.tasks, [&](auto tasks) {
      constexpr int M = decltype(tasks)::value;
      at::parallel_for(0, p.rows, grain_for(p.tasks, p.tasks),
                       [&](int64_t begin, int64_t end) {
#if FASTADV_SIMPLEX_LANES
                         if constexpr (M <= 8) {
                           if (lanes_supported()) return project_lanes_rows<T, M>(p, begin, end);
                         }
#endif
                         project_rows<T, M>(p, begin, end);
                       });
    });
  });
}

void run_distance_cpu(const SimplexDistanceParams& p, const at::Tensor& w) {
  dispatch_float(w, [&](auto zero) {
    using T = decltype(zero);
    if (p.tasks > kMaxTasks) {
      at::parallel_for(0, p.rows, wide_grain(p.tasks, 2),
                       [&](int64_t begin, int64_t end) { distance_wide_rows<T>(p, begin, end); });
      return;
    }
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
                       [&](int64_t begin, int64_t end) {
#if FASTADV_SIMPLEX_LANES
                         if constexpr (M <= 8) {
                           if (p.solver != SimplexSolver::Exact2 && lanes_supported()) {
                             return min_norm_lanes_rows<T, M>(p, begin, end);
                           }
                         }
#endif
                         min_norm_rows<T, M>(p, begin, end);
                       });
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastadv, CPU, m) {
  register_simplex_kernels<SimplexEntryPoints<run_project_cpu, run_distance_cpu, run_min_norm_cpu>>(m);
}

}  // namespace fastadv
