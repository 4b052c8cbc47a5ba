"""`fastadv bench overhead`: the host's work per call of every fused op, on tiny tensors.

On a GPU, a fused op's kernel on a training batch runs for microseconds; what the host spends per
call (argument checks, dispatch, autograd, the launcher) is what a step waits for outside a CUDA
graph. Measured here on tensors so small that the arithmetic is nothing (4×3×4×4 batches, [4, 10]
logits, [4, 3] simplex rows, 8×4 features), every op through its public function and through its
``unchecked`` form (what the attacks' loops call), each as a multiple of ``torch.add`` on the same
tiny tensors, all timed in interleaved rounds in one run. Also ``trades_kl(z_nat, z_adv, "mean")``
forward + ``torch.autograd.grad`` on [4, 10] against the eager formula
``(p * (log_softmax(z_nat) − log_softmax(z_adv))).sum(1).mean()`` and its gradient.

Targets (issue 20): every unchecked op ≤ 3× ``torch.add``, every public op ≤ 6×, ``trades_kl``
forward+backward ≤ 0.3× its eager formula.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

import fastadv
from fastadv import ops
from fastadv.ops import contrastive as C
from fastadv.ops import logits as L
from fastadv.ops import pgd as P
from fastadv.ops import simplex as S

from . import common

TARGETS = {"unchecked": 3.0, "public": 6.0, "trades_kl_vs_eager": 0.3}


def _random(device):
    g = torch.Generator().manual_seed(0)
    return lambda *shape: torch.rand(*shape, generator=g).to(device)


def pgd_cases(device, batch: int = 4, image=(3, 4, 4)) -> dict[str, tuple]:
    """The pgd family's calls on ``batch`` images of shape ``image``."""
    rand = _random(device)
    x = rand(batch, *image)
    x_adv, grad = (x + 0.01).clamp(0, 1), rand(batch, *image) - 0.5
    eps, alpha, clip = 8 / 255, 2 / 255, (0.0, 1.0)
    return {
        "pgd_step": (lambda: ops.pgd_step(x_adv, grad, x, eps, alpha), None),
        "pgd_step_": (lambda: ops.pgd_step_(x_adv, grad, x, eps, alpha),
                      lambda: P.unchecked.pgd_step_(x_adv, grad, x, eps, alpha, "linf", clip)),
        "pgd_init": (lambda: ops.pgd_init(x, eps), lambda: P.unchecked.pgd_init(x, eps, "linf", "uniform", None, clip)),
        "udr_step": (lambda: ops.udr_step(x_adv, grad, x, eps, alpha, 1.0, 2 * alpha), None),
        "udr_step_": (lambda: ops.udr_step_(x_adv, grad, x, eps, alpha, 1.0, 2 * alpha),
                      lambda: P.unchecked.udr_step_(x_adv, grad, x, eps, alpha, 1.0, 2 * alpha, "pixel", clip)),
        "soft_cost": (lambda: ops.soft_cost(x_adv, x, eps, 2 * alpha),
                      lambda: P.unchecked.soft_cost(x_adv, x, eps, 2 * alpha, "pixel")),
    }


def logits_cases(device, batch: int = 4) -> dict[str, tuple]:
    """The logits family's calls on [batch, 10] logits (masked_gram: 3 members)."""
    rand = _random(device)
    z, z2, target = rand(batch, 10), rand(batch, 10), torch.softmax(rand(batch, 10), dim=1)
    y = (torch.arange(batch) % 10).to(device)
    u, v, u_avg, v_avg = rand(batch, 10), rand(batch, 10), rand(batch, 10), rand(batch, 10)
    V = rand(3, batch, 10)
    return {
        "soft_cross_entropy": (lambda: ops.soft_cross_entropy(z, target),
                               lambda: L.unchecked.soft_cross_entropy(z, target)),
        "smoothed_cross_entropy": (lambda: ops.smoothed_cross_entropy(z, y),
                                   lambda: L.unchecked.smoothed_cross_entropy(z, y)),
        "boosted_cross_entropy": (lambda: ops.boosted_cross_entropy(z, y),
                                  lambda: L.unchecked.boosted_cross_entropy(z, y)),
        "trades_kl": (lambda: ops.trades_kl(z, z2), lambda: L.unchecked.trades_kl(z, z2)),
        "mart_loss": (lambda: ops.mart_loss(z, z2, y), lambda: L.unchecked.mart_loss(z, z2, y)),
        "margin_sq_hinge": (lambda: ops.margin_sq_hinge(z, y), lambda: L.unchecked.margin_sq_hinge(z, y)),
        "mhuber": (lambda: ops.mhuber(u, v, 1.0), lambda: L.unchecked.mhuber(u, v, 1.0)),
        "mhuber_moving_average": (lambda: ops.mhuber_moving_average(u, v, u_avg, v_avg, 0.9, 1.0),
                                  lambda: L.unchecked.mhuber_moving_average(u, v, u_avg, v_avg, 0.9, 1.0)),
        "logit_pairing": (lambda: ops.logit_pairing(z, z2), lambda: L.unchecked.logit_pairing(z, z2)),
        "logit_squeeze": (lambda: ops.logit_squeeze(z), lambda: L.unchecked.logit_squeeze(z)),
        "masked_gram": (lambda: ops.masked_gram(V, y), lambda: L.unchecked.masked_gram(V, y)),
    }


