"""The simplex family (simplex_project, simplex_distance_sq, min_norm_weights): every backend
against the float64 oracles of fastadv/reference/simplex.py on odd shapes, adversarial rows,
properties of the projection, the solvers iterate for iterate and against the exact optimum,
gradcheck, opcheck, torch.compile, no value read, bad input."""
import inspect
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastadv
from fastadv.ops import simplex as ops
from fastadv.reference import simplex as reference
from tests.helpers import BACKENDS, CountReads, device_of, one_thread  # noqa: F401  (one_thread: autouse)

BATCHES = (1, 7, 4097)
TASKS = (1, 2, 3, 4, 8, 17, 32)
# The Triton interpreter runs a program at a time: shapes that still reach every task count path.
TRITON_SHAPES = [(1, 1), (7, 2), (5, 3), (9, 8), (3, 17), (2, 32)]
SOLVERS = ("softmax-gd", "pgd", "apgd", "exact2")


def backend_shapes(batches=BATCHES, tasks=TASKS):
    for param in BACKENDS:
        (name,) = param.values
        shapes = TRITON_SHAPES if name == "triton" else [(b, m) for b in batches for m in tasks]
        for batch, m in shapes:
            yield pytest.param(name, batch, m, marks=param.marks, id=f"{name}-{batch}x{m}")


def generator(seed):
    return torch.Generator().manual_seed(seed)


def random_rows(batch, m, seed=0, dtype=torch.float32, device="cpu", scale=1.0):
    return (torch.randn(batch, m, generator=generator(seed), dtype=torch.float64) * scale).to(device=device, dtype=dtype)


def random_mask(batch, m, seed=1, device="cpu", p=0.5):
    """Random allowed coordinates, with an all-False row (every coordinate counts) when B > 2."""
    mask = torch.rand(batch, m, generator=generator(seed)) < p
    if batch > 2:
        mask[2] = False
    return mask.to(device)


def simplex_points(batch, m, seed=2, dtype=torch.float32, device="cpu"):
    return torch.softmax(torch.randn(batch, m, generator=generator(seed), dtype=torch.float64) * 2, dim=1).to(
        device=device, dtype=dtype)


def random_gram(batch, m, seed=3, dtype=torch.float32, device="cpu", dims=6):
    """Q = G Gᵀ of m random task gradients of dimension ``dims`` per sample (positive
    semi-definite, as a Gram matrix is), normalised to entries of order 1."""
    g = torch.randn(batch, m, dims, generator=generator(seed), dtype=torch.float64) / math.sqrt(dims)
    return (g @ g.transpose(1, 2)).to(device=device, dtype=dtype)


def assert_close_to_exact(got, exact, atol=1e-5, rtol=1e-5):
    """fp32 against the float64 oracle, elementwise (DESIGN.md: 1e-5)."""
    torch.testing.assert_close(got.double().cpu(), exact.double().cpu(), atol=atol, rtol=rtol, equal_nan=True)


def assert_on_simplex(w, allowed=None):
    w = w.double().cpu()
    assert bool((w >= 0).all())
    torch.testing.assert_close(w.sum(dim=1), torch.ones(w.shape[0], dtype=torch.float64), atol=1e-5, rtol=0)
    if allowed is not None:
        assert bool((w[~allowed.cpu()] == 0).all())


def effective(mask):
    return mask | ~mask.any(dim=1, keepdim=True)


# ----------------------------------------------------------------------------- simplex_project
@pytest.mark.parametrize("backend,batch,m", list(backend_shapes()))
@pytest.mark.parametrize("masked", [False, True], ids=["all", "masked"])
def test_project_matches_reference(backend, batch, m, masked):
    device = device_of(backend)
    check_project_matches_reference(backend, random_rows(batch, m, scale=1.5, device=device),
                                    random_mask(batch, m, device=device) if masked else None)


def check_project_matches_reference(backend, v, mask):
    """The float64 oracle's projection of the rows v (on their device) under ``mask``: on the
    simplex, 0 off the mask."""
    exact = reference.simplex_project(v.double().cpu(), None if mask is None else mask.cpu())
    with fastadv.use_backend(backend):
        got = ops.simplex_project(v, mask)
    assert got.shape == v.shape and got.dtype == v.dtype and got.device == v.device
    assert_close_to_exact(got, exact)
    assert_on_simplex(got, None if mask is None else effective(mask))


def project_adversarial_rows(backend, rows, mask):
    """The projection of ten float32 rows whose rows 6 and 7 hold a NaN and an inf: those two rows
    NaN, the others finite, on the simplex and the oracle's. Returns it on the CPU."""
    exact = reference.simplex_project(rows.double(), mask)
    with fastadv.use_backend(backend):
        got = ops.simplex_project(rows.to(device_of(backend)), mask.to(device_of(backend))).cpu()
    assert bool(torch.isnan(got[6]).all()) and bool(torch.isnan(got[7]).all())
    finite = [0, 1, 2, 3, 4, 5, 8, 9]
    assert bool(torch.isfinite(got[finite]).all())
    assert_close_to_exact(got[finite], exact[finite])
    assert_on_simplex(got[finite], effective(mask[finite]))
    return got


