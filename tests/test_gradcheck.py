"""Finite-difference checks of every tensor, for the classic and both truncated schemes."""
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from charrnn.cells import CELLS, NAMES
from charrnn.kernels import leaky, lstm
from charrnn.cli import app
from charrnn.gradcheck import check_gradients
from charrnn.model import ModelSpec, Stack, init_params
from charrnn.tbptt import Scheduler

runner = CliRunner()


@pytest.mark.parametrize("cell", NAMES)
@pytest.mark.parametrize("k1,k2", [(6, 6), (3, 7), (6, 2)], ids=["k1=k2", "k1<k2", "k1>k2"])
def test_truncated_gradient_matches_finite_differences(cell, k1, k2):
    rows = check_gradients(cell, layers=2, hidden=6, batch=2, k1=k1, k2=k2, seed=3)
    trained = [t for layer in (7, 6) for t in CELLS[cell].param_shapes(layer, 6, ModelSpec(cell, 7, 6, 2)) if t.trains]
    assert len(rows) == len(trained) + 2  # every trained tensor is checked
    for r in rows:
        assert r.checked > 0
        assert r.max_rel <= 1e-6, (r.tensor, r.max_rel)
        assert r.mean_rel <= 1e-7, (r.tensor, r.mean_rel)


def _window_grad(k1, k2, params, spec, text):
    """Gradient of the second update of a scheduler run over `text` (2*k1+1, B)."""
    sched = Scheduler(k1, k2)
    stack = Stack(spec, text.shape[1], sched.window, np.float64)
    grads = np.zeros_like(params)
    sched.reset(stack)
    for u in range(2):
        ids, targets = sched.inputs(stack)
        ids[:] = text[u * k1 : (u + 1) * k1]
        targets[:] = text[u * k1 + 1 : (u + 1) * k1 + 1]
        loss = sched.update(stack, params, grads)
        sched.advance(stack)
    return loss, grads


def test_k2_changes_the_gradient_but_not_the_loss():
    # the forward pass runs on regardless of k2, so the counted loss is the same; only how far
    # the gradient flows back differs
    spec = ModelSpec("lstm", 5, 4, 1)
    rng = np.random.default_rng(0)
    params = init_params(spec, rng, np.float64)
    text = rng.integers(0, 5, (2 * 4 + 1, 2)).astype(np.int32)
    results = {k2: _window_grad(4, k2, params, spec, text) for k2 in (1, 4, 8)}
    losses = [loss for loss, _ in results.values()]
    assert np.allclose(losses, losses[0], rtol=1e-13)
    g1, g4, g8 = (results[k][1] for k in (1, 4, 8))
    assert not np.allclose(g1, g4) and not np.allclose(g4, g8)
    # the output layer's gradient never depends on how far back the recurrence is followed
    n_out = spec.hidden * spec.vocab_size + spec.vocab_size
    np.testing.assert_allclose(g1[-n_out:], g8[-n_out:], rtol=1e-12)


def test_cli_passes_and_prints_table():
    result = runner.invoke(app, ["gradcheck", "--cell", "gru", "--layers", "2"])
    assert result.exit_code == 0, result.output
    assert "layer1.bhn" in result.output and "pass" in result.output


def test_cli_checks_a_comma_separated_list_of_cells_as_gradflow_takes_it(monkeypatch):
    # gradflow took --cell lstm,gru; gradcheck refused it
    import charrnn.gradcheck as gradcheck_module

    checked = []
    check = gradcheck_module.check_gradients
    monkeypatch.setattr(gradcheck_module, "check_gradients", lambda cell, *a, **kw: checked.append(cell) or
                        check(cell, *a, **kw))
    result = runner.invoke(app, ["gradcheck", "--cell", "leaky, RNN,leaky", "--layers", "1", "--hidden", "3"])
    assert result.exit_code == 0 and "all tensors pass" in result.output, result.output
    assert checked == ["leaky", "leaky", "rnn"]  # leaky with fixed and with learned time constants
    result = runner.invoke(app, ["gradcheck", "--cell", "rnn,"])
    assert result.exit_code == 2 and "'' is not one of rnn, lstm" in result.output


