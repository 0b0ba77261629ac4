"""The speculative page fault (Michel Lespinasse's series, anonymous VMAs; protocols.md
section 3), as the patches do it.  No mmap_lock: mmap_seq validates what was read.
Follows that series' v1 (2021-04-30, on Linux v5.12; git tree lespinasse/linux, branch
v5.12-spf-anon; never merged): "x86/mm: attempt speculative mm faults first", "mm:
implement speculative handling in __handle_mm_fault().", speculative_page_walk_begin /
speculative_page_walk_end, __pte_map_lock, do_anonymous_page (mm/memory.c there).  Every
abort is named after the series' SPF_ABORT_* vm event ("mm: anon spf statistics") and
falls back to the classical fault, which alone decides a SIGSEGV.  Step 6b is the
model's own, for kernels where tables go away without mmap_lock write
(retract_page_tables, v6.6; PT_RECLAIM, v6.14).

  1. seq = mmap_seq (acquire); odd: a writer is active, abort ("odd"), never spin
  2. under rcu_read_lock: look the VMA up in the published tree (none at va:
     "unmapped") and copy it; then check mmap_seq ("vma_copy"); then the access check on
     the validated copy ("access_error").  A copy that a writer was changing (torn) can
     only pass the check if the check is wrong: the checkers' debug seqcount reports it.
  3. speculative_page_walk_begin: rcu_read_lock when tables are freed by RCU, IRQs off
     when freed after an IPI (--walk; a mismatched pair is a real bug class)
  4. walk existing tables only (a missing upper level aborts "pud", a missing or huge
     pmd "pmd"); remember orig_pmd
  5. do_anonymous_page: no anon_vma yet ("anon_vma": its preparation needs mmap_lock);
     prepare the frame before taking locks
  6. __pte_map_lock: walk_begin; mmap_seq unchanged ("pte_map_lock_seq1"); pmd_same(*pmd,
     orig_pmd) ("pte_map_lock_pmd"); spin_trylock(ptl) ("pte_map_lock_ptl": never spin
     with IRQs off, zap holds the ptl while it waits for our ack); mmap_seq again
     ("pte_map_lock_seq2"); walk_end
  6b. once page tables can go away without mmap_lock write (PT_RECLAIM at DONTNEED,
     retract_page_tables), pmd_same must also be checked under the ptl: a reclaimer
     clears the pmd while holding this ptl, so a pmd that still matches then is ours
     (the answer to the seed thread's question, and what pte_offset_map_lock does)
  7. commit the PTE if still none, unlock
Any abort returns its reason; the caller falls back to the classical fault.

Against munmap, which publishes the tree without its VMAs and marks them detached under
the write lock (mmap_seq odd), then downgrades (mmap_seq even again: the series ends the
write section there) and zaps and frees page tables under mmap_lock read:
  - a fault that read mmap_seq before munmap's write section began either sees it
    changed at one of its checks (2, 6) and aborts, or passed its final check of step 6
    under the ptl before the write section began (the smp_wmb after the odd increment
    pairs with that check's smp_rmb); then zap_pte_range, which comes after the write
    section began, takes that ptl after the fault released it and clears its PTE;
  - a fault that read mmap_seq after the downgrade looks the VMA up in the new tree
    (published before the even increment, which its acquire read pairs with): the
    unmapped range has no VMA, so it faults only on a neighbour, whose tables
    free_pgtables' floor and ceiling keep; and any table its walk entered stays
    allocated until its walk section ends (step 3: the grace period or the IPI that
    tlb_remove_table waits for), so a walk never reads a freed table.
"""
from .. import native
from .fault import VM_FAULT_OK, install_anon_pte
from .frames import alloc_frame, put_page
from .lockdep import lockdep_assert_walk_protected, ptl_lock_irqs_off
from .mm_types import PMD, PTE
from .pagetable import (P, PS, check_table, entry_gen, entry_pfn, index, lockless_walk_begin,
                        lockless_walk_end, walk_lockless)
from .vma import access_ok, find_vma_rcu, read_vma

def speculative_page_walk_begin(mm):
    if not mm.bugs.on("spf_walk_unprotected"):
        lockless_walk_begin(mm)


def speculative_page_walk_end(mm):
    if not mm.bugs.on("spf_walk_unprotected"):
        lockless_walk_end(mm)


