"""The build: CUDA kernels compiled in wherever nvcc exists, the extension's registrations."""
import os
import shutil

import pytest
import torch

import fastadv
from fastadv import backend

CPU_ONLY = os.environ.get("FASTADV_CPU_ONLY", "0") not in ("", "0", "false", "False")


def test_cpu_kernels_are_registered():
    for op in ("fastadv::pgd_step", "fastadv::pgd_step_"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CPU"), op


@pytest.mark.skipif(shutil.which("nvcc") is None or CPU_ONLY, reason="no nvcc on PATH, or a CPU-only build was asked for")
def test_cuda_kernels_compiled_when_nvcc_exists():
    assert backend.cuda_compiled(), "nvcc is on PATH but fastadv._C was built without CUDA"
    for op in ("fastadv::pgd_step", "fastadv::pgd_step_"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA"), op


def test_triton_kernels_are_importable_modules_of_the_package():
    spec = __import__("importlib").util.find_spec("fastadv.kernels.pgd")
    assert spec is not None and spec.origin.endswith(os.path.join("kernels", "pgd.py"))


def test_version_and_public_api():
    assert fastadv.__version__
    assert set(fastadv.ops.__all__) >= {"pgd_init", "pgd_step", "pgd_step_"}
