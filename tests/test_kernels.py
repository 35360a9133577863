"""Every kernel against the slow float64 reference, on ordinary and awkward shapes."""
import importlib
import pkgutil

import numba
import numpy as np
import pytest

import charrnn.kernels
from charrnn import model

from charrnn.cells import NAMES
from charrnn.kernels.dropout import pcg64_fill
from charrnn.kernels import output
from charrnn.kernels.output import (KC, TRANSPOSED_BELOW_V, _output_layer_parallel, _output_layer_tiled,
                                     _softmax_xent_row, xent)
from charrnn.kernels.panels import LANES, add_panel, copy_block, copy_lanes
from charrnn.model import Layout, ModelSpec, Stack, init_params
from reference import n_states, reference_loss_and_grads

CELLS = list(NAMES)  # every registered cell
# (T, B, H, V, L): ordinary, then T=1, B=1, H=1, V=2, three layers, and H=37 over three weight
# panels of 16 units (the last one partial: two panels taken as a pair, one alone) with streams
# enough for every tile: 21 rows on one thread are 8 + 8 + 4 + 1 with AVX-512 (5 x 4 + 1 with
# AVX2) in the forward, and the backward's groups of 8, 8 and 5 (panels.stream_group); on two
# threads 11 + 10, groups 8 + 3 and 8 + 2; H=20, two panels, the second (partial) one's product
# made with the first's and kept for it (panels.recurrent_product, recurrent_grad)
SHAPES = [(7, 4, 5, 11, 1), (1, 3, 4, 6, 2), (5, 1, 3, 5, 1), (4, 3, 1, 4, 2), (6, 2, 3, 2, 1), (5, 2, 4, 7, 3),
          (3, 21, 37, 5, 2), (3, 21, 20, 5, 1)]


# the kernel modules that split their work into threads() blocks
BLOCKED_MODULES = [m for m in (importlib.import_module(f"charrnn.kernels.{info.name}")
                               for info in pkgutil.iter_modules(charrnn.kernels.__path__))
                   if "threads" in vars(m)]


@pytest.fixture(params=["1 thread", "all threads", "5 blocks"])
def n_threads(request, monkeypatch):
    """Threads split the streams: one thread takes them all; several take uneven blocks. Five
    blocks, whatever the machine's thread count (prange shares blocks out among the threads
    there are), split 21 streams unevenly and leave blocks without a stream where B < 5: so a
    block's share lost in a sum fails here on a one-core machine too."""
    before = numba.get_num_threads()
    numba.set_num_threads(1 if request.param == "1 thread" else numba.config.NUMBA_NUM_THREADS)
    if request.param == "5 blocks":
        assert BLOCKED_MODULES
        for module in BLOCKED_MODULES:
            monkeypatch.setattr(module, "threads", lambda: 5)
    yield request.param
    numba.set_num_threads(before)


def make_case(cell, T, B, H, V, L, seed=0):
    rng = np.random.default_rng(seed)
    spec = ModelSpec(cell, V, H, L)
    flat = init_params(spec, rng, np.float64)
    # move away from the init so no term is trivially 0; frozen tensors keep what their cell drew
    # (an echo-state reservoir is defined by its spectral radius), trained ones go back into
    # their cell's domain (rates in (0, 1], |u| bound)
    noise = rng.normal(0, 0.3, flat.shape)
    for name, v in Layout(spec).views(noise).items():
        if name in Layout(spec).frozen:
            v[...] = 0.0
    flat += noise
    Stack(spec, 1, 1, np.float64).constrain(flat)
    ids = rng.integers(0, V, (T, B)).astype(np.int32)
    targets = rng.integers(0, V, (T, B)).astype(np.int32)
    state0 = [[rng.normal(0, 0.5, (B, H)) for _ in range(n_states(cell))] for _ in range(L)]
    return spec, flat, ids, targets, state0


