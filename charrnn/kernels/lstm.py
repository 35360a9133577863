"""LSTM layer over a window of steps: forward and backward side by side.

    a_t = xproj_t + h_{t-1} @ Wh          xproj_t = W_x x_t + b (input projection, looked up)
    i, f, o = sigmoid(a_i, a_f, a_o)      gate blocks in PyTorch order [i | f | g | o]
    g = tanh(a_g)
    c_t = f * c_{t-1} + i * g
    h_t = o * tanh(c_t)

Shapes (legend): T steps in the window, B streams, H hidden units, G = 4H gate width.
Slot t of `hs`/`cs` holds the state *before* step t, so hs[0] is the state entering the window
and hs[T] the state leaving it. Weights are stored input-major: Wh is (H, 4H) so that the
recurrent product is a plain (B,H) @ (H,4H).

Each thread runs the whole window for its own block of streams [r0, r1) (the backward a group of
them at a time: panels.stream_groups), one panel of LANES units at a time (panels.py): the four
gate pre-activations of the panel's units, then their gate math.
"""
from numba import prange

from ..cells import Adapter, standard_shapes, uniform_
from ._jit import block, kernel, parallel_kernel, threads
from .activations import ONE, sigmoid, tanh
from .blas import matmul_tn_acc
from .matvec import matvec
from .panels import LANES, add_entering_grad, copy_block, copy_lanes, prefetch, prefetch_for_write, recurrent_grad
from .panels import stream_groups
from .panels import recurrent_product, scratch_rows
from .panels import n_panels, pack_gate_panels, pack_transposed_panels, panel_shapes


# The scratch row of a stream, for the panel at hand, holds LANES units of several quantities
# ("slots"), so that the gate math runs on one array in loops of constant length: LLVM turns
# them into straight vector code, where the same loops over the panel's units in the big
# buffers (several arrays that might alias, a few units at a time) would stay scalar. (A short
# loop body of constant length it unrolls into scalar code instead: see panels.slot_width.)
F_I, F_F, F_G, F_O, F_TC, F_C, F_H = range(7)  # forward slots: gates, tanh(c_t), c_t, h_t
FORWARD_SLOTS = 7
# The first SAVED forward slots (the gates and tanh(c_t)) are what the backward needs: `acts`
# keeps them as they are, one block of SAVED * LANES per stream and panel, so that saving and
# reading them back are one copy each. Row r of acts[t] is (panels, SAVED, LANES).
SAVED = 5
# backward slots: the recurrent gradient, the gates (then their gradients), tanh(c_t), c_{t-1},
# the gradient carried into h_t, the one from above, and the one carried into c_t
B_REC, B_I, B_F, B_G, B_O, B_TC, B_CPREV, B_DH, B_DHUP, B_DC, B_SPARE = range(11)
BACKWARD_SLOTS = 11  # B_SPARE: the next panel's recurrent gradient (recurrent_grad)


@kernel
def _lstm_forward_panel(hs, cs, acts, xtable, xindex, Wp, S, t, p, r0, r1):
    # step t for the units of panel p and the streams [r0, r1)
    # S (B, FORWARD_SLOTS * LANES): scratch rows; this thread's are [r0, r1)
    H = hs.shape[2]
    u0 = p * LANES
    n = min(LANES, H - u0)
    T = acts.shape[0]
    for r in range(r0, r1):
        x = xtable[xindex[t, r]]
        for g in range(4):
            copy_lanes(S[r], g * LANES, x, g * H + u0, n)
        if t + 1 < T:
            x_next = xtable[xindex[t + 1, r]]
            for g in range(4):
                prefetch(x_next, g * H + u0)  # the lines step t+1 reads
        copy_lanes(S[r], F_C * LANES, cs[t, r], u0, n)
    recurrent_product(hs, t, Wp, S, p, r0, r1, -1)  # the only matrix work (four gates: no spare)
    for r in range(r0, r1):
        s = S[r]
        for j in range(LANES):
            i = sigmoid(s[F_I * LANES + j])
            f = sigmoid(s[F_F * LANES + j])
            g = tanh(s[F_G * LANES + j])
            o = sigmoid(s[F_O * LANES + j])
            c = f * s[F_C * LANES + j] + i * g
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
def lstm_forward(hs, cs, acts, xtable, xindex, Wp, n_blocks):
    # hs, cs (T+1,B,H) in/out: slot 0 read, slots 1..T written
    # acts (T,B,panels*SAVED*LANES) out: the activated gates i,f,g,o and tanh(c_t) (see SAVED)
    # xtable (N,4H), xindex (T,B): the input projection of step t, stream r, bias included, is
    #     xtable[xindex[t, r]] (see Stack.forward)
    # Wp: Wh packed by pack_gate_panels
    T, B = acts.shape[0], hs.shape[1]
    S = scratch_rows(n_blocks, B, FORWARD_SLOTS * LANES, hs)
    for i in prange(n_blocks):
        r0, r1 = block(B, n_blocks, i)
        for t in range(T):
            for p in range(Wp.shape[0]):
                _lstm_forward_panel(hs, cs, acts, xtable, xindex, Wp, S[i], t, p, r0, r1)


