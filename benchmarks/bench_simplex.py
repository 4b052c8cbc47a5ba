"""Benchmark of the simplex family: `fastadv bench simplex`.

Timed, float32, each fused op through its public function (validation included), against what a
user would otherwise write and torch.compile of it (compile time reported apart, with an empty
inductor cache):

- ``simplex_project`` at B = 65,536 rows of m = 8 against the sort-based projection of Duchi et
  al. (2008, Fig. 1) written batched in eager PyTorch (``duchi_projection``: sort descending,
  cumsum, ρ from the condition u_k − (Σ_{j≤k} u_j − 1)/k > 0, gather τ, clamp), and with a mask
  (TA-MOO's extended simplex, ``mask = ~achieved``), where the formula sets the masked entries
  to −inf before sorting. The projection moves few bytes per row (v and w, plus the mask), so
  its time is also given as a percentage of the roofline of a ``copy_`` of the same bytes timed
  in the same rounds.
- ``simplex_project`` on long rows, B = 4096 rows of m = 1000 (the wide path: rows of more than
  32 coordinates, whose threshold the kernels find by a sort-free selection), against the same
  eager sort-based formula (``duchi_projection``: torch.sort, cumsum, the largest k with
  u_k − (cumsum_k − 1)/k > 0) and torch.compile of it, with the same roofline.
- ``min_norm_weights``, TA-MOO's per-sample min-norm problem ``min_{w ∈ Δ} wᵀQw + λΩ(w)`` at
  B = 4096 samples of m = 4 tasks (Q = G Gᵀ, G [B, 4, 64] of random gradients whose norms differ
  by task, λ = 100, a random pattern of achieved tasks, warm-started from the previous step's
  weights), K = 10 steps: the paper's solver (``softmax-gd``, seed 003 ch. 4, Algorithm 1 lines
  6–10, lr 0.005) against the same loop batched in eager PyTorch with the analytic gradient
  (``softmax_gd_loop``: α ← α − η σ ⊙ (g − ⟨σ, g⟩), g = (Q + Qᵀ)σ + λ∇Ω(σ), what a user writes
  without autograd), against the autograd form of the paper's reference code
  (``softmax_gd_autograd``: ``loss.backward()`` on α and an SGD step) and torch.compile of the
  analytic loop; and the exact solvers ``pgd`` / ``apgd`` (projected / FISTA-accelerated
  projected gradient, step 1/L) at K = 10 against their eager loop on ``duchi_projection``
  (``projected_gradient_loop``) and torch.compile of it. Every baseline's weights are compared
  with the fused op's before timing (the table's "max |Δw|").

Not timed: the solution quality at equal steps, every solver from the uniform weights at K = 10, in
two problem sets. Set 1 (synthetic) is the honest hard case: it spans every rank and a million-fold
range of scales, where the paper's fixed lr can beat ten steps of 1/L on some problems. Set 2
(attack) is what TA-MOO actually solves, so that the figures on the common case are measured
rather than assumed. Both are shown because either one alone misleads: set 1 understates the exact
solvers on the attack's problems, set 2 hides the scales where they can lose.

Set 1, synthetic (``simplex_quality.{csv,json}``): on 10,000 random problems per λ ∈ {0, 100}
(m = 4; Q = G Gᵀ, G [4, D] with D ∈ {1, 2, 4, 16, 64, 256} and entries of variance 1/D, each
task's row scaled by 10^U(−1, 1) and Q by 10^U(−3, 3); each task achieved with probability 0.3),
the objective gap F(softmax-gd) − F(solver) of pgd and apgd at K = 10 (and of exact2 on as many
m = 2 problems): the fractions of problems where the exact solver is lower, equal (within a
relative 1e-6, the rounding of float32 weights) and higher, quantiles of the gap and of the
relative gap (the gap over F(softmax-gd)), and every solver's excess over the exact optimum F*
(``fastadv.reference.simplex.min_norm_exact``, float64), absolute and as the part of the uniform
start's suboptimality left. All problems and by the size of Q (‖Q‖_F ≤ 1, ≤ 100, > 100): with lr
0.005 the paper's solver hardly moves when Q is small and takes large steps when it is large.
Objectives are evaluated in float64 at the weights the float32 ops return.

Set 2, attack (``simplex_attack_quality.{csv,json}``): the same figures (m = 3, pgd and apgd) on
the problems the TA-MOO attack passes to its solver. An ensemble of digits_cnn, digits_mlp and
digits_resnet is trained here, briefly and deterministically (plain clean SGD, 5 epochs, fixed
seeds, one CPU thread; not fastadv.train), then ``MultiObjectivePGD(EnsembleTasks(members),
weighting="tamoo", eps=0.2, alpha=0.05, steps=20, seed=0)`` attacks the 450 digits test images
with each of the losses ce, kl and cw while ``fastadv.ops.simplex.unchecked.min_norm_weights`` is
wrapped to record every (Q, achieved) it receives (restored afterwards); a random 10,000 of them
(a fixed generator) are solved again at λ = 0 (no achieved task: MOO) and λ = 100 (with the
attack's achieved tasks: TA-MOO). --quick: 2 epochs, 5 steps, 150 images, 1000 problems kept.
"""
from __future__ import annotations

import contextlib
import functools
import math
import time

import torch

import fastadv
from fastadv.attacks.multi_objective import EnsembleTasks, MultiObjectivePGD, multi_objective_metrics
from fastadv.data import dataset_info, load_dataset
from fastadv.models import build_model
from fastadv.ops import simplex as simplex_ops
from fastadv.reference import simplex as reference