def run_stack(spec, flat, ids, targets, state0, dtype):
    """Classic full-window BPTT through the kernels: loss (mean, nats), flat grads, final state,
    top hidden states and the gradient w.r.t. the entering state."""
    T, B = ids.shape
    stack = Stack(spec, B, T, dtype)
    stack.ids[:] = ids
    stack.targets[:] = targets
    stack.set_state(0, [[s.astype(dtype) for s in st] for st in state0])
    params = flat.astype(dtype)
    grads = np.zeros_like(params)
    stack.forward(params, 0, T)
    loss = stack.output_grad(params, grads, 0, T, 1.0 / (T * B), through_frozen=True)
    dstate = stack.backward(params, grads, 0, T, through_frozen=True)  # every tensor's gradient
    dstate0 = [[d[k].copy() for k in stack.cell.states] for d in dstate]
    return loss / (T * B), grads, stack.get_state(T), stack.bufs[-1]["hs"][1:].copy(), dstate0


def reference_flat(spec, flat, ids, targets, state0):
    layout = Layout(spec)
    layers, out = layout.layer_views(flat)
    loss, glayers, gout, state, tops, dstate0 = reference_loss_and_grads(spec.cell, layers, out, ids, targets, state0)
    grads = np.zeros_like(flat)
    gl, go = layout.layer_views(grads)
    for dst, src in zip(gl + [go], glayers + [gout]):
        for k in dst:
            dst[k][...] = src[k]
    return loss, grads, state, tops, dstate0


def rel_err(a, b):
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}-B{}-H{}-V{}-L{}".format(*s))
def test_float64_matches_reference(cell, shape, n_threads):
    spec, flat, ids, targets, state0 = make_case(cell, *shape)
    loss, grads, state, tops, dstate0 = run_stack(spec, flat, ids, targets, state0, np.float64)
    ref_loss, ref_grads, ref_state, ref_tops, ref_dstate0 = reference_flat(spec, flat, ids, targets, state0)
    assert abs(loss - ref_loss) < 1e-12 * max(1.0, abs(ref_loss))
    np.testing.assert_allclose(tops, ref_tops, rtol=1e-11, atol=1e-13)
    for ours, ref in zip(state, ref_state):
        for a, b in zip(ours, ref):
            np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-13)
    for ours, ref in zip(dstate0, ref_dstate0):  # the gradient w.r.t. the entering state
        for a, b in zip(ours, ref):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-13)
    views, ref_views = Layout(spec).views(grads), Layout(spec).views(ref_grads)
    for name in views:
        np.testing.assert_allclose(views[name], ref_views[name], rtol=1e-9, atol=1e-13, err_msg=name)


@pytest.mark.parametrize("cell", CELLS)
def test_gradients_are_added_to_what_the_buffer_holds(cell, n_threads):
    """Every gradient kernel adds (+=) into the gradient buffer: accumulating two windows, or
    two ranks' shares, relies on it; a kernel that overwrote its share would pass every test
    that starts from zeros."""
    T, B, H, V, L = 3, 21, 37, 5, 2
    spec, flat, ids, targets, state0 = make_case(cell, T, B, H, V, L)
    _, from_zero, _, _, _ = run_stack(spec, flat, ids, targets, state0, np.float64)
    held = np.random.default_rng(1).normal(0, 1.0, flat.shape)
    stack = Stack(spec, B, T, np.float64)
    stack.ids[:] = ids
    stack.targets[:] = targets
    stack.set_state(0, state0)
    grads = held.copy()
    stack.forward(flat, 0, T)
    stack.output_grad(flat, grads, 0, T, 1.0 / (T * B), through_frozen=True)
    stack.backward(flat, grads, 0, T, through_frozen=True)
    views, ref_views, held_views = (Layout(spec).views(a) for a in (grads, from_zero, held))
    for name in views:
        np.testing.assert_allclose(views[name] - held_views[name], ref_views[name], rtol=1e-9, atol=1e-12,
                                   err_msg=name)


