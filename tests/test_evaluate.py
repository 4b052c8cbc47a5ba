"""`fastadv eval`: the suite on a trained run, the optional AutoAttack, clear errors."""
import json
import subprocess
import sys

import pytest

from fastadv import evaluate
from fastadv.train import TrainConfig, train


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return train(TrainConfig(method="trades", dataset="digits", epochs=2, steps=2, eval_steps=2, eval_size=60,
                             progress=False, run_dir=str(tmp_path_factory.mktemp("runs") / "trades")))


def test_suite_on_a_run(run_dir):
    results = evaluate.evaluate_run(run_dir, attacks=["fgsm", "pgd20", "cw"], size=64, progress=False)
    accuracy = results["accuracy"]
    assert set(accuracy) == {"clean", "fgsm", "pgd20", "cw", "worst_case"}
    assert accuracy["worst_case"] <= min(accuracy[k] for k in ("fgsm", "pgd20", "cw")) <= accuracy["clean"]
    written = json.loads((run_dir / "eval.json").read_text())
    assert written["accuracy"] == accuracy and written["samples"] == 64
    table = evaluate.format_table(results)
    assert "PGD-20" in table and "worst case" in table


def test_autoattack_missing_is_said_not_hidden(run_dir, monkeypatch):
    monkeypatch.setattr(evaluate, "autoattack_available", lambda: False)
    results = evaluate.evaluate_run(run_dir, attacks=["pgd20", "autoattack"], size=16, progress=False, write=False)
    assert "autoattack" not in results["accuracy"]
    assert results["notes"] == [evaluate.AUTOATTACK_MISSING]
    assert "pip install 'fastadv[eval]'" in evaluate.format_table(results)


def test_autoattack_runs_through_torchattacks(run_dir):
    results = evaluate.evaluate_run(run_dir, attacks=["autoattack"], size=8, progress=False, write=False)
    assert 0 <= results["accuracy"]["autoattack"] <= results["accuracy"]["clean"]


def test_bad_paths_and_attacks(tmp_path, run_dir):
    with pytest.raises(FileNotFoundError, match="no run folder or checkpoint"):
        evaluate.load_model(tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match="no best.pt or checkpoint.pt"):
        evaluate.load_model(tmp_path)
    with pytest.raises(ValueError, match="attacks: unknown"):
        evaluate.evaluate_run(run_dir, attacks=["deepfool"], write=False)


def test_cli_eval(run_dir):
    result = subprocess.run([sys.executable, "-m", "fastadv.cli", "eval", str(run_dir), "--attacks", "fgsm",
                             "--size", "32", "--no-progress"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "| FGSM |" in result.stdout
