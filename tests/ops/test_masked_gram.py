"""masked_gram, the logits family's member op (V [M, B, C] → G [B, M, M]): every backend against
the float64 reference (values and gradients) on odd shapes, the eps guard, float64, gradcheck,
opcheck of the op and of its backward op, torch.compile, bad input, half types (GPU)."""
import inspect
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

import fastadv
from fastadv.ops import logits as ops
from fastadv.ops import _registry
from fastadv.reference import logits as reference
from tests.helpers import BACKENDS, CountReads, device_of

# The C++ kernels on every shape the issue names; the Triton interpreter (a program per sample)
# on shapes that still reach every path: one member (padded to two), non-powers of two, one
# column block and several (BLOCK_C is 256 at M = 3, 64 at M = 5), a label in every position.
SHAPES = [(members, batch, classes) for members in (1, 2, 3, 5) for batch in (1, 4097) for classes in (2, 10, 100, 1000)]
TRITON_SHAPES = [(1, 1, 2), (2, 7, 10), (3, 33, 300), (5, 4, 1000), (3, 64, 100)]


def backend_shapes(cpp_shapes=SHAPES, triton_shapes=TRITON_SHAPES):
    for param in BACKENDS:
        (name,) = param.values
        for members, batch, classes in triton_shapes if name == "triton" else cpp_shapes:
            yield pytest.param(name, members, batch, classes, marks=param.marks,
                               id=f"{name}-{members}x{batch}x{classes}")


