"""Checkpoints: one .npz file per save, written atomically, never pickled.

A checkpoint is a standard uncompressed .npz (a zip archive that np.load can read):

    <name>.npy      one member per array, in numpy's .npy format
    __meta__.npy    a uint8 array holding one UTF-8 JSON document: the caller's meta plus
                    "format", "format_version" and "array_sha256" (one checksum per array,
                    over its dtype string, shape and raw bytes)

save_checkpoint writes a hidden temporary file beside the target, fsyncs it and renames it over
the target, so a crash leaves either the old or the new complete file; remove_stale_temporaries
clears the temporaries of saves killed outright (kill -9).

load_checkpoint reads with allow_pickle=False, verifies the checksum of every array it reads and
turns every problem with the file into one CharrnnError line that names the file. It checks each
array's .npy header against the bytes its member holds before allocating the array, and that
the members do not overlap, so no header can make it allocate more than the file's size, nor all
of them together. (The JSON document is parsed whole: its objects cost what Python's do, up to
some tens of times its bytes for a document of empty ones.) A schema (schema.py) checks the
document and the declared shapes before any array is read, and the values after; it also names
the arrays its reader needs (a model to sample: the parameters alone), and only those are read.

The archive is written and read with zipfile + numpy.lib.format, which is exactly what np.savez
and np.load do internally, but without their limits on names: np.savez cannot take arrays named
"file" or "allow_pickle", and np.load's NpzFile confuses an array "x" with an array "x.npy".
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import secrets
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .errors import CharrnnError, counted, link_to_nothing, os_error_message

FORMAT_VERSION = 1
SUFFIX = ".npz"

FORMAT_NAME = "charrnn-checkpoint"
_META = "__meta__"  # array name of the JSON document; reserved
_CHECKSUMS = "array_sha256"  # meta key of the checksum table; added by save, removed by load
_ZIP_MAGIC = b"PK\x03\x04"
_EMPTY_ZIP = b"PK\x05\x06"  # a zip archive of no members is its end record alone
_LOCAL_HEADER = 30  # bytes of a zip member's local header, before its name (zipfile.sizeFileHeader)
_MOST_MEMBERS = 1000  # far more than any checkpoint holds: the parameters, optimizer state, a window
_LONGEST_MEMBER = 256  # bytes of a member's name, ".npy" included (save_checkpoint keeps to both)
# Bytes of the archive's directory that many members could take: a record of 46 bytes each, a name
# and its extra fields (zip64's sizes, up to 28 bytes)
_MOST_DIRECTORY = _MOST_MEMBERS * (46 + _LONGEST_MEMBER + 64)
# The zip records read from the archive's end (zipfile's layout): the end record, whose entry
# count (total) and directory size are 10 and 12 bytes in; and before it, zip64's locator and
# end record, whose count and size are 32 and 40 bytes in
_END, _END_SIZE = b"PK\x05\x06", 22
_END64_LOCATOR, _END64_LOCATOR_SIZE = b"PK\x06\x07", 20
_END64, _END64_SIZE = b"PK\x06\x06", 56
_READ_CHUNK = 1 << 24  # bytes read at a time into an array being loaded
# What a damaged or truncated archive raises while it is read: numpy raises ValueError/EOFError
# for short or malformed .npy data, zipfile BadZipFile for a broken archive or a bad CRC,
# NotImplementedError for an unknown compression method, RuntimeError for a flipped "encrypted" bit.
_READ_ERRORS = (zipfile.BadZipFile, EOFError, ValueError, zlib.error, NotImplementedError, RuntimeError)


# ---------------------------------------------------------------------------------------------
# save


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def save_checkpoint(path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write arrays and meta to `path` atomically; parent folders are created as needed.

    meta holds plain JSON types only. Object arrays are refused (ValueError): no pickle, ever.
    """
    path = Path(path)
    arrays = {name: _checked_array(name, a) for name, a in arrays.items()}
    # what load_checkpoint reads: it refuses more members, or a directory larger than theirs
    if len(arrays) >= _MOST_MEMBERS:
        raise ValueError(f"a checkpoint holds at most {_MOST_MEMBERS - 1} arrays, not {len(arrays)}")
    long = next((name for name in arrays if len(name.encode("utf-8", "surrogatepass")) > _LONGEST_MEMBER - 4), None)
    if long is not None:
        raise ValueError(f"array name {long[:40]!r}... is longer than {_LONGEST_MEMBER - 4} bytes")
    if not isinstance(meta, dict):
        raise TypeError(f"checkpoint meta must be a dict, not {type(meta).__name__}")
    _check_json(meta, "meta")
    if _CHECKSUMS in meta:
        raise ValueError(f"meta key {_CHECKSUMS!r} is reserved for the checkpoint's checksums")
    document = {
        **meta,
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        _CHECKSUMS: {name: _sha256(a) for name, a in arrays.items()},
    }
    # json writes floats with repr(), which round-trips exactly; big ints (RNG state) are exact too
    # a path that is not UTF-8 holds lone surrogates (os.fsdecode), which UTF-8 cannot encode:
    # those, and only those, are written as JSON's \uDCxx escapes, which read back the same
    text = _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m[0]):04x}", json.dumps(document, ensure_ascii=False))
    meta_bytes = text.encode("utf-8")

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Same folder as the target so that os.replace is a rename within one filesystem.
        tmp, fd = new_temporary(path)
    except OSError as e:
        raise CharrnnError(_write_error(path, e)) from e
    try:
        with open(fd, "wb") as f:
            with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
                for name, a in arrays.items():
                    _write_member(zf, name, a)
                _write_member(zf, _META, np.frombuffer(meta_bytes, dtype=np.uint8))
            f.flush()
            os.fsync(f.fileno())  # data on disk before the rename makes it visible
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)  # never leave a half-written temporary behind
        if isinstance(e, OSError):
            raise CharrnnError(_write_error(path, e)) from e
        raise
    _fsync_dir(path.parent)


