"""`fastadv eval` on an ensemble run: the ensemble and every member under every attack, the
members' PGD-20 transfer matrix, the mean pairwise masked cosine, the table, eval.json and the
heat map; a single model's evaluation unchanged."""
import collections
import json

import pytest
import torch
import torch.nn.functional as F

from fastadv import cli, evaluate
from fastadv.data import load_dataset
from fastadv.ensemble import Ensemble
from fastadv.runs import load_checkpoint, load_model
from fastadv.train import TrainConfig, train
from tests.helpers import CountReads, one_thread  # noqa: F401  (autouse: one torch thread here)

SIZE = 40
BATCH = 16  # three batches: the attacks' random starts must follow each other across batches as when run alone
ATTACKS = ["fgsm", "pgd20"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, one_thread):
    """TRADES on an ensemble of two digits_cnn for 2 epochs of a 2-step attack: about 5 s on one
    thread, and its members differ enough that the transfer matrix is not uniform."""
    return train(TrainConfig(method="trades", dataset="digits", members=2, epochs=2, steps=2, alpha=0.1,
                             eval_steps=2, eval_size=30, progress=False,
                             run_dir=str(tmp_path_factory.mktemp("runs") / "ensemble")))


@pytest.fixture(scope="module")
def results(run_dir):
    return evaluate.evaluate_run(run_dir, attacks=ATTACKS, size=SIZE, batch_size=BATCH, progress=False)


@pytest.fixture(scope="module")
def loaded(run_dir):
    ensemble, config, info, _ = load_model(run_dir, "cpu")
    _, test_set, _ = load_dataset(config["dataset"], augment=False, seed=config["seed"])
    return ensemble, config, info, test_set


def batches(test_set):
    for start in range(0, SIZE, BATCH):
        items = [test_set[i] for i in range(start, min(start + BATCH, SIZE))]
        yield torch.stack([x for x, _ in items]), torch.tensor([int(y) for _, y in items])


def eager_mean_masked_cosine(member_logits, y):
    """The mean over the batch and over member pairs i < j of cos(z_i ⊙ m, z_j ⊙ m), m = 1 − onehot(y)."""
    members, _, classes = member_logits.shape
    masked = member_logits * (1 - F.one_hot(y, classes).to(member_logits.dtype))
    pairs = [F.cosine_similarity(masked[i], masked[j], dim=1) for i in range(members) for j in range(i + 1, members)]
    return torch.cat(pairs).mean().item()


def test_structure_and_eval_json(run_dir, results):
    config = json.loads((run_dir / "config.json").read_text())
    assert results["models"] == config["models"] == ["digits_cnn", "digits_cnn"]
    assert results["combine"] == config["combine"]
    names = {"clean", *ATTACKS, "worst_case"}
    assert set(results["accuracy"]) == names and results["samples"] == SIZE
    assert len(results["members"]) == 2
    for member, model in zip(results["members"], config["models"]):
        assert member["model"] == model
        assert set(member["accuracy"]) == set(member["correct"]) == names
        assert set(member["seconds"]) == set(ATTACKS)
        assert member["samples"] == SIZE
        assert member["accuracy"]["worst_case"] <= min(member["accuracy"][a] for a in ATTACKS)
    transfer = results["transfer"]
    assert transfer["attack"] == "pgd20"
    assert [len(row) for row in transfer["accuracy"]] == [2, 2]
    assert all(0.0 <= value <= 1.0 for row in transfer["accuracy"] for value in row)
    assert transfer["accuracy"] == [[c / SIZE for c in row] for row in transfer["correct"]]
    assert set(results["masked_cosine"]) == {"clean", "pgd20"}
    assert all(-1.0 <= value <= 1.0 for value in results["masked_cosine"].values())
    assert results["notes"] == []  # pgd20 was asked for
    written = json.loads((run_dir / "eval.json").read_text())
    for key in ("accuracy", "correct", "members", "transfer", "masked_cosine", "models", "combine"):
        assert written[key] == results[key], key
    plot = run_dir / "transfer.png"
    assert written["transfer_plot"] == str(plot)
    assert plot.read_bytes()[:8] == PNG_SIGNATURE
    assert not list(run_dir.glob(".*tmp*")), "a temporary file was left behind"


