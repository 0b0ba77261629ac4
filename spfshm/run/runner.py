"""The stress runner: build the arena, start the CPUs, drive and watch them, sweep, report.

Control words (``ctl``): [0] stop, [1] pause request for a sweep, [2] CPUs parked.
A CPU checks them between operations only, so a sweep sees no operation in flight; a
parked CPU sleeps with IRQs on, so it still acks IPIs and holds no RCU read side.
"""
import time

import numpy as np

from .. import debug, native
from ..arena import Arena, Layout
from ..bugs import Bugs
from ..check.sweep import sweep
from ..mm import mm_types
from ..mm.cpu import Cpu
from ..mm.lockdep import Deadlock
from ..mm.mm_types import MM, STAT, Geometry, mm_init
from ..mm.reclaim import pt_pages, reclaim_scan
from ..mm.syscalls import MAP_FIXED, do_madvise_dontneed, do_mmap, do_mprotect, do_munmap
from ..smp import Smp, smp_regions
from .workers import WorkerError, Workers
from .workload import Workload, initial_layout

STOP, PAUSE, PARKED = 0, 1, 2
PARK_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
VIOLATION_GRACE_S = 2.0       # after a violation, CPUs still busy then are killed
OUTCOME_STATS = ("segv", "oom")
RECLAIMER_PAUSE_NS = 1_000_000      # the asynchronous reclaimer scans every millisecond


