import pytest

from spfshm.arena import Arena, Layout
from spfshm.smp import Smp, smp_regions


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


def arena_mappings(pid):
    """The arena segments process ``pid`` maps, as /proc/PID/maps names them: an unlinked
    one ends in " (deleted)"."""
    with open("/proc/%d/maps" % pid) as f:
        return sorted({line.split(None, 5)[5].strip() for line in f
                       if "/dev/shm/spfshm_" in line})
