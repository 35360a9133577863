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
        made[...] = 3
        assert np.all(made == 3)
        raw = made.base  # the allocation around it: its other bytes untouched
        while raw is not None and raw.base is not None:
            raw = raw.base
        if made.size:
            start = made.ctypes.data - raw.ctypes.data
            outside = np.concatenate([raw[:start], raw[start + made.nbytes :]])
            assert outside.size == aligned.LINE and not outside.any()


def test_shapes_as_numpy_takes_them():
    assert aligned.zeros(np.int64(5), np.float32).shape == (5,)
    assert aligned.zeros(np.array(5), np.float32).shape == (5,)
    assert aligned.zeros((np.int32(2), 3), np.float64).shape == (2, 3)
    assert aligned.zeros((), np.float32).shape == ()
    for shape in (-1, (3, -2)):
        with pytest.raises(ValueError):
            np.zeros(shape, np.float32)
        with pytest.raises(ValueError):
            aligned.zeros(shape, np.float32)


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
    for n in (0, 1, 5, 1000, 4099, 100_000):  # many sizes: numba's allocator starts some off a line
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
    found = {id(a) for a in arrays}
    # among them every layer's states and saved values, and the packed weights (the scratch)
    assert all(id(a) in found for part in (stack.bufs, stack.scratch) for layer in part for a in layer.values())
    assert all(id(a) in found for a in (stack.logits, stack.row_loss, stack.onehot_table, *stack.dxproj, *stack.dhs))
    # but the logits, which only BLAS and the softmax's loops read, and BLAS was the slower with
    # them on a line (model.py)
    assert [a.shape for a in arrays if a is not stack.logits and not starts_on_a_line(a)] == []
