"""Throughput of one training update (forward + backward + gradient accumulation) of the
kernels, in characters per second, for T=100 steps and B=32 streams, one layer.

Beside it: the achieved GFLOP/s of the matrix work (the cell's recurrent FLOPs, 6*H*G for a
full (H,G) recurrent matrix, + 6*H*V output FLOPs per character: forward, input-gradient and
weight-gradient products; 4*H*V where no layer trains, the ESN's, which leaves out the gradient
with respect to the states) as a share of the machine's float32 matrix-multiply rate (numpy,
2048x2048, every core): of the best rate of the run ("of peak"), and of the rate measured just
before the row ("of rate before"), which a virtual machine's drift over minutes moves with the
row's own speed; and, if torch is installed, the same shapes through
torch.nn.RNN/LSTM/GRU with one-hot inputs on 2 threads, timed in alternation with ours (the
matrix rate is measured before each row).

With --against REV, the kernels as they were at git revision REV run too, in the same process
and in alternation (the package at REV is extracted to benchmarks/results/versions/ and imported
under another name), for a before-and-after comparison on one machine under one load.

The OpenBLAS override some machines set is lifted for the run, as users run (machine.py); with
--avx2, both sides run AVX2 code only, OpenBLAS its Haswell kernels (machine.py).

    python benchmarks/bench_kernels.py            # all cells and shapes
    python benchmarks/bench_kernels.py --cell lstm --repeats 7
    python benchmarks/bench_kernels.py --against 4920ba3 --no-torch
    python benchmarks/bench_kernels.py --cell lstm --dropout 0.4   # as the default run trains
    python benchmarks/bench_kernels.py --avx2    # both sides on AVX2 code only (machine.py)
    python benchmarks/bench_kernels.py --cell gru --shape 512x65 --repeats 15   # one row, timed longer
"""
import argparse
import importlib
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from machine import describe, extract_revision, hold_to_avx2, lift_openblas  # noqa: E402

# before numpy loads OpenBLAS (main() refuses abbreviations: "--avx2" is read here as written)
if "--avx2" in sys.argv[1:]:
    hold_to_avx2()
else:
    lift_openblas()

import numpy as np  # noqa: E402
from threadpoolctl import ThreadpoolController  # noqa: E402

import charrnn.model  # noqa: E402
from charrnn.cells import CELLS  # noqa: E402

SHAPES = [(128, 65), (256, 65), (512, 65), (256, 6000)]  # (H, V)
T, B = 100, 32
SAMPLE_SECONDS = 0.25  # length of one timed sample; the two sides alternate sample by sample


PEAK_N = 2048
PEAK_FLOPS = 2 * PEAK_N**3


def matmul_rate():
    """A function measuring the machine's float32 rate in GFLOP/s: numpy's @ on 2048x2048 with
    BLAS on every core (lifted for it, should it be held to one thread), the best of 3.
    It runs before every row: a virtual machine's speed drifts over minutes, and a rate
    measured once at the start made the "of peak" column move by a quarter. Not inside the
    alternation: BLAS's threads spin for a while after a product, and would slow the next side."""
    a = np.random.default_rng(0).random((PEAK_N, PEAK_N), dtype=np.float32)
    controller = ThreadpoolController()

    def rate():
        with controller.limit(limits=os.cpu_count(), user_api="blas"):
            best = min(_timed(lambda: a @ a) for _ in range(3))
        time.sleep(0.5)  # BLAS's threads go back to sleep
        return PEAK_FLOPS / best / 1e9

    return rate


def _timed(fn, n=1):
    """Seconds per call of fn, over n calls in a row."""
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


def _calls_per_sample(fn, seconds=SAMPLE_SECONDS):
    """How many calls in a row make one timed sample: single updates of a few milliseconds
    are at the mercy of every hiccup of a shared machine."""
    return max(1, round(seconds / _timed(fn)))


def package_at(rev):
    """charrnn as it was at git revision `rev`, importable beside today's as charrnn_<hash>;
    returns its model module."""
    base, name, sha = extract_revision(rev)
    sys.path.insert(0, str(base))
    return importlib.import_module(f"{name}.model"), sha


def ours(model, cell, H, V, dropout=0.0):
    """A closure running one update on fixed random text, with the kernels of `model` (the
    charrnn.model module of today or of another revision); with dropout, fresh masks on the
    output layer's input at every update, as a training run draws them."""
    rng = np.random.default_rng(0)
    spec = model.ModelSpec(cell, V, H, 1)
    params = model.init_params(spec, rng)
    grads = np.zeros_like(params)
    stack = model.Stack(spec, B, T, dropout=dropout)
    stack.ids[:] = rng.integers(0, V, (T, B))
    stack.targets[:] = rng.integers(0, V, (T, B))
    masks = np.random.default_rng(1) if dropout > 0 else None

    def update():
        grads[:] = 0.0
        stack.forward(params, 0, T, masks)
        stack.output_grad(params, grads, 0, T, 1.0 / (T * B))
        stack.backward(params, grads, 0, T)

    return update


TORCH_MODULES = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}  # the cells torch has a module for


