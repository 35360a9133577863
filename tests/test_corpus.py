import json
import os
import re

import numpy as np
import pytest

from charrnn.corpus import (
    ENCODINGS,
    EvalStreams,
    Streams,
    Vocab,
    check_encoding,
    fit_batch_and_window,
    read_text,
    split,
)
from charrnn.errors import CharrnnError


# --- read_text -------------------------------------------------------------------------------


def write(tmp_path, data: bytes, name="corpus.txt"):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_reads_utf8_text(tmp_path):
    p = write(tmp_path, "héllo\nwörld 😀\n".encode("utf-8"))
    assert read_text(p) == "héllo\nwörld 😀\n"
    assert read_text(str(p)) == "héllo\nwörld 😀\n"


def test_invalid_utf8_reports_offset_byte_and_fix(tmp_path):
    p = write(tmp_path, b"hello\xffworld")
    with pytest.raises(CharrnnError) as e:
        read_text(p)
    msg = str(e.value)
    assert "corpus.txt" in msg
    assert "byte offset 5" in msg
    assert "0xFF" in msg
    assert "re-save it as UTF-8, or pass --encoding latin-1 (any byte file) or --encoding bytes" in msg
    assert "\n" not in msg


def test_invalid_utf8_offset_and_line_later_in_file(tmp_path):
    # A truncated 3-byte sequence (E2 82 without its last byte) on line 3.
    data = b"ab\ncd\nxy\xe2\x82z"
    p = write(tmp_path, data)
    with pytest.raises(CharrnnError) as e:
        read_text(p)
    msg = str(e.value)
    assert "byte offset 8" in msg
    assert "line 3" in msg
    assert "0xE2 0x82" in msg


def test_latin1_and_bytes_read_any_file(tmp_path):
    p = write(tmp_path, b"hello\xffworld")
    assert read_text(p, encoding="latin-1") == "hello\u00ffworld"
    assert read_text(p, encoding="bytes") == "hello\u00ffworld"
    all_bytes = bytes(range(256))
    q = write(tmp_path, all_bytes, "all.bin")
    assert read_text(q, encoding="bytes") == "".join(chr(b) for b in range(256))
    assert [ord(c) for c in read_text(q, encoding="latin-1")] == list(range(256))


def test_encoding_names(tmp_path):
    assert ENCODINGS == ("utf-8", "latin-1", "bytes")
    assert check_encoding("UTF8") == "utf-8"
    assert check_encoding("latin1") == "latin-1"
    p = write(tmp_path, b"abc")
    with pytest.raises(CharrnnError) as e:
        read_text(p, encoding="utf-16")
    for name in ENCODINGS:
        assert name in str(e.value)


def test_missing_file(tmp_path):
    p = tmp_path / "nope.txt"
    with pytest.raises(CharrnnError) as e:
        read_text(p)
    assert "nope.txt" in str(e.value)
    assert "does not exist" in str(e.value)


def test_directory(tmp_path):
    with pytest.raises(CharrnnError) as e:
        read_text(tmp_path)
    assert str(tmp_path) in str(e.value)
    assert "directory" in str(e.value)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads anything")
def test_unreadable_file(tmp_path):
    p = write(tmp_path, b"secret text")
    p.chmod(0)
    try:
        with pytest.raises(CharrnnError) as e:
            read_text(p)
        assert "corpus.txt" in str(e.value)
        assert "permission" in str(e.value)
    finally:
        p.chmod(0o644)


def test_unreadable_file_simulated(tmp_path, monkeypatch):
    # Runs even as root, where chmod 0 does not stop reading.
    p = write(tmp_path, b"secret text")

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("charrnn.corpus.open", refuse, raising=False)
    with pytest.raises(CharrnnError) as e:
        read_text(p)
    assert "corpus.txt" in str(e.value) and "permission denied" in str(e.value)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_empty_file(tmp_path, encoding):
    p = write(tmp_path, b"")
    with pytest.raises(CharrnnError, match="is empty"):
        read_text(p, encoding=encoding)


