// CPU kernels of the pgd family: parallel over samples, each row vectorised by the compiler.
//
// The loops call the same per-element functions as the CUDA kernels (fastadv/pgd.h). They are
// compiled once per instruction set (target_clones: AVX-512, AVX2, baseline) and the loader
// picks the best one for the running CPU, so one wheel runs everywhere and fast where it can.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <cstring>

#include "../pgd_glue.h"
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

// The rows of a step in parallel, about 32k elements per task (enough work to amortise the
// scheduling, small rows grouped): an inactive row is copied (unless in place), an active one is
// handed to row(r, offset, out, x_adv).
template <typename T, typename Row>
void for_each_step_row(void* out_data, const void* x_adv_data, const bool* active, int64_t rows, int64_t n,
                       const Row& row) {
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(n, 1));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t offset = r * n;
      T* out = static_cast<T*>(out_data) + offset;
      const T* x_adv = static_cast<const T*>(x_adv_data) + offset;
      if (active != nullptr && !active[r]) {
        if (out != x_adv) std::memcpy(out, x_adv, sizeof(T) * n);
        continue;
      }
      row(r, offset, out, x_adv);
    }
  });
}

template <typename T>
void pgd_step_kernel(const PgdStepParams& p) {
  const int64_t n = p.row_size;
  const T lo = static_cast<T>(p.clip_min), hi = static_cast<T>(p.clip_max);
  const T* eps_ps = static_cast<const T*>(p.eps_per_sample);
  const T* alpha_ps = static_cast<const T*>(p.alpha_per_sample);
  for_each_step_row<T>(p.out, p.x_adv, p.active, p.rows, n, [&](int64_t r, int64_t offset, T* out, const T* x_adv) {
    const T* grad = static_cast<const T*>(p.grad) + offset;
    const T* x = static_cast<const T*>(p.x) + offset;
    const T eps = eps_ps ? eps_ps[r] : static_cast<T>(p.eps);
    const T alpha = alpha_ps ? alpha_ps[r] : static_cast<T>(p.alpha);
    if (p.norm == PgdNorm::Linf) {
      linf_row<T>(out, x_adv, grad, x, n, eps, alpha, lo, hi);
    } else {
      l2_row<T>(out, x_adv, grad, x, n, eps, alpha, lo, hi);
    }
  });
}

// max |d| of a row's differences d(i) and the number of elements reaching it (linf), or Σ|d|
// (pixel's statistic). Inlined into its callers (flatten), so that the loops over the lambda
// vectorise in every clone.
template <typename T, typename Difference>
inline __attribute__((always_inline)) T row_max_abs(int64_t n, const Difference& difference, T* ties = nullptr) {
  T c = 0;
#pragma omp simd reduction(max : c)
  for (int64_t i = 0; i < n; ++i) {
    const T d = difference(i);
    c = larger(c, d < T(0) ? -d : d);
  }
  if (ties != nullptr) {
    T count = 0;
#pragma omp simd reduction(+ : count)
    for (int64_t i = 0; i < n; ++i) {
      const T d = difference(i);
      count += (d < T(0) ? -d : d) == c ? T(1) : T(0);
    }
    *ties = count;
  }
  return c;
}

template <typename T, typename Difference>
inline __attribute__((always_inline)) T row_sum_abs(int64_t n, const Difference& difference) {
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) {
    const T d = difference(i);
    sum += d < T(0) ? -d : d;
  }
  return sum;
}

// UDR: for pixel and l2 one elementwise pass; for linf one reduction over the row's x_int − x
// (recomputed from x_adv and the gradient), then the write. `out` may be `x_adv` (in place): each
// element is read before it is written, at its index.
template <typename T>
FASTADV_CPU_CLONES __attribute__((flatten)) void udr_row(T* out, const T* x_adv, const T* grad, const T* x, int64_t n,
                                                         T eps, T eta, T lam, T tau, UdrCost cost, T lo, T hi) {
  if (udr_elementwise(cost)) {
    const T eta_lam = eta * lam;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      out[i] = udr_elementwise_element<T>(udr_intermediate<T>(x_adv[i], grad[i], eta), x[i], eps, eta_lam, tau, cost,
                                          lo, hi);
    }
    return;
  }
  T ties = 0;
  const T c = row_max_abs<T>(n, [&](int64_t i) { return udr_intermediate<T>(x_adv[i], grad[i], eta) - x[i]; }, &ties);
  const T coefficient = udr_linf_coefficient<T>(c, ties, eps, eta, lam, tau);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    out[i] = udr_linf_element<T>(udr_intermediate<T>(x_adv[i], grad[i], eta), x[i], c, coefficient, lo, hi);
  }
}

