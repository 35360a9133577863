"""Optimizers, clipping and the schedule against plain numpy written out here, in float64."""
import json
import math

import numpy as np
import pytest

from charrnn.optim import (
    CHUNK,
    OPTIMIZERS,
    Optimizer,
    clip_by_norm,
    clip_by_value,
    global_norm,
    learning_rate,
)

# (name, keyword hyperparameters): every optimizer, sgd with and without momentum, and L2 decay
CONFIGS = [
    ("adam", {}),
    ("adam", {"beta1": 0.8, "beta2": 0.99, "eps": 1e-6, "weight_decay": 0.01}),
    ("rmsprop", {}),
    ("rmsprop", {"alpha": 0.9, "weight_decay": 0.05}),
    ("adagrad", {}),
    ("adagrad", {"eps": 1e-3, "weight_decay": 0.02}),
    ("sgd", {}),
    ("sgd", {"momentum": 0.0}),
    ("sgd", {"momentum": 0.5, "weight_decay": 0.1}),
    ("sgd", {"momentum": 0.0, "weight_decay": 0.1}),
]
IDS = [f"{name}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'default'}" for name, kw in CONFIGS]
# one element, one chunk, and several chunks with a ragged last one
SIZES = [1, 37, 2 * CHUNK + 7]


class Reference:
    """The update rules as written in the papers, one numpy expression per line, float64."""

    def __init__(self, name, n, momentum=0.9, beta1=0.9, beta2=0.999, alpha=0.95, eps=1e-8,
                 weight_decay=0.0):
        self.name, self.momentum, self.beta1, self.beta2 = name, momentum, beta1, beta2
        self.alpha, self.eps, self.wd = alpha, eps, weight_decay
        self.m = np.zeros(n)
        self.v = np.zeros(n)
        self.t = 0

    def step(self, p, grad, lr):
        g = grad + self.wd * p
        self.t += 1
        if self.name == "adam":
            self.m = self.beta1 * self.m + (1 - self.beta1) * g
            self.v = self.beta2 * self.v + (1 - self.beta2) * g**2
            m_hat = self.m / (1 - self.beta1**self.t)
            v_hat = self.v / (1 - self.beta2**self.t)
            return p - lr * m_hat / (np.sqrt(v_hat) + self.eps)
        if self.name == "rmsprop":
            self.v = self.alpha * self.v + (1 - self.alpha) * g**2
            return p - lr * g / (np.sqrt(self.v) + self.eps)
        if self.name == "adagrad":
            self.v = self.v + g**2
            return p - lr * g / (np.sqrt(self.v) + self.eps)
        if self.momentum > 0:
            self.m = self.momentum * self.m + g
            return p - lr * self.m
        return p - lr * g

    def state(self):
        if self.name == "adam":
            return {"m": self.m, "v": self.v}
        if self.name in ("rmsprop", "adagrad"):
            return {"v": self.v}
        return {"m": self.m} if self.momentum > 0 else {}


def grad_sequence(n, steps, seed):
    """Changing gradients with a spread of scales, so no term of an update is negligible."""
    rng = np.random.default_rng(seed)
    scale = np.exp(rng.uniform(-3, 1, n))
    return [rng.normal(0, 1, n) * scale for _ in range(steps)]


LRS = [0.01, 0.03, 0.02, 0.005, 0.05, 0.01]


def run(opt, p, grads, lrs):
    for g, lr in zip(grads, lrs):
        opt.step(p, g, lr)
    return p


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("name,kw", CONFIGS, ids=IDS)
def test_step_matches_numpy_reference(name, kw, n):
    rng = np.random.default_rng(1)
    p0 = rng.normal(0, 1, n)
    grads = grad_sequence(n, 5, seed=2)
    opt = Optimizer(name, n, np.float64, 0.01, **kw)
    ref = Reference(name, n, **kw)
    p, p_ref = p0.copy(), p0.copy()
    for k, g in enumerate(grads):
        g_before = g.copy()
        opt.step(p, g, LRS[k])
        p_ref = ref.step(p_ref, g, LRS[k])
        assert np.array_equal(g, g_before), "step must not write into grads"
        # atol 1e-14: a value that cancels to near zero keeps only absolute accuracy (values
        # here are O(1), updates O(lr)); far below any error in the update rules themselves
        np.testing.assert_allclose(p, p_ref, rtol=1e-12, atol=1e-14)
        state, state_ref = opt.state_arrays(), ref.state()
        assert set(state) == set(state_ref)
        for key in state:
            np.testing.assert_allclose(state[key], state_ref[key], rtol=1e-12, atol=1e-14)
    assert not np.array_equal(p, p0)
    assert opt.state_meta()["t"] == 5


