// CUDA registration of the pgd family: tensors -> PgdStepParams on the current stream. The
// kernels are in pgd_kernel.cu, which never sees a torch header.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../glue.h"
#include "fastadv/pgd.h"

namespace fastadv {
namespace {

void check_on_cuda(const at::Tensor& x_adv) {
  TORCH_CHECK(x_adv.is_cuda(), "fastadv: x_adv must be a CUDA tensor, got one on ", x_adv.device());
}

void run_pgd_step_cuda(const PgdStepParams& p, const at::Tensor& x_adv) {
  const ScalarKind kind = scalar_kind_of(x_adv, "x_adv");
  launch_pgd_step_cuda(p, kind, c10::cuda::getCurrentCUDAStream(x_adv.get_device()).stream());
  // The launcher leaves launch errors (bad configuration, no kernel image for this GPU) in the
  // runtime's last-error slot; this reads and reports them.
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor pgd_step_cuda(const at::Tensor& x_adv, const at::Tensor& grad, const at::Tensor& x,
                         double eps, double alpha, const std::optional<at::Tensor>& eps_per_sample,
                         const std::optional<at::Tensor>& alpha_per_sample, c10::string_view norm,
                         double clip_min, double clip_max, const std::optional<at::Tensor>& active) {
  check_on_cuda(x_adv);
  const c10::cuda::CUDAGuard guard(x_adv.device());
  at::Tensor out = at::empty_like(x_adv);
  const PgdStepParams p = pgd_step_params(out, x_adv, grad, x, eps, alpha, eps_per_sample,
                                          alpha_per_sample, norm, clip_min, clip_max, active);
  run_pgd_step_cuda(p, x_adv);
  return out;
}

void pgd_step_inplace_cuda(const at::Tensor& x_adv, const at::Tensor& grad, const at::Tensor& x,
                           double eps, double alpha, const std::optional<at::Tensor>& eps_per_sample,
                           const std::optional<at::Tensor>& alpha_per_sample, c10::string_view norm,
                           double clip_min, double clip_max, const std::optional<at::Tensor>& active) {
  check_on_cuda(x_adv);
  const c10::cuda::CUDAGuard guard(x_adv.device());
  const PgdStepParams p = pgd_step_params(x_adv, x_adv, grad, x, eps, alpha, eps_per_sample,
                                          alpha_per_sample, norm, clip_min, clip_max, active);
  run_pgd_step_cuda(p, x_adv);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastadv, CUDA, m) {
  m.impl("pgd_step", &pgd_step_cuda);
  m.impl("pgd_step_", &pgd_step_inplace_cuda);
}

}  // namespace fastadv
