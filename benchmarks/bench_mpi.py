"""What training over MPI costs and gives: the time of one update of the default model (a 1x512
LSTM on the shipped corpus, batch 32 in total, k1 = k2 = 50) in one process and in 2 ranks of
one numba thread each, over shared memory and over TCP on loopback, and the share of the update
spent in the gradient all-reduce.

Each configuration is its own launch (`mpiexec -n R python bench_mpi.py --worker`): a few
updates to compile or load the kernels, then --updates timed ones. The all-reduce is timed
inside the run (distributed.Mpi.reduce_seconds: a rank that is ahead waits there for the other,
so it counts that wait too) and alone, the same buffer summed --updates times after training.

    python benchmarks/bench_mpi.py
    python benchmarks/bench_mpi.py --updates 40
    python benchmarks/bench_mpi.py --hidden 64 --updates 3 --warmup 1   # a quick check
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from machine import describe, lift_openblas, mpiexec  # noqa: E402

# MPICH over its network module, TCP on the loopback interface, instead of shared memory
TCP = {"MPIR_CVAR_NOLOCAL": "1", "MPIR_CVAR_CH4_NETMOD": "ofi", "FI_PROVIDER": "tcp", "FI_TCP_IFACE": "lo"}
# (ranks, numba threads per rank, transport); one process on 2 threads is what `charrnn train`
# does on this machine without MPI
CONFIGS = ((1, 1, "-"), (1, 2, "-"), (2, 1, "shm"), (2, 1, "tcp"))


def worker(args):
    from charrnn import distributed

    world = distributed.world()  # before numba starts: it sets the threads
    import numpy as np

    from charrnn.config import TrainConfig
    from charrnn.train import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        sizes = {"hidden": args.hidden} if args.hidden else {}
        cfg = TrainConfig(time_limit=0, max_steps=10**6, out_dir=tmp, **sizes).validate()
        trainer = Trainer(cfg, Path(tmp) / "r", say=lambda *_: None)
        for _ in range(args.warmup):
            trainer.update()
        reduced = getattr(world, "reduce_seconds", 0.0)
        times = []
        for _ in range(args.updates):
            t0 = time.perf_counter()
            trainer.update()
            times.append(time.perf_counter() - t0)
        in_run = (getattr(world, "reduce_seconds", 0.0) - reduced) / args.updates
        alone = 0.0
        if world.size > 1:
            buf = np.ones_like(trainer.grads)
            world.comm.Barrier()
            t0 = time.perf_counter()
            for _ in range(args.updates):
                world.comm.Allreduce(world.MPI.IN_PLACE, buf, op=world.MPI.SUM)
            alone = (time.perf_counter() - t0) / args.updates
    if world.root:
        print(json.dumps({"update": statistics.median(times), "mean": statistics.mean(times), "in_run": in_run,
                          "alone": alone, "bytes": trainer.grads.nbytes, "chars": cfg.k1 * cfg.batch,
                          "model": f"{cfg.cell} {cfg.layers}x{cfg.hidden}, batch {cfg.batch}, k1 {cfg.k1}"}))


def launch(ranks, threads, transport, args):
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--updates", str(args.updates),
           "--warmup", str(args.warmup), "--hidden", str(args.hidden)]
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
    if ranks > 1:
        cmd = [mpiexec() or "mpiexec", "-n", str(ranks), *cmd]
        if transport == "tcp":
            env.update(TCP)
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=20, help="timed updates per configuration")
    parser.add_argument("--warmup", type=int, default=3, help="untimed updates first (compiling)")
    parser.add_argument("--hidden", type=int, default=0, help="hidden units (default: the default model's)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    lift_openblas()
    print(describe())
    print(f"{os.cpu_count()} cores; medians of {args.updates} updates after {args.warmup} untimed")
    base = None
    for ranks, threads, transport in CONFIGS:
        m = launch(ranks, threads, transport, args)
        if base is None:
            base = m["update"]
            print(f"{m['model']}; gradient {m['bytes'] / 1e6:.2f} MB")
            print(f"{'ranks':>5} {'threads/rank':>12} {'via':>4} {'ms/update':>10} {'chars/s':>9} {'speed-up':>8} "
                  f"{'all-reduce in run':>17} {'share':>6} {'all-reduce alone':>16}")
        reduce = f"{m['in_run'] * 1e3:.2f} ms" if ranks > 1 else "-"
        share = f"{100 * m['in_run'] / m['mean']:.1f}%" if ranks > 1 else "-"  # of the mean update
        alone = f"{m['alone'] * 1e3:.2f} ms" if ranks > 1 else "-"
        print(f"{ranks:>5} {threads:>12} {transport:>4} {m['update'] * 1e3:>10.1f} {m['chars'] / m['update']:>9,.0f} "
              f"{base / m['update']:>7.2f}x {reduce:>17} {share:>6} {alone:>16}")


if __name__ == "__main__":
    main()
