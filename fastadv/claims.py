"""The seeds' claims as comparisons of training runs, and :func:`reproduce`, which trains,
evaluates and judges one (``fastadv reproduce CLAIM``).

A :class:`Claim` names the paper's statement (seed, table, number), the arms it compares (a
method with its options on a model or an ensemble) and the comparisons that make it hold, on a
metric of ``fastadv eval`` (AutoAttack accuracy unless it says otherwise). On the digits every
arm is ``fastadv train --method M`` with nothing else but the claim's options (the digits
defaults: digits_cnn, 30 epochs, ε = 0.2, PGD-10); with ``--dataset cifar10`` or ``cifar100``
the claim's :attr:`Claim.paper` settings apply (model, schedule, epochs; ε = 8/255, α = 2/255,
10 steps, the CIFAR defaults), and ``epochs`` overrides the paper's number of epochs.

Runs are shared between claims and kept: a run is named by its full training configuration, so
``pgd_at`` trained for one claim serves every claim that compares against it with the same
settings; a finished run is not trained again, an interrupted one resumes, and its evaluation
(eval.json, and square.json where PGD-20 and AutoAttack differ by more than 10 points) is reused.
A claim's record (``OUT/DATASET/CLAIM.json``) keeps each run's numbers, so the records also serve
as the runs' evaluations: a run whose folder is gone but which a record in ``OUT/DATASET`` holds,
evaluated on the same samples with every attack now asked for, is not trained again. Adding seeds
to a claim trains only the new ones, and ``arms`` limits them to the arms of an undecided
comparison (the other arms keep the runs the claim's record holds).

The verdict of a comparison ``a > b`` is *held* or *not held* when the means differ by at least
:data:`DECIDED` (3 points of accuracy) or when both arms ran at least three seeds; otherwise it
is *undecided*, and the verdict says to run ``--seeds 0 1 2``.
"""
from __future__ import annotations

import hashlib
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

from .data import DATASETS
from .evaluate.suite import ATTACKS, LABELS
from .models import default_model
from .runs import atomic_write_text

__all__ = ["Arm", "Comparison", "Claim", "CLAIMS", "DECIDED", "SEEDS_TO_DECIDE", "GAP_FOR_SQUARE", "reproduce",
           "format_claim"]

#: a difference of means (in the metric's units: 0.03 is 3 points of accuracy) that decides a
#: comparison on any number of seeds
DECIDED = 0.03
#: the seeds per arm that decide a comparison whatever the difference
SEEDS_TO_DECIDE = 3
#: PGD-20 minus AutoAttack accuracy above which an arm is also judged under Square-5000
GAP_FOR_SQUARE = 0.10
#: the datasets a claim is judged on (those that carry a signal)
CLAIM_DATASETS = tuple(name for name, dataset in DATASETS.items() if dataset.learnable)
#: the metrics summarised over seeds (an ensemble's runs also keep their members' accuracies)
METRICS = (*LABELS, "masked_cosine")


@dataclass(frozen=True)
class Arm:
    """One side of a comparison: ``method`` with its ``options`` (method options by their Python
    names, e.g. ``{"strategy": "leaked-ls"}``; trainer settings such as ``beta`` go in
    ``settings``) on ``model`` (None: the dataset's default or the claim's paper model), an
    ensemble of ``members`` copies, or of ``models``. ``teacher`` is the label of the arm whose
    run is this one's teacher (ltd)."""

    label: str
    method: str
    options: Mapping = field(default_factory=dict)
    settings: Mapping = field(default_factory=dict)
    model: Optional[str] = None
    members: Optional[int] = None
    models: Optional[tuple] = None
    teacher: Optional[str] = None


@dataclass(frozen=True)
class Comparison:
    """``left op right`` on the means of two arms, each ``"label"`` (the claim's metric) or
    ``"label:metric"``; ``op`` is ">" or "<"."""

    left: str
    op: str
    right: str


