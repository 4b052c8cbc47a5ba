// Tensor -> parameter-struct glue shared by the CPU and CUDA registrations. The Python layer
// validates every argument first with clear messages; these TORCH_CHECKs are the second line.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/string_view.h>

#include <optional>
#include <tuple>

#include "fastadv/logits.h"
#include "fastadv/pgd.h"

// CPU kernels are compiled once per instruction set (AVX-512, AVX2, baseline); the loader picks
// the best clone for the running CPU.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FASTADV_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FASTADV_CPU_CLONES
#endif

namespace fastadv {

inline ScalarKind scalar_kind_of(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return ScalarKind::Float32;
    case at::kDouble: return ScalarKind::Float64;
    case at::kHalf: return ScalarKind::Float16;
    case at::kBFloat16: return ScalarKind::BFloat16;
    default: TORCH_CHECK(false, "fastadv: ", name, " must be a floating tensor, got ", t.scalar_type());
  }
}

inline at::ScalarType accumulate_type_of(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// Rows of a [B, ...] tensor are consecutive blocks of memory when it is dense and the batch
// dimension is outermost (contiguous and channels_last tensors both are).
inline bool has_row_layout(const at::Tensor& t) {
  if (t.dim() == 0) return false;
  if (!t.is_non_overlapping_and_dense()) return false;
  const int64_t rows = t.size(0);
  return rows <= 1 || t.stride(0) * rows == t.numel();
}

inline void check_like(const at::Tensor& t, const at::Tensor& ref, const char* name) {
  TORCH_CHECK(t.sizes() == ref.sizes(), "fastadv: ", name, " must have shape ", ref.sizes(), ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "fastadv: ", name, " must have dtype ", ref.scalar_type(), ", got ", t.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), "fastadv: ", name, " must be on ", ref.device(), ", got ", t.device());
  TORCH_CHECK(t.numel() == 0 || t.strides() == ref.strides(), "fastadv: ", name, " must share x_adv's memory layout");
}

inline const void* per_sample_pointer(const std::optional<at::Tensor>& t, const at::Tensor& ref,
                                      at::ScalarType dtype, const char* name) {
  if (!t.has_value()) return nullptr;
  TORCH_CHECK(t->dim() == 1 && t->size(0) == ref.size(0), "fastadv: ", name, " must have shape [", ref.size(0), "], got ", t->sizes());
  TORCH_CHECK(t->scalar_type() == dtype, "fastadv: ", name, " must have dtype ", dtype, ", got ", t->scalar_type());
  TORCH_CHECK(t->device() == ref.device(), "fastadv: ", name, " must be on ", ref.device());
  TORCH_CHECK(t->is_contiguous(), "fastadv: ", name, " must be contiguous");
  return t->data_ptr();
}

inline PgdStepParams pgd_step_params(const at::Tensor& out, const at::Tensor& x_adv,
                                     const at::Tensor& grad, const at::Tensor& x, double eps,
                                     double alpha, const std::optional<at::Tensor>& eps_per_sample,
                                     const std::optional<at::Tensor>& alpha_per_sample,
                                     c10::string_view norm, double clip_min, double clip_max,
                                     const std::optional<at::Tensor>& active) {
  TORCH_CHECK(x_adv.dim() >= 1, "fastadv: x_adv must have a batch dimension");
  TORCH_CHECK(has_row_layout(x_adv), "fastadv: x_adv must be dense with the batch dimension outermost");
  check_like(grad, x_adv, "grad");
  check_like(x, x_adv, "x");
  check_like(out, x_adv, "out");
  TORCH_CHECK(norm == "linf" || norm == "l2", "fastadv: norm must be 'linf' or 'l2', got '", std::string(norm), "'");
  TORCH_CHECK(clip_min <= clip_max, "fastadv: clip_min must not exceed clip_max");
  const at::ScalarType acc = accumulate_type_of(x_adv.scalar_type());

  PgdStepParams p{};
  p.out = out.data_ptr();
  p.x_adv = x_adv.data_ptr();
  p.grad = grad.data_ptr();
  p.x = x.data_ptr();
  p.rows = x_adv.size(0);
  p.row_size = p.rows == 0 ? 0 : x_adv.numel() / p.rows;
  p.eps_per_sample = per_sample_pointer(eps_per_sample, x_adv, acc, "eps");
  p.alpha_per_sample = per_sample_pointer(alpha_per_sample, x_adv, acc, "alpha");
  TORCH_CHECK(p.eps_per_sample != nullptr || eps >= 0, "fastadv: eps must be >= 0, got ", eps);
  TORCH_CHECK(p.alpha_per_sample != nullptr || alpha >= 0, "fastadv: alpha must be >= 0, got ", alpha);
  p.eps = eps;
  p.alpha = alpha;
  p.active = static_cast<const bool*>(per_sample_pointer(active, x_adv, at::kBool, "active"));
  p.clip_min = clip_min;
  p.clip_max = clip_max;
  p.norm = norm == "linf" ? PgdNorm::Linf : PgdNorm::L2;
  return p;
}

