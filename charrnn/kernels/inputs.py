"""Input projection of a layer: xproj_t = x_t @ Wx + b, forward and backward side by side.

The first layer sees one-hot characters, so its projection is a row lookup of Wx (V, G), which
the cells' forward kernels do themselves (model.Stack.forward): never a product with a one-hot
matrix. Upper layers see the hidden states of the layer below, and their projection is one
large (T*B, H_in) @ (H_in, G) product for the whole window.

Shapes (legend): T steps, B streams, V vocabulary, H_in input width, G gate width of the cell.
"""
from numba import prange

from ._jit import block, kernel, parallel_kernel, threads
from .blas import add_partials, add_row, column_sums_acc, matmul, matmul_nt, matmul_tn_acc
from .panels import line_zeros


@kernel
def _scatter_rows(dWx, db, with_db, dxproj, ids, t0, t1):
    # dWx[ids[t, s]] += dxproj[t, s] for t in [t0, t1), and db += dxproj[t, s] if with_db
    # (a test outside the loops that LLVM takes out of them)
    B, G = dxproj.shape[1], dxproj.shape[2]
    for t in range(t0, t1):
        for s in range(B):
            row = dWx[ids[t, s]]
            d = dxproj[t, s]
            for k in range(G):
                row[k] += d[k]
                if with_db:
                    db[k] += d[k]


@parallel_kernel
def onehot_backward(dWx, db, dxproj, ids, n_blocks):
    # dWx (V,G), db (G,) accumulated with +=      dxproj (T,B,G) in     ids (T,B)
    # xproj_t = Wx[id_t] + b  =>  dWx[id_t] += dxproj_t, db += dxproj_t: a scatter-add over rows
    # that repeat. Threads split the steps, each into its own zeroed copy of dWx, added up
    # after; a copy holds every row it scattered, so db's share is the sum of its V rows, not
    # of its T*B/n (0.08 ms on 2 threads at V=65, G=512, T*B=3200, against 0.14 adding every
    # row to db too). When the copies would outweigh the rows scattered, the caller passes
    # n_blocks=1, and if there are more rows of dWx than rows to scatter (V > T*B) they go
    # into dWx and db directly; one thread with fewer, V=65, still takes a copy (1.36x-1.53x
    # as fast as adding every row to db).
    T, B, G = dxproj.shape
    V = dWx.shape[0]
    if n_blocks == 1 and V > T * B:
        _scatter_rows(dWx, db, True, dxproj, ids, 0, T)
        return
    partial = line_zeros(n_blocks * V * G, dWx).reshape((n_blocks, V, G))  # rows scattered whole
    for i in prange(n_blocks):
        lo, hi = block(T, n_blocks, i)
        _scatter_rows(partial[i], db, False, dxproj, ids, lo, hi)
    for i in prange(n_blocks):
        lo, hi = block(V, n_blocks, i)
        add_partials(dWx, partial, lo, hi)
    for j in range(n_blocks):
        for v in range(V):
            for k in range(G):
                db[k] += partial[j, v, k]


def onehot_backward_blocks(V, T, B):
    """Blocks for onehot_backward: the threads when their copies of dWx (V rows each) are no
    larger than the T*B rows scattered, else 1."""
    n = threads()
    return n if V * n <= T * B else 1


def dense_forward(xproj2d, x2d, Wx, b):
    # xproj2d (T*B,G) out    x2d (T*B,H_in)    Wx (H_in,G)    b (G,)
    n = threads()
    matmul(xproj2d, x2d, Wx, n)
    add_row(xproj2d, b, n)


def dense_backward(dx2d, dWx, db, dxproj2d, x2d, Wx):
    # dx2d (T*B,H_in) out: gradient w.r.t. the layer's input
    # dWx (H_in,G), db (G,) accumulated with +=     dxproj2d (T*B,G) in     x2d, Wx as in forward
    n = threads()
    matmul_tn_acc(dWx, x2d, dxproj2d, n)
    column_sums_acc(db, dxproj2d, n)
    matmul_nt(dx2d, dxproj2d, Wx, n)