@dataclass(frozen=True)
class Claim:
    """A paper's claim: ``source`` (seed, chapter, table), ``statement`` (as the paper states
    it, with its number), the ``arms`` and the ``comparisons`` that make it hold on ``metric``;
    ``attacks`` adds attacks to the evaluation (e.g. pgd1000); ``digits_model`` replaces
    digits_cnn; ``paper`` the settings at the paper's scale (TrainConfig fields for CIFAR, with
    ``source`` saying where each comes from)."""

    name: str
    source: str
    statement: str
    arms: tuple
    comparisons: tuple
    metric: str = "autoattack"
    attacks: tuple = ()
    digits_model: Optional[str] = None
    paper: Mapping = field(default_factory=dict)

    def arm(self, label: str) -> Arm:
        for arm in self.arms:
            if arm.label == label:
                return arm
        raise KeyError(f"{self.name}: no arm {label!r}")


def _ensemble(label, method, members=3, **options):
    return Arm(label, method, options, members=members)


# The paper settings at CIFAR scale. ε = 8/255, α = 2/255 and 10 training steps are fastadv's
# CIFAR defaults (every seed's); what differs per paper is below, each with its source.
_RESNET18_200 = {"model": "preact_resnet18", "epochs": 200, "lr": 0.1, "schedule": "multistep",
                 "milestones": (0.5, 0.75), "weight_decay": 5e-4,
                 "source": "seed 003 ch. 3 App. (ResNet18: SGD, lr 0.1, 0.01, 0.001 at epochs 0, 100, 150, 200 epochs)"}
_UDR_PAPER = {"model": "preact_resnet18", "epochs": 200, "lr": 0.01, "schedule": "multistep",
              "milestones": (0.375, 0.45, 0.5), "weight_decay": 3.5e-3,
              "source": "seed 003 ch. 5 App. (ResNet18: SGD momentum 0.9, lr 0.01, ×0.1 at epochs 75, 90, 100, "
                        "weight decay 3.5e-3, 200 epochs)"}
_ENSEMBLE_PAPER = {"model": "preact_resnet18", "epochs": 100, "lr": 0.1, "schedule": "cosine", "weight_decay": 5e-4,
                   "source": "seed 003 ch. 4 App. D.2 (SGD momentum 0.9, weight decay 5e-4, lr 0.1 with cosine "
                             "annealing, 100 epochs); members: 3 × PreActResNet-18, fastadv's CIFAR workhorse"}

_ALS_PAPER = {**_ENSEMBLE_PAPER, "epochs": 10,
              "source": "seed 000 (an ensemble trained from scratch for 10 epochs, batch 128); members: "
                        "3 × PreActResNet-18"}
_ALS_ARMS = (_ensemble("als", "als"), _ensemble("trades --members 3", "trades"))
_ADR_ARMS = ((Arm("adr", "adr"), Arm("pgd_at", "pgd_at"), Arm("trades", "trades")),
             (Comparison("adr", ">", "pgd_at"), Comparison("adr", ">", "trades")))

