"""The attacks: invariants, model state, forward counts, early stop, restarts, per-sample
radii, step-for-step agreement with torchattacks in float64, bad arguments, autocast."""
import copy
import re

import pytest
import torch
import torch.nn.functional as F
import torchattacks
from sklearn.datasets import load_digits
from torch import nn

from fastadv.attacks import CW, FGSM, LOSSES, PGD, PGDL2, Attack, losses

EPS = {"linf": 0.1, "l2": 0.5}
ULP = 2.0 ** -52  # the spacing of float64 numbers in [1, 2): a bound on any rounding of a value in [0, 1]


class Normalize(nn.Module):
    """The normalisation step that lives inside the model (inputs stay in [0, 1])."""

    def __init__(self, mean: float, std: float):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))

    def forward(self, x):
        return (x - self.mean) / self.std


class CountForwards(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


class RecordMode(nn.Module):
    """Records the training flag it sees in every forward."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(self.training)
        return x


def mlp(hidden: int = 64) -> nn.Sequential:
    return nn.Sequential(Normalize(0.3, 0.4), nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


@pytest.fixture(scope="module")
def digits():
    """A 2-layer MLP trained on scikit-learn's 8x8 digits (about 98% clean test accuracy) and
    its held-out test set, images scaled to [0, 1]."""
    data = load_digits()
    images = torch.tensor(data.images / 16.0, dtype=torch.float32).unsqueeze(1)
    labels = torch.tensor(data.target)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    train, test = order[:1300], order[1300:]
    torch.manual_seed(0)
    model = mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(10):
        for start in range(0, len(train), 64):
            batch = train[start:start + 64]
            loss = F.cross_entropy(model(images[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    for parameter in model.parameters():
        parameter.grad = None
    return model, images[test], labels[test]


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(dim=1) == y).float().mean().item() * 100


def distance(x_adv, x, norm):
    d = (x_adv.double() - x.double()).flatten(1)
    return d.abs().amax(dim=1) if norm == "linf" else d.norm(dim=1)


def assert_in_ball(x_adv, x, eps, norm, tol=1e-6):
    eps = torch.as_tensor(eps, dtype=torch.float64).expand(x.shape[0])
    assert bool((distance(x_adv, x, norm) <= eps + tol).all()), "left the eps-ball"
    assert bool((x_adv >= 0).all()) and bool((x_adv <= 1).all()), "left [0, 1]"


# ----------------------------------------------------------------------------- losses
def test_losses_match_their_equations():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(7, 5, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, 5, (7,), generator=g)
    z_clean = torch.randn(7, 5, generator=g, dtype=torch.float64)
    p = torch.softmax(z_clean, dim=1)
    log_q = torch.log_softmax(z, dim=1)
    for i in range(7):
        others = [j for j in range(5) if j != y[i]]
        ce = -log_q[i, y[i]]
        assert torch.allclose(losses.cross_entropy(z, y)[i], ce)
        assert torch.allclose(losses.kl_from_clean(z, z_clean)[i], (p[i] * (p[i].log() - log_q[i])).sum())
        assert torch.allclose(losses.kl_to_clean(z, z_clean)[i], (log_q[i].exp() * (log_q[i] - p[i].log())).sum())
        margin = max(z[i, j] for j in others) - z[i, y[i]]
        assert torch.allclose(losses.carlini_wagner(z, y, kappa=50.0)[i], margin)
        assert torch.allclose(losses.carlini_wagner(z, y, kappa=0.5)[i], torch.clamp(margin, max=0.5))
        hinge = sum(torch.clamp(z[i, j] - z[i, y[i]] + 0.9, min=0) ** 2 for j in others)
        assert torch.allclose(losses.margin_cross_entropy(z, y, delta=0.9)[i], ce + hinge)
    assert set(LOSSES) == {"ce", "kl", "kl_reverse", "cw", "margin_ce"}


# ----------------------------------------------------------------------------- invariants
@pytest.mark.parametrize("init", ["uniform", "normal", None])
@pytest.mark.parametrize("loss", sorted(LOSSES))
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_stays_in_ball_and_box(digits, norm, loss, init):
    model, x, y = digits
    x, y = x[:128], y[:128]
    eps = EPS[norm]
    x_adv = PGD(model, eps=eps, alpha=eps / 4, steps=5, norm=norm, loss=loss, init=init,
                generator=torch.Generator().manual_seed(0))(x, y)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
    assert_in_ball(x_adv, x, eps, norm)
    if loss in ("kl", "kl_reverse") and init is None:
        # x' = x is the minimum of KL(p(x) ‖ p(x')): its gradient is exactly zero, so PGD-kl
        # cannot leave it (which is why TRADES starts from x + 0.001·N(0, I)).
        assert torch.equal(x_adv, x)
        return
    assert accuracy(model, x_adv, y) < accuracy(model, x, y), "the attack did not attack"


def test_aliases_and_float64_and_channels_last():
    torch.manual_seed(0)
    model = mlp().double()
    x = torch.rand(9, 1, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 10, (9,))
    before = x.clone()
    for attack, norm in [(CW(model, eps=0.1), "linf"), (PGDL2(model), "l2")]:
        x_adv = attack(x, y)
        assert x_adv.dtype == torch.float64 and x_adv.shape == x.shape
        assert_in_ball(x_adv, x, attack.eps, norm, tol=1e-12)
    assert torch.equal(x, before), "the attack modified its input"
    conv = nn.Sequential(Normalize(0.5, 0.25), nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    x = torch.rand(5, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (5,))
    x_adv = PGD(conv, steps=2)(x, y)
    assert x_adv.is_contiguous(memory_format=torch.channels_last)
    assert_in_ball(x_adv, x, 8 / 255, "linf")
    # Through a flatten the gradient comes back contiguous, unlike the batch: same result anyway.
    flat = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    x_adv = PGD(flat, steps=3, init=None)(x, y)
    assert x_adv.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(x_adv, PGD(flat, steps=3, init=None)(x.contiguous(), y))


def test_fgsm_moves_exactly_eps_sign(digits):
    model, x, y = digits
    eps = 0.1
    x_adv = FGSM(model, eps=eps)(x, y)
    x_grad = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x_grad), y, reduction="sum"), x_grad)
    stepped = x + eps * grad.sign()
    inside = (stepped >= 0) & (stepped <= 1)
    assert bool(inside.any()) and bool((~inside).any())
    assert torch.equal(x_adv[inside], stepped[inside])
    assert torch.equal(x_adv[~inside], stepped[~inside].clamp(0, 1))


# ----------------------------------------------------------------------------- model state
def mode_model():
    torch.manual_seed(0)
    return nn.Sequential(Normalize(0.3, 0.4), nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), RecordMode(),
                         nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 10))


def set_modes(model, modes):
    if modes == "train":
        model.train()
    elif modes == "eval":
        model.eval()
    else:  # mixed: the container trains, some children do not
        model.train()
        model[3].eval()
        model[6].eval()
        model[0].training = False


@pytest.mark.parametrize("modes", ["train", "eval", "mixed"])
def test_model_modes_restored_and_eval_during_attack(modes):
    model = mode_model()
    set_modes(model, modes)
    before = [module.training for module in model.modules()]
    running_mean = model[3].running_mean.clone()
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    PGD(model, steps=3, loss="kl", restarts=2, init="normal")(x, y)
    assert [module.training for module in model.modules()] == before
    assert model[4].seen and not any(model[4].seen), "the attack ran the model in train mode"
    assert torch.equal(model[3].running_mean, running_mean), "BatchNorm statistics changed"
    # An error inside the attack still restores the modes.
    with pytest.raises(ValueError, match="y"):
        PGD(model, steps=1)(x, torch.full((16,), 10))
    assert [module.training for module in model.modules()] == before


@pytest.mark.parametrize("loss", ["ce", "kl"])
def test_parameter_gradients_untouched(loss):
    model = mode_model()
    existing = torch.randn_like(model[2].weight)
    model[2].weight.grad = existing.clone()
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    PGD(model, steps=3, loss=loss, restarts=2, early_stop=True)(x, y)
    assert torch.equal(model[2].weight.grad, existing), "an existing .grad changed"
    for name, parameter in model.named_parameters():
        assert parameter.requires_grad
        if name != "2.weight":
            assert parameter.grad is None, f"{name}.grad was written"


def test_grad_mode_of_the_caller_does_not_matter(digits):
    model, x, y = digits
    x, y = x[:64], y[:64]
    expected = PGD(model, eps=0.1, alpha=0.025, steps=3, generator=torch.Generator().manual_seed(3))(x, y)
    with torch.no_grad():
        in_no_grad = PGD(model, eps=0.1, alpha=0.025, steps=3, generator=torch.Generator().manual_seed(3))(x, y)
    with torch.inference_mode():
        x_inference, y_inference = x.clone(), y.clone()
        in_inference = PGD(model, eps=0.1, alpha=0.025, steps=3,
                           generator=torch.Generator().manual_seed(3))(x_inference, y_inference)
    assert torch.equal(in_no_grad, expected) and torch.equal(in_inference, expected)


# ----------------------------------------------------------------------------- cost
@pytest.mark.parametrize("loss, restarts, expected", [("kl", 1, 6), ("ce", 1, 5), ("ce", 3, 18), ("kl", 2, 13)])
def test_forward_count(digits, loss, restarts, expected):
    """kl: one clean forward, hoisted out of the loop; restarts: one forward at each final point."""
    counted = CountForwards(digits[0])
    x, y = digits[1][:32], digits[2][:32]
    PGD(counted, eps=0.1, steps=5, loss=loss, restarts=restarts, init="normal")(x, y)
    assert counted.calls == expected


def test_kl_clean_probabilities_are_computed_once(digits):
    """The clean forward happens on x itself, before the first step."""
    model, x, y = digits
    seen = []
    handle = model.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    try:
        PGD(model, eps=0.1, steps=4, loss="kl", init="normal")(x[:32], y[:32])
    finally:
        handle.remove()
    assert len(seen) == 5
    assert torch.equal(seen[0], x[:32])
    assert not any(torch.equal(s, x[:32]) for s in seen[1:])


# ----------------------------------------------------------------------------- early stop, restarts
@pytest.mark.parametrize("loss", ["ce", "cw", "margin_ce"])
def test_early_stop_does_not_move_samples_fooled_at_the_start(digits, loss):
    model, x, y = digits
    with torch.no_grad():
        wrong = model(x).argmax(dim=1) != y
    assert 0 < int(wrong.sum()) < len(y)
    x_adv = PGD(model, eps=0.1, alpha=0.025, steps=5, loss=loss, init=None, early_stop=True)(x, y)
    assert torch.equal(x_adv[wrong], x[wrong]), "a sample fooled at the start moved"
    assert bool((x_adv[~wrong] != x[~wrong]).flatten(1).any(dim=1).all())


@pytest.mark.parametrize("loss", ["ce", "kl"])
def test_early_stop_freezes_samples_once_fooled(digits, loss):
    """From the same start, K + 1 steps are K steps plus one: samples fooled after K steps
    (argmax != y, for the kl loss too) make no further step."""
    model, x, y = digits
    run = lambda steps: PGD(model, eps=0.1, alpha=0.025, steps=steps, loss=loss, init="normal", early_stop=True,
                            generator=torch.Generator().manual_seed(5))(x, y)
    three, four = run(3), run(4)
    with torch.no_grad():
        fooled = model(three).argmax(dim=1) != y
    assert 0 < int(fooled.sum()) < len(y)
    assert torch.equal(four[fooled], three[fooled])
    assert not torch.equal(four[~fooled], three[~fooled])


def test_restarts_keep_first_fooling_else_worst_point(digits):
    model, x, y = digits
    settings = dict(eps=0.1, alpha=0.025, steps=2)
    single = PGD(model, generator=torch.Generator().manual_seed(7), **settings)
    first, second = single(x, y), single(x, y)  # the same random draws as restarts 1 and 2
    combined = PGD(model, restarts=2, generator=torch.Generator().manual_seed(7), **settings)(x, y)
    with torch.no_grad():
        z1, z2 = model(first), model(second)
    fooled1, fooled2 = z1.argmax(dim=1) != y, z2.argmax(dim=1) != y
    worse2 = F.cross_entropy(z2, y, reduction="none") > F.cross_entropy(z1, y, reduction="none")
    take_second = ~fooled1 & (fooled2 | worse2)
    for case in (fooled1 & fooled2, ~fooled1 & fooled2, ~fooled1 & ~fooled2 & worse2, ~fooled1 & ~fooled2 & ~worse2):
        assert bool(case.any()), "the batch does not exercise every case of the rule"
    expected = torch.where(take_second.view(-1, 1, 1, 1), second, first)
    assert torch.equal(combined, expected)


def test_generator_makes_runs_reproducible(digits):
    model, x, y = digits
    x, y = x[:64], y[:64]
    run = lambda seed: PGD(model, eps=0.1, steps=2, restarts=2, generator=torch.Generator().manual_seed(seed))(x, y)
    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


# ----------------------------------------------------------------------------- per-sample radii
@pytest.mark.parametrize("init", ["uniform", "normal"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_per_sample_eps(digits, norm, init):
    model, x, y = digits
    x, y = x[:6], y[:6]
    eps = torch.tensor([0.0, 0.5, 1.0, 0.0, 2.0, 3.0]) * EPS[norm] / 2
    for attack, call in [(PGD(model, eps=eps, alpha=eps / 4, steps=5, norm=norm, init=init), {}),
                         (PGD(model, steps=5, norm=norm, init=init), dict(eps=eps, alpha=eps / 4))]:
        x_adv = attack(x, y, **call)
        assert torch.equal(x_adv[eps == 0], x[eps == 0]), "a sample with eps 0 moved"
        assert_in_ball(x_adv, x, eps, norm)
        assert bool((distance(x_adv, x, norm)[eps > 0] > 0).all())


def test_early_stop_with_normal_start_stays_in_a_tiny_ball(digits):
    """The 0.001·N(0, I) start is projected, so a sample that never steps is still in its ball."""
    model, x, y = digits
    with torch.no_grad():
        wrong = model(x).argmax(dim=1) != y
    eps = torch.where(wrong, 0.0, 0.1)
    x_adv = PGD(model, eps=eps, alpha=0.025, steps=3, loss="kl", init="normal", early_stop=True)(x, y)
    assert_in_ball(x_adv, x, eps, "linf")
    assert torch.equal(x_adv[wrong], x[wrong])


# ----------------------------------------------------------------------------- torchattacks
@pytest.fixture(scope="module")
def digits64(digits):
    """The trained digits model and its 497 held-out samples in float64, where the comparisons
    with torchattacks below can be held to rounding."""
    model, x, y = digits
    return copy.deepcopy(model).double(), x.double(), y


def test_fgsm_is_torchattacks_fgsm(digits64):
    """torchattacks: clamp(x + ε·sign ∇ mean CE, 0, 1). fastadv ascends the summed CE, whose
    gradient is B times the mean's: the same signs. Its step x + ε·sign g rounds exactly as
    torchattacks' does, and lands on the ball's bounds x ± ε (rounded the same way) or on x, so
    the ball's clamp changes nothing: every element is equal."""
    model, x, y = digits64
    assert torch.equal(FGSM(model, eps=0.1)(x, y), torchattacks.FGSM(model, eps=0.1)(x, y))


@pytest.mark.parametrize("steps", range(1, 11))
def test_pgd_linf_is_torchattacks_pgd(digits64, steps):
    """torchattacks: x' ← clamp(x + clamp(x' + α·sign g − x, −ε, ε), 0, 1), g the gradient of the
    mean CE; fastadv: x' ← clamp(clamp(x' + α·sign g, x − ε, x + ε), 0, 1) on the summed CE (the
    same signs). In exact arithmetic the same map; in float64 torchattacks rounds three times per
    element and step (the step, the difference to x, the sum back to x) and fastadv once, each
    rounding of a value in [0, 1] errs by at most ULP/4, and the clamps, 1-Lipschitz, pass a
    difference on without growing it. So after k steps the two differ by at most k·ULP, as long
    as every sign agrees: a sign that differed would move its element by 2α. (Measured: equal
    after one and two steps, at most ULP/8 apart up to ten.)"""
    model, x, y = digits64
    ours = PGD(model, eps=0.1, alpha=0.025, steps=steps, init=None)(x, y)
    theirs = torchattacks.PGD(model, eps=0.1, alpha=0.025, steps=steps, random_start=False)(x, y)
    assert float((ours - theirs).abs().max()) <= steps * ULP
    if steps == 10:
        unprojected = PGD(model, eps=1.0, alpha=0.025, steps=steps, init=None)(x, y)
        assert not torch.equal(unprojected, ours), "the projection onto the ball was not compared"


@pytest.mark.parametrize("steps", range(1, 11))
def test_pgd_l2_is_torchattacks_pgdl2(digits64, steps):
    """torchattacks divides the gradient by ‖g‖ + eps_for_division (1e-10 by default; on the mean
    CE of 497 samples ‖g‖ is small enough for it to move samples by up to 4e-3: see the next
    test), fastadv by ‖g‖, so the comparison is with eps_for_division=0: the same map in exact
    arithmetic. An L2 step passes the rounding of its point on to the next gradient's direction,
    where the model can amplify it, so the bound is not a count of roundings but how closely
    torchattacks agrees with itself: the same attack on the batch cut into parts, which changes
    nothing but the rounding (the mean's 1/B scales every gradient and the normalisation removes
    the scale), taken over several cuts (halves, thirds, quarters: one cut alone measures one
    draw of the rounding, and the BLAS's rounding differs from CPU to CPU). One ULP per step is
    the floor (after one step both round alike). Measured over 1 to 10 steps on an Intel Xeon:
    fastadv at most 9.25 ULP from torchattacks; torchattacks 0.5 ULP from itself after one step,
    then 23.5 to 77 ULP."""
    model, x, y = digits64
    attack = torchattacks.PGDL2(model, eps=1.0, alpha=0.25, steps=steps, random_start=False, eps_for_division=0)
    theirs = attack(x, y)
    rounding = steps * ULP
    for parts in (2, 3, 4):
        in_parts = torch.cat([attack(xs, ys) for xs, ys in zip(x.tensor_split(parts), y.tensor_split(parts))])
        rounding = max(rounding, float((in_parts - theirs).abs().max()))
    assert rounding < 1e-12, "torchattacks disagrees with itself beyond rounding"
    ours = PGDL2(model, eps=1.0, alpha=0.25, steps=steps, init=None)(x, y)
    assert float((ours - theirs).abs().max()) <= rounding
    if steps == 10:
        unprojected = PGDL2(model, eps=10.0, alpha=0.25, steps=steps, init=None)(x, y)
        assert not torch.equal(unprojected, ours), "the projection onto the ball was not compared"


def test_torchattacks_division_term_is_the_whole_difference_of_its_default(digits64):
    """With the default eps_for_division τ = 1e-10, one torchattacks PGDL2 step from x is
    clamp(x + α·g/(‖g‖ + τ), 0, 1), g the gradient of the mean CE, where fastadv's is
    clamp(x + α·g/‖g‖, 0, 1): before the clamp (which can only shorten it) the two differ by a
    vector of length α·τ/(‖g‖ + τ). That bounds the measured gap, up to one ULP per element
    (the step above), and it is far above rounding: the reason for eps_for_division=0 there."""
    model, x, y = digits64
    alpha, tau = 0.25, 1e-10
    x_grad = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x_grad), y), x_grad)
    term = alpha * tau / (grad.flatten(1).norm(dim=1) + tau)
    theirs = torchattacks.PGDL2(model, eps=1.0, alpha=alpha, steps=1, random_start=False)(x, y)
    ours = PGDL2(model, eps=1.0, alpha=alpha, steps=1, init=None)(x, y)
    gap = (ours - theirs).flatten(1).norm(dim=1)
    assert bool((gap <= term + ULP * x[0].numel() ** 0.5).all())
    assert float(gap.max()) > 1e-4


