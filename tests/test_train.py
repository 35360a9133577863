"""The training loop: exact resume, interruption, divergence, small corpora, CLI errors."""
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from charrnn.checkpoint import load_checkpoint, save_checkpoint
from charrnn.config import TrainConfig, check_resume_overrides
from charrnn.errors import CharrnnError, UsageError
from charrnn.model import Layout
from charrnn.tbptt import Scheduler
from charrnn.train import Interrupted, Trainer, check_new_run_dir

TEXT = "".join(f"{w} the {i % 7} quick brown fox jumps over {i % 13} lazy dogs.\n"
               for i, w in enumerate(["Alas", "Lo", "Hark", "Sing"] * 3))  # ~600 chars: epochs pass quickly


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def config(corpus, out, **kw):
    base = dict(corpus=str(corpus), hidden=12, layers=2, batch=4, k1=8, k2=8, time_limit=0, eval_every=4,
                checkpoint_every=3, out_dir=str(out), run="r", seed=7)
    base.update(kw)
    return TrainConfig(**base).validate()


def train_steps(cfg, run_dir, steps):
    cfg.max_steps = steps
    trainer = Trainer(cfg, run_dir, say=lambda *_: None)
    trainer.run()
    return trainer


@pytest.mark.parametrize("scheme", [dict(k1=8, k2=8), dict(k1=5, k2=12, dropout=0.3, cell="gru"),
                                    dict(k1=9, k2=4, cell="rnn", optimizer="rmsprop"),
                                    dict(cell="leaky", tau="learned"), dict(k1=5, k2=12, cell="indrnn"),
                                    dict(cell="esn", dropout=0.3), dict(cell="peephole", k1=5, k2=12),
                                    dict(cell="gru-cho", dropout=0.3), dict(k1=5, k2=12, reset_every=3)],
                         ids=["k1=k2", "k1<k2+dropout", "k1>k2", "leaky", "indrnn", "esn", "peephole", "gru-cho",
                              "fresh starts"])
def test_resume_is_bit_for_bit(corpus, tmp_path, scheme):
    n = 16  # resumes mid-epoch and crosses an epoch boundary (an epoch here is 15 to 27 updates)
    straight = train_steps(config(corpus, tmp_path / "a", **scheme), tmp_path / "a" / "r", 2 * n)
    # the same run stopped half way (Ctrl-C), so that its schedule is the straight run's
    interrupted = Trainer(config(corpus, tmp_path / "b", max_steps=2 * n, **scheme), tmp_path / "b" / "r",
                          say=lambda *_: None)
    with pytest.raises(Interrupted):
        interrupted.run(lambda t, record: t.step == n and t._on_stop_signal(2, None))
    resumed = Trainer.resume(tmp_path / "b" / "r", say=lambda *_: None)
    assert resumed.step == n
    resumed.run()
    assert resumed.step == straight.step == 2 * n
    assert straight.streams.epoch >= 1
    np.testing.assert_array_equal(resumed.params, straight.params)
    for (ka, a), (kb, b) in zip(straight.opt.state_arrays().items(), resumed.opt.state_arrays().items()):
        np.testing.assert_array_equal(a, b)
    assert resumed.last_val == straight.last_val


# k2 = k1 follows k1; k2 < k1 stays so (k2 399 became a k2 above the shrunk k1, with its kept steps)
@pytest.mark.parametrize("k2, k2_after", [(400, "k1"), (30, 30), (399, "k1")])
def test_a_small_text_shrinks_the_batch_and_window_and_says_by_which_options(corpus, tmp_path, k2, k2_after):
    said = []
    trainer = Trainer(config(corpus, tmp_path, batch=32, k1=400, k2=k2), tmp_path / "r", say=said.append)
    cfg = trainer.cfg
    assert cfg.batch < 32 and 30 < cfg.k1 < 399 and cfg.k2 == (cfg.k1 if k2_after == "k1" else k2_after)
    (notice,) = [s for s in said if s.startswith("corpus is small")]
    want = f"--batch 32 -> {cfg.batch}, --k1 400 -> {cfg.k1}" + (f", --k2 {k2} -> {cfg.k1}" if k2 > 30 else "")
    assert notice.endswith(f"training characters): {want}"), notice


@pytest.mark.parametrize("options, k2, why", [
    (dict(cell="esn"), 8, "an echo-state network learns nothing through the steps before its window"),
    (dict(reset_every=3), 24, "the steps since a fresh start, every --reset-every 3 updates")])
def test_a_window_kept_beyond_the_steps_it_can_use_is_cut(corpus, tmp_path, monkeypatch, options, k2, why):
    # an echo-state network's --k2 500 trained the same model as its --k2 50, in checkpoints of
    # 122 MB against 3.9 MB; so did --k2 500 against 100 with fresh starts every 2 updates of 50
    import charrnn.train as train_module

    said = []
    cut = Trainer(config(corpus, tmp_path, k1=8, k2=40, max_steps=7, **options), tmp_path / "a", say=said.append)
    assert cut.cfg.k2 == k2 and said[0] == f"--k2 40 -> {k2} ({why})"
    cut.run()
    # the command that began the run resumes it: its --k2 40 was refused, "(it has 8)"; so does
    # one with --k2 as the run cut it, or without it. A --k2 the run would not cut to its own is not
    saved = load_checkpoint(tmp_path / "a" / "latest.npz")[1]["config"]
    for given in ({"k2": 40}, {"k2": k2}, {}):
        check_resume_overrides({**given, **options}, saved, tmp_path / "a")  # (no UsageError)
    with pytest.raises(UsageError, match=re.escape(f"leave out --k2 {k2 - 1} (it has {k2})")):
        check_resume_overrides({"k2": k2 - 1, **options}, saved, tmp_path / "a")
    monkeypatch.setattr(train_module, "steps_a_window_can_use", lambda *_: [])  # as before: all 40 kept
    kept = Trainer(config(corpus, tmp_path, k1=8, k2=40, max_steps=7, **options), tmp_path / "b", say=lambda *_: None)
    assert kept.cfg.k2 == 40
    kept.run()
    np.testing.assert_array_equal(cut.params, kept.params)  # what the steps cut off would have changed: nothing


def test_a_time_limit_reached_in_a_validation_logs_the_updates_before_it(corpus, tmp_path, monkeypatch):
    # the updates since the last record were dropped when the validation's time ended the run
    from types import SimpleNamespace

    import charrnn.train as train_module

    clock = iter(range(10**6))  # every reading of the clock is one second later: an update takes 1 s
    monkeypatch.setattr(train_module, "time", SimpleNamespace(perf_counter=lambda: float(next(clock))))
    trainer = Trainer(config(corpus, tmp_path, eval_every=3, time_limit=4), tmp_path / "r", say=lambda *_: None)
    assert trainer.run()["steps"] == 3  # 3 s of updates, then 1 s of validation: the limit
    records = [json.loads(l) for l in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["step"]) for r in records] == [("val", 3), ("train", 3), ("test", 3)]


def test_a_session_of_one_update_says_no_speed(corpus, tmp_path):
    # "171 chars/s": the one update's time, which is the kernels' loading (its record says null)
    from typer.testing import CliRunner

    from charrnn.cli import app

    r = CliRunner().invoke(app, ["train", str(corpus), "--hidden", "12", "--batch", "4", "--k1", "8", "--k2", "8",
                                 "--max-steps", "1", "--out-dir", str(tmp_path), "--run", "r", "-q"])
    assert r.exit_code == 0 and "0 s, no speed measured (one update, which loads the kernels), stopped by " in r.stdout


def test_a_stop_logs_the_updates_since_the_last_record(corpus, tmp_path, monkeypatch):
    # they were dropped: after the resume, the first record held only the updates since it, and the
    # curve jumped there (2.35 against 2.21 in a straight run)
    import charrnn.train as train_module

    settings = dict(schedule="constant", max_steps=13, eval_every=100)
    monkeypatch.setattr(train_module, "LOG_EVERY", 1)
    straight = Trainer(config(corpus, tmp_path / "a", **settings), tmp_path / "a" / "r", say=lambda *_: None)
    straight.run()
    each = [json.loads(l)["loss"] for l in (tmp_path / "a" / "r" / "metrics.jsonl").read_text().splitlines()
            if json.loads(l)["kind"] == "train"]
    monkeypatch.setattr(train_module, "LOG_EVERY", 5)
    stopped = Trainer(config(corpus, tmp_path / "b", **settings), tmp_path / "b" / "r", say=lambda *_: None)
    update = Trainer.update
    monkeypatch.setattr(Trainer, "update", lambda t: (t.step == 6 and t._on_stop_signal(2, None), update(t))[1])
    with pytest.raises(Interrupted):
        stopped.run()  # Ctrl-C in update 7
    monkeypatch.setattr(Trainer, "update", update)
    Trainer.resume(tmp_path / "b" / "r", say=lambda *_: None).run()
    records = [json.loads(l) for l in (tmp_path / "b" / "r" / "metrics.jsonl").read_text().splitlines()]
    train = [(r["step"], r["loss"]) for r in records if r["kind"] == "train"]
    assert [step for step, _ in train] == [5, 7, 10, 13]
    for (step, loss), first in zip(train, [0, 5, 7, 10]):
        assert loss == pytest.approx(np.mean(each[first:step]), rel=1e-12)


