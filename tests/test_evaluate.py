"""`fastadv eval`: the suite on a trained run, the optional AutoAttack, clear errors."""
import json
import subprocess
import sys

import pytest

from fastadv import evaluate
from fastadv.runs import load_model
from fastadv.train import TrainConfig, train
from tests.helpers import one_thread  # noqa: F401  (autouse: one torch thread here)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, one_thread):
    """PGD-AT on the digits for 4 epochs of a 3-step attack (α = 0.08 so that 3 steps cross the
    ε = 0.2 ball): about 8 s on one thread, and robust enough that comparing attacks on it means
    something (measured: clean 83%, PGD-20 38%, AutoAttack 13.5% on 200 held-out digits; a
    standard-trained model has next to no robust accuracy at this ε)."""
    return train(TrainConfig(method="pgd_at", dataset="digits", epochs=4, steps=3, alpha=0.08, eval_steps=2,
                             eval_size=60, progress=False, run_dir=str(tmp_path_factory.mktemp("runs") / "pgd_at")))


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
    monkeypatch.setattr(evaluate.suite, "autoattack_available", lambda: False)
    results = evaluate.evaluate_run(run_dir, attacks=["pgd20", "autoattack"], size=16, progress=False, write=False)
    assert "autoattack" not in results["accuracy"]
    assert results["notes"] == [evaluate.AUTOATTACK_MISSING]
    assert "pip install 'fastadv[eval]'" in evaluate.format_table(results)


def test_autoattack_is_at_least_as_strong_as_pgd20(run_dir):
    """AutoAttack (torchattacks' standard version: APGD-CE, APGD-T, FAB-T, Square) is a stronger
    attack than PGD-20, so on a robust model it leaves at most as many samples robust."""
    results = evaluate.evaluate_run(run_dir, attacks=["pgd20", "autoattack"], size=200, progress=False, write=False)
    accuracy = results["accuracy"]
    assert results["samples"] == 200
    assert accuracy["clean"] >= 0.75 and accuracy["pgd20"] >= 0.25, f"the model is not robust enough: {accuracy}"
    assert accuracy["autoattack"] >= 0.05, f"AutoAttack fools (almost) every sample: {accuracy}"
    assert accuracy["autoattack"] <= accuracy["pgd20"]
    assert accuracy["worst_case"] <= accuracy["autoattack"]


def test_square_is_autoattacks_black_box_part(run_dir, monkeypatch):
    """Square-5000 on its own: a black-box attack, so no stronger than AutoAttack (which runs it
    last, on what the gradient attacks left) and never above the clean accuracy; missing
    torchattacks is said, not hidden."""
    results = evaluate.evaluate_run(run_dir, attacks=["square", "autoattack"], size=64, progress=False, write=False)
    accuracy = results["accuracy"]
    assert accuracy["autoattack"] <= accuracy["square"] <= accuracy["clean"]
    assert accuracy["square"] < accuracy["clean"], "Square moved nothing"
    assert "| Square-5000 |" in evaluate.format_table(results)
    monkeypatch.setattr(evaluate.suite, "autoattack_available", lambda: False)
    results = evaluate.evaluate_run(run_dir, attacks=["pgd20", "square"], size=8, progress=False, write=False)
    assert "square" not in results["accuracy"] and results["notes"] == [
        evaluate.AUTOATTACK_MISSING.replace("AutoAttack", "Square-5000", 1)]


def test_bad_paths_and_attacks(tmp_path, run_dir):
    with pytest.raises(FileNotFoundError, match="no run folder or checkpoint"):
        load_model(tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match="no best.pt or checkpoint.pt"):
        load_model(tmp_path)
    with pytest.raises(ValueError, match="attacks: unknown"):
        evaluate.evaluate_run(run_dir, attacks=["deepfool"], write=False)


def test_cli_eval(run_dir):
    result = subprocess.run([sys.executable, "-m", "fastadv.cli", "eval", str(run_dir), "--attacks", "fgsm",
                             "--size", "32", "--no-progress"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "| FGSM |" in result.stdout