def test_bom_only_file_is_empty(tmp_path):
    p = write(tmp_path, b"\xef\xbb\xbf")
    with pytest.raises(CharrnnError, match="is empty"):
        read_text(p)


def test_whitespace_is_text(tmp_path):
    p = write(tmp_path, b" \n\t\n")
    assert read_text(p) == " \n\t\n"


def test_binary_file_refused_in_utf8_but_allowed_as_bytes(tmp_path):
    p = write(tmp_path, b"abc\x00def")
    with pytest.raises(CharrnnError) as e:
        read_text(p)
    assert "binary" in str(e.value)
    assert "offset 3" in str(e.value)
    assert read_text(p, encoding="bytes") == "abc\x00def"


def test_binary_with_invalid_utf8_still_called_binary(tmp_path):
    p = write(tmp_path, b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(CharrnnError, match="binary"):
        read_text(p)


def test_bom_stripped_for_utf8_only(tmp_path):
    p = write(tmp_path, b"\xef\xbb\xbfhi there")
    assert read_text(p) == "hi there"
    # latin-1 keeps the three bytes as characters: the user asked for bytes as they are.
    assert read_text(p, encoding="latin-1") == "\u00ef\u00bb\u00bfhi there"


# --- Vocab -----------------------------------------------------------------------------------


def test_vocab_sorted_unique():
    v = Vocab("hello")
    assert v.chars == ["e", "h", "l", "o"]
    assert v.size == 4
    assert Vocab(["o", "l", "l"]).chars == ["l", "o"]
    assert Vocab.from_text("x").size == 1


def test_vocab_encode_decode_round_trip():
    text = "héllo\nwörld 😀\x00\t!"
    v = Vocab.from_text(text)
    ids = v.encode(text)
    assert ids.dtype == np.int32
    assert ids.shape == (len(text),)
    assert [v.chars[i] for i in ids] == list(text)
    assert v.decode(ids) == text
    assert v.decode(ids.tolist()) == text
    # Ids follow code point order, so the emoji (largest) has the last id.
    assert ids[text.index("😀")] == v.size - 1
    assert v.encode("") .shape == (0,)
    assert v.decode([]) == ""


def test_vocab_encode_matches_plain_lookup_on_random_text():
    rng = np.random.default_rng(0)
    alphabet = list("abcXYZ \n\u00e9\u4e2d\U0001f600\U0001f680\x00")
    text = "".join(rng.choice(alphabet, size=5000))
    v = Vocab.from_text(text)
    index = {c: i for i, c in enumerate(v.chars)}
    assert v.encode(text).tolist() == [index[c] for c in text]


def test_vocab_json_round_trip():
    v = Vocab.from_text("ab\né😀\x00z")
    data = json.loads(json.dumps(v.to_json()))
    w = Vocab.from_json(data)
    assert w == v
    assert w.chars == v.chars
    assert set(w.chars) == {"a", "b", "\n", "é", "😀", "\x00", "z"}
    text = "zé😀\n\x00ab"
    assert w.encode(text).tolist() == v.encode(text).tolist()
    assert w.decode(w.encode(text)) == text


def test_vocab_from_json_keeps_saved_order():
    v = Vocab.from_json(["b", "a"])
    assert v.encode("ab").tolist() == [1, 0]
    assert v.decode([0, 1]) == "ba"


@pytest.mark.parametrize("bad", [["ab"], ["a", "a"], "abc", [1, 2], None])
def test_vocab_from_json_rejects_corrupt(bad):
    with pytest.raises(CharrnnError):
        Vocab.from_json(bad)


def test_unknown_characters_named():
    v = Vocab("abc")
    with pytest.raises(CharrnnError) as e:
        v.encode("abxyzx", what="priming text")
    msg = str(e.value)
    assert msg.startswith("priming text")
    assert "'x', 'y', 'z'" in msg  # in order of first appearance
    assert "3 characters" in msg
    assert "4 occurrences" in msg


def test_unknown_characters_listed_up_to_ten():
    v = Vocab("a")
    unknown = "bcdefghijklm"  # 12 distinct
    with pytest.raises(CharrnnError) as e:
        v.encode("a" + unknown)
    msg = str(e.value)
    assert "'k'" in msg and "'l'" not in msg
    assert "and 2 more" in msg
    assert "12 characters" in msg


def test_unknown_lone_surrogate_is_a_clean_error():
    with pytest.raises(CharrnnError):
        Vocab("ab").encode("a\ud800")


def test_encode_skip_unknown():
    v = Vocab("abc")
    ids, skipped = v.encode_skip_unknown("abxyzxc")
    assert ids.dtype == np.int32
    assert ids.tolist() == [0, 1, 2]
    assert skipped == 4
    ids, skipped = v.encode_skip_unknown("cab")
    assert ids.tolist() == [2, 0, 1] and skipped == 0


def test_decode_rejects_out_of_range():
    with pytest.raises(ValueError):
        Vocab("ab").decode([0, 2])
    with pytest.raises(ValueError):
        Vocab("ab").decode([-1])


# --- split -----------------------------------------------------------------------------------


def test_split_sizes_and_contiguity():
    ids = np.arange(100) % 7
    train, val, test = split(ids)
    assert (len(train), len(val), len(test)) == (90, 5, 5)
    assert np.array_equal(np.concatenate([train, val, test]), ids)
    assert np.array_equal(train, ids[:90])
    assert np.array_equal(val, ids[90:95])


def test_split_other_fractions():
    ids = np.arange(1000) % 3
    train, val, test = split(ids, (0.8, 0.2, 0.0))
    assert (len(train), len(val), len(test)) == (800, 200, 0)
    train, val, test = split(ids, (1.0, 0.0, 0.0))
    assert len(train) == 1000 and len(val) == 0 and len(test) == 0


def test_split_too_short_says_how_long_and_minimum():
    ids = np.arange(25) % 4
    with pytest.raises(CharrnnError) as e:
        split(ids, name="tiny.txt")
    msg = str(e.value)
    assert "tiny.txt has 25 characters" in msg
    assert "at least 30" in msg  # 30 * 0.05 rounds up to 2 characters for val and test
    train, val, test = split(np.arange(30) % 4)
    assert (len(train), len(val), len(test)) == (26, 2, 2)


def test_split_absolute_minimum():
    with pytest.raises(CharrnnError, match="at least 20"):
        split(np.arange(15) % 3, (1.0, 0.0, 0.0))
    assert len(split(np.arange(20) % 3, (1.0, 0.0, 0.0))[0]) == 20


def test_split_needs_two_distinct_characters():
    with pytest.raises(CharrnnError, match="two different characters"):
        split(np.zeros(1000, dtype=np.int32))


@pytest.mark.parametrize(
    "fractions",
    [(0.5, 0.5, 0.5), (1.1, -0.05, -0.05), (0.0, 0.5, 0.5), (0.9, 0.1), ("a", 0, 0), (float("nan"), 0, 0)],
)
def test_split_bad_fractions(fractions):
    with pytest.raises(CharrnnError):
        split(np.arange(1000) % 5, fractions)


# --- fit_batch_and_window --------------------------------------------------------------------


def test_fit_leaves_big_corpora_alone():
    assert fit_batch_and_window(1_000_000, 32, 100) == (32, 100, None)
    assert fit_batch_and_window(32 * 101 * 4, 32, 100) == (32, 100, None)


def test_fit_gives_every_stream_windows_enough_to_carry_its_state():
    # 3,200 characters in 32 streams of 99 steps, windows of 50: every update wrapped, so the
    # state never carried across updates, and an epoch read 1,632 of the 3,200 characters
    batch, window, notice = fit_batch_and_window(3200, 32, 50)
    assert (batch, window) == (15, 50) and notice == "corpus is small (3,200 training characters): --batch 32 -> 15"
    assert Streams.length(3200, batch) // window >= 4  # windows a stream holds


def test_fit_shrinks_batch_first():
    batch, window, notice = fit_batch_and_window(3000, 32, 100)
    assert (batch, window) == (7, 100)  # 7 * 101 * 4 <= 3000 < 8 * 101 * 4
    assert notice == "corpus is small (3,000 training characters): --batch 32 -> 7"


def test_fit_then_shrinks_window():
    batch, window, notice = fit_batch_and_window(200, 32, 100)
    assert (batch, window) == (1, 49)  # 1 * 50 * 4 == 200
    assert notice == "corpus is small (200 training characters): --batch 32 -> 1, --k1 100 -> 49"


@pytest.mark.parametrize("n_train, ranks", [(20, 1), (36, 2), (26, 1), (107, 3)])
def test_fit_leaves_what_it_fitted_alone(n_train, ranks):
    # a text too short for windows of 8 fitted to 1 stream (a rank) of 8 steps; fitted again, it
    # gave the notice "corpus is small (36 training characters): " with nothing after it
    batch, window, notice = fit_batch_and_window(n_train, 32, 50, ranks)
    assert notice is not None and batch % ranks == 0
    assert fit_batch_and_window(n_train, batch, window, ranks) == (batch, window, None)


def test_fit_tiny_corpora():
    assert fit_batch_and_window(20, 32, 100)[:2] == (1, 8)
    assert fit_batch_and_window(5, 32, 100)[:2] == (1, 4)
    assert fit_batch_and_window(2, 32, 100)[:2] == (1, 1)
    with pytest.raises(CharrnnError):
        fit_batch_and_window(1, 32, 100)
    with pytest.raises(CharrnnError):
        fit_batch_and_window(0, 1, 1)


def test_fit_result_always_makes_working_streams():
    for batch, window in [(32, 100), (1, 50), (64, 8), (3, 1)]:
        for n in list(range(2, 300)) + list(range(300, 20000, 97)):
            b, w, notice = fit_batch_and_window(n, batch, window)
            assert 1 <= b <= batch and 1 <= w <= window
            assert b * (w + 1) <= n
            assert (notice is None) == ((b, w) == (batch, window))
            s = Streams(np.arange(n), b)
            assert s.steps_per_epoch(w) >= 1


# --- Streams ---------------------------------------------------------------------------------


def buffers(k, batch):
    return np.full((k, batch), -1, np.int32), np.full((k, batch), -1, np.int32)


def test_streams_layout():
    s = Streams(np.arange(23), 2)
    assert s.stream_length == 11  # (23 - 1) // 2
    assert s.steps_per_epoch(3) == 3
    assert s.position == 0 and s.epoch == 0
    x, y = buffers(3, 2)
    assert s.next(3, x, y) is False
    # stream 0 is ids[0:12], stream 1 is ids[11:23]
    assert x.tolist() == [[0, 11], [1, 12], [2, 13]]
    assert y.tolist() == [[1, 12], [2, 13], [3, 14]]
    assert s.position == 3
    assert s.next(3, x, y) is False
    assert x.tolist() == [[3, 14], [4, 15], [5, 16]]
    assert y.tolist() == [[4, 15], [5, 16], [6, 17]]
    assert s.next(3, x, y) is False
    assert x.tolist() == [[6, 17], [7, 18], [8, 19]]
    assert y.tolist() == [[7, 18], [8, 19], [9, 20]]
    assert s.position == 9
    # 9 + 3 > 11: wrap to the start, a new epoch
    assert s.next(3, x, y) is True
    assert s.epoch == 1 and s.position == 3
    assert x.tolist() == [[0, 11], [1, 12], [2, 13]]
    assert y.tolist() == [[1, 12], [2, 13], [3, 14]]


def test_streams_exact_fit_wraps_on_the_following_call():
    s = Streams(np.arange(13), 3)  # S = 4
    x, y = buffers(2, 3)
    assert [s.next(2, x, y) for _ in range(5)] == [False, False, True, False, True]
    assert s.epoch == 2
    # the wrap restarts every stream at its first character
    assert x.tolist() == [[0, 4, 8], [1, 5, 9]]
    assert y.tolist() == [[1, 5, 9], [2, 6, 10]]


def test_streams_fill_only_first_k_rows_and_cast():
    s = Streams(np.arange(23, dtype=np.int64), 2)
    x, y = buffers(5, 2)
    s.next(3, x, y)
    assert x[3:].tolist() == [[-1, -1], [-1, -1]]
    assert y[3:].tolist() == [[-1, -1], [-1, -1]]
    assert x.dtype == np.int32


def test_streams_epoch_count_over_many_steps():
    s = Streams(np.arange(101), 4)  # S = 25
    x, y = buffers(7, 4)
    wraps = sum(s.next(7, x, y) for _ in range(30))
    # 3 steps per epoch: the steps 4, 7, ..., 28 wrap
    assert wraps == 9 and s.epoch == 9


def test_streams_bad_k_and_too_short():
    s = Streams(np.arange(23), 2)
    x, y = buffers(12, 2)
    with pytest.raises(ValueError):
        s.next(12, x, y)
    with pytest.raises(ValueError):
        s.next(0, x, y)
    with pytest.raises(CharrnnError):
        Streams(np.arange(2), 2)


def test_streams_state_dict_resumes_identically():
    ids = (np.arange(500) * 7) % 13
    a = Streams(ids, 3)
    x, y = buffers(10, 3)
    for _ in range(20):
        a.next(10, x, y)
    state = json.loads(json.dumps(a.state_dict()))
    assert state["position"] == a.position and state["epoch"] == a.epoch
    assert all(type(v) is int for v in a.state_dict().values())
    b = Streams(ids, 3)
    b.load_state_dict(state)
    xa, ya = buffers(10, 3)
    xb, yb = buffers(10, 3)
    for _ in range(40):
        assert a.next(10, xa, ya) == b.next(10, xb, yb)
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    assert (a.position, a.epoch) == (b.position, b.epoch)
    assert a.epoch > 1


def test_streams_state_dict_rejects_other_batch():
    a = Streams(np.arange(500), 3)
    with pytest.raises(CharrnnError):
        Streams(np.arange(500), 4).load_state_dict(a.state_dict())
    with pytest.raises(CharrnnError):
        Streams(np.arange(500), 3).load_state_dict({"position": 10_000, "epoch": 0})


# --- EvalStreams -----------------------------------------------------------------------------


def test_eval_streams_cover_every_prediction_once():
    ids = np.arange(23)
    ev = EvalStreams(ids, 2)
    assert ev.batch == 2 and ev.count == 22
    windows = list(ev.windows(4))
    assert [x.shape for x, _ in windows] == [(4, 2), (4, 2), (3, 2)]
    assert windows[0][0].tolist() == [[0, 11], [1, 12], [2, 13], [3, 14]]
    targets = np.concatenate([y for _, y in windows])
    inputs = np.concatenate([x for x, _ in windows])
    assert targets[:, 0].tolist() == list(range(1, 12))
    assert targets[:, 1].tolist() == list(range(12, 23))
    assert np.array_equal(targets[:-1], inputs[1:])
    assert sum(y.size for _, y in windows) == ev.count
    # every character after the first is predicted exactly once
    assert sorted(targets.ravel().tolist()) == list(range(1, 23))


def test_eval_streams_window_larger_than_stream():
    ev = EvalStreams(np.arange(10), 3)  # S = 3
    windows = list(ev.windows(100))
    assert len(windows) == 1
    x, y = windows[0]
    assert x.tolist() == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]
    assert y.tolist() == [[1, 4, 7], [2, 5, 8], [3, 6, 9]]


