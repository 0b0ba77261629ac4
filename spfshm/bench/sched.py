"""``spfshm bench sched``: what the controlled scheduler catches and what it costs.

detect: for every busted variant (each with its ``needs``: features only), over seeds
s = 0..SEEDS-1, the runs it takes under ``--sched SPEC`` to catch it: run r uses the
run seed SEED_STRIDE s + r (a new workload and a new schedule each run), up to
--max-runs (at most SEED_STRIDE, so no two seeds share a run); a
run counts when its first violation has one of the catalogue's signatures.  Reports
per variant the runs to catch, median and worst over the seeds.  The runs share one pool
(run/pool.py: the same runs as fresh ones, a few times as many per second).

pipeline (--from-parallel): for every variant, the road from a CI failure to a minimal
trace: a truly parallel run (its needs, the default perturbation, up to --parallel-s
seconds per seed, seeds 1, 2, 3... up to PARALLEL_SEEDS, until one fails with an
expected signature), then ``replay ARTIFACT --deterministic`` (tries and seconds to find
a token), the token replayed 10 times (hits and equal digests), and ``shrink`` within
--shrink-budget seconds (switches, preemptions and ops per CPU before and after).  The
scheduled runs (search, replays, shrink) share one pool.

cost: the same configuration and op count run truly parallel and under the scheduler;
ops and faults per second of each (wall clock), and the scheduler's steps per second.
"""
import contextlib
import functools
import json
import statistics
import tempfile
import time

from ..bugs import BY_NAME, CATALOGUE
from ..config import Config
from ..run import pool
from ..run.replay import signature_of
from .runs import run

SEED_STRIDE = 100000        # seed index s's runs are SEED_STRIDE s + 0, 1, ...
PARALLEL_SEEDS = 8          # pipeline: parallel runs tried per variant, seeds 1, 2, ...


@contextlib.contextmanager
def _scheduled_runs():
    """The benchmarks' run() for scheduled runs, on one pool for the duration."""
    with pool.runs() as via:
        yield functools.partial(run, via=via)


def runs_to_catch(bug, seed_index, spec, cpus, ops, max_runs, art, run_one):
    """Runs (``run_one``: a function of a Config returning its report) until one
    catches ``bug``: how many, or None within max_runs."""
    expect = BY_NAME[bug].expect
    for r in range(max_runs):
        cfg = Config(cpus=cpus, ops=ops, seed=SEED_STRIDE * seed_index + r, bugs=(bug,),
                     sched=spec, artifacts=art).resolved()
        if signature_of(run_one(cfg)) in expect:
            return r + 1
    return None


def detect(names, seeds, spec, cpus, ops, max_runs):
    out = []
    with tempfile.TemporaryDirectory() as art, _scheduled_runs() as scheduled:
        print("%-34s %7s %7s %6s  %s" % ("bug", "caught", "median", "worst", "runs per seed"))
        for name in names:
            t0 = time.monotonic()
            runs = [runs_to_catch(name, s, spec, cpus, ops, max_runs, art, scheduled)
                    for s in range(seeds)]
            got = [r for r in runs if r is not None]
            row = {"bug": name, "runs": runs, "caught": len(got), "seeds": seeds,
                   "median_runs": statistics.median(r if r is not None else float("inf")
                                                    for r in runs) if got else None,
                   "worst_runs": max(runs) if len(got) == seeds else None,
                   "seconds": round(time.monotonic() - t0, 1)}
            if row["median_runs"] == float("inf"):
                row["median_runs"] = None
            out.append(row)
            print("%-34s %3d/%-3d %7s %6s  %s" % (
                name, len(got), seeds, _n(row["median_runs"]), _n(row["worst_runs"]),
                " ".join(str(r) if r is not None else ">%d" % max_runs for r in runs)),
                flush=True)
    return out


