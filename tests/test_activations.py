"""The kernels' own tanh, sigmoid and exp (float32: polynomial; float64: libm) against numpy in
float64, over the whole float32 range, and what they make of NaN and +-inf: as compiled for this
machine, and for an x86 without fused multiply-adds."""
import os
import platform
import subprocess
import sys

import numba
import numpy as np
import pytest

from charrnn.kernels.activations import exp_array, maxnum, sigmoid_array, tanh_array
from charrnn.kernels.panels import host_features

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLOAT32_MAX_LOG = float(np.log(np.float64(np.finfo(np.float32).max)))  # 88.7228...
# tanh's rational function rounds each step of its Horner sums once where the multiply-adds fuse
# (x86 with FMA: Haswell, Zen and after) and twice where they do not (x86 with SSE or AVX only:
# Nehalem, Sandy Bridge, the Atom-line Celerons and Pentiums). Over every float32 input the largest
# errors are 2.92e-7 and 4.10e-7, at 5.126039 and 5.827876 (WORST); the bounds are about 5 and 7
# float32 ulps below 1. sigmoid's: 1.69e-7 and 2.27e-7, at 8.003398 and 11.5491.
TANH_BOUND = {True: 3e-7, False: 4.2e-7}
WORST = np.int32([0x40A40883, 0x40BA7DF6, 0x41000DEB, 0x4138C91D]).view(np.float32)
SIGMOID_BOUND = 3e-7
FUSED = "+fma" in host_features().split(",")  # elsewhere than x86, the looser bound


def run(fn, x):
    out = np.empty_like(x)
    fn(out, x)
    return out


def grid(lo, hi, n=400_001):
    return np.linspace(lo, hi, n).astype(np.float32)


GATE_INPUTS = np.concatenate([grid(-12, 12), grid(-100, 100, 20_001), WORST, -WORST,
                              np.float32([-1e30, 1e30, -np.inf, np.inf])])
EXP_INPUTS = np.concatenate([grid(-86.6, 0), grid(0, FLOAT32_MAX_LOG - 1e-4), np.float32([-86.59, 88.4, 88.6, 88.72])])
NAN_INPUTS = np.float32([0.5 if i % 3 == 0 else np.nan for i in range(19)])  # every lane and a remainder


def logistic(x):
    return 1 / (1 + np.exp(-x))


def largest_error(got, ref):
    with np.errstate(over="ignore"):
        expected = ref(GATE_INPUTS.astype(np.float64))
    return np.abs(got.astype(np.float64) - expected).max()


def check_exp(got):
    expected = np.exp(EXP_INPUTS.astype(np.float64))
    got = got.astype(np.float64)
    assert np.isfinite(got).all()  # 88.4 to 88.72 once came out inf: 2^128 has no float32 exponent
    assert (np.abs(got - expected) / expected).max() <= 3.1e-7
    ulp = np.spacing(expected.astype(np.float32)).astype(np.float64)
    assert (np.abs(got - expected) / ulp).max() < 5


def check_nan_in_nan_out(out):
    assert np.isnan(out[np.isnan(NAN_INPUTS)]).all() and np.isfinite(out[~np.isnan(NAN_INPUTS)]).all()


def test_float32_tanh_and_sigmoid_within_their_bounds_everywhere():
    assert largest_error(run(tanh_array, GATE_INPUTS), np.tanh) <= TANH_BOUND[FUSED]
    assert largest_error(run(sigmoid_array, GATE_INPUTS), logistic) <= SIGMOID_BOUND


def test_float32_exp_within_5_ulps_up_to_overflow():
    check_exp(run(exp_array, EXP_INPUTS))


COMPILED_FOR = """
import sys
import numpy as np
from charrnn.kernels.activations import exp_array, sigmoid_array, tanh_array
from charrnn.kernels.panels import numba_target
inputs, out = np.load(sys.argv[1]), {}
for name, fn, x in (("tanh", tanh_array, "gates"), ("sigmoid", sigmoid_array, "gates"), ("exp", exp_array, "exp")):
    for kind in (x, "nan"):
        out[name + " " + kind] = np.empty_like(inputs[kind])
        fn(out[name + " " + kind], inputs[kind])
np.savez(sys.argv[2], **out)
print(numba_target()[0])
print(" ".join(line.strip() for line in tanh_array.inspect_asm(tanh_array.signatures[0]).splitlines()))
"""


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="compiles for an x86 CPU")
def test_float32_activations_without_fused_multiply_adds(tmp_path):
    # compiled in a fresh process for Nehalem (SSE 4.2, no FMA), as an older or a low-end x86
    # runs them (the numba cache is fresh, so inspect_asm has the machine code): the only
    # difference is tanh's looser bound (TANH_BOUND)
    np.savez(tmp_path / "in.npz", gates=GATE_INPUTS, exp=EXP_INPUTS, nan=NAN_INPUTS)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=ROOT, NUMBA_CPU_NAME="nehalem",
               NUMBA_CPU_FEATURES="")
    printed = subprocess.run([sys.executable, "-c", COMPILED_FOR, str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
                             env=env, capture_output=True, text=True, check=True).stdout.split("\n")
    assert printed[0] == "nehalem", printed[0]  # compiled so,
    assert "mulps" in printed[1] and "fmadd" not in printed[1]  # multiplies, none fused with an add
    out = np.load(tmp_path / "out.npz")
    assert largest_error(out["tanh gates"], np.tanh) <= TANH_BOUND[False]
    assert largest_error(out["sigmoid gates"], logistic) <= SIGMOID_BOUND
    check_exp(out["exp exp"])
    for name in ("tanh", "sigmoid", "exp"):
        check_nan_in_nan_out(out[name + " nan"])


def test_float32_exp_saturates_like_libm():
    x = np.float32([-np.inf, -1e30, -104.0, -86.7, 88.73, 100.0, 1e30, np.inf])
    np.testing.assert_array_equal(run(exp_array, x), np.float32([0, 0, 0, 0, np.inf, np.inf, np.inf, np.inf]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("fn", [tanh_array, sigmoid_array, exp_array], ids=["tanh", "sigmoid", "exp"])
def test_nan_in_nan_out(fn, dtype):
    check_nan_in_nan_out(run(fn, NAN_INPUTS.astype(dtype)))


@numba.njit
def _max_by_maxnum(a):
    m = a[0]
    for v in range(1, a.shape[0]):
        m = maxnum(m, a[v])
    return m


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_maxnum_max_skips_nan_unless_all_nan(dtype):
    rng = np.random.default_rng(0)
    a = rng.standard_normal(37).astype(dtype)
    assert _max_by_maxnum(a) == a.max()
    for i in (0, 17, 36):  # first, inside a vector, in the remainder
        b = a.copy()
        b[i] = np.nan
        assert _max_by_maxnum(b) == np.nanmax(b)
    assert np.isnan(_max_by_maxnum(np.full(9, np.nan, dtype)))
    b = a.copy()
    b[5] = -np.inf
    b[30] = np.inf
    assert _max_by_maxnum(b) == np.inf
