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

Each thread runs the whole window for its own block of streams [r0, r1) (the backward a group of
them at a time: panels.stream_groups), one panel of LANES units at a time (panels.py). It works
on a scratch row per stream holding LANES units of a few quantities ("slots"), so the gate math
runs in constant-length vector loops.
"""
from numba import prange

from ..cells import Adapter, Tensor, standard_shapes, uniform_
from ._jit import block, kernel, parallel_kernel, threads
from .activations import ONE, sigmoid, tanh
from .blas import matmul_tn_acc
from .matvec import matvec
from .panels import LANES, add_entering_grad, add_panel, copy_lanes, prefetch, prefetch_for_write, recurrent_grad
from .panels import stream_groups
from .panels import recurrent_product
from .panels import add_thread_sums, pack_gate_panels, pack_transposed_panels, panel_shapes, scratch_rows, thread_sums

# forward slots: r, z, hp_n + b_hn, xproj_n (then n), h_{t-1} (then h_t), and the next panel's
# hp_n (recurrent_product's spare)
F_R, F_Z, F_HN, F_XN, F_H, F_SPARE = range(6)
FORWARD_SLOTS = 6  # F_SPARE: for recurrent_product
# backward slots: the recurrent gradient, r, z, n, hp_n + b_hn, h_{t-1}, the gradient carried
# into h_t and the one from above (then dr, dz, dn, r * dn and the carry to h_{t-1})
B_REC, B_R, B_Z, B_N, B_HN, B_HPREV, B_DH, B_DHUP, B_SPARE = range(9)
BACKWARD_SLOTS = 9  # B_SPARE: the next panel's recurrent gradient (recurrent_grad)


@kernel
def _gru_forward_panel(hs, acts, hn, xtable, xindex, Wp, bhn, S, t, p, r0, r1):
    # step t for the units of panel p and the streams [r0, r1)
    H = hs.shape[2]
    u0 = p * LANES
    n = min(LANES, H - u0)
    for r in range(r0, r1):
        s = S[r]
        x = xtable[xindex[t, r]]
        copy_lanes(s, F_R * LANES, x, u0, n)
        copy_lanes(s, F_Z * LANES, x, H + u0, n)
        copy_lanes(s, F_HN * LANES, bhn, u0, n)
        copy_lanes(s, F_XN * LANES, x, 2 * H + u0, n)
        copy_lanes(s, F_H * LANES, hs[t, r], u0, n)
    recurrent_product(hs, t, Wp, S, p, r0, r1, F_SPARE)  # the only matrix work
    for r in range(r0, r1):
        s = S[r]
        for j in range(LANES):
            r_ = sigmoid(s[F_R * LANES + j])
            z = sigmoid(s[F_Z * LANES + j])
            n_ = tanh(s[F_XN * LANES + j] + r_ * s[F_HN * LANES + j])
            s[F_R * LANES + j] = r_
            s[F_Z * LANES + j] = z
            s[F_XN * LANES + j] = n_
            s[F_H * LANES + j] = (ONE - z) * n_ + z * s[F_H * LANES + j]
        copy_lanes(acts[t, r], u0, s, F_R * LANES, n)
        copy_lanes(acts[t, r], H + u0, s, F_Z * LANES, n)
        copy_lanes(acts[t, r], 2 * H + u0, s, F_XN * LANES, n)
        copy_lanes(hn[t, r], u0, s, F_HN * LANES, n)
        copy_lanes(hs[t + 1, r], u0, s, F_H * LANES, n)


@parallel_kernel
def gru_forward(hs, acts, hn, xtable, xindex, Wp, bhn, n_blocks):
    # hs (T+1,B,H) in/out: slot 0 read, slots 1..T written
    # acts (T,B,3H) out: r, z, n      hn (T,B,H) out: hp_n + b_hn (needed for dr)
    # xtable (N,3H), xindex (T,B): the input projection of step t, stream r, bias included, is
    #     xtable[xindex[t, r]] (see Stack.forward)
    # Wp: Wh packed by pack_gate_panels   bhn (H,)
    T, B = acts.shape[0], hs.shape[1]
    S = scratch_rows(n_blocks, B, FORWARD_SLOTS * LANES, hs)
    for i in prange(n_blocks):
        r0, r1 = block(B, n_blocks, i)
        for t in range(T):
            for p in range(Wp.shape[0]):
                _gru_forward_panel(hs, acts, hn, xtable, xindex, Wp, bhn, S[i], t, p, r0, r1)


@kernel
def _gru_backward_panel(dxproj, dhp, sums, dh, dhs, hs, acts, hn, WTp, S, t, p, r0, r1):
    # step t for the units of panel p and the streams [r0, r1)
    # sums: this thread's row of thread_sums, the gradient of b_hn, added to here
    H = dh.shape[1]
    u0 = p * LANES
    n = min(LANES, H - u0)
    recurrent_grad(dhp, t + 1, WTp, S, p, r0, r1, B_SPARE)  # hp_{t+1} = h_t @ Wh
    for r in range(r0, r1):
        s = S[r]
        if t > 0:  # the lines step t-1 reads, and those it writes
            for g in range(3):
                prefetch(acts[t - 1, r], g * H + u0)
                prefetch_for_write(dxproj[t - 1, r], g * H + u0)
                prefetch_for_write(dhp[t - 1, r], g * H + u0)
            prefetch(hn[t - 1, r], u0)
            prefetch(hs[t - 1, r], u0)
            prefetch(dhs[t - 1, r], u0)
        copy_lanes(s, B_R * LANES, acts[t, r], u0, n)
        copy_lanes(s, B_Z * LANES, acts[t, r], H + u0, n)
        copy_lanes(s, B_N * LANES, acts[t, r], 2 * H + u0, n)
        copy_lanes(s, B_HN * LANES, hn[t, r], u0, n)
        copy_lanes(s, B_HPREV * LANES, hs[t, r], u0, n)
        copy_lanes(s, B_DH * LANES, dh[r], u0, n)
        copy_lanes(s, B_DHUP * LANES, dhs[t, r], u0, n)
        for j in range(LANES):
            r_ = s[B_R * LANES + j]
            z = s[B_Z * LANES + j]
            n_ = s[B_N * LANES + j]
            dh_t = s[B_DH * LANES + j] + s[B_REC * LANES + j] + s[B_DHUP * LANES + j]
            # h_t = (1 - z) * n + z * h_{t-1}
            dn = dh_t * (ONE - z)
            dz = dh_t * (s[B_HPREV * LANES + j] - n_)
            s[B_DH * LANES + j] = dh_t * z  # the direct path to h_{t-1}
            # n = tanh(xproj_n + r * (hp_n + b_hn))
            dn_pre = dn * (ONE - n_ * n_)
            dr = dn_pre * s[B_HN * LANES + j]
            # r, z = sigmoid(...)
            s[B_R * LANES + j] = dr * r_ * (ONE - r_)
            s[B_Z * LANES + j] = dz * z * (ONE - z)
            s[B_N * LANES + j] = dn_pre
            s[B_HN * LANES + j] = dn_pre * r_  # the gradient of hp_n
        copy_lanes(dxproj[t, r], u0, s, B_R * LANES, n)
        copy_lanes(dxproj[t, r], H + u0, s, B_Z * LANES, n)
        copy_lanes(dxproj[t, r], 2 * H + u0, s, B_N * LANES, n)
        copy_lanes(dhp[t, r], u0, s, B_R * LANES, n)
        copy_lanes(dhp[t, r], H + u0, s, B_Z * LANES, n)
        copy_lanes(dhp[t, r], 2 * H + u0, s, B_HN * LANES, n)
        add_panel(sums, u0, s, B_HN * LANES)  # b_hn enters beside hp_n: the same gradient
        copy_lanes(dh[r], u0, s, B_DH * LANES, n)


@parallel_kernel
def gru_backward(dxproj, dhp, dbhn, dh, dhs, hs, acts, hn, WTp, n_blocks):
    # dxproj (T,B,3H) out: dLoss/d(xproj)     dhp (T,B,3H) out: dLoss/d(hp), the recurrent product
    # dbhn (H,) accumulated with +=: the gradient of b_hn, the sum of dhp's n block over steps
    #     and streams; each thread sums its streams into its own row as it goes, added up at
    #     the end (summed over dhp afterwards, a pass over the last third of each of its rows
    #     was about 2% of an update at H=256, benchmarks/profile_update.py)
    # dh (B,H) in/out: gradient arriving at hs[T] from later steps (zero under truncation);
    #     on return, the gradient w.r.t. the entering state hs[0]
    # dhs (T,B,H) in: gradient w.r.t. h_t from above     WTp: Wh^T by pack_transposed_panels
    # dWh = sum_t h_{t-1}^T dhp_t follows as one product after this (GRUCell.backward).
    T, B, H = dxproj.shape[0], dh.shape[0], dh.shape[1]
    S = scratch_rows(n_blocks, B, BACKWARD_SLOTS * LANES, dh)
    sums = thread_sums(n_blocks, WTp.shape[0] * LANES, dh)
    for i in prange(n_blocks):
        b0, b1 = block(B, n_blocks, i)
        for r0, r1 in stream_groups(b0, b1, WTp.nbytes):  # one group after another
            for t in range(T - 1, -1, -1):
                for p in range(WTp.shape[0]):
                    _gru_backward_panel(dxproj, dhp, sums[i], dh, dhs, hs, acts, hn, WTp, S[i], t, p, r0, r1)
            if T > 0:
                add_entering_grad(dh, dhp, WTp, S[i], r0, r1, B_SPARE)
    add_thread_sums(dbhn, 0, sums, 0, H)


@kernel
def step(h, c, xg, hg, params, o, blas):
    """One step of one layer for sampling: the equations above, blocks [r | z | n].
    h (H,) in/out; c unused; xg (3H,) in: x @ Wx + b; hg (3H,) scratch;
    o: offsets into params of Wx, b, then Wh, bhn (generate.offsets_table)."""
    H = h.shape[0]
    Wh = params[o[2] : o[2] + H * 3 * H].reshape((H, 3 * H))
    bhn = params[o[3] : o[3] + H]
    matvec(hg, h, Wh, blas)  # from the old state, before h is overwritten
    for j in range(H):
        r = sigmoid(xg[j] + hg[j])
        z = sigmoid(xg[H + j] + hg[H + j])
        n = tanh(xg[2 * H + j] + r * (hg[2 * H + j] + bhn[j]))
        h[j] = (ONE - z) * n + z * h[j]


# ---------------------------------------------------------------------------------------------
# The cell's adapter (the contract is in cells.py)


class GRUCell(Adapter):
    name = "gru"
    gates = 3
    blocks = ("r", "z", "n")
    states = ("hs",)
    step = step

    def param_shapes(self, n_in, H, spec=None):
        # b = [b_r | b_z | b_xn]; b_hn sits inside the reset product, so it is a tensor of its own
        return standard_shapes(n_in, H, 3) + [Tensor("bhn", (H,))]

    def init(self, p, H, rng, spec=None):
        uniform_(p, H, rng)

    def buffer_shapes(self, T, B, H):
        buf = {"hs": (T + 1, B, H), "acts": (T, B, 3 * H), "hn": (T, B, H)}
        return buf, {"dhp": (T, B, 3 * H), **panel_shapes(H, 3)}

    def activations(self, buf, H):
        """{name: (T,B,H)} of the gates r, z and the candidate n."""
        return {name: buf["acts"][..., k * H : (k + 1) * H] for k, name in enumerate(self.blocks)}

    def forward(self, buf, scratch, p, xtable, xindex, t0, t1):
        pack_gate_panels(p["Wh"], scratch["Wp"])
        gru_forward(buf["hs"][t0 : t1 + 1], buf["acts"][t0:t1], buf["hn"][t0:t1], xtable, xindex,
                    scratch["Wp"], p["bhn"], threads())

    def backward(self, buf, scratch, p, g, dxproj, dhs, dstate, t0, t1):
        hs, H, dhp = buf["hs"], p["Wh"].shape[0], scratch["dhp"]
        pack_transposed_panels(p["Wh"], scratch["WTp"])
        gru_backward(dxproj[t0:t1], dhp[t0:t1], g["bhn"], dstate["hs"], dhs[t0:t1], hs[t0 : t1 + 1],
                     buf["acts"][t0:t1], buf["hn"][t0:t1], scratch["WTp"], threads())
        # dWh = sum_t h_{t-1}^T dhp_t, one product over the whole window
        matmul_tn_acc(g["Wh"], hs[t0:t1].reshape(-1, H), dhp[t0:t1].reshape(-1, 3 * H), threads())


CELL = GRUCell()
