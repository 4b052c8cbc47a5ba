"""Multi-objective PGD: TA-MOO, MOO, MinMax and Uniform (METHODS.md section 4, seed 003 ch. 4).

A *task set* turns one perturbation problem into m tasks f_1..f_m to maximise jointly:

- :class:`EnsembleTasks` (ENS): task i is fooling member i of an ensemble,
  ``f_i = loss(h_i(x + δ), y)``, achieved when ``argmax h_i(x + δ) ≠ y``;
- :class:`UniversalTasks` (UNI): one δ shared by each group of K consecutive images of the
  batch, task j is image j of the group, ``f_j = loss(h(x_j + δ), y_j)``, achieved when the
  prediction on ``x_j + δ`` differs from the prediction on ``x_j`` (the seed's goal);
- :class:`TransformTasks` (EoT): task i is a family of transformations P_i (the families of
  :mod:`fastadv.attacks.transforms`, seed 003 Table 9:
  identity, flips, centre crop, brightness, rotation, gamma; fixed or sampled),
  ``f_i = E_{t∼P_i} loss(h(t(x + δ)), y)``, achieved when the prediction on ``t(x + δ)``
  differs from the prediction on x.

:class:`MultiObjectivePGD` ascends them with L∞ sign steps (Algorithm 1 of the seed),
``δ ← Π(δ + η·sign(Σ_i w_i ∇_δ f_i))``, the weights w [P, m] chosen per problem by ``weighting``:

- ``uniform``: w = 1/m;
- ``minmax`` (Wang et al. 2021, the seed's baseline): ``max_δ min_{w∈Δ} Σ w_i f_i + (γ/2)‖w − 1/m‖²``
  by alternating steps: the δ step uses the current w, then
  ``w ← Π_Δ(w − β (f(δ) + γ(w − 1/m)))`` with f at the new δ (the authors' ``minmax_ens``:
  γ = 3, step β = 1/40); the exact projection is :func:`fastadv.ops.simplex_project`;
- ``moo``: w = argmin_{w∈Δ} wᵀQw with ``Q_ij = ∇f_i·∇f_j`` (MGDA);
- ``tamoo``: w = argmin_{w∈Δ} wᵀQw + λ·Ω(w) with the task-oriented regulariser Ω over the
  achieved tasks (λ = 100).

The weights of moo and tamoo come from :func:`fastadv.ops.min_norm_weights` with every
problem of the batch solved at once on the device: ``solver="softmax-gd"`` is the seed's
(w = softmax(α), K = 10 steps of lr 0.005, warm-started from the previous attack step), and
``pgd`` / ``apgd`` / ``exact2`` (m = 2) are exact solvers. The per-problem Gram matrix
``Q = G Gᵀ`` of the task gradients G [P, m, D] and the combination ``Σ_i w_i G_i`` are torch
``bmm`` / ``einsum`` (one matrix product each).

Every task gets its own copy of δ (``[m, P, ...]``), so that one backward pass gives every
task's gradient (task i sees only copy i) and no Python loop runs over samples or problems.
Nothing is read back from the device during the steps.
"""
from __future__ import annotations

import abc
import functools
import math
from typing import NamedTuple, Optional, Sequence

import torch
from torch import nn

from .. import _validate as check
from ..distributed import batch_noise
from ..ensemble import Ensemble
from ..ops import simplex as simplex_ops
from . import graph as graphs
from .base import Attack
from .losses import CW_KAPPA, UNCHECKED
from .transforms import TRANSFORMS

__all__ = ["MultiObjectivePGD", "MultiObjectiveResult", "TaskSet", "EnsembleTasks", "UniversalTasks",
           "TransformTasks", "WEIGHTINGS", "MOO_LOSSES", "multi_objective_metrics"]

WEIGHTINGS = ("uniform", "minmax", "moo", "tamoo")
MOO_LOSSES = ("ce", "kl", "cw")
# Seed 003 ch. 4 (Sec. 4, App. C): 100 steps, η = 2/255, ε = 8/255, λ = 100, GD solver K = 10,
# lr 0.005; MinMax γ = 3 with the authors' implementation, whose minmax_ens steps w by 1/β, β = 40.
DEFAULT_STEPS = 100
TAMOO_LAMBDA = 100.0
MINMAX_GAMMA = 3.0
MINMAX_STEP = 1.0 / 40.0


