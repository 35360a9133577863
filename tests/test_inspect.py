"""`charrnn inspect`: the activations it shows are the stack's own, a planted quote unit is
found, and the page is valid, self-contained and renders in a real browser."""
import base64
import html
import json
import os
import re
import shutil
import string
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import reference
from charrnn import cli
from charrnn import inspection as ins
from charrnn.cells import CELLS
from charrnn.checkpoint import save_checkpoint
from charrnn.cli import app
from charrnn.corpus import Vocab
from charrnn.errors import CharrnnError, UsageError
from charrnn.inspection_page import page
from charrnn.model import Layout, ModelSpec, Stack, init_params

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()

# Quoted speech, a bracket, an indented line; text before the first quote
QUOTED = ('They said "the owls sang" and left (at dawn).\n'
          '  Nobody spoke; then "quick, the moon!" she cried, and "hush" came back.\n') * 4
QUOTE_UNIT = 2
GATES = {"rnn": set(), "lstm": {"i", "f", "o"}, "gru": {"r", "z"}, "gru-cho": {"r", "z"}, "peephole": {"i", "f", "o"},
         "leaky": set(), "indrnn": set(), "esn": set()}  # the sigmoid activations of each cell


def planted_lstm(vocab, layers=1, H=4, seed=0):
    """An LSTM whose unit QUOTE_UNIT of layer 0 flips its cell at every double quote, built by
    hand: on a quote its forget gate closes, its input gate opens and its candidate is the
    opposite sign of its own state; elsewhere it keeps its cell. The other units are random."""
    spec = ModelSpec("lstm", vocab.size, H, layers)
    params = init_params(spec, np.random.default_rng(seed), np.float64)
    p = Layout(spec).layer_views(params)[0][0]
    blocks = CELLS["lstm"].blocks
    i, f, g, o = (QUOTE_UNIT + blocks.index(name) * H for name in "ifgo")
    q = int(vocab.encode('"')[0])
    for col in (i, f, g, o):  # the unit hears only quotes and itself
        p["Wx"][:, col] = 0.0
        p["Wh"][:, col] = 0.0
    p["b"][i], p["Wx"][q, i] = -10.0, 20.0  # input gate: open on a quote only
    p["b"][f], p["Wx"][q, f] = 10.0, -20.0  # forget gate: closed on a quote only
    p["b"][o] = 10.0  # output gate: always open
    p["b"][g], p["Wh"][QUOTE_UNIT, g] = 2.0, -10.0  # candidate: minus the unit's own sign (+ at 0)
    return spec, params


def random_model(cell, vocab, layers=2, H=5, seed=1):
    spec = ModelSpec(cell, vocab.size, H, layers)
    params = init_params(spec, np.random.default_rng(seed), np.float64)
    # off the init, and wide enough that gates are sometimes open (> 0.9) and sometimes closed
    params += np.random.default_rng(seed + 1).normal(0.0, 1.5, params.shape)
    Stack(spec, 1, 1, np.float64).constrain(params)  # back into the cell's domain (rates in (0, 1], |u| bound)
    return spec, params


def save(path, spec, params, vocab):
    save_checkpoint(path, {"params": params.astype(np.float32)},
                    {"config": {"cell": spec.cell, "hidden": spec.hidden, "layers": spec.layers},
                     "vocab": vocab.to_json()})
    return path


def invoke(*args):
    return runner.invoke(app, ["inspect", *map(str, args)], env={"COLUMNS": "200"})


# ---------------------------------------------------------------------------------------------
# What is shown is what the stack computes


