"""The kernels' own tanh, sigmoid and exp (float32: polynomial; float64: libm) against numpy in
float64, over the whole float32 range, and what they make of NaN and +-inf."""
import numba
import numpy as np
import pytest

from charrnn.kernels.activations import exp_array, maxnum, sigmoid_array, tanh_array

FLOAT32_MAX_LOG = float(np.log(np.float64(np.finfo(np.float32).max)))  # 88.7228...


def run(fn, x):
    out = np.empty_like(x)
    fn(out, x)
    return out


def grid(lo, hi, n=400_001):
    return np.linspace(lo, hi, n).astype(np.float32)


@pytest.mark.parametrize("fn, ref", [(tanh_array, np.tanh), (sigmoid_array, lambda x: 1 / (1 + np.exp(-x)))],
                         ids=["tanh", "sigmoid"])
def test_float32_tanh_and_sigmoid_within_3e7_everywhere(fn, ref):
    x = np.concatenate([grid(-12, 12), grid(-100, 100, 20_001), np.float32([-1e30, 1e30, -np.inf, np.inf])])
    got = run(fn, x).astype(np.float64)
    with np.errstate(over="ignore"):
        expected = ref(x.astype(np.float64))
    assert np.abs(got - expected).max() <= 3e-7


def test_float32_exp_within_5_ulps_up_to_overflow():
    x = np.concatenate([grid(-86.6, 0), grid(0, FLOAT32_MAX_LOG - 1e-4), np.float32([-86.59, 88.4, 88.6, 88.72])])
    got = run(exp_array, x).astype(np.float64)
    expected = np.exp(x.astype(np.float64))
    assert np.isfinite(got).all()  # 88.4 to 88.72 once came out inf: 2^128 has no float32 exponent
    assert (np.abs(got - expected) / expected).max() <= 3.1e-7
    ulp = np.spacing(expected.astype(np.float32)).astype(np.float64)
    assert (np.abs(got - expected) / ulp).max() < 5


def test_float32_exp_saturates_like_libm():
    x = np.float32([-np.inf, -1e30, -104.0, -86.7, 88.73, 100.0, 1e30, np.inf])
    np.testing.assert_array_equal(run(exp_array, x), np.float32([0, 0, 0, 0, np.inf, np.inf, np.inf, np.inf]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("fn", [tanh_array, sigmoid_array, exp_array], ids=["tanh", "sigmoid", "exp"])
def test_nan_in_nan_out(fn, dtype):
    # every lane of a vector loop and its scalar remainder: 19 values
    x = np.full(19, np.nan, dtype)
    x[::3] = 0.5
    out = run(fn, x)
    assert np.isnan(out[np.isnan(x)]).all() and np.isfinite(out[~np.isnan(x)]).all()


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
