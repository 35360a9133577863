"""Generation: one stream, one character per step, a whole chunk of steps per jitted call.

The training kernels work on (T, B) windows and reach BLAS through large matrix products; a
sampler has one stream and must choose each character before it can feed the next, so its
work per character is a chain of vector-matrix products. These kernels run that chain for a
whole chunk of characters inside numba (no Python between characters). They follow the
training kernels' equations and the order of their additions (see rnn.py, lstm.py, gru.py,
inputs.py, output.py); only the summation inside the products differs, so the logits agree to
rounding (tests/test_sampling.py holds them to the training path):

    layer 0:   xg = Wx[id] + b                 (a row lookup: the input is one-hot)
    layer l>0: xg = h_{l-1} @ Wx + b           (the new state of the layer below)
    every l:   hg = h_l @ Wh                   (the recurrent product, from the old state)
               rnn:  h = tanh(hg + xg)
               lstm: i,f,o = sigmoid, g = tanh of (hg + xg), blocks [i | f | g | o];
                     c = f * c + i * g;  h = o * tanh(c)
               gru:  r, z = sigmoid(xg + hg) of blocks r, z;
                     n = tanh(xg_n + r * (hg_n + b_hn));  h = (1 - z) * n + z * h
    output:    logits = h_{L-1} @ Wy + by

Shapes (legend): L layers, H hidden units, V vocabulary, G = gates * H (rnn 1, lstm 4, gru 3),
N characters in a chunk.

State: h (L,H) holds every layer's hidden state, c (L,H) the LSTM cell states (allocated but
unused for rnn and gru, so that one signature serves all three cells).

Weights: the model's flat parameter buffer itself plus a table of offsets into it, which works
for any number of layers without building tuples or typed lists in Python:
    offs (L+1, 4) int64   row l < L: offsets of layer l's Wx, Wh, b, bhn (bhn -1 unless gru)
                          row L:     offsets of Wy, by (then two unused entries)
Each tensor is viewed inside the kernel as params[o : o + size].reshape(shape), input-major
like the training layout: Wx (In,G) with In = V for layer 0 and H above, Wh (H,G), b (G,),
bhn (H,), Wy (H,V), by (V,).

Vector-matrix products: with `blas` true, np.dot, which numba hands to BLAS sgemv/dgemv (held
to one thread by _jit.py); otherwise a hand loop that adds rows of W scaled by x[i], four rows
per pass over the output (contiguous, vectorised). With H=512 each LSTM matrix is 4 MB of
float32, so both are bound by memory bandwidth and run at about the same speed
(benchmarks/bench_sample.py measures both). The sampler uses the hand loop, which does not
depend on BLAS or its threads: two BLAS threads were about 1.7x faster on an idle machine and
several times slower on a busy one, where each small product waits for the other thread.

Randomness: kernels never own RNG state. The caller passes one uniform number in [0, 1) per
character to be chosen, drawn from its numpy Generator.
"""
import numpy as np

from ._jit import kernel
from .activations import sigmoid, tanh

RNN, LSTM, GRU = 0, 1, 2
CELL_CODES = {"rnn": RNN, "lstm": LSTM, "gru": GRU}
GATES = {RNN: 1, LSTM: 4, GRU: 3}


def offsets_table(layout):
    """offs (L+1, 4) int64 for a model.Layout: see the module docstring."""
    L = layout.spec.layers
    where = {name: offset for name, _, offset in layout.entries}
    offs = np.full((L + 1, 4), -1, np.int64)
    for l in range(L):
        for k, name in enumerate(("Wx", "Wh", "b", "bhn")):
            offs[l, k] = where.get(f"layer{l}.{name}", -1)
    offs[L, 0] = where["output.Wy"]
    offs[L, 1] = where["output.by"]
    return offs


# ---------------------------------------------------------------------------------------------
# Vector-matrix product


