// Autograd of the simplex family, for every backend at once (the Autograd key):
// simplex_distance_sq returns Ω and, when asked, dΩ/dw (the logits convention), so its backward
// scales that saved gradient (saved_gradient.h). simplex_project and min_norm_weights are not
// differentiated (an argmin; their outputs carry no gradient).
#include <torch/library.h>

#include "saved_gradient.h"

namespace fastadv {
namespace {
struct SimplexDistanceSq {};
}  // namespace

TORCH_LIBRARY_IMPL(fastadv, Autograd, m) {
  m.impl("simplex_distance_sq",
         torch::CppFunction::makeFromBoxedFunction<&saved_gradient_autograd<SimplexDistanceSq>>());
}

}  // namespace fastadv
