"""Shared parametrisation of the tests."""
import pytest
import torch


def device_of(backend: str) -> torch.device:
    """Where a backend's tensors live in the tests: Triton runs on CPU tensors under the
    interpreter when there is no GPU."""
    if backend == "cuda" or (backend == "triton" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


BACKENDS = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=pytest.mark.cuda),
    pytest.param("triton", id="triton", marks=pytest.mark.triton),
]
