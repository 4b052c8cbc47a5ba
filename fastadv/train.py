"""The standard trainer: one loop for every method of fastadv.methods.

SGD with momentum and weight decay, the schedules of the adversarial-training literature,
optional bf16 autocast, gradient clipping, per-epoch evaluation (clean and PGD-20 accuracy on
the held-out split) with the best checkpoint kept (best robust accuracy; best clean accuracy
for standard training), atomic checkpoints that resume
exactly (an interrupt mid-epoch included), metrics.jsonl, curves.png and config.json in the
run folder, and DistributedDataParallel when launched by torchrun.

    from fastadv.train import TrainConfig, train
    run_dir = train(TrainConfig(method="trades", dataset="digits"))
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .attacks import PGD
from .data import DATASETS, load_dataset
from .methods import METHODS, build_method, method_parameters
from .methods.ltd import load_teacher
from .models import build_model, default_model

SCHEDULES = ("multistep", "cosine", "onecycle", "constant")
# Settings a resumed run may change: they do not affect what is computed.
FREE_ON_RESUME = ("resume", "overwrite", "progress", "device", "workers")

# Per-dataset training defaults (anything left None in TrainConfig). digits: chosen so that
# TRADES trains in about a minute on 2 CPU cores; CIFAR: the TRADES paper's (100 epochs,
# lr 0.1 decayed by 10 at epochs 75 and 90, weight decay 2e-4, batch 128).
DATASET_DEFAULTS = {
    "digits": dict(epochs=30, batch_size=128, lr=0.05, weight_decay=5e-4),
    "cifar10": dict(epochs=100, batch_size=128, lr=0.1, weight_decay=2e-4),
    "cifar100": dict(epochs=100, batch_size=128, lr=0.1, weight_decay=2e-4),
    "synthetic": dict(epochs=2, batch_size=32, lr=0.1, weight_decay=5e-4),
}


@dataclass
class TrainConfig:
    """Everything a run depends on; written to config.json. None means "the default for the
    dataset or method" and is filled in by :meth:`resolved`."""

    method: str = "trades"
    dataset: str = "digits"
    model: Optional[str] = None
    data_root: Optional[str] = None
    download: bool = False
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    momentum: float = 0.9
    weight_decay: Optional[float] = None
    schedule: str = "multistep"
    milestones: tuple = (0.75, 0.9)  # fractions of the run (TRADES: epochs 75 and 90 of 100)
    gamma: float = 0.1
    eps: Optional[float] = None
    alpha: Optional[float] = None
    steps: int = 10
    beta: Optional[float] = None
    # ltd: the run folder of its teacher (default runs/<dataset>-standard)
    teacher: Optional[str] = None
    norm: str = "linf"
    attack_dtype: Optional[str] = None  # "bfloat16": the training attack runs under bf16 autocast
    eval_steps: int = 20
    eval_size: Optional[int] = None
    amp: Optional[bool] = None
    grad_clip: Optional[float] = None
    seed: int = 0
    device: Optional[str] = None
    workers: int = 0
    run_dir: Optional[str] = None
    resume: bool = False
    overwrite: bool = False
    progress: bool = True
    augment: bool = True
    # the method's own options beyond the ones above (e.g. temperature, logit_squeeze)
    method_options: dict = field(default_factory=dict)

    def resolved(self) -> "TrainConfig":
        """A copy with every default filled in; raises ValueError on a bad setting, before any
        data is loaded or anything is written."""
        if self.method not in METHODS:
            raise ValueError(f"method: unknown {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset: unknown {self.dataset!r}; choose one of {', '.join(DATASETS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule: unknown {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if self.norm not in ("linf", "l2"):
            raise ValueError(f"norm: must be 'linf' or 'l2', got {self.norm!r}")
        config = dataclasses.replace(self, milestones=tuple(self.milestones), method_options=dict(self.method_options))
        for key, value in DATASET_DEFAULTS[self.dataset].items():
            if getattr(config, key) is None:
                setattr(config, key, value * METHODS[self.method].lr_factor if key == "lr" else value)
        if config.model is None:
            config.model = default_model(config.dataset)
        if config.run_dir is None:
            config.run_dir = str(Path("runs") / f"{config.dataset}-{config.method}")
        for name in ("epochs", "batch_size", "steps", "eval_steps"):
            value = getattr(config, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: must be an integer >= 1, got {value!r}")
        for name in ("lr", "momentum", "weight_decay", "gamma"):
            if not getattr(config, name) >= 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(config, name)!r}")
        for name in ("eps", "alpha", "beta", "grad_clip"):
            value = getattr(config, name)
            if value is not None and not value >= 0:
                raise ValueError(f"{name}: must be >= 0, got {value!r}")
        if config.eval_size is not None and config.eval_size < 1:
            raise ValueError(f"eval_size: must be >= 1 or None, got {config.eval_size!r}")
        if not all(0 < m <= 1 for m in config.milestones):
            raise ValueError(f"milestones: fractions of the run in (0, 1], got {config.milestones!r}")
        config._check_method_options()
        return config

    def _check_method_options(self) -> None:
        """Options the method does not take are refused, naming them; ltd's teacher defaults to
        runs/<dataset>-standard and must exist."""
        method, accepted = self.method, method_parameters(self.method)
        adversarial = METHODS[method].adversarial
        if not adversarial and (self.beta is not None or self.attack_dtype is not None):
            raise ValueError(f"{'beta' if self.beta is not None else 'attack_dtype'}: the method {method!r} "
                             "has no attack and no beta")
        if self.beta is not None and "beta" not in accepted:
            raise ValueError(f"beta: the method {method!r} has no beta")
        for name in self.method_options:
            if name == "teacher":
                raise ValueError("teacher: give ltd's teacher as TrainConfig.teacher (a run folder), not in "
                                 "method_options")
            if name not in accepted:
                raise ValueError(f"{name}: the method {method!r} does not take this option "
                                 f"(it takes: {', '.join(accepted)})")
        if "teacher" not in accepted:
            if self.teacher is not None:
                raise ValueError(f"teacher: the method {method!r} takes no teacher (ltd does)")
            return
        default = self.teacher is None
        self.teacher = str(Path("runs") / f"{self.dataset}-standard" if default else Path(self.teacher))
        if not Path(self.teacher).exists():
            command = f"fastadv train --method standard --dataset {self.dataset}"
            if not default:
                command += f" --run-dir {self.teacher}"
            raise FileNotFoundError(f"teacher: no run at {self.teacher}; the {method} method distils a "
                                    f"standard-trained teacher: train one first with `{command}`")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C arrived; the run stopped at a batch boundary after writing its checkpoint."""


# ----------------------------------------------------------------------------- distributed
@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls) -> "Distributed":
        """The process group torchrun describes in the environment (none: one process)."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        return cls(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values


def epoch_batches(size: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1):
    """The batches of indices of one epoch for one rank: a permutation drawn from (seed, epoch)
    alone, so that a resumed run sees exactly the batches it would have seen. Like
    DistributedSampler, the permutation is padded to a multiple of the world size and dealt out
    rank by rank; each rank takes batch_size / world_size samples per step."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(size, generator=generator)
    padded = math.ceil(size / world_size) * world_size
    order = torch.cat([order, order[: padded - size]])[rank::world_size].tolist()
    per_rank = max(1, batch_size // world_size)
    return [order[i:i + per_rank] for i in range(0, len(order), per_rank)]


# ----------------------------------------------------------------------------- run folder
def atomic_save(obj, path: Path) -> None:
    """torch.save to a temporary file beside ``path``, then rename: a crash never leaves a
    half-written checkpoint in place of a good one."""
    temporary = path.with_name(f".{path.name}.tmp")
    torch.save(obj, temporary)
    os.replace(temporary, path)


def atomic_write_text(text: str, path: Path) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def plot_curves(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
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
    figure.tight_layout()
    temporary = path.with_name(f".{path.stem}.tmp.png")
    figure.savefig(temporary, dpi=100)
    plt.close(figure)
    os.replace(temporary, path)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- optimisation
def make_scheduler(optimizer, config: TrainConfig, steps_per_epoch: int):
    """Stepped once per batch, so that a run resumed mid-epoch follows the same curve."""
    total = config.epochs * steps_per_epoch
    if config.schedule == "multistep":
        milestones = sorted({max(1, round(m * total)) for m in config.milestones if m < 1})
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=config.gamma)
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    if config.schedule == "onecycle":
        # The cyclic schedule of fast adversarial training (Wong et al. 2020): linear up to the
        # peak over the first 40%, then linearly down to 0.
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total,
                                                   pct_start=0.4, anneal_strategy="linear",
                                                   cycle_momentum=False, div_factor=25.0, final_div_factor=1e4)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def method_options(config: TrainConfig, info, device=None) -> dict:
    """The options to build the method of a resolved ``config`` with: its method_options, the
    attack settings and beta of an adversarial method, and ltd's teacher loaded on ``device``
    (refused unless it classifies ``info``'s classes and takes its input shape)."""
    options = dict(config.method_options)
    if METHODS[config.method].adversarial:
        options.setdefault("eps", config.eps)
        options.setdefault("alpha", config.alpha)
        options.setdefault("steps", config.steps)
        options.setdefault("norm", config.norm)
        options.setdefault("attack_dtype", config.attack_dtype)
        if config.beta is not None:
            options.setdefault("beta", config.beta)
    if config.teacher is not None:
        options["teacher"] = load_teacher(config.teacher, info, device)
    return options


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def _correct(model, x, y):
    return (model(x).argmax(dim=1) == y).sum()


def evaluate_epoch(model: nn.Module, dataset, config: TrainConfig, device, distributed: Distributed,
                   epoch: int) -> dict:
    """Clean and PGD-k accuracy (α = ε/4, uniform start) on the held-out split, sharded over
    ranks. The attack draws from its own generator, so evaluating leaves the training random
    stream untouched."""
    size = len(dataset) if config.eval_size is None else min(config.eval_size, len(dataset))
    indices = list(range(distributed.rank, size, distributed.world_size))
    generator = torch.Generator(device=device).manual_seed(config.seed * 7919 + epoch)
    attack = PGD(model, eps=config.eps, alpha=config.eps / 4, steps=config.eval_steps, norm=config.norm,
                 init="uniform", generator=generator)
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    was_training = model.training
    model.eval()
    for start in range(0, len(indices), 256):
        batch = [dataset[i] for i in indices[start:start + 256]]
        x = torch.stack([b[0] for b in batch]).to(device)
        y = torch.as_tensor([int(b[1]) for b in batch], device=device)
        totals[0] += _correct(model, x, y)
        totals[1] += _correct(model, attack(x, y), y)
        totals[2] += len(batch)
    model.train(was_training)
    totals = distributed.all_reduce_sum(totals)
    return {"test_clean_acc": (totals[0] / totals[2]).item(), "test_robust_acc": (totals[1] / totals[2]).item()}


# ----------------------------------------------------------------------------- the loop
class Trainer:
    """One run. ``fit()`` trains to the end, resuming from the run folder's checkpoint when
    ``config.resume`` is set; ``on_batch_end(epoch, batch)`` is a hook (tests use it to
    interrupt a run)."""

    def __init__(self, config: TrainConfig, on_batch_end: Callable[[int, int], None] | None = None):
        self.config = config.resolved()
        self.on_batch_end = on_batch_end
        self.distributed = Distributed.from_environment()
        self.run_dir = Path(self.config.run_dir)
        self._prepare_run_dir()
        self._setup()

    # -- setup
    def _prepare_run_dir(self):
        checkpoint = self.run_dir / "checkpoint.pt"
        if self.config.resume:
            if not checkpoint.exists():
                raise FileNotFoundError(f"resume: no checkpoint to resume from at {checkpoint}")
        elif self.run_dir.exists() and any(self.run_dir.iterdir()):
            if not self.config.overwrite:
                raise FileExistsError(f"run_dir: {self.run_dir} already holds a run; pass --resume to continue it, "
                                      "--overwrite to replace it, or --run-dir for another folder")
            if self.distributed.is_main:
                shutil.rmtree(self.run_dir)

    def _device(self):
        if self.config.device is not None:
            return torch.device(self.config.device)
        if torch.cuda.is_available():
            return torch.device("cuda", self.distributed.local_rank)
        return torch.device("cpu")

    def _setup(self):
        config, distributed = self.config, self.distributed
        self.device = self._device()
        if distributed.enabled and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.train_set, self.test_set, self.info = load_dataset(
            config.dataset, root=config.data_root, download=config.download and distributed.is_main,
            augment=config.augment, seed=config.seed)
        if config.eps is None:
            config.eps = self.info.default_eps
        if config.alpha is None:
            config.alpha = self.info.default_alpha
        self.method = build_method(config.method, **method_options(config, self.info, self.device))
        # best.pt: the best robust accuracy for adversarial methods, as the literature selects
        # against robust overfitting; the best clean accuracy for standard training, whose
        # robust accuracy is noise around zero and would pick an undertrained early epoch.
        self.selection = "test_robust_acc" if self.method.adversarial else "test_clean_acc"
        seed_everything(config.seed)  # identical initial weights on every rank
        self.model = build_model(config.model, self.info).to(self.device)
        self.trained_model = self.model
        if distributed.enabled:
            self.trained_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=config.lr, momentum=config.momentum,
                                         weight_decay=config.weight_decay)
        self.steps_per_epoch = len(epoch_batches(len(self.train_set), config.batch_size, config.seed, 0,
                                                 distributed.rank, distributed.world_size))
        self.scheduler = make_scheduler(self.optimizer, config, self.steps_per_epoch)
        amp = config.amp
        if amp is None:
            amp = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        self.amp = bool(amp)
        # Attacks and augmentation differ per rank; the weights above were drawn before this.
        seed_everything(config.seed + 1_000_003 * distributed.rank)
        self.epoch, self.batch, self.best_score, self.history = 0, 0, -1.0, []
        self.partial_sums: dict[str, float] = {}
        self.partial_count = 0
        self._interrupt_requested = False

    # -- checkpoints
    def _state(self) -> dict:
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "method": self.method.state_dict(),
            "epoch": self.epoch, "batch": self.batch, "best_score": self.best_score, "history": self.history,
            "partial_sums": self.partial_sums, "partial_count": self.partial_count, "rng": rng_state(),
            "config": dataclasses.asdict(self.config), "info": dataclasses.asdict(self.info),
        }

    def save_checkpoint(self):
        if self.distributed.is_main:
            atomic_save(self._state(), self.run_dir / "checkpoint.pt")

    def _resume(self):
        state = torch.load(self.run_dir / "checkpoint.pt", map_location=self.device, weights_only=False)
        saved = {k: v for k, v in state["config"].items() if k not in FREE_ON_RESUME}
        current = {k: v for k, v in dataclasses.asdict(self.config).items() if k in saved}
        changed = sorted(k for k in saved if json.dumps(saved[k], default=str) != json.dumps(current[k], default=str))
        if changed:
            raise ValueError(f"resume: the run in {self.run_dir} was started with other settings ({', '.join(changed)}); "
                             "resume it with the same ones")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.method.load_state_dict(state["method"])
        self.epoch, self.batch = state["epoch"], state["batch"]
        self.best_score, self.history = state["best_score"], state["history"]
        self.partial_sums, self.partial_count = state["partial_sums"], state["partial_count"]
        if not self.distributed.enabled:
            set_rng_state(state["rng"])

    # -- training
    def fit(self) -> Path:
        config = self.config
        if config.resume:
            self._resume()
        if self.distributed.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            record = dict(dataclasses.asdict(config), method_hyperparameters=self.method.hyperparameters(),
                          dataset_info=dataclasses.asdict(self.info), world_size=self.distributed.world_size,
                          amp_enabled=self.amp, best_selected_by=self.selection, torch=torch.__version__)
            atomic_write_text(json.dumps(record, indent=2, default=str) + "\n", self.run_dir / "config.json")
        previous_handler = None
        if threading.current_thread() is threading.main_thread():
            previous_handler = signal.signal(signal.SIGINT, self._on_interrupt)
        try:
            while self.epoch < config.epochs:
                self._train_epoch()
        except Interrupted:
            self.save_checkpoint()
            if self.distributed.is_main:
                print(f"\ninterrupted: checkpoint written to {self.run_dir / 'checkpoint.pt'}; "
                      f"continue with --resume --run-dir {self.run_dir}", flush=True)
            raise
        finally:
            if previous_handler is not None:
                signal.signal(signal.SIGINT, previous_handler)
        return self.run_dir

    def _on_interrupt(self, signum, frame):
        """The first Ctrl-C lets the current batch finish, then writes a checkpoint from which
        --resume continues exactly; a second one stops at once, without a checkpoint."""
        if self._interrupt_requested:
            raise KeyboardInterrupt
        self._interrupt_requested = True
        if self.distributed.is_main:
            print("\nCtrl-C: finishing this batch, then writing a checkpoint (Ctrl-C again to stop at once)",
                  flush=True)

    def _train_epoch(self):
        from tqdm import tqdm

        config, distributed = self.config, self.distributed
        batches = epoch_batches(len(self.train_set), config.batch_size, config.seed, self.epoch,
                                distributed.rank, distributed.world_size)
        # The loader's own generator: creating an iterator otherwise draws a worker seed from the
        # global random stream, and a resumed run creates one more iterator than an unbroken one.
        loader = torch.utils.data.DataLoader(self.train_set, batch_sampler=batches[self.batch:],
                                             num_workers=config.workers, pin_memory=self.device.type == "cuda",
                                             generator=torch.Generator().manual_seed(config.seed + self.epoch))
        self.model.train()
        started = time.perf_counter()
        bar = tqdm(total=len(batches), initial=self.batch, desc=f"epoch {self.epoch + 1}/{config.epochs}",
                   # None: tqdm shows the bar only on a terminal, not in a redirected log
                   disable=None if config.progress and distributed.is_main else True, leave=False,
                   dynamic_ncols=True)
        for x, y in loader:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                loss, metrics = self.method(self.trained_model, x, y, attack_model=self.model)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip is not None:
                nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            for name, value in metrics.items():
                self.partial_sums[name] = self.partial_sums.get(name, 0.0) + float(value) * len(y)
            self.partial_count += len(y)
            self.batch += 1
            bar.update(1)
            if self.batch % 10 == 0 or self.batch == len(batches):
                bar.set_postfix({k: f"{v / self.partial_count:.3f}" for k, v in self.partial_sums.items()})
            if self.on_batch_end is not None:
                self.on_batch_end(self.epoch, self.batch)
            if self._interrupt_requested:
                bar.close()
                raise Interrupted
        bar.close()
        self._end_epoch(time.perf_counter() - started)

    def _end_epoch(self, seconds: float):
        config, distributed = self.config, self.distributed
        names = sorted(self.partial_sums)
        sums = torch.tensor([self.partial_sums[n] for n in names] + [self.partial_count], dtype=torch.float64,
                            device=self.device)
        sums = distributed.all_reduce_sum(sums)
        record = {"epoch": self.epoch + 1, "lr": self.optimizer.param_groups[0]["lr"], "seconds": seconds}
        record.update({f"train_{n}": (sums[i] / sums[-1]).item() for i, n in enumerate(names)})
        record.update(evaluate_epoch(self.model, self.test_set, config, self.device, distributed, self.epoch))
        record["eval_steps"] = config.eval_steps
        if distributed.enabled:
            record["ranks_in_sync"] = self._ranks_in_sync()
        self.history.append(record)
        self.epoch, self.batch = self.epoch + 1, 0
        self.partial_sums, self.partial_count = {}, 0
        improved = record[self.selection] > self.best_score
        if improved:
            self.best_score = record[self.selection]
        if distributed.is_main:
            # Rewritten whole from the history (which the checkpoint also holds), so a crash
            # between here and the checkpoint cannot leave an epoch logged twice after a resume.
            atomic_write_text("".join(json.dumps(h) + "\n" for h in self.history), self.run_dir / "metrics.jsonl")
            if improved:
                atomic_save({"model": self.model.state_dict(), "epoch": record["epoch"],
                             "test_robust_acc": record["test_robust_acc"], "test_clean_acc": record["test_clean_acc"],
                             "selected_by": self.selection, "config": dataclasses.asdict(config),
                             "info": dataclasses.asdict(self.info)}, self.run_dir / "best.pt")
            plot_curves(self.history, self.run_dir / "curves.png")
            print(f"epoch {record['epoch']}/{config.epochs}  loss {record.get('train_loss', float('nan')):.4f}  "
                  f"clean {record['test_clean_acc']:.4f}  PGD-{config.eval_steps} {record['test_robust_acc']:.4f}  "
                  f"({seconds:.1f} s)", flush=True)
        self.save_checkpoint()


    def _ranks_in_sync(self) -> bool:
        """Whether every rank holds the same weights (DDP keeps them equal; a mismatch means a
        bug such as a rank-dependent update), from two checksums compared with MIN and MAX."""
        flat = torch.cat([p.detach().double().flatten() for p in self.model.parameters()])
        checksum = torch.stack([flat.sum(), flat.square().sum()])
        low, high = checksum.clone(), checksum.clone()
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        return bool(torch.equal(low, high))


def train(config: TrainConfig, on_batch_end=None) -> Path:
    """Train one run to the end (or resume it); returns the run folder."""
    trainer = Trainer(config, on_batch_end=on_batch_end)
    try:
        return trainer.fit()
    finally:
        if trainer.distributed.enabled and dist.is_initialized():
            dist.destroy_process_group()
