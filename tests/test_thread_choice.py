"""The choice of one thread or all for a run's updates (thread_choice.py): the faster side is
kept, a slower side's trial ends early, and the numbers are the same bit for bit whichever side
ran which update."""
import numba
import numpy as np
import pytest

from charrnn import thread_choice
from charrnn.config import TrainConfig
from charrnn.kernels._jit import fewer_threads, threads
from charrnn.thread_choice import FIRST_WAIT, SLOWER, TRIAL, ThreadChoice
from charrnn.train import Trainer


def choice():
    c = ThreadChoice()
    c.can_choose = True  # (whatever this machine's threads: only the times decide)
    return c


def run(c, times_of):
    """One update timed on whichever side c gives it: times_of(serial) its time."""
    serial = c.serial != (c.trial is not None)
    c.timed(times_of(serial))
    return serial


def test_the_faster_side_is_kept_and_tried_again_later():
    c = choice()
    sides = [run(c, lambda serial: 0.010 if serial else 0.030) for _ in range(2 * TRIAL)]
    assert sides == [False] * TRIAL + [True] * TRIAL and c.serial  # one thread was faster
    # then FIRST_WAIT updates (a fraction of EVERY's seconds) on one thread before all the threads are tried again
    sides = [run(c, lambda serial: 0.010 if serial else 0.015) for _ in range(FIRST_WAIT + TRIAL)]
    assert sides == [True] * FIRST_WAIT + [False] * TRIAL and c.serial
    # that trial kept the side: the next waits twice as long, and finds all the threads faster
    sides = [run(c, lambda serial: 0.010 if serial else 0.005) for _ in range(2 * FIRST_WAIT + TRIAL)]
    assert sides == [True] * (2 * FIRST_WAIT) + [False] * TRIAL and not c.serial


def test_a_trial_on_a_far_slower_side_ends_at_its_first_update():
    c = choice()
    sides = [run(c, lambda serial: 0.010 if serial else 0.001) for _ in range(TRIAL + 1)]
    assert sides == [False] * TRIAL + [True] and not c.serial and c.trial is None  # 10x slower: one update
    assert c.wait == 2 * FIRST_WAIT


def test_updates_become_slow_a_trial_starts_at_once():
    c = choice()
    for _ in range(2 * TRIAL):  # all the threads chosen, 0.1 s an update
        run(c, lambda serial: 0.5 if serial else 0.1)
    assert not c.serial and c.trial is None
    # another program takes the cores: all the threads spin, one is not slowed
    sides = [run(c, lambda serial: 0.5 if serial else 0.1 * SLOWER * 3) for _ in range(2 * TRIAL)]
    assert sides == [False] * TRIAL + [True] * TRIAL and c.serial


def test_a_trial_at_least_every_so_many_seconds(monkeypatch):
    c = choice()
    for _ in range(2 * TRIAL):
        run(c, lambda serial: 2.0 if serial else 1.0)
    monkeypatch.setattr(thread_choice, "EVERY", 10.0)
    sides = [run(c, lambda serial: 1.5 if serial else 1.0) for _ in range(10 + 1)]
    assert sides == [False] * 10 + [True]  # after 10 s of updates, not FIRST_WAIT of them


@pytest.mark.skipif(numba.get_num_threads() < 2, reason="one thread: nothing to choose")
def test_fewer_threads_split_the_work_as_all_did():
    before = numba.get_num_threads()
    with fewer_threads(1):
        assert numba.get_num_threads() == 1 and threads() == before
    assert numba.get_num_threads() == threads() == before


@pytest.mark.skipif(numba.get_num_threads() < 2, reason="one thread: nothing to choose")
@pytest.mark.parametrize("cell, options", [("lstm", {}), ("gru", {}), ("leaky", {"tau": "learned"}), ("esn", {})])
def test_a_run_is_the_same_bit_for_bit_whichever_side_ran_each_update(tmp_path, monkeypatch, cell, options):
    corpus = tmp_path / "text.txt"
    corpus.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n" * 60, encoding="utf-8")

    def trained(where, alternate):
        if alternate:  # one thread and all in turn, update by update
            turns = iter(range(10**6))
            monkeypatch.setattr(ThreadChoice, "side", lambda self: fewer_threads(1) if next(turns) % 2 else
                                fewer_threads(numba.get_num_threads()))
        else:
            monkeypatch.setattr(ThreadChoice, "timed", lambda self, dt: None)  # never leaves all the threads
        cfg = TrainConfig(corpus=[str(corpus)], cell=cell, hidden=24, layers=2, batch=6, k1=7, k2=11, dropout=0.3,
                          clip_value=0.5, max_steps=9, eval_every=4, time_limit=0, out_dir=str(tmp_path), run=where,
                          **options)
        trainer = Trainer(cfg, tmp_path / where, say=lambda *a: None)
        summary = trainer.run()
        monkeypatch.undo()
        return trainer.params, summary["val_loss"], summary["test_loss"]

    alone, turns = trained("all", False), trained("turns", True)
    np.testing.assert_array_equal(turns[0], alone[0])
    assert turns[1:] == alone[1:]
