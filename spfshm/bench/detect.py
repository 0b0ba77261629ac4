"""``spfshm bench detect``: time to first detection of every busted variant, over seeds,
with the default settings (each variant's ``needs`` applied).  ``--perturbation off``
removes every delay point (the needs' too), to measure what perturbation buys."""
import dataclasses
import json
import statistics
import tempfile

from ..bugs import BY_NAME, CATALOGUE
from ..config import Config
from ..run.runner import run_stress


def measure(bug, seeds, cpus, max_s, perturbation=True):
    b = BY_NAME[bug]
    times, caught = [], 0
    with tempfile.TemporaryDirectory() as art:
        for seed in range(seeds):
            cfg = Config(cpus=cpus, duration=max_s, seed=seed, bugs=(bug,), artifacts=art)
            cfg = cfg.resolved()
            if not perturbation:
                cfg = dataclasses.replace(cfg, delay=0.0, delay_points=())
            rep = run_stress(cfg)
            kinds = {v["kind"] for v in rep["violations"]}
            ok = bool(kinds & set(b.expect))
            caught += ok
            times.append(rep["elapsed_s"] if ok else float("inf"))
    finite = [t for t in times if t != float("inf")]
    return {"bug": bug, "seeds": seeds, "caught": caught,
            "median_s": round(statistics.median(times), 2) if caught * 2 > seeds else None,
            "worst_s": round(max(times), 2) if caught == seeds else None,
            "times_s": [round(t, 2) if t != float("inf") else None for t in times],
            "best_s": round(min(finite), 2) if finite else None}


def main(args):
    names = args.bugs.split(",") if args.bugs else [b.name for b in CATALOGUE]
    out = []
    print("%-28s %7s %9s %9s  %s" % ("bug", "caught", "median_s", "worst_s", "per seed"))
    for name in names:
        r = measure(name, args.seeds, args.cpus, args.max_duration, args.perturbation == "on")
        out.append(r)
        print("%-28s %3d/%-3d %9s %9s  %s" % (
            name, r["caught"], r["seeds"], r["median_s"] if r["median_s"] is not None else "-",
            r["worst_s"] if r["worst_s"] is not None else "-",
            " ".join("%s" % (t if t is not None else "miss") for t in r["times_s"])), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"bench": "detect", "cpus": args.cpus, "perturbation": args.perturbation,
                       "max_duration_s": args.max_duration, "results": out}, f, indent=2)
    return 0 if all(r["caught"] == r["seeds"] for r in out) else 1
