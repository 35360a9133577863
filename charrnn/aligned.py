"""Arrays whose data begin on a cache line, for the buffers the kernels read and write in whole
vectors (the states, the saved gates, the packed weight panels, the gradients flowing back).
Inside kernels, panels.line_empty and line_zeros do the same for what they allocate themselves.

numpy guarantees 16 bytes: with glibc, a large array is memory mapped for it and begins 16 bytes
past a page boundary (the allocator's header), so each 64-byte vector of 16 float32s that a
kernel loads or stores there spans two cache lines, and costs the CPU two accesses. (numba's
allocator started its arrays 0 or 32 bytes into a line.) Measured on an Intel Xeon with AVX-512,
T=100 steps of B=32 streams: the LSTM's forward kernel alone, in 11 alternations within a whole
model's buffers, 1.06x as fast at H=128 and 1.08x at H=256; in one probe run of the kernel on its
own buffers, 1.10x at H=128 and 1.08x at H=512, the recurrent product alone 1.16x and 1.08x.
numpy only, so that importing it loads no kernels.
"""
import math

import numpy as np

LINE = 64  # bytes: a cache line, and an AVX-512 vector


def zeros(shape, dtype):
    """np.zeros(shape, dtype), its data starting at a multiple of LINE bytes."""
    dtype = np.dtype(dtype)
    shape = tuple(int(d) for d in np.asarray(shape, dtype=np.int64).reshape(-1))
    if any(d < 0 for d in shape):
        raise ValueError("negative dimensions are not allowed")
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.zeros(nbytes + LINE, np.uint8)
    start = -raw.ctypes.data % LINE  # bytes to the next line; LINE spare bytes cover it
    return raw[start : start + nbytes].view(dtype).reshape(shape)


def ones(shape, dtype):
    """np.ones(shape, dtype), its data starting at a multiple of LINE bytes."""
    a = zeros(shape, dtype)
    a[...] = 1
    return a
