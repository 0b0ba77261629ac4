"""Event-ring records as text, and the timeline: one column per CPU, one row per event in
global order, around a moment of interest (the first violation)."""
from .. import debug, native
from ..mm.pagetable import EV_TABLE_ALLOC, EV_TABLE_FREE, EV_TABLE_UNLINK

NAMES = {
    native.EV_IPI_SEND: lambda e: "IPI -> CPU %d (ticket %d, work %d)" % (e["a0"], e["a1"], e["a2"]),
    native.EV_IPI_HANDLE: lambda e: "IPI handled (ticket %d, work %d)" % (e["a0"], e["a1"]),
    native.EV_IPI_DONE: lambda e: "IPI sync done (%s, %d us)" % (
        "ok" if e["a0"] == 2**64 - 1 else "failed at CPU %d" % e["a0"], e["a2"] // 1000),
    EV_TABLE_ALLOC: lambda e: "table #%d alloc (level %d, gen %d)" % (e["a0"], e["a1"], e["a2"]),
    EV_TABLE_UNLINK: lambda e: "table #%d unlinked (level %d, gen %d)" % (e["a0"], e["a1"], e["a2"]),
    EV_TABLE_FREE: lambda e: "table #%d FREED (level %d, gen %d)" % (e["a0"], e["a1"], e["a2"]),
    debug.EV_VIOLATION: lambda e: "!!! VIOLATION %s at %#x (%d)" % (
        debug.KIND_NAMES[int(e["a0"])], e["a1"], e["a2"]),
}


def describe_event(e):
    f = NAMES.get(int(e["type"]))
    text = f({k: int(e[k]) for k in ("a0", "a1", "a2")}) if f else \
        "event %d (%d, %d, %d)" % (e["type"], e["a0"], e["a1"], e["a2"])
    return "[%d.%06d] %s" % (int(e["stamp"]) // 10**9, int(e["stamp"]) // 1000 % 10**6, text)


def timeline(smp, cpus, around=None, before=40, after=10, width=44, marks=()):
    """Rows of text: a time offset (us from ``around``), then one column per CPU.
    ``marks`` are (stamp, text) rows spanning all columns (violations found by the
    sweeper, which is no CPU)."""
    tl = smp.timeline(cpus)
    if not len(tl):
        return []
    if around is None:
        around = int(tl[-1]["stamp"])
    stamps = [int(e["stamp"]) for e in tl]
    k = next((i for i, s in enumerate(stamps) if s >= around), len(stamps) - 1)
    rows = tl[max(0, k - before):k + after + 1]
    col = {c: i for i, c in enumerate(cpus)}
    head = "%12s | " % "us" + " | ".join(("CPU %d" % c).ljust(width) for c in cpus)
    out = [head, "-" * len(head)]
    pending = sorted(m for m in marks if int(rows[0]["stamp"]) <= m[0])
    for e in rows:
        while pending and pending[0][0] <= int(e["stamp"]):
            st, text = pending.pop(0)
            out.append("%+12.1f | !!! %s" % ((st - around) / 1000.0, text))
        cells = [""] * len(cpus)
        text = describe_event(e).split("] ", 1)[1]
        cells[col[int(e["cpu"])]] = text[:width]
        out.append("%+12.1f | " % ((int(e["stamp"]) - around) / 1000.0)
                   + " | ".join(c.ljust(width) for c in cells))
    for st, text in pending:
        out.append("%+12.1f | !!! %s" % ((st - around) / 1000.0, text))
    return out
