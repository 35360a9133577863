"""Checkpoints: exact round trips, atomic replacement, corruption and pickle refusal, resolving."""
import errno
import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from charrnn import checkpoint
from charrnn.checkpoint import FORMAT_VERSION, SUFFIX, load_checkpoint, resolve_checkpoint, save_checkpoint
from charrnn.errors import CharrnnError


def sample_arrays(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "params": rng.standard_normal(300).astype(np.float32),
        "opt.m": rng.standard_normal((7, 5)),
        "opt.v": np.asfortranarray(rng.standard_normal((4, 6))),
        "state.layer0.hs": rng.integers(-(2**31), 2**31 - 1, (3, 4), dtype=np.int32),
        "stream/positions": np.array([0, 2**64 - 1, 2**63, 12345], dtype=np.uint64),
        "scalar": np.array(-0.1, dtype=np.float64),
        "empty": np.zeros((0, 3), dtype=np.float32),
        "flags": np.array([True, False, True]),
        # names np.savez / NpzFile cannot handle as keyword arguments or keys
        "file": np.arange(3, dtype=np.int64),
        "allow_pickle": np.arange(2, dtype=np.int16),
        "x": np.arange(4, dtype=np.int8),
        "x.npy": np.arange(5, dtype=np.int8),
    }


def sample_meta(rng=None):
    rng = rng or np.random.default_rng(1234)
    rng.random(3)  # move the state away from its seed
    return {
        "config": {"cell": "lstm", "hidden": 128, "layers": 2, "lr": 0.002, "dropout": None, "tie": False},
        "vocab": ["\n", " ", "a", "é", "\u2603"],
        "step": 1500,
        "rng": rng.bit_generator.state,
        "metrics": {"loss": [0.1 + 0.2, 1e-310, 2.0 / 3.0, float("inf")], "best": 1.2345678901234567},
    }


def assert_same_arrays(got, want):
    assert list(got) == list(want)
    for name, a in want.items():
        b = got[name]
        assert type(b) is np.ndarray, name
        assert b.dtype == a.dtype and b.shape == a.shape, name
        assert b.tobytes() == a.tobytes(), name  # bitwise, NaN-safe


def read_document(path):
    """The JSON document stored in a checkpoint, read with plain numpy."""
    with np.load(path, allow_pickle=False) as npz:
        return json.loads(npz["__meta__"].tobytes().decode("utf-8"))


def write_raw(path, document=None, **arrays):
    """A hand-made .npz, as np.savez writes it, for files save_checkpoint would never write.

    (np.savez itself cannot take arrays named "file" or "allow_pickle".)"""
    if document is not None:
        text = document if isinstance(document, str) else json.dumps(document)
        arrays["__meta__"] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    with zipfile.ZipFile(path, "w") as zf:
        for name, a in arrays.items():
            with zf.open(name + ".npy", "w") as f:
                np.lib.format.write_array(f, np.asarray(a), allow_pickle=True)