def test_eval_streams_reduce_batch_for_short_text():
    ev = EvalStreams(np.arange(4), 8)
    assert ev.batch == 3 and ev.count == 3
    (x, y), = list(ev.windows(5))
    assert x.tolist() == [[0, 1, 2]] and y.tolist() == [[1, 2, 3]]
    with pytest.raises(CharrnnError):
        EvalStreams(np.arange(1), 8)


def test_eval_streams_count_with_leftover_characters():
    ids = np.arange(1000) % 11
    ev = EvalStreams(ids, 7)  # S = 999 // 7 = 142, 5 characters unused
    assert ev.count == 7 * 142
    assert sum(y.size for _, y in ev.windows(50)) == ev.count
    # running twice gives the same windows: evaluation does not consume anything
    first = [y.copy() for _, y in ev.windows(50)]
    second = [y for _, y in ev.windows(50)]
    assert all(np.array_equal(a, b) for a, b in zip(first, second))


def test_a_batch_shrunk_for_ranks_stays_a_multiple_of_them():
    # each MPI rank reads as many streams: a short text keeps a batch the ranks divide, and a
    # tiny one gives each rank one stream with a window that fits it
    assert fit_batch_and_window(640, 32, 20, ranks=2)[0] == 6  # 7 streams alone
    assert fit_batch_and_window(640, 32, 20)[0] == 7
    batch, window, notice = fit_batch_and_window(30, 32, 50, ranks=2)
    assert batch == 2 and batch * (window + 1) <= 30 and "--batch 32 -> 2" in notice
    with pytest.raises(CharrnnError, match="for each of 4 processes"):
        fit_batch_and_window(5, 32, 50, ranks=4)


