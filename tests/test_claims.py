"""fastadv.claims: the seeds' claims as comparisons of runs. The verdict rule by hand, one claim
reproduced end to end on the digits (runs trained, evaluated, reused on a second call) and at
the paper's settings on a tiny CIFAR-10 folder, and bad input refused by name."""
import json
import shutil
import subprocess
import sys

import pytest

from fastadv import claims
from fastadv.claims import CLAIMS, Claim, Comparison, judge, reproduce
from fastadv.data import write_cifar_folder
from fastadv.methods import METHODS


def summary(*values):
    import statistics

    return {"mean": statistics.fmean(values), "n": len(values)}


def test_every_claim_names_methods_that_exist_and_compares_its_own_arms():
    for claim in CLAIMS.values():
        labels = [arm.label for arm in claim.arms]
        assert len(set(labels)) == len(labels), claim.name
        assert all(arm.method in METHODS for arm in claim.arms), claim.name
        for comparison in claim.comparisons:
            assert comparison.op in "<>"
            for operand in (comparison.left, comparison.right):
                label, _, metric = operand.partition(":")
                assert label in labels and (metric or claim.metric) in claims.METRICS, (claim.name, operand)
        assert claim.paper.get("source"), f"{claim.name}: the paper settings must say where they come from"


def test_the_verdict_rule():
    claim = Claim("toy", "nowhere", "a beats b", (), (Comparison("a", ">", "b"),))
    verdict = lambda a, b: judge(claim, {"a": {"autoattack": a}, "b": {"autoattack": b}})[0]["verdict"]
    assert verdict(summary(0.70), summary(0.66)) == "held"  # 4 points on one seed decide
    assert verdict(summary(0.62), summary(0.66)) == "not held"
    assert verdict(summary(0.67), summary(0.66)).startswith("undecided (within 3 points on 1 seed")
    assert verdict(summary(0.67, 0.66, 0.68), summary(0.66, 0.65, 0.66)) == "held"  # three seeds decide
    assert verdict(summary(0.65, 0.66, 0.64), summary(0.66, 0.65, 0.66)) == "not held"
    assert verdict(summary(0.67, 0.68), summary(0.66, 0.65, 0.66)).startswith("undecided (within 3 points on 2 seeds")
    lower = Claim("toy", "nowhere", "a is lower", (), (Comparison("a", "<", "b"),), metric="masked_cosine")
    assert judge(lower, {"a": {"masked_cosine": summary(-0.2)}, "b": {"masked_cosine": summary(0.9)}})[0][
        "verdict"] == "held"
    same_run = Claim("toy", "nowhere", "PGD-20 above AutoAttack", (), (Comparison("a:pgd20", ">", "a:autoattack"),))
    arms = {"a": {"pgd20": summary(0.10), "autoattack": summary(0.0)}}
    assert judge(same_run, arms)[0]["verdict"] == "held"


def test_reproduce_on_the_digits_trains_evaluates_and_reuses(tmp_path, monkeypatch):
    monkeypatch.setattr(claims, "ATTACKS", ("pgd20", "autoattack"))  # the suite's others: tests/test_evaluate.py
    record = reproduce("lrm", epochs=1, eval_size=16, out=tmp_path, log=lambda line: None)
    assert set(record["arms"]) == {"lrm", "pgd_at"}
    for label, arm in record["arms"].items():
        (run,) = arm["runs"]
        config = json.loads((tmp_path / "digits" / "runs" / run["run"].split("/")[-1] / "config.json").read_text())
        assert (config["method"], config["model"], config["epochs"], config["seed"]) == (label, "digits_cnn", 1, 0)
        assert arm["autoattack"]["n"] == 1 and 0 <= arm["autoattack"]["mean"] <= arm["clean"]["mean"]
    assert record["comparisons"][0]["comparison"] == "lrm > pgd_at"
    assert json.loads((tmp_path / "digits" / "lrm.json").read_text())["claim"] == "lrm"
    row = (tmp_path / "digits" / "lrm.md").read_text()
    assert "| pgd_at | 0 |" in row and "`fastadv train --method pgd_at --epochs 1`" in row
    # A second call trains and evaluates nothing: the runs and their evaluations are reused.
    monkeypatch.setattr("fastadv.train.train", lambda *a, **k: pytest.fail("trained again"))
    monkeypatch.setattr("fastadv.evaluate.evaluate_run", lambda *a, **k: pytest.fail("evaluated again"))
    assert reproduce("lrm", epochs=1, eval_size=16, out=tmp_path, log=lambda line: None)["arms"] == record["arms"]
    # The record holds the runs' numbers: with the folders gone, they are not trained again either.
    shutil.rmtree(tmp_path / "digits" / "runs")
    assert reproduce("lrm", epochs=1, eval_size=16, out=tmp_path, log=lambda line: None)["arms"] == record["arms"]
    # Evaluated on other samples, the recorded runs do not count: both arms would train again.
    trained = []
    monkeypatch.setattr(claims, "_train_run", lambda config, *a: trained.append(config["method"]) or 1 / 0)
    with pytest.raises(ZeroDivisionError):
        reproduce("lrm", epochs=1, eval_size=8, out=tmp_path, log=lambda line: None)
    assert trained == ["lrm"]