from . import common

PROJECT_BATCH, PROJECT_TASKS = 65_536, 8
WIDE_BATCH, WIDE_TASKS = 4096, 1000  # the wide path (m > 32)
SOLVER_BATCH, SOLVER_TASKS, GRADIENT_SIZE = 4096, 4, 64
LAM = 100.0  # TA-MOO (METHODS.md section 4)
STEPS = reference.SOFTMAX_GD_STEPS
LR = reference.SOFTMAX_GD_LR
QUALITY_PROBLEMS = 10_000
QUALITY_SIZES = (1, 2, 4, 16, 64, 256)
ROOFLINE = "copy_ of the same bytes"
DUCHI = "Duchi et al. 2008 sort-based formula, eager"
DUCHI_COMPILED = "torch.compile(Duchi et al. 2008 formula)"
OMEGA = "Ω by masked sums, eager"
OMEGA_COMPILED = "torch.compile(Ω by masked sums)"


# ----------------------------------------------------------------------------- the baselines
def duchi_projection(v, mask=None):
    """The Euclidean projection of each row onto the simplex as a user writes it batched in eager
    PyTorch (Duchi et al. 2008, Fig. 1); with a mask, the masked entries are set to −inf first
    (their u − (cumsum − 1)/k is NaN, which the condition counts as false)."""
    if mask is not None:
        v = v.masked_fill(~mask, float("-inf"))
    u, _ = torch.sort(v, dim=1, descending=True)
    cumulative = torch.cumsum(u, dim=1) - 1
    k = torch.arange(1, v.shape[1] + 1, device=v.device, dtype=v.dtype)
    rho = (u - cumulative / k > 0).sum(dim=1, keepdim=True)
    tau = cumulative.gather(1, rho - 1) / rho
    return torch.clamp(v - tau, min=0)


def _omega_and_gradient(w, unachieved, free):
    """Ω(w) [B] and ∇Ω(w): 2w on the achieved tasks, −(2/(m − s))(1 − Σ_unachieved w) on the others."""
    deficit = 1 - (w * unachieved).sum(dim=1, keepdim=True)
    omega = (torch.where(unachieved, 0, w * w).sum(dim=1, keepdim=True) + deficit * deficit / free).squeeze(1)
    return omega, torch.where(unachieved, -2 * deficit / free, 2 * w)


def _unachieved(achieved):
    """The tasks Ω counts as unachieved (every task, in a row with every task achieved)."""
    unachieved = ~achieved
    return unachieved | ~unachieved.any(dim=1, keepdim=True)


def _objective(Q, w, unachieved, free, lam):
    omega, _ = _omega_and_gradient(w, unachieved, free)
    return torch.einsum("bi,bij,bj->b", w, Q, w) + lam * omega


def softmax_gd_loop(Q, achieved, init, lam, steps, lr):
    """Algorithm 1, lines 6–10 (seed 003 ch. 4) batched in eager PyTorch with the analytic
    gradient: α ← α − η σ ⊙ (g − ⟨σ, g⟩), g = (Q + Qᵀ)σ + λ∇Ω(σ). Returns (w, objective)."""
    unachieved = _unachieved(achieved)
    free = unachieved.sum(dim=1, keepdim=True)
    S = Q + Q.transpose(1, 2)
    alpha = torch.log(init.clamp(min=0))
    for _ in range(steps):
        w = torch.softmax(alpha, dim=1)
        _, omega_gradient = _omega_and_gradient(w, unachieved, free)
        g = torch.bmm(S, w.unsqueeze(2)).squeeze(2) + lam * omega_gradient
        alpha = alpha - lr * w * (g - (w * g).sum(dim=1, keepdim=True))
    w = torch.softmax(alpha, dim=1)
    return w, _objective(Q, w, unachieved, free, lam)


