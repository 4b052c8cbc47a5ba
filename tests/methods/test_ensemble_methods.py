"""The ensemble methods (METHODS.md section 3): each loss against a line-by-line transcription of
its equation on fixed logits, ALS's one optimiser step per reference turn against seed 000's
literal per-member loop, the λ schedule at known steps, CCE's batched attack against one attack
per member, and seed 000's baseline protocol for single-model methods."""
import math

import pytest
import torch
from torch import nn

from fastadv.attacks import PGD
from fastadv.ensemble import Ensemble
from fastadv.methods import build_method
from fastadv.methods.adp import adp_loss
from fastadv.methods.als import SeparationSchedule
from fastadv.methods.cce import cce_member_loss
from fastadv.methods.trades import trades_loss


def member_logits(seed=0, members=3, batch=5, classes=6):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(members, batch, classes, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, classes, (batch,), generator=g)
    return z, y


def softmax_row(z):
    m = max(z)
    e = [math.exp(v - m) for v in z]
    return [v / sum(e) for v in e]


def masked_cosine(a, b, label):
    """cos_m of two Python rows, the entry ``label`` masked out."""
    a = [v for k, v in enumerate(a) if k != label]
    b = [v for k, v in enumerate(b) if k != label]
    dot = sum(p * q for p, q in zip(a, b))
    return dot / (math.sqrt(sum(p * p for p in a)) * math.sqrt(sum(q * q for q in b)))


def det(matrix):
    """Determinant by cofactor expansion (small matrices)."""
    if len(matrix) == 1:
        return matrix[0][0]
    return sum((-1) ** j * matrix[0][j] * det([row[:j] + row[j + 1:] for row in matrix[1:]])
               for j in range(len(matrix)))


# ----------------------------------------------------------------------------- losses
def test_adp_matches_its_equation():
    """Σ_k CE(z_k, y) − α·H(mean_k p_k) − β·log det(M̃ᵀM̃ + 1e-6·I), the last two batch-averaged."""
    z, y = member_logits()
    alpha, beta, ridge = 2.0, 0.5, 1e-6
    members, batch, _ = z.shape
    ce = entropy = log_det = 0.0
    for b in range(batch):
        label = y[b].item()
        probs = [softmax_row(z[k, b].tolist()) for k in range(members)]
        ce += sum(-math.log(p[label]) for p in probs)
        mean = [sum(p[c] for p in probs) / members for c in range(len(probs[0]))]
        entropy += -sum(m * math.log(m) for m in mean)
        columns = []
        for p in probs:
            rest = [v for c, v in enumerate(p) if c != label]
            norm = math.sqrt(sum(v * v for v in rest))
            columns.append([v / norm for v in rest])
        gram = [[sum(u * v for u, v in zip(columns[i], columns[j])) + (ridge if i == j else 0.0)
                 for j in range(members)] for i in range(members)]
        log_det += math.log(det(gram))
    expected = ce / batch - alpha * entropy / batch - beta * log_det / batch
    loss, *_ = adp_loss(z, y, alpha, beta, ridge)
    assert loss.item() == pytest.approx(expected, rel=1e-9)


def test_cce_member_loss_matches_eq_5():
    """CE(f^n(x)) + CE(f^n(x_a^n)) + 1/(N−1) Σ_{i≠n}[λ_pm·p_y·CE − λ_dm·(1 − p_y)·H], batch-averaged."""
    z, y = member_logits(1, members=4)
    clean, own, crossing = z[0], z[1], z[2:]  # N = 3: two other members' examples
    for lam_pm, lam_dm in ((1.0, 1.0), (0.0, 5.0)):
        total = 0.0
        for b in range(len(y)):
            label = y[b].item()
            term = -math.log(softmax_row(clean[b].tolist())[label]) - math.log(softmax_row(own[b].tolist())[label])
            cross = 0.0
            for i in range(crossing.shape[0]):
                p = softmax_row(crossing[i, b].tolist())
                ce = -math.log(p[label])
                h = -sum(v * math.log(v) for v in p)
                cross += lam_pm * p[label] * ce - lam_dm * (1 - p[label]) * h
            total += term + cross / crossing.shape[0]
        loss, _, _ = cce_member_loss(clean, own, crossing, y, lam_pm, lam_dm)
        assert loss.item() == pytest.approx(total / len(y), rel=1e-10)


