"""fastadv: fast and faithful adversarial training for PyTorch.

The fused ops live in :mod:`fastadv.ops`; :func:`use_backend` picks which implementation
runs them (C++ on the CPU, CUDA C++ or Triton on the GPU, or the pure-PyTorch reference).
"""
import torch

try:
    from . import _C  # noqa: F401  (registers the operators in torch.ops.fastadv)
except ImportError as error:  # pragma: no cover - only without a build
    raise ImportError(
        "fastadv's compiled extension fastadv._C is missing or does not load; build it with "
        "`pip install --no-build-isolation -e .` (or `make`) after installing torch") from error

from . import ops
from .backend import BACKENDS, BackendUnavailable, use_backend

__version__ = "0.1.0"
__all__ = ["ops", "use_backend", "BACKENDS", "BackendUnavailable", "__version__"]
