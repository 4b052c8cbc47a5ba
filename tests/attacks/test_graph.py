"""The graphed attack (fastadv.attacks.graph): what capture needs, checked on the CPU (the loop's
steps are the same ops every step and read nothing back; bad input refused by name), and on a
GPU (`cuda`-marked) the graphed attack against the eager one from the same random state."""
from __future__ import annotations

import collections

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from fastadv.attacks import PGD
from fastadv.attacks import graph as graphs
from fastadv.attacks.graph import GraphUnavailable
from fastadv.models import build_model
from fastadv.data import dataset_info

aten = torch.ops.aten
# Ops that read a value back to the host, or make a tensor from host data: neither can be captured.
HOST = {aten._local_scalar_dense.default, aten.lift_fresh.default, aten.equal.default, aten.allclose.default,
        aten.nonzero.default}


def small_model(classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 8 * 8, classes))


class StepLog(TorchDispatchMode):
    """The ops of each step of the attack loop (a step ends with the fused update)."""

    def __init__(self):
        super().__init__()
        self.steps = [[]]
        self.host = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in HOST:
            self.host[str(func)] += 1
        shapes = tuple(tuple(t.shape) for t in (out if isinstance(out, (tuple, list)) else (out,))
                       if isinstance(t, torch.Tensor))
        self.steps[-1].append((str(func), shapes))
        if "pgd_step_" in str(func):
            self.steps.append([])
        return out


@pytest.mark.parametrize("loss", ["ce", "kl", "cw", "margin_ce"])
def test_every_step_runs_the_same_ops_and_reads_nothing(loss):
    """What a CUDA graph needs of the loop, on the CPU: after the first step (which checks the
    labels), every step dispatches the same ops on the same shapes, and none reads a value back
    or makes a tensor from host data."""
    model = small_model()
    x, y = torch.rand(6, 3, 8, 8), torch.randint(0, 10, (6,))
    attack = PGD(model, eps=0.1, alpha=0.02, steps=5, loss=loss)
    log = StepLog()
    with log:
        attack(x, y)
    steps = log.steps[1:-1]  # the first holds the start and the labels' check; the last is what follows
    assert len(steps) == 4
    assert all(step == steps[0] for step in steps[1:])
    assert not any(op in HOST_NAMES for step in steps for op, _ in step)


HOST_NAMES = {str(op) for op in HOST}


def test_graph_true_on_cpu_tensors_is_refused_by_name():
    attack = PGD(small_model(), eps=0.1, steps=2, graph=True)
    with pytest.raises(GraphUnavailable, match="graph=True .* x is on cpu"):
        attack(torch.rand(4, 3, 8, 8), torch.randint(0, 10, (4,)))


def test_graph_auto_on_cpu_runs_eagerly_with_a_warning():
    model = small_model()
    x, y = torch.rand(4, 3, 8, 8), torch.randint(0, 10, (4,))
    eager = PGD(model, eps=0.1, steps=3, generator=torch.Generator().manual_seed(3))(x, y)
    graphs._WARNED.clear()
    with pytest.warns(RuntimeWarning, match="without a graph"):
        auto = PGD(model, eps=0.1, steps=3, generator=torch.Generator().manual_seed(3), graph="auto")(x, y)
    assert torch.equal(auto, eager)


def test_bad_graph_arguments():
    with pytest.raises(ValueError, match="graph must be False, True or 'auto'"):
        PGD(small_model(), graph="yes")
    with pytest.raises(GraphUnavailable, match="early_stop"):
        PGD(small_model(), graph=True, early_stop=True)


def _moo_tasks(kind, model):
    from fastadv.attacks.multi_objective import EnsembleTasks, TransformTasks, UniversalTasks

    if kind == "ens":
        torch.manual_seed(1)
        return EnsembleTasks([model, small_model(), small_model()])
    if kind == "uni":
        return UniversalTasks(model, group=2)
    return TransformTasks(model, ("identity", "hflip", "rotation"), stochastic=True)


@pytest.mark.parametrize("kind", ["ens", "uni", "eot"])
def test_multi_objective_graph_on_cpu_is_refused_or_runs_eagerly(kind):
    from fastadv.attacks.multi_objective import MultiObjectivePGD

    model = small_model().eval()
    x, y = torch.rand(4, 3, 8, 8), torch.randint(0, 10, (4,))
    tasks = _moo_tasks(kind, model)
    with pytest.raises(GraphUnavailable, match="MultiObjectivePGD: graph=True .* x is on cpu"):
        MultiObjectivePGD(tasks, steps=2, seed=0, graph=True)(x, y)
    eager = MultiObjectivePGD(tasks, steps=3, seed=0).run(x, y)
    graphs._WARNED.clear()
    with pytest.warns(RuntimeWarning, match="without a graph"):
        auto = MultiObjectivePGD(tasks, steps=3, seed=0, graph="auto").run(x, y)
    assert all(torch.equal(a, b) for a, b in zip(auto, eager))
    with pytest.raises(ValueError, match="graph must be False, True or 'auto'"):
        MultiObjectivePGD(tasks, graph=1)


