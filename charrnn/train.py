"""The training loop: schedule, evaluate, log, checkpoint, show progress.

The loop is plain Python; each update is a few jitted calls (forward, loss, backward, clip,
optimizer step). Everything that decides what happens next lives in the checkpoint, so a
resumed run continues exactly as the uninterrupted run would have.
"""
import _thread
import hashlib
import json
import math
import os
import re
import signal
import stat
import sys
import threading
import time
import uuid
from collections import Counter
from datetime import datetime
from pathlib import Path

import numpy as np

from . import __version__, distributed, memory
from .cells import normal_tau
from .checkpoint import (SUFFIX, load_checkpoint, new_temporary, remove_stale_temporaries, resolve_checkpoint,
                         save_checkpoint)
from .config import (EMPTY_IS_NOT_GIVEN, LOG_STARTS, METRICS_FILE, MODEL_SETTINGS, OLDER_CHECKPOINTS, SAMPLES_FILE,
                     STOPPING_RULES, TrainConfig, check_init_overrides, check_resume_overrides, check_settings_used,
                     resolved_u_max, steps_a_window_can_use)
from .corpus import (Corpus, NotText, Streams, Vocab, default_corpus, fit_batch_and_window, read_corpus, shown_text,
                     some_of, split, streams_held, unit_name, window_reach)
from .errors import CharrnnError, UsageError, as_flag, file_in_the_way, flag, os_error_message, shell_word
from .evaluate import Abandoned, bits, evaluate
from .kernels._jit import threads
from .model import ModelSpec, Stack, init_params, state_grows, transplant
from .optim import Optimizer, clip_by_norm, clip_by_value, learning_rate
from .runlock import LOCK_FILE, RunLock, check_run_file, held_by, open_run_file, pid_shown
from .schema import TRAINING, TRAINING_META
from .tbptt import Scheduler

LOG_EVERY = 10  # updates per line of the metrics log
# the line that opens each entry of samples.txt; a resumed run cuts the file at the first entry
# after its checkpoint
SAMPLE_HEADER = "--- step {step}, epoch {epoch:.2f}, val loss {val}, temperature {temperature:g}, seed {step} ---"
_SAMPLE_HEADER_STEP = re.compile(r"--- step (\d+), epoch ")
# The signals that stop a run at the end of its update, with a save: Ctrl-C, SIGTERM (what a
# scheduler sends), and SIGUSR1, which Open MPI's mpiexec passes on to every rank (on SIGINT
# and SIGTERM it kills the ranks itself a quarter of a second later) and Slurm's --signal sends
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1") if hasattr(signal, name))


class Interrupted(Exception):
    """Ctrl-C, SIGTERM or SIGUSR1 during training, after the latest checkpoint was saved; with
    `untested`, in the test after the last update (a resume tests it)."""

    def __init__(self, path, untested=False):
        super().__init__(f"interrupted; saved {path}")
        self.path, self.untested = path, untested


class MetricsLog:
    """metrics.jsonl: one JSON record per line, flushed as it is written; a value that is no
    finite number (a loss grown infinite) is null, as JSON has neither Inf nor NaN. A write that
    fails (a full disk) is a CharrnnError naming the file."""

    def __init__(self, path: Path, mode="a"):
        self.path = path
        end = os.O_APPEND if mode == "a" else os.O_TRUNC
        self.file = open(open_run_file(path, os.O_WRONLY | os.O_CREAT | end), mode, encoding="utf-8")

    def write(self, record: dict):
        try:
            self.file.write(json.dumps({k: _json_float(v) if isinstance(v, float) else v for k, v in record.items()},
                                       allow_nan=False) + "\n")
            self.file.flush()
        except OSError as e:
            raise CharrnnError(os_error_message(e, self.path)) from None

    def close(self):
        try:
            self.file.close()
        except OSError:
            pass  # every record was flushed already, or its write failed and said so


class _NoLog:
    """The metrics log of an MPI rank other than 0: rank 0 writes it."""

    def write(self, record):
        pass

    def close(self):
        pass


def _smaller_run_advice(resuming: bool, fine_tune: bool) -> str:
    """What to do about a run that needs more memory than there is: only what the run may change
    (a resume keeps its model, batch and window; a fine-tune its model's size)."""
    if resuming:
        return "free some memory, or resume where more is available"
    return "use a smaller " + ("--batch or --k1/--k2" if fine_tune else "--hidden, --layers, --batch or --k1/--k2")


def _locked(folder, resuming=False):
    """The run folder's RunLock, held by rank 0: under MPI it alone writes the folder."""
    lock = RunLock(folder)
    if distributed.world().root:
        lock.acquire(resuming)
    return lock


