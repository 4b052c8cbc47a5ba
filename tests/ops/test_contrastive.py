"""The contrastive family (supcon_loss, pairwise_compactness): the C++ backends against the float64
oracles of fastadv/reference/contrastive.py (values and gradients) on odd N across the tile edge,
every strategy's positive and negative sets on hand-made labels and predictions, SupCon (Khosla et
al. 2020) transcribed independently, the edge cases (N = 1, 2, one class, no positive, every
prediction wrong, coinciding points), gradcheck, opcheck, torch.compile, no value read, no N × N
allocation, bad input. The Triton kernels have tests/ops/test_contrastive_triton.py."""
import inspect

import pytest
import torch
import torch.nn.functional as F

import fastadv
from fastadv.ops import contrastive as ops
from fastadv.reference import contrastive as reference
from tests.helpers import CountReads, device_of, one_thread  # noqa: F401  (one_thread: autouse)

CPP_BACKENDS = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=pytest.mark.cuda)]
STRATEGIES = reference.STRATEGIES
SIMILARITIES = reference.SIMILARITIES
# 1100 crosses the 1024-row tile edge; the others are smaller than a tile.
SIZES = (1, 2, 7, 37, 1100)


def generator(seed):
    return torch.Generator().manual_seed(seed)


def batch(n, d=5, classes=3, seed=0, device="cpu", dtype=torch.float32, two_views=True):
    """z [n, d], labels and predictions over a few classes (so that every strategy has positives
    and negatives), and the two-view pair when n is even (otherwise anchors without counterpart)."""
    g = generator(seed)
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    labels = torch.randint(0, classes, (n,), generator=g)
    preds = torch.where(torch.rand(n, generator=g) < 0.6, labels, torch.randint(0, classes, (n,), generator=g))
    if two_views and n % 2 == 0:
        pair = reference.two_view_pair(n // 2)
        labels[n // 2:] = labels[:n // 2]
    else:
        pair = torch.arange(n)
    to = dict(device=device)
    return z.to(device=device, dtype=dtype), labels.to(**to), preds.to(**to), pair.to(**to)


def value_and_gradient(function, z, *args, weights=None):
    z = z.detach().clone().requires_grad_()
    out = function(z, *args)
    weights = torch.ones_like(out) if weights is None else weights.to(out)
    (grad,) = torch.autograd.grad((out * weights).sum(), [z])
    return out.detach(), grad


def assert_close(got, expected, atol, rtol=None):
    torch.testing.assert_close(got.double().cpu(), expected.double().cpu(), atol=atol,
                               rtol=atol if rtol is None else rtol, equal_nan=True)


# ----------------------------------------------------------------------------- supcon_loss values
@pytest.mark.parametrize("backend", CPP_BACKENDS)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("sim", SIMILARITIES)
def test_supcon_matches_reference(backend, n, strategy, sim):
    device = device_of(backend)
    z, labels, preds, pair = batch(n, d=3 if n > 100 else 5, seed=n, device=device)
    expected, expected_grad = value_and_gradient(reference.supcon_loss, z.double().cpu(), labels.cpu(), preds.cpu(),
                                                 pair.cpu(), 0.07, strategy, sim, "none",
                                                 weights=torch.linspace(0.5, 1.5, n, dtype=torch.float64))
    with fastadv.use_backend(backend):
        got, grad = value_and_gradient(ops.supcon_loss, z, labels, preds, pair, 0.07, strategy, sim, "none",
                                       weights=torch.linspace(0.5, 1.5, n))
    assert_close(got, expected, atol=1e-4)
    assert_close(grad, expected_grad, atol=1e-4)


@pytest.mark.parametrize("backend", CPP_BACKENDS)
@pytest.mark.parametrize("reduction", reference.REDUCTIONS)
def test_supcon_reductions(backend, reduction):
    device = device_of(backend)
    z, labels, preds, pair = batch(40, seed=3, device=device)
    expected, expected_grad = value_and_gradient(reference.supcon_loss, z.double().cpu(), labels.cpu(), preds.cpu(),
                                                 pair.cpu(), 0.5, "soft-ls", "cosine", reduction)
    with fastadv.use_backend(backend):
        got, grad = value_and_gradient(ops.supcon_loss, z, labels, preds, pair, 0.5, "soft-ls", "cosine", reduction)
    assert got.shape == expected.shape and got.dtype == z.dtype
    assert_close(got, expected, atol=1e-4)
    assert_close(grad, expected_grad, atol=1e-5)


def test_supcon_float64_is_tight():
    z, labels, preds, pair = batch(1030, d=4, seed=5, dtype=torch.float64)
    for strategy in STRATEGIES:
        expected = reference.supcon_loss(z, labels, preds, pair, 0.1, strategy, "l2", "none")
        with fastadv.use_backend("cpu"):
            got = ops.supcon_loss(z, labels, preds, pair, 0.1, strategy, "l2", "none")
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-10)


# ----------------------------------------------------------------------------- the selection table
def test_selection_masks_by_hand():
    """Four anchors per view: labels 0, 0, 1, 1; predictions of the first view 0, 1, 1, 0, of the
    second (adversarial) view 1, 1, 0, 0. The sets of anchor 0 (label 0, predicted 0) and anchor 4
    (its adversarial view, label 0, predicted 1) written out from METHODS.md's table."""
    labels = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    preds = torch.tensor([0, 1, 1, 0, 1, 1, 0, 0])
    pair = reference.two_view_pair(4)
    expected = {
        # strategy: (positives of 0, negatives of 0, positives of 4, negatives of 4)
        "global": ({1, 4, 5}, {2, 3, 6, 7}, {0, 1, 5}, {2, 3, 6, 7}),
        # negatives: other label and predicted as the anchor's label (0)
        "hard-ls": ({1, 4, 5}, {3, 6, 7}, {0, 1, 5}, {3, 6, 7}),
        # negatives: other label and predicted as the anchor's prediction (0 for anchor 0, 1 for 4)
        "soft-ls": ({1, 4, 5}, {3, 6, 7}, {0, 1, 5}, {2}),
        # positives too: same label and predicted as the anchor's prediction; the counterpart always
        "leaked-ls": ({4}, {3, 6, 7}, {0, 1, 5}, {2}),
    }
    for strategy, (pos0, neg0, pos4, neg4) in expected.items():
        positive, negative = reference.selection_masks(labels, preds, pair, strategy)
        assert set(positive[0].nonzero().flatten().tolist()) == pos0, strategy
        assert set(negative[0].nonzero().flatten().tolist()) == neg0, strategy
        assert set(positive[4].nonzero().flatten().tolist()) == pos4, strategy
        assert set(negative[4].nonzero().flatten().tolist()) == neg4, strategy
        assert not (positive & negative).any() and not positive.diagonal().any() and not negative.diagonal().any()


@pytest.mark.parametrize("backend", CPP_BACKENDS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_supcon_uses_exactly_the_selected_sets(backend, strategy):
    """The op's per-anchor loss equals the formula written over the hand-made sets above."""
    device = device_of(backend)
    labels = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    preds = torch.tensor([0, 1, 1, 0, 1, 1, 0, 0])
    pair = reference.two_view_pair(4)
    z = torch.randn(8, 6, generator=generator(7), dtype=torch.float64)
    unit = z / z.norm(dim=1, keepdim=True)
    s = unit @ unit.T / 0.2
    positive, negative = reference.selection_masks(labels, preds, pair, strategy)
    expected = []
    for i in range(8):
        pos = positive[i].nonzero().flatten().tolist()
        allowed = pos + negative[i].nonzero().flatten().tolist()
        log_denominator = torch.logsumexp(s[i, allowed], dim=0)
        expected.append(-sum(s[i, j] - log_denominator for j in pos) / len(pos))
    with fastadv.use_backend(backend):
        got = ops.supcon_loss(z.float().to(device), labels.to(device), preds.to(device), pair.to(device), 0.2, strategy,
                              reduction="none")
    assert_close(got, torch.stack(expected), atol=1e-5)


def khosla_supcon(features, labels, temperature):
    """SupConLoss of Khosla et al. (2020), supervised, contrast_mode 'all', base_temperature equal
    to the temperature, transcribed from the paper's reference implementation: features
    [bsz, n_views, dim] already L2-normalised."""
    batch_size, views = features.shape[:2]
    mask = torch.eq(labels.view(-1, 1), labels.view(1, -1)).to(features)
    contrast_feature = torch.cat(torch.unbind(features, dim=1), dim=0)
    anchor_dot_contrast = contrast_feature @ contrast_feature.T / temperature
    logits_max, _ = torch.max(anchor_dot_contrast, dim=1, keepdim=True)
    logits = anchor_dot_contrast - logits_max.detach()
    mask = mask.repeat(views, views)
    logits_mask = torch.ones_like(mask) - torch.eye(batch_size * views, dtype=mask.dtype)
    mask = mask * logits_mask
    exp_logits = torch.exp(logits) * logits_mask
    log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True))
    mean_log_prob_pos = (mask * log_prob).sum(1) / mask.sum(1)
    return (-mean_log_prob_pos).view(views, batch_size).mean()


