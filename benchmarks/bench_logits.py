"""Benchmark of the logits family: `fastadv bench logits`.

Forward and backward of the fused logit-head losses at B = 4096, C = 100, float32 (a CIFAR-100
batch, or 40 CIFAR-10 batches of an attack's worth of logits), against the eager reference and
torch.compile of the same reference (compile time reported apart), and, where a user would
otherwise write it differently, against that code:

- ``trades_kl``: the batch mean of KL(p(z_nat) ‖ p(z_adv)) (``reduction="mean"``, as TRADES
  uses it), also against the official TRADES code's
  ``KLDivLoss(sum)(log_softmax(z_adv), softmax(z_nat)) / B``;
- the full LMA-AT loss of one batch (seed 002, Alg. 1): ``mean L'(z(x')) + mean BCE(p(x'), y) +
  β·mHuber(Ē'_t, Ē_t, α)`` with the moving averages ``Ē_t = τ·Ē_{t−1} + (1 − τ)·z`` of both
  logits (``margin_sq_hinge``, ``boosted_cross_entropy``, ``mhuber_moving_average``), written
  once and run on the reference ops, the fused ops, and compiled;
- every other op of the family, fused against eager and compiled reference;
- ``masked_gram`` (the member op: V [M, B, C] → [B, M, M]) at M = 3, B = 4096, C = 100 against
  the eager formula ``U = F.normalize(V * (1 − F.one_hot(y, C)), dim=-1);
  G = torch.einsum("mbc,nbc->bmn", U, U)`` and torch.compile of it, the backward reached with a
  random [B, M, M] gradient (the loss ``(G·W).sum()``), compile time with an empty inductor cache;
- the per-call cost of ``trades_kl(z_nat, z_adv, "mean")`` forward and backward (the public op,
  validation included) against the eager formula ``(p·(log_softmax(z_nat) − log_softmax(z_adv)))
  .sum(1).mean()`` and torch.compile of it at [128, 10], [512, 10] and [4096, 100]: at
  [128, 10] the work is a few hundred exponentials, so the time is the per-call overhead.

"forward" runs with inputs that require gradients (the fused ops then also compute their
gradients); "forward+backward" adds ``torch.autograd.grad`` with respect to every logits input.
The rows are small (400 bytes), so these ops are bound by arithmetic (exp) and per-call overhead
rather than by memory bandwidth: no roofline is reported.

Also a pytest-benchmark suite: `pytest benchmarks/bench_logits.py --benchmark-only`.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

import fastadv
from fastadv import ops
from fastadv.reference import logits as reference

from . import common

BATCH, CLASSES = 4096, 100
# LMA-AT, seed 002 (ResNet-18, CIFAR-10): τ = 0.2, δ = 0.9, β = 86, α = 5.345
TAU, DELTA, BETA, ALPHA = 0.2, 0.9, 86.0, 5.345


def make_inputs(device, seed=0):
    g = torch.Generator().manual_seed(seed)
    z_nat = torch.randn(BATCH, CLASSES, generator=g) * 3
    z_adv = z_nat + torch.randn(BATCH, CLASSES, generator=g)
    ema_nat, ema_adv = (torch.randn(BATCH, CLASSES, generator=g) * 3 for _ in range(2))
    y = torch.randint(0, CLASSES, (BATCH,), generator=g)
    return {name: t.to(device) for name, t in
            dict(z_nat=z_nat, z_adv=z_adv, ema_nat=ema_nat, ema_adv=ema_adv, y=y).items()}


def lma_at_loss(losses, z_nat, z_adv, ema_nat, ema_adv, y):
    """The LMA-AT objective of one batch on the ops of `losses` (the fused ops or the reference)."""
    regulariser, _, _ = losses.mhuber_moving_average(z_adv, z_nat, ema_adv, ema_nat, TAU, ALPHA)
    return (losses.margin_sq_hinge(z_adv, y, DELTA).mean() + losses.boosted_cross_entropy(z_adv, y).mean()
            + BETA * regulariser)


def official_trades_kl(z_nat, z_adv):
    """TRADES' official code (Zhang et al. 2019): KLDivLoss(size_average=False) / batch size."""
    return F.kl_div(F.log_softmax(z_adv, dim=1), F.softmax(z_nat, dim=1), reduction="sum") / z_nat.shape[0]


