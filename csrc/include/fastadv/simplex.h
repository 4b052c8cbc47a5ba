// The simplex family: parameters and the per-row math shared by the CPU and CUDA kernels
// (METHODS.md section 4, seed 003 ch. 4; the oracles are in fastadv/reference/simplex.py).
//
// The register path (every op, rows of m ≤ kMaxTasks = 32): a row has n ≤ M coordinates (tasks),
// M the compile-time capacity: the kernels instantiate the math for M = 1..8 with n = M (the loops
// unroll completely and the row lives in registers) and for M = 16 and 32 with n ≤ M (padded:
// coordinates i ≥ n take no part). The kernels load a row into the local arrays these functions
// take and store what they return: the CUDA kernels run a row per thread, the CPU kernels run
// blocks of rows side by side in the lanes of a vector (`omp simd` over the rows of a block), so
// the math below is written branch-free, with selects.
//
// The wide path (simplex_project and simplex_distance_sq, rows of m > kMaxTasks, any length; at
// the end of this file): a row is read from memory in passes by cooperating lanes, and the
// projection's threshold is found without a sort (project_wide_row).
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

// The longest row of the register path, and the most tasks min_norm_weights takes (its kernels hold
// a row's Q in registers); simplex_project and simplex_distance_sq take longer rows on the wide path.
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

// ---------------------------------------------------------------------------- the wide path
// Rows of any length (m > kMaxTasks) for simplex_project and simplex_distance_sq. A row is never
// held whole: each pass is a loop over its coordinates j = lane.index, lane.index + Lanes, ... by
// `Lanes` cooperating threads, whose partial results `lane.sum` / `lane.max` combine (the logits
// family's convention: the CPU runs a row on one lane, fastadv::SingleLane, its loops vectorised;
// the CUDA kernels on a warp, or on a block for long rows). Every lane gets the same combined
// values, so every lane takes the same branches and reaches the same reductions. `Io::load` /
// `Io::store` convert between the storage type S and T. The conventions are the register path's.

// The loops are plain functions of plain values, written so that GCC 12 vectorises them (the
// CPU's `omp simd` reductions): the masks enter as numbers (a mask's byte converted to T) and
// the counts as sums of T, since selects on a loaded bool, int counters next to floats and loops
// inside lambdas that capture by reference each kept the loops scalar or their partial results in
// memory (measured: passes 2× to 15× slower). A count of T is exact within a chunk of kWideChunk
// coordinates and is added up over the chunks as an integer.
#if defined(__CUDACC__)
#define FASTADV_WIDE_SIMD(...)
#else
#define FASTADV_WIDE_PRAGMA(...) _Pragma(#__VA_ARGS__)
#define FASTADV_WIDE_SIMD(...) FASTADV_WIDE_PRAGMA(omp simd __VA_ARGS__)
#endif

constexpr int64_t kWideChunk = int64_t(1) << 20;  // a multiple of every lane count

template <typename T>
struct LargestFinite;
template <>
struct LargestFinite<float> {
  static FASTADV_HOST_DEVICE float value() { return 3.40282347e38f; }
};
template <>
struct LargestFinite<double> {
  static FASTADV_HOST_DEVICE double value() { return 1.7976931348623157e308; }
};

// A mask's entry as 0 or 1 in T (a bool tensor holds the bytes 0 and 1).
template <typename T>
FASTADV_HOST_DEVICE T mask_value(const bool* mask, int64_t j) {
  return static_cast<T>(reinterpret_cast<const unsigned char*>(mask)[j]);
}

// The first pass of a projection, this lane's part: whether a value is non-finite (bad > 0),
// whether the mask allows a coordinate (allowed > 0), the largest value and the largest allowed.
template <typename T>
struct WideScan {
  T bad, allowed, top, top_allowed;
};

template <typename T, int Lanes, bool Masked, typename S, typename Io>
FASTADV_HOST_DEVICE WideScan<T> scan_wide_row(const S* v, const bool* mask, int64_t n, int64_t start) {
  T bad = 0, allowed = 0, top = -static_cast<T>(INFINITY), top_allowed = -static_cast<T>(INFINITY);
  FASTADV_WIDE_SIMD(reduction(+ : bad, allowed) reduction(max : top, top_allowed))
  for (int64_t j = start; j < n; j += Lanes) {
    const T x = Io::load(v, j);
    const T keep = Masked ? mask_value<T>(mask, j) : T(1);
    bad += is_finite_value(x) ? T(0) : T(1);
    allowed += keep;
    top = larger(top, x);
    top_allowed = larger(top_allowed, keep > T(0) ? x : -static_cast<T>(INFINITY));
  }
  return {bad, allowed, top, top_allowed};
}

