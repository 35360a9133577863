"""Scalar activations shared by the cell kernels, chosen by precision at compile time.

float64 (checks): libm's tanh and exp, exact to the last bit or two.
float32 (training): tanh as a clamped rational function, sigmoid(x) = (1 + tanh(x/2)) / 2.
libm's exp and tanh are scalar calls that stop LLVM from vectorising the gate loops; a
rational function is plain arithmetic, runs 8 lanes wide, and is within 3e-7 of tanh (a few
float32 ulps). The clamps are written as `if`s, so a NaN falls through them and comes out NaN;
+-inf give +-1 as tanh does.
"""
import numpy as np
from numba import types
from numba.extending import overload

from ._jit import FASTMATH, kernel

_CLAMP = 7.90531110763549805  # beyond this the float32 tanh is +-1
# tanh(x) ~ x * P(x^2) / Q(x^2), the minimax fit used by Eigen for float
_P = (-2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11, 5.12229709037114e-08,
      1.48572235717979e-05, 6.37261928875436e-04, 4.89352455891786e-03)
_Q = (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03, 4.89352518554385e-03)
P0, P1, P2, P3, P4, P5, P6 = (np.float32(c) for c in _P)
Q0, Q1, Q2, Q3 = (np.float32(c) for c in _Q)
CLAMP = np.float32(_CLAMP)
HALF = np.float32(0.5)


def _tanh_f32(x):
    if x > CLAMP:
        x = CLAMP
    elif x < -CLAMP:
        x = -CLAMP
    x2 = x * x
    p = ((((((P0 * x2 + P1) * x2 + P2) * x2 + P3) * x2 + P4) * x2 + P5) * x2 + P6) * x
    q = ((Q0 * x2 + Q1) * x2 + Q2) * x2 + Q3
    return p / q


def tanh(x):
    """tanh, for use inside kernels."""
    return np.tanh(x)


def sigmoid(x):
    """The logistic function, for use inside kernels."""
    return 1.0 / (1.0 + np.exp(-x))


@overload(tanh, jit_options={"fastmath": FASTMATH}, inline="always")
def _tanh_impl(x):
    if x == types.float32:
        return _tanh_f32
    return lambda x: np.tanh(x)


@overload(sigmoid, jit_options={"fastmath": FASTMATH}, inline="always")
def _sigmoid_impl(x):
    if x == types.float32:
        return lambda x: HALF * tanh(HALF * x) + HALF
    # exp(-x) overflows to inf for very negative x, and 1/(1+inf) is exactly 0: no NaN
    return lambda x: 1.0 / (1.0 + np.exp(-x))


@kernel
def tanh_array(out, x):
    # out, x (N,): elementwise tanh, as the kernels compute it (used by tests)
    for i in range(x.shape[0]):
        out[i] = tanh(x[i])


@kernel
def sigmoid_array(out, x):
    for i in range(x.shape[0]):
        out[i] = sigmoid(x[i])
