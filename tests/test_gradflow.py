"""Gradient flow: the series against finite differences, the decay theory predicts, and the CLI."""
import json
import os
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

import reference
from charrnn import gradflow as gf
from charrnn.checkpoint import save_checkpoint
from charrnn.cells import CELLS, NAMES
from charrnn.cli import app
from charrnn.corpus import Vocab, default_corpus, read_text
from charrnn.errors import CharrnnError, UsageError
from charrnn.model import Layout, ModelSpec, Stack, init_params

runner = CliRunner()


@pytest.fixture(scope="module")
def shakespeare():
    text = read_text(default_corpus())[:20000]
    vocab = Vocab.from_text(text)
    return vocab, vocab.encode(text)


def _tiny_stack(cell, layers, T=7, B=2, H=4, V=5, seed=0):
    """A float64 model off its init, a random window with a random entering state, run forward."""
    rng = np.random.default_rng(seed)
    spec = ModelSpec(cell, V, H, layers)
    params = init_params(spec, rng, np.float64)
    params += rng.normal(0.0, 0.3, params.shape)  # off the init, so nothing is trivially small
    if getattr(CELLS[cell], "kinks", None) is not None:
        # relu units (IndRNN): lift the biases so that they are active. A dead unit passes no
        # gradient back, and a series of zeros would compare nothing.
        for p in Layout(spec).layer_views(params)[0]:
            p["b"] += 1.5
    stack = Stack(spec, B, T, np.float64)
    stack.ids[:] = rng.integers(0, V, (T, B))
    stack.targets[:] = rng.integers(0, V, (T, B))
    stack.set_state(0, [[rng.normal(0.0, 0.5, (B, H)) for _ in layer] for layer in stack.get_state(0)])
    stack.forward(params, 0, T)
    return spec, params, stack


def _richardson(f, eps=1e-3):
    """Central difference with the h^2 error term cancelled: error O(eps^4). (Also for the relu
    cell: with its units lifted into the active side, no step of 1e-3 reaches a kink.)"""
    def central(h):
        return (f(h) - f(-h)) / (2 * h)
    return (4 * central(eps / 2) - central(eps)) / 3


def _rel(a, b):
    return np.linalg.norm(a - b) / max(np.linalg.norm(a), np.linalg.norm(b))


@pytest.mark.parametrize("cell", NAMES)
def test_single_layer_series_matches_finite_differences(cell):
    # Move one entry of the state in slot s = T-k, rerun the window from that slot and take the
    # loss of the last step: the whole gradient vector must agree, not only its norm.
    spec, params, stack = _tiny_stack(cell, layers=1)
    T, B, H = stack.T, stack.B, spec.hidden
    g = gf.state_gradients(stack, params, T - 1)
    assert g.shape == (1, T, B, H)
    for k in (0, 1, 3, T - 1):
        s = T - k
        saved = stack.get_state(s)

        def loss(h):
            stack.set_state(s, saved)
            stack.bufs[0]["hs"][s][b, j] += h
            if s < T:
                stack.forward(params, s, T)
            return stack.loss(params, T - 1, T)

        numeric = np.zeros((B, H))
        for b in range(B):
            for j in range(H):
                numeric[b, j] = _richardson(loss)
        stack.set_state(s, saved)
        assert np.linalg.norm(numeric) > 1e-8, k  # the check compares something
        assert _rel(g[0, k], numeric) < 1e-6, (k, g[0, k], numeric)


def _reference_last_loss(cell, spec, params, stack, s, bump):
    """Loss of the last step, recomputed by tests/reference.py from the states in slot s-1 with
    bump = (layer, b, j, h) added to that layer's h once it reaches slot s, before the layer above
    and the later steps read it: the total derivative the series reports for every layer."""
    layers, out = Layout(spec).layer_views(params)
    state = [tuple(a.copy() for a in layer) for layer in stack.get_state(s - 1)]
    eye = np.eye(spec.vocab_size)
    for t in range(s - 1, stack.T):
        x = eye[stack.ids[t]]
        for l, p in enumerate(layers):
            state[l], _ = reference._cell_step(cell, x, state[l], p)
            if t == s - 1 and l == bump[0]:
                h = state[l][0].copy()
                h[bump[1], bump[2]] += bump[3]
                state[l] = (h,) + state[l][1:]
            x = state[l][0]
    logits = x @ out["Wy"] + out["by"]
    top = logits.max(1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(1, keepdims=True))
    return -logp[np.arange(stack.B), stack.targets[stack.T - 1]].sum()


