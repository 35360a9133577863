"""Charts of a training run's metrics.jsonl, in the terminal and as a PNG (matplotlib, optional).

metrics.jsonl holds one JSON object per line; the trainer appends as it goes, so the last line
may be torn by a crash and is then skipped. Used here:

    {"kind": "train", "step", "loss", "grad_norm", ...}    loss in nats; grad_norm before clipping
    {"kind": "val", "step", "loss", "bpc"}
    {"kind": "test", "loss", "bpc"}                        at most one, at the end

Other kinds and other keys are ignored.
"""
from __future__ import annotations

import json
import logging
import math
import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .config import LOG_STARTS, METRICS_FILE
from .errors import CharrnnError, Note, controls_escaped, counted
from .outputs import shown_name, write_output

# No square brackets (as in charrnn[plot]): the CLI prints error messages as rich markup.
INSTALL_HINT = "pip install matplotlib (charrnn's optional 'plot' extra installs it too)"


@dataclass
class Metrics:
    path: Path
    train: dict = field(default_factory=lambda: {"step": [], "loss": [], "grad_norm": [], "bpc": []})
    val: dict = field(default_factory=lambda: {"step": [], "loss": [], "bpc": []})
    test: dict | None = None
    torn_last_line: bool = False
    stepless: int = 0  # train and val records without a step that is a finite number: not drawn


def find_metrics(run) -> Path:
    """metrics.jsonl of a run folder (or the file itself, or a checkpoint in the folder, as the
    other commands take one); checkpoints/RUN is tried as well."""
    p = given = Path(run)
    if p.suffix == ".npz" and p.is_file():
        p = p.parent
    named = p.exists() and not p.is_dir()  # a file, or a FIFO or device in its place
    candidates = [p] if named else [p / METRICS_FILE, Path("checkpoints") / p / METRICS_FILE]
    for c in candidates:
        if c.is_file():
            return c
        if c.exists():  # a folder, a FIFO, /dev/null: said as the other commands say it
            what = "a folder" if c.is_dir() else "not a regular file"
            raise CharrnnError(f"{c} is {what}; pass the run folder of a training run")
    where = f"beside {given} (in {p})" if p != given else f"in {p}"  # a checkpoint given: named as typed
    raise CharrnnError(f"no {METRICS_FILE} {where}; pass the run folder of a training run (it holds {METRICS_FILE})")


def _number(v):
    """A finite float, or None for anything else (missing, null, NaN, a string)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        v = float(v)
    except OverflowError:  # a whole number of hundreds of digits: no metric
        return None
    return v if math.isfinite(v) else None


# A line of the log is read at most this long: a record is a few hundred characters, and a file
# given by mistake (a corpus without line breaks) is refused after one such piece, not read whole.
LONGEST_LINE = 1 << 16


def _lines(log):
    """(number, line) of a log opened as text with universal line ends (CR alone too, as
    bytes.splitlines split them), each line at most LONGEST_LINE characters: a longer one is
    passed on as its first piece and the rest of it skipped."""
    n = 0
    while line := log.readline(LONGEST_LINE):
        n += 1
        yield n, line  # first: a file refused at it is read no further
        if len(line) == LONGEST_LINE and not line.endswith("\n"):
            while (rest := log.readline(LONGEST_LINE)) and not rest.endswith("\n"):
                pass


def read_metrics(run) -> Metrics:
    """The records of a run's log, read a line at a time: a file given by mistake (a corpus) is
    refused at its first line, not read whole, and a long log costs its figures, not its text."""
    path = find_metrics(run)
    m = Metrics(path)
    records = 0  # lines that are records of some kind: a log, not some other file
    text = False  # whether any line holds more than white space
    torn = None  # the number of a line that is no JSON, where it may yet be the torn last line
    try:
        # undecodable bytes kept as surrogates, each line then decoded strictly: a torn last line
        # may end inside a character; utf-8-sig: an editor's byte-order mark is no part of line 1
        with open(path, encoding="utf-8-sig", errors="surrogateescape", buffering=LONGEST_LINE) as log:
            for n, line in _lines(log):
                if not line.strip():
                    continue
                text = True
                if torn is not None:  # a line follows it: no crash while appending
                    raise _not_json(path, torn, records)
                try:
                    rec = json.loads(line.encode("utf-8", "surrogateescape").decode("utf-8"))
                except (ValueError, RecursionError):  # UnicodeDecodeError too; RecursionError: nested too deep
                    # a crash while appending leaves a record unfinished, on the last line of a
                    # log: one with a record before it, or whose line starts as a record does
                    if not (records or line.startswith(LOG_STARTS[METRICS_FILE])):
                        raise _not_json(path, n, records) from None
                    torn = n
                    continue
                if not isinstance(rec, dict) or "kind" not in rec:
                    continue
                records += 1
                _add(m, rec)
    except OSError as e:
        raise CharrnnError(f"cannot read {path}: {e.strerror or e}") from None
    except MemoryError:
        raise too_large(path) from None
    m.torn_last_line = torn is not None
    if not records and not m.torn_last_line and text:
        raise CharrnnError(f"{path} is not a charrnn {METRICS_FILE}: it holds no train, val or test record; "
                           "pass the run folder of a training run")
    if not m.train["step"] and not m.val["step"]:
        if m.stepless:  # (no later record will make these drawable)
            raise CharrnnError(f"{path} has {counted(m.stepless, 'train or val record')} but none with a step that is "
                               "a finite number; the file is corrupt")
        raise CharrnnError(f"{path} has no train or val records yet; plot again once training has logged some")
    return m


def too_large(path) -> CharrnnError:
    return CharrnnError(f"{path} is too large to chart in the memory there is; free some memory")


def _not_json(path, n, records):
    """The error for line n of a file read as a log, which is no JSON and cannot be a torn last
    line: a file that is no log (given by its name, with no record before it), or a corrupt log."""
    if not records and path.name != METRICS_FILE:
        return CharrnnError(f"{path} is not a charrnn {METRICS_FILE}: line {n} is no JSON record; "
                            "pass the run folder of a training run")
    return CharrnnError(f"{path} line {n} is not valid JSON; the file is corrupt")


def _add(m: Metrics, rec: dict):
    """A record's figures into m: test's, or a train or val record's at its step."""
    kind = rec.get("kind")
    if kind == "test":
        m.test = {k: _number(rec.get(k)) for k in ("loss", "bpc")}
        return
    target = {"train": m.train, "val": m.val}.get(kind) if isinstance(kind, str) else None
    step = _number(rec.get("step"))
    if target is None:
        return
    if step is None:
        m.stepless += 1
        return
    for key, values in target.items():
        values.append(step if key == "step" else _number(rec.get(key)))


