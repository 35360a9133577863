"""What a charrnn checkpoint holds, checked before its arrays are read.

load_checkpoint verifies the archive and the checksums, but the checksums only say that the
arrays are the ones the document lists: whoever edits a file can rewrite them. A file can pass
them and still lie. So the document is checked against the fields charrnn writes (types, finite
and sane numbers, required fields), and each array's declared shape and dtype against what the
document implies, before any array is read; after reading, the numbers must be finite, and
where a cell keeps a tensor in a domain of its own (a leaky unit's rates), in it.

    MODEL      what sample, eval and gradflow read: config (cell, hidden, layers), vocabulary,
               parameters
    TRAINING   what a resume reads: all of MODEL, the whole config, and the optimizer, streams,
               scheduler, random state, kept window and metrics
"""
import typing
from dataclasses import fields

import numpy as np

from .cells import OPTIONS as CELL_OPTIONS
from .cells import CELLS, check_option
from .config import CHOICES, OLDER_CHECKPOINTS, RANGES, Range, TrainConfig
from .errors import CharrnnError
from .model import Layout, ModelSpec
from .optim import check_hyper, moment_names

INT64 = Range(-(2**63), 2**63 - 1)
COUNT = Range(0, 2**63 - 1)  # steps, positions, sizes
MAX_VOCAB = 0x110000  # every Unicode code point


def _show(value, limit=40):
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _dict(value, where):
    if not isinstance(value, dict):
        raise CharrnnError(f"{where} is {_show(value)}, not a JSON object" if value is not None else f"it has no {where}")
    return value


def _int(value, where, allowed=COUNT):
    if type(value) is not int or value not in allowed:
        raise CharrnnError(f"{where} is {_show(value)}, not an integer in {allowed}")
    return value


def _number(value, where, allowed=Range()):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value not in allowed:
        raise CharrnnError(f"{where} is {_show(value)}, not a finite number in {allowed}")
    return value


def _str(value, where):
    if not isinstance(value, str) or "\0" in value:
        raise CharrnnError(f"{where} is {_show(value)}, not a string")
    return value


def check_config(config, required) -> dict:
    """Each field present has its declared type and lies in its range; `required` must be there."""
    config = _dict(config, "config")
    types = typing.get_type_hints(TrainConfig)
    for f in fields(TrainConfig):
        where = f"config.{f.name}"
        if f.name not in config:
            if f.name in required:
                raise CharrnnError(f"it has no {where}")
            continue
        value = config[f.name]
        if f.name == "corpus":  # paths; a single one, a string, in older checkpoints
            for i, path in enumerate(value if isinstance(value, list) else [value]):
                _str(path, f"{where}[{i}]" if isinstance(value, list) else where)
        elif types[f.name] is int:
            _int(value, where, RANGES.get(f.name, INT64))
        elif types[f.name] is float:
            _number(value, where, RANGES.get(f.name, Range()))
        else:
            _str(value, where)
    for name, choices in CHOICES.items():
        if name in config and config[name] not in choices:
            raise CharrnnError(f"config.{name} is {_show(config[name])}, not one of {', '.join(choices)}")
    for name in CELL_OPTIONS:  # the numeric ones are in RANGES too; tau is a string
        if name in config:
            try:
                check_option(name, config[name])
            except CharrnnError as e:
                raise CharrnnError(f"config.{name}: {e}") from None
    if "encoding" in config:
        from .corpus import ENCODINGS, check_encoding

        try:
            check_encoding(config["encoding"])
        except CharrnnError:  # (its own words advise the command line's choice: here the file is wrong)
            raise CharrnnError(f"config.encoding is {_show(config['encoding'])}, not one of {', '.join(ENCODINGS)}") \
                from None
    return config


def check_vocab(vocab, encoding="utf-8") -> list:
    if (not isinstance(vocab, list) or not 2 <= len(vocab) <= MAX_VOCAB
            or not all(isinstance(c, str) and len(c) == 1 for c in vocab) or len(set(vocab)) != len(vocab)):
        raise CharrnnError("its vocabulary is not a list of two or more distinct characters")
    wide = next((c for c in vocab if ord(c) > 0xFF), None) if encoding == "bytes" else None
    if wide is not None:  # each character of a bytes model is a byte: sampled, it could not be written
        raise CharrnnError(f"its vocabulary holds U+{ord(wide):04X}, which is no byte, but the model reads bytes")
    surrogate = next((c for c in vocab if 0xD800 <= ord(c) <= 0xDFFF), None)
    if surrogate is not None:  # half of a UTF-16 pair: no text a model reads holds one
        raise CharrnnError(f"its vocabulary holds the lone surrogate U+{ord(surrogate):04X}, which no text holds")
    return vocab