CLAIMS: dict[str, Claim] = {claim.name: claim for claim in (
    Claim("als-cosine", "seed 000, Table 1",
          "ALS lowers the members' mean pairwise logit cosine against a baseline ensemble (CIFAR-10, clean: "
          "0.401 against 0.431; fastadv: the masked cosine, baseline the same protocol with λ = 0)",
          _ALS_ARMS,
          (Comparison("als", "<", "trades --members 3"),), metric="masked_cosine",
          paper=_ALS_PAPER),
    Claim("als-robust", "seed 000, Table 3",
          "the ALS ensemble is more robust under AutoAttack than its baseline (CIFAR-10: 38.6 against 37.5)",
          _ALS_ARMS,
          (Comparison("als", ">", "trades --members 3"),),
          paper=_ALS_PAPER),
    Claim("adr", "seed 003 ch. 3, Table 2 and Fig. 6",
          "ADR is more robust than its base method PGD-AT and than TRADES (PGD-20, CIFAR-10 CNN: ADR-ADV 37.67 "
          "against ADV 33.12 and TRADES 35.84; MNIST, Fig. 6: 96.55 against 94.15)",
          *_ADR_ARMS,
          paper={"model": "cnn_4c3f", "epochs": 200, "lr": 0.1, "schedule": "multistep", "milestones": (0.5, 0.75),
                 "weight_decay": 2e-4,
                 "source": "seed 003 ch. 3 supplement Table 2 (CIFAR-10 CNN-4C3F, 200 epochs, batch 128; the "
                           "seed's Adam at 0.001 is not in fastadv's trainer: SGD lr 0.1, ×0.1 at epochs 100 and "
                           "150, weight decay 2e-4 as its ResNet setting)"}),
    Claim("adr-resnet", "seed 003 ch. 3, Table 2 (ResNet rows)",
          "ADR is more robust than PGD-AT and TRADES on a residual network (PGD-20, CIFAR-10 ResNet: 44.72 "
          "against 44.08 and 37.52)",
          *_ADR_ARMS,
          digits_model="digits_resnet",
          paper={"model": "wide_resnet34_10", "epochs": 200, "lr": 0.1, "schedule": "multistep",
                 "milestones": (0.5, 0.75), "weight_decay": 2e-4,
                 "source": "seed 003 ch. 3 supplement Table 2 (RN-34-10: SGD lr 0.1, momentum 0.9, batch 128, "
                           "200 epochs, ×0.1 at epochs 100 and 150, weight decay 2e-4)"}),
    Claim("ascl", "seed 003 ch. 3, Table 2",
          "ASCL is more robust than PGD-AT and TRADES (AutoAttack, CIFAR-10 ResNet-20: 42.0 (leaked-ls) against "
          "36.1 and 36.3)",
          (Arm("ascl (global)", "ascl"), Arm("pgd_at", "pgd_at"), Arm("trades", "trades")),
          (Comparison("ascl (global)", ">", "pgd_at"), Comparison("ascl (global)", ">", "trades")),
          paper=_RESNET18_200),
    Claim("ascl-leaked", "seed 003 ch. 3, Table 4",
          "leaked-ls is the best strategy and hard-ls beats the global one under AutoAttack (CIFAR-10 ResNet-20: "
          "leaked-ls 42.0, hard-ls 41.3, global 40.9, soft-ls 40.4)",
          (Arm("ascl (global)", "ascl"), Arm("ascl hard-ls", "ascl", {"strategy": "hard-ls"}),
           Arm("ascl soft-ls", "ascl", {"strategy": "soft-ls"}),
           Arm("ascl leaked-ls", "ascl", {"strategy": "leaked-ls"})),
          (Comparison("ascl leaked-ls", ">", "ascl (global)"), Comparison("ascl leaked-ls", ">", "ascl hard-ls"),
           Comparison("ascl leaked-ls", ">", "ascl soft-ls"), Comparison("ascl hard-ls", ">", "ascl (global)")),
          paper=_RESNET18_200),
    Claim("cce-adp", "seed 003 ch. 4, Tables 3–5",
          "CCE-RM is more robust than ADV-EN and ADP (AutoAttack, CIFAR-10 ResNet-20, 3 members: 20.8 against "
          "18.4 and 17.6; ADP is not above ADV-EN there)",
          (_ensemble("cce", "cce", mode="rm"), _ensemble("adp", "adp"), _ensemble("adv_en", "adv_en")),
          (Comparison("cce", ">", "adv_en"), Comparison("cce", ">", "adp")),
          paper=_ENSEMBLE_PAPER),
    Claim("tamoo-at", "seed 003 ch. 4, Table 4 (App. D.2, Table 11)",
          "adversarial training on TA-MOO examples gives a more robust ensemble than PGD-AT of the ensemble "
          "(fastadv's adv_en) on a diverse ensemble (PGD-20, CIFAR-10: 41.32 against 37.36)",
          (Arm("tamoo_at", "tamoo_at", models=("digits_cnn", "digits_mlp", "digits_resnet")),
           Arm("adv_en", "adv_en", models=("digits_cnn", "digits_mlp", "digits_resnet"))),
          (Comparison("tamoo_at", ">", "adv_en"),),
          paper={**_ENSEMBLE_PAPER, "models": ("preact_resnet18", "torchvision:mobilenet_v2",
                                               "torchvision:efficientnet_b0"),
                 "source": "seed 003 ch. 4 App. D.2 (ResNet18, MobileNet, EfficientNet; SGD momentum 0.9, weight "
                           "decay 5e-4, lr 0.1 cosine, 100 epochs)"}),
    *(Claim(f"udr{'' if cost == 'pixel' else '-' + cost}", "seed 003 ch. 5, Table 1",
            f"each UDR method is more robust than its counterpart under AutoAttack (MNIST: UDR-PGD 90.0 against "
            f"88.9, UDR-TRADES 92.2 against 90.9, UDR-MART 92.3 against 90.6), here with the `{cost}` cost",
            (Arm("udr_pgd", "udr_pgd", {"cost": cost}), Arm("pgd_at", "pgd_at"),
             Arm("udr_trades", "udr_trades", {"cost": cost}), Arm("trades", "trades"),
             Arm("udr_mart", "udr_mart", {"cost": cost}), Arm("mart", "mart")),
            (Comparison("udr_pgd", ">", "pgd_at"), Comparison("udr_trades", ">", "trades"),
             Comparison("udr_mart", ">", "mart")),
            paper=_UDR_PAPER) for cost in ("pixel", "l2", "linf")),
    Claim("label-smoothing", "seed 001, Table 6",
          "label smoothing's robustness under PGD-20 collapses under stronger attacks (CIFAR-10 ResNet-18: 34.4 "
          "under PGD-20, 7.2 under PGD-1000)",
          (Arm("label_smoothing", "label_smoothing"), Arm("label_smoothing s=0.75", "label_smoothing",
                                                          {"smoothing": 0.75})),
          (Comparison("label_smoothing:pgd20", ">", "label_smoothing:autoattack"),
           Comparison("label_smoothing s=0.75:pgd20", ">", "label_smoothing s=0.75:autoattack")),
          attacks=("pgd1000",),
          paper={"model": "preact_resnet18", "epochs": 200, "lr": 0.1, "schedule": "multistep",
                 "milestones": (0.5, 0.75),
                 "source": "seed 001 §5 (200 epochs for models without adversarial examples, lr 0.1, ×0.1 at "
                           "epochs 100 and 150; ResNet: PreActResNet-18)"}),
    Claim("lrm", "seed 001, Tables 1 and 6",
          "logit regularization with mixup (LRM) is more robust than PGD-AT (CIFAR-10 ResNet-18, PGD-1000: 51.1 "
          "against 45.2)",
          (Arm("lrm", "lrm"), Arm("pgd_at", "pgd_at")),
          (Comparison("lrm", ">", "pgd_at"),),
          paper={"model": "preact_resnet18", "epochs": 101, "lr": 0.1, "schedule": "multistep",
                 "milestones": (0.99,),
                 "source": "seed 001 §5 (adversarially trained models: 101 epochs, lr 0.1, ×0.1 at epoch 100; "
                           "PreActResNet-18)"}),
    Claim("lma", "seed 002, Table 4",
          "LMA-AT is more robust under AutoAttack than PGD-AT, TRADES and MART (CIFAR-10 ResNet-18: 49.10 against "
          "46.62, 49.08 and 49.01)",
          (Arm("lma_at", "lma_at"), Arm("pgd_at", "pgd_at"), Arm("trades", "trades"), Arm("mart", "mart")),
          (Comparison("lma_at", ">", "pgd_at"), Comparison("lma_at", ">", "trades"),
           Comparison("lma_at", ">", "mart")),
          paper={"model": "preact_resnet18", "epochs": 130, "lr": 0.1, "schedule": "multistep",
                 "milestones": (0.77, 0.92), "weight_decay": 5e-4,
                 "source": "seed 002 §5.1 (ResNet-18, SGD for 130 epochs; the rate falls at epochs 100 and 120, "
                           "fastadv's reading; LMA's methods train at a tenth of it, their lr_factor)"}),
    Claim("ltd", "seed 004, Table 1",
          "LTD (TRADES with a teacher's soft labels) is more robust than TRADES (AutoAttack, CIFAR-10 WRN-34-10: "
          "55.09 against 53.08)",
          (Arm("standard", "standard"), Arm("ltd", "ltd", teacher="standard"), Arm("trades", "trades")),
          (Comparison("ltd", ">", "trades"),),
          paper={"model": "wide_resnet34_10", "epochs": 100,
                 "source": "seed 004 (WRN-34-10; fastadv's CIFAR schedule: 100 epochs, lr 0.1, ×0.1 at epochs 75 "
                           "and 90, TRADES' setting)"}),
)}