@pytest.mark.parametrize("cell", list(CELLS))
def test_trace_equals_the_stacks_forward_pass_and_the_reference(cell, monkeypatch):
    monkeypatch.setattr(ins, "WINDOW", 7)  # 40 characters: six windows, the state carried across
    text = QUOTED[:40]
    vocab = Vocab.from_text(text)
    # a draw in which every gate of every layer is open, half-open and closed somewhere (checked
    # below): on 40 characters and 5 units not every draw has that
    spec, params = random_model(cell, vocab, seed=4)
    ids = vocab.encode(text)
    N, H = ids.size, spec.hidden

    # one forward over the whole text
    whole = Stack(spec, 1, N, np.float64)
    whole.ids[:, 0] = ids
    whole.forward(params, 0, N)
    for act in ins.signal_names(cell):
        tr = ins.trace(spec, params, vocab, text, act)
        for l, buf in enumerate(whole.bufs):
            expected = buf["hs"][1:, 0] if act == "h" else whole.cell.activations(buf, H)[act][:, 0]
            np.testing.assert_allclose(tr.values[l], expected, rtol=0, atol=1e-12)
            for gate, frac in tr.gates[l].items():
                a = whole.cell.activations(buf, H)[gate][:, 0]
                counts = [(a > 0.9).sum(0), ((a >= 0.1) & (a <= 0.9)).sum(0), (a < 0.1).sum(0)]
                assert min(c.sum() for c in counts) > 0  # all three happen, so a mix-up shows
                np.testing.assert_allclose(frac * N, counts, rtol=0, atol=1e-9)
    assert set(tr.gates[0]) == GATES[cell]

    # the float64 reference: the top layer's h, and the next-character probabilities
    layers, out = Layout(spec).layer_views(params)
    zeros = [tuple(np.zeros((1, H)) for _ in range(reference.n_states(cell))) for _ in layers]
    _, _, _, _, tops, _ = reference.reference_loss_and_grads(cell, layers, out, ids[:, None], ids[:, None], zeros)
    tr = ins.trace(spec, params, vocab, text, "h")
    np.testing.assert_allclose(tr.values[-1], tops[:, 0], rtol=0, atol=1e-12)
    logits = tops[:, 0] @ out["Wy"] + out["by"]
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    best = np.argsort(-probs, axis=1)[:, : min(5, vocab.size)]
    np.testing.assert_array_equal(tr.guesses, best)
    np.testing.assert_allclose(tr.guess_probs, np.take_along_axis(probs, best, 1), rtol=0, atol=1e-12)
    np.testing.assert_allclose(tr.next_probs, probs[np.arange(N - 1), ids[1:]], rtol=0, atol=1e-12)


def test_page_holds_the_traced_activations_and_guesses():
    vocab = Vocab.from_text(QUOTED)
    spec, params = random_model("gru", vocab, layers=2)
    tr = ins.trace(spec, params, vocab, QUOTED)
    scores = ins.score_units(tr)
    doc = page(tr, scores, ins.find_units(scores), vocab, 1, 3, "quoted.txt")
    blobs = dict(re.findall(r'<script type="text/plain" id="([\w-]+)">([^<]*)</script>', doc))
    meta = json.loads(re.search(r'<script type="application/json" id="meta">([^<]*)</script>', doc)[1])
    N, H = len(QUOTED), spec.hidden
    for l in range(spec.layers):
        q = np.frombuffer(base64.b64decode(blobs[f"act-{l}"]), np.uint8).reshape(H, N)
        lo, hi = meta["range"][l]
        assert (lo, hi) == (-1.0, 1.0)
        shown = lo + q.T * (hi - lo) / 255  # what the page colours by, back on the scale
        assert np.abs(shown - tr.values[l]).max() <= (hi - lo) / 510 + 1e-12
    ids = np.frombuffer(base64.b64decode(blobs["guess-ids"]), "<u4").reshape(N, 5)
    p = np.frombuffer(base64.b64decode(blobs["guess-p"]), "<u2").reshape(N, 5) / 65535
    np.testing.assert_array_equal(ids, tr.guesses)
    assert np.abs(p - tr.guess_probs).max() <= 0.5 / 65535 + 1e-12
    assert meta["start"] == {"layer": 1, "unit": 3}
    assert [vocab.chars[i] for i in np.frombuffer(base64.b64decode(blobs["text-ids"]), "<u4")] == list(QUOTED)
    assert "hover over a character for the model's 5 likeliest next characters." in doc


