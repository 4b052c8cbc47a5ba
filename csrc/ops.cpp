// Every fastadv operator schema, in one place. Backends register their implementations in
// csrc/cpu/<family>.cpp and csrc/cuda/<family>.cpp; Triton kernels are registered from Python.
#include <Python.h>
#include <torch/library.h>

#include <string>

// `import fastadv._C` loads this library, which registers the operators below as a side effect;
// the module itself is empty (the ops are reached through torch.ops.fastadv).
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}

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

  // logits family: fused logit-head losses (fastadv/ops/logits.py). Each returns its per-sample
  // losses ([B]; mhuber: the scalar mean) and then, for every (loss, input) pair it can
  // differentiate, the gradient of each sample's loss with respect to that input ([B, C]),
  // computed in the same pass when the input's flag asks for it and an empty [0] tensor otherwise.
  m.def("soft_cross_entropy(Tensor z, Tensor target, bool grad_z, bool grad_target) -> (Tensor, Tensor, Tensor)");
  m.def("smoothed_cross_entropy(Tensor z, Tensor y, float smoothing, bool grad_z) -> (Tensor, Tensor)");
  m.def("boosted_cross_entropy(Tensor z, Tensor y, bool grad_z) -> (Tensor, Tensor)");
  // reduction as ATen's losses number it (0 none, 1 mean, 2 sum): with 1 or 2 the loss is the
  // scalar mean or sum of the per-sample losses and the gradients are those of that scalar, so a
  // backward whose incoming gradient is 1 has nothing left to compute (Liger-Kernel's habit).
  m.def(
      "trades_kl(Tensor z_nat, Tensor z_adv, int reduction, bool grad_nat, bool grad_adv) "
      "-> (Tensor, Tensor, Tensor)");
  // (bce, weighted_kl, d bce/d z_adv, d weighted_kl/d z_nat, d weighted_kl/d z_adv)
  m.def(
      "mart_loss(Tensor z_nat, Tensor z_adv, Tensor y, bool grad_nat, bool grad_adv) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("margin_sq_hinge(Tensor z, Tensor y, float delta, bool grad_z) -> (Tensor, Tensor)");
  m.def("mhuber(Tensor u, Tensor v, float alpha, bool grad_u, bool grad_v) -> (Tensor, Tensor, Tensor)");
  // mhuber between the moving averages ū = τ·u_previous + (1 − τ)·u and v̄ (LMA, seed 002):
  // (loss, ū, v̄, d loss/d u, d loss/d v); the averages are state, not differentiated.
  m.def(
      "mhuber_moving_average(Tensor u, Tensor v, Tensor u_previous, Tensor v_previous, float tau, float alpha, "
      "bool grad_u, bool grad_v) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("logit_pairing(Tensor z_nat, Tensor z_adv, bool grad_nat, bool grad_adv) -> (Tensor, Tensor, Tensor)");
  m.def("logit_squeeze(Tensor z, bool grad_z) -> (Tensor, Tensor)");
}
