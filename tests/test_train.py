"""The trainer: exact resume after Ctrl-C, determinism, DDP on two gloo processes, run files,
and bad configurations failing at once."""
import copy
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from fastadv import hardware
from fastadv.data import load_dataset, write_cifar_folder
from fastadv.ensemble import Ensemble
from fastadv.evaluate import evaluate_run
from fastadv.runs import build_run_model, load_model
from fastadv.methods import METHODS, build_method
from fastadv.train import GraphedStep, Interrupted, TrainConfig, Trainer, epoch_batches, sgd_update, train
from tests.helpers import CountReads, straight_and_interrupted

QUICK = dict(dataset="digits", epochs=2, steps=2, eval_steps=3, eval_size=90, progress=False)


def metrics(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]


def test_resume_after_ctrl_c_reproduces_the_uninterrupted_run(tmp_path):
    straight = train(TrainConfig(method="trades", run_dir=str(tmp_path / "straight"), **QUICK))

    def press_ctrl_c(epoch, batch):
        if (epoch, batch) == (0, 5):
            os.kill(os.getpid(), signal.SIGINT)

    interrupted = tmp_path / "interrupted"
    with pytest.raises(Interrupted):
        train(TrainConfig(method="trades", run_dir=str(interrupted), **QUICK), on_batch_end=press_ctrl_c)
    state = torch.load(interrupted / "checkpoint.pt", weights_only=True)
    assert (state["epoch"], state["batch"]) == (0, 5), "the checkpoint is written at the batch boundary"
    assert not (interrupted / "metrics.jsonl").exists()
    train(TrainConfig(method="trades", run_dir=str(interrupted), resume=True, **QUICK))
    assert metrics(interrupted) == metrics(straight)
    final_a = torch.load(straight / "checkpoint.pt", weights_only=True)["model"]
    final_b = torch.load(interrupted / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)


def test_run_folder_and_checkpoints(tmp_path):
    run_dir = train(TrainConfig(method="pgd_at", run_dir=str(tmp_path / "run"), **QUICK))
    for name in ("config.json", "metrics.jsonl", "checkpoint.pt", "best.pt", "curves.png"):
        assert (run_dir / name).exists(), name
    config = json.loads((run_dir / "config.json").read_text())
    assert config["method"] == "pgd_at" and config["eps"] == 0.2 and config["model"] == "digits_cnn"
    records = metrics(run_dir)
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(0 <= r["test_robust_acc"] <= r["test_clean_acc"] + 1e-9 <= 1 + 1e-9 for r in records)
    best = torch.load(run_dir / "best.pt", weights_only=True)
    assert best["test_robust_acc"] == max(r["test_robust_acc"] for r in records)
    model, saved_config, info, path = load_model(run_dir)
    assert path.name == "best.pt" and info.num_classes == 10 and not model.training
    with pytest.raises(FileExistsError, match="already holds a run"):
        train(TrainConfig(method="pgd_at", run_dir=str(run_dir), **QUICK))


