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
products). The large products call BLAS on each thread's own block, so BLAS itself is held to
one thread: a pool of its own would meet inside every product, which on a busy machine costs
many times the product itself. The per-step products do not use BLAS (kernels/panels.py), nor,
on AVX-512, the weight gradients' (kernels/weight_grad.py).

Cache: numba checks only a function's own file for changes. After editing a module that other
kernels inline (activations.py, panels.py), delete the __pycache__ folders, or set a fresh
NUMBA_CACHE_DIR as CI does.
"""
import sys
from importlib import import_module
from importlib.machinery import EXTENSION_SUFFIXES
from importlib.util import find_spec, module_from_spec, spec_from_file_location
from pathlib import Path

import numba
from numba.core.cpu_options import ParallelOptions
from threadpoolctl import threadpool_limits


def _load_blas():
    """Load scipy.linalg.cython_blas, the module whose BLAS numba's np.dot calls (numba imports it
    by that name when it compiles a product and on the first call), so that threadpool_limits
    below finds that library. The extension module alone: `import scipy.linalg.cython_blas` first
    runs scipy.linalg's __init__, which imports much of scipy, none of it used here (0.2 s of CPU
    at every start, a sixth of `charrnn sample`'s). Should scipy.linalg be imported later, it
    works, but lacks the attribute cython_blas (`from scipy.linalg import cython_blas` finds it)."""
    name = "scipy.linalg.cython_blas"
    if name in sys.modules or "scipy.linalg" in sys.modules:
        import_module(name)
        return
    try:
        folder = Path(find_spec("scipy").submodule_search_locations[0]) / "linalg"
        path = next(folder / f"cython_blas{suffix}" for suffix in EXTENSION_SUFFIXES
                    if (folder / f"cython_blas{suffix}").is_file())
        spec = spec_from_file_location(name, path)
        module = module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    except Exception:  # a scipy laid out otherwise: the ordinary import
        sys.modules.pop(name, None)
        import_module(name)


_load_blas()

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

threadpool_limits(1, user_api="blas")


def threads():
    """How many blocks to split parallel work into: numba's thread count."""
    return numba.get_num_threads()


def kernel(fn):
    """Compile a serial kernel. No fixed signature: the same code runs in float32 and float64."""
    return numba.njit(cache=True, fastmath=FASTMATH, error_model=ERROR_MODEL, nogil=True)(fn)


def parallel_kernel(fn):
    """Compile a kernel whose `prange` loops run on numba's threads."""
    return numba.njit(cache=True, fastmath=FASTMATH, error_model=ERROR_MODEL, nogil=True, parallel=PARALLEL)(fn)


@kernel
def block(n, n_blocks, i):
    """Bounds [lo, hi) of block i when n rows are cut into n_blocks blocks for the threads
    (the last ones may be short or empty)."""
    size = (n + n_blocks - 1) // n_blocks
    lo = min(n, i * size)
    return lo, min(n, lo + size)
