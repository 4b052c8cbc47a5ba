"""The contrastive family's Triton kernels (kernels/contrastive.py): the public ops supcon_loss and
pairwise_compactness under the triton backend against the float64 oracles of
fastadv/reference/contrastive.py, values and gradients (the reference's autograd), on every
strategy × similarity × reduction, anchors without positives, coinciding rows, a batch that
crosses a tile boundary, float64, opcheck and torch.compile.

Run with TRITON_INTERPRET=1 on the CPU (the interpreter is slow: small batches, one N > 1024).

τ: the cosine cases use the default 0.07 (|s/τ| ≤ 14.3). The l1 / l2 cases use τ = 1: with unit
Gaussian rows the distances are a few units, and at τ = 0.07 the logits s/τ reach −40 to −100,
where float32's rounding of the distance alone (relative 6e-8) moves exp(s/τ − lse) by a few 1e-6
relative and the gradients by more than 1e-5 — on the C++ CPU kernels as on these (measured),
whatever the kernel does. test_supcon_default_tau_distances covers τ = 0.07 on rows scaled so
that |s/τ| is of the same order as the cosine cases'.
"""
import pytest
import torch

import fastadv
from fastadv.ops import contrastive as ops
from fastadv.reference import contrastive as reference
from tests.helpers import device_of, one_thread  # noqa: F401  (one_thread: autouse)

pytestmark = pytest.mark.triton

SIZES = (1, 2, 7, 37)
DIMS = (1, 5)
ELEMENTWISE = dict(atol=1e-5, rtol=1e-5)
REDUCED = dict(atol=1e-4, rtol=1e-4)


def tau_of(sim):
    return ops.DEFAULT_TAU if sim == "cosine" else 1.0


def generator(seed):
    return torch.Generator().manual_seed(seed)