def new_temporary(path: Path) -> tuple[Path, int]:
    """(tmp, fd): the hidden temporary that a write of `path` fills before it is renamed onto it,
    .<name>.<12 hex digits>.tmp (remove_stale_temporaries), made new and opened to write. O_EXCL:
    never a file that is there, someone else's or a link left in the folder; 0o666 leaves the
    mode to the umask."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)


def remove_stale_temporaries(directory, logs=()) -> list[Path]:
    """Delete the temporaries that killed writes left in `directory`: of checkpoints (each as
    large as one, hidden, never read) and of the files named in `logs` (a log rewritten on
    resume). Only for a folder that nothing is writing to, such as a run folder whose lock is
    held. Returns what was removed."""
    names = [".+" + re.escape(SUFFIX), *map(re.escape, logs)]
    temporary = re.compile(r"\.(" + "|".join(names) + r")\.[0-9a-f]{12}\.tmp")
    stale = [p for p in Path(directory).iterdir() if temporary.fullmatch(p.name) and p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def _checked_array(name, a) -> np.ndarray:
    if not isinstance(name, str) or not name:
        raise TypeError(f"checkpoint array names must be non-empty strings, got {name!r}")
    if name == _META:
        raise ValueError(f"array name {_META!r} is reserved for the checkpoint's meta document")
    a = np.asarray(a)
    if a.dtype.hasobject:
        # object arrays can only be stored by pickling them, and loading a pickle can run code
        raise ValueError(f"array {name!r} has dtype {a.dtype}; checkpoints hold no Python objects")
    return a


def _check_json(value, where: str) -> None:
    """Accept exactly what JSON gives back unchanged, so that a loaded meta equals the saved one."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_json(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where} has key {key!r}; JSON object keys must be strings")
            _check_json(item, f"{where}[{key!r}]")
        return
    raise TypeError(
        f"{where} is a {type(value).__name__}; checkpoint meta holds plain JSON types only "
        "(dict, list, str, int, float, bool, None)"
    )


