"""The evaluation suite (METHODS.md section 6): its attacks, each declared once in :data:`SUITE`,
and :func:`robust_accuracy`, one pass over the held-out split under all of them.

Every attack maps (x, y) to adversarial inputs and sees every sample; a sample counts as robust
in the worst case only if no attack run fooled it. The counts are kept on the device and read
back once, at the end of the pass.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

import torch

from ..attacks import FGSM, PGD

AUTOATTACK_MISSING = "AutoAttack needs torchattacks, the optional extra: pip install 'fastadv[eval]'"
#: the queries of the stand-alone Square attack, as in AutoAttack's standard version
SQUARE_QUERIES = 5000


@dataclass(frozen=True)
class EvalAttack:
    """One attack of the suite: its name (``fastadv eval --attacks``), the label of its table
    row, and ``build(model, eps, norm, num_classes, generator, seed)``. ``default``: run
    unless the attacks are chosen; ``linf_only``: left out under another threat model;
    ``torchattacks``: needs the optional extra (left out, with a note, when it is missing)."""
    name: str
    label: str
    build: Callable
    default: bool = True
    linf_only: bool = False
    torchattacks: bool = False


def autoattack_available() -> bool:
    try:
        import torchattacks  # noqa: F401
    except ImportError:
        return False
    return True


def missing_extra(attack: EvalAttack) -> str:
    """The note of an attack left out because torchattacks is missing."""
    return AUTOATTACK_MISSING.replace("AutoAttack", attack.label, 1)


def _torchattacks(attack: str):
    if not autoattack_available():
        raise ImportError(missing_extra(SUITE[attack]))
    import torchattacks

    return torchattacks


def _autoattack(model, eps, norm, num_classes, generator, seed):
    return _torchattacks("autoattack").AutoAttack(model, norm="Linf" if norm == "linf" else "L2", eps=eps,
                                                  version="standard", n_classes=num_classes, seed=seed)


def _square(model, eps, norm, num_classes, generator, seed):
    """Square (Andriushchenko et al. 2020) with AutoAttack's settings: 5000 queries, one restart,
    p_init 0.8, the margin loss."""
    return _torchattacks("square").Square(model, norm="Linf" if norm == "linf" else "L2", eps=eps,
                                          n_queries=SQUARE_QUERIES, n_restarts=1, p_init=0.8, loss="margin",
                                          resc_schedule=True, seed=seed)


def _pgd(steps, **options):
    """PGD of ``steps`` steps with the suite's step size α = ε/4 and a uniform start."""
    return lambda model, eps, norm, num_classes, generator, seed: PGD(
        model, eps=eps, alpha=eps / 4, steps=steps, norm=norm, generator=generator, **options)


#: the evaluation attacks by name, in the order of the table's rows. PGD-1000 and Square-5000
#: run only when asked for: PGD-1000 checks a robustness that PGD-20 may overstate (seed 001
#: shows label smoothing's collapsing under 1000 steps); Square-5000, AutoAttack's black-box
#: part on its own, shows gradient masking (a model masks its gradients where Square beats PGD).
SUITE: dict[str, EvalAttack] = {attack.name: attack for attack in (
    EvalAttack("fgsm", "FGSM", lambda model, eps, *_: FGSM(model, eps=eps), linf_only=True),
    EvalAttack("pgd20", "PGD-20", _pgd(20)),
    EvalAttack("pgd100", "PGD-100", _pgd(100)),
    EvalAttack("pgd1000", "PGD-1000", _pgd(1000), default=False),
    # The CW margin loss clipped at κ (attacks.losses.CW_KAPPA), 30 steps.
    EvalAttack("cw", "CW-PGD-30", _pgd(30, loss="cw")),
    EvalAttack("autoattack", "AutoAttack", _autoattack, torchattacks=True),
    EvalAttack("square", "Square-5000", _square, default=False, torchattacks=True),
)}
ATTACKS = tuple(name for name, attack in SUITE.items() if attack.default)
EXTRA_ATTACKS = tuple(name for name, attack in SUITE.items() if not attack.default)
#: the label of every row of a results table
LABELS = {"clean": "clean", **{name: attack.label for name, attack in SUITE.items()}, "worst_case": "worst case"}


