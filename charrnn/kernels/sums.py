"""Sums in a fixed order: the same bits from every compile of a kernel.

The kernels compile without fast-math flags (_jit.py), so LLVM keeps the order of a sum as
written, in every copy of a kernel, and a plain `total += x[i]` loop stays scalar. A sum that
must be fast runs here instead: SUM_LANES running sums in vector registers, lane j taking the terms j,
j + SUM_LANES, j + 2*SUM_LANES, ... in float64; then the lanes pairwise, halving (lane j plus
lane j + n for n = 8, 4, 2, 1); then the terms past the last whole round, one by one. Written
as LLVM vector code, as the tiles are (panels.py): a loop of a few running sums in numba
is unrolled into scalar code, which LLVM may not vectorise without reordering the sum.
"""
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ._jit import kernel

SUM_LANES = 16  # two AVX-512 vectors of float64 sums, four AVX2 ones


def _lane_sum_intrinsic(square):
    """An intrinsic (x, rounds) -> float64: the sum of x[:rounds * SUM_LANES] (of its squares
    with `square`), in lanes and then pairwise as above, for a contiguous float32 or float64 x."""

    def codegen(context, builder, signature, args):
        x_, rounds = args
        ptr = context.make_array(signature.args[0])(context, builder, x_).data
        scalar = ptr.type.pointee
        double = ir.DoubleType()
        vec_in, vec = ir.VectorType(scalar, SUM_LANES), ir.VectorType(double, SUM_LANES)
        acc = cgutils.alloca_once_value(builder, ir.Constant(vec, [0.0] * SUM_LANES))
        with cgutils.for_range(builder, rounds) as loop:
            at = builder.mul(loop.index, ir.Constant(rounds.type, SUM_LANES))
            terms = builder.load(builder.bitcast(builder.gep(ptr, [at]), vec_in.as_pointer()),
                                 align=scalar.get_abi_size(context.target_data))
            if scalar != double:
                terms = builder.fpext(terms, vec)
            if square:
                terms = builder.fmul(terms, terms)
            builder.store(builder.fadd(builder.load(acc), terms), acc)
        sums, n = builder.load(acc), SUM_LANES
        while n > 1:
            n //= 2
            low = builder.shuffle_vector(sums, sums, ir.Constant(ir.VectorType(ir.IntType(32), n), list(range(n))))
            high = builder.shuffle_vector(sums, sums, ir.Constant(ir.VectorType(ir.IntType(32), n),
                                                                  list(range(n, 2 * n))))
            sums = builder.fadd(low, high)
        return builder.extract_element(sums, ir.Constant(ir.IntType(32), 0))

    @intrinsic
    def lane_sum(typingctx, x, rounds):
        if not (isinstance(x, types.Array) and x.ndim == 1 and x.layout == "C"
                and x.dtype in (types.float32, types.float64) and isinstance(rounds, types.Integer)):
            return None
        return types.float64(x, types.intp), codegen

    return lane_sum


_lane_sum = _lane_sum_intrinsic(square=False)
_lane_sum_squares = _lane_sum_intrinsic(square=True)


@kernel
def ordered_sum(x):
    """sum(x) for a contiguous x (N,), in float64, in the fixed order above."""
    rounds = x.shape[0] // SUM_LANES
    total = _lane_sum(x, rounds)
    for i in range(rounds * SUM_LANES, x.shape[0]):
        total += np.float64(x[i])
    return total


@kernel
def ordered_sum_squares(x):
    """sum(x**2) for a contiguous x (N,), in float64, in the fixed order above."""
    rounds = x.shape[0] // SUM_LANES
    total = _lane_sum_squares(x, rounds)
    for i in range(rounds * SUM_LANES, x.shape[0]):
        v = np.float64(x[i])
        total += v * v
    return total
