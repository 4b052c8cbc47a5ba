// The autograd of a fused loss (the logits convention, FASTADV_LOGITS_OPS in
// fastadv/logits.h; simplex_distance_sq follows it too), for every backend at once (the Autograd
// key): the forward has already computed the gradient of every loss with respect to every input
// that needs one (Liger-Kernel's habit), so the backward only scales those saved gradients by the
// incoming ones. In C++ rather than torch.library.register_autograd: the Python path (argument
// filling, redispatch, a Python backward) cost more than the whole kernel at [128, 10]. The ops
// are differentiable once: the saved gradients carry no history.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <ATen/core/stack.h>
#include <ATen/ops/addcmul.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>

#include <string>
#include <vector>

#include "../logits_glue.h"
#include "backward_op.h"

namespace fastadv {

// Whether `grad` is a plain CPU scalar of exactly 1, read without a dispatcher call. Only a
// dense CPU tensor qualifies: a fake, functional or batched tensor (torch.compile, functorch)
// has no value to read, and reading a CUDA scalar would synchronise.
inline bool is_plain_cpu_one(const at::Tensor& grad) {
  if (grad.dim() != 0) return false;
  const auto plain = grad.key_set() - c10::autograd_dispatch_keyset_with_ADInplaceOrView - c10::autocast_dispatch_keyset;
  if (plain != c10::DispatchKeySet(c10::DispatchKey::CPU)) return false;
  switch (grad.scalar_type()) {
    case at::kFloat: return *grad.const_data_ptr<float>() == 1.0f;
    case at::kDouble: return *grad.const_data_ptr<double>() == 1.0;
    default: return false;
  }
}

struct SavedGradientBackward : torch::autograd::Node {
  std::string op;
  int inputs = 0;
  std::vector<torch::autograd::SavedVariable> saved;  // one per gradient output of the forward
  std::vector<int> loss_of, input_of;

  // Each input's gradient: Σ over its saved gradients of the incoming gradient of that loss (per
  // row, or a scalar) times the saved gradient.
  torch::autograd::variable_list apply(torch::autograd::variable_list&& incoming) override {
    torch::autograd::variable_list result(inputs);
    for (size_t k = 0; k < saved.size(); ++k) {
      const int j = input_of[k];
      const at::Tensor& scale = incoming[loss_of[k]];
      if (!scale.defined() || !should_compute_output(j)) continue;
      at::Tensor gradient = saved[k].unpack();
      if (!result[j].defined() && is_plain_cpu_one(scale)) {
        // A scalar loss reached with gradient 1: the saved gradient is the answer. Autograd adds
        // into it in place only once nothing else holds it (not while retain_graph keeps it saved
        // here), as it does with any gradient a backward returns.
        result[j] = std::move(gradient);
        continue;
      }
      const at::Tensor per_row = scale.dim() == 0 ? scale : scale.unsqueeze(1);
      result[j] = result[j].defined() ? at::addcmul(result[j], gradient, per_row) : gradient.mul(per_row);
    }
    return result;
  }

  void release_variables() override {
    for (auto& variable : saved) variable.reset_data();
  }

  std::string name() const override { return op + "Backward"; }
};

// The boxed Autograd kernel of a fused loss; `Tag` is one type per op (its layout is read once).
template <typename Tag>
void saved_gradient_autograd(const c10::OperatorHandle& handle, c10::DispatchKeySet keys, torch::jit::Stack* stack) {
  static const LogitsLayout l = LogitsLayout::of(handle.schema());
  const size_t base = stack->size() - l.arguments;
  at::Tensor inputs[kLogitsMaxInputs];
  bool differentiated = false;
  const bool enabled = at::GradMode::is_enabled();
  for (int j = 0; j < l.differentiable; ++j) {
    inputs[j] = (*stack)[base + l.tensors[j]].toTensor();
    if (enabled && inputs[j].requires_grad()) {
      differentiated = true;
      // The gradient is needed whatever the caller's flag says.
      (*stack)[base + l.first_flag + j] = true;
    }
  }
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    handle.redispatchBoxed(keys & c10::after_ADInplaceOrView_keyset, stack);
  }
  if (!differentiated) return;
  auto outputs = torch::jit::last(*stack, l.returns);
  auto node = make_node<SavedGradientBackward>();
  node->op = handle.schema().name();
  node->inputs = l.differentiable;
  node->set_next_edges(torch::autograd::collect_next_edges(at::ArrayRef<at::Tensor>(inputs, l.differentiable)));
  for (int k = 0; k < l.grads; ++k) {
    node->saved.emplace_back(outputs[l.losses + l.extras + k].toTensor(), /*is_output=*/false);
    node->loss_of.push_back(l.grad_loss[k]);
    node->input_of.push_back(l.grad_input[k]);
  }
  for (int i = 0; i < l.losses; ++i) torch::autograd::set_history(outputs[i].toTensor(), node);
}

}  // namespace fastadv
