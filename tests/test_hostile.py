"""Hostile inputs and environments at the command line: each ends in one line naming the problem
and a non-zero exit, never a traceback, and leaves what the user had in place."""
import errno
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from charrnn import cli, errors
from charrnn import train as train_module
from charrnn.cli import app
from charrnn.cells import OPTIONS as CELL_OPTIONS
from charrnn.checkpoint import load_checkpoint
from charrnn.schema import TRAINING
from charrnn.config import RESUME_MAY_CHANGE, TrainConfig, shown_setting
from charrnn.errors import CharrnnError, UsageError
from charrnn.train import Trainer, check_new_run_dir

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


def buffered_env():
    """The environment of a `python -m charrnn` as users run it: stdout and stderr buffered, as
    they are but for PYTHONUNBUFFERED (which some machines set), where what a failed write left
    in a buffer fails again at exit."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="300")
    env.pop("PYTHONUNBUFFERED", None)
    return env


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


@pytest.mark.skipif(not shutil.which("bash"), reason="needs bash")
@pytest.mark.parametrize("name", ["my run", "it's", "-dash", "line\nbreak", os.fsdecode(b"caf\xe9"), "c1\x85",
                                  "tab\tand\\backslash'", "txt.\u202eexe"])
def test_a_path_in_a_command_of_a_message_is_the_word_a_shell_reads_back(tmp_path, name):
    # "Continue with: charrnn train --resume checkpoints/my run" resumed checkpoints/my
    (tmp_path / name).write_text("")
    word = errors.one_line(errors.shell_word(name))  # as the message shows it
    said = subprocess.run(["bash", "-c", f"test -e {word} && printf %s {word}"], capture_output=True, cwd=tmp_path)
    assert said.returncode == 0 and said.stdout == os.fsencode(("./" if name.startswith("-") else "") + name), word


def test_a_name_that_would_turn_a_line_around_is_shown_with_escapes():
    # U+202E (right-to-left override) in a file name turned the rest of an error line around in a
    # terminal that lays out text both ways: "gpj.exe" read as "exe.jpg"; U+2028 broke a line
    assert errors.one_line("error: cannot read a\u202egpj.exe: x\u2028y\u2066z") == \
        "error: cannot read a\\u202egpj.exe: x\\u2028y\\u2066z"
    assert errors.one_line("caf\u00e9 \u05e9\u05dc\u05d5\u05dd") == "caf\u00e9 \u05e9\u05dc\u05d5\u05dd"  # letters stay


def test_an_error_line_is_said_where_memory_is_too_short_for_its_printing(monkeypatch, capfd):
    # `ulimit -v` with a log too large to chart: the error's frames still held the records read,
    # and importing rich to print the line ran out of memory: a traceback of 59 lines
    import gc
    import weakref

    import charrnn.plot

    class Records(list):
        pass

    held = []

    def read_metrics(run):
        records = Records(range(1000))
        held.append(weakref.ref(records))
        try:
            raise MemoryError
        except MemoryError:
            raise CharrnnError(f"{run} is too large to chart in the memory there is; free some memory") from None

    def print_line(*args, **kwargs):
        assert held[0]() is None, "the records are still held"
        raise MemoryError

    monkeypatch.setattr(charrnn.plot, "read_metrics", read_metrics)
    monkeypatch.setattr(cli.err, "print", print_line)
    monkeypatch.setattr(sys, "argv", ["charrnn", "plot", "big\x1brun"])
    gc.disable()  # freed as the last reference goes, not by a collection
    try:
        with pytest.raises(SystemExit) as exit:
            cli.main()
    finally:
        gc.enable()
    assert exit.value.code == 1
    assert capfd.readouterr().err == "error: big\\x1brun is too large to chart in the memory there is; free some memory\n"


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
    from test_api import fresh_python

    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"kind": "train", "step": 1, "loss": 2.0}\n')
    code = f"""
import os, sys
from charrnn import __main__ as entry, train

opened = train.open_run_file
def full(path, flags):  # every write of the metrics fails with ENOSPC
    return os.open("/dev/full", os.O_WRONLY) if path.name == "metrics.jsonl" else opened(path, flags)
train.open_run_file = full
sys.argv = ["charrnn", "train", {str(corpus)!r}, *{TINY!r}, "--max-steps", "2", "--out-dir", {str(tmp_path)!r},
            "--run", "r", "--quiet"]