@pytest.mark.parametrize("backend", CPP_BACKENDS)
def test_global_cosine_is_supcon_over_two_views(backend):
    device = device_of(backend)
    g = generator(11)
    clean, adversarial = torch.randn(16, 8, generator=g, dtype=torch.float64), torch.randn(16, 8, generator=g,
                                                                                            dtype=torch.float64)
    labels = torch.randint(0, 4, (16,), generator=g)
    expected = khosla_supcon(F.normalize(torch.stack([clean, adversarial], dim=1), dim=2), labels, 0.07)
    z = torch.cat([clean, adversarial]).float().to(device)
    preds = torch.randint(0, 4, (32,), generator=g).to(device)  # unused by the global strategy
    with fastadv.use_backend(backend):
        got = ops.supcon_loss(z, torch.cat([labels, labels]).to(device), preds, ops.two_view_pair(16, device), 0.07)
    assert_close(got, expected, atol=1e-4)


# ----------------------------------------------------------------------------- edge cases
@pytest.mark.parametrize("backend", CPP_BACKENDS)
@pytest.mark.parametrize("sim", SIMILARITIES)
@pytest.mark.parametrize("seed", range(8))
def test_supcon_edge_cases(backend, sim, seed):
    """Every edge case on several draws: an anchor whose only candidate is its counterpart has a
    gradient of exactly what the oracle says (0), whatever the logits' size (l1 distances of
    randn rows over τ = 0.07 reach −70, where a kernel that rounds t = s/τ differently in its
    forward and backward gave 1e-4)."""
    device = device_of(backend)
    g = generator(100 + seed)
    cases = {
        "one anchor": (torch.randn(1, 4, generator=g), [0], [0], [0]),
        "two views": (torch.randn(2, 4, generator=g), [3, 3], [1, 2], [1, 0]),
        "one class": (torch.randn(6, 4, generator=g), [2] * 6, [2, 0, 2, 1, 2, 2], [3, 4, 5, 0, 1, 2]),
        "every prediction wrong": (torch.randn(6, 4, generator=g), [0, 1, 2, 0, 1, 2], [1, 2, 0, 1, 2, 0],
                                   [3, 4, 5, 0, 1, 2]),
        "no counterpart": (torch.randn(5, 4, generator=g), [0, 1, 2, 3, 0], [0, 1, 2, 3, 0], [0, 1, 2, 3, 4]),
    }
    for name, (z, labels, preds, pair) in cases.items():
        labels, preds, pair = (torch.tensor(v) for v in (labels, preds, pair))
        for strategy in STRATEGIES:
            expected, expected_grad = value_and_gradient(reference.supcon_loss, z.double(), labels, preds, pair, 0.07,
                                                         strategy, sim, "none")
            with fastadv.use_backend(backend):
                got, grad = value_and_gradient(ops.supcon_loss, z.to(device), labels.to(device), preds.to(device),
                                               pair.to(device), 0.07, strategy, sim, "none")
            assert torch.isfinite(got).all() and torch.isfinite(grad).all(), (name, strategy)
            assert_close(got, expected, atol=1e-4)
            assert_close(grad, expected_grad, atol=1e-4)
    # One anchor alone: no candidate at all, loss 0 and no gradient; two views: only the
    # counterpart, so the loss is log(1) = 0.
    with fastadv.use_backend(backend):
        alone, alone_grad = value_and_gradient(ops.supcon_loss, torch.randn(1, 4, device=device),
                                               torch.zeros(1, dtype=torch.long, device=device),
                                               torch.zeros(1, dtype=torch.long, device=device),
                                               torch.zeros(1, dtype=torch.long, device=device))
    assert alone.item() == 0 and not alone_grad.any()