@pytest.mark.parametrize("cell", NAMES)
def test_stacked_series_matches_an_independent_reference(cell):
    spec, params, stack = _tiny_stack(cell, layers=2, T=6, H=3, seed=1)
    T, B, H = stack.T, stack.B, spec.hidden
    g = gf.state_gradients(stack, params, T - 1)
    for l in range(2):
        for k in (0, 1, 2, T - 1):
            numeric = np.zeros((B, H))
            for b in range(B):
                for j in range(H):
                    numeric[b, j] = _richardson(
                        lambda h: _reference_last_loss(cell, spec, params, stack, T - k, (l, b, j, h)))
            assert np.linalg.norm(numeric) > 1e-8, (l, k)
            assert _rel(g[l, k], numeric) < 1e-6, (l, k, g[l, k], numeric)


def test_rnn_at_radius_half_decays_geometrically_and_lstm_keeps_more(shakespeare):
    vocab, ids = shakespeare
    K = 60
    rnn = gf.fresh_model("rnn", vocab, 16, 1, seed=0)
    gf.set_spectral_radius(rnn, 0.5)
    W = gf.recurrent_blocks(rnn.spec, rnn.params)[0]["h"]
    assert gf.spectral_radius(W) == pytest.approx(0.5, rel=1e-9)
    n = gf.measure(rnn, ids, K, windows=2, batch=4, seed=0).layers[0].norms
    assert np.all(n > 0) and np.all(np.isfinite(n))

    # What holds strictly: g_{k+1} = (g_k * tanh'(a)) @ Wh^T with 0 < tanh' <= 1, so every
    # stream's ||g_{k+1}|| <= ||Wh||_2 ||g_k||, and so does the mean over streams.
    sigma = np.linalg.norm(W, 2)
    assert np.all(n[1:] <= sigma * n[:-1] * (1 + 1e-12))

    # The spectral radius sets the asymptotic rate: ||(Wh^T)^k||^(1/k) -> 0.5 (Gelfand), and
    # the tanh' factors in (0, 1] only add damping. A non-normal Wh can grow for a few steps
    # before it decays, which a finite fit over k = 10..K sees as a small bias; allow 0.05 per
    # step (a rate of 0.526 instead of 0.5). A slot off by one, or a missing tanh', shows up in the
    # finite-difference tests; a stalled or exploding series fails here by far.
    slope = np.polyfit(np.arange(10, K + 1), np.log(n[10:]), 1)[0]
    assert slope <= np.log(0.5) + 0.05, slope

    # An LSTM with the classic forget-gate bias of 1 keeps far more of its gradient: the
    # cell state's path multiplies by f ~ sigmoid(1) ~ 0.73 per step, not by 0.5 @ tanh'.
    for cell in ("lstm", "peephole"):
        lstm = gf.fresh_model(cell, vocab, 16, 1, seed=0)
        gf.set_forget_bias(lstm, 1.0)
        b = Layout(lstm.spec).layer_views(lstm.params)[0][0]["b"]
        assert np.all(b[16:32] == 1.0) and np.all(np.abs(np.delete(b, np.s_[16:32])) < 1)
        m = gf.measure(lstm, ids, K, windows=2, batch=4, seed=0).layers[0].norms
        assert m[50] / m[0] > 1000 * n[50] / n[0], (cell, m[50] / m[0], n[50] / n[0])


def test_set_spectral_radius_rescales_every_gate_block(shakespeare):
    vocab, _ = shakespeare
    for cell, names in ((name, CELLS[name].blocks) for name in ("rnn", "lstm", "gru")):
        model = gf.fresh_model(cell, vocab, 8, 2, seed=3)
        gf.set_spectral_radius(model, 1.5)
        for blocks in gf.recurrent_blocks(model.spec, model.params):
            assert tuple(blocks) == names
            for m in blocks.values():
                assert gf.spectral_radius(m) == pytest.approx(1.5, rel=1e-9)