entry.main()
"""
    r = fresh_python(code)
    assert r.returncode == 1
    note, line = r.stderr.splitlines()  # the note shows under --quiet too: the run replaces the file
    assert note == f"replacing metrics.jsonl in {run_dir}, left by a run that saved no checkpoint"
    assert "metrics.jsonl" in line and "No space left on device" in line


@pytest.mark.parametrize("name", [".lock", "metrics.jsonl", "samples.txt", "metrics.jsonl, on resuming",
                                  "samples.txt, on resuming"])
def test_a_link_in_a_run_folder_is_never_written_through(name, corpus, tmp_path):
    # a run folder from elsewhere, with `.lock -> ~/notes.txt`: the lock truncated the file it
    # named and wrote a pid into it; a new run emptied the metrics.jsonl of another run that its
    # metrics.jsonl linked to; a resume added lines to it, or rewrote it
    out, run_dir = tmp_path / "runs", tmp_path / "runs" / "r"
    args = ["train", corpus, *TINY, "--max-steps", "2", "--sample-every", "1", "--sample-length", "5",
            "--out-dir", out, "--quiet"]
    assert run_cli(*args, "--run", "other").returncode == 0
    file = name.split(",")[0]
    victim = tmp_path / "notes.txt" if file == ".lock" else out / "other" / file
    if file == ".lock":
        victim.write_text("precious\n")
    before = victim.read_bytes()
    args += ["--run", "r"]
    if name.endswith("on resuming"):
        assert run_cli(*args).returncode == 0
        (run_dir / file).unlink()
        # a setting changed: "changed on resume: --lr ..." was said before the refusal
        args = ["train", "--resume", run_dir, "--max-steps", "3", "--lr", "0.001", "--quiet"]
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / file).symlink_to(victim)
    r = run_cli(*args)
    if name in ("metrics.jsonl", "samples.txt"):  # a new run's: a dead run's log, which the run replaces
        assert r.returncode == 0 and not (run_dir / file).is_symlink(), r.stderr
    else:
        assert r.returncode == 1 and "is a symbolic link, where charrnn keeps a file of the run's own" in one_line(
            r.stderr)
        assert f"put a copy in its place: cp --remove-destination {victim} {run_dir / file}" in r.stderr
    assert victim.read_bytes() == before


@pytest.mark.parametrize("case", ["a link to itself, on resuming", "a lock linked to itself", "immutable, on resuming"])
def test_a_run_file_that_cannot_be_written_is_refused_in_one_line(case, corpus, tmp_path):
    # a link in a loop was an internal error (Path.resolve's RuntimeError); a log a resume cannot
    # write was refused only after "changed on resume: ..."
    out, run_dir = tmp_path / "runs", tmp_path / "runs" / "r"
    args = ["train", corpus, *TINY, "--max-steps", "2", "--out-dir", out, "--run", "r", "--quiet"]
    file = run_dir / (".lock" if "lock" in case else "metrics.jsonl")
    if "resuming" in case:
        assert run_cli(*args).returncode == 0
        args = ["train", "--resume", run_dir, "--max-steps", "3", "--lr", "0.001", "--quiet"]
    if "immutable" in case:
        if subprocess.run(["chattr", "+i", file], capture_output=True).returncode != 0:
            pytest.skip("chattr +i is not allowed here")
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        file.unlink(missing_ok=True)
        file.symlink_to(file.name)
    try:
        r = run_cli(*args)
    finally:
        subprocess.run(["chattr", "-i", file], capture_output=True)
    said = ("Operation not permitted" if "immutable" in case else
            "is a symbolic link, where charrnn keeps a file of the run's own, and it writes through no link; remove it")
    assert r.returncode == 1 and said in one_line(r.stderr)


@pytest.mark.parametrize("case", ["metrics.jsonl append-only", "samples.txt immutable, not sampled"])
def test_a_resume_takes_the_run_files_it_can_use_as_it_uses_them(case, corpus, tmp_path):
    # the check of the logs before a resume opened them to read and write, which refused an
    # append-only log (appended to) and a samples.txt the resume would only read
    run_dir = tmp_path / "r"
    assert run_cli("train", corpus, *TINY, "--max-steps", "2", "--sample-every", "2", "--sample-length", "5",
                   "--out-dir", tmp_path, "--run", "r", "--quiet").returncode == 0
    name, attribute = case.split()[0], "+a" if "append" in case else "+i"
    if subprocess.run(["chattr", attribute, run_dir / name], capture_output=True).returncode != 0:
        pytest.skip(f"chattr {attribute} is not allowed here")
    try:
        r = run_cli("train", "--resume", run_dir, "--max-steps", "3", "--lr", "0.001", "--quiet")
    finally:
        subprocess.run(["chattr", attribute.replace("+", "-"), run_dir / name], capture_output=True)
    assert r.returncode == 0 and "changed on resume: " in r.stderr, r.stderr
    assert '"step": 3' in (run_dir / "metrics.jsonl").read_text()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("command", ["train", "sample", "eval", "eval --per-line", "gradflow --json", "--help",
                                     "train --help"])
def test_standard_output_on_a_full_disk_is_named(command, corpus, tmp_path):
    # "No space left on device; free some disk space" and nothing more: after a run whose
    # checkpoints were all written, it read as if they had not been (typer's help too). Then,
    # what a failed write left in stdout's buffer failed again at exit: "Exception ignored ...",
    # exit 120
    if command not in ("train", "--help", "train --help"):
        assert run_cli("train", corpus, *TINY, "--max-steps", "2", "--out-dir", tmp_path, "--run", "m",
                       "-q").returncode == 0
    args = {"train": ["train", corpus, *TINY, "--max-steps", "2", "--out-dir", tmp_path, "--run", "r", "-q"],
            "sample": ["sample", tmp_path / "m", "--length", "20"], "eval": ["eval", tmp_path / "m", corpus],
            "eval --per-line": ["eval", tmp_path / "m", corpus, "--per-line"],
            "gradflow --json": ["gradflow", tmp_path / "m", "--corpus", corpus, "--max-k", "5", "--windows", "1",
                                "--json"], "--help": ["--help"], "train --help": ["train", "--help"]}[command]
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "charrnn", *map(str, args)], stdout=full, stderr=subprocess.PIPE,
                           text=True, env=buffered_env(), timeout=300)
    assert r.returncode == 1
    assert one_line(r.stderr) == "error: cannot write to standard output: No space left on device; free some disk space"
    if command == "train":
        assert load_checkpoint(tmp_path / "r" / "latest.npz")[1]["step"] == 2


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("args, code", [
    (["sample", "x.npz", "--length", "-1"], 2),  # typer's usage error
    (["sample", "x.npz", "--bogus"], 2),
    (["eval", "x.npz", "x.txt", "--batch", "0"], 2),
    (["sample", "x.npz"], 1),  # no such checkpoint
])
def test_an_error_that_cannot_be_said_keeps_its_exit_code(args, code, tmp_path):
    # the line failing with stderr on a full disk ended the command in a traceback to nowhere:
    # exit 1 for every error, a usage error's 2 included; then, the line left in stderr's buffer
    # failed again at exit: 120
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "charrnn", *args], stderr=full, stdout=subprocess.DEVNULL,
                           cwd=tmp_path, env=buffered_env(), timeout=300)
    assert r.returncode == code


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("stderr", ["a full disk", "a pipe whose reader is gone"])
@pytest.mark.parametrize("command", ["sample", "eval --per-line --skip-unknown", "train --resume -q"])
def test_a_note_that_cannot_be_said_does_not_fail_the_command(command, stderr, corpus, tmp_path):
    # with stderr on a full disk, a note failed the command (exit 1): sample printed no text,
    # a resume under -q did not train, eval printed its scores and then failed. Into a pipe whose
    # reader is gone, rich's print ended the command (exit 1) and sent stdout to /dev/null
    for run in ("shown", "full"):  # the same model twice: the command with stderr shown, then full
        assert run_cli("train", corpus, *TINY, "--max-steps", "2", "--out-dir", tmp_path, "--run", run,
                       "-q").returncode == 0
    odd = tmp_path / "odd.txt"
    odd.write_text("the quick fox\nZ\nthe lazy dog\n", encoding="utf-8")  # 'Z' is not in the model's text
    args, env = {  # the note each says: numba cannot read NUMBA_OPT; a line left out; a setting changed
        "sample": (["sample", "RUN", "--length", "40", "--seed", "5"], {"NUMBA_OPT": ""}),
        "eval --per-line --skip-unknown": (["eval", "RUN", odd, "--per-line", "--skip-unknown"], {}),
        "train --resume -q": (["train", "--resume", "RUN", "--max-steps", "4", "--clip-norm", "2", "-q"], {})}[command]
    env = {**buffered_env(), **env}

    def cmd(run):
        return [sys.executable, "-m", "charrnn", *[str(tmp_path / run) if a == "RUN" else str(a) for a in args]]

    shown = subprocess.run(cmd("shown"), capture_output=True, text=True, env=env, timeout=300)
    assert shown.returncode == 0 and shown.stderr.startswith(("note: ", "changed on resume: ")), shown.stderr
    if stderr == "a full disk":
        with open("/dev/full", "w") as full:
            r = subprocess.run(cmd("full"), stdout=subprocess.PIPE, stderr=full, text=True, env=env, timeout=300)
    else:
        read_end, write_end = os.pipe()
        os.close(read_end)
        try:
            r = subprocess.run(cmd("full"), stdout=subprocess.PIPE, stderr=write_end, text=True, env=env, timeout=300)
        finally:
            os.close(write_end)
    assert r.returncode == 0
    if command.startswith("train"):  # (its line holds the speed)
        (arrays, meta), (arrays_full, meta_full) = (load_checkpoint(tmp_path / run / "latest.npz")
                                                    for run in ("shown", "full"))
        assert meta_full["step"] == meta["step"] == 4 and arrays_full.keys() == arrays.keys()
        assert all(np.array_equal(arrays_full[k], arrays[k]) for k in arrays)
    else:
        assert r.stdout == shown.stdout and r.stdout


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("stderr", ["a full disk", "a full disk, unbuffered", "a pipe whose reader is gone, coloured"])
@pytest.mark.parametrize("command", ["eval", "train -q"])
def test_a_spinner_that_cannot_be_shown_does_not_fail_the_command(command, stderr, corpus, tmp_path):
    # rich wrote to stderr as it closed the spinner of "reading the text...", nothing, which
    # unbuffered (PYTHONUNBUFFERED=1, as many containers set it) is a write of its own: with stderr
    # on a full disk, eval printed no figure and a new run under -q trained nothing (exit 1 both).
    # Taking stderr for a terminal (FORCE_COLOR=1, as CI often sets it), rich met a pipe whose
    # reader was gone by pointing stdout at /dev/null and exiting 1 (Console.on_broken_pipe)
    assert run_cli("train", corpus, *TINY, "--max-steps", "2", "--out-dir", tmp_path, "--run", "m",
                   "-q").returncode == 0
    args = {"eval": ["eval", tmp_path / "m", corpus],
            "train -q": ["train", corpus, *TINY, "--max-steps", "2", "--out-dir", tmp_path, "--run", "r", "-q"]}[command]
    shown = run_cli(*args) if command == "eval" else None
    env = {**buffered_env(), **{"a full disk, unbuffered": {"PYTHONUNBUFFERED": "1"},
                                "a pipe whose reader is gone, coloured": {"FORCE_COLOR": "1"}}.get(stderr, {})}
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        with open("/dev/full", "w") as full:
            r = subprocess.run([sys.executable, "-m", "charrnn", *map(str, args)], stdout=subprocess.PIPE,
                               stderr=write_end if stderr.startswith("a pipe") else full, text=True, env=env,
                               timeout=300)
    finally:
        os.close(write_end)
    assert r.returncode == 0
    if command == "eval":
        assert r.stdout == shown.stdout and "nats/char" in r.stdout
    else:
        assert load_checkpoint(tmp_path / "r" / "latest.npz")[1]["step"] == 2


def test_a_spinner_on_a_terminal_whose_encoding_has_no_braille_turns_in_ascii(corpus, tmp_path):
    # rich's spinner is braille: on stderr encoded as ASCII (PYTHONIOENCODING=ascii, taken for a
    # terminal) its frames came out as the escapes \u280b, \u2819, ... before the text
    assert run_cli("train", corpus, *TINY, "--max-steps", "2", "--out-dir", tmp_path, "--run", "m",
                   "-q").returncode == 0
    env = dict(os.environ, PYTHONPATH=str(ROOT), FORCE_COLOR="1", PYTHONIOENCODING="ascii")
    r = subprocess.run([sys.executable, "-m", "charrnn", "eval", str(tmp_path / "m"), str(corpus)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and "nats/char" in r.stdout
    assert "reading the text..." in r.stderr and "\\u28" not in r.stderr, r.stderr


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


@pytest.mark.parametrize("command", ["sample", "eval --per-line", "eval"])
def test_an_output_encoding_that_cannot_write_the_text_is_said_in_one_line(command, tmp_path):
    # PYTHONIOENCODING=ascii (or an old locale): the sample, eval's lines, or its summary naming
    # the file, could not be written, an internal error
    from charrnn.checkpoint import save_checkpoint
    from charrnn.model import ModelSpec, init_params

    spec = ModelSpec("lstm", 3, 4, 1)
    config = {"cell": "lstm", "hidden": 4, "layers": 1, "batch": 2, "k1": 5, "k2": 5, "encoding": "utf-8"}
    save_checkpoint(tmp_path / "best.npz", {"params": init_params(spec, np.random.default_rng(0), np.float32)},
                    {"config": config, "vocab": ["\u4e2d", "\u6587", "\n"]})
    text = tmp_path / "t\u00fc.txt"
    text.write_text("\u4e2d\u6587\n\u6587\u4e2d\n", encoding="utf-8")
    args = {"sample": ["--length", "20"], "eval --per-line": [text, "--per-line"], "eval": [text]}[command]
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="300", PYTHONIOENCODING="ascii")
    r = subprocess.run([sys.executable, "-m", "charrnn", command.split()[0], str(tmp_path / "best.npz"),
                        *map(str, args)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 1
    line = one_line(r.stderr)
    assert "the character U+" in line and "cannot be written in the encoding ascii" in line, line
    assert "PYTHONIOENCODING=utf-8" in line, line


def test_what_numba_reads_but_the_environment_does_not_set_is_one_note(tmp_path):
    # an empty NUMBA_X= (as to unset it), and .numba_config.yaml's `opt: 3` (a number where numba
    # wants text): numba goes on without them, and said so with a traceback in its warning
    pytest.importorskip("yaml")
    (tmp_path / ".numba_config.yaml").write_text("opt: 3\n", encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(ROOT), NUMBA_DISABLE_PERFORMANCE_WARNINGS="")
    env.pop("NUMBA_OPT", None)
    r = subprocess.run([sys.executable, "-m", "charrnn", "gradcheck", "--cell", "rnn", "--hidden", "4"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 0 and "all tensors pass" in r.stdout, r.stderr
    assert sorted(r.stderr.splitlines()) == [
        "note: numba cannot read NUMBA_DISABLE_PERFORMANCE_WARNINGS='' (ValueError: invalid literal for int() with "
        "base 10: '') and goes on without it",
        "note: numba cannot read NUMBA_OPT='3' from .numba_config.yaml (ValueError: Environment variable `NUMBA_OPT` "
        "is set to an unsupported value '3', supported values are 0, 1, 2, 3, and 'max') and goes on without it"]


def test_a_file_name_that_is_not_utf8_trains_saves_and_resumes(corpus, tmp_path):
    # its path, in the checkpoint's JSON, could not be encoded: no checkpoint was ever saved, and
    # the error blamed the locale. In a UTF-8 locale (strict, as PYTHONIOENCODING=utf-8 makes
    # it) the name prints as its own bytes
    text = tmp_path / os.fsdecode(b"caf\xe9.txt")
    text.write_bytes(corpus.read_bytes())
    run = tmp_path / os.fsdecode(b"r\xe9")
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="300", PYTHONIOENCODING="utf-8")
    base = [sys.executable, "-m", "charrnn", "train"]
    tiny = ["--hidden", "8", "--batch", "2", "--k1", "8", "--eval-every", "2", "--time-limit", "0"]
    r = subprocess.run([*base, str(text), *tiny, "--max-steps", "2", "--out-dir", str(tmp_path), "--run", run.name],
                       capture_output=True, env=env, timeout=300)
    assert r.returncode == 0 and b"error" not in r.stderr and b"Traceback" not in r.stderr, r.stderr
    assert os.fsencode(run) in r.stdout
    # the start-up line shows them as every message does (it said corpus=['...\\udce9.txt'], run='r\\udce9')
    settings = r.stderr.splitlines()[0]
    assert b"caf\\xe9.txt']" in settings and b" run='r\\xe9' " in settings and b"udc" not in r.stderr, r.stderr
    assert load_checkpoint(run / "best.npz")[1]["config"]["corpus"] == [str(text)]
    r = subprocess.run([*base, "--resume", str(run), "--max-steps", "4"], capture_output=True, env=env, timeout=300)
    assert r.returncode == 0 and b"error" not in r.stderr and b"Traceback" not in r.stderr, r.stderr
    assert load_checkpoint(run / "latest.npz")[1]["step"] == 4


def test_an_error_names_a_byte_that_is_not_utf8_as_the_byte(corpus, tmp_path, monkeypatch, capsys):
    # "bin\udcff.txt looks like a binary file": Python's escape of the byte, which the user never saw
    binary = tmp_path / os.fsdecode(b"bin\xff.txt")
    binary.write_bytes(b"\x00")
    code, stderr = main_exits(monkeypatch, capsys, "train", binary, "--out-dir", tmp_path)
    assert code == 1 and stderr.startswith(f"error: {tmp_path}/bin\\xff.txt looks like a binary file"), stderr
    shutil.copy(corpus, tmp_path / "text.txt")  # in a folder: left out, with a note that names it so too
    code, stderr = main_exits(monkeypatch, capsys, "train", tmp_path, *TINY, "--max-steps", "1", "--out-dir",
                              tmp_path / "out", "-q")
    assert code == 0 and f"left out 1 file that is empty, binary or not UTF-8: {tmp_path}/bin\\xff.txt" in stderr
    # and in a usage error, which shows the value as repr ('\udcff' is not a valid float, it said)
    code, stderr = main_exits(monkeypatch, capsys, "sample", tmp_path / "m.npz", "--temperature", os.fsdecode(b"\xff"))
    assert code == 2 and "error: Invalid value for '--temperature': '\\xff' is not a valid float." in stderr, stderr


@pytest.mark.parametrize("value, shown", [
    (os.fsdecode(b"r\xff"), r"'r\xff'"),
    ([os.fsdecode(b"caf\xe9.txt"), "b.txt"], r"['caf\xe9.txt', 'b.txt']"),
    ("\\udcff", r"'\\udcff'"),  # a backslash of the text's own, then udcff: as it is
    ("\\" + os.fsdecode(b"\xff"), r"'\\\xff'"),  # a backslash, then the byte
])
def test_repr_shown_writes_the_bytes_of_a_name_that_is_not_utf8_as_bytes(value, shown):
    from charrnn.errors import repr_shown

    assert repr_shown(value) == shown


def test_a_name_that_is_not_utf8_and_cannot_be_written_is_not_blamed_on_the_locale(monkeypatch, capsys):
    def write_a_name(*a, **kw):
        os.fsdecode(b"caf\xe9").encode("utf-8")

    monkeypatch.setattr("charrnn.gradflow.measure", write_a_name)
    code, stderr = main_exits(monkeypatch, capsys, "gradflow", "--cell", "rnn", "--hidden", "4", "--max-k", "2")
    assert code == 1 and one_line(stderr) == ("error: a file or folder name holds the byte 0xE9, which is not UTF-8 "
                                              "and cannot be written here; rename it")


@pytest.mark.parametrize("args, message", [
    (["train", "--cell", "leaky", "--tau", "0"], "--tau 0 is out of range"),
    (["train", "--doc-sep", r"\x00"], "--doc-sep '\\x00' holds a NUL or a lone surrogate, which no text file holds"),
    # a bytes model's text may be binary, which holds NULs: said to be in no text file
    (["train", "--encoding", "bytes", "--doc-sep", r"\x00"],
     "--doc-sep '\\x00' holds a NUL, which a checkpoint cannot keep in its settings; choose another"),
    (["train", "--doc-sep", "x" * 101], "--doc-sep is 101 characters long"),
    # a bytes model counts the separator's UTF-8 bytes, which it said were characters
    (["train", "--encoding", "bytes", "--doc-sep", "\u20ac" * 40], "--doc-sep is 120 bytes long; give at most 100"),
    (["train", "--run", "a/b"], "--run 'a/b' is not a plain folder name"),
    (["train", "--val-fraction", "0.3", "--test-fraction", "0.3"], "--val-fraction plus --test-fraction"),
    (["gradflow", "--cell", "leaky", "--tau", "0"], "--tau 0 is out of range"),
    (["gradflow", "NOWHERE", "--hidden", "4"], "--hidden describes fresh models; a checkpoint is measured as it was trained: leave it out"),
])
def test_options_out_of_range_or_in_conflict_are_usage_errors(args, message, corpus, tmp_path, monkeypatch, capsys):
    # these were exit 1, where typer's own range errors, and --doc-sep '\q', are exit 2
    args = [str(tmp_path / a) if a == "NOWHERE" else a for a in args]
    if args[0] == "train":
        args += [str(corpus), "--out-dir", str(tmp_path / "out")]
    code, stderr = main_exits(monkeypatch, capsys, *args)
    assert code == 2 and one_line(stderr).startswith(f"error: {message}"), stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["sample", "eval --per-line", "eval", "gradcheck"])
def test_a_closed_stdout_is_one_line(command, tmp_path):
    # `charrnn sample CKPT >&-`: an internal error (sys.stdout is None); eval's figures went nowhere, exit 0
    from charrnn.checkpoint import save_checkpoint
    from charrnn.model import ModelSpec, init_params

    spec = ModelSpec("lstm", 3, 4, 1)
    config = {"cell": "lstm", "hidden": 4, "layers": 1, "batch": 2, "k1": 5, "k2": 5, "encoding": "utf-8"}
    save_checkpoint(tmp_path / "best.npz", {"params": init_params(spec, np.random.default_rng(0), np.float32)},
                    {"config": config, "vocab": ["a", "b", "\n"]})
    (tmp_path / "t.txt").write_text("ab\nba\n", encoding="utf-8")
    args = {"sample": [tmp_path / "best.npz", "--length", "20"], "eval": [tmp_path / "best.npz", tmp_path / "t.txt"],
            "eval --per-line": [tmp_path / "best.npz", tmp_path / "t.txt", "--per-line"],
            "gradcheck": ["--cell", "rnn", "--hidden", "4"]}[command]
    r = subprocess.run([sys.executable, "-m", "charrnn", command.split()[0], *map(str, args)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=300,
                       preexec_fn=lambda: os.close(1), env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 1 and one_line(r.stderr) == ("error: standard output is closed (>&-): there is nowhere to "
                                                        "write the result")


def test_a_bug_of_ours_is_one_line_and_can_show_its_traceback(tmp_path, monkeypatch, capsys):
    def broken(*a, **kw):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr("charrnn.gradflow.measure", broken)
    monkeypatch.setattr(sys, "argv", ["charrnn", "gradflow", "--cell", "rnn", "--hidden", "4", "--max-k", "2"])
    monkeypatch.delenv("CHARRNN_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as exit:
        cli.main()
    assert exit.value.code == 1
    line = one_line(capsys.readouterr().err)
    assert "internal error (ZeroDivisionError: division by zero)" in line and "CHARRNN_TRACEBACK=1" in line
    monkeypatch.setenv("CHARRNN_TRACEBACK", "1")
    with pytest.raises(ZeroDivisionError):
        cli.main()


def test_an_exception_whose_message_has_several_lines_is_still_one(monkeypatch, capsys):
    def broken(*a, **kw):
        raise ValueError("first part\n\nHINT:\n  second part")

    monkeypatch.setattr("charrnn.gradflow.measure", broken)
    monkeypatch.delenv("CHARRNN_TRACEBACK", raising=False)
    code, stderr = main_exits(monkeypatch, capsys, "gradflow", "--cell", "rnn", "--hidden", "4", "--max-k", "2")
    assert code == 1 and "internal error (ValueError: first part HINT: second part)" in one_line(stderr)


@pytest.mark.parametrize("variable, value, why", [
    ("NUMBA_NUM_THREADS", "0", "Number of threads specified must be > 0"),  # numba's import fails
    ("NUMBA_THREADING_LAYER", "no-such-layer", "The threading layer requested 'no-such-layer' is unknown"),
])  # the second fails as the first update starts numba's threads
def test_numba_that_cannot_start_is_the_environments_fault_said_in_one_line(variable, value, why, corpus, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="300", **{variable: value})
    r = subprocess.run([sys.executable, "-m", "charrnn", "train", str(corpus), "--hidden", "8", "--batch", "2",
                        "--k1", "8", "--max-steps", "1", "--out-dir", str(tmp_path), "--run", "r", "-q"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 1
    line = one_line(r.stderr)
    assert line.startswith(f"error: numba cannot start: ValueError: {why}") and "NUMBA_* environment" in line, line


@pytest.mark.parametrize("command", ["train", "gradcheck"])
@pytest.mark.parametrize("variable, value, why", [
    ("NUMBA_NUM_THREADS", "abc", "ValueError: invalid literal for int() with base 10: 'abc'"),
    ("NUMBA_OPT", "x", "ValueError: Environment variable `NUMBA_OPT` is set to an unsupported value 'x', "
                       "supported values are 0, 1, 2, 3, and 'max'"),
])
def test_a_numba_value_numba_cannot_read_is_said_in_one_line(command, variable, value, why, corpus, tmp_path):
    # numba warned with a traceback in its text, ignored the value and went on
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="400", **{variable: value})
    args = {"train": ["train", str(corpus), "--hidden", "8", "--batch", "2", "--k1", "8", "--max-steps", "1",
                      "--out-dir", str(tmp_path), "--run", "r", "-q"],
            "gradcheck": ["gradcheck", "--cell", "rnn", "--hidden", "4"]}[command]
    r = subprocess.run([sys.executable, "-m", "charrnn", *args], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert one_line(r.stderr) == (f"error: numba cannot start: it cannot read {variable}={value!r} ({why}); check the "
                                  "NUMBA_* environment variables, and that numba is installed as the README says")
    assert not (tmp_path / "r").exists()



@pytest.mark.parametrize("command", ["train", "gradcheck"])
def test_numba_with_its_compiler_off_is_said_in_one_line(command, corpus, tmp_path):
    # the kernels' intrinsics raised NotImplementedError, reported as an internal error of ours
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="400", NUMBA_DISABLE_JIT="1")
    args = {"train": ["train", str(corpus), "--hidden", "8", "--batch", "2", "--k1", "8", "--max-steps", "1",
                      "--out-dir", str(tmp_path), "--run", "r", "-q"],
            "gradcheck": ["gradcheck", "--cell", "rnn", "--layers", "1", "--hidden", "2", "--steps", "2"]}[command]
    r = subprocess.run([sys.executable, "-m", "charrnn", *args], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert one_line(r.stderr) == ("error: numba's compiler is off (NUMBA_DISABLE_JIT=1), and the kernels need it: "
                                  "unset NUMBA_DISABLE_JIT")
    assert not (tmp_path / "r").exists()


def test_a_name_holding_a_line_break_or_an_escape_cannot_forge_a_line(corpus, tmp_path):
    # a note named the file as it is: "left out 1 file ...: p/evil" and then a line of its own,
    # "error: fake message.txt", under a run that went on to exit 0; an escape coloured the terminal
    folder = tmp_path / "p"
    folder.mkdir()
    shutil.copy(corpus, folder / "a.txt")
    (folder / "evil\nerror: fake \x1b[31mmessage.txt").write_bytes(b"caf\xe9\n")  # not UTF-8: left out
    r = run_cli("train", folder, *TINY, "--max-steps", "1", "--out-dir", tmp_path / "runs", "--quiet")
    assert r.returncode == 0, r.stderr
    assert not any(line.startswith("error") for line in r.stderr.splitlines()) and "\x1b" not in r.stderr
    assert "evil\\nerror: fake \\x1b[31mmessage.txt" in r.stderr, r.stderr
    r = run_cli("train", folder / "evil\nerror: fake \x1b[31mmessage.txt", *TINY, "--out-dir", tmp_path / "runs")
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1 and "\x1b" not in r.stderr, r.stderr
    # the run's folder, in the line that starts the run and the one that ends it (stdout)
    r = run_cli("train", corpus, *TINY, "--max-steps", "1", "--out-dir", tmp_path / "evil\nerror: fake \x9b31m")
    assert r.returncode == 0, r.stderr
    for said in (r.stdout, r.stderr):
        assert not any(line.startswith("error") for line in said.splitlines()) and "\x9b" not in said, said
    assert "evil\\nerror: fake \\x9b31m" in r.stdout, r.stdout

def test_brackets_in_names_print_as_they_are(corpus, tmp_path):
    # rich would read "[red]" as a style and fail on "[/oops]", a closing tag without an opening
    # one, and turn ":smile:" into an emoji
    out_dir, name = tmp_path / "[/oops]", "[red]x:smile:[y]"
    r = runner.invoke(app, ["train", str(corpus), *TINY, "--max-steps", "2", "--out-dir", str(out_dir),
                            "--run", name])
    assert r.exit_code == 0, r.output
    assert f"checkpoints in {out_dir / name}" in r.stdout
    assert f"run={name}" in r.stderr and (out_dir / name / "latest.npz").is_file()


# Ctrl-C; and SIGUSR1, which Open MPI's mpiexec passes on to the ranks (README: Training on a
# cluster) and Slurm's --signal sends
@pytest.mark.parametrize("stop", ["SIGINT", pytest.param("SIGUSR1", marks=pytest.mark.skipif(
    not hasattr(signal, "SIGUSR1"), reason="no SIGUSR1 on this system"))])
def test_a_stop_signal_saves_and_exits_130_whatever_the_run_is_called(corpus, tmp_path, stop):
    run_dir = tmp_path / "[/oops]" / "[red]x"
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="300")
    proc = subprocess.Popen([sys.executable, "-m", "charrnn", "train", str(corpus), *TINY, "--time-limit", "600",
                             "--out-dir", str(run_dir.parent), "--run", run_dir.name], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 240
    while not (metrics.exists() and metrics.stat().st_size) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(getattr(signal, stop))
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert f"saved {run_dir / 'latest.npz'}" in stderr and "Traceback" not in stderr
    assert (run_dir / "latest.npz").is_file()


def test_a_stop_signal_ignored_on_purpose_stays_ignored_while_training(corpus, tmp_path):
    # a script's `charrnn train &` (a shell without job control starts it with Ctrl-C ignored):
    # once training began, the run took SIGINT back, and a Ctrl-C meant for the script stopped it
    def ignored():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if hasattr(signal, "SIGUSR1"):
            signal.signal(signal.SIGUSR1, signal.SIG_IGN)

    metrics = tmp_path / "r" / "metrics.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "charrnn", "train", str(corpus), *TINY, "--time-limit", "600",
                             "--out-dir", str(tmp_path), "--run", "r"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="300"), preexec_fn=ignored)
    try:
        deadline = time.time() + 240
        while not (metrics.exists() and metrics.stat().st_size) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        for stop in ("SIGINT", "SIGUSR1", "SIGINT"):
            if hasattr(signal, stop):
                proc.send_signal(getattr(signal, stop))
            time.sleep(0.5)
        assert proc.poll() is None  # still training
        proc.send_signal(signal.SIGTERM)  # not ignored: stops the run as ever
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130 and f"saved {tmp_path / 'r' / 'latest.npz'}" in stderr, stderr


@pytest.mark.parametrize("where", ["as typer builds the command", "as train starts", "as the command ends"])
def test_ctrl_c_outside_the_commands_handling_exits_130_without_a_traceback(where, corpus, monkeypatch, capsys):
    # a real SIGINT, before typer's own handling starts, before `train` has set up its own, or
    # after both, in cli.main's last lines; through the entry point, as `charrnn` runs
    def interrupted(*a, **kw):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)  # the interrupt comes first

    argv = ["charrnn", "train", str(corpus), "--max-steps", "1"]
    if where == "as typer builds the command":
        monkeypatch.setattr(cli, "app", interrupted)
    elif where == "as train starts":
        monkeypatch.setattr("charrnn.distributed.stop_at_once_until_training", interrupted)
    else:
        set_up = cli._set_up
        monkeypatch.setattr(cli, "_set_up", lambda: (set_up(), interrupted()))
        argv = ["charrnn", "train", "--help"]  # a command that ends at once
    assert entry_point_exits(monkeypatch, argv) == 130 and capsys.readouterr().err == ""


def entry_point_exits(monkeypatch, argv) -> int:
    """The exit code of the entry point's main() with `argv`; and then, its exit code settled,
    the process ignores stops to its end, SIGTERM too (a scheduler's, reaching this rank a moment
    after another: exit 15 and MPICH's report). The handlers are given back after."""
    from charrnn.__main__ import main
    from charrnn.distributed import StopsHeld

    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(cli, "owns_process", False)  # main() claims the process: given back after the test
    handlers = {s: signal.getsignal(s) for s in (*StopsHeld.SIGNALS, signal.SIGTERM)}
    try:
        with pytest.raises(SystemExit) as exit:
            main()
        assert [signal.getsignal(s) for s in handlers] == [signal.SIG_IGN] * len(handlers)
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
    return exit.value.code


def test_a_stop_as_the_entry_point_ignores_stops_keeps_the_exit_code(monkeypatch, capsys):
    # a second SIGTERM 2 ms after the first reached the entry point's last act, the ignoring of
    # the signals one by one, before its own turn: a traceback of KeyboardInterrupt
    from charrnn.distributed import HELD

    ignore = HELD.ignore
    calls = []

    def interrupted():
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # the interrupt comes first
        ignore()

    monkeypatch.setattr(HELD, "ignore", interrupted)
    monkeypatch.setattr(HELD, "seen", False)  # (a stop an earlier test sent after its command's end)
    assert entry_point_exits(monkeypatch, ["charrnn", "plot", "--help"]) == 0
    assert capsys.readouterr().err == "" and len(calls) == 2


def test_ctrl_c_while_the_entry_point_imports_exits_130_without_a_traceback():
    # at about 0.1 s a Ctrl-C landed in the entry point's first import (signal, in
    # distributed.py), before anything holds it: a traceback through the imports. The import
    # raises it here, as the signal did, in a process started as the `charrnn` script starts.
    code = """
import builtins, sys
real = builtins.__import__
def interrupted(name, globals=None, locals=None, fromlist=(), level=0):
    if level == 1 and name == "distributed" and (globals or {}).get("__name__") == "charrnn.__main__":
        raise KeyboardInterrupt
    return real(name, globals, locals, fromlist, level)
builtins.__import__ = interrupted
sys.argv = ["charrnn", "--help"]
from charrnn.__main__ import main
sys.exit(main())
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent)))
    assert (r.returncode, r.stderr, r.stdout) == (130, "", "")



@pytest.mark.parametrize("where", ["taken by the quick load of scipy's BLAS", "in the command",
                                   "reworded by the command"])
def test_ctrl_c_that_c_code_turns_into_another_error_still_exits_130(where, tmp_path):
    # Ctrl-C in a `charrnn sample`'s first quarter second landed in an extension module's import
    # (scipy's BLAS, importing numpy), which turned it into an ImportError; the quick load took
    # that, and numpy, left half imported, failed the command later: "internal error
    # (RecursionError ...)", exit 1. Here the interrupt comes as it did and is turned likewise.
    from test_api import fresh_python

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"kind": "train", "step": 1, "loss": 2.0, "grad_norm": 1.0}\n')
    code = f"""
import os, signal, sys, time
from charrnn import __main__ as entry, cli, plot

def cut_short(*args):
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
    except KeyboardInterrupt:
        if {where!r} == "in the command":
            raise ImportError("numpy._core.multiarray failed to import")
        if {where!r} == "reworded by the command":  # as plot.require_pyplot says an ImportError
            raise cli.CharrnnError("--png needs matplotlib, which cannot start (ImportError: ...)")

if {where!r} != "taken by the quick load of scipy's BLAS":
    plot.write_png = cut_short
else:
    cli.scipy_blas_alone = cut_short
sys.argv = ["charrnn", "plot", {str(run)!r}, "--png", {str(tmp_path / "p.png")!r}]
entry.main()
"""
    r = fresh_python(code)
    assert (r.returncode, r.stderr) == (130, ""), (r.returncode, r.stderr)
    assert not (tmp_path / "p.png").exists()

def test_a_second_ctrl_c_inside_a_callback_of_c_code_still_stops_at_once(corpus, tmp_path, monkeypatch, capsys):
    # Python code that C code calls back (numba loading kernels: llvmlite's object cache) cannot
    # pass an exception on: the second Ctrl-C's KeyboardInterrupt raised there was dropped, with
    # a traceback, and the update went on to save. libc's qsort stands for that C code here.
    import ctypes
    import ctypes.util

    from charrnn.train import Trainer

    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    compare = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)

    def twice(a, b):  # Ctrl-C, then Ctrl-C again, both while the callback runs
        for _ in range(2):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
        return 0

    update = Trainer.update

    def update_calling_back(self):
        if self.step == 0:
            libc.qsort((ctypes.c_int * 2)(), 2, ctypes.sizeof(ctypes.c_int), compare(twice))
            time.sleep(2)  # back in Python: the stop comes here, at once
        return update(self)

    monkeypatch.setattr(Trainer, "update", update_calling_back)
    code, stderr = main_exits(monkeypatch, capsys, "train", corpus, "--hidden", "8", "--batch", "2", "--k1", "8",
                              "--max-steps", "3", "--out-dir", tmp_path, "--run", "r", "-q")
    assert code == 130 and "Exception ignored" not in stderr and "interrupted at update" not in stderr, stderr
    assert stderr.splitlines() == ["stopped at once after update 0; nothing was saved yet"]
    assert not (tmp_path / "r" / "latest.npz").exists()  # stopped at once, nothing saved


@pytest.mark.parametrize("signum, said", [
    (signal.SIGINT, "stopping (Ctrl-C again: at once)"),
    # a scheduler's SIGTERM or a user's SIGUSR1 is not a Ctrl-C: the bar said "Ctrl-C again" for them too
    (signal.SIGTERM, "stopping on SIGTERM (a second stop: at once)"),
    (signal.SIGUSR1, "stopping on SIGUSR1 (a second stop: at once)"),
])
def test_the_progress_bar_says_at_once_that_a_stop_came(corpus, tmp_path, signum, said):
    # nothing showed that Ctrl-C was taken until the update (or a long validation) ended
    from charrnn.train import Trainer

    trainer = Trainer(TrainConfig(corpus=str(corpus), hidden=8, batch=4, k1=8, k2=8, out_dir=str(tmp_path), run="r"),
                      tmp_path / "r", say=lambda *_: None)
    with cli._TrainProgress(trainer) as progress:
        progress.update(trainer, None)
        task, (step, _, figures, _) = progress.progress.tasks[0], progress.progress.columns
        assert str(step.render(task)) == "step 0" and str(figures.render(task)).startswith("ep 0.00  loss -")
        trainer._on_stop_signal(signum, None)  # read as the display next refreshes
        assert str(step.render(task)) == said
        assert str(figures.render(task)) == ""  # room for it at 80 columns, where it was cut


def test_a_stop_once_the_run_has_taken_one_cannot_cut_off_its_last_line(corpus, tmp_path, monkeypatch, capsys):
    # a second Ctrl-C or SIGUSR1 just after the first ended the run (the progress bar closing, the
    # line being written) raised KeyboardInterrupt there: exit 130 and no line (seen under mpiexec)
    from charrnn.train import Trainer

    line = Trainer.stopped_line

    def stopped_again_while_said(self, **kw):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)
        return line(self, **kw)

    monkeypatch.setattr(Trainer, "stopped_line", stopped_again_while_said)
    update = Trainer.update

    def stopped(self):
        if self.step == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return update(self)

    monkeypatch.setattr(Trainer, "update", stopped)
    code, stderr = main_exits(monkeypatch, capsys, "train", corpus, *TINY, "--max-steps", "9", "--out-dir", tmp_path,
                              "--run", "s", "-q")
    assert code == 130 and stderr.splitlines() == [
        f"interrupted at update 3; saved {tmp_path / 's' / 'latest.npz'}. Continue with: charrnn train --resume "
        f"{tmp_path / 's'}"], stderr
    # and before the run takes a stop, one ends the command at once, as it did
    before = signal.getsignal(signal.SIGINT)
    taken = type("Run", (), {"signalled": False})()
    with pytest.raises(KeyboardInterrupt), cli._stops_once_taken_ignored(taken):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
    assert signal.getsignal(signal.SIGINT) is before


def test_a_sigterm_once_the_run_has_taken_a_stop_cannot_cut_off_its_line_nor_kill_it_before(corpus, tmp_path):
    # SIGTERM was left out of the signals held back while the line is said: "Terminated", exit 143.
    # Before training, in one process, it ends the command as Ctrl-C does: it killed it without a
    # word (exit 143) and left the run folder made for it
    from test_api import fresh_python

    code = f"""
import os, signal, sys, time
from charrnn import cli
from charrnn.train import Trainer
line = Trainer.stopped_line
def terminated_while_said(self, **kw):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.2)
    return line(self, **kw)
