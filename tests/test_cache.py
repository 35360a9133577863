"""The same numbers whether numba compiled the kernels in this process or loaded them from its
cache: a run started on a cold cache and resumed on a warm one continues exactly, and a seed
gives the same text after the first run as in it.

numba links a copy of each kernel a kernel calls into the caller and optimises it again there;
in the process that compiled them, calls go to the callee's own compile, in a process that
loaded the caller from the cache, to the copy. With `contract` among numba's fastmath flags,
LLVM's fusing of multiply-adds followed the code around, and the peephole LSTM's copies rounded
differently from its own compile; with `reassoc`, float64 sums over a row came out in another
order in some copies. The kernels now compile without those flags (kernels/_jit.py,
kernels/sums.py)."""
import atexit
import errno
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

from numba.core.caching import Cache

from charrnn.__main__ import numba_values_must_be_read
from charrnn.cells import CELLS
from charrnn.errors import KernelsNotCached
from charrnn.kernels import _jit

ROOT = Path(__file__).resolve().parent.parent

# every cell: a few float32 updates (dropout, clipping, the optimizer, the output layer) on
# numba's two threads (NUMBA_NUM_THREADS below), then text sampled from the result; a digest of
# each, and how much numba compiled
PROBE = r"""
import hashlib, sys, tempfile
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import charrnn
from charrnn.cells import CELLS
from test_train import TEXT, config, train_steps
with tempfile.TemporaryDirectory() as tmp:
    corpus = Path(tmp) / "tiny.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    for cell in CELLS:
        cfg = config(corpus, Path(tmp) / cell, cell=cell, hidden=40, layers=2, dropout=0.3, clip_norm=0.5)
        trainer = train_steps(cfg, Path(tmp) / cell / "r", 5)
        model = charrnn.load(Path(tmp) / cell / "r" / "latest.npz")
        text = model.sample(length=100, seed=3)
        print(cell, hashlib.md5(trainer.params.tobytes()).hexdigest(), hashlib.md5(text.encode()).hexdigest(),
              model.score(TEXT[:300]).hex())
    # hidden 512 with 8 streams a thread: the 8-row tile that fetches the next panels ahead, where
    # it is the machine's tile and the weights (4 MiB) are larger than a core's L2
    for cell in ("lstm", "peephole"):
        cfg = config(corpus, Path(tmp) / "wide", cell=cell, hidden=512, layers=1, batch=16, k1=8, k2=8)
        trainer = train_steps(cfg, Path(tmp) / "wide" / cell, 2)
        print(cell, 512, hashlib.md5(trainer.params.tobytes()).hexdigest())
# float64, as gradcheck and gradflow run: the output layer and the evaluation's loss (both layouts,
# serial and parallel), whose sums over a row once differed in their last bits (with reassoc)
import numpy as np
from charrnn.kernels.output import output_layer, xent
for N, H, V in ((5, 8, 600), (128, 24, 600), (64, 16, 1003), (40, 12, 65)):  # few rows a thread, and many
    rng = np.random.default_rng(N)
    h, Wy, by = rng.standard_normal((N, H)), rng.standard_normal((H, V)) * 0.3, rng.standard_normal(V)
    targets = rng.integers(0, V, N)
    logits, loss, dh, dWy, dby = np.empty((N, V)), np.empty(N), np.empty((N, H)), np.zeros((H, V)), np.zeros(V)
    output_layer(logits, loss, targets, 1.0 / N, h, Wy, by, dh, dWy, dby)
    row_loss = np.empty(N)
    xent(h @ Wy + by, row_loss, targets)
    print("float64", N, V, hashlib.md5(b"".join(a.tobytes() for a in (loss, dh, dWy, dby, row_loss))).hexdigest())
from numba.core.registry import CPUDispatcher
kernels = {id(v): v for m in list(sys.modules.values()) if m and m.__name__.startswith("charrnn")
           for v in vars(m).values() if isinstance(v, CPUDispatcher)}.values()  # once each, wherever imported
print("compiled", sum(sum(k.stats.cache_misses.values()) for k in kernels),
      "loaded", sum(sum(k.stats.cache_hits.values()) for k in kernels))
"""


