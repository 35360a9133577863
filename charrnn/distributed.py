"""Training over MPI: the one module that touches it.

`mpiexec -n R charrnn train ...` (or srun) runs R processes, the ranks, that train one model by
synchronous data parallelism on the flat buffer, as Horovod and llm.c do it:

    every rank starts from rank 0's parameters;
    rank r reads rows [r*B/R, (r+1)*B/R) of the B streams of each global batch (B = --batch);
    its gradient is scaled by 1/(k1*B), for the global batch, so the sum over ranks is the
        gradient one process computes; one in-place Allreduce(SUM) on the flat buffer per update;
    clipping, the NaN check, the learning rate and the optimizer step then run identically on
        every rank (the same numbers in, the same numbers out).

The text is read once per machine, by the first rank on it, into memory that the machine's
other ranks map (node_shared): one copy a machine, not one a rank.

Rank 0 alone prints, logs and writes; the others run with stdout and stderr silenced. Whatever
a decision reads that could differ between ranks (the clock of a time limit, a stop signal that
reached one rank) is agreed in a tiny all-reduce, so that every rank stops on the same
update: a rank that stopped alone would leave the others waiting in an all-reduce forever.

A process that no MPI launcher started is a World of one (`Solo`): mpi4py is never imported and
every method below does nothing, so a plain `charrnn train` runs exactly as it always has.
"""
import os
import signal
import stat
import sys
import time
import warnings

from .errors import CharrnnError, UsageError, counted

# (size, rank) of the variables an MPI launcher sets in every process it starts: MPICH's and
# Intel MPI's hydra (and srun with PMI-2), Open MPI's mpirun, srun. A Slurm batch script has
# SLURM_NTASKS but is one process: only srun sets SLURM_STEP_NUM_TASKS.
LAUNCHERS = (("PMI_SIZE", "PMI_RANK"), ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"),
             ("SLURM_STEP_NUM_TASKS", "SLURM_PROCID"))

# Hidden hooks for tests: fail on one rank at an update; send one rank SIGINT as MPI starts,
# "R before" or "R after" MPI_Init, or as it shuts down, "R exit"; dump each rank's final
# parameters.
FAIL_RANK, FAIL_AT, DUMP_PARAMS = "CHARRNN_TEST_FAIL_RANK", "CHARRNN_TEST_FAIL_AT", "CHARRNN_TEST_DUMP_PARAMS"
INTERRUPT = "CHARRNN_TEST_INTERRUPT"

# A rank other than 0 that fails or stops waits this long before it says so and aborts: when
# every rank meets the failure (a bad option), or stops (Ctrl-C), rank 0 says it first and its
# abort ends this process.
QUIET_WAIT = 1.0
# Between the last line a rank prints and its abort: the launcher forwards a rank's output
# through a pipe, and an abort that tears the job down first loses the line.
FORWARD_WAIT = 0.3

# A machine's first rank puts an array the machine's other ranks map (node_shared) in an
# anonymous file in memory (Linux's memfd_create), which they open through /proc: it has no
# name, so nothing is left behind however the job ends, and it is not bounded by the size of
# /dev/shm (64 MB in a container by default). Its memory goes back when the last rank that
# maps it lets go.
SHARED_NAME = "charrnn-shared"

_world = None


def launched():
    """(size, rank) as the launcher's variables give them, or None outside a launcher."""
    for size, rank in LAUNCHERS:
        if size in os.environ:
            try:
                return int(os.environ[size]), int(os.environ.get(rank, "0"))
            except ValueError:
                return None
    return None