def test_a_split_too_small_advises_what_can_help():
    # "lower the validation/test fractions" was the advice where both were 0, or where raising
    # one would have helped; and 20 for a training part alone was "2 per part"
    with pytest.raises(CharrnnError, match=r"needs at least 20 \(the fewest charrnn trains on\); use a longer text$"):
        split(np.arange(12) % 3, (1.0, 0.0, 0.0))
    with pytest.raises(CharrnnError, match=r"a 0.9/0.05/0.05 train/val/test split needs at least 30 \(2 per part\)"):
        split(np.arange(25) % 3, (0.9, 0.05, 0.05))
    with pytest.raises(CharrnnError, match=r"^x.bin has 25 bytes; .* or enough for 2 bytes$"):  # a bytes model's
        split(np.arange(25) % 3, (0.9, 0.05, 0.05), name="x.bin", unit="byte")
    with pytest.raises(CharrnnError, match=r"^x.bin has only one distinct byte; the model needs at least two different "
                                           r"bytes"):
        split(np.zeros(40, np.uint8), name="x.bin", unit="byte")
    with pytest.raises(CharrnnError, match=r"give each of the validation and test fractions \(--val-fraction, "
                                           r"--test-fraction\) 0, for no such part, or enough for 2 characters$"):
        split(np.arange(5000) % 3, (0.9999, 0.0001, 0.0))


@pytest.mark.parametrize("fraction, need", [(5e-324, "more than 4.6e+18"), (1e-300, "more than 4.6e+18"),
                                            (1e-10, "at least 15,000,000,000")])
def test_a_fraction_too_small_for_any_text_is_said_so(fraction, need):
    # 5e-324: "internal error (OverflowError: cannot convert float infinity to integer)"; 1e-300:
    # a figure of 300 digits
    with pytest.raises(CharrnnError, match=re.escape(f"needs {need} (2 per part)")):
        split(np.arange(6000) % 3, (0.95 - fraction, fraction, 0.05))
