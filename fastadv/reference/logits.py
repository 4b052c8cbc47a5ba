"""Naive pure-PyTorch oracles of the logits family (METHODS.md sections 1 and 2).

Each loss is written the obvious way, one torch op per term of its equation, in the
accumulation dtype (float64 for float64 inputs, float32 otherwise), and returned in the input
dtype. Every loss is per sample ([B]) except ``mhuber``, whose mean over all elements is part
of its definition (seed 002), and ``masked_gram``, an M×M matrix per sample ([B, M, M]). Autograd differentiates these; the fused ops are tested against
both the values and the gradients. They are never changed to agree with a kernel.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["soft_cross_entropy", "smoothed_cross_entropy", "boosted_cross_entropy", "trades_kl", "mart_loss",
           "margin_sq_hinge", "mhuber", "mhuber_moving_average", "logit_pairing", "logit_squeeze", "masked_gram"]

# MART's code clamps 1 − max_{k≠y} p_k(x') at 1e-4 before the log (its `+ 1e-4`, resolved here
# as a clamp so that the loss is exact away from the clamp).
BOOSTED_CE_FLOOR = 1e-4
# masked_gram normalises u / max(‖u‖, eps), torch.nn.functional.normalize's convention.
MASKED_GRAM_EPS = 1e-12


def _accumulate(*tensors):
    dtype = torch.float64 if tensors[0].dtype == torch.float64 else torch.float32
    return [t.to(dtype) for t in tensors]


def _one_hot(y, like):
    return F.one_hot(y, like.shape[1]).to(like.dtype)


def soft_cross_entropy(z, target):
    """``H(t, z) = −Σ_j t_j log softmax(z)_j`` per sample (soft labels: LTD, LRM's pairing)."""
    z_acc, t_acc = _accumulate(z, target)
    return -(t_acc * F.log_softmax(z_acc, dim=1)).sum(dim=1).to(z.dtype)


def smoothed_cross_entropy(z, y, smoothing):
    """Cross-entropy against the label-smoothed target of seed 001: ``1 − s`` on the label and
    ``s / (C − 1)`` on every other class (not torch's ``s / C`` convention)."""
    (z_acc,) = _accumulate(z)
    classes = z.shape[1]
    one_hot = _one_hot(y, z_acc)
    target = one_hot * (1 - smoothing) + (1 - one_hot) * (smoothing / (classes - 1))
    return -(target * F.log_softmax(z_acc, dim=1)).sum(dim=1).to(z.dtype)


def boosted_cross_entropy(z, y):
    """MART's BCE: ``−log p_y − log(1 − max_{k≠y} p_k)``, the second log's argument clamped at
    1e-4 from below (MART's code)."""
    (z_acc,) = _accumulate(z)
    probs = F.softmax(z_acc, dim=1)
    log_probs = F.log_softmax(z_acc, dim=1)
    true_class = F.one_hot(y, z.shape[1]).bool()
    other = probs.masked_fill(true_class, -math.inf).amax(dim=1)
    nll = -log_probs.gather(1, y[:, None]).squeeze(1)
    return (nll - torch.log((1 - other).clamp(min=BOOSTED_CE_FLOOR))).to(z.dtype)


def trades_kl(z_nat, z_adv, reduction="none"):
    """``KL(p(z_nat) ‖ p(z_adv)) = Σ_j p_j (log p_j − log q_j)`` per sample, or its mean or sum
    over the batch (``reduction``)."""
    a, b = _accumulate(z_nat, z_adv)
    log_p = F.log_softmax(a, dim=1)
    log_q = F.log_softmax(b, dim=1)
    kl = (log_p.exp() * (log_p - log_q)).sum(dim=1)
    if reduction == "mean":
        kl = kl.mean()
    elif reduction == "sum":
        kl = kl.sum()
    elif reduction != "none":
        raise ValueError(f"trades_kl: reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    return kl.to(z_nat.dtype)


def mart_loss(z_nat, z_adv, y):
    """MART's two per-sample terms: ``(BCE(p(z_adv), y), KL(p(z_nat) ‖ p(z_adv))·(1 − p_y(z_nat)))``.
    The weight is not detached (MART's code)."""
    a, b = _accumulate(z_nat, z_adv)
    bce = boosted_cross_entropy(b, y)
    kl = trades_kl(a, b)
    weight = 1 - F.softmax(a, dim=1).gather(1, y[:, None]).squeeze(1)
    return bce.to(z_nat.dtype), (kl * weight).to(z_nat.dtype)


def margin_sq_hinge(z, y, delta):
    """``Σ_{j≠y} max(0, z_j − z_y + δ)²`` per sample (seed 002's margin loss L')."""
    (z_acc,) = _accumulate(z)
    z_true = z_acc.gather(1, y[:, None])
    hinge = (z_acc - z_true + delta).clamp(min=0) ** 2
    not_true = 1 - _one_hot(y, z_acc)
    return (hinge * not_true).sum(dim=1).to(z.dtype)


def mhuber(u, v, alpha):
    """Seed 002's modified Huber loss, a scalar: with ``d = u − v`` elementwise,
    ``α²(1 − cos(d/α))`` where ``|d|/α ≤ π/2``, else ``α|d| + (1 − π/2)α²``; mean over all
    elements."""
    u_acc, v_acc = _accumulate(u, v)
    d = u_acc - v_acc
    inner = alpha ** 2 * (1 - torch.cos(d / alpha))
    outer = alpha * d.abs() + (1 - math.pi / 2) * alpha ** 2
    return torch.where(d.abs() / alpha <= math.pi / 2, inner, outer).mean().to(u.dtype)


def mhuber_moving_average(u, v, u_previous, v_previous, tau, alpha):
    """``(mhuber(ū, v̄, α), ū, v̄)`` with the moving averages ``ū = τ·sg(u_previous) + (1 − τ)·u``
    and ``v̄`` likewise (LMA, seed 002); the averages are returned detached, as the next state."""
    u_average = tau * u_previous.detach() + (1 - tau) * u
    v_average = tau * v_previous.detach() + (1 - tau) * v
    return mhuber(u_average, v_average, alpha), u_average.detach(), v_average.detach()


def logit_pairing(z_nat, z_adv):
    """``‖z_nat − z_adv‖²`` per sample (ALP, seed 001 Eq. 2)."""
    a, b = _accumulate(z_nat, z_adv)
    return ((a - b) ** 2).sum(dim=1).to(z_nat.dtype)


def logit_squeeze(z):
    """``‖z‖²`` per sample (logit squeezing, seed 001)."""
    (z_acc,) = _accumulate(z)
    return (z_acc ** 2).sum(dim=1).to(z.dtype)


def masked_gram(V, y, normalize=True):
    """The Gram matrix of each sample's M member vectors with the true class masked out:
    ``V`` [M, B, C], ``y`` [B] → ``G`` [B, M, M], ``G[b, m, n] = ⟨û_m, û_n⟩`` with
    ``u_m = V[m, b] ⊙ (1 − onehot(y_b))`` and ``û_m = u_m / max(‖u_m‖₂, 1e-12)`` when ``normalize``
    (``û_m = u_m`` otherwise). Off the diagonal that is adversarial logit separation's masked
    cosine cos_m (seed 000); on probabilities, ADP's M̃ᵀM̃. An all-zero masked vector normalises
    to zero: its row and column of G, diagonal included, are 0, and its gradient is finite
    (the eps branch of the max: dÛ / eps)."""
    (v,) = _accumulate(V)
    members, _, classes = v.shape
    mask = 1 - F.one_hot(y, classes).to(v.dtype)
    u = v * mask
    if normalize:
        norms = torch.linalg.vector_norm(u, dim=2, keepdim=True)
        u = u / norms.clamp_min(MASKED_GRAM_EPS)
    rows = []
    for m in range(members):
        rows.append(torch.stack([(u[m] * u[n]).sum(dim=1) for n in range(members)], dim=1))
    return torch.stack(rows, dim=1).to(V.dtype)