@pytest.mark.parametrize("change, message", [
    (dict(method="madry"), "^method must be one of .*'standard'.*, got 'madry'"),
    (dict(dataset="mnist"), "^dataset must be one of 'digits', .*, got 'mnist'"),
    (dict(eps=-0.1), "^eps must be >= 0, got -0.1"),
    (dict(epochs=0), "^epochs must be an integer >= 1, got 0"),
    (dict(schedule="step"), "^schedule must be one of 'multistep', .*, got 'step'"),
    (dict(milestones=(0.5, 1.5)), r"^milestones must be in \(0, 1\], got 1.5"),
    (dict(method="standard", beta=1.0), r"^standard: unknown option beta \(it takes: logit_squeeze\)"),
    (dict(method_options={"eps": 0.1}), r"^method_options: eps is a setting of the trainer \(TrainConfig.eps\)"),
    (dict(members=0), "^members must be an integer >= 1, got 0"),
    (dict(method="als", members=1), "^members: als trains an ensemble of at least 2 members, got 1"),
    (dict(method="als", members=33), "^members: als trains an ensemble of at most 32 members, got 33"),
    (dict(method="cce", method_options={"mode": "pm"}), "^cce: mode must be one of 'rm', 'dm', got 'pm'"),
    (dict(method="mart_lma", members=3), "^members: mart_lma cannot train an ensemble's members"),
    (dict(members=2, models="digits_cnn,cnn_4c3f,digits_cnn"), "^members: 2 does not match the 3 models"),
    (dict(model="cnn_4c3f", models="digits_cnn,digits_cnn"), "^model: give either --model"),
    (dict(combine="prob"), "^combine: only an ensemble combines its members"),
    (dict(members=2, combine="mean"), "^combine must be one of 'prob', 'logit', got 'mean'"),
    (dict(models="digits_cnn,resnet7"), "^build_model: model must be one of"),
])
def test_bad_configuration_fails_at_once(tmp_path, change, message):
    options = dict(QUICK, run_dir=str(tmp_path / "run"))
    options.update(change)
    with pytest.raises(ValueError, match=message):
        train(TrainConfig(**options))
    assert not (tmp_path / "run").exists()


def test_an_ensemble_run_resumes_exactly(tmp_path):
    """ALS on two members: the members' weights and the λ schedule (the method's state) carry
    through an interrupt mid-epoch."""
    straight, interrupted, halfway = straight_and_interrupted(tmp_path, dict(QUICK, method="als", members=2,
                                                                            epochs=1))
    assert halfway["method"] == {"schedule_steps": 4 * 2, "schedule_total": 11 * 2}  # 11 batches of 128 digits
    assert metrics(interrupted) == metrics(straight)
    assert 0 < metrics(straight)[0]["train_lambda"] <= 1
    final_a = torch.load(straight / "checkpoint.pt", weights_only=True)
    final_b = torch.load(interrupted / "checkpoint.pt", weights_only=True)
    assert final_a["method"] == final_b["method"] == {"schedule_steps": 22, "schedule_total": 22}
    assert any(k.startswith("members.1.") for k in final_a["model"])
    assert all(torch.equal(final_a["model"][k], final_b["model"][k]) for k in final_a["model"])
    config = json.loads((straight / "config.json").read_text())
    assert (config["models"], config["members"], config["combine"], config["model"]) == (
        ["digits_cnn", "digits_cnn"], 2, "logit", "digits_cnn")
    model, _, _, _ = load_model(straight)
    assert isinstance(model, Ensemble) and len(model.members) == 2 and model.combine == "logit"


def test_ensemble_members_start_apart_and_models_may_differ():
    config = TrainConfig(method="pgd_at", models="digits_cnn, preact_resnet18").resolved()
    assert (config.models, config.members, config.model, config.combine) == (
        ("digits_cnn", "preact_resnet18"), 2, None, "logit")
    info = load_dataset("digits")[2]
    mixed = build_run_model(info, config.model, config.models, config.combine)
    assert [type(m.net).__name__ for m in mixed.members] == ["DigitsCNN", "PreActResNet"]
    assert mixed(torch.rand(3, *info.input_shape)).shape == (3, 10)
    copies = build_run_model(info, "digits_cnn", ("digits_cnn",) * 2, "logit")
    first, second = (dict(m.named_parameters()) for m in copies.members)
    assert not any(torch.equal(first[k], second[k]) for k in first)
    assert TrainConfig(method="cce").resolved().models == ("digits_cnn",) * 3  # an ensemble method's default


@pytest.mark.parametrize("dataset", ["digits", "cifar10"])
def test_default_learning_rate_follows_the_dataset_and_the_method(dataset):
    dataset_lr = TrainConfig(method="trades", dataset=dataset).resolved().lr
    assert TrainConfig(method="pgd_at", dataset=dataset).resolved().lr == dataset_lr
    # seed 002 trains LMA at a tenth of TRADES' rate
    for method in ("lma_at", "pgd_at_lma", "trades_lma", "mart_lma"):
        assert TrainConfig(method=method, dataset=dataset).resolved().lr == pytest.approx(dataset_lr / 10)
    assert TrainConfig(method="lma_at", dataset=dataset, lr=0.3).resolved().lr == 0.3


