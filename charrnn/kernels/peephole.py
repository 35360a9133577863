"""Peephole LSTM (Gers & Schmidhuber 2000) over a window of steps: forward and backward side
by side. The gates see the cell through diagonal weights (vectors) p_i, p_f, p_o:

    a_t = xproj_t + h_{t-1} @ Wh          xproj_t = W_x x_t + b, blocks [i | f | g | o]
    i = sigmoid(a_i + p_i * c_{t-1})
    f = sigmoid(a_f + p_f * c_{t-1})
    g = tanh(a_g)
    c_t = f * c_{t-1} + i * g
    o = sigmoid(a_o + p_o * c_t)           the output gate sees the new cell
    h_t = o * tanh(c_t)

The peephole weights are one tensor `peep` (3H,), blocks [p_i | p_f | p_o].

Shapes (legend): T steps in the window, B streams, H hidden units, G = 4H gate width.
Buffers and threads as in lstm.py, whose layout of the saved activations (SAVED) this module
shares, so that diagnostics read both alike.
"""
from numba import prange

from ..cells import Tensor, standard_shapes, uniform_
from ._jit import block, kernel, parallel_kernel, threads
from .activations import ONE, sigmoid, tanh
from .blas import matmul_tn_acc
from .lstm import SAVED, LSTMCell
from .matvec import matvec
from .panels import LANES, add_entering_grad, add_panel, copy_block, copy_lanes, prefetch_for_write, recurrent_grad
from .panels import stream_groups
from .panels import recurrent_product
from .panels import add_thread_sums, scratch_rows, thread_sums
from .panels import n_panels, pack_gate_panels, pack_transposed_panels, panel_shapes

# forward slots: the gates, tanh(c_t), c (c_{t-1}, then c_t), h_t, the peephole weights
F_I, F_F, F_G, F_O, F_TC, F_C, F_H, F_PI, F_PF, F_PO = range(10)
FORWARD_SLOTS = 10
# backward slots: the recurrent gradient, the gates (then their gradients), tanh(c_t), c_{t-1},
# the gradient carried into h_t, the one from above, the one carried into c_t, c_t, the
# peephole weights (then their gradients)
B_REC, B_I, B_F, B_G, B_O, B_TC, B_CPREV, B_DH, B_DHUP, B_DC, B_C, B_PI, B_PF, B_PO, B_SPARE = range(15)
BACKWARD_SLOTS = 15  # B_SPARE: the next panel's recurrent gradient (recurrent_grad)


@kernel
def _peephole_forward_panel(hs, cs, acts, xtable, xindex, Wp, peep, S, t, p, r0, r1):
    # step t for the units of panel p and the streams [r0, r1)
    H = hs.shape[2]
    u0 = p * LANES
    n = min(LANES, H - u0)
    for r in range(r0, r1):
        x = xtable[xindex[t, r]]
        for g in range(4):
            copy_lanes(S[r], g * LANES, x, g * H + u0, n)
        copy_lanes(S[r], F_C * LANES, cs[t, r], u0, n)
        for k in range(3):
            copy_lanes(S[r], (F_PI + k) * LANES, peep, k * H + u0, n)
    recurrent_product(hs, t, Wp, S, p, r0, r1, -1)  # the only matrix work (four gates: no spare)
    for r in range(r0, r1):
        s = S[r]
        for j in range(LANES):
            c_prev = s[F_C * LANES + j]
            i = sigmoid(s[F_I * LANES + j] + s[F_PI * LANES + j] * c_prev)
            f = sigmoid(s[F_F * LANES + j] + s[F_PF * LANES + j] * c_prev)
            g = tanh(s[F_G * LANES + j])
            c = f * c_prev + i * g
            o = sigmoid(s[F_O * LANES + j] + s[F_PO * LANES + j] * c)
            tc = tanh(c)
            s[F_I * LANES + j] = i
            s[F_F * LANES + j] = f
            s[F_G * LANES + j] = g
            s[F_O * LANES + j] = o
            s[F_C * LANES + j] = c
            s[F_TC * LANES + j] = tc
            s[F_H * LANES + j] = o * tc
        copy_block(acts[t, r], p * SAVED * LANES, s, 0, SAVED * LANES)
        copy_lanes(cs[t + 1, r], u0, s, F_C * LANES, n)
        copy_lanes(hs[t + 1, r], u0, s, F_H * LANES, n)


