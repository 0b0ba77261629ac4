"""The single import point for the native primitives (floor 2).

Everything that touches an atomic, a futex, a signal mask or a lock word goes through
here; the model never calls ``spfshm._native`` directly.  Hot verbs are re-exported as the
cffi functions themselves (no wrapper cost); verbs with a failure mode get a checked
wrapper that turns the C result into an exception naming the CPU at fault.

Each primitive has a correct and a "busted" flavour (rcutorture's rcu_busted_ops): the
busted one exists only to prove that the tests and checkers catch it.
"""
from ._native import ffi, lib

# -- atomics (spf_atomic.h) --------------------------------------------------------------
load_relaxed = lib.spf_load_relaxed
load_acquire = lib.spf_load_acquire
store_relaxed = lib.spf_store_relaxed
store_release = lib.spf_store_release
cmpxchg = lib.spf_cmpxchg
xchg = lib.spf_xchg
fetch_add = lib.spf_fetch_add
fetch_or = lib.spf_fetch_or
fetch_and = lib.spf_fetch_and
load32_acquire = lib.spf_load32_acquire
store32_release = lib.spf_store32_release
cmpxchg32 = lib.spf_cmpxchg32
fetch_add32 = lib.spf_fetch_add32


def fetch_add_range(p, old, v):
    """old[i] = fetch_add(p + i, v) for every i of the uint64 array old: one call."""
    lib.spf_fetch_add_range(p, len(old), v, ffi.from_buffer("uint64_t[]", old))


def max_field_each(p, idx, val, shift):
    """Raise the bits from ``shift`` up of word p[idx[i]] to val[i] where below it, for
    every i (uint64 arrays): one call."""
    lib.spf_max_field_each(p, ffi.from_buffer("uint64_t[]", idx),
                           ffi.from_buffer("uint64_t[]", val), len(idx), shift)


smp_mb = lib.spf_fence_full
smp_rmb = lib.spf_fence_acquire
smp_wmb = lib.spf_fence_release

# -- futex and clock (spf_futex.h) --------------------------------------------------------
futex_wait = lib.spf_futex_wait
futex_wake = lib.spf_futex_wake
now_ns = lib.spf_now_ns
sleep_ns = lib.spf_sleep_ns
work_ns = lib.spf_work_ns

# -- IRQs, RCU readers, tracing (spf_cpu.h, spf_rcu.h, spf_ring.h) --------------------------
local_irq_disable = lib.spf_irq_disable
local_irq_enable = lib.spf_irq_enable
irqs_disabled = lib.spf_irqs_disabled
rcu_read_lock = lib.spf_rcu_read_lock
rcu_read_unlock = lib.spf_rcu_read_unlock
rcu_read_depth = lib.spf_rcu_read_depth
walk_ref = lib.spf_walk_ref
rcu_start_gp = lib.spf_rcu_start_gp
rcu_gp_blocker = lib.spf_rcu_gp_blocker
trace = lib.spf_trace
cpu_mark_dead = lib.spf_cpu_mark_dead


def sched_named_point(point=None):
    """A named delay point as a scheduling point (spf_sched.h); nothing outside --sched."""
    lib.spf_sched_yield(lib.SPF_PC_NAMED)

IPI_FLUSH_TLB = lib.SPF_IPI_FLUSH_TLB
IPI_SYNC = lib.SPF_IPI_SYNC
MAX_CPUS = lib.SPF_MAX_CPUS
EV_IPI_HANDLE = lib.SPF_EV_IPI_HANDLE
EV_IPI_SEND = lib.SPF_EV_IPI_SEND
EV_IPI_DONE = lib.SPF_EV_IPI_DONE

IPI_ERRORS = {
    lib.SPF_IPI_ERR_TIMEOUT: "never acked (IRQs off or stuck)",
    lib.SPF_IPI_ERR_DEAD: "is dead",
    lib.SPF_IPI_ERR_IRQS_OFF: "sender has IRQs disabled (would deadlock)",
}


class IPIError(RuntimeError):
    """ipi_sync did not complete: ``cpu`` is the target (or the sender) at fault."""

    def __init__(self, cpu, code):
        self.cpu, self.code = cpu, code
        super().__init__("IPI to CPU %d failed: CPU %d %s"
                         % (cpu, cpu, IPI_ERRORS.get(code, "error %d" % code)))