def test_vanish_k_and_saturation_fractions(shakespeare):
    vocab, ids = shakespeare
    f = gf.LayerFlow(0, np.array([1.0, 0.1, 2e-3, 5e-4, 1e-5]), {}, {})
    assert f.vanish_k() == 3
    assert gf.LayerFlow(0, np.array([1.0, 0.5]), {}, {}).vanish_k() is None
    # A huge radius drives an RNN's units into saturation; a tiny one keeps them linear.
    big = gf.fresh_model("rnn", vocab, 16, 1, seed=0)
    gf.set_spectral_radius(big, 20.0)
    small = gf.fresh_model("rnn", vocab, 16, 1, seed=0)
    gf.set_spectral_radius(small, 0.1)
    sat_big = gf.measure(big, ids, 10, 2, 4, 0).layers[0].saturation["h"]
    sat_small = gf.measure(small, ids, 10, 2, 4, 0).layers[0].saturation["h"]
    assert sat_big > 0.5 and sat_small == 0.0
    lstm = gf.measure(gf.fresh_model("lstm", vocab, 8, 1, 0), ids, 5, 1, 2, 0).layers[0]
    assert set(lstm.saturation) == {"i", "f", "g", "o", "tanh(c)"}
    assert set(lstm.radius) == {"i", "f", "g", "o"}


def test_short_corpus_is_a_clear_error(shakespeare):
    vocab, ids = shakespeare
    with pytest.raises(CharrnnError, match="smaller --max-k"):
        gf.measure(gf.fresh_model("rnn", vocab, 4, 1, 0), ids[:50], 100, 1, 1, 0)
    # at --max-k 1, its least, the advice was "or a smaller --max-k" all the same
    with pytest.raises(CharrnnError, match=r"needs 5 \(a warm-up of the same length first\); use a longer text$"):
        gf.measure(gf.fresh_model("rnn", vocab, 4, 1, 0), ids[:4], 1, 1, 1, 0)


def test_a_layer_no_gradient_reaches_has_vanished_at_once():
    # dead relu units: norms of 0 at every k read "> K" and "vanish_k": null, as a gradient
    # that never vanished does
    args = ["gradflow", "--cell", "indrnn", "--layers", "3", "--hidden", "1", "--max-k", "3", "--windows", "1",
            "--batch", "1"]
    layers = json.loads(runner.invoke(app, [*args, "--json"]).stdout)["models"][0]["per_layer"]
    dead = [layer for layer in layers if layer["norm"][0] == 0]
    assert dead and all(layer["vanish_k"] == 0 for layer in dead), layers
    r = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "0 (none)" in r.stdout


@pytest.mark.parametrize("cell, fast, slow", [("leaky", (("tau", "1"),), (("tau", "30"),)),
                                             ("esn", (("spectral_radius", 0.5),), (("spectral_radius", 0.99),)),
                                             ("indrnn", (("u_max", 0.5),), (("u_max", 1.0),))])
def test_what_the_lectures_vary_sets_how_far_the_gradient_reaches(shakespeare, cell, fast, slow):
    # a long time constant, a spectral radius near 1, |u| near 1: each lets the gradient travel
    # further back than its short, contractive or small counterpart
    vocab, ids = shakespeare
    K = 30
    series = [gf.measure(gf.fresh_model(cell, vocab, 16, 1, 0, options), ids, K, 2, 4, 0).layers[0].norms
              for options in (fast, slow)]
    ratio = [n[K] / n[0] for n in series]
    assert ratio[1] > 100 * ratio[0], ratio


# -- CLI --------------------------------------------------------------------------------------


