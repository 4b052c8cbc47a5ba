"""The pgd family: random starts and fused projected-gradient steps (METHODS.md section 1).

``pgd_step`` / ``pgd_step_`` run one step of projected gradient ascent for a whole batch in a
single pass over memory (L-inf) or one reduction pass plus one update pass per sample (L2):

    linf: x' = clip(proj_{|x'-x|_inf <= eps}(x_adv + alpha * sign(grad)))
    l2:   x' = clip(proj_{|x'-x|_2 <= eps}(x_adv + alpha * grad / |grad|_2))

A zero gradient leaves its sample where it is (sign(0) = 0; in L2 no step is made). NaN in the
inputs is not an error: like torch's own ops, it propagates to the output of its sample (an
attack loop sees it in the loss at once; checking every element for it would cost a full extra
read of the gradient on every step).

Backends: C++ (CPU), CUDA C++, Triton and the reference (see fastadv.backend); the schemas
are in csrc/ops.cpp. The updates have no autograd: they are not differentiated through.
"""
from __future__ import annotations

import math
import types
from numbers import Real
from typing import Optional

import torch

from .. import backend
from ..reference import pgd as reference

NORMS = ("linf", "l2")
INITS = ("uniform", "normal")
NORMAL_INIT_STD = 0.001  # TRADES / LMA-AT start: x + 0.001 * N(0, I)

__all__ = ["pgd_init", "pgd_step", "pgd_step_"]


# ----------------------------------------------------------------------------- validation
def _shape(t: torch.Tensor) -> list:
    return list(t.shape)


def _check_batch_tensor(op: str, name: str, t, *, floating: bool = True) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if floating and not t.is_floating_point():
        raise TypeError(f"{op}: {name} must be a floating-point tensor, got dtype {t.dtype}")
    if t.dim() < 1:
        raise ValueError(f"{op}: {name} must have a batch dimension, got a 0-dim tensor")
    return t


def _check_like(op: str, name: str, t, ref: torch.Tensor) -> torch.Tensor:
    _check_batch_tensor(op, name, t)
    if t.shape != ref.shape:
        raise ValueError(f"{op}: {name} must have the shape of x_adv {_shape(ref)}, got {_shape(t)}")
    if t.device != ref.device:
        raise ValueError(f"{op}: {name} must be on x_adv's device {ref.device}, got {t.device}")
    if t.dtype != ref.dtype:
        raise TypeError(f"{op}: {name} must have x_adv's dtype {ref.dtype}, got {t.dtype}")
    return t


def _accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _radius(op: str, name: str, value, ref: torch.Tensor):
    """eps/alpha as (float, None) or (0.0, per-sample tensor [B] in the accumulation dtype)."""
    if isinstance(value, torch.Tensor) and value.dim() == 0:
        value = value.item()
    if isinstance(value, Real) and not isinstance(value, bool):
        value = float(value)
        if math.isnan(value) or value < 0:
            raise ValueError(f"{op}: {name} must be >= 0, got {value}")
        return value, None
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a float or a tensor of shape [B], got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{op}: {name} must be a floating-point tensor, got dtype {value.dtype}")
    if value.shape != (ref.shape[0],):
        raise ValueError(f"{op}: {name} must be a float or have shape [B] = [{ref.shape[0]}], got {_shape(value)}")
    if value.device != ref.device:
        raise ValueError(f"{op}: {name} must be on x_adv's device {ref.device}, got {value.device}")
    if not torch.compiler.is_compiling() and bool(((value < 0) | value.isnan()).any()):
        raise ValueError(f"{op}: every entry of {name} must be >= 0 (and not NaN)")
    return 0.0, value.to(_accumulate_dtype(ref.dtype)).contiguous()


def _norm(op: str, norm) -> str:
    if not isinstance(norm, str) or norm.lower() not in NORMS:
        raise ValueError(f"{op}: norm must be one of {NORMS}, got {norm!r}")
    return norm.lower()


def _clip(op: str, clip) -> tuple[float, float]:
    if clip is None:
        return -math.inf, math.inf
    try:
        lo, hi = (float(v) for v in clip)
    except (TypeError, ValueError):
        raise TypeError(f"{op}: clip must be a pair (min, max) of floats or None, got {clip!r}") from None
    if not lo <= hi:
        raise ValueError(f"{op}: clip must satisfy min <= max, got {clip!r}")
    return lo, hi


def _active(op: str, active, ref: torch.Tensor) -> Optional[torch.Tensor]:
    if active is None:
        return None
    if not isinstance(active, torch.Tensor) or active.dtype != torch.bool:
        raise TypeError(f"{op}: active must be a bool tensor of shape [B] or None, got "
                        f"{active.dtype if isinstance(active, torch.Tensor) else type(active).__name__}")
    if active.shape != (ref.shape[0],):
        raise ValueError(f"{op}: active must have shape [B] = [{ref.shape[0]}], got {_shape(active)}")
    if active.device != ref.device:
        raise ValueError(f"{op}: active must be on x_adv's device {ref.device}, got {active.device}")
    return active.contiguous()


