"""Errors the user can fix. The CLI prints the message as one line and exits 1 (2 for a UsageError)."""
import errno
import numbers
import os
import re
import shlex
import sys
from pathlib import Path


def flag(name):
    """The command-line spelling of a setting, for messages: max_steps -> --max-steps."""
    return f"--{name.replace('_', '-')}"


def as_flag(name, value=None):
    """An option as the command line gives it, for messages: --top-k, or with a value --top-k 5."""
    return flag(name) if value is None else f"{flag(name)} {value}"


def as_keyword(name, value=None):
    """An argument as a Python caller gives it, for the API's messages: top_k=, or top_k=5."""
    return f"{name}=" if value is None else f"{name}={short_repr(value)}"


SHORT_REPR = 60  # characters of a value shown in a message: step("x" * 10000) repeated all of them


def short_repr(value) -> str:
    """repr(value) for a message, at most SHORT_REPR characters: a longer int named by its sign
    and digits, anything else cut short with '...'; a number repr refuses (an int of more digits
    than sys.get_int_max_str_digits(), a Fraction of one) named by its sign and type."""
    try:
        shown = repr(value)
    except ValueError:
        if not isinstance(value, numbers.Rational):
            raise
        digits = f"more than {sys.get_int_max_str_digits():,}"
    else:
        if len(shown) <= SHORT_REPR:
            return shown
        if not isinstance(value, numbers.Integral):
            return shown[: SHORT_REPR - 3] + "..."
        digits = f"{len(str(abs(int(value)))):,}"
    return f"<{'negative ' if value < 0 else ''}{type(value).__name__} of {digits} digits>"


def bytes_shown(text: str) -> str:
    """text for a message, with each byte of a file name that is not UTF-8 (os.fsdecode's lone
    surrogate, which Python's stderr would print as \\udcff) shown as \\xff."""
    return re.sub("[\udc80-\udcff]", lambda m: f"\\x{ord(m[0]) - 0xDC00:02x}", text)


# in a repr, the escape of a lone surrogate (\udcff): after an even number of backslashes, as an
# odd number ends in the escape of a backslash of the text's own (\\udcff)
_SURROGATE_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\udc([89a-f][0-9a-f])")


def escapes_shown(text: str) -> str:
    """text that holds reprs (repr_shown's, typer's usage errors), with repr's escape of each
    byte of a name that is not UTF-8 (\\udcff) written as bytes_shown writes the byte (\\xff)."""
    return _SURROGATE_ESCAPE.sub(r"\1\\x\2", text)


def repr_shown(value) -> str:
    """repr(value) for a message, with the bytes of a name that is not UTF-8 as \\xff."""
    return escapes_shown(repr(value))


