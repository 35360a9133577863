"""Fine-tuning (train --init-from): the trained model carries over bit for bit, characters it
lacked get a fresh model's rows, it trains, and options that ask for another model are refused."""
import json
import re
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from charrnn.checkpoint import load_checkpoint
from charrnn.errors import CharrnnError
from charrnn.cli import app
from charrnn.cells import NAMES
from charrnn.model import VOCAB_AXES, Layout, ModelSpec, init_params
from charrnn.train import Interrupted, Trainer, fine_tune_settings
from test_hostile import main_exits
from test_train import TEXT, config, train_steps

NEW_TEXT = "".join(f"DEF F{i}(X): RETURN X * {i % 9} + Y[{i % 5}]  # ÉTÉ\n" for i in range(14))


@pytest.fixture
def texts(tmp_path):
    old, new = tmp_path / "old.txt", tmp_path / "new.txt"
    old.write_text(TEXT, encoding="utf-8")
    new.write_text(NEW_TEXT, encoding="utf-8")
    return old, new


def fine_tuned(base_dir, new, out, given=None, **kw):
    settings = fine_tune_settings(base_dir, given or {})
    return Trainer(config(new, out, **{**settings, **kw}), out / "ft", say=lambda *_: None)


@pytest.mark.parametrize("cell", NAMES)
def test_the_tensors_over_the_vocabulary_are_the_ones_the_layout_grows(cell):
    def shapes(V):
        return {name: shape for name, shape, _ in Layout(ModelSpec(cell, V, 6, 2)).entries}

    small, large = shapes(5), shapes(7)
    grown = {name for name in small if small[name] != large[name]}
    assert grown == set(VOCAB_AXES)
    for name, axis in VOCAB_AXES.items():
        assert small[name][axis] == 5 and large[name][axis] == 7
        assert [n for i, n in enumerate(small[name]) if i != axis] == [n for i, n in enumerate(large[name]) if i != axis]


@pytest.mark.parametrize("cell", ["lstm", "gru", "esn"])
def test_the_old_rows_are_kept_bit_identical_and_new_characters_start_as_a_fresh_model(texts, tmp_path, cell):
    old, new = texts
    base = train_steps(config(old, tmp_path / "a", cell=cell), tmp_path / "a" / "r", 6)
    saved, meta = load_checkpoint(tmp_path / "a" / "r" / "best.npz")
    V = len(meta["vocab"])
    trainer = fine_tuned(tmp_path / "a" / "r", new, tmp_path / "b", seed=99)
    added = sorted(set(NEW_TEXT) - set(TEXT))
    assert trainer.vocab.chars == meta["vocab"] + added and trainer.vocab_added == len(added) > 0
    assert trainer.cfg.cell == cell and trainer.cfg.init_from == str((tmp_path / "a" / "r" / "best.npz").resolve())
    layout = trainer.stack.layout
    now = layout.views(trainer.params)
    fresh = layout.views(init_params(trainer.spec, np.random.Generator(np.random.PCG64(99))))
    for name, before in Layout(base.spec).views(saved["params"]).items():
        if name in VOCAB_AXES:  # old rows bit-identical, new rows a fresh model's of the run's seed
            axis = VOCAB_AXES[name]
            np.testing.assert_array_equal(np.take(now[name], range(V), axis), before, err_msg=name)
            np.testing.assert_array_equal(np.take(now[name], range(V, trainer.vocab.size), axis),
                                          np.take(fresh[name], range(V, trainer.vocab.size), axis), err_msg=name)
        else:
            np.testing.assert_array_equal(now[name], before, err_msg=name)
    assert trainer.opt.t == 0 and all(not m.any() for m in trainer.opt.state_arrays().values())  # a fresh optimizer


