// CUDA registration of the logits family: tensors -> LogitsParams on the current stream. The
// kernels are in logits_kernel.cu, which never sees a torch header.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../glue.h"
#include "fastadv/logits.h"

namespace fastadv {
namespace {

void run_logits_cuda(LogitsOp op, const LogitsParams& p, const at::Tensor& a, const at::Tensor& total) {
  // The dispatcher picks this kernel when any input is on CUDA; LogitsCall has checked that
  // the other inputs are on a's device.
  TORCH_CHECK(a.is_cuda(), "fastadv: logits must be a CUDA tensor, got one on ", a.device());
  const c10::cuda::CUDAGuard guard(a.device());
  launch_logits_cuda(op, p, scalar_kind_of(a, "logits"), total.defined() ? total.data_ptr() : nullptr,
                     c10::cuda::getCurrentCUDAStream(a.get_device()).stream());
  // The launcher leaves launch errors (bad configuration, no kernel image for this GPU) in the
  // runtime's last-error slot; this reads and reports them.
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

using Cuda = LogitsEntryPoints<run_logits_cuda>;

}  // namespace

TORCH_LIBRARY_IMPL(fastadv, CUDA, m) {
  m.impl("soft_cross_entropy", &Cuda::soft_cross_entropy);
  m.impl("smoothed_cross_entropy", &Cuda::smoothed_cross_entropy);
  m.impl("boosted_cross_entropy", &Cuda::boosted_cross_entropy);
  m.impl("trades_kl", &Cuda::trades_kl);
  m.impl("mart_loss", &Cuda::mart_loss);
  m.impl("margin_sq_hinge", &Cuda::margin_sq_hinge);
  m.impl("mhuber", &Cuda::mhuber);
  m.impl("mhuber_moving_average", &Cuda::mhuber_moving_average);
  m.impl("logit_pairing", &Cuda::logit_pairing);
  m.impl("logit_squeeze", &Cuda::logit_squeeze);
}

}  // namespace fastadv