def start_probe(folder, niceness=0):
    """The probe in a process of its own, with folder/cache as numba's cache; its output in
    folder (no pipe to fill while nobody reads it)."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(folder / "cache"), NUMBA_NUM_THREADS="2", PYTHONPATH=str(ROOT))
    nice = ["nice", "-n", str(niceness)] if niceness and shutil.which("nice") else []
    with open(folder / "stdout", "w") as out, open(folder / "stderr", "w") as err:
        return subprocess.Popen([*nice, sys.executable, "-c", PROBE, str(ROOT / "tests")], stdout=out, stderr=err,
                                env=env)


def probe_result(probe, folder):
    try:
        probe.wait(timeout=900)
    finally:
        probe.kill()
    assert probe.returncode == 0, (folder / "stderr").read_text()[-3000:]
    *digests, counts = (folder / "stdout").read_text().splitlines()
    _, compiled, _, loaded = counts.split()
    return digests, int(compiled), int(loaded)


# The cold probe compiles every kernel, 90 s on one core mostly, and the suite leaves the second
# mostly idle: conftest.py starts it as soon as the tests to run are known, niced below the
# suite, and the test takes its result when its turn comes.
COLD = {}


def start_cold_probe():
    COLD["folder"] = Path(tempfile.mkdtemp(prefix="charrnn-cold-cache-"))
    COLD["probe"] = start_probe(COLD["folder"], niceness=10)
    atexit.register(end_cold_probe)


def end_cold_probe():
    if COLD:
        probe = COLD.pop("probe")
        probe.kill()
        probe.wait()
        shutil.rmtree(COLD.pop("folder"), ignore_errors=True)


def test_a_warm_cache_gives_the_numbers_of_a_cold_one():
    if not COLD:  # (conftest.py started none)
        start_cold_probe()
    cold, compiled, _ = probe_result(COLD["probe"], COLD["folder"])
    warm, recompiled, loaded = probe_result(start_probe(COLD["folder"]), COLD["folder"])
    assert compiled > 0 and recompiled == 0 and loaded > 0  # the second process compiled nothing
    assert [d.split()[0] for d in cold] == list(CELLS) + ["lstm", "peephole"] + ["float64"] * 4
    assert warm == cold


def _plus_one(x):
    return x + 1.0


def _twice(x):
    return 2.0 * x


def test_kernels_numba_cannot_save_to_its_cache_run_with_one_warning(monkeypatch):
    # a full disk, a quota or ulimit -f where numba's cache lives: "error: File too large" at the
    # first kernel a command compiled
    def full(cache, sig, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Cache, "_save_overload", full)  # (so these two are never in any cache)
    monkeypatch.setitem(_jit._unsaved, "said", False)
    plus_one, twice = _jit.kernel(_plus_one), _jit.parallel_kernel(_twice)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert plus_one(1.0) == 2.0 and twice(2.0) == 4.0
    said = [str(w.message) for w in seen if w.category is KernelsNotCached]  # (numba warns of a prange-less one)
    assert said == [
        f"numba could not save the compiled kernels in its cache ({plus_one._cache.cache_path}: No space left on "
        "device; free some disk space); they run, and compile again in the next process (NUMBA_CACHE_DIR chooses "
        "another folder)"], said


def test_the_command_line_says_kernels_not_cached_in_one_note(monkeypatch, capsys):
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # put back after
    numba_values_must_be_read()
    warnings.showwarning(KernelsNotCached("numba could not save (/a\nb: File too large)"), KernelsNotCached,
                         "_jit.py", 1)
    assert capsys.readouterr().err == "note: numba could not save (/a\\nb: File too large)\n"
    monkeypatch.setattr(sys, "stderr", None)  # started closed (2>&-): the note has nowhere to go, and the kernel runs
    warnings.showwarning(KernelsNotCached("numba could not save"), KernelsNotCached, "_jit.py", 1)


# two processes that save one kernel's versions for two signatures at once, held at a barrier
# just before their saves; inside, numba's writes of the index and of the data are slowed so
# that, unlocked, they interleave as: float32 and float64 both read an empty index and take
# data file 1; float32 writes its index, float64 its index and its data, float32 its data. The
# index then names float64's file, which holds float32's code.
RACE = r"""
import os, sys, time
import numpy as np
from numba.core import caching

