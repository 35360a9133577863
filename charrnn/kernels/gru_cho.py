"""The GRU of Cho et al. (2014) and of the lectures over a window of steps: forward and backward
side by side. Unlike gru.py (PyTorch's and cuDNN's convention), the reset gate acts on h_{t-1}
*before* the recurrent product of the candidate:

    r = sigmoid(xproj_r + h_{t-1} @ Wh_r)      xproj_t = W_x x_t + b, blocks [r | z | n]
    z = sigmoid(xproj_z + h_{t-1} @ Wh_z)      Wh = [Wh_r | Wh_z] (H, 2H)
    n = tanh(xproj_n + (r * h_{t-1}) @ Whn)    Whn (H, H)
    h_t = (1 - z) * n + z * h_{t-1}

So the product of the candidate needs r of every unit first: a step runs in two passes over the
panels of units, the gates (and r * h_{t-1}) first, then the candidate. The backward mirrors it:
first the gradients that do not need the product through Whn, then that product and what
depends on it (dr and the reset path to h_{t-1}).

Shapes (legend): T steps in the window, B streams, H hidden units.
Slot t of `hs` holds the state *before* step t: hs[0] enters the window, hs[T] leaves it.
Threads split the streams, one panel of LANES units at a time (panels.py), as in gru.py.
"""
from numba import prange

from ..cells import Adapter, Tensor, uniform_
from ._jit import block, kernel, parallel_kernel, threads
from .activations import ONE, sigmoid, tanh
from .blas import matmul_tn_acc
from .matvec import matvec
from .panels import LANES, add_entering_grad, copy_lanes, prefetch_for_write, recurrent_grad, recurrent_product
from .panels import stream_groups
from .panels import scratch_rows, slot_width
from .panels import gate_panels_shape, pack_gate_panels, pack_transposed_panels, transposed_panels_shape

# forward slots: pass 1 the pre-activations of r and z (then r, z), h_{t-1};
# pass 2 the candidate's pre-activation (then n), z, h_{t-1} (then h_t), the next panel's product
F_R, F_Z, F_H = range(3)
F_N, F_SPARE = 0, 3
FORWARD_SLOTS = 4  # F_SPARE: for pass 2's recurrent_product (pass 1 has two gates: no spare)
# backward slots: the recurrent gradient, the gradient carried into h_t, the one from above,
# r, z, n, h_{t-1}
B_REC, B_DH, B_DHUP, B_R, B_Z, B_N, B_HPREV, B_SPARE = range(8)
BACKWARD_SLOTS = 8  # B_SPARE: the next panel's recurrent gradient (recurrent_grad)


@kernel
def _gates_panel(hs, acts, rh, xtable, xindex, Wp, S, t, p, r0, r1):
    # pass 1 of step t: r, z and r * h_{t-1} for the units of panel p, streams [r0, r1)
    H = hs.shape[2]
    u0 = p * LANES
    n = min(LANES, H - u0)
    for r in range(r0, r1):
        x = xtable[xindex[t, r]]
        copy_lanes(S[r], F_R * LANES, x, u0, n)
        copy_lanes(S[r], F_Z * LANES, x, H + u0, n)
        copy_lanes(S[r], F_H * LANES, hs[t, r], u0, n)
    recurrent_product(hs, t, Wp, S, p, r0, r1, -1)  # h_{t-1} @ [Wh_r | Wh_z]
    for r in range(r0, r1):
        s = S[r]
        for j in range(LANES):
            r_ = sigmoid(s[F_R * LANES + j])
            s[F_Z * LANES + j] = sigmoid(s[F_Z * LANES + j])
            s[F_R * LANES + j] = r_
            s[F_H * LANES + j] = r_ * s[F_H * LANES + j]  # r * h_{t-1}
        copy_lanes(acts[t, r], u0, s, F_R * LANES, n)
        copy_lanes(acts[t, r], H + u0, s, F_Z * LANES, n)
        copy_lanes(rh[t, r], u0, s, F_H * LANES, n)


