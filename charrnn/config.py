"""Training settings: one typed, commented dataclass, validated in one place; and the bounds of
every numeric option, which the CLI's help, its checks and validate() all read from here.

The resolved config is printed at the start of a run and stored in every checkpoint, together
with the vocabulary, so that a checkpoint carries everything needed to resume or sample.
"""
import math
import unicodedata
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .cells import NAMES as CELLS  # the registry's names; cells.py imports no kernels
from .cells import OPTIONS as CELL_OPTIONS
from .cells import check_option, check_options_read, normal_tau
from .errors import UsageError, as_flag, check_read, flag, repr_shown

# the optimizers optim.py implements, named here so that reading the defaults (the CLI does,
# for its help) imports no kernels
OPTIMIZERS = ("adam", "rmsprop", "adagrad", "sgd")
# learning-rate schedules (optim.learning_rate); linear and cosine run over the whole budget
SCHEDULES = ("linear", "cosine", "step", "constant")
# the stopping rules: the first reached ends a run (0: no limit)
STOPPING_RULES = ("max_steps", "epochs", "time_limit")
# the settings of particular schedules, and the schedules that read each
SCHEDULE_OPTIONS = {"lr_decay": ("step",), "decay_every": ("step",), "decay_start": ("linear", "cosine")}
# settings that act only with another above 0, and what that one's 0 means
ACTS_WITH = {"sample_length": "sample_every", "sample_temperature": "sample_every", "lr_decay": "decay_every",
             "eval_chars": "val_fraction", "eval_every": "val_fraction"}
ACTS_WITH_UNUSED = {"sample_every": "no sample is taken", "decay_every": "the rate never decays",
                    "val_fraction": "nothing is held out to validate on"}
# the settings whose empty value is the option left out (a fresh dated name, a fresh model), not
# a value given: messages say so, not ''
EMPTY_IS_NOT_GIVEN = ("run", "init_from")
# the settings that take one of a few names
CHOICES = {"cell": CELLS, "optimizer": OPTIMIZERS, "schedule": SCHEDULES}
# What goes between documents when a run reads several files: one character of its own, ETX
# ("end of text", U+0003). textgenrnn wraps every text in a meta token that is no character of
# any text, and GPT-2 ends documents with <|endoftext|>, for the same reason: a model that
# learns one unambiguous symbol for "a document ends here" can be stopped there when sampling
# (`charrnn sample --stop-at`). A blank line, the other common choice, is also a paragraph break
# inside documents. ETX is no whitespace and no line break to Python (str.split and splitlines
# leave it alone, as they would not U+001C..U+001E), and no text file holds it.
DOC_SEP = "\x03"
# A run folder's logs, and how each of their records begins: what tells charrnn's own from a
# file of the user's (a run never replaces one), and from text to learn (a folder read for text)
METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.txt"
LOG_STARTS = {METRICS_FILE: '{"kind": "', SAMPLES_FILE: "--- step "}
# `charrnn inspect` reads INSPECT_CHARS characters unless told otherwise, and the terminal colours
# at most that many; it reads at most INSPECT_MAX_CHARS, up to which its page stays quick
INSPECT_CHARS, INSPECT_MAX_CHARS = 2_000, 20_000


@dataclass(frozen=True)
class Range:
    """The numbers an option accepts: low to high, an end left out when open; None: unbounded.
    NaN and infinities are never inside."""
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False

    def __contains__(self, x):
        if isinstance(x, bool) or not isinstance(x, (int, float)) or (isinstance(x, float) and not math.isfinite(x)):
            return False  # (an int is finite, and may be too large for math.isfinite)
        if self.low is not None and (x <= self.low if self.open_low else x < self.low):
            return False
        return self.high is None or (x < self.high if self.open_high else x <= self.high)

    def __str__(self):
        """typer's notation for a range (1<=x<=8192, x>=0), with < for an open end."""
        if self.high is None:
            return "x" if self.low is None else f"x{'>' if self.open_low else '>='}{self.low}"
        high = f"x{'<' if self.open_high else '<='}{self.high}"
        return high if self.low is None else f"{self.low}{'<' if self.open_low else '<='}{high}"