def test_cli_checks_a_leaky_cell_s_learned_time_constants(monkeypatch):
    # the README says every trained tensor of every cell is checked; the rates `a` train only
    # with --tau learned, which gradcheck never set, and a broken gradient of them passed
    original = leaky.LeakyCell.backward

    def broken(self, buf, scratch, p, g, *args):
        original(self, buf, scratch, p, g, *args)
        if "a" in g:
            g["a"] *= 1.001

    result = runner.invoke(app, ["gradcheck", "--cell", "leaky", "--layers", "2"], env={"COLUMNS": "200"})
    rows = [line for line in result.output.splitlines() if "layer1.a" in line]
    assert result.exit_code == 0 and len(rows) == 1 and "leaky (--tau learned)" in rows[0] and "pass" in rows[0]
    monkeypatch.setattr(leaky.LeakyCell, "backward", broken)
    result = runner.invoke(app, ["gradcheck", "--cell", "leaky", "--layers", "2"], env={"COLUMNS": "200"})
    failed = [line for line in result.output.splitlines() if "FAIL" in line]
    assert result.exit_code == 1 and len(failed) == 2 and all(".a " in line for line in failed), result.output


def test_every_setting_gradcheck_runs_a_cell_with_is_of_an_option_it_reads():
    # the echo-state network runs the leaky cell's kernels, and took its --tau learned: a second
    # check of the same frozen reservoir, labelled with an option it does not have
    from charrnn.cells import OPTIONS

    for name in NAMES:
        for options in CELLS[name].checked_options:
            assert all(name in OPTIONS[option].cells for option, _ in options), (name, options)


def test_cli_exits_1_on_a_broken_gradient(monkeypatch):
    original = lstm.LSTMCell.backward

    def broken(self, buf, scratch, p, g, *args):
        original(self, buf, scratch, p, g, *args)
        g["Wh"] *= 1.001  # a 0.1% error in one tensor's gradient

    monkeypatch.setattr(lstm.LSTMCell, "backward", broken)
    result = runner.invoke(app, ["gradcheck", "--cell", "lstm", "--layers", "2"])
    assert result.exit_code == 1
    assert "FAIL" in result.output
    failed = [line for line in result.output.splitlines() if "FAIL" in line]
    assert all("Wh" in line for line in failed) and len(failed) == 2  # both layers' Wh, nothing else


@pytest.mark.parametrize("cell, kw", [
    # correct gradients that failed at the one step of 1e-2: truncation error of wide, deep models
    ("rnn", dict(layers=4, hidden=128, max_per_tensor=20)),
    ("rnn", dict(seed=1, k1=1, k2=3)),
])
def test_correct_gradients_pass_where_the_first_step_is_too_coarse(cell, kw):
    rows = check_gradients(cell, **kw)
    assert all(r.passed for r in rows), [(r.tensor, r.max_rel) for r in rows if not r.passed]



def test_gradients_a_loss_too_large_rounds_away_are_left_out_as_unresolved_not_failed():
    # a deep IndRNN's relu state, grown over 200 steps, makes a loss of millions, which float64
    # holds to within 1e-9: correct gradients whose difference from the numeric one was that
    # rounding failed ("4 tensors failed" at 8 layers of 256, output.by's numeric gradient 0)
    rows = check_gradients("indrnn", layers=4, hidden=16, steps=200, batch=1, max_per_tensor=3)
    assert rows[0].loss > 1e6 and sum(r.unresolved for r in rows) >= 1
    assert all(r.passed for r in rows), [(r.tensor, r.max_rel) for r in rows if not r.passed]
    # a loss of a few nats resolves what it is asked: nothing is left out
    assert not any(r.unresolved for r in check_gradients("indrnn", layers=2, hidden=8))


