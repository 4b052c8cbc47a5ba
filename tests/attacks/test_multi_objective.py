"""MultiObjectivePGD and its task sets (METHODS.md section 4, seed 003 ch. 4)."""
import pytest
import torch
from torch import nn

from fastadv.attacks.multi_objective import (MOO_LOSSES, WEIGHTINGS, EnsembleTasks, MultiObjectivePGD, TransformTasks,
                                             UniversalTasks, multi_objective_metrics)
from fastadv.attacks.transforms import TRANSFORMS
from fastadv.ensemble import Ensemble
from fastadv.reference import simplex as reference
from tests.helpers import one_thread  # noqa: F401  (autouse)

EPS, ALPHA = 0.2, 0.05


def small_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 5))


@pytest.fixture(scope="module")
def batch():
    torch.manual_seed(0)
    return torch.rand(8, 1, 4, 4), torch.randint(0, 5, (8,))


def task_sets():
    members = [small_model(i) for i in range(3)]
    return {"ens": EnsembleTasks(Ensemble(members)),
            "uni": UniversalTasks(members[0], group=4),
            "eot": TransformTasks(members[0], ("identity", "hflip", "rotation", "brightness")),
            "eot-stochastic": TransformTasks(members[0], ("hflip", "crop", "gamma"), stochastic=True, samples=2)}


@pytest.mark.parametrize("kind", ["ens", "uni", "eot", "eot-stochastic"])
@pytest.mark.parametrize("weighting", WEIGHTINGS)
@pytest.mark.parametrize("loss", MOO_LOSSES)
def test_invariants(batch, kind, weighting, loss):
    """‖δ‖∞ ≤ ε, inputs in [0, 1], weights on the simplex, one δ per UNI group."""
    x, y = batch
    tasks = task_sets()[kind]
    result = MultiObjectivePGD(tasks, weighting=weighting, loss=loss, eps=EPS, alpha=ALPHA, steps=4, seed=1).run(x, y)
    delta = result.x_adv - x
    assert result.x_adv.shape == x.shape and result.x_adv.dtype == x.dtype
    assert delta.abs().max() <= EPS + 1e-6
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    problems = x.shape[0] // 4 if kind == "uni" else x.shape[0]
    assert result.weights.shape == result.achieved.shape == (problems, tasks.tasks)
    assert (result.weights >= 0).all()
    torch.testing.assert_close(result.weights.sum(dim=1), torch.ones(problems), atol=1e-5, rtol=0)
    if weighting == "uniform":
        torch.testing.assert_close(result.weights, torch.full_like(result.weights, 1 / tasks.tasks))
    if kind == "uni":
        grouped = delta.reshape(problems, 4, -1)
        torch.testing.assert_close(grouped, grouped[:, :1].expand_as(grouped), atol=1e-6, rtol=0)


def test_the_goals_are_the_members_predictions(batch):
    x, y = batch
    tasks = task_sets()["ens"]
    result = MultiObjectivePGD(tasks, weighting="tamoo", eps=EPS, alpha=ALPHA, steps=5, seed=0).run(x, y)
    with torch.no_grad():
        expected = torch.stack([member(result.x_adv).argmax(dim=1) != y for member in tasks.members], dim=1)
    assert torch.equal(result.achieved, expected)


def test_eot_goals_are_the_transformed_predictions(batch):
    x, y = batch
    tasks = task_sets()["eot"]
    result = MultiObjectivePGD(tasks, weighting="moo", eps=EPS, alpha=ALPHA, steps=3, seed=0).run(x, y)
    model = tasks.model
    with torch.no_grad():
        clean = model(x).argmax(dim=1)
        expected = torch.stack([model(TRANSFORMS[name](result.x_adv, False, None)).argmax(dim=1) != clean
                                for name in tasks.transforms], dim=1)
    assert torch.equal(result.achieved, expected)


def test_uni_goals_compare_with_the_clean_prediction(batch):
    x, y = batch
    tasks = task_sets()["uni"]
    result = MultiObjectivePGD(tasks, weighting="uniform", loss="cw", eps=EPS, alpha=ALPHA, steps=3, seed=0).run(x, y)
    with torch.no_grad():
        changed = tasks.model(result.x_adv).argmax(dim=1) != tasks.model(x).argmax(dim=1)
    assert torch.equal(result.achieved, changed.reshape(-1, 4))


def test_tamoo_without_regulariser_is_moo(batch):
    x, y = batch
    tasks = task_sets()["ens"]
    moo = MultiObjectivePGD(tasks, weighting="moo", eps=EPS, alpha=ALPHA, steps=4, seed=3).run(x, y)
    tamoo = MultiObjectivePGD(tasks, weighting="tamoo", lam=0.0, eps=EPS, alpha=ALPHA, steps=4, seed=3).run(x, y)
    torch.testing.assert_close(tamoo.x_adv, moo.x_adv)
    torch.testing.assert_close(tamoo.weights, moo.weights)


def test_one_task_is_signed_gradient_ascent(batch):
    """With one task every weighting gives w = 1: the steps are PGD's from the same start."""
    x, y = batch
    tasks = EnsembleTasks([small_model(0)])
    results = [MultiObjectivePGD(tasks, weighting=w, eps=EPS, alpha=ALPHA, steps=4, seed=5).run(x, y).x_adv
               for w in WEIGHTINGS]
    for other in results[1:]:
        torch.testing.assert_close(other, results[0])


