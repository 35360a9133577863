"""Generation speed of one stream: characters per second of a 2x512 LSTM (V=65, random weights).

Ours: kernels/generate.py, a whole chunk of characters per jitted call, with each of its two
vector-matrix products: the hand loop (the default), BLAS gemv through np.dot on one thread (as
kernels/_jit.py holds it), and BLAS gemv on two threads, which only this benchmark turns on.
Theirs, if torch is installed: torch.nn.LSTM(65, 512, 2) + Linear stepped one one-hot character
at a time, sampling with torch.multinomial, torch.set_num_threads(2), inside torch.no_grad().
The two are timed in alternation in the same run; the ratio is ours (default) / torch.

Then the wall time of `charrnn sample CKPT --length 200` as a whole process (start-up, imports,
loading the kernels from numba's cache, generating, printing, exit), on a checkpoint written
here; the first run of each version warms its caches (numba's, and Python's compiled modules:
PYTHONDONTWRITEBYTECODE, if set, is lifted for these runs, as is PYTHONUNBUFFERED) and is not
counted. With --against REV the package at git revision REV is timed too, the two versions in
alternation.

    python benchmarks/bench_sample.py
    python benchmarks/bench_sample.py --chars 4000 --repeats 7 --no-torch
    python benchmarks/bench_sample.py --cli-only --cli-runs 15 --against 59b7d62
"""
import argparse
import os
import statistics
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import describe, lift_openblas, version_path

lift_openblas()  # before numpy loads OpenBLAS

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from charrnn.checkpoint import save_checkpoint  # noqa: E402
from charrnn.model import ModelSpec, init_params  # noqa: E402
from charrnn.sampling import CHUNK, Sampler  # noqa: E402

CELL, V, H, L = "lstm", 65, 512, 2
# variables of this environment that no user sets, lifted for the runs of the whole command
LIFTED = ("PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED")


def ours(params, blas, n, seed, threads=1):
    """chars/s of generating n characters in chunks, as `charrnn sample` does."""
    sampler = Sampler(ModelSpec(CELL, V, H, L), params, blas=blas)
    rng = np.random.default_rng(seed)
    last = 0
    with threadpool_limits(threads, user_api="blas"):
        t = time.perf_counter()
        for start in range(0, n, CHUNK):
            ids = sampler.generate(last, rng.random(min(CHUNK, n - start)))
            last = int(ids[-1])
        return n / (time.perf_counter() - t)


def theirs(torch, model, n):
    lstm, head = model
    x = torch.zeros(1, 1, V)
    state = None
    c = 0
    with torch.no_grad():
        t = time.perf_counter()
        for _ in range(n):
            x.zero_()
            x[0, 0, c] = 1.0
            y, state = lstm(x, state)
            p = torch.softmax(head(y[0, 0]), dim=-1)
            c = int(torch.multinomial(p, 1))
        return n / (time.perf_counter() - t)


