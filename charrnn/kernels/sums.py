"""Sums in a fixed order: the same bits from every compile of a kernel.

The kernels compile without fast-math flags (_jit.py), so LLVM keeps the order of a sum as
written, in every copy of a kernel, and a plain `total += x[i]` loop stays scalar. A sum that
must be fast runs here instead: SUM_LANES running sums in vector registers, lane j taking the terms j,
j + SUM_LANES, j + 2*SUM_LANES, ... in float64; then the lanes pairwise, halving (lane j plus
lane j + n for n = 8, 4, 2, 1); then the terms past the last whole round, one by one. Written
as LLVM vector code, as the tiles are (panels.py): a loop of a few running sums in numba
is unrolled into scalar code, which LLVM may not vectorise without reordering the sum.
"""
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ._jit import kernel

SUM_LANES = 16  # two AVX-512 vectors of float64 sums, four AVX2 ones


def _lane_sum_intrinsic(square):
    """An intrinsic x -> float64: the sum of a contiguous float32 or float64 x (N,), of its
    squares with `square`, in the order above."""

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        ptr, n = array.data, builder.extract_value(array.shape, 0)
        scalar, double = ptr.type.pointee, ir.DoubleType()
        vec_in, vec = ir.VectorType(scalar, SUM_LANES), ir.VectorType(double, SUM_LANES)
        lanes = ir.Constant(n.type, SUM_LANES)
        whole = builder.mul(builder.sdiv(n, lanes), lanes)

        def term(value, ty):  # a term (or a vector of them) in float64, squared with `square`
            value = value if scalar == double else builder.fpext(value, ty)
            return builder.fmul(value, value) if square else value

        acc = cgutils.alloca_once_value(builder, ir.Constant(vec, [0.0] * SUM_LANES))
        with cgutils.for_range_slice(builder, ir.Constant(n.type, 0), whole, lanes) as (i, _):
            terms = builder.load(builder.bitcast(builder.gep(ptr, [i]), vec_in.as_pointer()),
                                 align=scalar.get_abi_size(context.target_data))
            builder.store(builder.fadd(builder.load(acc), term(terms, vec)), acc)
        sums, half = builder.load(acc), SUM_LANES
        while half > 1:  # lane j + lane j + half
            half //= 2
            pick = [ir.Constant(ir.VectorType(ir.IntType(32), half), list(range(k, k + half))) for k in (0, half)]
            sums = builder.fadd(*(builder.shuffle_vector(sums, sums, p) for p in pick))
        total = cgutils.alloca_once_value(builder, builder.extract_element(sums, ir.Constant(ir.IntType(32), 0)))
        with cgutils.for_range_slice(builder, whole, n, ir.Constant(n.type, 1)) as (i, _):  # the tail, one by one
            builder.store(builder.fadd(builder.load(total), term(builder.load(builder.gep(ptr, [i])), double)), total)
        return builder.load(total)

    @intrinsic
    def lane_sum(typingctx, x):
        if not (isinstance(x, types.Array) and x.ndim == 1 and x.layout == "C"
                and x.dtype in (types.float32, types.float64)):
            return None
        return types.float64(x), codegen

    return lane_sum


_lane_sum = _lane_sum_intrinsic(square=False)
_lane_sum_squares = _lane_sum_intrinsic(square=True)


@kernel
def ordered_sum(x):
    """sum(x) for a contiguous x (N,), in float64, in the fixed order above."""
    return _lane_sum(x)


@kernel
def ordered_sum_squares(x):
    """sum(x**2) for a contiguous x (N,), in float64, in the fixed order above."""
    return _lane_sum_squares(x)
