"""Optimizers, gradient clipping and the learning-rate schedule, all over the flat arrays.

Parameters, gradients and every optimizer moment are one contiguous 1-D array each, of the same
size N and dtype, so an update is a single fused pass over memory: each update kernel reads and
writes every element once and allocates nothing. Step-dependent scalars (Adam's bias corrections,
the scheduled learning rate) are computed in Python float64 and passed in already cast to the
arrays' dtype, so the per-element arithmetic stays in that dtype (float32 in training, float64 in
checks).

Parallel kernels split the flat array into fixed chunks of CHUNK elements; each `prange`
iteration owns its chunk, and reductions write one partial per chunk that is summed serially
afterwards, so results do not depend on the number of threads.

Shapes (legend): N parameters. params, grads, m, v are all (N,).
"""
import math

import numpy as np
from numba import prange

from .config import OPTIMIZERS, SCHEDULES  # the names; their rules are below
from .kernels._jit import parallel_kernel
from .kernels.sums import ordered_sum_squares


CHUNK = 1 << 14  # elements per parallel work item: 64 KiB of float32, a few hundred per 5e6

# ----------------------------------------------------------------------------------------------
# Kernels: outputs (updated in place) first, then inputs, then scalars, then the chunk size.
# Weight decay is L2 folded into the gradient, g = grad + wd * p, evaluated with p before the
# update; grads itself is never written.


