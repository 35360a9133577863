"""The per-step recurrent product on weights packed once per window.

Every step multiplies the state (B rows) by the same recurrent matrix. BLAS copies ("packs")
the whole matrix into its own layout on every call, which at B=32 costs as much as the
arithmetic. Here the matrix is packed once per window into panels of LANES columns, each panel
a contiguous (K, LANES) block, and a small register-tiled kernel streams a panel past a few rows
of the state at a time.

The cells walk a step panel by panel: the products of one panel's units (LANES units of every
gate), then the gate math of those units while they are still in cache. Threads split the
streams, so no thread waits for another until the window is done. (Splitting the units
instead needs a meeting of the threads after every step; measured side by side on a Zen 5 it
was no faster, even at H=512 where each thread then reads only half the weights; on an Intel
Xeon, where weights beyond L2 come from L3, the product alone could gain at most 1.12x.) With
AVX-512's tile, weights larger than a core's L2 are fetched into it ahead of their use
(FETCH_AHEAD_ABOVE).
"""
import functools
from pathlib import Path

import numpy as np
from llvmlite import binding as llvm, ir
from numba import prange, types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic

from ..aligned import LINE
from ._jit import kernel, parallel_kernel

LANES = 16  # columns per panel: two 8-wide float32 vectors on AVX2 (float64, for checks, spills)
# the name of LLVM's prefetch for this LLVM: typed pointers (i8*) before LLVM 15, opaque after
_PREFETCH = "llvm.prefetch.p0" if llvm.llvm_version_info >= (15,) else "llvm.prefetch.p0i8"


def _same_contiguous_arrays(*arrays):
    """The intrinsics compute raw element offsets and load whole vectors aligned to the element
    size: refuse, at compile time, anything but C-contiguous float arrays of one dtype, instead
    of reading memory under the wrong type. (numba types every NumPy array as aligned, so a
    view starting between two elements would pass; every caller's arrays are whole elements
    apart: from np.zeros, aligned.zeros or line_empty, whose floats start on a cache line, and
    slices of them.)"""
    for a in arrays:
        if (not isinstance(a, types.Array) or a.layout != "C" or not a.aligned
                or a.dtype not in (types.float32, types.float64)):
            raise TypingError(f"expected an aligned C-contiguous float32 or float64 array, got {a}")
        if a.dtype != arrays[0].dtype:
            raise TypingError(f"mixed dtypes: {arrays[0].dtype} and {a.dtype}")


def _emit_tile(builder, rows, panels, a_ptr, lda, ka, p_ptr, pstep, c_ptr, ldc, K, cstep, fetch_ahead, store=False):
    """The code of _tile_intrinsic's tile at `builder`, on pointers to A's, P's and C's first
    elements (float or double, the same for all three); ka None for A's elements along k next
    to each other."""
    scalar = a_ptr.type.pointee
    vec = ir.VectorType(scalar, LANES)
    bits = 32 if isinstance(scalar, ir.FloatType) else 64
    align = bits // 8
    # fmuladd: a fused multiply-add where the target has one; NaN and Inf propagate
    fma = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vec, [vec, vec, vec]), f"llvm.fmuladd.v{LANES}f{bits}")
    intp_t = lda.type
    zero = ir.Constant(vec, [0.0] * LANES)
    broadcast = ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES)
    lanes = ir.Constant(intp_t, LANES)
    acc = [[cgutils.alloca_once_value(builder, zero) for _ in range(panels)] for _ in range(rows)]
    with cgutils.for_range(builder, K) as loop:
        k = loop.index
        b = []  # row k of each panel
        for q in range(panels):
            at = builder.add(builder.mul(ir.Constant(intp_t, q), pstep), builder.mul(k, lanes))
            b.append(builder.load(builder.bitcast(builder.gep(p_ptr, [at]), vec.as_pointer()), align=align))
        if fetch_ahead:
            for q in range(panels):
                at = builder.add(builder.mul(ir.Constant(intp_t, q + panels), pstep), builder.mul(k, lanes))
                _emit_prefetch(builder, builder.gep(p_ptr, [at]), write=False, locality=2)
        a_k = k if ka is None else builder.mul(k, ka)
        for r in range(rows):
            a_at = builder.add(builder.mul(ir.Constant(intp_t, r), lda), a_k)
            a = builder.load(builder.gep(a_ptr, [a_at]))
            a = builder.insert_element(ir.Constant(vec, ir.Undefined), a, ir.Constant(ir.IntType(32), 0))
            a = builder.shuffle_vector(a, ir.Constant(vec, ir.Undefined), broadcast)
            for q in range(panels):
                builder.store(builder.call(fma, [a, b[q], builder.load(acc[r][q])]), acc[r][q])
    for r in range(rows):
        for q in range(panels):
            at = builder.add(builder.mul(ir.Constant(intp_t, r), ldc), builder.mul(ir.Constant(intp_t, q), cstep))
            out = builder.bitcast(builder.gep(c_ptr, [at]), vec.as_pointer())
            total = builder.load(acc[r][q])
            if not store:
                total = builder.fadd(builder.load(out, align=align), total)
            builder.store(total, out, align=align)


