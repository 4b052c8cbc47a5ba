"""Triton kernels of the simplex family: the simplex projection, Ω and the min-norm solvers.

One function per op, named like it, with the arguments and outputs of its C++ schema
(csrc/ops.cpp): `simplex_project(v, mask)`, `simplex_distance_sq(w, achieved, grad_w)` and
`min_norm_weights(Q, achieved, init, lam, solver, steps, lr)`; fastadv/ops/simplex.py registers
each as the custom op `fastadv::<name>_triton` (fastadv.ops._registry.TritonOps). The math is
the oracle's (fastadv/reference/simplex.py), iterate for iterate, accumulated in float32
(float64 for float64 inputs) and stored in the input dtype.

Design: a program owns BLOCK_B whole rows, m padded to M, the next power of two (the padding
coordinates are never allowed and carry no weight). `min_norm_weights` keeps a row's Q
([BLOCK_B, M, M], its transpose loaded alongside) and w in registers and runs every one of its
K steps in the one launch. The projection is sort-free and exact:
τ = max_i (Σ_{j: u_j ≥ u_i} u_j − 1) / #{j: u_j ≥ u_i} over the allowed i, w = max(u − τ, 0),
from a [BLOCK_B, M, M] comparison. It is the sort-based rule's τ: with u sorted decreasingly
and f(k) = (Σ_{j ≤ k} u_j − 1)/k, f(k) − f(k − 1) = (u_k − f(k − 1))/k, so f rises up to the
sort rule's ρ and falls after it, and is monotone across a run of tied entries, so the maximum
over the ends of the runs (what counting every tied entry gives) is f(ρ) = τ. u is the row less
its largest allowed entry, which keeps the sums exact when an entry is huge (±1e30).

A NaN or an infinity anywhere in a row makes that row's outputs NaN (every output of the row:
the weights, Ω and its gradient, the objective) and no other row's. Rows have 1 to MAX_TASKS
coordinates (fastadv.ops.simplex.MAX_TASKS).
"""
import torch
import triton
import triton.language as tl

from .common import divide as _divide, row_max as _row_max, row_sum as _row_sum, sqrt as _sqrt
from ..ops.simplex import MAX_TASKS as _MAX_TASKS

# Elements of the largest tile a program holds, [BLOCK_B, M, M]: 32 rows of Q at m = 4, 8 at
# m = 8, one row from m = 32 on (1024). Small programs, since a row's K steps are a chain of
# dependent reductions: 4096 rows of m = 4 make 128 programs, a wave of an H100's 132 SMs.
# Not tuned on a GPU yet.
_TILE = 512
# The schema's solver codes (the order of fastadv.ops.simplex.SOLVERS), constexpr for the kernel.
_SOFTMAX_GD, _PGD, _APGD, _EXACT2 = (tl.constexpr(code) for code in range(4))


# ----------------------------------------------------------------------------- helpers
@triton.jit
def _rows(B, m, BLOCK_B: tl.constexpr, M: tl.constexpr):
    """The program's rows ([BLOCK_B, 1]), coordinates ([1, M]), row-major offsets into [B, m]
    and the masks of the coordinates in the row and of the elements in the tensor."""
    rows = (tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B))[:, None]
    cols = tl.arange(0, M)[None, :]
    in_row = cols < m
    return rows, cols, rows.to(tl.int64) * m + cols, in_row, (rows < B) & in_row


@triton.jit
def _non_finite_rows(x, mask):
    """[BLOCK_B, 1]: whether a row of x holds a NaN or an infinity where mask is set (NaN fails
    the comparison, so it counts)."""
    return _row_max(tl.where(mask & ~(tl.abs(x) < float("inf")), 1, 0)) > 0


@triton.jit
def _effective(flags, in_row):
    """The flagged coordinates, or every coordinate of a row with none flagged."""
    return in_row & (flags | (_row_max(tl.where(flags, 1, 0)) == 0))


@triton.jit
def _project(v, allowed, ACC: tl.constexpr):
    """The projection of each row of v onto the simplex over its allowed coordinates (0 on the
    others), by the sort-free rule of the module docstring. Every row has an allowed coordinate."""
    top = _row_max(tl.where(allowed, v, float("-inf")))
    u = tl.where(allowed, v - top, 0.0)
    at_least = allowed[:, None, :] & (u[:, None, :] >= u[:, :, None])  # [b, i, j]: u_j ≥ u_i
    above = tl.sum(tl.where(at_least, u[:, None, :], 0.0), axis=2)
    count = tl.sum(at_least.to(ACC), axis=2)
    candidate = tl.where(allowed, _divide(above - 1.0, tl.where(allowed, count, 1.0), ACC), float("-inf"))
    tau = _row_max(candidate)
    return tl.where(allowed, tl.maximum(u - tau, 0.0), 0.0)


