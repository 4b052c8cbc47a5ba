"""The `fastadv` command: method flags derived from the methods' signatures, and every user
error reported as one line on stderr with exit status 2."""
import inspect
import os
import subprocess
import sys

import pytest

from fastadv import cli, evaluate, hardware
from fastadv.config import TRAINER_METHOD_SETTINGS
from fastadv.data import write_cifar_folder
from fastadv.methods import METHODS, method_signature, option_help
from tests.test_runs import booby_trapped_run

QUICK = ["--epochs", "1", "--steps", "1", "--eval-steps", "1", "--eval-size", "16", "--batch-size", "256",
         "--no-progress"]


def train_actions():
    parser = cli.build_parser()
    (commands,) = [a for a in parser._actions if a.dest == "command"]
    return {action.dest: action for action in commands.choices["train"]._actions}


def test_every_method_option_is_a_flag_typed_by_its_default():
    actions = train_actions()
    for method in METHODS:
        texts = option_help(method)
        for name, parameter in method_signature(method).items():
            assert texts[name], f"{method}.{name} has no help text"
            if name in TRAINER_METHOD_SETTINGS:
                continue
            action = actions[name]
            assert action.option_strings == [f"--{name.replace('_', '-')}"] and action.default is None
            assert parameter.default is not inspect.Parameter.empty
            assert action.type is type(parameter.default) or {action.type, type(parameter.default)} == {float, int}
            assert f"{method}" in action.help or action.help.startswith("any method")


def test_help_texts_come_from_the_methods():
    actions = train_actions()
    beta = actions["beta"].help
    for name, cls in METHODS.items():
        if "beta" in method_signature(name):
            assert f"{cls.default_beta:g}" in beta and name in beta
    betas: dict[str, list[str]] = {}  # each default with its methods, in the registry's order
    for name, cls in METHODS.items():
        if "beta" in method_signature(name):
            betas.setdefault(f"{cls.default_beta:g}", []).append(name)
    assert len(betas) > 1
    for value, names in betas.items():
        assert f"{value} ({', '.join(names)})" in beta, (value, names, beta)
    assert actions["logit_squeeze"].help.startswith("any method: ") and "default 0, lrm 0.001" in actions[
        "logit_squeeze"].help
    kl_weight = actions["kl_weight"].help
    assert "default " in kl_weight and "6 (trades_lma)" in kl_weight and "5 (mart_lma)" in kl_weight
    assert option_help("ltd")["teacher"] in actions["teacher"].help


def run_main(arguments, capsys):
    status = cli.main(arguments)
    captured = capsys.readouterr()
    return status, captured.err


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("arguments, message", [
    (["train", "--method", "trades", "--eps", "-1"], "eps must be >= 0, got -1.0"),
    (["train", "--method", "ltd"], r"teacher: no run at runs/digits-standard; the ltd method distils a "
                                   r"standard-trained teacher: train one first with `fastadv train --method standard "
                                   r"--dataset digits`"),
    (["train", "--dataset", "cifar10", "--data-root", "nowhere"], "Data root not found: 'nowhere'"),
    (["eval", "missing.pt"], "no run folder or checkpoint at missing.pt"),
])
def test_user_errors_are_one_line_and_status_2(arguments, message, in_tmp, capsys):
    status, err = run_main(arguments + (QUICK if arguments[0] == "train" else []), capsys)
    assert status == 2
    assert err.startswith(f"fastadv {arguments[0]}: ") and err.count("\n") == 1, err
    assert message in err, err
    assert not (in_tmp / "runs").exists()


def test_a_corrupt_data_folder_is_named(in_tmp, capsys):
    write_cifar_folder(in_tmp / "data", "cifar10", train_size=8, test_size=4)
    (in_tmp / "data" / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"not a pickle")
    status, err = run_main(["train", "--dataset", "cifar10", "--data-root", "data", *QUICK], capsys)
    assert status == 2 and err.count("\n") == 1
    bad = os.path.join("data", "cifar-10-batches-py", "data_batch_1")
    assert err.startswith(f"fastadv train: {bad} is not a readable CIFAR batch"), err


def test_a_checkpoint_carrying_code_is_refused_by_eval(in_tmp, capsys):
    run_dir = booby_trapped_run(in_tmp / "run", in_tmp / "marker")
    status, err = run_main(["eval", str(run_dir), "--no-progress"], capsys)
    assert status == 2 and err.count("\n") == 1
    assert err.startswith(f"fastadv eval: {run_dir / 'checkpoint.pt'} holds Python objects other than tensors")
    assert not (in_tmp / "marker").exists()


def test_an_existing_run_and_a_missing_extra_are_one_line(in_tmp, capsys, monkeypatch):
    assert cli.main(["train", "--method", "standard", *QUICK]) == 0
    status, err = run_main(["train", "--method", "standard", *QUICK], capsys)
    assert status == 2 and err.startswith("fastadv train: run_dir: runs/digits-standard already holds a run")
    # torchattacks present but failing to import (a broken install): the ImportError is one line too
    monkeypatch.setattr(evaluate.suite, "autoattack_available", lambda: True)
    monkeypatch.setitem(sys.modules, "torchattacks", None)
    status, err = run_main(["eval", "runs/digits-standard", "--attacks", "autoattack", "--size", "8",
                            "--no-progress"], capsys)
    assert status == 2 and err.count("\n") == 1 and err.startswith("fastadv eval: import of torchattacks halted")


