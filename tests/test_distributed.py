"""Training over MPI (charrnn/distributed.py): `mpiexec -n 2` trains the model one process
trains, at the same total batch; checkpoints resume with any number of ranks that divides their
batch; SIGTERM, a failing rank and a refused launch end every rank with one line. Each launch is a real mpiexec of
`python -m charrnn train`, on this machine, over shared memory or TCP on loopback."""
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from charrnn import distributed
from charrnn.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parent.parent


def _mpiexec():
    """The mpiexec beside this Python (the MPICH wheel puts it there), else the one on PATH."""
    from importlib.util import find_spec

    if find_spec("mpi4py") is None:
        return None
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else shutil.which("mpiexec")


MPIEXEC = _mpiexec()
needs_mpi = pytest.mark.skipif(MPIEXEC is None, reason="needs mpi4py and its mpiexec: pip install -e '.[mpi]'")


def _open_mpi():
    """Whether MPIEXEC is Open MPI's (the tests run under MPICH's too, the one pyproject installs)."""
    if MPIEXEC is None:
        return False
    r = subprocess.run([MPIEXEC, "--version"], capture_output=True, text=True, timeout=60)
    return "Open MPI" in r.stdout + r.stderr


OPEN_MPI = _open_mpi()
# Open MPI's mpiexec: as many ranks as asked on a small machine (and so, not bound to a core
# each, as it binds 2 ranks or fewer otherwise), and as root in a container
LAUNCH = ["--oversubscribe"] if OPEN_MPI else []
LAUNCH_ENV = ({"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
              if OPEN_MPI and hasattr(os, "geteuid") and os.geteuid() == 0 else {})
# over the network module, TCP on the loopback interface, instead of shared memory
TCP = ({"OMPI_MCA_pml": "ob1", "OMPI_MCA_btl": "tcp,self", "OMPI_MCA_btl_tcp_if_include": "lo"} if OPEN_MPI else
       {"MPIR_CVAR_NOLOCAL": "1", "MPIR_CVAR_CH4_NETMOD": "ofi", "FI_PROVIDER": "tcp", "FI_TCP_IFACE": "lo"})
# the variable holding a process's rank, as the launcher sets it
RANK_VARIABLE = "OMPI_COMM_WORLD_RANK" if OPEN_MPI else "PMI_RANK"


def mpi_vendor():
    """The name of mpi4py's MPI ("MPICH", "Open MPI"), asked in a process of its own, where it
    is not started."""
    probe = "import mpi4py; mpi4py.rc.initialize = False; from mpi4py import MPI; print(MPI.get_vendor()[0])"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                          timeout=60).stdout.strip()

# ~1200 characters: 960 of training text are 48 updates of 4 streams x 5 steps, so 60 updates
# cross an epoch
TEXT = "".join(f"{w} the {i % 7} quick brown fox jumps over {i % 13} lazy dogs.\n"
               for i, w in enumerate(["Alas", "Lo", "Hark", "Sing", "Now", "Hence"] * 4))
# LSTM, two layers, k2 > k1 (a kept window), dropout on (each rank draws its rows' masks), fresh
# starts every 7 updates; the learning rate falls by step, so a run stopped at 30 and resumed
# follows the straight run
MODEL = ["--cell", "lstm", "--layers", "2", "--hidden", "16", "--batch", "4", "--k1", "5", "--k2", "9", "--reset-every", "7",
         "--dropout", "0.3", "--lr", "0.01", "--schedule", "step", "--decay-every", "10", "--lr-decay", "0.8",
         "--val-fraction", "0.1", "--test-fraction", "0.1", "--eval-every", "20", "--checkpoint-every", "30",
         "--time-limit", "0", "--seed", "3", "-q"]
STEPS = 60


def launch(ranks, corpus, run_dir, *args, env=(), wait=True, model=MODEL):
    """`charrnn train` in `ranks` processes (1: no launcher at all), into run_dir."""
    cmd = [sys.executable, "-m", "charrnn", "train", str(corpus), *model, "--out-dir", str(run_dir.parent),
           "--run", run_dir.name, *map(str, args)]
    if ranks > 1:
        cmd = [MPIEXEC, *LAUNCH, "-n", str(ranks), *cmd]
    full_env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="300", **LAUNCH_ENV, **dict(env))
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env)
    return subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=240)


def ok(r):
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    return r


def resume(ranks, run_dir, steps, env=()):
    cmd = [sys.executable, "-m", "charrnn", "train", "--resume", str(run_dir), "--max-steps", str(steps), "-q"]
    if ranks > 1:
        cmd = [MPIEXEC, *LAUNCH, "-n", str(ranks), *cmd]
    return ok(subprocess.run(cmd, capture_output=True, text=True, timeout=240,
                             env=dict(os.environ, PYTHONPATH=str(ROOT), **LAUNCH_ENV, **dict(env))))


def records(run_dir, kind):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def assert_same_run(run_dir, straight):
    """The checkpoint in run_dir holds what the one-process run saved, to float32 rounding:
    the model, Adam's moments, the kept window of every stream, and where the text is. Each
    array to 1e-4 of its largest element: sums taken in another order differ in the last bits,
    and 60 updates grow that to some 1e-6 (a gradient off by a factor, or another stream's
    rows, is off by far more); the ids and dropout masks exactly."""
    arrays, meta = load_checkpoint(run_dir / "latest.npz")
    want, want_meta = load_checkpoint(straight / "latest.npz")
    assert meta["step"] == want_meta["step"] == STEPS and meta["streams"] == want_meta["streams"]
    assert meta["rng"] == want_meta["rng"]  # the same dropout draws, however many ranks drew them
    assert arrays.keys() == want.keys()
    for name in want:
        np.testing.assert_allclose(arrays[name], want[name], rtol=0, atol=1e-4 * np.abs(want[name]).max(),
                                   err_msg=name)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def straight(corpus, tmp_path_factory):
    """The run in one process: 60 updates, no MPI."""
    run_dir = tmp_path_factory.mktemp("one") / "r"
    ok(launch(1, corpus, run_dir, "--max-steps", STEPS))
    return run_dir


def test_a_plain_run_never_imports_mpi4py(corpus, tmp_path):
    probe = (f"import sys; from charrnn.cli import main; sys.argv = ['charrnn', 'train', {str(corpus)!r}, "
             f"'--hidden', '4', '--layers', '1', '--batch', '2', '--max-steps', '1', '--time-limit', '0', "
             f"'--out-dir', {str(tmp_path)!r}, '--run', 'r', '-q']\n"
             "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
             "print('mpi4py' in sys.modules)")
    r = ok(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=240,
                          env=dict(os.environ, PYTHONPATH=str(ROOT))))
    assert r.stdout.splitlines()[-1] == "False" and (tmp_path / "r" / "latest.npz").is_file()


@needs_mpi
def test_two_ranks_train_what_one_process_trains(corpus, straight, tmp_path):
    run_dir = tmp_path / "r"
    dump = tmp_path / "params"
    ok(launch(2, corpus, run_dir, "--max-steps", STEPS, env={"CHARRNN_TEST_DUMP_PARAMS": str(dump)}))
    assert_same_run(run_dir, straight)
    # every rank comes to the last update's saves with the same model, bit for bit, computed on
    # its own since the update of the save before (the first save of an update gives every rank
    # rank 0's), and rank 0 saved it
    rank0, rank1 = np.load(f"{dump}.rank0.npy"), np.load(f"{dump}.rank1.npy")
    np.testing.assert_array_equal(rank0, rank1)
    np.testing.assert_array_equal(rank0, load_checkpoint(run_dir / "latest.npz")[0]["params"])
    # the same losses and gradient norms on the way (a gradient summed but not scaled for the
    # whole batch would show here, even where Adam's steps hide it); validation and test too
    for kind, fields in (("train", ("loss", "grad_norm", "epoch", "lr")), ("val", ("loss",)), ("test", ("loss",))):
        got, want = records(run_dir, kind), records(straight, kind)
        assert [r["step"] for r in got] == [r["step"] for r in want] and want
        for name in fields:
            np.testing.assert_allclose([r[name] for r in got], [r[name] for r in want], rtol=1e-5, err_msg=name)
    assert records(run_dir, "train")[-1]["epoch"] > 1  # the text wrapped: the hidden state was reset