@parallel_kernel
def adam_step(params, m, v, grads, step_size, inv_sqrt_bc2, beta1, one_minus_beta1, beta2,
              one_minus_beta2, eps, weight_decay, chunk):
    """Adam (Kingma & Ba 2015), t counted from 1:
        m = b1 m + (1-b1) g          v = b2 v + (1-b2) g^2
        p -= lr m_hat / (sqrt(v_hat) + eps),  m_hat = m / (1-b1^t),  v_hat = v / (1-b2^t)
    with step_size = lr / (1-b1^t) and inv_sqrt_bc2 = 1 / sqrt(1-b2^t), so sqrt(v_hat) is
    sqrt(v) * inv_sqrt_bc2 and eps keeps its meaning of the paper's epsilon.
    """
    # params, m, v (N,) in/out     grads (N,) in
    n = params.shape[0]
    for c in prange((n + chunk - 1) // chunk):
        lo, hi = c * chunk, min(c * chunk + chunk, n)
        # per-chunk views indexed from 0: numba then knows no index is negative and LLVM
        # vectorises the loop (with range(lo, hi) the wraparound check blocks it)
        p, mc, vc, gc = params[lo:hi], m[lo:hi], v[lo:hi], grads[lo:hi]
        for i in range(p.shape[0]):
            g = gc[i] + weight_decay * p[i]
            mi = beta1 * mc[i] + one_minus_beta1 * g
            vi = beta2 * vc[i] + one_minus_beta2 * (g * g)
            mc[i] = mi
            vc[i] = vi
            p[i] -= step_size * mi / (np.sqrt(vi) * inv_sqrt_bc2 + eps)


@parallel_kernel
def rmsprop_step(params, v, grads, lr, alpha, one_minus_alpha, eps, weight_decay, chunk):
    """RMSprop as in char-rnn (Tieleman & Hinton 2012):
        v = alpha v + (1-alpha) g^2      p -= lr g / (sqrt(v) + eps)
    """
    # params, v (N,) in/out     grads (N,) in
    n = params.shape[0]
    for c in prange((n + chunk - 1) // chunk):
        lo, hi = c * chunk, min(c * chunk + chunk, n)
        p, vc, gc = params[lo:hi], v[lo:hi], grads[lo:hi]
        for i in range(p.shape[0]):
            g = gc[i] + weight_decay * p[i]
            vi = alpha * vc[i] + one_minus_alpha * (g * g)
            vc[i] = vi
            p[i] -= lr * g / (np.sqrt(vi) + eps)


@parallel_kernel
def adagrad_step(params, v, grads, lr, eps, weight_decay, chunk):
    """Adagrad (Duchi et al. 2011):  v += g^2      p -= lr g / (sqrt(v) + eps)"""
    # params, v (N,) in/out     grads (N,) in
    n = params.shape[0]
    for c in prange((n + chunk - 1) // chunk):
        lo, hi = c * chunk, min(c * chunk + chunk, n)
        p, vc, gc = params[lo:hi], v[lo:hi], grads[lo:hi]
        for i in range(p.shape[0]):
            g = gc[i] + weight_decay * p[i]
            vi = vc[i] + g * g
            vc[i] = vi
            p[i] -= lr * g / (np.sqrt(vi) + eps)


@parallel_kernel
def momentum_step(params, m, grads, lr, momentum, weight_decay, chunk):
    """SGD with classical (heavy-ball) momentum:  m = momentum m + g      p -= lr m
    m starts at zero, so the first step is plain SGD.
    """
    # params, m (N,) in/out     grads (N,) in
    n = params.shape[0]
    for c in prange((n + chunk - 1) // chunk):
        lo, hi = c * chunk, min(c * chunk + chunk, n)
        p, mc, gc = params[lo:hi], m[lo:hi], grads[lo:hi]
        for i in range(p.shape[0]):
            g = gc[i] + weight_decay * p[i]
            mi = momentum * mc[i] + g
            mc[i] = mi
            p[i] -= lr * mi


@parallel_kernel
def sgd_step(params, grads, lr, weight_decay, chunk):
    """Plain SGD:  p -= lr g"""
    # params (N,) in/out     grads (N,) in
    n = params.shape[0]
    for c in prange((n + chunk - 1) // chunk):
        lo, hi = c * chunk, min(c * chunk + chunk, n)
        p, gc = params[lo:hi], grads[lo:hi]
        for i in range(p.shape[0]):
            p[i] -= lr * (gc[i] + weight_decay * p[i])


@parallel_kernel
def sum_squares(grads, chunk):
    """sum_i grads_i^2, accumulated in float64 whatever the dtype of grads.
    No fast-math flags (kernels/_jit.py), so one NaN makes the sum NaN and one Inf makes it Inf.
    """
    # grads (N,) in
    n = grads.shape[0]
    n_chunks = (n + chunk - 1) // chunk
    partial = np.zeros(n_chunks, np.float64)  # (n_chunks,) one slot per prange iteration
    for c in prange(n_chunks):
        lo, hi = c * chunk, min(c * chunk + chunk, n)
        partial[c] = ordered_sum_squares(grads[lo:hi])  # in a fixed order (kernels/sums.py)
    total = 0.0
    for c in range(n_chunks):
        total += partial[c]
    return total


@parallel_kernel
def scale_inplace(grads, scale, chunk):
    """grads *= scale"""
    # grads (N,) in/out
    n = grads.shape[0]
    for c in prange((n + chunk - 1) // chunk):
        lo, hi = c * chunk, min(c * chunk + chunk, n)
        gc = grads[lo:hi]
        for i in range(gc.shape[0]):
            gc[i] *= scale


@parallel_kernel
def clamp_inplace(grads, limit, chunk):
    """grads = clamp(grads, -limit, limit); returns how many elements were changed.
    Comparisons with NaN are false, so a NaN is neither clamped nor counted: it stays NaN.
    """
    # grads (N,) in/out
    n = grads.shape[0]
    n_chunks = (n + chunk - 1) // chunk
    counts = np.zeros(n_chunks, np.int64)  # (n_chunks,) one slot per prange iteration
    for c in prange(n_chunks):
        lo, hi = c * chunk, min(c * chunk + chunk, n)
        gc = grads[lo:hi]
        k = 0
        for i in range(gc.shape[0]):
            x = gc[i]
            if x > limit:
                gc[i] = limit
                k += 1
            elif x < -limit:
                gc[i] = -limit
                k += 1
        counts[c] = k
    total = 0
    for c in range(n_chunks):
        total += counts[c]
    return total


# ----------------------------------------------------------------------------------------------
# Python side


def _check_flat(arr, name, size=None, dtype=None):
    if not isinstance(arr, np.ndarray) or arr.ndim != 1 or not arr.flags.c_contiguous:
        raise ValueError(f"{name} must be a contiguous 1-D numpy array")
    if size is not None and arr.shape[0] != size:
        raise ValueError(f"{name} has {arr.shape[0]} elements, expected {size}")
    if dtype is not None and arr.dtype != dtype:
        raise ValueError(f"{name} has dtype {arr.dtype}, expected {dtype}")
    if arr.dtype not in (np.float32, np.float64):
        raise ValueError(f"{name} must be float32 or float64, not {arr.dtype}")


def moment_names(name: str, momentum: float = 0.9) -> tuple[str, ...]:
    """The moment arrays an optimizer keeps, each the size of the parameters."""
    if name == "adam":
        return ("m", "v")
    if name in ("rmsprop", "adagrad"):
        return ("v",)
    return ("m",) if momentum > 0.0 else ()


def check_hyper(*, lr, momentum, beta1, beta2, alpha, eps, weight_decay) -> dict:
    """The hyperparameters as floats, or a ValueError naming the first one out of its range."""
    hyper = {"lr": lr, "momentum": momentum, "beta1": beta1, "beta2": beta2, "alpha": alpha, "eps": eps,
             "weight_decay": weight_decay}
    hyper = {key: float(value) for key, value in hyper.items()}
    for key, value in hyper.items():
        if not math.isfinite(value):
            raise ValueError(f"{key} must be a finite number, got {value}")
    for key in ("lr", "weight_decay", "eps"):
        if not hyper[key] >= 0.0:
            raise ValueError(f"{key} must be >= 0, got {hyper[key]}")
    for key in ("momentum", "beta1", "beta2", "alpha"):
        if not 0.0 <= hyper[key] < 1.0:
            raise ValueError(f"{key} must be in [0, 1), got {hyper[key]}")
    return hyper


class Optimizer:
    """One optimizer over the flat parameter array: moments are flat arrays of the same size.

    `lr` given here is the base rate recorded in the metadata; `step` takes the rate for that
    update (from `learning_rate`), so the schedule stays in the Python training loop.
    """

    def __init__(self, name: str, size: int, dtype, lr: float, *, momentum=0.9, beta1=0.9,
                 beta2=0.999, alpha=0.95, eps=1e-8, weight_decay=0.0):
        if name not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
        self.name = name
        self.size = int(size)
        self.dtype = np.dtype(dtype)
        if self.size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, not {self.dtype}")
        self._set_hyper(lr=lr, momentum=momentum, beta1=beta1, beta2=beta2, alpha=alpha, eps=eps,
                        weight_decay=weight_decay)
        self.t = 0  # number of updates taken; Adam's bias correction uses t counted from 1
        self._state = self._zero_state()

    def _set_hyper(self, **hyper):
        self.__dict__.update(check_hyper(**hyper))

    def _state_names(self):
        return moment_names(self.name, self.momentum)

    def _zero_state(self):
        return {key: np.zeros(self.size, self.dtype) for key in self._state_names()}

    def step(self, params: np.ndarray, grads: np.ndarray, lr: float, segments=None) -> None:
        """One update of params in place from grads (left unchanged) at learning rate lr.

        segments: the [(lo, hi)] ranges that train (model.Layout.segments); elements outside
        them, frozen tensors, keep their values and their moments stay zero. Default: all."""
        _check_flat(params, "params", self.size, self.dtype)
        _check_flat(grads, "grads", self.size, self.dtype)
        s = self.dtype.type  # scalars go in with the arrays' dtype: float32 math in training
        wd = s(self.weight_decay)
        self.t += 1
        for lo, hi in [(0, self.size)] if segments is None else segments:
            p, g = params[lo:hi], grads[lo:hi]
            m = {k: a[lo:hi] for k, a in self._state.items()}
            if self.name == "adam":
                # bias corrections in float64, whatever the dtype of the arrays
                bc1 = 1.0 - self.beta1**self.t
                bc2 = 1.0 - self.beta2**self.t
                adam_step(p, m["m"], m["v"], g, s(lr / bc1), s(1.0 / math.sqrt(bc2)), s(self.beta1),
                          s(1.0 - self.beta1), s(self.beta2), s(1.0 - self.beta2), s(self.eps), wd, CHUNK)
            elif self.name == "rmsprop":
                rmsprop_step(p, m["v"], g, s(lr), s(self.alpha), s(1.0 - self.alpha), s(self.eps), wd, CHUNK)
            elif self.name == "adagrad":
                adagrad_step(p, m["v"], g, s(lr), s(self.eps), wd, CHUNK)
            elif m:
                momentum_step(p, m["m"], g, s(lr), s(self.momentum), wd, CHUNK)
            else:
                sgd_step(p, g, s(lr), wd, CHUNK)

    def moments(self) -> dict[str, np.ndarray]:
        """The moment arrays by name, themselves (for reading; state_arrays copies them)."""
        return dict(self._state)

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Copies of the moment arrays by name ({} for plain SGD), safe to keep across steps."""
        return {key: arr.copy() for key, arr in self._state.items()}

    def state_meta(self) -> dict:
        """Plain-JSON description: name, hyperparameters, size, dtype and the step count t."""
        return {
            "name": self.name,
            "size": self.size,
            "dtype": self.dtype.name,
            "t": self.t,
            "lr": self.lr,
            "momentum": self.momentum,
            "beta1": self.beta1,
            "beta2": self.beta2,
            "alpha": self.alpha,
            "eps": self.eps,
            "weight_decay": self.weight_decay,
        }

    def load_state(self, arrays: dict, meta: dict) -> None:
        """Restore t, the hyperparameters and the moments saved by state_arrays/state_meta.

        The saved state is authoritative: hyperparameters are taken from meta so that the
        continuation is bit-for-bit the uninterrupted run. The arrays are copied in.
        """
        if meta.get("name") != self.name:
            raise ValueError(f"saved optimizer state is for {meta.get('name')!r}, "
                             f"not {self.name!r}")
        if int(meta.get("size", -1)) != self.size:
            raise ValueError(f"saved optimizer state has {meta.get('size')} elements, "
                             f"expected {self.size}")
        hyper = {key: meta[key]
                 for key in ("momentum", "beta1", "beta2", "alpha", "eps", "weight_decay")}
        # validate everything on a fresh instance first, so a bad checkpoint leaves self unchanged
        loaded = Optimizer(self.name, self.size, self.dtype, meta["lr"], **hyper)
        t = int(meta["t"])
        if t < 0:
            raise ValueError(f"saved step count must be >= 0, got {t}")
        if set(arrays) != set(loaded._state):
            raise ValueError(f"saved {self.name} state has arrays {sorted(arrays)}, "
                             f"expected {sorted(loaded._state)}")
        for key, dst in loaded._state.items():
            src = np.asarray(arrays[key])
            if src.shape != dst.shape:
                raise ValueError(f"saved optimizer array {key!r} has shape {src.shape}, "
                                 f"expected {dst.shape}")
            dst[...] = src
        loaded.t = t
        self.__dict__.update(loaded.__dict__)


def global_norm(grads) -> float:
    """L2 norm of the flat gradient, accumulated in float64. NaN or Inf in grads shows up here."""
    _check_flat(grads, "grads")
    return math.sqrt(sum_squares(grads, CHUNK))


def clip_by_norm(grads, max_norm: float) -> tuple[float, bool]:
    """Clip by global norm (Pascanu et al. 2013): if ||g|| > max_norm, g *= max_norm / ||g||.

    Returns (norm before clipping, whether it clipped); max_norm <= 0 turns clipping off.
    A non-finite norm is returned and grads are left as they are, so the NaN or Inf reaches
    the parameters rather than being scaled into zeros.
    """
    norm = global_norm(grads)
    if max_norm > 0.0 and norm > max_norm and math.isfinite(norm):
        scale_inplace(grads, grads.dtype.type(max_norm / norm), CHUNK)
        return norm, True
    return norm, False


def clip_by_value(grads, limit: float) -> float:
    """Clip by value (Mikolov 2012): clamp every element to [-limit, limit] in place.

    Returns the fraction of elements clipped; limit <= 0 turns clipping off (returns 0.0).
    NaN stays NaN; +-Inf is clamped like any other large value.
    """
    _check_flat(grads, "grads")
    if not limit > 0.0 or grads.shape[0] == 0:
        return 0.0
    clipped = clamp_inplace(grads, grads.dtype.type(limit), CHUNK)
    return clipped / grads.shape[0]


def learning_rate(base_lr: float, step: int, progress: float = 0.0, *, schedule: str = "constant",
                  decay: float = 1.0, decay_every: int = 0, warmup: int = 0, decay_start: float = 0.0) -> float:
    """Learning rate for update `step` (counted from 0), `progress` in [0, 1) of the run's budget.
    Linear and cosine hold base_lr until progress reaches decay_start, then decay over the rest,
    where p = (progress - decay_start) / (1 - decay_start), clamped to [0, 1]:

        linear     base_lr * (1 - p)                         down to zero at the end of the budget
        cosine     base_lr * (1 + cos(pi * p)) / 2           the same ends, a slower start
        step       base_lr * decay ** (step // decay_every)  (decay_every 0: constant)
        constant   base_lr
    each times min(1, (step + 1) / warmup) when warmup > 0.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    lr = float(base_lr)
    progress = min(max((float(progress) - decay_start) / (1.0 - decay_start), 0.0), 1.0)
    if schedule == "linear":
        lr *= 1.0 - progress
    elif schedule == "cosine":
        lr *= 0.5 * (1.0 + math.cos(math.pi * progress))
    elif schedule == "step" and decay_every > 0:
        lr *= decay ** (step // decay_every)
    if warmup > 0:
        lr *= min(1.0, (step + 1) / warmup)
    return lr