// The two registered entry points of a backend (out of place, in place), built from its
// `run(params, x_adv)`, so that the CPU and CUDA registrations differ only in how they run.
template <void (*Run)(const PgdStepParams&, const at::Tensor&)>
struct PgdStepEntryPoints {
  static at::Tensor step(const at::Tensor& x_adv, const at::Tensor& grad, const at::Tensor& x, double eps,
                         double alpha, const std::optional<at::Tensor>& eps_per_sample,
                         const std::optional<at::Tensor>& alpha_per_sample, c10::string_view norm,
                         double clip_min, double clip_max, const std::optional<at::Tensor>& active) {
    at::Tensor out = at::empty_like(x_adv);
    Run(pgd_step_params(out, x_adv, grad, x, eps, alpha, eps_per_sample, alpha_per_sample, norm, clip_min,
                        clip_max, active),
        x_adv);
    return out;
  }

  static void step_(const at::Tensor& x_adv, const at::Tensor& grad, const at::Tensor& x, double eps,
                    double alpha, const std::optional<at::Tensor>& eps_per_sample,
                    const std::optional<at::Tensor>& alpha_per_sample, c10::string_view norm, double clip_min,
                    double clip_max, const std::optional<at::Tensor>& active) {
    Run(pgd_step_params(x_adv, x_adv, grad, x, eps, alpha, eps_per_sample, alpha_per_sample, norm, clip_min,
                        clip_max, active),
        x_adv);
  }
};

// ----------------------------------------------------------------------------- logits family
// One call of a fused logit-head loss: checks the inputs, allocates the outputs (per-row
// losses in the input dtype; each asked-for gradient as a [rows, cols] tensor, an empty [0]
// tensor otherwise) and fills the parameter struct.
struct LogitsCall {
  LogitsParams params{};
  at::Tensor loss, loss2, grad0, grad1, grad2;

  LogitsCall(const at::Tensor& a, const at::Tensor* b, const at::Tensor* labels, double scalar, bool need0,
             bool need1 = false, bool need2 = false, bool per_row_loss = true, bool second_loss = false) {
    TORCH_CHECK(a.dim() == 2, "fastadv: logits must have shape [B, C], got ", a.sizes());
    TORCH_CHECK(a.is_contiguous(), "fastadv: logits must be contiguous");
    scalar_kind_of(a, "logits");
    if (b != nullptr) {
      check_like(*b, a, "the second logits input");
      TORCH_CHECK(b->is_contiguous(), "fastadv: the second logits input must be contiguous");
    }
    if (labels != nullptr) {
      TORCH_CHECK(labels->dim() == 1 && labels->size(0) == a.size(0), "fastadv: y must have shape [", a.size(0),
                  "], got ", labels->sizes());
      TORCH_CHECK(labels->scalar_type() == at::kLong, "fastadv: y must be int64, got ", labels->scalar_type());
      TORCH_CHECK(labels->device() == a.device(), "fastadv: y must be on ", a.device());
      TORCH_CHECK(labels->is_contiguous(), "fastadv: y must be contiguous");
    }
    const auto row_dtype = per_row_loss ? a.scalar_type() : accumulate_type_of(a.scalar_type());
    loss = at::empty({a.size(0)}, a.options().dtype(row_dtype));
    loss2 = second_loss ? at::empty({a.size(0)}, a.options()) : at::empty({0}, a.options());
    grad0 = need0 ? at::empty_like(a) : at::empty({0}, a.options());
    grad1 = need1 ? at::empty_like(a) : at::empty({0}, a.options());
    grad2 = need2 ? at::empty_like(a) : at::empty({0}, a.options());
    params.a = a.data_ptr();
    params.b = b != nullptr ? b->data_ptr() : nullptr;
    params.labels = labels != nullptr ? labels->data_ptr<int64_t>() : nullptr;
    params.loss = loss.data_ptr();
    params.loss2 = second_loss ? loss2.data_ptr() : nullptr;
    params.grad0 = need0 ? grad0.data_ptr() : nullptr;
    params.grad1 = need1 ? grad1.data_ptr() : nullptr;
    params.grad2 = need2 ? grad2.data_ptr() : nullptr;
    params.rows = a.size(0);
    params.cols = a.size(1);
    params.scalar = scalar;
    params.grad_scale = 1.0;
  }
};

