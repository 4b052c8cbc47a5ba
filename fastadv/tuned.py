"""Which GPU backend ``auto`` runs, per op and size class, where it was measured.

``fastadv bench tune --device cuda`` times every op through the CUDA C++ kernels and through the
Triton kernels (host and device time together: the wall time of many calls, synchronised at the
end) at one size per class, and writes this module's table to ``benchmarks/results/tuned.py``; a
release copies a table measured on its reference GPU here. Without an entry, ``auto`` runs Triton
on CUDA tensors (the CUDA C++ kernels where Triton is missing or cannot take the shape): both
backends compute the same results (tests/ops), so the table only ever changes the speed.
"""
from __future__ import annotations

#: The GPU and software the table was measured on (None: nothing measured, the default rule).
MEASURED_ON = None
#: Size classes by the number of elements of an op's first input: class i holds sizes up to
#: SIZE_CLASSES[i]; the last class everything larger.
SIZE_CLASSES = (1 << 12, 1 << 16, 1 << 20)
#: op -> the backend ("cuda" or "triton") measured fastest in each size class.
TABLE: dict[str, tuple[str, ...]] = {}
