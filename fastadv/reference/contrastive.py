"""Naive pure-PyTorch oracles of the contrastive family (METHODS.md section 2: ADR's global
compactness and ASCL's ``L_SCL``; seed 003 ch. 3).

Written the obvious way: they build the full N × N similarity, distance and selection matrices
(so they are for small N only), compute in the accumulation dtype (float64 for float64 inputs,
float32 otherwise) and return the input dtype. They are what every kernel is tested against and
are never changed to agree with a kernel.

Conventions shared by the family:

* ``pair[i]`` is anchor i's other view (its counterpart: the adversarial example of a clean
  image, and back). ``pair`` is an involution (``pair[pair[i]] == i``); ``pair[i] == i`` means
  anchor i has no counterpart.
* The candidates of anchor i are every j ≠ i. The counterpart is always a positive; every other
  candidate is a positive, a negative or excluded by the selection strategy (the table of
  METHODS.md section 2); excluded candidates are in neither the numerator nor the denominator.
* An anchor with no positive (it has no counterpart and its strategy selects none) contributes a
  loss of 0 and no gradient; it still counts in the mean. An anchor whose positives are only its
  counterpart has the ordinary value (0 when it also has no negative).
* Similarities: ``cosine`` is ``ẑ_i·ẑ_j`` with ``ẑ = z / max(‖z‖₂, 1e-12)`` (torch's normalize);
  ``l1`` / ``l2`` are ``−‖z_i − z_j‖_p``, whose gradient at coinciding points is 0 (torch's
  subgradient of the norm at 0).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["selection_masks", "similarity", "supcon_loss", "pairwise_compactness", "two_view_pair",
           "STRATEGIES", "SIMILARITIES", "REDUCTIONS", "NORMS"]

#: Selection strategies of ASCL (seed 003 ch. 3, Table 1), in the order of their codes in the schema.
STRATEGIES = ("global", "hard-ls", "soft-ls", "leaked-ls")
#: Similarities of ``L_SCL``, in the order of their codes in the schema.
SIMILARITIES = ("cosine", "l1", "l2")
#: Reductions, numbered as ATen numbers them (0 none, 1 mean, 2 sum).
REDUCTIONS = ("none", "mean", "sum")
#: The p of ADR's compactness norms ‖·‖_p.
NORMS = (1, 2)

NORMALIZE_EPS = 1e-12


def _accumulate(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float64 if t.dtype == torch.float64 else torch.float32)


def two_view_pair(n: int, device=None) -> torch.Tensor:
    """``pair`` for a batch laid out as [n first views; n second views]: anchor i's counterpart
    is i + n and back."""
    first = torch.arange(n, device=device)
    return torch.cat([first + n, first])


def selection_masks(labels: torch.Tensor, preds: torch.Tensor, pair: torch.Tensor,
                    strategy: str = "global") -> tuple[torch.Tensor, torch.Tensor]:
    """(positive, negative): bool [N, N], row i = anchor i, column j = candidate j.

    ``p_i = preds[i]`` is the prediction of the anchor's own view, ``preds[j]`` the candidate's:

    =========  ===========================================  ==========================================
    strategy   positives (besides the counterpart)          negatives
    =========  ===========================================  ==========================================
    global     y_j = y_i                                    y_j ≠ y_i
    hard-ls    y_j = y_i                                    y_j ≠ y_i and pred_j = y_i
    soft-ls    y_j = y_i                                    y_j ≠ y_i and pred_j = p_i
    leaked-ls  y_j = y_i and pred_j = p_i                   y_j ≠ y_i and pred_j = p_i
    =========  ===========================================  ==========================================
    """
    n = labels.shape[0]
    index = torch.arange(n, device=labels.device)
    candidate = index[:, None] != index[None, :]
    counterpart = (pair[:, None] == index[None, :]) & candidate
    same_label = labels[:, None] == labels[None, :]
    predicted_as_anchor_label = preds[None, :] == labels[:, None]
    predicted_as_anchor_prediction = preds[None, :] == preds[:, None]
    if strategy == "global":
        positive, negative = same_label, ~same_label
    elif strategy == "hard-ls":
        positive, negative = same_label, ~same_label & predicted_as_anchor_label
    elif strategy == "soft-ls":
        positive, negative = same_label, ~same_label & predicted_as_anchor_prediction
    elif strategy == "leaked-ls":
        positive = same_label & predicted_as_anchor_prediction
        negative = ~same_label & predicted_as_anchor_prediction
    else:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
    positive = (positive & candidate) | counterpart
    negative = negative & candidate & ~counterpart
    return positive, negative


def similarity(z: torch.Tensor, sim: str = "cosine") -> torch.Tensor:
    """s [N, N]: cosine similarity of the rows, or minus their L1 / L2 distance."""
    if sim == "cosine":
        unit = F.normalize(z, dim=1, eps=NORMALIZE_EPS)
        return unit @ unit.T
    difference = z[:, None, :] - z[None, :, :]
    if sim == "l1":
        return -difference.abs().sum(dim=-1)
    if sim == "l2":
        return -torch.linalg.vector_norm(difference, dim=-1)
    raise ValueError(f"unknown similarity {sim!r}; choose one of {SIMILARITIES}")


def _reduce(per_anchor: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return per_anchor
    if reduction == "mean":
        return per_anchor.mean()
    if reduction == "sum":
        return per_anchor.sum()
    raise ValueError(f"unknown reduction {reduction!r}; choose one of {REDUCTIONS}")


def supcon_loss(z: torch.Tensor, labels: torch.Tensor, preds: torch.Tensor, pair: torch.Tensor,
                tau: float = 0.07, strategy: str = "global", sim: str = "cosine",
                reduction: str = "mean") -> torch.Tensor:
    """ASCL's ``L_SCL`` (METHODS.md section 2): per anchor i,
    ``L_i = −(1/|P_i|) Σ_{j∈P_i} log(exp(s_ij/τ) / Σ_{k∈P_i∪N_i} exp(s_ik/τ))``, reduced over the
    N anchors (mean, sum or none)."""
    s = similarity(_accumulate(z), sim) / tau
    positive, negative = selection_masks(labels, preds, pair, strategy)
    allowed = positive | negative
    # A row with nothing allowed has no positive either (the counterpart is a positive); its
    # logits are set to 0 so that its log-sum-exp stays finite and its gradient 0.
    logits = torch.where(allowed, s, torch.full_like(s, -torch.inf))
    logits = torch.where(allowed.any(dim=1, keepdim=True), logits, torch.zeros_like(s))
    log_denominator = torch.logsumexp(logits, dim=1)
    positives = positive.sum(dim=1)
    mean_positive = torch.where(positive, s, torch.zeros_like(s)).sum(dim=1) / positives.clamp(min=1)
    per_anchor = torch.where(positives > 0, log_denominator - mean_positive, torch.zeros_like(mean_positive))
    return _reduce(per_anchor, reduction).to(z.dtype)


def pairwise_compactness(f: torch.Tensor, labels: torch.Tensor, a: float = 0.99, p: int = 2) -> torch.Tensor:
    """ADR's global compactness (METHODS.md section 2, seed 003 ch. 3 Eq. 3):
    ``mean_{i,j} w_ij ‖f_i − f_j‖_p`` over all N² ordered pairs (i = j included, at distance 0),
    with ``w_ij = 1`` for the same label and ``(a − 1)/a`` otherwise."""
    f64 = _accumulate(f)
    difference = f64[:, None, :] - f64[None, :, :]
    if p == 1:
        distance = difference.abs().sum(dim=-1)
    elif p == 2:
        distance = torch.linalg.vector_norm(difference, dim=-1)
    else:
        raise ValueError(f"unknown norm p={p!r}; choose one of {NORMS}")
    same = labels[:, None] == labels[None, :]
    weight = torch.where(same, torch.ones_like(distance), torch.full_like(distance, (a - 1.0) / a))
    return (weight * distance).mean().to(f.dtype)
