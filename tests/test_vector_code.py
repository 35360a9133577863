"""The cells' per-step gate math compiles to vector code on x86 with AVX: one instruction for a
panel's 16 units on AVX-512 (two on AVX2), not 16 scalar ones. No test of speed, but of what
LLVM made of the loops: a loop over a slot's units with a short body was once unrolled into
scalar code (panels.slot_width), and the RNN's update took 1.1x-1.2x as long."""
import functools
import importlib
import platform
import re
from collections import Counter

import numba
from numba.core.registry import CPUDispatcher
import numpy as np
import pytest

from charrnn.cells import NAMES
from charrnn.kernels._jit import ERROR_MODEL, FASTMATH
from charrnn.kernels import panels
from charrnn.kernels.panels import LANES, copy_lanes, host_features
from charrnn.model import CELLS, ModelSpec, Stack, init_params


def kernels_of(cell):
    """The module of a cell's kernels, its time loops (the parallel kernels defined there) and
    the functions of a step's work on one panel that they call (named *_panel)."""
    module = importlib.import_module(type(CELLS[cell]).forward.__module__)
    own = {name: fn for name, fn in vars(module).items()
           if isinstance(fn, CPUDispatcher) and fn.py_func.__module__ == module.__name__}
    loops = sorted(name for name, fn in own.items() if fn.targetoptions.get("parallel"))
    return module, loops, sorted(name for name in own if name.endswith("_panel"))


def panel_cells():
    """Every cell whose gate math runs on panels, the first of each module (the ESN runs the
    leaky unit's kernels, and trains none of them)."""
    first = {}
    for cell in NAMES:
        module, _, steps = kernels_of(cell)
        if steps:
            first.setdefault(module.__name__, cell)
    return sorted(first.values())


ARITHMETIC = re.compile(r"^\s+v(add|sub|mul|div|fn?m(?:add|sub))\d*(ss|ps)\s", re.M)
# what each operation does, a fused multiply-add both (whatever its encoding: 132, 213, 231)
CLASSES = {"add": ("add",), "sub": ("add",), "mul": ("multiply",), "div": ("divide",), "fmadd": ("multiply", "add"),
           "fmsub": ("multiply", "add"), "fnmadd": ("multiply", "add"), "fnmsub": ("multiply", "add")}


def float32_signature(fn):
    sigs = [s for s in fn.signatures if numba.float32 in [getattr(a, "dtype", None) for a in s]]
    assert len(sigs) == 1, f"{fn.__name__}: float32 signatures {sigs}"
    return sigs[0]


def fresh(fn):
    """fn (a kernel, or a plain function) compiled anew, not from numba's cache (which keeps no
    machine code to show), with the kernels' options; serial, as the panel steps are."""
    return numba.njit(fastmath=FASTMATH, error_model=ERROR_MODEL)(getattr(fn, "py_func", fn))


def machine_code(fn, sig):
    """fresh(fn)'s machine code for the signature sig."""
    compiled = fresh(fn)
    compiled.compile(sig)
    return compiled.inspect_asm(sig)


# the sampling step's, whose signature is every cell's (the cell is an argument): compiled once
step_code = functools.cache(machine_code)


def avx_code():
    """Whether numba's code for this CPU is AVX code: its loops vectorised 256 bits wide or more
    (panels.loop_bits), or where that cannot be found, AVX among its features. (Where numba's AVX
    is off, the avx* features are gone, yet LLVM brings AVX back from fma or f16c left on.)"""
    bits = panels.loop_bits()
    return "+avx" in host_features().split(",") if bits is None else bits >= 256


# the AVX instructions' names (vaddps, vfmadd231ss, ...): without AVX (NUMBA_CPU_NAME=generic,
# for portable caches) numba compiles SSE, whose names have no v
AVX = platform.machine().lower() in ("x86_64", "amd64") and avx_code()