# ----------------------------------------------------------------------------- the runs
def _train_config(claim: Claim, arm: Arm, dataset: str, seed: int, epochs: Optional[int]) -> dict:
    """The TrainConfig fields of one arm's run (without its folder)."""
    config = {"method": arm.method, "dataset": dataset, "seed": seed, "method_options": dict(arm.options),
              **dict(arm.settings)}
    paper = {k: v for k, v in claim.paper.items() if k != "source"} if dataset != "digits" else {}
    if arm.models is not None:
        config["models"] = tuple(paper.pop("models", arm.models))
        paper.pop("model", None)
    else:
        paper.pop("models", None)
        paper_model = paper.pop("model", None)
        digits_model = claim.digits_model if dataset == "digits" else None
        config["model"] = arm.model or paper_model or digits_model or default_model(dataset)
        if arm.members is not None:
            config["members"] = arm.members
    config.update(paper)
    if epochs is not None:
        config["epochs"] = epochs
    return config


def run_name(config: dict) -> str:
    """A run's folder name: readable (method, model, seed) and unique to its whole configuration."""
    named = {**config, "teacher": Path(config["teacher"]).name} if "teacher" in config else config
    key = json.dumps(named, sort_keys=True, default=list)
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]
    model = "+".join(config["models"]) if "models" in config else config.get("model", "default")
    if "members" in config:
        model = f"{config['members']}x{model}"
    model = model.replace("torchvision:", "tv-").replace("/", "_")
    return f"{config['method']}.{model}.{digest}.s{config['seed']}"


