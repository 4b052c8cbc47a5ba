"""Dispatch: FASTADV_BACKEND, use_backend, and the explained refusals of explicit backends."""
import pytest
import torch

import fastadv
from fastadv import backend
from fastadv.ops import pgd_step


def _batch(dtype=torch.float32):
    x = torch.rand(2, 3, 4, 4, dtype=dtype)
    return x.clone(), torch.randn_like(x), x


def test_use_backend_nests_and_restores(monkeypatch):
    monkeypatch.delenv("FASTADV_BACKEND", raising=False)
    assert backend.requested() == "auto"
    with fastadv.use_backend("reference"):
        assert backend.requested() == "reference"
        with fastadv.use_backend("cpu"):
            assert backend.requested() == "cpu"
        assert backend.requested() == "reference"
    assert backend.requested() == "auto"


def test_use_backend_restores_after_an_error(monkeypatch):
    monkeypatch.delenv("FASTADV_BACKEND", raising=False)
    with pytest.raises(KeyError), fastadv.use_backend("reference"):
        raise KeyError
    assert backend.requested() == "auto"


def test_environment_variable_sets_the_default(monkeypatch):
    monkeypatch.setenv("FASTADV_BACKEND", "Reference")
    assert backend.requested() == "reference"
    assert backend.select("pgd_step", torch.device("cpu"), torch.float32) == "reference"
    monkeypatch.setenv("FASTADV_BACKEND", "gpu")
    with pytest.raises(ValueError, match="FASTADV_BACKEND must be one of"):
        backend.requested()


def test_unknown_backend_name():
    with pytest.raises(ValueError, match="backend name must be one of"):
        with fastadv.use_backend("numpy"):
            pass


def test_auto_on_cpu_picks_the_cpp_kernels(monkeypatch):
    monkeypatch.delenv("FASTADV_BACKEND", raising=False)
    assert backend.select("op", torch.device("cpu"), torch.float32) == "cpu"
    assert backend.select("op", torch.device("cpu"), torch.float64) == "cpu"
    assert backend.select("op", torch.device("cpu"), torch.bfloat16) == "reference"


def test_auto_on_cuda_prefers_triton_then_cuda(monkeypatch):
    monkeypatch.delenv("FASTADV_BACKEND", raising=False)
    cuda = torch.device("cuda")
    monkeypatch.setitem(backend._capabilities, "triton", True)
    assert backend.select("op", cuda, torch.float16) == "triton"
    monkeypatch.setitem(backend._capabilities, "triton", False)
    monkeypatch.setitem(backend._capabilities, "cuda", True)
    assert backend.select("op", cuda, torch.float16) == "cuda"
    monkeypatch.setitem(backend._capabilities, "cuda", False)
    assert backend.select("op", cuda, torch.float16) == "reference"


def test_auto_on_cuda_leaves_shapes_triton_cannot_take_to_cuda(monkeypatch):
    monkeypatch.delenv("FASTADV_BACKEND", raising=False)
    cuda = torch.device("cuda")
    monkeypatch.setitem(backend._capabilities, "triton", True)
    monkeypatch.setitem(backend._capabilities, "cuda", True)
    assert backend.select("op", cuda, torch.float32, triton_fits=True) == "triton"
    assert backend.select("op", cuda, torch.float32, triton_fits=False) == "cuda"
    monkeypatch.setitem(backend._capabilities, "cuda", False)
    assert backend.select("op", cuda, torch.float32, triton_fits=False) == "reference"
    with fastadv.use_backend("triton"):  # named explicitly, Triton runs (or raises), whatever the shape
        assert backend.select("op", cuda, torch.float32, triton_fits=False) == "triton"


def test_explicit_backends_refuse_with_reasons(monkeypatch):
    x_adv, grad, x = _batch()
    with fastadv.use_backend("cuda"):
        with pytest.raises(fastadv.BackendUnavailable, match="CUDA"):
            pgd_step(x_adv, grad, x, 0.1, 0.01)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with fastadv.use_backend("triton"):
        with pytest.raises(fastadv.BackendUnavailable, match="TRITON_INTERPRET=1"):
            pgd_step(x_adv, grad, x, 0.1, 0.01)
    monkeypatch.setitem(backend._capabilities, "triton", False)
    with fastadv.use_backend("triton"):
        with pytest.raises(fastadv.BackendUnavailable, match="needs the triton package"):
            pgd_step(x_adv, grad, x, 0.1, 0.01)


def test_reference_backend_runs_the_oracle(monkeypatch):
    x_adv, grad, x = _batch(torch.bfloat16)
    calls = []
    original = fastadv.reference.pgd.pgd_step
    monkeypatch.setattr(fastadv.reference.pgd, "pgd_step", lambda *a, **k: calls.append(1) or original(*a, **k))
    with fastadv.use_backend("reference"):
        out = pgd_step(x_adv, grad, x, 0.1, 0.01)
    assert calls and out.dtype == torch.bfloat16


def test_the_one_dispatch_path_follows_every_change_of_backend(monkeypatch):
    """Family.kernel remembers choices, never a stale one: the environment, use_backend and the
    dtype each change what runs, and an explicit backend that cannot run refuses on every call."""
    from fastadv.ops import _registry, logits

    family = logits._FAMILY
    monkeypatch.delenv("FASTADV_BACKEND", raising=False)
    cpu_op = family.kernel("trades_kl", "cpu", torch.float32)
    assert _registry.operator_of(cpu_op) == "fastadv::trades_kl"  # the C++ op, called by fast_op
    assert family.kernel("trades_kl", "cpu", torch.float32) is cpu_op  # remembered
    monkeypatch.setenv("FASTADV_BACKEND", "reference")
    assert family.kernel("trades_kl", "cpu", torch.float32) is None
    monkeypatch.setenv("FASTADV_BACKEND", "auto")
    assert family.kernel("trades_kl", "cpu", torch.float32) is cpu_op
    with fastadv.use_backend("reference"):
        assert family.kernel("trades_kl", "cpu", torch.float32) is None
    assert family.kernel("trades_kl", "cpu", torch.float16) is None  # no C++ CPU kernel for half
    for _ in range(2):
        with fastadv.use_backend("cpu"), pytest.raises(fastadv.BackendUnavailable, match="float16"):
            family.kernel("trades_kl", "cpu", torch.float16)
    monkeypatch.setenv("FASTADV_BACKEND", "gpu")
    with pytest.raises(ValueError, match="FASTADV_BACKEND must be one of"):
        family.kernel("trades_kl", "cpu", torch.float32)


def test_every_family_dispatches_through_the_registry():
    """The four families share one mechanism: each has its Family, whose unchecked namespace is
    the family's `unchecked`, holding a form of every public op of the family that loops call."""
    from fastadv.ops import _registry, contrastive, logits, pgd, simplex

    for module in (pgd, logits, simplex, contrastive):
        assert isinstance(module._FAMILY, _registry.Family)
        assert module.unchecked is module._FAMILY.unchecked
        assert module._TRITON is module._FAMILY.triton
    assert set(vars(logits.unchecked)) == set(logits.__all__)
    assert set(vars(simplex.unchecked)) == set(simplex.__all__)
    assert set(vars(contrastive.unchecked)) == {"supcon_loss", "pairwise_compactness"}
    assert set(vars(pgd.unchecked)) == {"pgd_step_", "pgd_init", "udr_step_", "soft_cost"}
