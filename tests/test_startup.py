"""Start-up of a command: main() holds the cyclic garbage collector off while the command is set
up (imports, numba's types, the kernels loaded), then freezes what that made and runs the
collector again for the command's own work; at exit it freezes what is left."""
import gc
import importlib
import time
import weakref

import numba
import numpy as np
import pytest

import charrnn.cli as cli
from charrnn.checkpoint import save_checkpoint
from charrnn.errors import CharrnnError
from charrnn.model import ModelSpec, init_params
from test_api import fresh_python
from test_hostile import main_exits
from test_plot import _write_run


def test_the_collector_is_held_while_a_command_sets_up_and_runs_after(tmp_path, monkeypatch, capsys):
    seen = {}

    def load(path):  # sample's first step, before its kernels are loaded
        seen["setting up"] = gc.isenabled()
        raise CharrnnError("no such model")

    importlib.import_module("charrnn.api")  # first: it binds load_model as it is imported, for later tests
    monkeypatch.setattr("charrnn.sampling.load_model", load)
    assert gc.isenabled()
    assert main_exits(monkeypatch, capsys, "sample", tmp_path / "x.npz")[0] == 1
    assert seen == {"setting up": False}
    assert gc.isenabled()  # an error during set-up does not leave it off

    from charrnn import plot

    real_charts = plot.charts

    def charts(metrics):  # plot's work, after its set-up
        seen["working"] = gc.isenabled()
        seen["frozen"] = gc.get_freeze_count()
        seen["made by the command"] = made = []
        seen["in sight while working"] = any(o is made for o in gc.get_objects())
        return real_charts(metrics)

    monkeypatch.setattr(plot, "charts", charts)
    gc.unfreeze()
    assert main_exits(monkeypatch, capsys, "plot", _write_run(tmp_path / "run"))[0] == 0
    assert seen["working"] is True
    assert seen["frozen"] > 1000  # start-up's objects: out of the collector's sight
    assert seen["in sight while working"]  # what the command makes: in it
    made = seen["made by the command"]
    assert gc.isenabled() and not any(o is made for o in gc.get_objects())  # on the way out, frozen too


def test_kernels_compiled_while_the_collector_is_held_leave_no_garbage_frozen(monkeypatch):
    """A first run compiles its kernels during set-up: the compiler's cyclic garbage is collected
    before the rest is frozen for good."""
    import threading

    class Garbage:
        pass

    freed = threading.Event()

    def compile_slowly():  # a warm-up that outlives the first wait, as compiling does
        cycle = Garbage()
        cycle.me = cycle
        weakref.finalize(cycle, freed.set)
        del cycle
        time.sleep(0.6)

    monkeypatch.setattr(cli, "_collector_held", True)
    gc.disable()
    cli._first_call(compile_slowly)
    assert freed.is_set() and gc.isenabled()


@pytest.mark.parametrize("where", ["waiting", "in start()"])
def test_ctrl_c_while_the_kernels_load_ends_the_process_without_tearing_it_down_under_them(where):
    # A process that exits while the warm-up's thread is inside LLVM can crash in the teardown
    # (a segmentation fault in about 1 of 60 Ctrl-Cs as `charrnn sample` loaded its kernels).
    # Here the thread is still at work when Ctrl-C comes, as main waits for it or still inside
    # Thread.start() (which was outside the try): main()'s process must end with 130 and run no
    # exit teardown (an atexit hook stands for it) while the thread works.
    stop = ("threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()" if where == "waiting" else
            "class Thread(threading.Thread):\n"
            "    def start(self):\n"
            "        super().start()\n"
            "        raise KeyboardInterrupt\n"
            "threading.Thread = Thread")
    code = f"""
import atexit, os, signal, sys, threading, time
import charrnn.cli as cli
import charrnn.kernels._jit  # as a command has, before its first call
working = threading.Event()
def warm():
    working.set()
    time.sleep(30)
atexit.register(lambda: working.is_set() and print("torn down under the warm-up", flush=True))
{stop}
cli.owns_process = True  # as the entry point sets it
try:
    cli._first_call(warm)
except KeyboardInterrupt:
    sys.exit(3)
"""
    t0 = time.monotonic()
    r = fresh_python(code)
    assert r.returncode == 130 and "torn down" not in r.stdout, (r.returncode, r.stdout, r.stderr)
    assert r.stderr == "" and time.monotonic() - t0 < 20  # at once, not after the warm-up


