"""One training run from a JSON TrainConfig, under torchrun, for tests/test_distributed.py.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/distributed_run.py CONFIG.json
        [--kill RANK EPOCH BATCH | --interrupt-torchrun RANK EPOCH BATCH]

``--kill``: rank RANK kills itself with SIGKILL after batch BATCH of epoch EPOCH (counted from
0), as a crashed machine would. ``--interrupt-torchrun``: rank RANK sends SIGINT to torchrun (its
parent) there, as Ctrl-C in torchrun's terminal does.
"""
from __future__ import annotations

import argparse
import json
import os
import signal

from fastadv.train import Interrupted, TrainConfig, train


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("--kill", type=int, nargs=3, default=None)
    parser.add_argument("--interrupt-torchrun", dest="interrupt", type=int, nargs=3, default=None)
    args = parser.parse_args()
    with open(args.config) as file:
        config = TrainConfig(**json.load(file))
    rank = int(os.environ.get("RANK", "0"))
    where, action = None, None
    if args.kill is not None:
        where, action = args.kill, lambda: os.kill(os.getpid(), signal.SIGKILL)
    elif args.interrupt is not None:
        where, action = args.interrupt, lambda: os.kill(os.getppid(), signal.SIGINT)
    done = []

    def on_batch_end(epoch: int, batch: int) -> None:
        if where is not None and not done and (rank, epoch, batch) == tuple(where):
            done.append(True)
            action()

    try:
        train(config, on_batch_end=on_batch_end)
    except Interrupted:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
