"""Triton kernels of the contrastive family: ASCL's supervised contrastive loss and ADR's pairwise
compactness (METHODS.md section 2; the oracles are in fastadv/reference/contrastive.py).

One function per op, named like it, with the arguments and outputs of its C++ schema
(csrc/ops.cpp): `supcon_loss(z, labels, preds, pair, tau, strategy, sim, reduction)` ->
(loss, row_lse, row_positives), `_supcon_loss_backward(grad_loss, z, labels, preds, pair, row_lse,
row_positives, tau, strategy, sim, reduction)` -> grad_z, `pairwise_compactness(f, labels, a, p)`
and `_pairwise_compactness_backward(grad, f, labels, a, p)` -> grad_f; fastadv/ops/contrastive.py
registers each as the custom op `fastadv::<name>_triton` (fastadv.ops._registry.TritonOps).
Computed in float32 (float64 for float64 inputs, the interpreter included); the losses are
returned in the input dtype, row_lse / row_positives in the accumulation dtype.

Design: the C++ driver's (csrc/contrastive_glue.h), piece for piece. The N × N similarity matrix
is walked in tiles of at most 1024 × 1024 (_TILE) and never held whole: memory is the [N, D]
rows, a few [N] vectors and a tile or two. A tile is computed on the host side with torch: the
matrix product of the unit rows (cosine) or `-torch.cdist(·, ·, p, compute_mode=
"donot_use_mm_for_euclid_dist")` (l1, l2: the direct distance, so coinciding rows are exactly 0
apart). The Triton kernels do the per-tile row math of csrc/include/fastadv/contrastive.h:

1. `_supcon_stats_kernel` folds each tile row into anchor i's running statistics, [4, N]: the
   maximum of t = s/τ over its denominator set, the sum of exp(t − max), the sum of its
   positives' t and their count (two passes over the tile row, as supcon_stats_row: its maximum,
   then the sum at the new maximum, the old sum rescaled). The role of every candidate
   (allowed, positive) is decided in the kernel from labels / preds / pair and the strategy, a
   constexpr (`_roles`, contrastive.h's candidate_role).
2. `_supcon_gradient_kernel` writes the tile G_ij = (g_i/τ)(exp(t_ij − lse_i) − [j ∈ P_i]/|P_i|) on
   the allowed candidates, 0 elsewhere and on anchors without positives; for l2 divided by the
   distance −s_ij (0 where it is 0).
3. `_compactness_kernel` adds Σ_j w_ij d_ij of each tile row to the anchor's row sum.
4. `_compactness_gradient_kernel` writes the tile −w_ij (l2: divided by the distance, 0 at
   coinciding points).
5. `_distance_gradient_kernel`: dU[a] += −Σ_b H_ab sign(u_a − u_b) (l1, NaN propagating: the l1
   similarity's backward, which no matrix product computes, as l1_gradient_row) or
   dU[a] += −Σ_b H_ab (u_a − u_b) (l2, H = dL/ds / d); called on the tile and on its transpose
   (strides swapped).

The host side then carries G back onto the rows as accumulate_tile_gradient does for cosine
(dU_r += G U_c, dU_c += Gᵀ U_r) and l1/l2 (kernel 5: the difference u_a − u_b is formed first, since
the matrix-product form G U_c − rowsum(G)·U_r cancels in float32 near coinciding rows, where
|G_ij| ~ (1/τ)/d_ij). One difference from the C++ driver: it visits every tile, where the C++
driver visits the tiles on and above the diagonal once for both of their anchor blocks (s is
symmetric), half the matrix products. It then runs the cosine
normalisation's backward (unit_rows_backward: normalize's, with its 1e-12 guard), reduces the
per-anchor losses (an anchor without a positive has lse 0 and loss 0) and multiplies the
compactness gradient by grad/N².
"""
import torch
import triton
import triton.language as tl

from .common import divide as _divide
from ..backend import triton_interpreted as _interpreted

