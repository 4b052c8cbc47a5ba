"""The build: CUDA kernels compiled in wherever nvcc exists, the extension's registrations."""
import os
import shutil

import pytest
import torch

import fastadv
from fastadv import backend

CPU_ONLY = os.environ.get("FASTADV_CPU_ONLY", "0") not in ("", "0", "false", "False")


FUSED_OPS = ["fastadv::pgd_step", "fastadv::pgd_step_"] + [f"fastadv::{name}" for name in fastadv.ops.logits.__all__]


def test_cpu_kernels_are_registered():
    for op in FUSED_OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CPU"), op


def test_logits_autograd_is_in_cpp():
    """The Autograd kernel of every logits op is the C++ one of csrc/autograd/logits.cpp, not a
    Python registration."""
    for name in fastadv.ops.logits.__all__:
        table = torch._C._dispatch_dump_table(f"fastadv::{name}")
        autograd = next(line for line in table.splitlines() if line.startswith("AutogradCPU:"))
        assert os.path.join("csrc", "autograd", "logits.cpp") in autograd, autograd


@pytest.mark.skipif(shutil.which("nvcc") is None or CPU_ONLY, reason="no nvcc on PATH, or a CPU-only build was asked for")
def test_cuda_kernels_compiled_when_nvcc_exists():
    assert backend.cuda_compiled(), "nvcc is on PATH but fastadv._C was built without CUDA"
    for op in FUSED_OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA"), op


def test_triton_kernels_are_importable_modules_of_the_package():
    spec = __import__("importlib").util.find_spec("fastadv.kernels.pgd")
    assert spec is not None and spec.origin.endswith(os.path.join("kernels", "pgd.py"))


def test_version_and_public_api():
    assert fastadv.__version__
    assert set(fastadv.ops.__all__) >= {"pgd_init", "pgd_step", "pgd_step_"}
