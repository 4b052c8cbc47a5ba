"""The ensemble's evaluation (METHODS.md sections 3 and 6): the ensemble (its combined output,
attacked white-box as one model) and each of its members (each attacked white-box on its own,
by the same attacks with the same seed, so a member's figures are those of evaluating it alone),
in one pass over the test set, plus seed 000's diversity metrics (Table 1):

- the transfer matrix of PGD-20 between members: ``T[i][j]`` is the accuracy of member j on the
  PGD-20 examples crafted on member i (the ones of member i's own PGD-20 row, so the diagonal is
  each member's PGD-20 accuracy);
- the mean pairwise masked cosine of the members' logits: the mean over samples and over member
  pairs i < j of ``cos_m(z_i, z_j)``, the true class masked out, on the clean inputs and on the
  PGD-20 examples of the ensemble (its own PGD-20 row).
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch

from ..ensemble import Ensemble
from ..ops import logits as logits_ops
from .suite import Tally, batches, read_back, sample_indices

#: the attack whose examples an ensemble's transfer matrix and adversarial masked cosine are measured on
TRANSFER_ATTACK = "pgd20"


def pairwise_masked_cosine_sum(member_logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``Σ_b Σ_{i<j} cos_m(z_i(x_b), z_j(x_b))`` of [M, B, C] member logits and [B] labels
    (validated already: a contiguous int64 tensor in [0, C)), as a float64 tensor on their
    device: the sum over the batch of the upper triangle of the masked Gram matrix (seed 000's
    cos_m, METHODS.md section 3, masks the true class)."""
    members = member_logits.shape[0]
    gram = logits_ops.unchecked.masked_gram(member_logits.float(), y, True)
    upper = torch.triu_indices(members, members, offset=1, device=gram.device)
    return gram[:, upper[0], upper[1]].sum(dtype=torch.float64)


def ensemble_accuracy(ensemble: Ensemble, dataset, attacks: dict[str, Callable],
                      member_attacks: Sequence[dict[str, Callable]], device, batch_size: int = 256,
                      size: int | None = None, progress: bool = True,
                      indices: Optional[Sequence[int]] = None) -> dict:
    """:func:`~fastadv.evaluate.robust_accuracy` of the ensemble's combined output under ``attacks``, plus, in the
    same pass over the data, ``members``: that of each member under its own suite
    ``member_attacks[i]`` (attacks built on that member); ``transfer``: the accuracy of member j
    on the PGD-20 examples crafted on member i (those of member i's PGD-20 row; the diagonal is
    each member's PGD-20 accuracy); and ``masked_cosine``: the mean over samples and member
    pairs i < j of cos_m(z_i, z_j) on the clean inputs (``clean``) and on the PGD-20 examples of
    the ensemble (``pgd20``), None with one member or more than ``MAX_MEMBERS`` (the most
    ``masked_gram`` takes). Every suite must hold ``"pgd20"``."""
    if not isinstance(ensemble, Ensemble):
        raise TypeError(f"ensemble_accuracy: ensemble must be a fastadv.ensemble.Ensemble, got "
                        f"{type(ensemble).__name__}")
    members = list(ensemble.members)
    if len(member_attacks) != len(members):
        raise ValueError(f"ensemble_accuracy: member_attacks must hold one suite per member ({len(members)}), "
                         f"got {len(member_attacks)}")
    for owner, suite in [("attacks", attacks), *((f"member_attacks[{i}]", s) for i, s in enumerate(member_attacks))]:
        if TRANSFER_ATTACK not in suite:
            raise ValueError(f"ensemble_accuracy: {owner} must hold {TRANSFER_ATTACK!r} (the transfer matrix and the "
                             f"masked cosine are measured on its examples), got {sorted(suite)}")
    indices = sample_indices(dataset, size, indices)
    count = len(members)
    ensemble_tally = Tally(attacks, device)
    member_tallies = [Tally(suite, device) for suite in member_attacks]
    transfer = torch.zeros(count, count, dtype=torch.int64, device=device)
    cosine = {"clean": torch.zeros((), dtype=torch.float64, device=device),
              TRANSFER_ATTACK: torch.zeros((), dtype=torch.float64, device=device)}
    was_training = ensemble.training
    ensemble.eval()
    for x, y in batches(dataset, indices, batch_size, device, progress):
        ensemble_adv = ensemble_tally.run(ensemble, x, y, attacks, keep=TRANSFER_ATTACK)
        member_adv = [tally.run(member, x, y, suite, keep=TRANSFER_ATTACK)
                      for member, tally, suite in zip(members, member_tallies, member_attacks)]
        with torch.no_grad():
            for i, x_adv in enumerate(member_adv):
                for j, member in enumerate(members):
                    if j != i:  # the diagonal is member i's own PGD-20 row
                        transfer[i, j] += (member(x_adv).argmax(dim=1) == y).sum()
            if 1 < count <= logits_ops.MAX_MEMBERS:
                # The attacks above checked y against the logits' classes.
                cosine["clean"] += pairwise_masked_cosine_sum(ensemble.member_logits(x), y)
                cosine[TRANSFER_ATTACK] += pairwise_masked_cosine_sum(ensemble.member_logits(ensemble_adv), y)
    ensemble.train(was_training)
    tallies = [ensemble_tally, *member_tallies]
    read = read_back([t.counts() for t in tallies] + [transfer, torch.stack(list(cosine.values()))])
    samples = len(indices)
    results = ensemble_tally.result(read[0], samples)
    results["members"] = [tally.result(counts, samples) for tally, counts in zip(member_tallies, read[1:-2])]
    matrix = [read[-2][i * count:(i + 1) * count] for i in range(count)]
    for i, member in enumerate(results["members"]):
        matrix[i][i] = member["correct"][TRANSFER_ATTACK]
    results["transfer"] = {"attack": TRANSFER_ATTACK, "correct": matrix,
                           "accuracy": [[c / samples if samples else math.nan for c in row] for row in matrix]}
    # masked_gram takes up to MAX_MEMBERS members; beyond, the cosine is not measured (None).
    pairs = samples * count * (count - 1) // 2 if count <= logits_ops.MAX_MEMBERS else 0
    results["masked_cosine"] = {name: total / pairs if pairs else None for name, total in zip(cosine, read[-1])}
    return results
