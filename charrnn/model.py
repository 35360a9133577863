"""The model: parameters in one flat buffer with named views, and the layer stack over a window.

Parameters, gradients and optimizer moments are each one contiguous array with the same layout,
so the optimizer, clipping, checkpoints and gradcheck all loop over a single array.

The stack runs a window of steps held in per-layer buffers (time axis first):
    forward(t0, t1)            steps [t0, t1) from the state in slot t0
    output_grad(c0, t1)        loss of the counted predictions [c0, t1) and its gradient
    backward(g0, t1)           back through the recurrence over [g0, t1); the state in slot g0
                               is a constant (truncated BPTT)
    shift(k)                   drop the oldest k steps so that newer ones can follow
Shapes (legend): T window steps, B streams, H hidden units, V vocabulary, G gate width.
"""
import math
from dataclasses import dataclass

import numpy as np

from . import aligned
from .cells import CELLS, NAMES, OPTIONS
from .errors import CharrnnError
from .kernels._jit import threads
from .kernels.dropout import drop, drop_grad, pcg64_starts
from .kernels.inputs import dense_backward, dense_forward, onehot_backward, onehot_backward_blocks
from .kernels.output import logits_forward, output_layer, xent


@dataclass(frozen=True)
class ModelSpec:
    cell: str  # a name in cells.REGISTRY
    vocab_size: int  # V
    hidden: int  # H, the same for every layer
    layers: int  # L
    options: tuple = ()  # ((name, value), ...) of cells.OPTIONS; an option left out has its default

    def option(self, name):
        return dict(self.options).get(name, OPTIONS[name].default)

    def __post_init__(self):
        if self.cell not in NAMES:
            raise ValueError(f"unknown cell {self.cell!r}; choose one of {', '.join(NAMES)}")
        if self.vocab_size < 2 or self.hidden < 1 or self.layers < 1:
            raise ValueError(f"model sizes must be positive (vocab >= 2): {self}")


class Layout:
    """Names, shapes and offsets of every parameter tensor in the flat buffer, and which of
    them train. A frozen tensor (an echo-state network's reservoir, a fixed time constant) is
    part of the model and of its checkpoints, but the optimizer, weight decay, clipping's norm
    and gradcheck leave it alone: they work on `segments`, the trained ranges of the buffer."""

    def __init__(self, spec: ModelSpec):
        self.spec = spec
        cell = CELLS[spec.cell]
        self.entries = []  # (name, shape, offset)
        self.frozen = set()  # names of the tensors that do not train
        offset = 0
        for layer in range(spec.layers):
            n_in = spec.vocab_size if layer == 0 else spec.hidden
            for name, shape, trains in cell.param_shapes(n_in, spec.hidden, spec):
                self.entries.append((f"layer{layer}.{name}", shape, offset))
                if not trains:
                    self.frozen.add(f"layer{layer}.{name}")
                offset += int(np.prod(shape))
        for name, shape in (("output.Wy", (spec.hidden, spec.vocab_size)), ("output.by", (spec.vocab_size,))):
            self.entries.append((name, shape, offset))
            offset += int(np.prod(shape))
        self.size = offset
        self._sizes = [int(np.prod(shape)) for _, shape, _ in self.entries]
        self.segments = []  # [(lo, hi)]: the trained ranges of the flat buffer, adjacent ones merged
        for (name, _, o), n in zip(self.entries, self._sizes):
            if name in self.frozen or n == 0:
                continue
            if self.segments and self.segments[-1][1] == o:
                self.segments[-1] = (self.segments[-1][0], o + n)
            else:
                self.segments.append((o, o + n))

    def zero_frozen(self, grads):
        """Set the gradient of every frozen tensor to zero, so that clipping's norm and the
        optimizer see only what trains."""
        for (name, _, o), n in zip(self.entries, self._sizes):
            if name in self.frozen:
                grads[o : o + n] = 0.0

    def views(self, flat):
        """{name: view into flat}; writing to a view writes to the buffer. Called a few times per
        update, so it does no more than slice and reshape."""
        assert flat.shape == (self.size,), (flat.shape, self.size)
        return {name: flat[o : o + n].reshape(s) for (name, s, o), n in zip(self.entries, self._sizes)}

    def layer_views(self, flat):
        """[{short name: view}] per layer, and the output layer's views."""
        named = self.views(flat)
        layers = [
            {k.split(".", 1)[1]: v for k, v in named.items() if k.startswith(f"layer{l}.")}
            for l in range(self.spec.layers)
        ]
        return layers, {"Wy": named["output.Wy"], "by": named["output.by"]}


