"""UDR's step and soft cost (the pgd family; METHODS.md section 5): every backend (C++ CPU, CUDA
C++, Triton) against the float64 oracles of fastadv/reference/pgd.py on odd shapes for the three costs,
float64, channels_last and strided inputs, the soft ball's two slopes, the defined gradient at
x_int = x and at L∞ ties, in place, opcheck of the C++ and the Triton ops, torch.compile, no value
read by `unchecked`, bad input. Triton runs on CPU tensors under TRITON_INTERPRET=1 (`-m triton`)
and on CUDA tensors where a GPU exists."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fastadv
from fastadv.ops import pgd as ops
from fastadv.reference import pgd as reference
from tests.helpers import BACKENDS, CountReads, device_of, one_thread  # noqa: F401  (one_thread: autouse)

SHAPES = [(1, 1), (7, 3, 5, 5), (4, 1, 8, 8), (3, 1000), (2, 3, 32, 32)]
COSTS = ("pixel", "l2", "linf")


def _radii(delta: torch.Tensor, cost: str) -> torch.Tensor:
    """Per-sample radii around the batch's differences, so that elements (pixel, l2) or samples
    (linf) fall inside and outside the ball: the median |d| of each sample, or its max |d|."""
    magnitude = delta.flatten(1).abs()
    return magnitude.amax(dim=1) if cost == "linf" else magnitude.median(dim=1).values


def batch(shape, seed=0, device="cpu", dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    x_adv = (x + 0.06 * torch.randn(shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    grad = torch.randn(shape, generator=g, dtype=torch.float64)
    return tuple(t.to(device=device, dtype=dtype) for t in (x_adv, grad, x))


def assert_close(got, expected, atol=1e-5):
    torch.testing.assert_close(got.double().cpu(), expected.double().cpu(), atol=atol, rtol=atol, equal_nan=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("cost", COSTS)
@pytest.mark.parametrize("per_sample", [False, True], ids=["eps", "eps-per-sample"])
def test_udr_step_matches_reference(backend, shape, cost, per_sample):
    device = device_of(backend)
    x_adv, grad, x = batch(shape, seed=len(shape), device=device)
    # Radii around the batch's distances, so that samples fall inside and outside the ball.
    distance = _radii((x_adv - x).double().cpu(), cost)
    eps = (distance * torch.linspace(0.5, 1.5, shape[0], dtype=torch.float64)).float().to(device) if per_sample \
        else float(distance.median())
    active = torch.arange(shape[0], device=device) % 3 != 1
    expected = reference.udr_step(x_adv.double().cpu(), grad.double().cpu(), x.double().cpu(),
                                  eps.double().cpu() if per_sample else eps, 0.01, 3.0, 0.02, cost, (0.0, 1.0),
                                  active.cpu())
    with fastadv.use_backend(backend):
        got = ops.udr_step(x_adv, grad, x, eps, 0.01, 3.0, 0.02, cost, active=active)
        in_place = x_adv.clone()
        ops.udr_step_(in_place, grad, x, eps, 0.01, 3.0, 0.02, cost, active=active)
        cost_values = ops.soft_cost(x_adv, x, eps, 0.02, cost)
    assert_close(got, expected)
    assert torch.equal(in_place, got)
    assert_close(cost_values, reference.soft_cost(x_adv.double().cpu(), x.double().cpu(),
                                                  eps.double().cpu() if per_sample else eps, 0.02, cost), atol=1e-4)
    assert bool((got >= 0).all() and (got <= 1).all())
    assert torch.equal(got[~active], x_adv[~active])


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_is_tight(backend):
    device = device_of(backend)
    x_adv, grad, x = batch((6, 3, 7, 7), seed=3, dtype=torch.float64, device=device)
    eps = torch.linspace(0.1, 0.5, 6, dtype=torch.float64, device=device)
    for cost in COSTS:
        with fastadv.use_backend(backend):
            got = ops.udr_step(x_adv, grad, x, 0.3, 0.02, 1.5, 0.04, cost)
            per_sample = ops.udr_step(x_adv, grad, x, eps, 0.02, 1.5, 0.04, cost)
            cost_values = ops.soft_cost(x_adv, x, eps, 0.04, cost)
        assert got.dtype == per_sample.dtype == cost_values.dtype == torch.float64
        torch.testing.assert_close(got, reference.udr_step(x_adv, grad, x, 0.3, 0.02, 1.5, 0.04, cost), atol=1e-12,
                                   rtol=1e-12)
        torch.testing.assert_close(per_sample, reference.udr_step(x_adv, grad, x, eps, 0.02, 1.5, 0.04, cost),
                                   atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(cost_values, reference.soft_cost(x_adv, x, eps, 0.04, cost), atol=1e-12,
                                   rtol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_soft_cost_inside_and_outside_the_ball(backend):
    """λ's statistic: for l2 and linf ĉ∞, c = max |d| inside the ball and ε + (c − ε)/τ outside
    (slope 1/τ); for pixel the mean |d| over the sample."""
    device = device_of(backend)
    x = torch.full((3, 4), 0.5, device=device)
    x_adv = x.clone()
    x_adv[0, 0] += 0.1   # c = 0.1 < ε = 0.2
    x_adv[1, 0] += 0.3   # c = 0.3 > ε
    x_adv[1, 1] -= 0.1
    expected = {"pixel": [0.1 / 4, 0.4 / 4, 0.0], "l2": [0.1, 0.2 + 0.1 / 0.5, 0.0], "linf": [0.1, 0.2 + 0.1 / 0.5, 0.0]}
    with fastadv.use_backend(backend):
        for cost in COSTS:
            values = ops.soft_cost(x_adv, x, 0.2, 0.5, cost)
            torch.testing.assert_close(values.cpu(), torch.tensor(expected[cost]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cost", COSTS)
def test_the_pull_has_the_soft_slope(backend, cost):
    """With a zero attack gradient the step is x' = x_adv − η·λ·∇ĉ, for one element 0.05 inside
    the ball ε = 0.1 and one 0.3 outside (other samples' elements at x): linf pulls its largest
    element by η·λ inside and η·λ/τ outside; l2 each element by η·λ·d inside and η·λ·d/τ
    outside; pixel only the outside one, by η·λ·(d − ε)/τ."""
    device = device_of(backend)
    x = torch.full((2, 5), 0.5, device=device)
    x_adv = x.clone()
    x_adv[0, 2] += 0.05  # inside ε = 0.1
    x_adv[1, 2] += 0.3   # outside
    grad = torch.zeros_like(x)
    with fastadv.use_backend(backend):
        got = ops.udr_step(x_adv, grad, x, 0.1, 0.01, 2.0, 0.5, cost)
    eta_lam, tau = 0.01 * 2.0, 0.5
    inside, outside = {"linf": (eta_lam, eta_lam / tau), "l2": (eta_lam * 0.05, eta_lam * 0.3 / tau),
                       "pixel": (0.0, eta_lam * (0.3 - 0.1) / tau)}[cost]
    expected = x_adv.clone()
    expected[0, 2] -= inside
    expected[1, 2] -= outside
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pixel_with_unit_pull_is_pgds_projected_step(backend, dtype):
    """η·λ/τ = 1: x' = x_int − (d − clamp(d, −ε, ε)) = x + clamp(d, −ε, ε), PGD's projected L∞
    step (METHODS.md section 5: TRADES and MART are UDR's special cases), to rounding."""
    device = device_of(backend)
    x_adv, grad, x = batch((5, 3, 6, 6), seed=4, device=device, dtype=dtype)
    eps, eta, tau = 0.03, 0.01, 0.02
    with fastadv.use_backend(backend):
        udr = ops.udr_step(x_adv, grad, x, eps, eta, tau / eta, tau, "pixel")
        pgd = ops.pgd_step(x_adv, grad, x, eps, eta, "linf")
    tolerance = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(udr, pgd, atol=tolerance, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cost", COSTS)
def test_no_nan_where_x_int_equals_x(backend, cost):
    """At x_int = x the norm has no derivative: the subgradient 0 is taken, so x' = x_int."""
    device = device_of(backend)
    x = torch.rand(3, 6, generator=torch.Generator().manual_seed(1)).to(device)
    with fastadv.use_backend(backend):
        got = ops.udr_step(x.clone(), torch.zeros_like(x), x, 0.1, 0.01, 5.0, 0.02, cost)
    assert torch.equal(got, x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_linf_ties_share_the_subgradient(backend):
    """Two coordinates at the maximum |d|: each moves by η·λ·slope/2 (the minimum-norm
    subgradient of the L∞ norm), the others not at all."""
    device = device_of(backend)
    x = torch.full((1, 4), 0.5, device=device)
    x_adv = x + torch.tensor([[0.2, -0.2, 0.1, 0.0]], device=device)
    with fastadv.use_backend(backend):
        got = ops.udr_step(x_adv, torch.zeros_like(x), x, 0.1, 0.01, 4.0, 0.5, "linf")
    step = 0.01 * 4.0 / 0.5 / 2  # outside the ball (0.2 > 0.1): slope 1/τ, shared by two
    expected = x_adv + torch.tensor([[-step, step, 0.0, 0.0]], device=device)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    assert_close(got, reference.udr_step(x_adv.double().cpu(), torch.zeros(1, 4, dtype=torch.float64),
                                         x.double().cpu(), 0.1, 0.01, 4.0, 0.5, "linf"))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cost", COSTS)
def test_channels_last_and_no_row_layout(backend, cost):
    device = device_of(backend)
    x_adv, grad, x = batch((3, 3, 6, 6), seed=4, device=device)
    expected = reference.udr_step(x_adv.double().cpu(), grad.double().cpu(), x.double().cpu(), 0.2, 0.02, 1.0, 0.04,
                                  cost)
    expected_cost = reference.soft_cost(x_adv.double().cpu(), x.double().cpu(), 0.2, 0.04, cost)
    channels_last = [t.to(memory_format=torch.channels_last) for t in (x_adv, grad, x)]
    strided = [t.transpose(2, 3) for t in (x_adv, grad, x)]
    with fastadv.use_backend(backend):
        got_channels_last = ops.udr_step(*channels_last, 0.2, 0.02, 1.0, 0.04, cost)
        got_strided = ops.udr_step(*strided, 0.2, 0.02, 1.0, 0.04, cost)
        in_place = strided[0].clone()
        ops.udr_step_(in_place, *strided[1:], 0.2, 0.02, 1.0, 0.04, cost)
        cost_channels_last = ops.soft_cost(channels_last[0], channels_last[2], 0.2, 0.04, cost)
        cost_strided = ops.soft_cost(strided[0], strided[2], 0.2, 0.04, cost)
    assert got_channels_last.is_contiguous(memory_format=torch.channels_last)
    assert_close(got_channels_last, expected)
    assert_close(got_strided, expected.transpose(2, 3))
    assert torch.equal(in_place, got_strided)
    for got in (cost_channels_last, cost_strided):
        assert_close(got, expected_cost, atol=1e-4)


def _opcheck_all(udr_step, udr_step_, soft_cost, device):
    x_adv, grad, x = batch((4, 3, 5), seed=5, device=device)
    eps = torch.full((4,), 0.1, device=device)
    active = torch.tensor([True, False, True, True], device=device)
    for cost in COSTS:
        torch.library.opcheck(udr_step, (x_adv, grad, x, 0.1, None, 0.01, 1.0, 0.02, cost, 0.0, 1.0, None))
        torch.library.opcheck(udr_step, (x_adv, grad, x, 0.0, eps, 0.01, 1.0, 0.02, cost, 0.0, 1.0, active))
        torch.library.opcheck(udr_step_, (x_adv.clone(), grad, x, 0.0, eps, 0.01, 1.0, 0.02, cost, 0.0, 1.0, active))
        torch.library.opcheck(soft_cost, (x_adv, x, 0.1, None, 0.02, cost))
        torch.library.opcheck(soft_cost, (x_adv, x, 0.0, eps, 0.02, cost))


def test_opcheck():
    _opcheck_all(torch.ops.fastadv.udr_step.default, torch.ops.fastadv.udr_step_.default,
                 torch.ops.fastadv.soft_cost.default, "cpu")


@pytest.mark.triton
def test_opcheck_triton():
    """fastadv::udr_step_triton, udr_step_triton_ and soft_cost_triton (their fakes included)."""
    _opcheck_all(ops._TRITON.udr_step, ops._TRITON.udr_step_, ops._TRITON.soft_cost, device_of("triton"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend):
    device = device_of(backend)
    x_adv, grad, x = batch((4, 2, 3, 3), seed=6, device=device)

    def step(L, x_adv):
        new = L.udr_step(x_adv, grad, x, 0.1, 0.01, 2.0, 0.02, "linf")
        return new, L.soft_cost(new, x, 0.1, 0.02, "linf")

    expected_step = reference.udr_step(x_adv.double().cpu(), grad.double().cpu(), x.double().cpu(), 0.1, 0.01, 2.0,
                                       0.02, "linf")
    expected = (expected_step, reference.soft_cost(expected_step, x.double().cpu(), 0.1, 0.02, "linf"))
    torch._dynamo.reset()
    with fastadv.use_backend(backend):
        compiled = torch.compile(lambda t: step(ops, t), fullgraph=True, backend="aot_eager")(x_adv)
    for got, want in zip(compiled, expected):
        assert_close(got, want, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_unchecked_reads_no_value(backend):
    device = device_of(backend)
    x_adv, grad, x = batch((5, 7), seed=7, device=device)
    eps = torch.full((5,), 0.1, device=device)
    with fastadv.use_backend(backend), CountReads() as reads:
        ops.unchecked.udr_step_(x_adv, grad, x, eps, 0.01, 1.0, 0.02, "l2", (0.0, 1.0))
        ops.unchecked.soft_cost(x_adv, x, eps, 0.02, "l2")
    assert reads.total == 0


class CalledOps(TorchDispatchMode):
    """The names of the fastadv ops dispatched inside the block."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "fastadv":
            self.names.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_backend_runs_its_own_kernel(backend):
    """The public and the unchecked ops run the chosen backend's op (the Triton custom ops for
    `triton`, which on CPU tensors could otherwise hide behind the C++ CPU kernel), with the same
    values."""
    device = device_of(backend)
    x_adv, grad, x = batch((5, 7), seed=8, device=device)
    eps = torch.full((5,), 0.1, device=device)
    active = torch.tensor([True, False, True, True, False], device=device)
    with fastadv.use_backend(backend), CalledOps() as called:
        public = ops.udr_step(x_adv, grad, x, eps, 0.01, 1.0, 0.02, "linf", active=active)
        public_ = ops.udr_step_(x_adv.clone(), grad, x, eps, 0.01, 1.0, 0.02, "linf", active=active)
        unchecked = ops.unchecked.udr_step_(x_adv.clone(), grad, x, eps, 0.01, 1.0, 0.02, "linf", (0.0, 1.0), active)
        public_cost = ops.soft_cost(x_adv, x, eps, 0.02, "linf")
        unchecked_cost = ops.unchecked.soft_cost(x_adv, x, eps, 0.02, "linf")
    suffix = "_triton" if backend == "triton" else ""
    assert called.names == [f"udr_step{suffix}", f"udr_step{suffix}_", f"udr_step{suffix}_", f"soft_cost{suffix}",
                            f"soft_cost{suffix}"]
    assert torch.equal(public_, public) and torch.equal(unchecked, public)
    assert torch.equal(unchecked_cost, public_cost)


BAD = [
    ("tau", dict(tau=0.0), ValueError), ("tau", dict(tau=-1.0), ValueError),
    ("eta", dict(eta=0.0), ValueError), ("eta", dict(eta=-0.1), ValueError),
    ("lam", dict(lam=-1.0), ValueError), ("cost", dict(cost="l1"), ValueError),
    ("eps", dict(eps=-0.1), ValueError),
]


@pytest.mark.parametrize("argument,change,error", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_input_is_named(argument, change, error):
    x_adv, grad, x = batch((2, 3))
    arguments = dict(eps=0.1, eta=0.01, lam=1.0, tau=0.02, cost="l2")
    arguments.update(change)
    before = x_adv.clone()
    with pytest.raises(error, match=argument):
        ops.udr_step_(x_adv, grad, x, **arguments)
    assert torch.equal(x_adv, before)
    with pytest.raises(ValueError, match="grad must have the shape"):
        ops.udr_step(x_adv, grad[:1], x, 0.1, 0.01, 1.0, 0.02)
    with pytest.raises(RuntimeError, match="tau"):
        torch.ops.fastadv.udr_step(x_adv, grad, x, 0.1, None, 0.01, 1.0, 0.0, "l2", 0.0, 1.0, None)
    with pytest.raises(RuntimeError, match="cost"):
        torch.ops.fastadv.soft_cost(x_adv, x, 0.1, None, 0.02, "l3")