def test_a_run_of_one_epoch_learns_as_the_same_updates_counted_by_max_steps(corpus, tmp_path):
    # the schedule read an epoch's progress after the update's characters: the last update of
    # every --epochs run had a learning rate of 0, and --epochs 0.001 trained nothing
    by_steps = Trainer(config(corpus, tmp_path / "a", eval_every=100), tmp_path / "a" / "r", say=lambda *_: None)
    steps = by_steps.streams.steps_per_epoch(by_steps.cfg.k1)
    by_steps.cfg.max_steps = steps
    by_steps.run()
    by_epochs = Trainer(config(corpus, tmp_path / "b", eval_every=100, epochs=1.0), tmp_path / "b" / "r",
                        say=lambda *_: None)
    by_epochs.run()
    assert by_epochs.step == steps > 1
    np.testing.assert_array_equal(by_epochs.params, by_steps.params)
    rates = [json.loads(line)["lr"] for line in (tmp_path / "b" / "r" / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "train"]
    assert rates[-1] > 0


def test_a_k2_beyond_what_a_stream_holds_is_cut_to_it(corpus, tmp_path):
    # --k2 300 on 150 streams of 35 steps saved 300 steps of activations in every checkpoint
    # (25.7 MB against 2.5), and trained the same model as --k2 36: a window starts afresh as
    # the text wraps, so it never holds more than a stream's steps in an epoch
    from charrnn.corpus import Streams, window_reach

    said = []
    trainer = Trainer(config(corpus, tmp_path, batch=4, k1=8, k2=300), tmp_path / "r", say=said.append)
    reach = window_reach(len(trainer.train_ids), 4, 8)
    assert trainer.cfg.k2 == reach < 300 and trainer.sched.window == reach
    assert said[0].endswith(f"training characters): --k2 300 -> {reach} (a stream's steps in an epoch)"), said
    streams, kept, most = Streams(trainer.train_ids, 4), 0, 0  # the steps a window holds, as the text is read
    ids = np.zeros((8, 4), np.int32)
    for _ in range(5 * streams.steps_per_epoch(8)):
        kept = 8 if streams.next(8, ids, ids.copy()) else kept + 8
        most = max(most, kept)
    assert most == reach
    # IndRNN's bound on |u| follows --k2 (2^(1/k2)): it stays the one of the --k2 given, the same run
    indrnn = Trainer(config(corpus, tmp_path / "i", cell="indrnn", batch=4, k1=8, k2=300), tmp_path / "i" / "r",
                     say=lambda *_: None)
    assert indrnn.cfg.k2 == reach and indrnn.spec.option("u_max") == indrnn.cfg.u_max == 2.0 ** (1 / 300)


@pytest.mark.parametrize("reset_every, fresh", [(4, [0, 4, 8, 12]), (0, [0])])
def test_every_stream_starts_from_a_zero_state_every_reset_every_updates(corpus, tmp_path, monkeypatch,
                                                                          reset_every, fresh):
    entering, reach = [], []  # per update: whether it starts from zeros; the first step its gradient reaches
    update = Scheduler.update

    def spy(sched, stack, *args):
        entering.append(all(not a.any() for layer in stack.get_state(sched.c0) for a in layer))
        loss = update(sched, stack, *args)
        reach.append(sched.g0)
        return loss

    monkeypatch.setattr(Scheduler, "update", spy)
    trainer = train_steps(config(corpus, tmp_path, k1=5, k2=12, reset_every=reset_every), tmp_path / "r", 14)
    assert trainer.streams.epoch == 0  # no new epoch: these zero states are the fresh starts
    assert [i for i, zero in enumerate(entering) if zero] == fresh
    c0 = trainer.sched.c0  # after a fresh start the gradient stops where the zero state entered
    assert [i for i, g in enumerate(reach) if g == c0] == fresh


@pytest.mark.parametrize("cell, options", [("esn", {}), ("leaky", dict(tau="2:20"))])
def test_frozen_tensors_stay_bit_identical_through_training(corpus, tmp_path, cell, options, monkeypatch):
    # weight decay and both kinds of clipping on, so that anything walking the whole flat buffer
    # would move a frozen tensor
    cfg = config(corpus, tmp_path, cell=cell, weight_decay=0.1, clip_value=1e-3, clip_norm=0.5, **options)
    trainer = Trainer(cfg, tmp_path / "r", say=lambda *_: None)
    layout = trainer.stack.layout
    assert layout.frozen
    before = {name: v.copy() for name, v in layout.views(trainer.params).items()}
    if cell == "esn":  # nothing below the readout trains: no backward through the reservoir
        monkeypatch.setattr(type(trainer.stack.cell), "backward", lambda *a: pytest.fail("backward ran"))
    cfg.max_steps = 12
    trainer.run()
    after = layout.views(trainer.params)
    moments = {k: layout.views(v) for k, v in trainer.opt.state_arrays().items()}
    saved = layout.views(load_checkpoint(tmp_path / "r" / "latest.npz")[0]["params"])
    for name in before:
        if name in layout.frozen:
            np.testing.assert_array_equal(after[name], before[name], err_msg=name)
            np.testing.assert_array_equal(saved[name], before[name], err_msg=name)
            assert all(not m[name].any() for m in moments.values()), name
        else:
            assert not np.array_equal(after[name], before[name]), name


@pytest.mark.parametrize("cell, tensor, low, high", [("indrnn", "u", -2 ** (1 / 8), 2 ** (1 / 8)),
                                                      ("leaky", "a", 1e-4, 1.0)])
def test_cells_keep_their_tensors_in_their_domain(corpus, tmp_path, cell, tensor, low, high):
    # a learning rate large enough to throw them out: u bounded by 2^(1/k2) (Li et al. 2018),
    # rates a = 1/tau in (0, 1]
    trainer = train_steps(config(corpus, tmp_path, cell=cell, tau="learned", lr=0.2, schedule="constant",
                                 k1=8, k2=8), tmp_path / "r", 12)
    layers = trainer.stack.layout.layer_views(trainer.params)[0]
    for p in layers:
        assert low <= p[tensor].min() and p[tensor].max() <= high
    if cell == "indrnn":  # u starts inside U(0, bound): some of it was pushed to the bound
        assert any(np.isclose(np.abs(p["u"]).max(), high, rtol=1e-6) for p in layers)


def test_latest_and_best_checkpoints_are_complete(corpus, tmp_path):
    trainer = train_steps(config(corpus, tmp_path), tmp_path / "r", 6)
    arrays, meta = load_checkpoint(tmp_path / "r" / "latest.npz")
    np.testing.assert_array_equal(arrays["params"], trainer.params)
    assert meta["step"] == 6 and meta["vocab"] == trainer.vocab.to_json()
    assert meta["config"]["hidden"] == 12 and "rng" in meta and "streams" in meta
    _, best = load_checkpoint(tmp_path / "r" / "best.npz")
    assert best["metrics"]["best_val"] == trainer.best_val
    lines = [json.loads(l) for l in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert {l["kind"] for l in lines} == {"train", "val", "test"}
    assert all(np.isfinite(l["loss"]) for l in lines)


def test_training_lowers_the_loss(corpus, tmp_path):
    trainer = train_steps(config(corpus, tmp_path, hidden=32, layers=1, lr=1e-2, k1=20, k2=20,
                                  schedule="constant"), tmp_path / "r", 60)
    lines = [json.loads(l) for l in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    train = [l["loss"] for l in lines if l["kind"] == "train"]
    assert train[-1] < 0.6 * train[0]
    assert trainer.best_val < np.log(trainer.vocab.size) * 0.6


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_the_learning_rate_runs_down_over_the_budget(corpus, tmp_path, schedule):
    import math

    cfg = config(corpus, tmp_path, schedule=schedule, lr=0.01, decay_start=0.5)
    trainer = train_steps(cfg, tmp_path / "r", 40)
    lines = [json.loads(l) for l in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    logged = {l["step"]: l["lr"] for l in lines if l["kind"] == "train"}
    assert sorted(logged) == [10, 20, 30, 40]
    for step, lr in logged.items():  # the rate of the update that ended at `step`: progress (step-1)/40
        p = max(0.0, ((step - 1) / 40 - 0.5) / 0.5)  # held for the first half, then run down
        want = 1 - p if schedule == "linear" else 0.5 * (1 + math.cos(math.pi * p))
        assert lr == pytest.approx(0.01 * want, rel=1e-12)
    assert trainer.step == 40


def test_ctrl_c_saves_and_resume_continues(corpus, tmp_path):
    cfg = config(corpus, tmp_path, max_steps=20)
    trainer = Trainer(cfg, tmp_path / "r", say=lambda *_: None)

    def press_ctrl_c(t, record):
        if t.step == 10:
            t._on_stop_signal(2, None)

    with pytest.raises(Interrupted):
        trainer.run(press_ctrl_c)
    _, meta = load_checkpoint(tmp_path / "r" / "latest.npz")
    assert meta["step"] == 10
    resumed = Trainer.resume(tmp_path / "r", say=lambda *_: None)
    resumed.run()
    straight = train_steps(config(corpus, tmp_path / "s"), tmp_path / "s" / "r", 20)
    np.testing.assert_array_equal(resumed.params, straight.params)


def test_a_time_limit_used_up_by_validation_still_saves_the_last_update(corpus, tmp_path):
    cfg = config(corpus, tmp_path, time_limit=1.0, eval_every=3, checkpoint_every=1000)
    trainer = Trainer(cfg, tmp_path / "r", say=lambda *_: None)
    measure = trainer.validate

    def slow_validate():  # validation time counts towards the limit; this one uses it up
        time.sleep(1.1 if trainer.step == 3 else 0)
        return measure()

    trainer.validate = slow_validate
    summary = trainer.run()
    _, meta = load_checkpoint(tmp_path / "r" / "latest.npz")
    assert summary["steps"] == meta["step"] == 3


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(corpus, tmp_path):
    cfg = config(corpus, tmp_path, max_steps=12)
    trainer = Trainer(cfg, tmp_path / "r", say=lambda *_: None)

    def poison(t, record):
        if t.step == 10:
            t.params[5] = np.nan

    with pytest.raises(CharrnnError, match="diverged at update 11: .*; the last good checkpoint is in "):
        trainer.run(poison)
    arrays, meta = load_checkpoint(tmp_path / "r" / "latest.npz")
    assert meta["step"] == 9 and np.isfinite(arrays["params"]).all()


def poisoned(trainer, step):
    """trainer, whose update after `step` updates starts from a NaN parameter."""
    update = trainer.update

    def poisoned_update():
        if trainer.step == step:
            trainer.params[5] = np.nan
        return update()

    trainer.update = poisoned_update
    return trainer


def test_nan_before_the_first_save_says_no_checkpoint_was_saved(corpus, tmp_path):
    # it named the run folder as where the last good checkpoint was, and it held none
    trainer = poisoned(Trainer(config(corpus, tmp_path, max_steps=12, checkpoint_every=5, eval_every=5),
                               tmp_path / "r", say=lambda *_: None), 2)
    with pytest.raises(CharrnnError, match=r"diverged at update \d+: .*; no checkpoint was saved before it; try "
                                           r"a lower --lr or --clip-norm$"):
        trainer.run()
    assert not list((tmp_path / "r").glob("*.npz"))
    # without clipping, the advice is to turn it on ("or --clip-norm" read as lower it, from 0)
    trainer = poisoned(Trainer(config(corpus, tmp_path, max_steps=12, clip_norm=0.0), tmp_path / "r2",
                               say=lambda *_: None), 2)
    with pytest.raises(CharrnnError, match=r"try a lower --lr, or clipping \(--clip-norm 5\)$"):
        trainer.run()


@pytest.mark.parametrize("clip_norm, diverges", [(0.0, True), (5.0, False)])
def test_a_gradient_whose_square_overflows_float32_stops_the_run_before_its_step(corpus, tmp_path, clip_norm,
                                                                                  diverges):
    # an IndRNN at --u-max 6 without clipping reached a gradient norm of 1.4e21: finite, but
    # Adam's v took its square as Inf, stepped no more, and every save held it, which the run's
    # own resume then refused as corrupt
    trainer = Trainer(config(corpus, tmp_path, max_steps=4, clip_norm=clip_norm, checkpoint_every=1), tmp_path / "r",
                      say=lambda *_: None)
    update = trainer.sched.update

    def huge_gradient(*args):
        loss = update(*args)
        if trainer.step == 2:
            trainer.grads[7] = 2e19  # its square is past float32's largest, 3.4e38
        return loss

    trainer.sched.update = huge_gradient
    if diverges:
        with pytest.raises(CharrnnError, match=r"diverged at update 3: the gradient norm 2e\+19 would overflow the "
                                               r"optimizer's float32 arithmetic; the last good checkpoint is in "):
            trainer.run()
    else:  # clipped to a norm of 5 first
        trainer.run()
    arrays, meta = load_checkpoint(tmp_path / "r" / "latest.npz")
    assert meta["step"] == (2 if diverges else 4) and all(np.isfinite(a).all() for a in arrays.values())


def test_a_checkpoint_is_never_saved_with_nan_or_inf(corpus, tmp_path):
    # an overflow the updates do not catch (Adagrad's v, a sum of squares over the run) stops the
    # run at its next save, and the checkpoint before it stays
    trainer = Trainer(config(corpus, tmp_path, max_steps=4, optimizer="adagrad", checkpoint_every=2), tmp_path / "r",
                      say=lambda *_: None)

    step = trainer.opt.step

    def overflowing_step(*args, **kwargs):
        step(*args, **kwargs)
        if trainer.step == 2:  # the third update's
            trainer.opt.moments()["v"][5] = np.inf

    trainer.opt.step = overflowing_step
    with pytest.raises(CharrnnError, match=r"diverged by update 4: the optimizer's v hold NaN or Inf; the last good "
                                           r"checkpoint is in "):
        trainer.run()
    arrays, meta = load_checkpoint(tmp_path / "r" / "latest.npz")
    assert meta["step"] == 2 and np.isfinite(arrays["opt.v"]).all()


def test_small_corpus_still_trains(tmp_path):
    path = tmp_path / "small.txt"
    path.write_text("to be or not to be, that is the question.\n" * 3, encoding="utf-8")
    notes = []
    cfg = TrainConfig(corpus=str(path), hidden=8, max_steps=3, time_limit=0, out_dir=str(tmp_path), run="s").validate()
    trainer = Trainer(cfg, tmp_path / "s", say=notes.append)
    summary = trainer.run()
    assert notes and "small" in notes[0]
    assert trainer.cfg.batch * (trainer.cfg.k1 + 1) <= len(trainer.train_ids)
    assert np.isfinite(summary["val_loss"])


def test_resume_refuses_a_corrupt_checkpoint(corpus, tmp_path):
    train_steps(config(corpus, tmp_path), tmp_path / "r", 3)
    latest = tmp_path / "r" / "latest.npz"
    latest.write_bytes(latest.read_bytes()[:-100])
    with pytest.raises(CharrnnError, match="latest.npz"):
        Trainer.resume(latest)


def test_resume_refuses_a_window_saved_in_another_layout(corpus, tmp_path):
    # e.g. a checkpoint written before the LSTM kept its gates panel by panel: (T, B, 4H).
    # With k2 > k1 the next update reads kept steps, so they must fit.
    train_steps(config(corpus, tmp_path, cell="lstm", k1=4, k2=8), tmp_path / "r", 3)
    latest = tmp_path / "r" / "latest.npz"
    arrays, meta = load_checkpoint(latest)
    kept = arrays["kept.layer0.acts"]
    assert kept.shape[0] == 4
    arrays["kept.layer0.acts"] = np.zeros(kept.shape[:2] + (4 * 12,), kept.dtype)
    save_checkpoint(latest, arrays, meta)
    with pytest.raises(CharrnnError, match=r"buffer layer0\.acts is shaped .*resume it with the charrnn that wrote it"):
        Trainer.resume(latest)
    del arrays["kept.layer0.acts"]
    save_checkpoint(latest, arrays, meta)
    with pytest.raises(CharrnnError, match=r"buffer layer0\.acts is missing"):
        Trainer.resume(latest)


def test_resume_accepts_an_empty_window_of_another_layout(corpus, tmp_path):
    # k1 = k2 keeps no steps: an older layout of nothing is still exactly resumable
    train_steps(config(corpus, tmp_path, cell="lstm"), tmp_path / "r", 3)
    latest = tmp_path / "r" / "latest.npz"
    arrays, meta = load_checkpoint(latest)
    kept = arrays["kept.layer0.acts"]
    assert kept.shape[0] == 0
    arrays["kept.layer0.acts"] = np.zeros((0,) + kept.shape[1:2] + (4 * 12,), kept.dtype)
    save_checkpoint(latest, arrays, meta)
    resumed = Trainer.resume(latest, say=lambda *_: None)
    assert resumed.step == 3


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "charrnn", *args], capture_output=True, text=True, cwd=cwd)


def test_cli_errors_are_one_line(tmp_path):
    missing = run_cli("train", str(tmp_path / "nope.txt"), "--out-dir", str(tmp_path))
    assert missing.returncode == 1 and "nope.txt" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1 and "Traceback" not in missing.stderr
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"hello \xff world" * 10)
    latin = run_cli("train", str(bad), "--out-dir", str(tmp_path))
    assert latin.returncode == 1 and "byte offset 6" in latin.stderr and "--encoding" in latin.stderr
    out_of_range = run_cli("train", "--hidden", "0")
    assert out_of_range.returncode == 2
    # a line break in a file's name: the error printed it, on two lines
    broken = run_cli("train", str(tmp_path / "no\nfile.txt"), "--out-dir", str(tmp_path))
    assert broken.returncode == 1 and broken.stderr == f"error: {tmp_path}/no\\nfile.txt does not exist; check the path\n"


def test_cli_trains_and_refuses_to_overwrite_a_run(corpus, tmp_path):
    args = ["train", str(corpus), "--hidden", "8", "--max-steps", "3", "--k1", "10", "--k2", "10", "--batch", "4",
            "--out-dir", str(tmp_path), "--run", "x", "--quiet"]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert "val loss" in first.stdout and "bits/char" in first.stdout
    again = run_cli(*args)
    assert again.returncode == 1 and "--resume" in again.stderr
    assert (tmp_path / "x" / "latest.npz").exists()


def test_few_streams_line_names_streams_a_thread_and_a_batch_that_fills_them():
    from charrnn.train import FILLING_STREAMS, few_streams_line

    assert FILLING_STREAMS == 8
    assert few_streams_line(32, 1, 2) is None and few_streams_line(16, 1, 2) is None  # 16 and 8 a thread
    assert few_streams_line(15, 1, 2) == (
        "note: 7.5 streams a thread (--batch 15 on 2 threads); a thread needs 8 or more to pay for reading the "
        "weights at every step: try --batch 16, usually with a larger --lr (README: Many cores)")
    sixteen = few_streams_line(32, 1, 16)
    assert "2 streams a thread (--batch 32 on 16 threads)" in sixteen and "try --batch 128," in sixteen
    one = few_streams_line(4, 1, 1)
    assert "4 streams a thread (--batch 4 on 1 thread)" in one and "try --batch 8," in one
    # under MPI --batch is the total: 2 processes of 2 threads, 1 stream each
    ranks = few_streams_line(4, 2, 2)
    assert "1 stream a thread (--batch 4 on 2 processes of 2 threads)" in ranks and "try --batch 32," in ranks
    assert few_streams_line(32, 4, 1) is None
    assert "0.5 streams a thread" in few_streams_line(1, 1, 2)


def test_cli_says_when_the_threads_have_too_few_streams(tmp_path):
    import os

    corpus = tmp_path / "text.txt"
    corpus.write_text(TEXT * 3, encoding="utf-8")  # holds 32 streams of 4 windows of 9 characters

    def run(run, *options, k1=8):
        env = {**os.environ, "NUMBA_NUM_THREADS": "4"}
        args = [sys.executable, "-m", "charrnn", "train", str(corpus), "--hidden", "8", "--max-steps", "1",
                "--k1", str(k1), "--k2", str(k1), "--out-dir", str(tmp_path), "--run", run, *options]
        r = subprocess.run(args, capture_output=True, text=True, env=env)
        assert r.returncode == 0, r.stderr
        return r.stderr

    assert ("note: 1 stream a thread (--batch 4 on 4 threads); a thread needs 8 or more to pay for reading the "
            "weights at every step: try --batch 32, usually with a larger --lr (README: Many cores)") \
        in run("few", "--batch", "4")
    assert "note:" not in run("enough", "--batch", "32")
    # a resumed run keeps its batch; IndRNN reads no recurrent matrix at every step
    env = {**os.environ, "NUMBA_NUM_THREADS": "4"}
    again = subprocess.run([sys.executable, "-m", "charrnn", "train", "--resume", str(tmp_path / "few"),
                            "--max-steps", "2"], capture_output=True, text=True, env=env)
    assert again.returncode == 0 and "resuming" in again.stderr and "note:" not in again.stderr, again.stderr
    assert "note:" not in run("indrnn", "--batch", "4", "--cell", "indrnn")
    # a text too short for 32 streams of 4 windows of 51 characters: no batch to suggest
    assert "note:" not in run("short", "--batch", "4", k1=50)


def test_the_settings_line_names_the_shipped_text_a_run_without_one_reads(tmp_path):
    # it said corpus=[], as if the run read nothing
    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, "-m", "charrnn", "train", "--hidden", "8", "--max-steps", "1",
                        "--time-limit", "0", "--eval-every", "1", "--eval-chars", "100", "--out-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(root)})
    assert r.returncode == 0, r.stderr
    shipped = str(root / "corpora" / "tinyshakespeare.txt")
    assert r.stderr.splitlines()[0].startswith(f"corpus=[{shipped!r}] encoding=utf-8 ")


def test_a_fresh_run_never_replaces_a_file_it_did_not_write(corpus, tmp_path):
    # samples.txt of the user's own, in a folder of the run's name without a checkpoint, was deleted
    # without a word; metrics.jsonl was replaced with a note that blamed a run that never was
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "samples.txt").write_text("my precious notes\n")
    with pytest.raises(CharrnnError, match=re.escape(f"{run_dir / 'samples.txt'} is not a log of charrnn's; move it")):
        train_steps(config(corpus, tmp_path), run_dir, 1)
    assert (run_dir / "samples.txt").read_text() == "my precious notes\n"
    (run_dir / "samples.txt").unlink()
    (run_dir / "metrics.jsonl").write_text("not json\n")
    with pytest.raises(CharrnnError, match="metrics.jsonl is not a log of charrnn's"):
        train_steps(config(corpus, tmp_path), run_dir, 1)
    # what a run that saved no checkpoint left is replaced, and said
    (run_dir / "metrics.jsonl").write_text('{"kind": "train", "step": 10, "loss": 1.0}\n')
    (run_dir / "samples.txt").write_text("--- step 10, epoch 0.10, val loss 1.0, temperature 0.8, seed 10 ---\nab\n")
    said = []
    Trainer(config(corpus, tmp_path, max_steps=1), run_dir, say=said.append).run()
    assert f"replacing metrics.jsonl and samples.txt in {run_dir}, left by a run that saved no checkpoint" in said
    assert '"step": 10,' not in (run_dir / "metrics.jsonl").read_text() and not (run_dir / "samples.txt").exists()