def share(n, rank, size) -> slice:
    """Rank `rank`'s contiguous share of n streams split over `size` ranks: equal shares when
    size divides n (training requires it), else some one longer (evaluation allows it)."""
    return slice(rank * n // size, (rank + 1) * n // size)


class StopsHeld:
    """Ctrl-C and SIGUSR1 in a process an MPI launcher started, from its first moment (the entry
    point, charrnn/__main__.py) to the end of the command. While the ranks join (MPI starting,
    world()), a stop is noted, not raised: a rank that ended alone then would leave the others
    waiting for it for ever, in MPI_Init or the first meeting after it. Once cli.main has let
    go, having joined them, a stop raises KeyboardInterrupt at once (until Trainer.run takes
    the signals over), which ends every rank by an abort. Outside a launcher it holds nothing."""

    SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGUSR1") if hasattr(signal, name))

    def __init__(self):
        self.holding = False
        self.noted = False
        self.seen = False  # whether a stop came at any time, held or not (interrupt)
        self._before = {}

    def hold(self):
        """Hold stops from now on, in a process a launcher started (again: nothing more)."""
        if not self._before and (launched() or (1, 0))[0] > 1:
            self._before = taken_over(self.SIGNALS, self._stop)
            self.holding, self.noted = True, False

    def let_go(self) -> bool:
        """From now on a stop raises KeyboardInterrupt. Whether one came while held."""
        self.holding = False
        noted, self.noted = self.noted, False
        return noted

    def restore(self):
        """The handlers as they were before hold()."""
        given_back(self._before)
        self._before, self.holding, self.noted = {}, False, False

    def ignore(self):
        """Stops ignored from now on, SIGTERM too: once the command has ended (charrnn/__main__.py),
        one in MPI's shutdown at exit would only cut this rank short, killed by the signal, and
        the launcher would report that as its failure (MPICH's mpiexec: exit 2, or 15 for a
        scheduler's SIGTERM reaching this rank a few hundredths of a second after another's);
        in an abort (Mpi), one would cut its waits short. The launcher's own second Ctrl-C
        still ends every rank by force."""
        for s in (*self.SIGNALS, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)
        self._before, self.holding, self.noted = {}, False, False

    def _stop(self, signum, frame):
        self.seen = True
        if not self.holding:
            raise KeyboardInterrupt
        self.noted = True

    def interrupt(self, signum, frame):
        """A handler that raises KeyboardInterrupt at once, as Python's own for Ctrl-C does, having
        noted the stop (seen): C code that the interrupt cuts short, an extension module's import
        (numpy's, scipy's BLAS), can turn it into another error and leave a module half imported,
        and the command line then ends as the stop it was (cli._print_error, cli.main), not with
        that error's line."""
        self.seen = True
        raise KeyboardInterrupt


HELD = StopsHeld()  # this process's


def taken_over(signals, handler) -> dict:
    """Each of `signals` to `handler`, but one ignored on purpose (SIG_IGN: a shell without job
    control starts `charrnn train &` with Ctrl-C ignored), which stays ignored, and one set
    outside Python (None), which stays as it is. The handlers replaced, by signal (given_back)."""
    return {s: signal.signal(s, handler) for s in signals if signal.getsignal(s) not in (signal.SIG_IGN, None)}


def given_back(replaced: dict):
    """The handlers taken_over replaced, back in place."""
    for s, handler in replaced.items():
        signal.signal(s, handler)


def stop_at_once_until_training(one_process: bool):
    """Until Trainer.run takes it over, SIGUSR1 ends a train command (from the entry point,
    charrnn/__main__.py, in one process; after MPI_Init, cli.main) at once with exit 130, as
    Ctrl-C does (KeyboardInterrupt): nothing is trained yet, nothing to save. Otherwise it would
    kill the command without a word, or go unheard (MPICH's MPI_Init takes it for itself). In one
    process SIGTERM too (timeout's, a scheduler's: sigterm_as_ctrl_c): it killed the command
    without a word and left the run folder made for it. Under a launcher SIGTERM keeps its
    default there: a launcher ending the other ranks of a failed job sends it, and they end
    without a word. A signal ignored on purpose stays so, as the run leaves it (Trainer.run).
    Returns the handlers it replaced, by signal."""
    replaced = taken_over([signal.SIGUSR1] if hasattr(signal, "SIGUSR1") else [], HELD.interrupt)
    if one_process:
        replaced.update(sigterm_as_ctrl_c())
    return replaced


def sigterm_as_ctrl_c() -> dict:
    """SIGTERM ends the command as Ctrl-C does, once (terminated_once), where it has its default
    (ignored on purpose or set outside Python, it stays so). The handler replaced, by signal."""
    if signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        return {}
    return {signal.SIGTERM: signal.signal(signal.SIGTERM, terminated_once)}


def terminated_once(signum, frame):
    """SIGTERM as Ctrl-C, once: a second one kills the process as by default (timeout -k), should
    the first be held up where no Python runs."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    HELD.interrupt(signum, frame)


def world():
    """This process's World, made at the first call: Solo unless an MPI launcher started more
    than one process. A CharrnnError if it did but mpi4py cannot join them."""
    global _world
    if _world is None:
        env = launched()
        _world = Solo() if env is None or env[0] <= 1 else Mpi(*env)
    return _world


class Solo:
    """One process: nothing to share, nothing to agree."""

    size, rank = 1, 0
    node_size = 1  # processes of the job on this machine
    stopped_together = False  # every rank is ending at the same update, as they agreed (stop_together)
    threads_failure = None  # why numba could not start its threads as the ranks joined (Mpi)

    @property
    def root(self):
        """Whether this is rank 0, which speaks and writes for the job."""
        return self.rank == 0

    def rows(self, batch, resumed=False):
        """The streams of a batch of `batch` this rank reads (all, in one process); a UsageError
        if the ranks cannot share them equally. resumed: the batch is a saved run's, which a
        resume cannot change."""
        if batch % self.size:
            valid = ", ".join(str(r) for r in range(1, batch + 1) if batch % r == 0)
            if resumed:
                raise UsageError(f"this run's batch, {counted(batch, 'stream')} in all, cannot be split over {self.size} "
                                 f"processes; resume it with a number that divides it ({valid})")
            raise UsageError(f"--batch {batch} (the total over all processes) cannot be split over {self.size} "
                             f"processes; launch a number that divides it ({valid}) or give a --batch that "
                             f"{self.size} divides")
        return share(batch, self.rank, self.size)

    def node_shared(self, make):
        """(array, extra, why_not) from make() -> (array, extra), run by one rank per machine: the
        array in memory that the machine's ranks share, read-only (the text of a run, read once
        a machine instead of once a rank), `extra` picklable. `why_not`, if this process holds a
        copy of its own after all (it ran make() itself), says so and why; None otherwise. Alone
        on a machine, a process has nothing to share: make()'s own array."""
        array, extra = make()
        return array, extra, None

    def bcast(self, array):
        """Give every rank rank 0's values of `array` (in place)."""

    def sum(self, array):
        """Sum `array` over the ranks, in place."""

    def sum_float(self, x):
        return x

    def agree(self, elapsed, stop):
        """(rank 0's clock, whether any rank was asked to stop)."""
        return elapsed, stop

    def from_root(self, value):
        """Rank 0's `value` (a picklable object)."""
        return value

    def every(self, value):
        """Every rank's `value` (a picklable object), in rank order, on every rank."""
        return [value]

    def gather_rows(self, arrays):
        """{name: array with the streams on axis 1}: every rank's rows, in rank order, on rank 0;
        None on the other ranks."""
        return arrays

    def unmute(self):
        """Before printing an error: let this rank be heard."""

    def stop_together(self):
        """Every rank stops at this update, as they agreed (a stop signal; Trainer.run): the job
        can end as MPI programs do, each rank finalizing and exiting with the same code, instead
        of by an abort."""
        self.stopped_together = True

    def dump_params(self, params):
        pass


