"""Elementwise helpers shared by the kernels, built from exp and log only.

Core Triton has no tanh, log1p, softplus or logsigmoid, and the interpreter cannot call
libdevice; these forms are exact in float32 over the whole range (no overflow in exp).
"""
import triton
import triton.language as tl


@triton.jit
def log1p(x):
    # log(1 + x) with the cancellation of 1 + x corrected (Goldberg's trick): exact to
    # a few ulp for tiny x, where log(1 + x) alone would return 0.
    # The discarded branch divides by 1 where u == 1, so it never makes 0/0 or a warning.
    u = 1.0 + x
    exact = u == 1.0
    return tl.where(exact, x, tl.log(u) * (x / tl.where(exact, 1.0, u - 1.0)))


@triton.jit
def softplus(x):
    """log(1 + e^x) = max(x, 0) + log1p(e^(−|x|))."""
    return tl.maximum(x, 0.0) + log1p(tl.exp(-tl.abs(x)))


@triton.jit
def log_sigmoid(x):
    """log σ(x) = −softplus(−x)."""
    return -softplus(-x)


@triton.jit
def sigmoid(x):
    e = tl.exp(-tl.abs(x))
    return tl.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def tanh(x):
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x >= 0, t, -t)


@triton.jit
def gumbel_from_uniform(u):
    """−log(−log u), u clamped below at 1e-20 (only u = 0 is below it) to stay finite."""
    return -tl.log(-tl.log(tl.maximum(u, 1.0e-20)))


@triton.jit
def expm1(x):
    """e^x − 1 without the cancellation of exp(x) − 1 near 0 (Kahan's trick: the rounding
    error of u = e^x cancels in (u − 1)·x / log u).  Outside [−20, 80] u − 1 is already
    exact in float32 (−1 below, e^x above, +inf past overflow)."""
    u = tl.exp(x)
    um1 = u - 1.0
    plain = (u == 1.0) | (x < -20.0) | (x > 80.0)
    kahan = um1 * (x / tl.log(tl.where(plain, 2.0, u)))
    return tl.where(u == 1.0, x, tl.where(plain, um1, kahan))
