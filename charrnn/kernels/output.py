"""Output layer: logits = h @ Wy + by and softmax cross-entropy, forward and backward.

    logits_n = h_n @ Wy + by                    (N,V), N = counted predictions (steps x streams)
    loss_n   = logsumexp(logits_n) - logits_n[target_n]
    dlogits_n = scale * (softmax(logits_n) - onehot(target_n))

Shapes (legend): N rows (one per counted prediction), H hidden units of the top layer,
V vocabulary. The products are single large GEMMs over the whole window.
"""
import numpy as np
from numba import prange

from ._jit import kernel, parallel_kernel, threads
from .activations import exp, maxnum
from .blas import add_row, column_sums_acc, matmul, matmul_nt, matmul_tn_acc


def logits_forward(logits, h2d, Wy, by):
    # logits (N,V) out    h2d (N,H)    Wy (H,V)    by (V,)
    n = threads()
    matmul(logits, h2d, Wy, n)
    add_row(logits, by, n)


# Rows are independent, so outputs of a window's size run on numba's threads (at 3200 x 65,
# 0.20 ms against 0.43 serial). Small ones, as in evaluating a few streams, stay serial: waking
# the thread pool would cost more than it saves, and far more on a busy machine.
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
    total = 0.0
    for v in range(V):
        total += z[v]
    inv = scale / total
    for v in range(V):
        z[v] *= inv
    z[target] -= scale
    # maxnum skips a NaN, but exp(NaN - m) is NaN: a NaN logit makes the loss and the row
    # NaN, and the caller sees it
    return np.log(total) - (target_logit - m)  # no log(0) when exp(target - m) underflows


@kernel
def _xent_row(z, target):
    # forward only: -log softmax(z)[target], z left as it is (so its sum stays in one loop)
    V = z.shape[0]
    m = z[0]
    for v in range(1, V):
        m = maxnum(m, z[v])
    total = 0.0
    for v in range(V):
        total += exp(z[v] - m)
    return np.log(total) - (z[target] - m)


@kernel
def _softmax_xent_serial(logits, row_loss, targets, scale):
    for n in range(logits.shape[0]):
        row_loss[n] = _softmax_xent_row(logits[n], targets[n], scale)


@parallel_kernel
def _softmax_xent_parallel(logits, row_loss, targets, scale):
    for n in prange(logits.shape[0]):
        row_loss[n] = _softmax_xent_row(logits[n], targets[n], scale)


@kernel
def _xent_serial(logits, row_loss, targets):
    for n in range(logits.shape[0]):
        row_loss[n] = _xent_row(logits[n], targets[n])


@parallel_kernel
def _xent_parallel(logits, row_loss, targets):
    for n in prange(logits.shape[0]):
        row_loss[n] = _xent_row(logits[n], targets[n])


def softmax_xent(logits, row_loss, targets, scale):
    """logits (N,V) in, overwritten with dloss/dlogits = scale * (softmax - onehot);
    row_loss (N,) out: -log p(target) per row, in nats; targets (N,)."""
    big = logits.size >= PARALLEL_MIN_ELEMENTS
    (_softmax_xent_parallel if big else _softmax_xent_serial)(logits, row_loss, targets, scale)


def xent(logits, row_loss, targets):
    """Forward only (evaluation): row_loss (N,) out; logits left as they are."""
    big = logits.size >= PARALLEL_MIN_ELEMENTS
    (_xent_parallel if big else _xent_serial)(logits, row_loss, targets)


def logits_backward(dh2d, dWy, dby, dlogits, h2d, Wy):
    # dh2d (N,H) out    dWy (H,V), dby (V,) accumulated with +=    dlogits (N,V) in
    n = threads()
    matmul_tn_acc(dWy, h2d, dlogits, n)
    column_sums_acc(dby, dlogits, n)
    matmul_nt(dh2d, dlogits, Wy, n)
