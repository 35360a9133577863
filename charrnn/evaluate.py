"""Loss of a model on a stretch of text: forward only, the state carried across windows."""
import math

import numpy as np

from .corpus import EvalStreams
from .model import ModelSpec, Stack

LN2 = math.log(2.0)


def evaluate(spec: ModelSpec, params: np.ndarray, ids: np.ndarray, batch=32, window=100, max_chars=0):
    """Mean loss in nats per character over every prediction in `ids`, and how many there were.

    The text is cut into `batch` contiguous streams, read `window` steps at a time from a zero
    state that is carried across windows (so each prediction sees the whole stream before it)."""
    if max_chars:
        ids = ids[: max_chars + 1]
    streams = EvalStreams(ids, batch)
    stack = Stack(spec, streams.batch, window, params.dtype)
    total = 0.0
    for inputs, targets in streams.windows(window):
        n = inputs.shape[0]
        stack.ids[:n] = inputs
        stack.targets[:n] = targets
        stack.forward(params, 0, n)
        total += stack.loss(params, 0, n)
        stack.set_state(0, stack.get_state(n))
    return total / streams.count, streams.count


def bits(nats):
    return nats / LN2
