"""The weight gradient's product, out (K,N) += a.T @ b, on the register tile of panels.py.

Every cell's backward ends in one: dWh = sum_t h_{t-1}^T da_t over the window, with a the
states (T*B, H) and b the gradients of the recurrent products' outputs (T*B, G); a layer above
the first has one more for its input weights. Measured on AVX-512 (Zen 5), T*B = 3200: BLAS ran
it at 330-390 GFLOP/s (threads splitting the T*B rows, each summing into a partial of out's
size, added up after), this at 380-430, as fast as the per-step products.

Threads split out's columns, two panels (2 * LANES columns) at a time, so that each owns what it
writes: no partials, no pass adding them up, and every element summed over the rows in the same
order whatever the number of threads. The rows go in blocks of KC. For a block, a pair of b's
panels is copied into a small buffer that stays in L1 while every 8-row tile of out passes over
it: read in place, b's rows 4G bytes apart fall into a few cache sets and evict each other. a is
read in place, transposed (the tile's `a_step`): a tile's 8 rows are 8 neighbouring units of
one state, one cache line for each k.

Only where the 8-row tile was chosen (AVX-512): with AVX2's 16 registers the tile holds half as
many sums, and BLAS keeps the product there (blas.matmul_tn_acc).
"""
import numpy as np
from numba import prange

from ._jit import block, kernel, parallel_kernel
from .panels import LANES, _tile_intrinsic, copy_padded

KC = 256  # rows of a and b a block: 192-256 measured best at H=128-512 (96-128 and 512: 2%-7% slower)
PAIR = 2 * LANES  # columns of out a thread takes at a time
_tile8 = _tile_intrinsic(8, panels=2, a_step=True)
_tile4 = _tile_intrinsic(4, panels=2, a_step=True)
_tile1 = _tile_intrinsic(1, panels=2, a_step=True)


@kernel
def _pack_pair(b, m0, kc, c0, Bp):
    # Bp[q, k, :] = b[m0 + k, c0 + q*LANES : c0 + (q+1)*LANES] for k < kc, zero past b's last column
    N = b.shape[1]
    for q in range(2):
        c = c0 + q * LANES
        n = max(0, min(LANES, N - c))
        for k in range(kc):
            copy_padded(Bp[q, k], b[m0 + k], c, n)


@kernel
def _pair_rows(a, m0, kc, Bp, C, c0, ldc):
    # C[c0 + r*ldc + q*LANES + j] += sum_{k < kc} a[m0 + k, r] * Bp[q, k, j] for every row r < K
    # of C (a's columns): tiles of 8 rows, then of 4, then single rows
    K = a.shape[1]
    pstep = Bp.shape[1] * LANES
    r = 0
    while r + 8 <= K:
        _tile8(a, m0 * K + r, 1, K, Bp, 0, pstep, C, c0 + r * ldc, ldc, kc, LANES)
        r += 8
    while r + 4 <= K:
        _tile4(a, m0 * K + r, 1, K, Bp, 0, pstep, C, c0 + r * ldc, ldc, kc, LANES)
        r += 4
    while r < K:
        _tile1(a, m0 * K + r, 1, K, Bp, 0, pstep, C, c0 + r * ldc, ldc, kc, LANES)
        r += 1


@parallel_kernel
def tiled_tn_acc(out, a, b, n_blocks):
    # out (K,N) += a.T @ b with a (M,K), b (M,N), all C-contiguous: threads split out's columns
    # a pair of panels at a time. A last pair that out cannot hold whole is summed into `edge`
    # by the thread whose block holds it, and added to out after the threads are done: no
    # thread writes where another does.
    M, K = a.shape
    N = b.shape[1]
    pairs = (N + PAIR - 1) // PAIR
    whole = N // PAIR
    edge = np.zeros((K if whole < pairs else 0, PAIR), out.dtype)
    for i in prange(n_blocks):
        q0, q1 = block(pairs, n_blocks, i)
        Bp = np.empty((2, KC, LANES), out.dtype)
        for m0 in range(0, M, KC):
            kc = min(KC, M - m0)
            for q in range(q0, q1):
                _pack_pair(b, m0, kc, q * PAIR, Bp)
                if q < whole:
                    _pair_rows(a, m0, kc, Bp, out, q * PAIR, N)
                else:
                    _pair_rows(a, m0, kc, Bp, edge, 0, PAIR)
    c = whole * PAIR
    for r in range(edge.shape[0]):
        for j in range(N - c):
            out[r, c + j] += edge[r, j]
