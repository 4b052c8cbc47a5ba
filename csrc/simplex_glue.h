// Tensor -> parameter-struct glue of the simplex family, shared by the CPU and CUDA
// registrations: the second line of checks (fastadv/ops/simplex.py validates first), the
// outputs, and the three registered entry points built from a backend's runners.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <optional>
#include <tuple>

#include "common_glue.h"
#include "fastadv/simplex.h"

namespace fastadv {

// simplex_project's and simplex_distance_sq's rows: any m ≥ 1 (the kernels count a row's
// coordinates in an int).
inline void check_task_rows(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 2 && t.size(1) >= 1 && t.size(1) <= std::numeric_limits<int>::max(), "fastadv: ", name,
              " must have shape [B, m] with m >= 1 tasks, got ", t.sizes());
  TORCH_CHECK(t.is_floating_point(), "fastadv: ", name, " must be a floating tensor, got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), "fastadv: ", name, " must be contiguous");
}

// An optional bool [B, m] tensor like `ref`: its data, or null.
inline const bool* task_mask_pointer(const std::optional<at::Tensor>& t, const at::Tensor& ref, const char* name) {
  if (!t.has_value()) return nullptr;
  TORCH_CHECK(t->scalar_type() == at::kBool, "fastadv: ", name, " must be a bool tensor, got ", t->scalar_type());
  TORCH_CHECK(t->sizes() == ref.sizes(), "fastadv: ", name, " must have shape ", ref.sizes(), ", got ", t->sizes());
  TORCH_CHECK(t->device() == ref.device(), "fastadv: ", name, " must be on ", ref.device(), ", got ", t->device());
  TORCH_CHECK(t->is_contiguous(), "fastadv: ", name, " must be contiguous");
  return t->data_ptr<bool>();
}

// The registered entry points of a backend, from its three runners (params, the input tensor).
template <void (*Project)(const SimplexProjectParams&, const at::Tensor&),
          void (*Distance)(const SimplexDistanceParams&, const at::Tensor&),
          void (*MinNorm)(const MinNormParams&, const at::Tensor&)>
struct SimplexEntryPoints {
  static at::Tensor project(const at::Tensor& v, const std::optional<at::Tensor>& mask) {
    check_task_rows(v, "v");
    at::Tensor out = at::empty_like(v);
    SimplexProjectParams p{};
    p.out = out.data_ptr();
    p.v = v.data_ptr();
    p.mask = task_mask_pointer(mask, v, "mask");
    p.rows = v.size(0);
    p.tasks = static_cast<int>(v.size(1));
    if (p.rows > 0) Project(p, v);
    return out;
  }

  static std::tuple<at::Tensor, at::Tensor> distance_sq(const at::Tensor& w, const std::optional<at::Tensor>& achieved,
                                                        bool grad_w) {
    check_task_rows(w, "w");
    at::Tensor omega = at::empty({w.size(0)}, w.options());
    at::Tensor grad = grad_w ? at::empty_like(w) : at::empty({0}, w.options());
    SimplexDistanceParams p{};
    p.omega = omega.data_ptr();
    p.grad = grad_w ? grad.data_ptr() : nullptr;
    p.w = w.data_ptr();
    p.achieved = task_mask_pointer(achieved, w, "achieved");
    p.rows = w.size(0);
    p.tasks = static_cast<int>(w.size(1));
    if (p.rows > 0) Distance(p, w);
    return {omega, grad};
  }

  static std::tuple<at::Tensor, at::Tensor> min_norm_weights(const at::Tensor& Q,
                                                             const std::optional<at::Tensor>& achieved,
                                                             const std::optional<at::Tensor>& init, double lam,
                                                             int64_t solver, int64_t steps, double lr) {
    TORCH_CHECK(Q.dim() == 3 && Q.size(1) == Q.size(2) && Q.size(1) >= 1 && Q.size(1) <= kMaxTasks,
                "fastadv: Q must have shape [B, m, m] with 1 to ", kMaxTasks,
                " tasks (min_norm_weights' limit; simplex_project and simplex_distance_sq take any m), got ",
                Q.sizes());
    TORCH_CHECK(Q.is_floating_point(), "fastadv: Q must be a floating tensor, got ", Q.scalar_type());
    TORCH_CHECK(Q.is_contiguous(), "fastadv: Q must be contiguous");
    TORCH_CHECK(solver >= 0 && solver <= 3, "fastadv: solver must be 0 (softmax-gd), 1 (pgd), 2 (apgd) or 3 (exact2), got ",
                solver);
    TORCH_CHECK(solver != 3 || Q.size(1) == 2, "fastadv: solver exact2 needs m = 2 tasks, got ", Q.size(1));
    TORCH_CHECK(steps >= 1, "fastadv: steps must be >= 1, got ", steps);
    TORCH_CHECK(lam >= 0 && std::isfinite(lam), "fastadv: lam must be a finite number >= 0, got ", lam);
    at::Tensor w = at::empty({Q.size(0), Q.size(1)}, Q.options());
    at::Tensor objective = at::empty({Q.size(0)}, Q.options());
    MinNormParams p{};
    p.w = w.data_ptr();
    p.objective = objective.data_ptr();
    p.Q = Q.data_ptr();
    p.achieved = task_mask_pointer(achieved, w, "achieved");
    if (init.has_value()) {
      check_like(*init, w, "init", "w");
      TORCH_CHECK(init->is_contiguous(), "fastadv: init must be contiguous");
      p.init = init->data_ptr();
    }
    p.rows = Q.size(0);
    p.tasks = static_cast<int>(Q.size(1));
    p.lam = lam;
    p.lr = lr;
    p.steps = static_cast<int>(steps);
    p.solver = static_cast<SimplexSolver>(solver);
    if (p.rows > 0) MinNorm(p, Q);
    return {w, objective};
  }
};

template <typename Entry>
void register_simplex_kernels(torch::Library& m) {
  m.impl("simplex_project", &Entry::project);
  m.impl("simplex_distance_sq", &Entry::distance_sq);
  m.impl("min_norm_weights", &Entry::min_norm_weights);
}

}  // namespace fastadv
