"""Whether a run fits in memory, decided before anything large is allocated.

Sizes inside the advertised ranges can need far more memory than the machine has (--hidden 8192
--layers 16 is 8.6e9 parameters); numpy's allocator would then fail midway, or the kernel's
out-of-memory killer end the process. The estimates here add up what a run allocates, and
require() refuses with the estimate and what is available.
"""
from pathlib import Path

import numpy as np

from .cells import CELLS
from .errors import CharrnnError, counted
from .evaluate import WARMUP, first_warm
from .model import Layout, ModelSpec, Stack
from .optim import moment_names


def available_bytes(proc=Path("/proc"), cgroup_root=Path("/sys/fs/cgroup"), getrlimit=None, processes=1):
    """Memory that `processes` of one job on this machine (by default this process alone) can
    still take: the kernel's MemAvailable, capped by the room left under a cgroup memory limit (a
    container's, v2 or v1), which they share, and by `processes` times the room left under this
    process's limit on its address space or data (ulimit -v, -d; prlimit --as), which each has of
    its own. None where none can be read. getrlimit: resource.getrlimit, or a stand-in."""
    found = []
    try:
        for line in (proc / "meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)  # in kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        groups = (proc / "self" / "cgroup").read_text().splitlines()
    except OSError:
        groups = []
    for room in (_cgroup_v2_room, _cgroup_v1_room):
        try:
            found.append(room(groups, cgroup_root))
        except (OSError, ValueError, StopIteration, LookupError):
            pass
    found += [processes * room for room in _rlimit_rooms(proc, getrlimit)]
    return max(0, min(found)) if found else None


# A cgroup's usage counts the page cache of the files its processes read (the corpus, just read),
# which the kernel takes back under its limit; its inactive part is left out, as container tools
# do: memory.stat's inactive_file (v2), total_inactive_file (v1, its group and those below)


def _cgroup_v2_room(groups, root) -> int:
    # "0::/path" is the process's cgroup in the v2 hierarchy
    folder = root / next(l[3:] for l in groups if l.startswith("0::")).strip().lstrip("/")
    limit = (folder / "memory.max").read_text().strip()
    if limit == "max":
        raise LookupError
    used = int((folder / "memory.current").read_text()) - int(_memory_stat(folder).get("inactive_file", 0))
    return int(limit) - used


# v1 writes "no limit" as the largest count of pages it holds, in bytes: 9223372036854771712
_V1_UNLIMITED = 1 << 62


def _cgroup_v1_room(groups, root) -> int:
    # "4:memory:/path" (or "4:cpu,memory:/path") is the process's cgroup in the v1 memory
    # hierarchy, mounted at ROOT/memory; in a container that shows only its own group, the path
    # (the host's) is not there, and the mount's top is the container's group
    path = next(l.split(":", 2)[2] for l in groups if "memory" in l.split(":", 2)[1].split(","))
    folder = root / "memory" / path.strip().lstrip("/")
    if not folder.is_dir():
        folder = root / "memory"
    stat = _memory_stat(folder)
    limit = int(stat["hierarchical_memory_limit"])  # its own limit, or a lower one above it
    if limit >= _V1_UNLIMITED:
        raise LookupError
    return limit - (int((folder / "memory.usage_in_bytes").read_text()) - int(stat.get("total_inactive_file", 0)))


def _memory_stat(folder) -> dict:
    """A cgroup's memory.stat, name -> count; {} where it cannot be read."""
    try:
        return dict(line.split()[:2] for line in (folder / "memory.stat").read_text().splitlines() if line.strip())
    except OSError:
        return {}


# the limits on a process's memory, and the line of /proc/self/status with what it holds of each
_RLIMITS = (("RLIMIT_AS", "VmSize:"), ("RLIMIT_DATA", "VmData:"))


def _rlimit_rooms(proc, getrlimit) -> list:
    """The room left under each limit set on this process's memory: the limit less what it holds."""
    try:
        import resource
    except ImportError:  # not a POSIX system
        return []
    getrlimit = getrlimit or resource.getrlimit
    rooms = []
    for name, field in _RLIMITS:
        try:
            soft = getrlimit(getattr(resource, name))[0]
            if soft == resource.RLIM_INFINITY:
                continue
            held = next(l for l in (proc / "self" / "status").read_text().splitlines() if l.startswith(field))
            rooms.append(soft - int(held.split()[1]) * 1024)  # in kB
        except (OSError, ValueError, IndexError, StopIteration, AttributeError):
            pass
    return rooms


def training_needs(spec: ModelSpec, cfg, streams=None, processes=1) -> dict:
    """Bytes a training run allocates, by part: of `processes` that each hold the model and
    `streams` of the batch (MPI ranks on one machine; by default one process, all of them).
    Each also validates only its share of the evaluation streams, as many as it trains; counted
    as the last share, which holds the text's first stream only if it is the whole batch."""
    f32 = np.dtype(np.float32).itemsize
    P = Layout(spec).size
    moments = len(moment_names(cfg.optimizer))
    streams = cfg.batch if streams is None else streams
    return {name: processes * n for name, n in {
        "parameters and gradients": 2 * P * f32,
        "optimizer state": moments * P * f32,
        "window buffers": Stack.nbytes(spec, streams, max(cfg.k1, cfg.k2), np.float32, cfg.dropout)
        + evaluation_needs(spec, cfg.batch, cfg.k1, np.float32, rows=slice(cfg.batch - streams, cfg.batch))["window buffers"],
        "checkpoint copies": (moments + 1) * P * f32,  # the moments and one array's bytes, while saving
    }.items()}


def evaluation_needs(spec: ModelSpec, batch: int, window: int, dtype, rows=None) -> dict:
    """Bytes evaluate() allocates for the streams `rows` of `batch` (all by default; under MPI a
    rank's share): their window, and the window that warms up those that start warm (as long,
    or WARMUP steps if shorter; and one stream of up to WARMUP steps near the text's start)."""
    lo, hi = (0, batch) if rows is None else (rows.start, rows.stop)
    warm = hi - first_warm(lo)
    warming = Stack.nbytes(spec, warm, min(window, WARMUP), dtype) + Stack.nbytes(spec, 1, WARMUP, dtype) \
        if warm > 0 else 0
    return {"window buffers": Stack.nbytes(spec, hi - lo, window, dtype) + warming}


def gradflow_needs(specs, batch: int, max_k: int, windows: int) -> dict:
    """Bytes gradflow.run allocates to measure the models `specs` in float64: every model's
    parameters (all are made first), and for the largest, measured one at a time, the windows of
    text drawn (gradflow.sample_windows: int32 ids, taken by an int64 index), a window's buffers,
    and the gradients of parameters and of states (gradflow.state_gradients; their norms take
    the squares as large again), and the copies saturation_counts makes of a layer's gates and
    tanh units (their saved layout turned to (T, B, H) each, and a test of each)."""
    f64, T = np.dtype(np.float64).itemsize, max_k + 1
    return {
        "parameters": sum(Layout(s).size for s in specs) * f64,
        "windows of text": windows * (2 * T + 1) * batch * (np.dtype(np.int32).itemsize + np.dtype(np.int64).itemsize),
        "window buffers": max(Stack.nbytes(s, batch, T, np.float64) for s in specs),
        "gradients": max((Layout(s).size + 2 * s.layers * T * batch * s.hidden) * f64 for s in specs),
        "copies of activations": max(2 * T * batch * (CELLS[s.cell].gates + 1) * s.hidden * f64 for s in specs),
    }


def require(needs: dict, what: str, advice: str, processes=1):
    """A CharrnnError if the parts of `needs` add up to more than is available (when known) to
    the `processes` on this machine that `needs` counts; where they are several, the advice adds
    running fewer."""
    need = sum(needs.values())
    have = available_bytes(processes=processes)
    if have is not None and need > have:
        parts = ", ".join(f"{name} {_size(n)}" for name, n in needs.items() if n)
        digits = 1
        while _size(need, digits) == _size(have, digits) and digits < 9:  # "needs 2.3 GiB, but 2.3 GiB"
            digits += 1
        fewer = ", or run fewer processes on this machine" if processes > 1 else ""
        raise CharrnnError(f"{what} needs about {_size(need, digits)} of memory ({parts}), but {_size(have, digits)} "
                           f"is available; {advice}{fewer}")


def _size(n: int, digits=1) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:,.{digits}f} {unit}"
    return counted(n, "byte")
