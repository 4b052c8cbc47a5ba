"""Benchmark of a whole adversarial training step: `fastadv bench train`.

One step = the attack, the training loss, its backward and the SGD step, for two workloads
(and one batch of ALS, seed 000, below):

- TRADES on the digits (digits_cnn, batch 256 from the training split, eps 0.2, alpha 0.05,
  10 attack steps, beta 6);
- PGD-AT on a CIFAR-shaped PreActResNet-18 (synthetic 3x32x32 data, batch 32, eps 8/255,
  alpha 2/255, 10 steps).

Each against an eager baseline written the way the reference code of the papers is written
(TRADES: Zhang et al.'s train_trades_cifar10.py; PGD-AT: Madry et al. / Rice et al.), in four
variants timed interleaved in one run: official-style float32, official-style with its attack
under bf16 autocast, fastadv float32 and fastadv with ``attack_dtype="bfloat16"``. Every variant
starts from its own deep copy of the same model and optimizer and steps on the same batch.

Where the time of a step goes is measured with torch.profiler on the real calls: the profiler's
top-level ops are grouped by what they are (model forward regions, autograd backward nodes,
attack update ops, losses, the optimizer). The only thing the benchmark adds to the measured
code is a profiler region around each forward of the model (a forward pre-hook and hook on its
root module), which says whether the forward ran in eval mode (inside the attack) or train mode
(the training loss) and whether its input was the clean batch.

ALS (seed 000, Algorithm 1): one batch of three digits_cnn members (I = 3 reference turns),
fastadv's method against the batch written the way seed 000's code is (TRADES' code run per
member, the clean forward recomputed inside every attack step, per-member optimisers), with the
time of the three attacks alone as the breakdown.

Then the accuracy check of the bf16 attack: PGD-20 robust accuracy of a TRADES digits model
under the float32 attack and the bf16-autocast attack, same random starts.

On a CPU that emulates bf16 (fastadv.hardware's probe) the bf16 variants and the accuracy check
are skipped, and the report says why: they would time software emulation, twenty times slower.

Also a pytest-benchmark suite: `pytest benchmarks/bench_train.py --benchmark-only`.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import io
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import fastadv
from fastadv import hardware
from fastadv.attacks import PGD
from fastadv.data import load_dataset
from fastadv.methods import build_method
from fastadv.models import build_model

from . import common

WORKLOADS = {
    "trades_digits": dict(title="TRADES, digits_cnn on the digits (batch 256, eps 0.2, alpha 0.05, 10 steps, "
                                "beta 6)",
                          method="trades", dataset="digits", model="digits_cnn", batch=256, eps=0.2,
                          alpha=0.05, steps=10, beta=6.0, lr=0.05, weight_decay=5e-4),
    "pgd_at_preact_resnet18": dict(title="PGD-AT, PreActResNet-18 on CIFAR-shaped synthetic data (batch 32, "
                                         "3x32x32, eps 8/255, alpha 2/255, 10 steps)",
                                   method="pgd_at", dataset="synthetic", model="preact_resnet18", batch=32,
                                   eps=8 / 255, alpha=2 / 255, steps=10, beta=None, lr=0.1, weight_decay=5e-4),
}
OFFICIAL_FP32 = "official-style, float32"
VARIANTS = (OFFICIAL_FP32, "official-style, bf16 attack", "fastadv, float32", "fastadv, bf16 attack")
TARGETS = {"structural": 1.3, "bf16": 2.0, "accuracy_points": 2.0}
RUN_DIR_TO_REUSE = Path("runs") / "digits-trades"
MARK = "bench::forward/"  # the profiler regions opened around each forward of the model


# ----------------------------------------------------------------------------- workloads
def make_batch(spec, device):
    """The batch every step of a workload uses: drawn once (seed 0), moved to the device."""
    train_set, _, info = load_dataset(spec["dataset"], augment=False)
    generator = torch.Generator().manual_seed(0)
    index = torch.randperm(len(train_set), generator=generator)[:spec["batch"]]
    images = train_set.images[index]
    x = images.float().div_(255) if images.dtype == torch.uint8 else images.clone()
    return x.to(device), train_set.labels[index].to(device), info


def make_model_and_optimizer(spec, info, device):
    torch.manual_seed(0)
    model = build_model(spec["model"], info).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=spec["lr"], momentum=0.9, weight_decay=spec["weight_decay"])
    return model, optimizer


def _autocast(device, dtype):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def official_trades_attack(model, x, eps, alpha, steps, amp_dtype=None):
    """TRADES' attack as train_trades_cifar10.py writes it: eval mode, the clean forward
    recomputed in every step, separate min/max/clamp projection. ``amp_dtype`` puts the model
    calls under autocast (logits cast back to float32, as fastadv's attacks do)."""
    criterion_kl = nn.KLDivLoss(reduction="sum")
    model.eval()
    x_adv = x.detach() + 0.001 * torch.randn_like(x).detach()
    for _ in range(steps):
        x_adv.requires_grad_()
        with torch.enable_grad():
            with _autocast(x.device, amp_dtype):
                logits_adv, logits_clean = model(x_adv), model(x)
            loss_kl = criterion_kl(F.log_softmax(logits_adv.float(), dim=1), F.softmax(logits_clean.float(), dim=1))
        grad = torch.autograd.grad(loss_kl, [x_adv])[0]
        x_adv = x_adv.detach() + alpha * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps)
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
    model.train()
    return torch.clamp(x_adv, 0.0, 1.0).detach()


