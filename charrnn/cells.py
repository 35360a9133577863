"""The cell contract and the one registry of cells.

A cell is one module, charrnn/kernels/<module>.py, that owns all of its math: its forward and
backward kernels side by side, and at the end of the module an adapter object `CELL` that the
layer stack, sampling and diagnostics talk to. The contract of `CELL`:

    name, gates          --cell name; the input projection of a layer is (In, gates * H)
    blocks               names of the gate blocks of the input projection, in storage order
    states               state buffers; slot t holds the state before step t. "hs" comes first
                         (the layer's output); a second one (the LSTM's "cs") is carried too
    code                 the cell's branch in the sampling kernels (kernels/generate.py)
    param_shapes(n_in, H, spec)
                         [Tensor(name, shape, trains)] in storage order; every cell has Wx
                         (n_in, G) and b (G,) (the stack computes the input projection x @ Wx + b
                         itself), beside its own tensors. A tensor with trains=False is frozen:
                         the optimizer, weight decay, clipping and gradcheck leave it alone.
    init(p, H, rng, spec)  fill the tensors of one layer ({name: view})
    buffer_shapes(T, B, H) -> ({name: shape}, {name: shape})
                         the shapes of the per-window buffers (time axis first) and of the
                         scratch; buf holds the states. Stack.nbytes counts them unallocated
    buffers(T, B, H, dtype) -> (buf, scratch)
                         those buffers, zeroed (`zeros` below)
    activations(buf, H)  {name: (T,B,H)} of what diagnostics show (gates, ...)
    forward(buf, scratch, p, xtable, xindex, t0, t1)
                         steps [t0, t1) from the state in slot t0; the input projection of step
                         t0+t, stream r is row xindex[t, r] of xtable
    backward(buf, scratch, p, g, dxproj, dhs, dstate, t0, t1)
                         back over [t0, t1): dxproj (dLoss/d(input projection)) out, every
                         gradient of the cell's own tensors but Wx and b accumulated into g, and
                         dstate ({state: (B,H)}) left holding the gradient w.r.t. the entering state
    recurrent(p, H)      {name: recurrent weight}: (H,H) blocks, or a vector for a diagonal
                         recurrence; gradflow reports and rescales their spectral radius
    update_flops(H)      FLOPs per character of a training update's recurrent work (benchmarks)
    constrain(p, spec)   optional: keep the tensors named in `constrained` (a tuple) in their
                         domain after each optimizer step; p holds at least those
    kinks(buf)           optional, for a cell with a relu: a boolean array that changes when a
                         unit switches on or off (gradcheck leaves such differences out)
    step                 a jitted kernel, one step of one layer for sampling (generate.py)

Adding a cell: its module, one line in REGISTRY below, its float64 reference in
tests/reference.py, its row in the README (and its branch in kernels/generate.py, see there).
This module imports no kernels: the CLI reads the names without compiling anything.
"""
from collections import namedtuple
from collections.abc import Mapping
from importlib import import_module

from .errors import CharrnnError, UsageError, check_read, flag

Tensor = namedtuple("Tensor", "name shape trains", defaults=(True,))

# name -> (module under charrnn/kernels, one line of help)
REGISTRY = {
    "rnn": ("rnn", "tanh RNN (Elman)"),
    "lstm": ("lstm", "LSTM, every tensor drawn as PyTorch draws it (no forget-gate +1)"),
    "peephole": ("peephole", "LSTM whose gates see the cell through diagonal peephole weights (Gers & Schmidhuber 2000)"),
    "gru": ("gru", "GRU as PyTorch and cuDNN write it: the reset gate applied after the recurrent product"),
    "gru-cho": ("gru_cho", "GRU as Cho et al. (2014) and the lectures write it: the reset gate applied to h before the product"),
    "leaky": ("leaky", "leaky-integrator tanh units, h = (1-a) h + a tanh(...), a = 1/tau per unit (--tau)"),
    "indrnn": ("indrnn", "IndRNN, h = relu(W_x x + u * h + b) with u a vector bounded by --u-max: no (H,H) product"),
    "esn": ("esn", "echo-state network: a frozen random reservoir at --spectral-radius, leak --leak; only the readout trains"),
}
NAMES = tuple(REGISTRY)

# Options of particular cells: what the lectures vary. Each is a TrainConfig field, a --option
# of train and gradflow, and a ModelSpec option; the default, the range and the help live here.
Option = namedtuple("Option", "cells default low high help")  # cells: the cells that read it
OPTIONS = {
    "tau": Option(("leaky",), "1:50", 1.0, 10000.0,
                  "leaky: the time constants tau in [{low}, {high}] (rate 1/tau): one value for every unit, LO:HI spread "
                  "log-evenly over the units, or 'learned' (starting from 1:50). Default 1:50, fixed: a layer "
                  "then has fast and slow units from the first update, and the time scales stay a setting "
                  "one can compare rather than something the optimizer drifts"),
    "spectral_radius": Option(("esn",), 0.95, 0.0, 10.0,
                              "esn: the spectral radius the frozen recurrent matrix is rescaled to; below 1 "
                              "(slightly contractive) the reservoir forgets its start (the echo-state property)"),
    "leak": Option(("esn",), 1.0, 1e-4, 1.0, "esn: the leak rate a of h = (1-a) h + a tanh(...); 1: no leak"),
    "u_max": Option(("indrnn",), 0.0, 0.0, 100.0,
                    "indrnn: bound on |u|, the recurrent weights; 0: 2^(1/k2), Li et al. (2018)'s bound "
                    "for the window, so that a gradient grows at most 2x over k2 steps"),
}
# a help names the range where typer does not show it (--tau is text): {low} and {high}, from the Option
# (replaced as such: a help may hold other braces, h_{t-1})
OPTIONS = {name: opt._replace(help=opt.help.replace("{low}", f"{opt.low:g}").replace("{high}", f"{opt.high:g}"))
           for name, opt in OPTIONS.items()}


