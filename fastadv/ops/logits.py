"""The logits family: fused logit-head losses (METHODS.md sections 1 and 2).

Each op reads its [B, C] blocks of logits once per row and returns per-sample losses ([B];
``mhuber`` returns its mean, as seed 002 defines it; ``trades_kl`` also its batch mean or sum). When an input requires a gradient, the
same pass also computes the gradient of every sample's loss with respect to it (Liger-Kernel's
habit), so the backward is a single multiplication by the incoming gradient.

=========================  ============================================================
``soft_cross_entropy``     ``−Σ_j t_j log p_j(z)`` against soft targets t (LTD, LRM)
``smoothed_cross_entropy`` CE against ``1 − s`` on y and ``s/(C−1)`` elsewhere (seed 001)
``boosted_cross_entropy``  MART's BCE ``−log p_y − log(1 − max_{k≠y} p_k)``
``trades_kl``              ``KL(p(z_nat) ‖ p(z_adv))``
``mart_loss``              ``(BCE(p(z_adv), y), KL(p(z_nat) ‖ p(z_adv))·(1 − p_y(z_nat)))``
``margin_sq_hinge``        ``Σ_{j≠y} max(0, z_j − z_y + δ)²`` (seed 002's L')
``mhuber``                 seed 002's modified Huber loss of ``u − v``, mean over elements
``mhuber_moving_average``  ``mhuber`` between moving averages of u and v, which it updates (LMA)
``logit_pairing``          ``‖z_nat − z_adv‖²`` (ALP)
``logit_squeeze``          ``‖z‖²``
=========================  ============================================================

Backends: C++ (CPU), CUDA C++, Triton and the reference (fastadv.backend); schemas in
csrc/ops.cpp, shared row algorithms in csrc/include/fastadv/logits.h. The ops are
differentiable once (the gradient of a gradient is not supported). NaN in the logits
propagates to the loss of its sample. Ties in MART's ``max_{k≠y}`` share its gradient, as
torch's ``amax`` does.
"""
from __future__ import annotations

import math
import types
from dataclasses import dataclass
from typing import Optional

import torch

from .. import backend
from ..reference import logits as reference

__all__ = ["soft_cross_entropy", "smoothed_cross_entropy", "boosted_cross_entropy", "trades_kl", "mart_loss",
           "margin_sq_hinge", "mhuber", "mhuber_moving_average", "logit_pairing", "logit_squeeze"]


@dataclass(frozen=True)
class _Fused:
    """How a fused op's schema is laid out: ``inputs`` differentiable tensors come first and a
    bool flag per input comes last; it returns ``losses`` outputs, then ``extras``
    non-differentiable outputs (state), then one saved gradient per (loss, input) pair of
    ``grads``."""

    name: str
    inputs: int
    losses: int
    grads: tuple
    arguments: int  # every argument of the schema, flags included
    extras: int = 0
    reduction_at: Optional[int] = None  # where the schema's int reduction is (0 none, 1 mean, 2 sum)


_SPECS = {spec.name: spec for spec in (
    _Fused("soft_cross_entropy", 2, 1, ((0, 0), (0, 1)), 4),
    _Fused("smoothed_cross_entropy", 1, 1, ((0, 0),), 4),
    _Fused("boosted_cross_entropy", 1, 1, ((0, 0),), 3),
    _Fused("trades_kl", 2, 1, ((0, 0), (0, 1)), 5, reduction_at=2),
    _Fused("mart_loss", 2, 2, ((0, 1), (1, 0), (1, 1)), 5),
    _Fused("margin_sq_hinge", 1, 1, ((0, 0),), 4),
    _Fused("mhuber", 2, 1, ((0, 0), (0, 1)), 5),
    _Fused("mhuber_moving_average", 2, 1, ((0, 0), (0, 1)), 8, extras=2),
    _Fused("logit_pairing", 2, 1, ((0, 0), (0, 1)), 4),
    _Fused("logit_squeeze", 1, 1, ((0, 0),), 2),
)}


