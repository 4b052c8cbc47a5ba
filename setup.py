"""Builds fastadv._C: CPU kernels always, CUDA kernels whenever nvcc is found.

Environment switches:
  FASTADV_CPU_ONLY=1     build without CUDA even when nvcc exists
  CUDA_HOME / CUDA_PATH  the toolkit to use (otherwise located through nvcc itself)
  TORCH_CUDA_ARCH_LIST   GPU architectures (default "8.0;9.0": A100 and H100)
  MAX_JOBS               parallel compile jobs (ninja)
"""
import os
import re
import shutil
import subprocess
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"


def _is_toolkit(path):
    return path is not None and (Path(path) / "include" / "cuda_runtime.h").exists()


def find_cuda_home():
    """The CUDA toolkit directory, or None when no nvcc is available.

    torch guesses CUDA_HOME from the parent of the `nvcc` found on PATH, which is wrong when
    that `nvcc` is a wrapper script outside the toolkit; nvcc's own dry run names the
    directory it really lives in (the `TOP=` line), so ask it.
    """
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if _is_toolkit(os.environ.get(var)) and (Path(os.environ[var]) / "bin" / "nvcc").exists():
            return str(Path(os.environ[var]).resolve())
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    try:
        probe = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                               capture_output=True, text=True, timeout=60)
        match = re.search(r"^#\$ TOP=(.+)$", probe.stdout + probe.stderr, re.MULTILINE)
    except (OSError, subprocess.SubprocessError):
        match = None
    candidates = [Path(match.group(1).strip()).resolve()] if match else []
    candidates.append(Path(nvcc).resolve().parent.parent)
    for candidate in candidates:
        if _is_toolkit(candidate):
            return str(candidate)
    return None


CPU_ONLY = os.environ.get("FASTADV_CPU_ONLY", "0") not in ("", "0", "false", "False")
CUDA_HOME = None if CPU_ONLY else find_cuda_home()
if CUDA_HOME is not None:
    # torch.utils.cpp_extension reads these when it is imported.
    os.environ["CUDA_HOME"] = CUDA_HOME
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")

from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


class IncrementalBuildExtension(BuildExtension):
    """Keeps ninja's objects in build/ so that `pip install -e .` recompiles only what changed
    (pip's editable builds otherwise use a fresh temporary directory every time)."""

    def build_extensions(self):
        self.build_temp = str(ROOT / "build" / "temp")
        super().build_extensions()


# Folders of the repository installed under fastadv rather than at the top level (a top-level
# `kernels` or `benchmarks` package would collide with other projects' modules).
MAPPED_FOLDERS = {"kernels": "fastadv.kernels", "benchmarks": "fastadv.benchmarks"}


def packages():
    """Every package of the distribution, discovered rather than listed, so a new subpackage
    can never be left out of the wheel: fastadv's own tree, and each mapped folder's tree under
    its fastadv name. (tests/test_packaging.py checks that every folder holding Python files
    is among them.)"""
    found = find_packages(where=str(ROOT), include=["fastadv", "fastadv.*"])
    package_dir = {}
    for folder, name in MAPPED_FOLDERS.items():
        found.append(name)
        package_dir[name] = folder
        for sub in find_packages(where=str(ROOT / folder)):
            found.append(f"{name}.{sub}")
            package_dir[f"{name}.{sub}"] = f"{folder}/{sub.replace('.', '/')}"
    return sorted(found), package_dir


def sources(pattern):
    return sorted(str(p.relative_to(ROOT)) for p in CSRC.glob(pattern))


def extension():
    with_cuda = CUDA_HOME is not None
    # -fopenmp: at::parallel_for is inlined into our code and parallel only under OpenMP; the
    # libgomp.so.1 torch ships (and has loaded) serves it.
    # -fno-trapping-math: we never enable floating-point exceptions, and without it GCC keeps
    # the selects of the logits kernels (fastadv/logits.h) as branches, which blocks vectorising
    # them below AVX-512. -fno-math-errno: nothing reads errno, and with it sqrt is one
    # instruction rather than a call guarded by a branch (which stops a loop vectorising).
    cxx_flags = ["-O3", "-fopenmp", "-fno-trapping-math", "-fno-math-errno", f"-DFASTADV_WITH_CUDA={int(with_cuda)}"]
    common = dict(
        name="fastadv._C",
        sources=sources("ops.cpp") + sources("python.cpp") + sources("autograd/*.cpp") + sources("cpu/*.cpp"),
        include_dirs=[str(CSRC / "include")],
        extra_link_args=["-fopenmp"],
    )
    if not with_cuda:
        return CppExtension(extra_compile_args={"cxx": cxx_flags}, **common)
    common["sources"] += sources("cuda/*.cpp") + sources("cuda/*.cu")
    nvcc_flags = ["-O3", "-lineinfo"]
    return CUDAExtension(extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags}, **common)


if __name__ == "__main__":
    print(f"fastadv: building {'with CUDA from ' + CUDA_HOME if CUDA_HOME else 'CPU-only'}")
    discovered, package_dir = packages()
    setup(
        packages=discovered,
        package_dir=package_dir,
        ext_modules=[extension()],
        cmdclass={"build_ext": IncrementalBuildExtension.with_options(use_ninja=True)},
    )
