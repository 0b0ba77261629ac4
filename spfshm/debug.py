"""The model's self-checks report here (the kernel's VM_BUG_ON / KASAN analogue).

A violation is a fixed-size record in the arena, written by the CPU that saw it (or by
the sweeper, row ``ncpus``), so it survives the death of its writer and costs no shared
counter.  Each record: kind, site, cpu, va and three operands; ``describe`` turns it
into a sentence that prints the operands (ck's validators, rcutorture's first failing
reader).  The signature (kind@site) deduplicates failures across runs.
"""
import numpy as np

from . import native

VIOL_DTYPE = np.dtype([("stamp", "<u8"), ("kind", "<u4"), ("site", "<u4"), ("cpu", "<i8"),
                       ("va", "<u8"), ("a0", "<u8"), ("a1", "<u8"), ("a2", "<u8")])
VIOL_PER_CPU = 32

# kind -> sentence; {va}, {a0}, {a1}, {a2} are the record's operands.
KINDS = {
    "pt_uaf": "page table #{a0} (level {a1}) used after it was freed or reused "
              "(walker's tag, or the CPU still caching it or walking in it: {a2})",
    "frame_uaf": "frame #{a2} (now generation {a1}) was freed or reused while a "
                 "translation made at generation {a0} still reached it",
    "stale_pte": "present PTE to frame #{a0} ({a1:#x}) where no VMA allows it",
    "pte_prot": "PTE {a0:#x} grants more than its VMA (prot {a1}: 0 none, 1 r, 3 rw), "
                "or is PROT_NONE in an accessible VMA",
    "stale_tlb": "CPU {a2} still holds a TLB entry for frame #{a0} (writable={a1}) that "
                 "the page tables no longer allow",
    "rss": "RSS counter says {a0} pages, page tables map {a1}",
    "frame_leak": "frame #{a0} is in use (refcount {a1}, mapcount {a2}) but mapped by no PTE",
    "mapcount": "frame #{a0} has mapcount {a1} but {a2} PTEs map it",
    "frame_free_mapped": "PTE maps frame #{a0}, which is free (state {a1})",
    "pt_leak": "page table #{a0} (level {a1}) is live but reachable {a2} times",
    "pt_free_reachable": "page table #{a0} is free/pending (state {a1}) but still linked "
                         "from table #{a2}",
    "pt_lost_ptes": "page table #{a0} freed with {a1} present PTEs",
    "double_free": {"free_frame": "frame #{a0} freed while already free (generation {a1})",
                    "put_page": "frame #{a0} put with no reference left (generation {a1})",
                    "free_pgtables": "page table #{a0} (level {a1}) unlinked or freed while "
                                     "already pending or free (state {a2})",
                    "vm_area_free": "VMA record #{a0} freed while already pending or free "
                                    "(state {a1})",
                    "sweep": "object #{a1} of pool {a0} (0 tables, 1 frames, 2 huge pages, "
                             "3 VMA records, 4 VMA trees) is on the free lists {a2} times"},
    "free_unlisted": "object #{a1} of pool {a0} (0 tables, 1 frames, 2 huge pages, 3 VMA "
                     "records, 4 VMA trees) is free (state {a2}) but on no free list",
    "listed_inuse": "object #{a1} of pool {a0} (0 tables, 1 frames, 2 huge pages, 3 VMA "
                    "records, 4 VMA trees) is on a free list but in use (state {a2})",
    "obj_leak": "object #{a1} of pool {a0} (3 VMA records, 4 VMA trees) is live (state "
                "{a2}) but in no published VMA tree",
    "never_freed": "object #{a1} of pool {a0} (0 tables, 3 VMA records, 4 VMA trees) was "
                   "unlinked (state {a2}) but never freed, after every CPU's rcu_barrier",
    "vma_overlap": "VMA [{a0:#x}, {a1:#x}) overlaps the previous one ending at {a2:#x}",
    "vma_outside": "VMA [{a0:#x}, {a1:#x}) is not inside the address window (its end "
                   "{a2:#x}: the model's TASK_SIZE)",
    "map_count": "the VMA tree holds {a0} VMAs, more than vm.max_map_count ({a1}): an mmap "
                 "or a split did not check it",
    "unmapped_area_missed": "mmap found no room for {a0:#x} bytes, but the window has a gap "
                            "of {a1:#x} at {a2:#x}: get_unmapped_area missed it",
    "vma_uaf": "VMA record #{a0} read after it was freed (state {a1}, gen {a2})",
    "torn_vma": "a speculative fault went on with a VMA copy torn by a concurrent "
                "writer, which its mmap_seq check let pass (VMA #{a0} read as "
                "[{a1:#x}, {a2:#x}))",
    "vma_not_write_locked": "VMA #{a0} changed without its write lock (vm_lock_seq {a1}, "
                            "mm_lock_seq {a2})",
    "vma_unlocked_change": "VMA #{a0} is not what the fault holding it locked copied "
                           "(prot {a1} in the copy, {a2} now)",
    "vma_read_held": "VMA #{a0} is being changed while CPU {a1} holds it read-locked",
    "vma_read_while_written": "VMA #{a0} was write-locked (vm_lock_seq {a1} = mm_lock_seq) "
                              "while this CPU held it read-locked: vma_start_read let it in "
                              "past a writer",
    "fault_outside_vma": "a fault runs in VMA #{a0} [{a1:#x}, {a2:#x}), which does not "
                         "contain its address",
    "vma_detached": "a fault runs in VMA #{a0} [{a1:#x}, {a2:#x}) after it was detached "
                    "(unmapped): its lock did not keep it in the mm",
    "ptl_not_held": "page table #{a0}'s lock must be held here by this CPU (its owner "
                    "+ 1: {a1}; 0: free)",
    "mmap_not_locked": "mmap_lock must be held here (need {a0}: 1 read or write, 2 write) "
                       "but this CPU holds it for read: {a1}, for write: {a2}",
    "pipe_age": "retired object #{a1} (0 table, 1 VMA, 2 frame, 3 VMA tree: {a0}) read "
                "by a lockless walker {a2} completed syncs after it was retired (legal: 0)",
    "gup_unmapped": "gup_fast kept a pin on frame #{a0} (generation {a1}) that a zap had "
                    "already unmapped (the PTE re-check would have dropped it)",
    "pmd_changed": "the pmd at {va:#x} is {a0:#x}, no longer the link to table #{a1} "
                   "that this CPU validated and holds off every changer of since "
                   "(PT_RECLAIM: the ptl; collapse: mmap_lock write and the VMA lock)",
    "hang": "CPU {a0} made no progress for {a1} ms (see the dump)",
    "lost_update": {"load": "read {a0:#x}, but this CPU last stored or read {a1:#x} here, "
                            "and no zap since could have taken it away (page zap clock "
                            "{a2:#x}: completed << 32 | begun)",
                    "zap": "frame #{a1}, taken away by zap {a2} of the page, holds store "
                           "{a0:#x}, which began after that zap was complete or promised "
                           "complete (a DONTNEED of the page returned): it went through a "
                           "stale TLB entry and is lost"},
    "bad_value": "read {a0:#x}: no CPU could have stored it here (not a stored value, no "
                 "such CPU, another page, or stored before a zap that has completed; page "
                 "zap clock {a1:#x}: completed << 32 | begun)",
    "fault_loop": "fault at {va:#x} did not make progress after {a0} tries",
    "deadlock": {"ipi": "waited {a0} ms for CPU {a1} to ack a TLB-flush IPI; it spins with "
                        "IRQs off on the ptl of table #{a2}, which this CPU holds",
                 "ptl": "spun {a0} ms with IRQs off on the ptl of table #{a1}, held by CPU {a2}",
                 "ipi_timeout": "CPU {a1} did not ack a TLB-flush IPI for {a0} ms"},
    "early_free": "VMA record #{a0} freed when {a1} grace periods had ended since it was "
                  "detached (at least 1: a lockless reader that found it may still be in it)",
    "bad_page": "frame #{a0} freed with mapcount {a1} (free_pages_prepare: bad page state)",
    "spurious_segv": "SIGSEGV decided at {va:#x} under mmap_lock, yet VMA #{a0} maps it "
                     "with that access (write {a1})",
    "walk_unprotected": "a lockless reader relied on what it read with neither RCU nor IRQs "
                        "off (PROVE_RCU: suspicious rcu_dereference_check() usage)",
    "spin_bug": "{a0} spin_unlock(s) of a lock that was not held (already unlocked)",
    "poison_overwritten": {
        "alloc": "frame #{a0} allocated holding {a1:#x}, not the poison its free left: "
                 "written while free (check_poison_mem: pagealloc: memory corruption)",
        "alloc_table": "page table #{a0} allocated with entry {a1} holding {a2:#x}, not "
                       "the poison its free left: written while free (check_poison_mem)"},
    "anon_vma_missing": "an anonymous page mapped in VMA #{a0} (table #{a1}, entry {a2}), "
                        "which has no anon_vma (__folio_set_anon: BUG_ON(!anon_vma))",
    "expect_failed": "the scenario's 'expect' at line {a0} does not hold at the end: the "
                     "statistic is {a1}, the bound {a2}",
    "vma_refcnt": "VMA #{a0}'s vm_refcnt is {a1} where it must not be ({a2}: 1 a put or "
                  "decrement of 0, refcount_t's underflow warning; 2 references left where "
                  "the VMA must be detached, vma_assert_detached)",
    "vma_foreign": "VMA record #{a0} belongs to another mm ({a1}) but a fault of this mm "
                   "holds it: vma_start_read did not revalidate vm_mm",
}
KIND_NAMES = list(KINDS)
KIND_ID = {k: i for i, k in enumerate(KIND_NAMES)}

