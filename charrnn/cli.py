"""The command line: parse, call, print. Known errors, and failures of the system such as a full
disk, print one red line and exit 1."""
import gc
import importlib
import os
import math
import re
import signal
import sys
from contextlib import contextmanager, suppress
from importlib.machinery import EXTENSION_SUFFIXES
from importlib.util import find_spec, module_from_spec, spec_from_file_location
from pathlib import Path
from typing import List, Literal, Optional

import typer

from .cells import OPTIONS as CELL_OPTIONS
from .cells import choices_help
from .config import (CELLS, EVAL_RANGES, GRADCHECK_RANGES, GRADFLOW_RANGES, INSPECT_CHARS, INSPECT_RANGES, OPTIMIZERS,
                     RANGES, SAMPLE_RANGES, SCHEDULES, Range, shown_setting)
from .config import TrainConfig as _C  # the defaults of train's options
from .errors import (SHORT_REPR, CharrnnError, UsageError, as_flag, bytes_shown, controls_escaped, counted,
                     escapes_shown, flag, one_line, os_error_message, say_note, sent_nowhere)

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Character-level RNN, LSTM and GRU language models, trained on the CPU.")


class _Console:
    """A rich Console made at its first use: importing rich takes 20-60 ms, which a `charrnn
    sample` that prints its text with sys.stdout and goes well never needs."""

    def __init__(self, **options):
        self._options, self._console = options, None

    @property
    def console(self):
        """The Console itself, for what takes one (a Progress)."""
        if self._console is None:
            self._console = _rich_console(**self._options)
        return self._console

    def print(self, *args, **kw):
        try:
            self.console.print(*args, **kw)
        except OSError as e:
            if self._options.get("stderr") or isinstance(e, BrokenPipeError):  # (a reader gone: _printing)
                raise
            raise _not_written(e) from None

    @contextmanager
    def status(self, text):
        """rich's spinner, shown while something is read or compiled: one that stderr cannot take
        (2>/dev/full, a pipe whose reader is gone) is left out, as a note is, and the command goes
        on (rich wrote to the file as it closed the spinner, and the command ended, exit 1). Where
        stderr's encoding has no braille (PYTHONIOENCODING=ascii), it turns in ASCII: rich's own
        spinner printed its frames as the escapes '\\u280b', '\\u2819', ..."""
        spinner = self.console.status(text, spinner="line" if self.console.options.ascii_only else "dots")
        with suppress(OSError):
            spinner.start()
        try:
            yield
        finally:
            with suppress(OSError):  # also where it failed to start: off rich's stack of live displays
                spinner.stop()

    def print_table(self, table):
        """A table whose cells show all they hold: squeezed into a narrow terminal (COLUMNS=1, a
        small pane), rich cut them to an ellipsis or left them empty. A word too long for its
        column folds onto the next line; a terminal narrower than the table's longest words gets
        it whole, its lines wrapped by the terminal, as the charts' are (a fixed 64 columns)."""
        from rich.measure import Measurement

        for column in table.columns:
            column.overflow = "fold"
        console = self.console
        need = Measurement.get(console, console.options.update(max_width=10_000), table)
        if need.minimum <= console.width:
            return self.print(table)
        self._console = _rich_console(**self._options, width=need.maximum, file=console.file,
                                      force_terminal=console.is_terminal, color_system=console.color_system)
        try:
            self.print(table)
        finally:
            self._console = console

    def __getattr__(self, name):
        return getattr(self.console, name)


def _rich_console(**options):
    """A rich Console; on stderr, one that falls silent when the reader is gone: rich's own then
    points stdout at /dev/null and exits 1 (Console.on_broken_pipe), so that with stderr taken for
    a terminal (FORCE_COLOR=1) a spinner's first write ended `charrnn eval`, its figure unsaid."""
    from rich.console import Console

    if not options.get("stderr"):
        return Console(**options)

    class FallsSilent(Console):
        def on_broken_pipe(self):
            self.quiet = True

    return FallsSilent(**options)


def _let_out_or_dropped(*streams):
    """What each stream still buffers, written now, else sent nowhere (stdout and stderr are
    buffered, but for PYTHONUNBUFFERED)."""
    for stream in streams:
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            sent_nowhere(stream)


def _note(message: str):
    """A note on stderr: what a command read, left out or changed (errors.say_note). The
    command's result, on stdout or in a file, is what was asked for: a note that cannot be
    written does not stop it (progress that cannot be shown does)."""
    say_note(one_line(message))


def _sample_shown(text: str):
    """A sample taken while training, on stderr as it is laid out: its lines and tabs, with the
    other control characters in it escaped (errors.controls_escaped: a model's ESC never
    steers the terminal)."""
    say_note("\n".join("\t".join(map(controls_escaped, line.split("\t"))) for line in text.split("\n")))


def _not_written(e: OSError) -> CharrnnError:
    """A write to standard output that failed (a full disk, `> /dev/full`): said of stdout, as
    the error alone would read as if a checkpoint could not be written."""
    return CharrnnError(f"cannot write to standard output: {os_error_message(e)}")


# markup=False, emoji=False: run names, paths and messages print as they are, brackets and
# :smile: and all; styled text is built as rich Text. soft_wrap: a message is one line, wrapped
# by the terminal alone.
out = _Console(markup=False, emoji=False, soft_wrap=True)
err = _Console(stderr=True, markup=False, emoji=False, soft_wrap=True)


@app.callback()
def _root():
    """Character-level RNN, LSTM and GRU language models, trained on the CPU."""


def _cells(names: str):
    """The cells of --cell: comma-separated names, or all; each once, in the order given."""
    cells = []
    for name in names.lower().split(","):  # "" names no cell: said below
        name = name.strip()
        if name != "all" and name not in CELLS:
            raise typer.BadParameter(f"{name!r} is not one of {', '.join(CELLS)}, all", param_hint="--cell")
        cells += [c for c in (CELLS if name == "all" else [name]) if c not in cells]
    return cells


def _named_path(text: str) -> Path:
    """A file or folder named on the command line. An empty name (a script's unset variable) is
    refused: as a path it is the working folder, which a run would read whole, or write into."""
    if not text:
        raise typer.BadParameter("an empty name is no file or folder")
    return Path(text)


_named_path.__name__ = "path"  # the type typer's help shows for it, as for any Path


def _ranged(default, allowed: Range, help: str, kind: str = ""):
    """An option bounded by `allowed` (config.py): the help shows the range as typer shows its
    own, and a value outside it is a usage error (exit 2)."""
    bounded = allowed.low is not None or allowed.high is not None

    def check(value):
        if value is not None and value not in allowed:
            finite = not isinstance(value, float) or math.isfinite(value)  # "inf is not in the range x>=0"
            raise typer.BadParameter(f"{value} is not in the range {allowed}." if bounded and finite else
                                     f"{value} is not a finite number" + (f" in the range {allowed}." if bounded else "."))
        return value

    kind = kind or type(default).__name__
    return typer.Option(default, help=help, callback=check,
                        metavar=f"<{kind} range> [{allowed}]" if bounded else f"<{kind}>")


def _encoding(value: Optional[str]):
    """The canonical encoding name; an unknown one is a usage error."""
    from .corpus import check_encoding

    if value is None:
        return None
    try:
        return check_encoding(value)
    except CharrnnError as e:
        raise typer.BadParameter(str(e)) from None


# the escapes of --stop-at and --doc-sep: a shell passes '\n' as a backslash and an n
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}
# and those of a code: \xHH, \uHHHH, \UHHHHHHHH, with the hex digits each takes
_HEX_ESCAPES = {"x": 2, "u": 4, "U": 8}
# an escape (a surrogate pair of \uHHHH first), or a backslash before anything else or the end
_ESCAPE = re.compile(r"\\(u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}|"
                     + "".join(f"{code}[0-9a-fA-F]{{{digits}}}|" for code, digits in _HEX_ESCAPES.items())
                     + r".|$)", re.DOTALL)


def _unescape(value: str) -> str:
    """TEXT with \\n, \\t, \\r, \\\\, \\xHH, \\uHHHH and \\UHHHHHHHH replaced by what they stand for
    (a pair of \\uHHHH that is a surrogate pair, as JSON writes U+1D538, by its one character); any
    other backslash is a usage error."""

    def one(m):
        code = m.group(1)
        if code in _ESCAPES:
            return _ESCAPES[code]
        if code[:1] == "x" and len(code) > 1 and int(code[1:], 16) >= 0x80:
            # a byte, held as Python holds one that is no UTF-8: corpus.model_text reads it as
            # that byte for a bytes model, else as the character of its code
            return chr(0xDC00 + int(code[1:], 16))
        if code[:1] == "u" and "\\" in code:  # uD835\\uDD38: a high and a low surrogate
            high, low = int(code[1:5], 16), int(code[7:], 16)
            return chr(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))
        if code[:1] in ("u", "U") and len(code) > 1 and 0xD800 <= int(code[1:], 16) <= 0xDFFF:  # (U+DC80-U+DCFF: bytes)
            raise typer.BadParameter(f"\\{code} in '{value}' is a lone surrogate, which no text holds; "
                                     f"use \\xHH for a byte")
        if code[:1] == "U" and len(code) > 1 and int(code[1:], 16) > 0x10FFFF:
            raise typer.BadParameter(f"\\{code} in '{value}' is beyond Unicode's last character, U+10FFFF")
        if code[:1] in _HEX_ESCAPES and len(code) > 1:
            return chr(int(code[1:], 16))
        if code in _HEX_ESCAPES:  # too few hex digits after it (\x4): not an unknown escape
            digits = _HEX_ESCAPES[code]
            raise typer.BadParameter(f"the escape \\{code} in '{value}' takes {digits} hex digits "
                                     f"(\\{code}{'H' * digits})")
        shown = "a backslash at the end" if not code else f"\\{code}"
        raise typer.BadParameter(f"{shown} in '{value}' is no escape this option knows; use \\n, \\t, \\r, "
                                 f"\\xHH, \\uHHHH, \\UHHHHHHHH, or \\\\ for a backslash")

    return _ESCAPE.sub(one, value)


