"""Leaky-integrator tanh units over a window of steps: forward and backward side by side.

    k_t = tanh(xproj_t + h_{t-1} @ Wh)     xproj_t = W_x x_t + b (input projection, looked up)
    h_t = (1 - a) * h_{t-1} + a * k_t      a = 1/tau, one rate per unit, in (0, 1]

a = 1 is the plain tanh RNN. A small rate integrates slowly: the direct path h_{t-1} -> h_t
multiplies a gradient by 1 - a per step, so it travels about tau steps before it has shrunk by
1/e, whatever the recurrent matrix does. The rates are a tensor `a` of the layer, frozen unless
--tau learned (cells.OPTIONS).

The echo-state network (esn.py) runs these same kernels with every tensor frozen.

Shapes (legend): T steps in the window, B streams, H hidden units.
Slot t of `hs` holds the state *before* step t: hs[0] enters the window, hs[T] leaves it.
Wh is stored input-major, (H, H). As in rnn.py, each thread runs the whole window for its own
block of streams (the backward a group of them at a time), one panel of LANES units at a time
(panels.py), on scratch rows of "slots".
"""
import numpy as np
from numba import prange

from ..cells import Adapter, Tensor, normal_tau, uniform_
from ._jit import block, kernel, parallel_kernel, threads
from .activations import ONE, tanh
from .blas import matmul_tn_acc
from .matvec import matvec
from .panels import LANES, add_entering_grad, add_panel, copy_lanes, prefetch_for_write, recurrent_grad, recurrent_product
from .panels import stream_groups
from .panels import scratch_rows
from .panels import add_thread_sums, pack_gate_panels, pack_transposed_panels, panel_shapes, thread_sums

# forward slots: the pre-activation (then k_t), h_{t-1} (then h_t), a, the next panel's product
F_K, F_H, F_A, F_SPARE = range(4)
FORWARD_SLOTS = 4  # F_SPARE: for recurrent_product
# backward slots: the recurrent gradient, the gradient carried into h_t, the one from above,
# k_t, h_{t-1}, a (then the gradient of the pre-activation and of a)
B_REC, B_DH, B_DHUP, B_K, B_HPREV, B_A, B_SPARE = range(7)
BACKWARD_SLOTS = 7  # B_SPARE: the next panel's recurrent gradient (recurrent_grad)


@kernel
def _leaky_forward_panel(hs, ks, xtable, xindex, Wp, a, S, t, p, r0, r1):
    # step t for the units of panel p and the streams [r0, r1)
    H = hs.shape[2]
    u0 = p * LANES
    n = min(LANES, H - u0)
    for r in range(r0, r1):
        copy_lanes(S[r], F_K * LANES, xtable[xindex[t, r]], u0, n)
        copy_lanes(S[r], F_H * LANES, hs[t, r], u0, n)
        copy_lanes(S[r], F_A * LANES, a, u0, n)
    recurrent_product(hs, t, Wp, S, p, r0, r1, F_SPARE)  # the only matrix work
    for r in range(r0, r1):
        s = S[r]
        for j in range(LANES):
            k = tanh(s[F_K * LANES + j])
            rate = s[F_A * LANES + j]
            s[F_K * LANES + j] = k
            s[F_H * LANES + j] = (ONE - rate) * s[F_H * LANES + j] + rate * k
        copy_lanes(ks[t, r], u0, s, F_K * LANES, n)
        copy_lanes(hs[t + 1, r], u0, s, F_H * LANES, n)


@parallel_kernel
def leaky_forward(hs, ks, xtable, xindex, Wp, a, n_blocks):
    # hs (T+1,B,H) in/out: slot 0 read, slots 1..T written     ks (T,B,H) out: k_t
    # xtable (N,H), xindex (T,B): the input projection of step t, stream r, bias included, is
    #     xtable[xindex[t, r]] (see Stack.forward)
    # Wp: Wh packed by pack_gate_panels     a (H,): the rates
    T, B = xindex.shape[0], hs.shape[1]
    S = scratch_rows(n_blocks, B, FORWARD_SLOTS * LANES, hs)
    for i in prange(n_blocks):
        r0, r1 = block(B, n_blocks, i)
        for t in range(T):
            for p in range(Wp.shape[0]):
                _leaky_forward_panel(hs, ks, xtable, xindex, Wp, a, S[i], t, p, r0, r1)


@kernel
def _leaky_backward_panel(dxproj, da, dh, dhs, hs, ks, a, WTp, S, t, p, r0, r1):
    # step t for the units of panel p and the streams [r0, r1)
    # da (panels*LANES,): this thread's sums of the rates' gradient, added to here
    H = dh.shape[1]
    u0 = p * LANES
    n = min(LANES, H - u0)
    recurrent_grad(dxproj, t + 1, WTp, S, p, r0, r1, B_SPARE)  # k_{t+1} = tanh(... + h_t @ Wh)
    for r in range(r0, r1):
        s = S[r]
        if t > 0:  # the line step t-1 writes
            prefetch_for_write(dxproj[t - 1, r], u0)
        copy_lanes(s, B_DH * LANES, dh[r], u0, n)
        copy_lanes(s, B_DHUP * LANES, dhs[t, r], u0, n)
        copy_lanes(s, B_K * LANES, ks[t, r], u0, n)
        copy_lanes(s, B_HPREV * LANES, hs[t, r], u0, n)
        copy_lanes(s, B_A * LANES, a, u0, n)
        for j in range(LANES):
            k = s[B_K * LANES + j]
            rate = s[B_A * LANES + j]
            dh_t = s[B_DH * LANES + j] + s[B_REC * LANES + j] + s[B_DHUP * LANES + j]
            # h_t = (1 - a) * h_{t-1} + a * k_t
            s[B_DH * LANES + j] = dh_t * (ONE - rate)  # the direct path to h_{t-1}
            s[B_A * LANES + j] = dh_t * (k - s[B_HPREV * LANES + j])
            # k_t = tanh(pre-activation)
            s[B_K * LANES + j] = dh_t * rate * (ONE - k * k)
        copy_lanes(dxproj[t, r], u0, s, B_K * LANES, n)
        add_panel(da, u0, s, B_A * LANES)  # a whole panel: the lanes past unit H are never read
        copy_lanes(dh[r], u0, s, B_DH * LANES, n)  # after the window, add_entering_grad adds to it


