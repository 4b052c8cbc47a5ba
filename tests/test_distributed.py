"""Training under torchrun: a step on W gloo processes is the single-process step on the global
batch, for every method whose loss is a mean over samples (fastadv.distributed), ensembles
included; the method state stays what one process holds; a run killed mid-epoch resumes exactly;
two "nodes" rendezvous over loopback. All on the CPU, with gloo."""
import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastadv.logs import metric_tag
from fastadv.methods import REGISTRY
from fastadv.train import TrainConfig, epoch_batches, train

ROOT = Path(__file__).resolve().parents[1]
STEPS_SCRIPT = ROOT / "tests" / "distributed_steps.py"
RUN_SCRIPT = ROOT / "tests" / "distributed_run.py"
ENV = dict(os.environ, OMP_NUM_THREADS="1")
#: the settings of every case: the digits, 2 attack steps, 2 global batches of 32
BATCH, GLOBAL_BATCHES = 32, 2


def torchrun(processes: int, *arguments, nodes: int = 1, check: bool = True, timeout: int = 600, **options):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
    command += ["--standalone"] if nodes == 1 else []
    result = subprocess.run(command + [str(a) for a in arguments], capture_output=True, text=True, env=ENV,
                            timeout=timeout, **options)
    if check:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def case(name: str, reference: str | None = None, **settings) -> dict:
    """A case of tests/distributed_steps.py; ``reference``: the one-process case it must equal."""
    return {"name": name, "reference": reference or name, "settings": {"steps": 2, **settings}, "batch": BATCH,
            "steps": GLOBAL_BATCHES}


#: the ensembles of the tests: every ensemble method, and trades training members
ENSEMBLES = [name for name, method in REGISTRY.items() if method.ensemble] + ["trades_members"]


def ensemble_settings(name: str, members: int) -> dict:
    return {"method": "trades" if name == "trades_members" else name, "members": members}


def cases(teacher: str) -> list[dict]:
    """Every method once (an ensemble method on 2 members), trades training 2 members, and each
    ensemble sharded over the ranks (one member per rank: its reference is the ensemble in one
    process)."""
    out = []
    for name, method in REGISTRY.items():
        settings = {"method": name}
        if method.ensemble:
            settings["members"] = 2
        if name == "ltd":
            settings["teacher"] = teacher
        out.append(case(name, **settings))
    out.append(case("trades_members", **ensemble_settings("trades_members", 2)))
    return out + [case(f"sharded_{name}", name, shard_members=True, **ensemble_settings(name, 2)) for name in ENSEMBLES]


#: the cases run on four processes: the ensembles and the methods with state, data parallel, and
#: sharded ensembles of four members (whose references, 4 members in one process, run apart)
FOUR = ("adv_en", "adp", "als", "cce", "tamoo_at", "trades_members", "udr_pgd", "pgd_at_lma", "pgd_at",
        "sharded4_als", "sharded4_cce", "sharded4_tamoo_at")


def four_member_cases() -> list[dict]:
    out = []
    for name in ("als", "cce", "tamoo_at"):
        out.append(case(f"{name}4", **ensemble_settings(name, 4)))
        out.append(case(f"sharded4_{name}", f"{name}4", shard_members=True, **ensemble_settings(name, 4)))
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """OUT/<world size>/<case>.pt for one, two and four processes."""
    out = tmp_path_factory.mktemp("distributed")
    teacher = train(TrainConfig(method="standard", dataset="digits", epochs=1, eval_size=30, eval_steps=1,
                                progress=False, device="cpu", run_dir=str(out / "teacher")))
    every = cases(str(teacher)) + four_member_cases()
    (out / "one.json").write_text(json.dumps([c for c in every if "shard_members" not in c["settings"]]))
    (out / "all.json").write_text(json.dumps([c for c in every if c["settings"].get("members") != 4]))
    (out / "four.json").write_text(json.dumps([c for c in every if c["name"] in FOUR]))
    for world in (1, 2, 4):
        (out / str(world)).mkdir()
    subprocess.run([sys.executable, STEPS_SCRIPT, out / "1", out / "one.json"], check=True, env=ENV, timeout=600)
    torchrun(2, STEPS_SCRIPT, out / "2", out / "all.json")
    torchrun(4, STEPS_SCRIPT, out / "4", out / "four.json")
    return out


def load(runs: Path, world: int, name: str) -> dict:
    return torch.load(runs / str(world) / f"{name}.pt", weights_only=True)


def largest_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def interleaved(shares: list[torch.Tensor]) -> torch.Tensor:
    """The rows of the ranks' shares in global-batch order (rank r holds rows r, r + W, ...)."""
    out = torch.empty((sum(len(s) for s in shares),) + tuple(shares[0].shape[1:]), dtype=shares[0].dtype)
    for rank, share in enumerate(shares):
        out[rank::len(shares)] = share
    return out