def _shown(value):
    """A setting in the start-up line, as messages show it (config.shown_setting: text with
    control characters, a separator, as repr), but an empty one as nothing (run=)."""
    return shown_setting(value) if value != "" else ""


@app.command()
def train(
    ctx: typer.Context,
    corpus: Optional[List[Path]] = typer.Argument(None, show_default=False, parser=_named_path, help="Text files and folders to learn from, read in the order given; a folder means every file below it, sorted by path, leaving out hidden files and folders and (with a note) files that are not UTF-8 text. Default: the shipped corpora/tinyshakespeare.txt."),
    cell: Literal[CELLS] = typer.Option(_C.cell, case_sensitive=False, help=f"The recurrent cell. {choices_help()}."),
    hidden: int = _ranged(_C.hidden, RANGES["hidden"], "Hidden units per layer."),
    layers: int = _ranged(_C.layers, RANGES["layers"], "Stacked layers."),
    tau: str = typer.Option(_C.tau, help=CELL_OPTIONS["tau"].help + "."),
    spectral_radius: float = _ranged(_C.spectral_radius, RANGES["spectral_radius"], CELL_OPTIONS["spectral_radius"].help + "."),
    leak: float = _ranged(_C.leak, RANGES["leak"], CELL_OPTIONS["leak"].help + "."),
    u_max: float = _ranged(_C.u_max, RANGES["u_max"], CELL_OPTIONS["u_max"].help + "."),
    dropout: float = _ranged(_C.dropout, RANGES["dropout"], "Dropout between layers and before the output layer."),
    batch: int = _ranged(_C.batch, RANGES["batch"], "Parallel streams of text; under MPI the total over all processes."),
    k1: int = _ranged(_C.k1, RANGES["k1"], "Steps between updates (the loss of these steps is averaged)."),
    k2: int = _ranged(_C.k2, RANGES["k2"], "Steps the gradient flows back (k2 > k1: overlapping windows)."),
    reset_every: int = _ranged(_C.reset_every, RANGES["reset_every"], "Every this many updates, each stream starts again from a zero state where it is in the text, as sampling, evaluation and a new epoch start, so that the model learns to start from one (0: only at a new epoch). A model that never did can run away from a zero state at some contexts: garbage samples, a wrong validation figure."),
    optimizer: Literal[OPTIMIZERS] = typer.Option(_C.optimizer, case_sensitive=False, help="Optimizer (sgd: with momentum 0.9)."),
    lr: float = _ranged(_C.lr, RANGES["lr"], "Learning rate."),
    schedule: Literal[SCHEDULES] = typer.Option(_C.schedule, case_sensitive=False, help="The learning rate over the run: linear (down to zero at the end of the budget: time, steps or epochs), cosine (the same ends, a slower start), step (--lr-decay every --decay-every updates) or constant."),
    lr_decay: float = _ranged(_C.lr_decay, RANGES["lr_decay"], "With --schedule step: multiply the learning rate by this every --decay-every updates."),
    decay_every: int = _ranged(_C.decay_every, RANGES["decay_every"], "With --schedule step: updates between learning-rate decays (0: never)."),
    decay_start: float = _ranged(_C.decay_start, RANGES["decay_start"], "With --schedule linear or cosine: hold the learning rate for this fraction of the budget, then decay it to zero over the rest."),
    warmup: int = _ranged(_C.warmup, RANGES["warmup"], "Raise the learning rate linearly over the first this many updates, from 1/N of what --schedule gives to all of it (0: off)."),
    clip_norm: float = _ranged(_C.clip_norm, RANGES["clip_norm"], "Clip the global gradient norm to this (0: off)."),
    clip_value: float = _ranged(_C.clip_value, RANGES["clip_value"], "Clip each gradient element to +-this (0: off)."),
    weight_decay: float = _ranged(_C.weight_decay, RANGES["weight_decay"], "L2 weight decay: add this times each weight to its clipped gradient before the optimizer's step (PyTorch's weight_decay, not AdamW's); frozen tensors keep their values."),
    epochs: Optional[float] = _ranged(None, RANGES["epochs"], "Stop after this many passes over the training text; 0, the default, sets no limit.", "float"),
    max_steps: Optional[int] = _ranged(None, RANGES["max_steps"], "Stop after this many updates; 0, the default, sets no limit.", "int"),
    time_limit: Optional[float] = _ranged(None, RANGES["time_limit"], f"Stop after this many seconds of training (default {_C.time_limit:g}; 0: no limit). The first rule reached stops the run.", "float"),
    eval_every: int = _ranged(_C.eval_every, RANGES["eval_every"], "Updates between validation runs."),
    eval_chars: int = _ranged(_C.eval_chars, RANGES["eval_chars"], "Validate on at most this many characters (0: all)."),
    checkpoint_every: int = _ranged(_C.checkpoint_every, RANGES["checkpoint_every"], "Updates between saves of latest.npz."),
    val_fraction: float = _ranged(_C.val_fraction, RANGES["val_fraction"], "Part of the text held out for validation (with --test-fraction, at most 0.5)."),
    test_fraction: float = _ranged(_C.test_fraction, RANGES["test_fraction"], "Part of the text held out for the final test (with --val-fraction, at most 0.5)."),
    encoding: str = typer.Option(_C.encoding, callback=_encoding, help="utf-8, latin-1 or bytes (each byte one character)."),
    doc_sep: str = typer.Option(repr(_C.doc_sep)[1:-1], callback=_unescape, help="Put between documents (files), where the model learns that one ends; backslash escapes such as \\n and \\x03 are read. Default: the one character ETX (U+0003, 'end of text'), which no text holds, so a sample can stop exactly where a document would end; '\\n\\n' (a blank line) is also a paragraph break."),
    init_from: Optional[Path] = typer.Option(None, parser=_named_path, help="Fine-tune: start from this trained model (a checkpoint, or a run folder's best) with a fresh optimizer and schedule. Its cell, sizes and cell options are kept; characters of the new text it lacks are added to its vocabulary."),
    sample_every: int = _ranged(_C.sample_every, RANGES["sample_every"], "Every this many updates, print a sample and add it to RUN/samples.txt with the step and validation loss (0: never). Off by default: a 200-character sample of the default model costs a tenth of an update on a quiet machine and more when other processes share the cores, and the first run compiles the generation kernels (about 12 s). 200, with the default --eval-every, shows each sample beside its step's validation loss."),
    sample_length: int = _ranged(_C.sample_length, RANGES["sample_length"], "Characters per sample while training."),
    sample_temperature: float = _ranged(_C.sample_temperature, RANGES["sample_temperature"], "Temperature of the samples while training."),
    seed: int = _ranged(_C.seed, RANGES["seed"], "Seed for initialisation and dropout."),
    run: str = typer.Option("", help="Run name: checkpoints go to OUT_DIR/RUN. Default: CELL-DATE-TIME."),
    out_dir: Path = typer.Option(Path(_C.out_dir), parser=_named_path, help="Folder for run folders."),
    resume: Optional[Path] = typer.Option(None, parser=_named_path, help="Continue a run (its folder or a checkpoint), from any folder. The learning rate and its schedule, clipping, fresh starts, the stopping rules, how often it validates and saves, and samples may change; one line says what changed. Any other option only as the run has it: the command that started the run, with --resume added, resumes it (a batch or window it shrank to fit a small text given as shrunk). Give the corpus again only if it moved: it is checked by its hash."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display, settings or samples; print notes on the text and the summary."),
):
    """Train a model on text files, saving latest.npz and best.npz under OUT_DIR/RUN.

    Started by `mpiexec -n R` (or srun), R processes train one model, each on its share of the --batch streams; this needs mpi4py (README: Training on a cluster).
    """
    from .cells import check_options_read
    from .config import TrainConfig, check_settings_used
    from .corpus import check_encoding, model_text
    from .distributed import error_prefix, refuse_together, world
    from .train import Interrupted, Trainer, check_new_run_dir, fine_tune_settings, new_run_dir, remove_if_empty
    from .train import same_run_on_every_rank

    job = world()
    speaks = job.root  # under MPI rank 0 speaks for every rank
    doing = "resumes a run" if resume is not None else "starts a new run"
    # (mpiexec's A : B) before either waits in a collective the other never joins
    refuse_together(f"this rank {doing}, and rank 0 does not; launch every rank with the same command line"
                    if job.from_root(doing) != doing else None)
    # notes on what the run reads and changes (files left out, a batch shrunk) show under -q too
    note = _note if speaks else (lambda *a: None)
    quiet = quiet or not speaks
    say = (lambda *a: None) if quiet else note
    stops = {k: v for k, v in (("epochs", epochs), ("max_steps", max_steps), ("time_limit", time_limit)) if v is not None}
    given = {name: value for name, value in ctx.params.items() if name not in ("resume", "quiet")
             and ctx.get_parameter_source(name).name != "DEFAULT"}
    if resume is not None:
        overrides = {k: v for k, v in given.items() if k != "corpus"}  # checked against the run's (Trainer.resume)
        said = []  # what the resume says ("changed on resume: ..."), once it is sure to go on
        with err.status("loading the checkpoint and the corpus..."):
            trainer = Trainer.resume(resume, say=said.append, corpus=corpus or None, **overrides)
        trainer.check_not_done()
        for line in said:
            note(line)
        trainer.say = note
        say(f"resuming {trainer.run_dir} at update {trainer.step}")
    else:
        cfg = TrainConfig(corpus=[str(p) for p in corpus or ()], encoding=encoding, val_fraction=val_fraction,
                          test_fraction=test_fraction, cell=cell, hidden=hidden, layers=layers,
                          tau=tau, spectral_radius=spectral_radius, leak=leak, u_max=u_max,
                          dropout=dropout, batch=batch, k1=k1, k2=k2, reset_every=reset_every, optimizer=optimizer, lr=lr, schedule=schedule,
                          lr_decay=lr_decay, decay_every=decay_every, decay_start=decay_start, warmup=warmup, clip_norm=clip_norm,
                          clip_value=clip_value, weight_decay=weight_decay,
                          eval_every=eval_every, eval_chars=eval_chars, checkpoint_every=checkpoint_every,
                          seed=seed, run=run, out_dir=str(out_dir), doc_sep=doc_sep, sample_every=sample_every,
                          sample_length=sample_length, sample_temperature=sample_temperature, **stops)
        if init_from is not None:  # the model's settings, from the trained model
            cfg = TrainConfig(**{**cfg.to_dict(), **fine_tune_settings(init_from, given)})
        cfg.doc_sep = model_text(cfg.doc_sep, check_encoding(cfg.encoding), "--doc-sep")
        whose = " (the --init-from model's)" if init_from is not None else "" if "cell" in given else " (the default)"
        check_options_read([name for name in CELL_OPTIONS if name in given], [cfg.cell], whose)
        check_settings_used(given, cfg, resume=False)
        cfg.validate().check_stopping()  # before the text is read
        cfg.check_run_name(given="run" in given)
        same_run_on_every_rank(cfg)  # before rank 0 claims a folder that another rank's refusal would leave
        runs = Path(cfg.out_dir)
        made = [folder for folder in (runs, *runs.parents) if not folder.exists()]  # by new_run_dir, if it names the run
        run_dir = new_run_dir(cfg)
        if not cfg.run:  # a folder made to claim its name: gone again if the command ends before writing it
            ctx.call_on_close(lambda: remove_if_empty([run_dir, *made]))
        if speaks:  # the folder it writes (another rank's may be another machine's)
            check_new_run_dir(run_dir)  # before the text is read and the settings said
        with err.status("reading the text..."):  # (a large one takes seconds; a named pipe: until written)
            trainer = Trainer(cfg, run_dir, say=note)
    trainer.show = (lambda *a: None) if quiet else _sample_shown  # the samples taken while training
    cfg = trainer.cfg
    if not quiet:
        shown = cfg.to_dict()
        if not shown["corpus"]:  # none given: the files the run read (the shipped text)
            shown["corpus"] = [f["path"] for f in trainer.corpus_info["files"]]
        settings = " ".join(f"{k}={_shown(v)}" for k, v in shown.items())
        from rich.text import Text

        err.print(Text(one_line(settings), style="dim"))
        origin = f" from {cfg.init_from}" if cfg.init_from and trainer.fresh else ""
        added = f" ({trainer.vocab_added} added)" if origin else ""
        err.print(one_line(f"{trainer.spec.cell} {cfg.layers}x{cfg.hidden}{origin}, vocabulary {trainer.vocab.size}"
                           f"{added}, {trainer.params.size:,} parameters; train/val/test {len(trainer.train_ids):,}/"
                           f"{len(trainer.val_ids):,}/{len(trainer.test_ids):,} characters -> {trainer.run_dir}"),
                  highlight=False)
        few_streams = trainer.few_streams_notice()
        if few_streams:
            err.print(Text(few_streams, style="dim"))
    _set_up()
    with _stops_once_taken_ignored(trainer):
        try:
            if quiet:
                summary = trainer.run()
            else:
                with _TrainProgress(trainer) as progress:
                    summary = trainer.run(progress.update)
        except KeyboardInterrupt:
            if trainer.stopping_now:  # a second stop signal (on a rank other than 0, said after letting it be heard)
                err.print(error_prefix() + one_line(trainer.stopped_line(at_once=True)), highlight=False)
            raise
        except Interrupted as e:
            err.print(one_line(trainer.stopped_line(in_test=e.untested)), highlight=False)
            raise typer.Exit(130)
    val, test = summary["val_loss"], summary["test_loss"]
    best = summary["best_val_loss"]  # none yet: a checkpoint resumed in a folder of its own, its test only run
    best_said = f"best {best:.4f}" if math.isfinite(best) else "no best.npz in this folder"
    val_said = (f"val loss {val:.4f} nats ({val / math.log(2):.3f} bits/char), {best_said}"
                if cfg.val_fraction else "no validation text (--val-fraction 0)")
    test_said = f"test {test:.4f} nats ({test / math.log(2):.3f} bits/char)" if not math.isnan(test) else "no test text"
    speed = (f"{summary['train_chars_per_sec']:,.0f} chars/s" if summary["train_chars_per_sec"] is not None else
             "no speed measured (one update, which loads the kernels)" if summary["updates"] else "no update to train")
    # a name that is not UTF-8 printed as its bytes, as the command's output prints names
    out.print(controls_escaped(f"done: {counted(summary['steps'], 'update')}, {summary['epochs']:.2f} epochs, "
                               f"{summary['elapsed']:.0f} s, {speed}, stopped by {' and '.join(summary['stopped_by'])}; "
                               f"{val_said}; {test_said}; checkpoints in {summary['run_dir']}"), highlight=False)


@contextmanager
def _stops_once_taken_ignored(trainer):
    """Around Trainer.run and the line that ends it: the stop signals are ignored once the run
    has taken a stop (it saved, or ends at once), so that a quick second or third one cannot cut
    off that line (run() gives the signals back before it, and the progress bar closes between);
    before the run takes them over, they end the command as they did (SIGTERM by the system's
    default: sent again, to itself)."""
    from .distributed import given_back, taken_over
    from .train import STOP_SIGNALS

    def stop(signum, frame):
        if trainer.signalled:
            return
        handler = before[signum]
        if callable(handler):
            handler(signum, frame)
        else:
            signal.signal(signum, handler)
            os.kill(os.getpid(), signum)

    before = taken_over(STOP_SIGNALS, stop)
    try:
        yield
    finally:
        given_back(before)


class _TrainProgress:
    """A rich progress bar: step, epoch, train loss, val loss and bits per character, chars/s,
    clip rate, time left."""

    def __init__(self, trainer):
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
        from rich.text import Text

        class UntilStopped(TextColumn):
            """Its text until a stop signal comes, then `stopping`: read as the display refreshes,
            so that a stop shows at once (the figures make room for it on a narrow terminal)."""

            def __init__(self, text_format, names_the_stop=False):
                super().__init__(text_format)
                self.names_the_stop = names_the_stop

            def render(self, task):
                if not trainer.signalled:
                    return super().render(task)
                return Text(_stopping_said(trainer.first_stop) if self.names_the_stop else "", style="bold")

        self.trainer = trainer
        self.progress = Progress(
            UntilStopped("[bold]{task.fields[step]}", names_the_stop=True), BarColumn(bar_width=20),
            UntilStopped("ep {task.fields[epoch]:.2f}  loss {task.fields[loss]}  val {task.fields[val]}  "
                         "{task.fields[chars]} ch/s  clip {task.fields[clip]}"),
            TimeRemainingColumn(), console=err.console, transient=False)
        # until the first update, which loads the kernels from numba's cache, or compiles them on a first run
        self.fields = {"step": "loading or compiling kernels...", "epoch": 0.0, "loss": "-", "val": "-", "chars": "-",
                       "clip": "-"}

    def __enter__(self):
        self.progress.__enter__()
        self.task = self.progress.add_task("train", total=1000, **self.fields)
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def update(self, trainer, record):
        f = self.fields
        f["step"] = f"step {trainer.step}, testing" if trainer.testing else f"step {trainer.step}"
        f["epoch"] = trainer.epoch()
        if record is not None:
            f["loss"] = f"{record['loss']:.3f}"
            if record["chars_per_sec"] is not None:  # none while the kernels load
                f["chars"] = f"{record['chars_per_sec']:,.0f}"
            f["clip"] = f"{record['clipped']:.0%}"
        if math.isfinite(trainer.last_val):
            f["val"] = f"{trainer.last_val:.3f} ({trainer.last_val / math.log(2):.2f} bpc)"
        self.progress.update(self.task, completed=min(1000, 1000 * trainer.done_fraction()), **f)


def _stopping_said(signum):
    """What the progress bar says once a stop signal came: any second one stops at once. (Drawn
    as it goes only on a terminal: under mpiexec, whose ranks write into a pipe, it shows at the
    end; README, Training on a cluster, says how a second stop reaches the ranks there.)"""
    if signum == signal.SIGINT:
        return "stopping (Ctrl-C again: at once)"
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    return f"stopping on {name} (a second stop: at once)"


def _first_call(warm):
    """Run warm(), the first call of the kernels, in a thread. A quick return means numba loaded
    them from its cache; if it takes longer, they are compiling: show a spinner meanwhile."""
    from .kernels._jit import loading_from_cache

    def run():
        with loading_from_cache():
            warm()

    _, compiling = _in_thread(run, "compiling kernels (the first run only; later runs reuse numba's cache)...")
    if compiling:  # the compiler's garbage, made while the collector was held off: not to be frozen
        gc.collect()
    _set_up()


def _in_thread(work, status, after=0.5):
    """work() in a thread of its own: (its result, whether it took longer than `after` seconds),
    its exception raised here. A spinner saying `status` once it has taken that long. A Ctrl-C
    then lands in this thread's wait, in Python: in the thread that compiles, it can land inside
    numba's callbacks from LLVM, which swallow it (gradcheck's first run printed a traceback and
    checked on to the end, exit 0). See _interrupted_while for how a Ctrl-C ends it."""
    import threading

    result, failure = [], []
    # its own end, not the thread's: an interrupted Thread.join marks a thread that is still
    # running as stopped (Python 3.11)
    done = threading.Event()
    # "running" once the thread begins, "abandoned" if a Ctrl-C came first (it then never runs
    # work): settled under the lock, as Thread.is_alive() is false while a started thread has yet
    # to take its first step
    state, gate = {"now": "starting"}, threading.Lock()

    def run():
        with gate:
            if state["now"] == "abandoned":
                return
            state["now"] = "running"
        try:
            result.append(work())
        except BaseException as e:  # handed to the main thread below
            failure.append(e)
        finally:
            done.set()

    def abandoned():
        """Whether the thread had not begun; it then never will."""
        with gate:
            if state["now"] == "starting":
                state["now"] = "abandoned"
            return state["now"] == "abandoned"

    try:
        threading.Thread(target=run, daemon=True).start()  # in here: a Ctrl-C can land inside start()
        longer = not done.wait(after)
        if longer:
            with err.status(status):
                done.wait()
    except KeyboardInterrupt:
        _interrupted_while(done, abandoned)
        raise
    if failure:
        raise failure[0]
    return result[0], longer


def _interrupted_while(done, abandoned):
    """Ctrl-C while the warm-up's thread may be inside LLVM (compiling, or loading the kernels
    from numba's cache). A process that exits while it is there can crash as LLVM's C++ runtime
    is torn down under it: a segmentation fault or an abort instead of exit 130, in about 1 of
    60 Ctrl-Cs 0.25-0.45 s into a `charrnn sample`. The entry point's process ends at once, past
    that teardown, having written nothing yet; called in-process, the thread is waited for,
    unless abandoned() finds it had not begun (it then never does)."""
    if done.is_set():
        return
    if owns_process:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(130)
    while True:  # its answer is the same however often it is asked: again on a second Ctrl-C
        try:
            if abandoned():
                return
            break
        except KeyboardInterrupt:
            pass
    while not done.is_set():
        try:
            done.wait()
        except KeyboardInterrupt:
            pass


# main() holds the cyclic garbage collector off until the command is set up (_set_up)
_collector_held = False
# whether the entry point (charrnn/__main__.py) runs this process, which a command may then end
# at once (_interrupted_while); not so for the app called in-process
owns_process = False


def _set_up():
    """The command's set-up is done: what start-up made (modules, numba's types and the loaded
    kernels, a few hundred thousand objects that live until exit) moves out of the cyclic
    garbage collector's sight, and the collector, held off since main() began, runs again for
    what the command makes from here on. Collecting start-up's objects again and again while
    they are made, and once more at exit, took 0.4 s of a 1 s `charrnn sample`. The app called
    in-process (not through main) leaves the collector as it is."""
    global _collector_held
    if _collector_held:
        _collector_held = False
        gc.freeze()
        gc.enable()


@contextmanager
def _printing(newline_on_interrupt=False):
    """Around printing a stream of text: a reader that stops reading (`| head`) ends it quietly
    with exit 1, another failed write (a full disk) in one line naming stdout; Ctrl-C ends it
    with 130. (A closed stdout is refused before any command: _main.)"""
    try:
        yield
        sys.stdout.flush()
    except OSError as e:
        sent_nowhere(sys.stdout)  # nothing more can be written
        if isinstance(e, BrokenPipeError):  # the reader is gone: nothing to say
            raise typer.Exit(1)
        raise _not_written(e) from None
    except KeyboardInterrupt:
        _last_words(newline_on_interrupt)
        raise typer.Exit(130)


# how long the last words of a stopped command may wait for stdout's reader
LAST_WORDS_SECONDS = 1.0


class _NotTaken(Exception):
    """stdout's reader took nothing for LAST_WORDS_SECONDS."""


def _last_words(newline):
    """What is still buffered for stdout, and a line break to end the line there, written if the
    reader takes them within LAST_WORDS_SECONDS: into a pipe whose reader has stopped reading (a
    pager on its first page) the write would hold the process, stopped by Ctrl-C or SIGTERM,
    for ever. What it does not take goes nowhere. (A timer, not a pipe made non-blocking: that
    would be the pipe of every process writing into it, which would then lose their text.)"""
    def not_taken(signum, frame):
        raise _NotTaken

    try:
        before = signal.signal(signal.SIGALRM, not_taken)
        signal.setitimer(signal.ITIMER_REAL, LAST_WORDS_SECONDS)
    except (AttributeError, ValueError):  # no SIGALRM (Windows), or not the main thread
        before = None
    try:
        if newline:
            sys.stdout.write("\n")
        sys.stdout.flush()
    except (OSError, _NotTaken):  # the reader is gone (BrokenPipeError), or takes nothing
        sent_nowhere(sys.stdout)
    finally:
        if before is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, before)