class RCUStallError(RuntimeError):
    """A grace period did not end in time: ``cpu`` stayed in a read-side section."""

    def __init__(self, cpu, timeout_s):
        self.cpu = cpu
        super().__init__("RCU grace period stalled for %.3fs by CPU %d" % (timeout_s, cpu))


def cpu_setup(slots_ptr, ncpus, gp_seq_ptr):
    """Per process: attach the per-CPU slots and RCU state, install the IPI handler."""
    if lib.spf_cpu_setup(slots_ptr, ncpus, gp_seq_ptr) != 0:
        raise ValueError("cpu_setup: ncpus must be 1..%d, got %d" % (MAX_CPUS, ncpus))


def cpu_register(cpu, ring_ptr=None):
    """This process's main thread becomes CPU ``cpu`` (and traces into ``ring_ptr``)."""
    if lib.spf_cpu_register(cpu) != 0:
        raise ValueError("cpu_register: no CPU %d (call cpu_setup first)" % cpu)
    if ring_ptr is not None:
        lib.spf_ring_attach(ring_ptr)


cpu_unregister = lib.spf_cpu_unregister
TLB_FLUSH_ALL = (1 << 64) - 1       # a flush's end: everything (the kernel's TLB_FLUSH_ALL)


def set_flush_region(p, nbytes, tlb_entries=0):
    """What an IPI flush clears on this CPU: ``tlb_entries`` TLB entries at ``p``, then
    paging-structure-cache entries up to ``nbytes`` (0 entries: every flush is whole)."""
    lib.spf_ipi_set_flush_region(p, nbytes, tlb_entries)


