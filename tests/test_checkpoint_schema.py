"""Checkpoints that lie: a valid checkpoint damaged or edited in many ways, the checksums made
valid again where that is the point. Every load must end in one clear CharrnnError or in the
model or run the file describes; never another exception, and never a large allocation."""
import io
import json
import math
import re
import tracemalloc
import zipfile

import numpy as np
import pytest

from charrnn.checkpoint import load_checkpoint, save_checkpoint
from charrnn.config import TrainConfig
from charrnn.errors import CharrnnError
from charrnn.model import Layout, ModelSpec
from charrnn.sampling import Sampler, load_model, sample_text
from charrnn.schema import MODEL, TRAINING
from charrnn.train import Trainer

TEXT = "".join(f"{w} the {i % 7} quick brown fox jumps over {i % 13} lazy dogs.\n"
               for i, w in enumerate(["Alas", "Lo", "Hark", "Sing"] * 3))
SMALL = 16 * 2**20  # reading a file of some 30 kB may take this much, and no more
HOSTILE = [-1, 0, 1, 3, 0.5, -0.5, 2**31, 2**64, -(2**63), 10**400, 1e308, -1e308, float("nan"), float("inf"),
           -float("inf"), "", "x", "lstm", "\0", "../..", None, True, False, [], {}, [1, 2], {"a": 1}, ["a", "a"]]


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """A real checkpoint: adam moments, a kept window (k2 > k1) with dropout masks."""
    tmp = tmp_path_factory.mktemp("schema")
    corpus = tmp / "tiny.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    cfg = TrainConfig(corpus=str(corpus), hidden=8, layers=1, batch=4, k1=4, k2=7, dropout=0.2, max_steps=5,
                      time_limit=0, eval_every=5, checkpoint_every=5, out_dir=str(tmp), run="r").validate()
    Trainer(cfg, tmp / "r", say=lambda *_: None).run()
    path = tmp / "r" / "latest.npz"
    arrays, meta = load_checkpoint(path)
    for key in ("format", "format_version"):
        del meta[key]
    return {"dir": tmp, "bytes": path.read_bytes(), "arrays": arrays, "meta": meta}


def peak_of(load, *args):
    """(the result or the CharrnnError, peak bytes allocated meanwhile)."""
    tracemalloc.start()
    try:
        result = load(*args)
    except CharrnnError as e:
        result = e
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return result, peak


def what_it_says(path):
    """The parameters and the document the file holds, read by zipfile and numpy alone (a model
    reader reads no other array, so another one may be damaged)."""
    with zipfile.ZipFile(path) as zf:
        params = np.load(io.BytesIO(zf.read("params.npy")), allow_pickle=False)
        meta = json.loads(np.load(io.BytesIO(zf.read("__meta__.npy")), allow_pickle=False).tobytes())
    return params, meta


def check_outcome(path, description):
    """Every reader of the file refuses it with one line, or reads what it says."""
    model, peak = peak_of(load_model, path)
    assert peak < SMALL, (description, peak)
    if isinstance(model, CharrnnError):
        assert "\n" not in str(model) and str(path) in str(model), (description, model)
    else:
        params, meta = what_it_says(path)
        assert np.array_equal(model.params, params) and np.isfinite(model.params).all()
        assert model.vocab.chars == meta["vocab"] and model.spec.cell == meta["config"]["cell"]
        assert len(sample_text(Sampler(model.spec, model.params), model.vocab, length=3)[0]) == 3
    # a resume reads the file with this schema first, and allocates its run only if it passes
    loaded, peak = peak_of(load_checkpoint, path, TRAINING)
    assert peak < SMALL, (description, peak)
    if isinstance(loaded, CharrnnError):
        assert "\n" not in str(loaded) and str(path) in str(loaded), (description, loaded)
        return "refused"
    try:
        trainer = Trainer.resume(path, say=lambda *_: None)
    except CharrnnError as e:  # the corpus or the streams do not fit what the file says
        assert "\n" not in str(e), (description, e)
        return "refused"
    try:
        arrays, meta = loaded
        assert trainer.step == meta["step"] and np.array_equal(trainer.params, arrays["params"])
        assert all(getattr(trainer.cfg, k) == v for k, v in meta["config"].items() if hasattr(trainer.cfg, k))
        try:
            loss, norm, _, _ = trainer.update()
            assert math.isfinite(loss) and math.isfinite(norm)
        except CharrnnError as e:  # a valid but wild setting may diverge, and says so
            assert "diverged" in str(e), (description, e)
    finally:
        trainer.lock.release()
    return "read"


