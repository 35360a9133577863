"""The one place numba options live.

No fast-math flags (FASTMATH is empty): IEEE arithmetic, so NaN and Inf are never assumed
away (a diverging run shows a NaN loss), and LLVM keeps the order of every addition and
multiplication as written. numba links a copy of every kernel a kernel calls into the caller
and optimises it again there, and which copy runs depends on what this process compiled or
loaded from the cache first; any freedom the flags give LLVM it may use differently in each
copy. With `contract` it fused multiply-adds as the code around allowed, and a peephole LSTM
run's numbers changed with the state of the cache; with `reassoc` it summed float64 rows in
another order in some copies. The speed the flags gave is written out instead: the
multiply-adds that pay are fused where they are written (activations.muladd), the sums that
must be fast run in vector lanes in a fixed order (sums.py), and the tiles are LLVM vector code
(panels.py). Dropping the last flags (nsz, arcp, afn) changed no speed beyond the noise (whole
updates of every cell and shape 0.95x-1.03x as fast; the optimizers, sampling and the
evaluation's loss the same).
tests/test_cache.py checks that a warm cache gives a cold one's numbers.

Threads: numba's threads split the work (batch rows in the time loops, output rows in the large
products). The large products call BLAS on each thread's own block, so that BLAS is held to
one thread: a pool of its own would meet inside every product, which on a busy machine costs
many times the product itself. Only the BLAS numba calls (scipy's): numpy's own, a library of
its own in numpy's and scipy's wheels, keeps its threads for a program's own products. scipy's
is the library that loading its BLAS module brought in, or where that module was loaded before
(by scipy.linalg, by numba code of the program's, or by the command line: cli.scipy_blas_alone),
the one in scipy's own folders (a wheel's scipy.libs). Where the two cannot be told apart (one
library for both, as in some conda installs), every BLAS is held. The per-step products do not
use BLAS (kernels/panels.py), nor, on AVX-512, the weight gradients' (kernels/weight_grad.py)
or, where it fits, the output layer's in training (kernels/output.py, tiled_fits).

Cache: numba checks only a function's own file for changes. After editing a module that other
kernels inline (activations.py, panels.py), delete the __pycache__ folders, or set a fresh
NUMBA_CACHE_DIR as CI does.
"""
import os
import threading
import time
import warnings
from contextlib import contextmanager
from importlib import import_module
from importlib.util import find_spec

import numba
from numba.core.cpu_options import ParallelOptions
from threadpoolctl import ThreadpoolController

from ..errors import KernelsNotCached, os_error_message

try:
    import fcntl
except ImportError:  # not a POSIX system: numba's cache unlocked, as numba has it
    fcntl = None


def _numba_blas():
    """threadpoolctl's controller of the BLAS that numba's products call, scipy.linalg.cython_blas's:
    the libraries that loading it brought in, or if it was loaded before, those in scipy's folders;
    every BLAS, if neither finds one (numpy and scipy share one library)."""
    before = {lib.filepath for lib in ThreadpoolController().lib_controllers}
    # (numba imports it by that name when it compiles a product and at the first call; the
    # command line has loaded it already, the quicker way: cli.main)
    import_module("scipy.linalg.cython_blas")
    blas = ThreadpoolController().select(user_api="blas")
    new = [lib.filepath for lib in blas.lib_controllers if lib.filepath not in before] or _in_scipy(blas)
    return blas.select(filepath=new) if new else blas


def _in_scipy(blas):
    """The files of blas's libraries that lie in scipy's package folder or beside it in a wheel's
    scipy.libs (numpy's own are in numpy.libs); none where scipy has no folder (an editable
    install's finder may give none)."""
    places = [os.path.realpath(folder) for folder in find_spec("scipy").submodule_search_locations or ()]
    folders = tuple(place + ending + os.sep for place in places for ending in ("", ".libs"))
    return [lib.filepath for lib in blas.lib_controllers if os.path.realpath(lib.filepath).startswith(folders)]


NUMBA_BLAS = _numba_blas()

FASTMATH = set()  # no fast-math flags: see above; one name, for the kernels and the tests
# IEEE division (x/0 is inf or NaN) instead of Python's ZeroDivisionError: the check for the
# exception is a branch in every division, and it kept LLVM from vectorising the gate math
ERROR_MODEL = "numpy"

# Only explicit `prange` loops run in parallel: numba's automatic parallelisation of array
# expressions and allocations would add nothing here but compile time. As numba's own options
# object, not a dict: numba pops a dict's keys as it reads them, so the first parallel kernel
# compiled in a process emptied the dict, and every later compile (every other kernel, a
# kernel's second dtype) got numba's defaults, every transformation on.
PARALLEL = ParallelOptions({"prange": True, "comprehension": False, "reduction": False, "inplace_binop": False,
                            "setitem": False, "numpy": False, "stencil": False, "fusion": False})

