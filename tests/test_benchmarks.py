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
