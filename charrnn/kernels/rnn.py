"""Vanilla (Elman) tanh RNN layer over a window of steps: forward and backward side by side.

    h_t = tanh(xproj_t + h_{t-1} @ Wh)    xproj_t = W_x x_t + b (input projection, looked up)

Shapes (legend): T steps in the window, B streams, H hidden units.
Slot t of `hs` holds the state *before* step t: hs[0] enters the window, hs[T] leaves it.
Wh is stored input-major, (H, H), so the recurrent product is a plain (B,H) @ (H,H).

Each thread runs the whole window for its own block of streams [r0, r1) (the backward a group of
them at a time: panels.stream_groups), one panel of LANES units at a time (panels.py). It works
on a scratch row per stream holding LANES units of a few quantities ("slots"), so the
elementwise math runs in vector loops on one array (their count read by panels.slot_width: a
constant 16, LLVM unrolled into scalar code).
"""
from numba import prange

from ..cells import Adapter, standard_shapes, uniform_
from ._jit import block, kernel, parallel_kernel, threads
from .activations import ONE, tanh
from .blas import matmul_tn_acc
from .matvec import matvec
from .panels import LANES, add_entering_grad, copy_lanes, prefetch, prefetch_for_write, recurrent_grad, recurrent_product
from .panels import stream_groups
from .panels import scratch_rows
from .panels import pack_gate_panels, pack_transposed_panels, panel_shapes, slot_width

F_A, F_SPARE = range(2)  # forward slots: the pre-activation (then h_t), the next panel's product
FORWARD_SLOTS = 2  # F_SPARE: for recurrent_product
B_REC, B_DH, B_DHUP, B_H, B_SPARE = range(5)  # backward: recurrent gradient, carried, from above, h_t
BACKWARD_SLOTS = 5  # B_SPARE: the next panel's recurrent gradient (recurrent_grad)


@kernel
def _rnn_forward_panel(hs, xtable, xindex, Wp, S, t, p, r0, r1):
    # step t for the units of panel p and the streams [r0, r1)
    H = hs.shape[2]
    u0 = p * LANES
    n = min(LANES, H - u0)
    for r in range(r0, r1):
        copy_lanes(S[r], F_A * LANES, xtable[xindex[t, r]], u0, n)
    recurrent_product(hs, t, Wp, S, p, r0, r1, F_SPARE)  # the only matrix work
    lanes = slot_width(S)
    for r in range(r0, r1):
        s = S[r]
        for j in range(lanes):
            s[F_A * LANES + j] = tanh(s[F_A * LANES + j])
        copy_lanes(hs[t + 1, r], u0, s, F_A * LANES, n)


@parallel_kernel
def rnn_forward(hs, xtable, xindex, Wp, n_blocks):
    # hs (T+1,B,H) in/out: slot 0 read, slots 1..T written
    # xtable (N,H), xindex (T,B): the input projection of step t, stream r, bias included, is
    #     xtable[xindex[t, r]] (see Stack.forward)
    # Wp: Wh packed by pack_gate_panels
    T, B = xindex.shape[0], hs.shape[1]
    S = scratch_rows(n_blocks, B, FORWARD_SLOTS * LANES, hs)
    for i in prange(n_blocks):
        r0, r1 = block(B, n_blocks, i)
        for t in range(T):
            for p in range(Wp.shape[0]):
                _rnn_forward_panel(hs, xtable, xindex, Wp, S[i], t, p, r0, r1)


@kernel
def _rnn_backward_panel(dxproj, dh, dhs, hs, WTp, S, t, p, r0, r1):
    # step t for the units of panel p and the streams [r0, r1)
    H = dh.shape[1]
    u0 = p * LANES
    n = min(LANES, H - u0)
    recurrent_grad(dxproj, t + 1, WTp, S, p, r0, r1, B_SPARE)  # a_{t+1} = ... + h_t @ Wh
    lanes = slot_width(S)
    for r in range(r0, r1):
        s = S[r]
        if t > 0:  # the lines step t-1 reads, and those it writes
            prefetch(hs[t, r], u0)
            prefetch(dhs[t - 1, r], u0)
            prefetch_for_write(dxproj[t - 1, r], u0)
        copy_lanes(s, B_DH * LANES, dh[r], u0, n)
        copy_lanes(s, B_DHUP * LANES, dhs[t, r], u0, n)
        copy_lanes(s, B_H * LANES, hs[t + 1, r], u0, n)
        for j in range(lanes):
            h = s[B_H * LANES + j]
            # h_t = tanh(a_t)
            dh_t = s[B_DH * LANES + j] + s[B_REC * LANES + j] + s[B_DHUP * LANES + j]
            s[B_DH * LANES + j] = 0.0  # consumed (no path to h_{t-1} but the product)
            s[B_H * LANES + j] = dh_t * (ONE - h * h)
        copy_lanes(dxproj[t, r], u0, s, B_H * LANES, n)
        copy_lanes(dh[r], u0, s, B_DH * LANES, n)  # after the window, add_entering_grad adds to it


