"""One source for every option's bounds and choices: the help prints them, the CLI refuses what
lies outside them with the usage code 2, and TrainConfig.validate / check_options agree."""
import json
import re

import pytest
import typer
from typer.testing import CliRunner

from charrnn import cells
from charrnn.checkpoint import load_checkpoint
from charrnn.cli import app
from charrnn.config import (ACTS_WITH, CELLS, CHOICES, GRADCHECK_RANGES, GRADFLOW_RANGES, INSPECT_RANGES, RANGES, SAMPLE_RANGES,
                            SCHEDULE_OPTIONS, Range, TrainConfig)
from charrnn.errors import CharrnnError, UsageError
from charrnn.model import ModelSpec
from charrnn.sampling import check_options

runner = CliRunner()
COMMAND = typer.main.get_command(app)


def cli_options(command):
    return {p.name for p in COMMAND.commands[command].params}


def around(r: Range, integer: bool):
    """(value, inside?) pairs at and just beyond each end of r."""
    step = 1 if integer else 1e-3
    pairs = []
    if r.low is not None:
        pairs += [(r.low, not r.open_low), (r.low - step, False), (r.low + step, True)]
    if r.high is not None:
        pairs += [(r.high, not r.open_high), (r.high + step, False), (r.high - step, True)]
    return pairs


def is_int(name):
    return isinstance(getattr(TrainConfig, name), int)


def test_range_membership():
    closed, half_open = Range(1, 3), Range(0, 1, open_low=True)
    assert 1 in closed and 3 in closed and 0 not in closed and 4 not in closed
    assert 0 not in half_open and 1e-9 in half_open and 1 in half_open
    for odd in (float("nan"), float("inf"), -float("inf"), True, "1", None):
        assert odd not in Range()
    assert [str(r) for r in (Range(0), Range(0, open_low=True), Range(1, 16), Range(0, 1, open_high=True))] == \
        ["x>=0", "x>0", "1<=x<=16", "0<=x<1"]


@pytest.mark.parametrize("command, ranges", [("train", RANGES), ("sample", SAMPLE_RANGES)])
def test_help_prints_each_range(command, ranges):
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "250"}, terminal_width=250)
    assert result.exit_code == 0
    shown = 0
    for name in ranges.keys() & cli_options(command):
        # the option's own line, with its metavar (another option's help may wrap onto a line
        # that starts with this option's name)
        line = next(l for l in result.stdout.splitlines()
                    if re.match(rf"\W*--{name.replace('_', '-')}\s", l) and " range>" in l)
        assert f"[{ranges[name]}]" in line, line
        shown += 1
    assert shown >= 5


@pytest.mark.parametrize("command", ["train", "gradflow"])
def test_help_names_the_range_of_tau_which_typer_does_not(command):
    # --tau is text (LO:HI, 'learned'): its help said "tau >= 1", its check [1, 10000]
    from charrnn.cells import OPTIONS

    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "250"}, terminal_width=250)
    tau = OPTIONS["tau"]
    assert result.exit_code == 0 and f"tau in [{tau.low:g}, {tau.high:g}]" in result.stdout


@pytest.mark.parametrize("name", sorted(RANGES))
def test_train_cli_and_validate_agree_at_each_bound(name, tmp_path):
    on_cli = name in cli_options("train")
    other = {"test_fraction": 0.0} if name == "val_fraction" else {"val_fraction": 0.0} if name == "test_fraction" else {}
    if name == "time_limit":  # --time-limit 0 alone leaves nothing to stop the run (below)
        other = {"max_steps": 1}
    if name in cells.OPTIONS:  # given for a cell that reads it (below)
        other = {"cell": cells.OPTIONS[name].cells[0]}
    if name in SCHEDULE_OPTIONS:  # given for a schedule that reads it
        other = {"schedule": SCHEDULE_OPTIONS[name][0]}
    if name in ACTS_WITH and not getattr(TrainConfig(), ACTS_WITH[name]):  # with the setting it acts with
        other[ACTS_WITH[name]] = 1
    for value, inside in around(RANGES[name], is_int(name)):
        if inside:
            TrainConfig(**{name: value}, **other).validate()
        else:
            with pytest.raises(CharrnnError, match=f"--{name.replace('_', '-')} "):
                TrainConfig(**{name: value}, **other).validate()
        if on_cli:
            args = [f"--{k.replace('_', '-')}={v}" for k, v in {name: value, **other}.items()]
            # a missing corpus: an accepted value gets as far as reading it (exit 1)
            r = runner.invoke(app, ["train", str(tmp_path / "missing.txt"), *args])
            if inside:
                assert r.exit_code == 1 and "missing.txt" in str(r.exception), (value, r.output)
            else:
                assert r.exit_code == 2 and str(RANGES[name]) in r.output, (value, r.output)


