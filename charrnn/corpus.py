"""The text side of training: read a file, map characters to ids, split, and cut into streams.

    read_text(path, encoding)       strict decoding; every bad input is a one-line CharrnnError
    read_corpus(paths, ...)         many files and folders, in a fixed order, joined by a separator,
                                    read and encoded a chunk at a time into ids
    Vocab                           characters <-> int32 ids (id = index into vocab.chars)
    ids_dtype(vocab_size)           the smallest unsigned integer type that holds a corpus's ids
    split(ids, fractions)           contiguous train / validation / test slices
    fit_batch_and_window(...)       shrink batch and window so that small corpora still train
    Streams(ids, batch)             B contiguous streams for training, read k1 steps at a time
    EvalStreams(ids, batch)         the same streams, each prediction visited exactly once

Arrays of ids are time-major, shape (T, B): row t holds step t of every stream, which is the
layout the model's buffers use.

A corpus costs about one byte a character (two with more than 256 distinct characters): its ids
are kept in the smallest unsigned type, the split and the streams are views of them, and the
text itself is never held whole. Only the few ids of one update are copied, into the model's
int32 buffers, so the kernels see one integer type whatever the corpus.

Encodings:
    "utf-8"    strict; a leading BOM is dropped; a NUL byte means "binary file" and is refused
    "latin-1"  every byte is one character U+0000..U+00FF; never fails
    "bytes"    every byte b becomes chr(b): the model works on raw bytes. The same characters as
               "latin-1", kept as its own option because it says what the user means (any file,
               NULs included, no claim that it is text)
"""
from __future__ import annotations

import codecs
import hashlib
import math
import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import DOC_SEP, LOG_STARTS
from .errors import (CharrnnError, UsageError, as_flag, counted, link_to_nothing, os_error_message, repr_shown,
                     shell_word)

ENCODINGS = ("utf-8", "latin-1", "bytes")

# Spellings people type for the same encodings.
_ENCODING_ALIASES = {"utf8": "utf-8", "latin1": "latin-1", "iso-8859-1": "latin-1"}

_UTF8_FIX = "re-save it as UTF-8, or pass --encoding latin-1 (any byte file) or --encoding bytes"
_BINARY_FIX = "pass a text file, or --encoding bytes to model its raw bytes"
# The advice that names --encoding, which only train, eval and inspect have (cli.gradflow)
ENCODING_ADVICE = (_UTF8_FIX, _BINARY_FIX)
# The same for a trained model of characters, which --encoding bytes cannot read (check_read_as)
_FOR_A_MODEL_OF_CHARACTERS = {_UTF8_FIX: "re-save it as UTF-8, or pass --encoding latin-1 (any byte file)",
                              _BINARY_FIX: "pass a text file"}

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


def model_text(text: str, encoding: str, what: str) -> str:
    """Text a person typed (--prime, --stop-at, --doc-sep, escapes read: cli._unescape) as a
    model of `encoding` reads it. A byte typed as \x80-\xff, or typed so that it is no UTF-8,
    comes as a lone surrogate U+DC80-U+DCFF, as Python holds such bytes: a bytes model reads
    the text as its UTF-8 bytes and such a byte as itself; any other model reads such a byte
    as the character of its code, as Latin-1 does (\xe9: e-acute). Any other lone surrogate is
    no text: a usage error naming `what`."""
    bad = next((c for c in text if 0xD800 <= ord(c) <= 0xDFFF and held_byte(c) is None), None)
    if bad is not None:
        raise UsageError(f"{what} holds the lone surrogate U+{ord(bad):04X}, which no text holds; choose another")
    if encoding == "bytes":
        return text.encode("utf-8", "surrogateescape").decode("latin-1")
    return _BYTE.sub(lambda m: chr(ord(m[0]) - 0xDC00), text)


_BYTE = re.compile("[\udc80-\udcff]")


def unit_name(of_bytes: bool) -> str:
    """What messages call the units of a model's text: a bytes model's characters are bytes."""
    return "byte" if of_bytes else "character"


def held_byte(c: str):
    """The byte that the lone surrogate `c` holds (U+DC80-U+DCFF, as os.fsdecode and
    surrogateescape hold a byte that is no UTF-8), else None."""
    return ord(c) - 0xDC00 if 0xDC80 <= ord(c) <= 0xDCFF else None


def check_typed_bytes(text: str, chars, what: str) -> None:
    """For a bytes model, whose characters are `chars`: a CharrnnError naming each character of
    typed `text` whose UTF-8 bytes the model never saw, as typed and as bytes (Vocab.encode
    names only the bytes: e2, 82, ac for '€')."""
    known = set(chars)
    lacking = [c for c in dict.fromkeys(text) if not known.issuperset(model_text(c, "bytes", what))]
    if lacking:
        def one(c):  # a byte typed as such (a lone surrogate, model_text) as \xHH
            typed = repr(c) if held_byte(c) is None else f"'\\x{held_byte(c):02x}'"
            return f"{typed} ({model_text(c, 'bytes', what).encode('latin-1').hex(' ')})"

        shown = ", ".join(map(one, lacking))
        raise UnknownCharacters(f"{what} has {counted(len(lacking), 'character')} whose bytes the model never saw: {shown}; "
                           "use only characters that occur in the training text")


def shown_text(text: str, encoding: str, errors="replace") -> str:
    """A model's text as a person reads it: a bytes model's bytes read as UTF-8 where they form
    it, else U+FFFD (errors="surrogateescape" keeps such bytes, for a file); any other model's
    text as it is."""
    return text.encode("latin-1").decode("utf-8", errors) if encoding == "bytes" else text


def check_read_as(model_encoding: str, encoding: str, spell=as_flag) -> None:
    """A UsageError unless a text read in `encoding` is what a model trained on text read in
    `model_encoding` reads: bytes for a bytes model, characters for any other. latin-1 reads
    each byte as the character of its code, so it serves both; utf-8 text given to a bytes model
    would read é as the byte e9, and a text model given bytes would read é as Ã and ©."""
    if model_encoding == "bytes" and encoding == "utf-8":
        raise UsageError(f"{spell('encoding', encoding)} reads characters, but this model reads bytes "
                         f"({spell('encoding', 'bytes')}): leave it out")
    if model_encoding != "bytes" and encoding == "bytes":
        raise UsageError(f"{spell('encoding', encoding)} reads bytes, but this model reads characters: leave it out, "
                         f"or give {spell('encoding', 'utf-8')} or {spell('encoding', 'latin-1')}")


def check_encoding(encoding: str, spell=None) -> str:
    """The canonical name of an encoding (one of ENCODINGS), or a CharrnnError; spell: how it
    names the argument (errors.as_keyword), if it should."""
    name = str(encoding).strip().lower()
    name = _ENCODING_ALIASES.get(name, name)
    if name not in ENCODINGS:
        what = f"{spell('encoding', encoding)} is an unknown encoding" if spell else f"unknown encoding {encoding!r}"
        raise CharrnnError(f"{what}; choose one of {', '.join(ENCODINGS)}")
    return name


class UnknownCharacters(CharrnnError):
    """The text holds characters the model never saw; the message names them."""