# ----------------------------------------------------------------------------- autocast
def test_bfloat16_autocast(digits):
    model, x, y = digits
    dtypes = []
    handle = model[2].register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    try:
        x_adv = PGD(model, eps=0.1, alpha=0.025, steps=5, loss="kl", amp_dtype=torch.bfloat16,
                    init="normal")(x, y)
    finally:
        handle.remove()
    assert dtypes and all(dtype == torch.bfloat16 for dtype in dtypes)
    assert x_adv.dtype == x.dtype
    assert_in_ball(x_adv, x, 0.1, "linf")
    assert accuracy(model, x_adv, y) < accuracy(model, x, y) - 20


# ----------------------------------------------------------------------------- bad arguments
BAD_CONSTRUCTIONS = [
    (dict(eps=-0.1), ValueError, "PGD: eps must be >= 0, got -0.1"),
    (dict(eps="big"), TypeError, "PGD: eps must be a float or a tensor of shape [B], got str"),
    (dict(eps=torch.ones(2, 2)), ValueError, "PGD: eps must be a float or have shape [B], got [2, 2]"),
    (dict(eps=torch.tensor([0.1, -0.1])), ValueError, "PGD: every entry of eps must be >= 0 (and not NaN)"),
    (dict(eps=torch.tensor([0.1, float("nan")])), ValueError, "PGD: every entry of eps must be >= 0 (and not NaN)"),
    (dict(eps=torch.tensor([1, 2])), TypeError, "PGD: eps must be a floating-point tensor, got dtype torch.int64"),
    (dict(alpha=-1.0), ValueError, "PGD: alpha must be >= 0, got -1.0"),
    (dict(alpha="small"), TypeError, "PGD: alpha must be a float or a tensor of shape [B] or None, got str"),
    (dict(steps=0), ValueError, "PGD: steps must be an integer >= 1, got 0"),
    (dict(steps=2.5), TypeError, "PGD: steps must be an integer, got float"),
    (dict(norm="l3"), ValueError, "PGD: norm must be one of 'linf', 'l2', got 'l3'"),
    (dict(loss="mse"), ValueError, "PGD: loss must be one of 'ce', 'kl', 'kl_reverse', 'cw', 'margin_ce', got 'mse'"),
    (dict(init="gaussian"), ValueError, "PGD: init must be one of 'uniform', 'normal' or None, got 'gaussian'"),
    (dict(restarts=0), ValueError, "PGD: restarts must be an integer >= 1, got 0"),
    (dict(restarts=2, init=None), ValueError, "PGD: restarts > 1 needs a random init ('uniform' or 'normal'); "
                                              "from init=None every restart is the same run"),
    (dict(early_stop="yes"), TypeError, "PGD: early_stop must be a bool, got str"),
    (dict(kappa=-1.0), ValueError, "PGD: kappa must be >= 0, got -1.0"),
    (dict(margin=float("nan")), ValueError, "PGD: margin must be >= 0, got nan"),
    (dict(margin=float("inf")), ValueError, "PGD: margin must be finite, got inf"),
    (dict(amp_dtype=torch.float32), ValueError,
     "PGD: amp_dtype must be None, torch.bfloat16 or torch.float16, got torch.float32"),
    (dict(clip=(1.0, 0.0)), ValueError, "PGD: clip must satisfy min <= max, got (1.0, 0.0)"),
    (dict(clip="unit"), TypeError, "PGD: clip must be a pair (min, max) of floats or None, got 'unit'"),
    (dict(generator=0), TypeError, "PGD: generator must be a torch.Generator or None, got int"),
]


