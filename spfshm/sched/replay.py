"""``spfshm replay --token T``: run a token's configuration under its schedule K times.
The controlled scheduler is deterministic, so every run must give the token's first
violation signature and its digest; the report counts both.

``spfshm replay ARTIFACT --deterministic``: turn a real-parallel failure into a token.
The search keeps what the artifact fixes: the configuration and the seed (so each CPU's
operation sequence is the recorded one) and each CPU's operation count at the violation
(from its last recorded operation start; without one, the count at the end plus the
runner's STATS_FLUSH_OPS, by which it lags after a hang).  It tries, in order, until a
run's first violation has the artifact's signature or the budget is spent:
  1. the recorded event order (the artifact's events.json: IPIs sent and handled, tables
     allocated, unlinked and freed, in stamp order) as a GUIDED schedule: the CPU whose
     recorded event is next runs until it records it (only when no ring wrapped, so the
     record starts at the run's start);
  2. in turn, three placed preemptions (one of each kind) each followed by an
     overlapping order (3, below), then PCT of the whole run (depths 2, 3 and 4 in
     turn, over scheduler seeds 0, 1, 2...).  Every placed
     preemption follows the recorded order of operation starts as a GUIDED schedule
     in which each entry runs its operation to its end (an operation's effects come
     where it began: a zap that began before another CPU's stores zaps before them,
     as it mostly did in the run).  The order leaves out each CPU's last start (the
     operation it was in when the violation came), so it puts every CPU at the
     operations that raced; the one preemption inside them is what parallelism gave,
     and most catalogue races need no more (spfshm shrink).  The kinds:
     - at a point: then CPU X alone until its P-th scheduling point, and every other
       CPU before it from there (P = 1, 2, ..., MAX_PLACE; X the CPU that reported
       the violation twice as often as each other one: its own window is the usual
       one);
     - at an event: the same, X preempted after its E-th event (a lock taken or
       released, IRQs or RCU, an IPI, a table's life), as CHESS preempts at
       synchronisation: a window deep in a long operation is a few events in;
     - held: X's last operation starts where it did in the record and runs to its
       E-th event, then is held while the others go on in their recorded order, and
       finishes last (E over 1..MAX_HELD, spread: powers of two, then the gaps
       halved): a long operation (a zap of many batches) that the others'
       operations overlapped, its window anywhere in it.
  3. the overlapping order (``guided:rPER_MILLION``): every recorded operation start,
     the last ones too, as an order that no CPU's operation runs ahead of, and between
     them the operations interleaved at random (each switch rate of OVERLAP_PM in
     turn, each round on the next scheduler seed).  The operations overlap as they did
     in the run, so a race anywhere in it can come back, not only in the operations in
     flight at the violation: one that a sweep found later (a leaked frame, an RSS
     count), or one whose window opened ops before the victim's last.  The random
     switches come over every start, or over the last W per CPU only (OVERLAP_WINDOW),
     the operations before them one by one in the recorded order: a race near the
     violation is met more often when the coin is not spent on the whole run.
  4. a second preemption, where one placed (at a point or an event, not a held
     operation) met another violation of the same kind or at the same site (the same
     race seen another way, a table freed where the record read it retired): X
     preempted at the same place and, once it is, each other CPU (the partner that ran
     into X's window) preempted after its E-th event (E over 1..MAX_PARTNER, spread),
     so that X reads between two of the partner's steps (``guided:X:[e]P:PARTNER:eE``).
     These are queued as such a try comes back and take two of every three tries while
     any is left.
"""
import collections
import dataclasses
import itertools
import json
import os
import time

from ..config import Config, ConfigError
from ..debug import EV_VIOLATION
from ..run import sched
from ..run.events import EV_OP
from ..run.replay import load, signature_of
from ..run import pool
from ..run.runner import STATS_FLUSH_OPS

PCT_DEPTHS = (2, 3, 4)
OVERLAP_PM = (20000, 100000, 300000)  # switch rates of the overlapping orders, in turn,
OVERLAP_WINDOW = (0, 2, 8, 32)        # ... over all the starts (0) or the last W per CPU
MAX_PLACE = 96              # points (or events) of X before its preemption, at most
MAX_HELD = 256              # events of X before its operation is held, at most
PLACED_PER_PCT = 3          # placed preemptions tried for each PCT run
MAX_PARTNER = 32            # events of the partner before its preemption, at most (4)
REFINE_SHARE = 3            # of every 3 tries, 2 go to the second preemptions queued (4)