def _tile_intrinsic(rows, panels=1, a_step=False, fetch_ahead=False, store=False):
    """An intrinsic computing, for r < rows, q < panels and j < LANES,

        C[c0 + r*ldc + q*cstep + j] += sum_{k < K} A[a0 + r*lda + k] * P[p0 + q*pstep + k*LANES + j]

    on the data of contiguous arrays A, P, C (any number of dimensions; offsets in elements):
    `panels` (K, LANES) panels, pstep apart in P, each into LANES columns of C, cstep apart. The
    rows x panels x LANES partial sums live in vector registers for the whole loop over k:
    written with LLVM vector types, because numba's loops would be vectorised along k instead.
    With a_step, A's elements along k are `ka` apart (an argument after lda), A[a0 + r*lda +
    k*ka]: a transposed A, read in place or from a copy in strips (weight_grad.py).
    With fetch_ahead, row k of the panels `panels * pstep` further on is fetched into L2 as row k
    of these is read (see FETCH_AHEAD_ABOVE): there, the next panels a step reads. A prefetch is
    a hint, even past the end of P: it reads nothing into the sums and never faults.
    With store, C[...] = the sum: what C held is neither read nor kept."""
    if fetch_ahead and (a_step or store):
        raise ValueError("a tile fetching ahead reads A's rows in place and adds into C")

    def codegen(context, builder, signature, args):
        args, arg_types = list(args), list(signature.args)
        ka_ = None
        if a_step:  # ka, after lda: set aside, the other arguments as without it
            ka_ = args.pop(3)
            arg_types.pop(3)
        A_, a0_, lda_, P_, p0_, pstep_, C_, c0_, ldc_, K_, cstep_ = args

        def data(i, value, offset):
            ptr = context.make_array(arg_types[i])(context, builder, value).data
            return builder.gep(ptr, [offset])

        a_ptr, p_ptr, c_ptr = data(0, A_, a0_), data(3, P_, p0_), data(6, C_, c0_)
        if not fetch_ahead:
            _emit_tile(builder, rows, panels, a_ptr, lda_, ka_, p_ptr, pstep_, c_ptr, ldc_, K_, cstep_, fetch_ahead=False,
                       store=store)
            return context.get_dummy_value()
        # Out of line, in a function of its own that LLVM does not inline: the same tile inlined
        # beside the other in the cells' steps made them 2% slower at H=128-256, where it never runs.
        # Internal to each module: modules compiled with other options (numba flags a
        # module's instructions after this) hold different code under the one name.
        ptr_t, intp_t = a_ptr.type, a0_.type
        name = f"charrnn_tile{rows}x{panels}_ahead_f{signature.args[0].dtype.bitwidth}"
        fn = builder.module.globals.get(name)
        if fn is None:
            fn = ir.Function(builder.module, ir.FunctionType(ir.VoidType(), [ptr_t, intp_t, ptr_t, intp_t, ptr_t,
                                                                            intp_t, intp_t, intp_t]), name)
            fn.linkage = "internal"
            fn.attributes.add("noinline")
            body = ir.IRBuilder(fn.append_basic_block("entry"))
            a, lda, p, pstep, c, ldc, K, cstep = fn.args
            _emit_tile(body, rows, panels, a, lda, None, p, pstep, c, ldc, K, cstep, fetch_ahead=True)
            body.ret_void()
        builder.call(fn, [a_ptr, lda_, p_ptr, pstep_, c_ptr, ldc_, K_, cstep_])
        return context.get_dummy_value()

    def typed(A, P, C):  # the signature, once the arrays are checked
        _same_contiguous_arrays(A, P, C)
        intp = types.intp
        return types.void(A, intp, intp, *([intp] if a_step else []), P, intp, intp, C, intp, intp, intp, intp)

    if a_step:
        @intrinsic
        def tile(typingctx, A, a0, lda, ka, P, p0, pstep, C, c0, ldc, K, cstep):
            return typed(A, P, C), codegen
    else:
        @intrinsic
        def tile(typingctx, A, a0, lda, P, p0, pstep, C, c0, ldc, K, cstep):
            return typed(A, P, C), codegen

    return tile


def tile_rows(features: str) -> int:
    """Rows of the register tile on a CPU with these LLVM features ("+avx2,-avx512f,..."). Each
    row keeps LANES float32 sums in registers: two 8-wide vectors with AVX2, one 16-wide with
    AVX-512. Two FMA pipes with a latency of about 4 cycles need 8 independent sums in flight:
    4 rows with AVX2 (8 of its 16 registers; 8 rows would spill), 8 with AVX-512 (8 of 32).
    AVX-512 has registers for more: where two panels are multiplied by the same rows (the
    forward's gate blocks two by two, a block left over with its next panel, and the backward's
    neighbouring panels), its tile takes both at once, 16 sums (panel_pair_product)."""
    return 8 if "+avx512f" in features.split(",") else 4


