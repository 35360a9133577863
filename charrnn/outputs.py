"""Files a command writes beside what it prints: `plot --png`, `gradflow --png`, `inspect --html`.

The path is checked before the work, so a name that is sure to fail (no such folder, a folder's
name) costs no measurement; its name must end as the file it will hold (.png, .html), so that a
slip of the keyboard never writes a chart or a page over a checkpoint or a text. The file is
written beside its place and renamed onto it: a write that fails (a full disk) leaves what was
there, and a link at the path is replaced by the file, not written through.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path

from .errors import CharrnnError, UsageError, file_in_the_way, os_error_message

PNG = (".png",)
HTML = (".html", ".htm")


def check_output(path, option: str, endings: tuple[str, ...], reads: dict | None = None) -> Path:
    """`path` as given to `option` (--png), if it names a file ending in one of `endings` inside
    a folder that exists, and none of the files the command `reads` ({what: path}, FILE: the
    text); else a one-line error."""
    p = Path(path)
    if p.suffix.lower() not in endings or not p.stem:
        raise UsageError(f"{option} {str(path)!r}: give a file name ending in {' or '.join(endings)}")
    for what, read in (reads or {}).items():
        if read is not None and _same_file(p, Path(read)):  # it would be replaced by what was made of it
            raise UsageError(f"{option} {path} is the file {what} names, which this command reads; choose another name")
    if p.is_dir():  # as a file where a folder should be: the file system's, exit 1
        raise CharrnnError(f"cannot write {path}: it is a folder; give a file name ending in {' or '.join(endings)}")
    if not p.parent.is_dir():
        up = file_in_the_way(p.parent)
        if up is not None:
            raise CharrnnError(f"cannot write {path}: {up} is a file, not a folder; choose another {option} path")
        raise CharrnnError(f"cannot write {path}: there is no folder {p.parent}; create it, or choose another "
                           f"{option} path")
    return p


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and a.samefile(b)
    except OSError:  # unreadable: check_output's other checks, or the write, say what is wrong
        return False


def write_output(path: Path, write) -> None:
    """write(temporary path) makes the file beside `path`; then it replaces path. The temporary's
    name holds the start of path's, so that it is no longer than a name can be (255 bytes)."""
    tmp = path.with_name(f".{os.fsdecode(os.fsencode(path.name)[:200])}.{secrets.token_hex(6)}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:  # named by the file asked for, not the temporary
        e.filename = e.filename2 = None
        raise CharrnnError(f"cannot write {os_error_message(e, path)}") from None
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # (not there, or never made: the error above, if any, is the one to say)
            pass


def shown_name(path) -> str:
    """A path as text that any page or chart can hold: the bytes of a name that is not UTF-8
    (kept by Python as lone surrogates, which no encoder writes) shown as U+FFFD."""
    return os.fsencode(path).decode("utf-8", "replace")
