"""Inverted dropout on a layer's input, forward and backward side by side.

    mask = 1/keep where u < keep, else 0      u uniform in [0, 1), float64, from the run's generator
    dropped = x * mask                        forward
    dx = dx * mask                            backward (the gradient of dropped w.r.t. x)

The numbers are NumPy's: u is what `rng.random((n, total, width))[:, rows]` draws (rows: the
streams a stack holds of the whole batch, a rank's share under MPI, so that R ranks draw what one
process draws), the mask `(u < keep) / keep` cast to the model's dtype, the products its
multiply, bit for bit, NaN included (a NaN input stays NaN where its unit is dropped: NaN * 0).

A run's generator is a PCG64 (train.py; a checkpoint holds no other), whose steps are an affine
map of a 128-bit state: the kernel draws the uniforms itself, each thread starting where NumPy
would be at its steps' first draw (`pcg64_starts` jumps there in O(log n)), so that drawing runs
on every thread and no buffer of uniforms is needed.

In NumPy this was the draw on one thread and four serial passes over the window with three
temporaries of its size, the other core waiting: at T=50, B=32, H=512 (Zen 5) the output layer's
masks took 2.3-3.8 ms of a 34-37 ms LSTM update, now 0.64-0.68 ms.
"""
from functools import lru_cache

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic

from ._jit import block, parallel_kernel

# PCG64 (O'Neill 2014) as NumPy implements it: state <- state * MULTIPLIER + inc (mod 2^128),
# then the 64-bit output XSL-RR of the new state; a double is (output >> 11) * 2^-53
MULTIPLIER = 0x2360ED051FC65DA44385DF649FCCF645
MOD = 1 << 128
WORD = (1 << 64) - 1


@intrinsic
def pcg64_fill(typingctx, state, inc, out, count):
    """out[:count] = the next count doubles of a PCG64 with this state and increment (uint64
    arrays of two words, low first), as NumPy's PCG64 draws them; state advanced in place.
    Written in LLVM's 128-bit integers, which numba has no type for. No bounds check: count is
    at most out's length."""
    for a, dtype in ((state, types.uint64), (inc, types.uint64), (out, types.float64)):
        if (not isinstance(a, types.Array) or a.dtype != dtype or a.ndim != 1 or a.layout != "C"
                or not a.aligned):
            raise TypingError(f"pcg64_fill: expected an aligned C-contiguous 1-D {dtype} array, got {a}")
    if not (state.mutable and out.mutable and isinstance(count, types.Integer)):
        raise TypingError(f"pcg64_fill: state and out are written, count is an integer (got {state}, {out}, {count})")
    sig = types.void(state, inc, out, types.intp)

    def codegen(context, builder, signature, args):
        state_, inc_, out_, count_ = args
        i64, i128, f64 = ir.IntType(64), ir.IntType(128), ir.DoubleType()
        sp, ip, op = (context.make_array(signature.args[i])(context, builder, v).data
                      for i, v in enumerate((state_, inc_, out_)))

        def word(p, k):
            return builder.load(builder.gep(p, [ir.Constant(i64, k)]))

        def load128(p):
            return builder.or_(builder.zext(word(p, 0), i128),
                               builder.shl(builder.zext(word(p, 1), i128), ir.Constant(i128, 64)))

        rotr = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i64, [i64, i64, i64]), "llvm.fshr.i64")
        inc = load128(ip)
        cell = cgutils.alloca_once_value(builder, load128(sp))
        with cgutils.for_range(builder, count_) as loop:
            s = builder.add(builder.mul(builder.load(cell), ir.Constant(i128, MULTIPLIER)), inc)
            builder.store(s, cell)
            high = builder.trunc(builder.lshr(s, ir.Constant(i128, 64)), i64)
            x = builder.xor(high, builder.trunc(s, i64))
            r = builder.call(rotr, [x, x, builder.trunc(builder.lshr(s, ir.Constant(i128, 122)), i64)])
            u = builder.fmul(builder.uitofp(builder.lshr(r, ir.Constant(i64, 11)), f64),
                             ir.Constant(f64, 1.0 / (1 << 53)))
            builder.store(u, builder.gep(op, [loop.index]))
        s = builder.load(cell)
        builder.store(builder.trunc(s, i64), builder.gep(sp, [ir.Constant(i64, 0)]))
        builder.store(builder.trunc(builder.lshr(s, ir.Constant(i128, 64)), i64), builder.gep(sp, [ir.Constant(i64, 1)]))
        return context.get_dummy_value()

    return sig, codegen


@lru_cache(maxsize=64)
def _jump(steps):
    """(A, S) such that `steps` steps of the PCG64 take state s to A s + S inc (mod 2^128): the
    affine map squared and composed by the bits of `steps` (Brown 1994), as PCG64.advance does."""
    A, S, m, p = 1, 0, MULTIPLIER, 1
    while steps:
        if steps & 1:
            A, S = A * m % MOD, (S * m + p) % MOD
        m, p = m * m % MOD, (m + 1) * p % MOD
        steps >>= 1
    return A, S


def pcg64_starts(rng, n, total, width, rows):
    """The states (n, 2) uint64 from which a generator on a PCG64 draws, as
    rng.random((n, total, width)) would, the numbers of the rows `rows` of step t (a step's rows
    follow each other), and its increment (2,) uint64; rng is left where that draw leaves it."""
    bits = rng.bit_generator
    if type(bits) is not np.random.PCG64:
        raise TypeError(f"dropout draws from a PCG64 generator, not {type(bits).__name__}")
    state = bits.state
    s, inc = state["state"]["state"], state["state"]["inc"]
    A0, S0 = _jump(rows.start * width)
    A, S = _jump(total * width)
    starts = np.empty((n, 2), np.uint64)
    s = (A0 * s + S0 * inc) % MOD
    for t in range(n):
        starts[t] = s & WORD, s >> 64
        s = (A * s + S * inc) % MOD
    # PCG64.advance drops a buffered 32-bit half, which random() neither uses nor changes
    bits.advance(n * total * width)
    bits.state = {**bits.state, "has_uint32": state["has_uint32"], "uinteger": state["uinteger"]}
    return starts, np.array([inc & WORD, inc >> 64], np.uint64)


@parallel_kernel
def drop(dropped, mask, x, starts, inc, keep, scale, n_blocks):
    # dropped, mask (n,B,H) out; x (n,B,H) in; starts (n,2), inc (2,) from pcg64_starts;
    # keep float64; scale = 1/keep in the model's dtype. Threads split the steps.
    n, B, H = x.shape
    zero = scale - scale  # a zero of the model's dtype, as scale is
    for i in prange(n_blocks):
        t0, t1 = block(n, n_blocks, i)
        state = np.empty(2, np.uint64)  # each thread's own generator and draws
        u = np.empty(H)
        for t in range(t0, t1):
            state[:] = starts[t]
            for r in range(B):
                pcg64_fill(state, inc, u, H)
                mr, xr, dr = mask[t, r], x[t, r], dropped[t, r]
                for j in range(H):
                    m = scale if u[j] < keep else zero
                    mr[j] = m
                    dr[j] = xr[j] * m


@parallel_kernel
def drop_grad(dx, mask, n_blocks):
    # dx (n,B,H) in/out: multiplied by the forward's mask (n,B,H)
    n = dx.shape[0]
    for i in prange(n_blocks):
        t0, t1 = block(n, n_blocks, i)
        for t in range(t0, t1):
            for r in range(dx.shape[1]):
                dr, mr = dx[t, r], mask[t, r]
                for j in range(dx.shape[2]):
                    dr[j] *= mr[j]