def host_features() -> str:
    """The features numba compiles for: NUMBA_CPU_FEATURES when set, else the host's as numba
    takes them. Where numba's AVX is off (NUMBA_ENABLE_AVX=0; its default for the CPUs LLVM
    names sandybridge, ivybridge, corei7-avx, core-avx-i or nocona, as some virtual machines
    report themselves, and where the OS does not enable AVX) it drops every avx* feature: no
    AVX-512 code, and the narrow tile, where the host's own list would have chosen the wide one.
    (LLVM brings AVX, even AVX2, back from features left on that need it: fma, f16c, vaes.)
    numba sets the features to "" itself for NUMBA_CPU_NAME=generic (portable caches): then
    none, and the narrow tile."""
    from numba.core import codegen, config

    if config.CPU_FEATURES is not None:
        return config.CPU_FEATURES
    return codegen.get_host_cpu_features()


def loop_vector_bits(cpu: str, features: str) -> int | None:
    """The width, in bits, of the vectors LLVM's loop vectoriser makes of a float32 loop for this
    CPU and these features: found by compiling one, since it follows LLVM's tuning for the CPU
    as well as its vector extensions. For Intel's CPUs with AVX-512 (Skylake-SP to Sapphire
    Rapids and after) LLVM prefers 256-bit vectors where it vectorises loops itself, so the
    cells' gate math runs 8 floats wide there, beside the tiles' 16; for AMD's Zen 4 and 5 it
    uses all 512 bits; with AVX2, 256; with SSE, and on any other architecture (no ymm or zmm
    in its code), 128. The probe's loop is long; the cells' gate-math loops are at most a panel
    (16 units, slot_width) long, which a vector of this width divides. None where this
    llvmlite has no new pass manager to compile it with (llvmlite before 0.44)."""
    if not hasattr(llvm, "create_pass_builder"):
        return None
    module = ir.Module("vector_width_probe")
    f32, i64 = ir.FloatType(), ir.IntType(64)
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [f32.as_pointer(), f32.as_pointer(), i64]), "probe")
    a, b, n = fn.args
    for arg in (a, b):
        arg.add_attribute("noalias")
    entry, loop, done = (fn.append_basic_block(name) for name in ("entry", "loop", "done"))
    builder = ir.IRBuilder(entry)
    builder.cbranch(builder.icmp_signed(">", n, ir.Constant(i64, 0)), loop, done)
    builder = ir.IRBuilder(loop)  # a[i] = a[i] * b[i] + 1 for i < n
    i = builder.phi(i64)
    x = builder.fmul(builder.load(builder.gep(a, [i])), builder.load(builder.gep(b, [i])))
    builder.store(builder.fadd(x, ir.Constant(f32, 1.0)), builder.gep(a, [i]))
    following = builder.add(i, ir.Constant(i64, 1))
    i.add_incoming(ir.Constant(i64, 0), entry)
    i.add_incoming(following, loop)
    builder.cbranch(builder.icmp_signed("<", following, n), loop, done)
    ir.IRBuilder(done).ret_void()
    code = assembly(module, cpu, features)
    return 512 if "zmm" in code else 256 if "ymm" in code else 128


def assembly(module, cpu: str, features: str) -> str:
    """The machine code of an llvmlite IR module for this CPU and these features, optimised as
    -O3 (llvmlite's new pass manager, 0.44 on)."""
    llvm.initialize_native_target()  # done already where numba has compiled; repeating is harmless
    llvm.initialize_native_asmprinter()
    compiled = llvm.parse_assembly(str(module))
    machine = llvm.Target.from_triple(llvm.get_process_triple()).create_target_machine(cpu=cpu, features=features,
                                                                                       opt=3)
    passes = llvm.create_pass_builder(machine, llvm.create_pipeline_tuning_options(speed_level=3))
    passes.getModulePassManager().run(compiled, passes)
    return machine.emit_assembly(compiled)


def numba_target() -> tuple[str, str]:
    """(cpu, features): what numba compiles the kernels for, as its cache key names them."""
    from numba.core.registry import cpu_target

    _, cpu, features = cpu_target.target_context.codegen().magic_tuple()
    return cpu, features


@functools.cache
def loop_bits() -> int | None:
    """loop_vector_bits for the CPU and features numba compiles the kernels for (numba_target);
    None where it cannot be found. A probe that fails (an llvmlite whose API moved) leaves the
    copies whole panels, as they were before, rather than failing every kernel's compilation:
    the tests of the probe fail instead."""
    cpu, features = numba_target()
    try:
        return loop_vector_bits(cpu, features)
    except Exception:  # noqa: BLE001 (see above)
        return None