@pytest.mark.parametrize("backend", CPP_BACKENDS)
@pytest.mark.parametrize("sim", ["l1", "l2"])
def test_coinciding_points_have_a_defined_gradient(backend, sim):
    device = device_of(backend)
    z = torch.randn(6, 3, generator=generator(2), dtype=torch.float64)
    z[3] = z[0]  # the two views of anchor 0 coincide
    z[4] = z[1]
    labels, preds, pair = torch.tensor([0, 1, 0, 0, 1, 0]), torch.tensor([0, 1, 1, 0, 0, 0]), reference.two_view_pair(3)
    for strategy in STRATEGIES:
        expected, expected_grad = value_and_gradient(reference.supcon_loss, z, labels, preds, pair, 0.07, strategy,
                                                     sim, "mean")
        with fastadv.use_backend(backend):
            got, grad = value_and_gradient(ops.supcon_loss, z.float().to(device), labels.to(device), preds.to(device),
                                           pair.to(device), 0.07, strategy, sim)
        assert torch.isfinite(grad).all()
        assert_close(got, expected, atol=1e-4)
        assert_close(grad, expected_grad, atol=1e-4)


@pytest.mark.parametrize("sim", SIMILARITIES)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_supcon_gradcheck(sim, strategy):
    z, labels, preds, pair = batch(10, d=3, seed=4, dtype=torch.float64)
    z = z.requires_grad_()
    torch.autograd.gradcheck(lambda t: reference.supcon_loss(t, labels, preds, pair, 0.5, strategy, sim, "none"), (z,))
    with fastadv.use_backend("cpu"):
        torch.autograd.gradcheck(lambda t: ops.supcon_loss(t, labels, preds, pair, 0.5, strategy, sim, "none"), (z,))