Trainer.stopped_line = terminated_while_said
update = Trainer.update
Trainer.update = lambda t: (t.step == 1 and t._on_stop_signal(signal.SIGTERM, None), update(t))[1]
sys.argv = ["charrnn", "train", {str(corpus)!r}, "--hidden", "8", "--batch", "4", "--k1", "8", "--k2", "8",
            "--max-steps", "9", "--out-dir", {str(tmp_path)!r}, *(["--run", RUN] if RUN else []), "-q"]
if RUN != "after":
    Trainer.run = lambda *a, **kw: (os.kill(os.getpid(), signal.SIGTERM), time.sleep(5))
cli.main()
"""
    r = fresh_python('RUN = "after"' + code)
    assert r.returncode == 130 and r.stderr.splitlines() == [
        f"interrupted at update 2; saved {tmp_path / 'after' / 'latest.npz'}. Continue with: charrnn train --resume "
        f"{tmp_path / 'after'}"], (r.returncode, r.stderr)
    r = fresh_python('RUN = "before"' + code)
    assert r.returncode == 130 and r.stderr == "", (r.returncode, r.stderr)
    r = fresh_python('RUN = ""' + code)  # a run folder named for it, made before training: gone again
    assert r.returncode == 130 and r.stderr == "", (r.returncode, r.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["after", "tiny.txt"]


def test_sigterm_ends_a_command_other_than_train_as_ctrl_c_does_and_its_file_half_written_goes(tmp_path):
    # by default SIGTERM (timeout's, a scheduler's) killed `inspect --html` or `plot --png` as
    # they wrote: exit 143, no word, and the hidden temporary of the page left beside it
    from test_api import fresh_python

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"kind": "train", "step": 1, "loss": 2.0, "grad_norm": 1.0}\n')
    code = f"""
