"""Runs inside a mutant's private copy (``python -m spfshm.mutate.child CAMPAIGN_JSON``,
cwd and PYTHONPATH the copy): the campaign's seeds in order, one JSON line per event on
stdout, stopping at the first seed that is not clean.  A seed is its stress run and,
with ``diffkernel`` on, once that is clean, its diff-kernel replay (the real kernel
judges what no invariant does: a syscall's result, its errno, what a page holds).
Once every seed is clean, each of ``scenario_files`` is explored up to ``scenarios``
preemptions (spfshm explore: a window a few primitives wide, found by enumeration), and
once all are clean, with ``deeper`` N, each again up to one preemption more, at most N
schedules each (iterative deepening within the time limit: the races of two preemptions
that a level-K scenario cannot open).

Lines: ``start`` (which files ``import spfshm`` and its native core resolved to: the
caller checks they are the copy's), one ``seed`` per seed run (``t`` seconds since
start when it ended), ``done`` when every seed ran clean.
"""
import dataclasses
import json
import os
import sys
import tempfile
import time
import traceback


def emit(**event):
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def run(campaign):
    import spfshm
    from spfshm import _native
    emit(event="start", spfshm=spfshm.__file__, native=_native.__file__)
    from spfshm.run.campaign import config_for
    from spfshm.run.runner import run_stress
    t0 = time.monotonic()
    a, b = campaign["seeds"]
    for seed in range(a, b):
        cfg = config_for(seed, campaign["ops"], campaign["cpus"])
        change = {"perturb": campaign["perturb"]}
        if campaign["delay"] is not None:
            change["delay"] = campaign["delay"]
        if campaign["stall"] is not None:
            change["stall_timeout"] = campaign["stall"]
        with tempfile.TemporaryDirectory() as art:
            cfg = dataclasses.replace(cfg, artifacts=art, **change).resolved()
            try:
                rep = run_stress(cfg)
            except Exception as e:           # the mutated code crashed the run itself
                emit(event="seed", seed=seed, exit_code=-1, t=time.monotonic() - t0,
                     signature="crash: %s: %s" % (type(e).__name__, str(e)[:200]),
                     repro=cfg.repro(), trace=traceback.format_exc()[-2000:])
                return
        sig = rep["violations"][0]["signature"] if rep["violations"] else \
            "error: %s" % rep["errors"][0][:200] if rep["errors"] else \
            "exit %d" % rep["exit_code"] if rep["exit_code"] else None
        if rep["exit_code"] == 0 and campaign["diffkernel"] == "on":
            rep, sig = _diff_kernel(seed)
        emit(event="seed", seed=seed, exit_code=rep["exit_code"], signature=sig,
             t=time.monotonic() - t0, repro=rep["repro"])
        if rep["exit_code"] != 0:
            return
    files = campaign.get("scenario_files", [])
    for path in files:
        if not _explore(path, campaign["scenarios"], t0):
            return
    for path in files if campaign.get("deeper") else ():
        if not _explore(path, campaign["scenarios"] + 1, t0, campaign["deeper"]):
            return
    emit(event="done", t=time.monotonic() - t0)


def explore_scenario(path, bound, max_schedules=0):
    """A scenario explored up to ``bound`` preemptions, then, if clean, its fail-nth sweep
    (run/inject.py: each out-of-memory exit), as the campaign does (also coverage.py's
    profiled run): its first failure, or None.  With ``max_schedules`` (the deeper
    pass) at most that many schedules, and no sweep (it ran at the bound below)."""
    from spfshm.run import scenario
    from spfshm.run.explore import Explorer
    from spfshm.run.inject import Sweep
    with tempfile.TemporaryDirectory() as art:
        cfg = scenario.config_of(path, artifacts=art, sched="list").resolved()
        f = Explorer(cfg, bound, max_schedules=max_schedules).explore().failure
        return f if f or max_schedules else Sweep(cfg).run().failure


def _explore(path, bound, t0, max_schedules=0):
    """Explore one scenario; emits a seed event (its file name for the seed) and returns
    whether it was clean."""
    f = explore_scenario(path, bound, max_schedules)
    if f is None:
        repro = "spfshm explore %s --preemptions %d%s" % (
            path, bound, " --max-schedules %d" % max_schedules if max_schedules
            else " --fail-nth-sweep")
    else:
        repro = "%s (schedule %d, %d preemption(s); token %s)" % (
            f["repro"], f["schedule"], f["preemptions"], f["token"])
    emit(event="seed", seed=os.path.basename(path), exit_code=f["exit_code"] if f else 0,
         signature=f and f["signature"], t=time.monotonic() - t0, repro=repro)
    return f is None


DK_OPS, DK_PAGES = 150, 64


def _diff_kernel(seed):
    """The seed's diff-kernel replay: (a report-like dict, the signature or None).  Odd
    seeds run the model's DONTNEED under the VMA's read lock (--madvise-lock vma)."""
    from spfshm import diffkernel as dk
    lock = "vma" if seed % 2 else "mmap"
    repro = "spfshm diff-kernel --seed %d --ops %d --pages %d%s" % (
        seed, DK_OPS, DK_PAGES, " --madvise-lock vma" if lock == "vma" else "")
    d = dk.compare(dk.random_ops(seed, DK_OPS, DK_PAGES), DK_PAGES, madvise_lock=lock)
    if d is None:
        return {"exit_code": 0, "repro": repro}, None
    return {"exit_code": 1, "repro": repro}, "diverge@%s:%s" % (d["op"]["op"], d["field"])


if __name__ == "__main__":
    from spfshm import native
    native.die_with_parent()        # the xdist worker that runs us (harness.py)
    run(json.loads(sys.argv[1]))