@needs_mpi
def test_a_time_limit_stops_every_rank_on_the_same_update(corpus, tmp_path):
    # the linear schedule reads the clock, and rank 0 alone spends time on samples: ranks that
    # each read their own clock would take other steps, and stop on other updates
    run_dir, dump = tmp_path / "r", tmp_path / "params"
    linear = [a for i, a in enumerate(MODEL) if a not in ("--decay-every", "--lr-decay")
              and MODEL[i - 1] not in ("--decay-every", "--lr-decay")]  # the step schedule's settings left out
    ok(launch(2, corpus, run_dir, "--time-limit", "2", "--schedule", "linear", "--sample-every", "7",
              "--sample-length", "20", env={"CHARRNN_TEST_DUMP_PARAMS": str(dump)}, model=linear))
    np.testing.assert_array_equal(np.load(f"{dump}.rank0.npy"), np.load(f"{dump}.rank1.npy"))
    arrays, meta = load_checkpoint(run_dir / "latest.npz")
    np.testing.assert_array_equal(arrays["params"], np.load(f"{dump}.rank0.npy"))
    assert meta["elapsed"] >= 2 and meta["step"] > 0


@needs_mpi
def test_a_run_of_two_ranks_resumes_in_one_process(corpus, straight, tmp_path):
    run_dir = tmp_path / "r"
    ok(launch(2, corpus, run_dir, "--max-steps", STEPS // 2))
    r = resume(1, run_dir, STEPS)
    assert_same_run(run_dir, straight)  # to float32 rounding, not bit for bit, as the resume says
    assert "note: this run was saved on 2 processes of " in r.stderr and "not bit for bit" in r.stderr, r.stderr


@needs_mpi
def test_a_run_of_one_process_resumes_on_two_ranks_over_tcp(corpus, straight, tmp_path):
    run_dir = tmp_path / "r"
    ok(launch(1, corpus, run_dir, "--max-steps", STEPS // 2))
    r = resume(2, run_dir, STEPS, env=TCP)
    assert_same_run(run_dir, straight)
    assert "resumes on 2 processes of " in r.stderr and "; one process with NUMBA_NUM_THREADS=" in r.stderr, r.stderr


def _rank_pid(marker, rank):
    """The pid of rank `rank` of the job whose command line holds `marker`."""
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if (marker.encode() in cmdline and b"mpiexec" not in cmdline
                and f"{RANK_VARIABLE}={rank}".encode() in environ):
            return int(entry.name)
    return None


def stop_training(corpus, run_dir, send, env=()):
    """Start a 2-rank job that would train for long, call send(job) once it has logged an
    update, and return its exit code, stderr, and the update its last line says it saved."""
    job = launch(2, corpus, run_dir, "--max-steps", 100000, wait=False, env=env)
    try:
        deadline = time.time() + 120
        while not records_exist(run_dir) and job.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        send(job)
        _, stderr = job.communicate(timeout=60)
    finally:
        job.kill()
    line = (charrnn_lines(stderr) or [""])[-1]
    saved = "interrupted at update " in line and f"saved {run_dir / 'latest.npz'}" in line
    return job.returncode, stderr, int(line.split("interrupted at update ")[1].split(";")[0]) if saved else None


@needs_mpi
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's process in /proc")
def test_sigterm_to_one_rank_saves_and_stops_every_rank(corpus, tmp_path):
    run_dir = tmp_path / "r"

    def to_rank_1(job):
        pid = _rank_pid(str(tmp_path), 1)
        assert pid is not None, "rank 1 not found"
        os.kill(pid, signal.SIGTERM)  # rank 0 was not told: it stops because rank 1 asks

    code, stderr, step = stop_training(corpus, run_dir, to_rank_1)
    assert code == 130 and step is not None and "Traceback" not in stderr, stderr
    assert load_checkpoint(run_dir / "latest.npz")[1]["step"] == step > 0
    gone = time.time() + 10  # the launcher has returned; its ranks are ending, or have
    while any(_rank_pid(str(tmp_path), r) for r in (0, 1)) and time.time() < gone:
        time.sleep(0.1)
    assert _rank_pid(str(tmp_path), 0) is None and _rank_pid(str(tmp_path), 1) is None
    resume(2, run_dir, step + 2)  # and it goes on from there
    assert load_checkpoint(run_dir / "latest.npz")[1]["step"] == step + 2


@needs_mpi
@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="no SIGUSR1 on this system")
def test_sigusr1_to_the_launcher_saves_and_stops_every_rank(corpus, tmp_path):
    # the way to stop a job under Open MPI's mpiexec, which kills the ranks itself after SIGINT
    # or SIGTERM; MPICH's passes SIGUSR1 on too
    run_dir = tmp_path / "r"
    before = shared_memory()
    code, stderr, step = stop_training(corpus, run_dir, lambda job: job.send_signal(signal.SIGUSR1))
    assert code == 130 and step is not None and len(charrnn_lines(stderr)) == 1, stderr
    assert load_checkpoint(run_dir / "latest.npz")[1]["step"] == step > 0
    # the ranks, stopping together, end as MPI programs do: an abort would have left MPICH's
    # shared memory (a few MB a job) in /dev/shm
    assert shared_memory() - before == set()


@pytest.fixture
def aborted_jobs_leave_no_shared_memory():
    """The test's jobs, aborted or killed, leave none of MPI's shared memory in /dev/shm (they
    skip MPI_Finalize, which would remove it: distributed.unlink_mapped_segments); what they
    leave is removed, and fails the test."""
    before = shared_memory()
    yield
    left = shared_memory() - before
    for name in left:
        Path("/dev/shm", name).unlink(missing_ok=True)
    assert not left


def shared_memory():
    """The names of MPI's shared-memory segments in /dev/shm (MPICH's, Open MPI's)."""
    shm = Path("/dev/shm")
    names = ("mpich_shm_", "mpich_vci_", "sm_segment")
    return {p.name for p in shm.iterdir() if p.name.startswith(names)} if shm.is_dir() else set()


@needs_mpi
@pytest.mark.skipif(OPEN_MPI, reason="MPICH's segments: Open MPI names its own")
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's process in /proc")
@pytest.mark.parametrize("vcis", [None, "2"])
def test_a_job_killed_as_it_trains_leaves_no_shared_memory(corpus, tmp_path, aborted_jobs_leave_no_shared_memory,
                                                           vcis):
    # MPICH's segments stayed in /dev/shm until MPI_Finalize, which a job killed, or ended with
    # its launcher (mpiexec | head: SIGPIPE), never reaches: a few MB of memory a job, held
    # until someone removed them. Their names now go once every rank has started: each rank
    # still maps them, under no name. (With several virtual interfaces, MPICH maps one more.)
    def kill_both(job):
        pids = [_rank_pid(str(tmp_path), rank) for rank in (0, 1)]
        assert None not in pids, pids
        mapped = [line for pid in pids for line in Path(f"/proc/{pid}/maps").read_text().splitlines()
                  if any(prefix in line for prefix in distributed.SEGMENT_PREFIXES)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):  # (mpiexec may have ended it already)
                os.kill(pid, signal.SIGKILL)
        if not mapped:
            pytest.skip("this MPI maps no segment of MPICH 5's names")
        assert all(line.endswith(" (deleted)") for line in mapped), mapped

    code, _, _ = stop_training(corpus, tmp_path / "r", kill_both,
                               env={"MPIR_CVAR_CH4_NUM_VCIS": vcis} if vcis else {})
    assert code != 0


class _Ranks(distributed.Solo):
    """A world of three whose ranks' refusals are `refusals`, seen from rank `rank`."""

    size = 3

    def __init__(self, rank, refusals):
        self.rank, self.refusals = rank, refusals

    def every(self, value):
        return self.refusals


@pytest.mark.parametrize("rank", [0, 1, 2])
def test_a_refusal_is_raised_on_every_rank_and_names_the_rank_that_refused(monkeypatch, capsys, rank):
    # every rank raises the refusal of rank 2 (the first with one), and its line names rank 2
    # whichever rank says it: a rank that had none said "rank 1: rank 2: ..." (it names itself)
    from charrnn import cli

    monkeypatch.setattr(distributed, "_world", _Ranks(rank, [None, None, "its text is another"]))
    with pytest.raises(distributed.Refused) as raised:
        distributed.refuse_together("its text is another" if rank == 2 else None)
    assert (str(raised.value), raised.value.rank) == ("its text is another", 2)
    monkeypatch.setattr(cli, "err", cli._Console(stderr=True, width=300))
    cli._print_error(str(raised.value), raised.value.rank)
    assert capsys.readouterr().err == "error: rank 2: its text is another\n"
    monkeypatch.setattr(distributed, "_world", _Ranks(rank, [None, None, None]))
    distributed.refuse_together(None)  # none refused: nothing raised


class _RankOne(distributed.Solo):
    """Rank 1 of two, whose rank 0 has `rank_0`'s values where they differ from this rank's."""

    size, rank = 2, 1

    def __init__(self, rank_0):
        self.rank_0 = rank_0

    def from_root(self, value):
        return {**value, **self.rank_0}


def test_a_rank_whose_text_is_another_of_the_same_length_and_characters_is_stopped(monkeypatch):
    # two machines, each with its copy of the text at one path: copies of the same length and
    # characters but another text trained in silence on a mix of the two (its digest was kept)
    from charrnn.config import TrainConfig
    from charrnn.corpus import Vocab
    from charrnn.train import same_run_on_every_rank

    cfg, vocab = TrainConfig(corpus=["/data/t.txt"]), Vocab.from_text("ab")
    monkeypatch.setattr(distributed, "_world", _RankOne({"text": "0" * 64}))
    with pytest.raises(distributed.Refused, match=r"^this rank's run is not rank 0's: its text is another; launch every "
                                                  "rank with the same command line"):
        same_run_on_every_rank(cfg, vocab, "f" * 64)
    monkeypatch.setattr(distributed, "_world", _RankOne({}))
    same_run_on_every_rank(cfg, vocab, "f" * 64)  # the same text: nothing refused


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="Linux's /dev/shm")
def test_a_rank_removes_the_names_of_the_segments_it_maps(tmp_path):
    # a copy of /proc/self/maps naming MPICH's two kinds of segment, one already removed, and
    # other files
    segments = [Path(prefix + f"test_{os.getpid()}") for prefix in distributed.SEGMENT_PREFIXES]
    other = tmp_path / "mpich_shm_elsewhere"
    for path in (*segments, other):
        path.write_bytes(b"\0")
    maps = tmp_path / "maps"
    maps.write_text(f"7f5b425ee000-7f5b427f4000 rw-s 00000000 00:1b 5467   {segments[0]}\n"
                    f"7f5b42840000-7f5b42849000 rw-s 00000000 00:1b 5463   {segments[0]}gone (deleted)\n"
                    f"7f5b42849000-7f5b42c62000 rw-s 00000000 00:1b 5466   {other}\n"
                    f"7f5b42c62000-7f5b42c63000 rw-s 00000000 00:1b 5468   {segments[1]}\n"
                    "7ffd2a1f0000-7ffd2a211000 rw-p 00000000 00:00 0      [stack]\n")
    try:
        distributed.unlink_mapped_segments(str(maps))
        assert not any(segment.exists() for segment in segments) and other.exists()
        distributed.unlink_mapped_segments(str(maps))  # removed already: quietly nothing
        distributed.unlink_mapped_segments(str(tmp_path / "no such file"))
    finally:
        for segment in segments:
            segment.unlink(missing_ok=True)


def charrnn_lines(stderr):
    """The lines of stderr that charrnn wrote: all of them, but under Open MPI, whose mpiexec
    reports a rank that ended with an error in a block of its own after them, between lines
    of dashes (it has no option to leave that out)."""
    lines = stderr.strip().splitlines()
    if OPEN_MPI and "-" * 20 in stderr:
        lines = lines[: next(i for i, line in enumerate(lines) if line.startswith("-" * 20))]
    return lines


def records_exist(run_dir):
    path = run_dir / "metrics.jsonl"
    return path.exists() and path.stat().st_size > 0


# Rank 1 alone takes a stop at update 31 (latest.npz holds 30), then another: in that update,
# before the ranks agree to stop, or just after its part of the agreed save, while rank 0 takes
# two seconds over writing it.
SECOND_STOP_ON_RANK_1 = """
import os, signal, sys, time
from charrnn import cli, train
from charrnn.train import Trainer
WHEN = sys.argv.pop(1)
update, save, write = Trainer.update, Trainer.save, train.save_checkpoint
def stopped_on_rank_1(self):
    if self.world.rank == 1 and self.step == 31:
        os.kill(os.getpid(), signal.SIGUSR1)
        if WHEN == "in an update":
            os.kill(os.getpid(), signal.SIGUSR1)
    return update(self)
stopping = False
def written_slowly(*args, **kw):  # rank 0's write of the agreed save takes 2 s
    time.sleep(2 if stopping else 0)
    return write(*args, **kw)
def saved_then_stopped_again(self, name):
    global stopping
    stopping = self.stop_requested
    path = save(self, name)  # on rank 1, once its part is gathered: rank 0 is still writing
    if WHEN == "as the run saves" and self.stop_requested and self.world.rank == 1:
        os.kill(os.getpid(), signal.SIGUSR1)
    return path
Trainer.update, Trainer.save, train.save_checkpoint = stopped_on_rank_1, saved_then_stopped_again, written_slowly
sys.argv = ["charrnn", "train", *sys.argv[1:]]
cli.main()
"""


@needs_mpi
@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="no SIGUSR1 on this system")
@pytest.mark.parametrize("when", ["in an update", "as the run saves"])
def test_a_second_stop_on_a_rank_other_than_0_is_said(corpus, tmp_path, aborted_jobs_leave_no_shared_memory, when):
    # in an update: rank 1 stopped at once, muted, and its abort ended rank 0 waiting for it:
    # exit 130 and not a word. As the run saves: that abort cut off rank 0's save and line
    run_dir = tmp_path / "r"
    cmd = [MPIEXEC, *LAUNCH, "-n", "2", sys.executable, "-c", SECOND_STOP_ON_RANK_1, when, str(corpus), *MODEL,
           "--max-steps", "100", "--out-dir", str(tmp_path), "--run", "r"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240,
                       env=dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="300", **LAUNCH_ENV))
    if when == "in an update":
        assert r.returncode == 130 and charrnn_lines(r.stderr) == [
            f"rank 1: stopped at once after update 31, and so did every rank; {run_dir} holds the checkpoints rank "
            f"0 saved. Continue with: charrnn train --resume {run_dir}"], r.stderr
        assert load_checkpoint(run_dir / "latest.npz")[1]["step"] == 30
    else:
        assert r.returncode == 130 and charrnn_lines(r.stderr) == [
            f"interrupted at update 32; saved {run_dir / 'latest.npz'}. Continue with: charrnn train --resume "
            f"{run_dir}"], r.stderr
        assert load_checkpoint(run_dir / "latest.npz")[1]["step"] == 32