@functools.cache
def copy_piece(element_bits: int) -> int:
    """How many elements the copies below (and add_panel) move at a time, of elements this
    wide: as many as one of the loop vectoriser's vectors holds (loop_bits), at most a panel.
    The cells' gate math writes a scratch row's slots in such vectors, and the copies that save
    them read the slots right after: a load that spans two stores still in flight cannot take
    their data from the store buffer, and waits until both reach the cache, behind the window's
    stores to memory. On an Intel Xeon with AVX-512 (8-wide gate math), with whole-panel copies
    the store right after such a load held 19%-31% of the LSTM forward's panel samples; in
    pieces, whole updates of every cell ran 0.98x-1.07x as fast at H=128-256 (most
    1.02x-1.05x), 0.97x-1.07x at H=512 and 0.97x-1.02x at V=6000, side by side; AVX2 code
    (8-wide already) 0.96x-1.02x, unchanged. Called at compile time only: code loaded from
    numba's cache was compiled for the same CPU and features. A whole panel where the width is
    unknown."""
    bits = loop_bits()
    piece = LANES if bits is None else max(1, min(LANES, bits // element_bits))
    assert LANES % piece == 0, (LANES, piece)
    return piece


def l2_bytes(caches="/sys/devices/system/cpu/cpu0/cache") -> int:
    """A core's L2 data cache in bytes as Linux reports it (sysfs); 1 MiB where it does not."""
    for index in sorted(Path(caches).glob("index*")):
        try:
            if (index / "level").read_text().strip() != "2":
                continue
            kind = index / "type"  # Data, Instruction or Unified
            if kind.exists() and kind.read_text().strip() == "Instruction":
                continue
            size = (index / "size").read_text().strip().upper()
            scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1:], 1)
            size = int(size.rstrip("KMG")) * scale
        except (OSError, ValueError, UnicodeDecodeError):
            continue
        if size > 0:
            return size
    return 1 << 20


TILE_ROWS = tile_rows(host_features())  # a constant of the compiled kernels (numba's cache is per CPU)
# Recurrent weights larger than a core's L2 come from L3 at every step, as each thread reads all
# of them for its streams. Above this size the wide tile fetches the panels after the ones it
# multiplies into L2 as it goes (only its first 8 rows: the next 8 find them there). The
# per-step product alone, two threads, 100 steps (Intel Xeon, L2 2 MiB): 1.08x as fast at H=512
# (4 MiB of an LSTM's weights), 1.07x at 448, 1.03x at 384 (2.3 MiB), 1.00x at 320 (1.6 MiB); at
# H=128-256, within L2, 0.98x, hence the bound. (Like TILE_ROWS, fixed when the kernels compile:
# a numba cache carried to a machine with another L2 keeps this one's bound, for speed only.)
# The backward's groups of streams (stream_group) use the same bound.
FETCH_AHEAD_ABOVE = l2_bytes()
_tile8x2 = _tile_intrinsic(8, panels=2)
_tile8x2_ahead = _tile_intrinsic(8, panels=2, fetch_ahead=True)
_tile8 = _tile_intrinsic(8)
_tile4 = _tile_intrinsic(4)
_tile1 = _tile_intrinsic(1)


@kernel
def fetches_ahead(P):
    """Whether the wide tile's products on these packed weights fetch the next panels ahead."""
    return P.size * P.itemsize > FETCH_AHEAD_ABOVE


# Streams a backward time loop takes through the whole window at a time, where the recurrent
# weights fit in a core's L2 (stream_group).
STREAM_GROUP = 8


@kernel
def stream_group(weight_bytes, rows):
    """How many of a thread's `rows` streams its backward time loop takes through the whole
    window before the next ones (at least 1), for packed recurrent weights of weight_bytes.
    A backward step reads and writes a row of several window buffers for each stream (the GRU's
    at H=256: about 16 KB a stream), and the weights are read again at every step. The GRU's
    backward kernel at H=256 (768 KB of weights) took 2.65 us a character with 16 streams a
    thread, 2.08 with 8, and 2.25 with 16 taken 8 at a time; with the window's buffers cut to
    two steps' rows (a probe), 1.8 with 16 (Intel Xeon, L2 2 MiB, two threads). Our reading: a
    step of 16 streams' rows pushes some of the weights out of L2, although both would fit by
    size. Weights larger than L2 come from L3 at every step anyway, and every group would read
    them again (the LSTM at H=512, 4 MiB, in groups of 8: 0.92x as fast): there all the streams
    go at once. Whole updates with weights of 1.6-2.0 MiB, just within L2 (GRU H=384 and 416,
    LSTM H=320 and 352), in groups against all at once: 0.99x-1.02x."""
    if weight_bytes > FETCH_AHEAD_ABOVE:
        return max(rows, 1)
    return STREAM_GROUP


@kernel
def stream_groups(lo, hi, weight_bytes):
    """[(r0, r1)]: a thread's block of streams [lo, hi) cut into groups of stream_group's size,
    which its backward time loop takes through the whole window one after another."""
    rows = stream_group(weight_bytes, hi - lo)
    return [(r0, min(r0 + rows, hi)) for r0 in range(lo, hi, rows)]


