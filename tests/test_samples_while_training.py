"""train --sample-every: samples are shown and appended to samples.txt, each what `charrnn sample`
gives from a checkpoint of that step, and taking them changes nothing in training."""
import json

import numpy as np
import pytest

from charrnn.api import load
from charrnn.sampling import SAMPLE_THREADS, Sampler, load_model, sample_text
from charrnn.train import SAMPLES_FILE, Trainer
from test_train import TEXT, config, train_steps


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def test_samples_txt_gets_an_entry_every_n_updates(corpus, tmp_path):
    said = []
    cfg = config(corpus, tmp_path, max_steps=9, sample_every=3, sample_length=50, sample_temperature=0.5,
                 eval_every=3, checkpoint_every=3)
    trainer = Trainer(cfg, tmp_path / "r", say=said.append)
    samples = {}

    def keep(t, record):  # the checkpoint of each step that has a sample is saved after it: keep a copy
        if record is None:
            samples[t.step] = t.params.copy()

    trainer.run(keep)
    text = (tmp_path / "r" / SAMPLES_FILE).read_text(encoding="utf-8")
    entries = text.split("--- step ")[1:]
    assert len(entries) == 3
    for entry, step in zip(entries, (3, 6, 9)):
        header, body = entry.split("\n", 1)
        assert header.startswith(f"{step}, epoch ") and "val loss" in header
        assert "temperature 0.5" in header and header.endswith(f"seed {step} ---")
        assert body.endswith("\n\n") and len(body[:-2]) == 50
        # what `charrnn sample --seed STEP --length 50 --temperature 0.5` prints from this step's model
        model = load_model(tmp_path / "r" / "latest.npz")
        expected = sample_text(Sampler(model.spec, samples[step], threads=SAMPLE_THREADS), model.vocab, length=50,
                               temperature=0.5, seed=step)[0]
        assert body[:-2] == expected
        assert any(s.startswith(f"--- step {step}, ") and s.endswith(expected) for s in said)
    # and through the API that `charrnn sample` runs on, from the checkpoint of the last step
    assert load(tmp_path / "r" / "latest.npz").sample(50, temperature=0.5, seed=9) == body[:-2]
    val = [l for l in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines() if '"val"' in l]
    assert f"val loss {trainer.last_val:.4f}, " in entries[-1] and len(val) == 3  # measured at this step


def test_a_sample_between_validations_says_which_step_its_loss_is_from(corpus, tmp_path):
    train_steps(config(corpus, tmp_path, sample_every=3, sample_length=5, eval_every=4, checkpoint_every=4),
                tmp_path / "r", 7)  # validation at 4 and at the end, 7
    headers = [l for l in (tmp_path / "r" / SAMPLES_FILE).read_text().splitlines() if l.startswith("--- step ")]
    assert headers[0].startswith("--- step 3, epoch ") and ", val loss -, " in headers[0]
    assert headers[1].startswith("--- step 6, epoch ") and " (step 4), temperature " in headers[1]


def test_a_sample_that_uses_up_the_time_limit_leaves_the_last_update_validated(corpus, tmp_path, monkeypatch):
    # the run ended at the sample's update without validating it: the final line said an older
    # validation loss, or inf with no best.npz at all (no validation yet)
    write_sample = Trainer._write_sample

    def slow(self):  # as a long sample, or the generation kernels compiling in the first one
        write_sample(self)
        self.elapsed += 3600.0

    monkeypatch.setattr(Trainer, "_write_sample", slow)
    cfg = config(corpus, tmp_path, max_steps=0, time_limit=1000, sample_every=5, sample_length=5, eval_every=100)
    trainer = Trainer(cfg, tmp_path / "r", say=lambda *_: None)
    summary = trainer.run()
    assert summary["steps"] == 5 and summary["stopped_by"] == ["--time-limit 1000"]
    assert trainer.last_val_step == 5 and summary["val_loss"] == summary["best_val_loss"] < float("inf")
    val = [json.loads(l) for l in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines() if '"val"' in l]
    assert [v["step"] for v in val] == [5] and (tmp_path / "r" / "best.npz").is_file()


def test_a_stop_during_that_sample_ends_the_run_without_the_validation(corpus, tmp_path, monkeypatch):
    # the user asked to stop: the validation the time limit would have asked for is not waited for
    from charrnn.train import Interrupted

    write_sample = Trainer._write_sample

    def slow_and_stopped(self):
        write_sample(self)
        self.elapsed += 3600.0
        self.stop_requested = True

    monkeypatch.setattr(Trainer, "_write_sample", slow_and_stopped)
    cfg = config(corpus, tmp_path, max_steps=0, time_limit=1000, sample_every=5, sample_length=5, eval_every=100)
    trainer = Trainer(cfg, tmp_path / "r", say=lambda *_: None)
    with pytest.raises(Interrupted):
        trainer.run()
    assert trainer.step == 5 and trainer.last_val_step is None
    assert '"val"' not in (tmp_path / "r" / "metrics.jsonl").read_text()


def test_sampling_changes_nothing_in_training(corpus, tmp_path):
    quiet = train_steps(config(corpus, tmp_path / "a", dropout=0.3), tmp_path / "a" / "r", 12)
    sampled = train_steps(config(corpus, tmp_path / "b", dropout=0.3, sample_every=2), tmp_path / "b" / "r", 12)
    assert (tmp_path / "b" / "r" / SAMPLES_FILE).read_text().count("--- step ") == 6
    assert not (tmp_path / "a" / "r" / SAMPLES_FILE).exists()
    np.testing.assert_array_equal(quiet.params, sampled.params)
    assert quiet.rng.bit_generator.state == sampled.rng.bit_generator.state