def simplex_cases(device, batch: int = 4) -> dict[str, tuple]:
    """The simplex family's calls on [batch, 3] rows ([batch, 3, 3] Gram matrices)."""
    rand = _random(device)
    w, Q = rand(batch, 3), rand(batch, 3, 3)
    Q = Q @ Q.transpose(1, 2)
    return {
        "simplex_project": (lambda: ops.simplex_project(w), lambda: S.unchecked.simplex_project(w)),
        "simplex_distance_sq": (lambda: ops.simplex_distance_sq(w), lambda: S.unchecked.simplex_distance_sq(w)),
        "min_norm_weights": (lambda: ops.min_norm_weights(Q), lambda: S.unchecked.min_norm_weights(Q)),
    }


def contrastive_cases(device, batch: int = 4, features: int = 4) -> dict[str, tuple]:
    """The contrastive family's calls on 2·batch feature rows (two views) of ``features``."""
    rand = _random(device)
    feats = rand(2 * batch, features)
    labels = (torch.arange(2 * batch) % 4).to(device)
    pair = ops.two_view_pair(batch).to(device)
    return {
        "supcon_loss": (lambda: ops.supcon_loss(feats, labels, labels, pair),
                        lambda: C.unchecked.supcon_loss(feats, labels, labels, pair)),
        "pairwise_compactness": (lambda: ops.pairwise_compactness(feats, labels),
                                 lambda: C.unchecked.pairwise_compactness(feats, labels)),
    }


def cases(device) -> dict[str, tuple]:
    """op -> (public call, unchecked call or None) of every op, on tiny inputs (4 samples)."""
    return {**pgd_cases(device), **logits_cases(device), **simplex_cases(device), **contrastive_cases(device)}


def _time_per_call(functions: dict, device, rounds: int, calls: int) -> dict[str, float]:
    """Median seconds per call, each function ``calls`` times per round, in interleaved rounds."""
    stats = common.time_interleaved(functions, device, rounds=rounds, calls_per_round=calls, warmup=3)
    return {name: s["median"] for name, s in stats.items()}


def run(device: str = "cpu", quick: bool = False, out_dir=None) -> str:
    device = torch.device(device)
    started = time.perf_counter()
    rounds, calls = (5, 200) if quick else (15, 1000)
    a, b = torch.rand(4, 3, 4, 4, device=device), torch.rand(4, 3, 4, 4, device=device)
    functions = {"torch.add": lambda: torch.add(a, b)}
    for name, (public, unchecked) in cases(device).items():
        functions[name] = public
        if unchecked is not None:
            functions[f"unchecked.{name}"] = unchecked
    z_nat = torch.randn(4, 10, device=device)
    z_adv = torch.randn(4, 10, device=device, requires_grad=True)

    def fused_kl():
        torch.autograd.grad(ops.trades_kl(z_nat, z_adv, "mean"), z_adv)

    def eager_kl():
        loss = (F.softmax(z_nat, dim=1) * (F.log_softmax(z_nat, dim=1) - F.log_softmax(z_adv, dim=1))).sum(1).mean()
        torch.autograd.grad(loss, z_adv)

    def autograd_floor():  # the engine's own cost: a one-op graph
        torch.autograd.grad(z_adv.sum(), z_adv)

    functions["trades_kl fwd+bwd"], functions["eager KL fwd+bwd"] = fused_kl, eager_kl
    functions["autograd floor"] = autograd_floor
    seconds = _time_per_call(functions, device, rounds, calls)
    add = seconds["torch.add"]
    records = []
    for name in cases(device):
        public, unchecked = seconds[name], seconds.get(f"unchecked.{name}")
        records.append({"op": name, "public_us": public * 1e6, "public_vs_add": public / add,
                        "unchecked_us": None if unchecked is None else unchecked * 1e6,
                        "unchecked_vs_add": None if unchecked is None else unchecked / add})
    meta = {"machine": common.machine_description(device), "torch": torch.__version__, "fastadv": fastadv.__version__,
            "device": str(device), "rounds": rounds, "calls_per_round": calls, "add_us": add * 1e6,
            "trades_kl_fwd_bwd_us": seconds["trades_kl fwd+bwd"] * 1e6,
            "eager_kl_fwd_bwd_us": seconds["eager KL fwd+bwd"] * 1e6,
            "autograd_floor_us": seconds["autograd floor"] * 1e6,
            "backend": {name: fastadv.backend.select(name, device, torch.float32) for name in cases(device)}}
    meta["seconds"] = time.perf_counter() - started
    common.write_results("overhead", records, meta, out_dir)
    return report(records, meta)