@kernel
def _candidate_panel(hs, acts, rh, xtable, xindex, Wnp, S, t, p, r0, r1):
    # pass 2 of step t: n and h_t for the units of panel p, streams [r0, r1)
    H = hs.shape[2]
    u0 = p * LANES
    n = min(LANES, H - u0)
    for r in range(r0, r1):
        copy_lanes(S[r], F_N * LANES, xtable[xindex[t, r]], 2 * H + u0, n)
        copy_lanes(S[r], 1 * LANES, acts[t, r], H + u0, n)  # z
        copy_lanes(S[r], 2 * LANES, hs[t, r], u0, n)  # h_{t-1}
    recurrent_product(rh, t, Wnp, S, p, r0, r1, F_SPARE)  # (r * h_{t-1}) @ Whn
    for r in range(r0, r1):
        s = S[r]
        for j in range(LANES):
            n_ = tanh(s[F_N * LANES + j])
            z = s[1 * LANES + j]
            s[F_N * LANES + j] = n_
            s[2 * LANES + j] = (ONE - z) * n_ + z * s[2 * LANES + j]
        copy_lanes(acts[t, r], 2 * H + u0, s, F_N * LANES, n)
        copy_lanes(hs[t + 1, r], u0, s, 2 * LANES, n)


@parallel_kernel
def gru_cho_forward(hs, acts, rh, xtable, xindex, Wp, Wnp, n_blocks):
    # hs (T+1,B,H) in/out: slot 0 read, slots 1..T written
    # acts (T,B,3H) out: r, z, n      rh (T,B,H) out: r * h_{t-1}, the candidate product's input
    # xtable (N,3H), xindex (T,B): the input projection (see Stack.forward)
    # Wp: [Wh_r | Wh_z] packed by pack_gate_panels; Wnp: Whn packed the same way
    T, B = acts.shape[0], hs.shape[1]
    S = scratch_rows(n_blocks, B, FORWARD_SLOTS * LANES, hs)
    for i in prange(n_blocks):
        r0, r1 = block(B, n_blocks, i)
        for t in range(T):
            for p in range(Wp.shape[0]):
                _gates_panel(hs, acts, rh, xtable, xindex, Wp, S[i], t, p, r0, r1)
            for p in range(Wnp.shape[0]):
                _candidate_panel(hs, acts, rh, xtable, xindex, Wnp, S[i], t, p, r0, r1)


@kernel
def _backward_z_n_panel(dxproj, drz, dn, dh, dhs, hs, acts, WTp, S, t, p, r0, r1):
    # pass 1 of step t, back: everything but the product through Whn, for panel p's units
    H = dh.shape[1]
    u0 = p * LANES
    n = min(LANES, H - u0)
    recurrent_grad(drz, t + 1, WTp, S, p, r0, r1, B_SPARE)  # [r|z]_{t+1} from h_t @ [Wh_r | Wh_z]
    for r in range(r0, r1):
        s = S[r]
        if t > 0:  # the lines step t-1 writes, in this pass and the next
            for g in range(3):
                prefetch_for_write(dxproj[t - 1, r], g * H + u0)
            prefetch_for_write(drz[t - 1, r], u0)
            prefetch_for_write(drz[t - 1, r], H + u0)
            prefetch_for_write(dn[t - 1, r], u0)
        copy_lanes(s, B_DH * LANES, dh[r], u0, n)
        copy_lanes(s, B_DHUP * LANES, dhs[t, r], u0, n)
        copy_lanes(s, B_Z * LANES, acts[t, r], H + u0, n)
        copy_lanes(s, B_N * LANES, acts[t, r], 2 * H + u0, n)
        copy_lanes(s, B_HPREV * LANES, hs[t, r], u0, n)
        for j in range(LANES):
            z = s[B_Z * LANES + j]
            n_ = s[B_N * LANES + j]
            dh_t = s[B_DH * LANES + j] + s[B_REC * LANES + j] + s[B_DHUP * LANES + j]
            # h_t = (1 - z) * n + z * h_{t-1}
            s[B_DH * LANES + j] = dh_t * z  # the direct path to h_{t-1}
            # n = tanh(...), z = sigmoid(...)
            s[B_N * LANES + j] = dh_t * (ONE - z) * (ONE - n_ * n_)
            s[B_Z * LANES + j] = dh_t * (s[B_HPREV * LANES + j] - n_) * z * (ONE - z)
        copy_lanes(dxproj[t, r], H + u0, s, B_Z * LANES, n)
        copy_lanes(dxproj[t, r], 2 * H + u0, s, B_N * LANES, n)
        copy_lanes(drz[t, r], H + u0, s, B_Z * LANES, n)
        copy_lanes(dn[t, r], u0, s, B_N * LANES, n)
        copy_lanes(dh[r], u0, s, B_DH * LANES, n)


