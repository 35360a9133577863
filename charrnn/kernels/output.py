"""Output layer: logits = h @ Wy + by and softmax cross-entropy, forward and backward.

    logits_n = h_n @ Wy + by                    (N,V), N = counted predictions (steps x streams)
    loss_n   = logsumexp(logits_n) - logits_n[target_n]
    dlogits_n = scale * (softmax(logits_n) - onehot(target_n))

Shapes (legend): N rows (one per counted prediction), H hidden units of the top layer,
V vocabulary. The products are BLAS's, one per thread on its block of rows; a training step's
run on AVX-512's tile where it was chosen, the vocabulary is under 512 and H a multiple of 32
(tiled_fits).
"""
import numpy as np
from numba import prange

from ._jit import block, kernel, parallel_kernel, threads
from .activations import exp, maxnum
from .blas import add_partials, add_row, matmul
from .panels import LANES, TILE_ROWS, _tile_intrinsic, add_thread_sums, copy_lanes, line_empty
from .sums import ordered_sum
from .weight_grad import PAIR


def logits_forward(logits, h2d, Wy, by):
    # logits (N,V) out    h2d (N,H)    Wy (H,V)    by (V,)
    n = threads()
    matmul(logits, h2d, Wy, n)
    add_row(logits, by, n)


# Evaluation's loss (xent): rows are independent, so outputs of a window's size run on numba's
# threads (the softmax at 3200 x 65: 0.20 ms against 0.43 serial). Small ones, as in evaluating
# a few streams, stay serial: waking the thread pool would cost more than it saves, and far
# more on a busy machine.
PARALLEL_MIN_ELEMENTS = 1 << 16


@kernel
def _softmax_xent_row(z, target, scale):
    # z (V,) logits in, overwritten with scale * (softmax - onehot); returns -log p(target).
    # Loops of one job each, which LLVM vectorises: the max by maxnum (a compare-based max
    # stays scalar), and the exponentials stored before they are summed (one loop doing both
    # stayed scalar too). 1.5 ns per element before, 0.8 after, at V=6000.
    V = z.shape[0]
    target_logit = z[target]  # read before z is overwritten
    m = z[0]
    for v in range(1, V):
        m = maxnum(m, z[v])
    for v in range(V):
        z[v] = exp(z[v] - m)
    total = ordered_sum(z)
    inv = scale / total
    for v in range(V):
        z[v] *= inv
    z[target] -= scale
    # maxnum skips a NaN, but exp(NaN - m) is NaN: a NaN logit makes the loss and the row
    # NaN, and the caller sees it
    return np.log(total) - (target_logit - m)  # no log(0) when exp(target - m) underflows


@kernel
def _xent_row(z, target, e):
    # forward only: -log softmax(z)[target], z left as it is; e (V,) scratch for the
    # exponentials, summed in a fixed order (sums.py). Its first two loops are
    # _softmax_xent_row's; one helper for both, writing in place there, ran that 12x slower
    # (LLVM left the loop scalar where e might be z)
    V = z.shape[0]
    m = z[0]
    for v in range(1, V):
        m = maxnum(m, z[v])
    for v in range(V):
        e[v] = exp(z[v] - m)
    return np.log(ordered_sum(e)) - (z[target] - m)


@kernel
def _xent_rows(logits, row_loss, targets, lo, hi):
    e = np.empty(logits.shape[1], logits.dtype)
    for n in range(lo, hi):
        row_loss[n] = _xent_row(logits[n], targets[n], e)


@parallel_kernel
def _xent_parallel(logits, row_loss, targets, n_blocks):
    for i in prange(n_blocks):
        lo, hi = block(logits.shape[0], n_blocks, i)
        _xent_rows(logits, row_loss, targets, lo, hi)


def xent(logits, row_loss, targets):
    """Forward only (evaluation): row_loss (N,) out; logits left as they are."""
    if logits.size >= PARALLEL_MIN_ELEMENTS:
        _xent_parallel(logits, row_loss, targets, threads())
    else:
        _xent_rows(logits, row_loss, targets, 0, logits.shape[0])


@kernel
def _output_rows(logits, row_loss, targets, scale, h2d, Wy, by, dh2d, dWy_part, dby_part, lo, hi, into_h):
    # rows [lo, hi), one thread's block, from the logits to their gradients: dWy_part (H,V)
    # and dby_part (V,) are the thread's own (zeros in, the block's sums out); dh2d only if into_h
    z, h = logits[lo:hi], h2d[lo:hi]
    np.dot(h, Wy, z)
    V = z.shape[1]
    for n in range(lo, hi):
        row = logits[n]
        for v in range(V):
            row[v] += by[v]
        row_loss[n] = _softmax_xent_row(row, targets[n], scale)
        for v in range(V):  # the row's gradient, while it is at hand
            dby_part[v] += row[v]
    np.dot(h.T, z, dWy_part)
    if into_h:
        np.dot(z, Wy.T, dh2d[lo:hi])