# ----------------------------------------------------------------------------- validation
def _check_logits(op: str, name: str, z, ref: Optional[torch.Tensor] = None) -> torch.Tensor:
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(z).__name__}")
    if not z.is_floating_point():
        raise TypeError(f"{op}: {name} must be a floating-point tensor, got dtype {z.dtype}")
    if ref is None:
        if z.dim() != 2:
            raise ValueError(f"{op}: {name} must have shape [B, C], got {list(z.shape)}")
        if z.shape[1] < 1:
            raise ValueError(f"{op}: {name} must have at least one class, got shape {list(z.shape)}")
        return z
    if z.shape != ref.shape:
        raise ValueError(f"{op}: {name} must have the shape of the first logits {list(ref.shape)}, got {list(z.shape)}")
    if z.device != ref.device:
        raise ValueError(f"{op}: {name} must be on the first logits' device {ref.device}, got {z.device}")
    if z.dtype != ref.dtype:
        raise TypeError(f"{op}: {name} must have the first logits' dtype {ref.dtype}, got {z.dtype}")
    return z


def _check_labels(op: str, y, z: torch.Tensor) -> torch.Tensor:
    if not isinstance(y, torch.Tensor) or y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise TypeError(f"{op}: y must be an integer tensor of class indices, got "
                        f"{y.dtype if isinstance(y, torch.Tensor) else type(y).__name__}")
    if y.shape != (z.shape[0],):
        raise ValueError(f"{op}: y must have shape [B] = [{z.shape[0]}], got {list(y.shape)}")
    if y.device != z.device:
        raise ValueError(f"{op}: y must be on the logits' device {z.device}, got {y.device}")
    if y.numel() and not torch.compiler.is_compiling():
        low, high = torch.aminmax(y)
        if low.item() < 0 or high.item() >= z.shape[1]:
            raise ValueError(f"{op}: every label in y must lie in [0, {z.shape[1]}) for {z.shape[1]} classes, "
                             f"got labels from {low.item()} to {high.item()}")
    return y.to(torch.int64).contiguous()


def _check_number(op: str, name: str, value, *, low: float, high: float = math.inf, low_open: bool = False) -> float:
    if isinstance(value, torch.Tensor) and value.dim() == 0:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{op}: {name} must be a number, got {type(value).__name__}")
    value = float(value)
    below = value <= low if low_open else value < low
    if math.isnan(value) or below or value > high:
        bound = f"> {low}" if low_open else f">= {low}"
        limit = f" and <= {high}" if high != math.inf else ""
        raise ValueError(f"{op}: {name} must be {bound}{limit}, got {value}")
    return value


def _elementwise_rows(shape) -> tuple[int, int]:
    """The [rows, cols] view the mhuber kernels get of a tensor of ``shape``. mhuber is elementwise
    with one mean over every element, so any split into rows gives the same loss; rows of whole
    16-element vectors (up to 1024 elements) spare the kernels the scalar tail each short row
    (a [B, 100] one) would end in. The split depends on the shape alone, so the summation order,
    and the result, do not change from call to call."""
    count, rows = math.prod(shape), shape[0]
    for width in (1024, 512, 256, 128, 64, 32, 16):
        if count % width == 0:
            return count // width, width
    return rows, count // rows


def _classes_at_least(op: str, z: torch.Tensor, classes: int) -> None:
    if z.shape[1] < classes:
        raise ValueError(f"{op}: needs at least {classes} classes, got logits of shape {list(z.shape)}")


# ----------------------------------------------------------------------------- dispatch
def _needs_grad(*tensors) -> list:
    enabled = torch.is_grad_enabled()
    return [bool(enabled and t.requires_grad) for t in tensors]


def _fused_op(name: str, device: torch.device, dtype: torch.dtype):
    """The implementation of ``name`` to call, or None for the reference."""
    chosen = backend.select(name, device, dtype)
    if chosen == "reference":
        return None
    if chosen == "triton":
        return getattr(_triton_ops(), name)
    return getattr(torch.ops.fastadv, name)


def _run(name: str, tensors: tuple, extra: tuple):
    """Runs the fused op on contiguous inputs; returns its loss outputs."""
    spec = _SPECS[name]
    op = _fused_op(name, tensors[0].device, tensors[0].dtype)
    if op is None:
        return None
    inputs = tuple(t.contiguous() for t in tensors[:spec.inputs])
    outputs = op(*inputs, *tensors[spec.inputs:], *extra, *_needs_grad(*tensors[:spec.inputs]))
    return outputs[:spec.losses + spec.extras]