def state_grows(spec: ModelSpec, params) -> bool:
    """Whether the model's state may grow without bound over a long stream (an IndRNN unit whose
    u passes 1), so that finite parameters compute NaN or Inf there."""
    layers, _ = Layout(spec).layer_views(params)
    return any(CELLS[spec.cell].grows_without_bound(p) for p in layers)


# The tensors with an axis over the vocabulary, and which axis: layer 0's input weights (a row
# per character), the output layer's weights (a column per character) and biases.
VOCAB_AXES = {"layer0.Wx": 0, "output.Wy": 1, "output.by": 0}


def transplant(old_spec: ModelSpec, old_params, spec: ModelSpec, params):
    """Copy a model into `params`, the same model over a larger vocabulary whose first
    old_spec.vocab_size characters are the old ones (corpus.Vocab.extended): every tensor whole,
    and of the tensors over the vocabulary (VOCAB_AXES) the old characters' rows. The rows of the
    new characters keep what `params` held (a fresh model's, for fine-tuning)."""
    if (old_spec.cell, old_spec.hidden, old_spec.layers) != (spec.cell, spec.hidden, spec.layers) \
            or old_spec.vocab_size > spec.vocab_size:
        raise ValueError(f"cannot grow {old_spec} into {spec}")
    new = Layout(spec).views(params)
    for name, old in Layout(old_spec).views(old_params).items():
        where = [slice(None)] * old.ndim
        if name in VOCAB_AXES:
            where[VOCAB_AXES[name]] = slice(0, old_spec.vocab_size)
        new[name][tuple(where)] = old


def init_params(spec: ModelSpec, rng: np.random.Generator, dtype=np.float32):
    layout = Layout(spec)
    flat = np.zeros(layout.size, dtype)
    layers, out = layout.layer_views(flat)
    cell = CELLS[spec.cell]
    for p in layers:
        cell.init(p, spec.hidden, rng, spec)
    bound = 1.0 / np.sqrt(spec.hidden)
    out["Wy"][...] = rng.uniform(-bound, bound, out["Wy"].shape)
    out["by"][...] = rng.uniform(-bound, bound, out["by"].shape)
    return flat