class TextTooLarge(CharrnnError):
    """More text than memory holds (_Encoder); _read_document names the file."""


class Unreadable(CharrnnError):
    """A file the system will not let charrnn read (no permission, an I/O error, gone since its
    folder was listed). read_corpus leaves such files out where a folder holds them, as list_files
    does a folder inside that cannot be listed; `error` is the system's."""

    def __init__(self, message: str, error: OSError):
        super().__init__(message)
        self.error = error


class NotText(CharrnnError):
    """A file that holds no text in the encoding asked for: empty, binary or not valid UTF-8.
    read_corpus skips such files inside folders. `reason` says what is wrong with the file,
    `advice` what to do; the message is both."""

    def __init__(self, reason: str, advice: str):
        super().__init__(f"{reason}; {advice}")
        self.reason, self.advice = reason, advice


def read_ids(path, encoding: str = "utf-8", max_chars: int | None = None,
             model: str | None = None) -> tuple[np.ndarray, list]:
    """(ids, chars): the file's text as ids of characters `chars` (in code-point order, as Vocab
    numbers them; some may not occur in ids), of the smallest type: a byte or two a character,
    read a piece at a time, never the whole text as a string. With max_chars, only the file's
    start: the pieces (CHUNK_BYTES each) that hold its first max_chars characters, so what lies
    beyond them is never read. Decoded strictly by the corpus reader, so a file says what is
    wrong with what it reads in the same words here as in training; a CharrnnError for anything
    the user can fix. model: the encoding of the trained model that reads the text, if any; one
    of characters is not advised to read it as bytes."""
    size = _size(Path(path))
    # room for the pieces read: up to the one that reaches max_chars (the encoder grows if need be)
    encoder = _Encoder(size if max_chars is None else min(size, max_chars + CHUNK_BYTES))
    try:
        _read_document(path, check_encoding(encoding), encoder, limit=max_chars)
    except NotText as e:
        raise for_model(e, model) from None
    ids, chars = encoder.finish()
    return (ids if max_chars is None else ids[:max_chars]), chars


def for_model(e: NotText, model: str | None) -> NotText:
    """e, for a text a trained model of `model`'s encoding reads (None: a new model): one of
    characters is not advised to read it as bytes, which it cannot (check_read_as)."""
    if model in (None, "bytes"):
        return e
    return NotText(e.reason, _FOR_A_MODEL_OF_CHARACTERS.get(e.advice, e.advice))


def read_text(path, encoding: str = "utf-8", model: str | None = None) -> str:
    """The whole file as a string (see read_ids)."""
    ids, chars = read_ids(path, encoding, model=model)
    return _decode(Vocab.from_json(chars), ids)


def _decode(vocab, ids) -> str:
    """The text of `ids`, a piece at a time (Vocab.decode widens its ids to int64)."""
    return "".join(vocab.decode(ids[i : i + CHUNK_BYTES]) for i in range(0, ids.size, CHUNK_BYTES))


def _binary(name: str, offset: int) -> NotText:
    return NotText(f"{name} looks like a binary file (NUL byte at offset {offset})", _BINARY_FIX)


class WideText(NotText):
    """A file of UTF-16 or UTF-32 text (Windows' "Unicode", PowerShell 5's `>`): called binary
    for its NUL bytes, and read as bytes it would teach a model byte pairs, not text. `command`:
    the iconv command that makes a UTF-8 copy of it."""

    def __init__(self, reason: str, command: str):
        super().__init__(reason, f"save it as UTF-8 first, e.g. {command}")
        self.command = command


# byte-order marks, the longer first: UTF-32-LE's begins with UTF-16-LE's
_WIDE_MARKS = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"), (b"\xff\xfe", "UTF-16"),
               (b"\xfe\xff", "UTF-16"))


def _wide_text(name, head: bytes) -> WideText | None:
    """The error for a file whose first bytes `head` are UTF-16 or UTF-32 text: after a
    byte-order mark, or without one (_unmarked_wide). Marked UTF-16 text nearly always holds a
    NUL byte in its first 4 KiB (an ASCII character's high byte); where it holds none, as
    Chinese alone does, the first 4 KiB read as text in it. A file that begins with the bytes of
    a mark and does neither is other text: Latin-1 that begins with 'ÿþ', which an iconv from
    UTF-16 made nonsense of, is not UTF-8, and that error says how to read it."""
    marked = next(((mark, encoding) for mark, encoding in _WIDE_MARKS if head.startswith(mark)), None)
    if marked is None:
        wide = _unmarked_wide(head)
    else:
        mark, wide = marked
        order = "LE" if mark[0] == 0xFF else "BE"
        if b"\x00" not in head[:4096] and _read_as(head[len(mark):4096], wide + order, "\n\r\t") is None:
            return None
    if wide is None:
        return None
    name = Path(name)
    converted = name.with_name(f"{name.stem}-utf8{name.suffix or '.txt'}")
    return WideText(f"{name} is {wide} text, not UTF-8",
                    f"iconv -f {wide} -t UTF-8 {shell_word(name)} > {shell_word(converted)}")


def _unmarked_wide(head: bytes) -> str | None:
    """The encoding of UTF-32 or UTF-16 text without a byte-order mark, if `head` (a file's first
    bytes) is such: it holds a NUL, which no UTF-8 text does (ASCII's in UTF-16 and every
    character's in UTF-32), and its first 4 KiB read in that encoding are 8 or more printable
    characters, line breaks and tabs (Russian or Chinese in UTF-16 too, which an earlier test of
    every other byte being NUL missed), where a binary file's bytes would read as controls or
    as no characters at all. UTF-8 text with NULs among it is no wide text, unless the NULs fill a
    column of 2- or 4-byte units, as the high bytes of ASCII's code units in UTF-16 or UTF-32 do
    (`abc\\0def\\n` over and over reads in UTF-16 as Chinese and Gurmukhi, all printable)."""
    head = head[:4096]
    if b"\x00" not in head:
        return None
    if _read_as(head, "UTF-8", "\n\r\t\x00") is not None and not any(
            head[k::m].count(0) >= 0.9 * len(head[k::m]) for m in (2, 4) for k in range(m)):
        return None
    for encoding in ("UTF-32LE", "UTF-32BE", "UTF-16LE", "UTF-16BE"):  # (UTF-16 reads UTF-32's NULs as U+0000)
        text = _read_as(head, encoding, "\n\r\t")
        if text is not None and len(text) >= 8:
            return encoding
    return None


def _read_as(head: bytes, encoding: str, also: str) -> str | None:
    """`head` read in `encoding`, if it is printable characters and those of `also` (a character
    cut at its end: not yet read); else None."""
    try:
        text = codecs.getincrementaldecoder(encoding)("strict").decode(head)
    except UnicodeDecodeError:
        return None
    return text if all(c.isprintable() or c in also for c in text) else None


def _empty(name: str) -> NotText:
    return NotText(f"{name} is empty", "give a file with some text in it")


