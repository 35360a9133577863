"""Line charts drawn with plain characters into a fixed grid, for the terminal.

Each series is a polyline rasterised into a width x height grid of cells, one ASCII marker and
one colour per series (so the chart still reads when colour is off), with a y axis (linear or
log10), an x axis with round tick values, and a legend. The result is rich Text.
"""
from __future__ import annotations

import math

import numpy as np
from rich.text import Text

MARKERS = "*o+x#@%&=~^$!?<>"
COLOURS = ("cyan", "magenta", "yellow", "green", "red", "blue", "bright_white", "bright_black")


def marker(s: int):
    """(character, colour) of series s: 16 series have markers of their own (gradflow --cell all
    --layers 2 draws 16), and the colours turn one further at each round of the markers, so no
    two of the first 128 series share both."""
    return MARKERS[s % len(MARKERS)], COLOURS[(s + s // len(MARKERS)) % len(COLOURS)]


def nice_step(lo: float, hi: float, n: int = 5) -> float:
    """1, 2 or 5 times a power of ten: the one whose multiples in [lo, hi] number closest to n."""
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    steps = [m * mag for m in (1, 2, 5, 10)]
    return min(steps, key=lambda st: (abs((math.floor(hi / st) - math.ceil(lo / st) + 1) - n), -st))


def nice_ticks(lo: float, hi: float, n: int = 5):
    """The multiples of nice_step(lo, hi, n) in [lo, hi]."""
    if not hi > lo:
        return [lo]
    step = nice_step(lo, hi, n)
    first = math.ceil(lo / step - 1e-9)
    last = math.floor(hi / step + 1e-9)
    return [0.0 if i == 0 else i * step for i in range(first, last + 1)]


def _widened(lo: float, hi: float, pad: float):
    """lo, hi; or where they are too close to divide into ticks and columns (one value, two a
    float barely tells apart at their size, a span that underflows), pad on each side of their
    middle: a tenth of the middle where pad is 0 or lost in it, and 1 around 0."""
    span = hi - lo
    if span > 1e-290 and span > max(abs(lo), abs(hi)) * 1e-12:
        return lo, hi
    mid = lo / 2 + hi / 2
    if abs(mid) <= 1e-290:
        return -1.0, 1.0
    if not (mid + pad) - (mid - pad) > abs(mid) * 1e-12:
        pad = abs(mid) * 0.1
    return mid - pad, mid + pad


def _fmt(v: float) -> str:
    return f"{v:.0f}" if float(v).is_integer() and abs(v) < 1e6 else f"{v:.3g}"


def _told_apart(values) -> list[str]:
    """Tick labels as _fmt writes them, or in as many significant digits as tell every tick from
    the next (1.0001 and 1.0002 both read 1 in three, steps 1,000,000 and 1,000,200 1e+06)."""
    labels, digits = [_fmt(v) for v in values], 3
    while len(set(labels)) < len(labels) and digits < 17:
        digits += 1
        labels = [f"{v:.{digits}g}" for v in values]
    return labels


# Beyond this, a point is left out as a non-finite one is: the axes' arithmetic (hi - lo, and
# its steps) would overflow to inf between two such points of opposite signs.
DRAWABLE = 1e150


def _runs(xs, ys, log_y):
    """The series sorted by x and cut into runs of drawable points: a non-finite point, one
    beyond ±DRAWABLE (or a non-positive one on a log axis) leaves a gap in the line. y is
    log10(y) on a log axis."""
    xs, ys = np.asarray(xs, float).reshape(-1), np.asarray(ys, float).reshape(-1)
    order = np.argsort(xs, kind="stable")
    xs, ys = xs[order], ys[order]
    keep = (np.abs(xs) < DRAWABLE) & (np.abs(ys) < DRAWABLE)  # False for NaN too
    if log_y:
        keep &= ys > 0
        ys = np.log10(np.where(keep, ys, 1.0))
    cuts = np.nonzero(~keep)[0]
    bounds = np.concatenate([[-1], cuts, [xs.size]])
    return [(xs[a + 1 : b], ys[a + 1 : b]) for a, b in zip(bounds[:-1], bounds[1:]) if b - a > 1]


def line_chart(series, width=64, height=16, log_y=False, title=None, x_label="", y_label="", x_span=None) -> Text:
    """series: [(label, xs, ys)], drawn in order (a later series covers an earlier one).
    Non-finite points, those beyond ±DRAWABLE, and non-positive ones on a log axis, leave a gap
    in the line. x_span: (lo, hi) that the x axis covers whatever is drawn (gradflow's k = 0..K:
    norms of 0 past k = 0 showed k = 0 alone, on an axis from -1 to 1)."""
    data = [(label, _runs(xs, ys, log_y)) for label, xs, ys in series]
    text = Text()
    if title:
        text.append(title + "\n", style="bold")
    if y_label:
        text.append(y_label + "\n")
    runs = [run for _, rs in data for run in rs]
    if not runs:
        text.append("(no data to plot)\n")
        return text
    x_lo = min(xs[0] for xs, _ in runs)
    x_hi = max(xs[-1] for xs, _ in runs)
    if x_span is not None:
        x_lo, x_hi = min(x_lo, x_span[0]), max(x_hi, x_span[1])
    y_lo = min(ys.min() for _, ys in runs)
    y_hi = max(ys.max() for _, ys in runs)
    every = 1  # label every n-th decade on a log axis
    if log_y:  # whole decades, so the labelled rows are powers of ten
        y_lo, y_hi = math.floor(y_lo), math.ceil(y_hi)
        if y_hi == y_lo:
            y_hi += 1
        every = max(1, math.ceil((y_hi - y_lo) / max(height // 2, 1)))
        y_lo = y_hi - math.ceil((y_hi - y_lo) / every) * every  # so the bottom row is labelled too
    else:
        y_lo, y_hi = _widened(y_lo, y_hi, 0.0)
        step = nice_step(y_lo, y_hi, max(3, height // 3))
        y_lo, y_hi = math.floor(y_lo / step) * step, math.ceil(y_hi / step) * step  # labelled ends
    x_lo, x_hi = _widened(x_lo, x_hi, 1.0)  # (a step of 1e20: 1e20 + 1 is 1e20)

    def col(x):
        return (x - x_lo) / (x_hi - x_lo) * (width - 1)

    def row(y):
        return (y_hi - y) / (y_hi - y_lo) * (height - 1)

    grid = [[None] * width for _ in range(height)]  # series index or None
    for s, (_, rs) in enumerate(data):
        for xs, ys in rs:
            cs, rows = _thinned(col(xs), row(ys))
            if cs.size == 1:
                grid[round(rows[0])][round(cs[0])] = s
            for c0, r0, c1, r1 in zip(cs[:-1], rows[:-1], cs[1:], rows[1:]):
                _segment(grid, s, c0, r0, c1, r1)

    # y tick labels by row
    if log_y:
        y_ticks = [(d, f"1e{d:+03d}") for d in range(int(y_hi), int(y_lo) - 1, -every)]
    else:
        values = [y_lo + i * step for i in range(round((y_hi - y_lo) / step) + 1)]
        y_ticks = list(zip(values, _told_apart(values)))
    labels = {}
    for v, label in y_ticks:
        labels.setdefault(round(row(v)), label)
    margin = max(len(lbl) for lbl in labels.values()) + 1

    for r in range(height):
        label = labels.get(r)
        text.append((label or "").rjust(margin - 1) + " ")
        text.append("┤" if label else "│", style="dim")
        for c in range(width):
            s = grid[r][c]
            if s is None:
                text.append(" ")
            else:
                text.append(*marker(s))
        text.append("\n")

    # x axis: tick marks under round values, labels centred under them where they fit
    whole = all(np.array_equal(xs, np.round(xs)) for xs, _ in runs)  # steps, k: no tick between two
    x_ticks = [v for v in nice_ticks(x_lo, x_hi, max(3, width // 10))
               if x_lo <= v <= x_hi and (float(v).is_integer() or not whole)]
    axis = ["─"] * width
    label_line = [" "] * (width + 8)
    for v, lbl in zip(x_ticks, _told_apart(x_ticks)):
        c = round(col(v))
        axis[c] = "┬"
        start = max(0, c - len(lbl) // 2)
        if all(ch == " " for ch in label_line[max(0, start - 1) : start + len(lbl) + 1]):
            label_line[start : start + len(lbl)] = lbl
    text.append(" " * margin + "└" + "".join(axis) + "\n", style="dim")
    text.append(" " * (margin + 1) + "".join(label_line).rstrip() + "\n")
    if x_label:
        text.append(" " * (margin + 1) + x_label.center(width).rstrip() + "\n")

    text.append(" " * (margin + 1))
    for s, (label, rs) in enumerate(data):
        text.append(*marker(s))
        text.append(f" {label}{'' if rs else ' (no data)'}   ")
    text.append("\n")
    return text


def _thinned(cs, rows):
    """The points of a line (columns cs, in order, and rows) that decide the cells it marks: of
    each run of points in one column, the first, the lowest, the highest and the last. A line
    marks in a column the cells between its lowest and highest points there, and the segments
    to the next column start at the last; so a log of millions of records draws in a few
    hundred segments, where it took a Python loop over every point (43 s for 2 million)."""
    column = np.rint(cs)
    if cs.size <= 4 or cs.size <= 4 * (column[-1] - column[0] + 1):
        return cs, rows
    new = np.r_[True, column[1:] != column[:-1]]
    group = np.cumsum(new) - 1
    firsts = np.flatnonzero(new)
    lasts = np.r_[firsts[1:], cs.size] - 1
    by_row = np.lexsort((rows, group))  # each group's points, lowest row first
    lowest, highest = by_row[firsts], by_row[lasts]  # (a group's k points hold the same places there)
    keep = np.unique(np.concatenate([firsts, lasts, lowest, highest]))
    return cs[keep], rows[keep]


def _segment(grid, s, c0, r0, c1, r1):
    """Mark the cells the straight line (c0,r0)-(c1,r1) passes through, column by column."""
    height = len(grid)
    first, last = round(c0), round(c1)
    for c in range(first, last + 1):
        # the part of the segment inside column c, [c-0.5, c+0.5], clipped to the segment
        if c1 == c0:
            ra, rb = r0, r1
        else:
            ta = max(0.0, min(1.0, (c - 0.5 - c0) / (c1 - c0)))
            tb = max(0.0, min(1.0, (c + 0.5 - c0) / (c1 - c0)))
            ra, rb = r0 + ta * (r1 - r0), r0 + tb * (r1 - r0)
        for r in range(round(min(ra, rb)), round(max(ra, rb)) + 1):
            if 0 <= r < height:
                grid[r][c] = s
