"""The cell registry and contract: every cell is usable everywhere, an unknown one nowhere."""
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from charrnn.cells import CELLS, NAMES
from charrnn.checkpoint import save_checkpoint
from charrnn.cli import app
from charrnn.config import TrainConfig
from charrnn.corpus import Vocab
from charrnn.errors import CharrnnError
from charrnn.gradcheck import check_gradients
from charrnn.kernels.generate import CODES
from charrnn.model import Layout, ModelSpec, init_params
from charrnn.sampling import load_model

runner = CliRunner()


def test_every_cell_has_a_sampling_step_and_the_contract():
    assert set(CODES) == set(NAMES)
    for name in NAMES:
        cell = CELLS[name]
        assert cell.name == name
        shapes = cell.param_shapes(5, 3, ModelSpec(name, 5, 3, 1))
        names = [t.name for t in shapes]
        assert "Wx" in names and "b" in names and len(set(names)) == len(names)
        assert cell.states[0] == "hs"


def test_an_unknown_cell_is_an_error_everywhere(tmp_path):
    with pytest.raises(CharrnnError, match="unknown cell 'gru2'"):
        CELLS["gru2"]
    with pytest.raises(ValueError, match="unknown cell"):
        ModelSpec("gru2", 5, 3, 1)
    with pytest.raises(CharrnnError, match="--cell gru2 is out of range"):
        TrainConfig(cell="gru2").validate()
    for command in (["train", "--cell", "gru2", "--max-steps", "1"], ["gradcheck", "--cell", "gru2"],
                    ["gradflow", "--cell", "gru2"]):
        r = runner.invoke(app, command)
        said = r.output + str(r.exception or "")  # a CharrnnError reaches main(), which prints it
        assert r.exit_code in (1, 2) and "gru2" in said, (command, said)
    # a checkpoint of a cell this charrnn does not know is refused by name, not run as another
    vocab = Vocab.from_text("ab")
    spec = ModelSpec("gru", 2, 3, 1)
    path = tmp_path / "m.npz"
    save_checkpoint(path, {"params": init_params(spec, np.random.default_rng(0))},
                    {"config": {"cell": "gru2", "hidden": 3, "layers": 1}, "vocab": vocab.to_json()})
    with pytest.raises(CharrnnError, match="config.cell is 'gru2', not one of rnn, lstm"):
        load_model(path)


def test_cli_choices_come_from_the_registry():
    r = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "400"})
    for name in NAMES:
        assert name in r.output


@pytest.mark.parametrize("tau, trains", [("learned", True), ("3", False), ("2:40", False)])
def test_leaky_time_constants(tau, trains):
    spec = ModelSpec("leaky", 5, 4, 2, (("tau", tau),))
    layout = Layout(spec)
    assert ("layer1.a" not in layout.frozen) == trains
    a = layout.views(init_params(spec, np.random.default_rng(0)))["layer0.a"]
    expected = {"learned": 1 / np.geomspace(1, 50, 4), "3": np.full(4, 1 / 3), "2:40": 1 / np.geomspace(2, 40, 4)}
    np.testing.assert_allclose(a, expected[tau], rtol=1e-6)


@pytest.mark.parametrize("tau, error", [("0.5", "out of range"), ("1:20000", "out of range"), ("1:x", "malformed"),
                                        ("1:2:3", "malformed"), ("learn", "malformed"), ("1:", "malformed"),
                                        ("", "malformed")])
def test_bad_time_constants_are_one_clear_error(tau, error):
    shown = tau or "''"  # an empty one was "--tau  is out of range"
    # a malformed one ("1:") was called out of range too
    said = {"out of range": re.escape(f"--tau {shown} is out of range: every tau must be in [1, 10000]"),
            "malformed": re.escape(f"--tau {shown} is not a number, LO:HI or 'learned'; give e.g. --tau 5, "
                                   "--tau 1:50 or --tau learned")}[error]
    with pytest.raises(CharrnnError, match=f"^{said}$"):
        TrainConfig(tau=tau).validate()


def test_esn_reservoir_has_the_spectral_radius_and_only_the_readout_trains():
    spec = ModelSpec("esn", 6, 20, 2, (("spectral_radius", 0.8), ("leak", 0.3)))
    layout = Layout(spec)
    views = layout.views(init_params(spec, np.random.default_rng(0), np.float64))
    for l in range(2):
        assert np.max(np.abs(np.linalg.eigvals(views[f"layer{l}.Wh"]))) == pytest.approx(0.8, rel=1e-9)
        assert np.all(views[f"layer{l}.a"] == 0.3)
    assert layout.segments == [(layout.size - 20 * 6 - 6, layout.size)]  # Wy and by, nothing else


def test_learned_time_constants_pass_gradcheck():
    rows = check_gradients("leaky", layers=2, hidden=5, batch=2, k1=4, k2=6, seed=1, options=(("tau", "learned"),))
    assert any(r.tensor == "layer0.a" for r in rows)
    for r in rows:
        assert r.max_rel <= 1e-6 and r.mean_rel <= 1e-7, (r.tensor, r.max_rel)


def test_indrnn_gradcheck_leaves_out_only_the_kinks():
    rows = check_gradients("indrnn", layers=2, hidden=6, batch=2, k1=6, k2=6, seed=3)
    for r in rows:
        assert r.checked > 0 and r.kinked < r.checked, (r.tensor, r.checked, r.kinked)
        assert r.max_rel <= 1e-6 and r.mean_rel <= 1e-7, (r.tensor, r.max_rel)
