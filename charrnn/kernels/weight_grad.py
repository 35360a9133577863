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
it: read in place, b's rows 4G bytes apart fall into a few cache sets and evict each other.
Where a thread has at least MIN_PAIRS_COPIED pairs, it also copies each block of a once,
transposed into strips of 8 of a's columns (a tile's 8 rows of out), so that a tile reads 32
contiguous bytes for each k. Read in place, a's rows are 4H bytes apart, and the same lines were
fetched again for every pair. Measured on an Intel Xeon with AVX-512 (and AMX: Sapphire Rapids
or later), T*B = 3200: in place, the tile ran at 0.81x-0.94x BLAS's speed at H=256-512 (4H
columns); with the copy 0.96x-1.02x, and whole updates were 1.00x-1.06x as fast (LSTM, GRU,
RNN, H=128-512). With 2 to 4 pairs a thread, the copy cost more than it saved (0.75x-0.94x).
The Zen 5's figures above are of the tile reading a in place; the copy has not run there. On a
Zen 4 (AVX-512, 1 MiB of L2 a core), whole updates without the copy ran 0.97x-1.06x as fast as
with it (LSTM, GRU, RNN, H=128-512 and V=6000, two runs of the LSTM): nothing either way.

Only where the 8-row tile was chosen (AVX-512): with AVX2's 16 registers the tile holds half as
many sums, and BLAS keeps the product there (blas.matmul_tn_acc).
"""
import numpy as np
from numba import prange

from ._jit import block, kernel, parallel_kernel
from .panels import LANES, _tile_intrinsic, copy_padded, line_empty

KC = 256  # rows of a and b a block: 192-256 measured best at H=128-512 (96-128 and 512: 2%-7% slower)
PAIR = 2 * LANES  # columns of out a thread takes at a time
STRIP = 8  # a's columns in a strip of its copy: the rows of a tile of out
MIN_PAIRS_COPIED = 8  # a thread copies a's blocks where it has this many pairs of columns
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
def _pack_strips(a, m0, kc, Ap):
    # Ap[s, k, i] = a[m0 + k, s*STRIP + i] for k < kc and every column of a (a last, partial
    # strip's other places are never read: its rows go in tiles of 4 and single rows). Strip by
    # strip: copied row by row, the tile ran at 0.75x BLAS's speed, strip by strip at 0.86x
    # (H=128, 128 columns, copying on both threads); our reading: a row's writes, 8 KB apart,
    # share a cache set
    K = a.shape[1]
    for s in range(Ap.shape[0]):
        c0 = s * STRIP
        for k in range(kc):
            for i in range(min(STRIP, K - c0)):
                Ap[s, k, i] = a[m0 + k, c0 + i]


@kernel
def _pair_rows(A, a0, ka, strip_step, K, kc, Bp, C, c0, ldc):
    # C[c0 + r*ldc + q*LANES + j] += sum_{k < kc} a[m0 + k, r] * Bp[q, k, j] for every row r < K
    # of C (a's columns): tiles of 8 rows, then of 4, then single rows, each within a strip. a's
    # element (m0 + k, r) is A[a0 + (r // STRIP) * strip_step + r % STRIP + k * ka]: a itself
    # (a0 = m0 * K, strip_step = STRIP, ka = K) or its block's copy (a0 = 0, ka = STRIP)
    pstep = Bp.shape[1] * LANES
    r = 0
    while r < K:
        at = a0 + (r // STRIP) * strip_step + r % STRIP
        if r + 8 <= K:
            _tile8(A, at, 1, ka, Bp, 0, pstep, C, c0 + r * ldc, ldc, kc, LANES)
            r += 8
        elif r + 4 <= K:
            _tile4(A, at, 1, ka, Bp, 0, pstep, C, c0 + r * ldc, ldc, kc, LANES)
            r += 4
        else:
            _tile1(A, at, 1, ka, Bp, 0, pstep, C, c0 + r * ldc, ldc, kc, LANES)
            r += 1


@kernel
def _block_pairs(a, Ap, copied, m0, kc, Bp, b, q, whole, out, edge):
    # pair q of out's columns (or `edge`, for a last partial pair) += block m0 of a.T @ b
    K, N = a.shape[1], b.shape[1]
    _pack_pair(b, m0, kc, q * PAIR, Bp)
    C, c0, ldc = (out, q * PAIR, N) if q < whole else (edge, 0, PAIR)
    if copied:
        _pair_rows(Ap, 0, STRIP, Ap.shape[1] * STRIP, K, kc, Bp, C, c0, ldc)
    else:
        _pair_rows(a, m0 * K, K, STRIP, K, kc, Bp, C, c0, ldc)


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
        # the copy of a's blocks pays where a thread has many pairs to run over it
        copied = q1 - q0 >= MIN_PAIRS_COPIED
        Bp = line_empty(2 * KC * LANES, out).reshape((2, KC, LANES))
        strips = (K + STRIP - 1) // STRIP if copied else 0
        Ap = line_empty(strips * KC * STRIP, out).reshape((strips, KC, STRIP))
        for m0 in range(0, M, KC):
            kc = min(KC, M - m0)
            if copied:
                _pack_strips(a, m0, kc, Ap)
            for q in range(q0, q1):
                _block_pairs(a, Ap, copied, m0, kc, Bp, b, q, whole, out, edge)
    c = whole * PAIR
    for r in range(edge.shape[0]):
        for j in range(N - c):
            out[r, c + j] += edge[r, j]
