"""The logit-regularisation, LMA and LTD methods (issue 4) and logit squeezing: each loss
against a line-by-line transcription of its METHODS.md equation in plain torch ops, the LMA
moving averages, LRM's constant ratio, LTD's teacher, and the `fastadv train` command."""
import dataclasses
import io
import math
import os
import re
import signal

import pytest
import torch
from torch import nn

from fastadv import cli
from fastadv.data import dataset_info
from fastadv.methods import METHODS, build_method
from fastadv.methods import base as method_base
from fastadv.methods.alp import alp_loss
from fastadv.methods.lrm import lrm_loss
from fastadv.methods.ltd import ltd_loss
from tests.methods.test_methods import fixed_logits
from fastadv.models import build_model
from fastadv.runs import load_teacher
from fastadv.train import Interrupted, TrainConfig, train

NEW_METHODS = ("alp", "label_smoothing", "lrm", "pgd_at_lma", "trades_lma", "mart_lma", "lma_at", "ltd")


# ----------------------------------------------------------------------------- transcriptions
def log_softmax(z):
    return z - z.logsumexp(dim=1, keepdim=True)


def rows(z):
    return torch.arange(z.shape[0])


def cross_entropy(z, y):
    return -log_softmax(z)[rows(z), y]


def smoothed_target(y, classes, s):
    """Seed 001 Eq. 8: 1 − s on y, s/(C − 1) elsewhere."""
    target = torch.full((len(y), classes), s / (classes - 1), dtype=torch.float64)
    target[torch.arange(len(y)), y] = 1 - s
    return target


def soft_cross_entropy(z, target):
    return -(target * log_softmax(z)).sum(dim=1)


def kl(z_nat, z_adv):
    p = log_softmax(z_nat).exp()
    return (p * (log_softmax(z_nat) - log_softmax(z_adv))).sum(dim=1)


def boosted_cross_entropy(z, y):
    q = log_softmax(z).exp()
    other = q.clone()
    other[rows(z), y] = -math.inf
    return -torch.log(q[rows(z), y]) - torch.log(1 - other.max(dim=1).values)


def margin_loss(z, y, delta):
    """L' = Σ_{j≠y} max(0, z_j − z_y + δ)²."""
    hinge = (z - z[rows(z), y][:, None] + delta).clamp(min=0) ** 2
    hinge[rows(z), y] = 0
    return hinge.sum(dim=1)


def mhuber(u, v, alpha):
    d = u - v
    inner = alpha ** 2 * (1 - torch.cos(d / alpha))
    outer = alpha * d.abs() + (1 - math.pi / 2) * alpha ** 2
    return torch.where(d.abs() / alpha <= math.pi / 2, inner, outer).mean()


def squared_norm(z):
    return (z ** 2).sum(dim=1)


def alp_equation(z_nat, z_adv, y, a, lam):
    """a·CE(z(x),y) + (1−a)·CE(z(x'),y) + λ‖z(x) − z(x')‖²."""
    return (a * cross_entropy(z_nat, y) + (1 - a) * cross_entropy(z_adv, y) + lam * squared_norm(z_nat - z_adv)).mean()


def lrm_equation(z_nat, z_adv, y, y_other, weight, s, r, beta):
    """L_adv + c·H(sg(p(x)), z(x')) + β(‖z(x)‖² + ‖z(x')‖²), c = sg(L_adv / (r·H))."""
    classes = z_nat.shape[1]
    target = weight * smoothed_target(y, classes, s) + (1 - weight) * smoothed_target(y_other, classes, s)
    adversarial = soft_cross_entropy(z_adv, target).mean()
    pairing = soft_cross_entropy(z_adv, log_softmax(z_nat).exp().detach()).mean()
    c = (adversarial / (r * pairing)).detach()
    return adversarial + c * pairing + beta * (squared_norm(z_nat).mean() + squared_norm(z_adv).mean())