def variants(original, rng):
    """(description, bytes) of damaged and edited versions of the original checkpoint."""
    blob = original["bytes"]
    for _ in range(30):
        damaged = bytearray(blob)
        for i in rng.integers(0, len(blob), rng.integers(1, 9)):
            damaged[i] ^= int(rng.integers(1, 256))
        yield "random bytes flipped", bytes(damaged)
    for n in rng.integers(0, len(blob), 20):
        yield f"cut to {n} bytes", blob[:n]
    yield "random bytes", rng.bytes(len(blob))
    yield "a zip header, then random bytes", b"PK\x03\x04" + rng.bytes(len(blob))
    arrays, meta = original["arrays"], original["meta"]
    for _ in range(120):
        edited = json.loads(json.dumps(meta))
        description = edit_json(edited, rng)
        yield description, saved(edited, arrays)
    for _ in range(40):
        edited_arrays, description = edit_array(arrays, rng)
        yield description, saved(meta, edited_arrays)
    for name in ("params", "opt.m", "kept.layer0.hs"):
        for shape in [(2**40,), (2**31,), (2**20, 2**20, 4), (10**12, 0, 3), (-5,)]:
            yield f"{name} declares {shape}", declared(blob, name, shape)
    # the config and the header agree on a huge model; the data does not
    big = json.loads(json.dumps(meta))
    big["config"].update(hidden=8192, layers=16)
    size = Layout(ModelSpec("lstm", len(meta["vocab"]), 8192, 16)).size  # 8.6e9 parameters
    yield "config and header claim a huge model", declared(saved(big, arrays), "params", (size,))


def saved(meta, arrays):
    """A checkpoint of meta and arrays with correct checksums: what an editor would write."""
    path = saved.tmp / "edited.npz"
    save_checkpoint(path, arrays, meta)
    return path.read_bytes()


def edit_json(meta, rng):
    """Replace, delete or add one value anywhere in the document."""
    where, node = "meta", meta
    while True:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        key = keys[rng.integers(len(keys))]
        child = node[key]
        if isinstance(child, (dict, list)) and child and rng.random() < 0.7:
            where, node = f"{where}[{key!r}]", child
            continue
        action = rng.integers(4)
        if action == 0 and isinstance(node, dict):
            del node[key]
            return f"deleted {where}[{key!r}]"
        if action == 1 and isinstance(node, dict):
            node["unknown"] = 1
            return f"added {where}['unknown']"
        value = HOSTILE[rng.integers(len(HOSTILE))]
        node[key] = value
        return f"{where}[{key!r}] = {value!r:.40}"


def edit_array(arrays, rng):
    names = sorted(arrays)
    name = names[rng.integers(len(names))]
    a = arrays[name]
    edited = dict(arrays)
    kind = rng.integers(7)
    if kind == 0:
        del edited[name]
        return edited, f"{name} deleted"
    if kind == 1:
        edited[name] = np.concatenate([a.reshape(-1), a.reshape(-1)[:1]]) if a.size else np.zeros(1, a.dtype)
        return edited, f"{name} one element longer"
    if kind == 2:
        edited[name] = a.reshape(-1)[: max(a.size - 1, 0)]
        return edited, f"{name} one element shorter"
    if kind == 3:
        dtype = [np.float64, np.float16, np.int32, np.complex64, np.uint8][rng.integers(5)]
        edited[name] = a.astype(dtype)
        return edited, f"{name} as {np.dtype(dtype)}"
    if kind == 4 and a.size and a.dtype.kind == "f":
        bad = a.copy()
        bad.reshape(-1)[rng.integers(a.size)] = [np.nan, np.inf, -np.inf][rng.integers(3)]
        edited[name] = bad
        return edited, f"{name} with a non-finite value"
    if kind == 5 and a.size:
        bad = a.copy()
        bad.reshape(-1)[rng.integers(a.size)] = -1 if a.dtype.kind == "f" else 10**6
        edited[name] = bad
        return edited, f"{name} with a negative or out-of-range value"
    edited["kept.extra" if rng.random() < 0.5 else "stray"] = np.zeros((3, 4), np.float32)
    return edited, "an extra array"