def test_missing_data_folder_fails_at_once(tmp_path):
    with pytest.raises(FileNotFoundError, match="Data root not found.*nowhere"):
        train(TrainConfig(dataset="cifar10", data_root=str(tmp_path / "nowhere"), run_dir=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()


def test_trainer_reads_nothing_back_per_step(tmp_path):
    """No host synchronisation in the trainer's step: the metrics stay on the device until the
    end of the epoch (standard training's method reads nothing either, see test_synchronisation)."""
    counter = CountReads()
    per_batch = []
    with counter:
        train(TrainConfig(method="standard", run_dir=str(tmp_path / "run"), **dict(QUICK, epochs=1, batch_size=64)),
              on_batch_end=lambda epoch, batch: per_batch.append(sum(counter.origins.values())))
    steps = [b - a for a, b in zip(per_batch, per_batch[1:])]
    assert len(steps) >= 15 and set(steps) == {0}, steps
    assert counter.origins["train._end_epoch"] >= 1, "the counter sees the epoch's one read of the sums"


def test_tiny_cifar_folder_trains_through_the_real_path(tmp_path):
    write_cifar_folder(tmp_path / "data", "cifar10", train_size=32, test_size=16)
    run_dir = train(TrainConfig(method="trades", dataset="cifar10", data_root=str(tmp_path / "data"),
                                model="cnn_4c3f", epochs=1, batch_size=16, steps=1, eval_steps=1,
                                run_dir=str(tmp_path / "run"), progress=False))
    assert len(metrics(run_dir)) == 1


def test_epoch_batches_shard_the_permutation():
    single = epoch_batches(10, 4, seed=3, epoch=1)
    assert sorted(i for b in single for i in b) == list(range(10))
    assert single == epoch_batches(10, 4, seed=3, epoch=1) != epoch_batches(10, 4, seed=3, epoch=2)
    ranks = [epoch_batches(10, 4, seed=3, epoch=1, rank=r, world_size=2) for r in (0, 1)]
    assert all(len(b) <= 2 for shard in ranks for b in shard)
    assert sorted(i for shard in ranks for b in shard for i in b) == list(range(10))


ENSEMBLE_METHODS = [name for name, method in METHODS.items() if method.ensemble]


@pytest.mark.parametrize("method", [["trades"], ["ascl", "--strategy", "leaked-ls"], ["udr_trades"]]
                         + [[name, "--members", "2"] for name in ENSEMBLE_METHODS]
                         + [["als", "--members", "2", "--shard-members"]],
                         ids=["trades", "ascl", "udr_trades"] + ENSEMBLE_METHODS + ["als_sharded"])
def test_two_gloo_processes_train_and_stay_in_sync(tmp_path, method):
    """ASCL's features go through DDP's own forward (fastadv.methods.representation), so its
    gradients are synchronised like any method's: the ranks' parameters stay equal. UDR's λ
    update all-reduces the mean soft cost inside the step. Every ensemble method trains (its
    gradients all-reduced by the trainer) and its run evaluates."""
    run_dir = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "fastadv.cli", "train", "--method", *method, "--epochs", "2", "--steps", "2",
               "--eval-steps", "3", "--eval-size", "90", "--device", "cpu", "--no-progress",
               "--run-dir", str(run_dir)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("run written to") == 1 and result.stdout.count("epoch 2/2") == 1, result.stdout
    config = json.loads((run_dir / "config.json").read_text())
    assert config["world_size"] == 2
    records = metrics(run_dir)
    # data parallel: the ranks hold the same weights; sharded, each its own member (and the
    # checkpoint every member, gathered)
    sharded = "--shard-members" in method
    assert len(records) == 2
    assert all(r["ranks_in_sync"] for r in records) if not sharded else all("ranks_in_sync" not in r for r in records)
    assert config["shard_members"] == sharded
    load_model(run_dir)
    results = evaluate_run(run_dir, attacks=["fgsm"], size=30, device="cpu", progress=False)
    assert 0 <= results["accuracy"]["fgsm"] <= results["accuracy"]["clean"] <= 1


def test_resume_refuses_changed_settings(tmp_path):
    run_dir = train(TrainConfig(method="standard", run_dir=str(tmp_path / "run"), **dict(QUICK, epochs=1)))
    with pytest.raises(ValueError, match=r"started with other settings \(lr\)"):
        train(TrainConfig(method="standard", run_dir=str(run_dir), resume=True, lr=0.5, **dict(QUICK, epochs=1)))
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume from"):
        train(TrainConfig(method="standard", run_dir=str(tmp_path / "empty"), resume=True, **QUICK))


@pytest.mark.parametrize("change, flags", [(dict(amp=True), "--amp"),
                                           (dict(attack_dtype="bfloat16"), "--attack-dtype bfloat16")])
def test_bf16_on_a_cpu_without_it_warns(tmp_path, monkeypatch, change, flags):
    monkeypatch.setattr(hardware, "cpu_bf16_ratio", lambda: 19.9)
    monkeypatch.setattr(hardware, "_warned", False)
    with pytest.warns(hardware.SlowBF16Warning, match=f"^fastadv train {flags}: .*19.9x slower"):
        Trainer(TrainConfig(method="trades", device="cpu", run_dir=str(tmp_path / "run"), **QUICK, **change))


def test_device_data_trains_and_resumes_exactly(tmp_path):
    """The training set on the device, augmented there (the CUDA default), runs on the CPU too:
    a run interrupted mid-epoch and resumed ends as the unbroken one."""
    write_cifar_folder(tmp_path / "data", "cifar10", train_size=48, test_size=16)
    options = dict(method="pgd_at", dataset="cifar10", data_root=str(tmp_path / "data"), model="cnn_4c3f", epochs=2,
                   batch_size=16, steps=1, eval_steps=1, progress=False, device_data=True, channels_last=True)
    straight = train(TrainConfig(run_dir=str(tmp_path / "straight"), **options))
    assert json.loads((straight / "config.json").read_text())["speed"]["device_data"]

    def press_ctrl_c(epoch, batch):
        if (epoch, batch) == (0, 2):
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted):
        train(TrainConfig(run_dir=str(tmp_path / "broken"), **options), on_batch_end=press_ctrl_c)
    train(TrainConfig(run_dir=str(tmp_path / "broken"), resume=True, **options))
    assert metrics(tmp_path / "broken") == metrics(straight)
    final_a = torch.load(straight / "checkpoint.pt", weights_only=True)["model"]
    final_b = torch.load(tmp_path / "broken" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)


def test_compile_trains(tmp_path):
    """--compile: the model through torch.compile, the attack's input gradients included (a
    compiled module has no truth value: the method must not test it with `or`)."""
    run_dir = train(TrainConfig(method="pgd_at", run_dir=str(tmp_path / "run"), compile=True,
                                **dict(QUICK, epochs=1)))
    assert json.loads((run_dir / "config.json").read_text())["speed"]["compile"]
    assert 0 <= metrics(run_dir)[0]["test_robust_acc"] <= 1


# ----------------------------------------------------------------------------- the graphed step
@pytest.mark.parametrize("options", [
    dict(momentum=0.9, weight_decay=5e-4), dict(momentum=0.9, nesterov=True, weight_decay=5e-4),
    dict(momentum=0.9, dampening=0.1), dict(momentum=0.0, weight_decay=1e-3), dict(momentum=0.9, maximize=True),
], ids=["momentum", "nesterov", "dampening", "plain", "maximize"])
def test_sgd_update_is_torchs_sgd_with_a_tensor_learning_rate(options):
    """The update the step's graph captures is torch's SGD, the learning rate read from a tensor
    (a schedule changing it between steps), to the one rounding it adds: lr·g is rounded before
    it is subtracted, where torch's foreach add rounds p − lr·g once."""
    generator = torch.Generator().manual_seed(0)
    shapes = [(5, 3), (7,)]
    torch_params = [torch.nn.Parameter(torch.randn(s, generator=generator)) for s in shapes]
    our_params = [torch.nn.Parameter(p.detach().clone()) for p in torch_params]
    torch_sgd = torch.optim.SGD(torch_params, lr=0.1, **options)
    our_sgd = torch.optim.SGD(our_params, lr=0.1, **options)
    lr = torch.zeros(())
    for step in range(5):
        grads = [torch.randn(s, generator=generator) for s in shapes]
        for params in (torch_params, our_params):
            for p, g in zip(params, grads):
                p.grad = g.clone()
        torch_sgd.param_groups[0]["lr"] = 0.1 * 0.5 ** step
        torch_sgd.step()
        lr.fill_(0.1 * 0.5 ** step)
        sgd_update(our_sgd, [lr])
    for ours, theirs in zip(our_params, torch_params):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)
        if options["momentum"]:
            torch.testing.assert_close(our_sgd.state[ours]["momentum_buffer"], torch_sgd.state[theirs]["momentum_buffer"],
                                       rtol=1e-6, atol=1e-7)