class Trainer:
    """One training run: its data, model, optimizer, scheduler and bookkeeping.

    Under MPI (distributed.py) each rank holds one of these: the whole model and optimizer, and
    its share of the streams (stack.rows); only rank 0 writes the run folder."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, say=print, corpus=None, vocab=None):
        """A new run of `cfg` in run_dir, from a fresh model or, with cfg.init_from, from a
        trained one (fine_tune_settings gives the settings that must then match it). `corpus`:
        the text already read (a resume reads and checks it first); by default cfg.corpus is
        read. `vocab`: the checkpoint's, when resuming; by default the text's, or for a
        fine-tuned run the trained model's extended by the text's."""
        self.cfg, self.run_dir, self.say = cfg, Path(run_dir), say
        self.show = say  # the samples taken while training (the CLI's -q mutes them, not the notes)
        self.world = distributed.world()
        resuming = vocab is not None  # (a fine-tune's vocabulary is made below)
        if corpus is None:
            # a fine-tune's text, for the trained model (its --encoding is of the model's kind)
            corpus = _read_corpus(cfg.corpus or [default_corpus()], cfg.encoding, cfg.doc_sep,
                                  cfg.encoding if cfg.init_from else None)
            for note in corpus.notes:
                say(note)
        cfg.corpus = _text_names(cfg.corpus)  # a resume may start anywhere
        self.corpus_info = corpus.info()
        base = None
        if vocab is None and cfg.init_from:
            base = _load_init(cfg)
            vocab = base.vocab.extended("".join(corpus.chars))
        self.vocab = vocab or corpus.vocab
        self.vocab_added = self.vocab.size - base.vocab.size if base is not None else 0
        ids = corpus.ids  # of the smallest integer type; split and streams are views
        if not self.vocab.numbers_as(corpus.chars):  # a fine-tuned or resumed model's numbering:
            # the text renumbered, under MPI once a machine too (its own ids, once unused, go)
            as_bytes = cfg.encoding == "bytes"
            ids, _, why_not = self.world.node_shared(lambda: (corpus.ids_for(self.vocab, as_bytes=as_bytes), None))
            if why_not:
                say(_unshared("the renumbered text", why_not))
        self.train_ids, self.val_ids, self.test_ids = split(
            ids, (1.0 - cfg.val_fraction - cfg.test_fraction, cfg.val_fraction, cfg.test_fraction),
            name=corpus.name, unit=unit_name(cfg.encoding == "bytes"))
        # a resumed run keeps the batch and window its checkpoint holds (fitted when it began)
        batch, k1, notice = (cfg.batch, cfg.k1, None) if resuming else \
            fit_batch_and_window(len(self.train_ids), cfg.batch, cfg.k1, self.world.size)
        k2 = cfg.k2
        if notice and k1 != cfg.k1 and cfg.k2 <= cfg.k1:  # the window shrank: k2 = k1 follows it, k2 < k1 stays so
            k2 = min(cfg.k2, k1)
        in_epoch = window_reach(len(self.train_ids), batch, k1)
        reach, why = min([(in_epoch, "a stream's steps in an epoch"),
                          *steps_a_window_can_use(cfg.cell, cfg.reset_every, k1)],
                         key=lambda pair: pair[0])
        if k2 > reach and not resuming:  # (a resumed run keeps the window its checkpoint holds)
            k2 = reach  # steps kept beyond it would be saved in every checkpoint, and never read
            if cfg.cell == "indrnn" and not cfg.u_max:  # the bound on |u| of the --k2 given: the same run
                cfg.u_max = resolved_u_max(0.0, cfg.k2)
        if k2 != cfg.k2:
            change = f"--k2 {cfg.k2} -> {k2}" + (f" ({why})" if k2 == reach else "")
            if notice:
                notice = f"{notice}, {change}"
            else:
                notice = f"corpus is small ({len(self.train_ids):,} training characters): {change}" \
                    if reach == in_epoch else change
        if notice:
            say(notice)
            cfg.batch, cfg.k1, cfg.k2 = batch, k1, k2
        self.spec = ModelSpec(cfg.cell, self.vocab.size, cfg.hidden, cfg.layers, cfg.cell_options())
        rows = self.world.rows(cfg.batch, resumed=resuming)  # this rank's streams (all, in one process)
        memory.require(memory.training_needs(self.spec, cfg, rows.stop - rows.start, self.world.node_size),
                       "this run", _smaller_run_advice(resuming, base is not None),
                       processes=self.world.node_size)
        self.rng = np.random.Generator(np.random.PCG64(cfg.seed))
        self.params = init_params(self.spec, self.rng, np.float32)
        if base is not None:  # the trained model; a fresh model's rows for the characters it lacked
            transplant(base.spec, base.params, self.spec, self.params)
        same_run_on_every_rank(cfg, self.vocab, self.corpus_info["sha256"])
        self.world.bcast(self.params)  # every rank starts from rank 0's model
        self._synced_at = None  # the update whose model every rank last took from rank 0
        self.grads = np.zeros_like(self.params)
        self.opt = Optimizer(cfg.optimizer, self.params.size, np.float32, cfg.lr, weight_decay=cfg.weight_decay)
        self.sched = Scheduler(cfg.k1, cfg.k2)
        self.stack = Stack(self.spec, cfg.batch, self.sched.window, np.float32, cfg.dropout, rows=rows)
        self.streams = Streams(self.train_ids, cfg.batch)
        self.sched.reset(self.stack)
        self.step = 0
        self.elapsed = 0.0  # seconds of training so far, across resumes
        self.best_val = math.inf
        self.last_val = math.inf
        self.last_val_step = None  # the update after which last_val was measured
        self.first_stop = None  # the number of the first of STOP_SIGNALS to reach this process
        self.testing = False  # in the test after the last update (the progress bar says so)
        self.stopping_now = 0  # a second one, the signal's number
        self.stop_requested = False  # whether to stop after this update: agreed by every rank under MPI
        self.fresh = True  # False once the run folder holds this run (resumed, or run() started)
        # what tells this run's checkpoints from another's (_refuse_to_replace); kept by a resume.
        # Only rank 0's is written: no rank needs another's
        self.run_id = uuid.uuid4().hex
        self.lock = None  # the run folder's RunLock while this trainer reads or writes it
        self.resumable = None  # (path, update) of the checkpoint a resume goes on from; None: none yet
        self.restored = None  # (path, update) of the checkpoint resumed, if it was
        self.samples_bytes = None  # the size of samples.txt that the checkpoint resumed saw, if it says
        self.carried = False  # whether the last update's state ran on from the update before it
        self.given_again = ((), ())  # the words of the text and options a resume changed (resume_command)
        self._sampler = None  # made at the first sample

    # -- checkpoints ---------------------------------------------------------------------------
    def _checkpoint(self):
        """(arrays, meta) of a checkpoint; under MPI, None on the ranks other than 0, which send
        rank 0 their streams' part of the window."""
        # Ranks on CPUs whose kernels round differently (AVX2 and AVX-512 nodes of one cluster)
        # could drift apart in the last bits: at the first save of an update (best.npz, then
        # latest.npz) they all take rank 0's model again.
        if self._synced_at != self.step:
            self.world.dump_params(self.params)  # (tests: what each rank computed before that)
            self.world.bcast(self.params)
            self._synced_at = self.step
        # a checkpoint holds no NaN or Inf (load_checkpoint refuses one that does): an overflow
        # the updates did not catch (Adagrad's v, a sum of squares) stops the run, and the last
        # checkpoint stays the last good one; rank 0's arrays are saved, and its word stops every
        # rank alike (the moments are never synced: ranks whose kernels round apart could differ)
        broken = None
        if self.world.root:
            saved = {"the parameters": self.params,
                     **{f"the optimizer's {k}": a for k, a in self.opt.moments().items()}}
            broken = [name for name, a in saved.items() if not np.isfinite(a).all()]
        broken = self.world.from_root(broken)
        if broken:
            raise self._diverged(f"by update {self.step}", f"{' and '.join(broken)} hold NaN or Inf")
        keep = self.sched.window - self.sched.k1
        kept = self.world.gather_rows(self.stack.kept_arrays(keep))  # every rank's streams, in order
        if kept is None:
            return None
        arrays = {"params": self.params}
        arrays.update({f"opt.{k}": v for k, v in self.opt.state_arrays().items()})
        arrays.update({f"kept.{k}": v for k, v in kept.items()})
        meta = {
            "charrnn_version": __version__,
            "run_id": self.run_id,
            "config": self.cfg.to_dict(),
            "vocab": self.vocab.to_json(),
            "corpus": self.corpus_info,
            "step": self.step,
            "elapsed": self.elapsed,
            "streams": self.streams.state_dict(),
            "scheduler": {"filled": self.sched.filled},
            "rng": self.rng.bit_generator.state,
            "optimizer": self.opt.state_meta(),
            "metrics": {"best_val": _json_float(self.best_val), "last_val": _json_float(self.last_val),
                        "last_val_step": self.last_val_step},
            "samples_bytes": self._samples_bytes(),
            "split": {"ranks": self.world.size, "threads": threads()},  # what resumes it bit for bit
        }
        try:  # never replace a checkpoint with one a resume would refuse (a counter past its range)
            TRAINING.headers(json.loads(json.dumps(meta)), {name: (a.shape, a.dtype) for name, a in arrays.items()})
        except CharrnnError as e:
            raise CharrnnError(f"this run cannot be saved as a checkpoint charrnn reads back ({e}); the "
                               f"checkpoints in {self.run_dir} are as they were") from None
        return arrays, meta

    def _samples_bytes(self) -> int:
        """The size of samples.txt as this update leaves it (rank 0's; 0 on the others, which
        write none): where a resume from this checkpoint cuts it (_cut_samples)."""
        try:
            return os.stat(self.run_dir / SAMPLES_FILE).st_size if self.world.root else 0
        except FileNotFoundError:
            return 0

    def few_streams_notice(self):
        """few_streams_line for a new run of a cell with a recurrent matrix, where the text
        holds the streams it suggests (corpus.streams_held); else None. A resumed run keeps its
        batch, and a cell without a matrix (IndRNN) reads no weights at every step."""
        n_threads, ranks = threads(), self.world.size
        has_matrix = any(name == "layer0.Wh" for name, _, _ in self.stack.layout.entries)
        if (not self.fresh or not has_matrix
                or filling_batch(n_threads, ranks) > streams_held(len(self.train_ids), self.cfg.k1)):
            return None
        return few_streams_line(self.cfg.batch, ranks, n_threads)

    def save(self, name):
        path = self.run_dir / f"{name}.npz"
        checkpoint = self._checkpoint()
        if checkpoint is not None:
            try:
                save_checkpoint(path, *checkpoint)
            except KeyboardInterrupt:  # a stop at once, which may have come after the file was put in place
                if _saved_step(path) == self.step:
                    self._saved(name, path)
                raise
        self._saved(name, path)
        return path

    def _saved(self, name, path):
        # a resume of the folder takes latest.npz, or without one best.npz (resolve_checkpoint)
        if name == "latest" or self.resumable is None or self.resumable[0] == path:
            self.resumable = (path, self.step)

    @classmethod
    def resume(cls, path, say=print, corpus=None, **overrides):
        """A trainer restored from a checkpoint (a file or a run folder, meaning its latest).
        The settings in config.RESUME_MAY_CHANGE may be overridden; `say` is told which changed.
        Any other may be given only as the run's own.
        `corpus`: the run's text (files and folders) if it is no longer where the checkpoint
        says, checked by its SHA-256. The run folder stays locked until run() ends."""
        given, path = path, resolve_checkpoint(path, prefer="latest")
        lock = _locked(path.parent, resuming=True)  # before reading: no other process is writing it now
        try:
            self = cls._restore(path, say, corpus, overrides)
            _refuse_to_replace(path, self.step, self.given_again)
            if Path(given).is_dir() and not (path.parent / ("latest" + SUFFIX)).exists():  # (a note: under -q too)
                say(f"{path.parent} has no latest{SUFFIX}: resuming its best{SUFFIX}, of update {self.step}")
            if self.world.root:  # the logs, opened as run() opens them, before `say` is heard (the CLI holds it):
                check_run_file(self.run_dir / METRICS_FILE, os.O_WRONLY | os.O_APPEND)  # appended to
                check_run_file(self.run_dir / SAMPLES_FILE, os.O_RDONLY)  # read (to cut); written if sampled
                for name in ("best.npz", "latest.npz"):  # replaced by a rename, which a folder refuses
                    if (self.run_dir / name).is_dir() and not (self.run_dir / name).is_symlink():
                        raise CharrnnError(f"{self.run_dir / name} is a folder, where the run keeps a checkpoint; "
                                           "move it away")
            self._keep_best(path)
        except BaseException:
            lock.release()
            raise
        self.lock, self.fresh = lock, False
        return self

    def _keep_best(self, path):
        """best.npz is replaced only by a better model, also one the resumed checkpoint has not
        seen: saved after it, by a run killed between a validation and its next save (and then
        resumed with a new learning rate, say). A folder without best.npz (a checkpoint copied
        into a folder of its own, or best.npz deleted) has no best yet: the first validation
        saves one, so that the best the run reports is a model the folder holds."""
        if not (path.parent / "best.npz").is_file():
            best_val = math.inf
        else:
            best = _other_meta(path, "best")  # None: path is best.npz (_replaced refused one that cannot be read)
            best_val = min(self.best_val, _from_json_float(best["metrics"]["best_val"]) if best else math.inf)
        value = np.array([best_val], dtype=np.float64)
        self.world.bcast(value)  # rank 0's folder: every rank must agree on when to save
        self.best_val = float(value[0])

    @classmethod
    def _restore(cls, path, say, inputs, overrides):
        arrays, meta = load_checkpoint(path, schema=TRAINING)
        _read_by_every_rank(path, meta)
        overrides = check_resume_overrides(overrides, meta["config"], path.parent)  # those given as the run's own left out
        cfg = TrainConfig.from_dict(meta["config"])
        saved_limits = {name: getattr(cfg, name) for name in STOPPING_RULES}  # check_not_done
        changed = {k: v for k, v in overrides.items() if v != getattr(cfg, k)}
        changes = [f"{flag(k)} {' -> '.join(_shown_apart(getattr(cfg, k), v))}" for k, v in changed.items()]
        # what a command gives again to resume from `path` with this session's settings, until a save holds them
        text_again, options_again = [], [w for k, v in changed.items()
                                          for w in (flag(k), shell_word(repr(float(v)) if isinstance(v, float) else v))]
        for k, v in overrides.items():
            setattr(cfg, k, v)
        check_settings_used(changed, cfg, resume=True)  # (the run's own, given again: as it ran)
        cfg.validate().check_stopping()  # before the text is read
        corpus = _corpus_to_resume(meta, cfg, inputs, path.parent)
        if inputs:
            moved = _text_names(inputs)
            if moved != _text_names(cfg.corpus):  # (as kept by a run before names were kept once)
                changes.append(f"corpus {_texts_shown(cfg.corpus)} -> {_texts_shown(moved)}")
                text_again = [shell_word(name) for name in inputs]
            cfg.corpus = moved
        if changes:
            say(f"changed on resume: {', '.join(changes)}")
        resplit = resplit_line(meta.get("split"), distributed.world().size, threads())
        if resplit:
            say(resplit)
        self = cls(cfg, path.parent, say, corpus=corpus, vocab=Vocab.from_json(meta["vocab"]))
        self.run_id = _run_id(meta)
        self.params[:] = arrays["params"]
        self.opt.load_state({k[4:]: v for k, v in arrays.items() if k.startswith("opt.")}, meta["optimizer"])
        rows = self.stack.rows  # this rank's streams of the saved window's
        self.stack.load_kept_arrays({k[5:]: v[:, rows] for k, v in arrays.items() if k.startswith("kept.")},
                                    self.sched.window - self.sched.k1)
        self.sched.filled = meta["scheduler"]["filled"]
        self.streams.load_state_dict(meta["streams"])
        self.rng.bit_generator.state = meta["rng"]
        self.step = meta["step"]
        self.elapsed = meta["elapsed"]
        self.best_val = _from_json_float(meta["metrics"]["best_val"])
        self.last_val = _from_json_float(meta["metrics"]["last_val"])
        self.last_val_step = meta["metrics"].get("last_val_step")  # older checkpoints: not known
        self.saved_limits = saved_limits
        self.resumable = self.restored = (path, self.step)
        self.samples_bytes = meta.get("samples_bytes")  # None: a checkpoint older than it
        self.given_again = (text_again, options_again)
        return self

    def _reached(self, limits: dict, how_far=True) -> list[str]:
        """The stopping rules of `limits` ({name: limit}, 0: none) this run has reached, in words:
        --max-steps 6, and with how_far how far it came (update 6)."""
        done = self._done()
        said = {"max_steps": f"update {self.step}", "epochs": f"{done['epochs']:.2f} epochs",
                "time_limit": f"{self.elapsed:.0f} s of training"}
        return [f"{flag(name)} {_shown(limit)}" + (f" ({said[name]})" if how_far else "")
                for name, limit in limits.items() if limit and done[name] >= limit]

    def _tested(self) -> bool:
        """Whether metrics.jsonl holds the test record of this update: the run ended."""
        try:
            with open(self.run_dir / METRICS_FILE, "rb") as f:
                return any(b'"test"' in line and _record_step(line) == self.step
                           and json.loads(line).get("kind") == "test" for line in f)
        except (OSError, ValueError, RecursionError):
            return False

    def check_not_done(self):
        """A UsageError for a resumed run that a stopping rule ends before its first update: it
        would only test its model again and say it is done (the command line's check; in
        Python a finished run may be resumed to look at it)."""
        reached = self._reached(self._limits())
        why = f"{self.run_dir} has already reached {' and '.join(reached)}; to train on, give a larger limit"
        if reached and self._reached(self.saved_limits) and len(self.test_ids) >= 2:
            # the run's own end, at its last update: stopped before its test (Ctrl-C, a kill), the
            # resume tests it (rank 0 reads the log, every rank does as it says); with its own limits,
            # which a lower one reached now would change only in what it is said to have stopped by
            # (a larger one, or one added, leaves the run's own limit to end it)
            if not self.world.from_root(self._tested() if self.world.root else None):
                done = self._done()
                lowered = [flag(k) for k, v in self._limits().items() if v != self.saved_limits[k] and v and done[k] >= v]
                if not lowered:
                    return
                why = (f"{self.run_dir} ended at update {self.step} and has only its test left; leave out "
                       f"{', '.join(lowered)} to test it, or give a larger limit to train on")
        if reached:
            if self.lock is not None:  # refused: the folder is free again (a program may resume it next)
                self.lock.release()
                self.lock = None
            raise UsageError(why)

    # -- the loop ------------------------------------------------------------------------------
    def update(self):
        """One k1/k2 update. Returns (mean loss in nats, gradient norm before clipping, whether
        clipping fired, the learning rate used)."""
        cfg, stack, sched = self.cfg, self.stack, self.sched
        # where the schedule is as the update starts, for every rule alike: an epoch's progress
        # read after the update's characters would give the last update of an --epochs run a rate of 0
        progress = self.done_fraction()
        wrapped = self.streams.next(cfg.k1, *sched.inputs(stack), rows=stack.rows)  # under MPI, this rank's streams
        fresh = wrapped or self.fresh_start()  # a new epoch (the text jumped back to the start), or a fresh start
        if fresh:
            sched.reset(stack)
        self.carried = not fresh and self.step > 0  # the state runs on from the update before (_diverged)
        loss = sched.update(stack, self.params, self.grads, self.rng if cfg.dropout > 0 else None)
        self.world.sum(self.grads)  # the ranks' shares: the gradient of the whole batch
        loss = self.world.sum_float(loss) / (cfg.k1 * stack.total)
        stack.layout.zero_frozen(self.grads)
        norm, clipped = clip_by_norm(self.grads, cfg.clip_norm)
        if not (math.isfinite(loss) and math.isfinite(norm)):
            raise self._diverged(f"at update {self.step + 1}", f"the loss is {loss} and the gradient norm {norm}",
                                 forward=not math.isfinite(loss))
        # every element after clipping is at most this: one whose square float32 cannot hold
        # would make the optimizer's moments Inf (Adam's v), finite loss and norm notwithstanding
        square_limit = math.sqrt(float(np.finfo(self.params.dtype).max))
        if min([norm] + [limit for limit in (cfg.clip_norm, cfg.clip_value) if limit]) >= square_limit:
            raise self._diverged(f"at update {self.step + 1}", f"the gradient norm {norm:.3g} would overflow the "
                                 f"optimizer's {self.params.dtype} arithmetic")
        clipped_values = clip_by_value(self.grads, cfg.clip_value)
        lr = learning_rate(cfg.lr, self.step, progress, schedule=cfg.schedule, decay=cfg.lr_decay,
                           decay_every=cfg.decay_every, warmup=cfg.warmup,
                           decay_start=cfg.decay_start)
        self.opt.step(self.params, self.grads, lr, stack.layout.segments)
        stack.constrain(self.params)
        sched.advance(stack)
        self.step += 1
        return loss, norm, bool(clipped or clipped_values > 0), lr

    def fresh_start(self):
        """Whether every stream starts the next update from a zero state where it is in the text
        (TrainConfig.reset_every says why)."""
        every = self.cfg.reset_every
        return bool(every) and self.step > 0 and self.step % every == 0

    def epoch(self):
        """Fractional epochs of training text read so far."""
        per_epoch = self.streams.steps_per_epoch(self.cfg.k1)
        return self.streams.epoch + self.streams.position / self.cfg.k1 / max(per_epoch, 1)

    def _done(self) -> dict:
        """How much of each stopping rule's measure the run has used: {rule: amount}."""
        return {"max_steps": self.step, "epochs": self.epoch(), "time_limit": self.elapsed}

    def done_fraction(self):
        """How far along the stopping rules are, for the schedule and the progress: 1.0 at the
        end (ended() says exactly when: a fraction of huge counts can round up to 1.0 early)."""
        parts = [done / getattr(self.cfg, name) for name, done in self._done().items() if getattr(self.cfg, name)]
        return max(parts) if parts else 0.0

    def ended(self) -> bool:
        """Whether a stopping rule has been reached."""
        return bool(self._reached(self._limits()))

    def _limits(self) -> dict:
        """The stopping rules as this run now has them: {name: limit}, 0 for none."""
        return {name: getattr(self.cfg, name) for name in STOPPING_RULES}

    def validate(self):
        if len(self.val_ids) < 2:
            return math.nan
        return self._evaluate(self.val_ids, self.cfg.eval_chars)

    def _evaluate(self, ids, max_chars=0, stop=None):
        """Mean loss on `ids`; under MPI each rank reads its share of the streams."""
        part, _ = evaluate(self.spec, self.params, ids, self.cfg.batch, self.cfg.k1, max_chars,
                           part=(self.world.rank, self.world.size), stop=stop)
        return self.world.sum_float(part)

    def _stopping(self) -> bool:
        """Whether a stop signal came to any rank (every rank asks at the same point)."""
        self._agree()
        return self.stop_requested

    @property
    def signalled(self) -> bool:
        """Whether one of STOP_SIGNALS reached this process (the progress bar names it: first_stop)."""
        return self.first_stop is not None

    def _agree(self):
        """Whether to stop, and under MPI rank 0's clock, the same on every rank before they decide
        whether to go on. A signal changes only `first_stop`: one that came between this and the
        decision would otherwise stop one rank and leave the others waiting for it."""
        self.elapsed, self.stop_requested = self.world.agree(self.elapsed, self.stop_requested or self.signalled)

    def run(self, progress=None):
        """Train until a stopping rule fires. Returns a summary dict. A stop signal (STOP_SIGNALS)
        saves and raises Interrupted (in the test after the last update, saved already, at once:
        Interrupted.untested); a NaN or Inf stops with a CharrnnError and leaves the last
        checkpoint."""
        cfg = self.cfg
        cfg.check_stopping()  # a config built in Python may not have been validated
        root = self.world.root  # under MPI rank 0 alone writes the folder
        starting = self.fresh
        lock, self.lock = self.lock or _locked(self.run_dir, resuming=not starting), None
        try:
            log = self._open_run_dir()
        except BaseException:
            lock.release()
            raise
        previous = distributed.taken_over(STOP_SIGNALS, self._on_stop_signal)
        self._unraisable_before, sys.unraisablehook = sys.unraisablehook, self._unraisable
        self._running, self._stops_again = True, []
        window_stats = []
        chars_per_update = cfg.k1 * cfg.batch
        train_time = 0.0  # time in updates only, for the throughput figure
        updates = 0  # of this session: a resumed run's earlier ones took no part of train_time
        try:
            if starting and cfg.init_from:  # where fine-tuning starts: the trained model on the new text
                self._validate(log, progress)
            self._agree()
            if self.stop_requested:  # before the first update (during that validation): none begun
                self._stop_here()
            while not self.ended():
                t0 = time.perf_counter()
                loss, norm, clipped, lr = self.update()
                dt = time.perf_counter() - t0
                updates += 1
                if updates > 1:  # the session's first loads (or compiles) the kernels: no speed
                    train_time += dt
                self.elapsed += dt
                self._agree()
                window_stats.append((loss, norm, clipped, dt if updates > 1 else None))
                if self.step % LOG_EVERY == 0 or self.ended():
                    record = self._log_updates(log, window_stats, lr)
                    if progress:
                        progress(self, record)
                end = self.ended()
                best = False
                if self.step % cfg.eval_every == 0 or end:
                    best = self._validate(log, progress, save_best=False)
                try:
                    if cfg.sample_every and self.step % cfg.sample_every == 0 and root:
                        self._write_sample()
                finally:  # after the step's sample, whose samples.txt it holds (_cut_samples); kept if it failed
                    if best:
                        self._save_best(progress)
                self._agree()
                if self.ended() and self.last_val_step != self.step and not self.stop_requested:
                    self._validate(log, progress)  # a sample used up a time limit: the last update too
                # `end` again: the time the validation or sample took may have used up a time limit
                if window_stats and (self.stop_requested or self.ended()):  # the run ends at this update:
                    self._log_updates(log, window_stats, lr)  # the updates since its last record too
                if self.step % cfg.checkpoint_every == 0 or self.ended():
                    self.save("latest")
                if self.stop_requested:  # every rank, at this update
                    self._stop_here()
            test = math.nan
            if len(self.test_ids) >= 2:
                self.testing = True
                if progress:
                    progress(self, None)
                try:  # a stop now ends it at once: the last update was saved above, the resume tests it
                    test = self._finite(self._evaluate(self.test_ids, stop=self._stopping), "test")
                except Abandoned:
                    self.world.stop_together()
                    raise Interrupted(self.resumable[0], untested=True) from None
                log.write({"kind": "test", "step": self.step, "loss": test, "bpc": bits(test)})
            return {"steps": self.step, "epochs": self.epoch(), "val_loss": self.last_val,
                    "stopped_by": self._reached(self._limits(), how_far=False),
                    "best_val_loss": self.best_val, "test_loss": test, "elapsed": self.elapsed,
                    "updates": updates,  # of this session
                    # None for a session of one update, which loads the kernels: no speed to say
                    "train_chars_per_sec": chars_per_update * (updates - 1) / max(train_time, 1e-9) if updates > 1
                    else None,
                    "run_dir": str(self.run_dir)}
        finally:
            try:
                self._end_stops_again()  # (a stop made to arrive again may raise here: the rest still runs)
            finally:
                distributed.given_back(previous)
                sys.unraisablehook = self._unraisable_before
                log.close()
                lock.release()

    def _stop_here(self):
        """End the run where it is on a stop signal, every rank together: saved, Interrupted."""
        path = self.save("latest")
        self.world.stop_together()
        raise Interrupted(path)

    def _log_updates(self, log, window_stats, lr):
        """Write the record of the updates since the last one, window_stats (loss, gradient norm,
        whether clipped, seconds or None for the update that loaded the kernels), and empty it."""
        losses, norms, clips, dts = zip(*window_stats)
        timed = [d for d in dts if d is not None]
        chars = self.cfg.k1 * self.cfg.batch * len(timed)
        record = {"kind": "train", "step": self.step, "epoch": round(self.epoch(), 4),
                  "loss": float(np.mean(losses)), "bpc": bits(float(np.mean(losses))),
                  "grad_norm": float(np.mean(norms)), "clipped": float(np.mean(clips)),
                  "lr": lr, "chars_per_sec": chars / sum(timed) if timed else None, "time": round(self.elapsed, 3)}
        log.write(record)
        window_stats.clear()
        return record

    @property
    def resumed(self) -> bool:
        """Whether this trainer goes on from a checkpoint: settings of the model's, such as
        --u-max, are then the run's own."""
        return self.restored is not None

    def _diverged(self, when: str, what: str, forward=False) -> CharrnnError:
        """The error that stops a run whose training diverged `when` ("at update 12"), as `what`
        shows, with what is kept and what to try. forward: its loss was NaN or Inf, which in the
        first update of a session no learning rate or clipping of this session has touched yet."""
        cfg = self.cfg
        tries = []
        if self._u_passes_1():  # |u|^k2 over a window
            tries.append(f"--u-max 1 or less{' in a new run' if self.resumed else ''} (|u| up to "
                         f"{resolved_u_max(cfg.u_max, cfg.k2):g} grows the state at every step)")
        # a state that grows ran on from update to update (--reset-every 0: for an epoch), and the
        # update's steps from a zero state are finite: a fresh start at every update trains. (Every
        # rank runs them: the state's growth is rank 0's word, its parameters may differ in the last bits.)
        if forward and self.carried \
                and math.isfinite(self.world.sum_float(self.sched.fresh_loss(self.stack, self.params))) \
                and self.world.from_root(state_grows(self.spec, self.params)):
            tries.append("--reset-every 1 (a fresh start at every update: the state grows over one window, "
                         "not from update to update)")
        session_start = self.restored[1] if self.restored else 0
        if not (forward and self.step == session_start and tries):
            tries.append("a lower --lr or --clip-norm" if cfg.clip_norm else "a lower --lr, or clipping (--clip-norm 5)")
        advice = tries[0] if len(tries) == 1 else f"{', '.join(tries[:-1])}, or {tries[-1]}"
        return CharrnnError(f"training diverged {when}: {what}; {self._checkpoints_kept()}; try {advice}")

    def _u_passes_1(self) -> bool:
        """Whether this run is an IndRNN's whose bound lets |u| pass 1, which --u-max 1 would keep
        from it: in a new run, where this one is resumed (the bound is its own); not in a
        fine-tune, which keeps its model's bound."""
        cfg = self.cfg
        return cfg.cell == "indrnn" and not cfg.init_from and resolved_u_max(cfg.u_max, cfg.k2) > 1

    def _checkpoints_kept(self) -> str:
        saved = (self.run_dir / "latest.npz").is_file() or (self.run_dir / "best.npz").is_file()
        return f"the last good checkpoint is in {self.run_dir}" if saved else "no checkpoint was saved before it"

    def _finite(self, loss: float, text: str) -> float:
        """loss on the `text` text ("validation", "test"), or a CharrnnError if it is NaN or
        Inf: a model that computes them over streams longer than its training windows (a state
        that grows without bound) is broken there, and was said to be a run without that text."""
        if math.isfinite(loss):
            return loss
        grows = ""
        if state_grows(self.spec, self.params):
            keeps = ""
            if self._u_passes_1():
                keeps = f": --u-max 1{' in a new run' if self.resumed else ''} keeps it bounded"
            grows = f" (an IndRNN's whose u passes 1{keeps})"
        # the test comes after the last update's save: that checkpoint is the model tested
        kept = (f"{self.run_dir / 'latest.npz'} holds update {self.step}, the model tested" if text == "test" else
                self._checkpoints_kept())
        raise CharrnnError(f"the {text} loss is {loss} after update {self.step}: the model computes NaN or Inf over "
                           f"the {text} text, whose streams run longer than a training window, as a state that grows "
                           f"without bound does{grows}; {kept}")

    def _validate(self, log, progress, save_best=True):
        """Measure the validation loss, log it, and if it is the best so far save best.npz, or
        with save_best=False leave that to the caller: returns whether it is."""
        t1 = time.perf_counter()
        self.last_val, self.last_val_step = self.validate(), self.step
        self.elapsed += time.perf_counter() - t1
        if len(self.val_ids) >= 2:  # without a validation text, no record: a null loss is an infinite one
            log.write({"kind": "val", "step": self.step, "loss": self._finite(self.last_val, "validation"),
                       "bpc": bits(self.last_val)})
        best = self.last_val < self.best_val
        if best and save_best:
            self._save_best(progress)
        elif progress and not best:  # (a best one's progress comes after its save)
            progress(self, None)
        return best

    def _save_best(self, progress):
        self.best_val = self.last_val
        self.save("best")
        if progress:
            progress(self, None)

    # -- samples -------------------------------------------------------------------------------
    def sample(self):
        """cfg.sample_length characters sampled from the model as it is now, with the seed set to
        the step: what `charrnn sample --seed STEP` (same length and temperature) prints from a
        checkpoint of this step. Its random numbers are its own, so sampling changes nothing in
        training."""
        from .sampling import SAMPLE_THREADS, Sampler, sample_text, separator_read

        if self._sampler is None:  # reads self.params as they are at each call
            self._sampler = Sampler(self.spec, self.params, threads=SAMPLE_THREADS)
        return sample_text(self._sampler, self.vocab, length=self.cfg.sample_length,
                           temperature=self.cfg.sample_temperature, seed=self.step,
                           doc_sep=separator_read(self.cfg.doc_sep, self.corpus_info["files"]))[0]

    def _write_sample(self):
        """A sample, shown and appended to samples.txt under a line saying where it was taken.
        Its time counts towards the time limit."""
        t1 = time.perf_counter()
        text = self.sample()
        self.elapsed += time.perf_counter() - t1
        val = "-"  # none measured yet
        if math.isfinite(self.last_val):
            val = f"{self.last_val:.4f}" + (f" (step {self.last_val_step})" if self.last_val_step != self.step else "")
        header = SAMPLE_HEADER.format(step=self.step, epoch=self.epoch(), val=val,
                                      temperature=self.cfg.sample_temperature)
        path = self.run_dir / SAMPLES_FILE
        try:  # a bytes model's bytes, as `charrnn sample` writes them (surrogateescape)
            with open(open_run_file(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND), "a", encoding="utf-8",
                      errors="surrogateescape") as f:
                f.write(f"{header}\n{shown_text(text, self.cfg.encoding, 'surrogateescape')}\n\n")
        except OSError as e:
            raise CharrnnError(os_error_message(e, path)) from None
        self.show(f"{header}\n{shown_text(text, self.cfg.encoding)}")  # on a screen, as UTF-8 with U+FFFD

    def _open_run_dir(self):
        """With the folder locked: refuse to overwrite another run, remove what killed saves left,
        and open the metrics log. A fresh run starts a fresh log: one left by a run of the same
        name that never saved a checkpoint describes no model that exists. A resumed run drops
        from its logs what was written after its checkpoint: that part of the run is redone.
        Under MPI the ranks other than 0 leave the folder alone."""
        if not self.world.root:
            self.fresh = False
            return _NoLog()
        if self.fresh:
            check_new_run_dir(self.run_dir)  # again, now that it is locked
            left = [name for name in (METRICS_FILE, SAMPLES_FILE) if (self.run_dir / name).exists()]
            if left:
                self.say(f"replacing {' and '.join(left)} in {self.run_dir}, left by a run that saved no checkpoint")
        remove_stale_temporaries(self.run_dir, logs=(METRICS_FILE, SAMPLES_FILE))
        if self.fresh:  # a dead run's logs go: a link among them (to another run's) is replaced, not written
            for name in (METRICS_FILE, SAMPLES_FILE):
                (self.run_dir / name).unlink(missing_ok=True)
        else:
            _cut_log(self.run_dir / METRICS_FILE, lambda line, at: _record_step(line) > self.step, every_line=True)
            _cut_samples(self.run_dir / SAMPLES_FILE, self.step, self.samples_bytes)
        log = MetricsLog(self.run_dir / METRICS_FILE, "w" if self.fresh else "a")
        self.fresh = False
        return log

    def stopped_line(self, at_once=False, in_test=False) -> str:
        """The last line of a run that a stop signal ended: where, the checkpoint holding what it
        keeps, and the command that goes on from there, or tests it (a run stopped at its last
        update, or in its test: Interrupted.untested). at_once: a second signal, which ends the
        run wherever it is, saving nothing more."""
        if self.resumable is None:
            return f"stopped at once after update {self.step}; nothing was saved yet"
        path, step = self.resumable
        at_end = step == self.step and self.ended()  # a resume has only the test left to do, if any
        # rank 0 writes the checkpoints; another rank's word on them is the folder (one may be half written)
        try:  # the folder itself where a resume of it takes this checkpoint
            folder_takes = not self.world.root or resolve_checkpoint(self.run_dir, prefer="latest") == path
        except CharrnnError:
            folder_takes = False
        resume = resume_command(self.run_dir if folder_takes else path,
                                self.given_again if self.resumable == self.restored else ((), ()))
        then = (f"Continue with: {resume}" if not at_end else
                f"Test it with: {resume}" if len(self.test_ids) >= 2 else "The run is complete.")
        if at_once and not self.world.root:
            return (f"stopped at once after update {self.step}, and so did every rank; {self.run_dir} holds the "
                    f"checkpoints rank 0 saved. {then}")
        if at_once:
            return f"stopped at once after update {self.step}; {path} holds update {step}. {then}"
        if in_test:
            return f"interrupted in the test after update {self.step}, the last; {path} holds it. {then}"
        return f"interrupted at update {self.step}{', the last' if at_end else ''}; saved {path}. {then}"

    def _on_stop_signal(self, signum, frame):
        if self.signalled:  # a second signal: stop now, whatever the state
            if self.stop_requested and not self.world.root:
                # every rank has agreed to stop at this update: rank 0 saves it and says so, and
                # this rank's abort would only cut that short (the job ends in moments anyway)
                return
            self.stopping_now = signum
            raise KeyboardInterrupt
        self.first_stop = signum  # finish this update, save, then stop

    def _unraisable(self, unraisable):
        """A second signal's KeyboardInterrupt, raised while Python ran a callback of C code
        (numba loading or compiling kernels: llvmlite's object cache), cannot leave it: the C
        code drops it ("Exception ignored on calling ctypes callback function") and the update
        went on. The signal is made to arrive again 10 ms later, as if sent then (its handler
        runs at the next line of Python: out of the callback, or in another, which comes here
        again), but never once run() has ended, which would end what follows."""
        if isinstance(unraisable.exc_value, KeyboardInterrupt) and self.stopping_now:
            again = threading.Timer(0.01, self._stop_again)  # 10 ms on: out of the callback
            again.daemon = True
            self._stops_again.append(again)
            again.start()
        else:
            self._unraisable_before(unraisable)

    def _stop_again(self):
        if self._running:  # run() waits for this before it gives the signals back (_end_stops_again)
            _thread.interrupt_main(self.stopping_now)

    def _end_stops_again(self):
        self._running = False
        for again in self._stops_again:  # all cancelled before any wait, which a stop may cut short
            again.cancel()
        for again in self._stops_again:
            again.join()


