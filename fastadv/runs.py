"""The run folder: what a training run writes and reads back.

``runs/<name>/`` holds config.json, metrics.jsonl, checkpoint.pt (resumable), best.pt (the
best robust accuracy) and curves.png. Every file is written to a temporary name beside its
place and renamed over it, so a crash never leaves a half-written file where a good one was.

Checkpoints hold only tensors and plain Python values (numbers, strings, lists, tuples, dicts),
the random generators' states included, and are read with ``torch.load(weights_only=True)``:
loading a checkpoint can never run code, whoever wrote the file.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data import DatasetInfo
from .ensemble import Ensemble
from .models import build_model


# ----------------------------------------------------------------------------- files
def atomic_save(obj, path: Path) -> None:
    """torch.save to a temporary file beside ``path``, then rename."""
    temporary = path.with_name(f".{path.name}.tmp")
    torch.save(obj, temporary)
    os.replace(temporary, path)


def atomic_write_text(text: str, path: Path) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def load_checkpoint(path: Path, map_location=None) -> dict:
    """A checkpoint's contents, read with ``weights_only=True``; a ValueError naming the file
    when it carries Python objects other than tensors and plain values (which could run code
    when unpickled: refused, never run) or is no checkpoint at all (a corrupt or foreign file)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's refusal is paragraphs of advice around one line of reason; an object that could
        # run code is named there as an unsupported GLOBAL, anything else is a file the unpickler
        # cannot read.
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reasons = [line.split("WeightsUnpickler error:", 1)[-1].strip() for line in lines
                   if not line.startswith(("Weights only load failed", "Check the documentation", "Please file"))]
        reason = next((line for line in reasons if "GLOBAL" in line), reasons[0] if reasons else "refused")
        if "GLOBAL" in reason:
            raise ValueError(f"{path} holds Python objects other than tensors and plain values, which fastadv "
                             f"refuses to load (a checkpoint must not be able to run code): {reason}") from None
        raise ValueError(f"{path} is not a readable checkpoint: {reason}") from None
    except Exception as error:  # a foreign file fails in the unpickler in many ways (KeyError, EOFError, ...)
        detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ValueError(f"{path} is not a readable checkpoint ({type(error).__name__}"
                         f"{': ' + detail if detail else ''})") from None