@kernel
def panel_product(A, a0, lda, rows, K, P, p0, C, c0, ldc):
    """C[i, :LANES] += A[i, :K] @ panel for i < rows: A's row i starts at a0 + i*lda, C's at
    c0 + i*ldc, and the (K, LANES) panel at p0 of P. Arrays are contiguous. Tiles of TILE_ROWS
    rows, then of 4, then single rows."""
    r = 0
    if TILE_ROWS == 8:  # compiled in only where the host chose it
        while r + 8 <= rows:
            _tile8(A, a0 + r * lda, lda, P, p0, 0, C, c0 + r * ldc, ldc, K, 0)
            r += 8
    while r + 4 <= rows:
        _tile4(A, a0 + r * lda, lda, P, p0, 0, C, c0 + r * ldc, ldc, K, 0)
        r += 4
    while r < rows:
        _tile1(A, a0 + r * lda, lda, P, p0, 0, C, c0 + r * ldc, ldc, K, 0)
        r += 1


@kernel
def panel_pair_product(A, a0, lda, rows, K, P, p0, p1, C, c0, c1, ldc, ahead):
    """panel_product of two panels of P (at p0 and p1) into C's columns at c0 and c1
    (+ i*ldc for row i). With the 8-row tile, whole tiles take both panels at once: 8 rows of
    one panel load a row of the panel and 8 of A for 8 multiply-adds, and (our reading of the
    figures) wait on those loads; two panels share the 8 loads of A. Measured alone on AVX-512
    (Zen 5), K=128..512, rows of 16: 150-200 GFLOP/s a core panel by panel, 230-248 both at
    once, as fast as 3 or 4 panels at once. The other rows, and AVX2 (whose
    16 registers hold no second panel's sums), go panel by panel. With `ahead`, the first tile
    also fetches into L2 the two panels as far beyond these as p1 is from p0 (FETCH_AHEAD_ABOVE);
    the sums are the same."""
    r = 0
    if TILE_ROWS == 8:
        if ahead and rows >= 8:
            _tile8x2_ahead(A, a0, lda, P, p0, p1 - p0, C, c0, ldc, K, c1 - c0)
            r += 8
        while r + 8 <= rows:
            _tile8x2(A, a0 + r * lda, lda, P, p0, p1 - p0, C, c0 + r * ldc, ldc, K, c1 - c0)
            r += 8
    rest = rows - r
    panel_product(A, a0 + r * lda, lda, rest, K, P, p0, C, c0 + r * ldc, ldc)
    panel_product(A, a0 + r * lda, lda, rest, K, P, p1, C, c1 + r * ldc, ldc)


def n_panels(H):
    return (H + LANES - 1) // LANES


@parallel_kernel
def pack_gate_panels(W, P):
    """P[p, g, k, j] = W[k, g*H + p*LANES + j], zero past unit H: the recurrent matrix
    W (K, gates*H) cut into panels of LANES units per gate. P is (n_panels(H), gates, K, LANES).
    Threads take whole panels."""
    for p in prange(P.shape[0]):
        _pack_gate_panel(W, P, p)


@kernel
def _pack_gate_panel(W, P, p):
    K, gates = W.shape[0], P.shape[1]
    H = W.shape[1] // gates
    u0 = p * LANES
    n = min(LANES, H - u0)
    for g in range(gates):
        for k in range(K):
            copy_padded(P[p, g, k], W[k], g * H + u0, n)


@kernel
def copy_padded(dst, src, s0, n):
    """dst[:LANES] = src[s0 : s0+n], zeros past n (n <= LANES): a row of a panel, cut from a
    row of a matrix whose last panel may be partial. A whole panel is a copy's vector loads and
    stores (copy_piece)."""
    copy_lanes(dst, 0, src, s0, n)
    for j in range(n, LANES):
        dst[j] = 0.0


@parallel_kernel
def pack_transposed_panels(W, P):
    """P[p, c, j] = W[p*LANES + j, c], zero past row H: the panels of W^T for W (H, G), so
    that (B, G) @ W^T runs on panels too. P is (n_panels(H), G, LANES). Threads take whole
    panels."""
    for p in prange(P.shape[0]):
        _pack_transposed_panel(W, P, p)


@kernel
def _pack_transposed_panel(W, P, p):
    # a (LANES, G) strip of W's rows transposed into (G, LANES), LANES x LANES blocks at a time,
    # each read and written within L1. (Row by row over the whole strip, each of a row's G
    # writes went to another line; with that and the serial loops, both packs took 2.0 ms of an
    # LSTM update at H=512, now 0.95.)
    H, G = W.shape
    u0 = p * LANES
    n = min(LANES, H - u0)
    dst = P[p]
    whole = G - G % LANES
    for c0 in range(0, whole, LANES):
        for j in range(n):
            src = W[u0 + j]
            for c in range(c0, c0 + LANES):
                dst[c, j] = src[c]
    for j in range(n):
        for c in range(whole, G):
            dst[c, j] = W[u0 + j, c]
    for c in range(G):
        for j in range(n, LANES):
            dst[c, j] = 0.0


