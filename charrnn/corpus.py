"""The text side of training: read a file, map characters to ids, split, and cut into streams.

    read_text(path, encoding)       strict decoding; every bad input is a one-line CharrnnError
    read_corpus(paths, ...)         many files and folders, in a fixed order, joined by a separator
    Vocab                           characters <-> int32 ids (id = index into vocab.chars)
    split(ids, fractions)           contiguous train / validation / test slices
    fit_batch_and_window(...)       shrink batch and window so that small corpora still train
    Streams(ids, batch)             B contiguous streams for training, read k1 steps at a time
    EvalStreams(ids, batch)         the same streams, each prediction visited exactly once

Arrays of ids are time-major, shape (T, B): row t holds step t of every stream, which is the
layout the model's buffers use.

Encodings:
    "utf-8"    strict; a leading BOM is dropped; a NUL byte means "binary file" and is refused
    "latin-1"  every byte is one character U+0000..U+00FF; never fails
    "bytes"    every byte b becomes chr(b): the model works on raw bytes. The same characters as
               "latin-1", kept as its own option because it says what the user means (any file,
               NULs included, no claim that it is text)
"""
from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import DOC_SEP
from .errors import CharrnnError

ENCODINGS = ("utf-8", "latin-1", "bytes")

# Spellings people type for the same encodings.
_ENCODING_ALIASES = {"utf8": "utf-8", "latin1": "latin-1", "iso-8859-1": "latin-1"}

_UTF8_FIX = "re-save it as UTF-8, or pass --encoding latin-1 (any byte file) or --encoding bytes"

# Below this many characters there is nothing worth learning, whatever the split.
MIN_CORPUS_CHARS = 20

# fit_batch_and_window aims for this many windows per stream, with windows of at least
# _MIN_GOOD_WINDOW steps, so that the hidden state is carried across a few updates.
_WINDOWS_PER_STREAM = 4
_MIN_GOOD_WINDOW = 8


# ---------------------------------------------------------------------------------------------
# Reading


def default_corpus() -> Path:
    """The shipped corpus: corpora/ beside the package (a checkout or an editable install),
    else corpora/ in the working directory."""
    for base in (Path(__file__).resolve().parent.parent, Path.cwd()):
        path = base / "corpora" / "tinyshakespeare.txt"
        if path.is_file():
            return path
    raise CharrnnError("no corpus given and the shipped corpora/tinyshakespeare.txt was not found; "
                       "pass a text file: charrnn train FILE")


def check_encoding(encoding: str) -> str:
    """The canonical name of an encoding (one of ENCODINGS), or a CharrnnError."""
    name = str(encoding).strip().lower()
    name = _ENCODING_ALIASES.get(name, name)
    if name not in ENCODINGS:
        raise CharrnnError(f"unknown encoding {encoding!r}; choose one of {', '.join(ENCODINGS)}")
    return name


class NotText(CharrnnError):
    """A file that holds no text in the encoding asked for: empty, binary or not valid UTF-8.
    read_corpus skips such files inside folders."""


def read_text(path, encoding: str = "utf-8") -> str:
    """The whole file as a string, decoded strictly; a CharrnnError for anything the user can fix."""
    return decode_text(_read_bytes(path), encoding, str(path))


def decode_text(data: bytes, encoding: str, name: str) -> str:
    """A file's bytes as text; a NotText error naming `name` if they are none."""
    encoding = check_encoding(encoding)
    if encoding == "utf-8":
        # Check for NUL before decoding: a binary file usually also holds invalid UTF-8, and
        # "binary file" is the more useful diagnosis than "bad byte at offset 0". In valid
        # UTF-8 a NUL byte can only be a NUL character, so this is the same test as on the text.
        nul = data.find(b"\x00")
        if nul >= 0:
            raise NotText(
                f"{name} looks like a binary file (NUL byte at offset {nul}); "
                "pass a text file, or --encoding bytes to model its raw bytes"
            )
        try:
            text = data.decode("utf-8", errors="strict")
        except UnicodeDecodeError as e:
            raise NotText(_utf8_error_message(name, data, e)) from None
        if text.startswith("\ufeff"):
            text = text[1:]
    else:
        # Both map byte b to chr(b); "bytes" is kept apart only for what it tells the reader.
        text = data.decode("latin-1")

    if not text:
        raise NotText(f"{name} is empty; give a file with some text in it")
    return text