def test_each_member_as_if_evaluated_alone(tmp_path, run_dir, results, loaded):
    """Member i's figures are those of `fastadv eval` on a checkpoint of member i alone, seeded
    alike: the same attacks, the same random starts, batch after batch."""
    ensemble, config, _, _ = loaded
    state = load_checkpoint(run_dir / "best.pt")
    single_keys = None
    for index, (member, model) in enumerate(zip(ensemble.members, config["models"])):
        path = tmp_path / f"member{index}.pt"
        torch.save({**state, "model": member.state_dict(),
                    "config": {**config, "model": model, "models": None, "members": None, "combine": None}}, path)
        alone = evaluate.evaluate_run(path, attacks=ATTACKS, size=SIZE, batch_size=BATCH, progress=False)
        assert alone["correct"] == results["members"][index]["correct"]
        assert alone["accuracy"] == results["members"][index]["accuracy"]
        single_keys = set(alone)
        # A single model's evaluation is as before: no ensemble keys, the one-column table.
        assert not {"members", "transfer", "masked_cosine", "models", "transfer_plot"} & set(alone)
        assert path.with_suffix(".eval.json").exists() and not path.with_suffix(".transfer.png").exists()
        assert "| attack | accuracy | seconds |" in evaluate.format_table(alone)
    assert single_keys == {"accuracy", "samples", "correct", "seconds", "checkpoint", "dataset", "method", "model",
                           "eps", "norm", "notes", "info", "written_to"}


def test_the_ensemble_row_is_the_ensemble_as_one_model(results, loaded):
    ensemble, config, info, test_set = loaded
    suite = evaluate.build_attacks(ensemble, config["eps"], config["norm"], info.num_classes, ATTACKS, seed=0)
    alone = evaluate.robust_accuracy(ensemble, test_set, suite, torch.device("cpu"), BATCH, SIZE, progress=False)
    assert alone["correct"] == results["correct"]


def test_transfer_matrix(results, loaded):
    """Diagonal: each member's own PGD-20 accuracy. Off it: member j on PGD-20 examples crafted
    anew on member i with the member's own suite and seed."""
    ensemble, config, info, test_set = loaded
    members = list(ensemble.members)
    correct = results["transfer"]["correct"]
    for i, member in enumerate(results["members"]):
        assert correct[i][i] == member["correct"]["pgd20"]
    expected = [[0] * len(members) for _ in members]
    for i, source in enumerate(members):
        attack = evaluate.build_attacks(source, config["eps"], config["norm"], info.num_classes, ATTACKS)["pgd20"]
        for x, y in batches(test_set):
            x_adv = attack(x, y)
            with torch.no_grad():
                for j, target in enumerate(members):
                    expected[i][j] += int((target(x_adv).argmax(1) == y).sum())
    assert correct == expected
    # The members were trained apart: each one's examples fool it more than they fool the other.
    assert all(correct[i][i] <= correct[i][j] for i in range(2) for j in range(2))


def test_masked_cosines_match_an_eager_computation(results, loaded):
    ensemble, config, info, test_set = loaded
    attack = evaluate.build_attacks(ensemble, config["eps"], config["norm"], info.num_classes, ATTACKS)["pgd20"]
    clean, adversarial, weights = [], [], []
    for x, y in batches(test_set):
        x_adv = attack(x, y)
        with torch.no_grad():
            clean.append(eager_mean_masked_cosine(ensemble.member_logits(x), y))
            adversarial.append(eager_mean_masked_cosine(ensemble.member_logits(x_adv), y))
        weights.append(len(y) / SIZE)
    expected = {"clean": sum(w * c for w, c in zip(weights, clean)),
                "pgd20": sum(w * c for w, c in zip(weights, adversarial))}
    assert results["masked_cosine"] == pytest.approx(expected, abs=1e-5)
    assert results["masked_cosine"]["clean"] != pytest.approx(results["masked_cosine"]["pgd20"], abs=1e-4)


