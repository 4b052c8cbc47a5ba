"""``fastadv eval``: a run folder or checkpoint evaluated on its dataset's held-out split, the
results written beside it (eval.json; for an ensemble, transfer.png; for a run trained with
``--logger tensorboard``, its event files too)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..data import load_dataset
from ..ensemble import Ensemble
from ..logs import EventLog
from ..runs import atomic_write_text, load_model
from .ensemble import TRANSFER_ATTACK, ensemble_accuracy
from .report import format_table, plot_transfer
from . import suite as _suite
from .suite import ATTACKS, LABELS, SUITE, build_attacks, missing_extra, robust_accuracy


def evaluate_run(path, attacks=ATTACKS, eps: float | None = None, size: int | None = None,
                 batch_size: int = 256, device=None, data_root=None, seed: int = 0, progress: bool = True,
                 write: bool = True) -> dict:
    """Evaluate a run folder or checkpoint on its dataset's held-out split; writes eval.json
    next to the checkpoint (and, for an ensemble, the transfer heat map). AutoAttack is left
    out, with a note, when torchattacks is missing. An ensemble run is evaluated by
    :func:`ensemble_accuracy`, each member by the same attacks as the ensemble, seeded alike.
    A run folder trained with TensorBoard logging (config.json's ``loggers``) also gets the results
    in its event files (:func:`log_evaluation`)."""
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
        if in_run_folder:
            log_evaluation(checkpoint.parent, results)
    return results




def _epochs_trained(run: Path, config: dict) -> int:
    """The last epoch of metrics.jsonl, else config.json's ``epochs`` (else 0)."""
    metrics = run / "metrics.jsonl"
    lines = metrics.read_text().splitlines() if metrics.exists() else []
    last = json.loads(lines[-1]) if lines and lines[-1].strip() else {}
    return int(last.get("epoch", config.get("epochs") or 0))


def log_evaluation(run: Path, results: dict) -> bool:
    """When the run folder ``run`` was trained with ``--logger tensorboard`` (its config.json's
    ``loggers``), adds an evaluation's results to its event files at step = the epochs trained:
    ``eval/<attack>`` (``eval/clean``, ..., ``eval/worst_case``; an ensemble's members as
    ``eval/member_<i>/<attack>``) and the table as text ``eval/table``. Without tensorboard
    installed, says so in one line and goes on. True when the event files were written."""
    run = Path(run)
    config = json.loads((run / "config.json").read_text())
    if "tensorboard" not in (config.get("loggers") or []):
        return False
    try:
        log = EventLog(run)
    except ImportError as error:
        print(f"eval: {run / 'tensorboard'} not updated: {error}")
        return False
    step = _epochs_trained(run, config)
    with log:
        log.scalars("eval", results["accuracy"], step)
        for i, member in enumerate(results.get("members", [])):
            log.scalars(f"eval/member_{i}", member["accuracy"], step)
        log.table("eval/table", format_table(results), step)
    return True