import os, signal, sys, time
from pathlib import Path
from charrnn import __main__ as entry, plot
from charrnn.outputs import write_output

def killed_while_written(tmp):
    Path(tmp).write_bytes(b"half a picture")
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)

plot.write_png = lambda m, path: write_output(path, killed_while_written)
sys.argv = ["charrnn", "plot", {str(run)!r}, "--png", {str(tmp_path / "p.png")!r}]
entry.main()
"""
    r = fresh_python(code)
    assert r.returncode == 130 and "Traceback" not in r.stderr, (r.returncode, r.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_ends_sample_into_a_pipe_whose_reader_stopped_reading(stop, tmp_path):
    # a pager on its first page: the sample's last write, the line break and what was buffered,
    # waited for the reader for ever, stopped by SIGTERM or Ctrl-C alike. The pipe is shared, as
    # by `{ charrnn sample ...; charrnn sample ...; } | less`: made non-blocking, the next writer
    # would lose its text
    from charrnn.checkpoint import save_checkpoint
    from charrnn.model import ModelSpec, init_params

    spec = ModelSpec("lstm", 3, 4, 1)
    config = {"cell": "lstm", "hidden": 4, "layers": 1, "batch": 2, "k1": 5, "k2": 5, "encoding": "utf-8"}
    save_checkpoint(tmp_path / "best.npz", {"params": init_params(spec, np.random.default_rng(0), np.float32)},
                    {"config": config, "vocab": ["a", "b", "\n"]})
    read_end, write_end = os.pipe()
    p = subprocess.Popen([sys.executable, "-m", "charrnn", "sample", str(tmp_path / "best.npz"), "--length",
                          "10000000"], stdout=write_end, stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        select.select([read_end], [], [], 120)  # the sample has begun: the pipe fills at once
        time.sleep(1.0)
        p.send_signal(stop)
        _, stderr = p.communicate(timeout=60)
        assert os.get_blocking(write_end)  # the pipe as the next writer expects it
    finally:
        p.kill()
        os.close(read_end)
        os.close(write_end)
    assert p.returncode == 130 and "Traceback" not in stderr, (p.returncode, stderr)


def ctrl_c_twice():
    """A second Ctrl-C right after the first: the run stops at once, wherever it is."""
    os.kill(os.getpid(), signal.SIGINT)
    os.kill(os.getpid(), signal.SIGINT)


def ctrl_c_twice_before_update(monkeypatch, step):
    """ctrl_c_twice as the update after `step` starts."""
    from charrnn.train import Trainer

    update = Trainer.update

    def stopped_twice(self):
        if self.step == step:
            ctrl_c_twice()
        return update(self)

    monkeypatch.setattr(Trainer, "update", stopped_twice)


@pytest.mark.parametrize("when, stopped, held", [("in update 4", 4, 3), ("after update 6's save", 6, 6)])
def test_a_second_ctrl_c_names_the_checkpoint_a_resume_goes_on_from(corpus, tmp_path, monkeypatch, capsys, when,
                                                                     stopped, held):
    # it ended with exit 130 and no word: whether anything was saved, and where, was for the user to find;
    # and with the stop while the folder was synced after the save's rename, "latest.npz holds update 3"
    import charrnn.checkpoint as checkpoint

    if when == "in update 4":
        ctrl_c_twice_before_update(monkeypatch, 4)
    else:
        synced, saves = checkpoint._fsync_dir, []

        def stopped_twice(folder):
            saves.append(folder)
            if len(saves) == 2:  # update 6's (--checkpoint-every 3)
                ctrl_c_twice()
            synced(folder)

        monkeypatch.setattr(checkpoint, "_fsync_dir", stopped_twice)
    code, stderr = main_exits(monkeypatch, capsys, "train", corpus, *TINY, "--max-steps", "9", "--checkpoint-every", "3",
                              "--out-dir", tmp_path, "--run", "r", "-q")
    run_dir = tmp_path / "r"
    assert code == 130 and stderr.splitlines() == [
        f"stopped at once after update {stopped}; {run_dir / 'latest.npz'} holds update {held}. Continue with: "
        f"charrnn train --resume {run_dir}"], stderr


def test_a_second_ctrl_c_in_a_resumed_run_gives_again_what_the_resume_changed(corpus, tmp_path, monkeypatch, capsys):
    # "Continue with: charrnn train --resume RUN" resumed with the checkpoint's own settings: its
    # --max-steps, reached (exit 2), or its --lr; nothing had saved the changes yet
    code, _ = main_exits(monkeypatch, capsys, "train", corpus, *TINY, "--max-steps", "3", "--out-dir", tmp_path,
                         "--run", "r", "-q")
    assert code == 0
    ctrl_c_twice_before_update(monkeypatch, 5)
    run_dir = tmp_path / "r"
    code, stderr = main_exits(monkeypatch, capsys, "train", "--resume", run_dir, "--max-steps", "9", "--lr", "0.0005",
                              "--checkpoint-every", "100", "-q")
    assert code == 130 and stderr.splitlines()[-1] == (
        f"stopped at once after update 5; {run_dir / 'latest.npz'} holds update 3. Continue with: charrnn train "
        f"--resume {run_dir} --max-steps 9 --lr 0.0005 --checkpoint-every 100"), stderr


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="no SIGUSR1 on this system")
def test_a_second_stop_made_to_arrive_again_never_outlives_the_run(corpus, tmp_path):
    # The same in the run's last act, the test figure, with SIGUSR1: the stop made to arrive
    # again 10 ms on, sent for real then, came after run() had returned and killed the program
    # that went on. It may end the run (at once) or be dropped with it; never after it.
    from test_api import fresh_python

    code = f"""