def declared(blob, name, shape):
    """The archive with one member's .npy header declaring `shape`; its data, its zip CRC and
    the rest unchanged."""
    path = saved.tmp / "declared.npz"
    path.write_bytes(blob)
    with zipfile.ZipFile(path) as zf:
        members = {info.filename: zf.read(info) for info in zf.infolist()}
    data = members[name + ".npy"]
    header_len = 10 + int.from_bytes(data[8:10], "little")
    header = {"descr": "<f4", "fortran_order": False, "shape": shape}
    text = repr(header).encode("latin1")
    text += b" " * ((64 - (10 + len(text) + 1) % 64) % 64) + b"\n"
    members[name + ".npy"] = b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text + data[header_len:]
    with zipfile.ZipFile(path, "w") as zf:
        for member, content in members.items():
            zf.writestr(member, content)
    return path.read_bytes()


def test_the_original_loads_everywhere(original):
    path = original["dir"] / "r" / "copy.npz"
    path.write_bytes(original["bytes"])
    assert check_outcome(path, "unchanged") == "read"


def test_every_damaged_or_lying_checkpoint_is_refused_or_read_as_it_says(original, tmp_path):
    saved.tmp = tmp_path
    rng = np.random.default_rng(12)
    outcomes = {}
    for i, (description, content) in enumerate(variants(original, rng)):
        path = original["dir"] / "r" / f"v{i}.npz"  # beside the corpus's run: a resume finds its folder
        path.write_bytes(content)
        try:
            outcome = check_outcome(path, description)
        except (AssertionError, CharrnnError):
            raise
        except Exception as e:
            pytest.fail(f"{description}: {type(e).__name__}: {e}")
        finally:
            path.unlink()
        outcomes.setdefault(description.split(" ")[0], []).append(outcome)
    refused = sum(o.count("refused") for o in outcomes.values())
    assert refused > 150 and sum(o.count("read") for o in outcomes.values()) > 5, outcomes


# ---------------------------------------------------------------------------------------------
# The classes one by one, with what the refusal says


def edited(original, tmp_path, change_meta=None, change_arrays=None):
    meta, arrays = json.loads(json.dumps(original["meta"])), dict(original["arrays"])
    if change_meta:
        change_meta(meta)
    if change_arrays:
        change_arrays(arrays)
    path = original["dir"] / "r" / f"edited-{tmp_path.name}.npz"
    save_checkpoint(path, arrays, meta)  # valid checksums
    return path


