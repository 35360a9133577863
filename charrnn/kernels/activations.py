"""Scalar activations shared by the cell kernels, chosen by precision at compile time.

float64 (checks): libm's tanh and exp, exact to the last bit or two.
float32 (training): tanh as a clamped rational function, sigmoid(x) = (1 + tanh(x/2)) / 2,
and exp by range reduction (x = n ln2 + r) and a polynomial, 2^n built from its bits.
libm's exp and tanh are scalar calls that stop LLVM from vectorising the loops around them;
these are plain arithmetic and run 8 lanes wide. Over every float32 input, tanh is within 2.9e-7
of libm with its multiply-adds fused, as on every x86 with FMA, and within 4.1e-7 on one that
rounds them apart (SSE or AVX only: Nehalem, Sandy Bridge, the Atom-line Celerons); the tests
allow 3e-7 and 4.2e-7, about 5 and 7 float32 ulps below 1 (+-inf give +-0.99999976, its value at
the clamp). exp from -86.6 up to float32's overflow is within 8.5e-8 relative (about one float32
ulp) either way; the tests allow 3.1e-7 (5 ulps). The clamps are written as `if`s, so a NaN
falls through them and comes out NaN (tests/test_activations.py).
"""
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from ._jit import ERROR_MODEL, FASTMATH, kernel

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
    p = muladd(muladd(muladd(P0, x2, P1), x2, P2), x2, P3)  # Horner's steps, each fused
    p = muladd(muladd(muladd(p, x2, P4), x2, P5), x2, P6) * x
    q = muladd(muladd(muladd(Q0, x2, Q1), x2, Q2), x2, Q3)
    return p / q


@intrinsic
def _float32_from_bits(typingctx, bits):
    """Reinterpret an int32's bits as a float32 (no conversion)."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@intrinsic
def muladd(typingctx, a, b, c):
    """a * b + c, fused into one rounding where the machine has FMA (LLVM's fmuladd). Written
    out because the kernels compile without fast-math flags, `contract` among them (_jit.py):
    where LLVM fuses on its own depends on the code around, so two compiles of one function
    could round differently."""
    if not (a == b == c) or a not in (types.float32, types.float64):
        return None
    sig = a(a, b, c)

    def codegen(context, builder, signature, args):
        t = context.get_value_type(signature.args[0])
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(t, [t, t, t]),
                                            f"llvm.fmuladd.f{signature.args[0].bitwidth}")
        return builder.call(fn, args)

    return sig, codegen


@intrinsic
def maxnum(typingctx, a, b):
    """The larger of two floats of one type; if one is NaN, the other (LLVM's maxnum, C's
    fmax). A maximum over an array written with it is order-free, so LLVM (22 here) vectorises
    it without no-NaN flags; one written with a comparison it leaves scalar, as its answer with
    a NaN depends on the order."""
    if a != b or a not in (types.float32, types.float64):
        return None
    sig = a(a, b)

    def codegen(context, builder, signature, args):
        t = context.get_value_type(signature.args[0])
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(t, [t, t]),
                                            f"llvm.maxnum.f{signature.args[0].bitwidth}")
        return builder.call(fn, args)

    return sig, codegen


LOG2E = np.float32(1.44269504088896341)
LN2_HI = np.float32(0.693359375)  # ln 2 split in two, so that n * LN2_HI is exact
LN2_LO = np.float32(-2.12194440e-4)
EXP_MIN = np.float32(-86.6)  # below this exp(x) < 2.5e-38, nearly subnormal: 0 is close enough
LOWEST_EXPONENT = np.float32(-126.0)  # of a normal float32
EXP_MAX = np.float32(88.72283)  # ln of float32's largest: above it exp(x) overflows, inf as libm gives
INF = np.float32(np.inf)
E0, E1, E2, E3, E4, E5 = (np.float32(c) for c in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3,
                                                  4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1))
# Also the cells' constants: a float literal is a float64 to numba, and `1.0 - x` of a float32 x
# is computed in float64, converted there and back (on AVX-512 two 8-wide halves for each 16
# lanes); these keep a float32 model's arithmetic in float32, and widen exactly in float64 code
ONE = np.float32(1.0)
ZERO = np.float32(0.0)


def _exp_f32(x):
    # Cephes expf: exp(x) = 2^n * exp(r), |r| <= ln2/2, exp(r) by a degree-6 polynomial
    tiny = x < EXP_MIN
    huge = x > EXP_MAX
    if huge:
        x = EXP_MAX
    elif tiny:
        x = EXP_MIN
    n = np.floor(x * LOG2E + HALF)
    r = muladd(-n, LN2_LO, muladd(-n, LN2_HI, x))
    p = muladd(muladd(muladd(muladd(muladd(E0, r, E1), r, E2), r, E3), r, E4), r, E5)
    p = muladd(p * r, r, r) + ONE
    # 2^n from its bits, as 2 * 2^(n-1): just below the overflow n is 128, past float32's
    # exponents. maxnum changes no n the clamps let through; a NaN x, whose n would convert
    # to no defined integer, becomes the floor, and p, already NaN, makes y NaN.
    n = maxnum(n - ONE, LOWEST_EXPONENT)
    scale = _float32_from_bits((np.int32(n) + np.int32(127)) << np.int32(23))
    y = (p + p) * scale
    if tiny:
        y = ZERO
    elif huge:
        y = INF
    return y


def exp(x):
    """exp, for use inside kernels."""
    return np.exp(x)


def tanh(x):
    """tanh, for use inside kernels."""
    return np.tanh(x)


def sigmoid(x):
    """The logistic function, for use inside kernels."""
    return 1.0 / (1.0 + np.exp(-x))


@overload(tanh, jit_options={"fastmath": FASTMATH, "error_model": ERROR_MODEL})
def _tanh_impl(x):
    if x == types.float32:
        return _tanh_f32
    return lambda x: np.tanh(x)


@overload(exp, jit_options={"fastmath": FASTMATH, "error_model": ERROR_MODEL})
def _exp_impl(x):
    if x == types.float32:
        return _exp_f32
    return lambda x: np.exp(x)


@overload(sigmoid, jit_options={"fastmath": FASTMATH, "error_model": ERROR_MODEL})
def _sigmoid_impl(x):
    if x == types.float32:
        return lambda x: muladd(HALF, tanh(HALF * x), HALF)
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


@kernel
def exp_array(out, x):
    for i in range(x.shape[0]):
        out[i] = exp(x[i])