def softmax_gd_autograd(Q, achieved, init, lam, steps, lr):
    """The same steps in the form of the paper's reference code: the loss's ``backward()`` on α
    and an SGD step."""
    unachieved = _unachieved(achieved)
    free = unachieved.sum(dim=1, keepdim=True)
    alpha = torch.log(init.clamp(min=0)).requires_grad_()
    optimizer = torch.optim.SGD([alpha], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            optimizer.zero_grad()
            _objective(Q, torch.softmax(alpha, dim=1), unachieved, free, lam).sum().backward()
            optimizer.step()
    w = torch.softmax(alpha.detach(), dim=1)
    return w, _objective(Q, w, unachieved, free, lam)


def projected_gradient_loop(Q, achieved, init, lam, steps, accelerated):
    """Projected gradient with step 1/L, L = 2‖(Q + Qᵀ)/2‖_F + 2λ, on ``duchi_projection``;
    accelerated: FISTA, the last iterate. Returns (w, objective)."""
    unachieved = _unachieved(achieved)
    free = unachieved.sum(dim=1, keepdim=True)
    S = Q + Q.transpose(1, 2)
    L = (2 * torch.linalg.matrix_norm(S / 2) + 2 * lam).unsqueeze(1)
    step = torch.where(L > 0, 1 / L, 0)
    w = duchi_projection(init)
    y, t = w, 1.0
    for _ in range(steps):
        point = y if accelerated else w
        _, omega_gradient = _omega_and_gradient(point, unachieved, free)
        gradient = torch.bmm(S, point.unsqueeze(2)).squeeze(2) + lam * omega_gradient
        w_next = duchi_projection(point - step * gradient)
        if accelerated:
            t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
            y = w_next + ((t - 1) / t_next) * (w_next - w)
            t = t_next
        w = w_next
    return w, _objective(Q, w, unachieved, free, lam)


# ----------------------------------------------------------------------------- inputs
def make_problems(batch, tasks, size, device, seed):
    """Q = G Gᵀ [batch, tasks, tasks] (G [batch, tasks, size]: random gradients, each task's
    scaled by 10^U(−1, 1): tasks whose gradients differ in norm), achieved (probability 0.3 each)
    and init (softmax weights, a warm start)."""
    g = torch.Generator().manual_seed(seed)
    G = torch.randn(batch, tasks, size, generator=g) * 10 ** (2 * torch.rand(batch, tasks, 1, generator=g) - 1)
    achieved = torch.rand(batch, tasks, generator=g) < 0.3
    init = torch.softmax(torch.randn(batch, tasks, generator=g), dim=1)
    return (G @ G.transpose(1, 2)).to(device), achieved.to(device), init.to(device)


def make_quality_problems(batch, tasks, device, seed):
    """Problems of every rank and scale: G [tasks, D] with D drawn from QUALITY_SIZES (entries of
    variance 1/D, so that D changes the rank, not the scale), each task's gradient scaled by
    10^U(−1, 1), and Q = G Gᵀ scaled by 10^U(−3, 3); achieved as in make_problems."""
    g = torch.Generator().manual_seed(seed)
    size = max(QUALITY_SIZES)
    used = torch.tensor(QUALITY_SIZES)[torch.randint(0, len(QUALITY_SIZES), (batch,), generator=g)].view(-1, 1, 1)
    G = torch.randn(batch, tasks, size, generator=g) * (torch.arange(size) < used) / used.sqrt()
    G = G * 10 ** (2 * torch.rand(batch, tasks, 1, generator=g) - 1)
    Q = G @ G.transpose(1, 2) * 10 ** (6 * torch.rand(batch, 1, 1, generator=g) - 3)
    achieved = torch.rand(batch, tasks, generator=g) < 0.3
    return Q.to(device), achieved.to(device)


def make_projection_inputs(device, seed=0, batch=PROJECT_BATCH, tasks=PROJECT_TASKS):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(batch, tasks, generator=g)
    mask = torch.rand(batch, tasks, generator=g) < 0.7
    mask[:, 0] |= ~mask.any(dim=1)  # the formula needs an allowed entry in every row
    return v.to(device), mask.to(device)


def _compiled(fn, *args):
    """torch.compile(fn) and the seconds of its first call with an empty inductor cache."""
    with common.fresh_inductor_cache():
        compiled = torch.compile(fn, dynamic=False)
        start = time.perf_counter()
        compiled(*args)
        return compiled, time.perf_counter() - start


def _max_difference(a, b) -> float:
    return (a.double() - b.double()).abs().max().item()


# ----------------------------------------------------------------------------- timings
def measure_rows(op, eager, names, inputs, moved, device, fused_backend, timing, compile_baseline):
    """Timings of the fused ``op`` on ``inputs``, the eager formula ``eager``, its compilation
    (``names``: the two baselines' names) and the copy_ of the ``moved`` bytes (the roofline);
    (stats, compile seconds, max |Δ| of each baseline, bytes moved)."""
    def fused():
        with fastadv.use_backend(fused_backend):
            return op(*inputs)

    source = torch.rand(moved // 8, device=device)  # a float32 copy_ reads and writes 8 bytes an element
    destination = torch.empty_like(source)
    baselines = {names[0]: lambda: eager(*inputs)}
    compile_s = None
    if compile_baseline:
        compiled, compile_s = _compiled(eager, *inputs)
        baselines[names[1]] = lambda: compiled(*inputs)
    expected = fused()
    differences = {name: _max_difference(fn(), expected) for name, fn in baselines.items()}
    functions = dict(baselines, **{f"fastadv {op.__name__}": fused, ROOFLINE: lambda: destination.copy_(source)})
    stats = common.time_interleaved(functions, device, **timing)
    for name, fn in functions.items():
        if name != ROOFLINE:
            stats[name]["allocated_MiB"] = common.allocated_mib(fn, device)
    return stats, compile_s, differences, moved


def measure_projection(device, fused_backend, timing, masked, compile_baseline, batch=PROJECT_BATCH,
                       tasks=PROJECT_TASKS):
    """:func:`measure_rows` of the fused projection of [batch, tasks] rows against the Duchi et
    al. formula (masked or not)."""
    v, mask = make_projection_inputs(device, batch=batch, tasks=tasks)
    mask = mask if masked else None
    moved = 2 * v.numel() * v.element_size() + (0 if mask is None else mask.numel())
    return measure_rows(simplex_ops.simplex_project, duchi_projection, (DUCHI, DUCHI_COMPILED), (v, mask), moved,
                        device, fused_backend, timing, compile_baseline)


def eager_distance_sq(w, achieved):
    """Ω(w) (seed 003 ch. 4, Theorem 1) as a user writes it batched in eager PyTorch: masked sums,
    a row with every task achieved counting every task as unachieved."""
    unachieved = ~achieved
    unachieved = unachieved | ~unachieved.any(dim=1, keepdim=True)
    deficit = 1 - (w * unachieved).sum(dim=1)
    return torch.where(unachieved, 0, w * w).sum(dim=1) + deficit * deficit / unachieved.sum(dim=1)


def measure_distance(device, fused_backend, timing, compile_baseline):
    """:func:`measure_rows` of Ω on [PROJECT_BATCH, PROJECT_TASKS] softmax rows, 30% of the tasks
    achieved, against :func:`eager_distance_sq`."""
    v, mask = make_projection_inputs(device)
    w, achieved = torch.softmax(v, dim=1), ~mask
    moved = w.numel() * w.element_size() + achieved.numel() + w.shape[0] * w.element_size()
    return measure_rows(simplex_ops.simplex_distance_sq, eager_distance_sq, (OMEGA, OMEGA_COMPILED), (w, achieved),
                        moved, device, fused_backend, timing, compile_baseline)


def measure_solver(solver, device, fused_backend, timing, compile_baseline):
    """Timings of min_norm_weights(solver, K = 10) and its baselines; (stats, compile seconds,
    max |Δw| of each baseline, the eager baseline's name, the compiled baseline's name or None)."""
    Q, achieved, init = make_problems(SOLVER_BATCH, SOLVER_TASKS, GRADIENT_SIZE, device, seed=1)
    lr = LR if solver == "softmax-gd" else None

    def fused():
        with fastadv.use_backend(fused_backend):
            return simplex_ops.min_norm_weights(Q, achieved, LAM, solver, STEPS, lr, init)

    if solver == "softmax-gd":
        baselines = {"analytic loop, eager": lambda: softmax_gd_loop(Q, achieved, init, LAM, STEPS, LR),
                     "autograd loop (loss.backward() on α), eager": lambda: softmax_gd_autograd(
                         Q, achieved, init, LAM, STEPS, LR)}
        to_compile = (softmax_gd_loop, (Q, achieved, init, LAM, STEPS, LR))
    else:
        accelerated = solver == "apgd"
        baselines = {"projected gradient loop, eager": lambda: projected_gradient_loop(
            Q, achieved, init, LAM, STEPS, accelerated)}
        to_compile = (projected_gradient_loop, (Q, achieved, init, LAM, STEPS, accelerated))
    eager_name = next(iter(baselines))
    compiled_name, compile_s = None, None
    if compile_baseline:
        compiled, compile_s = _compiled(to_compile[0], *to_compile[1])
        compiled_name = f"torch.compile({eager_name.removesuffix(', eager')})"
        baselines[compiled_name] = lambda: compiled(*to_compile[1])
    expected = fused()[0]
    differences = {name: _max_difference(fn()[0], expected) for name, fn in baselines.items()}
    functions = dict(baselines, **{f"fastadv min_norm_weights ({solver})": fused})
    stats = common.time_interleaved(functions, device, **timing)
    for name, fn in functions.items():
        stats[name]["allocated_MiB"] = common.allocated_mib(fn, device)
    return stats, compile_s, differences, eager_name, compiled_name


# ----------------------------------------------------------------------------- quality
QUANTILES = (("min", 0.0), ("p01", 0.01), ("p50", 0.5), ("p99", 0.99), ("max", 1.0))


def _quantiles(prefix, values):
    q = torch.quantile(values, torch.tensor([p for _, p in QUANTILES], dtype=values.dtype))
    return {f"{prefix}_{name}": value for (name, _), value in zip(QUANTILES, q.tolist())}


# The problems by the size of Q (its Frobenius norm): at lr 0.005 the paper's solver barely moves
# from the uniform weights when Q is small and takes large steps when it is large.
BANDS = (("all", 0.0, math.inf), ("‖Q‖ ≤ 1", 0.0, 1.0), ("1 < ‖Q‖ ≤ 100", 1.0, 100.0),
         ("‖Q‖ > 100", 100.0, math.inf))
TIE = 1e-6  # objectives this close (relatively) count as equal: float32 weights round them


def _quality_record(problems, band, solver, count, comparison, excess, remaining):
    record = {"problems": problems, "band": band, "solver": solver, "count": count,
              "lower_fraction": None, "equal_fraction": None, "higher_fraction": None}
    for prefix in ("gap", "relative_gap"):
        record.update({f"{prefix}_{name}": None for name, _ in QUANTILES})
    if comparison is not None:
        gap, relative, tie = comparison
        record.update(lower_fraction=(~tie & (gap > 0)).double().mean().item(),
                      equal_fraction=tie.double().mean().item(),
                      higher_fraction=(~tie & (gap < 0)).double().mean().item(),
                      **_quantiles("gap", gap), **_quantiles("relative_gap", relative))
    return dict(record, **_quantiles("excess", excess), **_quantiles("remaining", remaining))


def _quality_records(Q, achieved, lam, solvers, case, fused_backend):
    """One record per (band of ‖Q‖, solver) of one problem set Q [B, m, m] (achieved [B, m] or
    None) at one λ: the gap against softmax-gd and the excess over the exact optimum, every
    solver from the uniform weights at K = STEPS."""
    records = []
    tasks = Q.shape[1]
    Q64 = Q.double().cpu()
    achieved_cpu = None if achieved is None else achieved.cpu()
    optimum = reference.min_norm_exact(Q64, achieved_cpu, lam)
    # How much of the cold start's suboptimality is left: (F − F*) / (F(uniform) − F*).
    start = reference.min_norm_objective(Q64, torch.full_like(Q64[:, :, 0], 1 / tasks), achieved_cpu, lam) - optimum
    norm = torch.linalg.matrix_norm(Q64)

    def objective(solver):
        with fastadv.use_backend(fused_backend):
            w, _ = simplex_ops.min_norm_weights(Q, achieved, lam, solver, STEPS)
        return reference.min_norm_objective(Q64, w.double().cpu(), achieved_cpu, lam)

    def remaining(value):
        return torch.where(start > 0, (value - optimum) / start, torch.zeros_like(value))

    paper = objective("softmax-gd")
    values = {solver: objective(solver) for solver in solvers}
    for band, low, high in BANDS:
        inside = (norm > low) & (norm <= high) if band != "all" else torch.ones_like(norm, dtype=torch.bool)
        count = int(inside.sum())
        if count == 0:
            continue
        records.append(_quality_record(case, band, "softmax-gd", count, None, (paper - optimum)[inside],
                                       remaining(paper)[inside]))
        for solver, value in values.items():
            gap = paper - value
            tie = gap.abs() <= TIE * torch.maximum(paper.abs(), value.abs())
            relative = torch.where(paper != 0, gap / paper.abs(), torch.zeros_like(gap))
            records.append(_quality_record(case, band, solver, count,
                                           (gap[inside], relative[inside], tie[inside]),
                                           (value - optimum)[inside], remaining(value)[inside]))
    return records


def solution_quality(device, fused_backend, problems):
    """Quality set 1, the synthetic problems: one record per (problem set, band of ‖Q‖, solver)
    (see the module docstring)."""
    records = []
    for tasks, lam, solvers in ((4, 0.0, ("pgd", "apgd")), (4, LAM, ("pgd", "apgd")), (2, 0.0, ("exact2",)),
                                (2, LAM, ("exact2",))):
        Q, achieved = make_quality_problems(problems, tasks, device, seed=10 + tasks)
        records += _quality_records(Q, achieved, lam, solvers, f"m={tasks}, λ={lam:g}", fused_backend)
    return records


# ----------------------------------------------------------------------------- quality set 2: the attack's problems
ATTACK_MEMBERS = ("digits_cnn", "digits_mlp", "digits_resnet")
ATTACK_LOSSES = ("ce", "kl", "cw")
ATTACK_EPS, ATTACK_ALPHA = 0.2, 0.05
ATTACK_PROBLEMS = 10_000
ATTACK_SAMPLE_SEED = 0
# Plain standard training of the members, in the benchmark itself: SGD with momentum on the
# 1347 training digits in a fixed order, each member's initial weights from its own seed.
TRAIN_BATCH, TRAIN_LR, TRAIN_MOMENTUM, TRAIN_WEIGHT_DECAY = 128, 0.05, 0.9, 5e-4
# (training epochs, attack steps, test images attacked, problems kept): the full run captures
# 3 losses × 20 steps × 450 problems = 27,000 Q's; --quick 3 × 5 × 150 = 2250, of which it keeps 1000.
ATTACK_SETTINGS = {False: dict(epochs=5, steps=20, images=None, keep=ATTACK_PROBLEMS),
                   True: dict(epochs=2, steps=5, images=150, keep=1000)}


def train_member(name, train, info, device, seed, epochs):
    """A digits classifier after ``epochs`` of plain (clean) SGD on ``train``, deterministic: the
    initial weights drawn under ``torch.manual_seed(seed)`` (the global generator's state is
    restored afterwards) and the batches' order from a generator of the same seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(name, info)
    model = model.to(device)
    images = train.images.float().div(255) if train.images.dtype == torch.uint8 else train.images
    x, y = images.to(device), train.labels.to(device)
    order = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=TRAIN_LR, momentum=TRAIN_MOMENTUM,
                                weight_decay=TRAIN_WEIGHT_DECAY)
    model.train()
    with torch.enable_grad():
        for _ in range(epochs):
            permutation = torch.randperm(len(x), generator=order).to(device)
            for begin in range(0, len(x), TRAIN_BATCH):
                batch = permutation[begin:begin + TRAIN_BATCH]
                loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    return model.eval()


@contextlib.contextmanager
def _one_thread(device):
    """One CPU thread for the members' training and the attack (restored afterwards): their
    reductions then run in the same order on every machine, and these small networks lose more to
    thread synchronisation than they gain (on a loaded 2-core machine, 3 to 30 times)."""
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def attack_problems(device, epochs, steps, images, keep):
    """Quality set 2's problems: the (Q, achieved) that ``MultiObjectivePGD(EnsembleTasks(members),
    weighting="tamoo")`` passes to ``fastadv.ops.simplex.unchecked.min_norm_weights`` at every
    step of an attack on the digits' test split (the first ``images``; all of them when None)
    with each loss of ATTACK_LOSSES, a random ``keep`` of them (a fixed generator). Returns
    (Q [N, 3, 3], achieved [N, 3], a description for the meta and the report)."""
    with _one_thread(device):
        return _attack_problems(device, epochs, steps, images, keep)


def _attack_problems(device, epochs, steps, images, keep):
    train, test, _ = load_dataset("digits", augment=False, seed=0)
    info = dataset_info("digits")
    count = len(test) if images is None else min(images, len(test))
    x, y = test.images[:count].to(device), test.labels[:count].to(device)
    members, accuracy = [], {}
    for seed, name in enumerate(ATTACK_MEMBERS):
        model = train_member(name, train, info, device, seed, epochs)
        with torch.no_grad():
            accuracy[name] = (model(x).argmax(dim=1) == y).double().mean().item()
        members.append(model)
    captured, source, success = [], [None], {}
    original = simplex_ops.unchecked.min_norm_weights

    def capture(Q, achieved, *args, **kwargs):
        captured.append((Q.detach().clone(), achieved.detach().clone(), source[0]))
        return original(Q, achieved, *args, **kwargs)

    simplex_ops.unchecked.min_norm_weights = capture
    try:
        for index, loss in enumerate(ATTACK_LOSSES):
            source[0] = index
            attack = MultiObjectivePGD(EnsembleTasks(members), weighting="tamoo", loss=loss, eps=ATTACK_EPS,
                                       alpha=ATTACK_ALPHA, steps=steps, seed=0)
            success[loss] = multi_objective_metrics(attack.run(x, y).achieved)
    finally:
        simplex_ops.unchecked.min_norm_weights = original
    Q = torch.cat([q for q, _, _ in captured])
    achieved = torch.cat([a for _, a, _ in captured])
    losses = torch.cat([torch.full((len(q),), index) for q, _, index in captured])
    chosen = torch.randperm(len(Q), generator=torch.Generator().manual_seed(ATTACK_SAMPLE_SEED))[:keep]
    Q, achieved, losses = Q[chosen.to(Q.device)], achieved[chosen.to(Q.device)], losses[chosen]
    norm = torch.linalg.matrix_norm(Q.double().cpu())
    description = {
        "members": list(ATTACK_MEMBERS), "clean_accuracy": accuracy, "train_epochs": epochs,
        "train": dict(batch=TRAIN_BATCH, lr=TRAIN_LR, momentum=TRAIN_MOMENTUM, weight_decay=TRAIN_WEIGHT_DECAY),
        "eps": ATTACK_EPS, "alpha": ATTACK_ALPHA, "steps": steps, "images": count, "losses": list(ATTACK_LOSSES),
        "a_all": {loss: metrics["a_all"] for loss, metrics in success.items()},
        "captured": sum(len(q) for q, _, _ in captured), "kept": len(Q), "sample_seed": ATTACK_SAMPLE_SEED,
        "kept_by_loss": {loss: int((losses == index).sum()) for index, loss in enumerate(ATTACK_LOSSES)},
        "achieved_fraction": achieved.double().mean().item(),
        "all_achieved_fraction": achieved.all(dim=1).double().mean().item(),
        "Q_frobenius": _quantiles("norm", norm)}
    return Q, achieved, description


def attack_quality(fused_backend, Q, achieved):
    """Quality set 2's records: λ = 0 (no achieved tasks: the MOO problem) and λ = LAM (TA-MOO,
    with the achieved tasks the attack had), pgd and apgd against softmax-gd at K = STEPS."""
    records = []
    for lam in (0.0, LAM):
        records += _quality_records(Q, None if lam == 0 else achieved, lam, ("pgd", "apgd"),
                                    f"attack m={Q.shape[1]}, λ={lam:g}", fused_backend)
    return records


# ----------------------------------------------------------------------------- the run
def wide_case() -> str:
    return f"simplex_project [{WIDE_BATCH}, {WIDE_TASKS}] (m > 32: sort-free selection)"


def _timing(quick: bool) -> dict:
    # --quick: a smoke run, well under a minute on 2 cores; torch.compile alone costs 10 to 30 s a
    # function there, so it has no compiled rows.
    return dict(rounds=3, calls_per_round=1, warmup=1) if quick else dict(rounds=40)


def _records(case, stats, compile_s, differences, eager, compiled, roofline_s=None) -> list[dict]:
    """One record per implementation of a case, its ratios against ``eager`` and ``compiled``."""
    eager_s = stats[eager]["median"]
    compiled_s = stats[compiled]["median"] if compiled is not None else None
    return [{"case": case, "implementation": name, "median_ms": s["median"] * 1e3, "p20_ms": s["p20"] * 1e3,
             "p80_ms": s["p80"] * 1e3, "speedup_vs_eager": eager_s / s["median"],
             "speedup_vs_compile": None if compiled_s is None else compiled_s / s["median"],
             "roofline_percent": None if roofline_s is None else 100 * roofline_s / s["median"],
             "max_abs_diff_w": differences.get(name), "allocated_MiB": s["allocated_MiB"],
             "compile_s": compile_s if name == compiled else None} for name, s in stats.items()]


def row_op_records(device, fused_backend, timing, quick) -> tuple[list[dict], dict]:
    """The row ops' cases (the projection at [65536, 8], masked, and at [4096, 1000] on the wide
    path; Ω at [65536, 8]): their records and each case's copy_ bandwidth (GB/s)."""
    records, bandwidth = [], {}
    projection = f"simplex_project [{PROJECT_BATCH}, {PROJECT_TASKS}]"
    cases = [(projection, DUCHI, DUCHI_COMPILED, functools.partial(measure_projection, masked=False)),
             (f"{projection}, masked", DUCHI, DUCHI_COMPILED, functools.partial(measure_projection, masked=True)),
             (wide_case(), DUCHI, DUCHI_COMPILED, functools.partial(measure_projection, masked=False,
                                                                     batch=WIDE_BATCH, tasks=WIDE_TASKS)),
             (f"simplex_distance_sq [{PROJECT_BATCH}, {PROJECT_TASKS}]", OMEGA, OMEGA_COMPILED, measure_distance)]
    for case, eager, compiled, measure in cases:
        stats, compile_s, differences, moved = measure(device, fused_backend, timing, compile_baseline=not quick)
        roofline_s = stats.pop(ROOFLINE)["median"]
        bandwidth[case] = moved / roofline_s / 1e9
        records += _records(case, stats, compile_s, differences, eager, None if quick else compiled, roofline_s)
    return records, bandwidth


