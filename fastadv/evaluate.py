"""Robust-accuracy evaluation (METHODS.md section 6): `fastadv eval RUN_DIR_OR_CHECKPOINT`.

Clean accuracy, FGSM, PGD-20 and PGD-100 (α = ε/4, uniform start; PGD-1000 on request), CW-PGD (the CW margin
loss clipped at κ = 50, 30 steps, α = ε/4) and AutoAttack (standard version, through
torchattacks, the optional extra ``fastadv[eval]``), plus the worst case over every attack
run: a sample counts as robust only if no attack fooled it. Every attack sees every sample.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from typing import Callable, Optional, Sequence

import torch

from .attacks import FGSM, PGD
from .data import load_dataset
from .runs import load_model

ATTACKS = ("fgsm", "pgd20", "pgd100", "cw", "autoattack")
# Run only when asked for: PGD-1000 checks a robustness that PGD-20 may overstate (seed 001 shows
# label smoothing's collapsing under 1000 steps).
EXTRA_ATTACKS = ("pgd1000",)
LABELS = {"clean": "clean", "fgsm": "FGSM", "pgd20": "PGD-20", "pgd100": "PGD-100", "pgd1000": "PGD-1000",
          "cw": "CW-PGD-30", "autoattack": "AutoAttack", "worst_case": "worst case"}
AUTOATTACK_MISSING = ("AutoAttack needs torchattacks, the optional extra: pip install 'fastadv[eval]'")


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


def robust_accuracy(model, dataset, attacks: dict[str, Callable], device, batch_size: int = 256,
                    size: int | None = None, progress: bool = True,
                    indices: Optional[Sequence[int]] = None) -> dict:
    """Accuracy on clean inputs and under each attack, and the worst case over all of them, on
    the first ``size`` samples of ``dataset`` (default: all), or on the samples ``indices``
    (a distributed evaluation gives each process its share). ``correct`` holds the counts
    behind each accuracy, for adding up the shares."""
    from tqdm import tqdm

    if indices is None:
        indices = range(len(dataset) if size is None else min(size, len(dataset)))
    correct = {name: 0 for name in ["clean", *attacks, "worst_case"]}
    seconds = {name: 0.0 for name in attacks}
    was_training = model.training
    model.eval()
    for start in tqdm(range(0, len(indices), batch_size), desc="evaluating", disable=None if progress else True,
                      leave=False):
        batch = [dataset[i] for i in indices[start:start + batch_size]]
        x = torch.stack([b[0] for b in batch]).to(device)
        y = torch.as_tensor([int(b[1]) for b in batch], device=device)
        with torch.no_grad():
            robust = model(x).argmax(dim=1) == y
        correct["clean"] += int(robust.sum())
        for name, attack in attacks.items():
            started = time.perf_counter()
            x_adv = attack(x, y)
            with torch.no_grad():
                right = model(x_adv).argmax(dim=1) == y
            seconds[name] += time.perf_counter() - started
            correct[name] += int(right.sum())
            robust &= right
        correct["worst_case"] += int(robust.sum())
    model.train(was_training)
    samples = len(indices)
    return {"accuracy": {name: count / samples if samples else math.nan for name, count in correct.items()}, "samples": samples,
            "correct": correct, "seconds": seconds}


def evaluate_run(path, attacks=ATTACKS, eps: float | None = None, size: int | None = None,
                 batch_size: int = 256, device=None, data_root=None, seed: int = 0, progress: bool = True,
                 write: bool = True) -> dict:
    """Evaluate a run folder or checkpoint on its dataset's held-out split; writes eval.json
    next to the checkpoint. AutoAttack is left out, with a note, when torchattacks is missing."""
    model, config, info, checkpoint = load_model(path, device)
    device = next(model.parameters()).device
    eps = config["eps"] if eps is None else eps
    notes = []
    attacks = list(attacks)
    if "autoattack" in attacks and not autoattack_available():
        attacks.remove("autoattack")
        notes.append(AUTOATTACK_MISSING)
    _, test_set, _ = load_dataset(config["dataset"], root=data_root or config.get("data_root"), augment=False,
                                  seed=config["seed"])
    suite = build_attacks(model, eps, config["norm"], info.num_classes, attacks, seed)
    results = robust_accuracy(model, test_set, suite, device, batch_size, size, progress)
    results.update({"checkpoint": str(checkpoint), "dataset": config["dataset"], "method": config["method"],
                    "model": config["model"], "eps": eps, "norm": config["norm"], "notes": notes,
                    "info": dataclasses.asdict(info)})
    if write:
        out = checkpoint.with_name("eval.json") if checkpoint.parent.joinpath("config.json").exists() \
            else checkpoint.with_suffix(".eval.json")
        out.write_text(json.dumps(results, indent=2) + "\n")
        results["written_to"] = str(out)
    return results


def format_table(results: dict) -> str:
    accuracy = results["accuracy"]
    header = f"{results['method']} on {results['dataset']} ({results['model']}), ε = {results['eps']:.4g} " \
             f"({results['norm']}), {results['samples']} test samples"
    lines = [header, "", "| attack | accuracy | seconds |", "|---|---|---|"]
    for name, value in accuracy.items():
        seconds = results["seconds"].get(name)
        lines.append(f"| {LABELS.get(name, name)} | {100 * value:.2f}% | {'' if seconds is None else f'{seconds:.1f}'} |")
    lines += [f"note: {note}" for note in results.get("notes", [])]
    return "\n".join(lines)
