"""Triton kernels of the pgd family: the PGD step (L-infinity and L2) and UDR's step and soft cost.

The math mirrors csrc/include/fastadv/pgd.h and common.h line by line, so that the Triton,
CUDA C++ and CPU backends agree to rounding. Tensors are addressed as `rows` samples of
`row_size` consecutive elements (contiguous and channels_last both qualify; the Python layer
checks that every operand shares one layout), so flat offsets `row * row_size + i` are valid
without making anything contiguous.

`pgd_step_into` and `udr_step_into` launch the step kernels; `pgd_step`, `pgd_step_`, `udr_step`,
`udr_step_` and `soft_cost`, with the arguments of the C++ schemas, are registered by
fastadv/ops/pgd.py (fastadv.ops._registry.TritonOps) as the custom ops `fastadv::<op>_triton`
(`pgd_step_triton_`, `udr_step_triton_` in place) with fake implementations, so that
torch.compile and opcheck treat them like the C++ kernels, in Triton's interpreter as on a GPU.
"""
import torch
import triton
import triton.language as tl

from .common import divide as _divide, sqrt as _sqrt

# L-infinity is elementwise: 1024 elements (4 warps) per program is the usual memory-bound
# choice. L2 runs one program per row and keeps three partial sums of BLOCK elements in
# registers across its loop; 2048 caps that register footprint while still covering a
# 3x32x32 image in two chunks. UDR's step and soft cost also run a program per row, with one
# partial (a sum or a maximum, then the L-inf tie count) under the same cap.
_LINF_BLOCK_MAX = 1024
_ROW_BLOCK_MAX = 2048


@triton.jit
def _clamp_propagating_nan(v, lo, hi):
    # The operand order of common.h: a NaN `v` fails both comparisons and falls through.
    at_least_lo = tl.where(lo > v, lo, v)
    return tl.where(hi < at_least_lo, hi, at_least_lo)


@triton.jit
def _sign_propagating_nan(g):
    return tl.where(g > 0, 1.0, tl.where(g < 0, -1.0, g))


@triton.jit
def _per_sample(value, per_sample_ptr, row, mask, HAS_PER_SAMPLE: tl.constexpr, ACC: tl.constexpr):
    if HAS_PER_SAMPLE:
        return tl.load(per_sample_ptr + row, mask=mask, other=0.0)
    else:
        # tl.full takes the float64 argument (or, in the interpreter, the Python float) straight
        # to ACC; any other first use would round it to float32, losing float64 precision.
        return tl.full((), value, ACC)


@triton.jit
def _copy_row(out_ptr, x_adv_ptr, row_start, row_size, BLOCK: tl.constexpr):
    """An inactive row of an out-of-place step: x_adv as it is."""
    for start in range(0, row_size, BLOCK):
        offsets = row_start + start + tl.arange(0, BLOCK)
        mask = start + tl.arange(0, BLOCK) < row_size
        tl.store(out_ptr + offsets, tl.load(x_adv_ptr + offsets, mask=mask), mask=mask)