def run_rows(device: str = "cpu", quick: bool = False) -> str:
    """The row ops' cases alone (also part of :func:`run`), as the report's timings table, without
    writing results."""
    device = torch.device(device)
    records, bandwidth = row_op_records(device, "cpu" if device.type == "cpu" else "auto", _timing(quick), quick)
    return "\n".join([f"simplex family, float32, {common.machine_description(device)}", "", timings_table(records),
                      "", "copy_ bandwidth: " + "; ".join(f"{case}: {gbps:.1f} GB/s" for case, gbps in bandwidth.items())])


def run(device: str = "cpu", quick: bool = False, out_dir=None) -> str:
    device = torch.device(device)
    fused_backend = "cpu" if device.type == "cpu" else "auto"
    timing = _timing(quick)
    records, bandwidth = row_op_records(device, fused_backend, timing, quick)
    for solver in ("softmax-gd", "pgd", "apgd"):
        stats, compile_s, differences, eager, compiled = measure_solver(
            solver, device, fused_backend, timing, compile_baseline=not quick)
        records += _records(f"min_norm_weights {solver} K={STEPS} [{SOLVER_BATCH}, {SOLVER_TASKS}]", stats, compile_s,
                            differences, eager, compiled)
    problems = 1000 if quick else QUALITY_PROBLEMS
    quality = solution_quality(device, fused_backend, problems)
    attack_Q, attack_achieved, attack = attack_problems(device, **ATTACK_SETTINGS[quick])
    attack_records = attack_quality(fused_backend, attack_Q, attack_achieved)
    meta = {"machine": common.machine_description(device), "device": str(device), "torch": torch.__version__,
            "fastadv": fastadv.__version__, "dtype": "float32", "timing": timing, "quick": quick,
            "projection": [PROJECT_BATCH, PROJECT_TASKS], "wide_projection": [WIDE_BATCH, WIDE_TASKS],
            "solver": [SOLVER_BATCH, SOLVER_TASKS, GRADIENT_SIZE],
            "lam": LAM, "steps": STEPS, "lr": LR, "copy_GBps": bandwidth,
            "quality_problems": problems, "quality_sizes": list(QUALITY_SIZES), "attack_quality": attack,
            "inductor_cpp_compiler": common.cxx_compiler_for_inductor() if device.type == "cpu" else None}
    common.write_results("simplex", records, meta, out_dir)
    common.write_results("simplex_quality", quality, meta, out_dir)
    common.write_results("simplex_attack_quality", attack_records, meta, out_dir)
    return report(records, quality, attack_records, meta)


