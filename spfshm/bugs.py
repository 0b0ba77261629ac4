"""The busted-variant catalogue (rcutorture's "busted" flavour, one per protocol step).

Each entry names the protocol step it breaks, the real kernel bug or CVE it mirrors, and
the signatures (kind@site) the checkers must report first.  The model asks
``bugs.on(NAME)`` where the step lives; ``spfshm bugs`` lists the table; ``spfshm stress
--bug NAME`` switches it on.  The names the model asks about are read from its source when
the first ``Bugs`` is made: a name missing from the catalogue, or an entry nothing asks
about (other than a forbidden pairing, which is configuration only), fails the start-up.
"""
import ast
import dataclasses
import difflib
import functools
import glob
import os
from collections import namedtuple

Bug = namedtuple("Bug", "name step origin expect description config control window",
                 defaults=({}, {}))
# expect: the signatures (kind@site) one of which the FIRST violation of a run with the
#   variant must have: what the bug causes first, not whatever a broken run reports later.
# config: settings the variant needs to be reachable (merged into the run's defaults):
#   features (NEEDS) and the checkers' clocks only, never where or how much to delay;
#   exploration must find the window by itself.
# control: for a configuration-only entry (step "pairing: ..."), the settings that make
#   its control run the kernel's pairing; code entries get theirs by switching the bug off.
# window: the named delay point that widens the variant's window, and how hard: where
#   the bug is, known to whoever planted it.  Only the checkers' own tests use it
#   (``with_window``: they show that the oracle fires); a measure of exploration
#   (bench detect, mutate, the default run) never does.

PAIRING = "pairing:"
# What a page table freed with present PTEs shows first: the free's own check, or, while
# its free waits for a grace period (--table-free rcu, the default), a sweep (its frames
# mapped by no reachable PTE) or a load (the store it held, lost).
TABLE_FREED_WITH_PTES = ("pt_lost_ptes@free_pgtables", "frame_leak@sweep", "lost_update@load")
# a PTE left where no VMA is: seen by a sweep, or by the mmap that would cover it
STALE_PTE = ("stale_pte@sweep", "stale_pte@mmap")
# What a VMA read-locked past its writer shows first: its release, the writer's assert,
# or the fault it runs (the VMA changed, detached or moved; a table populated under a
# collapse and leaked by the huge pmd set over it; PTEs left where no VMA is).
READER_PAST_WRITER = (
    "vma_read_while_written@vma_end_read", "vma_read_held@split_vma", "vma_read_held@munmap",
    "vma_unlocked_change@fault", "vma_detached@fault", "fault_outside_vma@fault",
    "pt_leak@sweep") + STALE_PTE + TABLE_FREED_WITH_PTES
NEEDS = frozenset(("fault_mode", "table_free", "walk", "tlb_flush", "reclaim", "reclaimer",
                   "collapse", "madvise_lock", "vma_lock", "pcp", "workload", "check_every", "stall_timeout",
                   "ipi_timeout"))
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


class CatalogueError(Exception):
    """The model and the catalogue disagree (an internal error, not a usage error)."""


