"""The memory estimate: exact for the window buffers, checked before anything large is allocated,
and read from /proc and the cgroup where they can be read."""
import tracemalloc

import numpy as np
import pytest

from charrnn import memory
from charrnn.config import CELLS, TrainConfig
from charrnn.errors import CharrnnError
from charrnn.model import ModelSpec, Stack
from charrnn.train import Trainer

TEXT = "".join(f"{w} the {i % 7} quick brown fox jumps over {i % 13} lazy dogs.\n"
               for i, w in enumerate(["Alas", "Lo", "Hark", "Sing"] * 3))


def allocated(obj, seen=None):
    """Bytes of every numpy array reachable from obj's attributes, lists, tuples and dicts."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, dict):
        return sum(allocated(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(allocated(v, seen) for v in obj)
    if hasattr(obj, "__dict__") and not isinstance(obj, type):
        return sum(allocated(v, seen) for k, v in vars(obj).items() if k not in ("spec", "layout", "cell"))
    return 0


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layers, H, B, T, dropout, dtype", [(1, 5, 3, 7, 0.0, np.float32),
                                                             (3, 37, 2, 4, 0.5, np.float64),
                                                             (2, 16, 1, 1, 0.0, np.float32)])
def test_stack_nbytes_is_what_a_stack_allocates(cell, layers, H, B, T, dropout, dtype):
    spec = ModelSpec(cell, 11, H, layers)
    stack = Stack(spec, B, T, dtype, dropout)
    assert Stack.nbytes(spec, B, T, dtype, dropout) == allocated(stack)


def corpus_config(tmp_path, **kw):
    path = tmp_path / "tiny.txt"
    path.write_text(TEXT, encoding="utf-8")
    return TrainConfig(corpus=str(path), time_limit=0, max_steps=1, out_dir=str(tmp_path), run="r", **kw).validate()


def test_a_run_too_large_is_refused_before_allocating(tmp_path):
    cfg = corpus_config(tmp_path, hidden=8192, layers=16, batch=4)
    tracemalloc.start()
    try:
        with pytest.raises(CharrnnError, match=r"this run needs about [\d,.]+ GiB of memory \(parameters and "
                                               r"gradients [\d,.]+ GiB, .*\), but [\d,.]+ .iB is available; "
                                               r"use a smaller --hidden"):
            Trainer(cfg, tmp_path / "r", say=lambda *_: None)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20  # the parameters alone would be 34 GB
    assert not (tmp_path / "r").exists()


def test_a_resume_or_a_fine_tune_too_large_is_advised_only_what_it_may_change(tmp_path, monkeypatch):
    # a resume was told to use a smaller --hidden, --layers, --batch or --k1/--k2, which it refuses
    cfg = corpus_config(tmp_path, hidden=16, batch=4, k1=8, k2=8)
    Trainer(cfg, tmp_path / "r", say=lambda *_: None).run()
    monkeypatch.setattr(memory, "available_bytes", lambda **_: 1000)
    with pytest.raises(CharrnnError) as e:
        Trainer.resume(tmp_path / "r", say=lambda *_: None, max_steps=2)
    assert str(e.value).endswith("is available; free some memory, or resume where more is available")
    tune = corpus_config(tmp_path, hidden=16, batch=4, k1=8, k2=8, init_from=str(tmp_path / "r"))
    with pytest.raises(CharrnnError) as e:
        Trainer(tune, tmp_path / "tuned", say=lambda *_: None)
    assert str(e.value).endswith("is available; use a smaller --batch or --k1/--k2")


def test_the_estimate_counts_every_part(tmp_path, monkeypatch):
    cfg = corpus_config(tmp_path, hidden=32, batch=4, k1=8, k2=16)
    spec = ModelSpec("lstm", 30, 32, 1)
    needs = memory.training_needs(spec, cfg)
    P = (30 * 128 + 32 * 128 + 128) + (32 * 30 + 30)  # Wx, Wh, b of the LSTM (4H = 128); Wy, by
    assert needs["parameters and gradients"] == 2 * 4 * P
    assert needs["optimizer state"] == 2 * 4 * P  # adam: m and v
    assert needs["window buffers"] > Stack.nbytes(spec, 4, 16)
    # refused just below the estimate, accepted at it, and accepted where nothing is known
    total = sum(needs.values())
    monkeypatch.setattr(memory, "available_bytes", lambda **_: total - 1)
    with pytest.raises(CharrnnError, match="is available"):
        memory.require(needs, "this run", "advice")
    monkeypatch.setattr(memory, "available_bytes", lambda **_: total)
    memory.require(needs, "this run", "advice")
    monkeypatch.setattr(memory, "available_bytes", lambda **_: None)
    memory.require(needs, "this run", "advice")


def fake_system(tmp_path, meminfo, cgroup=None, limit=None, current=None, stat=None):
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    if meminfo is not None:
        (proc / "meminfo").write_text(meminfo)
    if cgroup is not None:
        (proc / "self" / "cgroup").write_text(f"0::{cgroup}\n")
        folder = tmp_path / "cg" / cgroup.lstrip("/")
        folder.mkdir(parents=True)
        (folder / "memory.max").write_text(limit)
        (folder / "memory.current").write_text(current)
        if stat is not None:
            (folder / "memory.stat").write_text(stat)
    return dict(proc=proc, cgroup_root=tmp_path / "cg")


MEMINFO = "MemTotal:       24683584 kB\nMemFree:        22395972 kB\nMemAvailable:   1000 kB\n"


def test_available_memory_from_meminfo_and_cgroup(tmp_path):
    assert memory.available_bytes(**fake_system(tmp_path / "a", MEMINFO)) == 1000 * 1024
    tight = fake_system(tmp_path / "b", MEMINFO, "/box", "600000\n", "100000\n")
    assert memory.available_bytes(**tight) == 500000
    unlimited = fake_system(tmp_path / "c", MEMINFO, "/box", "max\n", "100000\n")
    assert memory.available_bytes(**unlimited) == 1000 * 1024
    only_cgroup = fake_system(tmp_path / "d", None, "/", "600000\n", "100000\n")
    assert memory.available_bytes(**only_cgroup) == 500000


V1_UNLIMITED = "9223372036854771712"


def fake_v1(tmp_path, group, limit, usage, where=None, inactive_file=0):
    """A system with MEMINFO and a cgroup v1 memory hierarchy: the process in `group`, whose
    folder is `where` under the mount (its own path by default; "" for a container's top)."""
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "meminfo").write_text(MEMINFO.replace("1000 kB", "10000000 kB"))
    (proc / "self" / "cgroup").write_text(f"9:name=systemd:/\n4:cpu,memory:{group}\n1:cpu:/\n0::/\n")
    folder = tmp_path / "cg" / "memory" / (group.lstrip("/") if where is None else where)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "memory.stat").write_text(f"cache 4096\nhierarchical_memory_limit {limit}\nrss 8192\n"
                                        f"inactive_file 1\ntotal_inactive_file {inactive_file}\n")
    (folder / "memory.usage_in_bytes").write_text(f"{usage}\n")
    return dict(proc=proc, cgroup_root=tmp_path / "cg")