# Rows and columns of a similarity tile (contrastive.h's kContrastiveTile): 4 MiB of float32.
_TILE = 1024
# Program blocks: rows of a tile per program, columns per step of its loop; the distance gradient
# kernel's rows, candidates per step and coordinates. Not tuned on a GPU yet. Triton's interpreter (the tests on
# CPU tensors) runs a program at a time, each operation a NumPy call: larger blocks there, still
# smaller than a full tile so that the column loops take several steps.
if _interpreted():
    _BLOCK_R, _BLOCK_C, _DG_BLOCK_A, _DG_BLOCK_B, _DG_BLOCK_K = 64, 512, 64, 128, 16
else:
    _BLOCK_R, _BLOCK_C, _DG_BLOCK_A, _DG_BLOCK_B, _DG_BLOCK_K = 16, 256, 16, 32, 16
# torch.nn.functional.normalize's guard, as the reference and the C++ kernels use it.
_NORMALIZE_EPS = 1e-12
# The schema's codes (fastadv.ops.contrastive.STRATEGIES, SIMILARITIES), constexpr for the kernels.
_GLOBAL, _HARD_LS, _SOFT_LS, _LEAKED_LS = (tl.constexpr(code) for code in range(4))
_COSINE, _L1, _L2 = 0, 1, 2
_L2_SIM = tl.constexpr(_L2)


# ----------------------------------------------------------------------------- helpers
@triton.jit
def _tile_block(row0, col0, rows, cols, r, c):
    """For the tile's rows r ([BLOCK_R, 1]) and columns c ([1, BLOCK_C]): their indices i, j in
    the N × N matrix and the mask of the block's elements inside the tile."""
    return row0 + r, col0 + c, (r < rows) & (c < cols)


@triton.jit
def _roles(i, j, label_i, pred_i, pair_i, label_j, pred_j, STRATEGY: tl.constexpr):
    """(allowed, positive) of candidate j for anchor i (contrastive.h's candidate_role): the
    counterpart is always a positive, every other j ≠ i a positive, a negative or excluded."""
    other = j != i
    counterpart = other & (j == pair_i)
    same_label = label_j == label_i
    # hard-ls compares the candidate's prediction with the anchor's label, soft-ls and leaked-ls
    # with the anchor's prediction.
    if STRATEGY == _HARD_LS:
        predicted_alike = pred_j == label_i
    else:
        predicted_alike = pred_j == pred_i
    if STRATEGY == _LEAKED_LS:
        positive = same_label & predicted_alike
    else:
        positive = same_label
    if STRATEGY == _GLOBAL:
        negative = ~same_label
    else:
        negative = ~same_label & predicted_alike
    is_positive = counterpart | (other & positive)
    is_negative = other & ~counterpart & negative
    return is_positive | is_negative, is_positive


@triton.jit
def _distance_coefficient(value, s, SIM: tl.constexpr, ACC: tl.constexpr):
    """contrastive.h's similarity_coefficient: for l2 the tile carries dL/ds divided by the
    distance −s (0 at coinciding points: the norm's subgradient there)."""
    if SIM == _L2_SIM:
        coincide = s == 0.0
        return tl.where(coincide, 0.0, _divide(value, tl.where(coincide, 1.0, -s), ACC))
    else:
        return value