# The bounds of TrainConfig's numeric fields.
RANGES = {
    "val_fraction": Range(0, 0.45),
    "test_fraction": Range(0, 0.45),
    "hidden": Range(1, 8192),
    "layers": Range(1, 16),
    "dropout": Range(0, 1, open_high=True),
    "batch": Range(1, 4096),
    "k1": Range(1, 10000),
    "k2": Range(1, 10000),
    "reset_every": Range(0),
    "lr": Range(0, 10, open_low=True),
    "lr_decay": Range(0, 1, open_low=True),
    "decay_every": Range(0),
    "warmup": Range(0),
    "decay_start": Range(0, 1, open_high=True),
    "clip_norm": Range(0),
    "clip_value": Range(0),
    "weight_decay": Range(0, 10),  # (a float32 product with the weights: 1e300 would make them inf)
    "epochs": Range(0),
    "max_steps": Range(0),
    "time_limit": Range(0),
    "eval_every": Range(1),
    "eval_chars": Range(0),
    "checkpoint_every": Range(1),
    "sample_every": Range(0),
    "sample_length": Range(1, 100_000),
    "sample_temperature": Range(0, 1000),  # as `charrnn sample --temperature`
    "seed": Range(0),  # numpy seeds are non-negative
    # the numeric options of particular cells, from their entries in cells.OPTIONS (tau, a
    # string, is checked by cells.check_option)
    **{name: Range(opt.low, opt.high) for name, opt in CELL_OPTIONS.items() if name != "tau"},
}

# The bounds of `charrnn sample`'s options (sampling.check_options reads them too).
SAMPLE_RANGES = {
    "length": Range(0, 100_000_000),
    "temperature": Range(0, 1000),  # 0: always the most probable character
    "top_k": Range(0),  # 0: off
    "top_p": Range(0, 1, open_low=True),  # 1: off
    "seed": Range(0),
    "num_samples": Range(1, 100_000),
}

# The bounds of `charrnn eval`'s options (the API's score and score_lines check them too).
EVAL_RANGES = {
    "batch": RANGES["batch"],
    "window": Range(1, 100_000),
}

# The bounds of the numeric options of `charrnn gradcheck`, `gradflow` and `inspect` (gradflow's
# cell options are the training's, in RANGES)
GRADCHECK_RANGES = {
    "layers": Range(1, 8),
    "hidden": Range(1, 256),
    "steps": Range(1, 200),
    "batch": Range(1, 64),
    "vocab": Range(2, 512),
    "seed": RANGES["seed"],
    "k1": Range(1, 200),
    "k2": Range(1, 200),
    "tolerance": Range(0, open_low=True),  # 0 would pass only exact differences: none
    "per_tensor": Range(1),
}
GRADFLOW_RANGES = {
    "hidden": Range(1, 4096),
    "layers": Range(1, 16),
    "seed": RANGES["seed"],
    "radius": Range(0, 100),  # as IndRNN's --u-max, a bound on what it rescales
    "forget_bias": Range(),  # any finite value
    "max_k": Range(1, 1000),
    "windows": Range(1, 10_000),
    "batch": Range(1, 1024),
}
INSPECT_RANGES = {
    "unit": Range(0),
    "layer": Range(0),
    "chars": Range(1, INSPECT_MAX_CHARS),
    "top": Range(1, 100),
}

# What `train --resume` may change: how the run goes on from the saved state (the learning rate,
# its schedule, clipping, fresh starts, the stopping rules) and its bookkeeping (how often it
# validates and saves, samples).
# The rest decides what the saved state is: the model, the text and how it is cut into streams
# and windows, the optimizer and the random draws; and what a validation loss measures
# (--eval-chars), to which best.npz's own figure must compare. Resumed without changes, a run
# continues exactly as the uninterrupted one would have.
RESUME_MAY_CHANGE = ("lr", "schedule", "lr_decay", "decay_every", "decay_start", "warmup", "clip_norm", "clip_value", "reset_every",
                     "epochs", "max_steps", "time_limit", "eval_every", "checkpoint_every",
                     "sample_every", "sample_length", "sample_temperature")