@pytest.mark.parametrize("cell", ["esn", "leaky"])
@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_an_update_of_frozen_layers_leaves_out_only_the_states_gradient(cell, dropout, n_threads, monkeypatch):
    """When no layer trains (the ESN), an update's output_grad leaves the top layer's state
    gradient out, the loss and the output layer's gradients the same as with it; a backward
    asked to go through the frozen layers then refuses, instead of reading a stale gradient, until
    an output_grad computes it. A layer that trains (leaky units) gets its state gradient whether
    asked for or not. An output_grad that fails part way leaves it torn: every backward that
    would read it refuses."""
    T, B, H, V, L = 4, 5, 19, 7, 2
    spec, flat, ids, targets, state0 = make_case(cell, T, B, H, V, L)
    runs = []
    for through_frozen in (False, True):
        stack = Stack(spec, B, T, np.float64, dropout=dropout)
        stack.ids[:] = ids
        stack.targets[:] = targets
        stack.set_state(0, state0)
        stack.dhs[-1][...] = 3.0  # what an earlier window left there
        grads = np.zeros_like(flat)
        stack.forward(flat, 0, T, np.random.default_rng(2) if dropout else None)
        loss = stack.output_grad(flat, grads, 1, T, 0.1, through_frozen=through_frozen)
        stack.backward(flat, grads, 1, T)
        runs.append((loss, grads, stack.dhs[-1].copy(), stack))
    (loss, grads, dtop, stack), (loss_with, grads_with, dtop_with, _) = runs
    assert loss == loss_with
    np.testing.assert_array_equal(grads, grads_with)
    assert (dtop_with[0] == 0.0).all() and not (dtop_with == 3.0).any()  # computed: step 0 counts nothing
    if cell == "esn":
        assert (dtop == 3.0).all()
        with pytest.raises(ValueError, match="through_frozen=True"):
            stack.backward(flat, grads, 1, T, through_frozen=True)
    else:
        np.testing.assert_array_equal(dtop, dtop_with)

    def failing(*args):
        raise RuntimeError("the output layer failed")

    with monkeypatch.context() as m:
        m.setattr(model, "output_layer", failing)
        with pytest.raises(RuntimeError, match="failed"):
            stack.output_grad(flat, np.zeros_like(flat), 1, T, 0.1, through_frozen=True)
    with pytest.raises(ValueError, match="failed part way"):
        stack.backward(flat, grads, 1, T, through_frozen=True)
    stack.output_grad(flat, np.zeros_like(flat), 1, T, 0.1, through_frozen=True)
    np.testing.assert_array_equal(stack.dhs[-1], dtop_with)
    stack.backward(flat, np.zeros_like(flat), 1, T, through_frozen=True)  # no longer refused


@pytest.mark.parametrize("cell", CELLS)
# H=37 spans a partial weight panel. Fewer steps there: the random RNN of that width is chaotic
# (spectral radius about 0.3 * sqrt(37) = 1.8), so over 20 steps it amplifies float32 rounding
# past 1e-5 in every unit alike (measured 1.2e-5 to 4.3e-5; the LSTM and GRU stay near 1e-6).
@pytest.mark.parametrize("T, H", [(20, 16), (8, 37)])
def test_float32_close_to_float64(cell, T, H):
    spec, flat, ids, targets, state0 = make_case(cell, T, 11, H, 13, 2, seed=1)
    loss64, g64, _, tops64, _ = run_stack(spec, flat, ids, targets, state0, np.float64)
    loss32, g32, _, tops32, _ = run_stack(spec, flat, ids, targets, state0, np.float32)
    assert g32.dtype == np.float32
    assert abs(loss32 - loss64) < 1e-5 * abs(loss64)
    assert rel_err(tops32, tops64) < 1e-5
    assert rel_err(g32, g64) < 1e-4


@pytest.mark.parametrize("cell", ["lstm", "peephole"])
def test_forget_bias_is_drawn_like_every_bias(cell):
    # PyTorch's initialisation, the forget gate included (no +1): U(-1/sqrt(H), 1/sqrt(H))
    H = 64
    spec = ModelSpec(cell, 5, H, 2)
    layers, _ = Layout(spec).layer_views(init_params(spec, np.random.default_rng(0)))
    bound = 1.0 / np.sqrt(H)
    for p in layers:
        forget = p["b"][H : 2 * H]
        assert np.all(np.abs(forget) <= bound) and forget.std() > 0.4 * bound
        assert abs(forget.mean()) < 0.3 * bound


def test_layout_views_cover_the_buffer_once():
    spec = ModelSpec("gru", 7, 4, 3)
    layout = Layout(spec)
    flat = np.zeros(layout.size)
    for i, v in enumerate(layout.views(flat).values()):
        v += i + 1  # each element is written by exactly one view
    assert np.all(flat > 0)
    assert sum(v.size for v in layout.views(flat).values()) == layout.size