class Payload:
    """Unpickling this creates `marker`: proof that a pickle was executed."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# ---------------------------------------------------------------------------------------------
# round trip and file format


def test_round_trip_is_exact(tmp_path):
    arrays, meta = sample_arrays(), sample_meta()
    path = tmp_path / "run" / "latest.npz"
    save_checkpoint(path, arrays, meta)
    got_arrays, got_meta = load_checkpoint(path)

    assert_same_arrays(got_arrays, arrays)
    assert got_meta == {**meta, "format": "charrnn-checkpoint", "format_version": FORMAT_VERSION}
    assert "array_sha256" not in got_meta
    assert got_meta["metrics"]["loss"][0] == 0.30000000000000004
    assert got_arrays["opt.v"].flags.f_contiguous  # the memory layout survives too
    assert all(a.flags.writeable for a in got_arrays.values())  # owned, in memory, not mapped


def test_restored_rng_state_continues_the_same_stream(tmp_path):
    rng = np.random.default_rng(99)
    meta = sample_meta(rng)
    save_checkpoint(tmp_path / "c.npz", {}, meta)
    expected = rng.random(10)

    _, got_meta = load_checkpoint(tmp_path / "c.npz")
    restored = np.random.Generator(np.random.PCG64())
    restored.bit_generator.state = got_meta["rng"]
    assert restored.random(10).tobytes() == expected.tobytes()


def test_file_is_a_standard_npz_with_a_json_document(tmp_path):
    path = tmp_path / "c.npz"
    params = np.linspace(0, 1, 11, dtype=np.float32)
    save_checkpoint(path, {"params": params, "state.layer0.hs": np.ones((2, 3))}, {"step": 7})
    assert zipfile.is_zipfile(path)
    with np.load(path, allow_pickle=False) as npz:
        assert sorted(npz.files) == ["__meta__", "params", "state.layer0.hs"]
        assert npz["params"].tobytes() == params.tobytes()
    document = read_document(path)
    assert document["format"] == "charrnn-checkpoint"
    assert document["format_version"] == FORMAT_VERSION == 1
    assert document["step"] == 7
    assert set(document["array_sha256"]) == {"params", "state.layer0.hs"}


def test_a_path_that_is_not_utf8_is_kept_in_the_json_as_an_escape(tmp_path):
    # os.fsdecode holds the byte 0xE9 of a file name as the lone surrogate U+DCE9, which UTF-8
    # cannot encode: such a path in the meta made every save fail
    name = os.fsdecode(b"/texts/caf\xe9.txt")
    path = tmp_path / "c.npz"
    save_checkpoint(path, {"params": np.zeros(2)}, {"corpus": [name], "vocab": ["\u00e9", "\u4e2d"]})
    assert load_checkpoint(path)[1]["corpus"] == [name]
    with np.load(path, allow_pickle=False) as npz:
        raw = npz["__meta__"].tobytes()
    assert b"caf\\udce9" in raw and "\u00e9".encode() in raw and "\u4e2d".encode() in raw  # others stay as they are


def test_each_checksum_is_the_sha256_of_dtype_shape_and_c_order_bytes(tmp_path):
    # the format's definition, which checkpoints written by any version are checked against
    import hashlib

    arrays = {**sample_arrays(), "big-endian": np.arange(6, dtype=">f8").reshape(2, 3),
              "strided": np.arange(20, dtype=np.float32)[::3]}
    path = tmp_path / "c.npz"
    save_checkpoint(path, arrays, {})
    checksums = read_document(path)["array_sha256"]
    for name, a in arrays.items():
        want = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode() + a.tobytes(order="C")).hexdigest()
        assert checksums[name] == want, name
    got, _ = load_checkpoint(path)  # and a load checks them
    for name, a in arrays.items():
        np.testing.assert_array_equal(got[name], a)


def test_saving_the_same_content_twice_gives_identical_files(tmp_path):
    save_checkpoint(tmp_path / "a.npz", sample_arrays(), sample_meta())
    save_checkpoint(tmp_path / "b.npz", sample_arrays(), sample_meta())
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()


@pytest.mark.parametrize(
    "arrays, meta, error",
    [
        ({"bad": np.array([object(), 1], dtype=object)}, {}, ValueError),
        ({"bad": np.array([("a", None)], dtype=[("s", "U1"), ("o", "O")])}, {}, ValueError),
        ({"__meta__": np.zeros(2)}, {}, ValueError),
        ({"": np.zeros(2)}, {}, TypeError),
        ({"a\x00b": np.zeros(2)}, {}, ValueError),
        ({}, {"lr": np.float32(0.1)}, TypeError),
        ({}, {"w": np.zeros(2)}, TypeError),
        ({}, {"shape": (1, 2)}, TypeError),
        ({}, {"by_id": {1: "a"}}, TypeError),
        ({}, {"array_sha256": {}}, ValueError),
    ],
)
def test_save_refuses_what_cannot_round_trip_and_writes_nothing(tmp_path, arrays, meta, error):
    with pytest.raises(error):
        save_checkpoint(tmp_path / "c.npz", arrays, meta)
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# atomic writes


def test_save_replaces_an_existing_checkpoint_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "run" / "best.npz"
    save_checkpoint(path, sample_arrays(0), {"step": 1})
    save_checkpoint(path, sample_arrays(1), {"step": 2})
    arrays, meta = load_checkpoint(path)
    assert_same_arrays(arrays, sample_arrays(1))
    assert meta["step"] == 2
    assert os.listdir(path.parent) == ["best.npz"]


def test_save_fsyncs_a_complete_temporary_then_renames_it(tmp_path, monkeypatch):
    path = tmp_path / "latest.npz"
    save_checkpoint(path, sample_arrays(0), {"step": 1})
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("fsync")
        real_fsync(fd)

    def replace(src, dst):
        src = os.fspath(src)
        events.append("replace")
        name = os.path.basename(src)
        assert os.path.dirname(src) == str(tmp_path) and os.fspath(dst) == str(path)
        assert name.startswith(".") and name.endswith(".tmp")
        # at the moment of the rename the temporary is already a complete checkpoint
        arrays, meta = load_checkpoint(src)
        assert_same_arrays(arrays, sample_arrays(1))
        assert meta["step"] == 2
        # and the old checkpoint is still complete
        assert load_checkpoint(path)[1]["step"] == 1
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    save_checkpoint(path, sample_arrays(1), {"step": 2})
    assert "replace" in events and events.index("fsync") < events.index("replace")
    assert load_checkpoint(path)[1]["step"] == 2
    assert os.listdir(tmp_path) == ["latest.npz"]


def test_failed_rename_keeps_the_old_checkpoint_and_removes_the_temporary(tmp_path, monkeypatch):
    path = tmp_path / "latest.npz"
    save_checkpoint(path, sample_arrays(0), {"step": 1})
    before = path.read_bytes()

    def replace(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(CharrnnError, match="No space left on device"):
        save_checkpoint(path, sample_arrays(1), {"step": 2})
    monkeypatch.undo()

    assert os.listdir(tmp_path) == ["latest.npz"]
    assert path.read_bytes() == before
    arrays, meta = load_checkpoint(path)
    assert_same_arrays(arrays, sample_arrays(0))
    assert meta["step"] == 1


def test_failure_while_writing_keeps_the_old_checkpoint_and_removes_the_temporary(tmp_path, monkeypatch):
    path = tmp_path / "latest.npz"
    save_checkpoint(path, sample_arrays(0), {"step": 1})
    before = path.read_bytes()
    real_write_array = np.lib.format.write_array
    calls = []

    def write_array(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # interrupted halfway through the archive
        return real_write_array(*args, **kwargs)

    monkeypatch.setattr(np.lib.format, "write_array", write_array)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, sample_arrays(1), {"step": 2})
    monkeypatch.undo()

    assert len(calls) == 3
    assert os.listdir(tmp_path) == ["latest.npz"]
    assert path.read_bytes() == before
    assert load_checkpoint(path)[1]["step"] == 1


# ---------------------------------------------------------------------------------------------
# damaged files


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "run" / "latest.npz"
    arrays, meta = sample_arrays(), sample_meta()
    save_checkpoint(path, arrays, meta)
    return path, arrays, meta


@pytest.mark.parametrize("cut", ["empty", 1, 100, "half", -100, -22, -10, -1])
def test_truncated_file_is_refused(saved, cut):
    path, _, _ = saved
    blob = path.read_bytes()
    n = {"empty": 0, "half": len(blob) // 2}.get(cut, cut)
    path.write_bytes(blob[:n])
    with pytest.raises(CharrnnError, match="latest.npz is corrupt"):
        load_checkpoint(path)


def test_every_truncation_is_refused(tmp_path):
    path = tmp_path / "c.npz"
    save_checkpoint(path, {"params": np.arange(40, dtype=np.float32), "scalar": np.array(2.5)}, {"step": 3})
    blob = path.read_bytes()
    for n in range(len(blob)):
        # a fresh file each time: rewriting one file in place is slow on ext4
        cut = tmp_path / f"cut{n}.npz"
        cut.write_bytes(blob[:n])
        with pytest.raises(CharrnnError):
            load_checkpoint(cut)
        cut.unlink()


def test_flipped_byte_in_array_data_is_detected(saved):
    path, arrays, _ = saved
    blob = bytearray(path.read_bytes())
    data = arrays["params"].tobytes()
    start = blob.find(data)
    assert start > 0 and blob.find(data, start + 1) == -1  # the data region, found exactly once
    blob[start + len(data) // 2] ^= 0x10
    path.write_bytes(bytes(blob))
    with pytest.raises(CharrnnError, match=r"latest\.npz is corrupt \(array 'params'"):
        load_checkpoint(path)


def test_checksum_catches_changed_data_with_a_valid_zip_crc(saved):
    # A rewritten archive has correct CRCs, so only the stored sha256 can notice the change.
    path, arrays, _ = saved
    document = read_document(path)
    changed = dict(arrays)
    changed["params"] = arrays["params"].copy()
    changed["params"][17] += 1
    bad = path.with_name("changed.npz")
    with zipfile.ZipFile(bad, "w") as zf:
        for name, a in changed.items():
            with zf.open(name + ".npy", "w") as f:
                np.lib.format.write_array(f, a)
        with zf.open("__meta__.npy", "w") as f:
            np.lib.format.write_array(f, np.frombuffer(json.dumps(document).encode(), np.uint8))
    with zipfile.ZipFile(bad) as zf:
        assert zf.testzip() is None
    with pytest.raises(CharrnnError, match=r"array 'params' fails its checksum"):
        load_checkpoint(bad)


def test_checksum_covers_dtype_and_shape(saved):
    path, arrays, _ = saved
    document = read_document(path)
    bad = path.with_name("reshaped.npz")
    write_raw(bad, document, **{**arrays, "opt.m": arrays["opt.m"].reshape(5, 7)})
    with pytest.raises(CharrnnError, match=r"array 'opt\.m' fails its checksum"):
        load_checkpoint(bad)
    write_raw(bad, document, **{**arrays, "params": arrays["params"].view(np.int32)})
    with pytest.raises(CharrnnError, match=r"array 'params' fails its checksum"):
        load_checkpoint(bad)


def test_member_with_trailing_bytes_is_refused(saved):
    # every member is read to its end, so zipfile checks the CRC of all of it
    path, arrays, _ = saved
    with zipfile.ZipFile(path) as zf:
        members = {info.filename: zf.read(info) for info in zf.infolist()}
    members["params.npy"] += b"\0" * 8
    with zipfile.ZipFile(path, "w") as zf:
        for member, data in members.items():
            zf.writestr(member, data)
    with pytest.raises(CharrnnError, match=r"array 'params' has trailing bytes"):
        load_checkpoint(path)


def test_any_single_bit_flip_is_refused_or_harmless(saved):
    """Flip one bit at every position: the load must fail cleanly or return the exact original."""
    path, arrays, meta = saved
    arrays, meta = {"params": arrays["params"][:40], "scalar": arrays["scalar"]}, {"step": 3, "x": 0.1}
    save_checkpoint(path, arrays, meta)
    blob = path.read_bytes()
    refused = 0
    for i in range(len(blob)):
        flipped = bytearray(blob)
        flipped[i] ^= 0x04
        variant = path.with_name(f"flip{i}.npz")  # a fresh file: see test_every_truncation_is_refused
        variant.write_bytes(bytes(flipped))
        try:
            got_arrays, got_meta = load_checkpoint(variant)
        except CharrnnError:
            refused += 1
            continue
        finally:
            variant.unlink()
        assert_same_arrays(got_arrays, arrays)
        assert got_meta == {**meta, "format": "charrnn-checkpoint", "format_version": 1}
    assert refused > len(blob) // 2


def test_corrupt_message_points_at_the_sibling_checkpoint(saved):
    path, arrays, meta = saved
    save_checkpoint(path.with_name("best.npz"), arrays, meta)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CharrnnError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message and "use another checkpoint such as" in message
    assert str(path.with_name("best.npz")) in message


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(format_version=2), r"format version 2, but this charrnn reads version 1"),
        (lambda d: d.update(format_version=0), r"format version 0, but this charrnn reads version 1"),
        (lambda d: d.update(format_version="1"), r"format version '1'"),
        (lambda d: d.update(format_version=True), r"format version True"),
        (lambda d: d.pop("format_version"), r"format version None"),
        (lambda d: d.update(format="something-else"), r"not a charrnn checkpoint \(format 'something-else'"),
        (lambda d: d.pop("format"), r"not a charrnn checkpoint \(format None"),
        (lambda d: d.pop("array_sha256"), r"corrupt \(its checksum table is missing"),
        (lambda d: d["array_sha256"].pop("opt.m"), r"corrupt \(array 'opt\.m' has no checksum"),
        (lambda d: d["array_sha256"].update(extra="0" * 64), r"corrupt \(array 'extra' is missing"),
    ],
)
def test_bad_meta_document_is_refused(saved, change, message):
    path, arrays, _ = saved
    document = read_document(path)
    change(document)
    write_raw(path, document, **arrays)
    with pytest.raises(CharrnnError, match=message):
        load_checkpoint(path)


def test_upgrade_advice_for_a_newer_format(saved):
    path, arrays, _ = saved
    document = read_document(path)
    document["format_version"] = FORMAT_VERSION + 1
    write_raw(path, document, **arrays)
    with pytest.raises(CharrnnError, match="upgrade charrnn"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "document, message",
    [
        (None, r"corrupt \(it has no __meta__ document"),
        ("{not json", r"corrupt \(its __meta__ document is not valid JSON"),
        ("[1, 2]", r"corrupt \(its __meta__ document is not a JSON object"),
    ],
)
def test_missing_or_invalid_meta_document_is_refused(tmp_path, document, message):
    path = tmp_path / "c.npz"
    write_raw(path, document, params=np.zeros(3))
    with pytest.raises(CharrnnError, match=message):
        load_checkpoint(path)


def test_meta_document_that_is_not_utf8_is_refused(tmp_path):
    path = tmp_path / "c.npz"
    write_raw(path, __meta__=np.frombuffer(b'{"a": "\xff"}', dtype=np.uint8))
    with pytest.raises(CharrnnError, match="not valid JSON"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"hello, this is text\n", r"not a charrnn checkpoint \(not a \.npz archive\)"),
        (b"", r"corrupt \(the file is empty\)"),
    ],
)
def test_files_that_are_not_archives_are_refused(tmp_path, content, message):
    path = tmp_path / "c.npz"
    path.write_bytes(content)
    with pytest.raises(CharrnnError, match=message):
        load_checkpoint(path)


def test_an_npz_archive_of_no_arrays_is_said_to_be_one(tmp_path):
    # "not a .npz archive", of a file np.savez wrote
    path = tmp_path / "c.npz"
    np.savez(path)
    with pytest.raises(CharrnnError, match=r"c\.npz is a \.npz archive of no arrays, not a charrnn checkpoint$"):
        load_checkpoint(path)


def test_plain_npy_file_is_refused(tmp_path):
    path = tmp_path / "c.npz"
    with open(path, "wb") as f:
        np.save(f, np.zeros(4))
    with pytest.raises(CharrnnError, match=r"single \.npy array"):
        load_checkpoint(path)


def test_missing_file_and_folder_are_refused(tmp_path):
    with pytest.raises(CharrnnError, match=r"nope\.npz does not exist"):
        load_checkpoint(tmp_path / "nope.npz")
    with pytest.raises(CharrnnError, match="is a folder"):
        load_checkpoint(tmp_path)


# ---------------------------------------------------------------------------------------------
# pickles are never executed


def test_payload_really_runs_when_unpickled(tmp_path):
    """Control for the tests below: the payload does create its marker when pickle runs it."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()