# Below this vocabulary a thread computes its block's logits transposed, (V, rows): each loop of
# the softmax then runs along the rows, hundreds long, where a row of a small vocabulary is a
# loop of V (65 for the shipped corpus) with its vector tail, six such loops a row. Measured
# side by side (Intel Xeon, 3200 rows, 2 threads): the output layer 1.17x as fast at H=128,
# V=65, 1.04x-1.07x at H=256-512 and at V=384; even at V=512; 0.97x at 1000 and 0.86x at 6000,
# where BLAS's products in the rows' layout are the faster.
TRANSPOSED_BELOW_V = 512


@kernel
def _softmax_xent_columns(zT, n_rows, by, targets, lo, row_loss, scale, dby_part):
    # _softmax_xent_row on the first n_rows columns of zT (V, >= n_rows), a block of rows' logits
    # transposed without their bias (rows lo, lo+1, ... of targets and row_loss): each loop
    # runs along the rows, the per-row maximum and sum in arrays; dby_part (V,) += the
    # gradient's sums over the rows
    V = zT.shape[0]
    m = line_empty(n_rows, zT)  # the row's maximum (its loss's target term waits in row_loss)
    total = line_empty(n_rows, zT)  # the row's sum of exponentials, then scale / sum
    for n in range(n_rows):
        m[n] = zT[0, n] + by[0]
    for v in range(V):
        b, z = by[v], zT[v]
        for n in range(n_rows):
            z[n] += b
            m[n] = maxnum(m[n], z[n])
    for n in range(n_rows):
        row_loss[lo + n] = zT[targets[lo + n], n] - m[n]  # read before zT is overwritten
        total[n] = 0.0
    for v in range(V):
        z = zT[v]
        for n in range(n_rows):
            e = exp(z[n] - m[n])
            z[n] = e
            total[n] += e
    for n in range(n_rows):
        # as in _softmax_xent_row: no log(0) when exp(target - m) underflows; a NaN logit
        # (skipped by maxnum, not by exp) makes the row's sum, loss and gradient NaN
        row_loss[lo + n] = np.log(total[n]) - row_loss[lo + n]
        total[n] = scale / total[n]
    for v in range(V):
        z = zT[v]
        for n in range(n_rows):
            z[n] *= total[n]
    for n in range(n_rows):
        zT[targets[lo + n], n] -= scale
    for v in range(V):
        dby_part[v] += ordered_sum(zT[v, :n_rows])


@kernel
def _output_rows_transposed(logits, row_loss, targets, scale, h2d, Wy, by, dh2d, dWy_part, dby_part, lo, hi,
                            into_h):
    # what _output_rows computes, the block's logits held as zT (V, rows) in its share of `logits`
    n_rows, V = hi - lo, Wy.shape[1]
    zT, h = logits[lo:hi].reshape(V, n_rows), h2d[lo:hi]
    np.dot(Wy.T, h.T, zT)
    _softmax_xent_columns(zT, n_rows, by, targets, lo, row_loss, scale, dby_part)
    np.dot(h.T, zT.T, dWy_part)
    if into_h:
        np.dot(zT.T, Wy.T, dh2d[lo:hi])


@parallel_kernel
def _output_layer_parallel(logits, row_loss, targets, scale, h2d, Wy, by, dh2d, dWy, dby, n_blocks, into_h):
    # threads split the rows, as matmul, blas_tn_acc and column_sums_acc do (the same blocks,
    # so the same sums, bit for bit): each thread's weight gradients go to its own partials,
    # added up after
    N, (H, V) = logits.shape[0], Wy.shape
    dWy_part = np.zeros((n_blocks, H, V), dWy.dtype)
    dby_part = np.zeros((n_blocks, V), dby.dtype)
    for i in prange(n_blocks):
        lo, hi = block(N, n_blocks, i)
        if hi > lo:
            if V < TRANSPOSED_BELOW_V:
                _output_rows_transposed(logits, row_loss, targets, scale, h2d, Wy, by, dh2d, dWy_part[i], dby_part[i],
                                        lo, hi, into_h)
            else:
                _output_rows(logits, row_loss, targets, scale, h2d, Wy, by, dh2d, dWy_part[i], dby_part[i], lo, hi,
                             into_h)
    for i in prange(n_blocks):
        k_lo, k_hi = block(H, n_blocks, i)
        add_partials(dWy, dWy_part, k_lo, k_hi)
    add_thread_sums(dby, 0, dby_part, 0, V)


