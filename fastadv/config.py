"""The configuration of a training run: :class:`TrainConfig`, the per-dataset defaults and the
learning-rate schedules. A config is checked and completed by :meth:`TrainConfig.resolved`
before any data is loaded or anything is written; config.json is its record."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from . import _validate as check
from .data import DATASETS
from .logs import LOGS
from .methods import METHODS, check_options, method_parameters
from .ensemble import COMBINES
from .models import default_model

SCHEDULES = ("multistep", "cosine", "onecycle", "constant")
NORMS = ("linf", "l2")
ATTACK_DTYPES = ("bfloat16", "float16")
# Settings a resumed run may change: they do not affect what is computed.
FREE_ON_RESUME = ("resume", "overwrite", "progress", "device", "workers", "cuda_graphs", "channels_last",
                  "cudnn_benchmark", "compile", "device_data", "loggers", "member_devices")
# The method parameters the trainer sets from settings of its own (the attack's also serve the
# per-epoch evaluation; ltd's teacher is a run folder here, loaded into a model for the method).
TRAINER_METHOD_SETTINGS = ("eps", "alpha", "steps", "norm", "attack_dtype", "beta", "teacher")

#: Per-dataset training defaults (anything left None in TrainConfig), declared with each dataset
#: (fastadv.data.DATASETS).
DATASET_DEFAULTS = {name: dataset.training for name, dataset in DATASETS.items()}


@dataclass
class TrainConfig:
    """Everything a run depends on; written to config.json. None means "the default for the
    dataset or method" and is filled in by :meth:`resolved`."""

    method: str = "trades"
    dataset: str = "digits"
    model: Optional[str] = None
    # an ensemble: this many copies of `model` (each initialised on its own) ...
    members: Optional[int] = None
    # ... or these models (names, or one string "a,b,c"); config.json holds the list either way
    models: Optional[tuple] = None
    # how the ensemble's output combines its members, "prob" or "logit" (default: the method's)
    combine: Optional[str] = None
    # member i of the ensemble on member_devices[i] (names, or one string "cuda:0,cuda:1"); the
    # batches and the ensemble's output on --device
    member_devices: Optional[tuple] = None
    # under torchrun, one member per process (a world of as many processes as members), every
    # process on the whole batch, instead of data parallelism over whole ensembles
    shard_members: bool = False
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
    # speed on a GPU (each None: on for CUDA devices, off on the CPU; see the command's help)
    channels_last: Optional[bool] = None
    cudnn_benchmark: Optional[bool] = None
    device_data: Optional[bool] = None
    # the training step (or its attack) as a CUDA graph (fastadv.train.GraphedStep,
    # fastadv.attacks.graph), and torch.compile of the model
    cuda_graphs: bool = False
    compile: bool = False
    grad_clip: Optional[float] = None
    seed: int = 0
    device: Optional[str] = None
    workers: int = 0
    run_dir: Optional[str] = None
    resume: bool = False
    overwrite: bool = False
    progress: bool = True
    # where the run's progress is written besides metrics.jsonl and curves.png: "tensorboard"
    # (event files in <run>/tensorboard, the extra fastadv[tensorboard])
    loggers: tuple = ()
    augment: bool = True
    # the method's own options beyond the ones above (e.g. temperature, logit_squeeze)
    method_options: dict = field(default_factory=dict)

    def resolved(self) -> "TrainConfig":
        """A copy with every default filled in; raises ValueError (TypeError for a value of the
        wrong type) naming the setting, before any data is loaded or anything is written."""
        check.choice(None, "method", self.method, METHODS)
        check.choice(None, "dataset", self.dataset, DATASETS)
        check.choice(None, "schedule", self.schedule, SCHEDULES)
        check.choice(None, "norm", self.norm, NORMS)
        check.choice(None, "attack_dtype", self.attack_dtype, ATTACK_DTYPES, allow_none=True)
        config = dataclasses.replace(self, milestones=tuple(self.milestones), method_options=dict(self.method_options))
        for name in ("data_root", "run_dir", "teacher"):  # paths as text: the checkpoint holds plain values only
            if isinstance(getattr(config, name), os.PathLike):
                setattr(config, name, os.fspath(getattr(config, name)))
        for key, value in DATASET_DEFAULTS[self.dataset].items():
            if getattr(config, key) is None:
                setattr(config, key, value * METHODS[self.method].lr_factor if key == "lr" else value)
        config._resolve_ensemble()
        if config.model is None and config.models is None:
            config.model = default_model(config.dataset)
        if config.run_dir is None:
            config.run_dir = str(Path("runs") / f"{config.dataset}-{config.method}")
        for name in ("epochs", "batch_size", "steps", "eval_steps"):
            check.integer(None, name, getattr(config, name))
        check.integer(None, "eval_size", config.eval_size, allow_none=True)
        check.integer(None, "seed", config.seed, low=0)
        check.integer(None, "workers", config.workers, low=0)
        for name in ("lr", "momentum", "weight_decay", "gamma"):
            check.number(None, name, getattr(config, name), low=0)
        for name in ("eps", "alpha", "beta"):
            check.number(None, name, getattr(config, name), low=0, allow_none=True)
        check.number(None, "grad_clip", config.grad_clip, low=0, low_open=True, allow_none=True)
        for milestone in config.milestones:
            check.number(None, "milestones", milestone, low=0, low_open=True, high=1)
        for name in ("download", "resume", "overwrite", "progress", "augment"):
            check.flag(None, name, getattr(config, name))
        for name in ("amp", "channels_last", "cudnn_benchmark", "device_data"):
            if getattr(config, name) is not None:
                check.flag(None, name, getattr(config, name))
        for name in ("cuda_graphs", "compile"):
            check.flag(None, name, getattr(config, name))
        config.loggers = (config.loggers,) if isinstance(config.loggers, str) else tuple(config.loggers or ())
        for kind in config.loggers:
            check.choice(None, "loggers", kind, LOGS)
        config._check_method_options()
        return config

    def _resolve_ensemble(self) -> None:
        """``members``/``models`` into ``models``, the full list of member names (None: one
        model); an ensemble method with neither gets its paper's number of copies of the
        default model; ``combine`` defaults to the method's."""
        method = METHODS[self.method]
        if isinstance(self.models, str):
            self.models = tuple(name.strip() for name in self.models.split(","))
        if self.models is not None:
            if isinstance(self.models, (bytes, dict)) or not hasattr(self.models, "__iter__"):
                raise TypeError(f"models must be a list of model names, got {type(self.models).__name__}")
            self.models = tuple(self.models)
            if not self.models or not all(isinstance(name, str) and name for name in self.models):
                raise ValueError(f"models must name at least one model, comma-separated, got {self.models!r}")
            if self.model is not None and any(name != self.model for name in self.models):
                raise ValueError("model: give either --model (with --members for copies of it) or --models, not both")
            if self.members is not None and check.integer(None, "members", self.members) != len(self.models):
                raise ValueError(f"members: {self.members} does not match the {len(self.models)} models of --models "
                                 f"({', '.join(self.models)}); give one of the two")
        elif self.members is not None:
            members = check.integer(None, "members", self.members)
            self.models = (self.model or default_model(self.dataset),) * members
        elif method.ensemble:
            self.models = (self.model or default_model(self.dataset),) * method.default_members
        if isinstance(self.member_devices, str):
            self.member_devices = tuple(name.strip() for name in self.member_devices.split(","))
        if self.models is None:
            if self.combine is not None:
                raise ValueError("combine: only an ensemble combines its members; add --members N or --models A,B,...")
            if self.member_devices is not None:
                raise ValueError("member_devices: only an ensemble's members are placed; add --members N or "
                                 "--models A,B,...")
            if self.shard_members:
                raise ValueError("shard_members: only an ensemble's members are sharded; add --members N or "
                                 "--models A,B,...")
            return
        self.members = len(self.models)
        if len(self.models) < method.min_members:
            raise ValueError(f"members: {self.method} trains an ensemble of at least {method.min_members} members, "
                             f"got {len(self.models)}")
        if method.max_members is not None and len(self.models) > method.max_members:
            raise ValueError(f"members: {self.method} trains an ensemble of at most {method.max_members} members, "
                             f"got {len(self.models)}")
        if not method.ensemble and not method.trains_members:
            raise ValueError(f"members: {self.method} cannot train an ensemble's members (seed 000's protocol, each "
                             "member the reference in turn, needs the method's loss apart from its attack and no "
                             "state of one model's); the "
                             f"methods that can: {', '.join(n for n, m in METHODS.items() if m.trains_members)}; "
                             f"the ensemble methods: {', '.join(n for n, m in METHODS.items() if m.ensemble)}")
        self.combine = check.choice(None, "combine", self.combine or method.ensemble_combine, COMBINES)
        self.model = None if len(set(self.models)) > 1 else self.models[0]
        if self.member_devices is not None:
            self._check_member_devices()
        if check.flag(None, "shard_members", self.shard_members) and self.member_devices is not None:
            raise ValueError("shard_members: members are placed on the ranks' devices; drop --member-devices")
        if self.shard_members and self.cuda_graphs:
            raise ValueError("shard_members: the members' logits travel by collectives, which fastadv does not "
                             "capture in CUDA graphs; drop --cuda-graphs")

    def _check_member_devices(self) -> None:
        self.member_devices = tuple(self.member_devices)
        if len(self.member_devices) != len(self.models):
            named = ", ".join(map(str, self.member_devices))
            raise ValueError(f"member_devices: name one device per member ({len(self.models)}), got "
                             f"{len(self.member_devices)}: {named}")
        for name in self.member_devices:
            try:
                torch.device(name)
            except (RuntimeError, TypeError) as error:
                raise ValueError(f"member_devices: {name!r} is not a device ({error})") from None
        if self.cuda_graphs:
            raise ValueError("member_devices: members on several devices are not captured in CUDA graphs; "
                             "drop --cuda-graphs")

    def method_option_names(self) -> list[str]:
        """The options the trainer builds the method with (see :func:`fastadv.train.method_options`)."""
        names = list(self.method_options)
        if METHODS[self.method].adversarial:
            names += ["eps", "alpha", "steps", "norm"]
        names += [name for name in ("attack_dtype", "beta", "teacher") if getattr(self, name) is not None]
        return names

    def _check_method_options(self) -> None:
        """Options the method does not take are refused, naming them; ltd's teacher defaults to
        runs/<dataset>-standard and must exist."""
        for name in self.method_options:
            if name in TRAINER_METHOD_SETTINGS:
                raise ValueError(f"method_options: {name} is a setting of the trainer (TrainConfig.{name}), "
                                 "not a method option")
        if self.teacher is None and "teacher" in method_parameters(self.method):
            self.teacher = str(Path("runs") / f"{self.dataset}-standard")
            default = True
        else:
            default = False
        check_options(self.method, self.method_option_names())
        if self.teacher is None:
            return
        self.teacher = str(Path(self.teacher))
        if not Path(self.teacher).exists():
            command = f"fastadv train --method standard --dataset {self.dataset}"
            if not default:
                command += f" --run-dir {self.teacher}"
            raise FileNotFoundError(f"teacher: no run at {self.teacher}; the {self.method} method distils a "
                                    f"standard-trained teacher: train one first with `{command}`")
