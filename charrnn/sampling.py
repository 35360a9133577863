"""Sampling text from a trained model: temperature, top-k, top-p, priming, seeding.

    load_model(path)            a checkpoint (file or run folder) -> spec, params, vocabulary
    Sampler(spec, params)       one stream's state and scratch, driving kernels/generate.py
    samples(...)                num_samples texts, each an iterator of text chunks

How a sample is made:
- The state starts at zero and is warmed up on the priming text by teacher forcing: every
  character but the last is fed in; the last one is the first input of generation. The prime
  is part of the printed text, the continuation follows it.
- Without a prime, the state is warmed up on the run's document separator, for a model that
  read one (a run on several files), else on one line break (or, if the model has none, a
  space, or else its first character), as if the text began at the start of a line
  (start_context). That is not printed; the first printed character is already sampled.
- Each chosen character uses one uniform number from a numpy Generator seeded with `seed`
  (PCG64), drawn in chunks in order. The text depends only on the seed and the options, not on
  the chunk size, and with several samples sample 1 is what a single sample would have been.
- temperature 0 picks the most probable character every time (no randomness; top-k and top-p,
  which could change nothing, are refused with it); otherwise the
  logits are divided by the temperature, then top-k and top-p (nucleus) restrict the choice
  (see kernels.generate.select).
- stop_at ends a sample where the generated text first contains it; the stop text itself is left
  out, as is everything after it. Only generated text is searched, never the prime. A sample
  that stops early is a prefix of the one without stop_at, and the numbers its remaining
  characters would have used are left unused (sample i draws from number i * length on), so
  every later sample is unchanged too.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .checkpoint import load_checkpoint, resolve_checkpoint
from .config import SAMPLE_RANGES
from .corpus import Vocab
from .errors import CharrnnError, UsageError, as_flag, computes_nan
from .cells import CELLS
from .kernels._jit import blas_threads
from .kernels.generate import CODES, generate, offsets_table, teacher_force
from .model import Layout, ModelSpec, state_grows
from .schema import MODEL, model_spec

CHUNK = 128  # characters per jitted call: enough that Python's share is tiny, small enough to stream
# Sampler.feed reads a text in calls of FEED_WORK // (the model's parameters) characters (a
# character reads every parameter once; at least one): milliseconds a call, so that Ctrl-C stops a
# long text at once. One call for the whole text took 3 s for 800,000 characters at hidden 32,
# and would take minutes for a large model.
FEED_WORK = 1 << 24
SAMPLE_THREADS = 2  # BLAS threads for `charrnn sample`: a fixed number, so the text depends only
# on the seed (the split of a product between threads decides its rounding)


# ---------------------------------------------------------------------------------------------
# The model from a checkpoint


@dataclass
class Model:
    spec: ModelSpec
    params: np.ndarray  # the flat parameter buffer, float32 as saved
    vocab: Vocab
    config: dict  # TrainConfig.to_dict() of the run that wrote it
    path: Path  # the checkpoint file that was read
    doc_sep: str = ""  # the separator the model read between documents (separator_read)


def load_model(path) -> Model:
    """The model in a checkpoint file, or in a run folder's best checkpoint (else its latest).

    The checkpoint carries its own vocabulary, so it samples correctly wherever it is copied."""
    path = resolve_checkpoint(path, prefer="best")
    arrays, meta = load_checkpoint(path, schema=MODEL)
    params = np.ascontiguousarray(arrays["params"])
    corpus = meta.get("corpus")
    files = corpus.get("files") if isinstance(corpus, dict) else None  # (a model's checkpoint needs no list)
    doc_sep = separator_read(meta["config"].get("doc_sep", ""), files)
    return Model(model_spec(meta), params, Vocab.from_json(meta["vocab"]), meta["config"], path, doc_sep)


# ---------------------------------------------------------------------------------------------
# One stream


class Sampler:
    """The state of one stream of text and the buffers of the generation kernels.

    Works in the dtype of `params` (float32 from a checkpoint; float64 for checks).
    `blas` picks the kernels' vector-matrix product: the hand loop (default) or BLAS gemv; see
    kernels/generate.py for why. `threads` > 1 means BLAS gemv on that many BLAS threads (the
    rest of charrnn holds BLAS to one): a stream's products are bound by memory bandwidth, and
    two cores read the weights about 1.7x as fast as one on an idle machine."""

    def __init__(self, spec: ModelSpec, params: np.ndarray, blas: bool = False, threads: int = 1):
        params = np.ascontiguousarray(params)
        if params.dtype not in (np.float32, np.float64):
            raise ValueError(f"params must be float32 or float64, not {params.dtype}")
        layout = Layout(spec)
        if params.shape != (layout.size,):
            raise ValueError(f"params have shape {params.shape}, the model needs ({layout.size},)")
        self.spec, self.params, self.blas = spec, params, bool(blas) or threads > 1
        self.threads = int(threads)
        self.offs = offsets_table(layout)
        self.feed_chunk = max(1, FEED_WORK // layout.size)
        if spec.cell not in CODES:
            raise CharrnnError(f"the {spec.cell} cell has no sampling step (kernels/generate.py); it cannot be sampled")
        self.cell = CODES[spec.cell]
        L, H, V, dt = spec.layers, spec.hidden, spec.vocab_size, params.dtype
        G = CELLS[spec.cell].gates * H
        self.h = np.zeros((L, H), dt)  # every layer's hidden state
        self.c = np.zeros((L, H), dt)  # a second state per layer, for the cells that have one
        self.xg = np.zeros(G, dt)  # input term of the gates
        self.hg = np.zeros(G, dt)  # recurrent term of the gates
        self.z = np.zeros(V, dt)  # logits
        self.probs = np.zeros(V, np.float64)
        self.order = np.zeros(V, np.int64)
        self._no_logits = np.zeros((0, V), dt)

    def _blas_threads(self):
        return blas_threads(self.threads) if self.threads > 1 else nullcontext()

    def reset(self):
        """Back to the zero state, where training starts every stream."""
        self.h[:] = 0.0
        self.c[:] = 0.0

    def feed(self, ids, keep_logits=False):
        """Teacher-force ids through the model, updating the state. With keep_logits, return the
        logits (N,V) after each character (what the model predicts for the next one)."""
        ids = np.ascontiguousarray(ids, dtype=np.int32)
        if ids.ndim != 1 or (ids.size and (ids.min() < 0 or ids.max() >= self.spec.vocab_size)):
            raise ValueError(f"ids must be a 1-D array of ids in [0, {self.spec.vocab_size})")
        logits = np.zeros((ids.size, self.spec.vocab_size), self.params.dtype) if keep_logits else self._no_logits
        n = self.feed_chunk
        with self.kept_on_stop(), self._blas_threads():
            for i in range(0, ids.size, n):  # Ctrl-C is heard between the calls
                teacher_force(logits[i : i + n] if keep_logits else logits, self.h, self.c, self.xg, self.hg,
                              ids[i : i + n], self.params, self.offs, self.cell, self.blas)
        return logits if keep_logits else None

    @contextmanager
    def kept_on_stop(self):
        """Around reading a text: should it stop (Ctrl-C between two calls) or fail, the state is
        left as it was before, not somewhere inside the text."""
        h, c = self.h.copy(), self.c.copy()
        try:
            yield
        except BaseException:
            self.h[:], self.c[:] = h, c
            raise

    def generate(self, first_id, uniforms, temperature=1.0, top_k=0, top_p=1.0):
        """Feed first_id, then generate len(uniforms) characters, each fed back in: int32 ids.
        The state ends after the last generated character has been chosen (not yet fed)."""
        uniforms = np.ascontiguousarray(uniforms, dtype=np.float64)
        out = np.zeros(uniforms.size, np.int32)
        top_k = min(int(top_k), self.probs.size)  # as many as the vocabulary keeps them all; any more is no int64
        fed_over = not (np.isfinite(self.h).all() and np.isfinite(self.c).all())  # by the text fed first: a prime
        with self._blas_threads():
            last = generate(out, self.h, self.c, self.xg, self.hg, self.z, self.probs, self.order, int(first_id),
                            uniforms, self.params, self.offs, self.cell, float(temperature), top_k,
                            float(top_p), self.blas)
        if last < 0:  # never a text chosen among NaN
            raise computes_nan("sample", on="", grows=state_grows(self.spec, self.params),
                               shorter="sample after a shorter prime" if fed_over else "sample fewer characters")
        return out


# ---------------------------------------------------------------------------------------------
# Texts


def check_options(length=0, temperature=1.0, top_k=0, top_p=1.0, num_samples=1, seed=0, spell=as_flag):
    """A CharrnnError naming the first option out of its range (config.SAMPLE_RANGES), spelled
    by `spell` as the caller wrote it (errors.as_flag, as_keyword)."""
    given = {"length": length, "temperature": temperature, "top_k": top_k, "top_p": top_p, "num_samples": num_samples}
    for name, value in given.items():
        if value not in SAMPLE_RANGES[name]:
            raise CharrnnError(f"{spell(name, value)} is out of range: it must be in {SAMPLE_RANGES[name]}")
    if int(seed) != seed or seed not in SAMPLE_RANGES["seed"]:
        raise CharrnnError(f"{spell('seed', seed)} is out of range: it must be a whole number in {SAMPLE_RANGES['seed']}")
    if temperature == 0:  # the most probable character: a restriction to the likeliest few changes nothing
        for name, value, off in (("top_k", top_k, 0), ("top_p", top_p, 1.0)):
            if value != off:
                raise UsageError(f"{spell(name, value)} has no use with {spell('temperature', 0)}, which always picks "
                                 f"the most probable character; leave one of them out")


def start_id(vocab: Vocab) -> int:
    """The unprinted character a line is read after: a line break, else a space, else id 0."""
    for ch in ("\n", " "):
        if ch in vocab.chars:
            return vocab.chars.index(ch)
    return 0


def separator_read(doc_sep: str, files) -> str:
    """The separator a run's model read between its documents: its --doc-sep `doc_sep` where it
    read several `files`, "" where it read one (none was put in), or `doc_sep` where the
    checkpoint lists no files (older ones)."""
    return "" if isinstance(files, list) and len(files) == 1 else doc_sep


def start_context(vocab: Vocab, doc_sep: str = "") -> np.ndarray:
    """What the state reads, unprinted, when a sample has no prime: the run's document separator
    if the model read one (a run on several files has its characters), so that the sample starts
    as a document does; else start_id's character, as at the start of a line."""
    if doc_sep and all(c in vocab.chars for c in doc_sep):
        return vocab.encode(doc_sep)
    return np.array([start_id(vocab)], np.int32)


