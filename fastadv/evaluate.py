"""Robust-accuracy evaluation (METHODS.md section 6): `fastadv eval RUN_DIR_OR_CHECKPOINT`.

Clean accuracy, FGSM, PGD-20 and PGD-100 (α = ε/4, uniform start; PGD-1000 on request), CW-PGD (the CW margin
loss clipped at κ = 50, 30 steps, α = ε/4) and AutoAttack (standard version, through
torchattacks, the optional extra ``fastadv[eval]``), plus the worst case over every attack
run: a sample counts as robust only if no attack fooled it. Every attack sees every sample.

An ensemble run (:class:`~fastadv.ensemble.Ensemble`, METHODS.md sections 3 and 6) is evaluated
as the ensemble (its combined output, attacked white-box as one model) and as each of its
members (each attacked white-box on its own, by the same attacks with the same seed, so a
member's figures are those of evaluating it alone), in one pass over the test set, plus seed
000's diversity metrics (Table 1):

- the transfer matrix of PGD-20 between members: ``T[i][j]`` is the accuracy of member j on the
  PGD-20 examples crafted on member i (the ones of member i's own PGD-20 row, so the diagonal is
  each member's PGD-20 accuracy);
- the mean pairwise masked cosine of the members' logits: the mean over samples and over member
  pairs i < j of ``cos_m(z_i, z_j)``, the true class masked out, on the clean inputs and on the
  PGD-20 examples of the ensemble (its own PGD-20 row).

PGD-20 is therefore always run on an ensemble: added to the attacks, with a note, when not asked for.

eval.json (beside the checkpoint: ``eval.json`` in a run folder, else ``<checkpoint>.eval.json``)
holds ``accuracy`` (name -> accuracy: ``clean``, each attack, ``worst_case``), ``correct`` (the
counts behind them), ``seconds`` (per attack), ``samples``, ``checkpoint``, ``dataset``,
``method``, ``model``, ``eps``, ``norm``, ``notes`` and ``info``; for an ensemble ``accuracy``,
``correct`` and ``seconds`` are the ensemble's, and it adds

- ``models`` (the members' model names) and ``combine`` ("prob" or "logit");
- ``members``: one dict per member, in order, ``{"model", "accuracy", "correct", "seconds"}``
  (the keys of a single model's evaluation);
- ``transfer``: ``{"attack": "pgd20", "accuracy": T, "correct": counts}``, both [M][M] lists,
  row i the examples crafted on member i, column j the member evaluated;
- ``masked_cosine``: ``{"clean": ..., "pgd20": ...}`` (null for an ensemble of one member);
- ``transfer_plot``: the heat map of T, written beside eval.json (``transfer.png`` in a run
  folder, else ``<checkpoint>.transfer.png``).

The counts are kept on the device and read back once, at the end of the pass.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import torch

from .attacks import FGSM, PGD
from .data import load_dataset
from .ensemble import Ensemble
from .ops import logits as logits_ops
from .runs import atomic_write_text, load_model

ATTACKS = ("fgsm", "pgd20", "pgd100", "cw", "autoattack")
# Run only when asked for: PGD-1000 checks a robustness that PGD-20 may overstate (seed 001 shows
# label smoothing's collapsing under 1000 steps); Square-5000, AutoAttack's black-box part on its
# own, shows gradient masking (a model masks its gradients where Square beats PGD).
EXTRA_ATTACKS = ("pgd1000", "square")
LABELS = {"clean": "clean", "fgsm": "FGSM", "pgd20": "PGD-20", "pgd100": "PGD-100", "pgd1000": "PGD-1000",
          "cw": "CW-PGD-30", "autoattack": "AutoAttack", "square": "Square-5000", "worst_case": "worst case"}
#: the queries of the stand-alone Square attack, as in AutoAttack's standard version
SQUARE_QUERIES = 5000
AUTOATTACK_MISSING = ("AutoAttack needs torchattacks, the optional extra: pip install 'fastadv[eval]'")
# The attack whose examples an ensemble's transfer matrix and adversarial masked cosine are measured on.
TRANSFER_ATTACK = "pgd20"


def autoattack_available() -> bool:
    try:
        import torchattacks  # noqa: F401
    except ImportError:
        return False
    return True


def build_attacks(model, eps: float, norm: str = "linf", num_classes: int = 10, names=ATTACKS,
                  seed: int = 0) -> dict[str, Callable]:
    """The attacks of the evaluation suite by name; each maps (x, y) to adversarial inputs."""
    unknown = set(names) - set(ATTACKS + EXTRA_ATTACKS)
    if unknown:
        raise ValueError(f"attacks: unknown {sorted(unknown)}; choose from {', '.join(ATTACKS + EXTRA_ATTACKS)}")
    alpha = eps / 4
    generator_device = next(model.parameters()).device
    generator = torch.Generator(device=generator_device).manual_seed(seed)
    factories = {
        "fgsm": lambda: FGSM(model, eps=eps),
        "pgd20": lambda: PGD(model, eps=eps, alpha=alpha, steps=20, norm=norm, generator=generator),
        "pgd100": lambda: PGD(model, eps=eps, alpha=alpha, steps=100, norm=norm, generator=generator),
        "pgd1000": lambda: PGD(model, eps=eps, alpha=alpha, steps=1000, norm=norm, generator=generator),
        "cw": lambda: PGD(model, eps=eps, alpha=alpha, steps=30, norm=norm, loss="cw", kappa=50.0,
                          generator=generator),
        "autoattack": lambda: _autoattack(model, eps, norm, num_classes, seed),
        "square": lambda: _square(model, eps, norm, seed),
    }
    if norm != "linf":
        factories.pop("fgsm")
    return {name: factories[name]() for name in names if name in factories}


def _autoattack(model, eps, norm, num_classes, seed):
    if not autoattack_available():
        raise ImportError(AUTOATTACK_MISSING)
    import torchattacks

    return torchattacks.AutoAttack(model, norm="Linf" if norm == "linf" else "L2", eps=eps, version="standard",
                                   n_classes=num_classes, seed=seed)


def _square(model, eps, norm, seed):
    """Square (Andriushchenko et al. 2020) with AutoAttack's settings: 5000 queries, one restart,
    p_init 0.8, the margin loss."""
    if not autoattack_available():
        raise ImportError(AUTOATTACK_MISSING.replace("AutoAttack", LABELS["square"], 1))
    import torchattacks

    return torchattacks.Square(model, norm="Linf" if norm == "linf" else "L2", eps=eps, n_queries=SQUARE_QUERIES,
                               n_restarts=1, p_init=0.8, loss="margin", resc_schedule=True, seed=seed)


def _batches(dataset, indices: Sequence[int], batch_size: int, device, progress: bool) -> Iterator:
    from tqdm import tqdm

    for start in tqdm(range(0, len(indices), batch_size), desc="evaluating", disable=None if progress else True,
                      leave=False):
        batch = [dataset[i] for i in indices[start:start + batch_size]]
        x = torch.stack([b[0] for b in batch]).to(device)
        yield x, torch.as_tensor([int(b[1]) for b in batch], device=x.device)


class _Tally:
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


def _read_back(tensors: list[torch.Tensor]) -> list:
    """Every tensor's values in one host read: integer tensors as ints, floating ones as floats."""
    values = torch.cat([t.reshape(-1).double() for t in tensors]).tolist()
    out, position = [], 0
    for t in tensors:
        chunk = values[position:position + t.numel()]
        position += t.numel()
        out.append([int(v) for v in chunk] if not t.is_floating_point() else chunk)
    return out