def test_the_batch_coupled_methods_say_why():
    coupled = {name for name, method in REGISTRY.items() if method.batch_coupled}
    assert coupled == {"adr", "ascl", "lrm"}
    assert all(REGISTRY[name].batch_coupled.startswith("its ") for name in coupled)


REFERENCES = {c["name"]: c["reference"] for c in cases("teacher") + four_member_cases()}
METHOD_OF = {c["name"]: c["settings"]["method"] for c in cases("teacher") + four_member_cases()}


@pytest.mark.parametrize("world, name", [(2, c["name"]) for c in cases("teacher")] + [(4, name) for name in FOUR])
def test_a_step_on_several_processes_is_the_single_process_step(runs, world, name):
    """The same weights after two steps on the same global batches (float64, where the one
    process's mean and the ranks' averaged means agree to rounding; a sharded ensemble's step is
    the one process's, operation for operation). A batch-coupled method (``batch_coupled``) is
    checked to differ under data parallelism, so that its declaration stays true."""
    one, several = load(runs, 1, REFERENCES[name]), load(runs, world, name)
    assert several["world_size"] == world
    difference = largest_difference(one["model"], several["model"])
    method = REGISTRY[METHOD_OF[name]]
    if method.batch_coupled:
        assert difference > 1e-9, f"{name} is declared batch-coupled but steps as one process does"
        return
    assert difference < 1e-12, difference
    # the method's state: UDR's λ and ALS's schedule alike on every rank and as in one process;
    # LMA's moving averages are of each rank's share: together, the one process's
    states, (single,) = several["method_states"], one["method_states"]
    assert len(states) == world
    for key, value in single.items():
        if key.startswith("ema_"):
            assert torch.allclose(interleaved([s[key] for s in states]), value, rtol=0, atol=1e-12), key
        else:
            for state in states:
                assert torch.allclose(torch.as_tensor(state[key]).double(), torch.as_tensor(value).double(),
                                      rtol=0, atol=1e-12), (key, state[key], value)


def test_epoch_batches_deal_the_single_process_batches():
    """Rank r's batch i holds the samples at positions r, r + W, ... of the one process's batch
    i: the ranks' shares are the global batches (what the random starts are drawn for)."""
    size, batch = 96, 16
    single = epoch_batches(size, batch, seed=5, epoch=2)
    for world in (2, 4):
        shares = [epoch_batches(size, batch, seed=5, epoch=2, rank=r, world_size=world) for r in range(world)]
        for i, whole in enumerate(single):
            assert interleaved([torch.tensor(s[i]) for s in shares]).tolist() == whole


def metrics(run_dir):
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]


def final_weights(run_dir):
    return torch.load(Path(run_dir) / "checkpoint.pt", weights_only=True)["model"]


RUN = dict(method="als", members=2, dataset="digits", epochs=3, batch_size=128, steps=2, eval_steps=2, eval_size=60,
           device="cpu", progress=False)


#: the two ways an ensemble runs under torchrun: data parallel, or one member per rank
LAYOUTS = {"data_parallel": {}, "sharded": {"shard_members": True}}
_unbroken = {}


