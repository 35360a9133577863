"""`charrnn eval`: a checkpoint's loss on a text file, reproducing the training run's own
validation figure on its validation text."""
import json
import math
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from charrnn.cli import app
from charrnn.config import TrainConfig
from charrnn.corpus import read_text, split
from charrnn.errors import CharrnnError
from charrnn.evaluate import evaluate
from charrnn.sampling import load_model
from charrnn.train import Trainer

ROOT = Path(__file__).resolve().parent.parent
LINE = re.compile(r"^(?P<name>.+): (?P<count>[\d,]+) characters, (?P<nats>[\d.]+) nats/char, "
                  r"(?P<bits>[\d.]+) bits/char, perplexity (?P<ppl>[\d.]+)(?P<note>.*)$")
runner = CliRunner()


def write_corpus(path, size=20_000, seed=0):
    rng = random.Random(seed)
    words = ("the cat sat on a warm mat while seven quick foxes jumped over lazy dogs and "
             "brown owls sang softly to the pale moon by the river bank").split()
    lines = []
    while sum(len(s) + 1 for s in lines) < size:
        words_in_line = [rng.choice(words) for _ in range(rng.randint(3, 11))]
        lines.append(" ".join(words_in_line).capitalize() + rng.choice(".!?,;"))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny training run: its folder, its config, and its last validation loss."""
    tmp = tmp_path_factory.mktemp("eval")
    corpus = write_corpus(tmp / "corpus.txt")
    cfg = TrainConfig(corpus=str(corpus), hidden=16, layers=2, max_steps=5, time_limit=0, eval_every=5, k1=20,
                      k2=20, batch=4, run="tiny", out_dir=str(tmp)).validate()
    trainer = Trainer(cfg, tmp / "tiny", say=lambda *a: None)
    trainer.run()
    records = [json.loads(line) for line in (tmp / "tiny" / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if r["kind"] == "val"][-1]["loss"]
    # the validation text: the middle contiguous part of the same ids
    text = read_text(corpus)
    vocab = trainer.vocab
    _, val_ids, _ = split(vocab.encode(text), (1 - cfg.val_fraction - cfg.test_fraction, cfg.val_fraction,
                                               cfg.test_fraction))
    val_file = tmp / "val.txt"
    val_file.write_text(vocab.decode(val_ids), encoding="utf-8")
    return {"dir": tmp / "tiny", "val": val, "val_file": val_file, "val_ids": val_ids, "cfg": cfg}


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def parse(result):
    assert result.exit_code == 0, result.output
    m = LINE.match(result.stdout.strip())
    assert m, result.stdout
    return m


def test_eval_reproduces_the_runs_validation_figure(run):
    # the library call the command makes, to full precision
    model = load_model(run["dir"])
    ids = model.vocab.encode(read_text(run["val_file"]))
    nats, count = evaluate(model.spec, model.params, ids, model.config["batch"], model.config["k1"])
    assert abs(nats - run["val"]) <= 1e-6
    # and the command itself
    m = parse(invoke("eval", run["dir"], run["val_file"]))
    assert m["name"] == str(run["val_file"])
    assert int(m["count"].replace(",", "")) == count
    assert abs(float(m["nats"]) - run["val"]) <= 5e-5
    assert abs(float(m["bits"]) - run["val"] / math.log(2)) <= 5e-5
    assert abs(float(m["ppl"]) - math.exp(run["val"])) <= 5e-3
    # best.npz is the one the folder means; naming it gives the same line
    assert invoke("eval", run["dir"] / "best.npz", run["val_file"]).stdout == invoke("eval", run["dir"], run["val_file"]).stdout


def test_batch_and_window_options(run):
    n = len(run["val_ids"])
    m = parse(invoke("eval", run["dir"], run["val_file"], "--batch", 1, "--window", 7))
    assert int(m["count"].replace(",", "")) == n - 1  # one stream: every character but the first is scored
    model = load_model(run["dir"])
    nats, _ = evaluate(model.spec, model.params, run["val_ids"], 1, 7)
    assert float(m["nats"]) == pytest.approx(nats, abs=5e-5)
    # one stream read in windows of any length carries the state: the same figure
    m2 = parse(invoke("eval", run["dir"], run["val_file"], "--batch", 1, "--window", 50))
    assert abs(float(m2["nats"]) - float(m["nats"])) <= 1e-4
    # a different batch scores different predictions
    m3 = parse(invoke("eval", run["dir"], run["val_file"], "--batch", 3))
    assert int(m3["count"].replace(",", "")) == 3 * ((n - 1) // 3)


def test_unknown_characters(run, tmp_path):
    text = run["val_file"].read_text(encoding="utf-8")
    dirty = tmp_path / "dirty.txt"
    dirty.write_text("€" + text[:100] + "ZZ" + text[100:] + "€", encoding="utf-8")
    r = invoke("eval", run["dir"], dirty)
    assert isinstance(r.exception, CharrnnError)
    message = str(r.exception)
    assert "'€'" in message and "'Z'" in message and "--skip-unknown" in message
    m = parse(invoke("eval", run["dir"], dirty, "--skip-unknown"))
    assert "4 unknown characters skipped" in m["note"]
    # dropping them leaves exactly the validation text
    clean = parse(invoke("eval", run["dir"], run["val_file"]))
    assert (m["count"], m["nats"]) == (clean["count"], clean["nats"])


def test_a_text_of_unknown_characters_only_is_said_so_and_one_character_counted_as_one(run, tmp_path):
    unknown = tmp_path / "unk.txt"
    unknown.write_text("ZZZ€€€Z", encoding="utf-8")  # it said "the text to evaluate has 0 character(s)"
    r = invoke("eval", run["dir"], unknown, "--skip-unknown")
    assert str(r.exception) == (f"7 of the 7 characters of {unknown} are unknown to the model; the 0 left are too few "
                                "to score")
    two = tmp_path / "two.txt"
    two.write_text(run["val_file"].read_text(encoding="utf-8")[:2], encoding="utf-8")
    r = invoke("eval", run["dir"], two)
    assert r.exit_code == 0 and r.stdout.startswith(f"{two}: 1 character, "), r.stdout  # "1 characters"
    # a line break or an ESC in the name: one line, escaped, not a second one that steers the terminal
    odd = tmp_path / "t\x1b[2J\nx.txt"
    odd.write_bytes(two.read_bytes())
    r = invoke("eval", run["dir"], odd)
    assert r.exit_code == 0 and r.stdout.startswith(f"{tmp_path}/t\\x1b[2J\\nx.txt: 1 character, "), r.stdout
    assert len(r.stdout.splitlines()) == 1
    # one character: "the text to evaluate has 1 character; it needs at least 2", not naming the file
    one = tmp_path / "one.txt"
    one.write_text(two.read_text(encoding="utf-8")[:1], encoding="utf-8")
    r = invoke("eval", run["dir"], one)
    assert r.exit_code == 1 and str(r.exception) == (f"{one} has 1 character; scoring needs 2 (one read, one predicted): "
                                                     "--per-line scores a line from a line break")
    assert invoke("eval", run["dir"], one, "--per-line").exit_code == 0  # as the advice says
    one.write_text("\n", encoding="utf-8")  # a line break alone: no line to score, and no such advice
    r = invoke("eval", run["dir"], one)
    assert r.exit_code == 1 and str(r.exception) == f"{one} has 1 character; scoring needs 2 (one read, one predicted)"


@pytest.mark.parametrize("per_line", [(), ("--per-line",)])
def test_a_short_text_needs_no_memory_for_a_window_longer_than_it(run, tmp_path, monkeypatch, per_line):
    # --batch 300 --window 100000 on 12 characters: "evaluating needs about 46.6 GiB", refused
    short = tmp_path / "short.txt"
    short.write_text(run["val_file"].read_text(encoding="utf-8")[:12], encoding="utf-8")
    import charrnn.memory

    monkeypatch.setattr(charrnn.memory, "available_bytes", lambda **_: 64 << 20)  # 64 MiB is plenty
    r = invoke("eval", run["dir"], short, "--batch", 300, "--window", 100_000, *per_line)
    assert r.exit_code == 0, r.output
    if not per_line:  # and the figure is the one of a window as long as the text
        assert parse(r)["nats"] == parse(invoke("eval", run["dir"], short, "--batch", 300, "--window", 11))["nats"]


def test_usage_errors_and_exit_codes(run, tmp_path):
    assert invoke("eval", run["dir"], run["val_file"], "--batch", 0).exit_code == 2
    assert invoke("eval", run["dir"], run["val_file"], "--window", -1).exit_code == 2
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), COLUMNS="300")
    r = subprocess.run([sys.executable, "-m", "charrnn", "eval", str(run["dir"]), str(tmp_path / "missing.txt")],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert r.returncode == 1 and "missing.txt does not exist" in r.stderr
    # a link whose target is missing: `ls` shows it, so "does not exist" was not what it is
    (tmp_path / "dangling.txt").symlink_to("nowhere.txt")
    r = invoke("eval", run["dir"], tmp_path / "dangling.txt")
    assert r.exit_code == 1 and str(r.exception) == (f"{tmp_path}/dangling.txt is a link to {tmp_path}/nowhere.txt, "
                                                     "which does not exist; check the link")
    (tmp_path / "chained.txt").symlink_to("dangling.txt")  # a link to that link: named by where it ends
    r = invoke("eval", run["dir"], tmp_path / "chained.txt")
    assert str(r.exception).startswith(f"{tmp_path}/chained.txt is a link to {tmp_path}/nowhere.txt, which does not")


def test_per_line_checks_for_unknown_characters_without_copies_of_the_file(run, tmp_path, monkeypatch):
    # the check made a mask of the file and copies of its ids: 3 bytes a character above the
    # ids eval --per-line holds (1.35 GB at the peak for 400M characters, where 0.65 GB are held)
    import tracemalloc

    import charrnn
    from charrnn import cli, corpus
    from charrnn.corpus import UnknownCharacters

    path = write_corpus(tmp_path / "big.txt", size=400_000)
    model = charrnn.load(run["dir"])
    monkeypatch.setattr(corpus, "CHUNK_BYTES", 1 << 13)  # pieces well below the file's 400 KB
    read_ids = corpus.read_ids

    def read_then_measure(*args, **kw):
        read = read_ids(*args, **kw)
        tracemalloc.reset_peak()  # what reading costs is read_ids' own
        return read

    monkeypatch.setattr(corpus, "read_ids", read_then_measure)
    tracemalloc.start()
    try:
        pieces = cli._line_pieces(model, path, None, False)  # holding the ids and the line breaks
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert pieces and peak - held < 100_000  # (the mask and the copies took 0.8 MB above it)
    text = path.read_text(encoding="utf-8")
    path.write_text(text[:200_000] + "Z\r\n" + text[200_000:], encoding="utf-8")  # a CR LF is no character read
    with pytest.raises(UnknownCharacters, match="has 1 character the model does not know .1 occurrence.: 'Z'"):
        cli._line_pieces(model, path, None, False)


def test_a_short_texts_tail_left_out_is_noted_and_a_long_ones_is_not(run, tmp_path):
    """The streams leave out a tail shorter than the batch (4 here): of a 10-character text, 1
    of 9 predictions; eval said nothing, and two texts differing only there scored the same."""
    short = tmp_path / "short.txt"
    short.write_text("The cat sa", encoding="utf-8")  # 10 characters: 4 streams of 2, 1 left out
    result = invoke("eval", run["dir"], short)
    assert parse(result).group(2) == "8", result.stdout
    assert "note: the last 1 of its 10 characters were not scored (4 streams of 2 predictions each); --batch 1 " \
           "scores every one" in result.stderr
    result = invoke("eval", run["dir"], short, "--batch", "1")
    assert parse(result).group(2) == "9" and "note" not in result.stderr
    result = invoke("eval", run["dir"], run["val_file"])  # 2,000 characters: at most 3 left out
    assert "note" not in result.stderr, result.stderr


def test_a_dash_is_a_files_name_and_the_error_says_where_standard_input_is(run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("eval", run["dir"], "-")
    assert result.exit_code == 1 and isinstance(result.exception, CharrnnError)
    assert str(result.exception) == "- does not exist: a file named -; for standard input give /dev/stdin"