def test_cce_stops_the_gradient_through_the_weights():
    """sg(f^n_y): the weights p_y and 1 − p_y carry no gradient."""
    z, y = member_logits(2, members=3)
    crossing = z[2:].clone().requires_grad_(True)
    loss, _, _ = cce_member_loss(z[0], z[1], crossing, y, 1.0, 0.0)
    loss.backward()
    log_p = torch.log_softmax(crossing.detach(), -1)
    p_true = log_p.gather(-1, y.expand(1, -1).unsqueeze(-1)).squeeze(-1).exp()
    # d/dz of p_y·CE with p_y held: p_y·(softmax − onehot) / B
    expected = p_true.unsqueeze(-1) * (log_p.exp() - nn.functional.one_hot(y, z.shape[-1])) / len(y)
    torch.testing.assert_close(crossing.grad, expected, rtol=1e-10, atol=1e-12)


def test_separation_schedule_at_known_steps():
    schedule = SeparationSchedule(lam_max=1.0, lam_min=0.01, warmup=0.05, total=105)  # W = round(5.25) = 5
    values = [schedule.step() for _ in range(105)]
    assert values[0] == pytest.approx(0.2) and values[4] == pytest.approx(1.0)  # k = 1, 5
    assert values[54] == pytest.approx(0.01 + 0.99 * 0.5)  # k = 55: halfway through the annealing
    assert values[104] == pytest.approx(0.01)  # k = T
    assert all(a < b for a, b in zip(values[:5], values[1:5]))
    assert all(a > b for a, b in zip(values[4:], values[5:]))
    assert schedule.steps == 105 and schedule.value(106) == pytest.approx(0.01)


# ----------------------------------------------------------------------------- ALS and the protocol
class Tiny(nn.Module):
    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 5))

    def forward(self, x):
        return self.net(x)


def tiny_ensemble(members=3):
    return Ensemble([Tiny(seed) for seed in range(members)], combine="logit").double()


def batches(count=2, size=6):
    g = torch.Generator().manual_seed(123)
    return [(torch.rand(size, 1, 4, 4, generator=g, dtype=torch.float64), torch.randint(0, 5, (size,), generator=g))
            for _ in range(count)]


OPTIMISER = dict(lr=0.2, momentum=0.9, weight_decay=5e-4)
ATTACK = dict(eps=0.1, alpha=0.04, steps=2)


def train_fast(method, ensemble, data):
    """The trainer's way: one optimiser over every member, one step per item of ``turns``."""
    optimiser = torch.optim.SGD(ensemble.parameters(), **OPTIMISER)
    method.prepare(ensemble, len(data))
    for step, (x, y) in enumerate(data):
        torch.manual_seed(1000 + step)
        for loss, _ in method.turns(ensemble, x, y):
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()


def test_als_one_step_per_turn_equals_the_literal_per_member_loop():
    """Seed 000's Algorithm 1 written out: per reference r, λ ← step; x̃ = PGD-kl(f_r, x); each
    member o in turn computes TRADES(f_o) + 1[o≠r]·λ·cos_m(z_r(x̃), z_o(x̃)) with z_r(x̃) taken at
    the start of the turn, and steps its own optimiser."""
    data = batches()
    fast = tiny_ensemble()
    method = build_method("als", **ATTACK)
    train_fast(method, fast, data)

    literal = tiny_ensemble()
    reference_method = build_method("als", **ATTACK)
    optimisers = [torch.optim.SGD(member.parameters(), **OPTIMISER) for member in literal.members]
    members = list(literal.members)
    schedule = SeparationSchedule(1.0, 0.01, 0.05, total=len(data) * len(members))
    for step, (x, y) in enumerate(data):
        torch.manual_seed(1000 + step)
        for r in range(len(members)):
            lam = schedule.step()
            x_adv = reference_method.attack(members[r], x, y).x_adv
            z_r = members[r](x_adv).detach()
            for o, member in enumerate(members):
                loss, _, _ = trades_loss(member(x), member(x_adv), y, 6.0)
                if o != r:
                    z_o = member(x_adv)
                    for b in range(len(y)):
                        label = y[b].item()
                        mask = torch.ones(z_o.shape[1], dtype=torch.bool)
                        mask[label] = False
                        a, c = z_r[b][mask], z_o[b][mask]
                        loss = loss + lam * (a @ c) / (a.norm() * c.norm()) / len(y)
                optimisers[o].zero_grad()
                loss.backward()
                optimisers[o].step()
    assert method.schedule.steps == schedule.steps == 6
    for (name, a), (_, b) in zip(fast.named_parameters(), literal.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)


