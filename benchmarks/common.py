"""Timing, bandwidth and reporting shared by every benchmark family (installed as
fastadv.benchmarks.common; `fastadv bench` runs the families)."""
from __future__ import annotations

import contextlib
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

RESULTS_DIR = Path("benchmarks") / "results"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _percentile(sorted_values, q):
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def time_interleaved(functions: dict[str, Callable[[], object]], device: torch.device, rounds: int = 30,
                     calls_per_round: int = 5, warmup: int = 3) -> dict[str, dict[str, float]]:
    """Median, p20 and p80 seconds per call of each function.

    The functions take turns round by round, so a slow spell of the machine (other processes,
    frequency changes) falls on all of them alike and their ratios stay fair.
    """
    for fn in functions.values():
        for _ in range(warmup):
            fn()
    synchronize(device)
    samples = {name: [] for name in functions}
    for _ in range(rounds):
        for name, fn in functions.items():
            synchronize(device)
            start = time.perf_counter()
            for _ in range(calls_per_round):
                fn()
            synchronize(device)
            samples[name].append((time.perf_counter() - start) / calls_per_round)
    stats = {}
    for name, values in samples.items():
        values.sort()
        stats[name] = {"median": statistics.median(values), "p20": _percentile(values, 0.2),
                       "p80": _percentile(values, 0.8)}
    return stats


def copy_bandwidth(numel: int, device: torch.device, rounds: int = 30) -> float:
    """Bytes per second of `dst.copy_(src)` on float32 tensors of `numel` elements, counting
    the bytes read and written (8 per element)."""
    src = torch.rand(numel, device=device)
    dst = torch.empty_like(src)
    seconds = time_interleaved({"copy": lambda: dst.copy_(src)}, device, rounds=rounds)["copy"]["median"]
    return 8 * numel / seconds


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    return (f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
            f"{torch.ops.fastadv._cpu_capability()} (torch {torch.__version__})")


def cxx_compiler_for_inductor() -> str:
    """The C++ compiler torch.compile's CPU backend needs at run time, and its version."""
    from torch._inductor import config

    compiler = config.cpp.cxx[0] if isinstance(config.cpp.cxx, tuple) else str(config.cpp.cxx)
    compiler = compiler or "g++"
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
        return version.splitlines()[0] if version else compiler
    except (OSError, subprocess.SubprocessError):
        return f"{compiler} (not found)"


def milliseconds(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


def markdown_table(columns: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(family: str, records: list[dict], meta: dict, out_dir: Path | None = None) -> Path:
    """benchmarks/results/<family>.json (records and meta) and <family>.csv (records)."""
    out_dir = Path(out_dir) if out_dir is not None else RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{family}.json").write_text(json.dumps({"meta": meta, "records": records}, indent=2))
    if records:
        with open(out_dir / f"{family}.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(records[0]))
            writer.writeheader()
            writer.writerows(records)
    return out_dir


@contextlib.contextmanager
def quiet_stderr():
    """Silence file descriptor 2: kineto logs every profiler start and stop there."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def allocated_mib(fn: Callable[[], object], device: torch.device) -> float:
    """Memory one call allocates, in MiB: on CUDA the peak above what was allocated before the
    call; on the CPU (which keeps no peak statistics) the sum of the call's allocations, from
    torch.profiler's memory events."""
    fn()  # warm: compile, caches
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    with quiet_stderr():
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
    return sum(max(0, event.self_cpu_memory_usage) for event in prof.key_averages()) / 2**20


@contextlib.contextmanager
def fresh_inductor_cache():
    """An empty inductor cache for the block, so that a compile time measured inside is the
    cost of compiling rather than of loading code an earlier run compiled."""
    torch._dynamo.reset()
    previous = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    with tempfile.TemporaryDirectory() as cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        try:
            yield
        finally:
            if previous is None:
                del os.environ["TORCHINDUCTOR_CACHE_DIR"]
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = previous
