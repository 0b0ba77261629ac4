"""``spfshm replay --token T``: run a token's configuration under its schedule K times.
The controlled scheduler is deterministic, so every run must give the token's first
violation signature and its digest; the report counts both.

``spfshm replay ARTIFACT --deterministic``: turn a real-parallel failure into a token.
The search keeps what the artifact fixes: the configuration and the seed (so each CPU's
operation sequence is the recorded one) and each CPU's operation count at the end (the
CPUs stop soon after the first violation; after a hang the count lags by up to the
runner's STATS_FLUSH_OPS, which the search adds).  It tries, in order, until a run's
first violation has the artifact's signature or the budget is spent:
  1. the recorded event order (the artifact's events.json: IPIs sent and handled, tables
     allocated, unlinked and freed, in stamp order) as a GUIDED schedule: the CPU whose
     recorded event is next runs until it records it (only when no ring wrapped, so the
     record starts at the run's start);
  2. PCT with depths 2, 3 and 4 in turn, over scheduler seeds 0, 1, 2...
"""
import dataclasses
import json
import os
import time

from ..config import Config, ConfigError
from ..run import sched
from ..run.replay import load, signature_of
from ..run.runner import STATS_FLUSH_OPS, run_stress

PCT_DEPTHS = (2, 3, 4)


def config_of_token(token, artifacts):
    """The token's Config (resolved), its digest and signature; TokenError as is."""
    d, digest, sig = sched.read_token(token)
    cfg = Config.from_dict(dict(d, artifacts=artifacts))
    try:
        return cfg.resolved(), digest, sig
    except ConfigError as e:
        raise sched.TokenError("the token's configuration is not valid here: %s" % e)


def replay_token(token, repeat, artifacts, run=run_stress):
    cfg, digest, sig = config_of_token(token, artifacts)
    runs = []
    for k in range(repeat):
        t0 = time.monotonic()
        rep = run(cfg)
        got = signature_of(rep)
        runs.append({"run": k, "signature": got, "digest": rep["sched"]["digest"],
                     "hit": got == sig, "same_digest": rep["sched"]["digest"] == digest,
                     "elapsed_s": round(time.monotonic() - t0, 3)})
    return {"signature": sig, "digest": digest, "repeat": repeat,
            "hits": sum(r["hit"] for r in runs),
            "same_digest": sum(r["same_digest"] for r in runs), "runs": runs,
            "config_line": cfg.describe(), "last_report": rep if repeat else None}


def guide_of(artifact, ncpus):
    """The recorded event order as a GUIDED list (the CPU of each event), or None when
    the artifact has none usable (no events.json, a ring wrapped)."""
    try:
        with open(os.path.join(artifact, "events.json")) as f:
            ev = json.load(f)
    except (OSError, ValueError):
        return None
    if ev.get("wrapped"):
        return None
    return tuple(e[0] for e in ev["events"]
                 if e[2] in sched.GUIDE_EVENTS and 0 <= e[0] < ncpus)


def candidates(cfg, guide):
    """The schedules to try, in order (endless)."""
    if guide:
        yield dataclasses.replace(cfg, sched="guided", sched_list=guide)
    k = 0
    while True:                # the run's seed fixes the op sequences: vary the schedule's
        for d in PCT_DEPTHS:
            yield dataclasses.replace(cfg, sched="pct:%d" % d, sched_list=(), sched_seed=k)
        k += 1


def find_schedule(artifact, budget_runs, budget_s, out_dir, progress=print, run=run_stress):
    cfg0, sig = load(artifact)
    if sig is None:
        raise ConfigError("%s recorded no violation or hang: nothing to find" % artifact)
    with open(os.path.join(artifact, "report.json")) as f:
        rep0 = json.load(f)
    ops = rep0.get("ops_per_cpu")
    if not ops:
        raise ConfigError("%s has no per-CPU op counts (made by an older spfshm)" % artifact)
    # A CPU's op counter is flushed every STATS_FLUSH_OPS ops and at a clean end: after a
    # hang or a crash it lags by up to that many (the run stops at the violation anyway).
    slack = STATS_FLUSH_OPS
    base = dataclasses.replace(cfg0, artifacts=out_dir, kill_worker=0.0,
                               ops=max(ops) + slack, duration=Config.duration,
                               cpu_ops=tuple(n + slack for n in ops))
    guide = guide_of(artifact, cfg0.cpus)
    t0, tries = time.monotonic(), 0
    for cand in candidates(base, guide):
        if tries >= budget_runs or time.monotonic() - t0 > budget_s:
            break
        tries += 1
        rep = run(cand.resolved())
        got = signature_of(rep)
        if progress and tries % 10 == 0:
            progress("  %d schedules tried, %.0f s" % (tries, time.monotonic() - t0))
        if got == sig:
            return {"found": True, "tries": tries, "seconds": round(time.monotonic() - t0, 2),
                    "schedule": cand.sched, "signature": sig, "token": rep["sched"]["token"],
                    "guided": guide is not None}
    return {"found": False, "tries": tries, "seconds": round(time.monotonic() - t0, 2),
            "signature": sig, "guided": guide is not None}