@pytest.mark.parametrize("name,kw", CONFIGS, ids=IDS)
def test_float32_close_to_float64(name, kw):
    n = 2 * CHUNK + 7
    rng = np.random.default_rng(3)
    p0 = rng.normal(0, 1, n).astype(np.float32).astype(np.float64)
    grads = [g.astype(np.float32) for g in grad_sequence(n, 5, seed=4)]
    p32, p64 = p0.astype(np.float32), p0.copy()
    opt32 = Optimizer(name, n, np.float32, 0.01, **kw)
    opt64 = Optimizer(name, n, np.float64, 0.01, **kw)
    for k, g in enumerate(grads):
        opt32.step(p32, g, LRS[k])
        opt64.step(p64, g.astype(np.float64), LRS[k])
    assert p32.dtype == np.float32
    assert all(a.dtype == np.float32 for a in opt32.state_arrays().values())
    np.testing.assert_allclose(p32, p64, rtol=1e-5, atol=1e-6)
    # and the update is real: p moved far more than the float32 error allowed above
    assert np.abs(p64 - p0).max() > 1e-3


def test_step_rejects_wrong_arrays():
    opt = Optimizer("adam", 10, np.float32, 0.01)
    with pytest.raises(ValueError):
        opt.step(np.zeros(10), np.zeros(10), 0.01)  # float64 into a float32 optimizer
    with pytest.raises(ValueError):
        opt.step(np.zeros(9, np.float32), np.zeros(9, np.float32), 0.01)
    with pytest.raises(ValueError):
        opt.step(np.zeros(20, np.float32)[::2], np.zeros(10, np.float32), 0.01)


def test_nan_gradient_reaches_params():
    for name, kw in CONFIGS:
        p = np.ones(2 * CHUNK + 7, np.float32)
        g = np.full_like(p, 0.1)
        g[CHUNK + 3] = np.nan
        Optimizer(name, p.size, np.float32, 0.01, **kw).step(p, g, 0.01)
        assert np.isnan(p[CHUNK + 3]), name
        assert np.isfinite(np.delete(p, CHUNK + 3)).all(), name


def test_unknown_optimizer_lists_the_choices():
    with pytest.raises(ValueError) as err:
        Optimizer("adamw", 10, np.float32, 0.01)
    for name in OPTIMIZERS:
        assert name in str(err.value)


def test_plain_sgd_has_no_state_and_the_others_do():
    assert Optimizer("sgd", 10, np.float32, 0.1, momentum=0.0).state_arrays() == {}
    assert set(Optimizer("sgd", 10, np.float32, 0.1).state_arrays()) == {"m"}
    assert set(Optimizer("adam", 10, np.float32, 0.1).state_arrays()) == {"m", "v"}
    assert set(Optimizer("rmsprop", 10, np.float32, 0.1).state_arrays()) == {"v"}
    assert set(Optimizer("adagrad", 10, np.float32, 0.1).state_arrays()) == {"v"}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,kw", CONFIGS, ids=IDS)
