"""Vanilla (Elman) tanh RNN layer over a window of steps: forward and backward side by side.

    h_t = tanh(xproj_t + h_{t-1} @ Wh)    xproj_t = W_x x_t + b (input projection, done before)

Shapes (legend): T steps in the window, B streams, H hidden units.
Slot t of `hs` holds the state *before* step t: hs[0] enters the window, hs[T] leaves it.
Wh is stored input-major, (H, H), so the recurrent product is a plain (B,H) @ (H,H).
Each thread runs the whole time loop for its own block of rows [lo, hi) of the batch.
"""
import numpy as np
from numba import prange

from ._jit import block, kernel, parallel_kernel
from .activations import tanh


@kernel
def _rnn_forward_rows(hs, xproj, Wh, lo, hi):
    T = xproj.shape[0]
    H = Wh.shape[0]
    for t in range(T):
        np.dot(hs[t, lo:hi], Wh, hs[t + 1, lo:hi])  # the recurrent product, the only matrix work
        for r in range(lo, hi):
            h_new = hs[t + 1, r]
            x = xproj[t, r]
            for j in range(H):
                h_new[j] = tanh(h_new[j] + x[j])


@parallel_kernel
def rnn_forward(hs, xproj, Wh, n_blocks):
    # hs (T+1,B,H) in/out: slot 0 read, slots 1..T written
    # xproj (T,B,H) in: input projection incl. bias    Wh (H,H)
    B = hs.shape[1]
    for i in prange(n_blocks):
        lo, hi = block(B, n_blocks, i)
        if hi > lo:
            _rnn_forward_rows(hs, xproj, Wh, lo, hi)


@kernel
def _rnn_backward_rows(dxproj, dh, dhs, hs, Wh, lo, hi):
    T = dxproj.shape[0]
    H = Wh.shape[0]
    WhT = Wh.T
    for t in range(T - 1, -1, -1):
        for r in range(lo, hi):
            h = hs[t + 1, r]
            d = dxproj[t, r]
            dh_up = dhs[t, r]
            dh_r = dh[r]
            for j in range(H):
                # h_t = tanh(a_t)
                d[j] = (dh_r[j] + dh_up[j]) * (1.0 - h[j] * h[j])
        # a_t = xproj_t + h_{t-1} @ Wh  =>  dh_{t-1} = da_t @ Wh^T
        np.dot(dxproj[t, lo:hi], WhT, dh[lo:hi])


@parallel_kernel
def rnn_backward(dxproj, dh, dhs, hs, Wh, n_blocks):
    # dxproj (T,B,H) out: dLoss/d(pre-activation) = dLoss/d(xproj)
    # dh (B,H) in/out: gradient arriving at hs[T] from later steps (zero under truncation);
    #     on return, the gradient w.r.t. the entering state hs[0]
    # dhs (T,B,H) in: gradient w.r.t. h_t from above
    # The weight gradient dWh = sum_t h_{t-1}^T da_t is one product after this (cells.py).
    B = dh.shape[0]
    for i in prange(n_blocks):
        lo, hi = block(B, n_blocks, i)
        if hi > lo:
            _rnn_backward_rows(dxproj, dh, dhs, hs, Wh, lo, hi)
