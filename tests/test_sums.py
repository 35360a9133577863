"""kernels/sums.py: sums in SUM_LANES running sums, added up pairwise, in a fixed order."""
import math
import re

import numba
import numpy as np
import pytest

from charrnn.kernels._jit import ERROR_MODEL, FASTMATH
from charrnn.kernels.sums import SUM_LANES, ordered_sum, ordered_sum_squares
from test_vector_code import AVX


def lane_order(x, square=False):
    """The order sums.py promises, in Python: lane j adds terms j, j + SUM_LANES, ... one after
    another in float64, then the lanes pairwise, halving, then the terms past the last whole
    round one by one."""
    terms = [float(v) * float(v) if square else float(v) for v in x]
    acc = [0.0] * SUM_LANES
    whole = len(terms) - len(terms) % SUM_LANES
    for i in range(whole):
        acc[i % SUM_LANES] += terms[i]
    n = SUM_LANES
    while n > 1:
        n //= 2
        acc = [acc[j] + acc[j + n] for j in range(n)]
    total = acc[0]
    for t in terms[whole:]:
        total += t
    return total


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [0, 1, SUM_LANES - 1, SUM_LANES, SUM_LANES + 1, 3 * SUM_LANES + 5, 600, 6000, 6003])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ordered_sums_in_their_order(n, dtype, seed):
    rng = np.random.default_rng([n, seed])
    x = (rng.standard_normal(n) * 10.0 ** rng.integers(-3, 4, n)).astype(dtype)  # where order shows
    got = ordered_sum(x)
    assert got == lane_order(x)  # bit for bit: the order is the promise
    assert abs(got - math.fsum(map(float, x))) <= 1e-12 * max(1.0, np.abs(x).sum())
    got = ordered_sum_squares(x)
    assert got == lane_order(x, square=True)
    assert abs(got - math.fsum(float(v) ** 2 for v in x)) <= 1e-12 * max(1.0, float((x.astype(float) ** 2).sum()))


@pytest.mark.parametrize("at", [7, 33, 39])  # in the lanes, in the last whole round, past it
def test_ordered_sums_keep_nan_and_inf(at):
    x = np.ones(40, np.float32)
    x[at] = np.inf
    assert ordered_sum(x) == np.inf and ordered_sum_squares(x) == np.inf
    x[at], x[(at + 5) % 40] = np.inf, -np.inf
    assert np.isnan(ordered_sum(x)) and ordered_sum_squares(x) == np.inf
    x[:] = 1.0
    x[at] = np.nan
    assert np.isnan(ordered_sum(x)) and np.isnan(ordered_sum_squares(x))


def test_ordered_sum_of_a_strided_view_is_refused():
    # the lanes load whole vectors: an array that is not contiguous has no lane sum
    with pytest.raises(Exception):
        ordered_sum(np.ones(64)[::2])


@pytest.mark.skipif(not AVX, reason="the AVX instructions' names; SSE's differ")
def test_the_lanes_are_vector_code():
    # a numba loop over a few running sums came out as scalar adds (vaddsd); the lanes are one
    # vector add per 8 or 16 terms
    fn = numba.njit(fastmath=FASTMATH, error_model=ERROR_MODEL)(ordered_sum.py_func)
    fn(np.ones(64, np.float32))
    asm = fn.inspect_asm(fn.signatures[0])
    assert re.search(r"^\s+vaddpd\s", asm, re.M)
