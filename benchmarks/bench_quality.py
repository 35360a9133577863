"""A better model per CPU-minute: charrnn's default run against the PyTorch loop a user would write,
at equal wall time on the same corpus and split, each keeping its best model by validation loss.

    charrnn   `charrnn train FILE --time-limit S` with every other option at its default
    PyTorch   nn.LSTM/GRU/RNN of the same sizes (and dropout) on one-hot input, a Linear head,
              PyTorch's own initialisation, Adam at charrnn's base learning rate, constant,
              norm clipping at charrnn's limit, truncated BPTT over charrnn's windows with the
              state carried (detached), validation every charrnn eval interval on its own forward
              pass, counted in its time; torch.set_num_threads(2)

Both selected models are then scored by the same evaluator (charrnn's, PyTorch's weights copied
across) on the validation and test parts. Corpora, each made on the spot from what any machine
with Python has:

    shakespeare   corpora/tinyshakespeare.txt (shipped)
    stdlib        the Python standard library's own source, files in sorted order, 2.5M chars
    docstrings    the English docstrings of the same modules, in the same order

OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE, which some machines set to force older kernels, are
lifted for this run (users do not have them); the BLAS kernel that ran is printed.

    python benchmarks/bench_quality.py                       # 6 minutes a side, three corpora
    python benchmarks/bench_quality.py --minutes 1 --corpora shakespeare
"""
import argparse
import ast
import json
import math
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
STDLIB_CHARS = 2_500_000
sys.path.insert(0, str(HERE))
from machine import blas_kernel, cpu, describe, lift_openblas  # noqa: E402

_SKIP = {"test", "tests", "idlelib", "site-packages", "lib2to3", "__pycache__", "pydoc_data", "turtledemo",
         "ensurepip"}


def _stdlib_files():
    base = Path(sysconfig.get_paths()["stdlib"])
    return sorted(f for f in base.rglob("*.py") if not (_SKIP & set(f.relative_to(base).parts)))


def build_corpus(name):
    """The corpus file, made once into benchmarks/results/corpora/."""
    if name == "shakespeare":
        return ROOT / "corpora" / "tinyshakespeare.txt"
    path = RESULTS / "corpora" / f"{name}.txt"
    if path.exists():
        return path
    parts, total = [], 0
    for f in _stdlib_files():
        try:
            source = f.read_text("utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if name == "stdlib":
            parts.append(source)
            total += len(source)
            if total >= STDLIB_CHARS:
                break
        elif name == "docstrings":
            try:
                tree = ast.parse(source)
            except SyntaxError:
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node)
                    if doc:
                        parts.append(doc + "\n\n")
        else:
            raise SystemExit(f"unknown corpus {name!r}")
    text = "".join(parts)[: STDLIB_CHARS]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def run_charrnn(corpus, seconds, name, extra):
    """`charrnn train` with its defaults; returns (run folder, its summary figures)."""
    out_dir = RESULTS / "quality-runs"
    run = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    cmd = [sys.executable, "-m", "charrnn", "train", str(corpus), "--time-limit", str(seconds), "--run", run,
           "--out-dir", str(out_dir), "--quiet", *extra]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    records = [json.loads(line) for line in open(out_dir / run / "metrics.jsonl")]
    steps = max(r["step"] for r in records)
    train = [r for r in records if r["kind"] == "train"]
    return out_dir / run, {"updates": steps, "chars_per_sec": sum(r["chars_per_sec"] for r in train) / len(train)}