# The streams a thread needs for the recurrent product to pay for reading the weights at every
# step (each thread reads all of them for its own streams). Whole LSTM updates on two threads
# (Intel Xeon, H=128 and 512) with 8 streams a thread ran at 90%-99% of the speed with 16, with 2
# at 28%-36%; the same with AVX2's 4-row tile (compiled for haswell on that machine), where 4
# reached 75%-88% (README: Many cores).
FILLING_STREAMS = 8


def filling_batch(n_threads: int, ranks: int) -> int:
    """The --batch giving every thread FILLING_STREAMS streams (--batch is the total over
    `ranks` processes of n_threads threads each)."""
    return FILLING_STREAMS * n_threads * ranks


def few_streams_line(batch: int, ranks: int, n_threads: int) -> str | None:
    """A line for a run of `batch` streams over `ranks` processes of n_threads threads each that
    gives a thread fewer than FILLING_STREAMS, naming the --batch that gives each that many;
    else None."""
    per_thread = batch / (ranks * n_threads)
    if per_thread >= FILLING_STREAMS:
        return None
    streams = f"{per_thread:.2g} stream{'' if per_thread == 1 else 's'}"
    return (f"note: {streams} a thread (--batch {batch} on {split_shown(ranks, n_threads)}); a thread needs "
            f"{FILLING_STREAMS} or more to pay for reading the weights at every step: try --batch "
            f"{filling_batch(n_threads, ranks)}, usually with a larger --lr (README: Many cores)")