def test_the_page_names_as_many_guesses_as_it_has_and_every_control_character_apart():
    # a model of 2 characters was said to show its "five likeliest" next characters; and CR, ESC
    # and U+2028 were each named "·" in the hover's guesses
    text = "ab\r\x1b\u2028 \n\t" * 10
    vocab = Vocab.from_text(text)
    spec, params = random_model("rnn", vocab)
    tr = ins.trace(spec, params, vocab, text)
    scores = ins.score_units(tr)
    meta = json.loads(re.search(r'<script type="application/json" id="meta">([^<]*)</script>',
                                page(tr, scores, ins.find_units(scores), vocab, 0, 0, "t.txt"))[1])
    assert sorted(meta["labels"]) == sorted(["a", "b", "U+000D", "U+001B", "U+2028", "space", "newline", "tab"])
    small = Vocab.from_text("ab")
    spec, params = random_model("rnn", small)
    tr = ins.trace(spec, params, small, "abba" * 10)
    scores = ins.score_units(tr)
    doc = page(tr, scores, ins.find_units(scores), small, 0, 0, "ab.txt")
    assert "the model's 2 likeliest next characters." in doc and "five" not in doc


# ---------------------------------------------------------------------------------------------
# Finding units


def test_text_properties_by_hand():
    text = 'a "b c"\n  (x [y]) z'
    p = ins.text_properties(text)
    #                                     a  _  "  b  _  c  "  \n _  _  (  x  _  [  y  ]  )  _  z
    assert p["inside quotes"].tolist() == [0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    assert p["position in line"].tolist() == [1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
    assert p["bracket depth"].tolist() == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 1, 0, 0, 0]
    assert p["indent"].tolist() == [0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2]
    assert p["word start"].tolist() == [1, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 1]
    # a combining mark goes on with its word: NFD's accent, Devanagari's vowel signs and virama
    # (they started a word of their own: 5 starts in two Hindi words)
    for words in ("cafe\u0301s bar", "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e"):
        starts = ins.text_properties(words)["word start"]
        assert [i for i, x in enumerate(starts) if x] == [0, words.index(" ") + 1], words
    # typographic quotes open and close; a stray closing bracket does not go below 0
    assert ins.text_properties("\u201cab\u201d)")["inside quotes"].tolist() == [1, 1, 1, 0, 0]
    assert ins.text_properties(")(")["bracket depth"].tolist() == [0, 1]


def test_correlations_are_pearsons_r():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(50, 4))
    values[:, 3] = 0.25  # a unit that never moves
    prop = rng.normal(size=50) + values[:, 1]
    r = ins.correlations(values, prop)
    for u in range(3):
        assert r[u] == pytest.approx(np.corrcoef(values[:, u], prop)[0, 1], abs=1e-12)
    assert r[3] == 0.0 and abs(r[1]) > 0.5
    assert (ins.correlations(values, np.ones(50)) == 0).all()  # a property that never changes


def test_saturation_ranks_switches_above_quiet_units():
    values = np.array([[0.99, 0.1, -0.5], [-0.98, -0.1, 0.5]])  # a switch, a quiet unit, between
    np.testing.assert_allclose(ins.saturation(values, (-1.0, 1.0)), [0.985, 0.1, 0.5])
    np.testing.assert_allclose(ins.saturation(np.array([[0.0, 0.5], [1.0, 0.6]]), (0.0, 1.0)), [1.0, 0.1])
    scores = ins.Scores([{name: np.zeros(3) for name in ins.PROPERTIES}], {name: False for name in ins.PROPERTIES},
                        [ins.saturation(values, (-1.0, 1.0))])
    found = ins.find_units(scores)
    assert [(f.what, f.unit) for f in found[-2:]] == [("saturates most", 0), ("saturates least", 1)]
    assert all(f.unit is None for f in found[:-2])  # constant properties: nothing tracks them


def test_planted_quote_unit_ranks_first():
    vocab = Vocab.from_text(QUOTED)
    spec, params = planted_lstm(vocab)
    tr = ins.trace(spec, params, vocab, QUOTED)
    scores = ins.score_units(tr)
    r = scores.r[0]["inside quotes"]
    assert np.argmax(np.abs(r)) == QUOTE_UNIT and r[QUOTE_UNIT] > 0.95
    assert np.abs(np.delete(r, QUOTE_UNIT)).max() < 0.9
    quotes = next(f for f in ins.find_units(scores, top=2) if f.what == "inside quotes")
    assert (quotes.layer, quotes.unit) == (0, QUOTE_UNIT)
    assert ins.pick_unit(scores, None, None) == ins.pick_unit(scores, 0, None) == (0, QUOTE_UNIT)
    assert ins.pick_unit(scores, None, 1) == (0, 1)
    # its gates, as built: i open and f closed exactly at the quotes, o always open
    share = QUOTED.count('"') / len(QUOTED)
    np.testing.assert_allclose(tr.gates[0]["i"][:, QUOTE_UNIT], [share, 0.0, 1 - share])
    np.testing.assert_allclose(tr.gates[0]["f"][:, QUOTE_UNIT], [1 - share, 0.0, share])
    np.testing.assert_allclose(tr.gates[0]["o"][:, QUOTE_UNIT], [1.0, 0.0, 0.0])


