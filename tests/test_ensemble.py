import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchattacks

from fastadv.attacks import FGSM, PGD
from fastadv.data import dataset_info
from fastadv.evaluate import ATTACKS, build_attacks, robust_accuracy
from fastadv.models import DigitsCNN, Ensemble, build_model

DIGITS = dataset_info("digits")
PATHS = [pytest.param(False, id="looped"), pytest.param(True, id="batched")]


def members(name="digits_cnn", count=3, seed=0):
    torch.manual_seed(seed)
    return [build_model(name, DIGITS).double() for _ in range(count)]


def digits_batch(batch=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, *DIGITS.input_shape, generator=g, dtype=torch.float64),
            torch.randint(0, DIGITS.num_classes, (batch,), generator=g))


# ----------------------------------------------------------------------------- the combines
@pytest.mark.parametrize("batched", PATHS)
def test_prob_is_the_log_of_the_mean_probability(batched):
    nets = members()
    x, _ = digits_batch()
    mean_probability = sum(torch.softmax(net(x), dim=1) for net in nets) / len(nets)
    torch.testing.assert_close(Ensemble(nets, "prob", batched=batched)(x), torch.log(mean_probability),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("batched", PATHS)
def test_logit_is_the_mean_of_the_logits(batched):
    nets = members()
    x, _ = digits_batch()
    torch.testing.assert_close(Ensemble(nets, "logit", batched=batched)(x), sum(net(x) for net in nets) / len(nets),
                               rtol=1e-12, atol=1e-12)


def test_prob_stays_finite_where_the_naive_formula_underflows():
    # Logits 2000 apart: every probability but the top one underflows to 0 in float64.
    first, second = nn.Linear(2, 3).double(), nn.Linear(2, 3).double()
    with torch.no_grad():
        for net, bias in ((first, [0.0, -2000.0, -4000.0]), (second, [0.0, -4000.0, -2000.0])):
            net.weight.zero_()
            net.bias.copy_(torch.tensor(bias))
    z = Ensemble([first, second], "prob")(torch.zeros(1, 2, dtype=torch.float64))
    expected = torch.tensor([[0.0, -2000.0 - math.log(2), -2000.0 - math.log(2)]], dtype=torch.float64)
    torch.testing.assert_close(z, expected, rtol=1e-15, atol=1e-12)


def test_one_member_is_that_member():
    (net,) = members(count=1)
    x, _ = digits_batch()
    torch.testing.assert_close(Ensemble([net], "logit")(x), net(x), rtol=0, atol=0)
    torch.testing.assert_close(Ensemble([net], "prob")(x), torch.log_softmax(net(x), 1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("batched", PATHS)
def test_member_logits(batched):
    nets = members()
    x, _ = digits_batch(batch=5)
    z = Ensemble(nets, batched=batched).member_logits(x)
    assert z.shape == (3, 5, DIGITS.num_classes)
    for m, net in enumerate(nets):
        torch.testing.assert_close(z[m], net(x), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- batched = looped
def looped_and_batched(name, count=3):
    nets = members(name, count)
    return Ensemble(nets, batched=False), Ensemble(copy.deepcopy(nets), batched=True)


@pytest.mark.parametrize("combine", ["prob", "logit"])
def test_batched_equals_looped_values_and_gradients(combine):
    looped, batched = looped_and_batched("digits_cnn")
    looped.combine = batched.combine = combine
    x, y = digits_batch()
    results = []
    for ensemble in (looped, batched):
        optimiser = torch.optim.SGD(ensemble.parameters(), lr=0.1)
        inputs = x.clone().requires_grad_()
        z = ensemble(inputs)
        F.cross_entropy(z, y).backward()
        grads = [p.grad.clone() for p in ensemble.parameters()]
        optimiser.step()
        results.append((z.detach(), inputs.grad, grads, [p.detach().clone() for p in ensemble.parameters()]))
    (z_l, gx_l, gp_l, p_l), (z_b, gx_b, gp_b, p_b) = results
    torch.testing.assert_close(z_b, z_l, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gx_b, gx_l, rtol=1e-12, atol=1e-15)
    assert len(gp_b) == len(gp_l) == 3 * len(list(DigitsCNN().parameters()))
    assert all(g.abs().sum() > 0 for g in gp_b), "a member parameter got no gradient"
    for g_b, g_l in zip(gp_b, gp_l):
        torch.testing.assert_close(g_b, g_l, rtol=1e-12, atol=1e-15)
    # The optimiser over ensemble.parameters() stepped every member's own parameters.
    for q_b, q_l in zip(p_b, p_l):
        torch.testing.assert_close(q_b, q_l, rtol=1e-12, atol=1e-15)


def test_batched_updates_batchnorm_statistics_like_the_loop():
    # digits_cnn has no BatchNorm; PreActResNet-18 on the digits has 17 of them per member (two per block, one at the end).
    looped, batched = looped_and_batched("preact_resnet18")
    x, _ = digits_batch(batch=8)
    initial = copy.deepcopy(looped.state_dict())
    for ensemble in (looped, batched):
        ensemble.train()
        ensemble(x)
        ensemble(x * 0.5)
    statistics = [k for k in initial if "running_" in k or "num_batches_tracked" in k]
    assert len(statistics) == 3 * 17 * 3
    for key in statistics:
        assert not torch.equal(looped.state_dict()[key], initial[key]), key
        torch.testing.assert_close(batched.state_dict()[key], looped.state_dict()[key], rtol=1e-12, atol=1e-14)
    # In eval mode the statistics are read and left alone, in both paths.
    for ensemble in (looped, batched):
        ensemble.eval()
        before = copy.deepcopy(ensemble.state_dict())
        ensemble(x)
        assert all(torch.equal(before[k], ensemble.state_dict()[k]) for k in before)
    torch.testing.assert_close(batched(x), looped(x), rtol=1e-10, atol=1e-12)


def test_mixed_architectures_batch_each_architecture_and_loop_the_rest():
    torch.manual_seed(0)
    nets = [build_model("digits_cnn", DIGITS).double(), build_model("preact_resnet18", DIGITS).double(),
            build_model("digits_cnn", DIGITS).double()]
    calls = [0, 0, 0]
    for index, net in enumerate(nets):
        net.register_forward_pre_hook(lambda module, args, index=index: calls.__setitem__(index, calls[index] + 1))
    x, _ = digits_batch(batch=4)
    z = Ensemble(nets, batched=True).member_logits(x)
    # Members 0 and 2 ran as one vmapped call through member 0's module; member 1 ran alone.
    assert calls == [1, 1, 0]
    for m, net in enumerate(nets):
        torch.testing.assert_close(z[m], net(x), rtol=1e-12, atol=1e-12)


def test_a_member_listed_twice_updates_its_statistics_like_the_loop():
    net, other = members("preact_resnet18", count=2)
    x, _ = digits_batch(batch=8)
    looped = Ensemble([net, other, net], batched=False).train()
    batched = Ensemble(copy.deepcopy([net, other, net]), batched=True).train()
    assert batched.members[0] is batched.members[2]
    torch.testing.assert_close(batched(x), looped(x), rtol=1e-12, atol=1e-12)
    assert int(batched.members[0].net.bn.num_batches_tracked) == 2
    for key, value in looped.state_dict().items():
        torch.testing.assert_close(batched.state_dict()[key], value, rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------- bad input
def test_bad_arguments_are_refused_by_name():
    (net,) = members(count=1)
    with pytest.raises(ValueError, match="members must hold at least one nn.Module"):
        Ensemble([])
    with pytest.raises(TypeError, match=r"members\[1\] must be an nn.Module, got str"):
        Ensemble([net, "resnet"])
    with pytest.raises(TypeError, match="members must be an iterable of nn.Module, got NormalizedModel"):
        Ensemble(net)
    with pytest.raises(ValueError, match="combine must be one of 'prob', 'logit', got 'mean'"):
        Ensemble([net], combine="mean")
    with pytest.raises(TypeError, match="batched must be a bool, got str"):
        Ensemble([net], batched="yes")


@pytest.mark.parametrize("batched", PATHS)
def test_members_with_different_class_counts_are_refused_at_the_forward(batched):
    torch.manual_seed(0)
    nets = [DigitsCNN(10), DigitsCNN(10), DigitsCNN(5)]
    ensemble = Ensemble(nets, batched=batched)
    with pytest.raises(ValueError, match=r"members\[0\] \[4, 10\], members\[1\] \[4, 10\], members\[2\] \[4, 5\]"):
        ensemble(torch.rand(4, 1, 8, 8))


@pytest.mark.parametrize("batched", PATHS)
def test_members_built_for_other_inputs_are_named(batched):
    torch.manual_seed(0)
    nets = [DigitsCNN(10), DigitsCNN(10, input_shape=(3, 8, 8))]
    with pytest.raises(ValueError, match=r"^Ensemble: members\[1\] cannot take inputs of shape \[4, 1, 8, 8\]"):
        Ensemble(nets, batched=batched)(torch.rand(4, 1, 8, 8))


# ----------------------------------------------------------------------------- as one model
@pytest.mark.parametrize("combine", ["prob", "logit"])
def test_attack_steps_on_the_combined_output(combine):
    nets = members()
    x, y = digits_batch()
    alpha = 0.05
    x_adv = PGD(Ensemble(nets, combine), eps=0.1, alpha=alpha, steps=1, init=None)(x, y)
    inputs = x.clone().requires_grad_()
    logits = [net(inputs) for net in nets]
    combined = (torch.log(sum(torch.softmax(z, 1) for z in logits) / 3) if combine == "prob" else sum(logits) / 3)
    (grad,) = torch.autograd.grad(F.cross_entropy(combined, y, reduction="sum"), inputs)
    stepped = x + alpha * grad.sign()
    assert bool((grad != 0).any())
    assert torch.equal(x_adv, stepped.clamp(0, 1))


def test_torchattacks_takes_an_ensemble_like_fastadv():
    x, y = digits_batch()
    ensemble = Ensemble(members())
    assert torch.equal(FGSM(ensemble, eps=0.1)(x, y), torchattacks.FGSM(ensemble, eps=0.1)(x, y))


# ----------------------------------------------------------------------------- state
def test_state_dict_round_trip(tmp_path):
    x, _ = digits_batch()
    source = Ensemble(members(seed=0))
    assert any(key.startswith("members.2.net.") for key in source.state_dict())
    torch.save(source.state_dict(), tmp_path / "ensemble.pt")
    target = Ensemble(members(seed=1))
    assert not torch.allclose(target(x), source(x))
    target.load_state_dict(torch.load(tmp_path / "ensemble.pt", weights_only=True))
    torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)


def test_mode_and_dtype_reach_every_member():
    ensemble = Ensemble(members()).eval()
    assert not any(module.training for module in ensemble.modules())
    ensemble.train().float()
    assert all(module.training for module in ensemble.modules())
    assert all(p.dtype == torch.float32 for p in ensemble.parameters())


def test_the_evaluation_suite_takes_an_ensemble():
    torch.manual_seed(0)
    ensemble = Ensemble([build_model("digits_cnn", DIGITS) for _ in range(3)])
    x = digits_batch(batch=6)[0].float()
    # Labelled with the ensemble's own predictions: every sample is clean-correct, so every
    # attack, AutoAttack's included, has all six to attack.
    with torch.no_grad():
        y = ensemble.eval()(x).argmax(1)
    attacks = build_attacks(ensemble, eps=0.1, names=ATTACKS)
    result = robust_accuracy(ensemble, list(zip(x, y)), attacks, torch.device("cpu"), progress=False)
    assert set(result["accuracy"]) == {"clean", *ATTACKS, "worst_case"}
    assert result["correct"]["clean"] == 6
    # An untrained ensemble at eps 0.1 on the digits: AutoAttack finds every sample.
    assert result["correct"]["autoattack"] == 0