def split_shown(ranks: int, n_threads: int) -> str:
    """How a run's work is split, in words: '2 threads', '4 processes of 2 threads'."""
    on_threads = f"{n_threads} thread{'' if n_threads == 1 else 's'}"
    return on_threads if ranks == 1 else f"{ranks} processes of {on_threads}"


def resplit_line(saved: dict | None, ranks: int, n_threads: int) -> str | None:
    """A note for a run resumed on another split of its work than the one that saved it (saved:
    the checkpoint's {"ranks", "threads"}; None in a checkpoint older than it); else None. The
    sums of an update are split into a block per thread and per process and added in that
    order, so the run goes on, but its numbers part from the ones it would have had in the
    last bits, and more as it trains."""
    if saved is None or (saved["ranks"], saved["threads"]) == (ranks, n_threads):
        return None
    then = split_shown(saved["ranks"], saved["threads"])
    again = f"NUMBA_NUM_THREADS={saved['threads']}"
    if saved["ranks"] > 1:
        again = f"mpiexec -n {saved['ranks']} with {again}"
    elif ranks > 1:
        again = f"one process with {again}"
    return (f"note: this run was saved on {then} and resumes on {split_shown(ranks, n_threads)}: it trains on, but "
            f"not bit for bit as it would have on {then} (an update's sums add up a block per thread and process, "
            f"in that order); {again} resumes it exactly")


