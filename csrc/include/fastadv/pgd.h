// The pgd family: parameters and per-element / per-row math shared by the CPU and CUDA kernels.
//
// Memory model: every tensor is viewed as `rows` samples of `row_size` elements laid out one
// after the other (the batch dimension outermost, the rest dense; contiguous and channels_last
// both qualify). The Python layer guarantees that all inputs and the output share one layout.
#pragma once

#include "fastadv/common.h"

namespace fastadv {

enum class PgdNorm : int { Linf = 0, L2 = 1 };

struct PgdStepParams {
  void* out;              // may equal x_adv (the in-place variant)
  const void* x_adv;
  const void* grad;
  const void* x;
  int64_t rows;
  int64_t row_size;
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

// Implemented in csrc/cuda/pgd_kernel.cu; `stream` is a cudaStream_t.
void launch_pgd_step_cuda(const PgdStepParams& params, ScalarKind kind, void* stream);

}  // namespace fastadv
