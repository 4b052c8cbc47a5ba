"""The pgd family: random starts and fused projected-gradient steps (METHODS.md section 1).

``pgd_step`` / ``pgd_step_`` run one step of projected gradient ascent for a whole batch in a
single pass over memory (L-inf) or one reduction pass plus one update pass per sample (L2):

    linf: x' = clip(proj_{|x'-x|_inf <= eps}(x_adv + alpha * sign(grad)))
    l2:   x' = clip(proj_{|x'-x|_2 <= eps}(x_adv + alpha * grad / |grad|_2))

A zero gradient leaves its sample where it is (sign(0) = 0; in L2 no step is made). NaN in the
inputs is not an error: like torch's own ops, it propagates to the output of its sample (an
attack loop sees it in the loss at once; checking every element for it would cost a full extra
read of the gradient on every step).

``udr_step`` / ``udr_step_`` run UDR's step (METHODS.md section 5: a sign step, then a pull back
along the gradient of the soft cost, no projection) and ``soft_cost`` its cost per sample, each a
reduction pass plus a write pass per sample.

Backends of every op: C++ (CPU), CUDA C++, Triton and the reference (see fastadv.backend); the
schemas are in csrc/ops.cpp. The updates have no autograd: they are not differentiated through.
"""
from __future__ import annotations

import math

from typing import Optional

import torch

from .. import _validate
from ..distributed import batch_noise
from ..reference import pgd as reference
from . import _registry

NORMS = ("linf", "l2")
INITS = ("uniform", "normal")
NORMAL_INIT_STD = 0.001  # TRADES / LMA-AT start: x + 0.001 * N(0, I)

__all__ = ["pgd_init", "pgd_step", "pgd_step_", "udr_step", "udr_step_", "soft_cost"]
#: The costs of UDR's soft ball (METHODS.md section 5).
COSTS = reference.COSTS


# ----------------------------------------------------------------------------- validation
def radius_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the step accumulates in for a batch of ``dtype`` (float64 for float64, float32
    otherwise), which per-sample radii given to :data:`unchecked` must have."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _norm(op: str, norm) -> str:
    return _validate.choice(op, "norm", norm.lower() if isinstance(norm, str) else norm, NORMS)


def _active(op: str, active, ref: torch.Tensor) -> Optional[torch.Tensor]:
    if active is None:
        return None
    if not isinstance(active, torch.Tensor) or active.dtype != torch.bool:
        raise TypeError(f"{op}: active must be a bool tensor of shape [B] or None, got "
                        f"{active.dtype if isinstance(active, torch.Tensor) else type(active).__name__}")
    if active.shape != (ref.shape[0],):
        raise ValueError(f"{op}: active must have shape [B] = [{ref.shape[0]}], got {list(active.shape)}")
    if active.device != ref.device:
        raise ValueError(f"{op}: active must be on x_adv's device {ref.device}, got {active.device}")
    return active.contiguous()


def _step_arguments(x_adv, grad, x, eps, alpha, norm, clip_min, clip_max, active) -> tuple:
    """The schema's arguments of a step: each radius (a float, or a [B] tensor) becomes its float
    and its per-sample tensor."""
    eps_value, eps_per_sample = (0.0, eps) if isinstance(eps, torch.Tensor) else (eps, None)
    alpha_value, alpha_per_sample = (0.0, alpha) if isinstance(alpha, torch.Tensor) else (alpha, None)
    return (x_adv, grad, x, eps_value, alpha_value, eps_per_sample, alpha_per_sample, norm, clip_min, clip_max, active)


def _has_row_layout(t: torch.Tensor) -> bool:
    """Samples are consecutive memory blocks (contiguous and channels_last tensors are)."""
    if t.is_contiguous():
        return True
    expected = 1
    for stride, size in sorted((t.stride(d), t.size(d)) for d in range(1, t.dim()) if t.size(d) != 1):
        if stride != expected:
            return False
        expected *= size
    return t.shape[0] <= 1 or t.stride(0) == expected


