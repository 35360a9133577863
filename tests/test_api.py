"""The Python API (charrnn.load) and the commands built on it: `charrnn sample` prints what
sample() returns, `charrnn eval` what score() returns, `--stop-at` ends a sample without changing
what comes before, `--per-line` scores each line as the API scores it alone; and `import charrnn`
stays light."""
import copy
import json
import math
import os
import re
import subprocess
import sys
import threading
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import charrnn
from charrnn.cli import _unescape, app
from charrnn.config import EVAL_RANGES, TrainConfig
from charrnn import memory
from charrnn.corpus import NotText, Vocab, read_text
from charrnn.errors import CharrnnError
from charrnn.model import Layout, ModelSpec, init_params
from charrnn.sampling import Sampler, sample_text
from charrnn.train import Trainer
from test_eval import write_corpus
from test_options import around

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny run, trained far enough (a second) that its samples have words and lines."""
    tmp = tmp_path_factory.mktemp("api")
    corpus = write_corpus(tmp / "corpus.txt", size=8_000)
    cfg = TrainConfig(corpus=str(corpus), hidden=16, layers=2, max_steps=300, time_limit=0, eval_every=100, k1=20,
                      k2=20, batch=4, lr=0.01, dropout=0.0, run="tiny", out_dir=str(tmp)).validate()
    Trainer(cfg, tmp / "tiny", say=lambda *a: None).run()
    return {"dir": tmp / "tiny", "corpus": corpus}


@pytest.fixture(scope="module")
def model(run):
    return charrnn.load(run["dir"])


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.stdout


def printed(text):
    """What `charrnn sample` prints of a sample: it, and a line break if it did not end with one."""
    return text if text.endswith("\n") else text + "\n"


def _fresh_env(**extra):
    """The environment of a fresh Python process with this checkout first on its path."""
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra)


def run_module(*args):
    return subprocess.run([sys.executable, "-m", "charrnn", *map(str, args)], capture_output=True, text=True,
                          env=_fresh_env(COLUMNS="300"), cwd=ROOT, timeout=120)


def fresh_python(code, timeout=120):
    """`python -c code` in a fresh process, this checkout first on its path."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_fresh_env(),
                          timeout=timeout)


# ---------------------------------------------------------------------------------------------
# Import


def test_import_charrnn_loads_nothing_heavy():
    code = ("import sys, charrnn\n"
            "heavy = sorted(m for m in ('numpy', 'numba', 'scipy', 'llvmlite', 'typer', 'rich') if m in sys.modules)\n"
            "assert not heavy, heavy\n"
            "assert not [m for m in sys.modules if m.startswith('charrnn.') and m != 'charrnn.errors'], sys.modules\n"
            "load = charrnn.load\n"
            "assert 'numba' in sys.modules and callable(load) and 'load' in dir(charrnn)\n"
            "assert charrnn.CharrnnError is __import__('charrnn.errors').errors.CharrnnError\n"
            "try:\n    charrnn.nothing\nexcept AttributeError:\n    pass\nelse:\n    raise SystemExit(1)\n")
    r = fresh_python(code)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("scipy_first", [False, True])
def test_loading_a_model_leaves_the_callers_blas_and_scipy_as_they_were(run, scipy_first):
    # the kernels held every BLAS to one thread for good, numpy's too (a program's own products
    # then ran on one core), and loaded scipy's BLAS module so that a later scipy.linalg lacked
    # the attribute cython_blas; with scipy.linalg imported first (as scipy.stats or sklearn
    # import it), every BLAS was held still
    code = f"""
import json
from threadpoolctl import threadpool_info
blas = lambda: {{d["filepath"]: d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"}}
from threadpoolctl import threadpool_limits
import numpy
numpys = blas()
{"import scipy.linalg" if scipy_first else ""}
threadpool_limits(2, user_api="blas")  # on two threads, whatever this machine's cores
before = blas()
import charrnn
m = charrnn.load({str(run["dir"])!r})
m.sample(50, seed=1)
after = blas()
import scipy.linalg
print(json.dumps([numpys, before, after, hasattr(scipy.linalg, "cython_blas")]))
"""
    r = fresh_python(code)
    assert r.returncode == 0, r.stderr
    numpys, before, after, attribute = json.loads(r.stdout)
    assert attribute
    numba_blas = set(after) - set(numpys)  # scipy's
    assert numba_blas == set(after) - set(before) or scipy_first
    assert all(after[lib] == 1 for lib in numba_blas), after  # numba's products: on one thread
    if not numba_blas:
        pytest.skip("numpy and scipy share one BLAS here: held to one thread for both")
    assert {lib: after[lib] for lib in numpys} == {lib: before[lib] for lib in numpys}


def test_scipy_without_a_folder_holds_every_blas_not_an_error(monkeypatch):
    # an editable install's finder may give scipy no folder: [0] of its folders raised IndexError
    # while the kernels were imported, where scipy.linalg had been imported first
    from types import SimpleNamespace

    from charrnn.kernels import _jit

    monkeypatch.setattr(_jit, "find_spec", lambda name: SimpleNamespace(submodule_search_locations=[]))
    blas = SimpleNamespace(lib_controllers=[SimpleNamespace(filepath="/x/numpy.libs/libscipy_openblas64_.so")])
    assert _jit._in_scipy(blas) == []