def summary(m: Metrics) -> str:
    parts = []
    if m.train["step"]:
        last = m.train["loss"][-1]
        # the highest step, not the last record's: a log edited or joined by hand may run back
        parts.append(f"{counted(len(m.train['step']), 'train record')} up to step {_brief(max(m.train['step']), 0)}"
                     + (f", last loss {_brief(last, 4)}" if last is not None else ""))
    vals = [(b, s) for s, b in zip(m.val["step"], m.val["bpc"]) if b is not None]
    if vals:
        best, step = min(vals)
        parts.append(f"best val {_brief(best, 4)} bpc at step {_brief(step, 0)}")
    elif m.val["step"]:
        parts.append(f"{counted(len(m.val['step']), 'val record')} up to step "
                     f"{_brief(max(m.val['step']), 0)}, none with a finite bpc")
    if m.test and m.test.get("bpc") is not None:
        parts.append(f"test {_brief(m.test['bpc'], 4)} bpc")
    if m.torn_last_line:
        parts.append("torn last line skipped")
    return "; ".join(parts)


def _brief(x, places):
    """x with `places` decimals; in 4 significant digits where that would run long (a hand-edited
    1e308 printed 309 digits)."""
    return f"{x:.{places}f}" if abs(x) < 1e12 else f"{x:.4g}"


def _xy(d, key):
    """The points of a series: those with a finite value (_number); a value beyond ±DRAWABLE,
    where matplotlib's axes overflow as the terminal's do, is NaN, a gap in the line on both."""
    from .termchart import DRAWABLE

    pts = [(s, v if abs(v) < DRAWABLE else math.nan) for s, v in zip(d["step"], d[key])
           if v is not None and abs(s) < DRAWABLE]  # a step beyond it is no step of a run
    return [s for s, _ in pts], [v for _, v in pts]


def charts(m: Metrics, width=64, height=14):
    """Two rich Texts: train and val loss against step; the gradient norm before clipping."""
    from .termchart import line_chart

    loss = line_chart([("train loss", *_xy(m.train, "loss")), ("val loss", *_xy(m.val, "loss"))],
                      width=width, height=height, title="loss (nats)", x_label="step")
    grad = line_chart([("grad norm", *_xy(m.train, "grad_norm"))], width=width, height=height,
                      log_y=True, title="gradient norm before clipping", x_label="step")
    return loss, grad


def require_pyplot():
    """matplotlib.pyplot on the Agg backend, or a CharrnnError saying how to install it, or why
    an installed one cannot start."""
    try:
        with _log_noted():
            import matplotlib

            matplotlib.use("Agg")  # files only, no window, works without a display
            import matplotlib.pyplot as plt
    except ImportError as e:
        if e.name == "matplotlib":
            raise CharrnnError(f"--png needs matplotlib, which is not installed; install it with: {INSTALL_HINT}") from None
        raise _cannot_start(e) from None  # a part of it missing (kiwisolver)
    except Exception as e:  # MPLBACKEND=bogus: the environment's, not ours
        raise _cannot_start(e) from None
    return plt


