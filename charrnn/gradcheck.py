"""Finite-difference gradient checks of the kernels and the truncated-BPTT scheduler.

A small random model (float64) reads random text through the scheduler for a few updates, so
the window holds real history and the state is not zero. For the next update the analytic
gradient is compared with central differences of the same truncated objective, recomputed
from the saved state with one parameter moved:

    D(h)      = (f(theta + h e_i) - f(theta - h e_i)) / (2h)           central difference
    numeric_i = (4 D(h/2) - D(h)) / 3                                  Richardson: error O(h^4)
    rel_err_i = |analytic_i - numeric_i| / max(|analytic_i|, |numeric_i|, tiny)     (CS231n)

Why Richardson: the loss is about log V ~ 2, so float64 evaluates it to ~1e-15, and a plain
central difference with h = 1e-5 carries ~1e-10 of noise, which swamps the many gradient
elements of size 1e-7 in a small model. Cancelling the h^2 term lets h grow to 1e-2, and the
noise falls to ~1e-13. Elements where both gradients are below tiny = 1e-6 are thereby held to
an absolute error of tolerance * tiny. Correct float64 code shows relative errors around 1e-7.
An element that fails at h (wide or deep models, long windows: larger higher derivatives, so
more truncation error) is measured again at h/10 and h/100 and its best kept; a wrong gradient
fails at every step. An element whose difference crossed a kink is left out, counted as at a
kink. So is an element whose two gradients differ by less than the rounding of the loss allows a
difference to resolve (a deep IndRNN's relu state can make it 6e15): counted as unresolved. A
tensor with every element left out has nothing to compare: it does not fail, and `charrnn
gradcheck` shows it as none compared.
"""
from dataclasses import dataclass

import numpy as np

from .model import Layout, ModelSpec, Stack, init_params
from .tbptt import Scheduler

TINY = 1e-6  # below this, errors are judged against tiny rather than the gradient (see above)


@dataclass
class TensorCheck:
    cell: str
    tensor: str
    checked: int  # elements compared
    max_rel: float
    mean_rel: float
    worst: tuple  # index of the worst element within the tensor
    analytic: float  # the two gradients at the worst element
    numeric: float
    passed: bool  # no element compared failed (with checked 0: errors 0, worst (), gradients nan)
    kinked: int = 0  # elements left out: their finite difference crossed a relu's kink
    unresolved: int = 0  # elements left out: their gradients' difference is within the loss's rounding
    loss: float = float("nan")  # the objective, whose rounding decides what a difference resolves