def build_attacks(model, eps: float, norm: str = "linf", num_classes: int = 10, names=ATTACKS,
                  seed: int = 0) -> dict[str, Callable]:
    """The attacks of the evaluation suite by name, those of ``names`` that apply under ``norm``;
    each maps (x, y) to adversarial inputs. The PGD attacks share one generator seeded with ``seed``."""
    unknown = [name for name in names if name not in SUITE]
    if unknown:
        raise ValueError(f"attacks: unknown {sorted(unknown)}; choose from {', '.join(SUITE)}")
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    return {name: SUITE[name].build(model, eps, norm, num_classes, generator, seed)
            for name in names if norm == "linf" or not SUITE[name].linf_only}


def batches(dataset, indices: Sequence[int], batch_size: int, device, progress: bool) -> Iterator:
    """(x, y) batches of the samples ``indices`` of ``dataset`` on ``device``."""
    from tqdm import tqdm

    for start in tqdm(range(0, len(indices), batch_size), desc="evaluating", disable=None if progress else True,
                      leave=False):
        batch = [dataset[i] for i in indices[start:start + batch_size]]
        x = torch.stack([b[0] for b in batch]).to(device)
        yield x, torch.as_tensor([int(b[1]) for b in batch], device=x.device)


class Tally:
    """One model's correct counts (on the device: read back once, at the end of the pass) and
    seconds per attack."""

    def __init__(self, attacks, device):
        self.correct = {name: torch.zeros((), dtype=torch.int64, device=device)
                        for name in ["clean", *attacks, "worst_case"]}
        self.seconds = {name: 0.0 for name in attacks}

    def run(self, model, x, y, attacks: dict[str, Callable], keep: Optional[str] = None):
        """Clean and each attack on the batch (x, y); returns the adversarial examples of the
        attack ``keep`` (None if it is not given)."""
        with torch.no_grad():
            robust = model(x).argmax(dim=1) == y
        self.correct["clean"] += robust.sum()
        kept = None
        for name, attack in attacks.items():
            started = time.perf_counter()
            x_adv = attack(x, y)
            with torch.no_grad():
                right = model(x_adv).argmax(dim=1) == y
            self.seconds[name] += time.perf_counter() - started
            self.correct[name] += right.sum()
            robust &= right
            if name == keep:
                kept = x_adv
        self.correct["worst_case"] += robust.sum()
        return kept

    def counts(self) -> torch.Tensor:
        return torch.stack(list(self.correct.values()))

    def result(self, counts: list[int], samples: int) -> dict:
        """The accuracies of :func:`robust_accuracy` from ``counts``, :meth:`counts` read back."""
        correct = dict(zip(self.correct, counts))
        return {"accuracy": {name: count / samples if samples else math.nan for name, count in correct.items()},
                "samples": samples, "correct": correct, "seconds": dict(self.seconds)}


def read_back(tensors: list[torch.Tensor]) -> list:
    """Every tensor's values in one host read: integer tensors as ints, floating ones as floats."""
    values = torch.cat([t.reshape(-1).double() for t in tensors]).tolist()
    out, position = [], 0
    for t in tensors:
        chunk = values[position:position + t.numel()]
        position += t.numel()
        out.append([int(v) for v in chunk] if not t.is_floating_point() else chunk)
    return out


def sample_indices(dataset, size, indices) -> Sequence[int]:
    """``indices``, or the first ``size`` samples of ``dataset`` (default: all)."""
    return range(len(dataset) if size is None else min(size, len(dataset))) if indices is None else indices


def robust_accuracy(model, dataset, attacks: dict[str, Callable], device, batch_size: int = 256,
                    size: int | None = None, progress: bool = True,
                    indices: Optional[Sequence[int]] = None) -> dict:
    """Accuracy on clean inputs and under each attack, and the worst case over all of them, on
    the first ``size`` samples of ``dataset`` (default: all), or on the samples ``indices``
    (a distributed evaluation gives each process its share). ``correct`` holds the counts
    behind each accuracy, for adding up the shares. An :class:`~fastadv.ensemble.Ensemble` is
    one model here (its combined output); :func:`~fastadv.evaluate.ensemble_accuracy` adds its members."""
    indices = sample_indices(dataset, size, indices)
    tally = Tally(attacks, device)
    was_training = model.training
    model.eval()
    for x, y in batches(dataset, indices, batch_size, device, progress):
        tally.run(model, x, y, attacks)
    model.train(was_training)
    (counts,) = read_back([tally.counts()])
    return tally.result(counts, len(indices))