def do_speculative_page_fault(mm, va, write):
    """VM_FAULT_OK, or the reason for aborting (the caller falls back)."""
    bugs = mm.bugs
    seq = native.seq_try_begin(mm.mmap_seq)                                  # 1
    if seq & 1:
        return "odd"
    mm.delay("spf_after_seq_read")
    native.rcu_read_lock()                                                   # 2
    try:
        found = find_vma_rcu(mm, va, "spf")
        if found is None:
            return "uaf"
        vid, gen = found
        if vid < 0:
            return "unmapped"                # the tree has no VMA at va
        vma = read_vma(mm, vid, "spf", va, lockless=True, gen=gen)
    finally:
        native.rcu_read_unlock()
    if vma is None:
        return "uaf"
    if not bugs.on("spf_skip_vma_check") and native.seq_read_retry(mm.mmap_seq, seq):
        return "vma_copy"
    if vma.torn:
        # validated, yet changed while copied: every decision below would be on a copy
        # of no moment of the VMA's life
        mm.report("torn_vma", "spf", va, vma.id, vma.start, vma.end)
        return "uaf"
    if not vma.start <= va < vma.end:
        return "unmapped"                    # shrunk or split before it was copied
    if not access_ok(vma.prot, write):
        return "access_error"

    speculative_page_walk_begin(mm)                                          # 3
    try:
        lockdep_assert_walk_protected(mm, "spf_walk", va)
        res = walk_lockless(mm, va, "spf_walk", stop=PMD)                    # 4
        if res is None:
            return "uaf"
        pmd_t, orig_pmd, pmd_tag = res
    finally:
        speculative_page_walk_end(mm)
    if pmd_t < 0:
        return "pud"
    if not orig_pmd & P or orig_pmd & PS:
        return "pmd"
    if not vma.anon_vma:                                                     # 5
        return "anon_vma"
    f = alloc_frame(mm, may_fail=True)
    if f < 0:
        return "oom"
    t, tag, i = entry_pfn(orig_pmd), entry_gen(orig_pmd), index(va, PTE)
    speculative_page_walk_begin(mm)                                          # 6
    try:
        reason = __pte_map_lock(mm, va, seq, pmd_t, pmd_tag, orig_pmd, t)
    finally:
        speculative_page_walk_end(mm)
    if reason:
        put_page(mm, f)
        return reason
    try:                                                                     # 7
        if not check_table(mm, t, tag, PTE, "spf_walk", va):
            put_page(mm, f)
            return "uaf"
        install_anon_pte(mm, vma, t, i, f, write)
        return VM_FAULT_OK
    finally:
        native.spin_unlock(mm.ptl(t))


def __pte_map_lock(mm, va, seq, pmd_t, pmd_tag, orig_pmd, t):
    """Step 6 (walk section held): None with the ptl of table t held, else the abort
    reason with nothing held."""
    bugs = mm.bugs
    lockdep_assert_walk_protected(mm, "spf_walk", va)
    if native.seq_read_retry(mm.mmap_seq, seq):
        return "pte_map_lock_seq1"
    cur = int(mm.pt[pmd_t, index(va, PMD)])
    mm.walk_point()                      # a shared read of the walk, relied on below
    if not check_table(mm, pmd_t, pmd_tag, PMD, "spf_walk", va):
        return "uaf"
    if cur != orig_pmd and not bugs.on("spf_skip_pmd_same"):
        return "pte_map_lock_pmd"
    ptl = mm.ptl(t)
    mm.delay("spf_before_ptl")
    if bugs.on("spf_ptl_spin"):
        if not ptl_lock_irqs_off(mm, t):
            return "pte_map_lock_ptl"
    elif not native.spin_trylock(ptl, mm.cpu):
        return "pte_map_lock_ptl"
    if not check_table(mm, t, entry_gen(orig_pmd), PTE, "spf_walk", va):
        native.spin_unlock(ptl)          # the ptl lives in the table's page descriptor
        return "uaf"
    if int(mm.pt[pmd_t, index(va, PMD)]) != orig_pmd and not bugs.on("spf_skip_pmd_same"):
        native.spin_unlock(ptl)          # pmd_same again, under the ptl: see step 6b
        return "pte_map_lock_pmd"
    if not bugs.on("spf_skip_final_seq_check") and native.seq_read_retry(mm.mmap_seq, seq):
        native.spin_unlock(ptl)
        return "pte_map_lock_seq2"
    return None