def test_only_the_entry_point_claims_the_process(monkeypatch, capsys):
    # cli.main() called in-process (as these tests do) once marked the process as its own for
    # good: the app called in-process afterwards would end it on a Ctrl-C while kernels load
    assert main_exits(monkeypatch, capsys, "--help")[0] == 0
    assert cli.owns_process is False


def test_ctrl_c_while_the_kernels_load_in_process_waits_for_them(monkeypatch):
    import os
    import signal
    import threading

    finished = threading.Event()

    def warm():
        time.sleep(1.0)
        finished.set()

    threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
    monkeypatch.setattr(cli, "owns_process", False)  # the app called in-process
    t0 = time.monotonic()
    try:
        cli._first_call(warm)
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError("the interrupt was lost")
    assert finished.is_set() and time.monotonic() - t0 >= 0.9


def test_the_app_called_in_this_process_leaves_the_collector_alone(tmp_path):
    from typer.testing import CliRunner

    gc.unfreeze()
    r = CliRunner().invoke(cli.app, ["plot", str(_write_run(tmp_path / "run"))])
    assert r.exit_code == 0, r.output
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_a_failed_join_of_the_mpi_ranks_leaves_the_collector_on(monkeypatch, capsys):
    def refuse():
        raise CharrnnError("this launcher's MPI is not the one mpi4py was built with")

    monkeypatch.setattr("charrnn.distributed.world", refuse)
    assert main_exits(monkeypatch, capsys, "train", "--max-steps", "1")[0] == 1
    assert gc.isenabled() and not cli._collector_held


def test_sample_imports_neither_pydantic_nor_rich(tmp_path):
    """typer from 0.29 builds a pydantic validator for every option of the command, importing
    pydantic at every start (60-70 ms of `charrnn sample`'s 0.55 s): pyproject.toml keeps it
    below. rich (20-60 ms) is imported when a command first prints through it, which a sample
    that goes well on a warm cache never does (on a cold one, its spinner shows the compiling).
    The command, run whole in a fresh process after a first run has filled numba's cache, must
    import neither."""
    spec = ModelSpec("lstm", 3, 4, 1)
    config = {"cell": "lstm", "hidden": 4, "layers": 1, "batch": 2, "k1": 5, "k2": 5, "encoding": "utf-8"}
    save_checkpoint(tmp_path / "best.npz", {"params": init_params(spec, np.random.default_rng(0), np.float32)},
                    {"config": config, "vocab": ["a", "b", "\n"]})
    code = ("import runpy, sys\n"
            f"sys.argv = ['charrnn', 'sample', {str(tmp_path / 'best.npz')!r}, '--length', '20']\n"
            "try:\n    runpy.run_module('charrnn', run_name='__main__')\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pydantic', 'rich')), file=sys.stderr)\n")
    for run in ("compiling, or loading from the cache", "loading from the cache"):
        r = fresh_python(code, timeout=300)
        assert r.returncode == 0, (run, r.stderr)
        assert len(r.stdout.rstrip("\n")) >= 20, run  # it sampled
    assert r.stderr.strip().splitlines()[-1] == "[]"


def test_the_command_line_loads_scipys_blas_alone_with_the_collector_held(tmp_path):
    # the entry point loaded it before main() held the collector off: numpy and scipy's start
    # imported with the collector on, 0.05 s more of every `charrnn sample`
    code = f"""
import gc, sys
import charrnn.__main__ as entry
import charrnn.cli as cli
seen = []
load = cli.scipy_blas_alone
cli.scipy_blas_alone = lambda: (seen.append(gc.isenabled()), load())
sys.argv = ["charrnn", "sample", {str(tmp_path / "missing.npz")!r}]
try:
    entry.main()
except SystemExit as e:
    print(seen, e.code, "scipy.linalg.cython_blas" in sys.modules, "scipy.linalg" in sys.modules)
"""
    r = fresh_python(code)
    assert r.stdout.split() == ["[False]", "1", "True", "False"], (r.stdout, r.stderr)