@functools.cache  # three tests read it: compiled once a cell
def panel_step_code(cell):
    """{name: machine code} of a cell's panel steps, float32."""
    spec = ModelSpec(cell, 5, 40, 1)
    params = init_params(spec, np.random.default_rng(0), np.float32)
    grads = np.zeros_like(params)
    st = Stack(spec, 4, 3)  # a float32 update: the time loops get their float32 signatures
    st.forward(params, 0, 3)
    st.output_grad(params, grads, 0, 3, 1.0)
    st.backward(params, grads, 0, 3)
    kernels, loops, steps = kernels_of(cell)
    for name in loops:  # typing a loop (serially: faster) compiles the panel steps it calls
        loop = getattr(kernels, name)
        fresh(loop).compile(float32_signature(loop))
    return {name: machine_code(getattr(kernels, name), float32_signature(getattr(kernels, name))) for name in steps}


@pytest.mark.skipif(not AVX, reason="reads x86 AVX instructions")
@pytest.mark.parametrize("cell", panel_cells())
def test_gate_math_is_vector_code(cell):
    for name, code in panel_step_code(cell).items():
        ops = ARITHMETIC.findall(code)
        scalar = Counter(c for op, kind in ops if kind == "ss" for c in CLASSES[op])
        vector = sum(kind == "ps" for _, kind in ops)
        # a loop's remainder may stay scalar (the RNN forward's tanh: 12 operations with FMA, 21
        # without, 11 multiplies at most); a panel's 16 units unrolled one by one are at least
        # 16 multiplies, adds or divisions (16 adds: the spare panel's add as a loop; 16 each of
        # three operations: the RNN's backward)
        assert max(scalar.values(), default=0) < 16 and vector > 0, f"{cell} {name}: {dict(scalar)} scalar, {vector} vector"


# double-precision arithmetic and conversions, with AVX's v or SSE's without
FLOAT64_ARITHMETIC = re.compile(r"^\s+v?(cvtps2pd|cvtpd2ps|cvtss2sd|cvtsd2ss|(?:add|sub|mul|div|fn?m(?:add|sub)\d*)[ps]d)\s",
                                re.M)
# An unsigned 64-bit integer made a float64 as x86 does it without AVX-512's vcvtusi2sd: its
# halves set into the mantissas of two doubles (punpckldq of a constant), the constant biases taken
# off (subpd), the two halves added (addsd, after a shuffle; or haddpd). numba's reshape checks a
# size so (IndRNN's thread_sums). Both constants are read from memory, which gate math on
# registers never matches.
_CONSTANT = r"(?:\(%r\w+\)|\.LCPI\w+\(%rip\))"
_XMM = r"%xmm\d+(?:, %xmm\d+)*\n"  # (SSE's two operands, AVX's three)
UNSIGNED_TO_FLOAT64 = re.compile(
    rf"^\s+v?punpckldq\s+{_CONSTANT}, {_XMM}(?:\s+movabsq\s+\$\.LCPI\w+, %r\w+\n)?\s+v?subpd\s+{_CONSTANT}, {_XMM}"
    rf"(?:\s+v?movapd\s+{_XMM})?(?:\s+v?(?:(?:shufpd|permilpd)\s+\$1,|unpckhpd)\s+{_XMM})?\s+v?(?:addsd|haddpd)\s+{_XMM}",
    re.M)
X86 = platform.machine().lower() in ("x86_64", "amd64")


def float32_cell_code(cell):
    """{name: machine code} of a cell's float32 gate math: its panel steps, or its time loops
    where it has none (IndRNN)."""
    steps = panel_step_code(cell)  # runs a float32 update, which types the time loops too
    if steps:
        return dict(steps)
    kernels, loops, _ = kernels_of(cell)
    return {name: machine_code(getattr(kernels, name), float32_signature(getattr(kernels, name))) for name in loops}


@pytest.mark.skipif(not X86, reason="reads x86 instructions")
@pytest.mark.parametrize("cell", sorted({kernels_of(cell)[0].__name__: cell for cell in reversed(NAMES)}.values()))
def test_a_float32_models_gate_math_has_no_float64_arithmetic(cell):
    """numba types a float literal as a float64: `1.0 - x` of a float32 x, or `x if c else 0.0`,
    ran in float64, converted there and back (the leaky units' forward, IndRNN's backward). Their
    constants are float32 (activations.ONE, ZERO); this reads the training steps' machine code and
    the sampling step's, which runs every cell's."""
    code = float32_cell_code(cell)
    from charrnn.kernels import generate
    from charrnn.sampling import Sampler

    spec = ModelSpec(cell, 5, 40, 2)
    s = Sampler(spec, init_params(spec, np.random.default_rng(0), np.float32))
    args = (s.h, s.c, s.xg, s.hg, 1, s.params, s.offs, s.cell, spec.vocab_size, s.blas)
    code["generate._step"] = step_code(generate._step, tuple(numba.typeof(a) for a in args))
    for name, asm in code.items():
        found = Counter(FLOAT64_ARITHMETIC.findall(UNSIGNED_TO_FLOAT64.sub("", asm)))
        assert not found, f"{cell} {name}: float64 arithmetic {dict(found)}"