@pytest.mark.parametrize("change, message", [
    (lambda m: m.update(step=-1), r"step is -1, not an integer in 0<=x<="),
    (lambda m: m.update(step=10**30), r"step is 1000000000000000000000000000000, not an integer"),
    (lambda m: m.update(elapsed=float("nan")), r"elapsed is nan, not a finite number in x>=0"),
    (lambda m: m["config"].update(hidden="8"), r"config.hidden is '8', not an integer in 1<=x<=8192"),
    (lambda m: m["config"].update(hidden=9000), r"config.hidden is 9000, not an integer in 1<=x<=8192"),
    (lambda m: m["config"].update(lr=float("inf")), r"config.lr is inf, not a finite number in 0<x<=10"),
    (lambda m: m["config"].pop("cell"), r"it has no config.cell"),
    (lambda m: m["config"].update(cell="transformer"), r"config.cell is 'transformer', not one of rnn, lstm, peephole, gru, gru-cho"),
    (lambda m: m["config"].update(corpus="a\0b"), r"config.corpus is 'a\\x00b', not a string"),
    (lambda m: m.pop("vocab"), r"its vocabulary is not a list"),
    (lambda m: m["vocab"].__setitem__(0, "\udc80"), r"its vocabulary holds the lone surrogate U\+DC80"),
    # a bytes model sampled it and failed to write it, with advice about the locale
    (lambda m: (m["config"].update(encoding="bytes"), m["vocab"].__setitem__(0, "€")),
     r"its vocabulary holds U\+20AC, which is no byte, but the model reads bytes"),
    (lambda m: m["optimizer"].update(size=7), r"optimizer state is for 7 parameters of 'float32', but the model has \d+ float32"),
    (lambda m: m["optimizer"].update(name="sgd"), r"optimizer.name is 'sgd', but config.optimizer is 'adam'"),
    (lambda m: m["optimizer"].update(beta2=1.5), r"optimizer.beta2 must be in \[0, 1\), got 1.5"),
    (lambda m: m["optimizer"].update(weight_decay=0.5), r"optimizer.weight_decay is 0.5, but config.weight_decay is 0.0"),
    (lambda m: (m["optimizer"].update(weight_decay=1e300), m["config"].update(weight_decay=1e300)),
     r"config.weight_decay is 1e\+300, not a finite number in 0<=x<=10"),
    (lambda m: m["scheduler"].update(filled=10**6), r"scheduler.filled is 1000000, not an integer in 0<=x<=7"),
    (lambda m: m["rng"].update(bit_generator="MT19937"), r"rng.bit_generator is 'MT19937', not 'PCG64'"),
    (lambda m: m["metrics"].update(best_val=-3.0), r"metrics.best_val is -3.0, not a finite number in x>=0"),
    # said "(unknown encoding 'utf-16'; choose one of ...)": advice for a command line, in a file's fault
    (lambda m: m["config"].update(encoding="utf-16"), r"config.encoding is 'utf-16', not one of utf-8, latin-1, bytes\); use another"),
    (lambda m: m.update(samples_bytes=-1), r"samples_bytes is -1, not an integer in 0<=x<="),
    (lambda m: m.update(samples_bytes="12"), r"samples_bytes is '12', not an integer in 0<=x<="),
    (lambda m: m.update(samples_bytes=True), r"samples_bytes is True, not an integer in 0<=x<="),
    (lambda m: m.update(samples_bytes=1.5), r"samples_bytes is 1.5, not an integer in 0<=x<="),
    (lambda m: m["split"].update(threads=0), r"split.threads is 0, not an integer in 1<=x<="),
    (lambda m: m["split"].pop("ranks"), r"split.ranks is None, not an integer in 1<=x<="),
    (lambda m: m.update(split=[1, 2]), r"split is \[1, 2\], not a JSON object"),
])
def test_a_document_that_lies_is_refused(original, tmp_path, change, message):
    path = edited(original, tmp_path, change_meta=change)
    with pytest.raises(CharrnnError, match=rf"{path.name} is corrupt \(.*{message}"):
        load_checkpoint(path, TRAINING)
    with pytest.raises(CharrnnError):
        Trainer.resume(path, say=lambda *_: None)


def test_a_bytes_model_whose_vocabulary_holds_no_byte_is_refused_for_sampling(original, tmp_path):
    path = edited(original, tmp_path, change_meta=lambda m: (m["config"].update(encoding="bytes"),
                                                             m["vocab"].__setitem__(0, "€")))
    with pytest.raises(CharrnnError, match=r"is corrupt \(its vocabulary holds U\+20AC, which is no byte"):
        load_model(path)
    load_checkpoint(edited(original, tmp_path / "utf8", change_meta=lambda m: m["vocab"].__setitem__(0, "€")), MODEL)


