"""Triton kernels of the logits family: the fused logit-head losses.

One function per op, named like it, with the arguments and outputs of its C++ schema
(FASTADV_LOGITS_OPS in csrc/include/fastadv/logits.h): `soft_cross_entropy`,
`smoothed_cross_entropy`, `boosted_cross_entropy`, `trades_kl`, `mart_loss`, `margin_sq_hinge`,
`mhuber`, `mhuber_moving_average`, `logit_pairing` and `logit_squeeze`. fastadv/ops/logits.py
registers each as the custom op `fastadv::<name>_triton` (fastadv.ops._registry.TritonOps).
Losses are computed in the accumulation type and then converted or reduced
(`_finish_losses`), as the C++ glue does. The math follows the row algorithms of
csrc/include/fastadv/logits.h, so that the Triton, CUDA C++ and CPU backends agree to rounding.
The member op `masked_gram` and its backward `_masked_gram_backward` ([M, B, C] in,
FASTADV_LOGITS_MEMBER_OPS) are at the end: a program per sample.

Design: a program owns BLOCK_B whole rows (BLOCK_C = the next power of two >= C), so a row
is read once and its max, log-sum-exp, loss and every asked-for gradient are computed in one
launch (Liger-Kernel's habit: the backward only scales the saved gradient). Rows are limited
to 16384 columns (kernels/limits.py, LOGITS_MAX_COLUMNS; `auto` gives wider ones to the CUDA C++
kernels): compiled for sm_90, a float32 row of up to 8192 fits in registers in every
kernel, and the heaviest kernels spill a little beyond that. Wider rows raise a ValueError
naming C rather than looping over chunks with an online max. Five kernels serve the ten
ops, with constexpr switches where one op is another plus a term: cross-entropy (soft
targets or smoothed labels); boosted cross-entropy and KL (MART is both); the margin squared
hinge; mhuber (of the inputs or of their moving averages); and the squared norm (logit
pairing, logit squeezing). Every per-row value is a [BLOCK_B, 1] column, so that it
broadcasts against the [BLOCK_B, BLOCK_C] tile.
"""
import math

import torch
import triton
import triton.language as tl

from .common import divide as _divide, row_max as _row_max, row_sum as _row_sum, sqrt as _sqrt
from .limits import LOGITS_MAX_COLUMNS as _MAX_COLUMNS
# At least 2048 elements per program (short rows are batched, which also keeps the
# interpreter's program count low) and 8 per thread up to 32 warps: with 16 per thread,
# mart_loss already spills at 8192 columns (float32, sm_90).
_TILE = 2048
_ELEMENTS_PER_THREAD = 8

_HALF_PI = tl.constexpr(math.pi / 2)
_MASKED_GRAM_EPS = tl.constexpr(1e-12)  # u / max(‖u‖, eps), torch.nn.functional.normalize's
# A member op's program holds [BLOCK_M, BLOCK_M, BLOCK_C] products at a time.
_MEMBER_TILE = 4096
_BOOSTED_FLOOR = tl.constexpr(1e-4)  # MART's code clamps 1 − max_{k≠y} p_k at 1e-4


# ----------------------------------------------------------------------------- row helpers
@triton.jit
def _tile(B, C, BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr):
    """The program's rows ([BLOCK_B, 1]), columns ([1, BLOCK_C]), flat offsets, and masks."""
    rows = (tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B))[:, None]
    cols = tl.arange(0, BLOCK_C)[None, :]
    in_row = cols < C
    return rows, cols, rows.to(tl.int64) * C + cols, in_row, (rows < B) & in_row


@triton.jit
def _load(ptr, offsets, mask, ACC: tl.constexpr):
    # Padding reads 0: finite everywhere and neutral in every sum (maxima mask it out).
    return tl.load(ptr + offsets, mask=mask, other=0.0).to(ACC)




@triton.jit
def _softmax(z, in_row):
    """Each row's max m, e = exp(z − m) (0 on the padding) and Σ e (row_logsumexp)."""
    m = _row_max(tl.where(in_row, z, float("-inf")))
    e = tl.where(in_row, tl.exp(z - m), 0.0)
    return m, e, _row_sum(e)


