"""Training settings: one typed, commented dataclass, validated in one place.

The resolved config is printed at the start of a run and stored in every checkpoint, together
with the vocabulary, so that a checkpoint carries everything needed to resume or sample.
"""
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
# `charrnn inspect` reads INSPECT_CHARS characters unless told otherwise, and the terminal colours
# at most that many; it reads at most INSPECT_MAX_CHARS, up to which its page stays quick
INSPECT_CHARS, INSPECT_MAX_CHARS = 2_000, 20_000
# closed ranges [low, high] that the CLI's options and validate() both read
BOUNDS = {
    "dropout": (0.0, 0.99),  # 1 would drop everything
    "lr_decay": (0.0, 1.0),  # 0: the learning rate falls to zero at the first decay
}


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
    dropout: float = 0.0  # on the input of every layer above the first and of the output layer
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

        if self.cell not in CELLS:
            bad("cell", self.cell, f"choose one of {', '.join(CELLS)}")
        if self.optimizer not in OPTIMIZERS:
            bad("optimizer", self.optimizer, f"choose one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            bad("schedule", self.schedule, f"choose one of {', '.join(SCHEDULES)}")
        for name in CELL_OPTIONS:
            check_option(name, getattr(self, name))
        from .corpus import check_encoding

        self.encoding = check_encoding(self.encoding)
        for name, low in (("hidden", 1), ("layers", 1), ("batch", 1), ("k1", 1), ("k2", 1), ("eval_every", 1),
                          ("checkpoint_every", 1)):
            if getattr(self, name) < low:
                bad(name, getattr(self, name), f"it must be at least {low}")
        for name in ("max_steps", "eval_chars", "warmup", "decay_every"):
            if getattr(self, name) < 0:
                bad(name, getattr(self, name), "it must be 0 or more")
        for name in ("epochs", "time_limit", "clip_norm", "clip_value", "weight_decay"):
            if getattr(self, name) < 0:
                bad(name, getattr(self, name), "it must be 0 or more")
        for name, (low, high) in BOUNDS.items():
            if not low <= getattr(self, name) <= high:
                bad(name, getattr(self, name), f"it must be in [{low:g}, {high:g}]")
        if not 0.0 < self.lr <= 10.0:
            bad("lr", self.lr, "it must be in (0, 10]")
        for name in ("val_fraction", "test_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                bad(name, getattr(self, name), "it must be in [0, 1)")
        if self.val_fraction + self.test_fraction >= 0.5:
            raise CharrnnError("--val-fraction plus --test-fraction must leave at least half the text for training")
        if self.hidden > 8192 or self.layers > 16 or max(self.k1, self.k2) > 10000:
            raise CharrnnError("model or window too large: --hidden <= 8192, --layers <= 16, --k1/--k2 <= 10000")
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
        d = {"schedule": "step", **d}  # written before schedules had a name: the step decay it ran
        return cls(**{k: v for k, v in d.items() if k in known})
