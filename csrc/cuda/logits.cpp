// CUDA registration of the logits family: its rows on the current stream. The kernels are in
// logits_kernel.cu, which never sees a torch header.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../logits_glue.h"
#include "fastadv/logits.h"

namespace fastadv {
namespace {

struct Cuda {
  template <MemberOp Op, bool Backward>
  static void run_members(const MemberParams& p, const at::Tensor& V) {
    TORCH_CHECK(V.is_cuda(), "fastadv: V must be a CUDA tensor, got one on ", V.device());
    const c10::cuda::CUDAGuard guard(V.device());
    launch_logits_member_cuda(Op, Backward, p, scalar_kind_of(V, "V"),
                              c10::cuda::getCurrentCUDAStream(V.get_device()).stream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  template <LogitsOp Op>
  static void run(const LogitsParams& p, const at::Tensor& a) {
    // The dispatcher picks this kernel when any input is on CUDA; the glue has checked that the
    // other inputs are on a's device.
    TORCH_CHECK(a.is_cuda(), "fastadv: logits must be a CUDA tensor, got one on ", a.device());
    const c10::cuda::CUDAGuard guard(a.device());
    launch_logits_cuda(Op, p, scalar_kind_of(a, "logits"), c10::cuda::getCurrentCUDAStream(a.get_device()).stream());
    // The launcher leaves launch errors (bad configuration, no kernel image for this GPU) in the
    // runtime's last-error slot; this reads and reports them.
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(fastadv, CUDA, m) { register_logits_kernels<Cuda>(m); }

}  // namespace fastadv
