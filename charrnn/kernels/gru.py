"""GRU layer over a window of steps: forward and backward side by side.

The variant is Cho et al. (2014) as PyTorch writes it: the reset gate multiplies the recurrent
product *after* it is taken, together with its own bias b_hn.

    hp_t = h_{t-1} @ Wh                        recurrent product, blocks [r | z | n]
    r = sigmoid(xproj_r + hp_r)                xproj_t = W_x x_t + b  (b = [b_r | b_z | b_xn])
    z = sigmoid(xproj_z + hp_z)
    n = tanh(xproj_n + r * (hp_n + b_hn))
    h_t = (1 - z) * n + z * h_{t-1}

Shapes (legend): T steps in the window, B streams, H hidden units, G = 3H gate width.
Slot t of `hs` holds the state *before* step t: hs[0] enters the window, hs[T] leaves it.
Each thread runs the whole time loop for its own block of rows [lo, hi) of the batch.
"""
import numpy as np
from numba import prange

from ._jit import block, kernel, parallel_kernel
from .activations import sigmoid, tanh


@kernel
def _gru_forward_rows(hs, acts, hn, xproj, Wh, bhn, lo, hi):
    T = acts.shape[0]
    H = Wh.shape[0]
    for t in range(T):
        np.dot(hs[t, lo:hi], Wh, acts[t, lo:hi])  # the recurrent product, the only matrix work
        for r_ in range(lo, hi):
            a = acts[t, r_]
            x = xproj[t, r_]
            h_prev = hs[t, r_]
            h_new = hs[t + 1, r_]
            hn_t = hn[t, r_]
            for j in range(H):
                r = sigmoid(x[j] + a[j])
                z = sigmoid(x[H + j] + a[H + j])
                hnb = a[2 * H + j] + bhn[j]
                n = tanh(x[2 * H + j] + r * hnb)
                a[j] = r
                a[H + j] = z
                a[2 * H + j] = n
                hn_t[j] = hnb
                h_new[j] = (1.0 - z) * n + z * h_prev[j]


@parallel_kernel
def gru_forward(hs, acts, hn, xproj, Wh, bhn, n_blocks):
    # hs (T+1,B,H) in/out: slot 0 read, slots 1..T written
    # acts (T,B,3H) out: r, z, n      hn (T,B,H) out: hp_n + b_hn (needed for dr)
    # xproj (T,B,3H) in: input projection incl. b     Wh (H,3H)   bhn (H,)
    B = hs.shape[1]
    for i in prange(n_blocks):
        lo, hi = block(B, n_blocks, i)
        if hi > lo:
            _gru_forward_rows(hs, acts, hn, xproj, Wh, bhn, lo, hi)


@kernel
def _gru_backward_rows(dxproj, dhp, dh, dh_tmp, dhs, hs, acts, hn, Wh, lo, hi):
    T = acts.shape[0]
    H = Wh.shape[0]
    WhT = Wh.T
    for t in range(T - 1, -1, -1):
        for r_ in range(lo, hi):
            a = acts[t, r_]
            dx = dxproj[t, r_]
            dp = dhp[t, r_]
            h_prev = hs[t, r_]
            hn_t = hn[t, r_]
            dh_up = dhs[t, r_]
            dh_r = dh[r_]
            for j in range(H):
                r = a[j]
                z = a[H + j]
                n = a[2 * H + j]
                dh_t = dh_r[j] + dh_up[j]
                # h_t = (1 - z) * n + z * h_{t-1}
                dn = dh_t * (1.0 - z)
                dz = dh_t * (h_prev[j] - n)
                dh_r[j] = dh_t * z  # direct path; the product path is added below
                # n = tanh(xproj_n + r * (hp_n + b_hn))
                dn_pre = dn * (1.0 - n * n)
                dr = dn_pre * hn_t[j]
                # r, z = sigmoid(...)
                dr_pre = dr * r * (1.0 - r)
                dz_pre = dz * z * (1.0 - z)
                dx[j] = dr_pre
                dx[H + j] = dz_pre
                dx[2 * H + j] = dn_pre
                dp[j] = dr_pre
                dp[H + j] = dz_pre
                dp[2 * H + j] = dn_pre * r
        # hp_t = h_{t-1} @ Wh  =>  dh_{t-1} += dhp_t @ Wh^T
        np.dot(dhp[t, lo:hi], WhT, dh_tmp[lo:hi])
        for r_ in range(lo, hi):
            dh_r = dh[r_]
            tmp = dh_tmp[r_]
            for j in range(H):
                dh_r[j] += tmp[j]


@parallel_kernel
def gru_backward(dxproj, dhp, dh, dh_tmp, dhs, hs, acts, hn, Wh, n_blocks):
    # dxproj (T,B,3H) out: dLoss/d(xproj)     dhp (T,B,3H) out: dLoss/d(hp), the recurrent product
    # dh (B,H) in/out: gradient arriving at hs[T] from later steps (zero under truncation);
    #     on return, the gradient w.r.t. the entering state hs[0]
    # dh_tmp (B,H) scratch for the product path, so that no step allocates
    # dhs (T,B,H) in: gradient w.r.t. h_t from above
    # dWh = sum_t h_{t-1}^T dhp_t and db_hn (the column sums of dhp's n block, since b_hn
    # enters beside hp_n) follow as one product and one sum after this (cells.py).
    B = dh.shape[0]
    for i in prange(n_blocks):
        lo, hi = block(B, n_blocks, i)
        if hi > lo:
            _gru_backward_rows(dxproj, dhp, dh, dh_tmp, dhs, hs, acts, hn, Wh, lo, hi)