def model_spec(meta) -> ModelSpec:
    """The model a checked document describes, as its run made it: the run's cell options, the
    bound on |u| resolved for its own k2 (TrainConfig.cell_options)."""
    config = TrainConfig.from_dict(meta["config"])
    return ModelSpec(config.cell, len(meta["vocab"]), config.hidden, config.layers, config.cell_options())


def _expect(headers, name, shape, dtypes):
    if name not in headers:
        raise CharrnnError(f"it has no array {name!r}")
    got_shape, got_dtype = headers[name]
    if got_shape != shape or got_dtype not in dtypes:
        want = " or ".join(str(np.dtype(d)) for d in dtypes)
        raise CharrnnError(f"array {name!r} is {_show(got_shape)} {got_dtype}; its config implies {shape} {want}")


def _finite(arrays, names):
    for name in names:
        if not np.isfinite(arrays[name]).all():
            raise CharrnnError(f"array {name!r} holds NaN or Inf")


def _in_domain(meta, params):
    """The tensors a cell keeps in a domain of their own after every update (Stack.constrain: a
    leaky unit's rate in [1e-4, 1], IndRNN's |u| within the run's bound) must lie in it: a
    model outside it was not written by a run, and would be sampled as it is but trained as
    clipped at the first update. The cell's rule is applied to a copy of those tensors, which
    must come back unchanged. A fine-tuning run's checkpoint of step 0 holds the model it
    started from, before any update of this run's (one that charrnn wrote before its bound on
    |u| was kept across fine-tuning may lie beyond this run's bound)."""
    spec = model_spec(meta)
    cell = CELLS[spec.cell]
    if not hasattr(cell, "constrain") or (meta["config"].get("init_from") and meta.get("step") == 0):
        return
    for layer, tensors in enumerate(Layout(spec).layer_views(params)[0]):
        kept = {name: tensors[name].copy() for name in cell.constrained}
        cell.constrain(kept, spec)
        for name, t in kept.items():
            outside = np.flatnonzero(t != tensors[name])
            if outside.size:
                i = outside[0]
                side = "most" if tensors[name].flat[i] > t.flat[i] else "least"
                raise CharrnnError(f"array 'params': layer {layer}'s {name} holds {tensors[name].flat[i]:g}, where "
                                   f"its {spec.cell} cell keeps it at {side} {t.flat[i]:g} ({outside.size} such "
                                   "values)")


class Model:
    """A model to sample or score: config (cell, hidden, layers), vocabulary, parameters."""

    reads = ("params",)  # the arrays load_checkpoint reads; the others' headers are checked

    def headers(self, meta, headers):
        config = check_config(meta.get("config"), required=("cell", "hidden", "layers"))
        check_vocab(meta.get("vocab"), config.get("encoding", "utf-8"))
        _expect(headers, "params", (Layout(model_spec(meta)).size,), (np.float32, np.float64))

    def arrays(self, meta, arrays):
        _finite(arrays, ["params"])
        params = arrays["params"]
        if params.dtype == np.float64 and params.size and np.abs(params).max() > np.finfo(np.float32).max:
            raise CharrnnError("array 'params' holds numbers beyond float32's range, in which models run")
        _in_domain(meta, params)


