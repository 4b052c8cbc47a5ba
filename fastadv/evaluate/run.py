"""``fastadv eval``: a run folder or checkpoint evaluated on its dataset's held-out split, the
results written beside it (eval.json; for an ensemble, transfer.png)."""
from __future__ import annotations

import dataclasses
import json

from ..data import load_dataset
from ..ensemble import Ensemble
from ..runs import atomic_write_text, load_model
from .ensemble import TRANSFER_ATTACK, ensemble_accuracy
from .report import plot_transfer
from . import suite as _suite
from .suite import ATTACKS, LABELS, SUITE, build_attacks, missing_extra, robust_accuracy


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
    if not _suite.autoattack_available():
        for name in [name for name in attacks if name in SUITE and SUITE[name].torchattacks]:
            attacks.remove(name)
            notes.append(missing_extra(SUITE[name]))
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