@parallel_kernel
def leaky_backward(dxproj, da, dh, dhs, hs, ks, a, WTp, n_blocks):
    # dxproj (T,B,H) out: dLoss/d(pre-activation) = dLoss/d(xproj)
    # da (H,) accumulated with +=: dLoss/da, summed over steps and streams, each thread into a
    #     row of its own as it goes (as peephole.py sums its weights' gradient)
    # dh (B,H) in/out: gradient arriving at hs[T] from later steps (zero under truncation);
    #     on return, the gradient w.r.t. the entering state hs[0]
    # dhs (T,B,H) in: gradient w.r.t. h_t from above     WTp: Wh^T by pack_transposed_panels
    T, B, H = dxproj.shape[0], dh.shape[0], dh.shape[1]
    S = scratch_rows(n_blocks, B, BACKWARD_SLOTS * LANES, dh)
    sums = thread_sums(n_blocks, WTp.shape[0] * LANES, dh)
    for i in prange(n_blocks):
        b0, b1 = block(B, n_blocks, i)
        for r0, r1 in stream_groups(b0, b1, WTp.nbytes):  # one group after another
            for t in range(T - 1, -1, -1):
                for p in range(WTp.shape[0]):
                    _leaky_backward_panel(dxproj, sums[i], dh, dhs, hs, ks, a, WTp, S[i], t, p, r0, r1)
            if T > 0:
                add_entering_grad(dh, dxproj, WTp, S[i], r0, r1, B_SPARE)
    add_thread_sums(da, 0, sums, 0, H)


@kernel
def step(h, c, xg, hg, params, o, blas):
    """One step of one layer for sampling: the equations above.
    h (H,) in/out; c unused; xg (H,) in: x @ Wx + b; hg (H,) scratch;
    o: offsets into params of Wx, b, then Wh, a (generate.offsets_table)."""
    H = h.shape[0]
    Wh = params[o[2] : o[2] + H * H].reshape((H, H))
    a = params[o[3] : o[3] + H]
    matvec(hg, h, Wh, blas)  # from the old state, before h is overwritten
    for j in range(H):
        k = tanh(xg[j] + hg[j])
        h[j] = (ONE - a[j]) * h[j] + a[j] * k


# ---------------------------------------------------------------------------------------------
# The cell's adapter (the contract is in cells.py)

MIN_RATE = 1e-4  # a learned rate stays in [MIN_RATE, 1]: tau at most 10,000 steps


def rates(tau, H):
    """(H,) rates 1/tau for the --tau option: one value, or LO:HI spread log-evenly over the
    units (geometric steps: as many units per octave of time scale); 'learned' starts from the
    default spread."""
    tau = normal_tau(tau)  # checked
    if tau == "learned":
        from ..cells import OPTIONS

        tau = OPTIONS["tau"].default
    lo, hi = (float(x) for x in (tau.split(":") * 2)[:2])
    return 1.0 / np.geomspace(lo, hi, H)


class LeakyCell(Adapter):
    name = "leaky"
    gates = 1
    blocks = ("h",)
    states = ("hs",)
    step = step
    checked_options = ((), (("tau", "learned"),))

    def param_shapes(self, n_in, H, spec):
        learned = spec is not None and normal_tau(spec.option("tau")) == "learned"
        return [Tensor("Wx", (n_in, H)), Tensor("Wh", (H, H)), Tensor("b", (H,)), Tensor("a", (H,), learned)]

    def init(self, p, H, rng, spec):
        uniform_(p, H, rng)
        p["a"][...] = rates(spec.option("tau"), H)

    constrained = ("a",)

    def constrain(self, p, spec):
        np.clip(p["a"], MIN_RATE, 1.0, out=p["a"])

    def buffer_shapes(self, T, B, H):
        return {"hs": (T + 1, B, H), "ks": (T, B, H)}, panel_shapes(H, 1)

    def activations(self, buf, H):
        """{name: (T,B,H)}: k_t, the tanh each unit moves towards."""
        return {"k": buf["ks"]}

    def forward(self, buf, scratch, p, xtable, xindex, t0, t1):
        pack_gate_panels(p["Wh"], scratch["Wp"])
        leaky_forward(buf["hs"][t0 : t1 + 1], buf["ks"][t0:t1], xtable, xindex, scratch["Wp"], p["a"], threads())

    def backward(self, buf, scratch, p, g, dxproj, dhs, dstate, t0, t1):
        hs, H = buf["hs"], p["Wh"].shape[0]
        pack_transposed_panels(p["Wh"], scratch["WTp"])
        leaky_backward(dxproj[t0:t1], g["a"], dstate["hs"], dhs[t0:t1], hs[t0 : t1 + 1], buf["ks"][t0:t1],
                       p["a"], scratch["WTp"], threads())
        # dWh = sum_t h_{t-1}^T dpre_t, one product over the whole window
        matmul_tn_acc(g["Wh"], hs[t0:t1].reshape(-1, H), dxproj[t0:t1].reshape(-1, H), threads())


CELL = LeakyCell()
