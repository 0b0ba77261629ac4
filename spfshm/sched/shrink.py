"""``spfshm shrink TOKEN``: the smallest schedule that still shows a token's failure.

1. The token's run is made explicit: its switch log, replayed as a LIST schedule, with
   each CPU's operation count cut to the operations it had begun when the run stopped
   (under the scheduler every CPU stops at its first operation boundary after a
   violation; one that a deadlock or a hang stopped inside an operation has begun it).
2. Fewest switches: delta debugging over the switch list (Choi and Zeller, "Isolating
   Failure-Inducing Thread Schedules", ISSTA 2002: ddmin over the switch points, then
   one-switch removal until 1-minimal), keeping the first violation's signature and
   never more preemptions than the token's run.  A
   dropped switch is a preemption that does not happen (the CPU goes on) or a forced
   switch that goes to the next CPU in id order.
3. Fewest operations: per CPU, the smallest count that still fails (from zero up by
   bisection, assuming that a longer prefix of the same CPU's operations fails too, and
   checked).
A time budget bounds steps 2 and 3: past it, the smallest failing schedule found so far
is the result (``complete`` False).  The last run (the shrunk token's) writes an artifact: its timeline.txt has one column
per CPU with only the events that make the steps (locks, IRQs-off and RCU sections,
IPIs, tables, switches, violations), and trace.json the same for Perfetto.
"""
import dataclasses
import json
import time

from ..run.replay import signature_of
from ..run import pool
from ..shrink import Shrinker
from .replay import config_of_token


class _OutOfTime(Exception):
    pass


def shrink_token(token, out_dir, progress=None, run=None, budget_s=600.0):
    cfg, _, sig = config_of_token(token, out_dir)
    with pool.runs(run) as run:
        return _shrink(cfg, sig, progress, run, budget_s)


def _shrink(cfg, sig, progress, run, budget_s):
    t0 = time.monotonic()
    first = run(cfg)
    if signature_of(first) is None:
        raise ValueError("the token's run shows no violation here: nothing to shrink")
    sig = signature_of(first)
    log = first["sched"]["log"]
    if log is None:
        raise ValueError("the token's run made more switches than the log holds (%d steps):"
                         " shrink a shorter run" % first["sched"]["steps"])
    ops = tuple(first["sched"]["ops_begun"])
    base = dataclasses.replace(cfg, sched="list", sched_list=tuple(log), cpu_ops=ops,
                               ops=max(ops) if ops else cfg.ops)
    runs = [0]
    deadline = time.monotonic() + budget_s

    most = [first["sched"]["preemptions"]]

    def fails(c):
        """Same signature, and no more preemptions than the schedule it shrinks (a list
        with fewer entries may preempt more: dropping a forced switch changes who runs)."""
        if runs[0] and time.monotonic() > deadline:
            raise _OutOfTime()
        runs[0] += 1
        rep = run(c)
        return signature_of(rep) == sig and rep["sched"]["preemptions"] <= most[0]

    if not fails(base):
        raise ValueError("the token's schedule, made explicit, no longer fails: the run is "
                         "not deterministic here (a bug of the scheduler; please report it)")
    sh = Shrinker(lambda lst: fails(dataclasses.replace(base, sched_list=tuple(lst))),
                  key=lambda lst: json.dumps(lst), progress=progress, unit="switches")
    complete = True
    try:
        switches = [] if sh.test([]) else sh.shrink(list(log))
    except _OutOfTime:
        switches, complete = sh.best if sh.best is not None else list(log), False
    cur = dataclasses.replace(base, sched_list=tuple(switches))
    cpu_ops = list(ops)
    for c in range(len(cpu_ops) if complete else 0):
        try:
            cpu_ops[c] = _fewest_ops(cur, cpu_ops, c, fails)
        except _OutOfTime:
            complete = False
            break
        cur = dataclasses.replace(cur, cpu_ops=tuple(cpu_ops))
    last = run(cur)
    if signature_of(last) != sig:
        raise ValueError("the shrunk schedule no longer fails (the op counts interact): "
                         "please report it with the token")
    return dict(signature=sig, runs=runs[0] + 2, complete=complete,
                  seconds=round(time.monotonic() - t0, 2),
                  before={"switches": len(log), "preemptions": first["sched"]["preemptions"],
                          "steps": first["sched"]["steps"], "ops_per_cpu": list(ops)},
                  after={"switches": last["sched"]["switches"],
                         "preemptions": last["sched"]["preemptions"],
                         "steps": last["sched"]["steps"], "ops_per_cpu": cpu_ops},
                  token=last["sched"]["token"], artifacts=last.get("artifacts"),
                  report=last)


def _fewest_ops(cfg, cpu_ops, c, fails):
    """The smallest op count of CPU c that still fails with the others fixed."""
    def with_n(n):
        o = list(cpu_ops)
        o[c] = n
        return dataclasses.replace(cfg, cpu_ops=tuple(o))
    hi = cpu_ops[c]
    if hi == 0 or fails(with_n(0)):
        return 0
    lo = 0                                   # lo passes, hi fails
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fails(with_n(mid)):
            hi = mid
        else:
            lo = mid
    return hi