@parallel_kernel
def peephole_forward(hs, cs, acts, xtable, xindex, Wp, peep, n_blocks):
    # hs, cs (T+1,B,H) in/out: slot 0 read, slots 1..T written
    # acts (T,B,panels*SAVED*LANES) out: i, f, g, o and tanh(c_t), as lstm.py saves them
    # xtable (N,4H), xindex (T,B): the input projection (see Stack.forward)
    # Wp: Wh packed by pack_gate_panels      peep (3H,): [p_i | p_f | p_o]
    T, B = acts.shape[0], hs.shape[1]
    S = scratch_rows(n_blocks, B, FORWARD_SLOTS * LANES, hs)
    for i in prange(n_blocks):
        r0, r1 = block(B, n_blocks, i)
        for t in range(T):
            for p in range(Wp.shape[0]):
                _peephole_forward_panel(hs, cs, acts, xtable, xindex, Wp, peep, S[i], t, p, r0, r1)


@kernel
def _peephole_backward_panel(dxproj, sums, dh, dc, dhs, cs, acts, peep, WTp, S, t, p, r0, r1):
    # step t for the units of panel p and the streams [r0, r1)
    # sums (3 * panels*LANES,): this thread's sums of the peephole gradients, added to here
    H = dh.shape[1]
    P = WTp.shape[0] * LANES  # units, padded to whole panels
    u0 = p * LANES
    n = min(LANES, H - u0)
    recurrent_grad(dxproj, t + 1, WTp, S, p, r0, r1, B_SPARE)  # a_{t+1} = ... + h_t @ Wh
    for r in range(r0, r1):
        s = S[r]
        if t > 0:  # the lines step t-1 writes
            for g in range(4):
                prefetch_for_write(dxproj[t - 1, r], g * H + u0)
        copy_block(s, B_I * LANES, acts[t, r], p * SAVED * LANES, SAVED * LANES)
        copy_lanes(s, B_CPREV * LANES, cs[t, r], u0, n)
        copy_lanes(s, B_C * LANES, cs[t + 1, r], u0, n)
        copy_lanes(s, B_DH * LANES, dh[r], u0, n)
        copy_lanes(s, B_DHUP * LANES, dhs[t, r], u0, n)
        copy_lanes(s, B_DC * LANES, dc[r], u0, n)
        for k in range(3):
            copy_lanes(s, (B_PI + k) * LANES, peep, k * H + u0, n)
        for j in range(LANES):
            i = s[B_I * LANES + j]
            f = s[B_F * LANES + j]
            g = s[B_G * LANES + j]
            o = s[B_O * LANES + j]
            tc = s[B_TC * LANES + j]
            c_prev = s[B_CPREV * LANES + j]
            dh_t = s[B_DH * LANES + j] + s[B_REC * LANES + j] + s[B_DHUP * LANES + j]
            s[B_DH * LANES + j] = 0.0  # consumed (no path to h_{t-1} but the product)
            # h_t = o * tanh(c_t);  o = sigmoid(a_o + p_o * c_t)
            da_o = dh_t * tc * o * (ONE - o)
            dc_t = s[B_DC * LANES + j] + dh_t * o * (ONE - tc * tc) + da_o * s[B_PO * LANES + j]
            # c_t = f * c_{t-1} + i * g
            da_i = dc_t * g * i * (ONE - i)
            da_f = dc_t * c_prev * f * (ONE - f)
            da_g = dc_t * i * (ONE - g * g)
            # i, f = sigmoid(a + p * c_{t-1}): c_{t-1} reaches them through the peepholes too
            s[B_DC * LANES + j] = dc_t * f + da_i * s[B_PI * LANES + j] + da_f * s[B_PF * LANES + j]
            s[B_PI * LANES + j] = da_i * c_prev
            s[B_PF * LANES + j] = da_f * c_prev
            s[B_PO * LANES + j] = da_o * s[B_C * LANES + j]
            s[B_I * LANES + j] = da_i
            s[B_F * LANES + j] = da_f
            s[B_G * LANES + j] = da_g
            s[B_O * LANES + j] = da_o
        for g in range(4):
            copy_lanes(dxproj[t, r], g * H + u0, s, (B_I + g) * LANES, n)
        for k in range(3):  # whole panels: the lanes past unit H are never read
            add_panel(sums, k * P + u0, s, (B_PI + k) * LANES)
        copy_lanes(dc[r], u0, s, B_DC * LANES, n)
        copy_lanes(dh[r], u0, s, B_DH * LANES, n)  # after the window, add_entering_grad adds to it