class Mpi(Solo):
    """R processes started by an MPI launcher, joined through mpi4py's COMM_WORLD."""

    def __init__(self, size, rank):
        try:
            import mpi4py
        except ImportError:
            raise _cannot_start(rank, f"an MPI launcher started this as one of {size} processes, but mpi4py is not "
                                      f"installed; install it with pip install 'charrnn[mpi]' (or your cluster's "
                                      f"mpi4py module)") from None
        # MPI starts below, once the launcher is known to be of mpi4py's MPI: under another's,
        # MPI_Init can end the process before a word is said (MPICH's, under Open MPI's mpiexec).
        # A program that imported mpi4py.MPI itself has chosen how it starts: left as it is.
        if "mpi4py.MPI" not in sys.modules:
            mpi4py.rc.initialize = False
        with warnings.catch_warnings():  # mpi4py's own, about the same mismatch
            warnings.filterwarnings("ignore", "suspicious MPI execution environment", RuntimeWarning)
            try:
                from mpi4py import MPI
            except (ImportError, RuntimeError) as e:  # RuntimeError: mpi4py 4 finds no MPI library it can load
                raise _cannot_start(rank, _no_library(e)) from None

            vendor = MPI.get_vendor()[0]
            version = MPI.Get_library_version()
            # its first line, spaces collapsed ("MPICH Version: 5.0.2"); Open MPI's ends in a NUL
            library = " ".join((version.strip("\0 \n").splitlines() or [vendor])[0].split())
            if launcher_of_another_mpi(os.environ, vendor, version):
                raise _cannot_start(rank, _another_mpi(size, library))
            _interrupt_for_test(rank, "before")
            if not MPI.Is_initialized():
                _start(MPI, mpi4py.rc, rank)
            _interrupt_for_test(rank, "after")
        comm = MPI.COMM_WORLD
        if comm.Get_size() != size:
            raise _alone(rank, _another_mpi(size, library, comm.Get_size()))
        # Open MPI's mpiexec reports an MPI_Abort in 15 lines of its own; a rank that exits with
        # an error it reports in 7, and ends the others. (srun, by default, would not end them.)
        self.exit_to_abort = vendor == "Open MPI" and "OMPI_COMM_WORLD_SIZE" in os.environ
        self.MPI, self.comm = MPI, comm
        self.size, self.rank = comm.Get_size(), comm.Get_rank()
        self.reduce_seconds = 0.0  # time spent in the gradient all-reduce (benchmarks read it)
        self.reductions = 0
        self._fail_at = int(os.environ.get(FAIL_AT, "0")) if os.environ.get(FAIL_RANK) == str(self.rank) else 0
        self._stderr = None
        self._waited = False
        if not self.root:  # quiet: rank 0 speaks for the job
            _flushed(sys.stdout, sys.stderr)
            try:
                self._stderr = os.dup(2)
            except OSError:  # started with stderr closed (2>&-): nothing to be heard through
                self._stderr = None
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.dup2(null, 2)
            os.close(null)
            # started with them closed (>&-, 2>&-), Python has no stdout or stderr: now writes go nowhere
            sys.stdout = sys.stdout or open(1, "w", closefd=False)
            sys.stderr = sys.stderr or open(2, "w", closefd=False)
        self.node = comm.Split_type(MPI.COMM_TYPE_SHARED)  # the ranks on this machine
        # The split is collective: every rank has finished MPI_Init, which maps MPICH's segments,
        # so their names can go now rather than at MPI_Finalize, which a job ended by an abort, a
        # kill or its launcher's end (mpiexec | head: SIGPIPE) never reaches.
        unlink_mapped_segments()
        self.node_size = self.node.Get_size()
        try:
            _set_threads(self.node)
        except Exception as e:  # numba that cannot start its threads: said by cli.main, which can end the job
            self.threads_failure = e

    def node_shared(self, make):
        # The machine's first rank runs make() while the others wait in a broadcast for one of:
        #   ("shared", path, identity, dtype, shape, extra)
        #                                           map the file at path (the first rank's open
        #                                           memfd, whose (device, inode) is identity),
        #                                           then meet, after which it closes it
        #   ("private", why)                        it could not be shared: run make() too
        #   ("failed", message, interrupted)        raise what the first rank raised (Ctrl-C
        #                                           included, which reaches the waiting ranks
        #                                           only after it)
        if self.node_size == 1 or not hasattr(os, "memfd_create"):
            return Solo.node_shared(self, make)
        node = self.node
        if node.Get_rank() != 0:
            kind, *rest = node.bcast(None, root=0)
            if kind == "failed":
                message, interrupted = rest
                if interrupted:
                    raise KeyboardInterrupt
                raise CharrnnError(message)
            if kind == "private":
                array, extra = make()
                return array, extra, rest[0]
            path, identity, dtype, shape, extra = rest
            try:
                with open(path, "rb") as f:
                    found = os.fstat(f.fileno())
                    if (found.st_dev, found.st_ino) != tuple(identity):  # another /proc's fd
                        raise OSError("not the first rank's file (another process namespace)")
                    return _map(f.fileno(), dtype, shape), extra, None
            except OSError as e:  # not this process's to open: a copy of its own then
                why = f"this process holds its own copy ({path}: {e.strerror or e})"
            finally:
                node.Barrier()  # every rank has mapped it: the first rank may close it
            array, extra = make()
            return array, extra, why
        said = False
        try:
            array, extra = make()
            try:
                fd = _write_shared(array)
            except OSError as e:
                why = (f"each of the {self.node_size} processes on this machine holds its own copy (a memory file "
                       f"of {array.nbytes:,} bytes: {e.strerror or e})")
                node.bcast(("private", why), root=0)
                said = True
                return array, extra, why
            try:
                shared = _map(fd, array.dtype.str, array.shape)
                found = os.fstat(fd)
                node.bcast(("shared", f"/proc/{os.getpid()}/fd/{fd}", (found.st_dev, found.st_ino), array.dtype.str,
                            array.shape, extra), root=0)
                said = True
                node.Barrier()
            finally:
                os.close(fd)
            return shared, extra, None
        except BaseException as e:
            if not said:
                message = str(e) if isinstance(e, CharrnnError) else f"{type(e).__name__} {e}".strip()
                node.bcast(("failed", message, isinstance(e, KeyboardInterrupt)), root=0)
            raise

    def bcast(self, array):
        self.comm.Bcast(array, root=0)

    def sum(self, array):
        self.reductions += 1
        if self.reductions == self._fail_at:
            raise CharrnnError(f"failure injected by {FAIL_RANK} on rank {self.rank} at update {self._fail_at}")
        t0 = time.perf_counter()
        self.comm.Allreduce(self.MPI.IN_PLACE, array, op=self.MPI.SUM)
        self.reduce_seconds += time.perf_counter() - t0

    def sum_float(self, x):
        return self.comm.allreduce(float(x), op=self.MPI.SUM)

    def agree(self, elapsed, stop):
        import numpy as np

        both = np.array([elapsed if self.root else 0.0, 1.0 if stop else 0.0])
        self.comm.Allreduce(self.MPI.IN_PLACE, both, op=self.MPI.SUM)
        return float(both[0]), bool(both[1] > 0)

    def from_root(self, value):
        return self.comm.bcast(value, root=0)

    def every(self, value):
        return self.comm.allgather(value)

    def gather_rows(self, arrays):
        import numpy as np

        every = self.comm.gather(arrays, root=0)
        if not self.root:
            return None
        return {name: np.concatenate([a[name] for a in every], axis=1) for name in arrays}

    def unmute(self):
        if self._stderr is not None:
            self._yield_to_root()
            _flushed(sys.stderr)
            os.dup2(self._stderr, 2)

    def abort(self, code):
        """End every rank of the job now, with exit code `code`, without MPI's own report (the
        error has been said in one line)."""
        HELD.ignore()  # a second Ctrl-C must not cut the waits below short
        if not self.root:
            self._yield_to_root()
        _flushed(sys.stdout, sys.stderr)
        time.sleep(FORWARD_WAIT)
        if self.exit_to_abort:
            os._exit(code)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        self.comm.Abort(code)

    def dump_params(self, params):
        prefix = os.environ.get(DUMP_PARAMS)
        if prefix:
            import numpy as np

            np.save(f"{prefix}.rank{self.rank}.npy", params)


    def _yield_to_root(self):
        if not self._waited:
            self._waited = True
            time.sleep(QUIET_WAIT)