@kernel
def _backward_r_panel(dxproj, drz, dn, dh, hs, acts, WnTp, S, t, p, r0, r1):
    # pass 2 of step t, back: d(r * h_{t-1}) = dn_pre @ Whn^T, then dr and the reset path
    H = dh.shape[1]
    u0 = p * LANES
    n = min(LANES, H - u0)
    recurrent_grad(dn, t, WnTp, S, p, r0, r1, B_SPARE)  # this step's candidate product, all of dn known
    lanes = slot_width(S)
    for r in range(r0, r1):
        s = S[r]
        copy_lanes(s, B_DH * LANES, dh[r], u0, n)
        copy_lanes(s, B_R * LANES, acts[t, r], u0, n)
        copy_lanes(s, B_HPREV * LANES, hs[t, r], u0, n)
        for j in range(lanes):
            r_ = s[B_R * LANES + j]
            drh = s[B_REC * LANES + j]
            # (r * h_{t-1}) @ Whn: to r, and to h_{t-1} through the reset
            s[B_DH * LANES + j] += drh * r_
            s[B_R * LANES + j] = drh * s[B_HPREV * LANES + j] * r_ * (ONE - r_)
        copy_lanes(dxproj[t, r], u0, s, B_R * LANES, n)
        copy_lanes(drz[t, r], u0, s, B_R * LANES, n)
        copy_lanes(dh[r], u0, s, B_DH * LANES, n)


@parallel_kernel
def gru_cho_backward(dxproj, drz, dn, dh, dhs, hs, acts, WTp, WnTp, n_blocks):
    # dxproj (T,B,3H) out: dLoss/d(xproj)
    # drz (T,B,2H) out: dLoss/d(h_{t-1} @ [Wh_r | Wh_z])   dn (T,B,H) out: dLoss/d(candidate product)
    # dh (B,H) in/out: gradient arriving at hs[T] from later steps (zero under truncation);
    #     on return, the gradient w.r.t. the entering state hs[0]
    # dhs (T,B,H) in: gradient w.r.t. h_t from above
    # WTp, WnTp: [Wh_r | Wh_z]^T and Whn^T packed by pack_transposed_panels
    T, B = dxproj.shape[0], dh.shape[0]
    S = scratch_rows(n_blocks, B, BACKWARD_SLOTS * LANES, dh)
    for i in prange(n_blocks):
        b0, b1 = block(B, n_blocks, i)
        for r0, r1 in stream_groups(b0, b1, WTp.nbytes + WnTp.nbytes):  # one group after another
            for t in range(T - 1, -1, -1):
                for p in range(WTp.shape[0]):
                    _backward_z_n_panel(dxproj, drz, dn, dh, dhs, hs, acts, WTp, S[i], t, p, r0, r1)
                for p in range(WnTp.shape[0]):
                    _backward_r_panel(dxproj, drz, dn, dh, hs, acts, WnTp, S[i], t, p, r0, r1)
            if T > 0:
                add_entering_grad(dh, drz, WTp, S[i], r0, r1, B_SPARE)