SITES = ["hw_walk", "tlb_access", "tlb_fill", "fault", "zap", "free_pgtables", "sweep",
         "load", "mprotect", "munmap", "find_vma", "ipi", "spf", "spf_walk",
         "pervma", "ptl", "ipi_timeout", "split_vma", "watchdog", "gup",
         "pte_offset_map_lock", "vma_start_write", "vma_end_write_all", "publish_tree",
         "free_frame", "put_page", "vm_area_free", "vmas_snapshot", "reclaim_pt",
         "collapse_huge_page", "madvise", "spin_unlock", "anon_vma_prepare", "mmap",
         "pgtable_trans_huge_deposit", "pgtable_trans_huge_withdraw", "alloc", "alloc_table",
         "scenario", "vma_end_read", "vma_refcount_put", "vma_mark_attached",
         "vma_mark_detached"]
SITE_ID = {s: i for i, s in enumerate(SITES)}


def regions(ncpus):
    return [("viol", VIOL_DTYPE, (ncpus + 1, VIOL_PER_CPU)),
            ("viol_count", np.uint64, (ncpus + 1, 8))]


class Reporter:
    """Bound to one writer row (a CPU, or the sweeper)."""

    __slots__ = ("recs", "count", "row", "cpu")

    def __init__(self, arena, row, cpu):
        self.recs = arena["viol"][row]
        self.count = arena["viol_count"][row]
        self.row, self.cpu = row, cpu

    def report(self, kind, site, va=0, a0=0, a1=0, a2=0):
        n = int(self.count[0])
        if n < VIOL_PER_CPU:
            self.recs[n] = (native.now_ns(), KIND_ID[kind], SITE_ID[site], self.cpu,
                            va, int(a0) & (2**64 - 1), int(a1) & (2**64 - 1),
                            int(a2) & (2**64 - 1))
        self.count[0] = n + 1
        native.trace(EV_VIOLATION, KIND_ID[kind], va, a0)
        native.lib.spf_sched_halt_after(SCHED_HALT_STEPS)    # under --sched only


# Under --sched, the steps the CPUs may still take after the first violation (they stop
# at their next operation; this bounds one that never gets there).
SCHED_HALT_STEPS = 200_000


EV_VIOLATION = 99


def collect(arena):
    """Every recorded violation as dicts, oldest first, with text and signature."""
    out = []
    recs, counts = arena["viol"], arena["viol_count"]
    for row in range(recs.shape[0]):
        for r in recs[row][:min(int(counts[row, 0]), VIOL_PER_CPU)]:
            out.append(describe(r))
    out.sort(key=lambda v: v["stamp"])
    return out


def total(arena):
    return int(arena["viol_count"][:, 0].sum())


def describe(r):
    kind, site = KIND_NAMES[int(r["kind"])], SITES[int(r["site"])]
    ops = {k: int(r[k]) for k in ("va", "a0", "a1", "a2")}
    text = KINDS[kind]
    if isinstance(text, dict):
        text = text[site]
    return {"kind": kind, "site": site, "cpu": int(r["cpu"]), "va": ops["va"],
            "detail": text.format(**ops), "signature": "%s@%s" % (kind, site),
            "stamp": int(r["stamp"])}