// c(t), the count of the allowed u_j = v_j − shift above t, and e(t) = Σ_{u_j > t} (u_j − t), the
// excess above t, at each of two thresholds, this lane's part (Masked: mask[j] allows; otherwise
// every coordinate does). The excess adds small non-negative terms (the weights the threshold
// would give), not the u_j: the sum of n values of u would be rounded by about eps·n·max|u|,
// which moves τ, and so every weight of a long row (float32, m = 1000: its sum by over 1e-5).
template <typename T>
struct WideCounts {
  int64_t first_count, second_count;
  T first_excess, second_excess;
};

template <typename T, int Lanes, bool Masked, typename S, typename Io>
FASTADV_HOST_DEVICE WideCounts<T> count_wide_row(const S* v, const bool* mask, int64_t n, int64_t start, T shift,
                                                 T first, T second) {
  const T finite_max = LargestFinite<T>::value();
  WideCounts<T> result{0, 0, T(0), T(0)};
  for (int64_t begin = 0; begin < n; begin += kWideChunk) {
    const int64_t end = n - begin < kWideChunk ? n : begin + kWideChunk;
    T count_a = 0, count_b = 0, sum_a = 0, sum_b = 0;
    FASTADV_WIDE_SIMD(reduction(+ : count_a, count_b, sum_a, sum_b))
    for (int64_t j = begin + start; j < end; j += Lanes) {
      // u clamped to the finite range (an overflow to ±inf, far from the thresholds, moves no
      // count), so that a weight of 0 times u − t is 0.
      T u = Io::load(v, j) - shift;
      u = u > -finite_max ? u : -finite_max;
      u = u < finite_max ? u : finite_max;
      const T keep = Masked ? mask_value<T>(mask, j) : T(1);
      const T a = u > first ? keep : T(0), b = u > second ? keep : T(0);
      count_a += a;
      sum_a += a * (u - first);
      count_b += b;
      sum_b += b * (u - second);
    }
    result.first_count += static_cast<int64_t>(count_a);
    result.second_count += static_cast<int64_t>(count_b);
    result.first_excess += sum_a;
    result.second_excess += sum_b;
  }
  return result;
}

// w_j = max(v_j − shift − τ, 0) on the allowed coordinates, 0 off them, this lane's part, with τ =
// tau + correction kept as two terms: u_j − tau is exact near τ, and the correction is small, so
// no w_j feels the rounding of τ to T's grid at u's scale (up to half an ulp of max|u| on every
// weight alike: the sum of a float32 softmax row of m = 100,000 off 1 by about 1e-4).
template <typename T, int Lanes, bool Masked, typename S, typename Io>
FASTADV_HOST_DEVICE void write_wide_row(const S* v, const bool* mask, int64_t n, int64_t start, T shift, T tau,
                                        T correction, S* out) {
  FASTADV_WIDE_SIMD()
  for (int64_t j = start; j < n; j += Lanes) {
    const T w = ((Io::load(v, j) - shift) - tau) - correction;
    const T keep = Masked ? mask_value<T>(mask, j) : T(1);
    Io::store(out, j, (w > T(0)) & (keep > T(0)) ? w : T(0));
  }
}

