"""``fastadv attack``: seed 003 ch. 4's grid of multi-objective attacks (METHODS.md section 4),
every (loss, weighting, solver) of :class:`~fastadv.attacks.multi_objective.MultiObjectivePGD`
on an ensemble's members (ENS), on groups of images (UNI) or on transformations (EoT)."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from ..attacks.multi_objective import (DEFAULT_STEPS, TAMOO_LAMBDA, EnsembleTasks, MultiObjectivePGD, TransformTasks,
                                       UniversalTasks, multi_objective_metrics)
from ..attacks.transforms import TRANSFORMS
from ..data import load_dataset
from ..ensemble import Ensemble
from ..runs import atomic_write_text, load_model
from .suite import batches, read_back, sample_indices

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
                           alpha: float | None = None, steps: int = DEFAULT_STEPS, lam: float = TAMOO_LAMBDA,
                           group: int = 4,
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
    indices = sample_indices(test_set, size, None)
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
                for x, y in batches(test_set, indices, batch_size, device, progress):
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
                    (count,) = read_back([robust])
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