class CpuMask:
    """A cpumask in a C buffer, reused across calls (no allocation per IPI)."""

    __slots__ = ("nbits", "words")

    def __init__(self, nbits, cpus=()):
        self.nbits = nbits
        self.words = ffi.new("uint64_t[]", (nbits + 63) // 64)
        for c in cpus:
            self.set(c)

    def set(self, cpu):
        self.words[cpu // 64] |= 1 << (cpu % 64)

    def clear(self, cpu):
        self.words[cpu // 64] &= ~(1 << (cpu % 64))


_IPI_SYNC = {False: lib.spf_ipi_sync, True: lib.spf_ipi_sync_busted}
_SYNC_RCU = {False: lib.spf_synchronize_rcu, True: lib.spf_synchronize_rcu_busted}


def ipi_sync(mask, work=IPI_SYNC, timeout_s=5.0, busted=False):
    """Run ``work`` on every CPU in ``mask`` and return once all acked.

    Raises IPIError naming the CPU that never acked, is dead, or (the caller) has IRQs
    off.  ``busted`` sends without waiting for acks."""
    bad = _IPI_SYNC[busted](mask.words, mask.nbits, work, int(timeout_s * 1e9))
    if bad != -1:
        raise IPIError(bad if bad >= 0 else lib.spf_cpu_id(), lib.spf_ipi_last_error())


def ipi_flush_tlb_range(mask, start, end, timeout_s=5.0):
    """flush_tlb_mm_range by IPI: every CPU in ``mask`` invalidates [start, end) (``end``
    TLB_FLUSH_ALL: everything); returns once all acked, else raises as ipi_sync."""
    bad = lib.spf_ipi_flush_range(mask.words, mask.nbits, start, end, int(timeout_s * 1e9))
    if bad != -1:
        raise IPIError(bad if bad >= 0 else lib.spf_cpu_id(), lib.spf_ipi_last_error())


def synchronize_rcu(timeout_s=5.0, busted=False):
    """Wait for a full grace period; RCUStallError names a CPU that held it up."""
    bad = _SYNC_RCU[busted](int(timeout_s * 1e9))
    if bad >= 0:
        raise RCUStallError(bad, timeout_s)


# -- locks --------------------------------------------------------------------------------
class SpinLock:
    """spinlock_t on a 32-bit arena word (ptl, pmd lock, page_table_lock)."""

    __slots__ = ("p", "lock_fn")

    def __init__(self, ptr, busted=False):
        self.p = ptr
        self.lock_fn = lib.spf_spin_lock_busted if busted else lib.spf_spin_lock

    def lock(self, cpu):
        self.lock_fn(self.p, cpu)

    def trylock(self, cpu):
        return bool(lib.spf_spin_trylock(self.p, cpu))

    def unlock(self):
        lib.spf_spin_unlock(self.p)

    def lock_timeout(self, cpu, timeout_s):
        """1 if taken; 0 if still held by someone else after timeout_s."""
        return lib.spf_spin_lock_timeout(self.p, cpu, int(timeout_s * 1e9)) == 0

    def owner(self):
        return lib.spf_spin_owner(self.p)

    def is_locked(self):
        return bool(lib.spf_spin_is_locked(self.p))


spin_lock = lib.spf_spin_lock
spin_lock_timeout = lib.spf_spin_lock_timeout
spin_trylock = lib.spf_spin_trylock
spin_unlock = lib.spf_spin_unlock
spin_owner = lib.spf_spin_owner
spin_bugs_take = lib.spf_spin_bugs_take


class RWSem:
    """rw_semaphore on an arena ``struct spf_rwsem`` (mmap_lock, per-VMA lock)."""

    __slots__ = ("p", "down_write_fn")

    def __init__(self, ptr, busted=False):
        self.p = ptr
        self.down_write_fn = lib.spf_down_write_busted if busted else lib.spf_down_write

    def init(self):
        lib.spf_rwsem_init(self.p)

    def down_read(self):
        return lib.spf_down_read(self.p)

    def down_read_trylock(self):
        return bool(lib.spf_down_read_trylock(self.p))

    def up_read(self):
        lib.spf_up_read(self.p)

    def down_write(self, cpu):
        return self.down_write_fn(self.p, cpu)

    def down_write_trylock(self, cpu):
        return bool(lib.spf_down_write_trylock(self.p, cpu))

    def up_write(self):
        lib.spf_up_write(self.p)

    def downgrade_write(self):
        lib.spf_downgrade_write(self.p)

    def is_locked(self):
        return bool(lib.spf_rwsem_is_locked(self.p))

    def is_write_locked(self):
        return bool(lib.spf_rwsem_is_write_locked(self.p))

    def readers(self):
        return lib.spf_rwsem_readers(self.p)

    def owner(self):
        return self.p.owner

    def assert_write_locked(self):
        if not lib.spf_rwsem_is_write_locked(self.p):
            raise AssertionError("rwsem not write-locked")

    def assert_locked(self):
        if not lib.spf_rwsem_is_locked(self.p):
            raise AssertionError("rwsem not locked")


class SeqCount:
    """seqcount_t on a 64-bit arena word (mmap_seq, mm_lock_seq)."""

    __slots__ = ("p", "begin_fn", "end_fn")

    def __init__(self, ptr, busted=False):
        self.p = ptr
        self.begin_fn = lib.spf_seq_write_begin_busted if busted else lib.spf_seq_write_begin
        self.end_fn = lib.spf_seq_write_end_busted if busted else lib.spf_seq_write_end

    def write_begin(self):
        self.begin_fn(self.p)

    def write_end(self):
        self.end_fn(self.p)

    def read_begin(self):
        return lib.spf_seq_read_begin(self.p)

    def try_begin(self):
        """The current count, or None when odd (a writer is active: give up, never spin)."""
        s = lib.spf_seq_try_begin(self.p)
        return None if s & 1 else s

    def read_retry(self, start):
        return bool(lib.spf_seq_read_retry(self.p, start))


seq_try_begin = lib.spf_seq_try_begin
seq_read_retry = lib.spf_seq_read_retry
seq_write_begin = lib.spf_seq_write_begin
seq_write_end = lib.spf_seq_write_end

# -- generic perturbation (spf_perturb.h) ------------------------------------------------
_PC = {"lock": lib.SPF_PC_LOCK, "atomic": lib.SPF_PC_ATOMIC, "seq": lib.SPF_PC_SEQ,
       "rcu": lib.SPF_PC_RCU, "irq": lib.SPF_PC_IRQ, "ipi": lib.SPF_PC_IPI,
       "tlb": lib.SPF_PC_TLB, "walk": lib.SPF_PC_WALK}
PERTURB_CLASSES = tuple(sorted(_PC, key=_PC.get))        # index = the class's hits word
_PK = {"spin": lib.SPF_PK_SPIN, "yield": lib.SPF_PK_YIELD, "sleep": lib.SPF_PK_SLEEP}
PERTURB_KINDS = tuple(sorted(_PK, key=_PK.get))          # hits word SPF_PH_KIND + index
PERTURB_WORDS = lib.SPF_PH_WORDS
PH_KIND, PH_SLOW, PH_HANDLER = lib.SPF_PH_KIND, lib.SPF_PH_SLOW, lib.SPF_PH_HANDLER
perturb_disarm = lib.spf_perturb_disarm
perturb_draw = lib.spf_perturb_draw
perturb_walk = lib.spf_perturb_walk


def perturb_arm(profile, seed, cpu, hits_ptr):
    """Arm this process as CPU ``cpu`` with ``profile`` (the fields of struct
    spf_perturb_profile), streams seeded from (seed, cpu); pauses are counted in the
    SPF_PH_WORDS words at ``hits_ptr``, which must stay mapped until disarmed."""
    p = ffi.new("struct spf_perturb_profile *", profile)
    if lib.spf_perturb_arm(p, seed & (2**64 - 1), cpu, hits_ptr) != 0:
        raise ValueError("perturb_arm: inconsistent profile %r" % (profile,))


def perturb_decision(d):
    """A decision of spf_perturb_draw as (kind, amount, slow): kind None (no pause),
    "spin" (amount: spins), "yield" or "sleep" (amount: ns); slow: drawn in a slow
    window."""
    if not d:
        return None, 0, False
    return (PERTURB_KINDS[(d & 3) - 1], d >> lib.SPF_PD_SHIFT, bool(d & lib.SPF_PD_SLOW))


# -- process plumbing -----------------------------------------------------------------
def die_with_parent():
    """SIGKILL this process when its parent dies (PR_SET_PDEATHSIG; 0 = ok): a worker
    CPU, or each link of spfshm mutate's chain (mutate, pytest, an xdist worker, a
    mutant's child), as a Popen preexec_fn or at the start, leaves no orphan even after
    kill -9 of the process above it."""
    return lib.spf_set_pdeathsig(9)


def kernel_fault_rate(nprocs=1, seconds=1.0, region_mib=128, pin=True):
    """The real kernel's page-fault rate (spf_kfault.h, will-it-scale page_fault1 style):
    ``nprocs`` processes each map ``region_mib`` MiB, touch every 4 KiB page, unmap, for
    ``seconds``.  Returns {"procs", "faults", "per_proc_per_s", "faults_per_s"}."""
    if not 1 <= nprocs <= lib.SPF_KFAULT_MAX_PROCS:
        raise ValueError("nprocs must be 1..%d, got %d" % (lib.SPF_KFAULT_MAX_PROCS, nprocs))
    faults = ffi.new("uint64_t[]", nprocs)
    elapsed = ffi.new("uint64_t[]", nprocs)
    err = lib.spf_kfault_run(nprocs, region_mib << 20, int(seconds * 1e9), 1 if pin else 0,
                             faults, elapsed)
    if err:
        import os
        raise OSError(-err, "kernel fault helper: %s" % os.strerror(-err))
    per = [faults[i] * 1e9 / elapsed[i] if elapsed[i] else 0.0 for i in range(nprocs)]
    return {"procs": nprocs, "faults": sum(faults[i] for i in range(nprocs)),
            "per_proc_per_s": per, "faults_per_s": sum(per)}


def struct_dtype(ctype):
    """A numpy dtype laid out exactly as the C struct (offsets taken from the compiler)."""
    import numpy as np
    t = ffi.typeof(ctype)
    names, formats, offsets = [], [], []
    for name, field in t.fields:
        names.append(name)
        ft = field.type
        if ft.kind == "array":
            formats.append((_np_scalar(ft.item.cname), ft.length))
        else:
            formats.append(_np_scalar(ft.cname))
        offsets.append(field.offset)
    return np.dtype({"names": names, "formats": formats, "offsets": offsets,
                     "itemsize": ffi.sizeof(t)})


def _np_scalar(cname):
    return {"uint64_t": "<u8", "int64_t": "<i8", "uint32_t": "<u4", "int32_t": "<i4",
            "uint8_t": "u1"}[cname]
