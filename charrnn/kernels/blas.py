"""Matrix products split across numba's threads.

BLAS itself runs single-threaded (see _jit.py): each thread calls it on its own block of rows,
so every thread owns its writes and no thread waits on another inside a product. On a busy
machine this degrades gracefully, where BLAS's own thread pool, synchronising inside every
small product, slows down many times over.

Row blocks of a C-contiguous matrix are contiguous (and their transposes Fortran-contiguous),
so BLAS reads them in place. `n_blocks` comes from the caller (numba.get_num_threads() read
inside a kernel would keep it from being cached).

The weight gradients' product, where the 8-row tile was chosen, runs on that tile instead
(weight_grad.py, chosen by matmul_tn_acc).
"""
import numpy as np
from numba import prange

from ._jit import block, kernel, parallel_kernel
from .panels import TILE_ROWS, line_zeros
from .weight_grad import tiled_tn_acc


@parallel_kernel
def matmul(out, a, b, n_blocks):
    # out (M,N) = a (M,K) @ b (K,N), threads split the M rows
    M = out.shape[0]
    for i in prange(n_blocks):
        lo, hi = block(M, n_blocks, i)
        if hi > lo:
            np.dot(a[lo:hi], b, out[lo:hi])


@parallel_kernel
def matmul_nt(out, a, b, n_blocks):
    # out (M,N) = a (M,K) @ b.T with b (N,K), threads split the M rows
    M = out.shape[0]
    bt = b.T
    for i in prange(n_blocks):
        lo, hi = block(M, n_blocks, i)
        if hi > lo:
            np.dot(a[lo:hi], bt, out[lo:hi])


def matmul_tn_acc(out, a, b, n_blocks):
    """out (K,N) += a.T @ b with a (M,K), b (M,N): a weight gradient summed over M rows; out
    shares no memory with a or b (the tile adds into it as it goes). Where the 8-row tile was
    chosen (AVX-512), on it (weight_grad.py), which BLAS's kernels trail there; elsewhere, or
    for arrays that are not C-contiguous, BLAS."""
    # the tile checks no bounds: shapes that do not fit would write past out
    if a.shape[0] != b.shape[0] or out.shape != (a.shape[1], b.shape[1]):
        raise ValueError(f"out {out.shape} += a.T @ b with a {a.shape} and b {b.shape}: shapes do not fit")
    if TILE_ROWS == 8 and out.flags.c_contiguous and a.flags.c_contiguous and b.flags.c_contiguous:
        tiled_tn_acc(out, a, b, n_blocks)
    else:
        blas_tn_acc(out, a, b, n_blocks)


@parallel_kernel
def blas_tn_acc(out, a, b, n_blocks):
    # matmul_tn_acc on BLAS: each thread sums its block of rows into its own partial; the
    # partials are then added up with threads splitting the rows of out.
    M = a.shape[0]
    K, N = out.shape
    partial = np.zeros((n_blocks, K, N), out.dtype)
    for i in prange(n_blocks):
        lo, hi = block(M, n_blocks, i)
        if hi > lo:
            np.dot(a[lo:hi].T, b[lo:hi], partial[i])
    for i in prange(n_blocks):
        k_lo, k_hi = block(K, n_blocks, i)
        add_partials(out, partial, k_lo, k_hi)


@kernel
def add_partials(out, partial, lo, hi):
    # out[k] += sum_j partial[j, k] for the rows k in [lo, hi): the threads' partial sums of a
    # (K, N) result added up, each thread on its own rows
    for k in range(lo, hi):
        for j in range(partial.shape[0]):
            for n in range(out.shape[1]):
                out[k, n] += partial[j, k, n]


@parallel_kernel
def add_row(out, v, n_blocks):
    # out (M,N) += v (N,) on every row, threads split the rows
    M, N = out.shape
    for i in prange(n_blocks):
        m_lo, m_hi = block(M, n_blocks, i)
        for m in range(m_lo, m_hi):
            for n in range(N):
                out[m, n] += v[n]


@parallel_kernel
def column_sums_acc(out, a, n_blocks):
    # out (N,) += sum over rows of a (M,N): threads split the rows, each into its own partial,
    # so that the inner loop runs along whole rows (split by columns, a thread of a 65-wide
    # output had 33-element loops: 0.17 ms for 3200 rows)
    M, N = a.shape
    partial = line_zeros(n_blocks * N, out).reshape((n_blocks, N))
    for i in prange(n_blocks):
        lo, hi = block(M, n_blocks, i)
        part = partial[i]
        for m in range(lo, hi):
            row = a[m]
            for n in range(N):
                part[n] += row[n]
    for j in range(n_blocks):
        for n in range(N):
            out[n] += partial[j, n]
