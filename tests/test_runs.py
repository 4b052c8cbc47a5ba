"""The run folder: checkpoints hold only tensors and plain values and are loaded with
weights_only=True, so a checkpoint cannot run code; RNG states survive the round trip."""
import dataclasses
import random

import numpy as np
import pytest
import torch

from fastadv.config import SCHEDULES, TrainConfig
from fastadv.data import dataset_info
from fastadv.models import build_model
from fastadv.runs import RunFolder, load_model, load_teacher, rng_state, set_rng_state
from fastadv.train import make_scheduler, train


class CreatesAFile:
    """A pickled callable: unpickling it calls open(path, "w"), which creates the file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def booby_trapped_run(folder, marker):
    """A run folder whose checkpoint.pt is a real model's, plus a pickled callable."""
    info = dataset_info("digits")
    config = dataclasses.asdict(TrainConfig(method="standard", epochs=1, progress=False,
                                            run_dir=str(folder)).resolved())
    folder.mkdir()
    torch.save({"model": build_model("digits_cnn", info).state_dict(), "config": config,
                "info": dataclasses.asdict(info), "payload": CreatesAFile(marker)}, folder / "checkpoint.pt")
    return folder


def test_a_checkpoint_carrying_code_is_refused_and_the_code_never_runs(tmp_path):
    marker = tmp_path / "marker"
    run_dir = booby_trapped_run(tmp_path / "run", marker)
    checkpoint = run_dir / "checkpoint.pt"
    refused = f"^{checkpoint} holds Python objects other than tensors and plain values, which fastadv refuses"
    with pytest.raises(ValueError, match=refused):
        load_model(run_dir)
    with pytest.raises(ValueError, match="^teacher: " + refused[1:]):
        load_teacher(run_dir, dataset_info("digits"))
    with pytest.raises(ValueError, match=refused):
        train(TrainConfig(method="standard", epochs=1, progress=False, run_dir=str(run_dir), resume=True))
    assert not marker.exists(), "the pickled callable ran"
    # The payload is live: an unsafe load runs it (so the assertion above could fail).
    torch.load(checkpoint, weights_only=False)
    assert marker.exists()


# torch warns about the bad pickle's protocol byte before refusing it: expected here.
@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@pytest.mark.parametrize("content", [b"", b"not a checkpoint\n", b"\x80\x04garbage", bytes(range(256))],
                         ids=["empty", "text", "bad-pickle", "binary"])
def test_a_foreign_file_is_named_as_no_checkpoint(tmp_path, content):
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"^{path} is not a readable checkpoint"):
        load_model(path)


def test_a_truncated_checkpoint_is_named(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": build_model("digits_cnn", dataset_info("digits")).state_dict()}, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match=f"^{path} is not a readable checkpoint"):
        load_model(path)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_checkpoint_state_loads_with_weights_only(tmp_path, schedule):
    """Everything the trainer saves (the scheduler of every schedule, the optimizer, the RNG
    states) round-trips through torch.load(weights_only=True), and the RNG states restore the
    generators exactly."""
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    config = TrainConfig(schedule=schedule, epochs=2).resolved()
    scheduler = make_scheduler(optimizer, config, steps_per_epoch=5)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    folder = RunFolder(tmp_path)
    folder.save_checkpoint({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                            "rng": rng_state()})
    expected = (torch.rand(3), np.random.rand(3), random.random())
    state = folder.load_checkpoint()
    set_rng_state(state["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]
    restored = make_scheduler(optimizer, config, steps_per_epoch=5)
    restored.load_state_dict(state["scheduler"])
    assert restored.state_dict() == scheduler.state_dict()
