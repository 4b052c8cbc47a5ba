// CUDA registration of the simplex family: tensors -> parameter structs on the current stream.
// The kernels are in simplex_kernel.cu, which never sees a torch header.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../simplex_glue.h"
#include "fastadv/simplex.h"

namespace fastadv {
namespace {

template <typename Params, void (*Launch)(const Params&, ScalarKind, void*)>
void run_cuda(const Params& p, const at::Tensor& input) {
  TORCH_CHECK(input.is_cuda(), "fastadv: the simplex CUDA kernels need CUDA tensors, got one on ", input.device());
  const c10::cuda::CUDAGuard guard(input.device());
  Launch(p, scalar_kind_of(input, "input"), c10::cuda::getCurrentCUDAStream(input.get_device()).stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

TORCH_LIBRARY_IMPL(fastadv, CUDA, m) {
  register_simplex_kernels<SimplexEntryPoints<run_cuda<SimplexProjectParams, launch_simplex_project_cuda>,
                                              run_cuda<SimplexDistanceParams, launch_simplex_distance_sq_cuda>,
                                              run_cuda<MinNormParams, launch_min_norm_weights_cuda>>>(m);
}

}  // namespace fastadv