@pytest.mark.parametrize("change, message", [
    (lambda a: a.update(params=a["params"][:-1]), r"array 'params' is \(\d+,\) float32; its config implies"),
    (lambda a: a.update(params=a["params"].astype(np.float16)), r"array 'params' is .* float16"),
    (lambda a: a.pop("opt.v"), r"it has no array 'opt.v'"),
    (lambda a: a.update({"opt.v": -abs(a["opt.v"]) - 1}), r"array 'opt.v' holds negative second moments"),
    (lambda a: a.update({"opt.m": np.full_like(a["opt.m"], np.inf)}), r"array 'opt.m' holds NaN or Inf"),
    (lambda a: a.update({"kept.ids": a["kept.ids"] + 1000}), r"array 'kept.ids' holds character ids outside"),
    (lambda a: a.update({"kept.layer0.hs": a["kept.layer0.hs"][:, :2]}), r"array 'kept.layer0.hs' is \(4, 2, 8\)"),
    (lambda a: a.update(extra=np.zeros(3)), r"it holds an array 'extra' that no charrnn run writes"),
])
def test_arrays_that_do_not_fit_the_document_are_refused(original, tmp_path, change, message):
    path = edited(original, tmp_path, change_arrays=change)
    with pytest.raises(CharrnnError, match=rf"{path.name} is corrupt \(.*{message}"):
        load_checkpoint(path, TRAINING)


@pytest.mark.parametrize("counter", ["optimizer.t", "step"])
def test_a_run_never_saves_a_checkpoint_it_would_refuse(original, tmp_path, counter):
    # optimizer.t at the top of its range: the resume trained on, saved latest.npz and best.npz
    # past it, and then refused both as corrupt
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    top = 2**63 - 1

    def change(m):
        if counter == "step":
            m["step"] = m["metrics"]["last_val_step"] = top
        else:
            m["optimizer"]["t"] = top

    path = edited(original, tmp_path, change_meta=change)
    (run_dir / "latest.npz").write_bytes(path.read_bytes())
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    trainer = Trainer.resume(run_dir, say=lambda *_: None, max_steps=top + 5, epochs=0, time_limit=0)
    with pytest.raises(CharrnnError, match=rf"this run cannot be saved as a checkpoint charrnn reads back \(.*"
                                           rf"{re.escape(counter)} is 92233720368547758\d+, not an integer"):
        trainer.run()
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.suffix == ".npz"} == before


def test_a_run_stops_at_its_limit_exactly_however_large_the_counts(original, tmp_path):
    # step 2**63 - 3 of --max-steps 2**63 - 1: the fraction done rounded to 1.0, nothing ran, and
    # the run ended "stopped by ;"
    top = 2**63 - 1
    path = edited(original, tmp_path, change_meta=lambda m: m.update(step=top - 2))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "latest.npz").write_bytes(path.read_bytes())
    summary = Trainer.resume(run_dir, say=lambda *_: None, max_steps=top, epochs=0, time_limit=0).run()
    assert summary["steps"] == top and summary["stopped_by"] == [f"--max-steps {top}"]


def test_a_checkpoint_from_before_a_setting_existed_resumes_with_what_it_ran(original, tmp_path):
    path = edited(original, tmp_path, change_meta=lambda m: m["config"].pop("schedule"))
    trainer = Trainer.resume(path, say=lambda *_: None)
    trainer.lock.release()
    assert trainer.cfg.schedule == "step"


def test_non_finite_parameters_are_refused_by_sample(original, tmp_path):
    def poison(arrays):
        arrays["params"] = arrays["params"].copy()
        arrays["params"][3] = np.nan

    path = edited(original, tmp_path, change_arrays=poison)
    with pytest.raises(CharrnnError, match=r"is corrupt \(array 'params' holds NaN or Inf\)"):
        load_model(path)


