import glob
import os

import pytest

from spfshm.arena import Arena, Layout
from spfshm.smp import Smp, smp_regions

SHM_GLOB = "/dev/shm/spfshm_*"


@pytest.fixture
def make_smp():
    """make_smp(ncpus, extra_regions) -> (arena, smp), initialised in this process."""
    made = []

    def make(ncpus, extra=(), ring_capacity=1024):
        arena = Arena(Layout(list(smp_regions(ncpus, ring_capacity)) + list(extra)))
        smp = Smp(arena, ncpus)
        smp.init()
        made.append(arena)
        return arena, smp

    yield make
    for a in made:
        a.close()


def shm_leftovers():
    """Our segments in /dev/shm that no live process maps any more (a leak; a segment a
    concurrently running test still uses is not one)."""
    mapped = set()
    for maps in glob.glob("/proc/[0-9]*/maps"):
        try:
            with open(maps) as f:
                mapped.update(line.split()[-1] for line in f if "/dev/shm/spfshm_" in line)
        except OSError:
            pass
    return sorted(p for p in glob.glob(SHM_GLOB) if p not in mapped)


def pytest_sessionfinish(session, exitstatus):
    # The suite's own leak check is tests/test_cleanup.py; this only warns loudly.
    if os.environ.get("PYTEST_XDIST_WORKER") is None and shm_leftovers():
        print("\nWARNING: /dev/shm leftovers: %s" % shm_leftovers())