# ----------------------------------------------------------------------------- the report
def _fused(records, case):
    return next(r for r in records if r["case"] == case and r["implementation"].startswith("fastadv"))


def _ratio(value):
    return "" if value is None else f"{value:.2f}×"


def summary(records) -> str:
    """One row per case: the baselines' times, then the fused op's with its ratios."""
    rows = []
    for case in dict.fromkeys(r["case"] for r in records):
        fused = _fused(records, case)
        baselines = [r for r in records if r["case"] == case and r is not fused]
        rows.append([case, "; ".join(f"{r['implementation']}: {r['median_ms']:.3f}" for r in baselines),
                     f"{fused['median_ms']:.3f}", _ratio(fused["speedup_vs_eager"]),
                     _ratio(fused["speedup_vs_compile"]),
                     "" if fused["roofline_percent"] is None else f"{fused['roofline_percent']:.0f}%"])
    return common.markdown_table(["case", "baselines ms", "fastadv ms", "vs eager", "vs compiled", "roofline"], rows)


def _number(value):
    return f"{value:.3g}"


def quality_table(quality) -> str:
    rows = []
    for r in quality:
        if r["solver"] == "softmax-gd":
            continue
        rows.append([r["problems"], r["band"], str(r["count"]), r["solver"], f"{100 * r['lower_fraction']:.2f}%",
                     f"{100 * r['equal_fraction']:.2f}%", f"{100 * r['higher_fraction']:.2f}%",
                     " / ".join(_number(r[f"gap_{name}"]) for name, _ in QUANTILES),
                     " / ".join(_number(r[f"relative_gap_{name}"]) for name, _ in QUANTILES),
                     "yes" if r["lower_fraction"] >= 0.99 else "no"])
    return common.markdown_table(["problems", "‖Q‖_F", "count", "solver", "lower", "equal", "higher",
                                  "gap min / 1% / 50% / 99% / max", "relative gap min / 1% / 50% / 99% / max",
                                  "≥ 99% lower"], rows)