def _read_bytes(path) -> bytes:
    name = str(path)
    p = Path(path)
    # Test for a directory first: open() reports it differently on each platform.
    if p.is_dir():
        raise CharrnnError(f"{name} is a directory; give the path of a text file")
    try:
        with open(p, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise CharrnnError(f"{name} does not exist; check the path") from None
    except IsADirectoryError:
        raise CharrnnError(f"{name} is a directory; give the path of a text file") from None
    except PermissionError:
        raise CharrnnError(f"cannot read {name}: permission denied; check its permissions") from None
    except OSError as e:
        reason = e.strerror or e.__class__.__name__
        raise CharrnnError(f"cannot read {name}: {reason}") from None


def _utf8_error_message(name: str, data: bytes, e: UnicodeDecodeError) -> str:
    bad = data[e.start : e.end]
    hex_bytes = " ".join(f"0x{b:02X}" for b in bad)
    line = data.count(b"\n", 0, e.start) + 1
    what = "byte" if len(bad) == 1 else "bytes"
    return (
        f"{name} is not valid UTF-8: {e.reason} at byte offset {e.start} (line {line}), "
        f"{what} {hex_bytes}; {_UTF8_FIX}"
    )


# ---------------------------------------------------------------------------------------------
# Many files


@dataclass
class Corpus:
    """The text of a run: its files read in order and joined by the document separator."""
    text: str
    files: list = field(default_factory=list)  # [{"path", "chars", "sha256"}]: absolute path, characters, SHA-256 of its bytes
    notes: list = field(default_factory=list)  # what was skipped, for the user

    @property
    def name(self) -> str:
        """The corpus in a message: its file's name, or how many files it has."""
        return Path(self.files[0]["path"]).name if len(self.files) == 1 else f"the text of {len(self.files)} files"

    def info(self) -> dict:
        """What a checkpoint records of it: the files, and the length and SHA-256 of the whole text."""
        return {"files": self.files, "chars": len(self.text), "sha256": text_sha256(self.text)}


def text_sha256(text: str) -> str:
    """The digest a run keeps of its whole text (surrogatepass: byte files may decode to anything)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _hidden(name: str) -> bool:
    return name.startswith(".")


def list_files(inputs) -> tuple[list[Path], list[str]]:
    """The files that `inputs` (files and folders) name, in reading order, and notes on what was
    left out.

    The order is the inputs' order; a folder stands for every file below it, at any depth, sorted
    by path (component by component, by code point: the same on every machine, whatever order
    the file system lists them in). Inside folders, hidden files and folders (a name starting
    with '.', such as .git) and what is not a regular file are left out. A file met twice is
    read once, where it first appears."""
    files, seen, hidden, special, repeated = [], set(), 0, 0, []
    for given in map(Path, inputs):
        if given.is_dir():
            found = []
            for folder, dirs, names in os.walk(given):
                hidden += sum(map(_hidden, dirs)) + sum(map(_hidden, names))
                dirs[:] = [d for d in dirs if not _hidden(d)]
                for n in names:
                    path = Path(folder) / n
                    if _hidden(n):
                        continue
                    if not path.is_file():  # a fifo would block, a broken link cannot be read
                        special += 1
                        continue
                    found.append(path)
            found.sort(key=lambda p: p.relative_to(given).parts)
        else:
            found = [given]  # a missing or unreadable file says so when it is read
        for path in found:
            key = path.resolve()
            if key in seen:
                repeated.append(str(path))
                continue
            seen.add(key)
            files.append(path)
    notes = []
    if hidden:
        notes.append(f"left out {hidden} hidden file(s) and folder(s) inside the folders (names starting with '.')")
    if special:
        notes.append(f"left out {special} entries inside the folders that are not regular files")
    if repeated:
        notes.append(f"read once each: {_some(repeated)} (named twice)")
    return files, notes


def _some(names, n=3) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def read_corpus(inputs, encoding="utf-8", doc_sep=DOC_SEP) -> Corpus:
    """The text of files and folders (list_files says which, in what order), the documents joined
    by doc_sep. A file named in `inputs` must be text; a file found inside a folder that is empty,
    binary or not valid UTF-8 is left out with a note."""
    inputs = [Path(p) for p in inputs]
    files, notes = list_files(inputs)
    named = {p.resolve() for p in inputs}
    texts, infos, not_text = [], [], []
    for path in files:
        data = _read_bytes(path)
        try:
            text = decode_text(data, encoding, str(path))
        except NotText:
            if path.resolve() in named:
                raise
            not_text.append(str(path))
            continue
        texts.append(text)
        infos.append({"path": str(path.resolve()), "chars": len(text), "sha256": hashlib.sha256(data).hexdigest()})
    if not_text:
        what = "empty or binary" if encoding != "utf-8" else "empty, binary or not UTF-8"
        notes.append(f"left out {len(not_text)} file(s) that are {what}: {_some(not_text)}")
    if not texts:
        raise CharrnnError(f"no text files in {_some([str(p) for p in inputs])}"
                           + (f" ({'; '.join(notes)})" if notes else "") + "; give files or folders that hold text")
    return Corpus(doc_sep.join(texts), infos, notes)


def check_doc_sep(sep: str, encoding: str = "utf-8") -> None:
    """A CharrnnError unless `sep` can stand between documents read in `encoding`."""
    if len(sep) > 100:
        raise CharrnnError(f"--doc-sep is {len(sep)} characters long; give at most 100")
    if "\0" in sep or any(0xD800 <= ord(c) <= 0xDFFF for c in sep):
        raise CharrnnError(f"--doc-sep {sep!r} holds a NUL or a lone surrogate, which no text file holds; choose another")
    if encoding != "utf-8" and any(ord(c) > 0xFF for c in sep):
        raise CharrnnError(f"--doc-sep {sep!r} is not made of bytes, but --encoding {encoding} reads every "
                           f"character as a byte; choose characters up to \\xff")


# ---------------------------------------------------------------------------------------------
# Vocabulary


class Vocab:
    """The characters a model knows; a character's id is its index in `chars`."""

    def __init__(self, chars: str | list[str]):
        chars = list(chars)
        for c in chars:
            if not isinstance(c, str) or len(c) != 1:
                raise ValueError(f"a vocabulary holds single characters, not {c!r}")
        # Sorted by code point, so the same set of characters always gets the same ids.
        self._set_chars(sorted(set(chars)))

    def _set_chars(self, chars: list[str]) -> None:
        self.chars = chars
        codes = np.array([ord(c) for c in chars], dtype=np.int64)
        # encode() looks characters up by code point with a binary search.
        self._order = np.argsort(codes, kind="stable").astype(np.int32)
        self._sorted_codes = codes[self._order]
        self._codes = codes.astype(np.uint32)

    @classmethod
    def from_text(cls, text: str) -> "Vocab":
        return cls(set(text))

    def extended(self, text: str) -> "Vocab":
        """This vocabulary and the characters of `text` it lacks, appended in code-point order:
        every character it had keeps its id (a fine-tuned model keeps its rows)."""
        codes, _, known = self._lookup(text)
        return Vocab.from_json(self.chars + [chr(c) for c in np.unique(codes[~known]).tolist()])

    @property
    def size(self) -> int:
        return len(self.chars)

    def __len__(self) -> int:
        return len(self.chars)

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocab) and self.chars == other.chars

    __hash__ = None

    def __repr__(self) -> str:
        return f"Vocab(size={self.size})"

    def _lookup(self, text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # Vectorised: code points of the whole text at once (1 MB of text is 1M characters).
        # surrogatepass: command-line text may hold lone surrogates, which are then just unknown.
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4").astype(np.int64)
        if self.size == 0:
            return codes, np.zeros(codes.shape, np.int32), np.zeros(codes.shape, bool)
        pos = np.searchsorted(self._sorted_codes, codes)
        pos = np.minimum(pos, self.size - 1)
        known = self._sorted_codes[pos] == codes
        return codes, self._order[pos], known

    def encode(self, text: str, what: str = "text") -> np.ndarray:
        """int32 ids of every character; a CharrnnError naming any character the model lacks."""
        codes, ids, known = self._lookup(text)
        if not known.all():
            unknown_codes = codes[~known]
            distinct, first = np.unique(unknown_codes, return_index=True)
            distinct = distinct[np.argsort(first)]  # in order of first appearance
            shown = ", ".join(repr(chr(int(c))) for c in distinct[:10])
            more = f" and {len(distinct) - 10} more" if len(distinct) > 10 else ""
            raise CharrnnError(
                f"{what} has {len(distinct)} character(s) the model does not know "
                f"({len(unknown_codes)} occurrence(s)): {shown}{more}; "
                "use only characters that occur in the training text"
            )
        return np.ascontiguousarray(ids, dtype=np.int32)

    def encode_skip_unknown(self, text: str) -> tuple[np.ndarray, int]:
        """int32 ids of the known characters, and how many unknown characters were dropped."""
        _, ids, known = self._lookup(text)
        kept = np.ascontiguousarray(ids[known], dtype=np.int32)
        return kept, int(known.size - kept.size)

    def decode(self, ids) -> str:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.size):
            raise ValueError(f"character ids must lie in [0, {self.size}), got {ids.min()}..{ids.max()}")
        return self._codes[ids].astype("<u4").tobytes().decode("utf-32-le", "surrogatepass")

    def to_json(self) -> list[str]:
        return list(self.chars)

    @classmethod
    def from_json(cls, data) -> "Vocab":
        """The vocabulary exactly as saved: the order is kept, because the ids depend on it."""
        if not isinstance(data, list) or not all(isinstance(c, str) and len(c) == 1 for c in data):
            raise CharrnnError("the saved vocabulary is not a list of single characters; the file is corrupt")
        if len(set(data)) != len(data):
            raise CharrnnError("the saved vocabulary repeats a character; the file is corrupt")
        vocab = cls.__new__(cls)
        vocab._set_chars(list(data))
        return vocab


