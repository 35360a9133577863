"""Resuming with changes: a new learning rate and clipping take over from the saved state; the
run resumes from any working folder; its text is found by its absolute path or given again and
checked by its hash; what the logs hold after the checkpoint is dropped; older checkpoints resume."""
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from charrnn.checkpoint import load_checkpoint, save_checkpoint
from charrnn.config import OLDER_CHECKPOINTS
from charrnn.errors import CharrnnError
from charrnn.train import Interrupted, Trainer
from test_train import TEXT, config, train_steps

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--hidden", "8", "--batch", "4", "--k1", "8", "--k2", "8"]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def stop_at(step):
    """A progress callback that presses Ctrl-C at `step`: the run saves latest.npz and stops."""
    return lambda t, record: t.step == step and t._on_stop_signal(2, None)


def test_a_lower_learning_rate_continues_from_the_saved_state(corpus, tmp_path):
    settings = dict(lr=1e-2, schedule="constant", clip_norm=5.0, max_steps=16, eval_every=4, checkpoint_every=4)
    # the run we want: 8 updates at 1e-2, then 8 at 1e-3 and clipping at 0.5, in one go
    straight = Trainer(config(corpus, tmp_path / "a", **settings), tmp_path / "a" / "r", say=lambda *_: None)

    def lower(t, record):
        if t.step == 8 and record is None:
            t.cfg.lr, t.cfg.clip_norm = 1e-3, 0.5

    straight.run(lower)
    # the same run stopped at 8, then resumed with the lower rate
    first = Trainer(config(corpus, tmp_path / "b", **settings), tmp_path / "b" / "r", say=lambda *_: None)
    with pytest.raises(Interrupted):
        first.run(stop_at(8))
    saved, meta = load_checkpoint(tmp_path / "b" / "r" / "latest.npz")
    said = []
    resumed = Trainer.resume(tmp_path / "b" / "r", say=said.append, lr=1e-3, clip_norm=0.5, max_steps=16)
    assert said == ["changed on resume: --lr 0.01 -> 0.001, --clip-norm 5 -> 0.5"]
    assert resumed.step == 8 and resumed.opt.t == meta["optimizer"]["t"] == 8
    for name, moment in resumed.opt.state_arrays().items():
        np.testing.assert_array_equal(moment, saved[f"opt.{name}"])
    np.testing.assert_array_equal(resumed.params, saved["params"])
    resumed.run()
    np.testing.assert_array_equal(resumed.params, straight.params)
    records = [json.loads(l) for l in (tmp_path / "b" / "r" / "metrics.jsonl").read_text().splitlines()]
    # the stop logs updates 1-8 at 8; the resume's first record, at 10, holds 9 and 10
    assert [(r["step"], r["lr"]) for r in records if r["kind"] == "train"] == [(8, 1e-2), (10, 1e-3), (16, 1e-3)]
    _, meta = load_checkpoint(tmp_path / "b" / "r" / "latest.npz")
    assert meta["config"]["lr"] == 1e-3 and meta["config"]["clip_norm"] == 0.5  # and so on the next resume