@needs_mpi
def test_a_failure_on_one_rank_ends_the_job_with_one_line(corpus, tmp_path, aborted_jobs_leave_no_shared_memory):
    t0 = time.time()
    job = launch(2, corpus, tmp_path / "r", "--max-steps", 100000, wait=False,
                 env={"CHARRNN_TEST_FAIL_RANK": "1", "CHARRNN_TEST_FAIL_AT": "3"})
    try:
        _, stderr = job.communicate(timeout=120)  # without the abort, rank 0 would wait for rank 1 forever
    finally:
        job.kill()
    assert job.returncode == 1, stderr
    lines = charrnn_lines(stderr)
    assert lines == ["error: rank 1: failure injected by CHARRNN_TEST_FAIL_RANK on rank 1 at update 3"], stderr
    # under Open MPI's mpiexec the rank exits rather than abort: its report of an MPI_Abort is
    # 15 lines and a NUL
    assert "MPI_ABORT" not in stderr and "\0" not in stderr, stderr
    print(f"failed job ended after {time.time() - t0:.1f} s, start-up included")


SAVE_CHECK_PROBE = """
import json, sys
import numpy as np
from pathlib import Path
from charrnn import distributed
from charrnn.config import TrainConfig
from charrnn.errors import CharrnnError
from charrnn.train import Trainer
corpus, run_dir, poisoned = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
cfg = TrainConfig(corpus=[corpus], hidden=8, batch=4, k1=8, k2=8, time_limit=0, eval_every=100, checkpoint_every=2,
                  max_steps=4, seed=7, optimizer="adagrad", out_dir=str(run_dir.parent), run=run_dir.name).validate()
world = distributed.world()
trainer = Trainer(cfg, run_dir, say=lambda *_: None)
step = trainer.opt.step

def overflowing_step(*args, **kwargs):
    step(*args, **kwargs)
    if trainer.step == 2 and world.rank == poisoned:  # the third update's, on one rank
        trainer.opt.moments()["v"][5] = np.inf

trainer.opt.step = overflowing_step
try:
    trainer.run()
    said = "finished"
except CharrnnError as e:
    said = str(e)
json.dump(said, open(run_dir.parent / f"rank{world.rank}.json", "w"))
"""


