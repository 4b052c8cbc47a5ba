"""Which implementation of an op runs: ``auto | cpu | cuda | triton | reference``.

``auto`` picks Triton for CUDA tensors (the CUDA C++ kernels when Triton is missing or cannot
take the shape), the C++ kernels for CPU tensors, and the pure-PyTorch reference where neither
applies (for example float16 on the CPU). ``FASTADV_BACKEND`` sets the default for a process; the context manager
:func:`use_backend` overrides it for a block. A backend named explicitly never falls back:
it runs, or it raises :class:`BackendUnavailable` saying why.
"""
from __future__ import annotations

import bisect
import contextlib
import importlib.util
import os

import torch

from . import tuned

BACKENDS = ("auto", "cpu", "cuda", "triton", "reference")
CPU_DTYPES = (torch.float32, torch.float64)
GPU_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

_override: str | None = None
_capabilities: dict[str, bool] = {}
# FASTADV_BACKEND as last read (raw value, parsed name): every op asks for the backend on every
# call, and os.environ.get costs more than some of them. CPython's os.environ keeps its bytes in
# ``_data``, which its setters update; elsewhere the mapping itself is read.
_ENVIRON = getattr(os.environ, "_data", None)
_ENV_KEY = os.environ.encodekey("FASTADV_BACKEND") if _ENVIRON is not None else "FASTADV_BACKEND"
_parsed_env: tuple = (None, "auto")


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run these inputs on this machine or build."""


def _check_name(name: str, source: str) -> str:
    if not isinstance(name, str) or name.strip().lower() not in BACKENDS:
        raise ValueError(f"{source} must be one of {', '.join(BACKENDS)}; got {name!r}")
    return name.strip().lower()


def requested() -> str:
    """The backend asked for now: the innermost :func:`use_backend`, else ``FASTADV_BACKEND``."""
    global _parsed_env
    if _override is not None:
        return _override
    raw = _ENVIRON.get(_ENV_KEY) if _ENVIRON is not None else os.environ.get(_ENV_KEY)
    if raw is not _parsed_env[0] and raw != _parsed_env[0]:
        text = "auto" if raw is None else raw.decode() if isinstance(raw, bytes) else raw
        _parsed_env = (raw, _check_name(text, "FASTADV_BACKEND"))
    return _parsed_env[1]


@contextlib.contextmanager
def use_backend(name: str):
    """Run the fastadv ops inside the block on backend ``name`` (one of :data:`BACKENDS`)."""
    global _override
    name = _check_name(name, "backend name")
    previous, _override = _override, name
    try:
        yield name
    finally:
        _override = previous


def triton_available() -> bool:
    if "triton" not in _capabilities:
        _capabilities["triton"] = importlib.util.find_spec("triton") is not None
    return _capabilities["triton"]


def triton_interpreted() -> bool:
    """Whether Triton kernels run in the interpreter (on CPU tensors), TRITON_INTERPRET=1."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def cuda_compiled() -> bool:
    """Whether this build of fastadv._C contains the CUDA kernels."""
    if "cuda" not in _capabilities:
        _capabilities["cuda"] = bool(torch.ops.fastadv._compiled_with_cuda())
    return _capabilities["cuda"]


def _dtype_names(dtypes) -> str:
    return "/".join(str(d).replace("torch.", "") for d in dtypes)


def size_class(numel: int) -> int:
    """The size class of an op whose first input has ``numel`` elements (fastadv.tuned)."""
    return bisect.bisect_left(tuned.SIZE_CLASSES, numel)


def tuned_choice(op: str, size: int) -> str | None:
    """The backend fastadv.tuned measured fastest for ``op`` in size class ``size``, or None."""
    choices = tuned.TABLE.get(op)
    return None if choices is None or size >= len(choices) else choices[size]


def select(op: str, device: torch.device, dtype: torch.dtype, triton_fits: bool = True, size: int = 0) -> str:
    """The backend that runs ``op`` on tensors of ``device``/``dtype``, or an explained error.
    ``triton_fits`` says whether the op's Triton kernel takes these inputs' shape (the logits
    kernels take rows of up to 16384 columns): ``auto`` runs the CUDA C++ kernels (or the
    reference) otherwise. ``size``: the inputs' size class (:func:`size_class`): on CUDA, ``auto``
    runs the backend :mod:`fastadv.tuned` measured fastest for it, where it has an entry."""
    name = requested()
    if name == "auto":
        if device.type == "cuda":
            if tuned_choice(op, size) == "cuda" and cuda_compiled() and dtype in GPU_DTYPES:
                return "cuda"
            if triton_available() and triton_fits:
                return "triton"
            return "cuda" if cuda_compiled() and dtype in GPU_DTYPES else "reference"
        if device.type == "cpu" and dtype in CPU_DTYPES:
            return "cpu"
        return "reference"
    if name == "cpu":
        if device.type != "cpu":
            raise BackendUnavailable(f"{op}: backend 'cpu' runs the C++ CPU kernels, but the tensors are on {device}")
        if dtype not in CPU_DTYPES:
            raise BackendUnavailable(
                f"{op}: the C++ CPU kernels support {_dtype_names(CPU_DTYPES)}, got {_dtype_names([dtype])}; "
                "use backend 'reference' or convert the inputs")
    elif name == "cuda":
        if not cuda_compiled():
            raise BackendUnavailable(f"{op}: this fastadv build has no CUDA kernels (it was built without nvcc; see `fastadv info`)")
        if device.type != "cuda":
            raise BackendUnavailable(f"{op}: backend 'cuda' needs CUDA tensors, got tensors on {device}")
    elif name == "triton":
        if not triton_available():
            raise BackendUnavailable(f"{op}: backend 'triton' needs the triton package (pip install 'fastadv[triton]')")
        if device.type == "cpu" and not triton_interpreted():
            raise BackendUnavailable(
                f"{op}: Triton kernels run on CPU tensors only in Triton's interpreter; "
                "set TRITON_INTERPRET=1 before triton is imported, or use CUDA tensors")
        if device.type not in ("cpu", "cuda"):
            raise BackendUnavailable(f"{op}: backend 'triton' needs CUDA tensors, got tensors on {device}")
    if name in ("cuda", "triton") and dtype not in GPU_DTYPES:
        raise BackendUnavailable(f"{op}: backend {name!r} supports {_dtype_names(GPU_DTYPES)}, got {_dtype_names([dtype])}")
    return name