# ----------------------------------------------------------------------------- kernels
@triton.jit
def _supcon_stats_kernel(s_ptr, ld, row0, col0, rows, cols, n, labels_ptr, preds_ptr, pair_ptr, stats_ptr,
                         ACC: tl.constexpr, STRATEGY: tl.constexpr,
                         BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    r = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R))[:, None]
    c = tl.arange(0, BLOCK_C)[None, :]
    i = row0 + r
    in_rows = r < rows
    label_i = tl.load(labels_ptr + i, mask=in_rows, other=0)
    pred_i = tl.load(preds_ptr + i, mask=in_rows, other=0)
    pair_i = tl.load(pair_ptr + i, mask=in_rows, other=0)
    s_rows = s_ptr + r.to(tl.int64) * ld

    # Pass 1: the tile row's maximum over the denominator set, its positives' sum and count.
    tile_max = tl.full((BLOCK_R, 1), float("-inf"), ACC)
    positive_sum = tl.zeros((BLOCK_R, 1), ACC)
    positives = tl.zeros((BLOCK_R, 1), ACC)
    for start in range(0, cols, BLOCK_C):
        _, j, inside = _tile_block(row0, col0, rows, cols, r, start + c)
        allowed, positive = _roles(i, j, label_i, pred_i, pair_i, tl.load(labels_ptr + j, mask=inside, other=0),
                                   tl.load(preds_ptr + j, mask=inside, other=0), STRATEGY)
        allowed = allowed & inside
        positive = positive & inside
        t = tl.load(s_rows + start + c, mask=inside, other=0.0).to(ACC)
        tile_max = tl.maximum(tile_max, tl.max(tl.where(allowed, t, float("-inf")), axis=1, keep_dims=True))
        positive_sum += tl.sum(tl.where(positive, t, 0.0), axis=1, keep_dims=True)
        positives += tl.sum(positive.to(ACC), axis=1, keep_dims=True)

    old_max = tl.load(stats_ptr + i, mask=in_rows, other=float("-inf"))
    new_max = tl.maximum(old_max, tile_max)
    empty = new_max == float("-inf")  # nothing in the denominator yet
    shift = tl.where(empty, 0.0, new_max)

    # Pass 2: Σ exp(t − new max) over the denominator set.
    total = tl.zeros((BLOCK_R, 1), ACC)
    for start in range(0, cols, BLOCK_C):
        _, j, inside = _tile_block(row0, col0, rows, cols, r, start + c)
        allowed, _ = _roles(i, j, label_i, pred_i, pair_i, tl.load(labels_ptr + j, mask=inside, other=0),
                            tl.load(preds_ptr + j, mask=inside, other=0), STRATEGY)
        allowed = allowed & inside
        t = tl.load(s_rows + start + c, mask=inside, other=0.0).to(ACC)
        total += tl.sum(tl.where(allowed, tl.exp(tl.where(allowed, t - shift, 0.0)), 0.0), axis=1, keep_dims=True)

    old_sum = tl.load(stats_ptr + n + i, mask=in_rows, other=0.0)
    # exp(old − new) is 0 while the anchor had nothing in its denominator (old = −inf).
    rescaled = tl.where(empty, 0.0, old_sum * tl.exp(tl.where(empty, 0.0, old_max - shift)))
    tl.store(stats_ptr + i, new_max, mask=in_rows)
    tl.store(stats_ptr + n + i, rescaled + total, mask=in_rows)
    tl.store(stats_ptr + 2 * n + i, tl.load(stats_ptr + 2 * n + i, mask=in_rows, other=0.0) + positive_sum,
             mask=in_rows)
    tl.store(stats_ptr + 3 * n + i, tl.load(stats_ptr + 3 * n + i, mask=in_rows, other=0.0) + positives,
             mask=in_rows)


