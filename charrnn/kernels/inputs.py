"""Input projection of a layer: xproj_t = x_t @ Wx + b, forward and backward side by side.

The first layer sees one-hot characters, so its projection is a row lookup of Wx (V, G), which
the cells' forward kernels do themselves (model.Stack.forward): never a product with a one-hot
matrix. Upper layers see the hidden states of the layer below, and their projection is one
large (T*B, H_in) @ (H_in, G) product for the whole window.

Shapes (legend): T steps, B streams, V vocabulary, H_in input width, G gate width of the cell.
"""
from ._jit import kernel, threads
from .blas import add_row, column_sums_acc, matmul, matmul_nt, matmul_tn_acc


@kernel
def onehot_backward(dWx, db, dxproj, ids):
    # dWx (V,G), db (G,) accumulated with +=      dxproj (T,B,G) in     ids (T,B)
    # xproj_t = Wx[id_t] + b  =>  dWx[id_t] += dxproj_t, db += dxproj_t: a scatter-add over
    # rows that repeat, so one thread does it (it is bound by memory, not arithmetic; split
    # by columns over two threads, it was slower).
    T, B, G = dxproj.shape
    for t in range(T):
        for s in range(B):
            row = dWx[ids[t, s]]
            d = dxproj[t, s]
            for k in range(G):
                row[k] += d[k]
                db[k] += d[k]


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