def lma_equation(name, z_nat, z_adv, y, method, ema_nat=None, ema_adv=None):
    """L' + (base) + β·mHuber(Ē'_t, Ē_t, α), Ē_t = τ·Ē_{t−1} + (1 − τ)·z(x) from Ē_0 = 0."""
    tau = method.ema_decay
    ema_nat = (1 - tau) * z_nat + (0 if ema_nat is None else tau * ema_nat)
    ema_adv = (1 - tau) * z_adv + (0 if ema_adv is None else tau * ema_adv)
    base = {
        "pgd_at_lma": lambda: cross_entropy(z_adv, y),
        "trades_lma": lambda: cross_entropy(z_nat, y) + method.kl_weight * kl(z_nat, z_adv),
        "mart_lma": lambda: boosted_cross_entropy(z_adv, y)
        + method.kl_weight * kl(z_nat, z_adv) * (1 - log_softmax(z_nat).exp()[rows(z_nat), y]),
        "lma_at": lambda: boosted_cross_entropy(z_adv, y),
    }[name]()
    return ((margin_loss(z_adv, y, method.margin) + base).mean()
            + method.beta * mhuber(ema_adv, ema_nat, method.mhuber_alpha))


def ltd_equation(z_nat, z_adv, z_teacher, T, lam):
    """CE(z(x), softmax(z_teacher(x)/T)) + λ·KL(p(x) ‖ p(x'))."""
    teacher = log_softmax(z_teacher / T).exp()
    return (soft_cross_entropy(z_nat, teacher) + lam * kl(z_nat, z_adv)).mean()


# ----------------------------------------------------------------------------- loss functions
def test_alp_matches_its_equation():
    z_nat, z_adv, y = fixed_logits()
    loss, *_ = alp_loss(z_nat, z_adv, y, 0.3, 0.7)
    assert loss.item() == pytest.approx(alp_equation(z_nat, z_adv, y, 0.3, 0.7).item(), rel=1e-12)


def test_lrm_matches_its_equation_and_holds_the_ratio_exactly():
    z_nat, z_adv, y = fixed_logits(1)
    z_nat.requires_grad_(True)
    z_adv.requires_grad_(True)
    y_other = y.roll(1)
    loss, adversarial, pairing, c = lrm_loss(z_nat, z_adv, y, y_other, 0.7, 0.1, 0.125)
    assert loss.item() == pytest.approx(lrm_equation(z_nat, z_adv, y, y_other, 0.7, 0.1, 0.125, 0.0).item(), rel=1e-12)
    # seed 001 §5.2: r is "the ratio between the adversarial training loss and the pairing loss"
    assert (adversarial / (c * pairing)).item() == pytest.approx(0.125, rel=1e-14)
    assert (c * pairing).item() == pytest.approx(8 * adversarial.item(), rel=1e-14)
    assert not c.requires_grad
    loss.backward()
    # No gradient through c: the gradient is that of L_adv + (c as a constant)·H.
    z_nat_ref, z_adv_ref = z_nat.detach().requires_grad_(True), z_adv.detach().requires_grad_(True)
    constant = c.item()
    _, adversarial_ref, pairing_ref, _ = lrm_loss(z_nat_ref, z_adv_ref, y, y_other, 0.7, 0.1, 0.125)
    (adversarial_ref + constant * pairing_ref).backward()
    assert torch.allclose(z_adv.grad, z_adv_ref.grad, rtol=1e-12, atol=1e-14)
    # p(x) is a constant of H (TensorFlow 1's cross-entropy, see LRM): the natural logits get no
    # gradient from these terms (the logit squeezing added by the method is their only one).
    assert z_nat.grad is None and z_nat_ref.grad is None
    assert z_adv.grad.abs().max() > 1e-3


def test_ltd_matches_its_equation():
    z_nat, z_adv, y = fixed_logits(2)
    z_teacher = torch.randn_like(z_nat) * 4
    soft_labels = torch.softmax(z_teacher / 5.0, dim=1)
    loss, _, _ = ltd_loss(z_nat, z_adv, soft_labels, 6.0)
    assert loss.item() == pytest.approx(ltd_equation(z_nat, z_adv, z_teacher, 5.0, 6.0).item(), rel=1e-12)


@pytest.mark.parametrize("name", ["pgd_at_lma", "trades_lma", "mart_lma", "lma_at"])
@pytest.mark.parametrize("mhuber_alpha", [5.345, 0.5])  # 0.5: both branches of mHuber
def test_lma_matches_its_equation(name, mhuber_alpha):
    z_nat, z_adv, y = fixed_logits(3)
    method = build_method(name, mhuber_alpha=mhuber_alpha)
    loss, _ = method.loss_terms(z_nat, z_adv, y)
    assert loss.item() == pytest.approx(lma_equation(name, z_nat, z_adv, y, method).item(), rel=1e-12)