@kernel
def matvec(out, x, W, blas):
    # out (G,) = x (n,) @ W (n,G), W C-contiguous (input-major, as every weight here)
    if blas:
        np.dot(x, W, out)
        return
    n, G = W.shape
    for k in range(G):
        out[k] = 0.0
    # Four rows per pass: out is read and written once for four rows of W, so the loop is
    # bound by W's stream from memory rather than by loads and stores of out.
    i = 0
    while i + 4 <= n:
        x0, x1, x2, x3 = x[i], x[i + 1], x[i + 2], x[i + 3]
        r0, r1, r2, r3 = W[i], W[i + 1], W[i + 2], W[i + 3]
        for k in range(G):
            out[k] += x0 * r0[k] + x1 * r1[k] + x2 * r2[k] + x3 * r3[k]
        i += 4
    while i < n:
        xi = x[i]
        row = W[i]
        for k in range(G):
            out[k] += xi * row[k]
        i += 1


# ---------------------------------------------------------------------------------------------
# One step of the stack, and the output layer


@kernel
def _step(h, c, xg, hg, x_id, params, offs, cell, V, blas):
    # h, c (L,H) in/out: the state, updated in place    xg, hg (G,) scratch    x_id: input char
    L, H = h.shape
    G = xg.shape[0]
    for l in range(L):
        o_wx, o_wh, o_b, o_bhn = offs[l, 0], offs[l, 1], offs[l, 2], offs[l, 3]
        b = params[o_b : o_b + G]
        # xg = x @ Wx + b, exactly as kernels/inputs.py: a row lookup for the one-hot layer 0
        if l == 0:
            row = params[o_wx + x_id * G : o_wx + (x_id + 1) * G]
            for k in range(G):
                xg[k] = row[k] + b[k]
        else:
            Wx = params[o_wx : o_wx + H * G].reshape((H, G))
            matvec(xg, h[l - 1], Wx, blas)
            for k in range(G):
                xg[k] += b[k]
        # hg = h @ Wh from the old state, before h is overwritten below
        Wh = params[o_wh : o_wh + H * G].reshape((H, G))
        matvec(hg, h[l], Wh, blas)
        hl = h[l]
        if cell == RNN:
            for j in range(H):
                hl[j] = tanh(hg[j] + xg[j])
        elif cell == LSTM:
            cl = c[l]
            for j in range(H):
                i = sigmoid(hg[j] + xg[j])
                f = sigmoid(hg[H + j] + xg[H + j])
                g = tanh(hg[2 * H + j] + xg[2 * H + j])
                o = sigmoid(hg[3 * H + j] + xg[3 * H + j])
                cj = f * cl[j] + i * g
                cl[j] = cj
                hl[j] = o * tanh(cj)
        else:
            bhn = params[o_bhn : o_bhn + H]
            for j in range(H):
                r = sigmoid(xg[j] + hg[j])
                z = sigmoid(xg[H + j] + hg[H + j])
                n = tanh(xg[2 * H + j] + r * (hg[2 * H + j] + bhn[j]))
                hl[j] = (1.0 - z) * n + z * hl[j]


@kernel
def _logits(z, h_top, params, offs, blas):
    # z (V,) out: h_top (H,) @ Wy + by, as kernels/output.py logits_forward
    L = offs.shape[0] - 1
    H = h_top.shape[0]
    V = z.shape[0]
    o_wy, o_by = offs[L, 0], offs[L, 1]
    Wy = params[o_wy : o_wy + H * V].reshape((H, V))
    matvec(z, h_top, Wy, blas)
    for v in range(V):
        z[v] += params[o_by + v]


# ---------------------------------------------------------------------------------------------
# Choosing the next character


@kernel
def _ranks_before(probs, a, b):
    # a is more probable than b; equal probabilities rank by id, so the order is unique
    return probs[a] > probs[b] or (probs[a] == probs[b] and a < b)


@kernel
def _sift_down(order, probs, start, end):
    # a heap whose root ranks last: after the sort, order[0] is the most probable id
    root = start
    while True:
        child = 2 * root + 1
        if child >= end:
            return
        if child + 1 < end and _ranks_before(probs, order[child], order[child + 1]):
            child += 1
        if _ranks_before(probs, order[root], order[child]):
            order[root], order[child] = order[child], order[root]
            root = child
        else:
            return