def _open(path):
    """The file, opened to read its bytes; a CharrnnError for what the user can fix."""
    p = Path(path)
    try:
        # Test for a directory first: open() reports it differently on each platform.
        if p.is_dir():
            raise CharrnnError(f"{path} is a directory; give the path of a text file")
        return open(p, "rb")
    except OSError as e:  # (is_dir's too: a name too long)
        raise _cannot_read(path, e) from None


def _read(f, path, size) -> bytes:
    try:
        return f.read(size)
    except OSError as e:
        raise _cannot_read(path, e) from None


def _cannot_read(path, e: OSError) -> Unreadable:
    if isinstance(e, FileNotFoundError):
        if os.path.islink(path):  # (a name that `ls` shows; its target may be a link too)
            return Unreadable(link_to_nothing(path), e)
        if str(path) == "-":  # read as a file's name, as every path here is
            return Unreadable("- does not exist: a file named -; for standard input give /dev/stdin", e)
        return Unreadable(f"{path} does not exist; check the path", e)
    if isinstance(e, IsADirectoryError):
        return Unreadable(f"{path} is a directory; give the path of a text file", e)
    if isinstance(e, PermissionError):
        return Unreadable(f"cannot read {path}: permission denied; check its permissions", e)
    e.filename = e.filename2 = None  # named as given
    return Unreadable(f"cannot read {os_error_message(e, path)}", e)


def _not_utf8(name: str, e: UnicodeDecodeError, offset: int, newlines: int) -> NotText:
    """The error for bytes that are not UTF-8: e from decoding a piece of the file that starts at
    byte `offset`, with `newlines` line breaks before the bad bytes."""
    bad = e.object[e.start : e.end]
    hex_bytes = " ".join(f"0x{b:02X}" for b in bad)
    what = "byte" if len(bad) == 1 else "bytes"
    return NotText(f"{name} is not valid UTF-8: {e.reason} at byte offset {offset + e.start} (line {newlines + 1}), "
                   f"{what} {hex_bytes}", _UTF8_FIX)


# ---------------------------------------------------------------------------------------------
# Many files


# Bytes of a file read, decoded and encoded at a time, and ids renumbered at a time: the text is
# never held whole, and a piece costs a few times its size while it is encoded (as bytes, as a
# str, as code points, as ids).
CHUNK_BYTES = 1 << 22
NUL_SEARCH_BYTES = 1 << 26  # how far past a byte that is not UTF-8 a NUL makes a file binary


def ids_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned integer type that holds the ids 0 .. vocab_size-1."""
    for dtype in (np.uint8, np.uint16):
        if vocab_size <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    return np.dtype(np.uint32)


@dataclass
class Corpus:
    """The text of a run: its files read in order and joined by the document separator, held as
    one id per character."""
    ids: np.ndarray  # (N,) of type ids_dtype(len(chars)): ids[i] is the index of character i in chars
    chars: list  # the text's distinct characters in code-point order, as Vocab numbers them
    sha256: str  # of the whole text, as text_sha256 computes it
    files: list = field(default_factory=list)  # [{"path", "chars", "sha256"}]: absolute path, characters, SHA-256 of its bytes
    notes: list = field(default_factory=list)  # what was skipped, for the user

    @property
    def name(self) -> str:
        """The corpus in a message: its file's path (in full: one x.txt of several folders is told
        apart), or how many files it has."""
        return self.files[0]["path"] if len(self.files) == 1 else f"the text of {len(self.files)} files"

    @property
    def vocab(self) -> "Vocab":
        """The text's own vocabulary, whose ids `ids` holds."""
        return Vocab.from_json(self.chars)

    @property
    def text(self) -> str:
        """The whole text as one string: several bytes a character, for small texts."""
        return _decode(self.vocab, self.ids)

    def info(self) -> dict:
        """What a checkpoint records of it: the files, and the length and SHA-256 of the whole text."""
        return {"files": self.files, "chars": int(self.ids.size), "sha256": self.sha256}

    def ids_for(self, vocab: "Vocab", what: str = "the training text", as_bytes: bool = False) -> np.ndarray:
        """The text as ids of `vocab`, which may hold more characters in another order (a trained
        model's), of type ids_dtype(vocab.size); a CharrnnError if it lacks some (as_bytes: a
        bytes model's text, named as bytes, Vocab.translate)."""
        return vocab.translate(self.ids, self.chars, what=what, as_bytes=as_bytes)[0]


def _renumber(out: np.ndarray, ids: np.ndarray, table: np.ndarray) -> None:
    """out[i] = table[ids[i]], a piece at a time (indexing a whole corpus at once would hold its
    ids as int64 for a moment); out may be ids."""
    for i in range(0, ids.size, CHUNK_BYTES):
        out[i : i + CHUNK_BYTES] = table[ids[i : i + CHUNK_BYTES]]


