// Every fastadv operator schema, in one place (the logits family's come from its op list).
// Backends register their implementations in csrc/cpu/<family>.cpp and csrc/cuda/<family>.cpp,
// autograd in csrc/autograd/<family>.cpp; Triton kernels are registered from Python. The Python
// module fastadv._C itself (what `import fastadv._C` returns) is csrc/python.cpp.
#include <torch/library.h>

#include <string>

#include "fastadv/logits.h"

#ifndef FASTADV_WITH_CUDA
#define FASTADV_WITH_CUDA 0
#endif

TORCH_LIBRARY(fastadv, m) {
  // Whether this build compiled the CUDA kernels in (see `fastadv info`).
  m.def("_compiled_with_cuda() -> bool", []() { return FASTADV_WITH_CUDA != 0; });
  // The instruction set whose clone of the CPU kernels the loader picked on this machine.
  m.def("_cpu_capability() -> str", []() -> std::string {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v4")) return "x86-64-v4 (AVX-512)";
    if (__builtin_cpu_supports("x86-64-v3")) return "x86-64-v3 (AVX2)";
    return "x86-64 (SSE2)";
#else
    return "compiler default";
#endif
  });

  // pgd family. eps/alpha apply to every sample unless the per-sample tensor ([B]) is given;
  // `active` ([B] bool) leaves inactive samples unchanged. norm is "linf" or "l2".
  m.def(
      "pgd_step(Tensor x_adv, Tensor grad, Tensor x, float eps, float alpha, "
      "Tensor? eps_per_sample, Tensor? alpha_per_sample, str norm, float clip_min, "
      "float clip_max, Tensor? active) -> Tensor");
  m.def(
      "pgd_step_(Tensor(a!) x_adv, Tensor grad, Tensor x, float eps, float alpha, "
      "Tensor? eps_per_sample, Tensor? alpha_per_sample, str norm, float clip_min, "
      "float clip_max, Tensor? active) -> ()");
  // UDR (METHODS.md section 5): x_int = x_adv + eta·sign(grad), then x' = clip(x_int − eta·lam·∇ĉ),
  // ĉ the soft cost of `cost` ("l2" or "linf") with radius eps (per sample when the [B] tensor is
  // given) and slope 1/tau outside it; no projection. soft_cost returns ĉ per sample [B].
  m.def(
      "udr_step(Tensor x_adv, Tensor grad, Tensor x, float eps, Tensor? eps_per_sample, float eta, float lam, "
      "float tau, str cost, float clip_min, float clip_max, Tensor? active) -> Tensor");
  m.def(
      "udr_step_(Tensor(a!) x_adv, Tensor grad, Tensor x, float eps, Tensor? eps_per_sample, float eta, float lam, "
      "float tau, str cost, float clip_min, float clip_max, Tensor? active) -> ()");
  m.def("soft_cost(Tensor x_adv, Tensor x, float eps, Tensor? eps_per_sample, float tau, str cost) -> Tensor");

  // logits family: fused logit-head losses (fastadv/ops/logits.py), one schema per line of
  // FASTADV_LOGITS_OPS in fastadv/logits.h, whose comment states the family's convention.
#define FASTADV_LOGITS_DEF(name, schema) m.def(#name schema);
  FASTADV_LOGITS_OPS(FASTADV_LOGITS_DEF)
#undef FASTADV_LOGITS_DEF
  // Its member ops ([M, B, C] in, [B, M, M] out) and their backward ops, from
  // FASTADV_LOGITS_MEMBER_OPS.
#define FASTADV_LOGITS_MEMBER_DEF(name, schema, backward_schema) \
  m.def(#name schema);                                            \
  m.def("_" #name "_backward" backward_schema);
  FASTADV_LOGITS_MEMBER_OPS(FASTADV_LOGITS_MEMBER_DEF)
#undef FASTADV_LOGITS_MEMBER_DEF

  // simplex family (fastadv/ops/simplex.py): rows of m >= 1 tasks (min_norm_weights: 1 to 32).
  // mask / achieved are bool [B, m] (a row with no allowed / every task achieved counts every
  // task). min_norm_weights' solver: 0 softmax-gd, 1 pgd, 2 apgd, 3 exact2 (m = 2; steps and lr
  // unused); lr is softmax-gd's.
  m.def("simplex_project(Tensor v, Tensor? mask) -> Tensor");
  m.def("simplex_distance_sq(Tensor w, Tensor? achieved, bool grad_w) -> (Tensor omega, Tensor domega_dw)");
  m.def(
      "min_norm_weights(Tensor Q, Tensor? achieved, Tensor? init, float lam, int solver, int steps, "
      "float lr) -> (Tensor w, Tensor objective)");

  // contrastive family (fastadv/ops/contrastive.py): z / f [N, D]; labels, preds, pair int64 [N]
  // (pair[i] is anchor i's other view, an involution). strategy: 0 global, 1 hard-ls, 2 soft-ls,
  // 3 leaked-ls; sim: 0 cosine, 1 l1, 2 l2; reduction: 0 none, 1 mean, 2 sum (ATen's numbers).
  // supcon_loss also returns each anchor's log-sum-exp and number of positives, which its
  // backward op reads instead of an N × N matrix; pairwise_compactness's p is 1 or 2.
  m.def(
      "supcon_loss(Tensor z, Tensor labels, Tensor preds, Tensor pair, float tau, int strategy, int sim, "
      "int reduction) -> (Tensor loss, Tensor row_lse, Tensor row_positives)");
  m.def(
      "_supcon_loss_backward(Tensor grad_loss, Tensor z, Tensor labels, Tensor preds, Tensor pair, "
      "Tensor row_lse, Tensor row_positives, float tau, int strategy, int sim, int reduction) -> Tensor grad_z");
  m.def("pairwise_compactness(Tensor f, Tensor labels, float a, int p) -> Tensor");
  m.def("_pairwise_compactness_backward(Tensor grad, Tensor f, Tensor labels, float a, int p) -> Tensor grad_f");
}