@kernel
def rank_by_probability(order, probs):
    # order (V,) out: ids from most to least probable (ties by id); a heap sort, O(V log V),
    # in place, so nothing is allocated per character
    V = probs.shape[0]
    for v in range(V):
        order[v] = v
    for start in range(V // 2 - 1, -1, -1):
        _sift_down(order, probs, start, V)
    for end in range(V - 1, 0, -1):
        order[0], order[end] = order[end], order[0]
        _sift_down(order, probs, 0, end)


@kernel
def _last_positive_ranked(order, probs, kept):
    for j in range(kept - 1, -1, -1):
        if probs[order[j]] > 0.0:
            return order[j]
    return order[0]


@kernel
def select(logits, probs, order, temperature, top_k, top_p, u):
    """The id chosen from logits (V,) with one uniform number u in [0, 1).

    temperature 0: the argmax (the first of equal maxima), u unused. Otherwise
        p = softmax(logits / temperature)                       (float64, in probs (V,))
        top_k > 0:  keep the top_k most probable ids
        top_p < 1:  of those, keep the smallest most-probable-first prefix whose probability
                    reaches top_p of their total (nucleus sampling, Holtzman et al. 2019)
    and draw from what is kept, renormalised, by inverting its cumulative sum at u.
    order (V,) is scratch for the ranking."""
    V = logits.shape[0]
    best = 0
    for v in range(1, V):
        if logits[v] > logits[best]:
            best = v
    if temperature == 0.0:
        return best
    m = logits[best]
    inv_t = 1.0 / temperature
    total = 0.0
    for v in range(V):
        p = np.exp((np.float64(logits[v]) - m) * inv_t)
        probs[v] = p
        total += p
    if (0 < top_k < V) or top_p < 1.0:
        rank_by_probability(order, probs)
        kept = V if top_k <= 0 else min(top_k, V)
        mass = 0.0
        for j in range(kept):
            mass += probs[order[j]]
        if top_p < 1.0:
            goal = top_p * mass
            cum = 0.0
            n = 0
            while n < kept:
                cum += probs[order[n]]
                n += 1
                if cum >= goal:
                    break
            kept = n
            mass = cum
        r = u * mass
        cum = 0.0
        for j in range(kept):
            cum += probs[order[j]]
            if r < cum:
                return order[j]
        # u * mass rounded up to the whole mass: the last kept id that can be drawn at all
        return _last_positive_ranked(order, probs, kept)
    r = u * total
    cum = 0.0
    for v in range(V):
        cum += probs[v]
        if r < cum:
            return v
    # u * total rounded up to the whole sum: the last id that can be drawn at all
    for v in range(V - 1, -1, -1):
        if probs[v] > 0.0:
            return v
    return best



# ---------------------------------------------------------------------------------------------
# The chunk kernels


@kernel
def teacher_force(logits, h, c, xg, hg, ids, params, offs, cell, blas):
    """Feed ids (N,) through the stack from the state (h, c), updating it in place.

    logits (N,V) out: the logits after each character, if it has N rows; give it 0 rows to
    only warm up the state (priming), which skips the output layer."""
    N = ids.shape[0]
    V = logits.shape[1]
    keep = logits.shape[0] == N
    L = h.shape[0]
    for t in range(N):
        _step(h, c, xg, hg, ids[t], params, offs, cell, V, blas)
        if keep:
            _logits(logits[t], h[L - 1], params, offs, blas)


@kernel
def generate(out_ids, h, c, xg, hg, z, probs, order, first_id, uniforms, params, offs, cell,
             temperature, top_k, top_p, blas):
    """Generate N = out_ids.shape[0] characters, feeding each chosen one back in.

    out_ids (N,) out: the chosen ids    h, c (L,H) in/out: the state
    xg, hg (G,), z (V,) model dtype, probs (V,) float64, order (V,) int64: scratch
    first_id: the character fed first (the last of the prime)
    uniforms (N,) in [0,1): one per chosen character (see select)
    Returns the last chosen id, to be fed first in the next chunk."""
    L = h.shape[0]
    V = z.shape[0]
    x_id = first_id
    for t in range(out_ids.shape[0]):
        _step(h, c, xg, hg, x_id, params, offs, cell, V, blas)
        _logits(z, h[L - 1], params, offs, blas)
        x_id = select(z, probs, order, temperature, top_k, top_p, uniforms[t])
        out_ids[t] = x_id
    return x_id