@pytest.mark.parametrize("backend", BACKENDS)
def test_project_adversarial_rows(backend):
    """Ties, a huge spread (±1e30, exact after the shift), one coordinate allowed, every coordinate
    masked (all count), and a NaN and an inf row that leave the other rows exact."""
    rows = torch.tensor([
        [0.3, 0.3, 0.3, 0.3, 0.3],           # all tied
        [1.0, 1.0, 0.0, -1.0, 1.0],          # a tie at the top
        [1e30, 0.0, -1e30, 5.0, 1e30],       # huge spread, tied top
        [-1e30, -1e30, -1e30, 0.5, -1e30],   # one finite survivor
        [2.0, -3.0, 0.5, 0.25, 7.0],         # one allowed coordinate (mask below)
        [0.1, 0.2, 0.3, 0.4, 0.5],           # every coordinate masked: all count
        [0.1, math.nan, 0.3, 0.4, 0.5],      # NaN
        [0.1, 0.2, math.inf, 0.4, 0.5],      # inf
        [0.9, 0.05, 0.05, 0.0, 0.0],         # already on the simplex
        [-5.0, -5.0, -4.0, -5.0, -6.0],      # all negative
    ], dtype=torch.float32)
    mask = torch.ones_like(rows, dtype=torch.bool)
    mask[4] = torch.tensor([False, True, False, False, False])
    mask[5] = False
    mask[6, 1] = False  # a NaN off the mask still makes its row NaN
    got = project_adversarial_rows(backend, rows, mask)
    torch.testing.assert_close(got[0], torch.full((5,), 0.2))
    torch.testing.assert_close(got[2], torch.tensor([0.5, 0.0, 0.0, 0.0, 0.5]))
    torch.testing.assert_close(got[3], torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0]))
    torch.testing.assert_close(got[4], torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(got[8], rows[8])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("m", [1, 17])
def test_project_one_task_and_one_allowed(backend, m):
    device = device_of(backend)
    v = random_rows(6, m, seed=4, device=device)
    mask = torch.zeros(6, m, dtype=torch.bool, device=device)
    mask[:, m - 1] = True
    with fastadv.use_backend(backend):
        got = ops.simplex_project(v, mask).cpu()
    expected = torch.zeros(6, m)
    expected[:, m - 1] = 1
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_project_nan_stays_in_its_row(backend):
    """On the register path (m ≤ 32) and on the wide one (33, 1000)."""
    device = device_of(backend)
    for m in (3, 8, 17, 32, 33, 1000):
        v = random_rows(9, m, seed=m, device=device).clone()
        v[4, m // 2] = math.nan
        v[6, 0] = -math.inf
        with fastadv.use_backend(backend):
            got = ops.simplex_project(v).cpu()
        assert bool(torch.isnan(got[[4, 6]]).all())
        others = [0, 1, 2, 3, 5, 7, 8]
        assert_close_to_exact(got[others], reference.simplex_project(v[others].double().cpu()))


@settings(max_examples=80, deadline=None)
@given(batch=st.integers(1, 6), m=st.integers(1, 32), seed=st.integers(0, 2**31 - 1),
       scale=st.sampled_from([1e-3, 1.0, 30.0]), masked=st.booleans())
def test_project_properties(batch, m, seed, scale, masked):
    """The CPU kernel's register path (m ≤ 32)."""
    check_project_properties(batch, m, seed, scale, masked)


def check_project_properties(batch, m, seed, scale, masked):
    """The CPU kernel's projection, in float64: on the simplex, 0 off the mask, idempotent,
    non-expansive (‖P(a) − P(b)‖ ≤ ‖a − b‖ for rows with the same mask) and its KKT conditions:
    w = max(v − τ, 0) on the allowed set with one τ per row."""
    a = random_rows(batch, m, seed=seed, dtype=torch.float64, scale=scale)
    b = random_rows(batch, m, seed=seed + 1, dtype=torch.float64, scale=scale)
    mask = (torch.rand(batch, m, generator=generator(seed + 2)) < 0.6) if masked else None
    allowed = effective(mask) if mask is not None else torch.ones(batch, m, dtype=torch.bool)
    with fastadv.use_backend("cpu"):
        pa, pb = ops.simplex_project(a, mask), ops.simplex_project(b, mask)
        again = ops.simplex_project(pa, mask)
    assert_on_simplex(pa, allowed)
    torch.testing.assert_close(again, pa, atol=1e-12, rtol=0)
    assert bool(((pa - pb).norm(dim=1) <= (a - b).norm(dim=1) + 1e-12).all())
    for row in range(batch):
        support = (pa[row] > 0) & allowed[row]
        tau = (a[row][support] - pa[row][support]).mean()
        torch.testing.assert_close(pa[row][support], a[row][support] - tau, atol=1e-9 * max(1.0, scale), rtol=0)
        off = allowed[row] & ~support
        assert bool((a[row][off] <= tau + 1e-9 * max(1.0, scale)).all())


# ----------------------------------------------------------------------------- simplex_distance_sq
def omega_and_gradient(fn, w, achieved):
    leaf = w.detach().clone().requires_grad_()
    omega = fn(leaf, achieved)
    weights = torch.linspace(0.5, 1.5, w.shape[0], dtype=torch.float64).to(omega.dtype).to(omega.device)
    (grad,) = torch.autograd.grad((omega * weights).sum(), [leaf])
    return omega.detach(), grad


@pytest.mark.parametrize("backend,batch,m", list(backend_shapes()))
@pytest.mark.parametrize("with_achieved", [False, True], ids=["none", "achieved"])
def test_distance_matches_reference(backend, batch, m, with_achieved):
    check_distance_matches_reference(backend, batch, m, with_achieved, spread=0.1)


def check_distance_matches_reference(backend, batch, m, with_achieved, spread):
    """Ω and its gradient against the oracle's, at points off the simplex too (Ω is a formula; by
    ``spread``), with a row whose every task is achieved (all count as open)."""
    device = device_of(backend)
    w = simplex_points(batch, m, device=device)
    w = w + spread * random_rows(batch, m, seed=9, device=device)
    achieved = random_mask(batch, m, seed=5, device=device) if with_achieved else None
    if achieved is not None and batch > 1:
        achieved[1] = True
    exact, exact_grad = omega_and_gradient(reference.simplex_distance_sq, w.double().cpu(),
                                           None if achieved is None else achieved.cpu())
    with fastadv.use_backend(backend):
        got, got_grad = omega_and_gradient(ops.simplex_distance_sq, w, achieved)
    assert got.shape == (batch,) and got.dtype == w.dtype and got_grad.shape == w.shape
    assert_close_to_exact(got, exact, rtol=1e-4)
    assert_close_to_exact(got_grad, exact_grad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_distance_is_the_distance_to_the_extended_simplex(backend):
    """On simplex points Ω(w) = ‖w − P(w, ~achieved)‖² (seed 003 ch. 4, Theorem 1), the projection
    being the oracle's; every task achieved counts as none achieved."""
    device = device_of(backend)
    for m in (1, 2, 3, 8, 17, 32):
        w = simplex_points(33, m, seed=m, device=device)
        achieved = random_mask(33, m, seed=m + 1, device=device)
        achieved[5] = True
        with fastadv.use_backend(backend):
            omega = ops.simplex_distance_sq(w, achieved)
        exact = w.double().cpu() - reference.simplex_project(w.double().cpu(), ~achieved.cpu())
        assert_close_to_exact(omega, (exact ** 2).sum(dim=1), rtol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("m,with_achieved", [(4, False), (100, True)], ids=["4", "100-achieved"])
def test_distance_nan_stays_in_its_row(backend, m, with_achieved):
    """On the register path and on the wide one: Ω and its gradient NaN in the rows with a NaN or
    an inf, the oracle's in the others."""
    device = device_of(backend)
    w = simplex_points(5, m, device=device).clone()
    w[1, 2] = math.inf
    w[3, m - 1] = math.nan
    achieved = random_mask(5, m, seed=2, device=device) if with_achieved else None
    with fastadv.use_backend(backend):
        omega, grad = omega_and_gradient(ops.simplex_distance_sq, w, achieved)
    assert bool(torch.isnan(omega[[1, 3]].cpu()).all()) and bool(torch.isnan(grad[[1, 3]].cpu()).all())
    keep = [0, 2, 4]
    exact, exact_grad = omega_and_gradient(reference.simplex_distance_sq, w[keep].double().cpu(),
                                           None if achieved is None else achieved[keep].cpu())
    assert_close_to_exact(omega[keep], exact)
    assert_close_to_exact(grad[keep], exact_grad)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("m", [1, 2, 5, 17])
def test_distance_gradcheck_float64(backend, m):
    w = simplex_points(4, m, seed=m, dtype=torch.float64).requires_grad_()
    achieved = random_mask(4, m, seed=3)
    with fastadv.use_backend(backend):
        assert torch.autograd.gradcheck(lambda t: ops.simplex_distance_sq(t, achieved), (w,))
        assert torch.autograd.gradcheck(lambda t: ops.simplex_distance_sq(t), (w,))


def test_distance_gradient_only_where_asked():
    w = simplex_points(3, 4)
    with fastadv.use_backend("cpu"), torch.no_grad():
        omega, grad = torch.ops.fastadv.simplex_distance_sq(w, None, False)
        assert grad.shape == (0,)
        omega_with, grad_with = torch.ops.fastadv.simplex_distance_sq(w, None, True)
    torch.testing.assert_close(omega, omega_with)
    assert grad_with.shape == w.shape


# ----------------------------------------------------------------------------- the wide path (m > 32)
WIDE_TASKS = (33, 100, 1000, 10_000)


def wide_shapes():
    """Every backend on m ∈ WIDE_TASKS, B ∈ {1, 5} (Triton's interpreter: B ∈ {1, 3})."""
    for param in BACKENDS:
        (name,) = param.values
        for m in WIDE_TASKS:
            batches = (1, 3) if name == "triton" else (1, 5)
            for batch in batches:
                yield pytest.param(name, batch, m, marks=param.marks, id=f"{name}-{batch}x{m}")


def wide_rows(batch, m, seed, scale=1.5):
    """Random rows, with the rows of the wide path's hard cases cycling in from the second row:
    ties (values on a grid of 1/4, many tied at the threshold), every value tied, a tiny spread
    (1e-6) and a huge one (±1e30, exact after the shift)."""
    v = random_rows(batch, m, seed=seed, dtype=torch.float64, scale=scale)
    kinds = [lambda r: torch.round(r * 2) / 4, lambda r: torch.full_like(r, 0.3), lambda r: r * 1e-6,
             lambda r: torch.where(r > 1.0, 1e30, torch.where(r < -1.0, -1e30, r))]
    for row in range(1, batch):
        v[row] = kinds[(row - 1) % len(kinds)](v[row])
    return v


@pytest.mark.parametrize("backend,batch,m", list(wide_shapes()))
@pytest.mark.parametrize("masked", [False, True], ids=["all", "masked"])
def test_wide_project_matches_reference(backend, batch, m, masked):
    """m > 32 (the wide path)."""
    device = device_of(backend)
    check_project_matches_reference(backend, wide_rows(batch, m, seed=m + batch).to(device=device, dtype=torch.float32),
                                    random_mask(batch, m, seed=m, device=device) if masked else None)


@pytest.mark.parametrize("backend", BACKENDS)
def test_wide_project_adversarial_rows(backend):
    """The wide path on rows of 40 and 1000 coordinates: ties at the top, every value tied, ±1e30,
    one finite survivor, one allowed coordinate, every coordinate masked, a NaN (off the mask
    too) and an inf row that leave the other rows exact, and a row already on the simplex."""
    for m in (40, 1000):
        g = generator(m)
        rows = torch.randn(10, m, generator=g, dtype=torch.float64)
        rows[0] = 0.3
        rows[1] = -rows[1].abs() - 1.0
        rows[1, : m // 4] = 1.0  # tied at the top, the others at least 2 below: 4/m each
        rows[2] = torch.where(torch.rand(m, generator=g) < 0.5, 1e30, -1e30)
        rows[3] = -1e30
        rows[3, m // 3] = 0.5
        rows[6, m // 2] = math.nan
        rows[7, m - 1] = math.inf
        rows[8] = torch.softmax(rows[8] * 3, dim=0)
        mask = torch.ones(10, m, dtype=torch.bool)
        mask[4] = False
        mask[4, 7] = True
        mask[5] = False
        mask[6, m // 2] = False
        v = rows.float()
        got = project_adversarial_rows(backend, v, mask)
        torch.testing.assert_close(got[0], torch.full((m,), 1.0 / m))
        torch.testing.assert_close(got[1], torch.where(rows[1] == 1.0, 4.0 / m, 0.0).float())
        expected_2 = (rows[2] > 0).float()
        torch.testing.assert_close(got[2], expected_2 / expected_2.sum())
        torch.testing.assert_close(got[3], torch.nn.functional.one_hot(torch.tensor(m // 3), m).float())
        torch.testing.assert_close(got[4], torch.nn.functional.one_hot(torch.tensor(7), m).float())
        torch.testing.assert_close(got[8], v[8])


@settings(max_examples=40, deadline=None)
@given(batch=st.integers(1, 4), m=st.integers(33, 300), seed=st.integers(0, 2**31 - 1),
       scale=st.sampled_from([1e-3, 1.0, 30.0]), masked=st.booleans())
def test_wide_project_properties(batch, m, seed, scale, masked):
    """The CPU kernel's wide path (m > 32)."""
    check_project_properties(batch, m, seed, scale, masked)


@pytest.mark.parametrize("backend,batch,m", list(wide_shapes()))
@pytest.mark.parametrize("with_achieved", [False, True], ids=["none", "achieved"])
def test_wide_distance_matches_reference(backend, batch, m, with_achieved):
    check_distance_matches_reference(backend, batch, m, with_achieved, spread=0.01)


def test_wide_distance_gradcheck_float64():
    w = simplex_points(3, 40, seed=4, dtype=torch.float64).requires_grad_()
    achieved = random_mask(3, 40, seed=3)
    with fastadv.use_backend("cpu"):
        assert torch.autograd.gradcheck(lambda t: ops.simplex_distance_sq(t, achieved), (w,))
        assert torch.autograd.gradcheck(lambda t: ops.simplex_distance_sq(t), (w,))


def test_wide_float64_cpu_matches_reference_tightly():
    for m in (33, 1000):
        v = random_rows(9, m, dtype=torch.float64, scale=2.0)
        mask, achieved = random_mask(9, m), random_mask(9, m, seed=4)
        with fastadv.use_backend("cpu"):
            torch.testing.assert_close(ops.simplex_project(v, mask), reference.simplex_project(v, mask), atol=1e-12,
                                       rtol=0)
            torch.testing.assert_close(ops.simplex_project(v), reference.simplex_project(v), atol=1e-12, rtol=0)
            torch.testing.assert_close(ops.simplex_distance_sq(v, achieved),
                                       reference.simplex_distance_sq(v, achieved), atol=1e-12, rtol=1e-12)


# ----------------------------------------------------------------------------- min_norm_weights
def solver_arguments(solver, steps):
    return dict(solver=solver, steps=steps, lr=0.01 if solver == "softmax-gd" else None)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("steps", [1, 3, 10])
@pytest.mark.parametrize("lam", [0.0, 100.0])
@pytest.mark.parametrize("with_achieved,with_init", [(False, False), (True, False), (False, True), (True, True)],
                         ids=["plain", "achieved", "init", "achieved-init"])
def test_min_norm_iterates_match_reference(backend, solver, steps, lam, with_achieved, with_init):
    """K steps of each solver are the oracle's K steps (exact2: its closed form)."""
    device = device_of(backend)
    # The Triton interpreter is slow: one odd size per case there (test_triton_min_norm_sizes covers the others).
    sizes = (2,) if solver == "exact2" else ((3,) if backend == "triton" else (1, 2, 3, 4, 5, 8, 17, 32))
    for m in sizes:
        batch = 5 if backend == "triton" else 65
        Q = random_gram(batch, m, seed=m, device=device)
        achieved = random_mask(batch, m, seed=m + 7, device=device) if with_achieved else None
        init = simplex_points(batch, m, seed=m + 3, device=device) if with_init else None
        if init is not None and m > 1:
            init[0, 0] = 0.0  # a zero weight: α = log 0 = −inf for softmax-gd
            init[0] = init[0] / init[0].sum()
        args = solver_arguments(solver, steps)
        exact_w, exact_objective = reference.min_norm_weights(
            Q.double().cpu(), None if achieved is None else achieved.cpu(), lam,
            init=None if init is None else init.double().cpu(), **args)
        with fastadv.use_backend(backend):
            w, objective = ops.min_norm_weights(Q, achieved, lam, init=init, **args)
        assert w.shape == (batch, m) and objective.shape == (batch,) and w.dtype == Q.dtype
        assert_close_to_exact(w, exact_w)
        assert_close_to_exact(objective, exact_objective, atol=1e-5 * max(1.0, lam), rtol=1e-4)
        assert_on_simplex(w)


@pytest.mark.triton
@pytest.mark.parametrize("solver", ("softmax-gd", "apgd"))
def test_triton_min_norm_sizes(solver):
    """The Triton kernels on every size class the iterate test leaves out there."""
    device = device_of("triton")
    for m in (1, 2, 5, 17, 32):
        Q, achieved = random_gram(3, m, seed=m, device=device), random_mask(3, m, seed=m, device=device)
        args = solver_arguments(solver, 3)
        exact_w, exact_objective = reference.min_norm_weights(Q.double().cpu(), achieved.cpu(), 1.0, **args)
        with fastadv.use_backend("triton"):
            w, objective = ops.min_norm_weights(Q, achieved, 1.0, **args)
        assert_close_to_exact(w, exact_w)
        assert_close_to_exact(objective, exact_objective, rtol=1e-4)


def _gd_transcription(Q, achieved, lam, steps, lr, init):
    """Seed 003 ch. 4, Algorithm 1, lines 6–10, in float64, written from the paper: the loss
    L(α) = σ(α)ᵀQσ(α) + λΩ(σ(α)) with Ω(w) = Σ_{i∈A} w_i² + (1 − Σ_{i∉A} w_i)²/(m − |A|), and
    α ← α − η ∇_α L by autograd."""
    m = Q.shape[1]
    alpha = torch.full(Q.shape[:2], 1.0 / m, dtype=torch.float64) if init is None else init.double().log()
    A = torch.zeros(Q.shape[:2], dtype=torch.bool) if achieved is None else achieved
    A = A & ~A.all(dim=1, keepdim=True)
    for _ in range(steps):
        alpha = alpha.detach().requires_grad_()
        sigma = torch.softmax(alpha, dim=1)
        quadratic = torch.einsum("bi,bij,bj->b", sigma, Q.double(), sigma)
        omega = (sigma ** 2 * A).sum(dim=1) + (1 - (sigma * ~A).sum(dim=1)) ** 2 / (~A).sum(dim=1)
        (grad,) = torch.autograd.grad((quadratic + lam * omega).sum(), [alpha])
        alpha = alpha - lr * grad
    return torch.softmax(alpha.detach(), dim=1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("lam", [0.0, 100.0])
def test_softmax_gd_is_algorithm_1(backend, lam):
    device = device_of(backend)
    for m in (2, 4, 7):
        Q = random_gram(16, m, seed=20 + m)
        achieved = random_mask(16, m, seed=m)
        init = simplex_points(16, m, seed=m)
        for start in (None, init):
            expected = _gd_transcription(Q, achieved, lam, 10, 0.005, start)
            with fastadv.use_backend(backend):
                w, _ = ops.min_norm_weights(Q.to(device), achieved.to(device), lam,
                                            init=None if start is None else start.to(device))
            assert_close_to_exact(w, expected)


def _optimum_cases():
    """Every backend on m ∈ {2, 3, 5} × λ ∈ {0, 2}; the Triton interpreter (3000 steps) on two."""
    for param in BACKENDS:
        (name,) = param.values
        for m in (2, 3, 5):
            for lam in (0.0, 2.0):
                if name != "triton" or (m, lam) in ((2, 0.0), (3, 2.0)):
                    yield pytest.param(name, m, lam, marks=param.marks, id=f"{name}-{m}-{lam}")


@pytest.mark.parametrize("backend,m,lam", list(_optimum_cases()))
def test_solvers_reach_the_exact_optimum(backend, m, lam):
    """Many apgd steps and exact2 (m = 2) reach min_norm_exact's minimum (support enumeration)."""
    device = device_of(backend)
    Q = random_gram(12, m, seed=40 + m, dims=3)
    achieved = random_mask(12, m, seed=41)
    best = reference.min_norm_exact(Q, achieved, lam)
    solvers = [("apgd", 3000)] + ([("exact2", None)] if m == 2 else [])
    for solver, steps in solvers:
        with fastadv.use_backend(backend):
            w, objective = ops.min_norm_weights(Q.to(device), achieved.to(device), lam, solver=solver, steps=steps)
        assert_on_simplex(w)
        torch.testing.assert_close(objective.double().cpu(), best, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(reference.min_norm_objective(Q.double(), w.double().cpu(), achieved, lam), best,
                                   atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_exact2_is_the_closed_form(backend):
    """λ = 0, m = 2: MGDA's two-task rule a* = clamp((Q₂₂ − Q₁₂) / (Q₁₁ − 2Q₁₂ + Q₂₂), 0, 1)."""
    device = device_of(backend)
    Q = random_gram(257, 2, seed=8, dims=4).double()
    Q[:3] = torch.tensor([[[1.0, 2.0], [2.0, 5.0]], [[5.0, 2.0], [2.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]])
    a = ((Q[:, 1, 1] - Q[:, 0, 1]) / (Q[:, 0, 0] - 2 * Q[:, 0, 1] + Q[:, 1, 1])).clamp(0, 1)
    with fastadv.use_backend(backend):
        w, objective = ops.min_norm_weights(Q.float().to(device), solver="exact2")
    assert_close_to_exact(w, torch.stack([a, 1 - a], dim=1), atol=1e-4)
    torch.testing.assert_close(w[:3].cpu(), torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("solver", SOLVERS)
def test_min_norm_nan_stays_in_its_row(backend, solver):
    device = device_of(backend)
    m = 2 if solver == "exact2" else 4
    Q = random_gram(6, m, device=device).clone()
    Q[2, 0, 1] = math.nan
    Q[4, 1, 1] = math.inf
    with fastadv.use_backend(backend):
        w, objective = ops.min_norm_weights(Q, solver=solver)
    assert bool(torch.isnan(w[[2, 4]].cpu()).all()) and bool(torch.isnan(objective[[2, 4]].cpu()).all())
    others = [0, 1, 3, 5]
    exact_w, exact_objective = reference.min_norm_weights(Q[others].double().cpu(), solver=solver)
    assert_close_to_exact(w[others], exact_w)
    assert_close_to_exact(objective[others], exact_objective, rtol=1e-4)


def test_min_norm_zero_matrix_does_not_move():
    """Q = 0 and λ = 0: L = 0, the projected solvers stay at their start."""
    init = simplex_points(3, 4)
    with fastadv.use_backend("cpu"):
        for solver in ("pgd", "apgd"):
            w, objective = ops.min_norm_weights(torch.zeros(3, 4, 4), solver=solver, init=init)
            torch.testing.assert_close(w, init)
            torch.testing.assert_close(objective, torch.zeros(3))


def test_min_norm_is_not_differentiable():
    Q = random_gram(4, 3).requires_grad_()
    for backend in ("cpu", "reference"):
        with fastadv.use_backend(backend):
            w, objective = ops.min_norm_weights(Q)
        assert not w.requires_grad and not objective.requires_grad


# ----------------------------------------------------------------------------- float64, empty, dispatch
def test_float64_cpu_matches_reference_tightly():
    v = random_rows(33, 7, dtype=torch.float64)
    mask = random_mask(33, 7)
    Q = random_gram(33, 7, dtype=torch.float64)
    achieved = random_mask(33, 7, seed=4)
    with fastadv.use_backend("cpu"):
        torch.testing.assert_close(ops.simplex_project(v, mask), reference.simplex_project(v, mask), atol=1e-12, rtol=0)
        torch.testing.assert_close(ops.simplex_distance_sq(v, achieved), reference.simplex_distance_sq(v, achieved),
                                   atol=1e-12, rtol=1e-12)
        for solver in ("softmax-gd", "pgd", "apgd"):
            got = ops.min_norm_weights(Q, achieved, 3.0, solver=solver, steps=20)
            expected = reference.min_norm_weights(Q, achieved, 3.0, solver=solver, steps=20)
            for g, e in zip(got, expected):
                assert g.dtype == torch.float64
                torch.testing.assert_close(g, e, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    device = device_of(backend)
    with fastadv.use_backend(backend):
        assert ops.simplex_project(torch.empty(0, 4, device=device)).shape == (0, 4)
        assert ops.simplex_distance_sq(torch.empty(0, 4, device=device)).shape == (0,)
        w, objective = ops.min_norm_weights(torch.empty(0, 4, 4, device=device))
    assert w.shape == (0, 4) and objective.shape == (0,)


def test_auto_picks_the_cpu_kernel_and_half_falls_back_to_reference():
    v = random_rows(4, 3)
    assert fastadv.backend.select("simplex_project", v.device, v.dtype) == "cpu"
    with fastadv.use_backend("auto"):
        torch.testing.assert_close(ops.simplex_project(v.bfloat16()), reference.simplex_project(v.bfloat16()))
    with fastadv.use_backend("cpu"), pytest.raises(fastadv.BackendUnavailable):
        ops.simplex_project(v.bfloat16())


def test_registrations():
    keys = ["CPU"] + (["CUDA"] if fastadv.backend.cuda_compiled() else [])
    for op in ("simplex_project", "simplex_distance_sq", "min_norm_weights"):
        for key in keys:
            assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fastadv::{op}", key), (op, key)
    assert torch._C._dispatch_has_kernel_for_dispatch_key("fastadv::simplex_distance_sq", "Autograd")


# ----------------------------------------------------------------------------- the API
def test_public_names_and_signatures():
    """The attacks are written against these."""
    assert set(ops.__all__) == {"simplex_project", "simplex_distance_sq", "min_norm_weights"}
    assert ops.SOLVERS == SOLVERS and ops.MAX_TASKS == 32
    for name in ops.__all__:
        assert getattr(fastadv.ops, name) is getattr(ops, name)
    expected = {"simplex_project": ["v", "mask"], "simplex_distance_sq": ["w", "achieved"],
                "min_norm_weights": ["Q", "achieved", "lam", "solver", "steps", "lr", "init"]}
    for name, parameters in expected.items():
        for fn in (getattr(ops, name), getattr(ops.unchecked, name)):
            signature = inspect.signature(fn).parameters
            assert list(signature) == parameters
    defaults = inspect.signature(ops.min_norm_weights).parameters
    assert defaults["solver"].default == "softmax-gd" and defaults["lam"].default == 0.0
    assert defaults["steps"].default is None and defaults["lr"].default is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_value_is_read(backend):
    """Neither the unchecked ops nor the public ones (metadata checks only) read a value."""
    device = device_of(backend)
    Q = random_gram(8, 3, device=device)
    achieved = random_mask(8, 3, device=device)
    w = simplex_points(8, 3, device=device).requires_grad_()
    with fastadv.use_backend(backend):
        for namespace in (ops.unchecked, ops):
            with CountReads() as reads:
                namespace.simplex_project(w.detach(), ~achieved)
                torch.autograd.grad(namespace.simplex_distance_sq(w, achieved).sum(), [w])
                for solver in ("softmax-gd", "apgd"):
                    namespace.min_norm_weights(Q, achieved, 1.0, solver=solver, init=w.detach())
            assert reads.total == 0, namespace


def _bad_cases():
    Q, v = random_gram(4, 3), random_rows(4, 3)
    return [
        ("Q", lambda: ops.min_norm_weights(torch.randn(4, 3, 2)), ValueError, r"Q must have shape \[B, m, m\]"),
        ("Q", lambda: ops.min_norm_weights(torch.randn(4, 3)), ValueError, "Q must have 3 dimensions"),
        ("Q", lambda: ops.min_norm_weights(torch.randn(2, 33, 33)), ValueError,
         "1 to 32 tasks: min_norm_weights' limit; simplex_project and simplex_distance_sq take any m"),
        ("Q", lambda: ops.min_norm_weights(torch.randn(2, 0, 0)), ValueError, "1 to 32 tasks"),
        ("Q", lambda: ops.min_norm_weights(Q.long()), TypeError, "Q must be a floating"),
        ("achieved", lambda: ops.min_norm_weights(Q, torch.zeros(4, 2, dtype=torch.bool)), ValueError,
         "achieved must have the shape"),
        ("achieved", lambda: ops.min_norm_weights(Q, torch.zeros(4, 3)), TypeError, "achieved must be a bool"),
        ("init", lambda: ops.min_norm_weights(Q, init=torch.ones(4, 2)), ValueError, "init must have the shape"),
        ("init", lambda: ops.min_norm_weights(Q, init=torch.ones(4, 3, dtype=torch.float64)), TypeError,
         "init must have"),
        ("lam", lambda: ops.min_norm_weights(Q, lam=-1.0), ValueError, "lam must be"),
        ("lam", lambda: ops.min_norm_weights(Q, lam=math.inf), ValueError, "lam must be a finite"),
        ("lam", lambda: ops.min_norm_weights(Q, lam=math.nan), ValueError, "lam must be"),
        ("steps", lambda: ops.min_norm_weights(Q, steps=0), ValueError, "steps must be an integer >= 1"),
        ("steps", lambda: ops.min_norm_weights(Q, steps=2.5), TypeError, "steps must be an integer"),
        ("solver", lambda: ops.min_norm_weights(Q, solver="adam"), ValueError, "solver must be one of"),
        ("lr", lambda: ops.min_norm_weights(Q, solver="pgd", lr=0.1), ValueError, "lr"),
        ("lr", lambda: ops.min_norm_weights(Q, lr=-0.1), ValueError, "lr must be"),
        ("solver", lambda: ops.min_norm_weights(Q, solver="exact2"), ValueError, "exact2.*m = 2"),
        ("v", lambda: ops.simplex_project(torch.randn(4, 0)), ValueError,
         r"v must have shape \[B, m\] with m >= 1"),
        ("v", lambda: ops.simplex_project(torch.randn(4)), ValueError, "v must have 2 dimensions"),
        ("v", lambda: ops.simplex_project(torch.ones(4, 3, dtype=torch.int64)), TypeError, "v must be a floating"),
        ("mask", lambda: ops.simplex_project(v, torch.ones(4, 2, dtype=torch.bool)), ValueError,
         "mask must have the shape"),
        ("mask", lambda: ops.simplex_project(v, torch.ones(4, 3)), TypeError, "mask must be a bool"),
        ("w", lambda: ops.simplex_distance_sq(torch.randn(2, 0)), ValueError,
         r"w must have shape \[B, m\] with m >= 1"),
        ("achieved", lambda: ops.simplex_distance_sq(v, torch.ones(3, 3, dtype=torch.bool)), ValueError,
         "achieved must have the shape"),
    ]


@pytest.mark.parametrize("argument,call,error,message", _bad_cases(),
                         ids=[c[0] + str(i) for i, c in enumerate(_bad_cases())])
def test_bad_input_is_named(argument, call, error, message):
    with fastadv.use_backend("cpu"), pytest.raises(error, match=f"(min_norm_weights|simplex_project|"
                                                              f"simplex_distance_sq): .*{message}"):
        call()


def test_cpp_kernel_checks_are_a_second_line():
    Q = random_gram(4, 3)
    with pytest.raises(RuntimeError, match=r"Q must have shape \[B, m, m\]"):
        torch.ops.fastadv.min_norm_weights(torch.randn(4, 3, 2), None, None, 0.0, 0, 10, 0.005)
    with pytest.raises(RuntimeError, match="exact2 needs m = 2"):
        torch.ops.fastadv.min_norm_weights(Q, None, None, 0.0, 3, 10, 0.0)
    with pytest.raises(RuntimeError, match="solver must be"):
        torch.ops.fastadv.min_norm_weights(Q, None, None, 0.0, 7, 10, 0.0)
    with pytest.raises(RuntimeError, match="steps must be >= 1"):
        torch.ops.fastadv.min_norm_weights(Q, None, None, 0.0, 1, 0, 0.0)
    with pytest.raises(RuntimeError, match="mask must be a bool"):
        torch.ops.fastadv.simplex_project(torch.randn(4, 3), torch.ones(4, 3))
    with pytest.raises(RuntimeError, match=r"v must have shape \[B, m\] with m >= 1"):
        torch.ops.fastadv.simplex_project(torch.randn(4, 0), None)
    with pytest.raises(RuntimeError, match=r"Q must have shape \[B, m, m\] with 1 to 32 tasks \(min_norm_weights"):
        torch.ops.fastadv.min_norm_weights(torch.randn(2, 33, 33), None, None, 0.0, 0, 10, 0.005)


# ----------------------------------------------------------------------------- torch.library
def _ops(backend):
    if backend == "triton":
        return ops._TRITON.simplex_project, ops._TRITON.simplex_distance_sq, ops._TRITON.min_norm_weights
    return (torch.ops.fastadv.simplex_project.default, torch.ops.fastadv.simplex_distance_sq.default,
            torch.ops.fastadv.min_norm_weights.default)


@pytest.mark.parametrize("backend", [p for p in BACKENDS if p.values[0] != "cuda"])
@pytest.mark.parametrize("optional", [False, True], ids=["plain", "optional"])
def test_opcheck(backend, optional):
    device = device_of(backend)
    project, distance, min_norm = _ops(backend)
    v, mask = random_rows(5, 4, device=device), random_mask(5, 4, device=device)
    Q, init = random_gram(5, 4, device=device), simplex_points(5, 4, device=device)
    torch.library.opcheck(project, (v, mask if optional else None))
    torch.library.opcheck(distance, (simplex_points(5, 4, device=device).requires_grad_(), mask if optional else None,
                                     True))
    torch.library.opcheck(distance, (v, mask if optional else None, False))
    for solver in range(3):
        torch.library.opcheck(min_norm, (Q, mask if optional else None, init if optional else None, 1.0, solver, 3,
                                         0.01))
    torch.library.opcheck(min_norm, (random_gram(5, 2, device=device), None, None, 1.0, 3, 1, 0.0))


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend):
    """One TA-MOO weighting step traced as one graph: weights, Ω with its gradient, a projection."""
    device = device_of(backend)
    Q, achieved = random_gram(6, 3, device=device), random_mask(6, 3, device=device)

    def weighting(L, Q, achieved, w):
        weights, objective = L.min_norm_weights(Q, achieved, 1.0, solver="apgd", steps=5)
        omega = L.simplex_distance_sq(w, achieved)
        return weights, objective, omega, L.simplex_project(w.detach() - weights, ~achieved)

    def step(function, *args):
        outputs = function(*args)
        return outputs + torch.autograd.grad(outputs[2].sum(), [args[2]])

    w0 = simplex_points(6, 3, device=device)
    expected = step(lambda *a: weighting(reference, *a), Q.double().cpu(), achieved.cpu(),
                    w0.double().cpu().requires_grad_())
    torch._dynamo.reset()
    with fastadv.use_backend(backend):
        compiled = torch.compile(lambda *a: weighting(ops, *a), fullgraph=True, backend="aot_eager")
        got = step(compiled, Q, achieved, w0.clone().requires_grad_())
    for g, e in zip(got, expected):
        assert_close_to_exact(g.detach(), e.detach(), rtol=1e-4)