@triton.jit
def _omega(w, on_achieved, on_unachieved, ACC: tl.constexpr):
    """Ω(w) per row ([BLOCK_B, 1]) and its gradient with respect to w."""
    free = _row_sum(on_unachieved.to(ACC))
    deficit = 1.0 - _row_sum(tl.where(on_unachieved, w, 0.0))
    omega = _row_sum(tl.where(on_achieved, w * w, 0.0)) + _divide(deficit * deficit, free, ACC)
    gradient = tl.where(on_achieved, 2.0 * w, tl.where(on_unachieved, _divide(-2.0 * deficit, free, ACC), 0.0))
    return omega, gradient


@triton.jit
def _quadratic(Q, w):
    """wᵀQw per row ([BLOCK_B, 1])."""
    return _row_sum(w * tl.sum(Q * w[:, None, :], axis=2))


@triton.jit
def _objective(Q, w, lam, on_achieved, on_unachieved, ACC: tl.constexpr):
    omega, _ = _omega(w, on_achieved, on_unachieved, ACC)
    return _quadratic(Q, w) + lam * omega


@triton.jit
def _objective_gradient(S, w, lam, on_achieved, on_unachieved, ACC: tl.constexpr):
    """∇(wᵀQw + λΩ(w)) = (Q + Qᵀ)w + λ∇Ω(w), S = Q + Qᵀ."""
    _, omega_gradient = _omega(w, on_achieved, on_unachieved, ACC)
    return tl.sum(S * w[:, None, :], axis=2) + lam * omega_gradient


@triton.jit
def _softmax(alpha, in_row, ACC: tl.constexpr):
    e = tl.where(in_row, tl.exp(alpha - _row_max(tl.where(in_row, alpha, float("-inf")))), 0.0)
    return _divide(e, _row_sum(e), ACC)


# ----------------------------------------------------------------------------- kernels
@triton.jit
def _simplex_project_kernel(v_ptr, mask_ptr, out_ptr, B, m,
                            ACC: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK_B: tl.constexpr, M: tl.constexpr):
    rows, cols, offsets, in_row, mask = _rows(B, m, BLOCK_B, M)
    v = tl.load(v_ptr + offsets, mask=mask, other=0.0).to(ACC)
    if HAS_MASK:
        allowed = _effective(tl.load(mask_ptr + offsets, mask=mask, other=0) != 0, in_row)
    else:
        allowed = in_row
    bad = _non_finite_rows(v, in_row)
    w = _project(tl.where(bad, 0.0, v), allowed, ACC)
    tl.store(out_ptr + offsets, tl.where(bad, float("nan"), w), mask=mask)


@triton.jit
def _achievement(achieved_ptr, offsets, mask, in_row, HAS_ACHIEVED: tl.constexpr):
    """The coordinates Ω treats as achieved and as unachieved (every one, in a row with every
    task achieved)."""
    if HAS_ACHIEVED:
        unachieved = _effective(tl.load(achieved_ptr + offsets, mask=mask, other=1) == 0, in_row)
    else:
        unachieved = in_row
    return in_row & ~unachieved, unachieved


@triton.jit
def _simplex_distance_sq_kernel(w_ptr, achieved_ptr, omega_ptr, grad_ptr, B, m,
                                ACC: tl.constexpr, HAS_ACHIEVED: tl.constexpr, GRAD_W: tl.constexpr,
                                BLOCK_B: tl.constexpr, M: tl.constexpr):
    rows, cols, offsets, in_row, mask = _rows(B, m, BLOCK_B, M)
    w = tl.load(w_ptr + offsets, mask=mask, other=0.0).to(ACC)
    on_achieved, on_unachieved = _achievement(achieved_ptr, offsets, mask, in_row, HAS_ACHIEVED)
    bad = _non_finite_rows(w, in_row)
    omega, gradient = _omega(tl.where(bad, 0.0, w), on_achieved, on_unachieved, ACC)
    tl.store(omega_ptr + rows, tl.where(bad, float("nan"), omega), mask=rows < B)
    if GRAD_W:
        tl.store(grad_ptr + offsets, tl.where(bad, float("nan"), gradient), mask=mask)


