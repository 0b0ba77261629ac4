"""The stress runner: build the arena, start the CPUs, drive and watch them, sweep, report.

Control words (``ctl``): [0] stop, [1] pause request for a sweep, [2] CPUs parked.
A CPU checks them between operations only, so a sweep sees no operation in flight; a
parked CPU sleeps with IRQs on, so it still acks IPIs and holds no RCU read side.
"""
import contextlib
import os
import random
import signal
import time

import numpy as np

from .. import debug, native
from ..arena import Arena, Layout
from ..bugs import Bugs
from ..check.sweep import sweep
from ..mm import mm_types
from ..mm.cpu import Cpu
from ..mm.lockdep import Deadlock, check_spin_unlocks
from ..mm.mm_types import MM, STAT, Geometry, mm_init
from ..mm.gup import gup_fast, gup_hold_and_release
from ..mm.khugepaged import khugepaged_scan
from ..mm.reclaim import pt_pages, reclaim_scan
from ..mm.syscalls import MAP_FIXED, do_madvise_dontneed, do_mmap, do_mprotect, do_munmap
from ..mm.vma_cache import other_mm_unmap
from ..smp import Smp, smp_regions
from . import artifacts, scenario, sched
from .events import EV_OP
from .watchdog import (HB_DONE, HB_OP, HB_SEQ, RCU_CALLBACKS, StallMonitor, dump_cpu,
                       format_dump, holds_anything, os_stalled, process_state,
                       stall_cause)
from .workers import WorkerError, Workers, describe_exit
from .workload import OPS, Workload, initial_layout

OP_INDEX = {op: i for i, op in enumerate(OPS)}

STOP, PAUSE, PARKED = 0, 1, 2
STOP_TIMEOUT_S = 30.0
VIOLATION_GRACE_S = 2.0       # after a violation or a crash, CPUs still busy then are killed
OUTCOME_STATS = ("segv", "oom")
RECLAIMER_PAUSE_NS = 1_000_000      # the asynchronous reclaimer scans every millisecond
PACE_SLICE_NS = 1_000_000           # a paced writer idles in slices, watching ctl
STATS_FLUSH_OPS = 64                # every so many ops a CPU flushes its stats
# cpu_acct row of a CPU: when its loop started and (last) ended, call_rcu latency sums
# and the CPU time it used meanwhile (user + system: IPI handling and spinning included)
ACCT_START, ACCT_END, ACCT_RCU_N, ACCT_RCU_SUM, ACCT_RCU_MAX, ACCT_CPU0, ACCT_CPU = range(7)