def test_trainer_refuses_cuda_graphs_on_the_cpu(tmp_path):
    from fastadv.train import TrainConfig, Trainer

    with pytest.raises(ValueError, match="cuda_graphs: CUDA graphs need a CUDA device"):
        Trainer(TrainConfig(epochs=1, run_dir=str(tmp_path / "run"), device="cpu", cuda_graphs=True, progress=False))


# ----------------------------------------------------------------------------- on a GPU
# Eager and graphed runs may pick different cuDNN algorithms (a capture cannot take every
# workspace), so their gradients agree to rounding, not bit for bit: with TF32 (cuDNN's default
# for float32) to about 1e-3, which an L2 step carries into the examples. The comparisons run in
# true float32; the start, which involves no gradient, must be equal exactly.
@pytest.fixture
def float32_convolutions():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def cifar_model(device, name="preact_resnet18"):
    torch.manual_seed(0)
    return build_model(name, dataset_info("cifar10")).to(device).eval()


def _pair(model, x, y, own_generator=True, **options):
    """(eager, graphed) examples of two calls each, from the same random state: a generator of
    the attack's own seeded alike, or torch's default CUDA generator (``own_generator=False``)."""
    results = {}
    for graph in (False, True):
        torch.cuda.manual_seed(5)
        generator = torch.Generator(device=x.device).manual_seed(5) if own_generator else None
        attack = PGD(model, generator=generator, graph=graph, **options)
        results[graph] = [attack(x, y) for _ in range(2)]
    return results[False], results[True]


def assert_same_examples(eager, graphed, norm, alpha, steps):
    """The same examples up to the rounding of the gradients (see above). L2: one step (each
    later step would carry the rounding of its gradient into the next point, where the network
    amplifies it), equal to 1e-5. L∞: a sign step turns a rounding-level difference of a gradient
    entry near 0 into a step of 2α, so at most 0.1% of the entries may differ, each by at most 2α
    per step; all others equal to 1e-5."""
    for a, b in zip(eager, graphed):
        difference = (a - b).abs()
        if norm == "l2":
            assert steps == 1 and difference.max() <= 1e-5
        else:
            assert difference.gt(1e-5).float().mean() <= 1e-3
            assert difference.max() <= 2 * alpha * steps + 1e-6


@pytest.mark.cuda
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_graphed_start_is_the_eager_start(norm):
    """α = 0: the examples are the random starts, drawn inside the graph: equal bit for bit."""
    device = torch.device("cuda")
    model = cifar_model(device)
    x, y = torch.rand(32, 3, 32, 32, device=device), torch.randint(0, 10, (32,), device=device)
    eager, graphed = _pair(model, x, y, eps=8 / 255 if norm == "linf" else 0.5, alpha=0.0, steps=2, norm=norm)
    assert all(torch.equal(a, b) for a, b in zip(eager, graphed))
    assert not torch.equal(graphed[0], graphed[1])  # each replay draws a new start