def _train_run(config: dict, run_dir: Path, device, data_root, progress: bool) -> None:
    from .train import TrainConfig, train

    finished = run_dir / "finished"
    if finished.exists():
        return
    resume = (run_dir / "checkpoint.pt").exists()
    train(TrainConfig(**config, run_dir=str(run_dir), resume=resume, overwrite=not resume, device=device,
                      data_root=data_root, progress=progress))
    atomic_write_text("", finished)


def _evaluation(run_dir: Path, name: str, attacks: Sequence[str], device, data_root, eval_size,
                progress: bool) -> dict:
    """``fastadv eval``'s results for ``attacks`` on ``eval_size`` samples, kept in
    ``run_dir/name`` and reused when that file has them."""
    from .evaluate import evaluate_run

    path = run_dir / name
    if path.exists():
        results = json.loads(path.read_text())
        if all(attack in results["accuracy"] for attack in attacks) and results.get("samples_asked") == eval_size:
            return results
    results = evaluate_run(run_dir, attacks=list(attacks), size=eval_size, device=device, data_root=data_root,
                           progress=progress, write=False)
    results["samples_asked"] = eval_size
    atomic_write_text(json.dumps(results, indent=2) + "\n", path)
    return results


def _metrics(results: dict, square: Optional[dict]) -> dict:
    metrics = dict(results["accuracy"])
    if square is not None:
        metrics["square"] = square["accuracy"]["square"]
    if "members" in results:
        metrics["masked_cosine"] = results["masked_cosine"]["clean"]
        metrics["members_autoattack"] = [m["accuracy"].get("autoattack") for m in results["members"]]
        if square is not None:
            metrics["members_square"] = [m["accuracy"]["square"] for m in square["members"]]
    return metrics


def _summary(values: list) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "min": None, "max": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}


def _operand(claim: Claim, operand: str) -> tuple[str, str]:
    label, _, metric = operand.partition(":")
    return label, metric or claim.metric


def judge(claim: Claim, arms: dict) -> list[dict]:
    """Each comparison's verdict from the arms' per-metric summaries (``arms[label][metric]``)."""
    verdicts = []
    for comparison in claim.comparisons:
        (left, left_metric), (right, right_metric) = _operand(claim, comparison.left), _operand(claim,
                                                                                                 comparison.right)
        a, b = arms[left][left_metric], arms[right][right_metric]
        if a["mean"] is None or b["mean"] is None:
            verdict = "not measured"
        else:
            difference = a["mean"] - b["mean"] if comparison.op == ">" else b["mean"] - a["mean"]
            seeds = min(a["n"], b["n"]) if left != right else a["n"]
            if abs(difference) < DECIDED and seeds < SEEDS_TO_DECIDE:
                verdict = f"undecided (within {100 * DECIDED:g} points on {seeds} seed{'s' * (seeds > 1)}: " \
                          f"run --seeds 0 1 2)"
            else:
                verdict = "held" if difference > 0 else "not held"
        verdicts.append({"comparison": f"{comparison.left} {comparison.op} {comparison.right}",
                         "left": a["mean"], "right": b["mean"], "verdict": verdict})
    return verdicts


