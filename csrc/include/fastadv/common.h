// Plain definitions shared by the CPU (C++) and GPU (CUDA) kernels. No torch here: this
// header is included by torch-free .cu files.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define FASTADV_HOST_DEVICE __host__ __device__ __forceinline__
#elif defined(__GNUC__)
// Always inlined: the CPU kernels are compiled once per instruction set (target_clones), and
// only code inlined into a clone is compiled for that clone's instruction set.
#define FASTADV_HOST_DEVICE inline __attribute__((always_inline))
#else
#define FASTADV_HOST_DEVICE inline
#endif

namespace fastadv {

using std::sqrt;  // float and double overloads, on the host and in CUDA device code

// Element types the kernels are instantiated for. The glue code maps torch dtypes onto this.
enum class ScalarKind : int { Float32 = 0, Float64 = 1, Float16 = 2, BFloat16 = 3 };

// NaN-propagating clamp, the way torch.clamp behaves: comparisons with NaN are false, so a
// NaN input falls through unchanged instead of being replaced by a bound.
// Written as max-then-min with the operand order of the x86 maxps/minps instructions
// (`a > b ? a : b` returns b when either is NaN), so compilers emit exactly one max and one min.
template <typename T>
FASTADV_HOST_DEVICE T clamp_propagating_nan(T v, T lo, T hi) {
  const T at_least_lo = lo > v ? lo : v;
  return hi < at_least_lo ? hi : at_least_lo;
}

// sign(g) with sign(0) = 0 and sign(NaN) = NaN (torch.sign's convention).
template <typename T>
FASTADV_HOST_DEVICE T sign_propagating_nan(T g) {
  return g > T(0) ? T(1) : (g < T(0) ? T(-1) : g);
}

}  // namespace fastadv