@needs_mpi
@pytest.mark.parametrize("poisoned", [0, 1])
def test_the_save_s_check_for_inf_stops_every_rank_or_none(corpus, tmp_path, poisoned):
    # a rank that found Inf in its own moments stopped while the others waited in the save's
    # gather: a hang. Rank 0's arrays are saved, and its word decides on every rank
    ok(subprocess.run([MPIEXEC, *LAUNCH, "-n", "2", sys.executable, "-c", SAVE_CHECK_PROBE, str(corpus),
                       str(tmp_path / "r"), str(poisoned)], capture_output=True, text=True,
                      env=dict(os.environ, PYTHONPATH=str(ROOT), **LAUNCH_ENV), timeout=120))
    said = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    if poisoned == 0:
        assert all(s.startswith("training diverged by update 4: the optimizer's v hold NaN or Inf") for s in said), said
    else:
        assert said == ["finished", "finished"]


def test_stops_are_held_only_under_a_launcher_and_only_until_let_go(monkeypatch):
    held = distributed.StopsHeld()
    before = signal.getsignal(signal.SIGINT)
    monkeypatch.setenv("PMI_SIZE", "2")
    held.hold()
    os.kill(os.getpid(), signal.SIGINT)  # noted, not raised
    time.sleep(0.01)
    assert held.let_go() is True and held.let_go() is False  # said once
    with pytest.raises(KeyboardInterrupt):  # once let go, at once
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
    held.restore()
    assert signal.getsignal(signal.SIGINT) is before
    monkeypatch.delenv("PMI_SIZE")
    held.hold()  # one process: nothing held, nothing noted from before
    assert signal.getsignal(signal.SIGINT) is before and held.let_go() is False


@needs_mpi
@pytest.mark.parametrize("when", ["1 before", "1 after", "0 before", "0 after"])
def test_a_rank_interrupted_as_mpi_starts_ends_the_job(corpus, tmp_path, aborted_jobs_leave_no_shared_memory, when):
    # Ctrl-C that reached one rank alone just before or after MPI_Init (the hook sends SIGINT
    # there): ended alone, it left the other waiting for it in MPI_Init, or in their first
    # meeting after it. (Were the ranks on two machines, the other's MPICH segment would stay.)
    job = launch(2, corpus, tmp_path / "r", "--max-steps", 1, wait=False, env={"CHARRNN_TEST_INTERRUPT": when})
    try:
        _, stderr = job.communicate(timeout=60)  # without the abort, the job waited for ever
    finally:
        job.kill()
    assert job.returncode == 130, stderr
    assert charrnn_lines(stderr) == [], stderr  # stopped, as Ctrl-C stops a run: nothing to say
    assert not (tmp_path / "r").exists()


@needs_mpi
@pytest.mark.parametrize("rank", [0, 1])
def test_a_stop_as_the_job_shuts_down_is_ignored(corpus, tmp_path, aborted_jobs_leave_no_shared_memory, rank):
    # Ctrl-C that reached a rank after training, as it shuts MPI down at exit (the hook sends
    # SIGINT just before MPI_Finalize): it raised there, a traceback, and MPI_Finalize never ran,
    # which left MPICH's segment in /dev/shm; a little later it killed the rank, and mpiexec
    # reported its failure with exit 2. The run was done: it ends as it would have
    r = launch(2, corpus, tmp_path / "r", "--max-steps", 2, env={"CHARRNN_TEST_INTERRUPT": f"{rank} exit"})
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr, r.stderr
    assert (tmp_path / "r" / "latest.npz").exists()


@needs_mpi
@pytest.mark.parametrize("failing", ["rank 1", "every rank"])
@pytest.mark.parametrize("variable, why", [
    ("NUMBA_NUM_THREADS=0", "Number of threads specified must be > 0"),  # numba's import fails
    ("NUMBA_THREADING_LAYER=no-such-layer", "The threading layer requested 'no-such-layer' is unknown to Numba"),
])  # the second, as the ranks join: numba starts its threads there, after MPI_Init
def test_numba_that_cannot_start_on_a_rank_ends_the_job_in_one_line(corpus, tmp_path, aborted_jobs_leave_no_shared_memory,
                                                                    failing, variable, why):
    # a rank whose numba cannot start (on a cluster, a node's broken installation) ended alone,
    # without a word: before MPI_Init, or after it with the job left as one process, and rank 0
    # waited for it for ever. Now it says why once the ranks have joined, and the job ends
    cmd = [sys.executable, "-m", "charrnn", "train", str(corpus), *MODEL, "--max-steps", "2", "--out-dir",
           str(tmp_path), "--run", "r"]
    broken = ["env", variable, *cmd]
    ranks = ["-n", "1", *cmd, ":", "-n", "1", *broken] if failing == "rank 1" else ["-n", "2", *broken]
    r = subprocess.run([MPIEXEC, *LAUNCH, *ranks], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="300", **LAUNCH_ENV))
    assert r.returncode == 1, r.stderr
    said = "rank 1: " if failing == "rank 1" else ""
    assert charrnn_lines(r.stderr) == [
        f"error: {said}numba cannot start: ValueError: {why}; check the NUMBA_* environment variables, and that numba "
        "is installed as the README says"], r.stderr
    assert not (tmp_path / "r").exists()