def test_available_memory_under_a_cgroup_v1_limit(tmp_path):
    # this machine's kind: v1 hierarchies, the memory one with a group per process; its limit went unread
    assert memory.available_bytes(**fake_v1(tmp_path / "a", "/jobs/17", "600000", "100000")) == 500000
    # a container that sees its own group as the mount's top, under the host's path
    assert memory.available_bytes(**fake_v1(tmp_path / "b", "/docker/ab12", "600000", "100000", where="")) == 500000
    assert memory.available_bytes(**fake_v1(tmp_path / "c", "/jobs/17", V1_UNLIMITED, "100000")) == 10000000 * 1024


def test_a_cgroup_s_page_cache_that_it_can_take_back_is_room(tmp_path):
    # its usage counts the cache of the files read (the corpus): a 4 GiB group holding 200 MiB of
    # processes and 3.5 GiB of cache, 3.4 GiB of it inactive, was said to have 312 MiB left
    v1 = fake_v1(tmp_path / "a", "/jobs/17", "600000", "450000", inactive_file="300000")
    assert memory.available_bytes(**v1) == 450000
    v2 = fake_system(tmp_path / "b", MEMINFO.replace("1000 kB", "10000000 kB"), "/box", "600000\n", "450000\n",
                     "anon 150000\nfile 300000\ninactive_file 300000\n")
    assert memory.available_bytes(**v2) == 450000


def test_available_memory_under_a_limit_on_the_address_space(tmp_path):
    # prlimit --as=3G charrnn train --hidden 4096 --layers 3: "out of memory" after 8.6 s of
    # allocating, where the check says at once what the run needs
    import resource

    system = fake_system(tmp_path, MEMINFO.replace("1000 kB", "10000000 kB"))
    (system["proc"] / "self" / "status").write_text("Name:\tpython\nVmSize:\t  2000 kB\nVmData:\t  500 kB\n")
    limits = {resource.RLIMIT_AS: (5000 * 1024, resource.RLIM_INFINITY),
              resource.RLIMIT_DATA: (resource.RLIM_INFINITY, resource.RLIM_INFINITY)}
    assert memory.available_bytes(**system, getrlimit=limits.get) == 3000 * 1024
    limits[resource.RLIMIT_DATA] = (1000 * 1024, 1000 * 1024)
    assert memory.available_bytes(**system, getrlimit=limits.get) == 500 * 1024
    # MPI ranks on one machine, counted together: each has a limit of its own (MemAvailable is shared)
    assert memory.available_bytes(**system, getrlimit=limits.get, processes=3) == 1500 * 1024
    limits[resource.RLIMIT_AS] = limits[resource.RLIMIT_DATA] = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
    assert memory.available_bytes(**system, getrlimit=limits.get) == 10000000 * 1024