def official_trades_step(model, optimizer, x, y, eps, alpha, steps, beta, amp_dtype=None, train_amp=False):
    """A TRADES step as train_trades_cifar10.py (Zhang et al.) writes it: the clean forward is
    recomputed inside every attack step and twice more in the loss; the projection is separate
    min/max/clamp ops. ``amp_dtype`` puts the attack's model calls under autocast (logits cast
    back to float32, as fastadv's attacks do); ``train_amp`` the training loss's forwards too."""
    criterion_kl = nn.KLDivLoss(reduction="sum")
    batch_size = len(x)
    x_adv = official_trades_attack(model, x, eps, alpha, steps, amp_dtype)
    optimizer.zero_grad()
    with _autocast(x.device, amp_dtype if train_amp else None):
        logits = model(x)
        loss_natural = F.cross_entropy(logits, y)
        loss_robust = (1.0 / batch_size) * criterion_kl(F.log_softmax(model(x_adv), dim=1),
                                                        F.softmax(model(x), dim=1))
        loss = loss_natural + beta * loss_robust
    loss.backward()
    optimizer.step()
    return loss


def official_pgd_at_step(model, optimizer, x, y, eps, alpha, steps, amp_dtype=None, train_amp=False):
    """A PGD-AT step as Madry et al. / Rice et al. (attack_pgd in train_cifar.py) write it: a
    delta uniform in [-eps, eps] kept inside the box, K signed-gradient steps on CE each followed
    by clamps, then the training loss at x + delta. The attack runs in eval mode, as fastadv's.
    ``amp_dtype`` puts the attack's forwards under autocast; ``train_amp`` the training forward too."""
    model.eval()
    delta = torch.empty_like(x).uniform_(-eps, eps)
    delta = torch.clamp(delta, -x, 1 - x)
    delta.requires_grad_(True)
    for _ in range(steps):
        with _autocast(x.device, amp_dtype):
            output = model(x + delta)
        loss = F.cross_entropy(output.float(), y)
        grad = torch.autograd.grad(loss, [delta])[0]
        d = torch.clamp(delta.detach() + alpha * torch.sign(grad), -eps, eps)
        d = torch.clamp(x + d, 0, 1) - x
        delta = d.detach().requires_grad_(True)
    model.train()
    delta = delta.detach()
    with _autocast(x.device, amp_dtype if train_amp else None):
        loss = F.cross_entropy(model(x + delta), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss


def fastadv_step(method, model, optimizer, x, y, amp: bool = False):
    """A training step as fastadv's trainer takes it: the method (under bf16 autocast with ``amp``,
    the trainer's default on CUDA), then the backward and the optimizer outside autocast."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        loss, _ = method(model, x, y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss


def bf16_skipped(device: torch.device) -> str | None:
    """Why the bf16 rows are left out on this host, or None when they run."""
    if device.type != "cpu" or hardware.cpu_bf16_native():
        return None
    return (f"bf16 rows skipped: this CPU has no native bfloat16 (a bf16 convolution forward+backward takes "
            f"{hardware.cpu_bf16_ratio():.1f}x float32's time), so they would time software emulation")


def variants_for(device: torch.device) -> tuple[str, ...]:
    return tuple(v for v in VARIANTS if "bf16" not in v) if bf16_skipped(device) else VARIANTS


def make_steps(spec, model, optimizer, x, y, variants=VARIANTS):
    """The variants, each a closure over its own deep copy of the model and optimizer."""
    options = dict(eps=spec["eps"], alpha=spec["alpha"], steps=spec["steps"])
    if spec["beta"] is not None:
        options["beta"] = spec["beta"]
    steps, states = {}, {}
    for name in variants:
        net, opt = copy.deepcopy((model, optimizer))  # one deepcopy: opt holds net's parameters
        bf16 = "bf16" in name
        if name.startswith("fastadv"):
            method = build_method(spec["method"], attack_dtype="bfloat16" if bf16 else None, **options)
            step = functools.partial(fastadv_step, method, net, opt, x, y)
        elif spec["method"] == "trades":
            step = functools.partial(official_trades_step, net, opt, x, y, amp_dtype=torch.bfloat16 if bf16 else None,
                                     **options)
        else:
            step = functools.partial(official_pgd_at_step, net, opt, x, y, amp_dtype=torch.bfloat16 if bf16 else None,
                                     **options)
        steps[name], states[name] = step, (net, opt)
    return steps, states


# ----------------------------------------------------------------------------- ALS (seed 000)
ALS = dict(title="ALS, 3 x digits_cnn on the digits (one batch of 256: I = 3 reference turns, eps 0.2, alpha 0.05, "
                 "10 attack steps, beta 6, lambda 0.5)",
           members=3, batch=256, eps=0.2, alpha=0.05, steps=10, beta=6.0, lam=0.5, lr=0.05, weight_decay=5e-4)
ALS_OFFICIAL, ALS_FASTADV = "official-style (seed 000's code)", "fastadv"


def official_als_batch(members, optimizers, x, y, eps, alpha, steps, beta, lam, attack_only=False):
    """One batch of seed 000's Algorithm 1 written the way its code (adapted from TRADES') is:
    per reference r the TRADES attack on f_r, then per member o its own TRADES step (clean
    forward twice, as TRADES' loss does) plus, for o ≠ r, the masked cosine of f_r(x̃) and f_o(x̃)
    with f_r(x̃) recomputed for each o, and its own optimiser step."""
    criterion_kl = nn.KLDivLoss(reduction="sum")
    mask = 1.0 - F.one_hot(y, members[0](x[:1]).shape[1]).float()
    for r, reference in enumerate(members):
        x_adv = official_trades_attack(reference, x, eps, alpha, steps)
        if attack_only:
            continue
        for o, member in enumerate(members):
            optimizers[o].zero_grad()
            logits = member(x)
            loss = F.cross_entropy(logits, y) + beta * (1.0 / len(x)) * criterion_kl(
                F.log_softmax(member(x_adv), dim=1), F.softmax(member(x), dim=1))
            if o != r:
                a, b = reference(x_adv).detach() * mask, member(x_adv) * mask
                loss = loss + lam * (F.cosine_similarity(a, b, dim=1, eps=1e-12)).mean()
            loss.backward()
            optimizers[o].step()


def fastadv_als_batch(method, ensemble, optimizer, x, y, attack_only=False):
    """One batch as fastadv's trainer takes it: the method's turns, one optimiser step each."""
    if attack_only:
        for member in ensemble.members:
            method.attack(member, x, y).x_adv
        return
    for loss, _ in method.turns(ensemble, x, y):
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def als_benchmark(device, quick: bool) -> dict:
    """Median ms of one ALS batch, official-style and fastadv, and of its attacks alone (the
    breakdown: attacks, and the rest: the members' losses, backward passes and optimiser steps),
    all four timed in interleaved rounds."""
    from fastadv.ensemble import Ensemble

    spec = ALS
    x, y, info = make_batch(dict(dataset="digits", batch=spec["batch"]), device)
    torch.manual_seed(0)
    members = [build_model("digits_cnn", info).to(device).train() for _ in range(spec["members"])]
    attack = dict(eps=spec["eps"], alpha=spec["alpha"], steps=spec["steps"])
    optimiser = dict(lr=spec["lr"], momentum=0.9, weight_decay=spec["weight_decay"])

    official_members = copy.deepcopy(members)
    official_optimisers = [torch.optim.SGD(m.parameters(), **optimiser) for m in official_members]
    ensemble = Ensemble(copy.deepcopy(members), combine="logit")
    # λ held at the benchmark's value: a schedule from lam to lam (computing it costs a Python float).
    method = build_method("als", beta=spec["beta"], lam_max=spec["lam"], lam_min=spec["lam"], warmup=0.0, **attack)
    optimizer = torch.optim.SGD(ensemble.parameters(), **optimiser)
    official = dict(eps=spec["eps"], alpha=spec["alpha"], steps=spec["steps"], beta=spec["beta"], lam=spec["lam"])
    functions = {
        ALS_OFFICIAL: functools.partial(official_als_batch, official_members, official_optimisers, x, y, **official),
        ALS_FASTADV: functools.partial(fastadv_als_batch, method, ensemble, optimizer, x, y),
        f"{ALS_OFFICIAL}: attacks": functools.partial(official_als_batch, official_members, official_optimisers, x, y,
                                                      attack_only=True, **official),
        f"{ALS_FASTADV}: attacks": functools.partial(fastadv_als_batch, method, ensemble, optimizer, x, y,
                                                     attack_only=True),
    }
    plan = dict(rounds=2, calls_per_round=1, warmup=1) if quick else dict(rounds=10, calls_per_round=1, warmup=1)
    stats = common.time_interleaved(functions, device, **plan)
    return {"title": spec["title"], "plan": plan, "ms": {name: {k: v * 1e3 for k, v in s.items()}
                                                         for name, s in stats.items()}}


def als_report(als) -> list[str]:
    ms = als["ms"]
    rows = []
    base = ms[ALS_OFFICIAL]["median"]
    for variant in (ALS_OFFICIAL, ALS_FASTADV):
        total, attacks = ms[variant]["median"], ms[f"{variant}: attacks"]["median"]
        rows.append([variant, f"{total:.1f}", f"{ms[variant]['p20']:.1f}–{ms[variant]['p80']:.1f}",
                     f"{base / total:.2f}×", f"{attacks:.1f} ({100 * attacks / total:.0f}%)",
                     f"{total - attacks:.1f} ({100 * (total - attacks) / total:.0f}%)"])
    plan = als["plan"]
    return [f"**{als['title']}** — {plan['rounds']} interleaved rounds per variant", "",
            common.markdown_table(["variant", "median ms per batch", "p20–p80 ms", "vs official-style",
                                   "the 3 attacks, ms (share)", "losses, backward, SGD steps, ms (share)"], rows), "",
            "Official-style: seed 000's code is TRADES' code run per member: per reference turn TRADES' attack on the "
            "reference (the clean forward recomputed in each of its 10 steps), then each member's own TRADES step "
            "(two clean forwards) with the masked cosine against the reference's adversarial logits, recomputed for "
            "each member, and its own SGD step. fastadv: the als method's turns (the clean probabilities computed "
            "once per attack, fused logits ops and masked_gram, one SGD step per turn over the three members, which "
            "equals the per-member steps). The attacks column times the three attacks alone (the same calls, "
            "outside the batch); the rest is the batch's median minus it.", ""]


# ----------------------------------------------------------------------------- breakdown
class ForwardRegions:
    """A profiler region around every forward of ``model`` (pre-hook and hook on the root module),
    named by the model's mode (eval: inside the attack; train: the training loss) and by whether
    the input is the clean batch ``x`` (same storage)."""

    def __init__(self, model: nn.Module, x: torch.Tensor):
        self.clean = x.data_ptr()
        self.open = []
        self.handles = [model.register_forward_pre_hook(self._enter), model.register_forward_hook(self._exit)]

    def _enter(self, module, args):
        first = args[0] if args else None
        kind = "clean" if isinstance(first, torch.Tensor) and first.data_ptr() == self.clean else "adv"
        region = torch.profiler.record_function(f"{MARK}{'train' if module.training else 'eval'}/{kind}")
        region.__enter__()
        self.open.append(region)

    def _exit(self, module, args, output):
        self.open.pop().__exit__(None, None, None)

    def remove(self):
        for handle in self.handles:
            handle.remove()


CATEGORIES = [
    ("attack_forward", "attack: model forward at x_adv"),
    ("attack_backward", "attack: model backward (input gradient)"),
    ("attack_losses", "attack: loss forward/backward"),
    ("attack_update", "attack: update ops and random start"),
    ("attack_clean", "attack: clean forward(s)"),
    ("outer_clean", "training loss: clean forward(s)"),
    ("outer_forward", "training loss: forward at x_adv"),
    ("outer_losses", "training loss: loss ops (+ metrics)"),
    ("outer_backward", "training loss: model backward (parameter gradients)"),
    ("optimizer", "optimizer (zero_grad + step)"),
    ("other", "other (Python, untracked)"),
]
CATEGORY_LABELS = dict(CATEGORIES)
# Forward ops of the attack losses (the bf16 attack's cast of the logits to float32 included),
# and the autograd nodes of the losses.
LOSS_OPS = {"aten::log_softmax", "aten::_log_softmax", "aten::softmax", "aten::_softmax", "aten::kl_div",
            "aten::cross_entropy_loss", "aten::nll_loss", "aten::nll_loss_nd", "aten::nll_loss_forward",
            "aten::sum", "aten::mean", "aten::ones_like", "aten::to", "aten::_to_copy"}
LOSS_NODES = ("LogSoftmaxBackward", "SoftmaxBackward", "KlDivBackward", "XlogyBackward", "ExpBackward",
              "NllLossBackward", "SumBackward", "MeanBackward", "ToCopyBackward")
BACKWARD = "autograd::engine::evaluate_function: "


def _event_time_us(event, device) -> float:
    if device.type == "cuda":
        return float(getattr(event, "device_time_total", None) or getattr(event, "cuda_time_total", 0.0))
    return float(event.cpu_time_total)


def classify(events, device) -> dict[str, float]:
    """Microseconds per category over the top-level events of one profiled step. The attack
    phase is everything before the first forward in train mode."""
    top = [e for e in events if e.cpu_parent is None]
    train_starts = [e.time_range.start for e in top if e.name.startswith(MARK + "train/")]
    split = min(train_starts) if train_starts else float("inf")
    totals = {key: 0.0 for key, _ in CATEGORIES}
    counts = {"attack_clean": 0, "outer_clean": 0}
    for event in top:
        name, in_attack = event.name, event.time_range.start < split
        if name.startswith(MARK):
            clean = name.endswith("/clean")
            key = ("attack_clean" if in_attack else "outer_clean") if clean else \
                ("attack_forward" if in_attack else "outer_forward")
            if clean:
                counts[key] += 1
        elif name.startswith(BACKWARD):
            loss_node = name[len(BACKWARD):].startswith(LOSS_NODES)
            key = ("attack_losses" if loss_node else "attack_backward") if in_attack else \
                ("outer_losses" if loss_node else "outer_backward")
        elif name.startswith("Optimizer."):
            key = "optimizer"
        elif in_attack:
            key = "attack_losses" if name in LOSS_OPS else "attack_update"
        else:
            key = "outer_losses"
        totals[key] += _event_time_us(event, device)
    return totals, counts


def profile_step(step, model, x, device) -> dict:
    """One profiled step: milliseconds per category, the wall time and whether the loss was finite."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    regions = ForwardRegions(model, x)
    try:
        with common.quiet_stderr():
            with torch.profiler.profile(activities=activities) as prof:
                common.synchronize(device)
                start = time.perf_counter()
                loss = step()
                common.synchronize(device)
                wall_ms = 1e3 * (time.perf_counter() - start)
            totals, counts = classify(prof.events(), device)
    finally:
        regions.remove()
    ms = {key: value / 1e3 for key, value in totals.items()}
    ms["other"] = max(0.0, wall_ms - sum(v for k, v in ms.items() if k != "other"))
    return {"ms": ms, "wall_ms": wall_ms, "clean_forwards": counts, "loss_finite": bool(torch.isfinite(loss).item())}


def breakdowns_of(steps, states, x, device, rounds: int) -> dict:
    """Per variant, the profiled step of median wall time among ``rounds`` profiled steps taken in
    turns (variant after variant, round after round, like the timing), so that one slow spell of
    the machine does not land on one variant; the steps have been warmed up by the timing."""
    profiles = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            profiles[name].append(profile_step(step, states[name][0], x, device))
    chosen = {}
    for name, runs in profiles.items():
        runs.sort(key=lambda r: r["wall_ms"])
        chosen[name] = dict(runs[(len(runs) - 1) // 2], profiled_steps=len(runs),
                            profiled_walls_ms=[r["wall_ms"] for r in runs],
                            loss_finite=all(r["loss_finite"] for r in runs))
    return chosen


# ----------------------------------------------------------------------------- bf16 accuracy check
def robust_accuracy_pair(model, x, y, device, seeds) -> list[dict]:
    """PGD-20 (eps 0.2, alpha 0.05, uniform start) accuracy with the float32 attack and with the
    bf16-autocast attack, the same generator seed (same random start) for both."""
    rows = []
    with torch.no_grad():
        clean = (model(x).argmax(dim=1) == y)
    for seed in seeds:
        right = {}
        for label, dtype in (("float32", None), ("bfloat16", torch.bfloat16)):
            generator = torch.Generator(device=device).manual_seed(seed)
            attack = PGD(model, eps=0.2, alpha=0.05, steps=20, init="uniform", generator=generator, amp_dtype=dtype)
            x_adv = attack(x, y)
            with torch.no_grad():
                right[label] = model(x_adv).argmax(dim=1) == y
        rows.append({"seed": seed, "clean": clean.float().mean().item(),
                     "float32": right["float32"].float().mean().item(),
                     "bfloat16": right["bfloat16"].float().mean().item(),
                     "flipped": int((right["float32"] != right["bfloat16"]).sum())})
    return rows


def digits_model(device, quick: bool):
    """A TRADES digits model: quick reuses runs/digits-trades when it is a TRADES digits run,
    otherwise TRADES is trained here (8 epochs, 4 in quick) in a temporary folder."""
    from fastadv.runs import load_model
    from fastadv.train import TrainConfig, train

    if quick and RUN_DIR_TO_REUSE.is_dir():
        try:
            model, config, _, checkpoint = load_model(RUN_DIR_TO_REUSE, device)
            if config.get("method") == "trades" and config.get("dataset") == "digits":
                return model, (f"reused {checkpoint} (TRADES, {config.get('model')}, {config.get('epochs')} epochs, "
                               f"its best-robust checkpoint)")
        except (OSError, ValueError, KeyError, RuntimeError):
            pass
    epochs = 4 if quick else 8
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # the trainer prints one line per epoch
            run_dir = train(TrainConfig(method="trades", dataset="digits", epochs=epochs, run_dir=folder,
                                        progress=False, overwrite=True, device=str(device)))
        seconds = time.perf_counter() - started
        model, _, _, checkpoint = load_model(run_dir, device)
    return model, (f"trained here: TRADES on the digits, digits_cnn, {epochs} epochs with fastadv's trainer "
                   f"(float32 attack, default settings), {seconds:.0f} s; its best-robust checkpoint")


# ----------------------------------------------------------------------------- run
def run(device: str = "cpu", quick: bool = False, out_dir=None) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        from . import bench_train_gpu

        return bench_train_gpu.run(device, quick, out_dir)
    started = time.perf_counter()
    skipped, variants = bf16_skipped(device), variants_for(device)
    records, breakdowns, titles = [], {}, {}
    timing = {
        "trades_digits": dict(rounds=3, calls_per_round=1, warmup=1, profiled=1) if quick else
        dict(rounds=20, calls_per_round=2, warmup=2, profiled=3),
        "pgd_at_preact_resnet18": dict(rounds=1, calls_per_round=1, warmup=1, profiled=1) if quick else
        dict(rounds=12, calls_per_round=1, warmup=2, profiled=3),
    }
    finite = {}
    for workload, spec in WORKLOADS.items():
        titles[workload] = spec["title"]
        x, y, info = make_batch(spec, device)
        model, optimizer = make_model_and_optimizer(spec, info, device)
        steps, states = make_steps(spec, model, optimizer, x, y, variants)
        plan = timing[workload]
        stats = common.time_interleaved(steps, device, rounds=plan["rounds"], calls_per_round=plan["calls_per_round"],
                                        warmup=plan["warmup"])
        base = stats[OFFICIAL_FP32]["median"]
        breakdowns[workload] = breakdowns_of(steps, states, x, device, plan["profiled"])
        for name in variants:
            finite[(workload, name)] = breakdowns[workload][name]["loss_finite"]
        for name, s in stats.items():
            records.append({"kind": "step", "workload": workload, "variant": name, "quantity": "step",
                            "median_ms": s["median"] * 1e3, "p20_ms": s["p20"] * 1e3, "p80_ms": s["p80"] * 1e3,
                            "speedup_vs_official_fp32": base / s["median"], "share_percent": None, "value": None})
        for name, result in breakdowns[workload].items():
            for key, value in result["ms"].items():
                records.append({"kind": "breakdown", "workload": workload, "variant": name, "quantity": key,
                                "median_ms": value, "p20_ms": None, "p80_ms": None, "speedup_vs_official_fp32": None,
                                "share_percent": 100 * value / result["wall_ms"], "value": None})
    als = als_benchmark(device, quick)
    for name, s in als["ms"].items():
        records.append({"kind": "step", "workload": "als_digits", "variant": name, "quantity": "batch",
                        "median_ms": s["median"], "p20_ms": s["p20"], "p80_ms": s["p80"],
                        "speedup_vs_official_fp32": als["ms"][ALS_OFFICIAL]["median"] / s["median"],
                        "share_percent": None, "value": None})
    accuracy, provenance, samples = [], None, 0
    if not skipped:
        model, provenance = digits_model(device, quick)
        _, test_set, _ = load_dataset("digits", augment=False)
        samples = len(test_set)
        accuracy = robust_accuracy_pair(model, test_set.images.to(device), test_set.labels.to(device), device,
                                        seeds=[0, 1, 2])
    for row in accuracy:
        for label in ("float32", "bfloat16"):
            records.append({"kind": "accuracy", "workload": "digits PGD-20", "variant": label,
                            "quantity": f"robust accuracy, seed {row['seed']}", "median_ms": None, "p20_ms": None,
                            "p80_ms": None, "speedup_vs_official_fp32": None, "share_percent": None,
                            "value": row[label]})
    meta = {
        "machine": common.machine_description(device), "device": str(device), "torch": torch.__version__,
        "cpu_bf16_ratio": hardware.cpu_bf16_ratio() if device.type == "cpu" else None, "bf16_skipped": skipped,
        "fastadv": fastadv.__version__, "quick": quick, "timing": timing, "workloads": WORKLOADS,
        "breakdowns": breakdowns, "als": als, "accuracy_check": {"model": provenance, "samples": samples, "rows": accuracy},
        "losses_finite_after_timing": {f"{w} / {v}": ok for (w, v), ok in finite.items()},
        "seconds": time.perf_counter() - started,
    }
    common.write_results("train", records, meta, out_dir)
    return report(records, meta, titles)


# ----------------------------------------------------------------------------- report
def _step_stats(records):
    stats = {}
    for r in records:
        if r["kind"] == "step" and r["workload"] in WORKLOADS:
            stats.setdefault(r["workload"], {})[r["variant"]] = r
    return stats


def _cell(ms, wall):
    return f"{ms:.2f} ({100 * ms / wall:.0f}%)"


def breakdown_table(workload_breakdowns, stats) -> str:
    names = list(workload_breakdowns)
    rows = []
    for key, label in CATEGORIES:
        values = [workload_breakdowns[n]["ms"][key] for n in names]
        if key not in ("other",) and max(values) < 1e-3:
            continue
        rows.append([label] + [_cell(workload_breakdowns[n]["ms"][key], workload_breakdowns[n]["wall_ms"])
                               for n in names])
    rows.append(["profiled step (wall)"] + [f"{workload_breakdowns[n]['wall_ms']:.2f}" for n in names])
    rows.append(["unprofiled step (median above)"] + [f"{stats[n]['median_ms']:.2f}" for n in names])
    rows.append(["clean forwards (attack + training loss)"] +
                [f"{workload_breakdowns[n]['clean_forwards']['attack_clean']} + "
                 f"{workload_breakdowns[n]['clean_forwards']['outer_clean']}" for n in names])
    return common.markdown_table(["ms per step (share)"] + names, rows)


def _group(ms, keys):
    return sum(ms[k] for k in keys)


ATTACK_MODEL = ("attack_forward", "attack_backward")
NOT_ATTACK = ("outer_clean", "outer_forward", "outer_losses", "outer_backward", "optimizer")


def verdicts(stats, breakdowns, accuracy, skipped=None) -> list[str]:
    """One line per target, met or missed, with the breakdown's explanation of the figure."""
    lines = []
    # 1. TRADES float32: the structural gain (clean forward once per batch instead of once per step).
    stat, parts = stats["trades_digits"], breakdowns["trades_digits"]
    speedup = stat["fastadv, float32"]["speedup_vs_official_fp32"]
    official, ours = parts[OFFICIAL_FP32], parts["fastadv, float32"]
    o, f = official["ms"], ours["ms"]
    clean_o, clean_f = o["attack_clean"] + o["outer_clean"], f["attack_clean"] + f["outer_clean"]
    saved = {"clean forwards": clean_o - clean_f,
             "training-loss backward (the official loss also backpropagates through its second clean forward)":
                 o["outer_backward"] - f["outer_backward"],
             "update ops": o["attack_update"] - f["attack_update"]}
    removable = sum(max(v, 0.0) for v in saved.values())
    common_ms = _group(o, ATTACK_MODEL)
    bound = official["wall_ms"] / max(official["wall_ms"] - removable, 1e-9)
    line = (f"- TRADES, fastadv float32 ≥ {TARGETS['structural']}× the official-style float32 step: "
            f"**{'met' if speedup >= TARGETS['structural'] else 'missed'}** ({speedup:.2f}×). "
            f"The official-style step runs {official['clean_forwards']['attack_clean']} + "
            f"{official['clean_forwards']['outer_clean']} clean forwards ({clean_o:.1f} ms, "
            f"{100 * clean_o / official['wall_ms']:.0f}% of its profiled step), fastadv "
            f"{ours['clean_forwards']['attack_clean']} + {ours['clean_forwards']['outer_clean']} ({clean_f:.1f} ms). "
            f"In the profile fastadv's structure saves " +
            ", ".join(f"{v:.1f} ms of {k}" for k, v in saved.items()) +
            f"; removing these alone predicts {bound:.2f}×. Both must run the attack's "
            f"{WORKLOADS['trades_digits']['steps']} model forward+backward passes at x_adv ({common_ms:.1f} ms in the "
            f"official-style profile, {100 * common_ms / official['wall_ms']:.0f}%), which no restructuring removes.")
    lines.append(line)
    if skipped:
        return lines + [f"- The bf16 targets: not measured ({skipped})."]
    # 2. bf16 attack, both workloads.
    for workload, parts in breakdowns.items():
        speedup = stats[workload]["fastadv, bf16 attack"]["speedup_vs_official_fp32"]
        fp32, bf16, official = parts["fastadv, float32"], parts["fastadv, bf16 attack"], parts[OFFICIAL_FP32]
        attack_fp32, attack_bf16 = _group(fp32["ms"], ATTACK_MODEL), _group(bf16["ms"], ATTACK_MODEL)
        rest_fp32 = fp32["wall_ms"] - attack_fp32
        float32_part = _group(bf16["ms"], NOT_ATTACK)
        line = (f"- {WORKLOADS[workload]['method'].upper().replace('_', '-')} ({WORKLOADS[workload]['model']}), fastadv "
                f"with the bf16 attack ≥ {TARGETS['bf16']}× the official-style float32 step: "
                f"**{'met' if speedup >= TARGETS['bf16'] else 'missed'}** ({speedup:.2f}×; fastadv float32 "
                f"{stats[workload]['fastadv, float32']['speedup_vs_official_fp32']:.2f}×, the official-style step "
                f"with the same bf16 attack {stats[workload]['official-style, bf16 attack']['speedup_vs_official_fp32']:.2f}×). "
                f"In the profile bf16 autocast takes the attack's model forward+backward from {attack_fp32:.1f} to "
                f"{attack_bf16:.1f} ms ({attack_fp32 / max(attack_bf16, 1e-9):.2f}× faster); the training loss's "
                f"forward/backward and the optimizer stay float32 ({float32_part:.1f} ms, "
                f"{100 * float32_part / bf16['wall_ms']:.0f}% of the bf16 step).")
        if speedup < TARGETS["bf16"]:
            # The profile's shares applied to the unprofiled medians (profiling adds per-op overhead).
            share = attack_fp32 / fp32["wall_ms"]
            fp32_median = stats[workload]["fastadv, float32"]["median_ms"]
            budget = stats[workload][OFFICIAL_FP32]["median_ms"] / TARGETS["bf16"] - (1 - share) * fp32_median
            structural = stats[workload]["fastadv, float32"]["speedup_vs_official_fp32"]
            line += (f" fastadv's own structure gives {structural:.2f}× here, so the rest has to come from bf16. "
                     f"The attack's model passes are {100 * share:.0f}% of fastadv's float32 step")
            needed, measured = share * fp32_median / max(budget, 1e-9), attack_fp32 / max(attack_bf16, 1e-9)
            if budget > 0 and measured < needed:
                line += (f"; for {TARGETS['bf16']:.0f}× they would have to run {needed:.1f}× faster in bf16 than in "
                         f"float32, with the float32 rest unchanged, and on this machine they run {measured:.2f}× "
                         f"faster. That time is the model's own convolutions and matrix products: FLOPs that fastadv "
                         f"cannot remove.")
            elif budget > 0:
                line += (f"; for {TARGETS['bf16']:.0f}× they would have to run {needed:.1f}× faster in bf16, and in "
                         f"the profile they run {measured:.2f}× faster: by the profile the target is within reach, so "
                         f"the shortfall is within this run's timing noise (compare the p20–p80 ranges above).")
            else:
                line += (f"; even a free attack could not reach {TARGETS['bf16']:.0f}×: the rest of fastadv's "
                         f"float32 step is already more than half the official-style step.")
        lines.append(line)
    # 3. accuracy.
    worst = max(abs(r["float32"] - r["bfloat16"]) for r in accuracy) * 100
    lines.append(f"- Robust accuracy with the bf16 attack within {TARGETS['accuracy_points']:.0f} points of float32: "
                 f"**{'met' if worst <= TARGETS['accuracy_points'] else 'missed'}** (largest difference over "
                 f"{len(accuracy)} random starts: {worst:.2f} points).")
    return lines


def report(records, meta, titles) -> str:
    stats = _step_stats(records)
    breakdowns = meta["breakdowns"]
    lines = [f"Training step (attack + loss + backward + SGD step), {meta['machine']}"
             + (" — quick run (few rounds, noisier)" if meta["quick"] else ""), ""]
    for workload, by_variant in stats.items():
        plan = meta["timing"][workload]
        rows = [[name, f"{r['median_ms']:.2f}", f"{r['p20_ms']:.2f}–{r['p80_ms']:.2f}",
                 f"{r['speedup_vs_official_fp32']:.2f}×"] for name, r in by_variant.items()]
        lines += [f"**{titles[workload]}** — {plan['rounds']} interleaved rounds of {plan['calls_per_round']} "
                  f"step(s) per variant", "",
                  common.markdown_table(["variant", "median ms", "p20–p80 ms", "vs official-style float32"], rows), ""]
    lines += ["Every variant steps its own deep copy of the same initial model and SGD optimizer (momentum 0.9) on "
              "the same batch (data loading is not timed). Official-style: the eager step as the papers' code writes "
              "it (TRADES: Zhang et al.'s train_trades_cifar10.py, the clean forward recomputed in every attack step "
              "and twice in the loss; PGD-AT: Madry / Rice et al., attack in eval mode). bf16 attack: the attack's "
              "forward/backward under torch.autocast(bfloat16) (fastadv: attack_dtype=\"bfloat16\"; official-style: "
              "its model calls in the attack under the same autocast, logits cast to float32); the training loss, "
              "its backward and the optimizer stay float32 in every variant."
              + (f" bf16 on this CPU: a bf16 convolution forward+backward takes {meta['cpu_bf16_ratio']:.2f}x "
                 f"float32's time." if meta.get("cpu_bf16_ratio") else ""), ""]
    lines += als_report(meta["als"])
    lines += ["Where the time goes: torch.profiler on the real steps (CPU time of each top-level op, "
              "including its children), grouped by what the ops are. The benchmark only adds a profiler region "
              "around each forward of the model (hooks on its root module) to tell forwards inside the attack "
              "(eval mode) from those of the training loss (train mode) and clean inputs from adversarial ones; "
              "backward ops are the autograd engine's nodes, split into losses and model by node name; the attack "
              "phase ends at the first train-mode forward. Profiling adds overhead per op, so the profiled step "
              "is longer than the unprofiled median; shares are of the profiled step.", ""]
    for workload, parts in breakdowns.items():
        steps = next(iter(parts.values()))["profiled_steps"]
        lines += [f"**{titles[workload]}** (per variant, the profiled step of median wall time among {steps}, "
                  f"profiled in turns)", "",
                  breakdown_table(parts, stats[workload]), ""]
    check = meta["accuracy_check"]
    if meta["bf16_skipped"]:
        lines += [f"**{meta['bf16_skipped']}.**", "", "**Targets**", ""]
        return "\n".join(lines + verdicts(stats, breakdowns, [], meta["bf16_skipped"]) + _footer(meta))
    rows = [[r["seed"], f"{100 * r['clean']:.2f}%", f"{100 * r['float32']:.2f}%", f"{100 * r['bfloat16']:.2f}%",
             f"{100 * (r['bfloat16'] - r['float32']):+.2f}", r["flipped"]] for r in check["rows"]]
    lines += [f"**bf16 attack accuracy check**: PGD-20 (L∞, eps 0.2, alpha 0.05, uniform start from a generator "
              f"seeded per row, the same start for both dtypes) on the {check['samples']} digits test images; model: "
              f"{check['model']}.", "",
              common.markdown_table(["seed", "clean", "PGD-20 float32", "PGD-20 bf16 attack", "difference (points)",
                                     "images whose outcome differs"], rows), ""]
    lines += ["**Targets**", ""] + verdicts(stats, breakdowns, check["rows"])
    return "\n".join(lines + _footer(meta))


def _footer(meta) -> list[str]:
    lines = []
    bad = [k for k, ok in meta["losses_finite_after_timing"].items() if not ok]
    if bad:
        lines += ["", f"Warning: the loss was not finite after timing for {', '.join(bad)}."]
    return lines + ["", f"Benchmark wall time: {meta['seconds']:.0f} s."]


# ----------------------------------------------------------------------------- pytest-benchmark
@functools.lru_cache(maxsize=1)
def _digits_setup():
    spec = WORKLOADS["trades_digits"]
    x, y, info = make_batch(spec, torch.device("cpu"))
    model, optimizer = make_model_and_optimizer(spec, info, torch.device("cpu"))
    return spec, model, optimizer, x, y


def _digits_step(variant):
    spec, model, optimizer, x, y = _digits_setup()
    steps, _ = make_steps(spec, model, optimizer, x, y)
    return steps[variant]


def test_bench_trades_step_official(benchmark):
    benchmark(_digits_step(OFFICIAL_FP32))


def test_bench_trades_step_fastadv(benchmark):
    benchmark(_digits_step("fastadv, float32"))


def test_bench_trades_step_fastadv_bf16(benchmark):
    skipped = bf16_skipped(torch.device("cpu"))
    if skipped:
        import pytest

        pytest.skip(skipped)
    benchmark(_digits_step("fastadv, bf16 attack"))
