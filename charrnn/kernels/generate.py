"""Generation: one stream, one character per step, a whole chunk of steps per jitted call.

The training kernels work on (T, B) windows and reach BLAS through large matrix products; a
sampler has one stream and must choose each character before it can feed the next, so its
work per character is a chain of vector-matrix products (kernels/matvec.py). These kernels run
that chain for a whole chunk of characters inside numba (no Python between characters):

    layer 0:   xg = Wx[id] + b                 (a row lookup: the input is one-hot)
    layer l>0: xg = h_{l-1} @ Wx + b           (the new state of the layer below)
    every l:   the cell's own `step` kernel, in its module beside its training kernels, from
               the old state of layer l: the cell's equations are written there once
    output:    logits = h_{L-1} @ Wy + by

They follow the training kernels' order of additions (inputs.py, output.py and each cell's
step); only the summation inside the products differs, so the logits agree to rounding
(tests/test_sampling.py holds them to the training path).

Shapes (legend): L layers, H hidden units, V vocabulary, G = gates * H, N characters in a chunk.

State: h (L,H) holds every layer's hidden state, c (L,H) a second state per layer for the
cells that have one (the LSTM's cell state; unused by the others, so that one signature serves
every cell).

Weights: the model's flat parameter buffer itself plus a table of offsets into it, which works
for any number of layers without building tuples or typed lists in Python:
    offs (L+1, K) int64   row l < L: offsets of layer l's Wx, b, then of the cell's other
                          tensors in storage order (-1 past them)
                          row L:     offsets of Wy, by (then unused entries)
Each tensor is viewed inside the kernels as params[o : o + size].reshape(shape), input-major
like the training layout: Wx (In,G) with In = V for layer 0 and H above, b (G,), Wy (H,V), by (V,).

The cell's step is chosen by an integer code (CODES): numba compiles a function passed as an
argument afresh in every process (its cache does not keep it), so the dispatch is a branch per
cell in _step. A cell without a branch cannot be sampled: Sampler refuses it by name.

Products: `blas` picks BLAS gemv or the hand-written loop of kernels/matvec.py. `charrnn sample`
runs gemv on SAMPLE_THREADS = 2 BLAS threads (sampling.py), about 1.7x faster than one core on
an idle machine, since a stream's products are bound by memory bandwidth; a Sampler on one
thread uses the hand loop, which depends on neither BLAS nor its threads.

Randomness: kernels never own RNG state. The caller passes one uniform number in [0, 1) per
character to be chosen, drawn from its numpy Generator.
"""
import numpy as np

from ._jit import kernel
from .gru import step as gru_step
from .gru_cho import step as gru_cho_step
from .indrnn import step as indrnn_step
from .leaky import step as leaky_step
from .lstm import step as lstm_step
from .matvec import matvec
from .peephole import step as peephole_step
from .rnn import step as rnn_step

# the branches of _step; esn runs the leaky unit's step on its frozen tensors
CODES = {"rnn": 0, "lstm": 1, "gru": 2, "leaky": 3, "esn": 3, "indrnn": 4, "peephole": 5, "gru-cho": 6}


def offsets_table(layout):
    """offs (L+1, K) int64 for a model.Layout: see the module docstring."""
    L = layout.spec.layers
    rows = [[] for _ in range(L)]
    for name, _, offset in layout.entries:
        if name.startswith("layer"):
            layer, short = name.split(".", 1)
            rows[int(layer[5:])].append((short, offset))
    order = [[dict(r)["Wx"], dict(r)["b"]] + [o for short, o in r if short not in ("Wx", "b")] for r in rows]
    offs = np.full((L + 1, max(2, *(len(r) for r in order))), -1, np.int64)
    for l, r in enumerate(order):
        offs[l, : len(r)] = r
    where = {name: offset for name, _, offset in layout.entries}
    offs[L, 0] = where["output.Wy"]
    offs[L, 1] = where["output.by"]
    return offs


# ---------------------------------------------------------------------------------------------
# One step of the stack, and the output layer


@kernel
def _step(h, c, xg, hg, x_id, params, offs, cell, V, blas):
    # h, c (L,H) in/out: the state, updated in place    xg, hg (G,) scratch    x_id: input char
    L, H = h.shape
    G = xg.shape[0]
    for l in range(L):
        o = offs[l]
        b = params[o[1] : o[1] + G]
        # xg = x @ Wx + b, exactly as kernels/inputs.py: a row lookup for the one-hot layer 0
        if l == 0:
            row = params[o[0] + x_id * G : o[0] + (x_id + 1) * G]
            for k in range(G):
                xg[k] = row[k] + b[k]
        else:
            Wx = params[o[0] : o[0] + H * G].reshape((H, G))
            matvec(xg, h[l - 1], Wx, blas)
            for k in range(G):
                xg[k] += b[k]
        if cell == 0:
            rnn_step(h[l], c[l], xg, hg, params, o, blas)
        elif cell == 1:
            lstm_step(h[l], c[l], xg, hg, params, o, blas)
        elif cell == 2:
            gru_step(h[l], c[l], xg, hg, params, o, blas)
        elif cell == 3:
            leaky_step(h[l], c[l], xg, hg, params, o, blas)
        elif cell == 4:
            indrnn_step(h[l], c[l], xg, hg, params, o, blas)
        elif cell == 5:
            peephole_step(h[l], c[l], xg, hg, params, o, blas)
        elif cell == 6:
            gru_cho_step(h[l], c[l], xg, hg, params, o, blas)


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
    order (V,) is scratch for the ranking. -1 if a logit is NaN or Inf (a broken model): no
    choice among them means anything."""
    V = logits.shape[0]
    best = 0
    finite = abs(logits[0]) < np.inf  # false for NaN too
    for v in range(1, V):
        finite &= abs(logits[v]) < np.inf
        if logits[v] > logits[best]:
            best = v
    if not finite:
        return -1
    inv_t = 1.0 / temperature
    if temperature == 0.0 or inv_t == np.inf:  # 1/t overflows below 5.6e-309: the limit, the argmax
        return best  # (scaled by inf, the best logit's 0 would be NaN)
    m = logits[best]
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
    Returns the last chosen id, to be fed first in the next chunk; -1 if a logit was NaN or
    Inf (a broken model: no choice among them means anything), out_ids from there on -1 too."""
    L = h.shape[0]
    V = z.shape[0]
    x_id = first_id
    for t in range(out_ids.shape[0]):
        _step(h, c, xg, hg, x_id, params, offs, cell, V, blas)
        _logits(z, h[L - 1], params, offs, blas)
        x_id = select(z, probs, order, temperature, top_k, top_p, uniforms[t])
        if x_id < 0:  # a broken model (select)
            out_ids[t:] = -1
            return -1
        out_ids[t] = x_id
    return x_id