def _interrupt_for_test(rank, when):
    if os.environ.get(INTERRUPT) == f"{rank} {when}":
        os.kill(os.getpid(), signal.SIGINT)


def _flushed(*streams):
    """Flush what is buffered for each stream that is there: one that is closed (>&-: None) or
    cannot be written (a full disk) must not keep a rank from muting itself or from ending
    the job, which would leave the others waiting for ever."""
    for stream in streams:
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass


# MPICH's shared-memory segments in /dev/shm, which stay linked until MPI_Finalize: its own, and
# one more for its virtual communication interfaces where it runs several (MPIR_CVAR_CH4_NUM_VCIS)
SEGMENT_PREFIXES = ("/dev/shm/mpich_shm_", "/dev/shm/mpich_vci_")


def unlink_mapped_segments(maps="/proc/self/maps"):
    """Remove the names of the MPI segments this process maps (SEGMENT_PREFIXES), once every rank
    has started (Mpi): a job that never reaches MPI_Finalize, which would remove them (an
    abort, a kill, its launcher's end), left them in /dev/shm (MPICH 5: one a machine, about
    1 MB for each of its ranks), held in memory until someone removed them. A mapping outlives
    its file's name, so the ranks run on undisturbed, and the last process to unmap frees the
    memory. Where there is no such file to read (not Linux), nothing."""
    try:
        with open(maps) as f:  # a line: address, permissions, offset, device, inode, path
            paths = {line.split(None, 5)[5].rstrip("\n") for line in f if any(p in line for p in SEGMENT_PREFIXES)}
    except OSError:
        return
    for path in paths:
        if path.startswith(SEGMENT_PREFIXES) and not path.endswith(" (deleted)"):
            try:
                os.unlink(path)
            except OSError:  # another rank of the job removed it first, or it is not ours to remove
                pass