@pytest.mark.cuda
@pytest.mark.parametrize("loss", ["ce", "kl", "cw", "margin_ce"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_graphed_equals_eager(float32_convolutions, loss, norm):
    device = torch.device("cuda")
    model = cifar_model(device)
    x, y = torch.rand(32, 3, 32, 32, device=device), torch.randint(0, 10, (32,), device=device)
    eps, steps = (8 / 255, 5) if norm == "linf" else (0.5, 1)
    eager, graphed = _pair(model, x, y, eps=eps, alpha=eps / 4, steps=steps, loss=loss, norm=norm)
    assert_same_examples(eager, graphed, norm, eps / 4, steps)
    assert graphs.graphs_captured(model) == 1


@pytest.mark.cuda
def test_graphed_per_sample_radii_channels_last_restarts_and_autocast(float32_convolutions):
    device = torch.device("cuda")
    model = cifar_model(device).to(memory_format=torch.channels_last)
    x = torch.rand(16, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (16,), device=device)
    eps = torch.linspace(1 / 255, 8 / 255, 16, device=device)
    eager, graphed = _pair(model, x, y, eps=eps, alpha=eps / 4, steps=4, restarts=2)
    assert_same_examples(eager, graphed, "linf", 2 / 255, 4)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        eager, graphed = _pair(model, x, y, eps=8 / 255, alpha=2 / 255, steps=4)
    for a, b in zip(eager, graphed):
        # bf16 logits: a gradient's sign can differ between the two runs' roundings
        assert (a - b).abs().gt(1e-5).float().mean() < 0.01


@pytest.mark.cuda
def test_a_new_shape_captures_a_new_graph_and_is_right(float32_convolutions):
    device = torch.device("cuda")
    model = cifar_model(device)
    for batch in (8, 12, 8):
        x, y = torch.rand(batch, 3, 32, 32, device=device), torch.randint(0, 10, (batch,), device=device)
        eager, graphed = _pair(model, x, y, own_generator=False, steps=3)
        assert_same_examples(eager, graphed, "linf", 2 / 255, 3)
    assert graphs.graphs_captured(model) == 2  # batch 8's graph is replayed the second time


class Syncing(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = cifar_model("cuda")

    def forward(self, x):
        if x.sum().item() < -1:  # a read of a device value
            return -self.net(x)
        return self.net(x)


@pytest.mark.cuda
def test_a_model_that_reads_the_device_is_refused_or_run_eagerly():
    device = torch.device("cuda")
    x, y = torch.rand(8, 3, 32, 32, device=device), torch.randint(0, 10, (8,), device=device)
    model = Syncing()
    with pytest.raises(GraphUnavailable, match="reads a value back from the device"):
        PGD(model, steps=2, graph=True)(x, y)
    graphs._WARNED.clear()
    with pytest.warns(RuntimeWarning, match="without a graph"):
        out = PGD(model, steps=2, graph="auto", generator=torch.Generator(device).manual_seed(0))(x, y)
    eager = PGD(model, steps=2, generator=torch.Generator(device).manual_seed(0))(x, y)
    assert_same_examples([out], [eager], "linf", 2 / 255, 2)


@pytest.mark.cuda
def test_labels_out_of_range_are_refused_on_replay():
    device = torch.device("cuda")
    model = cifar_model(device)
    x, y = torch.rand(8, 3, 32, 32, device=device), torch.randint(0, 10, (8,), device=device)
    attack = PGD(model, steps=2, graph=True)
    attack(x, y)
    with pytest.raises(ValueError, match="label"):
        attack(x, torch.full_like(y, 10))


@pytest.mark.cuda
def test_trainer_with_cuda_graphs(tmp_path):
    from fastadv.train import TrainConfig, train
    import json

    run = train(TrainConfig(method="pgd_at", dataset="synthetic", epochs=1, batch_size=64, eval_size=64,
                            run_dir=str(tmp_path / "run"), cuda_graphs=True, progress=False))
    config = json.loads((run / "config.json").read_text())
    assert config["speed"]["cuda_graphs"] and config["speed"]["channels_last"] and config["speed"]["device_data"]
    metrics = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert metrics["attack_graphs"] >= 1


@pytest.mark.cuda
@pytest.mark.parametrize("weighting", ["uniform", "tamoo"])
@pytest.mark.parametrize("kind", ["ens", "uni", "eot"])
def test_multi_objective_graphed_equals_eager(float32_convolutions, kind, weighting):
    """The multi-objective attack through its graph, from the same seed as the eager run: with
    α = 0, its start bit for bit and its weights to the rounding of the gradients; with steps,
    its examples as for PGD. The second call replays (the generator reseeded: the same again)."""
    from fastadv.attacks.multi_objective import MultiObjectivePGD

    device = torch.device("cuda")
    model = small_model().to(device).eval()
    x, y = torch.rand(8, 3, 8, 8, device=device), torch.randint(0, 10, (8,), device=device)
    tasks = _moo_tasks(kind, model)
    tasks.model.to(device)  # an ensemble's other members
    for alpha, steps in ((0.0, 2), (2 / 255, 5)):
        eager = MultiObjectivePGD(tasks, weighting=weighting, alpha=alpha, steps=steps, seed=3).run(x, y)
        attack = MultiObjectivePGD(tasks, weighting=weighting, alpha=alpha, steps=steps, seed=3, graph=True)
        for graphed in (attack.run(x, y), attack.run(x, y)):  # captured, then replayed; reseeded each call
            assert graphed.achieved.shape == eager.achieved.shape
            if alpha == 0.0:  # every step's gradients at the same points: the weights to their rounding
                assert torch.equal(graphed.x_adv, eager.x_adv)
                torch.testing.assert_close(graphed.weights, eager.weights, rtol=1e-3, atol=1e-4)
            else:
                assert_same_examples([eager.x_adv], [graphed.x_adv], "linf", alpha, steps)
    assert graphs.graphs_captured(tasks.model) >= 1