@triton.jit
def _supcon_gradient_kernel(s_ptr, g_ptr, ld, row0, col0, rows, cols, labels_ptr, preds_ptr, pair_ptr,
                            lse_ptr, positives_ptr, row_grad_ptr, tau_value: tl.float64,
                            ACC: tl.constexpr, STRATEGY: tl.constexpr, SIM: tl.constexpr,
                            BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    r = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R))[:, None]
    c = (tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C))[None, :]
    i, j, inside = _tile_block(row0, col0, rows, cols, r, c)
    in_rows = r < rows
    allowed, positive = _roles(i, j, tl.load(labels_ptr + i, mask=in_rows, other=0),
                               tl.load(preds_ptr + i, mask=in_rows, other=0),
                               tl.load(pair_ptr + i, mask=in_rows, other=0),
                               tl.load(labels_ptr + j, mask=inside, other=0),
                               tl.load(preds_ptr + j, mask=inside, other=0), STRATEGY)
    tau = tl.full((), tau_value, ACC)
    count = tl.load(positives_ptr + i, mask=in_rows, other=0.0).to(ACC)
    lse = tl.load(lse_ptr + i, mask=in_rows, other=0.0).to(ACC)
    # An anchor without positives has loss 0 and no gradient (its lse is 0, never read).
    has_positive = count > 0.0
    scale = tl.where(has_positive, _divide(tl.load(row_grad_ptr + i, mask=in_rows, other=0.0).to(ACC), tau, ACC), 0.0)
    inv_count = tl.where(has_positive, _divide(tl.full((BLOCK_R, 1), 1.0, ACC), tl.where(has_positive, count, 1.0),
                                               ACC), 0.0)
    offsets = r.to(tl.int64) * ld + c
    s = tl.load(s_ptr + offsets, mask=inside, other=0.0).to(ACC)
    live = allowed & inside & has_positive
    probability = tl.exp(tl.where(live, s - lse, 0.0))
    value = tl.where(live, scale * (probability - tl.where(positive, inv_count, 0.0)), 0.0)
    tl.store(g_ptr + offsets, _distance_coefficient(value, s * tau, SIM, ACC), mask=inside)


@triton.jit
def _compactness_kernel(s_ptr, ld, row0, col0, rows, cols, labels_ptr, row_sums_ptr, other_weight_value: tl.float64,
                        ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    r = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R))[:, None]
    c = tl.arange(0, BLOCK_C)[None, :]
    i = row0 + r
    in_rows = r < rows
    label_i = tl.load(labels_ptr + i, mask=in_rows, other=0)
    other_weight = tl.full((), other_weight_value, ACC)
    total = tl.zeros((BLOCK_R, 1), ACC)
    for start in range(0, cols, BLOCK_C):
        _, j, inside = _tile_block(row0, col0, rows, cols, r, start + c)
        weight = tl.where(tl.load(labels_ptr + j, mask=inside, other=0) == label_i, 1.0, other_weight)
        s = tl.load(s_ptr + r.to(tl.int64) * ld + start + c, mask=inside, other=0.0).to(ACC)
        total += tl.sum(tl.where(inside, -weight * s, 0.0), axis=1, keep_dims=True)
    tl.store(row_sums_ptr + i, tl.load(row_sums_ptr + i, mask=in_rows, other=0.0) + total, mask=in_rows)


@triton.jit
def _compactness_gradient_kernel(s_ptr, g_ptr, ld, row0, col0, rows, cols, labels_ptr,
                                 other_weight_value: tl.float64, ACC: tl.constexpr, SIM: tl.constexpr,
                                 BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    r = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R))[:, None]
    c = (tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C))[None, :]
    i, j, inside = _tile_block(row0, col0, rows, cols, r, c)
    label_i = tl.load(labels_ptr + i, mask=r < rows, other=0)
    other_weight = tl.full((), other_weight_value, ACC)
    weight = tl.where(tl.load(labels_ptr + j, mask=inside, other=0) == label_i, 1.0, other_weight)
    offsets = r.to(tl.int64) * ld + c
    s = tl.load(s_ptr + offsets, mask=inside, other=0.0).to(ACC)
    tl.store(g_ptr + offsets, _distance_coefficient(-weight, s, SIM, ACC), mask=inside)