@pytest.mark.parametrize("name", sorted(SAMPLE_RANGES))
def test_sample_cli_and_check_options_agree_at_each_bound(name, tmp_path):
    checked = name in ("length", "temperature", "top_k", "top_p", "num_samples", "seed")
    for value, inside in around(SAMPLE_RANGES[name], name not in ("temperature", "top_p")):
        if checked and inside:
            check_options(**{name: value})
        elif checked:
            with pytest.raises(CharrnnError, match=f"--{name.replace('_', '-')} "):
                check_options(**{name: value})
        r = runner.invoke(app, ["sample", str(tmp_path / "missing.npz"), f"--{name.replace('_', '-')}={value}"])
        if inside:
            assert r.exit_code == 1 and "missing.npz" in str(r.exception), (value, r.output)
        else:
            assert r.exit_code == 2, (value, r.output)


DIAGNOSTIC_RANGES = {"gradcheck": GRADCHECK_RANGES, "gradflow": GRADFLOW_RANGES, "inspect": INSPECT_RANGES}
FLOAT_OPTIONS = {"tolerance", "radius", "forget_bias"}


@pytest.mark.parametrize("command, name, value", [
    (command, name, value) for command, ranges in DIAGNOSTIC_RANGES.items() for name, allowed in ranges.items()
    for value in [v for v, inside in around(allowed, name not in FLOAT_OPTIONS) if not inside]
    + (["nan"] if name in FLOAT_OPTIONS else [])
] + [("gradflow", "radius", "1e308")])  # the rescaled weights overflowed: "internal error (LinAlgError ...)"
def test_the_diagnostic_commands_refuse_what_lies_outside_their_ranges(command, name, value, tmp_path):
    # typer's own min let NaN through, and no bound let a negative seed reach numpy: both were
    # an internal error, or a chart of nothing. Every bound comes from config.py.
    assert name in cli_options(command)
    args = [str(tmp_path / "missing.npz"), str(tmp_path / "missing.txt")] if command == "inspect" else ["--cell", "lstm"]
    r = runner.invoke(app, [command, *args, f"--{name.replace('_', '-')}={value}"])
    allowed = DIAGNOSTIC_RANGES[command][name]
    why = ("is not a finite number" + (f" in the range {allowed}" if allowed.low is not None else "") if value == "nan"
           else f"is not in the range {allowed}")
    said = " ".join(r.output.replace("│", " ").split())  # as one line, out of typer's box
    assert r.exit_code == 2 and why in said, r.output


def test_inspect_takes_the_ends_of_its_ranges(tmp_path):
    # the ends themselves are inside: inspect then fails on its missing checkpoint, not on them
    for name, allowed in INSPECT_RANGES.items():
        for value in [v for v, inside in around(allowed, True) if inside]:
            r = runner.invoke(app, ["inspect", str(tmp_path / "missing.npz"), str(tmp_path / "t.txt"),
                                    f"--{name}={value}"])
            assert r.exit_code == 1 and "missing.npz" in str(r.exception), (name, value, r.output)


def test_choices_come_from_the_registries(tmp_path):
    assert tuple(cells.CELLS) == CELLS  # the kernels' registry and the light one name the same cells
    missing = str(tmp_path / "missing.txt")
    for setting, names in CHOICES.items():
        option = f"--{setting}"
        for name in names + (names[0].upper(),):
            r = runner.invoke(app, ["train", missing, option, name])
            assert r.exit_code == 1 and "missing.txt" in str(r.exception), r.output
        r = runner.invoke(app, ["train", missing, option, "transformer"])
        assert r.exit_code == 2 and "transformer" in r.output
        with pytest.raises(CharrnnError, match=f"{option} transformer is out of range"):
            TrainConfig(**{setting: "transformer"}).validate()
    assert runner.invoke(app, ["train", missing, "--encoding", "UTF8"]).exit_code == 1
    r = runner.invoke(app, ["train", missing, "--encoding", "ebcdic"])
    assert r.exit_code == 2 and re.search(r"utf-8, latin-1, bytes", r.output)


