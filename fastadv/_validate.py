"""Argument checks shared by the ops, the attacks, the methods and the trainer.

Every error names its owner (the op, attack or method: ``"PGD"``, ``"trades_kl"``; or None for a
setting of the trainer, which the command line prints after ``fastadv train:``) and the
argument, says what was expected and shows what was given:

    ValueError: PGD: steps must be an integer >= 1, got 0

Checks of metadata (types, shapes, dtypes, devices) never touch tensor values. Checks of values
held in tensors (labels in range, radii >= 0) read them, which synchronises with a GPU: they run
once where an argument enters (a public op called by a user, an attack's or a method's call),
never inside a loop over steps (the loops call each family's ``unchecked`` ops).
"""
from __future__ import annotations

import contextlib
import math
from numbers import Integral, Real
from typing import Iterable, Optional

import torch

from . import _C  # label_range (fastadv/__init__.py loads it before anything else)

__all__ = ["number", "integer", "choice", "flag", "radius", "clip_range", "tensor", "labels", "values_checked_elsewhere"]

_VALUES_CHECKED_ELSEWHERE = [0]  # the depth of values_checked_elsewhere blocks


@contextlib.contextmanager
def values_checked_elsewhere():
    """Inside the block, checks of values held in tensors (labels in range, radii >= 0) are not
    made: the caller checked them once where they entered. What a CUDA graph's capture needs
    (a capture reads nothing back from the device); metadata is still checked."""
    _VALUES_CHECKED_ELSEWHERE[0] += 1
    try:
        yield
    finally:
        _VALUES_CHECKED_ELSEWHERE[0] -= 1


def _read_values() -> bool:
    return not _VALUES_CHECKED_ELSEWHERE[0] and not torch.compiler.is_compiling()


def _prefix(owner: Optional[str]) -> str:
    return f"{owner}: " if owner else ""


def _interval(low: float, high: float, low_open: bool, high_open: bool) -> str:
    if high == math.inf and low == -math.inf:
        return "a number"
    if high == math.inf:
        return f"{'>' if low_open else '>='} {low:g}"
    if low == -math.inf:
        return f"{'<' if high_open else '<='} {high:g}"
    return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def number(owner: Optional[str], name: str, value, *, low: float = -math.inf, high: float = math.inf,
           low_open: bool = False, high_open: bool = False, allow_none: bool = False) -> Optional[float]:
    """``value`` as a float in the interval (bounds included unless open; NaN never passes).
    A 0-dim tensor is read (one synchronisation). None passes only with ``allow_none``."""
    if type(value) is float:  # the common case, without the abstract Real's isinstance
        if (value > low if low_open else value >= low) and (value < high if high_open else value <= high):
            return value
    if value is None and allow_none:
        return None
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.is_complex():
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{_prefix(owner)}{name} must be a number, got {type(value).__name__}")
    value = float(value)
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    if not (above and below):  # NaN fails both comparisons
        bound = _interval(low, high, low_open, high_open)
        raise ValueError(f"{_prefix(owner)}{name} must be {bound}, got {value!r}")
    return value


def integer(owner: Optional[str], name: str, value, *, low: int = 1, high: Optional[int] = None,
            allow_none: bool = False) -> Optional[int]:
    """``value`` as an int from ``low`` to ``high`` (both included; no upper bound by default)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{_prefix(owner)}{name} must be an integer, got {type(value).__name__}")
    value = int(value)
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{_prefix(owner)}{name} must be an integer {bound}, got {value}")
    return value


def choice(owner: Optional[str], name: str, value, choices: Iterable[str], *, allow_none: bool = False):
    """``value``, one of ``choices`` (strings compared as given)."""
    choices = tuple(choices)
    if value is None and allow_none:
        return None
    if not isinstance(value, str) or value not in choices:
        options = ", ".join(map(repr, choices)) + (" or None" if allow_none else "")
        raise ValueError(f"{_prefix(owner)}{name} must be one of {options}, got {value!r}")
    return value


def flag(owner: Optional[str], name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{_prefix(owner)}{name} must be a bool, got {type(value).__name__}")
    return value


def radius(owner: Optional[str], name: str, value, *, like: Optional[torch.Tensor] = None,
           dtype: Optional[torch.dtype] = None, allow_none: bool = False):
    """A radius or step size: a float >= 0, or a floating tensor of shape [B] whose entries are
    all >= 0 (read once: one synchronisation). With ``like`` (a batch [B, ...]) the tensor must
    have B entries and is returned on ``like``'s device, in ``dtype`` when given, contiguous."""
    if type(value) is float and value >= 0.0:  # the common case (NaN fails the comparison)
        return value
    if value is None and allow_none:
        return None
    if isinstance(value, torch.Tensor) and value.dim() == 0:
        value = value.item()
    if isinstance(value, Real) and not isinstance(value, bool):
        return number(owner, name, value, low=0.0)
    if not isinstance(value, torch.Tensor):
        expected = "a float or a tensor of shape [B]" + (" or None" if allow_none else "")
        raise TypeError(f"{_prefix(owner)}{name} must be {expected}, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{_prefix(owner)}{name} must be a floating-point tensor, got dtype {value.dtype}")
    if value.dim() != 1 or (like is not None and value.shape[0] != like.shape[0]):
        batch = "B" if like is None else f"B] = [{like.shape[0]}"
        raise ValueError(f"{_prefix(owner)}{name} must be a float or have shape [{batch}], got {list(value.shape)}")
    if _read_values() and bool(((value < 0) | value.isnan()).any()):
        raise ValueError(f"{_prefix(owner)}every entry of {name} must be >= 0 (and not NaN)")
    value = value.detach()
    if like is not None:
        value = value.to(device=like.device, dtype=dtype or value.dtype).contiguous()
    return value