def fine_tune_settings(checkpoint, given: dict) -> dict:
    """The settings of a run that fine-tunes `checkpoint` (a file or a run folder, its best):
    the model's cell, sizes and cell options, the encoding `given` names (by default bytes for
    a bytes model, else UTF-8), and
    init_from, the checkpoint's absolute path. A UsageError if `given` (the settings the user
    set) asks for another model."""
    from .sampling import load_model

    model = load_model(checkpoint)
    saved = {**OLDER_CHECKPOINTS, **model.config}
    check_init_overrides(given, saved, checkpoint)
    settings = {name: saved[name] for name in MODEL_SETTINGS}
    if saved["cell"] == "indrnn":  # the bound u was trained within, not one that follows the new run's --k2
        settings["u_max"] = resolved_u_max(saved["u_max"], saved["k2"])
    encoding = saved.get("encoding", "utf-8")
    if given.get("encoding") and (given["encoding"] == "bytes") != (encoding == "bytes"):  # its ids' meaning
        reads = "bytes" if encoding == "bytes" else "characters"
        raise UsageError(f"--init-from {checkpoint} reads {reads} (--encoding {encoding}), as a fine-tuned run must "
                         f"too; leave out --encoding {given['encoding']}")
    # a model of characters reads its new text as any run does (UTF-8 by default): its own
    # --encoding latin-1 said how its old text was stored, and would read a UTF-8 text garbled
    settings["encoding"] = given.get("encoding") or ("bytes" if encoding == "bytes" else "utf-8")
    settings["init_from"] = str(model.path.resolve())
    return settings


