"""`charrnn` and `python -m charrnn`: the command line (cli.py), behind the one thing that cannot
wait for its imports. In a process an MPI launcher started, Ctrl-C and SIGUSR1 are held from
here on (distributed.StopsHeld): one that came while importing would end this rank alone. In
one process, every command takes SIGTERM as Ctrl-C from here on, and `train` SIGUSR1 too
(distributed.stop_at_once_until_training): by default they would kill the process without a
word. A stop signal the process started with ignored stays ignored throughout."""
import os
import re
import signal
import sys
import warnings

try:
    from .distributed import HELD, sigterm_as_ctrl_c, stop_at_once_until_training
except KeyboardInterrupt:  # Ctrl-C in the first tenth of a second: no traceback of an import
    raise SystemExit(130)



def numba_unreadable(names=r"\w+") -> str:
    """The start of numba's warning that it cannot read the value of one of `names` (a regular
    expression), which it then ignores; the name and the value as groups."""
    return rf"Environment variable '(?P<name>{names})' is defined but its associated value '(?P<value>.*)'"


def numba_cannot_read(message: str):
    """(NAME='value', NAME, the reason) from numba's warning text that it cannot read a value;
    None for any other text."""
    unreadable = re.match(numba_unreadable(), message)
    if unreadable is None:
        return None
    why = [line.strip() for line in message.splitlines() if line.strip()][-1].rstrip(".")  # its exception's line
    return f"{unreadable['name']}={unreadable['value']!r}", unreadable["name"], why


def numba_values_must_be_read():
    """numba warns, with a traceback in the text, that it cannot read a NUMBA_* value, and goes
    on without it. For a variable set, not empty, in the environment that is an error, which
    cli says in one line ("numba cannot start"), exit 1. An empty one (NUMBA_X= cmd, as to
    unset it) and a value of .numba_config.yaml, which numba reads too (its `opt: 3` is a
    number, where numba wants text), get one line saying numba goes on without it. So does
    charrnn's notes (errors.Note: numba could not save the kernels to its cache, say)."""
    from .errors import Note, say_note
    from .errors import one_line as said_in_one_line

    names = [re.escape(k) for k, v in os.environ.items() if k.startswith("NUMBA_") and v]
    if names:
        warnings.filterwarnings("error", numba_unreadable("|".join(names)), RuntimeWarning, r"numba\.core\.config")
    shown = warnings.showwarning

    def one_line(message, category, *args, **kwargs):
        if issubclass(category, Note):
            return say_note(f"note: {said_in_one_line(str(message))}")
        unreadable = numba_cannot_read(str(message)) if category is RuntimeWarning else None
        if unreadable is None:
            return shown(message, category, *args, **kwargs)
        value, name, why = unreadable
        where = "" if name in os.environ else " from .numba_config.yaml"
        say_note(f"note: numba cannot read {value}{where} ({why}) and goes on without it")

    warnings.showwarning = one_line


def command_named(args) -> str:
    """The command a command line names: its first word that is not an option (the app itself
    takes none but --help)."""
    return next((a for a in args if not a.startswith("-")), "")


def closed_streams_held():
    """A standard stream started closed (>&-, 2>&-) leaves its descriptor free, and the next file
    or socket opened takes it: MPI's, into which anything written to stderr would then go (an
    MPI job aborted at exit, 1 run in 6). /dev/null holds it instead; Python's sys.stdout and
    sys.stderr stay None, so that the commands still see the stream closed."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # the lowest free descriptor: this one


def main():
    closed_streams_held()
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        # Ctrl-C as Python's handler, noted (HELD.seen); under a launcher, held first (HELD.hold)
        # and this handler again once the ranks have joined (HELD.restore: every command but train)
        signal.signal(signal.SIGINT, HELD.interrupt)
    HELD.hold()
    numba_values_must_be_read()
    # numpy's warnings of overflow or an invalid value in our arithmetic (a broken model): what
    # comes of them, NaN or Inf, is detected and said in one line; the warnings would add lines
    # with our source paths
    warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"charrnn\.")
    if sys.stdout is not None and getattr(sys.stdout, "errors", None) == "strict":
        # a file name that is not UTF-8 (its bytes held as lone surrogates) prints as its bytes,
        # as Python does in the C locale, rather than failing the command in a UTF-8 locale
        sys.stdout.reconfigure(errors="surrogateescape")
    if not HELD.holding and command_named(sys.argv[1:]) == "train":
        stop_at_once_until_training(one_process=True)
    elif command_named(sys.argv[1:]) != "train":
        # any other command, SIGTERM (timeout's, a scheduler's) ends as Ctrl-C does: exit 130,
        # a file half written removed (outputs.write_output); by default it killed the process
        # without a word and left the file's temporary behind
        sigterm_as_ctrl_c()
    try:
        from . import cli
    except KeyboardInterrupt:  # one process (under a launcher, stops are held): as Ctrl-C ends it later
        raise SystemExit(130)
    cli.owns_process = True
    try:
        cli.main()
    except KeyboardInterrupt:  # in the last lines of cli.main, after its own handling let go
        raise SystemExit(130)
    finally:
        # The command has ended, its exit code settled: a stop in the exit's last hundredths of
        # a second (Python's atexit callbacks; MPI's shutdown) would only print a traceback
        # from one of them, or kill the process by the signal; one in the moment before that took
        # hold (the ignoring of the signals one by one) is one of those
        while True:
            try:
                HELD.ignore()
                break
            except KeyboardInterrupt:
                pass


if __name__ == "__main__":
    main()
