"""Input projection of a layer: xproj_t = x_t @ Wx + b, forward and backward side by side.

The first layer sees one-hot characters, so its projection is a row lookup of Wx (V, G):
never a product with a one-hot matrix. Upper layers see the hidden states of the layer below,
and their projection is one large (T*B, H_in) @ (H_in, G) product for the whole window.

Shapes (legend): T steps, B streams, V vocabulary, H_in input width, G gate width of the cell.
"""
import numpy as np

from ._jit import kernel


@kernel
def onehot_forward(xproj, ids, Wx, b):
    # xproj (T,B,G) out    ids (T,B) character ids    Wx (V,G)    b (G,)
    # A copy bound by memory bandwidth: one thread does it as fast as two.
    T, B, G = xproj.shape
    for t in range(T):
        for s in range(B):
            row = Wx[ids[t, s]]
            for k in range(G):
                xproj[t, s, k] = row[k] + b[k]


@kernel
def onehot_backward(dWx, db, dxproj, ids):
    # dWx (V,G), db (G,) accumulated with +=      dxproj (T,B,G) in     ids (T,B)
    # xproj_t = Wx[id_t] + b  =>  dWx[id_t] += dxproj_t, db += dxproj_t: a scatter-add, as
    # memory-bound as the forward lookup.
    T, B, G = dxproj.shape
    for t in range(T):
        for s in range(B):
            row = dWx[ids[t, s]]
            d = dxproj[t, s]
            for k in range(G):
                row[k] += d[k]
                db[k] += d[k]


@kernel
def dense_forward(xproj2d, x2d, Wx, b):
    # xproj2d (T*B,G) out    x2d (T*B,H_in)    Wx (H_in,G)    b (G,)
    np.dot(x2d, Wx, xproj2d)
    N, G = xproj2d.shape
    for n in range(N):
        for k in range(G):
            xproj2d[n, k] += b[k]


@kernel
def dense_backward(dx2d, dWx, db, dxproj2d, x2d, Wx):
    # dx2d (T*B,H_in) out: gradient w.r.t. the layer's input
    # dWx (H_in,G), db (G,) accumulated with +=     dxproj2d (T*B,G) in     x2d, Wx as in forward
    dWx += np.dot(x2d.T, dxproj2d)
    N, G = dxproj2d.shape
    for n in range(N):
        for k in range(G):
            db[k] += dxproj2d[n, k]
    np.dot(dxproj2d, Wx.T, dx2d)