# ---------------------------------------------------------------------------------------------
# The command


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inspect")
    vocab = Vocab.from_text(QUOTED + string.printable)
    spec, params = planted_lstm(vocab)
    text = tmp / "quoted.txt"
    text.write_text(QUOTED, encoding="utf-8")
    return {"checkpoint": save(tmp / "run" / "best.npz", spec, params, vocab), "text": text, "vocab": vocab,
            "dir": tmp}


def test_cli_finds_and_colours_the_planted_unit(planted):
    r = invoke(planted["checkpoint"], planted["text"])
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0] == f"lstm 1x4, vocabulary {planted['vocab'].size}; read {len(QUOTED)} characters of " \
                       f"{planted['text']} from a zero state"
    assert re.match(rf"layer 0 unit {QUOTE_UNIT} \(h\); r = \+0\.9\d\d with inside quotes", lines[1])
    assert QUOTED.splitlines()[1] in lines  # the text itself, line by line
    row = next(line for line in lines if "inside quotes" in line and "r =" in line and "│" in line)
    assert re.search(rf"│\s+0\s+│\s+{QUOTE_UNIT}\s+│\s+r = \+0\.9\d\d", row)
    for gate in "ifo":
        assert re.search(rf"│\s+0\s+│\s+{gate}\s+│", r.stdout)
    # another unit, asked for
    r = invoke(planted["checkpoint"], planted["text"], "--unit", 1, "--act", "tanh(c)", "--chars", 30)
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[1].startswith("layer 0 unit 1 (tanh(c))")
    assert "read 30 characters" in r.stdout


@pytest.mark.parametrize("columns", ["1", "20"])
def test_a_narrow_terminal_shows_every_cell_of_the_tables(planted, columns):
    # squeezed to the terminal's width, rich left the cells of the tables empty (1 column) or cut
    # them to an ellipsis: "+0.…"
    r = subprocess.run([sys.executable, "-m", "charrnn", "inspect", str(planted["checkpoint"]), str(planted["text"])],
                       capture_output=True, text=True, cwd=ROOT, timeout=120,
                       env=dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS=columns))
    assert r.returncode == 0, r.stderr
    tables = r.stdout[r.stdout.index("units that track the text"):]
    assert "…" not in tables
    assert re.search(rf"│\s+0\s+│\s+{QUOTE_UNIT}\s+│\s+r = \+0\.9\d\d", tables), tables
    for gate in "ifo":
        assert re.search(rf"│\s+0\s+│\s+{gate}\s+│", tables), tables


def test_the_text_read_is_counted_and_named_in_good_english(planted, tmp_path):
    # "read 1 characters"; "the first 5 characters of X has 1 character(s) ..."
    r = invoke(planted["checkpoint"], _write(tmp_path / "one.txt", "a"))
    assert r.exit_code == 0 and r.stdout.splitlines()[0].endswith(f"read 1 character of {tmp_path / 'one.txt'} "
                                                                   "from a zero state"), r.output
    path = _write(tmp_path / "euro.txt", "a \u20ac b")
    r = invoke(planted["checkpoint"], path)
    assert str(r.exception).startswith(f"{path} (its first 5 characters) has 1 character the model does not know")
    # the page said "1 characters of"
    r = invoke(planted["checkpoint"], tmp_path / "one.txt", "--html", tmp_path / "one.html")
    assert r.exit_code == 0, r.output
    assert "; 1 character of " in (tmp_path / "one.html").read_text(encoding="utf-8")