def test_lstm_activations_unpack_the_panels():
    # H=37 spans three panels of 16 units, the last one partial: the gates and tanh(c) read back
    # by unit must satisfy the cell's own equations, which a misplaced panel or slot breaks
    spec, flat, ids, targets, state0 = make_case("lstm", 4, 5, 37, 6, 1, seed=3)
    stack = Stack(spec, 5, 4, np.float64)
    stack.ids[:] = ids
    stack.set_state(0, state0)
    stack.forward(flat, 0, 4)
    a = stack.cell.activations(stack.bufs[0], 37)
    hs, cs = stack.bufs[0]["hs"], stack.bufs[0]["cs"]
    assert all(v.shape == (4, 5, 37) for v in a.values())
    for gate in ("i", "f", "o"):
        assert ((a[gate] > 0) & (a[gate] < 1)).all()
    np.testing.assert_allclose(a["tanh(c)"], np.tanh(cs[1:]), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(a["o"] * a["tanh(c)"], hs[1:], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(a["f"] * cs[:-1] + a["i"] * a["g"], cs[1:], rtol=1e-12, atol=1e-12)


@numba.njit(cache=False)
def _copy_with(kind, dst, d0, src, s0, n):
    if kind == 0:
        copy_lanes(dst, d0, src, s0, n)
    else:
        copy_block(dst, d0, src, s0, n)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind, lengths", [(0, range(LANES + 1)), (1, range(3 * LANES + 6))])
def test_copy_intrinsics_copy_exactly_n_elements(dtype, kind, lengths):
    # whole panels take the vector path, other lengths (and a block's tail) the general one;
    # nothing outside dst[d0 : d0+n] may change
    rng = np.random.default_rng(1)
    src = rng.standard_normal(4 * LANES + 9).astype(dtype)
    for n in lengths:
        for s0, d0 in [(0, 0), (3, 5), (9, 1)]:
            dst = np.full(4 * LANES + 9, -7.0, dtype)
            expected = dst.copy()
            expected[d0 : d0 + n] = src[s0 : s0 + n]
            _copy_with(kind, dst, d0, src, s0, n)
            np.testing.assert_array_equal(dst, expected, err_msg=f"n={n} s0={s0} d0={d0}")


@numba.njit(cache=False)
def _add_panel_at(dst, d0, src, s0):
    add_panel(dst, d0, src, s0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_add_panel_adds_one_panel_exactly(dtype):
    # a panel of LANES sums at any offset, unaligned too, and nothing outside it; NaN and inf
    # arrive as they are
    rng = np.random.default_rng(4)
    src = rng.standard_normal(3 * LANES + 5).astype(dtype)
    src[LANES + 3], src[LANES + 4] = np.nan, np.inf
    for s0, d0 in [(0, 0), (3, 5), (LANES + 1, 2 * LANES), (2 * LANES + 5, 1)]:
        dst = rng.standard_normal(3 * LANES + 7).astype(dtype)
        expected = dst.copy()
        expected[d0 : d0 + LANES] += src[s0 : s0 + LANES]
        _add_panel_at(dst, d0, src, s0)
        np.testing.assert_array_equal(dst, expected, err_msg=f"s0={s0} d0={d0}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N, V", [(20, 1003), (80, 1003), (30, 3)])  # xent serial, threaded; remainder only
def test_softmax_xent_matches_numpy_and_keeps_nan(dtype, N, V):
    # a vocabulary long enough for the vector loops and their remainders, and one shorter than a
    # vector; a NaN or +inf logit anywhere (first, inside, last, the target itself, a whole row)
    # must make that row NaN, loss and gradient, and leave the others alone; a -inf logit is a
    # probability of 0, so only a -inf target makes the loss inf
    rng = np.random.default_rng(2)
    scale = 0.25
    logits = (rng.standard_normal((N, V)) * 4).astype(dtype)
    targets = rng.integers(0, V, N).astype(np.int32)
    nan_rows = [(1, 0, np.nan), (2, V // 2, np.nan), (3, V - 1, np.nan), (4, int(targets[4]), np.nan),
                (5, V - 1, np.inf), (6, 0, np.inf)]
    for r, v, value in nan_rows:
        logits[r, v] = value
    logits[7] = np.nan
    not_target = (int(targets[8]) + 1) % V
    logits[8, not_target] = -np.inf
    logits[9, int(targets[9])] = -np.inf
    bad = np.zeros(N, bool)
    bad[[r for r, _, _ in nan_rows] + [7]] = True

    z = logits.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        expected_loss = -np.log(p[np.arange(N), targets])
    expected_grad = scale * p
    expected_grad[np.arange(N), targets] -= scale

    grad, loss = logits.copy(), np.empty(N, dtype)
    for n in range(N):  # the row function the training step's output layer runs on every row
        loss[n] = _softmax_xent_row(grad[n], targets[n], dtype(scale))
    eval_loss = np.empty(N, dtype)
    xent(logits.copy(), eval_loss, targets)

    assert np.isnan(loss[bad]).all() and np.isnan(eval_loss[bad]).all()
    assert np.isnan(grad[bad]).all()
    assert loss[9] == np.inf and eval_loss[9] == np.inf
    good = ~bad
    good[9] = False
    assert np.isfinite(grad[good]).all() and np.isfinite(grad[9]).all()
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(loss[good], expected_loss[good], rtol=tol, atol=tol)
    np.testing.assert_allclose(eval_loss[good], expected_loss[good], rtol=tol, atol=tol)
    np.testing.assert_allclose(grad[good | (np.arange(N) == 9)], expected_grad[good | (np.arange(N) == 9)],
                               rtol=tol, atol=tol * scale)


def _zeros_then_prange(a):
    z = np.zeros(a.shape[0])  # an allocation numba parallelises (a second parfor) unless told not to
    for i in numba.prange(a.shape[0]):
        a[i] += 1.0 + z[i]


def _prange_only(a):
    for i in numba.prange(a.shape[0]):
        a[i] *= 2.0


def test_every_parallel_compile_keeps_the_kernels_options():
    """The parallel kernels' options (_jit.PARALLEL: prange loops only) hold for every compile in
    a process, not just the first: given as a dict, numba popped its keys while reading it, and
    a kernel's second signature, or any other kernel compiled after, got numba's defaults, under
    which the allocation becomes a loop of its own, fused with the prange. (Compiled here with
    PARALLEL but without numba's cache, whose kernels carry no diagnostics.)"""
    from charrnn.kernels._jit import ERROR_MODEL, FASTMATH, PARALLEL

    first, second = (numba.njit(fastmath=FASTMATH, error_model=ERROR_MODEL, parallel=PARALLEL)(f)
                     for f in (_prange_only, _zeros_then_prange))
    first(np.zeros(3))  # the first compile of the process's PARALLEL, if nothing compiled before
    for dtype in (np.float64, np.float32):
        a = np.zeros(5, dtype)
        second(a)
        assert (a == 1.0).all()
    for kernel in (first, second):
        for sig in kernel.signatures:
            diagnostics = kernel.get_metadata(sig)["parfor_diagnostics"]
            assert len(diagnostics.initial_parfors) == 1 and not diagnostics.fusion_enabled, sig


# vocabularies on both sides of the layouts' bound: a thread's rows transposed, and not
OUTPUT_VOCABULARIES = [9, TRANSPOSED_BELOW_V - 1, TRANSPOSED_BELOW_V, 1003]
# the tile's (tiled_fits: H a multiple of 32, V below the bound): V's rows in tiles of 8, 4 and
# 1 (13 = 8 + 4 + 1), and H of one pair of panels and of three
TILED_SHAPES = [(32, 9), (96, 13), (64, TRANSPOSED_BELOW_V - 1)]


def _output_case(N, H, V, dtype, seed=4):
    rng = np.random.default_rng(seed)
    h2d = rng.standard_normal((N, H)).astype(dtype)
    Wy = rng.standard_normal((H, V)).astype(dtype)
    by = rng.standard_normal(V).astype(dtype)
    targets = rng.integers(0, V, N).astype(np.int32)
    return h2d, Wy, by, targets


def _run_output_layer(tiled, logits, row_loss, targets, scale, h2d, Wy, by, dh2d, dWy, dby, n_blocks, into_h):
    if tiled:
        _output_layer_tiled(row_loss, targets, scale, h2d, Wy, by, dh2d, dWy, dby, n_blocks, into_h)
    else:
        _output_layer_parallel(logits, row_loss, targets, scale, h2d, Wy, by, dh2d, dWy, dby, n_blocks, into_h)


def _check_output_layer(tiled, dtype, N, H, V, n_blocks, into_h):
    """The training step's output layer, loss and every gradient, against NumPy in float64; the
    weight gradients are added to what the buffers held. Without into_h, the states' gradient is
    left as it was, the rest the same; with it, what dh2d held is overwritten (NaN here)."""
    scale = 0.25
    h2d, Wy, by, targets = _output_case(N, H, V, dtype)
    h2d[3] *= 60  # logits of +-hundreds: exp overflows unless the row's maximum comes off first
    logits, row_loss = np.zeros((N, V), dtype), np.zeros(N, dtype)
    dh2d = np.full((N, H), np.nan if into_h else 7.0, dtype)
    dWy, dby = np.ones((H, V), dtype), np.ones(V, dtype)
    _run_output_layer(tiled, logits, row_loss, targets, dtype(scale), h2d, Wy, by, dh2d, dWy, dby, n_blocks, into_h)

    z = h2d.astype(np.float64) @ Wy.astype(np.float64) + by
    m = z.max(axis=1, keepdims=True)
    p = np.exp(z - m)
    total = p.sum(axis=1, keepdims=True)
    expected_loss = np.log(total[:, 0]) + m[:, 0] - z[np.arange(N), targets]
    dz = scale * p / total
    dz[np.arange(N), targets] -= scale
    tol = 2e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(row_loss, expected_loss, rtol=tol, atol=tol)
    if into_h:
        np.testing.assert_allclose(dh2d, dz @ Wy.astype(np.float64).T, rtol=tol, atol=tol * scale)
    else:
        assert (dh2d == 7.0).all()
    np.testing.assert_allclose(dWy, 1.0 + h2d.astype(np.float64).T @ dz, rtol=tol, atol=tol * scale)
    np.testing.assert_allclose(dby, 1.0 + dz.sum(axis=0), rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("V", OUTPUT_VOCABULARIES)
@pytest.mark.parametrize("n_blocks", [1, 2, 5])
@pytest.mark.parametrize("into_h", [True, False])
def test_output_layer_matches_numpy(dtype, V, n_blocks, into_h):
    """On BLAS, in both of its layouts and over uneven blocks of rows."""
    _check_output_layer(False, dtype, 23, 6, V, n_blocks, into_h)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("H, V", TILED_SHAPES)
@pytest.mark.parametrize("N, n_blocks", [(23, 1), (23, 5), (2 * KC + 45, 1), (2 * KC + 45, 2)])
@pytest.mark.parametrize("into_h", [True, False])
def test_tiled_output_layer_matches_numpy(dtype, H, V, N, n_blocks, into_h):
    """On the tile, whatever tile this host chose (LLVM splits its vectors where they are wider
    than the host's): blocks of rows shorter than a pair of panels, and blocks of several KC
    rows ending in a partial pair."""
    _check_output_layer(True, dtype, N, H, V, n_blocks, into_h)


@pytest.mark.parametrize("tiled, V", [(False, V) for V in OUTPUT_VOCABULARIES] + [(True, V) for _, V in TILED_SHAPES])
@pytest.mark.parametrize("n_blocks", [1, 2, 5])
def test_output_layer_lets_a_nan_through_its_rows_and_the_weight_gradients(tiled, V, n_blocks):
    """A NaN in one row of the top layer's states, or an inf (whose logits are then +inf and
    -inf), makes that row's loss and its dh row NaN, and with them every weight gradient of the
    output layer (each sums over all rows); the other rows' losses and dh stay finite."""
    N, H = 23, 32 if tiled else 6
    h2d, Wy, by, targets = _output_case(N, H, V, np.float32)
    h2d[7, 2] = np.nan
    h2d[12, 0] = np.inf
    logits, row_loss, dh2d = np.zeros((N, V), np.float32), np.zeros(N, np.float32), np.zeros((N, H), np.float32)
    dWy, dby = np.ones((H, V), np.float32), np.ones(V, np.float32)
    _run_output_layer(tiled, logits, row_loss, targets, np.float32(1.0 / N), h2d, Wy, by, dh2d, dWy, dby, n_blocks,
                      True)
    bad = np.isin(np.arange(N), [7, 12])
    assert np.isnan(row_loss[bad]).all() and np.isfinite(row_loss[~bad]).all()
    assert np.isnan(dh2d[bad]).all() and np.isfinite(dh2d[~bad]).all()
    assert np.isnan(dWy).all() and np.isnan(dby).all()


@pytest.mark.parametrize("tile_rows, H, V, tiled", [(8, 64, 65, True), (8, 64, TRANSPOSED_BELOW_V, False),
                                                    (8, 48, 65, False), (4, 64, 65, False)])
def test_output_layer_runs_on_the_tile_where_it_was_chosen_and_fits(monkeypatch, tile_rows, H, V, tiled):
    """The 8-row tile (AVX-512), a vocabulary below the transposed layout's bound and H a whole
    number of pairs of panels: the tile's kernel; anything else, BLAS's. (Both give the same
    numbers: the tests above.)"""
    monkeypatch.setattr(output, "TILE_ROWS", tile_rows)
    ran = []
    monkeypatch.setattr(output, "_output_layer_tiled", lambda *args: ran.append("tile"))
    monkeypatch.setattr(output, "_output_layer_parallel", lambda *args: ran.append("blas"))
    N = 10
    h2d, Wy, by, targets = _output_case(N, H, V, np.float32)
    output.output_layer(np.zeros((N, V), np.float32), np.zeros(N, np.float32), targets, np.float32(0.1), h2d, Wy, by,
                        np.zeros((N, H), np.float32), np.zeros_like(Wy), np.zeros_like(by))
    assert ran == ["tile" if tiled else "blas"]


def _pcg64_words(x):
    from charrnn.kernels.dropout import WORD

    return np.array([x & WORD, x >> 64], np.uint64)


@numba.njit
def _pcg64_fill(state, inc, out, count):
    pcg64_fill(state, inc, out, count)  # an intrinsic: callable from jitted code only


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_blocks", [1, 2, 5])
def test_dropout_is_numpys_formula_bit_for_bit_and_keeps_nan(dtype, n_blocks):
    """The dropout kernels give what NumPy's draws, `(u < keep) / keep` cast to the model's dtype
    and its multiplies give, bit for bit, each thread drawing its own steps' uniforms (a window
    large enough that the threads draw at once): a draw equal to keep drops its unit; a NaN or
    inf input stays NaN where its unit is dropped (NaN * 0, inf * 0)."""
    from charrnn.kernels.dropout import drop, drop_grad, pcg64_starts

    n, B, H = 20, 16, 512  # 20 steps over 5 blocks: uneven; over 2: both threads draw at once
    drawn, again = np.random.default_rng(6), np.random.default_rng(6)
    u = again.random((n, B, H))
    keep = float(u[0, 0, 1])  # the unit whose draw is keep itself is dropped
    kept, dropped_at = np.argwhere(u < keep)[0], np.argwhere(u > keep)[0]
    x = np.random.default_rng(7).standard_normal((n, B, H)).astype(dtype)
    x[0, 0, 1] = np.nan
    x[tuple(kept)], x[tuple(dropped_at)] = np.nan, np.inf
    expected_mask = ((u < keep) / keep).astype(dtype)
    with np.errstate(invalid="ignore"):
        expected = x * expected_mask
    mask, dropped = np.full_like(x, 9.0), np.full_like(x, 9.0)
    drop(dropped, mask, x, *pcg64_starts(drawn, n, B, H, slice(0, B)), keep, dtype(1.0 / keep), n_blocks)
    np.testing.assert_array_equal(mask, expected_mask)
    np.testing.assert_array_equal(dropped, expected)
    assert mask[0, 0, 1] == 0.0 and mask[tuple(kept)] == dtype(1.0 / keep)
    assert np.isnan(dropped[0, 0, 1]) and np.isnan(dropped[tuple(kept)]) and np.isnan(dropped[tuple(dropped_at)])

    d = np.random.default_rng(8).standard_normal((n, B, H)).astype(dtype)
    d[1, 2, 3] = np.nan
    with np.errstate(invalid="ignore"):
        expected_d = d * mask
    drop_grad(d, mask, n_blocks)
    np.testing.assert_array_equal(d, expected_d)


def test_pcg64_fill_draws_numpys_doubles_and_advances_the_state():
    rng = np.random.default_rng(11)
    state = rng.bit_generator.state["state"]
    words, inc = _pcg64_words(state["state"]), _pcg64_words(state["inc"])
    out = np.full(1001, 9.0)
    _pcg64_fill(words, inc, out, 0)
    assert (out == 9.0).all()
    _pcg64_fill(words, inc, out, 1000)
    np.testing.assert_array_equal(out[:1000], rng.random(1000))
    assert out[1000] == 9.0
    assert int(words[0]) | int(words[1]) << 64 == rng.bit_generator.state["state"]["state"]


@pytest.mark.parametrize("rows", [slice(0, 6), slice(0, 2), slice(2, 5), slice(5, 6), slice(3, 3)])
def test_pcg64_starts_are_where_numpy_draws_each_steps_rows(rows):
    """From each start, a step's rows of what rng.random((n, total, width)) draws, in a row (a
    rank's streams under MPI); the generator left where that draw leaves it, its buffered 32-bit
    half included."""
    from charrnn.kernels.dropout import pcg64_starts

    n, total, width = 4, 6, 7
    drawn, again = np.random.default_rng(3), np.random.default_rng(3)
    for g in (drawn, again):
        g.random(3, dtype=np.float32)  # an odd number of 32-bit draws: half a 64-bit one is buffered
    starts, inc = pcg64_starts(drawn, n, total, width, rows)
    whole = again.random((n, total, width))
    for t in range(n):
        out = np.empty((rows.stop - rows.start) * width)
        _pcg64_fill(starts[t].copy(), inc, out, out.size)
        np.testing.assert_array_equal(out, whole[t, rows].reshape(-1))
    assert drawn.bit_generator.state == again.bit_generator.state
    assert drawn.random(dtype=np.float32) == again.random(dtype=np.float32)


def test_pcg64_starts_refuses_other_generators_and_leaves_them_alone():
    from charrnn.kernels.dropout import pcg64_starts

    for bits in (np.random.PCG64DXSM, np.random.MT19937, np.random.Philox):
        rng, twin = np.random.Generator(bits(1)), np.random.Generator(bits(1))
        with pytest.raises(TypeError, match="PCG64"):
            pcg64_starts(rng, 2, 3, 4, slice(0, 3))
        np.testing.assert_array_equal(rng.random(5), twin.random(5))


def _dropout_case(dtype, T=9, B=6, H=24, L=2, V=20):
    spec = ModelSpec("gru", V, H, L)
    params = init_params(spec, np.random.default_rng(0), dtype)
    stack = Stack(spec, B, T, dtype, dropout=0.3)
    stack.ids[:] = np.random.default_rng(3).integers(0, V, (T, B))
    return params, stack


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_training_forward_draws_each_layers_mask_in_order(dtype):
    """A training forward draws the masks of the layers' inputs, bottom to top, then the output
    layer's, each from the generator as NumPy's `rng.random` draws them, and leaves the generator
    where those draws leave it."""
    params, stack = _dropout_case(dtype)
    T, B, H, L = stack.T, stack.B, stack.spec.hidden, stack.spec.layers
    drawn, again = np.random.default_rng(7), np.random.default_rng(7)
    stack.forward(params, 0, T, drawn)
    for l in range(1, L + 1):
        mask = ((again.random((T, B, H)) < 0.7) / 0.7).astype(dtype)
        np.testing.assert_array_equal(stack.masks[l], mask)
        np.testing.assert_array_equal(stack.dropped[l], stack.bufs[l - 1]["hs"][1:] * mask)
    assert drawn.random() == again.random()


def test_a_window_from_a_later_step_draws_the_masks_of_its_steps_only():
    """Truncated BPTT with k1 < k2 runs the forward from a later step of the window: the masks of
    the steps before it stay as the last forward drew them, those after are drawn afresh."""
    params, stack = _dropout_case(np.float32)
    T, B, H, L, t0 = stack.T, stack.B, stack.spec.hidden, stack.spec.layers, 4
    drawn, again = np.random.default_rng(5), np.random.default_rng(5)
    stack.forward(params, 0, T, drawn)
    first = [m.copy() for m in stack.masks[1:]]
    stack.forward(params, t0, T, drawn)
    for l in range(1, L + 1):
        again.random((T, B, H))  # the first forward's draws
    for l in range(1, L + 1):
        mask = ((again.random((T - t0, B, H)) < 0.7) / 0.7).astype(np.float32)
        np.testing.assert_array_equal(stack.masks[l][:t0], first[l - 1][:t0])
        np.testing.assert_array_equal(stack.masks[l][t0:], mask)
        np.testing.assert_array_equal(stack.dropped[l][t0:], stack.bufs[l - 1]["hs"][t0 + 1 :] * mask)
    assert drawn.random() == again.random()
