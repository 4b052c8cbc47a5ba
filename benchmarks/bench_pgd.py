"""Benchmark of the pgd family: `fastadv bench pgd`.

pgd_step (L-inf and L2) against the eager reference and torch.compile of the same reference,
and against the update as attack code usually writes it (torchattacks' style), eager and
compiled, with torch.compile's one-off costs (first compile, recompile on a new batch size)
reported apart. The step is memory-bound: it reads x_adv, grad and x and writes one output, 16 bytes per
float32 element, so its roofline is 16 bytes/element at a copy_ bandwidth measured in the same
run, interleaved with the other timings and through the same memory. Two regimes: "cold",
inputs rotating through more memory than the caches hold, as in an attack loop where a model
pass runs between two steps; and "hot", the same tensors every call.

UDR's step (udr_step, its three costs, at [512, 3, 32, 32]) against its eager formula (the reference,
one torch op per line of METHODS.md section 5) and torch.compile of it, cold inputs, the same
interleaved rounds.

Also a pytest-benchmark suite: `pytest benchmarks/bench_pgd.py --benchmark-only`.
"""
from __future__ import annotations

import functools
import time

import torch

import fastadv
from fastadv.ops import pgd_step, pgd_step_, soft_cost, udr_step, udr_step_
from fastadv.ops.pgd import unchecked
from fastadv.reference import pgd as reference

from . import common

SHAPES = [(512, 3, 32, 32), (4096, 1, 8, 8)]
RADII = {"linf": (8 / 255, 2 / 255), "l2": (0.5, 0.1)}
BYTES_PER_ELEMENT = 16  # x_adv, grad, x read and the result written, float32
COLD_BYTES = 256 * 2**20  # input sets beyond any last-level cache of a 2-core share
ROOFLINE = "copy_ of the same bytes"


def make_inputs(shape, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g)
    x_adv = (x + 0.03 * (2 * torch.rand(shape, generator=g) - 1)).clamp(0, 1)
    grad = torch.randn(shape, generator=g)
    return tuple(t.to(device) for t in (x_adv, grad, x))


def idiomatic_step(x_adv, grad, x, eps, alpha, norm):
    """The update as attack code usually writes it (torchattacks' PGD and PGDL2 style): the
    third-party baseline. Unlike fastadv and its reference it maps a NaN gradient to no step
    (torch.sign(NaN) = 0) and adds 1e-10 to the gradient norm instead of skipping zero rows."""
    if norm == "linf":
        stepped = x_adv + alpha * grad.sign()
        delta = torch.clamp(stepped - x, min=-eps, max=eps)
        return torch.clamp(x + delta, 0, 1)
    batch = x_adv.shape[0]
    view = (batch,) + (1,) * (x_adv.dim() - 1)
    grad_norm = torch.norm(grad.reshape(batch, -1), p=2, dim=1) + 1e-10
    delta = x_adv + alpha * grad / grad_norm.reshape(view) - x
    delta_norm = torch.norm(delta.reshape(batch, -1), p=2, dim=1)
    factor = torch.minimum(eps / delta_norm, torch.ones_like(delta_norm))
    return torch.clamp(x + delta * factor.reshape(view), 0, 1)


def compile_costs(fn, x_adv, grad, x):
    """torch.compile's one-off costs: the first call (compilation) at this batch size, and the
    first call on half the batch size (a recompilation, now with a dynamic batch dimension).
    The compiled function that is timed afterwards is the static one, compile's best case."""
    with common.fresh_inductor_cache():
        start = time.perf_counter()
        compiled = torch.compile(fn)
        compiled(x_adv, grad, x)
        first = time.perf_counter() - start
        half = x_adv.shape[0] // 2
        resized = torch.compile(fn)
        resized(x_adv, grad, x)
        start = time.perf_counter()
        resized(x_adv[:half], grad[:half], x[:half])
        recompile = time.perf_counter() - start
    return compiled, first, recompile