def test_pickle_file_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.npz"
    with open(path, "wb") as f:
        pickle.dump(Payload(marker), f)
    with pytest.raises(CharrnnError, match="pickle"):
        load_checkpoint(path)
    assert not marker.exists()


def test_npy_with_object_array_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.npz"
    with open(path, "wb") as f:
        np.save(f, np.array([Payload(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(CharrnnError):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("where", ["array", "meta"])
def test_npz_with_object_array_is_refused_without_running_it(saved, where):
    path, arrays, _ = saved
    marker = path.parent / "ran"
    evil = np.array([Payload(marker)], dtype=object)
    if where == "array":
        write_raw(path, read_document(path), **{**arrays, "params": evil})
    else:
        write_raw(path, **{**arrays, "__meta__": evil})
    with pytest.raises(CharrnnError, match="pickled Python objects"):
        load_checkpoint(path)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# resolve_checkpoint


def touch_checkpoint(path):
    save_checkpoint(path, {"params": np.zeros(2)}, {})
    return path


def test_resolve_a_file(tmp_path):
    path = touch_checkpoint(tmp_path / "some.npz")
    assert resolve_checkpoint(path) == path
    assert resolve_checkpoint(str(path)) == path
    with pytest.raises(CharrnnError, match=r"no checkpoint at .*missing\.npz"):
        resolve_checkpoint(tmp_path / "missing.npz")
    os.mkfifo(tmp_path / "pipe.npz")  # it was "no checkpoint at", as if nothing were there
    (tmp_path / "run").mkdir()
    os.mkfifo(tmp_path / "run" / "best.npz")  # "holds no checkpoint", or latest.npz instead
    touch_checkpoint(tmp_path / "run" / "latest.npz")
    for given in ("pipe.npz", "pipe", "run"):
        with pytest.raises(CharrnnError, match=r"\.npz is not a regular file, so no checkpoint; pass a \.npz file"):
            resolve_checkpoint(tmp_path / given)


def test_a_link_to_nothing_is_named_not_passed_over(tmp_path):
    # a run folder's best.npz linked to a checkpoint since moved: latest.npz was sampled instead,
    # without a word
    run = tmp_path / "run"
    run.mkdir()
    touch_checkpoint(run / "latest.npz")
    (run / "best.npz").symlink_to(tmp_path / "moved" / "best.npz")
    (tmp_path / "old.npz").symlink_to(tmp_path / "gone.npz")
    for given, prefer in (("run", "best"), ("old.npz", "best"), ("old", "latest")):
        with pytest.raises(CharrnnError, match=r"\.npz is a link to .*/(moved/best|gone)\.npz, which does not exist; "
                                               r"check the link$"):
            resolve_checkpoint(tmp_path / given, prefer=prefer)
    assert resolve_checkpoint(run, prefer="latest") == run / "latest.npz"  # best.npz is not looked at


def test_resolve_adds_the_missing_suffix(tmp_path):
    path = touch_checkpoint(tmp_path / "step100.npz")
    assert SUFFIX == ".npz"
    assert resolve_checkpoint(tmp_path / "step100") == path
    with pytest.raises(CharrnnError):
        resolve_checkpoint(tmp_path / "step200")


def test_resolve_a_run_folder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(CharrnnError, match=r"run holds no checkpoint \(expected best\.npz or latest\.npz"):
        resolve_checkpoint(run)

    latest = touch_checkpoint(run / "latest.npz")
    assert resolve_checkpoint(run) == latest
    assert resolve_checkpoint(run, prefer="latest") == latest

    best = touch_checkpoint(run / "best.npz")
    assert resolve_checkpoint(run) == best
    assert resolve_checkpoint(run, prefer="best") == best
    assert resolve_checkpoint(run, prefer="latest") == latest

    latest.unlink()
    assert resolve_checkpoint(run, prefer="latest") == best
    with pytest.raises(ValueError):
        resolve_checkpoint(run, prefer="newest")


def test_public_api():
    assert checkpoint.FORMAT_VERSION == 1 and checkpoint.SUFFIX == ".npz"


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="no /proc/self/mem")
def test_a_file_that_fails_as_it_is_read_is_named():
    # reading /proc/self/mem at offset 0 fails (EIO), as a failing disk does: a raw OSError
    # from the API, and the command's line did not name the file
    with pytest.raises(CharrnnError, match=r"^cannot read checkpoint /proc/self/mem: "):
        load_checkpoint("/proc/self/mem")



def _nested_archive(path, n, payload=4000):
    """A checkpoint of n uint8 arrays whose members nest, as a crafted file can: member i's data
    holds the records of members i+1... and one payload, so that n arrays of nearly the file's
    size come out of one file, every checksum and CRC valid."""
    import io
    import struct
    import zlib

    def local(name, data):
        return struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, 0, 0x21, zlib.crc32(data), len(data), len(data),
                           len(name), 0) + name

    def central(name, data, offset):
        return struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 0, 0, 0x21, zlib.crc32(data), len(data),
                           len(data), len(name), 0, 0, 0, 0, 0, offset) + name

    def npy(a):
        out = io.BytesIO()
        np.lib.format.write_array(out, a, allow_pickle=False)
        return out.getvalue()

    records, tail = [], np.ones(payload, np.uint8).tobytes()
    for i in reversed(range(n)):  # member i: its local header, its .npy header, then member i+1's record
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": (len(tail),)})
        name, data = f"z{i}.npy".encode(), header.getvalue() + tail
        records.insert(0, (name, data, len(header.getvalue()), np.frombuffer(tail, np.uint8)))
        tail = local(name, data) + data
    meta = {"format": checkpoint.FORMAT_NAME, "format_version": FORMAT_VERSION,
            "array_sha256": {name[:-4].decode(): checkpoint._sha256(a) for name, _, _, a in records}}
    meta_name, meta_data = b"__meta__.npy", npy(np.frombuffer(json.dumps(meta).encode(), np.uint8))
    body = local(meta_name, meta_data) + meta_data + tail
    directory, offset = central(meta_name, meta_data, 0), len(local(meta_name, meta_data) + meta_data)
    for name, data, header_bytes, _ in records:
        directory += central(name, data, offset)
        offset += len(local(name, data)) + header_bytes  # where its data holds the next record
    with open(path, "wb") as f:
        f.write(body + directory)
        f.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n + 1, n + 1, len(directory), len(body), 0))