@kernel
def recurrent_product(hs, t, P, S, p, r0, r1, spare):
    """S[r, g*LANES : (g+1)*LANES] += hs[t, r] @ W for every gate block g of W, the units of
    panel p and the streams r in [r0, r1): step t's recurrent product, added into the first
    slots of the scratch rows S (B, k*LANES), from the panels P of pack_gate_panels.

    The gate blocks go two by two (panel_pair_product). A block left over (the only one of a
    one-gate cell) pairs with the same block of the next panel, as recurrent_grad does: with
    the 8-row tile, an even p also computes panel p+1's product of that gate into slot `spare`
    of S, and the odd p after it adds it from there. So a caller visits p = 0, 1, 2, ... in order, keeps
    slot `spare` for this alone, and has nothing in it between two panels; with an even number
    of gates, `spare` is never touched. (hs[t] is whole before the first panel: the step before
    wrote it.) The sums are those of panel by panel, bit for bit: a product starts from zero
    in registers and is added once to its slot, directly or from `spare`."""
    H, W, gates, n_panels = hs.shape[2], S.shape[1], P.shape[1], P.shape[0]
    panel = gates * H * LANES  # from a panel of P to the next one
    ahead = fetches_ahead(P)
    g = 0
    while g + 2 <= gates:  # the gate blocks two by two: their panels and slots are neighbours
        c0 = r0 * W + g * LANES
        at = p * panel + g * H * LANES
        panel_pair_product(hs[t], r0 * H, H, r1 - r0, H, P, at, at + H * LANES, S, c0, c0 + LANES, W, ahead)
        g += 2
    if g == gates:
        return
    if TILE_ROWS == 8 and p % 2 == 1:  # computed with panel p-1
        for r in range(r0, r1):
            add_panel(S[r], g * LANES, S[r], spare * LANES)  # a loop here stayed scalar
        return
    at = p * panel + g * H * LANES
    if TILE_ROWS == 8 and p + 1 < n_panels:
        for r in range(r0, r1):
            for j in range(LANES):
                S[r, spare * LANES + j] = 0.0
        c0 = r0 * W
        panel_pair_product(hs[t], r0 * H, H, r1 - r0, H, P, at, at + panel, S, c0 + g * LANES, c0 + spare * LANES, W,
                           ahead)
    else:
        panel_product(hs[t], r0 * H, H, r1 - r0, H, P, at, S, r0 * W + g * LANES, W)


@kernel
def recurrent_grad(dA, t, P, S, p, r0, r1, spare):
    """S[r, :LANES] = dA[t, r] @ W^T for the units of panel p and the streams r in [r0, r1): the
    gradient reaching the state before step t through step t's recurrent product, from dA
    (T, B, G), the gradient of the products' outputs; zero for t = T, past the window.
    S holds scratch rows (B, k*LANES); the caller's are [r0, r1).

    With the 8-row tile the panels go two by two, as in the forward (panel_pair_product): at an
    even p, panel p+1's product goes to slot `spare` of S, and the odd p after it takes it from
    there. So a caller visits p = 0, 1, 2, ... in order, and keeps slot `spare` for this alone.
    (dA[t] is whole before the first panel: the step after, or an earlier pass of this one,
    wrote it.) With AVX2's tile a pair is two panels' work anyway: each panel is its own."""
    G, W = dA.shape[2], S.shape[1]
    if TILE_ROWS == 8 and p % 2 == 1:
        for r in range(r0, r1):
            copy_lanes(S[r], 0, S[r], spare * LANES, LANES)
        return
    paired = TILE_ROWS == 8 and p + 1 < P.shape[0]
    for r in range(r0, r1):
        for j in range(LANES):
            S[r, j] = 0.0
            if paired:
                S[r, spare * LANES + j] = 0.0
    if t < dA.shape[0]:
        if paired:
            c0 = r0 * W
            panel_pair_product(dA[t], r0 * G, G, r1 - r0, G, P, p * G * LANES, (p + 1) * G * LANES, S, c0,
                               c0 + spare * LANES, W, fetches_ahead(P))
        else:
            panel_product(dA[t], r0 * G, G, r1 - r0, G, P[p], 0, S, r0 * W, W)


def _panel_pieces(context, builder, signature, args):
    """For the codegen of an intrinsic (dst, d0, src, s0, ...) on 1-D arrays of one dtype:
    pointers to dst[d0] and src[s0], the element size (the vectors' alignment), and pieces(at),
    the vector pointers into dst and src, copy_piece wide, of each piece of the panel `at`
    elements (an LLVM integer) past them."""
    dtype = signature.args[0].dtype
    to = builder.gep(context.make_array(signature.args[0])(context, builder, args[0]).data, [args[1]])
    frm = builder.gep(context.make_array(signature.args[2])(context, builder, args[2]).data, [args[3]])
    piece = copy_piece(dtype.bitwidth)
    piece_ptr = ir.VectorType(context.get_value_type(dtype), piece).as_pointer()

    def pieces(at):
        for k in range(0, LANES, piece):
            at_k = builder.add(at, ir.Constant(at.type, k))
            yield builder.bitcast(builder.gep(to, [at_k]), piece_ptr), builder.bitcast(builder.gep(frm, [at_k]), piece_ptr)

    return to, frm, dtype.bitwidth // 8, pieces


