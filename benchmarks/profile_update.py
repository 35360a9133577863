"""Where one training update's time goes, function by function: Linux `perf` samples a process
running updates (T=100, B=32, one layer, as bench_kernels.py), and the share of the samples in
each function is printed, both threads together.

perf names the compiled kernels only through a map of their addresses, which this script
writes for perf (/tmp/perf-<pid>.map) from numba's compiled libraries. Code numba loads from
its cache has no such library, so the kernels compile afresh here, in a temporary cache (10-20
s). "[waiting]" is the time threads spent in the OpenMP runtime: a thread waiting for the other
at the end of a parallel loop, or the worker idle while the main thread runs serial code (with
numba's OpenMP threading layer; another layer's time shows under its own library's name).
"[a parallel loop's body]" is the code numba wrote around the loops' calls, every loop together;
"python" the interpreter. A last line gives each thread's share of "[waiting]" and "python" among
its own samples: the main thread's waiting is for the others at the end of a loop, the others'
includes the main thread's serial code. The OpenBLAS override some machines set is lifted, as users run.

With --annotate NAME, the instructions of each function whose name holds NAME (as printed, e.g.
`lstm._lstm_forward_panel`) follow, by their share of that function's samples: the machine code
is read from this process and disassembled with objdump (binutils). A sample names the oldest
instruction not yet finished when it was taken: mostly one waiting, for memory or for an
earlier result, so the time is that instruction's or its neighbours' just before it.

    python benchmarks/profile_update.py lstm 128
    python benchmarks/profile_update.py gru 256 --seconds 10 --dropout 0.4
    python benchmarks/profile_update.py lstm 128 --annotate _lstm_forward_panel

Needs `perf` (linux-tools) and the permission to sample one's own processes
(/proc/sys/kernel/perf_event_paranoid at most 2).
"""
import argparse
import bisect
import gc
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from machine import describe, lift_openblas  # noqa: E402



def perf_refusal():
    """Why perf cannot sample here (one line), or None: tried on a process of its own."""
    if shutil.which("perf") is None:
        return "perf is not installed (linux-tools)"
    with tempfile.TemporaryDirectory() as tmp:
        trial = subprocess.run(["perf", "record", "-q", "-N", "-o", f"{tmp}/trial.data", "--", "true"],
                               capture_output=True, text=True)
    if trial.returncode != 0:
        lines = [line.strip() for line in trial.stderr.splitlines() if line.strip()]
        return f"perf cannot sample here: {' '.join(lines[:2]) or 'exit status ' + str(trial.returncode)}"
    return None


lift_openblas()
if "CHARRNN_PROFILE_CACHE" not in os.environ:  # compile afresh (see above), in a cache of our own
    if "-h" not in sys.argv and "--help" not in sys.argv and (refusal := perf_refusal()):
        sys.exit(f"profile_update: {refusal}")
    cache = tempfile.mkdtemp(prefix="charrnn-profile-")
    os.execve(sys.executable, [sys.executable, *sys.argv],
              {**os.environ, "NUMBA_CACHE_DIR": cache, "CHARRNN_PROFILE_CACHE": cache})


def perf_map(path):
    """Write the addresses of every function numba compiled in this process, for perf; return
    them as (address, size, mangled name), in order of address."""
    from numba.core.dispatcher import Dispatcher

    entries, seen = [], set()
    for obj in gc.get_objects():
        if not isinstance(obj, Dispatcher):
            continue
        for result in list(obj.overloads.values()):
            library = result.library
            if id(library) in seen:
                continue
            seen.add(id(library))
            for fn in library._final_module.functions:
                if not fn.is_declaration:
                    address = library.get_pointer_to_function(fn.name)
                    if address:
                        entries.append((address, fn.name))
    entries.sort()
    spans = [(address, following - address, name) for (address, name), (following, _)
             in zip(entries, entries[1:] + [(entries[-1][0] + 4096, "")])]
    with open(path, "w") as f:
        for address, size, name in spans:
            f.write(f"{address:x} {size:x} {name}\n")
    return spans


def parse(line):
    """A line of `perf script -F tid,ip,sym,dso` as (thread, address, symbol, library); symbol
    and library empty where the line has none."""
    m = re.match(r"\s*(\d+)\s+([0-9a-f]+) (.*) \((.*)\)$", line)
    if not m:
        return line.split(" ", 1)[0], 0, "", ""
    tid, ip, symbol, dso = m.groups()
    return tid, int(ip, 16), symbol, dso


def readable(symbol, dso):
    """A name for a sample's function: numba's mangled names as
    'charrnn.kernels.lstm._lstm_forward_panel', libraries' functions as they are."""
    if not dso:
        return "[unknown]"
    if "libgomp" in dso:
        return "[waiting]"  # the OpenMP runtime: perf finds no symbols in it
    if "libpython" in dso:
        return "python"
    return kernel_name(symbol)


