// CPU kernels of the logits family: parallel over rows, each row run by the shared row
// algorithms of fastadv/logits.h with one lane, their loops vectorised by the compiler.
//
// The exp of float rows is the branch-free polynomial of logits.h, so the loops vectorise
// without a vector math library; each kernel is compiled once per instruction set
// (target_clones: AVX-512, AVX2, baseline) and the loader picks the best for the running CPU.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "../logits_glue.h"
#include "fastadv/logits.h"

namespace fastadv {
namespace {

// A row is one lane on the CPU: the combining functions are the identity.
struct SingleLane {
  static constexpr int64_t index = 0;
  template <typename T>
  T sum(T v) const { return v; }
  template <typename T>
  T max(T v) const { return v; }
};

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

struct Cpu {
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