def clip_range(owner: Optional[str], clip, name: str = "clip") -> tuple[float, float]:
    """The (min, max) box of valid inputs, or (-inf, inf) for None."""
    if clip is None:
        return -math.inf, math.inf
    if type(clip) is tuple and len(clip) == 2 and type(clip[0]) is float and type(clip[1]) is float \
            and clip[0] <= clip[1]:
        return clip
    try:
        low, high = (float(v) for v in clip)
    except (TypeError, ValueError):
        raise TypeError(f"{_prefix(owner)}{name} must be a pair (min, max) of floats or None, got {clip!r}") from None
    if not low <= high:
        raise ValueError(f"{_prefix(owner)}{name} must satisfy min <= max, got {clip!r}")
    return low, high


def tensor(owner: Optional[str], name: str, value, *, floating: bool = True, dim: Optional[int] = None,
           min_dim: int = 0, like: Optional[torch.Tensor] = None, like_name: str = "the first input",
           same_dtype: bool = True) -> torch.Tensor:
    """A tensor: floating (when asked), of ``dim`` dimensions (or at least ``min_dim``), and with
    the shape, device (and dtype, unless ``same_dtype`` is False) of ``like`` when given."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{_prefix(owner)}{name} must be a torch.Tensor, got {type(value).__name__}")
    if floating and not value.is_floating_point():
        raise TypeError(f"{_prefix(owner)}{name} must be a floating-point tensor, got dtype {value.dtype}")
    if dim is not None and value.dim() != dim:
        raise ValueError(f"{_prefix(owner)}{name} must have {dim} dimensions, got shape {list(value.shape)}")
    if value.dim() < min_dim:
        what = "a batch dimension" if min_dim == 1 else f"at least {min_dim} dimensions"
        raise ValueError(f"{_prefix(owner)}{name} must have {what}, got shape {list(value.shape)}")
    if like is not None:
        if value.shape != like.shape:
            raise ValueError(f"{_prefix(owner)}{name} must have the shape of {like_name} {list(like.shape)}, "
                             f"got {list(value.shape)}")
        if value.device != like.device:
            raise ValueError(f"{_prefix(owner)}{name} must be on {like_name}'s device {like.device}, "
                             f"got {value.device}")
        if same_dtype and value.dtype != like.dtype:
            raise TypeError(f"{_prefix(owner)}{name} must have {like_name}'s dtype {like.dtype}, got {value.dtype}")
    return value


_LABEL_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def _label_range(y: torch.Tensor) -> tuple[int, int]:
    """The smallest and largest label, read in one pass: by fastadv._C on the CPU (torch's
    aminmax and tolist cost more than a small op), by one aminmax and one read elsewhere."""
    if y.is_cpu:
        return _C.label_range(y)
    return tuple(torch.stack(torch.aminmax(y)).tolist())


def labels(owner: Optional[str], y, *, batch: int, classes: Optional[int], device: torch.device,
           name: str = "y") -> torch.Tensor:
    """Class indices: an integer tensor of shape [batch] on ``device``, every entry in
    [0, classes) (read once: one synchronisation; skipped with ``classes=None``, while
    torch.compile traces and inside :func:`values_checked_elsewhere`). Returned as a contiguous
    int64 tensor."""
    if not isinstance(y, torch.Tensor) or y.dtype not in _LABEL_DTYPES:
        got = y.dtype if isinstance(y, torch.Tensor) else type(y).__name__
        raise TypeError(f"{_prefix(owner)}{name} must be an integer tensor of class indices, got {got}")
    if y.shape != (batch,):
        raise ValueError(f"{_prefix(owner)}{name} must have shape [B] = [{batch}], got {list(y.shape)}")
    if y.device != device:
        raise ValueError(f"{_prefix(owner)}{name} must be on {device}, got {y.device}")
    if classes is not None and y.numel() and _read_values():
        low, high = _label_range(y)
        if low < 0 or high >= classes:
            raise ValueError(f"{_prefix(owner)}every label in {name} must lie in [0, {classes}) for {classes} "
                             f"classes, got labels from {low} to {high}")
    return y if y.dtype is torch.int64 and y.is_contiguous() else y.to(torch.int64).contiguous()
