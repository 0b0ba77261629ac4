"""The watchdog's eyes: per-CPU progress, and what a stuck CPU holds and waits for.

Each worker bumps its heartbeat around every operation (odd inside one), in its own arena
line, and sets ``HB_DONE`` once it has stopped cleanly (after its ``rcu_barrier``).  The
parent samples the heartbeats; a CPU whose heartbeat has not moved for ``--stall-timeout``
is stuck (even while others run).  ``dump_cpu`` reads everything a person needs to see
why: lock words (every spinlock and rwsem records its owner), the CPU's published waits,
its IRQ and RCU nesting, unacked IPIs, its last events, and what the OS says of its
process (a stopped or dead process is not a model that hung).
"""
import numpy as np
import psutil

from ..mm.mm_types import STAT
from .events import describe_event, lock_namer
from .workload import OPS

HB_SEQ, HB_OP, HB_DONE = 0, 1, 2
# What else a CPU does inside its heartbeat's odd window: RCU callbacks free objects, so a
# CPU killed there leaves half-done work like one killed inside an operation.
STEPS = OPS + ["rcu callbacks"]
RCU_CALLBACKS = STEPS.index("rcu callbacks")
WAIT_NAMES = {1: "mmap_lock (read)", 2: "mmap_lock (write)", 3: "a VMA lock (write)"}
# psutil's process status -> the dump's word (any other kind of wait is a sleep)
PROC_STATES = {psutil.STATUS_RUNNING: "running", psutil.STATUS_WAKING: "running",
               psutil.STATUS_STOPPED: "stopped", psutil.STATUS_TRACING_STOP: "stopped",
               psutil.STATUS_ZOMBIE: "zombie", psutil.STATUS_DEAD: "dead"}


class StallMonitor:
    def __init__(self, st, timeout_s):
        self.st, self.timeout = st, timeout_s
        n = st.cfg.cpus
        self.last = np.zeros(n, dtype=np.uint64)
        self.since = np.zeros(n)

    def stuck(self, now, running):
        """CPUs (among ``running``) whose heartbeat has not moved for the timeout."""
        hb = self.st.arena["heartbeat"][:, HB_SEQ]
        out = []
        for c in running:
            if hb[c] != self.last[c] or self.since[c] == 0:
                self.last[c], self.since[c] = hb[c], now
            elif now - self.since[c] > self.timeout and not self.st.ctl[1]:
                out.append(c)
        return out

    def reset(self, now):
        """After a pause (sweep), nobody has been stuck."""
        self.since[:] = now


def locks_held(st, cpu):
    """Human-readable list of the locks CPU ``cpu`` holds, from the lock words."""
    a = st.arena
    held = []
    rw = a["mmap_lock"][0]
    w = a["waiting"][cpu]
    if rw["state"] & 0x80000000 and rw["owner"] == cpu:
        held.append("mmap_lock (write)")
    if w[3]:
        held.append("mmap_lock (read)")
    ptl = a["pt_meta"]["ptl"]
    for t in np.flatnonzero(ptl == cpu + 1).tolist():
        held.append("ptl of table #%d (level %d)" % (t, int(a["pt_meta"]["level"][t])))
    if a["page_table_lock"][0] == cpu + 1:
        held.append("page_table_lock")
    vl = a["vma"]["lock"]
    for v in np.flatnonzero((vl["state"] & 0x80000000 != 0) & (vl["owner"] == cpu)).tolist():
        held.append("VMA #%d lock (write)" % v)
    if w[5]:                            # both --vma-lock generations publish a read hold
        held.append("VMA #%d lock (read)" % (int(w[5]) - 1))
    return held


def waiting_for(st, cpu):
    w = st.arena["waiting"][cpu]
    out = []
    if w[0]:
        t = int(w[0]) - 1
        out.append("ptl of table #%d (held by CPU %d)"
                   % (t, int(st.arena["pt_meta"]["ptl"][t]) - 1))
    if w[1]:
        name = WAIT_NAMES.get(int(w[1]), "?")
        if int(w[1]) == 3:
            name += " #%d" % int(w[2])
        out.append(name)
    return out


def process_state(pid):
    """What the OS says of a worker's process: running, sleeping, stopped, zombie or dead.
    Only meaningful while the parent has not reaped it (the pid may be reused after)."""
    try:
        return PROC_STATES.get(psutil.Process(pid).status(), "sleeping") if pid > 0 else "dead"
    except psutil.Error:
        return "dead"


def dump_cpu(st, cpu, nevents=12, process=True):
    """Everything about one CPU, as a dict (also rendered by ``format_dump``).
    ``process``: also ask the OS about its process (only while it is unreaped)."""
    pc = st.arena["percpu"][cpu]
    hb = st.arena["heartbeat"][cpu]
    ev = st.smp.events(cpu)[-nevents:]
    lock_name = lock_namer(st.arena)
    return {
        "cpu": cpu, "pid": int(pc["pid"]), "alive": int(pc["alive"]),
        "in_op": STEPS[int(hb[HB_OP])] if int(hb[HB_SEQ]) & 1 else None,
        "ops_done": int(st.arena["stats"][cpu, STAT["ops"]]),
        "irq_depth": int(pc["irq_depth"]), "rcu_depth": int(pc["rcu_depth"]),
        "in_rcu_reader": bool(pc["rcu_snap"]),
        "ipi_unacked": int((int(pc["req_seq"]) - int(pc["ack_seq"])) & 0xFFFFFFFF),
        "ipi_pending_work": int(pc["pending"]),
        "holds": locks_held(st, cpu), "waits_for": waiting_for(st, cpu),
        "last_events": [describe_event(e, lock_name) for e in ev],
        "process": process_state(int(pc["pid"])) if process else None,
    }


def format_dump(d):
    lines = ["CPU %d (pid %d, %s): %s; IRQs %s, RCU nesting %d%s, IPIs unacked %d"
             % (d["cpu"], d["pid"], {1: "online", 2: "offline"}.get(d["alive"], "dead"),
                "in %s" % d["in_op"] if d["in_op"] else "between operations",
                "off (depth %d)" % d["irq_depth"] if d["irq_depth"] else "on",
                d["rcu_depth"], " (reader)" if d["in_rcu_reader"] else "", d["ipi_unacked"]),
             "    holds: %s" % (", ".join(d["holds"]) or "nothing"),
             "    waits for: %s" % (", ".join(d["waits_for"]) or "nothing")]
    if d["process"]:
        lines.append("    process: %s" % d["process"])
    lines += ["    %s" % e for e in d["last_events"]]
    return "\n".join(lines)


OS_CAUSES = {"stopped": "was stopped", "zombie": "died", "dead": "died"}


def stall_cause(d, dumps=()):
    """Why a stuck CPU made no progress: its process was stopped or died (the OS); or
    another CPU's was, which it waits on (the first such in ``dumps``); or it ran or
    slept in the model without getting anywhere (the model hung)."""
    if d["process"] in OS_CAUSES:
        return "the process " + OS_CAUSES[d["process"]]
    other = os_stalled(dumps)
    if other:
        return "CPU %d's process %s" % (other[0], OS_CAUSES[dumps[other[0]]["process"]])
    return "the model hung"


def os_stalled(dumps):
    """The CPUs whose process the OS stopped or that died: the cause of any stall."""
    return [c for c, d in enumerate(dumps) if d["process"] in OS_CAUSES]


def holds_anything(d):
    return bool(d["in_op"] or d["holds"] or d["irq_depth"] or d["in_rcu_reader"])
