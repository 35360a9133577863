"""The code passes pyflakes: no unused imports or variables, no undefined names."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_pyflakes_finds_nothing():
    # benchmarks/results holds what benchmarks write, old revisions of the package included
    files = [str(f) for folder in ("charrnn", "tests", "benchmarks") for f in sorted((ROOT / folder).rglob("*.py"))
             if "results" not in f.relative_to(ROOT).parts]
    result = subprocess.run([sys.executable, "-m", "pyflakes", *files], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and not result.stdout, result.stdout + result.stderr


def test_no_module_of_the_package_is_named_as_one_of_the_standard_library():
    # `python -m charrnn` in the package's own folder put it first on sys.path, and numpy's
    # `import inspect` found charrnn/inspect.py: a traceback of a circular import
    names = {f.stem for f in (ROOT / "charrnn").rglob("*.py")}
    assert not names & sys.stdlib_module_names, names & sys.stdlib_module_names
