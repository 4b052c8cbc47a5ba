"""Training steps on fixed global batches, under torchrun or in one process: what
tests/test_distributed.py compares.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/distributed_steps.py OUT CASES.json
    python tests/distributed_steps.py OUT CASES.json          (one process: the reference)

Each case (a TrainConfig's settings as JSON) builds a Trainer on the digits and takes the
trainer's own step (``Trainer._step``) on ``steps`` global batches of ``batch`` samples, the
same on any number of ranks; rank r steps on the samples at positions r, r + W, ... of each
global batch, as ``epoch_batches`` deals them (with ``shard_members``, every rank on the whole
batch). ``OUT/<name>.pt`` then holds the weights and
every rank's method state.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

import fastadv.train
from fastadv.runs import build_run_model, load_teacher
from fastadv.train import TrainConfig, Trainer
from fastadv.distributed import is_distributed


def global_batches(size: int, batch: int, steps: int) -> list[list[int]]:
    order = torch.randperm(size, generator=torch.Generator().manual_seed(1234)).tolist()
    return [order[i * batch:(i + 1) * batch] for i in range(steps)]


def float64_model(*args, **kwargs):
    """The run's model in float64 (built before DistributedDataParallel wraps it): the ranks'
    averaged gradients differ from the one process's in the last bits, and the sign of an L-inf
    attack's step turns float32's differences into a pixel stepped the other way now and then;
    in float64 the steps agree."""
    return build_run_model(*args, **kwargs).double()


def float64_teacher(*args, **kwargs):
    """ltd's teacher in float64, as the model."""
    return load_teacher(*args, **kwargs).double()


def run_case(out: Path, name: str, settings: dict, batch: int, steps: int) -> None:
    rank = dist.get_rank() if is_distributed() else 0
    world_size = dist.get_world_size() if is_distributed() else 1
    config = TrainConfig(dataset="digits", device="cpu", progress=False, batch_size=batch,
                         run_dir=str(out / f"run-{name}"), overwrite=True, **settings)
    trainer = Trainer(config)
    for indices in global_batches(len(trainer.train_set), batch, steps):
        share = indices if trainer.sharded else indices[rank::world_size]  # sharded: every rank the whole batch
        x, y = torch.utils.data.default_collate([trainer.train_set[i] for i in share])
        trainer._step(x.double(), y)
    states = [trainer.method.state_dict()]
    if world_size > 1:
        states = [None] * world_size
        dist.all_gather_object(states, trainer.method.state_dict())
    weights = trainer._model_state()  # a sharded ensemble's members gathered on rank 0
    if rank == 0:
        torch.save({"model": weights, "method_states": states, "world_size": world_size},
                   out / f"{name}.pt")


def main() -> None:
    out, cases = Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text())
    fastadv.train.build_run_model, fastadv.train.load_teacher = float64_model, float64_teacher
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("gloo")
    try:
        for case in cases:
            run_case(out, case["name"], case["settings"], case["batch"], case["steps"])
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
