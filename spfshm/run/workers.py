"""Worker processes ("CPUs"): forked, tied to the parent's life, reaped and accounted.

Each worker is forked from the parent (inheriting the arena mapping), asks the kernel to
SIGKILL it when the parent dies (PR_SET_PDEATHSIG, so ``kill -9`` of the parent leaves no
orphan spinning), becomes CPU ``i`` in the SMP substrate, optionally pins itself to a core,
and runs ``target(i)``.  Its exit code is 0 on success, 1 if ``target`` raised (the
traceback goes to stderr).  The parent marks a reaped CPU dead so IPI senders and grace
periods stop waiting for it.  A worker the parent could not reap (someone else did:
``waitpid`` says there is no such child) ended in an unknown way: its status is
``EXIT_UNKNOWN``, a crash.
"""
import os
import select
import signal
import sys
import time
import traceback

import psutil

from .. import native


EXIT_UNKNOWN = None             # status of a worker reaped by someone else


class WorkerError(RuntimeError):
    pass


def describe_exit(code):
    """A worker's end in words: ``exited with status 1``, ``killed by SIGSEGV``..."""
    if code is EXIT_UNKNOWN:
        return "exit status unknown (already reaped)"
    if code < 0:
        return "killed by %s" % signal.Signals(-code).name
    return "exited with status %d" % code


class Workers:
    def __init__(self, smp, ncpus, target, pin=True):
        self.smp, self.ncpus, self.target, self.pin = smp, ncpus, target, pin
        self.pids = {}          # cpu -> pid
        self.status = {}        # cpu -> exit code (negative: killed by signal; EXIT_UNKNOWN)
        self.killed = {}        # cpu -> the signal kill() sent it
        self.pidfds = {}        # cpu -> a pidfd of a worker not reaped yet (wait())

    def start(self):
        cores = _usable_cores()
        for cpu in range(self.ncpus):
            pid, pidfd = fork_cpu(cpu, lambda cpu=cpu: self._body(cpu), self.pin, cores)
            self.pids[cpu] = pid
            if pidfd is not None:
                self.pidfds[cpu] = pidfd
        return self

    def _body(self, cpu):
        self.smp.become_cpu(cpu)
        self.target(cpu)
        return 0

    def poll(self):
        """Reap whoever exited; returns the CPUs still running."""
        for cpu, pid in self.pids.items():
            if cpu in self.status:
                continue
            try:
                got, st = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:       # reaped by someone else: its end is unknown
                self.status[cpu] = EXIT_UNKNOWN
            else:
                if not got:
                    continue
                self.status[cpu] = os.waitstatus_to_exitcode(st)
            native.cpu_mark_dead(cpu)
            if cpu in self.pidfds:
                os.close(self.pidfds.pop(cpu))
        return [c for c in self.pids if c not in self.status]

    def _fds(self):
        """What ``wait`` watches: a pidfd per worker not reaped yet."""
        return list(self.pidfds.values())

    def wait(self, timeout):
        """Sleep up to ``timeout`` seconds; a worker's exit ends it early (its pidfd
        becomes readable), so a short run is reaped when it ends, not a poll later."""
        fds = self._fds()
        if fds:
            select.select(fds, [], [], timeout)
        else:
            time.sleep(timeout)

    def join(self, timeout=None):
        """Wait for every worker; on timeout kill them all and raise WorkerError."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.0005
        while self.poll():
            if deadline is not None and time.monotonic() > deadline:
                running = self.poll()
                self.kill()
                raise WorkerError("CPUs %s still running after %.1fs; killed" % (running, timeout))
            self.wait(delay)
            delay = min(delay * 2, 0.02)
        return self.status

    def kill(self, sig=signal.SIGKILL):
        for cpu, pid in self.pids.items():
            if cpu not in self.status:
                self.killed[cpu] = sig
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        while self.poll():
            time.sleep(0.001)

    def crashed(self):
        """CPUs that ended badly on their own (not by ``kill()``): cpu -> status."""
        return {c: s for c, s in self.status.items()
                if s != 0 and not (c in self.killed and s == -self.killed[c])}

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.kill()
        return False


def fork_cpu(cpu, body, pin, cores):
    """Fork the worker of CPU ``cpu``: it dies with the parent (and exits at once if the
    parent died before it could ask), leaves SIGINT to the parent, is pinned to a core
    of ``cores`` if ``pin``, runs ``body()`` and exits with what it returns (1 if it
    raised: the traceback goes to stderr).  Returns (pid, a pidfd of it or None)."""
    parent = os.getpid()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            native.die_with_parent()
            if os.getppid() != parent:          # the parent died before prctl
                os._exit(1)
            signal.signal(signal.SIGINT, signal.SIG_IGN)   # the parent decides
            if pin and cores:
                try:
                    psutil.Process().cpu_affinity([cores[cpu % len(cores)]])
                except (psutil.Error, OSError):
                    pass
            code = body()
        except BaseException:
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    try:
        return pid, os.pidfd_open(pid)
    except (AttributeError, OSError):           # before Linux 5.3: wait() sleeps
        return pid, None


def run_workers(smp, ncpus, target, timeout=120.0, pin=True):
    """Run target(cpu) on ncpus workers; raise WorkerError if any failed."""
    with Workers(smp, ncpus, target, pin) as w:
        status = w.join(timeout)
    bad = {c: s for c, s in status.items() if s != 0}
    if bad:
        raise WorkerError("workers failed: %s" % ", ".join(
            "CPU %d %s" % (c, describe_exit(s)) for c, s in sorted(bad.items())))
    return status


def _usable_cores():
    try:
        return sorted(psutil.Process().cpu_affinity())
    except (psutil.Error, OSError, AttributeError):
        return []