# What a fine-tuned run (--init-from) takes from its checkpoint: the model itself.
MODEL_SETTINGS = ("cell", "hidden", "layers", *CELL_OPTIONS)


def check_resume_overrides(given: dict, saved: dict, run_dir) -> dict:
    """The settings of `given` a resume of the run in `run_dir` takes: those of RESUME_MAY_CHANGE.
    Any other may be given only as the run has it (its config `saved`), as the command that
    started the run, given again with --resume, gives it, and is left out; a UsageError names
    those that differ, with the run's values. --run and --out-dir must name the run's folder."""
    unknown = [n for n in given if n not in {f.name for f in fields(TrainConfig)}]
    if unknown:
        raise UsageError(f"no such setting: {', '.join(map(flag, unknown))}")
    fixed = {n: v for n, v in given.items() if n not in RESUME_MAY_CHANGE}
    if "k2" in fixed:  # a --k2 the run cut when it began (Trainer): the command that began it resumes it
        run = {**OLDER_CHECKPOINTS, **saved}  # (a checkpoint from before --reset-every holds none)
        limits = steps_a_window_can_use(run["cell"], run["reset_every"], run["k1"])
        if limits and min(fixed["k2"], *(steps for steps, _ in limits)) == saved["k2"]:
            del fixed["k2"]
    check_options_read([n for n in CELL_OPTIONS if n in fixed], [saved["cell"]], " (the run's)")
    conflicts = settings_differing(fixed, saved, [n for n in fixed if n not in ("run", "out_dir")])
    if "run" in fixed or "out_dir" in fixed:  # where the run is, not the words that named it
        folder = Path(fixed.get("out_dir", Path(run_dir).parent)) / fixed.get("run", Path(run_dir).name)
        if folder.resolve() != Path(run_dir).resolve():
            named = ", ".join(as_flag(n, shown_setting(str(fixed[n]))) for n in ("out_dir", "run") if n in fixed)
            conflicts.append(f"{named} (naming {folder}, not the run's folder {run_dir})")
    if conflicts:
        raise UsageError(f"a resumed run keeps its model, text, batch, windows, optimizer and seed; leave out "
                         f"{', '.join(conflicts)} (these may change: {', '.join(map(flag, RESUME_MAY_CHANGE))})")
    return {n: v for n, v in given.items() if n in RESUME_MAY_CHANGE}


def check_settings_used(names, cfg, *, resume: bool) -> None:
    """A UsageError for a setting in `names` (those given) that the run `cfg` would not use: one
    of a schedule that does not read it (--lr-decay with linear, errors.check_read), or one that
    acts only with another above 0 (ACTS_WITH) where that one is 0. The settings not in `names`
    are the defaults, or on resume the run's, of which only RESUME_MAY_CHANGE may be given."""
    def of(name):
        return "" if name in names else " (the run's)" if resume else " (the default)"

    check_read(names, SCHEDULE_OPTIONS, "schedule", [cfg.schedule], of("schedule"))
    for name in names:
        other = ACTS_WITH.get(name)
        if other and not getattr(cfg, other):
            remedy = (f"a resumed run keeps its {flag(other)}, so" if resume and other not in RESUME_MAY_CHANGE
                      else f"give {flag(other)} above 0, or")
            raise UsageError(f"{flag(name)} acts only with {flag(other)} above 0, and it is 0{of(other)}: "
                             f"{ACTS_WITH_UNUSED[other]}; {remedy} leave out {flag(name)}")