@needs_mpi
@pytest.mark.parametrize("machines", ["one", "one a rank"])
def test_ranks_that_do_not_divide_the_batch_are_refused(corpus, tmp_path, aborted_jobs_leave_no_shared_memory,
                                                        machines):
    # "one a rank": MPICH's ranks as if each were on a machine of its own, with a segment of its
    # own, whose name it removes once the ranks have started (Open MPI ignores the variable)
    apart = {"MPIR_CVAR_NOLOCAL": "1"} if machines == "one a rank" else {}
    r = launch(3, corpus, tmp_path / "r", "--max-steps", 1, env=apart)
    assert r.returncode == 2
    assert charrnn_lines(r.stderr) == [
        "error: --batch 4 (the total over all processes) cannot be split over 3 processes; launch a number "
        "that divides it (1, 2, 4) or give a --batch that 3 divides"], r.stderr
    assert not (tmp_path / "r").exists()


@needs_mpi
def test_a_resume_on_ranks_that_do_not_divide_the_batch_names_the_counts_that_do(corpus, tmp_path,
                                                                                 aborted_jobs_leave_no_shared_memory):
    # it advised "give a --batch that 3 divides", which a resume refuses
    ok(launch(1, corpus, tmp_path / "r", "--max-steps", 1))
    cmd = [sys.executable, "-m", "charrnn", "train", "--resume", str(tmp_path / "r"), "--max-steps", "2", "-q"]
    r = subprocess.run([MPIEXEC, *LAUNCH, "-n", "3", *cmd], capture_output=True, text=True, timeout=240,
                       env=dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="300", **LAUNCH_ENV))
    assert r.returncode == 2
    assert charrnn_lines(r.stderr)[-1] == ("error: this run's batch, 4 streams in all, cannot be split over 3 "
                                           "processes; resume it with a number that divides it (1, 2, 4)"), r.stderr


@needs_mpi
def test_a_launcher_of_another_mpi_is_explained(corpus, tmp_path):
    # what a launcher of MPICH's family (hydra) whose MPI is not mpi4py's leaves: its variables
    hydra = {"PMI_SIZE": "2", "PMI_RANK": "0", "HYDI_CONTROL_FD": "7"}
    r = launch(1, corpus, tmp_path / "r", "--max-steps", 1, env=hydra)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    if mpi_vendor() == "Open MPI":  # which cannot join a hydra's processes: known before it starts
        want = "this is one of 2 processes started by the launcher of another MPI than mpi4py's (Open MPI v"
    else:  # MPICH, which starts as a world of one
        want = "the MPI launcher started 2 processes but mpi4py's MPI (MPICH Version: "
    assert len(lines) == 1 and lines[0].startswith(f"error: {want}"), r.stderr
    assert "Open MPI" in want or "sees 1: the launcher belongs to another MPI" in lines[0], r.stderr
    # the other copy: a world of one says nothing, so that the user reads the line once; one that
    # cannot start MPI says it after a moment, which rank 0's end, ending the job, leaves it
    # under a real launcher (test_a_rank_that_cannot_start_mpi_says_why_and_ends_the_job)
    r = launch(1, corpus, tmp_path / "r", "--max-steps", 1, env={**hydra, "PMI_RANK": "1"})
    assert r.returncode == 1
    assert r.stderr == "" if "Open MPI" not in want else r.stderr.startswith(f"error: rank 1: {want}"), r.stderr
    assert not (tmp_path / "r").exists()


