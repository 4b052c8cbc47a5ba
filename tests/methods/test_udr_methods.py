"""The UDR methods (seed 003 ch. 5, METHODS.md section 5): λ's update against its transcription,
each loss against its equation by hand on fixed logits, the attack each method runs with its λ,
λ as checkpointed state (round trip, and an interrupted run resumed to the same λ), the logged
perturbation statistics, and bad options refused by name."""
import json
import math

import pytest
import torch
from torch import nn

from fastadv.attacks import UDRAttack
from fastadv.ensemble import Ensemble
from fastadv.methods import METHODS, build_method
from fastadv.methods.base import perturbation_distance
from fastadv.methods.udr import update_lambda
from fastadv.ops import soft_cost
from tests.helpers import straight_and_interrupted

UDR = ("udr_pgd", "udr_trades", "udr_mart")
QUICK = dict(dataset="digits", epochs=2, steps=2, eval_steps=3, eval_size=90, progress=False)


def fixed_logits(seed=0, batch=6, classes=5):
    g = torch.Generator().manual_seed(seed)
    z_nat = torch.randn(batch, classes, generator=g, dtype=torch.float64) * 2
    z_adv = z_nat + torch.randn(batch, classes, generator=g, dtype=torch.float64)
    return z_nat, z_adv, torch.randint(0, classes, (batch,), generator=g)


def softmax_row(z):
    m = max(z)
    e = [math.exp(v - m) for v in z]
    return [v / sum(e) for v in e]


def per_sample_by_hand(z_nat, z_adv, y):
    """Per sample: CE(h(x)), CE(h(x')), KL(p(x) ‖ p(x')), BCE(h(x)) (MART's, 1e-4 floor), 1 − h_y(x)."""
    rows = []
    for zn, za, label in zip(z_nat.tolist(), z_adv.tolist(), y.tolist()):
        p, q = softmax_row(zn), softmax_row(za)
        other = max(v for k, v in enumerate(p) if k != label)
        rows.append((-math.log(p[label]), -math.log(q[label]), sum(pi * math.log(pi / qi) for pi, qi in zip(p, q)),
                     -math.log(p[label]) - math.log(max(1 - other, 1e-4)), 1 - p[label]))
    return rows


def mean(values):
    return sum(values) / len(values)


@pytest.mark.parametrize("beta", [1.0, 6.0])
def test_udr_pgd_matches_its_equation(beta):
    """g = CE(h(x), y) + β·CE(h(x'), y)."""
    z_nat, z_adv, y = fixed_logits()
    rows = per_sample_by_hand(z_nat, z_adv, y)
    loss, parts = build_method("udr_pgd", beta=beta).loss_terms(z_nat, z_adv, y)
    assert loss.item() == pytest.approx(mean([r[0] for r in rows]) + beta * mean([r[1] for r in rows]), rel=1e-10)
    assert parts["robust_loss"].item() == pytest.approx(mean([r[1] for r in rows]), rel=1e-10)


@pytest.mark.parametrize("beta", [1.0, 6.0])
def test_udr_trades_matches_its_equation_with_trades_kl(beta):
    """g = CE(h(x), y) + β·KL(p(x) ‖ p(x')), TRADES' own term (METHODS.md section 5), which on
    these logits differs from the reverse order."""
    z_nat, z_adv, y = fixed_logits(1)
    rows = per_sample_by_hand(z_nat, z_adv, y)
    loss, parts = build_method("udr_trades", beta=beta).loss_terms(z_nat, z_adv, y)
    assert loss.item() == pytest.approx(mean([r[0] for r in rows]) + beta * mean([r[2] for r in rows]), rel=1e-10)
    trades = build_method("trades", beta=beta).loss_terms(z_nat, z_adv, y)[1]["robust_loss"].item()
    assert parts["robust_loss"].item() == pytest.approx(trades, rel=1e-12)
    reverse = per_sample_by_hand(z_adv, z_nat, y)
    assert parts["robust_loss"].item() != pytest.approx(mean([r[2] for r in reverse]), rel=1e-3)