# Each case: the scalar loss of one batch on the ops of `losses`, from (z_nat, z_adv, ema_nat,
# ema_adv, y); gradients are taken with respect to z_nat and z_adv (the moving averages are
# carried state, detached).
CASES = {
    "trades_kl": lambda L, a, b, ea, eb, y: L.trades_kl(a, b, reduction="mean"),
    "LMA-AT loss": lma_at_loss,
    "mart_loss": lambda L, a, b, ea, eb, y: sum(t.mean() for t in L.mart_loss(a, b, y)),
    "soft_cross_entropy": lambda L, a, b, ea, eb, y: L.soft_cross_entropy(b, torch.softmax(a, dim=1)).mean(),
    "smoothed_cross_entropy": lambda L, a, b, ea, eb, y: L.smoothed_cross_entropy(b, y, 0.1).mean(),
    "boosted_cross_entropy": lambda L, a, b, ea, eb, y: L.boosted_cross_entropy(b, y).mean(),
    "margin_sq_hinge": lambda L, a, b, ea, eb, y: L.margin_sq_hinge(b, y, DELTA).mean(),
    "mhuber": lambda L, a, b, ea, eb, y: L.mhuber(b, a, ALPHA),
    "mhuber_moving_average": lambda L, a, b, ea, eb, y: L.mhuber_moving_average(b, a, eb, ea, TAU, ALPHA)[0],
    "logit_pairing": lambda L, a, b, ea, eb, y: L.logit_pairing(a, b).mean(),
    "logit_squeeze": lambda L, a, b, ea, eb, y: L.logit_squeeze(b).mean(),
}
HEADLINE = ("trades_kl", "LMA-AT loss")


# masked_gram: three members (an ensemble of three, as in ALS and ADP) of B = 4096 logits rows.
MEMBERS = 3


def eager_masked_gram(V, y):
    """The masked Gram as a user writes it in eager PyTorch (the issue's formula)."""
    U = F.normalize(V * (1 - F.one_hot(y, V.shape[2])), dim=-1)
    return torch.einsum("mbc,nbc->bmn", U, U)


def measure_masked_gram(device, fused_backend, rounds):
    """Forward and forward+backward timings of masked_gram: the fused public op, the eager formula
    and torch.compile of it (its first forward+backward timed with an empty inductor cache)."""
    g = torch.Generator().manual_seed(3)
    V = (torch.randn(MEMBERS, BATCH, CLASSES, generator=g) * 3).to(device).requires_grad_()
    y = torch.randint(0, CLASSES, (BATCH,), generator=g).to(device)
    weights = torch.randn(BATCH, MEMBERS, MEMBERS, generator=g).to(device)

    def fused(V, y):
        with fastadv.use_backend(fused_backend):
            return ops.masked_gram(V, y)

    def with_gradient(fn):
        return lambda: torch.autograd.grad((fn(V, y) * weights).sum(), [V])

    with common.fresh_inductor_cache():
        compiled = torch.compile(eager_masked_gram)
        start = time.perf_counter()
        with_gradient(compiled)()
        compile_s = time.perf_counter() - start
    implementations = {"eager formula": eager_masked_gram, "torch.compile(eager formula)": compiled,
                       "fastadv masked_gram": fused}
    results = {}
    for mode, wrap in (("forward", lambda fn: lambda: fn(V, y)), ("forward+backward", with_gradient)):
        functions = {name: wrap(fn) for name, fn in implementations.items()}
        stats = common.time_interleaved(functions, device, rounds=rounds)
        for name, fn in functions.items():
            stats[name]["allocated_MiB"] = common.allocated_mib(fn, device)
        results[mode] = stats
    return results, compile_s


# (rows, classes) of the per-call rows; at the first the work is negligible next to the overhead.
PER_CALL_SHAPES = ((128, 10), (512, 10), (4096, 100))


def eager_trades_kl(z_nat, z_adv):
    """The TRADES KL as a user writes it in eager PyTorch."""
    p = torch.softmax(z_nat, dim=1)
    return (p * (torch.log_softmax(z_nat, dim=1) - torch.log_softmax(z_adv, dim=1))).sum(1).mean()