# Where the 8-row tile was chosen (AVX-512) and the vocabulary is small, a thread's three
# products run on the tile of panels.py, KC rows at a time from the logits to the gradients
# (while those rows of h are in L2), with V's rows, or the block's, on the tile's rows:
#   logits    zT (V, rows) = Wy.T @ h.T   Wy read in place; 32 rows of h copied, transposed, into a pair of panels
#   weights   dWy.T += zT @ h             zT read in place; 32 of h's columns copied into a pair of panels
#   states    dh = zT.T @ Wy.T            zT read in place; Wy packed once an update, (H/16, V, 16)
# On BLAS (Zen 4, H=256, V=65) a third of these products' time went to copying both operands
# of each into BLAS's layout. The logits and dh write their sums (store=True): a tile adding
# into them would need them zeroed first. V's rows go 8, 4 and 1 at a time.
# Measured side by side (Zen 4, 3200 rows, two threads, V=65): the output layer 1.25x as fast
# at H=128, 1.23x at 256, 1.15x at 512; whole updates (T=100, B=32) of IndRNN, mostly this
# layer, 1.18x, 1.16x, 1.01x, of the ESN 1.07x, 1.04x, 1.03x, of the LSTM 1.06x, 1.03x, 0.99x.
KC = 256  # rows of h a thread takes at a time, and of the copy of its columns (32 KB in float32)
# zT's row length: dh's product reads a column of zT, V lines; 1 KB apart, they would share 4 of
# L1's 64 sets, 1088 bytes apart they spread over all of them
ZT_ROW = KC + LANES
# tiles of 8, 4 and 1 rows over a pair of panels: writing C, A's k `ka` apart (the logits and dh);
# adding into C, A's k next to each other (the weight gradient)
_write8, _write4, _write1 = (_tile_intrinsic(rows, panels=2, a_step=True, store=True) for rows in (8, 4, 1))
_add8, _add4, _add1 = (_tile_intrinsic(rows, panels=2) for rows in (8, 4, 1))


def tiled_fits(H, V):
    """Whether the output layer of H units and V characters runs on the tile (output_layer)."""
    return TILE_ROWS == 8 and V < TRANSPOSED_BELOW_V and H % PAIR == 0


@kernel
def _tiles_down(A, a0, lda, ka, n, P, p0, pstep, C, c0, ldc, K, write):
    # rows r < n of C (ldc apart, from c0) from a pair of panels of P (from p0, pstep apart) and
    # rows of A (lda apart): 8 rows a tile, then 4, then 1; written (A's k ka apart) or added
    # into (A's k next to each other: ka is not read)
    r = 0
    while r < n:
        step = 8 if r + 8 <= n else (4 if r + 4 <= n else 1)
        at, to = a0 + r * lda, c0 + r * ldc
        if write:
            if step == 8:
                _write8(A, at, lda, ka, P, p0, pstep, C, to, ldc, K, LANES)
            elif step == 4:
                _write4(A, at, lda, ka, P, p0, pstep, C, to, ldc, K, LANES)
            else:
                _write1(A, at, lda, ka, P, p0, pstep, C, to, ldc, K, LANES)
        elif step == 8:
            _add8(A, at, lda, P, p0, pstep, C, to, ldc, K, LANES)
        elif step == 4:
            _add4(A, at, lda, P, p0, pstep, C, to, ldc, K, LANES)
        else:
            _add1(A, at, lda, P, p0, pstep, C, to, ldc, K, LANES)
        r += step