def config_of_token(token, artifacts):
    """The token's Config (resolved), its digest and signature; TokenError as is."""
    d, digest, sig = sched.read_token(token)
    cfg = Config.from_dict(dict(d, artifacts=artifacts))
    try:
        return cfg.resolved(), digest, sig
    except ConfigError as e:
        raise sched.TokenError("the token's configuration is not valid here: %s" % e)


def replay_token(token, repeat, artifacts, run=None):
    cfg, digest, sig = config_of_token(token, artifacts)
    with pool.runs(run) as run:
        return _replay_token(cfg, digest, sig, repeat, run)


def _replay_token(cfg, digest, sig, repeat, run):
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
    """The recorded order, or None when the artifact has none usable (no events.json, a
    ring wrapped): a dict of ``events`` (the GUIDED list of IPI and table events, each
    its CPU), ``op_starts`` (the CPU of each operation start before the first
    violation), ``ops`` (each CPU's operations begun by then) and ``victim`` (the CPU
    that reported it, None for the parent's sweep)."""
    try:
        with open(os.path.join(artifact, "events.json")) as f:
            ev = json.load(f)
    except (OSError, ValueError):
        return None
    if ev.get("wrapped"):
        return None
    g = {"events": [], "op_starts": [], "ops": [0] * ncpus, "victim": None}
    after = False
    for cpu, _, typ, a0, _, _ in ev["events"]:
        if typ == EV_VIOLATION and not after:
            after = True
            g["victim"] = cpu if 0 <= cpu < ncpus else None
        elif not 0 <= cpu < ncpus:
            continue
        elif typ == EV_OP:
            if not after:
                g["ops"][cpu] = a0 + 1
                g["op_starts"].append(cpu)
        elif typ in sched.GUIDE_EVENTS:
            g["events"].append(cpu)
    return g


def prefix(starts, held=None):
    """The recorded op starts without each CPU's last (the operations in flight at the
    violation, which the tail runs); with ``held`` a CPU, its last stays, as the entry
    of its held operation (256 + the CPU)."""
    last = {c: i for i, c in enumerate(starts)}
    return tuple(256 + c if c == held else c
                 for i, c in enumerate(starts) if last[c] != i or c == held)


def spread(n):
    """1..n, the powers of two first, then the rest in van der Corput order (each pass
    halves the gaps): a wide window anywhere in a long operation is met within a few
    tries, a narrow one near its start at once."""
    def corput(i):                     # i's bits mirrored behind the binary point
        x, f = 0.0, 0.5
        while i:
            x, i, f = x + f * (i & 1), i >> 1, f / 2
        return x
    seen, out = set(), []
    for k in itertools.chain((1 << j for j in range(n.bit_length())),
                             (1 + int(corput(i) * n) for i in range(1, 4 * n)),
                             range(1, n + 1)):
        if k <= n and k not in seen:
            seen.add(k)
            out.append(k)
    return out


def places(order, victim):
    """(X, K) for K = 1..MAX_PLACE and X each CPU of ``order``: the reporting CPU's
    (usually the one whose window was open) come twice as often as another's."""
    mine = iter([] if victim is None else [(victim, k) for k in range(1, MAX_PLACE + 1)])
    rest = iter([(x, k) for k in range(1, MAX_PLACE + 1) for x in order if x != victim])
    turns = [mine, mine, rest]
    while turns:
        for src in list(turns):
            got = next(src, None)
            if got is None:
                turns = [t for t in turns if t is not src]
            else:
                yield got


def placed(cfg, guide):
    """The placed preemptions, in order (module doc, 2): the three kinds in turn."""
    v = guide["victim"]
    order = ([v] if v is not None else []) + [c for c in range(cfg.cpus) if c != v]
    starts = guide["op_starts"]
    tail = prefix(starts)
    begun = set(starts)

    def at(spec):                      # at a point ("%d") or an event ("e%d")
        for x, k in places(order, v):
            yield spec % (x, k), tail

    holding = {x: prefix(starts, held=x) for x in order if x in begun}

    def held():
        for e in spread(MAX_HELD):
            for x, lst in holding.items():
                yield "guided:%d:e%d" % (x, e), lst

    for spec, lst in itertools.chain.from_iterable(
            zip(at("guided:%d:%d"), held(), at("guided:%d:e%d"))):
        yield dataclasses.replace(cfg, sched=spec, sched_list=lst)


