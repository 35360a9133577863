"""`charrnn plot` and the terminal chart: reading metrics.jsonl, drawing, PNG, errors."""
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from charrnn.cli import app
from charrnn.errors import CharrnnError
from charrnn.plot import _xy, read_metrics, require_pyplot, summary
from charrnn.termchart import MARKERS, line_chart, nice_ticks

runner = CliRunner()


def _write_run(folder, torn=True):
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for step in range(1, 41):
        lines.append({"kind": "train", "step": step, "epoch": 0, "loss": 4.0 / step ** 0.3,
                      "bpc": 5.0 / step ** 0.3, "grad_norm": 10.0 / step, "clipped": step < 5,
                      "lr": 2e-3, "chars_per_sec": 1e5, "time": step * 0.1, "new_key": [1, 2]})
        if step % 10 == 0:
            lines.append({"kind": "val", "step": step, "loss": 3.0 / step ** 0.2, "bpc": 4.0 / step ** 0.2})
    lines.append({"kind": "sample", "step": 40, "text": "ROMEO:"})  # a kind plot does not know
    lines.append({"kind": "test", "loss": 1.5, "bpc": 2.1640})
    text = "\n".join(json.dumps(x) for x in lines) + "\n"
    if torn:
        text += '{"kind": "train", "step": 41, "lo'  # the crash came while appending
    (folder / "metrics.jsonl").write_text(text)
    return folder


def test_read_metrics_keeps_train_val_test_and_skips_the_rest(tmp_path):
    m = read_metrics(_write_run(tmp_path / "run"))
    assert m.train["step"] == list(range(1, 41))
    assert m.train["grad_norm"][0] == 10.0
    assert m.val["step"] == [10, 20, 30, 40]
    assert m.test == {"loss": 1.5, "bpc": 2.164}
    assert m.torn_last_line
    s = summary(m)
    assert "40 train records" in s and "best val" in s and "test 2.1640 bpc" in s and "torn" in s


def test_read_metrics_errors(tmp_path):
    with pytest.raises(CharrnnError, match="no metrics.jsonl"):
        read_metrics(tmp_path / "nothing")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metrics.jsonl").write_text('{"kind": "train", "step": 1, "loss": 2}\n{oops\n{"kind": "val", "step": 1}\n')
    with pytest.raises(CharrnnError, match="line 2"):
        read_metrics(bad)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metrics.jsonl").write_text('{"kind": "config"}\n')
    with pytest.raises(CharrnnError, match="no train or val"):
        read_metrics(empty)
    (tmp_path / "folder" / "metrics.jsonl").mkdir(parents=True)  # it said "no metrics.jsonl in folder"
    with pytest.raises(CharrnnError, match="^.*/folder/metrics.jsonl is a folder; pass the run folder of a training run$"):
        read_metrics(tmp_path / "folder")


def test_a_file_that_is_no_metrics_log_is_named_so(tmp_path):
    # "line 1 is not valid JSON; the file is corrupt" of a text; "no train or val records yet" of "hello"
    text = tmp_path / "small.txt"
    text.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n")
    with pytest.raises(CharrnnError) as e:
        read_metrics(text)
    assert str(e.value) == (f"{text} is not a charrnn metrics.jsonl: line 1 is no JSON record; pass the run folder "
                            "of a training run")
    one = tmp_path / "one.json"
    one.write_text('"hello"\n[1, 2]\n')
    with pytest.raises(CharrnnError, match="is not a charrnn metrics.jsonl: it holds no train, val or test record"):
        read_metrics(one)


def test_a_log_whose_records_have_no_usable_step_is_called_corrupt(tmp_path):
    # "no train or val records yet; plot again once training has logged some": it never will
    (tmp_path / "metrics.jsonl").write_text('{"kind": "train", "step": "1", "loss": 2}\n'
                                            '{"kind": "val", "step": NaN, "loss": 2}\n{"kind": "test", "loss": 2}\n')
    with pytest.raises(CharrnnError, match=r"metrics.jsonl has 2 train or val records but none with a step that is a "
                                           r"finite number; the file is corrupt$"):
        read_metrics(tmp_path)


