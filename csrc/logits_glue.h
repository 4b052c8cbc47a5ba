// The logits family's registrations, all generated from FASTADV_LOGITS_OPS and
// FASTADV_LOGITS_MEMBER_OPS (fastadv/logits.h).
// One boxed kernel per backend serves every op: it binds the op's arguments and outputs from
// its registered schema (the convention written above FASTADV_LOGITS_OPS), allocates the
// outputs, runs the backend's rows and reduces the losses. The Python layer validates every
// argument first with clear messages; the TORCH_CHECKs here are the second line.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "fastadv/logits.h"
#include "common_glue.h"

namespace fastadv {

// Where each part of an op's schema is. Read once per op, from the schema torch registered.
struct LogitsLayout {
  int arguments = 0;
  int returns = 0;
  int tensors[kLogitsMaxInputs] = {};  // argument positions of LogitsParams::inputs
  int n_tensors = 0;
  int differentiable = 0;              // the first `differentiable` tensors, each with a flag
  int first_flag = 0;
  int labels = -1;
  int reduction = -1;
  int scalars[kLogitsMaxScalars] = {};
  int n_scalars = 0;
  int losses = 0;
  int extras = 0;
  int grads = 0;
  int grad_loss[kLogitsMaxGrads] = {};   // which loss (return position) each gradient is of
  int grad_input[kLogitsMaxGrads] = {};  // and with respect to which input