class Refused(CharrnnError):
    """A rank's refusal, raised on every rank (refuse_together): its line names that rank,
    whichever rank says it."""

    def __init__(self, message, rank):
        super().__init__(message)
        self.rank = rank


def refuse_together(refusal):
    """Raise Refused on every rank if any rank has a refusal (a str; None where its check
    passed), the first such rank's: no rank goes on into the run (rank 0 would make its folder)
    while the refusing one waits to end the job. Rank 0 says it, and its abort ends the job;
    the others yield to it (Mpi.unmute). A collective: every rank calls it at the same point."""
    refusals = world().every(refusal)
    first = next((r for r, said in enumerate(refusals) if said), None)
    if first is not None:
        raise Refused(refusals[first], first)


def error_prefix(rank=None):
    """'rank R: ' before an error said by a rank other than 0, after letting it be heard; with
    `rank`, the rank it is about (Refused), whichever rank says it."""
    w = _world
    if w is None:
        return ""
    if not w.root:
        w.unmute()
    about = w.rank if rank is None else rank
    return f"rank {about}: " if about else ""


# mpi4py's names (MPI.get_vendor) of the MPIs of MPICH's family, which speak PMI-1/2 to their
# launcher, and PMIx only if built for it
MPICH_FAMILY = ("MPICH", "Intel MPI", "MVAPICH", "MVAPICH2", "Cray MPICH", "Microsoft MPI")