def batch(n, d, seed=0, classes=3, dtype=torch.float32, scale=1.0):
    """(z, labels, preds, pair): Gaussian rows, labels and predictions of `classes` classes, and
    two views per sample with the last anchor of an odd batch its own counterpart (none)."""
    device = device_of("triton")
    z = (torch.randn(n, d, generator=generator(seed), dtype=torch.float64) * scale).to(dtype)
    labels = torch.randint(0, classes, (n,), generator=generator(seed + 1))
    preds = torch.randint(0, classes, (n,), generator=generator(seed + 2))
    pair = reference.two_view_pair(n // 2)
    if n % 2:
        pair = torch.cat([pair, torch.tensor([n - 1])])
    return z.to(device), labels.to(device), preds.to(device), pair.to(device)


def close(got, expected, **tolerance):
    torch.testing.assert_close(got.detach().double().cpu(), expected.detach().double().cpu(), **tolerance)


def check_supcon(z, labels, preds, pair, tau, strategy, sim, reduction, **tolerance):
    """Loss and gradient of the Triton op against the oracle's on float64 copies of z, with a
    random incoming gradient per anchor (reduction none) or a random scalar."""
    loss_tolerance = tolerance or (ELEMENTWISE if reduction == "none" else REDUCED)
    grad_tolerance = tolerance or ELEMENTWISE
    leaf = z.clone().requires_grad_()
    with fastadv.use_backend("triton"):
        got = ops.supcon_loss(leaf, labels, preds, pair, tau, strategy, sim, reduction)
    exact_leaf = z.detach().double().cpu().requires_grad_()
    exact = reference.supcon_loss(exact_leaf, labels.cpu(), preds.cpu(), pair.cpu(), tau, strategy, sim, reduction)
    assert got.shape == exact.shape and got.dtype == z.dtype
    close(got, exact, **loss_tolerance)
    incoming = torch.randn(exact.shape, generator=generator(7), dtype=torch.float64)
    (grad,) = torch.autograd.grad(got, leaf, incoming.to(device=z.device, dtype=z.dtype))
    (exact_grad,) = torch.autograd.grad(exact, exact_leaf, incoming)
    assert torch.isfinite(grad).all()
    close(grad, exact_grad, **grad_tolerance)
    return got, grad


def check_compactness(f, labels, a, p, **tolerance):
    leaf = f.clone().requires_grad_()
    with fastadv.use_backend("triton"):
        got = ops.pairwise_compactness(leaf, labels, a, p)
    exact_leaf = f.detach().double().cpu().requires_grad_()
    exact = reference.pairwise_compactness(exact_leaf, labels.cpu(), a, p)
    assert got.shape == () and got.dtype == f.dtype
    close(got, exact, **(tolerance or REDUCED))
    (grad,) = torch.autograd.grad(got * 1.5, leaf)
    (exact_grad,) = torch.autograd.grad(exact * 1.5, exact_leaf)
    assert torch.isfinite(grad).all()
    close(grad, exact_grad, **(tolerance or ELEMENTWISE))
    return got, grad


# ----------------------------------------------------------------------------- supcon_loss
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("reduction", ops.REDUCTIONS)
@pytest.mark.parametrize("sim", ops.SIMILARITIES)
@pytest.mark.parametrize("strategy", ops.STRATEGIES)
def test_supcon_against_reference(strategy, sim, reduction, n, d):
    z, labels, preds, pair = batch(n, d, seed=n * 10 + d)
    check_supcon(z, labels, preds, pair, tau_of(sim), strategy, sim, reduction)


@pytest.mark.parametrize("sim", ("l1", "l2"))
def test_supcon_default_tau_distances(sim):
    """τ = 0.07 with l1 / l2 on rows whose distances are tenths (|s/τ| of order 10)."""
    z, labels, preds, pair = batch(37, 5, seed=3, scale=0.05)
    for strategy in ops.STRATEGIES:
        check_supcon(z, labels, preds, pair, ops.DEFAULT_TAU, strategy, sim, "none")


@pytest.mark.parametrize("sim", ops.SIMILARITIES)
@pytest.mark.parametrize("strategy", ops.STRATEGIES)
def test_supcon_anchors_without_positives(strategy, sim):
    """pair[i] == i for every anchor and mostly distinct labels: the anchors that the strategy
    leaves without a positive have loss 0 and lse 0, no gradient flows from them, and they count
    in the mean."""
    z, _, preds, _ = batch(9, 3, seed=5)
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 0, 0], device=z.device)
    pair = torch.arange(9, device=z.device)
    per_anchor, _ = check_supcon(z, labels, preds, pair, tau_of(sim), strategy, sim, "none")
    alone = torch.tensor([False] + [True] * 6 + [False] * 2)  # labels 1 to 6 appear once
    assert (per_anchor.detach().cpu()[alone] == 0).all()
    for reduction in ("mean", "sum"):
        check_supcon(z, labels, preds, pair, tau_of(sim), strategy, sim, reduction)
    with fastadv.use_backend("triton"):
        _, lse, positives = ops._TRITON.supcon_loss(z, labels, preds, pair, tau_of(sim), ops.STRATEGIES.index(strategy),
                                                    ops.SIMILARITIES.index(sim), 0)
    assert lse.dtype == positives.dtype == torch.float32
    assert (lse.cpu()[alone] == 0).all() and (positives.cpu()[alone] == 0).all()


def test_supcon_no_positive_anywhere():
    """Every anchor alone (N = 1, and distinct labels without counterparts): loss 0, gradient 0."""
    for n in (1, 4):
        z, _, preds, _ = batch(n, 3, seed=6)
        labels, pair = torch.arange(n, device=z.device), torch.arange(n, device=z.device)
        for sim in ops.SIMILARITIES:
            loss, grad = check_supcon(z, labels, preds, pair, tau_of(sim), "global", sim, "mean")
            assert loss.item() == 0 and (grad == 0).all()


@pytest.mark.parametrize("sim", ops.SIMILARITIES)
def test_supcon_coinciding_rows(sim):
    """Repeated rows (and a zero row for the cosine's normalisation guard): distance exactly 0,
    no NaN, the oracle's values and its gradient (0 from coinciding pairs)."""
    z, labels, preds, pair = batch(8, 5, seed=8)
    z[3] = z[0]
    z[5] = z[0]
    z[6] = z[7]
    if sim == "cosine":
        z[2] = 0.0
    for strategy in ops.STRATEGIES:
        for reduction in ops.REDUCTIONS:
            loss, _ = check_supcon(z, labels, preds, pair, tau_of(sim), strategy, sim, reduction)
            assert torch.isfinite(loss).all()