def test_a_file_name_reaches_the_terminal_escaped_and_a_gates_scale_starts_at_0(planted, tmp_path, monkeypatch):
    # an ESC or a line break in the text's name steered the terminal and split the first line;
    # the forget gate's scale read "+0 ... +1"
    path = _write(tmp_path / "t\x1b[2J\nx:smile:.txt", "ab")
    monkeypatch.setattr(cli.out, "_console", None)  # made again: for a terminal that takes colours
    monkeypatch.setenv("FORCE_COLOR", "1")
    r = invoke(planted["checkpoint"], path, "--act", "f")
    assert r.exit_code == 0, r.output
    said = re.sub(r"\x1b\[[0-9;]*m", "", r.stdout)  # rich's colours
    assert "\x1b" not in said
    assert said.splitlines()[0].endswith(f"read 2 characters of {tmp_path}/t\\x1b[2J\\nx:smile:.txt from a zero state")
    assert re.search(r"^0 +\+1$", said, re.M), said
    assert said.splitlines()[1].endswith("; the text on the unit's colour:")


@pytest.mark.parametrize("env, why", [
    ({}, "stdout is no terminal; --html draws them, as FORCE_COLOR=1 does here"),
    ({"FORCE_COLOR": "1", "NO_COLOR": "1"}, "NO_COLOR is set; --html draws them"),  # (NO_COLOR wins)
    ({"FORCE_COLOR": "1", "TERM": "dumb"}, "TERM=dumb takes none; --html draws them"),
    # into a file, on TERM=dumb: FORCE_COLOR=1 was advised, and then gave no colours either
    ({"TERM": "dumb"}, "TERM=dumb takes none; --html draws them")])
def test_text_shown_without_colours_says_why_and_draws_no_blank_scale(planted, monkeypatch, env, why):
    # into a file, or with NO_COLOR, the text was said to be "on the unit's colour", and an empty
    # scale followed
    monkeypatch.setattr(cli.out, "_console", None)
    monkeypatch.delenv("TERM", raising=False)  # (the tests' own may be dumb)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    r = invoke(planted["checkpoint"], planted["text"])
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[1].endswith(f"; the text without its colours ({why}):"), lines[1]
    assert not any(re.fullmatch(r"[-+0-9.]+ +[-+0-9.]+", line) for line in lines), lines


def test_user_text_is_never_markup(planted):
    text = planted["dir"] / "markup.txt"
    text.write_text('[bold red]x[/] and "[link=file:///etc]y[/link]" \\[z]\n', encoding="utf-8")
    r = invoke(planted["checkpoint"], text)
    assert r.exit_code == 0, r.output
    assert '[bold red]x[/] and "[link=file:///etc]y[/link]" \\[z]' in r.stdout.splitlines()


@pytest.mark.parametrize("cell", list(CELLS))
def test_every_cell_stacked_writes_a_page(cell, tmp_path):
    vocab = Vocab.from_text(QUOTED)
    spec, params = random_model(cell, vocab, layers=3, H=6)
    out = tmp_path / "page.html"
    r = invoke(save(tmp_path / "m.npz", spec, params, vocab), _write(tmp_path / "t.txt", QUOTED), "--html", out,
               "--layer", 2)
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[1].startswith("layer 2 unit ")
    assert r.stdout.splitlines()[-1] == f"wrote {out}"
    check_page(out.read_text(encoding="utf-8"), QUOTED)
    assert ('<div id="gate-plots">' in out.read_text(encoding="utf-8")) == bool(GATES[cell])


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("args, message, code", [
    # options the model has no use for are usage errors (exit 2), as any option out of range
    (["--act", "q"], "the lstm cell has no activation 'q'; choose one of h, i, f, g, o, tanh(c)", 2),
    (["--unit", 4], "--unit 4 does not exist; the model's units are numbered 0 to 3", 2),
    (["--layer", 1], "--layer 1 does not exist; the model's layers are numbered 0 to 0", 2),
    (["--html", "/nonexistent-folder/page.html"], "cannot write /nonexistent-folder/page.html", 1),
])
def test_bad_options_exit_with_one_line(planted, args, message, code):
    r = invoke(planted["checkpoint"], planted["text"], *args)
    assert isinstance(r.exception, CharrnnError) and r.exception.exit_code == code
    assert str(r.exception).startswith(message)


