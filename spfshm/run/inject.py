"""Systematic fault injection over a litmus scenario: syzkaller's fail-nth sweep.

A random failure rate (mm_types: FAULT_ALLOC_FAIL and its kin) reaches an out-of-memory
exit only as often as its rate allows, and a scenario's one seed may never draw it.  The
sweep makes each reachable: the scenario's schedule without preemption runs once with
``Config.fail_nth`` N for N = 1, 2, ... (each CPU's N-th allocation that may fail fails,
and no other), until a run injects nothing (no CPU attempted N of them).  Every run is an
ordinary run under the controlled scheduler, with all the checkers; the first that fails
stops the sweep, with its token (which carries N).
"""
import dataclasses

from .explore import Explorer
from .pool import runs

MAX_N = 256          # a bound on the sweep: the shipped scenarios attempt far fewer


class InjectionError(RuntimeError):
    """The injection itself went wrong (not a violation of the model under test)."""


def check_injection(n, per_cpu):
    """With fail-nth ``n``, each CPU's (attempts, injected, the attempt that failed)
    must show that its n-th attempt failed and no other: one failure, at attempt n, if it
    attempted n or more, else none."""
    for cpu, (attempts, injected, at) in enumerate(per_cpu):
        if injected != (attempts >= n) or (injected and at != n):
            raise InjectionError(
                "fail-nth %d: CPU %d injected %d failure(s) in %d attempt(s)%s: exactly its "
                "%d-th attempt must fail" % (n, cpu, injected, attempts,
                                             " (at attempt %d)" % at if injected else "", n))


class Sweep:
    """The sweep of ``cfg`` (a resolved scenario Config); ``run()`` fills ``runs``,
    ``failure`` (Explorer's failure dict, plus ``fail_nth``) and ``exhausted`` (a run
    injected nothing before MAX_N).  ``run(cfg)`` runs one (default: a pool of its own
    for the sweep, run/pool.py)."""

    def __init__(self, cfg, run=None):
        self.cfg, self.run_given = cfg, run
        self.runs, self.failure, self.exhausted = 0, None, False

    def run(self):
        with runs(self.run_given) as self.run_one:
            return self._sweep()

    def _sweep(self):
        for n in range(1, MAX_N + 1):
            injected = []

            def one(cfg):
                rep = self.run_one(cfg)
                injected.append(rep["fail_nth"]["injected"])
                check_injection(n, rep["fail_nth"]["per_cpu"])
                return rep
            ex = Explorer(dataclasses.replace(self.cfg, fail_nth=n), 0, max_schedules=1,
                          run=one).explore()
            self.runs += 1
            if ex.failure:
                self.failure = dict(ex.failure, fail_nth=n)
                return self
            if ex.interrupted or not injected or not injected[0]:
                self.exhausted = not ex.interrupted
                return self
        return self

    def verdict(self):
        if self.failure:
            return "fault injection: VIOLATION %s with fail-nth %d (after %d runs)" % (
                self.failure["signature"], self.failure["fail_nth"], self.runs)
        if not self.exhausted:
            return "fault injection: fail-nth 1..%d, no violation (stopped at the bound)" \
                % self.runs
        return "fault injection: each of the %d allocations that may fail failed in turn, " \
            "no violation (%d runs)" % (self.runs - 1, self.runs)