def steps_a_window_can_use(cell: str, reset_every: int, k1: int) -> list:
    """[(steps, why)]: the most steps a kept window (--k2) can use, besides a stream's steps in
    an epoch (corpus.window_reach): those since the last fresh start, and for an echo-state
    network, whose reservoir learns nothing, the window's own. Steps kept beyond them would be
    saved in every checkpoint, and change nothing: a run cuts its --k2 to them when it begins
    (Trainer), and a resume given the --k2 of the command that began it takes it as cut."""
    limits = []
    if reset_every:
        limits.append((reset_every * k1, f"the steps since a fresh start, every --reset-every {reset_every} updates"))
    if cell == "esn":
        limits.append((k1, "an echo-state network learns nothing through the steps before its window"))
    return limits


def resolved_u_max(u_max: float, k2: int) -> float:
    """IndRNN's bound on |u|: --u-max, or where it is 0, 2^(1/k2) (Li et al. 2018's bound for the
    window, cells.OPTIONS)."""
    return u_max or 2.0 ** (1.0 / k2)


def settings_differing(given: dict, saved: dict, names) -> list[str]:
    """Of the settings `names` in `given`, those the run of config `saved` holds otherwise, as
    "--hidden 512 (it has 256)". Each side as a run holds it: --tau in one spelling (--tau 5.0 is
    the 5 a model has), --u-max 0 as the run's bound, --doc-sep as its model reads it, --encoding
    by its name, --init-from as the checkpoint it names."""
    from .corpus import check_encoding, model_text

    saved = {**OLDER_CHECKPOINTS, **saved}
    saved["u_max"] = resolved_u_max(saved["u_max"], saved["k2"])  # the bound its u was kept within
    saved["tau"] = normal_tau(saved["tau"])
    held = {"tau": normal_tau, "u_max": lambda v: v or saved["u_max"], "encoding": check_encoding,
            "doc_sep": lambda v: model_text(v, saved["encoding"], "--doc-sep"),
            "init_from": lambda v: _checkpoint_read(v, kept=saved.get("init_from"))}
    def has(n):  # (a run that fine-tuned no checkpoint has none, not '')
        return "none" if n in EMPTY_IS_NOT_GIVEN and not saved.get(n) else shown_setting(saved.get(n))

    # a resolved bound in full (rounded, it is no value that matches), and the way to keep it
    return [f"{flag(n)} {given[n]} (it has {saved[n]!r}, which --u-max 0 keeps)" if n == "u_max" else
            f"{flag(n)} {shown_setting(given[n])} (it has {has(n)})"
            for n in names if n in given and held.get(n, lambda v: v)(given[n]) != saved.get(n)]


def _checkpoint_read(path, kept=None) -> str:
    """The checkpoint `path` names (a run folder: its best.npz, else its latest.npz), as a
    fine-tuned run keeps it; `kept` if `path` could have named it: the command that started the
    run, given again with --resume, still resumes it, where the folder has gained a best.npz
    since, or lost the checkpoint (a resumed run needs it no longer)."""
    from .checkpoint import SUFFIX, resolve_checkpoint

    if kept:
        try:
            given = Path(path).resolve()
            named = (given, Path(f"{given}{SUFFIX}"), given / f"best{SUFFIX}", given / f"latest{SUFFIX}")
        except (OSError, RuntimeError):  # (a loop of links: RuntimeError before Python 3.13)
            named = ()
        if Path(kept) in named:
            return kept
    return str(resolve_checkpoint(path).resolve())


def shown_setting(value) -> str:
    """A setting's value in a message: text that is empty or holds control characters (a
    separator) or the bytes of a name that is not UTF-8, and a list (of files), as repr; those
    bytes as \\xff either way (errors.repr_shown)."""
    if isinstance(value, list) or isinstance(value, str) and not (value and value.isprintable()):
        return repr_shown(value)
    return str(value)


