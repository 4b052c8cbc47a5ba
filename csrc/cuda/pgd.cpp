// CUDA registration of the pgd family: tensors -> PgdStepParams on the current stream. The
// kernels are in pgd_kernel.cu, which never sees a torch header.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../pgd_glue.h"
#include "fastadv/pgd.h"

namespace fastadv {
namespace {

void run_pgd_step_cuda(const PgdStepParams& p, const at::Tensor& x_adv) {
  // The dispatcher picks this kernel when any input is on CUDA; pgd_step_params has checked
  // that all of them are on x_adv's device.
  TORCH_CHECK(x_adv.is_cuda(), "fastadv: x_adv must be a CUDA tensor, got one on ", x_adv.device());
  const c10::cuda::CUDAGuard guard(x_adv.device());
  launch_pgd_step_cuda(p, scalar_kind_of(x_adv, "x_adv"), c10::cuda::getCurrentCUDAStream(x_adv.get_device()).stream());
  // The launcher leaves launch errors (bad configuration, no kernel image for this GPU) in the
  // runtime's last-error slot; this reads and reports them.
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename Params, void (*Launch)(const Params&, ScalarKind, void*)>
void run_udr_cuda(const Params& p, const at::Tensor& x_adv) {
  TORCH_CHECK(x_adv.is_cuda(), "fastadv: x_adv must be a CUDA tensor, got one on ", x_adv.device());
  const c10::cuda::CUDAGuard guard(x_adv.device());
  Launch(p, scalar_kind_of(x_adv, "x_adv"), c10::cuda::getCurrentCUDAStream(x_adv.get_device()).stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

TORCH_LIBRARY_IMPL(fastadv, CUDA, m) {
  m.impl("pgd_step", &PgdStepEntryPoints<run_pgd_step_cuda>::step);
  m.impl("pgd_step_", &PgdStepEntryPoints<run_pgd_step_cuda>::step_);
  using Udr = UdrEntryPoints<run_udr_cuda<UdrStepParams, launch_udr_step_cuda>,
                             run_udr_cuda<SoftCostParams, launch_soft_cost_cuda>>;
  m.impl("udr_step", &Udr::step);
  m.impl("udr_step_", &Udr::step_);
  m.impl("soft_cost", &Udr::soft_cost);
}

}  // namespace fastadv
