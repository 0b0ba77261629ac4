"""A run as Chrome trace-event JSON: open it in https://ui.perfetto.dev (Open trace file)
or chrome://tracing.

One process (pid 0), one lane (tid) per CPU, from the CPUs' event rings (smp.py):
  slices    lock holds, named by lock (events.lock_namer: mmap_lock, "ptl #T",
            "VMA #V lock", page_table_lock; args: read, write or spin), IRQs-off and
            RCU read sections: under --sched only (parallel runs do not record them)
  arrows    IPIs: a flow from the sender's "IPI -> CPU n" to the "IPI handled" on the
            target that acked its ticket (one handler run may ack several)
  instants  violations (kind@site, from the violation records; the sweeper's are global,
            at the end when their stamp is out of the CPUs' range), tables allocated,
            unlinked, freed, IPI syncs done, switches (under --sched)
Times are microseconds from the earliest event; under --sched a step is 1 us of logical
time (the stamps count steps, spf_sched.h).

Nesting: a lane's records come in the order its CPU made them.  Every emitted event gets
its own time on the lane, TICK_NS after the one before (or its stamp, if later), so no two
share a time and the viewer's sort cannot reorder them.  Sections need not nest (a lock
released while one taken after it is still held): the ones above it are closed and
reopened (args.reopened), so every lane's B/E nest and balance.  A release whose take
the ring no longer holds opens its slice at the lane's start (args.before_ring);
what is still open at the lane's end is closed there.
"""
from bisect import bisect_left

from .. import __version__, debug, native
from ..mm.pagetable import EV_TABLE_ALLOC, EV_TABLE_FREE, EV_TABLE_UNLINK
from . import sched
from .events import EV_IRQ, EV_LOCK, EV_RCU, EV_SWITCH, LOCK_KINDS, event_text, lock_namer

TICK_NS = 10              # a lane's events are at least this far apart
MARK_NS = 6               # an IPI's send or handling: a slice this long, its arrow inside
INSTANTS = (native.EV_IPI_DONE, EV_SWITCH, EV_TABLE_ALLOC, EV_TABLE_UNLINK, EV_TABLE_FREE)


class _Lane:
    """One CPU's lane: its clock (ns) and its stack of open sections."""

    def __init__(self, cpu, out):
        self.cpu, self.out = cpu, out
        self.clock = None
        self.start = None
        self.stack = []           # [key, name, args]
        self.early = 0            # slices opened at the start (their take is gone)

    def tick(self, stamp):
        self.clock = stamp if self.clock is None else max(self.clock + TICK_NS, stamp)
        if self.start is None:
            self.start = self.clock
        return self.clock

    def emit(self, ph, t, name, **kw):
        self.out.append(dict(kw, ph=ph, ts=t, name=name, pid=0, tid=self.cpu))

    def open(self, stamp, key, name, args):
        self.stack.append([key, name, args])
        self.emit("B", self.tick(stamp), name, args=args)

    def close(self, stamp, key):
        i = next((j for j in range(len(self.stack) - 1, -1, -1) if self.stack[j][0] == key),
                 None)
        if i is None:                    # taken before the ring's oldest record
            return
        above = self.stack[i + 1:]
        for _, name, _ in reversed(self.stack[i:]):
            self.emit("E", self.tick(stamp), name)
        del self.stack[i:]
        for key2, name, args in above:
            self.open(stamp, key2, name, dict(args, reopened=True))

    def close_early(self, stamp, key, name, args):
        """A release without its take: the slice began before the ring's window."""
        self.early += 1
        if self.start is None:
            self.start = stamp
        self.stack.insert(0, [key, name, dict(args, before_ring=True)])
        self.emit("B", self.start - self.early * TICK_NS, name,
                  args=dict(args, before_ring=True))
        self.close(stamp, key)

    def section(self, stamp, key, name, args, taken):
        if taken:
            self.open(stamp, key, name, args)
        elif any(s[0] == key for s in self.stack):
            self.close(stamp, key)
        else:
            self.close_early(stamp, key, name, args)

    def finish(self):
        while self.stack:
            self.emit("E", self.tick(self.clock), self.stack.pop()[1])


