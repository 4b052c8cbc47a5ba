"""The `fastadv` command."""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import os
import platform
import sys
from pathlib import Path

BENCH_FAMILIES = ("pgd", "logits", "simplex", "contrastive", "train", "ensemble", "overhead")
# What a user can get wrong (settings, files, data folders, checkpoints, the optional extra):
# reported as one line and exit status 2. Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, OSError, RuntimeError, ImportError)


def _report(command: str, error: BaseException) -> int:
    message = " ".join(str(error).split()) or type(error).__name__
    print(f"fastadv {command}: {message}", file=sys.stderr)
    return 2


def _info(args) -> int:
    import torch

    import fastadv
    from fastadv import backend, hardware
    from fastadv.benchmarks import common

    def line(name, value):
        print(f"  {name:<28} {value}")

    print("fastadv", fastadv.__version__)
    line("python", platform.python_version())
    line("torch", f"{torch.__version__} (CUDA {torch.version.cuda or 'none'})")
    triton_version = "not installed"
    if backend.triton_available():
        import triton

        triton_version = triton.__version__
    line("triton", triton_version)
    print("backends")
    line("C++ CPU kernels", f"yes, {torch.ops.fastadv._cpu_capability()}")
    line("CUDA kernels compiled in", "yes" if backend.cuda_compiled() else "no (built without nvcc: CPU-only)")
    device = "none"
    if torch.cuda.is_available():
        device = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    line("CUDA device", device)
    line("Triton importable", "yes" if backend.triton_available() else "no")
    line("Triton interpreter", "on (TRITON_INTERPRET=1)" if backend.triton_interpreted() else "off")
    line("backend requested", f"{backend.requested()} (FASTADV_BACKEND={os.environ.get('FASTADV_BACKEND', 'unset')})")
    print("which backend runs each op (float32)")
    from fastadv import ops

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for name in ops.__all__:
        if name == "two_view_pair":  # builds an index tensor: not a kernel
            continue
        if name == "pgd_init":
            line(name, "torch's random ops (one call per attack, no kernel of its own)")
            continue
        chosen = []
        for device in devices:
            try:
                chosen.append(f"{device.type}: {backend.select(name, device, torch.float32)}")
            except backend.BackendUnavailable as error:
                chosen.append(f"{device.type}: unavailable ({error})")
        line(name, ", ".join(chosen))
    from fastadv import tuned

    line("GPU table (fastadv.tuned)", f"measured on {tuned.MEASURED_ON}, {len(tuned.TABLE)} ops" if tuned.MEASURED_ON
         else "none measured: Triton on CUDA tensors (CUDA C++ where Triton cannot take the shape)")
    print("machine")
    line("CPU", f"{common.cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads")
    ratio = hardware.cpu_bf16_ratio()
    line("CPU bfloat16", f"{'native' if hardware.cpu_bf16_native() else 'emulated: use float32 here'} (a bf16 "
                         f"convolution forward+backward takes {ratio:.2f}x float32's time)")
    numel = 64 * 2**20  # 256 MiB per tensor: well beyond the caches
    bandwidth = common.copy_bandwidth(numel, torch.device("cpu"), rounds=5)
    line("memory bandwidth (copy_)", f"{bandwidth / 1e9:.1f} GB/s read+write, {numel * 4 >> 20} MiB tensors")
    if torch.cuda.is_available():
        bandwidth = common.copy_bandwidth(numel, torch.device("cuda"), rounds=10)
        line("GPU memory bandwidth", f"{bandwidth / 1e9:.0f} GB/s read+write")
    return 0


def _bench(args) -> int:
    families = ("tune",) if args.tune else BENCH_FAMILIES if args.family == "all" else (args.family,)
    for family in families:
        module = importlib.import_module(f"fastadv.benchmarks.bench_{family}")
        print(module.run(device=args.device, quick=args.quick, out_dir=args.out))
        print()
    return 0