def _sample_and_eval_in_a_fresh_process(tmp_path, ordinary_loader):
    """stdout of `charrnn sample` then `charrnn eval` run by cli.main in one fresh process, and how
    often numba readied its compiler (refreshed its target context) meanwhile; then a function
    of numba's that no cache holds, compiled in that process, must still run."""
    code = f"""
import contextlib, io, sys
import numba
import numba.core.base as base
from numba.core.caching import Cache
ready_loader = Cache.load_overload
import charrnn.cli as cli
import charrnn.kernels._jit as jit
if {ordinary_loader}:
    jit.LOADER_KNOWN = ((0, 0), (0, 0))
refreshes = []
ready = base.BaseContext.refresh
base.BaseContext.refresh = lambda self: (refreshes.append(1), ready(self))[1]
out = io.StringIO()
for args in (["sample", {str(tmp_path / "best.npz")!r}, "--length", "60", "--seed", "5"],
             ["eval", {str(tmp_path / "best.npz")!r}, {str(tmp_path / "text.txt")!r}, "--batch", "3"]):
    sys.argv = ["charrnn", *args]
    with contextlib.redirect_stdout(out):
        try:
            cli.main()
        except SystemExit as e:
            assert not e.code, (args, e.code)
loads = len(refreshes)
assert Cache.load_overload is ready_loader, "numba's loader was left replaced"
assert numba.njit(lambda x: 2 * x + 1)(20) == 41
print(repr(out.getvalue()), loads)
"""
    r = fresh_python(code, timeout=300)
    assert r.returncode == 0, r.stderr
    text, loads = r.stdout.rsplit(" ", 1)
    return text, int(loads)


def test_the_command_line_loads_its_kernels_without_readying_numbas_compiler(tmp_path):
    """Numba's loader readies its compiler before it reads a cached kernel, which needs only
    numba's runtime (kernels._jit.loading_from_cache). With a warm cache, sample and eval must
    not ready it at all, and print what the ordinary loader's kernels print; a function
    compiled afterwards in the same process still runs."""
    spec = ModelSpec("lstm", 3, 8, 2)
    config = {"cell": "lstm", "hidden": 8, "layers": 2, "batch": 2, "k1": 5, "k2": 5, "encoding": "utf-8"}
    save_checkpoint(tmp_path / "best.npz", {"params": init_params(spec, np.random.default_rng(3), np.float32)},
                    {"config": config, "vocab": ["a", "b", "\n"]})
    (tmp_path / "text.txt").write_text("abba\nab\nbbaab\n" * 30)
    ordinary, loads = _sample_and_eval_in_a_fresh_process(tmp_path, ordinary_loader=True)  # fills the cache
    assert loads > 0  # the ordinary loader readies the compiler, which the count sees
    fast, loads = _sample_and_eval_in_a_fresh_process(tmp_path, ordinary_loader=False)
    assert loads == 0, (f"numba {numba.__version__} readied its compiler: if it is outside "
                        "kernels._jit.LOADER_KNOWN, check its loader and extend the range")
    assert fast == ordinary and "nats/char" in fast and len(fast) > 100


class _FakeCache:
    """What the stand-in loader touches of a numba Cache: its guard and its _load_overload."""

    def __init__(self):
        self.loaded = []

    def _guard_against_spurious_io_errors(self):
        import contextlib

        return contextlib.nullcontext()

    def _load_overload(self, sig, target_context):
        self.loaded.append((sig, target_context))
        return "kernel"