def test_a_run_nothing_would_stop_is_a_usage_error_before_the_text_is_read(tmp_path):
    # it was exit 1, from Trainer.run, after the corpus had been read
    r = runner.invoke(app, ["train", str(tmp_path / "missing.txt"), "--time-limit", "0"])
    assert isinstance(r.exception, UsageError) and r.exception.exit_code == 2
    assert str(r.exception) == ("nothing would stop the run: --max-steps, --epochs and --time-limit are all 0 (no "
                                "limit); give one of them above 0")
    with pytest.raises(UsageError, match="nothing would stop the run"):
        TrainConfig(time_limit=0).validate().check_stopping()
    TrainConfig(time_limit=0, epochs=0.5).validate().check_stopping()


def test_a_warm_up_the_run_ends_in_is_a_usage_error(tmp_path):
    # --warmup 100 --max-steps 30 ran, its rate never above 30% of --lr, exit 0
    r = runner.invoke(app, ["train", str(tmp_path / "missing.txt"), "--warmup", "100", "--max-steps", "30"])
    assert isinstance(r.exception, UsageError) and r.exception.exit_code == 2
    assert str(r.exception) == ("--warmup 100 is not shorter than --max-steps 30: the learning rate would never reach "
                                "--lr 0.003; give a shorter warm-up")
    TrainConfig(warmup=29, max_steps=30).validate().check_stopping()
    TrainConfig(warmup=100, max_steps=0, epochs=1).validate().check_stopping()  # a budget not counted in updates


@pytest.mark.parametrize("name, value, cell", [("tau", "8", "leaky"), ("spectral_radius", "0.5", "esn"),
                                               ("leak", "0.5", "esn"), ("u_max", "1.5", "indrnn")])
def test_a_cell_option_is_refused_for_a_cell_that_does_not_read_it(name, value, cell, tmp_path):
    # `--cell rnn --tau 8` trained an rnn as if --tau had not been given
    option = f"--{name.replace('_', '-')}"
    r = runner.invoke(app, ["train", str(tmp_path / "missing.txt"), "--cell", "lstm", option, value])
    assert isinstance(r.exception, UsageError) and r.exception.exit_code == 2
    assert str(r.exception) == f"{option} is an option of --cell {cell}; --cell lstm has no use for it"
    r = runner.invoke(app, ["train", str(tmp_path / "missing.txt"), "--cell", cell, option, value])
    assert r.exit_code == 1 and "missing.txt" in str(r.exception)  # accepted: as far as reading the text
    r = runner.invoke(app, ["gradflow", "--cell", "rnn,gru", option, value, "--corpus", str(tmp_path / "missing.txt")])
    assert isinstance(r.exception, UsageError) and str(r.exception).endswith("--cell rnn,gru has no use for it")
    r = runner.invoke(app, ["gradflow", "--cell", f"rnn,{cell}", option, value, "--corpus", str(tmp_path / "m.txt")])
    assert r.exit_code == 1 and "m.txt" in str(r.exception)
    r = runner.invoke(app, ["gradflow", option, value, "--corpus", str(tmp_path / "m.txt")])
    assert str(r.exception).endswith("--cell rnn,lstm,gru (the default) has no use for it")


def test_a_forget_bias_is_refused_where_no_cell_has_a_forget_gate(tmp_path):
    missing = str(tmp_path / "m.txt")
    r = runner.invoke(app, ["gradflow", "--cell", "rnn,gru", "--forget-bias", "1", "--corpus", missing])
    assert isinstance(r.exception, UsageError) and r.exception.exit_code == 2
    assert str(r.exception) == "--forget-bias sets the forget gate of lstm and peephole cells; --cell rnn,gru has none"
    for chosen in (["--cell", "rnn,peephole"], []):  # the default cells hold the lstm
        r = runner.invoke(app, ["gradflow", *chosen, "--forget-bias", "1", "--corpus", missing])
        assert r.exit_code == 1 and "m.txt" in str(r.exception)


@pytest.mark.parametrize("typed, normal", [(" 5", "5"), ("5.0", "5"), ("50.0:1", "50:1"), ("LEARNED", "learned"),
                                           ("1:50", "1:50"), ("2.5", "2.5"), ("1e4", "10000")])
def test_tau_has_one_spelling(typed, normal):
    # ' 5' was stored as typed, so --init-from with --tau 5 found a conflict with ' 5'; LEARNED was
    # out of range where --cell LEAKY was accepted
    assert cells.normal_tau(typed) == normal
    assert TrainConfig(cell="leaky", tau=typed).validate().tau == normal
    # a spec holding another spelling (gradflow's fresh models) trains its rates as 'learned' does
    a = cells.CELLS["leaky"].param_shapes(3, 4, ModelSpec("leaky", 3, 4, 1, (("tau", typed),)))[-1]
    assert a.name == "a" and a.trains == (normal == "learned")