def test_float64_parameters_beyond_float32_are_refused_by_sample(original, tmp_path):
    # a model runs in float32: 1e300 became inf there ("overflow encountered in cast")
    def huge(arrays):
        arrays["params"] = arrays["params"].astype(np.float64)
        arrays["params"][3] = 1e300

    path = edited(original, tmp_path, change_arrays=huge)
    with pytest.raises(CharrnnError, match=r"is corrupt \(array 'params' holds numbers beyond float32's range"):
        load_model(path)


@pytest.mark.parametrize("name", ["params", "kept.layer0.acts", "__meta__"])
def test_a_huge_declared_shape_is_refused_without_allocating(original, tmp_path, name):
    saved.tmp = tmp_path
    path = tmp_path / "huge.npz"
    path.write_bytes(declared(original["bytes"], name, (2**42,)))  # 16 TiB of float32
    for load in (load_model, lambda p: load_checkpoint(p, TRAINING), load_checkpoint):
        error, peak = peak_of(load, path)
        assert isinstance(error, CharrnnError) and f"array '{name}' is cut short" in str(error)
        assert peak < 2**20


@pytest.mark.parametrize("header", [b"{'descr': '<f4', 'fortran_order': False, 'shape': (3,",  # TokenError
                                    b"{[1]: 2}",  # TypeError
                                    b"{'descr': '<g4', 'fortran_order': False, 'shape': (3,), }",  # ValueError
                                    b"(" * 300])  # too deeply nested for the parser
def test_a_damaged_npy_header_is_one_line(tmp_path, header):
    path = checkpoint_whose_x_has(tmp_path, header, bytes(12))
    with pytest.raises(CharrnnError, match=r"c\.npz is corrupt \(array 'x' has a damaged \.npy header"):
        load_checkpoint(path)


@pytest.mark.parametrize("shape", [(0, 2**63), (0, 2**62, 2**62), (0,) + (1,) * 70])
def test_a_zero_size_array_numpy_cannot_shape_is_one_line(tmp_path, shape):
    # no bytes declared and none held passed the checks of size; numpy's reshape then raised
    # "Maximum allowed dimension exceeded" (an internal error at the command line, a ValueError
    # in Python), and such a best.npz beside a good latest.npz kept the run from resuming
    header = repr({"descr": "<f4", "fortran_order": False, "shape": shape}).encode("latin1")
    path = checkpoint_whose_x_has(tmp_path, header, b"")
    with pytest.raises(CharrnnError, match=re.escape("c.npz is corrupt (array 'x' declares (0, ")):
        load_checkpoint(path)


def checkpoint_whose_x_has(tmp_path, header: bytes, data: bytes):
    """A checkpoint (tmp_path/c.npz) whose one array, x, has this .npy header text and data."""
    path = tmp_path / "c.npz"
    save_checkpoint(path, {"x": np.zeros(3, np.float32)}, {})
    with zipfile.ZipFile(path) as zf:
        members = {info.filename: zf.read(info) for info in zf.infolist()}
    text = header + b" " * ((64 - (10 + len(header) + 1) % 64) % 64) + b"\n"
    members["x.npy"] = b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text + data
    with zipfile.ZipFile(path, "w") as zf:
        for member, content in members.items():
            zf.writestr(member, content)
    return path


def test_a_model_reader_reads_and_checks_only_the_parameters(original, tmp_path):
    """sample and eval read `params` alone (the moments are twice its size); a resume reads and
    checksums every array, so a flipped byte in a moment is refused there and harmless here."""
    blob = bytearray(original["bytes"])
    data = original["arrays"]["opt.m"].tobytes()
    start = blob.find(data)
    assert start > 0 and blob.find(data, start + 1) == -1
    blob[start + len(data) // 2] ^= 0x10
    path = tmp_path / "moment.npz"
    path.write_bytes(bytes(blob))
    model = load_model(path)
    assert np.array_equal(model.params, original["arrays"]["params"])
    with pytest.raises(CharrnnError, match=r"is corrupt \(array 'opt.m'"):
        load_checkpoint(path, TRAINING)
    arrays, _ = load_checkpoint(original["dir"] / "r" / "latest.npz", MODEL)
    assert list(arrays) == ["params"]


def trained(tmp_path, cell, **settings):
    """latest.npz of a tiny run of `cell`: (its path, its arrays, its document)."""
    corpus = tmp_path / "tiny.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    cfg = TrainConfig(corpus=str(corpus), cell=cell, hidden=8, layers=1, batch=4, max_steps=2, time_limit=0,
                      eval_every=2, checkpoint_every=2, out_dir=str(tmp_path), run=cell, **settings).validate()
    Trainer(cfg, tmp_path / cell, say=lambda *_: None).run()
    path = tmp_path / cell / "latest.npz"
    arrays, meta = load_checkpoint(path)
    for key in ("format", "format_version"):
        del meta[key]
    return path, arrays, meta


