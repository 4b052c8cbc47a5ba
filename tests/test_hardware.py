"""fastadv.hardware: the measured bf16 probe and its one warning per process."""
import warnings

import pytest

from fastadv import hardware


def test_probe_measures_once_per_process():
    ratio = hardware.cpu_bf16_ratio()
    assert ratio > 0
    assert hardware.cpu_bf16_ratio() is ratio, "cached: the probe runs once"
    assert hardware.cpu_bf16_native() == (ratio <= hardware.NATIVE_LIMIT)


@pytest.fixture
def emulated_bf16(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_bf16_ratio", lambda: 19.9)
    monkeypatch.setattr(hardware, "_warned", False)


def test_slow_bf16_warns_once_naming_the_caller_and_the_slowdown(emulated_bf16):
    assert not hardware.cpu_bf16_native()
    with pytest.warns(hardware.SlowBF16Warning, match=r"fastadv train --amp: .*measured 19\.9x slower"):
        hardware.warn_slow_cpu_bf16("fastadv train --amp")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hardware.warn_slow_cpu_bf16("PGD")


def test_native_bf16_does_not_warn(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_bf16_ratio", lambda: 0.9)
    monkeypatch.setattr(hardware, "_warned", False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hardware.warn_slow_cpu_bf16("PGD")
    assert hardware._warned is False


def test_a_bf16_attack_on_an_emulating_cpu_warns(emulated_bf16):
    import torch

    from fastadv.attacks import PGD

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    x, y = torch.rand(2, 4), torch.tensor([0, 2])
    with pytest.warns(hardware.SlowBF16Warning, match=r"PGD\(amp_dtype=torch.bfloat16\) on the CPU: "):
        PGD(model, eps=0.1, steps=1, amp_dtype=torch.bfloat16)(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PGD(model, eps=0.1, steps=1)(x, y)  # float32: nothing to say