def test_only_the_threads_inside_loading_from_cache_skip_the_refresh(monkeypatch):
    """Inside, this thread's loads start numba's runtime and read the cache, with no refresh;
    another thread's go to numba's own loader (a cached ufunc needs the refreshed tables)."""
    import threading

    from numba.core.caching import Cache
    from numba.core.runtime import rtsys

    from charrnn.kernels import _jit

    numbas, started = [], []
    monkeypatch.setattr(Cache, "load_overload", lambda cache, sig, ctx: numbas.append((sig, ctx)) or "numba's")
    monkeypatch.setattr(rtsys, "initialize", started.append)
    cache = _FakeCache()
    with _jit.loading_from_cache():
        assert Cache.load_overload(cache, "sig", "ctx") == "kernel"
        other = threading.Thread(target=lambda: Cache.load_overload(cache, "other", "ctx2"))
        other.start()
        other.join()
    assert cache.loaded == [("sig", "ctx")] and started == ["ctx"]
    assert numbas == [("other", "ctx2")]
    Cache.load_overload(cache, "after", "ctx3")
    assert numbas[-1] == ("after", "ctx3") and cache.loaded == [("sig", "ctx")]


def test_numbas_loader_is_back_after_uses_that_overlap_or_fail(monkeypatch):
    import threading

    from numba.core.caching import Cache

    from charrnn.kernels import _jit

    ordinary = Cache.load_overload
    with pytest.raises(KeyError):
        with _jit.loading_from_cache():
            assert Cache.load_overload is not ordinary
            raise KeyError
    assert Cache.load_overload is ordinary
    # A enters, B enters (another thread), A leaves, B leaves: each putting back what it found
    # left B's stand-in in place for good
    a_in, a_out, b_in = threading.Event(), threading.Event(), threading.Event()

    def b():
        with _jit.loading_from_cache():
            b_in.set()
            a_out.wait(10)

    with _jit.loading_from_cache():
        a_in.set()
        thread = threading.Thread(target=b)
        thread.start()
        assert b_in.wait(10)
    a_out.set()
    thread.join(10)
    assert Cache.load_overload is ordinary


@pytest.mark.parametrize("version", [(None, None), "this release, past the last known"])
def test_a_numba_outside_the_known_releases_keeps_its_loader(monkeypatch, version):
    from numba.core.caching import Cache

    from charrnn.kernels import _jit

    if version == "this release, past the last known":
        monkeypatch.setattr(_jit, "LOADER_KNOWN", ((0, 0), numba.version_info.short))
    else:  # a numba built without its version (0+unknown)
        monkeypatch.setattr(numba, "version_info", numba.version_info._replace(short=version))
    ordinary = Cache.load_overload
    with _jit.loading_from_cache():
        assert Cache.load_overload is ordinary


@pytest.mark.parametrize("began", [True, False])
def test_ctrl_c_inside_the_warm_ups_start_in_process_waits_for_it_if_it_began(monkeypatch, began):
    """A Ctrl-C landing in Thread.start(): the warm-up is waited for if its thread began, and
    never runs if it had not (Thread.is_alive() cannot tell: it is false until the thread's first
    step). Either way, once _first_call has given control back, nothing more of it runs."""
    import threading

    ran, finished = threading.Event(), threading.Event()

    def warm():
        ran.set()
        time.sleep(0.3)
        finished.set()

    real = threading.Thread

    class Thread(real):
        def start(self):
            if began:
                super().start()
                ran.wait(10)  # the thread has begun warm()
            else:  # the thread takes its first step only after the Ctrl-C
                real(target=lambda: (time.sleep(0.2), super(Thread, self).start())).start()
            raise KeyboardInterrupt

    monkeypatch.setattr(threading, "Thread", Thread)
    monkeypatch.setattr(cli, "owns_process", False)
    outcome = []

    def call():  # in a thread of its own, so that a wait that never ends fails the test, not hangs it
        try:
            cli._first_call(warm)
        except KeyboardInterrupt:
            outcome.append(finished.is_set())

    caller = real(target=call, daemon=True)
    caller.start()
    caller.join(10)
    assert outcome == [began]
    time.sleep(0.6)
    assert ran.is_set() == began and finished.is_set() == began