def overlapping(cfg, guide):
    """The overlapping orders (module doc, 3): every recorded start, each switch rate
    over each window in turn, each round on the next scheduler seed."""
    starts = tuple(guide["op_starts"])
    for k in itertools.count():
        for pm, w in itertools.product(OVERLAP_PM, OVERLAP_WINDOW):
            first = max(0, len(starts) - w * cfg.cpus) if w else 0
            yield dataclasses.replace(cfg, sched="guided:r%d:%d" % (pm, first),
                                      sched_list=starts, sched_seed=k)


def candidates(cfg, guide):
    """The schedules to try, in order (endless)."""
    tails = over = iter(())
    if guide:
        yield dataclasses.replace(cfg, sched="guided", sched_list=tuple(guide["events"]))
        tails, over = placed(cfg, guide), overlapping(cfg, guide)
    k = 0
    while True:                # the run's seed fixes the op sequences: vary the schedule's
        for d in PCT_DEPTHS:
            for c in itertools.chain.from_iterable(
                    itertools.islice(zip(tails, over), PLACED_PER_PCT)):
                yield c
            yield dataclasses.replace(cfg, sched="pct:%d" % d, sched_list=(), sched_seed=k)
        k += 1


def find_schedule(artifact, budget_runs, budget_s, out_dir, progress=print, run=None):
    cfg0, sig = load(artifact)
    if sig is None:
        raise ConfigError("%s recorded no violation or hang: nothing to find" % artifact)
    with open(os.path.join(artifact, "report.json")) as f:
        rep0 = json.load(f)
    ops = rep0.get("ops_per_cpu")
    if not ops:
        raise ConfigError("%s has no per-CPU op counts (made by an older spfshm)" % artifact)
    guide = guide_of(artifact, cfg0.cpus)
    if guide:                  # the operations begun when the violation was reported
        cpu_ops = tuple(guide["ops"])
    else:                      # the op counter is flushed every STATS_FLUSH_OPS ops and
        cpu_ops = tuple(n + STATS_FLUSH_OPS for n in ops)    # at a clean end only
    base = dataclasses.replace(cfg0, artifacts=out_dir, kill_worker=0.0,
                               ops=max(max(cpu_ops), 1), duration=Config.duration,
                               cpu_ops=cpu_ops)
    with pool.runs(run) as run:
        return _search(base, guide, sig, budget_runs, budget_s, progress, run)


def related(got, sig):
    """Whether another violation is the same race seen another way: the same kind, or
    the same site (a table read freed where the record read it retired)."""
    (k1, _, s1), (k2, _, s2) = got.partition("@"), sig.partition("@")
    return k1 == k2 or s1 == s2


def second_preemptions(cand, seen):
    """The tries of kind 4 for a try ``cand`` placed at a point or an event that met a
    related violation (none for another kind, a held operation, or a place already
    queued)."""
    name, param, k = sched.parse_spec(cand.sched)
    held = any(c >= 256 for c in cand.sched_list)
    if name != "guided" or param not in (1, 2) or held \
            or (cand.sched, cand.sched_list) in seen:
        return []
    seen.add((cand.sched, cand.sched_list))
    x, at = k & 0xff, ("%d" if param == 1 else "e%d") % (k >> 8)
    return [dataclasses.replace(cand, sched="guided:%d:%s:%d:e%d" % (x, at, y, e))
            for e in spread(MAX_PARTNER) for y in range(cand.cpus) if y != x]


def _search(base, guide, sig, budget_runs, budget_s, progress, run):
    t0, tries, other = time.monotonic(), 0, None
    main, queued, seen = candidates(base, guide), collections.deque(), set()
    while tries < budget_runs and time.monotonic() - t0 <= budget_s:
        cand = queued.popleft() if queued and tries % REFINE_SHARE else next(main)
        tries += 1
        rep = run(cand.resolved())
        got = signature_of(rep)
        if progress and tries % 10 == 0:
            progress("  %d schedules tried, %.0f s" % (tries, time.monotonic() - t0))
        if got == sig:
            return {"found": True, "tries": tries, "seconds": round(time.monotonic() - t0, 2),
                    "schedule": cand.sched, "signature": sig, "token": rep["sched"]["token"],
                    "guided": guide is not None}
        if got and other is None:      # another violation of the same run: kept, not taken
            other = {"signature": got, "token": rep["sched"]["token"], "try": tries}
        if got and related(got, sig):
            queued.extend(second_preemptions(cand, seen))
    return {"found": False, "tries": tries, "seconds": round(time.monotonic() - t0, 2),
            "signature": sig, "guided": guide is not None, "other": other}