def test_state_round_trip_is_bitwise(name, kw, dtype):
    n = 2 * CHUNK + 7
    rng = np.random.default_rng(5)
    p0 = rng.normal(0, 1, n).astype(dtype)
    grads = [g.astype(dtype) for g in grad_sequence(n, 6, seed=6)]

    straight = Optimizer(name, n, dtype, 0.01, **kw)
    p_straight = run(straight, p0.copy(), grads, LRS)

    first = Optimizer(name, n, dtype, 0.01, **kw)
    p = run(first, p0.copy(), grads[:3], LRS[:3])
    arrays = first.state_arrays()
    meta = json.loads(json.dumps(first.state_meta()))  # must survive JSON unchanged
    assert meta == first.state_meta()
    assert meta["t"] == 3
    # the saved arrays are a snapshot: further steps of `first` must not change them
    run(first, p.copy(), grads[3:], LRS[3:])
    # a fresh optimizer built with other hyperparameters: the saved ones must win
    resumed = Optimizer(name, n, dtype, 0.5, **{k: v * 0.5 for k, v in kw.items()})
    resumed.load_state(arrays, meta)
    assert resumed.state_meta() == meta
    p = run(resumed, p, grads[3:], LRS[3:])

    assert p.tobytes() == p_straight.tobytes()
    for key, arr in straight.state_arrays().items():
        assert resumed.state_arrays()[key].tobytes() == arr.tobytes(), key
    assert resumed.state_meta() == straight.state_meta()


def test_load_state_rejects_mismatches_and_leaves_self_unchanged():
    opt = Optimizer("adam", 10, np.float32, 0.01)
    opt.step(np.zeros(10, np.float32), np.ones(10, np.float32), 0.01)
    before = (opt.state_meta(), {k: a.tobytes() for k, a in opt.state_arrays().items()})
    other = Optimizer("rmsprop", 10, np.float32, 0.01)
    with pytest.raises(ValueError):
        opt.load_state(other.state_arrays(), other.state_meta())
    bigger = Optimizer("adam", 11, np.float32, 0.01)
    with pytest.raises(ValueError):
        opt.load_state(bigger.state_arrays(), bigger.state_meta())
    fresh = Optimizer("adam", 10, np.float32, 0.01)
    with pytest.raises(ValueError):
        opt.load_state({"m": fresh.state_arrays()["m"]}, fresh.state_meta())  # "v" missing
    with pytest.raises(ValueError):
        opt.load_state(fresh.state_arrays(), {**fresh.state_meta(), "beta2": 1.5})
    assert (opt.state_meta(), {k: a.tobytes() for k, a in opt.state_arrays().items()}) == before


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", SIZES)
def test_global_norm_matches_numpy_in_float64(n, dtype):
    rng = np.random.default_rng(7)
    g = (rng.normal(0, 1, n) * np.exp(rng.uniform(-5, 5, n))).astype(dtype)
    # float64 accumulation: a float32 sum over 3e4 elements would miss 1e-12 by far
    assert global_norm(g) == pytest.approx(np.linalg.norm(g.astype(np.float64)), rel=1e-12)
    assert isinstance(global_norm(g), float)


def test_global_norm_of_empty_and_zero():
    assert global_norm(np.zeros(0, np.float32)) == 0.0
    assert global_norm(np.zeros(5, np.float32)) == 0.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("where", [0, CHUNK, 2 * CHUNK + 6])
def test_global_norm_propagates_nan_and_inf(where, dtype):
    g = np.ones(2 * CHUNK + 7, dtype)
    g[where] = np.nan
    assert math.isnan(global_norm(g))
    g[where] = np.inf
    assert global_norm(g) == math.inf
    g[where] = -np.inf
    assert global_norm(g) == math.inf
    g[where] = np.nan
    g[where - 1] = np.inf  # NaN wins over Inf, as in numpy
    assert math.isnan(global_norm(g))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clip_by_norm_rescales_large_gradients(dtype):
    rng = np.random.default_rng(8)
    g0 = rng.normal(0, 1, 2 * CHUNK + 7).astype(dtype)
    norm0 = np.linalg.norm(g0.astype(np.float64))
    g = g0.copy()
    norm, clipped = clip_by_norm(g, 5.0)
    assert clipped is True
    assert norm == pytest.approx(norm0, rel=1e-12)  # the norm before clipping
    assert np.linalg.norm(g.astype(np.float64)) == pytest.approx(5.0, rel=1e-6)
    # direction unchanged: every element scaled by the same factor
    np.testing.assert_allclose(g, g0 * (5.0 / norm0), rtol=1e-6)