def run_cli(*args, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="300")
    return subprocess.run([sys.executable, "-m", "charrnn", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)


def test_text_given_again_that_differs_names_its_files_and_a_grown_folder_resumes_without_it(tmp_path):
    # the command that started a run on a folder, given again with --resume once the folder had
    # gained a file, was told "give the files it read", which it had, with no word of the new one
    folder = Path(os.path.realpath(tmp_path)) / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text(TEXT[:300], encoding="utf-8")
    (folder / "b.txt").write_text(TEXT[300:], encoding="utf-8")
    (folder / "d.txt").write_text(TEXT[:300], encoding="utf-8")  # a's bytes: files are told apart by path
    run = tmp_path / "out" / "r"
    Trainer(config(folder, tmp_path / "out", max_steps=2), run, say=lambda *_: None).run()

    def refusal(*inputs):
        with pytest.raises(CharrnnError) as e:
            Trainer.resume(run, say=lambda *_: None, corpus=[str(p) for p in inputs], max_steps=3)
        return str(e.value)

    (folder / "c.txt").write_text("a new file\n", encoding="utf-8")
    (folder / "e.txt").write_text(TEXT[:300], encoding="utf-8")  # a copy of a file it read is new too
    assert refusal(folder) == (f"{folder} is not the text this run was trained on: {folder / 'c.txt'}, "
                               f"{folder / 'e.txt'} are new to the run; leave the text out to resume on the files it "
                               f"read (charrnn train --resume {run}), or train on all of them in a new run that "
                               f"starts from this one (--init-from {run})")
    resumed = Trainer.resume(run, say=lambda *_: None, max_steps=3)  # as it advises
    resumed.run()
    assert resumed.step == 3
    (folder / "e.txt").unlink()
    (folder / "d.txt").write_text(TEXT[:299], encoding="utf-8")  # (with a's bytes it was said to be new)
    assert f"({folder / 'd.txt'} changed since the run read it; {folder / 'c.txt'} is new" in refusal(folder)
    (folder / "d.txt").write_text("", encoding="utf-8")  # left out by the folder's reading
    (folder / "b.txt").unlink()
    assert refusal(folder) == (f"{folder} is not the text this run was trained on ({folder / 'b.txt'}, which the run "
                               f"read, is missing; {folder / 'd.txt'}, which the run read, is not in the text given; "
                               f"{folder / 'c.txt'} is new to the run); give the files it read, in the same order")
    moved = tmp_path / "moved.txt"
    (folder / "a.txt").rename(moved)  # its bytes elsewhere: the same file
    said = refusal(moved, folder / "c.txt")
    assert f"{folder / 'c.txt'} is new to the run" in said and str(folder / "a.txt") not in said
    assert f"{moved} is new" not in said


def test_the_same_files_in_another_order_are_said_so(tmp_path):
    # refused as "its SHA-256 differs", as if a file had changed
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text(TEXT[:300], encoding="utf-8")
    b.write_text(TEXT[300:], encoding="utf-8")
    run = tmp_path / "out" / "r"
    cfg = config(a, tmp_path / "out", max_steps=2)
    cfg.corpus = [str(a), str(b)]
    Trainer(cfg, run, say=lambda *_: None).run()
    with pytest.raises(CharrnnError) as e:
        Trainer.resume(run, say=lambda *_: None, corpus=[str(b), str(a)], max_steps=3)
    assert str(e.value) == (f"{b} {a} is not the text this run was trained on (the same files in another order); "
                            f"give the files it read, in the same order")
    resumed = Trainer.resume(run, say=lambda *_: None, corpus=[str(a), str(b)], max_steps=3)
    resumed.run()
    assert resumed.step == 3


def test_a_file_given_twice_is_kept_once_and_given_once_on_resume_is_no_change(tmp_path):
    # read once each, but kept as given: the resume given `a.txt` said "changed on resume: corpus
    # a.txt a.txt -> a.txt", and so did one given both names of a file and its link
    a = tmp_path / "a.txt"
    a.write_text(TEXT, encoding="utf-8")
    (tmp_path / "link.txt").symlink_to(a)
    run = tmp_path / "out" / "r"
    cfg = config(a, tmp_path / "out", max_steps=2)
    cfg.corpus = [str(a), str(a), str(tmp_path / "link.txt")]
    Trainer(cfg, run, say=lambda *_: None).run()
    assert load_checkpoint(run / "latest.npz")[1]["config"]["corpus"] == [str(a)]
    said = []
    resumed = Trainer.resume(run, say=said.append, corpus=[str(a)], max_steps=3)
    resumed.run()
    assert resumed.step == 3 and not any("corpus" in line for line in said), said
    # a run kept both names before: given once, no change either
    arrays, meta = load_checkpoint(run / "latest.npz")
    meta["config"]["corpus"] = [str(a), str(a)]
    save_checkpoint(run / "latest.npz", arrays, meta)
    Trainer.resume(run, say=said.append, corpus=[str(tmp_path / "link.txt")], max_steps=4).run()
    assert not any("corpus" in line for line in said), said


def test_a_run_resumes_from_another_folder_and_finds_a_moved_corpus_by_its_hash(tmp_path):
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir()
    elsewhere.mkdir()
    (here / "tiny.txt").write_text(TEXT, encoding="utf-8")
    first = run_cli("train", "tiny.txt", *TINY, "--max-steps", "3", "--out-dir", "out", "--run", "r", "-q", cwd=here)
    assert first.returncode == 0, first.stderr
    run_dir = here / "out" / "r"
    _, meta = load_checkpoint(run_dir / "latest.npz")
    assert meta["config"]["corpus"] == [str(here / "tiny.txt")]
    assert meta["corpus"]["files"][0]["path"] == str(here / "tiny.txt")
    again = run_cli("train", "--resume", run_dir, "--max-steps", "5", "-q", cwd=elsewhere)
    assert again.returncode == 0, again.stderr
    assert "5 updates" in again.stdout

    (here / "tiny.txt").rename(elsewhere / "moved.txt")
    lost = run_cli("train", "--resume", run_dir, "--max-steps", "7", cwd=elsewhere)
    assert lost.returncode == 1 and len(lost.stderr.strip().splitlines()) == 1, lost.stderr
    assert "tiny.txt, part of the text this run was trained on, is not there" in lost.stderr
    (elsewhere / "other.txt").write_text(TEXT.replace("fox", "cat"), encoding="utf-8")
    wrong = run_cli("train", "--resume", run_dir, "other.txt", "--max-steps", "7", cwd=elsewhere)
    assert wrong.returncode == 1 and "other.txt is not the text this run was trained on" in wrong.stderr
    found = run_cli("train", "--resume", run_dir, "moved.txt", "--max-steps", "7", cwd=elsewhere)
    assert found.returncode == 0, found.stderr
    assert f"corpus {here / 'tiny.txt'} -> {elsewhere / 'moved.txt'}" in found.stderr
    _, meta = load_checkpoint(run_dir / "latest.npz")
    assert meta["step"] == 7 and meta["corpus"]["files"][0]["path"] == str(elsewhere / "moved.txt")


def test_a_corpus_that_changed_is_refused(corpus, tmp_path):
    train_steps(config(corpus, tmp_path), tmp_path / "r", 3)
    corpus.write_text(TEXT.replace("lazy", "busy"), encoding="utf-8")
    with pytest.raises(CharrnnError, match=r"tiny.txt has changed since this run read it"):
        Trainer.resume(tmp_path / "r", say=lambda *_: None)


def test_a_resumed_run_drops_what_its_logs_hold_after_the_checkpoint(corpus, tmp_path):
    cfg = config(corpus, tmp_path, max_steps=12, eval_every=3, checkpoint_every=4, sample_every=3, sample_length=5)
    trainer = Trainer(cfg, tmp_path / "r", say=lambda *_: None)

    def crash(t, record):  # killed after step 10's record, the last save at step 8
        if t.step == 10 and record is not None:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        trainer.run(crash)
    metrics, samples = tmp_path / "r" / "metrics.jsonl", tmp_path / "r" / "samples.txt"
    with open(metrics, "a") as f:
        f.write('{"kind": "train", "st')  # a record torn by the kill
    steps = lambda kind: [json.loads(l)["step"] for l in metrics.read_text().splitlines()[:-1]
                          if json.loads(l)["kind"] == kind]
    assert steps("val") == [3, 6, 9] and steps("train") == [10]
    assert samples.read_text().count("--- step ") == 3
    Trainer.resume(tmp_path / "r", say=lambda *_: None).run()
    records = [json.loads(l) for l in metrics.read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "val"] == [3, 6, 9, 12]
    assert [r["step"] for r in records if r["kind"] == "train"] == [10, 12]
    headers = [l for l in samples.read_text().splitlines() if l.startswith("--- step ")]
    assert [h.split(",")[0] for h in headers] == ["--- step 3", "--- step 6", "--- step 9", "--- step 12"]


def test_a_sample_whose_text_reads_as_a_header_is_kept_on_resume(corpus, tmp_path, monkeypatch):
    # a model trained on a log wrote "--- step 999, epoch 9" in its samples: a resume cut
    # samples.txt at that line, losing the rest of that sample and every later one
    like_a_header = "a\n--- step 999, epoch 9\n--- step 7, epoch 0.50, val loss -, temperature 1, seed 7 ---\nb"
    monkeypatch.setattr(Trainer, "sample", lambda self: like_a_header)
    run = tmp_path / "r"
    cfg = config(corpus, tmp_path, max_steps=4, eval_every=2, checkpoint_every=4, sample_every=2, sample_length=5)
    Trainer(cfg, run, say=lambda *_: None).run()  # samples at 2 and 4, saved at 4
    samples = run / "samples.txt"
    at_4, checkpoint_4 = samples.read_bytes(), (run / "latest.npz").read_bytes()
    assert at_4.count(b"--- step 999") == 2
    Trainer.resume(run, say=lambda *_: None, max_steps=6).run()  # a sample at 6
    assert samples.read_bytes().startswith(at_4) and samples.read_bytes().count(b"--- step 999") == 3
    (run / "latest.npz").write_bytes(checkpoint_4)  # as a run killed after its sample at 6, before its save
    (run / "best.npz").unlink()
    Trainer.resume(run, say=lambda *_: None, max_steps=5).run()
    assert samples.read_bytes() == at_4  # the samples of 2 and 4 whole; 6's, which 5 did not take again, gone
    # a samples.txt edited since (a character added to the first sample): where the checkpoint's
    # size ends no sample, the file is cut at the first line that reads as a later update's header
    edited = at_4.replace(b"\nb\n\n", b"\nbb\n\n", 1)
    samples.write_bytes(edited + b"--- step 6, epoch 1.00, val loss -, temperature 1, seed 6 ---\nc\n\n")
    (run / "latest.npz").write_bytes(checkpoint_4)
    Trainer.resume(run, say=lambda *_: None, max_steps=4).run()
    assert samples.read_bytes() == edited.split(b"--- step 999")[0]  # (that line is one, to a reader of lines)


def test_a_resume_keeps_the_batch_and_window_its_checkpoint_holds(tmp_path, monkeypatch):
    # a run on a tiny text, fitted to 3 streams by 3 processes, was fitted again when resumed in
    # one process: batch 3 -> 2, refused as "the checkpoint's streams have batch 3 but this run
    # has 2"; and every resume of a tiny text said "corpus is small (...): " with nothing after it
    from charrnn import train

    corpus = tmp_path / "t.txt"
    corpus.write_text(TEXT[:111], encoding="utf-8")
    fit = train.fit_batch_and_window
    monkeypatch.setattr(train, "fit_batch_and_window", lambda n, batch, k1, ranks: fit(n, batch, k1, 3))
    said = []
    cfg = config(corpus, tmp_path, batch=32, k1=50, k2=50, max_steps=2, eval_every=100)
    Trainer(cfg, tmp_path / "r", say=said.append).run()
    assert said == ["corpus is small (99 training characters): --batch 32 -> 3, --k1 50 -> 8, --k2 50 -> 8"]
    monkeypatch.setattr(train, "fit_batch_and_window", fit)  # resumed in one process
    said.clear()
    resumed = Trainer.resume(tmp_path / "r", say=said.append, max_steps=4)
    assert said == ["changed on resume: --max-steps 2 -> 4"]
    assert (resumed.cfg.batch, resumed.cfg.k1, resumed.cfg.k2) == (3, 8, 8) and resumed.run()["steps"] == 4


def test_best_npz_holds_its_steps_sample_and_is_saved_when_that_sample_fails(corpus, tmp_path, monkeypatch):
    # best.npz is saved after its update's sample, so that the size of samples.txt it keeps holds
    # that sample (a resume from it keeps it); a sample that failed (a full disk) lost that best
    run = tmp_path / "r"
    cfg = config(corpus, tmp_path, max_steps=4, eval_every=2, checkpoint_every=4, sample_every=2, sample_length=5)
    sizes = {}

    def measured(t, record):
        if record is None:  # after the step's validation, and its save if best
            sizes[t.step] = (run / "samples.txt").stat().st_size

    Trainer(cfg, run, say=lambda *_: None).run(measured)
    best = load_checkpoint(run / "best.npz")[1]
    assert best["samples_bytes"] == sizes[best["step"]] > 0
    assert load_checkpoint(run / "latest.npz")[1]["samples_bytes"] == (run / "samples.txt").stat().st_size
    sample = Trainer.sample

    def fails_at_6(self):
        if self.step == 6:
            raise CharrnnError("cannot write samples.txt: No space left on device")
        return sample(self)

    monkeypatch.setattr(Trainer, "sample", fails_at_6)
    resumed = Trainer.resume(run, say=lambda *_: None, max_steps=8)
    with pytest.raises(CharrnnError, match="No space left"):
        resumed.run()
    assert resumed.best_val < best["metrics"]["best_val"]  # step 6 validated best: it is saved
    assert load_checkpoint(run / "best.npz")[1]["step"] == 6


def test_logs_are_cut_a_piece_at_a_time_and_a_sample_header_of_any_step_is_later(corpus, tmp_path, monkeypatch):
    # a samples.txt header of 5,000 digits was an internal error on resume (int() refuses 4,300),
    # and a log was read whole, split and joined: 300 MB of metrics.jsonl took 2.7 GB to cut
    import io
    import tracemalloc

    from charrnn import train
    from charrnn.train import _cut_log, _record_step, _sample_step

    run = tmp_path / "r"
    train_steps(config(corpus, tmp_path, eval_every=4, checkpoint_every=4, sample_every=4, sample_length=5), run, 4)
    samples, metrics = run / "samples.txt", run / "metrics.jsonl"
    kept_samples, kept_metrics = samples.read_bytes(), metrics.read_bytes()
    samples.write_bytes(kept_samples + b"--- step " + b"1" * 5000 + b", epoch 1.00 ---\nxyz\n")
    metrics.write_bytes(kept_metrics + b"x" * 20_000_000 + b"\n" + kept_metrics.replace(b'"step": 4', b'"step": 5'))
    tracemalloc.start()
    try:
        _cut_log(metrics, lambda line, at: _record_step(line) > 4, every_line=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert metrics.read_bytes() == kept_metrics and peak < 8 << 20  # a few pieces of a MB, not the 20 MB line
    _cut_log(samples, lambda line, at: _sample_step(line) > 4)
    assert samples.read_bytes() == kept_samples
    samples.write_bytes(kept_samples + b"--- step " + b"1" * 5000 + b", epoch 1.00 ---\nxyz\n")
    resumed = Trainer.resume(run, say=lambda *_: None, max_steps=5)  # the whole command's way
    resumed.run()
    assert resumed.step == 5 and samples.read_bytes() == kept_samples
    metrics.write_bytes(kept_metrics)
    monkeypatch.setattr(train, "LOG_PIECE", 1000)  # above a record's length: a longer line goes in pieces
    metrics.write_bytes(kept_metrics + b"y" * 2500 + b"\n" + kept_metrics)  # that line goes whole, the rest stays
    _cut_log(metrics, lambda line, at: _record_step(line) > 4, every_line=True)
    assert metrics.read_bytes() == kept_metrics * 2
    header_inside = kept_samples + b"z" * 1000 + b"--- step 9, epoch 1.00 ---\n"  # a piece that starts no line
    samples.write_bytes(header_inside + b"--- step 9, epoch 1.00 ---\n")
    _cut_log(samples, lambda line, at: _sample_step(line) > 4)
    assert samples.read_bytes() == header_inside
    monkeypatch.setattr(train, "LOG_PIECE", 6)  # a CR LF cut by the limit ends one line, not two
    pieces = list(train._log_lines(io.StringIO("abcde\r\nxyz\n", newline="")))
    assert pieces == [("abcde\r", True, 0), ("\n", False, 6), ("xyz\n", True, 7)]
    metrics.write_bytes(kept_metrics)


def test_an_earlier_checkpoint_resumed_in_its_own_folder_is_refused_and_a_copy_elsewhere_resumes(corpus, tmp_path,
                                                                                                   monkeypatch):
    # a copy of update 4's latest.npz, resumed in the folder after the run went on to 8, would
    # have replaced latest.npz (and best.npz, were 8's the better) and cut their records
    run = tmp_path / "r"
    trainer = train_steps(config(corpus, tmp_path, eval_every=4, checkpoint_every=4), run, 4)
    (run / "at4.npz").write_bytes((run / "latest.npz").read_bytes())
    Trainer.resume(run, say=lambda *_: None, max_steps=8).run()
    kept = {name: (run / name).read_bytes() for name in ("latest.npz", "best.npz", "metrics.jsonl")}
    new = tmp_path / "r-from-4"
    for earlier in (run / "at4.npz", run / "at4"):  # the file, or its name without .npz
        with pytest.raises(CharrnnError) as refused:
            Trainer.resume(earlier, say=lambda *_: None)
        assert str(refused.value) == (
            f"{run / 'at4.npz'} was saved at update 4, before {run / 'latest.npz'} (update 8); resuming it there "
            f"would replace that. To go on from update 4 and keep it, resume a copy in a folder of its own: "
            f"mkdir {new} && cp {run / 'at4.npz'} {new / 'latest.npz'} && charrnn train --resume {new}")
    # options changed on resume are in the copy's command: without them it only tested update 4 again
    with pytest.raises(CharrnnError, match=re.escape(f" && charrnn train --resume {new} --max-steps 6 --lr 0.001")):
        Trainer.resume(run / "at4.npz", say=lambda *_: None, max_steps=6, lr=np.float64(1e-3))  # (not np.float64(...))
    monkeypatch.chdir(run)  # from inside the folder, by its bare name: the copy's folder is named in full
    with pytest.raises(CharrnnError, match=re.escape(f"resume a copy in a folder of its own: mkdir {new} && cp at4.npz")):
        Trainer.resume("at4.npz", say=lambda *_: None)
    assert {name: (run / name).read_bytes() for name in kept} == kept
    new.mkdir()
    (new / "latest.npz").write_bytes((run / "at4.npz").read_bytes())
    resumed = Trainer.resume(new, say=lambda *_: None, max_steps=6)
    assert resumed.step == 4 == trainer.step
    resumed.run()
    assert load_checkpoint(new / "latest.npz")[1]["step"] == 6


@pytest.mark.parametrize("copied_as", ["theirs.npz", "best.npz"])
def test_another_runs_checkpoint_resumed_in_a_run_folder_is_refused(corpus, tmp_path, copied_as):
    # it replaced the folder's latest.npz with a run on another text, and its metrics mixed the
    # two runs; copied in as best.npz, the resume reported the other run's best loss as its own
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    train_steps(config(corpus, tmp_path, eval_every=2, checkpoint_every=2), mine, 2)
    other = tmp_path / "other.txt"
    other.write_text(TEXT.upper(), encoding="utf-8")
    train_steps(config(other, tmp_path, eval_every=2, checkpoint_every=2), theirs, 2)
    kept = {name: (mine / name).read_bytes() for name in ("latest.npz", "best.npz", "metrics.jsonl")}
    if copied_as == "best.npz":  # the folder's best is theirs; mine is resumed from latest.npz
        (mine / "best.npz").write_bytes((theirs / "best.npz").read_bytes())
        kept["best.npz"] = (mine / "best.npz").read_bytes()
        resumed, holder = mine / "latest.npz", mine / "best.npz"
    else:
        (mine / copied_as).write_bytes((theirs / "latest.npz").read_bytes())
        resumed, holder = mine / copied_as, mine / "latest.npz"
    with pytest.raises(CharrnnError) as refused:
        Trainer.resume(resumed, say=lambda *_: None, max_steps=4)
    assert str(refused.value).startswith(
        f"{resumed} is a checkpoint of another run than {holder}; resuming it there would replace that run's checkpoints and records. To go on from update 2 and keep it, resume a copy "
        f"in a folder of its own: mkdir {tmp_path / 'mine-from-2'}")
    assert {name: (mine / name).read_bytes() for name in kept} == kept
    Trainer.resume(theirs, say=lambda *_: None, max_steps=4).run()  # its own folder: no other run in it


@pytest.mark.parametrize("unread, resumed_name", [
    ("latest.npz", "model.npz"),  # a file of the user's where the resume saves: it was replaced without a word
    ("best.npz", "latest.npz"),  # a damaged best.npz: the resume said "best 3.67" of a model no file held
])
@pytest.mark.parametrize("content", [b"a note of the user's\n", "a .npz archive of the user's", "cut off"])
def test_a_checkpoint_file_that_cannot_be_read_is_not_replaced_by_a_resume(corpus, tmp_path, unread, resumed_name,
                                                                          content):
    run = tmp_path / "r"
    train_steps(config(corpus, tmp_path, eval_every=2, checkpoint_every=2), run, 2)
    if resumed_name != "latest.npz":
        (run / "latest.npz").rename(run / resumed_name)
        (run / "best.npz").unlink()
    if content == "cut off":
        content = (run / resumed_name).read_bytes()[:3000]
    elif content == "a .npz archive of the user's":
        np.savez(tmp_path / "theirs.npz", weights=np.arange(10))
        content = (tmp_path / "theirs.npz").read_bytes()
    (run / unread).write_bytes(content)
    with pytest.raises(CharrnnError) as refused:
        Trainer.resume(run / resumed_name, say=lambda *_: None, max_steps=4)
    assert str(refused.value).startswith(
        f"{run / unread} cannot be read as a charrnn checkpoint, and resuming {run / resumed_name} there would replace "
        f"it (move it away to resume there). To go on from update 2 and keep it, resume a copy in a folder of its "
        f"own: mkdir {tmp_path / 'r-from-2'} && cp {run / resumed_name} {tmp_path / 'r-from-2' / 'latest.npz'}")
    assert (run / unread).read_bytes() == content
    (run / unread).rename(tmp_path / "moved away")  # the advice
    Trainer.resume(run / resumed_name, say=lambda *_: None, max_steps=4).run()
    assert load_checkpoint(run / "best.npz")[1]["step"] == 4  # its first validation, into a folder without one


def test_a_run_folder_without_its_latest_checkpoint_resumes_its_best_with_a_note(corpus, tmp_path):
    # it went back to best.npz, and only "resuming ... at update 2", which -q leaves out, said so
    run = tmp_path / "r"
    train_steps(config(corpus, tmp_path, eval_every=2, checkpoint_every=2), run, 2)
    (run / "latest.npz").unlink()
    said = []
    assert Trainer.resume(run, say=said.append, max_steps=3).step == 2
    assert said == ["changed on resume: --max-steps 2 -> 3", f"{run} has no latest.npz: resuming its best.npz, of update 2"]


def test_runs_of_the_same_settings_are_told_apart_by_their_run_ids(corpus, tmp_path):
    # the same command run twice (a time limit makes their schedules differ): another run all the
    # same, whose checkpoint would replace this one's latest.npz
    first, second = tmp_path / "first", tmp_path / "second"
    train_steps(config(corpus, tmp_path), first, 2)
    train_steps(config(corpus, tmp_path), second, 4)
    ids = {load_checkpoint(run / "latest.npz")[1]["run_id"] for run in (first, second)}
    assert len(ids) == 2 and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    (first / "theirs.npz").write_bytes((second / "latest.npz").read_bytes())
    with pytest.raises(CharrnnError, match=re.escape(f"{first / 'theirs.npz'} is a checkpoint of another run than")):
        Trainer.resume(first / "theirs.npz", say=lambda *_: None)
    resumed = Trainer.resume(first, say=lambda *_: None, max_steps=3)  # its own checkpoint keeps its id
    resumed.run()
    assert load_checkpoint(first / "latest.npz")[1]["run_id"] == load_checkpoint(first / "best.npz")[1]["run_id"]
    # checkpoints from before run ids: a run goes on with an id made of what it cannot change, the
    # same at every resume, so that what one resume saved (best.npz) and the next (latest.npz) agree
    (first / "theirs.npz").unlink()
    for name in ("latest.npz", "best.npz"):
        arrays, meta = load_checkpoint(first / name)
        del meta["run_id"]
        save_checkpoint(first / name, arrays, meta)
    Trainer.resume(first, say=lambda *_: None, max_steps=4).run()
    made = load_checkpoint(first / "best.npz")[1]["run_id"]
    arrays, meta = load_checkpoint(first / "latest.npz")  # as if that resume had died before saving it
    del meta["run_id"]
    save_checkpoint(first / "latest.npz", arrays, meta)
    Trainer.resume(first, say=lambda *_: None, max_steps=5).run()  # latest.npz, id-less, and best.npz agree
    assert load_checkpoint(first / "latest.npz")[1]["run_id"] == made != load_checkpoint(second / "latest.npz")[1]["run_id"]


def test_a_log_of_the_users_in_the_folder_of_a_resumed_checkpoint_is_refused_not_cut(corpus, tmp_path):
    # the resume cut every line of it that was not a record of a later update: all of them
    run, mine = tmp_path / "r", tmp_path / "mine"
    train_steps(config(corpus, tmp_path), run, 3)
    mine.mkdir()
    (mine / "model.npz").write_bytes((run / "latest.npz").read_bytes())
    (mine / "metrics.jsonl").write_text('my notes\n{"lr": 0.1}\n', encoding="utf-8")
    with pytest.raises(CharrnnError, match=re.escape(f"{mine / 'metrics.jsonl'} is not a log of charrnn's; resuming "
                                                     f"{mine / 'model.npz'} there would replace it. To go on")):
        Trainer.resume(mine / "model.npz", say=lambda *_: None, max_steps=4)
    assert (mine / "metrics.jsonl").read_text(encoding="utf-8") == 'my notes\n{"lr": 0.1}\n'


def test_a_copy_in_a_folder_without_best_npz_saves_one_at_its_first_validation(corpus, tmp_path):
    # the copy's record holds a best loss this run will not reach, from a model the new folder
    # lacks: the run reports as best, and keeps, what it validates itself
    run, new = tmp_path / "r", tmp_path / "copy"
    train_steps(config(corpus, tmp_path, eval_every=2, checkpoint_every=2), run, 4)
    arrays, meta = load_checkpoint(run / "latest.npz")
    meta["metrics"]["best_val"] = 0.5
    new.mkdir()
    save_checkpoint(new / "latest.npz", arrays, meta)
    resumed = Trainer.resume(new, say=lambda *_: None, max_steps=6)
    assert resumed.best_val == math.inf
    resumed.run()
    best = load_checkpoint(new / "best.npz")[1]
    assert best["step"] == 6 and best["metrics"]["best_val"] == resumed.best_val == resumed.last_val > 0.5
    # resumed from best.npz itself (the folder's newest), its own record stands
    (new / "latest.npz").unlink()
    assert Trainer.resume(new / "best.npz", say=lambda *_: None).best_val == best["metrics"]["best_val"]


def test_a_resumed_run_replaces_best_npz_only_with_a_better_model_than_it_holds(corpus, tmp_path):
    # best.npz saved after latest.npz (a run killed between a validation and its next save)
    # holds a lower loss than latest.npz knows of; resumed, with a new learning rate say, the
    # run replaced it with any model better than latest.npz's best
    run = tmp_path / "r"
    train_steps(config(corpus, tmp_path, eval_every=2, checkpoint_every=2), run, 4)
    arrays, meta = load_checkpoint(run / "latest.npz")
    assert meta["metrics"]["best_val"] > 0.5
    meta["metrics"]["best_val"] = meta["metrics"]["last_val"] = 0.5  # a loss this run will not reach
    meta["step"] = 5
    save_checkpoint(run / "best.npz", arrays, meta)
    best = (run / "best.npz").read_bytes()
    resumed = Trainer.resume(run, say=lambda *_: None, max_steps=10, lr=3e-3)
    assert resumed.best_val == 0.5
    resumed.run()
    assert (run / "best.npz").read_bytes() == best


def test_a_checkpoint_from_before_many_files_resumes(corpus, tmp_path, monkeypatch):
    train_steps(config(corpus, tmp_path), tmp_path / "r", 3)
    latest = tmp_path / "r" / "latest.npz"
    arrays, meta = load_checkpoint(latest)
    # as older charrnn wrote it: the corpus as typed (relative), no list of files, no newer settings
    monkeypatch.chdir(tmp_path)
    meta["config"]["corpus"] = "tiny.txt"
    for name in OLDER_CHECKPOINTS:
        meta["config"].pop(name, None)
    meta["corpus"] = {"path": "tiny.txt", "chars": len(TEXT), "sha256": meta["corpus"]["sha256"]}
    save_checkpoint(latest, arrays, meta)
    resumed = Trainer.resume(latest, say=lambda *_: None, max_steps=5)
    assert resumed.cfg.doc_sep == "" and resumed.cfg.corpus == [str(corpus)]
    assert resumed.cfg.reset_every == 0  # it goes on as it ran: no fresh starts but at a new epoch
    resumed.run()
    assert resumed.step == 5


@pytest.mark.parametrize("ranks, said", [
    (1, ["saved on {m} threads and resumes on {now}: it trains on, but not bit for bit as it would have on {m} "
         "threads", "; NUMBA_NUM_THREADS={m} resumes it exactly"]),
    (2, ["saved on 2 processes of {m} threads and resumes on {now}: ",
         "; mpiexec -n 2 with NUMBA_NUM_THREADS={m} resumes it exactly"]),
])
def test_a_run_resumed_on_another_split_of_its_work_says_it_goes_on_but_not_bit_for_bit(corpus, tmp_path, ranks,
                                                                                          said):
    # the README promises a resume bit for bit on the same count of numba's threads (and of
    # ranks): its sums add up a block per thread in that order. On another count the numbers
    # parted from the straight run's in their last bits, and nothing said so
    import numba

    from charrnn.train import split_shown

    train_steps(config(corpus, tmp_path), tmp_path / "r", 3)
    latest = tmp_path / "r" / "latest.npz"
    arrays, meta = load_checkpoint(latest)
    n = numba.get_num_threads()
    assert meta["split"] == {"ranks": 1, "threads": n}
    notes = []
    Trainer.resume(latest, say=notes.append, max_steps=4)
    assert not any("bit for bit" in line for line in notes), notes  # on the split that saved it: no note
    meta["split"] = {"ranks": ranks, "threads": n + 1}
    save_checkpoint(latest, arrays, meta)  # as if saved on a machine of one core more
    Trainer.resume(latest, say=notes.append, max_steps=4)
    line = next(line for line in notes if "bit for bit" in line)
    assert line.startswith("note: this run was saved on "), line
    assert all(part.format(m=n + 1, now=split_shown(1, n)) in line for part in said), line
    del meta["split"]  # a checkpoint older than the note: nothing to compare
    save_checkpoint(latest, arrays, meta)
    notes.clear()
    Trainer.resume(latest, say=notes.append, max_steps=4)
    assert not any("bit for bit" in line for line in notes), notes


def test_a_change_on_resume_is_shown_with_the_digits_that_tell_it_apart():
    # "changed on resume: --lr 0.003 -> 0.003" for --lr 0.0030000001
    from charrnn.train import _shown_apart

    assert _shown_apart(0.003, 0.0030000001) == ("0.003", "0.0030000001")
    assert _shown_apart(840.0, 840.0000001) == ("840.0", "840.0000001")
    assert _shown_apart(0.01, 0.001) == ("0.01", "0.001") and _shown_apart(5, 6) == ("5", "6")


def test_a_folder_in_place_of_a_checkpoint_is_refused_before_the_run_trains(corpus, tmp_path):
    # a folder named best.npz: the run trained to its first validation, could not write best.npz
    # ("check free disk space and permissions"), and ended without saving what it had trained
    run = tmp_path / "r"
    train_steps(config(corpus, tmp_path, eval_every=4, checkpoint_every=4), run, 4)
    (run / "best.npz").unlink()
    (run / "best.npz").mkdir()
    kept = (run / "latest.npz").read_bytes()
    with pytest.raises(CharrnnError, match=re.escape(f"{run / 'best.npz'} is a folder, where the run keeps a "
                                                     "checkpoint; move it away")):
        Trainer.resume(run, say=lambda *_: None, max_steps=8)
    assert (run / "latest.npz").read_bytes() == kept
    (run / "best.npz").rmdir()  # moved away: the run resumes
    Trainer.resume(run, say=lambda *_: None, max_steps=8).run()
    assert (run / "best.npz").is_file()