# ----------------------------------------------------------------------------- LMA state
def test_lma_moving_average_carries_over_batches_and_restarts():
    method = build_method("lma_at", mhuber_alpha=0.5)
    tau = method.ema_decay
    z1, z1_adv, y1 = (t.requires_grad_(t.is_floating_point()) for t in fixed_logits(4))
    method.loss_terms(z1, z1_adv, y1)
    first = method.state_dict()
    assert torch.allclose(first["ema_natural"], (1 - tau) * z1.detach())
    assert torch.allclose(first["ema_adv"], (1 - tau) * z1_adv.detach())
    assert not first["ema_natural"].requires_grad and not first["ema_adv"].requires_grad

    z2, z2_adv, y2 = (t.requires_grad_(t.is_floating_point()) for t in fixed_logits(5))
    loss, parts = method.loss_terms(z2, z2_adv, y2)
    second = method.state_dict()
    assert torch.allclose(second["ema_natural"], tau * first["ema_natural"] + (1 - tau) * z2.detach(), rtol=1e-14)
    assert torch.allclose(second["ema_adv"], tau * first["ema_adv"] + (1 - tau) * z2_adv.detach(), rtol=1e-14)
    expected = lma_equation("lma_at", z2, z2_adv, y2, method, first["ema_natural"], first["ema_adv"])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    loss.backward()
    assert z1.grad is None and z1_adv.grad is None, "the gradient flows through the current logits only"
    assert z2.grad is not None and z2_adv.grad is not None

    z3, z3_adv, y3 = fixed_logits(6, batch=4)
    loss, _ = method.loss_terms(z3, z3_adv, y3)
    assert torch.allclose(method.state_dict()["ema_natural"], (1 - tau) * z3)
    assert loss.item() == pytest.approx(lma_equation("lma_at", z3, z3_adv, y3, method).item(), rel=1e-12)


def test_lma_state_dict_round_trips():
    method = build_method("trades_lma")
    assert method.state_dict() == {}
    method.loss_terms(*fixed_logits(7))
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    restored = build_method("trades_lma")
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    z_nat, z_adv, y = fixed_logits(8)
    assert method.loss_terms(z_nat, z_adv, y)[0].item() == restored.loss_terms(z_nat, z_adv, y)[0].item()
    assert all(torch.equal(method.state_dict()[k], restored.state_dict()[k]) for k in ("ema_natural", "ema_adv"))
    restored.load_state_dict({})
    assert restored.state_dict() == {}
    with pytest.raises(ValueError, match="expected the method state ema_natural and ema_adv"):
        restored.load_state_dict({"ema": torch.zeros(1)})


