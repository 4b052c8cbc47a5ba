"""Host synchronisations: what the attacks and one training step of every method read back
from the device, counted on the CPU as a stand-in for the GPU, where each read stalls the host
until the device has caught up.

What a read dispatches to in torch 2.14 (checked by test_the_counter_sees_every_read):
``.item()``, ``bool(t)``, ``int(t)``, ``float(t)``, ``torch.is_nonzero(t)`` and ``if t:`` all
reach a TorchDispatchMode as ``aten._local_scalar_dense`` (``aten.is_nonzero`` never does: it
decomposes before the Python dispatch key); ``torch.equal`` and ``torch.allclose`` as
themselves; ``.tolist()`` and ``.numpy()`` of a CPU tensor reach it not at all (the C++ reads
the storage directly), so the counter wraps those two methods. Ops whose output shape depends on
values (``nonzero``, ``masked_select``, ``unique``, boolean indexing) synchronise on a GPU too,
and are counted as well.

Each read is attributed to the innermost function of the fastadv package on the stack that is not
a check of fastadv._validate (the caller of the check), so that the tables below say where every
synchronisation comes from.
"""
from __future__ import annotations


import numpy as np
import pytest
import torch
from torch import nn

import fastadv
from fastadv.attacks import CW, FGSM, PGD, PGDL2, UDRAttack
from fastadv.ensemble import Ensemble
from fastadv.methods import METHODS, build_method, method_parameters
from fastadv.models import NormalizedModel
from tests.helpers import reads

@pytest.mark.parametrize("read", [
    lambda t: t[0].item(), lambda t: bool(t[0]), lambda t: int(t[0]), lambda t: float(t[0]),
    lambda t: torch.is_nonzero(t[:1]), lambda t: 1 if t[0] else 0, lambda t: t.tolist(), lambda t: np.asarray(t),
    lambda t: t.numpy(), lambda t: torch.equal(t, t), lambda t: torch.allclose(t, t), lambda t: t.nonzero(),
    lambda t: t[t > 1], lambda t: t.__setitem__(t > 1, 0.0), lambda t: torch.unique(t), lambda t: torch.where(t > 1),
    lambda t: fastadv._C.label_range(t.long()),
], ids=["item", "bool", "int", "float", "is_nonzero", "if", "tolist", "asarray", "numpy", "equal", "allclose",
        "nonzero", "mask_index", "mask_assign", "unique", "where", "label_range"])
def test_the_counter_sees_every_read(read):
    assert reads(lambda: read(torch.tensor([1.0, 2.0, 3.0]))) == {"outside fastadv": 1}
    assert reads(lambda: torch.tensor([1.0, 2.0]).mul(2).sum().sqrt()) == {}


# ----------------------------------------------------------------------------- attacks
def tiny_model() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4))


@pytest.fixture(scope="module")
def batch():
    torch.manual_seed(0)
    return tiny_model(), torch.rand(6, 1, 4, 4), torch.randint(0, 4, (6,))


LABELS = {"attacks.base.check_labels": 1}  # the labels' range, on the first logits of a call


@pytest.mark.parametrize("loss", ["ce", "kl", "cw", "margin_ce"])
@pytest.mark.parametrize("eps, expected", [
    pytest.param(0.1, LABELS, id="float-eps"),
    # A per-sample eps is read where it enters (the constructor), and nowhere else: the random
    # start is the unchecked one.
    pytest.param(torch.full((6,), 0.1), {**LABELS, "attacks.base.__init__": 1}, id="per-sample-eps"),
])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_no_read_per_attack_step(batch, norm, loss, eps, expected):
    model, x, y = batch
    for steps in (1, 10):
        found = reads(lambda: PGD(model, eps=eps, alpha=0.02, steps=steps, norm=norm, loss=loss)(x, y))
        assert found == expected, f"{steps} steps"


