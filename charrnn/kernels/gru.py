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
"""
import numpy as np

from ._jit import kernel
from .activations import sigmoid


@kernel
def gru_forward(hs, acts, hn, xproj, Wh, bhn):
    # hs (T+1,B,H) in/out: slot 0 read, slots 1..T written
    # acts (T,B,3H) out: r, z, n      hn (T,B,H) out: hp_n + b_hn (needed for dr)
    # xproj (T,B,3H) in: input projection incl. b     Wh (H,3H)   bhn (H,)
    T, B, G = acts.shape
    H = G // 3
    for t in range(T):
        a = acts[t]
        np.dot(hs[t], Wh, a)  # the recurrent product, the only matrix work per step
        x = xproj[t]
        h_prev = hs[t]
        h_new = hs[t + 1]
        hn_t = hn[t]
        for b in range(B):
            for j in range(H):
                r = sigmoid(x[b, j] + a[b, j])
                z = sigmoid(x[b, H + j] + a[b, H + j])
                hnb = a[b, 2 * H + j] + bhn[j]
                n = np.tanh(x[b, 2 * H + j] + r * hnb)
                a[b, j] = r
                a[b, H + j] = z
                a[b, 2 * H + j] = n
                hn_t[b, j] = hnb
                h_new[b, j] = (1.0 - z) * n + z * h_prev[b, j]


@kernel
def gru_backward(dxproj, dhp, dh, dh_tmp, dWh, dbhn, dhs, hs, acts, hn, Wh, hs_prev2d, dhp2d):
    # dxproj (T,B,3H) out: dLoss/d(xproj)     dhp (T,B,3H) out: dLoss/d(hp), the recurrent product
    # dh (B,H) in/out: gradient arriving at hs[T] from later steps (zero under truncation);
    #     on return, the gradient w.r.t. the entering state hs[0]
    # dh_tmp (B,H) scratch for the product path, so that no step allocates
    # dWh (H,3H), dbhn (H,) accumulated with +=     dhs (T,B,H) in: gradient w.r.t. h_t from above
    # hs_prev2d (T*B,H), dhp2d (T*B,3H): 2-D views for the weight-gradient product
    T, B, G = acts.shape
    H = G // 3
    for t in range(T - 1, -1, -1):
        a = acts[t]
        dx = dxproj[t]
        dp = dhp[t]
        h_prev = hs[t]
        hn_t = hn[t]
        dh_up = dhs[t]
        for b in range(B):
            for j in range(H):
                r = a[b, j]
                z = a[b, H + j]
                n = a[b, 2 * H + j]
                dh_t = dh[b, j] + dh_up[b, j]
                # h_t = (1 - z) * n + z * h_{t-1}
                dn = dh_t * (1.0 - z)
                dz = dh_t * (h_prev[b, j] - n)
                dh[b, j] = dh_t * z  # direct path; the product path is added below
                # n = tanh(xproj_n + r * (hp_n + b_hn))
                dn_pre = dn * (1.0 - n * n)
                dr = dn_pre * hn_t[b, j]
                # r, z = sigmoid(...)
                dr_pre = dr * r * (1.0 - r)
                dz_pre = dz * z * (1.0 - z)
                dx[b, j] = dr_pre
                dx[b, H + j] = dz_pre
                dx[b, 2 * H + j] = dn_pre
                dp[b, j] = dr_pre
                dp[b, H + j] = dz_pre
                dp[b, 2 * H + j] = dn_pre * r
        # hp_t = h_{t-1} @ Wh  =>  dh_{t-1} += dhp_t @ Wh^T
        np.dot(dp, Wh.T, dh_tmp)
        for b in range(B):
            for j in range(H):
                dh[b, j] += dh_tmp[b, j]
    dWh += np.dot(hs_prev2d.T, dhp2d)
    # b_hn enters beside hp_n, so its gradient is the column sum of dhp's n block
    for k in range(dhp2d.shape[0]):
        for j in range(H):
            dbhn[j] += dhp2d[k, 2 * H + j]
