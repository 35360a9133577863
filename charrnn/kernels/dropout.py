"""Inverted dropout on a layer's input, forward and backward side by side.

    mask = 1/keep where u < keep, else 0      u uniform in [0, 1), drawn in float64 (model.py)
    dropped = x * mask                        forward
    dx = dx * mask                            backward (the gradient of dropped w.r.t. x)

The numbers are NumPy's `(u < keep) / keep` cast to the model's dtype and its multiply, bit for
bit, NaN included (a NaN input stays NaN where its unit is dropped: NaN * 0). In NumPy they were
four serial passes over the window with three temporaries of its size, allocated and freed at
every update, the other core waiting: at T=50, B=32, H=512 (Zen 5) the output layer's masks
took 3.8 ms of a 36 ms LSTM update, now 2.5 ms, of which 1.4-2.5 ms is drawing the uniforms
(NumPy's generator, one thread), the rest this kernel. Threads split the steps.
"""
from numba import prange

from ._jit import block, parallel_kernel


@parallel_kernel
def drop(dropped, mask, x, u, keep, scale, n_blocks):
    # dropped, mask (n,B,H) out; x (n,B,H) in; u (n,B,H) float64 uniforms in; keep float64;
    # scale = 1/keep in the model's dtype
    n = x.shape[0]
    zero = scale - scale
    for i in prange(n_blocks):
        t0, t1 = block(n, n_blocks, i)
        for t in range(t0, t1):
            for r in range(x.shape[1]):
                ur, mr, xr, dr = u[t, r], mask[t, r], x[t, r], dropped[t, r]
                for j in range(x.shape[2]):
                    m = scale if ur[j] < keep else zero
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