@contextmanager
def _log_noted():
    """matplotlib's log messages while inside (as it is imported, as it draws), each said once as a
    note of one line (errors.Note), where matplotlib printed every one: a font family of a
    matplotlibrc that it cannot find was a line for every text it drew, 306 for one chart. Its
    warnings that it cannot use its settings folder (a HOME it cannot write, an MPLCONFIGDIR
    naming a file or a folder it cannot write) are one note that says what that costs: it keeps
    its settings and font cache in a temporary folder, built again at every start."""
    said = set()

    def note(record):
        if record.funcName == "_get_config_or_cache_dir":  # the function that looks for the folder
            key = "settings"  # its first record says why ("/x is not a writable directory", "mkdir -p failed ...")
            why = " ".join(record.getMessage().split())
            text = (f"matplotlib cannot keep its settings where it looks for them ({why}): it uses a temporary "
                    "folder, which makes --png slower; MPLCONFIGDIR chooses a folder")
        else:  # its first line's first clause: not the advice after a bad key, nor every backend's name
            first = (record.getMessage().strip().splitlines() or [""])[0]
            key = text = f"matplotlib: {' '.join(first.split()).split('; ')[0]}"
        if key not in said:
            said.add(key)
            warnings.warn(Note(text), stacklevel=2)

    handler = logging.Handler(logging.WARNING)
    handler.emit = note
    log = logging.getLogger("matplotlib")  # (its modules log to loggers below this one)
    propagate = log.propagate
    log.addHandler(handler)
    log.propagate = False  # not on to a handler of the program's, nor logging's last resort, stderr
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.propagate = propagate


def _cannot_start(e: Exception) -> CharrnnError:
    why = (str(e).splitlines() or [""])[0].split("; ")[0]  # its first clause: not every backend's name
    return CharrnnError(f"--png needs matplotlib, which cannot start ({type(e).__name__}: {why}); check the "
                        f"MPLBACKEND and MPLCONFIGDIR variables, or reinstall it with: {INSTALL_HINT}")


def literal(name) -> str:
    """A name for a title or label of matplotlib's, drawn as written: a $ escaped, which there
    starts math notation (a run named cost$^$ could not be drawn, and a$5 or $6 lost its
    dollars); control characters as escapes (errors.controls_escaped: an ESC reached the
    terminal in matplotlib's warning that its font lacks it); and the bytes of a name that is not
    UTF-8 as U+FFFD (outputs.shown_name)."""
    return controls_escaped(shown_name(name)).replace("$", r"\$")


def save_figure(fig, path) -> None:
    """fig into `path` as PNG (outputs.check_output has checked the name)."""
    import matplotlib.pyplot as plt

    with _log_noted():
        try:
            with warnings.catch_warnings(record=True) as caught:
                fig.tight_layout()
                write_output(Path(path), lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
        finally:
            plt.close(fig)
        _noted(caught)


def _noted(caught) -> None:
    """matplotlib's warnings while drawing, as notes (errors.Note) of one line each, where they
    were two each: a glyph its font lacks (a run named in Chinese), drawn as a box, once for all
    of them; an axis of one value it widens. Other warnings (a ResourceWarning) go on as they are."""
    said = []
    for w in caught:
        if issubclass(w.category, UserWarning) and not issubclass(w.category, Note):
            said.append(" ".join(str(w.message).split()))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    said = list(dict.fromkeys(said))
    glyphs = [m for m in said if re.match(r"Glyph \d+ .*missing from", m)]
    if glyphs:
        warnings.warn(Note(f"matplotlib's font lacks {counted(len(glyphs), 'character')} of the names, drawn as "
                           "boxes"), stacklevel=3)
    for message in said:
        if message not in glyphs:
            warnings.warn(Note(f"matplotlib: {message}"), stacklevel=3)


def write_png(m: Metrics, path) -> None:
    plt = require_pyplot()
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    for d, label in ((m.train, "train loss"), (m.val, "val loss")):
        xs, ys = _xy(d, "loss")
        if xs:  # a single point is a line of no length (a gap on both sides too): a marker to be seen
            alone = sum(map(math.isfinite, ys)) == 1
            ax1.plot(xs, ys, label=label, marker="o" if d is m.val or alone else None, markersize=3)
    ax1.set_ylabel("loss (nats)")
    if ax1.lines:  # (a legend of nothing is a warning of matplotlib's)
        ax1.legend()
    ax1.grid(True, alpha=0.3)
    xs, ys = _xy(m.train, "grad_norm")
    pts = [(x, y) for x, y in zip(xs, ys) if y > 0]
    if pts:
        ax2.semilogy([x for x, _ in pts], [y for _, y in pts], label="grad norm before clipping",
                     marker="o" if len(pts) == 1 else None, markersize=3)
        ax2.legend()
    ax2.set_xlabel("step")
    ax2.set_ylabel("gradient norm")
    ax2.grid(True, which="both", alpha=0.3)
    fig.suptitle(literal(m.path.parent.name or m.path))
    save_figure(fig, path)