def _load_init(cfg):
    """The trained model a run fine-tunes, which cfg must describe."""
    from .sampling import load_model

    model = load_model(cfg.init_from)
    # the bound on |u| this run will keep, as its window resolves it (cfg.cell_options)
    setting = {name: getattr(cfg, name) for name in MODEL_SETTINGS}
    check_init_overrides({**setting, "u_max": resolved_u_max(cfg.u_max, cfg.k2)}, model.config, cfg.init_from)
    return model


def _read_corpus(inputs, encoding, doc_sep, model=None, once=True):
    """read_corpus; under MPI once a machine, by its first rank, whose ids the machine's other
    ranks map (distributed.Mpi.node_shared): one copy of the text a machine, not one a rank."""
    world = distributed.world()

    def read():
        corpus = read_corpus(inputs, encoding, doc_sep, model, once)
        return corpus.ids, (corpus.chars, corpus.sha256, corpus.files, corpus.notes)

    ids, (chars, sha256, files, notes), why_not = world.node_shared(read)
    if why_not:
        notes = notes + [_unshared("the text", why_not)]
    return Corpus(ids, chars, sha256, files, notes)


def _unshared(what, why_not):
    """The note of an array this process could not share with the others of its machine."""
    return f"{what} is not shared in memory: {why_not}"


def _corpus_to_resume(meta, cfg, inputs, run_dir):
    """The text a run resumes on, checked against the SHA-256 its checkpoint keeps: `inputs` if
    given; else the files the checkpoint lists, or (older checkpoints) its corpus setting."""
    saved = meta["corpus"]
    if inputs:
        try:
            corpus = _read_corpus(inputs, cfg.encoding, cfg.doc_sep)
        except NotText as e:  # its advice (another --encoding) is no choice on resume
            raise CharrnnError(f"{e.reason}: it is not the text this run was trained on; give the files "
                               "it read") from None
        if corpus.info()["sha256"] != saved["sha256"]:
            raise _not_the_text(inputs, saved.get("files", []), corpus.files, run_dir)
        return corpus
    stored = [f["path"] for f in saved.get("files", [])] or cfg.corpus or [str(default_corpus())]
    missing = [p for p in stored if not Path(p).exists()]
    if missing:
        raise CharrnnError(f"{missing[0]}, part of the text this run was trained on, is not there; give the text "
                           f"again after --resume (charrnn train --resume {shell_word(run_dir)} FILE...), it is "
                           "checked by its hash")
    # a pipe or a device in the place of a file it read would block, or never end (an older checkpoint's
    # corpus setting may name folders)
    readable = Path.is_file if saved.get("files") else (lambda p: p.is_file() or p.is_dir())
    other = next((p for p in stored if not readable(Path(p))), None)
    if other is not None:
        raise CharrnnError(f"{other}, part of the text this run was trained on, is no longer a regular file; "
                           f"give the text again after --resume (charrnn train --resume {shell_word(run_dir)} FILE...)")
    try:  # the files it read, each where it read it (a file twice, if it did: each is checked below)
        corpus = _read_corpus(stored, cfg.encoding, cfg.doc_sep, once=not saved.get("files"))
    except NotText as e:  # its advice (another --encoding) is no choice on resume
        raise CharrnnError(f"{e.reason}: it has changed since this run read it; resume with the text "
                           "it was trained on") from None
    # in order: each listed file was read where it is (once=False), a link as the file it leads to;
    # a file moved, with a link to it left in its place, still holds the bytes the run read
    for old, now in zip(saved.get("files", []), corpus.files):
        if old["sha256"] != now["sha256"]:
            link = f" (now a link to {now['path']})" if now["path"] != old["path"] else ""
            raise CharrnnError(f"{old['path']}{link} has changed since this run read it; resume with the text it "
                               f"was trained on")
    if corpus.info()["sha256"] != saved["sha256"]:
        raise CharrnnError(f"{' '.join(stored)} is not the text this run was trained on (its SHA-256 differs); "
                           f"resume with the original text")
    return corpus


def _not_the_text(inputs, read, given, run_dir) -> CharrnnError:
    """The error for text given to resume a run that is not the text it read (`read`, `given`:
    the files' records, the checkpoint's and the text's), naming by path the files it read that
    changed since or are not in the text given (missing, or there but left out or not given), and
    those new to the run (a file moved elsewhere with its bytes is none of these), or else the
    same files in another order. And what to do: where the text holds every file the run read,
    unchanged where it was, and more (a folder that has gained files), leaving the text out
    resumes the run."""
    was, now = {f["path"]: f["sha256"] for f in read}, {f["path"]: f["sha256"] for f in given}
    changed = [p for p in now if p in was and now[p] != was[p]]
    new, out = [p for p in now if p not in was], [p for p in was if p not in now]
    moved = Counter(was[p] for p in out) & Counter(now[p] for p in new)
    new, out = _unmoved(new, now, moved), _unmoved(out, was, moved)
    missing = [p for p in out if not os.path.lexists(p)]
    left_out = [p for p in out if p not in missing]
    how = [f"{some_of(changed)} changed since the run read {'it' if len(changed) == 1 else 'them'}"] if changed else []
    how += [f"{some_of(names)}, which the run read, {'is' if len(names) == 1 else 'are'} {what}"
            for names, what in ((missing, "missing"), (left_out, "not in the text given")) if names]
    how += [f"{some_of(new)} {'is' if len(new) == 1 else 'are'} new to the run"] if new else []
    # (no list of files read: a checkpoint from before they were listed)
    why = ("; ".join(how) or _same_files_otherwise(read, given)) if read else "its SHA-256 differs"
    given_text = " ".join(map(str, inputs))
    if read and new and all(now.get(p) == sha for p, sha in was.items()):
        return CharrnnError(f"{given_text} is not the text this run was trained on: {why}; leave the text out to "
                            f"resume on the files it read (charrnn train --resume {shell_word(run_dir)}), or "
                            f"train on all of them in a new run that starts from this one (--init-from "
                            f"{shell_word(run_dir)})")
    return CharrnnError(f"{given_text} is not the text this run was trained on ({why}); give the files it read, in "
                        "the same order")


def _same_files_otherwise(read, given) -> str:
    """Why text made of the files a run read, none changed, new or missing, is not its text."""
    was, now = ([f["sha256"] for f in files] for files in (read, given))
    return "the same files in another order" if was != now and sorted(was) == sorted(now) else "its SHA-256 differs"


