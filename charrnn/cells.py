"""Cell adapters: what the layer stack needs to know about each cell type.

Each adapter names its parameter tensors and their initialisation, gives the shapes of the
per-window buffers its kernels use (allocated by `buffers`, counted by Stack.nbytes), and calls
its forward and backward kernels on a range of steps [t0, t1) of those buffers. The forward
reads the input projection of step t0+t, stream r, as row xindex[t, r] of xtable (see
Stack.forward). The stack, the scheduler and the optimizer never look inside.

Buffers with a time axis put it first. State buffers (listed in `states`) have T+1 slots, slot t
holding the state before step t; every other time buffer has T slots.
"""
import numpy as np

from .kernels._jit import threads
from .kernels.blas import column_sums_acc, matmul_tn_acc
from .kernels.gru import gru_backward, gru_forward
from .kernels.lstm import SAVED, lstm_backward, lstm_forward
from .kernels.panels import (LANES, gate_panels_shape, n_panels, pack_gate_panels, pack_transposed_panels,
                             transposed_panels_shape)
from .kernels.rnn import rnn_backward, rnn_forward


def _uniform(rng, shape, bound, dtype):
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


def _panel_shapes(H, gates):
    """Wh packed for the forward product (Wp) and Wh^T for the backward one (WTp), refreshed
    from the parameters at every call (kernels/panels.py)."""
    return {"Wp": gate_panels_shape(H, H, gates), "WTp": transposed_panels_shape(H, gates * H)}


class Cell:
    """What every cell adapter shares."""

    def buffers(self, T, B, H, dtype):
        """Zeroed ({name: buffer}, {name: scratch}) of the shapes buffer_shapes gives."""
        return tuple({k: np.zeros(s, dtype) for k, s in shapes.items()} for shapes in self.buffer_shapes(T, B, H))


class RNNCell(Cell):
    name = "rnn"
    gates = 1
    blocks = ("h",)  # names of the column blocks of Wh (and of their activations), in storage order
    states = ("hs",)

    def param_shapes(self, n_in, H):
        return [("Wx", (n_in, H)), ("Wh", (H, H)), ("b", (H,))]

    def init(self, p, H, rng):
        # PyTorch's default: U(-1/sqrt(H), 1/sqrt(H)) for every tensor
        for v in p.values():
            v[...] = _uniform(rng, v.shape, 1.0 / np.sqrt(H), v.dtype)

    def buffer_shapes(self, T, B, H):
        return {"hs": (T + 1, B, H)}, _panel_shapes(H, 1)

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


class LSTMCell(Cell):
    name = "lstm"
    gates = 4
    blocks = ("i", "f", "g", "o")
    states = ("hs", "cs")

    def param_shapes(self, n_in, H):
        return [("Wx", (n_in, 4 * H)), ("Wh", (H, 4 * H)), ("b", (4 * H,))]

    def init(self, p, H, rng):
        # PyTorch's default, the forget gate included. A forget-gate bias of 1 (Gers et al. 2000;
        # Jozefowicz et al. 2015) keeps more gradient at the start, yet here it cost 0.22 nats
        # at update 100 and still 0.08 at update 1000 of the default run, the same weights and
        # batches otherwise (benchmarks/parity.py); the model learns to open the gate itself.
        # `charrnn gradflow --forget-bias 1` shows what the +1 does to fresh models.
        for v in p.values():
            v[...] = _uniform(rng, v.shape, 1.0 / np.sqrt(H), v.dtype)

    def buffer_shapes(self, T, B, H):
        buf = {"hs": (T + 1, B, H), "cs": (T + 1, B, H), "acts": (T, B, n_panels(H) * SAVED * LANES)}
        return buf, _panel_shapes(H, 4)

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


class GRUCell(Cell):
    name = "gru"
    gates = 3
    blocks = ("r", "z", "n")
    states = ("hs",)

    def param_shapes(self, n_in, H):
        # b = [b_r | b_z | b_xn]; b_hn sits inside the reset product, so it is a tensor of its own
        return [("Wx", (n_in, 3 * H)), ("Wh", (H, 3 * H)), ("b", (3 * H,)), ("bhn", (H,))]

    def init(self, p, H, rng):
        for v in p.values():
            v[...] = _uniform(rng, v.shape, 1.0 / np.sqrt(H), v.dtype)

    def buffer_shapes(self, T, B, H):
        buf = {"hs": (T + 1, B, H), "acts": (T, B, 3 * H), "hn": (T, B, H)}
        return buf, {"dhp": (T, B, 3 * H), **_panel_shapes(H, 3)}

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
        gru_backward(dxproj[t0:t1], dhp[t0:t1], dstate["hs"], dhs[t0:t1], hs[t0 : t1 + 1],
                     buf["acts"][t0:t1], buf["hn"][t0:t1], scratch["WTp"], threads())
        # dWh = sum_t h_{t-1}^T dhp_t, one product over the whole window; b_hn enters beside
        # hp_n, so its gradient is the column sum of dhp's n block
        dhp2d = dhp[t0:t1].reshape(-1, 3 * H)
        matmul_tn_acc(g["Wh"], hs[t0:t1].reshape(-1, H), dhp2d, threads())
        column_sums_acc(g["bhn"], dhp2d[:, 2 * H :], threads())


CELLS = {c.name: c for c in (RNNCell(), LSTMCell(), GRUCell())}
