"""The Python API: a trained model in a few lines.

    import charrnn
    m = charrnn.load("checkpoints/RUN")         # a run folder (its best.npz) or a .npz file
    m.sample(length=300, temperature=0.8, seed=1)
    m.score("To be, or not to be")              # nats per character, as `charrnn eval` prints
    m.reset(); p = m.step("T")                  # p[i]: how likely m.vocab[i] comes next

`charrnn sample` and `charrnn eval` are this module with a command line around it: the same
arguments give the same text and the same figures. The work is sampling.py's (one stream on the
generation kernels) and evaluate.py's (the training kernels, forward only); `import charrnn`
loads none of it until a model is (charrnn/__init__.py).
"""
from __future__ import annotations

import decimal
import math
import numbers
import os
import re
import threading
from collections.abc import Iterable
from contextlib import contextmanager, nullcontext
from typing import NamedTuple

import numpy as np

from . import memory
from .cells import CELLS
from .config import EVAL_RANGES
from .corpus import ENCODINGS, NotText, UnknownCharacters, check_encoding, check_read_as, read_ids, unit_name
from .errors import CharrnnError, as_keyword, computes_nan, short_repr
from .evaluate import evaluate, evaluation_shape, line_losses, lines_shape
from .model import Stack, state_grows
from .sampling import SAMPLE_THREADS, Model, Sampler, load_model, samples, start_id

LINES_PER_PASS = 4096  # score_lines sorts this many lines by length at a time, then yields their scores
STATE_NAMES = {"hs": "h", "cs": "c"}  # a cell's state buffers, as `state` names them
_ON_WORKQUEUE = threading.Lock()


def _parallel_work():
    """Around a call of the parallel kernels (scoring): numba's own workqueue threading layer,
    which it runs where neither TBB nor OpenMP is installed, aborts the process when two threads
    enter parallel kernels at once ("Concurrent access has been detected"); there they take
    turns. Before any parallel kernel has run, the layer is not chosen yet: the first calls take
    turns too."""
    import numba

    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        return _ON_WORKQUEUE
    return _ON_WORKQUEUE if layer == "workqueue" else nullcontext()


class Evaluation(NamedTuple):
    """A model's loss on a text."""

    nats: float  # mean -log p of each predicted character, natural logarithm
    chars: int  # how many characters were predicted
    skipped: int  # unknown characters left out (skip_unknown)

    @property
    def bits(self) -> float:
        return self.nats / math.log(2.0)

    @property
    def perplexity(self) -> float:
        """exp(nats): inf beyond float64's range (a model that diverges on the text), nan for nan."""
        try:
            return math.exp(self.nats)
        except OverflowError:
            return math.inf


def load(path) -> TrainedModel:
    """The model in a checkpoint: a .npz file, or a run folder (its best.npz, else latest.npz).
    It carries its own vocabulary and settings; a file that cannot be read is a CharrnnError."""
    return TrainedModel(load_model(_require_path("load()", path)))


# Checks of the arguments' types: a wrong type is a CharrnnError, as every error here is, that names
# the argument as a caller writes it (length=), as do the bounds' messages (errors.as_keyword). The
# bounds stay config.py's, checked where the CLI's values are checked too (sampling.check_options,
# _batch_window).


# int() of a Decimal of 20,000 digits takes some 15 ms, of 10^7 digits minutes (each was once
# taken as 10^4300, and seeds of 10^5000 and 10^6000 gave one text); and numpy turns a seed into
# 32-bit words in a time that grows as its digits squared (10^300000: 7 s). A whole number of
# more digits is refused, a Decimal before int() takes it
WHOLE_DIGITS = 20_000
_BEYOND_WHOLE = 10**WHOLE_DIGITS