def kernel_name(symbol):
    """numba's mangled name made readable: 'charrnn.kernels.lstm._lstm_forward_panel'."""
    m = re.match(r"(?:cfunc\.|__gufunc__\.)?_ZN(.*?)B\d+v\d+", symbol)
    if not m:
        return symbol
    parts, rest = [], m.group(1)
    while rest[:1].isdigit():
        digits = re.match(r"\d+", rest).group()
        n, rest = int(digits), rest[len(digits):]
        parts.append(rest[:n])
        rest = rest[n:]
    name = ".".join(parts)
    return "[a parallel loop's body]" if "numba_parfor_gufunc" in name else name


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cell")
    ap.add_argument("hidden", type=int)
    ap.add_argument("--vocab", type=int, default=65)
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--seconds", type=float, default=5.0, help="how long perf samples")
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--annotate", metavar="NAME", help="also the instructions of the functions whose name holds NAME")
    args = ap.parse_args()
    if args.annotate and platform.machine().lower() not in ("x86_64", "amd64"):
        sys.exit("profile_update: --annotate reads x86-64 code only")
    if args.annotate and shutil.which("objdump") is None:
        sys.exit("profile_update: --annotate needs objdump (binutils)")
    cache, perf_map_path = Path(os.environ["CHARRNN_PROFILE_CACHE"]), Path(f"/tmp/perf-{os.getpid()}.map")
    try:
        profile(args, cache, perf_map_path)
    finally:
        perf_map_path.unlink(missing_ok=True)
        shutil.rmtree(cache, ignore_errors=True)


def profile(args, cache, perf_map_path):
    import charrnn.model
    from bench_kernels import B, T, ours

    print(describe())
    update = ours(charrnn.model, args.cell, args.hidden, args.vocab, args.dropout)
    for _ in range(5):
        update()  # compiles, then warm
    times = []
    for _ in range(9):
        start = time.perf_counter()
        update()
        times.append(time.perf_counter() - start)
    per_update = sorted(times)[len(times) // 2]
    spans = perf_map(perf_map_path)
    data = cache / "perf.data"
    record = subprocess.Popen(["perf", "record", "-q", "-N", "-F", "4999", "-p", str(os.getpid()), "-o", str(data)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)  # perf attaches
    end, updates = time.perf_counter() + args.seconds, 0
    while time.perf_counter() < end:
        update()
        updates += 1
    record.send_signal(2)
    _, err = record.communicate()
    if record.returncode not in (0, -2) or not data.exists():
        sys.exit(f"profile_update: perf record failed: {' '.join(err.split())[:200]}")
    script = subprocess.run(["perf", "script", "-i", str(data), "-F", "tid,ip,sym,dso"], capture_output=True,
                            text=True)
    if script.returncode != 0:
        sys.exit(f"profile_update: perf script failed: {' '.join(script.stderr.split())[:200]}")
    samples = [parse(line) for line in script.stdout.splitlines()]
    threads = [tid for tid, _, _, _ in samples]
    names = [readable(symbol, dso) for _, _, symbol, dso in samples]
    shares = Counter(names)
    total = sum(shares.values())
    print(f"{args.cell} H={args.hidden} V={args.vocab} T={T} B={B}"
          + (f" dropout {args.dropout}" if args.dropout else "")
          + f": {per_update * 1e3:.2f} ms an update (median of 9), {updates} updates sampled, {total} samples")
    for name, n in shares.most_common(args.top):
        print(f"{100 * n / total:6.2f}%  {name}")
    print(by_thread(threads, names, str(os.getpid())))
    if args.annotate:
        annotate(args.annotate, spans, [ip for _, ip, _, _ in samples], total, args.top, cache)


def by_thread(threads, names, main):
    """One line: each thread's share of "[waiting]" and of "python" among its own samples. The
    main thread waits at the end of a parallel loop for the others (their blocks took longer);
    the others also wait while it runs serial code, Python's among it."""
    parts = []
    for tid in sorted(set(threads), key=lambda t: (t != main, t)):
        own = Counter(name for t, name in zip(threads, names) if t == tid)
        n = sum(own.values())
        parts.append(f"{'main' if tid == main else 'thread ' + tid} {100 * own['[waiting]'] / n:.1f}% waiting, "
                     f"{100 * own['python'] / n:.1f}% python")
    return "by thread: " + "; ".join(parts)


def annotate(name, spans, addresses, total, top, cache):
    """Print the `top` instructions of each sampled function whose name holds `name`, by share of
    its samples, disassembled from this process's memory. A sample belongs to the span (perf_map)
    that holds its address: a function numba compiled into several libraries has a span, and
    code, in each."""
    starts = [at for at, _, _ in spans]
    hits = {}  # span: Counter of offsets into it
    for ip in addresses:
        i = bisect.bisect_right(starts, ip) - 1
        if i >= 0 and ip < spans[i][0] + spans[i][1] and name in kernel_name(spans[i][2]):
            hits.setdefault(spans[i], Counter())[ip - spans[i][0]] += 1
    if not hits:
        print(f"\nno sampled function's name holds {name!r}")
    memory = os.open("/proc/self/mem", os.O_RDONLY)  # reading it, an unmapped page is an error, not a crash
    try:
        for (start, _, mangled), here in sorted(hits.items(), key=lambda item: -sum(item[1].values())):
            code = cache / "function.bin"
            try:
                code.write_bytes(os.pread(memory, max(here) + 16, start))
            except OSError:  # not readable after all: the offsets alone
                code.write_bytes(b"")
            listing = subprocess.run(["objdump", "-D", "-b", "binary", "-m", "i386:x86-64", "-M", "intel", str(code)],
                                     capture_output=True, text=True).stdout
            instructions = {}
            for line in listing.splitlines():
                m = re.match(r"\s*([0-9a-f]+):\t[0-9a-f ]+\t(.*)", line)
                if m:
                    instructions[int(m.group(1), 16)] = " ".join(m.group(2).split())
            n = sum(here.values())
            print(f"\n{kernel_name(mangled)} at {start:x}: {100 * n / total:.2f}% of all samples; its instructions")
            for offset, k in here.most_common(top):
                print(f"{100 * k / n:6.2f}%  {offset:5x}  {instructions.get(offset, '?')}")
    finally:
        os.close(memory)


if __name__ == "__main__":
    main()
