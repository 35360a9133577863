"""One process at a time in a run folder.

A trainer holds an exclusive flock on RUN/.lock while it reads or writes the run, so two
trainers cannot train, or resume, the same run. The lock belongs to an open file: the kernel
drops it when the process ends, however it ends (kill -9 included), so a crash never leaves a
stale lock behind. The file itself stays (removing it would let a third process lock a new
file while a second still holds the old one); it holds the pid of the last holder.

The run's files that a trainer writes in place (the lock, the logs) are opened as plain files
only, never through a symbolic link (open_run_file): a run folder from elsewhere (a tarball, a
shared disk) could hold `.lock -> ~/notes.txt`, and the write would have replaced the file it
names. A log linked on purpose is refused as well, with the command that puts a copy in its
place. Checkpoints are written beside their place and renamed onto it (checkpoint.py), which
replaces a link rather than writing through it.
"""
import errno
import os
import stat
from pathlib import Path

from .errors import CharrnnError, os_error_message, shell_word

try:
    import fcntl
except ImportError:  # not a POSIX system: no lock, as before
    fcntl = None

LOCK_FILE = ".lock"


class RunLock:
    def __init__(self, run_dir):
        self.run_dir = Path(run_dir)
        self.fd = None

    def acquire(self, resuming=False):
        """Take the lock, making the folder if needed. A CharrnnError if another process holds it
        (a resume is told to wait: it takes no --run to choose another) or the folder cannot be
        written."""
        path = self.run_dir / LOCK_FILE
        try:
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise _refused(e) from None
            fd = open_run_file(path, os.O_RDWR | os.O_CREAT)
        except CharrnnError as e:  # the system's "choose another place" is no choice for a resume
            if resuming and getattr(e, "errno", None) == errno.EROFS:
                raise CharrnnError(f"{self.run_dir} is on a read-only file system, and a run resumes in its own "
                                   "folder: copy the folder where it can be written, and resume the copy") from None
            raise
        if fcntl is None:
            self.fd = fd
            return self
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _written_pid(fd)
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                advice = "then resume the run" if resuming else "or choose another --run name"
                raise CharrnnError(f"{self.run_dir} is in use by another charrnn process{pid_shown(holder)}; wait "
                                   f"for it to finish, {advice}") from None
            raise CharrnnError(os_error_message(e, path)) from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as e:  # a full disk: the lock file named
            os.close(fd)
            raise CharrnnError(os_error_message(e, path)) from None
        self.fd = fd
        return self

    def release(self):
        if self.fd is not None:
            os.close(self.fd)  # closing the file drops the lock
            self.fd = None

    def __del__(self):
        self.release()


def held_by(run_dir):
    """What the process holding run_dir's lock wrote in it (its pid), if another process holds
    it; None where none does, or this one does (its own pid). The lock is taken and let go at
    once where it is free: a probe, for a message."""
    if fcntl is None:
        return None
    try:  # a plain file only: a FIFO in its place would hold the open until written (O_NONBLOCK too)
        fd = os.open(Path(run_dir) / LOCK_FILE, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError:  # no lock file: no trainer has held it
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    except OSError as e:
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            return None
        holder = _written_pid(fd)
        return None if holder == str(os.getpid()) else holder
    finally:
        os.close(fd)


def _written_pid(fd) -> str:
    """What the lock's holder wrote in the lock file open at fd: its pid."""
    return os.read(fd, 32).decode("ascii", "replace").strip()


def pid_shown(holder) -> str:
    """' (pid N)' for a lock's holder that wrote its pid, for a message; '' otherwise."""
    return f" (pid {holder})" if holder.isdigit() else ""


def _refused(e: OSError, path=None) -> CharrnnError:
    """The CharrnnError for e, which keeps e's errno (for RunLock.acquire)."""
    error = CharrnnError(os_error_message(e, path))
    error.errno = e.errno
    return error


def open_run_file(path: Path, flags: int) -> int:
    """os.open(path, flags) for a file of the run folder that charrnn writes in place: a
    CharrnnError if path is a symbolic link or anything but a plain file (a FIFO, which an open
    for writing would wait on), or cannot be opened."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        mode = stat.S_IFREG  # made by the open
    except OSError as e:
        raise _refused(e, path) from None
    try:
        if stat.S_ISREG(mode):
            return os.open(path, flags | getattr(os, "O_NOFOLLOW", 0), 0o666)  # a link made since: ELOOP
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise _refused(e, path) from None
        mode = stat.S_IFLNK
    raise _not_plain(path, mode)


def check_run_file(path: Path, flags: int) -> None:
    """The CharrnnError open_run_file(path, flags) would raise for a file of the run in path's
    place, if any, now (it is opened so, and closed): a resume says so before it says what it
    changes, rather than after."""
    if os.path.lexists(path):
        os.close(open_run_file(path, flags))


def _not_plain(path: Path, mode: int) -> CharrnnError:
    if not stat.S_ISLNK(mode):
        return CharrnnError(f"{path} is not a plain file, where charrnn keeps a file of the run's own; remove it")
    try:
        target = Path(path).resolve()
        named = target.is_file()
    except (OSError, RuntimeError):  # RuntimeError: links in a loop (before Python 3.13)
        named = False
    keep = (f"to keep what it names, put a copy in its place: cp --remove-destination {shell_word(target)} "
            f"{shell_word(path)}" if named else "remove it")
    return CharrnnError(f"{path} is a symbolic link, where charrnn keeps a file of the run's own, and it writes "
                        f"through no link; {keep}")
