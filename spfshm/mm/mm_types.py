"""struct mm_struct and friends: the arena layout of one address space, and its binding
in a process.

Lock table (Documentation/mm/process_addrs.rst style): which lock protects what.

| object                         | written under                          | read locklessly by            |
|--------------------------------|----------------------------------------|-------------------------------|
| VMA tree (published array)     | mmap_lock write                        | lookups under RCU (SPF)       |
| VMA record fields              | mmap_lock write                        | copies checked by mmap_seq    |
| PGD/PUD entries                | page_table_lock                        | walkers (IRQs off or RCU)     |
| PMD entries                    | pmd lock (ptl of the PMD table)        | walkers                       |
| PTEs                           | ptl of the PTE table                   | walkers, the TLB fill         |
| table unlink and free          | pmd lock (+ptl), then tlb_remove_table | walkers (their protection)    |
| frame refcount/mapcount        | ptl of the PTE that maps it            | sweeps                        |
| RSS counters                   | per CPU, owner only                    | sweeps (sum)                  |
| page zap clock: zaps begun     | ptl of the cleared PTE (or pmd lock)   | loads and stores (cpu.py)     |
| page zap clock: zaps completed | nothing (atomic max after the flush)   | loads and stores (cpu.py)     |
| mm tlb_flush_pending           | atomic inc/dec (mmu_gather: tlb.py)    | tlb_finish_mmu                |
"""
import random

import numpy as np

from .. import debug, native
from ..rcu import CallRcu
from . import pipe, pool
from .perturb import Perturb, arm_generic, no_delay

PAGE_SHIFT = 12
PAGE = 1 << PAGE_SHIFT
PTRS = 512
HPAGE_NR = PTRS                      # 4 KiB pages in a 2 MiB huge page
PGD, PUD, PMD, PTE = 4, 3, 2, 1
LEVEL_SHIFT = {PGD: 39, PUD: 30, PMD: 21, PTE: 12}

# The window straddles a 512 GiB boundary, so two PGD entries, PUD and PMD tables are used
# and every level gets allocated and freed.
WINDOW_CENTRE = 0x3F8000000000

TABLE_FREE, TABLE_LIVE, TABLE_PENDING = 0, 1, 2
FRAME_FREE, FRAME_INUSE = 0, 1
VMA_FREE, VMA_LIVE, VMA_PENDING = 0, 1, 2
PROT_NONE, PROT_READ, PROT_WRITE = 0, 1, 2
PROT_NAMES = {0: "none", 1: "r", 3: "rw"}
PROT_BY_NAME = {"none": 0, "r": 1, "rw": 3}

POISON = 0x6B6B6B6B6B6B6B6B        # slab poison: freed tables, frames and VMA records
MAX_VMAS = 512

TABLE_META = np.dtype([("state", "<u4"), ("level", "<u4"), ("ptl", "<u4"), ("pad", "<u4"),
                       ("gen", "<u8"), ("pmd_huge_pte", "<u8"), ("lru", "<u8")])
# pmd_huge_pte (a PMD table's): 1 + the last PTE table deposited under its huge pmds, 0
# for none; lru (a deposited PTE table's): 1 + the one deposited before it (pagetable.py)
FRAME_META = np.dtype([("refcount", "<i8"), ("mapcount", "<i8"), ("state", "<u8"),
                       ("zap", "<u8")])       # the zap count of its page that took it
RWSEM_DTYPE = native.struct_dtype("struct spf_rwsem")
VMA_DTYPE = np.dtype([("lock", RWSEM_DTYPE), ("start", "<u8"), ("end", "<u8"),
                      ("vm_lock_seq", "<u8"), ("gen", "<u8"), ("prot", "<u4"), ("state", "<u4"),
                      ("detached", "<u2"), ("anon_vma", "<u2"), ("vseq", "<u4"),
                      ("vm_refcnt", "<u4"), ("vm_mm", "<u4")])
# lock (--vma-lock rwsem) or vm_refcnt (refcnt) is the per-VMA lock (vma_lock.py);
# vm_mm: the mm that owns the record (vma_lock.MM_SELF, or vma_cache.py's)
TREE_HDR = 4                         # [state, count, gen, -] then (start, end, id) triples

