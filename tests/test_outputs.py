"""Files written beside what a command prints (`plot --png`, `gradflow --png`, `inspect --html`):
the name checked before the work, the file replaced whole or not at all."""
import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from charrnn.cli import app
from charrnn.errors import CharrnnError, UsageError, os_error_message
from charrnn.outputs import PNG, check_output, shown_name, write_output
from test_hostile import main_exits
from test_plot import _write_run

runner = CliRunner()


@pytest.mark.parametrize("name", ["chart", "chart.jpg", "best.npz", ".png", ""])
def test_a_png_name_that_is_no_png_file_is_a_usage_error_before_anything_is_drawn(name, tmp_path, monkeypatch,
                                                                                  capsys):
    # matplotlib wrote "chart" to chart.png and said "wrote chart"; "" wrote ./.png
    monkeypatch.chdir(tmp_path)
    (tmp_path / "best.npz").write_bytes(b"a model")
    code, stderr = main_exits(monkeypatch, capsys, "plot", _write_run(tmp_path / "run"), "--png", name)
    if name:
        assert code == 2 and stderr == f"error: --png {str(Path(name))!r}: give a file name ending in .png\n"
    else:  # as every file name given empty
        assert code == 2 and stderr.startswith("error: Invalid value for '--png': an empty name is no file or folder")
    assert capsys.readouterr().out == ""  # no chart printed first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.npz", "run"]
    assert (tmp_path / "best.npz").read_bytes() == b"a model"


def test_a_png_in_a_missing_folder_fails_before_the_charts(tmp_path):
    r = runner.invoke(app, ["plot", str(_write_run(tmp_path / "run")), "--png", str(tmp_path / "no" / "p.png")])
    assert r.exit_code == 1 and r.stdout == ""
    assert str(r.exception).startswith(f"cannot write {tmp_path / 'no' / 'p.png'}: there is no folder")


@pytest.mark.parametrize("parts", [("text.txt", "p.png"), ("text.txt", "a", "p.png")])
def test_a_file_where_the_png_s_folder_should_be_is_named(tmp_path, parts):
    (tmp_path / "text.txt").write_text("a text")  # it said "there is no folder text.txt"
    with pytest.raises(CharrnnError) as e:
        check_output(tmp_path.joinpath(*parts), "--png", PNG)
    assert str(e.value) == (f"cannot write {tmp_path.joinpath(*parts)}: {tmp_path / 'text.txt'} is a file, not a "
                            "folder; choose another --png path")
    assert e.value.exit_code == 1 and (tmp_path / "text.txt").read_text() == "a text"


def test_a_png_that_is_a_file_the_command_reads_is_refused(tmp_path):
    # gradflow --corpus chart.png --png chart.png, plot chart.png --png chart.png
    read = tmp_path / "chart.png"
    read.write_bytes(b"a text")
    with pytest.raises(UsageError) as e:
        check_output(read, "--png", PNG, {"--corpus": read, "CHECKPOINT": None})
    assert str(e.value) == f"--png {read} is the file --corpus names, which this command reads; choose another name"
    assert check_output(tmp_path / "new.png", "--png", PNG, {"--corpus": read}) == tmp_path / "new.png"


def test_a_folder_named_as_the_png_is_refused(tmp_path):
    (tmp_path / "p.png").mkdir()
    with pytest.raises(CharrnnError, match="it is a folder") as e:
        check_output(tmp_path / "p.png", "--png", PNG)
    assert e.value.exit_code == 1


def test_plot_without_matplotlib_says_so_before_the_charts(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    r = runner.invoke(app, ["plot", str(_write_run(tmp_path / "run")), "--png", str(tmp_path / "p.png")])
    assert r.exit_code == 1 and "pip install matplotlib" in str(r.exception) and r.stdout == ""


def test_a_write_that_fails_leaves_the_file_that_was_there(tmp_path):
    path = tmp_path / "p.png"
    path.write_bytes(b"the chart of yesterday")

    def full_disk(tmp):
        tmp.write_bytes(b"half a ch")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))

    with pytest.raises(CharrnnError) as e:
        write_output(path, full_disk)
    assert str(e.value) == f"cannot write {path}: No space left on device; free some disk space"
    assert path.read_bytes() == b"the chart of yesterday" and os.listdir(tmp_path) == ["p.png"]
    write_output(path, lambda tmp: tmp.write_bytes(b"today's"))
    assert path.read_bytes() == b"today's" and os.listdir(tmp_path) == ["p.png"]


def test_a_read_only_file_system_is_said_once():
    # "Read-only file system; the file system is read-only; choose another place"
    e = OSError(errno.EROFS, os.strerror(errno.EROFS), "/mnt/ro/p.png")
    assert os_error_message(e) == "/mnt/ro/p.png: Read-only file system; choose another place"


def test_a_run_folder_whose_name_is_not_utf8_is_charted(tmp_path):
    pytest.importorskip("matplotlib")
    run = _write_run(tmp_path / os.fsdecode(b"caf\xe9"))
    out = tmp_path / "p.png"
    r = runner.invoke(app, ["plot", str(run), "--png", str(out)])
    assert r.exit_code == 0, r.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shown_name(run.name) == "caf\ufffd"


def test_a_name_as_long_as_a_name_may_be_is_written(tmp_path):
    # the temporary beside it, ".NAME.<hex>.tmp", would be longer than the 255 bytes a name may
    # have: its name holds only the start of the file's
    path = tmp_path / ("b" * 251 + ".png")
    write_output(path, lambda tmp: tmp.write_bytes(b"a chart"))
    assert path.read_bytes() == b"a chart" and os.listdir(tmp_path) == [path.name]


def test_the_png_is_written_when_stdout_is_not_read_to_the_end(tmp_path):
    # `plot RUN --png p.png | head -1`: the chart came after the printing, which a reader gone
    # ends quietly (exit 1): no chart and not a word. It is drawn first now.
    pytest.importorskip("matplotlib")
    out = tmp_path / "p.png"
    read, write = os.pipe()
    os.close(read)  # a reader gone before the first line
    r = subprocess.run([sys.executable, "-m", "charrnn", "plot", str(_write_run(tmp_path / "run")), "--png", str(out)],
                       stdout=write, stderr=subprocess.PIPE, timeout=300,
                       env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent)))
    os.close(write)
    assert r.returncode == 1 and r.stderr == b"", r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_png_that_cannot_be_written_is_said_after_the_charts(tmp_path, monkeypatch):
    # written before the printing (above), a failure still leaves the charts printed, then says why
    pytest.importorskip("matplotlib")
    import charrnn.plot

    def full_disk(metrics, path):
        raise CharrnnError(f"cannot write {path}: No space left on device; free some disk space")

    monkeypatch.setattr(charrnn.plot, "write_png", full_disk)
    r = runner.invoke(app, ["plot", str(_write_run(tmp_path / "run")), "--png", str(tmp_path / "p.png")])
    assert r.exit_code == 1 and "best val" in r.stdout and "wrote" not in r.stdout
    assert str(r.exception).startswith(f"cannot write {tmp_path / 'p.png'}: No space left")
