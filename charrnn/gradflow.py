"""How far back in time gradients reach: dL_T/dh_{T-k} for k = 0..K, per cell and per layer.

Indexing. A measured window has T = K+1 steps, numbered 1..T; h_t is a layer's output after
step t (the stack keeps it in state slot t) and h_0 enters the window. L_T is the loss of the
last step's prediction only, which reads h_T of the top layer. So k counts steps back from the
state the last prediction reads:

    g^l_k = dL_T / dh^l_{T-k}        k = 0: the top layer's h_T, straight from the output layer

It is the total derivative: move h^l_{T-k} (the cell state c of an LSTM stays put) and let
everything computed from it change, i.e. layer l's later steps and the layers above from step
T-k on. For the top layer it is the gradient w.r.t. the state in slot T-k with earlier states
held fixed, which is what Stack.backward(g0=T-k) returns. A lower layer's h^l_{T-k} also feeds
the layer above at step T-k, so its g adds the gradient the layer above sends down at that step:

    g^l_k = dstate^l(slot T-k) + dhs^l[T-k-1]        (dhs from any backward with g0 <= T-k-1)

Each k costs one backward over k steps, O(K^2) steps in all: for K = 100 about 5,000 small
steps per window, which takes a fraction of a second. It keeps this module on the stack's own
interface, cell-agnostic, with no changes to the kernels.

Reported per layer: norm(k) = the mean of ||g_k|| over windows and streams (the loss of each
stream reads only that stream's states, so the streams are independent samples); the first k with
norm(k) < 1e-3 norm(0); the spectral radius of each (H,H) gate block of the recurrent matrix; and
the fraction of saturated units over the measured steps (|tanh| > 0.99, sigmoid < 0.01 or
> 0.99), where the local derivative is below ~0.02 and gradients die.

Every window first reads the T characters before it (a warm-up), so that the state entering
the measured steps is one the model reaches on real text, not zeros.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from . import memory
from .cells import CELLS
from .corpus import Vocab, unit_name
from .errors import CharrnnError, controls_escaped, counted
from .model import Layout, ModelSpec, Stack, init_params


VANISH_RATIO = 1e-3  # "vanished": the norm fell below this fraction of its value at k = 0
TANH_SAT = 0.99  # |tanh| above this: derivative 1 - y^2 < 0.02
GATE_SAT = 0.01  # sigmoid below this or above 1 - this: derivative y (1 - y) < 0.01

# How each activation saturates: these are tanh-like, the others sigmoid gates.
TANH_UNITS = {"h", "g", "n", "tanh(c)", "k"}


@dataclass
class Model:
    label: str  # what the chart's legend says
    spec: ModelSpec
    params: np.ndarray  # flat float64 buffer
    vocab: Vocab
    encoding: str = "utf-8"  # how its text is read: "bytes" for a bytes model

    @property
    def unit(self) -> str:
        """What messages call the units of its text: a bytes model's characters are bytes."""
        return unit_name(self.encoding == "bytes")


@dataclass
class LayerFlow:
    layer: int
    norms: np.ndarray  # (K+1,) mean ||dL_T/dh_{T-k}||
    radius: dict  # block name -> spectral radius of that (H,H) block
    saturation: dict  # activation name -> fraction of saturated units

    def vanish_k(self, ratio=VANISH_RATIO):
        """The first k with norm(k) < ratio * norm(0), or None if there is none up to K; 0 where
        no gradient reaches the layer at all (norm(0) = 0: dead relu units), which read as one
        that never vanished."""
        if self.norms[0] == 0:
            return 0
        below = np.nonzero(self.norms < ratio * self.norms[0])[0]
        return int(below[0]) if below.size else None


@dataclass
class Flow:
    label: str
    spec: ModelSpec
    layers: list  # [LayerFlow]
    unknown: int = 0  # characters of the text a checkpoint's model does not know, left out

    def to_json(self):
        return {
            "label": self.label, "cell": self.spec.cell, "hidden": self.spec.hidden,
            "layers": self.spec.layers, "vocab_size": self.spec.vocab_size, "unknown_chars": self.unknown,
            "per_layer": [
                {"layer": f.layer, "norm": [float(x) for x in f.norms], "vanish_k": f.vanish_k(),
                 "spectral_radius": f.radius, "saturation": f.saturation}
                for f in self.layers
            ],
        }


