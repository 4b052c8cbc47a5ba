"""The reports of an evaluation: the printed tables of ``fastadv eval`` and ``fastadv attack``
and the ensemble's transfer heat map."""
from __future__ import annotations

import os
from pathlib import Path

from .ensemble import TRANSFER_ATTACK
from .suite import LABELS


def plot_transfer(transfer: list[list[float]], path: Path, title: str = "") -> None:
    """A heat map of the transfer matrix (rows: the member the examples were crafted on,
    columns: the member evaluated), written to a temporary file beside ``path``, then renamed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = len(transfer)
    figure, axes = plt.subplots(figsize=(1.2 * count + 2.5, 1.2 * count + 1.5))
    image = axes.imshow(transfer, vmin=0.0, vmax=1.0, cmap="viridis")
    for i, row in enumerate(transfer):
        for j, value in enumerate(row):
            axes.text(j, i, f"{100 * value:.1f}%", ha="center", va="center", color="white" if value < 0.6 else "black")
    axes.set_xticks(range(count))
    axes.set_yticks(range(count))
    axes.set_xlabel("evaluated on member")
    axes.set_ylabel("crafted on member")
    axes.set_title(title)
    figure.colorbar(image, ax=axes, label="accuracy")
    figure.tight_layout()
    temporary = path.with_name(f".{path.stem}.tmp{path.suffix}")
    figure.savefig(temporary, dpi=100)
    plt.close(figure)
    os.replace(temporary, path)


def _header(results: dict) -> str:
    if "members" in results:
        described = f"ensemble of {len(results['models'])}: {', '.join(results['models'])}; combine {results['combine']}"
    else:
        described = results["model"]
    return f"{results['method']} on {results['dataset']} ({described}), ε = {results['eps']:.4g} " \
           f"({results['norm']}), {results['samples']} test samples"


def _seconds(value) -> str:
    return "" if value is None else f"{value:.1f}"


def format_table(results: dict) -> str:
    """The printed table: one row per attack (accuracy and seconds); for an ensemble a column
    per model (the ensemble, then each member) with the seconds of the ensemble and of all the
    members, then the transfer matrix and the masked cosines."""
    accuracy = results["accuracy"]
    lines = [_header(results), ""]
    members = results.get("members")
    if members is None:
        lines += ["| attack | accuracy | seconds |", "|---|---|---|"]
        for name, value in accuracy.items():
            lines.append(f"| {LABELS.get(name, name)} | {100 * value:.2f}% | {_seconds(results['seconds'].get(name))} |")
    else:
        columns = ["ensemble", *(f"member {i}" for i in range(len(members)))]
        lines += ["| attack | " + " | ".join(columns) + " | seconds (ensemble) | seconds (members) |",
                  "|---" * (len(columns) + 3) + "|"]
        for name, value in accuracy.items():
            cells = [f"{100 * value:.2f}%", *(f"{100 * m['accuracy'][name]:.2f}%" for m in members)]
            member_seconds = None if name not in results["seconds"] else sum(m["seconds"][name] for m in members)
            lines.append(f"| {LABELS.get(name, name)} | " + " | ".join(cells) +
                         f" | {_seconds(results['seconds'].get(name))} | {_seconds(member_seconds)} |")
        transfer = results["transfer"]
        lines += ["", f"{LABELS[transfer['attack']]} transfer: accuracy of member j (column) on the examples crafted on "
                      "member i (row)", "",
                  "| crafted on | " + " | ".join(columns[1:]) + " |", "|---" * (len(members) + 1) + "|"]
        for i, row in enumerate(transfer["accuracy"]):
            lines.append(f"| member {i} | " + " | ".join(f"{100 * value:.2f}%" for value in row) + " |")
        cosine = results["masked_cosine"]
        if cosine["clean"] is None:
            lines += ["", "mean pairwise masked cosine of member logits: none (one member)"]
        else:
            lines += ["", f"mean pairwise masked cosine of member logits (true class masked, seed 000 Table 1): "
                          f"clean {cosine['clean']:.4f}, {LABELS[TRANSFER_ATTACK]} (the ensemble's examples) "
                          f"{cosine[TRANSFER_ATTACK]:.4f}"]
        if "transfer_plot" in results:
            lines.append(f"transfer heat map: {results['transfer_plot']}")
    lines += [f"note: {note}" for note in results.get("notes", [])]
    return "\n".join(lines)


def format_multi_objective(results: dict) -> str:
    """The printed table of :func:`multi_objective_attack`: a row per (loss, weighting, solver)."""
    names = results["task_names"]
    ens = results["tasks"] == "ens"
    head = (f"{results['tasks'].upper()} on {results['dataset']}: {len(names)} tasks ({', '.join(map(str, names))}), "
            f"ε = {results['eps']:.4g}, α = {results['alpha']:.4g}, {results['steps']} steps, {results['samples']} samples")
    columns = ["loss", "weighting", "solver", "A-All", "A-Avg", *(f"A-{i}" for i in range(len(names)))]
    columns += ["ensemble accuracy"] if ens else []
    lines = [head, "", "| " + " | ".join(columns + ["seconds"]) + " |", "|---" * (len(columns) + 1) + "|"]
    for row in results["rows"]:
        cells = [row["loss"].upper(), row["weighting"], row["solver"] or "", f"{row['a_all']:.2f}", f"{row['a_avg']:.2f}",
                 *(f"{v:.2f}" for v in row["a_i"])]
        cells += [f"{row['ensemble_accuracy']:.2f}"] if ens else []
        lines.append("| " + " | ".join(cells + [f"{row['seconds']:.1f}"]) + " |")
    lines += [f"note: {note}" for note in results.get("notes", [])]
    return "\n".join(lines)
