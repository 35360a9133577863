"""The per-step recurrent product's register tile: the candidates timed on this machine.

The kernels choose their tile from the vector extensions numba compiles for (panels.tile_rows):
4 rows x 16 columns with AVX2, 8 rows with AVX-512, and two panels at once where the same rows
meet two (8x2). This times every candidate shape on the product as a forward step runs it,
B=32 streams split between the threads, K=H, the 4H columns of an LSTM's gates, so that one can
see on any machine whether that choice is the fastest there. A candidate is rows x panels: its
sums are rows x panels vectors of 16 lanes, held in registers (more than the machine's registers
spill). Every candidate runs everywhere: LLVM splits vectors wider than the hardware's.

    python benchmarks/bench_tiles.py
    python benchmarks/bench_tiles.py --hidden 256 --threads 2
"""
import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from machine import describe, lift_openblas  # noqa: E402

lift_openblas()

import numba  # noqa: E402
import numpy as np  # noqa: E402
from numba import prange  # noqa: E402

from charrnn.kernels._jit import block, kernel, parallel_kernel  # noqa: E402
from charrnn.kernels.panels import LANES, TILE_ROWS, _tile_intrinsic  # noqa: E402

CANDIDATES = ((4, 1), (4, 2), (4, 4), (8, 1), (8, 2), (16, 1))
B = 32
SECONDS = 0.3  # a sample's length


def timed_steps(rows, panels):
    """A parallel kernel running `steps` steps of the product (B, K) @ (K, n_panels*LANES) with
    the rows x panels tile, threads splitting the streams, as the cells' forward does."""
    tile = _tile_intrinsic(rows, panels)

    @kernel
    def step(A, P, C, r0, r1):
        K, n_panels, G = A.shape[1], P.shape[0], C.shape[1]
        for p in range(0, n_panels, panels):  # main() times only candidates that divide the panels
            r = r0
            while r + rows <= r1:
                tile(A, r * K, K, P, p * K * LANES, K * LANES, C, r * G + p * LANES, G, K, LANES)
                r += rows

    @parallel_kernel
    def steps(A, P, C, n_steps, n_blocks):
        for i in prange(n_blocks):
            r0, r1 = block(A.shape[0], n_blocks, i)
            for _ in range(n_steps):
                step(A, P, C, r0, r1)

    return steps


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                        help="threads, each taking an equal block of the 32 streams: 1, 2, 4, 8, ...")
    parser.add_argument("--repeats", type=int, default=5, help="samples per candidate (best reported)")
    args = parser.parse_args()
    for n in args.threads:
        if n < 1 or B % n or n > numba.config.NUMBA_NUM_THREADS:
            parser.error(f"--threads {n}: the {B} streams split evenly among at most "
                         f"{numba.config.NUMBA_NUM_THREADS} threads")
    for H in args.hidden:
        if H < 4 or H % 4:
            parser.error(f"--hidden {H}: a multiple of 4, so that the 4H columns are whole panels")
    print(describe())
    chosen = (8, 2) if TILE_ROWS == 8 else (4, 1)
    print(f"the kernels' tile here: {chosen[0]}x{chosen[1]} (rows x panels); GFLOP/s, best of {args.repeats}, "
          f"B={B}, K=H, 4H columns")
    kernels = {c: timed_steps(*c) for c in CANDIDATES}
    rng = np.random.default_rng(0)
    for H in args.hidden:
        A = rng.random((B, H), dtype=np.float32)
        P = rng.random((4 * H // LANES, H, LANES), dtype=np.float32)
        C = np.zeros((B, 4 * H), np.float32)
        for n_blocks in args.threads:
            numba.set_num_threads(n_blocks)
            rates = {}
            for (rows, panels), run in kernels.items():
                if (B // n_blocks) % rows or P.shape[0] % panels:
                    continue  # the tile does not divide a thread's share of the product
                run(A, P, C, 1, n_blocks)  # compiled
                t0 = time.perf_counter()
                run(A, P, C, 10, n_blocks)
                n_steps = max(10, int(10 * SECONDS / (time.perf_counter() - t0)))
                best = 0.0
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    run(A, P, C, n_steps, n_blocks)
                    best = max(best, 2 * B * H * C.shape[1] * n_steps / (time.perf_counter() - t0) / 1e9)
                rates[(rows, panels)] = best
            cells = "  ".join(f"{r}x{p} {v:5.0f}{'*' if (r, p) == chosen else ' '}" for (r, p), v in rates.items())
            verdict = (f"the kernels' tile: {rates[chosen] / max(rates.values()):.0%} of the best"
                       if chosen in rates else "the kernels' tile does not divide this product")
            print(f"H={H:4d} threads={n_blocks}: {cells}   (* {verdict})")


if __name__ == "__main__":
    main()