import ctypes, ctypes.util, os, signal, time
from charrnn.config import TrainConfig
from charrnn.train import Interrupted, Trainer
libc = ctypes.CDLL(ctypes.util.find_library("c"))
compare = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
def twice(a, b):
    for _ in range(2):
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.05)
    return 0
calling_back = compare(twice)
evaluate = Trainer._evaluate
def evaluate_calling_back(self, ids, max_chars=0, stop=None):
    if ids is self.test_ids:
        libc.qsort((ctypes.c_int * 2)(), 2, ctypes.sizeof(ctypes.c_int), calling_back)
    return evaluate(self, ids, max_chars, stop)
Trainer._evaluate = evaluate_calling_back
cfg = TrainConfig(corpus=[{str(corpus)!r}], hidden=8, batch=2, k1=8, k2=8, max_steps=2, time_limit=0)
try:
    Trainer(cfg, {str(tmp_path / "r")!r}, say=lambda *a: None).run()
except (KeyboardInterrupt, Interrupted):
    pass
time.sleep(0.5)
print("went on", flush=True)
"""
    r = fresh_python(code)
    assert r.returncode == 0 and r.stdout == "went on\n", (r.returncode, r.stdout, r.stderr)
    assert "Exception ignored" not in r.stderr, r.stderr


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="no SIGUSR1 on this system")
def test_sigusr1_while_train_imports_ends_it_as_ctrl_c_does(corpus):
    # SIGUSR1 in a train command's first few tenths of a second, while cli is imported (here,
    # as cli.main starts), before train sets it up: by default it killed the process (shell: 138)
    from test_api import fresh_python

    code = f"""
