"""Naive pure-PyTorch oracles of the simplex family (METHODS.md section 4, seed 003 ch. 4).

Written the obvious way, in the accumulation dtype (float64 for float64 inputs, float32
otherwise), and returned in the input dtype. They are what every kernel is tested against and
are never changed to agree with a kernel.

Conventions shared by the family:

* ``mask`` / ``allowed`` is a bool [B, m] tensor, True where a coordinate may carry weight. A row
  with no allowed coordinate counts every coordinate (METHODS.md: when every task is achieved,
  every task counts).
* ``achieved`` is a bool [B, m] tensor, True where a task already reached its goal. The
  extended simplex of TA-MOO puts weight only on the unachieved tasks, so its projection is
  :func:`simplex_project` with ``mask = ~achieved``. ``None`` means no task is achieved.
* A NaN or an infinity anywhere in a row makes that whole row NaN (and no other row).
"""
from __future__ import annotations

import math

import torch

__all__ = ["simplex_project", "simplex_distance_sq", "min_norm_objective", "min_norm_weights",
           "min_norm_exact", "SOLVERS", "SOFTMAX_GD_STEPS", "SOFTMAX_GD_LR"]

SOLVERS = ("softmax-gd", "pgd", "apgd", "exact2")
# Seed 003 ch. 4, Sec. 4 and App. C: the GD solver uses K = 10 steps with learning rate 0.005.
SOFTMAX_GD_STEPS = 10
SOFTMAX_GD_LR = 0.005


def _accumulate(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float64 if t.dtype == torch.float64 else torch.float32)


def _effective_mask(mask, like: torch.Tensor) -> torch.Tensor:
    """The allowed coordinates, with an all-False row meaning every coordinate."""
    if mask is None:
        return torch.ones_like(like, dtype=torch.bool)
    none = ~mask.any(dim=1, keepdim=True)
    return mask | none


def _nan_rows(t: torch.Tensor) -> torch.Tensor:
    return ~torch.isfinite(t).all(dim=1, keepdim=True)


def simplex_project(v: torch.Tensor, mask=None) -> torch.Tensor:
    """The Euclidean projection of each row of ``v`` [B, m] onto the probability simplex over
    its allowed coordinates (the others are 0): ``argmin_{w ≥ 0, Σw = 1, w = 0 off the mask}
    ‖w − v‖²``.

    The sort-based rule (Held, Wolfe & Crowder 1974; Duchi et al. 2008, Fig. 1): sort the
    allowed entries decreasingly into u, ρ = max{k : u_k − (Σ_{j≤k} u_j − 1)/k > 0},
    τ = (Σ_{j≤ρ} u_j − 1)/ρ, w = max(v − τ, 0) on the allowed coordinates. The row is first
    shifted by the maximum of its allowed entries, which changes nothing mathematically (the
    projection of v + c·1 is that of v) and keeps the sums exact when an entry is huge (±1e30).
    """
    acc = _accumulate(v)
    allowed = _effective_mask(mask, acc)
    bad = _nan_rows(acc)
    acc = torch.where(bad, torch.zeros_like(acc), acc)
    top = torch.where(allowed, acc, torch.full_like(acc, -math.inf)).amax(dim=1, keepdim=True)
    shifted = torch.where(allowed, acc - top, torch.full_like(acc, -math.inf))
    u, _ = torch.sort(shifted, dim=1, descending=True)
    count = allowed.sum(dim=1, keepdim=True)
    k = torch.arange(1, acc.shape[1] + 1, device=acc.device, dtype=acc.dtype).unsqueeze(0)
    prefix = torch.cumsum(torch.where(torch.isfinite(u), u, torch.zeros_like(u)), dim=1)
    valid = (u - (prefix - 1) / k > 0) & (k <= count)
    rho = (valid * k).amax(dim=1, keepdim=True)  # ≥ 1: k = 1 is always valid (u_1 = 0)
    tau = (prefix.gather(1, rho.long() - 1) - 1) / rho
    w = torch.where(allowed, torch.clamp(shifted - tau, min=0), torch.zeros_like(acc))
    w = torch.where(bad, torch.full_like(w, math.nan), w)
    return w.to(v.dtype)