def run_torch(cfg, train_ids, val_ids, seconds):
    """The plain loop, on charrnn's split and windows. Returns (best model's charrnn params, figures)."""
    import copy

    import numpy as np
    import torch
    from torch_loop import CharModel, Loop, to_charrnn

    from charrnn.corpus import EvalStreams, Streams

    torch.manual_seed(cfg.seed)
    model = CharModel(cfg.cell, cfg.vocab_size, cfg.hidden, cfg.layers, cfg.dropout)
    loop = Loop(model, cfg.lr, cfg.clip_norm)
    streams = Streams(train_ids, cfg.batch)
    val_streams = EvalStreams(val_ids, cfg.batch)
    inputs = np.zeros((cfg.k1, cfg.batch), np.int32)
    targets = np.zeros_like(inputs)
    best, best_val, step, t0 = None, math.inf, 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        if streams.next(cfg.k1, inputs, targets):
            loop.state = None
        model.train()
        loop.update(inputs, targets)
        step += 1
        end = time.perf_counter() - t0 >= seconds
        if step % cfg.eval_every == 0 or end:
            model.eval()
            val = loop.evaluate(val_streams, cfg.k1)
            if val < best_val:
                best_val, best = val, copy.deepcopy(model.state_dict())
    elapsed = time.perf_counter() - t0
    model.load_state_dict(best)
    return to_charrnn(model, cfg.spec), {"updates": step, "chars_per_sec": step * cfg.k1 * cfg.batch / elapsed,
                                         "own_val": best_val}


def compare(name, seconds, extra):
    import numpy as np

    from charrnn.checkpoint import load_checkpoint
    from charrnn.config import TrainConfig
    from charrnn.corpus import Vocab, read_text, split
    from charrnn.evaluate import evaluate
    from charrnn.model import ModelSpec

    corpus = build_corpus(name)
    run_dir, ours = run_charrnn(corpus, seconds, name, extra)
    arrays, meta = load_checkpoint(run_dir / "best.npz")
    cfg = TrainConfig.from_dict(meta["config"])
    text = read_text(corpus, cfg.encoding)
    vocab = Vocab.from_json(meta["vocab"])
    train_ids, val_ids, test_ids = split(vocab.encode(text), (1 - cfg.val_fraction - cfg.test_fraction,
                                                              cfg.val_fraction, cfg.test_fraction))
    spec = ModelSpec(cfg.cell, vocab.size, cfg.hidden, cfg.layers)
    cfg.spec, cfg.vocab_size = spec, vocab.size

    def score(params):
        return [evaluate(spec, np.asarray(params, np.float32), ids, cfg.batch, cfg.k1)[0] for ids in (val_ids, test_ids)]

    ours["val"], ours["test"] = score(arrays["params"])
    their_params, theirs = run_torch(cfg, train_ids, val_ids, seconds)
    theirs["val"], theirs["test"] = score(their_params)
    return {"corpus": name, "chars": len(text), "vocab": vocab.size, "model": f"{cfg.cell} {cfg.layers}x{cfg.hidden}",
            "dropout": cfg.dropout, "charrnn": ours, "torch": theirs, "run": str(run_dir)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=6.0, help="wall time per side and corpus")
    ap.add_argument("--corpora", default="shakespeare,stdlib,docstrings")
    ap.add_argument("charrnn_args", nargs="*", help="extra options for charrnn train (after --)")
    args = ap.parse_args()
    lift_openblas()
    import torch

    torch.set_num_threads(2)
    print(describe())
    print(f"torch {torch.__version__} on {torch.get_num_threads()} threads")
    print(f"{args.minutes:g} minutes per side; both selected models scored by charrnn's evaluator", flush=True)
    rows = []
    for name in args.corpora.split(","):
        row = compare(name, args.minutes * 60, args.charrnn_args)
        rows.append(row)
        c, t = row["charrnn"], row["torch"]
        print(f"\n{name}: {row['chars']:,} chars, V={row['vocab']}, {row['model']}, dropout {row['dropout']:g}")
        print(f"  charrnn  {c['updates']:6d} updates  {c['chars_per_sec']:8,.0f} chars/s  val {c['val']:.4f}  test {c['test']:.4f}")
        print(f"  pytorch  {t['updates']:6d} updates  {t['chars_per_sec']:8,.0f} chars/s  val {t['val']:.4f}  test {t['test']:.4f}"
              f"  (its own val {t['own_val']:.4f})")
        print(f"  charrnn ahead by {t['val'] - c['val']:+.4f} nats of validation loss, {t['test'] - c['test']:+.4f} of test",
              flush=True)
    RESULTS.mkdir(exist_ok=True)
    with open(RESULTS / f"quality-{time.strftime('%Y%m%d-%H%M%S')}.json", "w") as f:
        json.dump({"cpu": cpu(), "blas": blas_kernel(), "minutes": args.minutes, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