def test_members_that_overlap_are_refused_before_their_arrays_are_read(tmp_path):
    # this 5.8 KB file gave five arrays of 4.1-4.8 KB, 22 KB in all; a 52 MB one of 100 members,
    # 5.2 GB, which a resume went on allocating until memory ran out (a review's crafted file)
    path = tmp_path / "nested.npz"
    _nested_archive(path, 5)
    with zipfile.ZipFile(path) as zf:  # a valid zip, each member whole
        assert sum(zf.getinfo(f"z{i}.npy").file_size for i in range(5)) > 3 * path.stat().st_size
    with pytest.raises(CharrnnError, match="its members together claim more bytes than the file holds: they overlap"):
        load_checkpoint(path)


def many_members(n: int, layout: str) -> bytes:
    """A zip of n empty members, its end records laid out as `layout` says: "plain", as written;
    "understated", the end record declaring 5 members (not their directory's size); "zip64",
    declaring 5 members in 100 bytes, zip64's records the truth, just before its locator;
    "zip64 extensible", the same with 64 bytes of zip64's extensible data between its end record
    and the locator, which points to it; "trailing", 65,536 bytes after the end record."""
    import io
    import struct

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for i in range(n):
            zf.writestr(f"a{i}.npy", b"")
    data = out.getvalue()
    end = len(data) - 22
    size, offset = struct.unpack_from("<II", data, end + 12)
    count, directory = (n, size) if layout in ("plain", "trailing") else (5, size) if layout == "understated" else (5, 100)
    plain = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, count, count, directory, offset, 0)
    extra = 64 if layout == "zip64 extensible" else 0
    record = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44 + extra, 45, 45, 0, 0, n, n, size, offset) + bytes(extra)
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, end, 1)
    return data[:end] + (record + locator if layout.startswith("zip64") else b"") + plain + bytes(
        65536 * (layout == "trailing"))


