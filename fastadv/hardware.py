"""What this machine's CPU computes fast: whether bfloat16 runs natively.

A CPU without bf16 instructions (AVX512-BF16, AMX) still runs bf16 autocast, by converting in
software: on a 2-core AVX2 host a PreActResNet-18 forward+backward at batch 32 took 16.3 s under
bf16 autocast against 0.82 s in float32, twenty times slower and silent about it. Rather than
reading CPU flags (which say nothing about what oneDNN and ATen actually dispatch to, and differ
between architectures), a short probe times the same small convolution forward+backward in bf16
and in float32, once per process.
"""
from __future__ import annotations

import functools
import time
import warnings

import torch
import torch.nn.functional as F

__all__ = ["cpu_bf16_ratio", "cpu_bf16_native", "warn_slow_cpu_bf16", "SlowBF16Warning"]

# bf16 counts as native up to this many times float32's time: native bf16 runs at or below
# float32's time (the probe measures 0.5-1.2 here), emulated bf16 about 20 times above it, so the
# boundary is far from both and the probe's noise cannot move a machine across it.
NATIVE_LIMIT = 2.0
_ROUNDS = 5


class SlowBF16Warning(UserWarning):
    """bfloat16 was asked for on a CPU that emulates it (far slower than float32)."""


def _convolution_step(dtype: torch.dtype):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(8, 16, 16, 16, generator=generator).to(dtype).requires_grad_()
    weight = torch.randn(16, 16, 3, 3, generator=generator).to(dtype).requires_grad_()

    def step():
        F.conv2d(x, weight, padding=1).sum().backward()

    return step


@functools.lru_cache(maxsize=1)
def cpu_bf16_ratio() -> float:
    """How many times longer a small bf16 convolution forward+backward takes than in float32 on
    this CPU (measured once per process, in a few milliseconds where bf16 is native). The two
    dtypes alternate and the fastest round of each counts, so that another process's load, which
    only ever adds time, falls on both and mostly drops out."""
    steps = {dtype: _convolution_step(dtype) for dtype in (torch.float32, torch.bfloat16)}
    best = {dtype: float("inf") for dtype in steps}
    threads = torch.get_num_threads()
    # One thread: on a busy machine a multi-threaded kernel waits on its slowest thread, which
    # turns a fraction of a millisecond into tens of milliseconds at random.
    torch.set_num_threads(1)
    try:
        for step in steps.values():  # first calls create oneDNN's primitives
            step()
        for _ in range(_ROUNDS):
            for dtype, step in steps.items():
                started = time.perf_counter()
                step()
                best[dtype] = min(best[dtype], time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads)
    return best[torch.bfloat16] / best[torch.float32]


def cpu_bf16_native() -> bool:
    """Whether this CPU computes bfloat16 at least about as fast as float32 (see
    :func:`cpu_bf16_ratio`)."""
    return cpu_bf16_ratio() <= NATIVE_LIMIT


_warned = False


def warn_slow_cpu_bf16(where: str) -> None:
    """A :class:`SlowBF16Warning`, once per process, when this CPU emulates bf16; ``where`` names
    what asked for bf16 (e.g. ``"fastadv train --amp"``)."""
    global _warned
    if _warned or cpu_bf16_native():
        return
    _warned = True
    warnings.warn(f"{where}: this CPU has no native bfloat16: a bf16 convolution forward+backward measured "
                  f"{cpu_bf16_ratio():.1f}x slower than in float32, so bf16 will slow this run down instead of "
                  f"speeding it up; use float32 on this machine", SlowBF16Warning, stacklevel=2)
