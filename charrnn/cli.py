"""The command line: parse, call, print. Known errors print one red line and exit 1."""
import math
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import CharrnnError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Character-level RNN, LSTM and GRU language models, trained on the CPU.")
out = Console()
err = Console(stderr=True)

CELL_CHOICES = ("rnn", "lstm", "gru")


@app.callback()
def _root():
    """Character-level RNN, LSTM and GRU language models, trained on the CPU."""


def _cells(cell: str):
    cell = cell.lower()
    if cell == "all":
        return list(CELL_CHOICES)
    if cell not in CELL_CHOICES:
        raise typer.BadParameter(f"{cell!r} is not one of rnn, lstm, gru, all", param_hint="--cell")
    return [cell]

@app.command()
def train(
    corpus: Optional[Path] = typer.Argument(None, help="Text file to learn from. Default: the shipped corpora/tinyshakespeare.txt."),
    cell: str = typer.Option("lstm", help="rnn, lstm or gru."),
    hidden: int = typer.Option(512, min=1, max=8192, help="Hidden units per layer."),
    layers: int = typer.Option(1, min=1, max=16, help="Stacked layers."),
    dropout: float = typer.Option(0.0, min=0.0, max=0.99, help="Dropout between layers and before the output layer."),
    batch: int = typer.Option(32, min=1, max=4096, help="Parallel streams of text."),
    k1: int = typer.Option(100, min=1, max=10000, help="Steps between updates (the loss of these steps is averaged)."),
    k2: int = typer.Option(100, min=1, max=10000, help="Steps the gradient flows back (k2 > k1: overlapping windows)."),
    optimizer: str = typer.Option("adam", help="adam, rmsprop, adagrad or sgd (with momentum 0.9)."),
    lr: float = typer.Option(2e-3, min=0.0, help="Learning rate."),
    lr_decay: float = typer.Option(0.97, min=0.0, max=1.0, help="Multiply the learning rate by this every --decay-every updates."),
    decay_every: int = typer.Option(1000, min=0, help="Updates between learning-rate decays (0: never)."),
    clip_norm: float = typer.Option(5.0, min=0.0, help="Clip the global gradient norm to this (0: off)."),
    clip_value: float = typer.Option(0.0, min=0.0, help="Clip each gradient element to +-this (0: off)."),
    epochs: Optional[float] = typer.Option(None, min=0.0, help="Stop after this many passes over the training text."),
    max_steps: Optional[int] = typer.Option(None, min=0, help="Stop after this many updates."),
    time_limit: Optional[float] = typer.Option(None, min=0.0, help="Stop after this many seconds of training [default: 720]."),
    eval_every: int = typer.Option(200, min=1, help="Updates between validation runs."),
    eval_chars: int = typer.Option(0, min=0, help="Validate on at most this many characters (0: all)."),
    checkpoint_every: int = typer.Option(200, min=1, help="Updates between saves of latest.npz."),
    val_fraction: float = typer.Option(0.05, min=0.0, max=0.45, help="Part of the text held out for validation."),
    test_fraction: float = typer.Option(0.05, min=0.0, max=0.45, help="Part of the text held out for the final test."),
    encoding: str = typer.Option("utf-8", help="utf-8, latin-1 or bytes (each byte one character)."),
    seed: int = typer.Option(1234, help="Seed for initialisation and dropout."),
    run: str = typer.Option("", help="Run name: checkpoints go to OUT_DIR/RUN. Default: CELL-DATE-TIME."),
    out_dir: Path = typer.Option(Path("checkpoints"), help="Folder for run folders."),
    resume: Optional[Path] = typer.Option(None, help="Continue a run (its folder or a checkpoint). Only the stopping rules may change."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display; print only the summary."),
):
    """Train a model on a text file, saving latest.npz and best.npz under OUT_DIR/RUN."""
    from .config import TrainConfig
    from .train import Interrupted, Trainer, new_run_dir

    say = (lambda *a: None) if quiet else (lambda msg: err.print(msg, highlight=False))
    stops = {k: v for k, v in (("epochs", epochs), ("max_steps", max_steps), ("time_limit", time_limit)) if v is not None}
    if resume is not None:
        with err.status("loading the checkpoint and the corpus..."):
            trainer = Trainer.resume(resume, say=say, **stops)
        say(f"resuming {trainer.run_dir} at update {trainer.step}")
    else:
        cfg = TrainConfig(corpus=str(corpus or ""), encoding=encoding, val_fraction=val_fraction,
                          test_fraction=test_fraction, cell=cell.lower(), hidden=hidden, layers=layers,
                          dropout=dropout, batch=batch, k1=k1, k2=k2, optimizer=optimizer.lower(), lr=lr,
                          lr_decay=lr_decay, decay_every=decay_every, clip_norm=clip_norm, clip_value=clip_value,
                          eval_every=eval_every, eval_chars=eval_chars, checkpoint_every=checkpoint_every,
                          seed=seed, run=run, out_dir=str(out_dir), **stops).validate()
        run_dir = new_run_dir(cfg)
        if (run_dir / "latest.npz").exists() or (run_dir / "best.npz").exists():
            raise CharrnnError(f"{run_dir} already holds a run; continue it with --resume {run_dir} "
                               f"or choose another --run name")
        trainer = Trainer(cfg, run_dir, say=say)
    cfg = trainer.cfg
    if not quiet:
        settings = " ".join(f"{k}={v}" for k, v in cfg.to_dict().items())
        err.print(f"[dim]{settings}[/]", highlight=False)
        err.print(f"{trainer.spec.cell} {cfg.layers}x{cfg.hidden}, vocabulary {trainer.vocab.size}, "
                  f"{trainer.params.size:,} parameters; train/val/test {len(trainer.train_ids):,}/"
                  f"{len(trainer.val_ids):,}/{len(trainer.test_ids):,} characters -> {trainer.run_dir}",
                  highlight=False)
    try:
        if quiet:
            summary = trainer.run()
        else:
            with _TrainProgress(trainer) as progress:
                summary = trainer.run(progress.update)
    except Interrupted as e:
        err.print(f"interrupted at update {trainer.step}; saved {e.path}. Continue with: "
                  f"charrnn train --resume {trainer.run_dir}", highlight=False)
        raise typer.Exit(130)
    val, test = summary["val_loss"], summary["test_loss"]
    out.print(f"done: {summary['steps']} updates, {summary['epochs']:.2f} epochs, {summary['elapsed']:.0f} s, "
              f"{summary['train_chars_per_sec']:,.0f} chars/s; val loss {val:.4f} nats ({val / math.log(2):.3f} bits/char), "
              f"best {summary['best_val_loss']:.4f}; test {test:.4f} nats ({test / math.log(2):.3f} bits/char); "
              f"checkpoints in {summary['run_dir']}", highlight=False)


class _TrainProgress:
    """A rich progress bar: step, epoch, train loss, val loss and bits per character, chars/s,
    clip rate, time left."""

    def __init__(self, trainer):
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.trainer = trainer
        self.progress = Progress(
            TextColumn("[bold]{task.fields[step]}"), BarColumn(bar_width=20),
            TextColumn("ep {task.fields[epoch]:.2f}  loss {task.fields[loss]}  val {task.fields[val]}  "
                       "{task.fields[chars]} ch/s  clip {task.fields[clip]}"),
            TimeRemainingColumn(), console=err, transient=False)
        self.fields = {"step": "compiling kernels...", "epoch": 0.0, "loss": "-", "val": "-", "chars": "-", "clip": "-"}

    def __enter__(self):
        self.progress.__enter__()
        self.task = self.progress.add_task("train", total=1000, **self.fields)
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def update(self, trainer, record):
        f = self.fields
        f["step"] = f"step {trainer.step}"
        f["epoch"] = trainer.epoch()
        if record is not None:
            f["loss"] = f"{record['loss']:.3f}"
            f["chars"] = f"{record['chars_per_sec']:,.0f}"
            f["clip"] = f"{record['clipped']:.0%}"
        if math.isfinite(trainer.last_val):
            f["val"] = f"{trainer.last_val:.3f} ({trainer.last_val / math.log(2):.2f} bpc)"
        self.progress.update(self.task, completed=min(1000, 1000 * trainer.done_fraction()), **f)


@app.command()
def gradcheck(
    cell: str = typer.Option("all", help="Cell to check: rnn, lstm, gru or all."),
    layers: int = typer.Option(2, min=1, max=8, help="Stacked layers."),
    hidden: int = typer.Option(8, min=1, max=256, help="Hidden units per layer."),
    steps: int = typer.Option(6, min=1, max=200, help="Steps per window (k1 = k2 = steps unless set)."),
    batch: int = typer.Option(3, min=1, max=64, help="Parallel streams."),
    vocab: int = typer.Option(7, min=2, max=512, help="Characters in the random text."),
    seed: int = typer.Option(0, help="Seed for the random model and text."),
    k1: Optional[int] = typer.Option(None, min=1, max=200, help="Steps between updates (default: --steps)."),
    k2: Optional[int] = typer.Option(None, min=1, max=200, help="Steps the gradient flows back (default: --steps)."),
    tolerance: float = typer.Option(1e-6, min=0.0, help="Largest relative error that passes."),
    per_tensor: int = typer.Option(200, min=1, help="Elements checked per tensor (all, if it has fewer)."),
):
    """Check every gradient against finite differences, in float64. Exits 1 on any failure."""
    from .gradcheck import check_gradients

    k1 = steps if k1 is None else k1
    k2 = steps if k2 is None else k2
    table = Table(title=f"gradcheck: {layers} layer(s), H={hidden}, V={vocab}, B={batch}, k1={k1}, k2={k2}, seed={seed}")
    for name, justify in (("cell", "left"), ("tensor", "left"), ("checked", "right"), ("max rel err", "right"),
                          ("mean rel err", "right"),
                           ("worst element", "left"), ("result", "left")):
        table.add_column(name, justify=justify)
    failed = 0
    for c in _cells(cell):
        with err.status(f"checking {c} (the first run compiles the kernels)..."):
            rows = check_gradients(c, layers, hidden, batch=batch, vocab=vocab, seed=seed, k1=k1, k2=k2,
                                   steps=steps, tolerance=tolerance, max_per_tensor=per_tensor)
        for r in rows:
            failed += not r.passed
            verdict = "[green]pass[/]" if r.passed else "[bold red]FAIL[/]"
            table.add_row(r.cell, r.tensor, str(r.checked), f"{r.max_rel:.2e}", f"{r.mean_rel:.2e}",
                          str(list(r.worst)), verdict)
    out.print(table)
    if failed:
        err.print(f"[bold red]error:[/] {failed} tensor(s) failed the gradient check (tolerance {tolerance:g})")
        raise typer.Exit(1)
    out.print(f"[green]all tensors pass[/] (max relative error <= {tolerance:g})")


def main():
    """Entry point: known errors become one line on stderr and exit code 1."""
    try:
        app()
    except CharrnnError as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        raise SystemExit(1)