def simplex_distance_sq(w: torch.Tensor, achieved=None) -> torch.Tensor:
    """Ω(w) per row [B] (seed 003 ch. 4, Theorem 1):
    ``Σ_{i achieved} w_i² + (1/(m − s)) (1 − Σ_{i not achieved} w_i)²``, s the number achieved;
    a row with every task achieved counts every task as unachieved. On the simplex this is the
    squared distance from w to the extended simplex {0 on achieved} × Δ(unachieved), i.e.
    ``‖w − simplex_project(w, ~achieved)‖²``. Differentiable by autograd."""
    acc = _accumulate(w)
    if achieved is None:
        achieved = torch.zeros_like(acc, dtype=torch.bool)
    unachieved = _effective_mask(~achieved, acc)
    on_achieved = (~unachieved).to(acc.dtype)
    on_unachieved = unachieved.to(acc.dtype)
    free = on_unachieved.sum(dim=1)
    omega = (on_achieved * acc * acc).sum(dim=1) + (1 - (on_unachieved * acc).sum(dim=1)) ** 2 / free
    return omega.to(w.dtype)


def min_norm_objective(Q: torch.Tensor, w: torch.Tensor, achieved=None, lam: float = 0.0) -> torch.Tensor:
    """``wᵀQw + λ·Ω(w)`` per row [B]: the objective every solver of :func:`min_norm_weights` minimises."""
    Qa, wa = _accumulate(Q), _accumulate(w)
    quadratic = torch.einsum("bi,bij,bj->b", wa, Qa, wa)
    return (quadratic + lam * _accumulate(simplex_distance_sq(wa, achieved))).to(w.dtype)


def _lipschitz(Q: torch.Tensor, lam: float) -> torch.Tensor:
    """L ≥ the Lipschitz constant of the objective's gradient, per row [B, 1]:
    ‖∇²(wᵀQw)‖ = 2‖(Q + Qᵀ)/2‖₂ ≤ 2‖(Q + Qᵀ)/2‖_F (which is ≤ 2·tr Q when Q is positive
    semi-definite, the trace bound), and ‖∇²Ω‖₂ = 2."""
    symmetric = (Q + Q.transpose(1, 2)) / 2
    return (2 * torch.linalg.matrix_norm(symmetric, ord="fro") + 2 * lam).unsqueeze(1)


def _gradient(Q: torch.Tensor, w: torch.Tensor, achieved, lam: float) -> torch.Tensor:
    with torch.enable_grad():
        w = w.detach().requires_grad_(True)
        objective = min_norm_objective(Q, w, achieved, lam).sum()
        (grad,) = torch.autograd.grad(objective, w)
    return grad


def _softmax_gd(Q, achieved, lam, steps, lr, init):
    """Algorithm 1, lines 6–10, line by line: α ← α − η_w ∇_α L(α), L(α) = σ(α)ᵀQσ(α) + λΩ(σ(α)),
    with autograd for ∇_α. α starts at log(init) (α₀ = 1/m for every task when init is None,
    Algorithm 1 line 2, i.e. uniform weights; softmax forgets a constant added to α)."""
    if init is None:
        alpha = torch.full_like(Q[:, :, 0], 1.0 / Q.shape[1])
    else:
        alpha = torch.log(torch.clamp(init, min=0))
    for _ in range(steps):
        with torch.enable_grad():
            alpha = alpha.detach().requires_grad_(True)
            loss = min_norm_objective(Q, torch.softmax(alpha, dim=1), achieved, lam).sum()
            (grad,) = torch.autograd.grad(loss, alpha)
        alpha = alpha.detach() - lr * grad
    return torch.softmax(alpha, dim=1)


def _projected_gradient(Q, achieved, lam, steps, init, accelerated: bool):
    """Projected gradient with step 1/L; accelerated: FISTA (Beck & Teboulle 2009), returning
    the last iterate. A row whose L is 0 (Q = 0 and λ = 0: every w is optimal) does not move."""
    L = _lipschitz(Q, lam)
    step = torch.where(L > 0, 1 / L, torch.zeros_like(L))
    w = simplex_project(init) if init is not None else torch.full_like(Q[:, :, 0], 1.0 / Q.shape[1])
    y, t = w, 1.0
    for _ in range(steps):
        point = y if accelerated else w
        w_next = simplex_project(point - step * _gradient(Q, point, achieved, lam))
        if accelerated:
            t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
            y = w_next + ((t - 1) / t_next) * (w_next - w)
            t = t_next
        w = w_next
    return w