@pytest.mark.parametrize("max_norm", [1e9, 0.0, -1.0])
def test_clip_by_norm_leaves_small_gradients_or_when_off(max_norm):
    rng = np.random.default_rng(9)
    g0 = rng.normal(0, 1, 1000).astype(np.float32)
    g = g0.copy()
    norm, clipped = clip_by_norm(g, max_norm)
    assert clipped is False
    assert norm == pytest.approx(np.linalg.norm(g0.astype(np.float64)), rel=1e-12)
    assert g.tobytes() == g0.tobytes()


def test_clip_by_norm_threshold_is_exactly_max_norm():
    g0 = np.full(100, 0.3, np.float64)  # norm 3
    g = g0.copy()
    assert clip_by_norm(g, 3.0 * (1 + 1e-9)) == (pytest.approx(3.0, rel=1e-15), False)
    assert g.tobytes() == g0.tobytes()
    norm, clipped = clip_by_norm(g, 3.0 * (1 - 1e-9))
    assert clipped is True and norm == pytest.approx(3.0, rel=1e-15)
    assert global_norm(g) == pytest.approx(3.0 * (1 - 1e-9), rel=1e-13)


def test_clip_by_norm_does_not_hide_nan_or_inf():
    g = np.ones(100, np.float32)
    g[3] = np.nan
    norm, clipped = clip_by_norm(g, 1.0)
    assert math.isnan(norm) and not clipped and np.isnan(g[3])
    g[3] = np.inf
    norm, clipped = clip_by_norm(g, 1.0)
    assert norm == math.inf and not clipped and g[3] == np.inf


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clip_by_value_clamps_and_counts(dtype):
    rng = np.random.default_rng(10)
    n = 2 * CHUNK + 7
    g0 = rng.normal(0, 1, n).astype(dtype)
    g0[5] = np.inf
    g0[CHUNK + 1] = -np.inf
    expected = np.count_nonzero(np.abs(g0) > 0.5) / n
    assert 0.3 < expected < 0.7
    g = g0.copy()
    fraction = clip_by_value(g, 0.5)
    assert fraction == expected
    assert g.tobytes() == np.clip(g0, dtype(-0.5), dtype(0.5)).tobytes()


def test_clip_by_value_keeps_nan_and_does_not_count_it():
    g = np.array([np.nan, 2.0, -3.0, 0.1], np.float32)
    fraction = clip_by_value(g, 1.0)
    assert fraction == 0.5
    assert np.isnan(g[0])
    assert g[1:].tolist() == [1.0, -1.0, pytest.approx(0.1)]


@pytest.mark.parametrize("limit", [0.0, -1.0])
def test_clip_by_value_off(limit):
    g0 = np.array([5.0, -7.0, 0.25], np.float32)
    g = g0.copy()
    assert clip_by_value(g, limit) == 0.0
    assert g.tobytes() == g0.tobytes()


def test_learning_rate_schedule():
    assert learning_rate(0.01, 0) == 0.01
    assert learning_rate(0.01, 12345) == 0.01
    # step-wise exponential decay
    assert learning_rate(0.1, 0, schedule="step", decay=0.5, decay_every=10) == 0.1
    assert learning_rate(0.1, 9, schedule="step", decay=0.5, decay_every=10) == 0.1
    assert learning_rate(0.1, 10, schedule="step", decay=0.5, decay_every=10) == 0.05
    assert learning_rate(0.1, 25, schedule="step", decay=0.5, decay_every=10) == pytest.approx(0.025, rel=1e-15)
    assert learning_rate(0.1, 25, schedule="step", decay=0.5, decay_every=0) == 0.1  # decay_every 0: no decay
    # linear warmup over the first `warmup` updates
    assert learning_rate(0.1, 0, warmup=4) == pytest.approx(0.025, rel=1e-15)
    assert learning_rate(0.1, 1, warmup=4) == pytest.approx(0.05, rel=1e-15)
    assert learning_rate(0.1, 3, warmup=4) == 0.1
    assert learning_rate(0.1, 100, warmup=4) == 0.1
    # both together multiply
    both = learning_rate(0.1, 1, schedule="step", decay=0.5, decay_every=1, warmup=4)
    assert both == pytest.approx(0.025, rel=1e-15)
    assert isinstance(learning_rate(1, 0), float)


