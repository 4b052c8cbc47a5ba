// The pgd family's glue (PGD's step and UDR's step and soft cost): Tensor -> parameter structs
// and the registered entry points of a backend, shared by csrc/cpu/pgd.cpp and csrc/cuda/pgd.cpp.
#pragma once

#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/string_view.h>

#include <optional>

#include "common_glue.h"
#include "fastadv/pgd.h"

namespace fastadv {

// Rows of a [B, ...] tensor are consecutive blocks of memory when it is dense and the batch
// dimension is outermost (contiguous and channels_last tensors both are).
inline bool has_row_layout(const at::Tensor& t) {
  if (t.dim() == 0) return false;
  if (!t.is_non_overlapping_and_dense()) return false;
  const int64_t rows = t.size(0);
  return rows <= 1 || t.stride(0) * rows == t.numel();
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

// What every step of the family checks (x_adv in a row layout, grad, x and out like it, a box),
// and then reads: the batches' pointers and their shape as rows.
inline StepRows step_rows(const at::Tensor& out, const at::Tensor& x_adv, const at::Tensor& grad,
                          const at::Tensor& x, double clip_min, double clip_max) {
  TORCH_CHECK(x_adv.dim() >= 1, "fastadv: x_adv must have a batch dimension");
  TORCH_CHECK(has_row_layout(x_adv), "fastadv: x_adv must be dense with the batch dimension outermost");
  check_like(grad, x_adv, "grad", "x_adv");
  check_like(x, x_adv, "x", "x_adv");
  check_like(out, x_adv, "out", "x_adv");
  TORCH_CHECK(clip_min <= clip_max, "fastadv: clip_min must not exceed clip_max");
  StepRows r{};
  r.out = out.data_ptr();
  r.x_adv = x_adv.data_ptr();
  r.grad = grad.data_ptr();
  r.x = x.data_ptr();
  r.rows = x_adv.size(0);
  r.row_size = r.rows == 0 ? 0 : x_adv.numel() / r.rows;
  return r;
}

inline PgdStepParams pgd_step_params(const at::Tensor& out, const at::Tensor& x_adv,
                                     const at::Tensor& grad, const at::Tensor& x, double eps,
                                     double alpha, const std::optional<at::Tensor>& eps_per_sample,
                                     const std::optional<at::Tensor>& alpha_per_sample,
                                     c10::string_view norm, double clip_min, double clip_max,
                                     const std::optional<at::Tensor>& active) {
  PgdStepParams p{};
  static_cast<StepRows&>(p) = step_rows(out, x_adv, grad, x, clip_min, clip_max);
  TORCH_CHECK(norm == "linf" || norm == "l2", "fastadv: norm must be 'linf' or 'l2', got '", std::string(norm), "'");
  const at::ScalarType acc = accumulate_type_of(x_adv.scalar_type());
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

// ----------------------------------------------------------------------------- UDR
inline UdrCost udr_cost(c10::string_view cost) {
  TORCH_CHECK(cost == "pixel" || cost == "l2" || cost == "linf", "fastadv: cost must be 'pixel', 'l2' or 'linf', got '",
              std::string(cost), "'");
  return cost == "pixel" ? UdrCost::Pixel : (cost == "l2" ? UdrCost::L2 : UdrCost::Linf);
}

inline UdrStepParams udr_step_params(const at::Tensor& out, const at::Tensor& x_adv, const at::Tensor& grad,
                                     const at::Tensor& x, double eps, const std::optional<at::Tensor>& eps_per_sample,
                                     double eta, double lam, double tau, c10::string_view cost, double clip_min,
                                     double clip_max, const std::optional<at::Tensor>& active) {
  UdrStepParams p{};
  static_cast<StepRows&>(p) = step_rows(out, x_adv, grad, x, clip_min, clip_max);
  TORCH_CHECK(eta > 0, "fastadv: eta must be > 0, got ", eta);
  TORCH_CHECK(tau > 0, "fastadv: tau must be > 0, got ", tau);
  TORCH_CHECK(lam >= 0, "fastadv: lam must be >= 0, got ", lam);
  p.eps_per_sample = per_sample_pointer(eps_per_sample, x_adv, accumulate_type_of(x_adv.scalar_type()), "eps");
  TORCH_CHECK(p.eps_per_sample != nullptr || eps >= 0, "fastadv: eps must be >= 0, got ", eps);
  p.eps = eps;
  p.eta = eta;
  p.lam = lam;
  p.tau = tau;
  p.active = static_cast<const bool*>(per_sample_pointer(active, x_adv, at::kBool, "active"));
  p.clip_min = clip_min;
  p.clip_max = clip_max;
  p.cost = udr_cost(cost);
  return p;
}

// udr_step, udr_step_ and soft_cost of a backend, from its runners.
template <void (*Run)(const UdrStepParams&, const at::Tensor&), void (*Cost)(const SoftCostParams&, const at::Tensor&)>
struct UdrEntryPoints {
  static at::Tensor step(const at::Tensor& x_adv, const at::Tensor& grad, const at::Tensor& x, double eps,
                         const std::optional<at::Tensor>& eps_per_sample, double eta, double lam, double tau,
                         c10::string_view cost, double clip_min, double clip_max,
                         const std::optional<at::Tensor>& active) {
    at::Tensor out = at::empty_like(x_adv);
    Run(udr_step_params(out, x_adv, grad, x, eps, eps_per_sample, eta, lam, tau, cost, clip_min, clip_max, active),
        x_adv);
    return out;
  }

  static void step_(const at::Tensor& x_adv, const at::Tensor& grad, const at::Tensor& x, double eps,
                    const std::optional<at::Tensor>& eps_per_sample, double eta, double lam, double tau,
                    c10::string_view cost, double clip_min, double clip_max, const std::optional<at::Tensor>& active) {
    Run(udr_step_params(x_adv, x_adv, grad, x, eps, eps_per_sample, eta, lam, tau, cost, clip_min, clip_max, active),
        x_adv);
  }

  static at::Tensor soft_cost(const at::Tensor& x_adv, const at::Tensor& x, double eps,
                              const std::optional<at::Tensor>& eps_per_sample, double tau, c10::string_view cost) {
    TORCH_CHECK(x_adv.dim() >= 1, "fastadv: x_adv must have a batch dimension");
    TORCH_CHECK(has_row_layout(x_adv), "fastadv: x_adv must be dense with the batch dimension outermost");
    check_like(x, x_adv, "x", "x_adv");
    TORCH_CHECK(tau > 0, "fastadv: tau must be > 0, got ", tau);
    const at::ScalarType acc = accumulate_type_of(x_adv.scalar_type());
    at::Tensor out = at::empty({x_adv.size(0)}, x_adv.options().dtype(acc));
    SoftCostParams p{};
    p.out = out.data_ptr();
    p.x_adv = x_adv.data_ptr();
    p.x = x.data_ptr();
    p.rows = x_adv.size(0);
    p.row_size = p.rows == 0 ? 0 : x_adv.numel() / p.rows;
    p.eps_per_sample = per_sample_pointer(eps_per_sample, x_adv, acc, "eps");
    TORCH_CHECK(p.eps_per_sample != nullptr || eps >= 0, "fastadv: eps must be >= 0, got ", eps);
    p.eps = eps;
    p.tau = tau;
    p.cost = udr_cost(cost);
    Cost(p, x_adv);
    return out.to(x_adv.scalar_type());
  }
};

}  // namespace fastadv