def _indices(dataset, size, indices) -> Sequence[int]:
    return range(len(dataset) if size is None else min(size, len(dataset))) if indices is None else indices


def robust_accuracy(model, dataset, attacks: dict[str, Callable], device, batch_size: int = 256,
                    size: int | None = None, progress: bool = True,
                    indices: Optional[Sequence[int]] = None) -> dict:
    """Accuracy on clean inputs and under each attack, and the worst case over all of them, on
    the first ``size`` samples of ``dataset`` (default: all), or on the samples ``indices``
    (a distributed evaluation gives each process its share). ``correct`` holds the counts
    behind each accuracy, for adding up the shares. An :class:`~fastadv.ensemble.Ensemble` is
    one model here (its combined output); :func:`ensemble_accuracy` adds its members."""
    indices = _indices(dataset, size, indices)
    tally = _Tally(attacks, device)
    was_training = model.training
    model.eval()
    for x, y in _batches(dataset, indices, batch_size, device, progress):
        tally.run(model, x, y, attacks)
    model.train(was_training)
    (counts,) = _read_back([tally.counts()])
    return tally.result(counts, len(indices))


def pairwise_masked_cosine_sum(member_logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``Σ_b Σ_{i<j} cos_m(z_i(x_b), z_j(x_b))`` of [M, B, C] member logits and [B] labels
    (validated already: a contiguous int64 tensor in [0, C)), as a float64 tensor on their
    device: the sum over the batch of the upper triangle of the masked Gram matrix (seed 000's
    cos_m, METHODS.md section 3, masks the true class)."""
    members = member_logits.shape[0]
    gram = logits_ops.unchecked.masked_gram(member_logits.float(), y, True)
    upper = torch.triu_indices(members, members, offset=1, device=gram.device)
    return gram[:, upper[0], upper[1]].sum(dtype=torch.float64)


def ensemble_accuracy(ensemble: Ensemble, dataset, attacks: dict[str, Callable],
                      member_attacks: Sequence[dict[str, Callable]], device, batch_size: int = 256,
                      size: int | None = None, progress: bool = True,
                      indices: Optional[Sequence[int]] = None) -> dict:
    """:func:`robust_accuracy` of the ensemble's combined output under ``attacks``, plus, in the
    same pass over the data, ``members``: that of each member under its own suite
    ``member_attacks[i]`` (attacks built on that member); ``transfer``: the accuracy of member j
    on the PGD-20 examples crafted on member i (those of member i's PGD-20 row; the diagonal is
    each member's PGD-20 accuracy); and ``masked_cosine``: the mean over samples and member
    pairs i < j of cos_m(z_i, z_j) on the clean inputs (``clean``) and on the PGD-20 examples of
    the ensemble (``pgd20``), None with one member or more than ``MAX_MEMBERS`` (the most
    ``masked_gram`` takes). Every suite must hold ``"pgd20"``."""
    if not isinstance(ensemble, Ensemble):
        raise TypeError(f"ensemble_accuracy: ensemble must be a fastadv.ensemble.Ensemble, got "
                        f"{type(ensemble).__name__}")
    members = list(ensemble.members)
    if len(member_attacks) != len(members):
        raise ValueError(f"ensemble_accuracy: member_attacks must hold one suite per member ({len(members)}), "
                         f"got {len(member_attacks)}")
    for owner, suite in [("attacks", attacks), *((f"member_attacks[{i}]", s) for i, s in enumerate(member_attacks))]:
        if TRANSFER_ATTACK not in suite:
            raise ValueError(f"ensemble_accuracy: {owner} must hold {TRANSFER_ATTACK!r} (the transfer matrix and the "
                             f"masked cosine are measured on its examples), got {sorted(suite)}")
    indices = _indices(dataset, size, indices)
    count = len(members)
    ensemble_tally = _Tally(attacks, device)
    member_tallies = [_Tally(suite, device) for suite in member_attacks]
    transfer = torch.zeros(count, count, dtype=torch.int64, device=device)
    cosine = {"clean": torch.zeros((), dtype=torch.float64, device=device),
              TRANSFER_ATTACK: torch.zeros((), dtype=torch.float64, device=device)}
    was_training = ensemble.training
    ensemble.eval()
    for x, y in _batches(dataset, indices, batch_size, device, progress):
        ensemble_adv = ensemble_tally.run(ensemble, x, y, attacks, keep=TRANSFER_ATTACK)
        member_adv = [tally.run(member, x, y, suite, keep=TRANSFER_ATTACK)
                      for member, tally, suite in zip(members, member_tallies, member_attacks)]
        with torch.no_grad():
            for i, x_adv in enumerate(member_adv):
                for j, member in enumerate(members):
                    if j != i:  # the diagonal is member i's own PGD-20 row
                        transfer[i, j] += (member(x_adv).argmax(dim=1) == y).sum()
            if 1 < count <= logits_ops.MAX_MEMBERS:
                # The attacks above checked y against the logits' classes.
                cosine["clean"] += pairwise_masked_cosine_sum(ensemble.member_logits(x), y)
                cosine[TRANSFER_ATTACK] += pairwise_masked_cosine_sum(ensemble.member_logits(ensemble_adv), y)
    ensemble.train(was_training)
    tallies = [ensemble_tally, *member_tallies]
    read = _read_back([t.counts() for t in tallies] + [transfer, torch.stack(list(cosine.values()))])
    samples = len(indices)
    results = ensemble_tally.result(read[0], samples)
    results["members"] = [tally.result(counts, samples) for tally, counts in zip(member_tallies, read[1:-2])]
    matrix = [read[-2][i * count:(i + 1) * count] for i in range(count)]
    for i, member in enumerate(results["members"]):
        matrix[i][i] = member["correct"][TRANSFER_ATTACK]
    results["transfer"] = {"attack": TRANSFER_ATTACK, "correct": matrix,
                           "accuracy": [[c / samples if samples else math.nan for c in row] for row in matrix]}
    # masked_gram takes up to MAX_MEMBERS members; beyond, the cosine is not measured (None).
    pairs = samples * count * (count - 1) // 2 if count <= logits_ops.MAX_MEMBERS else 0
    results["masked_cosine"] = {name: total / pairs if pairs else None for name, total in zip(cosine, read[-1])}
    return results


def plot_transfer(transfer: list[list[float]], path: Path, title: str = "") -> None:
    """A heat map of the transfer matrix (rows: the member the examples were crafted on,
    columns: the member evaluated), written to a temporary file beside ``path``, then renamed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = len(transfer)
    figure, axes = plt.subplots(figsize=(1.2 * count + 2.5, 1.2 * count + 1.5))
    image = axes.imshow(transfer, vmin=0.0, vmax=1.0, cmap="viridis")
    for i, row in enumerate(transfer):
        for j, value in enumerate(row):
            axes.text(j, i, f"{100 * value:.1f}%", ha="center", va="center", color="white" if value < 0.6 else "black")
    axes.set_xticks(range(count))
    axes.set_yticks(range(count))
    axes.set_xlabel("evaluated on member")
    axes.set_ylabel("crafted on member")
    axes.set_title(title)
    figure.colorbar(image, ax=axes, label="accuracy")
    figure.tight_layout()
    temporary = path.with_name(f".{path.stem}.tmp{path.suffix}")
    figure.savefig(temporary, dpi=100)
    plt.close(figure)
    os.replace(temporary, path)


def evaluate_run(path, attacks=ATTACKS, eps: float | None = None, size: int | None = None,
                 batch_size: int = 256, device=None, data_root=None, seed: int = 0, progress: bool = True,
                 write: bool = True) -> dict:
    """Evaluate a run folder or checkpoint on its dataset's held-out split; writes eval.json
    next to the checkpoint (and, for an ensemble, the transfer heat map). AutoAttack is left
    out, with a note, when torchattacks is missing. An ensemble run is evaluated by
    :func:`ensemble_accuracy`, each member by the same attacks as the ensemble, seeded alike."""
    model, config, info, checkpoint = load_model(path, device)
    device = next(model.parameters()).device
    eps = config["eps"] if eps is None else eps
    notes = []
    attacks = list(attacks)
    if not autoattack_available():
        for name in ("autoattack", "square"):
            if name in attacks:
                attacks.remove(name)
                notes.append(AUTOATTACK_MISSING.replace("AutoAttack", LABELS[name], 1))
    is_ensemble = isinstance(model, Ensemble)
    if is_ensemble and TRANSFER_ATTACK not in attacks:
        attacks.insert(0, TRANSFER_ATTACK)
        notes.append(f"{LABELS[TRANSFER_ATTACK]} added: an ensemble's transfer matrix and masked cosine are measured "
                     "on its examples")
    _, test_set, _ = load_dataset(config["dataset"], root=data_root or config.get("data_root"), augment=False,
                                  seed=config["seed"])
    suite = build_attacks(model, eps, config["norm"], info.num_classes, attacks, seed)
    if is_ensemble:
        member_suites = [build_attacks(member, eps, config["norm"], info.num_classes, attacks, seed)
                         for member in model.members]
        results = ensemble_accuracy(model, test_set, suite, member_suites, device, batch_size, size, progress)
        for name, member in zip(config["models"], results["members"]):
            member["model"] = name
    else:
        results = robust_accuracy(model, test_set, suite, device, batch_size, size, progress)
    results.update({"checkpoint": str(checkpoint), "dataset": config["dataset"], "method": config["method"],
                    "model": config["model"], "eps": eps, "norm": config["norm"], "notes": notes,
                    "info": dataclasses.asdict(info)})
    if is_ensemble:
        results.update({"models": list(config["models"]), "combine": config["combine"]})
    if write:
        in_run_folder = checkpoint.parent.joinpath("config.json").exists()
        out = checkpoint.with_name("eval.json") if in_run_folder else checkpoint.with_suffix(".eval.json")
        if is_ensemble:
            plot = checkpoint.with_name("transfer.png") if in_run_folder else checkpoint.with_suffix(".transfer.png")
            plot_transfer(results["transfer"]["accuracy"], plot,
                          f"{LABELS[TRANSFER_ATTACK]} transfer, {results['samples']} samples")
            results["transfer_plot"] = str(plot)
        atomic_write_text(json.dumps(results, indent=2) + "\n", out)
        results["written_to"] = str(out)
    return results


def _header(results: dict) -> str:
    if "members" in results:
        described = f"ensemble of {len(results['models'])}: {', '.join(results['models'])}; combine {results['combine']}"
    else:
        described = results["model"]
    return f"{results['method']} on {results['dataset']} ({described}), ε = {results['eps']:.4g} " \
           f"({results['norm']}), {results['samples']} test samples"


def _seconds(value) -> str:
    return "" if value is None else f"{value:.1f}"


def format_table(results: dict) -> str:
    """The printed table: one row per attack (accuracy and seconds); for an ensemble a column
    per model (the ensemble, then each member) with the seconds of the ensemble and of all the
    members, then the transfer matrix and the masked cosines."""
    accuracy = results["accuracy"]
    lines = [_header(results), ""]
    members = results.get("members")
    if members is None:
        lines += ["| attack | accuracy | seconds |", "|---|---|---|"]
        for name, value in accuracy.items():
            lines.append(f"| {LABELS.get(name, name)} | {100 * value:.2f}% | {_seconds(results['seconds'].get(name))} |")
    else:
        columns = ["ensemble", *(f"member {i}" for i in range(len(members)))]
        lines += ["| attack | " + " | ".join(columns) + " | seconds (ensemble) | seconds (members) |",
                  "|---" * (len(columns) + 3) + "|"]
        for name, value in accuracy.items():
            cells = [f"{100 * value:.2f}%", *(f"{100 * m['accuracy'][name]:.2f}%" for m in members)]
            member_seconds = None if name not in results["seconds"] else sum(m["seconds"][name] for m in members)
            lines.append(f"| {LABELS.get(name, name)} | " + " | ".join(cells) +
                         f" | {_seconds(results['seconds'].get(name))} | {_seconds(member_seconds)} |")
        transfer = results["transfer"]
        lines += ["", f"{LABELS[transfer['attack']]} transfer: accuracy of member j (column) on the examples crafted on "
                      "member i (row)", "",
                  "| crafted on | " + " | ".join(columns[1:]) + " |", "|---" * (len(members) + 1) + "|"]
        for i, row in enumerate(transfer["accuracy"]):
            lines.append(f"| member {i} | " + " | ".join(f"{100 * value:.2f}%" for value in row) + " |")
        cosine = results["masked_cosine"]
        if cosine["clean"] is None:
            lines += ["", "mean pairwise masked cosine of member logits: none (one member)"]
        else:
            lines += ["", f"mean pairwise masked cosine of member logits (true class masked, seed 000 Table 1): "
                          f"clean {cosine['clean']:.4f}, {LABELS[TRANSFER_ATTACK]} (the ensemble's examples) "
                          f"{cosine[TRANSFER_ATTACK]:.4f}"]
        if "transfer_plot" in results:
            lines.append(f"transfer heat map: {results['transfer_plot']}")
    lines += [f"note: {note}" for note in results.get("notes", [])]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- multi-objective attacks
TASK_SETS = ("ens", "uni", "eot")


def _load_models(paths, device):
    """(models, configs, info) of run folders or checkpoints: all on one dataset."""
    loaded = [load_model(path, device) for path in paths]
    datasets = {config["dataset"] for _, config, _, _ in loaded}
    if len(datasets) != 1:
        raise ValueError(f"paths: the runs must share a dataset, got {sorted(datasets)}")
    return [model for model, *_ in loaded], [config for _, config, _, _ in loaded], loaded[0][2]


def multi_objective_attack(paths, tasks: str = "ens", weightings=("uniform", "minmax", "moo", "tamoo"),
                           losses=("ce",), solvers=("softmax-gd",), eps: float | None = None,
                           alpha: float | None = None, steps: int = 100, lam: float = 100.0, group: int = 4,
                           transforms=None, stochastic: bool = False, size: int | None = None,
                           batch_size: int = 256, device=None, data_root=None, seed: int = 0,
                           progress: bool = True, out=None) -> dict:
    """Seed 003 ch. 4's evaluation: A-All, A-Avg and A-i of :class:`MultiObjectivePGD` for every
    (loss, weighting, solver), on the held-out split of the runs' dataset.

    ``tasks``: ``ens`` attacks the members of an ensemble, given as one ensemble run or as
    several runs (each a member; the ensemble averages their probabilities, as the seed's);
    ``uni`` (one δ per group of ``group`` images; the samples are cut to a multiple of it) and
    ``eot`` (the ``transforms`` families, all seven of seed 003 Table 9 by default) attack one
    model. ε defaults to the runs' training ε, α to ε/4 (the seed's 2/255 for 8/255). For ENS the
    robust accuracy of the ensemble's combined output under each attack is reported too. Writes
    the results as JSON to ``out`` (default ``attack-<tasks>.json`` beside the first checkpoint)."""
    from .attacks.multi_objective import (TRANSFORMS, EnsembleTasks, MultiObjectivePGD, TransformTasks, UniversalTasks,
                                          multi_objective_metrics)

    owner = "fastadv attack"
    if tasks not in TASK_SETS:
        raise ValueError(f"{owner}: tasks must be one of {TASK_SETS}, got {tasks!r}")
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not paths:
        raise ValueError(f"{owner}: paths must name at least one run folder or checkpoint")
    models, configs, info = _load_models(paths, device)
    device = next(models[0].parameters()).device
    if eps is None:
        radii = {config["eps"] for config in configs}
        if len(radii) != 1:
            raise ValueError(f"{owner}: the runs were trained with different ε {sorted(radii)}; give eps")
        eps = radii.pop()
    alpha = eps / 4 if alpha is None else alpha
    if tasks == "ens":
        if len(models) == 1:
            if not isinstance(models[0], Ensemble):
                raise ValueError(f"{owner}: ENS attacks the members of an ensemble: give an ensemble run or several "
                                 f"runs, got one single model ({paths[0]})")
            ensemble = models[0]
        else:
            if any(isinstance(m, Ensemble) for m in models):
                raise ValueError(f"{owner}: several runs make an ensemble of their models; an ensemble run cannot be one "
                                 "of them")
            ensemble = Ensemble(models, combine="prob")
        task_set = EnsembleTasks(ensemble)
        names = [config["model"] for config in configs] if len(models) > 1 else list(configs[0]["models"])
    else:
        if len(models) != 1:
            raise ValueError(f"{owner}: {tasks.upper()} attacks one model, got {len(models)} runs")
        task_set = UniversalTasks(models[0], group) if tasks == "uni" else \
            TransformTasks(models[0], tuple(transforms) if transforms else tuple(TRANSFORMS), stochastic)
        names = task_set.task_names()
    _, test_set, _ = load_dataset(configs[0]["dataset"], root=data_root or configs[0].get("data_root"), augment=False,
                                  seed=configs[0]["seed"])
    indices = _indices(test_set, size, None)
    notes = []
    if tasks == "uni":
        if batch_size % group:
            raise ValueError(f"{owner}: batch_size must be a multiple of group={group}, got {batch_size}")
        kept = len(indices) - len(indices) % group
        if kept != len(indices):
            notes.append(f"{len(indices) - kept} samples left out to make whole groups of {group}")
            indices = range(kept)
    rows = []
    for loss in losses:
        for weighting in weightings:
            for solver in (solvers if weighting in ("moo", "tamoo") else solvers[:1]):
                attack = MultiObjectivePGD(task_set, weighting=weighting, loss=loss, eps=eps, alpha=alpha, steps=steps,
                                           solver=solver, lam=lam, seed=seed)
                achieved, robust = [], torch.zeros((), dtype=torch.int64, device=device)
                started = time.perf_counter()
                for x, y in _batches(test_set, indices, batch_size, device, progress):
                    result = attack.run(x, y)
                    achieved.append(result.achieved)
                    if tasks == "ens":
                        with torch.no_grad():
                            robust += (ensemble(result.x_adv).argmax(dim=1) == y).sum()
                seconds = time.perf_counter() - started
                metrics = multi_objective_metrics(torch.cat(achieved))
                row = {"loss": loss, "weighting": weighting, "solver": solver if weighting in ("moo", "tamoo") else None,
                       **metrics, "seconds": seconds}
                if tasks == "ens":
                    (count,) = _read_back([robust])
                    row["ensemble_accuracy"] = 100 * count[0] / len(indices)
                rows.append(row)
    results = {"tasks": tasks, "task_names": names, "paths": [str(p) for p in paths], "dataset": configs[0]["dataset"],
               "eps": eps, "alpha": alpha, "steps": steps, "lam": lam, "samples": len(indices), "rows": rows,
               "notes": notes}
    if tasks == "uni":
        results["group"] = group
    if tasks == "eot":
        results["stochastic"] = stochastic
    if out is None:
        first = Path(paths[0])
        out = (first if first.is_dir() else first.parent) / f"attack-{tasks}.json"
    atomic_write_text(json.dumps(results, indent=2) + "\n", Path(out))
    results["written_to"] = str(out)
    return results


def format_multi_objective(results: dict) -> str:
    """The printed table of :func:`multi_objective_attack`: a row per (loss, weighting, solver)."""
    names = results["task_names"]
    ens = results["tasks"] == "ens"
    head = (f"{results['tasks'].upper()} on {results['dataset']}: {len(names)} tasks ({', '.join(map(str, names))}), "
            f"ε = {results['eps']:.4g}, α = {results['alpha']:.4g}, {results['steps']} steps, {results['samples']} samples")
    columns = ["loss", "weighting", "solver", "A-All", "A-Avg", *(f"A-{i}" for i in range(len(names)))]
    columns += ["ensemble accuracy"] if ens else []
    lines = [head, "", "| " + " | ".join(columns + ["seconds"]) + " |", "|---" * (len(columns) + 1) + "|"]
    for row in results["rows"]:
        cells = [row["loss"].upper(), row["weighting"], row["solver"] or "", f"{row['a_all']:.2f}", f"{row['a_avg']:.2f}",
                 *(f"{v:.2f}" for v in row["a_i"])]
        cells += [f"{row['ensemble_accuracy']:.2f}"] if ens else []
        lines.append("| " + " | ".join(cells + [f"{row['seconds']:.1f}"]) + " |")
    lines += [f"note: {note}" for note in results.get("notes", [])]
    return "\n".join(lines)