@pytest.mark.parametrize("cell, tensor, value, shown", [
    ("leaky", "a", 2.0, "2, where its leaky cell keeps it at most 1"),  # h = -h + 2 tanh(...): no run trains it
    ("leaky", "a", 0.0, "0, where its leaky cell keeps it at least 0.0001"),
    ("esn", "a", 1.5, "1.5, where its esn cell keeps it at most 1"),
    ("indrnn", "u", -5.0, "-5, where its indrnn cell keeps it at least -1.01396"),  # -2^(1/k2), k2 50
])
def test_a_tensor_outside_its_cells_domain_is_refused(tmp_path, cell, tensor, value, shown):
    # a run keeps these tensors in their domain after every update (Stack.constrain): sampled as
    # it is, such a model would be another model than the one trained, and trained, clipped
    path, arrays, meta = trained(tmp_path, cell)
    params = arrays["params"].copy()
    spec = ModelSpec(cell, len(meta["vocab"]), 8, 1, TrainConfig.from_dict(meta["config"]).cell_options())
    Layout(spec).layer_views(params)[0][0][tensor][1] = value
    save_checkpoint(path, {**arrays, "params": params}, meta)
    message = rf"is corrupt \(array 'params': layer 0's {tensor} holds {re.escape(shown)} \(1 such values\)\)"
    with pytest.raises(CharrnnError, match=message):
        load_model(path)
    with pytest.raises(CharrnnError, match=message):
        Trainer.resume(path, say=lambda *_: None)


def test_an_indrnn_is_held_to_the_bound_of_its_own_window(tmp_path):
    # the bound a run keeps, 2^(1/k2) of its own k2 when --u-max is left out, is the one checked:
    # these units start U(0, 2^(1/4)), above the bound of the default k2 (2^(1/50)) for some
    path, arrays, meta = trained(tmp_path, "indrnn", k1=4, k2=4)
    spec = ModelSpec("indrnn", len(meta["vocab"]), 8, 1, TrainConfig.from_dict(meta["config"]).cell_options())
    u = Layout(spec).layer_views(arrays["params"])[0][0]["u"]
    assert np.abs(u).max() > 2 ** (1 / TrainConfig.k2)
    load_model(path)
    Trainer.resume(path, say=lambda *_: None).lock.release()


def test_a_fine_tunes_first_checkpoint_holds_the_model_it_started_from(tmp_path):
    # before the bound on |u| was kept across fine-tuning, a fine-tune of an IndRNN with another
    # --k2 saved at step 0 the model it started from, |u| beyond its own bound: that file loads
    path, arrays, meta = trained(tmp_path, "indrnn")
    params = arrays["params"].copy()
    spec = ModelSpec("indrnn", len(meta["vocab"]), 8, 1, TrainConfig.from_dict(meta["config"]).cell_options())
    Layout(spec).layer_views(params)[0][0]["u"][1] = 1.5
    meta["config"]["init_from"] = "base/best.npz"
    for step, loads in ((0, True), (1, False)):  # after an update of its own, the run's bound held
        meta["step"] = step
        save_checkpoint(path, {**arrays, "params": params}, meta)
        if loads:
            load_model(path)
        else:
            with pytest.raises(CharrnnError, match=r"layer 0's u holds 1\.5, where its indrnn cell keeps it at most"):
                load_model(path)