// The mean (reduction 1) or sum (2) of per-row losses, a 0-dim tensor of their dtype. On the CPU
// a plain loop in double: an ATen reduction costs more to set up than to run on a few thousand
// rows (the mean took 60 µs of a 0.9 ms trades_kl forward and backward at B = 4096).
inline at::Tensor reduce_rows(const at::Tensor& loss, int64_t reduction) {
  if (!loss.is_cpu() || (loss.scalar_type() != at::kFloat && loss.scalar_type() != at::kDouble)) {
    return reduction == 1 ? loss.mean() : loss.sum();
  }
  double total = 0;
  const int64_t rows = loss.size(0);
  if (loss.scalar_type() == at::kFloat) {
    const float* values = loss.data_ptr<float>();
    for (int64_t r = 0; r < rows; ++r) total += values[r];
  } else {
    const double* values = loss.data_ptr<double>();
    for (int64_t r = 0; r < rows; ++r) total += values[r];
  }
  if (reduction == 1) total /= static_cast<double>(rows);  // 0 / 0 = NaN for no rows, as torch's mean
  at::Tensor result = at::empty({}, loss.options());
  if (loss.scalar_type() == at::kFloat) {
    *result.data_ptr<float>() = static_cast<float>(total);
  } else {
    *result.data_ptr<double>() = total;
  }
  return result;
}

// The registered entry points of the logits family, built from a backend's
// `run(op, params, a, mhuber_total)`, so that the CPU and CUDA registrations differ only in how
// they run. `mhuber_total` is a one-element tensor of the accumulation type (mhuber only).
template <void (*Run)(LogitsOp, const LogitsParams&, const at::Tensor&, const at::Tensor&)>
struct LogitsEntryPoints {
  using Pair = std::tuple<at::Tensor, at::Tensor>;
  using Triple = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

  static void run(LogitsOp op, const LogitsCall& call, const at::Tensor& a) { Run(op, call.params, a, at::Tensor()); }

  static Triple soft_cross_entropy(const at::Tensor& z, const at::Tensor& target, bool grad_z, bool grad_target) {
    LogitsCall call(z, &target, nullptr, 0.0, grad_z, grad_target);
    run(LogitsOp::SoftCrossEntropy, call, z);
    return {call.loss, call.grad0, call.grad1};
  }

  static Pair smoothed_cross_entropy(const at::Tensor& z, const at::Tensor& y, double smoothing, bool grad_z) {
    TORCH_CHECK(smoothing >= 0 && smoothing <= 1, "fastadv: smoothing must lie in [0, 1], got ", smoothing);
    TORCH_CHECK(z.dim() != 2 || z.size(1) >= 2, "fastadv: smoothed_cross_entropy needs at least 2 classes");
    LogitsCall call(z, nullptr, &y, smoothing, grad_z);
    run(LogitsOp::SmoothedCrossEntropy, call, z);
    return {call.loss, call.grad0};
  }

  static Pair boosted_cross_entropy(const at::Tensor& z, const at::Tensor& y, bool grad_z) {
    TORCH_CHECK(z.dim() != 2 || z.size(1) >= 2, "fastadv: boosted_cross_entropy needs at least 2 classes");
    LogitsCall call(z, nullptr, &y, 0.0, grad_z);
    run(LogitsOp::BoostedCrossEntropy, call, z);
    return {call.loss, call.grad0};
  }