template <typename T>
void udr_step_kernel(const UdrStepParams& p) {
  const int64_t n = p.row_size;
  const T lo = static_cast<T>(p.clip_min), hi = static_cast<T>(p.clip_max);
  const T* eps_ps = static_cast<const T*>(p.eps_per_sample);
  for_each_step_row<T>(p.out, p.x_adv, p.active, p.rows, n, [&](int64_t r, int64_t offset, T* out, const T* x_adv) {
    udr_row<T>(out, x_adv, static_cast<const T*>(p.grad) + offset, static_cast<const T*>(p.x) + offset, n,
               eps_ps ? eps_ps[r] : static_cast<T>(p.eps), static_cast<T>(p.eta), static_cast<T>(p.lam),
               static_cast<T>(p.tau), p.cost, lo, hi);
  });
}

template <typename T>
FASTADV_CPU_CLONES __attribute__((flatten)) T row_statistic_reduction(const T* x_adv, const T* x, int64_t n,
                                                                      UdrCost cost) {
  const auto difference = [&](int64_t i) { return x_adv[i] - x[i]; };
  return cost == UdrCost::Pixel ? row_sum_abs<T>(n, difference) : row_max_abs<T>(n, difference);
}

template <typename T>
void soft_cost_kernel(const SoftCostParams& p) {
  const int64_t n = p.row_size;
  const T* eps_ps = static_cast<const T*>(p.eps_per_sample);
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(n, 1));
  at::parallel_for(0, p.rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T reduced = row_statistic_reduction<T>(static_cast<const T*>(p.x_adv) + r * n,
                                                   static_cast<const T*>(p.x) + r * n, n, p.cost);
      static_cast<T*>(p.out)[r] = udr_statistic<T>(reduced, n, eps_ps ? eps_ps[r] : static_cast<T>(p.eps),
                                                   static_cast<T>(p.tau), p.cost);
    }
  });
}

// kernel<T>(params) for the float type of x_adv: the CPU kernels run float32 and float64.
template <template <typename> class Kernel, typename Params>
void run_float_kernel(const Params& p, const at::Tensor& x_adv) {
  switch (x_adv.scalar_type()) {
    case at::kFloat: Kernel<float>::run(p); break;
    case at::kDouble: Kernel<double>::run(p); break;
    default:
      TORCH_CHECK(false, "fastadv: the CPU pgd kernels support float32 and float64, got ", x_adv.scalar_type());
  }
}

template <typename T>
struct PgdStepKernel {
  static void run(const PgdStepParams& p) { pgd_step_kernel<T>(p); }
};
template <typename T>
struct UdrStepKernel {
  static void run(const UdrStepParams& p) { udr_step_kernel<T>(p); }
};
template <typename T>
struct SoftCostKernel {
  static void run(const SoftCostParams& p) { soft_cost_kernel<T>(p); }
};

void run_pgd_step_cpu(const PgdStepParams& p, const at::Tensor& x_adv) { run_float_kernel<PgdStepKernel>(p, x_adv); }
void run_udr_step_cpu(const UdrStepParams& p, const at::Tensor& x_adv) { run_float_kernel<UdrStepKernel>(p, x_adv); }
void run_soft_cost_cpu(const SoftCostParams& p, const at::Tensor& x_adv) { run_float_kernel<SoftCostKernel>(p, x_adv); }

}  // namespace

TORCH_LIBRARY_IMPL(fastadv, CPU, m) {
  m.impl("pgd_step", &PgdStepEntryPoints<run_pgd_step_cpu>::step);
  m.impl("pgd_step_", &PgdStepEntryPoints<run_pgd_step_cpu>::step_);
  using Udr = UdrEntryPoints<run_udr_step_cpu, run_soft_cost_cpu>;
  m.impl("udr_step", &Udr::step);
  m.impl("udr_step_", &Udr::step_);
  m.impl("soft_cost", &Udr::soft_cost);
}

}  // namespace fastadv