def test_a_bug_keeps_its_traceback(in_tmp, monkeypatch):
    """Only user errors become one line: anything else (here a TypeError from inside the
    trainer) propagates."""
    def broken(*args, **kwargs):
        raise TypeError("a bug")

    monkeypatch.setattr("fastadv.train.build_run_model", broken)
    with pytest.raises(TypeError, match="a bug"):
        cli.main(["train", "--method", "standard", *QUICK])


def test_the_real_command_prints_one_line_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "fastadv.cli", "train", "--method", "lrm", "--pairing-ratio", "0",
                             "--run-dir", str(tmp_path / "run")], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr == "fastadv train: lrm: pairing_ratio must be > 0, got 0.0\n"
    assert not (tmp_path / "run").exists()


def test_info_says_whether_bf16_is_native(capsys, monkeypatch):
    monkeypatch.setattr(hardware, "cpu_bf16_ratio", lambda: 19.9)
    monkeypatch.setattr("fastadv.benchmarks.common.copy_bandwidth", lambda *args, **kwargs: 1e10)
    assert cli.main(["info"]) == 0
    assert "CPU bfloat16                 emulated: use float32 here (a bf16 convolution forward+backward takes " \
           "19.90x float32's time)" in capsys.readouterr().out


def test_attack_reports_a_all_a_avg_and_a_i(in_tmp, capsys):
    """Two standard runs as the members of an ENS attack, one of them alone under UNI and EoT;
    the table's figures are the JSON's, and the JSON's are recomputed from nothing else."""
    import json

    for model in ("digits_cnn", "digits_mlp"):
        assert cli.main(["train", "--method", "standard", "--model", model, "--run-dir", f"runs/{model}", *QUICK]) == 0
    capsys.readouterr()
    common = ["--steps", "3", "--size", "16", "--batch-size", "8", "--no-progress"]
    assert cli.main(["attack", "runs/digits_cnn", "runs/digits_mlp", "--weightings", "uniform", "tamoo",
                     "--losses", "ce", "cw", "--solvers", "softmax-gd", "exact2", *common]) == 0
    out = capsys.readouterr().out
    results = json.loads((in_tmp / "runs" / "digits_cnn" / "attack-ens.json").read_text())
    assert results["task_names"] == ["digits_cnn", "digits_mlp"] and results["samples"] == 16
    assert results["eps"] == pytest.approx(0.2) and results["alpha"] == pytest.approx(0.05)
    # uniform once per loss, tamoo once per solver
    assert [(r["loss"], r["weighting"], r["solver"]) for r in results["rows"]] == [
        ("ce", "uniform", None), ("ce", "tamoo", "softmax-gd"), ("ce", "tamoo", "exact2"),
        ("cw", "uniform", None), ("cw", "tamoo", "softmax-gd"), ("cw", "tamoo", "exact2")]
    for row in results["rows"]:
        assert min(row["a_i"]) - 1e-9 <= row["a_avg"] <= max(row["a_i"]) + 1e-9
        assert row["a_all"] <= min(row["a_i"]) + 1e-9
        assert f"| {row['loss'].upper()} | {row['weighting']} |" in out
    for tasks, extra in (("uni", ["--group", "4"]), ("eot", ["--transforms", "identity", "hflip"])):
        assert cli.main(["attack", "runs/digits_cnn", "--tasks", tasks, "--weightings", "moo", *extra, *common]) == 0
        results = json.loads((in_tmp / "runs" / "digits_cnn" / f"attack-{tasks}.json").read_text())
        assert len(results["rows"][0]["a_i"]) == (4 if tasks == "uni" else 2)


@pytest.mark.parametrize("arguments, message", [
    (["attack", "runs/digits_cnn"], "ENS attacks the members of an ensemble"),
    (["attack", "runs/digits_cnn", "runs/digits_cnn", "--tasks", "uni"], "UNI attacks one model, got 2 runs"),
    (["attack", "runs/digits_cnn", "--tasks", "uni", "--batch-size", "6"], "batch_size must be a multiple of group=4"),
    (["attack", "missing"], "no run folder or checkpoint at missing"),
])
def test_attack_user_errors_are_one_line(arguments, message, in_tmp, capsys):
    assert cli.main(["train", "--method", "standard", "--run-dir", "runs/digits_cnn", *QUICK]) == 0
    capsys.readouterr()
    status, err = run_main(arguments + ["--no-progress"], capsys)
    assert status == 2 and err.count("\n") == 1 and err.startswith("fastadv attack: "), err
    assert message in err, err


def test_ascl_trains_with_a_named_strategy_and_refuses_a_bogus_one(in_tmp, capsys):
    assert cli.main(["train", "--method", "ascl", "--strategy", "leaked-ls", *QUICK]) == 0
    config = (in_tmp / "runs" / "digits-ascl" / "config.json").read_text()
    assert '"strategy": "leaked-ls"' in config
    capsys.readouterr()
    status, err = run_main(["train", "--method", "ascl", "--strategy", "bogus", "--run-dir", "runs/bogus", *QUICK],
                           capsys)
    assert status == 2 and err.count("\n") == 1, err
    assert err.startswith("fastadv train: ascl: strategy must be one of 'global', 'hard-ls', 'soft-ls', 'leaked-ls', "
                          "got 'bogus'"), err
    assert not (in_tmp / "runs" / "bogus").exists()