@parallel_kernel
def rnn_backward(dxproj, dh, dhs, hs, WTp, n_blocks):
    # dxproj (T,B,H) out: dLoss/d(pre-activation) = dLoss/d(xproj)
    # dh (B,H) in/out: gradient arriving at hs[T] from later steps (zero under truncation);
    #     on return, the gradient w.r.t. the entering state hs[0]
    # dhs (T,B,H) in: gradient w.r.t. h_t from above     WTp: Wh^T by pack_transposed_panels
    # The weight gradient dWh = sum_t h_{t-1}^T da_t is one product after this (cells.py).
    T, B = dxproj.shape[0], dh.shape[0]
    S = scratch_rows(n_blocks, B, BACKWARD_SLOTS * LANES, dh)
    for i in prange(n_blocks):
        b0, b1 = block(B, n_blocks, i)
        for r0, r1 in stream_groups(b0, b1, WTp.nbytes):  # one group after another
            for t in range(T - 1, -1, -1):
                for p in range(WTp.shape[0]):
                    _rnn_backward_panel(dxproj, dh, dhs, hs, WTp, S[i], t, p, r0, r1)
            if T > 0:
                add_entering_grad(dh, dxproj, WTp, S[i], r0, r1, B_SPARE)


@kernel
def step(h, c, xg, hg, params, o, blas):
    """One step of one layer for sampling: h = tanh(h @ Wh + xg).
    h (H,) in/out; c unused; xg (H,) in: x @ Wx + b; hg (H,) scratch;
    o: offsets into params of Wx, b, then Wh (generate.offsets_table)."""
    H = h.shape[0]
    Wh = params[o[2] : o[2] + H * H].reshape((H, H))
    matvec(hg, h, Wh, blas)  # from the old state, before h is overwritten
    for j in range(H):
        h[j] = tanh(hg[j] + xg[j])


# ---------------------------------------------------------------------------------------------
# The cell's adapter (the contract is in cells.py)


class RNNCell(Adapter):
    name = "rnn"
    gates = 1
    blocks = ("h",)  # names of the column blocks of Wh (and of their activations), in storage order
    states = ("hs",)
    step = step

    def param_shapes(self, n_in, H, spec=None):
        return standard_shapes(n_in, H, 1)

    def init(self, p, H, rng, spec=None):
        uniform_(p, H, rng)

    def buffer_shapes(self, T, B, H):
        return {"hs": (T + 1, B, H)}, panel_shapes(H, 1)

    def activations(self, buf, H):
        """{name: (T,B,H)} of the activations of the window's steps."""
        return {"h": buf["hs"][1:]}

    def forward(self, buf, scratch, p, xtable, xindex, t0, t1):
        pack_gate_panels(p["Wh"], scratch["Wp"])
        rnn_forward(buf["hs"][t0 : t1 + 1], xtable, xindex, scratch["Wp"], threads())

    def backward(self, buf, scratch, p, g, dxproj, dhs, dstate, t0, t1):
        hs, H = buf["hs"], p["Wh"].shape[0]
        pack_transposed_panels(p["Wh"], scratch["WTp"])
        rnn_backward(dxproj[t0:t1], dstate["hs"], dhs[t0:t1], hs[t0 : t1 + 1], scratch["WTp"], threads())
        # dWh = sum_t h_{t-1}^T da_t, one product over the whole window
        matmul_tn_acc(g["Wh"], hs[t0:t1].reshape(-1, H), dxproj[t0:t1].reshape(-1, H), threads())


CELL = RNNCell()