@pytest.mark.parametrize("target", ["checkpoint", "text", "new.txt"])
def test_an_html_name_that_is_no_page_is_refused_before_the_work(planted, target, tmp_path):
    # --html wrote the page over whatever the path named: the model inspected, the text read
    path = planted.get(target, tmp_path / target)
    kept = path.read_bytes() if path.exists() else None
    r = invoke(planted["checkpoint"], planted["text"], "--html", path)
    assert isinstance(r.exception, UsageError) and r.stdout == ""
    assert str(r.exception) == f"--html {str(path)!r}: give a file name ending in .html or .htm"
    assert (path.read_bytes() if path.exists() else None) == kept


@pytest.mark.parametrize("how", ["same name", "a link"])
def test_an_html_page_inspected_is_not_replaced_by_its_own_page(planted, tmp_path, how):
    # --html page.html on the text page.html wrote the page over the text, exit 0
    text = _write(tmp_path / "page.html", '<p>"a quote", he said</p>\n')
    out = text
    if how == "a link":
        out = tmp_path / "other.htm"
        out.symlink_to(text)
    r = invoke(planted["checkpoint"], text, "--html", out, "--skip-unknown")
    assert isinstance(r.exception, UsageError) and r.stdout == ""
    assert str(r.exception) == f"--html {out} is the file FILE names, which this command reads; choose another name"
    assert text.read_text(encoding="utf-8") == '<p>"a quote", he said</p>\n'


def test_a_text_whose_name_is_not_utf8_gets_its_page(planted, tmp_path):
    # the page's title could not be encoded: the page was left empty, and the error blamed the
    # locale; in a UTF-8 locale (strict, as PYTHONIOENCODING=utf-8 makes it) so did the printing
    text = tmp_path / os.fsdecode(b"quoted-\xe9.txt")
    text.write_bytes(planted["text"].read_bytes())
    out = tmp_path / "page.htm"
    r = subprocess.run([sys.executable, "-m", "charrnn", "inspect", str(planted["checkpoint"]), str(text), "--html",
                        str(out)], capture_output=True, timeout=300,
                       env=dict(os.environ, PYTHONIOENCODING="utf-8", PYTHONPATH=str(ROOT)))
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    assert f"of {os.fsencode(text).decode('latin-1')} from".encode("latin-1") in r.stdout  # its own bytes
    assert "quoted-\ufffd.txt" in out.read_text(encoding="utf-8")
    check_page(out.read_text(encoding="utf-8"), QUOTED)


def test_an_unknown_encoding_is_a_usage_error_as_in_train_and_eval(planted):
    r = invoke(planted["checkpoint"], planted["text"], "--encoding", "foo")
    assert r.exit_code == 2 and "unknown encoding 'foo'" in r.output


def test_a_model_that_computes_nan_is_one_line(planted, tmp_path):
    vocab = planted["vocab"]
    spec, params = planted_lstm(vocab)
    params[-1] = np.nan  # an output bias: the guesses are NaN
    r = invoke(save(tmp_path / "nan.npz", spec, params, vocab), planted["text"])
    assert r.exit_code == 1 and "NaN or Inf" in str(r.exception)


def test_only_the_start_of_the_file_is_read(planted, monkeypatch):
    """inspect reads the pieces of the file (64 bytes here, 4 MiB in use) that hold the characters
    it shows: what lies beyond them (an unknown character, bytes that are not UTF-8) is never
    read, and what it reads is the text's start exactly."""
    import charrnn.corpus

    monkeypatch.setattr(charrnn.corpus, "CHUNK_BYTES", 64)
    start = QUOTED[:200]
    path = planted["dir"] / "long.txt"
    path.write_bytes(start.encode("utf-8") + QUOTED.encode("utf-8") * 3 + "€".encode("utf-8") + b"\xff\xfe")
    r = invoke(planted["checkpoint"], path, "--chars", 200)
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[0].endswith(f"read 200 characters of {path} from a zero state")
    assert start.splitlines()[1] in r.stdout.splitlines()
    ids, chars = charrnn.corpus.read_ids(path, max_chars=200)
    assert Vocab.from_json(chars).decode(ids) == start
    r = invoke(planted["checkpoint"], path, "--chars", 20_000)  # the whole file: refused, in one line
    assert r.exit_code == 1 and "not valid UTF-8" in str(r.exception)