class Rotation:
    """Input sets used in turn. With one set the working set stays in the CPU caches between
    calls ("hot"); with enough sets to exceed the caches every call reads from memory ("cold"),
    as in an attack loop where a model forward/backward runs between two steps."""

    def __init__(self, shape, device, sets):
        self.sets = [make_inputs(shape, device, seed=i) for i in range(sets)]
        self.in_place = [x_adv.clone() for x_adv, _, _ in self.sets]
        # The roofline's copy_: source and destination of 2 * numel float32 elements each move
        # the 16 bytes/element of one step, through the same kind of memory as the step.
        numel = torch.Size(shape).numel()
        self.copies = [(torch.rand(2 * numel, device=device), torch.empty(2 * numel, device=device))
                       for _ in range(sets)]
        self.index = 0

    def next(self):
        self.index = (self.index + 1) % len(self.sets)
        return self.sets[self.index], self.in_place[self.index]

    def copy(self):
        self.index = (self.index + 1) % len(self.sets)
        source, destination = self.copies[self.index]
        return destination.copy_(source)


def named_backends(device) -> dict[str, str]:
    """On a GPU, the backends timed by name besides ``auto``: the host's work per call differs
    between Triton's Python launcher and the C++ dispatcher, and at these sizes it is most of the
    time."""
    return {"CUDA C++": "cuda", "Triton": "triton"} if device.type == "cuda" else {}


def in_place_variants(op, unchecked_op, rotation, device, fused_backend, arguments) -> dict:
    """The in-place op through each of :func:`named_backends`, and its unchecked form (what the
    attack loops call: no checks), each timed as its own row."""
    def through(backend_name):
        def call():
            (_, grad, x), in_place = rotation.next()
            with fastadv.use_backend(backend_name):
                return op(in_place, grad, x, **arguments)
        return call

    def unchecked_call():
        (_, grad, x), in_place = rotation.next()
        with fastadv.use_backend(fused_backend):
            return unchecked_op(in_place, grad, x)

    variants = {f"fastadv {op.__name__} ({label})": through(name) for label, name in named_backends(device).items()}
    variants[f"fastadv unchecked.{op.__name__} (the attack loop's call)"] = unchecked_call
    return variants


def measure(norm, device, fused_backend, rotation, compiled, rounds):
    eps, alpha = RADII[norm]
    reference_step = functools.partial(reference.pgd_step, eps=eps, alpha=alpha, norm=norm)
    idiom = functools.partial(idiomatic_step, eps=eps, alpha=alpha, norm=norm)

    def fused():
        (x_adv, grad, x), _ = rotation.next()
        with fastadv.use_backend(fused_backend):
            return pgd_step(x_adv, grad, x, eps, alpha, norm=norm)

    def fused_in_place():
        (_, grad, x), in_place = rotation.next()
        with fastadv.use_backend(fused_backend):
            return pgd_step_(in_place, grad, x, eps, alpha, norm=norm)

    functions = {
        "eager reference": lambda: reference_step(*rotation.next()[0]),
        "torch.compile(reference)": lambda: compiled["reference"](*rotation.next()[0]),
        "idiomatic update, eager": lambda: idiom(*rotation.next()[0]),
        "torch.compile(idiomatic update)": lambda: compiled["idiom"](*rotation.next()[0]),
        "fastadv pgd_step": fused,
        "fastadv pgd_step_ (in place)": fused_in_place,
        **in_place_variants(pgd_step_, functools.partial(_unchecked_pgd_step_, eps=eps, alpha=alpha, norm=norm),
                            rotation, device, fused_backend, dict(eps=eps, alpha=alpha, norm=norm)),
        ROOFLINE: rotation.copy,
    }
    stats = common.time_interleaved(functions, device, rounds=rounds)
    for name, fn in functions.items():
        if name != ROOFLINE:
            stats[name]["allocated_MiB"] = common.allocated_mib(fn, device)
    return stats