def theirs(torch, cell, H, V, dropout=0.0):
    module = getattr(torch.nn, TORCH_MODULES[cell])(V, H)
    drop = torch.nn.Dropout(dropout)  # training mode: fresh masks at every call
    head = torch.nn.Linear(H, V)
    params = list(module.parameters()) + list(head.parameters())
    ids = torch.randint(0, V, (T + 1, B))
    x = torch.nn.functional.one_hot(ids[:-1], V).float()
    targets = ids[1:].reshape(-1)

    def update():
        for p in params:
            p.grad = None
        y, _ = module(x)
        loss = torch.nn.functional.cross_entropy(head(drop(y)).reshape(-1, V), targets)
        loss.backward()

    return update


def shape(text):
    """An --shape: 'HxV', a hidden size of at least 1 and a vocabulary of at least 2."""
    try:
        H, V = (int(n) for n in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is no HxV, such as 512x65") from None
    if H < 1 or V < 2:
        raise argparse.ArgumentTypeError(f"{text!r}: H must be at least 1 and V at least 2")
    return H, V


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    ap.add_argument("--cell", default="all", choices=["all", *CELLS])
    ap.add_argument("--repeats", type=int, default=5,
                    help="timed samples per side (median reported); half as many, at least 2, where V >= 1000")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    ap.add_argument("--against", metavar="REV", help="also time the kernels of this git revision")
    ap.add_argument("--dropout", type=float, default=0.0, metavar="P",
                    help="dropout on the output layer's input, both sides (a training run's default is 0.4)")
    ap.add_argument("--shape", action="append", type=shape, metavar="HxV",
                    help="only this hidden size and vocabulary (may be given again); by default "
                    + ", ".join(f"{H}x{V}" for H, V in SHAPES))
    ap.add_argument("--avx2", action="store_true",
                    help="both sides on AVX2 code only, as on a machine without AVX-512 (machine.py)")
    args = ap.parse_args()
    try:
        if args.no_torch:
            raise ImportError
        import torch

        torch.set_num_threads(2)
    except ImportError:
        torch = None
    before, rev = package_at(args.against) if args.against else (None, None)
    print(describe())
    matmul_gflops = matmul_rate()
    print(f"of peak: of the best float32 matmul rate of the run (numpy, {PEAK_N}x{PEAK_N}, every core, "
          f"measured before each row); of rate before: of the rate measured just before the row; "
          f"T={T} B={B}, one layer" + (f", dropout {args.dropout} on the output layer's input" if args.dropout else ""))
    if torch is not None:
        capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "its default")()
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {capability} code")
    header = f"{'cell':8} {'H':>4} {'V':>5} {'chars/s':>9} {'GFLOP/s':>8} {'of peak':>7} {'of rate before':>14}"
    if before:
        header += f" {rev + ' chars/s':>15} {'now/then':>8}"
    print(header + (f" {'torch chars/s':>13} {'ratio':>6}" if torch else ""))
    cells = list(CELLS) if args.cell == "all" else [args.cell]
    peaks, rows = [], []
    for cell in cells:
        for H, V in args.shape or SHAPES:
            reps = args.repeats if V < 1000 else max(2, args.repeats // 2)
            peaks.append(matmul_gflops())
            sides = {"now": ours(charrnn.model, cell, H, V, args.dropout)}
            if before and cell in before.CELLS:
                sides["then"] = ours(before, cell, H, V, args.dropout)
            if torch and cell in TORCH_MODULES:
                sides["torch"] = theirs(torch, cell, H, V, args.dropout)
            calls = {}
            for name, fn in sides.items():
                fn()  # compile and warm up
                calls[name] = _calls_per_sample(fn)
            times = {name: [] for name in sides}
            order = list(sides)
            for rep in range(reps):  # alternate, so that every side sees the same machine load,
                # each side first in turn, so that none always runs right after the same other one
                for name in order[rep % len(order):] + order[: rep % len(order)]:
                    times[name].append(_timed(sides[name], calls[name]))
            cps = {name: T * B / statistics.median(ts) for name, ts in times.items()}
            frozen = charrnn.model.Stack(charrnn.model.ModelSpec(cell, V, H, 1), 1, 1).layers_frozen
            gflops = (CELLS[cell].update_flops(H) + (4 if frozen else 6) * H * V) * cps["now"] / 1e9
            rest = ""
            if before:
                rest += (f" {cps['then']:15.0f} {cps['now'] / cps['then']:7.2f}x" if "then" in cps
                         else f" {'-':>15} {'-':>8}")
            if "torch" in cps:
                rest += f" {cps['torch']:13.0f} {cps['now'] / cps['torch']:5.2f}x"
            rows.append((f"{cell:8} {H:4d} {V:5d} {cps['now']:9.0f} {gflops:8.1f}", gflops, peaks[-1], rest))
            print(f"{rows[-1][0]} {'...':>7} {gflops / peaks[-1]:14.0%}{rest}", file=sys.stderr,
                  flush=True)  # progress; the table follows
    peak = max(peaks)
    for start, gflops, before_row, rest in rows:
        print(f"{start} {gflops / peak:7.0%} {gflops / before_row:14.0%}{rest}")
    print(f"matmul rate before the rows: {min(peaks):.0f} to {peak:.0f} GFLOP/s, median {statistics.median(peaks):.0f}")

if __name__ == "__main__":
    main()