def _unmoved(paths, hashes, moved):
    """paths but those whose file's bytes (hashes[path]) are among `moved`, a Counter of the
    hashes of files that moved, as many of each as it counts."""
    left, moved = [], moved.copy()
    for p in paths:
        if moved[hashes[p]]:
            moved[hashes[p]] -= 1
        else:
            left.append(p)
    return left


def _record_step(line):
    """The step of a metrics.jsonl line; a line that is no record (torn by a crash) counts as later."""
    try:
        step = json.loads(line).get("step")
    except (ValueError, AttributeError, RecursionError):  # RecursionError: nested too deep to read
        return math.inf
    return step if isinstance(step, int) else math.inf


def _sample_step(line):
    """The step of a samples.txt header line, -1 for any other line; one of more digits than any
    run's step counts as later (int() refuses 4,300 digits and more)."""
    m = _SAMPLE_HEADER_STEP.match(line)
    if not m:
        return -1
    return int(m.group(1)) if len(m.group(1)) <= 20 else math.inf


def _left_by_a_run(path, step) -> bool:
    """Whether `path` is missing, empty, no regular file (a device holds nothing to lose), or a
    log a run wrote: its first line a record whose step `step` reads (_record_step, _sample_step)."""
    if not path.is_file():
        return True
    try:
        with open(path, "rb") as f:
            line = f.readline(4096)
            whole = not f.read(1)  # the line is all the file holds
    except FileNotFoundError:
        return True
    except OSError as e:
        raise CharrnnError(f"cannot read {path}: {e.strerror or e.__class__.__name__}") from None
    first = line.decode("utf-8", "replace")
    # a first write cut short: the whole file, one line without its end, begun as a record
    torn = whole and not line.endswith(b"\n") and len(line) < 4096 and first.startswith(tuple(LOG_STARTS.values()))
    return not first or 0 <= step(first) < math.inf or torn


def _meta(path):
    """The meta document of the checkpoint at `path`, or None if it cannot be read."""
    try:
        return load_checkpoint(path, schema=TRAINING_META)[1]
    except (CharrnnError, OSError):
        return None


def _saved_step(path):
    """The update the checkpoint at `path` holds, or None if it cannot be read."""
    meta = _meta(path)
    return None if meta is None else meta["step"]


def _beside(path, name):
    """The file `name`.npz in path's folder, if there is one and it is not path itself; else None."""
    other = path.parent / (name + SUFFIX)
    try:
        if not other.is_file() or other.samefile(path):
            return None
    except OSError:
        return None
    return other


def _other_meta(path, name):
    """The meta document of the checkpoint `name` beside `path` (not path itself), or None if
    there is none or it cannot be read (which _replaced refuses to replace)."""
    other = _beside(path, name)
    return None if other is None else _meta(other)


def resume_command(target, given_again=((), ())) -> str:
    """The command that resumes `target` (a run folder or a checkpoint), for messages; with the
    words of the text and of the options a resume changed (Trainer.given_again), where the
    checkpoint does not hold them yet."""
    text, options = given_again
    return " ".join(["charrnn train", *text, "--resume", shell_word(target), *options])


def _refuse_to_replace(path, step, given_again=((), ())):
    """A checkpoint resumed in a folder must not replace what the folder holds of another
    (_replaced); a copy resumed in a folder of its own loses nothing."""
    why = _replaced(path, step)
    if why is None:
        return
    folder = path.absolute().parent  # path may be a bare file name: "." has no name to extend
    new = folder.with_name(f"{folder.name}-from-{step}")
    copy = (f"mkdir {shell_word(new)} && cp {shell_word(path)} {shell_word(new / 'latest.npz')} && "
            f"{resume_command(new, given_again)}")
    raise CharrnnError(f"{why}. To go on from update {step} and keep it, resume a copy in a folder of its own: "
                       f"{copy}")


def _replaced(path, step):
    """What resuming the checkpoint `path` (of update `step`) in its folder would replace there,
    or None: a log that is not charrnn's, the checkpoints of another run (a file copied in), or a
    latest.npz the checkpoint is older than (a copy of an earlier one, or best.npz while
    latest.npz went on), whose records it would drop, or a checkpoint file it cannot read (a
    damaged one, or a file of the user's, which a resume once replaced without a word)."""
    for name, step_of in ((METRICS_FILE, _record_step), (SAMPLES_FILE, _sample_step)):
        if not _left_by_a_run(path.parent / name, step_of):
            return f"{path.parent / name} is not a log of charrnn's; resuming {path} there would replace it"
    mine = None
    for name in ("latest", "best"):
        beside = _beside(path, name)
        if beside is None:
            continue
        other = _meta(beside)
        if other is None:  # a damaged checkpoint, or a file of the user's: kept whole
            return (f"{beside} cannot be read as a charrnn checkpoint, and resuming {path} there would replace it "
                    "(move it away to resume there)")
        mine = mine or load_checkpoint(path, schema=TRAINING_META)[1]
        if _run_id(other) != _run_id(mine):
            return (f"{path} is a checkpoint of another run than {beside}; resuming it there would replace that "
                    "run's checkpoints and records")
        if name == "latest" and other["step"] > step:
            return (f"{path} was saved at update {step}, before {beside} (update {other['step']}); resuming it there "
                    "would replace that")
    return None


def _run_id(meta) -> str:
    """The id of a checkpoint's run: the one it holds, or for a checkpoint from before run ids,
    one made of what a run cannot change (_run_of), the same for each of that run's checkpoints
    and for those its resumes write."""
    if isinstance(meta.get("run_id"), str):
        return meta["run_id"]
    return hashlib.sha256(json.dumps(_run_of(meta)).encode()).hexdigest()[:32]


# the settings a resume cannot change that tell runs apart, beside the model's
_RUN_SETTINGS = ("seed", "batch", "k1", "k2", "optimizer", "dropout", "weight_decay", "val_fraction", "test_fraction",
                 "encoding")


def _run_of(meta) -> list:
    """What tells one run's checkpoints from another's where they hold no run id: the settings
    a resume cannot change, as this charrnn reads them (an older checkpoint's missing ones are
    what that charrnn ran; tau in one spelling), its vocabulary and its text."""
    settings = TrainConfig.from_dict(meta["config"])
    settings.tau = normal_tau(settings.tau)
    return [[getattr(settings, name) for name in (*_RUN_SETTINGS, *MODEL_SETTINGS)], meta["vocab"],
            meta["corpus"].get("sha256")]


# A log is read in pieces of at most this many characters: a line past it (no log writes one)
# costs no more memory than this, in a log given by mistake or made to cost memory
LOG_PIECE = 1 << 20


def _log_lines(f):
    """(piece, starts_a_line, its offset in bytes) of a log opened as text (newline=""), a line in
    pieces of at most LOG_PIECE. A line ends at a line break, "\n" (a run writes no other):
    readline also stops at a CR, which a sample's text may hold, and between the two of a CR LF
    cut by the limit."""
    starts, at = True, 0
    while piece := f.readline(LOG_PIECE):
        yield piece, starts, at
        starts = piece.endswith("\n")
        at += len(piece) if piece.isascii() else len(piece.encode("utf-8", "surrogateescape"))


def _cut_samples(path, step, size):
    """Drop from samples.txt the samples a run resumed at update `step` takes again: the file is
    cut to `size` bytes, its size when the checkpoint was saved, where they end a sample and what
    follows them begins one of a later update. Else (an older checkpoint; a file edited since)
    from the first line that reads as the header of a later update's sample on: a sample's own
    text may hold such a line (a model trained on logs), which there cut the samples before it."""
    if size is not None and _sample_ends_at(path, size, step):
        _cut_log(path, lambda line, at: at >= size)
    else:
        _cut_log(path, lambda line, at: _sample_step(line) > step)


def _sample_ends_at(path, size, step) -> bool:
    """Whether samples.txt at `path` ends a sample at byte `size` (its start, or a blank line)
    and goes on, if at all, with the header of a sample after update `step`."""
    try:
        with open(open_run_file(path, os.O_RDONLY), "rb") as f:
            f.seek(max(size - 2, 0))
            end = f.read(2 if size >= 2 else 0)
            next_line = f.readline(LOG_PIECE).decode("utf-8", "surrogateescape")
    except (OSError, CharrnnError):  # (_cut_log says what is wrong with it)
        return False
    return (size == 0 or end == b"\n\n") and (not next_line or _sample_step(next_line) > step)


def _cut_log(path, after, every_line=False):
    """Drop from a log what a resumed run redoes: the lines for which after(line, its offset in
    bytes) holds (every_line), or everything from the first such line on. Rewritten atomically,
    a piece at a time (_log_lines: a long line is judged by its first piece), where any line goes."""
    if not os.path.lexists(path):
        return
    tmp = None
    try:
        with open(open_run_file(path, os.O_RDONLY), encoding="utf-8", errors="surrogateescape", newline="") as f:
            if not any(starts and after(piece, at) for piece, starts, at in _log_lines(f)):
                return
            f.seek(0)
            tmp, fd = new_temporary(path)
            with open(fd, "w", encoding="utf-8", errors="surrogateescape", newline="") as out:
                dropped = False
                for piece, starts, at in _log_lines(f):
                    if starts:
                        dropped = after(piece, at)
                        if dropped and not every_line:
                            break
                    if not dropped:
                        out.write(piece)
        os.replace(tmp, path)
    except BaseException as e:  # a Ctrl-C too: no copy of the log left behind (one killed: remove_stale_temporaries)
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise CharrnnError(os_error_message(e, path)) from None
        raise