# ----------------------------------------------------------------------------- task sets
class TaskSet(abc.ABC):
    """m tasks over a batch of B samples making P perturbation problems (see the module
    docstring). Subclasses define how a batch maps to problems and how each task's loss and
    goal are computed from its own copy of the perturbations."""

    #: the classifier the attack switches to eval mode (an Ensemble for ENS)
    model: nn.Module
    name: str = ""

    @property
    @abc.abstractmethod
    def tasks(self) -> int:
        """m, the number of tasks."""

    @abc.abstractmethod
    def task_names(self) -> list:
        """A short name per task, for the A-i columns."""

    def problems(self, x: torch.Tensor) -> int:
        """P, the number of perturbations for a batch (B, or B / K for UNI)."""
        return x.shape[0]

    def check_batch(self, owner: str, x: torch.Tensor) -> None:
        """Raise if the batch cannot be split into problems."""

    def perturbation_shape(self, x: torch.Tensor) -> tuple:
        return (self.problems(x),) + tuple(x.shape[1:])

    def bounds(self, x: torch.Tensor, clip) -> tuple:
        """(low, high) [P, ...]: the box δ must stay in so that every input it touches stays in clip."""
        return clip[0] - x, clip[1] - x

    def apply(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """The adversarial batch [B, ...] of perturbations δ [P, ...]."""
        return x + delta

    @abc.abstractmethod
    def prepare(self, attack: "MultiObjectivePGD", x: torch.Tensor, y: torch.Tensor) -> dict:
        """What the steps need that does not change with δ, computed without autograd: at least
        ``logits``, the clean logits [B, C] of (the first) model, on which the labels are checked."""

    @abc.abstractmethod
    def evaluate(self, attack: "MultiObjectivePGD", x, y, copies: torch.Tensor, state: dict, generator):
        """Per-task losses f [P, m] and goals achieved [P, m] (bool) for the copies [m, P, ...]
        of the perturbations, task i computed from ``copies[i]`` only."""


def _loss(attack: "MultiObjectivePGD", z: torch.Tensor, y: torch.Tensor, z_clean: Optional[torch.Tensor]):
    if attack.loss == "ce":
        return UNCHECKED["ce"](z, y)
    if attack.loss == "kl":
        return UNCHECKED["kl"](z, z_clean)
    return UNCHECKED["cw"](z, y, attack.kappa)


class EnsembleTasks(TaskSet):
    """ENS: task i fools member i of ``ensemble`` (an :class:`fastadv.models.Ensemble` or a
    sequence of classifiers): ``f_i = loss(h_i(x + δ_i), y)``, achieved when
    ``argmax h_i(x + δ) ≠ y``. The KL loss compares with member i's own clean prediction."""

    name = "ens"

    def __init__(self, ensemble):
        owner = "EnsembleTasks"
        if isinstance(ensemble, Ensemble):
            self.model = ensemble
            self.members = list(ensemble.members)
        else:
            if isinstance(ensemble, nn.Module) or not isinstance(ensemble, Sequence):
                raise TypeError(f"{owner}: ensemble must be an Ensemble or a list of nn.Modules, "
                                f"got {type(ensemble).__name__}")
            if any(not isinstance(member, nn.Module) for member in ensemble):
                raise TypeError(f"{owner}: every member of ensemble must be an nn.Module")
            self.members = list(ensemble)
            self.model = nn.ModuleList(self.members)
        if not self.members:
            raise ValueError(f"{owner}: ensemble must have at least one member (an empty task list)")
        if len(self.members) > simplex_ops.MAX_TASKS:
            raise ValueError(f"{owner}: at most {simplex_ops.MAX_TASKS} members (tasks), got {len(self.members)}")

    @property
    def tasks(self) -> int:
        return len(self.members)

    def task_names(self) -> list:
        return [f"member {i}" for i in range(self.tasks)]

    def prepare(self, attack, x, y):
        # Every member's clean logits only for KL (the labels are checked on the first's).
        members = self.members if attack.loss == "kl" else self.members[:1]
        with torch.no_grad():
            clean = [attack.forward(member, x) for member in members]
        return {"logits": clean[0], "clean": clean if attack.loss == "kl" else None}

    def evaluate(self, attack, x, y, copies, state, generator):
        if isinstance(self.model, Ensemble):  # member i on x + δ_i, all at once (sharded: one per rank)
            zs = attack.forward(self.model.member_logits_each, x + copies)
        else:
            zs = [attack.forward(member, x + copies[i]) for i, member in enumerate(self.members)]
        losses, achieved = [], []
        for i, z in enumerate(zs):
            losses.append(_loss(attack, z, y, state["clean"][i] if state["clean"] else None))
            achieved.append(z.argmax(dim=1) != y)
        return torch.stack(losses, dim=1), torch.stack(achieved, dim=1)


class UniversalTasks(TaskSet):
    """UNI: one perturbation shared by each group of ``group`` consecutive images of the batch
    (K = 4 by default); task j of a group is its image j, ``f_j = loss(h(x_j + δ), y_j)``, achieved
    when ``argmax h(x_j + δ) ≠ argmax h(x_j)`` (the seed's goal: the prediction changes). The
    batch size must be a multiple of K. δ stays in the box where every image of its group is
    valid: ``max_j(lo − x_j) ≤ δ ≤ min_j(hi − x_j)``."""

    name = "uni"

    def __init__(self, model: nn.Module, group: int = 4):
        owner = "UniversalTasks"
        if not isinstance(model, nn.Module):
            raise TypeError(f"{owner}: model must be an nn.Module, got {type(model).__name__}")
        self.model = model
        self.group = check.integer(owner, "group", group, low=1, high=simplex_ops.MAX_TASKS)

    @property
    def tasks(self) -> int:
        return self.group

    def task_names(self) -> list:
        return [f"image {j}" for j in range(self.group)]

    def problems(self, x):
        return x.shape[0] // self.group

    def check_batch(self, owner, x):
        if x.shape[0] % self.group:
            raise ValueError(f"{owner}: UNI needs a batch that is a multiple of group={self.group}, "
                             f"got {x.shape[0]} samples")

    def _grouped(self, t: torch.Tensor) -> torch.Tensor:
        """[B, ...] -> [K, P, ...]: image j of every group in slot j."""
        return t.reshape((-1, self.group) + tuple(t.shape[1:])).transpose(0, 1)

    def bounds(self, x, clip):
        grouped = self._grouped(x)
        return clip[0] - grouped.amin(dim=0), clip[1] - grouped.amax(dim=0)

    def apply(self, x, delta):
        return x + delta.repeat_interleave(self.group, dim=0)

    def prepare(self, attack, x, y):
        with torch.no_grad():
            z = attack.forward(self.model, x)
        return {"logits": z, "clean": self._grouped(z), "prediction": self._grouped(z.argmax(dim=1)),
                "y": self._grouped(y)}

    def evaluate(self, attack, x, y, copies, state, generator):
        inputs = self._grouped(x) + copies                       # [K, P, ...]
        z = attack.forward(self.model, inputs.flatten(0, 1))     # [K·P, C]
        labels = state["y"].flatten(0, 1)
        clean = state["clean"].flatten(0, 1)
        f = _loss(attack, z, labels, clean).reshape(self.group, -1).t()
        achieved = (z.argmax(dim=1) != state["prediction"].flatten(0, 1)).reshape(self.group, -1).t()
        return f, achieved


class TransformTasks(TaskSet):
    """EoT: task i is the transformation family ``transforms[i]`` (names of :data:`TRANSFORMS`,
    seed 003 Table 9; all seven by default), ``f_i = E_{t∼P_i} loss(h(t(x + δ)), y)`` estimated
    with ``samples`` draws per step (the families are fixed transformations unless
    ``stochastic``), achieved when ``argmax h(t(x + δ)) ≠ argmax h(x)``. The KL loss compares with
    the clean prediction h(x)."""

    name = "eot"

    def __init__(self, model: nn.Module, transforms: Sequence[str] = tuple(TRANSFORMS), stochastic: bool = False,
                 samples: int = 1):
        owner = "TransformTasks"
        if not isinstance(model, nn.Module):
            raise TypeError(f"{owner}: model must be an nn.Module, got {type(model).__name__}")
        if isinstance(transforms, str):
            transforms = [transforms]
        transforms = list(transforms)
        if not transforms:
            raise ValueError(f"{owner}: transforms must name at least one of {tuple(TRANSFORMS)} (an empty task list)")
        for name in transforms:
            check.choice(owner, "transforms", name, TRANSFORMS)
        if len(transforms) > simplex_ops.MAX_TASKS:
            raise ValueError(f"{owner}: at most {simplex_ops.MAX_TASKS} transforms (tasks), got {len(transforms)}")
        self.model = model
        self.transforms = transforms
        self.stochastic = check.flag(owner, "stochastic", stochastic)
        self.samples = check.integer(owner, "samples", samples, low=1)

    @property
    def tasks(self) -> int:
        return len(self.transforms)

    def task_names(self) -> list:
        return list(self.transforms)

    def prepare(self, attack, x, y):
        with torch.no_grad():
            z = attack.forward(self.model, x)
        return {"logits": z, "clean": z, "prediction": z.argmax(dim=1)}

    def evaluate(self, attack, x, y, copies, state, generator):
        losses, achieved = [], []
        for i, name in enumerate(self.transforms):
            draws = self.samples if self.stochastic else 1
            inputs = x + copies[i]
            transformed = torch.cat([TRANSFORMS[name](inputs, self.stochastic, generator) for _ in range(draws)])
            z = attack.forward(self.model, transformed)
            repeat = lambda t: t.repeat((draws,) + (1,) * (t.dim() - 1))  # noqa: E731
            loss = _loss(attack, z, repeat(y), repeat(state["clean"]))
            losses.append(loss.reshape(draws, -1).mean(dim=0))
            # The goal on the first draw (every draw when there is one: the fixed families).
            achieved.append(z[:len(x)].argmax(dim=1) != state["prediction"])
        return torch.stack(losses, dim=1), torch.stack(achieved, dim=1)


# ----------------------------------------------------------------------------- the attack
class MultiObjectiveResult(NamedTuple):
    """What one attack call found: the adversarial batch, and per problem [P, m] which tasks
    reached their goal at the end and the last weights."""

    x_adv: torch.Tensor
    achieved: torch.Tensor
    weights: torch.Tensor


def multi_objective_metrics(achieved: torch.Tensor) -> dict:
    """A-All (every task of a problem reached its goal), A-Avg (the mean over tasks) and A-i
    (task i), in percent, from the achieved flags [P, m] of every problem."""
    achieved = achieved.to(torch.float64)
    return {"a_all": 100 * achieved.all(dim=1).double().mean().item() if achieved.numel() else math.nan,
            "a_avg": 100 * achieved.mean().item(),
            "a_i": [100 * v for v in achieved.mean(dim=0).tolist()]}


class MultiObjectivePGD(Attack):
    """L∞ multi-objective PGD over a task set (see the module docstring).

    Args:
        tasks: an :class:`EnsembleTasks`, :class:`UniversalTasks` or :class:`TransformTasks`.
        weighting: ``uniform | minmax | moo | tamoo``.
        loss: ``ce | kl | cw`` (CW: the margin ``min(max_{j≠y} z_j − z_y, κ)``, κ = 50).
        eps, alpha, steps: ε = 8/255, η = 2/255, 100 steps (the seed's).
        solver, solver_steps, solver_lr: how moo / tamoo find w (``softmax-gd`` with K = 10 and
            lr 0.005, the seed's; or ``pgd``, ``apgd``, ``exact2``), warm-started from the previous
            step's weights.
        lam: λ of TA-MOO (100). gamma, minmax_step: γ = 3 and the step 1/β = 1/40 of MinMax.
        seed: seeds the random start (δ₀ ∼ U(−ε, ε), Algorithm 1) and the stochastic transformations.
        graph: False, True or "auto": on CUDA, the whole run (start, steps, solves, final goals)
            captured as a CUDA graph once per task set, batch shape and settings and replayed per
            call, as PGD's ``graph`` (:mod:`fastadv.attacks.graph`); the seeded generator is one
            object per attack, reseeded every call, so a replay draws what an eager call draws.

    ``attack(x, y)`` returns the adversarial batch; :meth:`run` also returns the goals and weights.
    """

    def __init__(self, tasks: TaskSet, weighting: str = "tamoo", loss: str = "ce", eps=8 / 255, alpha: float = 2 / 255,
                 steps: int = DEFAULT_STEPS, solver: str = "softmax-gd", solver_steps: Optional[int] = None,
                 solver_lr: Optional[float] = None, lam: float = TAMOO_LAMBDA, gamma: float = MINMAX_GAMMA,
                 minmax_step: float = MINMAX_STEP, kappa: float = CW_KAPPA, seed: Optional[int] = None,
                 amp_dtype: Optional[torch.dtype] = None, clip=(0.0, 1.0), graph=False):
        owner = type(self).__name__
        if not isinstance(tasks, TaskSet):
            raise TypeError(f"{owner}: tasks must be an EnsembleTasks, UniversalTasks or TransformTasks, "
                            f"got {type(tasks).__name__}")
        super().__init__(tasks.model, eps, amp_dtype=amp_dtype, clip=clip)
        self._result: Optional[MultiObjectiveResult] = None
        if isinstance(self.eps, torch.Tensor):
            raise ValueError(f"{owner}: eps must be a float (one radius for every problem)")
        self.tasks = tasks
        self.weighting = check.choice(owner, "weighting", weighting, WEIGHTINGS)
        self.loss = check.choice(owner, "loss", loss, MOO_LOSSES)
        self.alpha = check.number(owner, "alpha", alpha, low=0, low_open=True)
        self.steps = check.integer(owner, "steps", steps, low=0)
        self.solver = check.choice(owner, "solver", solver, simplex_ops.SOLVERS)
        if self.solver == "exact2" and tasks.tasks != 2 and self.weighting in ("moo", "tamoo"):
            raise ValueError(f"{owner}: solver='exact2' needs exactly 2 tasks, the task set has {tasks.tasks}")
        self.solver_steps = None if solver_steps is None else check.integer(owner, "solver_steps", solver_steps, low=1)
        if solver_lr is not None and self.solver != "softmax-gd":
            raise ValueError(f"{owner}: solver_lr is the step of solver='softmax-gd'; the {self.solver!r} solver "
                             f"takes no learning rate")
        self.solver_lr = None if solver_lr is None else check.number(owner, "solver_lr", solver_lr, low=0, low_open=True)
        self.lam = check.number(owner, "lam", lam, low=0)
        self.gamma = check.number(owner, "gamma", gamma, low=0)
        self.minmax_step = check.number(owner, "minmax_step", minmax_step, low=0, low_open=True)
        self.kappa = check.number(owner, "kappa", kappa, low=0, low_open=True)
        self.seed = None if seed is None else check.integer(owner, "seed", seed, low=0)
        self.graph = graphs.graph_mode(owner, graph)
        self._graph_generator: Optional[torch.Generator] = None

    def forward(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """A module's logits, under autocast when ``amp_dtype`` is set (then float32)."""
        if self.amp_dtype is None:
            return module(x)
        with torch.autocast(device_type=x.device.type, dtype=self.amp_dtype):
            z = module(x)
        return z.float()

    def perturb(self, x, y, eps, **overrides):
        self._result = self._run(x, y, eps)
        return self._result.x_adv

    def run(self, x: torch.Tensor, y: torch.Tensor) -> MultiObjectiveResult:
        """The attack with what it found: the adversarial batch, the goals [P, m] reached at the
        end and the final weights [P, m]."""
        try:
            x_adv = self(x, y)
            result = self._result
        finally:
            self._result = None
        return MultiObjectiveResult(x_adv, result.achieved.detach(), result.weights.detach())

    def _run(self, x, y, eps) -> MultiObjectiveResult:
        owner = type(self).__name__
        self.tasks.check_batch(owner, x)
        generator = None
        if self.seed is not None:
            if self.graph and x.is_cuda:
                # one generator object per attack (a graph registers it), reseeded every call
                if self._graph_generator is None or self._graph_generator.device != x.device:
                    self._graph_generator = torch.Generator(device=x.device)
                generator = self._graph_generator.manual_seed(self.seed)
            else:
                generator = torch.Generator(device=x.device).manual_seed(self.seed)
        if self.graph:
            result = graphs.run_graphed(owner, self.graph, self.model, self._graph_settings(), x, y, eps, self.alpha,
                                        functools.partial(self._ascend, generator=generator), self.check_labels,
                                        generator)
            if result is not None:
                return result
        return self._ascend(x, y, eps, self.alpha, self.check_labels, generator)

    def _graph_settings(self) -> tuple:
        """What a captured run depends on besides its tensors: a change captures a new graph."""
        return (type(self), type(self.tasks), id(self.tasks), self.weighting, self.loss, self.steps, self.solver,
                self.solver_steps, self.solver_lr, self.lam, self.gamma, self.minmax_step, self.kappa, self.amp_dtype,
                self.clip)

    def _ascend(self, x, y, eps, alpha, check_labels, generator) -> MultiObjectiveResult:
        """The attack's run as a function of its tensors (what a CUDA graph captures); it calls
        ``check_labels(logits, y)`` on the clean logits unless it is None."""
        tasks = self.tasks
        m, problems = tasks.tasks, tasks.problems(x)
        state = tasks.prepare(self, x, y)
        if check_labels is not None:
            check_labels(state["logits"], y)
        low, high = tasks.bounds(x, self.clip)
        low, high = torch.clamp(low, min=-eps), torch.clamp(high, max=eps)
        shape = tasks.perturbation_shape(x)
        # drawn for the global batch in a training step under torchrun (fastadv.distributed)
        noise = batch_noise(x.new_empty(shape), lambda t: t.uniform_(generator=generator))
        delta = torch.maximum(torch.minimum((2 * noise - 1) * eps, high), low)
        weights = torch.full((problems, m), 1.0 / m, device=x.device, dtype=torch.float32 if x.dtype != torch.float64 else x.dtype)
        achieved = torch.zeros((problems, m), dtype=torch.bool, device=x.device)
        for step in range(self.steps):
            copies = delta.unsqueeze(0).expand((m,) + tuple(shape)).clone().requires_grad_(True)
            losses, achieved = tasks.evaluate(self, x, y, copies, state, generator)
            if self.weighting in ("uniform", "minmax"):
                if self.weighting == "minmax" and step > 0:
                    weights = self._minmax_update(weights, losses.detach())
                (grad,) = torch.autograd.grad((weights.to(losses.dtype) * losses).sum(), copies)
                direction = grad.sum(dim=0)
            else:
                (grad,) = torch.autograd.grad(losses.sum(), copies)
                G = grad.flatten(2).transpose(0, 1).to(weights.dtype)            # [P, m, D]
                Q = torch.bmm(G, G.transpose(1, 2))                              # [P, m, m]
                weights, _ = simplex_ops.unchecked.min_norm_weights(
                    Q, achieved if self.weighting == "tamoo" else None, self.lam if self.weighting == "tamoo" else 0.0,
                    self.solver, self.solver_steps, self.solver_lr, weights)
                direction = torch.einsum("pm,pmd->pd", weights, G).reshape(shape)
            with torch.no_grad():
                delta = torch.maximum(torch.minimum(delta + alpha * torch.sign(direction).to(delta.dtype), high), low)
        with torch.no_grad():
            copies = delta.unsqueeze(0).expand((m,) + tuple(shape))
            _, achieved = tasks.evaluate(self, x, y, copies, state, generator)
        return MultiObjectiveResult(tasks.apply(x, delta).detach(), achieved, weights)

    def _minmax_update(self, weights: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        """``w ← Π_Δ(w − β (f + γ(w − 1/m)))``: one projected gradient step of the inner
        minimisation of ``Σ w_i f_i + (γ/2)‖w − 1/m‖²`` (Wang et al. 2021's minmax_ens update,
        written for losses that the attack maximises)."""
        m = weights.shape[1]
        stepped = weights - self.minmax_step * (losses.to(weights.dtype) + self.gamma * (weights - 1.0 / m))
        return simplex_ops.unchecked.simplex_project(stepped, None)
