"""CPUs that stay alive across the scheduled runs of one layout (``Pool``): explore, the
fail-nth sweep and other searches run hundreds of short runs of one scenario, and most of
a fresh run's time went to making it, not running it (a new arena faulted in and
zeroed; two forks of the parent, whose CPUs then fault in every page they touch: the
copy-on-write of the Python heap, and the arena's pages, which fork does not copy for a
shared mapping).  A pool keeps both: one arena, zeroed before each run, and one worker
process per CPU, which runs the next run's ``worker_main`` when told.

One run through the pool, stated once (``Pool.run``; ``PoolRun`` is the runner's view of
the workers, the interface of ``Workers``):
  1. the parent zeroes the arena and builds the run's initial state in it
     (``setup_initial``: everything a fresh arena gets), the workers blocked on their
     pipes, touching nothing
  2. it sends each worker the run's Config (a pickle on the worker's pipe: the write is
     the worker's go; partner: the read in ``_serve``)
  3. the worker becomes its CPU, runs ``worker_main`` (the same code as a forked
     worker's), unregisters, and writes its status byte on its own pipe back (partner:
     ``PoolRun.poll``'s read); a worker whose run raised writes 1 and exits, as a forked
     one would
  4. the runner watches, stops and reaps the run as it does a fresh one; a worker it
     had to kill (a hang, a violation's grace, a halted schedule) or that exited is
     gone: the next run forks a new one for that CPU.
Why the runs are the same runs: a run's outcome under the controlled scheduler is a
function of its Config and the arena it starts from (test_sched's determinism tests;
test_pool runs every schedule of a scenario both ways and compares the digests); step 1
gives it the arena a fresh run starts from, and each run's
objects (the MM, the CPU, its workload, its generators) are built inside
``worker_main``, never carried over.  The scheduler's region is sized for a list of up
to ``LIST_CAPACITY`` entries, or the longest a search has given it (a longer one rebuilds
the pool), so that the schedules of one search share one layout.
"""
import contextlib
import dataclasses
import os
import pickle
import select
import signal
import struct
import sys
import traceback

import numpy as np

from .. import native
from ..bugs import Bugs
from .runner import RunState, Stress, worker_main
from .workers import EXIT_UNKNOWN, Workers, _usable_cores, fork_cpu

LIST_CAPACITY = 256


def _capacity(n):
    """The switch-list capacity a pool gives a list of n entries."""
    n = max(LIST_CAPACITY, n)
    return 1 << (n - 1).bit_length()


@contextlib.contextmanager
def runs(run=None):
    """``run`` (a function of a Config returning its report) if given; else, for the
    duration, a pool's: what a search that makes many runs of one layout uses."""
    if run is not None:
        yield run
        return
    with Pool() as pool:
        yield pool.run


class Pool:
    """Runs scheduled Configs of one layout with one arena and one set of workers.  Use
    as a context manager (or call ``close``); ``run(cfg)`` is ``run_stress(cfg)``."""

    def __init__(self):
        self.st = None
        self.procs = {}           # cpu -> (pid, pidfd, to-worker fd, from-worker fd)
        self.runs = 0
        self.cap = 0              # the switch-list capacity: it only grows (a search
        #                           alternates long guided lists and empty ones)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def run(self, cfg, progress=lambda *a: None):
        if not cfg.sched:
            raise ValueError("a pool runs scheduled runs only (--sched)")
        return Stress(cfg, progress).run(pool=self)

    # -- the runner's side -----------------------------------------------------------------
    def state(self, cfg):
        """The RunState of the next run: the pool's, its arena zeroed (step 1)."""
        self.cap = max(self.cap, _capacity(len(cfg.sched_list)))
        layout_cfg = dataclasses.replace(cfg, sched_list=(0,) * self.cap)
        if self.st is None or \
                RunState.layout_for(layout_cfg).regions != self.st.layout.regions:
            self.close()
            self.st = RunState(layout_cfg)
        else:
            self._reset(self.st)
        _bind(self.st, cfg)
        self.st.vmpte_kb_peak = self.st.vmpte_kb_end = 0
        return self.st

    @staticmethod
    def _reset(st):
        """The arena as a new one is: every byte zero."""
        np.frombuffer(st.arena.shm.buf, dtype=np.uint8)[:] = 0

    def workers(self, st):
        """The runner's view of this run's workers (not started yet)."""
        return PoolRun(self, st)

    def close(self):
        """Kill the workers and unmap the arena."""
        for cpu in list(self.procs):
            self._drop(cpu, signal.SIGKILL)
        if self.st is not None:
            self.st.close()
            self.st = None

    # -- the workers -----------------------------------------------------------------------
    def _ensure(self, st):
        """A live worker for each CPU: the ones that died since (killed from outside)
        are reaped and forked anew."""
        for cpu, (pid, *_rest) in list(self.procs.items()):
            if os.waitpid(pid, os.WNOHANG)[0]:
                self._forget(cpu)
        cores = _usable_cores()
        for cpu in range(st.cfg.cpus):
            if cpu in self.procs:
                continue
            to_r, to_w = os.pipe()
            from_r, from_w = os.pipe()
            others = [fd for _, *fds in self.procs.values() for fd in fds if fd is not None]

            def body(cpu=cpu, mine=(to_r, from_w), others=others + [to_w, from_r]):
                for fd in others:          # the other workers' ends and the parent's
                    os.close(fd)           # (else a worker would keep their pipes open)
                return _serve(st, cpu, *mine)
            pid, pidfd = fork_cpu(cpu, body, st.cfg.pin, cores)
            os.close(to_r)
            os.close(from_w)
            self.procs[cpu] = (pid, pidfd, to_w, from_r)

    def _forget(self, cpu):
        """Close a worker's ends and drop it (it was reaped); its pid."""
        pid, pidfd, w, r = self.procs.pop(cpu)
        for fd in (w, r, pidfd):
            if fd is not None:
                os.close(fd)
        return pid

    def _drop(self, cpu, sig=None):
        """Forget a worker: kill it if asked, close its ends, reap it; its exit code."""
        pid = self._forget(cpu)
        if sig is not None:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            return EXIT_UNKNOWN
        return os.waitstatus_to_exitcode(status)