@pytest.mark.parametrize("meminfo", [None, "", "MemAvailable: lots\n", "MemAvailable:\n"])
def test_unknown_memory_is_none(tmp_path, meminfo):
    assert memory.available_bytes(**fake_system(tmp_path, meminfo)) is None


def test_ranks_on_one_machine_need_the_model_each_and_their_own_streams():
    # under MPI a rank holds the whole model but only its streams' window; the ranks on one
    # machine draw on the same memory
    spec = ModelSpec("lstm", 65, 64, 2)
    cfg = TrainConfig(hidden=64, layers=2, batch=32).validate()
    one = memory.training_needs(spec, cfg)
    half = memory.training_needs(spec, cfg, streams=16)
    pair = memory.training_needs(spec, cfg, streams=16, processes=2)
    assert half["parameters and gradients"] == one["parameters and gradients"]
    # half the streams, half the window buffers: for training and for validation, whose warm-up
    # window is the larger part here (each rank validates its share of the streams)
    assert 0.45 < half["window buffers"] / one["window buffers"] < 0.55
    # a rank holding one stream that is not the text's first warms it up: one process of one
    # stream (nothing to warm) needs less than such a rank
    alone = memory.training_needs(spec, TrainConfig(hidden=64, layers=2, batch=1).validate())
    rank_of_32 = memory.training_needs(spec, cfg, streams=1)
    assert rank_of_32["window buffers"] > alone["window buffers"]
    assert {k: 2 * v for k, v in half.items()} == pair


GRADFLOW_TEXT = "the quick brown fox jumps over the lazy dog " * 400


@pytest.mark.parametrize("cells, H, L, B, K, W", [(["lstm"], 64, 2, 8, 50, 3), (["rnn", "gru", "lstm"], 32, 1, 4, 100, 20),
                                                  (["rnn"], 8, 1, 128, 100, 150),
                                                  (["peephole", "gru-cho", "esn", "leaky", "indrnn"], 48, 2, 8, 60, 2)])
def test_gradflows_estimate_holds_what_it_allocates(cells, H, L, B, K, W):
    from charrnn import gradflow

    chars = sorted(set(GRADFLOW_TEXT))
    ids = np.array([chars.index(c) for c in GRADFLOW_TEXT], np.int32)
    measure = lambda windows: gradflow.run(ids, chars, cells=cells, hidden=H, layers=L, max_k=K, windows=windows,
                                           batch=B)
    measure(1)  # the kernels loaded
    need = sum(memory.gradflow_needs([ModelSpec(c, len(chars), H, L) for c in cells], B, K, W).values())
    tracemalloc.start()
    try:
        measure(W)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert 0.6 * need < peak <= need


def test_a_gradflow_too_large_is_refused_before_allocating(tmp_path, monkeypatch):
    # --hidden 4096 --layers 16 (both in range) grew until the kernel's out-of-memory killer ended it
    from charrnn import gradflow

    monkeypatch.setattr(memory, "available_bytes", lambda **_: 8 * 2**30)  # a machine of any size
    tracemalloc.start()
    try:
        with pytest.raises(CharrnnError, match=r"this measurement needs about [\d,.]+ GiB of memory \(parameters "
                                               r"[\d,.]+ GiB, .*\), but 8.0 GiB is available; use a smaller "
                                               r"--hidden, --layers, --batch, --max-k or --windows"):
            gradflow.run(np.zeros(100, np.int32), ["a", "b"], cells=["lstm"], hidden=4096, layers=16, max_k=1, windows=1,
                         batch=1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20  # the parameters alone would be 17 GB


def test_a_refusal_shows_the_need_above_what_is_available(monkeypatch):
    # "needs about 2.3 GiB of memory (...), but 2.3 GiB is available": as many digits as tell them apart
    need = int(2.30 * 2**30)
    monkeypatch.setattr(memory, "available_bytes", lambda **_: need - 2**20)
    with pytest.raises(CharrnnError, match=r"needs about 2\.300 GiB of memory \(parameters 2\.3 GiB\), but 2\.299 GiB "
                                           r"is available; advice"):
        memory.require({"parameters": need}, "this run", "advice")
    monkeypatch.setattr(memory, "available_bytes", lambda **_: 2**30)
    with pytest.raises(CharrnnError, match=r"needs about 2\.3 GiB of memory \(parameters 2\.3 GiB\), but 1\.0 GiB"):
        memory.require({"parameters": need}, "this run", "advice")
