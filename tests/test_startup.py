"""Start-up of a command: main() holds the cyclic garbage collector off while the command is set
up (imports, numba's types, the kernels loaded), then freezes what that made and runs the
collector again for the command's own work; at exit it freezes what is left."""
import gc
import sys

import pytest

import charrnn.cli as cli
from charrnn.errors import CharrnnError
from test_plot import _write_run


def _main(monkeypatch, *args):
    monkeypatch.setattr(sys, "argv", ["charrnn", *map(str, args)])
    with pytest.raises(SystemExit) as exit:
        cli.main()
    return exit.value.code


def test_the_collector_is_held_while_a_command_sets_up_and_runs_after(tmp_path, monkeypatch):
    seen = {}

    def load(path):  # sample's first step, before its kernels are loaded
        seen["setting up"] = gc.isenabled()
        raise CharrnnError("no such model")

    monkeypatch.setattr("charrnn.api.load", load)
    assert gc.isenabled()
    assert _main(monkeypatch, "sample", tmp_path / "x.npz") == 1
    assert seen == {"setting up": False}
    assert gc.isenabled()  # an error during set-up does not leave it off

    from charrnn import plot

    real_charts = plot.charts

    def charts(metrics):  # plot's work, after its set-up
        seen["working"] = gc.isenabled()
        seen["frozen"] = gc.get_freeze_count()
        return real_charts(metrics)

    monkeypatch.setattr(plot, "charts", charts)
    gc.unfreeze()
    assert _main(monkeypatch, "plot", _write_run(tmp_path / "run")) == 0
    assert seen["working"] is True
    assert seen["frozen"] > 1000  # start-up's objects: out of the collector's sight
    assert gc.isenabled() and gc.get_freeze_count() > 1000  # and, on the way out, what is left


def test_the_app_called_in_this_process_leaves_the_collector_alone(tmp_path):
    from typer.testing import CliRunner

    gc.unfreeze()
    r = CliRunner().invoke(cli.app, ["plot", str(_write_run(tmp_path / "run"))])
    assert r.exit_code == 0, r.output
    assert gc.isenabled() and gc.get_freeze_count() == 0