@pytest.mark.parametrize("kwargs, error, message", BAD_CONSTRUCTIONS)
def test_bad_construction(kwargs, error, message):
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        PGD(mlp(), **kwargs)


def test_norm_in_torchattacks_spelling():
    assert PGD(mlp(), norm="Linf").norm == "linf" and PGD(mlp(), norm="L2").norm == "l2"


def test_bad_arguments_name_the_attack_that_got_them():
    with pytest.raises(TypeError, match=r"^FGSM: model must be a torch\.nn\.Module, got function$"):
        FGSM(lambda x: x)
    with pytest.raises(ValueError, match=r"^CW: kappa must be >= 0, got -1\.0$"):
        CW(mlp(), kappa=-1.0)
    with pytest.raises(ValueError, match=r"^PGDL2: steps must be an integer >= 1, got 0$"):
        PGDL2(mlp(), steps=0)


BATCH, LABELS = torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)


@pytest.mark.parametrize("x, y, call, error, message", [
    (BATCH, torch.zeros(5, dtype=torch.long), {}, ValueError, "PGD: y must have shape [B] = [4], got [5]"),
    (BATCH, torch.zeros(4), {}, TypeError, "PGD: y must be an integer tensor of class indices, got torch.float32"),
    (BATCH, torch.tensor([0, 1, 2, 10]), {}, ValueError,
     "PGD: every label in y must lie in [0, 10) for 10 classes, got labels from 0 to 10"),
    (BATCH, torch.tensor([0, 1, 2, -1]), {}, ValueError,
     "PGD: every label in y must lie in [0, 10) for 10 classes, got labels from -1 to 2"),
    (BATCH, [0, 1, 2, 3], {}, TypeError, "PGD: y must be an integer tensor of class indices, got list"),
    (torch.zeros(4, 1, 8, 8, dtype=torch.long), LABELS, {}, TypeError,
     "PGD: x must be a floating-point tensor, got dtype torch.int64"),
    (torch.tensor(0.5), LABELS, {}, ValueError, "PGD: x must have a batch dimension, got shape []"),
    ([[0.5]], LABELS, {}, TypeError, "PGD: x must be a torch.Tensor, got list"),
    (BATCH, LABELS, dict(eps=torch.ones(3) * 0.1), ValueError, "PGD: eps must be a float or have shape [B] = [4], got [3]"),
    (BATCH, LABELS, dict(eps=torch.tensor([0.1, 0.1, -0.1, 0.1])), ValueError,
     "PGD: every entry of eps must be >= 0 (and not NaN)"),
    (BATCH, LABELS, dict(alpha=-0.1), ValueError, "PGD: alpha must be >= 0, got -0.1"),
    (BATCH, LABELS, dict(alpha=torch.ones(3)), ValueError, "PGD: alpha must be a float or have shape [B] = [4], got [3]"),
])
def test_bad_call(x, y, call, error, message):
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        PGD(mlp(), steps=2)(x, y, **call)


