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

Rows longer than MAX_TASKS (kernels/limits.py's SIMPLEX_MAX_TASKS = 32; `simplex_project` and
`simplex_distance_sq` take any m, `min_norm_weights` 1 to MAX_TASKS tasks) take the wide path: a
program per row, the row read in chunks of up to _WIDE_BLOCK columns in each pass; the same
algorithm as the C++ kernels' (project_wide_row in csrc/include/fastadv/simplex.h): the row's
maximum, then a search for τ by Newton steps t + (e(t) − 1)/c(t) from a lower bound t, safeguarded
by bisection, c(t) the count of the u_j > t and e(t) = Σ_{u_j > t} (u_j − t) (small terms: the sum
of the u_j themselves would be rounded by about eps·m·max|u|), both evaluated at two thresholds a
pass, until the Newton step leaves the count where it was: then τ is the Newton step from that
point, (Σ_S u − 1)/|S| over the support S it found, the sort rule's τ; Ω takes one pass for its
sums and one for its gradient.

A NaN or an infinity anywhere in a row makes that row's outputs NaN (every output of the row:
the weights, Ω and its gradient, the objective) and no other row's.
"""
import torch
import triton
import triton.language as tl

from .common import divide as _divide, row_max as _row_max, row_sum as _row_sum, sqrt as _sqrt
from .limits import SIMPLEX_MAX_TASKS as _MAX_TASKS

# Elements of the largest tile a program holds, [BLOCK_B, M, M]: 32 rows of Q at m = 4, 8 at
# m = 8, one row from m = 32 on (1024). Small programs, since a row's K steps are a chain of
# dependent reductions: 4096 rows of m = 4 make 128 programs, a wave of an H100's 132 SMs.
# Not tuned on a GPU yet.
_TILE = 512
# The wide path's chunk of a row (rows of more than MAX_TASKS coordinates; not tuned on a GPU yet).
_WIDE_BLOCK = 1024
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


# ----------------------------------------------------------------------------- the wide path
@triton.jit
def _wide_allowed(mask_ptr, base, idx, m, masked, HAS_MASK: tl.constexpr):
    """The allowed coordinates among idx (inside the row; where ``masked``, those of the mask)."""
    allowed = idx < m
    if HAS_MASK:
        flags = tl.load(mask_ptr + base + idx, mask=allowed, other=0) != 0
        allowed = allowed & (flags | ~masked)
    return allowed


@triton.jit
def _wide_above(v_ptr, mask_ptr, base, m, shift, masked, first, second,
                ACC: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK: tl.constexpr):
    """c(t), the count of the allowed u = v − shift above t, and e(t) = Σ_{u > t} (u − t), at each of
    two thresholds: one pass."""
    cols = tl.arange(0, BLOCK)
    count_a = tl.zeros([BLOCK], tl.int32)
    count_b = tl.zeros([BLOCK], tl.int32)
    sum_a = tl.zeros([BLOCK], ACC)
    sum_b = tl.zeros([BLOCK], ACC)
    for start in range(0, m, BLOCK):
        idx = start + cols
        keep = _wide_allowed(mask_ptr, base, idx, m, masked, HAS_MASK)
        u = tl.load(v_ptr + base + idx, mask=keep, other=0.0).to(ACC) - shift
        a = keep & (u > first)
        b = keep & (u > second)
        count_a += a.to(tl.int32)
        count_b += b.to(tl.int32)
        sum_a += tl.where(a, u - first, 0.0)
        sum_b += tl.where(b, u - second, 0.0)
    return tl.sum(count_a, axis=0), tl.sum(sum_a, axis=0), tl.sum(count_b, axis=0), tl.sum(sum_b, axis=0)


@triton.jit
def _simplex_project_wide_kernel(v_ptr, mask_ptr, out_ptr, m,
                                 ACC: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK: tl.constexpr):
    base = tl.program_id(0).to(tl.int64) * m
    cols = tl.arange(0, BLOCK)
    # Pass 1: non-finite values, whether the mask allows any coordinate, the largest (allowed) value.
    bad = tl.zeros([BLOCK], tl.int32)
    allowed = tl.zeros([BLOCK], tl.int32)
    top = tl.full([BLOCK], float("-inf"), ACC)
    top_allowed = tl.full([BLOCK], float("-inf"), ACC)
    for start in range(0, m, BLOCK):
        idx = start + cols
        inside = idx < m
        x = tl.load(v_ptr + base + idx, mask=inside, other=0.0).to(ACC)
        bad += (inside & ~(tl.abs(x) < float("inf"))).to(tl.int32)
        top = tl.maximum(top, tl.where(inside, x, float("-inf")))
        if HAS_MASK:
            flags = inside & (tl.load(mask_ptr + base + idx, mask=inside, other=0) != 0)
            allowed += flags.to(tl.int32)
            top_allowed = tl.maximum(top_allowed, tl.where(flags, x, float("-inf")))
    is_bad = tl.sum(bad, axis=0) > 0
    masked = tl.sum(allowed, axis=0) > 0  # a mask that allows no coordinate counts every one
    shift = tl.where(masked, tl.max(top_allowed, axis=0), tl.max(top, axis=0))
    shift = tl.where(is_bad, 0.0, shift)
    # The search for τ (module docstring): lo ≤ τ with its count and sum, hi > τ, two thresholds a pass.
    lo = tl.full((), -1.0, ACC)
    hi = tl.full((), 0.0, ACC)
    mid = tl.full((), -0.5, ACC)
    lo_count, lo_excess, mid_count, mid_excess = _wide_above(v_ptr, mask_ptr, base, m, shift, masked, lo, mid,
                                                             ACC, HAS_MASK, BLOCK)
    tau = tl.full((), 0.0, ACC)  # τ = tau + correction, kept apart (the C++ write_wide_row says why)
    correction = tl.full((), 0.0, ACC)
    searching = ~is_bad
    while searching:
        below = mid_excess >= 1.0  # g(mid) ≥ 0: mid ≤ τ
        better = below & (mid_count < lo_count)
        lo = tl.where(better, mid, lo)
        lo_count = tl.where(better, mid_count, lo_count)
        lo_excess = tl.where(better, mid_excess, lo_excess)
        hi = tl.where(below, hi, tl.minimum(hi, mid))
        newton = lo + _divide(lo_excess - 1.0, lo_count.to(ACC), ACC)
        mid = tl.where(newton < hi, 0.5 * (newton + hi), newton)
        newton_count, newton_excess, mid_count, mid_excess = _wide_above(
            v_ptr, mask_ptr, base, m, shift, masked, newton, mid, ACC, HAS_MASK, BLOCK)
        done = newton_count >= lo_count
        # The support is found: τ is the Newton step from `newton` itself, a small correction (the
        # step from a distant lower bound cancels: lo = −1, every entry tied at 0).
        tau = tl.where(done, newton, tau)
        correction = tl.where(done, _divide(newton_excess - 1.0, newton_count.to(ACC), ACC), correction)
        lo = tl.where(done, lo, newton)
        lo_count = tl.where(done, lo_count, newton_count)
        lo_excess = tl.where(done, lo_excess, newton_excess)
        searching = ~done
    for start in range(0, m, BLOCK):
        idx = start + cols
        keep = _wide_allowed(mask_ptr, base, idx, m, masked, HAS_MASK)
        u = tl.load(v_ptr + base + idx, mask=keep, other=0.0).to(ACC) - shift
        w = tl.where(keep, tl.maximum((u - tau) - correction, 0.0), 0.0)
        tl.store(out_ptr + base + idx, tl.where(is_bad, float("nan"), w), mask=idx < m)


@triton.jit
def _simplex_distance_sq_wide_kernel(w_ptr, achieved_ptr, omega_ptr, grad_ptr, m,
                                     ACC: tl.constexpr, HAS_ACHIEVED: tl.constexpr, GRAD_W: tl.constexpr,
                                     BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = row * m
    cols = tl.arange(0, BLOCK)
    bad = tl.zeros([BLOCK], tl.int32)
    open_count = tl.zeros([BLOCK], tl.int32)
    achieved_sq = tl.zeros([BLOCK], ACC)
    open_sum = tl.zeros([BLOCK], ACC)
    total = tl.zeros([BLOCK], ACC)
    for start in range(0, m, BLOCK):
        idx = start + cols
        inside = idx < m
        x = tl.load(w_ptr + base + idx, mask=inside, other=0.0).to(ACC)
        if HAS_ACHIEVED:
            reached = inside & (tl.load(achieved_ptr + base + idx, mask=inside, other=0) != 0)
        else:
            reached = idx < 0
        bad += (inside & ~(tl.abs(x) < float("inf"))).to(tl.int32)
        open_count += (inside & ~reached).to(tl.int32)
        achieved_sq += tl.where(reached, x * x, 0.0)
        open_sum += tl.where(inside & ~reached, x, 0.0)
        total += x
    is_bad = tl.sum(bad, axis=0) > 0
    open_total = tl.sum(open_count, axis=0)
    none_open = open_total == 0  # every task achieved: every task counts as unachieved
    inverse_free = _divide(tl.full((), 1.0, ACC), tl.where(none_open, m, open_total).to(ACC), ACC)
    gap = 1.0 - tl.where(none_open, tl.sum(total, axis=0), tl.sum(open_sum, axis=0))
    omega = tl.where(none_open, 0.0, tl.sum(achieved_sq, axis=0)) + gap * gap * inverse_free
    tl.store(omega_ptr + row, tl.where(is_bad, float("nan"), omega))
    if GRAD_W:
        open_gradient = -2.0 * gap * inverse_free
        for start in range(0, m, BLOCK):
            idx = start + cols
            inside = idx < m
            x = tl.load(w_ptr + base + idx, mask=inside, other=0.0).to(ACC)
            if HAS_ACHIEVED:
                reached = inside & (tl.load(achieved_ptr + base + idx, mask=inside, other=0) != 0) & ~none_open
            else:
                reached = idx < 0
            gradient = tl.where(reached, 2.0 * x, open_gradient)
            tl.store(grad_ptr + base + idx, tl.where(is_bad, float("nan"), gradient), mask=inside)


# ----------------------------------------------------------------------------- launchers
def _accumulation(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _blocks(op: str, m: int) -> tuple[int, int]:
    """(BLOCK_B, M) for rows of m ≤ MAX_TASKS coordinates (the register path)."""
    if not 1 <= m <= _MAX_TASKS:
        raise ValueError(f"{op}: m must be 1 to {_MAX_TASKS} tasks (min_norm_weights' limit; simplex_project and "
                         f"simplex_distance_sq take any m), got m = {m}")
    padded = max(2, triton.next_power_of_2(m))
    return max(1, _TILE // (padded * padded)), padded


def _wide_block(m: int) -> int:
    """The wide path's chunk for rows of m > MAX_TASKS coordinates."""
    return min(triton.next_power_of_2(m), _WIDE_BLOCK)