@pytest.mark.parametrize("name, value, schedules", [("lr_decay", "0.5", "step"), ("decay_every", "10", "step"),
                                                    ("decay_start", "0.5", "linear and cosine")])
def test_a_schedule_setting_is_refused_for_a_schedule_that_does_not_read_it(name, value, schedules, tmp_path):
    # --lr-decay with the linear schedule changed nothing, without a word
    option = f"--{name.replace('_', '-')}"
    other = "constant" if "step" in schedules else "step"
    r = runner.invoke(app, ["train", str(tmp_path / "missing.txt"), option, value, "--schedule", other])
    assert isinstance(r.exception, UsageError) and r.exception.exit_code == 2
    assert str(r.exception) == f"{option} is a setting of --schedule {schedules}; --schedule {other} has no use for it"
    if "step" in schedules:  # the default schedule is linear
        r = runner.invoke(app, ["train", str(tmp_path / "missing.txt"), option, value])
        assert str(r.exception).endswith("--schedule linear (the default) has no use for it")
    r = runner.invoke(app, ["train", str(tmp_path / "missing.txt"), option, value, "--schedule", schedules.split()[0]])
    assert r.exit_code == 1 and "missing.txt" in str(r.exception)  # accepted: as far as reading the text


@pytest.mark.parametrize("name, value, other, unused", [
    ("sample_length", "100", "sample_every", "no sample is taken"),
    ("sample_temperature", "0.5", "sample_every", "no sample is taken"),
    ("lr_decay", "0.5", "decay_every", "the rate never decays"),
    ("eval_chars", "1000", "val_fraction", "nothing is held out to validate on"),
    ("eval_every", "10", "val_fraction", "nothing is held out to validate on")])
def test_a_setting_whose_other_setting_is_0_is_refused(name, value, other, unused, tmp_path):
    # --sample-length without --sample-every was accepted and took no sample, without a word
    option, other_option = (f"--{n.replace('_', '-')}" for n in (name, other))
    schedule = ["--schedule", "step"] if name == "lr_decay" else []
    given_0 = [other_option, "0"] if getattr(TrainConfig(), other) else []  # 0 unless given so
    r = runner.invoke(app, ["train", str(tmp_path / "missing.txt"), option, value, *schedule, *given_0])
    assert isinstance(r.exception, UsageError) and r.exception.exit_code == 2
    whose = "" if given_0 else " (the default)"
    assert str(r.exception) == (f"{option} acts only with {other_option} above 0, and it is 0{whose}: {unused}; "
                                f"give {other_option} above 0, or leave out {option}")
    r = runner.invoke(app, ["train", str(tmp_path / "missing.txt"), option, value, *schedule, other_option, "0.1"
                            if other == "val_fraction" else "10"])
    assert r.exit_code == 1 and "missing.txt" in str(r.exception)  # accepted: as far as reading the text


@pytest.mark.parametrize("name", [" ", "a\nb", "tab\there", "del\x7f", "c1\x85", "line\u2028sep"])
def test_a_run_name_that_messages_could_not_show_is_refused(name):
    with pytest.raises(UsageError, match="is blank or holds a line break or another control character"):
        TrainConfig(run=name).validate().check_run_name()
    assert TrainConfig(run=name).validate().run == name  # a run named so before still resumes


def test_an_empty_run_name_given_is_refused_where_none_given_is_the_default(tmp_path):
    # --run "$NAME" with NAME unset trained under a dated name, where --run ' ' was refused
    with pytest.raises(UsageError, match="--run '' is blank"):
        TrainConfig(run="").validate().check_run_name(given=True)
    r = runner.invoke(app, ["train", str(tmp_path / "missing.txt"), "--run", ""])
    assert isinstance(r.exception, UsageError) and "--run '' is blank" in str(r.exception), r.output
    r = runner.invoke(app, ["train", str(tmp_path / "missing.txt")])
    assert r.exit_code == 1 and "missing.txt" in str(r.exception)  # no --run: the default name, as far as the text


@pytest.mark.parametrize("name", ["my run", "été", "caf\udce9"])  # the last: a byte that is no UTF-8
def test_run_names_of_printable_characters_are_kept(name):
    TrainConfig(run=name).validate().check_run_name()