NUMBA_BLAS.limit(limits=1)  # for good (not a context): see above
_blas_users, _blas_lock = set(), threading.Lock()


@contextmanager
def blas_threads(n):
    """Numba's BLAS on n threads inside (sampling.Sampler's gemv: always SAMPLE_THREADS), and on
    one again when the last caller inside leaves, whatever Python threads they run in (a limit
    that each call set and restored itself was left raised by two calls at once). Set to one,
    not restored to what the first caller found: that may have been a raised limit left by a
    Ctrl-C inside these lines. Each caller is a token in a set, not a count: a Ctrl-C landing
    just after it was added still has it taken out below."""
    caller = object()
    try:
        with _blas_lock:
            if not _blas_users:
                NUMBA_BLAS.limit(limits=n)
            _blas_users.add(caller)
        yield
    finally:
        with _blas_lock:
            _blas_users.discard(caller)
            if not _blas_users:
                NUMBA_BLAS.limit(limits=1)


def threads():
    """How many blocks to split parallel work into: numba's thread count."""
    return numba.get_num_threads()


def kernel(fn):
    """Compile a serial kernel. No fixed signature: the same code runs in float32 and float64."""
    return _saved_where_it_can(numba.njit(cache=True, fastmath=FASTMATH, error_model=ERROR_MODEL, nogil=True)(fn))


def parallel_kernel(fn):
    """Compile a kernel whose `prange` loops run on numba's threads."""
    return _saved_where_it_can(numba.njit(cache=True, fastmath=FASTMATH, error_model=ERROR_MODEL, nogil=True,
                                          parallel=PARALLEL)(fn))


_unsaved = {"said": False}  # whether a save has failed in this process (said once)


def _saved_where_it_can(dispatcher):
    """A kernel whose compiled code numba saves to its cache if it can: a full disk, a quota or a
    file-size limit (ulimit -f) where the cache lives failed the command at the first kernel it
    compiled ("error: File too large"). The kernel runs all the same; a KernelsNotCached warning
    says so, once a process (saves run under numba's compiler lock, one at a time). numba writes
    each cache file whole or not at all (a temporary, renamed); a kernel's index may be saved
    without its data, which a later load takes as missing, and compiles again."""
    cache = getattr(dispatcher, "_cache", None)  # numba's FunctionCache (cache=True)
    save = getattr(cache, "save_overload", None)
    if save is None:
        return dispatcher

    def save_overload(sig, data):
        try:
            save(sig, data)
        except OSError as e:
            if not _unsaved["said"]:
                _unsaved["said"] = True
                warnings.warn(KernelsNotCached(
                    f"numba could not save the compiled kernels in its cache ({os_error_message(e, cache.cache_path)}); "
                    "they run, and compile again in the next process (NUMBA_CACHE_DIR chooses another folder)"))

    cache.save_overload = save_overload
    files = getattr(cache, "_cache_file", None)  # (numba's; a release without it runs unlocked)
    if files is not None and fcntl is not None:
        _locked_between_processes(files)
    return dispatcher


# numba's cache file of a kernel's compiled versions: an index (signature -> data file) and the
# data files. Its save reads the index, takes the first free data file's name, writes the index,
# then the data, with nothing to keep two processes apart: two that compiled the kernel for two
# signatures at once (a first `charrnn train` and a `charrnn gradcheck` beside it, float32 and
# float64) both took file 1, and the index could name one signature's file holding the other's
# code, which every later process then loaded ("can't unbox array", or a layout read wrongly).
# Saves hold an exclusive lock on a file in the cache's folder, loads a shared one.
CACHE_LOCK = "charrnn-cache.lock"


# A save holds the lock for milliseconds; a process stopped inside one (Ctrl-Z) holds it until it
# goes on, and every other command waited for it without a word. One that has waited LOCK_WAIT
# seconds goes on without the cache: it compiles every kernel itself, and saves none. (Reading
# it unlocked is not safe: a save writes the index before the data, so a reader could take a new
# index naming a data file that still holds older code, of another signature or of an edited
# kernel, and run it.)
LOCK_WAIT = 10.0
_lock_held_elsewhere = {"given_up": False}  # in this process, for the rest of it (said once)


def _locked_between_processes(files):
    save, load = files.save, files.load

    def locked_save(key, data):
        with _cache_lock(files._cache_path, fcntl.LOCK_EX) as locked:
            if locked:
                save(key, data)

    def locked_load(key):
        with _cache_lock(files._cache_path, fcntl.LOCK_SH) as locked:
            return load(key) if locked else None  # (None: not in the cache, so compiled)

    files.save, files.load = locked_save, locked_load