# ----------------------------------------------------------------------------- public ops
def soft_cross_entropy(z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``−Σ_j t_j log softmax(z)_j`` per sample ([B]); ``target`` [B, C] (soft labels, e.g. a
    teacher's probabilities) may require a gradient too."""
    op = "soft_cross_entropy"
    _check_logits(op, "z", z)
    _check_logits(op, "target", target, z)
    result = _run(op, (z, target), ())
    return reference.soft_cross_entropy(z, target) if result is None else result[0]


def smoothed_cross_entropy(z: torch.Tensor, y: torch.Tensor, smoothing: float = 0.1) -> torch.Tensor:
    """Cross-entropy per sample against seed 001's smoothed labels: ``1 − s`` on y and
    ``s / (C − 1)`` on each other class (torch's ``label_smoothing`` spreads s/C over all)."""
    op = "smoothed_cross_entropy"
    _check_logits(op, "z", z)
    _classes_at_least(op, z, 2)
    y = _check_labels(op, y, z)
    smoothing = _check_number(op, "smoothing", smoothing, low=0.0, high=1.0)
    result = _run(op, (z, y), (smoothing,))
    return reference.smoothed_cross_entropy(z, y, smoothing) if result is None else result[0]


def boosted_cross_entropy(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """MART's boosted cross-entropy per sample: ``−log p_y − log(1 − max_{k≠y} p_k)``, the last
    argument clamped at 1e-4 from below (MART's code adds 1e-4)."""
    op = "boosted_cross_entropy"
    _check_logits(op, "z", z)
    _classes_at_least(op, z, 2)
    y = _check_labels(op, y, z)
    result = _run(op, (z, y), ())
    return reference.boosted_cross_entropy(z, y) if result is None else result[0]


_REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}  # at::Reduction's numbering


def trades_kl(z_nat: torch.Tensor, z_adv: torch.Tensor, reduction: str = "none") -> torch.Tensor:
    """``KL(p(z_nat) ‖ p(z_adv))`` per sample ([B]), or its ``"mean"`` or ``"sum"`` over the
    batch (a scalar); differentiable in both (TRADES).

    Prefer ``reduction="mean"`` to ``.mean()`` of the per-sample losses: the op then computes
    the gradients of the mean itself, and a backward that reaches it with gradient 1 (the loss
    is the mean KL, as in ``trades_kl(a, b, "mean").backward()``) returns them without another
    pass over [B, C] (Liger-Kernel's habit)."""
    op = "trades_kl"
    _check_logits(op, "z_nat", z_nat)
    _check_logits(op, "z_adv", z_adv, z_nat)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {', '.join(map(repr, _REDUCTIONS))}, got {reduction!r}")
    result = _run(op, (z_nat, z_adv), (_REDUCTIONS[reduction],))
    return reference.trades_kl(z_nat, z_adv, reduction) if result is None else result[0]


def mart_loss(z_nat: torch.Tensor, z_adv: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MART's two terms per sample: ``(BCE(p(z_adv), y), KL(p(z_nat) ‖ p(z_adv))·(1 − p_y(z_nat)))``;
    the method adds ``mean(BCE) + λ·mean(weighted KL)``. The weight is not detached (MART's code)."""
    op = "mart_loss"
    _check_logits(op, "z_nat", z_nat)
    _check_logits(op, "z_adv", z_adv, z_nat)
    _classes_at_least(op, z_nat, 2)
    y = _check_labels(op, y, z_nat)
    result = _run(op, (z_nat, z_adv, y), ())
    return reference.mart_loss(z_nat, z_adv, y) if result is None else tuple(result)


def margin_sq_hinge(z: torch.Tensor, y: torch.Tensor, delta: float = 0.9) -> torch.Tensor:
    """``Σ_{j≠y} max(0, z_j − z_y + δ)²`` per sample (seed 002's margin loss, δ = 0.9)."""
    op = "margin_sq_hinge"
    _check_logits(op, "z", z)
    y = _check_labels(op, y, z)
    delta = _check_number(op, "delta", delta, low=-math.inf)
    result = _run(op, (z, y), (delta,))
    return reference.margin_sq_hinge(z, y, delta) if result is None else result[0]


def mhuber(u: torch.Tensor, v: torch.Tensor, alpha: float) -> torch.Tensor:
    """Seed 002's modified Huber loss, a scalar: with ``d = u − v`` elementwise,
    ``α²(1 − cos(d/α))`` where ``|d|/α ≤ π/2``, else ``α|d| + (1 − π/2)α²``; mean over all
    elements. ``u`` and ``v`` have any one shape with a leading batch dimension."""
    op = "mhuber"
    for name, t in (("u", u), ("v", v)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"{op}: {name} must be a floating-point tensor, got "
                            f"{t.dtype if isinstance(t, torch.Tensor) else type(t).__name__}")
    if u.dim() < 1:
        raise ValueError(f"{op}: u must have a batch dimension, got a 0-dim tensor")
    _check_logits(op, "v", v, u)
    alpha = _check_number(op, "alpha", alpha, low=0.0, low_open=True)
    shape = _elementwise_rows(u.shape)
    result = _run(op, (u.reshape(shape), v.reshape(shape)), (alpha,)) if u.numel() else None
    return reference.mhuber(u, v, alpha) if result is None else result[0]


def mhuber_moving_average(u: torch.Tensor, v: torch.Tensor, u_average: torch.Tensor, v_average: torch.Tensor,
                          tau: float, alpha: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LMA's regulariser (seed 002): the moving averages ``ū = τ·sg(u_average) + (1 − τ)·u`` and
    ``v̄ = τ·sg(v_average) + (1 − τ)·v`` and ``mhuber(ū, v̄, α)``, in one pass.

    Returns ``(loss, ū, v̄)``; ū and v̄ are detached, the state to pass as the averages of the
    next batch. The gradient reaches u and v only (through the factor 1 − τ).
    """
    op = "mhuber_moving_average"
    _check_logits(op, "u", u)
    for name, t in (("v", v), ("u_average", u_average), ("v_average", v_average)):
        _check_logits(op, name, t, u)
    tau = _check_number(op, "tau", tau, low=0.0, high=1.0)
    alpha = _check_number(op, "alpha", alpha, low=0.0, low_open=True)
    if not u.numel():
        return reference.mhuber_moving_average(u, v, u_average, v_average, tau, alpha)
    shape = _elementwise_rows(u.shape)
    result = _run(op, (u.reshape(shape), v.reshape(shape), u_average.detach().reshape(shape).contiguous(),
                       v_average.detach().reshape(shape).contiguous()), (tau, alpha))
    if result is None:
        return reference.mhuber_moving_average(u, v, u_average, v_average, tau, alpha)
    loss, u_next, v_next = result
    return loss, u_next.reshape(u.shape), v_next.reshape(u.shape)


def logit_pairing(z_nat: torch.Tensor, z_adv: torch.Tensor) -> torch.Tensor:
    """``‖z_nat − z_adv‖²`` per sample (adversarial logit pairing, seed 001 Eq. 2)."""
    op = "logit_pairing"
    _check_logits(op, "z_nat", z_nat)
    _check_logits(op, "z_adv", z_adv, z_nat)
    result = _run(op, (z_nat, z_adv), ())
    return reference.logit_pairing(z_nat, z_adv) if result is None else result[0]


def logit_squeeze(z: torch.Tensor) -> torch.Tensor:
    """``‖z‖²`` per sample (logit squeezing, seed 001)."""
    op = "logit_squeeze"
    _check_logits(op, "z", z)
    result = _run(op, (z,), ())
    return reference.logit_squeeze(z) if result is None else result[0]


# ----------------------------------------------------------------------------- torch.library
def _fake(spec: _Fused):
    """Output metadata of a fused op: losses in the input dtype ([B], or 0-dim for mhuber),
    a [B, C] gradient per saved pair whose input's flag is set, an empty [0] tensor otherwise."""
    def fake(*args):
        inputs, flags = args[:spec.inputs], args[-spec.inputs:]
        first = inputs[0]
        reduced = spec.name.startswith("mhuber") or (spec.reduction_at is not None and args[spec.reduction_at] != 0)
        loss_shape = () if reduced else (first.shape[0],)
        losses = [first.new_empty(loss_shape) for _ in range(spec.losses)]
        extras = [torch.empty_like(first) for _ in range(spec.extras)]
        grads = [torch.empty_like(inputs[j]) if flags[j] else first.new_empty(0) for _, j in spec.grads]
        return tuple(losses + extras + grads)
    return fake


def _is_one(incoming: torch.Tensor) -> bool:
    """Whether ``incoming`` is a scalar gradient of exactly 1, checked only where that is free:
    a plain CPU tensor outside compilation (reading a CUDA scalar would synchronise, and a traced
    gradient has no value)."""
    return (incoming.dim() == 0 and type(incoming) is torch.Tensor and incoming.device.type == "cpu"
            and not torch.compiler.is_compiling() and incoming.item() == 1.0)


def _autograd(spec: _Fused):
    """Backward of a fused op: each input's gradient is Σ over its saved pairs of the incoming
    gradient of that loss (per sample, or the scalar of mhuber) times the saved gradient."""
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*output[spec.losses + spec.extras:])
        ctx.mark_non_differentiable(*output[spec.losses:])
        ctx.set_materialize_grads(False)

    def backward(ctx, *grads):
        result = [None] * spec.arguments
        for (i, j), saved in zip(spec.grads, ctx.saved_tensors):
            incoming = grads[i]
            if incoming is None or saved.dim() == 1:  # an empty [0]: this gradient was not asked for
                continue
            if result[j] is None and _is_one(incoming):
                # A scalar loss reached with gradient 1: the saved gradient is the answer. Autograd
                # adds into it in place only once nothing else holds it (not while retain_graph
                # keeps it saved here), as it does with any gradient a backward returns.
                result[j] = saved
                continue
            scale = incoming.reshape(incoming.shape + (1,) * (saved.dim() - incoming.dim()))
            result[j] = saved * scale if result[j] is None else torch.addcmul(result[j], saved, scale)
        return tuple(result)

    return backward, setup_context


for _spec in _SPECS.values():
    torch.library.register_fake(f"fastadv::{_spec.name}")(_fake(_spec))
    _backward, _setup = _autograd(_spec)
    torch.library.register_autograd(f"fastadv::{_spec.name}", _backward, setup_context=_setup)


_TRITON_OPS = None


def _triton_ops():
    """Registers the Triton implementations on first use, as custom ops with the schemas of the
    C++ ops (see fastadv.ops.pgd._triton_ops for why custom_op rather than triton_op)."""
    global _TRITON_OPS
    if _TRITON_OPS is None:
        from ..kernels import logits as kernels

        namespace = {}
        for spec in _SPECS.values():
            schema = getattr(torch.ops.fastadv, spec.name).default._schema
            op = torch.library.custom_op(f"fastadv::{spec.name}_triton", getattr(kernels, spec.name),
                                         mutates_args=(), schema="(" + str(schema).split("(", 1)[1])
            op.register_fake(_fake(spec))
            backward, setup = _autograd(spec)
            op.register_autograd(backward, setup_context=setup)
            namespace[spec.name] = op
        _TRITON_OPS = types.SimpleNamespace(**namespace)
    return _TRITON_OPS


# ----------------------------------------------------------------------------- unchecked path
def _unchecked_trades_kl(z_nat: torch.Tensor, z_adv: torch.Tensor, reduction: str = "none") -> torch.Tensor:
    result = _run("trades_kl", (z_nat, z_adv), (_REDUCTIONS[reduction],))
    return reference.trades_kl(z_nat, z_adv, reduction) if result is None else result[0]


def _unchecked_margin_sq_hinge(z: torch.Tensor, y: torch.Tensor, delta: float = 0.9) -> torch.Tensor:
    result = _run("margin_sq_hinge", (z, y), (float(delta),))
    return reference.margin_sq_hinge(z, y, delta) if result is None else result[0]


#: The family's ops for callers that validated their arguments once, where they entered (the
#: attacks' loops): no checks, no host synchronisation. Same arguments as the public ops, with
#: labels already a contiguous int64 tensor whose entries lie in [0, C).
unchecked = types.SimpleNamespace(trades_kl=_unchecked_trades_kl, margin_sq_hinge=_unchecked_margin_sq_hinge)
