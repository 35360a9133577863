"""Start-up of `charrnn train` on a large corpus: peak resident memory and time until the first
update, and the time reading and encoding the text takes.

The corpus is generated once (deterministic, seed 0) into a folder kept between runs: CHARS
characters of words drawn from a fixed list of 5,000 words, with spaces, punctuation and line
breaks between them. Its alphabet has 81 characters: a-z, A-Z, 0-9, space, newline,
.,;:!?'"-() and six non-ASCII ones (é ü ß — “ ”); the curly quotes and the dash lie above
U+00FF, so Python holds the text at 2 bytes a character, as it holds most real text.

For each version (today's package, and with --against REV the package at git revision REV,
extracted to benchmarks/results/versions/ as bench_kernels.py does):

  1. `python -m charrnn train FILE --max-steps 1 ...` (the default model) runs as a process of its
     own after a warm-up run on a small file (so numba's cache is warm, as for a user's second
     run). Polling /proc, the benchmark reads its peak resident set (VmHWM) and CPU time when the
     first update's record reaches metrics.jsonl, with the wall time since the launch; then it
     stops the run (what follows, the final validation and test, is no start-up).
  2. In a fresh process: seconds to read and encode the corpus with that version's functions
     (read_corpus, and where the version's Corpus holds text rather than ids, Vocab.from_text
     and Vocab.encode).

With --ranks R (R > 1) the run is `mpiexec -n R python -m charrnn train ...` (mpi4py and its
mpiexec installed), each rank on one thread, and the memory column is the peak of the ranks'
proportional set sizes added up (Pss, from /proc/<pid>/smaps_rollup, polled every 10 ms):
pages the ranks share count once in all, so the sum is the job's memory, as R peak resident
sets would not be. CPU seconds are then left out. --repeats N measures each version N times,
taking turns.

    python benchmarks/bench_startup.py                      # today's package only
    python benchmarks/bench_startup.py --against main       # before (main) and after, one run
    python benchmarks/bench_startup.py --chars 10000000 --dir /tmp/x
    python benchmarks/bench_startup.py --ranks 4 --against 6e37c08 --repeats 2
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from machine import cpu, mpiexec, version_path  # noqa: E402

ROOT = HERE.parent
LETTERS = "abcdefghijklmnopqrstuvwxyz"
TICK = 1.0 / os.sysconf("SC_CLK_TCK")  # seconds per clock tick of /proc/<pid>/stat

# The run: the default model, one update, nothing written or evaluated before it.
TRAIN_ARGS = ["--max-steps", "1", "--time-limit", "0", "--eval-every", "1000000", "--checkpoint-every", "1000000",
              "--sample-every", "0", "--quiet"]

READ_AND_ENCODE = """
import json, sys, time
t = time.perf_counter()
corpus_module = __import__(sys.argv[1] + ".corpus", fromlist=["corpus"])
corpus = corpus_module.read_corpus([sys.argv[2]])
read = time.perf_counter() - t
if hasattr(corpus, "ids"):  # the text is encoded while it is read
    ids, vocab = corpus.ids, corpus.vocab
else:
    vocab = corpus_module.Vocab.from_text(corpus.text)
    ids = vocab.encode(corpus.text)
total = time.perf_counter() - t
print(json.dumps({"read": read, "total": total, "chars": int(ids.size), "vocab": vocab.size,
                  "dtype": str(ids.dtype)}))
"""


def words(rng, n=5000):
    """n words of 1-12 letters, some capitalised, a few with a non-ASCII letter or a digit."""
    out = []
    for _ in range(n):
        w = "".join(rng.choice(list(LETTERS), size=int(rng.integers(1, 13))))
        r = rng.random()
        if r < 0.15:
            w = w.capitalize()
        elif r < 0.17:
            w = w.upper()
        if rng.random() < 0.05:
            i = int(rng.integers(0, len(w) + 1))
            w = w[:i] + str(rng.choice(list("éüß"))) + w[i:]
        if rng.random() < 0.02:
            w += str(int(rng.integers(0, 10000)))
        out.append(w)
    return out


def generate(path: Path, chars: int, seed=0):
    """Write `chars` characters of generated text to path (UTF-8), a block at a time."""
    rng = np.random.default_rng(seed)
    vocab = np.array(words(rng), dtype=object)
    tmp = path.with_suffix(".part")
    written = 0
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        while written < chars:
            picks = vocab[rng.integers(0, len(vocab), 200_000)]
            seps = rng.choice([" "] * 40 + [", ", ". ", "; ", ": ", "! ", "? ", " - ", " — ", "\n", ".\n",
                               " (", ") ", " “", "” ", " '", "' ", ' "', '" '], size=picks.size)
            block = "".join(w + s for w, s in zip(picks.tolist(), seps.tolist()))[: chars - written]
            f.write(block)
            written += len(block)
    tmp.rename(path)


def _env(pythonpath):
    return {**os.environ, "PYTHONPATH": pythonpath, "NUMBA_NUM_THREADS": os.environ.get("NUMBA_NUM_THREADS", "1")}


def _proc(pid):
    """(peak resident bytes, CPU seconds) of a running process, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        hwm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return hwm, (int(fields[11]) + int(fields[12])) * TICK  # utime, stime