# C0, DEL and C1 (U+009B starts a terminal's escape too); the marks and overrides of direction
# (U+202E turns the rest of a line around where a terminal lays out text both ways); and the
# line and paragraph separators
_CONTROLS = "\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
_CONTROL = re.compile(f"[{_CONTROLS}]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def controls_escaped(text: str) -> str:
    """text with its control characters written as escapes (\\n, \\x1b, \\x9b, \\u202e), so
    that a file name holding a line break or a terminal's escape cannot start a line of its own,
    as if charrnn had said it, steer the terminal, or turn the rest of the line around."""
    return _CONTROL.sub(lambda m: _ESCAPES.get(m[0], f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else
                                                 f"\\u{ord(m[0]):04x}"), text)


def one_line(text: str) -> str:
    """text as one line of a message on stderr (an error, a note): controls_escaped, and the
    bytes of a name that is not UTF-8 as bytes_shown shows them."""
    return bytes_shown(controls_escaped(text))


_SHOWN_AS_ESCAPE = re.compile(f"[{_CONTROLS}\udc80-\udcff]")  # what one_line writes as an escape


def shell_word(path) -> str:
    """path as one word of a command in a message, which a shell reads back as the same name:
    quoted where it must be (a run named "my run"); where it holds what one_line would show as
    an escape (a control character, a byte that is not UTF-8), in bash's $'...' with its bytes
    as \\xHH, so that the command read on screen is the command; and a relative name starting
    with '-' after ./, so that no command takes it for an option."""
    text = str(path)
    if text.startswith("-"):
        text = "./" + text
    if not _SHOWN_AS_ESCAPE.search(text):
        return shlex.quote(text)

    def escape(m):
        return "".join(f"\\x{b:02x}" for b in os.fsencode(m[0]))  # U+0085: its UTF-8, \xc2\x85

    return "$'" + _SHOWN_AS_ESCAPE.sub(escape, re.sub(r"[\\']", r"\\\g<0>", text)) + "'"


def counted(n, noun, plural=None):
    """A count and its noun, for messages: 1 update, 2 updates, 12,000 characters; `plural` where
    an s will not do (1 file or folder, 2 files and folders)."""
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {plural or noun + 's'}"


class CharrnnError(Exception):
    """A known problem with the user's input: say what went wrong and what to do about it. Its
    text is one line (one_line), whatever the names in it hold: a program's print(e) can neither
    be steered by a file name's escapes nor fail on its bytes that are not UTF-8."""

    exit_code = 1

    def __str__(self):
        return one_line(super().__str__())


class UsageError(CharrnnError):
    """Options that cannot go together (a setting a resumed run cannot change, a size that is not
    the checkpoint's): a usage error, exit 2, but one line like every other error rather than
    typer's usage box."""

    exit_code = 2


class Note(UserWarning):
    """Something a user should know that does not stop the command: the command line says it
    as one line, note: ..."""


class KernelsNotCached(Note):
    """numba could not save the kernels it compiled to its cache (kernels/_jit.py): they run, and
    compile again in the next process."""


def say_note(line: str):
    """`line` on stderr, a note: the command goes on. One that stderr cannot take (a full disk, a
    reader gone) is lost, as Python's warnings.showwarning loses a warning then, and stderr sends
    everything after it nowhere (sent_nowhere): the note is not written again with the next
    line. Written as text, not through rich, whose print ends the command on a broken pipe."""
    if sys.stderr is None:  # started closed (__main__.closed_streams_held)
        return
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        sent_nowhere(sys.stderr)


def sent_nowhere(stream):
    """What `stream` still buffers, which cannot be written (a reader gone, a full disk), sent
    nowhere: its descriptor then leads to /dev/null, so that Python does not try it again at
    exit, print "Exception ignored ... OSError" and exit 120, whatever the command's own code."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, stream.fileno())
        finally:
            os.close(null)
    except (OSError, ValueError, AttributeError):  # not a file (in-process, a test's capture)
        pass


# What to do about the failures of the system a user meets most.
_OS_ADVICE = {
    errno.ENOSPC: "free some disk space",
    errno.EDQUOT: "free some space in your disk quota",
    errno.EACCES: "check the permissions of the path",
    errno.EPERM: "check the permissions of the path",
    errno.EROFS: "choose another place",  # (after the system's "Read-only file system")
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EEXIST: "a file is in the way of a folder",
    errno.EISDIR: "it is a folder, not a file",
    errno.ENAMETOOLONG: "choose a shorter name",
}


def file_in_the_way(path) -> Path | None:
    """The first of `path` and the folders above it that exists and is not a folder: a file where
    a folder should be (None if there is none)."""
    path = Path(path)
    return next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)


def computes_nan(use: str, on: str = " on this text", grows=False, shorter="") -> CharrnnError:
    """The error for a model whose finite parameters compute NaN or Inf, to `use` ("score",
    "sample") an earlier checkpoint instead; or, where its state grows without bound
    (model.state_grows), `shorter` ("sample fewer characters") or a bounded model."""
    if grows:
        return CharrnnError(f"the model computes NaN or Inf{on}: its state grows without bound over a long stream, as "
                            f"an IndRNN unit's whose u passes 1 does; {shorter}, or train with --u-max 1")
    return CharrnnError(f"the model computes NaN or Inf{on}; its parameters are broken (a diverged run?): {use} an "
                        "earlier checkpoint")


def link_to_nothing(path) -> str:
    """The message for a path that is a symbolic link whose target does not exist (a corpus file,
    a checkpoint): where it leads, which `ls` does not show."""
    return f"{path} is a link to {os.path.realpath(path)}, which does not exist; check the link"


def os_error_message(e: OSError, path=None) -> str:
    """One line for an OSError: the path (its own, else `path`), the system's reason, and what to
    do about it."""
    if e.filename is not None:
        path = e.filename if e.filename2 is None else f"{e.filename} -> {e.filename2}"
    line = e.strerror or str(e) or type(e).__name__
    if path is not None:
        line = f"{path}: {line}"
    advice = _OS_ADVICE.get(e.errno)
    return f"{line}; {advice}" if advice else line


def check_read(names, readers: dict, option: str, chosen, whose="", what="a setting"):
    """A UsageError for a setting in `names` that none of the `chosen` values of `option` reads
    (readers: {setting: the values that read it}): --tau for --cell rnn would change nothing.
    whose: where the chosen values come from, if `option` was not given (" (the default)")."""
    for name in names:
        if name in readers and not set(readers[name]) & set(chosen):
            raise UsageError(f"{flag(name)} is {what} of {flag(option)} {' and '.join(readers[name])}; "
                             f"{flag(option)} {','.join(chosen)}{whose} has no use for it")
