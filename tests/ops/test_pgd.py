"""The pgd family: every backend against the reference oracle, invariants, bad input, torch.library."""
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastadv
from fastadv.ops import pgd_init, pgd_step, pgd_step_
from fastadv.reference import pgd as reference
from tests.helpers import BACKENDS, device_of

SHAPES = [(1, 1, 8, 8), (3, 3, 32, 32), (127, 3, 7, 5), (5, 10)]
# The Triton interpreter runs a program at a time in numpy: fewer rows of the odd shape still give
# the L-inf kernel a partial last block and the L2 kernel one program per row.
TRITON_SHAPES = [(1, 1, 8, 8), (3, 3, 32, 32), (13, 3, 7, 5), (5, 10)]


def backend_shapes(cpp_shapes=SHAPES, triton_shapes=TRITON_SHAPES):
    """pytest params (backend, shape): each backend with its shapes."""
    for param in BACKENDS:
        (name,) = param.values
        for shape in triton_shapes if name == "triton" else cpp_shapes:
            yield pytest.param(name, shape, marks=param.marks, id=f"{name}-{'x'.join(map(str, shape))}")
TOLERANCE = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float64: dict(atol=1e-12, rtol=1e-12)}


def make_batch(shape, dtype=torch.float32, device="cpu", seed=0, eps=8 / 255):
    """A clean batch, a point inside its eps-ball (some coordinates on the boundary) and a gradient."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    x_adv = (x + eps * (2 * torch.rand(shape, generator=g, dtype=torch.float64) - 1)).clamp(0, 1)
    grad = torch.randn(shape, generator=g, dtype=torch.float64)
    grad[grad.abs() < 0.05] = 0.0  # exact zeros: sign(0) = 0
    return tuple(t.to(dtype=dtype, device=device) for t in (x_adv, grad, x))


def radii(norm, batch, per_sample, dtype, device, seed=1):
    eps, alpha = (8 / 255, 2 / 255) if norm == "linf" else (0.5, 0.2)
    if not per_sample:
        return eps, alpha
    g = torch.Generator().manual_seed(seed)
    scale = torch.rand(batch, generator=g, dtype=torch.float64) * 2
    scale[0] = 0.0  # a sample that may not move at all
    return (eps * scale).to(dtype=dtype, device=device), (alpha * (2 - scale)).to(dtype=dtype, device=device)


def active_mask(batch, device):
    return torch.arange(batch, device=device) % 3 != 1


def distance(new, x, norm):
    d = (new.double() - x.double()).flatten(1)
    return d.abs().amax(dim=1) if norm == "linf" else d.norm(dim=1)


def assert_invariants(new, x, eps, norm, clip=(0.0, 1.0), tol=1e-5):
    eps = torch.as_tensor(eps, dtype=torch.float64, device=new.device).expand(new.shape[0])
    assert bool((distance(new, x, norm) <= eps + tol).all()), "left the eps-ball"
    assert bool((new >= clip[0]).all()) and bool((new <= clip[1]).all()), "left the clip box"


def run_both(backend, x_adv, grad, x, eps, alpha, norm, clip=(0.0, 1.0), active=None):
    """The out-of-place and in-place op on one backend; x_adv itself must not change in the first."""
    before = x_adv.clone()
    with fastadv.use_backend(backend):
        out = pgd_step(x_adv, grad, x, eps, alpha, norm=norm, clip=clip, active=active)
        assert torch.equal(x_adv, before), "pgd_step modified its input"
        inplace = x_adv.clone()
        returned = pgd_step_(inplace, grad, x, eps, alpha, norm=norm, clip=clip, active=active)
    assert returned is inplace
    return out, inplace


@pytest.mark.parametrize("backend,shape", list(backend_shapes()))
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("per_sample", [False, True], ids=["scalar", "per_sample"])
@pytest.mark.parametrize("with_active", [False, True], ids=["all", "masked"])
def test_matches_reference(backend, shape, norm, per_sample, with_active):
    device = device_of(backend)
    x_adv, grad, x = make_batch(shape, device=device)
    eps, alpha = radii(norm, shape[0], per_sample, torch.float32, device)
    active = active_mask(shape[0], device) if with_active else None
    expected = reference.pgd_step(x_adv, grad, x, eps, alpha, norm, (0.0, 1.0), active)
    out, inplace = run_both(backend, x_adv, grad, x, eps, alpha, norm, active=active)
    torch.testing.assert_close(out, expected, **TOLERANCE[torch.float32])
    torch.testing.assert_close(inplace, expected, **TOLERANCE[torch.float32])
    if active is None:
        assert_invariants(out, x, eps, norm)
    else:
        eps_active = eps[active] if isinstance(eps, torch.Tensor) else eps
        assert_invariants(out[active], x[active], eps_active, norm)
        assert torch.equal(out[~active], x_adv[~active]), "an inactive sample moved"


@pytest.mark.parametrize("backend,shape", list(backend_shapes([(127, 3, 32, 32)], [(20, 3, 32, 32)])))
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_large_batch(backend, shape, norm):
    """Many CIFAR rows: the L2 rows span several blocks (Triton: two chunks of 2048)."""
    device = device_of(backend)
    x_adv, grad, x = make_batch(shape, device=device, seed=3)
    eps, alpha = radii(norm, shape[0], True, torch.float32, device)
    out, inplace = run_both(backend, x_adv, grad, x, eps, alpha, norm)
    expected = reference.pgd_step(x_adv, grad, x, eps, alpha, norm)
    torch.testing.assert_close(out, expected, **TOLERANCE[torch.float32])
    torch.testing.assert_close(inplace, expected, **TOLERANCE[torch.float32])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("mixed", [False, True], ids=["all_channels_last", "mixed_layouts"])
def test_channels_last(backend, norm, mixed):
    device = device_of(backend)
    x_adv, grad, x = make_batch((3, 3, 32, 32), device=device, seed=4)
    eps, alpha = radii(norm, 3, False, torch.float32, device)
    expected = reference.pgd_step(x_adv, grad, x, eps, alpha, norm)
    x_adv_cl = x_adv.contiguous(memory_format=torch.channels_last)
    grad_cl = grad if mixed else grad.contiguous(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    out, inplace = run_both(backend, x_adv_cl, grad_cl, x_cl, eps, alpha, norm)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert inplace.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, expected, **TOLERANCE[torch.float32])
    torch.testing.assert_close(inplace, expected, **TOLERANCE[torch.float32])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_strided_input_in_place(backend, norm):
    """x_adv without a row layout (a transposed view) is updated through a contiguous copy."""
    device = device_of(backend)
    x_adv, grad, x = make_batch((4, 6, 5), device=device, seed=5)
    eps, alpha = radii(norm, 4, False, torch.float32, device)
    expected = reference.pgd_step(x_adv, grad, x, eps, alpha, norm)
    storage = x_adv.transpose(1, 2).contiguous()
    view = storage.transpose(1, 2)  # same values as x_adv, strides (30, 1, 6)
    with fastadv.use_backend(backend):
        pgd_step_(view, grad, x, eps, alpha, norm=norm)
    torch.testing.assert_close(view, expected, **TOLERANCE[torch.float32])


def test_float64_cpu():
    for norm in ("linf", "l2"):
        x_adv, grad, x = make_batch((7, 3, 9, 9), dtype=torch.float64, seed=6)
        eps, alpha = radii(norm, 7, True, torch.float64, "cpu")
        out, inplace = run_both("cpu", x_adv, grad, x, eps, alpha, norm)
        expected = reference.pgd_step(x_adv, grad, x, eps, alpha, norm)
        torch.testing.assert_close(out, expected, **TOLERANCE[torch.float64])
        torch.testing.assert_close(inplace, expected, **TOLERANCE[torch.float64])


@pytest.mark.parametrize("backend", [p for p in BACKENDS if p.values[0] != "cpu"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_gpu_float64(backend, norm):
    device = device_of(backend)
    x_adv, grad, x = make_batch((5, 3, 8, 8), dtype=torch.float64, device=device, seed=7)
    eps, alpha = radii(norm, 5, False, torch.float64, device)
    expected = reference.pgd_step(x_adv, grad, x, eps, alpha, norm)
    out, inplace = run_both(backend, x_adv, grad, x, eps, alpha, norm)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, expected, **TOLERANCE[torch.float64])
    torch.testing.assert_close(inplace, expected, **TOLERANCE[torch.float64])


@pytest.mark.parametrize("backend", [pytest.param("cuda", marks=pytest.mark.cuda),
                                     pytest.param("triton", marks=[pytest.mark.triton, pytest.mark.cuda])])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_gpu_half_types_within_twice_torch_error(backend, dtype, norm):
    """Half inputs (DESIGN.md, numerics): the error of the step against the float32 reference of
    the same (rounded) inputs is at most twice the error of the reference run by PyTorch in the
    half dtype. Marked `cuda`: skipped by conftest without a GPU."""
    device = device_of(backend)
    x_adv, grad, x = make_batch((5, 3, 8, 8), dtype=dtype, device=device, seed=7)
    eps, alpha = radii(norm, 5, True, torch.float32, device)
    exact = reference.pgd_step(x_adv.float(), grad.float(), x.float(), eps, alpha, norm)
    theirs = (reference.pgd_step(x_adv, grad, x, eps, alpha, norm).float() - exact).abs().max().item()
    out, inplace = run_both(backend, x_adv, grad, x, eps, alpha, norm)
    for result in (out, inplace):
        assert result.dtype == dtype
        ours = (result.float() - exact).abs().max().item()
        assert ours <= 2 * theirs + 1e-6, f"{ours} > 2 × {theirs}"
        # the box holds exactly; the ball only to the rounding of each element
        assert bool((result >= 0).all()) and bool((result <= 1).all()), "left the clip box"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_zero_gradient_makes_no_step(backend, norm):
    device = device_of(backend)
    x_adv, _, x = make_batch((4, 3, 8, 8), device=device, seed=8)
    grad = torch.zeros_like(x_adv)
    grad[1] = torch.randn_like(grad[1])  # only sample 1 moves
    eps = 8 / 255 if norm == "linf" else 1.0  # x_adv starts inside the ball of either norm
    out, _ = run_both(backend, x_adv, grad, x, eps, 2 / 255, norm)
    assert torch.isfinite(out).all()
    keep = torch.tensor([True, False, True, True], device=device)
    assert torch.equal(out[keep], x_adv[keep])
    assert not torch.equal(out[1], x_adv[1])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_nan_in_gradient_propagates(backend, norm):
    """Documented behaviour: NaN is not an error; it reaches the output of its sample only."""
    device = device_of(backend)
    x_adv, grad, x = make_batch((3, 2, 4, 4), device=device, seed=9)
    grad[1, 0, 2, 3] = float("nan")
    out, inplace = run_both(backend, x_adv, grad, x, 8 / 255, 2 / 255, norm)
    expected = reference.pgd_step(x_adv, grad, x, 8 / 255, 2 / 255, norm)
    for result in (out, inplace):
        torch.testing.assert_close(result, expected, equal_nan=True, **TOLERANCE[torch.float32])
        assert torch.isnan(result[1]).any()
        assert torch.isfinite(result[0]).all() and torch.isfinite(result[2]).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_clip_none_and_custom_box(backend):
    device = device_of(backend)
    x_adv, grad, x = make_batch((3, 4, 4), device=device, seed=10)
    for clip in (None, (0.25, 0.75)):
        out, _ = run_both(backend, x_adv, grad, x, 0.3, 0.2, "linf", clip=clip)
        torch.testing.assert_close(out, reference.pgd_step(x_adv, grad, x, 0.3, 0.2, "linf", clip),
                                   **TOLERANCE[torch.float32])
        if clip is not None:
            assert_invariants(out, x, 0.3 + 0.5, "linf", clip)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    device = device_of(backend)
    x_adv, grad, x = (torch.empty(0, 3, 4, 4, device=device) for _ in range(3))
    out, inplace = run_both(backend, x_adv, grad, x, 0.1, 0.01, "l2")
    assert out.shape == (0, 3, 4, 4) and inplace.shape == (0, 3, 4, 4)


# ----------------------------------------------------------------------------- properties
@settings(max_examples=60, deadline=None)
@given(batch=st.integers(1, 9), width=st.integers(1, 70), norm=st.sampled_from(["linf", "l2"]),
       eps=st.floats(0.0, 2.0), alpha=st.floats(0.0, 2.0), seed=st.integers(0, 2**31 - 1),
       steps=st.integers(1, 3))
def test_property_invariants_and_reference(batch, width, norm, eps, alpha, seed, steps):
    """Repeated steps on the CPU kernel stay in the ball and the box and agree with the oracle."""
    x_adv, grad, x = make_batch((batch, width), seed=seed, eps=eps)
    g = torch.Generator().manual_seed(seed + 1)
    with fastadv.use_backend("cpu"):
        for _ in range(steps):
            expected = reference.pgd_step(x_adv, grad, x, eps, alpha, norm)
            x_adv = pgd_step(x_adv, grad, x, eps, alpha, norm=norm)
            torch.testing.assert_close(x_adv, expected, atol=1e-5, rtol=1e-5)
            assert_invariants(x_adv, x, eps, norm)
            grad = torch.randn(x.shape, generator=g)


# ----------------------------------------------------------------------------- pgd_init
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("per_sample", [False, True], ids=["scalar", "per_sample"])
def test_init_uniform_stays_in_ball(norm, per_sample):
    x = torch.rand(64, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    eps, _ = radii(norm, 64, per_sample, torch.float32, "cpu")
    start = pgd_init(x, eps, norm=norm, generator=torch.Generator().manual_seed(1))
    assert_invariants(start, x, eps, norm)
    assert not torch.equal(start, x)


def test_init_linf_is_uniform_and_l2_fills_the_ball():
    x = torch.full((2000, 1, 4, 4), 0.5)
    eps = 0.25
    delta = pgd_init(x, eps, generator=torch.Generator().manual_seed(0)) - x
    assert abs(delta.mean().item()) < 0.01 and abs(delta.std().item() - eps / math.sqrt(3)) < 0.01
    delta = (pgd_init(x, eps, norm="l2", clip=None, generator=torch.Generator().manual_seed(0)) - x).flatten(1)
    radius = delta.norm(dim=1) / eps  # uniform in the ball: P(radius <= r) = r^d, d = 16
    assert abs((radius <= 0.9).float().mean().item() - 0.9 ** 16) < 0.03


def test_init_normal_and_determinism():
    x = torch.rand(256, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.25
    a = pgd_init(x, 8 / 255, init="normal", generator=torch.Generator().manual_seed(5))
    b = pgd_init(x, 8 / 255, init="normal", generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert abs((a - x).std().item() - 0.001) < 1e-4


def test_init_keeps_channels_last():
    x = torch.rand(2, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    assert pgd_init(x, 0.1).is_contiguous(memory_format=torch.channels_last)


# ----------------------------------------------------------------------------- bad input
def _valid():
    x_adv, grad, x = make_batch((3, 3, 4, 4), seed=11)
    return dict(x_adv=x_adv, grad=grad, x=x, eps=8 / 255, alpha=2 / 255)


BAD_INPUTS = [
    ("grad", lambda a: a["grad"][:, :, :3], ValueError, "grad must have the shape of x_adv"),
    ("x", lambda a: a["x"].double(), TypeError, "x must have x_adv's dtype"),
    ("x", lambda a: a["x"].to("meta"), ValueError, "x must be on x_adv's device"),
    ("grad", lambda a: a["grad"].to(torch.int32), TypeError, "grad must be a floating-point tensor"),
    ("x_adv", lambda a: a["x_adv"].to(torch.int64), TypeError, "x_adv must be a floating-point tensor"),
    ("grad", lambda a: a["grad"].tolist(), TypeError, "grad must be a torch.Tensor"),
    ("x_adv", lambda a: torch.tensor(0.5), ValueError, "x_adv must have a batch dimension"),
    ("eps", lambda a: -0.1, ValueError, "eps must be >= 0"),
    ("eps", lambda a: float("nan"), ValueError, "eps must be >= 0"),
    ("eps", lambda a: torch.tensor([0.1, -0.1, 0.1]), ValueError, "every entry of eps must be >= 0"),
    ("eps", lambda a: "8/255", TypeError, "eps must be a float or a tensor"),
    ("alpha", lambda a: torch.full((4,), 0.01), ValueError, r"alpha must be a float or have shape \[B\] = \[3\]"),
    ("alpha", lambda a: torch.full((3, 1), 0.01), ValueError, r"alpha must be a float or have shape \[B\]"),
    ("alpha", lambda a: torch.ones(3, dtype=torch.int64), TypeError, "alpha must be a floating-point tensor"),
    ("norm", lambda a: "l1", ValueError, "norm must be one of"),
    ("clip", lambda a: (1.0, 0.0), ValueError, "clip must satisfy min <= max"),
    ("clip", lambda a: 1.0, TypeError, "clip must be a pair"),
    ("active", lambda a: torch.ones(3), TypeError, "active must be a bool tensor"),
    ("active", lambda a: torch.ones(2, dtype=torch.bool), ValueError, r"active must have shape \[B\] = \[3\]"),
]


@pytest.mark.parametrize("argument, make_bad, error, message", BAD_INPUTS,
                         ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD_INPUTS)])
def test_bad_input_is_named_and_nothing_is_written(argument, make_bad, error, message):
    args = _valid()
    args[argument] = make_bad(args)
    for op in (pgd_step, pgd_step_):
        x_adv = args["x_adv"]
        before = x_adv.clone() if isinstance(x_adv, torch.Tensor) else None
        with pytest.raises(error, match=message):
            op(**args)
        if before is not None:
            assert torch.equal(x_adv, before), "x_adv changed although the call failed"


def test_cpu_backend_refuses_half_and_auto_falls_back_to_reference():
    x_adv, grad, x = make_batch((2, 3, 4, 4), dtype=torch.float16)
    with fastadv.use_backend("cpu"), pytest.raises(fastadv.BackendUnavailable, match="float32/float64"):
        pgd_step(x_adv, grad, x, 0.1, 0.01)
    with fastadv.use_backend("auto"):
        out = pgd_step(x_adv, grad, x, 0.1, 0.01)
    torch.testing.assert_close(out, reference.pgd_step(x_adv, grad, x, 0.1, 0.01))


def test_cpp_kernel_checks_are_a_second_line():
    """Calling the raw operator with inputs the Python layer would have rejected still fails cleanly."""
    x_adv, grad, x = make_batch((2, 3, 4, 4))
    with pytest.raises(RuntimeError, match="grad must have shape"):
        torch.ops.fastadv.pgd_step(x_adv, grad[:, :2], x, 0.1, 0.01, None, None, "linf", 0.0, 1.0, None)
    with pytest.raises(RuntimeError, match="norm must be 'linf' or 'l2'"):
        torch.ops.fastadv.pgd_step(x_adv, grad, x, 0.1, 0.01, None, None, "l3", 0.0, 1.0, None)
    with pytest.raises(RuntimeError, match="eps must have dtype"):
        torch.ops.fastadv.pgd_step(x_adv, grad, x, 0.1, 0.01, torch.ones(2, dtype=torch.float64), None, "linf",
                                   0.0, 1.0, None)


# ----------------------------------------------------------------------------- torch.library
def _raw_args(per_sample, active, device="cpu"):
    x_adv, grad, x = make_batch((4, 3, 8, 8), device=device, seed=12)
    eps, alpha = radii("l2", 4, True, torch.float32, device)
    mask = active_mask(4, device) if active else None
    return [x_adv, grad, x, 0.5, 0.2, eps if per_sample else None, alpha if per_sample else None, "l2", 0.0, 1.0,
            mask]


@pytest.mark.parametrize("op_name", ["pgd_step", "pgd_step_"])
@pytest.mark.parametrize("per_sample, active", [(False, False), (True, True)], ids=["plain", "per_sample_masked"])
def test_opcheck(op_name, per_sample, active):
    op = getattr(torch.ops.fastadv, op_name).default
    torch.library.opcheck(op, _raw_args(per_sample, active))


@pytest.mark.triton
@pytest.mark.parametrize("op_name", ["pgd_step_triton", "pgd_step_triton_"])
def test_opcheck_triton(op_name):
    from fastadv.ops.pgd import _TRITON

    op = getattr(_TRITON, op_name.replace("_triton", ""))
    torch.library.opcheck(op, _raw_args(True, True, device_of("triton")))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("in_place", [False, True], ids=["pgd_step", "pgd_step_"])
def test_torch_compile_fullgraph(backend, in_place):
    """Three steps traced as one graph: the reference's three steps."""
    def attack_steps(step, step_, x_adv, grad, x):
        for _ in range(3):
            if step_ is not None:
                step_(x_adv, grad, x, 8 / 255, 2 / 255)
            else:
                x_adv = step(x_adv, grad, x, 8 / 255, 2 / 255)
            grad = grad.flip(-1)
        return x_adv

    x_adv, grad, x = make_batch((4, 3, 8, 8), device=device_of(backend), seed=13)
    expected = attack_steps(reference.pgd_step, None, x_adv.clone(), grad, x)
    torch._dynamo.reset()
    with fastadv.use_backend(backend):
        compiled = torch.compile(attack_steps, fullgraph=True, backend="inductor")
        result = compiled(pgd_step, pgd_step_ if in_place else None, x_adv.clone(), grad, x)
    torch.testing.assert_close(result, expected, **TOLERANCE[torch.float32])


