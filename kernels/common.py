"""Triton helpers every family's kernels share (imported by kernels/<family>.py)."""
import triton
import triton.language as tl


@triton.jit
def sqrt(v, ACC: tl.constexpr):
    # Triton's float32 sqrt and `/` are approximate on the GPU; the C++ kernels use IEEE ones.
    # float64 has no approximate variants, so the plain operations are already exact there.
    if ACC == tl.float32:
        return tl.sqrt_rn(v)
    else:
        return tl.sqrt(v)


@triton.jit
def divide(a, b, ACC: tl.constexpr):
    if ACC == tl.float32:
        return tl.div_rn(a, b)
    else:
        return a / b


@triton.jit
def row_sum(x):
    return tl.sum(x, axis=1, keep_dims=True)


@triton.jit
def row_max(x):
    return tl.max(x, axis=1, keep_dims=True)