CATALOGUE = [
    Bug("free_table_no_sync", "free_pgtables -> tlb_remove_table",
        "bug class 1: table freed with no IPI sync or grace period "
        "(cf. 2ba99c5e0881 'mm/khugepaged: fix GUP-fast interaction by sending IPI')",
        ("pt_uaf@free_pgtables", "pt_uaf@hw_walk", "pt_uaf@gup"),
        "munmap frees an emptied page table at once, while a lockless walker may be in it",
        {}),
    Bug("free_frame_before_flush", "zap_pte_range -> tlb_finish_mmu",
        "bug class 5: CVE-2018-18281 (mremap/ftruncate: a page went back to the allocator "
        "while a stale TLB entry still reached it; fixed by eb66ae030829 'mremap: properly "
        "flush TLB before releasing the page')",
        ("frame_uaf@zap", "frame_uaf@tlb_access"),
        "zap frees the frames before the TLB shootdown; another CPU's stale TLB entry "
        "still reaches them", {}),
    Bug("dontneed_no_flush_pending", "tlb_finish_mmu: mm_tlb_flush_nested forces the flush",
        "99baac21e458 'mm: fix MADV_[FREE|DONTNEED] TLB flush miss problem' (Nadav Amit's "
        "report: parallel MADV_DONTNEEDs of one range, a stale TLB entry after one returned)",
        ("stale_tlb@madvise", "lost_update@zap", "lost_update@load", "bad_value@load"),
        "tlb_finish_mmu does not force a whole-mm flush for a nested gather: each flushes "
        "the range it cleared (x86: up to 33 pages, else all), nothing when a concurrent "
        "MADV_DONTNEED cleared the PTEs first, and returns while that one has not flushed: "
        "a store begun after the return goes through a stale TLB entry into the zapped frame",
        {"workload": "faults"},
        window={"delay": 0.5, "delay_max_us": 3000.0, "delay_points": ("tlb_finish_mmu",)}),
    Bug("mprotect_no_flush", "change_protection -> flush_tlb_range",
        "stale writable TLB entries after a permission downgrade (cf. 6ce64428d620 "
        "'mm/userfaultfd: fix memory corruption due to writeprotect': change_protection "
        "write-protected PTEs under mmap_lock read and deferred the flush, so a CPU kept "
        "writing through its stale writable entry)",
        ("stale_tlb@mprotect",),
        "mprotect makes PTEs read-only but skips the TLB flush", {}),
    Bug("zap_skip_last_pte", "zap_pte_range",
        "incomplete zap leaves a mapped page behind (bad rss-counter / leaked page class)",
        TABLE_FREED_WITH_PTES + STALE_PTE,
        "munmap and DONTNEED miss the last PTE of the range", {"check_every": 0.25}),
    Bug("rss_no_dec", "zap_pte_range -> add_mm_rss_vec",
        "'BUG: Bad rss-counter state' reports (RSS accounting drift)",
        ("rss@sweep",),
        "zap forgets to decrement the RSS counter", {"check_every": 0.25}),
    Bug("fault_no_ptl", "do_anonymous_page -> pte_offset_map_lock",
        "installing a PTE without the page table lock (two faulters both see pte_none)",
        TABLE_FREED_WITH_PTES,
        "the classical fault checks pte_none and installs the frame without taking the ptl "
        "(two faulters both install; or one installs into a table that PT_RECLAIM or "
        "munmap found empty under the ptl and frees)",
        {},
        window={"delay": 0.3, "delay_max_us": 300.0,
                "delay_points": ("install_pte",)}),
    Bug("pte_alloc_no_recheck", "__pte_alloc -> pmd_populate",
        "pmd_install's 'Has another populated it ?' re-check (mm/memory.c) missing in a "
        "table allocation",
        ("pt_leak@sweep", "lost_update@load"),
        "a new PTE table is installed without re-checking the pmd under the pmd lock, "
        "overwriting a table another CPU just populated (its table leaks, and a store "
        "through its PTE is lost)", {}),
    Bug("ptreclaim_after_ptl_drop", "PT_RECLAIM fast path after zap_pte_range",
        "bug class 4: reclaim after the ptl was dropped mid-zap freed a refilled table "
        "(f39edcf6349a 'mm: pgtable: fix incorrect reclaim of non-empty PTE pages', Qi "
        "Zheng, 2025; seen as 'BUG: Bad rss-counter state')",
        TABLE_FREED_WITH_PTES,
        "MADV_DONTNEED takes the reclaim fast path although zap dropped the ptl to free a "
        "batch, so a fault may have refilled the table",
        {"reclaim": "ptreclaim", "table_free": "rcu", "workload": "faults"},
        window={"delay": 0.5, "delay_max_us": 2000.0,
                "delay_points": ("zap_ptl_dropped",)}),
    Bug("reclaim_no_recheck", "seed reclaim step 2: re-check the table is empty",
        "bug class 4: a table removed on a stale scan (Hildenbrand's plan without the "
        "re-check under the write lock)",
        TABLE_FREED_WITH_PTES,
        "the scanner removes tables found empty under mmap_lock read without looking again "
        "(the table's free waits for a grace period: meanwhile a sweep finds its frames "
        "mapped by no reachable PTE, or a load finds the store it held gone)",
        {"reclaim": "seed"}),
    Bug("walk_rcu_free_ipi", "pairing: --walk rcu with --table-free ipi",
        "bug class 1: an IPI sync does not wait for an rcu_read_lock() walker (why x86 "
        "moved to RCU table freeing: 718b13861d22 'x86: mm: free page table pages by RCU "
        "instead of semi RCU', Qi Zheng's PT_RECLAIM series)",
        ("pt_uaf@spf_walk", "pipe_age@spf_walk", "pt_uaf@free_pgtables"),
        "a forbidden configuration, no code change: speculative walkers hold only RCU "
        "while tables are freed right after the flush IPI",
        {"fault_mode": "spf", "walk": "rcu", "table_free": "ipi"},
        # The kernel's pairing for an RCU-only walker: every table after a grace period
        # (plain rcu with reclaim off falls back to an IPI: walk_rcu_table_free_fallback)
        {"table_free": "rcu-always"},
        window={"delay": 0.15, "delay_max_us": 3000.0,
                "delay_points": ("spf_before_ptl",)}),
    Bug("walk_rcu_table_free_fallback",
        "pairing: --walk rcu with --table-free rcu's tlb_remove_table_one fallback",
        "the seed thread's 'shouldn't we rather be using RCU?': MMU_GATHER_RCU_TABLE_FREE "
        "is RCU only while tlb_remove_table gets a batch page; its fallback (v6.14 "
        "mm/mmu_gather.c tlb_remove_table_one without CONFIG_PT_RECLAIM) is "
        "tlb_remove_table_sync_one, an IPI, then the free, which an rcu_read_lock() "
        "walker does not hold up",
        ("pt_uaf@spf_walk", "pipe_age@spf_walk", "pt_uaf@free_pgtables"),
        "a forbidden configuration, no code change: speculative walkers hold only RCU "
        "while a table whose batch page could not be allocated is freed after an IPI sync",
        {"fault_mode": "spf", "walk": "rcu", "table_free": "rcu", "reclaim": "off"},
        {"table_free": "rcu-always"},
        window={"delay": 0.15, "delay_max_us": 3000.0,
                "delay_points": ("spf_before_ptl",)}),
    Bug("irq_walk_no_ipi_flush", "pairing: IRQs-off walkers with --tlb-flush no-ipi",
        "Andy Lutomirski's warning in the SPF thread: where the TLB flush does not "
        "interrupt the target, IRQs off protects nothing (cf. a37259732a7d 'x86/mm: Make "
        "MMU_GATHER_RCU_TABLE_FREE unconditional')",
        ("pt_uaf@spf_walk", "pipe_age@spf_walk", "pt_uaf@gup", "pipe_age@gup",
         "pt_uaf@free_pgtables"),
        "a forbidden configuration, no code change: remote TLB invalidation, tables freed "
        "after the flush, speculative and gup_fast walkers with IRQs off",
        {"fault_mode": "spf", "walk": "irq", "tlb_flush": "no-ipi", "table_free": "ipi"},
        {"tlb_flush": "ipi"},
        window={"delay": 0.05, "delay_max_us": 3000.0,
                "delay_points": ("spf_before_ptl",)}),
    Bug("mmap_unlock_leak", "mmap_write_unlock on an error path",
        "a lock leaked on an error path (the hang every runner must survive: the "
        "watchdog names the holder and ends the run)",
        ("hang@watchdog",),
        "one mmap_write_unlock in a hundred forgets up_write: every other CPU blocks",
        {"stall_timeout": 0.5}),
    Bug("khugepaged_no_sync", "collapse_huge_page step 4: tlb_remove_table_sync_one",
        "bug class 1: Jann Horn's 2022 fix 2ba99c5e0881 'mm/khugepaged: fix GUP-fast "
        "interaction by sending IPI' (the table was deposited right after "
        "pmdp_collapse_flush, whose flush need not interrupt a lockless walker, and "
        "'deposited page tables can be freed when a THP page somewhere in the mm is "
        "removed')",
        ("pt_uaf@collapse_huge_page", "pt_uaf@spf_walk"),
        "khugepaged deposits the PTE table it replaced right after the TLB flush, without "
        "tlb_remove_table_sync_one: a walker still inside it meets it freed by the zap "
        "of a huge pmd (any one of its PMD table's)",
        {"collapse": "write-lock", "tlb_flush": "no-ipi", "table_free": "rcu",
         "fault_mode": "spf", "workload": "faults"},
        window={"delay": 0.1, "delay_max_us": 3000.0,
                "delay_points": ("spf_before_ptl",)}),
    Bug("thp_deposit_leak", "zap_huge_pmd -> zap_deposited_table",
        "a page table kept for a huge pmd's deposit leaked (cf. 12c9d70bd505 'mm: fix "
        "memory leak in copy_huge_pmd()': a pgtable allocated for a huge pmd was never "
        "deposited nor freed)",
        ("pt_leak@sweep",),
        "the zap of a huge pmd clears it but leaves its deposited PTE table on the PMD "
        "table's list: one deposit more than huge pmds, linked from nowhere",
        {"collapse": "write-lock", "check_every": 0.25}),
    Bug("collapse_pmd_check_before_vma_lock",
        "collapse_huge_page step 2: vma_start_write before check_pmd_still_valid",
        "the 2025 race that MADV_DONTNEED under the per-VMA lock (6.17) exposed, patch "
        "'mm: Fix the race between collapse and PT_RECLAIM under per-vma lock': the pmd "
        "was checked before vma_start_write, so a DONTNEED holding only the VMA's read "
        "lock could still reclaim the PTE table, and the collapse went on with a none pmd",
        ("pmd_changed@collapse_huge_page",),
        "khugepaged checks the pmd under mmap_lock write but before write-locking the "
        "VMA: PT_RECLAIM at a DONTNEED under the VMA's read lock clears the pmd meanwhile",
        {"collapse": "write-lock", "madvise_lock": "vma", "reclaim": "ptreclaim",
         "table_free": "rcu", "workload": "faults", "check_every": 0.25},
        window={"delay": 1.0, "delay_max_us": 30000.0,
                "delay_points": ("collapse_vma_lock",)}),
    Bug("pervma_seq_no_acquire", "vma_start_read: ACQUIRE on the sequence loads",
        "bug class 6: sequence counts read without acquire ordering (b1f02b95758d 'mm: "
        "fix memory ordering for mm_lock_seq and vm_lock_seq'); emulated: the VMA is read "
        "before the checks, as a weakly ordered CPU may",
        ("vma_unlocked_change@fault",),
        "the per-VMA fault's reads of the VMA are not ordered after its lock checks",
        {"fault_mode": "pervma"},
        window={"delay": 0.2, "delay_max_us": 1000.0,
                "delay_points": ("vma_start_read",)}),
    Bug("vma_seq_wrap", "vma_start_write: vm_lock_seq == mm_lock_seq",
        "bug class 7: a sequence count that wrapped is taken for 'no writer' / 'already "
        "locked' (no upstream bug; the kernel's vm_lock_seq is 'explicitly allowed to "
        "overflow', cf. b1f02b95758d 'mm: fix memory ordering for mm_lock_seq and "
        "vm_lock_seq', which says so); emulated with a 3-bit comparison",
        # the write lock it skips would have waited for the readers: one still holding
        # the VMA is seen by the assert after vma_start_write (vma_read_held), or the
        # split's assert sees the VMA not write-locked at all
        ("vma_not_write_locked@split_vma", "vma_read_held@munmap",
         "vma_read_held@split_vma"),
        "vma_start_write believes a VMA locked 8 write sections ago is still locked by it",
        {"fault_mode": "pervma"}),
    Bug("vma_tree_free_no_rcu", "VMA tree publication step (3): call_rcu",
        "bug class 8: a VMA tree node freed while a reader still walks it (cf. StackRot, "
        "CVE-2023-3269: a maple node that stack expansion replaced under mmap_lock read "
        "was freed by RCU while a reader outside any RCU section walked it)",
        ("vma_uaf@pervma", "vma_uaf@spf"),
        "the replaced VMA tree is freed at once instead of after a grace period",
        {"fault_mode": "spf,pervma"},
        window={"delay": 0.05, "delay_max_us": 500.0,
                "delay_points": ("vma_copy", "pervma_lookup")}),
    Bug("gup_fast_no_recheck", "gup_fast step (4): re-check the PTE after the reference",
        "mm/gup.c's '(1) pin the page (by prefetching pte), then (2) check pte not "
        "changed' skipped: a frame freed and reused under a lockless pinner gets pinned",
        ("gup_unmapped@gup", "pipe_age@gup", "frame_uaf@gup"),
        "gup_fast keeps the reference without checking that the PTE still maps the frame",
        {},
        window={"delay": 1.0, "delay_max_us": 3000.0,
                "delay_points": ("gup_pin",)}),
    Bug("spf_skip_final_seq_check", "SPF step 6: mmap_seq check after spin_trylock(ptl)",
        "bug class 3: a speculative fault commits after munmap removed the VMA",
        TABLE_FREED_WITH_PTES + STALE_PTE
        + ("stale_tlb@mprotect", "pte_prot@sweep", "pte_prot@mprotect"),
        "the speculative fault does not re-check mmap_seq once it holds the ptl (after "
        "munmap: a PTE outside every VMA or in a freed table; after mprotect: a PTE with "
        "the old permissions)",
        {"fault_mode": "spf,classic"},
        window={"delay": 0.3, "delay_max_us": 3000.0,
                "delay_points": ("spf_before_ptl",)}),
    Bug("spf_skip_vma_check", "SPF step 2: mmap_seq check after the VMA copy",
        "the copy check of Lespinasse's series (a torn VMA copy decides the fault)",
        ("torn_vma@spf",),
        "the VMA copy is used without checking mmap_seq, so a SIGSEGV can be decided on "
        "a VMA that a concurrent split was rewriting",
        {"fault_mode": "spf"},
        window={"delay": 0.05, "delay_max_us": 500.0,
                "delay_points": ("vma_copy", "split_vma")}),
    Bug("spf_walk_unprotected", "SPF step 3: speculative_page_walk_begin",
        "bug class 1: a lockless walk with neither IRQs off nor RCU (why the series' "
        "speculative_page_walk_begin() disables IRQs, or takes rcu_read_lock() where "
        "tables are freed by RCU, as its v1 does)",
        ("walk_unprotected@spf_walk", "pt_uaf@spf_walk", "pipe_age@spf_walk"),
        "the speculative page-table walk takes no protection against table freeing "
        "(PROVE_RCU's check sees it at once; with it off, a free that meets the walk)",
        {"fault_mode": "spf"},
        window={"delay": 0.1, "delay_max_us": 20000.0,     # long enough for a grace period
                "delay_points": ("spf_before_ptl",)}),
    Bug("spf_skip_pmd_same", "SPF step 6b: pmd_same under the ptl",
        "bug class 2: the PMD changed under a speculative walker (page-table reclaim "
        "without mmap_lock) and nobody noticed",
        # its PTE lands in the table before the free (freed with PTEs) or after it (the
        # free table's poison overwritten, seen when the table is next allocated)
        TABLE_FREED_WITH_PTES + ("pipe_age@spf_walk", "pt_uaf@spf_walk",
                                 "poison_overwritten@alloc_table"),
        "the speculative fault does not re-check the pmd once it holds the ptl, so it "
        "commits into a table that DONTNEED just reclaimed (step 6 opens a new walk "
        "section: the table it locks may be past its grace period, or freed, by then)",
        {"fault_mode": "spf", "reclaim": "ptreclaim", "table_free": "rcu",
         "workload": "faults"},
        window={"delay": 0.05, "delay_max_us": 1000.0,
                "delay_points": ("spf_before_ptl",)}),
    Bug("spf_ptl_spin", "SPF step 6: spin_trylock(ptl)",
        "bug class 9: an IRQs-off walker spins on the ptl that zap_pte_range holds while "
        "it waits for that walker's TLB-flush ack (the deadlock the series' __pte_map_lock "
        "avoids with spin_trylock, as its comment says)",
        ("deadlock@ipi",),
        "the speculative fault spins on the ptl with IRQs off instead of trying once",
        {"fault_mode": "spf", "table_free": "ipi", "ipi_timeout": 3.0},
        window={"delay": 0.6, "delay_max_us": 3000.0,
                "delay_points": ("zap_under_ptl",)}),
    Bug("pervma_no_recheck", "vma_start_read step (c)",
        "per-VMA lock taken without re-checking vm_lock_seq after the trylock "
        "(the race vma_start_read's comment describes)",
        READER_PAST_WRITER,
        "a fault read-locks a VMA that the current writer has already write-locked (under "
        "khugepaged: it populates the pmd the collapse cleared, and the huge pmd set over "
        "it leaks that table)",
        {"fault_mode": "pervma"},
        window={"delay": 0.2, "delay_max_us": 1000.0,
                "delay_points": ("vma_start_read",)}),
    Bug("pervma_skip_detached", "lock_vma_under_rcu step 2: the detached check",
        "per-VMA lock taken on a VMA unmapped since the lookup found it (v6.4's 'Check if "
        "the VMA got isolated after we found it', added with the detached flag by "
        "'mm: introduce vma detached flag'; 6.5 moved it into vma_start_read)",
        ("vma_detached@fault", "vma_unlocked_change@fault", "pt_leak@sweep") + STALE_PTE
        + TABLE_FREED_WITH_PTES,
        "the fault read-locks a VMA that munmap detached after the RCU lookup found it "
        "(its write section over, the lock is free) and faults in a range no VMA maps",
        {"fault_mode": "pervma"},
        window={"delay": 0.2, "delay_max_us": 2000.0,
                "delay_points": ("pervma_lookup",)}),
    Bug("refcnt_no_seq_recheck", "vma_start_read (refcnt) step (d): vm_lock_seq after the "
        "reference",
        "v6.15+ per-VMA lock taken without re-checking vm_lock_seq once the reference is "
        "held (the race vma_start_read's comment describes: 'False unlocked result is "
        "impossible because we modify and check vma->vm_lock_seq under vma->vm_refcnt "
        "protection')",
        READER_PAST_WRITER,
        "a fault takes a reference on a VMA that the current writer has write-locked "
        "(its __vma_exit_locked done, so the limited increment succeeds)",
        {"vma_lock": "refcnt"},
        window={"delay": 0.2, "delay_max_us": 1000.0,
                "delay_points": ("vma_start_read",)}),
    Bug("refcnt_detach_no_wait", "vma_mark_detached (refcnt) step (3): wait for readers",
        "v6.15+ vma_mark_detached that drops its reference without waiting for the "
        "temporary ones ('Wait until vma is detached with no readers', mm/mmap_lock.c): "
        "the record, SLAB_TYPESAFE_BY_RCU, is freed and reused with a reader's "
        "reference still in its vm_refcnt",
        ("vma_refcnt@vma_mark_detached",),
        "munmap detaches a VMA while a lock_vma_under_rcu that found it holds a reference "
        "it is about to drop: the VMA is detached with a reference in it, which the free "
        "and the record's reuse would find", {"vma_lock": "refcnt"},
        window={"delay": 0.3, "delay_max_us": 3000.0,
                "delay_points": ("vma_start_read", "vma_ref_held")}),
    Bug("refcnt_no_vm_mm_check", "vma_start_read (refcnt) step (c): vm_mm",
        "v6.15+ per-VMA lock taken on a record that another mm reused after the lookup "
        "found it (SLAB_TYPESAFE_BY_RCU, 3104138517fc 'mm: make vma cache "
        "SLAB_TYPESAFE_BY_RCU', whose lock_vma_under_rcu checks vm_mm; v6.17 moved the "
        "check into vma_start_read)",
        ("vma_foreign@fault", "vma_foreign@vma_end_read"),
        "a fault read-locks another process's VMA mapped at the same address and faults "
        "in our mm under it", {"vma_lock": "refcnt"},
        window={"delay": 0.2, "delay_max_us": 2000.0,
                "delay_points": ("pervma_lookup",)}),
    Bug("mprotect_no_vma_lock", "mprotect -> vma_start_write",
        "bug class 10: a writer path that does not take the per-VMA lock "
        "(cf. fb49c455323f 'fork: lock VMAs of the parent process when forking')",
        ("vma_not_write_locked@split_vma",),
        "mprotect changes VMAs and PTEs without vma_start_write, so a per-VMA fault "
        "installs a writable PTE in a VMA just made read-only",
        {"fault_mode": "pervma"}),
    Bug("flush_range_short", "tlb_flush_mmu_tlbonly -> flush_tlb_mm_range",
        "a forced flush's range that ends before the last page zapped (git blame of "
        "mm/memory.c: Will Deacon's change of 2014-10-28 advances zap_pte_range's addr "
        "past the page that filled the batch before it breaks out to flush, since the "
        "range's end is exclusive)",
        ("frame_uaf@zap", "frame_uaf@tlb_access", "bad_value@load"),
        "the gather flushes its range without its last page: a TLB entry to that page's "
        "frame survives the flush and the frame is freed (and a load through it may read "
        "the frame's next page)", {}),
    Bug("flush_no_freed_tables", "pte_free_tlb -> tlb->freed_tables",
        "a flush that keeps the paging-structure caches over freed tables: 7a30df49f63a "
        "'mm: mmu_gather: remove __tlb_reset_range() for force flush' (freed_tables reset "
        "before munmap's flush: arm64 flushed the last level only); cf. 3ef938c35035 "
        "'x86/mm: Fix flush_tlb_range() when used for zapping normal PMDs'",
        ("pt_uaf@free_pgtables", "pt_uaf@hw_walk", "pipe_age@hw_walk"),
        "the gather frees page tables without setting freed_tables: a flush that does not "
        "interrupt (INVLPGB, arm64 TLBI) keeps another CPU's paging-structure-cache entry "
        "to the freed table", {"tlb_flush": "no-ipi"}),
]