@kernel
def _lstm_backward_panel(dxproj, dh, dc, dhs, cs, acts, WTp, S, t, p, r0, r1):
    # step t for the units of panel p and the streams [r0, r1)
    # S (B, BACKWARD_SLOTS * LANES): scratch rows; this thread's are [r0, r1)
    H = dh.shape[1]
    u0 = p * LANES
    n = min(LANES, H - u0)
    recurrent_grad(dxproj, t + 1, WTp, S, p, r0, r1, B_SPARE)  # a_{t+1} = ... + h_t @ Wh
    for r in range(r0, r1):
        s = S[r]
        if t > 0:  # the lines step t-1 reads, and those it writes
            for k in range(SAVED):
                prefetch(acts[t - 1, r], (p * SAVED + k) * LANES)
            prefetch(cs[t - 1, r], u0)
            prefetch(dhs[t - 1, r], u0)
            for g in range(4):
                prefetch_for_write(dxproj[t - 1, r], g * H + u0)
        copy_block(s, B_I * LANES, acts[t, r], p * SAVED * LANES, SAVED * LANES)
        copy_lanes(s, B_CPREV * LANES, cs[t, r], u0, n)
        copy_lanes(s, B_DH * LANES, dh[r], u0, n)
        copy_lanes(s, B_DHUP * LANES, dhs[t, r], u0, n)
        copy_lanes(s, B_DC * LANES, dc[r], u0, n)
        for j in range(LANES):
            i = s[B_I * LANES + j]
            f = s[B_F * LANES + j]
            g = s[B_G * LANES + j]
            o = s[B_O * LANES + j]
            tc = s[B_TC * LANES + j]
            dh_t = s[B_DH * LANES + j] + s[B_REC * LANES + j] + s[B_DHUP * LANES + j]
            s[B_DH * LANES + j] = 0.0  # consumed (no path to h_{t-1} but the product)
            # h_t = o * tanh(c_t)
            do = dh_t * tc
            dc_t = s[B_DC * LANES + j] + dh_t * o * (ONE - tc * tc)
            # c_t = f * c_{t-1} + i * g
            di = dc_t * g
            dg = dc_t * i
            df = dc_t * s[B_CPREV * LANES + j]
            s[B_DC * LANES + j] = dc_t * f
            # through the sigmoids and the tanh to the pre-activations
            s[B_I * LANES + j] = di * i * (ONE - i)
            s[B_F * LANES + j] = df * f * (ONE - f)
            s[B_G * LANES + j] = dg * (ONE - g * g)
            s[B_O * LANES + j] = do * o * (ONE - o)
        for g in range(4):
            copy_lanes(dxproj[t, r], g * H + u0, s, (B_I + g) * LANES, n)
        copy_lanes(dc[r], u0, s, B_DC * LANES, n)
        copy_lanes(dh[r], u0, s, B_DH * LANES, n)  # after the window, add_entering_grad adds to it