def check_gradients(cell="lstm", layers=2, hidden=8, steps=6, batch=3, vocab=7, seed=0,
                    k1=None, k2=None, eps=1e-2, tolerance=1e-6, max_per_tensor=200,
                    warmup_updates=None, options=()):
    """Check every parameter tensor; returns a list of TensorCheck.

    Tensors with more than `max_per_tensor` elements are checked on that many elements drawn at
    random; of the input weights, from the rows of the characters the window reads."""
    k1 = steps if k1 is None else k1
    k2 = steps if k2 is None else k2
    rng = np.random.default_rng(seed)
    spec = ModelSpec(cell, vocab, hidden, layers, options)
    params = init_params(spec, rng, np.float64)
    # off the init, so no gradient is trivially 0; frozen tensors keep what their cell drew, and
    # trained ones go back into their cell's domain (a leaky rate above 1 makes the state grow
    # exponentially, which no step size of a finite difference follows)
    noise = rng.normal(0.0, 0.2, params.shape)
    layout = Layout(spec)
    for name, v in layout.views(noise).items():
        if name in layout.frozen:
            v[...] = 0.0
    params += noise
    sched = Scheduler(k1, k2)
    stack = Stack(spec, batch, sched.window, np.float64)
    stack.constrain(params)
    grads = np.zeros_like(params)
    sched.reset(stack, [[rng.normal(0.0, 0.5, (batch, hidden)) for _ in layer]
                        for layer in stack.get_state(sched.c0)])
    # warm up: fill the window with history computed by the same parameters
    n_updates = (warmup_updates if warmup_updates is not None else -(-sched.window // k1)) + 1
    read = np.zeros(vocab, bool)  # the characters the window reads: the rows of Wx with a gradient
    for u in range(n_updates):
        ids, targets = sched.inputs(stack)
        text = rng.integers(0, vocab, (k1 + 1, batch), dtype=np.int32)
        read[text[:-1]] = True
        ids[:] = text[:-1]
        targets[:] = text[1:]
        if u < n_updates - 1:
            sched.update(stack, params, grads)
            sched.advance(stack)
    sched.update(stack, params, grads)  # the update under test: its analytic gradient
    analytic = grads.copy()
    entering = stack.get_state(sched.g0)

    kinks = getattr(stack.cell, "kinks", None)

    def pattern():
        """Which side of its kink every relu unit of the window is on (None: a smooth cell)."""
        return None if kinks is None else b"".join(np.packbits(kinks(buf)).tobytes() for buf in stack.bufs)

    def objective(theta):
        stack.set_state(sched.g0, entering)
        return sched.objective(stack, theta)

    def central(k, h):
        """The central difference, and whether it crossed a kink: a relu that switched on or
        off between theta - h and theta + h (then the difference is no derivative; CS231n)."""
        saved = params[k]
        params[k] = saved + h
        f_plus = objective(params)
        crossed = pattern() != base
        params[k] = saved - h
        f_minus = objective(params)
        crossed = crossed or pattern() != base
        params[k] = saved
        return (f_plus - f_minus) / (2.0 * h), crossed

    f0 = objective(params)
    assert np.isfinite(f0), "the objective is not finite"
    # what a difference at the largest step can resolve: a gradient that far from the numeric
    # one cannot be told from it (a relu state grown so large that the loss is 6e15, which float64
    # holds to the nearest 1: every difference of a step of 0.01 was 0, and correct gradients failed)
    rounding = 4.0 * np.spacing(abs(f0)) / eps
    base = pattern()
    layout = Layout(spec)
    results = []
    for name, shape, offset in layout.entries:
        if name in layout.frozen:
            continue  # not a parameter that trains: its gradient is never used
        size = int(np.prod(shape))
        # of the input weights, the rows of characters read (the others' gradients are 0, and
        # would pass compared with nothing; at V=512 almost every element drawn was one)
        candidates = np.flatnonzero(np.repeat(read, size // vocab)) if name == "layer0.Wx" else np.arange(size)
        if candidates.size <= max_per_tensor:
            picks = candidates
        else:
            picks = np.sort(rng.choice(candidates, max_per_tensor, replace=False))
        rel, nums, smooth = np.empty(len(picks)), np.empty(len(picks)), np.ones(len(picks), bool)
        for n, i in enumerate(picks):
            k = offset + i
            ana = analytic[k]
            for h in (eps, eps / 10, eps / 100):  # a smaller step where the difference's truncation shows
                (half, crossed_half), (full, crossed_full) = central(k, h / 2), central(k, h)
                num = (4.0 * half - full) / 3.0
                err = abs(ana - num) / max(abs(ana), abs(num), TINY)
                if h == eps or err < rel[n]:
                    nums[n], rel[n], smooth[n] = num, err, not (crossed_half or crossed_full)
                if rel[n] <= tolerance:
                    break
        kinked = int((~smooth).sum())
        resolved = (rel <= tolerance) | (np.abs(analytic[offset + picks] - nums) > rounding)
        kept = smooth & resolved
        picks, rel, nums = picks[kept], rel[kept], nums[kept]
        common = dict(cell=cell, tensor=name, checked=int(kept.sum()), kinked=kinked,
                      unresolved=int((smooth & ~resolved).sum()), loss=float(f0))
        if picks.size == 0:  # every element crossed a kink, or is unresolved: nothing compared, nothing failed
            results.append(TensorCheck(**common, max_rel=0.0, mean_rel=0.0, worst=(), analytic=float("nan"),
                                       numeric=float("nan"), passed=True))
            continue
        w = int(np.argmax(rel))
        worst_flat = int(picks[w])
        results.append(TensorCheck(
            **common, max_rel=float(rel.max()), mean_rel=float(rel.mean()),
            worst=tuple(int(x) for x in np.unravel_index(worst_flat, shape)),
            analytic=float(analytic[offset + worst_flat]), numeric=float(nums[w]),
            passed=bool(rel.max() <= tolerance and np.isfinite(rel).all()),
        ))
    return results