@app.command()
def sample(
    checkpoint: Path = typer.Argument(..., parser=_named_path, help="A checkpoint file, or a run folder (its best.npz, else latest.npz)."),
    length: int = _ranged(500, SAMPLE_RANGES["length"], "Characters to generate after the prime (at most, with --stop-at)."),
    temperature: float = _ranged(1.0, SAMPLE_RANGES["temperature"], "Divide the logits by this: below 1 is more conservative, above 1 wilder; 0 always picks the most probable character."),
    top_k: int = _ranged(0, SAMPLE_RANGES["top_k"], "Choose only among the K most probable characters (0: off)."),
    top_p: float = _ranged(1.0, SAMPLE_RANGES["top_p"], "Nucleus sampling: choose only among the most probable characters that together reach this probability (1: off)."),
    prime: str = typer.Option("", help="Text the model reads first, as typed (no escapes: in bash, $'a\\nb' holds a line break); it is printed, then the continuation. Without it, generation starts as a document of the run does (after its --doc-sep, for a model trained on several files), else as if at the beginning of a line."),
    seed: int = _ranged(0, SAMPLE_RANGES["seed"], "Seed of the random choices: the same checkpoint, seed and options give the same text."),
    num_samples: int = _ranged(1, SAMPLE_RANGES["num_samples"], "Samples to generate, each from a fresh state, separated by a line of dashes."),
    stop_at: str = typer.Option("", "--stop-at", metavar="TEXT", callback=_unescape, help="End a sample where the model writes TEXT, which is left out (the prime is not searched). Escapes: \\n, \\t, \\r, \\xHH, \\uHHHH, \\UHHHHHHHH, \\\\; e.g. --stop-at '\\n\\n' stops at a blank line. The text before it is what a sample without --stop-at begins with."),
):
    """Generate text from a trained model, streaming it to stdout."""
    from .api import TrainedModel
    from .corpus import check_typed_bytes, held_byte, model_text
    from .sampling import load_model, warm_up

    model = TrainedModel(load_model(checkpoint), spell=as_flag)
    encoding = model.config.get("encoding", "utf-8")
    for option, typed in (("--prime", prime), ("--stop-at", stop_at)):  # a character it lacks, named by option
        try:
            if encoding == "bytes":  # as typed, not as its bytes
                check_typed_bytes(typed, model.vocab, option)
            else:
                model.encode(model_text(typed, encoding, option), what=option)
        except CharrnnError as e:  # an option this model cannot take, as --unit beyond its units
            held = [byte for c in typed if (byte := held_byte(c)) is not None]
            if held and option == "--prime" and encoding != "bytes":  # (in a terminal that is not UTF-8, say)
                noun, verb = ("bytes", "are") if len(held) > 1 else ("byte", "is")
                raise UsageError(f"{e} (--prime's {noun} {' '.join(f'{b:02X}' for b in held)} {verb} no UTF-8: "
                                 "each was read as the Latin-1 character of its code)") from None
            raise UsageError(str(e)) from None
    texts = model.stream(length, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                         prime=model_text(prime, encoding, "--prime"), stop_at=model_text(stop_at, encoding, "--stop-at"),
                         num_samples=num_samples)
    _first_call(lambda: warm_up(model.spec, model.params.dtype))
    with _printing(newline_on_interrupt=True):
        write = _writer(encoding)
        for i, pieces in enumerate(texts):
            if i:
                write("-" * 40 + "\n")
            last = "\n"
            for piece in pieces:
                write(piece)
                sys.stdout.flush()
                last = piece[-1:] or last
            if last != "\n":
                write("\n")


