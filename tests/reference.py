"""Slow, obvious float64 numpy references for every cell, the output layer and the loss.

Written straight from the equations in each cell's module docstring (charrnn/kernels/), step
by step, gate by gate, with the one-hot input as an explicit matrix product: nothing is shared
with the kernels except the parameter names and storage orientation (W stored input-major, so
x @ W).
Full BPTT over the window, loss = mean over all T*B predictions.
"""
import numpy as np


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _cell_step(cell, x, state, p):
    """One step. x (B,In), state tuple of (B,H). Returns new state tuple and a cache."""
    H = state[0].shape[1]
    if cell == "rnn":
        (h,) = state
        h_new = np.tanh(x @ p["Wx"] + h @ p["Wh"] + p["b"])
        return (h_new,), (x, h, h_new)
    if cell == "lstm":
        h, c = state
        a = x @ p["Wx"] + h @ p["Wh"] + p["b"]
        i = sigmoid(a[:, :H])
        f = sigmoid(a[:, H : 2 * H])
        g = np.tanh(a[:, 2 * H : 3 * H])
        o = sigmoid(a[:, 3 * H :])
        c_new = f * c + i * g
        h_new = o * np.tanh(c_new)
        return (h_new, c_new), (x, h, c, i, f, g, o, c_new)
    if cell == "peephole":
        h, c = state
        a = x @ p["Wx"] + h @ p["Wh"] + p["b"]
        pi, pf, po = p["peep"][:H], p["peep"][H : 2 * H], p["peep"][2 * H :]
        i = sigmoid(a[:, :H] + pi * c)
        f = sigmoid(a[:, H : 2 * H] + pf * c)
        g = np.tanh(a[:, 2 * H : 3 * H])
        c_new = f * c + i * g
        o = sigmoid(a[:, 3 * H :] + po * c_new)
        h_new = o * np.tanh(c_new)
        return (h_new, c_new), (x, h, c, i, f, g, o, c_new)
    if cell == "gru":
        (h,) = state
        ax = x @ p["Wx"] + p["b"]
        ah = h @ p["Wh"]
        r = sigmoid(ax[:, :H] + ah[:, :H])
        z = sigmoid(ax[:, H : 2 * H] + ah[:, H : 2 * H])
        hn = ah[:, 2 * H :] + p["bhn"]
        n = np.tanh(ax[:, 2 * H :] + r * hn)
        h_new = (1 - z) * n + z * h
        return (h_new,), (x, h, r, z, n, hn)
    if cell == "gru-cho":
        (h,) = state
        ax = x @ p["Wx"] + p["b"]
        ah = h @ p["Wh"]
        r = sigmoid(ax[:, :H] + ah[:, :H])
        z = sigmoid(ax[:, H : 2 * H] + ah[:, H:])
        rh = r * h  # the reset before the product
        n = np.tanh(ax[:, 2 * H :] + rh @ p["Whn"])
        h_new = (1 - z) * n + z * h
        return (h_new,), (x, h, r, z, n, rh)
    if cell in ("leaky", "esn"):  # an echo-state network is leaky units with frozen tensors
        (h,) = state
        k = np.tanh(x @ p["Wx"] + h @ p["Wh"] + p["b"])
        h_new = (1 - p["a"]) * h + p["a"] * k
        return (h_new,), (x, h, k)
    if cell == "indrnn":
        (h,) = state
        pre = x @ p["Wx"] + p["u"] * h + p["b"]
        return (np.maximum(pre, 0.0),), (x, h, pre)
    raise ValueError(cell)