BY_NAME = {b.name: b for b in CATALOGUE}


def _is_bugs(node):
    """``bugs`` or ``<anything>.bugs``: the receiver of a switch query."""
    return (isinstance(node, ast.Name) and node.id == "bugs") or \
        (isinstance(node, ast.Attribute) and node.attr == "bugs")


def asked_names(root=PACKAGE_DIR):
    """Every name the code under ``root`` asks ``bugs.on(NAME)`` about, read from the
    source: {name: ["file:line", ...]}.  A query whose name is not a string literal
    cannot be checked and is refused."""
    asked = {}
    for path in sorted(glob.glob(os.path.join(root, "**", "*.py"), recursive=True)):
        with open(path) as f:
            src = f.read()
        if ".on(" not in src:
            continue
        for node in ast.walk(ast.parse(src, path)):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "on" and _is_bugs(node.func.value)):
                continue
            where = "%s:%d" % (os.path.relpath(path, root), node.lineno)
            arg = node.args[0] if len(node.args) == 1 and not node.keywords else None
            if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
                raise CatalogueError("%s: bugs.on() must name its variant with a string "
                                     "literal (so it can be checked)" % where)
            asked.setdefault(arg.value, []).append(where)
    return asked


def check_catalogue(catalogue, asked):
    """Raise CatalogueError unless every asked name is an entry, every entry that is not
    a pairing is asked about, no pairing is, and every pairing has its control."""
    names = {b.name for b in catalogue}
    for name, where in sorted(asked.items()):
        if name not in names:
            close = difflib.get_close_matches(name, names, 1)
            raise CatalogueError("%s: bugs.on(%r): no such variant in the catalogue%s"
                                 % (where[0], name, " (did you mean %r?)" % close[0]
                                    if close else ""))
    for b in catalogue:
        pairing = b.step.startswith(PAIRING)
        if pairing and b.name in asked:
            raise CatalogueError("%s: %r is a pairing (configuration only) but the code "
                                 "asks about it" % (asked[b.name][0], b.name))
        if not pairing and b.name not in asked:
            raise CatalogueError("catalogue entry %r: nothing asks bugs.on(%r) and its step "
                                 "is not a %r configuration" % (b.name, b.name, PAIRING))
        bad = sorted(set(b.config) - NEEDS)
        if bad:
            raise CatalogueError("catalogue entry %r needs %r: needs name features and "
                                 "checker clocks only (%s), never where to delay"
                                 % (b.name, bad[0], ", ".join(sorted(NEEDS))))
        if pairing != bool(b.control):
            raise CatalogueError("catalogue entry %r: a pairing needs a control (the "
                                 "kernel's pairing), a code entry none" % b.name)