def test_als_separation_term_is_the_masked_cosine():
    """The term member o ≠ r adds: λ·mean_b cos_m(z_r(x̃), z_o(x̃)), against the Python transcription."""
    z, y = member_logits(3)
    method = build_method("als")
    method.prepare(tiny_ensemble(), 1)  # 3 turns: λ(1) = 1/W with W = max(1, round(0.15)) = 1
    term, metrics = method.separation(1, z, y)
    lam = 1.0
    expected = 0.0
    for o in (0, 2):
        expected += sum(masked_cosine(z[1, b].tolist(), z[o, b].tolist(), y[b].item()) for b in range(len(y))) / len(y)
    assert term.item() == pytest.approx(lam * expected, rel=1e-10)
    assert metrics["lambda"].item() == lam
    assert metrics["masked_cosine"].item() == pytest.approx(expected / 2, rel=1e-10)


def test_trades_on_an_ensemble_is_als_without_separation():
    """Seed 000's baseline: TRADES trained by the same protocol, λ = 0."""
    data = batches()
    baseline = tiny_ensemble()
    train_fast(build_method("trades", **ATTACK), baseline, data)
    als = tiny_ensemble()
    train_fast(build_method("als", lam_max=0.0, lam_min=0.0, **ATTACK), als, data)
    untrained = tiny_ensemble()
    for (name, a), (_, b), (_, c) in zip(baseline.named_parameters(), als.named_parameters(),
                                         untrained.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14, msg=name)
        assert not torch.equal(a, c)


def test_reference_turns_give_each_member_its_own_loss():
    """One turn of trades on an ensemble: one attack, on the reference, and the sum of the members'
    TRADES losses on it."""
    ensemble = tiny_ensemble(2)
    method = build_method("trades", **ATTACK)
    x, y = batches(1)[0]
    torch.manual_seed(7)
    turns = method.turns(ensemble, x, y)
    loss, metrics = next(turns)
    torch.manual_seed(7)
    x_adv = method.attack(ensemble.members[0], x, y).x_adv
    expected = sum(trades_loss(m(x), m(x_adv), y, 6.0)[0] for m in ensemble.members)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    assert metrics["loss"].item() == pytest.approx(expected.item(), rel=1e-12)
    assert len(list(turns)) == 1  # two members: two turns


# ----------------------------------------------------------------------------- CCE
def test_cce_crafts_every_members_examples_in_one_batched_attack():
    ensemble = tiny_ensemble(3)
    method = build_method("cce", **ATTACK)
    method.attack_init = None  # deterministic: compare with one attack per member
    x, y = batches(1)[0]
    x_adv = method.attack(ensemble, x, y).x_adv
    assert x_adv.shape == (3, *x.shape)
    for n, member in enumerate(ensemble.members):
        alone = PGD(member, init=None, loss="ce", **ATTACK)(x, y)
        torch.testing.assert_close(x_adv[n], alone, rtol=0, atol=1e-12)


def test_cce_objective_is_the_sum_of_member_losses():
    ensemble = tiny_ensemble(3)
    method = build_method("cce", mode="dm", **ATTACK)
    method.attack_init = None
    x, y = batches(1)[0]
    loss, metrics = method(ensemble, x, y)
    x_adv = method.attack(ensemble, x, y).x_adv
    expected = 0.0
    for n, member in enumerate(ensemble.members):
        logits = torch.stack([member(x_adv[i]) for i in range(3)])
        crossing = torch.cat([logits[:n], logits[n + 1:]])
        expected += cce_member_loss(member(x), logits[n], crossing, y, 0.0, 5.0)[0].item()
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    assert {"promote", "demote", "clean_acc", "adv_acc", "loss"} <= set(metrics)


# ----------------------------------------------------------------------------- ADP and ADV-EN
def loss_and_examples(name):
    """(ensemble, x, y, x_adv, loss, metrics) of the method ``name`` on a 3-member ensemble: its
    loss and metrics on a batch, and its PGD-ce examples crafted again (no random start)."""
    ensemble = Ensemble([Tiny(s) for s in range(3)], combine="prob").double()
    method = build_method(name, **ATTACK)
    method.attack_init = None
    x, y = batches(1)[0]
    loss, metrics = method(ensemble, x, y)
    return ensemble, x, y, PGD(ensemble, init=None, loss="ce", **ATTACK)(x, y), loss, metrics


def test_adp_is_adps_loss_on_both_inputs():
    """Σ_k CE(x) + Σ_k CE(x') − ADP(x) − ADP(x') (METHODS.md section 3): adp_loss (checked against
    its equation above) on the clean batch plus on the PGD-ce examples of the ensemble (no random
    start here, so the examples can be crafted again)."""
    ensemble, x, y, x_adv, loss, metrics = loss_and_examples("adp")
    natural = adp_loss(ensemble.member_logits(x), y, 2.0, 0.5, 1e-6)
    adversarial = adp_loss(ensemble.member_logits(x_adv), y, 2.0, 0.5, 1e-6)
    assert loss.item() == pytest.approx(natural[0].item() + adversarial[0].item(), rel=1e-10)
    assert metrics["natural_member_ce"].item() == pytest.approx(natural[1].item(), rel=1e-10)
    assert metrics["adv_log_det"].item() == pytest.approx(adversarial[3].item(), rel=1e-10)


