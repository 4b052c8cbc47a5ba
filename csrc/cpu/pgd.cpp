// CPU kernels of the pgd family: parallel over samples, each row vectorised by the compiler.
//
// The loops call the same per-element functions as the CUDA kernels (fastadv/pgd.h). They are
// compiled once per instruction set (target_clones: AVX-512, AVX2, baseline) and the loader
// picks the best one for the running CPU, so one wheel runs everywhere and fast where it can.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <cstring>

#include "../glue.h"
#include "fastadv/pgd.h"

namespace fastadv {
namespace {

// `out` may be `x_adv` itself (in place): every element is read before it is written, at the
// same index, so there is no dependence between iterations and `omp simd` is sound.
template <typename T>
FASTADV_CPU_CLONES void linf_row(T* out, const T* x_adv, const T* grad, const T* x, int64_t n,
                                 T eps, T alpha, T lo, T hi) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    out[i] = pgd_linf_element<T>(x_adv[i], grad[i], x[i], eps, alpha, lo, hi);
  }
}

template <typename T>
FASTADV_CPU_CLONES void l2_row(T* out, const T* x_adv, const T* grad, const T* x, int64_t n,
                               T eps, T alpha, T lo, T hi) {
  T grad_sq = 0, delta_sq = 0, delta_dot_grad = 0;
#pragma omp simd reduction(+ : grad_sq, delta_sq, delta_dot_grad)
  for (int64_t i = 0; i < n; ++i) {
    const T d = x_adv[i] - x[i];
    grad_sq += grad[i] * grad[i];
    delta_sq += d * d;
    delta_dot_grad += d * grad[i];
  }
  const PgdL2Coefficients<T> c = pgd_l2_coefficients<T>(grad_sq, delta_sq, delta_dot_grad, eps, alpha);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    out[i] = pgd_l2_element<T>(x_adv[i], grad[i], x[i], c, lo, hi);
  }
}

template <typename T>
void pgd_step_kernel(const PgdStepParams& p) {
  const int64_t n = p.row_size;
  const T lo = static_cast<T>(p.clip_min), hi = static_cast<T>(p.clip_max);
  const T* eps_ps = static_cast<const T*>(p.eps_per_sample);
  const T* alpha_ps = static_cast<const T*>(p.alpha_per_sample);
  // About 32k elements per task: enough work to amortise the scheduling, small rows grouped.
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(n, 1));
  at::parallel_for(0, p.rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t offset = r * n;
      T* out = static_cast<T*>(p.out) + offset;
      const T* x_adv = static_cast<const T*>(p.x_adv) + offset;
      if (p.active != nullptr && !p.active[r]) {
        if (out != x_adv) std::memcpy(out, x_adv, sizeof(T) * n);
        continue;
      }
      const T* grad = static_cast<const T*>(p.grad) + offset;
      const T* x = static_cast<const T*>(p.x) + offset;
      const T eps = eps_ps ? eps_ps[r] : static_cast<T>(p.eps);
      const T alpha = alpha_ps ? alpha_ps[r] : static_cast<T>(p.alpha);
      if (p.norm == PgdNorm::Linf) {
        linf_row<T>(out, x_adv, grad, x, n, eps, alpha, lo, hi);
      } else {
        l2_row<T>(out, x_adv, grad, x, n, eps, alpha, lo, hi);
      }
    }
  });
}

void run_pgd_step_cpu(const PgdStepParams& p, const at::Tensor& x_adv) {
  switch (x_adv.scalar_type()) {
    case at::kFloat: pgd_step_kernel<float>(p); break;
    case at::kDouble: pgd_step_kernel<double>(p); break;
    default:
      TORCH_CHECK(false, "fastadv: the CPU pgd kernels support float32 and float64, got ", x_adv.scalar_type());
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(fastadv, CPU, m) {
  m.impl("pgd_step", &PgdStepEntryPoints<run_pgd_step_cpu>::step);
  m.impl("pgd_step_", &PgdStepEntryPoints<run_pgd_step_cpu>::step_);
}

}  // namespace fastadv