dtype, index_delay, data_delay, folder = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
save_overload, save_index, save_data = (caching.Cache._save_overload, caching.IndexDataCacheFile._save_index,
                                        caching.IndexDataCacheFile._save_data)

def at_the_barrier(self, sig, data):
    open(os.path.join(folder, "ready-" + dtype), "w").close()
    deadline = time.monotonic() + 120
    while len([n for n in os.listdir(folder) if n.startswith("ready-")]) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    save_overload(self, sig, data)

def slow_index(self, overloads):
    time.sleep(index_delay)
    save_index(self, overloads)

def slow_data(self, name, data):
    time.sleep(data_delay)
    save_data(self, name, data)

caching.Cache._save_overload = at_the_barrier
caching.IndexDataCacheFile._save_index, caching.IndexDataCacheFile._save_data = slow_index, slow_data
import summed
print(summed.total(np.arange(1, 9, dtype=dtype) * 1.5))
"""

SUMMED = """from charrnn.kernels._jit import kernel


@kernel
def total(x):
    s = x[0] * 0
    for v in x:
        s += v
    return s
"""

# the toy kernel for the dtypes given, after LOCK_WAIT is set to the first argument
CHECK = r"""
import sys
import numpy as np
from charrnn.kernels import _jit
_jit.LOCK_WAIT = float(sys.argv[1])
import summed
for dtype in sys.argv[2:]:
    print(dtype, summed.total(np.arange(1, 9, dtype=dtype) * 1.5))
print("loaded", sum(summed.total.stats.cache_hits.values()), "compiled", sum(summed.total.stats.cache_misses.values()))
"""


def test_two_processes_saving_a_kernel_for_two_signatures_at_once_keep_both(tmp_path):
    (tmp_path / "summed.py").write_text(SUMMED)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=f"{ROOT}{os.pathsep}{tmp_path}")
    racers = [subprocess.Popen([sys.executable, "-c", RACE, dtype, index, data, str(tmp_path)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for dtype, index, data in (("float32", "0.5", "1.0"), ("float64", "0.75", "0"))]
    for racer in racers:
        out, err = racer.communicate(timeout=300)
        assert racer.returncode == 0 and out == "54.0\n", err
    check = subprocess.run([sys.executable, "-c", CHECK, "10", "float64", "float32"], env=env, capture_output=True,
                           text=True, timeout=300)
    # unlocked: "TypeError: can't unbox array from PyObject into native value" at float64's call
    assert check.returncode == 0, check.stderr
    assert check.stdout == "float64 54.0\nfloat32 54.0\nloaded 2 compiled 0\n"


def test_a_cache_held_by_a_stopped_process_is_waited_for_a_while_then_gone_on_without(tmp_path):
    # a command stopped with Ctrl-Z as it saved a kernel held the lock, and every other command
    # waited at its first kernel, without a word, until that one went on
    (tmp_path / "summed.py").write_text(SUMMED)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=f"{ROOT}{os.pathsep}{tmp_path}")

    def run(*args):
        r = subprocess.run([sys.executable, "-c", CHECK, *args], env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return r

    assert run("10", "float64").stdout.endswith("loaded 0 compiled 1\n")
    [lock] = (tmp_path / "cache").rglob(_jit.CACHE_LOCK)
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as a process stopped inside its save
        held = run("0.5", "float64", "float32")
    finally:
        os.close(fd)
    # compiled, both: not read unlocked (a save writes the index before the data, so the index could
    # name a file that still held older code) nor saved
    assert held.stdout == "float64 54.0\nfloat32 54.0\nloaded 0 compiled 2\n"
    said = [line for line in held.stderr.splitlines() if "numba's cache" in line]
    assert len(said) == 1 and (f"another process has held numba's cache for 0.5 s ({lock}; one stopped with Ctrl-Z "
                               "holds it until it goes on): this command goes on without it, compiling its kernels "
                               "itself") in said[0], held.stderr
    assert run("10", "float32", "float64").stdout.endswith("loaded 1 compiled 1\n")  # float32 was not saved