def check_init_overrides(given: dict, saved: dict, checkpoint):
    """A UsageError if `given` sets any of the model's settings (MODEL_SETTINGS) otherwise than the
    checkpoint `saved` (its config) that a run fine-tunes."""
    unread = {n for n in CELL_OPTIONS if saved["cell"] not in CELL_OPTIONS[n].cells}  # cells.check_options_read's
    conflicts = settings_differing(given, saved, [n for n in MODEL_SETTINGS if n not in unread])
    if conflicts:
        raise UsageError(f"--init-from {checkpoint} holds the model {saved['cell']} {saved['layers']}x{saved['hidden']}, "
                         f"whose cell, sizes and cell options a fine-tuned run keeps; leave out {', '.join(conflicts)}")


@dataclass
class TrainConfig:
    # data
    # text files and folders, as absolute paths once a run has read them; none: the shipped
    # corpora/tinyshakespeare.txt (a single path may be given as a string)
    corpus: list[str] = field(default_factory=list)
    encoding: str = "utf-8"  # utf-8 | latin-1 | bytes
    doc_sep: str = DOC_SEP  # put between documents (files); corpus.DOC_SEP says why this default
    val_fraction: float = 0.05  # contiguous validation part, after the training part
    test_fraction: float = 0.05  # contiguous test part, at the end of the file
    # model
    cell: str = "lstm"
    hidden: int = 512
    layers: int = 1
    dropout: float = 0.4  # on the input of every layer above the first and of the output layer
    init_from: str = ""  # fine-tune: the checkpoint whose model (cell, sizes, weights) the run starts from
    # options of particular cells (cells.OPTIONS says what each means)
    tau: str = CELL_OPTIONS["tau"].default  # leaky
    spectral_radius: float = CELL_OPTIONS["spectral_radius"].default  # esn
    leak: float = CELL_OPTIONS["leak"].default  # esn
    u_max: float = CELL_OPTIONS["u_max"].default  # indrnn; 0: 2^(1/k2)
    # truncated BPTT (tbptt.py, and the README): an update every k1 steps, gradients flow back k2 steps
    batch: int = 32  # parallel streams
    k1: int = 50  # char-rnn's sequence length; twice the updates per character of 100
    k2: int = 50
    # every reset_every updates each stream starts again from a zero state where it is, as sampling,
    # evaluation and a new epoch start: a model that never learnt to start from one can run away
    # from it (README: Truncated backpropagation through time). 0: only at each new epoch
    reset_every: int = 50
    # optimization
    optimizer: str = "adam"
    lr: float = 3e-3  # measured best in the default budget (README); char-rnn's 2e-3 learnt less
    schedule: str = "linear"  # the learning rate over the run's budget (optim.learning_rate)
    lr_decay: float = 0.95  # schedule "step": multiply the learning rate by this ...
    decay_every: int = 500  # ... every this many updates (0: never)
    warmup: int = 0  # linear warm-up over this many updates
    decay_start: float = 0.7  # linear, cosine: hold lr for this fraction of the budget, then decay
    clip_norm: float = 5.0  # global-norm clipping (Pascanu et al. 2013); 0 turns it off
    clip_value: float = 0.0  # element clipping (Mikolov 2012); 0 turns it off
    weight_decay: float = 0.0
    # stopping: whichever comes first; 0 means no limit of that kind
    epochs: float = 0.0
    max_steps: int = 0
    time_limit: float = 840.0  # seconds of training, evaluation included
    # bookkeeping
    eval_every: int = 200  # updates between validation runs
    eval_chars: int = 0  # validate on at most this many characters (0: the whole split)
    checkpoint_every: int = 200  # updates between saves of latest.npz
    sample_every: int = 0  # updates between samples printed and added to samples.txt (0: none)
    sample_length: int = 200  # characters per sample
    sample_temperature: float = 0.8
    seed: int = 1234
    run: str = ""  # run name under out_dir; "" means a fresh dated name
    out_dir: str = "checkpoints"

    def __post_init__(self):
        if isinstance(self.corpus, str):  # one path (older checkpoints hold one, "" for the shipped text)
            self.corpus = [self.corpus] if self.corpus else []
        self.corpus = [str(p) for p in self.corpus]

    def validate(self):
        """Raise a UsageError (exit 2 at the command line) naming the first option out of range."""
        def bad(option, value, need):
            raise UsageError(f"{as_flag(option, value)} is out of range: {need}")

        for name in CELL_OPTIONS:
            check_option(name, getattr(self, name))
        self.tau = normal_tau(self.tau)
        for name, choices in CHOICES.items():
            if getattr(self, name) not in choices:
                bad(name, getattr(self, name), f"choose one of {', '.join(choices)}")
        from .corpus import check_doc_sep, check_encoding

        self.encoding = check_encoding(self.encoding)
        for name, allowed in RANGES.items():
            if getattr(self, name) not in allowed:
                bad(name, getattr(self, name), f"it must be in {allowed}")
        check_doc_sep(self.doc_sep, self.encoding)
        if self.val_fraction + self.test_fraction > 0.5:
            raise UsageError("--val-fraction plus --test-fraction must leave at least half the text for training")
        if self.run in (".", "..") or any(c in self.run for c in ("/", "\\", "\0")):
            # the run's folder is OUT_DIR/RUN: a separator, '..' or an absolute path would leave OUT_DIR
            raise UsageError(f"--run {self.run!r} is not a plain folder name; give a name without '/', "
                               f"'\\' or '..' (the run's folder is made inside --out-dir)")
        return self

    def check_run_name(self, given=False):
        """A UsageError for a new run's name that messages could not show on one line: blank, or
        holding a line break or another control character (a byte that is no UTF-8, held as a
        lone surrogate, is kept). Apart from validate(): runs named so before keep resuming.
        `given`: the name was given (--run '', as an unset variable gives it, is blank too, not
        the default name)."""
        if (self.run or given) and (not self.run.strip() or any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in self.run)):
            raise UsageError(f"--run {self.run!r} is blank or holds a line break or another control character; "
                             "give a name of printable characters")

    def check_stopping(self):
        """A UsageError for a run that nothing would stop (0 means no limit), or whose --max-steps
        ends its warm-up before the rate reaches --lr. Apart from validate(), which also checks
        the settings a checkpoint holds and a config whose stopping rule is set later."""
        if not any(getattr(self, name) for name in STOPPING_RULES):
            raise UsageError("nothing would stop the run: --max-steps, --epochs and --time-limit are all 0 (no "
                             "limit); give one of them above 0")
        if self.max_steps and self.warmup >= self.max_steps:  # (it ran, the rate never above 30% of --lr)
            raise UsageError(f"--warmup {self.warmup} is not shorter than --max-steps {self.max_steps}: the learning "
                             f"rate would never reach --lr {self.lr:g}; give a shorter warm-up")

    def cell_options(self):
        """The ModelSpec options of this run, the bound on |u| resolved for the window."""
        u_max = resolved_u_max(self.u_max, self.k2)
        return (("tau", self.tau), ("spectral_radius", self.spectral_radius), ("leak", self.leak), ("u_max", u_max))

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        known = {f.name for f in fields(cls)}
        d = {**OLDER_CHECKPOINTS, **d}
        return cls(**{k: v for k, v in d.items() if k in known})


# Settings added after checkpoints were first written, and what a checkpoint without one ran.
OLDER_CHECKPOINTS = {
    "schedule": "step",  # before schedules had a name: the step decay
    "decay_start": 0.0,  # linear and cosine decayed from the start
    "doc_sep": "",  # before many files: one file, nothing between documents
    "init_from": "",  # before fine-tuning: every run started from a fresh model
    "sample_every": 0,  # before samples while training: none
    "sample_length": 200,
    "sample_temperature": 0.8,
    "reset_every": 0,  # before fresh starts: the state ran on but for a new epoch
    # before cells had options: their defaults (the cells that read them came with them)
    **{name: opt.default for name, opt in CELL_OPTIONS.items()},
}