def test_samples_from_many_threads_leave_numbas_blas_on_one_thread(model):
    # each call raised the BLAS to two threads and restored what it found: calls at once, from
    # several threads, restored one another's raised limit and left it so for the training
    import threading

    from threadpoolctl import threadpool_info

    model.sample(10, seed=0)  # the kernels loaded: the threads' calls then overlap
    before = threadpool_info()
    texts = {}

    def sample(seed):
        texts[seed] = [model.sample(20_000, seed=seed) for _ in range(3)]

    threads = [threading.Thread(target=sample, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert threadpool_info() == before
    assert all(len(set(t)) == 1 and t[0] == model.sample(20_000, seed=seed) for seed, t in texts.items())



def test_scores_from_many_threads_take_turns_on_numbas_workqueue_layer(run):
    # numba's own threading layer (where neither TBB nor OpenMP is installed) aborted the process
    # at two threads' scores at once: "Concurrent access has been detected", SIGABRT
    code = f"""
import charrnn, numba
from concurrent.futures import ThreadPoolExecutor
m = charrnn.load({str(run["dir"])!r})
text = open({str(run["corpus"])!r}, encoding="utf-8").read()[:3000]
lines = text.split("\\n")[:40]
with ThreadPoolExecutor(4) as pool:
    scores = list(pool.map(lambda _: m.score(text), range(8)))
    per_line = list(pool.map(lambda _: list(m.score_lines(lines)), range(8)))
print(numba.threading_layer(), len(set(scores)), len(set(map(tuple, per_line))), scores[0] == m.score(text))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env=_fresh_env(NUMBA_THREADING_LAYER="workqueue"))
    assert r.returncode == 0 and r.stdout.split() == ["workqueue", "1", "1", "True"], r.stderr[-2000:]


def test_ctrl_c_on_entering_blas_threads_still_sets_the_blas_back_to_one_thread(monkeypatch):
    # a Ctrl-C between the count of callers and the flag that said it was counted left the
    # count one high: numba's BLAS stayed on two threads for the rest of the process
    import inspect
    import sys

    from charrnn.kernels import _jit

    calls = []  # the limits set, in order

    class Blas:
        def limit(self, limits):
            calls.append(limits)

    monkeypatch.setattr(_jit, "NUMBA_BLAS", Blas())
    code = inspect.unwrap(_jit.blas_threads).__code__
    source, first = inspect.getsourcelines(code)
    yield_at = first + next(i for i, text in enumerate(source) if text.strip() == "yield")
    interrupted = 0
    for line in range(first + 1, yield_at):  # a KeyboardInterrupt as that line is about to run

        def trace(frame, event, arg, line=line):
            if frame.f_code is not code:
                return None

            def at_line(frame, event, arg):
                if event == "line" and frame.f_lineno == line:
                    sys.settrace(tracing)
                    raise KeyboardInterrupt
                return at_line

            return at_line

        calls.clear()
        tracing = sys.gettrace()  # a coverage tool's or a debugger's, given back after
        sys.settrace(trace)
        try:
            with _jit.blas_threads(2):
                pass
        except KeyboardInterrupt:
            interrupted += 1
        finally:
            sys.settrace(tracing)
        assert not _jit._blas_users, line
        assert calls in ([], [1], [2, 1]), (line, calls)
        with _jit.blas_threads(2):  # the next caller raises the limit again, and sets it back
            assert calls[-1] == 2
        assert calls[-1] == 1
    assert interrupted >= 4  # every statement before the yield


# ---------------------------------------------------------------------------------------------
# sample() and `charrnn sample`


def test_load_reads_a_run_folder_or_a_file(run, model):
    assert model.path == run["dir"] / "best.npz"
    same = charrnn.load(run["dir"] / "best.npz")
    assert same.vocab == model.vocab and np.array_equal(same.params, model.params)
    assert "".join(model.vocab) == "".join(sorted(set(read_text(run["corpus"]))))
    with pytest.raises(CharrnnError, match="nowhere"):
        charrnn.load(run["dir"] / "nowhere")


@pytest.mark.parametrize("options", [{"seed": 3}, {"seed": 5, "temperature": 0.7, "top_k": 5, "top_p": 0.9, "prime": "The "}])
def test_sample_is_what_the_command_prints(run, model, options):
    text = model.sample(length=300, **options)
    assert len(text) == 300 + len(options.get("prime", ""))
    args = [a for k, v in options.items() for a in (f"--{k.replace('_', '-')}", v)]
    assert invoke("sample", run["dir"], "--length", 300, *args) == printed(text)
    assert model.sample(length=300, seed=options["seed"] + 1) != model.sample(length=300, seed=options["seed"])


def test_sample_in_a_process_of_its_own(run, model):
    r = run_module("sample", run["dir"], "--length", 200, "--seed", 9, "--num-samples", 2)
    assert r.returncode == 0, r.stderr
    texts = ["".join(pieces) for pieces in model.stream(200, seed=9, num_samples=2)]
    assert texts[0] == model.sample(length=200, seed=9) and texts[1] != texts[0]
    assert r.stdout == ("-" * 40 + "\n").join(map(printed, texts))


# ---------------------------------------------------------------------------------------------
# stop_at and `--stop-at`


@pytest.mark.parametrize("stop", ["\n", "e ", " t"])
def test_stop_at_ends_a_sample_and_changes_nothing_before(model, stop):
    stopped = 0
    for seed in range(6):
        full = model.sample(length=400, seed=seed)
        cut = model.sample(length=400, seed=seed, stop_at=stop)
        assert stop not in cut
        at = full.find(stop)
        assert cut == (full if at < 0 else full[:at])
        stopped += at >= 0
    assert stopped >= 3  # the test means something: most of these samples did stop


def test_stop_at_searches_only_the_generated_text(model):
    full = model.sample(length=200, seed=2, prime="the ")
    cut = model.sample(length=200, seed=2, prime="the ", stop_at="e")
    assert cut == "the " + full[4:][: full[4:].find("e")]


def test_later_samples_do_not_depend_on_where_earlier_ones_stopped(model):
    full = [("".join(s)) for s in model.stream(300, seed=4, num_samples=3)]
    cut = [("".join(s)) for s in model.stream(300, seed=4, num_samples=3, stop_at="a")]
    assert len(set(full)) == 3
    for f, c in zip(full, cut):
        assert c == f[: f.find("a")] if "a" in f else c == f
    assert sum(len(c) < len(f) for f, c in zip(full, cut)) >= 2


def test_stop_text_across_chunks():
    """A stop text that straddles two of the kernel's chunks stops the sample, and nothing of it is
    printed first: the pieces are the same whatever the chunk size."""
    vocab = Vocab("ab\n")
    spec = ModelSpec("gru", vocab.size, 6, 1)
    params = init_params(spec, np.random.default_rng(0))
    for stop in ("ab", "aab", "b\nb"):
        want = sample_text(Sampler(spec, params), vocab, length=200, seed=1, stop_at=stop)[0]
        full = sample_text(Sampler(spec, params), vocab, length=200, seed=1)[0]
        assert stop in full and want == full[: full.find(stop)]
        for chunk in (1, 2, 3, 7):
            assert sample_text(Sampler(spec, params), vocab, length=200, seed=1, stop_at=stop, chunk=chunk)[0] == want


def test_skipping_random_numbers_is_drawing_them():
    """stop_at relies on PCG64 spending one step per float64 that Generator.random draws."""
    a, b = (np.random.Generator(np.random.PCG64(7)) for _ in range(2))
    a.random(1000)
    b.bit_generator.advance(1000)
    assert np.array_equal(a.random(50), b.random(50))


def test_cli_stop_at_with_escapes(run, model):
    want = model.sample(length=300, seed=1, stop_at="\n")
    assert "\n" in model.sample(length=300, seed=1)  # it does stop
    assert invoke("sample", run["dir"], "--length", 300, "--seed", 1, "--stop-at", r"\n") == printed(want)
    assert invoke("sample", run["dir"], "--length", 300, "--seed", 1, "--stop-at", r"\x0a") == printed(want)
    assert _unescape(r"a\n\tb\\n\x03\u00e9\r") == "a\n\tb\\n\x03\u00e9\r"


@pytest.mark.parametrize("text", [r"a\q", "a\\", r"\x4", r"\u12"])
def test_a_bad_escape_is_a_usage_error(run, text):
    r = runner.invoke(app, ["sample", str(run["dir"]), "--stop-at", text])
    assert r.exit_code == 2 and "escape" in r.output


def test_a_stop_text_the_model_cannot_write_is_refused(run):
    r = run_module("sample", run["dir"], "--stop-at", "<END>")
    assert r.returncode == 2 and r.stdout == ""  # an option this model cannot take
    assert len(r.stderr.strip().splitlines()) == 1 and "--stop-at has" in r.stderr and "'<'" in r.stderr


# ---------------------------------------------------------------------------------------------
# score() and `charrnn eval`


def test_score_is_what_eval_prints(run, model, tmp_path):
    text = read_text(run["corpus"])[:3000]
    path = tmp_path / "part.txt"
    path.write_text(text, encoding="utf-8")
    result = model.evaluate(text)
    assert result.nats == model.score(text) and result.bits == pytest.approx(result.nats / math.log(2))
    line = invoke("eval", run["dir"], path)
    assert f"{result.chars:,} characters, {result.nats:.4f} nats/char, {result.bits:.4f} bits/char" in line
    assert f"perplexity {math.exp(result.nats):.2f}" in line
    ids, skipped = model.encode(text)
    assert skipped == 0 and model.score(ids) == result.nats
    other = model.evaluate(text, batch=1, window=7)
    assert other.chars == len(text) - 1
    assert f"{other.chars:,} characters, {other.nats:.4f} nats/char" in invoke("eval", run["dir"], path, "--batch", 1,
                                                                             "--window", 7)


def test_an_error_naming_a_file_is_one_line_a_program_can_print(tmp_path):
    # the command line escaped a name's controls as it printed the error; str(e) kept them: a
    # line break split the one line, an ESC steered the terminal, and a byte that is no UTF-8
    # (a lone surrogate) made print(e) itself fail
    for name, shown in [("no\nsuch\x1b[2J.npz", "no\\nsuch\\x1b[2J.npz"),
                        (os.fsdecode(b"bad\xff.npz"), "bad\\xff.npz")]:
        with pytest.raises(charrnn.CharrnnError) as caught:
            charrnn.load(tmp_path / name)
        said = str(caught.value)
        assert said.isprintable() and said.encode("utf-8") and shown in said, said


def test_score_errors(model):
    with pytest.raises(charrnn.UnknownCharacters, match="'€'"):
        model.score("the cat €")
    assert model.evaluate("the cat €€ sat", batch=1, skip_unknown=True).skipped == 2
    assert model.score("the cat €€ sat", batch=1, skip_unknown=True) == model.score("the cat  sat", batch=1)
    for bad in ({"batch": 0}, {"window": 0}):
        with pytest.raises(CharrnnError, match="out of range"):
            model.score("the cat", **bad)
    with pytest.raises(CharrnnError, match=re.escape("batch= must be a whole number, not float 2.5")):
        model.score("the cat", batch=2.5)
    with pytest.raises(CharrnnError, match="at least 2"):
        model.score("t")
    for bad in (b"the cat", np.array([[1, 2]]), np.array([0.5, 1.0]), np.array([1, len(model.vocab)])):
        with pytest.raises(CharrnnError, match="a str, or ids"):
            model.score(bad)
    with pytest.raises(CharrnnError, match="must be a str"):
        model.encode(b"the cat")


def test_encode_file_is_encode_of_the_files_text(run, model, tmp_path):
    """A file read as ids of a byte a character gives encode()'s ids, skips and errors, and the
    same score; `charrnn eval` reads it so."""
    text = read_text(run["corpus"])[:4000]
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    ids, skipped = model.encode_file(path)
    assert ids.dtype == np.uint8 and skipped == 0 and np.array_equal(ids, model.encode(text)[0])
    assert model.evaluate(ids) == model.evaluate(text)

    odd = "€" + text[:500] + "ßß" + text[500:900] + "€\u00e9"
    path.write_text(odd, encoding="utf-8")
    with pytest.raises(charrnn.UnknownCharacters) as from_file:
        model.encode_file(path)
    with pytest.raises(charrnn.UnknownCharacters) as from_text:
        model.encode(odd, what=str(path))
    assert str(from_file.value) == str(from_text.value)
    assert "3 characters the model does not know (5 occurrences): '€', 'ß', 'é'" in str(from_file.value)
    many = "".join(chr(0x4E00 + i) for i in range(2000))  # counted with commas, as the rest ("and 1990 more")
    with pytest.raises(charrnn.UnknownCharacters, match="2,000 characters the model does not know .* and 1,990 more"):
        model.encode(many)
    ids, skipped = model.encode_file(path, skip_unknown=True)
    assert skipped == 5 and np.array_equal(ids, model.encode(odd, skip_unknown=True)[0])
    r = runner.invoke(app, ["eval", str(run["dir"]), str(path), "--skip-unknown"])
    assert r.exit_code == 0 and f"{model.evaluate(odd, skip_unknown=True).nats:.4f} nats/char" in r.stdout
    assert "5 unknown characters skipped" in r.stdout


def test_the_apis_advice_names_arguments_not_flags(run, model, tmp_path, monkeypatch):
    """What the reader and the memory check advise is said in the API's terms (encoding=,
    batch=), and at the command line, which reads text through the API, in its own (--encoding,
    --batch)."""
    path = tmp_path / "latin.txt"
    path.write_bytes(b"the caf\xe9 sat")
    with pytest.raises(CharrnnError) as e:
        model.encode_file(path)
    assert "not valid UTF-8" in str(e.value) and "encoding='latin-1'" in str(e.value) and "--" not in str(e.value)
    r = runner.invoke(app, ["eval", str(run["dir"]), str(path)])
    assert r.exit_code == 1 and "pass --encoding latin-1" in str(r.exception) and "encoding=" not in str(r.exception)
    path.write_bytes(b"the\x00cat")
    with pytest.raises(CharrnnError, match="; pass a text file$") as e:  # a model of characters reads no bytes
        model.encode_file(path)
    assert e.type is NotText and "--" not in str(e.value)
    path.write_text("the cat sat\n", encoding="utf-8")
    monkeypatch.setattr(memory, "available_bytes", lambda **_: 1000)
    for call in (model.score, lambda text: list(model.score_lines([text]))):
        with pytest.raises(CharrnnError, match=re.escape("available; use a smaller batch or window (batch=, window=)")):
            call("the cat sat")
    for per_line in ([], ["--per-line"]):
        r = runner.invoke(app, ["eval", str(run["dir"]), str(path), *per_line])
        assert r.exit_code == 1 and str(r.exception).endswith("use a smaller batch or window (--batch, --window)"), \
            r.exception


def test_encode_file_holds_a_byte_or_two_a_character(model, tmp_path, monkeypatch):
    """Reading a file for evaluation holds its ids and the model's (a byte each a character here)
    and a fixed part (the reader's table of code points, the piece being read; pieces are small
    here, so that the file is many of them, as a large one is), never the text as a string and
    its code points, which encode() of read_text() holds: some 25 bytes a character."""
    import charrnn.corpus

    monkeypatch.setattr(charrnn.corpus, "CHUNK_BYTES", 1 << 16)
    n = 2_000_000
    path = tmp_path / "big.txt"
    path.write_text(("the cat sat on the mat, " * (n // 20))[:n], encoding="utf-8")

    assert traced_peak(lambda: model.encode_file(path)) < 2 * n + 8 * 2**20
    assert traced_peak(lambda: model.encode(read_text(path))) > 15 * n


def traced_peak(fn):
    """The most bytes Python allocated at once while fn() ran."""
    import tracemalloc

    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("skip_unknown", [False, True])
def test_per_line_holds_the_file_as_ids_and_a_piece_of_it_as_strings(model, tmp_path, monkeypatch, skip_unknown):
    # `eval --per-line` made the whole file a list of its lines: 29 bytes a character
    import charrnn.corpus
    from charrnn import cli

    monkeypatch.setattr(charrnn.corpus, "CHUNK_BYTES", 1 << 16)
    monkeypatch.setattr(cli, "LINE_PIECE", 1 << 16)
    # reading and encoding only: the scoring of a piece holds no more for a million lines than for one
    monkeypatch.setattr(type(model), "_line_scores", lambda self, encoded, *a: iter([0.0] * len(encoded)))
    n = 1_000_000
    path = tmp_path / "big.txt"
    path.write_text(("the cat sat on the mat\n" * (n // 20))[:n], encoding="utf-8")
    counts = {"unscored": 0, "dropped": 0, "scored": 0}
    scored = lambda: sum(1 for _ in cli._line_scores(model, cli._line_pieces(model, path, None, skip_unknown), path,
                                                     None, None, skip_unknown, counts))
    as_it_was = lambda: sum(1 for _ in model.score_lines(read_text(path).split("\n"), skip_unknown=skip_unknown))
    assert traced_peak(scored) < 6 * n + 8 * 2**20
    assert traced_peak(as_it_was) > 10 * n


@pytest.mark.parametrize("name", sorted(EVAL_RANGES))
def test_eval_cli_and_the_api_agree_at_each_bound(name, model, tmp_path):
    for value, inside in around(EVAL_RANGES[name], integer=True):
        r = runner.invoke(app, ["eval", str(tmp_path / "missing.npz"), str(tmp_path / "t.txt"), f"--{name}={value}"])
        if inside:
            assert r.exit_code == 1 and "missing.npz" in str(r.exception), (value, r.output)
            assert len(list(model.score_lines(["the cat"], **{name: value}))) == 1
        else:
            assert r.exit_code == 2 and str(EVAL_RANGES[name]) in r.output, (value, r.output)
            with pytest.raises(CharrnnError, match=f"^{name}={value} is out of range"):
                model.score_lines(["the cat"], **{name: value})


# ---------------------------------------------------------------------------------------------
# score_lines() and `charrnn eval --per-line`


LINES = ["The cat sat on a warm mat.", "", "owls", "T", "brown foxes jumped over the lazy dogs by the river bank!",
         "the the the the", "", "Seven quick foxes."]


def test_per_line_is_each_line_scored_alone(run, model, tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    alone = [model.score("\n" + line, batch=1) for line in LINES if line]  # the evaluator, one stream each
    for options in ([], ["--batch", 1], ["--batch", 3, "--window", 5]):
        rows = invoke("eval", run["dir"], path, "--per-line", *options).splitlines()
        assert [p.split("\t", 1)[1] for p in rows] == [line for line in LINES if line]
        np.testing.assert_allclose([float(p.split("\t")[0]) for p in rows], alone, atol=5.1e-5)
    for batch, window in ((None, None), (1, 3), (3, 100)):
        got = list(model.score_lines(LINES, batch=batch, window=window))
        assert math.isnan(got[1]) and math.isnan(got[6])
        np.testing.assert_allclose([g for g in got if not math.isnan(g)], alone, rtol=1e-5)
    # and a line's score is its own: the others change nothing
    assert list(model.score_lines(["owls"]))[0] == pytest.approx(alone[1], rel=1e-5)


def test_a_files_lines_are_scored_without_their_line_breaks(run, model, tmp_path):
    # iterating a file gives its lines with their line breaks, which were scored as characters
    # of the line: other figures than eval --per-line's, without a word
    path = tmp_path / "lines.txt"
    path.write_bytes(("\n".join(LINES[:4]) + "\r\n" + "\n".join(LINES[4:])).encode())  # one CR LF, no last LF
    bare = list(model.score_lines(LINES))
    with open(path, encoding="utf-8", newline="") as f:  # (newline="": the CR LF as it is in the file)
        np.testing.assert_array_equal(list(model.score_lines(f)), bare)
    rows = invoke("eval", run["dir"], path, "--per-line").splitlines()
    np.testing.assert_allclose([float(r.split("\t")[0]) for r in rows], [b for b in bare if not math.isnan(b)],
                               atol=5.1e-5)
    assert math.isnan(next(model.score_lines(["\n"])))  # an empty line
    with pytest.raises(CharrnnError, match=re.escape("line 1 holds a line break before its end: 'a\\nb'; split")):
        model.score_lines(["owls", "a\nb"])


def test_per_line_on_a_bigger_file(run, model, tmp_path):
    lines = read_text(run["corpus"]).split("\n")[:300]
    path = tmp_path / "many.txt"
    path.write_text("\n".join(lines), encoding="utf-8")
    rows = invoke("eval", run["dir"], path, "--per-line").splitlines()
    assert len(rows) == sum(1 for line in lines if line)
    some = [i for i in range(0, len(rows), 37)]
    for i in some:
        nats, line = rows[i].split("\t", 1)
        assert float(nats) == pytest.approx(model.score("\n" + line, batch=1), abs=5.1e-5)


def test_per_line_reads_crlf_as_a_line_break(run, tmp_path):
    # the "\r" stopped it as a character the model does not know
    unix, windows = tmp_path / "unix.txt", tmp_path / "windows.txt"
    unix.write_text("the cat\nsat on\n", encoding="utf-8")
    windows.write_bytes(b"the cat\r\nsat on\r\n")
    assert invoke("eval", run["dir"], windows, "--per-line") == invoke("eval", run["dir"], unix, "--per-line")



@pytest.mark.parametrize("skip_unknown", [False, True])
def test_per_line_reads_a_file_in_pieces_of_whole_lines_with_the_same_figures(run, tmp_path, monkeypatch,
                                                                               skip_unknown):
    # the whole file became strings, a list of its lines: 29 bytes a character, 5.8 GB for 200 MB
    path = tmp_path / "lines.txt"
    path.write_bytes(b"the cat\r\nsat\n\non the mat, the whole of it\nt\r\n\r\n" + b"a hat" * 3 + b"\nend\r")
    flags = ["--skip-unknown"] if skip_unknown else []
    whole = invoke("eval", run["dir"], path, "--per-line", *flags)
    assert [line.split("\t")[1] for line in whole.splitlines()] == [
        "the cat", "sat", "on the mat, the whole of it", "t", "a hat" * 3, "end"]
    monkeypatch.setattr("charrnn.cli.LINE_PIECE", 4)  # a piece a line or two, and lines longer than one
    assert invoke("eval", run["dir"], path, "--per-line", *flags) == whole


def test_per_line_names_a_carriage_return_inside_a_line_as_unknown(run, tmp_path):
    # one that ends a line is part of its line break; the model here has never seen one
    path = tmp_path / "cr.txt"
    path.write_bytes(b"the cat\r\nthe\rmat\r")
    r = runner.invoke(app, ["eval", str(run["dir"]), str(path), "--per-line"])
    assert r.exit_code == 1 and "1 character the model does not know (1 occurrence): '\\r'" in str(r.exception), \
        r.exception

def test_per_line_unknown_characters(run, tmp_path):
    path = tmp_path / "odd.txt"
    path.write_text("the cat\nthe €at\n\nZZ\n", encoding="utf-8")
    r = run_module("eval", run["dir"], path, "--per-line")
    assert r.returncode == 1 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and "'€'" in r.stderr and "--skip-unknown" in r.stderr
    # ZZ has nothing left to score: it printed "nan", which sort -n ranks as the likeliest
    r = run_module("eval", run["dir"], path, "--per-line", "--skip-unknown")
    assert r.returncode == 0 and [p.split("\t", 1)[1] for p in r.stdout.splitlines()] == ["the cat", "the €at"]
    # the € inside a scored line is skipped, and counted as the help says (it was not)
    assert r.stderr == ("note: left out 1 line made only of characters the model does not know\n"
                        "note: skipped 1 unknown character inside the lines scored\n")
    path.write_text("ZZ\n\u20ac\n", encoding="utf-8")  # it printed nothing and exited 0
    r = run_module("eval", run["dir"], path, "--per-line", "--skip-unknown")
    assert r.returncode == 1 and r.stderr.startswith("error: every line of") and "nothing to score" in r.stderr
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    r = run_module("eval", run["dir"], empty, "--per-line")
    assert r.returncode == 1 and "no line" in r.stderr


# ---------------------------------------------------------------------------------------------
# One character at a time


def test_step_is_what_sampling_chooses_from(model):
    greedy = model.sample(length=40, temperature=0, prime="The")
    model.reset()
    p = model.feed("The")
    text = "The"
    for _ in range(40):
        ch = model.vocab[int(np.argmax(p))]
        text += ch
        p = model.step(ch)
    assert text == greedy
    assert p.shape == (len(model.vocab),) and p.dtype == np.float64 and abs(p.sum() - 1) < 1e-12


def test_state_can_be_saved_and_restored(model):
    model.reset()
    model.feed("the cat")
    saved = model.state
    assert set(saved) == {"h", "c"} and saved["h"].shape == (2, 16)  # a 2x16 LSTM
    after = model.step(" ")
    model.feed("sat on a mat")
    model.state = saved
    assert np.array_equal(model.step(" "), after)
    model.reset()
    assert not model.state["h"].any()
    fresh = model.step("t")
    model.reset()
    model.feed("the fox")
    model.reset()
    assert np.array_equal(model.step("t"), fresh)


def test_step_errors(model):
    with pytest.raises(CharrnnError, match="one character"):
        model.step("ab")
    # a value in a message is cut short: the whole text was repeated in it
    with pytest.raises(CharrnnError, match=re.escape(f"step() reads one character, not '{'x' * 56}...; feed() reads")):
        model.step("x" * 10_000)
    with pytest.raises(charrnn.UnknownCharacters, match="^the character stepped has 1 character the model does not"):
        model.step("€")  # (it was "the text fed")
    with pytest.raises(charrnn.UnknownCharacters, match="^the text fed has 1 character the model does not know"):
        model.feed("a€")
    with pytest.raises(CharrnnError, match="keys h, c"):
        model.state = {"h": np.zeros((2, 16))}
    with pytest.raises(CharrnnError, match="shape"):
        model.state = {"h": np.zeros((2, 16)), "c": np.zeros(16)}


# ---------------------------------------------------------------------------------------------
# Arguments of the wrong type: a CharrnnError in the API's own terms, never Python's


@pytest.mark.parametrize("options, message", [
    ({"length": 1.5}, "length= must be a whole number, not float 1.5"),
    ({"length": "5"}, "length= must be a whole number, not str '5'"),  # not "--length 5 is out of range"
    ({"length": True}, "length= must be a whole number, not bool True"),
    ({"seed": "a"}, "seed= must be a whole number, not str 'a'"),
    ({"top_k": 2.5}, "top_k= must be a whole number, not float 2.5"),
    ({"temperature": "0.8"}, "temperature= must be a number, not str '0.8'"),
    ({"prime": b"ab"}, "prime= must be a str, not bytes"),
    ({"stop_at": b"a"}, "stop_at= must be a str, not bytes"),
    ({"length": Fraction(10**400, 3)}, "length= must be a whole number, not Fraction"),  # no float holds it
    ({"length": Fraction(10**5000, 3)}, "length= must be a whole number, not Fraction <Fraction of more than 4,300"),
])
def test_sample_refuses_an_argument_of_the_wrong_type(model, options, message):
    with pytest.raises(CharrnnError, match=re.escape(message)):
        model.sample(**options)


@pytest.mark.parametrize("options, message", [
    ({"length": -1}, "length=-1 is out of range"),
    ({"temperature": float("nan")}, "temperature=nan is out of range"),
    ({"top_p": 1.5}, "top_p=1.5 is out of range"),
    ({"seed": -3}, "seed=-3 is out of range"),
    ({"temperature": 10**400}, "temperature=inf is out of range"),  # an int beyond every float: OverflowError
    ({"top_p": -10**400}, "top_p=-inf is out of range"),
    ({"length": Fraction(10**400)}, "length=<int of 401 digits> is out of range"),  # (all 401 of them, before)
    ({"length": -10**80}, "length=<negative int of 81 digits> is out of range"),
    # more digits than Python turns into text: a ValueError from the message's own making
    ({"length": 10**5000}, "length=<int of more than 4,300 digits> is out of range"),
    ({"seed": -10**5000}, "seed=<negative int of more than 4,300 digits> is out of range"),
    ({"temperature": 0, "top_k": 3}, "top_k=3 has no use with temperature=0"),
    ({"temperature": 0.0, "top_p": 0.5}, "top_p=0.5 has no use with temperature=0"),
])
def test_sample_names_an_argument_out_of_range_as_a_caller_wrote_it(model, options, message):
    """A caller of the API wrote length=, not the command line's --length."""
    with pytest.raises(CharrnnError, match="^" + re.escape(message)):
        model.sample(**options)
    with pytest.raises(CharrnnError, match="^" + re.escape(message)):
        model.stream(**options)


def test_a_decimal_is_a_number_to_sample(model):
    # Decimal(10) was "length= must be a whole number, not Decimal Decimal('10')"
    from decimal import Decimal

    assert model.sample(Decimal(40), seed=Decimal(1), temperature=Decimal("0.5")) == \
        model.sample(40, seed=1, temperature=0.5)
    with pytest.raises(CharrnnError, match=re.escape("length= must be a whole number, not Decimal Decimal('40.5')")):
        model.sample(Decimal("40.5"))
    with pytest.raises(CharrnnError, match=re.escape("length= must be a whole number, not Decimal Decimal('NaN')")):
        model.sample(Decimal("nan"))
    # a Decimal of many digits is the int it is: each of 4300 digits or more was taken as 10^4300,
    # and seeds of 10^5000 and 10^6000 gave one text
    assert model.sample(20, seed=Decimal("1e5000")) == model.sample(20, seed=10**5000) != \
        model.sample(20, seed=Decimal("1e6000"))
    with pytest.raises(CharrnnError, match=re.escape("length=<negative int of more than 4,300 digits> is out of range")):
        model.sample(Decimal("-1e5000"))
    # but not one of more digits than int() turns out at once: a MemoryError, minutes in int()
    for huge, digits in (("1e999999999999999999", "1,000,000,000,000,000,000"), ("1e10000000", "10,000,001"),
                         ("-1e20000", "20,001")):
        with pytest.raises(CharrnnError, match=re.escape("length= must be a whole number of at most 20,000 digits, not a "
                                                         f"Decimal of {digits} digits")):
            model.sample(Decimal(huge))
    assert model.sample(5, seed=Decimal("1e19999"))  # (20,000 digits)
    # nor an int of more, which numpy turns into 32-bit words in a time growing as its digits
    # squared: 10^300000 took 7 s
    for huge in (10**20000, -10**300000, Fraction(10**20000)):
        with pytest.raises(CharrnnError, match=re.escape("seed= must be a whole number of at most 20,000 digits; this "
                                                         f"{type(huge).__name__} has more")):
            model.sample(5, seed=huge)
    assert model.sample(5, seed=10**20000 - 1)  # (20,000 digits)
    # a signalling NaN: numpy's ValueError
    with pytest.raises(CharrnnError, match=re.escape("temperature=nan is out of range")):
        model.sample(10, temperature=Decimal("sNaN"))


def test_an_empty_list_is_no_text_to_score(model):
    # [] is numpy's float64 array: refused as "give a str, or ids from encode()", where an empty
    # str or int array says the text is too short
    for empty in ([], (), "", np.array([], np.int32)):
        with pytest.raises(CharrnnError, match="^the text to evaluate has 0 characters; it needs at least 2"):
            model.evaluate(empty)


def test_no_prime_and_no_stop_text_may_be_none(model):
    assert model.sample(40, seed=1, prime=None, stop_at=None) == model.sample(40, seed=1)


def test_stream_refuses_a_count_of_samples_that_is_no_whole_number(model):
    with pytest.raises(CharrnnError, match=re.escape("num_samples= must be a whole number, not float 1.5")):
        model.stream(10, num_samples=1.5)


def test_numpy_numbers_are_numbers(model):
    want = model.sample(length=60, seed=3, top_k=5, temperature=0.5)
    assert model.sample(length=np.int64(60), seed=np.int32(3), top_k=np.uint8(5), temperature=np.float32(0.5)) == want
    assert model.sample(length=60.0, seed=3.0, top_k=5, temperature=0.5) == want  # length=1e4 is a whole number
    assert len(list(model.stream(10, num_samples=np.int64(2)))) == 2
    assert model.score("the cat sat", batch=np.int64(2), window=np.int16(4)) == model.score("the cat sat", batch=2,
                                                                                           window=4)


def test_a_top_k_beyond_the_vocabulary_keeps_every_character(run, model):
    # beyond int64 it was numba's typing error in the API, an internal error at the command line
    want = model.sample(length=60, seed=3)
    for top_k in (len(model.vocab), len(model.vocab) + 1, 2**63, 2**70):
        assert model.sample(length=60, seed=3, top_k=top_k) == want
    assert invoke("sample", run["dir"], "--length", 60, "--seed", 3, "--top-k", 2**63) == \
        invoke("sample", run["dir"], "--length", 60, "--seed", 3)


def test_score_lines_refuses_what_is_no_list_of_lines(model):
    with pytest.raises(CharrnnError, match=re.escape("reads a list of lines, not one str: score_lines([text])")):
        model.score_lines("abc")  # else each character would be scored as a line
    with pytest.raises(CharrnnError, match="a list of strs, one per line, not NoneType"):
        model.score_lines(None)
    for no_axis in (np.array("abc"), np.array(5)):  # numpy's "TypeError: iteration over a 0-d array"
        with pytest.raises(CharrnnError, match="a list of strs, one per line, not ndarray"):
            model.score_lines(no_axis)
    assert len(list(model.score_lines(np.array(["the cat", "a dog"])))) == 2  # an array of lines is a list of them


def test_a_feed_stopped_leaves_the_state_as_it_was(model, monkeypatch):
    # feed() reads all but the last character, then the last for its probabilities: a stop in
    # the second read left the state after the first
    from test_sampling import stopped_at_call

    model.reset()
    model.feed("the ")
    before = model.state
    calls = stopped_at_call(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        model.feed("king")
    assert len(calls) == 2 and all(np.array_equal(model.state[k], before[k]) for k in before)


def test_a_path_must_be_a_path(model):
    for bad in (None, 5):
        with pytest.raises(CharrnnError, match=f"load\\(\\) reads a path .*, not {type(bad).__name__}"):
            charrnn.load(bad)
    with pytest.raises(CharrnnError, match="encode_file\\(\\) reads a path .*, not NoneType"):
        model.encode_file(None)
    # a path of bytes (os.scandir(b".")'s entries) was pathlib's bare TypeError
    entry = next(e for e in os.scandir(os.fsencode(model.path.parent)) if e.name == b"best.npz")
    with pytest.raises(CharrnnError, match="load\\(\\) reads a path .*, not DirEntry of bytes"):
        charrnn.load(entry)
    with pytest.raises(CharrnnError, match="encode_file\\(\\) reads a path .*, not DirEntry of bytes"):
        model.encode_file(entry)
    same = next(e for e in os.scandir(model.path.parent) if e.name == "best.npz")  # one of str
    assert charrnn.load(same).vocab == model.vocab
    # an empty name (a variable left unset) is refused as the command line refuses it: it was
    # the working folder, "' is a directory; give the path of a text file", naming nothing
    with pytest.raises(CharrnnError, match="^load\\(\\) got an empty name, which is no file or folder$"):
        charrnn.load("")
    with pytest.raises(CharrnnError, match="^encode_file\\(\\) got an empty name, which is no file or folder$"):
        model.encode_file("")
    # a NUL, which no command line can pass: encode_file raised os.stat's ValueError, load named
    # the file with the NUL in its message
    for name in ("best.npz\0", Path("a\0b")):
        with pytest.raises(CharrnnError, match="^load\\(\\) got a name holding a NUL character, which no file"):
            charrnn.load(name)
        with pytest.raises(CharrnnError, match="^encode_file\\(\\) got a name holding a NUL character, which no"):
            model.encode_file(name)


def test_a_name_too_long_for_the_file_system_is_a_charrnn_error(model, tmp_path):
    # the file system's own refusal (ENAMETOOLONG) came out of pathlib as a bare OSError
    long = tmp_path / ("a" * 300 + ".npz")
    with pytest.raises(CharrnnError, match=f"cannot read {re.escape(str(long))}: File name too long"):
        charrnn.load(long)
    with pytest.raises(CharrnnError, match=f"cannot read {re.escape(str(long))}: File name too long"):
        model.encode_file(long)
    # a name that may be, but is too long with .npz added: not there, named as typed
    near = tmp_path / ("a" * 253)
    with pytest.raises(CharrnnError, match=f"^no checkpoint at {re.escape(str(near))}; pass a .npz file"):
        charrnn.load(near)


def test_a_flag_is_true_or_false_and_an_encoding_a_name(model, tmp_path):
    # skip_unknown="no" turned skipping on, and encoding="" read as the model's encoding
    text = tmp_path / "t.txt"
    text.write_text("the cat", encoding="utf-8")
    message = re.escape("skip_unknown= must be True or False, not str 'no'")
    for call in (lambda: model.evaluate("the cat", skip_unknown="no"), lambda: model.score("the", skip_unknown="no"),
                 lambda: model.encode("the", skip_unknown="no"), lambda: list(model.score_lines(["a"], skip_unknown="no")),
                 lambda: model.encode_file(text, skip_unknown="no")):
        with pytest.raises(CharrnnError, match=message):
            call()
    assert model.evaluate("the cat", skip_unknown=np.True_) == model.evaluate("the cat", skip_unknown=1) == \
        model.evaluate("the cat", skip_unknown=True)
    with pytest.raises(CharrnnError, match=re.escape("skip_unknown= must be True or False, not int 2")):
        model.evaluate("the cat", skip_unknown=2)
    for bad in ("", 0, False):
        with pytest.raises(CharrnnError, match=re.escape(f"encoding={bad!r} is an unknown encoding")):
            model.encode_file(text, encoding=bad)


@pytest.mark.parametrize("fill", ["a", np.nan, np.inf, 1j, True, 1e300, 3.5e38])  # the last two: inf as float32
def test_a_state_is_finite_real_numbers(model, fill):
    model.reset()
    model.feed("the cat")
    before = model.state
    with pytest.raises(CharrnnError, match=re.escape("state['h'] must hold finite real numbers")):
        model.state = {"h": np.full((2, 16), fill), "c": np.zeros((2, 16))}
    assert all(np.array_equal(model.state[k], before[k]) for k in before)  # a state refused changes nothing
    model.state = {"h": before["h"].tolist(), "c": before["c"].astype(np.float64)}  # lists and other floats do
    assert all(np.array_equal(model.state[k], before[k]) for k in before)


def test_a_state_with_keys_of_other_types_is_refused_in_the_api_s_terms(model):
    # sorted() of an int and a str key: Python's TypeError
    with pytest.raises(CharrnnError, match="a state of this lstm model is a dict with the keys h, c"):
        model.state = {"h": np.zeros((2, 16)), 1: np.zeros((2, 16))}


def test_a_state_beyond_any_the_model_reaches_is_an_error_not_nan(tmp_path):
    # a GRU carries a huge h on through its update gate: every probability was nan, with a
    # numpy warning
    vocab = Vocab.from_text("abc de")
    spec = ModelSpec("gru", vocab.size, 16, 1)
    flat = init_params(spec, np.random.default_rng(0), np.float32)
    from charrnn.checkpoint import save_checkpoint
    from charrnn.model import Layout

    Layout(spec).views(flat)["output.Wy"][:] = 1.0  # every unit adds to every score
    save_checkpoint(tmp_path / "g.npz", {"params": flat},
                    {"config": {"cell": "gru", "hidden": 16, "layers": 1}, "vocab": vocab.to_json()})
    m = charrnn.load(tmp_path / "g.npz")
    m.state = {"h": np.full((1, 16), 3e38)}
    with pytest.raises(CharrnnError, match="the model's state overflowed: its next-character scores are not finite"):
        m.step("a")
    assert (m.state["h"] == np.float32(3e38)).all()  # the text unread, as after a Ctrl-C (it was read)
    m.reset()
    assert np.isfinite(m.step("a")).all()


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # numpy's, in the API as anywhere
def test_a_model_that_computes_nan_scores_no_text(tmp_path):
    # every parameter at float32's largest (finite, so loaded): eval printed "nan nats/char ...
    # perplexity nan", exit 0
    vocab = Vocab.from_text("abc de")
    spec = ModelSpec("lstm", vocab.size, 8, 1)
    flat = np.full_like(init_params(spec, np.random.default_rng(0), np.float32), np.finfo(np.float32).max)
    from charrnn.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "m.npz", {"params": flat},
                    {"config": {"cell": "lstm", "hidden": 8, "layers": 1}, "vocab": vocab.to_json()})
    m = charrnn.load(tmp_path / "m.npz")
    with pytest.raises(CharrnnError, match="the model computes NaN or Inf on this text"):
        m.score("abc de abc de", batch=1)
    (tmp_path / "t.txt").write_text("abc de abc de")
    for per_line in ((), ("--per-line",)):  # --per-line printed "nan<TAB>abc de abc de"
        r = run_module("eval", tmp_path / "m.npz", tmp_path / "t.txt", "--batch", "1", *per_line)
        assert r.returncode == 1 and r.stdout == "" and r.stderr.startswith("error: the model computes NaN or Inf"), \
            r.stderr
    with pytest.raises(CharrnnError, match="the model computes NaN or Inf on this text"):
        list(m.score_lines(["abc", "", "de"]))
    # sample printed a run of line breaks, exit 0: the choice among NaN fell on the first id
    for temperature in (1.0, 0.0):
        with pytest.raises(CharrnnError, match=r"the model computes NaN or Inf; .*sample an earlier checkpoint"):
            m.sample(20, temperature=temperature)
    r = run_module("sample", tmp_path / "m.npz", "--length", "20")
    assert r.returncode == 1 and r.stdout.strip() == "" and r.stderr.startswith("error: the model computes NaN"), \
        r.stderr


def indrnn_model(tmp_path, u, Wy=None):
    """An IndRNN model of 4 units whose every u is `u`, saved and loaded (and output weights Wy)."""
    from charrnn.checkpoint import save_checkpoint

    vocab = Vocab.from_text("abc de")
    spec = ModelSpec("indrnn", vocab.size, 4, 1)
    params = init_params(spec, np.random.default_rng(0), np.float32)
    views = Layout(spec).views(params)
    views["layer0.u"][...] = u
    if Wy is not None:
        views["output.Wy"][...] = Wy
    save_checkpoint(tmp_path / "m.npz", {"params": params},
                    {"config": {"cell": "indrnn", "hidden": 4, "layers": 1, "u_max": max(abs(u), 1.0)},
                     "vocab": vocab.to_json()})
    return charrnn.load(tmp_path / "m.npz")


def test_a_model_whose_state_grows_without_bound_is_said_to_and_not_broken(tmp_path):
    # an IndRNN trained at its default bound held u above 1: its parameters finite, its relu
    # state grew over a long stream to Inf, and eval, sample and inspect each said "its parameters
    # are broken (a diverged run?): ... an earlier checkpoint", which was no better
    m = indrnn_model(tmp_path, 4.0)  # 4^64 overflows float32
    grows = "its state grows without bound over a long stream, as an IndRNN unit's whose u passes 1 does; "
    # (a larger batch shortens the streams, but each first reads 200 characters unscored)
    with pytest.raises(CharrnnError, match=re.escape(f"on this text: {grows}score short lines, each from a fresh state "
                                                     "(eval --per-line; score_lines() in Python), or train with --u-max 1")):
        m.score("abc de " * 40, batch=1)
    assert all(math.isfinite(x) for x in m.score_lines(["abc de " * 2] * 40))  # 14 steps each: 4^14 is finite
    with pytest.raises(CharrnnError, match=re.escape(f"the model computes NaN or Inf: {grows}sample after a shorter "
                                                     "prime")):
        m.sample(3, prime="abc de " * 40)
    with pytest.raises(CharrnnError, match=re.escape(f"the model computes NaN or Inf: {grows}sample fewer characters")):
        m.sample(300)
    # feed() said to assign a state that m.state gave, where none was assigned
    with pytest.raises(CharrnnError, match=re.escape(f"on the text fed: {grows}feed less text between reset()s")):
        m.feed("abc de " * 40)
    m.feed("abc de")  # a copy of a model fed, not assigned, is told of growth as the model is
    with pytest.raises(CharrnnError, match=re.escape(f"on the text fed: {grows}feed less text between reset()s")):
        copy.copy(m).feed("abc de " * 40)
    # a state assigned, where the state also grows: it said to assign one that m.state gave, where
    # the one assigned was m.state's and the text grew it
    m.reset()
    m.feed("abc")
    m.state = m.state
    both = f"on the text fed: {grows}feed less text between reset()s, assign only a state that m.state gave, or train"
    with pytest.raises(CharrnnError, match=re.escape(both)):
        m.feed("abc de " * 40)
    m.state = {"h": np.full((1, 4), 3e38, np.float32)}
    with pytest.raises(CharrnnError, match=re.escape(both)):
        m.feed("a")
    # where it does not grow, an assigned state beyond any it reaches overflows the next (|u| < 1)
    bounded = indrnn_model(tmp_path / "bounded", 0.9, Wy=1.0)
    bounded.state = {"h": np.full((1, 4), 3e38, np.float32)}
    with pytest.raises(CharrnnError, match=re.escape("state overflowed: its next-character scores are not finite "
                                                     "numbers; reset(), or assign a state that m.state gave")):
        bounded.feed("a")
    # and, none assigned, it is the parameters (it said to assign a state that m.state gave)
    broken = indrnn_model(tmp_path / "broken", -4.0, Wy=np.finfo(np.float32).max)
    with pytest.raises(CharrnnError, match=re.escape("on the text fed; its parameters are broken (a diverged run?): "
                                                     "load an earlier checkpoint")):
        broken.feed("a")
    (tmp_path / "t.txt").write_text("abc de " * 40)
    r = run_module("inspect", tmp_path / "m.npz", tmp_path / "t.txt")
    assert r.returncode == 1 and f"{grows}inspect fewer characters (--chars)" in r.stderr, r.stderr


def test_a_negative_u_keeps_an_indrnn_s_state_bounded(tmp_path):
    # relu states are never negative: u = -4 pulls them toward relu(xproj), and such a model that
    # computes NaN does so for its parameters (here output weights of float32's largest)
    m = indrnn_model(tmp_path / "neg", -4.0, Wy=np.finfo(np.float32).max)
    with pytest.raises(CharrnnError, match=re.escape("on this text; its parameters are broken (a diverged run?)")):
        m.score("abc", batch=1)


def test_samples_of_a_stream_are_each_what_they_would_be_or_refused(model):
    # read out of turn they were other texts, without a word: they share one state and one
    # stream of random numbers
    n = 300  # more than a chunk: sample 1 still draws after its first piece
    want = ["".join(p) for p in model.stream(n, seed=1, num_samples=3)]
    assert want[0] == model.sample(n, seed=1)
    a, b, c = model.stream(n, seed=1, num_samples=3)
    next(a)
    with pytest.raises(CharrnnError, match="sample 2 was begun while sample 1 was being read; they share one state"):
        next(b)
    a.close()  # sample 1 left early: its numbers are skipped
    assert "".join(c) == want[2]  # and sample 2, refused, never began: skipped too
    a, b, c = model.stream(n, seed=1, num_samples=3)
    next(a)
    with pytest.raises(CharrnnError, match="sample 2 was begun while sample 1 was being read"):
        next(b)
    a.close()
    assert "".join(b) == want[1]  # refused, it was spent: read as an empty sample
    a, b, c = model.stream(n, seed=1, num_samples=3)
    assert ["".join(b), "".join(c)] == want[1:]
    with pytest.raises(CharrnnError, match="sample 1 was begun after sample 3; its numbers are spent"):
        next(a)
    # one that has drawn every number may be left with its last piece unread
    a, b = model.stream(100, seed=1, num_samples=2)
    first = next(a)
    assert "".join(b) == ["".join(p) for p in model.stream(100, seed=1, num_samples=2)][1]
    assert first + "".join(a) == model.sample(100, seed=1)


def test_a_stream_read_from_many_threads_takes_turns(model):
    """Its reads take turns: one sample's pieces read by four threads are each given once, the
    sample's own; four threads each beginning a sample of one stream get each its sample's own
    text, or the refusal for a sample begun while another is read. It was Python's `ValueError:
    generator already executing`, and two samples begun at once could both pass the check and
    draw from one state."""
    n = 20_000  # many pieces: reads from the four threads meet
    want = list(next(model.stream(n, seed=5)))  # the sample's pieces, read by one thread
    for _ in range(3):
        (sample,) = model.stream(n, seed=5)
        pieces, errors = [], []

        def read():
            try:
                for piece in sample:
                    pieces.append(piece)
            except Exception as e:  # noqa: BLE001 - any, reported below
                errors.append(e)

        threads = [threading.Thread(target=read) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert sorted(pieces) == sorted(want)
    want = ["".join(p) for p in model.stream(2_000, seed=6, num_samples=4)]
    for _ in range(3):
        samples, got, refused = list(model.stream(2_000, seed=6, num_samples=4)), {}, []

        def begin(i):
            try:
                got[i] = "".join(samples[i])
            except CharrnnError as e:
                refused.append(str(e))

        threads = [threading.Thread(target=begin, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(got[i] == want[i] for i in got), "a sample begun beside another is another text"
        assert len(got) + len(refused) == 4 and all("share one state" in m or "are spent" in m for m in refused)


def test_a_sample_stopped_by_ctrl_c_or_closed_unbegun_leaves_the_later_ones_as_they_would_be(model, monkeypatch):
    # a Ctrl-C inside the kernel's call, after sample 1 had drawn that call's numbers and before
    # it counted them, had them skipped twice: sample 2 was another text
    from charrnn.sampling import Sampler

    n = 400  # several chunks
    want = ["".join(p) for p in model.stream(n, seed=3, num_samples=2)]
    generate, calls = Sampler.generate, []

    def interrupted(self, *args):
        calls.append(generate(self, *args))
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if it landed just after the kernel returned
        return calls[-1]

    a, b = model.stream(n, seed=3, num_samples=2)
    monkeypatch.setattr(Sampler, "generate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        "".join(a)
    monkeypatch.undo()
    assert "".join(b) == want[1]
    # closed before it began: read as a closed generator reads (nothing), the next as it would be
    a, b = model.stream(n, seed=3, num_samples=2)
    a.close()
    assert "".join(a) == "" and "".join(b) == want[1]
    # a Ctrl-C as sample 2 begins, sample 1 skipped: sample 3 was skipped ahead twice
    want = ["".join(p) for p in model.stream(n, seed=3, num_samples=3)]
    a, b, c = model.stream(n, seed=3, num_samples=3)
    monkeypatch.setattr(Sampler, "reset", lambda self: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        next(b)
    monkeypatch.undo()
    assert "".join(c) == want[2]


def test_odd_calls_of_the_model_class_and_of_evaluate_are_one_clear_error(model):
    with pytest.raises(CharrnnError, match=r"^TrainedModel\(\) takes a model read by charrnn.load\(\), not str; "):
        charrnn.TrainedModel("checkpoints/run")  # it was AttributeError: 'str' object has no attribute 'spec'
    for ids in ([[0, 1], [2]], np.ma.array([0, 1, 2, 1], mask=[0, 1, 0, 0])):  # numpy's ValueError (an
        with pytest.raises(CharrnnError, match=r"^give a str, or ids from encode\(\): a 1-D array"):  # inhomogeneous
            model.evaluate(ids)  # shape); a mask dropped unread
    # every character unknown and skipped: "the text to evaluate has 0 characters; it needs at least 2"
    with pytest.raises(CharrnnError, match=r"^3 of the 3 characters of the text are unknown to the model; the 0 "
                                           r"left are too few to score$"):
        model.score("\u20ac\u20ac\u20ac", skip_unknown=True)


def test_a_copy_of_a_model_reads_text_with_a_state_of_its_own(model):
    model.reset()
    model.feed("the ")
    twin = copy.copy(model)  # it shared the state: twin.reset() reset the model too
    assert all((twin.state[k] == model.state[k]).all() for k in model.state)
    twin.reset()
    assert any(model.state[k].any() for k in model.state) and not any(twin.state[k].any() for k in twin.state)
    twin.feed("the ")
    other = copy.copy(twin)
    np.testing.assert_array_equal(twin.step("c"), other.step("c"))  # the same state, each its own
    np.testing.assert_array_equal(twin.step("a"), other.step("a"))


def test_unknown_characters_in_a_prime_or_stop_text_are_named_by_argument(model):
    # they said "priming text" and "the stop text", and were no UnknownCharacters
    with pytest.raises(charrnn.UnknownCharacters, match=r"^prime= has 1 character the model does not know"):
        model.sample(5, prime="€")
    with pytest.raises(charrnn.UnknownCharacters, match=r"^stop_at= has 1 character the model does not know"):
        model.sample(5, stop_at="€")


def test_a_file_that_is_no_text_is_not_advised_to_a_model_of_characters_as_bytes(model, run, tmp_path):
    # the advice "or encoding='bytes'" led to a refusal: this model reads characters
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"caf\xe9 au lait\n")
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"ab\0cd")
    with pytest.raises(NotText) as e:
        model.encode_file(latin)
    assert str(e.value).endswith("re-save it as UTF-8, or pass encoding='latin-1' (any byte file)")
    with pytest.raises(NotText) as e:
        model.encode_file(binary)
    assert str(e.value).endswith("(NUL byte at offset 2); pass a text file")
    for args in ((latin,), (latin, "--per-line"), (binary,)):
        r = run_module("eval", run["dir"], *args)
        assert r.returncode == 1 and "bytes" not in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    r = run_module("inspect", run["dir"], latin)
    assert r.returncode == 1 and r.stderr.endswith("or pass --encoding latin-1 (any byte file)\n"), r.stderr
    with pytest.raises(CharrnnError, match=r"^encoding='ascii' is an unknown encoding; choose one of utf-8, "):
        model.encode_file(latin, encoding="ascii")  # it said "unknown encoding 'ascii'", naming no argument


def test_a_state_of_ragged_rows_is_refused_by_its_shape(model):
    with pytest.raises(CharrnnError, match=re.escape("state['h'] has rows of different lengths; this model's shape "
                                                     "is (2, 16)")):
        model.state = {"h": [[1.0, 2.0], [3.0]], "c": np.zeros((2, 16))}


def test_a_perplexity_beyond_float64_is_inf():
    # a model that diverges on a text (an IndRNN whose |u| bound is above 1) scored 800 nats a
    # character, and eval stopped with an internal error (OverflowError from math.exp)
    from charrnn.api import Evaluation

    assert Evaluation(800.0, 10, 0).perplexity == math.inf
    assert Evaluation(709.0, 10, 0).perplexity == math.exp(709.0)
    assert math.isnan(Evaluation(math.nan, 10, 0).perplexity)