@parallel_kernel
def lstm_backward(dxproj, dh, dc, dhs, cs, acts, WTp, n_blocks):
    # dxproj (T,B,4H) out: dLoss/d(pre-activations), which is also dLoss/d(xproj)
    # dh, dc (B,H) in/out: gradient arriving at the window's last state from later steps
    #     (zero under truncation); on return, the gradient w.r.t. the entering state hs[0], cs[0]
    # dhs (T,B,H) in: gradient w.r.t. h_t from the layer above / the output layer
    # WTp: Wh^T packed by pack_transposed_panels
    # The weight gradient dWh = sum_t h_{t-1}^T da_t is one product after this (cells.py).
    T, B = dxproj.shape[0], dh.shape[0]
    S = scratch_rows(n_blocks, B, BACKWARD_SLOTS * LANES, dh)
    for i in prange(n_blocks):
        b0, b1 = block(B, n_blocks, i)
        for r0, r1 in stream_groups(b0, b1, WTp.nbytes):  # one group after another
            for t in range(T - 1, -1, -1):
                for p in range(WTp.shape[0]):
                    _lstm_backward_panel(dxproj, dh, dc, dhs, cs, acts, WTp, S[i], t, p, r0, r1)
            if T > 0:
                add_entering_grad(dh, dxproj, WTp, S[i], r0, r1, B_SPARE)


@kernel
def step(h, c, xg, hg, params, o, blas):
    """One step of one layer for sampling: the equations above, blocks [i | f | g | o].
    h, c (H,) in/out; xg (4H,) in: x @ Wx + b; hg (4H,) scratch;
    o: offsets into params of Wx, b, then Wh (generate.offsets_table)."""
    H = h.shape[0]
    Wh = params[o[2] : o[2] + H * 4 * H].reshape((H, 4 * H))
    matvec(hg, h, Wh, blas)  # from the old state, before h is overwritten
    for j in range(H):
        i = sigmoid(hg[j] + xg[j])
        f = sigmoid(hg[H + j] + xg[H + j])
        g = tanh(hg[2 * H + j] + xg[2 * H + j])
        o_ = sigmoid(hg[3 * H + j] + xg[3 * H + j])
        cj = f * c[j] + i * g
        c[j] = cj
        h[j] = o_ * tanh(cj)


# ---------------------------------------------------------------------------------------------
# The cell's adapter (the contract is in cells.py)


class LSTMCell(Adapter):
    name = "lstm"
    gates = 4
    blocks = ("i", "f", "g", "o")
    states = ("hs", "cs")
    step = step

    def param_shapes(self, n_in, H, spec=None):
        return standard_shapes(n_in, H, 4)

    def init(self, p, H, rng, spec=None):
        # PyTorch's default, the forget gate included. A forget-gate bias of 1 (Gers et al. 2000;
        # Jozefowicz et al. 2015) keeps more gradient at the start, yet here it cost 0.22 nats
        # at update 100 and still 0.08 at update 1000 of the default run, the same weights and
        # batches otherwise (benchmarks/parity.py); the model learns to open the gate itself.
        # `charrnn gradflow --forget-bias 1` shows what the +1 does to fresh models.
        uniform_(p, H, rng)

    def buffer_shapes(self, T, B, H):
        buf = {"hs": (T + 1, B, H), "cs": (T + 1, B, H), "acts": (T, B, n_panels(H) * SAVED * LANES)}
        return buf, panel_shapes(H, 4)

    def activations(self, buf, H):
        """{name: (T,B,H)} of the gates and tanh(c_t), from their panel-major buffer."""
        T, B = buf["acts"].shape[:2]
        saved = buf["acts"].reshape(T, B, -1, SAVED, LANES).transpose(0, 1, 3, 2, 4)
        saved = saved.reshape(T, B, SAVED, -1)[..., :H]
        return {name: saved[:, :, k] for k, name in enumerate(self.blocks + ("tanh(c)",))}

    def forward(self, buf, scratch, p, xtable, xindex, t0, t1):
        pack_gate_panels(p["Wh"], scratch["Wp"])
        lstm_forward(buf["hs"][t0 : t1 + 1], buf["cs"][t0 : t1 + 1], buf["acts"][t0:t1], xtable, xindex,
                     scratch["Wp"], threads())

    def backward(self, buf, scratch, p, g, dxproj, dhs, dstate, t0, t1):
        hs, H = buf["hs"], p["Wh"].shape[0]
        pack_transposed_panels(p["Wh"], scratch["WTp"])
        lstm_backward(dxproj[t0:t1], dstate["hs"], dstate["cs"], dhs[t0:t1], buf["cs"][t0 : t1 + 1],
                      buf["acts"][t0:t1], scratch["WTp"], threads())
        # dWh = sum_t h_{t-1}^T da_t, one product over the whole window
        matmul_tn_acc(g["Wh"], hs[t0:t1].reshape(-1, H), dxproj[t0:t1].reshape(-1, 4 * H), threads())


CELL = LSTMCell()