@pytest.mark.parametrize("sim", ops.SIMILARITIES)
def test_supcon_crosses_tile_boundary(sim):
    """N = 1100 > 1024: four tiles, statistics folded across the column tiles, gradients carried
    back from both sides of the off-diagonal tiles."""
    z, labels, preds, pair = batch(1100, 3, seed=11, classes=5)
    # Some anchors without a counterpart, on both sides of the tile boundary (both views of
    # samples 0–2 and 547–549: pair stays an involution).
    alone = torch.tensor([0, 1, 2, 547, 548, 549], device=pair.device)  # indices on pair's device
    pair[alone] = alone
    pair[alone + 550] = alone + 550
    check_supcon(z, labels, preds, pair, tau_of(sim), "soft-ls", sim, "mean")


def test_supcon_float64():
    """float64 stays float64 (statistics included) and matches the oracle to rounding."""
    z, labels, preds, pair = batch(7, 5, seed=12, dtype=torch.float64)
    for sim in ops.SIMILARITIES:
        for strategy in ops.STRATEGIES:
            check_supcon(z, labels, preds, pair, tau_of(sim), strategy, sim, "none", atol=1e-10, rtol=1e-10)
        with fastadv.use_backend("triton"):
            loss, lse, positives = ops._TRITON.supcon_loss(z, labels, preds, pair, 0.07, 0,
                                                           ops.SIMILARITIES.index(sim), 1)
        assert loss.dtype == lse.dtype == positives.dtype == torch.float64


# ----------------------------------------------------------------------------- pairwise_compactness
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("p", ops.NORMS)
def test_compactness_against_reference(p, n, d):
    f, labels, _, _ = batch(n, d, seed=20 + n + d)
    for a in (ops.DEFAULT_A, 0.5, 1.0):
        check_compactness(f, labels, a, p)


@pytest.mark.parametrize("p", ops.NORMS)
def test_compactness_coinciding_rows(p):
    f, labels, _, _ = batch(8, 5, seed=21)
    f[3] = f[0]
    f[5] = f[0]
    f[6] = f[7]
    check_compactness(f, labels, ops.DEFAULT_A, p)


@pytest.mark.parametrize("p", ops.NORMS)
def test_compactness_crosses_tile_boundary(p):
    f, labels, _, _ = batch(1100, 3, seed=22, classes=5)
    f[1099] = f[0]  # a coinciding pair in an off-diagonal tile
    check_compactness(f, labels, ops.DEFAULT_A, p)


def test_compactness_float64():
    f, labels, _, _ = batch(7, 5, seed=23, dtype=torch.float64)
    for p in ops.NORMS:
        check_compactness(f, labels, ops.DEFAULT_A, p, atol=1e-12, rtol=1e-10)


# ----------------------------------------------------------------------------- torch.library
def test_opcheck():
    z, labels, preds, pair = batch(6, 3, seed=30)
    for sim in range(3):
        for strategy in range(4):
            torch.library.opcheck(ops._TRITON.supcon_loss,
                                  (z.clone().requires_grad_(), labels, preds, pair, 0.5, strategy, sim, sim % 3))
    for p in ops.NORMS:
        torch.library.opcheck(ops._TRITON.pairwise_compactness, (z.clone().requires_grad_(), labels, 0.99, p))


def test_torch_compile_fullgraph():
    z, labels, preds, pair = batch(7, 4, seed=31)

    def losses(L, z, labels, preds, pair):
        return (L.supcon_loss(z, labels, preds, pair, 0.5, "hard-ls", "l2", "mean")
                + L.supcon_loss(z, labels, preds, pair, 0.07, "global", "cosine", "sum")
                + L.pairwise_compactness(z, labels, 0.99, 1))

    exact_leaf = z.double().cpu().requires_grad_()
    exact = losses(reference, exact_leaf, labels.cpu(), preds.cpu(), pair.cpu())
    (exact_grad,) = torch.autograd.grad(exact, exact_leaf)
    torch._dynamo.reset()
    leaf = z.clone().requires_grad_()
    with fastadv.use_backend("triton"):
        compiled = torch.compile(lambda *a: losses(ops, *a), fullgraph=True, backend="aot_eager")
        got = compiled(leaf, labels, preds, pair)
    (grad,) = torch.autograd.grad(got, leaf)
    close(got, exact, **REDUCED)
    close(grad, exact_grad, **ELEMENTWISE)