import os, signal, sys, time
import charrnn.cli
def stopped_at_once():
    os.kill(os.getpid(), signal.SIGUSR1)
    time.sleep(5)
charrnn.cli.main = stopped_at_once
sys.argv = ["charrnn", "train", {str(corpus)!r}]
from charrnn.__main__ import main
main()
"""
    r = fresh_python(code)
    assert r.returncode == 130 and r.stderr == "", (r.returncode, r.stderr)


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="no SIGUSR1 on this system")
def test_before_training_starts_sigusr1_ends_the_command_as_ctrl_c_does():
    # SIGUSR1, as `charrnn train` sets it up once every rank has joined (cli.main):
    # KeyboardInterrupt, which ends the command with exit 130
    from charrnn.distributed import stop_at_once_until_training

    replaced = stop_at_once_until_training(one_process=False)
    try:
        assert list(replaced) == [signal.SIGUSR1]  # a rank: SIGTERM keeps its default (README)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(5)
    finally:
        for s, handler in replaced.items():
            signal.signal(s, handler)
    replaced = stop_at_once_until_training(one_process=True)
    try:  # one process: SIGTERM too, once; a second one kills as by default
        assert list(replaced) == [signal.SIGUSR1, signal.SIGTERM]
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    finally:
        for s, handler in replaced.items():
            signal.signal(s, handler)


# ---------------------------------------------------------------------------------------------
# Two processes, one run; what a killed process leaves behind; resuming


def config(corpus, out, **kw):
    base = dict(corpus=str(corpus), hidden=8, layers=1, batch=4, k1=8, k2=8, time_limit=0, eval_every=4,
                checkpoint_every=3, out_dir=str(out), run="r", seed=7)
    return TrainConfig(**{**base, **kw}).validate()


def trained_run(corpus, out, steps=3, **kw):
    trainer = Trainer(config(corpus, out, max_steps=steps, **kw), out / "r", say=lambda *_: None)
    trainer.run()
    return out / "r"


def hold_lock(run_dir):
    """Another process holding the run's lock, as a training charrnn does."""
    code = ("import sys, time; from charrnn.runlock import RunLock; lock = RunLock(sys.argv[1]).acquire(); "
            "print('locked', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run_dir)], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_a_folder_whose_lock_is_a_named_pipe_or_a_folder_is_said_to_hold_a_run(corpus, tmp_path):
    # asking whether another process trains the run opened .lock, which as a FIFO held the
    # command until something wrote to it
    import threading

    run_dir = trained_run(corpus, tmp_path)
    (run_dir / ".lock").unlink()
    for make, remove in ((os.mkfifo, os.unlink), (os.mkdir, os.rmdir)):
        make(run_dir / ".lock")
        said = []
        asking = threading.Thread(target=lambda: said.append(pytest.raises(CharrnnError, check_new_run_dir, run_dir)),
                                  daemon=True)
        asking.start()
        asking.join(10)
        assert not asking.is_alive() and "already holds a run; continue it with --resume" in str(said[0].value)
        remove(run_dir / ".lock")


def test_a_resume_refused_as_done_lets_the_folder_go(corpus, tmp_path, monkeypatch, capsys):
    # a program calling the command line twice: the refused resume kept the run's lock, and the
    # second call found the run "in use by another charrnn process" (its own pid)
    run_dir = trained_run(corpus, tmp_path)
    for _ in range(2):
        code, stderr = main_exits(monkeypatch, capsys, "train", "--resume", run_dir)
        assert code == 2 and "has already reached --max-steps 3" in stderr, stderr


def test_a_run_is_trained_by_one_process_at_a_time(corpus, tmp_path):
    run_dir = trained_run(corpus, tmp_path)
    other = hold_lock(run_dir)
    try:
        # a resume takes no --run: "choose another --run name" was no advice it could follow
        with pytest.raises(CharrnnError, match=rf"in use by another charrnn process \(pid {other.pid}\); wait for "
                                               rf"it to finish, then resume the run$"):
            Trainer.resume(run_dir, say=lambda *_: None)
        fresh = Trainer(config(corpus, tmp_path, run="r", max_steps=3), run_dir, say=lambda *_: None)
        with pytest.raises(CharrnnError, match="in use by another charrnn process"):
            fresh.run()
        r = runner.invoke(app, ["train", str(corpus), *TINY, "--max-steps", "3", "--out-dir", str(tmp_path),
                                "--run", "r"])
        # the command asks first whether the folder may take a new run: it holds one, in use (its
        # advice was --resume, which the lock then refused)
        assert r.exit_code == 1 and str(r.exception) == (
            f"{run_dir} holds a run that another charrnn process (pid {other.pid}) is training; wait for it to "
            f"finish, then continue it with --resume {run_dir}, or choose another --run name")
        # a new run into a folder that holds none yet, but is locked: the lock says so
        empty = tmp_path / "new"
        empty.mkdir()
        other_new = hold_lock(empty)
        try:
            r = runner.invoke(app, ["train", str(corpus), *TINY, "--max-steps", "3", "--out-dir", str(tmp_path),
                                    "--run", "new"])
            assert r.exit_code == 1 and str(r.exception).endswith(
                "in use by another charrnn process (pid %d); wait for it to finish, or choose another --run name"
                % other_new.pid)
        finally:
            other_new.kill()
            other_new.wait()
    finally:
        other.kill()  # SIGKILL: the lock goes with the process
        other.wait()
    resumed = Trainer.resume(run_dir, say=lambda *_: None, max_steps=6)
    resumed.run()
    assert resumed.step == 6
    # run() again, as the API may call it: the lock taken anew, with a resume's advice
    resumed.cfg.max_steps = 8
    other = hold_lock(run_dir)
    try:
        with pytest.raises(CharrnnError, match="in use by another charrnn process .*; wait for it to finish, then "
                                               "resume the run$"):
            resumed.run()
    finally:
        other.kill()
        other.wait()



def test_a_full_disk_as_the_lock_is_taken_is_said_with_the_lock_files_name(tmp_path, monkeypatch):
    # "No space left on device; free some disk space", naming no file
    import re

    from charrnn import runlock

    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(runlock.os, "write", full)
    with pytest.raises(CharrnnError, match=f"^{re.escape(str(tmp_path / 'r' / '.lock'))}: No space left on device"):
        runlock.RunLock(tmp_path / "r").acquire()

def test_a_run_on_a_read_only_file_system_is_told_how_to_resume_it(corpus, tmp_path, monkeypatch):
    # "...: Read-only file system; choose another place", where a resume takes no other place
    from charrnn import runlock

    run_dir = trained_run(corpus, tmp_path)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    open_ = os.open

    def read_only(path, flags, *args):  # as a disk mounted read-only refuses the lock file
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return open_(path, flags, *args)

    monkeypatch.setattr(runlock.os, "open", read_only)
    with pytest.raises(CharrnnError, match=re.escape(f"{run_dir} is on a read-only file system, and a run resumes in "
                                                     "its own folder: copy the folder where it can be written, and "
                                                     "resume the copy")):
        Trainer.resume(run_dir, say=lambda *_: None, max_steps=4)
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before
    with pytest.raises(CharrnnError, match=re.escape(f"{run_dir / '.lock'}: Read-only file system; choose another "
                                                     "place")):
        runlock.RunLock(run_dir).acquire()  # a new run can choose another place


def test_a_save_killed_midway_leaves_no_temporary_for_long(corpus, tmp_path):
    run_dir = trained_run(corpus, tmp_path)
    # a save that hangs where the data is complete but not yet renamed, then kill -9
    code = ("import os, sys, time, numpy as np; from charrnn import checkpoint; "
            "os.fsync = lambda fd: (print('writing', flush=True), time.sleep(600)); "
            "checkpoint.save_checkpoint(sys.argv[1], {'params': np.zeros(100_000, np.float32)}, {})")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run_dir / "latest.npz")], stdout=subprocess.PIPE,
                            text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.stdout.readline().strip() == "writing"
    proc.kill()
    proc.wait()
    stale = [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]
    assert len(stale) == 1 and stale[0].name.startswith(".latest.npz.") and stale[0].stat().st_size > 400_000
    resumed = Trainer.resume(run_dir, say=lambda *_: None, max_steps=4)  # latest.npz is the old, whole one
    resumed.run()
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]
    assert resumed.step == 4