@triton.jit
def _pgd_linf_step_kernel(
    out_ptr, x_adv_ptr, grad_ptr, x_ptr,
    eps_per_sample_ptr, alpha_per_sample_ptr, active_ptr,
    eps: tl.float64, alpha: tl.float64, clip_min: tl.float64, clip_max: tl.float64,
    row_size, numel,
    ACC: tl.constexpr,
    HAS_EPS_PER_SAMPLE: tl.constexpr, HAS_ALPHA_PER_SAMPLE: tl.constexpr,
    HAS_ACTIVE: tl.constexpr, IN_PLACE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    in_bounds = offsets < numel
    row = offsets // row_size
    if HAS_ACTIVE:
        row_active = tl.load(active_ptr + row, mask=in_bounds, other=0) != 0
        step_mask = in_bounds & row_active
    else:
        step_mask = in_bounds
    # In place, an inactive row already holds its result: it is neither read nor written.
    if IN_PLACE:
        x_adv_stored = tl.load(x_adv_ptr + offsets, mask=step_mask)
    else:
        x_adv_stored = tl.load(x_adv_ptr + offsets, mask=in_bounds)
    grad = tl.load(grad_ptr + offsets, mask=step_mask).to(ACC)
    x = tl.load(x_ptr + offsets, mask=step_mask).to(ACC)
    eps_row = _per_sample(eps, eps_per_sample_ptr, row, step_mask, HAS_EPS_PER_SAMPLE, ACC)
    alpha_row = _per_sample(alpha, alpha_per_sample_ptr, row, step_mask, HAS_ALPHA_PER_SAMPLE, ACC)
    lo = tl.full((), clip_min, ACC)
    hi = tl.full((), clip_max, ACC)

    stepped = x_adv_stored.to(ACC) + alpha_row * _sign_propagating_nan(grad)
    projected = _clamp_propagating_nan(stepped, x - eps_row, x + eps_row)
    result = _clamp_propagating_nan(projected, lo, hi).to(out_ptr.dtype.element_ty)
    if HAS_ACTIVE and not IN_PLACE:
        tl.store(out_ptr + offsets, tl.where(row_active, result, x_adv_stored), mask=in_bounds)
    else:
        tl.store(out_ptr + offsets, result, mask=step_mask)


@triton.jit
def _pgd_l2_step_kernel(
    out_ptr, x_adv_ptr, grad_ptr, x_ptr,
    eps_per_sample_ptr, alpha_per_sample_ptr, active_ptr,
    eps: tl.float64, alpha: tl.float64, clip_min: tl.float64, clip_max: tl.float64,
    row_size,
    ACC: tl.constexpr,
    HAS_EPS_PER_SAMPLE: tl.constexpr, HAS_ALPHA_PER_SAMPLE: tl.constexpr,
    HAS_ACTIVE: tl.constexpr, IN_PLACE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    row_start = row * row_size
    if HAS_ACTIVE:
        if tl.load(active_ptr + row) == 0:
            if not IN_PLACE:
                _copy_row(out_ptr, x_adv_ptr, row_start, row_size, BLOCK)
            return

    # One pass for the three sums of pgd_l2_coefficients; lanes add up separately and are
    # reduced once at the end.
    grad_sq = tl.zeros((BLOCK,), ACC)
    delta_sq = tl.zeros((BLOCK,), ACC)
    delta_dot_grad = tl.zeros((BLOCK,), ACC)
    for start in range(0, row_size, BLOCK):
        offsets = row_start + start + tl.arange(0, BLOCK)
        mask = start + tl.arange(0, BLOCK) < row_size
        grad = tl.load(grad_ptr + offsets, mask=mask, other=0.0).to(ACC)
        delta = (tl.load(x_adv_ptr + offsets, mask=mask, other=0.0).to(ACC)
                 - tl.load(x_ptr + offsets, mask=mask, other=0.0).to(ACC))
        grad_sq += grad * grad
        delta_sq += delta * delta
        delta_dot_grad += delta * grad
    grad_sq_row = tl.sum(grad_sq, axis=0)
    delta_sq_row = tl.sum(delta_sq, axis=0)
    delta_dot_grad_row = tl.sum(delta_dot_grad, axis=0)

    eps_row = _per_sample(eps, eps_per_sample_ptr, row, True, HAS_EPS_PER_SAMPLE, ACC)
    alpha_row = _per_sample(alpha, alpha_per_sample_ptr, row, True, HAS_ALPHA_PER_SAMPLE, ACC)
    # pgd_l2_coefficients: a zero gradient makes no step; a NaN sum is not zero, so it propagates.
    # tl.where evaluates both sides, so the discarded quotient gets a harmless denominator
    # (a division by zero would make the interpreter warn).
    no_step = grad_sq_row == 0
    step_scale = tl.where(
        no_step, 0.0, _divide(alpha_row, _sqrt(tl.where(no_step, 1.0, grad_sq_row), ACC), ACC))
    new_sq = delta_sq_row + 2.0 * step_scale * delta_dot_grad_row + step_scale * step_scale * grad_sq_row
    new_sq = tl.where(new_sq < 0, 0.0, new_sq)  # rounding can make an exact 0 negative
    new_norm = _sqrt(new_sq, ACC)
    outside = new_norm > eps_row
    shrink = tl.where(outside, _divide(eps_row, tl.where(outside, new_norm, 1.0), ACC), 1.0)
    lo = tl.full((), clip_min, ACC)
    hi = tl.full((), clip_max, ACC)

    for start in range(0, row_size, BLOCK):
        offsets = row_start + start + tl.arange(0, BLOCK)
        mask = start + tl.arange(0, BLOCK) < row_size
        grad = tl.load(grad_ptr + offsets, mask=mask).to(ACC)
        x_adv = tl.load(x_adv_ptr + offsets, mask=mask).to(ACC)
        x = tl.load(x_ptr + offsets, mask=mask).to(ACC)
        # pgd_l2_element: inside the ball the step lands on x_adv directly, so a zero gradient
        # leaves x_adv bit for bit where it was.
        stepped = x_adv + step_scale * grad
        projected = tl.where(shrink == 1, stepped, x + shrink * (stepped - x))
        result = _clamp_propagating_nan(projected, lo, hi)
        tl.store(out_ptr + offsets, result.to(out_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- UDR
# UDR's step (METHODS.md section 5): x_int = x_adv + η·sign(g), then x' = clip(x_int − η·λ·∇ĉ(x_int, x)),
# no projection onto the ball; a program per row, like the CUDA kernel's block per row: for pixel
# and l2 one elementwise pass, for linf the row's reduction over x_int − x (max |d|, then the
# ties) before the write.
@triton.jit
def _udr_intermediate(x_adv, g, eta):
    return x_adv + eta * _sign_propagating_nan(g)


@triton.jit
def _udr_difference(x_adv_ptr, grad_ptr, x_ptr, offsets, mask, eta, STEP: tl.constexpr, ACC: tl.constexpr):
    """A chunk's x_int − x (STEP: the step's) or x_adv − x (the soft cost's); 0 past the row's end."""
    point = tl.load(x_adv_ptr + offsets, mask=mask, other=0.0).to(ACC)
    if STEP:
        point = _udr_intermediate(point, tl.load(grad_ptr + offsets, mask=mask, other=0.0).to(ACC), eta)
    return point - tl.load(x_ptr + offsets, mask=mask, other=0.0).to(ACC)


# The costs' codes (UdrCost in csrc/include/fastadv/pgd.h).
_L2, _LINF, _PIXEL = 0, 1, 2
_COST_CODES = {"l2": _L2, "linf": _LINF, "pixel": _PIXEL}


@triton.jit
def _udr_row_reduction(x_adv_ptr, grad_ptr, x_ptr, row_start, row_size, eta,
                       SUM: tl.constexpr, TIES: tl.constexpr, STEP: tl.constexpr, ACC: tl.constexpr,
                       BLOCK: tl.constexpr):
    """The reductions of csrc/cpu/pgd.cpp: Σ|d| (SUM, pixel's statistic) or max |d| and, with TIES
    (linf's step), the number of elements reaching it. Lanes reduce separately, once at the end.
    The maximum skips NaN (a NaN never wins the comparison), the same on a GPU and in the
    interpreter; a NaN element still propagates to its own output."""
    partial = tl.zeros((BLOCK,), ACC)
    for start in range(0, row_size, BLOCK):
        lanes = start + tl.arange(0, BLOCK)
        d = _udr_difference(x_adv_ptr, grad_ptr, x_ptr, row_start + lanes, lanes < row_size, eta, STEP, ACC)
        magnitude = tl.where(d < 0, -d, d)
        if SUM:
            partial += magnitude
        else:
            partial = tl.where(magnitude > partial, magnitude, partial)
    ties = tl.zeros((), ACC)
    if SUM:
        c = tl.sum(partial, axis=0)
    else:
        c = tl.max(partial, axis=0)
        if TIES:
            count = tl.zeros((BLOCK,), ACC)
            for start in range(0, row_size, BLOCK):
                lanes = start + tl.arange(0, BLOCK)
                mask = lanes < row_size
                d = _udr_difference(x_adv_ptr, grad_ptr, x_ptr, row_start + lanes, mask, eta, STEP, ACC)
                count += tl.where(mask & (tl.where(d < 0, -d, d) == c), 1.0, 0.0)
            ties = tl.sum(count, axis=0)
    return c, ties


@triton.jit
def _soft_cost_of(c, eps, tau, ACC: tl.constexpr):
    return tl.where(c < eps, c, eps + _divide(c - eps, tau, ACC))


@triton.jit
def _udr_linf_coefficient(c, ties, eps, eta, lam, tau, ACC: tl.constexpr):
    """η·λ·slope over the number of ties; 0 where c = 0 (the norm's subgradient). tl.where
    evaluates both sides, so the discarded quotient gets a harmless denominator."""
    slope = tl.where(c < eps, 1.0, _divide(tl.full((), 1.0, ACC), tau, ACC))
    zero = c == 0
    return tl.where(zero, 0.0, _divide(eta * lam * slope, tl.where(zero, 1.0, ties), ACC))


@triton.jit
def _udr_linf_element(x_int, x, c, coefficient, lo, hi):
    d = x_int - x
    correction = tl.where(tl.where(d < 0, -d, d) == c, _sign_propagating_nan(d), 0.0)
    return _clamp_propagating_nan(x_int - coefficient * correction, lo, hi)


@triton.jit
def _udr_elementwise_element(x_int, x, eps, eta_lam, tau, COST: tl.constexpr, ACC: tl.constexpr):
    """udr_elementwise_element of pgd.h before the clip: x_int − η·λ·pull(d), pixel's pull the
    excess over the L∞ ball over τ, l2's d inside the per-element ball and d/τ outside."""
    d = x_int - x
    if COST == 2:
        pull = _divide(d - _clamp_propagating_nan(d, -eps, eps), tau, ACC)  # the excess over the ball
    else:
        pull = tl.where(tl.where(d < 0, -d, d) < eps, d, _divide(d, tau, ACC))
    return x_int - eta_lam * pull


@triton.jit
def _udr_step_kernel(
    out_ptr, x_adv_ptr, grad_ptr, x_ptr, eps_per_sample_ptr, active_ptr,
    eps: tl.float64, eta: tl.float64, lam: tl.float64, tau: tl.float64,
    clip_min: tl.float64, clip_max: tl.float64,
    row_size,
    ACC: tl.constexpr, COST: tl.constexpr,
    HAS_EPS_PER_SAMPLE: tl.constexpr, HAS_ACTIVE: tl.constexpr, IN_PLACE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    row_start = row * row_size
    if HAS_ACTIVE:
        # In place, an inactive row already holds its result: it is neither read nor written.
        if tl.load(active_ptr + row) == 0:
            if not IN_PLACE:
                _copy_row(out_ptr, x_adv_ptr, row_start, row_size, BLOCK)
            return

    # The scalars in ACC before any use, as the C++ kernels cast them to acc_t.
    eta_acc = tl.full((), eta, ACC)
    lam_acc = tl.full((), lam, ACC)
    tau_acc = tl.full((), tau, ACC)
    eps_row = _per_sample(eps, eps_per_sample_ptr, row, True, HAS_EPS_PER_SAMPLE, ACC)
    lo = tl.full((), clip_min, ACC)
    hi = tl.full((), clip_max, ACC)
    if COST == 1:
        c, ties = _udr_row_reduction(x_adv_ptr, grad_ptr, x_ptr, row_start, row_size, eta_acc, False, True, True, ACC,
                                     BLOCK)
        coefficient = _udr_linf_coefficient(c, ties, eps_row, eta_acc, lam_acc, tau_acc, ACC)
    for start in range(0, row_size, BLOCK):
        lanes = start + tl.arange(0, BLOCK)
        offsets = row_start + lanes
        mask = lanes < row_size
        x_int = _udr_intermediate(tl.load(x_adv_ptr + offsets, mask=mask).to(ACC),
                                  tl.load(grad_ptr + offsets, mask=mask).to(ACC), eta_acc)
        x_row = tl.load(x_ptr + offsets, mask=mask).to(ACC)
        if COST == 1:
            result = _udr_linf_element(x_int, x_row, c, coefficient, lo, hi)
        else:
            result = _clamp_propagating_nan(
                _udr_elementwise_element(x_int, x_row, eps_row, eta_acc * lam_acc, tau_acc, COST, ACC), lo, hi)
        tl.store(out_ptr + offsets, result.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _soft_cost_kernel(
    out_ptr, x_adv_ptr, x_ptr, eps_per_sample_ptr,
    eps: tl.float64, tau: tl.float64,
    row_size,
    ACC: tl.constexpr, COST: tl.constexpr, HAS_EPS_PER_SAMPLE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    reduced, _ = _udr_row_reduction(x_adv_ptr, x_adv_ptr, x_ptr, row * row_size, row_size, tl.zeros((), ACC),
                                    COST == 2, False, False, ACC, BLOCK)
    # Computed in ACC and stored in x_adv's dtype, as the C++ op's `out.to(x_adv.scalar_type())`.
    if COST == 2:
        statistic = _divide(reduced, tl.full((), row_size, ACC), ACC)
    else:
        eps_row = _per_sample(eps, eps_per_sample_ptr, row, True, HAS_EPS_PER_SAMPLE, ACC)
        statistic = _soft_cost_of(reduced, eps_row, tl.full((), tau, ACC), ACC)
    tl.store(out_ptr + row, statistic.to(out_ptr.dtype.element_ty))


def _accumulation(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _row_block(row_size: int) -> tuple[int, int]:
    """(BLOCK, num_warps) of the one-program-per-row kernels."""
    block = min(triton.next_power_of_2(max(row_size, 1)), _ROW_BLOCK_MAX)
    return block, 4 if block <= 1024 else 8


def pgd_step_into(out: torch.Tensor, x_adv: torch.Tensor, grad: torch.Tensor, x: torch.Tensor,
                  eps: float, alpha: float, eps_per_sample: torch.Tensor | None,
                  alpha_per_sample: torch.Tensor | None, norm: str, clip_min: float,
                  clip_max: float, active: torch.Tensor | None) -> None:
    """Writes one PGD step of `x_adv` into `out` (which may be `x_adv` itself).

    The caller has validated every argument (fastadv/ops/pgd.py); see fastadv::pgd_step.
    """
    rows = x_adv.shape[0]
    numel = x_adv.numel()
    if numel == 0:
        return
    row_size = numel // rows
    # Absent optional tensors still need a pointer argument; the constexpr flags keep the
    # kernels from ever touching it.
    arguments = dict(
        out_ptr=out, x_adv_ptr=x_adv, grad_ptr=grad, x_ptr=x,
        eps_per_sample_ptr=x if eps_per_sample is None else eps_per_sample,
        alpha_per_sample_ptr=x if alpha_per_sample is None else alpha_per_sample,
        active_ptr=x if active is None else active,
        eps=float(eps), alpha=float(alpha), clip_min=float(clip_min), clip_max=float(clip_max),
        row_size=row_size,
        ACC=_accumulation(x_adv.dtype),
        HAS_EPS_PER_SAMPLE=eps_per_sample is not None,
        HAS_ALPHA_PER_SAMPLE=alpha_per_sample is not None,
        HAS_ACTIVE=active is not None,
        # Identity, not data_ptr: it works on the fake tensors of torch.compile's tracing, and
        # a distinct alias only costs the in-place shortcut, never correctness.
        IN_PLACE=out is x_adv,
    )
    if norm == "linf":
        block = min(triton.next_power_of_2(numel), _LINF_BLOCK_MAX)
        grid = (triton.cdiv(numel, block),)
        _pgd_linf_step_kernel[grid](
            numel=numel, BLOCK=block, num_warps=4, **arguments)
    else:
        block, num_warps = _row_block(row_size)
        _pgd_l2_step_kernel[(rows,)](BLOCK=block, num_warps=num_warps, **arguments)


def pgd_step(x_adv, grad, x, eps, alpha, eps_per_sample, alpha_per_sample, norm, clip_min, clip_max, active):
    out = torch.empty_like(x_adv)
    pgd_step_into(out, x_adv, grad, x, eps, alpha, eps_per_sample, alpha_per_sample, norm, clip_min, clip_max, active)
    return out


def pgd_step_(x_adv, grad, x, eps, alpha, eps_per_sample, alpha_per_sample, norm, clip_min, clip_max, active):
    pgd_step_into(x_adv, x_adv, grad, x, eps, alpha, eps_per_sample, alpha_per_sample, norm, clip_min, clip_max,
                  active)


def udr_step_into(out: torch.Tensor, x_adv: torch.Tensor, grad: torch.Tensor, x: torch.Tensor, eps: float,
                  eps_per_sample: torch.Tensor | None, eta: float, lam: float, tau: float, cost: str,
                  clip_min: float, clip_max: float, active: torch.Tensor | None) -> None:
    """Writes UDR's step of `x_adv` into `out` (which may be `x_adv` itself).

    The caller has validated every argument (fastadv/ops/pgd.py); see fastadv::udr_step.
    """
    rows = x_adv.shape[0]
    numel = x_adv.numel()
    if numel == 0:
        return
    row_size = numel // rows
    block, num_warps = _row_block(row_size)
    _udr_step_kernel[(rows,)](
        out, x_adv, grad, x,
        x if eps_per_sample is None else eps_per_sample, x if active is None else active,
        float(eps), float(eta), float(lam), float(tau), float(clip_min), float(clip_max),
        row_size,
        ACC=_accumulation(x_adv.dtype), COST=_COST_CODES[cost],
        HAS_EPS_PER_SAMPLE=eps_per_sample is not None, HAS_ACTIVE=active is not None,
        IN_PLACE=out is x_adv,  # identity, as in pgd_step_into
        BLOCK=block, num_warps=num_warps)


def udr_step(x_adv, grad, x, eps, eps_per_sample, eta, lam, tau, cost, clip_min, clip_max, active):
    out = torch.empty_like(x_adv)
    udr_step_into(out, x_adv, grad, x, eps, eps_per_sample, eta, lam, tau, cost, clip_min, clip_max, active)
    return out


def udr_step_(x_adv, grad, x, eps, eps_per_sample, eta, lam, tau, cost, clip_min, clip_max, active):
    udr_step_into(x_adv, x_adv, grad, x, eps, eps_per_sample, eta, lam, tau, cost, clip_min, clip_max, active)


def soft_cost(x_adv, x, eps, eps_per_sample, tau, cost):
    rows = x_adv.shape[0]
    out = x_adv.new_empty((rows,))
    if rows == 0:
        return out
    row_size = x_adv.numel() // rows
    block, num_warps = _row_block(row_size)
    _soft_cost_kernel[(rows,)](
        out, x_adv, x, x if eps_per_sample is None else eps_per_sample,
        float(eps), float(tau), row_size,
        ACC=_accumulation(x_adv.dtype), COST=_COST_CODES[cost], HAS_EPS_PER_SAMPLE=eps_per_sample is not None,
        BLOCK=block, num_warps=num_warps)
    return out