def test_unknown_characters_and_usage_errors(planted):
    text = _write(planted["dir"] / "euro.txt", "€ said \"hi\"\n")
    r = invoke(planted["checkpoint"], text)
    assert r.exit_code == 1 and "'€'" in str(r.exception) and "--skip-unknown" in str(r.exception)
    r = invoke(planted["checkpoint"], text, "--skip-unknown")
    assert r.exit_code == 0 and "1 unknown character skipped" in r.stdout.splitlines()[0]
    r = invoke(planted["checkpoint"], _write(planted["dir"] / "only.txt", "€€"), "--skip-unknown")
    # it said "there is no text to read", naming neither the file nor why
    assert r.exit_code == 1 and str(r.exception) == (f"the first 2 characters of {planted['dir'] / 'only.txt'} are all "
                                                     "unknown to the model, and --skip-unknown left none; give a file "
                                                     "with some text the model knows")
    r = invoke(planted["checkpoint"], _write(planted["dir"] / "long.txt", "€€€ known"), "--skip-unknown", "--chars", 3)
    assert r.exit_code == 1 and str(r.exception).endswith("the model knows, or a larger --chars")
    assert invoke(planted["checkpoint"], planted["text"], "--chars", 0).exit_code == 2
    assert invoke(planted["checkpoint"], planted["text"], "--chars", 20_001).exit_code == 2
    # the real command: one line on stderr, no traceback
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-m", "charrnn", "inspect", str(planted["checkpoint"]), str(planted["text"]),
                        "--unit", "9"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert p.returncode == 2 and p.stderr.startswith("error: --unit 9 does not exist") and len(p.stderr.splitlines()) == 1


# ---------------------------------------------------------------------------------------------
# The page


class PageChecker(HTMLParser):
    """Collects what a self-contained page must not have, and the characters of its text."""

    VOID = {"meta", "input", "br", "hr", "img", "link", "wbr", "source", "area", "base", "col", "embed", "track"}
    FETCHING = {"src", "href", "srcset", "action", "formaction", "data", "poster", "background", "manifest"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.open, self.problems, self.tags, self.chars = [], [], {}, []
        self.in_text = 0  # depth inside <div id="text">

    def handle_starttag(self, tag, attrs):
        self.tags[tag] = self.tags.get(tag, 0) + 1
        self.problems += [f"<{tag} {k}=...>" for k, _ in attrs if k in self.FETCHING]
        if tag in ("link", "iframe", "object", "embed", "img", "base"):
            self.problems.append(f"<{tag}>")
        if self.in_text or dict(attrs).get("id") == "text":
            self.in_text += 1
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.problems.append(f"self-closing <{tag}/>")

    def handle_endtag(self, tag):
        if not self.open or self.open.pop() != tag:
            self.problems.append(f"</{tag}> closes nothing it opened")
        if self.in_text:
            self.in_text -= 1

    def handle_data(self, data):
        if self.in_text:
            self.chars.append(data)


def check_page(doc, text):
    assert doc.startswith("<!doctype html>\n")
    for forbidden in ("http://", "https://", "url(", "@import", "//cdn"):
        assert forbidden not in doc
    checker = PageChecker()
    checker.feed(doc)
    checker.close()
    assert checker.problems == [] and checker.open == []
    assert checker.tags["html"] == checker.tags["head"] == checker.tags["body"] == 1
    assert checker.tags["span"] >= len(text)
    assert "".join(checker.chars) == "".join(ins.visible(c) for c in text)  # every character, escaped
    return checker


def test_page_is_valid_self_contained_and_escaped(planted):
    text = 'x <script>alert("no")</script> & {text} {meta} [b]y[/b] \\" \u0007\n' + QUOTED
    vocab = Vocab.from_text(text)
    spec, params = random_model("lstm", vocab, layers=2)
    tr = ins.trace(spec, params, vocab, text)
    scores = ins.score_units(tr)
    doc = page(tr, scores, ins.find_units(scores), vocab, 0, 0, "<b>file</b>.txt")
    check_page(doc, text)
    assert "<script>alert" not in doc and "<span>&lt;</span><span>s</span><span>c</span>" in doc
    assert "<b>file" not in doc and "&lt;b&gt;file&lt;/b&gt;.txt" in doc
    assert doc.count("<script") == 2 + 4 + spec.layers  # meta, the code, four data blobs, one per layer


# ---------------------------------------------------------------------------------------------
# In a real browser

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)

