"""Looped against batched (vmapped) members of :class:`fastadv.models.Ensemble`: `fastadv bench ensemble`.

Two workloads of three members of one architecture, batch 128: digits_cnn on 1x8x8 digits and
PreActResNet-18 on 3x32x32 (CIFAR-shaped random data). Two calls each, the two paths timed
interleaved round by round on the same members:

- input gradient: eval mode, ∇x CE(ensemble(x), y), what an attack step takes;
- training gradient: train mode, ∇θ CE(ensemble(x), y) over every member parameter, what a
  training step takes (BatchNorm updates its running statistics in both paths).

The ensemble combines by probabilities (combine="prob"); the combine is a few [3, 128, 10]
ops, negligible next to the members.

Measured with `fastadv bench ensemble` (11 rounds) on the development machine, an Intel Xeon
with 2 cores, AVX-512, 2 torch threads, torch 2.14.1; median ms, looped / batched:

| workload | call | looped | batched | looped / batched |
|---|---|---|---|---|
| digits_cnn x 3 | input gradient | 27.7 | 30.3 | 0.92× |
| digits_cnn x 3 | training gradient | 24.0 | 29.9 | 0.80× |
| preact_resnet18 x 3 | input gradient | 4364 | 5920 | 0.74× |
| preact_resnet18 x 3 | training gradient | 5996 | 9007 | 0.67× |

The loop wins every case, so it is the default (``fastadv.ensemble.BATCHED_DEFAULT``). vmap
turns a convolution with stacked weights into one grouped convolution (groups = members),
which the CPU's oneDNN runs slower than the members' dense convolutions one by one; stacking
the parameters in each forward costs a copy of them (PreActResNet-18 x 3: 134 MB, about 13 ms
at this machine's 20 GB/s), small next to that.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import fastadv
from fastadv.data import dataset_info
from fastadv.models import Ensemble, build_model

from . import common

BATCH = 128
MEMBERS = 3
WORKLOADS = (("digits_cnn x 3", "digits_cnn", "digits"), ("preact_resnet18 x 3", "preact_resnet18", "cifar10"))


def _calls(ensemble, x, y):
    def input_gradient():
        ensemble.eval()
        inputs = x.detach().requires_grad_()
        return torch.autograd.grad(F.cross_entropy(ensemble(inputs), y), inputs)

    def training_gradient():
        ensemble.train()
        return torch.autograd.grad(F.cross_entropy(ensemble(x), y), list(ensemble.parameters()))
    return {"input gradient": input_gradient, "training gradient": training_gradient}


def measure(model, dataset, device, rounds):
    """Seconds (median, p20, p80) of each call on each path."""
    info = dataset_info(dataset)
    torch.manual_seed(0)
    members = [build_model(model, info).to(device) for _ in range(MEMBERS)]
    x = torch.rand(BATCH, *info.input_shape, device=device)
    y = torch.randint(0, info.num_classes, (BATCH,), device=device)
    paths = {"looped": Ensemble(members, batched=False), "batched": Ensemble(members, batched=True)}
    results = {}
    for call in ("input gradient", "training gradient"):
        functions = {path: _calls(ensemble, x, y)[call] for path, ensemble in paths.items()}
        results[call] = common.time_interleaved(functions, device, rounds=rounds, calls_per_round=1, warmup=1)
    return results


def run(device: str = "cpu", quick: bool = False, out_dir=None) -> str:
    device = torch.device(device)
    rounds = 3 if quick else 11
    records = []
    for name, model, dataset in WORKLOADS:
        for call, stats in measure(model, dataset, device, rounds).items():
            for path, s in stats.items():
                records.append({"workload": name, "call": call, "path": path, "median_ms": s["median"] * 1e3,
                                "p20_ms": s["p20"] * 1e3, "p80_ms": s["p80"] * 1e3,
                                "looped_over_batched": stats["looped"]["median"] / stats["batched"]["median"]})
    meta = {"machine": common.machine_description(device), "device": str(device), "torch": torch.__version__,
            "fastadv": fastadv.__version__, "batch": BATCH, "members": MEMBERS, "dtype": "float32",
            "rounds": rounds, "threads": torch.get_num_threads()}
    common.write_results("ensemble", records, meta, out_dir)
    return report(records, meta)


def report(records, meta) -> str:
    rows = [[r["workload"], r["call"], r["path"], f"{r['median_ms']:.2f}", f"{r['p20_ms']:.2f}–{r['p80_ms']:.2f}",
             f"{r['looped_over_batched']:.2f}×" if r["path"] == "batched" else ""]
            for r in records]
    table = common.markdown_table(["workload", "call", "path", "median ms", "p20–p80 ms", "looped / batched"], rows)
    return "\n".join([f"Ensemble members looped vs batched (torch.vmap), B={BATCH}, float32, {meta['machine']}, "
                      f"{meta['threads']} threads, {meta['rounds']} interleaved rounds", "", table, "",
                      "looped / batched > 1: the batched path is faster."])