@functools.cache
def check_model():
    """check_catalogue against the package's source, once per process."""
    check_catalogue(CATALOGUE, asked_names())


class Bugs:
    """The set switched on for this run (read by the model at each step).  Making one
    checks the catalogue against the model first (check_model): ``on`` stays a set
    lookup."""

    __slots__ = ("names",)

    def __init__(self, names=()):
        check_model()
        unknown = [n for n in names if n not in BY_NAME]
        if unknown:
            raise ValueError("unknown bug %r (see 'spfshm bugs')" % unknown[0])
        self.names = frozenset(names)

    def on(self, name):
        return name in self.names


def with_window(cfg):
    """cfg (resolved, with busted variants) with their windows widened where they are
    known to be (``window``) and no generic perturbation besides (the first violation's
    signature then depends on the bug, not on where a random pause fell): for the
    checkers' own tests, never for a measure."""
    cfg = dataclasses.replace(cfg, perturb="off")
    for name in cfg.bugs:
        cfg = dataclasses.replace(cfg, **BY_NAME[name].window)
    cfg.validate()
    return cfg


def control(cfg):
    """The control run of a run with busted variants (a resolved Config): the same
    settings and seed with the variants off (a pairing replaced by the kernel's), which
    must be clean.  The watchdogs' timeouts go back to their generous defaults: one
    shortened to catch a hang fast must not decide a clean run on a loaded machine."""
    default = {f.name: f.default for f in dataclasses.fields(cfg)}
    c = dataclasses.replace(cfg, bugs=(), stall_timeout=default["stall_timeout"],
                            ipi_timeout=default["ipi_timeout"])
    for name in cfg.bugs:
        c = dataclasses.replace(c, **BY_NAME[name].control)
    c.validate()
    return c


def _flags(settings):
    return " ".join("--%s %s" % (k.replace("_", "-"), v) for k, v in settings.items())


def format_table():
    lines = []
    for b in CATALOGUE:
        lines.append("%s\n    breaks:  %s\n    expect:  %s\n    origin:  %s\n    what:    %s"
                     "\n    needs:   %s%s%s"
                     % (b.name, b.step, " | ".join(b.expect), b.origin, b.description,
                        _flags(b.config) or "-",
                        "\n    control: %s" % _flags(b.control) if b.control else "",
                        "\n    window:  --delay %g:%g --delay-points %s (the checkers' tests "
                        "only)" % (b.window["delay"], b.window["delay_max_us"],
                                   ",".join(b.window["delay_points"])) if b.window else ""))
    return "\n".join(lines)