def _copy_intrinsic(whole_panels):
    """An intrinsic copy(dst, d0, src, s0, n): dst[d0 : d0+n] = src[s0 : s0+n] on 1-D arrays
    whose ranges do not overlap (every caller copies between a scratch row and another buffer).
    Intrinsics rather than functions, so that the many small copies cost no call and no
    reference counting. A whole panel of LANES elements is a few vector loads and stores, each
    as wide as the gate math's vectors (copy_piece). (Written as llvm.memmove of a constant
    size, LLVM merged it with the variable-size branch into one call of the C library's
    memmove: 7% of an LSTM update went to 64-byte calls.)
    Any other length is a memmove. With whole_panels the copy runs panel by panel, for blocks
    of several slots; without, a copy is one panel or less."""

    @intrinsic
    def copy(typingctx, dst, d0, src, s0, n):
        _same_contiguous_arrays(dst, src)
        intp = types.intp
        sig = types.void(dst, intp, src, intp, intp)

        def codegen(context, builder, signature, args):
            n_ = args[4]
            to, frm, itemsize, pieces = _panel_pieces(context, builder, signature, args)
            lanes = ir.Constant(n_.type, LANES)

            def copy_panel(at):  # each piece its own load and store
                for here, there in pieces(at):
                    builder.store(builder.load(there, align=itemsize), here, align=itemsize)

            if whole_panels:
                n_whole = builder.sdiv(n_, lanes)
            else:  # one panel if n == LANES, else none
                n_whole = builder.zext(builder.icmp_signed("==", n_, lanes), n_.type)
            with cgutils.for_range(builder, n_whole) as loop:
                copy_panel(builder.mul(loop.index, lanes))
            done = builder.mul(n_whole, lanes)
            rest = builder.sub(n_, done)
            with builder.if_then(builder.icmp_signed(">", rest, ir.Constant(n_.type, 0)), likely=False):
                cgutils.raw_memmove(builder, builder.gep(to, [done]), builder.gep(frm, [done]), rest, itemsize)
            return context.get_dummy_value()

        return sig, codegen

    return copy


copy_lanes = _copy_intrinsic(whole_panels=False)  # n <= LANES units of one slot
copy_block = _copy_intrinsic(whole_panels=True)  # several slots at once


@intrinsic
def add_panel(typingctx, dst, d0, src, s0):
    """dst[d0 : d0+LANES] += src[s0 : s0+LANES] on 1-D arrays, as vector loads, adds and stores
    as wide as the gate math's vectors (copy_piece: it too reads slots the gate math has just
    written). For sums kept in a buffer of their own across a time loop: the same loop over the
    lanes stays scalar, since LLVM cannot tell that the buffer and the scratch row it adds
    from do not overlap (a peephole LSTM update at H=256 took 7% longer). Like the tile, it
    checks no bounds: the callers size dst and src in whole panels (thread_sums, scratch rows).
    Also for two slots of one scratch row (recurrent_product's spare): each piece of both is
    loaded before its store, so dst and src may be one array."""
    _same_contiguous_arrays(dst, src)
    sig = types.void(dst, types.intp, src, types.intp)

    def codegen(context, builder, signature, args):
        _, _, itemsize, pieces = _panel_pieces(context, builder, signature, args)
        for here, there in pieces(ir.Constant(args[1].type, 0)):
            total = builder.fadd(builder.load(here, align=itemsize), builder.load(there, align=itemsize))
            builder.store(total, here, align=itemsize)
        return context.get_dummy_value()

    return sig, codegen


def _emit_prefetch(builder, ptr, write, locality):
    """LLVM's prefetch of the line at ptr, to read or to write; locality 3 fetches into L1 (x86's
    PREFETCHT0, or PREFETCHW to write), 2 into L2 (PREFETCHT1)."""
    i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                        _PREFETCH)
    builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, int(write)), ir.Constant(i32, locality),
                      ir.Constant(i32, 1)])  # the data cache


def _prefetch_intrinsic(write):
    """An intrinsic asking for the cache line holding arr[offset] ahead of its use: to read it,
    or with `write`, to write it (the line is fetched for ownership, so that the store later
    does not wait for it)."""

    @intrinsic
    def prefetch(typingctx, arr, offset):
        _same_contiguous_arrays(arr)
        sig = types.void(arr, types.intp)

        def codegen(context, builder, signature, args):
            arr_, offset_ = args
            ptr = builder.gep(context.make_array(signature.args[0])(context, builder, arr_).data, [offset_])
            _emit_prefetch(builder, ptr, write, locality=3)  # into L1
            return context.get_dummy_value()

        return sig, codegen

    return prefetch


