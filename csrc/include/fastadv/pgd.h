// The pgd family: parameters and per-element / per-row math shared by the CPU and CUDA kernels.
//
// Memory model: every tensor is viewed as `rows` samples of `row_size` elements laid out one
// after the other (the batch dimension outermost, the rest dense; contiguous and channels_last
// both qualify). The Python layer guarantees that all inputs and the output share one layout.
#pragma once

#include "fastadv/common.h"

namespace fastadv {

enum class PgdNorm : int { Linf = 0, L2 = 1 };

// What every step of the family reads and writes: the batches and their shape as rows.
struct StepRows {
  void* out;  // may equal x_adv (the in-place variant)
  const void* x_adv;
  const void* grad;
  const void* x;
  int64_t rows;
  int64_t row_size;
};

struct PgdStepParams : StepRows {
  // Per-sample tensors hold the accumulation type (float, or double for float64 inputs);
  // when null the scalar value applies to every sample.
  const void* eps_per_sample;
  const void* alpha_per_sample;
  double eps;
  double alpha;
  const bool* active;     // null: every sample is active
  double clip_min;
  double clip_max;
  PgdNorm norm;
};

// L-infinity step of one element: x' = clip(proj_{|x'-x| <= eps}(x_adv + alpha * sign(g))).
template <typename acc_t>
FASTADV_HOST_DEVICE acc_t pgd_linf_element(acc_t x_adv, acc_t g, acc_t x, acc_t eps, acc_t alpha,
                                           acc_t lo, acc_t hi) {
  const acc_t stepped = x_adv + alpha * sign_propagating_nan(g);
  return clamp_propagating_nan(clamp_propagating_nan(stepped, x - eps, x + eps), lo, hi);
}

// The L2 step of one row needs three sums over the row, gathered in one pass:
// |g|^2, |delta|^2 and <delta, g> with delta = x_adv - x. From them follow, without a second
// reduction, the step scale s = alpha / |g| and the shrink factor f that projects
// delta + s*g back onto the eps-ball: x' = clip(x + f * (x_adv + s*g - x)).
template <typename acc_t>
struct PgdL2Coefficients {
  acc_t step_scale;
  acc_t shrink;
};

template <typename acc_t>
FASTADV_HOST_DEVICE PgdL2Coefficients<acc_t> pgd_l2_coefficients(acc_t grad_sq, acc_t delta_sq,
                                                                  acc_t delta_dot_grad, acc_t eps,
                                                                  acc_t alpha) {
  PgdL2Coefficients<acc_t> c;
  // A zero gradient makes no step. A NaN gradient sum is not zero, so it propagates.
  c.step_scale = grad_sq == acc_t(0) ? acc_t(0) : alpha / sqrt(grad_sq);
  acc_t new_sq = delta_sq + acc_t(2) * c.step_scale * delta_dot_grad +
                 c.step_scale * c.step_scale * grad_sq;
  new_sq = new_sq < acc_t(0) ? acc_t(0) : new_sq;  // rounding can make an exact 0 negative
  const acc_t new_norm = sqrt(new_sq);
  c.shrink = new_norm > eps ? eps / new_norm : acc_t(1);
  return c;
}

// Inside the ball (shrink == 1) the step is applied to x_adv directly rather than as
// x + (x_adv - x + step), so a zero gradient leaves x_adv bit-for-bit where it was.
template <typename acc_t>
FASTADV_HOST_DEVICE acc_t pgd_l2_element(acc_t x_adv, acc_t g, acc_t x,
                                         PgdL2Coefficients<acc_t> c, acc_t lo, acc_t hi) {
  const acc_t stepped = x_adv + c.step_scale * g;
  const acc_t projected = c.shrink == acc_t(1) ? stepped : x + c.shrink * (stepped - x);
  return clamp_propagating_nan(projected, lo, hi);
}

// ----------------------------------------------------------------------------- UDR
// UDR's step (seed 003 ch. 5, METHODS.md section 5): x_int = x_adv + η·sign(g), then
// x' = clip(x_int − η·λ·∇ĉ(x_int, x)), no projection onto the ball. The cost decides the pull
// ∇ĉ, with d = x_int − x per element:
//   pixel: (d − clamp(d, −ε, ε))/τ, each element outside the L∞ ball pulled back by its own
//          excess (the authors' code); elementwise.
//   l2:    ĉ of c = ½‖d‖² with the per-element ball test: d where |d| < ε, d/τ where |d| ≥ ε
//          (App. G, Eq. 29); elementwise.
//   linf:  c = max |d|: slope (1 inside, 1/τ outside) times the norm's minimum-norm subgradient,
//          sign(d)/ties on the elements reaching the maximum; a row takes one reduction (max |d|,
//          then the number of elements reaching it) before its write.
// soft_cost returns the statistic λ's update compares with ε, per sample: for pixel the mean |d|
// over the sample's elements, for l2 and linf ĉ∞ = soft(max |d|) (c inside the ball,
// ε + (c − ε)/τ outside).
enum class UdrCost : int { L2 = 0, Linf = 1, Pixel = 2 };

struct UdrStepParams : StepRows {
  const void* eps_per_sample;  // accumulation type; null: eps for every sample
  double eps;
  double eta;
  double lam;
  double tau;
  const bool* active;  // null: every sample is active
  double clip_min;
  double clip_max;
  UdrCost cost;
};

struct SoftCostParams {
  void* out;  // [rows], accumulation type
  const void* x_adv;
  const void* x;
  int64_t rows;
  int64_t row_size;
  const void* eps_per_sample;
  double eps;
  double tau;
  UdrCost cost;
};

// Whether a cost's pull is elementwise (no reduction over the row).
FASTADV_HOST_DEVICE bool udr_elementwise(UdrCost cost) { return cost != UdrCost::Linf; }

template <typename acc_t>
FASTADV_HOST_DEVICE acc_t udr_intermediate(acc_t x_adv, acc_t g, acc_t eta) {
  return x_adv + eta * sign_propagating_nan(g);
}

// ĉ from c: c inside the ball (c < ε), ε + (c − ε)/τ outside.
template <typename acc_t>
FASTADV_HOST_DEVICE acc_t soft_cost_of(acc_t c, acc_t eps, acc_t tau) {
  return c < eps ? c : eps + (c - eps) / tau;
}

// An elementwise cost's new element: x_int − η·λ·pull(d) (pixel or l2, above), clipped. A NaN
// in x_int or x makes the element NaN.
template <typename acc_t>
FASTADV_HOST_DEVICE acc_t udr_elementwise_element(acc_t x_int, acc_t x, acc_t eps, acc_t eta_lam, acc_t tau,
                                                  UdrCost cost, acc_t lo, acc_t hi) {
  const acc_t d = x_int - x;
  acc_t pull;
  if (cost == UdrCost::Pixel) {
    pull = (d - clamp_propagating_nan(d, -eps, eps)) / tau;  // the excess over the ball: 0 inside
  } else {
    pull = (d < acc_t(0) ? -d : d) < eps ? d : d / tau;
  }
  return clamp_propagating_nan(x_int - eta_lam * pull, lo, hi);
}

// linf: the coefficient of a row's correction x' = x_int − coefficient·sign(d) on the elements
// where |d| reaches the maximum c: η·λ·slope/ties (the minimum-norm subgradient shares the slope
// among tied elements), 0 where c = 0.
template <typename acc_t>
FASTADV_HOST_DEVICE acc_t udr_linf_coefficient(acc_t c, acc_t ties, acc_t eps, acc_t eta, acc_t lam, acc_t tau) {
  const acc_t slope = c < eps ? acc_t(1) : acc_t(1) / tau;
  return c == acc_t(0) ? acc_t(0) : eta * lam * slope / ties;
}

template <typename acc_t>
FASTADV_HOST_DEVICE acc_t udr_linf_element(acc_t x_int, acc_t x, acc_t c, acc_t coefficient, acc_t lo, acc_t hi) {
  const acc_t d = x_int - x;
  const acc_t magnitude = d < acc_t(0) ? -d : d;
  const acc_t correction = magnitude == c ? sign_propagating_nan(d) : acc_t(0);
  return clamp_propagating_nan(x_int - coefficient * correction, lo, hi);
}

// soft_cost's statistic from a row's reduction: `reduced` is Σ|d| for pixel, max |d| otherwise.
template <typename acc_t>
FASTADV_HOST_DEVICE acc_t udr_statistic(acc_t reduced, int64_t n, acc_t eps, acc_t tau, UdrCost cost) {
  return cost == UdrCost::Pixel ? (n > 0 ? reduced / acc_t(n) : acc_t(0)) : soft_cost_of(reduced, eps, tau);
}

// Implemented in csrc/cuda/pgd_kernel.cu; `stream` is a cudaStream_t.
void launch_pgd_step_cuda(const PgdStepParams& params, ScalarKind kind, void* stream);
void launch_udr_step_cuda(const UdrStepParams& params, ScalarKind kind, void* stream);
void launch_soft_cost_cuda(const SoftCostParams& params, ScalarKind kind, void* stream);

}  // namespace fastadv
