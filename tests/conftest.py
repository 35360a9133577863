import gc
import sys
from pathlib import Path

import pytest

# tests/reference.py is imported as a plain module by the tests
sys.path.insert(0, str(Path(__file__).parent))


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
def _no_stop_seen():
    """A stop signal a test sends this process is noted for the rest of it (StopsHeld.seen), and
    cli.main would then end every later command at once with exit 130: each test is a process
    of its own in that respect."""
    from charrnn.distributed import HELD

    yield
    HELD.seen = False
