import compileall
import gc
import sys
from pathlib import Path

import pytest

# tests/reference.py is imported as a plain module by the tests
sys.path.insert(0, str(Path(__file__).parent))


def pytest_sessionstart(session):
    """charrnn's modules compiled to bytecode once, for the many commands the tests run as
    processes of their own. A user's package is compiled at its install or its first run; where
    PYTHONDONTWRITEBYTECODE is set (as on some machines that run CI), each process compiled them
    again as it started: about 0.2 s a command (test_hostile.py: 150 s, 122 s with this)."""
    compileall.compile_dir(Path(__file__).resolve().parent.parent / "charrnn", quiet=2)


COLD_PROBES_TEST = "test_a_warm_cache_gives_the_numbers_of_a_cold_one"


def pytest_collection_modifyitems(session, config, items):
    """test_cache.py's cold probe compiles every kernel in a process of its own, about 90 s; its
    test runs last, so that the suite runs beside the probe instead of waiting for it (in its
    file's turn, the test waited 86 s)."""
    probe_tests = [item for item in items if item.name == COLD_PROBES_TEST]
    items[:] = [item for item in items if item.name != COLD_PROBES_TEST] + probe_tests


def pytest_collection_finish(session):
    """test_cache.py's cold probe, started in the background once the tests to run are known
    (not for --collect-only, nor in each worker of a parallel run: there the test starts it)."""
    if session.config.option.collectonly or hasattr(session.config, "workerinput"):
        return
    for item in session.items:
        if item.name == COLD_PROBES_TEST:
            item.module.start_cold_probe()  # (ended at exit, if its test has not taken it)
            break


@pytest.fixture(autouse=True)
def _collector_as_it_was():
    """cli.main() freezes what is alive when it returns (a process that exits need not walk it);
    a test that calls main() in this process gets those objects back to the collector after.
    No test may leave the collector off."""
    on = gc.isenabled()
    yield
    gc.unfreeze()
    assert gc.isenabled() == on, "the collector was left off"


@pytest.fixture(autouse=True)
def _consoles_made_in_each_test(monkeypatch):
    """cli's consoles are made at their first use, and rich reads COLUMNS as it makes one: in a
    command's process that is once, for its terminal. Here each test makes them again under the
    environment it invokes with; otherwise the first test that printed fixed the width for every
    test after it in the process, and a table a test reads was folded or not by the order the
    tests ran in (a parallel run's workers run them in another)."""
    cli = sys.modules.get("charrnn.cli")
    if cli is not None:
        monkeypatch.setattr(cli.out, "_console", None)
        monkeypatch.setattr(cli.err, "_console", None)