def _bind(st, cfg):
    """The pool's RunState as the run of ``cfg`` sees it (its layout is the pool's)."""
    st.cfg = cfg
    st.bugs = Bugs(cfg.bugs)


def _fresh_cpu_state(st):
    """The native per-process state a forked worker inherits from the parent's set-up,
    not what the last run left (its nesting counts, its spin_bug count: an unlock of a
    free lock after the run's last check would be the next run's violation)."""
    st.smp.attach()
    native.spin_bugs_take()


def _serve(st, cpu, rfd, wfd):
    """A pool worker's life: per Config received (step 2), one run as CPU ``cpu`` (step
    3); 0 when the parent closed the pipe."""
    rfile = os.fdopen(rfd, "rb")
    while True:
        try:
            cfg = pickle.load(rfile)
        except EOFError:
            return 0
        _bind(st, cfg)
        code = 0
        try:
            _fresh_cpu_state(st)
            st.smp.become_cpu(cpu)
            worker_main(st, cpu)
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os.write(wfd, struct.pack("B", code))
        if code:
            return code


class PoolRun(Workers):
    """One run's workers, as the runner sees a ``Workers``: its start, poll, wait and
    kill are the pool's; join and crashed are Workers'."""

    def __init__(self, pool, st):
        super().__init__(st.smp, st.cfg.cpus, None, st.cfg.pin)
        self.pool, self.st = pool, st

    def start(self):
        self.pool._ensure(self.st)
        msg = pickle.dumps(self.st.cfg)
        for cpu in range(self.ncpus):
            pid, _, w, _ = self.pool.procs[cpu]
            self.pids[cpu] = pid
            view = memoryview(msg)
            try:
                while view:                # a long switch list is more than a pipe holds
                    view = view[os.write(w, view):]
            except BrokenPipeError:        # it died since _ensure: poll() reports it
                pass
        self.pool.runs += 1
        return self

    def _end(self, cpu, code):
        self.status[cpu] = code
        native.cpu_mark_dead(cpu)

    def poll(self):
        """Collect the CPUs whose run ended (a status byte, or their exit); returns the
        CPUs still running."""
        for cpu in range(self.ncpus):
            if cpu in self.status:
                continue
            pid, _, _, r = self.pool.procs[cpu]
            if select.select([r], [], [], 0)[0]:
                b = os.read(r, 1)
                if b and b[0] == 0:
                    self._end(cpu, 0)
                    continue
                if b:                      # it raised and is exiting: reap it
                    self._end(cpu, self.pool._drop(cpu))
                    continue
            got, st = os.waitpid(pid, os.WNOHANG)
            if got:                        # died without a word (killed, crashed)
                self.pool._forget(cpu)
                self._end(cpu, os.waitstatus_to_exitcode(st))
        return [c for c in range(self.ncpus) if c not in self.status]

    def _fds(self):
        """A running worker's status pipe and its pidfd: a status byte or an exit."""
        fds = []
        for cpu in range(self.ncpus):
            if cpu not in self.status and cpu in self.pool.procs:
                _, pidfd, _, r = self.pool.procs[cpu]
                fds += [r] + ([pidfd] if pidfd is not None else [])
        return fds

    def kill(self, sig=signal.SIGKILL):
        """Kill the CPUs still running (their processes: the next run forks new ones)."""
        for cpu in self.poll():
            self.killed[cpu] = sig
            self._end(cpu, self.pool._drop(cpu, sig))