def _sha256(a: np.ndarray) -> str:
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    # the bytes in C order whatever the memory layout, so save and load agree; no copy of a
    # C-contiguous array (the parameters are one), so loading a model does not hold it twice
    h.update(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
    return h.hexdigest()


def _write_member(zf: zipfile.ZipFile, name: str, a: np.ndarray) -> None:
    member = name + ".npy"
    # A fixed timestamp (ZipInfo's default) makes equal checkpoints byte-identical.
    info = zipfile.ZipInfo(member)
    if info.filename != member:  # zipfile cuts names at NUL and rewrites os.sep
        raise ValueError(f"array name {name!r} cannot be stored unchanged in a zip archive")
    # force_zip64: the size is unknown until written and may exceed 2 GiB (np.savez does the same)
    with zf.open(info, "w", force_zip64=True) as f:
        np.lib.format.write_array(f, a, allow_pickle=False)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable. Best effort: not every OS lets a folder be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_error(path: Path, e: OSError) -> str:
    return f"cannot write checkpoint {path}: {e.strerror or e}; check free disk space and permissions"


# ---------------------------------------------------------------------------------------------
# load


def load_checkpoint(path, schema=None) -> tuple[dict[str, np.ndarray], dict]:
    """Read a checkpoint into memory: (arrays, meta). Any problem with the file -> CharrnnError.

    schema, if given, has two hooks that raise CharrnnError("what is wrong"), reported as the
    file being corrupt: headers(meta, {name: (shape, dtype)}), called before any array is read,
    and arrays(meta, arrays), called once every checksum has passed; and `reads`, the names of
    the arrays it needs (None: all). Only those are read and checksummed: a model to sample
    needs its parameters, not the optimizer's moments, which are twice their size."""
    path = Path(path)
    if path.is_dir():
        raise CharrnnError(
            f"{path} is a folder, not a checkpoint file; pass a file such as {path / ('best' + SUFFIX)}"
        )
    if not path.exists():
        raise CharrnnError(f"checkpoint {path} does not exist; check the path")
    try:
        f = open(path, "rb")
    except OSError as e:
        raise CharrnnError(f"cannot read checkpoint {path}: {e.strerror or e}") from e
    with f:
        try:
            head = f.read(8)
        except OSError as e:  # a failing disk, a device that reads nothing (/proc/self/mem)
            raise CharrnnError(f"cannot read checkpoint {path}: {e.strerror or e}") from e
        if not head.startswith(_ZIP_MAGIC):
            raise CharrnnError(_not_an_archive(path, head))
        try:  # before zipfile reads the directory whole (a million members: 5 s and 360 MB)
            too_large = _directory_too_large(f, os.fstat(f.fileno()).st_size)
        except OSError as e:
            raise CharrnnError(f"cannot read checkpoint {path}: {e.strerror or e}") from e
        if too_large:
            raise CharrnnError(_corrupt(path, too_large))
        f.seek(0)
        try:
            zf = zipfile.ZipFile(f)
        except (*_READ_ERRORS, OSError) as e:  # OSError: a damaged offset can make a seek fail
            raise CharrnnError(_corrupt(path, f"not a complete zip archive: {e}")) from e
        with zf:
            return _read_archive(zf, path, os.fstat(f.fileno()).st_size, schema)


def _directory_too_large(f, size: int) -> str | None:
    """Why the archive's directory is larger than a checkpoint's, as its end records declare it
    to zipfile: zip64's end record where there is one, else the plain one's figures (which then
    may be placeholders, -1). zipfile has looked for zip64's just before its locator, and newer
    releases look where the locator points: the larger figures of the two count. None where
    they are within bounds, or where no end record is found (zipfile then says what is wrong)."""
    tail = min(size, _END_SIZE + (1 << 16))  # the end record, and up to 64 KiB after it (a comment)
    f.seek(size - tail)
    data = f.read(tail)
    if data[-_END_SIZE:].startswith(_END) and data.endswith(b"\0\0"):  # no comment, as zipfile looks first
        at = len(data) - _END_SIZE
    else:
        at = data.rfind(_END)
    if at < 0 or len(data) - at < _END_SIZE:
        return None
    declared = [struct.unpack_from("<HI", data, at + 10)]  # members, directory bytes
    end = size - tail + at  # the end record's offset
    if end >= _END64_LOCATOR_SIZE:
        f.seek(end - _END64_LOCATOR_SIZE)
        locator = f.read(_END64_LOCATOR_SIZE)
        if locator.startswith(_END64_LOCATOR):
            plain, declared = declared[0], []
            for where in (end - _END64_LOCATOR_SIZE - _END64_SIZE, struct.unpack_from("<Q", locator, 8)[0]):
                record = b""
                if 0 <= where <= size - _END64_SIZE:
                    f.seek(where)
                    record = f.read(_END64_SIZE)
                declared.append(struct.unpack_from("<QQ", record, 32) if record.startswith(_END64) else plain)
    members, directory = max(m for m, _ in declared), max(d for _, d in declared)
    if members > _MOST_MEMBERS:
        return f"it has {members:,} members, more than a checkpoint holds"
    if directory > _MOST_DIRECTORY:
        return f"its directory of members takes {directory:,} bytes, more than a checkpoint's"
    return None


def _read_archive(zf: zipfile.ZipFile, path: Path, size: int, schema) -> tuple[dict[str, np.ndarray], dict]:
    infos = zf.infolist()
    if len(infos) > _MOST_MEMBERS:  # each costs a header read and a checksum, whatever it holds
        raise CharrnnError(_corrupt(path, f"it has {len(infos):,} members, more than a checkpoint holds"))
    # Members whose bytes overlap (one's data holding another's) could each hold an array nearly as
    # large as the file, together many times its size; laid end to end, as a save lays them, their
    # local headers, names and data fit in it
    if sum(_LOCAL_HEADER + len(info.filename) + info.compress_size for info in infos) > size:
        raise CharrnnError(_corrupt(path, "its members together claim more bytes than the file holds: they overlap, "
                                          "or one is damaged"))
    members: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        if not info.filename.endswith(".npy") or info.filename[:-4] in members:
            raise CharrnnError(_corrupt(path, f"unexpected member {info.filename!r} in the archive"))
        members[info.filename[:-4]] = info
    if _META not in members:
        raise CharrnnError(_corrupt(path, f"it has no {_META} document; is it a charrnn checkpoint?"))

    # The meta document first: format and version decide how the rest may be read.
    raw = _read_member(zf, members.pop(_META), path, _META, size)
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise CharrnnError(_corrupt(path, f"its {_META} document is not a byte string"))
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except (ValueError, RecursionError):  # ValueError includes UnicodeDecodeError and JSONDecodeError
        raise CharrnnError(_corrupt(path, f"its {_META} document is not valid JSON")) from None
    if not isinstance(meta, dict):
        raise CharrnnError(_corrupt(path, f"its {_META} document is not a JSON object"))
    if meta.get("format") != FORMAT_NAME:
        raise CharrnnError(
            f"{path} is not a charrnn checkpoint (format {_show(meta.get('format'))}, expected {FORMAT_NAME!r})"
        )
    version = meta.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:  # type(): True == 1 in Python
        advice = "upgrade charrnn" if type(version) is int and version > FORMAT_VERSION else (
            "use the charrnn release that wrote it"
        )
        raise CharrnnError(
            f"{path} has checkpoint format version {_show(version)}, but this charrnn reads "
            f"version {FORMAT_VERSION} only; {advice}"
        )

    checksums = meta.pop(_CHECKSUMS, None)
    if not isinstance(checksums, dict) or not all(isinstance(v, str) for v in checksums.values()):
        raise CharrnnError(_corrupt(path, "its checksum table is missing or malformed"))
    for name in checksums:
        if name not in members:
            raise CharrnnError(_corrupt(path, f"array {_show(name)} is missing"))
    for name in members:
        if name not in checksums:
            raise CharrnnError(_corrupt(path, f"array {name!r} has no checksum"))

    if schema is not None:
        headers = {name: _read_header(zf, info, path, name, size) for name, info in members.items()}
        _apply(schema.headers, path, meta, headers)
    arrays = {}
    reads = None if schema is None else schema.reads
    for name, info in members.items():
        if reads is not None and name not in reads:
            continue
        a = _read_member(zf, info, path, name, size)
        if _sha256(a) != checksums[name]:
            raise CharrnnError(_corrupt(path, f"array {name!r} fails its checksum"))
        arrays[name] = a
    if schema is not None:
        _apply(schema.arrays, path, meta, arrays)
    return arrays, meta


def _apply(check, path: Path, *args) -> None:
    try:
        check(*args)
    except CharrnnError as e:
        raise CharrnnError(_corrupt(path, str(e))) from None


def _read_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, name: str, size: int):
    """(shape, dtype) as the member's .npy header declares them; see _check_header."""
    try:
        with zf.open(info) as f:
            shape, _, dtype = _check_header(f, info, path, name, size)
    except (*_READ_ERRORS, OSError) as e:
        raise CharrnnError(_corrupt(path, f"array {name!r} cannot be read: {e}")) from e
    return shape, dtype