# The time loops visit each step's rows a panel at a time, a pattern the hardware prefetchers
# miss, so a step fetches the lines of the next one itself (measured: the LSTM backward at
# H=128, 4.6 ms -> 4.1). The backward kernels also fetch for writing the lines of the gradients
# the next step writes: on an Intel Xeon (AVX-512), the LSTM backward alone ran 1.17x as fast at
# H=512 (1.11x-1.29x, nine alternations), 1.00x-1.02x at H=128-256; whole updates of the LSTM and
# the GRU 1.07x-1.13x at H=256-512, the other cells 0.96x-1.08x. The forward's stores (the saved
# gates, the states) fetched so gained nothing in alternation (0.98x-0.99x; on the Zen 5 earlier,
# 0.99x-1.02x).
prefetch = _prefetch_intrinsic(write=False)
prefetch_for_write = _prefetch_intrinsic(write=True)


def gate_panels_shape(H, K, gates):
    """The shape of pack_gate_panels' output buffer."""
    return (n_panels(H), gates, K, LANES)


def transposed_panels_shape(H, G):
    """The shape of pack_transposed_panels' output buffer."""
    return (n_panels(H), G, LANES)


def panel_shapes(H, gates):
    """The shapes of Wh packed for the forward product (Wp) and of Wh^T for the backward one
    (WTp), refreshed from the parameters at every call of a cell's forward and backward."""
    return {"Wp": gate_panels_shape(H, H, gates), "WTp": transposed_panels_shape(H, gates * H)}


@kernel
def slot_width(S):
    """LANES, the width of a slot of the scratch rows S (B, slots * LANES), as a number LLVM
    cannot see at compile time (S is at least a slot wide). A cell's loop over a slot's units
    `for j in range(LANES)` with a short body, LLVM unrolls into 16 scalar copies of the body,
    and its straight-line vectoriser then leaves the activations' clamps scalar: the RNN's tanh
    ran one unit at a time. A loop of `slot_width` steps its loop vectoriser takes, one vector
    for all 16 on AVX-512 (two 8-wide ones on AVX2): a whole RNN update 1.09x-1.19x as fast on
    AVX-512 (Zen 5), the Cho GRU's 1.02x-1.09x. (Long bodies, the LSTM's and GRU's, are not
    unrolled and were vector code either way; tests/test_vector_code.py reads the machine code
    of every cell's panel steps.)"""
    return min(LANES, S.shape[1])


@kernel
def line_empty(n, like):
    """n uninitialised elements of like's dtype, starting on a cache line (aligned.py says why:
    numba's allocator, like numpy's, may start an array in the middle of one)."""
    itemsize = like.itemsize
    raw = np.empty(n + LINE // itemsize, like.dtype)
    start = (LINE - raw.ctypes.data % LINE) % LINE // itemsize
    return raw[start : start + n]


@kernel
def line_zeros(n, like):
    """line_empty's, zeroed."""
    a = line_empty(n, like)
    a[:] = 0
    return a


@kernel
def scratch_rows(n_blocks, B, width, like):
    """Scratch for the time loops: (n_blocks, B, width) zeros of like's dtype. Thread i works
    on rows [r0, r1) of block i, so no two threads write neighbouring lines. (With one shared
    (B, width) array, the lines of the second thread's first rows were pulled into the first
    thread's cache at every step, by its prefetcher running on past its own rows: the second
    block of streams took 12% longer in the LSTM forward at H=128, and the first waited.)"""
    return line_zeros(n_blocks * B * width, like).reshape((n_blocks, B, width))


@kernel
def thread_sums(n_blocks, width, like):
    """Zeros of like's dtype, a row of `width` for each thread's partial sums of a gradient,
    the rows two panels apart: rows side by side would share a cache line at each boundary,
    written by two threads at every step."""
    return line_zeros(n_blocks * (width + 2 * LANES), like).reshape((n_blocks, width + 2 * LANES))


@kernel
def add_thread_sums(out, o0, sums, s0, n):
    """out[o0 : o0+n] += every thread's row of sums (thread_sums, or any array of a row per
    thread), columns [s0, s0+n): a gradient's partial sums added up after the work, thread by
    thread."""
    for i in range(sums.shape[0]):
        for u in range(n):
            out[o0 + u] += sums[i, s0 + u]


@kernel
def add_entering_grad(dh, dA, WTp, S, r0, r1, spare):
    """dh[r] += dA[0, r] @ Wh^T for the streams r in [r0, r1): the gradient reaching a window's
    entering state through the recurrent product of its first step, from dA (T, B, G), the
    gradient of the products' outputs. S holds scratch rows, as in recurrent_grad."""
    H = dh.shape[1]
    for p in range(WTp.shape[0]):
        u0 = p * LANES
        recurrent_grad(dA, 0, WTp, S, p, r0, r1, spare)
        for r in range(r0, r1):
            for j in range(min(LANES, H - u0)):
                dh[r, u0 + j] += S[r, j]