# ---------------------------------------------------------------------------------------------
# Splitting


def _part_size(n: int, fraction: float) -> int:
    # Round half up (not to even), so that sizes grow steadily with n.
    return int(math.floor(n * fraction + 0.5))


def _split_sizes(n: int, fractions) -> tuple[int, int, int]:
    n_val = _part_size(n, fractions[1])
    n_test = _part_size(n, fractions[2])
    return n - n_val - n_test, n_val, n_test


def _split_ok(n: int, fractions) -> bool:
    if n < MIN_CORPUS_CHARS:
        return False
    sizes = _split_sizes(n, fractions)
    # Every part that was asked for needs one input and one target.
    return all(size >= 2 for size, f in zip(sizes, fractions) if f > 0)


def _min_split_chars(fractions) -> int:
    # A part of fraction f gets >= 2 characters once n*f >= 1.5; start there and step up.
    n = MIN_CORPUS_CHARS
    for f in fractions:
        if f > 0:
            n = max(n, math.ceil(1.5 / f) - 1)
    while not _split_ok(n, fractions):
        n += 1
    return n


def _check_fractions(fractions) -> tuple[float, float, float]:
    try:
        fr = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        fr = ()
    if len(fr) != 3 or not all(math.isfinite(f) for f in fr):
        raise CharrnnError(f"split fractions must be three numbers (train, val, test), got {fractions!r}")
    if any(f < 0 for f in fr) or fr[0] <= 0:
        raise CharrnnError(
            f"split fractions {fractions!r}: none may be negative and train must be above 0"
        )
    if abs(sum(fr) - 1.0) > 1e-6:
        raise CharrnnError(f"split fractions {fractions!r} sum to {sum(fr):g}; they must sum to 1")
    return fr


