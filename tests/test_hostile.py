"""Hostile inputs and environments at the command line: each ends in one line naming the problem
and a non-zero exit, never a traceback, and leaves what the user had in place."""
import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from charrnn import cli
from charrnn.cli import app
from charrnn.config import TrainConfig
from charrnn.errors import CharrnnError

ROOT = Path(__file__).resolve().parent.parent
TEXT = "".join(f"{w} the {i % 7} quick brown fox jumps over {i % 13} lazy dogs.\n"
               for i, w in enumerate(["Alas", "Lo", "Hark", "Sing"] * 3))
TINY = ["--hidden", "8", "--batch", "4", "--k1", "8", "--k2", "8"]
runner = CliRunner()


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def run_cli(*args, **kw):
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="300")
    return subprocess.run([sys.executable, "-m", "charrnn", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300, **kw)


def one_line(stderr):
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.mark.parametrize("name", ["../outside", "a/b", "/tmp/absolute", "..", ".", "back\\slash"])
def test_run_names_stay_inside_out_dir(name, corpus, tmp_path):
    with pytest.raises(CharrnnError, match="not a plain folder name"):
        TrainConfig(run=name).validate()
    before = sorted(tmp_path.rglob("*"))
    r = runner.invoke(app, ["train", str(corpus), "--out-dir", str(tmp_path / "out"), "--run", name, "--max-steps", "1"])
    assert r.exit_code == 1 and "not a plain folder name" in str(r.exception)
    assert sorted(tmp_path.rglob("*")) == before  # nothing made, inside or outside


def test_an_output_folder_that_is_a_file(corpus, tmp_path):
    blocker = tmp_path / "out"
    blocker.write_text("mine\n")
    r = run_cli("train", corpus, *TINY, "--max-steps", "2", "--out-dir", blocker, "--run", "r", "--quiet")
    assert r.returncode == 1
    line = one_line(r.stderr)
    assert str(blocker) in line and "not a folder" in line
    assert blocker.read_text() == "mine\n"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_metrics_on_a_full_disk(corpus, tmp_path):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").symlink_to("/dev/full")  # every write fails with ENOSPC
    r = run_cli("train", corpus, *TINY, "--max-steps", "2", "--out-dir", tmp_path, "--run", "r", "--quiet")
    assert r.returncode == 1
    line = one_line(r.stderr)
    assert "metrics.jsonl" in line and "No space left on device" in line


def test_a_folder_that_cannot_be_written(corpus, tmp_path, monkeypatch, capsys):
    # root ignores permission bits, so the refusal is simulated where the run folder is made
    def refuse(self, *a, **kw):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    monkeypatch.setattr(sys, "argv", ["charrnn", "train", str(corpus), *TINY, "--max-steps", "1",
                                      "--out-dir", str(tmp_path / "ro"), "--run", "r", "-q"])
    with pytest.raises(SystemExit) as exit:
        cli.main()
    assert exit.value.code == 1
    line = one_line(capsys.readouterr().err)
    assert str(tmp_path / "ro" / "r") in line and "Permission denied" in line and "permissions" in line


def test_brackets_in_names_print_as_they_are(corpus, tmp_path):
    # rich would read "[red]" as a style and fail on "[/oops]", a closing tag without an opening one
    out_dir, name = tmp_path / "[/oops]", "[red]x[y]"
    r = runner.invoke(app, ["train", str(corpus), *TINY, "--max-steps", "2", "--out-dir", str(out_dir),
                            "--run", name])
    assert r.exit_code == 0, r.output
    assert f"checkpoints in {out_dir / name}" in r.stdout
    assert f"run={name}" in r.stderr and (out_dir / name / "latest.npz").is_file()


def test_ctrl_c_saves_and_exits_130_whatever_the_run_is_called(corpus, tmp_path):
    run_dir = tmp_path / "[/oops]" / "[red]x"
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="300")
    proc = subprocess.Popen([sys.executable, "-m", "charrnn", "train", str(corpus), *TINY, "--time-limit", "600",
                             "--out-dir", str(run_dir.parent), "--run", run_dir.name], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 240
    while not (metrics.exists() and metrics.stat().st_size) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert f"saved {run_dir / 'latest.npz'}" in stderr and "Traceback" not in stderr
    assert (run_dir / "latest.npz").is_file()