class Stack:
    """The per-window buffers of one model for B streams and a window of T steps.

    `rows`: the streams of a batch of `batch` that this stack holds (a rank's share under MPI),
    all by default; B = their number. Dropout masks are drawn for these rows alone, the numbers
    one process draws for them (kernels/dropout.py), so that R ranks draw what one process draws."""

    def __init__(self, spec: ModelSpec, batch: int, window: int, dtype=np.float32, dropout=0.0, rows=None):
        self.rows = slice(0, batch) if rows is None else rows
        self.total = batch  # streams in the whole batch
        batch = self.rows.stop - self.rows.start
        self.spec, self.B, self.T, self.dtype = spec, batch, window, np.dtype(dtype)
        self.layout = Layout(spec)
        self.cell = CELLS[spec.cell]
        self.layers_frozen = all(name in self.layout.frozen for name, _, _ in self.layout.entries
                                 if name.startswith("layer"))
        self.dropout = float(dropout)
        L, B, T, H, V = spec.layers, batch, window, spec.hidden, spec.vocab_size
        G = self.cell.gates * H
        self.ids = np.zeros((T, B), np.int32)  # input character of each step
        self.targets = np.zeros((T, B), np.int32)  # the character each step predicts
        self.bufs, self.scratch = zip(*(self.cell.buffers(T, B, H, dtype) for _ in range(L)))
        # The input projection of layer 0 is a lookup: row v of the table is Wx[v] + b, indexed
        # by the input characters. A layer above computes its (T*B, G) projection and indexes
        # it by position t*B + r.
        self.onehot_table = aligned.zeros((V, G), dtype)
        self.xproj = [None] + [aligned.zeros((T, B, G), dtype) for _ in range(L - 1)]
        self.positions = np.arange(T * B, dtype=np.int32).reshape(T, B)
        self.dxproj = [aligned.zeros((T, B, G), dtype) for _ in range(L)]
        self.dhs = [aligned.zeros((T, B, H), dtype) for _ in range(L)]  # dLoss/dh_t from above
        self.top_grad_skipped = False  # whether dhs[-1] lacks the last output_grad's gradient (left out, or torn)
        self.dstate = [{k: aligned.zeros((B, H), dtype) for k in self.cell.states} for _ in range(L)]
        # Dropout sits on the input of every layer above the first and on the output layer's
        # input (as in char-rnn); index l = the input of layer l, index L = the output layer's.
        self.masks = [None] + [aligned.ones((T, B, H), dtype) if dropout > 0 else None for _ in range(L)]
        self.dropped = [None] + [aligned.zeros((T, B, H), dtype) if dropout > 0 else None for _ in range(L)]
        # numpy's allocation, not aligned.zeros: on a cache line, BLAS's product reading it for
        # dWy ran 0.90x as fast at V=6000 (two threads, Intel Xeon; the cause is inside OpenBLAS,
        # not found), and the output layer 0.95x-0.96x; at V=65 and 1003 the same either way
        self.logits = np.zeros((T * B, V), dtype)
        self.row_loss = aligned.zeros(T * B, dtype)

    @staticmethod
    def nbytes(spec: ModelSpec, batch: int, window: int, dtype=np.float32, dropout=0.0) -> int:
        """The bytes a Stack of these sizes allocates, counted without allocating them (a run
        checks that it fits before it starts). It follows __init__ line by line; a test holds
        the two equal. (Each float buffer also takes 64 bytes more, to start on a cache line:
        aligned.py; not counted.)"""
        L, B, T, H, V = spec.layers, batch, window, spec.hidden, spec.vocab_size
        cell = CELLS[spec.cell]
        G = cell.gates * H
        ints = 3 * T * B  # ids, targets, positions
        floats = L * sum(math.prod(s) for shapes in cell.buffer_shapes(T, B, H) for s in shapes.values())
        floats += V * G  # onehot_table
        floats += (L - 1) * T * B * G + L * T * B * G  # xproj, dxproj
        floats += L * T * B * H + L * len(cell.states) * B * H  # dhs, dstate
        if dropout > 0:
            floats += 2 * L * T * B * H  # masks, dropped
        floats += T * B * V + T * B  # logits, row_loss
        return ints * np.dtype(np.int32).itemsize + floats * np.dtype(dtype).itemsize

    # -- state -------------------------------------------------------------------------------
    def get_state(self, slot):
        """Copies of every layer's state arrays at `slot`: [[(B,H), ...] per layer]."""
        return [[buf[k][slot].copy() for k in self.cell.states] for buf in self.bufs]

    def set_state(self, slot, state):
        for buf, arrays in zip(self.bufs, state):
            for k, a in zip(self.cell.states, arrays):
                buf[k][slot] = a

    def _time_buffers(self):
        """{name: buffer} of everything with a time axis that a later update may read."""
        named = {"ids": self.ids, "targets": self.targets}
        for l, buf in enumerate(self.bufs):
            named.update({f"layer{l}.{k}": a for k, a in buf.items()})
        for l in range(1, self.spec.layers + 1):
            if self.masks[l] is not None:
                named[f"input{l}.mask"] = self.masks[l]
                named[f"input{l}.dropped"] = self.dropped[l]
        return named

    def shift(self, k):
        """Move the newest T-k steps (and the state after them) to the front of every buffer."""
        if k >= self.T:
            self.set_state(0, self.get_state(self.T))
            return
        for a in self._time_buffers().values():
            n = a.shape[0]
            a[: n - k] = a[k:].copy()

    def kept_arrays(self, keep):
        """Copies of the first `keep` steps of every time buffer (and the state after them):
        all that the next update reads from earlier ones. Saved in checkpoints."""
        return {name: a[: keep + (a.shape[0] - self.T)].copy() for name, a in self._time_buffers().items()}

    def load_kept_arrays(self, arrays, keep):
        """Restore what kept_arrays(keep) saved. A window saved by a charrnn whose buffers were
        laid out differently cannot be resumed exactly: that is an error, not a silent restart."""
        for name, a in self._time_buffers().items():
            rows = keep + (a.shape[0] - self.T)
            kept = arrays.get(name)
            if kept is not None and kept.shape[0] == rows == 0:
                continue  # nothing kept (k1 >= k2 keeps no steps): any layout will do
            if kept is None or kept.shape != (rows,) + a.shape[1:]:
                found = "missing" if kept is None else f"shaped {kept.shape}"
                raise CharrnnError(
                    f"the checkpoint's saved window does not fit this charrnn (buffer {name} is {found}, "
                    f"expected {(rows,) + a.shape[1:]}); resume it with the charrnn that wrote it "
                    f"(sampling and eval still work)")
            a[:rows] = kept

    def constrain(self, params):
        """After an optimizer step: each layer's cell keeps its tensors in their domain (a rate in
        (0, 1], a bounded recurrent weight), if it has such a rule."""
        rule = getattr(self.cell, "constrain", None)
        if rule is not None:
            for p in self.layout.layer_views(params)[0]:
                rule(p, self.spec)

    # -- forward -----------------------------------------------------------------------------
    def _layer_input(self, l, t0, t1, rng):
        """Input of layer l (l = L: the output layer) for steps [t0, t1): (n*B, H), C-contiguous."""
        below = self.bufs[l - 1]["hs"][t0 + 1 : t1 + 1]
        if self.masks[l] is None:
            return below.reshape(-1, self.spec.hidden)
        if rng is not None:  # a training forward draws fresh masks (inverted dropout)
            keep = 1.0 - self.dropout
            starts, inc = pcg64_starts(rng, t1 - t0, self.total, self.spec.hidden, self.rows)
            drop(self.dropped[l][t0:t1], self.masks[l][t0:t1], below, starts, inc, keep, self.dtype.type(1.0 / keep),
                 threads())
        else:
            self.masks[l][t0:t1] = 1.0
            np.multiply(below, self.masks[l][t0:t1], out=self.dropped[l][t0:t1])
        return self.dropped[l][t0:t1].reshape(-1, self.spec.hidden)

    def forward(self, params, t0, t1, rng=None):
        """Run steps [t0, t1) of every layer from the state in slot t0. `rng` draws dropout."""
        layers, _ = self.layout.layer_views(params)
        for l, p in enumerate(layers):
            if l == 0:
                np.add(p["Wx"], p["b"], out=self.onehot_table)
                xtable, xindex = self.onehot_table, self.ids[t0:t1]
            else:
                x2d = self._layer_input(l, t0, t1, rng)
                xproj = self.xproj[l]
                dense_forward(xproj[t0:t1].reshape(x2d.shape[0], xproj.shape[2]), x2d, p["Wx"], p["b"])
                xtable, xindex = xproj.reshape(self.T * self.B, -1), self.positions[t0:t1]
            self.cell.forward(self.bufs[l], self.scratch[l], p, xtable, xindex, t0, t1)
        self._layer_input(self.spec.layers, t0, t1, rng)  # the output layer's (dropped) input

    # -- loss ---------------------------------------------------------------------------------
    def loss(self, params, c0, t1):
        """Sum of -log p(target) over the predictions of steps [c0, t1), in nats (float64)."""
        _, out = self.layout.layer_views(params)
        h2d = self._stored_input(self.spec.layers, c0, t1)
        logits = self.logits[: h2d.shape[0]]
        logits_forward(logits, h2d, out["Wy"], out["by"])
        rows = self.row_loss[: h2d.shape[0]]
        xent(logits, rows, self.targets[c0:t1].reshape(-1))
        return float(rows.sum(dtype=np.float64))

    def output_grad(self, params, grads, c0, t1, scale, through_frozen=False):
        """Loss of steps [c0, t1) (sum, nats) and its gradient, times `scale`, into `grads` and
        into dhs of the top layer. Call after forward, before backward. When no layer trains (an
        echo-state network), an update's backward reads nothing of dhs, and it is left out unless
        `through_frozen` asks for it: a backward through the frozen layers (gradflow's) needs it."""
        _, out = self.layout.layer_views(params)
        _, gout = self.layout.layer_views(grads)
        h2d = self._stored_input(self.spec.layers, c0, t1)
        n = h2d.shape[0]
        dlogits = self.logits[:n]
        into_h = through_frozen or not self.layers_frozen
        self.top_grad_skipped = True  # until dhs[-1] is whole: an error below leaves it torn
        dtop = self.dhs[-1]
        if into_h:
            dtop[:c0] = 0.0  # steps without a counted prediction send nothing down
            dtop[t1:] = 0.0
        output_layer(dlogits, self.row_loss[:n], self.targets[c0:t1].reshape(-1), self.dtype.type(scale), h2d,
                     out["Wy"], out["by"], dtop[c0:t1].reshape(n, -1), gout["Wy"], gout["by"], into_h)
        L = self.spec.layers
        if into_h and self.masks[L] is not None:
            drop_grad(dtop[c0:t1], self.masks[L][c0:t1], threads())
        self.top_grad_skipped = not into_h
        return float(self.row_loss[:n].sum(dtype=np.float64))

    # -- backward -----------------------------------------------------------------------------
    def backward(self, params, grads, g0, t1, through_frozen=False):
        """Back through the recurrence over [g0, t1), accumulating into `grads`.

        Gradients arriving at dhs of the top layer outside [g0, t1) are dropped: the state in
        slot g0 is a constant of the truncated objective. Returns per layer the gradient w.r.t.
        the state entering the window (used by the gradient-flow diagnostics).

        When no tensor of any layer trains (an echo-state network: only the output layer
        learns), there is nothing to compute below the output layer and this returns at once,
        unless `through_frozen` asks for the state gradients anyway. It refuses (ValueError) after
        an output_grad that left the top layer's state gradients out, or failed part way."""
        if not through_frozen and self.layers_frozen:
            return self.dstate
        if self.top_grad_skipped:
            raise ValueError("output_grad left the top layer's state gradients out, or failed part way: call it "
                             "again (with through_frozen=True where no layer trains)")
        layers, _ = self.layout.layer_views(params)
        glayers, _ = self.layout.layer_views(grads)
        H = self.spec.hidden
        for l in range(self.spec.layers - 1, -1, -1):
            p, g = layers[l], glayers[l]
            for a in self.dstate[l].values():
                a[:] = 0.0
            self.cell.backward(self.bufs[l], self.scratch[l], p, g, self.dxproj[l], self.dhs[l],
                               self.dstate[l], g0, t1)
            dx = self.dxproj[l][g0:t1]
            if l == 0:
                n_blocks = onehot_backward_blocks(self.spec.vocab_size, *dx.shape[:2])
                onehot_backward(g["Wx"], g["b"], dx, self.ids[g0:t1], n_blocks)
            else:
                x2d = self._stored_input(l, g0, t1)
                dbelow = self.dhs[l - 1][g0:t1]
                dense_backward(dbelow.reshape(-1, H), g["Wx"], g["b"], dx.reshape(x2d.shape[0], -1),
                               x2d, p["Wx"])
                if self.masks[l] is not None:
                    drop_grad(dbelow, self.masks[l][g0:t1], threads())
        return self.dstate

    def _stored_input(self, l, t0, t1):
        """The input of layer l (l = L: the output layer) for steps [t0, t1) as the last forward
        left it, dropout applied: (n*B, H), C-contiguous."""
        if self.masks[l] is None:
            return self.bufs[l - 1]["hs"][t0 + 1 : t1 + 1].reshape(-1, self.spec.hidden)
        return self.dropped[l][t0:t1].reshape(-1, self.spec.hidden)
