// Autograd of the contrastive family, for every backend at once (the Autograd key): each op has a
// backward op of its own (supcon_loss's reads the forward's per-anchor log-sum-exp and positives),
// called by backward_op.h's node. The backward ops are differentiable no further: a double
// backward raises "derivative for ... is not implemented".
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

#include "backward_op.h"

TORCH_LIBRARY_IMPL(fastadv, Autograd, m) {
  for (const char* op : {"supcon_loss", "pairwise_compactness"}) {
    m.impl(op, torch::CppFunction::makeFromBoxedFunction<&fastadv::backward_op_autograd>());
    m.impl((std::string("_") + op + "_backward").c_str(), torch::autograd::autogradNotImplementedFallback());
  }
}