def test_gradflow_and_gradcheck_say_what_they_cannot_do(tmp_path):
    ones, latin, empty = tmp_path / "ones.txt", tmp_path / "latin.txt", tmp_path / "empty.txt"
    ones.write_text("a" * 5000)
    empty.write_text("")
    latin.write_bytes(b"caf\xe9 " * 500)
    small = ["--hidden", "4", "--windows", "1", "--batch", "1"]
    cases = [
        # an internal error (ModelSpec: vocab >= 2)
        (["gradflow", *small, "--corpus", str(ones)], CharrnnError,
         f"{ones} holds only 1 distinct character; a fresh model needs at least 2"),
        # it advised --encoding latin-1, which gradflow has not
        (["gradflow", *small, "--corpus", str(latin)], CharrnnError, "; gradflow reads --corpus as UTF-8"),
        # a missing file was told the same: "does not exist; gradflow reads --corpus as UTF-8 ..."
        (["gradflow", *small, "--corpus", str(tmp_path / "missing.txt")], CharrnnError,
         f"{tmp_path / 'missing.txt'} does not exist; check the path"),
        # so was an empty file, of any encoding: "is empty; gradflow reads --corpus as UTF-8 ..."
        (["gradflow", *small, "--corpus", str(empty)], CharrnnError, f"{empty} is empty; give a file with some text in it"),
        # --radius rescaled the reservoir --spectral-radius had set, and u drawn within --u-max
        (["gradflow", *small, "--cell", "esn", "--spectral-radius", "0.5", "--radius", "2"], UsageError,
         "--radius rescales the esn recurrence that --spectral-radius sets; give one of them"),
        (["gradflow", *small, "--cell", "indrnn", "--u-max", "0.5", "--radius", "1"], UsageError,
         "--radius rescales the indrnn recurrence that --u-max sets; give one of them"),
        # NaN norms were a table of nan and 'vanished > 500', exit 0, and JSON with NaN
        (["gradflow", *small, "--max-k", "500", "--cell", "indrnn", "--radius", "5"], CharrnnError,
         "the gradient of indrnn overflowed (inf or NaN) at k="),
        # --u-max 0 is left out where --radius is given: the advice named it all the same
        (["gradflow", *small, "--max-k", "500", "--cell", "indrnn", "--u-max", "0", "--radius", "10"], CharrnnError,
         "overflowed (inf or NaN) at k=0; use a smaller --radius or --max-k"),
        # the advice named --radius, never given, and not --u-max, which was
        (["gradflow", *small, "--max-k", "500", "--cell", "indrnn", "--u-max", "3"], CharrnnError,
         "the gradient of indrnn overflowed (inf or NaN) at k=0; use a smaller --u-max or --max-k"),
        # --steps was ignored where --k1 and --k2 are both given
        (["gradcheck", "--cell", "lstm", "--steps", "50", "--k1", "3", "--k2", "4"], UsageError,
         "--steps sets --k1 and --k2 where they are not given; with both given it has no use"),
    ]
    for args, kind, message in cases:
        r = runner.invoke(app, args)
        assert isinstance(r.exception, kind) and message in str(r.exception), (args, r.exception, r.output)
    # --u-max 0 is the option left out (its help says so), which --radius may rescale
    r = runner.invoke(app, ["gradflow", *small, "--max-k", "5", "--cell", "indrnn", "--u-max", "0", "--radius", "1",
                            "--json"])
    assert r.exit_code == 0, (r.exception, r.output)


@pytest.mark.parametrize("option", ["--time-limit", "--epochs", "--clip-norm", "--clip-value"])
def test_an_infinite_bound_is_said_to_be_no_finite_number(option):
    # "inf is not in the range x>=0", which it is; for --time-limit, 0 is the one without a limit
    r = runner.invoke(app, ["train", option, "inf"])
    said = " ".join(r.output.replace("│", " ").split())
    assert r.exit_code == 2 and "inf is not a finite number in the range x>=0." in said, r.output


def test_warmup_and_weight_decay_reach_the_run(tmp_path):
    # both were settings of every run, shown in its settings line, with no option to set them
    text = tmp_path / "t.txt"
    text.write_text("to be or not to be, that is the question\n" * 50, encoding="utf-8")
    r = runner.invoke(app, ["train", str(text), "--hidden", "8", "--max-steps", "20", "--time-limit", "0",
                            "--warmup", "16", "--weight-decay", "0.25", "--out-dir", str(tmp_path), "--run", "r", "-q"])
    assert r.exit_code == 0, (r.exception, r.output)
    meta = load_checkpoint(tmp_path / "r" / "latest.npz")[1]
    assert (meta["config"]["warmup"], meta["config"]["weight_decay"], meta["optimizer"]["weight_decay"]) == (16, 0.25, 0.25)
    records = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    # the tenth update's rate (the first logged): 10/16 of --lr, which the linear schedule holds for
    # the first 70% of the run
    assert [rec["lr"] for rec in records if rec["kind"] == "train"][0] == pytest.approx(TrainConfig.lr * 10 / 16)