def _check_header(f, info: zipfile.ZipInfo, path: Path, name: str, size: int):
    """Read the .npy header at the start of member f and check that the data it declares is
    exactly what the member holds, and the member no more than the file: only then may the
    array be allocated. Returns (shape, fortran_order, dtype)."""
    if info.compress_type != zipfile.ZIP_STORED:  # a compressed member could expand without bound
        raise CharrnnError(_corrupt(path, f"array {name!r} is compressed; charrnn writes uncompressed archives"))
    if info.file_size != info.compress_size or info.header_offset + info.compress_size > size:
        raise CharrnnError(_corrupt(path, f"array {name!r} claims more bytes than the file holds"))
    version = np.lib.format.read_magic(f)
    if version not in ((1, 0), (2, 0)):
        raise CharrnnError(_corrupt(path, f"array {name!r} has .npy format version {version}"))
    try:
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
    except Exception as e:  # the header is a Python literal; a damaged one can raise SyntaxError,
        # TypeError or tokenize's TokenError from numpy's parser, besides its ValueError
        raise CharrnnError(_corrupt(path, f"array {name!r} has a damaged .npy header ({type(e).__name__})")) from e
    if dtype.hasobject:  # stored by pickling; loading a pickle can run code
        raise CharrnnError(
            f"{path} holds pickled Python objects (array {name!r}); charrnn refuses to load them "
            "because unpickling can run arbitrary code; use a checkpoint written by charrnn"
        )
    if any(n < 0 for n in shape) or dtype.itemsize == 0:
        raise CharrnnError(_corrupt(path, f"array {name!r} declares {_show(shape)} {dtype}"))
    declared, held = math.prod(shape) * dtype.itemsize, info.file_size - f.tell()
    if declared > held:
        raise CharrnnError(_corrupt(path, f"array {name!r} is cut short: its header declares {_show(shape)} "
                                          f"{dtype}, {declared:,} bytes, and it holds {held:,}"))
    if declared < held:
        raise CharrnnError(_corrupt(path, f"array {name!r} has trailing bytes"))
    return shape, fortran, dtype


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, name: str, size: int) -> np.ndarray:
    """The member's array, allocated as its checked header declares and filled chunk by chunk
    (numpy's read_array does the same, but would parse the header a second time)."""
    try:
        with zf.open(info) as f:
            shape, fortran, dtype = _check_header(f, info, path, name, size)
            a = np.empty(math.prod(shape), dtype)
            raw = a.view(np.uint8)
            for start in range(0, raw.size, _READ_CHUNK):
                chunk = f.read(min(_READ_CHUNK, raw.size - start))
                raw[start : start + len(chunk)] = np.frombuffer(chunk, np.uint8)
                if len(chunk) < min(_READ_CHUNK, raw.size - start):
                    raise EOFError("the member ends early")
            # Reading to the end of the member makes zipfile check its CRC.
            if f.read(1):
                raise CharrnnError(_corrupt(path, f"array {name!r} has trailing bytes"))
    except (*_READ_ERRORS, OSError) as e:
        raise CharrnnError(_corrupt(path, f"array {name!r} cannot be read: {e}")) from e
    try:  # a zero-size array passes the checks of size; numpy bounds each dimension and their number
        return a.reshape(shape[::-1]).T if fortran else a.reshape(shape)
    except ValueError:
        raise CharrnnError(_corrupt(path, f"array {name!r} declares {_show(shape)} {dtype}, dimensions numpy cannot "
                                          "hold")) from None