@contextmanager
def _cache_lock(folder, how):
    """A flock of `how` on the folder's lock file while inside, as True; none where the file can
    be neither made nor opened (a cache numba only reads: its saves fail as they did), also True;
    False once the lock has been waited for LOCK_WAIT seconds in this process (above). Opened for
    writing where it can be: NFS, which emulates a flock as a lock of the file's bytes, takes an
    exclusive one only on a file open for writing; for reading only, another user's lock file
    still serves on a local disk. The lock belongs to the open file, so a process killed inside
    it holds it no longer."""
    if _lock_held_elsewhere["given_up"]:
        yield False
        return
    fd = None
    path = os.path.join(folder, CACHE_LOCK)
    for access in (os.O_RDWR, os.O_RDONLY):  # (not blocking where a FIFO was put in its place)
        try:
            fd = os.open(path, access | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
            break
        except OSError:
            pass
    locked = True
    if fd is not None:
        try:
            locked = _flock_within_wait(fd, how, path)
        except BaseException as e:  # (a Ctrl-C as it waits closes the file too)
            os.close(fd)
            fd = None
            if not isinstance(e, OSError):
                raise
    try:
        yield locked
    finally:
        if fd is not None:
            os.close(fd)


def _flock_within_wait(fd, how, path) -> bool:
    """Whether the flock was taken, tried every 10 ms for LOCK_WAIT seconds; if not, this
    process gives the lock up (a KernelsNotCached note says so)."""
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            fcntl.flock(fd, how | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                _lock_held_elsewhere["given_up"] = True
                warnings.warn(KernelsNotCached(
                    f"another process has held numba's cache for {LOCK_WAIT:g} s ({path}; one stopped with Ctrl-Z "
                    "holds it until it goes on): this command goes on without it, compiling its kernels itself"))
                return False
            time.sleep(0.01)


# The numba releases whose cache loader loading_from_cache knows (Cache.load_overload: the
# context's refresh, then _load_overload), from the first to the first not known: charrnn needs
# 0.59, and a later release is added once tests/test_startup.py passes on it.
LOADER_KNOWN = ((0, 59), (0, 69))
_loaders, _loader_lock = {}, threading.Lock()  # a token per use of loading_from_cache: its thread
_numbas_loader = None  # Cache.load_overload as numba has it, while _load_overload stands in for it


def _load_overload(cache, sig, target_context):
    """Cache.load_overload while loading_from_cache is in use: numba's loader without the
    refresh, in a thread inside loading_from_cache; in any other thread, numba's own (a cached
    ufunc, for one, is built with the refreshed tables)."""
    with _loader_lock:
        inside = threading.get_ident() in _loaders.values()
    if not inside:
        return _numbas_loader(cache, sig, target_context)
    from numba.core.runtime import rtsys

    rtsys.initialize(target_context)
    with cache._guard_against_spurious_io_errors():
        return cache._load_overload(sig, target_context)


@contextmanager
def loading_from_cache():
    """Inside, this thread takes kernels from numba's cache without first readying its compiler.

    Before it reads a cached kernel, numba's loader refreshes its target context: it imports and
    registers numba's tables of types and implementations, which only compiling uses, at a
    process's first load a sixth of `charrnn sample`. A kernel read from the cache needs numba's
    runtime (NRT), started here as the refresh starts it; a parallel kernel's threads numba
    starts as it loads one. A kernel missing from the cache is compiled as ever, and the
    compiler refreshes the context itself. The loader is numba's class attribute, so it is
    replaced for the whole process while any thread is inside; other threads' loads go to
    numba's own. For the command line's first call of its kernels (cli._first_call); with a
    numba outside LOADER_KNOWN nothing changes. Uses are tokens, as in blas_threads: numba's
    loader is back when the last one leaves, whatever the order."""
    global _numbas_loader
    from numba.core.caching import Cache

    known = numba.version_info.short  # (None, None) for a numba built without its version
    if None in known or not LOADER_KNOWN[0] <= known < LOADER_KNOWN[1]:
        yield
        return
    caller = object()
    try:
        with _loader_lock:
            if not _loaders:
                _numbas_loader, Cache.load_overload = Cache.load_overload, _load_overload
            _loaders[caller] = threading.get_ident()
        yield
    finally:
        with _loader_lock:
            _loaders.pop(caller, None)
            if not _loaders and Cache.load_overload is _load_overload:
                Cache.load_overload = _numbas_loader


@kernel
def block(n, n_blocks, i):
    """Bounds [lo, hi) of block i when n rows are cut into n_blocks blocks for the threads
    (the last ones may be short or empty)."""
    size = (n + n_blocks - 1) // n_blocks
    lo = min(n, i * size)
    return lo, min(n, lo + size)
