"""`fastadv bench train --device cuda`: whole adversarial training steps on a GPU, projected to
the time of one 50,000-image CIFAR epoch, against what users run today.

Workloads: PGD-10 AT and TRADES (ε 8/255, α 2/255, 10 steps, β 6) on PreActResNet-18 and
WRN-34-10, CIFAR-shaped batches (3×32×32, uniform noise: the data does not change the time) of
128 and 512. ``quick`` times PreActResNet-18 alone. Variants, each stepping its own copy of the
same model and SGD optimizer (momentum 0.9, weight decay 5e-4) on the same batch, timed in
interleaved rounds:

- official-style, float32: the eager step as the papers' code writes it (PGD-AT: Rice et al.'s
  ``attack_pgd`` in train_cifar.py; TRADES: Zhang et al.'s train_trades_cifar10.py), NCHW;
- official-style + AMP: the same with every forward under ``torch.autocast(bfloat16)``, as a
  user adds it;
- official-style + torch.compile: the float32 step with ``torch.compile(model)``
  (``quick``: batch 512 of PGD-AT only, compilation is minutes);
- fastadv default: fastadv's trainer on CUDA (bf16 autocast, channels_last model and batch,
  ``cudnn.benchmark``, the fused ops);
- fastadv, attack graphed: the same with the training attack replayed as a CUDA graph (what
  ``--cuda-graphs`` does for a method whose step cannot be captured whole);
- fastadv --cuda-graphs: the whole step (attack, loss, backward, SGD's update) replayed as one
  CUDA graph (fastadv.train.GraphedStep), what the trainer does for PGD-AT and TRADES.

The floor: the step's FLOPs (torch.utils.flop_counter's formulas on fastadv's float32 step) per image
× 50,000 at the dense bf16 matrix rate this run measures (an 8192³ product on random data).

Then each fused op's device time against ``torch.compile`` of its eager formula, both captured
20 calls to a CUDA graph and timed by events over replays, so that host time vanishes.

On the CPU the same code runs a small smoke workload (``smoke=True``, used by the tests).
"""
from __future__ import annotations

import copy
import functools
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

import fastadv
from fastadv.attacks import PGD
from fastadv.data import dataset_info
from fastadv.methods import build_method
from fastadv.models import build_model
from fastadv.train import GraphedStep

from . import common
from .bench_train import fastadv_step, official_pgd_at_step, official_trades_step

EPOCH_IMAGES = 50_000
ATTACK = dict(eps=8 / 255, alpha=2 / 255, steps=10)
OFFICIAL_FP32 = "official-style, float32"
OFFICIAL_AMP = "official-style + AMP (bf16)"
OFFICIAL_COMPILE = "official-style + torch.compile"
FASTADV = "fastadv default"
FASTADV_ATTACK_GRAPH = "fastadv, attack graphed"
FASTADV_GRAPHS = "fastadv --cuda-graphs"
VARIANTS = (OFFICIAL_FP32, OFFICIAL_AMP, OFFICIAL_COMPILE, FASTADV, FASTADV_ATTACK_GRAPH, FASTADV_GRAPHS)
CUDA_ONLY = (FASTADV_ATTACK_GRAPH, FASTADV_GRAPHS)
TARGETS = {"vs_official_fp32": 3.0, "vs_official_amp": 1.5, "graphs_vs_default": 1.3, "epoch_seconds": 10.0}


def workloads(quick: bool, smoke: bool = False) -> list[dict]:
    if smoke:
        return [dict(method=m, model="digits_cnn", dataset="digits", batch=16, compile=False) for m in ("pgd_at", "trades")]
    models = ("preact_resnet18",) if quick else ("preact_resnet18", "wide_resnet34_10")
    out = []
    for model in models:
        for method in ("pgd_at", "trades"):
            for batch in (128, 512):
                compile_row = not quick or (method == "pgd_at" and batch == 512)
                out.append(dict(method=method, model=model, dataset="cifar10", batch=batch, compile=compile_row))
    return out


def _batch(spec, device):
    info = dataset_info(spec["dataset"])
    generator = torch.Generator().manual_seed(0)
    x = torch.rand((spec["batch"],) + tuple(info.input_shape), generator=generator)
    y = torch.randint(0, info.num_classes, (spec["batch"],), generator=generator)
    return x.to(device), y.to(device), info