def _in_layout_of(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    if t.stride() == ref.stride():
        return t
    return torch.empty_like(ref).copy_(t)


def _prepare_step(op, x_adv, grad, x, eps, alpha, norm, clip, active):
    """Validate every argument before anything runs (the per-sample radii are read once: one
    synchronisation); bring the inputs into one row layout."""
    _validate.tensor(op, "x_adv", x_adv, min_dim=1)
    _validate.tensor(op, "grad", grad, like=x_adv, like_name="x_adv")
    _validate.tensor(op, "x", x, like=x_adv, like_name="x_adv")
    dtype = radius_dtype(x_adv.dtype)
    eps = _validate.radius(op, "eps", eps, like=x_adv, dtype=dtype)
    alpha = _validate.radius(op, "alpha", alpha, like=x_adv, dtype=dtype)
    norm = _norm(op, norm)
    clip_min, clip_max = _validate.clip_range(op, clip)
    active = _active(op, active, x_adv)
    work = x_adv if _has_row_layout(x_adv) else x_adv.contiguous()
    return _step_arguments(work, _in_layout_of(grad, work), _in_layout_of(x, work), eps, alpha, norm, clip_min,
                                 clip_max, active)


def _reference_step(args) -> torch.Tensor:
    x_adv, grad, x, eps, alpha, eps_per_sample, alpha_per_sample, norm, lo, hi, active = args
    return reference.pgd_step(x_adv, grad, x, eps if eps_per_sample is None else eps_per_sample,
                              alpha if alpha_per_sample is None else alpha_per_sample, norm, (lo, hi), active)


def _run(op: str, args: tuple, oracle):
    """``op`` with the schema's arguments on the backend that runs it (the family's one dispatch
    path, :meth:`fastadv.ops._registry.Family.kernel`): the Triton custom op, the C++ op, or the
    reference (``oracle(args)``). An in-place op (its name ends in "_") writes ``args[0]``; the
    oracle's result is copied there."""
    first = args[0]
    kernel = _FAMILY.kernel(op, _registry.device_type(first), first.dtype, True, first.numel())
    if kernel is not None:
        return kernel(*args)
    result = oracle(args)
    if not op.endswith("_"):
        return result
    first.copy_(result)
    return None


def _written_back(x_adv: torch.Tensor, work: torch.Tensor) -> torch.Tensor:
    """``x_adv`` after an in-place op ran on ``work``: a contiguous copy when x_adv had no row layout."""
    if work is not x_adv:
        x_adv.copy_(work)
    return x_adv


# ----------------------------------------------------------------------------- public ops
def pgd_step(x_adv: torch.Tensor, grad: torch.Tensor, x: torch.Tensor, eps, alpha, norm: str = "linf",
             clip=(0.0, 1.0), active: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One PGD step for a batch; returns the new adversarial batch (x_adv is not modified).

    Args:
        x_adv: the current adversarial batch [B, ...] (contiguous or channels_last).
        grad: the gradient of the attack loss with respect to x_adv, same shape/dtype/device.
        x: the clean batch, centre of the eps-ball.
        eps, alpha: radius and step size, floats or per-sample tensors of shape [B].
        norm: "linf" (signed-gradient step) or "l2" (normalised-gradient step).
        clip: (min, max) box of valid inputs, or None for no box.
        active: optional bool [B]; inactive samples are returned unchanged.
    """
    args = _prepare_step("pgd_step", x_adv, grad, x, eps, alpha, norm, clip, active)
    return _run("pgd_step", args, _reference_step)


def pgd_step_(x_adv: torch.Tensor, grad: torch.Tensor, x: torch.Tensor, eps, alpha, norm: str = "linf",
              clip=(0.0, 1.0), active: Optional[torch.Tensor] = None) -> torch.Tensor:
    """In-place :func:`pgd_step`: updates and returns ``x_adv``. On an invalid argument it
    raises before anything is written, so ``x_adv`` is left untouched."""
    args = _prepare_step("pgd_step_", x_adv, grad, x, eps, alpha, norm, clip, active)
    _run("pgd_step_", args, _reference_step)
    return _written_back(x_adv, args[0])


def pgd_init(x: torch.Tensor, eps, norm: str = "linf", init: str = "uniform",
             generator: Optional[torch.Generator] = None, clip=(0.0, 1.0)) -> torch.Tensor:
    """A random start for PGD around the clean batch ``x``, clipped to ``clip``.

    init="uniform": L-inf, x + U(-eps, eps) per element; L2, a direction uniform on the sphere
    times a radius eps * U^(1/d), i.e. uniform in the L2 ball of dimension d.
    init="normal": x + 0.001 * N(0, I), the start of TRADES and LMA-AT (eps is not used).
    Randomness comes from torch's generators (``generator`` makes it reproducible); inside
    :func:`fastadv.distributed.global_batch` (a training step under torchrun) the start is drawn
    for the global batch and this rank's rows are taken, so that every sample starts where the
    single-process run starts it. This is a composition of torch ops, not a kernel: it runs once
    per attack, not once per step.
    """
    op = "pgd_init"
    _validate.tensor(op, "x", x, min_dim=1)
    eps = _validate.radius(op, "eps", eps, like=x, dtype=x.dtype)
    norm = _norm(op, norm)
    _validate.choice(op, "init", init, INITS)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{op}: generator must be a torch.Generator or None, got {type(generator).__name__}")
    return _unchecked_pgd_init(x, eps, norm, init, generator, _validate.clip_range(op, clip))


def _unchecked_pgd_init(x: torch.Tensor, eps, norm: str, init: str, generator: Optional[torch.Generator],
                        clip: tuple) -> torch.Tensor:
    """:func:`pgd_init` for callers that validated their arguments once: ``eps`` a float or a
    [B] tensor on x's device in x's dtype, ``clip`` a (min, max) pair of floats."""
    clip_min, clip_max = clip
    broadcast = (x.shape[0],) + (1,) * (x.dim() - 1)
    radius = eps.reshape(broadcast).to(x.dtype) if isinstance(eps, torch.Tensor) else eps
    # in place on the one new tensor: this runs once per attack, but on small batches its few
    # ops are all there is to time (`fastadv bench overhead`)
    if init == "normal":
        start = batch_noise(x, lambda t: t.normal_(0.0, NORMAL_INIT_STD, generator=generator))
    elif norm == "linf":
        start = batch_noise(x, lambda t: t.uniform_(-1.0, 1.0, generator=generator)).mul_(radius)
    else:
        direction = batch_noise(x, lambda t: t.normal_(generator=generator))
        direction_norm = direction.flatten(1).norm(dim=1).reshape(broadcast)
        dims = x[0].numel()
        scale = batch_noise(x.new_empty(broadcast), lambda t: t.uniform_(generator=generator)) ** (1.0 / dims)
        start = direction / direction_norm.clamp_min(torch.finfo(x.dtype).tiny) * scale * radius
    start.add_(x)  # x + δ
    if clip_min != -math.inf or clip_max != math.inf:
        start.clamp_(clip_min, clip_max)
    return start


# ----------------------------------------------------------------------------- UDR
def _prepare_udr(op, x_adv, grad, x, eps, eta, lam, tau, cost, clip, active):
    _validate.tensor(op, "x_adv", x_adv, min_dim=1)
    _validate.tensor(op, "grad", grad, like=x_adv, like_name="x_adv")
    _validate.tensor(op, "x", x, like=x_adv, like_name="x_adv")
    eps = _validate.radius(op, "eps", eps, like=x_adv, dtype=radius_dtype(x_adv.dtype))
    eta = _validate.number(op, "eta", eta, low=0.0, low_open=True)
    lam = _validate.number(op, "lam", lam, low=0.0)
    tau = _validate.number(op, "tau", tau, low=0.0, low_open=True)
    cost = _validate.choice(op, "cost", cost.lower() if isinstance(cost, str) else cost, COSTS)
    clip_min, clip_max = _validate.clip_range(op, clip)
    active = _active(op, active, x_adv)
    work = x_adv if _has_row_layout(x_adv) else x_adv.contiguous()
    return _udr_arguments(work, _in_layout_of(grad, work), _in_layout_of(x, work), eps, eta, lam, tau, cost,
                                clip_min, clip_max, active)


def _udr_arguments(x_adv, grad, x, eps, eta, lam, tau, cost, clip_min, clip_max, active) -> tuple:
    eps_value, eps_per_sample = (0.0, eps) if isinstance(eps, torch.Tensor) else (eps, None)
    return (x_adv, grad, x, eps_value, eps_per_sample, float(eta), float(lam), float(tau), cost, clip_min, clip_max,
            active)


def _reference_udr(args) -> torch.Tensor:
    x_adv, grad, x, eps, eps_per_sample, eta, lam, tau, cost, lo, hi, active = args
    return reference.udr_step(x_adv, grad, x, eps if eps_per_sample is None else eps_per_sample, eta, lam, tau, cost,
                              (lo, hi), active)


def udr_step(x_adv: torch.Tensor, grad: torch.Tensor, x: torch.Tensor, eps, eta: float, lam: float, tau: float,
             cost: str = "pixel", clip=(0.0, 1.0), active: Optional[torch.Tensor] = None) -> torch.Tensor:
    """UDR's attack step (seed 003 ch. 5, METHODS.md section 5); returns the new batch.

    ``x_int = x_adv + η·sign(grad)``, then ``x' = clip(x_int − η·λ·∇ĉ(x_int, x))``: a pull back
    towards x, with no projection onto the ball (``clip`` is the box of valid inputs). With
    ``d = x_int − x``, the pull ``∇ĉ`` of each ``cost``:

    - ``"pixel"`` (the default, for an L∞ threat): ``(d − clamp(d, −ε, ε))/τ``, each element
      outside the L∞ ball pulled back by its own excess, the others not at all (the authors'
      code); with ``η·λ/τ = 1`` the step is PGD's projected L∞ step;
    - ``"l2"``: ``c = ½‖d‖²`` with the per-element ball test, ``d`` where ``|d| < ε`` and ``d/τ``
      where ``|d| ≥ ε`` (seed 003 App. G);
    - ``"linf"``: ``c = max |d|``, its soft cost's slope (1 inside the ball, 1/τ outside) shared
      equally by the elements reaching the maximum (the minimum-norm subgradient), 0 where d = 0.

    ``eps`` a float or [B]; ``active`` bool [B], inactive samples unchanged.
    """
    args = _prepare_udr("udr_step", x_adv, grad, x, eps, eta, lam, tau, cost, clip, active)
    return _run("udr_step", args, _reference_udr)


def udr_step_(x_adv: torch.Tensor, grad: torch.Tensor, x: torch.Tensor, eps, eta: float, lam: float, tau: float,
              cost: str = "pixel", clip=(0.0, 1.0), active: Optional[torch.Tensor] = None) -> torch.Tensor:
    """In-place :func:`udr_step`: updates and returns ``x_adv`` (untouched on an invalid argument)."""
    args = _prepare_udr("udr_step_", x_adv, grad, x, eps, eta, lam, tau, cost, clip, active)
    _run("udr_step_", args, _reference_udr)
    return _written_back(x_adv, args[0])


def soft_cost(x_adv: torch.Tensor, x: torch.Tensor, eps, tau: float, cost: str = "pixel") -> torch.Tensor:
    """What UDR's λ update averages and compares with ε, per sample [B] (x_adv's dtype), with
    ``d = x_adv − x``: for ``"pixel"`` the mean |d| over the sample's elements; for ``"l2"`` and
    ``"linf"`` ``ĉ∞``, the soft cost of ``c = max |d|`` (``c`` if ``c < ε``, else
    ``ε + (c − ε)/τ``). METHODS.md section 5."""
    op = "soft_cost"
    _validate.tensor(op, "x_adv", x_adv, min_dim=1)
    _validate.tensor(op, "x", x, like=x_adv, like_name="x_adv")
    eps = _validate.radius(op, "eps", eps, like=x_adv, dtype=radius_dtype(x_adv.dtype))
    tau = _validate.number(op, "tau", tau, low=0.0, low_open=True)
    cost = _validate.choice(op, "cost", cost.lower() if isinstance(cost, str) else cost, COSTS)
    return _unchecked_soft_cost(x_adv, x, eps, tau, cost)


def _reference_soft_cost(args) -> torch.Tensor:
    x_adv, x, eps, eps_per_sample, tau, cost = args
    return reference.soft_cost(x_adv, x, eps if eps_per_sample is None else eps_per_sample, tau, cost)


def _unchecked_soft_cost(x_adv: torch.Tensor, x: torch.Tensor, eps, tau: float, cost: str) -> torch.Tensor:
    """:func:`soft_cost` for callers that validated once (arguments as for :func:`_unchecked_udr_step_`)."""
    work = x_adv if _has_row_layout(x_adv) else x_adv.contiguous()
    eps_value, eps_per_sample = (0.0, eps) if isinstance(eps, torch.Tensor) else (eps, None)
    args = (work, _in_layout_of(x, work), eps_value, eps_per_sample, float(tau), cost)
    return _run("soft_cost", args, _reference_soft_cost)


# ----------------------------------------------------------------------------- torch.library
_OPS = ("pgd_step", "pgd_step_", "udr_step", "udr_step_", "soft_cost")


def _fake(name: str):
    """Output metadata of the op ``name``: a step returns a new batch like x_adv, or nothing (in
    place); soft_cost a [B] vector in x_adv's dtype."""
    if name == "soft_cost":
        return lambda x_adv, *rest: x_adv.new_empty(x_adv.shape[:1])
    if name.endswith("_"):
        return lambda x_adv, *rest: None
    return lambda x_adv, *rest: torch.empty_like(x_adv)


_FAMILY = _registry.Family("pgd")
_TRITON = _FAMILY.register(_OPS, fake=_fake).triton


# ----------------------------------------------------------------------------- unchecked path
def _unchecked_pgd_step_(x_adv: torch.Tensor, grad: torch.Tensor, x: torch.Tensor, eps, alpha, norm: str,
                         clip: tuple, active: Optional[torch.Tensor] = None) -> torch.Tensor:
    """:func:`pgd_step_` for callers that validated their arguments once (an attack's loop):
    no checks and no host synchronisation. ``x_adv`` has a row layout (contiguous or
    channels_last) shared by ``grad`` and ``x``; ``eps``/``alpha`` are floats or contiguous [B]
    tensors on x_adv's device in the accumulation dtype (float64 for float64, else float32);
    ``norm`` is "linf" or "l2"; ``clip`` a (min, max) pair of floats (±inf for no box);
    ``active`` a contiguous bool [B] tensor or None."""
    kernel = _FAMILY.kernel("pgd_step_", _registry.device_type(x_adv), x_adv.dtype, True, x_adv.numel())
    if kernel is None:
        x_adv.copy_(_reference_step(_step_arguments(x_adv, grad, x, eps, alpha, norm, clip[0], clip[1], active)))
    elif isinstance(eps, float) and isinstance(alpha, float):  # the attacks' case: no argument tuple to build
        kernel(x_adv, grad, x, eps, alpha, None, None, norm, clip[0], clip[1], active)
    else:
        kernel(*_step_arguments(x_adv, grad, x, eps, alpha, norm, clip[0], clip[1], active))
    return x_adv


def _unchecked_udr_step_(x_adv: torch.Tensor, grad: torch.Tensor, x: torch.Tensor, eps, eta: float, lam: float,
                         tau: float, cost: str, clip: tuple, active: Optional[torch.Tensor] = None) -> torch.Tensor:
    """:func:`udr_step_` for callers that validated once (arguments as for
    :func:`_unchecked_pgd_step_`; ``cost`` "l2" or "linf")."""
    _run("udr_step_", _udr_arguments(x_adv, grad, x, eps, eta, lam, tau, cost, clip[0], clip[1], active),
         _reference_udr)
    return x_adv


#: The family's ops for callers that validated their arguments once, where they entered (the
#: attacks): no checks, no host synchronisation. Same arguments as the public ops, already in
#: the form the public ops bring them to (see each function).
unchecked = _FAMILY.unchecked
for _function in (_unchecked_pgd_step_, _unchecked_pgd_init, _unchecked_udr_step_, _unchecked_soft_cost):
    setattr(unchecked, _function.__name__[len("_unchecked_"):], _function)