def test_a_run_whose_log_begins_with_a_damaged_line_is_called_corrupt(tmp_path):
    # "is not a charrnn metrics.jsonl ...; pass the run folder", when the run folder was passed
    (tmp_path / "metrics.jsonl").write_text('{"kind": "tr\x00\n{"kind": "train", "step": 1, "loss": 2}\n')
    with pytest.raises(CharrnnError, match=r"metrics.jsonl line 1 is not valid JSON; the file is corrupt$"):
        read_metrics(tmp_path)


def test_odd_values_and_lines_of_a_metrics_log_are_no_internal_error(tmp_path):
    run = _write_run(tmp_path / "run", torn=False)
    log = run / "metrics.jsonl"
    good = log.read_bytes()
    want = read_metrics(run)
    # a byte-order mark, as an editor saves it, is not a corrupt first line
    log.write_bytes(b"\xef\xbb\xbf" + good)
    assert read_metrics(run).train["step"] == list(range(1, 41))
    for ends in (b"\r\n", b"\r"):  # CR alone was read as one torn line: "no train or val records yet"
        log.write_bytes(good.replace(b"\n", ends))
        got = read_metrics(run)
        assert (got.train, got.val, got.test, got.torn_last_line) == (want.train, want.val, want.test, False), ends
    # a crash while appending, then blank lines (an editor's): the torn line is still the last record's
    log.write_bytes(good + b'{"kind": "train", "st' + b"\n\n \n")
    assert read_metrics(run).torn_last_line and read_metrics(run).train == want.train
    # a number too large for a float (OverflowError) is no value
    log.write_bytes(good + b'{"kind": "train", "step": ' + b"9" * 400 + b', "loss": 1}\n'
                    + b'{"kind": "train", "step": 41, "loss": ' + b"9" * 400 + b'}\n')
    m = read_metrics(run)
    assert m.train["step"][-1] == 41 and m.train["loss"][-1] is None
    # nested too deep for json (RecursionError): a corrupt line, or a torn last one
    deep = b"[" * 100_000 + b"]" * 100_000
    log.write_bytes(good + deep + b"\n" + good)
    with pytest.raises(CharrnnError, match="line 47 is not valid JSON; the file is corrupt"):
        read_metrics(run)
    log.write_bytes(good + deep)
    assert read_metrics(run).torn_last_line
    # a kind that is no string (a dict cannot be looked up by value): a record plot does not know
    log.write_bytes(good + b'{"kind": {"x": 1}, "step": 41, "loss": 1}\n{"kind": ["train"], "step": 42}\n')
    assert read_metrics(run).train["step"] == list(range(1, 41))


def test_a_log_of_val_records_without_a_finite_bpc_is_summarised(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"kind": "val", "step": 0, "loss": null, "bpc": null}\n')
    assert summary(read_metrics(tmp_path)) == "1 val record up to step 0, none with a finite bpc"  # it printed ""


def test_line_chart_draws_each_series_with_its_marker_and_a_legend():
    k = np.arange(50)
    chart = line_chart([("fast", k, 0.5 ** k), ("slow", k, 0.9 ** k), ("none", k, np.zeros(50))],
                       width=40, height=10, log_y=True, title="t", x_label="k").plain
    lines = chart.splitlines()
    grid = [line.split("┤", 1)[-1].split("│", 1)[-1] for line in lines if "┤" in line or "│" in line]
    assert len(grid) == 10 and all(len(row) == 40 for row in grid)  # the fixed-size grid
    assert grid[0][0] in MARKERS[:2]  # both series start at 1 = the top left corner
    assert MARKERS[0] in grid[-1]  # 0.5^49 ~ 2e-15 reaches the bottom row...
    assert MARKERS[1] not in grid[-1]  # ...0.9^49 ~ 6e-3 does not
    assert "1e+00" in chart and "1e-15" in chart  # 15 decades, every 3rd labelled, bottom too
    assert "20" in lines[-3] and "40" in lines[-3]  # x tick labels
    assert "fast" in chart and "slow" in chart and "none (no data)" in chart
    assert "└" in chart and "49" not in lines[0]


