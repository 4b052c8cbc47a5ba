// CUDA registration of the contrastive family: the shared tile driver (contrastive_glue.h) with
// the kernels of contrastive_kernel.cu, which never sees a torch header, on the current stream.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../contrastive_glue.h"
#include "fastadv/contrastive.h"

namespace fastadv {
namespace {

template <typename Params, void (*Launch)(const Params&, ScalarKind, void*)>
void run_cuda(const Params& p, ScalarKind kind, const at::Tensor& input) {
  TORCH_CHECK(input.is_cuda(), "fastadv: the contrastive CUDA kernels need CUDA tensors, got one on ", input.device());
  const c10::cuda::CUDAGuard guard(input.device());
  Launch(p, kind, c10::cuda::getCurrentCUDAStream(input.get_device()).stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

TORCH_LIBRARY_IMPL(fastadv, CUDA, m) {
  contrastive::register_kernels<contrastive::EntryPoints<
      run_cuda<DistanceTileParams, launch_distance_tile_cuda>, run_cuda<SupconTileParams, launch_supcon_stats_cuda>,
      run_cuda<SupconTileParams, launch_supcon_column_stats_cuda>, run_cuda<SupconTileParams, launch_supcon_gradient_cuda>,
      run_cuda<CompactnessTileParams, launch_compactness_cuda>,
      run_cuda<CompactnessTileParams, launch_compactness_gradient_cuda>,
      run_cuda<DistanceGradientParams, launch_distance_gradient_cuda>>>(m);
}

}  // namespace fastadv