def test_learning_rate_over_the_budget():
    # linear: from the base rate down to zero as the budget runs out, whatever the step
    assert learning_rate(0.1, 0, 0.0, schedule="linear") == 0.1
    assert learning_rate(0.1, 7, 0.25, schedule="linear") == pytest.approx(0.075, rel=1e-15)
    assert learning_rate(0.1, 7, 0.999, schedule="linear") == pytest.approx(1e-4, rel=1e-9)
    # cosine: the same ends, half way at the middle, slower at the start
    assert learning_rate(0.1, 0, 0.0, schedule="cosine") == 0.1
    assert learning_rate(0.1, 3, 0.5, schedule="cosine") == pytest.approx(0.05, rel=1e-12)
    assert learning_rate(0.1, 3, 0.1, schedule="cosine") > learning_rate(0.1, 3, 0.1, schedule="linear")
    # progress outside [0, 1] (a budget overrun) is clamped, never a negative rate
    assert learning_rate(0.1, 3, 1.5, schedule="linear") == 0.0
    # the step and constant schedules ignore progress
    assert learning_rate(0.1, 10, 0.9, schedule="step", decay=0.5, decay_every=10) == 0.05
    assert learning_rate(0.1, 10, 0.9, schedule="constant") == 0.1
    # decay_start: the base rate held until then, the decay squeezed into the rest of the budget
    for schedule in ("linear", "cosine"):
        assert learning_rate(0.1, 9, 0.59, schedule=schedule, decay_start=0.6) == 0.1
        assert learning_rate(0.1, 9, 0.8, schedule=schedule, decay_start=0.6) == pytest.approx(0.05, rel=1e-12)
        assert learning_rate(0.1, 9, 1.0, schedule=schedule, decay_start=0.6) == 0.0
    assert learning_rate(0.1, 9, 0.9, schedule="linear", decay_start=0.6) == pytest.approx(0.025, rel=1e-12)
    assert learning_rate(0.1, 9, 0.9, schedule="step", decay_start=0.6) == 0.1  # only linear and cosine
    # warm-up multiplies any schedule
    assert learning_rate(0.1, 0, 0.5, schedule="linear", warmup=4) == pytest.approx(0.0125, rel=1e-15)
    with pytest.raises(ValueError, match="unknown schedule"):
        learning_rate(0.1, 0, 0.0, schedule="exponential")


# lr per optimizer for an ill-conditioned quadratic (curvatures 0.1 .. 10)
CONVERGENCE = [
    ("adam", {}, 0.05),
    ("rmsprop", {}, 0.01),
    ("adagrad", {}, 0.5),
    ("sgd", {}, 0.02),
    ("sgd", {"momentum": 0.0}, 0.15),
]


@pytest.mark.parametrize("name,kw,lr", CONVERGENCE, ids=[f"{c[0]}-{c[2]}" for c in CONVERGENCE])
def test_minimises_a_quadratic(name, kw, lr):
    n = 500
    rng = np.random.default_rng(11)
    curv = np.exp(rng.uniform(np.log(0.1), np.log(10.0), n)).astype(np.float32)
    target = rng.normal(0, 1, n).astype(np.float32)
    p = np.zeros(n, np.float32)

    def loss():
        return 0.5 * float(np.sum(curv * (p - target) ** 2))

    loss0 = loss()
    opt = Optimizer(name, n, np.float32, lr, **kw)
    for step in range(600):
        grads = curv * (p - target)
        opt.step(p, grads, learning_rate(lr, step, schedule="step", decay=0.5, decay_every=150))
    assert loss() < loss0 * 1e-5, (loss0, loss())
