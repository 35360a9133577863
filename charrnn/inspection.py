"""Inside a trained model: what its units track, and how its gates open and close. (Not named
inspect.py: in the package's own folder, `python -m charrnn` imported it as the standard library's.)

The model reads a text as one stream from a zero state through the layer stack's own forward
pass (Stack.forward, a window at a time, the state carried across windows). Per layer it keeps
one activation of every unit after every character: `h` (the layer's output) unless another of
the cell's activations is asked for (`tanh(c)`, a gate). From that (Karpathy, Johnson & Fei-Fei
2015, "Visualizing and Understanding Recurrent Networks"):

- units that track properties of the text: a unit's score for a property is the Pearson
  correlation r of its activation with the property over the text, ranked by |r|;
- units that saturate most and least: how far a unit's activation sits from the middle of its
  scale, on average, as a share of the way to either end (for a tanh, the mean of |h|): near 1
  a unit works as a switch, near 0 it hardly moves;
- gates: per gate and unit, the fraction of characters at which the gate is open (> 0.9),
  closed (< 0.1) or in between;
- the model's likeliest next characters after each character (GUESSES, or the vocabulary if fewer).

Shapes (legend): N characters read, H hidden units, V vocabulary.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .cells import CELLS
from .config import INSPECT_CHARS
from .corpus import combining_mark, held_byte, unit_name
from .errors import CharrnnError, UsageError, computes_nan, counted
from .gradflow import TANH_UNITS
from .kernels.output import logits_forward
from .model import ModelSpec, Stack, state_grows

WINDOW = 256  # steps per forward call; the buffers of a whole 20,000-character text would be large
GUESSES = 5  # next-character guesses kept per character
GATE_OPEN, GATE_CLOSED = 0.9, 0.1  # "right-" and "left-saturated" in Karpathy, Johnson & Fei-Fei 2015

PROPERTIES = {  # name -> what it is, at each character (after reading it)
    "inside quotes": 'between an opening and a closing double quote ("...", or \u201c...\u201d)',
    "position in line": "characters read since the last line break",
    "bracket depth": "brackets ( [ { opened and not yet closed",
    "indent": "width of the current line's leading spaces and tabs",
    "word start": "1 on the first letter or digit of a word, else 0",
}


def signal_names(cell: str) -> list[str]:
    """The activations a layer of this cell offers: `h`, then the cell's own (gates, tanh(c))."""
    c = CELLS[cell]
    buf, _ = c.buffers(1, 1, 1, np.float32)
    return ["h"] + [name for name in c.activations(buf, 1) if name != "h"]


def is_gate(name: str) -> bool:
    """Whether an activation is a sigmoid gate in [0, 1] (the others are tanh-like)."""
    return name not in TANH_UNITS


def _layer_signals(cell, buf, H) -> dict:
    """{name: (T,B,H)} of one layer's window: its output h (the state the stack carries and the
    layer above reads) and the cell's own activations."""
    return {"h": buf["hs"][1:], **cell.activations(buf, H)}


# ---------------------------------------------------------------------------------------------
# Running the model


def read_start(path, vocab, chars: int, encoding: str, skip_unknown: bool, of_bytes: bool = False) -> tuple[str, int]:
    """The first `chars` characters of a file, and how many of them were dropped as unknown to
    the model (only with skip_unknown; otherwise an unknown character is a CharrnnError).
    of_bytes: the model is a bytes model, whose characters are bytes."""
    from .corpus import read_ids

    # only the start of the file; as a model of characters or of bytes reads it
    ids, file_chars = read_ids(path, encoding, max_chars=chars, model="bytes" if of_bytes else encoding)
    try:
        ids, skipped = vocab.translate(ids, file_chars, skip_unknown=skip_unknown,
                                       what=f"{path} (its first {ids.size:,} {'byte' if of_bytes else 'character'}s)",
                                       as_bytes=of_bytes)
    except CharrnnError as e:
        raise CharrnnError(f"{e} (or pass --skip-unknown to leave them out)") from None
    if ids.size == 0 and skipped:  # (trace would say only that there is no text)
        unit = "byte" if of_bytes else "character"
        more = ", or a larger --chars" if skipped == chars else ""  # (the file may hold more)
        all_ = "is" if skipped == 1 else "are all"
        raise CharrnnError(f"the first {counted(skipped, unit)} of {path} {all_} unknown to the model, and --skip-unknown "
                           f"left none; give a file with some text the model knows{more}")
    return vocab.decode(ids), skipped