def _train(args) -> int:
    from fastadv.train import Interrupted, TrainConfig, train

    options = {k: v for k, v in vars(args).items() if k in {f.name for f in dataclasses.fields(TrainConfig)}}
    options["method_options"] = {name: getattr(args, name) for name in method_option_flags()
                                 if getattr(args, name) is not None}
    try:
        run_dir = train(TrainConfig(**options))
    except Interrupted:
        return 130
    except USER_ERRORS as error:
        return _report("train", error)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 alone reports
        print(f"run written to {run_dir} (evaluate it with: fastadv eval {run_dir})")
    return 0


def _eval(args) -> int:
    from fastadv.evaluate import evaluate_run, format_table

    try:
        results = evaluate_run(args.path, attacks=args.attacks, eps=args.eps, size=args.size,
                               batch_size=args.batch_size, device=args.device, data_root=args.data_root,
                               seed=args.seed, progress=not args.no_progress)
    except USER_ERRORS as error:
        return _report("eval", error)
    print(format_table(results))
    print(f"written to {results['written_to']}")
    return 0


def _attack(args) -> int:
    from fastadv.evaluate import format_multi_objective, multi_objective_attack

    try:
        results = multi_objective_attack(
            args.paths, tasks=args.tasks, weightings=args.weightings, losses=args.losses, solvers=args.solvers,
            eps=args.eps, alpha=args.alpha, steps=args.steps, lam=args.lam, group=args.group,
            transforms=args.transforms, stochastic=args.stochastic, size=args.size, batch_size=args.batch_size,
            device=args.device, data_root=args.data_root, seed=args.seed, progress=not args.no_progress, out=args.out)
    except USER_ERRORS as error:
        return _report("attack", error)
    print(format_multi_objective(results))
    print(f"written to {results['written_to']}")
    return 0


def _reproduce(args) -> int:
    from fastadv.claims import CLAIMS, format_claim, reproduce

    if args.list or not args.claims:
        for claim in CLAIMS.values():
            print(f"{claim.name:16} {claim.source}: {claim.statement}")
        return 0
    names = list(CLAIMS) if args.claims == ["all"] else args.claims
    try:
        for name in names:
            record = reproduce(name, dataset=args.dataset, seeds=args.seeds, epochs=args.epochs, out=args.out,
                               device=args.device, data_root=args.data_root, eval_size=args.eval_size,
                               progress=not args.no_progress, arms=args.arms)
            print(format_claim(record))
            print(f"written to {Path(args.out) / args.dataset / name}.json\n")
    except USER_ERRORS as error:
        return _report("reproduce", error)
    return 0