@triton.jit
def _min_norm_weights_kernel(Q_ptr, achieved_ptr, init_ptr, w_ptr, objective_ptr, B, m,
                             lam_value: tl.float64, lr_value: tl.float64, steps,
                             ACC: tl.constexpr, SOLVER: tl.constexpr, HAS_ACHIEVED: tl.constexpr,
                             HAS_INIT: tl.constexpr, BLOCK_B: tl.constexpr, M: tl.constexpr):
    rows, cols, offsets, in_row, mask = _rows(B, m, BLOCK_B, M)
    # Q [b, i, j] and Qᵀ, both row-major [BLOCK_B, M, M] tiles.
    i = tl.arange(0, M)[None, :, None]
    j = tl.arange(0, M)[None, None, :]
    square = (rows[:, :, None] < B) & (i < m) & (j < m)
    matrix = rows[:, :, None].to(tl.int64) * m * m
    Q = tl.load(Q_ptr + matrix + i * m + j, mask=square, other=0.0).to(ACC)
    S = Q + tl.load(Q_ptr + matrix + j * m + i, mask=square, other=0.0).to(ACC)
    bad = tl.max(tl.max(tl.where(square & ~(tl.abs(Q) < float("inf")), 1, 0), axis=2), axis=1, keep_dims=True) > 0
    Q = tl.where(bad[:, :, None], 0.0, Q)
    S = tl.where(bad[:, :, None], 0.0, S)
    on_achieved, on_unachieved = _achievement(achieved_ptr, offsets, mask, in_row, HAS_ACHIEVED)
    lam = tl.full((), lam_value, ACC)
    # 1/m on the row's coordinates, as a [BLOCK_B, M] tile (what the loops carry).
    uniform = tl.where(in_row, _divide(tl.full((BLOCK_B, M), 1.0, ACC), _row_sum(in_row.to(ACC)), ACC), 0.0)
    if HAS_INIT and SOLVER != _EXACT2:
        init = tl.load(init_ptr + offsets, mask=mask, other=0.0).to(ACC)
        bad = bad | _non_finite_rows(init, in_row)
        init = tl.where(bad, 0.0, init)

    if SOLVER == _SOFTMAX_GD:
        # Algorithm 1, lines 6–10: α ← α − η∇_α L with ∇_α L = σ ⊙ (g − ⟨σ, g⟩), g = ∇L(σ(α)).
        lr = tl.full((), lr_value, ACC)
        if HAS_INIT:
            positive = in_row & (init > 0)
            bad = bad | (_row_max(tl.where(positive, 1, 0)) == 0)  # log 0 everywhere: softmax is 0/0
            alpha = tl.where(positive, tl.log(tl.where(positive, init, 1.0)), float("-inf"))
            alpha = tl.where(bad, 0.0, alpha)
        else:
            alpha = uniform
        for _ in range(steps):
            sigma = _softmax(alpha, in_row, ACC)
            g = _objective_gradient(S, sigma, lam, on_achieved, on_unachieved, ACC)
            # σ_i = 0 (α_i = −inf, a zero of init) keeps α_i at −inf.
            alpha = alpha - lr * tl.where(sigma > 0, sigma * (g - _row_sum(sigma * g)), 0.0)
        w = _softmax(alpha, in_row, ACC)
    elif SOLVER == _EXACT2:
        # m = 2, w = (a, 1 − a): the best of a = 0, a = 1 and the clamped vertex of the quadratic
        # F(a) = A a² + B a + F(0), A and B from F(0), F(1/2), F(1); on a tie, the first of them.
        first = (cols == 0).to(ACC)
        f0 = _objective(Q, 1.0 - first, lam, on_achieved, on_unachieved, ACC)
        f_half = _objective(Q, tl.where(in_row, 0.5, 0.0), lam, on_achieved, on_unachieved, ACC)
        f1 = _objective(Q, first, lam, on_achieved, on_unachieved, ACC)
        curvature = 2.0 * f0 - 4.0 * f_half + 2.0 * f1
        slope = -3.0 * f0 + 4.0 * f_half - f1
        convex = curvature > 0
        vertex = tl.where(convex, _divide(-slope, 2.0 * tl.where(convex, curvature, 1.0), ACC), 0.0)
        vertex = tl.minimum(tl.maximum(vertex, 0.0), 1.0)
        f_vertex = _objective(Q, tl.where(cols == 0, vertex, 1.0 - vertex), lam, on_achieved, on_unachieved, ACC)
        a = tl.where(f1 < f0, 1.0, 0.0)
        a = tl.where(f_vertex < tl.minimum(f0, f1), vertex, a)
        w = tl.where(cols == 0, a, 1.0 - a)
    else:
        # Projected gradient with step 1/L, L = 2‖(Q + Qᵀ)/2‖_F + 2λ (no move where L = 0);
        # accelerated: FISTA (Beck & Teboulle 2009), the last iterate.
        half = 0.5 * S
        L = 2.0 * _sqrt(_row_sum(tl.sum(half * half, axis=2)), ACC) + 2.0 * lam
        step = tl.where(L > 0, _divide(tl.full((), 1.0, ACC), tl.where(L > 0, L, 1.0), ACC), 0.0)
        if HAS_INIT:
            w = _project(init, in_row, ACC)
        else:
            w = uniform
        y = w
        t = tl.full((), 1.0, ACC)
        for _ in range(steps):
            if SOLVER == _APGD:
                point = y
            else:
                point = w
            w_next = _project(point - step * _objective_gradient(S, point, lam, on_achieved, on_unachieved, ACC),
                              in_row, ACC)
            if SOLVER == _APGD:
                t_next = 0.5 * (1.0 + _sqrt(1.0 + 4.0 * t * t, ACC))
                y = w_next + _divide(t - 1.0, t_next, ACC) * (w_next - w)
                t = t_next
            w = w_next
    objective = _objective(Q, w, lam, on_achieved, on_unachieved, ACC)
    tl.store(w_ptr + offsets, tl.where(bad, float("nan"), w), mask=mask)
    tl.store(objective_ptr + rows, tl.where(bad, float("nan"), objective), mask=rows < B)