def test_a_tensor_with_no_element_to_compare_is_not_shown_as_passing():
    # every element drawn of output.by unresolved: "0 (+1 unresolved) ... 0.00e+00 pass", and
    # "all tensors pass", though nothing of it was compared
    result = runner.invoke(app, ["gradcheck", "--cell", "indrnn", "--layers", "4", "--hidden", "16", "--steps", "200",
                                 "--batch", "1", "--per-tensor", "1"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if "output.by" in line)
    assert "none compared" in row and "pass" not in row and "e+00" not in row, row
    assert "all tensors pass" not in result.output
    # (how many, of a loss of millions, depends on its rounding)
    assert re.search(r"every tensor compared passes \(max relative error <= 1e-06\); \d+ tensors? had none to "
                     r"compare", result.output), result.output
    # every element drawn at a kink: no worst element nor gradients made up for it (its element 0's were)
    rows = check_gradients("indrnn", layers=4, hidden=16, steps=200, batch=1, max_per_tensor=1, seed=2)
    b = next(r for r in rows if r.tensor == "layer0.b")
    assert (b.checked, b.kinked, b.worst, b.passed) == (0, 1, (), True) and np.isnan([b.analytic, b.numeric]).all()


def test_elements_left_out_as_unresolved_are_said_with_both_their_causes():
    # at --tolerance 1e-30 most elements were left out, at a loss of 2, as one "a loss as large as
    # 2.13 rounds away ... (fewer --steps or --layers make it smaller)": the tolerance went unsaid
    result = runner.invoke(app, ["gradcheck", "--cell", "rnn", "--layers", "1", "--tolerance", "1e-30"],
                           env={"COLUMNS": "400"})
    assert result.exit_code == 1, result.output
    note = next(line for line in result.output.splitlines() if line.startswith("note:"))
    assert re.fullmatch(r"note: \d+ elements left out as unresolved: their two gradients differ by less than a loss "
                        r"as large as 2\.\d+ rounds away, and by a relative error above --tolerance 1e-30 \(a "
                        r"larger --tolerance passes them; fewer --steps or --layers make a large loss smaller\)",
                        note), note


def test_input_weights_are_checked_in_the_rows_of_the_characters_read():
    # at --vocab 512 the elements drawn were nearly all in rows of characters the window never
    # read, whose gradients are 0: "checked 20, pass" compared nothing with nothing
    rows = check_gradients("rnn", layers=1, hidden=4, vocab=512, max_per_tensor=20)
    wx = next(r for r in rows if r.tensor == "layer0.Wx")
    assert wx.checked == 20 and wx.passed and wx.analytic != 0.0 and wx.max_rel > 0.0


@pytest.mark.parametrize("command, module, name", [("gradcheck", "charrnn.gradcheck", "check_gradients"),
                                                   ("gradflow", "charrnn.gradflow", "run")])
def test_a_ctrl_c_that_the_work_would_swallow_still_stops_the_command(monkeypatch, command, module, name):
    """numba's callbacks from LLVM swallow a KeyboardInterrupt raised in them, as a Ctrl-C in the
    middle of a compile is: run in the main thread, gradcheck's first run printed a traceback and
    checked on to the end, exit 0. The work runs in a thread of its own, and the Ctrl-C lands in
    the main thread's wait."""
    import importlib
    import os
    import signal
    import time

    def swallowing(*args, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1.0)
        except KeyboardInterrupt:  # as a callback from LLVM does
            pass
        return []

    monkeypatch.setattr(importlib.import_module(module), name, swallowing)
    result = runner.invoke(app, [command, "--cell", "rnn"])
    assert result.exit_code == 130, result.output


def test_a_tolerance_of_zero_is_refused():
    # accepted, it failed every tensor (errors of 1e-13 are not 0), advising fewer --steps or --layers
    result = runner.invoke(app, ["gradcheck", "--cell", "rnn", "--tolerance", "0"])
    assert result.exit_code == 2 and "0.0 is not in the range x>0" in result.output, result.output
