"""The benchmark report's GPU-only rows, run on the CPU by naming the CPU backend: each timed
variant of UDR's in-place step (a backend by name, the attack loop's unchecked call) computes
the same step as the public op."""
import torch

import fastadv
from fastadv.benchmarks import bench_pgd
from fastadv.ops import udr_step


def test_the_per_backend_and_unchecked_rows_time_the_same_step(monkeypatch):
    monkeypatch.setattr(bench_pgd, "named_backends", lambda device: {"C++ CPU": "cpu"})
    device = torch.device("cpu")
    rotation = bench_pgd.Rotation((4, 3, 8, 8), device, 1)
    arguments = dict(cost="l2", **bench_pgd.UDR_ARGUMENTS)
    variants = bench_pgd.in_place_variants(
        bench_pgd.udr_step_, lambda *a: bench_pgd._unchecked_udr_step_(*a, **arguments), rotation, device, "cpu",
        arguments)
    assert list(variants) == ["fastadv udr_step_ (C++ CPU)", "fastadv unchecked.udr_step_ (the attack loop's call)"]
    (x_adv, grad, x), in_place = rotation.next()
    with fastadv.use_backend("cpu"):
        for call in variants.values():
            in_place.copy_(x_adv)
            expected = udr_step(x_adv, grad, x, **arguments)
            assert torch.equal(call(), expected)


def test_the_overhead_table_has_every_op_and_its_unchecked_form_computes_the_same():
    """`fastadv bench overhead` times every public op of the four families (a new op without a
    row fails here), and each unchecked call it times returns what the public one does."""
    from fastadv import ops
    from fastadv.benchmarks import bench_overhead

    cases = bench_overhead.cases(torch.device("cpu"))
    assert set(cases) == set(ops.__all__) - {"two_view_pair"}
    for name, (public, unchecked) in cases.items():
        if unchecked is None or name.endswith("_") or name == "pgd_init":  # in place, or random
            continue
        expected, got = public(), unchecked()
        for a, b in zip(expected if isinstance(expected, tuple) else (expected,),
                        got if isinstance(got, tuple) else (got,)):
            assert torch.equal(a, b), name


def test_the_gpu_training_benchmark_runs_its_smoke_workload_on_the_cpu(tmp_path):
    """`fastadv bench train --device cuda`'s code, on the CPU: every variant but the graphed and
    the compiled one steps, the floor is counted, the report is written."""
    from fastadv.benchmarks import bench_train_gpu

    report = bench_train_gpu.run("cpu", smoke=True, out_dir=tmp_path)
    assert "official-style, float32" in report and "fastadv default" in report
    assert (tmp_path / "train_gpu_smoke.json").exists()


def test_the_tuner_writes_a_table_that_auto_follows(tmp_path, monkeypatch):
    """`fastadv bench --tune`: a table module per op and size class (here on the CPU's two
    candidates, two ops, two classes), and `auto` on CUDA tensors runs what such a table names."""
    import importlib.util

    from fastadv import backend, tuned
    from fastadv.benchmarks import bench_tune

    bench_tune.run("cpu", quick=True, out_dir=tmp_path, only=("trades_kl", "pgd_step_"), classes=2)
    spec = importlib.util.spec_from_file_location("written_table", tmp_path / "tuned.py")
    written = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(written)
    assert set(written.TABLE) == {"trades_kl", "pgd_step_"}
    # one choice per class; the classes not timed repeat the last one timed
    assert all(len(choices) == len(tuned.SIZE_CLASSES) + 1 and set(choices) <= {"cpu", "reference"}
               and choices[2:] == (choices[1],) * (len(choices) - 2) for choices in written.TABLE.values())
    assert written.SIZE_CLASSES == tuned.SIZE_CLASSES and written.MEASURED_ON

    monkeypatch.delenv("FASTADV_BACKEND", raising=False)
    monkeypatch.setitem(backend._capabilities, "triton", True)
    monkeypatch.setitem(backend._capabilities, "cuda", True)
    monkeypatch.setattr(tuned, "TABLE", {"trades_kl": ("cuda", "triton", "triton", "triton")})
    cuda = torch.device("cuda")
    assert backend.size_class(100) == 0 and backend.size_class(1 << 14) == 1 and backend.size_class(1 << 30) == 3
    assert backend.select("trades_kl", cuda, torch.float32, size=0) == "cuda"
    assert backend.select("trades_kl", cuda, torch.float32, size=1) == "triton"
    assert backend.select("mart_loss", cuda, torch.float32, size=0) == "triton"  # no entry: the default rule