@pytest.mark.parametrize("xs, ys", [
    ([10, 20], [5e-324, 1e-323]),  # a span that underflows: math.log10(0), an internal error
    ([0, 5e-324], [1.0, 2.0]),
    ([1e20], [1.0]),  # 1e20 + 1 is 1e20: a span of 0 and NaN columns, an internal error
    ([1e20, 1e20 + 16384], [1.0, 2.0]),
])
def test_values_a_float_barely_tells_apart_get_an_axis(xs, ys, tmp_path):
    chart = line_chart([("a", xs, ys)], width=20, height=6).plain
    assert "*" in chart.split("└")[0]  # the points are drawn
    (tmp_path / "metrics.jsonl").write_text("".join(
        json.dumps({"kind": "train", "step": x, "loss": y, "grad_norm": 1.0}) + "\n" for x, y in zip(xs, ys)))
    r = runner.invoke(app, ["plot", str(tmp_path)])
    assert r.exit_code == 0, r.output


def test_line_chart_linear_axis_gaps_and_empty_input():
    chart = line_chart([("a", [0, 1, 2, 3, 4], [1.0, np.nan, 3.0, 2.0, 2.5])], width=20, height=6).plain
    rows = [line.split("┤", 1)[-1].split("│", 1)[-1] for line in chart.splitlines()[:6]]
    assert rows[-1].strip() == MARKERS[0]  # (0, 1) stands alone: the NaN cut the line
    assert rows[-1][1:11].strip() == ""
    assert "3 ┤" in chart and "1 ┤" in chart and "nan" not in chart
    assert "no data" in line_chart([("a", [], [])]).plain
    assert nice_ticks(0, 100, 5) == [0, 20, 40, 60, 80, 100]
    assert nice_ticks(1, 7, 4) == [2, 4, 6]


def test_points_too_large_to_scale_leave_a_gap(tmp_path):
    # 1e308 and -1e308 on one axis: its span overflowed to inf, an internal error
    chart = line_chart([("a", [0, 1, 2, 3], [1e308, 1.0, -1e308, 3.0])], width=20, height=6).plain
    assert "3 ┤" in chart and "1 ┤" in chart and "e+308" not in chart
    assert "(no data to plot)" in line_chart([("a", [1e308, -1e308], [1.0, 2.0])]).plain
    (tmp_path / "metrics.jsonl").write_text("".join(
        json.dumps({"kind": "train", "step": step, "loss": loss, "grad_norm": 1e300}) + "\n"
        for step, loss in ((5, 1e308), (6, -1e308), (7, 2.0))))
    r = runner.invoke(app, ["plot", str(tmp_path)])
    assert r.exit_code == 0, r.output
    # in the metrics, such a value is a gap in the line, as in the terminal's chart, not left out
    # (which drew a straight line across a blow-up)
    m = read_metrics(tmp_path)
    assert _xy(m.train, "loss")[0] == [5, 6, 7] and np.isnan(_xy(m.train, "loss")[1][:2]).all()
    pytest.importorskip("matplotlib")  # whose axes overflowed too: an internal error after the charts
    r = runner.invoke(app, ["plot", str(tmp_path), "--png", str(tmp_path / "p.png")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_checkpoint_names_its_runs_metrics_and_a_torn_line_may_end_inside_a_character(tmp_path):
    # a checkpoint, as the other commands take one, was read as text: a codec error
    run = _write_run(tmp_path / "run", torn=False)
    (run / "best.npz").write_bytes(b"PK\x03\x04\xd5 a checkpoint")
    with open(run / "metrics.jsonl", "ab") as f:
        f.write(b'{"kind": "sample", "text": "caf\xc3')  # torn inside the two bytes of an e-acute
    m = read_metrics(run / "best.npz")
    assert m.path == run / "metrics.jsonl" and m.torn_last_line and m.train["step"] == list(range(1, 41))
    with open(run / "metrics.jsonl", "ab") as f:
        f.write(b"\n{}\n")  # then it is no last line: the file is damaged
    with pytest.raises(CharrnnError, match="line 47 is not valid JSON; the file is corrupt"):
        read_metrics(run)


def test_cli_plot_draws_both_charts(tmp_path):
    run = _write_run(tmp_path / "run")
    r = runner.invoke(app, ["plot", str(run)])
    assert r.exit_code == 0, r.output
    for word in ("loss (nats)", "train loss", "val loss", "gradient norm before clipping", "best val"):
        assert word in r.stdout, word


def test_a_checkpoint_without_a_log_beside_it_is_named_as_typed(tmp_path, monkeypatch):
    # "no metrics.jsonl in ." named the folder alone, not the file given
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.npz").write_bytes(b"")
    with pytest.raises(CharrnnError, match=r"^no metrics.jsonl beside model.npz \(in \.\); pass the run folder"):
        read_metrics("model.npz")


def test_columns_0_is_no_terminal_of_no_width(tmp_path):
    # COLUMNS=0 made rich print in no columns at all: nothing, exit 0
    run = _write_run(tmp_path / "run")
    p = subprocess.run([sys.executable, "-m", "charrnn", "plot", str(run)], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "COLUMNS": "0"})
    assert p.returncode == 0, p.stderr
    assert "train loss" in p.stdout and "best val" in p.stdout
    p = subprocess.run([sys.executable, "-m", "charrnn", "sample", "--help"], capture_output=True, text=True,
                       timeout=60, env={**os.environ, "COLUMNS": "0"})
    assert p.returncode == 0 and "--temperature" in p.stdout, p.stderr


def test_a_fifo_or_a_device_is_said_to_be_no_regular_file(tmp_path):
    # "no metrics.jsonl in /dev/null", where the other commands say what it is
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "run").mkdir()
    os.mkfifo(tmp_path / "run" / "metrics.jsonl")
    for given, named in ((tmp_path / "fifo", tmp_path / "fifo"), ("/dev/null", "/dev/null"),
                         (tmp_path / "run", tmp_path / "run" / "metrics.jsonl")):
        with pytest.raises(CharrnnError, match=f"^{named} is not a regular file; pass the run folder of a training run$"):
            read_metrics(given)