def excess_table(quality) -> str:
    rows = [[r["problems"], r["band"], r["solver"], " / ".join(_number(r[f"excess_{name}"]) for name, _ in QUANTILES),
             " / ".join(_number(r[f"remaining_{name}"]) for name, _ in QUANTILES)] for r in quality]
    return common.markdown_table(["problems", "‖Q‖_F", "solver", "F − F* min / 1% / 50% / 99% / max",
                                  "(F − F*) / (F(uniform) − F*) min / 1% / 50% / 99% / max"], rows)


def timings_table(records) -> str:
    """Every implementation of every case: times, ratios, roofline, difference, memory."""
    rows = [[r["case"], r["implementation"], f"{r['median_ms']:.3f}", f"{r['p20_ms']:.3f}–{r['p80_ms']:.3f}",
             _ratio(r["speedup_vs_eager"]), _ratio(r["speedup_vs_compile"]),
             "" if r["roofline_percent"] is None else f"{r['roofline_percent']:.0f}%",
             "" if r["max_abs_diff_w"] is None else f"{r['max_abs_diff_w']:.1e}", f"{r['allocated_MiB']:.1f}"]
            for r in records]
    return common.markdown_table(["case", "implementation", "median ms", "p20–p80 ms", "vs eager", "vs compiled",
                                  "roofline", "max |Δw| vs fastadv", "allocated MiB"], rows)