def _exact2(Q, achieved, lam):
    """m = 2: with w = (a, 1 − a) the objective is a quadratic in a; its minimiser over [0, 1]
    is the clamped vertex, or an end point. Naively: the best of the three candidates."""
    def objective(a):
        w = torch.stack([a, 1 - a], dim=1)
        return min_norm_objective(Q, w, achieved, lam)

    zero, half, one = (torch.full_like(Q[:, 0, 0], value) for value in (0.0, 0.5, 1.0))
    f0, fh, f1 = objective(zero), objective(half), objective(one)
    curvature = 2 * f0 - 4 * fh + 2 * f1  # F(a) = A a² + B a + F(0)
    slope = -3 * f0 + 4 * fh - f1
    vertex = torch.where(curvature > 0, torch.clamp(-slope / (2 * curvature), 0, 1), zero)
    candidates = torch.stack([zero, one, vertex], dim=1)
    values = torch.stack([f0, f1, objective(vertex)], dim=1)
    a = candidates.gather(1, values.argmin(dim=1, keepdim=True)).squeeze(1)
    return torch.stack([a, 1 - a], dim=1)


def min_norm_weights(Q: torch.Tensor, achieved=None, lam: float = 0.0, solver: str = "softmax-gd",
                     steps=None, lr=None, init=None):
    """``w* = argmin_{w ∈ Δ_m} wᵀQw + λ·Ω(w)`` per sample, Q [B, m, m]; returns (w [B, m],
    objective [B]). ``solver``: ``softmax-gd`` (the paper's, ``steps`` = 10, ``lr`` = 0.005),
    ``pgd`` / ``apgd`` (projected / accelerated projected gradient with step 1/L, ``steps`` = 10)
    or ``exact2`` (m = 2, closed form). ``init`` [B, m]: the starting weights (warm start), uniform
    when None."""
    acc = _accumulate(Q)
    init_acc = None if init is None else _accumulate(init)
    steps = SOFTMAX_GD_STEPS if steps is None else steps
    if solver == "softmax-gd":
        w = _softmax_gd(acc, achieved, lam, steps, SOFTMAX_GD_LR if lr is None else lr, init_acc)
    elif solver in ("pgd", "apgd"):
        w = _projected_gradient(acc, achieved, lam, steps, init_acc, accelerated=solver == "apgd")
    elif solver == "exact2":
        w = _exact2(acc, achieved, lam)
    else:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    return w.to(Q.dtype), min_norm_objective(acc, w, achieved, lam).to(Q.dtype)


def min_norm_exact(Q: torch.Tensor, achieved=None, lam: float = 0.0) -> torch.Tensor:
    """The exact minimum of ``wᵀQw + λΩ(w)`` over the simplex per row [B], in float64, by
    enumerating every support S (2^m − 1 of them: a test oracle for m ≤ 8): on a support the
    problem is an equality-constrained quadratic, solved from its KKT system; a feasible solution
    (w_S ≥ 0) of smallest objective is the minimum, since the objective is convex for positive
    semi-definite Q. Returns the minimal objective [B] (float64)."""
    Q = Q.to(torch.float64)
    batch, m = Q.shape[0], Q.shape[1]
    if achieved is None:
        achieved = torch.zeros(batch, m, dtype=torch.bool, device=Q.device)
    unachieved = _effective_mask(~achieved, Q[:, :, 0])
    free = unachieved.sum(dim=1).to(torch.float64)
    u = unachieved.to(torch.float64)
    # Objective = wᵀPw + cᵀw + const with P = Q_sym + λ(diag(achieved) + u uᵀ/(m − s)).
    P = (Q + Q.transpose(1, 2)) / 2 + lam * (torch.diag_embed((~unachieved).to(torch.float64))
                                             + u.unsqueeze(2) * u.unsqueeze(1) / free.view(-1, 1, 1))
    c = -2 * lam * u / free.unsqueeze(1)
    best = torch.full((batch,), math.inf, dtype=torch.float64, device=Q.device)
    for bits in range(1, 2 ** m):
        support = [i for i in range(m) if bits >> i & 1]
        n = len(support)
        index = torch.tensor(support, device=Q.device)
        kkt = torch.zeros(batch, n + 1, n + 1, dtype=torch.float64, device=Q.device)
        kkt[:, :n, :n] = 2 * P[:, index][:, :, index]
        kkt[:, :n, n] = -1
        kkt[:, n, :n] = 1
        rhs = torch.zeros(batch, n + 1, dtype=torch.float64, device=Q.device)
        rhs[:, :n] = -c[:, index]
        rhs[:, n] = 1
        solution = torch.linalg.lstsq(kkt, rhs.unsqueeze(2)).solution.squeeze(2)
        w = torch.zeros(batch, m, dtype=torch.float64, device=Q.device)
        w[:, index] = solution[:, :n]
        feasible = (solution[:, :n] >= -1e-12).all(dim=1) & torch.isfinite(solution).all(dim=1)
        w = torch.clamp(w, min=0)
        w = w / w.sum(dim=1, keepdim=True)
        value = min_norm_objective(Q, w, achieved, lam)
        best = torch.where(feasible & (value < best), value, best)
    return best
