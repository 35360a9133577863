"""LSTM layer over a window of steps: forward and backward side by side.

    a_t = xproj_t + h_{t-1} @ Wh          xproj_t = W_x x_t + b (input projection, done before)
    i, f, o = sigmoid(a_i, a_f, a_o)      gate blocks in PyTorch order [i | f | g | o]
    g = tanh(a_g)
    c_t = f * c_{t-1} + i * g
    h_t = o * tanh(c_t)

Shapes (legend): T steps in the window, B streams, H hidden units, G = 4H gate width.
Slot t of `hs`/`cs` holds the state *before* step t, so hs[0] is the state entering the window
and hs[T] the state leaving it. Weights are stored input-major: Wh is (H, 4H) so that the
recurrent product is a plain (B,H) @ (H,4H).

Streams are independent, so each thread runs the whole time loop for its own block of rows
[lo, hi) of the batch: no thread waits for another until the window is done.
"""
import numpy as np
from numba import prange

from ._jit import block, kernel, parallel_kernel
from .activations import sigmoid, tanh


@kernel
def _lstm_forward_rows(hs, cs, acts, tcs, xproj, Wh, lo, hi):
    # The gate loops index one row at a time (1-D, unit stride), which LLVM vectorises.
    T = acts.shape[0]
    H = Wh.shape[0]
    for t in range(T):
        np.dot(hs[t, lo:hi], Wh, acts[t, lo:hi])  # the recurrent product, the only matrix work
        for r in range(lo, hi):
            a = acts[t, r]
            x = xproj[t, r]
            c_prev = cs[t, r]
            c_new = cs[t + 1, r]
            h_new = hs[t + 1, r]
            tc = tcs[t, r]
            for j in range(H):
                i = sigmoid(a[j] + x[j])
                f = sigmoid(a[H + j] + x[H + j])
                g = tanh(a[2 * H + j] + x[2 * H + j])
                o = sigmoid(a[3 * H + j] + x[3 * H + j])
                a[j] = i
                a[H + j] = f
                a[2 * H + j] = g
                a[3 * H + j] = o
                c = f * c_prev[j] + i * g
                c_new[j] = c
                tc[j] = tanh(c)
                h_new[j] = o * tc[j]


@parallel_kernel
def lstm_forward(hs, cs, acts, tcs, xproj, Wh, n_blocks):
    # hs, cs (T+1,B,H) in/out: slot 0 read, slots 1..T written
    # acts (T,B,4H) out: activated gates i,f,g,o      tcs (T,B,H) out: tanh(c_t)
    # xproj (T,B,4H) in: input projection incl. bias  Wh (H,4H)
    B = hs.shape[1]
    for i in prange(n_blocks):
        lo, hi = block(B, n_blocks, i)
        if hi > lo:
            _lstm_forward_rows(hs, cs, acts, tcs, xproj, Wh, lo, hi)


@kernel
def _lstm_backward_rows(dxproj, dh, dc, dhs, cs, acts, tcs, Wh, lo, hi):
    T = acts.shape[0]
    H = Wh.shape[0]
    WhT = Wh.T
    for t in range(T - 1, -1, -1):
        for r in range(lo, hi):
            a = acts[t, r]
            d = dxproj[t, r]
            c_prev = cs[t, r]
            tc = tcs[t, r]
            dh_up = dhs[t, r]
            dh_r = dh[r]
            dc_r = dc[r]
            for j in range(H):
                i = a[j]
                f = a[H + j]
                g = a[2 * H + j]
                o = a[3 * H + j]
                dh_t = dh_r[j] + dh_up[j]
                # h_t = o * tanh(c_t)
                do = dh_t * tc[j]
                dc_t = dc_r[j] + dh_t * o * (1.0 - tc[j] * tc[j])
                # c_t = f * c_{t-1} + i * g
                di = dc_t * g
                dg = dc_t * i
                df = dc_t * c_prev[j]
                dc_r[j] = dc_t * f
                # through the sigmoids and the tanh to the pre-activations
                d[j] = di * i * (1.0 - i)
                d[H + j] = df * f * (1.0 - f)
                d[2 * H + j] = dg * (1.0 - g * g)
                d[3 * H + j] = do * o * (1.0 - o)
        # a_t = xproj_t + h_{t-1} @ Wh  =>  dh_{t-1} = da_t @ Wh^T
        np.dot(dxproj[t, lo:hi], WhT, dh[lo:hi])


@parallel_kernel
def lstm_backward(dxproj, dh, dc, dhs, cs, acts, tcs, Wh, n_blocks):
    # dxproj (T,B,4H) out: dLoss/d(pre-activations), which is also dLoss/d(xproj)
    # dh, dc (B,H) in/out: gradient arriving at the window's last state from later steps
    #     (zero under truncation); on return, the gradient w.r.t. the entering state hs[0], cs[0]
    # dhs (T,B,H) in: gradient w.r.t. h_t from the layer above / the output layer
    # The weight gradient dWh = sum_t h_{t-1}^T da_t is one product after this (cells.py).
    B = dh.shape[0]
    for i in prange(n_blocks):
        lo, hi = block(B, n_blocks, i)
        if hi > lo:
            _lstm_backward_rows(dxproj, dh, dc, dhs, cs, acts, tcs, Wh, lo, hi)
