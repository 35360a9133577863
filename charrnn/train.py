"""The training loop: schedule, evaluate, log, checkpoint, show progress.

The loop is plain Python; each update is a few jitted calls (forward, loss, backward, clip,
optimizer step). Everything that decides what happens next lives in the checkpoint, so a
resumed run continues exactly as the uninterrupted run would have.
"""
import hashlib
import json
import math
import signal
import time
from datetime import datetime
from pathlib import Path

import numpy as np

from . import __version__, memory
from .checkpoint import load_checkpoint, remove_stale_temporaries, resolve_checkpoint, save_checkpoint
from .config import TrainConfig, check_resume_overrides
from .corpus import Streams, Vocab, default_corpus, fit_batch_and_window, read_text, split
from .errors import CharrnnError, os_error_message
from .evaluate import bits, evaluate
from .model import ModelSpec, Stack, init_params
from .optim import Optimizer, clip_by_norm, clip_by_value, learning_rate
from .runlock import RunLock
from .schema import TRAINING
from .tbptt import Scheduler

LOG_EVERY = 10  # updates per line of the metrics log
METRICS_FILE = "metrics.jsonl"


class Interrupted(Exception):
    """Ctrl-C during training, after the latest checkpoint was saved."""

    def __init__(self, path):
        super().__init__(f"interrupted; saved {path}")
        self.path = path


class MetricsLog:
    """metrics.jsonl: one JSON record per line, flushed as it is written. A write that fails
    (a full disk) is a CharrnnError naming the file."""

    def __init__(self, path: Path, mode="a"):
        self.path = path
        try:
            self.file = open(path, mode, encoding="utf-8")
        except OSError as e:
            raise CharrnnError(os_error_message(e)) from None

    def write(self, record: dict):
        try:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        except OSError as e:
            raise CharrnnError(os_error_message(e, self.path)) from None

    def close(self):
        try:
            self.file.close()
        except OSError:
            pass  # every record was flushed already, or its write failed and said so


