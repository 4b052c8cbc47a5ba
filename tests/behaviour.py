"""A behaviour record of every training method, for refactors that must change nothing.

``python tests/behaviour.py OUT.json`` trains each method of the registry (and TRADES on a
two-member ensemble, seed 000's protocol) for one epoch on the digits with seed 0 (batch 128,
PGD-10, a 32-sample evaluation) and writes, per method, the epoch's logged metrics and a
checksum of the trained weights. ``--against BASE.json`` compares with a record made before
the change and lists every difference: a refactor that changes no behaviour shows none (on the
same machine and build: the numbers are float32 results and not portable across machines).
Not a test (a golden record of one machine); a developer's check before committing a refactor.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import torch


def _weights_digest(run_dir: Path) -> str:
    state = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)["model"]
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def record(names=None) -> dict:
    from fastadv.config import TrainConfig
    from fastadv.methods import METHODS
    from fastadv.train import train

    torch.set_num_threads(1)
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        cases = [(name, {}) for name in METHODS] + [("trades", {"members": 2})]
        for name, extra in cases:
            label = name + "".join(f" --{k} {v}" for k, v in extra.items())
            if names and label not in names and name not in names:
                continue
            cls = METHODS[name]
            if cls.ensemble:
                extra = {"members": 2, **extra}
            options = {}
            if name == "ltd":
                teacher = root / "teacher"
                if not teacher.exists():
                    train(TrainConfig(method="standard", epochs=1, eval_size=32, run_dir=str(teacher),
                                      progress=False, device="cpu"))
                options["teacher"] = str(teacher)
            run_dir = root / label.replace(" ", "_")
            train(TrainConfig(method=name, epochs=1, eval_size=32, run_dir=str(run_dir), progress=False,
                              device="cpu", **extra, **options))
            metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
            last = {k: v for k, v in metrics[-1].items() if not k.endswith(("seconds", "_time", "per_second"))
                    and "time" not in k}
            results[label] = {"metrics": last, "weights": _weights_digest(run_dir)}
            print(label, results[label]["weights"], flush=True)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--against", default=None)
    parser.add_argument("--methods", nargs="*", default=None)
    args = parser.parse_args(argv)
    results = record(args.methods)
    Path(args.out).write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    if args.against is None:
        return 0
    base = json.loads(Path(args.against).read_text())
    differences = []
    for label, now in results.items():
        before = base.get(label)
        if before is None:
            differences.append(f"{label}: not in {args.against}")
            continue
        if now["weights"] != before["weights"]:
            differences.append(f"{label}: weights differ")
        for key in sorted(set(now["metrics"]) | set(before["metrics"])):
            if now["metrics"].get(key) != before["metrics"].get(key):
                differences.append(f"{label}: {key} {before['metrics'].get(key)} -> {now['metrics'].get(key)}")
    print("\n".join(differences) or "no differences")
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