def _has_row_layout(t: torch.Tensor) -> bool:
    """Samples are consecutive memory blocks (contiguous and channels_last tensors are)."""
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
    """Validate every argument before anything runs; bring the inputs into one row layout."""
    _check_batch_tensor(op, "x_adv", x_adv)
    _check_like(op, "grad", grad, x_adv)
    _check_like(op, "x", x, x_adv)
    eps_value, eps_per_sample = _radius(op, "eps", eps, x_adv)
    alpha_value, alpha_per_sample = _radius(op, "alpha", alpha, x_adv)
    norm = _norm(op, norm)
    clip_min, clip_max = _clip(op, clip)
    active = _active(op, active, x_adv)
    name = backend.select(op, x_adv.device, x_adv.dtype)
    work = x_adv if _has_row_layout(x_adv) else x_adv.contiguous()
    args = (work, _in_layout_of(grad, work), _in_layout_of(x, work), eps_value, alpha_value,
            eps_per_sample, alpha_per_sample, norm, clip_min, clip_max, active)
    return name, args


def _reference_step(args) -> torch.Tensor:
    x_adv, grad, x, eps, alpha, eps_per_sample, alpha_per_sample, norm, lo, hi, active = args
    return reference.pgd_step(x_adv, grad, x, eps if eps_per_sample is None else eps_per_sample,
                              alpha if alpha_per_sample is None else alpha_per_sample, norm, (lo, hi), active)


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
    name, args = _prepare_step("pgd_step", x_adv, grad, x, eps, alpha, norm, clip, active)
    if name == "reference":
        return _reference_step(args)
    if name == "triton":
        return _triton_ops().pgd_step_triton(*args)
    return torch.ops.fastadv.pgd_step(*args)


def pgd_step_(x_adv: torch.Tensor, grad: torch.Tensor, x: torch.Tensor, eps, alpha, norm: str = "linf",
              clip=(0.0, 1.0), active: Optional[torch.Tensor] = None) -> torch.Tensor:
    """In-place :func:`pgd_step`: updates and returns ``x_adv``. On an invalid argument it
    raises before anything is written, so ``x_adv`` is left untouched."""
    name, args = _prepare_step("pgd_step_", x_adv, grad, x, eps, alpha, norm, clip, active)
    work = args[0]
    if name == "reference":
        x_adv.copy_(_reference_step(args))
        return x_adv
    if name == "triton":
        _triton_ops().pgd_step_triton_(*args)
    else:
        torch.ops.fastadv.pgd_step_(*args)
    if work is not x_adv:  # x_adv had no row layout: the step ran on a contiguous copy
        x_adv.copy_(work)
    return x_adv


def pgd_init(x: torch.Tensor, eps, norm: str = "linf", init: str = "uniform",
             generator: Optional[torch.Generator] = None, clip=(0.0, 1.0)) -> torch.Tensor:
    """A random start for PGD around the clean batch ``x``, clipped to ``clip``.

    init="uniform": L-inf, x + U(-eps, eps) per element; L2, a direction uniform on the sphere
    times a radius eps * U^(1/d), i.e. uniform in the L2 ball of dimension d.
    init="normal": x + 0.001 * N(0, I), the start of TRADES and LMA-AT (eps is not used).
    Randomness comes from torch's generators (``generator`` makes it reproducible); this is a
    composition of torch ops, not a kernel: it runs once per attack, not once per step.
    """
    op = "pgd_init"
    _check_batch_tensor(op, "x", x)
    eps_value, eps_per_sample = _radius(op, "eps", eps, x)
    norm = _norm(op, norm)
    if init not in INITS:
        raise ValueError(f"{op}: init must be one of {INITS}, got {init!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{op}: generator must be a torch.Generator or None, got {type(generator).__name__}")
    clip_min, clip_max = _clip(op, clip)
    broadcast = (x.shape[0],) + (1,) * (x.dim() - 1)
    radius = eps_value if eps_per_sample is None else eps_per_sample.to(x.dtype).reshape(broadcast)
    if init == "normal":
        delta = torch.empty_like(x).normal_(0.0, NORMAL_INIT_STD, generator=generator)
    elif norm == "linf":
        delta = torch.empty_like(x).uniform_(-1.0, 1.0, generator=generator) * radius
    else:
        direction = torch.empty_like(x).normal_(generator=generator)
        direction_norm = direction.flatten(1).norm(dim=1).reshape(broadcast)
        dims = x[0].numel()
        scale = torch.rand(broadcast, generator=generator, device=x.device, dtype=x.dtype) ** (1.0 / dims)
        delta = direction / direction_norm.clamp_min(torch.finfo(x.dtype).tiny) * scale * radius
    return torch.clamp(x + delta, clip_min, clip_max)


