// What the glue of every op family shares (csrc/<family>_glue.h): the Tensor -> parameter-struct
// builders of the CPU and CUDA registrations. The Python layer validates every argument first with
// clear messages; these TORCH_CHECKs are the second line.
#pragma once

#include <ATen/core/Tensor.h>

#include "fastadv/common.h"

// CPU kernels are compiled once per instruction set (AVX-512, AVX2, baseline); the loader picks
// the best clone for the running CPU.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FASTADV_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FASTADV_CPU_CLONES
#endif

namespace fastadv {

inline ScalarKind scalar_kind_of(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return ScalarKind::Float32;
    case at::kDouble: return ScalarKind::Float64;
    case at::kHalf: return ScalarKind::Float16;
    case at::kBFloat16: return ScalarKind::BFloat16;
    default: TORCH_CHECK(false, "fastadv: ", name, " must be a floating tensor, got ", t.scalar_type());
  }
}

inline at::ScalarType accumulate_type_of(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// t (named `name`) has ref's (named `ref_name`) shape, dtype, device and strides.
inline void check_like(const at::Tensor& t, const at::Tensor& ref, const char* name, const char* ref_name) {
  TORCH_CHECK(t.sizes() == ref.sizes(), "fastadv: ", name, " must have shape ", ref.sizes(), ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "fastadv: ", name, " must have dtype ", ref.scalar_type(), ", got ", t.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), "fastadv: ", name, " must be on ", ref.device(), ", got ", t.device());
  TORCH_CHECK(t.numel() == 0 || t.strides() == ref.strides(), "fastadv: ", name, " must share ", ref_name, "'s memory layout");
}

}  // namespace fastadv