def test_per_sample_radii_given_to_the_call_are_read_once(batch):
    model, x, y = batch
    attack = PGD(model, steps=10, init=None)
    found = reads(lambda: attack(x, y, eps=torch.full((6,), 0.1), alpha=torch.full((6,), 0.02)))
    assert found == {**LABELS, "attacks.base.__call__": 1, "attacks.pgd.perturb": 1}


@pytest.mark.parametrize("eps, expected", [
    pytest.param(0.1, LABELS, id="float-eps"),
    pytest.param(torch.full((6,), 0.1), {**LABELS, "attacks.base.__init__": 1}, id="per-sample-eps"),
])
def test_restarts_read_nothing_more(batch, eps, expected):
    model, x, y = batch
    assert reads(lambda: PGD(model, eps=eps, steps=4, restarts=3)(x, y)) == expected


@pytest.mark.parametrize("make", [
    lambda model, steps: FGSM(model),
    lambda model, steps: CW(model, steps=steps),
    lambda model, steps: PGDL2(model, steps=steps),
    lambda model, steps: PGD(model, steps=steps, loss="kl", init="normal", amp_dtype=torch.bfloat16),
    lambda model, steps: UDRAttack(model, steps=steps, lam=0.5, cost="l2"),
    lambda model, steps: UDRAttack(model, steps=steps, lam=2.0, loss="kl_reverse"),
], ids=["fgsm", "cw", "pgdl2", "kl-bfloat16-autocast", "udr-l2", "udr-linf-kl-reverse"])
def test_the_other_attacks_read_only_the_labels(batch, make):
    model, x, y = batch
    for steps in (1, 10):
        assert reads(lambda: make(model, steps)(x, y)) == LABELS, f"{steps} steps"


def test_a_channels_last_batch_reads_only_the_labels(batch):
    """Through a flatten its gradient comes back contiguous: the attack lays it out like the
    batch, reading nothing."""
    _, _, y = batch
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 4))
    x = torch.rand(6, 3, 4, 4).contiguous(memory_format=torch.channels_last)
    for steps in (1, 10):
        assert reads(lambda: PGD(model, steps=steps)(x, y)) == LABELS, f"{steps} steps"


@pytest.mark.parametrize("weighting", ["uniform", "minmax", "moo", "tamoo"])
@pytest.mark.parametrize("solver", ["softmax-gd", "apgd"])
@pytest.mark.parametrize("kind", ["ens", "uni", "eot"])
def test_multi_objective_attacks_read_only_the_labels(batch, weighting, solver, kind):
    """Every problem's weights are solved on the device: no read per step, whatever the task set."""
    from fastadv.attacks.multi_objective import EnsembleTasks, MultiObjectivePGD, TransformTasks, UniversalTasks

    model, x, y = batch
    tasks = {"ens": lambda: EnsembleTasks([model, tiny_model(), tiny_model()]),
             "uni": lambda: UniversalTasks(model, group=2),
             "eot": lambda: TransformTasks(model, ("identity", "hflip", "rotation"), stochastic=True)}[kind]()
    for steps in (1, 10):
        attack = MultiObjectivePGD(tasks, weighting=weighting, solver=solver, steps=steps, seed=0)
        assert reads(lambda: attack(x, y)) == LABELS, f"{steps} steps"


@pytest.mark.parametrize("loss", ["ce", "kl"])
def test_early_stop_reads_once_per_step(batch, loss):
    """The batch is labelled with the model's own predictions and the radius is tiny, so no
    sample is ever fooled and the loop runs all its steps."""
    model, x, _ = batch
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    for steps in (1, 10):
        attack = PGD(model, eps=1e-6, alpha=1e-7, steps=steps, loss=loss, init="normal", early_stop=True)
        assert reads(lambda: attack(x, y)) == {**LABELS, "attacks.pgd._ascend": steps}