def test_reproduce_adds_seeds_to_the_arms_asked_for(tmp_path, monkeypatch):
    """--seeds 0 1 --arms lrm: lrm trains seed 1 next to its recorded seed 0; pgd_at keeps the
    record's seed 0 and trains nothing."""
    monkeypatch.setattr(claims, "ATTACKS", ("pgd20", "autoattack"))
    first = reproduce("lrm", epochs=1, eval_size=16, out=tmp_path, log=lambda line: None)
    import fastadv.train

    trained, original = [], fastadv.train.train
    monkeypatch.setattr(fastadv.train, "train", lambda config: trained.append((config.method, config.seed))
                        or original(config))
    record = reproduce("lrm", seeds=[0, 1], epochs=1, eval_size=16, out=tmp_path, log=lambda line: None, arms=["lrm"])
    assert trained == [("lrm", 1)]
    assert [run["seed"] for run in record["arms"]["lrm"]["runs"]] == [0, 1]
    assert record["arms"]["pgd_at"]["runs"] == first["arms"]["pgd_at"]["runs"] and record["seeds"] == [0, 1]
    assert record["arms"]["lrm"]["autoattack"]["n"] == 2
    assert "| pgd_at | 0 |" in (tmp_path / "digits" / "lrm.md").read_text()
    with pytest.raises(ValueError, match=r"^reproduce: arms must be labels of lrm's arms \(lrm, pgd_at\), got \['x'\]"):
        reproduce("lrm", out=tmp_path, arms=["x"])


def test_reproduce_at_the_papers_settings_on_a_tiny_cifar_folder(tmp_path, monkeypatch):
    """The CIFAR protocol: the claim's paper settings (model, schedule) with --epochs 1 (the
    evaluation cut to PGD-20 and AutoAttack on 2 samples: PreActResNet-18 on a CPU)."""
    write_cifar_folder(tmp_path / "data", "cifar10", train_size=16, test_size=4)
    monkeypatch.setattr(claims, "ATTACKS", ("pgd20", "autoattack"))
    record = reproduce("lrm", dataset="cifar10", data_root=tmp_path / "data", epochs=1, eval_size=2,
                       out=tmp_path / "claims", device="cpu", log=lambda line: None)
    assert record["paper_settings"]["model"] == "preact_resnet18"
    assert record["comparisons"][0]["comparison"] == "lrm > pgd_at"
    run = record["arms"]["pgd_at"]["runs"][0]["run"]
    config = json.loads((tmp_path / "claims" / "cifar10" / "runs" / run.split("/")[-1] / "config.json").read_text())
    assert (config["model"], config["epochs"], config["lr"], config["dataset"]) == ("preact_resnet18", 1, 0.1,
                                                                                     "cifar10")
    assert config["eps"] == pytest.approx(8 / 255)
    assert "--dataset cifar10 --epochs 1 --lr 0.1 --schedule multistep --milestones 0.99" in (
        tmp_path / "claims" / "cifar10" / "lrm.md").read_text()


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "bogus"}, "^reproduce: claim must be one of als-cosine, "),
    ({"name": "lrm", "dataset": "synthetic"}, "^reproduce: dataset must be one of digits, cifar10, cifar100, got"),
    ({"name": "lrm", "seeds": [0, 0]}, r"^reproduce: seeds must be distinct integers >= 0, got \[0, 0\]"),
    ({"name": "lrm", "epochs": 0}, "^reproduce: epochs must be a positive integer, got 0"),
])
def test_bad_input_is_refused_by_name(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        reproduce(out=tmp_path, **kwargs)


def test_cli_lists_the_claims():
    result = subprocess.run([sys.executable, "-m", "fastadv.cli", "reproduce", "--list"], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    assert all(name in result.stdout for name in CLAIMS)