# Runs before the page's own script: any error or console.error is recorded
CATCH = """<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(String(e.message)));
console.error = (...a) => window.__errors.push(a.join(" "));
</script>"""
# Runs after it: the colours and tooltip it produced, then the same after the user acts
PROBE = """<script>
{
const probe = {}, spans = document.getElementById("text").children;
const colours = () => Array.from(spans, s => getComputedStyle(s).backgroundColor);
probe.start = colours();
spans[5].dispatchEvent(new MouseEvent("mouseover", {bubbles: true}));
probe.tip = document.getElementById("tip").textContent;
document.getElementById("next").click();
probe.next = colours();
probe.unit = document.getElementById("unit").value;
const sel = document.getElementById("layer");
sel.value = "1"; sel.dispatchEvent(new Event("change"));
probe.layer1 = colours();
probe.plots = document.querySelectorAll("#gate-plots canvas").length;
probe.errors = window.__errors;
const out = document.createElement("pre"); out.id = "probe"; out.textContent = JSON.stringify(probe);
document.body.appendChild(out);
}
</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed")
def test_page_renders_in_headless_chromium(tmp_path):
    vocab = Vocab.from_text(QUOTED + "<&>")
    spec, params = planted_lstm(vocab, layers=2)
    text = "<&> " + QUOTED[:300]
    tr = ins.trace(spec, params, vocab, text)
    scores = ins.score_units(tr)
    doc = page(tr, scores, ins.find_units(scores), vocab, 0, QUOTE_UNIT, "quoted.txt")
    probe_page = tmp_path / "probe.html"
    probe_page.write_text(doc.replace("<head>", "<head>\n" + CATCH, 1).replace("</body>", PROBE + "\n</body>", 1),
                          encoding="utf-8")
    p = subprocess.run([CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--enable-logging=stderr", "--v=0",
                        f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", probe_page.as_uri()],
                       capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-2000:]
    console = [line for line in p.stderr.splitlines() if "CONSOLE" in line]
    assert not [line for line in console if "Uncaught" in line or "rror" in line], console
    found = re.search(r'<pre id="probe">(.*?)</pre>', p.stdout, re.S)
    assert found, p.stdout[-2000:]
    probe = json.loads(html.unescape(found[1]))
    assert probe["errors"] == []

    def rgb(layer, unit):
        pal = ins.palette()
        return [f"rgb({r}, {g}, {b})" for r, g, b in (pal[q] for q in tr.quantised(layer)[unit])]

    # every character on its colour: the quantised activation of the unit shown
    assert probe["start"] == rgb(0, QUOTE_UNIT)
    assert len(set(probe["start"])) > 2  # the quote unit flips: several colours, not one
    assert probe["unit"] == str(QUOTE_UNIT + 1) and probe["next"] == rgb(0, QUOTE_UNIT + 1)
    assert probe["layer1"] == rgb(1, QUOTE_UNIT + 1)
    assert probe["plots"] == 3  # i, f, o
    # the hover: after character 6, its five likeliest successors with their probabilities
    tip = probe["tip"].splitlines()
    assert tip[0].startswith(f"after {ins.label(text[5])} (character 6), unit {QUOTE_UNIT} = ")
    for line, i, prob in zip(tip[1:6], tr.guesses[5], tr.guess_probs[5]):
        assert line.split() == [ins.label(vocab.chars[i]), f"{100 * prob:.1f}%"]
    assert tip[6] == f"next: {ins.label(text[6])} {100 * tr.next_probs[5]:.1f}%"


def test_the_page_is_written_when_stdout_is_not_read_to_the_end(planted, tmp_path):
    # `inspect ... --html page.html | head -1`: the page came after the printing, which a reader
    # gone ends quietly (exit 1): no page and not a word. It is written first now. (The reader
    # here has gone before the first line: its end of the pipe is closed at once.)
    out = tmp_path / "page.html"
    read, write = os.pipe()
    os.close(read)
    r = subprocess.run([sys.executable, "-m", "charrnn", "inspect", str(planted["checkpoint"]), str(planted["text"]),
                        "--html", str(out)], stdout=write, stderr=subprocess.PIPE, timeout=300,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    os.close(write)
    assert r.returncode == 1 and r.stderr == b"", r.stderr
    check_page(out.read_text(encoding="utf-8"), QUOTED)
