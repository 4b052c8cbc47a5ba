"""Benchmark of the contrastive family: `fastadv bench contrastive`.

float32, D = 128, two views: N = 2n rows, the labels of n images over 10 classes repeated for the
two halves, random predictions, ``pair = two_view_pair(n)``; every fused op through its public
function (validation included).

1. At N = 4096, interleaved rounds, the forward (the inputs require grad: the training forward,
   which keeps what its backward needs) and the forward+backward of

   - ``supcon_loss`` (cosine, τ = 0.07), strategies ``global`` (SupCon itself) and ``leaked-ls``
     (ASCL's strategy whose positives and negatives both depend on the predictions), against the
     formula a user writes (``supcon_eager``: the full N × N similarity, normalize, z zᵀ/τ, the
     strategy's positive and negative masks built as ``fastadv.reference.contrastive.selection_masks``
     builds them, then a masked log_softmax; Khosla et al. 2020's SupConLoss, of which
     pytorch-metric-learning's SupConLoss is the same formula) and torch.compile of it;
   - ``pairwise_compactness`` (a = 0.99, p = 2) against ``(W * torch.cdist(f, f)).mean()`` with W
     from the labels (``compactness_eager``) and torch.compile of it.

   torch.compile's first call (forward and backward, ``dynamic=False``, an empty inductor cache) is
   timed apart and a warm-up call precedes the rounds. Each baseline's loss and gradient are
   compared with the fused op's before timing.

2. The scaling of ``supcon_loss`` (global, cosine) forward+backward with N: for fastadv at every N
   of 1024 … 65,536, for the eager formula and its compilation up to N = 8192 only (their N × N
   matrices: several GB at 16,384, more than a 24 GiB machine's memory beyond; the eager formula's
   memory is extrapolated there by a fit bytes ≈ c·N² to its measured points). Each (implementation,
   N) runs in a fresh interpreter (``_child``): one warm-up call at a small N (the eager formula's,
   for the compiled variant, which is then compiled with ``dynamic=False`` and called once at the
   measured N), the freed memory handed back to the system (``malloc_trim``), the peak reset
   (``/proc/self/clear_refs`` ← 5), the baseline read (VmRSS), one forward+backward, and the peak
   read (VmHWM): the peak extra memory is VmHWM − baseline, the inputs excluded and the gradient
   included. These processes fix glibc's mmap threshold at 128 KiB (``MMAP_THRESHOLD``), so that
   the RSS follows the live tensors rather than what the allocator keeps of freed ones. Times: the
   median of a few more calls in the same process; at N ≥ 32,768 the measured call alone (one
   round).

Output: the tables (printed), ``contrastive.{csv,json}`` (the N = 4096 comparison),
``contrastive_scaling.{csv,json}`` and ``contrastive.png`` (log-log, time and peak extra memory
against N, the extrapolated eager memory dashed) in ``benchmarks/results/``. --quick (a smoke
run): N up to 4096, fewer rounds.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import fastadv
from fastadv.ops import contrastive as contrastive_ops

from . import common

DIM = 128
CLASSES = 10
TAU = 0.07
A = 0.99
COMPARE_N = 4096
SCALING_N = (1024, 2048, 4096, 8192, 16384, 32768, 65536)
QUICK_SCALING_N = (1024, 2048, 4096)
EAGER_MAX_N = 8192  # the eager formula's N × N matrices: GBs at 16,384, beyond 24 GiB after
WARMUP_N = 256
# glibc's mmap threshold, fixed in the processes that measure memory (MALLOC_MMAP_THRESHOLD_): every
# allocation above it is mapped when allocated and unmapped when freed, so that the RSS follows the
# live tensors. With glibc's default (a threshold that grows up to 32 MiB as mapped blocks are freed)
# freed tiles stay in the heap and the fused op's peak varies by 10 to 20 MB from process to process.
MMAP_THRESHOLD = 128 * 1024
SEED = 0

FUSED = "fastadv"
EAGER = ("SupCon, full N×N similarity: normalize, z zᵀ/τ, masks, log_softmax (Khosla et al. 2020's SupConLoss; "
         "pytorch-metric-learning's SupConLoss is the same formula)")
EAGER_SHORT = "eager SupCon formula"
COMPILED = "torch.compile(eager SupCon formula)"
COMPACTNESS_EAGER = "(W * torch.cdist(f, f)).mean(), W from the labels"
COMPACTNESS_COMPILED = "torch.compile((W * torch.cdist(f, f)).mean())"
IMPLEMENTATIONS = ("fastadv", "eager", "compiled")
LABELS = {"fastadv": "fastadv supcon_loss", "eager": EAGER_SHORT, "compiled": COMPILED}


# ----------------------------------------------------------------------------- the baselines
def supcon_eager(z, labels, preds, pair, tau=TAU, strategy="global"):
    """SupCon as a user writes it, in float32, with every strategy's masks: the full similarity
    matrix ẑ ẑᵀ/τ of the normalized rows, the positive and negative masks (the rules of
    fastadv.reference.contrastive.selection_masks: the counterpart always a positive, the anchor
    itself never a candidate), log_softmax over the allowed candidates and the mean over the
    positives of their log-probability (Khosla et al. 2020, Eq. 2; an anchor without a positive
    has loss 0)."""
    n = z.shape[0]
    unit = F.normalize(z, dim=1)
    s = unit @ unit.T / tau
    index = torch.arange(n, device=z.device)
    candidate = index[:, None] != index[None, :]
    counterpart = (pair[:, None] == index[None, :]) & candidate
    same_label = labels[:, None] == labels[None, :]
    if strategy == "global":
        positive, negative = same_label, ~same_label
    elif strategy == "hard-ls":
        positive, negative = same_label, ~same_label & (preds[None, :] == labels[:, None])
    elif strategy == "soft-ls":
        positive, negative = same_label, ~same_label & (preds[None, :] == preds[:, None])
    elif strategy == "leaked-ls":
        same_prediction = preds[None, :] == preds[:, None]
        positive, negative = same_label & same_prediction, ~same_label & same_prediction
    else:
        raise ValueError(f"unknown strategy {strategy!r}")
    positive = (positive & candidate) | counterpart
    negative = negative & candidate & ~counterpart
    log_prob = torch.log_softmax(s.masked_fill(~(positive | negative), float("-inf")), dim=1)
    positives = positive.sum(dim=1)
    mean_log_prob = torch.where(positive, log_prob, 0.0).sum(dim=1) / positives.clamp(min=1)
    return -mean_log_prob.mean()


def compactness_eager(f, labels, a=A):
    """ADR's global compactness as a user writes it: ``(W * torch.cdist(f, f)).mean()``, W = 1
    for the same label and (a − 1)/a otherwise."""
    weight = torch.where(labels[:, None] == labels[None, :], 1.0, (a - 1) / a)
    return (weight * torch.cdist(f, f)).mean()


def supcon_fused(z, labels, preds, pair, tau=TAU, strategy="global"):
    return contrastive_ops.supcon_loss(z, labels, preds, pair, tau=tau, strategy=strategy, sim="cosine")


def compactness_fused(f, labels, a=A):
    return contrastive_ops.pairwise_compactness(f, labels, a=a, p=2)


# ----------------------------------------------------------------------------- inputs and calls
def make_inputs(n, seed=SEED):
    """z [n, D] (requires grad), labels (of n/2 images, repeated for the two views), preds, pair."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, DIM, generator=g).requires_grad_()
    labels = torch.randint(0, CLASSES, (n // 2,), generator=g).repeat(2)
    preds = torch.randint(0, CLASSES, (n,), generator=g)
    return z, labels, preds, contrastive_ops.two_view_pair(n // 2)


def _forward_backward(loss_fn, z, *args, **kwargs):
    """The loss and dL/dz of one forward+backward (no accumulation into z.grad)."""
    loss = loss_fn(z, *args, **kwargs)
    (grad,) = torch.autograd.grad(loss, z)
    return loss.detach(), grad


def _compiled(fn, *args, **kwargs):
    """torch.compile(fn, dynamic=False) and the seconds of its first forward+backward with an
    empty inductor cache."""
    with common.fresh_inductor_cache():
        compiled = torch.compile(fn, dynamic=False)
        start = time.perf_counter()
        _forward_backward(compiled, *args, **kwargs)
        return compiled, time.perf_counter() - start


def _max_difference(a, b) -> float:
    return (a.double() - b.double()).abs().max().item()


# ----------------------------------------------------------------------------- 1. the comparison at N = 4096
def measure_case(case, fused, eager, eager_name, compiled_name, inputs, kwargs, timing):
    """Records of one case: forward and forward+backward of the fused op, the eager formula and its
    compilation, interleaved."""
    z, *rest = inputs
    compiled, compile_s = _compiled(eager, z, *rest, **kwargs)
    implementations = {FUSED: fused, eager_name: eager, compiled_name: compiled}
    expected_loss, expected_grad = _forward_backward(fused, z, *rest, **kwargs)
    differences = {}
    for name, fn in implementations.items():
        loss, grad = _forward_backward(fn, z, *rest, **kwargs)
        differences[name] = (_max_difference(loss, expected_loss), _max_difference(grad, expected_grad))
    functions = {}
    for name, fn in implementations.items():
        functions[(name, "forward")] = lambda fn=fn: fn(z, *rest, **kwargs)
        functions[(name, "forward+backward")] = lambda fn=fn: _forward_backward(fn, z, *rest, **kwargs)
    stats = common.time_interleaved(functions, torch.device("cpu"), **timing)
    records = []
    for (name, part), s in stats.items():
        eager_s, compiled_s = stats[(eager_name, part)]["median"], stats[(compiled_name, part)]["median"]
        records.append({
            "case": case, "implementation": name, "pass": part, "N": z.shape[0], "median_ms": s["median"] * 1e3,
            "p20_ms": s["p20"] * 1e3, "p80_ms": s["p80"] * 1e3, "speedup_vs_eager": eager_s / s["median"],
            "speedup_vs_compile": compiled_s / s["median"], "max_abs_diff_loss": differences[name][0],
            "max_abs_diff_grad": differences[name][1],
            "compile_s": compile_s if name == compiled_name and part == "forward+backward" else None})
    return records


def comparison(timing):
    # torch.compile's one-time start-up (its imports, the compile workers) outside the compile times
    _compiled(lambda x: (x * x).sum(), torch.ones(8, requires_grad=True))
    inputs = make_inputs(COMPARE_N)
    records = []
    for strategy in ("global", "leaked-ls"):
        records += measure_case(f"supcon_loss {strategy}/cosine N={COMPARE_N}", supcon_fused, supcon_eager, EAGER,
                                COMPILED, inputs, dict(strategy=strategy), timing)
    z, labels, _, _ = inputs
    records += measure_case(f"pairwise_compactness p=2 N={COMPARE_N}", compactness_fused, compactness_eager,
                            COMPACTNESS_EAGER, COMPACTNESS_COMPILED, (z, labels), {}, timing)
    return records


# ----------------------------------------------------------------------------- 2. the scaling, one process each
def _status(field) -> int:
    """A field of /proc/self/status in bytes (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _release_freed_memory():
    """Hand the allocator's free pages back to the system, so that memory freed by the warm-up
    is not already resident when the measured call reuses it (it would hide from the peak)."""
    gc.collect()
    libc = ctypes.util.find_library("c")
    if libc:
        try:
            ctypes.CDLL(libc).malloc_trim(0)
        except (OSError, AttributeError):
            pass


def _child(spec: str) -> None:
    """One (implementation, N) of the scaling, in a fresh interpreter: prints ``RESULT <json>``."""
    spec = json.loads(spec)
    implementation, n, rounds = spec["implementation"], spec["N"], spec["rounds"]
    torch.set_num_threads(spec["threads"])
    small = make_inputs(WARMUP_N)
    _forward_backward(supcon_fused if implementation == "fastadv" else supcon_eager, *small)
    del small
    inputs = make_inputs(n)
    loss_fn = {"fastadv": supcon_fused, "eager": supcon_eager}.get(implementation)
    if implementation == "compiled":
        loss_fn = torch.compile(supcon_eager, dynamic=False)
        _forward_backward(loss_fn, *inputs)  # the compilation, at the measured N
    _release_freed_memory()
    open("/proc/self/clear_refs", "w").write("5")  # VmHWM ← VmRSS
    baseline = _status("VmRSS")
    start = time.perf_counter()
    result = _forward_backward(loss_fn, *inputs)
    seconds = time.perf_counter() - start
    peak = _status("VmHWM")
    del result
    if rounds > 1:
        stats = common.time_interleaved({"call": lambda: _forward_backward(loss_fn, *inputs)}, torch.device("cpu"),
                                        rounds=rounds, calls_per_round=1, warmup=0)["call"]
    else:
        stats = {"median": seconds, "p20": seconds, "p80": seconds}
    print("RESULT " + json.dumps({"baseline_bytes": baseline, "peak_bytes": peak, "peak_extra_bytes": peak - baseline,
                                  "measured_call_s": seconds, "rounds": rounds, **stats}), flush=True)


def measure_scaling_point(implementation, n, rounds, threads):
    spec = json.dumps({"implementation": implementation, "N": n, "rounds": rounds, "threads": threads})
    code = f"from fastadv.benchmarks import bench_contrastive as b; b._child({spec!r})"
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(MMAP_THRESHOLD))
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    if completed.returncode != 0 or not lines:
        tail = " | ".join((completed.stderr or completed.stdout).strip().splitlines()[-3:])
        return {"error": f"exit status {completed.returncode}: {tail}"}
    return json.loads(lines[-1][len("RESULT "):])


def _scaling_rounds(n, quick):
    if quick:
        return 2
    if n >= 32768:
        return 1
    return 10 if n <= 4096 else 3


def scaling(sizes, quick):
    threads = torch.get_num_threads()
    records = []
    for n in sizes:
        for implementation in IMPLEMENTATIONS:
            if implementation != "fastadv" and n > EAGER_MAX_N:
                continue
            point = measure_scaling_point(implementation, n, _scaling_rounds(n, quick), threads)
            record = {"implementation": implementation, "N": n, "median_ms": None, "p20_ms": None, "p80_ms": None,
                      "rounds": None, "peak_extra_MB": None, "baseline_MB": None, "extrapolated": False,
                      "error": point.get("error")}
            if "error" not in point:
                record.update(median_ms=point["median"] * 1e3, p20_ms=point["p20"] * 1e3, p80_ms=point["p80"] * 1e3,
                              rounds=point["rounds"], peak_extra_MB=point["peak_extra_bytes"] / 1e6,
                              baseline_MB=point["baseline_bytes"] / 1e6)
            records.append(record)
    return records


def extrapolate_eager(records, sizes):
    """The fit bytes ≈ c·N² (least squares) to the eager formula's measured peaks, and records of
    its extrapolated peak at the N it was not run at; (c in bytes, records)."""
    measured = [(r["N"], r["peak_extra_MB"] * 1e6) for r in records
                if r["implementation"] == "eager" and r["peak_extra_MB"] is not None]
    if not measured:
        return None, []
    c = sum(b * n * n for n, b in measured) / sum(float(n) ** 4 for n, _ in measured)
    extra = [{"implementation": "eager", "N": n, "median_ms": None, "p20_ms": None, "p80_ms": None, "rounds": None,
              "peak_extra_MB": c * n * n / 1e6, "baseline_MB": None, "extrapolated": True, "error": None}
             for n in sizes if n > EAGER_MAX_N]
    return c, extra


# ----------------------------------------------------------------------------- the run
def run(device: str = "cpu", quick: bool = False, out_dir=None) -> str:
    device = torch.device(device)
    if device.type != "cpu":  # `fastadv bench --device cuda` runs the other families
        return f"contrastive family: CPU only for now (its memory is a process's peak RSS), skipped on {device}"
    timing = dict(rounds=3, calls_per_round=1, warmup=1) if quick else dict(rounds=20, calls_per_round=1, warmup=2)
    sizes = QUICK_SCALING_N if quick else SCALING_N
    records = comparison(timing)
    scaling_records = scaling(sizes, quick)
    c, extrapolated = extrapolate_eager(scaling_records, sizes)
    scaling_records += extrapolated
    meta = {"machine": common.machine_description(device), "device": "cpu", "torch": torch.__version__,
            "fastadv": fastadv.__version__, "dtype": "float32", "D": DIM, "classes": CLASSES, "tau": TAU, "a": A,
            "timing": timing, "quick": quick, "compare_N": COMPARE_N, "scaling_N": list(sizes),
            "eager_max_N": EAGER_MAX_N, "eager_fit_c_bytes": c, "warmup_N": WARMUP_N,
            "threads": torch.get_num_threads(), "eager_formula": EAGER,
            "inductor_cpp_compiler": common.cxx_compiler_for_inductor()}
    out = common.write_results("contrastive", records, meta, out_dir)
    common.write_results("contrastive_scaling", scaling_records, meta, out_dir)
    plot = plot_scaling(scaling_records, out / "contrastive.png", meta)
    return report(records, scaling_records, meta, plot)


# ----------------------------------------------------------------------------- the report
def _ratio(value):
    return "" if value is None else f"{value:.2f}×"


def _spread(r):
    return f"{r['p20_ms']:.1f}–{r['p80_ms']:.1f}"


def comparison_table(records) -> str:
    rows = [[r["case"], r["implementation"], r["pass"], f"{r['median_ms']:.1f}", _spread(r),
             _ratio(r["speedup_vs_eager"]), _ratio(r["speedup_vs_compile"]),
             f"{r['max_abs_diff_loss']:.1e}", f"{r['max_abs_diff_grad']:.1e}"] for r in records]
    return common.markdown_table(["case", "implementation", "pass", "median ms", "p20–p80 ms", "vs eager",
                                  "vs compiled", "|Δ loss| vs fastadv", "max |Δ grad| vs fastadv"], rows)


def summary_table(records) -> str:
    """One row per case and pass: the fused op's time and its speed-up over each baseline."""
    rows = []
    for case in dict.fromkeys(r["case"] for r in records):
        for part in ("forward", "forward+backward"):
            fused = next(r for r in records if r["case"] == case and r["pass"] == part
                         and r["implementation"] == FUSED)
            baselines = [r for r in records if r["case"] == case and r["pass"] == part and r is not fused]
            rows.append([case, part, f"{fused['median_ms']:.1f} ({_spread(fused)})",
                         f"{baselines[0]['median_ms']:.1f} ({_spread(baselines[0])})",
                         f"{baselines[1]['median_ms']:.1f} ({_spread(baselines[1])})",
                         _ratio(fused["speedup_vs_eager"]), _ratio(fused["speedup_vs_compile"])])
    return common.markdown_table(["case", "pass", "fastadv ms (p20–p80)", "eager ms", "compiled ms",
                                  "fastadv vs eager", "fastadv vs compiled"], rows)


def _memory(r):
    if r is None:
        return "not run"
    if r.get("error"):
        return "failed"
    if r["extrapolated"]:
        return f"≈ {r['peak_extra_MB'] / 1e3:.1f} GB (extrapolated)"
    return f"{r['peak_extra_MB']:.1f}"


def _time(r):
    if r is None or r.get("error") or r["median_ms"] is None:
        return "failed" if r is not None and r.get("error") else "not run"
    seconds = r["median_ms"] / 1e3
    if r["rounds"] == 1:
        return f"{seconds:.3f}"
    return f"{seconds:.3f} ({r['p20_ms'] / 1e3:.3f}–{r['p80_ms'] / 1e3:.3f})"


def scaling_table(records) -> str:
    rows = []
    for n in sorted({r["N"] for r in records}):
        point = {r["implementation"]: r for r in records if r["N"] == n}
        row = [str(n)]
        for implementation in IMPLEMENTATIONS:
            r = point.get(implementation)
            row += [_time(r), _memory(r)]
        rows.append(row)
    return common.markdown_table(["N", "fastadv s", "fastadv peak MB", "eager s", "eager peak MB", "compiled s",
                                  "compiled peak MB"], rows)


def plot_scaling(records, path, meta):
    """contrastive.png: time and peak extra memory against N, log-log; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    colours = {"fastadv": "C0", "eager": "C3", "compiled": "C2"}
    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    for implementation in IMPLEMENTATIONS:
        ok = sorted((r for r in records if r["implementation"] == implementation and not r.get("error")),
                    key=lambda r: r["N"])
        timed = [r for r in ok if r["median_ms"] is not None]
        if timed:
            time_axis.plot([r["N"] for r in timed], [r["median_ms"] / 1e3 for r in timed], "o-",
                           color=colours[implementation], label=LABELS[implementation])
        measured = [r for r in ok if not r["extrapolated"]]
        if measured:
            memory_axis.plot([r["N"] for r in measured], [r["peak_extra_MB"] for r in measured], "o-",
                             color=colours[implementation], label=LABELS[implementation])
        guessed = [r for r in ok if r["extrapolated"]]
        if guessed and measured:
            line = measured[-1:] + guessed
            memory_axis.plot([r["N"] for r in line], [r["peak_extra_MB"] for r in line], "o--",
                             color=colours[implementation], mfc="none", label=f"{LABELS[implementation]}, "
                             f"extrapolated (c·N², c = {meta['eager_fit_c_bytes']:.1f} B)")
    for axis, label in ((time_axis, "forward+backward, s"), (memory_axis, "peak extra memory (RSS), MB")):
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel("N (rows of z, D = 128)")
        axis.set_ylabel(label)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    time_axis.set_title("supcon_loss global/cosine, float32")
    memory_axis.set_title("peak RSS growth during one forward+backward")
    figure.suptitle(meta["machine"], fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def report(records, scaling_records, meta, plot) -> str:
    lines = [f"contrastive family, float32, D = {DIM}, {meta['machine']}", "",
             f"At N = {COMPARE_N} (two views of {COMPARE_N // 2} images, {CLASSES} classes, random predictions; "
             f"τ = {TAU}): the fused op's times and speed-ups, median of {meta['timing']['rounds']} interleaved "
             "rounds:",
             "", summary_table(records), "", "All timings:", "", comparison_table(records), "",
             f"eager (supcon_loss): {EAGER}, in float32, with the strategy's positive and negative masks. "
             f"eager (pairwise_compactness): {COMPACTNESS_EAGER}. compiled: torch.compile(eager, dynamic=False). "
             "forward: the inputs require grad (the training forward); forward+backward: torch.autograd.grad of "
             "the loss. |Δ|: against the fused op's loss and gradient.",
             "torch.compile's first forward+backward, each with an empty inductor cache:"]
    for r in records:
        if r["compile_s"] is not None:
            lines.append(f"- {r['case']}: {r['compile_s']:.1f} s")
    c = meta["eager_fit_c_bytes"]
    fit = "" if c is None else (f" The eager formula's peak beyond N = {EAGER_MAX_N} is extrapolated from its "
                                f"measured points by bytes ≈ c·N², c = {c:.1f} bytes (least squares).")
    lines += ["", f"supcon_loss global/cosine, forward+backward against N: seconds (median, p20–p80; one call "
              f"at N ≥ 32768) and the peak extra memory in MB (10⁶ bytes): the growth of the process's peak RSS "
              f"(VmHWM − VmRSS after resetting the peak) during one forward+backward, each (implementation, N) in a "
              f"fresh process after a warm-up at N = {WARMUP_N} (the compiled formula compiled at the measured N "
              f"first; glibc's mmap threshold fixed at {MMAP_THRESHOLD // 1024} KiB); the inputs are not counted, "
              f"the gradient is. The eager formula and its compilation are run "
              f"up to N = {EAGER_MAX_N} only.{fit}", "", scaling_table(scaling_records)]
    failed = [r for r in scaling_records if r.get("error")]
    for r in failed:
        lines.append(f"- {r['implementation']} at N = {r['N']} failed: {r['error']}")
    if plot is not None:
        lines += ["", f"Plot: {plot}"]
    if meta["quick"]:
        lines.append("--quick: a smoke run (3 rounds, N ≤ 4096): noisy figures")
    return "\n".join(lines)