def _whole_number(name, value) -> int:
    """`value` as an int: an int, a numpy integer, or a float with a whole value (length=1e4).
    Never a bool: True is no length and no seed."""
    if isinstance(value, numbers.Rational):  # a Fraction too large for a float included
        whole = value.denominator == 1
    elif isinstance(value, decimal.Decimal):  # (no numbers.Real: it will not mix with floats)
        whole = value.is_finite() and value == value.to_integral_value()
        if whole and value.adjusted() >= WHOLE_DIGITS:
            raise CharrnnError(f"{as_keyword(name)} must be a whole number of at most {WHOLE_DIGITS:,} digits, not a "
                               f"Decimal of {value.adjusted() + 1:,} digits")
    else:
        whole = isinstance(value, numbers.Real) and float(value).is_integer()
    if isinstance(value, bool) or not whole:
        raise CharrnnError(f"{as_keyword(name)} must be a whole number, not {type(value).__name__} {short_repr(value)}")
    n = int(value)
    if abs(n) >= _BEYOND_WHOLE:
        raise CharrnnError(f"{as_keyword(name)} must be a whole number of at most {WHOLE_DIGITS:,} digits; this "
                           f"{type(value).__name__} has more")
    return n


def _real_number(name, value) -> float:
    """`value` as a float: any real number, numpy's and a Decimal included, but no bool."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, decimal.Decimal)):
        raise CharrnnError(f"{as_keyword(name)} must be a number, not {type(value).__name__} {short_repr(value)}")
    try:
        return float(value)
    except OverflowError:  # an int beyond any float (10**400): beyond every bound, as inf is
        return math.inf if value > 0 else -math.inf
    except ValueError:  # a Decimal's signalling NaN
        return math.nan


def _flag(name, value) -> bool:
    """`value` as a bool: True or False (numpy's too, and 1 or 0), not any value that reads as one."""
    if not (isinstance(value, (bool, np.bool_)) or (isinstance(value, numbers.Integral) and value in (0, 1))):
        raise CharrnnError(f"{as_keyword(name)} must be True or False, not {type(value).__name__} {short_repr(value)}")
    return bool(value)


def _without_its_line_break(line: str, i: int) -> str:
    """A line as score_lines scores it: the LF or CR LF that ends it left out (a file's lines keep
    theirs, and `eval --per-line` scores no line break); a CharrnnError for one inside it, which
    would be scored as a character of the line."""
    body = line.removesuffix("\n")
    body = body.removesuffix("\r") if body != line else body
    if "\n" in body:
        raise CharrnnError(f"score_lines() reads one line per str, but line {i} holds a line break before its end: "
                           f"{short_repr(line)}; split the text at its line breaks (text.split('\\n'))")
    return body


def _require_str(what, value) -> str:
    if not isinstance(value, str):
        raise CharrnnError(f"{what} must be a str, not {type(value).__name__}")
    return value


def _require_path(what, value):
    # (a PathLike of bytes, os.scandir(b".")'s entries: a path pathlib cannot hold)
    if not isinstance(value, (str, os.PathLike)) or not isinstance(os.fspath(value), str):
        raise CharrnnError(f"{what} reads a path (a str or a pathlib.Path), not {type(value).__name__}"
                           + (" of bytes" if isinstance(value, os.PathLike) else ""))
    if value == "":  # as the command line refuses it (cli._named_path): a variable left unset, as a path the working folder
        raise CharrnnError(f"{what} got an empty name, which is no file or folder")
    if "\0" in os.fspath(value):  # (os.stat's ValueError; no command line can pass one)
        raise CharrnnError(f"{what} got a name holding a NUL character, which no file or folder name holds")
    return value


def too_few_known(skipped: int, kept: int, what: str, unit: str) -> CharrnnError:
    """The error for a text whose unknown characters, left out, leave fewer than 2 to score."""
    return CharrnnError(f"{skipped:,} of the {skipped + kept:,} {unit}s of {what} {'is' if skipped == 1 else 'are'} "
                        f"unknown to the model; the {kept} left {'is' if kept == 1 else 'are'} too few to score")


@contextmanager
def _unknown_characters():
    """A vocabulary's error for characters a model lacks (Vocab.encode, translate, check_known),
    raised as UnknownCharacters."""
    try:
        yield
    except CharrnnError as e:
        raise UnknownCharacters(str(e)) from None


class TrainedModel:
    """A trained model: sample text from it, score text with it, or read text one character at a
    time and see what it expects next.

        vocab    the characters it knows, a tuple: character id i is vocab[i]
        spec     its cell, vocabulary size, hidden units and layers (model.ModelSpec)
        config   the settings of the run that trained it;  path  the checkpoint file read
    """

    def __init__(self, loaded, spell=as_keyword):
        """From sampling.load_model's result; use charrnn.load(path). spell: how messages name
        an argument (errors.as_keyword; the command line's as_flag)."""
        if not isinstance(loaded, Model):  # TrainedModel("run"): 'str' object has no attribute 'spec'
            raise CharrnnError(f"TrainedModel() takes a model read by charrnn.load(), not {type(loaded).__name__}; "
                               "for a checkpoint, use charrnn.load(path)")
        self.spec, self.params, self.config, self.path = loaded.spec, loaded.params, loaded.config, loaded.path
        self._spell = spell
        self._vocab = loaded.vocab
        self._of_bytes = self.config.get("encoding") == "bytes"  # each character a byte: unknowns named as bytes
        self._doc_sep = loaded.doc_sep  # what an unprimed sample starts after (sampling.start_context)
        self.vocab = tuple(loaded.vocab.chars)
        self._stream = None  # the Sampler whose state reset/step/feed move, made on first use
        self._assigned = False  # whether m.state was assigned since the last reset: feed's overflow may be its

    def __copy__(self):
        """A model of its own state (reset/step/feed), sharing the parameters, which nothing
        writes: copy.copy shared the state with the original."""
        twin = object.__new__(type(self))
        twin.__dict__.update(self.__dict__)
        twin._stream = None
        if self._stream is not None:
            twin.state = self.state
            twin._assigned = self._assigned  # (a state copied, not assigned by the user)
        return twin

    def __repr__(self):
        s = self.spec
        return f"<charrnn model: {s.cell} {s.layers}x{s.hidden}, vocabulary {s.vocab_size}, {self.path}>"

    # -----------------------------------------------------------------------------------------
    # Text out

    def sample(self, length=500, *, temperature=1.0, top_k=0, top_p=1.0, prime="", seed=0, stop_at="") -> str:
        """Generated text: the prime (if any), then up to `length` characters.

        temperature divides the logits (0: always the most probable character); top_k and top_p
        keep only the k most probable characters, or the fewest most probable ones that reach
        probability top_p (top_k=0 and top_p=1: off). Without a prime the text starts as a
        document of the run's does (after its --doc-sep, for a run on several files), else as if
        after a line break. stop_at ends the text where the generated part first contains it, leaving it out.
        The same arguments give the same text, which is what `charrnn sample` prints."""
        pieces = next(iter(self.stream(length, temperature=temperature, top_k=top_k, top_p=top_p, prime=prime,
                                       seed=seed, stop_at=stop_at)))
        return "".join(pieces)

    def stream(self, length=500, *, temperature=1.0, top_k=0, top_p=1.0, prime="", seed=0, stop_at="",
               num_samples=1):
        """num_samples samples, each an iterator of pieces of text as they are generated (what
        `charrnn sample` prints as it goes); read each to its end, or close it,
        before the next begins (else a CharrnnError; sampling.samples). Each starts from a
        fresh state; the random numbers run on from one to the next, so sample 1 is sample()'s
        text. The options are checked at once, before anything is generated. Reads from several
        threads take turns, a piece at a time."""
        options = dict(length=_whole_number("length", length), temperature=_real_number("temperature", temperature),
                       top_k=_whole_number("top_k", top_k), top_p=_real_number("top_p", top_p),
                       prime=_require_str("prime=", "" if prime is None else prime), seed=_whole_number("seed", seed),
                       stop_at=_require_str("stop_at=", "" if stop_at is None else stop_at),  # None: none, as ""
                       num_samples=_whole_number("num_samples", num_samples))
        sampler = Sampler(self.spec, self.params, threads=SAMPLE_THREADS)
        return samples(sampler, self._vocab, **options, doc_sep=self._doc_sep, spell=self._spell,
                       as_bytes=self._of_bytes)

    # -----------------------------------------------------------------------------------------
    # Text in

    def score(self, text, *, batch=None, window=None, skip_unknown=False) -> float:
        """Nats per character of `text`: the figure `charrnn eval` prints for it (see evaluate)."""
        return self.evaluate(text, batch=batch, window=window, skip_unknown=skip_unknown).nats

    def evaluate(self, text, *, batch=None, window=None, skip_unknown=False) -> Evaluation:
        """The loss on `text` (a str, or ids from encode()) as `charrnn eval` measures it. The
        text is cut into `batch` contiguous streams (default: the checkpoint's batch; fewer for a
        short text), read `window` steps at a time (default: its k1); the first character is
        only read, every other one predicted, and a tail shorter than the batch is left out
        (evaluate.evaluate). Characters the model lacks raise UnknownCharacters, naming them,
        unless skip_unknown leaves them out."""
        batch, window = self._batch_window(batch, window)
        skip_unknown = _flag("skip_unknown", skip_unknown)
        ids, skipped = self.encode(text, skip_unknown=skip_unknown) if isinstance(text, str) else (self._ids(text), 0)
        if skipped and ids.size < 2:  # not "the text to evaluate has 0 characters"
            raise too_few_known(skipped, ids.size, "the text", unit_name(self._of_bytes))
        memory.require(memory.evaluation_needs(self.spec, *evaluation_shape(ids.size, batch, window),
                                               self.params.dtype), "evaluating", self._smaller_batch_or_window())
        with _parallel_work():
            nats, count = evaluate(self.spec, self.params, ids, batch, window)
        if count and not math.isfinite(nats):  # as inspect says it: never a score of nan
            # (a larger batch shortens the streams, but each first reads WARMUP characters unscored)
            raise computes_nan("score with", grows=state_grows(self.spec, self.params),
                               shorter="score short lines, each from a fresh state (eval --per-line; score_lines() "
                                       "in Python)")
        return Evaluation(nats, count, skipped)

    def encode(self, text, *, skip_unknown=False, what="text"):
        """(ids, skipped): the int32 id of each character of `text` (vocab[id] is the character),
        and how many unknown characters skip_unknown left out. Without it, a character the model
        lacks raises UnknownCharacters, which names each one and calls the text `what`."""
        _require_str(what, text)
        if _flag("skip_unknown", skip_unknown):
            return self._vocab.encode_skip_unknown(text)
        with _unknown_characters():
            return self._vocab.encode(text, what=what, as_bytes=self._of_bytes), 0

    def encode_file(self, path, *, encoding=None, skip_unknown=False):
        """(ids, skipped) of a text file, as encode() gives them for its text, read a piece at a
        time: the file's ids and the model's, a byte or two a character each, and a fixed few tens
        of MiB (the piece being read, the reader's table of code points), where the string and
        encode() take some 25 bytes a character. For evaluate() on files of any size. `encoding`:
        utf-8, latin-1 or bytes; default: the checkpoint's. Unknown characters: as in encode(),
        the file named by its path."""
        skip_unknown = _flag("skip_unknown", skip_unknown)
        model = self.config.get("encoding", "utf-8")
        encoding = model if encoding is None else encoding  # "" and 0 are no encoding
        check_read_as(model, check_encoding(encoding, self._spell), self._spell)
        try:
            ids, chars = read_ids(_require_path("encode_file()", path), encoding, model=model)
        except NotText as e:  # the reader's advice names the command line's flag and a value
            advice = re.sub(f"--encoding ({'|'.join(ENCODINGS)})", lambda m: self._spell("encoding", m[1]), e.advice)
            raise NotText(e.reason, advice) from None
        return self._translated(ids, chars, skip_unknown, str(path))

    def _translated(self, ids, chars, skip_unknown=False, what="text"):
        """(ids, skipped): `ids` of the characters `chars` (a file's own, from read_ids) as the
        model's (Vocab.translate); a character it lacks raises UnknownCharacters, the text called
        `what` (also for `eval --per-line`, which reads its file itself: cli._line_pieces)."""
        with _unknown_characters():
            return self._vocab.translate(ids, chars, skip_unknown=skip_unknown, what=what, as_bytes=self._of_bytes)

    def _check_known(self, ids, chars, what="text", uncounted=None):
        """_translated's UnknownCharacters, without translating (Vocab.check_known)."""
        with _unknown_characters():
            self._vocab.check_known(ids, chars, what=what, as_bytes=self._of_bytes, uncounted=uncounted)

    def score_lines(self, lines, *, batch=None, window=None, skip_unknown=False, what="text"):
        """Nats per character of each line on its own, for ranking many short texts: an iterator
        of floats in the order of `lines`, nan for an empty line.

        Each line is read from a fresh state that has first read a line break (as at the start
        of a line of text; a space, else the vocabulary's first character, for a model that
        knows no line break), so every character of it is predicted, the first one too, and the
        line break after it is not: the score of a line is score(c + line, batch=1), c that
        character ("\\n"). A line's own line break at its end, LF or CR LF (a file's lines keep
        theirs: score_lines(open(path))), is left out, as `eval --per-line` leaves it out; a
        line break inside a line is refused.
        `batch` lines are read side by side (default: the checkpoint's batch), which changes the
        figures only by rounding. Every line is encoded before the first score, so an unknown
        character raises UnknownCharacters at once (see encode)."""
        batch, window = self._batch_window(batch, window)
        if isinstance(lines, str):  # a str is an iterable too: of one-character lines
            raise CharrnnError("score_lines() reads a list of lines, not one str: score_lines([text]) scores the "
                               "text as one line, score_lines(text.split('\\n')) each line of it")
        # (an array of no axis has __iter__, which raises TypeError)
        if not isinstance(lines, Iterable) or isinstance(lines, np.ndarray) and lines.ndim == 0:
            raise CharrnnError(f"score_lines() reads a list of strs, one per line, not {type(lines).__name__}")
        lines = list(lines)
        if not all(isinstance(line, str) for line in lines):
            raise CharrnnError("score_lines() reads strs, one per line")
        lines = [_without_its_line_break(line, i) for i, line in enumerate(lines)]
        if _flag("skip_unknown", skip_unknown):
            encoded = [self.encode(line, skip_unknown=True, what=what)[0] for line in lines]
        else:  # one pass over all of them, so that the error names every unknown character
            ids, _ = self.encode("".join(lines), what=what)
            encoded = np.split(ids, np.cumsum([len(line) for line in lines])[:-1]) if lines else []
        shape = lines_shape([len(line) for line in encoded], batch, window)  # at least any pass's (line_losses)
        memory.require({"window buffers": Stack.nbytes(self.spec, *shape, self.params.dtype)}, "scoring",
                       self._smaller_batch_or_window())
        return self._line_scores(encoded, batch, window)

    def _line_scores(self, encoded, batch, window):
        start = start_id(self._vocab)
        per_pass = max(LINES_PER_PASS, batch)
        for i in range(0, len(encoded), per_pass):
            with _parallel_work():
                losses = line_losses(self.spec, self.params, encoded[i : i + per_pass], start, batch, window).tolist()
            if any(len(line) and not math.isfinite(loss) for loss, line in zip(losses, encoded[i : i + per_pass])):
                # nan is an empty line's score, never another's
                raise computes_nan("score with", grows=state_grows(self.spec, self.params), shorter="score shorter lines")
            yield from losses

    # -----------------------------------------------------------------------------------------
    # One character at a time

    def reset(self):
        """Back to the zero state, where training starts every stream: nothing read yet."""
        self._state_stream().reset()
        self._assigned = False

    def step(self, ch: str) -> np.ndarray:
        """Read one character; return the probabilities of the next one: an array of len(vocab)
        float64, p[i] for vocab[i] (dict(zip(m.vocab, p)) names them)."""
        if not isinstance(ch, str) or len(ch) != 1:
            raise CharrnnError(f"step() reads one character, not {short_repr(ch)}; feed() reads a text")
        return self._read(ch, "the character stepped")

    def feed(self, text: str) -> np.ndarray:
        """Read every character of `text` in turn; return the probabilities of the one after it,
        as step() does."""
        return self._read(text, "the text fed")

    def _read(self, text, what):
        """feed() and step(): `what` names the text in a message (an unknown character)."""
        ids, _ = self.encode(text, what=what)
        if ids.size == 0:
            raise CharrnnError("feed() needs at least one character")
        stream = self._state_stream()
        with stream.kept_on_stop():  # (two reads; and the text unread, should it overflow)
            stream.feed(ids[:-1])
            logits = stream.feed(ids[-1:], keep_logits=True)[0].astype(np.float64)
            if not np.isfinite(logits).all():
                raise self._fed_overflow()
        p = np.exp(logits - logits.max())  # as sampling's select() at temperature 1
        return p / p.sum()

    @property
    def state(self) -> dict:
        """A copy of the state: {"h": (layers, hidden)} every layer's output, and for the cells
        with a second state (the LSTMs) "c": the cell state. Assign it back to return there."""
        stream = self._state_stream()
        arrays = {"hs": stream.h, "cs": stream.c}
        return {STATE_NAMES[k]: arrays[k].copy() for k in CELLS[self.spec.cell].states}

    @state.setter
    def state(self, value):
        stream = self._state_stream()
        names = [STATE_NAMES[k] for k in CELLS[self.spec.cell].states]
        shape = (self.spec.layers, self.spec.hidden)
        if not isinstance(value, dict) or set(value) != set(names):
            raise CharrnnError(f"a state of this {self.spec.cell} model is a dict with the keys {', '.join(names)}")
        held = {}
        for name, a in value.items():
            try:
                a = np.asarray(a)
            except ValueError:
                raise CharrnnError(f"state[{name!r}] has rows of different lengths; this model's shape is "
                                   f"{shape}") from None
            if a.shape != shape:
                raise CharrnnError(f"state[{name!r}] has shape {np.shape(a)}; this model's is {shape}")
            # numpy would drop a complex number's imaginary part and keep NaN, and a number
            # beyond float32's range becomes inf there: each makes every probability after it
            # nan, and no model reaches such a state
            if a.dtype.kind in "iuf":
                with np.errstate(over="ignore"):
                    held[name] = a.astype(stream.h.dtype)
            if a.dtype.kind not in "iuf" or not np.isfinite(held[name]).all():
                raise CharrnnError(f"state[{name!r}] must hold finite real numbers, as m.state gives them")
        stream.reset()
        stream.h[:] = held["h"]
        if "c" in held:
            stream.c[:] = held["c"]
        self._assigned = True

    # -----------------------------------------------------------------------------------------

    def _fed_overflow(self):
        """feed()'s error for scores that are not finite: a state grown without bound over the
        text, one assigned beyond any the model reaches (since the last reset), or broken
        parameters. Where the state grows, an assigned one may have been the model's own (m.state
        gave it): both remedies are said."""
        grows = state_grows(self.spec, self.params)
        if not self._assigned or grows:
            return computes_nan("load", on=" on the text fed", grows=grows, shorter="feed less text between reset()s"
                                + (", assign only a state that m.state gave" if self._assigned else ""))
        return CharrnnError("the model's state overflowed: its next-character scores are not finite numbers; "
                            "reset(), or assign a state that m.state gave")

    def _smaller_batch_or_window(self):
        return f"use a smaller batch or window ({self._spell('batch')}, {self._spell('window')})"

    def _state_stream(self):
        if self._stream is None:
            self._stream = Sampler(self.spec, self.params, threads=SAMPLE_THREADS)
        return self._stream

    def _ids(self, ids):
        """ids given instead of text, checked: a 1-D array of whole numbers in [0, vocabulary),
        kept in their own type (encode_file's are a byte or two each)."""
        try:
            a = None if np.ma.is_masked(ids) else np.asarray(ids)  # a mask would be dropped unread
        except ValueError:  # rows of different lengths
            a = None
        if a is not None and a.shape == (0,) and a.dtype == np.float64:  # [] (numpy's type of no numbers)
            a = a.astype(np.int32)
        if (a is None or a.ndim != 1 or a.dtype.kind not in "iu"
                or (a.size and (a.min() < 0 or a.max() >= self.spec.vocab_size))):
            raise CharrnnError(f"give a str, or ids from encode(): a 1-D array of whole numbers in "
                               f"[0, {self.spec.vocab_size})")
        return np.ascontiguousarray(a)

    def _batch_window(self, batch, window):
        """The batch and window to read text with: the checkpoint's unless given."""
        batch = int(self.config.get("batch", 32)) if batch is None else _whole_number("batch", batch)
        window = int(self.config.get("k1", 100)) if window is None else _whole_number("window", window)
        for name, value in (("batch", batch), ("window", window)):
            if value not in EVAL_RANGES[name]:
                raise CharrnnError(f"{self._spell(name, value)} is out of range: it must be a whole number in "
                                   f"{EVAL_RANGES[name]}")
        return batch, window
