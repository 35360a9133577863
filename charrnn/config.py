"""Training settings: one typed, commented dataclass, validated in one place; and the bounds of
every numeric option, which the CLI's help, its checks and validate() all read from here.

The resolved config is printed at the start of a run and stored in every checkpoint, together
with the vocabulary, so that a checkpoint carries everything needed to resume or sample.
"""
import math
from dataclasses import asdict, dataclass, fields

from .cells import NAMES as CELLS  # the registry's names; cells.py imports no kernels
from .cells import OPTIONS as CELL_OPTIONS
from .cells import check_option
from .errors import CharrnnError

# the optimizers optim.py implements, named here so that reading the defaults (the CLI does,
# for its help) imports no kernels
OPTIMIZERS = ("adam", "rmsprop", "adagrad", "sgd")
# learning-rate schedules (optim.learning_rate); linear and cosine run over the whole budget
SCHEDULES = ("linear", "cosine", "step", "constant")
# the settings that take one of a few names
CHOICES = {"cell": CELLS, "optimizer": OPTIMIZERS, "schedule": SCHEDULES}
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
    "lr": Range(0, 10, open_low=True),
    "lr_decay": Range(0, 1, open_low=True),
    "decay_every": Range(0),
    "warmup": Range(0),
    "decay_start": Range(0, 1, open_high=True),
    "clip_norm": Range(0),
    "clip_value": Range(0),
    "weight_decay": Range(0),
    "epochs": Range(0),
    "max_steps": Range(0),
    "time_limit": Range(0),
    "eval_every": Range(1),
    "eval_chars": Range(0),
    "checkpoint_every": Range(1),
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

# What `train --resume` may change: the stopping rules. Every other setting decides what the run
# computes, and a resumed run continues exactly as the uninterrupted one would have.
RESUME_MAY_CHANGE = ("epochs", "max_steps", "time_limit")


def check_resume_overrides(names):
    """A CharrnnError if any of these settings may not change on resume (RESUME_MAY_CHANGE)."""
    fixed = [n for n in names if n not in RESUME_MAY_CHANGE]
    if fixed:
        options = lambda ns: ", ".join(f"--{n.replace('_', '-')}" for n in ns)
        raise CharrnnError(f"a resumed run keeps its own settings; leave out {options(fixed)} "
                           f"(only {options(RESUME_MAY_CHANGE)} may change)")


@dataclass
class TrainConfig:
    # data
    corpus: str = ""  # text file; "" means the shipped corpora/tinyshakespeare.txt
    encoding: str = "utf-8"  # utf-8 | latin-1 | bytes
    val_fraction: float = 0.05  # contiguous validation part, after the training part
    test_fraction: float = 0.05  # contiguous test part, at the end of the file
    # model
    cell: str = "lstm"
    hidden: int = 512
    layers: int = 1
    dropout: float = 0.25  # on the input of every layer above the first and of the output layer
    # options of particular cells (cells.OPTIONS says what each means)
    tau: str = CELL_OPTIONS["tau"].default  # leaky
    spectral_radius: float = CELL_OPTIONS["spectral_radius"].default  # esn
    leak: float = CELL_OPTIONS["leak"].default  # esn
    u_max: float = CELL_OPTIONS["u_max"].default  # indrnn; 0: 2^(1/k2)
    # truncated BPTT (tbptt.py, and the README): an update every k1 steps, gradients flow back k2 steps
    batch: int = 32  # parallel streams
    k1: int = 50  # char-rnn's sequence length; twice the updates per character of 100
    k2: int = 50
    # optimization
    optimizer: str = "adam"
    lr: float = 2e-3
    schedule: str = "linear"  # the learning rate over the run's budget (optim.learning_rate)
    lr_decay: float = 0.95  # schedule "step": multiply the learning rate by this ...
    decay_every: int = 500  # ... every this many updates (0: never)
    warmup: int = 0  # linear warm-up over this many updates
    decay_start: float = 0.0  # linear, cosine: hold lr for this fraction of the budget, then decay
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
    seed: int = 1234
    run: str = ""  # run name under out_dir; "" means a fresh dated name
    out_dir: str = "checkpoints"

    def validate(self):
        """Raise CharrnnError naming the first option out of range."""
        def bad(option, value, need):
            raise CharrnnError(f"--{option.replace('_', '-')} {value} is out of range: {need}")

        for name in CELL_OPTIONS:
            check_option(name, getattr(self, name))
        for name, choices in CHOICES.items():
            if getattr(self, name) not in choices:
                bad(name, getattr(self, name), f"choose one of {', '.join(choices)}")
        from .corpus import check_encoding

        self.encoding = check_encoding(self.encoding)
        for name, allowed in RANGES.items():
            if getattr(self, name) not in allowed:
                bad(name, getattr(self, name), f"it must be in {allowed}")
        if self.val_fraction + self.test_fraction >= 0.5:
            raise CharrnnError("--val-fraction plus --test-fraction must leave at least half the text for training")
        if self.run in (".", "..") or any(c in self.run for c in ("/", "\\", "\0")):
            # the run's folder is OUT_DIR/RUN: a separator, '..' or an absolute path would leave OUT_DIR
            raise CharrnnError(f"--run {self.run!r} is not a plain folder name; give a name without '/', "
                               f"'\\' or '..' (the run's folder is made inside --out-dir)")
        return self

    def cell_options(self):
        """The ModelSpec options of this run, the bound on |u| resolved for the window."""
        u_max = self.u_max or 2.0 ** (1.0 / self.k2)
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
    # before cells had options: their defaults (the cells that read them came with them)
    **{name: opt.default for name, opt in CELL_OPTIONS.items()},
}