class RunState:
    """Everything one run builds, shared by the parent and (through fork) the workers."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.g = Geometry(cfg.cpus, cfg.window_pages, cfg.tlb_entries)
        self.bugs = Bugs(cfg.bugs)
        n = cfg.cpus
        self.layout = self.layout_for(cfg)
        self.arena = Arena(self.layout)
        self.smp = Smp(self.arena, n + 1)
        self.ctl = self.arena["ctl"]
        self.vmpte_kb_peak = self.vmpte_kb_end = 0

    @staticmethod
    def layout_for(cfg):
        g = Geometry(cfg.cpus, cfg.window_pages, cfg.tlb_entries)
        n = cfg.cpus
        return Layout(smp_regions(n + 1) + mm_types.regions(g) + sched.region(cfg)
                      + [("ctl", np.uint64, 8), ("heartbeat", np.uint64, (n + 1, 8)),
                         ("cpu_acct", np.uint64, (n + 1, 8))])   # see ACCT_*

    @staticmethod
    def geometry_text(cfg):
        g = Geometry(cfg.cpus, cfg.window_pages, cfg.tlb_entries)
        return "window %d pages at %#x, %d page tables, %d frames, %d VMA records" % (
            g.window_pages, g.window_base, g.ntables, g.nframes, g.nvmas)

    def mm_for(self, cpu):
        return MM(self.arena, self.g, self.cfg, self.bugs, cpu)

    def close(self):
        self.arena.close()


def run_op(mm, cpu, op, args):
    if op == "load":
        return cpu.load(args[0])
    if op == "store":
        return cpu.store(args[0])
    if op == "gup":
        gup_hold_and_release(mm, gup_fast(mm, *args))
        return "ok"
    if op == "collapse":
        khugepaged_scan(mm, *args)
        return "ok"
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
    if cfg.scenario:                          # a litmus scenario: this CPU's ops
        wl = scenario.ScriptWorkload(st.g, cfg.scenario, cpu)
    else:
        wl = Workload(st.g, cfg.seed, cpu, cfg.workload,
                      reclaim_op=cfg.reclaim == "seed" and not cfg.reclaimer,
                      reclaimer=is_reclaimer, collapse_op=cfg.collapse != "off",
                      writer_rate=cfg.writer_rate,
                      whole_blocks=cfg.reclaim != "off" or cfg.collapse != "off")
    paced = wl.period_ns > 0
    c.reclaimer_pause = RECLAIMER_PAUSE_NS if is_reclaimer else 0
    ctl = st.ctl
    parked = st.arena.ptr("ctl", index=PARKED)
    viol = mm.reporter.count
    limit = cfg.cpu_ops[cpu] if cfg.cpu_ops else wl.limit if cfg.scenario \
        else cfg.ops or (1 << 62)
    hb = st.arena["heartbeat"][cpu]
    acct = st.arena["cpu_acct"][cpu]
    if cfg.sched:
        sched.enter(st.arena)
        try:
            _worker_loop(st, cpu, mm, c, wl, paced, ctl, parked, viol, limit, hb, acct)
        finally:
            # Offline before the turn goes (a no-op after a clean stop): however the
            # loop ended (a deadlock, an error), a CPU still running sees this one
            # offline at the same step of every replay, not when this process exits.
            native.cpu_unregister()
            sched.exit_()
    else:
        _worker_loop(st, cpu, mm, c, wl, paced, ctl, parked, viol, limit, hb, acct)


def _worker_loop(st, cpu, mm, c, wl, paced, ctl, parked, viol, limit, hb, acct):
    """The CPU's operations.  Under --sched it stops at the first violation any CPU
    reported (the parent's stop word would arrive at a wall-clock moment, not at a
    point of the schedule)."""
    if st.cfg.sched:
        def stopping():
            return debug.total(st.arena) > 0
    else:
        def stopping():
            return ctl[STOP]
    local = mm.local
    i_ops = STAT["ops"]
    acct[ACCT_START] = native.now_ns()
    acct[ACCT_CPU0] = time.process_time_ns()
    n = 0
    while n < limit and not stopping():
        if ctl[PAUSE]:
            _park(ctl, parked)
        if paced:
            wait = wl.wait_ns(native.now_ns())
            if wait > 0:                      # --writer-rate: idle (IRQs on, no locks)
                native.sleep_ns(min(wait, PACE_SLICE_NS))
                hb[HB_SEQ] += 2               # alive, between operations
                continue
        op, args = wl.next()
        hb[HB_OP] = OP_INDEX[op]
        hb[HB_SEQ] += 1                       # odd: inside an operation
        native.trace(EV_OP, n, OP_INDEX[op], 0)   # the op order replay --deterministic follows
        try:
            res = run_op(mm, c, op, args)
            if mm.lent:                       # --vma-lock refcnt: the other mm's munmap
                other_mm_unmap(mm)
            hb[HB_SEQ] += 1
        except Deadlock:
            # Recorded; locks are held and a partner is stuck: leave without cleaning up,
            # the runner kills the rest.
            mm.flush_stats()
            return
        check_spin_unlocks(mm)
        local[i_ops] += 1
        local[STAT[op]] += 1
        if res in OUTCOME_STATS:
            local[STAT[res]] += 1
        n += 1
        if mm.rcu.queue:                      # rcu_do_batch: callbacks run soon after their
            hb[HB_OP] = RCU_CALLBACKS         # grace period, between two operations
            hb[HB_SEQ] += 1                   # odd: callbacks free objects (not idle)
            mm.rcu.rcu_process_callbacks()
            hb[HB_SEQ] += 1
        if n % STATS_FLUSH_OPS == 0:
            local[STAT["rcu_backlog_max"]] = mm.rcu.max_backlog
            mm.flush_stats()
            _flush_acct(mm.rcu, acct, times=True)
        if viol[0]:
            break
    acct[ACCT_END] = native.now_ns()
    acct[ACCT_CPU] = time.process_time_ns()
    other_mm_unmap(mm, every=True)
    mm.rcu.rcu_barrier()
    local[STAT["rcu_backlog_max"]] = mm.rcu.max_backlog
    mm.flush_stats()
    _flush_acct(mm.rcu, acct)
    hb[HB_DONE] = 1                           # a clean stop: nothing left in flight
    native.cpu_unregister()


def _flush_acct(rcu, row, times=False):
    if times:                           # the loop so far (a CPU killed mid-run has these)
        row[ACCT_END] = native.now_ns()
        row[ACCT_CPU] = time.process_time_ns()
    row[ACCT_RCU_N], row[ACCT_RCU_SUM], row[ACCT_RCU_MAX] = \
        rcu.invoked, rcu.lat_sum_ns, rcu.lat_max_ns


def _park(ctl, parked):
    native.fetch_add(parked, 1)
    while ctl[PAUSE]:
        native.sleep_ns(50_000)
    native.fetch_add(parked, 2**64 - 1)


class SetupHang(Exception):
    """The parent's set-up made no end within the stall timeout (no watchdog runs yet)."""