@pytest.mark.parametrize("beta", [1.0, 5.0])
def test_udr_mart_matches_its_equation(beta):
    """g = BCE(h(x), y) + β·(1 − h_y(x))·KL(p(x) ‖ p(x')), BCE on the natural batch."""
    z_nat, z_adv, y = fixed_logits(2)
    rows = per_sample_by_hand(z_nat, z_adv, y)
    loss, parts = build_method("udr_mart", beta=beta).loss_terms(z_nat, z_adv, y)
    expected = mean([r[3] for r in rows]) + beta * mean([r[4] * r[2] for r in rows])
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    assert parts["natural_loss"].item() == pytest.approx(mean([r[3] for r in rows]), rel=1e-10)


@pytest.mark.parametrize("lam, costs, expected", [
    (1.0, [0.1, 0.3], 1.0 - 0.02 * (0.2 - 0.2)),    # mean ĉ = ε: unchanged
    (1.0, [0.5, 0.9], 1.0 - 0.02 * (0.2 - 0.7)),    # outside on average: λ grows
    (1.0, [0.0, 0.1], 1.0 - 0.02 * (0.2 - 0.05)),   # inside: λ shrinks
    (0.001, [0.0, 0.0], 0.0),                        # clamped at 0 (λ ≥ 0)
])
def test_lambda_update_matches_its_transcription(lam, costs, expected):
    """Seed 003 Eq. 19 with λ ≥ 0: λ ← max(0, λ − η_λ(ε − mean_i ĉ_i)), η_λ = 0.02, ε = 0.2."""
    got = update_lambda(torch.tensor(lam, dtype=torch.float64), 0.02, 0.2,
                        torch.tensor(costs, dtype=torch.float64).mean())
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(max(0.0, expected), abs=1e-15)


def tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4))


def tiny_batch():
    g = torch.Generator().manual_seed(1)
    return torch.rand(8, 1, 4, 4, generator=g), torch.randint(0, 4, (8,), generator=g)


@pytest.mark.parametrize("name, loss", [("udr_pgd", "ce"), ("udr_trades", "kl"), ("udr_mart", "kl")])
def test_each_method_attacks_with_its_lambda_then_updates_it(name, loss, monkeypatch):
    """The attack is UDRAttack with the method's loss, λ, τ = 2η and the pixel cost (an L∞ run's);
    with lam_period=1, λ then moves by Eq. 19 with the statistic of the examples it returned, the
    mean |x^a − x| per pixel."""
    seen = {}
    original = UDRAttack.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        seen.update(loss=self.loss, lam=float(self.lam), tau=self.tau, cost=self.cost)

    monkeypatch.setattr(UDRAttack, "__init__", spy)
    method = build_method(name, eps=0.3, alpha=0.1, steps=3, lam_init=0.5, lam_lr=0.1, lam_period=1)
    model, (x, y) = tiny_model(), tiny_batch()
    x_adv, metrics = method.attack(model, x, y)
    assert seen == dict(loss=loss, lam=0.5, tau=pytest.approx(0.2), cost="pixel")
    costs = soft_cost(x_adv, x, 0.3, 0.2, "pixel")
    assert torch.allclose(costs, (x_adv - x).abs().flatten(1).mean(dim=1))
    assert method.lam.item() == pytest.approx(max(0.0, 0.5 - 0.1 * (0.3 - costs.double().mean().item())), rel=1e-12)
    distance = perturbation_distance(x_adv, x, "linf")
    assert metrics["outside"].item() == (distance > 0.3 * (1 + 1e-5)).double().mean().item()
    assert metrics["distance"].item() == pytest.approx(distance.mean().item(), rel=1e-12)
    assert metrics["lambda"].item() == 0.5 and metrics["soft_cost"].item() == pytest.approx(costs.double().mean().item())


def test_lambda_moves_every_period_on_the_mean_of_its_batches():
    """lam_period = 3: λ stays for two batches, then moves once by Eq. 19 on the mean of the
    three batches' statistics (the authors' code updates every 10 batches)."""
    method = build_method("udr_pgd", eps=0.3, alpha=0.1, steps=2, lam_init=0.5, lam_lr=0.1, lam_period=3)
    model = tiny_model()
    statistics = []
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        x, y = torch.rand(8, 1, 4, 4, generator=g), torch.randint(0, 4, (8,), generator=g)
        x_adv = method.attack(model, x, y).x_adv
        statistics.append(soft_cost(x_adv, x, 0.3, 0.2, "pixel").double().mean().item())
        if seed < 2:
            assert method.lam.item() == 0.5
    assert method.lam.item() == pytest.approx(max(0.0, 0.5 - 0.1 * (0.3 - mean(statistics))), rel=1e-12)
    assert method.state_dict()["batches"].item() == 0