@pytest.mark.parametrize("layout, said", [
    ("plain", "it has 20,000 members"), ("trailing", "it has 20,000 members"),
    ("understated", "its directory of members takes 1,108,890 bytes, more than a checkpoint's"),
    ("zip64", "it has 20,000 members"), ("zip64 extensible", "it has 20,000 members")])
def test_an_archive_of_too_many_members_is_refused_before_its_directory_is_read(tmp_path, monkeypatch, layout, said):
    # zipfile reads every member's record before any can be counted: a million took 5 s and 360 MB;
    # the end records declare how many, and how large their directory is, read as zipfile reads
    # them (an end record 65,558 bytes from the file's end was found by zipfile, not by the check)
    path = tmp_path / "many.npz"
    path.write_bytes(many_members(20_000, layout))
    if layout != "zip64 extensible":  # (as newer releases of zipfile read it, where the locator points)
        with zipfile.ZipFile(path) as zf:  # as zipfile reads it: every member, whatever the count says
            assert len(zf.infolist()) == 20_000

    def not_read(*args, **kwargs):
        raise AssertionError("zipfile read the directory")

    monkeypatch.setattr(zipfile, "ZipFile", not_read)
    with pytest.raises(CharrnnError, match=said):
        load_checkpoint(path)


def test_a_zip64_checkpoint_whose_plain_end_record_holds_placeholders_loads(tmp_path, monkeypatch):
    # the zip format lets a writer put -1 in the plain end record's figures where zip64's hold
    # them (Go's archive/zip does, for any archive that needs zip64: a checkpoint over 4 GiB
    # repacked); zipfile reads zip64's, and the check took the placeholders for 65,535 members
    import struct

    path = tmp_path / "zip64.npz"
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 100)  # zip64's records for a small archive
    save_checkpoint(path, {"w": np.arange(100, dtype=np.float32)}, {"m": 1})
    monkeypatch.undo()
    data = bytearray(path.read_bytes())
    assert data[-22 - 20 : -22].startswith(b"PK\x06\x07")  # zip64's locator, before the plain end record
    struct.pack_into("<HHI", data, len(data) - 22 + 8, 0xFFFF, 0xFFFF, 0xFFFFFFFF)
    path.write_bytes(data)
    arrays, meta = load_checkpoint(path)
    assert np.array_equal(arrays["w"], np.arange(100, dtype=np.float32)) and meta["m"] == 1


def test_what_save_writes_load_reads_at_the_bounds_on_members(tmp_path):
    # 999 arrays of 400-character names were saved, then refused as corrupt on loading
    path = tmp_path / "many.npz"
    with pytest.raises(ValueError, match="a checkpoint holds at most 999 arrays, not 1000"):
        save_checkpoint(path, {f"a{i}": np.zeros(0, np.uint8) for i in range(1000)}, {})  # 1001 with the document
    with pytest.raises(ValueError, match="is longer than 252 bytes"):
        save_checkpoint(path, {"é" * 127: np.zeros(0, np.uint8)}, {})
    assert not path.exists()
    longest = {f"{i:03d}".ljust(252, "a"): np.zeros(0, np.uint8) for i in range(999)}
    save_checkpoint(path, longest, {})
    assert list(load_checkpoint(path)[0]) == list(longest)
