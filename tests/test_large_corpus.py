"""A corpus held as ids of the smallest integer type, read and encoded a piece at a time, with the
split and the streams as views: the same ids, digests, errors and training as reading the whole
text at once."""
import importlib
import os
import pkgutil
import re

import numpy as np
import pytest

import charrnn.corpus as corpus_module
import charrnn.kernels
from charrnn.corpus import (
    EvalStreams,
    Streams,
    Vocab,
    ids_dtype,
    read_corpus,
    read_ids,
    read_text,
    split,
    text_sha256,
)
from charrnn.errors import CharrnnError
from charrnn.train import Trainer
from test_train import config

# 1-, 2-, 3- and 4-byte characters, line breaks, a BOM inside the text (kept: only a leading
# one is dropped), and a character above U+FFFF.
MIXED = "".join(f"line {i}: naïve café — “quote” 😀 ∑ ж {i * 7919 % 1000}\n\ufeff" for i in range(60))
SEP = "\n\x03\n"


@pytest.fixture
def small_chunks(monkeypatch):
    """Read and renumber a few bytes at a time, so that pieces end inside characters."""
    def set_size(n):
        monkeypatch.setattr(corpus_module, "CHUNK_BYTES", n)
    return set_size


def straight(text: str):
    """What reading the whole text at once gives: its vocabulary's ids, as int32."""
    vocab = Vocab.from_text(text)
    return vocab, vocab.encode(text)


# --- the type of the ids -----------------------------------------------------------------------


def test_ids_dtype_is_the_smallest_unsigned_type():
    assert [ids_dtype(n) for n in (1, 2, 256)] == [np.uint8] * 3
    assert [ids_dtype(n) for n in (257, 65536)] == [np.uint16] * 2
    assert [ids_dtype(n) for n in (65537, 0x110000)] == [np.uint32] * 2


@pytest.mark.parametrize("distinct, dtype", [(81, np.uint8), (256, np.uint8), (257, np.uint16), (300, np.uint16),
                                             (70_000, np.uint32)])
def test_corpus_ids_take_the_type_the_vocabulary_allows(tmp_path, distinct, dtype):
    # code points from U+20000 are valid scalar values (no surrogates among them)
    chars = [chr(c) for c in range(0x20000, 0x20000 + distinct)]
    text = "".join(chars[i % distinct] for i in range(3 * distinct + 5))
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    corpus = read_corpus([path])
    assert corpus.ids.dtype == dtype and len(corpus.chars) == distinct
    vocab, ids = straight(text)
    assert corpus.chars == vocab.chars and np.array_equal(corpus.ids, ids)


def test_the_type_widens_while_reading_and_narrows_when_a_file_is_left_out(tmp_path, small_chunks):
    small_chunks(64)
    folder = tmp_path / "docs"
    folder.mkdir()
    many = "".join(chr(0x4E00 + i) for i in range(400))  # 400 characters: uint16 while it is read
    (folder / "a.txt").write_text("plain text " * 20, encoding="utf-8")
    (folder / "b.txt").write_bytes(many.encode("utf-8") + b"\xff")  # not UTF-8, found late: left out
    (folder / "c.txt").write_text("more plain text\n" * 20, encoding="utf-8")
    corpus = read_corpus([folder], doc_sep=SEP)
    text = SEP.join([(folder / "a.txt").read_text(), (folder / "c.txt").read_text()])
    vocab, ids = straight(text)
    assert corpus.ids.dtype == np.uint8
    assert corpus.chars == vocab.chars and np.array_equal(corpus.ids, ids)
    assert corpus.sha256 == text_sha256(text)
    assert [f["path"] for f in corpus.files] == [str((folder / n).resolve()) for n in ("a.txt", "c.txt")]
    assert any("left out 1 file that is " in note for note in corpus.notes)