def _cell_step_back(cell, dstate, cache, p, g):
    """Backward of one step: dstate = gradient w.r.t. the new state; accumulates into g and
    returns (dx, gradient w.r.t. the old state)."""
    if cell == "rnn":
        x, h, h_new = cache
        (dh_new,) = dstate
        da = dh_new * (1 - h_new**2)
        g["Wx"] += x.T @ da
        g["Wh"] += h.T @ da
        g["b"] += da.sum(0)
        return da @ p["Wx"].T, (da @ p["Wh"].T,)
    if cell == "lstm":
        x, h, c, i, f, gg, o, c_new = cache
        dh_new, dc_new = dstate
        tc = np.tanh(c_new)
        do = dh_new * tc
        dc = dc_new + dh_new * o * (1 - tc**2)
        di, df, dg = dc * gg, dc * c, dc * i
        da = np.concatenate([di * i * (1 - i), df * f * (1 - f), dg * (1 - gg**2), do * o * (1 - o)], 1)
        g["Wx"] += x.T @ da
        g["Wh"] += h.T @ da
        g["b"] += da.sum(0)
        return da @ p["Wx"].T, (da @ p["Wh"].T, dc * f)
    if cell == "peephole":
        x, h, c, i, f, gg, o, c_new = cache
        dh_new, dc_new = dstate
        H = h.shape[1]
        pi, pf, po = p["peep"][:H], p["peep"][H : 2 * H], p["peep"][2 * H :]
        tc = np.tanh(c_new)
        dao = dh_new * tc * o * (1 - o)
        dc = dc_new + dh_new * o * (1 - tc**2) + dao * po  # o sees c_t
        dai = dc * gg * i * (1 - i)
        daf = dc * c * f * (1 - f)
        dag = dc * i * (1 - gg**2)
        da = np.concatenate([dai, daf, dag, dao], 1)
        g["Wx"] += x.T @ da
        g["Wh"] += h.T @ da
        g["b"] += da.sum(0)
        g["peep"] += np.concatenate([(dai * c).sum(0), (daf * c).sum(0), (dao * c_new).sum(0)])
        return da @ p["Wx"].T, (da @ p["Wh"].T, dc * f + dai * pi + daf * pf)
    if cell == "gru":
        x, h, r, z, n, hn = cache
        (dh_new,) = dstate
        dn = dh_new * (1 - z)
        dz = dh_new * (h - n)
        dn_pre = dn * (1 - n**2)
        dr_pre = dn_pre * hn * r * (1 - r)
        dz_pre = dz * z * (1 - z)
        dax = np.concatenate([dr_pre, dz_pre, dn_pre], 1)
        dah = np.concatenate([dr_pre, dz_pre, dn_pre * r], 1)
        g["Wx"] += x.T @ dax
        g["b"] += dax.sum(0)
        g["Wh"] += h.T @ dah
        g["bhn"] += (dn_pre * r).sum(0)
        return dax @ p["Wx"].T, (dh_new * z + dah @ p["Wh"].T,)
    if cell == "gru-cho":
        x, h, r, z, n, rh = cache
        (dh_new,) = dstate
        dn_pre = dh_new * (1 - z) * (1 - n**2)
        dz_pre = dh_new * (h - n) * z * (1 - z)
        drh = dn_pre @ p["Whn"].T
        dr_pre = drh * h * r * (1 - r)
        dax = np.concatenate([dr_pre, dz_pre, dn_pre], 1)
        dah = np.concatenate([dr_pre, dz_pre], 1)
        g["Wx"] += x.T @ dax
        g["b"] += dax.sum(0)
        g["Wh"] += h.T @ dah
        g["Whn"] += rh.T @ dn_pre
        return dax @ p["Wx"].T, (dh_new * z + drh * r + dah @ p["Wh"].T,)
    if cell in ("leaky", "esn"):
        x, h, k = cache
        (dh_new,) = dstate
        g["a"] += (dh_new * (k - h)).sum(0)
        dpre = dh_new * p["a"] * (1 - k**2)
        g["Wx"] += x.T @ dpre
        g["Wh"] += h.T @ dpre
        g["b"] += dpre.sum(0)
        return dpre @ p["Wx"].T, (dpre @ p["Wh"].T + dh_new * (1 - p["a"]),)
    if cell == "indrnn":
        x, h, pre = cache
        (dh_new,) = dstate
        dpre = dh_new * (pre > 0)
        g["Wx"] += x.T @ dpre
        g["u"] += (dpre * h).sum(0)
        g["b"] += dpre.sum(0)
        return dpre @ p["Wx"].T, (dpre * p["u"],)
    raise ValueError(cell)


def n_states(cell):
    return 2 if cell in ("lstm", "peephole") else 1


def reference_loss_and_grads(cell, layers, out, ids, targets, state0):
    """layers: [{Wx, Wh, b, (bhn)}] float64; out: {Wy, by}; ids, targets (T,B); state0 per
    layer, a tuple of (B,H). Returns (mean loss in nats, grads like layers, grads like out,
    final state per layer, top hidden states (T,B,H), gradient w.r.t. state0 per layer)."""
    T, B = ids.shape
    V = out["Wy"].shape[1]
    state = [tuple(np.array(s, np.float64) for s in st) for st in state0]
    caches = [[None] * T for _ in layers]
    tops = []
    for t in range(T):
        x = np.eye(V)[ids[t]]  # one-hot, as an explicit matrix
        for l, p in enumerate(layers):
            state[l], caches[l][t] = _cell_step(cell, x, state[l], p)
            x = state[l][0]
        tops.append(x)
    tops = np.array(tops)
    logits = tops @ out["Wy"] + out["by"]  # (T,B,V)
    m = logits.max(-1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
    picked = np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    loss = -picked.mean()
    dlogits = np.exp(logp)
    np.put_along_axis(dlogits, targets[..., None], np.take_along_axis(dlogits, targets[..., None], -1) - 1, -1)
    dlogits /= T * B
    gout = {"Wy": np.einsum("tbh,tbv->hv", tops, dlogits), "by": dlogits.sum((0, 1))}
    dtop = dlogits @ out["Wy"].T  # (T,B,H)
    glayers = [{k: np.zeros_like(v) for k, v in p.items()} for p in layers]
    dstate = [tuple(np.zeros_like(s) for s in st) for st in state]
    for t in range(T - 1, -1, -1):
        dx_above = dtop[t]
        for l in range(len(layers) - 1, -1, -1):
            ds = list(dstate[l])
            ds[0] = ds[0] + dx_above
            dx_above, dstate[l] = _cell_step_back(cell, tuple(ds), caches[l][t], layers[l], glayers[l])
    return loss, glayers, gout, state, tops, dstate
