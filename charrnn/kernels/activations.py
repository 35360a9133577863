"""Scalar activations shared by the cell kernels (inlined by numba)."""
import numpy as np

from ._jit import kernel


@kernel
def sigmoid(x):
    # exp(-x) overflows to inf for very negative x, and 1/(1+inf) is exactly 0: no NaN.
    return 1.0 / (1.0 + np.exp(-x))