def test_cli_plot_of_a_missing_run_exits_1(tmp_path):
    r = runner.invoke(app, ["plot", str(tmp_path / "nope")])
    assert r.exit_code == 1 and isinstance(r.exception, CharrnnError)
    # through the real entry point: one red line on stderr, exit code 1
    p = subprocess.run([sys.executable, "-m", "charrnn", "plot", str(tmp_path / "nope")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1
    assert "error:" in p.stderr and "metrics.jsonl" in p.stderr and "Traceback" not in p.stderr


def test_cli_plot_png_without_matplotlib(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    r = runner.invoke(app, ["plot", str(_write_run(tmp_path / "run")), "--png", str(tmp_path / "p.png")])
    assert r.exit_code == 1 and isinstance(r.exception, CharrnnError)
    assert "pip install matplotlib" in str(r.exception)


def test_a_run_whose_name_holds_dollars_is_drawn_as_named(tmp_path, monkeypatch):
    # matplotlib reads $...$ as math: a run named cost$^$ was an internal error (ValueError),
    # after the terminal's charts were lost; a $5 vs $6 lost its dollars to italics
    pytest.importorskip("matplotlib")
    from matplotlib.cbook import is_math_text

    import charrnn.plot as plot

    run = _write_run(tmp_path / "cost$^$")
    r = runner.invoke(app, ["plot", str(run), "--png", str(tmp_path / "p.png")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    drawn = []
    monkeypatch.setattr(plot, "save_figure", lambda fig, path: drawn.append(fig))
    plot.write_png(read_metrics(_write_run(tmp_path / "a $5 vs $6")), tmp_path / "p.png")
    # each $ escaped, which matplotlib draws as a $ (and so no math notation left in it)
    assert drawn[0].get_suptitle() == r"a \$5 vs \$6" and not is_math_text(drawn[0].get_suptitle())


def test_cli_plot_png(tmp_path):
    pytest.importorskip("matplotlib")
    # named so that it is said as it is: rich turned :fire: into an emoji, and a line break or an
    # ESC in the name reached the terminal
    out = tmp_path / "p:fire:\x1b[2J\nx.png"
    r = runner.invoke(app, ["plot", str(_write_run(tmp_path / "run:smile:")), "--png", str(out)])
    assert r.exit_code == 0, r.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert r.stdout.splitlines()[-1] == f"wrote {tmp_path}/p:fire:\\x1b[2J\\nx.png"


@pytest.mark.parametrize("command", ["plot", "gradflow"])
def test_matplotlibs_warnings_are_each_one_note(command, tmp_path):
    # a HOME it cannot write, or MPLCONFIGDIR naming a file or a folder it cannot write: matplotlib
    # warned of it in two lines of its own as it started, then drew into a temporary folder
    pytest.importorskip("matplotlib")
    png = tmp_path / "p.png"
    args = {"plot": ["plot", str(_write_run(tmp_path / "run"))],
            "gradflow": ["gradflow", "--cell", "rnn", "--hidden", "4", "--max-k", "2", "--windows", "1"]}[command]
    (tmp_path / "file").write_text("")
    env = dict(os.environ, MPLCONFIGDIR=str(tmp_path / "file"), PYTHONPATH=str(Path(__file__).parent.parent))
    r = subprocess.run([sys.executable, "-m", "charrnn", *args, "--png", str(png)], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", r.stderr
    # (why, in matplotlib's words: "mkdir -p failed for path ...: File exists"; and on a slow machine,
    # its note that it builds its font cache in the temporary folder, after 5 s)
    lines = [line for line in r.stderr.splitlines() if "building the font cache" not in line]
    assert len(lines) == 1 and lines[0].startswith("note: matplotlib cannot keep its settings where it looks for "
                                                   "them (") and f"{tmp_path}/file" in lines[0], r.stderr
    assert lines[0].endswith("): it uses a temporary folder, which makes --png slower; MPLCONFIGDIR chooses a folder")
    # matplotlib's other warnings, of a matplotlibrc of the user's, are not that note, but notes of
    # their own, each once: a font family it cannot find was one line for every text it drew
    (tmp_path / "matplotlibrc").write_text("foo: bar\nfont.family: NoSuchFont\nbackend: bogus\n")
    env["MPLCONFIGDIR"] = str(tmp_path / "settings")
    r = subprocess.run([sys.executable, "-m", "charrnn", *args, "--png", str(png)], capture_output=True, text=True,
                       env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", r.stderr
    assert [line for line in r.stderr.splitlines() if "building the font cache" not in line] == [
        "note: matplotlib: Bad key foo in file matplotlibrc, line 1 ('foo: bar')",
        "note: matplotlib: Bad value in file 'matplotlibrc', line 3 ('backend: bogus'): Key backend: 'bogus' is not a "
        "valid value for backend",  # (and not the name of every backend)
        "note: matplotlib: findfont: Font family 'NoSuchFont' not found.",
        "note: matplotlib: findfont: Font family ['NoSuchFont'] not found. Falling back to DejaVu Sans."], r.stderr


def test_characters_the_font_lacks_are_one_note(tmp_path):
    # a run named in Chinese: two warnings of two lines each for every character, with their
    # source lines
    pytest.importorskip("matplotlib")
    png = tmp_path / "p.png"
    # matplotlib's own settings (its DejaVu Sans, which has no Chinese), not a user's
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent.parent), MPLCONFIGDIR=str(tmp_path / "mpl"))
    r = subprocess.run([sys.executable, "-m", "charrnn", "plot", str(_write_run(tmp_path / "\u6f22\u5b57\u6f22")),
                        "--png", str(png)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", r.stderr
    assert r.stderr == "note: matplotlib's font lacks 2 characters of the names, drawn as boxes\n"


def test_a_log_too_large_to_draw_is_said_as_too_large_to_chart(tmp_path, monkeypatch):
    # the records were read, and the drawing ran out of memory: "out of memory; use a smaller
    # model, batch or window", none of which plot has
    import charrnn.plot as plot

    def no_room(m, **kwargs):
        raise MemoryError

    monkeypatch.setattr(plot, "charts", no_room)
    run = _write_run(tmp_path / "run")
    r = runner.invoke(app, ["plot", str(run)])
    assert r.exit_code == 1 and str(r.exception) == (f"{run}/metrics.jsonl is too large to chart in the memory there "
                                                     "is; free some memory")


def test_a_single_point_is_drawn_and_no_series_is_no_warning(tmp_path, monkeypatch):
    # one record: a line of one point, drawn as nothing ("wrote p.png", empty axes); a log of no
    # finite loss: matplotlib's warning of a legend with nothing in it, with its source line
    pytest.importorskip("matplotlib")
    import charrnn.plot as plot

    drawn = []
    monkeypatch.setattr(plot, "save_figure", lambda fig, path: drawn.append(fig))
    (tmp_path / "metrics.jsonl").write_text('{"kind": "train", "step": 1, "loss": 1.0, "grad_norm": 1.0}\n')
    plot.write_png(read_metrics(tmp_path), tmp_path / "p.png")
    loss, norm = (ax.lines[0] for ax in drawn[0].axes)
    assert loss.get_marker() == norm.get_marker() == "o"
    # a point beside a value too large to draw (a gap): alone as well
    (tmp_path / "metrics.jsonl").write_text('{"kind": "train", "step": 1, "loss": 2.0}\n'
                                            '{"kind": "train", "step": 2, "loss": 1e300}\n')
    plot.write_png(read_metrics(tmp_path), tmp_path / "p.png")
    assert drawn[-1].axes[0].lines[0].get_marker() == "o"
    (tmp_path / "metrics.jsonl").write_text('{"kind": "train", "step": 1, "loss": null}\n')
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot.write_png(read_metrics(tmp_path), tmp_path / "p.png")


def test_a_matplotlib_that_cannot_start_is_one_line_about_the_environment(monkeypatch):
    # MPLBACKEND=bogus, or a part of matplotlib missing: "internal error ...; please report it"
    matplotlib = pytest.importorskip("matplotlib")
    import matplotlib.pyplot  # noqa: F401  (the real one, before it is hidden below)

    def bogus(name):
        raise ValueError("Key backend: 'bogus' is not a valid value for backend; supported values are [...]")

    monkeypatch.setattr(matplotlib, "use", bogus)
    with pytest.raises(CharrnnError) as e:
        require_pyplot()
    assert str(e.value).startswith("--png needs matplotlib, which cannot start (ValueError: Key backend: 'bogus' is "
                                   "not a valid value for backend); check the MPLBACKEND")
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)  # `import matplotlib.pyplot` fails
    with pytest.raises(CharrnnError, match=r"cannot start \((ModuleNotFound|Import)Error"):
        require_pyplot()
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # not installed at all
    with pytest.raises(CharrnnError, match="which is not installed; install it with: pip install matplotlib"):
        require_pyplot()


def test_the_summary_of_extreme_values_stays_short(tmp_path):
    # a hand-edited loss of 1e308 printed all its 309 digits, a step of -1e149 its 150
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"kind": "train", "step": -1e149, "loss": 1e308}\n{"kind": "val", "step": 2, "bpc": 0.5}\n')
    assert summary(read_metrics(tmp_path)) == ("1 train record up to step -1e+149, last loss 1e+308; "
                                               "best val 0.5000 bpc at step 2")


def test_the_summary_gives_the_highest_step_of_a_log_that_runs_back(tmp_path):
    # a log joined by hand: the chart ran to step 50, and the summary said "up to step 30"
    records = [("train", 10), ("val", 40), ("train", 50), ("val", 20), ("train", 30)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"kind": kind, "step": step, "loss": 2.0 + step / 100})
                                                    + "\n" for kind, step in records))
    assert summary(read_metrics(tmp_path)) == ("3 train records up to step 50, last loss 2.3000; 2 val records up "
                                               "to step 40, none with a finite bpc")


def test_sixteen_series_and_more_never_share_a_marker_and_its_colour():
    # gradflow --cell all --layers 2 draws 16 series: with 8 marker and colour pairs, rnn L0 and
    # gru-cho L0 were both a cyan *
    from charrnn.termchart import marker

    assert len({marker(s)[0] for s in range(16)}) == 16
    assert len({marker(s) for s in range(128)}) == 128
    chart = line_chart([(f"s{s}", np.arange(3), np.full(3, s + 1.0)) for s in range(16)])
    legend = chart.plain.splitlines()[-1].split()
    assert legend[::2] == list(MARKERS) and legend[1::2] == [f"s{s}" for s in range(16)]


def test_a_large_file_that_is_no_log_is_refused_at_its_first_line_and_memory_said_as_plots(tmp_path, monkeypatch):
    # the whole file was read and split first: 2.2x a file's size in memory, for a corpus given
    # by mistake; and running out of memory gave training's advice (a smaller model, batch...)
    import tracemalloc

    words = b"the quick brown fox jumps over the lazy dog"
    for name, text in (("lines.txt", (words + b"\n") * 500_000), ("one line.txt", (words + b" ") * 500_000)):
        big = tmp_path / name  # 22 MB, with line breaks or none
        big.write_bytes(text)
        tracemalloc.start()
        try:
            with pytest.raises(CharrnnError, match="is not a charrnn metrics.jsonl: line 1 is no JSON record"):
                read_metrics(big)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 2_000_000, (name, peak)
    run = _write_run(tmp_path / "run")

    def no_memory(*a, **k):
        raise MemoryError

    monkeypatch.setattr(json, "loads", no_memory)
    with pytest.raises(CharrnnError, match=r"metrics.jsonl is too large to chart in the memory there is; free some memory$"):
        read_metrics(run)


def test_whole_steps_get_whole_ticks_and_close_values_labels_that_tell_them_apart():
    # k from 0 to 1 was labelled 0 0.2 0.4 ... 1; losses of 1.0001 to 1.0003 all read "1"
    lines = line_chart([("a", np.array([0, 1]), np.array([1.0001, 1.0003]))], width=30, height=6).plain.splitlines()
    assert lines[-2].split() == ["0", "1"]
    assert [line.split()[0] for line in lines if "┤" in line] == ["1.0003", "1.0002", "1.0001"]
    lines = line_chart([("a", np.array([0.0, 0.5]), np.array([1.0, 2.0]))], width=30, height=6).plain.splitlines()
    assert "0.2" in lines[-2].split()  # steps between whole numbers keep theirs
    lines = line_chart([("a", np.array([1_000_000, 1_000_200]), np.array([1.0, 2.0]))], width=40).plain.splitlines()
    assert lines[-2].split() == ["1e+06", "1.0001e+06", "1.0002e+06"]  # each read 1e+06


def test_a_run_whose_name_holds_controls_is_drawn_with_them_escaped(tmp_path, monkeypatch):
    # the title held the raw ESC: matplotlib's warning that its font lacks the glyph carried it
    # to the terminal
    pytest.importorskip("matplotlib")
    import charrnn.plot as plot

    drawn = []
    monkeypatch.setattr(plot, "save_figure", lambda fig, path: drawn.append(fig))
    plot.write_png(read_metrics(_write_run(tmp_path / "o\x1b[2J\nx$")), tmp_path / "p.png")
    assert drawn[0].get_suptitle() == r"o\x1b[2J\nx\$"


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="reads counted through /proc/self/io")
def test_a_file_of_one_long_line_is_refused_after_its_first_piece(tmp_path):
    # the rest of the long line was skipped, to its end, before its first piece was looked at
    big = tmp_path / "one line.txt"
    big.write_bytes(b"the quick brown fox " * 2_000_000)  # 40 MB, no line break

    def read_so_far():
        return int(re.search(r"rchar: (\d+)", open("/proc/self/io").read())[1])

    before = read_so_far()
    with pytest.raises(CharrnnError, match="is not a charrnn metrics.jsonl: line 1 is no JSON record"):
        read_metrics(big)
    assert read_so_far() - before < 2_000_000


def test_a_long_log_is_drawn_from_the_points_that_decide_its_cells(monkeypatch):
    # a line of 2 million points was drawn segment by segment in Python (43 s): the chart from
    # each column's first, lowest, highest and last points must be the one from all of them
    import charrnn.termchart as termchart

    rng = np.random.default_rng(7)
    cases = []
    for n in (3, 50, 257, 5000, 40000):
        xs = np.sort(rng.integers(0, n, n)).astype(float)  # repeated steps too (a resumed log's)
        ys = np.exp(rng.normal(size=n).cumsum() * 0.05) * rng.choice([1, 1, 1, 30], n)  # and spikes
        ys[rng.integers(0, n, n // 100)] = np.nan  # gaps
        cases += [([("a", xs, ys), ("b", xs[::3], ys[::3] * 1.1)], log_y, width)
                  for log_y in (False, True) for width in (20, 64)]
    thinned = [line_chart(series, width=width, log_y=log_y).plain for series, log_y, width in cases]
    monkeypatch.setattr(termchart, "_thinned", lambda cs, rows: (cs, rows))
    assert thinned == [line_chart(series, width=width, log_y=log_y).plain for series, log_y, width in cases]
