"""What every benchmark prints first: the CPU, its vector extensions and the BLAS kernel that
runs, with the OpenBLAS override some machines set lifted, as users run.

OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE force OpenBLAS onto older kernels; users do not set
them. `lift_openblas()` re-executes the benchmark without them and remembers what was lifted,
so that `describe()` can say so.

`hold_to_avx2()` instead re-executes it with the compute code of both sides held to AVX2 and
FMA, as on a machine without AVX-512: numba compiles for Haswell (with its features only, not the
host's), OpenBLAS runs its Haswell kernels, numpy's loops skip their AVX-512 versions, PyTorch,
MKL and oneDNN run their AVX2 paths. The C library's copies, and the caches and execution units,
stay this machine's: the figures say how the AVX2 code compares with PyTorch's, not what an
AVX2 machine measures.
"""
import io
import os
import platform
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

LIFTED = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
_NOTE = "BENCH_LIFTED"
AVX2_ONLY = {"NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": "", "OPENBLAS_CORETYPE": "Haswell",
             "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
NUMPY_DISABLED = "NPY_DISABLE_CPU_FEATURES"  # numpy's names for its targets differ by version


def lift_openblas():
    """Re-run this process without the override (a no-op when it is not set). Call before numpy
    is imported: OpenBLAS reads the variables when it loads."""
    _run_with({})


def hold_to_avx2():
    """Re-run this process with AVX2 code only (above; a no-op once it runs so). Call before
    numpy is imported: numba and PyTorch too read their variables when they load."""
    if "avx2" not in _cpuinfo("flags").split():
        sys.exit("--avx2: this CPU has no AVX2")
    numpy_targets = os.environ.get(NUMPY_DISABLED) or _numpy_targets_beyond_avx2()
    _run_with({**AVX2_ONLY, NUMPY_DISABLED: numpy_targets})


def avx2_only():
    """Whether this process runs as hold_to_avx2() sets it: read from the settings themselves."""
    return all(os.environ.get(k) == v for k, v in AVX2_ONLY.items())


def _run_with(settings):
    # re-execute without the override and with `settings`, noting what was lifted (for
    # describe); where the environment is already so, nothing happens: no loop
    env = {k: v for k, v in os.environ.items() if k not in LIFTED}
    env.update(settings)
    lifted = " ".join(f"{k}={os.environ[k]}" for k in LIFTED if k in os.environ and settings.get(k) != os.environ[k])
    if lifted:
        env[_NOTE] = lifted
    if env != dict(os.environ):
        os.execve(sys.executable, [sys.executable, *sys.argv], env)


def _numpy_targets_beyond_avx2():
    """numpy's dispatch targets above AVX2 ("X86_V4 AVX512_ICL AVX512_SPR" in numpy 2.4, other
    names before), asked of another interpreter: this one must not load numpy yet."""
    code = ("try:\n    from numpy._core._multiarray_umath import __cpu_dispatch__ as targets\n"
            "except ImportError:\n    from numpy.core._multiarray_umath import __cpu_dispatch__ as targets\n"
            "print(' '.join(t for t in targets if 'AVX512' in t or t == 'X86_V4'))")
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return found.stdout.strip() if found.returncode == 0 else ""


def mpiexec():
    """The mpiexec beside this Python (the MPICH wheel puts it there), else the one on PATH;
    None if there is none."""
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else shutil.which("mpiexec")


def _cpuinfo(key):
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith(key)), "")
    except OSError:
        return ""


def cpu():
    """Model name, core count and the widest vector extension: 'AMD EPYC, 2 cores, AVX2'."""
    flags = _cpuinfo("flags").split()
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "SSE"
    return f"{_cpuinfo('model name') or platform.processor()}, {os.cpu_count()} cores, {vector}"


def blas_kernel():
    """The BLAS libraries loaded by charrnn's kernels, with the kernel family each picked."""
    from importlib import import_module

    from threadpoolctl import threadpool_info

    import_module("charrnn.kernels._jit")  # loads the BLAS that numba's products use
    return "; ".join(f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture')})"
                     for i in threadpool_info() if i.get("user_api") == "blas")


def kernels_target():
    """What numba compiles the kernels for (LLVM's name of the CPU, which may differ from the
    model's: a virtual machine can report another model), the tile that follows from it, above
    which size the wide tile fetches the recurrent weights ahead (a core's L2), and how wide
    LLVM vectorises the gate math's loops (and so the copies)."""
    from charrnn.kernels.panels import FETCH_AHEAD_ABOVE, TILE_ROWS, loop_bits, numba_target

    ahead = f", weights above {FETCH_AHEAD_ABOVE >> 10} KiB fetched ahead" if TILE_ROWS == 8 else ""
    bits = loop_bits()
    width = f"loops vectorised {bits} bits wide" if bits else "loops' vector width unknown"
    return f"{numba_target()[0]}, the {TILE_ROWS}-row tile{ahead}, {width}"


def describe():
    """Three lines: the CPU and override, the BLAS kernel, what the kernels are compiled for."""
    lifted = os.environ.get(_NOTE)
    override = f"{lifted} lifted for this run" if lifted else f"{' and '.join(LIFTED)} not set"
    if avx2_only():
        settings = ", ".join(f"{k}={os.environ.get(k)}" for k in (*AVX2_ONLY, NUMPY_DISABLED))
        override = f"AVX2 code only, both sides ({settings})" + (f"; {lifted} lifted" if lifted else "")
    return f"CPU: {cpu()}; {override}\nBLAS: {blas_kernel()}\nkernels: compiled for {kernels_target()}"


def version_path(rev):
    """(PYTHONPATH entry, package name): this tree's charrnn (rev None), or the package at git
    revision `rev` (extract_revision)."""
    if rev is None:
        return str(Path(__file__).resolve().parent.parent), "charrnn"
    base, name, _ = extract_revision(rev)
    return str(base), name


def extract_revision(rev):
    """(folder, name, short hash): the charrnn package as it was at git revision `rev`, extracted
    once to benchmarks/results/versions/charrnn_<hash>, importable from `folder` as `name`."""
    root = Path(__file__).resolve().parent.parent
    sha = subprocess.run(["git", "rev-parse", "--short", rev], cwd=root, capture_output=True, text=True,
                         check=True).stdout.strip()
    name, base = f"charrnn_{sha}", root / "benchmarks" / "results" / "versions"
    if not (base / name).exists():
        tmp = base / f"{name}.part"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", sha, "charrnn"], cwd=root, capture_output=True, check=True).stdout
        tarfile.open(fileobj=io.BytesIO(archive)).extractall(tmp, filter="data")
        (tmp / "charrnn").rename(base / name)
        tmp.rmdir()
    return base, name, sha