# The speculative fault's abort reasons, named after the series' SPF_ABORT_* vm events
# (Lespinasse, "mm: anon spf statistics", v5.12-spf-anon); oom and uaf are the model's
# own (out of frames; a checker saw the walk reach a freed table).
SPF_ABORTS = ["odd", "unmapped", "vma_copy", "access_error", "pud", "pmd", "anon_vma",
              "pte_map_lock_seq1", "pte_map_lock_pmd", "pte_map_lock_ptl",
              "pte_map_lock_seq2", "oom", "uaf"]
STATS = ["ops", "load", "store", "mmap", "munmap", "mprotect", "madvise",
         "segv", "oom", "fault_classic", "spf_ok", "vma_lock_success", "vma_lock_abort",
         "vma_lock_retry", "vma_lock_miss"] + \
    ["spf_abort_" + r for r in SPF_ABORTS] + [
        "tlb_miss", "tlb_fill", "tables_alloc", "tables_freed", "frames_freed", "ipi_sent",
        "mmap_err", "munmap_err", "mprotect_err", "madvise_err", "call_rcu",
        "rcu_backlog_max", "pte_alloc_race", "fault_retry", "tlb_flush", "mmap_lock_wait_ns",
        "reclaim", "pt_reclaimed", "table_free_one", "gup", "collapse", "thp_collapsed",
        "thp_collapse_fail", "thp_split", "thp_zap", "thp_oom", "fail_nth_attempts", "fail_nth_injected", "fail_nth_at",
        "other_mm_reuse"]
STAT = {s: i for i, s in enumerate(STATS)}
IPI_HIST_BUCKETS = 64
# --table-free rcu: the chance that tlb_remove_table finds no page for its batch
# (GFP_NOWAIT), seeded per CPU; rare in a kernel, common here so that the fallback runs
TABLE_BATCH_FAIL = 0.5
# khugepaged's huge page allocation (GFP_TRANSHUGE: __GFP_NORETRY, fragmentation) fails,
# seeded per CPU; the model's huge page pool is sized never to run out, so without this
# collapse_huge_page's allocation failure path would never run
THP_ALLOC_FAIL = 0.2
# A fault's allocation fails now and then (do_anonymous_page's
# vma_alloc_zeroed_movable_folio, or its mem_cgroup_charge against a memcg limit, or a
# page table's pte_alloc_one/pmd_alloc_one: all end in VM_FAULT_OOM), seeded per CPU; the
# pools are sized never to run out, so without this no fault would take its
# out-of-memory path
FAULT_ALLOC_FAIL = 0.003
# A syscall's VMA record (vm_area_alloc, vm_area_dup) or maple tree preallocation
# (vma_iter_prealloc) fails now and then, as under failslab: GFP_KERNEL slab allocations
# do not fail otherwise, and the pools are sized not to run dry
SLAB_ALLOC_FAIL = 0.005
# The model's split of a huge pmd allocates its 512 small copies (huge_memory.py; the
# kernel's maps the subpages and allocates nothing), and that allocation fails now and
# then, as under fail_page_alloc, seeded per CPU: the pools are sized never to run out,
# so without this the split's out-of-memory path (thp_oom) would never run
SPLIT_ALLOC_FAIL = 0.05
# --vma-lock refcnt: the chance that a VMA record this mm frees is allocated at once by
# another process (the VMA cache is shared and SLAB_TYPESAFE_BY_RCU: vma_cache.py),
# seeded per CPU
OTHER_MM_REUSE = 0.25
PWC_ENTRIES = 32                     # paging-structure cache: 2 MiB block -> PTE table                # bucket b holds latencies in [2^(b/4), 2^((b+1)/4)) us


