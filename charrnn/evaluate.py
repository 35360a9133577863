"""Loss of a model on text, forward only: on one stretch of text, the state carried across
windows (evaluate), or on many short texts, each read on its own (line_losses)."""
import math

import numpy as np

from .cells import CELLS
from .corpus import EvalStreams
from .distributed import share
from .model import ModelSpec, Stack

LN2 = math.log(2.0)
WARMUP = 200  # characters each stream reads, uncounted, before its own text
# The most parameters one kernel call reads (a character of one stream reads each once): Python
# hears Ctrl-C only between calls, so a window of many streams and steps is read in pieces of
# steps (_pieces): 40-50 ms a call on two cores of a Zen 4. A window read in one call took 54 s
# (score(window=100000), hidden 384). A default run's window on the shipped text, 32 streams x
# 100 steps of 1.2M parameters, is still one call. (Sampler.feed bounds its calls likewise, for
# one stream.)
CALL_WORK = 1 << 32


class Abandoned(Exception):
    """evaluate()'s `stop` asked it to end before the text was read."""


def evaluate(spec: ModelSpec, params: np.ndarray, ids: np.ndarray, batch=32, window=100, max_chars=0,
             warmup=WARMUP, part=(0, 1), stop=None):
    """Mean loss in nats per character over every prediction in `ids`, and how many there were.

    The text is cut into `batch` contiguous streams and read `window` steps at a time, the state
    carried across windows. Each stream but the first starts from the state left by reading the
    `warmup` characters just before it, or all of them where fewer come before it (the end of the
    streams before; those predictions are counted there, not here), so the figure is close to
    reading the text as one stream: a model trained on long streams is much worse from a zero
    state than from a warm one, and 32 cold starts in 55k characters cost it up to 0.3 nats. That needs a model that starts well from
    a zero state at any context: one that has met zero states only at its epochs' starts can
    run away from one (an LSTM cell counting up without bound) and score that stream far worse
    than reading on from the stream before would. Training's fresh starts (--reset-every, on by
    default) are what make the models this figure is for meet zero states at many contexts.

    part=(r, R): read only the r-th of R contiguous shares of the streams (a rank's, under MPI);
    the first value is then that share's part of the mean, and the R parts sum to the mean.

    stop: called before each window, by every rank as often (it may agree across ranks); when it
    returns true the reading ends there, raising Abandoned."""
    if max_chars:
        ids = ids[: max_chars + 1]
    streams = EvalStreams(ids, batch)
    rows = share(streams.batch, *part)
    lo, hi = rows.start, rows.stop
    window = evaluation_shape(ids.size, batch, window)[1]
    if hi == lo:  # more ranks than streams: no rows to read, but a part in every stop
        for _ in streams.windows(window, rows):  # (windows of no rows: as many as the others')
            _check(stop)
        return 0.0, streams.count
    stack = Stack(spec, hi - lo, window, params.dtype)
    stack.set_state(0, _warm_state(spec, params, ids, streams, warmup, window, lo, hi))
    total = 0.0
    for inputs, targets in streams.windows(window, rows):
        _check(stop)
        n = inputs.shape[0]
        stack.ids[:n] = inputs
        stack.targets[:n] = targets
        for t0, t1 in _pieces(stack, params, n):
            total += stack.loss(params, t0, t1)
        stack.set_state(0, stack.get_state(n))
    return total / streams.count, streams.count


def _check(stop):
    if stop is not None and stop():
        raise Abandoned