@triton.jit
def _distance_gradient_kernel(h_ptr, h_row, h_col, u_out_ptr, u_other_ptr, grad_ptr, a_count, b_count, dim,
                              ACC: tl.constexpr, SIM: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr,
                              BLOCK_K: tl.constexpr):
    """grad[a, k] += −Σ_b H[a, b] ∂d_ab/∂u_out[a, k]: sign(u_out[a, k] − u_other[b, k]) for l1,
    u_out[a, k] − u_other[b, k] for l2 (H holds dL/ds / d there); H's element (a, b) at
    h[a * h_row + b * h_col]. A program owns BLOCK_A rows × BLOCK_K coordinates, [a, b, k] blocks."""
    a = (tl.program_id(0) * BLOCK_A + tl.arange(0, BLOCK_A))[:, None, None]
    k = (tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K))[None, None, :]
    b0 = tl.arange(0, BLOCK_B)[None, :, None]
    in_a = (a < a_count) & (k < dim)
    u = tl.load(u_out_ptr + a.to(tl.int64) * dim + k, mask=in_a, other=0.0).to(ACC)
    total = tl.zeros((BLOCK_A, 1, BLOCK_K), ACC)
    for start in range(0, b_count, BLOCK_B):
        b = start + b0
        in_b = b < b_count
        h = tl.load(h_ptr + a.to(tl.int64) * h_row + b.to(tl.int64) * h_col, mask=(a < a_count) & in_b,
                    other=0.0).to(ACC)
        other = tl.load(u_other_ptr + b.to(tl.int64) * dim + k, mask=in_b & (k < dim), other=0.0).to(ACC)
        difference = u - other
        if SIM == _L2_SIM:
            direction = difference
        else:
            direction = tl.where(difference > 0.0, 1.0, tl.where(difference < 0.0, -1.0, difference))  # NaN stays
        total += tl.sum(tl.where(in_b, h * direction, 0.0), axis=1, keep_dims=True)
    offsets = a.to(tl.int64) * dim + k
    tl.store(grad_ptr + offsets, tl.load(grad_ptr + offsets, mask=in_a, other=0.0) - total, mask=in_a)