def _attack_settings(spec) -> dict:
    if spec["dataset"] == "digits":
        return dict(eps=0.2, alpha=0.05, steps=2)
    return dict(ATTACK)


def _official(spec, model, optimizer, x, y, amp: bool):
    options = _attack_settings(spec)
    dtype = torch.bfloat16 if amp else None
    if spec["method"] == "trades":
        return functools.partial(official_trades_step, model, optimizer, x, y, beta=6.0, amp_dtype=dtype,
                                 train_amp=amp, **options)
    return functools.partial(official_pgd_at_step, model, optimizer, x, y, amp_dtype=dtype, train_amp=amp, **options)


def _with_cudnn_benchmark(flag: bool, step):
    def run():
        torch.backends.cudnn.benchmark = flag
        return step()
    return run


def make_variants(spec, device, x, y, info, names):
    """name -> step closure, each on its own deep copy of the same model and optimizer."""
    torch.manual_seed(0)
    model = build_model(spec["model"], info).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    cuda = device.type == "cuda"
    x_last = x.contiguous(memory_format=torch.channels_last) if cuda else x
    steps = {}
    for name in names:
        net, opt = copy.deepcopy((model, optimizer))
        if name in (OFFICIAL_FP32, OFFICIAL_AMP):
            steps[name] = _with_cudnn_benchmark(False, _official(spec, net, opt, x, y, amp=name == OFFICIAL_AMP))
        elif name == OFFICIAL_COMPILE:
            compiled = torch.compile(net)
            steps[name] = _with_cudnn_benchmark(False, _official(spec, compiled, opt, x, y, amp=False))
        else:
            if cuda:
                net = net.to(memory_format=torch.channels_last)
            method = build_method(spec["method"], **_attack_settings(spec))
            if name == FASTADV_ATTACK_GRAPH:
                method.attack_graph = True
            if name == FASTADV_GRAPHS:
                graphed = GraphedStep(method, net, opt, amp=cuda)
                steps[name] = _with_cudnn_benchmark(cuda, functools.partial(graphed.run, x_last, y))
            else:
                steps[name] = _with_cudnn_benchmark(cuda, functools.partial(fastadv_step, method, net, opt, x_last,
                                                                            y, amp=cuda))
    return steps


class _CountFlops(TorchDispatchMode):
    """FLOPs of the matrix products and convolutions dispatched inside (torch.utils.flop_counter's
    formulas; its FlopCounterMode tracks modules with hooks that autograd.grad on a leaf refuses)."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def step_flops(spec, device, x, y, info) -> float:
    """FLOPs of one fastadv float32 step (the fewest of the variants: the clean logits of TRADES'
    attack once per batch), matrix products and convolutions, forward and backward."""
    torch.manual_seed(0)
    model = build_model(spec["model"], info).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    method = build_method(spec["method"], **_attack_settings(spec))
    counter = _CountFlops()
    with counter:
        fastadv_step(method, model, optimizer, x, y, amp=False)
    return float(counter.total)


def matmul_rate(device, size: int = 8192, rounds: int = 10) -> float:
    """Dense bf16 FLOP/s of an n³ product on random data (events, after warm-up)."""
    if device.type != "cuda":
        size = 512
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    stats = common.time_interleaved({"mm": lambda: a @ b}, device, rounds=rounds, calls_per_round=1, warmup=1)
    return 2 * size ** 3 / stats["mm"]["median"]


def graph_equality(device) -> dict:
    """The graphed PGD-10 attack against the eager one on a PreActResNet-18 (same generator seed):
    the largest difference of their examples and of their float32 inputs' scale."""
    info = dataset_info("cifar10")
    torch.manual_seed(0)
    model = build_model("preact_resnet18", info).to(device).eval()
    x = torch.rand(64, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (64,), device=device)
    out = {}
    for graph in (False, True):
        generator = torch.Generator(device=device).manual_seed(1)
        attack = PGD(model, steps=10, generator=generator, graph=graph)
        out[graph] = [attack(x, y) for _ in range(2)]  # the second call replays
    return {"max_abs_difference": max(float((a - b).abs().max()) for a, b in zip(out[False], out[True])),
            "examples": 64, "calls": 2}