def _writer(encoding):
    """How a model's text goes to stdout: a bytes model's characters are bytes, written as they
    are (a character of UTF-8 text may come in two pieces); any other model's as text."""
    if encoding != "bytes":
        return sys.stdout.write
    sys.stdout.flush()  # what went before, in order; nothing goes through the text layer after
    return lambda text: sys.stdout.buffer.write(text.encode("latin-1"))


@app.command("eval")
def eval_(
    checkpoint: Path = typer.Argument(..., parser=_named_path, help="A checkpoint file, or a run folder (its best.npz, else latest.npz)."),
    file: Path = typer.Argument(..., parser=_named_path, help="Text file to score."),
    batch: Optional[int] = _ranged(None, EVAL_RANGES["batch"], "Parallel streams the text is cut into (default: the checkpoint's batch); with --per-line, lines read side by side.", "int"),
    window: Optional[int] = _ranged(None, EVAL_RANGES["window"], "Steps per forward window (default: the checkpoint's k1).", "int"),
    encoding: Optional[str] = typer.Option(None, callback=_encoding, help="utf-8, latin-1 or bytes (each byte one character); default: the checkpoint's."),
    skip_unknown: bool = typer.Option(False, "--skip-unknown", help="Drop characters the model does not know (and count them) instead of stopping."),
    per_line: bool = typer.Option(False, "--per-line", help="Score each non-empty line on its own and print one line per line: nats per character, a tab, the line. Each is read from a fresh state that has read a line break (a space, else the vocabulary's first character, for a model that knows none), so all its characters are predicted (not the line break after it). Rank with: sort -n."),
):
    """Score a model on a text file: nats and bits per character, and perplexity.

    With the checkpoint's batch and window, its run's validation text scores the run's own validation figure. The text is cut into batch contiguous streams; the first starts from a zero state, each other one from the state left by reading the 200 characters before it, or all of them near the text's start (uncounted: they are scored in the streams before), so the figure is close to reading the text as one stream. The very first character is only an input and a tail shorter than the batch is left out, so the count is up to batch characters below the file's length (a note says so where that is 1% of the text or more; --batch 1 scores every character).
    """
    from .api import TrainedModel, UnknownCharacters, too_few_known
    from .corpus import EvalStreams, check_read_as, unit_name
    from .sampling import load_model, warm_up_evaluate

    model = TrainedModel(load_model(checkpoint), spell=as_flag)
    model_encoding = model.config.get("encoding", "utf-8")
    of_bytes = model_encoding == "bytes"
    unit = unit_name(of_bytes)
    if encoding:
        check_read_as(model_encoding, encoding)
    try:
        if per_line:
            with err.status("reading the text..."):
                pieces = _line_pieces(model, file, encoding, skip_unknown)
            counts = {"unscored": 0, "dropped": 0, "scored": 0}
            scores = _line_scores(model, pieces, file, batch, window, skip_unknown, counts)
        else:  # never the whole file as a string: a byte or two a character
            with err.status("reading the text..."):  # (a named pipe: until written)
                ids, skipped = model.encode_file(file, encoding=encoding, skip_unknown=skip_unknown)
            if skipped and ids.size < 2:  # not "the text to evaluate has 0 characters"
                raise too_few_known(skipped, ids.size, file, unit)
            if ids.size < 2:  # (--per-line scores a line from a line break: not a line break alone)
                per_line_scores = model.vocab[int(ids[0])] != "\n"
                raise CharrnnError(f"{file} has 1 {unit}; scoring needs 2 (one read, one predicted)"
                                   + (": --per-line scores a line from a line break" if per_line_scores else ""))
    except UnknownCharacters as e:
        raise CharrnnError(f"{e} (or pass --skip-unknown to leave them out)") from None
    _first_call(lambda: warm_up_evaluate(model.spec, model.params.dtype))
    if per_line:
        with _printing():
            write = _writer(model_encoding)  # the lines as the model reads them: a bytes model's as bytes
            for nats, line in scores:
                write(f"{nats:.4f}\t{line}\n")
        if not counts["scored"]:
            raise CharrnnError(f"every line of {file} is made only of {unit}s the model does not know; there is "
                               "nothing to score" if counts["unscored"] else
                               f"{file} has no line with a {unit} in it; there is nothing to score")
        if counts["unscored"]:
            _note(f"note: left out {counted(counts['unscored'], 'line')} made only of {unit}s the model does not "
                  "know")
        if counts["dropped"]:
            _note(f"note: skipped {counted(counts['dropped'], 'unknown ' + unit)} inside the lines scored")
        return
    result = model.evaluate(ids, batch=batch, window=window)
    note = f"; {counted(skipped, 'unknown ' + unit)} skipped" if skip_unknown else ""
    per = "byte" if of_bytes else "char"
    out.print(controls_escaped(f"{file}: {result.chars:,} {unit}{'s' * (result.chars != 1)}, {result.nats:.4f} "
                               f"nats/{per}, {result.bits:.4f} bits/{per}, perplexity {result.perplexity:.2f}{note}"),
              markup=False, highlight=False, soft_wrap=True)
    left = ids.size - 1 - result.chars  # the tail the streams leave out (the help says so)
    if left >= LEFT_OUT_NOTED * (ids.size - 1):  # a short text's, up to half of it: not in silence
        streams, steps = EvalStreams.shape(ids.size, model._batch_window(batch, window)[0])
        _note(f"note: the last {left:,} of its {counted(ids.size, unit)} were not scored ({streams:,} streams of "
              f"{counted(steps, 'prediction')} each); --batch 1 scores every one")