def _pieces(stack, params, n):
    """Read steps [0, n) of `stack` in calls of at most CALL_WORK parameters (at least a step),
    yielding each piece's steps (t0, t1) once it is read."""
    steps = max(1, CALL_WORK // (stack.B * params.size))
    for t0 in range(0, n, steps):
        t1 = min(n, t0 + steps)
        stack.forward(params, t0, t1)
        yield t0, t1


def _read(stack, params, n):
    """Read steps [0, n) of `stack` for the state they leave (in slot n), in pieces."""
    for _ in _pieces(stack, params, n):
        pass


def first_warm(lo):
    """The first of the streams [lo, ...) that starts warm: every one but the text's first."""
    return max(lo, 1)


def _warm_state(spec, params, ids, streams, warmup, window, lo, hi):
    """The state entering streams [lo, hi): zeros for the first stream, and for stream b >= 1 the
    state after reading, from a zero state, the `warmup` characters before it; or all the b*S
    before it, where they are fewer (a short text cut into streams shorter than warmup), read as
    one stream from the text's start. Read `window` steps at a time, as the text itself is: a
    short text in many streams has as many to warm (memory.evaluation_needs)."""
    S = streams.stream_length
    n_states = len(CELLS[spec.cell].states)
    state = [[np.zeros((hi - lo, spec.hidden), params.dtype) for _ in range(n_states)] for _ in range(spec.layers)]
    first = first_warm(lo)
    if first >= hi or warmup == 0 or S == 0:
        return state
    whole = min(hi, -(-warmup // S))  # streams [first, whole) have fewer than warmup characters before them
    if first < whole:
        read = Stack(spec, 1, (whole - 1) * S, params.dtype)
        read.ids[:, 0] = ids[: (whole - 1) * S]
        _read(read, params, (whole - 1) * S)
        for b in range(first, whole):
            _put(state, b - lo, read.get_state(b * S))
    if whole < hi:
        first = max(first, whole)
        steps = min(window, warmup)
        warm = Stack(spec, hi - first, steps, params.dtype)
        starts = np.arange(first, hi) * S - warmup  # stream b begins at ids[b * S]
        for t in range(0, warmup, steps):
            n = min(steps, warmup - t)
            warm.ids[:n] = ids[starts[None, :] + t + np.arange(n)[:, None]]
            _read(warm, params, n)
            warm.set_state(0, warm.get_state(n))
        _put(state, slice(first - lo, hi - lo), warm.get_state(0))
    return state


def _put(state, rows, layers):
    """Write the arrays of `layers` (as Stack.get_state gives them) into `state`'s rows."""
    for into, arrays in zip(state, layers):
        for a, b in zip(into, arrays):
            a[rows] = b


def evaluation_shape(n: int, batch: int, window: int) -> tuple[int, int]:
    """(streams, window) that evaluate() reads a text of n ids in: fewer streams for a short text
    (EvalStreams), and a window no longer than a stream, which holds it whole."""
    streams, length = EvalStreams.shape(n, batch)
    return streams, max(min(window, length), 1)


def lines_shape(lengths, batch: int, window: int) -> tuple[int, int]:
    """(lines side by side, window) that line_losses reads lines of these lengths in."""
    return max(min(batch, sum(1 for n in lengths if n)), 1), max(min(window, max(lengths, default=0)), 1)


def line_losses(spec: ModelSpec, params: np.ndarray, lines, start: int, batch=32, window=100):
    """Mean loss in nats per character of each of `lines` (int32 id arrays), float64, nan for an
    empty one.

    Each line is read on its own, from a zero state that first reads `start` (sampling.start_id's:
    a line break where the model knows one, as at the start of a line of text), so every
    character of the line is predicted, its first one too; the line break after it is not. That
    is evaluate() of start + line with one stream. Here `batch` lines are read side by side,
    longest in `window`-step pieces; they are taken in order of length, so that lines of similar
    length share a batch and little is padded."""
    lengths = np.fromiter((len(line) for line in lines), np.int64, len(lines))
    losses = np.full(len(lines), np.nan)
    order = np.argsort(lengths, kind="stable")
    order = order[lengths[order] > 0]
    if order.size == 0:
        return losses
    B, W = lines_shape(lengths.tolist(), batch, window)
    stack = Stack(spec, B, W, params.dtype)
    zero = [[np.zeros((B, spec.hidden), params.dtype) for _ in CELLS[spec.cell].states] for _ in range(spec.layers)]
    for g in range(0, order.size, B):
        rows = order[g : g + B]
        texts = [np.concatenate(([start], lines[r])).astype(np.int32) for r in rows]  # (n_j + 1,)
        n = np.zeros(B, np.int64)  # predictions per column; a column without a line counts none
        n[: rows.size] = lengths[rows]
        total = np.zeros(B)
        stack.set_state(0, zero)
        for p in range(0, int(n.max()), W):
            k = min(W, int(n.max()) - p)
            stack.ids[:k] = start  # padding after a line's end: read, not counted
            stack.targets[:k] = start
            for j, text in enumerate(texts):
                piece = text[p : p + k + 1]  # inputs piece[:-1] (T,), targets piece[1:] (T,)
                if piece.size > 1:
                    stack.ids[: piece.size - 1, j] = piece[:-1]
                    stack.targets[: piece.size - 1, j] = piece[1:]
            for t0, t1 in _pieces(stack, params, k):
                stack.loss(params, t0, t1)  # -log p of each (step, column) in row_loss ((t1-t0)*B,)
                counted = (p + np.arange(t0, t1))[:, None] < n[None, :]  # (t1-t0, B)
                losses_read = stack.row_loss[: (t1 - t0) * B].reshape(t1 - t0, B)
                total += np.where(counted, losses_read, 0.0).sum(axis=0, dtype=np.float64)
            stack.set_state(0, stack.get_state(k))
        losses[rows] = total[: rows.size] / n[: rows.size]
    return losses


def bits(nats):
    return nats / LN2
