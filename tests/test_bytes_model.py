"""A model of `--encoding bytes` (its characters are the bytes 0-255) trained on UTF-8 text: what
a person types is read as its UTF-8 bytes, and what the model writes goes out as bytes, so that
the text reads as UTF-8 rather than as one Latin-1 character per byte ('cafÃ©')."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import charrnn
from charrnn.corpus import model_text, shown_text
from charrnn.config import TrainConfig
from charrnn.errors import UsageError
from test_train import config, train_steps

ROOT = Path(__file__).resolve().parent.parent
TEXT = "".join(f"le café {i % 7} est chaud, naïve {i % 5} 天気\n" for i in range(40))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bytes")
    (tmp / "t.txt").write_text(TEXT, encoding="utf-8")
    train_steps(config(tmp / "t.txt", tmp, encoding="bytes", hidden=16, layers=1, eval_every=10), tmp / "r", 10)
    return tmp


def charrnn_cli(*args):
    return subprocess.run([sys.executable, "-m", "charrnn", *map(str, args)], capture_output=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))


def test_what_a_person_types_is_read_as_its_utf8_bytes():
    assert model_text("café", "bytes", "--prime") == "caf\u00c3\u00a9"
    assert model_text("café", "utf-8", "--prime") == "café"
    # a byte typed as \xfe (cli._unescape), or typed as no UTF-8: that byte, or to a text model U+00FE
    assert model_text("a\udcfe", "bytes", "--stop-at") == "a\u00fe" == model_text("a\udcfe", "utf-8", "--stop-at")
    with pytest.raises(UsageError, match="--stop-at holds the lone surrogate U\\+D800"):
        model_text("\ud800", "bytes", "--stop-at")
    assert shown_text("caf\u00c3\u00a9 \u00e5\u00a4", "bytes") == "café \ufffd"  # a torn character: U+FFFD
    assert shown_text("caf\u00c3\u00a9 \u00e5", "bytes", "surrogateescape") == "café \udce5"  # for a file
    assert shown_text("cafÃ©", "latin-1") == "cafÃ©"


@pytest.mark.parametrize("encoding, typed, stored", [("bytes", r"\xfe", "\u00fe"), ("bytes", "§", "\u00c2\u00a7"),
                                                     ("utf-8", r"\xfe", "\u00fe"), ("utf-8", "§", "§")])
def test_a_separator_and_a_stop_text_typed_alike_are_read_alike(encoding, typed, stored, tmp_path):
    # --stop-at read '\xfe' and '§' as UTF-8 bytes where --doc-sep read them as one byte each: a
    # bytes model could not stop where a document ends
    for name in ("a.txt", "b.txt"):
        (tmp_path / name).write_text(TEXT, encoding="utf-8")
    r = charrnn_cli("train", tmp_path / "a.txt", tmp_path / "b.txt", "--encoding", encoding, "--doc-sep", typed,
                    "--hidden", 8, "--max-steps", 3, "--time-limit", 0, "--out-dir", tmp_path, "--run", "r", "-q")
    assert r.returncode == 0, r.stderr
    assert charrnn.load(tmp_path / "r").config["doc_sep"] == stored
    r = charrnn_cli("sample", tmp_path / "r", "--length", 30, "--stop-at", typed)
    assert r.returncode == 0, r.stderr


def test_sample_writes_the_models_bytes_and_reads_its_prime_as_utf8(run):
    # the prime 'café' was refused (no character U+00E9 among bytes), and samples printed 'cafÃ©'
    r = charrnn_cli("sample", run / "r", "--length", 80, "--seed", 4, "--prime", "le café", "--stop-at", "天")
    assert r.returncode == 0, r.stderr
    model = charrnn.load(run / "r")
    want = model.sample(80, seed=4, prime=model_text("le café", "bytes", ""), stop_at=model_text("天", "bytes", ""))
    assert r.stdout == want.encode("latin-1") + (b"" if want.endswith("\n") else b"\n")
    assert r.stdout.startswith("le café".encode("utf-8"))


def test_a_character_whose_bytes_the_model_lacks_is_named_as_typed(run):
    # it was named as its bytes read as Latin-1: "'â', '\x82', '¬'" for '€'
    r = charrnn_cli("sample", run / "r", "--length", 10, "--prime", "le €x")
    assert r.returncode == 2 and r.stderr.decode() == (
        "error: --prime has 2 characters whose bytes the model never saw: '€' (e2 82 ac), 'x' (78); use only "
        "characters that occur in the training text\n")
    r = charrnn_cli("sample", run / "r", "--length", 10, "--stop-at", r"\xfe")
    assert r.returncode == 2 and "--stop-at has 1 character whose bytes the model never saw: '\\xfe' (fe)" in \
        r.stderr.decode()


def test_eval_per_line_writes_a_bytes_models_lines_as_the_file_holds_them(run):
    lines = run / "lines.txt"
    lines.write_text("le café est chaud\nnaïve 天気\n", encoding="utf-8")
    # read as bytes (its own), or as latin-1 (a character a byte, the same): they printed cafÃ©
    for read_as in ((), ("--encoding", "latin-1")):
        r = charrnn_cli("eval", run / "r", lines, "--per-line", *read_as)
        assert r.returncode == 0, r.stderr
        assert [row.split(b"\t", 1)[1] for row in r.stdout.splitlines()] == [l.encode() for l in
                                                                            ("le café est chaud", "naïve 天気")]


def test_eval_per_line_counts_a_bytes_models_unknown_bytes_as_bytes(run):
    # its notes called them characters
    lines = run / "odd.txt"
    lines.write_bytes(b"le caf\xfe\n\xfe\xfe\n")  # 0xFE, no byte of UTF-8 text: one line all unknown
    r = charrnn_cli("eval", run / "r", lines, "--per-line", "--skip-unknown")
    assert r.returncode == 0, r.stderr
    assert r.stderr.decode() == ("note: left out 1 line made only of bytes the model does not know\n"
                                 "note: skipped 1 unknown byte inside the lines scored\n")
    lines.write_bytes(b"\xfe\n")
    r = charrnn_cli("eval", run / "r", lines, "--per-line", "--skip-unknown")
    assert r.returncode == 1 and f"every line of {lines} is made only of bytes the model does not know" in \
        r.stderr.decode()
    lines.write_bytes(b"\n\n")
    r = charrnn_cli("eval", run / "r", lines, "--per-line")
    assert r.returncode == 1 and f"{lines} has no line with a byte in it" in r.stderr.decode()


def test_samples_while_training_read_as_utf8(run, tmp_path):
    trainer = train_steps(config(run / "t.txt", tmp_path, encoding="bytes", hidden=16, layers=1, sample_every=2,
                                 sample_length=60), tmp_path / "s", 2)
    written = (tmp_path / "s" / "samples.txt").read_bytes()
    assert trainer.sample().encode("latin-1") in written  # every byte, as `charrnn sample` writes them


def test_a_separator_of_characters_above_a_byte_is_refused_where_nothing_reads_it_as_utf8():
    # the command line reads --doc-sep as its UTF-8 bytes for a bytes run (above); a config made
    # in Python takes the characters as they are, and one above U+00FF is no byte
    with pytest.raises(UsageError, match=re.escape("--doc-sep '\\u2028' is not made of bytes")):
        TrainConfig(encoding="bytes", doc_sep="\u2028").validate()


def test_bytes_a_model_lacks_in_a_file_are_named_as_bytes(run):
    # they were named as the bytes read as Latin-1: "'â', '\x82', '¬'" for '€'
    odd = run / "odd.txt"
    odd.write_text("le café €x\n" * 3, encoding="utf-8")
    named = ("4 byte values the model does not know (12 occurrences): e2, 82, ac, 78 ('x'); use only text whose "
             "bytes occur in the training text")
    for args in (("eval", run / "r", odd), ("eval", run / "r", odd, "--per-line"), ("inspect", run / "r", odd)):
        r = charrnn_cli(*args)
        assert r.returncode == 1 and named in r.stderr.decode(), (args, r.stderr)
    model = charrnn.load(run / "r")
    with pytest.raises(charrnn.UnknownCharacters, match=re.escape(named)):
        model.encode_file(odd)
    # in Python a bytes model's text is a character a byte; one above U+00FF is no byte. Its UTF-8
    # bytes are given as the text where the model knows them: 天's, not €'s (it was told to give
    # them, and then that it knows no e2, 82 nor ac), nor a lone surrogate's (none: the advice raised)
    with pytest.raises(charrnn.UnknownCharacters, match=re.escape(
            "text has 4 byte values and 1 character above U+00FF the model does not know (5 occurrences): "
            "e2, 82, ac, 78 ('x'), '€'; this model reads bytes, a character each: use only text whose bytes occur "
            "in the training text")):
        model.score(model_text("€x ", "bytes", "") + "€")
    for typed, named in (("€", "'€'"), ("\udcff", "'\\udcff'")):
        with pytest.raises(charrnn.UnknownCharacters, match=re.escape(  # no "0 byte values and"
                f"text has 1 character above U+00FF the model does not know (1 occurrence): {named}; this model reads "
                "bytes, a character each: use only text whose bytes occur in the training text")):
            model.score("le " + typed)
    with pytest.raises(charrnn.UnknownCharacters, match=re.escape(
            "text has 1 character above U+00FF the model does not know (1 occurrence): '天'; this model reads bytes, "
            "a character each: give text.encode('utf-8').decode('latin-1')")):
        model.score("le 天")
    assert model.score("le 天".encode("utf-8").decode("latin-1"))  # as the advice says
    # nor where the text's other characters would become bytes it does not know: the byte e5 it
    # knows, typed beside 天, would be c3 a5 (a5 unknown)
    with pytest.raises(charrnn.UnknownCharacters, match=re.escape(
            "1 character above U+00FF the model does not know (1 occurrence): '天'; this model reads bytes, a "
            "character each: use only text whose bytes occur in the training text")):
        model.score("le \xe5天")
    with pytest.raises(charrnn.CharrnnError, match=re.escape(
            "prime= has 1 byte value the model does not know (1 occurrence): 7e ('~'); use only text whose")):
        model.sample(5, prime="le ~")
    # é typed as a character: the model knows its UTF-8 bytes c3 a9, not the byte e9 (it said
    # only "use only text whose bytes occur in the training text", which é's do)
    with pytest.raises(charrnn.UnknownCharacters, match=re.escape(
            "prime= has 1 byte value the model does not know (1 occurrence): e9; this model reads bytes, a character "
            "each: for UTF-8 text give text.encode('utf-8').decode('latin-1'), or use only text whose bytes occur")):
        model.sample(5, prime="café")
    assert model.sample(5, prime="café".encode("utf-8").decode("latin-1"), seed=1)  # as the hint says
    # no such hint where following it cannot help: ü's UTF-8 bytes (c3 bc) are not all the model's,
    # and text already given as bytes would be encoded twice
    for typed, byte in (("ü", "fc"), ("ü".encode("utf-8").decode("latin-1"), "bc")):
        with pytest.raises(charrnn.UnknownCharacters, match=re.escape(
                f"the model does not know (1 occurrence): {byte}; use only text whose bytes occur")):
            model.encode(typed)


def test_inspect_draws_the_characters_a_bytes_models_bytes_make(run):
    from charrnn import inspection as ins

    # it drew one Latin-1 character a byte: 'cafÃ©', '天' as 'å¤©'
    assert ins.steps_shown(model_text("é天a", "bytes", "") + "\u00ff", "bytes") == ["", "é", "", "", "天", "a", "\ufffd"]
    assert ins.steps_shown("é天", "utf-8") == ["é", "天"]
    # a byte that makes no character is U+FFFD at its own step, a character cut off at the end too
    assert ins.steps_shown("\u00c3\n", "bytes") == ["\ufffd", "\n"]
    assert ins.steps_shown("\u00e2\u0082A", "bytes") == ["\ufffd", "\ufffd", "A"]
    assert ins.steps_shown("x\u00e5\u00a4", "bytes") == ["x", "\ufffd", "\ufffd"]
    # after a byte inside a character every property stays; a word starts where its first letter ends
    p = ins.text_properties(["", "é", "t", "", "é", " "])
    assert p["word start"].tolist() == [0, 1, 0, 0, 0, 0] and p["position in line"].tolist() == [0, 1, 2, 2, 3, 4]
    r = charrnn_cli("inspect", run / "r", run / "t.txt", "--chars", 40, "--html", run / "page.html")
    assert r.returncode == 0, r.stderr
    shown = r.stdout.decode()
    assert "read 40 bytes of" in shown and "le café 0 est chaud, naïve 0 天" in shown and "Ã" not in shown
    page = (run / "page.html").read_text(encoding="utf-8")
    assert "<span>f</span><span></span><span>é</span><span> </span>" in page and "Ã" not in page
    assert '"\\\\xc3"' in page and '"step":"byte"' in page  # guesses name a byte above ASCII as \xc3
    assert "the share of bytes at which the gate is open" in page and "next bytes." in page
    r = charrnn_cli("inspect", run / "r", run / "t.txt", "--chars", 33)  # 天 cut after two of its bytes
    assert r.returncode == 0 and "naïve 0 \ufffd\ufffd\n" in r.stdout.decode(), r.stderr


def test_a_text_is_read_as_the_model_reads_it(run, tmp_path):
    # a bytes model given --encoding utf-8 read é as the byte e9; a text model given bytes read é as 'Ã', '©'
    train_steps(config(run / "t.txt", tmp_path, hidden=8, layers=1), tmp_path / "chars", 2)
    for model, encoding, reads in (("r", "utf-8", "characters, but this model reads bytes (--encoding bytes): "
                                                  "leave it out"),
                                   (tmp_path / "chars", "bytes", "bytes, but this model reads characters: leave it "
                                                                 "out, or give --encoding utf-8 or --encoding latin-1")):
        for command in (("eval",), ("eval", "--per-line"), ("inspect",)):
            r = charrnn_cli(command[0], run / model, run / "t.txt", *command[1:], "--encoding", encoding)
            assert r.returncode == 2 and r.stderr.decode() == f"error: --encoding {encoding} reads {reads}\n", \
                (command, r.stderr)
    with pytest.raises(charrnn.CharrnnError, match=re.escape("encoding='utf-8' reads characters, but this model "
                                                             "reads bytes (encoding='bytes'): leave it out")):
        charrnn.load(run / "r").encode_file(run / "t.txt", encoding="utf-8")
    # latin-1 reads a byte as one character, as bytes does: what a bytes model reads
    odd = tmp_path / "odd.txt"
    odd.write_text("le café €\n", encoding="utf-8")
    r = charrnn_cli("eval", run / "r", odd, "--encoding", "latin-1")
    assert r.returncode == 1 and "3 byte values the model does not know (3 occurrences): e2, 82, ac" in \
        r.stderr.decode()
    r = charrnn_cli("eval", run / "r", odd, "--encoding", "latin-1", "--skip-unknown")
    assert r.returncode == 0 and "8 bytes, " in r.stdout.decode() and "3 unknown bytes skipped" in r.stdout.decode()


def test_gradflow_reads_a_bytes_models_text_as_bytes(run):
    # it read the text as UTF-8 and left out every é and 天 as unknown, although the model knows their bytes
    r = charrnn_cli("gradflow", run / "r", "--corpus", run / "t.txt", "--max-k", 3, "--windows", 1, "--batch", 2,
                    "--json")
    assert r.returncode == 0, r.stderr
    assert [m["unknown_chars"] for m in json.loads(r.stdout)["models"]] == [0] and b"note:" not in r.stderr
    r = charrnn_cli("eval", run / "r", run / "t.txt")
    assert r.returncode == 0 and re.search(rb" bytes, [0-9.]+ nats/byte, [0-9.]+ bits/byte, ", r.stdout), r.stdout