# ---------------------------------------------------------------------------------------------
# Models


def fresh_model(cell: str, vocab: Vocab, hidden: int, layers: int, seed: int, options=()) -> Model:
    return _fresh(ModelSpec(cell, vocab.size, hidden, layers, options), vocab, seed)


def _fresh(spec: ModelSpec, vocab: Vocab, seed: int) -> Model:
    """An untrained model of `spec`, in float64, as the seed draws it."""
    return Model(spec.cell, spec, init_params(spec, np.random.default_rng(seed), np.float64), vocab)


def checkpoint_model(path) -> Model:
    """A trained model from a checkpoint file or run folder, its parameters in float64."""
    from .sampling import load_model  # the one checkpoint-to-model reader, with its checks

    m = load_model(path)
    path = Path(m.path).absolute()  # (a file in the working folder has no parent's name as given)
    label = f"{path.parent.name}/{path.name}"  # run/best.npz: which run it was
    return Model(label, m.spec, np.array(m.params, np.float64), m.vocab, m.config.get("encoding", "utf-8"))


def recurrent_blocks(spec: ModelSpec, params):
    """Per layer the cell's recurrent weights, {name: (H,H) block of Wh, or a vector u of a
    diagonal recurrence} (cells.py). Writing to a view writes to params."""
    layers, _ = Layout(spec).layer_views(params)
    return [CELLS[spec.cell].recurrent(p, spec.hidden) for p in layers]


def spectral_radius(m) -> float:
    if m.ndim == 1:  # the diagonal matrix diag(u): its eigenvalues are the u_j
        return float(np.max(np.abs(m)))
    # h @ Wh, so the map is Wh^T; it has the same eigenvalues
    return float(np.max(np.abs(np.linalg.eigvals(m))))


def set_spectral_radius(model: Model, radius: float) -> None:
    """Rescale every (H,H) block of every recurrent matrix to spectral radius `radius`."""
    for blocks in recurrent_blocks(model.spec, model.params):
        for name, m in blocks.items():
            rho = spectral_radius(m)
            if rho == 0.0:
                if radius == 0.0:
                    continue
                raise CharrnnError(f"block {name} of {model.label}'s recurrent matrix has spectral radius 0, "
                                   "so no rescaling can give it another; use --radius 0 or another --seed")
            m *= radius / rho


# ---------------------------------------------------------------------------------------------
# Measuring


def state_gradients(stack: Stack, params, max_k: int):
    """g^l_k = dL/dh^l_{T-k} for k = 0..max_k, shape (L, max_k+1, B, H), where L is the loss of
    step T-1's predictions summed over the streams. Call after stack.forward(params, 0, T).
    Needs max_k < T. Overwrites the stack's gradient buffers."""
    T, L, B, H = stack.T, stack.spec.layers, stack.B, stack.spec.hidden
    if not 0 <= max_k < T:
        raise ValueError(f"max_k must lie in [0, {T - 1}] for a window of {T} steps, got {max_k}")
    scratch = np.zeros_like(params)  # backward accumulates parameter gradients; not needed here
    stack.output_grad(params, scratch, T - 1, T, 1.0, through_frozen=True)
    g = np.zeros((L, max_k + 1, B, H), params.dtype)
    g[L - 1, 0] = stack.dhs[L - 1][T - 1]  # h_T of the top layer feeds only the output layer
    # A lower layer's k = max_k also needs the gradient sent down at step T-max_k-1, which a
    # backward from slot T-max_k-1 provides; a single layer stops at slot T-max_k.
    last = T - max_k - 1 if L > 1 else T - max_k
    for g0 in range(T - 1, last - 1, -1):
        dstate = stack.backward(params, scratch, g0, T, through_frozen=True)
        k = T - g0
        for l in range(L):
            if k <= max_k:
                g[l, k] += dstate[l]["hs"]  # through layer l's own recurrence
            if l < L - 1:
                g[l, k - 1] += stack.dhs[l][g0]  # through the layer above, at the same step
    return g