def report(records, meta) -> str:
    rows = []
    for r in records:
        unchecked = "—" if r["unchecked_us"] is None else f"{r['unchecked_us']:.1f} ({r['unchecked_vs_add']:.1f}×)"
        rows.append([r["op"], meta["backend"][r["op"]], f"{r['public_us']:.1f} ({r['public_vs_add']:.1f}×)", unchecked])
    worst_public = max(records, key=lambda r: r["public_vs_add"])
    unchecked = [r for r in records if r["unchecked_vs_add"] is not None]
    worst_unchecked = max(unchecked, key=lambda r: r["unchecked_vs_add"])
    kl = meta["trades_kl_fwd_bwd_us"] / meta["eager_kl_fwd_bwd_us"]
    met = lambda ok: "met" if ok else "missed"  # noqa: E731
    lines = [f"Host time per call on tiny tensors, {meta['machine']} ({meta['device']}), median of {meta['rounds']} "
             f"interleaved rounds of {meta['calls_per_round']} calls; `torch.add` on 4×3×4×4: "
             f"{meta['add_us']:.2f} µs", "",
             common.markdown_table(["op", "backend", "public µs (× torch.add)", "unchecked µs (× torch.add)"], rows), "",
             f"`trades_kl` forward+backward ([4, 10], mean): {meta['trades_kl_fwd_bwd_us']:.1f} µs against "
             f"{meta['eager_kl_fwd_bwd_us']:.1f} µs for the eager formula ({kl:.2f}×); autograd's own cost, "
             f"`torch.autograd.grad(z.sum(), z)`, is {meta.get('autograd_floor_us', float('nan')):.1f} µs "
             f"({meta.get('autograd_floor_us', float('nan')) / meta['eager_kl_fwd_bwd_us']:.2f}× the eager formula).",
             "",
             f"- every unchecked op ≤ {TARGETS['unchecked']:.0f}× torch.add: **{met(worst_unchecked['unchecked_vs_add'] <= TARGETS['unchecked'])}** "
             f"(worst: {worst_unchecked['op']}, {worst_unchecked['unchecked_vs_add']:.1f}×)",
             f"- every public op ≤ {TARGETS['public']:.0f}× torch.add: **{met(worst_public['public_vs_add'] <= TARGETS['public'])}** "
             f"(worst: {worst_public['op']}, {worst_public['public_vs_add']:.1f}×)",
             f"- trades_kl forward+backward ≤ {TARGETS['trades_kl_vs_eager']}× its eager formula: "
             f"**{met(kl <= TARGETS['trades_kl_vs_eager'])}** ({kl:.2f}×)",
             "- over their target: " + (", ".join(
                 [f"{r['op']} (unchecked {r['unchecked_vs_add']:.1f}×)" for r in unchecked
                  if r["unchecked_vs_add"] > TARGETS["unchecked"]]
                 + [f"{r['op']} (public {r['public_vs_add']:.1f}×)" for r in records
                    if r["public_vs_add"] > TARGETS["public"]]) or "none"),
             "", f"Benchmark wall time: {meta['seconds']:.0f} s."]
    return "\n".join(lines)