@needs_mpi
def test_open_mpis_launcher_with_another_mpi_is_explained_before_mpi_starts(corpus, tmp_path):
    # what Open MPI's mpiexec gives each process: its variables and a PMIx server's. MPICH's
    # MPI_Init, seeing PMIx, ends the process with its own error stack; charrnn says why first
    if mpi_vendor() == "Open MPI":
        pytest.skip("mpi4py's MPI is Open MPI: this launcher is its own")
    env = {"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "0", "PMIX_RANK": "0", "PMIX_NAMESPACE": "job"}
    r = launch(1, corpus, tmp_path / "r", "--max-steps", 1, env=env)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "one of 2 processes started by the launcher of another MPI than mpi4py's (MPICH" in lines[0], r.stderr
    assert not (tmp_path / "r").exists()


MPICH_WHEEL = "MPICH Version:      5.0.2\nMPICH configure:    --with-device=ch4:ucx,ofi --with-pm=hydra:gforker\n"
OPEN_MPI_5 = "Open MPI v5.0.11, package: Open MPI Distribution, ident: 5.0.11\0"


@pytest.mark.parametrize("variables, vendor, version, other", [
    # Open MPI's mpiexec: its variables, and a PMIx server's
    ({"OMPI_COMM_WORLD_SIZE": "4", "PMIX_RANK": "0"}, "MPICH", MPICH_WHEEL, True),
    ({"OMPI_COMM_WORLD_SIZE": "4", "PMIX_RANK": "0"}, "Intel MPI", "Intel(R) MPI Library 2021.14", True),
    ({"OMPI_COMM_WORLD_SIZE": "4", "PMIX_RANK": "0"}, "MPICH", MPICH_WHEEL.replace("gforker", "gforker --with-pmix"),
     False),  # an MPICH built for PMIx may join them
    ({"OMPI_COMM_WORLD_SIZE": "4", "PMIX_RANK": "0"}, "Open MPI", OPEN_MPI_5, False),
    ({"OMPI_COMM_WORLD_SIZE": "4", "PMIX_RANK": "0"}, "unknown", "IBM Spectrum MPI 10.4", False),  # Open MPI's kin
    # MPICH's or Intel MPI's hydra
    ({"PMI_SIZE": "4", "PMI_RANK": "0", "PMI_FD": "9", "HYDI_CONTROL_FD": "7"}, "Open MPI", OPEN_MPI_5, True),
    ({"PMI_SIZE": "4", "PMI_RANK": "0", "PMI_FD": "9", "HYDI_CONTROL_FD": "7"}, "MPICH", MPICH_WHEEL, False),
    ({"PMI_SIZE": "4", "PMI_RANK": "0", "HYDI_CONTROL_FD": "7", "PMIX_MCA_gds": "hash"}, "Open MPI", OPEN_MPI_5,
     True),  # a PMIx setting from a site's module changes nothing
    # srun (PMI-2 or PMIx, whichever the cluster set up) or another PMI launcher: MPI itself tells
    ({"SLURM_STEP_NUM_TASKS": "4", "SLURM_PROCID": "0", "PMI_SIZE": "4", "PMI_FD": "9"}, "Open MPI", OPEN_MPI_5,
     False),
    ({"SLURM_STEP_NUM_TASKS": "4", "SLURM_PROCID": "0", "PMIX_RANK": "0"}, "Open MPI", OPEN_MPI_5, False),
    ({"SLURM_STEP_NUM_TASKS": "4", "SLURM_PROCID": "0", "PMIX_RANK": "0"}, "Cray MPICH", "MPI VERSION : CRAY MPICH",
     False),
    ({"PMI_SIZE": "4", "PMI_RANK": "0", "PMI_FD": "9"}, "Open MPI", OPEN_MPI_5, False),  # Flux, say
])
def test_a_launcher_of_another_mpi_is_known_where_its_variables_tell(variables, vendor, version, other):
    from charrnn.distributed import launcher_of_another_mpi

    assert launcher_of_another_mpi(variables, vendor, version) is other


def test_only_train_joins_the_ranks_of_a_launcher(corpus, tmp_path):
    # srun charrnn sample ... is a sample in every process, not a job that waits for MPI (nor
    # refuses to start without mpi4py)
    env = dict(os.environ, PYTHONPATH=str(ROOT), PMI_SIZE="2", PMI_RANK="0")
    r = subprocess.run([sys.executable, "-m", "charrnn", "sample", "--help"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0 and "Generate text" in r.stdout and r.stderr == "", r.stderr


@needs_mpi
def test_a_text_too_small_for_the_batch_keeps_a_batch_every_rank_shares(tmp_path):
    # a short text shrinks --batch 32 to 7 streams in one process, to 6 for 2 ranks: 3 each
    corpus = tmp_path / "small.txt"
    corpus.write_text(TEXT[:800], encoding="utf-8")  # 640 training characters: 7 streams of 4 windows
    ok(launch(2, corpus, tmp_path / "r", "--max-steps", 2, "--batch", "32", "--k1", "20", "--k2", "20"))
    _, meta = load_checkpoint(tmp_path / "r" / "latest.npz")
    assert meta["step"] == 2 and meta["config"]["batch"] == 6, meta["config"]


@needs_mpi
@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="reads the cores this process may run on")
def test_each_rank_takes_its_share_of_the_cores_unless_told(tmp_path):
    probe = ("import sys; from charrnn import distributed; w = distributed.world(); import numba; "
             f"open(f'{tmp_path}/threads.{{w.rank}}', 'w').write(str(numba.get_num_threads()))")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_NUM_THREADS"}
    env.update(LAUNCH_ENV, PYTHONPATH=str(ROOT))
    cores = len(os.sched_getaffinity(0))  # both ranks may run on all of them: they share them out
    for told, want in ((None, max(1, cores // 2)), ("3", 3)):
        if told:
            env["NUMBA_NUM_THREADS"] = told
        ok(subprocess.run([MPIEXEC, *LAUNCH, "-n", "2", sys.executable, "-c", probe], capture_output=True, text=True,
                          env=env, timeout=120))
        assert [(tmp_path / f"threads.{r}").read_text() for r in (0, 1)] == [str(want)] * 2


def test_a_rank_draws_its_streams_rows_of_the_whole_batchs_dropout_masks():
    """Under MPI a rank's stack holds some of the batch's streams: its masks are those streams'
    rows of the masks one stack of the whole batch draws, and the generator ends where one
    process's does (kernels/dropout.py)."""
    from charrnn.model import ModelSpec, Stack, init_params

    T, B, H, V, rows = 5, 7, 20, 11, slice(2, 5)
    spec = ModelSpec("lstm", V, H, 1)
    params = init_params(spec, np.random.default_rng(0))
    whole, part = Stack(spec, B, T, dropout=0.5), Stack(spec, B, T, dropout=0.5, rows=rows)
    whole.ids[:] = np.random.default_rng(1).integers(0, V, (T, B))
    part.ids[:] = whole.ids[:, rows]
    one, other = np.random.default_rng(9), np.random.default_rng(9)
    whole.forward(params, 0, T, one)
    part.forward(params, 0, T, other)
    np.testing.assert_array_equal(part.masks[1], whole.masks[1][:, rows])
    np.testing.assert_array_equal(part.dropped[1], whole.dropped[1][:, rows])
    assert one.bit_generator.state == other.bit_generator.state


# A probe run by each rank of `mpiexec -n 2`: the text as train._read_corpus gives it, and where
# its ids live, written to a file per rank (the ranks other than 0 are silenced). `setup` runs
# first: it may change distributed, train or os.
SHARED_TEXT_PROBE = """
import errno, json, os, sys
from charrnn import distributed, train
from charrnn.errors import CharrnnError
world = distributed.world()
reads = []
real_read = train.read_corpus
def read_corpus(*args):
    reads.append(1)
    return real_read(*args)
train.read_corpus = read_corpus
{setup}
def mapping(array):
    address = array.__array_interface__["data"][0]
    for line in open("/proc/self/maps"):
        low, high = (int(a, 16) for a in line.split()[0].split("-"))
        if low <= address < high:
            return line.rstrip("\\n").split(maxsplit=5)[3:]  # device, inode, path
out = {{"rank": world.rank}}
try:
    {read}
except (Exception, KeyboardInterrupt) as e:
    out["raised"] = [type(e).__name__, str(e)]
else:
    out.update(mapping=mapping(ids), reads=len(reads), writeable=bool(ids.flags.writeable), notes=notes,
               text="".join(chars[i] for i in ids))
    import gc
    gc.collect()
    out["shared"] = sorted({{line.split()[4] for line in open("/proc/self/maps") if "charrnn-shared" in line}})
    out["fds"] = sum("charrnn-shared" in os.readlink(f"/proc/self/fd/{{fd}}") for fd in os.listdir("/proc/self/fd")
                     if os.path.exists(f"/proc/self/fd/{{fd}}"))
json.dump(out, open({folder!r} + f"/rank{{world.rank}}.json", "w"))
"""
READ_TEXT = ("corpus = train._read_corpus([{corpus!r}], 'utf-8', '\\x03')\n"
             "    ids, chars, notes = corpus.ids, corpus.chars, corpus.notes")


def probe_shared_text(folder, setup="", read=READ_TEXT, **names):
    """Each rank's view of the text read by `read` under `mpiexec -n 2`."""
    probe = SHARED_TEXT_PROBE.format(setup=setup, read=read.format(**names), folder=str(folder))
    ok(subprocess.run([MPIEXEC, *LAUNCH, "-n", "2", sys.executable, "-c", probe], capture_output=True, text=True,
                      env=dict(os.environ, PYTHONPATH=str(ROOT), **LAUNCH_ENV), timeout=60))
    return [json.loads((folder / f"rank{r}.json").read_text()) for r in (0, 1)]


def failing(rank, target, error):
    """Probe set-up code: on `rank`, the function `target` (e.g. "os.memfd_create") raises `error`."""
    return (f"if world.rank == {rank}:\n    def replaced(*args):\n        raise {error}\n"
            f"    {target} = replaced")


on_linux = pytest.mark.skipif(not hasattr(os, "memfd_create") or not Path("/proc/self/maps").exists(),
                              reason="shares through memfd_create, seen in /proc")


@needs_mpi
@on_linux
def test_the_ranks_of_a_machine_share_one_copy_of_the_text(corpus, tmp_path):
    ranks = probe_shared_text(tmp_path, corpus=str(corpus))
    assert [r["reads"] for r in ranks] == [1, 0]  # rank 0 read the files, rank 1 did not
    for r in ranks:
        assert r["text"] == TEXT and r["notes"] == [] and not r["writeable"], r
        device, inode, path = r["mapping"]
        assert path == "/memfd:charrnn-shared (deleted)", r  # no name anywhere: nothing to leave behind
        assert r["shared"] == [inode], r
        assert r["fds"] == 1, r  # the mapping's own: rank 0 closed the file it wrote, rank 1 the one it opened
    assert ranks[0]["mapping"][:2] == ranks[1]["mapping"][:2]  # the same file: the same pages


@needs_mpi
@on_linux
def test_a_fine_tuned_models_renumbered_text_is_shared_and_the_texts_own_ids_let_go(corpus, tmp_path):
    ok(launch(1, corpus, tmp_path / "base", "--max-steps", 2))
    new = tmp_path / "new.txt"
    new.write_text(TEXT.upper() + "ÉTÉ\n" * 20, encoding="utf-8")  # characters the model lacks: renumbered
    read = ("from charrnn.config import TrainConfig\n"
            "    settings = train.fine_tune_settings({base!r}, {{}})\n"
            "    cfg = TrainConfig(corpus=[{new!r}], batch=4, k1=5, k2=5, time_limit=0, out_dir={out!r}, run='ft',\n"
            "                      **settings).validate()\n"
            "    trainer = train.Trainer(cfg, cfg.out_dir + '/ft', say=lambda *a: None)\n"
            "    ids, chars, notes = trainer.train_ids, trainer.vocab.chars, []")
    ranks = probe_shared_text(tmp_path, read=read, base=str(tmp_path / "base"), new=str(new), out=str(tmp_path))
    assert [r["reads"] for r in ranks] == [1, 0]
    for r in ranks:
        assert "raised" not in r, r
        assert r["text"] == new.read_text(encoding="utf-8")[: len(r["text"])] and len(r["text"]) > 0.8 * len(TEXT)
        assert r["mapping"][2] == "/memfd:charrnn-shared (deleted)" and r["shared"] == [r["mapping"][1]], r
    assert ranks[0]["mapping"][:2] == ranks[1]["mapping"][:2]


@needs_mpi
@on_linux
def test_a_text_that_cannot_be_shared_is_read_by_every_rank_with_a_note(corpus, tmp_path):
    no_room = failing(0, "os.memfd_create", "OSError(errno.ENOMEM, os.strerror(errno.ENOMEM))")
    ranks = probe_shared_text(tmp_path, setup=no_room, corpus=str(corpus))
    for r in ranks:
        assert r["reads"] == 1 and r["text"] == TEXT and r["writeable"], r
        assert r["notes"] == [f"the text is not shared in memory: each of the 2 processes on this machine holds its "
                              f"own copy (a memory file of {len(TEXT):,} bytes: Cannot allocate memory)"], r


# rank 1 cannot open the first rank's file; or opens another (its own fd of that number, as in a
# process namespace of its own, where /proc/<pid> is another process)
ANOTHER_FILE = ("if world.rank == 1:\n"
                "    class Another:\n        st_dev, st_ino = 0, 0\n"
                "    os.fstat = lambda fd: Another")


@needs_mpi
@on_linux
@pytest.mark.parametrize("setup, why", [
    (failing(1, "distributed._map", "OSError(errno.EACCES, os.strerror(errno.EACCES))"), "Permission denied"),
    (ANOTHER_FILE, "not the first rank's file (another process namespace)"),
], ids=["refused", "another file"])
def test_a_rank_that_cannot_open_the_shared_text_reads_its_own(corpus, tmp_path, setup, why):
    ranks = probe_shared_text(tmp_path, setup=setup, corpus=str(corpus))
    assert [r["reads"] for r in ranks] == [1, 1] and [r["text"] for r in ranks] == [TEXT, TEXT]
    assert ranks[0]["notes"] == [], ranks
    assert [n.split("(")[0] for n in ranks[1]["notes"]] == ["the text is not shared in memory: this process holds "
                                                             "its own copy "] and why in ranks[1]["notes"][0], ranks


@needs_mpi
@on_linux
@pytest.mark.parametrize("setup, raised", [
    ("", ["Unreadable", "missing.txt"]),  # (corpus.Unreadable, a CharrnnError)
    (failing(0, "train.read_corpus", "KeyboardInterrupt"), ["KeyboardInterrupt", ""]),
    (failing(0, "distributed._write_shared", "MemoryError('no memory left')"), ["MemoryError", "no memory left"]),
], ids=["error", "interrupted", "failed after reading"])
def test_what_stops_the_first_rank_sharing_the_text_stops_the_others(corpus, tmp_path, setup, raised):
    text = tmp_path / "missing.txt" if raised[0] == "Unreadable" else corpus
    ranks = probe_shared_text(tmp_path, setup=setup, corpus=str(text))
    assert ranks[0]["raised"][0] == raised[0] and raised[1] in ranks[0]["raised"][1], ranks
    # rank 1, which did not read, raises what rank 0 did: a CharrnnError saying it, if another error
    want = {"Unreadable": ["CharrnnError", ranks[0]["raised"][1]], "KeyboardInterrupt": ranks[0]["raised"],
            "MemoryError": ["CharrnnError", "MemoryError no memory left"]}[raised[0]]
    assert ranks[1]["raised"] == want, ranks


@needs_mpi
def test_ranks_that_read_different_checkpoints_are_stopped_before_they_wait_for_each_other(
        corpus, tmp_path, aborted_jobs_leave_no_shared_memory):
    # each rank reads the checkpoint it resumes for itself: on machines that each hold a copy of
    # the run folder, one copy older, the ranks went their own ways and waited for each other at
    # 100% CPU for ever. Here each rank starts in a folder of its own, holding a run of that name.
    for seed, place in ((1, "a"), (2, "b")):
        ok(launch(1, corpus, tmp_path / place / "ck" / "R", "--max-steps", 2, "--seed", seed))
    cmd = [sys.executable, "-m", "charrnn", "train", "--resume", "ck/R", "--max-steps", "4", "-q"]
    r = subprocess.run([MPIEXEC, *LAUNCH, "-n", "1", "-wdir", str(tmp_path / "a"), *cmd, ":",
                        "-n", "1", "-wdir", str(tmp_path / "b"), *cmd], capture_output=True, text=True, timeout=240,
                       env=dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="300", **LAUNCH_ENV))
    assert r.returncode == 1
    assert charrnn_lines(r.stderr) == [
        "error: rank 1: ck/R/latest.npz here is not the checkpoint rank 0 read; every rank must resume the same "
        "run, from a folder on a file system they all see"], r.stderr


@needs_mpi
@pytest.mark.parametrize("name", [["--run", "r"], []])
def test_ranks_launched_with_other_settings_are_stopped_before_they_wait_for_each_other(
        corpus, tmp_path, aborted_jobs_leave_no_shared_memory, name):
    # mpiexec's A : B launches ranks with command lines of their own: ranks with other limits
    # trained on past each other and waited for ever at 100% CPU. Then only the refusing rank
    # stopped: rank 0 went on and made the run's folder (with its lock and an empty log, or
    # under a name of its own choosing), which the abort left behind
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "charrnn", "train", str(corpus), *MODEL, "--out-dir", str(runs), *name]
    r = subprocess.run([MPIEXEC, *LAUNCH, "-n", "1", *cmd, "--max-steps", "2", ":", "-n", "1", *cmd, "--max-steps", "3"],
                       capture_output=True, text=True, timeout=240,
                       env=dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="300", **LAUNCH_ENV))
    assert r.returncode == 1
    assert charrnn_lines(r.stderr) == [
        "error: rank 1: this rank's run is not rank 0's: --max-steps 3 (rank 0: 2); launch every rank with the same "
        "command line, in a folder on a file system they all see"], r.stderr
    assert not runs.exists()


@needs_mpi
@pytest.mark.parametrize("rank_0, rank_1, said", [
    (["--run", "r"], [], "--run not given (rank 0: r)"),  # not "--run ''", as if it were given so
    ([], ["--run", "r"], "--run r (rank 0: not given)"),
    (["--init-from", "DONE"], [], "--init-from not given (rank 0: DONE/best.npz)"),
    (["--doc-sep", ""], [], "--doc-sep \\x03 (rank 0: '')"),  # given empty: no separator, which is a value
    ([], ["OTHER"], "the text CORPUS OTHER (rank 0: CORPUS)"),  # an argument: there is no --corpus
])
def test_ranks_launched_one_with_an_option_and_one_without_are_stopped(
        corpus, tmp_path, aborted_jobs_leave_no_shared_memory, rank_0, rank_1, said):
    # ranks whose paths part before their settings were compared: one with --run and one without
    # waited in different collectives, for ever (or rank 1 failed with an internal error), as
    # did a fine-tune on rank 0 alone, which renumbers its text in a collective of its own
    done = tmp_path / "done"
    ok(launch(1, corpus, done, "--max-steps", 1))
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "charrnn", "train", str(corpus), *MODEL, "--max-steps", "2", "--out-dir", str(runs)]
    other = tmp_path / "other.txt"
    other.write_text("more text\n" * 50)
    named = {"DONE": str(done), "OTHER": str(other), "CORPUS": str(corpus)}
    options = [[named.get(a, a) for a in given] for given in (rank_0, rank_1)]
    r = subprocess.run([MPIEXEC, *LAUNCH, "-n", "1", *cmd, *options[0], ":", "-n", "1", *cmd, *options[1]],
                       capture_output=True, text=True, timeout=240,
                       env=dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="300", **LAUNCH_ENV))
    for placeholder, value in named.items():
        said = said.replace(placeholder, value)
    assert r.returncode == 1 and charrnn_lines(r.stderr) == [
        f"error: rank 1: this rank's run is not rank 0's: {said}; launch every rank with the same command line, in a "
        "folder on a file system they all see"], r.stderr
    assert not runs.exists()