def _unchecked_pgd_step_(x_adv, grad, x, eps, alpha, norm):
    return unchecked.pgd_step_(x_adv, grad, x, eps, alpha, norm, (0.0, 1.0))


def _unchecked_udr_step_(x_adv, grad, x, eps, eta, lam, tau, cost):
    return unchecked.udr_step_(x_adv, grad, x, eps, eta, lam, tau, cost, (0.0, 1.0))


# UDR at CIFAR's L-inf setting (METHODS.md section 5): ε = 8/255, η = 2/255, τ = 2η, λ = 1.
UDR_SHAPE = (512, 3, 32, 32)
UDR_ARGUMENTS = dict(eps=8 / 255, eta=2 / 255, lam=1.0, tau=4 / 255)


def measure_udr(cost, device, fused_backend, rounds, op="udr_step"):
    """``op`` (udr_step, or soft_cost: λ's statistic of the examples) against the eager reference
    and its compilation (compile time apart), cold inputs."""
    numel = torch.Size(UDR_SHAPE).numel()
    rotation = Rotation(UDR_SHAPE, device, max(2, -(-COLD_BYTES // (8 * numel * 4))))
    eps, tau = UDR_ARGUMENTS["eps"], UDR_ARGUMENTS["tau"]
    if op == "udr_step":
        eager = functools.partial(reference.udr_step, cost=cost, **UDR_ARGUMENTS)
    else:
        eager = lambda x_adv, grad, x: reference.soft_cost(x_adv, x, eps, tau, cost)  # noqa: E731
    with common.fresh_inductor_cache():
        start = time.perf_counter()
        compiled = torch.compile(eager)
        compiled(*make_inputs(UDR_SHAPE, device))
        compile_s = time.perf_counter() - start

    def fused():
        (x_adv, grad, x), _ = rotation.next()
        with fastadv.use_backend(fused_backend):
            if op == "soft_cost":
                return soft_cost(x_adv, x, eps, tau, cost)
            return udr_step(x_adv, grad, x, cost=cost, **UDR_ARGUMENTS)

    def fused_in_place():
        (_, grad, x), in_place = rotation.next()
        with fastadv.use_backend(fused_backend):
            return udr_step_(in_place, grad, x, cost=cost, **UDR_ARGUMENTS)

    functions = {
        "eager reference": lambda: eager(*rotation.next()[0]),
        "torch.compile(reference)": lambda: compiled(*rotation.next()[0]),
        f"fastadv {op}": fused,
    }
    if op == "udr_step":
        functions["fastadv udr_step_ (in place)"] = fused_in_place
        functions.update(in_place_variants(
            udr_step_, functools.partial(_unchecked_udr_step_, cost=cost, **UDR_ARGUMENTS), rotation, device,
            fused_backend, dict(cost=cost, **UDR_ARGUMENTS)))
    stats = common.time_interleaved(functions, device, rounds=rounds)
    records = []
    for name, st in stats.items():
        records.append({"op": op, "shape": "x".join(map(str, UDR_SHAPE)), "cost": cost, "implementation": name,
                        "median_ms": st["median"] * 1e3, "p20_ms": st["p20"] * 1e3, "p80_ms": st["p80"] * 1e3,
                        "speedup_vs_eager": stats["eager reference"]["median"] / st["median"],
                        "speedup_vs_compile": stats["torch.compile(reference)"]["median"] / st["median"],
                        "compile_s": compile_s if "compile" in name else None})
    return records


def udr_report(records) -> str:
    rows = [[r.get("op", "udr_step"), r["shape"], r["cost"], r["implementation"], f"{r['median_ms']:.3f}",
             f"{r['p20_ms']:.3f}–{r['p80_ms']:.3f}", f"{r['speedup_vs_eager']:.2f}×", f"{r['speedup_vs_compile']:.2f}×"]
            for r in records]
    compile_lines = [f"- {r.get('op', 'udr_step')}, {r['cost']}: torch.compile's first call {r['compile_s']:.1f} s "
                     "(empty inductor cache)" for r in records if r["compile_s"] is not None]
    return "\n".join(["udr_step and soft_cost (METHODS.md section 5: ε = 8/255, η = 2/255, τ = 2η, λ = 1), float32, "
                      "cold inputs:", "",
                      common.markdown_table(["op", "shape", "cost", "implementation", "median ms", "p20–p80 ms",
                                             "vs eager reference", "vs compiled reference"], rows), ""]
                     + compile_lines)


def run(device: str = "cpu", quick: bool = False, out_dir=None) -> str:
    device = torch.device(device)
    fused_backend = "cpu" if device.type == "cpu" else "auto"
    rounds = 8 if quick else 40
    records = []
    for shape in SHAPES:
        numel = torch.Size(shape).numel()
        cold_sets = max(2, -(-COLD_BYTES // (8 * numel * 4)))  # 4 step tensors + 2 copy_ tensors of 2 * numel
        for norm in RADII:
            eps, alpha = RADII[norm]
            compiled, costs = {}, {}
            for name, fn in (("reference", reference.pgd_step), ("idiom", idiomatic_step)):
                step = functools.partial(fn, eps=eps, alpha=alpha, norm=norm)
                compiled[name], *costs[name] = compile_costs(step, *make_inputs(shape, device))
            for memory, sets in (("cold", cold_sets), ("hot", 1)):
                stats = measure(norm, device, fused_backend, Rotation(shape, device, sets), compiled, rounds)
                roofline_s = stats.pop(ROOFLINE)["median"]
                eager_s = stats["eager reference"]["median"]
                compiled_s = stats["torch.compile(reference)"]["median"]
                idiom_s = stats["torch.compile(idiomatic update)"]["median"]
                for name, s in stats.items():
                    cost = costs["reference" if "reference" in name else "idiom"] if "compile" in name else (None, None)
                    records.append({
                        "shape": "x".join(map(str, shape)), "norm": norm, "memory": memory, "implementation": name,
                        "median_ms": s["median"] * 1e3, "p20_ms": s["p20"] * 1e3, "p80_ms": s["p80"] * 1e3,
                        "speedup_vs_eager": eager_s / s["median"], "speedup_vs_compile": compiled_s / s["median"],
                        "speedup_vs_compiled_idiom": idiom_s / s["median"],
                        "roofline_percent": 100 * roofline_s / s["median"],
                        "copy_GBps": BYTES_PER_ELEMENT * numel / roofline_s / 1e9,
                        "compile_s": cost[0], "recompile_s": cost[1], "allocated_MiB": s["allocated_MiB"],
                    })
    meta = {
        "machine": common.machine_description(device),
        "device": str(device),
        "torch": torch.__version__,
        "fastadv": fastadv.__version__,
        "inductor_cpp_compiler": common.cxx_compiler_for_inductor() if device.type == "cpu" else None,
        "rounds": rounds,
    }
    common.write_results("pgd", records, meta, out_dir)
    udr_records = [r for op in ("udr_step", "soft_cost") for cost in ("pixel", "l2", "linf")
                   for r in measure_udr(cost, device, fused_backend, rounds, op)]
    common.write_results("udr", udr_records, meta, out_dir)
    return report(records, meta) + "\n\n" + udr_report(udr_records)


def summary(records) -> str:
    """One row per case: the baselines' times, then the fused op's with its ratios."""
    cases = {}
    for r in records:
        cases.setdefault((r["shape"], r["norm"], r["memory"]), {})[r["implementation"]] = r
    rows = []
    for (shape, norm, memory), by_name in cases.items():
        fused, in_place = by_name["fastadv pgd_step"], by_name["fastadv pgd_step_ (in place)"]
        rows.append([
            shape, norm, memory, f"{by_name['eager reference']['median_ms']:.3f}",
            f"{by_name['torch.compile(reference)']['median_ms']:.3f}",
            f"{by_name['torch.compile(idiomatic update)']['median_ms']:.3f}",
            f"{fused['median_ms']:.3f}", f"{fused['speedup_vs_eager']:.1f}×", f"{fused['speedup_vs_compile']:.2f}×",
            f"{fused['speedup_vs_compiled_idiom']:.2f}×", f"{fused['roofline_percent']:.0f}%",
            f"{in_place['median_ms']:.3f}", f"{in_place['speedup_vs_compile']:.2f}×",
            f"{in_place['roofline_percent']:.0f}%"])
    return common.markdown_table(
        ["shape", "norm", "memory", "eager ref. ms", "compiled ref. ms", "compiled idiom ms", "pgd_step ms",
         "vs eager", "vs compiled ref.", "vs compiled idiom", "roofline", "pgd_step_ ms", "vs compiled ref.",
         "roofline"], rows)


def report(records, meta) -> str:
    rows = [[r["shape"], r["norm"], r["memory"], r["implementation"], f"{r['median_ms']:.3f}",
             f"{r['p20_ms']:.3f}–{r['p80_ms']:.3f}", f"{r['speedup_vs_eager']:.2f}×",
             f"{r['speedup_vs_compile']:.2f}×", f"{r['speedup_vs_compiled_idiom']:.2f}×",
             f"{r['roofline_percent']:.0f}%", f"{r['allocated_MiB']:.1f}"] for r in records]
    table = common.markdown_table(
        ["shape", "norm", "memory", "implementation", "median ms", "p20–p80 ms", "vs eager reference",
         "vs compiled reference", "vs compiled idiom", "roofline", "allocated MiB"], rows)
    bandwidth = sorted({f"{r['shape']} {r['norm']} {r['memory']}: {r['copy_GBps']:.0f} GB/s" for r in records})
    lines = [f"pgd_step, float32, {meta['machine']}", "", summary(records), "", "All timings:", "", table, "",
             "cold: inputs rotate through sets larger than the caches, as in an attack loop (a model pass runs "
             "between two steps); hot: the same tensors every call.",
             "roofline: 16 bytes/element moved at the bandwidth of a copy_ timed in the same rounds, through the "
             f"same memory ({'; '.join(bandwidth)}, read+write). copy_ pays a write-allocate that an in-place "
             "update does not, so the in-place op can pass 100%.",
             "allocated MiB: memory one call allocates (CPU: the sum of its allocations from torch.profiler; "
             "CUDA: the peak above the memory held before the call).",
             "torch.compile's one-off costs, each with an empty inductor cache (the first compile in a process also "
             "pays inductor's start-up; the fused op has none of them):"]
    costs = sorted({(r["shape"], r["norm"], r["implementation"], r["compile_s"], r["recompile_s"])
                    for r in records if r["compile_s"] is not None})
    for shape, norm, name, first, again in costs:
        lines.append(f"- {shape} {norm} {name}: first call {first:.1f} s; first call on a new batch size {again:.1f} s")
    if meta["inductor_cpp_compiler"]:
        lines.append(f"- inductor's CPU backend needs a C++ compiler at run time: {meta['inductor_cpp_compiler']}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- pytest-benchmark
def _bench_args(norm):
    x_adv, grad, x = make_inputs(SHAPES[0], torch.device("cpu"))
    eps, alpha = RADII[norm]
    return x_adv, grad, x, eps, alpha


def test_bench_pgd_step_linf(benchmark):
    x_adv, grad, x, eps, alpha = _bench_args("linf")
    with fastadv.use_backend("cpu"):
        benchmark(pgd_step, x_adv, grad, x, eps, alpha)


def test_bench_pgd_step_l2(benchmark):
    x_adv, grad, x, eps, alpha = _bench_args("l2")
    with fastadv.use_backend("cpu"):
        benchmark(pgd_step, x_adv, grad, x, eps, alpha, "l2")


def test_bench_reference_linf(benchmark):
    x_adv, grad, x, eps, alpha = _bench_args("linf")
    benchmark(reference.pgd_step, x_adv, grad, x, eps, alpha)
