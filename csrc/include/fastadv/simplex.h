// The simplex family: parameters and the per-row math shared by the CPU and CUDA kernels
// (METHODS.md section 4, seed 003 ch. 4; the oracles are in fastadv/reference/simplex.py).
//
// A row has n ≤ M coordinates (tasks), M the compile-time capacity: the kernels instantiate the
// math for M = 1..8 with n = M (the loops unroll completely and the row lives in registers) and
// for M = 16 and 32 with n ≤ M (padded: coordinates i ≥ n take no part). The kernels load a row
// into the local arrays these functions take and store what they return: the CUDA kernels run a
// row per thread, the CPU kernels run blocks of rows side by side in the lanes of a vector
// (`omp simd` over the rows of a block), so the math below is written branch-free, with selects.
//
// Conventions (the oracle's): a mask row with no allowed coordinate allows every coordinate; a
// non-finite value anywhere in a row's inputs makes all of that row's outputs NaN.
#pragma once

#include "fastadv/common.h"

// Loops over a row's M coordinates unroll completely for the exact sizes (M ≤ 8); the padded sizes
// would only grow the code (and, unrolled, took nvcc minutes).
#if defined(__CUDACC__)
#define FASTADV_TASK_UNROLL _Pragma("unroll (M <= 8 ? M : 1)")
#elif defined(__GNUC__) && !defined(__clang__)
#define FASTADV_TASK_UNROLL _Pragma("GCC unroll 8")
#else
#define FASTADV_TASK_UNROLL
#endif

