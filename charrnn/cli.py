"""The command line: parse, call, print. Known errors print one red line and exit 1."""
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