def test_a_per_sample_eps_of_another_batch_size_is_refused_at_the_call():
    attack = PGD(mlp(), eps=torch.full((3,), 0.1), steps=1)
    with pytest.raises(ValueError, match=re.escape("PGD: eps must be a float or have shape [B] = [4], got [3]")):
        attack(BATCH, LABELS)


def test_model_that_does_not_return_logits():
    with pytest.raises(ValueError, match=re.escape("PGD: the model must return logits of shape [B, C] = [4, C], "
                                                   "got [4, 1, 8, 8]")):
        PGD(nn.Identity(), steps=1)(BATCH, LABELS)


@pytest.mark.parametrize("call, error, message", [
    (lambda: losses.margin_cross_entropy(torch.zeros(4, 10), torch.tensor([0, 1, 2, 10])), ValueError,
     "margin_cross_entropy: every label in y must lie in [0, 10) for 10 classes, got labels from 0 to 10"),
    (lambda: losses.margin_cross_entropy(torch.zeros(4, 10, 1), LABELS), ValueError,
     "margin_cross_entropy: z must have 2 dimensions, got shape [4, 10, 1]"),
    (lambda: losses.margin_cross_entropy(torch.zeros(4, 10), LABELS, delta=float("nan")), ValueError,
     "margin_cross_entropy: delta must be a number, got nan"),
    (lambda: losses.kl_from_clean(torch.zeros(4, 10), torch.zeros(4, 9)), ValueError,
     "kl_from_clean: z_clean must have the shape of z_adv [4, 10], got [4, 9]"),
    (lambda: losses.kl_from_clean(torch.zeros(4, 10), torch.zeros(4, 10, dtype=torch.float64)), TypeError,
     "kl_from_clean: z_clean must have z_adv's dtype torch.float32, got torch.float64"),
])
def test_the_public_losses_check_their_arguments(call, error, message):
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        call()


