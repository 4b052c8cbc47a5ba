// The autograd of an op whose backward is an op of its own (logits' member ops, the contrastive
// family), for every backend at once (the Autograd key). In C++ rather than
// torch.library.register_autograd: the Python path (argument filling, redispatch, a Python
// backward) costs tens of microseconds a call, with or without a gradient.
//
// The convention: the op `fastadv::<op>` differentiates in its first argument (a tensor), takes
// its tensors before its other arguments, and has a backward op `fastadv::_<op>_backward` whose
// arguments are (the gradient of its first output, the forward's tensors, the forward's other
// outputs, the forward's other arguments) and which returns the gradient of the first argument.
// The node keeps the tensors and outputs as saved variables, the other arguments as they are.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <ATen/core/stack.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>

#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

namespace fastadv {

// The pointer that owns an autograd node: c10::intrusive_ptr where Node derives from
// intrusive_ptr_target (recent torch), std::shared_ptr before. Both are accepted by set_history
// of their own torch, so the extension builds against either.
constexpr bool kIntrusiveNodes = std::is_base_of_v<c10::intrusive_ptr_target, torch::autograd::Node>;
template <typename T>
using NodePtr = std::conditional_t<kIntrusiveNodes, c10::intrusive_ptr<T>, std::shared_ptr<T>>;

template <typename T, typename... Args>
NodePtr<T> make_node(Args&&... args) {
  if constexpr (std::is_base_of_v<c10::intrusive_ptr_target, T>) {
    return c10::make_intrusive<T>(std::forward<Args>(args)...);
  } else {
    return std::make_shared<T>(std::forward<Args>(args)...);
  }
}

struct BackwardOpNode : torch::autograd::Node {
  std::string op;
  c10::OperatorHandle backward;
  std::vector<torch::autograd::SavedVariable> saved;  // the forward's tensors, then its other outputs
  std::vector<c10::IValue> others;                    // the forward's other arguments

  explicit BackwardOpNode(c10::OperatorHandle backward_op) : backward(std::move(backward_op)) {}

  torch::autograd::variable_list apply(torch::autograd::variable_list&& incoming) override {
    if (!incoming[0].defined() || !should_compute_output(0)) return {at::Tensor()};
    torch::jit::Stack stack;
    stack.reserve(1 + saved.size() + others.size());
    stack.emplace_back(incoming[0].contiguous());
    for (auto& variable : saved) stack.emplace_back(variable.unpack());
    for (const auto& argument : others) stack.emplace_back(argument);
    backward.callBoxed(&stack);
    return {stack.back().toTensor()};
  }

  void release_variables() override {
    for (auto& variable : saved) variable.reset_data();
  }

  std::string name() const override { return op + "Backward"; }
};

// `fastadv::_<op>_backward` of the op `handle`, looked up once.
inline const c10::OperatorHandle& backward_op_of(const c10::OperatorHandle& handle) {
  static std::mutex mutex;
  static std::unordered_map<std::string, c10::OperatorHandle> found;
  const std::string& name = handle.schema().name();
  std::lock_guard<std::mutex> lock(mutex);
  auto it = found.find(name);
  if (it == found.end()) {
    const std::string backward = "fastadv::_" + name.substr(name.find("::") + 2) + "_backward";
    it = found.emplace(name, c10::Dispatcher::singleton().findSchemaOrThrow(backward.c_str(), "")).first;
  }
  return it->second;
}

// The boxed Autograd kernel of such an op: below autograd when its first argument needs no
// gradient, otherwise the same with a BackwardOpNode on its first output.
inline void backward_op_autograd(const c10::OperatorHandle& handle, c10::DispatchKeySet keys,
                                 torch::jit::Stack* stack) {
  const auto& schema = handle.schema();
  const size_t n = schema.arguments().size();
  const size_t base = stack->size() - n;
  const at::Tensor first = (*stack)[base].toTensor();
  const bool differentiated = at::GradMode::is_enabled() && first.requires_grad();
  NodePtr<BackwardOpNode> node;
  if (differentiated) {
    node = make_node<BackwardOpNode>(backward_op_of(handle));
    node->op = schema.name();
    node->set_next_edges(torch::autograd::collect_next_edges(first));
    for (size_t i = 0; i < n; ++i) {
      const c10::IValue& argument = (*stack)[base + i];
      if (argument.isTensor()) {
        node->saved.emplace_back(argument.toTensor(), /*is_output=*/false);
      } else {
        node->others.push_back(argument);
      }
    }
  }
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    handle.redispatchBoxed(keys & c10::after_ADInplaceOrView_keyset, stack);
  }
  if (!differentiated) return;
  const size_t returns = schema.returns().size();
  auto outputs = torch::jit::last(*stack, returns);
  for (size_t i = 1; i < returns; ++i) node->saved.emplace_back(outputs[i].toTensor(), /*is_output=*/false);
  torch::autograd::set_history(outputs[0].toTensor(), node);
}

}  // namespace fastadv