  // reduction: 0 none, 1 mean, 2 sum (at::Reduction's numbering).
  static Triple trades_kl(const at::Tensor& z_nat, const at::Tensor& z_adv, int64_t reduction, bool grad_nat,
                          bool grad_adv) {
    TORCH_CHECK(reduction >= 0 && reduction <= 2, "fastadv: reduction must be 0 (none), 1 (mean) or 2 (sum), got ",
                reduction);
    LogitsCall call(z_nat, &z_adv, nullptr, 0.0, grad_nat, grad_adv);
    if (reduction == 1 && call.params.rows > 0) call.params.grad_scale = 1.0 / static_cast<double>(call.params.rows);
    run(LogitsOp::TradesKl, call, z_nat);
    at::Tensor loss = reduction == 0 ? call.loss : reduce_rows(call.loss, reduction);
    return {loss, call.grad0, call.grad1};
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> mart_loss(
      const at::Tensor& z_nat, const at::Tensor& z_adv, const at::Tensor& y, bool grad_nat, bool grad_adv) {
    TORCH_CHECK(z_nat.dim() != 2 || z_nat.size(1) >= 2, "fastadv: mart_loss needs at least 2 classes");
    LogitsCall call(z_nat, &z_adv, &y, 0.0, grad_adv, grad_nat, grad_adv, true, true);
    run(LogitsOp::MartLoss, call, z_nat);
    return {call.loss, call.loss2, call.grad0, call.grad1, call.grad2};
  }

  static Pair margin_sq_hinge(const at::Tensor& z, const at::Tensor& y, double delta, bool grad_z) {
    LogitsCall call(z, nullptr, &y, delta, grad_z);
    run(LogitsOp::MarginSqHinge, call, z);
    return {call.loss, call.grad0};
  }

  static Triple mhuber(const at::Tensor& u, const at::Tensor& v, double alpha, bool grad_u, bool grad_v) {
    TORCH_CHECK(alpha > 0, "fastadv: alpha must be > 0, got ", alpha);
    LogitsCall call(u, &v, nullptr, alpha, grad_u, grad_v, false, false);
    at::Tensor total = at::empty({}, call.loss.options());
    Run(LogitsOp::Mhuber, call.params, u, total);
    return {total.to(u.scalar_type()), call.grad0, call.grad1};
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> mhuber_moving_average(
      const at::Tensor& u, const at::Tensor& v, const at::Tensor& u_previous, const at::Tensor& v_previous, double tau,
      double alpha, bool grad_u, bool grad_v) {
    TORCH_CHECK(alpha > 0, "fastadv: alpha must be > 0, got ", alpha);
    TORCH_CHECK(tau >= 0 && tau <= 1, "fastadv: tau must lie in [0, 1], got ", tau);
    LogitsCall call(u, &v, nullptr, alpha, grad_u, grad_v, false, false);
    check_like(u_previous, u, "u_previous");
    check_like(v_previous, u, "v_previous");
    TORCH_CHECK(u_previous.is_contiguous() && v_previous.is_contiguous(), "fastadv: the previous averages must be contiguous");
    at::Tensor u_average = at::empty_like(u), v_average = at::empty_like(u);
    call.params.a_previous = u_previous.data_ptr();
    call.params.b_previous = v_previous.data_ptr();
    call.params.a_average = u_average.data_ptr();
    call.params.b_average = v_average.data_ptr();
    call.params.tau = tau;
    at::Tensor total = at::empty({}, call.loss.options());
    Run(LogitsOp::MhuberMovingAverage, call.params, u, total);
    return {total.to(u.scalar_type()), u_average, v_average, call.grad0, call.grad1};
  }

  static Triple logit_pairing(const at::Tensor& z_nat, const at::Tensor& z_adv, bool grad_nat, bool grad_adv) {
    LogitsCall call(z_nat, &z_adv, nullptr, 0.0, grad_nat, grad_adv);
    run(LogitsOp::LogitPairing, call, z_nat);
    return {call.loss, call.grad0, call.grad1};
  }

  static Pair logit_squeeze(const at::Tensor& z, bool grad_z) {
    LogitsCall call(z, nullptr, nullptr, 0.0, grad_z);
    run(LogitsOp::LogitSqueeze, call, z);
    return {call.loss, call.grad0};
  }
};

}  // namespace fastadv