def pipeline(names, parallel_s, budget_runs, budget_s, shrink_s):
    from ..sched.replay import find_schedule, replay_token
    from ..sched.shrink import shrink_token
    out = []
    with tempfile.TemporaryDirectory() as art, _scheduled_runs() as scheduled:
        for name in names:
            expect = BY_NAME[name].expect
            row = {"bug": name}
            rep = None
            for seed in range(1, PARALLEL_SEEDS + 1):
                rep = run(Config(duration=parallel_s, seed=seed, bugs=(name,),
                                 artifacts=art).resolved())
                if signature_of(rep) in expect and rep.get("artifacts"):
                    break
                rep = None
            if rep is None:
                row["parallel"] = "not caught in %d x %g s" % (PARALLEL_SEEDS, parallel_s)
                out.append(row)
                print("%-34s parallel: not caught" % name, flush=True)
                continue
            row["parallel_s"] = rep["elapsed_s"]
            f = find_schedule(rep["artifacts"], budget_runs, budget_s, art, progress=None,
                              run=scheduled)
            row["find"] = {k: f[k] for k in ("found", "tries", "seconds", "guided")}
            if f.get("other"):
                row["find"]["other"] = f["other"]["signature"]
            if f["found"]:
                r = replay_token(f["token"], 10, art, run=scheduled)
                row["replay"] = {"hits": r["hits"], "same_digest": r["same_digest"]}
                try:
                    s = shrink_token(f["token"], art, budget_s=shrink_s, run=scheduled)
                    row["shrink"] = {"before": s["before"], "after": s["after"],
                                     "runs": s["runs"], "seconds": s["seconds"],
                                     "complete": s["complete"]}
                except ValueError as e:
                    row["shrink"] = {"error": str(e)}
            out.append(row)
            sh = row.get("shrink", {})
            print("%-34s parallel %5.1fs; found %s in %d tries %.1fs%s%s; replay %s; shrink %s"
                  % (name, row["parallel_s"], f["found"], f["tries"], f["seconds"],
                     " (guided)" if f["guided"] else "",
                     " (another: %s)" % f["other"]["signature"] if f.get("other") else "",
                     "%d/10 (digests %d/10)" % (row["replay"]["hits"],
                                                row["replay"]["same_digest"])
                     if "replay" in row else "-",
                     "preemptions %d->%d switches %d->%d ops %s->%s" % (
                         sh["before"]["preemptions"], sh["after"]["preemptions"],
                         sh["before"]["switches"], sh["after"]["switches"],
                         "/".join(map(str, sh["before"]["ops_per_cpu"])),
                         "/".join(map(str, sh["after"]["ops_per_cpu"])))
                     if "before" in sh else sh.get("error", "-")), flush=True)
    return out


def _n(x):
    return "-" if x is None else ("%g" % x)


def cost(spec, cpus, ops, seed):
    rows = []
    with tempfile.TemporaryDirectory() as art:
        for mode in ("parallel", spec):
            cfg = Config(cpus=cpus, ops=ops, seed=seed, artifacts=art, check_every=0,
                         perturb="off", sched="" if mode == "parallel" else spec).resolved()
            t0 = time.monotonic()
            rep = run(cfg)
            dt = time.monotonic() - t0
            f = rep["faults"]
            faults = f["classic"] + f["spf_ok"] + f["pervma_ok"]
            row = {"mode": mode, "ops": rep["ops_total"], "seconds": round(dt, 2),
                   "ops_per_s": round(rep["ops_total"] / dt, 1),
                   "faults_per_s": round(faults / dt, 1), "exit_code": rep["exit_code"]}
            if rep.get("sched"):
                row["steps_per_s"] = round(rep["sched"]["steps"] / dt, 1)
                row["switches"] = rep["sched"]["switches"]
            rows.append(row)
            print("%-10s %7d ops in %6.2f s: %8.0f ops/s, %8.0f faults/s%s" % (
                mode, row["ops"], dt, row["ops_per_s"], row["faults_per_s"],
                ", %.0f steps/s, %d switches" % (row["steps_per_s"], row["switches"])
                if "steps_per_s" in row else ""), flush=True)
    return rows


def main(args):
    names = args.bugs.split(",") if args.bugs else [b.name for b in CATALOGUE]
    res = {"bench": "sched", "spec": args.sched, "cpus": args.cpus, "ops": args.ops}
    if args.from_parallel:
        res["pipeline"] = pipeline(names, args.parallel_s, args.budget_runs, args.budget,
                                   args.shrink_budget)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(res, f, indent=2)
        return 0 if all(r.get("replay", {}).get("hits") == 10 for r in res["pipeline"]) else 1
    if not args.cost_only:
        res["detect"] = detect(names, args.seeds, args.sched, args.cpus, args.ops,
                               args.max_runs)
    res["cost"] = cost(args.sched, args.cpus, args.cost_ops, 1)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0 if args.cost_only or all(r["caught"] == r["seeds"] for r in res["detect"]) else 1
