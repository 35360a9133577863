import gc
import sys
from pathlib import Path

import pytest

# tests/reference.py is imported as a plain module by the tests
sys.path.insert(0, str(Path(__file__).parent))


COLD_PROBE_TEST = "test_a_warm_cache_gives_the_numbers_of_a_cold_one"


def pytest_collection_modifyitems(config, items):
    """test_cache.py's cold-cache test runs last: its probe (every kernel compiled, niced) then
    has the whole suite's time on the core the suite leaves idle, where in its alphabetical turn
    the suite stood still for 95 s waiting for it. In a worker of a parallel run, which starts
    the probe in the test itself, first: the other workers run the rest meanwhile."""
    last = not hasattr(config, "workerinput")
    items.sort(key=lambda item: (item.name == COLD_PROBE_TEST) == last)  # (stable: the rest keep their order)


def pytest_collection_finish(session):
    """test_cache.py's cold probe, started in the background once the tests to run are known
    (not for --collect-only, nor in each worker of a parallel run: there the test starts it)."""
    if session.config.option.collectonly or hasattr(session.config, "workerinput"):
        return
    for item in session.items:
        if item.name == COLD_PROBE_TEST:
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