namespace fastadv {

constexpr int kMaxTasks = 32;

// The solver codes of min_norm_weights' schema, in the order of fastadv.ops.simplex.SOLVERS.
enum class SimplexSolver : int { SoftmaxGd = 0, Pgd = 1, Apgd = 2, Exact2 = 3 };

// Every tensor is row-major and contiguous: [rows, tasks] (Q: [rows, tasks, tasks]); optional
// tensors are null when absent.
struct SimplexProjectParams {
  void* out;
  const void* v;
  const bool* mask;
  int64_t rows;
  int tasks;
};

struct SimplexDistanceParams {
  void* omega;      // [rows]
  void* grad;       // [rows, tasks], or null when the gradient is not asked for
  const void* w;
  const bool* achieved;
  int64_t rows;
  int tasks;
};

struct MinNormParams {
  void* w;          // [rows, tasks]
  void* objective;  // [rows]
  const void* Q;
  const bool* achieved;
  const void* init;
  int64_t rows;
  int tasks;
  double lam;
  double lr;
  int steps;
  SimplexSolver solver;
};

// x − x is 0 for every finite x and NaN for ±inf and NaN (no library call: vectorises).
template <typename T>
FASTADV_HOST_DEVICE bool is_finite_value(T x) {
  return x - x == T(0);
}

template <typename T>
FASTADV_HOST_DEVICE T quiet_nan() {
  return static_cast<T>(NAN);
}

// The allowed coordinates of a row: mask[i] (present: i < n), or every present coordinate when
// the row allows none (or has no mask).
template <int M>
FASTADV_HOST_DEVICE void effective_mask(const bool (&mask)[M], int n, bool (&allowed)[M]) {
  bool any = false;
FASTADV_TASK_UNROLL
  for (int i = 0; i < M; ++i) any = any || (i < n && mask[i]);
FASTADV_TASK_UNROLL
  for (int i = 0; i < M; ++i) allowed[i] = i < n && (mask[i] || !any);
}

// The Euclidean projection onto the simplex over the allowed coordinates, w = max(u − τ, 0) with
// u = v − max_allowed(v) and τ = max over allowed i of (Σ_{allowed j: u_j ≥ u_i} u_j − 1) /
// #{allowed j: u_j ≥ u_i}. That is the sort-based rule's τ = max_k (Σ_{j≤k} u_(j) − 1)/k over the
// prefixes of the decreasingly sorted entries (Held, Wolfe & Crowder 1974; Duchi et al. 2008),
// the maximum taken at ρ; the sets {j: u_j ≥ u_i} are the prefixes that end a run of ties, and
// within a run the prefix average moves monotonically towards the run's value, so its maximum is
// at one of those. O(M²) compares and adds, no sort: what vector lanes and GPU threads do well.
// The shift by the largest allowed entry keeps the sums exact for entries of ±1e30.
// A row with a non-finite entry (allowed or not) becomes NaN.
template <typename T, int M>
FASTADV_HOST_DEVICE void project_row(const T (&v)[M], const bool (&allowed)[M], int n, T (&w)[M]) {
  bool finite = true;
  T top = -static_cast<T>(INFINITY);
FASTADV_TASK_UNROLL
  for (int i = 0; i < M; ++i) {
    finite = finite && (i >= n || is_finite_value(v[i]));
    top = allowed[i] && v[i] > top ? v[i] : top;
  }
  T u[M];
FASTADV_TASK_UNROLL
  for (int i = 0; i < M; ++i) u[i] = allowed[i] ? v[i] - top : T(0);
  T tau = -static_cast<T>(INFINITY);
FASTADV_TASK_UNROLL
  for (int i = 0; i < M; ++i) {
    T sum = 0, count = 0;
FASTADV_TASK_UNROLL
    for (int j = 0; j < M; ++j) {
      const bool above = allowed[j] && u[j] >= u[i];
      sum += above ? u[j] : T(0);
      count += above ? T(1) : T(0);
    }
    const T candidate = (sum - T(1)) / (count > T(0) ? count : T(1));
    tau = allowed[i] && candidate > tau ? candidate : tau;
  }
FASTADV_TASK_UNROLL
  for (int i = 0; i < M; ++i) {
    const T shifted = u[i] - tau;
    const T value = allowed[i] ? (shifted > T(0) ? shifted : T(0)) : T(0);
    w[i] = finite ? value : quiet_nan<T>();
  }
}

// Which tasks are unachieved (the effective mask of ~achieved: a row with every task achieved
// counts every task as unachieved) and 1 / their number, fixed for a row.
template <typename T, int M>
struct TaskSplit {
  bool unachieved[M];
  T inverse_free;
};

template <typename T, int M>
FASTADV_HOST_DEVICE TaskSplit<T, M> task_split(const bool (&achieved)[M], int n) {
  bool open[M];
FASTADV_TASK_UNROLL
  for (int i = 0; i < M; ++i) open[i] = !achieved[i];
  TaskSplit<T, M> split;
  effective_mask<M>(open, n, split.unachieved);
  T free = 0;
FASTADV_TASK_UNROLL
  for (int i = 0; i < M; ++i) free += split.unachieved[i] ? T(1) : T(0);
  split.inverse_free = T(1) / free;
  return split;
}

// Ω(w) = Σ_{achieved} w_i² + (1 − Σ_{unachieved} w_i)² / (m − s) (seed 003 ch. 4, Theorem 1).
template <typename T, int M>
FASTADV_HOST_DEVICE T distance_sq_row(const T (&w)[M], const TaskSplit<T, M>& split, int n) {
  T on_achieved = 0, open_sum = 0;
FASTADV_TASK_UNROLL
  for (int i = 0; i < M; ++i) {
    const bool present = i < n;
    on_achieved += present && !split.unachieved[i] ? w[i] * w[i] : T(0);
    open_sum += split.unachieved[i] ? w[i] : T(0);
  }
  const T gap = T(1) - open_sum;
  return on_achieved + gap * gap * split.inverse_free;
}

// ∇Ω(w), scaled by `scale` and added to g: 2w_i on achieved tasks, −2(1 − Σ_u w)/(m − s) on the
// others (0 on absent coordinates).
template <typename T, int M>
FASTADV_HOST_DEVICE void add_distance_sq_gradient(const T (&w)[M], const TaskSplit<T, M>& split, int n, T scale,
                                                  T (&g)[M]) {
  T open_sum = 0;
FASTADV_TASK_UNROLL
  for (int i = 0; i < M; ++i) open_sum += split.unachieved[i] ? w[i] : T(0);
  const T open_gradient = T(-2) * (T(1) - open_sum) * split.inverse_free;
FASTADV_TASK_UNROLL
  for (int i = 0; i < M; ++i) {
    const T gradient = split.unachieved[i] ? open_gradient : (i < n ? T(2) * w[i] : T(0));
    g[i] += scale * gradient;
  }
}

// A sample's min-norm problem: F(w) = wᵀQw + λΩ(w) = ½ wᵀSw + λΩ(w) with S = Q + Qᵀ, whose
// gradient is Sw + λ∇Ω(w).
template <typename T, int M>
struct MinNormProblem {
  T S[M][M];
  TaskSplit<T, M> split;
  T lam;
  int n;
};

template <typename T, int M>
FASTADV_HOST_DEVICE void objective_gradient(const MinNormProblem<T, M>& p, const T (&w)[M], T (&g)[M]) {
FASTADV_TASK_UNROLL
  for (int i = 0; i < M; ++i) {
    T sum = 0;
FASTADV_TASK_UNROLL
    for (int j = 0; j < M; ++j) sum += p.S[i][j] * w[j];
    g[i] = sum;
  }
  add_distance_sq_gradient<T, M>(w, p.split, p.n, p.lam, g);
}

template <typename T, int M>
FASTADV_HOST_DEVICE T objective_value(const MinNormProblem<T, M>& p, const T (&w)[M]) {
  T quadratic = 0;
FASTADV_TASK_UNROLL
  for (int i = 0; i < M; ++i) {
    T sum = 0;
FASTADV_TASK_UNROLL
    for (int j = 0; j < M; ++j) sum += p.S[i][j] * w[j];
    quadratic += w[i] * sum;
  }
  return T(0.5) * quadratic + p.lam * distance_sq_row<T, M>(w, p.split, p.n);
}

// softmax over the present coordinates (absent ones get 0).
template <typename T, int M>
FASTADV_HOST_DEVICE void softmax_row(const T (&alpha)[M], int n, T (&sigma)[M]) {
  T top = -static_cast<T>(INFINITY);
FASTADV_TASK_UNROLL
  for (int i = 0; i < M; ++i) top = i < n ? larger(top, alpha[i]) : top;
  T sum = 0;
FASTADV_TASK_UNROLL
  for (int i = 0; i < M; ++i) {
    sigma[i] = i < n ? exp_nonpositive(alpha[i] - top) : T(0);
    sum += sigma[i];
  }
  const T inverse = T(1) / sum;
FASTADV_TASK_UNROLL
  for (int i = 0; i < M; ++i) sigma[i] *= inverse;
}

// Algorithm 1, lines 6–10: α ← α − η ∇_α F(softmax(α)), where ∇_α = σ ⊙ (g − ⟨σ, g⟩) with
// g = ∇F(σ) (the softmax's Jacobian is diag(σ) − σσᵀ). α starts at log(max(init, 0)), or at 1/m
// for every task (uniform weights) without init. Returns softmax(α) in w.
template <typename T, int M>
FASTADV_HOST_DEVICE void softmax_gd_row(const MinNormProblem<T, M>& p, const T (&alpha0)[M], int steps, T lr,
                                        T (&w)[M]) {
  T alpha[M], sigma[M], g[M];
FASTADV_TASK_UNROLL
  for (int i = 0; i < M; ++i) alpha[i] = alpha0[i];
  for (int step = 0; step < steps; ++step) {
    softmax_row<T, M>(alpha, p.n, sigma);
    objective_gradient<T, M>(p, sigma, g);
    T dot = 0;
FASTADV_TASK_UNROLL
    for (int i = 0; i < M; ++i) dot += sigma[i] * g[i];
FASTADV_TASK_UNROLL
    for (int i = 0; i < M; ++i) alpha[i] -= lr * (sigma[i] * (g[i] - dot));
  }
  softmax_row<T, M>(alpha, p.n, w);
}

// Projected gradient with step 1/L (L = 2‖(Q + Qᵀ)/2‖_F + 2λ = ‖S‖_F + 2λ; a row with L = 0 does
// not move); accelerated: FISTA (Beck & Teboulle 2009) from t = 1, returning the last iterate.
// `w` holds the start on entry.
template <typename T, int M>
FASTADV_HOST_DEVICE void projected_gradient_row(const MinNormProblem<T, M>& p, int steps, bool accelerated,
                                                T (&w)[M]) {
  bool present[M];
FASTADV_TASK_UNROLL
  for (int i = 0; i < M; ++i) present[i] = i < p.n;
  T frobenius_sq = 0;
FASTADV_TASK_UNROLL
  for (int i = 0; i < M; ++i) {
FASTADV_TASK_UNROLL
    for (int j = 0; j < M; ++j) frobenius_sq += (p.S[i][j] * T(0.5)) * (p.S[i][j] * T(0.5));
  }
  const T lipschitz = T(2) * sqrt(frobenius_sq) + T(2) * p.lam;
  const T step_size = lipschitz > T(0) ? T(1) / lipschitz : T(0);
  T y[M], g[M], point[M], next[M];
FASTADV_TASK_UNROLL
  for (int i = 0; i < M; ++i) y[i] = w[i];
  double t = 1.0;
  for (int step = 0; step < steps; ++step) {
FASTADV_TASK_UNROLL
    for (int i = 0; i < M; ++i) point[i] = accelerated ? y[i] : w[i];
    objective_gradient<T, M>(p, point, g);
FASTADV_TASK_UNROLL
    for (int i = 0; i < M; ++i) point[i] -= step_size * g[i];
    project_row<T, M>(point, present, p.n, next);
    if (accelerated) {
      const double t_next = (1.0 + sqrt(1.0 + 4.0 * t * t)) / 2.0;
      const T momentum = static_cast<T>((t - 1.0) / t_next);
FASTADV_TASK_UNROLL
      for (int i = 0; i < M; ++i) y[i] = next[i] + momentum * (next[i] - w[i]);
      t = t_next;
    }
FASTADV_TASK_UNROLL
    for (int i = 0; i < M; ++i) w[i] = next[i];
  }
}

// m = 2, w = (a, 1 − a): F is a quadratic in a, F(a) = A a² + B a + F(0), read off F(0), F(½), F(1);
// its minimiser over [0, 1] is the best of the end points and the clamped vertex (the oracle's
// three candidates, the first of equal values winning).
template <typename T, int M>
FASTADV_HOST_DEVICE void exact2_row(const MinNormProblem<T, M>& p, T (&w)[M]) {
  auto at = [&](T a) {
    T point[M];
FASTADV_TASK_UNROLL
    for (int i = 0; i < M; ++i) point[i] = i == 0 ? a : (i == 1 ? T(1) - a : T(0));
    return objective_value<T, M>(p, point);
  };
  const T f0 = at(T(0)), half = at(T(0.5)), f1 = at(T(1));
  const T curvature = T(2) * f0 - T(4) * half + T(2) * f1;
  const T slope = T(-3) * f0 + T(4) * half - f1;
  T vertex = curvature > T(0) ? -slope / (T(2) * curvature) : T(0);
  vertex = vertex < T(0) ? T(0) : (vertex > T(1) ? T(1) : vertex);
  const T fv = at(vertex);
  T a = T(0), best = f0;
  a = f1 < best ? T(1) : a;
  best = f1 < best ? f1 : best;
  a = fv < best ? vertex : a;
FASTADV_TASK_UNROLL
  for (int i = 0; i < M; ++i) w[i] = i == 0 ? a : (i == 1 ? T(1) - a : T(0));
}

// One sample of min_norm_weights: Q [M][M], achieved, init (has_init) loaded by the kernel;
// returns F(w) and writes w. A non-finite entry of Q or init makes w and F NaN.
template <typename T, int M>
FASTADV_HOST_DEVICE T min_norm_row(const T (&Q)[M][M], const bool (&achieved)[M], const T (&init)[M],
                                   bool has_init, int n, T lam, SimplexSolver solver, int steps, T lr, T (&w)[M]) {
  MinNormProblem<T, M> p;
  bool finite = true;
FASTADV_TASK_UNROLL
  for (int i = 0; i < M; ++i) {
FASTADV_TASK_UNROLL
    for (int j = 0; j < M; ++j) {
      p.S[i][j] = Q[i][j] + Q[j][i];
      finite = finite && (i >= n || j >= n || is_finite_value(Q[i][j]));
    }
    finite = finite && (!has_init || i >= n || is_finite_value(init[i]));
  }
  p.split = task_split<T, M>(achieved, n);
  p.lam = lam;
  p.n = n;
  const T uniform = T(1) / static_cast<T>(n);
  if (solver == SimplexSolver::SoftmaxGd) {
    T alpha[M];
FASTADV_TASK_UNROLL
    for (int i = 0; i < M; ++i) alpha[i] = has_init ? log(init[i] > T(0) ? init[i] : T(0)) : uniform;
    softmax_gd_row<T, M>(p, alpha, steps, lr, w);
  } else if (solver == SimplexSolver::Exact2) {
    exact2_row<T, M>(p, w);
  } else {
    if (has_init) {
      bool present[M];
FASTADV_TASK_UNROLL
      for (int i = 0; i < M; ++i) present[i] = i < n;
      project_row<T, M>(init, present, n, w);
    } else {
FASTADV_TASK_UNROLL
      for (int i = 0; i < M; ++i) w[i] = i < n ? uniform : T(0);
    }
    projected_gradient_row<T, M>(p, steps, solver == SimplexSolver::Apgd, w);
  }
  const T objective = objective_value<T, M>(p, w);
FASTADV_TASK_UNROLL
  for (int i = 0; i < M; ++i) w[i] = finite ? w[i] : quiet_nan<T>();
  return finite ? objective : quiet_nan<T>();
}

// Calls body(std::integral_constant-like Tasks<M>{}) with the capacity for `tasks` coordinates:
// exact for 1..8, padded to 16 or 32 above.
template <int M>
struct Tasks {
  static constexpr int value = M;
};

template <typename Body>
inline void dispatch_tasks(int tasks, const Body& body) {
  switch (tasks) {
    case 1: body(Tasks<1>{}); break;
    case 2: body(Tasks<2>{}); break;
    case 3: body(Tasks<3>{}); break;
    case 4: body(Tasks<4>{}); break;
    case 5: body(Tasks<5>{}); break;
    case 6: body(Tasks<6>{}); break;
    case 7: body(Tasks<7>{}); break;
    case 8: body(Tasks<8>{}); break;
    default:
      if (tasks <= 16) body(Tasks<16>{});
      else body(Tasks<32>{});
  }
}

// Implemented in csrc/cuda/simplex_kernel.cu; `stream` is a cudaStream_t.
void launch_simplex_project_cuda(const SimplexProjectParams& params, ScalarKind kind, void* stream);
void launch_simplex_distance_sq_cuda(const SimplexDistanceParams& params, ScalarKind kind, void* stream);
void launch_min_norm_weights_cuda(const MinNormParams& params, ScalarKind kind, void* stream);

}  // namespace fastadv