def check_new_run_dir(run_dir: Path) -> None:
    """A CharrnnError if a new run cannot have run_dir: a file where a folder of its path should
    be, a run there already, or a file of the user's where the run's logs go (never replaced).
    The command line asks before the text is read; Trainer.run again once the folder is locked."""
    run_dir = Path(run_dir)
    in_the_way = file_in_the_way(run_dir)
    if in_the_way is not None:
        raise CharrnnError(f"cannot make the run folder {run_dir}: {in_the_way} is a file, not a folder; choose "
                           "another --out-dir or --run name")
    found = [run_dir / (name + SUFFIX) for name in ("latest", "best") if (run_dir / (name + SUFFIX)).exists()]
    if found:
        holder = held_by(run_dir)
        if holder is not None:  # --resume now would be refused too
            raise CharrnnError(f"{run_dir} holds a run that another charrnn process{pid_shown(holder)} is training; "
                               f"wait for it to finish, then continue it with --resume {shell_word(run_dir)}, or "
                               "choose another --run name")
        # (a FIFO is not opened: a read would wait for a writer)
        unread = [path for path in found if not path.is_file() or _meta(path) is None]
        if unread:  # a resume would refuse to replace them (_replaced)
            what = "charrnn checkpoints; move them" if len(unread) > 1 else "a charrnn checkpoint; move it"
            then = f", then continue the run with --resume {shell_word(run_dir)}," if len(unread) < len(found) else ","
            raise CharrnnError(f"{' and '.join(map(str, unread))} cannot be read as {what} away{then} or choose "
                               "another --run name")
        raise CharrnnError(f"{run_dir} already holds a run; continue it with --resume {shell_word(run_dir)} "
                           f"or choose another --run name")
    for name, step in ((METRICS_FILE, _record_step), (SAMPLES_FILE, _sample_step)):
        if not _left_by_a_run(run_dir / name, step):  # a file of the user's: never replaced
            raise CharrnnError(f"{run_dir / name} is not a log of charrnn's; move it, or choose another --run name")


def _unlike_rank_0(mine: dict) -> dict:
    """{name: rank 0's value} of the names in `mine` whose values differ from rank 0's (none in
    one process)."""
    root = distributed.world().from_root(mine)
    return {k: root.get(k) for k in mine if mine[k] != root.get(k)}


def same_run_on_every_rank(cfg, vocab=None, text_sha256=None):
    """Under MPI every rank must run the same run: settings, characters and text. A rank given
    other settings (launched with another command line, as mpiexec's A : B allows) or another
    text would go its own way, and the ranks would wait for each other for ever in their next
    all-reduce, or before it (--run on one rank only; a fine-tune renumbers its text in a
    collective of its own). Each rank compares its settings alone with rank 0's before a new
    run's folder is claimed and its text read (cli.train), then its settings and text before the
    first all-reduce (Trainer); every rank stops where one differs (distributed.refuse_together).
    The text is compared by its SHA-256, which decides its length too (its count of characters was
    compared alone: a machine's copy of it at the same path, of the same length and characters but
    another text, trained in silence on a mix of the two)."""
    mine = {**cfg.to_dict(), "corpus": _text_names(cfg.corpus)}  # as Trainer keeps them
    if vocab is not None:
        mine.update({"vocabulary": vocab.to_json(), "text": text_sha256})
    differ = _unlike_rank_0(mine)
    refusal = None
    if differ:
        text = {"vocabulary", "text"}
        said = ["its text is another"] if text & set(differ) else []
        for k, theirs in differ.items():
            if k == "corpus":  # an argument, not an option: no --corpus
                said.append(f"the text {_texts_shown(mine[k])} (rank 0: {_texts_shown(theirs)})")
            elif k not in text:
                ours, rank_0 = _shown_apart(mine[k], theirs)
                said.append(f"{as_flag(k, _given(k, mine[k], ours))} (rank 0: {_given(k, theirs, rank_0)})")
        refusal = (f"this rank's run is not rank 0's: {', '.join(said)}; launch every rank with the same command line, "
                   "in a folder on a file system they all see")
    distributed.refuse_together(refusal)


def _given(name, value, shown):
    """A setting's value `shown`, or "not given" where --run or --init-from was left out
    (config.EMPTY_IS_NOT_GIVEN): `--run ''` said it was given so."""
    return "not given" if name in EMPTY_IS_NOT_GIVEN and value == "" else shown


def _read_by_every_rank(path, meta):
    """Under MPI each rank reads the checkpoint it resumes for itself. A rank that read another
    one (a run folder that each machine holds a copy of, one copy older) would go its own way,
    and the ranks would wait for each other at 100% CPU for ever in their next all-reduce: the
    document it read must be rank 0's."""
    unlike = _unlike_rank_0({"checkpoint": hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()})
    refusal = (f"{path} here is not the checkpoint rank 0 read; every rank must resume the same run, from a folder "
               "on a file system they all see")
    distributed.refuse_together(refusal if unlike else None)


def new_run_dir(cfg: TrainConfig) -> Path:
    """OUT_DIR/RUN; without --run, CELL-DATE-TIME, with -2, -3... if a run started in the same
    second holds that name (rank 0's choice under MPI). That folder is made here, which claims
    the name: runs of a sweep started together each get their own (remove_if_empty undoes it).
    Under MPI, after the ranks' settings are known to agree (same_run_on_every_rank): with
    --run on one rank only, they would wait in different collectives."""
    if cfg.run:
        return Path(cfg.out_dir) / cfg.run
    world = distributed.world()
    return Path(cfg.out_dir) / world.from_root(_claimed_name(Path(cfg.out_dir), cfg.cell) if world.root else None)


def _claimed_name(out_dir: Path, cell: str) -> str:
    stamp = f"{cell}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    if file_in_the_way(out_dir) is not None:
        return stamp  # check_new_run_dir says so
    try:
        out_dir.mkdir(parents=True, exist_ok=True)  # (a link to a folder that is gone: FileExistsError)
    except OSError as e:
        raise CharrnnError(os_error_message(e)) from None
    name, n = stamp, 2
    while True:
        try:
            (out_dir / name).mkdir()  # not exist_ok: of two runs, one makes it
            return name
        except FileExistsError:
            if not os.path.isdir(out_dir / name):  # a file, or a link to nothing, holds the name
                return name  # check_new_run_dir says so, or the run's own mkdir
            name, n = f"{stamp}-{n}", n + 1
        except OSError as e:
            raise CharrnnError(os_error_message(e)) from None


def remove_if_empty(folders) -> None:
    """Undo new_run_dir's claim of a folder the command then wrote nothing into (it failed, or
    was stopped, before the run began, or before it saved or logged anything: it diverged), and
    of the folders above it that it made, deepest first: a folder with anything in it stays, and
    so do those above it."""
    if distributed.world().root:
        _remove_unwritten_run_files(folders[0])
        for folder in folders:
            try:
                folder.rmdir()
            except OSError:
                return


def _remove_unwritten_run_files(run_dir: Path) -> None:
    """Remove what a run that saved and logged nothing left in its folder: the lock, and logs
    with nothing in them; where the folder holds anything else, or a log holds anything, or
    another process holds the lock, nothing."""
    try:
        names = os.listdir(run_dir)
        if not set(names) <= {LOCK_FILE, METRICS_FILE, SAMPLES_FILE} or held_by(run_dir) is not None:
            return
        files = [os.lstat(run_dir / name) for name in names]
        if all(stat.S_ISREG(f.st_mode) and (name == LOCK_FILE or f.st_size == 0) for name, f in zip(names, files)):
            for name in names:
                os.unlink(run_dir / name)
    except OSError:
        return


def _shown(value):
    # an empty setting (--doc-sep '') as '', not as nothing
    return f"{value:g}" if isinstance(value, float) else str(value) if value != "" else "''"


def _text_names(paths) -> list[str]:
    """A run's text files as it keeps them (cfg.corpus), absolute and links followed: a resume may
    start in any folder. realpath, not Path.resolve: a loop of links is for the text's reader to
    refuse in one line, where resolve raised RuntimeError. A name given twice is kept once, as
    its file is read once: `a.txt a.txt`, resumed with `a.txt`, was said to change the corpus."""
    return list(dict.fromkeys(os.path.realpath(p) for p in paths))


def _texts_shown(files):
    """A run's text files (cfg.corpus), for a message: none is the shipped text."""
    return " ".join(files) or "the shipped text"


def _shown_apart(a, b):
    """_shown of two values that differ, with the digits it takes to tell them apart (--lr 0.003 ->
    0.0030000001, not 0.003 -> 0.003)."""
    shown = _shown(a), _shown(b)
    return (repr(a), repr(b)) if shown[0] == shown[1] else shown


def _json_float(x):
    return None if not math.isfinite(x) else x


def _from_json_float(x):
    return math.inf if x is None else x
