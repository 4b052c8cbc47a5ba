"""The logits family: every backend against the float64 reference (values and gradients), odd
shapes, gradcheck, opcheck, torch.compile, bad input."""
import math

import pytest
import torch

import fastadv
from fastadv import backend as backends
from fastadv.ops import _registry
from fastadv.ops import logits as ops
from fastadv.reference import logits as reference
from tests.helpers import BACKENDS, device_of


class Maker:
    """Random inputs of one [batch, classes] shape: logits with a spread like a trained network's
    (scale 3) and a row of large logits (±60) for stability, pairs, labels."""

    def __init__(self, batch, classes, seed):
        self.batch, self.classes = batch, classes
        self.g = torch.Generator().manual_seed(seed)

    def logits(self):
        z = torch.randn(self.batch, self.classes, generator=self.g, dtype=torch.float64) * 3
        z[0, : self.classes // 2] += 60.0
        return z

    def pair(self, spread=1.0):
        z = self.logits()
        return z, z + torch.randn(self.batch, self.classes, generator=self.g, dtype=torch.float64) * spread

    def labels(self):
        return torch.randint(0, self.classes, (self.batch,), generator=self.g)


#: The family's test table, one entry per op: (tensor inputs that get gradients, other arguments)
#: of the public op. mhuber's spread of 8 puts differences on both sides of its |d|/α = π/2
#: switch (α = 5.345: the switch is at 8.4).
CASES = {
    "soft_cross_entropy": lambda m: ((m.logits(), torch.softmax(m.logits() / 2, dim=1)), ()),
    "smoothed_cross_entropy": lambda m: ((m.logits(),), (m.labels(), 0.1)),
    "boosted_cross_entropy": lambda m: ((m.logits(),), (m.labels(),)),
    "trades_kl": lambda m: (m.pair(), ()),
    "mart_loss": lambda m: (m.pair(), (m.labels(),)),
    "margin_sq_hinge": lambda m: ((m.logits(),), (m.labels(), 0.9)),
    "mhuber": lambda m: (m.pair(spread=8), (5.345,)),
    "mhuber_moving_average": lambda m: (m.pair(spread=8), (m.logits(), m.logits(), 0.2, 5.345)),
    "logit_pairing": lambda m: (m.pair(), ()),
    "logit_squeeze": lambda m: ((m.logits(),), ()),
}
OPS = list(CASES)
TWO_INPUT_OPS = [name for name in OPS if len(_registry.layout(name).inputs) == 2]

# The C++ kernels on every shape; the Triton interpreter (numpy, a tile at a time) on shapes that
# still reach every path of its launcher at a fraction of the elements: one row, a partial last
# program, many programs, classes not a power of two, the widest tile (1024 columns).
SHAPES = [(batch, classes) for batch in (1, 7, 4097) for classes in (2, 10, 100, 1000)]
TRITON_SHAPES = [(1, 2), (7, 10), (300, 100), (5, 1000), (2100, 3)]


def backend_shapes(cpp_shapes=SHAPES, triton_shapes=TRITON_SHAPES):
    """pytest params (backend, batch, classes): each backend with its shapes."""
    for param in BACKENDS:
        (name,) = param.values
        for batch, classes in triton_shapes if name == "triton" else cpp_shapes:
            yield pytest.param(name, batch, classes, marks=param.marks, id=f"{name}-{batch}x{classes}")


def make_inputs(name, batch, classes, dtype=torch.float32, device="cpu", seed=0):
    """(tensor inputs that get gradients, other arguments) of op ``name`` (CASES)."""
    tensors, others = CASES[name](Maker(batch, classes, seed))
    tensors = tuple(t.to(dtype=dtype, device=device) for t in tensors)
    others = tuple((o.to(device, dtype) if o.is_floating_point() else o.to(device)) if isinstance(o, torch.Tensor)
                   else o for o in others)
    return tensors, others


def exact_copies(tensors, others):
    """float64 CPU copies of an op's arguments, for the reference."""
    return (tuple(t.double().cpu() for t in tensors),
            tuple((o.double() if o.is_floating_point() else o).cpu() if isinstance(o, torch.Tensor) else o
                  for o in others))


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


@pytest.mark.parametrize("backend,batch,classes", list(backend_shapes()))
@pytest.mark.parametrize("name", OPS)
def test_matches_reference(backend, name, batch, classes):
    device = device_of(backend)
    tensors, others = make_inputs(name, batch, classes, device=device)
    exact, exact_grads, weights = losses_and_grads(getattr(reference, name), *exact_copies(tensors, others))
    with fastadv.use_backend(backend):
        got, got_grads, _ = losses_and_grads(getattr(ops, name), tensors, others, weights)
    for g, e in zip(got, exact):
        assert g.dtype == tensors[0].dtype and g.shape == e.shape
        assert_close_to_exact(g, e)
    for g, e in zip(got_grads, exact_grads):
        assert_close_to_exact(g, e)


@pytest.mark.parametrize("backend", [p for p in BACKENDS if p.values[0] != "cuda"])
@pytest.mark.parametrize("name", OPS)
def test_float64_matches_reference_tightly(backend, name):
    """float64 in, float64 accumulation (Triton: the ACC = float64 branches)."""
    tensors, others = make_inputs(name, 33, 17, dtype=torch.float64, device=device_of(backend))
    exact, exact_grads, weights = losses_and_grads(getattr(reference, name), *exact_copies(tensors, others))
    with fastadv.use_backend(backend):
        got, got_grads, _ = losses_and_grads(getattr(ops, name), tensors, others, weights)
    for g, e in zip(got + got_grads, exact + exact_grads):
        assert g.dtype == torch.float64
        torch.testing.assert_close(g.cpu(), e, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("name", OPS)
def test_gradcheck_float64(backend, name):
    tensors, others = make_inputs(name, 3, 5, dtype=torch.float64, seed=2)
    tensors = tuple(t.clone().requires_grad_() for t in tensors)
    with fastadv.use_backend(backend):
        assert torch.autograd.gradcheck(lambda *t: getattr(ops, name)(*t, *others), tensors)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", TWO_INPUT_OPS)
def test_gradient_only_where_asked(backend, name):
    """With the second input detached only the first one's gradient is computed; it is the
    reference's."""
    device = device_of(backend)
    tensors, others = make_inputs(name, 7, 10, device=device)
    exact_tensors, exact_others = exact_copies(tensors, others)
    weights = [torch.randn(o.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
               for o in as_tuple(getattr(reference, name)(*exact_tensors, *exact_others))]

    def first_gradient(fn, first, second, rest):
        first = first.detach().clone().requires_grad_()
        outputs = as_tuple(fn(first, second, *rest))
        total = sum((o * w.to(o.dtype).to(o.device)).sum() for o, w in zip(outputs, weights))
        return torch.autograd.grad(total, [first])[0]

    exact = first_gradient(getattr(reference, name), *exact_tensors, exact_others)
    with fastadv.use_backend(backend):
        got = first_gradient(getattr(ops, name), *tensors, others)
    assert_close_to_exact(got, exact)


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


def _row_split_cases():
    for param in BACKENDS:
        (name,) = param.values
        # the interpreter gets [64, 100] (25 rows of 256) rather than 400 rows of 1024
        for shape in [(64, 100) if name == "triton" else (4096, 100), (64, 3, 5), (6, 10)]:
            yield pytest.param(name, shape, marks=param.marks, id=f"{name}-{'x'.join(map(str, shape))}")


@pytest.mark.parametrize("backend,shape", list(_row_split_cases()))
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
    tensors, _ = make_inputs("trades_kl", 3, 4)
    _, exact_grads, weights = losses_and_grads(reference.trades_kl, *exact_copies(tensors, ()))
    z_nat, z_adv = (t.clone().requires_grad_() for t in tensors)
    with fastadv.use_backend("cpu"):
        loss = (ops.trades_kl(z_nat, z_adv) * weights[0].float()).sum()
    for _ in range(2):
        for got, exact in zip(torch.autograd.grad(loss, [z_nat, z_adv], retain_graph=True), exact_grads):
            assert_close_to_exact(got, exact)


# ----------------------------------------------------------------------------- trades_kl reductions
@pytest.mark.parametrize("backend,batch,classes",
                         list(backend_shapes([(1, 2), (7, 10), (4097, 100)], [(1, 2), (7, 10), (300, 100)])))
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


def test_auto_gives_rows_too_wide_for_triton_to_the_cuda_kernels(monkeypatch):
    """On CUDA, ``auto`` runs Triton up to TRITON_MAX_COLUMNS classes and the CUDA C++ kernel
    beyond (the reference where neither exists), whatever this machine has."""
    monkeypatch.delenv("FASTADV_BACKEND", raising=False)
    monkeypatch.setitem(backends._capabilities, "triton", True)
    monkeypatch.setitem(backends._capabilities, "cuda", True)
    # the kernel handed out names the backend chosen (no op is built for pretended capabilities)
    monkeypatch.setattr(ops._FAMILY, "_callable", lambda op, chosen, compiling: chosen)
    cuda, widest = torch.device("cuda"), ops.TRITON_MAX_COLUMNS
    ops._FAMILY.clear()  # choices made on this machine's real capabilities
    try:
        assert ops._implementation("trades_kl", cuda, torch.float16, widest) == "triton"
        assert ops._implementation("trades_kl", cuda, torch.float16, widest + 1) == "cuda"
        monkeypatch.setitem(backends._capabilities, "cuda", False)
        ops._FAMILY.clear()
        assert ops._implementation("trades_kl", cuda, torch.float16, widest + 1) is None
    finally:
        ops._FAMILY.clear()  # nothing chosen on the pretended capabilities outlives the test


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
        ("z_adv", lambda: ops.logit_pairing(z, z.double()), TypeError, "z_adv must have z_nat's dtype"),
        ("target", lambda: ops.soft_cross_entropy(z, torch.randn(5, 5)), ValueError, "target must have the shape of z"),
        ("z", lambda: ops.logit_squeeze(torch.randn(4)), ValueError, "z must have 2 dimensions"),
        ("z", lambda: ops.logit_squeeze(torch.randn(4, 0)), ValueError, "z must have at least one class"),
        ("z", lambda: ops.logit_squeeze(torch.ones(4, 5, dtype=torch.int64)), TypeError, "z must be a floating"),
        ("alpha", lambda: ops.mhuber(z, z, 0.0), ValueError, "alpha must be > 0"),
        ("alpha", lambda: ops.mhuber(z, z, -1.0), ValueError, "alpha must be > 0"),
        ("alpha", lambda: ops.mhuber(z, z, math.nan), ValueError, "alpha must be > 0"),
        ("v", lambda: ops.mhuber(z, torch.randn(4, 4), 1.0), ValueError, "v must have the shape"),
        ("smoothing", lambda: ops.smoothed_cross_entropy(z, y, 1.5), ValueError, r"smoothing must be in \[0, 1\]"),
        ("tau", lambda: ops.mhuber_moving_average(z, z, z, z, -0.5, 1.0), ValueError, r"tau must be in \[0, 1\]"),
        ("u_average", lambda: ops.mhuber_moving_average(z, z, z[:2], z, 0.5, 1.0), ValueError,
         "u_average must have the shape of u"),
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
    with pytest.raises(RuntimeError, match="z_adv must have shape"):
        torch.ops.fastadv.trades_kl(z, torch.randn(4, 6), 0, False, False)
    with pytest.raises(RuntimeError, match="reduction must be 0"):
        torch.ops.fastadv.trades_kl(z, z, 4, False, False)
    with pytest.raises(RuntimeError, match="alpha must be > 0"):
        torch.ops.fastadv.mhuber(z, z, 0.0, 3, False, False)
    with pytest.raises(RuntimeError, match=r"tau must lie in \[0, 1\]"):
        torch.ops.fastadv.mhuber_moving_average(z, z, z, z, 1.0, 2.0, 3, False, False)
    with pytest.raises(RuntimeError, match="y must be int64"):
        torch.ops.fastadv.margin_sq_hinge(z, torch.zeros(4, dtype=torch.int32), 0.9, False)
    with pytest.raises(RuntimeError, match="at least 2 classes"):
        torch.ops.fastadv.boosted_cross_entropy(torch.randn(4, 1), torch.zeros(4, dtype=torch.int64), False)


# ----------------------------------------------------------------------------- torch.library
def _op_call(monkeypatch, backend, name, **options):
    """(the op's OpOverload, its arguments) as the public op ``name`` calls it on ``backend``,
    every gradient asked for: the arguments it passes, with the grad_<input> flags the fast call
    fills in (_registry.fast_op) set as autograd wants them."""
    calls = []
    choose = ops._implementation

    def recording(*args):
        op = choose(*args)
        return lambda *arguments: calls.append(arguments) or op(*arguments)

    tensors, others = make_inputs(name, 5, 7, device=device_of(backend))
    monkeypatch.setattr(ops, "_implementation", recording)
    with fastadv.use_backend(backend):
        getattr(ops, name)(*(t.clone().requires_grad_() for t in tensors), *others, **options)
    (arguments,) = calls
    spec = _registry.layout(name)
    if len(arguments) < spec.arguments:
        arguments = arguments + tuple(arguments[i].requires_grad for i in spec.inputs)
    qualified = _registry.triton_name(name) if backend == "triton" else name
    return getattr(torch.ops.fastadv, qualified).default, arguments


# every op, and the reductions of trades_kl
OPCHECK_CASES = [(name, {}) for name in OPS] + [("trades_kl", {"reduction": "mean"}), ("trades_kl", {"reduction": "sum"})]


@pytest.mark.parametrize("backend", [p for p in BACKENDS if p.values[0] != "cuda"])
@pytest.mark.parametrize("name,options", OPCHECK_CASES, ids=[f"{n}-{o.get('reduction', '')}" for n, o in OPCHECK_CASES])
def test_opcheck(monkeypatch, backend, name, options):
    op, arguments = _op_call(monkeypatch, backend, name, **options)
    assert all(flag is True for flag in arguments[-len(_registry.layout(name).flags):])
    torch.library.opcheck(op, arguments)


def _training_losses(L, z_nat, z_adv, y):
    """A TRADES + LMA + ALP style combination of every op on the ops of ``L`` (the fused ops or
    the reference), as a method would write it."""
    bce, weighted_kl = L.mart_loss(z_nat, z_adv, y)
    return (L.smoothed_cross_entropy(z_nat, y, 0.1).mean() + L.trades_kl(z_nat, z_adv, "mean")
            + bce.mean() + weighted_kl.mean() + L.margin_sq_hinge(z_adv, y, 0.9).mean()
            + L.mhuber(z_adv, z_nat, 5.345) + 0.5 * L.logit_pairing(z_nat, z_adv).mean()
            + L.mhuber_moving_average(z_adv, z_nat, z_nat.detach(), z_adv.detach(), 0.2, 5.345)[0]
            + 0.01 * L.logit_squeeze(z_adv).mean() + L.boosted_cross_entropy(z_adv, y).mean()
            + L.soft_cross_entropy(z_adv, torch.softmax(z_nat, dim=1)).mean())


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend):
    """Every op traced in one graph (fullgraph) with its backward: the loss and the gradients
    are the reference's."""
    device = device_of(backend)
    tensors, (y,) = make_inputs("mart_loss", 6, 10, device=device)

    def step(function, z_nat, z_adv, y):
        loss = function(z_nat, z_adv, y)
        return (loss,) + torch.autograd.grad(loss, [z_nat, z_adv])

    exact_tensors, (exact_y,) = exact_copies(tensors, (y,))
    expected = step(lambda *a: _training_losses(reference, *a), *(t.requires_grad_() for t in exact_tensors), exact_y)
    torch._dynamo.reset()
    with fastadv.use_backend(backend):
        compiled = torch.compile(lambda *a: _training_losses(ops, *a), fullgraph=True, backend="aot_eager")
        got = step(compiled, *(t.clone().requires_grad_() for t in tensors), y)
    for g, e in zip(got, expected):
        assert_close_to_exact(g.detach(), e.detach())


@pytest.mark.parametrize("backend", [pytest.param("cuda", marks=pytest.mark.cuda),
                                     pytest.param("triton", marks=pytest.mark.triton)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_half_types_within_twice_torch_error(backend, dtype):
    """Half inputs on the GPU paths (DESIGN.md, numerics): the error of every loss and every
    gradient against the float32 reference of the same (rounded) inputs is at most twice the
    error of the reference run by PyTorch in the half dtype. The weights of the losses are
    rounded to the half dtype first, so both sides see the same incoming gradients. The CUDA
    C++ case is marked `cuda` (the CPU kernels take float32/float64 only); the Triton one also
    runs in the interpreter on CPU tensors. It holds the saved gradients in float32, rounded
    once: saved in the half type and then scaled, they would be rounded twice."""
    device = device_of(backend)
    for name in OPS:
        tensors, others = make_inputs(name, 64, 100, dtype=dtype, device=device)
        float_others = tuple(o.float() if isinstance(o, torch.Tensor) and o.is_floating_point() else o for o in others)
        g = torch.Generator().manual_seed(5)
        weights = [torch.randn(o.shape, generator=g).to(dtype).double()
                   for o in as_tuple(getattr(reference, name)(*tensors, *others))]
        exact, exact_grads, _ = losses_and_grads(getattr(reference, name), tuple(t.float() for t in tensors),
                                                 float_others, weights)
        torch_half, torch_grads, _ = losses_and_grads(getattr(reference, name), tensors, others, weights)
        with fastadv.use_backend(backend):
            got, got_grads, _ = losses_and_grads(getattr(ops, name), tensors, others, weights)
        for what, g, t, e in zip(["loss"] * len(got) + ["gradient"] * len(got_grads), got + got_grads,
                                 torch_half + torch_grads, exact + exact_grads):
            assert g.dtype == dtype
            ours = (g.float() - e).abs().max().item()
            theirs = (t.float() - e).abs().max().item()
            assert ours <= 2 * theirs + 1e-6, f"{name} {what}: {ours} > 2 × {theirs}"


def test_a_mean_reached_with_gradient_one_returns_the_saved_gradients():
    """The C++ backward's shortcut: the raw op's saved gradients are the gradients themselves
    when the incoming gradient is a CPU scalar of exactly 1, and are scaled otherwise."""
    z_nat, z_adv = (t.clone().requires_grad_() for t in make_inputs("trades_kl", 4, 5)[0])
    loss, saved_nat, saved_adv = torch.ops.fastadv.trades_kl.default(z_nat, z_adv, 1, True, True)
    one = torch.autograd.grad(loss, [z_nat, z_adv], retain_graph=True)
    assert [g.data_ptr() for g in one] == [saved_nat.data_ptr(), saved_adv.data_ptr()]
    two = torch.autograd.grad(loss, [z_nat, z_adv], grad_outputs=[torch.tensor(2.0)])
    assert two[0].data_ptr() != saved_nat.data_ptr()
    for got, saved in zip(two, (saved_nat, saved_adv)):
        torch.testing.assert_close(got, 2 * saved)
