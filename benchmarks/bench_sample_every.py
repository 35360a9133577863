"""What `train --sample-every` costs: the time of one training update against one sample taken
while training, both of the default model (a 1x512 LSTM on the shipped corpus, batch 32, k1 = k2
= 50) in the same process, timed in alternation, after a warm-up that compiles the kernels.

    python benchmarks/bench_sample_every.py
    python benchmarks/bench_sample_every.py --length 200 --repeats 15 --every 200,1000
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from charrnn.config import TrainConfig  # noqa: E402
from charrnn.train import Trainer  # noqa: E402


def timed(f):
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=200, help="characters per sample")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--every", default="100,200,1000", help="sample-every values to cost")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(sample_length=args.length, time_limit=0, max_steps=10**6, out_dir=tmp).validate()
        trainer = Trainer(cfg, Path(tmp) / "r", say=lambda *_: None)
        for _ in range(3):  # compile, or load from numba's cache
            trainer.update()
            trainer.sample()
        updates, samples = [], []
        for _ in range(args.repeats):
            updates.append(timed(trainer.update))
            samples.append(timed(trainer.sample))
    update, sample = statistics.median(updates), statistics.median(samples)
    print(f"{cfg.cell} {cfg.layers}x{cfg.hidden}, batch {cfg.batch}, k1 {cfg.k1}: one update {update * 1e3:.0f} ms; "
          f"one {args.length}-character sample {sample * 1e3:.0f} ms ({sample / update:.2f} updates); "
          f"medians of {args.repeats}")
    for every in map(int, args.every.split(",")):
        print(f"--sample-every {every}: {100 * sample / (every * update):.2f}% of the training time")


if __name__ == "__main__":
    main()