def measure_per_call(device, fused_backend, rounds):
    """Microseconds per forward+backward of trades_kl (mean) at each of PER_CALL_SHAPES: the
    fused public op, the eager formula and torch.compile of it, on one torch thread. At these
    sizes the work of every implementation fits one thread; a second one only adds the wake-up
    of OpenMP's team to the eager ops that open a parallel region, which on a shared machine
    (another process on the other core) took the eager formula from 0.2 to 48 ms per call."""
    results = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for rows, classes in PER_CALL_SHAPES:
            results.append(((rows, classes), _per_call(rows, classes, device, fused_backend, rounds)))
    finally:
        torch.set_num_threads(threads)
    return results


def _per_call(rows, classes, device, fused_backend, rounds):
    g = torch.Generator().manual_seed(rows)
    z_nat = (torch.randn(rows, classes, generator=g) * 3).to(device).requires_grad_()
    z_adv = (z_nat.detach() + torch.randn(rows, classes, generator=g).to(device)).requires_grad_()
    torch._dynamo.reset()
    compiled = torch.compile(eager_trades_kl, dynamic=False)

    def call(loss_fn):
        return lambda: torch.autograd.grad(loss_fn(z_nat, z_adv), [z_nat, z_adv])

    functions = {"eager formula": call(eager_trades_kl), "torch.compile(eager formula)": call(compiled),
                 "fastadv trades_kl": call(lambda a, b: ops.trades_kl(a, b, reduction="mean"))}
    # Many calls per sample: a call at [128, 10] lasts tens of microseconds.
    calls = max(5, 200_000 // (rows * classes))
    with fastadv.use_backend(fused_backend):
        return common.time_interleaved(functions, device, rounds=rounds, calls_per_round=calls)


def _with_gradients(loss_fn, inputs):
    """forward+backward: the loss and its gradients with respect to both logits."""
    z_nat, z_adv = (inputs[k].detach().requires_grad_() for k in ("z_nat", "z_adv"))

    def call():
        loss = loss_fn(z_nat, z_adv, inputs["ema_nat"], inputs["ema_adv"], inputs["y"])
        # allow_unused: the single-input losses do not use z_nat
        return torch.autograd.grad(loss, [z_nat, z_adv], allow_unused=True)
    return call


def _forward(loss_fn, inputs):
    z_nat, z_adv = (inputs[k].detach().requires_grad_() for k in ("z_nat", "z_adv"))
    return lambda: loss_fn(z_nat, z_adv, inputs["ema_nat"], inputs["ema_adv"], inputs["y"])


def _compiled(case, inputs):
    """torch.compile of the reference version of `case`, and the seconds its first forward and
    backward took: with an empty inductor cache for the headline cases, and otherwise (to keep
    the benchmark short) with whatever the cache holds, so then not reported."""
    # The case's own function is compiled: dynamo caches by code object, and one lambda (or
    # partial) shared by every case would be recompiled per case until dynamo's recompile limit
    # (8), after which the remaining cases silently ran eager.
    compiled_case = torch.compile(CASES[case])

    def compiled(*args):
        return compiled_case(reference, *args)
    if case not in HEADLINE:
        _with_gradients(compiled, inputs)()
        return compiled, None
    with common.fresh_inductor_cache():
        start = time.perf_counter()
        _with_gradients(compiled, inputs)()
        return compiled, time.perf_counter() - start


def measure(case, device, fused_backend, rounds):
    """Forward and forward+backward timings of every implementation of `case`, and the compile time."""
    inputs = make_inputs(device)
    compiled, compile_s = _compiled(case, inputs)

    def fused(*args):
        with fastadv.use_backend(fused_backend):
            return CASES[case](ops, *args)

    implementations = {"eager reference": lambda *args: CASES[case](reference, *args),
                       "torch.compile(reference)": compiled, "fastadv": fused}
    if case == "trades_kl":
        official_compiled = torch.compile(lambda a, b, *_: official_trades_kl(a, b))
        implementations["official TRADES code, eager"] = lambda a, b, *_: official_trades_kl(a, b)
        implementations["torch.compile(official TRADES code)"] = official_compiled
    results = {}
    for mode, wrap in (("forward", _forward), ("forward+backward", _with_gradients)):
        functions = {name: wrap(fn, inputs) for name, fn in implementations.items()}
        stats = common.time_interleaved(functions, device, rounds=rounds)
        for name, fn in functions.items():
            stats[name]["allocated_MiB"] = common.allocated_mib(fn, device)
        results[mode] = stats
    return results, compile_s


def run(device: str = "cpu", quick: bool = False, out_dir=None) -> str:
    device = torch.device(device)
    fused_backend = "cpu" if device.type == "cpu" else "auto"
    records = []

    def add(case, results, compile_s, eager, compiled):
        """One record per (mode, implementation), its speedups against ``eager`` and ``compiled``."""
        for mode, stats in results.items():
            eager_s, compiled_s = stats[eager]["median"], stats[compiled]["median"]
            for name, s in stats.items():
                records.append({
                    "case": case, "mode": mode, "implementation": name, "median_ms": s["median"] * 1e3,
                    "p20_ms": s["p20"] * 1e3, "p80_ms": s["p80"] * 1e3, "speedup_vs_eager": eager_s / s["median"],
                    "speedup_vs_compile": compiled_s / s["median"], "allocated_MiB": s["allocated_MiB"],
                    "compile_s": compile_s if name == compiled else None})

    for case in (HEADLINE if quick else CASES):
        rounds = 8 if quick else (40 if case in HEADLINE else 12)
        results, compile_s = measure(case, device, fused_backend, rounds)
        add(case, results, compile_s, "eager reference", "torch.compile(reference)")
    gram_results, gram_compile_s = measure_masked_gram(device, fused_backend, rounds=8 if quick else 40)
    add(MASKED_GRAM_CASE, gram_results, gram_compile_s, "eager formula", "torch.compile(eager formula)")
    for (rows, classes), stats in measure_per_call(device, fused_backend, rounds=10 if quick else 30):
        eager_s = stats["eager formula"]["median"]
        compiled_s = stats["torch.compile(eager formula)"]["median"]
        for name, s in stats.items():
            records.append({
                "case": f"trades_kl per call [{rows}, {classes}]", "mode": "forward+backward", "implementation": name,
                "median_ms": s["median"] * 1e3, "p20_ms": s["p20"] * 1e3, "p80_ms": s["p80"] * 1e3,
                "speedup_vs_eager": eager_s / s["median"], "speedup_vs_compile": compiled_s / s["median"],
                "allocated_MiB": None, "compile_s": None})
    meta = {"machine": common.machine_description(device), "device": str(device), "torch": torch.__version__,
            "fastadv": fastadv.__version__, "shape": [BATCH, CLASSES], "dtype": "float32",
            "rounds": {"headline": 8 if quick else 40, "other ops": 12},
            "inductor_cpp_compiler": common.cxx_compiler_for_inductor() if device.type == "cpu" else None}
    common.write_results("logits", records, meta, out_dir)
    return report(records, meta)


MASKED_GRAM_CASE = f"masked_gram [{MEMBERS}, {BATCH}, {CLASSES}]"


def masked_gram_summary(records) -> str:
    """The masked_gram rows: milliseconds of each implementation and the fused op's ratios."""
    rows = []
    for r in records:
        if r["case"] == MASKED_GRAM_CASE and r["implementation"] == "fastadv masked_gram":
            by_name = {q["implementation"]: q for q in records if q["case"] == r["case"] and q["mode"] == r["mode"]}
            rows.append([r["mode"], f"{by_name['eager formula']['median_ms']:.3f}",
                         f"{by_name['torch.compile(eager formula)']['median_ms']:.3f}", f"{r['median_ms']:.3f}",
                         f"{r['speedup_vs_eager']:.2f}×", f"{r['speedup_vs_compile']:.2f}×"])
    return common.markdown_table(["mode", "eager formula ms", "compiled ms", "fastadv ms", "vs eager", "vs compiled"],
                                 rows)


def per_call(records) -> str:
    """The per-call rows: microseconds of each implementation and the fused op's ratios."""
    rows = []
    for r in records:
        if r["case"].startswith("trades_kl per call") and r["implementation"] == "fastadv trades_kl":
            by_name = {q["implementation"]: q for q in records if q["case"] == r["case"]}
            rows.append([r["case"].removeprefix("trades_kl per call "),
                         f"{by_name['eager formula']['median_ms'] * 1e3:.1f}",
                         f"{by_name['torch.compile(eager formula)']['median_ms'] * 1e3:.1f}",
                         f"{r['median_ms'] * 1e3:.1f}", f"{r['speedup_vs_eager']:.2f}×", f"{r['speedup_vs_compile']:.2f}×"])
    return common.markdown_table(["[B, C]", "eager formula µs", "compiled µs", "fastadv µs", "vs eager",
                                  "vs compiled"], rows)


def summary(records) -> str:
    """One row per case and mode: the baselines' times, then the fused op's with its ratios."""
    cases = {}
    for r in records:
        if r["case"].startswith("trades_kl per call") or r["case"] == MASKED_GRAM_CASE:
            continue
        cases.setdefault((r["case"], r["mode"]), {})[r["implementation"]] = r
    rows = []
    for (case, mode), by_name in cases.items():
        fused = by_name["fastadv"]
        rows.append([case, mode, f"{by_name['eager reference']['median_ms']:.3f}",
                     f"{by_name['torch.compile(reference)']['median_ms']:.3f}", f"{fused['median_ms']:.3f}",
                     f"{fused['speedup_vs_eager']:.2f}×", f"{fused['speedup_vs_compile']:.2f}×"])
    return common.markdown_table(["loss", "mode", "eager ref. ms", "compiled ref. ms", "fastadv ms", "vs eager",
                                  "vs compiled"], rows)


def report(records, meta) -> str:
    rows = [[r["case"], r["mode"], r["implementation"], f"{r['median_ms']:.3f}",
             f"{r['p20_ms']:.3f}–{r['p80_ms']:.3f}", f"{r['speedup_vs_eager']:.2f}×",
             f"{r['speedup_vs_compile']:.2f}×", "" if r["allocated_MiB"] is None else f"{r['allocated_MiB']:.1f}"]
            for r in records]
    table = common.markdown_table(["loss", "mode", "implementation", "median ms", "p20–p80 ms", "vs eager reference",
                                   "vs compiled reference", "allocated MiB"], rows)
    lines = [f"logits family, B={BATCH}, C={CLASSES}, float32, {meta['machine']}", "", summary(records), "",
             f"{MASKED_GRAM_CASE} ([M, B, C], float32): the fused public op against the eager formula "
             "U = F.normalize(V * (1 - F.one_hot(y, C)), dim=-1); G = einsum(\"mbc,nbc->bmn\", U, U) and "
             "torch.compile of it; forward+backward: plus torch.autograd.grad of (G·W).sum() with respect to V:", "",
             masked_gram_summary(records), "",
             "Per call: trades_kl(z_nat, z_adv, \"mean\") forward+backward (public op, validation included) "
             "against the eager formula and torch.compile of it, one torch thread; at [128, 10] the time is the "
             "per-call overhead:", "",
             per_call(records), "",
             "All timings:", "", table, "",
             "forward: inputs that require gradients (the fused ops compute their gradients in this pass); "
             "forward+backward: plus torch.autograd.grad with respect to both logits.",
             "allocated MiB: memory one call allocates (CPU: the sum of its allocations from torch.profiler; "
             "CUDA: the peak above the memory held before the call).",
             "torch.compile's first forward+backward, each with an empty inductor cache:"]
    for r in records:
        if r["compile_s"] is not None and r["mode"] == "forward":
            lines.append(f"- {r['case']}: {r['compile_s']:.1f} s")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- pytest-benchmark
def _bench_call(losses, case):
    inputs = make_inputs(torch.device("cpu"))
    with fastadv.use_backend("cpu" if losses is ops else "reference"):
        return _with_gradients(lambda *args: CASES[case](losses, *args), inputs)


def test_bench_trades_kl_fused(benchmark):
    call = _bench_call(ops, "trades_kl")
    with fastadv.use_backend("cpu"):
        benchmark(call)


def test_bench_trades_kl_reference(benchmark):
    benchmark(_bench_call(reference, "trades_kl"))


def test_bench_lma_at_fused(benchmark):
    call = _bench_call(ops, "LMA-AT loss")
    with fastadv.use_backend("cpu"):
        benchmark(call)


def test_bench_lma_at_reference(benchmark):
    benchmark(_bench_call(reference, "LMA-AT loss"))