@kernel
def step(h, c, xg, hg, params, o, blas):
    """One step of one layer for sampling: the equations above.
    h (H,) in/out; c (H,) scratch (this cell has no second state): r * h; xg (3H,) in:
    x @ Wx + b; hg (3H,) scratch; o: offsets into params of Wx, b, then Wh, Whn."""
    H = h.shape[0]
    Wh = params[o[2] : o[2] + H * 2 * H].reshape((H, 2 * H))
    Whn = params[o[3] : o[3] + H * H].reshape((H, H))
    matvec(hg[: 2 * H], h, Wh, blas)
    for j in range(H):
        r = sigmoid(xg[j] + hg[j])
        hg[H + j] = sigmoid(xg[H + j] + hg[H + j])  # z
        c[j] = r * h[j]
    matvec(hg[2 * H :], c, Whn, blas)
    for j in range(H):
        z = hg[H + j]
        n = tanh(xg[2 * H + j] + hg[2 * H + j])
        h[j] = (ONE - z) * n + z * h[j]


# ---------------------------------------------------------------------------------------------
# The cell's adapter (the contract is in cells.py)


class GRUChoCell(Adapter):
    name = "gru-cho"
    gates = 3
    blocks = ("r", "z", "n")
    states = ("hs",)
    step = step

    def param_shapes(self, n_in, H, spec=None):
        # b = [b_r | b_z | b_n]; the candidate's recurrent matrix is a tensor of its own, as its
        # product takes r * h_{t-1}, not h_{t-1}
        return [Tensor("Wx", (n_in, 3 * H)), Tensor("Wh", (H, 2 * H)), Tensor("Whn", (H, H)), Tensor("b", (3 * H,))]

    def init(self, p, H, rng, spec=None):
        uniform_(p, H, rng)

    def buffer_shapes(self, T, B, H):
        buf = {"hs": (T + 1, B, H), "acts": (T, B, 3 * H), "rh": (T, B, H)}
        scratch = {"drz": (T, B, 2 * H), "dn": (T, B, H),
                   "Wp": gate_panels_shape(H, H, 2), "Wnp": gate_panels_shape(H, H, 1),
                   "WTp": transposed_panels_shape(H, 2 * H), "WnTp": transposed_panels_shape(H, H)}
        return buf, scratch

    def activations(self, buf, H):
        """{name: (T,B,H)} of the gates r, z and the candidate n."""
        return {name: buf["acts"][..., k * H : (k + 1) * H] for k, name in enumerate(self.blocks)}

    def recurrent(self, p, H):
        return {"r": p["Wh"][:, :H], "z": p["Wh"][:, H:], "n": p["Whn"]}

    def forward(self, buf, scratch, p, xtable, xindex, t0, t1):
        pack_gate_panels(p["Wh"], scratch["Wp"])
        pack_gate_panels(p["Whn"], scratch["Wnp"])
        gru_cho_forward(buf["hs"][t0 : t1 + 1], buf["acts"][t0:t1], buf["rh"][t0:t1], xtable, xindex,
                        scratch["Wp"], scratch["Wnp"], threads())

    def backward(self, buf, scratch, p, g, dxproj, dhs, dstate, t0, t1):
        hs, H, drz, dn = buf["hs"], p["Whn"].shape[0], scratch["drz"], scratch["dn"]
        pack_transposed_panels(p["Wh"], scratch["WTp"])
        pack_transposed_panels(p["Whn"], scratch["WnTp"])
        gru_cho_backward(dxproj[t0:t1], drz[t0:t1], dn[t0:t1], dstate["hs"], dhs[t0:t1], hs[t0 : t1 + 1],
                         buf["acts"][t0:t1], scratch["WTp"], scratch["WnTp"], threads())
        # dWh = sum_t h_{t-1}^T drz_t and dWhn = sum_t (r * h_{t-1})^T dn_t, one product each
        matmul_tn_acc(g["Wh"], hs[t0:t1].reshape(-1, H), drz[t0:t1].reshape(-1, 2 * H), threads())
        matmul_tn_acc(g["Whn"], buf["rh"][t0:t1].reshape(-1, H), dn[t0:t1].reshape(-1, H), threads())


CELL = GRUChoCell()