# ----------------------------------------------------------------------------- pairwise_compactness
@pytest.mark.parametrize("backend", CPP_BACKENDS)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("p", reference.NORMS)
def test_compactness_matches_reference(backend, n, p):
    device = device_of(backend)
    f, labels, _, _ = batch(n, d=3 if n > 100 else 6, seed=n + 1, device=device)
    expected, expected_grad = value_and_gradient(reference.pairwise_compactness, f.double().cpu(), labels.cpu(),
                                                 0.99, p)
    with fastadv.use_backend(backend):
        got, grad = value_and_gradient(ops.pairwise_compactness, f, labels, 0.99, p)
    assert got.shape == () and got.dtype == f.dtype
    assert_close(got, expected, atol=1e-4)
    # The gradient of a mean over N² pairs is of order 1/N: compared relative to its size.
    assert_close(grad, expected_grad, atol=1e-4 / n, rtol=1e-4)


@pytest.mark.parametrize("backend", CPP_BACKENDS)
@pytest.mark.parametrize("p", reference.NORMS)
def test_compactness_edge_cases(backend, p):
    device = device_of(backend)
    f = torch.randn(5, 4, generator=generator(9), dtype=torch.float64)
    f[2] = f[0]  # coinciding points
    for labels in ([0, 0, 0, 0, 0], [0, 1, 2, 3, 4], [1, 0, 1, 0, 1]):
        labels = torch.tensor(labels)
        for a in (0.99, 0.5, 1.0):
            expected, expected_grad = value_and_gradient(reference.pairwise_compactness, f, labels, a, p)
            with fastadv.use_backend(backend):
                got, grad = value_and_gradient(ops.pairwise_compactness, f.float().to(device), labels.to(device), a, p)
            assert torch.isfinite(grad).all()
            assert_close(got, expected, atol=1e-5)
            assert_close(grad, expected_grad, atol=1e-5)
    with fastadv.use_backend(backend):
        one, one_grad = value_and_gradient(ops.pairwise_compactness, torch.randn(1, 3, device=device),
                                           torch.zeros(1, dtype=torch.long, device=device))
    assert one.item() == 0 and not one_grad.any()