# ----------------------------------------------------------------------------- host side
def _accumulation(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _tl(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _block_c(cols: int) -> int:
    return min(_BLOCK_C, max(16, triton.next_power_of_2(cols)))


def _tiles(n: int):
    """(r0, rows, c0, cols) of every tile of the N × N matrix, row block by row block."""
    for r0 in range(0, n, _TILE):
        for c0 in range(0, n, _TILE):
            yield r0, min(_TILE, n - r0), c0, min(_TILE, n - c0)


def _tile_rows(z: torch.Tensor, sim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(work, u): the rows in the accumulation dtype, and the rows the tiles are made of (unit rows
    for the cosine similarity, the rows themselves for the distances)."""
    work = z.to(_accumulation(z.dtype)).contiguous()
    if sim != _COSINE:
        return work, work
    return work, work / work.norm(2, dim=1, keepdim=True).clamp_min(_NORMALIZE_EPS)


def _unit_rows_backward(grad_unit: torch.Tensor, work: torch.Tensor) -> torch.Tensor:
    """normalize's backward: (dû − û(û·dû))/‖z‖ where ‖z‖ > eps, dû/eps where the guard holds."""
    norm = work.norm(2, dim=1, keepdim=True)
    unit = work / norm.clamp_min(_NORMALIZE_EPS)
    projected = (grad_unit - unit * (unit * grad_unit).sum(1, keepdim=True)) / norm.clamp_min(_NORMALIZE_EPS)
    return torch.where(norm > _NORMALIZE_EPS, projected, grad_unit / _NORMALIZE_EPS)


def _similarity_tile(u: torch.Tensor, r0: int, rows: int, c0: int, cols: int, sim: int,
                     scale: float) -> torch.Tensor:
    """scale·s of the tile (L_SCL's tiles hold t = s/τ, as the C++ driver's: no kernel then
    multiplies by 1/τ next to a subtraction, which a fused multiply-add would round differently in
    the forward and the backward)."""
    a, b = u[r0:r0 + rows], u[c0:c0 + cols]
    if sim == _COSINE:
        out = torch.empty(rows, cols, dtype=u.dtype, device=u.device)
        return torch.addmm(out, a, b.t(), beta=0, alpha=scale, out=out)
    # Never the matrix-product form of the l2 distance: it cancels to a nonzero distance between
    # coinciding rows.
    return torch.cdist(a, b, p=1.0 if sim == _L1 else 2.0, compute_mode="donot_use_mm_for_euclid_dist").mul_(-scale)


def _distance_gradient(h: torch.Tensor, h_row: int, h_col: int, u_out: torch.Tensor, u_other: torch.Tensor,
                       grad_out: torch.Tensor, sim: int) -> None:
    a_count, dim = u_out.shape
    block_k = min(_DG_BLOCK_K, max(2, triton.next_power_of_2(dim)))
    _distance_gradient_kernel[(triton.cdiv(a_count, _DG_BLOCK_A), triton.cdiv(dim, block_k))](
        h, h_row, h_col, u_out, u_other, grad_out, a_count, u_other.shape[0], dim,
        ACC=_tl(u_out.dtype), SIM=sim, BLOCK_A=_DG_BLOCK_A, BLOCK_B=_DG_BLOCK_B, BLOCK_K=block_k)


def _accumulate_tile_gradient(grad_u: torch.Tensor, u: torch.Tensor, g: torch.Tensor, r0: int, rows: int, c0: int,
                              cols: int, sim: int) -> None:
    """dU[rows] and dU[cols] += what the tile G = dL/ds carries back (G holds dL/ds / d for l2):
    matrix products for cosine, kernel 5 for l1 and l2 (the module docstring says why l2's)."""
    a, b = u[r0:r0 + rows], u[c0:c0 + cols]
    grad_a, grad_b = grad_u[r0:r0 + rows], grad_u[c0:c0 + cols]
    if sim == _COSINE:  # s_ij = u_i·u_j
        grad_a.addmm_(g, b)
        grad_b.addmm_(g.t(), a)
    else:  # ∂s_ij/∂u_i: l1 −sign(u_i − u_j), l2 −(u_i − u_j)/d_ij; the columns' side reads G transposed
        _distance_gradient(g, g.stride(0), g.stride(1), a, b, grad_a, sim)
        _distance_gradient(g, g.stride(1), g.stride(0), b, a, grad_b, sim)


def supcon_loss(z: torch.Tensor, labels: torch.Tensor, preds: torch.Tensor, pair: torch.Tensor, tau: float,
                strategy: int, sim: int, reduction: int):
    n = z.shape[0]
    _, u = _tile_rows(z, sim)
    stats = torch.zeros(4, n, dtype=u.dtype, device=u.device)
    stats[0].fill_(float("-inf"))
    labels, preds, pair = labels.contiguous(), preds.contiguous(), pair.contiguous()
    for r0, rows, c0, cols in _tiles(n):
        s = _similarity_tile(u, r0, rows, c0, cols, sim, 1.0 / tau)
        _supcon_stats_kernel[(triton.cdiv(rows, _BLOCK_R),)](
            s, s.stride(0), r0, c0, rows, cols, n, labels, preds, pair, stats,
            ACC=_tl(u.dtype), STRATEGY=int(strategy), BLOCK_R=_BLOCK_R, BLOCK_C=_block_c(cols))
    positives = stats[3]
    has_positive = positives > 0
    zero = torch.zeros((), dtype=u.dtype, device=u.device)
    # An anchor with a positive has a nonempty denominator; one without has loss 0 and lse 0.
    lse = torch.where(has_positive, stats[0] + stats[1].log(), zero)
    per_anchor = torch.where(has_positive, lse - stats[2] / positives.clamp_min(1), zero)
    loss = per_anchor if reduction == 0 else (per_anchor.mean() if reduction == 1 else per_anchor.sum())
    return loss.to(z.dtype), lse, positives.clone()


def _supcon_loss_backward(grad_loss: torch.Tensor, z: torch.Tensor, labels: torch.Tensor, preds: torch.Tensor,
                          pair: torch.Tensor, row_lse: torch.Tensor, row_positives: torch.Tensor, tau: float,
                          strategy: int, sim: int, reduction: int) -> torch.Tensor:
    n = z.shape[0]
    work, u = _tile_rows(z, sim)
    grad = grad_loss.to(u.dtype)
    if reduction == 1:
        grad = grad / n
    row_grad = (grad if reduction == 0 else grad.expand(n)).contiguous()
    lse, positives = row_lse.to(u.dtype).contiguous(), row_positives.to(u.dtype).contiguous()
    labels, preds, pair = labels.contiguous(), preds.contiguous(), pair.contiguous()
    grad_u = torch.zeros_like(u)
    for r0, rows, c0, cols in _tiles(n):
        s = _similarity_tile(u, r0, rows, c0, cols, sim, 1.0 / tau)
        g = torch.empty_like(s)
        block_c = _block_c(cols)
        _supcon_gradient_kernel[(triton.cdiv(rows, _BLOCK_R), triton.cdiv(cols, block_c))](
            s, g, s.stride(0), r0, c0, rows, cols, labels, preds, pair, lse, positives, row_grad, tau,
            ACC=_tl(u.dtype), STRATEGY=int(strategy), SIM=int(sim), BLOCK_R=_BLOCK_R, BLOCK_C=block_c)
        _accumulate_tile_gradient(grad_u, u, g, r0, rows, c0, cols, sim)
    grad_z = _unit_rows_backward(grad_u, work) if sim == _COSINE else grad_u
    return grad_z.to(z.dtype)


def _other_weight(a: float) -> float:
    """ADR's w_ij for different labels, (a − 1)/a (1 for the same label)."""
    return (a - 1.0) / a


def pairwise_compactness(f: torch.Tensor, labels: torch.Tensor, a: float, p: int) -> torch.Tensor:
    n = f.shape[0]
    sim = _L1 if p == 1 else _L2
    _, u = _tile_rows(f, sim)
    labels = labels.contiguous()
    row_sums = torch.zeros(n, dtype=u.dtype, device=u.device)
    for r0, rows, c0, cols in _tiles(n):
        s = _similarity_tile(u, r0, rows, c0, cols, sim, 1.0)
        _compactness_kernel[(triton.cdiv(rows, _BLOCK_R),)](
            s, s.stride(0), r0, c0, rows, cols, labels, row_sums, _other_weight(a),
            ACC=_tl(u.dtype), BLOCK_R=_BLOCK_R, BLOCK_C=_block_c(cols))
    return (row_sums.sum() / (float(n) * float(n))).to(f.dtype)


def _pairwise_compactness_backward(grad: torch.Tensor, f: torch.Tensor, labels: torch.Tensor, a: float,
                                   p: int) -> torch.Tensor:
    n = f.shape[0]
    sim = _L1 if p == 1 else _L2
    _, u = _tile_rows(f, sim)
    labels = labels.contiguous()
    grad_u = torch.zeros_like(u)
    for r0, rows, c0, cols in _tiles(n):
        s = _similarity_tile(u, r0, rows, c0, cols, sim, 1.0)
        g = torch.empty_like(s)
        block_c = _block_c(cols)
        _compactness_gradient_kernel[(triton.cdiv(rows, _BLOCK_R), triton.cdiv(cols, block_c))](
            s, g, s.stride(0), r0, c0, rows, cols, labels, _other_weight(a),
            ACC=_tl(u.dtype), SIM=sim, BLOCK_R=_BLOCK_R, BLOCK_C=block_c)
        _accumulate_tile_gradient(grad_u, u, g, r0, rows, c0, cols, sim)
    # The incoming gradient and the mean's 1/N², as a tensor: no value is read back.
    grad_u.mul_(grad.to(u.dtype) / (float(n) * float(n)))
    return grad_u.to(f.dtype)