@needs_mpi
@pytest.mark.parametrize("first", ["new", "resume"])
def test_ranks_one_resuming_and_one_starting_a_run_are_stopped(corpus, tmp_path, aborted_jobs_leave_no_shared_memory,
                                                               first):
    # rank 0 starting a new run, rank 1 resuming: each waited in a collective the other never
    # joined, for ever; the other way round, rank 1's line read "(rank 0: None)" for every option.
    # Rank 0 starting one went on to make its folder, which the abort left behind
    ok(launch(1, corpus, tmp_path / "done", "--max-steps", 1))
    runs = tmp_path / "runs"
    new = [sys.executable, "-m", "charrnn", "train", str(corpus), *MODEL, "--max-steps", "2", "--out-dir", str(runs)]
    again = [sys.executable, "-m", "charrnn", "train", "--resume", str(tmp_path / "done"), "--max-steps", "2"]
    ranks = (new, again) if first == "new" else (again, new)
    r = subprocess.run([MPIEXEC, *LAUNCH, "-n", "1", *ranks[0], ":", "-n", "1", *ranks[1]], capture_output=True,
                       text=True, timeout=240, env=dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="300", **LAUNCH_ENV))
    doing = "resumes a run" if first == "new" else "starts a new run"
    assert r.returncode == 1 and charrnn_lines(r.stderr) == [
        f"error: rank 1: this rank {doing}, and rank 0 does not; launch every rank with the same command line"], r.stderr
    assert not runs.exists()