def launcher_of_another_mpi(environ, vendor, version) -> bool:
    """Whether the launcher that started this process, as its variables in `environ` tell, is
    of another MPI than mpi4py's (`vendor`, MPI.get_vendor()'s name; `version`, its
    Get_library_version()), where that is certain before MPI starts: Open MPI's mpiexec (the
    only one to set OMPI_COMM_WORLD_SIZE), whose processes meet through PMIx, with an MPI of
    MPICH's family not configured for PMIx; or MPICH's or Intel MPI's hydra (HYDI_CONTROL_FD)
    with Open MPI, which cannot join its processes. Any other mismatch shows after MPI starts,
    as a world of one."""
    if "OMPI_COMM_WORLD_SIZE" in environ:
        return vendor in MPICH_FAMILY and "pmix" not in version.lower()
    if "HYDI_CONTROL_FD" in environ:
        return vendor == "Open MPI"
    return False


def _start(MPI, rc, rank):
    """Start MPI as mpi4py would have at its import: MPI_Init_thread with the thread support its
    rc asks for (or the variables MPI4PY_RC_THREADS and MPI4PY_RC_THREAD_LEVEL), and
    MPI_Finalize at exit."""
    import atexit

    threads = os.environ.get("MPI4PY_RC_THREADS", str(rc.threads)).strip().lower()
    level = os.environ.get("MPI4PY_RC_THREAD_LEVEL", rc.thread_level).strip().lower()
    levels = {"single": MPI.THREAD_SINGLE, "funneled": MPI.THREAD_FUNNELED, "serialized": MPI.THREAD_SERIALIZED,
              "multiple": MPI.THREAD_MULTIPLE}
    if threads in ("0", "false", "no", "off", "n"):
        MPI.Init()
    else:
        MPI.Init_thread(levels.get(level, MPI.THREAD_MULTIPLE))
    atexit.register(lambda: _interrupt_for_test(rank, "exit") or MPI.Is_finalized() or MPI.Finalize())