@pytest.mark.parametrize("p", reference.NORMS)
def test_compactness_gradcheck(p):
    f, labels, _, _ = batch(9, d=3, seed=6, dtype=torch.float64)
    f = f.requires_grad_()
    torch.autograd.gradcheck(lambda t: reference.pairwise_compactness(t, labels, 0.9, p), (f,))
    with fastadv.use_backend("cpu"):
        torch.autograd.gradcheck(lambda t: ops.pairwise_compactness(t, labels, 0.9, p), (f,))


def test_compactness_is_the_seed_weighting():
    """w_ij = 1 for the same label, (a − 1)/a otherwise: two points at distance 1 and 2."""
    f = torch.tensor([[0.0], [1.0], [3.0]])
    labels = torch.tensor([0, 0, 1])
    a = 0.99
    other = (a - 1) / a
    # ordered pairs: (0,1) and (1,0) same label at 1; (0,2), (2,0) at 3 and (1,2), (2,1) at 2, other labels
    expected = (2 * 1.0 + other * (2 * 3.0 + 2 * 2.0)) / 9
    with fastadv.use_backend("cpu"):
        assert ops.pairwise_compactness(f, labels, a, 2).item() == pytest.approx(expected, rel=1e-6)
        assert ops.pairwise_compactness(f, labels, a, 1).item() == pytest.approx(expected, rel=1e-6)


# ----------------------------------------------------------------------------- torch.library
def test_registrations():
    keys = ["CPU"] + (["CUDA"] if fastadv.backend.cuda_compiled() else [])
    for name in ("supcon_loss", "_supcon_loss_backward", "pairwise_compactness", "_pairwise_compactness_backward"):
        for key in keys:
            assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fastadv::{name}", key), (name, key)


def test_public_names_and_signatures():
    assert set(ops.__all__) <= set(fastadv.ops.__all__)
    assert inspect.signature(ops.supcon_loss) == inspect.signature(ops.unchecked.supcon_loss)
    assert inspect.signature(ops.pairwise_compactness) == inspect.signature(ops.unchecked.pairwise_compactness)
    defaults = inspect.signature(ops.supcon_loss).parameters
    assert defaults["tau"].default == 0.07 and defaults["strategy"].default == "global"
    assert defaults["sim"].default == "cosine" and defaults["reduction"].default == "mean"
    compactness = inspect.signature(ops.pairwise_compactness).parameters
    assert compactness["a"].default == 0.99 and compactness["p"].default == 2