class Training(Model):
    """A run to resume: the model, and everything that decides what happens next."""

    reads = None  # every array

    def headers(self, meta, headers):
        config = check_config(meta.get("config"),
                              required=[f.name for f in fields(TrainConfig) if f.name not in OLDER_CHECKPOINTS])
        try:  # what involves several fields; the settings older checkpoints lack filled in
            config = TrainConfig.from_dict(config).validate().to_dict()
        except CharrnnError as e:
            raise CharrnnError(f"its config is refused: {e}") from None
        check_vocab(meta.get("vocab"), config["encoding"])
        P = Layout(model_spec(meta)).size
        _expect(headers, "params", (P,), (np.float32,))

        opt = _dict(meta.get("optimizer"), "optimizer")
        if opt.get("name") != config["optimizer"]:
            raise CharrnnError(f"optimizer.name is {_show(opt.get('name'))}, but config.optimizer is "
                               f"{config['optimizer']!r}")
        if _int(opt.get("size"), "optimizer.size") != P or opt.get("dtype") != "float32":
            raise CharrnnError(f"optimizer state is for {opt['size']} parameters of {_show(opt.get('dtype'))}, "
                               f"but the model has {P} float32 parameters")
        _int(opt.get("t"), "optimizer.t")
        hyper = {k: _number(opt.get(k), f"optimizer.{k}")
                 for k in ("lr", "momentum", "beta1", "beta2", "alpha", "eps", "weight_decay")}
        try:
            check_hyper(**hyper)
        except ValueError as e:
            raise CharrnnError(f"optimizer.{e}") from None
        if hyper["weight_decay"] != config["weight_decay"]:  # the saved state's wins on resume: they must agree
            raise CharrnnError(f"optimizer.weight_decay is {_show(hyper['weight_decay'])}, but config.weight_decay is "
                               f"{_show(config['weight_decay'])}")
        moments = {f"opt.{m}" for m in moment_names(opt["name"], hyper["momentum"])}
        for name in moments:
            _expect(headers, name, (P,), (np.float32,))

        W, B = max(config["k1"], config["k2"]), config["batch"]
        for name, (shape, dtype) in headers.items():
            if name.startswith("kept."):
                want = np.int32 if name in ("kept.ids", "kept.targets") else np.float32
                if dtype != want or len(shape) < 2 or shape[0] > W + 1 or shape[1] != B:
                    raise CharrnnError(f"array {name!r} is {_show(shape)} {dtype}; a saved window of a run "
                                       f"with batch {B} and window {W} is {want.__name__}, (<= {W + 1}, {B}, ...)")
            elif name != "params" and name not in moments:
                raise CharrnnError(f"it holds an array {name!r} that no charrnn run writes")

        _int(meta.get("step"), "step")
        _number(meta.get("elapsed"), "elapsed", Range(0))
        streams = _dict(meta.get("streams"), "streams")
        for key in ("position", "epoch", "batch", "stream_length"):
            _int(streams.get(key), f"streams.{key}")
        _int(_dict(meta.get("scheduler"), "scheduler").get("filled"), "scheduler.filled", Range(0, W))
        corpus = _dict(meta.get("corpus"), "corpus")
        _digest(corpus.get("sha256"), "corpus.sha256")
        files = corpus.get("files", [])  # older checkpoints: none listed
        if not isinstance(files, list):
            raise CharrnnError(f"corpus.files is {_show(files)}, not a list")
        for i, f in enumerate(files):
            where = f"corpus.files[{i}]"
            _str(_dict(f, where).get("path"), f"{where}.path")
            _int(f.get("chars"), f"{where}.chars")
            _digest(f.get("sha256"), f"{where}.sha256")
        metrics = _dict(meta.get("metrics"), "metrics")
        for key in ("best_val", "last_val"):  # None: not measured yet
            if key not in metrics:
                raise CharrnnError(f"it has no metrics.{key}")
            if metrics[key] is not None:
                _number(metrics[key], f"metrics.{key}", Range(0))
        if metrics.get("last_val_step") is not None:  # older checkpoints: none
            _int(metrics["last_val_step"], "metrics.last_val_step")
        if meta.get("samples_bytes") is not None:  # older checkpoints: none
            _int(meta["samples_bytes"], "samples_bytes")
        if meta.get("split") is not None:  # older checkpoints: none
            split = _dict(meta["split"], "split")
            for key in ("ranks", "threads"):
                _int(split.get(key), f"split.{key}", Range(1, 2**31 - 1))
        _check_rng(meta.get("rng"))

    def arrays(self, meta, arrays):
        floats = [n for n, a in arrays.items() if a.dtype == np.float32]
        _finite(arrays, floats)
        if "params" in arrays:  # (TrainingMeta reads none)
            _in_domain(meta, arrays["params"])
        for name in ("opt.v",):  # second moments are sums of squares
            if name in arrays and (arrays[name] < 0).any():
                raise CharrnnError(f"array {name!r} holds negative second moments")
        V = len(meta["vocab"])
        for name in ("kept.ids", "kept.targets"):
            a = arrays.get(name)
            if a is not None and a.size and not (0 <= a.min() and a.max() < V):
                raise CharrnnError(f"array {name!r} holds character ids outside the vocabulary of {V}")


def _digest(value, where):
    sha = _str(value, where)
    if len(sha) != 64 or not all(c in "0123456789abcdef" for c in sha):
        raise CharrnnError(f"{where} is {_show(sha)}, not a SHA-256 digest")


def _check_rng(rng):
    """numpy's PCG64 state, as Generator.bit_generator.state gives it."""
    rng = _dict(rng, "rng")
    if rng.get("bit_generator") != "PCG64":
        raise CharrnnError(f"rng.bit_generator is {_show(rng.get('bit_generator'))}, not 'PCG64'")
    state = _dict(rng.get("state"), "rng.state")
    for key in ("state", "inc"):
        _int(state.get(key), f"rng.state.{key}", Range(0, 2**128 - 1))
    _int(rng.get("has_uint32"), "rng.has_uint32", Range(0, 1))
    _int(rng.get("uinteger"), "rng.uinteger", Range(0, 2**32 - 1))


class TrainingMeta(Training):
    """A run's checkpoint as Training checks it, its meta document read alone: what resuming
    another checkpoint of its folder would lose (train._other_meta)."""

    reads = ()


MODEL = Model()
TRAINING = Training()
TRAINING_META = TrainingMeta()