# --- reading in pieces equals reading at once --------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 64, 1 << 22])
def test_pieces_give_the_ids_and_digests_of_the_whole_text(tmp_path, small_chunks, chunk):
    small_chunks(chunk)
    texts = [MIXED, "plain ascii only\n" * 9, "é" + MIXED[::-1]]
    paths = []
    for i, t in enumerate(texts):
        paths.append(tmp_path / f"{i}.txt")
        paths[-1].write_bytes(("\ufeff" if i == 1 else "").encode() + t.encode("utf-8"))  # a leading BOM: dropped
    corpus = read_corpus(paths, doc_sep=SEP)
    whole = SEP.join(texts)
    vocab, ids = straight(whole)
    assert corpus.chars == vocab.chars
    assert np.array_equal(corpus.ids, ids) and corpus.ids.dtype == np.uint8
    assert corpus.text == whole
    assert corpus.sha256 == text_sha256(whole)
    assert [f["chars"] for f in corpus.files] == [len(t) for t in texts]
    assert corpus.info()["chars"] == len(whole)


@pytest.mark.parametrize("encoding", ["latin-1", "bytes"])
def test_byte_encodings_in_pieces(tmp_path, small_chunks, encoding):
    small_chunks(7)
    data = bytes(range(256)) * 3 + b"\x00\xff\x80 tail"
    path = tmp_path / "b.bin"
    path.write_bytes(data)
    corpus = read_corpus([path, path.parent / "b.bin"], encoding=encoding)  # named twice: read once
    text = data.decode("latin-1")  # both: byte b is the character chr(b)
    vocab, ids = straight(text)
    assert corpus.chars == vocab.chars and np.array_equal(corpus.ids, ids)
    assert corpus.sha256 == text_sha256(text)  # the UTF-8 of the characters, not the bytes


def test_the_digest_is_the_same_for_any_piece_size(tmp_path, small_chunks):
    path = tmp_path / "m.txt"
    path.write_text(MIXED * 5, encoding="utf-8")
    digests = set()
    for chunk in (1, 3, 17, 4096):
        small_chunks(chunk)
        digests.add(read_corpus([path]).sha256)
    assert digests == {text_sha256(MIXED * 5)}


# --- errors found in a later piece -------------------------------------------------------------


GOOD = ("ab\ncd é\n" * 500).encode("utf-8")  # 4,500 bytes, 1,000 lines


@pytest.mark.parametrize("bad, offset", [
    (GOOD + b"\xff" + GOOD, 4500),  # an invalid start byte far into the file
    (GOOD + "€".encode()[:2] + b"x", 4500),  # a 3-byte character cut short, then ASCII
    (GOOD + b"x" + "€".encode()[:2], 4501),  # cut short by the end of the file
    (GOOD + b"\xed\xa0\x80" + GOOD, 4500),  # an encoded surrogate
    (GOOD + b"\xff" + GOOD + b"\x00", 9001),  # a NUL after the bad byte: binary, as for the whole file
    (GOOD + b"\x00" + GOOD + b"\xff", 4500),
])
@pytest.mark.parametrize("chunk", [1, 5, 64, 1000])
def test_an_error_in_a_later_piece_names_the_offset_of_the_whole_file(tmp_path, small_chunks, bad, offset, chunk):
    path = tmp_path / "bad.txt"
    path.write_bytes(bad)
    small_chunks(len(bad))  # the whole file in one piece
    with pytest.raises(CharrnnError) as whole:
        read_text(path)
    small_chunks(chunk)
    with pytest.raises(CharrnnError) as pieces:
        read_corpus([path])
    assert str(pieces.value) == str(whole.value)
    assert f"offset {offset}" in str(whole.value)
    assert "(line 1001)" in str(whole.value) or "binary" in str(whole.value)