def _another_mpi(size, library, seen=None):
    """What a process says when its launcher is of another MPI than mpi4py's `library`: known
    before MPI starts, or found after it, when MPI sees `seen` processes instead of `size`."""
    if seen is None:
        what = f"this is one of {size} processes started by the launcher of another MPI than mpi4py's ({library})"
    else:
        what = (f"the MPI launcher started {size} processes but mpi4py's MPI ({library}) sees {seen}: the "
                f"launcher belongs to another MPI")
    return f"{what}; launch with the mpiexec of the MPI mpi4py was built with, or build mpi4py against the cluster's MPI"


def _alone(rank, message):
    """The CharrnnError a process that cannot join the others raises: each of them is alone and
    would say it, so only the one the launcher calls rank 0 does; the others exit quietly."""
    if rank != 0:
        sys.stderr = open(os.devnull, "w")
    return CharrnnError(message)


def _cannot_start(rank, message):
    """The CharrnnError of a process that cannot start MPI (no mpi4py, no MPI library, another
    MPI's launcher) where the others may well have started it: they wait in MPI_Init for this
    one, and MPICH's launcher (hydra) ends the job for a process that exits only once that
    process has spoken to it (_known_to_hydra). So each such process says why, rank 0 first:
    any other waits for it (QUIET_WAIT), and if rank 0 cannot start either, its exit ends the
    others before they repeat the line."""
    if rank != 0:
        time.sleep(QUIET_WAIT)
        message = f"rank {rank}: {message}"
    _known_to_hydra()
    return CharrnnError(message)


def _known_to_hydra():
    """Greet hydra, the launcher of MPICH and Intel MPI, in its PMI protocol over the connection
    it gave this process (PMI_FD), as MPI_Init would: it then ends the whole job when this
    process exits, with this process's exit code. Under any other launcher nothing: Open MPI's
    mpiexec ends a job one of whose processes exits with an error, and srun does with
    --kill-on-bad-exit."""
    import select

    fd = os.environ.get("PMI_FD", "")
    if "HYDI_CONTROL_FD" not in os.environ or not fd.isdigit():
        return
    try:
        fd = int(fd)
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):  # a variable this process inherited, not hydra's connection
            return
        os.write(fd, b"cmd=init pmi_version=1 pmi_subversion=1\n")
        if select.select([fd], [], [], 10)[0]:  # its answer: the greeting was taken
            os.read(fd, 4096)
    except OSError:  # no hydra at the other end after all: this process's exit is all there is
        pass


def _no_library(e):
    """What a process says when mpi4py cannot load an MPI library (e: its error, whose first
    line says just that, the others why)."""
    why = "; ".join(str(e).splitlines()[1:]) or str(e)
    hint = ("MPI4PY_LIBMPI names the library it loads" if os.environ.get("MPI4PY_LIBMPI") else
            "install one with pip install mpich (or load your cluster's MPI module)")
    return f"mpi4py cannot load an MPI library ({why}); {hint}"


def _set_threads(node):
    """numba threads per rank: NUMBA_NUM_THREADS if the user set it, else the cores this rank
    has. A rank the launcher bound to its own cores has them all; ranks on one node (the
    communicator of this machine's ranks) that share the same cores split them."""
    if "NUMBA_NUM_THREADS" in os.environ:
        return
    mine = frozenset(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else frozenset(range(os.cpu_count() or 1))
    sharing = sum(other == mine for other in node.allgather(mine))
    threads = max(1, len(mine) // sharing)
    if "numba" in sys.modules:  # too late for the variable: numba has started
        import numba

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    else:
        os.environ["NUMBA_NUM_THREADS"] = str(threads)


def _write_shared(array):
    """An open anonymous file in memory (memfd) holding the bytes of `array`; an OSError if
    there is no room for it."""
    import numpy as np

    fd = os.memfd_create(SHARED_NAME, os.MFD_CLOEXEC)
    try:
        with open(fd, "wb", closefd=False) as f:
            f.write(memoryview(np.ascontiguousarray(array)).cast("B"))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _map(fd, dtype, shape):
    """The array of `shape` and `dtype` in the open file `fd`, mapped read-only: every process
    that maps the file reads the same pages."""
    import mmap

    import numpy as np

    dtype = np.dtype(dtype)
    size = dtype.itemsize * int(np.prod(shape))
    if size == 0:
        array = np.empty(shape, dtype)
        array.flags.writeable = False
        return array
    return np.frombuffer(mmap.mmap(fd, size, access=mmap.ACCESS_READ), dtype).reshape(shape)