def _show(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _help_text(option: str, defaults: dict[str, object]) -> str:
    """The help of a method option from the methods that take it: what it is for each (their
    ``option_help``) and their defaults (``defaults``, method -> value), each said once."""
    from fastadv.methods import METHODS, option_help

    texts: dict[str, list[str]] = {}
    for method in defaults:
        texts.setdefault(option_help(method)[option], []).append(method)
    if len(texts) == 1 and len(defaults) == len(METHODS):
        parts = [f"any method: {next(iter(texts))}"]
    else:
        parts = [f"{', '.join(methods)}: {text}" for text, methods in texts.items()]
    values: dict[str, list[str]] = {}
    for method, value in defaults.items():
        values.setdefault(_show(value), []).append(method)
    ordered = sorted(values.items(), key=lambda item: -len(item[1]))
    if len(ordered) == 1:
        parts.append(f"default {ordered[0][0]}")
    elif len(ordered[0][1]) > len(defaults) / 2:  # the usual value, then the methods that differ
        parts.append(f"default {ordered[0][0]}, " + ", ".join(f"{', '.join(m)} {v}" for v, m in ordered[1:]))
    else:
        parts.append("default " + ", ".join(f"{v} ({', '.join(m)})" for v, m in ordered))
    return "; ".join(parts)


def method_option_flags() -> dict[str, dict]:
    """The method options that are flags of `fastadv train` (every option of every method but
    the trainer's own settings), from the methods' signatures: name -> {"type", "help"}."""
    from fastadv.config import TRAINER_METHOD_SETTINGS
    from fastadv.methods import METHODS, method_signature

    defaults: dict[str, dict[str, object]] = {}
    for method in METHODS:
        for name, parameter in method_signature(method).items():
            if name not in TRAINER_METHOD_SETTINGS:
                defaults.setdefault(name, {})[method] = parameter.default
    flags = {}
    for name, by_method in defaults.items():
        kinds = {type(value) for value in by_method.values()}
        if inspect.Parameter.empty in by_method.values() or len(kinds - {int}) > 1:
            raise TypeError(f"method option {name}: a command-line flag needs a default of one type in every method "
                            f"that takes it, got {by_method}")
        flags[name] = {"type": float if float in kinds else kinds.pop(), "help": _help_text(name, by_method)}
    return flags


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    from fastadv.config import DATASET_DEFAULTS, SCHEDULES
    from fastadv.data import DATASETS
    from fastadv.logs import LOGS
    from fastadv.methods import METHODS, method_parameters, option_help
    from fastadv.models import MODELS

    def dataset_defaults(key):
        return ", ".join(f"{name} {values[key]}" for name, values in DATASET_DEFAULTS.items())

    what = parser.add_argument_group("what to train")
    what.add_argument("--method", default="trades", choices=list(METHODS), help="training method (METHODS.md)")
    what.add_argument("--dataset", default="digits", choices=list(DATASETS),
                      help="digits is scikit-learn's 8x8 digits, embedded; CIFAR needs --data-root")
    what.add_argument("--model", default=None,
                      help=f"one of {', '.join(MODELS)} or torchvision:NAME (default: digits_cnn for digits, "
                           "preact_resnet18 otherwise)")
    what.add_argument("--members", type=int, default=None,
                      help="train an ensemble of this many copies of --model (the ensemble methods default to "
                           f"{', '.join(sorted({str(m.default_members) for m in METHODS.values() if m.ensemble}))})")
    what.add_argument("--models", default=None,
                      help="train an ensemble of these models, comma-separated (e.g. digits_cnn,cnn_4c3f)")
    what.add_argument("--combine", default=None, choices=("prob", "logit"),
                      help="how the ensemble's output combines its members: the log of their mean probability or "
                           "their mean logits (default: the method's, METHODS.md section 3)")
    what.add_argument("--member-devices", dest="member_devices", default=None,
                      help="put the ensemble's members on these devices, comma-separated, one per member (e.g. "
                           "cuda:0,cuda:1,cuda:2): members too large or too slow for one device; batches stay on "
                           "--device")
    what.add_argument("--shard-members", dest="shard_members", action="store_true",
                      help="under torchrun with one process per member: each process holds one member and all of "
                           "them take the whole batch (members too large for one device), instead of each process "
                           "holding the whole ensemble on its share of the batch")
    what.add_argument("--data-root", dest="data_root", default=None, help="folder holding torchvision's CIFAR files")
    what.add_argument("--download", action="store_true", help="let torchvision fetch CIFAR (needs a network)")
    what.add_argument("--no-augment", dest="augment", action="store_false", help="no random crop / flip")
    optimisation = parser.add_argument_group("optimisation (SGD with momentum)")
    optimisation.add_argument("--epochs", type=int, default=None, help=f"default: {dataset_defaults('epochs')}")
    optimisation.add_argument("--batch-size", dest="batch_size", type=int, default=None,
                              help=f"global batch size; default: {dataset_defaults('batch_size')}")
    optimisation.add_argument("--lr", type=float, default=None,
                              help=f"default: {dataset_defaults('lr')}; a tenth of that for the LMA methods "
                                   "(seed 002 trains at 0.01)")
    optimisation.add_argument("--momentum", type=float, default=0.9)
    optimisation.add_argument("--weight-decay", dest="weight_decay", type=float, default=None,
                              help=f"default: {dataset_defaults('weight_decay')} (TRADES' CIFAR setting 2e-4)")
    optimisation.add_argument("--schedule", default="multistep", choices=SCHEDULES,
                              help="multistep: ×gamma at the milestones; onecycle: the cyclic schedule of fast AT")
    optimisation.add_argument("--milestones", type=float, nargs="+", default=[0.75, 0.9],
                              help="multistep milestones as fractions of the run (TRADES: epochs 75, 90 of 100)")
    optimisation.add_argument("--gamma", type=float, default=0.1)
    optimisation.add_argument("--grad-clip", dest="grad_clip", type=float, default=None, help="max gradient norm")
    optimisation.add_argument("--amp", dest="amp", action="store_true", default=None,
                              help="bf16 autocast (default: on for CUDA devices that support bf16, off on the CPU; on a CPU "
                                   "without native bf16 it runs, much slower, with a warning: see fastadv info)")
    optimisation.add_argument("--no-amp", dest="amp", action="store_false")
    speed = parser.add_argument_group("speed on a GPU (no effect on what is computed beyond rounding)")
    speed.add_argument("--cuda-graphs", dest="cuda_graphs", action="store_true",
                       help="capture the whole training step (attack, loss, backward, SGD's update) in one CUDA graph "
                            "per batch shape and replay it, for the methods whose step allows it (the attack alone "
                            "for the others; the run log says which); a model that cannot be captured runs "
                            "without, with a warning")
    speed.add_argument("--compile", action="store_true", help="torch.compile the model (the fused ops are opaque to it)")
    speed.add_argument("--no-channels-last", dest="channels_last", action="store_false", default=None,
                       help="keep the model and batches in NCHW (default on CUDA: channels_last)")
    speed.add_argument("--no-cudnn-benchmark", dest="cudnn_benchmark", action="store_false", default=None,
                       help="do not let cuDNN time its convolution algorithms (default on CUDA: it does)")
    speed.add_argument("--no-device-data", dest="device_data", action="store_false", default=None,
                       help="load batches through a DataLoader instead of keeping the training set on the device and "
                            "augmenting there (default on CUDA: on the device)")
    attack = parser.add_argument_group("attack and method")
    attack.add_argument("--eps", type=float, default=None, help="radius on the [0,1] scale; default: digits 0.2, "
                                                                 "CIFAR 8/255")
    attack.add_argument("--alpha", type=float, default=None, help="step size; default: digits 0.05, CIFAR 2/255")
    attack.add_argument("--steps", type=int, default=10, help="attack steps during training")
    attack.add_argument("--norm", default="linf", choices=("linf", "l2"))
    attack.add_argument("--attack-dtype", dest="attack_dtype", default=None, choices=("bfloat16", "float16"),
                        help="run the training attack under autocast in this dtype (the update stays float32; bfloat16 on "
                             "a CPU without native bf16 is slower, with a warning)")
    attack.add_argument("--beta", type=float, default=None,
                        help=_help_text("beta", {m: METHODS[m].default_beta for m in METHODS
                                                 if "beta" in method_parameters(m)}))
    attack.add_argument("--teacher", default=None,
                        help=f"ltd: the run folder (or checkpoint) of its teacher, {option_help('ltd')['teacher']}; "
                             "default runs/DATASET-standard")
    options = parser.add_argument_group("method options (a method that does not take one refuses it)")
    for name, spec in method_option_flags().items():
        options.add_argument(f"--{name.replace('_', '-')}", dest=name, type=spec["type"], default=None,
                             help=spec["help"])
    evaluation = parser.add_argument_group("evaluation and the run")
    evaluation.add_argument("--eval-steps", dest="eval_steps", type=int, default=20,
                            help="PGD steps of the per-epoch robust evaluation (selects best.pt)")
    evaluation.add_argument("--eval-size", dest="eval_size", type=int, default=None,
                            help="evaluate each epoch on the first N held-out samples (default: all)")
    evaluation.add_argument("--seed", type=int, default=0)
    evaluation.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    evaluation.add_argument("--workers", type=int, default=0, help="data-loading processes")
    evaluation.add_argument("--run-dir", dest="run_dir", default=None, help="default: runs/DATASET-METHOD")
    evaluation.add_argument("--resume", action="store_true", help="continue the run in --run-dir exactly")
    evaluation.add_argument("--overwrite", action="store_true", help="replace a run already in --run-dir")
    evaluation.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    # not --log: torchrun's parser takes it for an abbreviation of its --log-dir and refuses it
    evaluation.add_argument("--logger", dest="loggers", nargs="+", default=[], choices=LOGS,
                            help="also write the run's metrics, learning rate and a few adversarial examples per epoch "
                                 "as TensorBoard event files in RUN_DIR/tensorboard (pip install 'fastadv[tensorboard]'); "
                                 "fastadv eval adds its table there")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: ...)" only where it informs: not for flags, not for None (whose help
    says what the default is), and not where the help already names it."""

    def _get_help_string(self, action):
        help_text = action.help or ""
        if action.default is None or isinstance(action.default, bool) or "default" in help_text:
            return help_text
        return super()._get_help_string(action)


def _held_out_options(parser: argparse.ArgumentParser) -> None:
    """The options of a command that attacks the held-out split (eval, attack)."""
    parser.add_argument("--size", type=int, default=None, help="first N held-out samples (default: all)")
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=256)
    parser.add_argument("--device", default=None)
    parser.add_argument("--data-root", dest="data_root", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastadv", description="Fast and faithful adversarial training.")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser(
        "train", help="train a model (with no arguments: TRADES on the embedded digits, on the CPU, in minutes)",
        formatter_class=_HelpFormatter,
        description="Train a robust model. Writes runs/DATASET-METHOD/ with config.json, metrics.jsonl, "
                    "checkpoint.pt (resumable), best.pt (best PGD accuracy; best clean accuracy for standard training) and curves.png. Under torchrun "
                    "it trains with DistributedDataParallel.")
    _add_train_arguments(train)
    train.set_defaults(run=_train)
    evaluate = commands.add_parser("eval", help="robust accuracy of a run or checkpoint",
                                   formatter_class=_HelpFormatter,
                                   description="Clean, FGSM, PGD-20, PGD-100, CW and AutoAttack accuracy on the "
                                               "held-out split; prints a table and writes eval.json. An ensemble run "
                                               "is evaluated as the ensemble and as each member, with the members' "
                                               "PGD-20 transfer matrix (also drawn in transfer.png) and their mean "
                                               "pairwise masked logit cosine, clean and under PGD-20.")
    evaluate.add_argument("path", help="a run folder (its best.pt) or a checkpoint file")
    from fastadv.evaluate import ATTACKS, EXTRA_ATTACKS

    evaluate.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=ATTACKS + EXTRA_ATTACKS,
                          help=f"default: {' '.join(ATTACKS)}; also {' '.join(EXTRA_ATTACKS)}")
    evaluate.add_argument("--eps", type=float, default=None, help="default: the run's training ε")
    _held_out_options(evaluate)
    evaluate.set_defaults(run=_eval)
    from fastadv.attacks.multi_objective import DEFAULT_STEPS, MOO_LOSSES, TAMOO_LAMBDA, WEIGHTINGS
    from fastadv.attacks.transforms import TRANSFORMS
    from fastadv.evaluate import TASK_SETS
    from fastadv.ops.simplex import SOLVERS

    attack = commands.add_parser(
        "attack", help="multi-objective attacks (TA-MOO, MOO, MinMax, Uniform): A-All, A-Avg, A-i",
        formatter_class=_HelpFormatter,
        description="Seed 003 ch. 4's attacks on the held-out split: ENS fools every member of an ensemble (one "
                    "ensemble run, or several runs as its members), UNI finds one perturbation per group of images, "
                    "EoT one that survives every transformation family. Prints A-All (every task fooled), A-Avg and "
                    "A-i per loss, weighting and solver, and writes them as JSON.")
    attack.add_argument("paths", nargs="+", help="run folders or checkpoints (ENS: one ensemble run or its members' runs)")
    attack.add_argument("--tasks", choices=TASK_SETS, default="ens", help="the task set")
    attack.add_argument("--weightings", nargs="+", choices=WEIGHTINGS, default=list(WEIGHTINGS))
    attack.add_argument("--losses", nargs="+", choices=MOO_LOSSES, default=["ce"])
    attack.add_argument("--solvers", nargs="+", choices=SOLVERS, default=["softmax-gd"],
                        help="how moo and tamoo find their weights (softmax-gd is the seed's)")
    attack.add_argument("--eps", type=float, default=None, help="default: the runs' training ε")
    attack.add_argument("--alpha", type=float, default=None, help="step size (default: ε/4)")
    attack.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    attack.add_argument("--lam", type=float, default=TAMOO_LAMBDA, help="λ of TA-MOO")
    attack.add_argument("--group", type=int, default=4, help="UNI: images sharing one perturbation")
    attack.add_argument("--transforms", nargs="+", choices=tuple(TRANSFORMS), default=None,
                        help="EoT: the transformation families (default: all, seed 003 Table 9)")
    attack.add_argument("--stochastic", action="store_true", help="EoT: sample each family's parameter (Table 9)")
    attack.add_argument("--out", default=None, help="JSON file (default: attack-TASKS.json beside the first checkpoint)")
    _held_out_options(attack)
    attack.set_defaults(run=_attack)
    from fastadv.claims import CLAIM_DATASETS

    reproduce = commands.add_parser(
        "reproduce", help="check a paper's claim: train, evaluate and compare its methods",
        formatter_class=_HelpFormatter,
        description="Train the runs a claim of the seed papers compares (the digits defaults, or with --dataset "
                    "cifar10/cifar100 the paper's settings), evaluate them (AutoAttack; Square-5000 where PGD-20 "
                    "and AutoAttack differ by more than 10 points) and judge the claim: held, not held, or "
                    "undecided (within 3 points on fewer than 3 seeds). Writes OUT/DATASET/CLAIM.json and .md; "
                    "runs are kept in OUT/DATASET/runs and reused, an interrupted one resumes. With no claim: "
                    "the list.")
    reproduce.add_argument("claims", nargs="*", help="claim names (see --list), or all")
    reproduce.add_argument("--list", action="store_true", help="list the claims")
    reproduce.add_argument("--dataset", default="digits", choices=CLAIM_DATASETS)
    reproduce.add_argument("--seeds", nargs="+", type=int, default=[0], help="training seeds (default: 0)")
    reproduce.add_argument("--arms", nargs="+", default=None, metavar="LABEL",
                           help="train only these arms with --seeds (e.g. the two of an undecided comparison); "
                                "the others keep the runs of the claim's record in OUT")
    reproduce.add_argument("--epochs", type=int, default=None, help="default: digits 30; CIFAR: the paper's")
    reproduce.add_argument("--out", default="claims", help="default: claims")
    reproduce.add_argument("--eval-size", dest="eval_size", type=int, default=None,
                           help="evaluate on the first N held-out samples (default: all)")
    reproduce.add_argument("--device", default=None)
    reproduce.add_argument("--data-root", dest="data_root", default=None)
    reproduce.add_argument("--no-progress", action="store_true")
    reproduce.set_defaults(run=_reproduce)
    info = commands.add_parser("info", help="versions, available backends and the machine's memory bandwidth")
    info.set_defaults(run=_info)
    bench = commands.add_parser("bench", help="benchmark the fused ops against eager and torch.compile",
                                formatter_class=_HelpFormatter)
    bench.add_argument("family", nargs="?", default="all", choices=("all", "tune") + BENCH_FAMILIES,
                       help="op family to benchmark")
    bench.add_argument("--device", default="cpu", help="cpu or cuda")
    bench.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run, noisier figures)")
    bench.add_argument("--tune", action="store_true",
                       help="time the CUDA C++ and Triton backends of every op per size class and write the table "
                            "that `auto` can ship (fastadv/tuned.py); the same as the family 'tune'")
    bench.add_argument("--out", default=None, help="folder for the CSV/JSON results (default benchmarks/results)")
    bench.set_defaults(run=_bench)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