def test_a_log_rewrite_cut_short_leaves_no_copy_of_the_log_for_long(corpus, tmp_path, monkeypatch):
    # the rewrite of metrics.jsonl on resume goes through a temporary of a new name each time:
    # one that a Ctrl-C cut short stayed, and one that kill -9 left was never removed
    run_dir = trained_run(corpus, tmp_path)
    with (run_dir / "metrics.jsonl").open("a") as log:
        log.write('{"kind": "train", "step": 99, "loss": 1.0}\n')  # after the checkpoint: cut on resume
    killed = run_dir / ".metrics.jsonl.0123456789ab.tmp"
    killed.write_text("a killed rewrite's\n")
    theirs = run_dir / ".notes.txt.0123456789ab.tmp"
    theirs.write_text("not charrnn's\n")

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        Trainer.resume(run_dir, say=lambda *_: None, max_steps=4).run()
    monkeypatch.undo()
    assert sorted(p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")) == [theirs.name]

def test_a_new_run_does_not_append_to_a_dead_runs_metrics(corpus, tmp_path):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"kind": "train", "step": 990, "loss": 9.0}\n')  # no checkpoint
    notes = []
    trainer = Trainer(config(corpus, tmp_path, max_steps=3), run_dir, say=notes.append)
    trainer.run()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [3]
    assert any("replacing" in n and "metrics.jsonl" in n for n in notes)
    resumed = Trainer.resume(run_dir, say=lambda *_: None, max_steps=6)  # a resumed run appends
    resumed.run()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [3, 6]


def train_options():
    """Every option of `charrnn train` and a value for it (its default, or a path)."""
    for p in typer.main.get_command(app).commands["train"].params:
        if p.name not in ("resume", "quiet"):
            yield p.name, p.default


def main_exits(monkeypatch, capsys, *args):
    """(exit code, stderr) of `charrnn ARGS` through the installed entry point, in this process."""
    monkeypatch.setattr(sys, "argv", ["charrnn", *map(str, args)])
    with pytest.raises(SystemExit) as exit:
        cli.main()
    return exit.value.code, capsys.readouterr().err



def test_a_stop_seen_by_an_earlier_call_of_main_does_not_end_the_next(tmp_path, monkeypatch, capsys):
    # a program calling cli.main() again after a stop: every later command exited 130 without a word
    from charrnn.distributed import HELD

    monkeypatch.setattr(HELD, "seen", True)  # as a SIGUSR1 before training left it
    code, err = main_exits(monkeypatch, capsys, "sample", tmp_path / "missing.npz")
    assert code == 1 and "no checkpoint at" in err, (code, err)
    assert not HELD.seen

def test_no_command_prints_the_help_and_no_empty_error(monkeypatch, capsys):
    # after the help came "error:  (see 'charrnn --help')", a line with nothing to say
    monkeypatch.setattr(sys, "argv", ["charrnn"])
    with pytest.raises(SystemExit) as exit:
        cli.main()
    out, err = capsys.readouterr()
    assert exit.value.code == 2 and "Usage:" in out and "train" in out and err == ""


@pytest.mark.parametrize("args, where", [(["plot", "run", "--png"], "charrnn plot"),
                                         (["sample", "--length"], "charrnn sample")])
def test_an_option_without_its_value_points_to_its_commands_help(monkeypatch, capsys, args, where):
    # click reports a missing value without the command's context: the line ended with no
    # "(see ... --help)", where every other usage error has one
    code, err = main_exits(monkeypatch, capsys, *args)
    assert code == 2 and err.rstrip("\n").endswith(f"(see '{where} --help')"), err


@pytest.mark.parametrize("option, value, shown", [
    # a file pasted as a value: its whole text was the line, pages long; its repr, as typer shows it
    ("--temperature", "line one\nline two " + "x" * 5000,
     "Invalid value for '--temperature': 'line one\\nline two xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx... (5,018 "
     "characters)' is not a valid float."),
    # more digits than Python reads as an int: "'111...' is not a valid int", of a whole number
    ("--seed", "1" * 5000, "Invalid value for '--seed': '11111111111111111111... (5,000 digits, more than the "
                           "4,300 a whole number is read from)' is not a valid int."),
    ("--seed", "-" + "1" * 300, "Invalid value for '--seed': -1111111111111111111... (300 digits) is not in the range "
                                "x>=0."),
    # given as --option=value: it was shown whole
    ("--temperature=", "y" * 3000, "Invalid value for '--temperature': '" + "y" * 57 + "... (3,000 characters)' is "
                                   "not a valid float."),
    # a value as long as a long path is shown whole
    ("--temperature", f"/{'d' * 150}/{'f' * 48}", f"Invalid value for '--temperature': '/{'d' * 150}/{'f' * 48}' is "
                                                 "not a valid float."),
], ids=["a file pasted", "too many digits", "a long number", "--option=value", "a long path"])
def test_a_long_value_is_cut_short_in_a_usage_error(monkeypatch, capsys, tmp_path, option, value, shown):
    given = [option + value] if option.endswith("=") else [option, value]
    code, err = main_exits(monkeypatch, capsys, "sample", tmp_path / "m.npz", *given)
    assert code == 2 and err.startswith(f"error: {shown} (see '") and err.endswith(" sample --help')\n"), err
    assert len(err.splitlines()) == 1


def test_a_split_that_leaves_half_the_text_for_training_is_accepted(corpus):
    # "must leave at least half the text for training" was said of 0.25 and 0.25
    assert TrainConfig(corpus=str(corpus), val_fraction=0.25, test_fraction=0.25).validate()
    with pytest.raises(UsageError, match="must leave at least half the text for training"):
        TrainConfig(corpus=str(corpus), val_fraction=0.25, test_fraction=0.26).validate()


@pytest.mark.parametrize("name, value", [(n, v) for n, v in train_options() if n in (*RESUME_MAY_CHANGE, "corpus")],
                         ids=lambda v: str(v))
