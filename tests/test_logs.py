"""TensorBoard event files (fastadv.logs, ``--logger tensorboard``): what EventLog writes, read back
with TensorBoard's own reader; the missing package said plainly; ``fastadv eval`` adding its
results to a logging run's event files."""
import io
import json
import sys

import pytest
import torch

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from fastadv import evaluate  # noqa: E402
from fastadv.logs import LOGS, MISSING, EventLog, example_grid, metric_tag  # noqa: E402
from fastadv.train import TrainConfig, train  # noqa: E402
from tests import helpers  # noqa: E402

one_thread = helpers.one_thread  # autouse: one torch thread here


def read(run) -> EventAccumulator:
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "tensors": 0, "scalars": 0})
    events.Reload()
    return events


def scalars(events: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(event.step, event.value) for event in events.Scalars(tag)]


def text(events: EventAccumulator, tag: str) -> list[tuple[int, str]]:
    # add_text is stored as a string tensor of the text plugin, its tag suffixed by torch
    return [(event.step, event.tensor_proto.string_val[0].decode())
            for event in events.Tensors(f"{tag}/text_summary")]


def test_tags_of_the_metrics():
    assert LOGS == ("tensorboard",)
    assert metric_tag("train_loss") == "train/loss"
    assert metric_tag("test_robust_acc") == "test/robust_acc"
    assert metric_tag("lr") == "run/lr" and metric_tag("trainer") == "run/trainer"


def test_epochs_steps_tables_and_scalars(tmp_path):
    records = [{"epoch": 1, "lr": 0.1, "seconds": 2.5, "train_loss": 1.25, "train_lambda": 0.5, "test_clean_acc": 0.75,
                "test_robust_acc": 0.25, "eval_steps": 20, "ranks_in_sync": True, "note": "text"},
               {"epoch": 2, "lr": 0.01, "seconds": 2.0, "train_loss": 0.5, "train_lambda": 1.0, "test_clean_acc": 0.875,
                "test_robust_acc": 0.375, "eval_steps": 20, "ranks_in_sync": True, "note": "text"}]
    with EventLog(tmp_path) as log:
        for record in records:
            log.epoch(record, record["epoch"])
        log.table("eval/table", "| attack | accuracy |\n|---|---|\n| PGD-20 | 37.50% |", 2)
        log.scalars("eval", {"clean": 0.875, "pgd20": 0.375}, 2)
    events = read(tmp_path)
    tags = set(events.Tags()["scalars"])
    assert tags == {"run/lr", "run/seconds", "run/eval_steps", "train/loss", "train/lambda", "test/clean_acc",
                    "test/robust_acc", "eval/clean", "eval/pgd20"}  # no epoch, bool, text
    assert scalars(events, "train/loss") == [(1, 1.25), (2, 0.5)]
    assert scalars(events, "test/robust_acc") == [(1, 0.25), (2, 0.375)]
    assert scalars(events, "run/lr") == [(1, pytest.approx(0.1)), (2, pytest.approx(0.01))]
    assert scalars(events, "eval/pgd20") == [(2, 0.375)]
    assert text(events, "eval/table") == [(2, "| attack | accuracy |\n|---|---|\n| PGD-20 | 37.50% |")]


@pytest.mark.parametrize("channels", [1, 3])
def test_examples_image(tmp_path, channels):
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    clean = torch.rand(4, channels, 8, 8, generator=generator)
    adversarial = (clean + 0.1 * torch.randn(clean.shape, generator=generator).sign()).clamp(0, 1)
    grid = example_grid(clean, adversarial)
    assert grid.shape == (channels, 3 * 12, 4 * 12) and 0 <= grid.min() and grid.max() <= 1
    # rows: clean, adversarial, perturbation around grey (the largest |δ| maps to 0 or 1)
    assert torch.equal(grid[:, 2:10, 2:10], clean[0])
    assert torch.equal(grid[:, 14:22, 14:22], adversarial[1])
    perturbation = grid[:, 26:34, 2 + 12 * 3:10 + 12 * 3]
    delta = adversarial[3] - clean[3]
    assert torch.allclose(perturbation, 0.5 + delta / (2 * (adversarial - clean).abs().max()))
    with EventLog(tmp_path) as log:
        log.examples("train/examples", clean, adversarial, 3)
    (event,) = read(tmp_path).Images("train/examples")
    assert (event.step, event.width, event.height) == (3, 4 * 12, 3 * 12)
    image = Image.open(io.BytesIO(event.encoded_image_string))
    assert image.size == (4 * 12, 3 * 12)


def test_examples_without_perturbation_are_grey():
    clean = torch.rand(2, 3, 4, 4)
    grid = example_grid(clean, clean.clone(), padding=0)
    assert torch.equal(grid[:, 8:], torch.full((3, 4, 8), 0.5))
    with pytest.raises(ValueError, match="one shape"):
        example_grid(clean, clean[:1])


def test_missing_tensorboard_is_said(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError) as error:
        EventLog(tmp_path)
    assert str(error.value) == MISSING
    assert "pip install 'fastadv[tensorboard]'" in str(error.value)
    assert not (tmp_path / "tensorboard").exists()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, one_thread):
    """One epoch of standard training on the digits with a tiny evaluation: about a second."""
    return train(TrainConfig(method="standard", dataset="digits", epochs=1, eval_steps=1, eval_size=16,
                             progress=False, run_dir=str(tmp_path_factory.mktemp("runs") / "standard")))


def with_log(run_dir, log):
    config = json.loads((run_dir / "config.json").read_text())
    if log is None:
        config.pop("loggers", None)
    else:
        config["loggers"] = log
    (run_dir / "config.json").write_text(json.dumps(config))


def test_eval_adds_its_results_to_a_logging_run(run_dir, capsys):
    with_log(run_dir, ["tensorboard"])
    results = evaluate.evaluate_run(run_dir, attacks=["fgsm"], size=16, progress=False)
    events = read(run_dir)
    assert {"eval/clean", "eval/fgsm", "eval/worst_case"} <= set(events.Tags()["scalars"])
    for name in ("clean", "fgsm", "worst_case"):
        assert scalars(events, f"eval/{name}") == [(1, pytest.approx(results["accuracy"][name]))]
    ((step, table),) = text(events, "eval/table")
    assert step == 1 and table == evaluate.format_table(results) and "| FGSM |" in table
    assert "not updated" not in capsys.readouterr().out


def test_eval_leaves_a_run_without_logging_alone(run_dir):
    with_log(run_dir, None)
    before = sorted(p.name for p in (run_dir / "tensorboard").glob("*")) if (run_dir / "tensorboard").exists() else []
    evaluate.evaluate_run(run_dir, attacks=["fgsm"], size=8, progress=False)
    after = sorted(p.name for p in (run_dir / "tensorboard").glob("*")) if (run_dir / "tensorboard").exists() else []
    assert after == before


def test_eval_without_tensorboard_says_so_and_goes_on(run_dir, monkeypatch, capsys):
    with_log(run_dir, ["tensorboard"])
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    results = evaluate.evaluate_run(run_dir, attacks=["fgsm"], size=8, progress=False)
    assert json.loads((run_dir / "eval.json").read_text())["samples"] == results["samples"] == 8
    (line,) = [line for line in capsys.readouterr().out.splitlines() if "not updated" in line]
    assert "tensorboard" in line and "pip install 'fastadv[tensorboard]'" in line