class Geometry:
    """Sizes derived from the configuration (printed by the runner)."""

    def __init__(self, ncpus, window_pages, tlb_entries, window_base=None):
        self.ncpus = ncpus
        self.window_pages = window_pages
        self.window_len = window_pages * PAGE
        if window_base is None:
            window_base = WINDOW_CENTRE - (self.window_len // 2 // (2 << 20)) * (2 << 20)
        self.window_base = window_base
        self.window_end = self.window_base + self.window_len
        pte_tables = (self.window_len + (2 << 20) - 1) // (2 << 20) + 2
        # Live tables at most: PGD + 2 PUD + 2 PMD (+1) + PTE tables; the rest is room for
        # tables waiting for their grace period and per-CPU caches.
        self.ntables = 8 + 2 * pte_tables + (ncpus + 1) * (pool.PCP_HIGH + pool.BATCH)
        # Frames [0, nsmall) are 4 KiB pages; then nhuge 2 MiB pages of HPAGE_NR frames
        # each (THP: a PMD maps one, its subpages are frames head..head+511).  Room for
        # every 2 MiB block of the window, those waiting for a flush, and per-CPU caches.
        self.nsmall = window_pages + (ncpus + 1) * (pool.PCP_HIGH + pool.BATCH) + 256
        self.nhuge = window_pages // HPAGE_NR + 3 * (ncpus + 1) + 4
        self.nframes = self.nsmall + self.nhuge * HPAGE_NR
        self.nvmas = MAX_VMAS + (ncpus + 1) * (pool.PCP_HIGH + pool.BATCH) + 64
        self.ntrees = 64 + (ncpus + 1) * (pool.PCP_HIGH + pool.BATCH)
        self.tlb_entries = tlb_entries


def regions(g):
    n1 = g.ncpus + 1
    r = [("mmap_lock", RWSEM_DTYPE, 1),
         ("mmap_seq", np.uint64, 8),
         ("mm_lock_seq", np.uint64, 8),
         ("mm_words", np.uint64, 8),                    # [0] current VMA tree
         ("tlb_flush_pending", np.uint64, 8),           # [0] mmu_gathers in progress
         ("page_table_lock", np.uint32, 16),
         ("rss", np.int64, (n1, 8)),
         ("stats", np.uint64, (n1, len(STATS))),
         ("waiting", np.uint64, (n1, 8)),               # lockdep: table+1 whose ptl we spin on
         ("delay_hits", np.uint64, (n1, 32)),           # perturbation hits per point
         ("perturb_hits", np.uint64, (n1, native.PERTURB_WORDS)),  # generic pauses
         ("ipi_hist", np.uint64, (n1, IPI_HIST_BUCKETS)),
         ("pt", np.uint64, (g.ntables, PTRS)),
         ("pt_meta", TABLE_META, g.ntables),
         ("frame_gen", np.uint64, g.nframes),
         ("frame_payload", np.uint64, g.nframes),
         ("frame_meta", FRAME_META, g.nframes),
         ("zap_clock", np.uint64, g.window_pages),      # per page: frames.py ZAP_*
         ("vma", VMA_DTYPE, g.nvmas),
         ("vma_tree", np.uint64, (g.ntrees, TREE_HDR + 3 * MAX_VMAS)),
         ("tlb", np.uint64, (n1, g.tlb_entries * 4 + PWC_ENTRIES * 2))]
    r += pool.regions("tables", g.ntables, g.ncpus)
    r += pool.regions("frames", g.nsmall, g.ncpus)
    r += pool.regions("hpages", g.nhuge, g.ncpus)
    r += pool.regions("vmas", g.nvmas, g.ncpus)
    r += pool.regions("trees", g.ntrees, g.ncpus)
    r += debug.regions(g.ncpus)
    r += pipe.regions(g)
    return r


class MM:
    """One process's view of the shared mm: arrays, pointers, and its CPU's local state.

    ``cpu`` is the CPU this process runs as (the parent uses row ``ncpus``)."""

    def __init__(self, arena, geometry, cfg, bugs, cpu):
        g = self.g = geometry
        self.arena, self.cfg, self.bugs, self.cpu = arena, cfg, bugs, cpu
        self.mmap_lock = arena.ptr("mmap_lock", "struct spf_rwsem")
        self.mmap_seq = arena.ptr("mmap_seq")
        self.mm_lock_seq = arena.ptr("mm_lock_seq")
        self.vma_base = arena.ptr("vma", "char")
        self.mm_words = arena["mm_words"]
        self.tlb_flush_pending = arena.ptr("tlb_flush_pending")     # mm->tlb_flush_pending
        self.page_table_lock = arena.ptr("page_table_lock", "uint32_t")
        self.rss = arena["rss"][cpu]
        self.rss_all = arena["rss"]
        self.stats_row = arena["stats"][cpu]
        self.waiting = arena["waiting"][cpu]
        self.waiting_all = arena["waiting"]
        self.walk_rcu = cfg.walk_mode() == "rcu"
        self.vma_refcnt = cfg.vma_lock == "refcnt"
        self.refcnt_old = native.ffi.new("uint32_t *")      # spf_vmref_get's old count
        reuse = random.Random("spfshm-other-mm:%d:%d" % (cfg.seed, cpu))
        self.other_mm_reuses = lambda: cpu < g.ncpus and reuse.random() < OTHER_MM_REUSE
        self.lent = []                  # records the other mm holds (vma_cache.py)
        leak = random.Random("spfshm-leak:%d:%d" % (cfg.seed, cpu))
        self.rng_leak = lambda: cpu < g.ncpus and leak.random() < 0.01
        batch = random.Random("spfshm-table-batch:%d:%d" % (cfg.seed, cpu))
        self.table_batch_alloc_fails = lambda: batch.random() < TABLE_BATCH_FAIL
        thp = random.Random("spfshm-thp-alloc:%d:%d" % (cfg.seed, cpu))
        self.thp_alloc_fails = lambda: thp.random() < THP_ALLOC_FAIL
        # the workers' faults only: the parent's (a scenario's populate) build a layout
        page = random.Random("spfshm-fault-alloc:%d:%d" % (cfg.seed, cpu))
        self.fault_alloc_fails = lambda: cpu < g.ncpus and page.random() < FAULT_ALLOC_FAIL
        split = random.Random("spfshm-split-alloc:%d:%d" % (cfg.seed, cpu))
        self.split_alloc_fails = lambda: cpu < g.ncpus and split.random() < SPLIT_ALLOC_FAIL
        slab = random.Random("spfshm-slab-alloc:%d:%d" % (cfg.seed, cpu))
        self.slab_alloc_fails = lambda: cpu < g.ncpus and slab.random() < SLAB_ALLOC_FAIL
        if cfg.fail_nth:        # instead: this CPU's N-th allocation that may fail fails
            nth = self._fail_nth(cfg.fail_nth) if cpu < g.ncpus else lambda: False
            self.thp_alloc_fails = self.fault_alloc_fails = nth
            self.split_alloc_fails = self.slab_alloc_fails = nth
        self.delay = Perturb(cfg, cpu, arena["delay_hits"][cpu]).delay if cfg.delay > 0 \
            else no_delay
        self.walk_point = arm_generic(cfg, cpu, g.ncpus, arena.ptr(
            "perturb_hits", index=cpu * native.PERTURB_WORDS))
        if cfg.sched:          # the controlled scheduler: each of them is a point
            self.delay, self.walk_point = native.sched_named_point, native.perturb_walk
        self.ipi_hist = arena["ipi_hist"][cpu]
        self.pt = arena["pt"]
        self.pt_ptr = arena.ptr("pt")
        self.pt_meta = arena["pt_meta"]
        self.pt_state = self.pt_meta["state"]
        self.pt_level = self.pt_meta["level"]
        self.pt_gen = self.pt_meta["gen"]
        self.ptl_base = arena.ptr("pt_meta", "uint32_t") + TABLE_META.fields["ptl"][1] // 4
        self.ptl_stride = TABLE_META.itemsize // 4
        self.pt_gen_base = arena.ptr("pt_meta") + TABLE_META.fields["gen"][1] // 8
        self.frame_gen = arena["frame_gen"]
        self.frame_payload = arena["frame_payload"]
        self.frame_gen_ptr = arena.ptr("frame_gen")
        self.frame_payload_ptr = arena.ptr("frame_payload")
        self.frame_meta = arena["frame_meta"]
        self.frame_ref_ptr = arena.ptr("frame_meta", "uint64_t")
        self.frame_stride = FRAME_META.itemsize // 8
        self.frame_zap = self.frame_meta["zap"]
        self.zap_clock = arena["zap_clock"]
        self.zap_clock_ptr = arena.ptr("zap_clock")
        self.vma = arena["vma"]
        self.vma_tree = arena["vma_tree"]
        tlb_all = arena["tlb"]
        self.tlb_rows = tlb_all[:g.ncpus]
        self.tlb_words = tlb_all.shape[1]
        self.tlb_base = arena.ptr("tlb")            # every CPU's row (remote flushes)
        self.tlb_ptr = native.ffi.cast("struct spf_tlb_entry *",
                                       self.tlb_base + cpu * self.tlb_words)
        # every CPU's TLB entries (tag, data, gen, va) and PWC entries (key, table|tag<<32)
        self.tlbs = tlb_all[:g.ncpus, :g.tlb_entries * 4].reshape(g.ncpus, g.tlb_entries, 4)
        self.pwcs = tlb_all[:g.ncpus, g.tlb_entries * 4:].reshape(g.ncpus, PWC_ENTRIES, 2)
        self.pwc = tlb_all[cpu, g.tlb_entries * 4:].reshape(PWC_ENTRIES, 2)
        pcp_batch = pool.BATCH if cfg.pcp == "on" else 0     # off: no per-CPU caches at all
        self.tables = pool.Pool(arena, "tables", g.ntables, pcp_batch)
        self.frames = pool.Pool(arena, "frames", g.nsmall, pcp_batch)
        self.hpages = pool.Pool(arena, "hpages", g.nhuge, min(1, pcp_batch))
        self.vmas = pool.Pool(arena, "vmas", g.nvmas, pcp_batch)
        self.trees = pool.Pool(arena, "trees", g.ntrees, pcp_batch)
        self.reporter = debug.Reporter(arena, cpu, cpu)
        self.report = self.reporter.report
        self.pipe = pipe.Pipe(arena, cpu, self.report)
        self.rcu = CallRcu(limit=max(8, g.ntables // (4 * (g.ncpus + 1))),
                           stall_timeout_s=cfg.ipi_timeout, on_elapsed=self.pipe.gp_done)
        self.all_cpus = native.CpuMask(g.ncpus, range(g.ncpus))
        self.local = [0] * len(STATS)          # per-CPU stats, flushed to the arena
        self.tree_cache = (None, None)

    def ptl(self, table):
        """The split page table lock of a table (PTE tables: ptl; PMD tables: pmd lock)."""
        return self.ptl_base + table * self.ptl_stride

    def online(self):
        """Which CPUs are online (a dead or offline CPU holds no translations)."""
        return self.arena["percpu"]["alive"][:self.g.ncpus] == native.lib.SPF_CPU_ONLINE

    def vma_lock(self, vid):
        return native.ffi.cast("struct spf_rwsem *", self.vma_base + vid * VMA_DTYPE.itemsize)

    def vm_refcnt_ptr(self, vid):
        return native.ffi.cast("uint32_t *", self.vma_base + vid * VMA_DTYPE.itemsize
                               + VMA_DTYPE.fields["vm_refcnt"][1])

    def vm_lock_seq_ptr(self, vid):
        return native.ffi.cast("uint64_t *", self.vma_base + vid * VMA_DTYPE.itemsize
                               + VMA_DTYPE.fields["vm_lock_seq"][1])

    def pt_gen_ptr(self, table):
        return self.pt_gen_base + table * (TABLE_META.itemsize // 8)

    def entry_ptr(self, table, index):
        return self.pt_ptr + (table * PTRS + index)

    def _fail_nth(self, n):
        """Systematic fault injection (syzkaller's fail-nth: /proc/thread-self/fail-nth):
        of the allocations that may fail (a fault's page or table, a split's copies, a
        VMA record or tree, a huge page), whatever their kind, the n-th this CPU attempts
        fails, and no other (no random failure either): a sweep over n reaches every
        out-of-memory exit of a scenario one at a time (run/inject.py, which checks from
        the counts that the n-th attempt failed and no other)."""
        attempts, at = STAT["fail_nth_attempts"], STAT["fail_nth_at"]

        def fails():
            self.count("fail_nth_attempts")
            if self.local[attempts] != n:
                return False
            self.count("fail_nth_injected")
            self.local[at] = self.local[attempts]       # which attempt it failed
            return True
        return fails

    def count(self, stat, n=1):
        self.local[STAT[stat]] += n

    def flush_stats(self):
        self.stats_row[:] = self.local


def mm_init(mm):
    """A new empty mm (the creating process, before any CPU runs): pools, the PGD, the
    empty VMA tree, mmap_lock."""
    from . import vma
    native.lib.spf_rwsem_init(mm.mmap_lock)
    mm.tables.init(reserved={0})
    mm.frames.init()
    mm.hpages.init()
    mm.frame_payload[:] = POISON          # every frame free, as free_frame leaves one
    mm.vmas.init()
    mm.trees.init()
    mm.pt[1:, :] = POISON                 # every other table free, as free_table_now
    mm.pt[0, :] = 0                       # leaves one
    mm.pt_level[0] = PGD
    mm.pt_state[0] = TABLE_LIVE
    vma.init_tree(mm)