def cli_wall_times(params, runs, versions):
    """{label: [seconds]}: `charrnn sample` of each version in versions [(label, rev or None)],
    taking turns, so that a slow phase of the machine falls on all of them alike."""
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "run" / "best.npz"
        config = {"cell": CELL, "hidden": H, "layers": L, "batch": 32, "k1": 100, "k2": 100, "encoding": "utf-8"}
        save_checkpoint(ckpt, {"params": params}, {"config": config, "vocab": list(string.printable[:V])})
        commands = {}
        for label, rev in versions:
            folder, package = version_path(rev)
            env = dict(os.environ, PYTHONPATH=str(folder) + os.pathsep + os.environ.get("PYTHONPATH", ""))
            for name in LIFTED:  # see main()
                env.pop(name, None)
            commands[label] = ([sys.executable, "-m", package, "sample", str(ckpt), "--length", "200"], env)
        times = {label: [] for label in commands}
        for i in range(runs + 1):
            for label, (cmd, env) in commands.items():
                t = time.perf_counter()
                r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
                dt = time.perf_counter() - t
                if r.returncode != 0 or len(r.stdout.rstrip("\n")) < 199:
                    raise SystemExit(f"charrnn sample ({label}) failed ({r.returncode}): {r.stderr.strip()}")
                if i == 0:
                    print(f"  {label}: first run (warms numba's cache if it is cold): {dt:.2f} s")
                else:
                    times[label].append(dt)
        return times


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chars", type=int, default=2048, help="characters per timed run of ours")
    ap.add_argument("--torch-chars", type=int, default=300, help="characters per timed run of torch")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per side (median reported)")
    ap.add_argument("--cli-runs", type=int, default=5, help="timed runs of the whole command")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    ap.add_argument("--cli-only", action="store_true", help="time only the whole command")
    ap.add_argument("--against", metavar="REV", help="also time `charrnn sample` of the package at this git revision")
    args = ap.parse_args()
    print(describe())
    params = init_params(ModelSpec(CELL, V, H, L), np.random.default_rng(0), np.float32)
    if not args.cli_only:
        generation(args, params)
    versions = ([("before " + args.against, args.against)] if args.against else []) + [("now", None)]
    print(f"`charrnn sample CKPT --length 200`, whole process, warm cache, {args.cli_runs} runs each:")
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        # which would compile charrnn's modules from source at every start, as no user's Python does
        print("  PYTHONDONTWRITEBYTECODE lifted for these runs: Python keeps charrnn's compiled modules")
    if os.environ.get("PYTHONUNBUFFERED"):
        print("  PYTHONUNBUFFERED lifted for these runs: stdout buffered, as users have it")
    times = cli_wall_times(params, args.cli_runs, versions)
    for label, t in times.items():
        print(f"  {label:12s} {', '.join(f'{x:.2f}' for x in t)} s; median {statistics.median(t):.2f} s")
    if args.against:
        then, now = (statistics.median(t) for t in times.values())
        print(f"  before / now: {then / now:.2f}x")
    print("  target: under 0.6 s")


def generation(args, params):
    """Characters per second of one stream: ours (three ways) and torch's, in alternation."""
    print(f"one stream, {CELL} {L}x{H}, V={V}, float32, chunks of {CHUNK} characters")
    torch = model = None
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            print("  torch is not installed: no comparison")
    if torch is not None:
        torch.set_num_threads(2)
        torch.manual_seed(0)
        model = (torch.nn.LSTM(V, H, L), torch.nn.Linear(H, V))
        theirs(torch, model, 5)
    for blas in (False, True):
        ours(params, blas, 64, 0)  # compile or load from the cache

    rates = {"hand loop": [], "BLAS gemv": [], "BLAS gemv x2": [], "torch": []}
    for rep in range(args.repeats):
        rates["hand loop"].append(ours(params, False, args.chars, rep))
        rates["BLAS gemv"].append(ours(params, True, args.chars, rep))
        rates["BLAS gemv x2"].append(ours(params, True, args.chars, rep, threads=2))
        if torch is not None:
            rates["torch"].append(theirs(torch, model, args.torch_chars))
    med = {k: statistics.median(v) for k, v in rates.items() if v}
    weights_mb = params.nbytes / 1e6
    for name, rate in med.items():
        extra = f", {weights_mb * rate / 1e3:.1f} GB/s of weights" if name != "torch" else ""
        label = {"hand loop": "ours, hand loop, 1 thread", "BLAS gemv": "ours, BLAS gemv, 1 thread",
                 "BLAS gemv x2": "ours, BLAS gemv, 2 threads (sample)",
                 "torch": f"torch {torch.__version__ if torch else ''} step by step"}[name]
        runs = ", ".join(f"{r:,.0f}" for r in rates[name])
        print(f"  {label:32s} {rate:9,.0f} chars/s  ({1e6 / rate:,.0f} us/char{extra}; runs: {runs})")
    if "torch" in med:
        print(f"  ratio charrnn sample (2 BLAS threads) / torch: {med['BLAS gemv x2'] / med['torch']:.1f}x "
              f"(target: 10x or better); on one thread {med['hand loop'] / med['torch']:.1f}x")



if __name__ == "__main__":
    main()
