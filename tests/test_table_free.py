"""--table-free rcu is MMU_GATHER_RCU_TABLE_FREE with its fallback (v6.14 mm/mmu_gather.c
tlb_remove_table): tables are batched and freed after a grace period, but when no batch
page can be allocated the table goes through tlb_remove_table_one at once: an IPI sync
and the free, or call_rcu with CONFIG_PT_RECLAIM; --table-free rcu-always never falls
back.  --walk auto pairs rcu walkers only where every free waits for a grace period."""
import pytest

from spfshm.config import Config
from spfshm.mm import tlb as tlb_mod
from spfshm.mm.mm_types import STAT, TABLE_PENDING
from spfshm.mm.syscalls import do_munmap
from test_fires import BASE, PAGE, fired, make  # noqa: F401  (make: the fixture)


def unmap_with_batch_alloc(b, monkeypatch, fails):
    calls = []
    monkeypatch.setattr(b.mm, "table_batch_alloc_fails", lambda: calls.append(1) or fails)
    synced = []
    real = tlb_mod._ipi_all
    monkeypatch.setattr(tlb_mod, "_ipi_all", lambda mm, send, t0: synced.append(1) or
                        real(mm, send, t0))
    t = b.table()
    assert do_munmap(b.mm, BASE, 8 * PAGE) == 0
    return t, calls, synced


@pytest.mark.parametrize("reclaim", ["off", "ptreclaim"])
def test_fallback_when_no_batch_page(make, monkeypatch, reclaim):
    b = make(table_free="rcu", reclaim=reclaim).map()
    t, calls, synced = unmap_with_batch_alloc(b, monkeypatch, True)
    assert calls                                  # tlb_remove_table asked for a page
    if reclaim == "off":
        # tlb_remove_table_sync_one, then the free at once: no grace period
        assert int(b.mm.pt_state[t]) != TABLE_PENDING and len(synced) >= 2
        assert b.mm.local[STAT["table_free_one"]] >= 1
    else:
        assert int(b.mm.pt_state[t]) == TABLE_PENDING    # call_rcu: still pending
        assert b.mm.local[STAT["table_free_one"]] == 0
    assert fired(b) == []


@pytest.mark.parametrize("table_free,fails", [("rcu", False), ("rcu-always", True)])
def test_batched_tables_wait_for_a_grace_period(make, monkeypatch, table_free, fails):
    b = make(table_free=table_free).map()
    t, calls, _ = unmap_with_batch_alloc(b, monkeypatch, fails)
    assert bool(calls) == (table_free == "rcu")
    assert int(b.mm.pt_state[t]) == TABLE_PENDING
    b.mm.rcu.rcu_barrier()
    assert int(b.mm.pt_state[t]) != TABLE_PENDING and fired(b) == []


@pytest.mark.parametrize("table_free,reclaim,walk", [
    ("ipi", "off", "irq"), ("rcu", "off", "irq"), ("rcu", "ptreclaim", "rcu"),
    ("rcu-always", "off", "rcu"), ("rcu-always", "ptreclaim", "rcu")])
def test_walk_auto_pairs_rcu_only_with_grace_periods_always(table_free, reclaim, walk):
    assert Config(table_free=table_free, reclaim=reclaim).resolved().walk_mode() == walk


def test_reclaim_auto_with_rcu_always():
    assert Config(table_free="rcu-always").resolved().reclaim == "ptreclaim"