def _job_pss(marker):
    """Bytes of the proportional set sizes of the Python processes whose command line holds
    `marker` (the ranks of one job), added up."""
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            if argv[0] != sys.executable.encode() or marker.encode() not in argv:
                continue
            with open(f"/proc/{pid}/smaps_rollup") as f:
                total += next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))
        except (OSError, StopIteration):
            pass
    return total


def train_startup(pythonpath, package, corpus, out_dir, run, ranks=1):
    """Peak memory (bytes: one process's peak RSS, or with ranks > 1 the ranks' summed Pss),
    wall and CPU seconds (None for ranks > 1) of `charrnn train` at its first update."""
    cmd = [sys.executable, "-m", package, "train", str(corpus), *TRAIN_ARGS, "--out-dir", str(out_dir), "--run", run]
    if ranks > 1:
        launcher = mpiexec()
        if launcher is None:
            raise SystemExit("--ranks needs mpiexec (pip install -e '.[mpi]')")
        cmd = [launcher, "-n", str(ranks), *cmd]
    metrics = Path(out_dir) / run / "metrics.jsonl"
    t = time.perf_counter()
    log = Path(out_dir) / f"{run}.stderr"
    with open(log, "w") as err:
        child = subprocess.Popen(cmd, env=_env(pythonpath), stdout=subprocess.DEVNULL, stderr=err)
    peak = cpu_s = 0
    while child.poll() is None:
        if ranks > 1:
            peak, cpu_s = max(peak, _job_pss(str(out_dir))), None
        else:
            try:
                peak, cpu_s = _proc(child.pid)
            except (OSError, StopIteration, IndexError):
                pass
        if metrics.exists() and '"kind": "train"' in metrics.read_text():
            wall = time.perf_counter() - t
            child.send_signal(signal.SIGINT if ranks > 1 else signal.SIGKILL)  # mpiexec passes it on
            child.wait()
            return peak, wall, cpu_s
        time.sleep(0.01)
    raise SystemExit(f"{' '.join(cmd)} ended (exit {child.returncode}) before its first update:\n{log.read_text()}")


def read_and_encode(pythonpath, package, corpus):
    out = subprocess.run([sys.executable, "-c", READ_AND_ENCODE, package, str(corpus)], env=_env(pythonpath),
                         capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr)
    return json.loads(out.stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chars", type=int, default=100_000_000, help="characters of the generated corpus")
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "charrnn-bench-startup",
                    help="where the corpus is generated (kept for later runs) and runs write")
    ap.add_argument("--against", metavar="REV", help="also measure the package at this git revision (before)")
    ap.add_argument("--ranks", type=int, default=1, help="MPI ranks of the run (mpiexec -n RANKS), one thread each")
    ap.add_argument("--repeats", type=int, default=1, help="measurements of each version, taking turns")
    args = ap.parse_args()
    print(f"CPU: {cpu()}")
    args.dir.mkdir(parents=True, exist_ok=True)
    corpus = args.dir / f"corpus-{args.chars}.txt"
    if not corpus.exists():
        t = time.perf_counter()
        generate(corpus, args.chars)
        print(f"generated {corpus} in {time.perf_counter() - t:.0f} s")
    small = args.dir / "warm-up.txt"
    if not small.exists():
        generate(small, 200_000)
    launch = f"mpiexec -n {args.ranks} " if args.ranks > 1 else ""
    print(f"corpus: {corpus}, {args.chars:,} characters, {corpus.stat().st_size:,} bytes; "
          f"{launch}charrnn train {' '.join(TRAIN_ARGS)}")
    versions = ([("before " + args.against, args.against)] if args.against else []) + [("after (this tree)", None)]
    memory = "peak RSS MiB" if args.ranks == 1 else "summed Pss MiB"
    print(f"{'version':24} {memory:>14} {'B/char':>6} {'wall s':>7} {'CPU s':>6} {'read s':>7} "
          f"{'read+encode s':>13}  ids")
    for _ in range(args.repeats):
        for label, rev in versions:
            pythonpath, package = version_path(rev)
            with tempfile.TemporaryDirectory(dir=args.dir) as out_dir:
                train_startup(pythonpath, package, small, out_dir, "warm")  # compile into numba's cache
                peak, wall, cpu_s = train_startup(pythonpath, package, corpus, out_dir, "big", args.ranks)
            timing = read_and_encode(pythonpath, package, corpus)
            cpu_text = f"{cpu_s:6.1f}" if cpu_s is not None else f"{'-':>6}"
            print(f"{label:24} {peak / 2**20:14.0f} {peak / args.chars:6.1f} {wall:7.1f} {cpu_text} "
                  f"{timing['read']:7.1f} {timing['total']:13.1f}  {timing['dtype']}, vocabulary {timing['vocab']}",
                  flush=True)


if __name__ == "__main__":
    main()
