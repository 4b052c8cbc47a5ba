// Plain definitions shared by the CPU (C++) and GPU (CUDA) kernels. No torch here: this
// header is included by torch-free .cu files.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define FASTADV_HOST_DEVICE __host__ __device__ __forceinline__
#elif defined(__GNUC__)
// Always inlined: the CPU kernels are compiled once per instruction set (target_clones), and
// only code inlined into a clone is compiled for that clone's instruction set.
#define FASTADV_HOST_DEVICE inline __attribute__((always_inline))
#else
#define FASTADV_HOST_DEVICE inline
#endif

// The CPU's row loops: `omp simd` (the kernels are compiled with -fopenmp) lets GCC vectorise a
// reduction over floats, which it otherwise keeps in order. CUDA runs a row on a warp instead.
#if defined(__CUDACC__)
#define FASTADV_SIMD
#define FASTADV_SIMD_REDUCE(op, ...)
#define FASTADV_SIMD_MAX_AND_SUM(maximum, ...)
#else
#define FASTADV_PRAGMA(text) _Pragma(#text)
#define FASTADV_SIMD FASTADV_PRAGMA(omp simd)
#define FASTADV_SIMD_REDUCE(op, ...) FASTADV_PRAGMA(omp simd reduction(op : __VA_ARGS__))
#define FASTADV_SIMD_MAX_AND_SUM(maximum, ...) FASTADV_PRAGMA(omp simd reduction(max : maximum) reduction(+ : __VA_ARGS__))
#endif

namespace fastadv {

using std::exp;  // float and double overloads, on the host and in CUDA device code
using std::log;
using std::sqrt;

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

// ----------------------------------------------------------------------------- scalar math
template <typename T>
FASTADV_HOST_DEVICE T infinity_of() {
  return static_cast<T>(INFINITY);
}

template <typename T>
FASTADV_HOST_DEVICE T larger(T a, T b) {
  return a > b ? a : b;
}

template <typename T>
FASTADV_HOST_DEVICE T smaller(T a, T b) {
  return a < b ? a : b;
}

// The float whose bits are `bits`. __builtin_bit_cast keeps the CPU loops vectorisable (a
// memcpy there blocks GCC's vectoriser); nvcc's host pass, which never runs hot, uses memcpy.
FASTADV_HOST_DEVICE float float_from_bits(int32_t bits) {
#if defined(__CUDA_ARCH__)
  return __int_as_float(bits);
#elif defined(__CUDACC__)
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
#else
  return __builtin_bit_cast(float, bits);
#endif
}

// exp of x <= 0, for float: every exponential of the logits and contrastive families is of a value minus
// its running maximum or its log-sum-exp, which is at most 0. Cody–Waite range reduction to r in [-ln2/2, ln2/2], a degree-7 Taylor polynomial
// (relative error below 1e-7 there), and the power of two 2^k, k in [-126, 0], built from its
// bits. Branch-free, so a loop calling it vectorises; the CUDA kernels call the same function.
// Results below FLT_MIN are flushed to 0 and NaN propagates. (Positive x stays exact up to
// about 88, where 2^k would leave the exponent range; nothing calls it there.)
FASTADV_HOST_DEVICE float exp_nonpositive(float x) {
  const float lo = -87.33654475f;
  const float xc = larger(x, lo);
  // k = round(xc / ln 2) by adding and removing 1.5·2^23 (an arithmetic rounding: floor() is
  // a library call that blocks vectorisation unless -fno-trapping-math is given).
  const float round_shift = 12582912.0f;
  const float k = (xc * 1.44269504088896341f + round_shift) - round_shift;
  const float r = (xc - k * 0.693145751953125f) - k * 1.42860682030941723e-6f;
  float poly = 1.0f / 5040.0f;
  poly = poly * r + 1.0f / 720.0f;
  poly = poly * r + 1.0f / 120.0f;
  poly = poly * r + 1.0f / 24.0f;
  poly = poly * r + 1.0f / 6.0f;
  poly = poly * r + 0.5f;
  poly = poly * r + 1.0f;
  poly = poly * r + 1.0f;
  const float value = poly * float_from_bits((static_cast<int32_t>(k) + 127) << 23);
  // One select per condition, each a vector blend (nested conditionals become branches).
  const float result = x < lo ? 0.0f : value;
  return x != x ? x : result;
}

FASTADV_HOST_DEVICE double exp_nonpositive(double x) { return exp(x); }

// A row processed by one thread (the CPU kernels): the functions that combine a value over a
// row's lanes are the identity. The CUDA kernels' warp of lanes is `cuda::WarpLane` (common.cuh).
struct SingleLane {
  static constexpr int64_t index = 0;
  template <typename T>
  T sum(T v) const { return v; }
  template <typename T>
  T max(T v) const { return v; }
};

}  // namespace fastadv