  static LogitsLayout of(const c10::FunctionSchema& schema) {
    LogitsLayout l;
    const std::string& op = schema.name();
    const auto& arguments = schema.arguments();
    l.arguments = static_cast<int>(arguments.size());
    std::vector<std::string> names;  // of the tensor inputs
    for (int i = 0; i < l.arguments; ++i) {
      const c10::Argument& argument = arguments[i];
      const c10::TypeKind kind = argument.type()->kind();
      TORCH_CHECK(kind == c10::TypeKind::BoolType || l.differentiable == 0, "fastadv: ", op,
                  ": the bool flags must be the last arguments (see FASTADV_LOGITS_OPS)");
      if (kind == c10::TypeKind::TensorType && argument.name() == "y") {
        l.labels = i;
      } else if (kind == c10::TypeKind::TensorType) {
        TORCH_CHECK(l.n_tensors < kLogitsMaxInputs, "fastadv: ", op, ": more than ", kLogitsMaxInputs, " inputs");
        names.push_back(argument.name());
        l.tensors[l.n_tensors++] = i;
      } else if (kind == c10::TypeKind::FloatType) {
        TORCH_CHECK(l.n_scalars < kLogitsMaxScalars, "fastadv: ", op, ": more than ", kLogitsMaxScalars, " floats");
        l.scalars[l.n_scalars++] = i;
      } else if (kind == c10::TypeKind::IntType && argument.name() == "reduction") {
        l.reduction = i;
      } else if (kind == c10::TypeKind::OptionalType) {
        // a tensor that is not differentiated (simplex_distance_sq's achieved mask); the logits
        // family's own ops have none, so its kernels never look for one
      } else if (kind == c10::TypeKind::BoolType) {
        TORCH_CHECK(l.differentiable < l.n_tensors && argument.name() == "grad_" + names[l.differentiable],
                    "fastadv: ", op, ": flag ", argument.name(), " must be grad_<input>, one per input, in order");
        if (l.differentiable == 0) l.first_flag = i;
        ++l.differentiable;
      } else {
        TORCH_CHECK(false, "fastadv: ", op, ": argument ", argument.name(),
                    " does not follow the family's schema convention (see FASTADV_LOGITS_OPS)");
      }
    }
    TORCH_CHECK(l.differentiable >= 1, "fastadv: ", op, ": needs a grad_<input> flag");

    const auto& returns = schema.returns();
    l.returns = static_cast<int>(returns.size());
    std::vector<std::string> of_loss;  // the loss each gradient names
    for (int i = 0; i < l.returns; ++i) {
      const std::string& name = returns[i].name();
      int input = -1;
      size_t suffix = 0;
      for (int j = 0; j < l.differentiable; ++j) {  // the longest matching _d<input>
        const std::string ending = "_d" + names[j];
        if (name.size() > ending.size() + 1 && name[0] == 'd' && ending.size() > suffix &&
            name.compare(name.size() - ending.size(), ending.size(), ending) == 0) {
          input = j;
          suffix = ending.size();
        }
      }
      if (input < 0) {
        TORCH_CHECK(l.grads == 0, "fastadv: ", op, ": return ", name, " follows a gradient; gradients come last");
        continue;
      }
      TORCH_CHECK(l.grads < kLogitsMaxGrads, "fastadv: ", op, ": more than ", kLogitsMaxGrads, " gradients");
      of_loss.push_back(name.substr(1, name.size() - suffix - 1));
      l.grad_input[l.grads++] = input;
    }
    const int leading = l.returns - l.grads;  // losses, then extras
    for (int i = 0; i < leading; ++i) {
      bool differentiated = false;
      for (int k = 0; k < l.grads; ++k) {
        if (of_loss[k] == returns[i].name()) {
          l.grad_loss[k] = i;
          differentiated = true;
        }
      }
      TORCH_CHECK(!differentiated || l.extras == 0, "fastadv: ", op, ": loss ", returns[i].name(),
                  " follows an extra output; losses come first");
      if (differentiated) ++l.losses; else ++l.extras;
    }
    for (int k = 0; k < l.grads; ++k) {
      TORCH_CHECK(of_loss[k] == returns[l.grad_loss[k]].name() && l.grad_loss[k] < l.losses, "fastadv: ", op,
                  ": gradient d", of_loss[k], "_d", names[l.grad_input[k]], " names no loss");
    }
    TORCH_CHECK(l.losses >= 1 && l.losses <= kLogitsMaxLosses && l.extras <= kLogitsMaxExtras, "fastadv: ", op,
                ": at most ", kLogitsMaxLosses, " losses and ", kLogitsMaxExtras, " extra outputs");
    return l;
  }
};

// The mean, sum or mean over elements of per-row losses (accumulation type), as a 0-dim tensor
// of `dtype`. On the CPU a plain loop in double: an ATen reduction costs more to set up than to
// run on a few thousand rows (the mean took 60 µs of a 0.9 ms trades_kl forward and backward at
// B = 4096). Rows are added in order, so the result does not depend on the number of threads.
inline at::Tensor reduce_rows(const at::Tensor& loss, LogitsReduction reduction, int64_t cols, at::ScalarType dtype) {
  const double rows = static_cast<double>(loss.size(0));
  // 0 / 0 = NaN for no rows, as torch's mean
  const double divisor = reduction == LogitsReduction::Mean ? rows
                         : reduction == LogitsReduction::ElementMean ? rows * static_cast<double>(cols)
                                                                     : 1.0;
  if (!loss.is_cpu() || loss.scalar_type() != dtype) return loss.sum().div(divisor).to(dtype);
  double total = 0;
  const int64_t n = loss.size(0);
  at::Tensor result = at::empty({}, loss.options());
  if (dtype == at::kFloat) {
    const float* values = loss.const_data_ptr<float>();
    for (int64_t r = 0; r < n; ++r) total += values[r];
    *result.mutable_data_ptr<float>() = static_cast<float>(total / divisor);
  } else {
    const double* values = loss.const_data_ptr<double>();
    for (int64_t r = 0; r < n; ++r) total += values[r];
    *result.mutable_data_ptr<double>() = total / divisor;
  }
  return result;
}

// The gradients' factor under a reduction (LogitsParams::grad_scale).
inline double gradient_scale(LogitsReduction reduction, int64_t rows, int64_t cols) {
  if (rows == 0) return 1.0;
  if (reduction == LogitsReduction::Mean) return 1.0 / static_cast<double>(rows);
  if (reduction == LogitsReduction::ElementMean) return 1.0 / (static_cast<double>(rows) * static_cast<double>(cols));
  return 1.0;
}

// The boxed kernel of op `Op` on a backend: `Backend::run<Op>(params, logits)` runs the rows.
template <typename Backend, LogitsOp Op>
void logits_kernel(const c10::OperatorHandle& handle, c10::DispatchKeySet, torch::jit::Stack* stack) {
  static const LogitsLayout l = LogitsLayout::of(handle.schema());
  const auto& op = handle.schema().name();
  const auto args = torch::jit::last(*stack, l.arguments);
  const at::Tensor& a = args[l.tensors[0]].toTensor();
  TORCH_CHECK(a.dim() == 2, "fastadv: ", op, ": logits must have shape [B, C], got ", a.sizes());
  TORCH_CHECK(a.is_contiguous(), "fastadv: ", op, ": logits must be contiguous");
  scalar_kind_of(a, "logits");
  LogitsParams p{};
  p.rows = a.size(0);
  p.cols = a.size(1);
  for (int i = 0; i < l.n_tensors; ++i) {
    const at::Tensor& t = args[l.tensors[i]].toTensor();
    if (i > 0) {
      check_like(t, a, handle.schema().arguments()[l.tensors[i]].name().c_str(),
                 handle.schema().arguments()[l.tensors[0]].name().c_str());
      TORCH_CHECK(t.is_contiguous(), "fastadv: ", op, ": every logits input must be contiguous");
    }
    p.inputs[i] = t.const_data_ptr();
  }
  if (l.labels >= 0) {
    const at::Tensor& y = args[l.labels].toTensor();
    TORCH_CHECK(y.dim() == 1 && y.size(0) == p.rows, "fastadv: ", op, ": y must have shape [", p.rows, "], got ",
                y.sizes());
    TORCH_CHECK(y.scalar_type() == at::kLong, "fastadv: ", op, ": y must be int64, got ", y.scalar_type());
    TORCH_CHECK(y.device() == a.device(), "fastadv: ", op, ": y must be on ", a.device());
    TORCH_CHECK(y.is_contiguous(), "fastadv: ", op, ": y must be contiguous");
    p.labels = y.const_data_ptr<int64_t>();
  }
  for (int i = 0; i < l.n_scalars; ++i) p.scalars[i] = args[l.scalars[i]].toDouble();
  const int64_t reduction_code = l.reduction >= 0 ? args[l.reduction].toInt() : 0;
  TORCH_CHECK(reduction_code >= 0 && reduction_code <= 3, "fastadv: ", op,
              ": reduction must be 0 (none), 1 (mean), 2 (sum) or 3 (mean over elements), got ", reduction_code);
  const auto reduction = static_cast<LogitsReduction>(reduction_code);
  p.grad_scale = gradient_scale(reduction, p.rows, p.cols);
  const char* error = logits_argument_error<Op>(p);
  TORCH_CHECK(error == nullptr, "fastadv: ", op, ": ", error);

  const auto acc_options = a.options().dtype(accumulate_type_of(a.scalar_type()));
  at::Tensor outputs[kLogitsMaxLosses + kLogitsMaxExtras + kLogitsMaxGrads];
  for (int i = 0; i < l.losses; ++i) {
    outputs[i] = at::empty({p.rows}, acc_options);
    p.losses[i] = outputs[i].mutable_data_ptr();
  }
  for (int i = 0; i < l.extras; ++i) {
    outputs[l.losses + i] = at::empty_like(a);
    p.extras[i] = outputs[l.losses + i].mutable_data_ptr();
  }
  for (int k = 0; k < l.grads; ++k) {
    at::Tensor& grad = outputs[l.losses + l.extras + k];
    const bool wanted = args[l.first_flag + l.grad_input[k]].toBool();
    // In the accumulation type (logits.h, store_gradient): the backward rounds to a's type once.
    grad = wanted ? at::empty_like(a, acc_options) : at::empty({0}, acc_options);
    p.grads[k] = wanted ? grad.mutable_data_ptr() : nullptr;
  }
  Backend::template run<Op>(p, a);
  for (int i = 0; i < l.losses; ++i) {
    outputs[i] = reduction == LogitsReduction::None ? outputs[i].to(a.scalar_type())
                                                    : reduce_rows(outputs[i], reduction, p.cols, a.scalar_type());
  }
  torch::jit::drop(*stack, l.arguments);
  for (int i = 0; i < l.returns; ++i) torch::jit::push(*stack, std::move(outputs[i]));
}

// The boxed kernel of member op `Op` (its forward, or with `Backward` its backward op) on a
// backend: binds the arguments by the convention above FASTADV_LOGITS_MEMBER_OPS, checks them,
// allocates the output and calls `Backend::run_members<Op, Backward>(params, V)`.
template <typename Backend, MemberOp Op, bool Backward>
void member_kernel(const c10::OperatorHandle& handle, c10::DispatchKeySet, torch::jit::Stack* stack) {
  const auto& schema = handle.schema();
  const auto& op = schema.name();
  const int n = static_cast<int>(schema.arguments().size());
  const auto args = torch::jit::last(*stack, n);
  int i = 0;
  const at::Tensor grad = Backward ? args[i++].toTensor() : at::Tensor();
  const at::Tensor& V = args[i++].toTensor();
  TORCH_CHECK(V.dim() == 3, "fastadv: ", op, ": V must have shape [M, B, C], got ", V.sizes());
  TORCH_CHECK(V.is_contiguous(), "fastadv: ", op, ": V must be contiguous");
  scalar_kind_of(V, "V");
  MemberParams p{};
  p.V = V.const_data_ptr();
  p.members = V.size(0);
  p.rows = V.size(1);
  p.cols = V.size(2);
  TORCH_CHECK(p.members >= 1 && p.members <= kMaxMembers && p.cols >= 1, "fastadv: ", op, ": V must have 1 to ",
              kMaxMembers, " members and at least one class, got shape ", V.sizes());
  int flags = 0;
  bool labelled = false;
  for (; i < n; ++i) {
    const c10::Argument& argument = schema.arguments()[i];
    if (argument.type()->kind() == c10::TypeKind::TensorType && argument.name() == "y") {
      const at::Tensor& y = args[i].toTensor();
      TORCH_CHECK(y.dim() == 1 && y.size(0) == p.rows, "fastadv: ", op, ": y must have shape [", p.rows, "], got ",
                  y.sizes());
      TORCH_CHECK(y.scalar_type() == at::kLong, "fastadv: ", op, ": y must be int64, got ", y.scalar_type());
      TORCH_CHECK(y.device() == V.device(), "fastadv: ", op, ": y must be on ", V.device());
      TORCH_CHECK(y.is_contiguous(), "fastadv: ", op, ": y must be contiguous");
      p.labels = y.const_data_ptr<int64_t>();
      labelled = true;
    } else {
      TORCH_CHECK(argument.type()->kind() == c10::TypeKind::BoolType && flags < kMemberMaxFlags, "fastadv: ", op,
                  ": argument ", argument.name(), " does not follow the member ops' convention (FASTADV_LOGITS_MEMBER_OPS)");
      p.flags[flags++] = args[i].toBool();
    }
  }
  TORCH_CHECK(labelled, "fastadv: ", op, ": needs the labels y");
  at::Tensor out;
  if (Backward) {
    TORCH_CHECK(grad.sizes() == at::IntArrayRef({p.rows, p.members, p.members}), "fastadv: ", op,
                ": the incoming gradient must have shape [", p.rows, ", ", p.members, ", ", p.members, "], got ",
                grad.sizes());
    TORCH_CHECK(grad.scalar_type() == V.scalar_type() && grad.device() == V.device() && grad.is_contiguous(),
                "fastadv: ", op, ": the incoming gradient must be contiguous, with V's dtype and device");
    p.grad = grad.const_data_ptr();
    out = at::empty_like(V);
  } else {
    out = at::empty({p.rows, p.members, p.members}, V.options());
  }
  p.out = out.mutable_data_ptr();
  Backend::template run_members<Op, Backward>(p, V);
  torch::jit::drop(*stack, n);
  torch::jit::push(*stack, std::move(out));
}

// Registers every op of the family for one backend: the row ops and the member ops with their
// backward ops.
template <typename Backend>
void register_logits_kernels(torch::Library& m) {
#define FASTADV_LOGITS_IMPL(name, schema) \
  m.impl(#name, torch::CppFunction::makeFromBoxedFunction<&logits_kernel<Backend, LogitsOp::name>>());
  FASTADV_LOGITS_OPS(FASTADV_LOGITS_IMPL)
#undef FASTADV_LOGITS_IMPL
#define FASTADV_LOGITS_MEMBER_IMPL(name, schema, backward_schema)                                                  \
  m.impl(#name, torch::CppFunction::makeFromBoxedFunction<&member_kernel<Backend, MemberOp::name, false>>()); \
  m.impl("_" #name "_backward",                                                                                 \
         torch::CppFunction::makeFromBoxedFunction<&member_kernel<Backend, MemberOp::name, true>>());
  FASTADV_LOGITS_MEMBER_OPS(FASTADV_LOGITS_MEMBER_IMPL)
#undef FASTADV_LOGITS_MEMBER_IMPL
}

}  // namespace fastadv
