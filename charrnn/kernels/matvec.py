"""The vector-matrix product of one stream's step, for sampling (kernels/generate.py and the
cells' `step` kernels).

With `blas` true, np.dot, which numba hands to BLAS sgemv/dgemv (held to one thread by
_jit.py); otherwise a hand loop that adds rows of W scaled by x[i], four rows per pass over the
output (contiguous, vectorised). With H=512 each LSTM matrix is 4 MB of float32, so both are
bound by memory bandwidth and run at about the same speed (benchmarks/bench_sample.py measures
both).
"""
import numpy as np

from ._jit import kernel


@kernel
def matvec(out, x, W, blas):
    # out (G,) = x (n,) @ W (n,G), W C-contiguous (input-major, as every weight here)
    if blas:
        np.dot(x, W, out)
        return
    n, G = W.shape
    for k in range(G):
        out[k] = 0.0
    # Four rows per pass: out is read and written once for four rows of W, so the loop is
    # bound by W's stream from memory rather than by loads and stores of out.
    i = 0
    while i + 4 <= n:
        x0, x1, x2, x3 = x[i], x[i + 1], x[i + 2], x[i + 3]
        r0, r1, r2, r3 = W[i], W[i + 1], W[i + 2], W[i + 3]
        for k in range(G):
            out[k] += x0 * r0[k] + x1 * r1[k] + x2 * r2[k] + x3 * r3[k]
        i += 4
    while i < n:
        xi = x[i]
        row = W[i]
        for k in range(G):
            out[k] += xi * row[k]
        i += 1
