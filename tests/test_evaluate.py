"""Evaluation: every prediction counted once, and each stream started warm."""
import numpy as np

from charrnn.evaluate import evaluate
from charrnn.model import Layout, ModelSpec, init_params


def lingering_model():
    """(spec, float64 params, the rng after them) of a small LSTM whose first layer's forget gates
    are held open, so that where a stream started lingers in its state."""
    rng = np.random.default_rng(0)
    spec = ModelSpec("lstm", 11, 24, 2)
    params = init_params(spec, rng, np.float64)
    for p in Layout(spec).layer_views(params)[0]:
        p["b"][24:48] = 1.0
    return spec, params, rng


def test_warm_streams_reproduce_one_long_stream():
    # A freshly initialised model forgets its start within far fewer than 200 steps, so streams
    # warmed on the 200 characters before them see what one long stream sees: the losses agree
    # to rounding. Started cold, they do not.
    spec, params, rng = lingering_model()
    ids = rng.integers(0, 11, 4001).astype(np.int32)
    one, n_one = evaluate(spec, params, ids, batch=1, window=50)
    warm, n_warm = evaluate(spec, params, ids, batch=8, window=50, warmup=200)
    cold, n_cold = evaluate(spec, params, ids, batch=8, window=50, warmup=0)
    assert n_one == 4000 and n_warm == n_cold == 8 * 500
    assert abs(warm - one) < 1e-12
    assert abs(cold - one) > 1e-5



def test_streams_shorter_than_the_warmup_start_from_all_the_text_before_them():
    # a short text cut into streams of 40: each was warmed on the 40 characters before it only,
    # not 200, and `charrnn eval --batch` moved the figure by up to half a nat (a model trained
    # on long streams). Now a stream with fewer than 200 before it reads them all, as one stream
    # from the start of the text does; under MPI each share of the streams likewise.
    spec, params, rng = lingering_model()
    ids = rng.integers(0, 11, 7 * 40 + 1).astype(np.int32)
    one, n_one = evaluate(spec, params, ids, batch=1, window=50)
    streams, n = evaluate(spec, params, ids, batch=7, window=16, warmup=200)
    assert n_one == n == 280
    assert abs(streams - one) < 1e-12
    parts = [evaluate(spec, params, ids, batch=7, window=16, warmup=200, part=(r, 3))[0] for r in range(3)]
    assert abs(sum(parts) - one) < 1e-12
    assert abs(evaluate(spec, params, ids, batch=7, window=16, warmup=40)[0] - one) > 1e-6  # 40 are not enough


def test_many_short_streams_warm_up_a_window_at_a_time(monkeypatch):
    # 500 streams of one character, each warmed on the 200 before it: read in one piece, the
    # warm-up's buffers were 200 steps of every stream (8 GB for a 2x512 LSTM at --batch 2999)
    import charrnn.evaluate
    from charrnn.memory import evaluation_needs
    from charrnn.model import Stack

    spec, params, rng = lingering_model()
    ids = rng.integers(0, 11, 501).astype(np.int32)
    made = []

    class Recorded(Stack):
        def __init__(self, spec, batch, window, *args, **kw):
            made.append((batch, window))
            super().__init__(spec, batch, window, *args, **kw)

    monkeypatch.setattr(charrnn.evaluate, "Stack", Recorded)
    streams, n = evaluate(spec, params, ids, batch=500, window=16, warmup=200)
    one, _ = evaluate(spec, params, ids, batch=1, window=16)
    assert abs(streams - one) < 1e-12 and n == 500
    # the one stream, the near streams' one pass, the rest a step at a time (a window, 1: a stream's length)
    assert sorted(made) == [(1, 16), (1, 199), (300, 1), (500, 1)]
    needed = evaluation_needs(spec, 500, 1, np.float64)["window buffers"]
    assert needed >= sum(Stack.nbytes(spec, b, t, np.float64) for b, t in made[:3])  # the first evaluate's

