"""The logits family: every backend against the float64 reference (values and gradients), odd
shapes, gradcheck, opcheck, torch.compile, bad input."""
import math

import pytest
import torch

import fastadv
from fastadv.ops import logits as ops
from fastadv.reference import logits as reference
from tests.helpers import BACKENDS, device_of

BATCHES = [1, 7, 4097]
CLASSES = [2, 10, 100, 1000]


def make_inputs(name, batch, classes, dtype=torch.float32, device="cpu", seed=0):
    """(tensor inputs that get gradients, other arguments) of op ``name``: logits with a spread
    like a trained network's (scale 3), a row of large logits (±60) for stability, labels."""
    g = torch.Generator().manual_seed(seed)

    def logits():
        z = torch.randn(batch, classes, generator=g, dtype=torch.float64) * 3
        z[0, : classes // 2] += 60.0
        return z

    y = torch.randint(0, classes, (batch,), generator=g)
    if name == "soft_cross_entropy":
        tensors, others = (logits(), torch.softmax(logits() / 2, dim=1)), ()
    elif name == "smoothed_cross_entropy":
        tensors, others = (logits(),), (y, 0.1)
    elif name == "boosted_cross_entropy":
        tensors, others = (logits(),), (y,)
    elif name in ("trades_kl", "logit_pairing"):
        z = logits()
        tensors, others = (z, z + torch.randn(batch, classes, generator=g, dtype=torch.float64)), ()
    elif name == "mart_loss":
        z = logits()
        tensors, others = (z, z + torch.randn(batch, classes, generator=g, dtype=torch.float64)), (y,)
    elif name == "margin_sq_hinge":
        tensors, others = (logits(),), (y, 0.9)
    elif name == "mhuber":
        u = logits()
        # differences on both sides of the |d|/α = π/2 switch (α = 5.345: the switch is at 8.4)
        tensors, others = (u, u + torch.randn(batch, classes, generator=g, dtype=torch.float64) * 8), (5.345,)
    elif name == "mhuber_moving_average":
        u = logits()
        tensors = (u, u + torch.randn(batch, classes, generator=g, dtype=torch.float64) * 8)
        others = (logits(), logits(), 0.2, 5.345)
    else:  # logit_squeeze
        tensors, others = (logits(),), ()
    tensors = tuple(t.to(dtype=dtype, device=device) for t in tensors)
    others = tuple((o.to(device, dtype) if o.is_floating_point() else o.to(device)) if isinstance(o, torch.Tensor)
                   else o for o in others)
    return tensors, others


OPS = ["soft_cross_entropy", "smoothed_cross_entropy", "boosted_cross_entropy", "trades_kl", "mart_loss",
       "margin_sq_hinge", "mhuber", "mhuber_moving_average", "logit_pairing", "logit_squeeze"]


def as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


def losses_and_grads(fn, tensors, others, weights=None):
    """The op's outputs and the gradients of Σ weights·outputs with respect to each tensor."""
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    outputs = as_tuple(fn(*leaves, *others))
    if weights is None:
        g = torch.Generator().manual_seed(5)
        weights = [torch.randn(o.shape, generator=g, dtype=torch.float64) for o in outputs]
    total = sum((o * w.to(o.dtype).to(o.device)).sum() for o, w in zip(outputs, weights))
    grads = torch.autograd.grad(total, leaves)
    return [o.detach() for o in outputs], list(grads), weights


def assert_close_to_exact(got, exact, rtol=1e-4):
    """fp32 against the float64 oracle: relative 1e-4 (the family reduces rows), absolute
    1e-5 of the largest magnitude in the tensor."""
    scale = max(1.0, exact.abs().max().item()) if exact.numel() else 1.0
    torch.testing.assert_close(got.double().cpu(), exact, rtol=rtol, atol=1e-5 * scale)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("classes", CLASSES)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("name", OPS)
def test_matches_reference(backend, name, batch, classes):
    device = device_of(backend)
    tensors, others = make_inputs(name, batch, classes, device=device)
    exact_tensors = tuple(t.double().cpu() for t in tensors)
    exact_others = tuple((o.double() if o.is_floating_point() else o).cpu() if isinstance(o, torch.Tensor) else o
                         for o in others)
    exact, exact_grads, weights = losses_and_grads(getattr(reference, name), exact_tensors, exact_others)
    with fastadv.use_backend(backend):
        got, got_grads, _ = losses_and_grads(getattr(ops, name), tensors, others, weights)
    for g, e in zip(got, exact):
        assert g.dtype == tensors[0].dtype and g.shape == e.shape
        assert_close_to_exact(g, e)
    for g, e in zip(got_grads, exact_grads):
        assert_close_to_exact(g, e)


@pytest.mark.parametrize("name", OPS)
def test_float64_cpu_matches_reference_tightly(name):
    tensors, others = make_inputs(name, 33, 17, dtype=torch.float64)
    exact, exact_grads, weights = losses_and_grads(getattr(reference, name), tensors, others)
    with fastadv.use_backend("cpu"):
        got, got_grads, _ = losses_and_grads(getattr(ops, name), tensors, others, weights)
    for g, e in zip(got + got_grads, exact + exact_grads):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("name", OPS)
def test_gradcheck_float64(backend, name):
    tensors, others = make_inputs(name, 3, 5, dtype=torch.float64, seed=2)
    tensors = tuple(t.clone().requires_grad_() for t in tensors)
    with fastadv.use_backend(backend):
        assert torch.autograd.gradcheck(lambda *t: getattr(ops, name)(*t, *others), tensors)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["soft_cross_entropy", "trades_kl", "mart_loss", "mhuber", "mhuber_moving_average",
                                  "logit_pairing"])