class RunState:
    """Everything one run builds, shared by the parent and (through fork) the workers."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.g = Geometry(cfg.cpus, cfg.window_pages, cfg.tlb_entries)
        self.bugs = Bugs(cfg.bugs)
        n = cfg.cpus
        self.layout = Layout(smp_regions(n + 1) + mm_types.regions(self.g)
                             + [("ctl", np.uint64, 8)])
        self.arena = Arena(self.layout)
        self.smp = Smp(self.arena, n + 1)
        self.ctl = self.arena["ctl"]
        self.vmpte_kb_peak = self.vmpte_kb_end = 0

    def mm_for(self, cpu):
        return MM(self.arena, self.g, self.cfg, self.bugs, cpu)

    def close(self):
        self.arena.close()


def run_op(mm, cpu, op, args):
    if op == "load":
        return cpu.load(args[0])
    if op == "store":
        return cpu.store(args[0])
    if op == "reclaim":
        reclaim_scan(mm)
        if cpu.reclaimer_pause:
            native.sleep_ns(cpu.reclaimer_pause)
        return "ok"
    if op == "mmap":
        r = do_mmap(mm, *args)
    elif op == "munmap":
        r = do_munmap(mm, *args)
    elif op == "mprotect":
        r = do_mprotect(mm, *args)
    else:
        r = do_madvise_dontneed(mm, *args)
    if r < 0:
        mm.count(op + "_err")
    return "ok"


def worker_main(st, cpu):
    mm = st.mm_for(cpu)
    c = Cpu(mm)
    cfg = st.cfg
    is_reclaimer = cfg.reclaimer and cpu == cfg.cpus - 1
    wl = Workload(st.g, cfg.seed, cpu, cfg.workload,
                  reclaim_op=cfg.reclaim == "seed" and not cfg.reclaimer, reclaimer=is_reclaimer)
    c.reclaimer_pause = RECLAIMER_PAUSE_NS if is_reclaimer else 0
    ctl = st.ctl
    parked = st.arena.ptr("ctl", index=PARKED)
    viol = mm.reporter.count
    limit = st.cfg.ops or (1 << 62)
    local = mm.local
    i_ops = STAT["ops"]
    n = 0
    while n < limit and not ctl[STOP]:
        if ctl[PAUSE]:
            _park(ctl, parked)
        op, args = wl.next()
        try:
            res = run_op(mm, c, op, args)
        except Deadlock:
            # Recorded; locks are held and a partner is stuck: leave without cleaning up,
            # the runner kills the rest.
            mm.flush_stats()
            return
        local[i_ops] += 1
        local[STAT[op]] += 1
        if res in OUTCOME_STATS:
            local[STAT[res]] += 1
        n += 1
        if n & 63 == 0:
            mm.rcu.rcu_process_callbacks()
            local[STAT["rcu_backlog_max"]] = mm.rcu.max_backlog
            mm.flush_stats()
        if viol[0]:
            break
    mm.rcu.rcu_barrier()
    local[STAT["rcu_backlog_max"]] = mm.rcu.max_backlog
    mm.flush_stats()
    native.cpu_unregister()


def _park(ctl, parked):
    native.fetch_add(parked, 1)
    while ctl[PAUSE]:
        native.sleep_ns(50_000)
    native.fetch_add(parked, 2**64 - 1)


def setup_initial(st):
    """The parent acts as CPU n while it builds the mm and the initial layout."""
    n = st.cfg.cpus
    st.smp.init()
    st.smp.become_cpu(n)
    mm = st.mm_for(n)
    mm_init(mm)
    for addr, npages, prot in initial_layout(st.g, st.cfg.seed, st.cfg.workload):
        do_mmap(mm, addr, npages * mm_types.PAGE, prot, MAP_FIXED)
    mm.rcu.rcu_barrier()
    mm.flush_stats()
    native.cpu_unregister()
    return mm


class Stress:
    def __init__(self, cfg, progress):
        self.cfg, self.progress = cfg, progress
        self.sweeps = 0
        self.checked = 0
        self.errors = []
        self.notes = []

    def _sweep(self, st, workers, mm):
        """Stop the world, sweep, resume.  False if the CPUs never all parked."""
        ctl = st.ctl
        ctl[PAUSE] = 1
        deadline = time.monotonic() + PARK_TIMEOUT_S
        while int(ctl[PARKED]) < len(workers.poll()):
            if time.monotonic() > deadline:
                ctl[PAUSE] = 0
                self.errors.append("CPUs did not park for a sweep within %.0fs"
                                   % PARK_TIMEOUT_S)
                return False
            time.sleep(0.0005)
        self.checked += sweep(mm)
        self.sweeps += 1
        st.vmpte_kb_peak = max(st.vmpte_kb_peak, 4 * pt_pages(mm))
        ctl[PAUSE] = 0
        return True

    def run(self):
        cfg = self.cfg
        st = RunState(cfg)
        t0 = time.monotonic()
        try:
            mm = setup_initial(st)
            sweeper = debug.Reporter(st.arena, cfg.cpus, -1)
            mm.reporter = sweeper
            mm.report = sweeper.report
            workers = Workers(st.smp, cfg.cpus, lambda cpu: worker_main(st, cpu), pin=cfg.pin)
            workers.start()
            try:
                self._drive(st, workers, mm, t0)
            except KeyboardInterrupt:
                self.errors.append("interrupted")
                st.ctl[STOP] = 1
                st.ctl[PAUSE] = 0
                workers.join(STOP_TIMEOUT_S)
                raise
            finally:
                workers.kill()
            crashed = {c: s for c, s in workers.status.items() if s != 0}
            if debug.total(st.arena) == 0:
                for c, s in sorted(crashed.items()):
                    self.errors.append("CPU %d exited with status %d" % (c, s))
            if not crashed and debug.total(st.arena) == 0:
                self.checked += sweep(mm)     # after a violation the state is moot
                self.sweeps += 1
            st.vmpte_kb_end = 4 * pt_pages(mm)
            st.vmpte_kb_peak = max(st.vmpte_kb_peak, st.vmpte_kb_end)
            return self._result(st, time.monotonic() - t0)
        finally:
            st.close()

    def _drive(self, st, workers, mm, t0):
        cfg = self.cfg
        ctl = st.ctl
        deadline = None if cfg.ops else t0 + cfg.duration
        next_sweep = t0 + cfg.check_every if cfg.check_every else None
        while True:
            time.sleep(0.05)
            now = time.monotonic()
            running = workers.poll()
            if not running:
                break
            violated = debug.total(st.arena) > 0
            if violated or (deadline and now >= deadline) or len(running) < cfg.cpus:
                ctl[STOP] = 1
                ctl[PAUSE] = 0
                try:
                    workers.join(VIOLATION_GRACE_S if violated else STOP_TIMEOUT_S)
                except WorkerError as e:
                    if violated:
                        self.notes.append("after the violation: %s" % e)
                    else:
                        self.errors.append("CPUs did not stop within %.0fs (hang)"
                                           % STOP_TIMEOUT_S)
                break
            if next_sweep and now >= next_sweep:
                if not self._sweep(st, workers, mm):
                    ctl[STOP] = 1
                next_sweep = time.monotonic() + cfg.check_every
            self.progress(st, now - t0, self.sweeps)

    def _result(self, st, elapsed):
        from .report import build_report
        return build_report(st, self, elapsed)


def run_stress(cfg, progress=lambda *a: None):
    """Run one configuration; returns the report dict (see run/report.py)."""
    return Stress(cfg, progress).run()