@pytest.mark.parametrize("after", [b"\xff\xfe", b"\x00"])
def test_the_start_of_a_text_is_read_whatever_lies_after_it(tmp_path, after):
    # `inspect` reads a text's first 2,000 characters: a bad byte or a NUL at byte 5,000 was
    # refused, in the piece of 4 MiB that held them, though never read as a character
    path = tmp_path / "late.txt"
    path.write_bytes("é".encode() * 2500 + after + b"tail")
    ids, chars = read_ids(path, max_chars=2000)
    assert ids.size == 2000 and chars == ["é"]
    with pytest.raises(CharrnnError, match="byte offset 5000" if after != b"\x00" else r"NUL byte at offset 5000\)"):
        read_ids(path, max_chars=2501)


def test_an_encoder_given_too_little_room_grows():
    encoder = corpus_module._Encoder(capacity=1)
    text = MIXED * 3
    for piece in (text[:5], text[5:500], text[500:]):
        encoder.add(np.array([ord(c) for c in piece], np.uint32))
    ids, chars = encoder.finish()
    vocab, expected = straight(text)
    assert chars == vocab.chars and np.array_equal(ids, expected) and ids.dtype == np.uint8


def test_a_widening_of_the_ids_that_memory_cannot_take_is_refused(monkeypatch):
    import charrnn.memory

    encoder = corpus_module._Encoder(capacity=1 << 20)
    encoder.add(np.arange(1 << 20, dtype=np.uint32) % 256)
    # the copy would hold 3 MiB, while the ids may take half of the 2 MiB they and what is available make
    monkeypatch.setattr(charrnn.memory, "available_bytes", lambda **_: 1 << 20)
    with pytest.raises(corpus_module.TextTooLarge, match="1,048,576 characters read"):
        encoder.add(np.array([300], np.uint32))


@pytest.mark.parametrize("limit", ["memory", "address space"])
def test_a_pipe_that_holds_more_than_memory_stops_in_one_line(tmp_path, monkeypatch, small_chunks, limit):
    # `eval MODEL /dev/zero --encoding latin-1` grew to 24 GB until the system's out-of-memory
    # killer ended it, without a word; here 1 MiB of memory, or an allocation that fails
    import threading

    import charrnn.memory

    small_chunks(4096)
    if limit == "memory":
        monkeypatch.setattr(charrnn.memory, "available_bytes", lambda **_: 1 << 20)
    else:
        def no_room(self, *args, **kwargs):
            raise MemoryError
        monkeypatch.setattr(corpus_module._Encoder, "_room_for", no_room)
    fifo = tmp_path / "endless"
    os.mkfifo(fifo)

    def write():
        try:
            with open(fifo, "wb") as f:
                for _ in range(512):  # 16 MiB: without the check the read ends, and the test fails
                    f.write(b"the fox " * 4096)
        except BrokenPipeError:  # the reader has stopped
            pass

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    with pytest.raises(CharrnnError) as e:
        read_ids(fifo, "latin-1")
    assert re.fullmatch(rf"{re.escape(str(fifo))} \(a pipe or a device that may never end\) holds more text than "
                        r"this machine's memory can take: [\d,]+ characters read so far; give a smaller text file",
                        str(e.value)), str(e.value)
    writer.join(10)
    assert not writer.is_alive()


def test_a_folder_with_a_file_larger_than_memory_is_read_without_it(tmp_path):
    # the ids had room made for every file's size at once: a 1 TiB disk image beside the text
    # was refused by the system as "out of memory" before a byte was read; it is binary
    (tmp_path / "a.txt").write_text("some text\n")
    image = tmp_path / "disk.img"
    try:
        with image.open("wb") as f:
            f.truncate(1 << 40)  # sparse: it takes no room on disk
    except OSError:
        pytest.skip("this file system holds no 1 TiB sparse file")
    corpus = read_corpus([tmp_path])
    assert corpus.text == "some text\n"
    assert any("left out 1 file" in note and "disk.img" in note for note in corpus.notes), corpus.notes


