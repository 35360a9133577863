"""Evaluation: every prediction counted once, and each stream started warm."""
import numpy as np

from charrnn.evaluate import evaluate
from charrnn.model import Layout, ModelSpec, init_params


def test_warm_streams_reproduce_one_long_stream():
    # A freshly initialised model forgets its start within far fewer than 200 steps, so streams
    # warmed on the 200 characters before them see what one long stream sees: the losses agree
    # to rounding. Started cold, they do not.
    rng = np.random.default_rng(0)
    spec = ModelSpec("lstm", 11, 24, 2)
    params = init_params(spec, rng, np.float64)
    for p in Layout(spec).layer_views(params)[0]:  # a forget gate held open: the start lingers
        p["b"][24:48] = 1.0
    ids = rng.integers(0, 11, 4001).astype(np.int32)
    one, n_one = evaluate(spec, params, ids, batch=1, window=50)
    warm, n_warm = evaluate(spec, params, ids, batch=8, window=50, warmup=200)
    cold, n_cold = evaluate(spec, params, ids, batch=8, window=50, warmup=0)
    assert n_one == 4000 and n_warm == n_cold == 8 * 500
    assert abs(warm - one) < 1e-12
    assert abs(cold - one) > 1e-5