@triton.jit
def _log_softmax(z, in_row):
    """log p and p of each row; p is 0 on the padding, log p finite there."""
    m, e, total = _softmax(z, in_row)
    # (z − m) − log Σ e rather than logits.h's z − (m + log Σ e): the same to rounding, without
    # the rounding of m + log Σ e, which costs digits of log p near 0.
    return (z - m) - tl.log(total), e / total


@triton.jit
def _boosted_cross_entropy(z, is_label, in_row, ACC: tl.constexpr):
    """MART's BCE of each row and its gradient (labelled_row_stats, boosted_term and
    boosted_gradient of logits.h)."""
    m, e, total = _softmax(z, in_row)
    p = e / total
    others = in_row & ~is_label
    other_max = _row_max(tl.where(others, z, float("-inf")))
    in_max = others & (z == other_max)
    ties = _row_sum(in_max.to(ACC))
    e_other = tl.exp(other_max - m)
    # Σe·(1 − o), o = max_{k≠y} p_k, summed from the classes other than one at the max rather
    # than subtracted from 1, which cancels when o is close to 1 (a confidently wrong prediction).
    rest_total = _row_sum(tl.where(in_max, 0.0, e)) + (ties - 1.0) * e_other
    rest = rest_total / total
    floor = tl.full((), _BOOSTED_FLOOR, ACC)
    clamped = ~(rest > floor)  # NaN counts as clamped, as in logits.h
    loss = tl.log(total) - _row_sum(tl.where(is_label, z - m, 0.0)) - tl.log(tl.where(clamped, floor, rest))
    # o / (1 − o), and 0 where the clamp makes the log constant. The selects keep discarded
    # quotients finite (the interpreter warns on a division by zero); ties >= 1 where in_max.
    coefficient = tl.where(clamped, 0.0, e_other / tl.where(clamped, 1.0, rest_total))
    # At a single maximum 1 − p_j = 1 − o is `rest`, again without the cancellation; ties share.
    share = tl.where(ties == 1.0, rest, 1.0 / tl.maximum(ties, 1.0) - p)
    return loss, p - is_label.to(ACC) + coefficient * tl.where(in_max, share, -p)


# sin t and 1 − cos t for |t| <= π/2, mhuber's inner branch. In float32, logits.h's Taylor
# polynomials (errors below 6e-8 and 7e-9): the C++ kernels' rounding, and no range reduction,
# whose slow path in libdevice's sinf costs a local-memory frame and, for wide rows, spills.
# 1 − cos t is evaluated without the cancellation of computing cos t first.
@triton.jit
def _sin_half_period(t, ACC: tl.constexpr):
    if ACC == tl.float32:
        t2 = t * t
        poly = -1.0 / 39916800.0
        poly = poly * t2 + 1.0 / 362880.0
        poly = poly * t2 - 1.0 / 5040.0
        poly = poly * t2 + 1.0 / 120.0
        poly = poly * t2 - 1.0 / 6.0
        poly = poly * t2 + 1.0
        return poly * t
    else:
        return tl.sin(t)


@triton.jit
def _one_minus_cos_half_period(t, ACC: tl.constexpr):
    if ACC == tl.float32:
        t2 = t * t
        poly = 1.0 / 479001600.0
        poly = poly * t2 - 1.0 / 3628800.0
        poly = poly * t2 + 1.0 / 40320.0
        poly = poly * t2 - 1.0 / 720.0
        poly = poly * t2 + 1.0 / 24.0
        poly = poly * t2 - 0.5
        return -poly * t2
    else:
        half = tl.sin(0.5 * t)
        return 2.0 * half * half