def test_a_text_is_read_where_memory_holds_it_and_refused_in_one_line_where_not(tmp_path, monkeypatch, small_chunks):
    # larger than memory, its size made room for its ids without asking whether memory had it;
    # and the room made for it must not be less than memory holds: then a text of more than half
    # the memory available was refused, its room grown only as memory allows beyond that
    import charrnn.memory

    small_chunks(4096)
    path = tmp_path / "big.txt"
    path.write_bytes(b"the fox " * (1 << 18))  # 2 MiB
    monkeypatch.setattr(charrnn.memory, "available_bytes", lambda **_: 5 << 19)  # 2.5 MiB
    assert read_ids(path)[0].size == 2 << 20 and read_corpus([path]).ids.size == 2 << 20
    monkeypatch.setattr(charrnn.memory, "available_bytes", lambda **_: 1 << 20)
    for read in (read_corpus, read_ids):
        with pytest.raises(CharrnnError, match=rf"^{re.escape(str(path))} holds more text than this machine's "
                                               r"memory can take: [\d,]+ characters read so far"):
            read([path]) if read is read_corpus else read(path)


def test_an_endless_pipe_of_text_that_is_not_utf8_is_refused_at_its_first_bad_byte(tmp_path, small_chunks):
    # the search for a NUL byte, which would call it binary instead, read on to the end of the
    # input: `eval MODEL <(yes $'caf\xe9')` said nothing until it was killed
    import threading

    small_chunks(4096)
    fifo = tmp_path / "endless"
    os.mkfifo(fifo)
    written = []

    def write():
        try:
            with open(fifo, "wb") as f:
                for _ in range(4096):  # 80 MiB: without the fix they are all read before the error
                    f.write(b"caf\xe9\n" * 4096)
                    written.append(1)
        except BrokenPipeError:  # the reader has stopped
            pass

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    with pytest.raises(CharrnnError, match="is not valid UTF-8: .* at byte offset 3"):
        read_ids(fifo)
    writer.join(10)
    assert not writer.is_alive() and len(written) < 4096


def test_a_file_that_grows_a_little_while_read_is_read_where_memory_is_short(monkeypatch):
    # its ids had room for its size; the guard refused their doubling when 100 bytes more came
    import charrnn.memory

    encoder = corpus_module._Encoder(capacity=1 << 20)
    encoder.add(np.full(1 << 20, ord("a"), np.uint32))
    monkeypatch.setattr(charrnn.memory, "available_bytes", lambda **_: (5 << 20) // 2)  # room for 1.25x, not 2x
    encoder.add(np.full(100, ord("b"), np.uint32))
    ids, chars = encoder.finish()
    assert ids.size == (1 << 20) + 100 and chars == ["a", "b"]


# --- views, not copies -------------------------------------------------------------------------


def test_split_and_streams_are_views_of_the_ids():
    ids = np.arange(10_000, dtype=np.uint8)
    train, val, test = split(ids, (0.8, 0.1, 0.1))
    for part in (train, val, test):
        assert np.shares_memory(part, ids) and part.dtype == np.uint8
    assert np.shares_memory(Streams(train, 16)._m, ids)
    assert np.shares_memory(EvalStreams(val, 16)._m, ids)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.int64])
def test_streams_of_narrow_ids_read_what_int32_ids_read(dtype):
    rng = np.random.default_rng(1)
    wide = rng.integers(0, 200, 1003).astype(np.int32)
    a, b = Streams(wide.astype(dtype), 7), Streams(wide, 7)
    xa, ya, xb, yb = (np.zeros((9, 7), np.int32) for _ in range(4))
    for _ in range(40):  # several epochs
        assert a.next(9, xa, ya) == b.next(9, xb, yb)
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    ev_a, ev_b = EvalStreams(wide.astype(dtype), 5), EvalStreams(wide, 5)
    for (x, y), (x2, y2) in zip(ev_a.windows(11), ev_b.windows(11), strict=True):
        assert x.dtype == np.int32 and np.array_equal(x, x2) and np.array_equal(y, y2)