@pytest.mark.parametrize("dtype", [torch.float64])
def test_udr_trades_with_the_pixel_cost_and_a_unit_pull_is_trades(dtype):
    """Theorem 1's special case: with the pixel cost and η·λ/τ = 1 (λ = τ/η, held: η_λ = 0),
    UDR-TRADES' step is PGD's projected step, so from the same start its examples and its loss
    are TRADES' (in float64, where no sign of a gradient can flip on rounding)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4)).to(dtype)
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(8, 1, 4, 4, generator=g, dtype=dtype), torch.randint(0, 4, (8,), generator=g)
    udr = build_method("udr_trades", eps=0.3, alpha=0.1, steps=4, lam_init=2.0, lam_lr=0.0, lam_period=1)
    assert udr.tau / udr.alpha == 2.0  # so λ = 2 makes η·λ/τ = 1
    trades = build_method("trades", eps=0.3, alpha=0.1, steps=4)
    trades.attack_init = "uniform"  # UDR's start (TRADES' own is 0.001·N(0, I))
    torch.manual_seed(5)
    udr_loss, _ = udr(model, x, y)
    torch.manual_seed(5)
    trades_loss, _ = trades(model, x, y)
    torch.manual_seed(5)
    udr_examples = udr.attack(model, x, y).x_adv
    torch.manual_seed(5)
    trades_examples = trades.attack(model, x, y).x_adv
    torch.testing.assert_close(udr_examples, trades_examples, atol=1e-12, rtol=0)
    torch.testing.assert_close(udr_loss, trades_loss, atol=1e-12, rtol=1e-12)


def test_a_projected_attack_logs_no_example_outside_the_ball():
    """The same statistics for PGD-AT and TRADES: PGD projects, so none is outside."""
    model, (x, y) = tiny_model(), tiny_batch()
    for name in ("pgd_at", "trades"):
        _, metrics = build_method(name, eps=0.3, alpha=0.1, steps=3)(model, x, y)
        assert metrics["outside"].item() == 0.0 and 0 < metrics["distance"].item() <= 0.3 + 1e-7


@pytest.mark.parametrize("name", UDR)
def test_a_training_step_logs_lambda_and_the_perturbations(name):
    method = build_method(name, eps=0.3, alpha=0.1, steps=2, lam_period=1)
    model, (x, y) = tiny_model(), tiny_batch()
    loss, metrics = method(model, x, y)
    loss.backward()
    assert {"lambda", "outside", "distance", "soft_cost", "clean_acc", "adv_acc"} <= set(metrics)
    assert metrics["lambda"].item() == 1.0, "the λ the attack used (the seed's initial 1)"
    assert 0 <= metrics["outside"].item() <= 1
    # As an ensemble's members (seed 000's protocol): one attack, and one update of λ, per member.
    members = Ensemble([tiny_model() for _ in range(3)])
    before = method.lam.clone()
    turns = list(method.turns(members, x, y))
    assert len(turns) == 3 and not torch.equal(method.lam, before)


def test_state_round_trips_and_bad_state_is_refused():
    method = build_method("udr_pgd", eps=0.3, alpha=0.1, steps=2)
    method(tiny_model(), *tiny_batch())
    state = method.state_dict()
    other = build_method("udr_pgd", eps=0.3, alpha=0.1, steps=2)
    other.load_state_dict(state)
    assert torch.equal(other.lam, method.lam) and other.lam.dtype == torch.float64
    assert other.state_dict()["batches"].item() == 1 and torch.equal(other.state_dict()["statistics"],
                                                                     state["statistics"])
    with pytest.raises(ValueError, match="^udr_pgd: expected the method state lambda, statistics and batches"):
        other.load_state_dict({})
    with pytest.raises(ValueError, match="^udr_pgd: the method state lambda must be a one-element tensor"):
        other.load_state_dict({"lambda": torch.zeros(2), "statistics": torch.zeros(()), "batches": torch.tensor(0)})


def test_an_interrupted_run_resumes_with_the_same_lambda(tmp_path):
    """λ is in the checkpoint: a run interrupted mid-epoch and resumed ends with the λ, weights
    and metrics of the uninterrupted run; λ is in metrics.jsonl and curves.png."""
    straight, interrupted, halfway = straight_and_interrupted(tmp_path, dict(QUICK, method="udr_trades"))
    halfway = halfway["method"]["lambda"]
    final_a = torch.load(straight / "checkpoint.pt", weights_only=True)
    final_b = torch.load(interrupted / "checkpoint.pt", weights_only=True)
    assert torch.equal(final_a["method"]["lambda"], final_b["method"]["lambda"])
    assert not torch.equal(halfway, final_a["method"]["lambda"]), "λ moved after the interruption"
    assert all(torch.equal(final_a["model"][k], final_b["model"][k]) for k in final_a["model"])
    lines = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert all({"train_lambda", "train_outside", "train_distance"} <= set(line) for line in lines)
    assert lines == [json.loads(line) | {"seconds": a["seconds"]} for line, a in
                     zip((interrupted / "metrics.jsonl").read_text().splitlines(), lines)]
    assert (straight / "curves.png").stat().st_size > 0


@pytest.mark.parametrize("options, message", [
    (dict(lam_init=-1.0), "udr_pgd: lam_init must be >= 0"),
    (dict(lam_lr=-0.1), "udr_pgd: lam_lr must be >= 0"),
    (dict(tau_over_eta=0.0), "udr_pgd: tau_over_eta must be > 0"),
    (dict(lam_init=math.inf), "udr_pgd: lam_init must be finite"),
    (dict(cost="l1"), "udr_pgd: cost must be one of 'pixel', 'l2', 'linf', 'auto'"),
    (dict(lam_period=0), "udr_pgd: lam_period must be an integer >= 1"),
    (dict(alpha=0.0), "udr_pgd: alpha must be > 0"),
])
def test_bad_options_are_refused_by_name(options, message):
    with pytest.raises(ValueError, match="^" + message):
        build_method("udr_pgd", **options)


def test_paper_defaults():
    for name, beta in (("udr_pgd", 1.0), ("udr_trades", 6.0), ("udr_mart", 5.0)):
        method = build_method(name, alpha=0.05)
        assert (method.beta, method.lam_init, method.lam_lr, method.tau) == (beta, 1.0, 0.02, pytest.approx(0.1))
        assert (method.lam_period, method.cost) == (10, "pixel")  # the cost for an L∞ threat
        assert build_method(name, norm="l2").cost == "l2"
    assert set(UDR) <= set(METHODS)


def _rank_lambda(rank, world_size, address, results):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=address, rank=rank, world_size=world_size)
    try:
        method = build_method("udr_pgd", eps=0.3, alpha=0.1, steps=2, lam_lr=0.5, lam_period=1)
        model = tiny_model()  # the same weights on both ranks, as DDP keeps them
        torch.manual_seed(rank)  # each rank its own data and its own random starts
        x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 4, (8,))
        costs = []
        for _ in range(3):
            x_adv = method.attack(model, x, y).x_adv
            costs.append(soft_cost(x_adv, x, 0.3, method.tau, "pixel").double().mean())
        gathered = [torch.zeros(4, dtype=torch.float64) for _ in range(world_size)]
        dist.all_gather(gathered, torch.stack([method.lam.reshape(()), *costs]))
        results.put((rank, [t.tolist() for t in gathered]))
    finally:
        dist.destroy_process_group()


def test_ranks_of_a_distributed_run_hold_one_lambda(tmp_path):
    """Two gloo processes with different data: each updates λ from the global batch's statistic
    (the ranks' means averaged), so both hold the same λ, that of the transcription."""
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    results = context.Queue()
    address = f"file://{tmp_path / 'rendezvous'}"
    processes = [context.Process(target=_rank_lambda, args=(rank, 2, address, results)) for rank in range(2)]
    for process in processes:
        process.start()
    outcomes = dict(results.get(timeout=300) for _ in processes)
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    per_rank = outcomes[0]
    assert outcomes[1] == per_rank
    (lam_0, *costs_0), (lam_1, *costs_1) = per_rank
    assert lam_0 == lam_1
    assert costs_0 != costs_1, "the ranks' own batches differ"
    lam = 1.0
    for a, b in zip(costs_0, costs_1):
        lam = max(0.0, lam - 0.5 * (0.3 - (a + b) / 2))
    assert lam_0 == pytest.approx(lam, rel=1e-12)