def chrome_trace(st):
    """The run of ``st`` (a runner.RunState, its arena still mapped) as a trace dict."""
    cfg, arena, smp = st.cfg, st.arena, st.smp
    lock_name = lock_namer(arena)
    modes = cfg.fault_modes()
    ev = []
    lanes = {c: _Lane(c, ev) for c in range(cfg.cpus)}
    sends, handles = [], {c: ([], []) for c in lanes}   # handles: (tickets, times)
    for c, lane in lanes.items():
        for e in smp.events(c):
            typ, stamp = int(e["type"]), int(e["stamp"])
            a0, a1, a2 = int(e["a0"]), int(e["a1"]), int(e["a2"])
            if typ == EV_LOCK:
                lane.section(stamp, ("lock", a0), lock_name(a0),
                             {"kind": LOCK_KINDS.get(a2, a2)}, a1)
            elif typ == EV_IRQ:
                lane.section(stamp, ("irq",), "IRQs off", {}, a0)
            elif typ == EV_RCU:
                lane.section(stamp, ("rcu",), "RCU read", {}, a0)
            elif typ == native.EV_IPI_SEND:
                t = lane.tick(stamp)
                lane.emit("X", t, "IPI -> CPU %d" % a0, dur=MARK_NS,
                          args={"ticket": a1, "work": a2})
                sends.append((c, t + MARK_NS // 2, a0, a1))
            elif typ == native.EV_IPI_HANDLE:
                t = lane.tick(stamp)
                lane.emit("X", t, "IPI handled", dur=MARK_NS, args={"ticket": a0, "work": a1})
                handles[c][0].append(a0)
                handles[c][1].append(t + MARK_NS // 2)
            elif typ in INSTANTS:
                lane.emit("i", lane.tick(stamp), event_text(e), s="t")
        lane.finish()
    flow = 0
    for c, t, target, ticket in sends:
        tickets, times = handles.get(target, ((), ()))
        k = bisect_left(tickets, ticket)       # the first handler run that acked it
        if k < len(tickets):
            flow += 1
            ev.append({"ph": "s", "id": flow, "name": "IPI", "cat": "ipi", "ts": t,
                       "pid": 0, "tid": c})
            ev.append({"ph": "f", "bp": "e", "id": flow, "name": "IPI", "cat": "ipi",
                       "ts": times[k], "pid": 0, "tid": target})
    ends = [lane.clock for lane in lanes.values() if lane.clock is not None]
    lo = min((e["ts"] for e in ev), default=0)
    hi = max(ends, default=lo)
    for v in debug.collect(arena):
        on_lane = 0 <= v["cpu"] < cfg.cpus
        ev.append(dict({"ph": "i", "ts": min(max(v["stamp"], lo), hi),
                        "name": v["signature"], "pid": 0, "args": {
                            "detail": v["detail"], "va": "%#x" % v["va"],
                            "by": "CPU %d" % v["cpu"] if on_lane else "sweep"}},
                       **({"tid": v["cpu"], "s": "t"} if on_lane else {"tid": 0, "s": "g"})))
    for e in ev:
        e["ts"] = round((e["ts"] - lo) / 1000.0, 3)
        if "dur" in e:
            e["dur"] = e["dur"] / 1000.0
    meta = [{"ph": "M", "name": "process_name", "pid": 0, "tid": 0,
             "args": {"name": "spfshm %s" % ("--sched " + cfg.sched if cfg.sched
                                             else "parallel")}}]
    for c in lanes:
        meta += [{"ph": "M", "name": "thread_name", "pid": 0, "tid": c,
                  "args": {"name": "CPU %d (%s)" % (c, modes[c % len(modes)])}},
                 {"ph": "M", "name": "thread_sort_index", "pid": 0, "tid": c,
                  "args": {"sort_index": c}}]
    other = {"config": cfg.describe(), "seed": cfg.seed, "version": __version__,
             "clock": "logical: 1 us per scheduling step" if cfg.sched
             else "CLOCK_MONOTONIC", "t0_ns": lo}
    if cfg.sched:
        other["sched"] = sched.State(arena, cfg.cpus).facts()
    return {"traceEvents": meta + ev, "displayTimeUnit": "ns", "otherData": other}