def test_reads_back_once_whatever_the_batches(loaded):
    """The evaluation reads its counts once, at the end; per batch only the attacks read (each
    its labels' range, once a call), and the dataset's labels are host values."""
    ensemble, config, info, test_set = loaded
    models = [ensemble, *ensemble.members]
    suites = [evaluate.build_attacks(m, config["eps"], config["norm"], info.num_classes, ATTACKS) for m in models]
    with CountReads() as reads:
        evaluate.ensemble_accuracy(ensemble, test_set, suites[0], suites[1:], torch.device("cpu"), BATCH, SIZE,
                                   progress=False)
    batches = -(-SIZE // BATCH)
    by_module = collections.Counter()
    for origin, count in reads.origins.items():
        # batches' int(label) of the dataset's host tensors: in a list comprehension, a frame of
        # its own before Python 3.12
        if origin not in ("evaluate.suite.batches", "evaluate.suite.<listcomp>"):
            by_module[origin.split(".")[0]] += count
    assert by_module == {"evaluate": 1, "attacks": batches * len(models) * len(ATTACKS)}, reads.origins


def test_pgd20_is_added_and_said(run_dir):
    results = evaluate.evaluate_run(run_dir, attacks=["fgsm"], size=16, progress=False, write=False)
    assert list(results["accuracy"]) == ["clean", "pgd20", "fgsm", "worst_case"]
    assert len(results["notes"]) == 1 and "PGD-20 added" in results["notes"][0]
    assert "transfer_plot" not in results and "written_to" not in results


def test_one_member_and_bad_suites(loaded):
    ensemble, config, info, test_set = loaded
    device = torch.device("cpu")

    def suite(model):
        return evaluate.build_attacks(model, config["eps"], config["norm"], info.num_classes, ["pgd20"])
    alone = Ensemble([ensemble.members[0]], combine=config["combine"])
    results = evaluate.ensemble_accuracy(alone, test_set, suite(alone), [suite(alone.members[0])], device,
                                         size=8, progress=False)
    assert results["masked_cosine"] == {"clean": None, "pgd20": None}
    assert results["transfer"]["correct"] == [[results["members"][0]["correct"]["pgd20"]]]
    no_pgd = evaluate.build_attacks(ensemble, config["eps"], config["norm"], info.num_classes, ["fgsm"])
    with pytest.raises(ValueError, match=r"ensemble_accuracy: attacks must hold 'pgd20'"):
        evaluate.ensemble_accuracy(ensemble, test_set, no_pgd, [suite(m) for m in ensemble.members], device)
    with pytest.raises(ValueError, match=r"member_attacks must hold one suite per member \(2\), got 1"):
        evaluate.ensemble_accuracy(ensemble, test_set, suite(ensemble), [suite(ensemble.members[0])], device)
    with pytest.raises(TypeError, match="ensemble must be a fastadv.ensemble.Ensemble"):
        evaluate.ensemble_accuracy(ensemble.members[0], test_set, {}, [], device)


def test_autoattack_on_an_ensemble(run_dir):
    pytest.importorskip("torchattacks")
    results = evaluate.evaluate_run(run_dir, attacks=["autoattack"], size=8, progress=False, write=False)
    for accuracy in [results["accuracy"], *(m["accuracy"] for m in results["members"])]:
        assert set(accuracy) == {"clean", "pgd20", "autoattack", "worst_case"}
        assert accuracy["worst_case"] <= accuracy["autoattack"] <= accuracy["clean"]


def test_the_command_prints_the_table(run_dir, results, capsys):
    assert cli.main(["eval", str(run_dir), "--attacks", "fgsm", "pgd20", "--size", "16", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "(ensemble of 2: digits_cnn, digits_cnn; combine" in out.splitlines()[0]
    assert "| attack | ensemble | member 0 | member 1 | seconds (ensemble) | seconds (members) |" in out
    assert "| PGD-20 |" in out and "| worst case |" in out
    assert "| crafted on | member 0 | member 1 |" in out and "| member 1 |" in out
    assert "mean pairwise masked cosine" in out
    assert f"transfer heat map: {run_dir / 'transfer.png'}" in out
    # An ensemble of different models has no single model: the header names the members.
    header = evaluate.format_table({**results, "model": None}).splitlines()[0]
    assert "None" not in header and "digits_cnn, digits_cnn" in header