LEFT_OUT_NOTED = 0.01  # eval notes the tail its streams leave out from this share of the predictions up

LINE_PIECE = 1 << 22  # characters of `eval --per-line`'s file held as strings at a time (whole lines)


def _line_pieces(model, file, encoding, skip_unknown):
    """The text of `file` as eval --per-line reads it, in pieces of whole lines, each about
    LINE_PIECE characters or one line if longer: an iterator of strs. The file is held as ids, a
    byte or two a character, and only a piece as a string; its lines as strings, all at once,
    took some 29 bytes a character (5.8 GB for a 200 MB file). Without skip_unknown the whole
    file is checked first: an unknown character in a line raises UnknownCharacters, naming each
    one, before any line is scored."""
    import numpy as np

    from .corpus import CHUNK_BYTES, Vocab, read_ids

    model_encoding = model.config.get("encoding", "utf-8")
    ids, chars = read_ids(file, encoding or model_encoding, model=model_encoding)
    vocab = Vocab.from_json(chars)
    newline = chars.index("\n") if "\n" in chars else None
    breaks = np.empty(0, np.int64)
    if newline is not None:  # a piece at a time: a mask of the whole file would cost a byte a character
        breaks = np.concatenate([breaks] + [np.flatnonzero(ids[i : i + CHUNK_BYTES] == newline) + i
                                            for i in range(0, ids.size, CHUNK_BYTES)])
    if not skip_unknown:  # every character but the line breaks ("\r\n" too) is read
        line_breaks = {newline: breaks.size} if newline is not None else {}
        if "\r" in chars:
            ends = np.append(breaks - 1, ids.size - 1)  # a last line without its "\n" ends at the file's end
            ends = ends[ends >= 0]
            line_breaks[chars.index("\r")] = int(np.count_nonzero(ids[ends] == chars.index("\r")))
        # counted, not copied: a mask and the ids read, made whole, doubled the file's cost
        model._check_known(ids, chars, what=str(file), uncounted=line_breaks)

    def pieces():
        start = 0
        while start < ids.size:
            end = ids.size
            if start + LINE_PIECE < ids.size:
                after = np.searchsorted(breaks, start + LINE_PIECE)  # the first line break at or past the limit
                if after > 0 and breaks[after - 1] >= start:
                    end = breaks[after - 1] + 1  # the piece ends with the last line break before it
                elif after < breaks.size:
                    end = breaks[after] + 1  # a line longer than a piece: the whole of it
            yield vocab.decode(ids[start:end])
            start = end

    return pieces()


def _line_scores(model, pieces, file, batch, window, skip_unknown, counts):
    """(nats, line) for every line of the pieces with a character in it, in order, a piece at a
    time; counts["scored"], and with skip_unknown the lines made only of unknown characters left
    out ("unscored") and the unknown characters inside the lines scored ("dropped")."""
    known = set(model.vocab)
    for text in pieces:
        # "\r\n" ends a line as "\n" does: the line break is not scored
        lines = [line.removesuffix("\r") for line in text.split("\n")]
        lines = [line for line in lines if line]
        if skip_unknown:  # a line of unknown characters only has nothing to score
            scored = [line for line in lines if not known.isdisjoint(line)]
            counts["unscored"] += len(lines) - len(scored)
            lines = scored
            counts["dropped"] += sum(ch not in known for line in lines for ch in line)
        counts["scored"] += len(lines)
        yield from zip(model.score_lines(lines, batch=batch, window=window, skip_unknown=skip_unknown,
                                         what=str(file)), lines)


@app.command("inspect")
def inspect_(
    checkpoint: Path = typer.Argument(..., parser=_named_path, help="A checkpoint file, or a run folder (its best.npz, else latest.npz)."),
    file: Path = typer.Argument(..., parser=_named_path, help="Text for the model to read, from its start."),
    unit: Optional[int] = _ranged(None, INSPECT_RANGES["unit"], kind="int", help="Colour the text by this unit (default: the unit that tracks a property best)."),
    layer: Optional[int] = _ranged(None, INSPECT_RANGES["layer"], kind="int", help="Layer of the unit, 0 at the bottom (default: the best unit's, or 0 with --unit)."),
    act: str = typer.Option("h", help="Activation to trace: h (the layer's output, every cell) or one of the cell's own, such as tanh(c) or a gate; a wrong name lists them."),
    chars: int = _ranged(INSPECT_CHARS, INSPECT_RANGES["chars"], help=f"Read at most this many characters (a bytes model's: bytes); the terminal colours up to {INSPECT_CHARS:,} of them."),
    top: int = _ranged(1, INSPECT_RANGES["top"], help="Units listed per property and for saturation."),
    html: Optional[Path] = typer.Option(None, "--html", parser=_named_path, help="Also write one self-contained page: every unit's colours, the gates, and the next-character guesses on hover."),
    encoding: Optional[str] = typer.Option(None, callback=_encoding, help="utf-8, latin-1 or bytes (each byte one character); default: the checkpoint's."),
    skip_unknown: bool = typer.Option(False, "--skip-unknown", help="Drop characters the model does not know instead of stopping."),
):
    """See inside a model: which units track quotes, line position, brackets, indent and word starts, and how its gates open and close."""
    from . import inspection as ins
    from .corpus import check_read_as
    from .inspection_page import write_page
    from .outputs import HTML, check_output
    from .sampling import load_model, warm_up_evaluate

    if html is not None:  # before the work
        html = check_output(html, "--html", HTML, {"FILE": file, "CHECKPOINT": checkpoint})
    model = load_model(checkpoint)
    ins.check_options(model.spec, act, layer, unit)
    model_encoding = model.config.get("encoding", "utf-8")
    if encoding:
        check_read_as(model_encoding, encoding)
    text, skipped = ins.read_start(file, model.vocab, chars, encoding or model_encoding, skip_unknown,
                                   model_encoding == "bytes")
    _first_call(lambda: warm_up_evaluate(model.spec, model.params.dtype))
    tr = ins.trace(model.spec, model.params, model.vocab, text, act, model_encoding)
    scores = ins.score_units(tr)
    found = ins.find_units(scores, top)
    layer, unit = ins.pick_unit(scores, layer, unit)
    failed = _written_first(html, lambda: write_page(html, tr, scores, found, model.vocab, layer, unit, str(file)))
    note = f"; {counted(skipped, 'unknown ' + tr.step)} skipped" if skipped else ""
    out.print(controls_escaped(ins.model_line(tr, str(file)) + note), markup=False, highlight=False)
    no_colours = _colours_off(out.console)
    out.print(ins.unit_line(tr, scores, layer, unit, no_colours), markup=False, highlight=False)
    out.print(ins.coloured_text(tr, layer, unit))
    if not no_colours:  # (a scale of colours drawn without them is blank)
        out.print(ins.scale_bar(tr, layer))
    out.print_table(ins.units_table(found, act))
    gates = ins.gates_table(tr)
    if gates is not None:
        out.print_table(gates)
    _said_written(html, failed)