def test_attack_is_abstract_and_shows_its_settings():
    with pytest.raises(TypeError):
        Attack(mlp(), 0.1)  # abstract: perturb is what a subclass provides
    shown = repr(PGD(mlp(), eps=0.1, steps=3, loss="cw"))
    assert shown.startswith("PGD(") and "eps=0.1" in shown and "steps=3" in shown and "loss='cw'" in shown


def test_cw_is_a_hand_written_loop_on_the_capped_margin(digits64):
    """CW against PGD written out by hand on the capped margin min(max_{j≠y} z_j − z_y, κ), with
    a κ small enough that samples reach it (their gradient is then zero: they stop moving). The
    loop does the same float64 arithmetic as the fused step (x' + α·sign g, then the clamps), so
    the results are equal, not close."""
    model, x, y = digits64
    eps, alpha, steps, kappa = 0.1, 0.025, 5, 2.0
    rows = torch.arange(len(y))
    x_adv, capped = x.clone(), torch.zeros(len(y), dtype=torch.bool)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        z = model(x_adv)
        margin = z.detach().index_put((rows, y), torch.tensor(-torch.inf, dtype=z.dtype)).argmax(dim=1)
        margin = z[rows, margin] - z[rows, y]
        capped |= margin.detach() >= kappa
        (grad,) = torch.autograd.grad(margin.clamp(max=kappa).sum(), x_adv)
        x_adv = torch.clamp(torch.minimum(torch.maximum(x_adv.detach() + alpha * grad.sign(), x - eps), x + eps), 0, 1)
    assert 0 < int(capped.sum()) < len(y), "the cap kappa was not exercised"
    assert torch.equal(CW(model, eps=eps, alpha=alpha, steps=steps, kappa=kappa, init=None)(x, y), x_adv)
    assert CW(model).kappa == 50.0 and CW(model).steps == 10