# --- training ----------------------------------------------------------------------------------


TRAIN_TEXT = "".join(f"{w} the {i % 7} quick brown fox — jumps over {i % 13} lazy dogs.\n"
                     for i, w in enumerate(["Alas", "Lo", "Hark", "Sing"] * 6))


def _trainer(path, tmp_path, run, corpus=None):
    cfg = config(path, tmp_path, k2=13, eval_every=1000, checkpoint_every=1000, run=run, seed=3, dropout=0.1)
    return Trainer(cfg, tmp_path / run, say=lambda *_: None, corpus=corpus)


@pytest.mark.parametrize("extra", ["", "".join(chr(0x400 + i) for i in range(300))])  # uint8, uint16
def test_training_on_narrow_ids_equals_training_on_int32_ids(tmp_path, extra):
    path = tmp_path / "t.txt"
    path.write_text(TRAIN_TEXT + extra, encoding="utf-8")
    narrow = _trainer(path, tmp_path, "narrow")
    assert narrow.train_ids.dtype == (np.uint8 if not extra else np.uint16)
    corpus = read_corpus([path])
    corpus.ids = corpus.ids.astype(np.int32)  # the ids as the package held them before: int32
    wide = _trainer(path, tmp_path, "wide", corpus=corpus)
    assert wide.train_ids.dtype == np.int32
    per_epoch = narrow.streams.steps_per_epoch(narrow.cfg.k1)
    for _ in range(per_epoch + 3):  # across the end of an epoch
        assert narrow.update()[0] == wide.update()[0]
    assert narrow.streams.epoch == 1
    assert np.array_equal(narrow.params, wide.params)
    assert narrow.validate() == wide.validate()
    assert narrow.corpus_info == wide.corpus_info


def test_kernels_see_int32_ids_only(tmp_path):
    """Narrow ids are copied into the model's int32 buffers, so numba compiles no kernel again for
    another integer type (its cache keeps one version of each)."""
    path = tmp_path / "t.txt"
    path.write_text(TRAIN_TEXT, encoding="utf-8")
    trainer = _trainer(path, tmp_path, "r")
    assert trainer.train_ids.dtype == np.uint8
    trainer.update()
    trainer.validate()
    narrow = {"uint8", "uint16", "uint32"}  # what a corpus's ids may be
    seen = 0
    for info in pkgutil.iter_modules(charrnn.kernels.__path__):
        module = importlib.import_module(f"charrnn.kernels.{info.name}")
        for fn in vars(module).values():
            for signature in getattr(fn, "signatures", ()):
                seen += 1
                arrays = [t for t in signature if hasattr(t, "dtype") and hasattr(t, "ndim")]
                assert not [t for t in arrays if str(t.dtype) in narrow], (fn, signature)
    assert seen > 0  # the kernels were compiled or loaded, and looked at


def test_the_start_of_a_file_names_only_the_unknown_characters_it_holds(tmp_path):
    """read_ids(max_chars) stops after the piece that holds the first max_chars characters; the
    piece may hold more characters, which translate() ignores unless they occur in the ids."""
    path = tmp_path / "t.txt"
    path.write_text("abcab€ßc", encoding="utf-8")
    ids, chars = read_ids(path, max_chars=5)
    assert ids.size == 5 and "€" in chars  # one piece: read whole, cut to its start
    vocab = Vocab("abc")
    assert vocab.decode(vocab.translate(ids, chars)[0]) == "abcab"
    ids, chars = read_ids(path, max_chars=7)
    with pytest.raises(CharrnnError, match=r"2 characters the model does not know \(2 occurrences\): '€', 'ß'"):
        vocab.translate(ids, chars)
    kept, skipped = vocab.translate(ids, chars, skip_unknown=True)
    assert vocab.decode(kept) == "abcab" and skipped == 2