def test_adp_and_adv_en_train_the_combined_output():
    ensemble = Ensemble([Tiny(s) for s in range(3)], combine="prob").double()
    x, y = batches(1)[0]
    for name in ("adp", "adv_en"):
        method = build_method(name, **ATTACK)
        ensemble.zero_grad()
        loss, metrics = method(ensemble, x, y)
        loss.backward()
        assert torch.isfinite(loss) and all(torch.isfinite(v) for v in metrics.values())
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ensemble.parameters()), name


@pytest.mark.parametrize("name", ["adv_en", "adp", "als", "cce", "tamoo_at"])
def test_ensemble_methods_refuse_a_single_model(name):
    x, y = batches(1)[0]
    with pytest.raises(TypeError, match=f"^{name}: model must be a fastadv.models.Ensemble"):
        method = build_method(name, **ATTACK)
        next(iter(method.turns(Tiny(0).double(), x, y)))


def test_bad_options_are_refused_by_name():
    with pytest.raises(ValueError, match="^cce: mode must be one of 'rm', 'dm', got 'pm'"):
        build_method("cce", mode="pm")
    with pytest.raises(ValueError, match="^als: lam_min must be in \\[0, 1\\], got 2.0"):
        build_method("als", lam_min=2.0)
    with pytest.raises(ValueError, match="^adp: logdet_ridge must be > 0"):
        build_method("adp", logdet_ridge=0.0)


def test_adv_en_is_cross_entropy_of_the_mean_probability_on_both_inputs():
    """CE(log mean_k p_k(x), y) + CE(log mean_k p_k(x'), y) (seed 003 ch. 4's ADV loss on the
    ensemble), x' = PGD-ce on that output (no random start here, so the examples can be crafted
    again)."""
    ensemble, x, y, x_adv, loss, metrics = loss_and_examples("adv_en")

    def mean_ce(inputs):
        total = 0.0
        for b in range(len(y)):
            probs = [softmax_row(member(inputs[b:b + 1])[0].tolist()) for member in ensemble.members]
            total += -math.log(sum(p[y[b].item()] for p in probs) / len(probs))
        return total / len(y)
    assert loss.item() == pytest.approx(mean_ce(x) + mean_ce(x_adv), rel=1e-10)
    assert metrics["natural_loss"].item() == pytest.approx(mean_ce(x), rel=1e-10)
    assert metrics["adversarial_loss"].item() == pytest.approx(mean_ce(x_adv), rel=1e-10)


# ----------------------------------------------------------------------------- TA-MOO-AT
def test_tamoo_at_is_adv_en_on_tamoo_examples():
    """CE(log mean_k p_k(x), y) + CE(log mean_k p_k(x'), y) with x' = TA-MOO (ENS, CE) on the
    members, seeded alike."""
    from fastadv.attacks import EnsembleTasks, MultiObjectivePGD

    ensemble = Ensemble([Tiny(s) for s in range(3)], combine="prob").double()
    method = build_method("tamoo_at", **ATTACK)
    x, y = batches(1)[0]
    torch.manual_seed(11)
    loss, _ = method(ensemble, x, y)
    torch.manual_seed(11)
    x_adv = MultiObjectivePGD(EnsembleTasks(ensemble), weighting="tamoo", loss="ce", lam=100.0, **ATTACK)(x, y)
    expected = torch.nn.functional.cross_entropy(ensemble(x), y) + torch.nn.functional.cross_entropy(ensemble(x_adv), y)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-10)
    ensemble.zero_grad()
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ensemble.parameters())


def test_tamoo_at_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="^tamoo_at: norm must be 'linf'"):
        build_method("tamoo_at", norm="l2")
    with pytest.raises(ValueError, match="^tamoo_at: lam must be"):
        build_method("tamoo_at", lam=-1.0)
    with pytest.raises(ValueError, match="^tamoo_at: solver must be one of"):
        build_method("tamoo_at", solver="newton")
    x, y = batches(1)[0]
    with pytest.raises(TypeError, match="^tamoo_at: model must be a fastadv.models.Ensemble"):
        next(iter(build_method("tamoo_at", **ATTACK).turns(Tiny(0).double(), x, y)))
