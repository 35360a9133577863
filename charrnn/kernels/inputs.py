"""Input projection of a layer: xproj_t = x_t @ Wx + b, forward and backward side by side.

The first layer sees one-hot characters, so its projection is a row lookup of Wx (V, G), which
the cells' forward kernels do themselves (model.Stack.forward): never a product with a one-hot
matrix. Upper layers see the hidden states of the layer below, and their projection is one
large (T*B, H_in) @ (H_in, G) product for the whole window.

Shapes (legend): T steps, B streams, V vocabulary, H_in input width, G gate width of the cell.
"""
import numpy as np
from numba import prange

from ._jit import block, kernel, parallel_kernel, threads
from .blas import add_partials, add_row, column_sums_acc, matmul, matmul_nt, matmul_tn_acc


@kernel
def _scatter_add_rows(dWx, db, dxproj, ids, t0, t1):
    # dWx[ids[t, s]] += dxproj[t, s] and db += dxproj[t, s] for t in [t0, t1)
    B, G = dxproj.shape[1], dxproj.shape[2]
    for t in range(t0, t1):
        for s in range(B):
            row = dWx[ids[t, s]]
            d = dxproj[t, s]
            for k in range(G):
                row[k] += d[k]
                db[k] += d[k]


@parallel_kernel
def onehot_backward(dWx, db, dxproj, ids, n_blocks):
    # dWx (V,G), db (G,) accumulated with +=      dxproj (T,B,G) in     ids (T,B)
    # xproj_t = Wx[id_t] + b  =>  dWx[id_t] += dxproj_t, db += dxproj_t: a scatter-add over rows
    # that repeat. With several blocks, threads split the steps, each into its own zeroed copy
    # of dWx and db, added up after (0.30 ms against 0.46 serial at V=65, G=512, T*B=3200); the
    # caller passes n_blocks=1 when those copies would outweigh the rows scattered.
    T, G = dxproj.shape[0], dxproj.shape[2]
    V = dWx.shape[0]
    if n_blocks == 1:
        _scatter_add_rows(dWx, db, dxproj, ids, 0, T)
        return
    partial = np.zeros((n_blocks, V, G), dWx.dtype)
    partial_db = np.zeros((n_blocks, G), dWx.dtype)
    for i in prange(n_blocks):
        lo, hi = block(T, n_blocks, i)
        _scatter_add_rows(partial[i], partial_db[i], dxproj, ids, lo, hi)
    for i in prange(n_blocks):
        lo, hi = block(V, n_blocks, i)
        add_partials(dWx, partial, lo, hi)
    for j in range(n_blocks):
        for k in range(G):
            db[k] += partial_db[j, k]


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