@pytest.mark.parametrize("backend", [p for p in CPP_BACKENDS if p.values[0] != "cuda"])
def test_opcheck(backend):
    z, labels, preds, pair = batch(12, seed=8)
    for strategy in range(4):
        for sim in range(3):
            for reduction in range(3):
                torch.library.opcheck(torch.ops.fastadv.supcon_loss.default,
                                      (z.clone().requires_grad_(), labels, preds, pair, 0.3, strategy, sim, reduction))
    for p in (1, 2):
        torch.library.opcheck(torch.ops.fastadv.pairwise_compactness.default,
                              (z.clone().requires_grad_(), labels, 0.99, p))
    loss, lse, positives = torch.ops.fastadv.supcon_loss(z, labels, preds, pair, 0.3, 1, 0, 1)
    torch.library.opcheck(torch.ops.fastadv._supcon_loss_backward.default,
                          (torch.ones(()), z, labels, preds, pair, lse, positives, 0.3, 1, 0, 1))
    torch.library.opcheck(torch.ops.fastadv._pairwise_compactness_backward.default,
                          (torch.ones(()), z, labels, 0.99, 2))


@pytest.mark.parametrize("backend", CPP_BACKENDS)
def test_torch_compile_fullgraph(backend):
    device = device_of(backend)
    z, labels, preds, pair = batch(20, seed=12, device=device)

    def loss(L, z, labels, preds, pair):
        return L.supcon_loss(z, labels, preds, pair, 0.07, "leaked-ls") + L.pairwise_compactness(z, labels)

    # The float64 oracle runs on the CPU: everything it takes moves there (labels, preds and
    # pair live on the backend's device).
    expected, expected_grad = value_and_gradient(lambda t: loss(reference, t, labels.cpu(), preds.cpu(), pair.cpu()),
                                                 z.double().cpu())
    torch._dynamo.reset()
    with fastadv.use_backend(backend):
        compiled = torch.compile(lambda t: loss(ops.unchecked, t, labels, preds, pair), fullgraph=True,
                                 backend="aot_eager")
        got, grad = value_and_gradient(compiled, z)
    assert_close(got, expected, atol=1e-4)
    assert_close(grad, expected_grad, atol=1e-4)


@pytest.mark.parametrize("backend", CPP_BACKENDS)
def test_unchecked_reads_no_value(backend):
    device = device_of(backend)
    z, labels, preds, pair = batch(30, seed=13, device=device)
    z.requires_grad_()
    with fastadv.use_backend(backend), CountReads() as reads:
        loss = ops.unchecked.supcon_loss(z, labels, preds, pair, 0.07, "hard-ls")
        loss = loss + ops.unchecked.pairwise_compactness(z, labels)
        loss.backward()
    assert reads.total == 0
    with fastadv.use_backend(backend), CountReads() as reads:
        ops.supcon_loss(z, labels, preds, pair)
    assert reads.total == 1  # the public op reads its indices once


def test_no_n_by_n_allocation():
    """N = 3000: an N × N float32 matrix is 36 MB; the op's largest allocation is a tile (4 MiB)."""
    n = 3000
    z, labels, preds, pair = batch(n, d=16, seed=14)
    z.requires_grad_()
    with fastadv.use_backend("cpu"):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
            ops.unchecked.supcon_loss(z, labels, preds, pair, 0.07, "leaked-ls", "l2").backward()
            ops.unchecked.pairwise_compactness(z, labels).backward()
    largest = max(event.cpu_memory_usage for event in prof.events())
    assert 0 < largest <= 1024 * 1024 * 4 * 1.01, largest


# ----------------------------------------------------------------------------- bad input
def _good():
    return batch(6, seed=15)