def test_gradient_only_where_asked(backend, name):
    """With the second input detached, the first input's gradient is unchanged."""
    device = device_of(backend)
    tensors, others = make_inputs(name, 7, 10, device=device)
    with fastadv.use_backend(backend):
        both, both_grads, weights = losses_and_grads(getattr(ops, name), tensors, others)
        first = tensors[0].detach().clone().requires_grad_()
        outputs = as_tuple(getattr(ops, name)(first, tensors[1], *others))
        total = sum((o * w.to(o.dtype).to(device)).sum() for o, w in zip(outputs, weights))
        (grad_first,) = torch.autograd.grad(total, [first])
    torch.testing.assert_close(grad_first, both_grads[0])


def test_mart_ties_share_the_gradient_like_amax():
    z_adv = torch.tensor([[0.0, 2.0, 2.0, -1.0], [1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    z_nat = torch.zeros_like(z_adv)
    y = torch.tensor([0, 3])
    exact, exact_grads, weights = losses_and_grads(reference.mart_loss, (z_nat, z_adv), (y,))
    with fastadv.use_backend("cpu"):
        got, got_grads, _ = losses_and_grads(ops.mart_loss, (z_nat, z_adv), (y,), weights)
    for g, e in zip(got + got_grads, exact + exact_grads):
        torch.testing.assert_close(g, e)


def test_boosted_clamp_stops_the_gradient():
    """1 − max_{k≠y} p_k below 1e-4: the second term is the constant −log 1e-4."""
    z = torch.tensor([[0.0, 30.0, -5.0]], dtype=torch.float64)
    y = torch.tensor([0])
    with fastadv.use_backend("cpu"):
        loss = ops.boosted_cross_entropy(z, y)
    expected = -torch.log_softmax(z, dim=1)[0, 0] - math.log(1e-4)
    torch.testing.assert_close(loss[0], expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_smoothing_follows_seed_001_not_torch(backend):
    device = device_of(backend)
    z = torch.randn(5, 10, device=device)
    y = torch.arange(5, device=device)
    with fastadv.use_backend(backend):
        ours = ops.smoothed_cross_entropy(z, y, 0.1)
    target = torch.full((5, 10), 0.1 / 9, device=device).scatter_(1, y[:, None], 0.9)
    torch.testing.assert_close(ours, -(target * torch.log_softmax(z, dim=1)).sum(1), rtol=1e-5, atol=1e-5)
    torch_convention = torch.nn.functional.cross_entropy(z, y, label_smoothing=0.1, reduction="none")
    assert not torch.allclose(ours, torch_convention, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_stays_in_its_sample(backend):
    device = device_of(backend)
    tensors, others = make_inputs("trades_kl", 4, 10, device=device)
    z_nat = tensors[0].clone()
    z_nat[2, 3] = math.nan
    y = torch.arange(4, device=device)
    with fastadv.use_backend(backend):
        for loss in (ops.trades_kl(z_nat, tensors[1]), ops.margin_sq_hinge(z_nat, y), ops.mart_loss(z_nat, z_nat, y)[1],
                     ops.smoothed_cross_entropy(z_nat, y), ops.logit_squeeze(z_nat)):
            assert torch.isnan(loss[2]) and bool(torch.isfinite(loss[[0, 1, 3]]).all())


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    device = device_of(backend)
    z = torch.empty(0, 10, device=device, requires_grad=True)
    y = torch.empty(0, dtype=torch.int64, device=device)
    with fastadv.use_backend(backend):
        assert ops.trades_kl(z, z.detach()).shape == (0,)
        assert torch.isnan(ops.trades_kl(z, z.detach(), "mean")) and ops.trades_kl(z, z.detach(), "sum") == 0
        hinge = ops.margin_sq_hinge(z, y)
        assert hinge.shape == (0,)
        (grad,) = torch.autograd.grad(hinge.sum() + ops.trades_kl(z, z.detach()).sum(), [z])
        assert grad.shape == (0, 10)
        assert torch.isnan(ops.mhuber(z, z.detach(), 1.0))


def test_mhuber_takes_any_batched_shape():
    u, v = torch.randn(4, 3, 5), torch.randn(4, 3, 5)
    with fastadv.use_backend("cpu"):
        got = ops.mhuber(u, v, 2.0)
    torch.testing.assert_close(got, reference.mhuber(u, v, 2.0))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(4096, 100), (64, 3, 5), (6, 10)])
def test_mhuber_any_row_split(backend, shape):
    """mhuber's kernels see the elements in rows of whole vectors where the count allows
    ([4096, 100] as 400 rows of 1024, [64, 3, 5] as 15 rows of 64; [6, 10] as it is): the loss,
    the gradients and the moving averages (in u's shape) are those of the reference."""
    device = device_of(backend)
    g = torch.Generator().manual_seed(4)
    u, v, u_prev, v_prev = (torch.randn(shape, generator=g, dtype=torch.float64) * 4 for _ in range(4))
    cases = [("mhuber", (5.345,)), ("mhuber_moving_average", (u_prev, v_prev, 0.2, 5.345))]
    for name, others in cases[:2 if len(shape) == 2 else 1]:  # the moving averages take [B, C] only
        exact, exact_grads, weights = losses_and_grads(getattr(reference, name), (u, v), others)
        got_others = tuple(o.float().to(device) if isinstance(o, torch.Tensor) else o for o in others)
        with fastadv.use_backend(backend):
            got, got_grads, _ = losses_and_grads(getattr(ops, name), (u.float().to(device), v.float().to(device)),
                                                 got_others, weights)
        for a, e in zip(got + got_grads, exact + exact_grads):
            assert a.shape == e.shape
            assert_close_to_exact(a, e)


def test_backward_twice_with_retain_graph():
    z_nat, z_adv = (torch.randn(3, 4, requires_grad=True) for _ in range(2))
    with fastadv.use_backend("cpu"):
        loss = ops.trades_kl(z_nat, z_adv).sum()
    first = torch.autograd.grad(loss, [z_nat, z_adv], retain_graph=True)
    second = torch.autograd.grad(loss, [z_nat, z_adv])
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------------- trades_kl reductions
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch,classes", [(1, 2), (7, 10), (4097, 100)])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_trades_kl_reduction_matches_reference(backend, reduction, batch, classes):
    """The scalar loss and its gradients, reached with a gradient of 1 (the saved gradients are
    returned as they are) and with another one (they are scaled)."""
    device = device_of(backend)
    tensors, _ = make_inputs("trades_kl", batch, classes, device=device)
    exact_tensors = tuple(t.double().cpu() for t in tensors)
    for weight in (1.0, -2.5):
        exact, exact_grads, weights = losses_and_grads(
            lambda a, b: reference.trades_kl(a, b, reduction), exact_tensors, (), [torch.tensor(weight)])
        with fastadv.use_backend(backend):
            got, got_grads, _ = losses_and_grads(lambda a, b: ops.trades_kl(a, b, reduction), tensors, (), weights)
        assert got[0].shape == () and got[0].dtype == tensors[0].dtype
        assert_close_to_exact(got[0], exact[0])
        for g, e in zip(got_grads, exact_grads):
            assert_close_to_exact(g, e)


@pytest.mark.parametrize("classes", [16, 17, 31, 100, 1000])
@pytest.mark.parametrize("asked", ["both", "z_nat", "z_adv"])
def test_trades_kl_cpu_blocks(classes, asked):
    """The CPU's trades_kl runs rows of 16 or more columns in blocks of 16, the last one
    overlapping the one before; with one gradient asked for it recomputes the exponentials
    instead of caching them. Against the reference, with a NaN confined to its sample."""
    tensors, _ = make_inputs("trades_kl", 9, classes)
    z_nat, z_adv = tensors
    z_adv = z_adv.clone()
    z_adv[4, classes - 1] = math.nan
    exact_nat, exact_adv = (t.double().clone().requires_grad_(asked in ("both", name))
                            for t, name in ((z_nat, "z_nat"), (z_adv, "z_adv")))
    got_nat, got_adv = (t.clone().requires_grad_(asked in ("both", name))
                        for t, name in ((z_nat, "z_nat"), (z_adv, "z_adv")))
    weights = torch.randn(9, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    weights[4] = 0.0  # the NaN sample's loss is checked, its gradient is not
    exact = reference.trades_kl(exact_nat, exact_adv)
    with fastadv.use_backend("cpu"):
        got = ops.trades_kl(got_nat, got_adv)
    assert torch.isnan(got[4]) and bool(torch.isfinite(got[torch.arange(9) != 4]).all())
    keep = torch.arange(9) != 4
    assert_close_to_exact(got[keep], exact[keep].detach())
    leaves_exact = [t for t in (exact_nat, exact_adv) if t.requires_grad]
    leaves_got = [t for t in (got_nat, got_adv) if t.requires_grad]
    grads_exact = torch.autograd.grad((exact[keep] * weights[keep]).sum(), leaves_exact)
    grads_got = torch.autograd.grad((got[keep] * weights[keep].float()).sum(), leaves_got)
    for g, e in zip(grads_got, grads_exact):
        assert_close_to_exact(g[keep], e[keep])


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_trades_kl_reduction_gradcheck(backend, reduction):
    tensors, _ = make_inputs("trades_kl", 4, 5, dtype=torch.float64, seed=3)
    tensors = tuple(t.clone().requires_grad_() for t in tensors)
    with fastadv.use_backend(backend):
        assert torch.autograd.gradcheck(lambda a, b: ops.trades_kl(a, b, reduction), tensors)


def test_returned_gradient_survives_retain_graph_and_accumulation():
    """The mean's saved gradients go out as they are when the incoming gradient is 1; a second
    backward through the retained graph, accumulation into .grad, and a second use of the same
    input must all still see the right values."""
    tensors, _ = make_inputs("trades_kl", 6, 10, dtype=torch.float64)
    exact, exact_grads, _ = losses_and_grads(lambda a, b: reference.trades_kl(a, b, "mean"), tensors, (),
                                             [torch.tensor(1.0)])
    z_nat, z_adv = (t.clone().requires_grad_() for t in tensors)
    with fastadv.use_backend("cpu"):
        loss = ops.trades_kl(z_nat, z_adv, "mean")
        loss.backward(retain_graph=True)
        loss.backward()
        for leaf, e in zip((z_nat, z_adv), exact_grads):
            torch.testing.assert_close(leaf.grad, 2 * e)
        twice = ops.trades_kl(z_nat, z_adv, "mean") + ops.trades_kl(z_nat, z_adv, "mean")
        for g, e in zip(torch.autograd.grad(twice, [z_nat, z_adv]), exact_grads):
            torch.testing.assert_close(g, 2 * e)


def test_auto_picks_the_cpu_kernel_and_half_falls_back_to_reference():
    z = torch.randn(3, 4)
    assert fastadv.backend.select("trades_kl", z.device, z.dtype) == "cpu"
    assert fastadv.backend.select("trades_kl", z.device, torch.bfloat16) == "reference"
    with fastadv.use_backend("cpu"), pytest.raises(fastadv.BackendUnavailable):
        ops.trades_kl(z.bfloat16(), z.bfloat16())


# ----------------------------------------------------------------------------- bad input
def _bad_cases():
    z, y = torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    return [
        ("y", lambda: ops.smoothed_cross_entropy(z, torch.tensor([0, 1, 2, 5])), ValueError, "y must lie in"),
        ("y", lambda: ops.margin_sq_hinge(z, torch.tensor([0, -1, 2, 3])), ValueError, "y must lie in"),
        ("y", lambda: ops.mart_loss(z, z, y[:3]), ValueError, r"y must have shape \[B\]"),
        ("y", lambda: ops.boosted_cross_entropy(z, y.float()), TypeError, "y must be an integer"),
        ("z_adv", lambda: ops.trades_kl(z, torch.randn(4, 6)), ValueError, "z_adv must have the shape"),
        ("reduction", lambda: ops.trades_kl(z, z, "batchmean"), ValueError, "reduction must be one of"),
        ("z_adv", lambda: ops.logit_pairing(z, z.double()), TypeError, "z_adv must have the first logits' dtype"),
        ("target", lambda: ops.soft_cross_entropy(z, torch.randn(5, 5)), ValueError, "target must have the shape"),
        ("z", lambda: ops.logit_squeeze(torch.randn(4)), ValueError, r"z must have shape \[B, C\]"),
        ("z", lambda: ops.logit_squeeze(torch.ones(4, 5, dtype=torch.int64)), TypeError, "z must be a floating"),
        ("alpha", lambda: ops.mhuber(z, z, 0.0), ValueError, "alpha must be > 0"),
        ("alpha", lambda: ops.mhuber(z, z, -1.0), ValueError, "alpha must be > 0"),
        ("alpha", lambda: ops.mhuber(z, z, math.nan), ValueError, "alpha must be > 0"),
        ("v", lambda: ops.mhuber(z, torch.randn(4, 4), 1.0), ValueError, "v must have the shape"),
        ("smoothing", lambda: ops.smoothed_cross_entropy(z, y, 1.5), ValueError, "smoothing must be >= 0.0 and <= 1.0"),
        ("classes", lambda: ops.boosted_cross_entropy(torch.randn(4, 1), torch.zeros(4, dtype=torch.int64)),
         ValueError, "at least 2 classes"),
        ("delta", lambda: ops.margin_sq_hinge(z, y, "0.9"), TypeError, "delta must be a number"),
    ]


@pytest.mark.parametrize("argument,call,error,message", _bad_cases(), ids=[c[0] + str(i) for i, c in enumerate(_bad_cases())])
def test_bad_input_is_named(argument, call, error, message):
    with fastadv.use_backend("cpu"), pytest.raises(error, match=message):
        call()


def test_cpp_kernel_checks_are_a_second_line():
    z = torch.randn(4, 5)
    with pytest.raises(RuntimeError, match="must have shape"):
        torch.ops.fastadv.trades_kl(z, torch.randn(4, 6), 0, False, False)
    with pytest.raises(RuntimeError, match="reduction must be 0"):
        torch.ops.fastadv.trades_kl(z, z, 3, False, False)
    with pytest.raises(RuntimeError, match="alpha must be > 0"):
        torch.ops.fastadv.mhuber(z, z, 0.0, False, False)
    with pytest.raises(RuntimeError, match="y must be int64"):
        torch.ops.fastadv.margin_sq_hinge(z, torch.zeros(4, dtype=torch.int32), 0.9, False)


# ----------------------------------------------------------------------------- torch.library
def _raw_args(name, device="cpu", reduction=0):
    tensors, others = make_inputs(name, 5, 7, device=device)
    tensors = tuple(t.clone().requires_grad_() for t in tensors)
    if name == "trades_kl":
        others = (reduction,)
    return tensors + others + (True,) * len(tensors)


# every op, and trades_kl with each of its reductions
OPCHECK_CASES = [(name, 0) for name in OPS] + [("trades_kl", 1), ("trades_kl", 2)]


@pytest.mark.parametrize("name,reduction", OPCHECK_CASES)
def test_opcheck(name, reduction):
    torch.library.opcheck(getattr(torch.ops.fastadv, name).default, _raw_args(name, reduction=reduction))


@pytest.mark.triton
@pytest.mark.parametrize("name,reduction", OPCHECK_CASES)
def test_opcheck_triton(name, reduction):
    triton_ops = ops._triton_ops()
    torch.library.opcheck(getattr(triton_ops, name), _raw_args(name, device_of("triton"), reduction))


def _training_losses(z_nat, z_adv, y):
    """A TRADES + LMA + ALP style combination of every op, as a method would write it."""
    bce, weighted_kl = ops.mart_loss(z_nat, z_adv, y)
    return (ops.smoothed_cross_entropy(z_nat, y, 0.1).mean() + ops.trades_kl(z_nat, z_adv, "mean")
            + bce.mean() + weighted_kl.mean() + ops.margin_sq_hinge(z_adv, y, 0.9).mean()
            + ops.mhuber(z_adv, z_nat, 5.345) + 0.5 * ops.logit_pairing(z_nat, z_adv).mean()
            + ops.mhuber_moving_average(z_adv, z_nat, z_nat.detach(), z_adv.detach(), 0.2, 5.345)[0]
            + 0.01 * ops.logit_squeeze(z_adv).mean() + ops.boosted_cross_entropy(z_adv, y).mean()
            + ops.soft_cross_entropy(z_adv, torch.softmax(z_nat, dim=1)).mean())


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend):
    device = device_of(backend)
    tensors, (y,) = make_inputs("mart_loss", 6, 10, device=device)

    def step(function, z_nat, z_adv):
        """The loss (traced as one graph when compiled) and its gradients (AOT's backward graph)."""
        loss = function(z_nat, z_adv, y)
        return (loss,) + torch.autograd.grad(loss, [z_nat, z_adv])

    leaves = [t.clone().requires_grad_() for t in tensors]
    with fastadv.use_backend(backend):
        expected = step(_training_losses, *leaves)
        torch._dynamo.reset()
        got = step(torch.compile(_training_losses, fullgraph=True, backend="aot_eager"), *leaves)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", [pytest.param("cuda", marks=pytest.mark.cuda),
                                     pytest.param("triton", marks=[pytest.mark.triton, pytest.mark.cuda])])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_half_types_within_twice_torch_error(backend, dtype):
    """Half inputs on the GPU paths: error against float64 at most twice the reference's own
    error computed by PyTorch in that dtype (DESIGN.md, numerics). Marked `cuda`: the CPU kernels
    take float32/float64 only, so without a GPU these tests are skipped by conftest."""
    device = device_of(backend)
    for name in OPS:
        tensors, others = make_inputs(name, 64, 100, dtype=dtype, device=device)
        exact, _, _ = losses_and_grads(getattr(reference, name), tuple(t.double() for t in tensors), others)
        torch_half, _, weights = losses_and_grads(getattr(reference, name), tensors, others)
        with fastadv.use_backend(backend):
            got, _, _ = losses_and_grads(getattr(ops, name), tensors, others, weights)
        for g, t, e in zip(got, torch_half, exact):
            ours = (g.double() - e).abs().max().item()
            theirs = (t.double() - e).abs().max().item()
            assert ours <= 2 * theirs + 1e-6, f"{name}: {ours} > 2 × {theirs}"