def _colours_off(console) -> str:
    """Why `console` draws no colours, with how to have them; "" where it draws them."""
    if console.no_color:  # (it keeps bold and the like)
        return "NO_COLOR is set; --html draws them"
    if console.color_system is not None:
        return ""
    term = os.environ.get("TERM", "")
    if not console.is_terminal and term.lower() not in ("dumb", "unknown"):  # (rich's: FORCE_COLOR=1 colours no such)
        return "stdout is no terminal; --html draws them, as FORCE_COLOR=1 does here"
    return one_line(f"TERM={term} takes none; --html draws them")


@app.command()
def gradcheck(
    ctx: typer.Context,
    cell: str = typer.Option("all", help=f"Cells to check, comma-separated names ({', '.join(CELLS)}) or all."),
    layers: int = _ranged(2, GRADCHECK_RANGES["layers"], "Stacked layers."),
    hidden: int = _ranged(8, GRADCHECK_RANGES["hidden"], "Hidden units per layer."),
    steps: int = _ranged(6, GRADCHECK_RANGES["steps"], "Steps per window (k1 = k2 = steps unless set)."),
    batch: int = _ranged(3, GRADCHECK_RANGES["batch"], "Parallel streams."),
    vocab: int = _ranged(7, GRADCHECK_RANGES["vocab"], "Characters in the random text."),
    seed: int = _ranged(0, GRADCHECK_RANGES["seed"], "Seed for the random model and text."),
    k1: Optional[int] = _ranged(None, GRADCHECK_RANGES["k1"], kind="int", help="Steps between updates (default: --steps)."),
    k2: Optional[int] = _ranged(None, GRADCHECK_RANGES["k2"], kind="int", help="Steps the gradient flows back (default: --steps)."),
    tolerance: float = _ranged(1e-6, GRADCHECK_RANGES["tolerance"], "Largest relative error that passes."),
    per_tensor: int = _ranged(200, GRADCHECK_RANGES["per_tensor"], "Elements checked per tensor (all, if it has fewer)."),
):
    """Check every gradient against finite differences, in float64. Exits 1 on any failure."""
    from rich.table import Table
    from rich.text import Text

    from .cells import CELLS as ADAPTERS
    from .gradcheck import check_gradients

    if k1 is not None and k2 is not None and ctx.get_parameter_source("steps").name != "DEFAULT":
        raise UsageError("--steps sets --k1 and --k2 where they are not given; with both given it has no use")
    _set_up()
    k1 = steps if k1 is None else k1
    k2 = steps if k2 is None else k2
    table = Table(title=f"gradcheck: {counted(layers, 'layer')}, H={hidden}, V={vocab}, B={batch}, k1={k1}, k2={k2}, seed={seed}")
    for name, justify in (("cell", "left"), ("tensor", "left"), ("checked", "right"), ("max rel err", "right"),
                          ("mean rel err", "right"),
                           ("worst element", "left"), ("result", "left")):
        table.add_column(name, justify=justify)
    failed, unresolved, uncompared = 0, [], 0
    for c, options in ((c, options) for c in _cells(cell) for options in ADAPTERS[c].checked_options):
        label = " ".join([c, *(f"({as_flag(name, value)})" for name, value in options)])  # leaky (--tau learned)
        rows, _ = _in_thread(lambda: check_gradients(c, layers, hidden, batch=batch, vocab=vocab, seed=seed, k1=k1,
                                                     k2=k2, steps=steps, tolerance=tolerance,
                                                     max_per_tensor=per_tensor, options=options),
                             f"checking {label} (the first run compiles the kernels)...", after=0)
        for r in rows:
            failed += not r.passed
            uncompared += r.checked == 0
            verdict = Text("pass", style="green") if r.passed else Text("FAIL", style="bold red")
            checked = str(r.checked) + (f" (+{r.kinked} at a kink)" if r.kinked else "") + \
                (f" (+{r.unresolved} unresolved)" if r.unresolved else "")
            if r.unresolved:
                unresolved.append(r)
            if r.checked == 0:  # every element left out: no error to show, and no pass either
                table.add_row(label, r.tensor, checked, "-", "-", "-", Text("none compared", style="yellow"))
            else:
                table.add_row(label, r.tensor, checked, f"{r.max_rel:.2e}", f"{r.mean_rel:.2e}",
                              str(list(r.worst)), verdict)
    out.print_table(table)
    if unresolved:
        # (an element is unresolved by both: a difference within the loss's rounding that the
        # tolerance does not pass; a --tolerance of 1e-30 left out most, at a loss of 2)
        _note(f"note: {counted(sum(r.unresolved for r in unresolved), 'element')} left out as unresolved: their two "
              f"gradients differ by less than a loss as large as {max(r.loss for r in unresolved):.3g} rounds away, "
              f"and by a relative error above --tolerance {tolerance:g} (a larger --tolerance passes them; fewer "
              "--steps or --layers make a large loss smaller)")
    if failed:
        _print_error(f"{counted(failed, 'tensor')} failed the gradient check (tolerance {tolerance:g})")
        raise typer.Exit(1)
    if uncompared:
        out.print(Text.assemble(("every tensor compared passes", "green"), f" (max relative error <= {tolerance:g}); "
                                f"{counted(uncompared, 'tensor')} had none to compare (each element drawn crossed a kink or "
                                "was unresolved)"))
        return
    out.print(Text.assemble(("all tensors pass", "green"), f" (max relative error <= {tolerance:g})"))


def _fresh_models(name):
    """gradflow's help of a cell option, from its entry in cells.OPTIONS (whose help begins with
    its cells' names, as train's help lists it), with its default."""
    option = CELL_OPTIONS[name]
    default = "" if "Default" in option.help else f"; default {option.default:g}"
    return f"Fresh {' and '.join(option.cells)} models: {option.help.split(': ', 1)[1]}{default}."