# ----------------------------------------------------------------------------- random state
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """The state of every random generator a run draws from, as tensors and plain values."""
    kind, keys, position, has_gauss, cached_gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": position,
                       "has_gauss": has_gauss, "cached_gauss": cached_gauss},
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    numpy = state["numpy"]
    # a checkpoint loaded with map_location on a GPU has its generator states there too
    torch.set_rng_state(state["torch"].cpu())
    np.random.set_state((numpy["kind"], numpy["keys"].cpu().numpy().astype(np.uint32), numpy["position"],
                         numpy["has_gauss"], numpy["cached_gauss"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([generator.cpu() for generator in state["cuda"]])


# ----------------------------------------------------------------------------- the folder
class RunFolder:
    """The files of one run under ``path``."""

    def __init__(self, path):
        self.path = Path(path)
        self.checkpoint = self.path / "checkpoint.pt"
        self.best = self.path / "best.pt"

    def __str__(self) -> str:
        return str(self.path)

    def prepare(self, resume: bool, overwrite: bool, remove: bool) -> None:
        """Checks that the folder can take the run (raising before anything is written); with
        ``overwrite`` the run already there is removed when ``remove`` (the main process)."""
        if resume:
            if not self.checkpoint.exists():
                raise FileNotFoundError(f"resume: no checkpoint to resume from at {self.checkpoint}")
        elif self.path.exists() and any(self.path.iterdir()):
            if not overwrite:
                raise FileExistsError(f"run_dir: {self.path} already holds a run; pass --resume to continue it, "
                                      "--overwrite to replace it, or --run-dir for another folder")
            if remove:
                shutil.rmtree(self.path)

    def write_config(self, record: dict) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(json.dumps(record, indent=2, default=str) + "\n", self.path / "config.json")

    def write_metrics(self, history: list[dict]) -> None:
        """metrics.jsonl, rewritten whole from the history (which the checkpoint also holds), so
        a crash between it and the checkpoint cannot leave an epoch logged twice after a resume."""
        atomic_write_text("".join(json.dumps(h) + "\n" for h in history), self.path / "metrics.jsonl")

    def save_checkpoint(self, state: dict) -> None:
        atomic_save(state, self.checkpoint)

    def load_checkpoint(self, map_location=None) -> dict:
        return load_checkpoint(self.checkpoint, map_location)

    def save_best(self, model: nn.Module | dict, record: dict, selected_by: str, config: dict,
                  info: DatasetInfo) -> None:
        """best.pt: ``model``'s weights (a module, or its state dict) with the epoch's record."""
        weights = model if isinstance(model, dict) else model.state_dict()
        atomic_save({"model": weights, "epoch": record["epoch"],
                     "test_robust_acc": record["test_robust_acc"], "test_clean_acc": record["test_clean_acc"],
                     "selected_by": selected_by, "config": config, "info": dataclasses.asdict(info)}, self.best)

    def plot_curves(self, history: list[dict]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        epochs = [h["epoch"] for h in history]
        # A method whose loss weight follows a schedule (ALS's λ) logs it: a third panel.
        weight = "train_lambda" if "train_lambda" in history[-1] else None
        figure, axes = plt.subplots(1, 3 if weight else 2, figsize=(15 if weight else 10, 4))
        left, right = axes[0], axes[1]
        left.plot(epochs, [h["test_clean_acc"] for h in history], label="clean (test)")
        left.plot(epochs, [h["test_robust_acc"] for h in history], label=f"PGD-{history[-1]['eval_steps']} (test)")
        if "train_adv_acc" in history[-1]:
            left.plot(epochs, [h["train_adv_acc"] for h in history], "--", label="adversarial (train)")
        left.set_xlabel("epoch")
        left.set_ylabel("accuracy")
        left.legend()
        right.plot(epochs, [h["train_loss"] for h in history], label="training loss")
        right.set_xlabel("epoch")
        right.set_ylabel("loss")
        right.legend()
        if weight:
            axes[2].plot(epochs, [h.get(weight, float("nan")) for h in history], label="λ (the epoch's mean)")
            axes[2].set_xlabel("epoch")
            axes[2].set_ylabel("λ")
            axes[2].legend()
        figure.tight_layout()
        path = self.path / "curves.png"
        temporary = path.with_name(f".{path.stem}.tmp.png")
        figure.savefig(temporary, dpi=100)
        plt.close(figure)
        os.replace(temporary, path)


# ----------------------------------------------------------------------------- models of runs
def build_run_model(info: DatasetInfo, model: str | None, models=None, combine: str | None = None) -> nn.Module:
    """The network of a run: ``model``, or, when ``models`` (a list of names) is given, an
    :class:`~fastadv.ensemble.Ensemble` of them combined by ``combine``, each member initialised
    in turn from the random stream (so copies of one architecture start apart)."""
    if models is None:
        return build_model(model, info)
    return Ensemble([build_model(name, info) for name in models], combine=combine)


def load_model(path, device=None):
    """(model, config, info, checkpoint path) of a run folder (its best-robust checkpoint, else
    its last) or of a checkpoint file; the model in eval mode on ``device`` (default: CUDA when
    available)."""
    path = Path(path)
    if path.is_dir():
        candidates = [path / "best.pt", path / "checkpoint.pt"]
        path = next((c for c in candidates if c.exists()), None)
        if path is None:
            raise FileNotFoundError(f"no best.pt or checkpoint.pt in {candidates[0].parent}")
    elif not path.exists():
        raise FileNotFoundError(f"no run folder or checkpoint at {path}")
    state = load_checkpoint(path, map_location="cpu")
    if not isinstance(state, dict) or not {"model", "config", "info"} <= set(state):
        raise ValueError(f"{path} is not a fastadv checkpoint (it has no model, config and info)")
    info = DatasetInfo(**{k: tuple(v) if isinstance(v, list) else v for k, v in state["info"].items()})
    config = state["config"]
    model = build_run_model(info, config["model"], config.get("models"), config.get("combine"))
    model.load_state_dict(state["model"])
    device = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), state["config"], info, path


def load_teacher(path, info: DatasetInfo, device=None) -> nn.Module:
    """ltd's teacher: the model of a run folder or checkpoint file, in eval mode, without
    gradients, on ``device``; errors name ``teacher``, and a teacher that does not classify the
    classes of ``info`` or take its input shape is refused."""
    try:
        model, _, teacher_info, checkpoint = load_model(path, device)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"teacher: {error}") from None
    except ValueError as error:
        raise ValueError(f"teacher: {error}") from None
    if teacher_info.num_classes != info.num_classes:
        raise ValueError(f"teacher: {checkpoint} classifies {teacher_info.num_classes} classes, the dataset "
                         f"{info.name} has {info.num_classes}")
    if tuple(teacher_info.input_shape) != tuple(info.input_shape):
        raise ValueError(f"teacher: {checkpoint} takes inputs of shape {tuple(teacher_info.input_shape)}, the "
                         f"dataset {info.name} has {tuple(info.input_shape)}")
    return model.requires_grad_(False).eval()
