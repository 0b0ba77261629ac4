"""A wait-for graph for spinlocks, enough to name a deadlock instead of hanging; and
CONFIG_DEBUG_SPINLOCK's "already unlocked".

A CPU about to spin on a ptl publishes which table's lock it waits for (its own arena
line).  When an IPI is not acked in time, the sender asks: is the silent target spinning
on a lock that I hold?  That is the SPF deadlock of protocols.md section 3 (an IRQs-off
walker spinning on the ptl that zap_pte_range holds while it waits for the ack).
"""
from .. import native


class Deadlock(Exception):
    """A detected deadlock; the violation is already recorded."""


def ptl_lock_irqs_off(mm, t):
    """spin_lock(ptl) with IRQs off (what SPF must never do: bug ``spf_ptl_spin``).
    Gives up after twice the IPI timeout, reporting the deadlock from this side."""
    ptl = mm.ptl(t)
    if native.spin_trylock(ptl, mm.cpu):
        return True
    mm.waiting[0] = t + 1
    try:
        if native.spin_lock_timeout(ptl, mm.cpu, int(2e9 * mm.cfg.ipi_timeout)) == 0:
            return True
        mm.report("deadlock", "ptl", 0, int(2e3 * mm.cfg.ipi_timeout), t,
                  native.spin_owner(ptl))
        raise Deadlock()
    finally:
        mm.waiting[0] = 0


def check_ipi_wait(mm, target, waited_ms):
    """After an IPI to ``target`` timed out: report and raise Deadlock if the target
    waits for a lock this CPU holds."""
    t = int(mm.waiting_all[target, 0]) - 1
    if t >= 0 and native.spin_owner(mm.ptl(t)) == mm.cpu:
        mm.report("deadlock", "ipi", 0, waited_ms, target, t)
        raise Deadlock()


def check_spin_unlocks(mm):
    """CONFIG_DEBUG_SPINLOCK's spin_bug "already unlocked", once per operation: native
    counts this CPU's spin_unlock of a lock that was free (a caller that went on as if a
    spin_trylock had taken the lock for it, and released it anyway)."""
    n = native.spin_bugs_take()
    if n:
        mm.report("spin_bug", "spin_unlock", 0, n)


def assert_spin_locked(mm, t, site):
    """assert_spin_locked(pmd_lockptr(mm, pmdp)), as pgtable_trans_huge_deposit and
    pgtable_trans_huge_withdraw (mm/pgtable-generic.c) begin: table t's lock must be
    held, by this CPU (the model's spinlocks know their owner)."""
    owner = native.spin_owner(mm.ptl(t))
    if owner != mm.cpu:
        mm.report("ptl_not_held", site, 0, t, owner + 1)


def lockdep_assert_walk_protected(mm, site, va):
    """RCU_LOCKDEP_WARN(!rcu_read_lock_any_held(), ...), as CONFIG_PROVE_RCU's
    rcu_dereference_check() splats "suspicious RCU usage": a lockless reader (a page
    table walk, the VMA tree lookup) relies on what it reads only inside an RCU
    read-side section or with IRQs off (an RCU reader too since 4.20's consolidated
    RCU, and what holds off the flush IPI); with neither, a free can meet it whatever
    the timing, so it is reported at once."""
    if not native.rcu_read_depth() and not native.irqs_disabled():
        mm.report("walk_unprotected", site, va)
