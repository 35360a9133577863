"""Sampling: the generation kernels against the training forward path, the choice of the next
character (temperature, top-k, top-p), seeding, priming, and the `charrnn sample` command."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from charrnn.checkpoint import save_checkpoint
from charrnn.cli import app
from charrnn.corpus import Vocab
from charrnn.errors import CharrnnError
from charrnn.kernels.generate import select
from charrnn.cells import NAMES
from charrnn.model import Layout, ModelSpec, Stack, init_params
from charrnn.sampling import Sampler, load_model, sample_text, start_id

ROOT = Path(__file__).resolve().parent.parent
CHARS = list("\n !.?abcdefghijklmnopqrstuvwxyz")


def random_model(cell, V, H, L, dtype, seed=0, scale=0.5):
    rng = np.random.default_rng(seed)
    spec = ModelSpec(cell, V, H, L)
    params = init_params(spec, rng, dtype)
    params += rng.normal(0, scale, params.shape).astype(dtype)  # away from the init: varied logits
    return spec, params


def stack_logits(spec, params, ids):
    """Logits after each of ids, by the training path: Stack.forward on one stream + the output layer."""
    T = len(ids)
    stack = Stack(spec, 1, T, params.dtype)
    stack.ids[:, 0] = ids
    stack.targets[:, 0] = 0
    stack.forward(params, 0, T)
    stack.loss(params, 0, T)  # fills stack.logits with the logits of every step
    return stack.logits[:T].copy()


# ---------------------------------------------------------------------------------------------
# The step kernel agrees with the training forward kernels


@pytest.mark.parametrize("cell", NAMES)
@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 1e-5)], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", [(11, 7, 1), (2, 1, 1), (5, 6, 3), (9, 33, 2)], ids=lambda s: "V{}-H{}-L{}".format(*s))
def test_step_logits_match_stack(cell, dtype, tol, shape):
    V, H, L = shape
    # small weights: a tanh RNN with large ones is chaotic and amplifies rounding differences
    spec, params = random_model(cell, V, H, L, dtype, scale=0.2)
    ids = np.random.default_rng(1).integers(0, V, 40).astype(np.int32)
    ref = stack_logits(spec, params, ids)
    for blas in (False, True):
        sampler = Sampler(spec, params, blas=blas)
        # in two pieces: the state carried between calls must be the stack's state
        got = np.concatenate([sampler.feed(ids[:17], keep_logits=True), sampler.feed(ids[17:], keep_logits=True)])
        assert got.dtype == dtype
        assert np.abs(got - ref).max() <= tol * max(1.0, np.abs(ref).max()), (blas, np.abs(got - ref).max())


@pytest.mark.parametrize("cell", NAMES)
def test_generated_text_follows_the_stack_loss(cell):
    """-log p of a sampled text under the training path (stack.loss) equals the step kernel's."""
    spec, params = random_model(cell, len(CHARS), 12, 2, np.float32, seed=5, scale=0.2)
    vocab = Vocab(CHARS)
    text = sample_text(Sampler(spec, params), vocab, length=60, prime="the", seed=3)[0]
    ids = vocab.encode(text)
    T = len(ids) - 1
    stack = Stack(spec, 1, T, np.float32)
    stack.ids[:, 0] = ids[:-1]
    stack.targets[:, 0] = ids[1:]
    stack.forward(params, 0, T)
    stack.loss(params, 0, T)
    logits = Sampler(spec, params).feed(ids[:-1], keep_logits=True).astype(np.float64)
    m = logits.max(axis=1, keepdims=True)
    nll = (np.log(np.exp(logits - m).sum(axis=1)) + m[:, 0] - logits[np.arange(T), ids[1:]])
    np.testing.assert_allclose(nll, stack.row_loss[:T], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Choosing the next character


def test_temperature_zero_is_the_argmax_of_the_stack_logits():
    spec, params = random_model("lstm", len(CHARS), 10, 2, np.float64, seed=2, scale=1.0)
    vocab = Vocab(CHARS)
    text = sample_text(Sampler(spec, params), vocab, length=80, temperature=0.0, seed=0)[0]
    ids = np.concatenate([[start_id(vocab)], vocab.encode(text)]).astype(np.int32)
    logits = stack_logits(spec, params, ids[:-1])
    np.testing.assert_array_equal(ids[1:], np.argmax(logits, axis=1))
    # no randomness at all: any seed gives the same text
    assert sample_text(Sampler(spec, params), vocab, length=80, temperature=0.0, seed=9)[0] == text


@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
def test_top_k_1_is_the_argmax(temperature):
    spec, params = random_model("gru", len(CHARS), 10, 1, np.float32, seed=4, scale=1.0)
    vocab = Vocab(CHARS)
    greedy = sample_text(Sampler(spec, params), vocab, length=100, temperature=0.0, prime="a")[0]
    top1 = sample_text(Sampler(spec, params), vocab, length=100, temperature=temperature, top_k=1,
                       prime="a", seed=7)[0]
    assert top1 == greedy
    # and a tiny nucleus holds only the most probable character, too
    assert sample_text(Sampler(spec, params), vocab, length=100, temperature=temperature, top_p=1e-9,
                       prime="a", seed=7)[0] == greedy


def test_a_temperature_whose_inverse_overflows_is_the_argmax_with_top_k_and_top_p_too():
    # below about 5.6e-309, 1/temperature is inf and the best logit's probability was 0 * inf =
    # NaN: with top_k or top_p the choice fell to id 0, whatever the logits
    logits = np.array([3.0, 2.0, 5.0, 1.5])
    probs, order = np.zeros(4), np.zeros(4, np.int64)
    for temperature in (1e-310, 5e-324, 1e-300):
        for top_k, top_p in ((0, 1.0), (1, 1.0), (2, 1.0), (0, 0.5)):
            assert select(logits, probs, order, temperature, top_k, top_p, 0.7) == 2, (temperature, top_k, top_p)


def choices(logits, temperature=1.0, top_k=0, top_p=1.0, n=20000, seed=0):
    """select() over evenly spread and random uniforms."""
    logits = np.asarray(logits, np.float64)
    probs = np.zeros(logits.size)
    order = np.zeros(logits.size, np.int64)
    us = np.concatenate([(np.arange(n) + 0.5) / n, np.random.default_rng(seed).random(n), [0.0, 1.0 - 2**-53]])
    return np.array([select(logits, probs, order, temperature, top_k, top_p, u) for u in us])


def test_top_p_never_leaves_the_nucleus():
    p = np.array([0.05, 0.4, 0.1, 0.3, 0.15])
    got = choices(np.log(p), top_p=0.75)
    # most probable first: 0.4 (id 1), 0.3 (id 3), 0.15 (id 4) reach 0.85 >= 0.75
    assert set(got) == {1, 3, 4}
    freq = np.bincount(got[:20000], minlength=5) / 20000  # the evenly spread part
    np.testing.assert_allclose(freq[[1, 3, 4]], np.array([0.4, 0.3, 0.15]) / 0.85, atol=1e-3)
    assert set(choices(np.log(p), top_p=0.39)) == {1}
    assert set(choices(np.log(p), top_p=0.41)) == {1, 3}
    # top-k first, then the nucleus of what is left (renormalised): 0.4 / 0.7 > 0.5
    assert set(choices(np.log(p), top_k=2)) == {1, 3}
    assert set(choices(np.log(p), top_k=2, top_p=0.5)) == {1}
    assert set(choices(np.log(p), top_k=2, top_p=0.6)) == {1, 3}
    # nothing restricted: every id appears, at its own frequency
    freq = np.bincount(choices(np.log(p))[:20000], minlength=5) / 20000
    np.testing.assert_allclose(freq, p, atol=1e-3)


def test_top_p_against_a_numpy_nucleus():
    rng = np.random.default_rng(3)
    for trial in range(30):
        V = int(rng.integers(2, 70))
        logits = rng.normal(0, 2, V)
        logits[rng.integers(0, V)] = logits.max()  # a tie at the top now and then
        temperature = float(rng.choice([0.3, 1.0, 2.0]))
        top_p = float(rng.uniform(0.05, 0.99))
        top_k = int(rng.choice([0, 1, 3, V + 5]))
        p = np.exp((logits - logits.max()) / temperature)
        order = np.lexsort((np.arange(V), -p))  # most probable first, ties by id
        kept = order[: top_k or V]
        cum = np.cumsum(p[kept]) / p[kept].sum()
        nucleus = set(kept[: int(np.searchsorted(cum, top_p)) + 1].tolist())
        got = set(choices(logits, temperature, top_k, top_p, n=500, seed=trial).tolist())
        assert got <= nucleus, (trial, got - nucleus)
        # every member of the nucleus with a visible share is drawn
        assert {i for i in nucleus if p[i] / p[list(nucleus)].sum() > 0.01} <= got


def test_temperature_sharpens_and_flattens():
    logits = np.log([0.1, 0.2, 0.7])
    cold = np.bincount(choices(logits, temperature=0.5)[:20000], minlength=3) / 20000
    hot = np.bincount(choices(logits, temperature=2.0)[:20000], minlength=3) / 20000
    p_cold = np.array([0.1, 0.2, 0.7]) ** 2
    p_hot = np.sqrt([0.1, 0.2, 0.7])
    np.testing.assert_allclose(cold, p_cold / p_cold.sum(), atol=1e-3)
    np.testing.assert_allclose(hot, p_hot / p_hot.sum(), atol=1e-3)
    assert choices(logits, temperature=0.0, n=10).tolist() == [2] * 22


# ---------------------------------------------------------------------------------------------
# Seeds and priming


def test_same_seed_same_text_different_seeds_differ():
    spec, params = random_model("lstm", len(CHARS), 16, 2, np.float32, seed=1)
    vocab = Vocab(CHARS)
    a = sample_text(Sampler(spec, params), vocab, length=300, seed=11, num_samples=2)
    b = sample_text(Sampler(spec, params), vocab, length=300, seed=11, num_samples=2, chunk=7)
    c = sample_text(Sampler(spec, params), vocab, length=300, seed=12)
    assert a == b  # the chunk size changes nothing
    assert a[0] != a[1]  # samples in one run differ
    assert c[0] != a[0]
    assert len(a[0]) == 300 and set(a[0]) <= set(CHARS)
    # the first of several samples is the single sample of the same seed
    assert sample_text(Sampler(spec, params), vocab, length=300, seed=11)[0] == a[0]


def test_prime_warms_the_state_and_is_printed_first():
    spec, params = random_model("rnn", len(CHARS), 8, 1, np.float64, seed=6, scale=1.0)
    vocab = Vocab(CHARS)
    prime = "hello world"
    text = sample_text(Sampler(spec, params), vocab, length=40, prime=prime, temperature=0.0)[0]
    assert text.startswith(prime) and len(text) == len(prime) + 40
    ids = vocab.encode(text)
    logits = stack_logits(spec, params, ids[:-1])
    np.testing.assert_array_equal(np.argmax(logits, axis=1)[len(prime) - 1 :], ids[len(prime) :])
    with pytest.raises(CharrnnError, match=r"--prime has 2 characters.*'X', '€'"):
        sample_text(Sampler(spec, params), vocab, prime="aXb€")


@pytest.mark.parametrize("option, value", [("temperature", -1.0), ("temperature", float("nan")), ("top_k", -1),
                                           ("top_p", 0.0), ("top_p", 1.5), ("length", -3), ("num_samples", 0)])
def test_bad_options_are_named(option, value):
    spec, params = random_model("rnn", len(CHARS), 4, 1, np.float32)
    with pytest.raises(CharrnnError, match=f"--{option.replace('_', '-')} "):
        sample_text(Sampler(spec, params), Vocab(CHARS), **{option: value})


# ---------------------------------------------------------------------------------------------
# The command


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A checkpoint as train writes it (params, config, vocabulary), with random weights."""
    spec, params = random_model("lstm", len(CHARS), 16, 2, np.float32, seed=8, scale=0.8)
    run = tmp_path_factory.mktemp("run")
    config = {"cell": "lstm", "hidden": 16, "layers": 2, "batch": 4, "k1": 20, "encoding": "utf-8"}
    save_checkpoint(run / "best.npz", {"params": params}, {"config": config, "vocab": Vocab(CHARS).to_json()})
    return run / "best.npz"


runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_cli_sample_streams_the_library_text(checkpoint):
    r1 = invoke("sample", checkpoint, "--length", 200, "--seed", 5, "--top-k", 10, "--top-p", 0.9,
                "--temperature", 0.8, "--prime", "the ")
    assert r1.exit_code == 0, r1.output
    model = load_model(checkpoint)
    expected = sample_text(Sampler(model.spec, model.params), model.vocab, length=200, seed=5, top_k=10,
                           top_p=0.9, temperature=0.8, prime="the ")[0]
    assert r1.stdout.rstrip("\n") == expected.rstrip("\n")
    assert r1.stdout.startswith("the ")
    r2 = invoke("sample", checkpoint, "--length", 200, "--seed", 5, "--top-k", 10, "--top-p", 0.9,
                "--temperature", 0.8, "--prime", "the ")
    assert r2.stdout == r1.stdout
    r3 = invoke("sample", checkpoint, "--length", 200, "--seed", 6)
    assert r3.exit_code == 0 and r3.stdout != r1.stdout


def test_cli_several_samples_are_separated(checkpoint):
    r = invoke("sample", checkpoint, "--length", 50, "--num-samples", 3, "--prime", "a")
    assert r.exit_code == 0, r.output
    parts = r.stdout.split("-" * 40 + "\n")
    assert len(parts) == 3 and all(p.startswith("a") for p in parts)
    assert len(set(parts)) == 3


def test_a_moved_checkpoint_samples_the_same_text(checkpoint, tmp_path):
    before = invoke("sample", checkpoint, "--length", 120, "--seed", 3)
    moved = tmp_path / "elsewhere" / "copy.npz"
    moved.parent.mkdir()
    shutil.copy(checkpoint, moved)
    after = invoke("sample", moved, "--length", 120, "--seed", 3)
    from_folder = invoke("sample", checkpoint.parent, "--length", 120, "--seed", 3)  # a run folder: best.npz
    assert before.exit_code == after.exit_code == from_folder.exit_code == 0
    assert before.stdout == after.stdout == from_folder.stdout
    assert len(before.stdout.rstrip("\n")) >= 119


def test_cli_bad_option_is_a_usage_error(checkpoint):
    for args in (["--temperature", "-1"], ["--top-k", "-2"], ["--length", "x"], ["--top-p", "2"], ["--top-p", "0"]):
        r = invoke("sample", checkpoint, *args)
        assert r.exit_code == 2, (args, r.output)


def run_module(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), COLUMNS="300")
    return subprocess.run([sys.executable, "-m", "charrnn", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)


def test_unknown_priming_characters_are_a_usage_error_and_are_named(checkpoint):
    # an option this model cannot take, as inspect --unit beyond its units: exit 2
    r = run_module("sample", checkpoint, "--prime", "hello WORLD")
    assert r.returncode == 2
    assert r.stdout == ""
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1, err
    # named by the option the user typed (it said "priming text")
    assert err.startswith("error: --prime has 5 characters") and all(repr(c) in err for c in "WORLD")
    r = run_module("sample", checkpoint, "--stop-at", "WORLD")
    assert r.returncode == 2 and r.stderr.startswith("error: --stop-at has 5 characters"), r.stderr
    # a combining mark, shown in quotes, sat on the quote before it: by its code and name
    r = run_module("sample", checkpoint, "--prime", "he\u0301")
    assert r.returncode == 2 and "(1 occurrence): U+0301 COMBINING ACUTE ACCENT; use only" in r.stderr, r.stderr
    # bytes that are no UTF-8 (a terminal in another encoding) were named as characters never typed
    r = run_module("sample", checkpoint, "--prime", os.fsdecode(b"\xed\xa0\x80"))
    assert r.returncode == 2 and r.stderr.endswith(
        "'\xed', '\\xa0', '\\x80'; use only characters that occur in the training text (--prime's bytes ED A0 80 are no "
        "UTF-8: each was read as the Latin-1 character of its code)\n"), r.stderr
    # top-k and top-p restrict a random choice; temperature 0 makes none: refused, not ignored
    r = run_module("sample", checkpoint, "--temperature", "0", "--top-k", "5")
    assert r.returncode == 2 and r.stdout == "" and r.stderr == (
        "error: --top-k 5 has no use with --temperature 0, which always picks the most probable character; "
        "leave one of them out\n"), r.stderr
    r = run_module("sample", checkpoint, "--temperature", "0", "--top-p", "0.9")
    assert r.returncode == 2 and r.stderr.startswith("error: --top-p 0.9 has no use with --temperature 0"), r.stderr
    r = run_module("sample", checkpoint, "--top-p", "0")
    assert r.returncode == 2 and "0<x<=1" in r.stderr
    r = run_module("sample", checkpoint, "--num-samples", "0")
    assert r.returncode == 2


def test_a_long_text_is_fed_a_piece_at_a_time_with_the_numbers_of_one_call(monkeypatch):
    # one jitted call for the whole text: Ctrl-C was heard only when it ended (3 s for 800,000
    # characters at hidden 32, minutes for a large model)
    import charrnn.sampling as sampling

    spec = ModelSpec("lstm", 7, 8, 2)
    params = init_params(spec, np.random.default_rng(0))
    pieces = Sampler(spec, params)
    n = pieces.feed_chunk
    big = ModelSpec("lstm", 65, 1024, 3)  # 21 million parameters: a character a call
    assert n > 1000 and Sampler(big, np.zeros(Layout(big).size, np.float32)).feed_chunk == 1
    ids = np.random.default_rng(1).integers(0, 7, 3 * n + 5)
    calls = []
    teacher_force = sampling.teacher_force
    monkeypatch.setattr(sampling, "teacher_force", lambda *a: (calls.append(a[5].size), teacher_force(*a))[1])
    logits = pieces.feed(ids, keep_logits=True)
    assert calls == [n] * 3 + [5]
    whole = Sampler(spec, params)
    whole.feed_chunk = ids.size
    assert np.array_equal(whole.feed(ids, keep_logits=True), logits)
    assert np.array_equal(whole.h, pieces.h) and np.array_equal(whole.c, pieces.c)
    pieces.feed(ids)  # without the logits, too
    whole.feed(ids)
    assert np.array_equal(whole.h, pieces.h) and np.array_equal(whole.c, pieces.c)


def stopped_at_call(monkeypatch, n):
    """Ctrl-C in the nth jitted call of the reads (sampling.teacher_force), the ones before it
    done; returns the list the calls are counted in."""
    import charrnn.sampling as sampling

    teacher_force, calls = sampling.teacher_force, []

    def call(*a):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        teacher_force(*a)

    monkeypatch.setattr(sampling, "teacher_force", call)
    return calls


def test_a_feed_stopped_between_its_calls_leaves_the_state_as_it_was(monkeypatch):
    spec = ModelSpec("lstm", 7, 8, 2)
    sampler = Sampler(spec, init_params(spec, np.random.default_rng(0)))
    sampler.feed(np.array([1, 2, 3]))
    h, c = sampler.h.copy(), sampler.c.copy()
    stopped_at_call(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        sampler.feed(np.zeros(3 * sampler.feed_chunk, np.int32))
    assert np.array_equal(sampler.h, h) and np.array_equal(sampler.c, c)