@app.command()
def gradflow(
    checkpoint: Optional[Path] = typer.Argument(None, parser=_named_path, help="A trained checkpoint (file or run folder) to measure instead of fresh models."),
    cell: Optional[str] = typer.Option(None, help=f"Fresh models to compare, comma-separated names ({', '.join(CELLS)}) or all. Default: rnn,lstm,gru."),
    hidden: Optional[int] = _ranged(None, GRADFLOW_RANGES["hidden"], kind="int", help="Hidden units per layer of the fresh models (default 64)."),
    layers: Optional[int] = _ranged(None, GRADFLOW_RANGES["layers"], kind="int", help="Stacked layers of the fresh models (default 1)."),
    seed: int = _ranged(0, GRADFLOW_RANGES["seed"], "Seed for the fresh models and the choice of windows."),
    radius: Optional[float] = _ranged(None, GRADFLOW_RANGES["radius"], kind="float", help="First rescale each recurrent matrix (each gate block; IndRNN's u) to this spectral radius."),
    tau: Optional[str] = typer.Option(None, help=_fresh_models("tau")),
    spectral_radius: Optional[float] = _ranged(None, RANGES["spectral_radius"], kind="float", help=_fresh_models("spectral_radius")),
    leak: Optional[float] = _ranged(None, RANGES["leak"], kind="float", help=_fresh_models("leak")),
    u_max: Optional[float] = _ranged(None, RANGES["u_max"], kind="float", help="Fresh indrnn models: bound on |u|, which starts U(0, bound); 0 or left out: 2^(1/(K+1)), Li et al. (2018)'s bound for the measured window."),
    forget_bias: Optional[float] = _ranged(None, GRADFLOW_RANGES["forget_bias"], kind="float", help="Set the forget-gate bias of fresh lstm and peephole models to this (training starts it like every bias, near 0; 1 is the classic remedy that keeps the gate open)."),
    corpus: Optional[Path] = typer.Option(None, parser=_named_path, help="Text to take the windows from. Default: the shipped corpora/tinyshakespeare.txt."),
    max_k: int = _ranged(100, GRADFLOW_RANGES["max_k"], "Measure k = 0..K steps back from the last step."),
    windows: int = _ranged(8, GRADFLOW_RANGES["windows"], "Windows of text to average over."),
    batch: int = _ranged(8, GRADFLOW_RANGES["batch"], "Streams per window (also averaged over)."),
    json_out: bool = typer.Option(False, "--json", help="Print the raw series and summary as JSON, and nothing else."),
    png: Optional[Path] = typer.Option(None, "--png", parser=_named_path, help="Also draw the chart into this PNG file (needs matplotlib)."),
):
    """How far back in time gradients reach: mean ||dL_T/dh_(T-k)|| against k, loss at the last step only."""
    import json

    from . import gradflow as gf
    from .corpus import ENCODING_ADVICE, NotText, read_ids
    from .outputs import PNG, check_output
    from .plot import require_pyplot

    _set_up()
    given = {k: v for k, v in (("tau", tau), ("spectral_radius", spectral_radius), ("leak", leak), ("u_max", u_max))
             if v is not None}
    fresh = [flag(name) for name, value in (("cell", cell), ("hidden", hidden), ("layers", layers),
                                            ("forget_bias", forget_bias), *given.items()) if value is not None]
    if checkpoint is not None and fresh:
        one = len(fresh) == 1
        raise UsageError(f"{', '.join(fresh)} describe{'s' if one else ''} fresh models; a checkpoint is measured "
                         f"as it was trained: leave {'it' if one else 'them'} out")
    from .cells import check_option, check_options_read, normal_tau

    for name, value in given.items():
        check_option(name, value)
    if "tau" in given:  # one spelling: LEARNED is learned
        given["tau"] = normal_tau(given["tau"])
    cells = _cells("rnn,lstm,gru" if cell is None else cell)
    if checkpoint is None:
        check_options_read(given, cells, "" if cell is not None else " (the default)")
        if given.get("u_max") == 0:  # 0: the bound for the measured window, as when left out
            del given["u_max"]
        for name, owner in (("spectral_radius", "esn"), ("u_max", "indrnn")):
            if radius is not None and name in given and owner in cells:  # --radius rescales what it set
                raise UsageError(f"--radius rescales the {owner} recurrence that {as_flag(name)} sets; give one of them")
        if forget_bias is not None and not any(map(gf.has_forget_gate, cells)):
            raise UsageError(f"--forget-bias sets the forget gate of lstm and peephole cells; --cell {','.join(cells)}"
                             f"{'' if cell is not None else ' (the default)'} has none")
    u_max = given.get("u_max")  # as given, but for 0: the bound for the window, the same as left out
    given.setdefault("u_max", 2.0 ** (1.0 / (max_k + 1)))
    if png is not None:  # fail before the measurement, not after it
        png = check_output(png, "--png", PNG, {"--corpus": corpus, "CHECKPOINT": checkpoint})
        require_pyplot()
    from .corpus import default_corpus

    corpus = corpus or default_corpus()
    trained = gf.checkpoint_model(checkpoint) if checkpoint is not None else None
    # a byte or two a character, never the text as a string; as the trained model reads text
    try:
        ids, chars = read_ids(corpus, trained.encoding if trained else "utf-8")
    except NotText as e:  # advice that names train's --encoding, which gradflow has not, said for gradflow
        if e.advice not in ENCODING_ADVICE:  # an empty file's, or iconv's for UTF-16
            raise
        # (only a UTF-8 reading refuses a file for its bytes: a model of latin-1 or bytes reads any)
        how = "" if trained is None else ", the checkpoint's text as it was trained"
        raise NotText(e.reason, f"gradflow reads --corpus as UTF-8{how}: give a UTF-8 text file") from None
    if trained is None and len(chars) < 2:
        raise CharrnnError(f"{corpus} holds only {counted(len(chars), 'distinct character')}; a fresh model needs at least 2")
    flows, _ = _in_thread(lambda: gf.run(ids, chars, cells=cells, trained=trained, hidden=hidden or 64,
                                         layers=layers or 1, seed=seed, radius=radius, max_k=max_k, windows=windows,
                                         batch=batch, forget_bias=forget_bias, options=tuple(given.items())),
                          "measuring gradient flow (the first run compiles the kernels)...", after=0)
    for f in flows:
        bad = next((k for layer in f.layers for k, x in enumerate(layer.norms) if not math.isfinite(float(x))), None)
        if bad is not None:  # the options given that set the size of this model's recurrence, and --max-k
            scales = [as_flag(name) for name, value, owner in (("radius", radius, None),
                                                               ("u_max", u_max, "indrnn"),
                                                               ("spectral_radius", spectral_radius, "esn"))
                      if value is not None and owner in (None, f.spec.cell)]
            raise CharrnnError(f"the gradient of {f.label} overflowed (inf or NaN) at k={bad}; use a smaller "
                               f"{' or '.join([*scales, '--max-k'])}")
    unknown = max(f.unknown for f in flows)  # a checkpoint's model, which may lack some of the text's characters
    if unknown:
        unit = trained.unit if trained else "character"  # fresh models read characters
        _note(f"note: left out {unknown:,} of the {counted(ids.size, unit)} of {corpus} that the model does not "
              "know")
    failed = _written_first(png, lambda: gf.write_png(flows, png))
    if json_out:  # stdout is the JSON alone: no "wrote" line
        with _printing():
            typer.echo(json.dumps(gf.to_json(flows, max_k, windows, batch, str(corpus), seed)))
        return _said_written(None, failed)
    out.print(gf.chart(flows))
    out.print_table(gf.table(flows, max_k))
    _said_written(png, failed)


@app.command()
def plot(
    run: Path = typer.Argument(..., parser=_named_path, help="Run folder holding metrics.jsonl (or the metrics.jsonl file)."),
    png: Optional[Path] = typer.Option(None, "--png", parser=_named_path, help="Also draw the charts into this PNG file (needs matplotlib)."),
):
    """Chart a training run: train and val loss, and the gradient norm before clipping, against step."""
    from .outputs import PNG, check_output
    from .plot import charts, read_metrics, require_pyplot, summary, too_large, write_png

    _set_up()
    if png is not None:  # before the charts are printed
        png = check_output(png, "--png", PNG, {"RUN": run})
        require_pyplot()
    metrics = read_metrics(run)
    try:
        failed = _written_first(png, lambda: write_png(metrics, png))
        for chart in charts(metrics):
            out.print(chart)
        out.print(summary(metrics), markup=False, highlight=False)
    except MemoryError:  # drawing the records read (ulimit -v)
        raise too_large(metrics.path) from None
    _said_written(png, failed)


def _written_first(path, write):
    """Write the file asked for (path, if any) before the printing, which a reader gone (| head)
    ends; a failure to write it is returned, to be said after the printing, whose results are
    still worth having."""
    if path is None:
        return None
    try:
        write()
    except CharrnnError as e:
        return e
    return None


def _said_written(path, failed):
    """The last line of a command that wrote `path` first (_written_first): done, or why not."""
    if failed is not None:
        raise failed
    if path is not None:
        out.print(controls_escaped(f"wrote {path}"), markup=False, highlight=False)


def _print_error(message: str, rank=None):
    """The error line; none after a stop signal: C code that the interrupt cut short (an import)
    can turn it into another error, which is no failure of the command's (cli.main then exits
    130, the stop's code; distributed.StopsHeld.interrupt). None either where stderr cannot be
    written (2>/dev/full): the exit code that follows still says what failed, a usage error 2."""
    from .distributed import HELD, error_prefix

    if HELD.seen:
        return
    line = error_prefix(rank) + one_line(message)
    try:
        from rich.text import Text

        err.print(Text.assemble(("error:", "bold red"), " ", line), highlight=False)
    except OSError:
        pass
    except MemoryError:  # no room left for rich (ulimit -v): the line as bytes, which need none
        try:
            os.write(2, f"error: {line}\n".encode("utf-8", "backslashreplace"))
        except OSError:
            pass


def scipy_blas_alone():
    """Load scipy.linalg.cython_blas, the module whose BLAS numba's products call, on its own:
    `import scipy.linalg.cython_blas` first runs scipy.linalg's __init__, which imports much of
    scipy, none of it used here (0.2 s of CPU at every start, a sixth of `charrnn sample`'s).
    Only for the command line (main, with the garbage collector held off: numpy comes with it):
    a program that imports charrnn gets the ordinary import (kernels/_jit.py), since a
    scipy.linalg imported after this one lacks the attribute cython_blas. Any failure is left to
    that import to say."""
    name = "scipy.linalg.cython_blas"
    if name in sys.modules or "scipy.linalg" in sys.modules:
        return
    try:
        folder = Path(find_spec("scipy").submodule_search_locations[0]) / "linalg"
        path = next(folder / f"cython_blas{suffix}" for suffix in EXTENSION_SUFFIXES
                    if (folder / f"cython_blas{suffix}").is_file())
        spec = spec_from_file_location(name, path)
        module = module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    except Exception:  # no scipy, or one laid out otherwise
        sys.modules.pop(name, None)


