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

