"""The controlled experiment behind the defaults: charrnn's float32 training loop and a PyTorch
loop, started from the same initial weights and fed the same batches, one factor at a time.

charrnn trains N updates with its Trainer (the config given on the command line, default the
default config). Then PyTorch trains from charrnn's initial weights on the same windows and the
same per-update learning rates:

    mirror         the same function of the same trainable numbers (bias_hh frozen at zero)
    perturbed      the mirror, every initial weight moved by about one float32 ulp: the noise
                   floor, how far two float32 runs of one loop drift apart by chance
    two biases     bias_hh trains too, as in nn.LSTM: the bias takes two Adam steps per update
    forget +1      the LSTM's forget-gate bias set to 1 (charrnn's initialisation before
                   this experiment; PyTorch and charrnn now draw it like every bias)
    constant lr    no schedule: the base learning rate throughout
    pytorch init   two biases and PyTorch's own initialisation of every tensor (other initial
                   weights, drawn from the same distributions but the bias's), charrnn's schedule
    pytorch        the loop a user writes: pytorch init and a constant learning rate

Each curve is compared with charrnn's on the same batches: the mean loss difference per block of
updates, and the first block where it leaves the float32 noise for good (more than
max(0.005, 3 x the noise floor's largest block difference so far)).

    python benchmarks/parity.py                       # default model, 800 updates
    python benchmarks/parity.py --updates 400 --hidden 128
"""
import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from torch_loop import CharModel, Loop, load_charrnn  # noqa: E402

from charrnn.config import TrainConfig  # noqa: E402
from charrnn.corpus import Streams  # noqa: E402
from charrnn.train import Trainer  # noqa: E402

BLOCK = 50


def run_charrnn(cfg, updates):
    cfg.max_steps, cfg.time_limit = updates, 0.0  # the schedule runs over these updates
    trainer = Trainer(cfg, Path("/nonexistent"), say=lambda *_: None)
    init = trainer.params.copy()
    losses, lrs = [], []
    for _ in range(updates):
        loss, _, _, lr = trainer.update()
        losses.append(loss)
        lrs.append(lr)
    return trainer, init, np.array(losses), lrs


def run_torch(trainer, init, lrs, *, one_bias=True, perturb=0.0, forget_bias=None, schedule=True,
              own_init=False, seed=0):
    torch.manual_seed(seed)
    spec, cfg = trainer.spec, trainer.cfg
    model = CharModel(spec.cell, spec.vocab_size, spec.hidden, spec.layers)
    if not own_init:
        params = init.copy()
        if perturb:
            rng = np.random.default_rng(seed)
            params *= 1.0 + perturb * rng.choice([-1.0, 1.0], params.size).astype(np.float32)
        load_charrnn(model, spec, params, one_bias=one_bias)
        if forget_bias is not None:
            H = spec.hidden
            with torch.no_grad():
                for l in range(spec.layers):
                    getattr(model.rnn, f"bias_ih_l{l}")[H: 2 * H] = forget_bias
    loop = Loop(model, cfg.lr, cfg.clip_norm)
    streams = Streams(trainer.train_ids, cfg.batch)
    inputs = np.zeros((cfg.k1, cfg.batch), np.int32)
    targets = np.zeros_like(inputs)
    losses = []
    for lr in lrs:
        if streams.next(cfg.k1, inputs, targets):
            loop.state = None
        losses.append(loop.update(inputs, targets, lr if schedule else cfg.lr))
    return np.array(losses)


def blocks(diff):
    n = len(diff) // BLOCK
    return diff[: n * BLOCK].reshape(n, BLOCK).mean(axis=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--updates", type=int, default=800)
    ap.add_argument("--hidden", type=int, default=None)
    ap.add_argument("--cell", default=None)
    ap.add_argument("--corpus", default="")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="charrnn config overrides, e.g. lr_decay=1.0")
    ap.add_argument("--variants", default="mirror,perturbed,two biases,forget +1,constant lr,pytorch init,pytorch")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count())
    cfg = TrainConfig(corpus=args.corpus, seed=args.seed)
    if args.hidden:
        cfg.hidden = args.hidden
    if args.cell:
        cfg.cell = args.cell
    for item in args.set:
        key, value = item.split("=", 1)
        setattr(cfg, key, type(getattr(cfg, key))(value))
    if cfg.dropout > 0:  # the two engines cannot draw the same masks: compare without dropout
        print(f"dropout {cfg.dropout} set to 0 for this comparison")
        cfg.dropout = 0.0
    if cfg.reset_every:  # the PyTorch loops carry the state on: compare without fresh starts
        print(f"reset_every {cfg.reset_every} set to 0 for this comparison")
        cfg.reset_every = 0
    cfg.validate()
    print(f"charrnn {cfg.cell} {cfg.layers}x{cfg.hidden}, batch {cfg.batch}, k1 {cfg.k1}, lr {cfg.lr}, "
          f"{args.updates} updates; torch {torch.__version__} on {torch.get_num_threads()} threads", flush=True)
    trainer, init, ours, lrs = run_charrnn(cfg, args.updates)
    variants = {
        "mirror": {},
        "perturbed": dict(perturb=1.2e-7),
        "two biases": dict(one_bias=False),
        "forget +1": dict(forget_bias=1.0),
        "constant lr": dict(schedule=False),
        "pytorch init": dict(one_bias=False, own_init=True),
        "pytorch": dict(one_bias=False, own_init=True, schedule=False),
    }
    chosen = [v.strip() for v in args.variants.split(",")]
    if cfg.cell != "lstm":
        chosen = [v for v in chosen if v != "forget +1"]
    curves = {}
    for name in chosen:
        curves[name] = run_torch(trainer, init, lrs, **variants[name])
        print(f"  ran {name}", flush=True)
    floor = np.maximum.accumulate(np.abs(blocks(curves["perturbed"] - curves["mirror"]))) \
        if {"perturbed", "mirror"} <= set(curves) else None
    print(f"\nmean loss per block of {BLOCK} updates (charrnn), then each torch curve minus charrnn's")
    names = ["charrnn"] + list(curves)
    print(f"{'updates':>11} " + " ".join(f"{n:>13}" for n in names))
    ours_b = blocks(ours)
    diffs = {n: blocks(c - ours) for n, c in curves.items()}
    for i in range(len(ours_b)):
        row = f"{i * BLOCK + 1:5d}-{(i + 1) * BLOCK:<5d} {ours_b[i]:13.4f} "
        row += " ".join(f"{diffs[n][i]:+13.5f}" for n in curves)
        print(row)
    if floor is not None:
        print("\nwhere each curve leaves charrnn's for good (noise floor: perturbed vs mirror):")
        for n, d in diffs.items():
            limit = np.maximum(0.005, 3 * floor)
            outside = np.abs(d) > limit
            # the first block from which every later block is outside the noise
            part = next((i for i in range(len(d)) if outside[i:].all()), None)
            where = "never" if part is None else f"from update {part * BLOCK + 1}"
            print(f"  {n:>13}: {where}; last {BLOCK * 4} updates {np.mean((curves[n] - ours)[-BLOCK * 4:]):+.4f} nats")


if __name__ == "__main__":
    main()