def saturation_counts(stack: Stack):
    """Per layer {activation: (saturated, total)} over all T steps in the buffers."""
    counts = []
    for buf in stack.bufs:
        acts = stack.cell.activations(buf, stack.spec.hidden)
        layer = {}
        for name, a in acts.items():
            if name in TANH_UNITS:
                sat = np.abs(a) > TANH_SAT
            else:
                sat = (a < GATE_SAT) | (a > 1.0 - GATE_SAT)
            layer[name] = (int(sat.sum()), int(a.size))
        counts.append(layer)
    return counts


def sample_windows(ids, n_windows: int, batch: int, steps: int, rng: np.random.Generator, unit="character"):
    """(n_windows, 2*steps+1, batch) int32: per stream the warm-up, the window and its last target."""
    need = 2 * steps + 1
    if ids.size < need:
        raise CharrnnError(
            f"the corpus has {counted(ids.size, 'usable ' + unit)}, but a window of {counted(steps, 'step')} needs "
            f"{need:,} (a warm-up of the same length first); use a longer text"
            + (" or a smaller --max-k" if steps > 2 else "")  # (a window of --max-k + 1 steps; 1 its least)
        )
    starts = rng.integers(0, ids.size - need + 1, size=(n_windows, batch))
    rows = np.arange(need)[None, :, None] + starts[:, None, :]
    return np.ascontiguousarray(ids[rows], np.int32)


def measure(model: Model, ids, max_k: int, windows: int, batch: int, seed: int) -> Flow:
    """Mean ||dL_T/dh_{T-k}|| over `windows` random windows of `batch` streams of `ids`."""
    spec, params = model.spec, model.params
    T = max_k + 1
    text = sample_windows(ids, windows, batch, T, np.random.default_rng(seed), model.unit)
    stack = Stack(spec, batch, T, np.float64)
    zeros = [[np.zeros((batch, spec.hidden)) for _ in layer] for layer in stack.get_state(0)]
    norm_sum = np.zeros((spec.layers, T))
    sat = [{} for _ in range(spec.layers)]
    for w in range(windows):
        stack.set_state(0, zeros)
        stack.ids[:] = text[w, :T]  # warm-up: read the T characters before the window
        stack.forward(params, 0, T)
        stack.set_state(0, stack.get_state(T))
        stack.ids[:] = text[w, T : 2 * T]
        stack.targets[:] = text[w, T + 1 :]
        stack.forward(params, 0, T)
        for l, layer in enumerate(saturation_counts(stack)):
            for name, (s, n) in layer.items():
                old = sat[l].get(name, (0, 0))
                sat[l][name] = (old[0] + s, old[1] + n)
        g = state_gradients(stack, params, max_k)  # (L, K+1, B, H)
        with np.errstate(over="ignore", invalid="ignore"):  # an overflowing gradient is said by the caller
            norm_sum += np.linalg.norm(g, axis=3).sum(axis=2)
    norms = norm_sum / (windows * batch)
    radii = [{name: spectral_radius(m) for name, m in blocks.items()}
             for blocks in recurrent_blocks(spec, params)]
    layers = [LayerFlow(l, norms[l], radii[l], {name: s / n for name, (s, n) in sat[l].items()})
              for l in range(spec.layers)]
    return Flow(model.label, spec, layers)


def corpus_ids(ids, chars, vocab: Vocab):
    """(ids, dropped): the corpus (ids of the characters `chars`, as corpus.read_ids gives them)
    in the model's ids, and how many characters the model does not know were dropped."""
    return vocab.translate(ids, chars, skip_unknown=True)


def has_forget_gate(cell: str) -> bool:
    """Whether the cell has a forget gate (a block "f" of its recurrent matrix: lstm, peephole)."""
    return "f" in getattr(CELLS[cell], "blocks", ())