def _first_and_count(ids: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """For each id 0..n-1: where it first occurs in ids (ids.size if never), and how often."""
    first, count = np.full(n, ids.size, np.int64), np.zeros(n, np.int64)
    for i in range(0, ids.size, CHUNK_BYTES):
        piece = ids[i : i + CHUNK_BYTES]
        seen, at = np.unique(piece, return_index=True)
        first[seen] = np.minimum(first[seen], at + i)
        count += np.bincount(piece, minlength=n)
    return first, count


def text_sha256(text: str) -> str:
    """The digest a run keeps of its whole text (surrogatepass: byte files may decode to anything).
    read_corpus computes the same digest a piece at a time."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class _Encoder:
    """The ids of a text given a piece at a time. Ids are handed out as characters first appear,
    and the ids' type widens when the characters outgrow it; finish() renumbers them in
    code-point order, as Vocab numbers them."""

    def __init__(self, capacity: int):
        self.slot = np.full(0x110000, -1, np.int32)  # code point -> its id, -1 while unseen (4 MiB)
        self.codes = []  # the code point of each id
        self.n = 0  # ids written
        self.ids = np.empty(0, np.uint8)  # (until the room below is known)
        # Room for `capacity` ids; pages never written take no memory, so a generous guess is free.
        # But not more than the memory available: the system may refuse it (a disk image in a
        # folder, left out as binary after its first piece, was refused before a byte was read),
        # so there the room is what _room allows, and a text that large grows into more only as
        # _reserve finds memory for it.
        room = self._room()  # (half the memory available, nothing written yet)
        if room is not None and capacity > 2 * room:
            capacity = max(room, CHUNK_BYTES)
        try:
            self.ids = np.empty(max(capacity, 1), np.uint8)
        except MemoryError:  # a limit on the address space that memory.available_bytes cannot see
            self.ids = np.empty(CHUNK_BYTES, np.uint8)

    def mark(self):
        return self.n, len(self.codes)

    def undo(self, mark) -> None:
        """Forget what was added since mark() (a file that turned out to hold no text)."""
        self.n, seen = mark
        self.slot[self.codes[seen:]] = -1
        del self.codes[seen:]

    def add(self, codes: np.ndarray) -> None:
        """Append the characters with these code points (a 1-D unsigned array)."""
        ids = self.slot[codes]
        if ids.size and ids.min() < 0:
            flags = np.zeros(self.slot.size, bool)  # (a sort of the unseen would cost more)
            flags[codes[ids < 0]] = True
            new = np.flatnonzero(flags)
            self.slot[new] = np.arange(len(self.codes), len(self.codes) + new.size)
            self.codes.extend(new.tolist())
            ids = self.slot[codes]
        self._reserve(self.n + codes.size, ids_dtype(len(self.codes)))
        self.ids[self.n : self.n + codes.size] = ids
        self.n += codes.size

    def _reserve(self, size: int, dtype: np.dtype) -> None:
        if dtype != self.ids.dtype:  # more characters than the type holds: copy the ids so far
            # (for that while, both: 3 bytes a character as a byte's ids become two bytes' ones)
            if not self._room_for(self.n * (self.ids.itemsize + dtype.itemsize)):
                raise TextTooLarge(f"{self.n:,} characters read")
            wider = np.empty(max(size, self.ids.size), dtype)
            wider[: self.n] = self.ids[: self.n]
            self.ids = wider
        elif size > self.ids.size:  # more text than the files' sizes promised (one grew, or a pipe)
            # twice the room, else a quarter more, if memory allows; a TextTooLarge if not even that
            grown = next((n for n in (max(size, 2 * self.ids.size), max(size, self.ids.size * 5 // 4))
                          if self._room_for(n * self.ids.itemsize)), None)
            if grown is None:
                raise TextTooLarge(f"{self.n:,} characters read")
            self.ids.resize(grown, refcheck=False)

    def _room_for(self, nbytes: int) -> bool:
        room = self._room()
        return room is None or nbytes <= room

    def _room(self) -> int | None:
        """The most bytes the ids may take: half the memory they and what is still available
        make (None if unknown). A pipe or a device that never ends (/dev/zero, `yes`) would take
        it all, and the system's out-of-memory killer would end this process, or another, without
        a word. (Training such a text would need more again.)"""
        from .memory import available_bytes

        have = available_bytes()
        return None if have is None else (have + self.n * self.ids.itemsize) // 2

    def finish(self) -> tuple[np.ndarray, list]:
        """(ids, chars): chars in code-point order, ids of type ids_dtype(len(chars)) into them."""
        dtype = ids_dtype(len(self.codes))
        if self.ids.dtype != dtype:  # undo() left fewer characters than the type was widened for
            ids = self.ids[: self.n].astype(dtype)
        else:
            ids = self.ids
            ids.resize(self.n, refcheck=False)  # gives back the room that was not used
        self.ids = None
        order = np.argsort(self.codes, kind="stable")  # the ids in code-point order
        rank = np.empty(order.size, np.int64)
        rank[order] = np.arange(order.size)
        if (rank != np.arange(order.size)).any():
            _renumber(ids, ids, rank.astype(dtype))
        return ids, [chr(self.codes[i]) for i in order]


def _read_document(path, encoding: str, encoder: _Encoder, text_hash=None, limit=None,
                   nul_is_binary=False) -> tuple[int, str | None]:
    """Append the text of one file to `encoder`, and to the whole text's `text_hash` if given,
    CHUNK_BYTES at a time. Returns its characters and, with text_hash, the SHA-256 of its bytes
    (without it, nothing is hashed: read_ids keeps no digest); a CharrnnError if it cannot be
    read, a NotText if it holds no text. Errors give the byte offset and line in the whole file.
    With a limit, it stops after the piece that reaches `limit` characters. A NUL byte makes a
    file binary in UTF-8, and with nul_is_binary in the encodings that read any byte too."""
    chars = 0
    file_hash = hashlib.sha256() if text_hash is not None else None
    offset, pending, newlines = 0, b"", 0  # the file offset of `pending`, bytes not yet decoded
    with _open(path) as f:
        while True:
            block = _read(f, path, CHUNK_BYTES)
            # (in the encodings that read any byte, only what a NUL byte makes binary)
            if offset == 0 and not pending and (encoding == "utf-8" or nul_is_binary and b"\x00" in block):
                wide = _wide_text(path, block)
                if wide is not None:
                    raise wide
            if file_hash is not None:
                file_hash.update(block)
            if encoding != "utf-8":  # byte b is character chr(b)
                nul = block.find(b"\x00") if nul_is_binary else -1
                if nul >= 0:
                    raise _binary(path, offset + nul)
                offset += len(block)
                codes = np.frombuffer(block, np.uint8)
                if text_hash is not None:
                    text_hash.update(block.decode("latin-1").encode("utf-8"))
            else:
                nul = block.find(b"\x00")
                if nul >= 0:
                    if limit is None or chars + _chars_before(pending + block[:nul]) < limit:
                        raise _binary(path, offset + len(pending) + nul)
                    block = block[:nul]  # the limit comes before it
                data = pending + block if pending else block
                try:
                    # A character cut by the end of the block is left in `pending` for the next.
                    text, used = codecs.utf_8_decode(data, "strict", not block)
                except UnicodeDecodeError as e:
                    if limit is None or chars + _chars_before(data) < limit:
                        # a NUL anywhere means "binary", a more useful diagnosis than the bad byte
                        nul = _find_nul(f, path)
                        if nul >= 0:
                            raise _binary(path, offset + len(data) + nul) from None
                        raise _not_utf8(path, e, offset, newlines + data.count(b"\n", 0, e.start)) from None
                    text, used = codecs.utf_8_decode(data[: e.start], "strict", False)  # the limit comes before it
                bom = 3 if offset == 0 and text.startswith("\ufeff") else 0
                if text_hash is not None:
                    text_hash.update(memoryview(data)[bom:used])  # valid UTF-8: the text's own encoding
                if text.isascii():
                    codes = np.frombuffer(data, np.uint8, count=used)
                else:
                    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), "<u4")[bom // 3 :]
                newlines += data.count(b"\n", 0, used)
                pending, offset = data[used:], offset + used
            try:
                encoder.add(codes)
            except (TextTooLarge, MemoryError):  # MemoryError: a limit on the address space (ulimit -v)
                raise _too_large(path, chars) from None
            chars += codes.size
            if not block or (limit is not None and chars >= limit):
                break
    if not chars:
        raise _empty(path)
    return chars, file_hash.hexdigest() if file_hash is not None else None


def _chars_before(data: bytes) -> int:
    """The characters that the bytes of `data` before its first that is not UTF-8 hold."""
    try:
        return len(codecs.utf_8_decode(data, "strict", False)[0])
    except UnicodeDecodeError as e:
        return len(codecs.utf_8_decode(data[: e.start], "strict", False)[0])


def _too_large(path, chars: int) -> CharrnnError:
    endless = "" if Path(path).is_file() else " (a pipe or a device that may never end)"
    return CharrnnError(f"{path}{endless} holds more text than this machine's memory can take: {chars:,} characters "
                        "read so far; give a smaller text file")


def _find_nul(f, path) -> int:
    """The offset of the first NUL byte within the next NUL_SEARCH_BYTES of file f, from where it
    is now; -1 if none. Not to its end: an endless pipe of text that is not UTF-8 (Latin-1 through
    `yes`) would keep the search from ever ending, where a binary file has NUL bytes early and often."""
    skipped = 0
    while skipped < NUL_SEARCH_BYTES and (block := _read(f, path, min(CHUNK_BYTES, NUL_SEARCH_BYTES - skipped))):
        at = block.find(b"\x00")
        if at >= 0:
            return skipped + at
        skipped += len(block)
    return -1


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _walked(top: Path, onerror):
    """os.walk(top), with a folder nested too deep for it (Python 3.11's walk recurses, a level a
    call: about a thousand) a CharrnnError instead of an internal error."""
    try:
        yield from os.walk(top, onerror=onerror)
    except RecursionError:
        raise CharrnnError(f"{top} holds folders nested too deep to walk (about a thousand levels); name a "
                           "folder further down, or the files") from None


def list_files(inputs, once=True) -> tuple[list[Path], list[str]]:
    """The files that `inputs` (files and folders) name, in reading order, and notes on what was
    left out.

    The order is the inputs' order; a folder stands for every file below it, at any depth, sorted
    by path (component by component, by code point: the same on every machine, whatever order
    the file system lists them in). Inside folders, hidden files and folders (a name starting
    with '.', such as .git), the logs of charrnn's runs (`train .` beside checkpoints/) and what
    is not a regular file are left out. A file met twice (by any name: a link, a hard link) is
    read once, where it first appears. A link to a file is read as the file; a link to a folder
    is not followed (as find and grep -r do not: it may lead up the tree, or round in a loop),
    and is counted in the notes; name its folder to read it. A folder inside that cannot be
    listed (no permission: lost+found at the top of a disk) is left out with a note naming it;
    a folder given that cannot be listed is an error, as a file given that cannot be read is.
    once=False: every file given is read where it is given, as a resume reads the files a run
    read (one that read a hard link twice, before files were told apart by device and inode)."""
    files, seen, repeated, empty, unlisted = [], set(), [], [], []
    # the entries left out, each once where the folders given overlap: (folder, name); logs by file
    hidden, special, linked, logs = set(), set(), set(), {}
    walked = set()  # the folders read, links followed: one given twice is read once
    for given in map(Path, inputs):
        if given.is_dir():
            if _identity(given) in walked:
                repeated.append(str(given))
                continue
            walked.add(_identity(given))
            found = []

            def unreadable(e: OSError, top=str(given)):
                if e.filename == top:
                    raise CharrnnError(f"cannot read {os_error_message(e)}")
                unlisted.append(e)

            for folder, dirs, names in _walked(given, unreadable):
                here = _identity(Path(folder))
                hidden.update((here, n) for n in dirs + names if _hidden(n))
                dirs[:] = [d for d in dirs if not _hidden(d)]
                linked.update((here, d) for d in dirs if os.path.islink(os.path.join(folder, d)))  # os.walk leaves them
                for n in names:
                    path = Path(folder) / n
                    if _hidden(n):
                        continue
                    if not path.is_file():  # a fifo would block, a broken link cannot be read
                        special.add((here, n))
                        continue
                    if _is_charrnn_log(path):  # `train .` beside checkpoints/: no text to learn
                        logs.setdefault(_identity(path), str(path))
                        continue
                    found.append(path)
            found.sort(key=lambda p: p.relative_to(given).parts)
            if not found:
                empty.append(str(given))
        else:
            found = [given]  # a missing or unreadable file says so when it is read
        for path in found:
            key = _identity(path)
            if once and key in seen:
                repeated.append(str(path))
                continue
            seen.add(key)
            files.append(path)
    notes = []
    if hidden:
        notes.append(f"left out {counted(len(hidden), 'hidden file or folder', 'hidden files and folders')} inside the folders (names starting with '.')")
    if special:
        notes.append(f"left out {counted(len(special), 'entry', 'entries')} inside the folders that "
                     f"{'is not a regular file' if len(special) == 1 else 'are not regular files'}")
    if empty:
        notes.append(f"no files to read in {some_of(empty)}")
    if unlisted:
        notes.append(_cannot_be_read("folder", sorted(str(e.filename) for e in unlisted), unlisted[0]))
    if logs:
        notes.append(f"left out {counted(len(logs), 'log')} of charrnn runs inside the folders: "
                     f"{some_of(sorted(logs.values()))}")
    if linked:
        notes.append(f"left out {counted(len(linked), 'link to a folder', 'links to folders')} inside the folders "
                     "(name a folder to read it)")
    if repeated:
        notes.append(f"read once each: {some_of(repeated)} (met twice)")
    return files, notes


def _is_charrnn_log(path: Path) -> bool:
    """Whether a file is a log a charrnn run wrote (metrics.jsonl, samples.txt): named so, and
    begun as its records begin."""
    start = LOG_STARTS.get(path.name)
    if start is None:
        return False
    try:
        with open(path, "rb") as f:
            return f.read(len(start.encode())) == start.encode()
    except OSError:  # reading it will say what is wrong
        return False


def _real(path: Path) -> Path:
    """The path with its links followed; a link that loops stays as it is, for reading it to
    say so (Path.resolve raises RuntimeError there)."""
    return Path(os.path.realpath(path))


def _identity(path: Path):
    """What a file or folder is, whatever the name it is reached by (a link, a hard link, a bind
    mount): its device and inode; where it cannot be looked at, its path with links followed
    (a link that loops stays as it is, for reading it to say so)."""
    try:
        found = os.stat(path)
    except OSError:
        return _real(path)
    return (found.st_dev, found.st_ino) if found.st_ino else _real(path)  # (0: a file system without inodes)


def some_of(names, n=3) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n:,} more" if len(names) > n else "")


def read_corpus(inputs, encoding="utf-8", doc_sep=DOC_SEP, model: str | None = None, once=True) -> Corpus:
    """The text of files and folders (list_files says which, in what order), the documents joined
    by doc_sep, as ids. A file named in `inputs` must be text; a file found inside a folder that
    is empty, binary (a NUL byte, in any encoding), not valid UTF-8 or that cannot be read is left
    out with a note.
    model: the encoding of the trained model the text is for, if any (for_model). once: list_files'.

    The files are read and encoded CHUNK_BYTES at a time, so the peak memory is the ids (one or
    two bytes a character) and a few pieces; the SHA-256 of the whole text is computed alongside."""
    encoding = check_encoding(encoding)
    inputs = [Path(p) for p in inputs]
    files, notes = list_files(inputs, once)
    named = {_identity(p) for p in inputs}
    # As many ids as the files have bytes is an upper bound: a character takes at least one byte.
    encoder = _Encoder(sum(_size(p) for p in files) + len(doc_sep) * max(len(files) - 1, 0))
    text_hash = hashlib.sha256()
    sep_codes = np.array([ord(c) for c in doc_sep], np.uint32)
    infos, not_text, wide, unreadable, not_utf8 = [], [], [], [], []
    spans = []  # where each document's ids begin and end
    for path in files:
        mark, hashed = encoder.mark(), text_hash.copy()
        if infos:
            try:
                encoder.add(sep_codes)
            except (TextTooLarge, MemoryError):  # the text so far, before this file
                raise CharrnnError(f"the text before {path} already fills this machine's memory; give less "
                                   "text") from None
            text_hash.update(doc_sep.encode("utf-8", "surrogatepass"))
        given = _identity(path) in named  # not found inside a folder
        begin = encoder.mark()[0]
        try:
            # inside a folder, a file with a NUL byte is no text (an image, a .pyc) in any encoding
            chars, sha = _read_document(path, encoding, encoder, text_hash, nul_is_binary=not given)
        except (NotText, Unreadable) as e:
            if given:
                raise (for_model(e, model) if isinstance(e, NotText) else e) from None
            encoder.undo(mark)
            text_hash = hashed
            if isinstance(e, Unreadable):
                unreadable.append((str(path), e.error))
            elif isinstance(e, WideText):
                wide.append((str(path), e.command))
            else:
                not_text.append(str(path))
                if e.advice == _UTF8_FIX:  # (text in another encoding, perhaps: Latin-1, Windows-1252)
                    not_utf8.append(str(path))
            continue
        infos.append({"path": str(_real(path)), "chars": chars, "sha256": sha})
        spans.append((begin, encoder.mark()[0]))
    if not_text:
        what = "empty or binary (name a file to read its bytes)" if encoding != "utf-8" else \
            "empty, binary or not UTF-8"
        notes.append(f"left out {counted(len(not_text), 'file')} that {'is' if len(not_text) == 1 else 'are'} {what}: {some_of(not_text)}")
    if wide:
        them = "it" if len(wide) == 1 else "them"
        notes.append(f"left out {counted(len(wide), 'file')} of UTF-16 or UTF-32 text: {some_of([p for p, _ in wide])}; "
                     f"save {them} as UTF-8 to read {them}, e.g. {wide[0][1]}")
    if unreadable:
        notes.append(_cannot_be_read("file", [p for p, _ in unreadable], unreadable[0][1]))
    if not infos:
        advice = "give files or folders that hold text"
        if not_utf8:  # every file of text in another encoding, say: how to read it
            fix = for_model(NotText("", _UTF8_FIX), model).advice
            one = len(not_utf8) == 1
            who = ("it is" if one else "they are") if not_utf8 == not_text else \
                f"{some_of(not_utf8)} {'is' if one else 'are'}"
            advice = f"{who} not UTF-8: {fix if one else 're-save them' + fix.removeprefix('re-save it')}"
        raise CharrnnError(f"no text files in {some_of([str(p) for p in inputs])}"
                           + (f" ({'; '.join(notes)})" if notes else "") + f"; {advice}")
    ids, chars = encoder.finish()
    inside = _separators_inside(ids, chars, doc_sep, spans)
    if inside:  # a sample stopped at the separator (--stop-at) may stop inside a document
        shown = repr_shown(shown_text(doc_sep, encoding, "surrogateescape"))  # a byte that is no UTF-8 as \xff
        notes.append(f"the files hold --doc-sep {shown} themselves, at {counted(inside, 'place')}, so it does not "
                     f"only end a document: sample --stop-at {shown} may stop inside one; give --doc-sep a text none "
                     "of them holds")
    return Corpus(ids, chars, text_hash.hexdigest(), infos, notes)


def _separators_inside(ids, chars: list, doc_sep: str, spans: list) -> int:
    """At how many places doc_sep begins inside one of the documents (spans: where each begins and
    ends in ids, which hold them joined by it, as ids into chars), before its last characters that
    are all of doc_sep's (a sample stopped there loses only those: "more\n\n" + "\n\n"); 0 for a
    single document."""
    if len(spans) < 2 or not doc_sep:
        return 0
    sep = [chars.index(c) for c in doc_sep]  # (every one is in the text: it was put there)
    starts = np.array([b for b, _ in spans])
    ends = np.array([_ending_of(ids, b, e, sep) for b, e in spans])  # (the separator's characters left out)
    found, last = 0, ids.size - len(sep) + 1
    for a in range(0, last, CHUNK_BYTES):  # a piece at a time: no array of the text's size beside it
        at = a + np.flatnonzero(ids[a : min(a + CHUNK_BYTES, last)] == sep[0])
        for k, i in enumerate(sep[1:], 1):
            at = at[ids[at + k] == i]
        document = np.searchsorted(starts, at, side="right") - 1  # the one each begins in, or its separator
        found += int(np.count_nonzero(at + len(sep) <= ends[document]))
    return found


def _ending_of(ids, begin: int, end: int, sep: list) -> int:
    """Where the ids of a document (ids[begin:end]) end, but for a last run of sep's ids."""
    step = 64
    while end > begin:  # looked at from the end, a piece twice as long each time
        lo = max(begin, end - step)
        other = np.flatnonzero(~np.isin(ids[lo:end], sep))
        if other.size:
            return lo + int(other[-1]) + 1
        end, step = lo, 2 * step
    return begin


def _cannot_be_read(noun: str, paths: list, first: OSError) -> str:
    """The note on folders or files inside the folders given that are left out as unreadable:
    their paths, and the system's reason for the first (without its path)."""
    why = os_error_message(OSError(first.errno, first.strerror))
    return f"left out {counted(len(paths), noun)} that cannot be read: {some_of(paths)} ({why})"


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0  # reading it will say what is wrong


def check_doc_sep(sep: str, encoding: str = "utf-8") -> None:
    """A UsageError (a CharrnnError) unless `sep` can stand between documents read in `encoding`."""
    if len(sep) > 100:  # (a bytes model's separator is counted in its UTF-8 bytes, as it reads them)
        raise UsageError(f"--doc-sep is {counted(len(sep), unit_name(encoding == 'bytes'))} long; give at most 100")
    if encoding == "bytes" and "\0" in sep:  # (a binary file holds NULs, but a run's saved settings cannot)
        raise UsageError(f"--doc-sep {sep!r} holds a NUL, which a checkpoint cannot keep in its settings; choose "
                         "another")
    if "\0" in sep or any(0xD800 <= ord(c) <= 0xDFFF for c in sep):
        raise UsageError(f"--doc-sep {sep!r} holds a NUL or a lone surrogate, which no text file holds; choose another")
    if encoding != "utf-8" and any(ord(c) > 0xFF for c in sep):
        raise UsageError(f"--doc-sep {sep!r} is not made of bytes, but --encoding {encoding} reads every "
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

    def encode(self, text: str, what: str = "text", as_bytes: bool = False) -> np.ndarray:
        """int32 ids of every character; a CharrnnError naming any character the model lacks (as
        a byte's value where `as_bytes`: a bytes model's text, one character per byte)."""
        codes, ids, known = self._lookup(text)
        if not known.all():
            unknown_codes = codes[~known]
            distinct, first = np.unique(unknown_codes, return_index=True)
            distinct = distinct[np.argsort(first)]  # in order of first appearance
            chars = [chr(int(c)) for c in distinct]
            raise _unknown(chars, len(unknown_codes), what, as_bytes,
                           utf8_known=as_bytes and self._knows_utf8(chars, codes))
        return np.ascontiguousarray(ids, dtype=np.int32)

    def _knows_utf8(self, unknown: list, codes: np.ndarray) -> bool:
        """Whether a bytes model reads a text typed as characters (codes: their code points) once
        it is given as its UTF-8 bytes: some of its `unknown` characters lie above U+007F, and the
        model knows the UTF-8 bytes of every character of the text above U+007F, the known ones
        too ('é' typed for its c3 a9, '天' for e5 a4 a9). A lone surrogate has no UTF-8."""
        if all(ord(c) < 0x80 for c in unknown):
            return False
        high = "".join(map(chr, np.unique(codes[codes >= 0x80]).tolist()))
        try:
            return set(high.encode("utf-8").decode("latin-1")) <= set(self.chars)
        except UnicodeEncodeError:
            return False

    def numbers_as(self, chars: list) -> bool:
        """Whether this vocabulary numbers its characters as `chars` (another vocabulary's, in
        its order) does: ids of those need no renumbering."""
        return list(chars) == self.chars

    def translate(self, ids: np.ndarray, chars: list, *, skip_unknown: bool = False,
                  what: str = "text", as_bytes: bool = False) -> tuple[np.ndarray, int]:
        """(ids, skipped): `ids` of the characters `chars` (another vocabulary's, such as a file's
        own from read_ids) as ids of this one, of type ids_dtype(self.size), a piece at a time.
        A character this vocabulary lacks raises the CharrnnError encode() raises for it (each
        one named, in order of first appearance; as its byte's value where `as_bytes`: a bytes
        model's text, a character a byte), unless skip_unknown leaves it out and counts it."""
        if self.numbers_as(chars):
            return ids, 0
        _, table, known = self._lookup("".join(chars))  # (len(chars),): their id -> our id
        dtype = ids_dtype(self.size)
        table = table.astype(dtype)
        if not skip_unknown and not known.all():  # an error, if a character it lacks occurs
            self.check_known(ids, chars, what=what, as_bytes=as_bytes)
        if known.all() or not skip_unknown:
            out = np.empty(ids.size, dtype)
            _renumber(out, ids, table)
            return out, 0
        pieces = []
        for i in range(0, ids.size, CHUNK_BYTES):
            piece = ids[i : i + CHUNK_BYTES]
            pieces.append(table[piece[known[piece]]])
        out = np.concatenate(pieces) if pieces else np.empty(0, dtype)
        return out, int(ids.size - out.size)

    def check_known(self, ids: np.ndarray, chars: list, *, what: str = "text", as_bytes: bool = False,
                    uncounted=None) -> None:
        """The CharrnnError translate raises where a character of `chars` this vocabulary lacks
        occurs in `ids`, but for `uncounted`, {id: occurrences} that are not read (eval
        --per-line's line breaks); ids are counted a piece at a time, nothing of their size made."""
        if self.numbers_as(chars):
            return
        _, _, known = self._lookup("".join(chars))
        if known.all():
            return
        first, count = _first_and_count(ids, len(chars))
        for i, n in (uncounted or {}).items():
            count[i] -= n
        lacking = np.flatnonzero(~known & (count > 0))
        if lacking.size:
            lacking = lacking[np.argsort(first[lacking], kind="stable")]
            raise _unknown([chars[i] for i in lacking], int(count[lacking].sum()), what, as_bytes)

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


def combining_mark(c: str) -> bool:
    """Whether `c` is a mark that goes on the character before it (an accent of NFD text, a
    Devanagari vowel sign): Unicode's categories Mn, Mc and Me."""
    return unicodedata.category(c).startswith("M")


def _character_shown(c: str) -> str:
    """A character in a message: as Python writes it ('a', '\\x80'), but a combining mark, which
    would sit on the quote before it, by its code and name (U+0301 COMBINING ACUTE ACCENT)."""
    if combining_mark(c):
        return f"U+{ord(c):04X} {unicodedata.name(c, '')}".rstrip()
    return repr(c)


def _unknown(chars: list, occurrences: int, what: str, as_bytes: bool = False,
             utf8_known: bool = False) -> UnknownCharacters:
    """The error for a text with characters (in order of first appearance) a model lacks; for a
    bytes model (each byte the character of its code), named as bytes: e2, not 'â'. utf8_known:
    a program's str, whose characters from U+0080 the model knows as UTF-8 (Vocab._knows_utf8)."""
    more = f" and {len(chars) - 10:,} more" if len(chars) > 10 else ""
    if as_bytes:
        shown = ", ".join(repr(c) if ord(c) > 0xFF else f"{ord(c):02x}" + (f" ({c!r})" if ord(c) < 0x80 else "")
                          for c in chars[:10])
        above = sum(ord(c) > 0xFF for c in chars)  # no byte: only Python's str can hold them
        if above:
            values = f"{counted(len(chars) - above, 'byte value')} and " if len(chars) > above else ""
            return UnknownCharacters(
                f"{what} has {values}{counted(above, 'character')} above U+00FF the model does not know "
                f"({counted(occurrences, 'occurrence')}): {shown}{more}; this model reads bytes, a character each: "
                + ("give text.encode('utf-8').decode('latin-1')" if utf8_known else
                   "use only text whose bytes occur in the training text"))
        return UnknownCharacters(
            f"{what} has {counted(len(chars), 'byte value')} the model does not know ({counted(occurrences, 'occurrence')}): "
            f"{shown}{more}; " + ("this model reads bytes, a character each: for UTF-8 text give "
                                  "text.encode('utf-8').decode('latin-1'), or " if utf8_known else "")
            + "use only text whose bytes occur in the training text"
        )
    shown = ", ".join(map(_character_shown, chars[:10]))
    return UnknownCharacters(
        f"{what} has {counted(len(chars), 'character')} the model does not know ({counted(occurrences, 'occurrence')}): "
        f"{shown}{more}; use only characters that occur in the training text"
    )


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


_BEYOND_ANY_TEXT = 2**62  # characters: a split that needs more (--val-fraction 1e-300) says "more than"


def _min_split_chars(fractions) -> int:
    # A part of fraction f gets >= 2 characters once n*f >= 1.5; start there and step up.
    n = MIN_CORPUS_CHARS
    for f in fractions:
        if f > 0:
            n = max(n, math.ceil(min(1.5 / f, _BEYOND_ANY_TEXT)) - 1)  # (1.5 / 5e-324 is inf)
    while n < _BEYOND_ANY_TEXT and not _split_ok(n, fractions):  # (so at most _BEYOND_ANY_TEXT)
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


def split(ids, fractions=(0.9, 0.05, 0.05), *, name: str = "the corpus", unit: str = "character"):
    """Contiguous (train, val, test) views of ids, train first; val or test may be empty.

    `name` and `unit` only word the error messages (the file's path; "byte" for a bytes model).
    """
    fr = _check_fractions(fractions)
    ids = np.asarray(ids)
    n = int(ids.size)
    if n and ids.min() == ids.max():  # (not np.unique: it would sort a copy of the whole corpus)
        raise CharrnnError(
            f"{name} has only one distinct {unit}; the model needs at least two different "
            f"{unit}s to learn anything"
        )
    if not _split_ok(n, fr):
        need = _min_split_chars(fr)
        shown = "/".join(f"{f:g}" for f in fr)
        advice = ("use a longer text" if not any(fr[1:]) or n < MIN_CORPUS_CHARS else
                  "use a longer text, or give each of the validation and test fractions (--val-fraction, "
                  f"--test-fraction) 0, for no such part, or enough for 2 {unit}s")
        why = "2 per part" if need > MIN_CORPUS_CHARS else "the fewest charrnn trains on"
        need = f"at least {need:,}" if need < _BEYOND_ANY_TEXT else f"more than {_BEYOND_ANY_TEXT:.1e}"
        raise CharrnnError(f"{name} has {counted(n, unit)}; a {shown} train/val/test split needs {need} ({why}); "
                           f"{advice}")
    n_train, n_val, _ = _split_sizes(n, fr)
    return ids[:n_train], ids[n_train : n_train + n_val], ids[n_train + n_val :]


# ---------------------------------------------------------------------------------------------
# Batch and window for small corpora


def streams_held(n_train: int, window: int) -> int:
    """The most streams a text of n_train characters holds with _WINDOWS_PER_STREAM windows of
    `window` steps each: what fit_batch_and_window shrinks a batch to."""
    return n_train // ((window + 1) * _WINDOWS_PER_STREAM)


def window_reach(n_train: int, batch: int, k1: int) -> int:
    """The most steps a kept window (--k2) can hold on `batch` streams of n_train characters: a
    stream's steps in an epoch, read k1 at a time (Streams.next skips a tail shorter than k1, and
    the window starts afresh as the text wraps)."""
    return Streams.length(n_train, batch) // k1 * k1


def fit_batch_and_window(n_train: int, batch: int, window: int, ranks: int = 1) -> tuple[int, int, str | None]:
    """(batch, window, notice): shrink batch first, then window, until the streams fit.

    Nothing changes while every stream holds _WINDOWS_PER_STREAM windows. Otherwise aim for
    that many, windows of at least _MIN_GOOD_WINDOW steps, so that the hidden state carries
    across updates; when even that cannot be had, just fit. (Streams of one window each, as
    3,200 characters in 32 streams of 50 steps made, wrapped at every update: the state never
    carried, and an epoch left up to half of each stream unread.) A batch
    shrunk for `ranks` MPI processes stays a multiple of them (each reads as many streams).
    """
    if batch < 1 or window < 1:
        raise ValueError(f"batch and window must be at least 1, got {batch} and {window}")
    if n_train < 2 * ranks:
        raise CharrnnError(
            f"the training text has {counted(n_train, 'character')}; it needs at least 2 (one input, one target)"
            + (f" for each of {ranks} processes" if ranks > 1 else "")
        )
    if streams_held(n_train, window) >= batch:
        return batch, window, None

    new_batch = min(batch, streams_held(n_train, window))
    new_batch -= new_batch % ranks
    new_window = window
    if new_batch < ranks:
        # One stream (a rank) only; shorten the window to give it a few windows, but not below
        # _MIN_GOOD_WINDOW unless the text itself is shorter.
        new_batch = ranks
        per_stream = n_train // ranks
        new_window = min(window, per_stream - 1, max(_MIN_GOOD_WINDOW, per_stream // _WINDOWS_PER_STREAM - 1))

    changes = []
    if new_batch != batch:
        changes.append(f"--batch {batch} -> {new_batch}")
    if new_window != window:
        changes.append(f"--k1 {window} -> {new_window}")  # train's window
    if not changes:  # already as small as the text allows (a run given the sizes a notice named)
        return batch, window, None
    notice = f"corpus is small ({n_train:,} training characters): {', '.join(changes)}"
    return new_batch, new_window, notice


# ---------------------------------------------------------------------------------------------
# Streams


def _stream_matrix(ids: np.ndarray, batch: int, S: int) -> np.ndarray:
    # (S+1, B), time-major: column b is ids[b*S : b*S + S + 1]. Neighbouring streams share one
    # boundary character (the last target of one is the first input of the next). A read-only
    # view of ids, not a copy: row t is every S-th id from t, so a window of rows is gathered
    # when it is copied into the model's int32 buffers.
    ids = np.ascontiguousarray(ids)
    step = ids.strides[0]
    return np.lib.stride_tricks.as_strided(ids, shape=(S + 1, batch), strides=(step, S * step), writeable=False)


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
        S = self.length(ids.size, batch)
        if S < 1:
            raise CharrnnError(
                f"{counted(ids.size, 'training character')} cannot fill {counted(batch, 'stream')} "
                f"(each needs at least 2); use a smaller batch or a longer text"
            )
        self.batch = batch
        self.stream_length = S
        self._m = _stream_matrix(ids, batch, S)
        self.position = 0
        self.epoch = 0

    @staticmethod
    def length(n: int, batch: int) -> int:
        """The steps of each of `batch` streams over n ids (the last target of one is the first
        input of the next)."""
        return (n - 1) // batch

    def steps_per_epoch(self, k: int) -> int:
        return self.stream_length // k

    def next(self, k: int, out_inputs: np.ndarray, out_targets: np.ndarray, rows: slice = slice(None)) -> bool:
        """Fill out_inputs[:k], out_targets[:k] with the next k steps of the streams `rows` (all
        of them by default; under MPI a rank's share); True if it wrapped first.

        A wrap means the text jumped back to the start: the caller resets the hidden state.
        """
        S = self.stream_length
        if not 1 <= k <= S:
            raise ValueError(f"k must lie in [1, {S}] (the stream length), got {k}")
        width = len(range(self.batch)[rows])
        for out in (out_inputs, out_targets):
            if out.ndim != 2 or out.shape[0] < k or out.shape[1] != width:
                raise ValueError(f"output arrays must have shape (>= {k}, {width}), got {out.shape}")
        wrapped = False
        if self.position + k > S:
            # The tail shorter than k is skipped rather than read with a jump inside a window.
            self.position = 0
            self.epoch += 1
            wrapped = True
        p = self.position
        out_inputs[:k] = self._m[p : p + k, rows]
        out_targets[:k] = self._m[p + 1 : p + k + 1, rows]
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
                f"the text to evaluate has {counted(ids.size, 'character')}; it needs at least 2 "
                "(one input, one target)"
            )
        self.batch, self.stream_length = self.shape(ids.size, batch)
        self.count = self.batch * self.stream_length  # predictions per pass
        self._m = _stream_matrix(ids, self.batch, self.stream_length)

    @staticmethod
    def shape(n: int, batch: int) -> tuple[int, int]:
        """(streams, steps of each) that a text of n characters is cut into."""
        streams = max(min(batch, n - 1), 1)
        return streams, max(n - 1, 0) // streams

    def windows(self, k: int, rows: slice = slice(None)):
        """Yield (inputs, targets) of the streams `rows` (all by default; under MPI a rank's
        share), each (k', streams) int32, k' = k except maybe the last."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        S = self.stream_length
        for p in range(0, S, k):
            q = min(p + k, S)
            yield np.array(self._m[p:q, rows], np.int32), np.array(self._m[p + 1 : q + 1, rows], np.int32)