def test_a_fine_tuned_model_trains_on_the_new_text(texts, tmp_path):
    old, new = texts
    train_steps(config(old, tmp_path / "a", hidden=32, layers=1, lr=1e-2, schedule="constant"), tmp_path / "a" / "r", 30)
    trainer = fine_tuned(tmp_path / "a" / "r", new, tmp_path / "b", lr=1e-2, schedule="constant", eval_every=10)
    trainer.cfg.max_steps = 40
    trainer.run()
    lines = [json.loads(l) for l in (tmp_path / "b" / "ft" / "metrics.jsonl").read_text().splitlines()]
    val = {l["step"]: l["loss"] for l in lines if l["kind"] == "val"}
    train = [l["loss"] for l in lines if l["kind"] == "train"]
    assert sorted(val) == [0, 10, 20, 30, 40]  # step 0: the trained model on the new text, before any update
    assert val[40] < 0.8 * val[0] and train[-1] < 0.8 * train[0]
    _, meta = load_checkpoint(tmp_path / "b" / "ft" / "latest.npz")
    assert meta["config"]["init_from"].endswith("best.npz") and meta["step"] == 40


def test_a_fine_tuned_run_resumes_with_the_command_that_started_it(texts, tmp_path, monkeypatch, capsys):
    # "--init-from starts a new run from a trained model; leave it out with --resume"
    old, new = texts
    train_steps(config(old, tmp_path / "a"), tmp_path / "a" / "r", 3)
    command = ["train", new, "--init-from", tmp_path / "a" / "r", "--batch", "4", "--k1", "8", "--k2", "8",
               "--max-steps", "2", "--out-dir", tmp_path / "b", "--run", "ft", "-q"]
    code, err = main_exits(monkeypatch, capsys, *command)
    assert code == 0, err
    code, err = main_exits(monkeypatch, capsys, *command, "--resume", tmp_path / "b" / "ft")
    assert code == 2 and "has already reached --max-steps 2" in err, err
    code, err = main_exits(monkeypatch, capsys, *command[:-1], "--max-steps", "3", "--resume", tmp_path / "b" / "ft")
    assert code == 0 and "changed on resume: --max-steps 2 -> 3" in err, err
    # the model it started from, gone since: the run needs it no more ("no checkpoint at ...")
    shutil.rmtree(tmp_path / "a")
    code, err = main_exits(monkeypatch, capsys, *command[:-1], "--max-steps", "4", "--resume", tmp_path / "b" / "ft")
    assert code == 0 and "changed on resume: --max-steps 3 -> 4" in err, err
    for init, said in ((tmp_path / "a" / "other", f"no checkpoint at {tmp_path / 'a' / 'other'}"),
                       ("/", "/ holds no checkpoint"), (tmp_path / "loop", "loop")):  # (the last: a loop of links)
        if init == tmp_path / "loop":
            init.symlink_to(init)
        other = [*command[:2], "--init-from", init, *command[4:-1], "--max-steps", "5"]
        code, err = main_exits(monkeypatch, capsys, *other, "--resume", tmp_path / "b" / "ft")
        assert code == 1 and said in err and "internal error" not in err, err
    # a run that fine-tuned no model: it has none ("it has ''" before)
    train_steps(config(old, tmp_path / "c"), tmp_path / "c" / "r", 2)
    code, err = main_exits(monkeypatch, capsys, "train", "--resume", tmp_path / "c" / "r", "--init-from",
                           tmp_path / "b" / "ft", "--max-steps", "5")
    assert code == 2 and f"leave out --init-from {tmp_path / 'b' / 'ft'} (it has none) (these may" in err, err


