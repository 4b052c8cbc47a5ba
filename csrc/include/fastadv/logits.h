// The logits family: parameters and the per-row algorithms of the fused logit-head losses,
// shared by the CPU and CUDA kernels (METHODS.md sections 1 and 2; the oracles are in
// fastadv/reference/logits.py).
//
// Every op reads a [rows, cols] block of logits (row-major, contiguous) and writes per-row
// losses and, when asked, the gradient of each row's loss with respect to each input row
// (Liger-Kernel's habit: the gradient is computed in the same pass as the loss, so the
// backward only scales it by the incoming gradient).
//
// A row is processed by `Lanes` cooperating threads: lane `lane.index` handles columns
// index, index + Lanes, ...; `lane.sum` / `lane.max` combine a value over the lanes of the
// row. The CPU runs a row on one thread (Lanes = 1, the loops vectorised by the compiler);
// the CUDA kernels run a row on a warp (Lanes = 32, shuffle reductions). Either way the math
// below is the math that runs.
#pragma once

#include <cstring>
#include <type_traits>

#include "fastadv/common.h"

namespace fastadv {

using std::sin;  // float and double overloads, on the host and in CUDA device code

// The family's ops, one line each: X(name, "(arguments) -> (returns)"). Everything that lists the
// ops is generated from this: the LogitsOp enum and the row switch below, the CUDA launcher's
// switch (cuda/logits_kernel.cu), the schemas (ops.cpp), and the CPU, CUDA and Autograd
// registrations (logits_glue.h). Each op has a row function `<name>_row` below.
//
// The schema is the op's whole description (fastadv/ops/_registry.py reads it too):
// - arguments: the floating tensors in order, the differentiable logits first (they become
//   LogitsParams::inputs); a tensor named `y` is the labels; `float`s become `scalars`; an
//   `int reduction` takes 0 none, 1 mean, 2 sum (ATen's numbering) or 3 mean over elements;
//   last, one `bool grad_<input>` per differentiable input, in their order.
// - returns: the losses (per row, or reduced to a scalar by `reduction`), then extra [B, C]
//   outputs that are not differentiated (state), then the gradients, each named
//   `d<loss>_d<input>`: the gradient of every row's loss with respect to that input row, or of
//   the reduced loss; [B, C] when the input's flag is set, an empty [0] tensor otherwise; in the
//   accumulation type (float32 for half inputs: store_gradient below says why).
// Names: mhuber is seed 002's modified Huber loss (mHuber, §3), mhuber_moving_average the same
// between LMA's moving averages (logit moving average, seed 002 §4); the others are METHODS.md's.
#define FASTADV_LOGITS_OPS(X)                                                                               \
  X(soft_cross_entropy,                                                                                     \
    "(Tensor z, Tensor target, bool grad_z, bool grad_target) -> (Tensor loss, Tensor dloss_dz, "           \
    "Tensor dloss_dtarget)")                                                                                \
  X(smoothed_cross_entropy, "(Tensor z, Tensor y, float smoothing, bool grad_z) -> (Tensor loss, Tensor dloss_dz)") \
  X(boosted_cross_entropy, "(Tensor z, Tensor y, bool grad_z) -> (Tensor loss, Tensor dloss_dz)")          \
  X(trades_kl,                                                                                              \
    "(Tensor z_nat, Tensor z_adv, int reduction, bool grad_z_nat, bool grad_z_adv) -> (Tensor loss, "      \
    "Tensor dloss_dz_nat, Tensor dloss_dz_adv)")                                                            \
  X(mart_loss,                                                                                              \
    "(Tensor z_nat, Tensor z_adv, Tensor y, bool grad_z_nat, bool grad_z_adv) -> (Tensor bce, "            \
    "Tensor weighted_kl, Tensor dbce_dz_adv, Tensor dweighted_kl_dz_nat, Tensor dweighted_kl_dz_adv)")     \
  X(margin_sq_hinge, "(Tensor z, Tensor y, float delta, bool grad_z) -> (Tensor loss, Tensor dloss_dz)")   \
  X(mhuber,                                                                                                 \
    "(Tensor u, Tensor v, float alpha, int reduction, bool grad_u, bool grad_v) -> (Tensor loss, "         \
    "Tensor dloss_du, Tensor dloss_dv)")                                                                    \
  X(mhuber_moving_average,                                                                                  \
    "(Tensor u, Tensor v, Tensor u_previous, Tensor v_previous, float alpha, float tau, int reduction, "   \
    "bool grad_u, bool grad_v) -> (Tensor loss, Tensor u_average, Tensor v_average, Tensor dloss_du, "     \
    "Tensor dloss_dv)")                                                                                     \
  X(logit_pairing,                                                                                          \
    "(Tensor z_nat, Tensor z_adv, bool grad_z_nat, bool grad_z_adv) -> (Tensor loss, Tensor dloss_dz_nat, " \
    "Tensor dloss_dz_adv)")                                                                                 \
  X(logit_squeeze, "(Tensor z, bool grad_z) -> (Tensor loss, Tensor dloss_dz)")

#define FASTADV_LOGITS_ENUM(name, schema) name,
enum class LogitsOp : int { FASTADV_LOGITS_OPS(FASTADV_LOGITS_ENUM) };
#undef FASTADV_LOGITS_ENUM

// The `int reduction` argument (at::Reduction's numbering, and the mean over all elements).
enum class LogitsReduction : int64_t { None = 0, Mean = 1, Sum = 2, ElementMean = 3 };

// How many of each the schema convention allows; the glue checks every schema against them.
constexpr int kLogitsMaxInputs = 4, kLogitsMaxLosses = 2, kLogitsMaxExtras = 2, kLogitsMaxGrads = 3,
              kLogitsMaxScalars = 2;

// One call of an op, bound from its schema in order (see FASTADV_LOGITS_OPS).
struct LogitsParams {
  const void* inputs[kLogitsMaxInputs];  // [rows, cols], contiguous, one dtype
  const int64_t* labels;                 // y: [rows], in [0, cols) (the Python layer checks it once)
  // Per-row losses in the accumulation type (the glue converts or reduces them).
  void* losses[kLogitsMaxLosses];
  void* extras[kLogitsMaxExtras];        // [rows, cols] in the input dtype
  // The gradients, [rows, cols] in the input dtype, or null when not asked for. Which (loss,
  // input) pair each holds is named in the schema.
  void* grads[kLogitsMaxGrads];
  double scalars[kLogitsMaxScalars];
  int64_t rows;
  int64_t cols;
  // Ops with a reduction multiply every gradient by this: 1 for none and sum, 1 / rows for the
  // mean, 1 / (rows·cols) for the mean over elements.
  double grad_scale;
};

// Checks of an op's scalars beyond the schema: the message naming the argument, or null. Ops
// with constraints specialise it next to their row function.
template <LogitsOp Op>
inline const char* logits_argument_error(const LogitsParams&) {
  return nullptr;
}

// sin(t) and 1 − cos(t) for |t| <= π/2 (mhuber's inner branch only): Taylor polynomials with
// errors below 6e-8 (sin) and 7e-9 (1 − cos) there; 1 − cos is evaluated without cancellation.
FASTADV_HOST_DEVICE float sin_half_period(float t) {
  const float t2 = t * t;
  float poly = -1.0f / 39916800.0f;
  poly = poly * t2 + 1.0f / 362880.0f;
  poly = poly * t2 - 1.0f / 5040.0f;
  poly = poly * t2 + 1.0f / 120.0f;
  poly = poly * t2 - 1.0f / 6.0f;
  poly = poly * t2 + 1.0f;
  return poly * t;
}

FASTADV_HOST_DEVICE float one_minus_cos_half_period(float t) {
  const float t2 = t * t;
  float poly = 1.0f / 479001600.0f;
  poly = poly * t2 - 1.0f / 3628800.0f;
  poly = poly * t2 + 1.0f / 40320.0f;
  poly = poly * t2 - 1.0f / 720.0f;
  poly = poly * t2 + 1.0f / 24.0f;
  poly = poly * t2 - 0.5f;
  return -poly * t2;
}

FASTADV_HOST_DEVICE double sin_half_period(double t) { return sin(t); }
FASTADV_HOST_DEVICE double one_minus_cos_half_period(double t) {
  const double half = sin(0.5 * t);
  return 2.0 * half * half;
}


// MART's code clamps 1 − max_{k≠y} p_k(x') at 1e-4 before the log.
constexpr double kBoostedFloor = 1e-4;

// ----------------------------------------------------------------------------- row helpers
// Row r's value of loss k, in the accumulation type.
template <typename T>
FASTADV_HOST_DEVICE void store_loss(const LogitsParams& p, int k, int64_t r, T value) {
  static_cast<T*>(p.losses[k])[r] = value;
}

// Row r's gradients are written in the accumulation type too (float for half and bfloat16
// inputs; the glue allocates them so): the backward multiplies them by the incoming gradient and
// autograd rounds the product to the input's type once, as PyTorch's own half computation does.
// Stored in the half type, they would be rounded twice (here, then after the multiplication), up
// to 2.5 × PyTorch's error where a gradient is large (soft_cross_entropy's ∂/∂t = −log p).
template <typename T>
FASTADV_HOST_DEVICE void store_gradient(T* g, int64_t j, T value) {
  g[j] = value;
}

// Storage <-> accumulation conversion is the caller's `Io` policy: Io::load(ptr, j) returns
// the accumulation type, Io::store(ptr, j, value) writes the storage type.

// Rows on one lane (the CPU) in blocks of kBlock columns. A plain loop over a row of 100 floats
// vectorises into six 16-wide vectors and then four scalar iterations, each with its own exp, which
// cost about as much as the six vectors. In blocks, the last block instead overlaps the one before
// it: it starts at cols − kBlock, so a row ends in one more vector. blocked_sum adds only the
// columns past the last whole block; blocked_for runs its body again on the overlapped columns,
// so the body must store a function of the column alone. Rows shorter than a block take the
// strided loops. The CUDA kernels (a warp per row) never take this path.
constexpr int64_t kBlock = 16;

// Σ_j term(j) over a row of cols >= kBlock columns.
template <typename T, typename Term>
FASTADV_HOST_DEVICE T blocked_sum(int64_t cols, const Term& term) {
  T partial[kBlock] = {};
  const int64_t whole = cols / kBlock * kBlock;
  for (int64_t start = 0; start < whole; start += kBlock) {
    FASTADV_SIMD
    for (int64_t k = 0; k < kBlock; ++k) partial[k] += term(start + k);
  }
  if (whole < cols) {
    const int64_t start = cols - kBlock;
    FASTADV_SIMD
    for (int64_t k = 0; k < kBlock; ++k) partial[k] += start + k >= whole ? term(start + k) : T(0);
  }
  T sum = 0;
  FASTADV_SIMD_REDUCE(+, sum)
  for (int64_t k = 0; k < kBlock; ++k) sum += partial[k];
  return sum;
}

// body(j) for every column j of a row of cols >= kBlock columns (some twice, see above).
template <typename Body>
FASTADV_HOST_DEVICE void blocked_for(int64_t cols, const Body& body) {
  const int64_t whole = cols / kBlock * kBlock;
  for (int64_t start = 0; start < whole; start += kBlock) {
    FASTADV_SIMD
    for (int64_t k = 0; k < kBlock; ++k) body(start + k);
  }
  if (whole < cols) {
    const int64_t start = cols - kBlock;
    FASTADV_SIMD
    for (int64_t k = 0; k < kBlock; ++k) body(start + k);
  }
}

// Whether a row runs in blocks: one lane and at least a block of columns.
template <int Lanes>
FASTADV_HOST_DEVICE bool in_blocks(int64_t cols) {
  return Lanes == 1 && cols >= kBlock;
}

// log Σ_j exp(z_j) of one row, by max then sum.
template <typename T, int Lanes, typename S, typename Io, typename Lane>
FASTADV_HOST_DEVICE T row_logsumexp(const S* z, int64_t cols, const Lane& lane) {
  T m = -infinity_of<T>();
  FASTADV_SIMD_REDUCE(max, m)
  for (int64_t j = lane.index; j < cols; j += Lanes) m = larger(m, Io::load(z, j));
  m = lane.max(m);
  T sum = 0;
  if (in_blocks<Lanes>(cols)) return m + log(blocked_sum<T>(cols, [&](int64_t j) { return exp_nonpositive(Io::load(z, j) - m); }));
  FASTADV_SIMD_REDUCE(+, sum)
  for (int64_t j = lane.index; j < cols; j += Lanes) sum += exp_nonpositive(Io::load(z, j) - m);
  sum = lane.sum(sum);
  return m + log(sum);
}

// ----------------------------------------------------------------------------- the ops
// soft_cross_entropy: loss = −Σ t_j log p_j. grads[0] = ∂/∂z = p·Σt − t; grads[1] = ∂/∂t = −log p.
template <typename T, int Lanes, typename S, typename Io, typename Lane>
FASTADV_HOST_DEVICE void soft_cross_entropy_row(const LogitsParams& p, int64_t r, const Lane& lane) {
  const int64_t cols = p.cols;
  const S* z = static_cast<const S*>(p.inputs[0]) + r * cols;
  const S* t = static_cast<const S*>(p.inputs[1]) + r * cols;
  const T lse = row_logsumexp<T, Lanes, S, Io>(z, cols, lane);
  T loss = 0, total = 0;
  FASTADV_SIMD_REDUCE(+, loss, total)
  for (int64_t j = lane.index; j < cols; j += Lanes) {
    const T tj = Io::load(t, j);
    loss -= tj * (Io::load(z, j) - lse);
    total += tj;
  }
  loss = lane.sum(loss);
  total = lane.sum(total);
  if (lane.index == 0) store_loss<T>(p, 0, r, loss);
  T* gz = p.grads[0] ? static_cast<T*>(p.grads[0]) + r * cols : nullptr;
  T* gt = p.grads[1] ? static_cast<T*>(p.grads[1]) + r * cols : nullptr;
  if (gz) {
    const auto gradient = [&](int64_t j) { store_gradient<T>(gz, j, exp_nonpositive(Io::load(z, j) - lse) * total - Io::load(t, j)); };
    if (in_blocks<Lanes>(cols)) {
      blocked_for(cols, gradient);
    } else {
      FASTADV_SIMD
      for (int64_t j = lane.index; j < cols; j += Lanes) gradient(j);
    }
  }
  if (gt) {
    FASTADV_SIMD
    for (int64_t j = lane.index; j < cols; j += Lanes) store_gradient<T>(gt, j, lse - Io::load(z, j));
  }
}

// smoothed_cross_entropy: the target is 1 − s on the label, s / (C − 1) elsewhere (seed 001).
// grads[0] = p − target.
template <typename T, int Lanes, typename S, typename Io, typename Lane>
FASTADV_HOST_DEVICE void smoothed_cross_entropy_row(const LogitsParams& p, int64_t r, const Lane& lane) {
  const int64_t cols = p.cols;
  const S* z = static_cast<const S*>(p.inputs[0]) + r * cols;
  const int64_t y = p.labels[r];
  const T on = static_cast<T>(1.0 - p.scalars[0]), off = static_cast<T>(p.scalars[0] / static_cast<double>(cols - 1));
  const T lse = row_logsumexp<T, Lanes, S, Io>(z, cols, lane);
  T weighted = 0;
  FASTADV_SIMD_REDUCE(+, weighted)
  for (int64_t j = lane.index; j < cols; j += Lanes) weighted += (j == y ? on : off) * (Io::load(z, j) - lse);
  weighted = lane.sum(weighted);
  if (lane.index == 0) store_loss<T>(p, 0, r, -weighted);
  if (p.grads[0]) {
    T* g = static_cast<T*>(p.grads[0]) + r * cols;
    const auto gradient = [&](int64_t j) { store_gradient<T>(g, j, exp_nonpositive(Io::load(z, j) - lse) - (j == y ? on : off)); };
    if (in_blocks<Lanes>(cols)) {
      blocked_for(cols, gradient);
    } else {
      FASTADV_SIMD
      for (int64_t j = lane.index; j < cols; j += Lanes) gradient(j);
    }
  }
}

// Statistics of one row in two passes: the maximum (and, with a label, the maximum off the
// label), then Σ exp(z − max) and the number of classes off the label attaining that maximum.
template <typename T>
struct RowStats {
  T max;
  T lse;          // log Σ_j exp(z_j)
  T other_max;    // max_{k≠y} z_k (with a label)
  T ties;         // #{k ≠ y : z_k = other_max}
  T sum;          // Σ_j exp(z_j − max)
  T rest;         // the same sum without one class attaining other_max: S·(1 − max_{k≠y} p_k)
};

// MART's second term from the row statistics: with o = max_{k≠y} p_k, its loss
// −log(max(1 − o, 1e-4)) and the coefficient o / (1 − o) of its gradient (0 where the clamp
// is active). The gradient of the max is shared among ties, as torch's amax does.
template <typename T>
struct BoostedTerm {
  T loss;
  T coefficient;
  T rest;  // 1 − o
};

// 1 − o is summed from the other classes' exponentials rather than subtracted from 1, which
// would cancel when o is close to 1 (a confidently wrong prediction).
template <typename T>
FASTADV_HOST_DEVICE BoostedTerm<T> boosted_term(const RowStats<T>& stats) {
  const T rest = stats.rest / stats.sum;
  const bool clamped = !(rest > static_cast<T>(kBoostedFloor));
  const T coefficient = exp_nonpositive(stats.other_max - stats.max) / stats.rest;
  return {-log(clamped ? static_cast<T>(kBoostedFloor) : rest), clamped ? T(0) : coefficient, rest};
}

// The gradient of boosted CE at column j: p_j − [j = y] + c·([j ∈ argmax_{k≠y}] / ties − p_j).
// c = o / (1 − o) is large when o is close to 1, so at the single maximum 1 − p_j = 1 − o is
// taken from the row statistics instead of being subtracted.
template <typename T>
FASTADV_HOST_DEVICE T boosted_gradient(T zj, T pj, bool is_label, const RowStats<T>& stats,
                                       const BoostedTerm<T>& term) {
  const bool in_max = !is_label && zj == stats.other_max;
  const T share = stats.ties == T(1) ? term.rest : T(1) / stats.ties - pj;
  return pj - (is_label ? T(1) : T(0)) + term.coefficient * (in_max ? share : -pj);
}

// The classes tied at other_max beyond the first stay in `rest`.
template <typename T>
FASTADV_HOST_DEVICE RowStats<T> finish_row_stats(T max, T other_max, T sum, T ties, T rest_without_ties) {
  const T rest = rest_without_ties + (ties - T(1)) * exp_nonpositive(other_max - max);
  return {max, max + log(sum), other_max, ties, sum, rest};
}

template <typename T, int Lanes, typename S, typename Io, typename Lane>
FASTADV_HOST_DEVICE RowStats<T> labelled_row_stats(const S* z, int64_t cols, int64_t y, const Lane& lane) {
  T m = -infinity_of<T>(), other = -infinity_of<T>();
  FASTADV_SIMD_REDUCE(max, m, other)
  for (int64_t j = lane.index; j < cols; j += Lanes) {
    const T zj = Io::load(z, j);
    m = larger(m, zj);
    other = larger(other, j == y ? -infinity_of<T>() : zj);
  }
  m = lane.max(m);
  other = lane.max(other);
  T sum = 0, ties = 0, rest = 0;
  FASTADV_SIMD_REDUCE(+, sum, ties, rest)
  for (int64_t j = lane.index; j < cols; j += Lanes) {
    const T zj = Io::load(z, j);
    const T e = exp_nonpositive(zj - m);
    const bool in_max = j != y && zj == other;
    sum += e;
    ties += in_max ? T(1) : T(0);
    rest += in_max ? T(0) : e;
  }
  return finish_row_stats(m, other, lane.sum(sum), lane.sum(ties), lane.sum(rest));
}

// boosted_cross_entropy (MART's BCE): loss = −log p_y − log(1 − max_{k≠y} p_k). grads[0] = ∂/∂z.
template <typename T, int Lanes, typename S, typename Io, typename Lane>
FASTADV_HOST_DEVICE void boosted_cross_entropy_row(const LogitsParams& p, int64_t r, const Lane& lane) {
  const int64_t cols = p.cols;
  const S* z = static_cast<const S*>(p.inputs[0]) + r * cols;
  const int64_t y = p.labels[r];
  const RowStats<T> stats = labelled_row_stats<T, Lanes, S, Io>(z, cols, y, lane);
  const BoostedTerm<T> term = boosted_term(stats);
  if (lane.index == 0) store_loss<T>(p, 0, r, stats.lse - Io::load(z, y) + term.loss);
  if (p.grads[0]) {
    T* g = static_cast<T*>(p.grads[0]) + r * cols;
    const auto gradient = [&](int64_t j) {
      const T zj = Io::load(z, j);
      store_gradient<T>(g, j, boosted_gradient(zj, exp_nonpositive(zj - stats.lse), j == y, stats, term));
    };
    if (in_blocks<Lanes>(cols)) {
      blocked_for(cols, gradient);
    } else {
      FASTADV_SIMD
      for (int64_t j = lane.index; j < cols; j += Lanes) gradient(j);
    }
  }
}

// The two log-sum-exps of a pair of rows and KL(p(a) ‖ p(b)), in two passes. With Σ p = 1,
// KL = Σ p_j (a_j − b_j) − (lse_a − lse_b), and Σ p_j (a_j − b_j) comes out of the pass that
// sums exp(a − max_a), so no pass recomputes the exponentials. `b_stats` also gets the
// label statistics of b when y >= 0 (MART).
template <typename T>
struct PairStats {
  T lse_a;
  T kl;
  RowStats<T> b;
  T sum_a;  // Σ exp(a − max_a); b's sum is b.sum
};

// With `cache_a`/`cache_b` non-null, exp(a − max_a) and exp(b − max_b) are also stored there
// (the gradient buffers, when they hold the accumulation type), so that the gradient pass
// reads them back instead of computing the exponentials again.
template <typename T, int Lanes, typename S, typename Io, typename Lane>
FASTADV_HOST_DEVICE PairStats<T> pair_stats(const S* a, const S* b, int64_t cols, int64_t y, const Lane& lane,
                                            T* cache_a = nullptr, T* cache_b = nullptr) {
  T ma = -infinity_of<T>(), mb = -infinity_of<T>(), other = -infinity_of<T>();
  FASTADV_SIMD_REDUCE(max, ma, mb, other)
  for (int64_t j = lane.index; j < cols; j += Lanes) {
    const T bj = Io::load(b, j);
    ma = larger(ma, Io::load(a, j));
    mb = larger(mb, bj);
    other = larger(other, j == y ? -infinity_of<T>() : bj);
  }
  ma = lane.max(ma);
  mb = lane.max(mb);
  other = lane.max(other);
  T sa = 0, sb = 0, weighted = 0, ties = 0, rest = 0;
  FASTADV_SIMD_REDUCE(+, sa, sb, weighted, ties, rest)
  for (int64_t j = lane.index; j < cols; j += Lanes) {
    const T aj = Io::load(a, j), bj = Io::load(b, j);
    const T ea = exp_nonpositive(aj - ma), eb = exp_nonpositive(bj - mb);
    sa += ea;
    sb += eb;
    const bool in_max = j != y && bj == other;
    weighted += ea * (aj - bj);
    ties += in_max ? T(1) : T(0);
    rest += in_max ? T(0) : eb;
    if (cache_a != nullptr) {
      cache_a[j] = ea;
      cache_b[j] = eb;
    }
  }
  PairStats<T> stats;
  stats.sum_a = lane.sum(sa);
  stats.lse_a = ma + log(stats.sum_a);
  stats.b = finish_row_stats(mb, other, lane.sum(sb), lane.sum(ties), lane.sum(rest));
  stats.kl = lane.sum(weighted) / stats.sum_a - (stats.lse_a - stats.b.lse);
  return stats;
}

// The CPU's trades_kl: trades_kl_row's statistics and gradients (the same exp_nonpositive, sums and
// formulas) with the exp-heavy loops in blocks of kBlock columns (see blocked_sum), its three
// sums in one pass; trades_kl_row takes it for rows of at least a block on one lane.

template <typename T>
struct KlBlockSums {
  T a[kBlock] = {}, b[kBlock] = {}, weighted[kBlock] = {};
};

template <typename T>
FASTADV_HOST_DEVICE void kl_sums_block(const T* a, const T* b, int64_t start, int64_t fresh_from, T max_a, T max_b,
                                       KlBlockSums<T>& sums, T* cache_a, T* cache_b) {
  FASTADV_SIMD
  for (int64_t k = 0; k < kBlock; ++k) {
    const int64_t j = start + k;
    const bool fresh = j >= fresh_from;
    const T aj = a[j], bj = b[j];
    const T ea = exp_nonpositive(aj - max_a), eb = exp_nonpositive(bj - max_b);
    sums.a[k] += fresh ? ea : T(0);
    sums.b[k] += fresh ? eb : T(0);
    sums.weighted[k] += fresh ? ea * (aj - bj) : T(0);
    if (cache_a != nullptr) {
      cache_a[j] = ea;
      cache_b[j] = eb;
    }
  }
}

template <typename T>
FASTADV_HOST_DEVICE void trades_kl_row_blocked(const LogitsParams& p, int64_t r) {
  const int64_t cols = p.cols;
  const T* a = static_cast<const T*>(p.inputs[0]) + r * cols;
  const T* b = static_cast<const T*>(p.inputs[1]) + r * cols;
  T* ga = p.grads[0] ? static_cast<T*>(p.grads[0]) + r * cols : nullptr;
  T* gb = p.grads[1] ? static_cast<T*>(p.grads[1]) + r * cols : nullptr;
  // Both gradients: cache the exponentials in them, as trades_kl_row does.
  T* cache_a = ga && gb ? ga : nullptr;
  T* cache_b = ga && gb ? gb : nullptr;
  T max_a = -infinity_of<T>(), max_b = -infinity_of<T>();
  FASTADV_SIMD_REDUCE(max, max_a, max_b)
  for (int64_t j = 0; j < cols; ++j) {
    max_a = larger(max_a, a[j]);
    max_b = larger(max_b, b[j]);
  }
  const int64_t whole = cols / kBlock * kBlock;
  KlBlockSums<T> blocks;
  for (int64_t start = 0; start < whole; start += kBlock)
    kl_sums_block(a, b, start, 0, max_a, max_b, blocks, cache_a, cache_b);
  if (whole < cols) kl_sums_block(a, b, cols - kBlock, whole, max_a, max_b, blocks, cache_a, cache_b);
  T sum_a = 0, sum_b = 0, weighted = 0;
  FASTADV_SIMD_REDUCE(+, sum_a, sum_b, weighted)
  for (int64_t k = 0; k < kBlock; ++k) {
    sum_a += blocks.a[k];
    sum_b += blocks.b[k];
    weighted += blocks.weighted[k];
  }
  const T lse_a = max_a + log(sum_a), lse_b = max_b + log(sum_b);
  const T kl = weighted / sum_a - (lse_a - lse_b);
  static_cast<T*>(p.losses[0])[r] = kl;
  const T shift = lse_a - lse_b, scale = static_cast<T>(p.grad_scale);
  if (cache_a) {
    const T inv_a = scale / sum_a, inv_b = scale / sum_b;
    FASTADV_SIMD
    for (int64_t j = 0; j < cols; ++j) {
      const T pj = cache_a[j] * inv_a, qj = cache_b[j] * inv_b;
      cache_a[j] = pj * ((a[j] - b[j]) - shift - kl);
      cache_b[j] = qj - pj;
    }
  } else if (ga || gb) {
    blocked_for(cols, [&](int64_t j) {
      const T aj = a[j], bj = b[j];
      const T pj = scale * exp_nonpositive(aj - lse_a);
      if (ga) ga[j] = pj * ((aj - bj) - shift - kl);
      if (gb) gb[j] = scale * exp_nonpositive(bj - lse_b) - pj;
    });
  }
}

// trades_kl: loss = KL(p(z_nat) ‖ p(z_adv)). grads[0] = ∂/∂z_nat = p·(log p − log q − KL);
// grads[1] = ∂/∂z_adv = q − p; both times p.grad_scale.
template <typename T, int Lanes, typename S, typename Io, typename Lane>
FASTADV_HOST_DEVICE void trades_kl_row(const LogitsParams& p, int64_t r, const Lane& lane) {
  const int64_t cols = p.cols;
  if constexpr (std::is_same<S, T>::value) {
    if (in_blocks<Lanes>(cols)) {
      trades_kl_row_blocked<T>(p, r);
      return;
    }
  }
  const S* a = static_cast<const S*>(p.inputs[0]) + r * cols;
  const S* b = static_cast<const S*>(p.inputs[1]) + r * cols;
  T* ga = p.grads[0] ? static_cast<T*>(p.grads[0]) + r * cols : nullptr;
  T* gb = p.grads[1] ? static_cast<T*>(p.grads[1]) + r * cols : nullptr;
  // Both gradients in the accumulation type (float32/float64 inputs): cache the exponentials.
  T* cache_a = nullptr;
  T* cache_b = nullptr;
  if constexpr (std::is_same<S, T>::value) {
    if (ga && gb) {
      cache_a = ga;
      cache_b = gb;
    }
  }
  const PairStats<T> stats = pair_stats<T, Lanes, S, Io>(a, b, cols, -1, lane, cache_a, cache_b);
  if (lane.index == 0) store_loss<T>(p, 0, r, stats.kl);
  // The gradients of the reduced loss: the scale is folded into the probabilities.
  const T scale = static_cast<T>(p.grad_scale);
  if (cache_a) {
    const T shift = stats.lse_a - stats.b.lse;
    const T inv_sa = scale / stats.sum_a, inv_sb = scale / stats.b.sum;
    FASTADV_SIMD
    for (int64_t j = lane.index; j < cols; j += Lanes) {
      const T pj = cache_a[j] * inv_sa, qj = cache_b[j] * inv_sb;
      cache_a[j] = pj * ((Io::load(a, j) - Io::load(b, j)) - shift - stats.kl);
      cache_b[j] = qj - pj;
    }
  } else if (ga || gb) {
    const T shift = stats.lse_a - stats.b.lse;
    FASTADV_SIMD
    for (int64_t j = lane.index; j < cols; j += Lanes) {
      const T aj = Io::load(a, j), bj = Io::load(b, j);
      const T pj = scale * exp_nonpositive(aj - stats.lse_a);
      if (ga) store_gradient<T>(ga, j, pj * ((aj - bj) - shift - stats.kl));
      if (gb) store_gradient<T>(gb, j, scale * exp_nonpositive(bj - stats.b.lse) - pj);
    }
  }
}


// mart_loss: losses[0] = BCE(p(z_adv), y), losses[1] = KL(p(z_nat) ‖ p(z_adv))·(1 − p_y(z_nat)).
// grads[0] = ∂bce/∂z_adv; grads[1] = ∂weighted_kl/∂z_nat; grads[2] = ∂weighted_kl/∂z_adv (BCE does not depend on z_nat).
template <typename T, int Lanes, typename S, typename Io, typename Lane>
FASTADV_HOST_DEVICE void mart_loss_row(const LogitsParams& p, int64_t r, const Lane& lane) {
  const int64_t cols = p.cols;
  const S* a = static_cast<const S*>(p.inputs[0]) + r * cols;
  const S* b = static_cast<const S*>(p.inputs[1]) + r * cols;
  const int64_t y = p.labels[r];
  const PairStats<T> stats = pair_stats<T, Lanes, S, Io>(a, b, cols, y, lane);
  const BoostedTerm<T> term = boosted_term(stats.b);
  const T kl = stats.kl;
  const T p_y = exp_nonpositive(Io::load(a, y) - stats.lse_a);
  const T weight = T(1) - p_y;
  if (lane.index == 0) {
    store_loss<T>(p, 0, r, stats.b.lse - Io::load(b, y) + term.loss);
    store_loss<T>(p, 1, r, kl * weight);
  }
  T* g_bce_adv = p.grads[0] ? static_cast<T*>(p.grads[0]) + r * cols : nullptr;
  T* g_kl_nat = p.grads[1] ? static_cast<T*>(p.grads[1]) + r * cols : nullptr;
  T* g_kl_adv = p.grads[2] ? static_cast<T*>(p.grads[2]) + r * cols : nullptr;
  if (g_bce_adv || g_kl_nat || g_kl_adv) {
    const T shift = stats.lse_a - stats.b.lse;
    const auto gradients = [&](int64_t j) {
      const T aj = Io::load(a, j), bj = Io::load(b, j);
      const T pj = exp_nonpositive(aj - stats.lse_a), qj = exp_nonpositive(bj - stats.b.lse);
      if (g_bce_adv) store_gradient<T>(g_bce_adv, j, boosted_gradient(bj, qj, j == y, stats.b, term));
      // ∂/∂a_j [w·KL] = w·p_j(log p_j − log q_j − KL) − KL·p_y([j = y] − p_j)
      if (g_kl_nat)
        store_gradient<T>(g_kl_nat, j, weight * pj * ((aj - bj) - shift - kl) - kl * p_y * ((j == y ? T(1) : T(0)) - pj));
      if (g_kl_adv) store_gradient<T>(g_kl_adv, j, weight * (qj - pj));
    };
    FASTADV_SIMD
    for (int64_t j = lane.index; j < cols; j += Lanes) gradients(j);
  }
}

// margin_sq_hinge: loss = Σ_{j≠y} h_j², h_j = max(0, z_j − z_y + δ). grads[0]: 2h_j off the label,
// −2Σ h_j on it.
template <typename T, int Lanes, typename S, typename Io, typename Lane>
FASTADV_HOST_DEVICE void margin_sq_hinge_row(const LogitsParams& p, int64_t r, const Lane& lane) {
  const int64_t cols = p.cols;
  const S* z = static_cast<const S*>(p.inputs[0]) + r * cols;
  const int64_t y = p.labels[r];
  const T shift = static_cast<T>(p.scalars[0]) - Io::load(z, y);
  T loss = 0, total = 0;
  FASTADV_SIMD_REDUCE(+, loss, total)
  for (int64_t j = lane.index; j < cols; j += Lanes) {
    // larger(0, ·) keeps a NaN logit's NaN (larger(a, b) returns b when either is NaN).
    const T h = j == y ? T(0) : larger(T(0), Io::load(z, j) + shift);
    loss += h * h;
    total += h;
  }
  loss = lane.sum(loss);
  total = lane.sum(total);
  if (lane.index == 0) store_loss<T>(p, 0, r, loss);
  if (p.grads[0]) {
    T* g = static_cast<T*>(p.grads[0]) + r * cols;
    FASTADV_SIMD
    for (int64_t j = lane.index; j < cols; j += Lanes)
      store_gradient<T>(g, j, j == y ? T(-2) * total : T(2) * larger(T(0), Io::load(z, j) + shift));
  }
}

// mhuber: f(d) = α²(1 − cos(d/α)) where |d|/α ≤ π/2, else α|d| + (1 − π/2)α²; d = u − v.
// The row's loss is Σ f (seed 002 takes the mean over elements: reduction 3).
// grads[0] = ∂/∂u = f'(d)·grad_scale, grads[1] = ∂/∂v = −grads[0], f'(d) = α sin(d/α) inside, α·sign(d)
// outside. With the moving averages (mhuber_moving_average: inputs 2 and 3, τ = scalars[1]),
// d = ū − v̄ and both gradients carry the factor 1 − τ. One pass: f' does not depend on the
// row's sum.
template <typename T, int Lanes, typename S, typename Io, typename Lane>
FASTADV_HOST_DEVICE void mhuber_row(const LogitsParams& p, int64_t r, const Lane& lane) {
  const int64_t cols = p.cols;
  const S* u = static_cast<const S*>(p.inputs[0]) + r * cols;
  const S* v = static_cast<const S*>(p.inputs[1]) + r * cols;
  const bool averaged = p.inputs[2] != nullptr;
  const S* u_previous = averaged ? static_cast<const S*>(p.inputs[2]) + r * cols : nullptr;
  const S* v_previous = averaged ? static_cast<const S*>(p.inputs[3]) + r * cols : nullptr;
  S* u_average = averaged ? static_cast<S*>(p.extras[0]) + r * cols : nullptr;
  S* v_average = averaged ? static_cast<S*>(p.extras[1]) + r * cols : nullptr;
  const double tau = averaged ? p.scalars[1] : 0.0;
  const T keep = static_cast<T>(tau), take = static_cast<T>(1.0 - tau);
  const T alpha = static_cast<T>(p.scalars[0]);
  const T half_pi = static_cast<T>(1.57079632679489661923);
  const T outer_offset = (T(1) - half_pi) * alpha * alpha;
  const T scale = take * static_cast<T>(p.grad_scale);
  T* gu = p.grads[0] ? static_cast<T*>(p.grads[0]) + r * cols : nullptr;
  T* gv = p.grads[1] ? static_cast<T*>(p.grads[1]) + r * cols : nullptr;
  T sum = 0;
  FASTADV_SIMD_REDUCE(+, sum)
  for (int64_t j = lane.index; j < cols; j += Lanes) {
    T uj = Io::load(u, j), vj = Io::load(v, j);
    if (averaged) {
      uj = keep * Io::load(u_previous, j) + take * uj;
      vj = keep * Io::load(v_previous, j) + take * vj;
      Io::store(u_average, j, uj);
      Io::store(v_average, j, vj);
    }
    const T d = uj - vj;
    const T t = d / alpha;
    const T magnitude = d < T(0) ? -d : d;
    const bool inner = magnitude / alpha <= half_pi;
    const T t_inner = t > half_pi ? half_pi : (t < -half_pi ? -half_pi : t);
    sum += inner ? alpha * alpha * one_minus_cos_half_period(t_inner) : alpha * magnitude + outer_offset;
    if (gu || gv) {
      const T outer = d > T(0) ? alpha : (d < T(0) ? -alpha : d);
      const T slope = scale * (inner ? alpha * sin_half_period(t_inner) : outer);
      if (gu) store_gradient<T>(gu, j, slope);
      if (gv) store_gradient<T>(gv, j, -slope);
    }
  }
  sum = lane.sum(sum);
  if (lane.index == 0) store_loss<T>(p, 0, r, sum);
}

// logit_pairing: loss = ‖a − b‖². grads[0] = 2(a − b), grads[1] = −2(a − b).
template <typename T, int Lanes, typename S, typename Io, typename Lane>
FASTADV_HOST_DEVICE void logit_pairing_row(const LogitsParams& p, int64_t r, const Lane& lane) {
  const int64_t cols = p.cols;
  const S* a = static_cast<const S*>(p.inputs[0]) + r * cols;
  const S* b = static_cast<const S*>(p.inputs[1]) + r * cols;
  T loss = 0;
  FASTADV_SIMD_REDUCE(+, loss)
  for (int64_t j = lane.index; j < cols; j += Lanes) {
    const T d = Io::load(a, j) - Io::load(b, j);
    loss += d * d;
  }
  loss = lane.sum(loss);
  if (lane.index == 0) store_loss<T>(p, 0, r, loss);
  if (p.grads[0] || p.grads[1]) {
    T* ga = p.grads[0] ? static_cast<T*>(p.grads[0]) + r * cols : nullptr;
    T* gb = p.grads[1] ? static_cast<T*>(p.grads[1]) + r * cols : nullptr;
    FASTADV_SIMD
    for (int64_t j = lane.index; j < cols; j += Lanes) {
      const T d2 = T(2) * (Io::load(a, j) - Io::load(b, j));
      if (ga) store_gradient<T>(ga, j, d2);
      if (gb) store_gradient<T>(gb, j, -d2);
    }
  }
}

// logit_squeeze: loss = ‖z‖². grads[0] = 2z.
template <typename T, int Lanes, typename S, typename Io, typename Lane>
FASTADV_HOST_DEVICE void logit_squeeze_row(const LogitsParams& p, int64_t r, const Lane& lane) {
  const int64_t cols = p.cols;
  const S* z = static_cast<const S*>(p.inputs[0]) + r * cols;
  T loss = 0;
  FASTADV_SIMD_REDUCE(+, loss)
  for (int64_t j = lane.index; j < cols; j += Lanes) {
    const T zj = Io::load(z, j);
    loss += zj * zj;
  }
  loss = lane.sum(loss);
  if (lane.index == 0) store_loss<T>(p, 0, r, loss);
  if (p.grads[0]) {
    T* g = static_cast<T*>(p.grads[0]) + r * cols;
    FASTADV_SIMD
    for (int64_t j = lane.index; j < cols; j += Lanes) store_gradient<T>(g, j, T(2) * Io::load(z, j));
  }
}

template <typename T, int Lanes, typename S, typename Io, typename Lane>
FASTADV_HOST_DEVICE void mhuber_moving_average_row(const LogitsParams& p, int64_t r, const Lane& lane) {
  mhuber_row<T, Lanes, S, Io>(p, r, lane);
}

template <>
inline const char* logits_argument_error<LogitsOp::smoothed_cross_entropy>(const LogitsParams& p) {
  if (p.cols < 2) return "smoothed_cross_entropy needs at least 2 classes";
  return p.scalars[0] >= 0 && p.scalars[0] <= 1 ? nullptr : "smoothing must lie in [0, 1]";
}

template <>
inline const char* logits_argument_error<LogitsOp::boosted_cross_entropy>(const LogitsParams& p) {
  return p.cols >= 2 ? nullptr : "boosted_cross_entropy needs at least 2 classes";
}

template <>
inline const char* logits_argument_error<LogitsOp::mart_loss>(const LogitsParams& p) {
  return p.cols >= 2 ? nullptr : "mart_loss needs at least 2 classes";
}

template <>
inline const char* logits_argument_error<LogitsOp::mhuber>(const LogitsParams& p) {
  return p.scalars[0] > 0 ? nullptr : "alpha must be > 0";
}

template <>
inline const char* logits_argument_error<LogitsOp::mhuber_moving_average>(const LogitsParams& p) {
  if (!(p.scalars[0] > 0)) return "alpha must be > 0";
  return p.scalars[1] >= 0 && p.scalars[1] <= 1 ? nullptr : "tau must lie in [0, 1]";
}

// One row of `op`, whichever it is: the single switch both backends go through.
template <typename T, int Lanes, typename S, typename Io, typename Lane>
FASTADV_HOST_DEVICE void logits_row(LogitsOp op, const LogitsParams& p, int64_t r, const Lane& lane) {
#define FASTADV_LOGITS_ROW(name, schema) \
  case LogitsOp::name: name##_row<T, Lanes, S, Io>(p, r, lane); break;
  switch (op) { FASTADV_LOGITS_OPS(FASTADV_LOGITS_ROW) }
#undef FASTADV_LOGITS_ROW
}

// Launches the kernel of `op` on `stream` (a cudaStream_t); defined in cuda/logits_kernel.cu.
void launch_logits_cuda(LogitsOp op, const LogitsParams& p, ScalarKind kind, void* stream);

// ============================================================================= member ops
// The family's ops over the members of an ensemble: V [M, B, C] (member m's logits, or
// probabilities, of sample b; contiguous) in, one M×M matrix per sample out ([B, M, M]). They
// do not fit the [rows, cols] convention of FASTADV_LOGITS_OPS, and their backward cannot be a
// gradient saved by the forward (what flows back is a [B, M, M] matrix, and the Jacobian is
// [B, M, M, M, C]), so they have a list of their own, X(name, schema, backward schema), and a
// backward op `_<name>_backward` each (DESIGN.md, op contract item 2). Generated from the
// list: the MemberOp enum, the CPU and CUDA switches, the schemas (ops.cpp) and the CPU, CUDA
// and Autograd registrations (logits_glue.h, autograd/logits.cpp).
//
// The schema convention: arguments `Tensor V` (the one differentiable input), `Tensor y` (the
// labels, [B]), then `bool`s (MemberParams::flags, in order); one return, [B, M, M] in V's dtype.
// The backward takes `(Tensor grad_<return>, <the forward's arguments>)` and returns the gradient
// with respect to V ([M, B, C]). A sample, all its M vectors, is the unit of work: one CPU task
// step, one CUDA thread block, one Triton program.
#define FASTADV_LOGITS_MEMBER_OPS(X)                                       \
  X(masked_gram, "(Tensor V, Tensor y, bool normalize) -> Tensor G",      \
    "(Tensor grad_G, Tensor V, Tensor y, bool normalize) -> Tensor grad_V")

#define FASTADV_LOGITS_MEMBER_ENUM(name, schema, backward_schema) name,
enum class MemberOp : int { FASTADV_LOGITS_MEMBER_OPS(FASTADV_LOGITS_MEMBER_ENUM) };
#undef FASTADV_LOGITS_MEMBER_ENUM

// The most members a member op takes (fastadv.ops.logits.MAX_MEMBERS checks it first): the
// kernels keep a sample's M×M matrices on the stack (CPU) or in shared memory (CUDA: three
// of them, 24 KiB in float64 at 32 members).
constexpr int64_t kMaxMembers = 32;
constexpr int kMemberMaxFlags = 2;

// One call of a member op, bound from its schema.
struct MemberParams {
  const void* V;           // [M, B, C], contiguous
  const int64_t* labels;   // y: [B], in [0, C)
  const void* grad;        // the backward's incoming gradient [B, M, M], contiguous; null in the forward
  void* out;               // the forward's [B, M, M], or the backward's gradient [M, B, C]; V's dtype
  int64_t members;
  int64_t rows;            // B
  int64_t cols;            // C
  bool flags[kMemberMaxFlags];
};

// Member m's row of sample b.
template <typename S>
FASTADV_HOST_DEVICE const S* member_row(const MemberParams& p, int64_t m, int64_t b) {
  return static_cast<const S*>(p.V) + (m * p.rows + b) * p.cols;
}

// ----------------------------------------------------------------------------- masked_gram
// G_mn = ⟨û_m, û_n⟩ with u_m = v_m ⊙ mask, mask_c = 1 − [c = y], and û_m = u_m / max(‖u_m‖, eps)
// when normalising (torch.nn.functional.normalize's convention, eps = 1e-12), û_m = u_m otherwise.
// An all-zero masked vector normalises to zero: its row and column of G are 0, its diagonal
// entry too. The raw Gram R_mn = ⟨u_m, u_n⟩ (the norms on its diagonal) is all a sample needs:
// G, and the backward's coefficients, are M×M formulas of it.
//
// Backward: with S = dG + dGᵀ, dÛ_m = Σ_n S_mn û_n; through the normalisation
// dU_m = (dÛ_m − û_m (û_m·dÛ_m)) / ‖u_m‖ where ‖u_m‖ > eps, else dÛ_m / eps (the eps branch of the
// max); û_m·dÛ_m = Σ_n S_mn G_mn; dV_m = dU_m ⊙ mask. So dV_m = mask ⊙ Σ_n A_mn u_n, with
// A_mn = S_mn / (d_m d_n) − [m = n, ‖u_m‖ > eps]·(Σ_k S_mk G_mk) / d_m², d = max(‖u‖, eps)
// (A = S without normalisation): the backward recomputes R in one pass over the sample's columns
// and writes dV in a second, and nothing but V and y is saved.
constexpr double kMaskedGramEps = 1e-12;

// The mask as a factor: v·mask keeps an inf or NaN of the true class NaN, as v ⊙ m does.
template <typename T>
FASTADV_HOST_DEVICE T class_mask(int64_t c, int64_t y) {
  return c == y ? T(0) : T(1);
}

// ⟨a ⊙ mask, b ⊙ mask⟩ over a row's columns on `Lanes` lanes (the CUDA kernels: a warp per pair
// of members; the CPU: rows shorter than a block).
template <typename T, int Lanes, typename S, typename Io, typename Lane>
FASTADV_HOST_DEVICE T masked_dot(const S* a, const S* b, int64_t cols, int64_t y, const Lane& lane) {
  T sum = 0;
  FASTADV_SIMD_REDUCE(+, sum)
  for (int64_t c = lane.index; c < cols; c += Lanes) sum += Io::load(a, c) * Io::load(b, c) * class_mask<T>(c, y);
  return lane.sum(sum);
}

// d_m = max(‖u_m‖, eps) from R_mm = ‖u_m‖²; a NaN norm stays NaN (clamp_min's behaviour).
template <typename T>
FASTADV_HOST_DEVICE T masked_gram_divisor(T squared_norm) {
  return larger(static_cast<T>(kMaskedGramEps), sqrt(squared_norm));
}

// G_mn from R_mn and the divisors d_m, d_n.
template <typename T>
FASTADV_HOST_DEVICE T masked_gram_entry(T raw, T divisor_m, T divisor_n, bool normalize) {
  return normalize ? raw / (divisor_m * divisor_n) : raw;
}

// A_mn (see above) from R, S = dG + dGᵀ (both row-major M×M, accumulation type) and the divisors.
template <typename T>
FASTADV_HOST_DEVICE T masked_gram_coefficient(const T* raw, const T* sym, const T* divisors, int64_t members,
                                              int64_t m, int64_t n, bool normalize) {
  const T s = sym[m * members + n];
  if (!normalize) return s;
  T a = s / (divisors[m] * divisors[n]);
  if (m == n && sqrt(raw[m * members + m]) > static_cast<T>(kMaskedGramEps)) {
    T along = 0;  // û_m·dÛ_m
    for (int64_t k = 0; k < members; ++k)
      along += sym[m * members + k] * masked_gram_entry(raw[m * members + k], divisors[m], divisors[k], true);
    a -= along / (divisors[m] * divisors[m]);
  }
  return a;
}

// dV_m at column c: mask_c · Σ_n A_mn (v_n,c · mask_c), A row-major M×M.
template <typename T, typename S, typename Io>
FASTADV_HOST_DEVICE T masked_gram_gradient(const T* coefficients, const MemberParams& p, int64_t b, int64_t m,
                                           int64_t c, int64_t y) {
  const T mask = class_mask<T>(c, y);
  T sum = 0;
  for (int64_t n = 0; n < p.members; ++n)
    sum += coefficients[m * p.members + n] * (Io::load(member_row<S>(p, n, b), c) * mask);
  return sum * mask;
}

// Pair index q of the M(M+1)/2 pairs m <= n, row by row: (0,0), (0,1), ..., (1,1), ...
FASTADV_HOST_DEVICE void member_pair(int64_t q, int64_t members, int64_t& m, int64_t& n) {
  m = 0;
  while (q >= members - m) {
    q -= members - m;
    ++m;
  }
  n = m + q;
}

// Launches member op `op` (its forward, or its backward) on `stream` (a cudaStream_t); defined
// in cuda/logits_kernel.cu.
void launch_logits_member_cuda(MemberOp op, bool backward, const MemberParams& p, ScalarKind kind, void* stream);

}  // namespace fastadv