BAD = [
    ("pair", lambda z, y, p, pair: ops.supcon_loss(z, y, p, torch.tensor([1, 2, 0, 3, 4, 5])), ValueError,
     "own inverse"),
    ("pair", lambda z, y, p, pair: ops.supcon_loss(z, y, p, torch.tensor([3, 4, 5, 0, 1, 6])), ValueError,
     "own inverse"),
    ("pair", lambda z, y, p, pair: ops.supcon_loss(z, y, p, pair[:5]), ValueError, "pair must have shape"),
    ("labels", lambda z, y, p, pair: ops.supcon_loss(z, y - 5, p, pair), ValueError, "labels must be class indices"),
    ("preds", lambda z, y, p, pair: ops.supcon_loss(z, y, p - 5, pair), ValueError, "preds must be class indices"),
    ("labels", lambda z, y, p, pair: ops.supcon_loss(z, y.float(), p, pair), TypeError, "labels must be an integer"),
    ("tau", lambda z, y, p, pair: ops.supcon_loss(z, y, p, pair, tau=0.0), ValueError, "tau"),
    ("tau", lambda z, y, p, pair: ops.supcon_loss(z, y, p, pair, tau=-1.0), ValueError, "tau"),
    ("tau", lambda z, y, p, pair: ops.supcon_loss(z, y, p, pair, tau=float("inf")), ValueError, "tau"),
    ("strategy", lambda z, y, p, pair: ops.supcon_loss(z, y, p, pair, strategy="hard"), ValueError, "strategy"),
    ("sim", lambda z, y, p, pair: ops.supcon_loss(z, y, p, pair, sim="dot"), ValueError, "sim"),
    ("reduction", lambda z, y, p, pair: ops.supcon_loss(z, y, p, pair, reduction="max"), ValueError, "reduction"),
    ("z", lambda z, y, p, pair: ops.supcon_loss(z[0], y, p, pair), ValueError, "z must have 2 dimensions"),
    ("z", lambda z, y, p, pair: ops.supcon_loss(z[:0], y[:0], p[:0], pair[:0]), ValueError, "N >= 1"),
    ("z", lambda z, y, p, pair: ops.supcon_loss(z.long(), y, p, pair), TypeError, "z must be a floating"),
    ("f", lambda z, y, p, pair: ops.pairwise_compactness(z[None], y), ValueError, "f must have 2 dimensions"),
    ("labels", lambda z, y, p, pair: ops.pairwise_compactness(z, y[:3]), ValueError, "labels must have shape"),
    ("labels", lambda z, y, p, pair: ops.pairwise_compactness(z, y - 9), ValueError, "labels must be class indices"),
    ("a", lambda z, y, p, pair: ops.pairwise_compactness(z, y, a=0.0), ValueError, "a must"),
    ("a", lambda z, y, p, pair: ops.pairwise_compactness(z, y, a=1.5), ValueError, "a must"),
    ("p", lambda z, y, p, pair: ops.pairwise_compactness(z, y, p=3), ValueError, "p must be one of"),
    ("p", lambda z, y, p, pair: ops.pairwise_compactness(z, y, p=2.0), ValueError, "p must be one of"),
]


@pytest.mark.parametrize("argument,call,error,message", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_input_is_named(argument, call, error, message):
    with pytest.raises(error, match=message):
        call(*_good())


def test_cpp_kernel_checks_are_a_second_line():
    z, labels, preds, pair = _good()
    with pytest.raises(RuntimeError, match="tau"):
        torch.ops.fastadv.supcon_loss(z, labels, preds, pair, 0.0, 0, 0, 1)
    with pytest.raises(RuntimeError, match="strategy"):
        torch.ops.fastadv.supcon_loss(z, labels, preds, pair, 0.1, 7, 0, 1)
    with pytest.raises(RuntimeError, match="labels"):
        torch.ops.fastadv.supcon_loss(z, labels.int(), preds, pair, 0.1, 0, 0, 1)
    with pytest.raises(RuntimeError, match="p must be 1 or 2"):
        torch.ops.fastadv.pairwise_compactness(z, labels, 0.99, 3)