def test_a_stop_during_a_fine_tunes_first_validation_ends_it_before_any_update(texts, tmp_path):
    # the validation of the trained model on the new text comes before any update: a Ctrl-C then
    # went on to train one more update (12 s in a user's run) before it stopped
    old, new = texts
    train_steps(config(old, tmp_path / "a"), tmp_path / "a" / "r", 3)
    stopped = fine_tuned(tmp_path / "a" / "r", new, tmp_path / "b", max_steps=4)
    with pytest.raises(Interrupted):
        stopped.run(lambda t, record: t.step == 0 and t._on_stop_signal(2, None))
    assert stopped.step == 0 and load_checkpoint(tmp_path / "b" / "ft" / "latest.npz")[1]["step"] == 0
    resumed = Trainer.resume(tmp_path / "b" / "ft", say=lambda *_: None)
    resumed.run()
    straight = fine_tuned(tmp_path / "a" / "r", new, tmp_path / "c", max_steps=4)
    straight.run()
    assert resumed.step == 4
    np.testing.assert_array_equal(resumed.params, straight.params)


def test_a_fine_tuned_run_resumes_after_the_folder_it_started_from_gains_a_best_npz(texts, tmp_path, monkeypatch,
                                                                                   capsys):
    # fine-tuned from a run that had not yet validated (only latest.npz), it was refused its own
    # command once that run had: --init-from was read as the folder's best.npz now
    old, new = texts
    train_steps(config(old, tmp_path / "a"), tmp_path / "a" / "r", 3)
    base = tmp_path / "base"
    base.mkdir()
    shutil.copy(tmp_path / "a" / "r" / "latest.npz", base / "latest.npz")
    command = ["train", new, "--init-from", base, "--batch", "4", "--k1", "8", "--k2", "8",
               "--max-steps", "2", "--out-dir", tmp_path / "b", "--run", "ft", "-q"]
    code, err = main_exits(monkeypatch, capsys, *command)
    assert code == 0, err
    _, meta = load_checkpoint(tmp_path / "b" / "ft" / "latest.npz")
    assert meta["config"]["init_from"] == str((base / "latest.npz").resolve())
    shutil.copy(base / "latest.npz", base / "best.npz")  # that run validated since
    code, err = main_exits(monkeypatch, capsys, *command[:-1], "--max-steps", "3", "--resume", tmp_path / "b" / "ft")
    assert code == 0 and "changed on resume: --max-steps 2 -> 3" in err, err
    code, err = main_exits(monkeypatch, capsys, *command[:2], "--init-from", tmp_path / "a" / "r", *command[4:-1],
                           "--max-steps", "4", "--resume", tmp_path / "b" / "ft")
    assert code == 2 and f"leave out --init-from {tmp_path / 'a' / 'r'}" in err, err  # another folder still is


@pytest.mark.parametrize("option, value", [("--hidden", "16"), ("--layers", "1"), ("--cell", "gru")])
def test_options_that_ask_for_another_model_are_refused_in_one_line(texts, tmp_path, monkeypatch, capsys, option,
                                                                     value):
    old, new = texts
    train_steps(config(old, tmp_path / "a"), tmp_path / "a" / "r", 3)  # lstm 2x12
    code, err = main_exits(monkeypatch, capsys, "train", new, "--init-from", tmp_path / "a" / "r", option, value,
                           "--out-dir", tmp_path / "b")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "holds the model lstm 2x12" in lines[0] and f"leave out {option} {value}" in lines[0]
    assert not (tmp_path / "b").exists()
    code, err = main_exits(monkeypatch, capsys, "train", new, "--init-from", tmp_path / "a" / "r", "--resume",
                           tmp_path / "a" / "r")
    assert code == 2 and f"leave out --init-from {tmp_path / 'a' / 'r'} (it has none)" in err, err  # not fine-tuned


@pytest.mark.parametrize("args, message", [
    # the lstm has no tau: it was refused as "leave out --tau 4 (it has 1:50)"
    (("--tau", "4"), "--tau is an option of --cell leaky; --cell lstm (the --init-from model's) has no use for it"),
    # its ids are characters: fine-tuned on bytes, its rows for é, à... stood for single bytes
    (("--encoding", "bytes"), "reads characters (--encoding utf-8), as a fine-tuned run must too; leave out "
                              "--encoding bytes"),
])
def test_options_the_trained_model_cannot_read_are_refused(texts, tmp_path, monkeypatch, capsys, args, message):
    old, new = texts
    train_steps(config(old, tmp_path / "a"), tmp_path / "a" / "r", 3)  # lstm 2x12, utf-8
    code, err = main_exits(monkeypatch, capsys, "train", new, "--init-from", tmp_path / "a" / "r", *args,
                           "--out-dir", tmp_path / "b")
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "b").exists()


