"""The simplex family: projections onto the probability simplex and the min-norm weights of
multi-objective attacks (METHODS.md section 4, seed 003 ch. 4: TA-MOO).

=========================  ============================================================
``simplex_project``        the Euclidean projection of each row of v [B, m] onto the simplex
                           over its allowed coordinates (exact, no sort; any m)
``simplex_distance_sq``    Ω(w) per row [B], the squared distance of a simplex point to TA-MOO's
                           extended simplex {0 on achieved} × Δ(unachieved); differentiable in w;
                           any m
``min_norm_weights``       per sample, ``argmin_{w ∈ Δ} wᵀQw + λΩ(w)`` for Q [B, m, m] by K steps
                           of a solver (the paper's softmax gradient descent, projected or
                           accelerated projected gradient) or in closed form (m = 2); returns
                           (w [B, m], objective [B]); 1 to :data:`MAX_TASKS` tasks
=========================  ============================================================

Conventions (those of fastadv/reference/simplex.py, the oracle): ``mask`` and ``achieved`` are
bool [B, m] tensors (``None``: every coordinate allowed, no task achieved); a row with no allowed
coordinate counts every coordinate; a NaN or an infinity anywhere in a row makes that whole
row's outputs NaN and no other row's. ``simplex_project`` and ``simplex_distance_sq`` take rows
of any m ≥ 1: up to :data:`MAX_TASKS` coordinates a row is held in registers (a thread's, or a
vector lane's on the CPU); longer rows take the wide path, read in passes by a row's lanes (the
CPU: one thread; CUDA: a warp, or a block above 2048 coordinates; Triton: a program), the
projection's threshold found by selection (safeguarded Newton steps, no sort) and recomputed
exactly from the support it finds. ``min_norm_weights`` takes 1 to :data:`MAX_TASKS` tasks.

The Gram matrix Q of the tasks' gradients and the combination Σ w_i g_i stay torch's bmm/einsum
(they are matrix products). ``min_norm_weights`` runs every step of a row in one kernel, the row's
Q and w in registers. It is an argmin: not differentiable (its outputs carry no gradient).
``simplex_distance_sq`` computes its gradient in the forward pass (as the logits family does) and
its backward multiplies the saved gradient (csrc/autograd/simplex.cpp, as the logits family's).

Backends: C++ (CPU), CUDA C++, Triton and the reference (fastadv.backend); the schemas are in
csrc/ops.cpp, the per-row math in csrc/include/fastadv/simplex.h. Attack loops call
:data:`unchecked`: the same ops without checks and without host synchronisation.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .. import _validate
from ..kernels.limits import SIMPLEX_MAX_TASKS
from ..reference import simplex as reference
from . import _registry

__all__ = ["simplex_project", "simplex_distance_sq", "min_norm_weights"]

#: The solvers of :func:`min_norm_weights`, in the order of their codes in the schema.
SOLVERS = reference.SOLVERS
#: The most tasks ``min_norm_weights`` takes (its kernels keep a row's Q in registers), and the
#: longest row the projection and Ω hold in registers; they take longer rows on the wide path.
MAX_TASKS = SIMPLEX_MAX_TASKS
#: Defaults of the paper's solver (seed 003 ch. 4, Sec. 4 and App. C): K = 10, η_w = 0.005.
DEFAULT_STEPS = reference.SOFTMAX_GD_STEPS
DEFAULT_LR = reference.SOFTMAX_GD_LR

_SOLVER_CODES = {name: code for code, name in enumerate(SOLVERS)}
# The kernels' int count of a row's coordinates (csrc/simplex_glue.h checks the same).
_MAX_COLUMNS = 2**31 - 1
_OPS = ("simplex_project", "simplex_distance_sq", "min_norm_weights")


# ----------------------------------------------------------------------------- validation
def _rows(op: str, name: str, value) -> torch.Tensor:
    """A floating [B, m] tensor with m >= 1 columns (any m; the kernels count a row's coordinates
    in an int): metadata only."""
    _validate.tensor(op, name, value, dim=2)
    if not 1 <= value.shape[1] <= _MAX_COLUMNS:
        raise ValueError(f"{op}: {name} must have shape [B, m] with m >= 1 columns (at most {_MAX_COLUMNS}), got "
                         f"shape {list(value.shape)}")
    return value


def _bool_rows(op: str, name: str, value, like: torch.Tensor, like_name: str) -> Optional[torch.Tensor]:
    """None, or a bool tensor of ``like``'s shape [B, m] on its device."""
    if value is None:
        return None
    if not isinstance(value, torch.Tensor) or value.dtype != torch.bool:
        got = value.dtype if isinstance(value, torch.Tensor) else type(value).__name__
        raise TypeError(f"{op}: {name} must be a bool tensor of shape [B, m] or None, got {got}")
    return _validate.tensor(op, name, value, floating=False, like=like, like_name=like_name, same_dtype=False)