# ----------------------------------------------------------------------------- AMP's robustness
def amp_check(device, quick: bool, seeds=(0, 1), epochs=None) -> list[dict]:
    """Is bf16 autocast (the trainer's default on CUDA) safe for robustness? TRADES on the digits
    (digits_cnn, fastadv's trainer, the same seed) trained with --amp and with --no-amp, each
    judged by float32 PGD-20 (ε 0.2, α 0.05, uniform start from the same generator seed) on the
    held-out digits."""
    import contextlib
    import io
    import tempfile
    from pathlib import Path

    from fastadv.data import load_dataset
    from fastadv.evaluate import robust_accuracy
    from fastadv.runs import load_model
    from fastadv.train import TrainConfig, train

    _, test_set, _ = load_dataset("digits", augment=False)
    rows = []
    for seed in seeds[:1] if quick else seeds:
        accuracy = {}
        for amp in (False, True):
            with tempfile.TemporaryDirectory() as folder, contextlib.redirect_stdout(io.StringIO()):
                run_dir = train(TrainConfig(method="trades", dataset="digits", epochs=epochs or (5 if quick else 15), seed=seed,
                                            amp=amp, device=str(device), run_dir=folder, progress=False,
                                            overwrite=True))
                model, _, _, _ = load_model(Path(run_dir) / "checkpoint.pt", device)
            generator = torch.Generator(device=device).manual_seed(seed)
            attack = PGD(model, eps=0.2, alpha=0.05, steps=20, generator=generator)
            result = robust_accuracy(model, test_set, {"pgd20": attack}, device, progress=False)
            accuracy[amp] = (result["accuracy"]["clean"], result["accuracy"]["pgd20"])
        rows.append({"seed": seed, "float32_clean": accuracy[False][0], "float32_pgd20": accuracy[False][1],
                     "amp_clean": accuracy[True][0], "amp_pgd20": accuracy[True][1],
                     "points": 100 * (accuracy[True][1] - accuracy[False][1])})
    return rows