def _recorded_runs(root: Path, eval_size: Optional[int]) -> dict:
    """Every run the claims' records in ``root`` hold, by its folder (``runs/NAME``), evaluated
    on ``eval_size`` samples."""
    recorded = {}
    for path in sorted(root.glob("*.json")):
        record = json.loads(path.read_text())
        if record.get("eval_size") != eval_size:
            continue
        for arm in record["arms"].values():
            recorded.update((run["run"], run) for run in arm["runs"])
    return recorded


def _complete(run: dict, attacks: Sequence[str]) -> bool:
    """Whether a recorded run has every attack asked for, and Square where the rule asks."""
    if any(run.get(attack) is None for attack in attacks):
        return False
    return run["pgd20"] - run["autoattack"] <= GAP_FOR_SQUARE or run.get("square") is not None


def reproduce(name: str, dataset: str = "digits", seeds: Sequence[int] = (0,), epochs: Optional[int] = None,
              out="claims", device=None, data_root=None, eval_size: Optional[int] = None,
              progress: bool = False, log=print, arms: Optional[Sequence[str]] = None) -> dict:
    """Train, evaluate and judge the claim ``name`` (a key of :data:`CLAIMS`) on ``dataset``
    with each of ``seeds``; writes ``out/DATASET/NAME.json`` and ``NAME.md`` (the row of docs/results.md)
    and returns the record. Runs live in ``out/DATASET/runs/`` and are reused (see the module).
    ``arms`` (labels of the claim's arms; default all) are the arms trained with ``seeds``; the
    others keep the runs the claim's existing record holds for them."""
    if name not in CLAIMS:
        raise ValueError(f"reproduce: claim must be one of {', '.join(CLAIMS)}, got {name!r}")
    if dataset not in CLAIM_DATASETS:
        raise ValueError(f"reproduce: dataset must be one of {', '.join(CLAIM_DATASETS)}, got {dataset!r}")
    seeds = list(seeds)
    if not seeds or any(not isinstance(s, int) or s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(f"reproduce: seeds must be distinct integers >= 0, got {seeds!r}")
    if epochs is not None and (not isinstance(epochs, int) or epochs < 1):
        raise ValueError(f"reproduce: epochs must be a positive integer, got {epochs!r}")
    claim = CLAIMS[name]
    labels = [arm.label for arm in claim.arms]
    if arms is not None and (not arms or any(label not in labels for label in arms)):
        raise ValueError(f"reproduce: arms must be labels of {name}'s arms ({', '.join(labels)}), got {list(arms)!r}")
    root = Path(out) / dataset
    attacks = tuple(dict.fromkeys(ATTACKS + claim.attacks))
    recorded = _recorded_runs(root, eval_size)
    previous = json.loads((root / f"{name}.json").read_text()) if (root / f"{name}.json").exists() else None
    per_arm, commands = {}, {}
    for arm in claim.arms:
        per_seed = []
        if arms is not None and arm.label not in arms:
            kept = previous["arms"].get(arm.label, {}).get("runs", []) if previous else []
            arm_seeds = [run["seed"] for run in kept if run["run"] in recorded]
        else:
            arm_seeds = seeds
        commands[arm.label] = _command(_train_config(claim, arm, dataset, 0, epochs), dataset)  # the seed: a column
        for seed in arm_seeds:
            config = _train_config(claim, arm, dataset, seed, epochs)
            if arm.teacher is not None:
                teacher = _train_config(claim, claim.arm(arm.teacher), dataset, seed, epochs)
                config["teacher"] = str(root / "runs" / run_name(teacher))
            run_dir = root / "runs" / run_name(config)
            run = recorded.get(str(run_dir.relative_to(root)))
            if not (run_dir / "finished").exists() and run is not None and _complete(run, attacks):
                log(f"[{name}] {arm.label}, seed {seed}: {run_dir} (recorded)")
                per_seed.append(run)
                continue
            log(f"[{name}] {arm.label}, seed {seed}: {run_dir}")
            _train_run(config, run_dir, device, data_root, progress)
            results = _evaluation(run_dir, "eval.json", attacks, device, data_root, eval_size, progress)
            accuracy = results["accuracy"]
            square = None
            if accuracy.get("pgd20", 0) - accuracy.get("autoattack", 0) > GAP_FOR_SQUARE:
                square = _evaluation(run_dir, "square.json", ["square"], device, data_root, eval_size, progress)
            per_seed.append({"seed": seed, "run": str(run_dir.relative_to(root)), **_metrics(results, square)})
        summary = {metric: _summary([run.get(metric) for run in per_seed]) for metric in METRICS}
        per_arm[arm.label] = {**summary, "runs": per_seed}
    record = {"claim": name, "source": claim.source, "statement": claim.statement, "dataset": dataset,
              "metric": claim.metric, "seeds": sorted({run["seed"] for arm in per_arm.values() for run in arm["runs"]}),
              "epochs": epochs, "eval_size": eval_size,
              "paper_settings": dict(claim.paper) if dataset != "digits" else None,
              "arms": per_arm, "commands": commands, "comparisons": judge(claim, per_arm)}
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(record, indent=2, default=list) + "\n", root / f"{name}.json")
    atomic_write_text(format_claim(record) + "\n", root / f"{name}.md")
    return record