@dataclass
class Trace:
    """What one model did while reading one text."""

    spec: ModelSpec
    text: str  # the N characters read
    act: str  # the traced activation
    values: list  # per layer (N,H): the activation after reading each character
    gates: list  # per layer {gate: (3,H) fraction of characters open, between, closed}
    guesses: np.ndarray  # (N,k) ids of the k likeliest next characters after each one, best first
    guess_probs: np.ndarray  # (N,k) their probabilities (float64)
    next_probs: np.ndarray  # (N-1,) the probability the model gave the character that came next
    encoding: str = "utf-8"  # the model's: "bytes" makes each of the N characters a byte

    @property
    def shown(self) -> list[str]:
        """What is drawn at each of the N steps (steps_shown)."""
        return steps_shown(self.text, self.encoding)

    @property
    def step(self) -> str:
        """What one step reads, in words."""
        return unit_name(self.encoding == "bytes")

    def value_range(self, layer: int) -> tuple[float, float]:
        """The fixed scale of a layer's colours: [0, 1] for a gate, else [-m, m] with m >= 1
        (tanh's range, widened if a cell's activation reaches beyond it)."""
        if is_gate(self.act):
            return 0.0, 1.0
        v = self.values[layer]
        m = max(1.0, float(np.abs(v).max())) if v.size else 1.0
        return -m, m

    def quantised(self, layer: int, units=slice(None)) -> np.ndarray:
        """(H,N) uint8: the layer's activations on its scale, 0..255, unit by unit ((N,) for
        one unit)."""
        lo, hi = self.value_range(layer)
        v = np.clip(self.values[layer][:, units].T.astype(np.float64), lo, hi)
        return np.rint((v - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def trace(spec: ModelSpec, params: np.ndarray, vocab, text: str, act: str = "h", encoding: str = "utf-8") -> Trace:
    """Run the model over `text` (every character known to `vocab`) and keep what inspect shows;
    `encoding`: the model's (for a bytes model, a character of `text` is a byte)."""
    check_options(spec, act, None, None)
    ids = vocab.encode(text)
    if ids.size == 0:
        raise CharrnnError("there is no text to read; give a file with some text the model knows")
    N, H, V = ids.size, spec.hidden, spec.vocab_size
    T = min(WINDOW, N)
    stack = Stack(spec, 1, T, params.dtype)
    _, out = stack.layout.layer_views(params)
    values = [np.zeros((N, H), params.dtype) for _ in range(spec.layers)]
    gate_names = [name for name in signal_names(spec.cell) if is_gate(name)]
    counts = [{g: np.zeros((3, H), np.int64) for g in gate_names} for _ in range(spec.layers)]
    k = min(GUESSES, V)
    guesses, guess_probs = np.zeros((N, k), np.int32), np.zeros((N, k))
    next_probs = np.zeros(N - 1)
    logits = np.zeros((T, V), params.dtype)
    for t0 in range(0, N, T):
        n = min(T, N - t0)
        stack.ids[:n, 0] = ids[t0 : t0 + n]
        stack.forward(params, 0, n)
        for l, buf in enumerate(stack.bufs):
            signals = _layer_signals(stack.cell, buf, H)
            values[l][t0 : t0 + n] = signals[act][:n, 0]
            for g, c in counts[l].items():
                a = signals[g][:n, 0]
                is_open, closed = (a > GATE_OPEN).sum(0), (a < GATE_CLOSED).sum(0)
                c += (is_open, n - is_open - closed, closed)
        logits_forward(logits[:n], stack.bufs[-1]["hs"][1 : n + 1, 0], out["Wy"], out["by"])
        p = _softmax(logits[:n])
        best = np.argsort(-p, axis=1, kind="stable")[:, :k]
        guesses[t0 : t0 + n] = best
        guess_probs[t0 : t0 + n] = np.take_along_axis(p, best, 1)
        nxt = ids[t0 + 1 : t0 + n + 1]  # the characters that follow these n (one fewer at the end)
        next_probs[t0 : t0 + nxt.size] = p[np.arange(nxt.size), nxt]
        stack.set_state(0, stack.get_state(n))
    if not all(np.isfinite(v).all() for v in values) or not np.isfinite(guess_probs).all():
        raise computes_nan("inspect", grows=state_grows(spec, params), shorter="inspect fewer characters (--chars)")
    gates = [{g: c / N for g, c in layer.items()} for layer in counts]
    return Trace(spec, text, act, values, gates, guesses, guess_probs, next_probs, encoding)


def _softmax(logits):
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


# ---------------------------------------------------------------------------------------------
# What the units track


def text_properties(steps) -> dict[str, np.ndarray]:
    """{property: (N,) its value after each step}, the properties of PROPERTIES. A step is the
    text's next character, or as steps_shown gives them, the characters a step completes: none
    for a byte inside one, where every property stays as it was (a word starts at no byte)."""
    N = len(steps)
    quotes, column, depth, indent, word = (np.zeros(N) for _ in range(5))
    inside, col, d, ind, leading, in_word = False, 0, 0, 0, True, False
    for t, chars in enumerate(steps):
        starts = False
        for ch in chars:
            if ch == '"':
                inside = not inside
            elif ch in "\u201c\u201d":
                inside = ch == "\u201c"
            if ch == "\n":
                col, ind, leading = 0, 0, True
            else:
                col += 1
                if leading and ch in " \t":
                    ind += 1
                else:
                    leading = False
            if ch in "([{":
                d += 1
            elif ch in ")]}":
                d = max(0, d - 1)
            starts = starts or (ch.isalnum() and not in_word)
            # a combining mark (an accent of NFD text, a Devanagari vowel sign) goes on with its word
            in_word = ch.isalnum() or in_word and combining_mark(ch)
        quotes[t], column[t], depth[t], indent[t], word[t] = inside, col, d, ind, starts
    return dict(zip(PROPERTIES, (quotes, column, depth, indent, word)))


def correlations(values: np.ndarray, prop: np.ndarray) -> np.ndarray:
    """(H,) Pearson r of each unit's activation (N,H) with a property (N,); 0 for a unit or a
    property that does not vary."""
    v = values.astype(np.float64)
    v -= v.mean(axis=0)
    p = prop.astype(np.float64) - prop.mean()
    den = np.sqrt((v * v).sum(axis=0) * (p @ p))
    num = p @ v
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def saturation(values: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    """(H,) per unit the mean of |a - middle| / half-width of the scale: 1 at its ends, 0 in the
    middle. A mean, not a count above a threshold, so that units that never reach a threshold
    still rank."""
    lo, hi = scale
    mid, half = (lo + hi) / 2.0, (hi - lo) / 2.0
    return np.abs(values.astype(np.float64) - mid).mean(axis=0) / half


@dataclass
class Found:
    """One row of the table of interesting units."""

    what: str  # a property, "saturates most" or "saturates least"
    layer: int | None  # None: the property does not vary in this text, so nothing can track it
    unit: int | None
    score: float  # Pearson r for a property; saturation() otherwise


@dataclass
class Scores:
    """Every unit's scores, per layer: r for each property, and saturation()."""

    r: list  # per layer {property: (H,)}
    varies: dict  # {property: whether it varies in the text}
    saturated: list  # per layer (H,) saturation()


def score_units(tr: Trace) -> Scores:
    props = text_properties(tr.shown)
    varies = {name: bool(p.size > 1 and p.min() != p.max()) for name, p in props.items()}
    r = [{name: correlations(v, p) for name, p in props.items()} for v in tr.values]
    return Scores(r, varies, [saturation(v, tr.value_range(l)) for l, v in enumerate(tr.values)])


def find_units(scores: Scores, top: int = 1) -> list[Found]:
    """The `top` units of all layers with the largest |r| for each property, then the `top` that
    saturate most and least. Ties go to the lower layer and unit."""
    rows = []

    def best(per_layer, key):
        flat = np.concatenate(per_layer)
        H = per_layer[0].size
        order = np.argsort(key(flat), kind="stable")[:top]
        return [(int(i) // H, int(i) % H, float(flat[i])) for i in order]

    for name in PROPERTIES:
        if not scores.varies[name]:
            rows.append(Found(name, None, None, float("nan")))
            continue
        rows += [Found(name, *b) for b in best([r[name] for r in scores.r], lambda x: -np.abs(x))]
    rows += [Found("saturates most", *b) for b in best(scores.saturated, lambda x: -x)]
    rows += [Found("saturates least", *b) for b in best(scores.saturated, lambda x: x)]
    return rows


def check_options(spec: ModelSpec, act: str, layer: int | None, unit: int | None) -> None:
    """A UsageError for an activation, layer or unit that the model does not have."""
    names = signal_names(spec.cell)
    if act not in names:
        raise UsageError(f"the {spec.cell} cell has no activation {act!r}; choose one of {', '.join(names)}")
    for what, value, size in (("layer", layer, spec.layers), ("unit", unit, spec.hidden)):
        if value is not None and not 0 <= value < size:
            raise UsageError(f"--{what} {value} does not exist; the model's {what}s are numbered 0 to {size - 1}")


def pick_unit(scores: Scores, layer: int | None, unit: int | None) -> tuple[int, int]:
    """The (layer, unit) to colour the text by: as asked, else the unit with the largest |r| for
    any property (in `layer`, if given), else unit 0."""
    if unit is not None:
        return layer or 0, unit
    best, best_r = (layer or 0, 0), 0.0
    for l in range(len(scores.r)) if layer is None else (layer,):
        for name, r in scores.r[l].items():
            u = int(np.argmax(np.abs(r)))
            if scores.varies[name] and abs(r[u]) > best_r:
                best, best_r = (l, u), abs(r[u])
    return best


# ---------------------------------------------------------------------------------------------
# Colours and characters, shared by the terminal and the page


def palette() -> list[tuple[int, int, int]]:
    """256 RGB colours from blue (the bottom of the scale) through white to red (the top)."""
    blue, red = np.array([70, 130, 230]), np.array([230, 70, 60])
    colours = []
    for q in range(256):
        t = q / 255.0 * 2.0 - 1.0
        end = red if t > 0 else blue
        rgb = 255.0 + abs(t) * (end - 255.0)
        colours.append(tuple(int(round(c)) for c in rgb))
    return colours


def steps_shown(text: str, encoding: str) -> list[str]:
    """What is drawn at each step of `text`: its character; for a bytes model (a character a
    byte), the character its UTF-8 bytes make, at the last of them, nothing at the others, and
    U+FFFD at a byte that makes none (such as those of a character cut off at the end)."""
    if encoding != "bytes":
        return list(text)
    shown = []
    for ch in text.encode("latin-1").decode("utf-8", "surrogateescape"):
        if held_byte(ch) is not None:  # a byte that is no UTF-8 here
            shown.append("\ufffd")
        else:
            shown += [""] * (len(ch.encode("utf-8")) - 1) + [ch]
    return shown


def visible(ch: str) -> str:
    """How a character of the text is drawn: control characters other than line breaks and
    tabs (which could move a terminal's cursor) become a middle dot."""
    return ch if ch in "\n\t" or ch.isprintable() else "\u00b7"


def label(ch: str, of_bytes: bool = False) -> str:
    """A character as a guess is named: whitespace spelled out; a bytes model's byte above
    ASCII as \\xHH (as --stop-at reads it), since alone it is no character; another character
    that is not drawn (CR, ESC, U+2028) by its code, where visible() draws one dot for all."""
    if of_bytes and ord(ch) >= 0x80:
        return f"\\x{ord(ch):02x}"
    named = {" ": "space", "\n": "newline", "\t": "tab"}.get(ch)
    return named or (ch if ch.isprintable() else f"U+{ord(ch):04X}")


# ---------------------------------------------------------------------------------------------
# The terminal


def coloured_text(tr: Trace, layer: int, unit: int, limit: int = INSPECT_CHARS):
    """The first `limit` characters as rich Text, each on the colour of the unit's activation.
    Text, not markup: the user's characters are never read as rich markup."""
    from rich.color import Color
    from rich.style import Style
    from rich.text import Text

    styles = [Style(color="black", bgcolor=Color.from_rgb(*rgb)) for rgb in palette()]
    q = tr.quantised(layer, unit)
    out = Text()
    for chars, level in zip(tr.shown[:limit], q):
        out.append("".join(map(visible, chars)), None if chars == "\n" else styles[level])
    return out


def scale_bar(tr: Trace, layer: int, width: int = 32):
    from rich.color import Color
    from rich.style import Style
    from rich.text import Text

    lo, hi = tr.value_range(layer)
    colours = palette()
    bar = Text(f"{_signed(lo)} ")
    for i in range(width):
        bar.append(" ", Style(bgcolor=Color.from_rgb(*colours[round(i * 255 / (width - 1))])))
    bar.append(f" {_signed(hi)}")
    return bar


def _signed(x):
    """An end of the scale: +0.5, -1; 0 without a sign (a gate's scale is 0 to +1)."""
    return f"{x:+.3g}" if x else "0"


def units_table(found: list[Found], act: str):
    from rich.table import Table

    t = Table(title=f"units that track the text ({act})",
              caption="r: Pearson correlation with the property\n"
                      "saturation: mean distance from the middle\n"
                      "of the scale (1: at an end, 0: the middle)")
    for name, justify in (("what", "left"), ("layer", "right"), ("unit", "right"), ("score", "right")):
        t.add_column(name, justify=justify)
    for f in found:
        if f.unit is None:
            t.add_row(f.what, "-", "-", "constant in this text")
        elif f.what in PROPERTIES:
            t.add_row(f.what, str(f.layer), str(f.unit), f"r = {f.score:+.3f}")
        else:
            t.add_row(f.what, str(f.layer), str(f.unit), f"{f.score:.3f}")
    return t


def gates_table(tr: Trace):
    """Per layer and gate, the mean over units of the fraction of characters open, between,
    closed; None for a cell without gates."""
    from rich.table import Table

    if not tr.gates[0]:
        return None
    t = Table(title="gates, mean over units",
              caption=f"share of {tr.step}s open (> {GATE_OPEN:g}),\nin between, closed (< {GATE_CLOSED:g})")
    for name in ("layer", "gate", "open", "between", "closed"):
        t.add_column(name, justify="left" if name == "gate" else "right")
    for l, layer in enumerate(tr.gates):
        for g, frac in layer.items():
            t.add_row(str(l), g, *(f"{100 * x:.1f}%" for x in frac.mean(axis=1)))
    return t


def model_line(tr: Trace, source: str) -> str:
    s = tr.spec
    return (f"{s.cell} {s.layers}x{s.hidden}, vocabulary {s.vocab_size}; read {counted(len(tr.text), tr.step)} "
            f"of {source} from a zero state")


def unit_line(tr: Trace, scores: Scores, layer: int, unit: int, no_colours: str = "") -> str:
    """What the coloured unit is: its layer, activation and its best property score; no_colours:
    why the text that follows is drawn without its colours, if it is."""
    best = max((name for name in PROPERTIES if scores.varies[name]),
               key=lambda name: abs(scores.r[layer][name][unit]), default=None)
    about = f"; r = {scores.r[layer][best][unit]:+.3f} with {best}" if best else ""
    shown = min(len(tr.text), INSPECT_CHARS)
    more = f" (the first {shown:,})" if shown < len(tr.text) else ""
    on = f"without its colours ({no_colours})" if no_colours else "on the unit's colour"
    return f"layer {layer} unit {unit} ({tr.act}){about}; the text{more} {on}:"