# x86's prefetch for writing (PREFETCHW), where the CPU numba compiles for has it
PREFETCHW = AVX and "+prfchw" in host_features().split(",")


@pytest.mark.skipif(not PREFETCHW, reason="reads x86 code for a CPU with PREFETCHW")
@pytest.mark.parametrize("cell", panel_cells())
def test_the_backward_fetches_for_writing_the_lines_its_next_step_writes(cell):
    # panels.prefetch_for_write: a prefetch for reading would not take the lines' ownership
    code = panel_step_code(cell)
    backward = [name for name in code if "backward" in name]
    assert backward, f"{cell}: no backward panel step among {sorted(code)}"
    assert any(re.search(r"^\s+prefetchw\s", code[name], re.M) for name in backward), cell
    others = [name for name in code if "backward" not in name]  # the forward's steps
    assert not any(re.search(r"^\s+prefetchw\s", code[name], re.M) for name in others), cell


def _scale_add(a, b):
    for i in range(a.shape[0]):
        a[i] = a[i] * b[i] + np.float32(1.0)


def _copy(dst, d0, src, s0, n):
    copy_lanes(dst, d0, src, s0, n)


REGISTER_BITS = {"xmm": 128, "ymm": 256, "zmm": 512}


def registers(pattern, code):
    """The widths of the vector registers of the instructions matching `pattern`, in order."""
    return [REGISTER_BITS[r] for r in re.findall(pattern + r"\s+[^\n]*?\b([xyz]mm)\d+", code, re.M)]


PROBED = AVX and panels.loop_bits() is not None


def splits_32_bytes():
    """Whether LLVM, for the CPU and features numba compiles for, splits an unaligned 32-byte load
    and store in two 16-byte halves, as it does for Sandy and Ivy Bridge (found by compiling one)."""
    from llvmlite import ir

    module = ir.Module("split_probe")
    pointer = ir.VectorType(ir.FloatType(), 8).as_pointer()
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [pointer, pointer]), "copy")
    builder = ir.IRBuilder(fn.append_basic_block("entry"))
    builder.store(builder.load(fn.args[1], align=4), fn.args[0], align=4)
    builder.ret_void()
    return "ymm" not in panels.assembly(module, *panels.numba_target())


@pytest.mark.skipif(not PROBED, reason="reads x86 AVX instructions; needs llvmlite's new pass manager")
def test_the_probe_finds_the_width_numba_vectorises_a_loop_to():
    # panels.loop_vector_bits compiles its own loop with llvmlite; numba's, as the gate math's
    f32 = numba.float32[::1]
    code = machine_code(_scale_add, (f32, f32))
    assert max(registers(r"^\s+v(?:mul|add|fmadd\d+)ps", code)) == panels.loop_bits()


@pytest.mark.skipif(not PROBED, reason="reads x86 AVX instructions; needs llvmlite's new pass manager")
def test_a_panels_copy_is_loads_and_stores_as_wide_as_the_loop_vectors():
    # a load spanning two of the gate math's stores waits for both to reach the cache
    # (panels.copy_piece); nor may LLVM merge the pieces back into wider loads or stores. The
    # copy's own function only: numba's wrapper after it moves its own data
    f32, intp = numba.float32[::1], numba.intp
    code = machine_code(_copy, (f32, intp, f32, intp, intp))
    body = code[: code.index(".Lfunc_end0")]
    piece = panels.copy_piece(32)
    widths = registers(r"^\s+vmovu[pd]s", body)
    if piece * 32 == 256 and splits_32_bytes():  # in halves, as LLVM tunes for the CPU
        assert widths == [128] * (4 * LANES // piece)
    else:
        assert widths == [piece * 32] * (2 * LANES // piece)