def check_options_read(names, cells, whose=""):
    """A UsageError for a cell option given (`names`) where none of `cells` reads it
    (errors.check_read)."""
    check_read(names, {name: opt.cells for name, opt in OPTIONS.items()}, "cell", cells, whose, "an option")


def check_option(name, value):
    """Raise a UsageError (a CharrnnError; exit 2 at the command line) unless `value` is in the
    range of option `name`."""
    opt = OPTIONS[name]
    option = flag(name)
    if name == "tau":
        parts = str(value).strip().lower().split(":")
        if parts == ["learned"]:
            return
        try:
            taus = [float(x) for x in parts]
        except ValueError:
            taus = []
        text = str(value)
        shown = text if text and text.strip() == text else repr(text)  # '' seen as such
        if len(parts) not in (1, 2) or len(taus) != len(parts):
            raise UsageError(f"{option} {shown} is not a number, LO:HI or 'learned'; give e.g. {option} 5, "
                             f"{option} 1:50 or {option} learned")
        if not all(opt.low <= t <= opt.high for t in taus):
            raise UsageError(f"{option} {shown} is out of range: every tau must be in [{opt.low:g}, {opt.high:g}]")
        return
    if not opt.low <= value <= opt.high:
        raise UsageError(f"{option} {value} is out of range: it must be in [{opt.low:g}, {opt.high:g}]")


def normal_tau(value) -> str:
    """--tau in one spelling, so that equal settings compare equal: 'learned', or its one or two
    numbers without a trailing .0 (' 5', '5.0' -> '5'; 'LEARNED' -> 'learned'). Checked first."""
    check_option("tau", value)
    text = str(value).strip().lower()
    return text if text == "learned" else ":".join(repr(float(x)).removesuffix(".0") for x in text.split(":"))


def choices_help():
    """The cells for a --cell help text, one line each."""
    return "; ".join(f"{name}: {text}" for name, (_, text) in REGISTRY.items())


def check_name(cell):
    """Raise CharrnnError unless `cell` is a registered cell."""
    if cell not in REGISTRY:
        raise CharrnnError(f"unknown cell {cell!r}; choose one of {', '.join(NAMES)}")


class _Cells(Mapping):
    """{name: CELL adapter}, each cell's module imported on first use."""

    def __init__(self):
        self._loaded = {}

    def __getitem__(self, name):
        if name not in self._loaded:
            check_name(name)
            self._loaded[name] = import_module(f".kernels.{REGISTRY[name][0]}", __package__).CELL
        return self._loaded[name]

    def __iter__(self):
        return iter(NAMES)

    def __len__(self):
        return len(NAMES)


CELLS = _Cells()


# ---------------------------------------------------------------------------------------------
# Helpers the cell modules share


def uniform_(p, H, rng):
    """PyTorch's default: every tensor U(-1/sqrt(H), 1/sqrt(H))."""
    bound = 1.0 / H**0.5
    for v in p.values():
        v[...] = rng.uniform(-bound, bound, size=v.shape).astype(v.dtype)


def zeros(shapes, dtype):
    """({name: buffer}, {name: scratch}), zeroed, of the shapes a cell's buffer_shapes gives, each
    starting on a cache line (aligned.py)."""
    from . import aligned  # here, not at the top: the CLI imports this module, and starts faster without numpy

    return tuple({k: aligned.zeros(s, dtype) for k, s in part.items()} for part in shapes)


class Adapter:
    """What most cells' adapters share; a cell overrides what differs."""

    # The cell options gradcheck checks the cell with, one setting per run: in one of them at
    # least, every tensor that can train does (a leaky cell's rates only with --tau learned)
    checked_options = ((),)

    def buffers(self, T, B, H, dtype):
        return zeros(self.buffer_shapes(T, B, H), dtype)

    def recurrent(self, p, H):
        return gate_blocks(p, H, self.blocks)

    def grows_without_bound(self, p) -> bool:
        """Whether a layer of parameters p may grow its state without bound over a stream, its
        parameters finite: not where the state is squashed (tanh) or gated."""
        return False

    def update_flops(self, H):
        """FLOPs per character of an update's recurrent products: forward, input gradient and
        weight gradient, 2*H*G each."""
        return 6 * H * self.gates * H


def standard_shapes(n_in, H, gates):
    """Wx (n_in, G), Wh (H, G), b (G,) with G = gates * H, all trained."""
    return [Tensor("Wx", (n_in, gates * H)), Tensor("Wh", (H, gates * H)), Tensor("b", (gates * H,))]


def gate_blocks(p, H, blocks):
    """{block: (H,H) view of Wh} for a cell whose Wh is (H, len(blocks) * H)."""
    return {name: p["Wh"][:, n * H : (n + 1) * H] for n, name in enumerate(blocks)}
