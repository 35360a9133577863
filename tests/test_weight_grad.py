"""The weight gradient's product on the register tile (kernels/weight_grad.py), against NumPy in
float64, and the choice between it and BLAS (blas.matmul_tn_acc)."""
import numpy as np
import pytest

from charrnn.kernels import blas
from charrnn.kernels._jit import block
from charrnn.kernels.panels import LANES
from charrnn.kernels.weight_grad import KC, MIN_PAIRS_COPIED, PAIR, tiled_tn_acc

# rows of a and b: none, fewer than a block, a block and one more, several blocks and a part
ROWS = (0, 1, 7, KC, KC + 1, 2 * KC + 37)
# out's rows (a's columns): tiles of 8, of 4 and single rows, and mixes of them
UNITS = (1, 3, 4, 8, 13, 15, 21)  # 15: single rows at the 5th to 7th places of a strip
# out's columns: part of a panel, one, one and a part, a pair, a pair and a part, several, and
# enough that each of two threads copies a's blocks (MIN_PAIRS_COPIED), a partial pair last
COLUMNS = (1, LANES - 1, LANES + 1, PAIR, PAIR + 1, 3 * PAIR - 5, 4 * PAIR, (2 * MIN_PAIRS_COPIED + 1) * PAIR - 5)


def expected(out, a, b):
    return out.astype(np.float64) + a.astype(np.float64).T @ b.astype(np.float64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_it_adds_a_transposed_product_like_numpy(dtype):
    rng = np.random.default_rng(0)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    for M in ROWS:
        for K in UNITS:
            for N in COLUMNS:
                a = rng.normal(size=(M, K)).astype(dtype)
                b = rng.normal(size=(M, N)).astype(dtype)
                out = rng.normal(size=(K, N)).astype(dtype)  # added to, not overwritten
                want = expected(out, a, b)
                tiled_tn_acc(out, a, b, 2)
                scale = max(1.0, np.sqrt(M))  # the sums' size
                np.testing.assert_allclose(out, want, rtol=0, atol=tol * scale, err_msg=f"M={M} K={K} N={N}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_sums_do_not_depend_on_the_number_of_threads(dtype):
    # each thread owns whole columns of out, and every element is summed over the rows in one
    # order: the same bits from 1 to 5 threads and more threads than pairs of panels; the last
    # pair, partial, is the one pair whose sums are added to out after the threads. With 17
    # pairs, 1 and 2 threads copy a's blocks, 3 and more read a in place: the same bits too.
    rng = np.random.default_rng(1)
    pairs = 2 * MIN_PAIRS_COPIED + 1
    a = rng.normal(size=(2 * KC + 37, 21)).astype(dtype)
    b = rng.normal(size=(2 * KC + 37, pairs * PAIR - 5)).astype(dtype)
    start = rng.normal(size=(21, pairs * PAIR - 5)).astype(dtype)
    fewest = {n: min(hi - lo for lo, hi in (block(pairs, n, i) for i in range(n))) for n in (1, 2, 3)}
    assert fewest[1] >= MIN_PAIRS_COPIED and fewest[2] >= MIN_PAIRS_COPIED  # every thread copies
    assert max(hi - lo for lo, hi in (block(pairs, 3, i) for i in range(3))) < MIN_PAIRS_COPIED  # none does
    results = []
    for n_blocks in (1, 2, 3, 5, pairs + 2):
        out = start.copy()
        tiled_tn_acc(out, a, b, n_blocks)
        results.append(out)
    for out in results[1:]:
        assert np.array_equal(out, results[0])
    np.testing.assert_allclose(results[0], expected(start, a, b), rtol=0, atol=1e-4)


def test_a_nan_reaches_every_sum_it_is_part_of():
    rng = np.random.default_rng(2)
    M, K, N = KC + 5, 13, PAIR + 3
    a = rng.normal(size=(M, K)).astype(np.float32)
    b = rng.normal(size=(M, N)).astype(np.float32)
    a[KC + 2, 9] = np.nan  # in the second block of rows: row 9 of out, every column
    b[3, N - 1] = np.inf  # in the last pair, which out holds only in part: a column of infinities
    out = np.zeros((K, N), np.float32)
    tiled_tn_acc(out, a, b, 2)
    assert np.isnan(out[9]).all()
    assert not np.isfinite(out[:, N - 1]).any()
    rest = np.delete(np.delete(out, 9, axis=0), N - 1, axis=1)
    assert np.isfinite(rest).all()


def test_matmul_tn_acc_takes_the_tile_only_where_it_was_chosen(monkeypatch):
    calls = []
    monkeypatch.setattr(blas, "tiled_tn_acc", lambda *args: calls.append("tile"))
    monkeypatch.setattr(blas, "blas_tn_acc", lambda *args: calls.append("blas"))
    a, b, out = np.zeros((6, 4), np.float32), np.zeros((6, 5), np.float32), np.zeros((4, 5), np.float32)
    monkeypatch.setattr(blas, "TILE_ROWS", 8)  # AVX-512
    blas.matmul_tn_acc(out, a, b, 2)
    # any array not C-contiguous: BLAS
    blas.matmul_tn_acc(out, a, np.zeros((6, 10), np.float32)[:, ::2], 2)
    blas.matmul_tn_acc(out, np.asfortranarray(a), b, 2)
    blas.matmul_tn_acc(np.zeros((4, 10), np.float32)[:, ::2], a, b, 2)
    monkeypatch.setattr(blas, "TILE_ROWS", 4)  # AVX2 or no extension: BLAS
    blas.matmul_tn_acc(out, a, b, 2)
    assert calls == ["tile", "blas", "blas", "blas", "blas"]


@pytest.mark.parametrize("a_rows, out_shape", [(5, (4, 5)), (6, (4, 6)), (6, (5, 5))])
def test_shapes_that_do_not_fit_are_refused_before_any_product(a_rows, out_shape):
    # the tile checks no bounds: a b shorter than a, or an out of the wrong shape, would have
    # it read and write past their ends
    a, b, out = np.zeros((a_rows, 4), np.float32), np.zeros((6, 5), np.float32), np.zeros(out_shape, np.float32)
    with pytest.raises(ValueError, match="shapes do not fit"):
        blas.matmul_tn_acc(out, a, b, 2)


@pytest.mark.parametrize("tile_rows", [4, 8])
def test_either_way_matmul_tn_acc_adds_the_same_product(monkeypatch, tile_rows):
    monkeypatch.setattr(blas, "TILE_ROWS", tile_rows)
    rng = np.random.default_rng(3)
    a = rng.normal(size=(300, 13)).astype(np.float32)
    b = rng.normal(size=(300, 2 * PAIR + 7)).astype(np.float32)
    out = rng.normal(size=(13, 2 * PAIR + 7)).astype(np.float32)
    want = expected(out, a, b)
    blas.matmul_tn_acc(out, a, b, 2)
    np.testing.assert_allclose(out, want, rtol=0, atol=2e-4)