# ----------------------------------------------------------------------------- kernels
@triton.jit
def _cross_entropy_kernel(
    z_ptr, target_ptr, y_ptr, loss_ptr, grad_z_ptr, grad_target_ptr,
    B, C, on_label: tl.float64, off_label: tl.float64,
    ACC: tl.constexpr, SOFT_TARGET: tl.constexpr, GRAD_Z: tl.constexpr, GRAD_TARGET: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """−Σ t log p against soft targets t, or against the smoothed one-hot of y."""
    rows, cols, offsets, in_row, mask = _tile(B, C, BLOCK_B, BLOCK_C)
    log_p, p = _log_softmax(_load(z_ptr, offsets, mask, ACC), in_row)
    if SOFT_TARGET:
        target = _load(target_ptr, offsets, mask, ACC)
        total = _row_sum(target)
    else:
        y = tl.load(y_ptr + rows, mask=rows < B, other=0)
        target = tl.where(cols == y, tl.full((), on_label, ACC), tl.full((), off_label, ACC))
        target = tl.where(in_row, target, 0.0)
        total = 1.0  # (1 − s) + (C − 1)·s/(C − 1): the gradient is p − target, as in logits.h
    tl.store(loss_ptr + rows, -_row_sum(target * log_p), mask=rows < B)
    if GRAD_Z:
        tl.store(grad_z_ptr + offsets, p * total - target, mask=mask)
    if GRAD_TARGET:
        tl.store(grad_target_ptr + offsets, -log_p, mask=mask)


@triton.jit
def _boosted_kl_kernel(
    nat_ptr, adv_ptr, y_ptr, bce_ptr, kl_ptr, grad_bce_adv_ptr, grad_kl_nat_ptr, grad_kl_adv_ptr,
    B, C,
    ACC: tl.constexpr, BCE: tl.constexpr, KL: tl.constexpr, GRAD_NAT: tl.constexpr, GRAD_ADV: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """BCE(p(z_adv), y) (boosted_cross_entropy), KL(p(z_nat) ‖ p(z_adv)) (trades_kl), or both
    with the KL weighted by 1 − p_y(z_nat) (mart_loss)."""
    rows, cols, offsets, in_row, mask = _tile(B, C, BLOCK_B, BLOCK_C)
    z_adv = _load(adv_ptr, offsets, mask, ACC)
    if BCE:
        is_label = cols == tl.load(y_ptr + rows, mask=rows < B, other=0)
        bce, grad_bce = _boosted_cross_entropy(z_adv, is_label, in_row, ACC)
        tl.store(bce_ptr + rows, bce, mask=rows < B)
        if GRAD_ADV:
            tl.store(grad_bce_adv_ptr + offsets, grad_bce, mask=mask)
    if KL:
        log_p, p = _log_softmax(_load(nat_ptr, offsets, mask, ACC), in_row)
        log_q, q = _log_softmax(z_adv, in_row)
        kl = _row_sum(p * (log_p - log_q))
        grad_nat = p * (log_p - log_q - kl)
        grad_adv = q - p
        if BCE:
            # MART's weight is not detached: its gradient −p_y([j = y] − p_j) enters too.
            p_y = _row_sum(tl.where(is_label, p, 0.0))
            weight = 1.0 - p_y
            grad_nat = weight * grad_nat - kl * p_y * (is_label.to(ACC) - p)
            grad_adv = weight * grad_adv
            kl = kl * weight
        tl.store(kl_ptr + rows, kl, mask=rows < B)
        if GRAD_NAT:
            tl.store(grad_kl_nat_ptr + offsets, grad_nat, mask=mask)
        if GRAD_ADV:
            tl.store(grad_kl_adv_ptr + offsets, grad_adv, mask=mask)


@triton.jit
def _margin_sq_hinge_kernel(
    z_ptr, y_ptr, loss_ptr, grad_z_ptr,
    B, C, delta: tl.float64,
    ACC: tl.constexpr, GRAD_Z: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Σ_{j≠y} h_j², h_j = max(0, z_j − z_y + δ)."""
    rows, cols, offsets, in_row, mask = _tile(B, C, BLOCK_B, BLOCK_C)
    z = _load(z_ptr, offsets, mask, ACC)
    is_label = cols == tl.load(y_ptr + rows, mask=rows < B, other=0)
    hinge = z + (tl.full((), delta, ACC) - _row_sum(tl.where(is_label, z, 0.0)))
    # max(0, h) that keeps a NaN hinge NaN, as logits.h's larger(0, h) does.
    hinge = tl.where(in_row & ~is_label & ~(hinge <= 0), hinge, 0.0)
    tl.store(loss_ptr + rows, _row_sum(hinge * hinge), mask=rows < B)
    if GRAD_Z:
        tl.store(grad_z_ptr + offsets, tl.where(is_label, -2.0 * _row_sum(hinge), 2.0 * hinge), mask=mask)


@triton.jit
def _mhuber_kernel(
    u_ptr, v_ptr, u_previous_ptr, v_previous_ptr, u_average_ptr, v_average_ptr, partial_ptr, grad_u_ptr, grad_v_ptr,
    B, C, alpha: tl.float64, keep: tl.float64, take: tl.float64, scale: tl.float64,
    ACC: tl.constexpr, AVERAGED: tl.constexpr, GRAD_U: tl.constexpr, GRAD_V: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Each row's Σ f(u − v) (in ACC) and f'(u − v)·scale; with AVERAGED, u and v are first
    replaced by the moving averages keep·previous + take·current, which are also written."""
    rows, cols, offsets, in_row, mask = _tile(B, C, BLOCK_B, BLOCK_C)
    u = _load(u_ptr, offsets, mask, ACC)
    v = _load(v_ptr, offsets, mask, ACC)
    if AVERAGED:
        keep = tl.full((), keep, ACC)
        take = tl.full((), take, ACC)
        u = keep * _load(u_previous_ptr, offsets, mask, ACC) + take * u
        v = keep * _load(v_previous_ptr, offsets, mask, ACC) + take * v
        tl.store(u_average_ptr + offsets, u, mask=mask)
        tl.store(v_average_ptr + offsets, v, mask=mask)
    d = u - v  # padding: f(0) = 0
    alpha = tl.full((), alpha, ACC)
    half_pi = tl.full((), _HALF_PI, ACC)
    magnitude = tl.abs(d)
    inner = magnitude / alpha <= half_pi
    # The outer branch discards the inner value; clamped, its argument stays in the polynomials'
    # range (and float64's tl.sin never sees ±inf).
    t = tl.minimum(tl.maximum(d / alpha, -half_pi), half_pi)
    f = tl.where(inner, alpha * alpha * _one_minus_cos_half_period(t, ACC),
                 alpha * magnitude + (1.0 - half_pi) * alpha * alpha)
    tl.store(partial_ptr + rows, _row_sum(f), mask=rows < B)
    if GRAD_U or GRAD_V:
        outer = tl.where(d > 0, alpha, tl.where(d < 0, -alpha, d))  # α·sign(d), NaN kept
        slope = tl.full((), scale, ACC) * tl.where(inner, alpha * _sin_half_period(t, ACC), outer)
        if GRAD_U:
            tl.store(grad_u_ptr + offsets, slope, mask=mask)
        if GRAD_V:
            tl.store(grad_v_ptr + offsets, -slope, mask=mask)


@triton.jit
def _squared_norm_kernel(
    a_ptr, b_ptr, loss_ptr, grad_a_ptr, grad_b_ptr,
    B, C,
    ACC: tl.constexpr, HAS_B: tl.constexpr, GRAD_A: tl.constexpr, GRAD_B: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """‖a − b‖² (logit_pairing) or ‖a‖² (logit_squeeze)."""
    rows, cols, offsets, in_row, mask = _tile(B, C, BLOCK_B, BLOCK_C)
    d = _load(a_ptr, offsets, mask, ACC)
    if HAS_B:
        d = d - _load(b_ptr, offsets, mask, ACC)
    tl.store(loss_ptr + rows, _row_sum(d * d), mask=rows < B)
    if GRAD_A:
        tl.store(grad_a_ptr + offsets, 2.0 * d, mask=mask)
    if GRAD_B:
        tl.store(grad_b_ptr + offsets, -2.0 * d, mask=mask)


# ----------------------------------------------------------------------------- launchers
def _accumulation(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _losses(like: torch.Tensor) -> torch.Tensor:
    """A per-row loss buffer in the accumulation type."""
    return like.new_empty(like.shape[0], dtype=torch.float64 if like.dtype == torch.float64 else torch.float32)


def _gradient(like: torch.Tensor, wanted: bool) -> torch.Tensor:
    """A saved gradient, in the accumulation type as the C++ kernels' (logits.h, store_gradient):
    the backward multiplies it by the incoming gradient and rounds to the input's type once."""
    dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    return torch.empty_like(like, dtype=dtype) if wanted else like.new_empty(0, dtype=dtype)


def _gradient_scale(reduction: int, rows: int, cols: int) -> float:
    """The gradients' factor under a reduction: 1 / rows for the mean (1), 1 / (rows·cols) for
    the mean over elements (3), 1 otherwise; the schemas' numbering (logits.h)."""
    if reduction not in (0, 1, 2, 3):
        raise ValueError(f"reduction must be 0 (none), 1 (mean), 2 (sum) or 3 (mean over elements), got {reduction}")
    return {1: 1.0 / max(rows, 1), 3: 1.0 / max(rows * cols, 1)}.get(reduction, 1.0)


def _finish_losses(losses: torch.Tensor, reduction: int, cols: int, dtype: torch.dtype) -> torch.Tensor:
    """Per-row losses (accumulation type) in ``dtype``, or reduced as the C++ glue does: the sum
    over rows, divided by rows (mean) or rows·cols (mean over elements); 0 / 0 = NaN for no
    rows, torch's mean of nothing."""
    if reduction == 0:
        return losses.to(dtype)
    divisor = {1: losses.shape[0], 3: losses.shape[0] * cols}.get(reduction, 1)
    return (losses.sum() / divisor).to(dtype)


def _launch(kernel, op: str, like: torch.Tensor, **arguments) -> None:
    """Runs `kernel` over the rows of `like` ([B, C]); nothing to do when B = 0. Pointers an op
    does not have are None, and the constexpr flags keep the kernel from touching them."""
    rows, cols = like.shape
    if rows == 0:
        return
    if not 1 <= cols <= _MAX_COLUMNS:
        raise ValueError(f"{op}: the Triton kernels take rows of 1 to {_MAX_COLUMNS} columns, got C = {cols}; "
                         "use the 'cuda' backend for wider rows")
    block_c = triton.next_power_of_2(cols)
    block_b = max(1, _TILE // block_c)
    num_warps = min(32, max(4, block_b * block_c // (32 * _ELEMENTS_PER_THREAD)))
    kernel[(triton.cdiv(rows, block_b),)](
        B=rows, C=cols, ACC=_accumulation(like.dtype), BLOCK_B=block_b, BLOCK_C=block_c, num_warps=num_warps,
        **arguments)


def soft_cross_entropy(z: torch.Tensor, target: torch.Tensor, grad_z: bool, grad_target: bool):
    loss, gz, gt = _losses(z), _gradient(z, grad_z), _gradient(z, grad_target)
    _launch(_cross_entropy_kernel, "soft_cross_entropy", z,
            z_ptr=z, target_ptr=target, y_ptr=None, loss_ptr=loss, grad_z_ptr=gz, grad_target_ptr=gt,
            on_label=0.0, off_label=0.0, SOFT_TARGET=True, GRAD_Z=grad_z, GRAD_TARGET=grad_target)
    return loss.to(z.dtype), gz, gt


def smoothed_cross_entropy(z: torch.Tensor, y: torch.Tensor, smoothing: float, grad_z: bool):
    loss, gz = _losses(z), _gradient(z, grad_z)
    _launch(_cross_entropy_kernel, "smoothed_cross_entropy", z,
            z_ptr=z, target_ptr=None, y_ptr=y, loss_ptr=loss, grad_z_ptr=gz, grad_target_ptr=None,
            on_label=1.0 - smoothing, off_label=smoothing / (z.shape[1] - 1),
            SOFT_TARGET=False, GRAD_Z=grad_z, GRAD_TARGET=False)
    return loss.to(z.dtype), gz


def _boosted_kl(op: str, z_nat, z_adv, y, grad_nat: bool, grad_adv: bool):
    """The five outputs of mart_loss (losses in the accumulation type); the other two ops keep
    the ones they have."""
    bce, kl = _losses(z_adv), _losses(z_adv)
    grads = (_gradient(z_adv, grad_adv and y is not None), _gradient(z_adv, grad_nat and z_nat is not None),
             _gradient(z_adv, grad_adv and z_nat is not None))
    _launch(_boosted_kl_kernel, op, z_adv,
            nat_ptr=z_nat, adv_ptr=z_adv, y_ptr=y, bce_ptr=bce, kl_ptr=kl, grad_bce_adv_ptr=grads[0],
            grad_kl_nat_ptr=grads[1], grad_kl_adv_ptr=grads[2],
            BCE=y is not None, KL=z_nat is not None, GRAD_NAT=grad_nat, GRAD_ADV=grad_adv)
    return (bce, kl) + grads


def boosted_cross_entropy(z: torch.Tensor, y: torch.Tensor, grad_z: bool):
    bce, _, grad_bce, _, _ = _boosted_kl("boosted_cross_entropy", None, z, y, False, grad_z)
    return bce.to(z.dtype), grad_bce


def trades_kl(z_nat: torch.Tensor, z_adv: torch.Tensor, reduction: int, grad_z_nat: bool, grad_z_adv: bool):
    """The gradients of a mean are scaled after the kernel (one more pass over them, which the
    C++ kernels fold in)."""
    scale = _gradient_scale(reduction, *z_nat.shape)
    _, kl, _, grad_nat, grad_adv = _boosted_kl("trades_kl", z_nat, z_adv, None, grad_z_nat, grad_z_adv)
    if scale != 1.0:
        for grad in (grad_nat, grad_adv):
            grad.mul_(scale)
    return _finish_losses(kl, reduction, z_nat.shape[1], z_nat.dtype), grad_nat, grad_adv


def mart_loss(z_nat: torch.Tensor, z_adv: torch.Tensor, y: torch.Tensor, grad_z_nat: bool, grad_z_adv: bool):
    bce, kl, *grads = _boosted_kl("mart_loss", z_nat, z_adv, y, grad_z_nat, grad_z_adv)
    return (bce.to(z_nat.dtype), kl.to(z_nat.dtype), *grads)


def margin_sq_hinge(z: torch.Tensor, y: torch.Tensor, delta: float, grad_z: bool):
    loss, gz = _losses(z), _gradient(z, grad_z)
    _launch(_margin_sq_hinge_kernel, "margin_sq_hinge", z,
            z_ptr=z, y_ptr=y, loss_ptr=loss, grad_z_ptr=gz, delta=delta, GRAD_Z=grad_z)
    return loss.to(z.dtype), gz


def _mhuber(op: str, u, v, u_previous, v_previous, alpha: float, tau: float, reduction: int, grad_u: bool,
            grad_v: bool):
    """(loss, ū, v̄, ∂/∂u, ∂/∂v) of mhuber between ū = τ·u_previous + (1 − τ)·u and v̄ likewise;
    without previous averages, between u and v (ū and v̄ are then None)."""
    partial = _losses(u)
    averages = (torch.empty_like(u), torch.empty_like(u)) if u_previous is not None else (None, None)
    gu, gv = _gradient(u, grad_u), _gradient(u, grad_v)
    _launch(_mhuber_kernel, op, u,
            u_ptr=u, v_ptr=v, u_previous_ptr=u_previous, v_previous_ptr=v_previous,
            u_average_ptr=averages[0], v_average_ptr=averages[1], partial_ptr=partial, grad_u_ptr=gu, grad_v_ptr=gv,
            alpha=alpha, keep=tau, take=1.0 - tau, scale=(1.0 - tau) * _gradient_scale(reduction, *u.shape),
            AVERAGED=u_previous is not None, GRAD_U=grad_u, GRAD_V=grad_v)
    return (_finish_losses(partial, reduction, u.shape[1], u.dtype),) + averages + (gu, gv)


def mhuber(u: torch.Tensor, v: torch.Tensor, alpha: float, reduction: int, grad_u: bool, grad_v: bool):
    loss, _, _, gu, gv = _mhuber("mhuber", u, v, None, None, alpha, 0.0, reduction, grad_u, grad_v)
    return loss, gu, gv


def mhuber_moving_average(u: torch.Tensor, v: torch.Tensor, u_previous: torch.Tensor, v_previous: torch.Tensor,
                          alpha: float, tau: float, reduction: int, grad_u: bool, grad_v: bool):
    return _mhuber("mhuber_moving_average", u, v, u_previous, v_previous, alpha, tau, reduction, grad_u, grad_v)


def _squared_norm(op: str, a, b, grad_a: bool, grad_b: bool):
    loss, ga, gb = _losses(a), _gradient(a, grad_a), _gradient(a, grad_b)
    _launch(_squared_norm_kernel, op, a,
            a_ptr=a, b_ptr=b, loss_ptr=loss, grad_a_ptr=ga, grad_b_ptr=gb,
            HAS_B=b is not None, GRAD_A=grad_a, GRAD_B=grad_b)
    return loss.to(a.dtype), ga, gb


def logit_pairing(z_nat: torch.Tensor, z_adv: torch.Tensor, grad_z_nat: bool, grad_z_adv: bool):
    return _squared_norm("logit_pairing", z_nat, z_adv, grad_z_nat, grad_z_adv)


def logit_squeeze(z: torch.Tensor, grad_z: bool):
    loss, gz, _ = _squared_norm("logit_squeeze", z, None, grad_z, False)
    return loss, gz



# ----------------------------------------------------------------------------- member ops
# masked_gram (FASTADV_LOGITS_MEMBER_OPS): a program per sample b holds the sample's M×M matrices
# ([BLOCK_M, BLOCK_M], BLOCK_M the next power of two >= M, the padding members 0) and runs over
# its columns BLOCK_C at a time: one pass for the raw Gram R_mn = ⟨v_m ⊙ mask, v_n ⊙ mask⟩ (the
# norms on its diagonal), the backward a second for dV_m = mask ⊙ Σ_n A_mn (v_n ⊙ mask) with the
# coefficients A of logits.h (masked_gram_coefficient). Any C; M up to 32 (the public op's limit).
@triton.jit
def _member_rows(b, M, B, C, BLOCK_M: tl.constexpr):
    """The members ([BLOCK_M, 1] and [1, BLOCK_M]) and their rows' offsets in V ([BLOCK_M, 1])."""
    m = tl.arange(0, BLOCK_M)[:, None]
    n = tl.arange(0, BLOCK_M)[None, :]
    return m, n, (m.to(tl.int64) * B + b) * C


@triton.jit
def _masked_gram_raw(v_ptr, y, rows, is_member, C, ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    raw = tl.zeros((BLOCK_M, BLOCK_M), ACC)
    for start in range(0, C, BLOCK_C):
        cols = start + tl.arange(0, BLOCK_C)[None, :]
        v = tl.load(v_ptr + rows + cols, mask=is_member & (cols < C), other=0.0).to(ACC)
        u = v * tl.where(cols == y, 0.0, 1.0)  # v·mask: an inf or NaN of the true class gives NaN, as v ⊙ m
        raw += tl.sum(u[:, None, :] * u[None, :, :], axis=2)
    return raw


@triton.jit
def _masked_gram_divisors(raw, m, n, ACC: tl.constexpr):
    """max(‖u‖, eps) of the members as a column and as a row, and the norms as a column."""
    diagonal = tl.where(m == n, raw, 0.0)
    norm_m = _sqrt(tl.sum(diagonal, axis=1, keep_dims=True), ACC)
    norm_n = _sqrt(tl.sum(diagonal, axis=0, keep_dims=True), ACC)  # R is symmetric
    return tl.maximum(norm_m, _MASKED_GRAM_EPS), tl.maximum(norm_n, _MASKED_GRAM_EPS), norm_m


@triton.jit
def _combine_members(coefficients, u, ACC: tl.constexpr, BLOCK_M: tl.constexpr):
    """Σ_n A_mn u_n of the members' rows ([BLOCK_M, BLOCK_M] by [BLOCK_M, BLOCK_C]), in full float32.

    Written as tl.sum(A[:, :, None] * u[None, :, :], axis=1), the combine pass of Triton 3.6
    (CombineBroadcastMulReducePattern) rewrites this product into a tt.dot with TF32 inputs
    (10-bit mantissas, relative error ~5e-4, on the tensor cores) once BLOCK_M and BLOCK_C are
    both >= 16 on a float32 sum, which puts the gradient at 32 members far outside its
    tolerance on a GPU, while the interpreter, which computes in float32, cannot show it (Triton
    3.8 does not rewrite it, but older ones are admitted). The gradient is held to
    float32's accuracy (DESIGN.md, numerics), so the product is an explicit tl.dot with
    input_precision="ieee" (full float32 FMAs, never TF32) where it has a dot's shape; float64
    (which the pattern leaves alone) and fewer than 9 members (a dot needs 16) keep the plain sum.
    tests/ops/test_masked_gram.py compiles the kernels for sm_90 and checks their PTX for TF32."""
    if BLOCK_M >= 16 and ACC == tl.float32:
        return tl.dot(coefficients, u, input_precision="ieee")
    else:
        return tl.sum(coefficients[:, :, None] * u[None, :, :], axis=1)


@triton.jit
def _masked_gram_kernel(v_ptr, y_ptr, gram_ptr, M, B, C,
                        ACC: tl.constexpr, NORMALIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    b = tl.program_id(0)
    y = tl.load(y_ptr + b)
    m, n, rows = _member_rows(b, M, B, C, BLOCK_M)
    gram = _masked_gram_raw(v_ptr, y, rows, m < M, C, ACC, BLOCK_M, BLOCK_C)
    if NORMALIZE:
        d_m, d_n, _ = _masked_gram_divisors(gram, m, n, ACC)
        gram = _divide(gram, d_m * d_n, ACC)
    tl.store(gram_ptr + (b.to(tl.int64) * M + m) * M + n, gram, mask=(m < M) & (n < M))


@triton.jit
def _masked_gram_backward_kernel(grad_ptr, v_ptr, y_ptr, out_ptr, M, B, C,
                                 ACC: tl.constexpr, NORMALIZE: tl.constexpr, BLOCK_M: tl.constexpr,
                                 BLOCK_C: tl.constexpr):
    b = tl.program_id(0)
    y = tl.load(y_ptr + b)
    m, n, rows = _member_rows(b, M, B, C, BLOCK_M)
    is_member = m < M
    pair = is_member & (n < M)
    grad = grad_ptr + b.to(tl.int64) * M * M
    coefficients = (tl.load(grad + m * M + n, mask=pair, other=0.0).to(ACC)
                    + tl.load(grad + n * M + m, mask=pair, other=0.0).to(ACC))  # S = dG + dGᵀ
    if NORMALIZE:
        raw = _masked_gram_raw(v_ptr, y, rows, is_member, C, ACC, BLOCK_M, BLOCK_C)
        d_m, d_n, norm_m = _masked_gram_divisors(raw, m, n, ACC)
        # û_m·dÛ_m = Σ_k S_mk G_mk
        along = tl.sum(coefficients * _divide(raw, d_m * d_n, ACC), axis=1, keep_dims=True)
        coefficients = _divide(coefficients, d_m * d_n, ACC) - tl.where((m == n) & (norm_m > _MASKED_GRAM_EPS),
                                                                        _divide(along, d_m * d_m, ACC), 0.0)
    for start in range(0, C, BLOCK_C):
        cols = start + tl.arange(0, BLOCK_C)[None, :]
        in_row = is_member & (cols < C)
        mask = tl.where(cols == y, 0.0, 1.0)
        u = tl.load(v_ptr + rows + cols, mask=in_row, other=0.0).to(ACC) * mask
        tl.store(out_ptr + rows + cols, _combine_members(coefficients, u, ACC, BLOCK_M) * mask, mask=in_row)


def _member_blocks(members: int, cols: int) -> tuple[int, int]:
    block_m = max(2, triton.next_power_of_2(members))
    return block_m, max(16, min(triton.next_power_of_2(cols), _MEMBER_TILE // (block_m * block_m)))


def masked_gram(V: torch.Tensor, y: torch.Tensor, normalize: bool):
    members, rows, cols = V.shape
    gram = V.new_empty(rows, members, members)
    if rows:
        block_m, block_c = _member_blocks(members, cols)
        _masked_gram_kernel[(rows,)](V, y, gram, members, rows, cols, ACC=_accumulation(V.dtype), NORMALIZE=normalize,
                                     BLOCK_M=block_m, BLOCK_C=block_c)
    return gram


def _masked_gram_backward(grad_G: torch.Tensor, V: torch.Tensor, y: torch.Tensor, normalize: bool):
    members, rows, cols = V.shape
    grad_V = torch.empty_like(V)
    if rows:
        block_m, block_c = _member_blocks(members, cols)
        _masked_gram_backward_kernel[(rows,)](grad_G, V, y, grad_V, members, rows, cols, ACC=_accumulation(V.dtype),
                                              NORMALIZE=normalize, BLOCK_M=block_m, BLOCK_C=block_c)
    return grad_V