class _Begun:
    """An iterator of one sample's pieces that begins the sample at its first next(): a refusal
    then (not its turn) leaves it as it was, to be read once its turn comes, where a generator
    that raised would be spent and read as an empty sample. The samples of one call share
    `turns`, a lock: reads from several threads take turns, one piece at a time, where two
    next() at once were a generator's `ValueError: already executing`, and two samples begun at
    once could both pass begin's check and draw from one state."""

    def __init__(self, begin, turns):
        self._begin, self._turns, self._pieces, self._closed = begin, turns, None, False

    def __iter__(self):
        return self

    def __next__(self):
        with self._turns:
            if self._closed:  # as a closed generator: nothing more (one never begun: its numbers are skipped)
                raise StopIteration
            if self._pieces is None:
                self._pieces = self._begin()
            return next(self._pieces)

    def close(self):
        with self._turns:
            self._closed = True
            if self._pieces is not None:
                self._pieces.close()


def samples(sampler: Sampler, vocab: Vocab, length=500, prime="", seed=0, temperature=1.0, top_k=0,
            top_p=1.0, num_samples=1, chunk=CHUNK, stop_at="", doc_sep="", spell=as_flag, as_bytes=False):
    """num_samples iterators, each yielding one sample's text in pieces: the prime (if any), then
    `length` generated characters, `chunk` at a time, or fewer if stop_at ends it (see above).
    Read each to its end, or close it, before the next begins (else a CharrnnError; see begin). doc_sep: the separator of the run's documents (start_context);
    spell: how messages name an option (check_options); as_bytes: a bytes model's, whose unknown
    characters are named as bytes (Vocab.encode).

    The options, the prime and the stop text are checked here, before anything is generated."""
    check_options(length, temperature, top_k, top_p, num_samples, seed, spell)
    context = vocab.encode(prime, spell("prime"), as_bytes) if prime else start_context(vocab, doc_sep)
    if stop_at:
        vocab.encode(stop_at, spell("stop_at"), as_bytes)  # a character the model lacks would never be written
    rng = np.random.Generator(np.random.PCG64(int(seed)))
    # The samples share the sampler's state and the random numbers: each has `length` of them
    # (one a character; stop_at leaves the rest unused), so sample i starts at number i * length,
    # set from the seed's start whatever was read before and however it ended (PCG64 spends one
    # step per float64 drawn)
    origin = rng.bit_generator.state
    turn = {"next": 0, "drawing": None}  # the first sample not yet begun; the one drawing numbers

    def begin(i):
        """Sample i's pieces (see pieces), if it may begin now: begun while another still draws, or
        after a later one, its text would be another, and it is refused, nothing changed (the
        first may be read once the other is done)."""
        if turn["drawing"] is not None:
            raise CharrnnError(f"sample {i + 1} was begun while sample {turn['drawing'] + 1} was being read; they "
                               "share one state: read each to its end, or close it, before the next")
        if i < turn["next"]:
            raise CharrnnError(f"sample {i + 1} was begun after sample {turn['next']}; its numbers are spent: "
                               "read the samples in order")
        return pieces(i)

    def pieces(i):
        """Sample i's pieces, from its own numbers: each later sample is as it would have been,
        whether the ones before were read, skipped, closed early or stopped by a Ctrl-C."""
        rng.bit_generator.state = origin
        rng.bit_generator.advance(i * length)
        turn["next"], turn["drawing"] = i + 1, (i if length else None)
        left = length  # the numbers sample i has yet to draw
        try:
            sampler.reset()
            sampler.feed(context[:-1])
            if prime:
                yield prime
            last = int(context[-1])
            held = ""  # the end of the text so far, which may be the start of stop_at: not yet printed
            while left > 0:
                n = min(chunk, left)
                ids = sampler.generate(last, rng.random(n), temperature, top_k, top_p)
                last, left = int(ids[-1]), left - n
                text = held + vocab.decode(ids)
                if stop_at:
                    at = text.find(stop_at)
                    if at >= 0:
                        held, text, left = "", text[:at], 0
                    else:
                        cut = max(0, len(text) - (len(stop_at) - 1))
                        held, text = text[cut:], text[:cut]
                if not left:  # every number drawn: the next sample may begin
                    turn["drawing"] = None
                if text:
                    yield text
            if held:
                yield held
        finally:
            if turn["drawing"] == i:  # closed before its end, or stopped by a Ctrl-C
                turn["drawing"] = None

    turns = threading.Lock()
    # map, not a generator: several threads may take the samples at once
    return map(lambda i: _Begun(lambda: begin(i), turns), range(num_samples))


def sample_text(sampler, vocab, **options) -> list[str]:
    """Every sample as one string (what the CLI streams piece by piece)."""
    return ["".join(pieces) for pieces in samples(sampler, vocab, **options)]


def warm_up(spec: ModelSpec, dtype=np.float32):
    """Call the generation kernels once on a tiny model of the same cell and dtype, so that
    numba compiles them (or loads them from its cache) before the first real character."""
    tiny = ModelSpec(spec.cell, 2, 1, spec.layers, spec.options)
    sampler = Sampler(tiny, np.zeros(Layout(tiny).size, dtype))
    sampler.feed(np.zeros(2, np.int32))
    sampler.feed(np.zeros(2, np.int32), keep_logits=True)
    sampler.generate(0, np.zeros(2), 1.0, 1, 0.5)


def warm_up_evaluate(spec: ModelSpec, dtype=np.float32):
    """The same for the training kernels that `charrnn eval` runs (evaluate.evaluate)."""
    from .evaluate import evaluate

    tiny = ModelSpec(spec.cell, 2, 1, spec.layers, spec.options)
    evaluate(tiny, np.zeros(Layout(tiny).size, dtype), np.array([0, 1, 0, 1], np.int32), 1, 2)