# ----------------------------------------------------------------------------- methods
# One training step (the method's loss, backward, an SGD step) of every method, by origin: the
# method's attack reads its labels once (LABELS), and each checked logits op with labels that
# the method's loss calls reads their range once (ops.logits._labels): mart_loss (MART, MART-LMA),
# smoothed_cross_entropy (label smoothing; LRM twice, for y and for its mixup partner),
# margin_sq_hinge (every LMA method) and boosted_cross_entropy (LMA-AT).
LOGITS_LABELS = "ops.logits._labels"
UDR_LAMBDA = "attacks.udr.perturb"
METHOD_READS = {
    "standard": {},
    "pgd_at": LABELS,
    "trades": LABELS,
    "mart": {**LABELS, LOGITS_LABELS: 1},
    "alp": LABELS,
    "label_smoothing": {LOGITS_LABELS: 1},
    "lrm": {**LABELS, LOGITS_LABELS: 2},
    "pgd_at_lma": {**LABELS, LOGITS_LABELS: 1},
    "trades_lma": {**LABELS, LOGITS_LABELS: 1},
    "mart_lma": {**LABELS, LOGITS_LABELS: 2},
    "lma_at": {**LABELS, LOGITS_LABELS: 2},
    "ltd": LABELS,
    # The contrastive terms are the family's unchecked ops: the attack's read of the labels is all.
    "adr": LABELS,
    "ascl": LABELS,
    # Ensembles of 3 members: ALS attacks once per reference turn (its separation term calls the
    # unchecked masked_gram); ADP, CCE (one batched attack for every member) and ADV-EN once.
    "als": {"attacks.base.check_labels": 3},
    "adp": LABELS,
    "cce": LABELS,
    "adv_en": LABELS,
    "tamoo_at": LABELS,
    # UDR: the fused step takes λ as a float, so the attack reads the method's λ (a device
    # tensor, updated without a read) once per call.
    "udr_pgd": {**LABELS, UDR_LAMBDA: 1},
    "udr_trades": {**LABELS, UDR_LAMBDA: 1},
    "udr_mart": {**LABELS, UDR_LAMBDA: 1},
}
# A single-model method training an ensemble's 3 members (seed 000's protocol): one attack per
# reference turn.
MEMBERS_READS = {"trades": {"attacks.base.check_labels": 3}, "pgd_at": {"attacks.base.check_labels": 3},
                 "adr": {"attacks.base.check_labels": 3}, "ascl": {"attacks.base.check_labels": 3},
                 "udr_trades": {"attacks.base.check_labels": 3, UDR_LAMBDA: 3}}
# Methods whose loss takes the penultimate features (model.forward_with_features): their tiny
# model is behind NormalizedModel, which reads the features through a hook on its last Linear.
FEATURE_METHODS = ("adr", "ascl")


def student_model(name) -> nn.Module:
    if name in FEATURE_METHODS:
        return NormalizedModel(tiny_model(), mean=(0.5,), std=(0.25,))
    return tiny_model()


def test_the_table_covers_every_method():
    assert set(METHOD_READS) == set(METHODS)


@pytest.mark.parametrize("name, members", [(name, None) for name in sorted(METHOD_READS)]
                         + [(name, 3) for name in sorted(MEMBERS_READS)])
def test_one_training_step_reads_a_fixed_number(batch, name, members):
    model, x, y = batch
    expected = METHOD_READS[name] if members is None else MEMBERS_READS[name]
    if members is None and METHODS[name].ensemble:
        members = 3
    for steps in (1, 10):
        options = {"teacher": tiny_model()} if name == "ltd" else {}
        if "steps" in method_parameters(name):
            options["steps"] = steps
        method = build_method(name, **options)
        student = student_model(name) if members is None else Ensemble([student_model(name) for _ in range(members)])
        optimizer = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        method.prepare(student, 10)

        def training_step():  # the trainer's: one optimiser step per turn
            for loss, _ in method.turns(student, x, y):
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()

        assert reads(training_step) == expected, f"attack of {steps} steps"