# ----------------------------------------------------------------------------- ops inside a graph
def _graph_time(fn, device, calls: int = 20, replays: int = 20) -> float:
    """Device seconds per call of ``fn`` captured ``calls`` times in one CUDA graph."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    graph.replay()
    torch.cuda.synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(replays):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / calls)
    times.sort()
    return times[len(times) // 2]


def op_cases(device, quick: bool) -> dict[str, tuple]:
    """name -> (fused call, eager formula call), each a closure over CIFAR-sized inputs that
    returns nothing (a loss case takes its gradient too): the fused op through its unchecked form
    (what the loops run, capturable: no labels' read), the eager formula as the benchmarks of its
    family write it (TRADES' official KL; the logits family's formulas; the pgd family's clamps)."""
    from fastadv.ops import logits as L
    from fastadv.ops import simplex as S
    from fastadv.ops.pgd import unchecked as P
    from fastadv.reference import logits as reference_logits
    from fastadv.reference import simplex as reference_simplex

    from . import bench_logits

    g = torch.Generator().manual_seed(0)
    x = torch.rand(512, 3, 32, 32, generator=g).to(device)
    x_adv = (x + 0.01 * torch.randn(x.shape, generator=g).to(device)).clamp(0, 1)
    grad = torch.randn(x.shape, generator=g).to(device)
    eps, alpha = 8 / 255, 2 / 255

    def eager_linf(x_adv, grad, x):
        x_adv.copy_(torch.min(torch.max(x_adv + alpha * grad.sign(), x - eps), x + eps).clamp(0, 1))

    def eager_l2(x_adv, grad, x):
        step = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        delta = x_adv + 0.1 * step - x
        scale = (0.5 / delta.flatten(1).norm(dim=1).clamp_min(1e-12)).clamp(max=1.0).view(-1, 1, 1, 1)
        x_adv.copy_((x + delta * scale).clamp(0, 1))

    cases = {}
    for name, fused, eager in (
            ("pgd_step_ L∞ [512, 3, 32, 32]", lambda: P.pgd_step_(x_adv, grad, x, eps, alpha, "linf", (0.0, 1.0)),
             eager_linf),
            ("pgd_step_ L2 [512, 3, 32, 32]", lambda: P.pgd_step_(x_adv, grad, x, 0.5, 0.1, "l2", (0.0, 1.0)),
             eager_l2)):
        compiled = torch.compile(eager)
        cases[name] = (fused, lambda compiled=compiled: compiled(x_adv, grad, x))
    inputs = {k: v[:512, :10].contiguous() if v.dim() == 2 else v[:512] % 10
              for k, v in bench_logits.make_inputs(device).items()}
    a = inputs["z_nat"].requires_grad_()
    b = inputs["z_adv"].requires_grad_()
    others = (inputs["ema_nat"], inputs["ema_adv"], inputs["y"])
    names = ("trades_kl", "LMA-AT loss") if quick else tuple(bench_logits.CASES)
    for name in names:
        case = bench_logits.CASES[name]
        if name == "trades_kl":
            formula = lambda a, b, ea, eb, y: bench_logits.official_trades_kl(a, b)  # noqa: E731
        else:
            formula = lambda a, b, ea, eb, y, case=case: case(reference_logits, a, b, ea, eb, y)  # noqa: E731
        compiled = torch.compile(formula)
        cases[f"{name} fwd+bwd [512, 10]"] = (
            lambda case=case: torch.autograd.grad(case(L.unchecked, a, b, *others), [a, b], allow_unused=True),
            lambda compiled=compiled: torch.autograd.grad(compiled(a, b, *others), [a, b], allow_unused=True))
    V = torch.randn(3, 512, 10, generator=g).to(device).requires_grad_()
    y = inputs["y"]
    weights = torch.randn(512, 3, 3, generator=g).to(device)
    compiled_gram = torch.compile(bench_logits.eager_masked_gram)
    cases["masked_gram fwd+bwd [3, 512, 10]"] = (
        lambda: torch.autograd.grad((L.unchecked.masked_gram(V, y) * weights).sum(), [V]),
        lambda: torch.autograd.grad((compiled_gram(V, y) * weights).sum(), [V]))
    if not quick:
        w = torch.randn(512, 4, generator=g).to(device)
        compiled_projection = torch.compile(reference_simplex.simplex_project)
        cases["simplex_project [512, 4]"] = (lambda: S.unchecked.simplex_project(w),
                                             lambda: compiled_projection(w))
    return cases


def op_rows(device, quick: bool = True, timer=None) -> list[dict]:
    """Fused op vs torch.compile of its eager formula, device time per call inside a CUDA graph
    (``timer``: another way to time a call, for the CPU's smoke run)."""
    timer = timer or (lambda fn: _graph_time(fn, device))
    rows = []
    for name, (ours, theirs) in op_cases(device, quick).items():
        t_ours, t_theirs = timer(ours), timer(theirs)
        rows.append({"op": name, "fused_us": t_ours * 1e6, "compiled_us": t_theirs * 1e6,
                     "speedup_vs_compiled": t_theirs / t_ours})
    return rows


# ----------------------------------------------------------------------------- run
def run(device: str = "cuda", quick: bool = False, out_dir=None, smoke: bool = False) -> str:
    device = torch.device(device)
    started = time.perf_counter()
    rate = matmul_rate(device)
    plan = dict(rounds=3, calls_per_round=1, warmup=2) if quick or smoke else dict(rounds=10, calls_per_round=2,
                                                                                    warmup=3)
    records, notes = [], []
    meta = {"machine": common.machine_description(device), "device": str(device), "torch": torch.__version__,
            "fastadv": fastadv.__version__, "quick": quick, "smoke": smoke, "timing": plan,
            "bf16_matmul_tflops": rate / 1e12, "notes": notes}
    if device.type == "cuda":  # first: quick, and what the rest relies on
        for name, part in (("graph_equality", graph_equality),
                           ("ops_in_graph", functools.partial(op_rows, quick=quick))):
            try:
                meta[name] = part(device)
            except Exception as error:  # reported, and the workloads still run
                notes.append(f"{name} failed: {type(error).__name__}: {error}")
                meta[name] = None
            print(name, meta[name], flush=True)
    # the workloads with a compiled variant last: compilation takes minutes
    for spec in sorted(workloads(quick, smoke), key=lambda spec: spec["compile"]):
        x, y, info = _batch(spec, device)
        names = [n for n in VARIANTS if (n != OFFICIAL_COMPILE or spec["compile"])
                 and (n not in CUDA_ONLY or device.type == "cuda")]
        steps = make_variants(spec, device, x, y, info, names)
        first_call = {}
        try:
            for name in list(steps):  # a variant that fails is reported, not timed
                try:
                    started_call = time.perf_counter()
                    steps[name]()
                    common.synchronize(device)
                    first_call[name] = time.perf_counter() - started_call
                except Exception as error:
                    notes.append(f"{spec['method']} {spec['model']} {spec['batch']} {name} failed: "
                                 f"{type(error).__name__}: {error}")
                    print(notes[-1], flush=True)
                    del steps[name]
        finally:
            common.synchronize(device)
        if OFFICIAL_FP32 not in steps:
            continue
        stats = common.time_interleaved(steps, device, **plan)
        flops = step_flops(spec, device, x, y, info)
        floor_epoch = flops / spec["batch"] * EPOCH_IMAGES / rate
        base = stats[OFFICIAL_FP32]["median"]
        for name, s in stats.items():
            records.append(dict(model=spec["model"], method=spec["method"], batch=spec["batch"], variant=name,
                                median_ms=s["median"] * 1e3, p20_ms=s["p20"] * 1e3, p80_ms=s["p80"] * 1e3,
                                images_per_second=spec["batch"] / s["median"],
                                epoch_seconds=s["median"] * EPOCH_IMAGES / spec["batch"],
                                speedup_vs_official_fp32=base / s["median"], floor_epoch_seconds=floor_epoch,
                                step_gflop=flops / 1e9,
                                first_call_seconds=first_call[name],
                                compile_seconds=first_call[name] if name == OFFICIAL_COMPILE else None))
            print(f"{spec['method']} {spec['model']} {spec['batch']} {name}: {s['median'] * 1e3:.2f} ms "
                  f"(epoch {records[-1]['epoch_seconds']:.1f} s, floor {floor_epoch:.2f} s)", flush=True)
    if device.type == "cuda":
        try:
            meta["amp_check"] = amp_check(device, quick)
        except Exception as error:
            notes.append(f"amp_check failed: {type(error).__name__}: {error}")
            meta["amp_check"] = None
        print("amp_check", meta["amp_check"], flush=True)
    meta["seconds"] = time.perf_counter() - started
    common.write_results("train_gpu" if not smoke else "train_gpu_smoke", records, meta, out_dir)
    if not smoke:
        plot(records, meta, out_dir)
    return report(records, meta)


def plot(records, meta, out_dir=None):
    """Projected epoch time per variant for each workload, the floor drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pathlib import Path

    groups = {}
    for r in records:
        groups.setdefault((r["model"], r["method"], r["batch"]), []).append(r)
    fig, axes = plt.subplots(len(groups), 1, figsize=(8, 1.6 + 1.2 * len(groups) * 1.3), squeeze=False)
    for ax, ((model, method, batch), rows) in zip(axes[:, 0], groups.items()):
        names = [r["variant"] for r in rows]
        ax.barh(names, [r["epoch_seconds"] for r in rows], color="tab:blue")
        ax.axvline(rows[0]["floor_epoch_seconds"], color="tab:red", linestyle="--", label="floor (FLOPs at bf16 rate)")
        ax.set_title(f"{method}, {model}, batch {batch}", fontsize=9)
        ax.set_xscale("log")
        ax.invert_yaxis()
        ax.tick_params(labelsize=8)
    axes[-1, 0].set_xlabel("projected seconds per 50,000-image epoch (log scale)")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(meta["machine"], fontsize=9)
    fig.tight_layout()
    folder = Path(out_dir) if out_dir is not None else Path(__file__).resolve().parent / "results"
    folder.mkdir(parents=True, exist_ok=True)
    fig.savefig(folder / "train_gpu.png", dpi=120)
    plt.close(fig)


def report(records, meta) -> str:
    lines = [f"Adversarial training steps on {meta['machine']}"
             + (" — quick run (3 rounds, noisier)" if meta["quick"] else ""), "",
             f"Dense bf16 matrix rate measured in this run: {meta['bf16_matmul_tflops']:.0f} TFLOP/s.", ""]
    rows = []
    for r in records:
        rows.append([f"{r['method']}, {r['model']}, {r['batch']}", r["variant"], f"{r['median_ms']:.1f}",
                     f"{r['p20_ms']:.1f}–{r['p80_ms']:.1f}", f"{r['images_per_second']:.0f}",
                     f"{r['epoch_seconds']:.1f}", f"{r['speedup_vs_official_fp32']:.2f}×",
                     f"{r['floor_epoch_seconds']:.2f}"])
    lines += [common.markdown_table(["workload", "variant", "ms per step", "p20–p80", "images/s",
                                     "projected epoch s", "vs official fp32", "floor epoch s"], rows), ""]
    compiles = [r for r in records if r["compile_seconds"] is not None]
    if compiles:
        lines += ["torch.compile's first call (compilation): " + ", ".join(
            f"{r['method']} {r['model']} batch {r['batch']}: {r['compile_seconds']:.0f} s" for r in compiles), ""]
    if meta.get("graph_equality"):
        g = meta["graph_equality"]
        lines += [f"Graphed PGD-10 against eager (PreActResNet-18, {g['examples']} examples, same seed, {g['calls']} "
                  f"calls): largest difference {g['max_abs_difference']:.3g}.", ""]
    for note in meta["notes"]:
        lines += [f"Note: {note}", ""]
    if meta.get("ops_in_graph"):
        rows = [[r["op"], f"{r['fused_us']:.1f}", f"{r['compiled_us']:.1f}", f"{r['speedup_vs_compiled']:.2f}×"]
                for r in meta["ops_in_graph"]]
        lines += ["Fused ops inside a CUDA graph (device time per call, 20 calls per graph, median of 20 replays; "
                  "every input float32):", "",
                  common.markdown_table(["op", "fastadv µs", "torch.compile of the eager formula µs", "speedup"], rows),
                  ""]
    if meta.get("amp_check"):
        rows = [[r["seed"], f"{100 * r['float32_clean']:.1f}%", f"{100 * r['float32_pgd20']:.1f}%",
                 f"{100 * r['amp_clean']:.1f}%", f"{100 * r['amp_pgd20']:.1f}%", f"{r['points']:+.1f}"]
                for r in meta["amp_check"]]
        lines += ["AMP's robustness: TRADES on the digits trained with --no-amp and with --amp (bf16, the default on "
                  "CUDA), same seed, judged by float32 PGD-20 (ε 0.2) on the 450 held-out digits, last checkpoint:", "",
                  common.markdown_table(["seed", "float32 clean", "float32 PGD-20", "AMP clean", "AMP PGD-20",
                                         "AMP − float32 (points)"], rows), ""]
    lines += _verdicts(records)
    lines += ["", f"Benchmark wall time: {meta['seconds']:.0f} s."]
    return "\n".join(lines)


def _verdicts(records) -> list[str]:
    by = {(r["model"], r["method"], r["batch"], r["variant"]): r for r in records}
    lines = []
    key = ("preact_resnet18", "pgd_at", 512)
    if key + (FASTADV,) in by:
        ours, fp32, amp = by[key + (FASTADV,)], by[key + (OFFICIAL_FP32,)], by[key + (OFFICIAL_AMP,)]
        best = min((by[key + (n,)] for n in (FASTADV, FASTADV_GRAPHS) if key + (n,) in by),
                   key=lambda r: r["epoch_seconds"])
        lines += [f"- PGD-10 AT, PreActResNet-18, batch 512: fastadv default {fp32['median_ms'] / ours['median_ms']:.2f}× "
                  f"the official float32 step (target ≥ {TARGETS['vs_official_fp32']}×) and "
                  f"{amp['median_ms'] / ours['median_ms']:.2f}× the official step with AMP (target ≥ "
                  f"{TARGETS['vs_official_amp']}×); best projected epoch {best['epoch_seconds']:.1f} s "
                  f"({best['variant']}; target ≤ {TARGETS['epoch_seconds']:.0f} s; floor "
                  f"{best['floor_epoch_seconds']:.1f} s)."]
    key = ("preact_resnet18", "pgd_at", 128)
    if key + (FASTADV_GRAPHS,) in by:
        lines += [f"- --cuda-graphs at batch 128: {by[key + (FASTADV,)]['median_ms'] / by[key + (FASTADV_GRAPHS,)]['median_ms']:.2f}× "
                  f"fastadv's ungraphed default (target ≥ {TARGETS['graphs_vs_default']}×)."]
    return lines