def set_forget_bias(model: Model, bias: float) -> None:
    """Set the forget-gate bias of every layer of a cell with a forget gate; a no-op for other
    cells."""
    if not has_forget_gate(model.spec.cell):
        return
    blocks = CELLS[model.spec.cell].blocks
    H, f = model.spec.hidden, blocks.index("f")
    for p in Layout(model.spec).layer_views(model.params)[0]:
        p["b"][f * H : (f + 1) * H] = bias


def run(ids, chars, cells=None, trained=None, hidden=64, layers=1, seed=0, radius=None,
        max_k=100, windows=8, batch=8, forget_bias=None, options=()):
    """Measure fresh models (one per cell, knowing the text's characters) or a trained one
    (checkpoint_model) on the text whose ids of the characters `chars` corpus.read_ids gives
    (read in the trained model's encoding); a list of Flow."""
    if trained is not None:
        specs, sizes = [trained.spec], "--batch, --max-k or --windows"
    else:
        vocab = Vocab(chars)
        specs = [ModelSpec(c, vocab.size, hidden, layers, options) for c in cells]
        sizes = "--hidden, --layers, --batch, --max-k or --windows"
    memory.require(memory.gradflow_needs(specs, batch, max_k, windows), "this measurement", f"use a smaller {sizes}")
    models = [trained] if trained is not None else [_fresh(spec, vocab, seed) for spec in specs]
    flows = []
    for m in models:
        if radius is not None:
            set_spectral_radius(m, radius)
        if forget_bias is not None:
            set_forget_bias(m, forget_bias)
        known, dropped = corpus_ids(ids, chars, m.vocab)
        if ids.size and not known.size:
            raise CharrnnError(f"none of the {counted(ids.size, m.unit)} of --corpus is one the model knows; give a text "
                               "like its training text")
        flows.append(replace(measure(m, known, max_k, windows, batch, seed), unknown=dropped))
    return flows


# ---------------------------------------------------------------------------------------------
# Showing


def series_label(flow: Flow, layer: int) -> str:
    """A series' name in the chart, the table and the PNG: a run folder's name with its control
    characters escaped, as in errors (errors.controls_escaped); the JSON keeps it as it is."""
    return controls_escaped(flow.label if flow.spec.layers == 1 else f"{flow.label} L{layer}")


def chart(flows, width=64, height=16):
    """The norms of every cell and layer on a log10 axis against k, as rich Text."""
    from .termchart import line_chart

    series = []
    for flow in flows:
        for f in flow.layers:
            series.append((series_label(flow, f.layer), np.arange(f.norms.size), f.norms))
    return line_chart(series, width=width, height=height, log_y=True, x_span=(0, _k_max(flows)),
                      title="mean ||dL_T / dh_(T-k)||", x_label="k (steps back from the last step)")


def _k_max(flows) -> int:
    """The last k of the series: their axis spans k = 0..K, zeros (which a log axis leaves out) or not."""
    return max(1, max(f.norms.size - 1 for flow in flows for f in flow.layers))


def _per_block(values: dict, fmt) -> str:
    """One line per block, so that the table stays narrow: "i 1.02\nf 0.98..."; "-" for none
    (IndRNN has no (H,H) block, and relu no saturation)."""
    if not values:
        return "-"
    if len(values) == 1:
        return fmt(next(iter(values.values())))
    width = max(len(name) for name in values)
    return "\n".join(f"{name.ljust(width)} {fmt(v)}" for name, v in values.items())


def table(flows, max_k: int):
    from rich.table import Table
    from rich.text import Text

    t = Table(title=f"gradient flow, k = 0..{max_k}",
              caption=f"vanished: the first k with norm(k) < {VANISH_RATIO:g} norm(0)\n"
                      "radius: spectral radius of each (H,H) block of the recurrent matrix\n"
                      f"saturated: |tanh| > {TANH_SAT}, sigmoid < {GATE_SAT:g} or > {1 - GATE_SAT:g}")
    for name, justify in (("model", "left"), ("norm k=0", "right"), (f"norm k={max_k}", "right"),
                          ("vanished", "right"), ("radius", "left"), ("saturated", "left")):
        t.add_column(name, justify=justify, no_wrap=name in ("radius", "saturated"))
    for flow in flows:
        for f in flow.layers:
            vk = f.vanish_k()
            t.add_row(Text(series_label(flow, f.layer)), f"{f.norms[0]:.3g}", f"{f.norms[-1]:.3g}",
                      {None: f"> {max_k}", 0: "0 (none)"}.get(vk, str(vk)),  # (0: vanish_k's no gradient at all)
                      _per_block(f.radius, lambda v: f"{v:.3g}"),
                      _per_block(f.saturation, lambda v: f"{100 * v:.1f}%"),
                      end_section=True)
    return t


