"""The standard trainer: one loop for every method of fastadv.methods.

SGD with momentum and weight decay, the schedules of the adversarial-training literature,
optional bf16 autocast, gradient clipping, per-epoch evaluation (clean and PGD-k accuracy on
the held-out split, through :func:`fastadv.evaluate.robust_accuracy`) with the best checkpoint
kept (best robust accuracy; best clean accuracy for standard training), checkpoints that resume
exactly (an interrupt mid-epoch included), and DistributedDataParallel when launched by
torchrun. The configuration is :mod:`fastadv.config`; what a run writes is :mod:`fastadv.runs`.

    from fastadv.train import TrainConfig, train
    run_dir = train(TrainConfig(method="trades", dataset="digits"))

bf16 on a CPU that emulates it (``amp`` or ``attack_dtype="bfloat16"``): the run goes ahead,
with a warning naming the measured slowdown (:mod:`fastadv.hardware`); it computes the same
thing, only slower, and a user may want exactly that (e.g. to check bf16 numerics).

A training step reads nothing back from the device: the metrics are added up as tensors and
read when the progress bar refreshes (every 10 batches, only when it is shown) and at the end
of the epoch.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from . import _validate
from .attacks import PGD
from .attacks.graph import graphs_captured
from .config import FREE_ON_RESUME, TrainConfig
from .data import DeviceBatches, load_dataset
from .distributed import average_gradients, global_batch
from .evaluate import robust_accuracy
from .hardware import warn_slow_cpu_bf16
from .logs import EventLog
from .methods import build_method
from .runs import RunFolder, build_run_model, load_teacher, rng_state, seed_everything, set_rng_state

__all__ = ["TrainConfig", "Trainer", "Interrupted", "train", "epoch_batches", "make_scheduler", "method_options",
           "GraphedStep", "sgd_update"]


#: what stops a run at a batch boundary with a checkpoint (SIGTERM: schedulers' and torchrun's notice)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: a second stop signal within this many seconds of the first is the same request
REPEAT_SECONDS = 2.0


class Interrupted(KeyboardInterrupt):
    """Ctrl-C arrived; the run stopped at a batch boundary after writing its checkpoint."""


# ----------------------------------------------------------------------------- the graphed step
@torch.no_grad()
def sgd_update(optimizer: torch.optim.SGD, learning_rates: list[torch.Tensor]) -> None:
    """torch.optim.SGD's update (weight decay, momentum, dampening, Nesterov, maximize) with each
    group's learning rate read from a 0-dim tensor on the parameters' device, so that a CUDA graph
    captures it once and a schedule changes it by writing the tensor: torch's SGD turns a tensor
    learning rate into a Python number (``alpha=-lr``), a read of the device, outside
    torch.compile. The parameters and momentum buffers are torch's own (its state_dict holds
    them); a missing buffer starts as the gradient, as in torch."""
    for group, lr in zip(optimizer.param_groups, learning_rates):
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            continue
        grads = [p.grad for p in params]
        if group["maximize"]:
            grads = torch._foreach_neg(grads)
        if group["weight_decay"]:
            grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
        momentum = group["momentum"]
        if momentum:
            states = [optimizer.state[p] for p in params]
            if all(state.get("momentum_buffer") is not None for state in states):
                buffers = [state["momentum_buffer"] for state in states]
                torch._foreach_mul_(buffers, momentum)
                torch._foreach_add_(buffers, grads, alpha=1 - group["dampening"])
            else:
                buffers = []
                for state, grad in zip(states, grads):
                    if state.get("momentum_buffer") is None:
                        state["momentum_buffer"] = grad.detach().clone()
                    else:
                        state["momentum_buffer"].mul_(momentum).add_(grad, alpha=1 - group["dampening"])
                    buffers.append(state["momentum_buffer"])
            grads = torch._foreach_add(grads, buffers, alpha=momentum) if group["nesterov"] else buffers
        torch._foreach_add_(params, torch._foreach_mul(grads, lr), alpha=-1.0)


class GraphedStep:
    """A whole training step — the method's attack and loss, the backward pass, gradient
    clipping and SGD's update — captured in one CUDA graph per batch shape and replayed per batch
    (the trainer's ``--cuda-graphs`` where the method has ``step_graph``; otherwise the trainer
    graphs the attack alone, :mod:`fastadv.attacks.graph`).

    What it relies on, and how:

    - The step reads nothing back from the device: it runs inside
      :func:`fastadv._validate.values_checked_elsewhere` (the caller checks the labels once: the
      trainer checks the whole training split's before it makes the step), and the first eager
      steps run with ``torch.cuda.set_sync_debug_mode("error")``, so a model or method that reads
      a value is found before any capture and training goes on without the graph (a warning
      names the reason; :attr:`refused` keeps it).
    - The learning rate is a device tensor per parameter group, written from the optimizer's
      value (the schedule's) before each replay (:func:`sgd_update`); the momentum buffers,
      weights and BatchNorm statistics are updated in place, where the graph left them.
    - The batch is copied into buffers the graph reads; the metrics are the graph's outputs (valid
      until the next step). A batch of another shape (an epoch's last) captures its own graph (at
      most :data:`MAX_GRAPHS`; beyond, it runs eagerly).
    - The random start of the attack is drawn inside the graph from torch's default CUDA
      generator, whose offset each replay advances (torch.cuda.graph registers it).

    ``capture=False`` runs the same step eagerly on any device: what the CPU tests check against
    the trainer's own step."""

    WARMUP = 2  # eager steps before the first capture: cuDNN's search, the momentum buffers
    MAX_GRAPHS = 4

    def __init__(self, method, model: nn.Module, optimizer: torch.optim.SGD, *, amp: bool = False,
                 grad_clip: float | None = None, trained_model: nn.Module | None = None,
                 attack_model: nn.Module | None = None, capture: bool = True):
        self.method, self.model, self.optimizer = method, model, optimizer
        self.trained_model = trained_model if trained_model is not None else model
        self.attack_model = attack_model if attack_model is not None else model
        self.amp, self.grad_clip, self.capture = amp, grad_clip, capture
        self.device = next(model.parameters()).device
        self.graphs: dict = {}
        self.steps = 0
        self.refused = None
        self.learning_rates = [torch.zeros((), dtype=torch.float32, device=self.device)
                               for _ in optimizer.param_groups]

    @staticmethod
    def refusal(method, device: torch.device, optimizer=None, *, distributed: bool = False,
                members: bool = False, compiled: bool = False):
        """Why a run's step cannot be captured as a whole, or None. ``members``: a single-model
        method training an ensemble's members (one optimiser step each); ``compiled``: the model
        is torch.compile'd (its graphs are its own)."""
        if device.type != "cuda":
            return f"the whole step is captured in a CUDA graph, but the device is {device}"
        if not method.step_graph:
            return (f"the method {method.name} keeps state between batches or draws host randomness "
                    f"(step_graph is False)")
        if distributed:
            return "under torchrun, DistributedDataParallel's gradient all-reduce is not captured"
        if members:
            return f"{method.name} trains an ensemble's members one optimiser step each"
        if compiled:
            return "--compile: the compiled model is not captured by fastadv's graph"
        if optimizer is not None and type(optimizer) is not torch.optim.SGD:
            return f"the optimiser is {type(optimizer).__name__}; the graphed update is SGD's (sgd_update)"
        return None

    def _step(self, x, y):
        """One step on (x, y): the body the graph captures."""
        with _validate.values_checked_elsewhere():
            turns = self.method.turns(self.trained_model, x, y, attack_model=self.attack_model)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp, cache_enabled=False):
                loss, metrics = next(turns)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.grad_clip is not None:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            sgd_update(self.optimizer, self.learning_rates)
        return metrics

    def run(self, x: torch.Tensor, y: torch.Tensor):
        """The batch's step through the graph (or eagerly, while warming up or with
        ``capture=False``): its metrics, or None where the caller must take its own step (the
        step was refused: :attr:`refused` says why)."""
        if self.refused is not None:
            return None
        for lr, group in zip(self.learning_rates, self.optimizer.param_groups):
            lr.fill_(group["lr"])
        self.steps += 1
        if not self.capture:
            return self._step(x, y)
        if self.steps <= self.WARMUP:
            return self._checked_step(x, y)
        key = (tuple(x.shape), x.dtype, x.stride(), tuple(y.shape))
        graph = self.graphs.get(key)
        if graph is None:
            if len(self.graphs) >= self.MAX_GRAPHS:
                return self._step(x, y)
            graph = self._capture(x, y)
            if graph is None:
                return None
            self.graphs[key] = graph
        static_x, static_y, cuda_graph, metrics = graph
        static_x.copy_(x)
        static_y.copy_(y)
        cuda_graph.replay()
        return metrics

    def _checked_step(self, x, y):
        """An eager step with reads of the device refused: the first one found stops the graph."""
        device = x.device
        previous = torch.cuda.get_sync_debug_mode()
        # on a side stream, as a capture runs (lazy initialisations then happen off the default stream)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        torch.cuda.set_sync_debug_mode("error")
        try:
            with torch.cuda.stream(side):
                return self._step(x, y)
        except RuntimeError as error:
            if "synchroniz" not in str(error):
                raise
            self._refuse(f"the step reads a value back from the device ({str(error).splitlines()[0]})")
            return None
        finally:
            torch.cuda.set_sync_debug_mode(previous)
            torch.cuda.current_stream(device).wait_stream(side)

    def _refuse(self, reason: str) -> None:
        import warnings

        self.refused = reason
        warnings.warn(f"--cuda-graphs: {reason}; training on without the step's graph", RuntimeWarning, stacklevel=3)

    def _capture(self, x, y):
        static_x, static_y = x.clone(), y.clone()
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize(x.device)
        try:
            with torch.cuda.graph(graph):
                metrics = self._step(static_x, static_y)
        except RuntimeError as error:
            self._refuse(f"the capture of the step failed ({str(error).splitlines()[0]})")
            return None
        return static_x, static_y, graph, metrics


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
    (refused unless it classifies ``info``'s classes and takes its input shape). The names are
    :meth:`TrainConfig.method_option_names`, which the config checked against the method."""
    options = dict(config.method_options)
    for name in config.method_option_names():
        if name not in options:
            options[name] = getattr(config, name)
    if config.teacher is not None:
        options["teacher"] = load_teacher(config.teacher, info, device)
    return options


# ----------------------------------------------------------------------------- the loop
class Trainer:
    """One run. ``fit()`` trains to the end, resuming from the run folder's checkpoint when
    ``config.resume`` is set; ``on_batch_end(epoch, batch)`` is a hook (tests use it to
    interrupt a run)."""

    def __init__(self, config: TrainConfig, on_batch_end: Callable[[int, int], None] | None = None):
        self.config = config.resolved()
        self.on_batch_end = on_batch_end
        self.distributed = Distributed.from_environment()
        self.run = RunFolder(self.config.run_dir)
        self.run.prepare(self.config.resume, self.config.overwrite, remove=self.distributed.is_main)
        self._setup()

    # -- setup
    def _device(self):
        if self.config.device is not None:
            return torch.device(self.config.device)
        if torch.cuda.is_available():
            return torch.device("cuda", self.distributed.local_rank)
        return torch.device("cpu")

    def _setup(self):
        config, distributed = self.config, self.distributed
        self.device = self._device()
        self._owns_group = distributed.enabled and not dist.is_initialized()
        if self._owns_group:
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        # the ranks agree on stopping (Ctrl-C, SIGTERM) over the host, without reading the device
        self._host_group = None
        if distributed.enabled:
            self._host_group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD
        if self.device.type == "cuda":
            if self.device.index is None:  # "cuda" is the current device (torch < 2.14 needs the index)
                self.device = torch.device("cuda", torch.cuda.current_device())
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
        # --shard-members: one member per rank, every rank on the whole batch (no data parallelism)
        self.sharded = config.shard_members
        if self.sharded and distributed.world_size != len(config.models):
            raise ValueError(f"shard_members: one member per process: {len(config.models)} members need a torchrun "
                             f"world of {len(config.models)} processes, this one has {distributed.world_size}")
        #: how the batches are dealt: over the ranks (data parallel), or whole to every rank (sharded)
        self.data = Distributed() if self.sharded else distributed
        model = build_run_model(self.info, config.model, config.models, config.combine)
        if self.sharded:
            model.shard(distributed.rank, distributed.world_size, self.info.num_classes)
        self.model = model.to(self.device)
        if config.member_devices is not None:
            if distributed.enabled:
                raise ValueError("member_devices: under torchrun each rank holds the whole ensemble on its own "
                                 "device (data parallel); place members in one process")
            self.model.place(config.member_devices, home=self.device)
        self._speed_setup()
        self.trained_model = self.model
        # Gradients averaged over the ranks once per optimiser step: by DistributedDataParallel
        # for one model (overlapped with the backward pass); for an ensemble, whose members step
        # through the method's own loops outside any DDP forward, by one all-reduce after the
        # backward pass (fastadv.distributed.average_gradients).
        # (A sharded ensemble's members are each on one rank: nothing to average.)
        self.averages_gradients = distributed.enabled and config.models is not None and not self.sharded
        if distributed.enabled and config.models is None:
            self.trained_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.attack_model = self.model
        if config.compile:
            self.trained_model, self.attack_model = torch.compile(self.trained_model), torch.compile(self.model)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=config.lr, momentum=config.momentum,
                                         weight_decay=config.weight_decay)
        self.steps_per_epoch = len(epoch_batches(len(self.train_set), config.batch_size, config.seed, 0,
                                                 self.data.rank, self.data.world_size))
        self.scheduler = make_scheduler(self.optimizer, config, self.steps_per_epoch)
        self.method.prepare(self.model, config.epochs * self.steps_per_epoch)
        amp = config.amp
        if amp is None:
            amp = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        self.amp = bool(amp)
        self.graphed_step, self.step_graph_refusal = None, None
        if config.cuda_graphs:
            self._graph_setup()
        if self.device.type == "cpu":
            bf16 = [flag for flag, used in (("--amp", self.amp), ("--attack-dtype bfloat16",
                                                                   config.attack_dtype == "bfloat16")) if used]
            if bf16:
                warn_slow_cpu_bf16(f"fastadv train {' '.join(bf16)}")
        # Every rank draws from generators in one state: an attack's random start is drawn for the
        # global batch and each rank takes its samples' rows (fastadv.distributed.batch_noise), so
        # that each sample starts where the single-process run starts it.
        seed_everything(config.seed)
        self.epoch, self.batch, self.best_score, self.history = 0, 0, -1.0, []
        self.partial_sums: dict[str, torch.Tensor] = {}
        self.partial_count = 0
        self._interrupt_requested = 0.0  # the time of the first stop signal

    def _speed_setup(self):
        """The GPU settings of the run (each defaults to on for CUDA devices, off on the CPU):
        channels_last model and batches, cuDNN's algorithm search, the training set on the device;
        the training attack as a CUDA graph with ``cuda_graphs``."""
        config, cuda = self.config, self.device.type == "cuda"
        if config.cuda_graphs and not cuda:
            raise ValueError(f"cuda_graphs: CUDA graphs need a CUDA device, got {self.device}")
        self.channels_last = cuda if config.channels_last is None else config.channels_last
        self.device_data = cuda if config.device_data is None else config.device_data
        cudnn_benchmark = cuda if config.cudnn_benchmark is None else config.cudnn_benchmark
        if cuda:
            torch.backends.cudnn.benchmark = cudnn_benchmark
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if config.cuda_graphs:
            self.method.attack_graph = "auto"
        self.speed = {"channels_last": self.channels_last, "cudnn_benchmark": bool(cudnn_benchmark and cuda),
                      "device_data": self.device_data, "cuda_graphs": config.cuda_graphs, "compile": config.compile}
        self.device_batches = DeviceBatches(self.train_set, self.device) if self.device_data else None

    def _graph_setup(self):
        """--cuda-graphs: the whole step in one graph where it can be (GraphedStep), the attack
        alone otherwise (method.attack_graph, set in _speed_setup)."""
        config = self.config
        labels = getattr(self.train_set, "labels", None)
        reason = GraphedStep.refusal(self.method, self.device, self.optimizer, distributed=self.distributed.enabled,
                                     members=config.models is not None and not self.method.ensemble,
                                     compiled=config.compile)
        if reason is None and labels is None:
            reason = "the training set does not expose its labels, which are checked once, before any capture"
        if reason is None:
            _validate.labels("fastadv train", labels, batch=labels.shape[0], classes=self.info.num_classes,
                             device=labels.device, name="the training labels")
            self.graphed_step = GraphedStep(self.method, self.model, self.optimizer, amp=self.amp,
                                            grad_clip=config.grad_clip, trained_model=self.trained_model,
                                            attack_model=self.attack_model)
            self.method.attack_graph = False  # the attack is part of the step's graph
        self.step_graph_refusal = reason
        self.speed["cuda_graphs"] = "whole step" if reason is None else "attack only"

    # -- checkpoints
    def _state(self) -> dict:
        """The checkpoint: what every rank holds alike (weights, optimiser, schedule, history),
        and under torchrun what each rank holds of its own, ``ranks[r]``: its random state, its
        method state (LMA's moving averages are of its share of the batch) and its epoch sums so
        far. A collective: every rank calls it."""
        own = {"rng": rng_state(), "method": self.method.state_dict(), "partial_sums": self.partial_sums,
               "partial_count": self.partial_count}
        if self.sharded:  # each rank's optimiser holds its own member's momentum
            own["optimizer"] = self.optimizer.state_dict()
        state = {
            "model": self._model_state(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "epoch": self.epoch, "batch": self.batch,
            "best_score": self.best_score, "history": self.history, "world_size": self.distributed.world_size,
            "config": dataclasses.asdict(self.config), "info": dataclasses.asdict(self.info), **own,
        }
        if self.distributed.enabled:
            ranks = [None] * self.distributed.world_size
            dist.all_gather_object(ranks, _on_cpu(own), group=self._host_group)
            state["ranks"] = ranks
        return state

    def _model_state(self) -> dict | None:
        """The model's state dict; for a sharded ensemble, every member's, gathered on rank 0 (a
        collective: every rank calls it; the others get None)."""
        if not self.sharded:
            return self.model.state_dict()
        parts = [None] * self.distributed.world_size if self.distributed.is_main else None
        dist.gather_object(_on_cpu(self.model.state_dict()), parts, dst=0, group=self._host_group)
        return {key: value for part in parts for key, value in part.items()} if parts is not None else None

    def save_checkpoint(self):
        state = self._state()
        if self.distributed.is_main:
            self.run.save_checkpoint(state)

    def _resume(self):
        state = self.run.load_checkpoint(map_location=self.device)
        saved = {k: v for k, v in state["config"].items() if k not in FREE_ON_RESUME}
        current = {k: v for k, v in dataclasses.asdict(self.config).items() if k in saved}
        changed = sorted(k for k in saved if json.dumps(saved[k], default=str) != json.dumps(current[k], default=str))
        if changed:
            raise ValueError(f"resume: the run in {self.run} was started with other settings ({', '.join(changed)}); "
                             "resume it with the same ones")
        world_size = state.get("world_size", 1)
        if world_size != self.distributed.world_size:
            raise ValueError(f"resume: the run in {self.run} was trained by {world_size} process(es) (world size "
                             f"{world_size}) and this one has {self.distributed.world_size}; resume it with the same "
                             f"world size (torchrun --nnodes x --nproc-per-node), whose batches and random streams "
                             f"it continues exactly")
        own = state["ranks"][self.distributed.rank] if self.distributed.enabled else state
        # a sharded rank takes its own member's weights from the whole ensemble's
        self.model.load_state_dict({key: state["model"][key] for key in self.model.state_dict()})
        self.optimizer.load_state_dict(own.get("optimizer", state["optimizer"]))
        self.scheduler.load_state_dict(state["scheduler"])
        self.method.load_state_dict(_to(own["method"], self.device))
        self.epoch, self.batch = state["epoch"], state["batch"]
        self.best_score, self.history = state["best_score"], state["history"]
        self.partial_sums, self.partial_count = _to(own["partial_sums"], self.device), own["partial_count"]
        set_rng_state(own["rng"])

    # -- training
    def fit(self) -> Path:
        config = self.config
        if config.resume:
            self._resume()
        if self.distributed.is_main:
            self.run.write_config(dict(
                dataclasses.asdict(config), method_hyperparameters=self.method.hyperparameters(),
                dataset_info=dataclasses.asdict(self.info), world_size=self.distributed.world_size,
                amp_enabled=self.amp, speed=self.speed, best_selected_by=self.selection, torch=torch.__version__))
            if self.device.type == "cuda":
                used = [name if on is True else f"{name} ({on})" for name, on in self.speed.items() if on]
                used += ["amp (bf16)"] if self.amp else []
                print(f"speed settings on {self.device}: {', '.join(used) or 'none'}", flush=True)
                if self.step_graph_refusal is not None:
                    print(f"cuda graphs: the attack alone, not the whole step: {self.step_graph_refusal}", flush=True)
        # rank 0 alone writes the event files; a resumed run hides what an earlier one wrote past
        # its checkpoint (TensorBoard's purge_step)
        self.events = EventLog(self.run.path, purge_step=self.epoch + 1) \
            if "tensorboard" in config.loggers and self.distributed.is_main else None
        previous_handlers = {}
        if threading.current_thread() is threading.main_thread():
            previous_handlers = {number: signal.signal(number, self._on_interrupt) for number in STOP_SIGNALS}
        try:
            while self.epoch < config.epochs:
                self._train_epoch()
        except Interrupted:
            self.save_checkpoint()
            if self.distributed.is_main:
                print(f"\ninterrupted: checkpoint written to {self.run.checkpoint}; "
                      f"continue with --resume --run-dir {self.run}", flush=True)
            raise
        finally:
            for number, handler in previous_handlers.items():
                signal.signal(number, handler)
            if self.events is not None:
                self.events.close()
        return self.run.path

    def _on_interrupt(self, signum, frame):
        """The first Ctrl-C (or SIGTERM, a scheduler's or torchrun's notice) lets the current
        batch finish, then writes a checkpoint from which --resume continues exactly; one more,
        later than :data:`REPEAT_SECONDS` after the first, stops at once, without a checkpoint.
        (Ctrl-C in a terminal reaches each rank twice, from the terminal and forwarded by
        torchrun: a repeat within those seconds is the same request.) Under torchrun the ranks
        stop at the same batch: they agree after each (:meth:`_stop_agreed`)."""
        now = time.monotonic()
        if self._interrupt_requested:
            if now - self._interrupt_requested > REPEAT_SECONDS:
                raise KeyboardInterrupt
            return
        self._interrupt_requested = now
        if self.distributed.is_main:
            name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            print(f"\n{name}: finishing this batch, then writing a checkpoint (Ctrl-C again to stop at once)",
                  flush=True)

    def _stop_agreed(self) -> bool:
        """Whether to stop after this batch: asked by a signal on any rank (one small all-reduce on
        the host per batch under torchrun; nothing is read from the device)."""
        if not self.distributed.enabled:
            return bool(self._interrupt_requested)
        flag = torch.tensor([1 if self._interrupt_requested else 0], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._host_group)
        return bool(flag.item())

    def _accumulate(self, metrics: dict[str, torch.Tensor], count: int) -> None:
        """Adds the batch's metrics, weighted by its size, to the epoch's sums: on the device,
        without reading them."""
        for name, value in metrics.items():
            weighted = value.detach().double() * count
            previous = self.partial_sums.get(name)
            self.partial_sums[name] = weighted if previous is None else previous + weighted
        self.partial_count += count

    def _partial_means(self) -> dict[str, float]:
        """The epoch's running means (one read of the device)."""
        names = list(self.partial_sums)
        values = torch.stack([self.partial_sums[n] for n in names]).tolist() if names else []
        return {name: value / self.partial_count for name, value in zip(names, values)}

    def _train_epoch(self):
        from tqdm import tqdm

        config, distributed = self.config, self.distributed
        batches = epoch_batches(len(self.train_set), config.batch_size, config.seed, self.epoch,
                                self.data.rank, self.data.world_size)
        if self.device_batches is not None:
            loader = self.device_batches.batches(
                batches, seed=(config.seed * 1_000_003 + self.epoch) * 65_537 + self.data.rank, first=self.batch)
        else:
            # The loader's own generator: creating an iterator otherwise draws a worker seed from the
            # global random stream, and a resumed run creates one more iterator than an unbroken one.
            loader = torch.utils.data.DataLoader(self.train_set, batch_sampler=batches[self.batch:],
                                                 num_workers=config.workers, pin_memory=self.device.type == "cuda",
                                                 generator=torch.Generator().manual_seed(config.seed + self.epoch))
        self.model.train()
        started, images = time.perf_counter(), 0
        bar = tqdm(total=len(batches), initial=self.batch, desc=f"epoch {self.epoch + 1}/{config.epochs}",
                   # None: tqdm shows the bar only on a terminal, not in a redirected log
                   disable=None if config.progress and distributed.is_main else True, leave=False,
                   dynamic_ncols=True)
        for x, y in loader:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            if self.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            metrics = self.graphed_step.run(x, y) if self.graphed_step is not None else None
            if metrics is not None:
                self._accumulate(metrics, len(y))
            else:
                if self.graphed_step is not None and self.graphed_step.refused is not None:
                    self.step_graph_refusal, self.graphed_step = self.graphed_step.refused, None
                    self.speed["cuda_graphs"] = "attack only"
                self._step(x, y)
            self.scheduler.step()
            self.batch += 1
            images += len(y) * self.data.world_size
            bar.update(1)
            if not bar.disable and (self.batch % 10 == 0 or self.batch == len(batches)):
                # the epoch's running means, and the images of every rank per second so far
                postfix = {k: f"{v:.3f}" for k, v in self._partial_means().items()}
                postfix["img/s"] = f"{images / (time.perf_counter() - started):.0f}"
                bar.set_postfix(postfix)
            if self.on_batch_end is not None:
                self.on_batch_end(self.epoch, self.batch)
            if self._stop_agreed():
                bar.close()
                raise Interrupted
        bar.close()
        self._end_epoch(time.perf_counter() - started)

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """The batch's optimiser steps, one per turn of the method (what GraphedStep captures as
        one graph, where it can). Under torchrun, ``x`` is this rank's share of the global batch,
        and the step is the single-process step on the global batch (fastadv.distributed)."""
        turns = self.method.turns(self.trained_model, x, y, attack_model=self.attack_model)
        while True:
            # The method's forward passes run under autocast; the backward passes outside it.
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp), \
                    global_batch(self.data.rank, self.data.world_size, len(y)):
                turn = next(turns, None)
            if turn is None:
                break
            loss, metrics = turn
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.averages_gradients:
                average_gradients(self.model.parameters())
            if self.config.grad_clip is not None:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
            self.optimizer.step()
            self._accumulate(metrics, len(y))

    def _evaluate(self) -> dict:
        """Clean and PGD-k accuracy (α = ε/4, uniform start) on the held-out split, sharded over
        ranks and added up. The attack draws from its own generator, so evaluating leaves the
        training random stream untouched."""
        config, distributed = self.config, self.distributed
        size = len(self.test_set) if config.eval_size is None else min(config.eval_size, len(self.test_set))
        generator = torch.Generator(device=self.device).manual_seed(config.seed * 7919 + self.epoch)
        attack = PGD(self.model, eps=config.eps, alpha=config.eps / 4, steps=config.eval_steps, norm=config.norm,
                     init="uniform", generator=generator)
        result = robust_accuracy(self.model, self.test_set, {"pgd": attack}, self.device,
                                 progress=config.progress and distributed.is_main,
                                 indices=range(self.data.rank, size, self.data.world_size))
        correct = result["correct"]
        totals = torch.tensor([correct["clean"], correct["pgd"], result["samples"]], dtype=torch.float64,
                              device=self.device)
        clean, robust, samples = self.data.all_reduce_sum(totals).tolist()
        return {"test_clean_acc": clean / samples, "test_robust_acc": robust / samples}

    def _end_epoch(self, seconds: float):
        config, distributed = self.config, self.distributed
        names = sorted(self.partial_sums)
        sums = torch.stack([self.partial_sums[n] for n in names]
                           + [torch.tensor(float(self.partial_count), dtype=torch.float64, device=self.device)])
        sums = self.data.all_reduce_sum(sums).tolist()
        record = {"epoch": self.epoch + 1, "lr": self.optimizer.param_groups[0]["lr"], "seconds": seconds}
        record.update({f"train_{n}": sums[i] / sums[-1] for i, n in enumerate(names)})
        record.update(self._evaluate())
        record["eval_steps"] = config.eval_steps
        if config.cuda_graphs:
            record["attack_graphs"] = graphs_captured(self.attack_model)
            if self.graphed_step is not None:
                record["step_graphs"] = len(self.graphed_step.graphs)
        if self.data.enabled:
            record["ranks_in_sync"] = self._ranks_in_sync()
        self.history.append(record)
        self.epoch, self.batch = self.epoch + 1, 0
        self.partial_sums, self.partial_count = {}, 0
        improved = record[self.selection] > self.best_score
        if improved:
            self.best_score = record[self.selection]
        # a sharded ensemble's weights and attacks are collectives: every rank takes part
        weights = self._model_state() if improved else None
        examples = self._examples() if "tensorboard" in config.loggers and (self.sharded or distributed.is_main) \
            else None
        if distributed.is_main:
            self.run.write_metrics(self.history)
            if improved:
                self.run.save_best(weights, record, self.selection, dataclasses.asdict(config), self.info)
            self.run.plot_curves(self.history)
            if self.events is not None:
                self.events.epoch(record, record["epoch"])
                self.events.examples(f"examples/pgd{config.eval_steps}", *examples, record["epoch"])
                self.events.flush()
            print(f"epoch {record['epoch']}/{config.epochs}  loss {record.get('train_loss', float('nan')):.4f}  "
                  f"clean {record['test_clean_acc']:.4f}  PGD-{config.eval_steps} {record['test_robust_acc']:.4f}  "
                  f"({seconds:.1f} s)", flush=True)
        self.save_checkpoint()

    def _examples(self, count: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, x_adv): the epoch's evaluation attack (PGD-k, as :meth:`_evaluate`) on the first
        ``count`` held-out images, for the event files (its own generator: the training random
        stream is untouched)."""
        config = self.config
        x, y = torch.utils.data.default_collate([self.test_set[i] for i in range(min(count, len(self.test_set)))])
        x, y = x.to(self.device), y.to(self.device)
        generator = torch.Generator(device=self.device).manual_seed(config.seed)
        attack = PGD(self.model, eps=config.eps, alpha=config.eps / 4, steps=config.eval_steps, norm=config.norm,
                     init="uniform", generator=generator)
        training = self.model.training
        self.model.eval()
        try:
            x_adv = attack(x, y)
        finally:
            self.model.train(training)
        return x, x_adv

    def _ranks_in_sync(self) -> bool:
        """Whether every rank holds the same weights (DDP keeps them equal; a mismatch means a
        bug such as a rank-dependent update), from two checksums compared with MIN and MAX."""
        flat = torch.cat([p.detach().double().flatten() for p in self.model.parameters()])
        checksum = torch.stack([flat.sum(), flat.square().sum()])
        low, high = checksum.clone(), checksum.clone()
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        return bool(torch.equal(low, high))


def _on_cpu(value):
    """``value`` with every tensor in it moved to the CPU (dicts, lists and tuples walked)."""
    return _to(value, "cpu")


def _to(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {key: _to(item, device) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to(item, device) for item in value)
    return value


def train(config: TrainConfig, on_batch_end=None) -> Path:
    """Train one run to the end (or resume it); returns the run folder."""
    trainer = Trainer(config, on_batch_end=on_batch_end)
    try:
        return trainer.fit()
    finally:
        if trainer._owns_group and dist.is_initialized():
            dist.destroy_process_group()