def test_cli_all_charts_every_family():
    r = runner.invoke(app, ["gradflow", "--cell", "all", "--max-k", "6", "--hidden", "8", "--windows", "1",
                            "--batch", "2", "--tau", "5", "--spectral-radius", "0.9", "--u-max", "1", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert [m["cell"] for m in data["models"]] == list(NAMES)
    for m in data["models"]:
        assert all(np.isfinite(m["per_layer"][0]["norm"])) and m["per_layer"][0]["norm"][0] > 0
    radius = {m["cell"]: m["per_layer"][0]["spectral_radius"] for m in data["models"]}
    assert radius["esn"]["h"] == pytest.approx(0.9)
    assert radius["indrnn"]["u"] <= 1.0


def test_cli_all_prints_a_table_row_for_every_family():
    # IndRNN has neither an (H,H) block nor a saturating activation: its cells read "-"
    r = runner.invoke(app, ["gradflow", "--cell", "all", "--max-k", "6", "--hidden", "8", "--windows", "1",
                            "--batch", "2"], env={"COLUMNS": "160"})
    assert r.exit_code == 0, r.output
    rows = [line for line in r.output.splitlines() if line.startswith("│ ") and not line.startswith("│  ")]
    assert [row.split("│")[1].strip() for row in rows] == list(NAMES)
    assert "│ -" in next(row for row in rows if "indrnn" in row)


def test_cli_prints_chart_and_table():
    r = runner.invoke(app, ["gradflow", "--cell", "rnn,lstm,gru", "--max-k", "20", "--hidden", "16"])
    assert r.exit_code == 0, r.output
    for word in ("rnn", "lstm", "gru", "vanished", "radius", "saturated", "1e+00", "steps back"):
        assert word in r.stdout, word
    assert "┤" in r.stdout and "└" in r.stdout  # the chart's axes


def test_cli_json_parses_and_holds_the_series():
    r = runner.invoke(app, ["gradflow", "--cell", "rnn,gru", "--max-k", "12", "--hidden", "8",
                            "--layers", "2", "--windows", "2", "--batch", "3", "--radius", "0.5", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["k"] == list(range(13))
    assert [m["cell"] for m in data["models"]] == ["rnn", "gru"]
    for m in data["models"]:
        assert len(m["per_layer"]) == 2
        for layer in m["per_layer"]:
            assert len(layer["norm"]) == 13 and layer["norm"][0] > 0
            assert all(v == pytest.approx(0.5) for v in layer["spectral_radius"].values())


def test_cli_measures_a_checkpoint(tmp_path, shakespeare):
    vocab, _ = shakespeare
    spec = ModelSpec("gru", vocab.size, 8, 1)
    flat = init_params(spec, np.random.default_rng(0), np.float32)
    path = tmp_path / "run" / "best.npz"
    save_checkpoint(path, {"params": flat},
                    {"config": {"cell": "gru", "hidden": 8, "layers": 1}, "vocab": vocab.to_json()})
    r = runner.invoke(app, ["gradflow", str(path.parent), "--max-k", "5", "--windows", "1", "--json"])
    assert r.exit_code == 0, r.output
    (m,) = json.loads(r.stdout)["models"]
    assert (m["label"], m["cell"], m["hidden"]) == ("run/best.npz", "gru", 8)
    os.chdir(path.parent)  # a file in the working folder, or the folder as '.': the run's name, not "/best.npz"
    try:
        for given in ("best.npz", "."):
            r = runner.invoke(app, ["gradflow", given, "--max-k", "5", "--windows", "1", "--json"])
            assert json.loads(r.stdout)["models"][0]["label"] == "run/best.npz", r.output
    finally:
        os.chdir(tmp_path)

    # characters the model does not know were left out without a word
    text = tmp_path / "odd.txt"
    text.write_text("the cat sat on the mat \u20ac\u00df " * 40, encoding="utf-8")
    r = runner.invoke(app, ["gradflow", str(path), "--corpus", str(text), "--max-k", "5", "--windows", "1", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["models"][0]["unknown_chars"] == 80
    assert r.stderr == f"note: left out 80 of the 1,040 characters of {text} that the model does not know\n"

    r = runner.invoke(app, ["gradflow", str(path), "--cell", "lstm"])
    assert isinstance(r.exception, UsageError)
    # named as given (it listed every option of a fresh model)
    assert str(r.exception) == "--cell describes fresh models; a checkpoint is measured as it was trained: leave it out"
    r = runner.invoke(app, ["gradflow", str(path), "--tau", "5", "--hidden", "8"])
    assert str(r.exception).startswith("--hidden, --tau describe fresh models;") and "leave them out" in str(r.exception)


def test_cli_bad_values_are_usage_errors():
    assert runner.invoke(app, ["gradflow", "--cell", "rnn,transformer"]).exit_code == 2
    assert runner.invoke(app, ["gradflow", "--cell", ""]).exit_code == 2  # it ran the default cells
    assert runner.invoke(app, ["gradflow", "--cell", "rnn,"]).exit_code == 2
    assert runner.invoke(app, ["gradflow", "--max-k", "0"]).exit_code == 2
    assert runner.invoke(app, ["gradflow", "--radius", "-1"]).exit_code == 2


def test_cli_png_without_matplotlib_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    r = runner.invoke(app, ["gradflow", "--cell", "rnn", "--max-k", "5", "--png", str(tmp_path / "g.png")])
    assert r.exit_code == 1 and isinstance(r.exception, CharrnnError)
    assert "pip install" in str(r.exception) and "\n" not in str(r.exception)
    assert not (tmp_path / "g.png").exists()


def test_a_checkpoint_whose_name_is_not_utf8_is_drawn(tmp_path):
    # the legend held the name's lone surrogates: matplotlib's TypeError, an internal error
    pytest.importorskip("matplotlib")
    spec = ModelSpec("rnn", 5, 4, 1)
    flow = gf.Flow(os.fsdecode(b"caf\xe9/best.npz"), spec, [gf.LayerFlow(0, np.array([1.0, 0.5, 0.25]), {}, {})])
    gf.write_png([flow], tmp_path / "g.png")
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_checkpoint_whose_name_holds_dollars_is_drawn_as_named(tmp_path, monkeypatch):
    # matplotlib reads $...$ as math: a run named cost$^$ was an internal error (ValueError)
    pytest.importorskip("matplotlib")
    from matplotlib.cbook import is_math_text

    import charrnn.plot as plot

    spec = ModelSpec("rnn", 5, 4, 1)
    flows = [gf.Flow(name, spec, [gf.LayerFlow(0, np.array([1.0, 0.5, 0.25]), {}, {})])
             for name in ("cost$^$/best.npz", "a $5 vs $6/best.npz", "_try/best.npz")]
    gf.write_png(flows, tmp_path / "g.png")
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    drawn = []
    monkeypatch.setattr(plot, "save_figure", lambda fig, path: drawn.append(fig))
    gf.write_png(flows, tmp_path / "g.png")
    labels = [t.get_text() for t in drawn[0].axes[0].get_legend().get_texts()]
    # each $ escaped, which matplotlib draws as a $; and a name starting with _ in the legend too
    assert labels == [r"cost\$^\$/best.npz", r"a \$5 vs \$6/best.npz", "_try/best.npz"], labels
    assert not any(map(is_math_text, labels))


def test_cli_png(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "g.png"
    r = runner.invoke(app, ["gradflow", "--cell", "rnn,lstm", "--max-k", "8", "--hidden", "8",
                            "--windows", "1", "--png", str(out)])
    assert r.exit_code == 0, r.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_checkpoints_corpus_ids_drop_what_it_does_not_know():
    """corpus_ids renumbers a file's ids (corpus.read_ids) into a model's vocabulary, dropping the
    characters it lacks, as encode_skip_unknown does with the text."""
    text = "the cat € sat ß"
    file_vocab = Vocab.from_text(text)
    model_vocab = Vocab("abcdefghijklmnopqrstuvwxyz ")
    ids, dropped = gf.corpus_ids(file_vocab.encode(text).astype(np.uint8), file_vocab.chars, model_vocab)
    assert ids.dtype == np.uint8 and np.array_equal(ids, model_vocab.encode_skip_unknown(text)[0]) and dropped == 2


def test_a_gradient_that_overflows_is_said_in_one_line_without_numpys_warnings(tmp_path):
    # --radius 100 (in range): four "RuntimeWarning: overflow encountered" lines from numpy's norm
    # came before the error
    import subprocess
    from pathlib import Path

    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog\n" * 100, encoding="utf-8")
    r = subprocess.run([sys.executable, "-m", "charrnn", "gradflow", "--cell", "lstm", "--radius", "100", "--max-k", "600",
                        "--windows", "1", "--batch", "2", "--corpus", str(text)], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent)), timeout=300)
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.startswith("error: the gradient of lstm overflowed (inf or NaN) at k="), r.stderr


def test_the_help_of_the_cell_options_names_their_cells_once_and_their_defaults():
    # "Fresh esn models: esn: the leak rate ..." and no default for --leak (train's help has it)
    r = runner.invoke(app, ["gradflow", "--help"], env={"COLUMNS": "400"})
    assert r.exit_code == 0
    help_of = {line.split()[1]: line for line in r.stdout.splitlines() if line.startswith("│ --")}
    assert "Fresh esn models: the leak rate a of" in help_of["--leak"] and "; default 1." in help_of["--leak"]
    assert "Fresh esn models: the spectral radius" in help_of["--spectral-radius"]
    assert "(the echo-state property); default 0.95." in help_of["--spectral-radius"]
    assert "Fresh leaky models: the time constants" in help_of["--tau"] and "Default 1:50" in help_of["--tau"]
    assert not any("models: esn:" in h or "models: leaky:" in h for h in help_of.values())


def test_a_run_folders_name_reaches_the_chart_and_table_escaped_and_a_bytes_model_counts_bytes(tmp_path, shakespeare):
    # an ESC in a run folder's name (a run copied from someone) cleared the terminal in the
    # legend and the table; a bytes model's note said "characters" of a count of bytes
    vocab, _ = shakespeare
    spec = ModelSpec("rnn", vocab.size, 4, 1)
    path = tmp_path / "ev\x1b[2Jil" / "best.npz"
    save_checkpoint(path, {"params": init_params(spec, np.random.default_rng(0), np.float32)},
                    {"config": {"cell": "rnn", "hidden": 4, "layers": 1, "encoding": "bytes"}, "vocab": vocab.to_json()})
    text = tmp_path / "odd:smile:.txt"  # a note on stderr: no emoji either
    text.write_text("the cat sat on the mat \u20ac " * 40, encoding="utf-8")  # the euro sign: 3 bytes
    r = runner.invoke(app, ["gradflow", str(path), "--corpus", str(text), "--max-k", "3", "--windows", "1"])
    assert r.exit_code == 0, r.output
    assert "\x1b" not in r.stdout and r.stdout.count("ev\\x1b[2Jil/best.npz") == 2, r.stdout  # legend, table
    assert r.stderr == f"note: left out 120 of the 1,080 bytes of {text} that the model does not know\n"
    # so do its errors: a text too short, or none of whose bytes it knows (they said "characters")
    text.write_text("the cat", encoding="utf-8")
    r = runner.invoke(app, ["gradflow", str(path), "--corpus", str(text), "--max-k", "3", "--windows", "1"])
    assert str(r.exception).startswith("the corpus has 7 usable bytes, but a window of 4 steps needs 9"), r.exception
    text.write_bytes(b"\x00\x01")
    r = runner.invoke(app, ["gradflow", str(path), "--corpus", str(text), "--max-k", "3", "--windows", "1"])
    assert str(r.exception).startswith("none of the 2 bytes of --corpus is one the model knows"), r.exception


@pytest.mark.parametrize("json_out", [False, True])
def test_a_png_that_cannot_be_written_leaves_the_measurement_printed(tmp_path, monkeypatch, json_out):
    # the error came before anything was printed: minutes of measuring lost, the JSON too
    def full(flows, path):
        raise CharrnnError(f"cannot write {path}: File too large")

    monkeypatch.setattr(gf, "write_png", full)
    png = tmp_path / "g.png"
    r = runner.invoke(app, ["gradflow", "--cell", "rnn", "--max-k", "4", "--hidden", "8", "--windows", "1",
                            "--png", str(png), *(["--json"] if json_out else [])])
    assert r.exit_code == 1 and str(r.exception) == f"cannot write {png}: File too large"
    if json_out:
        assert json.loads(r.stdout)["models"][0]["cell"] == "rnn"
    else:
        assert "mean ||dL_T / dh_(T-k)||" in r.stdout and "wrote" not in r.stdout


def test_a_png_of_many_series_draws_no_two_alike(tmp_path, monkeypatch):
    # matplotlib cycles 10 colours: the 11th series was drawn as the first
    pytest.importorskip("matplotlib")
    import charrnn.plot as plot

    drawn = []
    monkeypatch.setattr(plot, "save_figure", lambda fig, path: drawn.append(fig))
    spec = ModelSpec("rnn", 5, 4, 2)
    flows = [gf.Flow(f"m{i}", spec, [gf.LayerFlow(layer, np.array([1.0, 0.5, 0.25]), {}, {}) for layer in (0, 1)])
             for i in range(8)]
    gf.write_png(flows, tmp_path / "g.png")
    looks = [(line.get_color(), line.get_linestyle()) for line in drawn[0].axes[0].get_lines()]
    assert len(looks) == 16 and len(set(looks)) == 16, looks


def test_a_png_of_more_series_than_a_legend_holds_draws_a_panel_a_model(tmp_path, monkeypatch):
    # 8 cells of 16 layers: 128 series in one chart, whose legend ran off it and covered the lines
    pytest.importorskip("matplotlib")
    import charrnn.plot as plot

    drawn = []
    monkeypatch.setattr(plot, "save_figure", lambda fig, path: drawn.append(fig))
    spec = ModelSpec("rnn", 5, 4, 16)
    flows = [gf.Flow(f"m{i}", spec, [gf.LayerFlow(layer, np.array([1.0, 0.5, 0.25]) / (layer + 1), {}, {})
                                     for layer in range(16)]) for i in range(3)]
    gf.write_png(flows, tmp_path / "g.png")
    panels = [ax for ax in drawn[0].axes if ax.get_visible()]
    assert len(panels) == 3 and not drawn[0].axes[3].get_visible()
    for flow, ax in zip(flows, panels):
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert labels == [f"{flow.label} L{layer}" for layer in range(16)]
        looks = [(line.get_color(), line.get_linestyle()) for line in ax.get_lines()]
        assert len(set(looks)) == 16
    # a column's lowest panel names the x axis, the first column the y axis
    assert [bool(ax.get_xlabel()) for ax in panels] == [False, True, True]
    assert [any(t.get_visible() for t in ax.get_xticklabels()) for ax in panels] == [False, True, True]
    assert [bool(ax.get_ylabel()) for ax in panels] == [True, False, True]
    gf.write_png(flows[:1], tmp_path / "g.png")  # 16 series: one chart, as before
    assert len(drawn[1].axes) == 1 and len(drawn[1].axes[0].get_lines()) == 16


def test_a_gradient_that_reaches_no_further_than_k_0_is_drawn_over_every_k(tmp_path, monkeypatch):
    # an ESN of spectral radius 0: norms of 0 past k = 0, which a log axis leaves out. The PNG drew
    # its one point as a line of no length, unseen, on an axis from -0.04 to 0.04; the terminal's
    # chart put it on an axis from -1 to 1, with no sign of k = 1..K
    pytest.importorskip("matplotlib")
    import charrnn.plot as plot

    drawn = []
    monkeypatch.setattr(plot, "save_figure", lambda fig, path: drawn.append(fig))
    spec = ModelSpec("esn", 5, 4, 1)
    norms = np.zeros(21)
    norms[0] = 0.5
    flows = [gf.Flow("esn", spec, [gf.LayerFlow(0, norms, {}, {})]),
             gf.Flow("rnn", spec, [gf.LayerFlow(0, 0.5 ** np.arange(21), {}, {})])]
    gf.write_png(flows[:1], tmp_path / "g.png")
    ax = drawn[0].axes[0]
    (alone,) = ax.get_lines()
    lo, hi = ax.get_xlim()
    assert alone.get_marker() == "o" and list(alone.get_xdata()) == [0] and lo < 0 and hi > 20  # (not on the frame)
    gf.write_png(flows, tmp_path / "g.png")
    assert drawn[1].axes[0].get_lines()[1].get_marker() in (None, "None", "")  # a line of many points needs none
    axis = gf.chart(flows[:1]).plain.splitlines()[-3]  # the x axis's numbers, under its ticks
    assert axis.split() == ["0", "5", "10", "15", "20"], axis