def simplex_project(v: torch.Tensor, mask):
    rows, m = v.shape
    out = torch.empty_like(v)
    if rows and m > _MAX_TASKS:
        _simplex_project_wide_kernel[(rows,)](
            v.contiguous(), None if mask is None else mask.contiguous(), out, m,
            ACC=_accumulation(v.dtype), HAS_MASK=mask is not None, BLOCK=_wide_block(m))
    elif rows:
        block_b, padded = _blocks("simplex_project", m)
        _simplex_project_kernel[(triton.cdiv(rows, block_b),)](
            v.contiguous(), None if mask is None else mask.contiguous(), out, rows, m,
            ACC=_accumulation(v.dtype), HAS_MASK=mask is not None, BLOCK_B=block_b, M=padded)
    return out


def simplex_distance_sq(w: torch.Tensor, achieved, grad_w: bool):
    rows, m = w.shape
    omega = w.new_empty(rows)
    gradient = torch.empty_like(w) if grad_w else w.new_empty(0)
    if rows and m > _MAX_TASKS:
        _simplex_distance_sq_wide_kernel[(rows,)](
            w.contiguous(), None if achieved is None else achieved.contiguous(), omega, gradient, m,
            ACC=_accumulation(w.dtype), HAS_ACHIEVED=achieved is not None, GRAD_W=grad_w, BLOCK=_wide_block(m))
    elif rows:
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
