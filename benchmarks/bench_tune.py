"""`fastadv bench tune --device cuda` (or `fastadv bench --device cuda --tune`): which GPU backend
is fastest for every op in every size class of :mod:`fastadv.tuned`, host and device time together.

For each op (its unchecked call where it has one: what the loops run) and each size class, one
input size inside the class (the op's first input holding about half the class's bound, and 4×
the last bound for the last class) is run through the CUDA C++ kernels and through the Triton
kernels, each warmed up and then timed over many calls with one synchronisation at the end, the
backends in interleaved rounds. The faster backend of each class goes into the table, written as
``tuned.py`` (a module like :mod:`fastadv.tuned`, to copy there) beside the timings.

On the CPU the same code compares the C++ kernels with the reference (what a test exercises);
the table it writes says so and is not meant to be shipped.
"""
from __future__ import annotations

import pprint
import time
from pathlib import Path

import torch

import fastadv
from fastadv import tuned

from . import bench_overhead, common

# Each family's calls at a batch size (bench_overhead's builders, at CIFAR's image and a typical
# feature width), and the elements per sample of the first input of each op.
IMAGE, FEATURES = (3, 32, 32), 128
BUILDERS = {
    "pgd": lambda device, batch: bench_overhead.pgd_cases(device, batch, IMAGE),
    "logits": bench_overhead.logits_cases,
    "simplex": bench_overhead.simplex_cases,
    "contrastive": lambda device, batch: bench_overhead.contrastive_cases(device, batch, FEATURES),
}
PER_SAMPLE = {"pgd": 3 * 32 * 32, "logits": 10, "simplex": 3, "contrastive": 2 * FEATURES}
FIRST_INPUT_SCALE = {"masked_gram": 3, "min_norm_weights": 3}  # [3, B, C] members; [B, 3, 3] matrices
# Contrastive ops cost N² per call: the largest class is left to the default rule.
LARGEST_BATCH = {"contrastive": 8192}


def targets() -> list[int]:
    """One size per class: half of each bound, and four times the last one."""
    return [bound // 2 for bound in tuned.SIZE_CLASSES] + [4 * tuned.SIZE_CLASSES[-1]]


def candidates(device) -> tuple[str, str]:
    return ("cuda", "triton") if device.type == "cuda" else ("cpu", "reference")


def run(device: str = "cuda", quick: bool = False, out_dir=None, only=None, classes=None) -> str:
    """``only``: the ops to time (default: all); ``classes``: how many size classes (default: all)."""
    device = torch.device(device)
    started = time.perf_counter()
    names = candidates(device)
    calls, rounds = (20, 3) if quick else (100, 5)
    records, table = [], {}
    for size, target in enumerate(targets()[:classes]):
        for family, builder in BUILDERS.items():
            names_here = [op for op in builder(device, 1) if op != "pgd_init"  # torch's random ops
                          and (only is None or op in only)]
            built = {}  # batch -> the family's calls on inputs of that batch, made once
            for op in names_here:
                batch = max(1, target // (PER_SAMPLE[family] * FIRST_INPUT_SCALE.get(op, 1)))
                if batch > LARGEST_BATCH.get(family, batch) or (device.type == "cpu" and batch > 4096):
                    continue
                if batch not in built:
                    built[batch] = builder(device, batch)
                public, unchecked = built[batch][op]
                call = unchecked or public
                functions = {}
                for name in names:
                    def timed(name=name):
                        with fastadv.use_backend(name):
                            for _ in range(calls):
                                call()
                    functions[name] = timed
                stats = common.time_interleaved(functions, device, rounds=rounds, calls_per_round=1, warmup=1)
                per_call = {name: stats[name]["median"] / calls for name in names}
                best = min(per_call, key=per_call.get)
                table.setdefault(op, [None] * len(targets()))[size] = best
                records.append({"op": op, "size_class": size, "batch": batch,
                                **{f"{name}_us": per_call[name] * 1e6 for name in names}, "fastest": best})
    # A class left out (contrastive's largest) keeps the class before it.
    for op, choices in table.items():
        for i, choice in enumerate(choices):
            if choice is None:
                choices[i] = choices[i - 1] if i else names[1]
        table[op] = tuple(choices)
    machine = common.machine_description(device)
    meta = {"machine": machine, "device": str(device), "torch": torch.__version__, "fastadv": fastadv.__version__,
            "quick": quick, "size_classes": list(tuned.SIZE_CLASSES), "candidates": list(names),
            "seconds": time.perf_counter() - started}
    folder = common.write_results("tune", records, meta, out_dir)
    module = Path(folder) / "tuned.py"
    module.write_text(table_module(table, machine))
    lines = [f"Backends per op and size class, {machine} (host + device time per call, µs)", "",
             common.markdown_table(["op", "class", "batch"] + [f"{n} µs" for n in names] + ["fastest"],
                                   [[r["op"], r["size_class"], r["batch"]] + [f"{r[f'{n}_us']:.1f}" for n in names]
                                    + [r["fastest"]] for r in records]), "",
             f"Table written to {module}" + ("" if device.type == "cuda" else
                                             " (CPU candidates: an exercise of the tuner, not a table to ship)"),
             f"Benchmark wall time: {meta['seconds']:.0f} s."]
    return "\n".join(lines)


def table_module(table: dict, machine: str) -> str:
    """The text of a module like fastadv/tuned.py holding ``table``."""
    source = Path(tuned.__file__).read_text()
    head = source[:source.index("#: The GPU and software")]
    return (head + f"#: The GPU and software the table was measured on (None: nothing measured, the default rule).\n"
            f"MEASURED_ON = {machine!r}\n"
            f"#: Size classes by the number of elements of an op's first input: class i holds sizes up to\n"
            f"#: SIZE_CLASSES[i]; the last class everything larger.\n"
            f"SIZE_CLASSES = {tuple(tuned.SIZE_CLASSES)!r}\n"
            f"#: op -> the backend (\"cuda\" or \"triton\") measured fastest in each size class.\n"
            f"TABLE: dict[str, tuple[str, ...]] = {pprint.pformat(table, width=110)}\n")