def test_the_start_up_line_says_how_many_characters_were_added(texts, tmp_path):
    old, new = texts
    train_steps(config(old, tmp_path / "a"), tmp_path / "a" / "r", 3)
    r = CliRunner().invoke(app, ["train", str(new), "--init-from", str(tmp_path / "a" / "r"), "--hidden", "12",
                                 "--batch", "4", "--k1", "8", "--k2", "8", "--max-steps", "2", "--out-dir",
                                 str(tmp_path / "b"), "--run", "ft"])  # the same --hidden is no conflict
    assert r.exit_code == 0, r.output
    added = len(set(NEW_TEXT) - set(TEXT))
    vocab = len(set(NEW_TEXT) | set(TEXT))
    line = next(l for l in r.stderr.splitlines() if l.startswith("lstm 2x12 from "))
    assert f"best.npz, vocabulary {vocab} ({added} added)" in line


def test_an_indrnn_keeps_the_bound_its_u_was_trained_within(texts, tmp_path):
    # --u-max 0 means 2^(1/k2) of the run: fine-tuned with another --k2, u was clipped to a new bound
    old, new = texts
    train_steps(config(old, tmp_path / "a", cell="indrnn", k1=8, k2=8), tmp_path / "a" / "r", 3)
    settings = fine_tune_settings(tmp_path / "a" / "r", {})
    assert settings["u_max"] == 2.0 ** (1.0 / 8)
    before = Trainer.resume(tmp_path / "a" / "r", say=lambda *_: None)
    trainer = fine_tuned(tmp_path / "a" / "r", new, tmp_path / "b", k1=16, k2=16, lr=1e-12)
    assert trainer.spec.option("u_max") == 2.0 ** (1.0 / 8)
    trainer.cfg.max_steps = 1
    trainer.run()
    u = lambda t: [p["u"] for p in Layout(t.spec).layer_views(t.params)[0]]  # noqa: E731
    for was, now in zip(u(before), u(trainer)):
        np.testing.assert_allclose(now, was, rtol=0, atol=1e-9)



def test_an_explicit_u_max_of_0_matches_the_model_it_fine_tunes(texts, tmp_path):
    old, new = texts
    train_steps(config(old, tmp_path / "a", cell="indrnn", k1=8, k2=8), tmp_path / "a" / "r", 2)
    assert fine_tune_settings(tmp_path / "a" / "r", {"u_max": 0.0})["u_max"] == 2.0 ** (1.0 / 8)
    train_steps(config(old, tmp_path / "b"), tmp_path / "b" / "r", 2)  # an lstm: its u_max is left as it was
    assert fine_tune_settings(tmp_path / "b" / "r", {})["u_max"] == 0.0
    # a model trained with --u-max 2: 0 was read as 2^(1/k2) and refused, with advice to give 0
    train_steps(config(old, tmp_path / "c", cell="indrnn", k1=8, k2=8, u_max=2.0), tmp_path / "c" / "r", 2)
    assert fine_tune_settings(tmp_path / "c" / "r", {"u_max": 0.0})["u_max"] == 2.0
    with pytest.raises(CharrnnError, match=re.escape("leave out --u-max 1.5 (it has 2.0, which --u-max 0 keeps)")):
        fine_tune_settings(tmp_path / "c" / "r", {"u_max": 1.5})



