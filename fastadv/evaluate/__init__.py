"""Robust-accuracy evaluation (METHODS.md section 6): `fastadv eval RUN_DIR_OR_CHECKPOINT`.

Clean accuracy, FGSM, PGD-20 and PGD-100 (α = ε/4, uniform start; PGD-1000 on request), CW-PGD (the CW margin
loss clipped at κ = 50, 30 steps, α = ε/4) and AutoAttack (standard version, through
torchattacks, the optional extra ``fastadv[eval]``), plus the worst case over every attack
run: a sample counts as robust only if no attack fooled it. Every attack sees every sample.

An ensemble run (:class:`~fastadv.ensemble.Ensemble`, METHODS.md sections 3 and 6) is evaluated
as the ensemble and as each of its members, in one pass, with seed 000's diversity metrics (the
members' PGD-20 transfer matrix and their mean pairwise masked logit cosine; see
:mod:`fastadv.evaluate.ensemble`). PGD-20 is therefore always run on an ensemble: added to
the attacks, with a note, when not asked for.

eval.json (beside the checkpoint: ``eval.json`` in a run folder, else ``<checkpoint>.eval.json``)
holds ``accuracy`` (name -> accuracy: ``clean``, each attack, ``worst_case``), ``correct`` (the
counts behind them), ``seconds`` (per attack), ``samples``, ``checkpoint``, ``dataset``,
``method``, ``model``, ``eps``, ``norm``, ``notes`` and ``info``; for an ensemble ``accuracy``,
``correct`` and ``seconds`` are the ensemble's, and it adds

- ``models`` (the members' model names) and ``combine`` ("prob" or "logit");
- ``members``: one dict per member, in order, ``{"model", "accuracy", "correct", "seconds"}``
  (the keys of a single model's evaluation);
- ``transfer``: ``{"attack": "pgd20", "accuracy": T, "correct": counts}``, both [M][M] lists,
  row i the examples crafted on member i, column j the member evaluated;
- ``masked_cosine``: ``{"clean": ..., "pgd20": ...}`` (null for an ensemble of one member);
- ``transfer_plot``: the heat map of T, written beside eval.json (``transfer.png`` in a run
  folder, else ``<checkpoint>.transfer.png``).

The package, by concern: :mod:`.suite` (the attacks, each declared once, and
:func:`robust_accuracy`), :mod:`.ensemble` (:func:`ensemble_accuracy` and the diversity
metrics), :mod:`.run` (:func:`evaluate_run`, the files), :mod:`.report` (tables and plots) and
:mod:`.grid` (``fastadv attack``'s multi-objective grid).
"""
from .ensemble import TRANSFER_ATTACK, ensemble_accuracy, pairwise_masked_cosine_sum
from .grid import TASK_SETS, multi_objective_attack
from .report import format_multi_objective, format_table, plot_transfer
from .run import evaluate_run
from .suite import (ATTACKS, AUTOATTACK_MISSING, EXTRA_ATTACKS, LABELS, SQUARE_QUERIES, SUITE, EvalAttack,
                    autoattack_available, build_attacks, robust_accuracy)

__all__ = ["ATTACKS", "AUTOATTACK_MISSING", "EXTRA_ATTACKS", "EvalAttack", "LABELS", "SQUARE_QUERIES", "SUITE",
           "TASK_SETS", "TRANSFER_ATTACK", "autoattack_available", "build_attacks", "ensemble_accuracy",
           "evaluate_run", "format_multi_objective", "format_table", "multi_objective_attack",
           "pairwise_masked_cosine_sum", "plot_transfer", "robust_accuracy"]
