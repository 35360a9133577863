"""Throughput of one training update (forward + backward + gradient accumulation) of the
kernels, in characters per second, for T=100 steps and B=32 streams, one layer.

Beside it: the achieved GFLOP/s of the matrix work (the cell's recurrent FLOPs, 6*H*G for a
full (H,G) recurrent matrix, + 6*H*V output FLOPs per character: forward, input-gradient and
weight-gradient products), the machine's float32
matrix-multiply rate (numpy, 2048x2048), and, if torch is installed, the same shapes through
torch.nn.RNN/LSTM/GRU with one-hot inputs on 2 threads, timed in alternation with ours.

    python benchmarks/bench_kernels.py            # all cells and shapes
    python benchmarks/bench_kernels.py --cell lstm --repeats 7
"""
import argparse
import os
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits

from charrnn.cells import CELLS
from charrnn.model import ModelSpec, Stack, init_params

SHAPES = [(128, 65), (256, 65), (512, 65), (256, 6000)]  # (H, V)
T, B = 100, 32
SAMPLE_SECONDS = 0.25  # length of one timed sample; the two sides alternate sample by sample


def matmul_gflops():
    """The machine's float32 rate: numpy's @ on 2048x2048 with BLAS on every core (charrnn
    holds BLAS to one thread, so lift that for this measurement)."""
    a = np.random.default_rng(0).random((2048, 2048), dtype=np.float32)
    with threadpool_limits(os.cpu_count(), user_api="blas"):
        a @ a
        best = min(_timed(lambda: a @ a) for _ in range(5))
    return 2 * 2048**3 / best / 1e9


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


def ours(cell, H, V):
    """A closure running one update on fixed random text."""
    rng = np.random.default_rng(0)
    spec = ModelSpec(cell, V, H, 1)
    params = init_params(spec, rng)
    grads = np.zeros_like(params)
    stack = Stack(spec, B, T)
    stack.ids[:] = rng.integers(0, V, (T, B))
    stack.targets[:] = rng.integers(0, V, (T, B))

    def update():
        grads[:] = 0.0
        stack.forward(params, 0, T)
        stack.output_grad(params, grads, 0, T, 1.0 / (T * B))
        stack.backward(params, grads, 0, T)

    return update


TORCH_MODULES = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}  # the cells torch has a module for


def theirs(torch, cell, H, V):
    if cell not in TORCH_MODULES:
        return None
    module = getattr(torch.nn, TORCH_MODULES[cell])(V, H)
    head = torch.nn.Linear(H, V)
    params = list(module.parameters()) + list(head.parameters())
    ids = torch.randint(0, V, (T + 1, B))
    x = torch.nn.functional.one_hot(ids[:-1], V).float()
    targets = ids[1:].reshape(-1)

    def update():
        for p in params:
            p.grad = None
        y, _ = module(x)
        loss = torch.nn.functional.cross_entropy(head(y).reshape(-1, V), targets)
        loss.backward()

    return update


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cell", default="all", choices=["all", *CELLS])
    ap.add_argument("--repeats", type=int, default=5, help="timed samples per side (median reported)")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    args = ap.parse_args()
    try:
        if args.no_torch:
            raise ImportError
        import torch

        torch.set_num_threads(2)
    except ImportError:
        torch = None
    peak = matmul_gflops()
    print(f"float32 matmul (numpy, 2048x2048): {peak:.0f} GFLOP/s; T={T} B={B}, one layer")
    if torch is not None:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    header = f"{'cell':8} {'H':>4} {'V':>5} {'chars/s':>9} {'GFLOP/s':>8} {'of peak':>7}"
    print(header + (f" {'torch chars/s':>13} {'ratio':>6}" if torch else ""))
    cells = list(CELLS) if args.cell == "all" else [args.cell]
    for cell in cells:
        for H, V in SHAPES:
            reps = args.repeats if V < 1000 else max(2, args.repeats // 2)
            mine = ours(cell, H, V)
            mine()  # compile and warm up
            n_mine = _calls_per_sample(mine)
            other = theirs(torch, cell, H, V) if torch else None
            if other:
                other()
                n_other = _calls_per_sample(other)
            ts_mine, ts_other = [], []
            for _ in range(reps):  # alternate, so that both see the same machine load
                ts_mine.append(_timed(mine, n_mine))
                if other:
                    ts_other.append(_timed(other, n_other))
            cps = T * B / statistics.median(ts_mine)
            gflops = (CELLS[cell].update_flops(H) + 6 * H * V) * cps / 1e9
            line = f"{cell:8} {H:4d} {V:5d} {cps:9.0f} {gflops:8.1f} {gflops / peak:7.0%}"
            if other:
                cps_t = T * B / statistics.median(ts_other)
                line += f" {cps_t:13.0f} {cps / cps_t:5.2f}x"
            print(line, flush=True)


if __name__ == "__main__":
    main()