def _one_batch(trainer, size=32):
    x = torch.stack([trainer.train_set[i][0] for i in range(size)]).to(trainer.device)
    y = torch.stack([torch.as_tensor(trainer.train_set[i][1]) for i in range(size)]).to(trainer.device)
    return x, y


def _eager_graphed_step(trainer):
    return GraphedStep(trainer.method, trainer.model, trainer.optimizer, amp=trainer.amp, capture=False)


def _snapshot(trainer):
    """(the model's state, the optimizer's per-parameter state), copied."""
    return ({k: v.clone() for k, v in trainer.model.state_dict().items()},
            {p: {k: v.clone() for k, v in state.items()} for p, state in trainer.optimizer.state.items()})


@pytest.mark.parametrize("method", ["pgd_at", "trades", "mart"])
def test_the_graphed_steps_body_is_the_trainers_step(tmp_path, method):
    """What --cuda-graphs captures as a whole (GraphedStep's body, run eagerly here) takes the
    trainer's own step: from the same weights and random state, the same weights after two
    batches, to the rounding sgd_update adds."""
    trainer = Trainer(TrainConfig(method=method, run_dir=str(tmp_path / "run"), **dict(QUICK, epochs=1)))
    graphed = _eager_graphed_step(trainer)
    x, y = _one_batch(trainer)
    weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    results = []
    for step in (trainer._step, graphed.run):
        trainer.model.load_state_dict(weights)
        trainer.optimizer.state.clear()
        for seed in (1, 2):
            torch.manual_seed(seed)
            step(x, y)
        results.append({k: v.clone() for k, v in trainer.model.state_dict().items()})
    for name, value in results[0].items():
        torch.testing.assert_close(results[1][name], value, rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize("method", sorted(name for name, cls in METHODS.items() if cls.step_graph))
def test_the_graphed_steps_body_reads_nothing(tmp_path, method):
    """What a capture needs: the step reads no value back from the device (the training labels
    are checked once, when the GraphedStep is made)."""
    options = dict(QUICK, epochs=1)
    if METHODS[method].ensemble:
        options["models"] = "digits_cnn, digits_cnn"
    # ltd needs a teacher run: a trades trainer, its method replaced by ltd with a copy of the model as teacher
    trainer = Trainer(TrainConfig(method="trades" if method == "ltd" else method, run_dir=str(tmp_path / "run"),
                                  **options))
    if method == "ltd":
        settings = {k: getattr(trainer.method, k) for k in ("eps", "alpha", "steps")}
        trainer.method = build_method("ltd", teacher=copy.deepcopy(trainer.model), **settings)
    graphed = _eager_graphed_step(trainer)
    x, y = _one_batch(trainer)
    graphed.run(x, y)  # the momentum buffers are made on the first step
    with CountReads() as counter:
        metrics = graphed.run(x, y)
    assert dict(counter.origins) == {}
    assert set(metrics) >= {"loss"}


def test_the_whole_step_is_refused_with_its_reason():
    cuda, trades = torch.device("cuda"), build_method("trades")  # what would be refused on a GPU
    assert "device is cpu" in GraphedStep.refusal(trades, torch.device("cpu"))
    assert GraphedStep.refusal(trades, cuda) is None
    assert "step_graph is False" in GraphedStep.refusal(build_method("udr_trades"), cuda)
    assert "--compile" in GraphedStep.refusal(trades, cuda, compiled=True)
    assert "torchrun" in GraphedStep.refusal(trades, cuda, distributed=True)
    assert "members" in GraphedStep.refusal(trades, cuda, members=True)
    adam = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
    assert "Adam" in GraphedStep.refusal(trades, cuda, adam)


def test_cuda_graphs_on_the_cpu_is_refused_at_once(tmp_path):
    with pytest.raises(ValueError, match="cuda_graphs: CUDA graphs need a CUDA device"):
        Trainer(TrainConfig(method="trades", run_dir=str(tmp_path / "run"), cuda_graphs=True, **QUICK))


@pytest.mark.cuda
@pytest.mark.parametrize("method", ["pgd_at", "trades"])
def test_the_replayed_step_is_the_eager_step(tmp_path, method):
    """On a GPU: the whole step replayed from its graph equals the same step run eagerly from the
    same weights, optimiser state and random state (the attack's start drawn bit for bit alike;
    the rest to the rounding of cuDNN's algorithms, which a capture may pick differently)."""
    trainer = Trainer(TrainConfig(method=method, run_dir=str(tmp_path / "run"), cuda_graphs=True, device="cuda",
                                  **dict(QUICK, epochs=1)))
    assert trainer.graphed_step is not None and trainer.speed["cuda_graphs"] == "whole step"
    x, y = _one_batch(trainer)
    for _ in range(GraphedStep.WARMUP + 1):  # eager steps, then the capture and its first replay
        trainer.graphed_step.run(x, y)
    assert len(trainer.graphed_step.graphs) == 1
    before, rng = _snapshot(trainer), torch.cuda.get_rng_state()
    trainer.graphed_step.run(x, y)  # a replay
    after = _snapshot(trainer)
    trainer.model.load_state_dict(before[0])
    for parameter, saved in before[1].items():
        for name, value in saved.items():
            trainer.optimizer.state[parameter][name].copy_(value)
    torch.cuda.set_rng_state(rng)
    trainer.graphed_step._step(x, y)  # the same step, eagerly
    torch.cuda.synchronize()
    for name, value in after[0].items():
        torch.testing.assert_close(trainer.model.state_dict()[name], value, rtol=1e-3, atol=1e-5, msg=name)
    run_dir = train(TrainConfig(method=method, run_dir=str(tmp_path / "full"), cuda_graphs=True, device="cuda",
                                **dict(QUICK, epochs=1)))
    assert metrics(run_dir)[-1]["step_graphs"] >= 1


def test_member_devices_train_as_the_ensemble_on_one_device(tmp_path):
    """--member-devices: each member behind hooks that move its input to its device and its
    logits back (here every device is the CPU: what the GPU check runs across cpu and cuda:0);
    the run is the unplaced one, weights and metrics."""
    options = dict(QUICK, method="als", members=2, epochs=1)
    plain = train(TrainConfig(run_dir=str(tmp_path / "plain"), **options))
    placed = train(TrainConfig(run_dir=str(tmp_path / "placed"), member_devices="cpu,cpu", **options))
    assert json.loads((placed / "config.json").read_text())["member_devices"] == ["cpu", "cpu"]
    assert metrics(placed) == metrics(plain)
    a = torch.load(plain / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(placed / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("settings, message", [
    (dict(method="trades", member_devices="cpu,cpu"), "only an ensemble's members are placed"),
    (dict(method="adv_en", members=2, member_devices="cpu"), r"name one device per member \(2\), got 1: cpu"),
    (dict(method="adv_en", members=2, member_devices="cpu,gpu7"), "'gpu7' is not a device"),
])
def test_member_devices_are_checked(settings, message):
    with pytest.raises(ValueError, match=f"member_devices: {message}"):
        TrainConfig(**settings).resolved()


@pytest.mark.cuda
def test_members_on_the_cpu_and_the_gpu_train_as_on_the_gpu(tmp_path):
    """Members placed apart for real: member 0 on the CPU, member 1 on the GPU, batches on the
    GPU; the run follows the one with both members on the GPU. The CPU's and the GPU's
    convolutions round apart, and the sign of an L-inf attack's step turns a rounding into a pixel
    stepped the other way now and then, so the runs are compared by their epoch's loss and
    accuracies, not bit for bit."""
    options = dict(QUICK, method="adv_en", members=2, epochs=1, device="cuda", amp=False, channels_last=False,
                   device_data=False, cudnn_benchmark=False)
    together = train(TrainConfig(run_dir=str(tmp_path / "together"), **options))
    apart = train(TrainConfig(run_dir=str(tmp_path / "apart"), member_devices="cpu,cuda", **options))
    (one,), (other,) = metrics(together), metrics(apart)
    assert other["train_loss"] == pytest.approx(one["train_loss"], rel=0.02)
    assert abs(other["test_clean_acc"] - one["test_clean_acc"]) <= 0.05
    assert abs(other["test_robust_acc"] - one["test_robust_acc"]) <= 0.05


@pytest.mark.parametrize("settings, message", [
    (dict(method="trades", shard_members=True), "only an ensemble's members are sharded"),
    (dict(method="adv_en", members=2, shard_members=True, member_devices="cpu,cpu"), "drop --member-devices"),
    (dict(method="adv_en", members=2, shard_members="yes"), "must be a bool, got str"),
    (dict(method="adv_en", members=2, shard_members=True, cuda_graphs=True), "drop --cuda-graphs"),
])
def test_shard_members_is_checked(settings, message):
    with pytest.raises((ValueError, TypeError), match=f"shard_members:? .*{message}"):
        TrainConfig(**settings).resolved()


def test_shard_members_needs_a_process_per_member(tmp_path):
    with pytest.raises(ValueError, match="shard_members: one member per process: 2 members need a torchrun world of "
                                         "2 processes, this one has 1"):
        Trainer(TrainConfig(method="adv_en", members=2, shard_members=True, run_dir=str(tmp_path / "run"), **QUICK))


def test_a_repeated_stop_signal_within_seconds_is_one_request(tmp_path, monkeypatch):
    """Ctrl-C in torchrun's terminal reaches a rank twice (from the terminal, and passed on by
    torchrun): a repeat within REPEAT_SECONDS is the same request; a later one stops at once."""
    from fastadv import train as train_module

    trainer = Trainer(TrainConfig(method="standard", run_dir=str(tmp_path / "run"), **QUICK))
    now = [1000.0]
    monkeypatch.setattr(train_module.time, "monotonic", lambda: now[0])
    trainer._on_interrupt(signal.SIGINT, None)
    now[0] += train_module.REPEAT_SECONDS / 2
    trainer._on_interrupt(signal.SIGTERM, None)
    assert trainer._stop_agreed()
    now[0] += train_module.REPEAT_SECONDS
    with pytest.raises(KeyboardInterrupt):
        trainer._on_interrupt(signal.SIGINT, None)