// The Euclidean projection of a row of n coordinates onto the simplex over its allowed ones
// (mask[j], or every coordinate when mask is null or allows none), written to out; a non-finite
// value anywhere in the row makes the whole row NaN.
//
// The same w = max(u − τ, 0) as project_row, u = v − max_allowed(v) on the allowed coordinates,
// with τ found by selection instead of a sort (or project_row's O(n²) comparisons). With c(t) the
// count of the allowed u_j > t and e(t) = Σ_{u_j > t} (u_j − t), g(t) = e(t) − 1 falls from
// g(−1) ≥ 0 (u's largest entry is 0) to g(0) = −1 and vanishes at τ, so −1 ≤ τ < 0. For any
// t ≤ τ, the Newton step t + (e(t) − 1)/c(t) (Michelot 1986) lies in [t, τ]; when no u_j lies
// between t and it, it is τ exactly: (Σ_{j ∈ S} u_j − 1)/|S| over the support S = {u_j > τ}, the
// sort rule's τ = (Σ_{k ≤ ρ} u_(k) − 1)/ρ (the same set, added in another way). Each pass
// evaluates c and e at two thresholds: the Newton step from the best lower bound, and the midpoint
// between it and the lowest point known to lie above τ (bisection keeps the passes few where
// Newton steps would creep); a point with g ≥ 0 becomes the lower bound. The lower bound's count
// falls in every pass that does not end the search, so the search ends, in practice after 2 to 10
// passes, plus the first (the row's maximum) and the last (the output); τ is then the Newton
// step from the last point, whose count is the support's (that point and the step kept apart:
// write_wide_row). Rounding can only move the end by coordinates within rounding of τ, whose
// weights are within rounding of 0.
template <typename T, int Lanes, bool Masked, typename S, typename Io, typename Lane>
FASTADV_HOST_DEVICE void project_wide_search(const S* v, const bool* mask, int64_t n, T shift, S* out,
                                             const Lane& lane) {
  // c and e at two thresholds in one pass, combined over the lanes.
  auto above = [&](T first, T second) {
    WideCounts<T> c = count_wide_row<T, Lanes, Masked, S, Io>(v, mask, n, lane.index, shift, first, second);
    c.first_count = lane.sum(c.first_count);
    c.first_excess = lane.sum(c.first_excess);
    c.second_count = lane.sum(c.second_count);
    c.second_excess = lane.sum(c.second_excess);
    return c;
  };
  T lo = T(-1), hi = T(0), mid = T(-0.5);
  WideCounts<T> c = above(lo, mid);
  int64_t lo_count = c.first_count;  // ≥ 1: u's largest entry is 0
  T lo_excess = c.first_excess;
  T tau, correction;
  for (;;) {
    // c.second_*: the midpoint's; g(mid) = e(mid) − 1 ≥ 0 puts it at or below τ.
    if (c.second_excess >= T(1)) {
      if (c.second_count < lo_count) {
        lo = mid;
        lo_count = c.second_count;
        lo_excess = c.second_excess;
      }
    } else {
      hi = smaller(hi, mid);
    }
    const T newton = lo + (lo_excess - T(1)) / static_cast<T>(lo_count);  // < 0: the top entry stays above it
    mid = newton < hi ? T(0.5) * (newton + hi) : newton;
    c = above(newton, mid);
    if (c.first_count >= lo_count) {
      // The support is found; τ from the point nearest it: the Newton step from `newton` itself,
      // newton + (e(newton) − 1)/c (a small correction), rather than `newton`, the step from a
      // lower bound that may be far (lo = −1, every entry tied at 0: −1 + (m − 1)/m cancels).
      tau = newton;
      correction = (c.first_excess - T(1)) / static_cast<T>(c.first_count);
      break;
    }
    lo = newton;
    lo_count = c.first_count;
    lo_excess = c.first_excess;
  }
  write_wide_row<T, Lanes, Masked, S, Io>(v, mask, n, lane.index, shift, tau, correction, out);
}

// project_wide_row with the mask's presence a compile-time constant.
template <typename T, int Lanes, bool Masked, typename S, typename Io, typename Lane>
FASTADV_HOST_DEVICE void project_wide_row_masked(const S* v, const bool* mask, int64_t n, S* out, const Lane& lane) {
  const WideScan<T> scan = scan_wide_row<T, Lanes, Masked, S, Io>(v, mask, n, lane.index);
  const T bad = lane.sum(scan.bad), allowed = lane.sum(scan.allowed);
  const T top = lane.max(scan.top), top_allowed = lane.max(scan.top_allowed);
  if (bad > T(0)) {
    for (int64_t j = lane.index; j < n; j += Lanes) Io::store(out, j, quiet_nan<T>());
  } else if (Masked && allowed > T(0)) {
    project_wide_search<T, Lanes, true, S, Io>(v, mask, n, top_allowed, out, lane);
  } else {  // no mask, or a mask that allows no coordinate: every coordinate counts
    project_wide_search<T, Lanes, false, S, Io>(v, nullptr, n, top, out, lane);
  }
}

template <typename T, int Lanes, typename S, typename Io, typename Lane>
FASTADV_HOST_DEVICE void project_wide_row(const S* v, const bool* mask, int64_t n, S* out, const Lane& lane) {
  if (mask == nullptr) {
    project_wide_row_masked<T, Lanes, false, S, Io>(v, mask, n, out, lane);
  } else {
    project_wide_row_masked<T, Lanes, true, S, Io>(v, mask, n, out, lane);
  }
}

// Ω's sums over a row, this lane's part: non-finite values (bad > 0), the unachieved tasks'
// count, Σ_achieved w², Σ_unachieved w and Σ w.
template <typename T>
struct WideOmega {
  T bad;
  int64_t open;
  T achieved_sq, open_sum, total;
};