def main():
    """Entry point: a known error, or a failure of the system (a full disk, a folder that cannot
    be written, too little memory), becomes one line on stderr and exit code 1; so does a bug of
    ours, whose traceback CHARRNN_TRACEBACK=1 shows. Ctrl-C exits 130 (typer turns
    KeyboardInterrupt into it).

    `train` started by an MPI launcher runs in every rank; a rank that ends with an error aborts
    the whole job, since the others may be waiting for it in an all-reduce. A stop signal ends
    every rank at the same update (Trainer.run): they exit 130 together. One before training
    aborts the job with 130, and one while the ranks join waits until they have (StopsHeld).
    Another command started by a launcher is just the process it is (srun charrnn sample ...
    samples in every process)."""
    from .__main__ import command_named
    from .distributed import HELD, Solo, given_back, stop_at_once_until_training, world

    global _collector_held
    if not owns_process:  # a program's call: a stop that an earlier call saw is not this one's
        HELD.seen = False
    job = Solo()
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) == 0:  # no width (as some tools set it): rich, typer's help
        del os.environ["COLUMNS"]  # included, printed nothing at all; the terminal's own width instead
    replaced = {}
    HELD.hold()  # as the entry point did, for a caller of main() itself
    train = command_named(sys.argv[1:]) == "train"
    try:
        if gc.isenabled():
            gc.disable()  # until the command is set up (_set_up)
            _collector_held = True
        if owns_process:  # before any command imports the kernels (train's, here below)
            scipy_blas_alone()
        if train:
            failure = None
            try:
                importlib.import_module(".train", __package__)  # numba and the kernels
            except Exception as e:  # numba that cannot start: said once the ranks have joined
                failure = e
            if failure is None and _jit_disabled():  # said by _failed, before a run's folder is made
                failure = RuntimeError("numba's compiler is off")
            try:
                job = world()  # joins the other ranks, if an MPI launcher started this
            except CharrnnError as e:
                _print_error(str(e))
                raise SystemExit(e.exit_code)
            except Exception as e:
                failure = failure or e
            failure = failure or job.threads_failure
            if failure is not None:  # by rank 0 if it fails too, and the job ends (an abort, below)
                _failed(failure)
            replaced = stop_at_once_until_training(one_process=job.size == 1)  # after MPI_Init, which may take SIGUSR1
        stopped = HELD.let_go()
        if not train:  # just the process it is: its signals as without a launcher
            HELD.restore()
        if stopped or HELD.seen:  # a stop while the ranks joined: ended now, all together (below);
            raise SystemExit(130)  # or one that an import turned into an error it took (scipy_blas_alone)
        _main()
    except KeyboardInterrupt:  # before the command's own handling, one process or many
        if job.size > 1:
            job.abort(130)
        raise SystemExit(130)
    except SystemExit as e:
        if HELD.seen and e.code not in (0, None):  # an error after a stop: the stop's (_print_error)
            e = SystemExit(130)
        if job.size > 1 and e.code not in (0, None) and not job.stopped_together:
            job.abort(e.code if isinstance(e.code, int) else 1)
        raise e
    except BaseException:  # a traceback CHARRNN_TRACEBACK=1 asked for, or a line that could not be said
        if job.size > 1:
            import traceback

            try:  # (stderr on a full disk: the job must end all the same)
                job.unmute()
                traceback.print_exc()
            except BaseException:
                pass
            job.abort(1)
        raise
    finally:
        given_back(replaced)
        HELD.restore()
        HELD.seen = False  # (for a program that calls main() again)
        _set_up()
        if owns_process:
            _let_out_or_dropped(sys.stdout, sys.stderr)
        gc.freeze()  # nothing to collect on the way out: exit without walking every object again


def _main():
    from .__main__ import command_named

    try:
        if sys.stdout is None and command_named(sys.argv[1:]) not in ("train", ""):
            # `>&-`: what the command is for would go nowhere (train's result is its checkpoints)
            raise CharrnnError("standard output is closed (>&-): there is nowhere to write the result")
        code = app(standalone_mode=False)  # usage errors come here, to be said in one line
    except CharrnnError as e:
        e.__traceback__ = e.__context__ = None  # their frames' memory (a log too large to chart), for the line
        _print_error(str(e), getattr(e, "rank", None))  # a Refused names the rank that refused
        raise SystemExit(e.exit_code)
    except OSError as e:
        _print_error(str(_not_written(e)) if _raised_by_typer(e) else os_error_message(e))
        raise SystemExit(1)
    except MemoryError:
        _print_error("out of memory; use a smaller model, batch or window, or free some memory")
        raise SystemExit(1)
    except UnicodeEncodeError as e:  # PYTHONIOENCODING=ascii, or an old locale without UTF-8
        from .corpus import held_byte

        byte = held_byte(e.object[e.start])
        if byte is not None:  # a byte of a name that is not UTF-8 (os.fsdecode)
            _print_error(f"a file or folder name holds the byte 0x{byte:02X}, which is not UTF-8 and cannot "
                         "be written here; rename it")
        else:
            _print_error(f"the character U+{ord(e.object[e.start]):04X} cannot be written in the encoding "
                         f"{e.encoding}; set PYTHONIOENCODING=utf-8, or a UTF-8 locale")
        raise SystemExit(1)
    except Exception as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # no command: the help, which typer has printed
            help_text = e.format_message()  # empty where typer printed it itself
            if help_text.strip():
                sys.stdout.write(help_text.rstrip("\n") + "\n")
            raise SystemExit(e.exit_code)
        if _is_usage_error(e):
            _print_error(_usage_line(e))
            raise SystemExit(e.exit_code)
        _failed(e)
    raise SystemExit(code if isinstance(code, int) else 0)  # typer.Exit's code, or 0


def _raised_by_typer(e: BaseException) -> bool:
    """Whether e came from typer, click or rich (typer's help), not from charrnn's code they
    called: they write nothing but standard output. `charrnn --help > /dev/full` said only "No
    space left on device"."""
    deepest, tb = None, e.__traceback__  # outermost frame first: every command runs inside typer's
    while tb is not None:
        package = tb.tb_frame.f_globals.get("__name__", "").split(".")[0]
        if package in ("charrnn", "typer", "click", "rich"):
            deepest = package
        tb = tb.tb_next
    return deepest in ("typer", "click", "rich")


def _failed(e: Exception):
    """Any other exception: numba that cannot start (the environment's fault), or a bug of ours.
    Still one line and exit 1; for a bug, the way to see the rest."""
    why = _numba_failure(e)
    if why:
        _print_error(f"numba cannot start: {why}; check the NUMBA_* environment variables, and that numba "
                     "is installed as the README says")
        raise SystemExit(1)
    if _jit_disabled():  # the kernels' LLVM intrinsics have no Python to run
        _print_error(f"numba's compiler is off (NUMBA_DISABLE_JIT={os.environ.get('NUMBA_DISABLE_JIT', '')}), and "
                     "the kernels need it: unset NUMBA_DISABLE_JIT")
        raise SystemExit(1)
    if os.environ.get("CHARRNN_TRACEBACK"):
        raise e
    message = " ".join(line.strip() for line in str(e).splitlines() if line.strip())  # one line
    _print_error(f"internal error ({type(e).__name__}: {message}); please report it with the output of the same "
                 "command run with CHARRNN_TRACEBACK=1")
    raise SystemExit(1)


def _jit_disabled() -> bool:
    """Whether numba, once imported, runs every kernel as Python (NUMBA_DISABLE_JIT)."""
    config = sys.modules.get("numba.core.config")
    return config is not None and bool(config.DISABLE_JIT)


def _numba_failure(e: Exception):
    """What went wrong, if e was raised while numba or llvmlite loaded (a bad NUMBA_NUM_THREADS
    fails its import) or while numba started its threads (NUMBA_THREADING_LAYER naming a layer
    that is not installed); else None."""
    from .__main__ import numba_cannot_read

    tb = e.__traceback__
    while tb is not None:
        module, function = tb.tb_frame.f_globals.get("__name__", ""), tb.tb_frame.f_code.co_name
        if module.split(".")[0] in ("numba", "llvmlite") and function in ("<module>", "_launch_threads"):
            unreadable = numba_cannot_read(str(e)) if isinstance(e, RuntimeWarning) else None
            if unreadable:  # numba's warning about a NUMBA_* value, made an error (__main__.py)
                value, _, why = unreadable
                return f"it cannot read {value} ({why})"
            first = next((line.strip() for line in str(e).splitlines() if line.strip()), "").rstrip(".")
            return f"{type(e).__name__}: {first}" if first else type(e).__name__
        tb = tb.tb_next
    return None


def _is_usage_error(e: Exception) -> bool:
    """A bad command line, as typer's click reports it (a ClickException: a bad or missing value,
    an unknown option or command). By name, as typer bundles its own click."""
    return any(c.__name__ == "ClickException" for c in type(e).__mro__)


# characters of a command-line value that a usage error shows whole: a long path, but not the
# pages of a file pasted as a value
SHOWN_WHOLE = 200


def _value_cut_short(value: str) -> str:
    """A value of the command line too long for a message: its start and its length; a number
    beyond the digits Python reads as an int (sys.get_int_max_str_digits()) says so, which typer's
    "is not a valid int" does not."""
    digits = value.strip().removeprefix("-").removeprefix("+")  # as int() reads it
    if digits.isdecimal():
        over = len(digits) > sys.get_int_max_str_digits() > 0
        return (f"{value[:20]}... ({len(digits):,} digits"
                + (f", more than the {sys.get_int_max_str_digits():,} a whole number is read from)" if over else ")"))
    return f"{value[:SHORT_REPR - 3]}... ({len(value):,} characters)"


def _usage_line(e) -> str:
    """typer's usage error as one line: its message (its own lines joined), and where help is."""
    from .__main__ import command_named

    message = e.format_message()
    # the values typed: each argument, and what follows the = of an --option=value
    values = {a.split("=", 1)[1] if a.startswith("--") and "=" in a else a for a in sys.argv[1:]}
    for value in sorted({v for v in values if len(v) > SHOWN_WHOLE}, key=len, reverse=True):
        cut = _value_cut_short(value)  # shown as typed, or as its repr
        message = message.replace(repr(value), repr(cut)).replace(value, cut)
    message = " ".join(message.split())
    if any(bytes_shown(arg) != arg for arg in sys.argv[1:]):
        # a value shown as repr: its bytes that are not UTF-8 as every message shows them ('\xff'
        # is not a valid float). Only then: a \udcff typed as such is no byte
        message = escapes_shown(message)
    ctx = getattr(e, "ctx", None)
    if ctx is not None:
        return f"{message} (see '{ctx.command_path} --help')"
    # an option's missing value comes without its command's context: the command line as typed,
    # named as click names it in the others (python -m charrnn, or the script's name)
    script = os.path.basename(sys.argv[0])
    where = "python -m charrnn" if script in ("__main__.py", "") else script
    command = command_named(sys.argv[1:])
    if command in typer.main.get_command(app).commands:
        where += f" {command}"
    return f"{message} (see '{where} --help')"