def make_inputs(members, batch, classes, dtype=torch.float32, device="cpu", seed=0, probabilities=False):
    """(V, y): members that share a part of their logits (so the cosines spread over [-1, 1]),
    logits of scale 3 and one sample of large ones (±60); or their softmax (ADP's use)."""
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(1, batch, classes, generator=g, dtype=torch.float64)
    V = (shared + torch.randn(members, batch, classes, generator=g, dtype=torch.float64)) * 3
    V[:, 0, : classes // 2] += 60.0
    if probabilities:
        V = torch.softmax(V, dim=2)
    y = torch.randint(0, classes, (batch,), generator=g)
    return V.to(device=device, dtype=dtype), y.to(device)


def gram_and_gradient(fn, V, y, normalize, weights):
    """G and the gradient of Σ weights·G with respect to V."""
    leaf = V.detach().clone().requires_grad_()
    gram = fn(leaf, y, normalize)
    (grad,) = torch.autograd.grad((gram * weights.to(gram.dtype).to(gram.device)).sum(), [leaf])
    return gram.detach(), grad


def weights_like(members, batch, seed=5):
    return torch.randn(batch, members, members, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def assert_close_to_exact(got, exact, rtol=1e-4):
    """fp32 against the float64 oracle: relative 1e-4, absolute 1e-5 of the largest magnitude."""
    scale = max(1.0, exact.abs().max().item()) if exact.numel() else 1.0
    torch.testing.assert_close(got.double().cpu(), exact, rtol=rtol, atol=1e-5 * scale)


def assert_gradient_close(got, exact, V, y, normalize, weights, rtol=1e-4):
    """fp32 gradients against the float64 oracle. Through the normalisation the gradient of member
    m is (dÛ_m − û_m(û_m·dÛ_m)) / ‖u_m‖: terms of size ‖dÛ_m‖ / ‖u_m‖ that cancel, completely
    when C = 2 (one masked class: û = ±e_k, whose gradient is 0). Their rounding, not the
    gradient's size, is the error any float32 implementation makes: at [2, 4097, 2], where a masked
    vector has norm 3e-4, torch's own float32 formula is off by 2.4e-4 (the kernels by 1.4e-4) of
    an exact 0. So the absolute tolerance is 1e-5 of max(1, that size) per member and sample (the
    reference's float64 dÛ); relative 1e-4 as everywhere."""
    V, weights = V.double().cpu(), weights.to(torch.float64)
    u = V * (1 - F.one_hot(y.cpu(), V.shape[2]).double())
    divisor = torch.linalg.vector_norm(u, dim=2, keepdim=True).clamp_min(reference.MASKED_GRAM_EPS)
    unit = (u / divisor if normalize else u).requires_grad_()
    (d_unit,) = torch.autograd.grad((torch.einsum("mbc,nbc->bmn", unit, unit) * weights).sum(), [unit])
    size = d_unit.abs().amax(dim=2, keepdim=True) / (divisor if normalize else 1.0)
    difference = (got.double().cpu() - exact).abs()
    allowed = 1e-5 * size.clamp_min(1.0) + rtol * exact.abs()
    assert bool((difference <= allowed).all()), (
        f"gradient: {int((difference > allowed).sum())} of {difference.numel()} elements off; worst "
        f"{(difference / allowed).max().item():.3g} × the tolerance")


@pytest.mark.parametrize("backend,members,batch,classes", list(backend_shapes()))
@pytest.mark.parametrize("normalize", [True, False], ids=["normalize", "raw"])
def test_matches_reference(backend, members, batch, classes, normalize):
    device = device_of(backend)
    V, y = make_inputs(members, batch, classes, device=device)
    weights = weights_like(members, batch)
    exact, exact_grad = gram_and_gradient(reference.masked_gram, V.double().cpu(), y.cpu(), normalize, weights)
    with fastadv.use_backend(backend):
        got, got_grad = gram_and_gradient(ops.masked_gram, V, y, normalize, weights)
    assert got.shape == (batch, members, members) and got.dtype == torch.float32
    assert got_grad.shape == V.shape and got_grad.dtype == torch.float32
    assert_close_to_exact(got, exact)
    assert_gradient_close(got_grad, exact_grad, V, y, normalize, weights)
    if normalize:  # cosines: |G| <= 1, the diagonal 1 (no masked vector is zero here)
        assert bool((got.abs() <= 1 + 1e-6).all())
        torch.testing.assert_close(got.diagonal(dim1=1, dim2=2).cpu(), torch.ones(batch, members))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("members", [1, 2, 3, 4, 5, 6, 32])
@pytest.mark.parametrize("classes", [7, 37])
def test_every_member_count(backend, members, classes):
    """Each path by number of members: the CPU's code compiled for 1 to 4 members and its pairs
    in passes of 16 beyond (32 members: 528 pairs, 33 passes), rows shorter than a block (7) and
    ending in an overlapped block (37); the Triton program's padded members (BLOCK_M up to 32)."""
    device = device_of(backend)
    V, y = make_inputs(members, 5, classes, device=device, seed=members)
    weights = weights_like(members, 5)
    for normalize in (True, False):
        exact, exact_grad = gram_and_gradient(reference.masked_gram, V.double().cpu(), y.cpu(), normalize, weights)
        with fastadv.use_backend(backend):
            got, got_grad = gram_and_gradient(ops.masked_gram, V, y, normalize, weights)
        assert_close_to_exact(got, exact)
        assert_gradient_close(got_grad, exact_grad, V, y, normalize, weights)


# Compiles the member kernels for an NVIDIA GPU (no GPU needed: Triton's compiler and its ptxas
# run on the CPU) and prints how many TF32 instructions each one's PTX holds.
_TF32_PROBE = textwrap.dedent("""
    import triton, triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from fastadv.kernels import logits as K
    common = {"y_ptr": "*i64", "M": "i32", "B": "i32", "C": "i32", "ACC": "constexpr", "NORMALIZE": "constexpr",
              "BLOCK_M": "constexpr", "BLOCK_C": "constexpr"}
    kernels = [(K._masked_gram_kernel, dict(v_ptr="*fp32", gram_ptr="*fp32")),
               (K._masked_gram_backward_kernel, dict(grad_ptr="*fp32", v_ptr="*fp32", out_ptr="*fp32"))]
    for kernel, pointers in kernels:
        for block_m in (16, 32):
            for normalize in (False, True):
                source = ASTSource(fn=kernel, signature={**pointers, **common}, constexprs=dict(
                    ACC=tl.float32, NORMALIZE=normalize, BLOCK_M=block_m, BLOCK_C=16))
                ptx = triton.compile(source, target=GPUTarget("cuda", 90, 32)).asm["ptx"]
                print(kernel.__name__, block_m, normalize, ptx.count("tf32"))
""")


@pytest.mark.triton
def test_triton_member_kernels_compile_without_tf32():
    """The float32 member kernels, compiled for sm_90 here (without the interpreter, in a fresh
    process), hold no TF32 instruction: a Triton combine pass may turn a sum of broadcast products
    into a TF32 tt.dot, which loses float32's precision on the GPU and which the interpreter (full
    float32) never shows."""
    pytest.importorskip("triton.backends.nvidia.compiler")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", _TF32_PROBE], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    counts = [line.split() for line in done.stdout.splitlines()]
    assert len(counts) == 8, done.stdout
    assert all(count[-1] == "0" for count in counts), done.stdout


@pytest.mark.parametrize("backend", BACKENDS)
def test_probabilities_adp(backend):
    """On softmax outputs (ADP's M̃ᵀM̃), where the true class holds almost all the mass and the
    masked vectors are small: masking by a factor (not by subtracting the true class's term)
    keeps their digits."""
    device = device_of(backend)
    V, y = make_inputs(3, 64, 10, device=device, probabilities=True, seed=3)
    V = V.clone()
    V[:, :, 0] = V[:, :, 0] + 50.0  # class 0: nearly all the mass after the softmax below
    V = torch.softmax(V, dim=2)
    y = torch.zeros_like(y)
    weights = weights_like(3, 64)
    exact, exact_grad = gram_and_gradient(reference.masked_gram, V.double().cpu(), y.cpu(), True, weights)
    with fastadv.use_backend(backend):
        got, got_grad = gram_and_gradient(ops.masked_gram, V, y, True, weights)
    assert_close_to_exact(got, exact)
    assert_close_to_exact(got_grad, exact_grad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_off_diagonal_is_the_masked_cosine(backend):
    """G's off-diagonal entries are ALS's cos_m(a, b) = ⟨a⊙m, b⊙m⟩ / (‖a⊙m‖·‖b⊙m‖) (seed 000),
    written here with torch's cosine_similarity."""
    device = device_of(backend)
    V, y = make_inputs(3, 17, 10, device=device, seed=1)
    with fastadv.use_backend(backend):
        gram = ops.masked_gram(V, y)
    masked = V.double().cpu() * (1 - F.one_hot(y.cpu(), 10).double())
    for a, b in ((0, 1), (0, 2), (1, 2)):
        cosine = F.cosine_similarity(masked[a], masked[b], dim=1)
        torch.testing.assert_close(gram[:, a, b].double().cpu(), cosine, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(gram[:, b, a].double().cpu(), cosine, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", [p for p in BACKENDS if p.values[0] != "cuda"])
@pytest.mark.parametrize("normalize", [True, False], ids=["normalize", "raw"])
def test_float64_matches_reference_tightly(backend, normalize):
    device = device_of(backend)
    V, y = make_inputs(3, 33, 17, dtype=torch.float64, device=device)
    weights = weights_like(3, 33)
    exact, exact_grad = gram_and_gradient(reference.masked_gram, V.cpu(), y.cpu(), normalize, weights)
    with fastadv.use_backend(backend):
        got, got_grad = gram_and_gradient(ops.masked_gram, V, y, normalize, weights)
    for g, e in ((got, exact), (got_grad, exact_grad)):
        assert g.dtype == torch.float64
        torch.testing.assert_close(g.cpu(), e, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("normalize", [True, False], ids=["normalize", "raw"])
@pytest.mark.parametrize("members", [1, 2, 3])
def test_gradcheck_float64(backend, normalize, members):
    V, y = make_inputs(members, 3, 5, dtype=torch.float64, seed=2)
    V = (V / 10).requires_grad_()
    with fastadv.use_backend(backend):
        assert torch.autograd.gradcheck(lambda v: ops.masked_gram(v, y, normalize), (V,))


# ----------------------------------------------------------------------------- the eps guard
def _zero_masked_vectors(device, dtype=torch.float32):
    """C = 2 with member 1's other class at 0 in every sample, member 0's in sample 2, and sample
    3 all zero: their masked vectors are zero. The rest random."""
    g = torch.Generator().manual_seed(7)
    V = torch.randn(3, 4, 2, generator=g, dtype=torch.float64) * 3
    y = torch.tensor([0, 1, 0, 1])
    other = 1 - y
    V[1, torch.arange(4), other] = 0.0
    V[0, 2, other[2]] = 0.0
    V[:, 3] = 0.0
    return V.to(device=device, dtype=dtype), y.to(device)


@pytest.mark.parametrize("backend", BACKENDS + [pytest.param("reference", id="reference")])
def test_eps_guard_zero_masked_vector(backend):
    """An all-zero masked vector normalises to zero (u / max(‖u‖, 1e-12)): its row and column of
    G are 0, the diagonal entry too; forward and backward have no NaN, and the gradient is the
    reference's (the eps branch of the max: dÛ / eps, finite)."""
    device = device_of(backend)
    V, y = _zero_masked_vectors(device)
    weights = weights_like(3, 4)
    exact, exact_grad = gram_and_gradient(reference.masked_gram, V.double().cpu(), y.cpu(), True, weights)
    with fastadv.use_backend(backend):
        got, got_grad = gram_and_gradient(ops.masked_gram, V, y, True, weights)
    got, got_grad = got.cpu(), got_grad.cpu()
    assert bool(torch.isfinite(got).all()) and bool(torch.isfinite(got_grad).all())
    zero = torch.zeros(3)
    for b in range(4):
        torch.testing.assert_close(got[b, 1], zero)
        torch.testing.assert_close(got[b, :, 1], zero)
    torch.testing.assert_close(got[2, 0], zero)
    torch.testing.assert_close(got[3], torch.zeros(3, 3))
    # the others' diagonal: 1
    torch.testing.assert_close(got[[0, 1], 0, 0], torch.ones(2))
    torch.testing.assert_close(got[:3, 2, 2], torch.ones(3))
    assert_close_to_exact(got, exact)
    # dÛ / eps: the zero vectors' gradients are of order 1e12; compared relatively, row by row
    for m in range(3):
        for b in range(4):
            e = exact_grad[m, b]
            torch.testing.assert_close(got_grad[m, b].double(), e, rtol=1e-4, atol=1e-5 * max(1.0, e.abs().max().item()))
    assert got_grad[1, 0].abs().max() > 1e10  # the eps branch, not a zero gradient


def test_eps_guard_reference_gradient_is_finite():
    """The reference itself: no NaN from the norm of a zero vector in its backward."""
    V, y = _zero_masked_vectors("cpu", torch.float64)
    V.requires_grad_()
    (grad,) = torch.autograd.grad(reference.masked_gram(V, y).sum(), [V])
    assert bool(torch.isfinite(grad).all())


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_stays_in_its_sample(backend):
    device = device_of(backend)
    V, y = make_inputs(3, 4, 10, device=device)
    V = V.clone()
    V[1, 2, (y[2].item() + 1) % 10] = math.nan
    with fastadv.use_backend(backend):
        gram = ops.masked_gram(V, y)
    assert bool(torch.isnan(gram[2]).any())
    assert bool(torch.isfinite(gram[[0, 1, 3]]).all())


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    device = device_of(backend)
    V = torch.empty(3, 0, 10, device=device, requires_grad=True)
    y = torch.empty(0, dtype=torch.int64, device=device)
    with fastadv.use_backend(backend):
        gram = ops.masked_gram(V, y)
        assert gram.shape == (0, 3, 3)
        (grad,) = torch.autograd.grad(gram.sum(), [V])
    assert grad.shape == (3, 0, 10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs_and_gradients(backend):
    """A V that is a transposed [B, M, C] stack and an expanded incoming gradient (sum())."""
    device = device_of(backend)
    V, y = make_inputs(3, 6, 10, device=device)
    V_bmc = V.transpose(0, 1).contiguous().transpose(0, 1)
    assert not V_bmc.is_contiguous()
    exact, exact_grad = gram_and_gradient(reference.masked_gram, V.double().cpu(), y.cpu(), True,
                                          torch.ones(6, 3, 3, dtype=torch.float64))
    leaf = V_bmc.detach().clone().requires_grad_()
    with fastadv.use_backend(backend):
        gram = ops.masked_gram(leaf, y)
        (grad,) = torch.autograd.grad(gram.sum(), [leaf])
    assert_close_to_exact(gram, exact)
    assert_close_to_exact(grad, exact_grad)


def test_backward_twice_with_retain_graph():
    V, y = make_inputs(3, 5, 10)
    weights = weights_like(3, 5)
    _, exact_grad = gram_and_gradient(reference.masked_gram, V.double(), y, True, weights)
    leaf = V.clone().requires_grad_()
    with fastadv.use_backend("cpu"):
        loss = (ops.masked_gram(leaf, y) * weights.float()).sum()
    for _ in range(2):
        (grad,) = torch.autograd.grad(loss, [leaf], retain_graph=True)
        assert_close_to_exact(grad, exact_grad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_differentiable_once(backend):
    """A double backward through the backward op raises rather than giving a wrong (zero) second
    derivative; create_graph alone still gives the right first derivative."""
    device = device_of(backend)
    V, y = make_inputs(3, 4, 5, device=device)
    weights = weights_like(3, 4)
    _, exact_grad = gram_and_gradient(reference.masked_gram, V.double().cpu(), y.cpu(), True, weights)
    leaf = V.clone().requires_grad_()
    with fastadv.use_backend(backend):
        (grad,) = torch.autograd.grad((ops.masked_gram(leaf, y) * weights.float().to(device)).sum(), [leaf],
                                      create_graph=True)
        assert_close_to_exact(grad.detach(), exact_grad)
        with pytest.raises(RuntimeError, match="not implemented|no autograd formula"):
            torch.autograd.grad(grad.sum(), [leaf])


def test_registrations():
    """The op and its backward op on the CPU and, where compiled, on CUDA; the op's autograd is the
    C++ node of csrc/autograd/logits.cpp; the backward op's refuses to be differentiated."""
    keys = ["CPU"] + (["CUDA"] if fastadv.backend.cuda_compiled() else [])
    for op in ("fastadv::masked_gram", "fastadv::_masked_gram_backward"):
        for key in keys + ["Autograd"]:
            assert torch._C._dispatch_has_kernel_for_dispatch_key(op, key), (op, key)
    table = torch._C._dispatch_dump_table("fastadv::masked_gram")
    autograd = next(line for line in table.splitlines() if line.startswith("AutogradCPU:"))
    assert "csrc/autograd/logits.cpp" in autograd.replace("\\", "/")


def test_auto_picks_the_cpu_kernel_and_half_falls_back_to_reference():
    V, y = make_inputs(3, 4, 10)
    assert fastadv.backend.select("masked_gram", V.device, V.dtype) == "cpu"
    with fastadv.use_backend("auto"):
        torch.testing.assert_close(ops.masked_gram(V.bfloat16(), y), reference.masked_gram(V.bfloat16(), y))
    with fastadv.use_backend("cpu"), pytest.raises(fastadv.BackendUnavailable):
        ops.masked_gram(V.bfloat16(), y)


# ----------------------------------------------------------------------------- the API
def test_public_names_and_signatures():
    """Other code is written against these: the checked op, the unchecked one, argument order."""
    assert "masked_gram" in ops.__all__ and fastadv.ops.masked_gram is ops.masked_gram
    for fn in (ops.masked_gram, ops.unchecked.masked_gram):
        parameters = inspect.signature(fn).parameters
        assert list(parameters) == ["V", "y", "normalize"] and parameters["normalize"].default is True


@pytest.mark.parametrize("backend", BACKENDS)
def test_unchecked_reads_no_value_and_the_public_op_one(backend):
    """The fused paths (the reference, the fallback, uses one_hot, which checks the labels)."""
    V, y = make_inputs(3, 8, 10, device=device_of(backend))
    V.requires_grad_()
    with fastadv.use_backend(backend):
        with CountReads() as unchecked_reads:
            torch.autograd.grad(ops.unchecked.masked_gram(V, y, True).sum(), [V])
        with CountReads() as public_reads:
            ops.masked_gram(V, y)
    assert unchecked_reads.total == 0
    assert public_reads.total == 1  # the labels' range, once


def _bad_cases():
    V, y = torch.randn(3, 4, 5), torch.tensor([0, 1, 2, 3])
    return [
        ("V", lambda: ops.masked_gram(torch.randn(4, 5), y), ValueError, "V must have 3 dimensions"),
        ("V", lambda: ops.masked_gram(torch.ones(3, 4, 5, dtype=torch.int64), y), TypeError, "V must be a floating"),
        ("V", lambda: ops.masked_gram([[1.0]], y), TypeError, "V must be a torch.Tensor"),
        ("V", lambda: ops.masked_gram(torch.randn(0, 4, 5), y), ValueError, "V must have shape"),
        ("V", lambda: ops.masked_gram(torch.randn(3, 4, 0), y[:4]), ValueError, "at least one class"),
        ("V", lambda: ops.masked_gram(torch.randn(ops.MAX_MEMBERS + 1, 4, 5), y), ValueError, "1 to 32 members"),
        ("y", lambda: ops.masked_gram(V, y[:3]), ValueError, r"y must have shape \[B\] = \[4\]"),
        ("y", lambda: ops.masked_gram(V, y[None]), ValueError, r"y must have shape \[B\]"),
        ("y", lambda: ops.masked_gram(V, torch.tensor([0, 1, 2, 5])), ValueError, r"y must lie in \[0, 5\)"),
        ("y", lambda: ops.masked_gram(V, torch.tensor([0, -1, 2, 3])), ValueError, "y must lie in"),
        ("y", lambda: ops.masked_gram(V, y.float()), TypeError, "y must be an integer"),
        ("normalize", lambda: ops.masked_gram(V, y, 1), TypeError, "normalize must be a bool"),
    ]


@pytest.mark.parametrize("argument,call,error,message", _bad_cases(),
                         ids=[c[0] + str(i) for i, c in enumerate(_bad_cases())])
def test_bad_input_is_named(argument, call, error, message):
    with fastadv.use_backend("cpu"), pytest.raises(error, match=f"masked_gram: .*{message}"):
        call()


def test_cpp_kernel_checks_are_a_second_line():
    V, y = torch.randn(3, 4, 5), torch.tensor([0, 1, 2, 3])
    with pytest.raises(RuntimeError, match=r"V must have shape \[M, B, C\]"):
        torch.ops.fastadv.masked_gram(torch.randn(4, 5), y, True)
    with pytest.raises(RuntimeError, match="y must be int64"):
        torch.ops.fastadv.masked_gram(V, y.int(), True)
    with pytest.raises(RuntimeError, match=r"y must have shape \[4\]"):
        torch.ops.fastadv.masked_gram(V, y[:3], True)
    with pytest.raises(RuntimeError, match="1 to 32 members"):
        torch.ops.fastadv.masked_gram(torch.randn(33, 4, 5), y, True)
    with pytest.raises(RuntimeError, match=r"incoming gradient must have shape \[4, 3, 3\]"):
        torch.ops.fastadv._masked_gram_backward(torch.randn(4, 3, 2), V, y, True)
    with pytest.raises(RuntimeError, match="floating"):
        torch.ops.fastadv.masked_gram(V.long(), y, True)


# ----------------------------------------------------------------------------- torch.library
def _op_and_backward(backend):
    """The ops the public op runs on ``backend``: masked_gram and its backward op."""
    if backend == "triton":
        from fastadv.ops.logits import _TRITON
        return _TRITON.masked_gram, getattr(_TRITON, "_masked_gram_backward")
    return torch.ops.fastadv.masked_gram.default, torch.ops.fastadv._masked_gram_backward.default


@pytest.mark.parametrize("backend", [p for p in BACKENDS if p.values[0] != "cuda"])
@pytest.mark.parametrize("normalize", [True, False], ids=["normalize", "raw"])
def test_opcheck(backend, normalize):
    device = device_of(backend)
    V, y = make_inputs(3, 5, 7, device=device)
    forward, backward = _op_and_backward(backend)
    torch.library.opcheck(forward, (V.clone().requires_grad_(), y, normalize))
    torch.library.opcheck(backward, (torch.randn(5, 3, 3, device=device), V, y, normalize))


def test_public_op_calls_the_registered_op(monkeypatch):
    """What opcheck checks is what the public op runs."""
    calls = []
    choose = ops._implementation

    def recording(*args):
        op = choose(*args)
        return lambda *arguments: calls.append(op) or op(*arguments)

    monkeypatch.setattr(ops, "_implementation", recording)
    V, y = make_inputs(3, 5, 7)
    with fastadv.use_backend("cpu"):
        ops.masked_gram(V, y)
    assert [_registry.operator_of(op) for op in calls] == ["fastadv::masked_gram"]


def _diversity_loss(L, V, y):
    """ALS/ADP style, on the ops of ``L`` (the fused ops or the reference): the mean off-diagonal
    masked cosine of the logits, a term of the probabilities' Gram (ADP's M̃ᵀM̃; its
    log-determinant would amplify float32's rounding by the matrix's condition number, which the
    comparison with the float64 reference would then measure) and the unnormalised Gram."""
    members = V.shape[0]
    gram = L.masked_gram(V, y, True)
    off = gram.sum(dim=(1, 2)) - gram.diagonal(dim1=1, dim2=2).sum(dim=1)
    adp = L.masked_gram(torch.softmax(V, dim=2), y, True)
    return ((off / (members * (members - 1))).mean() + (adp ** 2).mean()
            + L.masked_gram(V, y, False).mean() * 1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend):
    """The public op traced in one graph (fullgraph) with its backward: the loss and the
    gradient are the reference's."""
    device = device_of(backend)
    V, y = make_inputs(3, 6, 10, device=device)

    def step(function, V, y):
        loss = function(V, y)
        return (loss,) + torch.autograd.grad(loss, [V])

    expected = step(lambda *a: _diversity_loss(reference, *a), V.double().cpu().requires_grad_(), y.cpu())
    torch._dynamo.reset()
    with fastadv.use_backend(backend):
        compiled = torch.compile(lambda *a: _diversity_loss(ops, *a), fullgraph=True, backend="aot_eager")
        got = step(compiled, V.clone().requires_grad_(), y)
    for g, e in zip(got, expected):
        assert_close_to_exact(g.detach(), e.detach())


@pytest.mark.parametrize("backend", [pytest.param("cuda", marks=pytest.mark.cuda),
                                     pytest.param("triton", marks=[pytest.mark.triton, pytest.mark.cuda])])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_half_types_within_twice_torch_error(backend, dtype):
    """Half inputs on the GPU paths (DESIGN.md, numerics): G's and the gradient's error against
    the float32 reference of the same (rounded) inputs is at most twice the error of the
    reference run by PyTorch in the half dtype."""
    device = device_of(backend)
    V, y = make_inputs(3, 64, 100, dtype=dtype, device=device)
    weights = weights_like(3, 64).to(dtype).double()
    exact, exact_grad = gram_and_gradient(reference.masked_gram, V.float(), y, True, weights)
    torch_half, torch_grad = gram_and_gradient(reference.masked_gram, V, y, True, weights)
    with fastadv.use_backend(backend):
        got, got_grad = gram_and_gradient(ops.masked_gram, V, y, True, weights)
    for what, g, t, e in (("G", got, torch_half, exact), ("gradient", got_grad, torch_grad, exact_grad)):
        assert g.dtype == dtype
        ours = (g.float() - e).abs().max().item()
        theirs = (t.float() - e).abs().max().item()
        assert ours <= 2 * theirs + 1e-6, f"{what}: {ours} > 2 × {theirs}"