def test_every_share_asks_stop_as_often_and_a_true_answer_ends_the_reading():
    # under MPI `stop` agrees across ranks, so each must ask it as often, a rank without streams too
    import pytest

    from charrnn.evaluate import Abandoned

    rng = np.random.default_rng(1)
    spec = ModelSpec("gru", 7, 8, 1)
    params = init_params(spec, rng, np.float64)
    ids = rng.integers(0, 7, 3 * 45 + 1).astype(np.int32)  # 3 streams of 45: windows of 10, 10, 10, 10, 5
    whole, count = evaluate(spec, params, ids, batch=3, window=10, warmup=0)
    parts, asked = [], []
    for rank in range(5):  # ranks 3 and 4 have no stream
        calls = []
        parts.append(evaluate(spec, params, ids, batch=3, window=10, warmup=0, part=(rank, 5),
                              stop=lambda: calls.append(1) and False)[0])
        asked.append(len(calls))
    assert asked == [5] * 5
    assert abs(sum(parts) - whole) < 1e-12 and count == 135
    calls = []
    with pytest.raises(Abandoned):
        evaluate(spec, params, ids, batch=3, window=10, warmup=0, stop=lambda: calls.append(1) or len(calls) == 2)
    assert len(calls) == 2


def test_a_stop_that_comes_while_the_last_window_is_read_keeps_the_finished_reading(monkeypatch):
    # stop was asked after each window: one coming in the last threw the whole reading away
    from charrnn.model import Stack

    rng = np.random.default_rng(2)
    spec = ModelSpec("rnn", 7, 8, 1)
    params = init_params(spec, rng, np.float64)
    ids = rng.integers(0, 7, 3 * 45 + 1).astype(np.int32)  # 5 windows of 10, 10, 10, 10, 5 steps
    whole = evaluate(spec, params, ids, batch=3, window=10, warmup=0)
    read, forward = [], Stack.forward
    monkeypatch.setattr(Stack, "forward", lambda *a, **kw: (read.append(1), forward(*a, **kw))[1])
    # the signal comes as the last window is read: any ask after that sees it
    assert evaluate(spec, params, ids, batch=3, window=10, warmup=0, stop=lambda: len(read) == 5) == whole


def test_long_windows_are_read_in_calls_of_bounded_work(monkeypatch):
    # Python hears Ctrl-C only between kernel calls, and a window was one call whatever its size:
    # score(window=100000) went on for 54 s after a Ctrl-C. Every call, the warm-up's and
    # line_losses' too, now reads at most CALL_WORK parameters, with the same figures.
    import charrnn.evaluate
    from charrnn.evaluate import line_losses
    from charrnn.model import Stack

    spec, params, rng = lingering_model()
    ids = rng.integers(0, 11, 3 * 800 + 1).astype(np.int32)  # 3 streams of 800, each one window
    lines = [rng.integers(0, 11, n).astype(np.int32) for n in (0, 3, 95, 240, 17)]
    whole = evaluate(spec, params, ids, batch=3, window=800)
    whole_lines = line_losses(spec, params, lines, 0, batch=2, window=300)
    work = []
    forward = Stack.forward

    def counted(self, params_, t0, t1, rng=None):
        work.append((t1 - t0) * self.B * params_.size)
        return forward(self, params_, t0, t1, rng)

    monkeypatch.setattr(Stack, "forward", counted)
    bound = 7 * 3 * params.size  # 7 steps of 3 streams
    monkeypatch.setattr(charrnn.evaluate, "CALL_WORK", bound)
    pieces = evaluate(spec, params, ids, batch=3, window=800)
    assert pieces[1] == whole[1] and abs(pieces[0] - whole[0]) < 1e-12
    assert len(work) > 800 // 7 and max(work) <= bound  # the warm-up's calls counted too
    work.clear()
    assert np.allclose(line_losses(spec, params, lines, 0, batch=2, window=300), whole_lines,
                       rtol=0, atol=1e-12, equal_nan=True)
    assert len(work) > 240 // 10 and max(work) <= bound