class Trainer:
    """One training run: its data, model, optimizer, scheduler and bookkeeping."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, say=print):
        self.cfg, self.run_dir, self.say = cfg, Path(run_dir), say
        corpus = Path(cfg.corpus) if cfg.corpus else default_corpus()
        text = read_text(corpus, cfg.encoding)
        self.corpus_info = {"path": str(corpus), "chars": len(text),
                            "sha256": hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()}
        self.vocab = Vocab.from_text(text)
        ids = self.vocab.encode(text)
        self.train_ids, self.val_ids, self.test_ids = split(
            ids, (1.0 - cfg.val_fraction - cfg.test_fraction, cfg.val_fraction, cfg.test_fraction),
            name=corpus.name)
        batch, k1, notice = fit_batch_and_window(len(self.train_ids), cfg.batch, cfg.k1)
        if notice:
            say(notice)
            cfg.k2 = k1 if cfg.k2 == cfg.k1 else cfg.k2  # keep the classic scheme classic
            cfg.batch, cfg.k1 = batch, k1
        self.spec = ModelSpec(cfg.cell, self.vocab.size, cfg.hidden, cfg.layers, cfg.cell_options())
        memory.require(memory.training_needs(self.spec, cfg), "this run",
                       "use a smaller --hidden, --layers, --batch or --k1/--k2")
        self.rng = np.random.Generator(np.random.PCG64(cfg.seed))
        self.params = init_params(self.spec, self.rng, np.float32)
        self.grads = np.zeros_like(self.params)
        self.opt = Optimizer(cfg.optimizer, self.params.size, np.float32, cfg.lr, weight_decay=cfg.weight_decay)
        self.sched = Scheduler(cfg.k1, cfg.k2)
        self.stack = Stack(self.spec, cfg.batch, self.sched.window, np.float32, cfg.dropout)
        self.streams = Streams(self.train_ids, cfg.batch)
        self.sched.reset(self.stack)
        self.step = 0
        self.elapsed = 0.0  # seconds of training so far, across resumes
        self.best_val = math.inf
        self.last_val = math.inf
        self.stop_requested = False
        self.fresh = True  # False once the run folder holds this run (resumed, or run() started)
        self.lock = None  # the run folder's RunLock while this trainer reads or writes it

    # -- checkpoints ---------------------------------------------------------------------------
    def _checkpoint(self):
        arrays = {"params": self.params}
        arrays.update({f"opt.{k}": v for k, v in self.opt.state_arrays().items()})
        keep = self.sched.window - self.sched.k1
        arrays.update({f"kept.{k}": v for k, v in self.stack.kept_arrays(keep).items()})
        meta = {
            "charrnn_version": __version__,
            "config": self.cfg.to_dict(),
            "vocab": self.vocab.to_json(),
            "corpus": self.corpus_info,
            "step": self.step,
            "elapsed": self.elapsed,
            "streams": self.streams.state_dict(),
            "scheduler": {"filled": self.sched.filled},
            "rng": self.rng.bit_generator.state,
            "optimizer": self.opt.state_meta(),
            "metrics": {"best_val": _json_float(self.best_val), "last_val": _json_float(self.last_val)},
        }
        return arrays, meta

    def save(self, name):
        path = self.run_dir / f"{name}.npz"
        save_checkpoint(path, *self._checkpoint())
        return path

    @classmethod
    def resume(cls, path, say=print, **overrides):
        """A trainer restored from a checkpoint (a file or a run folder, meaning its latest).
        Only the stopping rules may be overridden. The run folder stays locked until run() ends."""
        check_resume_overrides(overrides)
        path = resolve_checkpoint(path, prefer="latest")
        lock = RunLock(path.parent).acquire()  # before reading: no other process is writing it now
        try:
            self = cls._restore(path, say, overrides)
        except BaseException:
            lock.release()
            raise
        self.lock, self.fresh = lock, False
        return self

    @classmethod
    def _restore(cls, path, say, overrides):
        arrays, meta = load_checkpoint(path, schema=TRAINING)
        cfg = TrainConfig.from_dict(meta["config"])
        for k, v in overrides.items():
            setattr(cfg, k, v)
        cfg.validate()
        self = cls(cfg, path.parent, say)
        if self.corpus_info["sha256"] != meta["corpus"]["sha256"]:
            raise CharrnnError(f"the corpus {self.corpus_info['path']} is not the text this run was trained on; "
                               f"resume with the original file")
        self.params[:] = arrays["params"]
        self.opt.load_state({k[4:]: v for k, v in arrays.items() if k.startswith("opt.")}, meta["optimizer"])
        self.stack.load_kept_arrays({k[5:]: v for k, v in arrays.items() if k.startswith("kept.")},
                                    self.sched.window - self.sched.k1)
        self.sched.filled = meta["scheduler"]["filled"]
        self.streams.load_state_dict(meta["streams"])
        self.rng.bit_generator.state = meta["rng"]
        self.step = meta["step"]
        self.elapsed = meta["elapsed"]
        self.best_val = _from_json_float(meta["metrics"]["best_val"])
        self.last_val = _from_json_float(meta["metrics"]["last_val"])
        return self

    # -- the loop ------------------------------------------------------------------------------
    def update(self):
        """One k1/k2 update. Returns (mean loss in nats, gradient norm before clipping, whether
        clipping fired, the learning rate used)."""
        cfg, stack, sched = self.cfg, self.stack, self.sched
        ids, targets = sched.inputs(stack)
        if self.streams.next(cfg.k1, ids, targets):
            sched.reset(stack)  # a new epoch: the text jumped back to the start
        loss = sched.update(stack, self.params, self.grads, self.rng if cfg.dropout > 0 else None)
        loss /= cfg.k1 * stack.B
        stack.layout.zero_frozen(self.grads)
        norm, clipped = clip_by_norm(self.grads, cfg.clip_norm)
        if not (math.isfinite(loss) and math.isfinite(norm)):
            raise CharrnnError(
                f"training diverged at update {self.step + 1}: the loss is {loss} and the gradient norm {norm}; "
                f"the last good checkpoint is in {self.run_dir}; try a lower --lr or --clip-norm")
        clipped_values = clip_by_value(self.grads, cfg.clip_value)
        lr = learning_rate(cfg.lr, self.step, self.done_fraction(), schedule=cfg.schedule, decay=cfg.lr_decay,
                           decay_every=cfg.decay_every, warmup=cfg.warmup,
                           decay_start=cfg.decay_start)
        self.opt.step(self.params, self.grads, lr, stack.layout.segments)
        stack.constrain(self.params)
        sched.advance(stack)
        self.step += 1
        return loss, norm, bool(clipped or clipped_values > 0), lr

    def epoch(self):
        """Fractional epochs of training text read so far."""
        per_epoch = self.streams.steps_per_epoch(self.cfg.k1)
        return self.streams.epoch + self.streams.position / self.cfg.k1 / max(per_epoch, 1)

    def done_fraction(self):
        """How far along the stopping rules are: 1.0 means stop."""
        cfg, parts = self.cfg, []
        if cfg.max_steps:
            parts.append(self.step / cfg.max_steps)
        if cfg.epochs:
            parts.append(self.epoch() / cfg.epochs)
        if cfg.time_limit:
            parts.append(self.elapsed / cfg.time_limit)
        return max(parts) if parts else 0.0

    def validate(self):
        if len(self.val_ids) < 2:
            return math.nan
        loss, _ = evaluate(self.spec, self.params, self.val_ids, self.cfg.batch, self.cfg.k1, self.cfg.eval_chars)
        return loss

    def run(self, progress=None):
        """Train until a stopping rule fires. Returns a summary dict. Ctrl-C saves and raises
        Interrupted; a NaN or Inf stops with a CharrnnError and leaves the last checkpoint."""
        cfg = self.cfg
        if not (cfg.max_steps or cfg.epochs or cfg.time_limit):
            raise CharrnnError("no stopping rule: give --max-steps, --epochs or --time-limit")
        lock, self.lock = self.lock or RunLock(self.run_dir).acquire(), None
        try:
            log = self._open_run_dir()
        except BaseException:
            lock.release()
            raise
        previous = signal.signal(signal.SIGINT, self._on_sigint)
        window_stats = []
        chars_per_update = cfg.k1 * cfg.batch
        train_time = 0.0  # time in updates only, for the throughput figure
        updates = 0  # of this session: a resumed run's earlier ones took no part of train_time
        try:
            while self.done_fraction() < 1.0:
                t0 = time.perf_counter()
                loss, norm, clipped, lr = self.update()
                dt = time.perf_counter() - t0
                train_time += dt
                updates += 1
                self.elapsed += dt
                window_stats.append((loss, norm, clipped, dt))
                if self.step % LOG_EVERY == 0 or self.done_fraction() >= 1.0:
                    losses, norms, clips, dts = zip(*window_stats)
                    record = {"kind": "train", "step": self.step, "epoch": round(self.epoch(), 4),
                              "loss": float(np.mean(losses)), "bpc": bits(float(np.mean(losses))),
                              "grad_norm": float(np.mean(norms)), "clipped": float(np.mean(clips)),
                              "lr": lr, "chars_per_sec": chars_per_update * len(dts) / sum(dts),
                              "time": round(self.elapsed, 3)}
                    log.write(record)
                    window_stats = []
                    if progress:
                        progress(self, record)
                end = self.done_fraction() >= 1.0
                if self.step % cfg.eval_every == 0 or end:
                    t1 = time.perf_counter()
                    self.last_val = self.validate()
                    self.elapsed += time.perf_counter() - t1
                    log.write({"kind": "val", "step": self.step, "loss": self.last_val, "bpc": bits(self.last_val)})
                    if self.last_val < self.best_val:
                        self.best_val = self.last_val
                        self.save("best")
                    if progress:
                        progress(self, None)
                if self.step % cfg.checkpoint_every == 0 or end:
                    self.save("latest")
                if self.stop_requested:
                    raise Interrupted(self.save("latest"))
            test = math.nan
            if len(self.test_ids) >= 2:
                test, _ = evaluate(self.spec, self.params, self.test_ids, cfg.batch, cfg.k1)
                log.write({"kind": "test", "step": self.step, "loss": test, "bpc": bits(test)})
            return {"steps": self.step, "epochs": self.epoch(), "val_loss": self.last_val,
                    "best_val_loss": self.best_val, "test_loss": test, "elapsed": self.elapsed,
                    "train_chars_per_sec": (updates and chars_per_update * updates / max(train_time, 1e-9)),
                    "run_dir": str(self.run_dir)}
        finally:
            signal.signal(signal.SIGINT, previous)
            log.close()
            lock.release()

    def _open_run_dir(self):
        """With the folder locked: refuse to overwrite another run, remove what killed saves left,
        and open the metrics log. A fresh run starts a fresh log: one left by a run of the same
        name that never saved a checkpoint describes no model that exists."""
        if self.fresh:
            if any((self.run_dir / f"{name}.npz").exists() for name in ("latest", "best")):
                raise CharrnnError(f"{self.run_dir} already holds a run; continue it with --resume {self.run_dir} "
                                   f"or choose another --run name")
            if (self.run_dir / METRICS_FILE).exists():
                self.say(f"replacing {self.run_dir / METRICS_FILE}, left by a run that saved no checkpoint")
        remove_stale_temporaries(self.run_dir)
        log = MetricsLog(self.run_dir / METRICS_FILE, "w" if self.fresh else "a")
        self.fresh = False
        return log

    def _on_sigint(self, signum, frame):
        if self.stop_requested:  # a second Ctrl-C: stop now, whatever the state
            raise KeyboardInterrupt
        self.stop_requested = True  # finish this update, save, then stop


def new_run_dir(cfg: TrainConfig) -> Path:
    name = cfg.run or f"{cfg.cell}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    return Path(cfg.out_dir) / name


def _json_float(x):
    return None if not math.isfinite(x) else x


def _from_json_float(x):
    return math.inf if x is None else x
