"""gup_fast walks with IRQs off in every configuration (v6.12 mm/gup.c gup_fast:
local_irq_save, "we also want to block IPIs that come from callers of
tlb_remove_table_sync_one"), whatever --walk the other lockless walkers use."""
import pytest

from spfshm import native
from spfshm.mm import gup
from test_fires import BASE, make  # noqa: F401  (make: the fixture)


@pytest.mark.parametrize("walk,table_free", [("rcu", "rcu"), ("irq", "ipi"), ("rcu", "ipi")])
def test_gup_fast_walks_with_irqs_off(make, monkeypatch, walk, table_free):
    b = make(walk=walk, table_free=table_free).map(pages=4, stored=4)
    seen = []
    real = gup.walk_lockless

    def walk_lockless(mm, va, site, stop):
        seen.append((bool(native.irqs_disabled()), native.rcu_read_depth()))
        return real(mm, va, site, stop=stop)

    monkeypatch.setattr(gup, "walk_lockless", walk_lockless)
    pinned = gup.gup_fast(b.mm, BASE, 4)
    assert len(pinned) == 4
    # IRQs off (an RCU reader too: the depth counts it), and nothing else taken
    assert seen == [(True, 1)] * 4
    assert not native.irqs_disabled() and native.rcu_read_depth() == 0
    gup.gup_hold_and_release(b.mm, pinned)