# A fresh process: nothing registered or compiled yet, the Triton ops' first use inside the
# compiled function.
_FIRST_USE_COMPILED = textwrap.dedent("""
    import torch
    import fastadv
    from fastadv.ops import logits, pgd
    from fastadv.reference import logits as reference_logits, pgd as reference_pgd

    def step(x_adv, grad, x, z_nat, z_adv):
        pgd.pgd_step_(x_adv, grad, x, 8 / 255, 2 / 255)
        return x_adv, logits.trades_kl(z_nat, z_adv, "mean")

    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 8, 8, generator=g)
    grad = torch.randn(4, 3, 8, 8, generator=g)
    z_nat, z_adv = torch.randn(4, 10, generator=g), torch.randn(4, 10, generator=g)
    with fastadv.use_backend("triton"):
        compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
        leaf = z_adv.clone().requires_grad_()
        x_adv, loss = compiled(x.clone(), grad, x, z_nat, leaf)
        loss.backward()
    exact_leaf = z_adv.double().requires_grad_()
    exact = reference_logits.trades_kl(z_nat.double(), exact_leaf, "mean")
    exact.backward()
    torch.testing.assert_close(x_adv, reference_pgd.pgd_step(x.clone(), grad, x, 8 / 255, 2 / 255))
    torch.testing.assert_close(loss.double(), exact, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(leaf.grad.double(), exact_leaf.grad, atol=1e-5, rtol=1e-4)
    print("ok")
""")


@pytest.mark.triton
def test_torch_compile_first_use_of_the_triton_ops():
    """A Triton op first used inside torch.compile(fullgraph=True) works: its custom op is
    registered with the family, not on first use, since dynamo refuses to trace the kernels'
    import. In a fresh process (the suite's earlier tests registered them), on the interpreter."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    done = subprocess.run([sys.executable, "-c", _FIRST_USE_COMPILED], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