def test_a_bound_the_python_run_would_resolve_otherwise_is_refused(texts, tmp_path):
    # TrainConfig(u_max=0, k2=16, init_from=...) would keep 2^(1/16), not the model's 2^(1/8): u clipped
    old, new = texts
    train_steps(config(old, tmp_path / "a", cell="indrnn", k1=8, k2=8), tmp_path / "a" / "r", 2)
    cfg = config(new, tmp_path / "b", cell="indrnn", k1=16, k2=16, init_from=str(tmp_path / "a" / "r"))
    with pytest.raises(CharrnnError, match=r"leave out --u-max 1\.04427\d* \(it has 1\.0905077326652577, which "
                                           r"--u-max 0 keeps\)"):
        Trainer(cfg, tmp_path / "b" / "ft", say=lambda *_: None)
    # the value said is one that is taken: it was rounded to 1.09051, itself refused
    cfg = config(new, tmp_path / "b", cell="indrnn", k1=16, k2=16, init_from=str(tmp_path / "a" / "r"),
                 u_max=1.0905077326652577)
    Trainer(cfg, tmp_path / "b" / "ft", say=lambda *_: None)


def test_a_fine_tune_on_ranks_that_do_not_divide_its_batch_may_change_the_batch(texts, tmp_path, monkeypatch):
    # it was told to "resume it with a number that divides it", as if it were a resume: a fine-tune
    # is a new run, whose --batch may change
    old, new = texts
    train_steps(config(old, tmp_path / "base"), tmp_path / "base" / "r", 2)
    from charrnn import distributed

    monkeypatch.setattr(distributed.Solo, "size", 3)  # as if three ranks shared the batch of 4
    with pytest.raises(CharrnnError, match=r"--batch 4 \(the total over all processes\) cannot be split over 3 "
                                           r"processes; launch a number that divides it \(1, 2, 4\) or give a --batch"):
        fine_tuned(tmp_path / "base" / "r", new, tmp_path)


def test_a_fine_tune_s_text_that_is_no_utf8_is_not_advised_to_be_read_as_bytes(texts, tmp_path):
    # "or --encoding bytes", which a model of characters then refused
    old, _ = texts
    train_steps(config(old, tmp_path / "base"), tmp_path / "base" / "r", 2)
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"caf\xe9 " * 50)
    with pytest.raises(CharrnnError) as e:
        fine_tuned(tmp_path / "base" / "r", latin, tmp_path)
    assert str(e.value).endswith("re-save it as UTF-8, or pass --encoding latin-1 (any byte file)"), str(e.value)


def test_a_latin1_model_reads_its_new_text_as_utf8_unless_told(texts, tmp_path):
    # the model's --encoding latin-1 was inherited: a UTF-8 text read so, "Ã©" for "é", exit 0
    old, _ = texts
    train_steps(config(old, tmp_path / "base", encoding="latin-1"), tmp_path / "base" / "r", 2)
    greek = tmp_path / "greek.txt"
    greek.write_text("αβγ δέλτα café\n" * 40, encoding="utf-8")
    trainer = fine_tuned(tmp_path / "base" / "r", greek, tmp_path)
    assert trainer.cfg.encoding == "utf-8" and {"α", "é"} <= set(trainer.vocab.chars) and "Ã" not in trainer.vocab.chars
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"caf\xe9 " * 50)
    with pytest.raises(CharrnnError, match="pass --encoding latin-1"):  # said, not guessed
        fine_tuned(tmp_path / "base" / "r", latin, tmp_path / "b")
    told = fine_tuned(tmp_path / "base" / "r", latin, tmp_path / "c", given={"encoding": "latin-1"})
    assert told.cfg.encoding == "latin-1" and "é" in told.vocab.chars
    # a bytes model's ids are bytes: its new text is read as bytes
    train_steps(config(old, tmp_path / "bytes", encoding="bytes"), tmp_path / "bytes" / "r", 2)
    assert fine_tune_settings(tmp_path / "bytes" / "r", {})["encoding"] == "bytes"