def unbroken(layout: str, tmp_path_factory) -> Path:
    """ALS on 2 members (its λ schedule; the gradients averaged outside DDP, or each member on
    its rank), 3 epochs on two processes, unbroken: run once per layout and module."""
    if layout not in _unbroken:
        out = tmp_path_factory.mktemp(f"straight-{layout}")
        config = out / "config.json"
        config.write_text(json.dumps(dict(RUN, run_dir=str(out / "run"), **LAYOUTS[layout])))
        torchrun(2, RUN_SCRIPT, config)
        _unbroken[layout] = out / "run"
    return _unbroken[layout]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    return unbroken("data_parallel", tmp_path_factory)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_a_rank_killed_mid_epoch_resumes_exactly(tmp_path, tmp_path_factory, layout):
    """Rank 1 is killed (SIGKILL) in the middle of epoch 2: torchrun stops the run, the last
    checkpoint (end of epoch 1, written atomically) is intact, and --resume on two processes
    ends with the unbroken run's weights and metrics (a sharded ensemble's checkpoint holds
    every member, gathered, and each rank's optimiser state)."""
    straight = unbroken(layout, tmp_path_factory)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(dict(RUN, run_dir=str(tmp_path / "run"), **LAYOUTS[layout])))
    killed = torchrun(2, RUN_SCRIPT, config, "--kill", "1", "1", "4", check=False)
    assert killed.returncode != 0
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert (checkpoint["epoch"], checkpoint["batch"], checkpoint["world_size"]) == (1, 0, 2)
    assert len(checkpoint["ranks"]) == 2 and not list((tmp_path / "run").glob("*.tmp*"))
    assert checkpoint["model"].keys() == final_weights(straight).keys()  # every member's weights
    config.write_text(json.dumps(dict(RUN, run_dir=str(tmp_path / "run"), resume=True, **LAYOUTS[layout])))
    torchrun(2, RUN_SCRIPT, config)
    assert metrics(tmp_path / "run") == metrics(straight)
    a, b = final_weights(tmp_path / "run"), final_weights(straight)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ctrl_c_under_torchrun_checkpoints_and_resumes_exactly(tmp_path, straight):
    """SIGINT to torchrun (as Ctrl-C in its terminal) mid-epoch: torchrun passes it to the
    ranks, which agree on a batch to stop after, write one checkpoint there and exit; --resume
    ends as the unbroken run."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps(dict(RUN, run_dir=str(tmp_path / "run"))))
    stopped = torchrun(2, RUN_SCRIPT, config, "--interrupt-torchrun", "1", "1", "3", check=False)
    assert stopped.returncode != 0
    assert stopped.stdout.count("interrupted: checkpoint written") == 1, stopped.stdout + stopped.stderr[-3000:]
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == 1 and checkpoint["batch"] >= 3
    config.write_text(json.dumps(dict(RUN, run_dir=str(tmp_path / "run"), resume=True)))
    torchrun(2, RUN_SCRIPT, config)
    assert metrics(tmp_path / "run") == metrics(straight)
    a, b = final_weights(tmp_path / "run"), final_weights(straight)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_with_another_world_size_is_refused(tmp_path, straight):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(dict(RUN, run_dir=str(straight), resume=True, epochs=RUN["epochs"])))
    with pytest.raises(ValueError, match=r"trained by 2 process\(es\) \(world size 2\) and this one has 1"):
        train(TrainConfig(**dict(RUN, run_dir=str(straight), resume=True)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_of_two_processes_over_loopback(tmp_path):
    """torchrun --nnodes 2 --rdzv-backend c10d: two "nodes" on this machine, two processes each,
    train an ensemble (ADV-EN, 2 members) for an epoch as one world of four."""
    endpoint = f"127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "2",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "fastadv-test",
               "-m", "fastadv.cli", "train", "--method", "adv_en", "--members", "2", "--epochs", "1",
               "--steps", "1", "--eval-steps", "1", "--eval-size", "40", "--device", "cpu", "--no-progress",
               "--run-dir", str(tmp_path / "run")]
    nodes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
             for _ in range(2)]
    outputs = [node.communicate(timeout=600) for node in nodes]
    assert all(node.returncode == 0 for node in nodes), [err[-3000:] for _, err in outputs]
    assert sum(out.count("run written to") for out, _ in outputs) == 1
    assert json.loads((tmp_path / "run" / "config.json").read_text())["world_size"] == 4
    records = metrics(tmp_path / "run")
    assert len(records) == 1 and records[0]["ranks_in_sync"]


def test_tensorboard_event_files_of_a_torchrun_run(tmp_path):
    """--logger tensorboard under torchrun: rank 0 alone writes (one event file), every metric of
    metrics.jsonl is there, with the epoch's adversarial examples; fastadv eval adds its table."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    torchrun(2, "-m", "fastadv.cli", "train", "--method", "trades", "--members", "2", "--epochs", "2",
             "--steps", "1", "--eval-steps", "1", "--eval-size", "40", "--device", "cpu", "--no-progress",
             "--logger", "tensorboard", "--run-dir", run_dir)
    files = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert len(files) == 1
    result = subprocess.run([sys.executable, "-m", "fastadv.cli", "eval", str(run_dir), "--attacks", "fgsm",
                             "--size", "30", "--device", "cpu", "--no-progress"], capture_output=True, text=True,
                            env=ENV, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "tensors": 0}).Reload()
    tags = events.Tags()
    record = metrics(run_dir)[-1]
    for name, value in record.items():
        if name != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
            assert [e.step for e in events.Scalars(metric_tag(name))] == [1, 2], name
    assert "train/loss" in tags["scalars"] and "run/lr" in tags["scalars"]
    assert [e.step for e in events.Images("examples/pgd1")] == [1, 2]
    assert [e.step for e in events.Scalars("eval/fgsm")] == [2]


@pytest.mark.parametrize("command", ["train", "eval", "reproduce"])
def test_every_flag_of_fastadv_passes_through_torchrun(command):
    """torchrun's parser reads the whole command line, ``-m fastadv.cli ...`` included, and takes
    a flag that begins one of its own options as that option's abbreviation (or refuses it as
    ambiguous, as it would ``--log`` for ``--log-dir``): none of fastadv's flags may."""
    from torch.distributed.run import get_args_parser

    from fastadv.cli import build_parser

    theirs = [option for action in get_args_parser()._actions for option in action.option_strings
              if option.startswith("--")]
    subcommands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    ours = [option for action in subcommands.choices[command]._actions for option in action.option_strings
            if option.startswith("--") and option != "--help"]
    taken = sorted(f"{mine} abbreviates {other}" for mine in ours for other in theirs
                   if other.startswith(mine) and other != mine or other == mine)
    assert not taken, taken
