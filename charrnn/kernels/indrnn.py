"""IndRNN (Li et al. 2018) over a window of steps: forward and backward side by side.

    h_t = relu(xproj_t + u * h_{t-1})      xproj_t = W_x x_t + b (input projection, looked up)

u (H,) is a vector: every unit sees only its own past, so the recurrence is elementwise, with
no (H,H) product at all, and its Jacobian is diagonal. A gradient through k steps of unit j is
multiplied by u_j^k (times the relu's 0 or 1), so |u_j| alone decides whether it grows or
decays; Li et al. bound |u| by gamma^(1/T) for a window of T steps, so that it grows at most
gamma-fold (cells.OPTIONS "u_max"; the bound is kept after each optimizer step by `constrain`).

Shapes (legend): T steps in the window, B streams, H hidden units.
Slot t of `hs` holds the state *before* step t: hs[0] enters the window, hs[T] leaves it.
Threads split the streams; each runs the whole window for its block of streams.
"""
import numpy as np
from numba import prange

from ..cells import Adapter, Tensor, uniform_
from ._jit import block, kernel, parallel_kernel, threads
from .activations import ZERO
from .panels import add_thread_sums, thread_sums


@kernel
def relu(x):
    # not max(x, 0): a NaN must stay NaN; x - x is a zero of x's own type
    return x - x if x < 0.0 else x


@parallel_kernel
def indrnn_forward(hs, xtable, xindex, u, n_blocks):
    # hs (T+1,B,H) in/out: slot 0 read, slots 1..T written
    # xtable (N,H), xindex (T,B): the input projection of step t, stream r, bias included, is
    #     xtable[xindex[t, r]] (see Stack.forward)       u (H,)
    T, B, H = xindex.shape[0], hs.shape[1], hs.shape[2]
    for i in prange(n_blocks):
        r0, r1 = block(B, n_blocks, i)
        for t in range(T):
            for r in range(r0, r1):
                x, h, h_new = xtable[xindex[t, r]], hs[t, r], hs[t + 1, r]
                for j in range(H):
                    h_new[j] = relu(x[j] + u[j] * h[j])


@parallel_kernel
def indrnn_backward(dxproj, du, dh, dhs, hs, u, n_blocks):
    # dxproj (T,B,H) out: dLoss/d(pre-activation) = dLoss/d(xproj)
    # du (H,) accumulated with +=: dLoss/du, summed over steps and streams, each thread into a
    #     row of its own as it goes (a (T,B,H) buffer summed after wrote and read H floats a
    #     character)
    # dh (B,H) in/out: gradient arriving at hs[T] from later steps (zero under truncation);
    #     on return, the gradient w.r.t. the entering state hs[0]
    # dhs (T,B,H) in: gradient w.r.t. h_t from above
    T, B, H = dxproj.shape[0], dh.shape[0], dh.shape[1]
    sums = thread_sums(n_blocks, H, dh)
    for i in prange(n_blocks):
        r0, r1 = block(B, n_blocks, i)
        dur = sums[i]
        for t in range(T - 1, -1, -1):
            for r in range(r0, r1):
                d, carry, h, h_prev = dxproj[t, r], dh[r], hs[t + 1, r], hs[t, r]
                up = dhs[t, r]
                for j in range(H):
                    dh_t = carry[j] + up[j]
                    # h_t = relu(pre): the gradient passes where the unit is active
                    dpre = dh_t if h[j] > ZERO else ZERO  # a float32 zero: 0.0 made dpre a float64
                    d[j] = dpre
                    # pre = xproj + u * h_{t-1}
                    dur[j] += dpre * h_prev[j]
                    carry[j] = dpre * u[j]
    add_thread_sums(du, 0, sums, 0, H)


@kernel
def step(h, c, xg, hg, params, o, blas):
    """One step of one layer for sampling: h = relu(xg + u * h).
    h (H,) in/out; c, hg, blas unused; xg (H,) in: x @ Wx + b;
    o: offsets into params of Wx, b, then u (generate.offsets_table)."""
    H = h.shape[0]
    u = params[o[2] : o[2] + H]
    for j in range(H):
        h[j] = relu(xg[j] + u[j] * h[j])


# ---------------------------------------------------------------------------------------------
# The cell's adapter (the contract is in cells.py)


def u_bound(spec):
    """The bound on |u|: the option, or for a spec without one 2^(1/k2) of the default k2."""
    from ..config import TrainConfig

    return spec.option("u_max") or 2.0 ** (1.0 / TrainConfig.k2)


class IndRNNCell(Adapter):
    name = "indrnn"
    gates = 1
    blocks = ("h",)
    states = ("hs",)
    step = step

    def param_shapes(self, n_in, H, spec):
        return [Tensor("Wx", (n_in, H)), Tensor("u", (H,)), Tensor("b", (H,))]

    def init(self, p, H, rng, spec):
        uniform_(p, H, rng)
        # u ~ U(0, bound) (Li et al. 2018): every unit starts remembering, none exploding
        p["u"][...] = rng.uniform(0.0, u_bound(spec), H)

    constrained = ("u",)

    def constrain(self, p, spec):
        bound = u_bound(spec)
        np.clip(p["u"], -bound, bound, out=p["u"])

    def buffer_shapes(self, T, B, H):
        return {"hs": (T + 1, B, H)}, {}

    def activations(self, buf, H):
        return {}  # relu units: neither a gate nor a tanh that saturates

    def recurrent(self, p, H):
        return {"u": p["u"]}

    def kinks(self, buf):
        """Which units are active at each step of the window: where a finite difference that
        changes this pattern crossed the relu's kink (gradcheck)."""
        return buf["hs"][1:] > 0.0

    def grows_without_bound(self, p) -> bool:
        # an active unit's state (relu: never negative) is multiplied by its u at every step: u > 1
        # grows it geometrically; a negative u only pulls it toward relu(xproj)
        return bool((p["u"] > 1.0).any())

    def update_flops(self, H):
        return 6 * H  # elementwise: u * h forward, and two products per unit backward

    def forward(self, buf, scratch, p, xtable, xindex, t0, t1):
        indrnn_forward(buf["hs"][t0 : t1 + 1], xtable, xindex, p["u"], threads())

    def backward(self, buf, scratch, p, g, dxproj, dhs, dstate, t0, t1):
        indrnn_backward(dxproj[t0:t1], g["u"], dstate["hs"], dhs[t0:t1], buf["hs"][t0 : t1 + 1], p["u"],
                        threads())


CELL = IndRNNCell()