def _command(config: dict, dataset: str) -> str:
    """The ``fastadv train`` command line of a run (without its folder)."""
    words = ["fastadv train", f"--method {config['method']}"]
    if dataset != "digits":
        words.append(f"--dataset {dataset}")
    defaults = {"seed": 0, "model": default_model(dataset)}
    for key in ("model", "members", "epochs", "lr", "schedule", "weight_decay", "beta", "seed"):
        if key in config and config[key] != defaults.get(key):
            words.append(f"--{key.replace('_', '-')} {config[key]}")
    if "models" in config:
        words.append(f"--models {','.join(config['models'])}")
    if "milestones" in config:
        words.append("--milestones " + " ".join(f"{m:g}" for m in config["milestones"]))
    for key, value in config["method_options"].items():
        words.append(f"--{key.replace('_', '-')} {value}")
    return " ".join(words)


def _percent(summary: dict, metric: str) -> str:
    if summary["mean"] is None:
        return "–"
    scale = 1 if metric == "masked_cosine" else 100
    text = f"{scale * summary['mean']:.{3 if scale == 1 else 1}f}"
    if summary["n"] > 1:
        text += f" ± {scale * summary['std']:.{3 if scale == 1 else 1}f}"
    return text


def format_claim(record: dict) -> str:
    """The claim's measurement as markdown: a row per arm (mean ± standard deviation over the
    seeds), then each comparison's verdict."""
    metric = record["metric"]
    lines = [f"{record['claim']} ({record['source']}): {record['statement']}",
             f"dataset {record['dataset']}, seeds {' '.join(map(str, record['seeds']))}"
             + (f", {record['epochs']} epochs" if record["epochs"] else ""), "",
             "| arm | seeds | clean | PGD-20 | AutoAttack | Square-5000 | "
             + ("masked cosine | " if metric == "masked_cosine" else "") + "command |",
             "|---|---|---|---|---|---|" + ("---|" if metric == "masked_cosine" else "") + "---|"]
    for label, arm in record["arms"].items():
        cells = [_percent(arm[m], m) for m in ("clean", "pgd20", "autoattack", "square")]
        if metric == "masked_cosine":
            cells.append(_percent(arm["masked_cosine"], "masked_cosine"))
        seeds = " ".join(str(run["seed"]) for run in arm["runs"]) or "–"
        lines.append(f"| {label} | {seeds} | " + " | ".join(cells) + f" | `{record['commands'][label]}` |")
    lines.append("")
    for verdict in record["comparisons"]:
        lines.append(f"- {verdict['comparison']}: **{verdict['verdict']}**")
    return "\n".join(lines)