def test_resume_takes_what_may_change_and_the_corpus(name, value, corpus, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "r"
    if name == "corpus":
        args = [str(corpus)]
    else:
        value = {"epochs": 1.0, "max_steps": 5, "time_limit": 60.0}.get(name, value)
        args = [f"--{name.replace('_', '-')}", str(value)]
    code, stderr = main_exits(monkeypatch, capsys, "train", "--resume", run_dir, *args)
    line = one_line(stderr)
    assert code == 1 and "no checkpoint at" in line, line  # accepted: it gets as far as looking for the checkpoint


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A run stopped by its --max-steps 3: a resume of it that gets past the settings ends
    at that limit, without training."""
    out = tmp_path_factory.mktemp("finished")
    text = out / "tiny.txt"
    text.write_text(TEXT, encoding="utf-8")
    return trained_run(text, out)


# for every setting a resume keeps: a value, as typed, that the run of `finished_run` has not
OTHER_THAN_THE_RUNS = {"encoding": "latin-1", "doc_sep": "\\n", "val_fraction": "0.2", "test_fraction": "0.2",
                       "cell": "gru", "hidden": "9", "layers": "2", "tau": "7", "spectral_radius": "0.5",
                       "leak": "0.5", "u_max": "1.5", "dropout": "0.1", "batch": "5", "k1": "9", "k2": "9",
                       "optimizer": "sgd", "weight_decay": "0.1", "eval_chars": "100", "seed": "8", "run": "other",
                       "out_dir": "elsewhere"}


@pytest.mark.parametrize("name", [n for n, _ in train_options() if n not in (*RESUME_MAY_CHANGE, "corpus", "init_from")])
def test_resume_refuses_settings_otherwise_than_the_runs(name, finished_run, monkeypatch, capsys):
    option = f"--{name.replace('_', '-')}"
    saved = load_checkpoint(finished_run / "latest.npz", schema=TRAINING)[1]["config"]
    other = OTHER_THAN_THE_RUNS[name]  # a setting added to train: give it a value here
    code, stderr = main_exits(monkeypatch, capsys, "train", "--resume", finished_run, option, other)
    line = one_line(stderr)
    unread = saved["cell"] not in CELL_OPTIONS.get(name, SimpleNamespace(cells=[saved["cell"]])).cells
    if unread:  # an option of other cells (the run's is an lstm): whatever its value, as for a new run
        assert code == 2 and f"{option} is an option of --cell " in line and "lstm (the run's) has no use" in line, line
        return
    shown = {"doc_sep": "'\\n'"}.get(name, other)  # (the separator as typed: the escape, read)
    assert code == 2 and "a resumed run keeps its model" in line and f"leave out {option} {shown} (" in line, line
    assert (f"(naming {Path(saved['out_dir']) / other if name == 'run' else Path(other) / saved['run']}, not the "
            f"run's folder {finished_run})" if name in ("run", "out_dir") else f"(it has {shown_setting(saved[name])})"
            ) in line, line
    # the run's own value, as the command that started it, given again with --resume, gives it, is
    # taken: the resume goes on to find the run done
    own = {"doc_sep": repr(saved["doc_sep"])[1:-1]}.get(name, str(saved[name]))
    code, stderr = main_exits(monkeypatch, capsys, "train", "--resume", finished_run, option, own)
    line = one_line(stderr)
    assert code == 2 and "has already reached --max-steps 3" in line, line


def test_resume_takes_the_folder_of_the_run_however_named(finished_run, monkeypatch, capsys):
    # --out-dir and --run say where the run is: compared as words, an absolute --out-dir was
    # refused for the relative one the run was started with, and a dated run's own name for ''
    monkeypatch.chdir(finished_run.parent.parent)
    relative = Path(finished_run.parent.name)
    for named in (["--out-dir", f"./{relative}/", "--run", "r"], ["--out-dir", finished_run.parent],
                  ["--run", "r"], ["--out-dir", f"{relative}/../{relative}"]):
        code, stderr = main_exits(monkeypatch, capsys, "train", "--resume", relative / "r", *named)
        assert code == 2 and "has already reached --max-steps 3" in stderr, (named, stderr)
    code, stderr = main_exits(monkeypatch, capsys, "train", "--resume", relative / "r", "--run", "")
    assert code == 2 and f"leave out --run '' (naming {relative}, not the run's folder {relative / 'r'})" in stderr


def test_resume_api_refuses_settings_that_change_the_run(corpus, tmp_path):
    run_dir = trained_run(corpus, tmp_path)
    with pytest.raises(CharrnnError, match=re.escape("leave out --hidden 16 (it has 8), --batch 2 (it has 4) ")):
        Trainer.resume(run_dir, hidden=16, batch=2, lr=0.1)
    with pytest.raises(UsageError, match=re.escape("no such setting: --max-step")):  # a slip was no setting it kept
        Trainer.resume(run_dir, max_step=9)
    said = []
    resumed = Trainer.resume(run_dir, say=said.append, max_steps=9, hidden=8, batch=4, seed=7, cell="lstm")
    assert resumed.cfg.max_steps == 9 and said == ["changed on resume: --max-steps 3 -> 9"], said
    resumed.lock.release()


@pytest.mark.parametrize("cell, same, other, message", [
    ("indrnn", {"u_max": 0.0}, {"u_max": 1.5}, "leave out --u-max 1.5 (it has 1.0905077326652577, which --u-max 0 keeps)"),
    ("indrnn", {"u_max": 2.0 ** (1 / 8)}, {"u_max": 1.0}, "leave out --u-max 1.0 (it has "),
    ("leaky", {"tau": "1:50.0"}, {"tau": "2:50"}, "leave out --tau 2:50 (it has 1:50)"),
    ("esn", {"spectral_radius": 0.95, "leak": 1.0}, {"leak": 0.5}, "leave out --leak 0.5 (it has 1.0)"),
])
def test_resume_compares_cell_options_as_the_run_holds_them(corpus, tmp_path, cell, same, other, message):
    run_dir = trained_run(corpus, tmp_path, cell=cell)
    Trainer.resume(run_dir, say=lambda *_: None, **same).lock.release()
    with pytest.raises(UsageError, match=re.escape(message)):
        Trainer.resume(run_dir, **other)


def test_chars_per_second_after_resume_counts_this_sessions_updates(corpus, tmp_path, monkeypatch):
    clock = iter(range(10**6))  # every reading of the clock is one second later
    monkeypatch.setattr(train_module, "time", SimpleNamespace(perf_counter=lambda: float(next(clock))))
    run_dir = trained_run(corpus, tmp_path, steps=4)
    resumed = Trainer.resume(run_dir, say=lambda *_: None, max_steps=8)
    summary = resumed.run()
    # 4 updates of 1 s, each of k1 * batch = 8 * 4 characters
    assert summary["train_chars_per_sec"] == 32


def test_the_first_update_of_a_session_which_loads_the_kernels_is_no_speed(corpus, tmp_path, monkeypatch):
    # it counted in the first record's and the summary's chars/s: 744 chars/s, then 29,000, on a
    # cold cache; after a resume, the first record's average of 3 updates gave 1,159
    readings = iter([0.0, 100.0, *(100.0 + i for i in range(1, 10**6))])  # the first update: 100 s, then 1 s
    monkeypatch.setattr(train_module, "time", SimpleNamespace(perf_counter=lambda: next(readings)))
    run_dir = trained_run(corpus, tmp_path, steps=12)
    trains = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
              if '"train"' in line]
    assert [(r["step"], r["chars_per_sec"]) for r in trains] == [(10, 32.0), (12, 32.0)]  # k1 * batch = 32 a second
    assert trains[-1]["time"] >= 111  # the time trained still counts it (and the validations)
    readings = iter([0.0, 100.0, *(100.0 + i for i in range(1, 10**6))])
    resumed = Trainer.resume(run_dir, say=lambda *_: None, max_steps=21)
    assert resumed.run()["train_chars_per_sec"] == 32
    resumed_trains = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
                      if '"train"' in line][2:]
    assert [(r["step"], r["chars_per_sec"]) for r in resumed_trains] == [(20, 32.0), (21, 32.0)]
    readings = iter([0.0, 100.0, *(100.0 + i for i in range(1, 10**6))])
    once = Trainer.resume(run_dir, say=lambda *_: None, max_steps=22).run()  # one update: no speed to say
    assert once["train_chars_per_sec"] is None and once["updates"] == 1  # (it said 0.32, the loading's)
    last = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"train"' in line][-1]
    assert (last["step"], last["chars_per_sec"]) == (22, None)


@pytest.mark.parametrize("args, says", [
    (["train", "--hidden", "abc"], "'--hidden'"),
    (["train", "--hidden", "0"], "'--hidden': 0 is not in the range"),
    (["train", "--doc-sep", "\\q"], "'--doc-sep': \\q"),
    (["train", "--no-such-option"], "No such option: --no-such-option"),
    (["sample"], "Missing argument 'checkpoint'"),
    (["smaple"], "Did you mean 'sample'?"),
], ids=["not-a-number", "out-of-range", "bad-escape", "unknown-option", "missing-argument", "unknown-command"])
def test_a_bad_command_line_is_one_line_and_exit_2(args, says, monkeypatch, capsys):
    code, stderr = main_exits(monkeypatch, capsys, *args)
    line = one_line(stderr)
    assert code == 2 and line.startswith("error: ") and says in line and "--help" in line, line


def test_a_stream_started_closed_keeps_its_descriptor_from_the_next_file():
    # 2>&- left descriptor 2 free, and MPI's next file or socket took it: what was written to
    # stderr went into it (a job aborted at exit, 1 run in 6). The entry point holds it with
    # /dev/null; sys.stderr stays None, so that the commands still see the stream closed.
    code = ("import os, sys; from charrnn.__main__ import main; sys.argv = ['charrnn', '--help']\n"
            "try: main()\nexcept SystemExit: pass\n"
            "fd = os.open(os.devnull, os.O_RDONLY); sys.exit(0 if fd > 2 and sys.stderr is None else 3)")
    r = subprocess.run(["sh", "-c", f'exec "{sys.executable}" -c "{code}" 2>&- >/dev/null'], timeout=60,
                       env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent)))
    assert r.returncode == 0
