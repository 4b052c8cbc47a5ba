// Autograd of the logits family, for every backend at once (the Autograd key): the fused losses
// scale the gradients their forward saved (saved_gradient.h); the member ops (masked_gram) have a
// backward op of their own, which their node calls (backward_op.h).
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

#include <type_traits>

#include "../logits_glue.h"
#include "backward_op.h"
#include "saved_gradient.h"

namespace fastadv {

TORCH_LIBRARY_IMPL(fastadv, Autograd, m) {
#define FASTADV_LOGITS_AUTOGRAD(name, schema) \
  m.impl(#name, torch::CppFunction::makeFromBoxedFunction<                                       \
                     &saved_gradient_autograd<std::integral_constant<LogitsOp, LogitsOp::name>>>());
  FASTADV_LOGITS_OPS(FASTADV_LOGITS_AUTOGRAD)
#undef FASTADV_LOGITS_AUTOGRAD
// A member op's backward op has no gradient (the ops are differentiable once): differentiating
// through it, a double backward, raises "derivative for ... is not implemented".
#define FASTADV_LOGITS_MEMBER_AUTOGRAD(name, schema, backward_schema)                             \
  m.impl(#name, torch::CppFunction::makeFromBoxedFunction<&backward_op_autograd>());             \
  m.impl("_" #name "_backward", torch::autograd::autogradNotImplementedFallback());
  FASTADV_LOGITS_MEMBER_OPS(FASTADV_LOGITS_MEMBER_AUTOGRAD)
#undef FASTADV_LOGITS_MEMBER_AUTOGRAD
}

}  // namespace fastadv