NO_MPI4PY = "an MPI launcher started this as one of 2 processes, but mpi4py is not installed; install it with pip"
NO_LIBRARY = "mpi4py cannot load an MPI library (/nonexistent/libmpi.so: cannot open shared object file"


@needs_mpi
@pytest.mark.parametrize("lacking, missing, code, said", [
    ((1,), "mpi4py", 1, "rank 1: " + NO_MPI4PY),
    ((0, 1), "mpi4py", 1, NO_MPI4PY),  # said once: rank 0 speaks first, and its end ends the job
    ((0,), "library", 1, NO_LIBRARY),
    ((1,), "mpi4py after a Ctrl-C", 130, None),  # a stop's code, and no error line
])
def test_a_rank_that_cannot_start_mpi_says_why_and_ends_the_job(corpus, tmp_path, lacking, missing, code, said):
    # a rank without mpi4py (another Python, another node) exited quietly before MPI_Init, where
    # the others waited for it for ever; one without an MPI library said "internal error"
    broken = tmp_path / "broken" / "mpi4py"
    broken.mkdir(parents=True)
    stop = "import os, signal; os.kill(os.getpid(), signal.SIGINT)\n" if "Ctrl-C" in missing else ""
    (broken / "__init__.py").write_text(stop + "raise ImportError('this mpi4py is not there')\n")
    lack = ({"MPI4PY_LIBMPI": "/nonexistent/libmpi.so"} if missing == "library" else
            {"PYTHONPATH": f"{broken.parent}{os.pathsep}{ROOT}"})
    cmd = [sys.executable, "-m", "charrnn", "train", str(corpus), *MODEL, "--max-steps", "2", "--out-dir",
           str(tmp_path), "--run", "r"]
    ranks = []
    for rank in (0, 1):
        env = []
        for name, value in lack.items() if rank in lacking else ():
            env += ["-x", f"{name}={value}"] if OPEN_MPI else ["-env", name, value]
        ranks += [":"] * bool(ranks) + ["-n", "1", *env, *cmd]
    shm = Path("/dev/shm")
    before = set(os.listdir(shm)) if shm.is_dir() else set()
    r = subprocess.run([MPIEXEC, *LAUNCH, *ranks], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="300", **LAUNCH_ENV))
    left = set(os.listdir(shm)) - before if shm.is_dir() else set()
    for name in left:  # the segments, MPICH's and UCX's, of a rank the job's end caught in MPI_Init
        if name.startswith(("mpich_shm_", "ucx_shm_")):
            (shm / name).unlink(missing_ok=True)
    lines = charrnn_lines(r.stderr)
    assert r.returncode == code and "Traceback" not in r.stderr, r.stderr
    assert lines == [] if said is None else len(lines) == 1 and lines[0].startswith("error: " + said), r.stderr
    assert not (tmp_path / "r").exists()


@needs_mpi
@pytest.mark.parametrize("redirect, code", [("2>/dev/full", 1), (">&-", 0), ("2>&-", 0)])
def test_a_rank_whose_stdout_or_stderr_cannot_be_written_ends_the_job(corpus, tmp_path, aborted_jobs_leave_no_shared_memory,
                                                                      redirect, code):
    # stderr on a full disk: rank 0's error line failed, then its traceback, and the job never
    # aborted: rank 0 waited in MPI_Finalize, rank 1 in an all-reduce, for ever (and past
    # SIGTERM). Started with stdout or stderr closed, a rank other than 0 failed as it muted
    # itself (an internal error, or nothing), and the others waited for ever. Now: exit 1 as
    # one process gives for the first (its progress cannot be written), and a run for the others.
    cmd = [sys.executable, "-m", "charrnn", "train", str(corpus), *MODEL, "--max-steps", "2", "--out-dir",
           str(tmp_path), "--run", "r"]
    cmd.remove("-q")  # its progress and lines go to the streams it has
    r = subprocess.run([MPIEXEC, *LAUNCH, "-n", "2", "sh", "-c", f'exec "$0" "$@" {redirect}', *cmd],
                       capture_output=True, text=True, timeout=240,
                       env=dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="300", **LAUNCH_ENV))
    assert r.returncode == code and "internal error" not in r.stderr, r.stderr
    if code == 0:
        assert load_checkpoint(tmp_path / "r" / "latest.npz")[1]["step"] == 2
