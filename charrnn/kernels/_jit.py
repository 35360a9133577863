"""The one place numba options live.

fastmath is the explicit flag set that keeps NaN and Inf visible: no `nnan`/`ninf`, so a
diverging run shows a NaN loss instead of silently computing garbage. `reassoc` and `contract`
let LLVM vectorise reductions and fuse multiply-adds; `afn` allows faster exp/tanh.
"""
import numba

FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}


def kernel(fn):
    """Compile a serial kernel. No fixed signature: the same code runs in float32 and float64."""
    return numba.njit(cache=True, fastmath=FASTMATH, nogil=True)(fn)


def parallel_kernel(fn):
    """Compile a kernel whose `prange` loops run on numba's threads."""
    return numba.njit(cache=True, fastmath=FASTMATH, nogil=True, parallel=True)(fn)
