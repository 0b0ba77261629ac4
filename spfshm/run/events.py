"""Event-ring records as text, and the timeline: one column per CPU, one row per event in
global order, around a moment of interest (the first violation).

Under --sched the rings also hold lock holds, IRQs-off and RCU read sections and the
switches (spf_ring.h's SPF_EV_LOCK, _IRQ, _RCU, _SWITCH), stamped in logical time: the
timeline then counts steps and, given ``lock_namer(arena)``, names each lock.  The
Chrome trace (trace.py) names events through the same functions."""
from bisect import bisect_right

from .. import debug, native
from ..mm.mm_types import TABLE_META, VMA_DTYPE
from ..mm.pagetable import EV_TABLE_ALLOC, EV_TABLE_FREE, EV_TABLE_UNLINK
from .workload import OPS

EV_LOCK, EV_IRQ, EV_RCU, EV_SWITCH, EV_OP = (
    native.lib.SPF_EV_LOCK, native.lib.SPF_EV_IRQ, native.lib.SPF_EV_RCU,
    native.lib.SPF_EV_SWITCH, native.lib.SPF_EV_OP)
LOCK_KINDS = {native.lib.SPF_LK_SPIN: "spin", native.lib.SPF_LK_READ: "read",
              native.lib.SPF_LK_WRITE: "write"}
STEP_NS = native.lib.SPF_SCHED_STEP_NS
MASK64 = 2**64 - 1

NAMES = {
    native.EV_IPI_SEND: lambda e: "IPI -> CPU %d (ticket %d, work %d)" % (e["a0"], e["a1"], e["a2"]),
    native.EV_IPI_HANDLE: lambda e: "IPI handled (ticket %d, work %d)" % (e["a0"], e["a1"]),
    native.EV_IPI_DONE: lambda e: "IPI sync done (%s, %d us)" % (
        "ok" if e["a0"] == 2**64 - 1 else "failed at CPU %d" % e["a0"], e["a2"] // 1000),
    EV_LOCK: lambda e: "%s %s%s" % (e["lock"], "taken" if e["a1"] else "released",
                                    "" if e["a2"] == native.lib.SPF_LK_SPIN
                                    else " (%s)" % LOCK_KINDS.get(e["a2"], e["a2"])),
    EV_IRQ: lambda e: "IRQs off" if e["a0"] else "IRQs on",
    EV_RCU: lambda e: "rcu_read_lock" if e["a0"] else "rcu_read_unlock",
    EV_SWITCH: lambda e: "switch: CPU %d runs next (step %d)" % (e["a1"], e["a2"]),
    EV_OP: lambda e: "op #%d: %s" % (e["a0"], OPS[e["a1"]] if e["a1"] < len(OPS) else e["a1"]),
    EV_TABLE_ALLOC: lambda e: "table #%d alloc (level %d, gen %d)" % (e["a0"], e["a1"], e["a2"]),
    EV_TABLE_UNLINK: lambda e: "table #%d unlinked (level %d, gen %d)" % (e["a0"], e["a1"], e["a2"]),
    EV_TABLE_FREE: lambda e: "table #%d FREED (level %d, gen %d)" % (e["a0"], e["a1"], e["a2"]),
    debug.EV_VIOLATION: lambda e: "!!! VIOLATION %s at %#x (%d)" % (
        debug.KIND_NAMES[int(e["a0"])], e["a1"], e["a2"]),
}


def lock_namer(arena):
    """SPF_EV_LOCK's a0 (the lock's address minus the scheduler area's) -> the lock's
    name: mmap_lock, page_table_lock, "ptl #T" (a table's split lock, TABLE_META.ptl),
    "VMA #V lock" (VMA_DTYPE.lock), "NAME pool lock" (pool.py's), else "lock
    REGION+0xREL" or "lock +0xOFF" (an arena offset)."""
    regs = arena.layout.regions
    sched_off = regs["sched"][0] if "sched" in regs else 0
    spans = sorted((off, nbytes, name) for name, (off, _, _, nbytes) in regs.items())
    starts = [s[0] for s in spans]
    ptl_at, vma_lock_at = TABLE_META.fields["ptl"][1], VMA_DTYPE.fields["lock"][1]

    def name(rel):
        off = (int(rel) + sched_off) & MASK64
        i = bisect_right(starts, off) - 1
        if i < 0 or off >= spans[i][0] + spans[i][1]:
            return "lock +%#x" % off
        base, _, region = spans[i]
        r = off - base
        if region in ("mmap_lock", "page_table_lock") and r == 0:
            return region
        if region.endswith("_hdr") and r == 0:         # pool.py: [0] is the pool's lock
            return "%s pool lock" % region[:-4]
        if region == "pt_meta" and r % TABLE_META.itemsize == ptl_at:
            return "ptl #%d" % (r // TABLE_META.itemsize)
        if region == "vma" and r % VMA_DTYPE.itemsize == vma_lock_at:
            return "VMA #%d lock" % (r // VMA_DTYPE.itemsize)
        return "lock %s+%#x" % (region, r)
    return name


def event_text(e, lock_name=None):
    """One record's text, without its stamp."""
    f = NAMES.get(int(e["type"]))
    if not f:
        return "event %d (%d, %d, %d)" % (e["type"], e["a0"], e["a1"], e["a2"])
    d = {k: int(e[k]) for k in ("a0", "a1", "a2")}
    if int(e["type"]) == EV_LOCK:
        d["lock"] = lock_name(d["a0"]) if lock_name else "lock @%#x" % d["a0"]
    return f(d)


def describe_event(e, lock_name=None):
    return "[%d.%06d] %s" % (int(e["stamp"]) // 10**9, int(e["stamp"]) // 1000 % 10**6,
                             event_text(e, lock_name))


def timeline(smp, cpus, around=None, before=40, after=10, width=44, marks=(), lock_name=None,
             sched=False):
    """Rows of text: a time offset (us from ``around``; with ``sched``, the stamps being
    logical, steps), then one column per CPU.  ``marks`` are (stamp, text) rows spanning
    all columns (violations found by the sweeper, which is no CPU); a stamp of None puts
    the row at the end (under --sched the sweeper's stamps are not logical)."""
    tl = smp.timeline(cpus)
    if not len(tl):
        return []
    if around is None:
        around = int(tl[-1]["stamp"])
    stamps = [int(e["stamp"]) for e in tl]
    k = next((i for i, s in enumerate(stamps) if s >= around), len(stamps) - 1)
    rows = tl[max(0, k - before):k + after + 1]
    col = {c: i for i, c in enumerate(cpus)}
    unit = STEP_NS if sched else 1000

    def at(stamp):
        return "%+12d" % ((stamp - around) // unit) if sched else \
            "%+12.1f" % ((stamp - around) / 1000.0)
    head = "%12s | " % ("step" if sched else "us") + " | ".join(
        ("CPU %d" % c).ljust(width) for c in cpus)
    out = [head, "-" * len(head)]
    pending = sorted(m for m in marks if m[0] is not None and int(rows[0]["stamp"]) <= m[0])
    for e in rows:
        while pending and pending[0][0] <= int(e["stamp"]):
            st, text = pending.pop(0)
            out.append("%s | !!! %s" % (at(st), text))
        cells = [""] * len(cpus)
        cells[col[int(e["cpu"])]] = event_text(e, lock_name)[:width]
        out.append("%s | " % at(int(e["stamp"])) + " | ".join(c.ljust(width) for c in cells))
    for st, text in pending:
        out.append("%s | !!! %s" % (at(st), text))
    out += ["%12s | !!! %s" % ("end", text) for st, text in marks if st is None]
    return out