# ----------------------------------------------------------------------------- the methods on a model
class Recorder(nn.Module):
    """A float64 linear model that records the inputs of its forward passes and its mode."""

    def __init__(self, classes=4, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.linear = nn.Linear(16, classes).double()
        self.calls = []

    def forward(self, x):
        self.calls.append((x.detach().clone(), self.training, torch.is_grad_enabled()))
        return self.linear(x.flatten(1))

    def logits(self, x):
        with torch.no_grad():
            return self.linear(x.flatten(1))


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(8, 1, 4, 4, generator=g, dtype=torch.float64), torch.randint(0, 4, (8,), generator=g)


ATTACK_SETTINGS = dict(eps=0.1, alpha=0.03, steps=2)


def build(name, **options):
    if name == "ltd":
        options["teacher"] = Recorder(seed=1)
    if name == "lrm":
        options.setdefault("mixup_alpha", 0.0)
    if name != "label_smoothing":
        options = {**ATTACK_SETTINGS, **options}
    return build_method(name, **options)


def expected_loss(name, method, z_nat, z_adv, y, x):
    if name == "alp":
        return alp_equation(z_nat, z_adv, y, method.natural_weight, method.beta)
    if name == "label_smoothing":
        return soft_cross_entropy(z_nat, smoothed_target(y, z_nat.shape[1], method.smoothing)).mean()
    if name == "lrm":
        return lrm_equation(z_nat, z_adv, y, y, 1.0, method.smoothing, method.pairing_ratio, method.logit_squeeze)
    if name == "ltd":
        return ltd_equation(z_nat, z_adv, method._teacher.logits(x), method.temperature, method.beta)
    return lma_equation(name, z_nat, z_adv, y, method)


@pytest.mark.parametrize("name", NEW_METHODS)
def test_each_method_trains_on_its_equation(name):
    """The loss of ``method(model, x, y)`` from the logits of the batches the model saw in
    training mode: natural first, then adversarial (LRM without mixup, so x is the batch)."""
    model = Recorder().train()
    x, y = batch()
    method = build(name)
    loss, metrics = method(model, x, y)
    assert model.training
    trained = [inputs for inputs, training, _ in model.calls if training]
    assert torch.equal(trained[0], x), "the natural batch goes through the model first"
    assert len(trained) == (1 if name == "label_smoothing" else 2)
    z_nat = model.logits(trained[0])
    z_adv = model.logits(trained[-1])
    if name != "label_smoothing":
        assert 0 < (trained[1] - x).abs().max() <= 0.1 + 1e-12
        assert len(model.calls) - len(trained) == ATTACK_SETTINGS["steps"] + (name == "ltd")  # ltd: KL attack
    assert loss.item() == pytest.approx(expected_loss(name, method, z_nat, z_adv, y, x).item(), rel=1e-10)
    assert metrics["loss"].item() == loss.item() and all(torch.isfinite(v) for v in metrics.values())
    loss.backward()
    assert model.linear.weight.grad is not None


def test_ltd_teacher_sees_the_natural_batch_in_eval_mode_without_gradient():
    model = Recorder().train()
    method = build("ltd")
    x, y = batch(1)
    method(model, x, y)
    teacher = method._teacher
    calls = [(torch.equal(inputs, x), training, grad) for inputs, training, grad in teacher.calls]
    assert calls == [(True, False, False)], "one forward of x, in eval mode, without gradient"
    assert teacher.linear.weight.grad is None and not teacher.linear.weight.requires_grad


@pytest.mark.parametrize("name, loss, init", [
    ("alp", "ce", "uniform"), ("lrm", "ce", "uniform"), ("ltd", "kl", "normal"),
    ("pgd_at_lma", "margin_ce", "normal"), ("trades_lma", "margin_ce", "normal"),
    ("mart_lma", "margin_ce", "normal"), ("lma_at", "margin_ce", "normal"),
])
def test_each_method_uses_its_attack(name, loss, init, monkeypatch):
    created = []

    class FakePGD:
        def __init__(self, model, **settings):
            created.append(settings)

        def __call__(self, x, y):
            return (x + 0.01).clamp(0, 1)

    monkeypatch.setattr(method_base, "PGD", FakePGD)
    options = {"margin": 0.5} if name.endswith("lma") or name == "lma_at" else {}
    build(name, **options)(Recorder().train(), *batch())
    (settings,) = created
    assert (settings["loss"], settings["init"], settings["eps"], settings["steps"]) == (loss, init, 0.1, 2)
    assert settings.get("margin") == options.get("margin")


def test_lrm_mixup_mixes_inputs_and_labels():
    method = build("lrm", mixup_alpha=1.0)
    x = torch.arange(8, dtype=torch.float64).view(8, 1, 1, 1).expand(8, 1, 4, 4) / 8
    y = torch.arange(8) % 4
    torch.manual_seed(0)
    mixed, y_other, weight = method.mixup(x, y)
    assert weight.shape == () and 0.5 <= weight <= 1, "λ stays a tensor: reading it would synchronise"
    partner = ((mixed - weight * x) / (1 - weight))[:, 0, 0, 0] * 8
    permutation = partner.round().long()
    assert torch.allclose(partner, permutation.double(), atol=1e-9)
    assert sorted(permutation.tolist()) == list(range(8)) and torch.equal(y_other, y[permutation])
    assert build("lrm").mixup(x, y) == (x, y, 1.0)


@pytest.mark.parametrize("name, trained", [("standard", "x"), ("pgd_at", "x'"), ("trades", "x, x'"),
                                           ("lma_at", "x, x'")])
def test_logit_squeezing_adds_beta_times_the_squared_norms_of_the_trained_logits(name, trained):
    x, y = batch(2)
    options = {} if name == "standard" else ATTACK_SETTINGS
    losses = []
    for squeeze in (0.0, 0.3):
        model = Recorder().train()
        torch.manual_seed(0)
        loss, metrics = build_method(name, logit_squeeze=squeeze, **options)(model, x, y)
        losses.append(loss.item())
    logits = [model.logits(inputs) for inputs, training, _ in model.calls if training]
    assert len(logits) == len(trained.split(", "))
    squeeze = sum(squared_norm(z).mean() for z in logits)
    assert metrics["logit_squeeze"].item() == pytest.approx(squeeze.item(), rel=1e-12)
    assert losses[1] - losses[0] == pytest.approx(0.3 * squeeze.item(), rel=1e-9)


def test_paper_defaults():
    assert (build_method("alp").natural_weight, build_method("alp").beta) == (0.5, 0.5)
    assert build_method("label_smoothing").smoothing == 0.1
    lrm = build_method("lrm")
    assert (lrm.smoothing, lrm.logit_squeeze, lrm.pairing_ratio) == (0.1, 1e-3, 0.125)
    for name in ("pgd_at_lma", "trades_lma", "mart_lma", "lma_at"):
        method = build_method(name)
        assert (method.ema_decay, method.margin, method.beta, method.mhuber_alpha) == (0.2, 0.9, 86.0, 5.345)
    assert build_method("trades_lma").kl_weight == 6.0 and build_method("mart_lma").kl_weight == 5.0
    ltd = build_method("ltd", teacher=nn.Linear(2, 2))
    assert (ltd.temperature, ltd.beta) == (5.0, 6.0)
    assert build_method("trades").logit_squeeze == 0.0


def test_bad_method_options():
    assert set(METHODS) >= set(NEW_METHODS)
    with pytest.raises(ValueError, match=r"^trades: unknown option temperature \(it takes: eps, alpha, steps"):
        build_method("trades", temperature=2.0)
    with pytest.raises(ValueError, match=r"^label_smoothing: smoothing must be in \[0, 1\], got 1.5"):
        build_method("label_smoothing", smoothing=1.5)
    with pytest.raises(ValueError, match=r"^lma_at: ema_decay must be in \[0, 1\), got 1.0"):
        build_method("lma_at", ema_decay=1.0)
    with pytest.raises(ValueError, match="^pgd_at: logit_squeeze must be >= 0"):
        build_method("pgd_at", logit_squeeze=-1.0)
    with pytest.raises(ValueError, match=r"^lrm: pairing_ratio must be > 0"):
        build_method("lrm", pairing_ratio=0.0)
    with pytest.raises(TypeError, match="^ltd: teacher must be a torch.nn.Module"):
        build_method("ltd", teacher="runs/digits-standard")
    with pytest.raises(ValueError, match=r"^ltd: missing option teacher \(a model trained with plain cross-entropy"):
        build_method("ltd")


def test_build_method_lets_other_errors_through(monkeypatch):
    """Only options are build_method's business: an error inside a method's __init__ keeps its
    type and message."""
    def broken(self, **options):
        raise TypeError("a bug inside __init__")

    monkeypatch.setattr(METHODS["trades"], "__init__", broken)
    with pytest.raises(TypeError, match="^a bug inside __init__$"):
        build_method("trades")


# ----------------------------------------------------------------------------- the trainer and the CLI
QUICK = ["--dataset", "digits", "--epochs", "1", "--steps", "1", "--eval-steps", "1", "--eval-size", "16",
         "--batch-size", "256", "--no-progress"]
QUICK_CONFIG = dict(dataset="digits", epochs=1, steps=1, eval_steps=1, eval_size=16, batch_size=256, progress=False)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    return train(TrainConfig(method="standard", run_dir=str(tmp_path_factory.mktemp("teacher") / "standard"),
                             **QUICK_CONFIG))


@pytest.mark.parametrize("name", NEW_METHODS)
def test_cli_trains_each_method(name, tmp_path, teacher_run, capsys):
    run_dir = tmp_path / name
    extra = ["--teacher", str(teacher_run)] if name == "ltd" else []
    assert cli.main(["train", "--method", name, "--run-dir", str(run_dir), *QUICK, *extra]) == 0
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    student = build_model("digits_cnn", dataset_info("digits")).state_dict()
    assert set(checkpoint["model"]) == set(student), "only the student's weights are saved"
    assert set(checkpoint["method"]) == ({"ema_natural", "ema_adv"} if "lma" in name else set())
    assert (run_dir / "best.pt").exists()
    if name == "ltd":  # the teacher is found again from the settings of the run
        assert cli.main(["train", "--method", name, "--run-dir", str(run_dir), "--resume", *QUICK, *extra]) == 0


@pytest.mark.parametrize("arguments, message", [
    (["--method", "trades", "--temperature", "2"], r"trades: unknown option temperature \(it takes: "),
    (["--method", "pgd_at", "--beta", "1"], "pgd_at: unknown option beta"),
    (["--method", "label_smoothing", "--beta", "1"], r"label_smoothing: unknown option beta \(it takes: smoothing, "
                                                     r"logit_squeeze\)"),
    (["--method", "label_smoothing", "--attack-dtype", "bfloat16"], "label_smoothing: unknown option attack_dtype"),
    (["--method", "alp", "--teacher", "runs/x"], "alp: unknown option teacher"),
    (["--method", "lrm", "--kl-weight", "2"], "lrm: unknown option kl_weight"),
    (["--method", "label_smoothing", "--smoothing", "2"], r"label_smoothing: smoothing must be in \[0, 1\], got 2.0"),
    (["--method", "ltd", "--teacher", "nowhere"], "teacher: no run at nowhere.*fastadv train --method standard "
                                                   "--dataset digits --run-dir nowhere"),
])
def test_cli_refuses_bad_options(arguments, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", *arguments, *QUICK]) == 2
    err = capsys.readouterr().err
    assert re.search("^fastadv train: " + message, err) and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists()


def test_ltd_without_a_teacher_run_says_how_to_make_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"teacher: no run at runs/digits-standard.*"
                                                r"`fastadv train --method standard --dataset digits`"):
        train(TrainConfig(method="ltd", **QUICK_CONFIG))
    assert not (tmp_path / "runs").exists()


def save_teacher(path, **changes):
    info = dataclasses.replace(dataset_info("digits"), **changes)
    model = build_model("digits_cnn", info)
    path.mkdir()
    torch.save({"model": model.state_dict(), "config": {"model": "digits_cnn"}, "info": dataclasses.asdict(info)},
               path / "best.pt")
    return path


@pytest.mark.parametrize("changes, message", [
    (dict(num_classes=5), "teacher: .*best.pt classifies 5 classes, the dataset digits has 10"),
    (dict(input_shape=(1, 16, 16)), r"teacher: .*best.pt takes inputs of shape \(1, 16, 16\), the dataset digits "
                                    r"has \(1, 8, 8\)"),
])
def test_ltd_refuses_a_teacher_of_another_dataset(changes, message, tmp_path):
    teacher = save_teacher(tmp_path / "teacher", **changes)
    with pytest.raises(ValueError, match=message):
        load_teacher(teacher, dataset_info("digits"))
    with pytest.raises(ValueError, match=message):
        train(TrainConfig(method="ltd", teacher=str(teacher), run_dir=str(tmp_path / "run"), **QUICK_CONFIG))
    assert not (tmp_path / "run").exists()
    assert not load_teacher(save_teacher(tmp_path / "good"), dataset_info("digits")).training


def test_lma_resumes_exactly_after_ctrl_c(tmp_path):
    """The moving averages are in the checkpoint: a run interrupted mid-epoch and resumed ends
    with the weights and averages of the uninterrupted run."""
    config = dict(QUICK_CONFIG, method="lma_at")
    straight = train(TrainConfig(run_dir=str(tmp_path / "straight"), **config))

    def press_ctrl_c(epoch, batch):
        if batch == 3:
            os.kill(os.getpid(), signal.SIGINT)

    interrupted = tmp_path / "interrupted"
    with pytest.raises(Interrupted):
        train(TrainConfig(run_dir=str(interrupted), **config), on_batch_end=press_ctrl_c)
    train(TrainConfig(run_dir=str(interrupted), resume=True, **config))
    final_a = torch.load(straight / "checkpoint.pt", weights_only=True)
    final_b = torch.load(interrupted / "checkpoint.pt", weights_only=True)
    for part in ("model", "method"):
        assert final_a[part].keys() == final_b[part].keys()
        assert all(torch.equal(final_a[part][k], final_b[part][k]) for k in final_a[part])
    assert final_a["history"][0]["train_loss"] == final_b["history"][0]["train_loss"]