def _show(value, limit=60) -> str:
    """repr() of a value from a file, cut short: a hostile file can hold a megabyte of digits."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _not_an_archive(path: Path, head: bytes) -> str:
    if not head:
        return _corrupt(path, "the file is empty")
    if _ZIP_MAGIC.startswith(head):
        return _corrupt(path, f"the file is cut off after {counted(len(head), 'byte')}")
    if head.startswith(_EMPTY_ZIP):  # np.savez() of no arrays
        return f"{path} is a {SUFFIX} archive of no arrays, not a charrnn checkpoint"
    if head.startswith(b"\x93NUMPY"):
        return f"{path} is a single .npy array, not a charrnn checkpoint ({SUFFIX} archive)"
    if head[:1] == b"\x80":  # pickle protocols 2 and up start with the PROTO opcode
        return (
            f"{path} looks like a Python pickle, not a charrnn checkpoint; charrnn never loads "
            "pickles because unpickling can run arbitrary code"
        )
    return f"{path} is not a charrnn checkpoint (not a {SUFFIX} archive)"


def _corrupt(path: Path, what: str) -> str:
    """'<path> is corrupt (<what>); <what to do>', pointing at the sibling checkpoint if it exists."""
    sibling = {"latest" + SUFFIX: "best" + SUFFIX, "best" + SUFFIX: "latest" + SUFFIX}.get(path.name)
    if sibling and path.with_name(sibling).is_file():
        advice = f"use another checkpoint such as {path.with_name(sibling)}"
    else:
        advice = "use another checkpoint or train again"
    return f"{path} is corrupt ({what}); {advice}"


# ---------------------------------------------------------------------------------------------
# resolve


def resolve_checkpoint(path_or_run_dir, prefer="best") -> Path:
    """A checkpoint file from a file path, a path missing its .npz, or a run folder.

    For a run folder: best.npz if prefer="best" and it exists, else latest.npz
    (prefer="latest" falls back to best.npz the same way).
    """
    if prefer not in ("best", "latest"):
        raise ValueError(f"prefer must be 'best' or 'latest', not {prefer!r}")
    p = Path(path_or_run_dir)
    try:
        if p.is_dir():
            names = ["best", "latest"] if prefer == "best" else ["latest", "best"]
            for stem in names:
                candidate = p / (stem + SUFFIX)
                if _checkpoint_file(candidate):
                    return candidate
            raise CharrnnError(
                f"{p} holds no checkpoint (expected best{SUFFIX} or latest{SUFFIX} in it); "
                "pass a checkpoint file or the run folder of a training run"
            )
        if _checkpoint_file(p):
            return p
    except OSError as e:  # what the file system says of the path itself (a name too long)
        raise CharrnnError(f"cannot read {os_error_message(e, p)}") from None
    with_suffix = p.with_name(p.name + SUFFIX)
    try:
        if p.suffix != SUFFIX and _checkpoint_file(with_suffix):
            return with_suffix
    except OSError:  # a name the suffix makes too long: no such file, and none named as typed
        pass
    raise CharrnnError(
        f"no checkpoint at {p}; pass a {SUFFIX} file or a run folder holding "
        f"best{SUFFIX} or latest{SUFFIX}"
    )


def _checkpoint_file(path: Path) -> bool:
    """Whether path is a regular file; a CharrnnError if it is there as something else that a
    read would wait on, or never end (a FIFO, a device), or as a link to nothing: a run folder's
    best.npz that links nowhere is not passed over for its latest.npz without a word."""
    if path.is_file():
        return True
    if path.is_symlink() and not path.exists():
        raise CharrnnError(link_to_nothing(path))
    if path.exists() and not path.is_dir():
        raise CharrnnError(f"{path} is not a regular file, so no checkpoint; pass a {SUFFIX} file or a run "
                           f"folder holding best{SUFFIX} or latest{SUFFIX}")
    return False