# ----------------------------------------------------------------------------- torch.library
@torch.library.register_fake("fastadv::pgd_step")
def _pgd_step_fake(x_adv, grad, x, eps, alpha, eps_per_sample, alpha_per_sample, norm, clip_min, clip_max, active):
    return torch.empty_like(x_adv)


@torch.library.register_fake("fastadv::pgd_step_")
def _pgd_step_inplace_fake(x_adv, grad, x, eps, alpha, eps_per_sample, alpha_per_sample, norm, clip_min, clip_max,
                           active):
    return None


_TRITON_OPS = None


def _triton_ops():
    """Registers the Triton implementations on first use (importing triton takes a while).

    They are custom ops with fake implementations rather than triton_ops: opaque to
    torch.compile exactly like the C++ kernels, which also keeps opcheck and torch.compile
    working in Triton's interpreter (a triton_op's fake run would launch the interpreter on
    fake tensors)."""
    global _TRITON_OPS
    if _TRITON_OPS is None:
        from ..kernels import pgd as kernels

        @torch.library.custom_op("fastadv::pgd_step_triton", mutates_args=())
        def pgd_step_triton(x_adv: torch.Tensor, grad: torch.Tensor, x: torch.Tensor, eps: float, alpha: float,
                            eps_per_sample: Optional[torch.Tensor], alpha_per_sample: Optional[torch.Tensor],
                            norm: str, clip_min: float, clip_max: float,
                            active: Optional[torch.Tensor]) -> torch.Tensor:
            out = torch.empty_like(x_adv)
            kernels.pgd_step_into(out, x_adv, grad, x, eps, alpha, eps_per_sample, alpha_per_sample, norm,
                                  clip_min, clip_max, active)
            return out

        @torch.library.custom_op("fastadv::pgd_step_triton_", mutates_args={"x_adv"})
        def pgd_step_triton_(x_adv: torch.Tensor, grad: torch.Tensor, x: torch.Tensor, eps: float, alpha: float,
                             eps_per_sample: Optional[torch.Tensor], alpha_per_sample: Optional[torch.Tensor],
                             norm: str, clip_min: float, clip_max: float, active: Optional[torch.Tensor]) -> None:
            kernels.pgd_step_into(x_adv, x_adv, grad, x, eps, alpha, eps_per_sample, alpha_per_sample, norm,
                                  clip_min, clip_max, active)

        pgd_step_triton.register_fake(_pgd_step_fake)
        pgd_step_triton_.register_fake(_pgd_step_inplace_fake)
        _TRITON_OPS = types.SimpleNamespace(pgd_step_triton=pgd_step_triton, pgd_step_triton_=pgd_step_triton_)
    return _TRITON_OPS


# ----------------------------------------------------------------------------- unchecked path
def _unchecked_pgd_step_(x_adv: torch.Tensor, grad: torch.Tensor, x: torch.Tensor, eps, alpha, norm: str,
                         clip: tuple, active: Optional[torch.Tensor] = None) -> torch.Tensor:
    """:func:`pgd_step_` for callers that validated their arguments once (an attack's loop):
    no checks and no host synchronisation. ``x_adv`` has a row layout (contiguous or
    channels_last) shared by ``grad`` and ``x``; ``eps``/``alpha`` are floats or contiguous [B]
    tensors on x_adv's device in the accumulation dtype (float64 for float64, else float32);
    ``norm`` is "linf" or "l2"; ``clip`` a (min, max) pair of floats (±inf for no box);
    ``active`` a contiguous bool [B] tensor or None."""
    eps_value, eps_per_sample = (0.0, eps) if isinstance(eps, torch.Tensor) else (eps, None)
    alpha_value, alpha_per_sample = (0.0, alpha) if isinstance(alpha, torch.Tensor) else (alpha, None)
    args = (x_adv, grad, x, eps_value, alpha_value, eps_per_sample, alpha_per_sample, norm, clip[0], clip[1], active)
    name = backend.select("pgd_step_", x_adv.device, x_adv.dtype)
    if name == "reference":
        x_adv.copy_(_reference_step(args))
    elif name == "triton":
        _triton_ops().pgd_step_triton_(*args)
    else:
        torch.ops.fastadv.pgd_step_(*args)
    return x_adv


#: The family's ops for callers that validated their arguments once, where they entered (the
#: attacks): no checks, no host synchronisation. Same arguments as the public ops, already in
#: the form the public ops bring them to (see each function).
unchecked = types.SimpleNamespace(pgd_step_=_unchecked_pgd_step_)