def test_the_seed_makes_it_deterministic(batch):
    x, y = batch
    tasks = task_sets()["eot-stochastic"]
    runs = [MultiObjectivePGD(tasks, weighting="tamoo", eps=EPS, alpha=ALPHA, steps=3, seed=7).run(x, y)
            for _ in range(2)]
    assert torch.equal(runs[0].x_adv, runs[1].x_adv)


def wang_minmax_update(W, losses, gamma, beta):
    """Wang et al. 2021's minmax_ens inner step, transcribed (their F is the attacker's loss to
    minimise, −f here): ``G = F − γ(W − 1/K); W += G/β; W = proj_prob_simplex(W)``."""
    K = W.shape[1]
    F = -losses
    G = F - gamma * (W - 1 / K)
    W = W + 1.0 / beta * G
    return reference.simplex_project(W)


def test_minmax_update_is_the_authors(batch):
    x, _ = batch
    tasks = task_sets()["ens"]
    attack = MultiObjectivePGD(tasks, weighting="minmax")
    torch.manual_seed(0)
    W = torch.softmax(torch.randn(64, 3), dim=1)
    losses = torch.rand(64, 3) * 5
    torch.testing.assert_close(attack._minmax_update(W, losses), wang_minmax_update(W, losses, 3.0, 40.0))


def test_minmax_moves_weight_to_the_worst_task():
    """The inner minimisation puts more weight on the task with the smaller loss."""
    attack = MultiObjectivePGD(task_sets()["ens"], weighting="minmax")
    W = torch.full((1, 3), 1 / 3)
    updated = attack._minmax_update(W, torch.tensor([[0.1, 2.0, 4.0]]))
    assert updated[0, 0] > 1 / 3 > updated[0, 2]


def test_metrics():
    achieved = torch.tensor([[True, True], [True, False], [False, False], [True, True]])
    metrics = multi_objective_metrics(achieved)
    assert metrics["a_all"] == 50.0 and metrics["a_avg"] == 62.5 and metrics["a_i"] == [75.0, 50.0]


def test_the_attack_is_stronger_than_no_attack():
    """On a model that classifies its data, 20 steps of any weighting fool more tasks than the start."""
    torch.manual_seed(0)
    x = torch.rand(64, 1, 4, 4)
    members = [small_model(i) for i in range(2)]
    with torch.no_grad():
        y = members[0](x).argmax(dim=1)
    tasks = EnsembleTasks(members)
    for weighting in WEIGHTINGS:
        before = MultiObjectivePGD(tasks, weighting=weighting, eps=EPS, alpha=ALPHA, steps=0, seed=0).run(x, y)
        after = MultiObjectivePGD(tasks, weighting=weighting, eps=EPS, alpha=ALPHA, steps=20, seed=0).run(x, y)
        assert multi_objective_metrics(after.achieved)["a_avg"] > multi_objective_metrics(before.achieved)["a_avg"]


@pytest.mark.parametrize("make, error, match", [
    (lambda: EnsembleTasks([]), ValueError, "at least one member"),
    (lambda: EnsembleTasks(small_model(0)), TypeError, "ensemble must be"),
    (lambda: TransformTasks(small_model(0), ()), ValueError, "transforms must name at least one"),
    (lambda: TransformTasks(small_model(0), ("blur",)), ValueError, "transforms"),
    (lambda: UniversalTasks(small_model(0), group=0), ValueError, "group"),
    (lambda: MultiObjectivePGD(small_model(0)), TypeError, "tasks must be"),
    (lambda: MultiObjectivePGD(EnsembleTasks([small_model(0)]), weighting="max"), ValueError, "weighting"),
    (lambda: MultiObjectivePGD(EnsembleTasks([small_model(0)]), loss="mse"), ValueError, "loss"),
    (lambda: MultiObjectivePGD(EnsembleTasks([small_model(0)]), solver="newton"), ValueError, "solver"),
    (lambda: MultiObjectivePGD(EnsembleTasks([small_model(0)]), solver="pgd", solver_lr=0.1), ValueError, "solver_lr"),
    (lambda: MultiObjectivePGD(EnsembleTasks([small_model(i) for i in range(3)]), solver="exact2"), ValueError,
     "exact2"),
    (lambda: MultiObjectivePGD(EnsembleTasks([small_model(0)]), lam=-1.0), ValueError, "lam"),
    (lambda: MultiObjectivePGD(EnsembleTasks([small_model(0)]), steps=-1), ValueError, "steps"),
    (lambda: MultiObjectivePGD(EnsembleTasks([small_model(0)]), solver_steps=0), ValueError, "solver_steps"),
])
def test_bad_input_is_named(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_uni_needs_whole_groups(batch):
    x, y = batch
    attack = MultiObjectivePGD(UniversalTasks(small_model(0), group=3), steps=1)
    with pytest.raises(ValueError, match="multiple of group=3"):
        attack(x, y)


def test_labels_out_of_range_are_named(batch):
    x, _ = batch
    attack = MultiObjectivePGD(task_sets()["ens"], steps=1)
    with pytest.raises(ValueError, match="labels"):
        attack(x, torch.full((8,), 7))
