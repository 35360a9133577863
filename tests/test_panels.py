"""The recurrent product's register tile: chosen from the host's vector width, and every variant
correct on any machine (LLVM splits vectors wider than the hardware's, so all of them run here;
only their speed differs by machine)."""
import functools
import os
import platform
import subprocess
import sys
import types

import numba
import numpy as np
import pytest

from charrnn.kernels import panels
from charrnn.kernels.panels import LANES, tile_rows

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AVX2 = "+avx,+avx2,+fma,-avx512f,-avx512vl,+avx512fp16"  # the last, alone, is no reason for the wide tile
AVX512 = "+avx,+avx2,+fma,+avx512f,+avx512vl,+avx512bw,+avx512dq"


def test_tile_rows_follow_the_vector_width():
    assert tile_rows(AVX2) == 4
    assert tile_rows(AVX512) == 8
    assert tile_rows("") == 4


def tile_rows_in(cache_dir, **settings):
    """panels.TILE_ROWS in a fresh process with these NUMBA_* settings and no others of the
    CPU's (nothing is compiled)."""
    return panels_in(cache_dir, "panels.TILE_ROWS", **settings)


def panels_in(cache_dir, expression, **settings):
    """The printed value of an expression of `panels` in a fresh process with these NUMBA_*
    settings and no others of the CPU's."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir), PYTHONPATH=ROOT)
    for name in ("NUMBA_CPU_FEATURES", "NUMBA_CPU_NAME", "NUMBA_ENABLE_AVX"):
        env.pop(name, None)
    env.update(settings)
    out = subprocess.run([sys.executable, "-c", f"from charrnn.kernels import panels; print({expression})"],
                         env=env, capture_output=True, text=True, check=True).stdout
    return out.split()


def test_a_host_reporting_avx512_selects_the_8_row_tile(tmp_path):
    # numba compiles for NUMBA_CPU_FEATURES when set, and so the tile follows it
    assert tile_rows_in(tmp_path, NUMBA_CPU_FEATURES=AVX512) == ["8"]
    assert tile_rows_in(tmp_path, NUMBA_CPU_FEATURES=AVX2) == ["4"]


def test_the_features_are_those_numba_compiles_for_with_avx_turned_off(tmp_path):
    # numba drops every avx* feature of the host's for NUMBA_ENABLE_AVX=0, as by default on some
    # CPUs (panels.host_features): its code has no AVX-512, whatever the host has
    assert panels_in(tmp_path, "panels.host_features() == panels.numba_target()[1]", NUMBA_ENABLE_AVX="0") == ["True"]
    assert tile_rows_in(tmp_path, NUMBA_ENABLE_AVX="0") == ["4"]


def test_a_generic_cpu_name_selects_the_narrow_tile(tmp_path):
    # NUMBA_CPU_NAME=generic (portable caches) compiles for no extension at all: numba sets
    # the features to "" itself, whatever this host has
    assert tile_rows_in(tmp_path, NUMBA_CPU_NAME="generic") == ["4"]


X86 = platform.machine().lower() in ("x86_64", "amd64")
# llvmlite's new pass manager (0.44 on), which loop_vector_bits compiles its loop with
PROBES = hasattr(panels.llvm, "create_pass_builder")
LLVM = panels.llvm.llvm_version_info
ZEN4, ZEN5 = LLVM >= (16,), LLVM >= (19,)  # the LLVM that first knows them


@pytest.mark.skipif(not (X86 and PROBES), reason="LLVM's x86 CPUs, llvmlite's new pass manager")
@pytest.mark.parametrize("cpu, bits, known", [("skylake-avx512", 256, True), ("sapphirerapids", 256, True),
                                              ("znver4", 512, ZEN4), ("znver5", 512, ZEN5), ("haswell", 256, True),
                                              ("x86-64", 128, True)])
def test_the_loop_vectors_follow_the_cpus_tuning_not_only_its_extensions(cpu, bits, known):
    # each CPU with its own features (""): Intel's AVX-512 CPUs have 512-bit vectors, yet LLVM
    # vectorises loops for them 256 bits wide; for AMD's Zen 4 and 5, 512
    if not known:
        pytest.skip(f"LLVM {LLVM} does not know {cpu}")
    assert panels.loop_vector_bits(cpu, "") == bits


@pytest.mark.skipif(not (X86 and PROBES and ZEN4), reason="LLVM's x86 CPUs, Zen 4 among them, and llvmlite's new pass manager")
def test_copies_take_the_loop_vectors_width_of_the_cpu_numba_compiles_for(tmp_path):
    # each CPU with its own features, whatever this host has: float32 elements, a panel of 16
    # in one piece for Zen 4, in two for an Intel Xeon, with AVX-512 both; float64 in pieces of
    # 8 and 4; with no extension at all, SSE's 4 and 2
    pieces = "panels.copy_piece(32), panels.copy_piece(64)"
    assert panels_in(tmp_path, pieces, NUMBA_CPU_NAME="znver4", NUMBA_CPU_FEATURES="") == ["16", "8"]
    assert panels_in(tmp_path, pieces, NUMBA_CPU_NAME="skylake-avx512", NUMBA_CPU_FEATURES="") == ["8", "4"]
    assert panels_in(tmp_path, pieces, NUMBA_CPU_NAME="generic") == ["4", "2"]


def _recompiled(kernel, **names):
    fn = kernel.py_func
    scope = dict(fn.__globals__, **names)
    return numba.njit(types.FunctionType(fn.__code__, scope, fn.__name__, fn.__defaults__, fn.__closure__))


@functools.cache  # once a variant: compiled afresh for each of its tests, they took 30 s
def compiled_with(kernel, rows, fetch_ahead_above=None):
    """A kernel of panels.py compiled with TILE_ROWS = rows, whatever this host chose, and if
    given, FETCH_AHEAD_ABOVE for its choice to fetch the weights ahead (never in numba's cache on disk)."""
    if fetch_ahead_above is None:
        return _recompiled(kernel, TILE_ROWS=rows)
    fetches_ahead = _recompiled(panels.fetches_ahead, FETCH_AHEAD_ABOVE=fetch_ahead_above)
    return _recompiled(kernel, TILE_ROWS=rows, fetches_ahead=fetches_ahead)


def test_weights_larger_than_l2_are_fetched_ahead():
    lstm_weights = lambda H: np.zeros(panels.gate_panels_shape(H, H, 4), np.float32)  # 16 H^2 bytes
    assert panels.fetches_ahead(np.zeros(panels.FETCH_AHEAD_ABOVE // 4 + 1, np.float32))
    assert not panels.fetches_ahead(np.zeros(panels.FETCH_AHEAD_ABOVE // 4, np.float32))
    if panels.FETCH_AHEAD_ABOVE == 2 << 20:  # this machine's L2 of 2 MiB: an LSTM's 4 MiB at H=512
        assert panels.fetches_ahead(lstm_weights(512)) and not panels.fetches_ahead(lstm_weights(256))


def test_backward_loops_take_streams_a_group_at_a_time_where_the_weights_fit_in_l2():
    l2 = panels.FETCH_AHEAD_ABOVE
    assert panels.STREAM_GROUP == 8
    for rows in (1, 8, 16, 21):
        assert panels.stream_group(l2, rows) == 8  # within L2: 8 at a time
        assert panels.stream_group(l2 + 1, rows) == rows  # beyond it: all of the thread's at once
    assert panels.stream_group(l2 + 1, 0) == 1  # a block without streams still steps its (empty) range


def test_the_l2_size_is_read_from_sysfs(tmp_path):
    for name, level, size in (("index0", "1", "48K"), ("index1", "1", "32K"), ("index2", "2", "2048K"),
                              ("index3", "3", "32M")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "level").write_text(level + "\n")
        (tmp_path / name / "size").write_text(size + "\n")
    assert panels.l2_bytes(tmp_path) == 2 << 20
    (tmp_path / "index2" / "size").write_text("1M\n")
    assert panels.l2_bytes(tmp_path) == 1 << 20
    (tmp_path / "index2" / "size").write_text("garbled\n")
    assert panels.l2_bytes(tmp_path) == 1 << 20  # unreadable: the fallback
    (tmp_path / "index2" / "size").write_text("0K\n")
    assert panels.l2_bytes(tmp_path) == 1 << 20
    (tmp_path / "index2" / "size").write_text("2048K\n")
    (tmp_path / "index2" / "type").write_text("Instruction\n")  # an L2 for instructions only: not this
    assert panels.l2_bytes(tmp_path) == 1 << 20
    assert panels.l2_bytes(tmp_path / "missing") == 1 << 20


@pytest.mark.skipif(panels.TILE_ROWS != 8 or "+avx512f" not in panels.host_features().split(","),
                    reason="the wide tile compiles as x86 AVX-512 code only on such a host")
def test_the_wide_tile_fetching_ahead_prefetches_into_l2():
    # prefetcht1: LLVM's prefetch with locality 2, only in the tile that fetches ahead
    args = (np.zeros(64, np.float32), 0, 2, 8, 2, np.zeros((4, 2, LANES), np.float32), 0, 32,
            np.zeros(64, np.float32), 0, 16, 4, False)
    for tile, expected in ((panels._tile8x2_ahead, True), (panels._tile8x2, False)):
        product = _recompiled(panels.panel_pair_product, TILE_ROWS=8, _tile8x2_ahead=tile)
        product(*args)
        assert ("prefetcht1" in product.inspect_asm(product.signatures[0])) == expected


@pytest.mark.parametrize("tile", [4, 8])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_tile_variant_multiplies_like_numpy(tile, dtype):
    product = compiled_with(panels.panel_product, tile)
    rng = np.random.default_rng(tile)
    for rows in (0, 1, 3, 4, 5, 7, 8, 9, 12, 13, 16, 17, 21):  # whole tiles of 8, of 4, and single rows
        for K in (1, 5, 37):
            lda, ldc = K + 3, 2 * LANES + 5  # rows spaced wider than they are, as the cells lay them out
            A = rng.normal(size=rows * lda + 2).astype(dtype)
            P = rng.normal(size=(2, K, LANES)).astype(dtype)  # the second panel is the one multiplied
            C = rng.normal(size=rows * ldc + LANES + 1).astype(dtype)
            want = C.copy()
            for i in range(rows):
                want[1 + i * ldc: 1 + i * ldc + LANES] += A[2 + i * lda: 2 + i * lda + K] @ P[1]
            product(A, 2, lda, rows, K, P, K * LANES, C, 1, ldc)
            tol = 1e-12 if dtype == np.float64 else 2e-5
            np.testing.assert_allclose(C, want, rtol=tol, atol=tol, err_msg=f"rows={rows} K={K}")


@pytest.mark.parametrize("ahead", [False, True])
@pytest.mark.parametrize("tile", [4, 8])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_tile_variant_multiplies_two_panels_like_numpy(tile, dtype, ahead):
    # two panels of P, each into its own columns of C: neighbours in P and side by side in C for
    # the forward's gate blocks, a whole panel of P apart for the next panel of one gate, and
    # apart in C for the spare slot (8 rows and both panels at once in the wide tile); fetching
    # the panels beyond into L2 (ahead), past the end of P too, changes nothing
    product = compiled_with(panels.panel_pair_product, tile)
    rng = np.random.default_rng(10 + tile)
    for rows in (0, 1, 7, 8, 9, 16, 21):
        for K in (1, 5, 37):
            for c1 in (1 + LANES, 1 + 3 * LANES + 2):
                for second in (2, 3):  # panel 1 with panel 2 or 3
                    lda, ldc = K + 3, 4 * LANES + 5
                    A = rng.normal(size=rows * lda + 2).astype(dtype)
                    P = rng.normal(size=(4, K, LANES)).astype(dtype)
                    C = rng.normal(size=rows * ldc + 4 * LANES).astype(dtype)
                    want = C.copy()
                    for i in range(rows):
                        a = A[2 + i * lda: 2 + i * lda + K]
                        want[1 + i * ldc: 1 + i * ldc + LANES] += a @ P[1]
                        want[c1 + i * ldc: c1 + i * ldc + LANES] += a @ P[second]
                    product(A, 2, lda, rows, K, P, K * LANES, second * K * LANES, C, 1, c1, ldc, ahead)
                    tol = 1e-12 if dtype == np.float64 else 2e-5
                    np.testing.assert_allclose(C, want, rtol=tol, atol=tol,
                                               err_msg=f"rows={rows} K={K} c1={c1} second={second}")


@pytest.mark.parametrize("ahead", [False, True], ids=["in L2", "fetched ahead"])
@pytest.mark.parametrize("tile", [4, 8])
@pytest.mark.parametrize("gates", [1, 2, 3, 4])
@pytest.mark.parametrize("H", [20, 37, 48, 64])  # 2, 3, 3 and 4 panels, the last one short or whole
def test_recurrent_product_gives_every_panel_its_product_in_order(tile, gates, H, ahead):
    # the forward visits panels 0, 1, 2, ... of a step, each adding its product of every gate
    # block into that gate's slot; with the wide tile, an odd gate block left over (every block
    # of a one-gate cell) is computed for the next panel too, into the spare slot: each panel
    # must still find exactly its own product added to its slots, bit for bit as panel by panel
    # computes it, and nothing in the other slots or in another thread's rows, before or after.
    # (compiled_with sets the tile of recurrent_product alone: on an AVX2 host the products it
    # calls keep 4 rows, and the test checks the spare slot's bookkeeping, not the wide tile.)
    # (ahead: weights of any size count as larger than L2, so the wide tile fetches ahead)
    product = compiled_with(panels.recurrent_product, tile, 0 if ahead else 1 << 62)
    one_by_one = compiled_with(panels.recurrent_product, 4)
    rng = np.random.default_rng(gates + H)
    T, B, slots = 2, 22, gates + 3  # rows 2..19: tiles of 8 and a single row
    spare = slots - 1
    W = rng.normal(size=(H, gates * H))
    Wp = np.zeros(panels.gate_panels_shape(H, H, gates))
    panels.pack_gate_panels(W, Wp)
    hs = rng.normal(size=(T, B, H))
    S = rng.normal(size=(B, slots * LANES))
    for p in range(Wp.shape[0]):
        S[:, : gates * LANES] = rng.normal(size=(B, gates * LANES))  # what a cell puts there first
        before = S.copy()
        product(hs, 1, Wp, S, p, 2, B - 3, spare)
        n = min(LANES, H - p * LANES)
        for g in range(gates):
            cols = slice(g * H + p * LANES, g * H + p * LANES + n)
            want = before[2:-3, g * LANES: g * LANES + n] + hs[1, 2:-3] @ W[:, cols]
            np.testing.assert_allclose(S[2:-3, g * LANES: g * LANES + n], want, rtol=1e-12, atol=1e-12,
                                       err_msg=f"p={p} g={g}")
        np.testing.assert_array_equal(S[:2], before[:2])  # other threads' rows
        np.testing.assert_array_equal(S[-3:], before[-3:])
        np.testing.assert_array_equal(S[:, gates * LANES: spare * LANES], before[:, gates * LANES: spare * LANES])
        if tile == 4:
            continue
        exact = before.copy()  # panel by panel, the same sums to the last bit
        one_by_one(hs, 1, Wp, exact, p, 2, B - 3, spare)
        np.testing.assert_array_equal(S[:, : gates * LANES], exact[:, : gates * LANES])


@pytest.mark.parametrize("ahead", [False, True], ids=["in L2", "fetched ahead"])
@pytest.mark.parametrize("tile", [4, 8])
def test_recurrent_grad_gives_every_panel_its_product_in_order(tile, ahead):
    # the backward visits panels 0, 1, 2, ... of a step; with the wide tile an even panel also
    # computes the next one into the spare slot, and the odd one takes it from there: each
    # panel must still find its own product in slot 0, and nothing in the slots between
    grad = compiled_with(panels.recurrent_grad, tile, 0 if ahead else 1 << 62)
    rng = np.random.default_rng(3)
    T, B, H, slots, spare = 3, 21, 37, 4, 3
    G = 4 * H
    W = rng.normal(size=(H, G))
    WTp = np.zeros(panels.transposed_panels_shape(H, G))
    panels.pack_transposed_panels(W, WTp)
    dA = rng.normal(size=(T, B, G))
    S = rng.normal(size=(B, slots * LANES))
    between = S[:, LANES:spare * LANES].copy()
    for t in (1, T):  # T: past the window, zero
        for p in range(WTp.shape[0]):
            grad(dA, t, WTp, S, p, 2, B, spare)
            n = min(LANES, H - p * LANES)
            want = dA[t, 2:] @ W[p * LANES: p * LANES + n].T if t < T else np.zeros((B - 2, n))
            np.testing.assert_allclose(S[2:, :n], want, rtol=1e-12, atol=1e-12, err_msg=f"t={t} p={p}")
            np.testing.assert_array_equal(S[:, LANES:spare * LANES], between)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("H, K, gates", [(5, 5, 4), (16, 16, 3), (37, 37, 1), (40, 21, 2), (128, 128, 4)])
def test_both_packs_are_the_matrix_cut_into_panels(H, K, gates, dtype):
    """Every element of both packed buffers is written (they start as NaN): the matrix's, and
    zero past unit H in the last panel, whether H, K and G are multiples of LANES or not."""
    rng = np.random.default_rng(H + K + gates)
    W = rng.standard_normal((K, gates * H)).astype(dtype)
    P = np.full(panels.gate_panels_shape(H, K, gates), np.nan, dtype)
    panels.pack_gate_panels(W, P)
    padded = np.zeros((K, gates, panels.n_panels(H) * LANES), dtype)
    padded[:, :, :H] = W.reshape(K, gates, H)
    want = padded.reshape(K, gates, -1, LANES).transpose(2, 1, 0, 3)
    assert np.array_equal(P, want)

    W = rng.standard_normal((H, gates * H)).astype(dtype)  # Wh (H, G): its transpose's panels
    P = np.full(panels.transposed_panels_shape(H, gates * H), np.nan, dtype)
    panels.pack_transposed_panels(W, P)
    rows = np.zeros((panels.n_panels(H) * LANES, gates * H), dtype)
    rows[:H] = W
    want = rows.reshape(-1, LANES, gates * H).transpose(0, 2, 1)
    assert np.array_equal(P, want)
