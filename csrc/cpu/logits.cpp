// CPU kernels of the logits family: parallel over rows, each row run by the shared row
// algorithms of fastadv/logits.h with one lane, their loops vectorised by the compiler.
//
// The exp of float rows is the branch-free polynomial of logits.h, so the loops vectorise
// without a vector math library; each kernel is compiled once per instruction set
// (target_clones: AVX-512, AVX2, baseline) and the loader picks the best for the running CPU.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>

#include "../logits_glue.h"
#include "fastadv/logits.h"

namespace fastadv {
namespace {

template <typename T>
struct HostIo {
  static T load(const T* p, int64_t j) { return p[j]; }
  static void store(T* p, int64_t j, T v) { p[j] = v; }
};

// flatten: everything a row calls, the loop bodies passed as lambdas included, is inlined into
// each instruction-set clone, so that it is vectorised for that instruction set (a call left out
// of line would run the baseline code, one scalar exp at a time).
template <typename T, LogitsOp Op>
FASTADV_CPU_CLONES __attribute__((flatten)) void rows_kernel(const LogitsParams& p, int64_t begin, int64_t end) {
  for (int64_t r = begin; r < end; ++r) logits_row<T, 1, T, HostIo<T>>(Op, p, r, SingleLane{});
}

template <typename T, LogitsOp Op>
void run_rows(const LogitsParams& p) {
  // About 16k elements per task: rows are short, so many go to one task.
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(p.cols, 1));
  at::parallel_for(0, p.rows, grain, [&](int64_t begin, int64_t end) { rows_kernel<T, Op>(p, begin, end); });
}

// ----------------------------------------------------------------------------- member ops
// masked_gram's raw Gram R of one sample, R_mn = ⟨v_m ⊙ mask, v_n ⊙ mask⟩ (row-major M×M), in one
// pass over the columns for every pair m <= n, their partial sums in blocks of kBlock columns,
// the last block overlapping the one before (blocked_sum's scheme in logits.h); rows shorter
// than a block take the shared masked_dot pair by pair. Up to kFixedMembers members run code
// compiled for their number (each row read once per block, every pair's partial sums in
// registers); more, up to kPairsPerPass pairs per pass.
constexpr int kFixedMembers = 4;
// The loops over the members inside a vectorised loop over columns are unrolled first: GCC does
// not vectorise a loop nest otherwise.
#define FASTADV_UNROLL _Pragma("GCC unroll 16")
constexpr int64_t kPairsPerPass = 16;

template <typename T>
void masked_gram_raw_short(const MemberParams& p, int64_t b, int64_t y, T* raw) {
  const int64_t members = p.members;
  for (int64_t q = 0; q < members * (members + 1) / 2; ++q) {
    int64_t m, n;
    member_pair(q, members, m, n);
    raw[m * members + n] = raw[n * members + m] =
        masked_dot<T, 1, T, HostIo<T>>(member_row<T>(p, m, b), member_row<T>(p, n, b), p.cols, y, SingleLane{});
  }
}

template <typename T, int Members>
void masked_gram_raw_fixed(const MemberParams& p, int64_t b, int64_t y, T* raw) {
  constexpr int kPairs = Members * (Members + 1) / 2;
  const T* rows[Members];
  for (int m = 0; m < Members; ++m) rows[m] = member_row<T>(p, m, b);
  T partial[kPairs][kBlock] = {};
  // mask: 0 for the label and for the overlapped columns a block has already counted.
  const auto block = [&](int64_t start, int64_t fresh_from) {
    FASTADV_SIMD
    for (int64_t k = 0; k < kBlock; ++k) {
      const int64_t c = start + k;
      const T mask = c == y || c < fresh_from ? T(0) : T(1);
      T u[Members];
      FASTADV_UNROLL
      for (int m = 0; m < Members; ++m) u[m] = rows[m][c] * mask;
      int q = 0;
      FASTADV_UNROLL
      for (int m = 0; m < Members; ++m) {
        FASTADV_UNROLL
        for (int n = m; n < Members; ++n) partial[q++][k] += u[m] * u[n];
      }
    }
  };
  const int64_t whole = p.cols / kBlock * kBlock;
  for (int64_t start = 0; start < whole; start += kBlock) block(start, 0);
  if (whole < p.cols) block(p.cols - kBlock, whole);
  int q = 0;
  for (int m = 0; m < Members; ++m) {
    for (int n = m; n < Members; ++n, ++q) {
      T sum = 0;
      FASTADV_SIMD_REDUCE(+, sum)
      for (int64_t k = 0; k < kBlock; ++k) sum += partial[q][k];
      raw[m * Members + n] = raw[n * Members + m] = sum;
    }
  }
}

template <typename T>
void masked_gram_raw_pairs(const MemberParams& p, int64_t b, int64_t y, T* raw) {
  const int64_t members = p.members, cols = p.cols, pairs = members * (members + 1) / 2;
  const int64_t whole = cols / kBlock * kBlock;
  for (int64_t first = 0; first < pairs; first += kPairsPerPass) {
    const int64_t count = std::min(kPairsPerPass, pairs - first);
    const T* left[kPairsPerPass];
    const T* right[kPairsPerPass];
    int64_t at_m[kPairsPerPass], at_n[kPairsPerPass];
    for (int64_t q = 0; q < count; ++q) {
      member_pair(first + q, members, at_m[q], at_n[q]);
      left[q] = member_row<T>(p, at_m[q], b);
      right[q] = member_row<T>(p, at_n[q], b);
    }
    T partial[kPairsPerPass][kBlock] = {};
    const auto block = [&](int64_t start, int64_t fresh_from) {
      T mask[kBlock];
      FASTADV_SIMD
      for (int64_t k = 0; k < kBlock; ++k) mask[k] = start + k == y || start + k < fresh_from ? T(0) : T(1);
      for (int64_t q = 0; q < count; ++q) {
        const T* a = left[q] + start;
        const T* c = right[q] + start;
        FASTADV_SIMD
        for (int64_t k = 0; k < kBlock; ++k) partial[q][k] += a[k] * c[k] * mask[k];
      }
    };
    for (int64_t start = 0; start < whole; start += kBlock) block(start, 0);
    if (whole < cols) block(cols - kBlock, whole);
    for (int64_t q = 0; q < count; ++q) {
      T sum = 0;
      FASTADV_SIMD_REDUCE(+, sum)
      for (int64_t k = 0; k < kBlock; ++k) sum += partial[q][k];
      raw[at_m[q] * members + at_n[q]] = raw[at_n[q] * members + at_m[q]] = sum;
    }
  }
}

template <typename T>
void masked_gram_raw(const MemberParams& p, int64_t b, int64_t y, T* raw) {
  if (p.cols < kBlock) return masked_gram_raw_short<T>(p, b, y, raw);
  switch (p.members) {
    case 1: return masked_gram_raw_fixed<T, 1>(p, b, y, raw);
    case 2: return masked_gram_raw_fixed<T, 2>(p, b, y, raw);
    case 3: return masked_gram_raw_fixed<T, 3>(p, b, y, raw);
    case 4: return masked_gram_raw_fixed<T, kFixedMembers>(p, b, y, raw);
    default: return masked_gram_raw_pairs<T>(p, b, y, raw);
  }
}

// d_m = max(‖u_m‖, eps) of every member.
template <typename T>
void masked_gram_divisors(const T* raw, int64_t members, T* divisors) {
  for (int64_t m = 0; m < members; ++m) divisors[m] = masked_gram_divisor(raw[m * members + m]);
}

template <typename T>
FASTADV_CPU_CLONES __attribute__((flatten)) void masked_gram_samples(const MemberParams& p, int64_t begin,
                                                                       int64_t end) {
  const int64_t members = p.members;
  const bool normalize = p.flags[0];
  T raw[kMaxMembers * kMaxMembers], divisors[kMaxMembers];
  for (int64_t b = begin; b < end; ++b) {
    masked_gram_raw<T>(p, b, p.labels[b], raw);
    if (normalize) masked_gram_divisors(raw, members, divisors);
    T* gram = static_cast<T*>(p.out) + b * members * members;
    for (int64_t m = 0; m < members; ++m)
      for (int64_t n = 0; n < members; ++n)
        gram[m * members + n] =
            normalize ? masked_gram_entry(raw[m * members + n], divisors[m], divisors[n], true) : raw[m * members + n];
  }
}

// dV_m = Σ_n A_mn v_n over every column, then the label's column as the shared formula has it
// (0, or NaN where a v_n,y is not finite): every member from one read of the column up to
// kFixedMembers, one member's row at a time beyond.
template <typename T, int Members>
void masked_gram_gradient_fixed(const MemberParams& p, int64_t b, const T* coefficients) {
  const T* rows[Members];
  T* out[Members];
  T a[Members][Members];
  for (int m = 0; m < Members; ++m) {
    rows[m] = member_row<T>(p, m, b);
    out[m] = static_cast<T*>(p.out) + (m * p.rows + b) * p.cols;
    for (int n = 0; n < Members; ++n) a[m][n] = coefficients[m * Members + n];
  }
  FASTADV_SIMD
  for (int64_t c = 0; c < p.cols; ++c) {
    T v[Members];
    FASTADV_UNROLL
    for (int n = 0; n < Members; ++n) v[n] = rows[n][c];
    FASTADV_UNROLL
    for (int m = 0; m < Members; ++m) {
      T sum = 0;
      FASTADV_UNROLL
      for (int n = 0; n < Members; ++n) sum += a[m][n] * v[n];
      out[m][c] = sum;
    }
  }
}

template <typename T>
void masked_gram_gradient_rows(const MemberParams& p, int64_t b, const T* coefficients) {
  const int64_t members = p.members, cols = p.cols;
  for (int64_t m = 0; m < members; ++m) {
    T* out = static_cast<T*>(p.out) + (m * p.rows + b) * cols;
    const T* a = coefficients + m * members;
    const T* v0 = member_row<T>(p, 0, b);
    FASTADV_SIMD
    for (int64_t c = 0; c < cols; ++c) out[c] = a[0] * v0[c];
    for (int64_t n = 1; n < members; ++n) {
      const T* v = member_row<T>(p, n, b);
      const T weight = a[n];
      FASTADV_SIMD
      for (int64_t c = 0; c < cols; ++c) out[c] += weight * v[c];
    }
  }
}

// The backward of a sample: R again when normalising (the sample's rows are then in L1 for the
// second pass), the coefficients A, then dV_m = mask ⊙ Σ_n A_mn v_n.
template <typename T>
FASTADV_CPU_CLONES __attribute__((flatten)) void masked_gram_backward_samples(const MemberParams& p, int64_t begin,
                                                                                int64_t end) {
  const int64_t members = p.members;
  const bool normalize = p.flags[0];
  T raw[kMaxMembers * kMaxMembers], sym[kMaxMembers * kMaxMembers], coefficients[kMaxMembers * kMaxMembers];
  T divisors[kMaxMembers];
  for (int64_t b = begin; b < end; ++b) {
    const int64_t y = p.labels[b];
    if (normalize) {  // unnormalised, A = S needs no R
      masked_gram_raw<T>(p, b, y, raw);
      masked_gram_divisors(raw, members, divisors);
    }
    const T* grad = static_cast<const T*>(p.grad) + b * members * members;
    for (int64_t m = 0; m < members; ++m)
      for (int64_t n = 0; n < members; ++n) sym[m * members + n] = grad[m * members + n] + grad[n * members + m];
    for (int64_t m = 0; m < members; ++m)
      for (int64_t n = 0; n < members; ++n)
        coefficients[m * members + n] = masked_gram_coefficient(raw, sym, divisors, members, m, n, normalize);
    switch (members) {
      case 1: masked_gram_gradient_fixed<T, 1>(p, b, coefficients); break;
      case 2: masked_gram_gradient_fixed<T, 2>(p, b, coefficients); break;
      case 3: masked_gram_gradient_fixed<T, 3>(p, b, coefficients); break;
      case 4: masked_gram_gradient_fixed<T, kFixedMembers>(p, b, coefficients); break;
      default: masked_gram_gradient_rows<T>(p, b, coefficients);
    }
    for (int64_t m = 0; m < members; ++m)
      static_cast<T*>(p.out)[(m * p.rows + b) * p.cols + y] =
          masked_gram_gradient<T, T, HostIo<T>>(coefficients, p, b, m, y, y);
  }
}

template <typename T, MemberOp Op, bool Backward>
void run_member_samples(const MemberParams& p) {
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(p.members * p.cols, 1));
  at::parallel_for(0, p.rows, grain, [&](int64_t begin, int64_t end) {
    switch (Op) {
#define FASTADV_LOGITS_MEMBER_CASE(name, schema, backward_schema)                        \
  case MemberOp::name:                                                                  \
    if (Backward) name##_backward_samples<T>(p, begin, end); else name##_samples<T>(p, begin, end); \
    break;
      FASTADV_LOGITS_MEMBER_OPS(FASTADV_LOGITS_MEMBER_CASE)
#undef FASTADV_LOGITS_MEMBER_CASE
    }
  });
}

struct Cpu {
  template <MemberOp Op, bool Backward>
  static void run_members(const MemberParams& p, const at::Tensor& V) {
    TORCH_CHECK(V.device().is_cpu(), "fastadv: V must be a CPU tensor, got one on ", V.device());
    switch (V.scalar_type()) {
      case at::kFloat: run_member_samples<float, Op, Backward>(p); break;
      case at::kDouble: run_member_samples<double, Op, Backward>(p); break;
      default:
        TORCH_CHECK(false, "fastadv: the CPU logits kernels support float32 and float64, got ", V.scalar_type());
    }
  }

  template <LogitsOp Op>
  static void run(const LogitsParams& p, const at::Tensor& a) {
    TORCH_CHECK(a.device().is_cpu(), "fastadv: logits must be a CPU tensor, got one on ", a.device());
    switch (a.scalar_type()) {
      case at::kFloat: run_rows<float, Op>(p); break;
      case at::kDouble: run_rows<double, Op>(p); break;
      default:
        TORCH_CHECK(false, "fastadv: the CPU logits kernels support float32 and float64, got ", a.scalar_type());
    }
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(fastadv, CPU, m) { register_logits_kernels<Cpu>(m); }

}  // namespace fastadv
