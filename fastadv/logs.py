"""TensorBoard event files of a run (``--logger tensorboard``, the optional extra ``fastadv[tensorboard]``).

:class:`EventLog` writes into ``<run>/tensorboard/``:

- ``epoch``: every number of a metrics.jsonl record at step = its epoch, as ``train/<name>``
  (``train_`` dropped), ``test/<name>`` (``test_`` dropped) or ``run/<name>`` (lr, seconds, ...);
- ``examples``: an image grid of clean inputs, their adversarial examples and the perturbation
  (rescaled around grey, one scale for the whole grid);
- ``table``: a markdown text (``fastadv eval`` adds its table as ``eval/table``);
- ``scalars``: ``<prefix>/<name>`` for each value (``fastadv eval``: ``eval/<attack>``).

Only rank 0 of a distributed run should write: that is the caller's job, not this module's.
torch.utils.tensorboard is imported when an :class:`EventLog` is made, so the package does not
need tensorboard unless a run logs to it.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

#: the log kinds ``--log`` accepts
LOGS = ("tensorboard",)
#: the folder of a run the event files go to
FOLDER = "tensorboard"
MISSING = "--logger tensorboard needs the tensorboard package: pip install 'fastadv[tensorboard]'"


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def metric_tag(name: str) -> str:
    """The tag of a metrics.jsonl key: ``train_loss`` -> ``train/loss``, ``test_robust_acc`` ->
    ``test/robust_acc``, anything else (``lr``, ``seconds``) -> ``run/<name>``."""
    for split in ("train", "test"):
        if name.startswith(split + "_"):
            return f"{split}/{name[len(split) + 1:]}"
    return f"run/{name}"


def example_grid(clean: Tensor, adversarial: Tensor, padding: int = 2) -> Tensor:
    """A [C, 3(H+2p), B(W+2p)] image in [0, 1]: a column per example, rows the clean input, the
    adversarial example and the perturbation mapped to 0.5 + δ / (2 max|δ|) (grey where δ = 0;
    one scale, the largest |δ| of the batch, for every example)."""
    if clean.dim() != 4 or clean.shape != adversarial.shape:
        raise ValueError(f"examples: clean and adversarial must be [B, C, H, W] of one shape, "
                         f"got {tuple(clean.shape)} and {tuple(adversarial.shape)}")
    clean = clean.detach().float().cpu().clamp(0, 1)
    adversarial = adversarial.detach().float().cpu().clamp(0, 1)
    delta = adversarial - clean
    scale = delta.abs().max()
    perturbation = 0.5 + delta / (2 * scale) if scale > 0 else torch.full_like(delta, 0.5)
    rows = torch.stack([clean, adversarial, perturbation])  # [3, B, C, H, W]
    rows = torch.nn.functional.pad(rows, (padding,) * 4)
    count, batch, channels, height, width = rows.shape
    return rows.permute(2, 0, 3, 1, 4).reshape(channels, count * height, batch * width)


class EventLog:
    """TensorBoard event files in ``<run>/tensorboard/``; a context manager (closed on exit).
    ``purge_step`` (a resumed run: its first step) hides the events a crashed run wrote from it on."""

    def __init__(self, run: Path | str, purge_step: int | None = None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            raise ImportError(MISSING) from error
        self.path = Path(run) / FOLDER
        self.writer = SummaryWriter(log_dir=str(self.path), purge_step=purge_step)

    def epoch(self, record: dict, step: int) -> None:
        """Every number of a metrics.jsonl record (not ``epoch``, not booleans) at ``step``."""
        for name, value in record.items():
            if name != "epoch" and _number(value):
                self.writer.add_scalar(metric_tag(name), value, step)

    def examples(self, tag: str, clean: Tensor, adversarial: Tensor, step: int) -> None:
        """The grid of :func:`example_grid` (inputs in [0, 1], [B, C, H, W]) as one image."""
        self.writer.add_image(tag, example_grid(clean, adversarial), step, dataformats="CHW")

    def table(self, tag: str, markdown: str, step: int) -> None:
        self.writer.add_text(tag, markdown, step)

    def scalars(self, prefix: str, values: dict[str, float], step: int) -> None:
        """``<prefix>/<name>`` for each value."""
        for name, value in values.items():
            self.writer.add_scalar(f"{prefix}/{name}", value, step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
