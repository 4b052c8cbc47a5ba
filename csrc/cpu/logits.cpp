// CPU kernels of the logits family: parallel over rows, each row run by the shared row
// algorithms of fastadv/logits.h with one lane, their loops vectorised by the compiler.
//
// The exp of float rows is the branch-free polynomial of logits.h, so the loops vectorise
// without a vector math library; each kernel is compiled once per instruction set
// (target_clones: AVX-512, AVX2, baseline) and the loader picks the best for the running CPU.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "../glue.h"
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

template <typename T>
void run_typed(LogitsOp op, const LogitsParams& p) {
  switch (op) {
    case LogitsOp::SoftCrossEntropy: run_rows<T, LogitsOp::SoftCrossEntropy>(p); break;
    case LogitsOp::SmoothedCrossEntropy: run_rows<T, LogitsOp::SmoothedCrossEntropy>(p); break;
    case LogitsOp::BoostedCrossEntropy: run_rows<T, LogitsOp::BoostedCrossEntropy>(p); break;
    case LogitsOp::TradesKl: run_rows<T, LogitsOp::TradesKl>(p); break;
    case LogitsOp::MartLoss: run_rows<T, LogitsOp::MartLoss>(p); break;
    case LogitsOp::MarginSqHinge: run_rows<T, LogitsOp::MarginSqHinge>(p); break;
    case LogitsOp::Mhuber: run_rows<T, LogitsOp::Mhuber>(p); break;
    case LogitsOp::LogitPairing: run_rows<T, LogitsOp::LogitPairing>(p); break;
    case LogitsOp::LogitSqueeze: run_rows<T, LogitsOp::LogitSqueeze>(p); break;
    case LogitsOp::MhuberMovingAverage: run_rows<T, LogitsOp::MhuberMovingAverage>(p); break;
  }
}

// The row sums of mhuber are added in row order, one thread: the result does not depend on
// the number of threads.
template <typename T>
void mhuber_total(const LogitsParams& p, const at::Tensor& total) {
  const T* partial = static_cast<const T*>(p.loss);
  T sum = 0;
  for (int64_t r = 0; r < p.rows; ++r) sum += partial[r];
  *total.data_ptr<T>() = sum / static_cast<T>(static_cast<double>(p.rows) * static_cast<double>(p.cols));
}

void run_logits_cpu(LogitsOp op, const LogitsParams& p, const at::Tensor& a, const at::Tensor& total) {
  TORCH_CHECK(a.device().is_cpu(), "fastadv: logits must be a CPU tensor, got one on ", a.device());
  switch (a.scalar_type()) {
    case at::kFloat:
      run_typed<float>(op, p);
      if (op == LogitsOp::Mhuber || op == LogitsOp::MhuberMovingAverage) mhuber_total<float>(p, total);
      break;
    case at::kDouble:
      run_typed<double>(op, p);
      if (op == LogitsOp::Mhuber || op == LogitsOp::MhuberMovingAverage) mhuber_total<double>(p, total);
      break;
    default:
      TORCH_CHECK(false, "fastadv: the CPU logits kernels support float32 and float64, got ", a.scalar_type());
  }
}

using Cpu = LogitsEntryPoints<run_logits_cpu>;

}  // namespace

TORCH_LIBRARY_IMPL(fastadv, CPU, m) {
  m.impl("soft_cross_entropy", &Cpu::soft_cross_entropy);
  m.impl("smoothed_cross_entropy", &Cpu::smoothed_cross_entropy);
  m.impl("boosted_cross_entropy", &Cpu::boosted_cross_entropy);
  m.impl("trades_kl", &Cpu::trades_kl);
  m.impl("mart_loss", &Cpu::mart_loss);
  m.impl("margin_sq_hinge", &Cpu::margin_sq_hinge);
  m.impl("mhuber", &Cpu::mhuber);
  m.impl("mhuber_moving_average", &Cpu::mhuber_moving_average);
  m.impl("logit_pairing", &Cpu::logit_pairing);
  m.impl("logit_squeeze", &Cpu::logit_squeeze);
}

}  // namespace fastadv
