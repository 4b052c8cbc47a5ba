"""The `fastadv` command."""
from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys

BENCH_FAMILIES = ("pgd",)


def _info(args) -> int:
    import torch

    import fastadv
    from fastadv import backend
    from fastadv.benchmarks import common

    def line(name, value):
        print(f"  {name:<28} {value}")

    print("fastadv", fastadv.__version__)
    line("python", platform.python_version())
    line("torch", f"{torch.__version__} (CUDA {torch.version.cuda or 'none'})")
    triton_version = "not installed"
    if backend.triton_available():
        import triton

        triton_version = triton.__version__
    line("triton", triton_version)
    print("backends")
    line("C++ CPU kernels", f"yes, {torch.ops.fastadv._cpu_capability()}")
    line("CUDA kernels compiled in", "yes" if backend.cuda_compiled() else "no (built without nvcc: CPU-only)")
    device = "none"
    if torch.cuda.is_available():
        device = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    line("CUDA device", device)
    line("Triton importable", "yes" if backend.triton_available() else "no")
    line("Triton interpreter", "on (TRITON_INTERPRET=1)" if backend.triton_interpreted() else "off")
    line("backend requested", f"{backend.requested()} (FASTADV_BACKEND={os.environ.get('FASTADV_BACKEND', 'unset')})")
    print("machine")
    line("CPU", f"{common.cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads")
    numel = 64 * 2**20  # 256 MiB per tensor: well beyond the caches
    bandwidth = common.copy_bandwidth(numel, torch.device("cpu"), rounds=5)
    line("memory bandwidth (copy_)", f"{bandwidth / 1e9:.1f} GB/s read+write, {numel * 4 >> 20} MiB tensors")
    if torch.cuda.is_available():
        bandwidth = common.copy_bandwidth(numel, torch.device("cuda"), rounds=10)
        line("GPU memory bandwidth", f"{bandwidth / 1e9:.0f} GB/s read+write")
    return 0


def _bench(args) -> int:
    families = BENCH_FAMILIES if args.family == "all" else (args.family,)
    for family in families:
        module = importlib.import_module(f"fastadv.benchmarks.bench_{family}")
        print(module.run(device=args.device, quick=args.quick, out_dir=args.out))
        print()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastadv", description="Fast and faithful adversarial training.")
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="versions, available backends and the machine's memory bandwidth")
    info.set_defaults(run=_info)
    bench = commands.add_parser("bench", help="benchmark the fused ops against eager and torch.compile",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    bench.add_argument("family", nargs="?", default="all", choices=("all",) + BENCH_FAMILIES,
                       help="op family to benchmark")
    bench.add_argument("--device", default="cpu", help="cpu or cuda")
    bench.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run, noisier figures)")
    bench.add_argument("--out", default=None, help="folder for the CSV/JSON results (default benchmarks/results)")
    bench.set_defaults(run=_bench)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