template <typename T, int Lanes, bool HasAchieved, typename S, typename Io>
FASTADV_HOST_DEVICE WideOmega<T> omega_wide_sums(const S* w, const bool* achieved, int64_t n, int64_t start) {
  WideOmega<T> result{T(0), 0, T(0), T(0), T(0)};
  for (int64_t begin = 0; begin < n; begin += kWideChunk) {
    const int64_t end = n - begin < kWideChunk ? n : begin + kWideChunk;
    T bad = 0, open = 0, achieved_sq = 0, open_sum = 0, total = 0;
    FASTADV_WIDE_SIMD(reduction(+ : bad, open, achieved_sq, open_sum, total))
    for (int64_t j = begin + start; j < end; j += Lanes) {
      const T x = Io::load(w, j);
      const T reached = HasAchieved ? mask_value<T>(achieved, j) : T(0);
      bad += is_finite_value(x) ? T(0) : T(1);
      open += T(1) - reached;
      achieved_sq += (reached * x) * x;  // 0 on an open task even where x² overflows
      open_sum += (T(1) - reached) * x;
      total += x;
    }
    result.bad += bad;
    result.open += static_cast<int64_t>(open);
    result.achieved_sq += achieved_sq;
    result.open_sum += open_sum;
    result.total += total;
  }
  return result;
}

// ∇Ω on this lane's coordinates: 2w on the achieved tasks (HasAchieved), `open_gradient` on the others.
template <typename T, int Lanes, bool HasAchieved, typename S, typename Io>
FASTADV_HOST_DEVICE void write_omega_gradient(const S* w, const bool* achieved, int64_t n, int64_t start,
                                              T open_gradient, S* grad) {
  FASTADV_WIDE_SIMD()
  for (int64_t j = start; j < n; j += Lanes) {
    const T reached = HasAchieved ? mask_value<T>(achieved, j) : T(0);
    Io::store(grad, j, reached > T(0) ? T(2) * Io::load(w, j) : open_gradient);
  }
}

// Ω of a row of n coordinates (distance_sq_row's formula), returned; when grad is not null, ∇Ω
// (add_distance_sq_gradient's) written to it. A non-finite w anywhere makes Ω and the gradient NaN.
template <typename T, int Lanes, bool HasAchieved, typename S, typename Io, typename Lane>
FASTADV_HOST_DEVICE T distance_sq_wide_row_of(const S* w, const bool* achieved, int64_t n, S* grad,
                                              const Lane& lane) {
  const WideOmega<T> sums = omega_wide_sums<T, Lanes, HasAchieved, S, Io>(w, achieved, n, lane.index);
  const T bad = lane.sum(sums.bad);
  const int64_t open = lane.sum(sums.open);
  const T achieved_sq = lane.sum(sums.achieved_sq), open_sum = lane.sum(sums.open_sum), total = lane.sum(sums.total);
  // Every task achieved: every task counts as unachieved.
  const bool none_open = open == 0;
  const T inverse_free = T(1) / static_cast<T>(none_open ? n : open);
  const T gap = T(1) - (none_open ? total : open_sum);
  const T omega = (none_open ? T(0) : achieved_sq) + gap * gap * inverse_free;
  if (grad != nullptr) {
    const T open_gradient = T(-2) * gap * inverse_free;
    if (bad > T(0)) {
      for (int64_t j = lane.index; j < n; j += Lanes) Io::store(grad, j, quiet_nan<T>());
    } else if (HasAchieved && !none_open) {
      write_omega_gradient<T, Lanes, true, S, Io>(w, achieved, n, lane.index, open_gradient, grad);
    } else {
      write_omega_gradient<T, Lanes, false, S, Io>(w, nullptr, n, lane.index, open_gradient, grad);
    }
  }
  return bad > T(0) ? quiet_nan<T>() : omega;
}

template <typename T, int Lanes, typename S, typename Io, typename Lane>
FASTADV_HOST_DEVICE T distance_sq_wide_row(const S* w, const bool* achieved, int64_t n, S* grad, const Lane& lane) {
  return achieved == nullptr ? distance_sq_wide_row_of<T, Lanes, false, S, Io>(w, achieved, n, grad, lane)
                             : distance_sq_wide_row_of<T, Lanes, true, S, Io>(w, achieved, n, grad, lane);
}

// Calls body(std::integral_constant-like Tasks<M>{}) with the register path's capacity for
// `tasks` ≤ kMaxTasks coordinates: exact for 1..8, padded to 16 or 32 above.
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