def split(ids, fractions=(0.9, 0.05, 0.05), *, name: str = "the corpus"):
    """Contiguous (train, val, test) views of ids, train first; val or test may be empty.

    `name` only words the error messages (e.g. the file name).
    """
    fr = _check_fractions(fractions)
    ids = np.asarray(ids)
    n = int(ids.size)
    if n and np.unique(ids).size < 2:
        raise CharrnnError(
            f"{name} has only one distinct character; the model needs at least two different "
            "characters to learn anything"
        )
    if not _split_ok(n, fr):
        need = _min_split_chars(fr)
        shown = "/".join(f"{f:g}" for f in fr)
        raise CharrnnError(
            f"{name} has {n:,} characters; a {shown} train/val/test split needs at least {need:,} "
            "(2 per part); use a longer text or lower the validation/test fractions"
        )
    n_train, n_val, _ = _split_sizes(n, fr)
    return ids[:n_train], ids[n_train : n_train + n_val], ids[n_train + n_val :]


# ---------------------------------------------------------------------------------------------
# Batch and window for small corpora


def fit_batch_and_window(n_train: int, batch: int, window: int) -> tuple[int, int, str | None]:
    """(batch, window, notice): shrink batch first, then window, until the streams fit.

    Nothing changes while every stream holds window + 1 characters. Otherwise aim for
    _WINDOWS_PER_STREAM windows per stream, windows of at least _MIN_GOOD_WINDOW steps, so that
    the hidden state carries across updates; when even that cannot be had, just fit.
    """
    if batch < 1 or window < 1:
        raise ValueError(f"batch and window must be at least 1, got {batch} and {window}")
    if n_train < 2:
        raise CharrnnError(
            f"the training text has {n_train} character(s); it needs at least 2 (one input, one target)"
        )
    if n_train >= batch * (window + 1):
        return batch, window, None

    new_batch = min(batch, n_train // ((window + 1) * _WINDOWS_PER_STREAM))
    new_window = window
    if new_batch < 1:
        # One stream only; shorten the window to give it a few windows, but not below
        # _MIN_GOOD_WINDOW unless the text itself is shorter.
        new_batch = 1
        new_window = min(window, n_train - 1, max(_MIN_GOOD_WINDOW, n_train // _WINDOWS_PER_STREAM - 1))

    changes = []
    if new_batch != batch:
        changes.append(f"batch {batch} -> {new_batch}")
    if new_window != window:
        changes.append(f"window {window} -> {new_window}")
    notice = f"corpus is small ({n_train:,} training characters): {', '.join(changes)}"
    return new_batch, new_window, notice


# ---------------------------------------------------------------------------------------------
# Streams


def _stream_matrix(ids: np.ndarray, batch: int, S: int) -> np.ndarray:
    # (S+1, B), time-major: column b is ids[b*S : b*S + S + 1]. Neighbouring streams share one
    # boundary character (the last target of one is the first input of the next). Copied once,
    # so every window is a contiguous slice of rows.
    rows = np.arange(S + 1)[:, None] + (np.arange(batch) * S)[None, :]
    m = np.ascontiguousarray(ids[rows], dtype=np.int32)
    m.setflags(write=False)
    return m


def _as_ids(ids) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"ids must be a 1-D integer array, got shape {ids.shape} dtype {ids.dtype}")
    return ids


class Streams:
    """B contiguous streams over the training ids, read k1 steps at a time."""

    def __init__(self, ids: np.ndarray, batch: int):
        ids = _as_ids(ids)
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        S = (ids.size - 1) // batch
        if S < 1:
            raise CharrnnError(
                f"{ids.size:,} training characters cannot fill {batch} streams "
                f"(each needs at least 2); use a smaller batch or a longer text"
            )
        self.batch = batch
        self.stream_length = S
        self._m = _stream_matrix(ids, batch, S)
        self.position = 0
        self.epoch = 0

    def steps_per_epoch(self, k: int) -> int:
        return self.stream_length // k

    def next(self, k: int, out_inputs: np.ndarray, out_targets: np.ndarray) -> bool:
        """Fill out_inputs[:k], out_targets[:k] with the next k steps; True if it wrapped first.

        A wrap means the text jumped back to the start: the caller resets the hidden state.
        """
        S = self.stream_length
        if not 1 <= k <= S:
            raise ValueError(f"k must lie in [1, {S}] (the stream length), got {k}")
        for out in (out_inputs, out_targets):
            if out.ndim != 2 or out.shape[0] < k or out.shape[1] != self.batch:
                raise ValueError(f"output arrays must have shape (>= {k}, {self.batch}), got {out.shape}")
        wrapped = False
        if self.position + k > S:
            # The tail shorter than k is skipped rather than read with a jump inside a window.
            self.position = 0
            self.epoch += 1
            wrapped = True
        p = self.position
        out_inputs[:k] = self._m[p : p + k]
        out_targets[:k] = self._m[p + 1 : p + k + 1]
        self.position = p + k
        return wrapped

    def state_dict(self) -> dict:
        # batch and stream_length let a resumed run notice that the corpus or batch changed.
        return {
            "position": int(self.position),
            "epoch": int(self.epoch),
            "batch": int(self.batch),
            "stream_length": int(self.stream_length),
        }

    def load_state_dict(self, d: dict) -> None:
        for key in ("batch", "stream_length"):
            if key in d and int(d[key]) != getattr(self, key):
                raise CharrnnError(
                    f"the checkpoint's streams have {key} {int(d[key])} but this run has "
                    f"{getattr(self, key)}; resume with the same text and batch size"
                )
        position, epoch = int(d["position"]), int(d["epoch"])
        if not 0 <= position <= self.stream_length or epoch < 0:
            raise CharrnnError(
                f"the checkpoint's stream position {position} (epoch {epoch}) does not fit this "
                f"text; resume with the same text and batch size"
            )
        self.position, self.epoch = position, epoch


class EvalStreams:
    """B contiguous streams for evaluation; windows(k) visits every prediction once, in order.

    With fewer than batch + 1 characters the batch shrinks (see `.batch`), so that short texts
    can still be scored. Carry the hidden state across the windows of one pass.
    """

    def __init__(self, ids: np.ndarray, batch: int):
        ids = _as_ids(ids)
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        if ids.size < 2:
            raise CharrnnError(
                f"the text to evaluate has {ids.size} character(s); it needs at least 2 "
                "(one input, one target)"
            )
        self.batch = min(batch, ids.size - 1)
        self.stream_length = (ids.size - 1) // self.batch
        self.count = self.batch * self.stream_length  # predictions per pass
        self._m = _stream_matrix(ids, self.batch, self.stream_length)

    def windows(self, k: int):
        """Yield (inputs, targets), each (k', batch) read-only int32, k' = k except maybe the last."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        S = self.stream_length
        for p in range(0, S, k):
            q = min(p + k, S)
            yield self._m[p:q], self._m[p + 1 : q + 1]