def report(records, quality, attack_records, meta) -> str:
    table = timings_table(records)
    bandwidth = "; ".join(f"{case}: {gbps:.1f} GB/s" for case, gbps in meta["copy_GBps"].items())
    count = meta["quality_problems"]
    lines = [f"simplex family, float32, {meta['machine']}", "", summary(records), "",
             "All timings:", "", table, "",
             f"simplex_project: the public op against the sort-based formula of Duchi et al. (2008) batched in eager "
             "PyTorch (sort, cumsum, ρ, gather, clamp; masked entries set to −inf) and torch.compile of it; at "
             f"[{WIDE_BATCH}, {WIDE_TASKS}] the rows take the op's wide path (m > 32: the threshold found by a "
             "sort-free selection, each row read in a few passes). "
             f"roofline: the bytes the op moves (v read, w written, the mask read) at the bandwidth of a copy_ of as "
             f"many bytes timed in the same rounds ({bandwidth}).",
             f"min_norm_weights: Q [B, m, m] = G Gᵀ, G [{SOLVER_BATCH}, {SOLVER_TASKS}, {GRADIENT_SIZE}], "
             f"λ = {meta['lam']:g}, K = {meta['steps']} steps, warm start; softmax-gd (lr {meta['lr']:g}) against the "
             "analytic loop of Algorithm 1 lines 6–10 in eager PyTorch, its autograd form (loss.backward() on α, an "
             "SGD step) and torch.compile of the analytic loop; pgd / apgd against their eager loop on the "
             "Duchi projection and torch.compile of it.",
             "max |Δw| vs fastadv: the largest difference between a baseline's weights and the fused op's.",
             "allocated MiB: memory one call allocates (CPU: the sum of its allocations from torch.profiler; "
             "CUDA: the peak above the memory held before the call).",
             "torch.compile's first call, each with an empty inductor cache:"]
    for r in records:
        if r["compile_s"] is not None:
            lines.append(f"- {r['case']}, {r['implementation']}: {r['compile_s']:.1f} s")
    if meta["quick"]:
        lines.append("- none: --quick has no torch.compile rows (a smoke run: 3 rounds of 1 call, noisy figures)")
    attack = meta["attack_quality"]
    accuracy = ", ".join(f"{name} {100 * value:.1f}%" for name, value in attack["clean_accuracy"].items())
    success = ", ".join(f"{loss} {value:.1f}%" for loss, value in attack["a_all"].items())
    kept = ", ".join(f"{loss} {value}" for loss, value in attack["kept_by_loss"].items())
    norms = " / ".join(_number(attack["Q_frobenius"][f"norm_{name}"]) for name, _ in QUANTILES)
    lines += ["", f"Solution quality at K = {meta['steps']} steps, in two problem sets (float32 ops, objectives in "
              "float64 at the returned weights, cold start: every solver starts from the uniform weights): gap = "
              "F(softmax-gd) − F(solver); lower: the exact solver's objective is lower than softmax-gd's; equal: "
              f"within {TIE:g} relatively (the rounding of float32 weights); relative gap = gap / F(softmax-gd); by "
              "the Frobenius norm of Q. Set 1 (synthetic) spans every rank and a million-fold range of scales: the "
              "hard case, where lr 0.005 can beat 10 steps of 1/L on some problems. Set 2 (attack) is what TA-MOO "
              "actually solves; both are shown so that neither the hard case nor the common one stands alone.", "",
              f"Quality set 1 of 2, SYNTHETIC problems (make_quality_problems: Q = G Gᵀ of every rank, scaled by "
              f"10^U(−3, 3), task norms 10^U(−1, 1), achieved with probability 0.3), {count} problems per problem "
              "set:", "",
              quality_table(quality), "",
              "Quality set 1 of 2, SYNTHETIC problems: excess over the exact optimum F* "
              "(fastadv.reference.simplex.min_norm_exact, float64), absolute and as the part of the cold start's "
              "suboptimality left after K steps (a negative excess: float32 weights off the simplex by a rounding):",
              "",
              excess_table(quality), "",
              f"Quality set 2 of 2, ATTACK problems: the (Q, achieved) that MultiObjectivePGD(EnsembleTasks("
              f"{' + '.join(attack['members'])}), weighting='tamoo', eps={attack['eps']:g}, alpha={attack['alpha']:g}, "
              f"steps={attack['steps']}, seed=0) passed to min_norm_weights on {attack['images']} digits test images "
              f"with each loss of {', '.join(attack['losses'])} ({attack['captured']} captured, a random "
              f"{attack['kept']} kept: {kept}). The members: {attack['train_epochs']} epochs of plain SGD each "
              f"in this benchmark (clean test accuracy {accuracy}); the attack's A-All: {success}. Achieved tasks: "
              f"{100 * attack['achieved_fraction']:.1f}% (every task of the problem: "
              f"{100 * attack['all_achieved_fraction']:.1f}%); ‖Q‖_F min / 1% / 50% / 99% / max: {norms}. "
              "λ = 0 solves them as MOO (no achieved task), λ = 100 as TA-MOO with the attack's achieved tasks; "
              "every solver from the uniform weights (the attack warm-starts softmax-gd).", "",
              quality_table(attack_records), "",
              "Quality set 2 of 2, ATTACK problems: excess over the exact optimum F* (as for set 1):", "",
              excess_table(attack_records)]
    return "\n".join(lines)