def to_json(flows, max_k: int, windows: int, batch: int, corpus: str, seed: int) -> dict:
    return {
        "quantity": "mean over windows and streams of ||dL_T/dh_(T-k)||, loss at the last step only",
        "k": list(range(max_k + 1)), "max_k": max_k, "windows": windows, "batch": batch,
        "corpus": corpus, "seed": seed, "vanish_ratio": VANISH_RATIO,
        "models": [f.to_json() for f in flows],
    }


# past this many series a chart's legend covers its lines: one panel per model instead
MAX_SERIES_IN_ONE_CHART = 20


def write_png(flows, path) -> None:
    """One chart of every model's layers, or with more than MAX_SERIES_IN_ONE_CHART of them (8
    cells of 16 layers: 128) one panel per model, on the same axes."""
    from .plot import require_pyplot, save_figure

    plt = require_pyplot()
    if sum(len(flow.layers) for flow in flows) <= MAX_SERIES_IN_ONE_CHART:
        fig, ax = plt.subplots(figsize=(8, 5))
        _draw_series(ax, flows, plt)
        ax.set_title("How far gradients reach back in time")
    else:
        columns = 2
        rows = -(-len(flows) // columns)
        fig, axes = plt.subplots(rows, columns, figsize=(12, 1 + 3.2 * rows), sharex=True, sharey=True,
                                 squeeze=False)
        for i, (ax, flow) in enumerate(zip(axes.flat, flows)):
            _draw_series(ax, [flow], plt, fontsize="x-small")
            if i + columns < len(flows):  # the axes' names once: under a column, left of a row
                ax.set_xlabel("")
            else:  # (shared, the x axis keeps its numbers only in the grid's last row)
                ax.xaxis.set_tick_params(labelbottom=True)
            if i % columns:
                ax.set_ylabel("")
        for ax in axes.flat[len(flows):]:
            ax.set_visible(False)
        fig.suptitle("How far gradients reach back in time")
    save_figure(fig, path)


def _draw_series(ax, flows, plt, fontsize=None) -> None:
    """The norms of the layers of `flows` on `ax`, every series drawn unlike the others, with a
    legend naming them."""
    from .plot import literal

    # past the colours of the cycle (10 by default), the next series are dashed, then dotted...
    colours = len(plt.rcParams["axes.prop_cycle"].by_key().get("color", [None]))
    lines, labels = [], []
    for flow in flows:
        for f in flow.layers:
            k = np.arange(f.norms.size)
            keep = f.norms > 0  # a log axis cannot show zeros
            dashes = ("-", "--", ":", "-.")[len(lines) // colours % 4]
            alone = keep.sum() == 1  # (norms of 0 past k = 0): a line of one point, unseen without a marker
            lines += ax.semilogy(k[keep], f.norms[keep], linestyle=dashes, marker="o" if alone else None, markersize=3)
            labels.append(literal(series_label(flow, f.layer)))
    k_max = _k_max(flows)
    ax.set_xlim(-0.05 * k_max, 1.05 * k_max)  # with matplotlib's margins: no half marker at k = 0
    ax.set_xlabel("k (steps back from the last step)")
    ax.set_ylabel("mean ||dL_T / dh_(T-k)||")
    ax.grid(True, which="both", alpha=0.3)
    # given so: a label= starting with _ (a run named _try) is left out
    ax.legend(lines, labels, fontsize=fontsize, ncol=2 if len(lines) > 8 else 1)
