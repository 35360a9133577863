"""Output layer: logits = h @ Wy + by and softmax cross-entropy, forward and backward.

    logits_n = h_n @ Wy + by                    (N,V), N = counted predictions (steps x streams)
    loss_n   = logsumexp(logits_n) - logits_n[target_n]
    dlogits_n = scale * (softmax(logits_n) - onehot(target_n))

Shapes (legend): N rows (one per counted prediction), H hidden units of the top layer,
V vocabulary. The products are BLAS's: one per thread, on its block of rows.
"""
import numpy as np
from numba import prange

from ._jit import block, kernel, parallel_kernel, threads
from .activations import exp, maxnum
from .blas import add_partials, add_row, matmul
from .panels import add_thread_sums, line_empty
from .sums import ordered_sum


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
def _output_rows_transposed(logits, row_loss, targets, scale, h2d, Wy, by, dh2d, dWy_part, dby_part, lo, hi,
                            into_h):
    # what _output_rows computes, the block's logits held as zT (V, rows) in its share of
    # `logits`; the per-row maximum and sum in arrays along the rows
    n_rows, V = hi - lo, Wy.shape[1]
    zT, h = logits[lo:hi].reshape(V, n_rows), h2d[lo:hi]
    np.dot(Wy.T, h.T, zT)
    m = line_empty(n_rows, logits)  # the row's maximum (its loss's target term waits in row_loss)
    total = line_empty(n_rows, logits)  # the row's sum of exponentials, then scale / sum
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
        dby_part[v] += ordered_sum(zT[v])
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


def output_layer(logits, row_loss, targets, scale, h2d, Wy, by, dh2d, dWy, dby, into_h=True):
    """The output layer of a training step, forward and backward: logits (N,V) is scratch (it
    holds the logits, then dloss/dlogits = scale * (softmax - onehot), a thread's block of rows
    transposed when V < TRANSPOSED_BELOW_V); row_loss (N,) out: -log p(target) per row,
    in nats; dh2d (N,H) out, left as it is unless into_h (an echo-state network's update has no
    use for it: a third of the layer's products); dWy (H,V) and dby (V,) accumulated with +=;
    h2d (N,H), Wy, by, targets (N,) in. One pass of the threads, each from its rows' product to
    their gradients (two parallel loops), where the product, softmax and gradient kernels one
    after another ran seven (six with a small output's serial softmax). Measured side by side (Zen 5): the output
    layer 1.33x-1.43x as fast at T=50, B=8, H=64 and T=20, B=4, H=32 (a small model's whole
    update 1.06x-1.14x); the same at T=100, B=32 (1.00x at V=65, 1.04x at V=6000), where BLAS's
    products are nearly all of it."""
    _output_layer_parallel(logits, row_loss, targets, scale, h2d, Wy, by, dh2d, dWy, dby, threads(), bool(into_h))
