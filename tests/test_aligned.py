"""The buffers the kernels load and store in whole vectors start on a cache line (aligned.py):
numpy's and numba's allocators start large arrays 16 or 32 bytes into one."""
import numpy as np
import pytest

from charrnn import aligned
from charrnn.config import CELLS
from charrnn.kernels.panels import line_zeros, scratch_rows, thread_sums
from charrnn.model import ModelSpec, Stack


def starts_on_a_line(a):
    # an empty array holds no vector (and numpy leaves an empty slice's address where it was)
    return a.size == 0 or a.ctypes.data % aligned.LINE == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [0, 1, 7, (3, 5), (101, 32, 128), (2, 0, 4), (100_003,)])
def test_zeros_and_ones_are_numpys_on_a_line(shape, dtype):
    for made, like in ((aligned.zeros(shape, dtype), np.zeros(shape, dtype)),
                       (aligned.ones(shape, dtype), np.ones(shape, dtype))):
        assert starts_on_a_line(made)
        assert made.shape == like.shape and made.dtype == like.dtype
        assert made.flags.c_contiguous and made.flags.writeable
        np.testing.assert_array_equal(made, like)
        made[...] = 3  # writes stay inside the array's own bytes
        assert np.all(made == 3)


def test_neighbouring_arrays_do_not_share_bytes():
    a, b = aligned.zeros((17, 3), np.float32), aligned.zeros((17, 3), np.float32)
    a[...] = 1
    assert not np.shares_memory(a, b) and np.all(b == 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_blocks, B, width", [(1, 1, 16), (2, 32, 112), (2, 3, 176), (4, 1000, 48)])
def test_the_kernels_scratch_starts_on_a_line(n_blocks, B, width, dtype):
    like = np.zeros(1, dtype)
    S = scratch_rows(n_blocks, B, width, like)
    assert S.shape == (n_blocks, B, width) and S.dtype == dtype and starts_on_a_line(S) and not S.any()
    sums = thread_sums(n_blocks, width, like)
    assert starts_on_a_line(sums) and not sums.any()
    for n in (0, 1, 5, 1000, 4099, 100_000):  # sizes numba's allocator put 32 bytes into a line
        z = line_zeros(n, like)
        assert z.shape == (n,) and starts_on_a_line(z) and not z.any()


def float_arrays(obj):
    """Every float array reachable from obj through lists, tuples and dicts."""
    if isinstance(obj, np.ndarray):
        return [obj] if obj.dtype.kind == "f" else []
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return [a for item in obj for a in float_arrays(item)]
    return []


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype, dropout", [(np.float32, 0.3), (np.float64, 0.0)])
def test_every_buffer_of_a_stack_starts_on_a_line(cell, dtype, dropout):
    stack = Stack(ModelSpec(cell, 65, 40, 2), 7, 9, dtype, dropout)
    arrays = float_arrays(list(vars(stack).values()))
    # the states, logits, gradients flowing back, the input table and the losses at least
    assert len(arrays) >= 2 * len(stack.bufs[0]) + 6
    assert [a.shape for a in arrays if not starts_on_a_line(a)] == []