def _gram(op: str, Q) -> torch.Tensor:
    _validate.tensor(op, "Q", Q, dim=3)
    if Q.shape[1] != Q.shape[2] or not 1 <= Q.shape[1] <= MAX_TASKS:
        raise ValueError(f"{op}: Q must have shape [B, m, m] (square, 1 to {MAX_TASKS} tasks: min_norm_weights' "
                         f"limit; simplex_project and simplex_distance_sq take any m), got shape {list(Q.shape)}")
    return Q


# ----------------------------------------------------------------------------- dispatch
def _implementation(name: str, device: torch.device, dtype: torch.dtype, numel: int = 0):
    """The op that runs ``name`` here, or None for the reference."""
    return _FAMILY.kernel(name, device, dtype, True, numel)


def _optional(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.contiguous()


# ----------------------------------------------------------------------------- the ops
def _simplex_project(v: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    v = v.detach()
    op = _implementation("simplex_project", _registry.device_type(v), v.dtype, v.numel())
    if op is None:
        return reference.simplex_project(v, mask)
    return op(v.contiguous(), _optional(mask))


def simplex_project(v: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The Euclidean projection of each row of ``v`` [B, m] onto the probability simplex over its
    allowed coordinates: ``argmin_{w ≥ 0, Σw = 1, w = 0 off the mask} ‖w − v‖²`` ([B, m], v's
    dtype), for any m ≥ 1. ``mask``: bool [B, m], True where a coordinate may carry weight (None:
    all; a row with none allowed: all). TA-MOO's extended simplex is
    ``simplex_project(w, ~achieved)``. Exact: w = max(v − τ, 0), computed after shifting the row by
    its largest allowed entry (exact for ±1e30); for m ≤ MAX_TASKS with
    τ = max_i (Σ_{j: v_j ≥ v_i} v_j − 1) / #{j: v_j ≥ v_i} over the allowed entries, above it with
    τ = (Σ_{j ∈ S} v_j − 1)/|S| over the support S = {j: v_j > τ} that a sort-free selection finds
    (Newton steps on τ, safeguarded by bisection), the sort-based rule's τ to rounding.
    Not differentiable (an update, like the PGD step)."""
    op = "simplex_project"
    _rows(op, "v", v)
    return _simplex_project(v, _bool_rows(op, "mask", mask, v, "v"))


def _simplex_distance_sq(w: torch.Tensor, achieved: Optional[torch.Tensor] = None) -> torch.Tensor:
    op = _implementation("simplex_distance_sq", _registry.device_type(w), w.dtype, w.numel())
    if op is None:
        return reference.simplex_distance_sq(w, achieved)
    # the op makes w contiguous and asks for dΩ/dw when autograd will want it (_registry.fast_op)
    return op(w, _optional(achieved))[0]


def simplex_distance_sq(w: torch.Tensor, achieved: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Ω(w) per row [B] (seed 003 ch. 4, Theorem 1): ``Σ_{i achieved} w_i² + (1/(m − s))(1 −
    Σ_{i not achieved} w_i)²``, s the number of achieved tasks (a row with every task achieved
    counts every task as unachieved). On the simplex, the squared distance from w to the extended
    simplex, ``‖w − simplex_project(w, ~achieved)‖²``. ``achieved``: bool [B, m] or None; any
    m ≥ 1. Differentiable in w (once): the gradient, 2w_i on achieved tasks and
    −(2/(m − s))(1 − Σ_u w) on the others, is computed with Ω."""
    op = "simplex_distance_sq"
    _rows(op, "w", w)
    return _simplex_distance_sq(w, _bool_rows(op, "achieved", achieved, w, "w"))


def _min_norm_weights(Q: torch.Tensor, achieved: Optional[torch.Tensor] = None, lam: float = 0.0,
                      solver: str = "softmax-gd", steps: Optional[int] = None, lr: Optional[float] = None,
                      init: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    Q, init = Q.detach(), None if init is None else init.detach()
    steps = DEFAULT_STEPS if steps is None else steps
    if solver == "softmax-gd" and lr is None:
        lr = DEFAULT_LR
    op = _implementation("min_norm_weights", _registry.device_type(Q), Q.dtype, Q.numel())
    if op is None:
        return reference.min_norm_weights(Q, achieved, lam, solver, steps, lr, init)
    return op(Q.contiguous(), _optional(achieved), _optional(init), float(lam), _SOLVER_CODES[solver], int(steps),
              0.0 if lr is None else float(lr))


def min_norm_weights(Q: torch.Tensor, achieved: Optional[torch.Tensor] = None, lam: float = 0.0,
                     solver: str = "softmax-gd", steps: Optional[int] = None, lr: Optional[float] = None,
                     init: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """TA-MOO's weights per sample: ``w* = argmin_{w ∈ Δ_m} wᵀQw + λΩ(w)`` for Q [B, m, m] (the
    Gram matrix of the tasks' gradients); returns ``(w [B, m], objective [B])``, the objective at
    the returned w, both of Q's dtype.

    ``solver``: ``"softmax-gd"`` (the paper's Algorithm 1, lines 6–10: gradient descent on α with
    w = softmax(α), ``steps`` = 10, ``lr`` = 0.005), ``"pgd"`` / ``"apgd"`` (projected /
    accelerated projected gradient, FISTA, with step 1/L, L = 2‖(Q + Qᵀ)/2‖_F + 2λ; ``steps`` = 10)
    or ``"exact2"`` (m = 2: the closed form; ``steps`` is ignored). ``lr`` is softmax-gd's alone.
    ``achieved``: bool [B, m] or None; ``init`` [B, m]: the starting weights (warm start; uniform
    when None). 1 to :data:`MAX_TASKS` tasks (the kernels hold a row's Q in registers). Not
    differentiable: an argmin (its outputs carry no gradient)."""
    op = "min_norm_weights"
    _gram(op, Q)
    rows = Q[:, :, 0]
    achieved = _bool_rows(op, "achieved", achieved, rows, "Q's rows [B, m]")
    if init is not None:
        _validate.tensor(op, "init", init, like=rows, like_name="Q's rows [B, m]")
    lam = _validate.number(op, "lam", lam, low=0.0)
    if not math.isfinite(lam):
        raise ValueError(f"{op}: lam must be a finite number >= 0, got {lam!r}")
    solver = _validate.choice(op, "solver", solver, SOLVERS)
    steps = _validate.integer(op, "steps", steps, low=1, allow_none=True)
    if solver == "softmax-gd":
        lr = _validate.number(op, "lr", lr, low=0.0, low_open=True, high=math.inf, high_open=True, allow_none=True)
    elif lr is not None:
        raise ValueError(f"{op}: lr is the learning rate of solver 'softmax-gd' only; solver {solver!r} takes "
                         f"no lr, got lr={lr!r}")
    if solver == "exact2" and Q.shape[1] != 2:
        raise ValueError(f"{op}: solver 'exact2' needs m = 2 tasks, got Q of shape {list(Q.shape)}")
    return _min_norm_weights(Q, achieved, lam, solver, steps, lr, init)


# ----------------------------------------------------------------------------- torch.library
def _fake(name: str):
    if name == "simplex_project":
        return lambda v, mask: torch.empty_like(v)
    if name == "simplex_distance_sq":
        return _registry.loss_fake(name)
    return lambda Q, achieved, init, lam, solver, steps, lr: (Q.new_empty(Q.shape[:2]), Q.new_empty(Q.shape[:1]))


def _autograd(name: str):
    """simplex_distance_sq multiplies its saved gradient; the projection and the solver have none."""
    return _registry.saved_gradient_autograd(name) if name == "simplex_distance_sq" else None


_FAMILY = _registry.Family("simplex")
_TRITON = _FAMILY.register(_OPS, fake=_fake, autograd=_autograd).triton
# The C++ op's autograd is in C++ (csrc/autograd/simplex.cpp); the Triton op's is above.


#: The family's ops for callers that validated their arguments once, where they entered (the
#: attacks' loops): no checks, no host synchronisation. Same signatures as the public ops; the
#: arguments must already be what the public ops accept.
unchecked = _FAMILY.unchecked
for _function in (_simplex_project, _simplex_distance_sq, _min_norm_weights):
    _FAMILY.unchecked_op(_function)