@parallel_kernel
def peephole_backward(dxproj, dpeep, dh, dc, dhs, cs, acts, peep, WTp, n_blocks):
    # dxproj (T,B,4H) out: dLoss/d(a), which is also dLoss/d(xproj)
    # dpeep (3H,) accumulated with +=: dLoss/dpeep, summed over steps and streams. Each thread
    #     sums its streams into its own row of 3 * panels*LANES as it goes, added up at the end:
    #     with a (T,B,3H) buffer summed after, the backward wrote and then read 3H floats a
    #     character (19.7 MB a window at H=512, T=100, B=32)
    # dh, dc (B,H) in/out: gradient arriving at the window's last state from later steps
    #     (zero under truncation); on return, the gradient w.r.t. the entering state
    # dhs (T,B,H) in: gradient w.r.t. h_t from above     WTp: Wh^T by pack_transposed_panels
    T, B, H = dxproj.shape[0], dh.shape[0], dh.shape[1]
    S = scratch_rows(n_blocks, B, BACKWARD_SLOTS * LANES, dh)
    P = WTp.shape[0] * LANES
    sums = thread_sums(n_blocks, 3 * P, dh)
    for i in prange(n_blocks):
        b0, b1 = block(B, n_blocks, i)
        for r0, r1 in stream_groups(b0, b1, WTp.nbytes):  # one group after another
            for t in range(T - 1, -1, -1):
                for p in range(WTp.shape[0]):
                    _peephole_backward_panel(dxproj, sums[i], dh, dc, dhs, cs, acts, peep, WTp, S[i], t, p, r0, r1)
            if T > 0:
                add_entering_grad(dh, dxproj, WTp, S[i], r0, r1, B_SPARE)
    for k in range(3):
        add_thread_sums(dpeep, k * H, sums, k * P, H)


@kernel
def step(h, c, xg, hg, params, o, blas):
    """One step of one layer for sampling: the equations above.
    h, c (H,) in/out; xg (4H,) in: x @ Wx + b; hg (4H,) scratch;
    o: offsets into params of Wx, b, then Wh, peep (generate.offsets_table)."""
    H = h.shape[0]
    Wh = params[o[2] : o[2] + H * 4 * H].reshape((H, 4 * H))
    peep = params[o[3] : o[3] + 3 * H]
    matvec(hg, h, Wh, blas)  # from the old state, before h is overwritten
    for j in range(H):
        c_prev = c[j]
        i = sigmoid(xg[j] + hg[j] + peep[j] * c_prev)
        f = sigmoid(xg[H + j] + hg[H + j] + peep[H + j] * c_prev)
        g = tanh(xg[2 * H + j] + hg[2 * H + j])
        cj = f * c_prev + i * g
        o_ = sigmoid(xg[3 * H + j] + hg[3 * H + j] + peep[2 * H + j] * cj)
        c[j] = cj
        h[j] = o_ * tanh(cj)


# ---------------------------------------------------------------------------------------------
# The cell's adapter (the contract is in cells.py)


class PeepholeCell(LSTMCell):
    name = "peephole"
    step = step

    def param_shapes(self, n_in, H, spec=None):
        return standard_shapes(n_in, H, 4) + [Tensor("peep", (3 * H,))]

    def init(self, p, H, rng, spec=None):
        # Every tensor, peepholes included, drawn as the LSTM's are, with no forget-gate +1 either:
        # at H=128 the +1 cost 0.082 and 0.046 nats of validation loss after 600 updates (two
        # seeds, otherwise the same run). `charrnn gradflow --forget-bias 1` shows what it does.
        uniform_(p, H, rng)

    def buffer_shapes(self, T, B, H):
        buf = {"hs": (T + 1, B, H), "cs": (T + 1, B, H), "acts": (T, B, n_panels(H) * SAVED * LANES)}
        return buf, panel_shapes(H, 4)

    def forward(self, buf, scratch, p, xtable, xindex, t0, t1):
        pack_gate_panels(p["Wh"], scratch["Wp"])
        peephole_forward(buf["hs"][t0 : t1 + 1], buf["cs"][t0 : t1 + 1], buf["acts"][t0:t1], xtable, xindex,
                         scratch["Wp"], p["peep"], threads())

    def backward(self, buf, scratch, p, g, dxproj, dhs, dstate, t0, t1):
        hs, H = buf["hs"], p["Wh"].shape[0]
        pack_transposed_panels(p["Wh"], scratch["WTp"])
        peephole_backward(dxproj[t0:t1], g["peep"], dstate["hs"], dstate["cs"], dhs[t0:t1],
                          buf["cs"][t0 : t1 + 1], buf["acts"][t0:t1], p["peep"], scratch["WTp"], threads())
        # dWh = sum_t h_{t-1}^T da_t, one product over the whole window
        matmul_tn_acc(g["Wh"], hs[t0:t1].reshape(-1, H), dxproj[t0:t1].reshape(-1, 4 * H), threads())


CELL = PeepholeCell()
