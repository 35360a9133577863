"""`charrnn` and `python -m charrnn`: the command line (cli.py), behind the one thing that cannot
wait for its imports. In a process an MPI launcher started, Ctrl-C and SIGUSR1 are held from
here on (distributed.StopsHeld): one that came while importing would end this rank alone."""
from .distributed import HELD


def main():
    HELD.hold()
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
        # from one of them, or kill the process by the signal
        HELD.ignore()


if __name__ == "__main__":
    main()