@contextlib.contextmanager
def _setup_deadline(seconds):
    """A hang while the parent builds the layout becomes SetupHang, naming where it was
    (SIGALRM interrupts Python code: a loop of the model's, not a wait inside a native
    primitive)."""
    def expired(signum, frame):
        where = []
        while frame is not None and frame.f_code.co_name != "setup_initial":
            where.append(frame.f_code.co_name)
            frame = frame.f_back
        raise SetupHang("the initial layout did not finish within %gs (hang in %s)"
                        % (seconds, " > ".join(reversed(where)) or "setup_initial"))
    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def setup_initial(st):
    """The parent acts as CPU n while it builds the mm and the initial layout; a hang
    there (only broken model code can) raises SetupHang after the stall timeout."""
    n = st.cfg.cpus
    st.smp.init()
    if st.cfg.sched:
        sched.init(st.arena, st.cfg)
    st.smp.become_cpu(n)
    mm = st.mm_for(n)
    with _setup_deadline(st.cfg.stall_timeout):
        mm_init(mm)
        if st.cfg.scenario:
            scenario.setup(mm, st.cfg.scenario)          # its map and populate lines
        else:
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
        self.kills = []
        self.hang = None
        self.interrupted = 0
        self.after_first_from = None    # stamp: the final sweep after a failure began
        self.after_first = 0            # violations that sweep found

    def _sweep(self, st, workers, mm):
        """Stop the world, sweep, resume.  False if the CPUs never all parked."""
        ctl = st.ctl
        ctl[PAUSE] = 1
        deadline = time.monotonic() + self.cfg.stall_timeout
        hb = st.arena["heartbeat"][:, HB_SEQ]
        while int(ctl[PARKED]) < len(workers.poll()):
            if time.monotonic() > deadline:
                ctl[PAUSE] = 0
                unparked = [c for c in workers.poll() if hb[c] & 1]
                self._report_hang(st, mm, unparked or workers.poll())
                return False
            time.sleep(0.0005)
        self.checked += sweep(mm)
        self.sweeps += 1
        st.vmpte_kb_peak = max(st.vmpte_kb_peak, 4 * pt_pages(mm))
        ctl[PAUSE] = 0
        return True

    def run(self, pool=None):
        """One run; with ``pool`` (run/pool.py) in its arena and on its workers."""
        cfg = self.cfg
        st = pool.state(cfg) if pool else RunState(cfg)
        t0 = time.monotonic()
        try:
            try:
                mm = setup_initial(st)
            except SetupHang as e:
                self.errors.append(str(e))
                return self._result(st, time.monotonic() - t0)
            sweeper = debug.Reporter(st.arena, cfg.cpus, -1)
            mm.reporter = sweeper
            mm.report = sweeper.report
            workers = pool.workers(st) if pool else \
                Workers(st.smp, cfg.cpus, lambda cpu: worker_main(st, cpu), pin=cfg.pin)
            workers.start()
            old = {sig: signal.signal(sig, self._on_signal(workers))
                   for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                self._drive(st, workers, mm, t0)
            finally:
                workers.kill()
                for sig, h in old.items():
                    signal.signal(sig, h)
            killed = {k["cpu"] for k in self.kills}
            if not self.interrupted:
                for c, s in sorted(workers.crashed().items()):
                    if c not in killed:
                        self.errors.append("CPU %d: %s" % (c, describe_exit(s)))
            continued = {k["cpu"] for k in self.kills if k["run_continued"]}
            lost = {c for c, s in workers.status.items() if s != 0} - continued
            done = st.arena["heartbeat"][:cfg.cpus, HB_DONE]
            self._final_sweep(st, mm, failed=bool(debug.total(st.arena) or self.errors or lost),
                              clean_stop=bool(done.all()))
            rep = self._result(st, time.monotonic() - t0)
            if cfg.sched:
                sched.add_to_report(rep, st.arena, cfg)
            if rep["exit_code"] != 0:
                try:
                    rep["artifacts"] = artifacts.write(st, rep, self.cfg.artifacts)
                except OSError as e:
                    self.notes.append("could not write artifacts: %s" % e)
            return rep
        finally:
            if not pool:
                st.close()

    def _final_sweep(self, st, mm, failed, clean_stop):
        """The sweep at the end, once every CPU is reaped.  After a clean stop (every CPU
        went through its rcu_barrier) it includes the end-of-run checks.  After a failure
        (a violation, a crash, a hang) it runs too, but a CPU that died mid-operation left
        half-done work: what it finds is counted as after the first violation, and if the
        state trips the sweep itself, that is a note, not a traceback."""
        if failed:
            self.after_first_from = native.now_ns()
            before = debug.total(st.arena)
        try:
            self.checked += sweep(mm, final=clean_stop)
            self.sweeps += 1
            if st.cfg.scenario and clean_stop and not failed:
                from .report import totals
                scenario.check_expect(mm, st.cfg.scenario, totals(st.arena, st.cfg.cpus))
            st.vmpte_kb_end = 4 * pt_pages(mm)
            st.vmpte_kb_peak = max(st.vmpte_kb_peak, st.vmpte_kb_end)
        except Exception as e:
            (self.notes if failed else self.errors).append(
                "the final sweep stopped: %s: %s" % (type(e).__name__, e))
        if failed:
            self.after_first = debug.total(st.arena) - before

    def _on_signal(self, workers):
        """First SIGINT/SIGTERM: stop, report what was done.  Second: leave at once."""
        def handler(signum, frame):
            if self.interrupted:
                try:
                    workers.kill()
                finally:
                    os._exit(128 + signum)
            self.interrupted = signum
        return handler

    def _drive(self, st, workers, mm, t0):
        cfg = self.cfg
        ctl = st.ctl
        deadline = None if cfg.ops else t0 + cfg.duration
        next_sweep = t0 + cfg.check_every if cfg.check_every else None
        monitor = sched.Monitor(st.arena, cfg) if cfg.sched else \
            StallMonitor(st, cfg.stall_timeout)
        killer = random.Random("spfshm-kill:%d" % cfg.seed)
        poll = 0.005 if cfg.sched else 0.05      # a scheduled run is short: look often
        while True:
            workers.wait(poll)
            now = time.monotonic()
            running = workers.poll()
            if not running:
                break
            violated = debug.total(st.arena) > 0
            crashed = [c for c, code in workers.status.items()
                       if code != 0 and c not in [k["cpu"] for k in self.kills]]
            if cfg.sched and monitor.halted():
                workers.kill()      # every CPU waits for a turn that will not come
                break
            # Under --sched a violation ends the run at a point of the schedule (the CPUs
            # stop at their next operation; the schedule halts soon after), never at a
            # wall-clock moment, which would make a slow machine's run another run.
            stop = (violated and not cfg.sched) or (deadline and now >= deadline) \
                or self.interrupted or crashed
            if not stop and cfg.kill_worker and killer.random() < cfg.kill_worker:
                stop = self._kill_one(st, workers, killer)
            if not stop:
                stuck = monitor.stuck(now, running)
                if stuck:
                    why = getattr(monitor, "why", None)
                    if why:
                        self.errors.append(why)
                    self._report_hang(st, mm, stuck, "" if why else None)
                    workers.kill()
                    break
            if stop:
                ctl[STOP] = 1
                ctl[PAUSE] = 0
                # A run that failed already (a violation, a killed or crashed CPU: under
                # --sched one that died holding the turn stops the others for good) or
                # was interrupted gives the others a short grace, then kills them.
                failed = violated or self.kills or self.interrupted or crashed
                grace = VIOLATION_GRACE_S if failed else STOP_TIMEOUT_S
                try:
                    workers.join(grace)
                except WorkerError as e:
                    if failed:
                        self.notes.append("at the end: %s" % e)
                    else:
                        self.errors.append("CPUs did not stop within %.0fs (hang)" % grace)
                break
            if next_sweep and now >= next_sweep:
                if not self._sweep(st, workers, mm):
                    workers.kill()
                    break
                monitor.reset(time.monotonic())
                next_sweep = time.monotonic() + cfg.check_every
            self.progress(st, now - t0, self.sweeps)

    def _kill_one(self, st, workers, rng):
        """--kill-worker: SIGKILL a random running CPU.  Returns True when the run must
        end (the CPU died inside an operation or holding something: the model cannot
        recover its half-done work), False when it continues without it."""
        running = workers.poll()
        if len(running) < 2:
            return False
        cpu = rng.choice(running)
        if not self._wait_for_kill_point(st, cpu, workers.pids[cpu]):
            return False                 # never in the wanted state: no kill this time
        os.kill(workers.pids[cpu], signal.SIGKILL)
        d = dump_cpu(st, cpu)          # as it died: the lock words and its line stay
        while cpu in workers.poll():
            time.sleep(0.001)
        fatal = holds_anything(d)
        self.kills.append({"cpu": cpu, "in_op": d["in_op"], "holds": d["holds"],
                           "irqs_off": bool(d["irq_depth"]), "rcu_reader": d["in_rcu_reader"],
                           "ipi_unacked": d["ipi_unacked"], "run_continued": not fatal})
        what = "%s; holding %s%s%s" % (
            "in %s" % d["in_op"] if d["in_op"] else "between operations",
            ", ".join(d["holds"]) or "no lock",
            ", IRQs off" if d["irq_depth"] else "",
            ", inside an RCU read-side section" if d["in_rcu_reader"] else "")
        if fatal:
            self.errors.append("CPU %d was killed (--kill-worker) %s: the run cannot "
                               "continue" % (cpu, what))
        else:
            self.notes.append("CPU %d was killed (--kill-worker) %s; the run continued "
                              "without it" % (cpu, what))
        return fatal

    def _wait_for_kill_point(self, st, cpu, pid, limit_s=2.0):
        """--kill-at: freeze the victim (SIGSTOP), look at its published state, and leave
        it frozen if it is where we want it; otherwise let it run a little and look
        again.  The SIGKILL that follows lands in exactly the state we saw.  False if the
        state never came.  ``pid`` is the one fork returned: the CPU's slot has none
        until the worker registers (and kill(0) would stop the whole process group)."""
        want = self.cfg.kill_at
        pc, w = st.arena["percpu"][cpu], st.arena["waiting"][cpu]
        ptl = st.arena["pt_meta"]["ptl"]
        hb = st.arena["heartbeat"][cpu]
        test = {"any": lambda: True,
                "idle": lambda: not hb[HB_SEQ] & 1,
                "irqs-off": lambda: pc["irq_depth"] > 0,
                "rcu": lambda: pc["rcu_snap"] != 0,
                "lock": lambda: bool(w[3] or w[4] or (ptl == cpu + 1).any())}[want]
        deadline = time.monotonic() + limit_s
        while True:
            os.kill(pid, signal.SIGSTOP)
            while not _stopped(pid):
                pass
            if test():
                return True
            os.kill(pid, signal.SIGCONT)
            if time.monotonic() > deadline:
                return False
            time.sleep(random.random() * 0.0002)

    def _report_hang(self, st, mm, stuck, how_long=None):
        """how_long: the text after "made no progress" (default: for the stall timeout)."""
        secs = self.cfg.stall_timeout
        if how_long is None:
            how_long = " for %.0fs" % secs
        dumps = [dump_cpu(st, c) for c in range(self.cfg.cpus)]
        self.hang = [format_dump(d) for d in dumps]
        # A CPU whose process the OS stopped is named first even when a CPU waiting on
        # it went stuck a moment before it (whose heartbeat moved until the stop).
        stuck = [c for c in os_stalled(dumps) if c not in stuck] + list(stuck)
        for c in stuck:
            d = dumps[c]
            mm.report("hang", "watchdog", 0, c, int(secs * 1000), 0)
            self.errors.append("hang: CPU %d made no progress%s (%s; waits for %s; "
                               "process %s): %s"
                               % (c, how_long, "in %s" % d["in_op"] if d["in_op"] else "idle",
                                  ", ".join(d["waits_for"]) or "nothing", d["process"],
                                  stall_cause(d, dumps)))

    def _result(self, st, elapsed):
        from .report import build_report
        return build_report(st, self, elapsed)


def _stopped(pid):
    return process_state(pid) in ("stopped", "zombie", "dead")


def run_stress(cfg, progress=lambda *a: None):
    """Run one configuration; returns the report dict (see run/report.py)."""
    return Stress(cfg, progress).run()
