"""Vanilla (Elman) tanh RNN layer over a window of steps: forward and backward side by side.

    h_t = tanh(xproj_t + h_{t-1} @ Wh)    xproj_t = W_x x_t + b (input projection, done before)

Shapes (legend): T steps in the window, B streams, H hidden units.
Slot t of `hs` holds the state *before* step t: hs[0] enters the window, hs[T] leaves it.
Wh is stored input-major, (H, H), so the recurrent product is a plain (B,H) @ (H,H).
"""
import numpy as np

from ._jit import kernel


@kernel
def rnn_forward(hs, xproj, Wh):
    # hs (T+1,B,H) in/out: slot 0 read, slots 1..T written
    # xproj (T,B,H) in: input projection incl. bias    Wh (H,H)
    T, B, H = xproj.shape
    for t in range(T):
        h_new = hs[t + 1]
        np.dot(hs[t], Wh, h_new)  # the recurrent product, the only matrix work per step
        x = xproj[t]
        for b in range(B):
            for j in range(H):
                h_new[b, j] = np.tanh(h_new[b, j] + x[b, j])


@kernel
def rnn_backward(dxproj, dh, dWh, dhs, hs, Wh, hs_prev2d, dxproj2d):
    # dxproj (T,B,H) out: dLoss/d(pre-activation) = dLoss/d(xproj)
    # dh (B,H) in/out: gradient arriving at hs[T] from later steps (zero under truncation);
    #     on return, the gradient w.r.t. the entering state hs[0]
    # dWh (H,H) accumulated with +=     dhs (T,B,H) in: gradient w.r.t. h_t from above
    # hs_prev2d (T*B,H), dxproj2d (T*B,H): 2-D views for the weight-gradient product
    T, B, H = dxproj.shape
    for t in range(T - 1, -1, -1):
        h = hs[t + 1]
        d = dxproj[t]
        dh_up = dhs[t]
        for b in range(B):
            for j in range(H):
                # h_t = tanh(a_t)
                d[b, j] = (dh[b, j] + dh_up[b, j]) * (1.0 - h[b, j] * h[b, j])
        # a_t = xproj_t + h_{t-1} @ Wh  =>  dh_{t-1} = da_t @ Wh^T
        np.dot(d, Wh.T, dh)
    dWh += np.dot(hs_prev2d.T, dxproj2d)