def test_runs_started_in_the_same_second_get_names_of_their_own(tmp_path, monkeypatch):
    # the second was refused: "... already holds a run; continue it with --resume", naming the first
    from datetime import datetime

    from charrnn.train import new_run_dir

    class Then(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2026, 1, 2, 3, 4, 5)

    monkeypatch.setattr("charrnn.train.datetime", Then)
    cfg = TrainConfig(cell="gru", out_dir=str(tmp_path / "runs"))
    # each name is claimed as it is given, by making its folder: runs of a sweep started together
    # took one name, and all but one failed on its lock ("in use by another charrnn process")
    assert new_run_dir(cfg) == tmp_path / "runs" / "gru-20260102-030405"
    assert new_run_dir(cfg) == tmp_path / "runs" / "gru-20260102-030405-2"
    assert new_run_dir(cfg) == tmp_path / "runs" / "gru-20260102-030405-3"
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [
        "gru-20260102-030405", "gru-20260102-030405-2", "gru-20260102-030405-3"]
    assert new_run_dir(TrainConfig(run="mine", out_dir=str(tmp_path))) == tmp_path / "mine"
    assert not (tmp_path / "mine").exists()  # a name given is the user's: made when the run begins


def test_a_sweep_started_together_trains_every_run(corpus, tmp_path):
    args = ["train", str(corpus), "--hidden", "8", "--batch", "4", "--k1", "8", "--max-steps", "2", "--out-dir",
            str(tmp_path / "runs"), "-q"]
    jobs = [subprocess.Popen([sys.executable, "-m", "charrnn", *args, "--lr", lr], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for lr in ("0.01", "0.003", "0.001")]
    results = [job.communicate(timeout=300) + (job.returncode,) for job in jobs]
    assert all(code == 0 for _, _, code in results), results
    assert len(list((tmp_path / "runs").iterdir())) == 3  # in one second or two: three folders all the same


def test_an_out_dir_that_is_a_link_to_nothing_is_an_error_not_a_search_for_ever(corpus, tmp_path):
    # each name "existed" (mkdir of its parent failed with FileExistsError): -2, -3, ... at full CPU
    (tmp_path / "runs").symlink_to(tmp_path / "unmounted")
    r = subprocess.run([sys.executable, "-m", "charrnn", "train", str(corpus), "--hidden", "8", "--max-steps", "1",
                        "--out-dir", str(tmp_path / "runs"), "-q"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr == f"error: {tmp_path / 'runs'}: File exists; a file is in the way of a folder\n"


def test_a_run_that_fails_before_it_begins_leaves_no_folder_it_made(corpus, tmp_path, monkeypatch):
    # its claimed CELL-DATE-TIME folder, and OUT_DIR, stayed behind empty
    from typer.testing import CliRunner

    from charrnn.cli import app

    work = tmp_path / "work"
    for folder in (work / "mine", work / "runs"):
        folder.mkdir(parents=True)
    (work / "bin.txt").write_bytes(b"\x00\x01\x02")
    for out, run in (("deep/er/runs", ""), ("runs", ""), (".", "mine")):
        named = ["--run", run] if run else []  # none: the default, dated name
        r = CliRunner().invoke(app, ["train", str(work / "bin.txt"), "--out-dir", str(work / out), *named])
        assert isinstance(r.exception, CharrnnError) and "looks like a binary file" in str(r.exception), r.output
    assert sorted(p.name for p in work.iterdir()) == ["bin.txt", "mine", "runs"]  # the user's own stay
    assert not any((work / "runs").iterdir())


@pytest.mark.parametrize("diverged_at, kept", [(2, False), (12, True)])
def test_a_run_that_diverged_before_it_saved_or_logged_leaves_no_folder_it_made(corpus, tmp_path, monkeypatch,
                                                                                diverged_at, kept):
    # its claimed CELL-DATE-TIME folder stayed behind, holding .lock and an empty metrics.jsonl;
    # one that logged a record first (every 10 updates) keeps it: plot shows the loss until then
    from typer.testing import CliRunner

    from charrnn.cli import app

    update = Trainer.update

    def poisoned_update(self):
        if self.step == diverged_at:
            self.params[5] = np.nan
        return update(self)

    monkeypatch.setattr(Trainer, "update", poisoned_update)
    r = CliRunner().invoke(app, ["train", str(corpus), "--out-dir", str(tmp_path / "runs"), "--hidden", "8",
                                 "--max-steps", "20", "--eval-every", "15", "--checkpoint-every", "15", "-q"])
    assert isinstance(r.exception, CharrnnError) and "diverged" in str(r.exception), r.output
    if not kept:
        assert not (tmp_path / "runs").exists()
    else:
        [run_dir] = (tmp_path / "runs").iterdir()
        assert sorted(p.name for p in run_dir.iterdir()) == [".lock", "metrics.jsonl"]
        assert (run_dir / "metrics.jsonl").stat().st_size > 0


def test_resuming_a_run_that_has_reached_its_end_says_so(corpus, tmp_path):
    # it printed "resuming", tested the model again, appended that record and said done, exit 0
    train_steps(config(corpus, tmp_path), tmp_path / "r", 5)
    log = (tmp_path / "r" / "metrics.jsonl").read_bytes()
    for more, reached in (([], "--max-steps 5 (update 5)"), (["--max-steps", "3"], "--max-steps 3 (update 5)")):
        r = run_cli("train", "--resume", str(tmp_path / "r"), *more)
        assert r.returncode == 2 and r.stderr.strip().splitlines() == [  # no "changed on resume: ..." first
            f"error: {tmp_path / 'r'} has already reached {reached}; to train on, give a larger limit"], r.stderr
    assert (tmp_path / "r" / "metrics.jsonl").read_bytes() == log
    r = run_cli("train", "--resume", str(tmp_path / "r"), "--max-steps", "6", "-q")
    assert r.returncode == 0 and "done: 6 updates" in r.stdout and ", stopped by --max-steps 6; val" in r.stdout, r.stdout


@pytest.mark.parametrize("limits, stopped_by", [(dict(epochs=1), ["--epochs 1"]),
                                                (dict(epochs=0.5, max_steps=4), ["--max-steps 4"]),
                                                (dict(epochs=1, max_steps=500), ["--epochs 1"])])
def test_the_summary_names_the_rule_that_ended_the_run(corpus, tmp_path, limits, stopped_by):
    summary = Trainer(config(corpus, tmp_path, **limits), tmp_path / "r", say=lambda *_: None).run()
    assert summary["stopped_by"] == stopped_by
    assert summary["epochs"] >= 1 if "--epochs 1" in stopped_by else summary["steps"] == 4


@pytest.mark.parametrize("where", ["a run", "a file in the way"])
def test_a_new_run_that_cannot_have_its_folder_says_so_first_in_one_line(corpus, tmp_path, where):
    # the settings, the model's line, a note and "compiling kernels..." came first
    if where == "a run":
        train_steps(config(corpus, tmp_path), tmp_path / "r", 2)
        out, want = tmp_path, f"error: {tmp_path / 'r'} already holds a run; continue it with --resume"
    else:
        (tmp_path / "file").write_text("mine")
        out, want = tmp_path / "file" / "sub", f"error: cannot make the run folder {tmp_path / 'file' / 'sub' / 'r'}: "
    # a text that does not exist: the folder is checked before the text is read
    r = run_cli("train", str(tmp_path / "missing.txt"), "--out-dir", str(out), "--run", "r", "--max-steps", "2")
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1 and r.stderr.startswith(want), r.stderr


def test_the_folder_a_refusal_says_to_resume_is_one_word_of_the_command(corpus, tmp_path):
    run_dir = tmp_path / "my run's"
    train_steps(config(corpus, tmp_path), run_dir, 2)
    with pytest.raises(CharrnnError) as refused:
        check_new_run_dir(run_dir)
    words = shlex.split(str(refused.value).split("continue it with ")[1])
    assert words[:2] == ["--resume", str(run_dir)]


def test_a_new_run_in_a_folder_whose_checkpoints_cannot_be_read_is_not_told_to_resume_it(corpus, tmp_path):
    # "already holds a run; continue it with --resume", which then failed: "... is not a charrnn checkpoint"
    run_dir = tmp_path / "u"
    run_dir.mkdir()
    (run_dir / "best.npz").write_text("mine")
    with pytest.raises(CharrnnError) as refused:
        check_new_run_dir(run_dir)
    assert str(refused.value) == (f"{run_dir / 'best.npz'} cannot be read as a charrnn checkpoint; move it away, or "
                                  "choose another --run name")
    (run_dir / "latest.npz").mkdir()
    with pytest.raises(CharrnnError) as refused:
        check_new_run_dir(run_dir)
    assert str(refused.value) == (f"{run_dir / 'latest.npz'} and {run_dir / 'best.npz'} cannot be read as charrnn "
                                  "checkpoints; move them away, or choose another --run name")
    (run_dir / "latest.npz").rmdir()
    os.mkfifo(run_dir / "latest.npz")  # not opened: the check waited for a writer
    with pytest.raises(CharrnnError, match=re.escape(f"{run_dir / 'latest.npz'} and {run_dir / 'best.npz'} cannot")):
        check_new_run_dir(run_dir)
    train_steps(config(corpus, tmp_path), tmp_path / "r", 2)  # a run to continue, once its best.npz is moved away
    (tmp_path / "r" / "best.npz").write_text("mine")
    with pytest.raises(CharrnnError) as refused:
        check_new_run_dir(tmp_path / "r")
    assert str(refused.value) == (f"{tmp_path / 'r' / 'best.npz'} cannot be read as a charrnn checkpoint; move it "
                                  f"away, then continue the run with --resume {tmp_path / 'r'}, or choose another "
                                  "--run name")


def test_resume_refuses_a_schedule_setting_its_schedule_does_not_read(corpus, tmp_path):
    # "changed on resume: --lr-decay 0.95 -> 0.3" was said of a linear run, which it did not change
    train_steps(config(corpus, tmp_path), tmp_path / "r", 3)  # linear, the default
    r = run_cli("train", "--resume", str(tmp_path / "r"), "--max-steps", "5", "--lr-decay", "0.3")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == (
        "error: --lr-decay is a setting of --schedule step; --schedule linear (the run's) has no use for it"), r.stderr
    r = run_cli("train", "--resume", str(tmp_path / "r"), "--max-steps", "5", "--lr-decay", "0.3", "--schedule", "step",
                "-q")
    assert r.returncode == 0 and "done: 5 updates" in r.stdout, r.stderr


def test_resume_refusal_advises_only_what_a_resume_may_change(corpus, tmp_path):
    # a run with nothing held out, resumed with --eval-every: the advice was to give
    # --val-fraction above 0, which a resume refuses in turn
    train_steps(config(corpus, tmp_path, val_fraction=0.0), tmp_path / "r", 3)
    with pytest.raises(UsageError) as e:
        Trainer.resume(tmp_path / "r", say=lambda *_: None, eval_every=5)
    assert str(e.value) == ("--eval-every acts only with --val-fraction above 0, and it is 0 (the run's): nothing "
                            "is held out to validate on; a resumed run keeps its --val-fraction, so leave out "
                            "--eval-every")


def test_resume_refuses_a_setting_the_run_would_not_use(corpus, tmp_path):
    # a resume given --sample-length took no sample: the run's --sample-every is 0
    train_steps(config(corpus, tmp_path), tmp_path / "r", 3)
    r = run_cli("train", "--resume", str(tmp_path / "r"), "--max-steps", "5", "--sample-length", "30")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == (
        "error: --sample-length acts only with --sample-every above 0, and it is 0 (the run's): no sample is taken; "
        "give --sample-every above 0, or leave out --sample-length"), r.stderr
    r = run_cli("train", "--resume", str(tmp_path / "r"), "--max-steps", "5", "--sample-length", "30",
                "--sample-every", "2")
    assert r.returncode == 0 and "done: 5 updates" in r.stdout, r.stderr
    assert (tmp_path / "r" / "samples.txt").read_text().count("--- step ") == 1  # at update 4
    # the run's own --sample-length given again (the command that started it) with --sample-every
    # 0 to stop its samples: accepted, as the run's own settings are
    r = run_cli("train", "--resume", str(tmp_path / "r"), "--max-steps", "7", "--sample-length", "30",
                "--sample-every", "0", "-q")
    assert r.returncode == 0 and "done: 7 updates" in r.stdout, r.stderr
    assert (tmp_path / "r" / "samples.txt").read_text().count("--- step ") == 1


def test_the_done_line_says_there_was_no_validation_or_test_text(corpus, tmp_path):
    # "val loss nan nats (nan bits/char), best inf; test nan nats (nan bits/char)"
    r = run_cli("train", str(corpus), "--hidden", "8", "--batch", "4", "--k1", "8", "--k2", "8", "--max-steps", "2",
                "--time-limit", "0", "--val-fraction", "0", "--test-fraction", "0", "--out-dir", str(tmp_path),
                "--run", "r", "-q")
    assert r.returncode == 0, r.stderr
    assert "; no validation text (--val-fraction 0); no test text; checkpoints in" in r.stdout and "nan" not in r.stdout


@pytest.mark.parametrize("text, fractions", [("validation", dict(val_fraction=0.45, test_fraction=0.0)),
                                             ("test", dict(val_fraction=0.0, test_fraction=0.45))])
def test_a_loss_that_is_nan_over_a_long_stream_stops_the_run(tmp_path, text, fractions):
    # an IndRNN with |u| up to 2 stays finite over an 8-step window and overflows over the ~100
    # steps of each stream of its held-out text: exit 0, "val loss nan ..., best inf; no test
    # text" (there was one), and no best.npz
    corpus = tmp_path / "t.txt"
    corpus.write_text(TEXT * 3, encoding="utf-8")
    cfg = config(corpus, tmp_path, cell="indrnn", u_max=2.0, layers=1, eval_every=2, **fractions)
    with pytest.raises(CharrnnError) as stopped:
        train_steps(cfg, tmp_path / "r", 2)
    message = str(stopped.value)
    kept = (re.escape(f"{tmp_path / 'r' / 'latest.npz'} holds update 2, the model tested") if text == "test" else
            "no checkpoint was saved before it")  # (the test follows the last save; validation, at 2, the first)
    assert re.fullmatch(rf"the {text} loss is (nan|inf) after update 2: the model computes NaN or Inf over the {text} "
                        rf"text, .* \(an IndRNN's whose u passes 1: --u-max 1 keeps it bounded\); {kept}",
                        message), message
    assert not (tmp_path / "r" / "best.npz").exists()


def test_an_indrnn_diverging_in_training_under_a_bound_above_1_is_told_of_the_bound(tmp_path):
    # it was told to lower --lr or --clip-norm: the state grew by up to 2 a step over 150 steps
    corpus = tmp_path / "t.txt"
    corpus.write_text(TEXT * 20, encoding="utf-8")
    cfg = config(corpus, tmp_path, cell="indrnn", u_max=2.0, layers=1, batch=2, k1=150, k2=150, eval_every=100)
    with pytest.raises(CharrnnError, match=re.escape("; try --u-max 1 or less (|u| up to 2 grows the state at every "
                                                     f"step), {RESET_EVERY_1}, or a lower --lr or --clip-norm")):
        train_steps(cfg, tmp_path / "r", 3)
    cfg.reset_every = 1  # as advised: the updates from a zero state train (to the validation, which runs on)
    with pytest.raises(CharrnnError, match=r"^the validation loss is nan after update 3: "):
        train_steps(cfg, tmp_path / "r1", 3)


RESET_EVERY_1 = ("--reset-every 1 (a fresh start at every update: the state grows over one window, not from update "
                 "to update)")


def indrnn_us(trainer, value):
    """trainer, its IndRNN's u all set to `value`."""
    for name, a in Layout(trainer.spec).views(trainer.params).items():
        if name.endswith(".u"):
            a[:] = value
    return trainer


def test_a_resumed_indrnn_whose_carried_state_overflows_is_told_what_acts_on_it(tmp_path):
    # the first update of a resume overflowed in its forward, from the state carried into it:
    # it was told to lower --lr or --clip-norm, which had not touched the model yet; a fresh
    # start at every update (--reset-every, which a resume may change) was not named
    corpus = tmp_path / "t.txt"
    corpus.write_text(TEXT * 20, encoding="utf-8")
    cfg = config(corpus, tmp_path, cell="indrnn", u_max=2.0, layers=1, batch=2, k1=50, k2=50, reset_every=0,
                 val_fraction=0.0, test_fraction=0.0, checkpoint_every=1, max_steps=2)
    indrnn_us(Trainer(cfg, tmp_path / "r", say=lambda *_: None), 1.9).run()  # the state: 1.9^100 by now
    with pytest.raises(CharrnnError, match=re.escape(
            f"training diverged at update 3: the loss is nan and the gradient norm nan; the last good checkpoint is in "
            f"{tmp_path / 'r'}; try --u-max 1 or less in a new run (|u| up to 2 grows the state at every step), "
            f"or {RESET_EVERY_1}") + "$"):
        Trainer.resume(tmp_path / "r", say=lambda *_: None, max_steps=4).run()
    Trainer.resume(tmp_path / "r", say=lambda *_: None, max_steps=4, reset_every=1).run()  # as advised: it trains
    # a state that overflows from zero within the window too: a fresh start would not act on it
    with pytest.raises(CharrnnError, match=re.escape("; try --u-max 1 or less in a new run (|u| up to 2 grows the "
                                                     "state at every step)") + "$"):
        indrnn_us(Trainer.resume(tmp_path / "r", say=lambda *_: None, max_steps=6, reset_every=0), 99.0).run()


def test_an_indrnn_whose_first_forward_overflows_is_told_only_of_the_bound(tmp_path):
    # at --u-max 100 the first update's loss was NaN whatever the --lr or clipping (none had
    # acted yet), and both were advised
    corpus = tmp_path / "t.txt"
    corpus.write_text(TEXT * 20, encoding="utf-8")
    cfg = config(corpus, tmp_path, cell="indrnn", u_max=100.0, layers=1, batch=2, k1=50, k2=50)
    with pytest.raises(CharrnnError, match=r"diverged at update 1: the loss is (nan|inf) .*; try --u-max 1 or less "
                                           r"\(\|u\| up to 100 grows the state at every step\)$"):
        train_steps(cfg, tmp_path / "r", 3)


@pytest.mark.parametrize("u_max, resumed", [(0.0, False), (2.0, True)])
def test_the_advice_on_an_indrnn_s_bound_is_one_the_run_can_take(corpus, tmp_path, u_max, resumed):
    # the default bound, 2^(1/k2), passes 1 too, and was never named; a resumed run, whose bound
    # is its own, was told to resume with --u-max 1, which is refused
    cfg = config(corpus, tmp_path, cell="indrnn", u_max=u_max, max_steps=6, k2=32, checkpoint_every=2)
    trainer = Trainer(cfg, tmp_path / "r", say=lambda *_: None)
    if resumed:
        trainer.cfg.max_steps = 2
        trainer.run()
        trainer = Trainer.resume(tmp_path / "r", say=lambda *_: None, max_steps=6)
    poisoned(trainer, 3)
    bound = "1.0219" if u_max == 0 else "2"  # 2^(1/32)
    with pytest.raises(CharrnnError, match=re.escape(f"; try --u-max 1 or less{' in a new run' * resumed} (|u| up to "
                                                     f"{bound} grows the state at every step), or a lower --lr")):
        trainer.run()


def test_metrics_are_json_without_a_validation_text(corpus, tmp_path):
    # --val-fraction 0: the records held bare NaN, which JSON has not; then a null loss, which
    # also stands for an infinite one: now there is no validation record at all
    train_steps(config(corpus, tmp_path, val_fraction=0.0, eval_every=2), tmp_path / "r", 4)
    records = [json.loads(line, parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))
               for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in records} == {"train", "test"} and all(r["loss"] is not None for r in records)



def test_a_run_stopped_at_its_last_update_before_its_test_resumes_to_test(corpus, tmp_path):
    # Ctrl-C in the last update saves at the limit and exits before the test, and says to resume;
    # that resume was refused as "already reached"
    train_steps(config(corpus, tmp_path), tmp_path / "r", 5)
    log = tmp_path / "r" / "metrics.jsonl"
    kept = [line for line in log.read_text().splitlines(keepends=True) if '"kind": "test"' not in line]
    log.write_text("".join(kept))
    # a lower limit was taken ("changed on resume: --max-steps 5 -> 3"), the test run, and the run
    # said to have stopped by --max-steps 3: a change that changed nothing but what was said
    r = run_cli("train", "--resume", str(tmp_path / "r"), "--max-steps", "3", "-q")
    assert r.returncode == 2 and r.stderr.strip().endswith(
        f"error: {tmp_path / 'r'} ended at update 5 and has only its test left; leave out --max-steps to test it, "
        "or give a larger limit to train on"), r.stderr
    assert log.read_text() == "".join(kept)
    # a limit added, or raised, leaves the run's own to end it: the resume tests it (these were
    # refused as if lowered)
    r = run_cli("train", "--resume", str(tmp_path / "r"), "--time-limit", "1000", "--epochs", "50", "-q")
    assert r.returncode == 0 and "done: 5 updates" in r.stdout and "stopped by --max-steps 5" in r.stdout, r.stderr
    assert json.loads(log.read_text().splitlines()[-1])["kind"] == "test"
    log.write_text("".join(kept))
    r = run_cli("train", "--resume", str(tmp_path / "r"), "-q")
    assert r.returncode == 0 and "done: 5 updates" in r.stdout, r.stderr
    assert json.loads(log.read_text().splitlines()[-1])["kind"] == "test"


def test_the_progress_bar_says_the_test_has_begun(corpus, tmp_path):
    # a resume that only tests showed "compiling kernels..." and nothing else while the test ran
    from charrnn.cli import _TrainProgress

    train_steps(config(corpus, tmp_path), tmp_path / "r", 5)
    log = tmp_path / "r" / "metrics.jsonl"
    log.write_text("".join(line for line in log.read_text().splitlines(keepends=True) if '"kind": "test"' not in line))
    trainer = Trainer.resume(tmp_path / "r", say=lambda *_: None)
    shown = []
    with _TrainProgress(trainer) as bar:
        def progress(t, record):
            bar.update(t, record)
            shown.append(str(bar.progress.columns[0].render(bar.progress.tasks[0])))

        trainer.run(progress)
    assert shown == ["step 5, testing"]


def test_the_progress_bar_does_not_say_it_compiles_what_it_may_load(corpus, tmp_path):
    # "compiling kernels..." until the first update, also where that update loaded them from the cache
    from charrnn.cli import _TrainProgress

    trainer = Trainer(config(corpus, tmp_path), tmp_path / "r", say=lambda *_: None)
    with _TrainProgress(trainer) as bar:
        assert str(bar.progress.columns[0].render(bar.progress.tasks[0])) == "loading or compiling kernels..."


def test_a_count_of_one_is_said_in_the_singular(corpus, tmp_path):
    # "done: 1 updates", "1 streams in all", "cut off after 1 bytes"
    from typer.testing import CliRunner

    from charrnn.cli import app
    from charrnn.errors import counted

    assert [counted(n, "stream") for n in (0, 1, 2, 12000)] == ["0 streams", "1 stream", "2 streams", "12,000 streams"]
    r = CliRunner().invoke(app, ["train", str(corpus), "--hidden", "8", "--batch", "2", "--k1", "8", "--max-steps", "1",
                                 "--out-dir", str(tmp_path), "--run", "r", "-q"])
    assert r.exit_code == 0 and "done: 1 update, " in r.output, r.output


def _stop_in_the_final_test(monkeypatch):
    """Ctrl-C arrives as the final test starts reading; returns how many windows it read."""
    import charrnn.train as train_module

    read, evaluate = [], train_module.evaluate

    def signalled_while_testing(*args, stop=None, **kw):
        if stop is None:  # a validation
            return evaluate(*args, **kw)
        signal.raise_signal(signal.SIGINT)
        return evaluate(*args, stop=lambda: read.append(1) or stop(), **kw)

    monkeypatch.setattr(train_module, "evaluate", signalled_while_testing)
    return read


def test_a_stop_in_the_final_test_ends_it_at_once_and_the_resume_tests_it(corpus, tmp_path, monkeypatch):
    # the test was read to its end (a large text's test takes minutes), then the run said done, exit 0
    settings = dict(test_fraction=0.45, max_steps=5)  # a test of 8 windows
    straight = Trainer(config(corpus, tmp_path / "a", **settings), tmp_path / "a" / "r", say=lambda *_: None)
    want = straight.run()["test_loss"]
    read = _stop_in_the_final_test(monkeypatch)
    trainer = Trainer(config(corpus, tmp_path / "b", **settings), tmp_path / "b" / "r", say=lambda *_: None)
    with pytest.raises(Interrupted) as stopped:
        trainer.run()
    assert stopped.value.untested and stopped.value.path == tmp_path / "b" / "r" / "latest.npz"
    assert read == [1]  # the window it was reading when the signal came
    assert load_checkpoint(stopped.value.path)[1]["step"] == 5
    log = tmp_path / "b" / "r" / "metrics.jsonl"
    assert all(json.loads(line)["kind"] != "test" for line in log.read_text().splitlines())
    monkeypatch.undo()
    summary = Trainer.resume(tmp_path / "b" / "r", say=lambda *_: None).run()
    assert summary["steps"] == 5 and json.loads(log.read_text().splitlines()[-1])["kind"] == "test"
    assert summary["test_loss"] == want  # what the run would have said


@pytest.mark.parametrize("test_fraction, then", [("0.05", "Test it with: charrnn train --resume {run}"),
                                                  ("0", "The run is complete.")])
def test_a_stop_in_the_last_update_says_what_is_left(corpus, tmp_path, monkeypatch, test_fraction, then):
    # it said "in the test" before the test had begun; without a test, "Continue with" a resume
    # that is refused ("has already reached --max-steps 3")
    from typer.testing import CliRunner

    from charrnn.cli import app

    update = Trainer.update
    monkeypatch.setattr(Trainer, "update", lambda t: (t.step == 2 and t._on_stop_signal(2, None), update(t))[1])
    r = CliRunner().invoke(app, ["train", str(corpus), "--hidden", "12", "--batch", "4", "--k1", "8", "--k2", "8",
                                 "--test-fraction", test_fraction, "--max-steps", "3", "--out-dir", str(tmp_path),
                                 "--run", "r", "-q"])
    run = tmp_path / "r"
    assert r.exit_code == 130, r.output
    assert f"interrupted at update 3, the last; saved {run / 'latest.npz'}. {then.format(run=run)}" in r.output


def test_a_second_stop_in_the_final_test_says_to_test_the_saved_model(corpus, tmp_path, monkeypatch):
    import charrnn.train as train_module

    evaluate = train_module.evaluate

    def stopped_twice_while_testing(*args, stop=None, **kw):
        if stop is not None:
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
        return evaluate(*args, stop=stop, **kw)

    monkeypatch.setattr(train_module, "evaluate", stopped_twice_while_testing)
    trainer = Trainer(config(corpus, tmp_path, test_fraction=0.45, max_steps=5), tmp_path / "r", say=lambda *_: None)
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    assert trainer.stopping_now and trainer.stopped_line(at_once=True) == (
        f"stopped at once after update 5; {tmp_path / 'r' / 'latest.npz'} holds update 5. Test it with: charrnn train "
        f"--resume {tmp_path / 'r'}")  # it said "Continue with"


def test_the_command_line_says_to_resume_a_run_stopped_in_its_final_test(corpus, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from charrnn.cli import app

    read = _stop_in_the_final_test(monkeypatch)
    r = CliRunner().invoke(app, ["train", str(corpus), "--hidden", "12", "--batch", "4", "--k1", "8", "--k2", "8",
                                 "--test-fraction", "0.45", "--max-steps", "3", "--out-dir", str(tmp_path), "--run", "r",
                                 "-q"])
    assert r.exit_code == 130, r.output
    assert (f"interrupted in the test after update 3, the last; {tmp_path / 'r' / 'latest.npz'} holds it. Test it with: "
            f"charrnn train --resume {tmp_path / 'r'}") in r.output
    # a resume that only tests, of a checkpoint renamed in a folder of its own, stopped in its test:
    # it named latest.npz, which is not there, as saved
    (tmp_path / "copy").mkdir()
    (tmp_path / "r" / "latest.npz").rename(tmp_path / "copy" / "update3.npz")
    read.clear()
    r = CliRunner().invoke(app, ["train", "--resume", str(tmp_path / "copy" / "update3.npz"), "-q"])
    assert r.exit_code == 130 and read == [1], r.output
    assert (f"interrupted in the test after update 3, the last; {tmp_path / 'copy' / 'update3.npz'} holds it. Test "
            f"it with: charrnn train --resume {tmp_path / 'copy' / 'update3.npz'}") in r.output


def test_a_finished_run_copied_to_a_folder_of_its_own_is_tested_there_without_a_best(corpus, tmp_path):
    # its done line said "best inf": the folder holds no best.npz, and no update came to keep one
    from typer.testing import CliRunner

    from charrnn.cli import app

    train_steps(config(corpus, tmp_path), tmp_path / "r", 3)
    (tmp_path / "copy").mkdir()
    shutil.copy(tmp_path / "r" / "latest.npz", tmp_path / "copy")
    r = CliRunner().invoke(app, ["train", "--resume", str(tmp_path / "copy"), "-q"])
    assert r.exit_code == 0 and "no update to train" in r.output, r.output
    assert "), no best.npz in this folder; test " in r.output and "inf" not in r.output, r.output


def test_a_lower_limit_on_resume_is_refused_even_before_the_test(corpus, tmp_path):
    # a run stopped at update 4 of 6 has no test record; --max-steps 2 on resume ended it there,
    # writing a test record in the middle of the run, where 'a larger limit' was the advice
    train_steps(config(corpus, tmp_path), tmp_path / "r", 4)
    log = tmp_path / "r" / "metrics.jsonl"
    log.write_text("".join(l for l in log.read_text().splitlines(keepends=True) if '"kind": "test"' not in l))
    latest = tmp_path / "r" / "latest.npz"
    arrays, meta = load_checkpoint(latest)
    meta["config"]["max_steps"] = 6  # as a run of 6 stopped by Ctrl-C at update 4
    save_checkpoint(latest, arrays, meta)
    (tmp_path / "r" / "best.npz").unlink()
    r = run_cli("train", "--resume", str(tmp_path / "r"), "--max-steps", "2")
    assert r.returncode == 2 and "has already reached --max-steps 2 (update 4)" in r.stderr, r.stderr


def test_a_resume_cuts_a_log_line_nested_too_deep_to_read(corpus, tmp_path):
    # json's RecursionError on such a line was an internal error of the resume
    train_steps(config(corpus, tmp_path), tmp_path / "r", 3)
    log = tmp_path / "r" / "metrics.jsonl"
    kept = log.read_bytes()
    log.write_bytes(kept + b"[" * 100_000 + b"]" * 100_000 + b"\n")
    resumed = Trainer.resume(tmp_path / "r", say=lambda *_: None)
    resumed.cfg.max_steps = 4
    resumed.run()
    lines = log.read_bytes().splitlines(keepends=True)
    assert b"".join(lines[:len(kept.splitlines())]) == kept and all(line.startswith(b"{") for line in lines)


@pytest.mark.parametrize("older", [False, True])
def test_a_resume_whose_text_became_a_pipe_says_so_and_does_not_wait(tmp_path, older):
    # a named pipe where a file of the text was: the resume waited for a writer, for ever; and
    # still did for a checkpoint from before the files were listed, which names its corpus setting
    from charrnn.checkpoint import load_checkpoint, save_checkpoint

    text = tmp_path / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    train_steps(config(text, tmp_path), tmp_path / "r", 2)
    if older:
        checkpoint = tmp_path / "r" / "latest.npz"
        arrays, meta = load_checkpoint(checkpoint)
        del meta["corpus"]["files"]
        assert meta["config"]["corpus"] == [str(text)]
        save_checkpoint(checkpoint, arrays, meta)
    text.unlink()
    os.mkfifo(text)
    r = subprocess.run([sys.executable, "-m", "charrnn", "train", "--resume", str(tmp_path / "r"), "--max-steps", "4"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        f"error: {text}, part of the text this run was trained on, is no longer a regular file; give the text again "
        f"after --resume (charrnn train --resume {tmp_path / 'r'} FILE...)"], r.stderr


@pytest.mark.parametrize("change", ["a link to the other", "empty", "binary"])
def test_a_resume_names_the_file_of_its_text_that_changed(tmp_path, change):
    # after 2.txt became a link to 1.txt the resume blamed top.txt, which had not changed; an
    # emptied file was advised "--encoding ...", which a resume refuses
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "1.txt").write_text(TEXT, encoding="utf-8")
    (tmp_path / "d" / "2.txt").write_text(TEXT[::-1], encoding="utf-8")
    (tmp_path / "top.txt").write_text(TEXT.upper(), encoding="utf-8")
    cfg = config(tmp_path / "d", tmp_path)
    cfg.corpus = [str(tmp_path / "d"), str(tmp_path / "top.txt")]
    train_steps(cfg, tmp_path / "r", 2)
    two = tmp_path / "d" / "2.txt"
    two.unlink()
    if change == "a link to the other":
        two.symlink_to(tmp_path / "d" / "1.txt")
        want = f"{two} (now a link to {tmp_path / 'd' / '1.txt'}) has changed since this run read it; resume with"
    elif change == "empty":
        two.write_text("")
        want = f"{two} is empty: it has changed since this run read it; resume with the text it was trained on"
    else:
        two.write_bytes(b"ab\0cd")
        want = f"{two} looks like a binary file (NUL byte at offset 2): it has changed since this run read it"
    with pytest.raises(CharrnnError) as e:
        Trainer.resume(tmp_path / "r", say=lambda *_: None)
    assert str(e.value).startswith(want), str(e.value)


def test_a_file_of_the_text_moved_with_a_link_left_in_its_place_resumes(tmp_path):
    # "is no longer a file of its own (a link to another file of the text?)": the files were
    # matched by the path their links lead to
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "1.txt").write_text(TEXT, encoding="utf-8")
    (tmp_path / "d" / "2.txt").write_text(TEXT[::-1], encoding="utf-8")
    cfg = config(tmp_path / "d", tmp_path)
    train_steps(cfg, tmp_path / "r", 2)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "d" / "1.txt").rename(tmp_path / "elsewhere" / "1.txt")
    (tmp_path / "d" / "1.txt").symlink_to(tmp_path / "elsewhere" / "1.txt")
    resumed = Trainer.resume(tmp_path / "r", say=lambda *_: None, max_steps=3)
    resumed.run()
    assert resumed.step == 3
    arrays, meta = load_checkpoint(tmp_path / "r" / "latest.npz")
    assert [f["path"] for f in meta["corpus"]["files"]] == [str(tmp_path / "elsewhere" / "1.txt"),
                                                           str(tmp_path / "d" / "2.txt")]


def test_a_resume_given_a_file_that_is_no_text_of_its_kind_says_it_is_not_the_run_s(corpus, tmp_path):
    # "... or pass --encoding latin-1", which a resume refuses
    train_steps(config(corpus, tmp_path), tmp_path / "r", 2)
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"caf\xe9 " * 50)
    with pytest.raises(CharrnnError) as e:
        Trainer.resume(tmp_path / "r", say=lambda *_: None, corpus=[latin])
    assert str(e.value).endswith(": it is not the text this run was trained on; give the files it read")
    assert "--encoding" not in str(e.value)


def test_only_a_log_a_run_wrote_counts_as_one(tmp_path):
    from charrnn.train import _left_by_a_run, _record_step

    p = tmp_path / "metrics.jsonl"
    for text, ours in (("", True), ('{"kind": "train", "step": 10}\n', True), ('{"kind": "val", "step": 0}\n', True),
                       ('{"kind": "train", "st', True),  # the first write cut short
                       ('{"kind": "train", "st\nmore\n', False), ('{"kind": "mine"' + "x" * 5000, False),
                       ("my notes\n", False)):
        p.write_text(text)
        assert _left_by_a_run(p, _record_step) == ours, text[:40]