@kernel
def _output_rows_tiled(row_loss, targets, scale, h2d, Wy, WyP, by, dh2d, dWyT_part, dby_part, lo, hi, into_h):
    # what _output_rows_transposed computes, on the tile, KC rows at a time from the logits to
    # their gradients, while the rows of h are in L2: dWyT_part (V,H) the thread's (transposed),
    # zeros in
    H, V = Wy.shape
    zT = line_empty(V * ZT_ROW, h2d).reshape((V, ZT_ROW))  # its columns past a block's rows: never read
    hT = line_empty(2 * H * LANES, h2d).reshape((2, H, LANES))
    hc = line_empty(2 * KC * LANES, h2d).reshape((2, KC, LANES))
    for m0 in range(lo, hi, KC):
        kc = min(KC, hi - m0)
        for c in range(0, kc, PAIR):
            for j in range(PAIR):  # row m0 + c + j of h is column j of the pair
                q, i = divmod(j, LANES)
                if c + j < kc:
                    for k in range(H):
                        hT[q, k, i] = h2d[m0 + c + j, k]
                else:
                    for k in range(H):
                        hT[q, k, i] = 0.0
            # zT[v, c : c+32] = sum_k Wy[k, v] * hT[:, k, :]: Wy's column v is A's row (lda 1, ka V)
            _tiles_down(Wy, 0, 1, V, V, hT, 0, H * LANES, zT, c, ZT_ROW, H, write=True)
        _softmax_xent_columns(zT, kc, by, targets, m0, row_loss, scale, dby_part)
        for c in range(0, H, PAIR):
            # weight_grad._pack_pair's copy, of whole panels (H is whole pairs): with its
            # zero-padding for a partial panel, the output layer ran 0.96x-0.99x as fast
            for k in range(kc):
                copy_lanes(hc[0, k], 0, h2d[m0 + k], c, LANES)
                copy_lanes(hc[1, k], 0, h2d[m0 + k], c + LANES, LANES)
            # dWyT_part[v, c : c+32] += sum_{k < kc} zT[v, k] * hc[:, k, :]
            _tiles_down(zT, 0, ZT_ROW, 0, V, hc, 0, KC * LANES, dWyT_part, c, H, kc, write=False)
        if into_h:
            for p in range(0, H // LANES, 2):
                # dh[m0 + r, 16p : 16p+32] = sum_v zT[v, r] * WyP[p : p+2, v, :]: zT's column r is A's row
                _tiles_down(zT, 0, 1, ZT_ROW, kc, WyP, p * V * LANES, V * LANES, dh2d, m0 * H + p * LANES, H, V,
                            write=True)


@parallel_kernel
def _output_layer_tiled(row_loss, targets, scale, h2d, Wy, by, dh2d, dWy, dby, n_blocks, into_h):
    # _output_layer_parallel on the tile (tiled_fits): the threads split the rows the same way
    N, (H, V) = h2d.shape[0], Wy.shape
    WyP = np.empty((H // LANES, V, LANES), Wy.dtype)  # WyP[p, v, j] = Wy[16p + j, v]
    for p in range(H // LANES):
        for v in range(V):
            for j in range(LANES):
                WyP[p, v, j] = Wy[p * LANES + j, v]
    dWyT_part = np.zeros((n_blocks, V, H), dWy.dtype)
    dby_part = np.zeros((n_blocks, V), dby.dtype)
    for i in prange(n_blocks):
        lo, hi = block(N, n_blocks, i)
        if hi > lo:
            _output_rows_tiled(row_loss, targets, scale, h2d, Wy, WyP, by, dh2d, dWyT_part[i], dby_part[i], lo, hi,
                               into_h)
    for i in prange(n_blocks):
        k_lo, k_hi = block(H, n_blocks, i)
        for k in range(k_lo, k_hi):
            for j in range(n_blocks):
                for v in range(V):
                    dWy[k, v] += dWyT_part[j, v, k]
    add_thread_sums(dby, 0, dby_part, 0, V)


def output_layer(logits, row_loss, targets, scale, h2d, Wy, by, dh2d, dWy, dby, into_h=True):
    """The output layer of a training step, forward and backward: logits (N,V) is scratch (on
    BLAS it holds the logits, then dloss/dlogits = scale * (softmax - onehot), a thread's block
    of rows transposed when V < TRANSPOSED_BELOW_V; on the tile, which has scratch of its own,
    it is left as it is); row_loss (N,) out: -log p(target) per row,
    in nats; dh2d (N,H) out, left as it is unless into_h (an echo-state network's update has no
    use for it: a third of the layer's products); dWy (H,V) and dby (V,) accumulated with +=;
    h2d (N,H), Wy, by, targets (N,) in. One pass of the threads, each from its rows' product to
    their gradients (two parallel loops), where the product, softmax and gradient kernels one
    after another ran seven (six with a small output's serial softmax). Measured side by side
    (Zen 5), on BLAS: the output layer 1.33x-1.43x as fast at T=50, B=8, H=64 and T=20, B=4, H=32 (a small model's whole
    update 1.06x-1.14x); the same at T=100, B=32 (1.00x at V=65, 1.04x at V=6000), where BLAS's
    products are nearly all of it. The tile's kernel where it fits (tiled_fits), on arrays it
    can read in place."""
    if tiled_fits(*Wy.shape) and all(a.flags.c_contiguous for a in (h2d, Wy, dh2d)):
        _output_layer_tiled(row_loss, targets, scale, h2d, Wy, by, dh2d, dWy, dby, threads(), bool(into_h))
    else:
        _output_layer_parallel(logits, row_loss, targets, scale, h2d, Wy, by, dh2d, dWy, dby, threads(), bool(into_h))
