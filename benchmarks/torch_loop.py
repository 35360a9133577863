"""The PyTorch side of the quality comparisons: the loop a user would write, and the weight
conversions that let both engines start from, and be scored with, the same numbers.

The model is nn.RNN/LSTM/GRU on one-hot input and an nn.Linear head; the loop is truncated BPTT
with the state carried across windows (detached), Adam, norm clipping. Shapes: T steps, B
streams, H hidden, V vocabulary; time-major like charrnn.

Weight mapping (PyTorch stores (gates*H, in) and two bias vectors per layer; charrnn stores
(in, gates*H) and one, plus the GRU's b_hn inside the reset product):
    weight_ih = Wx^T    weight_hh = Wh^T    bias_ih + bias_hh = b    (GRU: bias_hh's n part = bhn)
"""
import time

import numpy as np
import torch
import torch.nn.functional as F

from charrnn.model import Layout

MODULES = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}


class CharModel(torch.nn.Module):
    """Dropout as charrnn places it: on the input of every layer above the first (nn.LSTM's own
    dropout) and on the head's input."""

    def __init__(self, cell, V, H, layers, dropout=0.0):
        super().__init__()
        self.V = V
        self.rnn = MODULES[cell](V, H, num_layers=layers, dropout=dropout if layers > 1 else 0.0)
        self.drop = torch.nn.Dropout(dropout)
        self.head = torch.nn.Linear(H, V)

    def forward(self, ids, state=None):
        """ids (T, B) int64 -> logits (T, B, V), the state after the last step."""
        out, state = self.rnn(F.one_hot(ids, self.V).float(), state)
        return self.head(self.drop(out)), state


def detach(state):
    if state is None:
        return None
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


def load_charrnn(model, spec, params, one_bias=False):
    """Copy charrnn's flat params into the torch model. With one_bias, bias_hh holds only what
    charrnn keeps apart (the GRU's b_hn) and the rest of it is frozen at zero, so that the two
    models are the same function of the same trainable numbers."""
    views = Layout(spec).views(np.asarray(params, np.float32))
    H = spec.hidden
    with torch.no_grad():
        for l in range(spec.layers):
            get = lambda name: torch.from_numpy(views[f"layer{l}.{name}"].copy())  # noqa: E731
            getattr(model.rnn, f"weight_ih_l{l}").copy_(get("Wx").T)
            getattr(model.rnn, f"weight_hh_l{l}").copy_(get("Wh").T)
            getattr(model.rnn, f"bias_ih_l{l}").copy_(get("b"))
            bias_hh = getattr(model.rnn, f"bias_hh_l{l}")
            bias_hh.zero_()
            if spec.cell == "gru":
                bias_hh[2 * H:] = get("bhn")
        model.head.weight.copy_(torch.from_numpy(views["output.Wy"].copy()).T)
        model.head.bias.copy_(torch.from_numpy(views["output.by"].copy()))
    if one_bias:
        for l in range(spec.layers):
            bias_hh = getattr(model.rnn, f"bias_hh_l{l}")
            if spec.cell == "gru":  # only the n part trains: mask the gradient of the rest
                mask = torch.zeros_like(bias_hh)
                mask[2 * H:] = 1.0
                bias_hh.register_hook(lambda g, m=mask: g * m)
            else:
                bias_hh.requires_grad_(False)


def to_charrnn(model, spec):
    """The torch model's weights as charrnn's flat float32 params (the two biases summed)."""
    layout = Layout(spec)
    flat = np.zeros(layout.size, np.float32)
    views = layout.views(flat)
    H = spec.hidden
    with torch.no_grad():
        for l in range(spec.layers):
            views[f"layer{l}.Wx"][...] = getattr(model.rnn, f"weight_ih_l{l}").numpy().T
            views[f"layer{l}.Wh"][...] = getattr(model.rnn, f"weight_hh_l{l}").numpy().T
            b_ih = getattr(model.rnn, f"bias_ih_l{l}").numpy()
            b_hh = getattr(model.rnn, f"bias_hh_l{l}").numpy()
            if spec.cell == "gru":
                views[f"layer{l}.b"][...] = b_ih
                views[f"layer{l}.b"][: 2 * H] += b_hh[: 2 * H]
                views[f"layer{l}.bhn"][...] = b_hh[2 * H:]
            else:
                views[f"layer{l}.b"][...] = b_ih + b_hh
        views["output.Wy"][...] = model.head.weight.numpy().T
        views["output.by"][...] = model.head.bias.numpy()
    return flat


class Loop:
    """One training run's state: model, Adam, the carried state. `update` takes one window."""

    def __init__(self, model, lr, clip_norm):
        self.model, self.lr, self.clip_norm = model, lr, clip_norm
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.Adam(self.params, lr=lr)
        self.state = None

    def update(self, inputs, targets, lr=None):
        """inputs, targets (k1, B) int arrays; returns the mean loss in nats."""
        if lr is not None:
            for group in self.opt.param_groups:
                group["lr"] = lr
        logits, state = self.model(torch.from_numpy(np.asarray(inputs, np.int64)), self.state)
        loss = F.cross_entropy(logits.reshape(-1, self.model.V),
                               torch.from_numpy(np.asarray(targets, np.int64)).reshape(-1))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip_norm)
        self.opt.step()
        self.state = detach(state)
        return float(loss.detach())

    @torch.no_grad()
    def evaluate(self, streams, window):
        """Mean loss over a charrnn EvalStreams, each stream from a zero state, as a plain loop
        would score its validation text."""
        total, state = 0.0, None
        for inputs, targets in streams.windows(window):
            logits, state = self.model(torch.from_numpy(np.asarray(inputs, np.int64)), state)
            total += float(F.cross_entropy(logits.reshape(-1, self.model.V),
                                           torch.from_numpy(np.asarray(targets, np.int64)).reshape(-1),
                                           reduction="sum"))
        return total / streams.count


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t