# ----------------------------------------------------------------------------- launchers
def _accumulation(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _blocks(op: str, m: int) -> tuple[int, int]:
    """(BLOCK_B, M) for rows of m coordinates."""
    if not 1 <= m <= _MAX_TASKS:
        raise ValueError(f"{op}: the Triton kernels take rows of 1 to {_MAX_TASKS} coordinates, got m = {m}")
    padded = max(2, triton.next_power_of_2(m))
    return max(1, _TILE // (padded * padded)), padded


def simplex_project(v: torch.Tensor, mask):
    rows, m = v.shape
    out = torch.empty_like(v)
    if rows:
        block_b, padded = _blocks("simplex_project", m)
        _simplex_project_kernel[(triton.cdiv(rows, block_b),)](
            v.contiguous(), None if mask is None else mask.contiguous(), out, rows, m,
            ACC=_accumulation(v.dtype), HAS_MASK=mask is not None, BLOCK_B=block_b, M=padded)
    return out


def simplex_distance_sq(w: torch.Tensor, achieved, grad_w: bool):
    rows, m = w.shape
    omega = w.new_empty(rows)
    gradient = torch.empty_like(w) if grad_w else w.new_empty(0)
    if rows:
        block_b, padded = _blocks("simplex_distance_sq", m)
        _simplex_distance_sq_kernel[(triton.cdiv(rows, block_b),)](
            w.contiguous(), None if achieved is None else achieved.contiguous(), omega, gradient, rows, m,
            ACC=_accumulation(w.dtype), HAS_ACHIEVED=achieved is not None, GRAD_W=grad_w, BLOCK_B=block_b,
            M=padded)
    return omega, gradient


def min_norm_weights(Q: torch.Tensor, achieved, init, lam: float, solver: int, steps: int, lr: float):
    rows, m = Q.shape[0], Q.shape[1]
    if solver not in range(4):
        raise ValueError(f"min_norm_weights: solver must be a code 0 to 3 (softmax-gd, pgd, apgd, exact2), "
                         f"got {solver}")
    if solver == _EXACT2.value and m != 2:
        raise ValueError(f"min_norm_weights: solver 'exact2' needs m = 2 tasks, got m = {m}")
    if steps < 1:
        raise ValueError(f"min_norm_weights: steps must be at least 1, got {steps}")
    w = Q.new_empty(rows, m)
    objective = Q.new_empty(rows)
    if rows:
        block_b, padded = _blocks("min_norm_weights", m)
        _min_norm_weights_kernel[(triton.cdiv(rows, block_b),)](
            Q.contiguous(), None if achieved is None else achieved.contiguous(),
            None if init is None else init.contiguous(), w, objective, rows, m,
            float(lam), float(lr), int(steps),
            ACC=_accumulation(Q.dtype), SOLVER=int(solver), HAS_ACHIEVED=achieved is not None,
            HAS_INIT=init is not None, BLOCK_B=block_b, M=padded)
    return w, objective
